# Restart recovery: writes, overwrites and deletes survive a graceful stop
# (QUIT) and a new start; the index is rebuilt from the log and error.log
# carries the recovery notice.  Also: QUIT while writers are running loses
# no acknowledged write.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep);
use IO::Socket::INET;
use KvTest;

my $srv = KvTest->new(name => 'restart', workers => 2);
$srv->start_ok or BAIL_OUT("cannot start nginx");

my %expect;    # key => value, or undef for deleted
my $fail = 0;
for my $i (1 .. 200) {
    my $k = "key/$i";
    my $v = "v1-$i-" . ('a' x ($i % 97));
    $fail++ unless $srv->put($k, $v)->{status} == 201;
    $expect{$k} = $v;
}
# overwrites, with a change of content type
for my $i (grep { $_ % 3 == 0 } 1 .. 200) {
    my $k = "key/$i";
    my $v = "{\"v\":2,\"i\":$i}";
    $fail++ unless $srv->put($k, $v, 'application/json')->{status} == 201;
    $expect{$k} = $v;
}
# deletes, including keys that were overwritten
for my $i (grep { $_ % 5 == 0 } 1 .. 200) {
    my $k = "key/$i";
    $fail++ unless $srv->req(DELETE => "/db/$k")->{status} == 200;
    $expect{$k} = undef;
}
# deleted then written again
for my $i (10, 20, 30) {
    my $k = "key/$i";
    $fail++ unless $srv->put($k, "reborn-$i")->{status} == 201;
    $expect{$k} = "reborn-$i";
}
$fail++ unless $srv->put('empty', '')->{status} == 201;
$expect{empty} = '';
is $fail, 0, 'all writes acknowledged';

sub check_all {
    my ($label) = @_;
    my @bad;
    for my $k (sort keys %expect) {
        my $r = $srv->get($k);
        if (defined $expect{$k}) {
            my $type = $expect{$k} =~ /^\{/ ? 'application/json' : 'application/octet-stream';
            push @bad, "$k: $r->{status}"
                unless $r->{status} == 200 && $r->{body} eq $expect{$k}
                    && ($r->{headers}{'content-type'} // '') eq $type;
        } else {
            push @bad, "$k: $r->{status} (deleted)" unless $r->{status} == 404;
        }
    }
    is scalar(@bad), 0, "$label: every key has its latest value, deleted keys are 404"
        or diag join "\n", @bad[0 .. ($#bad < 9 ? $#bad : 9)];
}

check_all('before restart');

ok $srv->stop, 'graceful stop (QUIT)';
ok !KvTest::alive($srv->master_pid), 'master gone';
ok -e $srv->data_dir . '/0000000001.kvlog', 'the log file exists';

my $mark = $srv->log_size;
$srv->start_ok('started again');
check_all('after restart');
like $srv->log_since($mark), qr/\[notice\][^\n]*recovered/, 'error.log has the recovery notice';
unlike $srv->log_since($mark), qr/torn tail/, 'no torn tail after a clean stop';

# a second restart, after more writes, recovers them all again
$fail = 0;
for my $i (201 .. 260) {
    $fail++ unless $srv->put("key/$i", "late-$i")->{status} == 201;
    $expect{"key/$i"} = "late-$i";
}
is $fail, 0, 'writes after the restart acknowledged';
ok $srv->stop, 'stopped again';
$srv->start_ok('started a third time');
check_all('after second restart');

# QUIT with writers in flight: nothing acknowledged is lost, and in-flight
# requests get complete answers (journal E lines with status 0 only after
# the listener closed are fine, acknowledged ones must be present)
my $jdir = KvTest::tmp_root() . "/restart-journals";
mkdir $jdir;
my @journals = map { "$jdir/w$_" } 1 .. 3;
KvTest::spawn_writer(port => $srv->port, journal => $journals[$_ - 1],
                     prefix => "q$_", keys => 30, stop_on_fail => 1,
                     delete_every => 9, max_seconds => 20) for 1 .. 3;
sleep 0.5;
ok $srv->stop, 'QUIT while writers run';
KvTest::wait_writers(30);
$srv->start_ok('started after QUIT under load');
my ($n, $bad, $count) = KvTest::verify_journals($srv, @journals);
cmp_ok $count->{acks} // 0, '>', 10, "writers got acknowledgements ($count->{acks})";
is scalar(@$bad), 0, "every acknowledged write survived the QUIT ($n keys)"
    or diag join "\n", @$bad[0 .. ($#$bad < 9 ? $#$bad : 9)];
check_all('after QUIT under load');

# QUIT while a request body is half sent: the request is finished (201) and
# the value is there after the restart
{
    my $value = join '', map { chr(($_ * 7) % 256) } 1 .. 300_000;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $srv->port)
        or die "connect: $!";
    binmode $sock;
    print $sock "PUT /db/inflight HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        . "Content-Type: application/octet-stream\r\n"
        . "Content-Length: " . length($value) . "\r\n\r\n"
        . substr($value, 0, 100_000);
    $sock->flush;
    sleep 0.3;
    my $m = $srv->master_pid;
    kill 'QUIT', $m;
    sleep 0.3;
    print $sock substr($value, 100_000);
    $sock->flush;
    local $/;
    my $resp = <$sock> // '';
    close $sock;
    like $resp, qr{^HTTP/1\.1 201}, 'a request in flight at QUIT is finished with 201';
    ok KvTest::wait_until(sub { !KvTest::alive($m) }, 15), 'nginx exited after QUIT';
    $srv->start_ok('started after QUIT with a request in flight');
    my $r = $srv->get('inflight');
    ok $r->{status} == 200 && $r->{body} eq $value, 'the in-flight value survived';
}

ok $srv->stop, 'final stop';
done_testing;
