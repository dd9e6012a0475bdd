# kvtool owner and kvtool reshard beyond t/shards.t: weights as nginx
# weighs them, a move that fails while the new owner is down and finishes
# when run again, a key written to its new owner before the move is not
# overwritten, keys with a TTL keep it, and the command line's errors.

use strict;
use warnings;

use Test::More;
use KvTest qw(none_ok free_port);
use KvShards qw(enc dec client request placement);

my $KEYS = 600;

my @shards = map {
    ShardSrv->new(name => "rs$_")->set(admin_port => free_port())
} 0 .. 2;
my ($first, $heavy, $third) = @shards;

$_->start_ok for $first, $heavy;

# b counts three times: 480 points against a's 160
my $two = join ',', $first->name, $heavy->name . ' weight=3';
my $router = RouterSrv->new(name => 'rs-router')
    ->set(shards => [$first->name, $heavy->name . ' weight=3']);
$router->start_ok or BAIL_OUT('cannot start the router');

my $rc = client($router->port);
my @failed;
# every 10th key has a TTL
for my $i (0 .. $KEYS - 1) {
    my $ttl = $i % 10 ? '' : '?ttl=3600';
    my ($st) = request($rc, 'PUT', "/db/key-$i$ttl", "v$i");
    push @failed, "PUT key-$i: $st" if $st != 201 && $st != 200;
}
none_ok \@failed, "$KEYS keys written through the router";

my ($where, $wrong) = placement($two, $first, $heavy);
none_ok $wrong, 'with weights, kvtool owner names the shard nginx chose';
my $on_b = grep { $where->{$_}[0] eq $heavy->name } keys %$where;
cmp_ok $on_b, '>', $KEYS * 0.6, "the shard of weight 3 holds most keys "
    . "($on_b of $KEYS)";

# ------------------------------------------ a move to a shard that is down

my $three = join ',', $first->name, $heavy->name . ' weight=3', $third->name;
$router->{shards} = [$first->name, $heavy->name . ' weight=3', $third->name];
ok $router->reload, 'router reloaded with a third shard, not started yet';

my ($st, $out) = KvTest::kvtool('reshard', "--servers=$three",
                                '--self=' . $first->name, $first->data_dir);
is $st, 1, 'reshard exits 1 when the new owner is down';
like $out, qr/cannot connect to 127\.0\.0\.1:\d+/, 'and says why';
my ($moving) = $out =~ /(\d+) owned by other servers/;
like $out, qr/moved 0: .* $moving failed/, "and that all $moving keys failed";
cmp_ok $moving, '>', 0, 'some keys of the first shard belong to the third';
my ($now) = placement($three, $first);
is scalar(grep { $now->{$_}[0] eq $first->name } keys %$now),
    scalar(grep { $where->{$_}[0] eq $first->name } keys %$where),
    'a failed move leaves the keys where they were';

# ------------------------ the owner is back; one key was written there

$third->start_ok('the third shard started');
my %owner;
for my $s ($first, $heavy) {
    my (undef, $lines) = KvTest::kvtool('owner', "--servers=$three",
                                        $s->data_dir);
    for (split /\n/, $lines) {
        my ($o, $key) = split /\t/;
        $owner{dec($key)} = $o;
    }
}
my ($newer) = sort grep {
    $owner{$_} eq $third->name && $where->{$_}[0] eq $first->name
} keys %owner;
ok defined $newer, "a key that moves from the first shard to the third";
($st) = request($rc, 'PUT', '/db/' . enc($newer), 'newer');
is $st, 201, "\"$newer\" written anew through the router (to the third shard)";

($st, $out) = KvTest::kvtool('reshard', "--servers=$three",
                             '--self=' . $first->name, $first->data_dir);
is $st, 0, 'reshard run again exits 0' or diag $out;
like $out, qr/moved $moving: \d+ copied, 1 already on their owner; 0 failed/,
    'it moved every key, one of them already on its owner';
($st, $out) = KvTest::kvtool('reshard', "--servers=$three",
                             '--self=' . $heavy->name, $heavy->data_dir);
is $st, 0, 'reshard of the weighted shard exits 0' or diag $out;

my ($s2, $body) = request($rc, 'GET', '/db/' . enc($newer));
is "$s2 $body", '200 newer', 'the newer value was not overwritten';

($where, $wrong) = placement($three, $first, $heavy, $third);
none_ok $wrong, 'every key is on its owner';
my @bad;
for my $i (0 .. $KEYS - 1) {
    my $key = "key-$i";
    my $want = $key eq $newer ? 'newer' : "v$i";
    my ($s, $v) = request($rc, 'GET', "/db/$key");
    push @bad, "GET $key: $s $v" unless $s == 200 && $v eq $want;
    push @bad, "$key is on " . scalar(@{ $where->{$key} || [] }) . ' shards'
        unless @{ $where->{$key} || [] } == 1;
}
none_ok \@bad, 'every key reads back through the router, from one shard';

my @lost;
for my $i (grep { $_ % 10 == 0 } 0 .. $KEYS - 1) {
    next if "key-$i" eq $newer;
    my $r = KvTest::http_req($router->port, 'GET', "/db/key-$i");
    push @lost, "key-$i: no X-KV-Expires"
        unless defined $r->{headers}{'x-kv-expires'};
}
none_ok \@lost, 'the keys with a TTL kept it through the move';

($st, $out) = KvTest::kvtool('reshard', "--servers=$three",
                             '--self=' . $first->name, '--dry-run',
                             $first->data_dir);
is $st, 0, 'a dry run exits 0';
like $out, qr/, 0 owned by other servers\n\z/, 'and finds nothing to move';

# --self naming another shard than the one of the directory
my ($before) = placement($three, $first);
($st, $out) = KvTest::kvtool('reshard', "--servers=$three",
                             '--self=' . $heavy->name, $first->data_dir);
is $st, 1, 'reshard refuses a --self that does not serve the directory';
like $out, qr/is \S+ the server of this data directory/, 'and says why';
my ($after) = placement($three, $first);
is scalar(keys %$after), scalar(keys %$before), 'and moved nothing';

# ------------------ a key written on the old shard while it is being moved

# reshard reads a copy of the third shard's directory taken before the
# write, so the version it copies is older than the one the shard has
my $snap = KvTest::tmp_root() . '/reshard-snapshot';
system('cp', '-a', $third->data_dir, $snap) == 0 or die "cp: $?";
unlink "$snap/LOCK";
($where) = placement($three, $third);
my ($written) = sort keys %$where;
ok defined $written, "\"$written\" is on the third shard";
($st) = request($rc, 'PUT', '/db/' . enc($written), 'written during');
is $st, 201, 'it is written anew through the router, after the copy';

$router->{shards} = [$first->name, $heavy->name . ' weight=3'];
ok $router->reload, 'the router drops the third shard';
($st, $out) = KvTest::kvtool('reshard', "--servers=$two",
                             '--self=' . $third->name, $snap);
is $st, 1, 'reshard of the old copy exits 1';
like $out, qr/key "\Q$written\E" was written on \S+ during its move: (?#
              )the copy on \S+ was taken back/,
     'it reports the key written during its move, and takes its copy back'
    or diag $out;
my ($s3, $b3) = request($rc, 'GET', '/db/' . enc($written));
is $s3, 404, 'the old copy is not on the new owner';
my $r3 = KvTest::http_req($third->port, 'GET', '/db/' . enc($written));
is "$r3->{status} $r3->{body}", '200 written during',
   'the newer value is still on the third shard';

($st, $out) = KvTest::kvtool('reshard', "--servers=$two",
                             '--self=' . $third->name, $third->data_dir);
is $st, 0, 'reshard of the live directory exits 0' or diag $out;
($s3, $b3) = request($rc, 'GET', '/db/' . enc($written));
is "$s3 $b3", '200 written during', 'and moves the newer value';

# ---------------------------------------------------------- command line

my $dir = $first->data_dir;
for my $case (
    [['reshard', "--servers=$three", $dir], 'reshard without --self'],
    [['owner', '--servers=', $dir], 'an empty --servers'],
    [['owner', '--servers=a:1,a:1', $dir], 'a server twice'],
    [['owner', '--servers=a:1 weight=0', $dir], 'weight=0'],
    [['owner', '--servers=a:1 backup', $dir], 'a parameter other than weight'],
    [['owner', '--servers=a:1', '--self=a:1', $dir], 'owner with --self'],
    [['reshard', '--servers=a:1', '--self=a:1', '--prefix=db', $dir],
     'a prefix without "/"'],
    [['owner', '--servers=a:1', '--bogus', $dir], 'an unknown option'],
    [['owner', '--servers=a:1'], 'no directory'])
{
    my ($args, $what) = @$case;
    my ($code, $msg) = KvTest::kvtool(@$args);
    is $code, 2, "usage error: $what (exit 2)" or diag $msg;
}
($st, $out) = KvTest::kvtool('owner', '--servers=a:1', "$dir/none");
is $st, 1, 'a directory that does not exist: exit 1';

ok $_->stop, 'stopped' for $router, @shards;

done_testing;
