# worker_processes 2, with `listen ... reuseport` so that connections are
# spread over both workers, and each response names its worker (X-Pid).
# A write acknowledged by one worker must be read back by the other at once;
# the test asserts that such cross-worker pairs really happened.

use strict;
use warnings;

use Test::More;
use KvTest;

my $srv = KvTest->new(name => 'wpids', workers => 2, reuseport => 1);
$srv->start_ok or BAIL_OUT("cannot start nginx");

my @workers = $srv->worker_pids;
is scalar(@workers), 2, 'two worker processes';

my (%seen, $cross, $bad, $n);
for my $round (1 .. 150) {
    my $key = "k" . ($round % 37);
    my $val = "v$round-" . ('x' x ($round % 50));
    my $w = $srv->put($key, $val);
    if ($w->{status} != 201) {
        $bad++;
        diag "PUT $key: $w->{status} " . ($w->{error} || '');
        next;
    }
    my $r = $srv->get($key);
    $n++;
    $seen{ $w->{headers}{'x-pid'} // '?' }++;
    $seen{ $r->{headers}{'x-pid'} // '?' }++;
    if ($r->{status} != 200 || $r->{body} ne $val) {
        $bad++;
        diag "GET $key after PUT via pid $w->{headers}{'x-pid'}: status $r->{status}, "
            . "via pid " . ($r->{headers}{'x-pid'} // '?');
        next;
    }
    $cross++ if ($w->{headers}{'x-pid'} // '') ne ($r->{headers}{'x-pid'} // '');
}

ok !$bad, 'every read right after an acknowledged write saw it'
    or diag "$bad failures";
cmp_ok scalar(grep { $_ ne '?' } keys %seen), '>=', 2, 'both workers served requests'
    or diag explain \%seen;
cmp_ok $cross // 0, '>', 5, 'writes via one worker were read via the other'
    or diag "cross-worker pairs: " . ($cross // 0);

# deletes via one worker are seen by the other
my $del_cross = 0;
my $del_bad = 0;
for my $i (1 .. 40) {
    my $key = "d$i";
    $srv->put($key, "x")->{status} == 201 or do { $del_bad++; next };
    my $d = $srv->req(DELETE => "/db/$key");
    my $r = $srv->get($key);
    $del_bad++ unless $d->{status} == 200 && $r->{status} == 404;
    $del_cross++ if ($d->{headers}{'x-pid'} // '') ne ($r->{headers}{'x-pid'} // '');
}
ok !$del_bad, 'a delete is seen by the next read on any worker';
cmp_ok $del_cross, '>', 2, 'deletes and reads crossed workers';

ok $srv->stop, 'graceful stop';
done_testing;
