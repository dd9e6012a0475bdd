package KvTest;

# Helper for the plain-Perl lifecycle suites (restart, kill -9, torn tail,
# reload, nginx -t, second instance ...).  Unlike Test::Nginx::Socket, these
# suites need nginx processes whose data directory outlives one server root,
# several nginx instances at once, signals to single workers, and reloads.
#
#   my $srv = KvTest->new(name => 'restart', workers => 2);
#   $srv->start_ok;                      # writes conf, starts, waits for port
#   my $r = $srv->req(PUT => '/db/k', 'v', 'application/octet-stream');
#   $r->{status}, $r->{headers}{'content-type'}, $r->{body}
#   $srv->stop;  $srv->kill9_all;  $srv->reload;  $srv->nginx_t;
#
#   my $s = KvTest->new(name => 'st', zone_extra => 'segment_size=64k',
#                       endpoints => 1);   # + /kv/status and /kv/compact
#   $s->status->{keys};  $s->compact->{status};
#   my ($rc, $out) = KvTest::kvtool('check', $s->data_dir);
#
# Environment (see target `t` in the Makefile):
#   TEST_NGINX_BINARY        nginx binary (default: nginx)
#   TEST_NGINX_LOAD_MODULES  absolute path(s) of the module .so
#   KV_TEST_TMP              scratch directory for this run (else a tempdir)
#
# Every nginx this module starts is killed in an END block if still running,
# so an aborted suite leaves no stray processes.

use strict;
use warnings;

use Exporter 'import';
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use File::Path qw(make_path remove_tree);
use File::Temp qw(tempdir);
use Time::HiRes qw(time sleep);
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use JSON::PP ();
use Test::More ();

our @EXPORT_OK = qw(http_req free_port tmp_root read_file write_file
                    wait_until frames_of slurp_log http_pipelined
                    segment_ids dir_bytes none_ok);

our $Binary  = $ENV{TEST_NGINX_BINARY} || 'nginx';
our $Modules = $ENV{TEST_NGINX_LOAD_MODULES} || '';

my $TmpRoot;
sub tmp_root {
    return $TmpRoot if defined $TmpRoot;
    my $base = $ENV{KV_TEST_TMP};
    if (defined $base && length $base) {
        make_path($base) unless -d $base;
        $TmpRoot = tempdir("kvt-XXXXXX", DIR => $base, CLEANUP => 0);
    } else {
        $TmpRoot = tempdir("kvt-XXXXXX", TMPDIR => 1, CLEANUP => 1);
    }
    return $TmpRoot;
}

our @Instances;          # every KvTest object, for END cleanup
our @Immutable;          # directories made immutable, for END cleanup
my $Seq = 0;

# A free TCP port on 127.0.0.1 (bind to port 0, read it back, close).
my %UsedPorts;
sub free_port {
    for (1 .. 50) {
        my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                      LocalPort => 0, Proto => 'tcp',
                                      ReuseAddr => 0)
            or die "cannot bind: $!";
        my $port = $s->sockport;
        close $s;
        next if $UsedPorts{$port}++;
        return $port;
    }
    die "no free port found";
}

sub read_file {
    my ($path) = @_;
    open my $fh, '<:raw', $path or return undef;
    local $/;
    my $d = <$fh>;
    close $fh;
    return defined $d ? $d : '';
}

sub write_file {
    my ($path, $data) = @_;
    open my $fh, '>:raw', $path or die "open $path: $!";
    print $fh $data;
    close $fh or die "close $path: $!";
}

# none_ok(\@problems, $msg): passes if the list is empty, else shows the
# first ten.
sub none_ok {
    my ($list, $msg) = @_;
    my $last = $#$list < 9 ? $#$list : 9;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    return Test::More::is(scalar(@$list), 0, $msg)
        || Test::More::diag(join "\n", @$list[0 .. $last]);
}

# Polls $cond every $step seconds until it returns true or $timeout passes.
# Returns the condition's last value.
sub wait_until {
    my ($cond, $timeout, $step) = @_;
    $timeout ||= 10;
    $step    ||= 0.02;
    my $deadline = time + $timeout;
    while (1) {
        my $v = $cond->();
        return $v if $v;
        return $v if time > $deadline;
        sleep $step;
    }
}

# Splits a kvlog into frames: u32 LE payload length, u64 LE checksum, payload.
# Returns (list of [offset, frame_length], end offset of the last whole frame).
sub frames_of {
    my ($data) = @_;
    my @frames;
    my $pos = 0;
    my $size = length $data;
    while ($pos + 12 <= $size) {
        my $len = unpack 'V', substr($data, $pos, 4);
        # a zero length: the zeros fsync=always preallocates ahead
        last if $len == 0 || $pos + 12 + $len > $size;
        push @frames, [$pos, 12 + $len];
        $pos += 12 + $len;
    }
    return (\@frames, $pos);
}

# Segment ids present in a data directory, ascending.
sub segment_ids {
    my ($dir) = @_;
    opendir my $dh, $dir or return ();
    my @ids = sort { $a <=> $b } map { /^(\d{10})\.kvlog$/ ? $1 + 0 : () }
              readdir $dh;
    closedir $dh;
    return @ids;
}

# Total size of the files in $dir whose names match $re (default: all).
sub dir_bytes {
    my ($dir, $re) = @_;
    opendir my $dh, $dir or return 0;
    my $n = 0;
    for my $f (readdir $dh) {
        next if $f eq '.' || $f eq '..';
        next if $re && $f !~ $re;
        $n += -s "$dir/$f" || 0;
    }
    closedir $dh;
    return $n;
}

# build/kvtool of this checkout (KV_TOOL overrides).
sub kvtool_path {
    return $ENV{KV_TOOL} if $ENV{KV_TOOL};
    return abs_path(dirname(__FILE__) . '/../..') . '/build/kvtool';
}

# Runs kvtool with @args; returns (exit code, stdout and stderr).
sub kvtool {
    my (@args) = @_;
    my $tool = kvtool_path();
    return (127, "$tool does not exist (run make)") unless -x $tool;
    my ($rc, $out) = _run_capture($tool, @args);
    return ($rc, $out);
}

# ---------------------------------------------------------------- HTTP

# http_req($port, $method, $path, $body, $content_type, %opt)
# opt: headers => [[name, value], ...], timeout => s, raw => full request
# Returns { status, headers => {lc name => value}, body, error }.
# status 0 means no (complete) response; error says why.
sub http_req {
    my ($port, $method, $path, $body, $ctype, %opt) = @_;
    my $timeout = $opt{timeout} || 10;
    my $res = { status => 0, headers => {}, body => undef, error => undef };

    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                     Proto => 'tcp', Timeout => $timeout);
    if (!$sock) {
        $res->{error} = "connect: $!";
        return $res;
    }
    binmode $sock;

    my $req;
    if (defined $opt{raw}) {
        $req = $opt{raw};
    } else {
        $req = "$method $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
        $req .= "Content-Type: $ctype\r\n" if defined $ctype;
        for my $h (@{ $opt{headers} || [] }) {
            $req .= "$h->[0]: $h->[1]\r\n";
        }
        $req .= "Content-Length: " . length($body) . "\r\n" if defined $body;
        $req .= "\r\n";
        $req .= $body if defined $body;
    }

    my $deadline = time + $timeout;
    my $off = 0;
    my $vec = '';
    vec($vec, fileno($sock), 1) = 1;
    while ($off < length $req) {
        my $left = $deadline - time;
        if ($left <= 0) { $res->{error} = 'timeout writing'; return $res; }
        my $w = $vec;
        my $n = select(undef, $w, undef, $left);
        next if $n <= 0;
        my $wrote = syswrite($sock, $req, 1 << 20, $off);
        if (!defined $wrote) {
            # the server may answer early (e.g. 413) and close: read what it said
            last;
        }
        $off += $wrote;
    }

    my $raw = '';
    while (1) {
        my $left = $deadline - time;
        if ($left <= 0) { $res->{error} = 'timeout reading'; last; }
        my $r = $vec;
        my $n = select($r, undef, undef, $left);
        next if $n <= 0;
        my $got = sysread($sock, $raw, 1 << 20, length $raw);
        if (!defined $got) { $res->{error} ||= "read: $!"; last; }
        last if $got == 0;
    }
    close $sock;
    $res->{raw} = $raw;

    my $hend = index $raw, "\r\n\r\n";
    if ($hend < 0) {
        $res->{error} ||= 'no complete header';
        return $res;
    }
    my $head = substr $raw, 0, $hend;
    my $rest = substr $raw, $hend + 4;
    my @lines = split /\r\n/, $head;
    my $status_line = shift @lines;
    if ($status_line !~ m{^HTTP/1\.[01] (\d{3})}) {
        $res->{error} = "bad status line: $status_line";
        return $res;
    }
    my $status = $1;
    my %h;
    for my $l (@lines) {
        my ($k, $v) = split /:\s*/, $l, 2;
        $k = lc $k;
        $h{$k} = exists $h{$k} ? "$h{$k}, $v" : $v;
    }
    $res->{headers} = \%h;

    if ($method eq 'HEAD' || $status == 204 || $status == 304) {
        $res->{body} = $rest;
    } elsif (($h{'transfer-encoding'} || '') =~ /chunked/i) {
        my $body = '';
        my $ok = 0;
        while ($rest =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
            my $n = hex $1;
            if ($n == 0) { $ok = 1; last; }
            last if length($rest) < $n + 2;
            $body .= substr $rest, 0, $n;
            substr($rest, 0, $n + 2) = '';
        }
        if (!$ok) { $res->{error} ||= 'truncated chunked body'; return $res; }
        $res->{body} = $body;
    } elsif (defined $h{'content-length'}) {
        if (length($rest) < $h{'content-length'}) {
            $res->{error} ||= "truncated body: " . length($rest)
                . " of $h{'content-length'}";
            return $res;
        }
        $res->{body} = substr $rest, 0, $h{'content-length'};
    } else {
        $res->{body} = $rest;
    }
    $res->{status} = $status;
    $res->{error} = undef;
    return $res;
}

# http_pipelined($port, [$method, $path, $body, $ctype], ...)
# Sends every request in one write on one connection (the last one with
# Connection: close) and returns one { status, headers, body } per request
# (status 0 for a response that did not arrive).
sub http_pipelined {
    my ($port, @reqs) = @_;
    my $raw = '';
    for my $i (0 .. $#reqs) {
        my ($method, $path, $body, $ctype) = @{ $reqs[$i] };
        $raw .= "$method $path HTTP/1.1\r\nHost: localhost\r\n";
        $raw .= "Connection: close\r\n" if $i == $#reqs;
        $raw .= "Content-Type: $ctype\r\n" if defined $ctype;
        $raw .= "Content-Length: " . length($body) . "\r\n" if defined $body;
        $raw .= "\r\n";
        $raw .= $body if defined $body;
    }
    my $all = http_req($port, 'PIPELINED', undef, undef, undef,
                       raw => $raw);
    my $rest = defined $all->{raw} ? $all->{raw} : '';
    my @res;
    for my $i (0 .. $#reqs) {
        my $res = { status => 0, headers => {}, body => undef };
        push @res, $res;
        my $hend = index $rest, "\r\n\r\n";
        last if $hend < 0;
        my @lines = split /\r\n/, substr($rest, 0, $hend);
        substr($rest, 0, $hend + 4) = '';
        my $sl = shift @lines;
        last unless $sl =~ m{^HTTP/1\.[01] (\d{3})};
        my $status = $1;
        for my $l (@lines) {
            my ($k, $v) = split /:\s*/, $l, 2;
            $res->{headers}{lc $k} = $v;
        }
        my $len = $res->{headers}{'content-length'};
        last unless defined $len && length($rest) >= $len;
        $res->{body} = substr $rest, 0, $len;
        substr($rest, 0, $len) = '';
        $res->{status} = $status;
    }
    return @res;
}

# ---------------------------------------------------------------- nginx

# KvTest->new(%opt)
#   name        label used in paths
#   data_dir    kv data directory (default: <tmp>/data-<name>-<n>, not created)
#   workers     worker_processes (default 1)
#   zone_size   kv_zone size (default 1m)
#   zone_name   (default store)
#   max_key, max_value   optional kv_zone parameters
#   http_extra  text added inside http {}
#   server_extra text added inside server {}
#   reuseport   add reuseport to listen (spreads connections over workers)
#   listen_extra more listen parameters ("sndbuf=32k")
#   zone_extra  more kv_zone parameters ("segment_size=64k fsync=off")
#   endpoints   add location = /kv/status and = /kv/compact for the zone
#   env         { NAME => value } more environment for nginx (LD_PRELOAD)
#   connections worker_connections (default 256)
sub new {
    my ($class, %o) = @_;
    my $n = ++$Seq;
    my $name = $o{name} || 'kv';
    my $root = tmp_root() . "/srv-$name-$n";
    my $self = bless {
        name       => $name,
        root       => $root,
        data_dir   => $o{data_dir} || tmp_root() . "/data-$name-$n",
        workers    => $o{workers} || 1,
        zone_size  => $o{zone_size} || '1m',
        zone_name  => $o{zone_name} || 'store',
        max_key    => $o{max_key},
        max_value  => $o{max_value},
        http_extra => $o{http_extra} || '',
        server_extra => $o{server_extra} || '',
        reuseport  => $o{reuseport},
        listen_extra => $o{listen_extra},
        zone_extra => $o{zone_extra},
        endpoints  => $o{endpoints},
        env        => $o{env} || {},
        connections => $o{connections} || 256,
        port       => $o{port} || free_port(),
        generation => 0,
    }, $class;
    make_path("$root/logs", "$root/conf", "$root/html");
    push @Instances, $self;
    return $self;
}

sub port     { $_[0]{port} }
sub root     { $_[0]{root} }
sub data_dir { $_[0]{data_dir} }
sub conf_file { "$_[0]{root}/conf/nginx.conf" }
sub error_log { "$_[0]{root}/logs/error.log" }
sub pid_file  { "$_[0]{root}/logs/nginx.pid" }

sub set {
    my ($self, %o) = @_;
    @$self{keys %o} = values %o;
    return $self;
}

sub conf_text {
    my ($self) = @_;
    my $root = $self->{root};
    my $load = join "\n", map { "load_module $_;" } grep { length } split /\s+/, $Modules;
    my $zone = "kv_zone zone=$self->{zone_name}:$self->{zone_size} path=$self->{data_dir}";
    $zone .= " max_key=$self->{max_key}" if defined $self->{max_key};
    $zone .= " max_value=$self->{max_value}" if defined $self->{max_value};
    $zone .= " $self->{zone_extra}" if defined $self->{zone_extra};
    my $endpoints = $self->{endpoints}
        ? "location = /kv/status { kv_status $self->{zone_name}; }\n"
          . "        location = /kv/compact { kv_compact $self->{zone_name}; }"
        : '';
    my $gen = $self->{generation};
    my $listen = "127.0.0.1:$self->{port}" . ($self->{reuseport} ? ' reuseport' : '')
                 . ($self->{listen_extra} ? " $self->{listen_extra}" : '');
    my $user = $> == 0 ? "user root;" : "";
    return <<"EOC";
$load
$user
worker_processes $self->{workers};
worker_rlimit_nofile @{[ 2 * $self->{connections} + 64 ]};
daemon on;
master_process on;
error_log $root/logs/error.log info;
pid $root/logs/nginx.pid;
events {
    worker_connections $self->{connections};
    accept_mutex off;
}
http {
    access_log off;
    client_body_temp_path $root/client_body_temp;
    proxy_temp_path $root/proxy_temp;
    fastcgi_temp_path $root/fastcgi_temp;
    uwsgi_temp_path $root/uwsgi_temp;
    scgi_temp_path $root/scgi_temp;
    default_type text/plain;
    $zone;
$self->{http_extra}
    server {
        listen $listen;
        server_name localhost;
        add_header X-Pid \$pid always;
        location /db/ { kv $self->{zone_name}; }
        location = /healthz { kv_health; }
        location = /readyz { kv_ready $self->{zone_name}; }
        location = /__ver { return 200 "gen-$gen"; }
        $endpoints
$self->{server_extra}
    }
}
EOC
}

sub write_conf {
    my ($self) = @_;
    $self->{generation}++;
    write_file($self->conf_file, $self->conf_text);
}

sub _run_capture {
    my (@cmd) = @_;
    my $pid = open(my $fh, '-|');
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        open STDERR, '>&', \*STDOUT;
        exec @cmd or POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh>;
    close $fh;
    return ($? >> 8, defined $out ? $out : '', $?);
}

sub master_pid {
    my ($self) = @_;
    my $p = read_file($self->pid_file);
    return undef unless defined $p && $p =~ /(\d+)/;
    return $1;
}

sub alive {
    my ($pid) = @_;
    return 0 unless $pid;
    return 0 unless kill 0, $pid;
    # a zombie still answers kill 0
    my $stat = read_file("/proc/$pid/stat");
    return 0 unless defined $stat;
    return 1 unless $stat =~ /^\d+ \(.*\) Z /s;
    # a killed process's leader turns zombie before its other threads
    # (thread-pool threads finishing a syscall) are gone
    for my $task (glob "/proc/$pid/task/*") {
        my $t = read_file("$task/stat");
        return 1 if defined $t && $t !~ /^\d+ \(.*\) [ZX] /s;
    }
    return 0;
}

# Child processes of $ppid, from /proc.
sub children_of {
    my ($ppid) = @_;
    my @kids;
    opendir my $dh, '/proc' or return ();
    for my $d (readdir $dh) {
        next unless $d =~ /^\d+$/;
        my $stat = read_file("/proc/$d/stat");
        next unless defined $stat;
        # pid (comm) state ppid ...
        next unless $stat =~ /^\d+ \(.*\) (\S) (\d+) /s;
        next if $1 eq 'Z';
        push @kids, $d + 0 if $2 == $ppid;
    }
    closedir $dh;
    return sort { $a <=> $b } @kids;
}

sub worker_pids {
    my ($self) = @_;
    my $m = $self->master_pid or return ();
    return children_of($m);
}

# Starts nginx; returns (exit code, output).  Does not wait for the port.
sub start_raw {
    my ($self) = @_;
    $self->write_conf;
    unlink $self->pid_file;
    $self->{log_mark} = -s $self->error_log || 0;
    local @ENV{keys %{$self->{env}}} = values %{$self->{env}};
    my ($rc, $out) = _run_capture($Binary, '-p', "$self->{root}/",
                                  '-c', $self->conf_file, '-e', $self->error_log);
    $self->{last_output} = $out;
    $self->{started} = 1 if $rc == 0;
    return ($rc, $out);
}

# Starts nginx without waiting: returns the pid of the process that opens
# the stores (it daemonizes once they are open), for a test to kill it.
sub start_spawn {
    my ($self) = @_;
    $self->write_conf;
    unlink $self->pid_file;
    $self->{log_mark} = -s $self->error_log || 0;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        %ENV = (%ENV, %{$self->{env}});
        open STDOUT, '>', '/dev/null';
        open STDERR, '>', '/dev/null';
        exec($Binary, '-p', "$self->{root}/", '-c', $self->conf_file,
             '-e', $self->error_log) or POSIX::_exit(127);
    }
    return $pid;
}

# Starts nginx and waits until it answers; dies (with a diagnostic) if not.
sub start {
    my ($self) = @_;
    my ($rc, $out) = $self->start_raw;
    die "nginx failed to start (rc $rc): $out\n" . $self->log_tail if $rc != 0;
    $self->wait_ready or die "nginx did not answer on port $self->{port}\n"
        . $self->log_tail;
    return 1;
}

sub start_ok {
    my ($self, $msg) = @_;
    my $ok = eval { $self->start };
    Test::More::ok($ok, $msg || "nginx ($self->{name}) started")
        or Test::More::diag($@);
    return $ok;
}

# Waits until the pid file exists, all workers are up and /__ver answers
# with the current generation.
sub wait_ready {
    my ($self, $timeout) = @_;
    my $want = "gen-$self->{generation}";
    return wait_until(sub {
        my $m = $self->master_pid or return 0;
        return 0 unless alive($m);
        my $r = http_req($self->{port}, 'GET', '/__ver', undef, undef, timeout => 2);
        return $r->{status} == 200 && $r->{body} eq $want;
    }, $timeout || 10);
}

sub req {
    my ($self, $method, $path, $body, $ctype, %opt) = @_;
    return http_req($self->{port}, $method, $path, $body, $ctype, %opt);
}

sub put {
    my ($self, $key, $value, $ctype) = @_;
    return $self->req('PUT', "/db/$key", $value, $ctype || 'application/octet-stream');
}

sub get {
    my ($self, $key) = @_;
    return $self->req('GET', "/db/$key");
}

# GET /kv/status (needs endpoints => 1): the decoded JSON, or undef.
sub status {
    my ($self) = @_;
    my $r = $self->req('GET', '/kv/status');
    return undef unless $r->{status} == 200;
    my $j = eval { JSON::PP->new->decode($r->{body}) };
    return ref $j eq 'HASH' ? $j : undef;
}

# POST /kv/compact (needs endpoints => 1).
sub compact {
    my ($self) = @_;
    return $self->req('POST', '/kv/compact');
}

# Polls the status until compaction.running is false; returns that status
# (undef on timeout or if the status cannot be read).
sub wait_compaction_done {
    my ($self, $timeout) = @_;
    my $st;
    wait_until(sub {
        $st = $self->status;
        return $st && !$st->{compaction}{running};
    }, $timeout || 60, 0.05) or return undef;
    return $st;
}

# POST /kv/compact, then waits until that compaction has run (one more
# run counted, none running): its HTTP status and whether it ended.
sub compact_and_wait {
    my ($self, $timeout) = @_;
    my $runs = $self->status->{compaction}{runs};
    my $code = $self->compact->{status};
    my $done = $code == 202 && wait_until(sub {
        my $st = $self->status;
        return $st && !$st->{compaction}{running}
               && $st->{compaction}{runs} > $runs;
    }, $timeout || 60, 0.05);
    return ($code, $done);
}

# Waits for every pid in @pids to disappear.
sub wait_gone {
    my ($timeout, @pids) = @_;
    return wait_until(sub { !grep { alive($_) } @pids }, $timeout || 10);
}

# Graceful stop (QUIT); waits for master and workers to exit.
sub stop {
    my ($self, $timeout) = @_;
    my $m = $self->master_pid;
    return 1 unless $m && alive($m);
    my @all = ($m, children_of($m));
    kill 'QUIT', $m;
    my $ok = wait_gone($timeout || 15, @all);
    if (!$ok) {
        kill 'KILL', grep { alive($_) } @all;
        wait_gone(5, @all);
    }
    $self->{started} = 0;
    return $ok;
}

# SIGKILL the master and every worker at once (no exit hooks run).
sub kill9_all {
    my ($self) = @_;
    my $m = $self->master_pid;
    return 0 unless $m;
    # stop the master first so that it cannot respawn workers, then the rest
    kill 'STOP', $m;
    my @all = ($m, children_of($m));
    kill 'KILL', @all;
    my $ok = wait_gone(10, @all);
    $self->{started} = 0;
    return $ok;
}

# SIGHUP the master and wait until the new generation answers and the old
# workers are gone.  Returns true on success.
sub reload {
    my ($self, $timeout) = @_;
    my $m = $self->master_pid or return 0;
    my @old = children_of($m);
    $self->write_conf;
    $self->{log_mark} = -s $self->error_log || 0;
    kill 'HUP', $m;
    my $want = "gen-$self->{generation}";
    my $ok = wait_until(sub {
        my $r = http_req($self->{port}, 'GET', '/__ver', undef, undef, timeout => 2);
        return $r->{status} == 200 && $r->{body} eq $want;
    }, $timeout || 15);
    return 0 unless $ok;
    return wait_gone($timeout || 15, @old);
}

# Rewrites the config and sends HUP, for reloads expected to be refused.
# Waits until the error log shows the master's verdict (a new [emerg]/[alert]
# line, or the workers being replaced).  Returns the log text since the HUP.
sub reload_expect_refusal {
    my ($self, $timeout) = @_;
    my $m = $self->master_pid or return '';
    my @old = children_of($m);
    $self->write_conf;
    my $mark = -s $self->error_log || 0;
    $self->{log_mark} = $mark;
    kill 'HUP', $m;
    wait_until(sub {
        my $t = $self->log_since($mark);
        return 1 if $t =~ /\[(?:emerg|alert|crit)\]/;
        return 1 if $t =~ /start worker process/;
        return 0;
    }, $timeout || 10);
    sleep 0.2;    # let the master finish logging
    return $self->log_since($mark);
}

# nginx -t with the current config (rewritten first); returns (rc, output).
sub nginx_t {
    my ($self) = @_;
    $self->{generation}++;
    write_file($self->conf_file, $self->conf_text);
    $self->{generation}--;   # a test run does not change what is served
    return _run_capture($Binary, '-t', '-p', "$self->{root}/",
                        '-c', $self->conf_file, '-e', $self->error_log);
}

sub log_text {
    my ($self) = @_;
    my $t = read_file($self->error_log);
    return defined $t ? $t : '';
}

sub log_since {
    my ($self, $mark) = @_;
    $mark = $self->{log_mark} || 0 unless defined $mark;
    my $t = $self->log_text;
    return length($t) > $mark ? substr($t, $mark) : '';
}

sub log_size { -s $_[0]->error_log || 0 }

sub log_tail {
    my ($self) = @_;
    my @l = split /\n/, $self->log_text;
    @l = @l[-20 .. -1] if @l > 20;
    return join '', map { "#   $_\n" } @l;
}

sub slurp_log { read_file($_[0]) }

# chattr +i a directory (root cannot create entries in it); remembered and
# undone at END.  Returns false if chattr is unavailable or fails.
sub make_immutable {
    my ($dir) = @_;
    my ($rc) = _run_capture('chattr', '+i', $dir);
    return 0 if $rc != 0;
    push @Immutable, $dir;
    return 1;
}

sub make_mutable {
    my ($dir) = @_;
    my ($rc) = _run_capture('chattr', '-i', $dir);
    @Immutable = grep { $_ ne $dir } @Immutable;
    return $rc == 0;
}

sub cleanup_all {
    for my $d (@Immutable) {
        _run_capture('chattr', '-i', $d);
    }
    @Immutable = ();
    for my $s (@Instances) {
        my $m = $s->master_pid;
        next unless $m && alive($m);
        my $stat = read_file("/proc/$m/cmdline") || '';
        next unless index($stat, $s->{root}) >= 0 || $stat =~ /nginx/;
        my @all = ($m, children_of($m));
        kill 'KILL', @all;
        wait_gone(5, @all);
    }
}

# ---------------------------------------------------------------- writers
#
# Forked client processes that write their own keys and journal every
# operation to a file, so that after a crash the store can be checked
# against what was acknowledged:
#   A <op> <key> <id>      before sending (op: P = PUT value id, D = DELETE)
#   K <op> <key> <id> <st> <time>   acknowledged (PUT 201; DELETE 200 or
#                                    404), with the time of the answer
#   E <op> <key> <id> <st> <error>   no acknowledgement (status or error)

sub writer_value {
    my ($key, $id) = @_;
    # varied lengths, bytes that are not all text
    my $pad = join '', map { chr(($id * 31 + $_) % 256) } 0 .. (($id * 37) % 700);
    return "$key=$id;" . $pad;
}

our %Writers;    # pid => journal file

# spawn_writer(port => P, journal => FILE, prefix => 'w1', keys => 20,
#              max_ops => N, stop_file => F, stop_on_fail => 1,
#              delete_every => 7, ctype => ...)
sub spawn_writer {
    my (%o) = @_;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid) {
        $Writers{$pid} = $o{journal};
        return $pid;
    }
    # child
    srand($$ ^ time);
    open my $j, '>>', $o{journal} or POSIX::_exit(2);
    select((select($j), $| = 1)[0]);
    my $keys = $o{keys} || 20;
    my $max = $o{max_ops} || 1_000_000;
    my $deadline = time + ($o{max_seconds} || 60);
    my $id = $o{id_base} || 0;
    my $fails = 0;
    for my $n (1 .. $max) {
        last if $o{stop_file} && -e $o{stop_file};
        last if time > $deadline;
        my $key = "$o{prefix}-" . int(rand $keys);
        $id++;
        my $del = $o{delete_every} && $n % $o{delete_every} == 0;
        my $op = $del ? 'D' : 'P';
        print $j "A $op $key $id\n";
        my $r = $del
            ? http_req($o{port}, 'DELETE', "/db/$key", undef, undef, timeout => 10)
            : http_req($o{port}, 'PUT', "/db/$key", writer_value($key, $id),
                       'application/octet-stream', timeout => 10);
        my $st = $r->{status};
        if (($op eq 'P' && $st == 201) || ($op eq 'D' && ($st == 200 || $st == 404))) {
            printf $j "K %s %s %s %s %.6f\n", $op, $key, $id, $st, time;
            $fails = 0;
        } else {
            my $e = $r->{error} || 'status';
            $e =~ s/\s+/_/g;
            print $j "E $op $key $id $st $e\n";
            $fails++;
            last if $o{stop_on_fail} && $st == 0;
            last if $fails > 50;
            sleep 0.01 if $st == 0;
        }
    }
    close $j;
    POSIX::_exit(0);
}

sub wait_writers {
    my ($timeout) = @_;
    my $deadline = time + ($timeout || 60);
    while (%Writers && time < $deadline) {
        for my $pid (keys %Writers) {
            my $r = waitpid($pid, WNOHANG);
            delete $Writers{$pid} if $r == $pid || $r == -1;
        }
        sleep 0.02 if %Writers;
    }
    if (%Writers) {
        kill 'KILL', keys %Writers;
        waitpid($_, 0) for keys %Writers;
        %Writers = ();
        return 0;
    }
    return 1;
}

# Reads journals; returns a hash: key => { allowed => [ids or 'absent'],
# last_ack => id|'absent'|undef }, plus counters.
sub read_journals {
    my (@files) = @_;
    my (%keys, %count);
    for my $f (@files) {
        open my $fh, '<', $f or next;
        while (my $l = <$fh>) {
            chomp $l;
            my ($t, $op, $key, $id, $st, $err) = split / /, $l;
            next unless defined $id;
            my $k = $keys{$key} ||= { ack => undef, pending => [] };
            my $result = $op eq 'D' ? 'absent' : $id;
            if ($t eq 'A') {
                push @{ $k->{pending} }, $result;
                $count{attempts}++;
            } elsif ($t eq 'K') {
                $k->{ack} = $result;
                $k->{pending} = [];
                $count{acks}++;
            } elsif ($t eq 'E') {
                $count{errors}++;
                $count{"status_$st"}++;
                # a definite refusal (an HTTP error status) wrote nothing
                if ($st != 0) {
                    @{ $k->{pending} } = grep { $_ ne $result } @{ $k->{pending} };
                }
            }
        }
        close $fh;
    }
    return (\%keys, \%count);
}

# Checks every journaled key against the server.  Returns (number of keys
# checked, list of problem descriptions).
sub verify_journals {
    my ($srv, @files) = @_;
    my ($keys, $count) = read_journals(@files);
    my @bad;
    my $n = 0;
    for my $key (sort keys %$keys) {
        my $k = $keys->{$key};
        my @allowed = (@{ $k->{pending} });
        push @allowed, defined $k->{ack} ? $k->{ack} : 'absent';
        my $r = $srv->get($key);
        $n++;
        my $got;
        if ($r->{status} == 404) {
            $got = 'absent';
        } elsif ($r->{status} == 200) {
            ($got) = $r->{body} =~ /^\Q$key\E=(\d+);/;
            if (!defined $got || $r->{body} ne writer_value($key, $got)) {
                push @bad, "$key: unexpected body (" . length($r->{body}) . " bytes)";
                next;
            }
        } else {
            push @bad, "$key: status $r->{status} " . ($r->{error} || '');
            next;
        }
        if (!grep { $_ eq $got } @allowed) {
            push @bad, "$key: got $got, acknowledged "
                . (defined $k->{ack} ? $k->{ack} : 'nothing')
                . ", in flight [@{ $k->{pending} }]";
        }
    }
    return ($n, \@bad, $count);
}

my $Owner = $$;

END {
    my $status = $?;
    if ($$ == $Owner) {
        kill 'KILL', keys %Writers if %Writers;
        cleanup_all();
    }
    $? = $status;
}

1;
