# Torn tail: a log that ends inside its last record, or has bytes other
# than zeros after its last record, is cut back to the last whole record at
# start-up with a warning containing "torn tail"; the store starts with
# every earlier record, and new writes land after the cut and survive
# another restart.  Zeros after it (what fsync=always preallocates) are cut
# too, without the warning.

use strict;
use warnings;

use Test::More;
use KvTest qw(read_file write_file frames_of);

my $LOG = '0000000001.kvlog';

# Starts a store, applies the writes, stops it gracefully, returns the
# server object and the log's frames.
sub prepared {
    my ($name, @writes) = @_;
    my $srv = KvTest->new(name => $name);
    $srv->start or die "start failed";
    for my $w (@writes) {
        my ($k, $v) = @$w;
        my $r = defined $v ? $srv->put($k, $v) : $srv->req(DELETE => "/db/$k");
        die "write $k failed: $r->{status}" unless $r->{status} == (defined $v ? 201 : 200);
    }
    $srv->stop or die "stop failed";
    my $data = read_file($srv->data_dir . "/$LOG");
    die "no log file" unless defined $data;
    my ($frames, $end) = frames_of($data);
    return ($srv, $data, $frames, $end);
}

sub body_of {
    my ($srv, $k) = @_;
    my $r = $srv->get($k);
    return $r->{status} == 200 ? $r->{body} : "<$r->{status}>";
}

my @base = (['a', 'A1'], ['b', 'B1'], ['c', 'C1'], ['a', 'A2'], ['d', 'D1']);

# --- 1: truncated in the middle of the last record's payload
{
    my ($srv, $data, $frames, $end) = prepared('torn-mid', @base, ['last', 'the last value ' x 10]);
    is $end, length($data), 'clean log: frames end at the end of the file';
    cmp_ok scalar(@$frames), '>=', 6, 'one frame per write (at least)';
    my ($off, $flen) = @{ $frames->[-1] };
    my $path = $srv->data_dir . "/$LOG";
    truncate $path, $off + 12 + int(($flen - 12) / 2) or die "truncate: $!";

    my $mark = $srv->log_size;
    $srv->start_ok('starts with a torn last record');
    like $srv->log_since($mark), qr/\[warn\][^\n]*torn tail/, 'warning with "torn tail"';
    is join(',', map { body_of($srv, $_) } qw(a b c d)), 'A2,B1,C1,D1',
        'all earlier records served';
    is body_of($srv, 'last'), '<404>', 'the cut record is absent';
    is -s $path, $off, 'the log was cut back to the end of the last whole record';

    is $srv->put('new', 'after the cut')->{status}, 201, 'a new write works';
    is $srv->put('last', 'rewritten')->{status}, 201, 'the lost key can be written again';
    ok $srv->stop, 'stopped';
    $mark = $srv->log_size;
    $srv->start_ok('restarted');
    is join(',', map { body_of($srv, $_) } qw(a b c d new last)),
        'A2,B1,C1,D1,after the cut,rewritten', 'new writes survived the restart';
    unlike $srv->log_since($mark), qr/torn tail/, 'no torn tail the second time';
    my ($f2, $end2) = frames_of(read_file($path));
    is $end2, -s $path, 'the log is whole again';
    ok $srv->stop, 'stopped';
}

# --- 2: truncated inside the last record's 12-byte header
{
    my ($srv, $data, $frames) = prepared('torn-head', @base, ['last', 'x']);
    my ($off) = @{ $frames->[-1] };
    my $path = $srv->data_dir . "/$LOG";
    truncate $path, $off + 5 or die "truncate: $!";
    my $mark = $srv->log_size;
    $srv->start_ok('starts with a torn frame header');
    like $srv->log_since($mark), qr/\[warn\][^\n]*torn tail/, 'warning with "torn tail"';
    is join(',', map { body_of($srv, $_) } qw(a b c d last)), 'A2,B1,C1,D1,<404>',
        'earlier records served, the cut one absent';
    is -s $path, $off, 'cut back to the last whole record';
    is $srv->put('z', 'zz')->{status}, 201, 'a new write works';
    ok $srv->stop, 'stopped';
    $srv->start_ok('restarted');
    is body_of($srv, 'z'), 'zz', 'it survived the restart';
    ok $srv->stop, 'stopped';
}

# --- 3: cut exactly at a record boundary: a clean, shorter log
{
    my ($srv, $data, $frames) = prepared('torn-boundary', @base, ['last', 'y']);
    my ($off) = @{ $frames->[-1] };
    my $path = $srv->data_dir . "/$LOG";
    truncate $path, $off or die "truncate: $!";
    my $mark = $srv->log_size;
    $srv->start_ok('starts with a log cut at a boundary');
    unlike $srv->log_since($mark), qr/torn tail/, 'no torn tail warning for a whole log';
    is join(',', map { body_of($srv, $_) } qw(a b c d last)), 'A2,B1,C1,D1,<404>',
        'earlier records served';
    ok $srv->stop, 'stopped';
}

# --- 4: garbage appended after the last record
for my $case ([ 'random bytes', join('', map { chr((($_ * 131) + 7) % 256) } 1 .. 200) ],
              [ 'a huge length', pack('V', 0xFFFFFFF0) . ("\xAB" x 30) ],
              [ 'a plausible header', pack('V', 20) . pack('Q<', 12345) . ("\0" x 20) ],
              [ 'zeros', "\0" x 4096 ]) {
    my ($what, $garbage) = @$case;
    (my $tag = $what) =~ s/\W+/-/g;
    my ($srv, $data, $frames, $end) = prepared("garbage-$tag", @base, ['last', 'kept']);
    my $path = $srv->data_dir . "/$LOG";
    my $size = -s $path;
    open my $fh, '>>:raw', $path or die;
    print $fh $garbage;
    close $fh;

    my $mark = $srv->log_size;
    $srv->start_ok("starts with $what appended");
    if ($what eq 'zeros') {
        # what fsync=always preallocates ahead and a crash leaves: no warning
        unlike $srv->log_since($mark), qr/torn tail/, "$what: no torn tail warning";
    } else {
        like $srv->log_since($mark), qr/\[warn\][^\n]*torn tail/, "$what: warning with \"torn tail\"";
    }
    is join(',', map { body_of($srv, $_) } qw(a b c d last)), 'A2,B1,C1,D1,kept',
        "$what: every record served, the last one included";
    is -s $path, $size, "$what: the garbage was cut off";
    is $srv->put('after', 'garbage')->{status}, 201, "$what: a new write works";
    ok $srv->stop, 'stopped';
    $srv->start_ok('restarted');
    is body_of($srv, 'after'), 'garbage', "$what: the new write survived the restart";
    ok $srv->stop, 'stopped';
}

# --- 5: the last record fails its checksum: cut, and the key falls back to
# its previous value (not served from a corrupt record)
{
    my ($srv, $data, $frames) = prepared('torn-crc', @base, ['a', 'A3-corrupted-later']);
    my ($off, $flen) = @{ $frames->[-1] };
    my $path = $srv->data_dir . "/$LOG";
    my $pos = $off + $flen - 3;    # inside the value (the value is last)
    substr($data, $pos, 1) = chr(ord(substr($data, $pos, 1)) ^ 0x5A);
    write_file($path, $data);
    my $mark = $srv->log_size;
    $srv->start_ok('starts with a corrupt last record');
    like $srv->log_since($mark), qr/\[warn\][^\n]*(?:torn tail|corrupt|checksum)/i,
        'warning about the corrupt tail';
    is join(',', map { body_of($srv, $_) } qw(a b c d)), 'A2,B1,C1,D1',
        'the corrupt overwrite is dropped, the previous value served';
    is -s $path, $off, 'cut back to the last good record';
    ok $srv->stop, 'stopped';
}

# --- 6: a torn DELETE (tombstone): the key is back with its previous value
{
    my ($srv, $data, $frames) = prepared('torn-tomb', @base, ['c', undef]);
    my ($off, $flen) = @{ $frames->[-1] };
    my $path = $srv->data_dir . "/$LOG";
    truncate $path, $off + $flen - 1 or die "truncate: $!";
    my $mark = $srv->log_size;
    $srv->start_ok('starts with a torn tombstone');
    like $srv->log_since($mark), qr/\[warn\][^\n]*torn tail/, 'warning with "torn tail"';
    is body_of($srv, 'c'), 'C1', 'the torn tombstone is dropped: c has its earlier value';
    ok $srv->stop, 'stopped';
}

done_testing;
