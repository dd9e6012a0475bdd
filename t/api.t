# The HTTP API of ngx_http_kv_module: every row of the API table.
#
# Each block has its own data directory under $TEST_NGINX_KV_DIR, so blocks
# are independent of each other and of the runner's block order.

use strict;
use warnings;

use Test::Nginx::Socket 'no_plan';
use File::Temp qw(tempdir);

my $tmp = $ENV{KV_TEST_TMP} || tempdir(CLEANUP => 1);
$ENV{TEST_NGINX_KV_DIR} = "$tmp/api-$$";
# the module creates a missing data directory, not its missing parents
mkdir $ENV{TEST_NGINX_KV_DIR} or die "mkdir $ENV{TEST_NGINX_KV_DIR}: $!";

# the JSON error body every module-produced error carries
our $E = qr/^\{\s*"error"\s*:\s*"(?:[^"\\]|\\.)+"\s*\}\s*$/s;

no_long_string();
run_tests();

__DATA__

=== TEST 1: PUT stores an octet-stream value, GET returns it byte for byte
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t1;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/k1
hello world",
"GET /db/k1"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200]
--- response_headers eval
["", "Content-Type: application/octet-stream\nContent-Length: 11"]
--- response_body eval
["", "hello world"]
--- no_error_log
[error]



=== TEST 2: POST stores too; PUT and POST overwrite; the last write wins
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t2;
--- config
    location /db/ { kv store; }
--- request eval
["POST /db/k
first",
"GET /db/k",
"PUT /db/k
second value",
"GET /db/k",
"POST /db/k
3",
"GET /db/k"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 201, 200, 201, 200]
--- response_headers eval
["", "Content-Length: 5", "", "Content-Length: 12", "", "Content-Length: 1"]
--- response_body eval
["", "first", "", "second value", "", "3"]
--- no_error_log
[error]



=== TEST 3: application/json bodies are stored as JSON and returned as is
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t3;
--- config
    location /db/ { kv store; }
--- request eval
['PUT /db/obj
{ "a" : [1, 2.5, "x"], "b": {"c": null} }',
"GET /db/obj",
"PUT /db/num
42",
"GET /db/num",
'POST /db/str
"just a string"',
"GET /db/str",
"PUT /db/t
true",
"GET /db/t"]
--- more_headers
Content-Type: application/json
--- error_code eval
[201, 200, 201, 200, 201, 200, 201, 200]
--- response_headers eval
["", "Content-Type: application/json",
 "", "Content-Type: application/json",
 "", "Content-Type: application/json",
 "", "Content-Type: application/json"]
--- response_body eval
["", '{ "a" : [1, 2.5, "x"], "b": {"c": null} }',
 "", "42",
 "", '"just a string"',
 "", "true"]
--- no_error_log
[error]



=== TEST 4: invalid JSON is refused with 400 and nothing is written
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t4;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/bad
{not json",
"GET /db/bad",
"PUT /db/bad
{\"a\":1} trailing",
"GET /db/bad",
"PUT /db/kept
{\"v\":1}",
"PUT /db/kept
[1, 2",
"GET /db/kept",
"POST /db/empty
"]
--- more_headers eval
["Content-Type: application/json",
 "",
 "Content-Type: application/json",
 "",
 "Content-Type: application/json",
 "Content-Type: application/json",
 "",
 "Content-Type: application/json\nContent-Length: 0"]
--- error_code eval
[400, 404, 400, 404, 201, 400, 200, 400]
--- response_headers eval
["Content-Type: application/json",
 "Content-Type: application/json",
 "Content-Type: application/json",
 "Content-Type: application/json",
 "",
 "Content-Type: application/json",
 "Content-Type: application/json",
 "Content-Type: application/json"]
--- response_body eval
[$::E, $::E, $::E, $::E, "", $::E, '{"v":1}', $::E]



=== TEST 5: Content-Type parameters are ignored, the media type is case-insensitive
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t5;
--- config
    location /db/ { kv store; }
--- request eval
['PUT /db/j
{"x":"y"}',
"GET /db/j",
"PUT /db/o
bytes",
"GET /db/o",
"PUT /db/J
[]",
"GET /db/J"]
--- more_headers eval
["Content-Type: application/json; charset=utf-8",
 "",
 "Content-Type: Application/Octet-Stream",
 "",
 "Content-Type: APPLICATION/JSON;charset=UTF-8",
 ""]
--- error_code eval
[201, 200, 201, 200, 201, 200]
--- response_headers eval
["", "Content-Type: application/json",
 "", "Content-Type: application/octet-stream",
 "", "Content-Type: application/json"]
--- response_body eval
["", '{"x":"y"}', "", "bytes", "", "[]"]



=== TEST 6: a missing or other Content-Type is 415 and writes nothing
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t6;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/a
no type",
"GET /db/a",
"POST /db/a
plain text",
"GET /db/a",
"PUT /db/a
form=1",
"GET /db/a",
"PUT /db/a
original",
"PUT /db/a
replaced?",
"GET /db/a"]
--- more_headers eval
["",
 "",
 "Content-Type: text/plain",
 "",
 "Content-Type: application/x-www-form-urlencoded",
 "",
 "Content-Type: application/octet-stream",
 "Content-Type: application/octet-streamx",
 ""]
--- error_code eval
[415, 404, 415, 404, 415, 404, 201, 415, 200]
--- response_headers eval
["Content-Type: application/json", "", "Content-Type: application/json", "",
 "Content-Type: application/json", "", "", "Content-Type: application/json",
 "Content-Type: application/octet-stream"]
--- response_body eval
[$::E, $::E, $::E, $::E, $::E, $::E, "", $::E, "original"]



=== TEST 7: GET of a missing key is 404 with a JSON error
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t7;
--- config
    location /db/ { kv store; }
--- request
GET /db/never-written
--- error_code: 404
--- response_headers
Content-Type: application/json
--- response_body eval
$::E



=== TEST 8: HEAD is GET without a body, with the same Content-Length
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t8;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/h
0123456789abcdef",
"HEAD /db/h",
'PUT /db/hj
{"k":[1,2,3]}',
"HEAD /db/hj",
"HEAD /db/missing"]
--- more_headers eval
["Content-Type: application/octet-stream", "",
 "Content-Type: application/json", "", ""]
--- error_code eval
[201, 200, 201, 200, 404]
--- response_headers eval
["",
 "Content-Type: application/octet-stream\nContent-Length: 16",
 "",
 "Content-Type: application/json\nContent-Length: 13",
 "Content-Type: application/json"]
--- response_body eval
["", "", "", "", ""]



=== TEST 9: DELETE is 200 when the key existed, 404 afterwards
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t9;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/d
doomed",
"GET /db/d",
"DELETE /db/d",
"GET /db/d",
"HEAD /db/d",
"DELETE /db/d",
"DELETE /db/never",
"PUT /db/d
reborn",
"GET /db/d"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 200, 404, 404, 404, 404, 201, 200]
--- response_headers eval
["", "", "", "Content-Type: application/json", "",
 "Content-Type: application/json", "Content-Type: application/json", "", ""]
--- response_body eval
["", "doomed", "", $::E, "", $::E, $::E, "", "reborn"]



=== TEST 10: other methods are 405 with Allow and a JSON error, nothing written
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t10;
--- config
    location /db/ { kv store; }
--- request eval
["PATCH /db/m
patched",
"OPTIONS /db/m",
"PROPFIND /db/m",
"GET /db/m"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[405, 405, 405, 404]
--- response_headers eval
["Allow: GET, HEAD, POST, PUT, DELETE\nContent-Type: application/json",
 "Allow: GET, HEAD, POST, PUT, DELETE\nContent-Type: application/json",
 "Allow: GET, HEAD, POST, PUT, DELETE\nContent-Type: application/json",
 ""]
--- response_body eval
[$::E, $::E, $::E, $::E]



=== TEST 11: ?format=json on a JSON value and on an octet-stream value that is JSON
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t11;
--- config
    location /db/ { kv store; }
--- request eval
['PUT /db/j
{"n": 1}',
"GET /db/j?format=json",
'PUT /db/o
[1, {"a": "b"}]',
"GET /db/o",
"GET /db/o?format=json",
"HEAD /db/o?format=json"]
--- more_headers eval
["Content-Type: application/json", "",
 "Content-Type: application/octet-stream", "", "", ""]
--- error_code eval
[201, 200, 201, 200, 200, 200]
--- response_headers eval
["", "Content-Type: application/json",
 "", "Content-Type: application/octet-stream",
 "Content-Type: application/json\nContent-Length: 15",
 "Content-Type: application/json\nContent-Length: 15"]
--- response_body eval
["", '{"n": 1}', "", '[1, {"a": "b"}]', '[1, {"a": "b"}]', ""]



=== TEST 12: ?format=json is 406 when the stored value is not JSON, 404 when missing
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t12;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/text
definitely not json",
"GET /db/text?format=json",
"GET /db/text",
"PUT /db/half
{\"a\":",
"GET /db/half?format=json",
"GET /db/none?format=json"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 406, 200, 201, 406, 404]
--- response_headers eval
["", "Content-Type: application/json", "Content-Type: application/octet-stream",
 "", "Content-Type: application/json", "Content-Type: application/json"]
--- response_body eval
["", $::E, "definitely not json", "", $::E, $::E]



=== TEST 13: the empty value is a value (with and without Content-Length)
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t13;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/e1
",
"GET /db/e1",
"HEAD /db/e1",
"POST /db/e2
",
"GET /db/e2",
"GET /db/e3"]
--- more_headers eval
["Content-Type: application/octet-stream\nContent-Length: 0", "", "",
 "Content-Type: application/octet-stream", "", ""]
--- error_code eval
[201, 200, 200, 201, 200, 404]
--- response_headers eval
["", "Content-Length: 0\nContent-Type: application/octet-stream",
 "Content-Length: 0", "", "Content-Length: 0", ""]
--- response_body eval
["", "", "", "", "", $::E]



=== TEST 14: an empty key is 400 for writes; reading the location itself lists keys, 403 without kv_list
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t14;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/
x",
"POST /db/
x",
"GET /db/",
"HEAD /db/",
"DELETE /db/",
"GET /db/?format=json"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[400, 400, 403, 403, 400, 403]
--- response_headers eval
["Content-Type: application/json", "Content-Type: application/json",
 "Content-Type: application/json", "Content-Type: application/json",
 "Content-Type: application/json", "Content-Type: application/json"]
--- response_body eval
[$::E, $::E, $::E, "", $::E, $::E]



=== TEST 15: max_value is the body limit: exactly max_value is stored, one more byte is 413
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t15;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/max
" . ("m" x (1024 * 1024)),
"HEAD /db/max",
"PUT /db/over
" . ("o" x (1024 * 1024 + 1)),
"GET /db/over",
"PUT /db/max
" . ("p" x (1024 * 1024 + 1)),
"HEAD /db/max"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 413, 404, 413, 200]
--- response_headers eval
["", "Content-Length: 1048576", "Content-Type: application/json", "",
 "Content-Type: application/json", "Content-Length: 1048576"]
--- response_body eval
["", "", $::E, $::E, $::E, ""]
--- timeout: 20



=== TEST 16: client_max_body_size does not limit a kv location, max_value does
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t16 max_value=200k;
--- config
    location /db/ {
        client_max_body_size 1k;
        kv store;
    }
--- request eval
["PUT /db/big
" . ("b" x (150 * 1024)),
"HEAD /db/big",
"PUT /db/toobig
" . ("c" x (200 * 1024 + 1)),
"GET /db/toobig"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 413, 404]
--- response_headers eval
["", "Content-Length: 153600", "Content-Type: application/json", ""]
--- response_body eval
["", "", $::E, $::E]
--- timeout: 10



=== TEST 17: chunked request bodies are stored; over max_value they are 413
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t17 max_value=64k;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/ch
5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
"GET /db/ch",
"PUT /db/chbig
" . CORE::join("", map { "8000\r\n" . ("z" x 32768) . "\r\n" } 1 .. 3) . "0\r\n\r\n",
"GET /db/chbig"]
--- more_headers eval
["Content-Type: application/octet-stream\nTransfer-Encoding: chunked", "",
 "Content-Type: application/octet-stream\nTransfer-Encoding: chunked", ""]
--- error_code eval
[201, 200, 413, 404]
--- response_headers eval
["", "Content-Length: 11", "Content-Type: application/json", ""]
--- response_body eval
["", "hello world", $::E, $::E]
--- timeout: 10



=== TEST 18: errors carry a JSON body, 2xx answers of writes have an empty body
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t18;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/x
v",
"DELETE /db/x"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200]
--- response_body eval
["", ""]
--- no_error_log
[error]
