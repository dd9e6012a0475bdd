# Liveness (/healthz) and readiness (/readyz).  The 503 case of /readyz
# needs the data directory to become unusable while nginx runs, which this
# format cannot do between requests: see t/ready.t.

use strict;
use warnings;

use Test::Nginx::Socket 'no_plan';
use File::Temp qw(tempdir);

my $tmp = $ENV{KV_TEST_TMP} || tempdir(CLEANUP => 1);
$ENV{TEST_NGINX_KV_DIR} = "$tmp/health-$$";
# the module creates a missing data directory, not its missing parents
mkdir $ENV{TEST_NGINX_KV_DIR} or die "mkdir $ENV{TEST_NGINX_KV_DIR}: $!";

run_tests();

__DATA__

=== TEST 1: /healthz answers 200 {"status":"ok"}
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t1;
--- config
    location /db/ { kv store; }
    location = /healthz { kv_health; }
--- request
GET /healthz
--- error_code: 200
--- response_headers
Content-Type: application/json
--- response_body_like: ^\{\s*"status"\s*:\s*"ok"\s*\}\s*$



=== TEST 2: /readyz answers 200 {"status":"ready"} when the store is open
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t2;
--- config
    location /db/ { kv store; }
    location = /readyz { kv_ready store; }
--- request
GET /readyz
--- error_code: 200
--- response_headers
Content-Type: application/json
--- response_body_like: ^\{\s*"status"\s*:\s*"ready"\s*\}\s*$



=== TEST 3: health and readiness do not depend on the kv location; the store works beside them
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t3;
--- config
    location /db/ { kv store; }
    location = /healthz { kv_health; }
    location = /readyz { kv_ready store; }
--- request eval
["GET /healthz", "GET /readyz", "PUT /db/k\nv", "GET /db/k", "GET /readyz"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[200, 200, 201, 200, 200]
--- response_body_like eval
['^\{\s*"status"\s*:\s*"ok"\s*\}\s*$', '^\{\s*"status"\s*:\s*"ready"\s*\}\s*$', '^$', '^v$',
 '^\{\s*"status"\s*:\s*"ready"\s*\}\s*$']
--- no_error_log
[error]



=== TEST 4: /readyz for a second zone reports that zone
--- http_config
    kv_zone zone=one:1m path=$TEST_NGINX_KV_DIR/t4a;
    kv_zone zone=two:1m path=$TEST_NGINX_KV_DIR/t4b;
--- config
    location = /ready1 { kv_ready one; }
    location = /ready2 { kv_ready two; }
--- request eval
["GET /ready1", "GET /ready2"]
--- error_code eval
[200, 200]
--- response_body_like eval
['^\{\s*"status"\s*:\s*"ready"\s*\}\s*$', '^\{\s*"status"\s*:\s*"ready"\s*\}\s*$']
