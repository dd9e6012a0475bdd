# Compaction: on demand (POST /kv/compact: 202, 409 while one runs), what it
# gives back (dead bytes, files, disk space), what it keeps (every latest
# value, every deletion, across a restart), requests served during a long
# compaction, and the automatic triggers compact_ratio and compact_dead.

use strict;
use warnings;

use Test::More;
use POSIX ();
use Time::HiRes qw(sleep time);
use KvTest qw(read_file write_file segment_ids dir_bytes wait_until
              http_pipelined none_ok);

my $tmp = KvTest::tmp_root();

# Value of key $k at version $v: its length depends on both.
sub val {
    my ($k, $v, $len) = @_;
    my $s = "$k/v$v/";
    return substr($s x (1 + int($len / length $s)), 0, $len);
}

# Checks every key of %$want (key => value, undef = deleted); returns the
# list of problems.
sub check_keys {
    my ($srv, $want) = @_;
    my @bad;
    for my $k (sort keys %$want) {
        my $r = $srv->get($k);
        if (defined $want->{$k}) {
            push @bad, "$k: status $r->{status}" . ($r->{status} == 200
                ? ', wrong value (' . length($r->{body}) . ' bytes)' : '')
                unless $r->{status} == 200 && $r->{body} eq $want->{$k};
        } else {
            push @bad, "$k: deleted but status $r->{status}"
                unless $r->{status} == 404;
        }
    }
    return @bad;
}

my %want;

# --- 1: on demand

my $srv = KvTest->new(name => 'compact', endpoints => 1, zone_size => '4m',
                      zone_extra => 'segment_size=64k compact_ratio=100 '
                                    . 'compact_dead=100000m');
$srv->start_ok or BAIL_OUT('cannot start nginx');
my $dir = $srv->data_dir;

my $fails = 0;
for my $v (1 .. 5) {
    for my $i (0 .. 199) {
        my $k = "k$i";
        $want{$k} = val($k, $v, 1000 + ($i * 7 + $v * 13) % 1000);
        $fails++ unless $srv->put($k, $want{$k})->{status} == 201;
    }
}
for my $i (150 .. 199) {
    $fails++ unless $srv->req(DELETE => "/db/k$i")->{status} == 200;
    $want{"k$i"} = undef;
}
# big records make the compaction take a while
for my $v (1 .. 3) {
    for my $i (0 .. 15) {
        my $k = "big$i";
        $want{$k} = val($k, $v, 200_000);
        $fails++ unless $srv->put($k, $want{$k})->{status} == 201;
    }
}
is $fails, 0, 'filled: 1000 puts, 50 deletes, 48 big puts';

my $st1 = $srv->status;
my @ids1 = segment_ids($dir);
my $bytes1 = dir_bytes($dir, qr/\.kvlog$/);
cmp_ok scalar(@ids1), '>', 10, 'many segments before (' . @ids1 . ')';
cmp_ok $st1->{dead_bytes}, '>', 2 * $st1->{live_bytes},
    "mostly dead data (live $st1->{live_bytes}, dead $st1->{dead_bytes})";
is $st1->{compaction}{runs}, 0, 'no compaction ran (thresholds out of reach)';

my $r = $srv->req(GET => '/kv/compact');
is $r->{status}, 405, 'GET /kv/compact: 405';
like $r->{body} || '', qr/"error"/, 'with a JSON error';

# The second POST travels on the same connection right behind the first:
# the one worker handles it before the compaction thread can finish.
my $t0 = time;
my ($c1, $s, $c2) = http_pipelined($srv->port, ['POST', '/kv/compact'],
                                   ['GET', '/kv/status'],
                                   ['POST', '/kv/compact']);
is $c1->{status}, 202, 'POST /kv/compact: 202';
like $c1->{body} || '', qr/"status"\s*:\s*"compaction started"/,
    '{"status":"compaction started"}';
my $sj = eval { JSON::PP->new->decode($s->{body}) } || {};
ok $sj->{compaction}{running}, 'the status says a compaction is running';
is $c2->{status}, 409, 'a second POST while it runs: 409';
like $c2->{body} || '', qr/"error"\s*:\s*"a compaction is already running"/,
    'with a JSON error';

my $st2 = $srv->wait_compaction_done(60);
ok $st2, 'the compaction finished';
diag sprintf 'compaction of %d bytes of segments took about %.2f s',
    $bytes1, time - $t0;
$st2 ||= {};
is $st2->{compaction}{runs}, 1, 'runs: 1';
is $st2->{keys}, $st1->{keys}, 'keys unchanged';
is $st2->{live_bytes}, $st1->{live_bytes}, 'live_bytes unchanged (copied)';
is $st2->{dead_bytes}, 0,
    "dead_bytes dropped to 0 ($st1->{dead_bytes} before)";
cmp_ok $st2->{compaction}{reclaimed_bytes}, '>=', 0.9 * $st1->{dead_bytes},
    "reclaimed_bytes ($st2->{compaction}{reclaimed_bytes}) ~ the dead bytes";
my @ids2 = segment_ids($dir);
my $bytes2 = dir_bytes($dir, qr/\.kvlog$/);
cmp_ok $ids2[0], '>', $ids1[-1], 'every old segment is gone (ids '
    . "$ids1[0]..$ids1[-1] -> $ids2[0]..$ids2[-1])";
is $st2->{segments}, scalar(@ids2), 'status segments = files';
cmp_ok $bytes2, '<=', 1.1 * $st2->{live_bytes},
    "segments within 10% of the live data ($bytes2 bytes for "
    . "$st2->{live_bytes} live)";
is $bytes2, $st2->{live_bytes},
    'in fact exactly the live records: no dead record, no tombstone kept';
cmp_ok dir_bytes($dir), '<=', 1.1 * $st2->{live_bytes} + 64 * 1024,
    'so does the whole directory (' . dir_bytes($dir) . ' bytes)';
my @nohint = grep { !-e sprintf "%s/%010u.kvhint", $dir, $_ }
              @ids2[0 .. $#ids2 - 1];
is "@nohint", '', 'every output segment has its hint file';
ok !-e "$dir/MERGE", 'no MERGE file left';
is scalar(grep { /\.tmp$/ } map { s{.*/}{}r } glob("$dir/*")), 0,
    'no temporary files left';
none_ok([check_keys($srv, \%want)],
            'every key has its latest value, deleted keys are 404');

my ($rc, $out) = KvTest::kvtool('check', $dir);
is $rc, 0, 'kvtool check: no damage' or diag $out;

ok $srv->stop, 'stopped';
$srv->start_ok('restarted after the compaction');
none_ok([check_keys($srv, \%want)],
            'after the restart: latest values, no resurrected key');
my $st3 = $srv->status || {};
is $st3->{keys}, $st1->{keys}, 'keys after the restart';
is $st3->{dead_bytes}, 0, 'recovery finds no dead record or tombstone';
cmp_ok $st3->{recovery}{segments_from_hints}, '>=', 1,
    "the outputs were loaded from their hints ($st3->{recovery}{method})";

# --- 2: requests during a long compaction

my $jdir = "$tmp/compact-journals";
mkdir $jdir;
for my $v (1 .. 3) {
    for my $i (0 .. 63) {
        my $k = "bulk$i";
        $want{$k} = val($k, $v, 120_000);
        $fails++ unless $srv->put($k, $want{$k})->{status} == 201;
    }
}
is $fails, 0, 'refilled: 192 puts of 120 kB';

my $stop = "$jdir/stop";
my @journals = map { "$jdir/w$_" } 1 .. 2;
for my $w (1 .. 2) {
    KvTest::spawn_writer(port => $srv->port, journal => $journals[$w - 1],
                         prefix => "cw$w", keys => 30, delete_every => 5,
                         stop_file => $stop, max_seconds => 60);
}
my $rlog = "$jdir/reader";
my $reader = fork;
die "fork: $!" unless defined $reader;
if (!$reader) {
    # reads keys the test does not change any more; logs every answer
    open my $fh, '>', $rlog or POSIX::_exit(2);
    select((select($fh), $| = 1)[0]);
    my @k = sort keys %want;
    my $deadline = time + 60;
    while (!-e $stop && time < $deadline) {
        my $k = $k[int rand @k];
        my $res = $srv->get($k);
        my $ok = defined $want{$k}
            ? $res->{status} == 200 && $res->{body} eq $want{$k}
            : $res->{status} == 404;
        printf $fh "%.6f %s %s %s\n", time, $ok ? 'ok' : 'BAD', $k,
            $res->{status} . ($res->{error} ? " $res->{error}" : '');
    }
    close $fh;
    POSIX::_exit(0);
}

sleep 0.3;
my $st4 = $srv->status || {};
my $ts = time;
is $srv->compact->{status}, 202, 'POST /kv/compact under load: 202';
my $st5 = $srv->wait_compaction_done(60);
my $te = time;
ok $st5, 'the compaction finished';
diag sprintf 'compaction under load took about %.2f s', $te - $ts;
sleep 0.3;
write_file($stop, '');
ok KvTest::wait_writers(30), 'writers stopped';
waitpid $reader, 0;

is $st5->{compaction}{runs}, $st4->{compaction}{runs} + 1, 'one more run';
my @reads = map { [split / /, $_, 4] } split /\n/, read_file($rlog) // '';
my @badreads = grep { $_->[1] ne 'ok' } @reads;
my $during = grep { $_->[0] >= $ts && $_->[0] <= $te } @reads;
cmp_ok scalar(@reads), '>', 50, 'the reader made ' . @reads . ' reads';
cmp_ok $during, '>', 0, "$during of them during the compaction";
none_ok([map { "@$_" } @badreads], 'every read had the right answer');

my ($keys, $count) = KvTest::read_journals(@journals);
my $acks_during = 0;
for my $j (@journals) {
    for my $l (split /\n/, read_file($j) // '') {
        my @f = split / /, $l;
        $acks_during++ if $f[0] eq 'K' && $f[5] >= $ts && $f[5] <= $te;
    }
}
cmp_ok $count->{acks} // 0, '>', 50, 'writers got ' . ($count->{acks} // 0)
    . ' acknowledgements';
cmp_ok $acks_during, '>', 0, "$acks_during of them during the compaction";
is $count->{errors} // 0, 0, 'no write failed';
my ($n, $bad) = KvTest::verify_journals($srv, @journals);
none_ok($bad, "every write made under load is readable ($n keys)");
none_ok([check_keys($srv, \%want)], 'the other keys are intact');

ok $srv->stop, 'stopped';
$srv->start_ok('restarted');
($n, $bad) = KvTest::verify_journals($srv, @journals);
none_ok($bad, 'after the restart the writes made under load are there');
none_ok([check_keys($srv, \%want)], 'and so is everything else');
($rc, $out) = KvTest::kvtool('check', $dir);
is $rc, 0, 'kvtool check: no damage' or diag $out;
$srv->stop;

# --- 3: automatic compaction

# $extra: kv_zone thresholds; $below and $above: writes that stay below
# and then cross them.
sub auto_case {
    my ($name, $extra, $below, $above) = @_;
    my $a = KvTest->new(name => $name, endpoints => 1,
                        zone_extra => "segment_size=64k $extra");
    $a->start_ok("$extra: started") or return;
    my %w;
    $below->($a, \%w);
    my $before = $a->status || {};
    sleep 2.5;     # the maintenance timer checks every second
    my $st = $a->status || {};
    is $st->{compaction}{runs}, 0,
        "$extra: no compaction below the threshold (dead $before->{dead_bytes}"
        . " of " . ($before->{dead_bytes} + $before->{live_bytes}) . ")";
    $above->($a, \%w);
    my $mid = $a->status || {};
    my $ok = wait_until(sub {
        my $x = $a->status;
        return $x && $x->{compaction}{runs} >= 1 && !$x->{compaction}{running};
    }, 15, 0.1);
    ok $ok, "$extra: a compaction ran by itself once crossed (dead "
        . "$mid->{dead_bytes} of "
        . ($mid->{dead_bytes} + $mid->{live_bytes}) . ")";
    like $a->log_text, qr/compaction started/, "$extra: logged";
    # it may have run while $above still wrote: count what it gave back
    $st = $a->status || {};
    cmp_ok $st->{compaction}{reclaimed_bytes}, '>=', 32 * 1024,
        "$extra: it reclaimed $st->{compaction}{reclaimed_bytes} bytes";
    none_ok([check_keys($a, \%w)], "$extra: every key intact");
    $a->stop;
    $a->start_ok("$extra: restarted");
    none_ok([check_keys($a, \%w)], "$extra: every key intact after it");
    $a->stop;
}

sub put_all {
    my ($a, $w, $v, @keys) = @_;
    for my $k (@keys) {
        $w->{$k} = val($k, $v, 2000);
        $a->put($k, $w->{$k});
    }
}

# dead >= 10% (and at least a segment's worth)
auto_case('auto-ratio', 'compact_ratio=10 compact_dead=100000m',
          sub { put_all(@_, 1, map { "r$_" } 0 .. 299);
                put_all(@_, 2, map { "r$_" } 0 .. 14) },
          sub { put_all(@_, 3, map { "r$_" } 0 .. 99) });

# dead >= 128k whatever the ratio
auto_case('auto-dead', 'compact_ratio=100 compact_dead=128k',
          sub { put_all(@_, 1, map { "d$_" } 0 .. 299);
                put_all(@_, 2, map { "d$_" } 0 .. 39) },
          sub { put_all(@_, 3, map { "d$_" } 0 .. 59);
                $_[0]->req(DELETE => "/db/d$_") for 60 .. 79;
                $_[1]{"d$_"} = undef for 60 .. 79 });

# --- 4: a stop cancels a running compaction instead of waiting for all of
# it: SIGQUIT (graceful: docker stop, nginx -s quit) and SIGTERM (fast: a
# Kubernetes pod's end); a reload cancels it too, and the new workers run
# it again

# A server holding 64 MiB live in 64k segments, a compaction of it just
# started: it flushes ~1000 outputs, and all but its last moments (index
# swaps, deletions) can be cancelled.  Returns the server, key => value
# and the segment ids before the compaction.
sub long_compaction {
    my ($tag) = @_;
    my $q = KvTest->new(name => "compact-$tag", endpoints => 1,
                        zone_size => '4m',
                        zone_extra => 'segment_size=64k compact_ratio=100 '
                                      . 'compact_dead=100000m');
    $q->start_ok or BAIL_OUT('cannot start nginx');
    my %qwant;

    my $fails = 0;
    for my $i (0 .. 319) {
        my $k = "q$i";
        $qwant{$k} = val($k, 1, 200_000);
        $fails++ unless $q->put($k, $qwant{$k})->{status} == 201;
    }
    is $fails, 0, "$tag: filled 64 MiB";
    my @qids = segment_ids($q->data_dir);

    is $q->compact->{status}, 202, "$tag: compaction started";
    ok $q->status->{compaction}{running},
        "$tag: it runs when the signal comes";

    return ($q, \%qwant, \@qids);
}

sub stop_during_compaction {
    my ($sig) = @_;
    my ($q, $qwant, $qids) = long_compaction($sig);
    my $qdir = $q->data_dir;

    my $m = $q->master_pid;
    my @all = ($m, KvTest::children_of($m));
    my $t0 = time;
    kill $sig, $m;
    ok KvTest::wait_gone(30, @all), "$sig: nginx exited";
    my $secs = time - $t0;
    like $q->log_text, qr/compaction of .* cancelled/,
        "$sig: the log says the compaction was cancelled";
    cmp_ok $secs, '<', 10, sprintf "$sig: exited %.1f s after the signal",
        $secs;

    opendir my $dh, $qdir or die "$qdir: $!";
    my @left = grep { /^MERGE|\.tmp$/ } readdir $dh;
    closedir $dh;
    none_ok(\@left, "$sig: no MERGE or temporary file left");
    my %old = map { $_ => 1 } @$qids;
    my @outputs = grep { !$old{$_} } segment_ids($qdir);
    cmp_ok scalar(@outputs), '<=', 1,
        "$sig: no compaction output left (only the new active segment)";

    $q->start_ok("$sig: restarted");
    none_ok([check_keys($q, $qwant)], "$sig: every key intact after it");
    is $q->compact->{status}, 202, "$sig: a new compaction starts";
    my $st = $q->wait_compaction_done(120);
    ok $st && $st->{compaction}{runs} == 1, "$sig: and completes";
    none_ok([check_keys($q, $qwant)], "$sig: every key intact after that");
    $q->stop;
}

stop_during_compaction('QUIT');
stop_during_compaction('TERM');

# The 202 of POST /kv/compact is kept across a reload: the old workers
# cancel the compaction to exit promptly, and the new ones start it again
# by themselves (the zone, and the request recorded in it, outlive them).
{
    my ($q, $qwant, $qids) = long_compaction('reload');
    my $mark = length $q->log_text;

    ok $q->reload(30), 'reload: new workers serve';
    my $after = $q->log_since($mark);
    like $after, qr/compaction of .* cancelled/,
        'reload: the old workers cancelled the compaction';

    my $st;
    ok wait_until(sub {
            $st = $q->status;
            return $st && $st->{compaction}{runs} >= 1
                   && !$st->{compaction}{running};
        }, 120, 0.1),
        'reload: the new workers ran it to the end, unasked';
    is $st->{compaction}{runs}, 1, 'reload: once';
    my %old = map { $_ => 1 } @$qids;
    none_ok([grep { $old{$_} } segment_ids($q->data_dir)],
        'reload: it merged every segment it was asked to');
    like $q->log_since($mark),
        qr/compaction of \S+ cancelled.*compaction started.*compacted/s,
        'reload: the log shows it cancelled, started again and done';
    none_ok([check_keys($q, $qwant)], 'reload: every key intact');

    # done: nothing is owed any more
    sleep 2.5;
    is $q->status->{compaction}{runs}, 1,
        'reload: no further compaction without a new request';
    $q->stop;
}

done_testing;
