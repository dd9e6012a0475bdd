# Values of 64 KiB and more are sent from their segment file, as nginx
# sends a static file: byte for byte with sendfile on and off and with
# aio threads, on either side of the 64 KiB line; the checksum is verified
# before the first byte goes out (a damaged value is a 500, not a wrong
# 200); a compaction that deletes the segment during a slow download does
# not cut it short.

use strict;
use warnings;

use Test::More;
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_RCVBUF sockaddr_in inet_aton);
use KvTest;

my $E = qr/^\{\s*"error"\s*:\s*"(?:[^"\\]|\\.)+"\s*\}\s*$/s;

sub value_of {
    my ($len, $seed) = @_;
    my $block = join '', map { chr(($_ * 131 + $seed) % 256) } 0 .. 4095;
    return substr($block x (int($len / 4096) + 1), 0, $len);
}

my @sizes = (65535, 65536, 65537, 300_000, 4 << 20);

for my $mode ('sendfile on', 'sendfile off', 'aio threads') {
    my $srv = KvTest->new(name => 'big', zone_extra => 'max_value=8m',
                          server_extra => "        $mode;");
    $srv->start_ok("nginx with $mode") or next;

    for my $len (@sizes) {
        my $v = value_of($len, $len % 251);
        my $put = $srv->put("v$len", $v);
        is $put->{status}, 201, "$mode: PUT of $len bytes";

        my $r = $srv->get("v$len");
        is $r->{status}, 200, "$mode: GET of $len bytes is 200";
        ok defined $r->{body} && $r->{body} eq $v,
           "$mode: and the same $len bytes";
        is $r->{headers}{etag}, $put->{headers}{etag}, "$mode: the write's "
                                                      . 'ETag';

        my $h = $srv->req('HEAD', "/db/v$len");
        is $h->{headers}{'content-length'}, $len,
           "$mode: HEAD says $len bytes";

        $r = $srv->req('GET', "/db/v$len", undef, undef,
                       headers => [['If-None-Match', $put->{headers}{etag}]]);
        is $r->{status}, 304, "$mode: If-None-Match is 304";
    }

    like $srv->log_text, qr/^(?!.*\[(?:alert|crit|error)\])/s,
         "$mode: nothing logged at error or worse";
    ok $srv->stop, 'stopped';
}


# a damaged value, sent from the file, is refused before the first byte

{
    my $srv = KvTest->new(name => 'big-corrupt');
    $srv->start_ok or BAIL_OUT('cannot start nginx');
    my $v = value_of(200_000, 7);
    is $srv->put('bad', $v)->{status}, 201, 'a 200 KB value is stored';
    is $srv->put('good', $v)->{status}, 201, 'and another';

    my ($seg) = KvTest::segment_ids($srv->data_dir);
    my $path = sprintf '%s/%010d.kvlog', $srv->data_dir, $seg;
    my $data = KvTest::read_file($path);
    my $at = index($data, $v) + 1000;
    open my $fh, '+<', $path or die "$path: $!";
    binmode $fh;
    seek $fh, $at, 0;
    print $fh chr(ord(substr($data, $at, 1)) ^ 1);
    close $fh;

    my $r = $srv->get('bad');
    is $r->{status}, 500, 'GET of the damaged value is 500';
    like $r->{body} // '', $E, 'with a JSON error';
    like $srv->log_text, qr/corrupt record in "\Q$path\E"/,
         'the log names the segment';
    is $srv->get('good')->{body}, $v, 'the other value is intact';
    ok $srv->stop, 'stopped';
}


# a compaction deletes the segment while a slow client downloads from it

{
    my $srv = KvTest->new(name => 'big-compact', endpoints => 1,
                          zone_extra => 'max_value=8m segment_size=1m',
                          listen_extra => 'sndbuf=16k');
    $srv->start_ok or BAIL_OUT('cannot start nginx');

    my $v = value_of(6 << 20, 3);
    is $srv->put('movie', $v)->{status}, 201, 'a 6 MiB value is stored';
    $srv->put('junk', 'x' x 500_000) for 1 .. 4;
    my @before = KvTest::segment_ids($srv->data_dir);

    my $s = IO::Socket::INET->new(Proto => 'tcp') or die "socket: $!";
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, pack('i', 4096));
    connect($s, sockaddr_in($srv->port, inet_aton('127.0.0.1')))
        or die "connect: $!";
    binmode $s;
    print $s "GET /db/movie HTTP/1.1\r\nHost: localhost\r\n"
           . "Connection: close\r\n\r\n";
    my $got = '';
    sysread($s, $got, 65536, length $got) for 1 .. 4;
    cmp_ok length($got), '<', length($v), 'the download has begun, slowly';

    is $srv->compact->{status}, 202, 'a compaction starts meanwhile';
    ok $srv->wait_compaction_done, 'and ends';
    my %after = map { $_ => 1 } KvTest::segment_ids($srv->data_dir);
    ok !$after{$before[0]}, "the value's segment $before[0] is deleted";

    1 while sysread($s, $got, 1 << 20, length $got);
    my $body = $got =~ /\r\n\r\n(.*)\z/s ? $1 : '';
    ok $got =~ m{^HTTP/1\.1 200 } && $body eq $v,
       'the download completes byte for byte (' . length($body) . ' bytes)';
    is $srv->get('movie')->{body}, $v, 'and the moved value reads back';
    ok $srv->stop, 'stopped';
}

done_testing;
