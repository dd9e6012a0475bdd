# Keys: bytes exactly as the client percent-encoded them, taken from the raw
# request line (nginx's normalized r->uri merges // and resolves . and ..).

use strict;
use warnings;

use Test::Nginx::Socket 'no_plan';
use File::Temp qw(tempdir);

my $tmp = $ENV{KV_TEST_TMP} || tempdir(CLEANUP => 1);
$ENV{TEST_NGINX_KV_DIR} = "$tmp/keys-$$";
# the module creates a missing data directory, not its missing parents
mkdir $ENV{TEST_NGINX_KV_DIR} or die "mkdir $ENV{TEST_NGINX_KV_DIR}: $!";

our $E = qr/^\{\s*"error"\s*:\s*"(?:[^"\\]|\\.)+"\s*\}\s*$/s;

run_tests();

__DATA__

=== TEST 1: "/" inside a key; prefixes of it are other keys
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t1;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/users/42
alice",
"GET /db/users/42",
"GET /db/users",
"GET /db/users/",
"GET /db/users/42/",
"PUT /db/users
the users key",
"GET /db/users",
"GET /db/users/42"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 404, 404, 404, 201, 200, 200]
--- response_body eval
["", "alice", $::E, $::E, $::E, "", "the users key", "alice"]



=== TEST 2: "//" is not merged: a//b, a/b and a///b are three keys
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t2;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/a//b
double",
"GET /db/a/b",
"PUT /db/a/b
single",
"PUT /db/a///b
triple",
"GET /db/a//b",
"GET /db/a/b",
"GET /db/a///b",
"DELETE /db/a//b",
"GET /db/a/b",
"GET /db/a//b"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 404, 201, 201, 200, 200, 200, 200, 200, 404]
--- response_body eval
["", $::E, "", "", "double", "single", "triple", "", "single", $::E]



=== TEST 3: "." and ".." segments are part of the key, not resolved
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t3;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/a/./b
dot",
"PUT /db/a/../b
dotdot",
"GET /db/a/b",
"GET /db/b",
"GET /db/a/./b",
"GET /db/a/../b",
"PUT /db/./c
leading dot",
"GET /db/c",
"GET /db/./c",
"PUT /db/x/../../db/y
up and back",
"GET /db/y",
"GET /db/x/../../db/y"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 201, 404, 404, 200, 200, 201, 404, 200, 201, 404, 200]
--- response_body eval
["", "", $::E, $::E, "dot", "dotdot", "", $::E, "leading dot", "", $::E, "up and back"]



=== TEST 4: the raw request URI must start with the location prefix
(/x/../db/k normalizes to /db/k and lands in the kv location, but the raw
URI has no /db/ prefix, so there is no key to take from it)
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t4;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/k
value",
"GET /x/../db/k",
"PUT /x/../db/k
other"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 400, 400]
--- response_headers eval
["", "Content-Type: application/json", "Content-Type: application/json"]
--- response_body eval
["", $::E, $::E]



=== TEST 5: percent-decoding: %20 is a space, + is a plus, %41 is A, hex case does not matter
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t5;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/hello%20world
spaced",
"GET /db/hello%20world",
"GET /db/hello+world",
"PUT /db/a+b
plus",
"GET /db/a%2Bb",
"GET /db/a%2bb",
"PUT /db/%41%42C
abc",
"GET /db/ABC",
"GET /db/abc"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 404, 201, 200, 200, 201, 200, 404]
--- response_body eval
["", "spaced", $::E, "", "plus", "plus", "", "abc", $::E]



=== TEST 6: UTF-8 keys, percent-encoded or raw, are the same bytes
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t6;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/caf%C3%A9
coffee",
"GET /db/caf%C3%A9",
"GET /db/caf%c3%a9",
"GET /db/caf\xC3\xA9",
"GET /db/cafe",
"PUT /db/%E6%97%A5%E6%9C%AC/%F0%9F%98%80
nihon smile",
"GET /db/\xE6\x97\xA5\xE6\x9C\xAC/\xF0\x9F\x98\x80"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 200, 200, 404, 201, 200]
--- response_body eval
["", "coffee", "coffee", "coffee", $::E, "", "nihon smile"]



=== TEST 7: %2F decodes to "/": a%2Fb is the key a/b
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t7;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/a%2Fb
slashed",
"GET /db/a/b",
"GET /db/a%2fb",
"PUT /db/x%2F%2Fy
two",
"GET /db/x//y",
"GET /db/x/y"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 200, 201, 200, 404]
--- response_body eval
["", "slashed", "slashed", "", "two", $::E]



=== TEST 8: the query string is not part of the key
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t8;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/q?ignored=1
queried",
"GET /db/q",
"GET /db/q?x=y",
"DELETE /db/q?z",
"GET /db/q"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 200, 200, 404]
--- response_body eval
["", "queried", "queried", "", $::E]



=== TEST 9: bad percent-encoding is 400 and writes nothing
(nginx itself rejects %zz and a truncated %4 while parsing the request
line, before the module runs, so only the status is checked here)
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t9;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/%zz
x",
"PUT /db/ab%4
x",
"PUT /db/ab%
x",
"GET /db/%g1",
"GET /db/ab%4"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[400, 400, 400, 400, 400]



=== TEST 10: with nginx.conf.example's error_page, those 400s are JSON too
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t10;
--- config
    error_page 400 /kv-400;
    location = /kv-400 {
        internal;
        default_type application/json;
        return 400 '{"error":"bad request"}\n';
    }
    location /db/ { kv store; }
--- request eval
["PUT /db/%zz
x",
"GET /db/ab%4",
"PUT /db/ok
x",
"PUT /db/ok
y"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[400, 400, 201, 201]
--- response_headers_like eval
["Content-Type: application/json", "Content-Type: application/json", "",
 ""]
--- response_body_like eval
[$::E, $::E, qr/^$/, qr/^$/]



=== TEST 11: max_key counts decoded bytes: exactly max_key is fine, one more is 414
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t11 max_key=16;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/0123456789abcdef
sixteen",
"GET /db/0123456789abcdef",
"PUT /db/0123456789abcdefg
seventeen",
"GET /db/0123456789abcdefg",
"DELETE /db/0123456789abcdefg",
"PUT /db/%30%31%32%33%34%35%36%37%38%39%41%42%43%44%45%46
encoded sixteen",
"GET /db/0123456789ABCDEF",
"PUT /db/caf%C3%A9caf%C3%A9caf%C3%A9x
sixteen bytes utf8",
"PUT /db/caf%C3%A9caf%C3%A9caf%C3%A9xx
seventeen bytes"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 414, 414, 414, 201, 200, 201, 414]
--- response_headers eval
["", "", "Content-Type: application/json", "Content-Type: application/json",
 "Content-Type: application/json", "", "", "", "Content-Type: application/json"]
--- response_body eval
["", "sixteen", $::E, $::E, $::E, "", "encoded sixteen", "", $::E]



=== TEST 12: a 1 KiB key (the default max_key) is fine, 1025 bytes is 414
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t12;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/" . ("k" x 1024) . "
long key",
"GET /db/" . ("k" x 1024),
"PUT /db/" . ("k" x 1025) . "
too long",
"GET /db/" . ("k" x 1023)]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 414, 404]
--- response_body eval
["", "long key", $::E, $::E]
