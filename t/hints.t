# Hint files: once every immutable segment has its hint, a restart loads
# them instead of scanning (status.recovery says so); a missing, corrupt or
# stale hint is logged and its segment scanned, with every value intact,
# and the hint is written again.  A bad record in the middle of a segment
# stops the start with the file and offset named, and `kvtool repair`
# makes the store start again.

use strict;
use warnings;

use Test::More;
use KvTest qw(read_file write_file frames_of segment_ids wait_until
              none_ok);

my $srv = KvTest->new(name => 'hints', endpoints => 1,
                      zone_extra => 'segment_size=64k');
my $dir = $srv->data_dir;

sub seg_path  { sprintf '%s/%010u.kvlog', $dir, $_[0] }
sub seg_name  { sprintf '%010u.kvlog', $_[0] }
sub hint_path { sprintf '%s/%010u.kvhint', $dir, $_[0] }

sub val {
    my ($k, $v) = @_;
    my $s = "$k:$v;";
    return substr($s x 200, 0, 600 + (length($k) * 37 + $v * 101) % 700);
}

my %want;

sub check_keys {
    my ($msg, %skip) = @_;
    my @bad;
    for my $k (sort keys %want) {
        next if $skip{$k};
        my $r = $srv->get($k);
        if (defined $want{$k}) {
            push @bad, "$k: $r->{status}"
                unless $r->{status} == 200 && $r->{body} eq $want{$k};
        } else {
            push @bad, "$k: deleted, got $r->{status}"
                unless $r->{status} == 404;
        }
    }
    none_ok(\@bad, $msg);
}

# Immutable segments (all but the highest) lacking a hint file.
sub missing_hints {
    my @ids = segment_ids($dir);
    pop @ids;
    return grep { !-e hint_path($_) } @ids;
}

sub wait_hints {
    my ($msg) = @_;
    ok wait_until(sub { !missing_hints() }, 15, 0.1), $msg
        or diag 'no hint for segments ' . join ' ', missing_hints();
}

# the notice recovery logs when it scans segment $id for want of a hint
sub fallback_re {
    my ($id) = @_;
    my $name = seg_name($id);
    return qr/no usable hint for "?\Q$dir\E\/\Q$name\E"?, scanned it/;
}

sub restart {
    my ($msg) = @_;
    ok $srv->stop, 'stopped';
    return $srv->start_ok($msg);
}

# The key of a frame (protobuf field 2 of the payload), or undef.
sub frame_key {
    my ($frame) = @_;
    my $p = substr $frame, 12;
    my $pos = 0;
    my $varint = sub {
        my ($v, $shift) = (0, 0);
        while ($pos < length $p) {
            my $b = ord substr $p, $pos++, 1;
            $v |= ($b & 0x7f) << $shift;
            return $v unless $b & 0x80;
            $shift += 7;
        }
        return undef;
    };
    while ($pos < length $p) {
        my $tag = $varint->() // return undef;
        my ($field, $type) = ($tag >> 3, $tag & 7);
        if ($type == 0) {
            defined $varint->() or return undef;
        } elsif ($type == 2) {
            my $len = $varint->() // return undef;
            return substr $p, $pos, $len if $field == 2;
            $pos += $len;
        } else {
            return undef;
        }
    }
    return undef;
}

# Flips the last byte of a frame in the middle of segment $id whose key is
# in %$once (written once, so no other record of it exists).  Returns
# (key, frame offset).
sub damage_middle {
    my ($id, $once) = @_;
    my $path = seg_path($id);
    my $data = read_file($path);
    my ($frames) = frames_of($data);
    my @cand = grep {
        my $k = frame_key(substr $data, $_->[0], $_->[1]);
        defined $k && $once->{$k};
    } @$frames[1 .. $#$frames - 1];
    return () unless @cand;
    my ($off, $len) = @{ $cand[int(@cand / 2)] };
    my $key = frame_key(substr $data, $off, $len);
    open my $fh, '+<:raw', $path or die "open $path: $!";
    seek $fh, $off + $len - 1, 0;
    read $fh, my $b, 1;
    seek $fh, $off + $len - 1, 0;
    print $fh chr(ord($b) ^ 0x5a);
    close $fh;
    return ($key, $off);
}

$srv->start_ok or BAIL_OUT('cannot start nginx');

# --- a store of several segments, every immutable one with its hint

my %once;
my $fails = 0;
for my $i (0 .. 199) {
    my $k = "u$i";
    $want{$k} = val($k, 1);
    $once{$k} = 1;
    $fails++ unless $srv->put($k, $want{$k})->{status} == 201;
}
for my $v (1 .. 3) {
    for my $i (0 .. 59) {
        my $k = "o$i";
        $want{$k} = val($k, $v);
        $fails++ unless $srv->put($k, $want{$k})->{status} == 201;
    }
}
for my $i (40 .. 59) {
    $fails++ unless $srv->req(DELETE => "/db/o$i")->{status} == 200;
    $want{"o$i"} = undef;
}
is $fails, 0, 'written: 380 puts, 20 deletes';
my @ids = segment_ids($dir);
cmp_ok scalar(@ids), '>=', 5, 'several segments (' . @ids . ')';
wait_hints('every immutable segment got its hint file');

restart('restarted with hints');
my $st = $srv->status || {};
my $immutable = @ids - 1;
like $st->{recovery}{method} // '', qr/^hints(?: and scan)?$/,
    "recovery method: $st->{recovery}{method}";
is $st->{recovery}{segments_from_hints}, $immutable,
    "all $immutable immutable segments came from their hints";
is $st->{recovery}{segments_scanned}, 1, 'only the active segment was scanned';
my $log = $srv->log_since;
like $log, qr/recovered \d+ records, \d+ keys from \d+ segments/,
    'the recovery summary is logged';
unlike $log, qr/no usable hint/, 'no hint fallback logged';
is $st->{keys}, scalar(grep { defined } values %want), 'keys';
check_keys('every value intact after a hint-based start');

# --- a missing hint

my $gone = $ids[1];
ok $srv->stop, 'stopped';
unlink hint_path($gone) or die "unlink: $!";
$srv->start_ok('started without one hint file');
like $srv->log_since, fallback_re($gone),
    'logged: no usable hint for ' . seg_name($gone);
$st = $srv->status || {};
is $st->{recovery}{segments_scanned}, 2, 'that segment was scanned too';
is $st->{recovery}{segments_from_hints}, $immutable - 1, 'the others came '
    . 'from hints';
is $st->{recovery}{method}, 'hints and scan', 'method: hints and scan';
check_keys('every value intact');
wait_hints('the missing hint was written again');

# --- a corrupt hint: one byte flipped in its entries

my $bad = $ids[2];
ok $srv->stop, 'stopped';
my $h = read_file(hint_path($bad));
my $at = 24 + int((length($h) - 40) / 2);
substr($h, $at, 1) = chr(ord(substr $h, $at, 1) ^ 0x01);
write_file(hint_path($bad), $h);
$srv->start_ok('started with a corrupt hint file');
$log = $srv->log_since;
like $log, fallback_re($bad), 'logged: no usable hint for ' . seg_name($bad);
like $log, qr/\Q$dir\E\/\d{10}\.kvhint/, 'the bad hint file is named';
$st = $srv->status || {};
is $st->{recovery}{segments_scanned}, 2, 'its segment was scanned';
check_keys('every value intact');
wait_hints('a good hint replaced it');
isnt read_file(hint_path($bad)), $h, 'the hint file was rewritten';

# --- a stale hint: its segment is longer than the hint says (a copy of
# its last record appended: a valid record that changes no value)

my $stale = $ids[3];
ok $srv->stop, 'stopped';
my $data = read_file(seg_path($stale));
my ($frames, $end) = frames_of($data);
is $end, length($data), 'the segment ends with a whole record';
my ($loff, $llen) = @{ $frames->[-1] };
open my $fh, '>>:raw', seg_path($stale) or die;
print $fh substr($data, $loff, $llen);
close $fh;
$srv->start_ok('started with a stale hint file');
like $srv->log_since, fallback_re($stale),
    'logged: no usable hint for ' . seg_name($stale);
$st = $srv->status || {};
is $st->{recovery}{segments_scanned}, 2, 'its segment was scanned';
check_keys('every value intact');
wait_hints('the stale hint was replaced');

# --- all hints good again: hints only

restart('restarted');
$st = $srv->status || {};
is $st->{recovery}{segments_from_hints}, $immutable,
    'every immutable segment from its hint again';
unlike $srv->log_since, qr/no usable hint/, 'no fallback logged';

# --- a bad record in the middle of an immutable segment

my $dseg = $ids[1];
ok $srv->stop, 'stopped';
my ($dkey, $doff) = damage_middle($dseg, \%once);
ok defined $dkey, "damaged the record of $dkey at offset $doff of segment "
    . $dseg;
ok -e hint_path($dseg), 'its hint file is there';
$srv->start_ok('with the hint, the store starts (the segment is not read)');
my $r = $srv->get($dkey);
cmp_ok $r->{status}, '>=', 500,
    "GET of the damaged record fails (status $r->{status}), no bad bytes "
    . 'served';
ok $srv->stop, 'stopped';

unlink hint_path($dseg);
my ($rc, $out) = $srv->start_raw;
my $name = seg_name($dseg);
isnt $rc, 0, 'without the hint, nginx refuses to start';
my $text = $out . $srv->log_since;
like $text, qr/corrupt record in "?\Q$dir\E\/\Q$name\E"? at offset $doff\b/,
    "the message names $name and offset $doff";
like $text, qr/kvtool repair/, 'and says how to repair';
ok !KvTest::alive($srv->master_pid), 'no nginx is left running';

my $tool = KvTest::kvtool_path();
ok -x $tool, "$tool exists (built by make)";
($rc, $out) = KvTest::kvtool('check', $dir);
is $rc, 1, 'kvtool check reports the damage (exit 1)';
like $out, qr/\Q$name\E at offset $doff\b/, 'naming the file and offset';
($rc, $out) = KvTest::kvtool('repair', $dir);
is $rc, 0, 'kvtool repair succeeds' or diag $out;
($rc, $out) = KvTest::kvtool('check', $dir);
is $rc, 0, 'kvtool check is clean afterwards' or diag $out;
$srv->start_ok('nginx starts after the repair');
is $srv->get($dkey)->{status}, 404, "$dkey, whose only record was damaged, "
    . 'is gone';
check_keys('every other value intact', $dkey => 1);
delete $want{$dkey};
delete $once{$dkey};

# --- a bad record in the middle of the active segment (always scanned)

for my $i (0 .. 9) {
    my $k = "act$i";
    $want{$k} = val($k, 1);
    $once{$k} = 1;
    $fails++ unless $srv->put($k, $want{$k})->{status} == 201;
}
is $fails, 0, 'ten more writes';
ok $srv->stop, 'stopped';
my $active = (segment_ids($dir))[-1];
($dkey, $doff) = damage_middle($active, \%once);
ok defined $dkey, "damaged $dkey at offset $doff of the active segment";
($rc, $out) = $srv->start_raw;
$name = seg_name($active);
isnt $rc, 0, 'nginx refuses to start';
like $out . $srv->log_since,
    qr/corrupt record in "?\Q$dir\E\/\Q$name\E"? at offset $doff\b/,
    "the message names $name and offset $doff";
($rc, $out) = KvTest::kvtool('repair', $dir);
is $rc, 0, 'kvtool repair succeeds' or diag $out;
$srv->start_ok('nginx starts after the repair');
is $srv->get($dkey)->{status}, 404, "$dkey is gone";
check_keys('every other value intact', $dkey => 1);
ok $srv->stop, 'stopped';

done_testing;
