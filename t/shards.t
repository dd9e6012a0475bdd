# Scale-out on loopback with the configurations of deploy/k8s: three shard
# nginx (shard.conf, each its own zone and data directory) behind a router
# nginx (router.conf: plain nginx, "hash $kv_key consistent").
#
#   - 10,000 keys written through the router by concurrent clients while
#     one shard is killed (-9) and restarted: every acknowledged write is
#     on exactly one shard and reads back through the router;
#   - kvtool owner names, for every key, the shard that nginx chose;
#   - a fourth shard: kvtool reshard moves exactly the keys whose owner
#     changed, about a quarter, and every key still reads back;
#   - a shard removed: its keys move to the others.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use POSIX qw(:sys_wait_h);
use KvTest qw(wait_until none_ok free_port);
use KvShards qw(enc dec client request placement servers);

my $KEYS = $ENV{KV_SHARDS_KEYS} || 10_000;
my $WRITERS = 8;

my @shards = map {
    ShardSrv->new(name => "shard$_")->set(admin_port => free_port())
} 0 .. 3;
my @live = @shards[0 .. 2];

for my $s (@live) {
    $s->start_ok("shard " . $s->name . " started from deploy/k8s/shard.conf")
        or BAIL_OUT('cannot start a shard');
}

my $router = RouterSrv->new(name => 'router')
    ->set(shards => [map { $_->name } @live]);
$router->start_ok('router started from deploy/k8s/router.conf')
    or BAIL_OUT('cannot start the router');

# ------------------------------------------------------------- the client

# Keys of several shapes: paths, spaces, UTF-8, a "?" and a "%".
sub key_of {
    my ($i) = @_;
    my @shape = ("user/$i", "k $i", "cl\xc3\xa9/$i", "q?$i", "p%$i",
                 "n$i", "a//b/$i");
    return $shape[$i % @shape];
}

sub value_of { "value of key $_[0] at write $_[1]" }

# ------------------------------------------- 10,000 writes and a restart

my $jdir = KvTest::tmp_root() . '/shard-journals';
mkdir $jdir;

# Writer $w writes keys $w, $w + $WRITERS, ... through the router and
# journals "A<TAB>i" for each acknowledged write and "E<TAB>i<TAB>status"
# for each failed try; a failed write is retried for up to 30 s.
sub writer {
    my ($w) = @_;
    open my $j, '>', "$jdir/w$w" or die "$jdir/w$w: $!";
    $j->autoflush(1);
    my $c = client($router->port);
    for (my $i = $w; $i < $KEYS; $i += $WRITERS) {
        my $key = key_of($i);
        my $deadline = time + 30;
        while (1) {
            my ($st, $err) = request($c, 'PUT', '/db/' . enc($key),
                                     value_of($key, $i));
            if ($st >= 200 && $st < 300) {
                print $j "A\t$i\n";
                last;
            }
            print $j "E\t$i\t$st\n";
            last if time > $deadline;
            sleep 0.05;
        }
    }
    close $j;
    POSIX::_exit(0);
}

my $t0 = time;
my @pids;
for my $w (0 .. $WRITERS - 1) {
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    writer($w) if $pid == 0;
    push @pids, $pid;
}

sub journal {
    my (%ack, %err);
    for my $f (glob "$jdir/w*") {
        open my $fh, '<', $f or next;
        while (<$fh>) {
            chomp;
            my ($t, $i) = split /\t/;
            $t eq 'A' ? $ack{$i}++ : $err{$i}++;
        }
    }
    return (\%ack, \%err);
}

# the restart, once a third of the keys are in
ok wait_until(sub { keys %{ (journal())[0] } > $KEYS / 3 }, 120),
    'a third of the writes acknowledged';
my $victim = $live[1];
ok $victim->kill9_all, 'shard ' . $victim->name . ' killed (-9) mid-writes';
sleep 0.5;
$victim->start_ok('and restarted');

for my $pid (@pids) {
    waitpid $pid, 0;
}
my ($ack, $err) = journal();
my $secs = time - $t0;
is scalar(keys %$ack), $KEYS, "every write acknowledged in the end ($KEYS)";
cmp_ok scalar(keys %$err), '>', 0, 'writes failed while the shard was down ('
    . scalar(keys %$err) . ' keys retried)';
note sprintf "%d writes through the router in %.1f s", $KEYS, $secs;

# ------------------------------------------------- where every key went

# Every acknowledged key on exactly one shard and read back through the
# router; keys that no write created may not exist.
sub check_all {
    my ($what, $where) = @_;
    my @bad;
    my $c = client($router->port);
    for my $i (0 .. $KEYS - 1) {
        my $key = key_of($i);
        my $on = $where->{$key} || [];
        push @bad, "key \"$key\" is on " . @$on . " shards (@$on)" if @$on != 1;
        my ($st, $body) = request($c, 'GET', '/db/' . enc($key));
        push @bad, "GET \"$key\" through the router: $st"
            if $st != 200 || $body ne value_of($key, $i);
    }
    push @bad, scalar(keys %$where) . " keys on the shards, not $KEYS"
        if keys %$where != $KEYS;
    none_ok \@bad, "$what: every key on exactly one shard and read back "
        . "through the router";
}

my ($where, $wrong) = placement(servers(@live), @live);
none_ok $wrong, 'kvtool owner names the shard nginx chose, for every key';
check_all('after the restart', $where);

for my $s (@live) {
    note sprintf "%s holds %d keys", $s->name,
        scalar grep { $_->[0] eq $s->name } values %$where;
}

# keys that $uri would route under another name are refused
for my $p ('/db/a/../b', '/db/a/./b', '/db/a/..', '/db/x%2F..%2Fy',
           '/db/a/%2e%2E')
{
    my ($st, $body) = request(client($router->port), 'PUT', $p, 'v');
    is $st, 400, "the router refuses $p";
}
my ($st) = request(client($router->port), 'GET', '/db/a..b/.c');
is $st, 404, 'dots that are no path segment pass (a..b/.c: 404, no such key)';

# ------------------------------------------------------ a fourth shard

sub reshard_ok {
    my ($servers, $s, $what) = @_;
    my ($rc, $out) = KvTest::kvtool('reshard', "--servers=$servers",
                                    '--self=' . $s->name, $s->data_dir);
    is $rc, 0, "$what: kvtool reshard on " . $s->name . " exits 0"
        or diag $out;
    my ($moved) = $out =~ /moved (\d+)/;
    note $out;
    return $moved // 0;
}

$shards[3]->start_ok('a fourth shard started');
my @four = @shards[0 .. 3];
$router->{shards} = [map { $_->name } @four];

# what must move: the keys whose owner among four shards is another one
my %moving;
for my $s (@live) {
    my ($rc, $out) = KvTest::kvtool('owner', '--servers=' . servers(@four),
                                    $s->data_dir);
    for my $line (split /\n/, $out) {
        my ($owner, $key) = split /\t/, $line;
        $moving{dec($key)} = $owner if $owner ne $s->name;
    }
}
my @elsewhere = grep { $moving{$_} ne $shards[3]->name } keys %moving;
none_ok \@elsewhere, 'a new shard takes keys from the others, and only it '
    . 'gains keys';

ok $router->reload, 'router reloaded with four shards';

my $moved = 0;
$moved += reshard_ok(servers(@four), $_, 'four shards') for @live;
is $moved, scalar(keys %moving), 'kvtool reshard moved exactly the keys '
    . 'whose owner changed (' . scalar(keys %moving) . ')';

($where, $wrong) = placement(servers(@four), @four);
none_ok $wrong, 'after the move, every key is on the shard kvtool and nginx '
    . 'name';
my @misplaced = grep {
    ($where->{$_}[0] // '') ne $shards[3]->name
} keys %moving;
none_ok \@misplaced, 'the keys that moved are on the new shard';
check_all('four shards', $where);

my $fraction = $moved / $KEYS;
diag sprintf "adding a 4th shard moved %d of %d keys: %.3f (ideal 0.25)",
    $moved, $KEYS, $fraction;
cmp_ok $fraction, '>', 0.15, 'about a quarter moved (more than 0.15)';
cmp_ok $fraction, '<', 0.35, 'about a quarter moved (less than 0.35)';

# ------------------------------------------------------ a shard removed

my $gone = $shards[1];
my @three = grep { $_ != $gone } @four;
$router->{shards} = [map { $_->name } @three];
ok $router->reload, 'router reloaded without ' . $gone->name;
my $held = grep { $where->{$_}[0] eq $gone->name } keys %$where;
$moved = reshard_ok(servers(@three), $gone, 'shard removed');
is $moved, $held, "every key of the removed shard moved ($held)";

($where, $wrong) = placement(servers(@three), @four);
none_ok $wrong, 'after the removal, every key is on the shard kvtool and '
    . 'nginx name';
check_all('shard removed', $where);
diag sprintf "removing a shard of four moved %d of %d keys: %.3f",
    $moved, $KEYS, $moved / $KEYS;

# a dry run moves nothing and says so
my ($rc, $out) = KvTest::kvtool('reshard', '--servers=' . servers(@three),
                                '--self=' . $shards[0]->name, '--dry-run',
                                $shards[0]->data_dir);
like $out, qr/, 0 owned by other servers/, 'a dry run after the move: '
    . 'nothing left to move';

ok $_->stop, 'stopped ' . ($_->can('name') ? $_->name : 'router')
    for $router, @four;

done_testing;
