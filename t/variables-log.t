# kv_var in access logs, a value too large for a variable (an error in
# error.log, an empty variable, never a truncated one) and a variable used
# while the store answers 503.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use KvTest qw(read_file wait_until);

my $srv = KvTest->new(name => 'kvvar-log', max_value => '100k');
my $acc = $srv->root . '/logs/plan.log';

$srv->set(http_extra => <<"EOC",
    kv_var \$plan "plan:\$arg_user" zone=store;
    kv_var \$big "big" zone=store;
    log_format kvplan "user=\$arg_user plan=\$plan";
EOC
          server_extra => <<"EOC");
        location = /visit { access_log $acc kvplan; return 204; }
        location = /big { return 200 "[\$big]"; }
EOC
$srv->start_ok;

is($srv->put('plan:ann', 'premium')->{status}, 201, 'PUT plan:ann');
is($srv->req('GET', '/visit?user=ann')->{status}, 204, 'a visit by ann');
is($srv->req('GET', '/visit?user=bob')->{status}, 204, 'a visit by bob');

ok(wait_until(sub { (read_file($acc) // '') =~ /user=bob/ }, 5),
   'the access log was written');
my $log = read_file($acc) // '';
like($log, qr/^user=ann plan=premium$/m, 'the log line has the value');
like($log, qr/^user=bob plan=-$/m, 'a missing key logs as "-"');

is($srv->put('big', 'x' x 70000)->{status}, 201, 'a 70000-byte value');
my $r = $srv->req('GET', '/big');
is($r->{status}, 200, 'the variable is used');
is($r->{body}, '[]', 'and is empty, not truncated');
like($srv->log_text,
     qr/\[error\].*kv_var \$big: the value of key "big" of kv_zone "store" is 70000 bytes, more than the 65536/,
     'error.log says why');

is($srv->put('big', 'y' x 65536)->{status}, 201, 'a 65536-byte value');
$r = $srv->req('GET', '/big');
is(length($r->{body} // ''), 65538, 'fits a variable whole');

$srv->stop;

done_testing();
