# A second nginx pointed at a data directory in use refuses to start, with
# a clear message; the first one keeps serving.  Once the first stops, the
# second can start and sees the data.

use strict;
use warnings;

use Test::More;
use KvTest;

my $first = KvTest->new(name => 'first', workers => 2);
$first->start_ok or BAIL_OUT("cannot start nginx");
is $first->put('shared', 'from first')->{status}, 201, 'first instance writes';

my $second = KvTest->new(name => 'second', data_dir => $first->data_dir);
isnt $second->port, $first->port, 'different port';
my ($rc, $out) = $second->start_raw;
isnt $rc, 0, 'second instance exits non-zero';
like $out . $second->log_text, qr/is in use by another process/,
    'message: "is in use by another process"';
like $out . $second->log_text, qr/\Q@{[$first->data_dir]}\E/, 'the message names the directory';
my $r = $second->req(GET => '/healthz');
is $r->{status}, 0, 'nothing listens on the second port';
ok !($second->master_pid && KvTest::alive($second->master_pid)), 'no second master running';

is $first->get('shared')->{body}, 'from first', 'first still serves';
is $first->put('more', 'still writing')->{status}, 201, 'first still writes';
is $first->get('more')->{body}, 'still writing', 'and reads';
my $log = $first->log_text;
unlike $log, qr/\[(?:alert|emerg|crit)\]/, 'first instance logged no alert/emerg/crit';

# with the same config twice in a row (a user re-running the start command)
my $third = KvTest->new(name => 'third', data_dir => $first->data_dir, workers => 2);
($rc) = $third->start_raw;
isnt $rc, 0, 'a third instance is refused too';

ok $first->stop, 'first stopped';
$second->start_ok('second starts once the directory is free');
is $second->get('shared')->{body}, 'from first', 'second sees the data';
is $second->get('more')->{body}, 'still writing', 'including the last write';
ok $second->stop, 'second stopped';
done_testing;
