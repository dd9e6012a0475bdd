# Compare-and-set under concurrency, and ETags for the life of the store.
#
# Clients on separate connections, spread over two workers, increment one
# counter with GET then PUT If-Match: <its ETag>, retrying on 412: no
# increment may be lost, as it would be if two clients could win with the
# same ETag.  Then: a restart keeps every ETag, and after deletes, a
# compaction that drops their tombstones and a restart, a new write still
# gets an ETag never handed out before.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use POSIX qw(:sys_wait_h);
use KvTest qw(http_req);

my $CLIENTS = 8;
my $EACH    = 40;

my $srv = KvTest->new(name => 'cas', workers => 2, endpoints => 1);
$srv->start_ok;

is($srv->put('counter', '0')->{status}, 201, 'the counter starts at 0');

sub etag_num { ($_[0]->{headers}{etag} // '') =~ /^"(\d+)"$/ ? $1 : undef }

my @kids;
pipe(my $rd, my $wr) or die "pipe: $!";

for my $c (1 .. $CLIENTS) {
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid) { push @kids, $pid; next; }

    close $rd;
    my ($done, $conflicts, $errors) = (0, 0, 0);
    my $deadline = time + 60;

    while ($done < $EACH && time < $deadline) {
        my $g = http_req($srv->port, 'GET', '/db/counter');
        my $tag = $g->{headers}{etag};
        if ($g->{status} != 200 || !defined $tag) { $errors++; next; }

        my $p = http_req($srv->port, 'PUT', '/db/counter', $g->{body} + 1,
                         'application/octet-stream',
                         headers => [['If-Match', $tag]]);
        if ($p->{status} == 201) { $done++; }
        elsif ($p->{status} == 412) { $conflicts++; }
        else { $errors++; }
    }

    syswrite $wr, "$done $conflicts $errors\n";
    POSIX::_exit(0);
}

close $wr;
my ($done, $conflicts, $errors) = (0, 0, 0);
while (my $line = <$rd>) {
    my @n = split ' ', $line;
    $done += $n[0]; $conflicts += $n[1]; $errors += $n[2];
}
waitpid($_, 0) for @kids;

is($done, $CLIENTS * $EACH, "every client made its $EACH increments");
is($errors, 0, 'no request failed');
my $g = $srv->get('counter');
is($g->{body}, $CLIENTS * $EACH, 'the counter lost no increment');
diag("$done increments won, $conflicts lost a race and retried");
ok($conflicts > 0, 'clients did race for the same ETag')
    or diag('no conflict: the test did not exercise the race');

my $st = $srv->status;
is($st->{precondition_failures}, $conflicts,
   'kv_status counts every 412 of a write');

# --- ETags for the life of the store

my $counter_tag = etag_num($g);
my @tags;
for my $i (1 .. 5) {
    push @tags, etag_num($srv->put("gone$i", "v$i"));
}
push @tags, etag_num($srv->req('DELETE', "/db/gone$_")) for 1 .. 5;
my $max = (sort { $b <=> $a } @tags)[0];
ok($max > $counter_tag, 'deletes have ETags of their own, newest last');

$srv->stop;
$srv->start_ok;
is(etag_num($srv->get('counter')), $counter_tag,
   'a restart keeps the ETag of a value');

is($srv->compact->{status}, 202, 'compaction started');
$st = $srv->wait_compaction_done;
ok($st && $st->{compaction}{runs} >= 1, 'compaction dropped the tombstones');
is(etag_num($srv->get('counter')), $counter_tag,
   'compaction keeps the ETag of a value');

$srv->stop;
$srv->start_ok;
my $next = etag_num($srv->put('gone1', 'again'));
ok($next > $max, "a write after compaction and restart gets a new ETag "
                 . "($next > $max)");

$srv->stop;

done_testing();
