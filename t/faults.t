# Fault injection: nginx runs with t/lib/kvfault.c preloaded, which fails
# open(), write()/pwrite()/pwritev() (with EIO or ENOSPC, or short),
# fdatasync()/fsync() and rename() on the data directory while the test
# says so.  Each failed write gets a 5xx and a JSON error, the error log
# names the file, reads keep working, nothing unacknowledged is claimed,
# and after a restart (without the shim) every acknowledged write is there
# and kvtool check finds the directory sound.
#
# make t puts the shim's path in KV_FAULT_SHIM.

use strict;
use warnings;

use Test::More;
use KvTest;

my $E = qr/^\{\s*"error"\s*:\s*"(?:[^"\\]|\\.)+"\s*\}\s*$/s;

my $shim = $ENV{KV_FAULT_SHIM};
die "KV_FAULT_SHIM is not set: run this suite with make t\n"
    unless $shim && -f $shim;

my $root  = KvTest::tmp_root();
my $rules = "$root/fault-rules";
my $dir   = "$root/data-faults";

# faults(OP [ERRNO], ...): the calls that fail from now on, on $dir
sub faults {
    KvTest::write_file($rules, join '', map { my ($op, $e) = split / /;
        "$op $dir" . (defined $e ? " $e" : '') . "\n" } @_);
}

faults();

my $srv = KvTest->new(name => 'faults', data_dir => $dir, endpoints => 1,
                      zone_extra => 'segment_size=64k',
                      env => { LD_PRELOAD => $shim, KV_FAULTS => $rules });
$srv->start_ok or BAIL_OUT('cannot start nginx');

# the last acknowledged value of each key, the values tried after it
# (which a failed flush may leave readable), every value ever tried
my (%acked, %later, %tried);
my $n = 0;

# a PUT of a fresh value of $key; remembers what a later read may show
sub put {
    my ($key, $len) = @_;
    my $v = sprintf("%s #%d ", $key, ++$n) . ('v' x ($len || 100));
    my $r = $srv->put($key, $v);
    push @{$tried{$key}}, $v;
    if ($r->{status} == 201) {
        $acked{$key} = $v;
        $later{$key} = [];
    } else {
        push @{$later{$key}}, $v;
    }
    $r->{value} = $v;
    return $r;
}

# every key acknowledged reads back as its last acknowledged value, or a
# value tried after it
sub all_read_back {
    my ($what) = @_;
    my @bad = grep { my $r = $srv->get($_); my $b = $r->{body} // '';
                     !($r->{status} == 200
                       && grep { $_ eq $b } $acked{$_}, @{$later{$_}}) }
              sort keys %acked;
    is scalar(@bad), 0, $what
        or diag 'wrong: ' . join ' ', @bad[0 .. ($#bad < 4 ? $#bad : 4)];
}

sub log_names_file {
    my ($mark, $re, $what) = @_;
    like $srv->log_since($mark), qr/$re.*\Q$dir\E/, $what;
}

put("k$_") for 1 .. 30;
is scalar(keys %acked), 30, 'before any fault, 30 writes are acknowledged';


# write() fails with EIO, then ENOSPC

my $mark = $srv->log_size;
faults('write EIO');
my $r = put('k1');
is $r->{status}, 500, 'a write that fails with EIO is 500';
like $r->{body} // '', $E, 'with a JSON error';
ok !exists $r->{headers}{etag}, 'and no ETag';
log_names_file($mark, qr/appending \d+ bytes to "[^"]*/,
               'the log names the segment the write failed on');
like $srv->log_since($mark), qr/Input\/output error/, 'and says EIO';
is $srv->get('k1')->{body}, $acked{'k1'},
   'the key keeps its acknowledged value';
is put('new1')->{status}, 500, 'a new key is refused too';
is $srv->get('new1')->{status}, 404, 'and is not there';

faults('write ENOSPC');
$r = put('k2');
is $r->{status}, 507, 'a write that fails with ENOSPC is 507';
like $r->{body} // '', $E, 'with a JSON error';

faults();
is put('k2')->{status}, 201, 'with the fault gone, writes work again';
all_read_back('every acknowledged value reads back after write errors');


# short writes: the store finishes each record

faults('short');
my @short = map { put("short$_", 1000 * $_ * $_) } 1 .. 12;
is scalar(grep { $_->{status} == 201 } @short), 12,
   'writes through short pwritev() calls are all acknowledged';
faults();
all_read_back('and read back whole, 100 B to 144 KB');


# open() fails: the segment roll-over cannot create the next file

$mark = $srv->log_size;
faults('open EIO');
my @roll = map { put("roll$_", 8000) } 1 .. 12;
my @failed = grep { $_->{status} != 201 } @roll;
ok scalar(@failed) > 0, 'writes that need a new segment fail ('
   . scalar(@failed) . ' of 12)';
is scalar(grep { $_->{status} != 500 && $_->{status} != 507 } @failed), 0,
   'with 500 or 507';
log_names_file($mark, qr/"[^"]*/, 'the log names the file it could not open');
faults();
is put('roll-after', 8000)->{status}, 201, 'once open() works, writes roll '
   . 'over to a new segment';
all_read_back('every acknowledged value reads back after failed opens');


# rename() fails: a compaction cannot install its output

put("k$_") for 1 .. 30;
$mark = $srv->log_size;
faults('rename EIO');
is $srv->compact->{status}, 202, 'a compaction starts';
my $st = $srv->wait_compaction_done;
ok $st, 'and ends';
log_names_file($mark, qr/rename\("[^"]*/,
               'the log names the file that could not be renamed');
all_read_back('every acknowledged value reads back after the failed '
              . 'compaction');
is put('k3')->{status}, 201, 'writes go on during the rename faults';
faults();
is $srv->compact->{status}, 202, 'with rename() back, a compaction starts';
$st = $srv->wait_compaction_done;
ok $st && $st->{compaction}{runs} >= 1, 'and completes';
all_read_back('every acknowledged value reads back after the compaction');


# fdatasync() fails: the write is not acknowledged, and nothing after it

$mark = $srv->log_size;
faults('sync EIO');
$r = put('k4');
is $r->{status}, 500, 'a write whose flush fails is 500';
like $r->{body} // '', $E, 'with a JSON error';
log_names_file($mark, qr/flushing "[^"]*/,
               'the log names the file that could not be flushed');
faults();
$r = put('k5');
is $r->{status}, 500, 'later writes are refused until a restart';
like $srv->log_since($mark), qr/restart/, 'the log says to restart';
is $srv->req('GET', '/readyz')->{status}, 503, '/readyz says not ready';
$st = $srv->status;
ok $st && $st->{fsync}{failed}, 'the status says the flush failed';
all_read_back('reads keep working');

ok $srv->stop, 'stopped';


# restart without the shim: everything acknowledged is there

$srv->set(env => {});
$srv->start_ok('restarted without faults');
all_read_back('after the restart every acknowledged write is there');

my @odd;
for my $key (sort keys %tried) {
    my $r = $srv->get($key);
    next if $r->{status} == 404 && !exists $acked{$key};
    push @odd, $key unless $r->{status} == 200
                           && grep { $_ eq $r->{body} } @{$tried{$key}};
}
is scalar(@odd), 0, 'no key reads as anything but a value written to it';

is put('after')->{status}, 201, 'writes work again';
ok $srv->stop, 'stopped';

my ($rc, $out) = KvTest::kvtool('check', $dir);
is $rc, 0, 'kvtool check finds the data directory sound' or diag $out;

done_testing;
