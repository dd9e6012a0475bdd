# A full index zone: 507 with a JSON error, nothing written, earlier keys
# still readable, DELETE still works and frees room for a new key.
#
# The zone is the minimum size (64k) and every key is 1000 bytes, so 150
# keys (150 KB of key bytes alone) cannot all fit: the first PUT must
# succeed, the 151st must be refused.  Which PUT is the first refused one
# depends on the index layout; t/zone-full-keys.t finds it and checks every
# acknowledged key.

use strict;
use warnings;

use Test::Nginx::Socket 'no_plan';
use File::Temp qw(tempdir);

my $tmp = $ENV{KV_TEST_TMP} || tempdir(CLEANUP => 1);
$ENV{TEST_NGINX_KV_DIR} = "$tmp/zone-full-$$";
# the module creates a missing data directory, not its missing parents
mkdir $ENV{TEST_NGINX_KV_DIR} or die "mkdir $ENV{TEST_NGINX_KV_DIR}: $!";

sub key { ("z" x 996) . sprintf("%04d", $_[0]) }

our $EOpt = '^(?:\{\s*"error"\s*:\s*"(?:[^"\\\\]|\\\\.)+"\s*\}\s*)?$';
our $E    = '^\{\s*"error"\s*:\s*"(?:[^"\\\\]|\\\\.)+"\s*\}\s*$';

our (@Req, @Code, @Body);
push @Req, "PUT /db/" . key(1) . "\nfirst";      push @Code, '^201$';        push @Body, '^$';
for my $i (2 .. 150) {
    push @Req, "PUT /db/" . key($i) . "\nv$i";   push @Code, '^(?:201|507)$'; push @Body, $EOpt;
}
push @Req, "PUT /db/" . key(151) . "\nnope";     push @Code, '^507$';        push @Body, $E;
push @Req, "GET /db/" . key(151);                push @Code, '^404$';        push @Body, $E;
push @Req, "GET /db/" . key(1);                  push @Code, '^200$';        push @Body, '^first$';
# overwriting an existing key needs no new index entry for the key
push @Req, "PUT /db/" . key(1) . "\nsecond";     push @Code, '^(?:201|507)$'; push @Body, $EOpt;
push @Req, "GET /db/" . key(1);                  push @Code, '^200$';        push @Body, '^(?:first|second)$';
push @Req, "DELETE /db/" . key(1);               push @Code, '^200$';        push @Body, '^$';
push @Req, "GET /db/" . key(1);                  push @Code, '^404$';        push @Body, $E;
# a new key of the same size as the deleted one fits in the freed room
push @Req, "PUT /db/" . key(999) . "\nfits now"; push @Code, '^201$';        push @Body, '^$';
push @Req, "GET /db/" . key(999);                push @Code, '^200$';        push @Body, '^fits now$';

run_tests();

__DATA__

=== TEST 1: 64k zone, 1000-byte keys until 507; reads, DELETE and a new PUT afterwards
--- http_config
    kv_zone zone=store:64k path=$TEST_NGINX_KV_DIR/t1;
--- config
    location /db/ { kv store; }
--- more_headers
Content-Type: application/octet-stream
--- request eval
\@::Req
--- error_code_like eval
\@::Code
--- response_body_like eval
\@::Body
--- timeout: 30
