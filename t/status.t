# GET /kv/status: every field with its type, counters that follow puts,
# overwrites and deletes exactly (the frame lengths are read back from the
# segment file), the fsync mode of each policy, index memory, segment
# roll-over, 405 for other methods, and a zone that only kv_status uses.

use strict;
use warnings;

use Test::More;
use KvTest qw(read_file frames_of segment_ids);

my $INT = qr/^\d+$/;

sub is_bool {
    my ($v) = @_;
    return JSON::PP::is_bool($v);
}

# Checks that every field of the interface is there with its JSON type.
sub check_shape {
    my ($st, $what) = @_;
    my @bad;
    for my $f (qw(keys live_bytes dead_bytes segments active_segment puts
                  deletes write_errors)) {
        push @bad, $f unless defined $st->{$f} && !ref $st->{$f}
                             && $st->{$f} =~ $INT;
    }
    push @bad, 'zone' unless defined $st->{zone} && !ref $st->{zone};
    push @bad, 'open' unless is_bool($st->{open});
    my %sub = (
        index      => [qw(zone_bytes used_bytes free_bytes)],
        compaction => [qw(runs reclaimed_bytes)],
        recovery   => [qw(ms segments_from_hints segments_scanned
                          truncated_bytes)],
        fsync      => [qw(interval_ms count durable_segment)],
    );
    for my $o (sort keys %sub) {
        if (ref $st->{$o} ne 'HASH') {
            push @bad, $o;
            next;
        }
        for my $f (@{ $sub{$o} }) {
            my $v = $st->{$o}{$f};
            push @bad, "$o.$f" unless defined $v && !ref $v && $v =~ $INT;
        }
    }
    push @bad, 'compaction.running'
        unless is_bool(($st->{compaction} || {})->{running});
    push @bad, 'fsync.failed' unless is_bool(($st->{fsync} || {})->{failed});
    push @bad, 'recovery.method'
        unless (($st->{recovery} || {})->{method} || '')
               =~ /^(?:hints|scan|hints and scan)$/;
    push @bad, 'fsync.mode'
        unless (($st->{fsync} || {})->{mode} || '')
               =~ /^(?:off|interval|always)$/;
    is "@bad", '', "$what: every field present with its type";
}

my $srv = KvTest->new(name => 'status', zone_size => '1m',
                      zone_extra => 'segment_size=64k fsync=always',
                      endpoints => 1,
                      http_extra => "    kv_zone zone=other:256k path="
                                    . KvTest::tmp_root() . "/status-other;",
                      server_extra => '        location = /other/status '
                                      . '{ kv_status other; }');
$srv->start_ok or BAIL_OUT('cannot start nginx');

# --- shape and a fresh store

my $r = $srv->req(GET => '/kv/status');
is $r->{status}, 200, 'GET /kv/status: 200';
like $r->{headers}{'content-type'} || '', qr{^application/json},
    'JSON content type';
my $st0 = $srv->status;
ok $st0, 'the body is a JSON object' or BAIL_OUT("body: $r->{body}");
check_shape($st0, 'fresh store');
is $st0->{zone}, 'store', 'zone name';
ok $st0->{open}, 'open is true';
is_deeply [@$st0{qw(keys live_bytes dead_bytes puts deletes write_errors)}],
    [0, 0, 0, 0, 0, 0], 'a fresh store counts nothing';
cmp_ok $st0->{segments}, '>=', 1, 'at least the active segment';
is $st0->{active_segment}, (segment_ids($srv->data_dir))[-1],
    'active_segment is the highest segment file';
ok !$st0->{compaction}{running}, 'no compaction running';
is $st0->{compaction}{runs}, 0, 'no compaction run yet';
is $st0->{fsync}{mode}, 'always', 'fsync mode always';
is $st0->{fsync}{interval_ms}, 0, 'no interval under always';
ok !$st0->{fsync}{failed}, 'fsync not failed';
is $st0->{index}{zone_bytes}, 1024 * 1024, 'zone_bytes is the zone size (1m)';
is $st0->{index}{used_bytes} + $st0->{index}{free_bytes},
    $st0->{index}{zone_bytes}, 'used + free = zone_bytes';
cmp_ok $st0->{index}{used_bytes}, '>', 0, 'the index uses some memory';
cmp_ok $st0->{index}{free_bytes}, '>', 0, 'and leaves some free';

# --- counters after puts, an overwrite and a delete, against the log

my $seg = $srv->data_dir . sprintf('/%010u.kvlog', $st0->{active_segment});
my $start = -s $seg || 0;

sub new_frames {
    my ($data) = @_;
    my ($frames) = frames_of(substr($data, $start));
    return map { $_->[1] } @$frames;
}

my $va = 'a' x 100;
is $srv->put('ka', $va)->{status}, 201, 'PUT ka';
is $srv->put('kb', 'b' x 50)->{status}, 201, 'PUT kb';
my @f = new_frames(read_file($seg));
is scalar(@f), 2, 'two frames in the log';
my $st = $srv->status;
is $st->{keys}, 2, 'keys 2';
is $st->{puts}, 2, 'puts 2';
is $st->{live_bytes}, $f[0] + $f[1], 'live_bytes = the two frames';
is $st->{dead_bytes}, 0, 'dead_bytes 0';

is $srv->put('ka', 'A' x 100)->{status}, 201, 'overwrite ka';
@f = new_frames(read_file($seg));
$st = $srv->status;
is $st->{keys}, 2, 'keys still 2 after the overwrite';
is $st->{puts}, 3, 'puts 3';
is $st->{live_bytes}, $f[1] + $f[2], 'live_bytes = kb + the new ka';
is $st->{dead_bytes}, $f[0], 'dead_bytes = the old ka frame';

is $srv->req(DELETE => '/db/ka')->{status}, 200, 'DELETE ka';
@f = new_frames(read_file($seg));
is scalar(@f), 4, 'a tombstone frame was appended';
$st = $srv->status;
is $st->{keys}, 1, 'keys 1 after the delete';
is $st->{deletes}, 1, 'deletes 1';
is $st->{puts}, 3, 'puts unchanged by a delete';
is $st->{live_bytes}, $f[1], 'live_bytes = kb only';
is $st->{dead_bytes}, $f[0] + $f[2] + $f[3],
    'dead_bytes = both ka frames and the tombstone';
is $st->{write_errors}, 0, 'no write errors';

# --- fsync count grows under always: every acknowledged write was flushed

my $c0 = $st->{fsync}{count};
for my $i (1 .. 20) {
    $srv->put("seq-$i", "value $i");
}
$st = $srv->status;
cmp_ok $st->{fsync}{count} - $c0, '>=', 20,
    'fsync=always: 20 sequential writes took at least 20 flushes ('
    . ($st->{fsync}{count} - $c0) . ')';
is $st->{fsync}{durable_segment}, $st->{active_segment},
    'durable_segment is the active segment once writes were acknowledged';

# --- index memory: many keys use more of it

my $used0 = $st->{index}{used_bytes};
my $free0 = $st->{index}{free_bytes};
my $fails = 0;
for my $i (1 .. 1500) {
    $fails++ unless $srv->put(sprintf('index-key-%0100d', $i), 'v')->{status}
                    == 201;
}
is $fails, 0, '1500 keys of 110 bytes stored';
$st = $srv->status;
is $st->{keys}, 1 + 20 + 1500, 'keys counts them all';
cmp_ok $st->{index}{used_bytes}, '>', $used0 + 1500 * 110,
    'index used_bytes grew by at least the key bytes';
cmp_ok $st->{index}{free_bytes}, '<', $free0, 'free_bytes shrank';
is $st->{index}{used_bytes} + $st->{index}{free_bytes},
    $st->{index}{zone_bytes}, 'used + free = zone_bytes';

# --- segments roll over at segment_size=64k

my $seg0 = $st->{segments};
my $act0 = $st->{active_segment};
for my $i (1 .. 40) {
    $srv->put("big-$i", 'x' x 8000);
}
$st = $srv->status;
cmp_ok $st->{segments}, '>=', $seg0 + 3,
    "320 kB of writes rolled 64k segments ($seg0 -> $st->{segments})";
cmp_ok $st->{active_segment}, '>=', $act0 + 3, 'active_segment moved on';
my @ids = segment_ids($srv->data_dir);
is $st->{segments}, scalar(@ids), 'segments = segment files in the directory';
is $st->{active_segment}, $ids[-1], 'active_segment = the highest file';

# --- other methods: 405 with a JSON error

for my $m (qw(POST PUT DELETE)) {
    $r = $srv->req($m => '/kv/status', '');
    is $r->{status}, 405, "$m /kv/status: 405";
    like $r->{body} || '', qr/^\s*\{.*"error"/s, "$m /kv/status: JSON error";
}
$r = $srv->req(HEAD => '/kv/status');
is $r->{status}, 200, 'HEAD /kv/status: 200';

# --- a zone used by kv_status only is opened and reported

my $o = KvTest::http_req($srv->port, 'GET', '/other/status');
is $o->{status}, 200, 'status of a zone without a kv location: 200';
my $oj = eval { JSON::PP->new->decode($o->{body}) } || {};
check_shape($oj, 'kv_status-only zone');
is $oj->{zone}, 'other', 'it reports its own zone';
ok $oj->{open}, 'and it is open';
is $oj->{keys}, 0, 'with no keys';
is $oj->{index}{zone_bytes}, 256 * 1024, 'and its own zone size';

ok $srv->stop, 'stopped';

# --- the fsync mode reflects the configuration

for my $case (['off', 'off', 0], ['interval:250ms', 'interval', 250],
              ['interval:2s', 'interval', 2000], ['always', 'always', 0])
{
    my ($conf, $mode, $ms) = @$case;
    my $s = KvTest->new(name => 'status-fsync', endpoints => 1,
                        zone_extra => "fsync=$conf");
    if (!$s->start_ok("fsync=$conf: started")) {
        fail("fsync=$conf: status") for 1 .. 3;
        next;
    }
    is $s->put('k', 'v')->{status}, 201, "fsync=$conf: PUT works";
    my $j = $s->status || {};
    is $j->{fsync}{mode}, $mode, "fsync=$conf: mode $mode";
    is $j->{fsync}{interval_ms}, $ms, "fsync=$conf: interval_ms $ms";
    $s->stop;
}

# --- a restart reports its recovery

my $rs = KvTest->new(name => 'status-recovery', endpoints => 1,
                     zone_extra => 'segment_size=64k');
$rs->start_ok;
$rs->put("r-$_", 'y' x 3000) for 1 .. 60;
$rs->stop;
$rs->start_ok('restarted');
$st = $rs->status || {};
is $st->{keys}, 60, 'keys after the restart';
cmp_ok $st->{recovery}{segments_from_hints} + $st->{recovery}{segments_scanned},
    '==', $st->{segments}, 'every segment was loaded from a hint or scanned';
cmp_ok $st->{recovery}{segments_scanned}, '>=', 1,
    'the active segment was scanned';
is $st->{recovery}{truncated_bytes}, 0, 'nothing truncated after a clean stop';
$rs->stop;

done_testing;
