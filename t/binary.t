# Binary values: all 256 byte values round trip byte for byte, and an
# 8 MiB value round trips both when the request body stays in memory and
# when nginx buffers it to a temporary file.

use strict;
use warnings;

use Test::Nginx::Socket 'no_plan';
use File::Temp qw(tempdir);

my $tmp = $ENV{KV_TEST_TMP} || tempdir(CLEANUP => 1);
$ENV{TEST_NGINX_KV_DIR} = "$tmp/binary-$$";
# the module creates a missing data directory, not its missing parents
mkdir $ENV{TEST_NGINX_KV_DIR} or die "mkdir $ENV{TEST_NGINX_KV_DIR}: $!";

our $E = qr/^\{\s*"error"\s*:\s*"(?:[^"\\]|\\.)+"\s*\}\s*$/s;

# every byte value once, in order (starts with NUL, ends with 0xFF: the
# runner's trimming of request bodies does not touch it)
our $All = join '', map chr, 0 .. 255;

# 8 MiB = 32768 blocks of 256 bytes: a block number and a rotation of all
# byte values, so that a misplaced or repeated block is detected; it ends
# with "END" (not whitespace) so no runner trims it.
our $Big = join '', map {
    pack('N', $_) . substr($All x 2, $_ % 256, 252)
} 0 .. 32767;
substr($Big, -3) = 'END';
die "bad size" unless length($Big) == 8 * 1024 * 1024;

# 2 MiB, for the over-max_value case
our $Two = substr($Big, 0, 2 * 1024 * 1024);

no_long_string();
run_tests();

__DATA__

=== TEST 1: all 256 byte values round trip byte for byte
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t1;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/bytes\n$::All",
"GET /db/bytes",
"HEAD /db/bytes",
"POST /db/bytes2\n" . CORE::reverse($::All),
"GET /db/bytes2",
"GET /db/bytes"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 200, 201, 200, 200]
--- response_headers eval
["", "Content-Type: application/octet-stream\nContent-Length: 256",
 "Content-Length: 256", "", "Content-Length: 256", "Content-Length: 256"]
--- response_body eval
["", $::All, "", "", scalar CORE::reverse($::All), $::All]



=== TEST 2: binary values are not JSON: format=json is 406, a JSON PUT is 400
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t2;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/bytes\n$::All",
"GET /db/bytes?format=json",
"PUT /db/bytes\n$::All",
"GET /db/bytes"]
--- more_headers eval
["Content-Type: application/octet-stream", "",
 "Content-Type: application/json", ""]
--- error_code eval
[201, 406, 400, 200]
--- response_headers eval
["", "Content-Type: application/json", "Content-Type: application/json",
 "Content-Type: application/octet-stream"]
--- response_body eval
["", $::E, $::E, $::All]



=== TEST 3: 8 MiB value, request body buffered in memory (client_body_buffer_size 16m)
--- http_config
    kv_zone zone=store:4m path=$TEST_NGINX_KV_DIR/t3 max_value=16m;
--- config
    location /db/ {
        client_body_buffer_size 16m;
        kv store;
    }
--- request eval
["PUT /db/big\n$::Big",
"GET /db/big",
"HEAD /db/big"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 200]
--- response_headers eval
["", "Content-Type: application/octet-stream\nContent-Length: 8388608",
 "Content-Length: 8388608"]
--- response_body eval
["", $::Big, ""]
--- timeout: 60



=== TEST 4: 8 MiB value, request body in a temporary file (client_body_buffer_size 8k)
--- http_config
    kv_zone zone=store:4m path=$TEST_NGINX_KV_DIR/t4 max_value=16m;
--- config
    location /db/ {
        client_body_buffer_size 8k;
        kv store;
    }
--- request eval
["PUT /db/big\n$::Big",
"GET /db/big",
"PUT /db/big2\n" . CORE::reverse($::Big),
"GET /db/big2",
"GET /db/big"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[201, 200, 201, 200, 200]
--- response_headers eval
["", "Content-Length: 8388608", "", "Content-Length: 8388608", "Content-Length: 8388608"]
--- response_body eval
["", $::Big, "", scalar CORE::reverse($::Big), $::Big]
--- timeout: 60



=== TEST 5: a 2 MiB value with the default max_value (1m) is 413 and not stored
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t5;
--- config
    location /db/ { kv store; }
--- request eval
["PUT /db/two\n$::Two",
"GET /db/two"]
--- more_headers
Content-Type: application/octet-stream
--- error_code eval
[413, 404]
--- response_headers eval
["Content-Type: application/json", "Content-Type: application/json"]
--- response_body eval
[$::E, $::E]
--- timeout: 20
