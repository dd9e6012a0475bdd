# Crash torture: concurrent writers and deleters, forced and automatic
# compactions on 64k segments (every third cycle automatic ones only), then
# SIGKILL of every nginx process at a random moment (sometimes right after
# a compaction starts), restart, and
# a check of every key against a reference map of acknowledged operations.
# Cycles alternate fsync=always and fsync=off, and index=sorted (two cycles
# of three) with index=hash on the same directory: a sorted merge's
# outputs, masks and tombstones are then replayed by the hash index too.
#
# Reference map: each key belongs to one client process, which journals an
# operation before sending it and its acknowledgement (with the time) after
# (KvTest::spawn_writer).  After a restart a key must hold its last
# acknowledged state, or the result of the one operation that was in
# flight when nginx died; whatever is observed becomes the key's state for
# the next cycle, so a write that was seen lost can never reappear and a
# seen delete can never be undone.  Under kill -9 the OS keeps the page
# cache, so fsync=off owes every write acknowledged before the kill just as
# always does; every acknowledgement was sent by a live nginx, so every
# journaled acknowledgement came before the kill.
#
# After each restart `kvtool check` must find no damage.
#
# Defaults keep it under a minute.  A long soak runs the same test:
#
#   TEST_NGINX_BINARY=/usr/sbin/nginx \
#   TEST_NGINX_LOAD_MODULES=$PWD/build/ngx_http_kv_module.so \
#   KV_TORTURE_CYCLES=500 prove -I t/lib t/crash-torture.t
#
#   KV_TORTURE_CYCLES   number of kill/restart cycles (default 24)
#   KV_TORTURE_SECONDS  longest load before the kill in a cycle (default 1.5)
#   KV_TORTURE_INDEX    hash, sorted, or both (default: both, in turns)

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use KvTest qw(read_file none_ok);

my $CYCLES  = $ENV{KV_TORTURE_CYCLES}  || 24;
my $SECONDS = $ENV{KV_TORTURE_SECONDS} || 1.5;
my $INDEX   = $ENV{KV_TORTURE_INDEX}   || 'both';
$SECONDS = 0.3 if $SECONDS < 0.3;
$CYCLES = 3 if $CYCLES < 3;      # every third cycle is an automatic-only one

my $jdir = KvTest::tmp_root() . '/torture-journals';
mkdir $jdir;

my $srv = KvTest->new(name => 'torture', workers => 2, reuseport => 1,
                      zone_size => '4m', endpoints => 1);
my $dir = $srv->data_dir;

ok -x KvTest::kvtool_path(), 'kvtool is built (' . KvTest::kvtool_path()
    . ')';

# clients: [prefix, delete_every]; writers mostly write, deleters delete
# every second operation
my @clients = ((map { ["w$_", 10] } 1 .. 3), (map { ["d$_", 2] } 1 .. 2));
my $KEYS = 40;

my %state;          # key => id of the value it holds, or 'absent'
for my $c (@clients) {
    $state{"$c->[0]-$_"} = 'absent' for 0 .. $KEYS - 1;
}

my %total = (acks => 0, compact_202 => 0, merge_kills => 0, absent => 0,
             present => 0, auto => 0);

# Posts /kv/compact at random intervals until nginx stops answering.
sub spawn_compactor {
    my ($log) = @_;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid) {
        $KvTest::Writers{$pid} = $log;
        return $pid;
    }
    srand($$ ^ time);
    open my $fh, '>', $log or POSIX::_exit(2);
    select((select($fh), $| = 1)[0]);
    my $deadline = time + $SECONDS + 10;
    while (time < $deadline) {
        sleep 0.05 + rand(0.25);
        my $r = KvTest::http_req($srv->port, 'POST', '/kv/compact', '', undef,
                                 timeout => 5);
        print $fh "$r->{status}\n";
        last if $r->{status} == 0;
    }
    close $fh;
    POSIX::_exit(0);
}

# Reads one cycle's journals: key => { ack => id|'absent'|undef,
# ack_time, pending => [...] }; and the number of acknowledgements.
sub read_cycle {
    my (@files) = @_;
    my (%ops, $acks);
    for my $f (@files) {
        for my $l (split /\n/, read_file($f) // '') {
            my ($t, $op, $key, $id, $st, $x) = split / /, $l;
            next unless defined $id;
            my $k = $ops{$key} ||= { ack => undef, pending => [] };
            my $result = $op eq 'D' ? 'absent' : $id;
            if ($t eq 'A') {
                push @{ $k->{pending} }, $result;
            } elsif ($t eq 'K') {
                @$k{qw(ack ack_time)} = ($result, $x);
                $k->{pending} = [];
                $acks++;
            } elsif ($t eq 'E' && $st != 0) {
                # an HTTP error status: the operation changed nothing
                @{ $k->{pending} } = grep { $_ ne $result } @{ $k->{pending} };
            }
        }
    }
    return (\%ops, $acks // 0);
}

# Checks every key after a restart; returns (problems, resurrections).
sub verify {
    my ($ops, $kill_time) = @_;
    my (@bad, @resurrected);
    for my $key (sort keys %state) {
        my $o = $ops->{$key} || { pending => [] };
        my $base = defined $o->{ack} ? $o->{ack} : $state{$key};
        my @allowed = ($base, @{ $o->{pending} });
        my $r = $srv->get($key);
        my $got;
        if ($r->{status} == 404) {
            $got = 'absent';
        } elsif ($r->{status} == 200) {
            ($got) = $r->{body} =~ /^\Q$key\E=(\d+);/;
            if (!defined $got || $r->{body} ne KvTest::writer_value($key, $got))
            {
                push @bad, "$key: wrong bytes (" . length($r->{body})
                    . ' bytes)';
                next;
            }
        } else {
            push @bad, "$key: status $r->{status} " . ($r->{error} || '');
            next;
        }
        if (!grep { $_ eq $got } @allowed) {
            my $when = defined $o->{ack_time}
                ? sprintf(' %.3f s before the kill',
                          $kill_time - $o->{ack_time})
                : '';
            push @bad, "$key: got $got, expected $base (acknowledged$when),"
                . " in flight [@{ $o->{pending} }]";
            push @resurrected, $key if $base eq 'absent';
        }
        $state{$key} = $got;
        $total{$got eq 'absent' ? 'absent' : 'present'}++;
    }
    return (\@bad, \@resurrected);
}

# kvtool check beside the running nginx; a compaction running during the
# check may show its unfinished outputs, so such a run is repeated.
sub tool_check {
    my ($rc, $out);
    for my $try (1 .. 5) {
        my $before = $srv->wait_compaction_done(30) || {};
        ($rc, $out) = KvTest::kvtool('check', $dir);
        return ($rc, $out) if $rc == 0;
        my $after = $srv->status || {};
        last unless $after->{compaction}{running}
            || ($after->{compaction}{runs} // 0)
               != ($before->{compaction}{runs} // 0);
    }
    return ($rc, $out);
}

my ($prev_ops, $kill_time) = ({}, 0);
my @prev_files;
my $t_start = time;

for my $cycle (1 .. $CYCLES + 1) {
    my $last = $cycle > $CYCLES;
    my $mode = $cycle % 2 ? 'always' : 'off';
    my $index = $INDEX ne 'both' ? $INDEX : $cycle % 3 ? 'sorted' : 'hash';
    $srv->set(zone_extra => "segment_size=64k compact_ratio=25 "
                            . "compact_dead=256k fsync=$mode index=$index");
    my $tag = "cycle $cycle (fsync=$mode, index=$index)";
    my $mark = $srv->log_size;
    if (!$srv->start_ok("$tag: started")) {
        diag $srv->log_tail;
        last;
    }
    like $srv->log_since($mark), qr/recovered \d+ records/,
        "$tag: recovery logged";

    my ($bad, $res) = verify($prev_ops, $kill_time);
    none_ok($bad, "$tag: every key holds its acknowledged value ("
        . scalar(keys %state) . ' keys)');
    is scalar(@$res), 0, "$tag: no deleted key came back"
        or diag "resurrected: @$res";
    unlink @prev_files unless @$bad;

    my ($rc, $out) = tool_check();
    is $rc, 0, "$tag: kvtool check finds no damage" or diag $out;

    last if $last;

    # load, then the kill
    my @files = map { "$jdir/c$cycle-$_->[0]" } @clients;
    for my $i (0 .. $#clients) {
        KvTest::spawn_writer(port => $srv->port, journal => $files[$i],
                             prefix => $clients[$i][0], keys => $KEYS,
                             delete_every => $clients[$i][1],
                             stop_on_fail => 1, max_seconds => $SECONDS + 10,
                             id_base => $cycle * 1_000_000);
    }
    # every third cycle leaves compaction to the thresholds, for at least
    # two maintenance ticks
    my $auto_only = $cycle % 3 == 0;
    my $clog = "$jdir/c$cycle-compactor";
    if ($auto_only) {
        sleep 2.2 + rand($SECONDS);
    } else {
        spawn_compactor($clog);
        sleep 0.1 + rand($SECONDS - 0.1);
        if (rand() < 0.35) {
            # aim at a running compaction
            my $r = $srv->compact;
            $total{compact_202}++ if $r->{status} == 202;
            sleep rand(0.03);
        }
    }
    ok $srv->kill9_all, "$tag: SIGKILL of master and workers";
    $kill_time = time;
    $total{merge_kills}++ if -e "$dir/MERGE";
    ok KvTest::wait_writers(30), "$tag: clients stopped";

    my $acks;
    ($prev_ops, $acks) = read_cycle(@files);
    cmp_ok $acks, '>', 0, "$tag: $acks operations acknowledged";
    $total{acks} += $acks;
    $total{compact_202} += grep { $_ == 202 } split /\n/,
                                                 read_file($clog) // '';
    $total{auto} += () = $srv->log_since($mark) =~ /compaction started/g
        if $auto_only;
    @prev_files = (@files, $clog);
}

my $started = () = $srv->log_text =~ /compaction started/g;
cmp_ok $total{compact_202}, '>', 0,
    "forced compactions were accepted ($total{compact_202})";
cmp_ok $total{auto} // 0, '>', 0, 'automatic compactions ran in the cycles '
    . 'without forced ones (' . ($total{auto} // 0) . ')';
cmp_ok $total{absent}, '>', 0, "deleted keys were checked ($total{absent})";
cmp_ok $total{present}, '>', 0, "present keys were checked ($total{present})";
diag sprintf '%d cycles, %d acknowledged operations, %d compactions '
    . 'started, %d kills left a MERGE file, %.1f s', $CYCLES, $total{acks},
    $started, $total{merge_kills}, time - $t_start;

ok $srv->stop, 'stopped';
done_testing;
