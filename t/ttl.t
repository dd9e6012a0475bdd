# Expiring keys (TTL): X-KV-TTL or ?ttl=, kv_zone default_ttl=, X-KV-Expires
# on reads, 404 at once in every worker once the time is up, and the expiry
# kept through restart, kill -9, reload, hint files and compaction.  Bad TTLs are
# 400 and write nothing.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use HTTP::Date qw(str2time);
use Time::HiRes qw(time sleep);
use KvTest qw(wait_until);

my $E = qr/^\{\s*"error"\s*:\s*"(?:[^"\\]|\\.)+"\s*\}\s*$/s;

my $srv = KvTest->new(name => 'ttl', workers => 2, endpoints => 1,
                      zone_extra => 'segment_size=64k',
                      http_extra => '    kv_var $short_v "short" zone=store;',
                      server_extra =>
                          '        location = /var { return 200 "[$short_v]"; }');
$srv->start_ok;

sub put_ttl {
    my ($s, $path, $value, @headers) = @_;
    return $s->req('PUT', $path, $value, 'application/octet-stream',
                   headers => [@headers]);
}

# the time X-KV-Expires names, or undef
sub expires_of {
    my ($r) = @_;
    my $h = $r->{headers}{'x-kv-expires'};
    return defined $h ? str2time($h) : undef;
}

# --- writes with a TTL, and the header reads give back

my $t0 = time;
my $r = put_ttl($srv, '/db/short', 'brief', ['X-KV-TTL', '2']);
is($r->{status}, 201, 'PUT with X-KV-TTL: 2 is 201');
like($r->{headers}{etag} // '', qr/^"\d+"$/, 'and carries an ETag');

is(put_ttl($srv, '/db/long?ttl=600', 'lasting')->{status}, 201,
   'PUT with ?ttl=600 is 201');
is($srv->put('plain', 'forever')->{status}, 201, 'PUT without a TTL');
is(put_ttl($srv, '/db/renewed', 'v1', ['X-KV-TTL', '1'])->{status}, 201,
   'PUT with a 1 s TTL');
is($srv->put('renewed', 'v2')->{status}, 201,
   'the same key again, without a TTL');

$r = $srv->get('short');
is($r->{status}, 200, 'GET of a key with a TTL');
my $exp = expires_of($r);
ok(defined $exp && $exp >= int($t0) + 2 && $exp <= $t0 + 4,
   'X-KV-Expires names the end of the TTL')
    or diag("X-KV-Expires: " . ($r->{headers}{'x-kv-expires'} // 'none'));

is($srv->req('GET', '/var')->{body}, '[brief]',
   'kv_var sees the key while its TTL runs');

my $long_exp = expires_of($srv->get('long'));
ok(defined $long_exp && abs($long_exp - ($t0 + 600)) <= 2,
   '?ttl=600 ends 600 s from now');
ok(!defined $srv->get('plain')->{headers}{'x-kv-expires'},
   'a key without a TTL has no X-KV-Expires');
ok(defined $srv->req('HEAD', '/db/long')->{headers}{'x-kv-expires'},
   'HEAD has X-KV-Expires too');

# --- bad TTLs: 400, JSON, nothing written

for my $case (['X-KV-TTL', '0'], ['X-KV-TTL', '-5'], ['X-KV-TTL', 'soon'],
              ['X-KV-TTL', '2147483648'], ['X-KV-TTL', ''],
              ['X-KV-TTL', '1.5'])
{
    $r = put_ttl($srv, '/db/bad', 'x', $case);
    is($r->{status}, 400, "X-KV-TTL: '$case->[1]' is 400");
    like($r->{body} // '', $E, '... with a JSON error');
}

$r = put_ttl($srv, '/db/bad?ttl=0', 'x');
is($r->{status}, 400, '?ttl=0 is 400');
$r = put_ttl($srv, '/db/bad?ttl=5', 'x', ['X-KV-TTL', '5']);
is($r->{status}, 400, 'a TTL given as header and argument is 400');
is($srv->get('bad')->{status}, 404, 'no bad TTL wrote anything');

# --- expiry: 404 at once, in every worker

sleep(2.2 - (time - $t0)) if time - $t0 < 2.2;

my %pids;
for (1 .. 40) {
    $r = $srv->get('short');
    $pids{$r->{headers}{'x-pid'} // '?'}{$r->{status}}++;
}
my @statuses = map { keys %{ $pids{$_} } } keys %pids;
is_deeply([sort { $a <=> $b } @statuses], [(404) x @statuses],
          'the expired key is 404 from every worker that answered')
    or diag(explain \%pids);
is(scalar(keys %pids), 2, 'both workers answered') or diag(explain \%pids);

is($srv->req('GET', '/var')->{body}, '[]',
   'kv_var of an expired key is empty');
is($srv->get('renewed')->{body}, 'v2',
   'a key written again without a TTL does not expire');
is($srv->req('DELETE', '/db/short')->{status}, 404,
   'DELETE of an expired key is 404');

my $st = $srv->status;
ok($st->{ttl}{expired_keys} >= 1, 'kv_status counts the expired key')
    or diag(explain $st->{ttl});
is($st->{ttl}{expiring_keys}, 1, 'one key still has a TTL');

# --- fill a few segments so that they get hint files

for my $i (1 .. 120) {
    put_ttl($srv, "/db/fill$i", 'f' x 1000, ['X-KV-TTL', '3600']);
}

ok(wait_until(sub {
       my @h = glob($srv->data_dir . '/*.kvhint');
       return @h >= 1;
   }, 15), 'hint files were written');

sub check_after {
    my ($what) = @_;

    is($srv->get('short')->{status}, 404, "$what: the expired key stays gone");
    my $g = $srv->get('long');
    is($g->{body}, 'lasting', "$what: the long TTL key is there");
    is(expires_of($g), $long_exp, "$what: with the same expiry time");
    is($srv->get('plain')->{body}, 'forever', "$what: the plain key is there");
    ok(defined expires_of($srv->get('fill7')),
       "$what: a key from a hinted segment keeps its expiry");
}

$srv->stop;
$srv->start_ok;
check_after('restart');
like($srv->status->{recovery}{method}, qr/hints/, 'recovery used hints');

$srv->kill9_all;
$srv->start_ok;
check_after('kill -9');

ok($srv->reload, 'reload');
check_after('reload');

is($srv->compact->{status}, 202, 'compaction started');
$st = $srv->wait_compaction_done;
ok($st && $st->{compaction}{runs} >= 1, 'compaction completed');
check_after('compaction');

$srv->stop;
$srv->start_ok;
check_after('compaction and restart');

# --- default_ttl=

my $def = KvTest->new(name => 'ttl-default',
                      zone_extra => 'default_ttl=1s');
$def->start_ok;

$t0 = time;
ok(defined expires_of($def->put('d', 'v')),
   'default_ttl gives a write without a TTL an expiry');
$r = put_ttl($def, '/db/own', 'v', ['X-KV-TTL', '100']);
is($r->{status}, 201, 'a write with its own TTL');
ok(expires_of($def->get('own')) >= int($t0) + 99, 'keeps its own TTL');

sleep(1.3 - (time - $t0)) if time - $t0 < 1.3;
is($def->get('d')->{status}, 404, 'the default TTL ran out');
is($def->get('own')->{status}, 200, 'the own TTL did not');

$def->stop;

# --- keys nobody reads again leave the index too (worker 0's sweep covers
# 1/16 of the index a second)

my $sweep = KvTest->new(name => 'ttl-sweep', workers => 2, endpoints => 1);
$sweep->start_ok;

put_ttl($sweep, "/db/unread$_?ttl=1", 'x') for 1 .. 50;
is($sweep->status->{ttl}{expiring_keys}, 50, '50 keys with a TTL');

my $swept = wait_until(sub {
    my $s = $sweep->status;
    return $s && $s->{keys} == 0 && $s->{ttl}{expired_keys} == 50;
}, 25, 0.5);
ok($swept, 'the sweep dropped all 50 without a read')
    or diag(explain $sweep->status);
ok($sweep->status->{dead_bytes} > 0, 'their records count as dead data');

$sweep->stop;

# --- a kv_zone with a bad default_ttl does not start

for my $t ('0s', '18446744073709551s', '69y') {
    my $bad = KvTest->new(name => 'ttl-bad', zone_extra => "default_ttl=$t");
    my ($rc, $out) = $bad->nginx_t;
    isnt($rc, 0, "default_ttl=$t fails nginx -t");
    like($out, qr/invalid "default_ttl=\Q$t\E"/, 'and says why');
}

$srv->stop;

my ($krc, $dump) = KvTest::kvtool('dump', $srv->data_dir);
is($krc, 0, 'kvtool dump of the stopped store');
like($dump, qr/"key":"long",.*"expires_at_ms":\d+/,
     'kvtool dump shows the expiry time');
unlike($dump, qr/"key":"short"/, 'and not the expired key');

done_testing();
