# worker_processes 2: a write acknowledged by one worker is visible to the
# other at once.  Every request is a new connection (Connection: close), so
# requests are spread over both workers by the kernel; t/workers-pids.t
# proves with worker pids that both workers take part.

use strict;
use warnings;

use Test::Nginx::Socket 'no_plan';
use File::Temp qw(tempdir);

my $tmp = $ENV{KV_TEST_TMP} || tempdir(CLEANUP => 1);
$ENV{TEST_NGINX_KV_DIR} = "$tmp/workers-$$";
# the module creates a missing data directory, not its missing parents
mkdir $ENV{TEST_NGINX_KV_DIR} or die "mkdir $ENV{TEST_NGINX_KV_DIR}: $!";

workers(2);
master_on();

# 40 keys: write each, read it back at once, then read all of them again,
# overwrite all, read all again, delete half, read all.
our (@Req, @Code, @Body);
my $n = 40;
for my $i (1 .. $n) {
    push @Req, "PUT /db/w$i\nvalue-$i-a";    push @Code, 201; push @Body, "";
    push @Req, "GET /db/w$i";                push @Code, 200; push @Body, "value-$i-a";
}
for my $i (1 .. $n) {
    push @Req, "GET /db/w$i";                push @Code, 200; push @Body, "value-$i-a";
}
for my $i (1 .. $n) {
    push @Req, "POST /db/w$i\nvalue-$i-bb";  push @Code, 201; push @Body, "";
}
for my $i (1 .. $n) {
    push @Req, "GET /db/w$i";                push @Code, 200; push @Body, "value-$i-bb";
}
for my $i (grep { $_ % 2 } 1 .. $n) {
    push @Req, "DELETE /db/w$i";             push @Code, 200; push @Body, "";
}
for my $i (1 .. $n) {
    push @Req, "GET /db/w$i";
    push @Code, $i % 2 ? 404 : 200;
    push @Body, $i % 2 ? qr/^\{\s*"error"/ : "value-$i-bb";
}

run_tests();

__DATA__

=== TEST 1: two workers: every read sees every acknowledged write
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t1;
--- config
    location /db/ { kv store; }
--- more_headers
Content-Type: application/octet-stream
--- request eval
\@::Req
--- error_code eval
\@::Code
--- response_body eval
\@::Body
--- timeout: 30



=== TEST 2: two workers, JSON values and a large value
--- http_config
    kv_zone zone=store:1m path=$TEST_NGINX_KV_DIR/t2;
--- config
    location /db/ { kv store; }
--- request eval
[(map { ("PUT /db/j\n{\"n\":$_}", "GET /db/j?format=json") } 1 .. 10),
 "PUT /db/large\n" . ("L" x 500000), "GET /db/large", "GET /db/large", "GET /db/large"]
--- more_headers eval
[(map { ("Content-Type: application/json", "") } 1 .. 10),
 "Content-Type: application/octet-stream", "", "", ""]
--- error_code eval
[(map { (201, 200) } 1 .. 10), 201, 200, 200, 200]
--- response_body eval
[(map { ("", "{\"n\":$_}") } 1 .. 10), "", ("L" x 500000) x 3]
--- timeout: 30
