# kill -9: a 201 means write(2) is done, so SIGKILL of every nginx process
# loses nothing acknowledged.  Concurrent writers journal what they sent and
# what was acknowledged; after the crash and a restart every key must hold
# its last acknowledged value, or the value of a write that was in flight.
#
# Then: SIGKILL of single workers, repeatedly, while writers run (a worker
# may die holding the store lock): the store must keep serving.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use KvTest;

my $jdir = KvTest::tmp_root() . "/kill9-journals";
mkdir $jdir;

my $srv = KvTest->new(name => 'kill9', workers => 2);
$srv->start_ok or BAIL_OUT("cannot start nginx");

my @journals;
for my $round (1 .. 3) {
    my @j = map { "$jdir/r$round-w$_" } 1 .. 4;
    push @journals, @j;
    for my $w (1 .. 4) {
        # the same key prefixes every round: later rounds overwrite earlier ones
        KvTest::spawn_writer(port => $srv->port, journal => $j[$w - 1],
                             prefix => "w$w", keys => 25, stop_on_fail => 1,
                             delete_every => 11, max_seconds => 20,
                             id_base => $round * 1_000_000);
    }
    sleep 0.6 + rand(0.6);
    ok $srv->kill9_all, "round $round: SIGKILL master and workers";
    ok KvTest::wait_writers(30), "round $round: writers stopped";
    is KvTest::http_req($srv->port, 'GET', '/healthz')->{status}, 0,
        "round $round: nothing answers any more";

    my $mark = $srv->log_size;
    $srv->start_ok("round $round: restarted after kill -9");
    my ($n, $bad, $count) = KvTest::verify_journals($srv, @journals);
    cmp_ok $count->{acks} // 0, '>', 20, "round $round: writes were acknowledged ("
        . ($count->{acks} // 0) . ")";
    is scalar(@$bad), 0, "round $round: every acknowledged write survived ($n keys)"
        or diag join "\n", @$bad[0 .. ($#$bad < 9 ? $#$bad : 9)];
    like $srv->log_since($mark), qr/recovered/, "round $round: recovery logged";
}

# --- single workers killed while writers run

my @wj = map { "$jdir/single-w$_" } 1 .. 4;
my $stop = "$jdir/stop-single";
for my $w (1 .. 4) {
    KvTest::spawn_writer(port => $srv->port, journal => $wj[$w - 1],
                         prefix => "s$w", keys => 25, stop_file => $stop,
                         max_seconds => 40, id_base => 9_000_000);
}
my ($killed, $respawned) = (0, 0);
for my $i (1 .. 12) {
    sleep 0.15 + rand(0.2);
    my @w = $srv->worker_pids;
    next unless @w;
    my $victim = $w[int rand @w];
    kill 'KILL', $victim;
    $killed++;
    # the master respawns it
    $respawned++ if KvTest::wait_until(sub {
        my @now = $srv->worker_pids;
        @now == 2 && !grep { $_ == $victim } @now;
    }, 5);
}
is $respawned, $killed, "the master respawned every killed worker ($killed)";

# not wedged: fresh writes and reads succeed promptly on every worker
my $t0 = time;
my $ok = 0;
for my $i (1 .. 40) {
    my $w = $srv->req(PUT => "/db/after-$i", "after $i", 'application/octet-stream',
                      timeout => 5);
    my $r = $srv->get("after-$i");
    $ok++ if $w->{status} == 201 && $r->{status} == 200 && $r->{body} eq "after $i";
}
is $ok, 40, 'after the worker kills, writes and reads succeed';
cmp_ok time - $t0, '<', 10, 'and promptly (no request waited on a dead lock holder)';

open my $fh, '>', $stop; close $fh;
ok KvTest::wait_writers(30), 'writers stopped';
my (undef, $count) = KvTest::read_journals(@wj);
cmp_ok $count->{acks} // 0, '>', 50, 'writers kept getting acknowledgements ('
    . ($count->{acks} // 0) . ')';
my ($n, $bad) = KvTest::verify_journals($srv, @wj);
is scalar(@$bad), 0, "every acknowledged write is readable ($n keys)"
    or diag join "\n", @$bad[0 .. ($#$bad < 9 ? $#$bad : 9)];

# and the whole history survives one more crash
ok $srv->kill9_all, 'final SIGKILL';
$srv->start_ok('restarted');
($n, $bad) = KvTest::verify_journals($srv, @journals, @wj);
is scalar(@$bad), 0, "after the final crash every acknowledged write survived ($n keys)"
    or diag join "\n", @$bad[0 .. ($#$bad < 9 ? $#$bad : 9)];

ok $srv->stop, 'graceful stop';
done_testing;
