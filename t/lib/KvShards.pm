package KvShards;

# Shards and a router for the scale-out suites (t/shards.t, t/reshard.t),
# started from the configurations of deploy/k8s themselves, with the
# pod's paths and ports replaced by the test's:
#
#   my $s = ShardSrv->new(name => 'shard0')->set(admin_port => free_port());
#   my $r = RouterSrv->new(name => 'router')->set(shards => ['127.0.0.1:P',
#                                                 '127.0.0.1:Q weight=2']);
#   $s->start_ok;  $r->reload;   (KvTest's methods)
#   my ($status, $body) = request(client($r->port), 'GET', '/db/' . enc($k));
#   my ($where, $wrong) = placement(servers(@shards), @shards);

use strict;
use warnings;

use Exporter 'import';
use IO::Socket::INET;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use KvTest ();

our @EXPORT_OK = qw(enc dec client request placement servers);

my $K8S = abs_path(dirname(__FILE__) . '/../../deploy/k8s');

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
    $text = KvShards::subst('shard.conf', $text,
        qr{load_module modules/ngx_http_kv_module\.so;} =>
            "load_module $KvTest::Modules;",
        qr{path=/var/lib/nginx-kv} => "path=$self->{data_dir}",
        qr{listen 8080;} => "listen 127.0.0.1:$self->{port};",
        qr{listen 8081;} => "listen 127.0.0.1:$self->{admin_port};");
    return KvShards::local_paths($self, 'shard.conf', $text);
}

sub name { "127.0.0.1:$_[0]{port}" }

package RouterSrv;
our @ISA = ('KvTest');

sub conf_text {
    my ($self) = @_;
    my $text = KvTest::read_file("$K8S/router.conf");
    $text = KvShards::subst('router.conf', $text,
        qr{listen 8080;} => "listen 127.0.0.1:$self->{port};",
        qr{access_log /dev/stdout[^;]*;} => 'access_log off;');
    my $list = join '', map { "server $_ max_fails=0;\n" } @{ $self->{shards} };
    KvTest::write_file("$self->{root}/conf/kv-shards.conf", $list);
    return KvShards::local_paths($self, 'router.conf', $text);
}

package KvShards;

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

# One keep-alive connection; request() returns the status and the body, or
# (0, error) and reconnects next time.  A kept connection that the server
# closed meanwhile (a reload closes idle ones) is retried once on a new
# one, as HTTP clients do.
sub client { { port => $_[0], sock => undef } }

sub request {
    my ($c, $method, $path, $body) = @_;
    my $kept = defined $c->{sock};
    my ($status, $resp) = request_once($c, $method, $path, $body);
    return $status || !$kept ? ($status, $resp)
                             : request_once($c, $method, $path, $body);
}

sub request_once {
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

# The --servers list of shard objects (their names as the router has them).
sub servers { join ',', map { $_->name } @_ }

1;
