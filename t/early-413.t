# A value over max_value announced by Content-Length is refused with 413
# before the body is read: the client gets the answer without sending a
# single body byte, and nothing is written.  Also with Expect: 100-continue
# (curl's behaviour for large uploads): 413 instead of 100 Continue.

use strict;
use warnings;

use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(time);
use KvTest;

my $E = qr/^\{\s*"error"\s*:\s*"(?:[^"\\]|\\.)+"\s*\}\s*$/s;

my $srv = KvTest->new(name => 'early413', max_value => '100k');
$srv->start_ok or BAIL_OUT("cannot start nginx");

# Sends only the request head, reads until the response head and body
# (by Content-Length) are complete; returns (raw response, seconds taken).
sub head_only {
    my ($extra) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $srv->port)
        or die "connect: $!";
    binmode $s;
    print $s "PUT /db/early HTTP/1.1\r\nHost: localhost\r\n"
        . "Content-Type: application/octet-stream\r\n"
        . "Content-Length: 5000000\r\n$extra\r\n";
    $s->flush;
    my $t0 = time;
    my $buf = '';
    my $vec = '';
    vec($vec, fileno($s), 1) = 1;
    while (time - $t0 < 5) {
        my $r = $vec;
        last unless select($r, undef, undef, 0.1) >= 0;
        if (vec($r, fileno($s), 1)) {
            my $n = sysread($s, $buf, 65536, length $buf);
            last unless $n;
        }
        if ($buf =~ /\r\n\r\n/ && $buf =~ /Content-Length: (\d+)/i) {
            my $need = $1;
            my $body = substr($buf, index($buf, "\r\n\r\n") + 4);
            last if length($body) >= $need;
        }
    }
    my $dt = time - $t0;
    close $s;
    return ($buf, $dt);
}

my ($resp, $dt) = head_only('');
like $resp, qr{^HTTP/1\.1 413 }, '413 with only the request head sent';
cmp_ok $dt, '<', 2, 'answered at once, without waiting for the body';
like $resp, qr{\r\nContent-Type: application/json\r\n}i, 'JSON error';
my ($body) = $resp =~ /\r\n\r\n(.*)$/s;
like $body // '', $E, 'body is {"error": ...}';

($resp, $dt) = head_only("Expect: 100-continue\r\n");
like $resp, qr{^HTTP/1\.1 413 }, 'Expect: 100-continue gets 413, not 100 Continue';
cmp_ok $dt, '<', 2, 'at once';

is $srv->get('early')->{status}, 404, 'nothing written';

# the limit is exact: max_value bytes are fine
is $srv->put('exact', 'e' x (100 * 1024))->{status}, 201, 'exactly max_value is stored';
is $srv->put('exact', 'f' x (100 * 1024 + 1))->{status}, 413, 'one byte more is 413';
is length($srv->get('exact')->{body}), 100 * 1024, 'the stored value is unchanged';

ok $srv->stop, 'graceful stop';
done_testing;
