# Slow and broken clients, a few thousand of them on loopback: bodies that
# stop halfway or stall, connections reset right after a durable write was sent,
# clients that ask for a 1 MiB value and never read it.  No record is
# half-written (a key is absent or whole), the worker is never stuck (a
# fresh client is answered while the others hang), and the worker's memory
# comes back after each round: three rounds, no growth from the first to
# the last.

use strict;
use warnings;

use Test::More;
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_LINGER SO_RCVBUF sockaddr_in inet_aton);
use Time::HiRes qw(time sleep);
use KvTest;

my $HALF   = 700;    # at most this many sockets open at once: fits the
my $RESETS = 300;    # usual limit of 1024 descriptors of the test itself
my $HANG   = 300;
my $ROUNDS = 3;

# a small socket buffer, as for clients far away: nginx, not the kernel,
# holds what a client does not read
my $srv = KvTest->new(name => 'slow', connections => 2048, endpoints => 1,
                      zone_size => '4m', listen_extra => 'sndbuf=32k',
                      server_extra => '        client_body_timeout 2s;');
$srv->start_ok or BAIL_OUT('cannot start nginx');

my $big = join '', map { chr(($_ * 7) % 256) } 1 .. (1 << 20);
is $srv->put('big', $big)->{status}, 201, 'a 1 MiB value is stored';

my ($worker) = $srv->worker_pids;
ok $worker, "the worker is $worker";

sub rss_kib {
    my $s = KvTest::read_file("/proc/$worker/status") // '';
    return $s =~ /^VmRSS:\s+(\d+) kB/m ? $1 : 0;
}

sub connect_to {
    my (%o) = @_;
    my $s = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, pack('i', $o{rcvbuf}))
        or die "SO_RCVBUF: $!" if $o{rcvbuf};
    connect($s, sockaddr_in($srv->port, inet_aton('127.0.0.1')))
        or die "connect: $!";
    binmode $s;
    return $s;
}

sub put_head {
    my ($key, $len) = @_;
    return "PUT /db/$key HTTP/1.1\r\nHost: localhost\r\n"
         . "Content-Type: application/octet-stream\r\n"
         . "Content-Length: $len\r\n\r\n";
}

# a fresh client is answered at once
sub answered {
    my ($what) = @_;
    my $t0 = time;
    my $r = $srv->req('GET', '/db/small', undef, undef, timeout => 5);
    ok $r->{status} == 200 && time - $t0 < 2,
       sprintf '%s: a fresh client is answered (%.0f ms)', $what,
               1000 * (time - $t0);
}

is $srv->put('small', 'x')->{status}, 201, 'a small value is stored';

# a body that stops coming: after client_body_timeout nginx closes the
# connection without an answer (it logs 408), and stores nothing

my $stalled = connect_to();
print $stalled put_head('stalled', 5), 'ab';
my $t0 = time;
my $got = '';
1 while sysread($stalled, $got, 4096, length $got);
ok time - $t0 > 1.5, sprintf 'a stalled body is closed after client_body_'
                             . 'timeout (%.1f s)', time - $t0;
is $got, '', 'without an answer';
is $srv->get('stalled')->{status}, 404, 'and nothing is stored';

my (@rss_after, @rss_held);

for my $round (1 .. $ROUNDS) {
    # bodies that stop halfway: nothing is stored

    my @s = map { connect_to() } 1 .. $HALF;
    for my $i (0 .. $#s) {
        my $sock = $s[$i];
        print $sock put_head("half-$round-$i", 20000), 'h' x 10000;
    }
    answered("round $round, $HALF half bodies pending");
    close $_ for @s;
    @s = ();

    # durable writes sent whole, then the connection reset: all or nothing

    my $value = 'r' x 1000;
    for my $i (0 .. $RESETS - 1) {
        my $sock = connect_to();
        print $sock put_head("rst-$round-$i", length $value), $value;
        setsockopt($sock, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0));
        close $sock;
    }

    # clients that never read a 1 MiB answer

    for my $i (1 .. $HANG) {
        my $sock = connect_to(rcvbuf => 4096);
        print $sock "GET /db/big HTTP/1.1\r\nHost: localhost\r\n\r\n";
        push @s, $sock;
    }
    sleep 0.5;
    answered("round $round, $HANG clients not reading");
    push @rss_held, rss_kib();
    close $_ for @s;
    @s = ();

    # the worker has noticed every close: only our own connection is left
    KvTest::wait_until(sub {
        my $st = $srv->req('GET', '/kv/status');
        return $st->{status} == 200;
    }, 10);
    sleep 1;

    my @half = grep { $srv->get("half-$round-$_")->{status} != 404 }
               0 .. $HALF - 1;
    is scalar(@half), 0, "round $round: no half body was stored";

    my ($whole, $bad) = (0, 0);
    for my $i (0 .. $RESETS - 1) {
        my $r = $srv->get("rst-$round-$i");
        if ($r->{status} == 200 && $r->{body} eq $value) { $whole++ }
        elsif ($r->{status} != 404) { $bad++ }
    }
    is $bad, 0, "round $round: each reset write is whole or absent "
                . "($whole of $RESETS stored)";

    is $srv->get('big')->{body}, $big, "round $round: the 1 MiB value reads "
                                     . 'back whole';
    is_deeply [$srv->worker_pids], [$worker], "round $round: the same "
                                              . 'worker serves';
    push @rss_after, rss_kib();
}

diag sprintf 'worker RSS: %s KiB while %d clients hung, %s KiB after each '
             . 'round', join('/', @rss_held), $HANG, join('/', @rss_after);

# a leak of even a few bytes per client would show over the rounds; under
# make t-asan, ASan's quarantine of freed memory grows up to its size
my $slack = 16 + ($ENV{KV_ASAN_QUARANTINE_MB} // 0);
cmp_ok $rss_after[-1] - $rss_after[0], '<', $slack * 1024,
       "the worker does not grow from the first round to the last (by "
       . "$slack MiB or more)";

ok $srv->stop, 'stopped';
done_testing;
