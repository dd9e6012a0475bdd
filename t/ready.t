# /readyz turns 503 (JSON error) when the store's directory is not
# writable, and 200 again when it is; /healthz stays 200 throughout.
#
# Tests run as root, which bypasses permission bits (chmod 0500 would not
# stop it), so the directory is made immutable with chattr +i: then not even
# root can create files in it.  If chattr is unavailable (no ext2/3/4, xfs
# or btrfs underneath, or no CAP_LINUX_IMMUTABLE), the 503 checks are
# reported as skipped, not passed.

use strict;
use warnings;

use Test::More;
use KvTest;

my $E = qr/^\{\s*"error"\s*:\s*"(?:[^"\\]|\\.)+"\s*\}\s*$/s;

my $srv = KvTest->new(name => 'ready', workers => 2);
$srv->start_ok or BAIL_OUT("cannot start nginx");

my $r = $srv->req(GET => '/readyz');
is $r->{status}, 200, 'readyz 200 while the store is open';
like $r->{body}, qr/"status"\s*:\s*"ready"/, 'readyz body says ready';

is $srv->put('k', 'v')->{status}, 201, 'a write succeeds';

SKIP: {
    skip 'chattr +i not supported on this filesystem or without CAP_LINUX_IMMUTABLE', 7
        unless KvTest::make_immutable($srv->data_dir);

    # readiness may be computed per request or cached for a short time:
    # poll for a bounded time
    my $last;
    KvTest::wait_until(sub {
        $last = $srv->req(GET => '/readyz');
        $last->{status} == 503;
    }, 5);
    is $last->{status}, 503, 'readyz 503 when the data directory is not writable';
    is $last->{headers}{'content-type'}, 'application/json', '503 is JSON';
    like $last->{body}, $E, '503 body is {"error": ...}';

    $r = $srv->req(GET => '/healthz');
    is $r->{status}, 200, 'healthz still 200 (liveness is not readiness)';

    # the data is still readable
    $r = $srv->get('k');
    is $r->{status} . ':' . ($r->{body} // ''), '200:v', 'reads still work';

    KvTest::make_mutable($srv->data_dir);
    KvTest::wait_until(sub {
        $last = $srv->req(GET => '/readyz');
        $last->{status} == 200;
    }, 5);
    is $last->{status}, 200, 'readyz back to 200 once writable again';
    is $srv->put('k2', 'v2')->{status}, 201, 'writes work afterwards';
}

ok $srv->stop, 'graceful stop';
done_testing;
