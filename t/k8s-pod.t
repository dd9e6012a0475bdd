# The pods of deploy/k8s as far as loopback shows them: a shard runs
# shard.conf as www-data (no "user" directive, a non-root master, as with
# runAsUser: 33), and serves the operators' endpoints on its admin port
# only; a router runs router-run.sh as www-data, which waits until every
# shard name resolves, starts nginx, reloads it when the shard list
# resolves differently, and stops it gracefully on SIGTERM.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use File::Temp qw(tempdir);
use File::Copy qw(copy);
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use KvTest qw(http_req free_port read_file write_file wait_until);
use KvShards ();

plan skip_all => 'needs root to run nginx as www-data' if $> != 0;

my $k8s = abs_path(dirname(__FILE__) . '/../deploy/k8s');
my $user = 'www-data';
my (undef, undef, $uid) = getpwnam($user) or BAIL_OUT("no user $user");

# a directory www-data can reach (the suite's own scratch space is root's)
my $d = tempdir('kv-pod-XXXXXX', DIR => '/tmp', CLEANUP => 1);
chmod 0755, $d;
mkdir "$d/$_" for qw(shard router data);
chown $uid, -1, "$d/$_" for qw(shard router data);
copy($KvTest::Modules, "$d/module.so") or BAIL_OUT("copy the module: $!");

# setpriv execs the command itself: signals reach it, as in a container
my @as_user = ('setpriv', "--reuid=$user", "--regid=$user", '--init-groups');

sub as_user {
    my (@cmd) = @_;
    return system(@as_user, @cmd) == 0;
}

# A deploy/k8s file with its /tmp/ paths in $dir, then KvShards::subst().
sub config {
    my ($file, $dir, @pairs) = @_;
    (my $text = read_file("$k8s/$file")) =~ s{/tmp/}{$dir/}g;
    return KvShards::subst($file, $text, @pairs);
}

# ------------------------------------------------------------- the shard

my ($port, $admin) = (free_port(), free_port());
write_file("$d/shard/nginx.conf", config('shard.conf', "$d/shard",
    qr{load_module \S+;} => "load_module $d/module.so;",
    qr{error_log stderr notice;} => "error_log $d/shard/error.log notice;",
    qr{path=/var/lib/nginx-kv} => "path=$d/data",
    qr{listen 8080;} => "listen 127.0.0.1:$port;",
    qr{listen 8081;} => "listen 127.0.0.1:$admin;"));

my @nginx = ($KvTest::Binary, '-e', "$d/shard/error.log",
             '-c', "$d/shard/nginx.conf");
ok as_user(@nginx), 'the shard starts as www-data';
ok wait_until(sub {
    http_req($port, 'GET', '/readyz')->{status} == 200
}, 10), 'and is ready';

my $master = read_file("$d/shard/nginx.pid") // '';
chomp $master;
my (undef, undef, undef, undef, $owner) = stat "/proc/$master";
is $owner, $uid, 'its master runs as www-data';

is http_req($port, 'PUT', '/db/pod', 'in a pod', 'application/octet-stream')
    ->{status}, 201, 'a write';
is http_req($port, 'GET', '/db/pod')->{body}, 'in a pod', 'reads back';
is((stat "$d/data/0000000001.kvlog")[4], $uid, 'the log is www-data\'s');
is http_req($admin, 'GET', '/kv/status')->{status}, 200,
    '/kv/status on the admin port';
is http_req($port, 'GET', '/kv/status')->{status}, 404,
    'not on the port of the clients and the router';
is http_req($port, 'POST', '/kv/compact', '')->{status}, 404,
    'nor /kv/compact';
like http_req($admin, 'GET', '/metrics')->{body} // '',
    qr/^nginx_kv_keys\{zone="store"\} 1$/m, '/metrics on the admin port';
is http_req($port, 'GET', '/metrics')->{status}, 404,
    'not on the port of the clients';

# ------------------------------------------------------------ the router

my $rport = free_port();
write_file("$d/router/router.conf", config('router.conf', "$d/router",
    qr{listen 8080;} => "listen 127.0.0.1:$rport;",
    qr{access_log /dev/stdout[^;]*;} => 'access_log off;'));
write_file("$d/router/kv-shards.conf",
           "server 127.0.0.1:$port max_fails=0;\n"
           . "server kv-9.invalid:8080 max_fails=0;\n");

my $pid = fork // die "fork: $!";
if ($pid == 0) {
    open STDOUT, '>', "$d/router/out" or die;
    open STDERR, '>&', \*STDOUT;
    $ENV{KV_ROUTER_DIR} = "$d/router";
    $ENV{KV_ROUTER_RESOLVE_INTERVAL} = 1;
    exec @as_user, 'sh', "$k8s/router-run.sh";
    exit 127;
}

sleep 2.5;
like read_file("$d/router/out"), qr/waiting for every shard name/,
    'the router waits while a shard name does not resolve';
is http_req($rport, 'GET', '/healthz', undef, undef, timeout => 1)->{status},
    0, 'and nginx has not started';

write_file("$d/router/kv-shards.conf", "server 127.0.0.1:$port max_fails=0;\n");
ok wait_until(sub {
    http_req($rport, 'GET', '/healthz', undef, undef, timeout => 1)->{status}
        == 200
}, 10), 'once it resolves, nginx starts';
is http_req($rport, 'GET', '/db/pod')->{body}, 'in a pod',
    'and routes to the shard';

my $reloads = () = read_file("$d/router/out") =~ /reconfiguring/g;
write_file("$d/router/kv-shards.conf", "server 127.0.0.1:$port max_fails=0;\n"
           . "server localhost:$port max_fails=0;\n");
ok wait_until(sub {
    my $n = () = read_file("$d/router/out") =~ /reconfiguring/g;
    $n > $reloads;
}, 10), 'a shard list that resolves differently reloads nginx';
like read_file("$d/router/out"), qr/a shard's address changed/,
    'and says so';
my $rmaster = read_file("$d/router/nginx.pid") // '';
chomp $rmaster;
ok $rmaster && kill(0, $rmaster), 'the router\'s nginx runs';

kill 'TERM', $pid;
waitpid $pid, 0;
is $? >> 8, 0, 'SIGTERM: router-run.sh exits 0';
ok !-e "$d/router/nginx.pid" && !kill(0, $rmaster),
    'after stopping nginx gracefully';
like read_file("$d/router/out"), qr/gracefully shutting down/,
    'which finished its requests (QUIT)';

# ------------------------------------------------------- the shard stops

ok as_user(@nginx, '-s', 'quit'), 'nginx -s quit as www-data (preStop)';
ok wait_until(sub { !-e "$d/shard/nginx.pid" }, 15), 'stops the shard';

done_testing;
