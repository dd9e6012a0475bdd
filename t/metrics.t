# kv_metrics: the Prometheus text format, checked by Prometheus' own parser
# and linter (promtool check metrics), and the values: requests by method
# and status class summed over both workers, keys, expiries, histograms,
# two zones in one scrape, counters that survive a reload.

use strict;
use warnings;

use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use IPC::Open3;
use Symbol qw(gensym);
use Time::HiRes qw(sleep);
use KvTest qw(http_req);

my $promtool = $ENV{KV_PROMTOOL};
BAIL_OUT('KV_PROMTOOL is not set to a promtool binary (make t sets it)')
    unless $promtool && -x $promtool;

my $srv = KvTest->new(name => 'metrics', workers => 2);
my $other = $srv->data_dir . '-other';

$srv->set(http_extra => "    kv_zone zone=other:1m path=$other;\n",
          server_extra => <<'EOC');
        location /other/ { kv other; }
        location = /metrics { kv_metrics store other; }
EOC
$srv->start_ok;

# promtool check metrics: exit code and what it printed
sub promtool_check {
    my ($text) = @_;
    my $err = gensym;
    my $pid = open3(my $in, my $out, $err, $promtool, 'check', 'metrics');
    print $in $text;
    close $in;
    local $/;
    my $o = <$out> // '';
    my $e = <$err> // '';
    waitpid($pid, 0);
    return ($? >> 8, $o . $e);
}

# the value of one sample, given exactly as name{labels}
sub sample {
    my ($text, $series) = @_;
    for my $line (split /\n/, $text) {
        return $1 if $line =~ /^\Q$series\E (\S+)$/;
    }
    return undef;
}

sub scrape {
    my $r = $srv->req('GET', '/metrics');
    is($r->{status}, 200, 'GET /metrics');
    return $r;
}

my $r = scrape();
is($r->{headers}{'content-type'}, 'text/plain; version=0.0.4; charset=utf-8',
   'the Prometheus text format content type');
my ($rc, $out) = promtool_check($r->{body});
is($rc, 0, 'promtool accepts a fresh store\'s metrics') or diag($out);
is($out, '', 'and has no lint remark') or diag($out);

# --- traffic

my %pids;
for my $i (1 .. 30) {
    my $p = $srv->put("k$i", 'v' x $i);
    $pids{$p->{headers}{'x-pid'} // '?'}++;
}
$srv->get("k$_") for 1 .. 20;
$srv->get('missing') for 1 .. 5;
$srv->req('DELETE', "/db/k$_") for 1 .. 3;
$srv->req('PUT', '/db/k4', 'x', 'application/octet-stream',
          headers => [['If-Match', '"999"']]);
$srv->req('PUT', '/db/short?ttl=1', 'x', 'application/octet-stream');
$srv->req('PUT', '/other/a', 'x', 'application/octet-stream');
$srv->req('PATCH', '/db/k1');
is(scalar(keys %pids), 2, 'both workers took writes');

sleep 1.1;
is($srv->get('short')->{status}, 404, 'the 1 s key expired');

$r = scrape();
($rc, $out) = promtool_check($r->{body});
is($rc, 0, 'promtool accepts the metrics after traffic') or diag($out);
is($out, '', 'and has no lint remark') or diag($out);

my $m = $r->{body};
my $z = 'zone="store"';

is(sample($m, qq{nginx_kv_requests_total{$z,method="PUT",code="2xx"}}), 31,
   'PUTs answered 2xx, from both workers');
is(sample($m, qq{nginx_kv_requests_total{$z,method="PUT",code="4xx"}}), 1,
   'the PUT that failed its If-Match');
is(sample($m, qq{nginx_kv_requests_total{$z,method="GET",code="2xx"}}), 20,
   'GETs answered 200');
is(sample($m, qq{nginx_kv_requests_total{$z,method="GET",code="4xx"}}), 6,
   'GETs answered 404');
is(sample($m, qq{nginx_kv_requests_total{$z,method="DELETE",code="2xx"}}), 3,
   'DELETEs');
is(sample($m, qq{nginx_kv_requests_total{$z,method="other",code="4xx"}}), 1,
   'the PATCH (405)');
is(sample($m, qq{nginx_kv_requests_total{zone="other",method="PUT",code="2xx"}}),
   1, 'the other zone counts its own');

is(sample($m, "nginx_kv_keys{$z}"), 27, 'keys');
is(sample($m, "nginx_kv_expired_keys_total{$z}"), 1, 'expired keys');
is(sample($m, "nginx_kv_puts_total{$z}"), 31, 'puts');
is(sample($m, "nginx_kv_deletes_total{$z}"), 3, 'deletes');
is(sample($m, "nginx_kv_precondition_failures_total{$z}"), 1,
   'precondition failures');
is(sample($m, "nginx_kv_up{$z}"), 1, 'up');
ok(sample($m, "nginx_kv_live_bytes{$z}") > 0, 'live bytes');
ok(sample($m, "nginx_kv_dead_bytes{$z}") > 0, 'dead bytes');
ok(sample($m, "nginx_kv_request_bytes_total{$z}") > 30 * 20,
   'request bytes');
ok(sample($m, "nginx_kv_response_bytes_total{$z}") > 20 * 100,
   'response bytes');
ok(sample($m, qq{nginx_kv_zone_bytes{$z,state="used"}}) > 0,
   'zone memory used');
is(sample($m, qq{nginx_kv_recovery_segments{$z,method="scan"}}), 1,
   'recovery scanned the one segment');

# fsync=always (the default): every acknowledged write waited for a flush
my $acks = sample($m, "nginx_kv_write_ack_duration_seconds_count{$z}");
is($acks, 34, 'every acknowledged write is in the latency histogram');
is(sample($m, qq{nginx_kv_write_ack_duration_seconds_bucket{$z,le="+Inf"}}),
   $acks, 'its +Inf bucket holds them all');
my $fsyncs = sample($m, "nginx_kv_fsyncs_total{$z}");
ok($fsyncs >= 1, 'flushes were counted');
is(sample($m, "nginx_kv_fsync_duration_seconds_count{$z}"), $fsyncs,
   'and each is in the fsync histogram');

# --- a reload keeps the zone and its counters

my $puts_before = sample($m, qq{nginx_kv_requests_total{$z,method="PUT",code="2xx"}});
ok($srv->reload, 'reload');
$m = scrape()->{body};
is(sample($m, qq{nginx_kv_requests_total{$z,method="PUT",code="2xx"}}),
   $puts_before, 'request counters survive a reload');
is(sample($m, "nginx_kv_puts_total{$z}"), 31, 'store counters too');

is($srv->req('POST', '/metrics')->{status}, 405, 'POST /metrics is 405');

$srv->stop;

done_testing();
