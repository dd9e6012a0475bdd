# Configuration errors: nginx must refuse to start, with a message in
# error.log that names the problem.  Plus: several zones coexist.

use strict;
use warnings;

use Test::Nginx::Socket 'no_plan';
use File::Temp qw(tempdir);

my $tmp = $ENV{KV_TEST_TMP} || tempdir(CLEANUP => 1);
$ENV{TEST_NGINX_KV_DIR} = "$tmp/config-$$";
# the module creates a missing data directory, not its missing parents
mkdir $ENV{TEST_NGINX_KV_DIR} or die "mkdir $ENV{TEST_NGINX_KV_DIR}: $!";

run_tests();

__DATA__

=== TEST 1: kv names an unknown zone
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t1;
--- config
    location /db/ { kv nosuchzone; }
--- request
GET /db/x
--- must_die
--- error_log eval
qr/\[emerg\].*nosuchzone/



=== TEST 2: kv_ready names an unknown zone
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t2;
--- config
    location = /readyz { kv_ready otherzone; }
--- request
GET /readyz
--- must_die
--- error_log eval
qr/\[emerg\].*otherzone/



=== TEST 3: kv_zone without path=
--- http_config
    kv_zone zone=store:1m;
--- config
    location /db/ { kv store; }
--- request
GET /db/x
--- must_die
--- error_log eval
qr/\[emerg\].*(?:path|invalid number of arguments in "kv_zone")/



=== TEST 4: kv_zone with a bad size
--- http_config
    kv_zone zone=store:lots path=$TEST_NGINX_KV_DIR/t4;
--- config
    location /db/ { kv store; }
--- request
GET /db/x
--- must_die
--- error_log eval
qr/\[emerg\].*(?:size|lots)/i



=== TEST 5: kv_zone smaller than the 64k minimum
--- http_config
    kv_zone zone=store:8k path=$TEST_NGINX_KV_DIR/t5;
--- config
    location /db/ { kv store; }
--- request
GET /db/x
--- must_die
--- error_log eval
qr/\[emerg\].*(?:size|small|8k|64k)/i



=== TEST 6: kv_zone without a size
--- http_config
    kv_zone zone=store path=$TEST_NGINX_KV_DIR/t6;
--- config
    location /db/ { kv store; }
--- request
GET /db/x
--- must_die
--- error_log eval
qr/\[emerg\].*(?:size|zone)/i



=== TEST 7: two kv_zone with the same name
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t7a;
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t7b;
--- config
    location /db/ { kv store; }
--- request
GET /db/x
--- must_die
--- error_log eval
qr/\[emerg\].*(?:duplicate|already|store)/i



=== TEST 8: two zones on the same data directory
--- http_config
    kv_zone zone=one:1m path=$TEST_NGINX_KV_DIR/t8-shared;
    kv_zone zone=two:1m path=$TEST_NGINX_KV_DIR/t8-shared;
--- config
    location /a/ { kv one; }
    location /b/ { kv two; }
--- request
GET /a/x
--- must_die
--- error_log eval
qr/\[emerg\].*t8-shared/



=== TEST 9: max_key over the limit
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t9 max_key=64k;
--- config
    location /db/ { kv store; }
--- request
GET /db/x
--- must_die
--- error_log eval
qr/\[emerg\].*max_key/



=== TEST 10: max_value over the limit
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t10 max_value=4g;
--- config
    location /db/ { kv store; }
--- request
GET /db/x
--- must_die
--- error_log eval
qr/\[emerg\].*max_value/



=== TEST 11: an unknown kv_zone parameter
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t11 colour=blue;
--- config
    location /db/ { kv store; }
--- request
GET /db/x
--- must_die
--- error_log eval
qr/\[emerg\].*invalid parameter "colour=blue"/



=== TEST 12: kv_zone is not allowed inside server {}
--- config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t12;
    location /db/ { kv store; }
--- request
GET /db/x
--- must_die
--- error_log eval
qr/\[emerg\].*"kv_zone" directive is not allowed here/



=== TEST 13: kv_zone with other parameters but without path=
--- http_config
    kv_zone zone=store:1m max_key=100;
--- config
    location /db/ { kv store; }
--- request
GET /db/x
--- must_die
--- error_log eval
qr/\[emerg\].*path/



=== TEST 14: several zones coexist, each with its own keys
--- http_config
    kv_zone zone=one:1m path=$TEST_NGINX_KV_DIR/t14a;
    kv_zone zone=two:1m path=$TEST_NGINX_KV_DIR/t14b max_key=8 max_value=64k;
--- config
    location /a/ { kv one; }
    location /b/ { kv two; }
--- request eval
["PUT /a/k\nin one", "PUT /b/k\nin two", "GET /a/k", "GET /b/k",
 "DELETE /a/k", "GET /a/k", "GET /b/k",
 "PUT /a/123456789\nlong key ok in one", "PUT /b/123456789\nlong key in two"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 201, 200, 200, 200, 404, 200, 201, 414]
--- response_body_like eval
['^$', '^$', '^in one$', '^in two$', '^$', '"error"', '^in two$', '^$', '"error"']



=== TEST 15: kv_status names an unknown zone
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t15;
--- config
    location = /status { kv_status statuszone; }
--- request
GET /status
--- must_die
--- error_log eval
qr/\[emerg\].*statuszone/



=== TEST 16: kv_compact names an unknown zone
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t16;
--- config
    location = /compact { kv_compact compactzone; }
--- request
GET /compact
--- must_die
--- error_log eval
qr/\[emerg\].*compactzone/



=== TEST 17: kv_metrics names an unknown zone
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t17;
--- config
    location = /metrics { kv_metrics metricszone; }
--- request
GET /metrics
--- must_die
--- error_log eval
qr/\[emerg\].*metricszone/
