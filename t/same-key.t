# Concurrent writers to one key leave exactly one of the acknowledged
# values, never a mix; concurrent readers never see a half-written or mixed
# value.  Two workers, several writer and reader processes.

use strict;
use warnings;

use Test::More;
use POSIX ();
use Time::HiRes qw(sleep time);
use KvTest qw(http_req);

my $srv = KvTest->new(name => 'samekey', workers => 2, reuseport => 1);
$srv->start_ok or BAIL_OUT("cannot start nginx");
my $port = $srv->port;
my $dir = KvTest::tmp_root() . "/samekey";
mkdir $dir;

# value of writer w, write n: a header and 40000 copies of one letter
sub value { my ($w, $n) = @_; "w$w-$n:" . (chr(ord('a') + $w) x 40000) }

my @pids;
for my $w (1 .. 4) {
    my $pid = fork // die;
    if (!$pid) {
        open my $j, '>', "$dir/w$w" or POSIX::_exit(2);
        select((select($j), $| = 1)[0]);
        for my $n (1 .. 150) {
            my $r = http_req($port, 'PUT', '/db/hot', value($w, $n), 'application/octet-stream');
            print $j "$n $r->{status}\n";
        }
        POSIX::_exit(0);
    }
    push @pids, $pid;
}
for my $rd (1 .. 2) {
    my $pid = fork // die;
    if (!$pid) {
        open my $j, '>', "$dir/r$rd" or POSIX::_exit(2);
        my ($reads, $bad) = (0, 0);
        my $deadline = time + 20;
        while (time < $deadline && !-e "$dir/stop") {
            my $r = http_req($port, 'GET', '/db/hot');
            next if $r->{status} == 404;
            $reads++;
            my $ok = $r->{status} == 200 && $r->{body} =~ /^w(\d)-(\d+):/
                && $r->{body} eq value($1, $2);
            if (!$ok) {
                $bad++;
                print $j "BAD $r->{status} len=" . length($r->{body} // '') . " "
                    . substr($r->{body} // '', 0, 20) . "\n";
            }
        }
        print $j "reads $reads bad $bad\n";
        close $j;
        POSIX::_exit(0);
    }
    push @pids, $pid;
}
waitpid($_, 0) for @pids[0 .. 3];
open my $fh, '>', "$dir/stop"; close $fh;
waitpid($_, 0) for @pids[4 .. 5];

my %acked;
my $failed = 0;
for my $w (1 .. 4) {
    open my $j, '<', "$dir/w$w" or die;
    while (<$j>) {
        my ($n, $st) = split;
        if ($st == 201) { $acked{"w$w-$n"} = 1 } else { $failed++ }
    }
}
is $failed, 0, 'every concurrent PUT was acknowledged';
is scalar(keys %acked), 600, 'all 600 writes accounted for';

for my $rd (1 .. 2) {
    open my $j, '<', "$dir/r$rd" or die;
    my @l = <$j>;
    my ($sum) = grep { /^reads/ } @l;
    my ($reads, $bad) = ($sum // '') =~ /reads (\d+) bad (\d+)/;
    cmp_ok $reads // 0, '>', 20, "reader $rd read the key while it was written (" . ($reads // 0) . ")";
    is $bad, 0, "reader $rd never saw a mixed or partial value"
        or diag join '', grep { /^BAD/ } @l[0 .. 4];
}

my $r = $srv->get('hot');
my ($id) = ($r->{body} // '') =~ /^(w\d-\d+):/;
ok $r->{status} == 200 && defined $id && $acked{$id} && $r->{body} eq value(split /-/, substr($id, 1)),
    'the final value is exactly one acknowledged value';

# the same after a restart (the last record in the log is the winner)
$srv->stop;
$srv->start_ok('restarted');
my $r2 = $srv->get('hot');
is $r2->{body}, $r->{body}, 'the same value after restart';

ok $srv->stop, 'graceful stop';
done_testing;
