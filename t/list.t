# Listing keys: GET of the location itself where kv_list is on.  Order,
# prefixes, start, limits, values=1, keys that are not UTF-8, bad
# arguments.  Walks by cursor, also while others write, are in
# list-walk.t.

use strict;
use warnings;

use Test::Nginx::Socket 'no_plan';
use File::Temp qw(tempdir);

my $tmp = $ENV{KV_TEST_TMP} || tempdir(CLEANUP => 1);
$ENV{TEST_NGINX_KV_DIR} = "$tmp/list-$$";
mkdir $ENV{TEST_NGINX_KV_DIR} or die "mkdir $ENV{TEST_NGINX_KV_DIR}: $!";

our $E = qr/^\{\s*"error"\s*:\s*"(?:[^"\\]|\\.)+"\s*\}\s*$/s;

# a page's JSON, keys given, as cJSON prints it
sub page { '{"keys":[' . join(',', map { "\"$_\"" } @_) . ']}' }

no_long_string();
run_tests();

__DATA__

=== TEST 1: without kv_list, GET of the location is 403; writes to it are 400
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t1;
--- config
    location /db/ { kv store; }
--- request eval
["GET /db/", "HEAD /db/", "PUT /db/
x", "DELETE /db/"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[403, 403, 400, 400]
--- response_body eval
[$::E, "", $::E, $::E]



=== TEST 2: keys in byte-wise order, the shorter first; an empty store is an empty page
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t2;
--- config
    location /db/ { kv store; kv_list on; }
--- request eval
["GET /db/",
"PUT /db/b
1", "PUT /db/ab
2", "PUT /db/a
3", "PUT /db/B
4", "PUT /db/a%20b
5", "PUT /db/gone
6", "DELETE /db/gone",
"GET /db/", "HEAD /db/", "GET /db/?format=json"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[200, 201, 201, 201, 201, 201, 201, 200, 200, 200, 200]
--- response_headers eval
["Content-Type: application/json", "", "", "", "", "", "", "",
 "Content-Type: application/json", "Content-Type: application/json",
 "Content-Type: application/json"]
--- response_body eval
[::page(), "", "", "", "", "", "", "",
 ::page("B", "a", "a b", "ab", "b"), "", ::page("B", "a", "a b", "ab", "b")]



=== TEST 3: prefix, start and limit; a page that stops early has a cursor
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t3;
--- config
    location /db/ { kv store; kv_list on; }
--- request eval
["PUT /db/user:1
a", "PUT /db/user:2
b", "PUT /db/user:10
c", "PUT /db/users
d", "PUT /db/v
e",
"GET /db/?prefix=user:",
"GET /db/?prefix=user%3A&start=user:10",
"GET /db/?start=user:2",
"GET /db/?prefix=nothing",
"GET /db/?limit=5",
"GET /db/?limit=2",
"GET /db/?prefix=user:&limit=3"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 201, 201, 201, 201, 200, 200, 200, 200, 200, 200, 200]
--- response_body_like eval
["", "", "", "", "",
 '^' . quotemeta(::page("user:1", "user:10", "user:2")) . '$',
 '^' . quotemeta(::page("user:10", "user:2")) . '$',
 '^' . quotemeta(::page("user:2", "users", "v")) . '$',
 '^' . quotemeta(::page()) . '$',
 '^' . quotemeta(::page("user:1", "user:10", "user:2", "users", "v")) . '$',
 '^\{"keys":\["user:1","user:10"\],"cursor":"[A-Za-z0-9_-]+"\}$',
 '^' . quotemeta(::page("user:1", "user:10", "user:2")) . '$']



=== TEST 4: values=1: JSON values as JSON, others base64, big ones by size, each with its ETag
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t4;
--- config
    location /db/ { kv store; kv_list on; }
--- request eval
["PUT /db/a
hello",
"PUT /db/b
" . "x" x 5000,
"GET /db/?values=1",
"GET /db/?values=0"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 201, 200, 200]
--- response_body eval
["", "",
 '{"keys":["a","b"],"values":[{"value_base64":"aGVsbG8=","etag":"\"1\""},{"size":5000,"etag":"\"2\""}]}',
 ::page("a", "b")]



=== TEST 5: a JSON value is embedded as JSON
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t5;
--- config
    location /db/ { kv store; kv_list on; }
--- request eval
["PUT /db/j
{\"n\": [1, true, null], \"s\": \"\\u00e9\"}",
"GET /db/?values=1"]
--- more_headers
Content-Type: application/json
--- error_code eval
[201, 200]
--- response_body eval
["", '{"keys":["j"],"values":[{"value":{"n":[1,true,null],"s":"é"},"etag":"\"1\""}]}']



=== TEST 6: a page with a key that is not UTF-8 gives every key in base64, and says so
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t6;
--- config
    location /db/ { kv store; kv_list on; }
--- request eval
["PUT /db/a%FF
1", "PUT /db/%C3%A9
2", "PUT /db/%ED%A0%80
3",
"GET /db/?prefix=a",
"GET /db/?prefix=%C3",
"GET /db/?prefix=%ED",
"GET /db/"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 201, 201, 200, 200, 200, 200]
--- response_body eval
["", "", "",
 '{"keys":["Yf8="],"encoding":"base64"}',
 '{"keys":["é"]}',
 '{"keys":["7aCA"],"encoding":"base64"}',
 '{"keys":["Yf8=","w6k=","7aCA"],"encoding":"base64"}']



=== TEST 7: bad arguments are 400 with a JSON error
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t7;
--- config
    location /db/ { kv store; kv_list on; }
--- request eval
["GET /db/?limit=0", "GET /db/?limit=-1", "GET /db/?limit=x",
 "GET /db/?values=2", "GET /db/?values=", "GET /db/?cursor=zz",
 "GET /db/?cursor=", "GET /db/?cursor=AmFi", "GET /db/?cursor=AWF",
 "GET /db/?cursor=AWFi%3D", "GET /db/?format=xml", "GET /db/?prefix=%zz",
 "GET /db/?limit=99999999999999999999999", "GET /db/?limit=1001",
 "GET /db/?limit=1000&cursor=AWFi"]
--- error_code eval
[400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 200]
--- response_body eval
[$::E, $::E, $::E, $::E, $::E, $::E, $::E, $::E, $::E, $::E, $::E, $::E,
 $::E, $::E, ::page()]



=== TEST 8: kv_list is inherited from the server level, and off in a location turns it off
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t8;
--- config
    kv_list on;
    location /db/ { kv store; }
    location /private/ { kv store; kv_list off; }
--- request eval
["GET /db/", "GET /private/"]
--- error_code eval
[200, 403]
--- response_body eval
[::page(), $::E]



=== TEST 9: kv_list takes on or off
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t9;
--- config
    location /db/ { kv store; kv_list yes; }
--- request
GET /db/
--- must_die
--- error_log eval
qr/invalid value "yes" in "kv_list" directive/
