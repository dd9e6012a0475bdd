# A walk over every key by cursor while other clients write and delete:
# each key that exists for the whole walk is listed exactly once, in
# order, and no key deleted before the walk began is listed.  Two workers;
# index=hash, then index=sorted with a zone so small that merges move
# keys into sorted segments during the walks.

use strict;
use warnings;

use Test::More;
use JSON::PP ();
use POSIX ();
use KvTest qw(http_req);

our ($srv, $port, $stop, $index);
my ($nstable, $ndoomed, $nchurn) = (3000, 1000, 400);

# a 507 (index=sorted: the zone full while a merge runs) is retried
sub put_ok {
    my ($key, $value) = @_;
    for (1 .. 200) {
        my $r = http_req($port, 'PUT', "/db/$key", $value,
                         'application/octet-stream');
        return 1 if $r->{status} == 201;
        return 0 if $r->{status} != 507;
        select(undef, undef, undef, 0.02);
    }
    return 0;
}

for $index ('hash', 'sorted') {
    $srv = KvTest->new(name => "listwalk-$index", workers => 2,
                       zone_size => $index eq 'hash' ? '8m' : '256k',
                       zone_extra => "index=$index segment_size=64k",
                       endpoints => 1, http_extra => '    kv_list on;');
    $srv->start_ok("index=$index: started") or BAIL_OUT("cannot start nginx");
    $port = $srv->port;
    $stop = KvTest::tmp_root() . "/listwalk-stop-$index";
    unlink $stop;
    walk_test();
    $srv->stop;
    unlink $stop;
}

done_testing();


sub walk_test {

my $bad = 0;
for my $i (1 .. $nstable) { $bad++ unless put_ok(sprintf("s:%05d", $i), "v$i") }
for my $i (1 .. $ndoomed) { $bad++ unless put_ok(sprintf("d:%05d", $i), "v$i") }
for my $i (1 .. $nchurn)  { $bad++ unless put_ok(sprintf("c:%05d", $i), "v$i") }
for my $i (1 .. $ndoomed) {
    my $r = http_req($port, 'DELETE', sprintf("/db/d:%05d", $i));
    $bad++ unless $r->{status} == 200;
}
is($bad, 0, "$index: preload: every write and delete acknowledged");
my $runs0 = $srv->status->{compaction}{runs};

# writers: new keys, deletes and re-creates of churn keys, overwrites of
# stable keys (which exist all along)
my @pids;
for my $w (1 .. 2) {
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my $n = 0;
        while (!-e $stop && $n < 200000) {
            $n++;
            put_ok("n:$w:" . sprintf("%06d", $n), "x");
            my $c = sprintf("c:%05d", 1 + ($n * 7 + $w) % $nchurn);
            http_req($port, 'DELETE', "/db/$c");
            put_ok($c, "y");
            put_ok(sprintf("s:%05d", 1 + ($n * 13 + $w) % $nstable), "o$n");
        }
        POSIX::_exit(0);
    }
    push @pids, $pid;
}

# a walk by cursor; returns the keys and how many pages it took
sub walk {
    my ($limit, $values) = @_;
    my (@keys, $cursor, $pages, $errors);
    $pages = 0;
    $errors = 0;
    do {
        my $q = "limit=$limit" . ($values ? "&values=1" : "")
                . (defined $cursor ? "&cursor=$cursor" : "");
        my $r = http_req($port, 'GET', "/db/?$q");
        if ($r->{status} != 200) {
            diag("page $pages: $r->{status} $r->{body}");
            $errors++;
            last;
        }
        my $page = JSON::PP::decode_json($r->{body});
        if ($values && @{ $page->{values} } != @{ $page->{keys} }) {
            $errors++;
        }
        push @keys, @{ $page->{keys} };
        $cursor = $page->{cursor};
        $pages++;
    } while (defined $cursor);
    return (\@keys, $pages, $errors);
}

sub check_walk {
    my ($name, $keys, $pages, $errors) = @_;
    is($errors, 0, "$name: every page is 200");
    my $order = 0;
    for my $i (1 .. $#$keys) {
        $order++ unless $keys->[$i - 1] lt $keys->[$i];
    }
    is($order, 0, "$name: keys strictly ascending across $pages pages");
    my %seen;
    $seen{$_}++ for @$keys;
    my @stable = grep { ($seen{sprintf("s:%05d", $_)} // 0) != 1 } 1 .. $nstable;
    is(scalar @stable, 0, "$name: each of the $nstable keys that exist "
                          . "all along listed exactly once");
    my @doomed = grep { /^d:/ } @$keys;
    is(scalar @doomed, 0, "$name: no key deleted before the walk");
}

sleep 0.3;
check_walk("$index: limit 37", walk(37, 0));
check_walk("$index: limit 1000, values", walk(1000, 1));
check_walk("$index: limit 1", walk(1, 0));

open my $fh, '>', $stop or die; close $fh;
waitpid($_, 0) for @pids;

if ($index eq 'sorted') {
    ok($srv->status->{compaction}{runs} > $runs0,
       "$index: merges ran during the walks");

    # one merge of everything: the status then counts each key once
    my ($code, $done) = $srv->compact_and_wait;
    is($code, 202, "$index: POST /kv/compact");
    ok($done, "$index: the full merge ended");
}

# after the writers: a walk is exactly the keys that exist
my ($keys) = walk(500, 0);
my $stray = 0;
for my $k (@$keys) {
    my $r = http_req($port, 'GET', "/db/$k");
    $stray++ unless $r->{status} == 200;
}
is($stray, 0, "$index: quiet store: every listed key is readable");
my $st = $srv->status;
is(scalar @$keys, $st->{keys}, "$index: quiet store: the walk lists as "
                               . "many keys as the store holds");
ok((grep { /^n:/ } @$keys) > 100, "$index: the writers wrote during the "
                                  . "walks");
}
