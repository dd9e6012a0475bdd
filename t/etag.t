# ETags and conditional requests: every 200/201 carries ETag: "<sequence>",
# writes honour If-Match (compare-and-set) and If-None-Match: * (create
# only) with 412, reads answer If-None-Match with 304.  nginx's own
# not_modified filter must neither add nor contradict any of it.
#
# Each block has a fresh data directory, so sequence numbers start at 1.

use strict;
use warnings;

use Test::Nginx::Socket 'no_plan';
use File::Temp qw(tempdir);

my $tmp = $ENV{KV_TEST_TMP} || tempdir(CLEANUP => 1);
$ENV{TEST_NGINX_KV_DIR} = "$tmp/etag-$$";
mkdir $ENV{TEST_NGINX_KV_DIR} or die "mkdir $ENV{TEST_NGINX_KV_DIR}: $!";

our $E = qr/^\{\s*"error"\s*:\s*"(?:[^"\\]|\\.)+"\s*\}\s*$/s;

no_long_string();
run_tests();

__DATA__

=== TEST 1: each write's 201 has a new ETag, and GET and HEAD show it
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t1;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/a
one",
"PUT /db/b
two",
"GET /db/a",
"HEAD /db/b",
"PUT /db/a
three",
"GET /db/a"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 201, 200, 200, 201, 200]
--- response_headers eval
['ETag: "1"', 'ETag: "2"', 'ETag: "1"', 'ETag: "2"', 'ETag: "3"',
 'ETag: "3"']
--- response_body eval
["", "", "one", "", "", "three"]
--- no_error_log
[error]



=== TEST 2: If-None-Match: * creates only
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t2;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/k
first",
"PUT /db/k
second",
"GET /db/k"]
--- more_headers eval
["Content-Type: application/octet-stream\nIf-None-Match: *",
 "Content-Type: application/octet-stream\nIf-None-Match: *",
 ""]
--- error_code eval
[201, 412, 200]
--- response_body_like eval
[qr/^$/, $::E, qr/^first$/]
--- no_error_log
[error]



=== TEST 3: compare-and-set: the current ETag wins once, a stale one never
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t3;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/c
0",
"PUT /db/c
1",
"PUT /db/c
stale",
"PUT /db/c
2",
"GET /db/c"]
--- more_headers eval
["Content-Type: application/octet-stream",
 "Content-Type: application/octet-stream\nIf-Match: \"1\"",
 "Content-Type: application/octet-stream\nIf-Match: \"1\"",
 "Content-Type: application/octet-stream\nIf-Match: \"7\", \"2\"",
 ""]
--- error_code eval
[201, 201, 412, 201, 200]
--- response_headers eval
['ETag: "1"', 'ETag: "2"', '!ETag', 'ETag: "3"', 'ETag: "3"']
--- response_body_like eval
[qr/^$/, qr/^$/, $::E, qr/^$/, qr/^2$/]
--- no_error_log
[error]



=== TEST 4: If-Match: * needs the key; a weak tag never matches If-Match
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t4;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/m
x",
"PUT /db/m
x",
"PUT /db/m
y",
"GET /db/m"]
--- more_headers eval
["Content-Type: application/octet-stream\nIf-Match: *",
 "Content-Type: application/octet-stream",
 "Content-Type: application/octet-stream\nIf-Match: W/\"1\"",
 ""]
--- error_code eval
[412, 201, 412, 200]
--- response_body_like eval
[$::E, qr/^$/, $::E, qr/^x$/]
--- no_error_log
[error]



=== TEST 5: GET with If-None-Match answers 304 with the ETag, weak or not
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t5;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/g
cached",
"GET /db/g",
"GET /db/g",
"GET /db/g",
"GET /db/g",
"HEAD /db/g"]
--- more_headers eval
["Content-Type: application/octet-stream",
 "If-None-Match: \"1\"",
 "If-None-Match: W/\"1\"",
 "If-None-Match: \"5\", \"1\"",
 "If-None-Match: \"5\"",
 "If-None-Match: *"]
--- error_code eval
[201, 304, 304, 304, 200, 304]
--- response_headers eval
['ETag: "1"', "ETag: \"1\"\n!Content-Length", 'ETag: "1"', 'ETag: "1"',
 'ETag: "1"', 'ETag: "1"']
--- response_body eval
["", "", "", "", "cached", ""]
--- no_error_log
[error]



=== TEST 6: GET with If-Match: 412 on a mismatch; a missing key stays 404
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t6;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/r
v",
"GET /db/r",
"GET /db/r",
"GET /db/none"]
--- more_headers eval
["Content-Type: application/octet-stream",
 "If-Match: \"2\"",
 "If-Match: \"1\"",
 "If-Match: *"]
--- error_code eval
[201, 412, 200, 404]
--- response_body_like eval
[qr/^$/, $::E, qr/^v$/, $::E]
--- no_error_log
[error]



=== TEST 7: conditional DELETE; its 200 carries the delete's own ETag
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t7;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/d
v",
"DELETE /db/d",
"GET /db/d",
"DELETE /db/d",
"GET /db/d",
"DELETE /db/d"]
--- more_headers eval
["Content-Type: application/octet-stream",
 "If-Match: \"9\"",
 "",
 "If-Match: \"1\"",
 "",
 "If-Match: *"]
--- error_code eval
[201, 412, 200, 200, 404, 404]
--- response_headers eval
['ETag: "1"', '!ETag', 'ETag: "1"', 'ETag: "2"', '!ETag', '!ETag']
--- no_error_log
[error]



=== TEST 8: malformed conditions are 400 and write nothing
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t8;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/b
v",
"PUT /db/b
v",
"GET /db/b",
"GET /db/b"]
--- more_headers eval
["Content-Type: application/octet-stream\nIf-Match: 1",
 "Content-Type: application/octet-stream\nIf-None-Match: \"1",
 "If-None-Match: \"1\" x",
 ""]
--- error_code eval
[400, 400, 400, 404]
--- response_body_like eval
[$::E, $::E, $::E, $::E]
--- no_error_log
[error]



=== TEST 9: nginx's If-Unmodified-Since handling does not turn a GET into 412
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t9;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/u
v",
"GET /db/u",
"DELETE /db/u"]
--- more_headers eval
["Content-Type: application/octet-stream",
 "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:01 GMT",
 "If-Match: \"1\""]
--- error_code eval
[201, 200, 200]
--- response_headers eval
['ETag: "1"', 'ETag: "1"', 'ETag: "2"']
--- no_error_log
[error]



=== TEST 10: an entity tag is compared as a string: "01" is not "1"
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t10;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/z
v",
"PUT /db/z
w",
"GET /db/z",
"GET /db/z"]
--- more_headers eval
["Content-Type: application/octet-stream",
 "Content-Type: application/octet-stream\nIf-Match: \"01\"",
 "If-None-Match: \"01\"",
 "If-None-Match: \"1\""]
--- error_code eval
[201, 412, 200, 304]
--- response_body_like eval
[qr/^$/, $::E, qr/^v$/, qr/^$/]
--- no_error_log
[error]
