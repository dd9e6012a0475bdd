# Scale-out on loopback with the configurations of deploy/k8s: three shard
# nginx (shard.conf, each its own zone and data directory) behind a router
# nginx (router.conf: plain nginx, "hash $kv_key consistent").
#
#   - 10,000 keys written through the router by concurrent clients while
#     one shard is killed (-9) and restarted: every acknowledged write is
#     on exactly one shard and reads back through the router;
#   - kvtool owner names, for every key, the shard that nginx chose;
#   - a fourth shard: kvtool reshard moves exactly the keys whose owner
#     changed, about a quarter, and every key still reads back;
#   - a shard removed: its keys move to the others.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use KvTest qw(read_file write_file wait_until none_ok free_port);

my $K8S = abs_path(dirname(__FILE__) . '/../deploy/k8s');
my $KEYS = $ENV{KV_SHARDS_KEYS} || 10_000;
my $WRITERS = 8;

# --------------------------------------------------------- configurations

# Substitutes in the text of a deploy/k8s file; each pattern must match
# exactly once, so that a changed file fails here rather than go untested.
sub subst {
    my ($file, $text, @pairs) = @_;
    while (my ($re, $to) = splice @pairs, 0, 2) {
        my $n = () = $text =~ /$re/g;
        die "$file: $re matches $n times, not once\n" unless $n == 1;
        $text =~ s/$re/$to/;
    }
    return $text;
}

# The main-context lines every test nginx needs instead of the pod's.
sub local_paths {
    my ($self, $file, $text) = @_;
    my $root = $self->root;
    my $user = $> == 0 ? "user root;\n" : '';
    $text = subst($file, $text,
        qr{pid /tmp/nginx\.pid;} => "${user}pid $root/logs/nginx.pid;",
        qr{error_log stderr notice;} => "error_log $root/logs/error.log info;",
        qr{location = /healthz \{} =>
            "location = /__ver { return 200 \"gen-$self->{generation}\"; }\n"
            . "        location = /healthz {");
    $text =~ s{(_temp_path) /tmp/}{$1 $root/}g;
    return $text;
}

package ShardSrv;
our @ISA = ('KvTest');

sub conf_text {
    my ($self) = @_;
    my $text = KvTest::read_file("$K8S/shard.conf");
    $text = main::subst('shard.conf', $text,
        qr{load_module modules/ngx_http_kv_module\.so;} =>
            "load_module $KvTest::Modules;",
        qr{path=/var/lib/nginx-kv} => "path=$self->{data_dir}",
        qr{listen 8080;} => "listen 127.0.0.1:$self->{port};",
        qr{listen 8081;} => "listen 127.0.0.1:$self->{admin_port};");
    return main::local_paths($self, 'shard.conf', $text);
}

sub name { "127.0.0.1:$_[0]{port}" }

package RouterSrv;
our @ISA = ('KvTest');

sub conf_text {
    my ($self) = @_;
    my $text = KvTest::read_file("$K8S/router.conf");
    $text = main::subst('router.conf', $text,
        qr{listen 8080;} => "listen 127.0.0.1:$self->{port};",
        qr{access_log /dev/stdout[^;]*;} => 'access_log off;');
    my $list = join '', map { "server $_ max_fails=0;\n" } @{ $self->{shards} };
    KvTest::write_file("$self->{root}/conf/kv-shards.conf", $list);
    return main::local_paths($self, 'router.conf', $text);
}

package main;

my @shards = map {
    ShardSrv->new(name => "shard$_")->set(admin_port => free_port())
} 0 .. 3;
my @live = @shards[0 .. 2];

for my $s (@live) {
    $s->start_ok("shard " . $s->name . " started from deploy/k8s/shard.conf")
        or BAIL_OUT('cannot start a shard');
}

my $router = RouterSrv->new(name => 'router')
    ->set(shards => [map { $_->name } @live]);
$router->start_ok('router started from deploy/k8s/router.conf')
    or BAIL_OUT('cannot start the router');

# ------------------------------------------------------------- the client

# The path of a key: every byte but "/" and unreserved ones
# percent-encoded (kvtool encodes "/" too: the same key).
sub enc {
    my ($key) = @_;
    (my $e = $key) =~ s/([^A-Za-z0-9\-._~\/])/sprintf('%%%02X', ord $1)/ge;
    return $e;
}

sub dec {
    my ($e) = @_;
    $e =~ s/%([0-9A-F]{2})/chr hex $1/ge;
    return $e;
}

# Keys of several shapes: paths, spaces, UTF-8, a "?" and a "%".
sub key_of {
    my ($i) = @_;
    my @shape = ("user/$i", "k $i", "cl\xc3\xa9/$i", "q?$i", "p%$i",
                 "n$i", "a//b/$i");
    return $shape[$i % @shape];
}

sub value_of { "value of key $_[0] at write $_[1]" }

# One keep-alive connection; request() returns the status and the body, or
# (0, error) and reconnects next time.
sub client { { port => $_[0], sock => undef } }

sub request {
    my ($c, $method, $path, $body) = @_;
    my $sock = $c->{sock} ||= IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $c->{port}, Proto => 'tcp',
        Timeout => 10);
    return (0, "connect: $!") unless $sock;
    my $req = "$method $path HTTP/1.1\r\nHost: kv\r\n";
    $req .= "Content-Type: application/octet-stream\r\n"
        . "Content-Length: " . length($body) . "\r\n" if defined $body;
    $req .= "\r\n" . ($body // '');
    my ($head, $buf) = ('', '');
    local $SIG{ALRM} = sub { die "timeout\n" };
    my ($status, $resp) = eval {
        alarm 15;
        $sock->syswrite($req) == length $req or die "write: $!\n";
        while ($buf !~ /\r\n\r\n/) {
            $sock->sysread($buf, 65536, length $buf) or die "closed\n";
        }
        ($head, $buf) = split /\r\n\r\n/, $buf, 2;
        my ($st) = $head =~ m{^HTTP/1\.1 (\d+)} or die "bad answer\n";
        my ($len) = $head =~ /\r\ncontent-length: *(\d+)/i;
        $len //= 0;
        while (length $buf < $len) {
            $sock->sysread($buf, 65536, length $buf) or die "closed\n";
        }
        alarm 0;
        ($st, substr $buf, 0, $len);
    };
    alarm 0;
    if (!defined $status || $head =~ /\r\nconnection: *close/i) {
        close $sock;
        $c->{sock} = undef;
    }
    return defined $status ? ($status, $resp) : (0, $@);
}

# ------------------------------------------- 10,000 writes and a restart

my $jdir = KvTest::tmp_root() . '/shard-journals';
mkdir $jdir;

# Writer $w writes keys $w, $w + $WRITERS, ... through the router and
# journals "A<TAB>i" for each acknowledged write and "E<TAB>i<TAB>status"
# for each failed try; a failed write is retried for up to 30 s.
sub writer {
    my ($w) = @_;
    open my $j, '>', "$jdir/w$w" or die "$jdir/w$w: $!";
    $j->autoflush(1);
    my $c = client($router->port);
    for (my $i = $w; $i < $KEYS; $i += $WRITERS) {
        my $key = key_of($i);
        my $deadline = time + 30;
        while (1) {
            my ($st, $err) = request($c, 'PUT', '/db/' . enc($key),
                                     value_of($key, $i));
            if ($st >= 200 && $st < 300) {
                print $j "A\t$i\n";
                last;
            }
            print $j "E\t$i\t$st\n";
            last if time > $deadline;
            sleep 0.05;
        }
    }
    close $j;
    POSIX::_exit(0);
}

my $t0 = time;
my @pids;
for my $w (0 .. $WRITERS - 1) {
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    writer($w) if $pid == 0;
    push @pids, $pid;
}

sub journal {
    my (%ack, %err);
    for my $f (glob "$jdir/w*") {
        open my $fh, '<', $f or next;
        while (<$fh>) {
            chomp;
            my ($t, $i) = split /\t/;
            $t eq 'A' ? $ack{$i}++ : $err{$i}++;
        }
    }
    return (\%ack, \%err);
}

# the restart, once a third of the keys are in
ok wait_until(sub { keys %{ (journal())[0] } > $KEYS / 3 }, 120),
    'a third of the writes acknowledged';
my $victim = $live[1];
ok $victim->kill9_all, 'shard ' . $victim->name . ' killed (-9) mid-writes';
sleep 0.5;
$victim->start_ok('and restarted');

for my $pid (@pids) {
    waitpid $pid, 0;
}
my ($ack, $err) = journal();
my $secs = time - $t0;
is scalar(keys %$ack), $KEYS, "every write acknowledged in the end ($KEYS)";
cmp_ok scalar(keys %$err), '>', 0, 'writes failed while the shard was down ('
    . scalar(keys %$err) . ' keys retried)';
note sprintf "%d writes through the router in %.1f s", $KEYS, $secs;

# ------------------------------------------------- where every key went

# kvtool owner on each shard's data directory: { key => [shards] }, and
# the lines whose computed owner is not the shard that holds the key.
sub placement {
    my ($servers, @on) = @_;
    my (%where, @wrong);
    for my $s (@on) {
        my ($rc, $out) = KvTest::kvtool('owner', "--servers=$servers",
                                        $s->data_dir);
        if ($rc != 0) {
            push @wrong, "kvtool owner " . $s->name . " exited $rc: $out";
            next;
        }
        for my $line (split /\n/, $out) {
            my ($owner, $key) = split /\t/, $line;
            $key = dec($key);
            push @{ $where{$key} }, $s->name;
            push @wrong, "key \"$key\" is on " . $s->name . ", kvtool says "
                . $owner if $owner ne $s->name;
        }
    }
    return (\%where, \@wrong);
}

sub servers { join ',', map { $_->name } @_ }

# Every acknowledged key on exactly one shard and read back through the
# router; keys that no write created may not exist.
sub check_all {
    my ($what, $where) = @_;
    my @bad;
    my $c = client($router->port);
    for my $i (0 .. $KEYS - 1) {
        my $key = key_of($i);
        my $on = $where->{$key} || [];
        push @bad, "key \"$key\" is on " . @$on . " shards (@$on)" if @$on != 1;
        my ($st, $body) = request($c, 'GET', '/db/' . enc($key));
        push @bad, "GET \"$key\" through the router: $st"
            if $st != 200 || $body ne value_of($key, $i);
    }
    push @bad, scalar(keys %$where) . " keys on the shards, not $KEYS"
        if keys %$where != $KEYS;
    none_ok \@bad, "$what: every key on exactly one shard and read back "
        . "through the router";
}

my ($where, $wrong) = placement(servers(@live), @live);
none_ok $wrong, 'kvtool owner names the shard nginx chose, for every key';
check_all('after the restart', $where);

for my $s (@live) {
    note sprintf "%s holds %d keys", $s->name,
        scalar grep { $_->[0] eq $s->name } values %$where;
}

# keys that $uri would route under another name are refused
for my $p ('/db/a/../b', '/db/a/./b', '/db/a/..', '/db/x%2F..%2Fy',
           '/db/a/%2e%2E')
{
    my ($st, $body) = request(client($router->port), 'PUT', $p, 'v');
    is $st, 400, "the router refuses $p";
}
my ($st) = request(client($router->port), 'GET', '/db/a..b/.c');
is $st, 404, 'dots that are no path segment pass (a..b/.c: 404, no such key)';

# ------------------------------------------------------ a fourth shard

sub reshard_ok {
    my ($servers, $s, $what) = @_;
    my ($rc, $out) = KvTest::kvtool('reshard', "--servers=$servers",
                                    '--self=' . $s->name, $s->data_dir);
    is $rc, 0, "$what: kvtool reshard on " . $s->name . " exits 0"
        or diag $out;
    my ($moved) = $out =~ /moved (\d+)/;
    note $out;
    return $moved // 0;
}

$shards[3]->start_ok('a fourth shard started');
my @four = @shards[0 .. 3];
$router->{shards} = [map { $_->name } @four];

# what must move: the keys whose owner among four shards is another one
my %moving;
for my $s (@live) {
    my ($rc, $out) = KvTest::kvtool('owner', '--servers=' . servers(@four),
                                    $s->data_dir);
    for my $line (split /\n/, $out) {
        my ($owner, $key) = split /\t/, $line;
        $moving{dec($key)} = $owner if $owner ne $s->name;
    }
}
my @elsewhere = grep { $moving{$_} ne $shards[3]->name } keys %moving;
none_ok \@elsewhere, 'a new shard takes keys from the others, and only it '
    . 'gains keys';

ok $router->reload, 'router reloaded with four shards';

my $moved = 0;
$moved += reshard_ok(servers(@four), $_, 'four shards') for @live;
is $moved, scalar(keys %moving), 'kvtool reshard moved exactly the keys '
    . 'whose owner changed (' . scalar(keys %moving) . ')';

($where, $wrong) = placement(servers(@four), @four);
none_ok $wrong, 'after the move, every key is on the shard kvtool and nginx '
    . 'name';
my @misplaced = grep {
    ($where->{$_}[0] // '') ne $shards[3]->name
} keys %moving;
none_ok \@misplaced, 'the keys that moved are on the new shard';
check_all('four shards', $where);

my $fraction = $moved / $KEYS;
diag sprintf "adding a 4th shard moved %d of %d keys: %.3f (ideal 0.25)",
    $moved, $KEYS, $fraction;
cmp_ok $fraction, '>', 0.15, 'about a quarter moved (more than 0.15)';
cmp_ok $fraction, '<', 0.35, 'about a quarter moved (less than 0.35)';

# ------------------------------------------------------ a shard removed

my $gone = $shards[1];
my @three = grep { $_ != $gone } @four;
$router->{shards} = [map { $_->name } @three];
ok $router->reload, 'router reloaded without ' . $gone->name;
my $held = grep { $where->{$_}[0] eq $gone->name } keys %$where;
$moved = reshard_ok(servers(@three), $gone, 'shard removed');
is $moved, $held, "every key of the removed shard moved ($held)";

($where, $wrong) = placement(servers(@three), @four);
none_ok $wrong, 'after the removal, every key is on the shard kvtool and '
    . 'nginx name';
check_all('shard removed', $where);
diag sprintf "removing a shard of four moved %d of %d keys: %.3f",
    $moved, $KEYS, $moved / $KEYS;

# a dry run moves nothing and says so
my ($rc, $out) = KvTest::kvtool('reshard', '--servers=' . servers(@three),
                                '--self=' . $shards[0]->name, '--dry-run',
                                $shards[0]->data_dir);
like $out, qr/, 0 owned by other servers/, 'a dry run after the move: '
    . 'nothing left to move';

ok $_->stop, 'stopped ' . ($_->can('name') ? $_->name : 'router')
    for $router, @four;

done_testing;
