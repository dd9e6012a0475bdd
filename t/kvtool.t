# kvtool, the operations CLI: import-seed, dump, check, repair, compact and
# the directory lock, run against temporary directories.  The last part
# needs nginx with the module: a running store, JSON values, the real lock.

use strict;
use warnings;

use Test::More;
use Cwd qw(abs_path);
use Fcntl qw(:flock);
use File::Temp qw(tempdir);
use JSON::PP ();
use MIME::Base64 qw(decode_base64);
use POSIX ();

my $Tool = $ENV{KV_TOOL} || 'build/kvtool';
$Tool = abs_path($Tool) if -e $Tool;

plan skip_all => "$Tool is not built (make build)" unless -f $Tool && -x _;

my $Tmp = tempdir('kvtool-XXXXXX', TMPDIR => !$ENV{KV_TEST_TMP},
                  DIR => $ENV{KV_TEST_TMP}, CLEANUP => 1);
my $Seq = 0;

sub slurp {
    my ($path) = @_;
    open my $fh, '<:raw', $path or return undef;
    local $/;
    my $d = <$fh>;
    return defined $d ? $d : '';
}

sub spew {
    my ($path, $data, $mode) = @_;
    open my $fh, $mode || '>:raw', $path or die "$path: $!";
    print $fh $data;
    close $fh or die "$path: $!";
}

# Runs kvtool; returns { rc, out, err }.
sub kvtool {
    my (@args) = @_;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>', "$Tmp/out" or POSIX::_exit(126);
        open STDERR, '>', "$Tmp/err" or POSIX::_exit(126);
        exec $Tool, @args or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    return { rc => $? >> 8, out => slurp("$Tmp/out"),
             err => slurp("$Tmp/err") };
}

sub new_dir { return "$Tmp/d" . ++$Seq }

# The Go server's file: u64 LE length, then a protobuf Entity
# {bool tombstone = 1; string key = 2; bytes value = 3;}, encoded by hand.
sub varint {
    my ($n) = @_;
    my $o = '';
    while ($n >= 0x80) { $o .= chr(($n & 0x7f) | 0x80); $n >>= 7 }
    return $o . chr($n);
}

sub entity {
    my ($key, $value) = @_;       # undef value: a tombstone
    my $p = defined $value ? '' : "\x08\x01";
    $p .= "\x12" . varint(length $key) . $key;
    $p .= "\x1a" . varint(length $value) . $value
        if defined $value && length $value;
    return pack('Q<', length $p) . $p;
}

sub seed_file {
    my (@records) = @_;
    my $path = "$Tmp/seed" . ++$Seq;
    spew($path, join '', map { entity(@$_) } @records);
    return $path;
}

# Frames of a segment: u32 LE payload length, u64 checksum, payload.
sub frames {
    my ($data) = @_;
    my ($pos, @f) = (0);
    while ($pos + 12 <= length $data) {
        my $len = 12 + unpack 'V', substr($data, $pos, 4);
        last if $len == 12 || $pos + $len > length $data;   # 12: zeros
        push @f, [$pos, $len];
        $pos += $len;
    }
    return @f;
}

sub flip_byte {
    my ($path, $off) = @_;
    open my $fh, '+<:raw', $path or die "$path: $!";
    seek $fh, $off, 0;
    read $fh, my $b, 1;
    seek $fh, $off, 0;
    print $fh chr(ord($b) ^ 0x5a);
    close $fh;
}

sub dir_bytes {
    my ($dir) = @_;
    opendir my $dh, $dir or return 0;
    my $n = 0;
    $n += -f "$dir/$_" ? -s _ : 0 for readdir $dh;
    return $n;
}

# The dump as { key => [value, line] }; keys and values as bytes.
sub dump_map {
    my ($out) = @_;
    my %m;
    for my $line (split /\n/, $out) {
        my $j = JSON::PP->new->utf8->decode($line);
        my $k = exists $j->{key_base64} ? decode_base64($j->{key_base64})
                                        : $j->{key};
        my $v = exists $j->{value_base64} ? decode_base64($j->{value_base64})
                                          : $j->{value};
        utf8::encode($k) unless exists $j->{key_base64};
        utf8::encode($v) unless exists $j->{value_base64} || ref $v;
        $m{$k} = [$v, $j];
    }
    return \%m;
}

# 100 keys written 5 times with 1 KiB values: 80% of the log is dead.
# @opt: kvtool options for the import.
sub overwritten_store {
    my (@opt) = @_;
    my $dir = new_dir();
    my @recs;
    for my $round (1 .. 5) {
        push @recs, map { ["key$_", "$round:" . ('x' x 1024)] } 1 .. 100;
    }
    my $r = kvtool('import-seed', @opt, seed_file(@recs), $dir);
    is($r->{rc}, 0, "import of the overwritten store @opt")
        or diag($r->{err});
    return $dir;
}

# The non-empty segments of $dir in id order: [name, size, [frame sizes]].
sub segments {
    my ($dir) = @_;
    opendir(my $dh, $dir) or die "$dir: $!";
    my @names = sort grep { /^\d{10}\.kvlog$/ } readdir $dh;
    closedir $dh;
    return grep { $_->[1] }
           map { my $d = slurp("$dir/$_");
                 [$_, length $d, [map { $_->[1] } frames($d)]] } @names;
}

# Checks how the segments of $dir rolled over at $max bytes; $rule:
#   append   kv_append(): a record that would take a non-empty segment past
#            $max opens the next one, so a segment is at most $max bytes
#            or holds one record, and the next one's first record did not
#            fit;
#   compact  a compaction output rolls over once it holds $max bytes: it
#            has less before its last record, and each one but the last
#            has at least $max.
# Returns the segments.
sub rolled_ok {
    my ($dir, $max, $rule, $what) = @_;
    my @s = segments($dir);
    my @bad;
    for my $i (0 .. $#s) {
        my ($name, $size, $f) = @{ $s[$i] };
        my $n = @$f;
        my $next = $i < $#s ? $s[$i + 1][2][0] : undef;
        my $sum = 0;
        $sum += $_ for @$f;
        push @bad, "$name: $size bytes, $sum in whole records"
            if $sum != $size;
        if ($rule eq 'append') {
            push @bad, "$name: $size bytes in $n records"
                if $size > $max && $n > 1;
            push @bad, "$name: rolled at $size bytes before a $next-byte record"
                if defined $next && $size + $next <= $max;
        } else {
            push @bad, "$name: $size bytes, $f->[-1] in its last record"
                if $size - $f->[-1] >= $max;
            push @bad, "$name: rolled at $size bytes"
                if defined $next && $size < $max;
        }
    }
    is_deeply(\@bad, [], "$what: segments roll over at $max bytes ($rule)");
    return @s;
}


# ---------------------------------------------------------------- usage

{
    my $r = kvtool();
    is($r->{rc}, 2, 'no command: exit 2');
    like($r->{err}, qr/usage: kvtool/, 'no command: usage');

    is(kvtool('frobnicate', $Tmp)->{rc}, 2, 'unknown command: exit 2');
    is(kvtool('check')->{rc}, 2, 'check without DIR: exit 2');
    is(kvtool('import-seed', $Tmp)->{rc}, 2, 'import-seed without DIR: 2');

    $r = kvtool('help');
    is($r->{rc}, 0, 'help: exit 0');
    like($r->{out}, qr/import-seed \[--segment-size=SIZE\] FILE DIR/,
         'help lists the commands');

    $r = kvtool('check', "$Tmp/missing");
    is($r->{rc}, 1, 'check of a missing directory fails');
    ok(!-e "$Tmp/missing", 'and does not create it');
}


# ---------------------------------------------------------------- import, dump

{
    my $dir = new_dir();
    my $seed = seed_file(
        [alpha => 'one'], [bin => "\x00\xff\xfe"], [alpha => 'uno'],
        ['nokey'], [zeta => '1'], ['zeta'], [zeta => '2'],
        ["k\x00z" => 'v'], [gamma => "caf\xc3\xa9"], [empty => ''],
        [json => '{"a": 1}'], [gone => 'x'], ['gone'],
    );
    my $torn = substr(entity(tail => 'never complete'), 0, 14);
    spew($seed, $torn, '>>:raw');

    my $r = kvtool('import-seed', $seed, $dir);
    is($r->{rc}, 0, 'import-seed: exit 0') or diag($r->{err});
    like($r->{out}, qr/13 records: 10 puts, 2 deletes, 1 deletes of absent/,
         'import-seed counts puts, deletes and deletes of absent keys');
    like($r->{err}, qr/last record, at offset \d+, is truncated: ignored/,
         'a truncated last record is a warning');

    $r = kvtool('dump', $dir);
    is($r->{rc}, 0, 'dump: exit 0') or diag($r->{err});

    my @lines = split /\n/, $r->{out};
    is(scalar @lines, 7, 'one line per live key');

    my $m = dump_map($r->{out});
    is_deeply([sort keys %$m],
              [sort 'alpha', 'bin', 'zeta', "k\x00z", 'gamma', 'empty',
               'json'], 'the live keys: last record wins, tombstones delete');
    is_deeply([map { $m->{$_}[0] } 'alpha', 'bin', 'zeta', "k\x00z",
                                   'gamma', 'empty', 'json'],
              ['uno', "\x00\xff\xfe", '2', 'v', "caf\xc3\xa9", '',
               '{"a": 1}'], 'the values');

    ok(exists $m->{bin}[1]{value_base64}, 'binary value: value_base64');
    ok(exists $m->{"k\x00z"}[1]{key_base64}, 'key with NUL: key_base64');
    is($m->{gamma}[1]{value}, "caf\x{e9}", 'UTF-8 value: a JSON string');
    is($m->{json}[1]{value}, '{"a": 1}',
       'a JSON-looking octet-stream value stays a string');
    is_deeply([sort { $a <=> $b } map { $_->[1]{seq} } values %$m],
              [2, 3, 6, 7, 8, 9, 10],
              'seq is the import order');
    is(scalar(grep { $_->[1]{content_type} eq 'application/octet-stream' }
              values %$m), 7, 'seed values are application/octet-stream');

    my @keys = map { my $j = JSON::PP->new->utf8->decode($_);
                     $j->{key} // decode_base64($j->{key_base64}) } @lines;
    is_deeply(\@keys, [sort @keys], 'dump is sorted by key');

    $r = kvtool('check', $dir);
    is($r->{rc}, 0, 'check of a clean store: exit 0');
    like($r->{out}, qr/^live keys: 7$/m, 'check counts the live keys');
    like($r->{out}, qr/^bad records: 0$/m, 'check finds no bad record');
    like($r->{out}, qr/not in use/, 'check: nobody holds the directory');
}

{
    my $dir = new_dir();
    my $good = entity(a => '1');
    my $bad = "\x12\x40abc";              # key claims 64 bytes, has 3
    my $seed = "$Tmp/badseed";
    spew($seed, $good . pack('Q<', length $bad) . $bad . entity(b => '2'));

    my $r = kvtool('import-seed', $seed, $dir);
    is($r->{rc}, 1, 'import-seed of a bad record in the middle: exit 1');
    like($r->{err}, qr/record at offset ${\ length $good} .*not a valid Entity/,
         'the error names the offset');
}


# ---------------------------------------------------------------- damage

{
    my $dir = overwritten_store();
    my $before = kvtool('dump', $dir)->{out};
    my $seg = "$dir/0000000001.kvlog";
    my $seg_size = -s $seg;
    my @f = frames(slurp($seg));
    is(scalar @f, 500, '500 frames in the segment');

    # an old version (round 2) of key50: dead, overwritten three times
    my ($off, $len) = @{ $f[149] };
    flip_byte($seg, $off + 40);
    my $damaged = substr(slurp($seg), $off, $len);

    my $r = kvtool('check', $dir);
    is($r->{rc}, 1, 'check of a damaged store: exit 1');
    my $next = $off + $len;
    like($r->{out}, qr/^bad\ record\ in\ 0000000001\.kvlog\ at\ offset
                       \ $off:\ $len\ bytes\ unreadable,\ valid\ records
                       \ follow\ at\ offset\ $next$/mx,
         'check names the file, the offset and the damaged range');
    like($r->{out}, qr/^records: 499$/m, 'check counts the records after it');
    like($r->{out}, qr/kvtool repair/, 'check points at repair');

    $r = kvtool('dump', $dir);
    is($r->{rc}, 1, 'dump refuses a store that recovery refuses');
    like($r->{err}, qr/offset $off/, 'and says where');

    $r = kvtool('repair', $dir);
    is($r->{rc}, 0, 'repair: exit 0') or diag($r->{err});
    like($r->{out},
         qr/moved $len damaged bytes of 0000000001\.kvlog at offset $off /,
         'repair reports the move');
    like($r->{out}, qr/older value, be missing/, 'repair warns about the key');
    is(slurp("$dir/lost+found/0000000001.kvlog-$off.bin"), $damaged,
       'the damaged bytes are in lost+found');
    is(-s $seg, $seg_size - $len, 'the segment lost exactly that range');

    $r = kvtool('check', $dir);
    is($r->{rc}, 0, 'check after repair: exit 0') or diag($r->{out});
    is(kvtool('dump', $dir)->{out}, $before,
       'every record after the damage survived');

    # the newest version of key7 (round 5): the key falls back to round 4
    @f = frames(slurp($seg));
    ($off, $len) = @{ $f[-94] };
    flip_byte($seg, $off + 20);
    is(kvtool('check', $dir)->{rc}, 1, 'second damage found');
    is(kvtool('repair', $dir)->{rc}, 0, 'second repair');
    my $m = dump_map(kvtool('dump', $dir)->{out});
    like($m->{key7}[0], qr/^4:/, 'key7 shows its older value, as warned');
    like($m->{key8}[0], qr/^5:/, 'key8 keeps its newest value');
    is(scalar keys %$m, 100, 'no key lost');

    # a torn tail is normal after a crash: a warning, exit 0
    spew($seg, "\x40\x00\x00\x00torn", '>>:raw');
    $r = kvtool('check', $dir);
    is($r->{rc}, 0, 'a torn tail: exit 0');
    like($r->{out}, qr/warning: torn tail in 0000000001\.kvlog/,
         'a torn tail is reported as such');
}


# ---------------------------------------------------------------- compact

{
    my $dir = overwritten_store();
    my $before = kvtool('dump', $dir);
    my $size = dir_bytes($dir);

    my $r = kvtool('compact', $dir);
    is($r->{rc}, 0, 'compact: exit 0') or diag($r->{err});
    like($r->{out}, qr/^reclaimed: \d+ bytes$/m, 'compact reports');
    my $after = dir_bytes($dir);
    cmp_ok($after, '<', $size * 0.3, "compact shrank $size to $after bytes");
    is(kvtool('dump', $dir)->{out}, $before->{out},
       'dump identical before and after compaction');

    $r = kvtool('check', $dir);
    is($r->{rc}, 0, 'check after compaction');
    like($r->{out}, qr/^hints: [1-9]\d* ok, 0 missing, 0 bad/m,
         'compaction wrote hints and check verified them');

    opendir(my $dh, $dir) or die "$dir: $!";
    my ($hint) = grep { /\.kvhint$/ } readdir $dh;
    flip_byte("$dir/$hint", 30);

    $r = kvtool('check', $dir);
    is($r->{rc}, 1, 'a corrupt hint: exit 1');
    like($r->{out}, qr/hint BAD: .*checksum/, 'check says why');

    $r = kvtool('repair', $dir);
    is($r->{rc}, 0, 'repair of a bad hint');
    like($r->{out}, qr/removed .*\Q$hint\E/, 'repair removed it');
    $r = kvtool('check', $dir);
    is($r->{rc}, 0, 'the hint is written again');
    like($r->{out}, qr/^hints: [1-9]\d* ok, 0 missing, 0 bad/m, 'and good');
}

# compact --index=sorted: a store written as index=hash (no TABLES) moves
# into sorted segments, so that index=sorted opens it with a zone too small
# for all its keys; --index=hash moves it back.  dump and check agree.
{
    my $dir = overwritten_store();
    my $before = kvtool('dump', $dir)->{out};
    ok(!-e "$dir/TABLES", 'an index=hash store has no TABLES');

    my $r = kvtool('compact', '--index=sorted', $dir);
    is($r->{rc}, 0, 'compact --index=sorted: exit 0') or diag($r->{err});
    like($r->{out}, qr/^after: .*, 100 keys in sorted segments$/m,
         'compact --index=sorted reports the keys in sorted segments');
    ok(-f "$dir/TABLES", 'compact --index=sorted wrote TABLES');
    my @sst = glob("$dir/*.kvsst");
    cmp_ok(scalar @sst, '>', 0, 'and a sorted segment\'s table file');
    is(kvtool('dump', $dir)->{out}, $before,
       'dump identical after compact --index=sorted');
    is(kvtool('check', $dir)->{rc}, 0, 'check after compact --index=sorted');

    $r = kvtool('compact', '--index', 'hash', $dir);
    is($r->{rc}, 0, 'compact --index hash: exit 0') or diag($r->{err});
    is_deeply([glob("$dir/*.kvsst")], [],
              'compact --index=hash leaves no sorted segment');
    like($r->{out}, qr/^after: .* 100 live keys/m,
         'compact --index=hash: the keys are live in the log again');
    is(kvtool('dump', $dir)->{out}, $before,
       'dump identical after compact --index=hash');
    is(kvtool('check', $dir)->{rc}, 0, 'check after compact --index=hash');

    # TABLES stays behind, naming runs that are gone: a compaction without
    # --index keeps the directory in index=hash all the same
    ok(-f "$dir/TABLES", 'the TABLES of the runs that went is still there');
    $r = kvtool('compact', $dir);
    is($r->{rc}, 0, 'compact after --index=hash: exit 0') or diag($r->{err});
    is_deeply([glob("$dir/*.kvsst")], [],
              'compact without --index keeps index=hash');
    like($r->{out}, qr/^after: .* 100 live keys/m,
         'the keys stay live in the log');
    is(kvtool('dump', $dir)->{out}, $before,
       'dump identical after compact without --index');

    $r = kvtool('compact', '--index=btree', $dir);
    is($r->{rc}, 2, 'compact --index=btree: exit 2');
    like($r->{err}, qr/--index is hash or sorted/, 'says what --index takes');
    $r = kvtool('import-seed', '--index=sorted', seed_file([x => 'y']),
                new_dir());
    is($r->{rc}, 2, 'import-seed --index=sorted: exit 2');
    like($r->{err}, qr/only compact does/, 'only compact takes --index');
}


# Ctrl-C during compact: kv_compact() deletes what it wrote, the store is
# as before, exit 1.  The signal is sent once MERGE exists, i.e. while
# outputs are being written (thousands of 64k outputs, each flushed).
{
    my $dir = new_dir();
    my @recs = map { ["big$_", "$_:" . ('y' x 200_000)] } 1 .. 320;
    my $r = kvtool('import-seed', seed_file(@recs), $dir);
    is($r->{rc}, 0, 'compact, interrupted: 64 MiB imported')
        or diag($r->{err});
    my $before = kvtool('dump', $dir)->{out};
    my @segs_before = map { $_->[0] } segments($dir);

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>', "$Tmp/out" or POSIX::_exit(126);
        open STDERR, '>', "$Tmp/err" or POSIX::_exit(126);
        exec $Tool, 'compact', '--segment-size=64k', $dir
            or POSIX::_exit(127);
    }
    my $seen = 0;
    for (1 .. 6000) {
        if (-e "$dir/MERGE") { $seen = 1; last }
        last if waitpid($pid, POSIX::WNOHANG()) == $pid;
        select undef, undef, undef, 0.005;
    }
    ok($seen, 'compact, interrupted: MERGE appeared (outputs being written)');
    kill 'INT', $pid;
    waitpid $pid, 0;
    my $rc = $? >> 8;
    my $err = slurp("$Tmp/err");
    is($rc, 1, 'compact, interrupted: exit 1');
    like($err, qr/cancelled/, 'compact, interrupted: says it was cancelled');

    opendir(my $dh, $dir) or die "$dir: $!";
    my @left = grep { /^MERGE|\.tmp$/ } readdir $dh;
    closedir $dh;
    is("@left", '', 'compact, interrupted: no MERGE or temporary file');
    my %old = map { $_ => 1 } @segs_before;
    my @new = grep { !$old{$_} } map { $_->[0] } segments($dir);
    is("@new", '', 'compact, interrupted: no output left with data');
    is(kvtool('check', $dir)->{rc}, 0, 'compact, interrupted: check passes');
    is(kvtool('dump', $dir)->{out}, $before,
       'compact, interrupted: dump identical');
}

# ---------------------------------------------------------------- segment size

{
    my $min = 64 * 1024;
    my $dir = new_dir();
    my @recs;
    for my $round (1 .. 5) {
        push @recs, map { ["key$_", "$round:" . ('x' x 1024)] } 1 .. 100;
        push @recs, [big => 'b' x 100_000] if $round == 3;
    }
    my %want = ((map { ("key$_" => '5:' . ('x' x 1024)) } 1 .. 100),
                big => 'b' x 100_000);

    my $r = kvtool('import-seed', "--segment-size=64k", seed_file(@recs),
                   $dir);
    is($r->{rc}, 0, 'import-seed --segment-size=64k: exit 0')
        or diag($r->{err});
    my @s = rolled_ok($dir, $min, 'append', 'import-seed --segment-size=64k');
    cmp_ok(scalar @s, '>=', 9, scalar(@s) . ' segments for 600 KB');
    is(scalar(grep { $_->[1] > $min } @s), 1,
       'one segment passes the size');
    is_deeply([map { scalar @{ $_->[2] } } grep { $_->[1] > $min } @s], [1],
              'the record larger than the size, alone in its segment');

    my $before = kvtool('dump', $dir);
    my $m = dump_map($before->{out});
    is_deeply({ map { ($_ => $m->{$_}[0]) } keys %$m }, \%want,
              'the small segments read back');

    $r = kvtool('compact', '--segment-size', '64k', $dir);
    is($r->{rc}, 0, 'compact --segment-size 64k: exit 0') or diag($r->{err});
    @s = rolled_ok($dir, $min, 'compact', 'compact --segment-size 64k');
    cmp_ok(scalar @s, '>=', 3, scalar(@s) . ' outputs for 200 KB live');
    is(kvtool('dump', $dir)->{out}, $before->{out},
       'dump identical after compaction into small segments');
    $r = kvtool('check', $dir);
    is($r->{rc}, 0, 'check after compaction into small segments')
        or diag($r->{out});

    $r = kvtool('compact', $dir);
    is($r->{rc}, 0, 'compact without --segment-size') or diag($r->{err});
    is(scalar(segments($dir)), 1, 'the default size: one segment');
    is(kvtool('dump', $dir)->{out}, $before->{out},
       'dump identical after compaction into one segment');
}

{
    my $dir = overwritten_store();
    my $dump = kvtool('dump', $dir)->{out};
    my $size = dir_bytes($dir);
    my $seed = seed_file([x => 'y']);
    my $why = 'it must be a size from 65536 to 549755813888 bytes';

    for my $v ('abc', '0', '', '65535', '63k', '1t', '16mb', '16 m', '-64k',
               '+64k', '0x10000', '512G1', '513g', '549755813889',
               '99999999999999999999', '99999999999999999g')
    {
        my $r = kvtool('compact', "--segment-size=$v", $dir);
        is($r->{rc}, 2, "--segment-size=$v: exit 2");
        like($r->{err}, qr/^kvtool: invalid --segment-size "\Q$v\E": \Q$why/,
             "--segment-size=$v: why");
    }

    my $r = kvtool('import-seed', '--segment-size', '1', $seed, $dir);
    is($r->{rc}, 2, 'import-seed --segment-size 1: exit 2');
    like($r->{err}, qr/invalid --segment-size "1"/, 'and why');

    $r = kvtool('compact', '--segment-size');
    is($r->{rc}, 2, '--segment-size without SIZE: exit 2');
    like($r->{err}, qr/"--segment-size" needs a SIZE/, 'and why');

    $r = kvtool('compact', '--segment-sizes=64k', $dir);
    is($r->{rc}, 2, 'an unknown option: exit 2');
    like($r->{err}, qr/unknown option "--segment-sizes=64k"/, 'named');

    $r = kvtool('compact', $dir, '--segment-size=64k');
    is($r->{rc}, 2, 'an option after DIR: exit 2');
    like($r->{err}, qr/options go right after the command name/, 'and why');

    for my $cmd ('check', 'dump', 'repair') {
        $r = kvtool($cmd, '--segment-size=64k', $dir);
        is($r->{rc}, 2, "$cmd --segment-size: exit 2");
        like($r->{err}, qr/"$cmd" takes no options/, "$cmd: why");
    }

    is(dir_bytes($dir), $size, 'none of them touched the store');
    is(kvtool('dump', $dir)->{out}, $dump, 'the same dump');

    for my $v ('64K', '65536', '512g', '1G', '16m') {
        $r = kvtool('compact', "--segment-size=$v", $dir);
        is($r->{rc}, 0, "--segment-size=$v: exit 0") or diag($r->{err});
    }
    is(kvtool('dump', $dir)->{out}, $dump, 'the same dump after them');

    $r = kvtool('help');
    like($r->{out},
         qr/compact \[--segment-size=SIZE\] \[--index=hash\|sorted\] DIR/,
         'help shows the options');
    like($r->{out}, qr/kv_zone's segment_size/, 'and what it should match');
}


# ---------------------------------------------------------------- the lock

{
    my $dir = overwritten_store();
    my $dump = kvtool('dump', $dir)->{out};
    my $seed = seed_file([x => 'y']);

    open my $lock, '>>', "$dir/LOCK" or die "$dir/LOCK: $!";
    ok(flock($lock, LOCK_EX | LOCK_NB), 'the test holds the directory lock');

    for my $cmd (['compact', $dir], ['import-seed', $seed, $dir],
                 ['repair', $dir])
    {
        my $r = kvtool(@$cmd);
        is($r->{rc}, 1, "$cmd->[0] refuses a locked directory");
        like($r->{err}, qr/in use by a running process \(pid $$ holds/,
             "$cmd->[0] says who holds it");
    }

    my $r = kvtool('check', $dir);
    is($r->{rc}, 0, 'check works on a locked directory');
    like($r->{out}, qr/in use by a running process \(pid $$\)/,
         'check says the directory is in use');

    $r = kvtool('dump', $dir);
    is($r->{rc}, 0, 'dump works on a locked directory');
    is($r->{out}, $dump, 'the same dump');

    # what a running nginx with fsync=always writes ahead of its records
    my $last = (segments($dir))[-1][0];
    spew("$dir/$last", "\0" x 5000, '>>:raw');
    $r = kvtool('check', $dir);
    is($r->{rc}, 0, 'zeros after the last record: check passes');
    like($r->{out}, qr/^\Q$last\E: \d+ records, \d+ bytes, [^\n]*, 5000 bytes (?#
                       )preallocated$/m, 'check counts them as preallocated');
    unlike($r->{out}, qr/torn/, 'not as a torn tail');
    is(kvtool('dump', $dir)->{out}, $dump, 'dump reads past them');

    close $lock;
    is(kvtool('compact', $dir)->{rc}, 0, 'compact once the lock is gone');
}


# --------------------------------------------- a flush a power cut caught

# What fsync=always leaves in segment $path when a power cut catches a
# flush over its preallocated zeros, written in any order: a later sector
# reached the disk, the one at the third record from the end did not.
# Returns the offset of that record and the segment's bytes without the
# zeros.
sub cut_short {
    my ($path) = @_;
    my $data = slurp($path);
    my $gap = (frames($data))[-3][0];
    my $sector_end = ($gap + 512) & ~511;

    substr($data, $gap, $sector_end - $gap) = "\0" x ($sector_end - $gap);
    spew($path, $data . "\0" x 5000);
    return ($gap, $data);
}

{
    my $dir = overwritten_store();
    my $name = (segments($dir))[-1][0];
    my $path = "$dir/$name";
    my $records = () = frames(slurp($path));
    my ($gap, $data) = cut_short($path);

    my $r = kvtool('check', $dir);
    is($r->{rc}, 0, 'a flush cut short: check passes') or diag($r->{out});
    my $cut = length($data) - $gap;
    like($r->{out}, qr/^warning: a flush cut short by a power cut in (?#
                       )\Q$name\E at offset $gap \($cut bytes, [^\n]*(?#
                       )the next start cuts it$/m,
         'check names it, from the gap to the zeros');
    like($r->{out}, qr/^\Q$name\E: ${\ ($records - 3)} records, [^\n]*, (?#
                       )5000 bytes preallocated$/m,
         'the records before the gap, the zeros preallocated');
    unlike($r->{out}, qr/^bad record in|DAMAGED/m, 'not as damage');

    # repair moves no range aside: its recovery cuts it as nginx's does
    $r = kvtool('repair', $dir);
    is($r->{rc}, 0, 'repair: exit 0') or diag($r->{err});
    unlike($r->{out}, qr/rewrote/, 'repair rewrites no segment');
    like($r->{err}, qr/at offset $gap \($cut bytes dropped\): a flush that (?#
                       )a power cut interrupted/, 'its recovery cuts it');
    ok(slurp($path) eq substr($data, 0, $gap), 'at the gap');

    # only the last segment is flushed over zeros: elsewhere it is damage
    $dir = overwritten_store('--segment-size=64k');
    my @segs = segments($dir);
    ok(@segs > 1, 'a store of several segments');
    $name = $segs[0][0];
    ($gap) = cut_short("$dir/$name");

    $r = kvtool('check', $dir);
    is($r->{rc}, 1, 'in an earlier segment: check fails');
    like($r->{out}, qr/^bad record in \Q$name\E at offset $gap: /m,
         'a bad record followed by valid ones');
    unlike($r->{out}, qr/cut short/, 'no flush cut short');
}


# ---------------------------------------------------------------- nginx

SKIP: {
    my $module = $ENV{TEST_NGINX_LOAD_MODULES} || 'build/ngx_http_kv_module.so';
    skip 'the module is not built', 17 unless -f $module;
    $ENV{TEST_NGINX_LOAD_MODULES} ||= abs_path($module);

    require lib;
    lib->import('t/lib');
    require KvTest;

    my $srv = KvTest->new(name => 'kvtool');
    $srv->start_ok or skip 'nginx did not start', 16;

    my $json = '{ "n": 12345678901234567890, "s": "a b" }';
    is($srv->put('doc', $json, 'application/json')->{status}, 201,
       'PUT of a JSON value');
    is($srv->put('bin', "\x80\x81")->{status}, 201, 'PUT of a binary value');

    my $r = kvtool('dump', $srv->data_dir);
    is($r->{rc}, 0, 'dump of a store nginx is serving');
    like($r->{out},
         qr/^\{"key":"doc","value":\{"n":12345678901234567890,"s":"a\ b"\},
             "content_type":"application\/json","seq":\d+\}$/mx,
         'a JSON value is embedded as JSON, minified, its number intact');
    like($r->{out}, qr/"key":"bin","value_base64":"gIE="/, 'binary: base64');

    $r = kvtool('compact', $srv->data_dir);
    is($r->{rc}, 1, 'compact refuses the directory of a running nginx');
    like($r->{err}, qr/stop nginx first/, 'and says so');

    $srv->stop;
    is(kvtool('compact', $srv->data_dir)->{rc}, 0,
       'compact after nginx stopped');

    # an operator's store of segment_size=64k, compacted offline with it
    my $min = 64 * 1024;
    my $small = KvTest->new(name => 'kvtool-64k',
                            zone_extra => 'segment_size=64k fsync=off '
                                          . 'compact_ratio=100');
    $small->start_ok or skip 'nginx did not start', 7;

    my %want;
    my $failed = 0;
    for my $round (1, 2) {
        for my $i (1 .. 200) {
            $want{"k$i"} = "$round:$i:" . ('v' x 1024);
            $failed++ if $small->put("k$i", $want{"k$i"})->{status} !~ /^20/;
        }
    }
    is($failed, 0, '400 PUTs of 1 KiB into segment_size=64k');
    ok($small->stop, 'nginx stopped');

    $r = kvtool('compact', '--segment-size=64k', $small->data_dir);
    is($r->{rc}, 0, 'compact --segment-size=64k of what nginx wrote')
        or diag($r->{err});
    my @s = rolled_ok($small->data_dir, $min, 'compact',
                      'compact of the nginx store');
    cmp_ok(scalar @s, '>=', 3, scalar(@s) . ' outputs for 200 KB live');

    $small->start_ok('nginx started on the compacted store') or skip
        'nginx did not start', 1;
    my @wrong = grep { my $g = $small->get($_);
                       $g->{status} != 200 || $g->{body} ne $want{$_} }
                sort keys %want;
    is_deeply(\@wrong, [], 'nginx reads every key back');
    $small->stop;
}

done_testing();
