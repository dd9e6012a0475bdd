# nginx -s reload (HUP): the index is kept, no write made during the reload
# is lost, and the new workers serve everything.  A reload that changes a
# zone's size or path is refused with a message in error.log, and the old
# configuration keeps serving with the data intact.  One that changes
# max_key or max_value applies them to the kept store.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep);
use KvTest;

my $jdir = KvTest::tmp_root() . "/reload-journals";
mkdir $jdir;

my $srv = KvTest->new(name => 'reload', workers => 2);
$srv->start_ok or BAIL_OUT("cannot start nginx");

my $fail = 0;
for my $i (1 .. 100) {
    $fail++ unless $srv->put("pre-$i", "before reload $i")->{status} == 201;
}
is $fail, 0, 'initial writes acknowledged';

my $mark = $srv->log_size;

# writers run through several reloads
my $stop = "$jdir/stop";
my @journals = map { "$jdir/w$_" } 1 .. 4;
KvTest::spawn_writer(port => $srv->port, journal => $journals[$_ - 1],
                     prefix => "r$_", keys => 40, stop_file => $stop,
                     delete_every => 13, max_seconds => 60) for 1 .. 4;
sleep 0.3;
my $reloads = 0;
for my $cycle (1 .. 5) {
    my @old = $srv->worker_pids;
    $reloads++ if $srv->reload;
    my @new = $srv->worker_pids;
    ok !(grep { my $o = $_; grep { $_ == $o } @new } @old),
        "reload $cycle: new worker processes";
    sleep 0.2;
}
is $reloads, 5, 'five reloads completed (new generation answering, old workers gone)';
sleep 0.3;
open my $fh, '>', $stop; close $fh;
ok KvTest::wait_writers(30), 'writers stopped';

my ($n, $bad, $count) = KvTest::verify_journals($srv, @journals);
cmp_ok $count->{acks} // 0, '>', 50, 'writers were acknowledged during the reloads ('
    . ($count->{acks} // 0) . ')';
is $count->{errors} // 0, 0, 'no write failed during the reloads'
    or diag explain $count;
is scalar(@$bad), 0, "every acknowledged write is readable after the reloads ($n keys)"
    or diag join "\n", @$bad[0 .. ($#$bad < 9 ? $#$bad : 9)];

$fail = 0;
for my $i (1 .. 100) {
    my $r = $srv->get("pre-$i");
    $fail++ unless $r->{status} == 200 && $r->{body} eq "before reload $i";
}
is $fail, 0, 'keys written before the reloads are served by the new workers';

my $log = $srv->log_since($mark);
unlike $log, qr/\[notice\][^\n]*recovered/, 'no rescan of the log on reload (index kept)';
unlike $log, qr/\[(?:alert|emerg|crit)\]/, 'no alert/emerg/crit during reloads';

# --- a reload that changes the zone size is refused
{
    my @workers = $srv->worker_pids;
    my $gen = $srv->{generation};
    $srv->set(zone_size => '2m');
    my $text = $srv->reload_expect_refusal;
    like $text, qr/\[(?:emerg|alert|error)\][^\n]*(?:size|zone)/i,
        'size change: error.log says why the reload is refused';
    is_deeply [$srv->worker_pids], \@workers, 'size change: the old workers keep running';
    $srv->{generation} = $gen;    # the refused config is not being served
    my $r = $srv->req(GET => '/__ver');
    is $r->{body}, "gen-$gen", 'size change: the old configuration is still served';
    is $srv->put('during-refusal', 'x')->{status}, 201, 'size change: writes still work';
    $r = $srv->get('pre-7');
    is $r->{body}, 'before reload 7', 'size change: data intact';
    $srv->set(zone_size => '1m');
}

# --- a reload that changes the path is refused
{
    my @workers = $srv->worker_pids;
    my $gen = $srv->{generation};
    my $old_dir = $srv->data_dir;
    my $new_dir = KvTest::tmp_root() . "/reload-other-dir";
    $srv->set(data_dir => $new_dir);
    my $text = $srv->reload_expect_refusal;
    like $text, qr/\[(?:emerg|alert|error)\][^\n]*(?:path|director)/i,
        'path change: error.log says why the reload is refused';
    is_deeply [$srv->worker_pids], \@workers, 'path change: the old workers keep running';
    $srv->{generation} = $gen;
    my $r = $srv->req(GET => '/__ver');
    is $r->{body}, "gen-$gen", 'path change: the old configuration is still served';
    is $srv->put('during-refusal-2', 'y')->{status}, 201, 'path change: writes still work';
    ok !-e "$new_dir/0000000001.kvlog", 'path change: nothing written in the new path';
    $srv->set(data_dir => $old_dir);
}

# --- a reload may change max_key and max_value: the kept store takes them
{
    my $lim = KvTest->new(name => 'reload-limits', max_value => 100,
                          max_key => 8);
    $lim->start_ok('started with max_value=100 max_key=8');
    is $lim->put('small', 'v' x 100)->{status}, 201, 'max_value=100: 100 bytes stored';
    is $lim->put('small', 'v' x 101)->{status}, 413, 'max_value=100: 101 bytes refused';
    is $lim->put('k' x 9, 'v')->{status}, 414, 'max_key=8: a 9-byte key refused';
    $lim->set(max_value => 4096, max_key => 16);
    ok $lim->reload, 'reload with max_value=4096 max_key=16';
    is $lim->put('large', 'w' x 4096)->{status}, 201,
        'max_value raised on reload: 4096 bytes stored by the kept store';
    is $lim->get('large')->{body}, 'w' x 4096, 'and read back';
    is $lim->put('k' x 16, 'v')->{status}, 201,
        'max_key raised on reload: a 16-byte key stored';
    $lim->set(max_value => 50);
    ok $lim->reload, 'reload with max_value=50';
    is $lim->put('small', 'v' x 51)->{status}, 413, 'max_value=50: 51 bytes refused';
    is $lim->get('small')->{body}, 'v' x 100, 'the 100-byte value stays readable';
    ok $lim->stop, 'limits server stopped';
}

# --- back to the original configuration: a normal reload works again
ok $srv->reload, 'reload with the original configuration';
is $srv->get('during-refusal')->{body}, 'x', 'write made while the size change was refused';
is $srv->get('during-refusal-2')->{body}, 'y', 'write made while the path change was refused';

# everything survives a restart too
ok $srv->stop, 'stopped';
$srv->start_ok('restarted');
($n, $bad) = KvTest::verify_journals($srv, @journals);
is scalar(@$bad), 0, "after restart every acknowledged write is there ($n keys)"
    or diag join "\n", @$bad[0 .. ($#$bad < 9 ? $#$bad : 9)];
is $srv->get('during-refusal-2')->{body}, 'y', 'and the writes made during refused reloads';

ok $srv->stop, 'graceful stop';
done_testing;
