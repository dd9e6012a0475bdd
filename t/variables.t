# kv_var: a key's current value as an nginx variable, in each context an
# operator uses variables in (return, if, map, add_header, set, proxy_pass,
# auth_request, limit_req_zone keys), and the README's recipes: a feature flag, a
# blocklist updated at run time, routing by a stored value.  Access logs
# and oversized values: t/variables-log.t.

use strict;
use warnings;

use Test::Nginx::Socket 'no_plan';
use File::Temp qw(tempdir);

my $tmp = $ENV{KV_TEST_TMP} || tempdir(CLEANUP => 1);
$ENV{TEST_NGINX_KV_DIR} = "$tmp/variables-$$";
mkdir $ENV{TEST_NGINX_KV_DIR} or die "mkdir $ENV{TEST_NGINX_KV_DIR}: $!";

no_long_string();
run_tests();

__DATA__

=== TEST 1: return: the value of a key named by a complex value
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t1;
    kv_var $greeting "greeting:$arg_lang" zone=store;
--- config
    location /db/ { kv store; }
    location = /hello { return 200 "[$greeting]"; }
--- request eval
["PUT /db/greeting:fr
bonjour",
"PUT /db/greeting:en
hello",
"GET /hello?lang=fr",
"GET /hello?lang=en",
"GET /hello?lang=de",
"GET /hello"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 201, 200, 200, 200, 200]
--- response_body eval
["", "", "[bonjour]", "[hello]", "[]", "[]"]
--- no_error_log
[error]



=== TEST 2: recipe, a feature flag read per request, through map
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t2;
    kv_var $checkout_flag "flag:new-checkout" zone=store;
    map $checkout_flag $checkout_page {
        on       /checkout-v2;
        default  /checkout-v1;
    }
--- config
    location /db/ { kv store; }
    location = /checkout { return 200 "$checkout_page\n"; }
--- request eval
["GET /checkout",
"PUT /db/flag:new-checkout
on",
"GET /checkout",
"PUT /db/flag:new-checkout
off",
"GET /checkout",
"DELETE /db/flag:new-checkout",
"GET /checkout"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[200, 201, 200, 201, 200, 200, 200]
--- response_body eval
["/checkout-v1\n", "", "/checkout-v2\n", "", "/checkout-v1\n", "",
 "/checkout-v1\n"]
--- no_error_log
[error]



=== TEST 3: recipe, an IP blocklist updated at run time: if ($blocked)
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t3;
    kv_var $blocked "block:$remote_addr" zone=store;
--- config
    location /db/ { kv store; }
    location = /app {
        if ($blocked) { return 403 "blocked: $blocked\n"; }
        return 200 "welcome\n";
    }
--- request eval
["GET /app",
"PUT /db/block:127.0.0.1
abuse report 17",
"GET /app",
"DELETE /db/block:127.0.0.1",
"GET /app"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[200, 201, 403, 200, 200]
--- response_body eval
["welcome\n", "", "blocked: abuse report 17\n", "", "welcome\n"]
--- no_error_log
[error]



=== TEST 4: recipe, routing to an upstream chosen by a stored value
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t4;
    kv_var $pool "route:$arg_tenant" zone=store;
    upstream blue  { server 127.0.0.1:$TEST_NGINX_SERVER_PORT; }
    upstream green { server 127.0.0.1:$TEST_NGINX_SERVER_PORT; }
    map $pool $backend {
        ""       blue;
        default  $pool;
    }
--- config
    location /db/ { kv store; }
    location = /app { proxy_pass http://$backend/serve-$backend; }
    location = /serve-blue  { return 200 "blue\n"; }
    location = /serve-green { return 200 "green\n"; }
--- request eval
["GET /app?tenant=acme",
"PUT /db/route:acme
green",
"GET /app?tenant=acme",
"GET /app?tenant=other"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[200, 201, 200, 200]
--- response_body eval
["blue\n", "", "green\n", "blue\n"]
--- no_error_log
[error]



=== TEST 5: add_header and set
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t5;
    kv_var $tier "tier:$host" zone=store;
--- config
    location /db/ { kv store; }
    location = /page {
        set $label "tier=$tier";
        add_header X-Tier $tier always;
        return 200 "$label\n";
    }
--- request eval
["PUT /db/tier:localhost
gold",
"GET /page"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200]
--- response_headers eval
["", "X-Tier: gold"]
--- response_body eval
["", "tier=gold\n"]
--- no_error_log
[error]



=== TEST 6: a limit_req_zone key: only tokens with a tenant are limited
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t6;
    kv_var $tenant "tenant:$arg_token" zone=store;
    limit_req_zone $tenant zone=per_tenant:1m rate=1r/m;
--- config
    location /db/ { kv store; }
    location = /api {
        limit_req zone=per_tenant;
        limit_req_status 429;
        add_header X-Tenant "[$tenant]" always;
        try_files /nonexistent =204;
    }
--- request eval
["PUT /db/tenant:t0k3n
acme",
"GET /api?token=t0k3n",
"GET /api?token=t0k3n",
"GET /api?token=nobody",
"GET /api?token=nobody"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 204, 429, 204, 204]
--- response_headers eval
["", "X-Tenant: [acme]", "X-Tenant: [acme]", "X-Tenant: []", "X-Tenant: []"]



=== TEST 7: an auth_request set-up: API tokens kept in the store
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t7;
    kv_var $token_owner "token:$http_x_api_token" zone=store;
--- config
    location /db/ { kv store; }
    location = /private {
        auth_request /auth;
        add_header X-Owner $token_owner always;
        try_files /nonexistent =204;
    }
    location = /auth {
        internal;
        if ($token_owner = "") { return 401; }
        return 204;
    }
--- request eval
["GET /private",
"PUT /db/token:s3cr3t
alice",
"GET /private",
"GET /private",
"DELETE /db/token:s3cr3t",
"GET /private"]
--- more_headers eval
["X-Api-Token: s3cr3t",
 "Content-Type: application/octet-stream",
 "X-Api-Token: s3cr3t",
 "X-Api-Token: wrong",
 "",
 "X-Api-Token: s3cr3t"]
--- error_code eval
[401, 201, 204, 401, 200, 401]
--- response_headers eval
["", "", "X-Owner: alice", "", "", ""]
--- no_error_log
[error]



=== TEST 8: kv_var of an unknown zone fails the configuration
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t8;
    kv_var $v "k" zone=elsewhere;
--- config
    location /db/ { kv store; }
--- request
GET /db/x
--- must_die
--- error_log eval
qr/\[emerg\].*unknown kv_zone "elsewhere"/



=== TEST 9: kv_var needs a $name and zone=
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t9;
    kv_var v "k" zone=store;
--- config
    location /db/ { kv store; }
--- request
GET /db/x
--- must_die
--- error_log eval
qr/\[emerg\].*invalid variable name "v"/
