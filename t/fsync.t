# fsync policies: off and interval:TIME start and serve; interval flushes
# in the background; always flushes before every acknowledgement, and with
# many concurrent writers the writes waiting at one moment share one
# fdatasync (group commit: fewer flushes than acknowledged writes).  Bad
# fsync= values are configuration errors.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(time);
use IO::Socket::INET;
use KvTest qw(wait_until read_file frames_of);

sub fsyncs { ($_[0]->status || {})->{fsync}{count} // -1 }

# --- off

my $off = KvTest->new(name => 'fsync-off', endpoints => 1,
                      zone_extra => 'fsync=off');
$off->start_ok('fsync=off: started');
my $c0 = fsyncs($off);
my $ok = 0;
for my $i (1 .. 20) {
    $ok++ if $off->put("k$i", "v$i")->{status} == 201;
}
is $ok, 20, 'fsync=off: 20 writes acknowledged';
is join(',', map { $off->get("k$_")->{body} } 1, 20), 'v1,v20', 'and read back';
cmp_ok fsyncs($off) - $c0, '<', 20, 'fsync=off: no flush per write ('
    . (fsyncs($off) - $c0) . ' for 20)';
is(($off->status || {})->{fsync}{mode}, 'off', 'status: mode off');
ok $off->stop, 'stopped';
$off->start_ok('fsync=off: restarted');
is $off->get('k20')->{body}, 'v20', 'writes survive a restart';
$off->stop;

# --- interval

my $iv = KvTest->new(name => 'fsync-interval', endpoints => 1,
                     zone_extra => 'fsync=interval:300ms');
$iv->start_ok('fsync=interval:300ms: started');
my $st = $iv->status || {};
is $st->{fsync}{mode}, 'interval', 'status: mode interval';
is $st->{fsync}{interval_ms}, 300, 'status: interval_ms 300';
$c0 = fsyncs($iv);
my $t0 = time;
$ok = 0;
for my $i (1 .. 20) {
    $ok++ if $iv->put("k$i", "v$i")->{status} == 201;
}
my $burst = time - $t0;
is $ok, 20, 'fsync=interval: 20 writes acknowledged';
my $during = fsyncs($iv) - $c0;
cmp_ok $during, '<=', 2 + int($burst / 0.3),
    sprintf 'no flush per write (%d in %.2f s)', $during, $burst;
my $c1 = fsyncs($iv);
ok wait_until(sub { fsyncs($iv) > $c1 }, 3, 0.05),
    'a background flush follows within the interval';
$st = $iv->status || {};
is $st->{fsync}{durable_segment}, $st->{active_segment},
    'then the active segment is durable';
is $iv->get('k20')->{body}, 'v20', 'reads work';
$iv->stop;

# --- always: one flush per acknowledged write for one client, shared
# flushes for many

my $al = KvTest->new(name => 'fsync-always', endpoints => 1, workers => 2,
                     zone_extra => 'fsync=always', reuseport => 1);
$al->start_ok('fsync=always: started');
is(($al->status || {})->{fsync}{mode}, 'always', 'status: mode always');
$c0 = fsyncs($al);
$ok = 0;
for my $i (1 .. 20) {
    $ok++ if $al->put("s$i", "v$i")->{status} == 201;
}
is $ok, 20, '20 sequential writes acknowledged';
cmp_ok fsyncs($al) - $c0, '>=', 20,
    'each was flushed before its 201 (' . (fsyncs($al) - $c0) . ' flushes)';

# 48 keep-alive connections write in rounds: a PUT on every connection at
# once, then every answer.  Writes that arrive while a flush runs must wait
# for the next one, and share it.
my $clients = 48;
my $rounds = 20;
my @conns;
for my $c (1 .. $clients) {
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $al->port, Proto => 'tcp',
                                     Timeout => 10)
        or die "connect: $!";
    binmode $sock;
    push @conns, $sock;
}

# Reads one response from a keep-alive connection; returns its status.
sub read_response {
    my ($sock) = @_;
    my $buf = '';
    my $deadline = time + 10;
    while (time < $deadline) {
        my $hend = index $buf, "\r\n\r\n";
        if ($hend >= 0) {
            my ($len) = substr($buf, 0, $hend)
                        =~ /\r\ncontent-length:\s*(\d+)/i;
            return (split / /, $buf)[1]
                if defined $len && length($buf) >= $hend + 4 + $len;
        }
        my $rin = '';
        vec($rin, fileno $sock, 1) = 1;
        select(my $rout = $rin, undef, undef, 0.5) or next;
        sysread($sock, $buf, 65536, length $buf) or return 0;
    }
    return 0;
}

my %last;
$c0 = fsyncs($al);
my ($acks, $t1) = (0, time);
for my $round (1 .. $rounds) {
    for my $c (0 .. $#conns) {
        my $k = "g$c-" . $round % 5;
        my $v = "conn $c round $round " . ('v' x ($round * 13 % 300));
        $last{$k} = $v;
        syswrite $conns[$c], "PUT /db/$k HTTP/1.1\r\nHost: localhost\r\n"
            . "Content-Type: application/octet-stream\r\n"
            . "Content-Length: " . length($v) . "\r\n\r\n$v";
    }
    for my $c (0 .. $#conns) {
        $acks++ if read_response($conns[$c]) == 201;
    }
}
my $took = time - $t1;
close $_ for @conns;
my $flushes = fsyncs($al) - $c0;
is $acks, $clients * $rounds, "every write acknowledged ($acks)";
cmp_ok $flushes, '>', 0, "fsyncs happened ($flushes)";
cmp_ok $flushes, '<', $acks,
    "group commit: $flushes fsyncs for $acks acknowledged writes";
cmp_ok 2 * $flushes, '<=', $acks, 'at least two writes per fsync on average';
diag sprintf 'group commit: %.1f writes per fsync, %.0f writes/s',
    $acks / ($flushes || 1), $acks / ($took || 1);
my @wrong = grep { $al->get($_)->{body} ne $last{$_} } sort keys %last;
is "@wrong", '', 'every key holds its last acknowledged value ('
    . keys(%last) . ' keys)';
$st = $al->status || {};
ok !$st->{fsync}{failed}, 'no fsync failed';
is $st->{write_errors}, 0, 'no write errors';
$al->stop;

# --- always: the active segment runs ahead of its records in zeros, so a
# flush commits no new file size; a clean stop cuts them, and so does the
# start after a kill -9, with no torn tail and every acknowledged write

sub put_range {
    my ($srv, @i) = @_;
    return scalar grep { $srv->put("p$_", "value $_")->{status} == 201 } @i;
}

sub log_ends {
    my ($path) = @_;
    my ($frames, $end) = frames_of(read_file($path));
    return ($end, -s $path);
}

my $pa = KvTest->new(name => 'fsync-prealloc', endpoints => 1,
                     zone_extra => 'fsync=always');
$pa->start_ok('preallocation: started');
is put_range($pa, 1 .. 50), 50, '50 writes acknowledged';
my $seg = $pa->data_dir
    . sprintf('/%010u.kvlog', ($pa->status || {})->{active_segment} // 0);
my ($end, $size) = log_ends($seg);
cmp_ok $size, '>', $end, "the segment runs ahead of its records ($size > "
    . "$end bytes)";
is substr(read_file($seg), $end) =~ tr/\0//c, 0, 'in zeros';
ok $pa->stop, 'stopped';
($end, $size) = log_ends($seg);
is $size, $end, 'a clean stop cuts the zeros off';

$pa->start_ok('restarted');
is put_range($pa, 51 .. 60), 10, '10 more writes acknowledged';
($end, $size) = log_ends($seg);
cmp_ok $size, '>', $end, 'zeros ahead again';
ok $pa->kill9_all, 'SIGKILL of master and workers';
my $mark = $pa->log_size;
$pa->start_ok('started after the kill');
my $log = $pa->log_since($mark);
unlike $log, qr/torn tail/, 'no torn tail';
like $log, qr/\[notice\][^\n]*cut \d+ bytes of preallocated space off/,
    'error.log says what was cut';
($end, $size) = log_ends($seg);
is $size, $end, 'the zeros are gone';
my @lost = grep { ($pa->get("p$_")->{body} // '') ne "value $_" } 1 .. 60;
is "@lost", '', 'every acknowledged write is there';
$pa->stop;

# --- configuration errors

my $cfg = KvTest->new(name => 'fsync-conf');
for my $v ('sometimes', 'interval:', 'interval:abc', 'interval:0',
           'interval:-5s', 'ALWAYS', '', 'always,off')
{
    $cfg->set(zone_extra => "fsync=$v");
    my ($rc, $out) = $cfg->nginx_t;
    isnt $rc, 0, "fsync=$v: nginx -t fails";
    like $out, qr/\[emerg\].*invalid "fsync=\Q$v\E"/, "fsync=$v: named in "
        . 'the error';
}
for my $v ('off', 'always', 'interval:1s', 'interval:500ms') {
    $cfg->set(zone_extra => "fsync=$v");
    my ($rc, $out) = $cfg->nginx_t;
    is $rc, 0, "fsync=$v: nginx -t accepts it" or diag $out;
}

done_testing;
