# Bad input that the other suites do not cover, one block per row of
# README's "Bad input" table: what nginx answers before the module runs
# (its own limits and HTTP parsing, an HTML page unless error_page says
# otherwise), and the module's answers to conflicting or misplaced
# headers and arguments.

use strict;
use warnings;

use Test::Nginx::Socket 'no_plan';
use File::Temp qw(tempdir);

my $tmp = $ENV{KV_TEST_TMP} || tempdir(CLEANUP => 1);
$ENV{TEST_NGINX_KV_DIR} = "$tmp/bad-input-$$";
mkdir $ENV{TEST_NGINX_KV_DIR} or die "mkdir $ENV{TEST_NGINX_KV_DIR}: $!";

our $E = qr/^\{\s*"error"\s*:\s*"(?:[^"\\]|\\.)+"\s*\}\s*$/s;
our $HTML = qr/<html>/;

run_tests();

__DATA__

=== TEST 1: a request line longer than large_client_header_buffers is nginx's 414
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t1;
--- config
    location /db/ { kv store; }
--- raw_request eval
"GET /db/" . ("k" x 9000) . " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
--- error_code: 414
--- response_body_like eval
$::HTML



=== TEST 2: a header line longer than large_client_header_buffers is nginx's 400
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t2;
--- config
    location /db/ { kv store; }
--- raw_request eval
"PUT /db/k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
. "Content-Type: application/octet-stream\r\nX-KV-TTL: " . ("9" x 9000)
. "\r\nContent-Length: 1\r\n\r\nx"
--- error_code: 400
--- response_body_like eval
$::HTML



=== TEST 3: an unknown Transfer-Encoding is nginx's 501
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t3;
--- config
    location /db/ { kv store; }
--- raw_request eval
"PUT /db/k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: gzip\r\n\r\n"
--- error_code: 501
--- response_body_like eval
$::HTML



=== TEST 4: a Content-Length that is not a number is nginx's 400
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t4;
--- config
    location /db/ { kv store; }
--- raw_request eval
"PUT /db/k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: abc\r\n\r\n"
--- error_code: 400
--- response_body_like eval
$::HTML



=== TEST 5: two Content-Length headers are nginx's 400
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t5;
--- config
    location /db/ { kv store; }
--- raw_request eval
"PUT /db/k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy"
--- error_code: 400
--- response_body_like eval
$::HTML



=== TEST 6: Content-Length with Transfer-Encoding: chunked is nginx's 400
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t6;
--- config
    location /db/ { kv store; }
--- raw_request eval
"PUT /db/k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
--- error_code: 400
--- response_body_like eval
$::HTML



=== TEST 7: %00 in the key is nginx's 400
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t7;
--- config
    location /db/ { kv store; }
--- raw_request eval
"PUT /db/a%00b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: 1\r\n\r\nx"
--- error_code: 400
--- response_body_like eval
$::HTML



=== TEST 8: a raw space in the key is nginx's 400
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t8;
--- config
    location /db/ { kv store; }
--- raw_request eval
"GET /db/a b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
--- error_code: 400
--- response_body_like eval
$::HTML



=== TEST 9: a raw control byte in the key is nginx's 400
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t9;
--- config
    location /db/ { kv store; }
--- raw_request eval
"GET /db/a\x01b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
--- error_code: 400
--- response_body_like eval
$::HTML



=== TEST 10: a lower-case method is nginx's 400
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t10;
--- config
    location /db/ { kv store; }
--- raw_request eval
"get /db/k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
--- error_code: 400
--- response_body_like eval
$::HTML



=== TEST 11: HTTP/1.1 without Host is nginx's 400
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t11;
--- config
    location /db/ { kv store; }
--- raw_request eval
"GET /db/k HTTP/1.1\r\nConnection: close\r\n\r\n"
--- error_code: 400
--- response_body_like eval
$::HTML



=== TEST 12: HTTP/2.0 in a clear-text request line is nginx's 505
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t12;
--- config
    location /db/ { kv store; }
--- raw_request eval
"GET /db/k HTTP/2.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
--- error_code: 505
--- response_body_like eval
$::HTML



=== TEST 13: HTTP/1.0 without Content-Length has an empty body: 201, an empty value
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t13;
--- config
    location /db/ { kv store; }
--- raw_request eval
"PUT /db/e HTTP/1.0\r\nContent-Type: application/octet-stream\r\n\r\n"
--- error_code: 201
--- response_body_like eval
qr/^$/



=== TEST 14: conflicting TTLs: twice as a header, header and argument, negative, a fraction: 400, nothing written
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t14;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/t
x",
"PUT /db/t?ttl=5
x",
"PUT /db/t
x",
"PUT /db/t
x",
"PUT /db/t?ttl=1.5
x",
"GET /db/t"]
--- more_headers eval
["Content-Type: application/octet-stream\nX-KV-TTL: 5\nX-KV-TTL: 6",
 "Content-Type: application/octet-stream\nX-KV-TTL: 5",
 "Content-Type: application/octet-stream\nX-KV-TTL: -5",
 "Content-Type: application/octet-stream\nX-KV-TTL: 5s",
 "Content-Type: application/octet-stream",
 ""]
--- error_code eval
[400, 400, 400, 400, 400, 404]
--- response_body_like eval
[$::E, $::E, $::E, $::E, $::E, $::E]



=== TEST 15: a TTL on GET or DELETE is ignored; format= other than json is 400
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t15;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/g
v",
"GET /db/g?ttl=1",
"GET /db/g?format=xml",
"DELETE /db/g?ttl=abc",
"GET /db/g"]
--- more_headers eval
["Content-Type: application/octet-stream", "", "", "", ""]
--- error_code eval
[201, 200, 400, 200, 404]
--- response_body_like eval
[qr/^$/, qr/^v$/, $::E, qr/^$/, $::E]



=== TEST 16: If-Match and If-None-Match: * together need a key that exists and does not: always 412
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t16;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/c
v",
"PUT /db/c
w",
"PUT /db/d
w",
"GET /db/c"]
--- more_headers eval
["Content-Type: application/octet-stream",
 "Content-Type: application/octet-stream\nIf-Match: \"1\"\nIf-None-Match: *",
 "Content-Type: application/octet-stream\nIf-Match: *\nIf-None-Match: *",
 ""]
--- error_code eval
[201, 412, 412, 200]
--- response_body_like eval
[qr/^$/, $::E, $::E, qr/^v$/]



=== TEST 17: JSON bodies: empty, invalid UTF-8, trailing bytes are 400; nesting past cJSON's limit of 1000 is 400
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t17;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/j
",
"PUT /db/j
\xff\xfe1",
"PUT /db/j
[1]x",
"PUT /db/j
" . ("[" x 1001) . ("]" x 1001),
"PUT /db/j
" . ("[" x 999) . ("]" x 999),
"GET /db/j"]
--- more_headers
Content-Type: application/json
--- error_code eval
[400, 400, 400, 400, 201, 200]
--- response_body_like eval
[$::E, $::E, $::E, $::E, qr/^$/, qr/^\[{999}\]{999}$/]



=== TEST 18: an empty or listed Content-Type is 415
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t18;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/k
x",
"PUT /db/k
x",
"GET /db/k"]
--- more_headers eval
["Content-Type: ",
 "Content-Type: application/octet-stream, text/plain",
 ""]
--- error_code eval
[415, 415, 404]
--- response_body_like eval
[$::E, $::E, $::E]
