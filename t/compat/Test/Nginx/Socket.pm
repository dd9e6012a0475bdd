package Test::Nginx::Socket;

# Clean-room, compatible fallback for openresty's Test::Nginx::Socket.
# See the POD at the end of this file and t/compat/README.md.

use strict;
use warnings;

use Test::Base -base;

use Carp ();
use Cwd ();
use File::Path ();
use File::Spec ();
use IO::Select ();
use IO::Socket::INET ();
use List::Util ();
use POSIX ();
use Scalar::Util ();
use Time::HiRes ();
use Errno ();
use HTTP::Response ();

our $VERSION = '0.01';

our @EXPORT = qw(
    run_tests run_test repeat_each no_shuffle no_long_string log_level
    workers master_on master_off master_process_enabled env_to_nginx
    worker_connections config_preamble no_root_location server_name
    server_addr server_root html_dir server_port server_port_for_client
    timeout use_hup no_nginx_manager check_accum_error_log
    add_block_preprocessor add_cleanup_handler add_test_cleanup_handler
    add_response_body_check bail_out is_str plan
);

# ----------------------------------------------------------------------
# Settings (environment first, then the functions called by the .t file)
# ----------------------------------------------------------------------

my $NginxBinary   = $ENV{TEST_NGINX_BINARY} || 'nginx';
my $LoadModules   = $ENV{TEST_NGINX_LOAD_MODULES};
my $Randomize     = $ENV{TEST_NGINX_RANDOMIZE};
my $NoShuffle     = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;
my $Timeout       = $ENV{TEST_NGINX_TIMEOUT} || 3;
my $LogLevel      = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
my $MasterProcess = $ENV{TEST_NGINX_MASTER_PROCESS} || 'off';
my $Sleep         = $ENV{TEST_NGINX_SLEEP} || 0.015;
my $Verbose       = $ENV{TEST_NGINX_VERBOSE};
our $UseHup        = $ENV{TEST_NGINX_USE_HUP};
our $UseValgrind   = $ENV{TEST_NGINX_USE_VALGRIND};
my $NoClean       = $ENV{TEST_NGINX_NO_CLEAN};
my $WorkerUser    = $ENV{TEST_NGINX_WORKER_USER};
my $EventType     = $ENV{TEST_NGINX_EVENT_TYPE};
my $PostponeOut   = $ENV{TEST_NGINX_POSTPONE_OUTPUT};
my $ReusePort     = $ENV{TEST_NGINX_REUSE_PORT};
my $AccumErrLog   = $ENV{TEST_NGINX_CHECK_ACCUM_ERR_LOG};
my $ForceRestart  = defined $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST}
                    ? $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST} : 1;

for my $v (qw(TEST_NGINX_CHECK_LEAK TEST_NGINX_BENCHMARK TEST_NGINX_USE_STAP
              TEST_NGINX_USE_HTTP2 TEST_NGINX_USE_HTTP3 TEST_NGINX_USE_RR))
{
    warn "WARNING: $v is not supported by the compat Test::Nginx::Socket; "
         . "ignored\n" if $ENV{$v};
}

if (defined $WorkerUser && $WorkerUser !~ /^\w+(?:\s+\w+)?$/) {
    die "Bad value in the env TEST_NGINX_WORKER_USER: $WorkerUser\n";
}

my $RepeatEach        = 1;
my $Workers           = 1;
my $WorkerConnections = 64;
our $Daemon           = 'on';
my $NoLongString      = 0;
my $NoRootLocation    = 0;
my $ServerName        = 'localhost';
my $ServerAddr        = '127.0.0.1';
my $ConfigPreamble    = '';
my $NoNginxManager    = $ENV{TEST_NGINX_NO_NGINX_MANAGER} || 0;
my (@EnvToNginx, @BlockPreprocessors, @CleanupHandlers, @TestCleanupHandlers,
    @ResponseBodyChecks);

$Daemon = 'off' if $UseValgrind;

sub _port_is_free {
    my ($port) = @_;
    my $s = IO::Socket::INET->new(LocalAddr => $ServerAddr, LocalPort => $port,
                                  Proto => 'tcp', Listen => 1, ReuseAddr => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

sub _pick_free_port {
    my ($used) = @_;
    for (1 .. 1000) {
        my $port = 2000 + int(rand(63000));
        next if $used && $used->{$port};
        return $port if _port_is_free($port);
    }
    return undef;
}

srand($$ ^ int(Time::HiRes::time() * 1000));

my $ServerPort = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
my $ServRoot;
if ($Randomize) {
    $ServerPort = _pick_free_port()
        or die "Cannot find a free listening port\n";
    # one servroot per test file, next to TEST_NGINX_SERVROOT if given
    my $base = $ENV{TEST_NGINX_SERVROOT} || File::Spec->rel2abs('t/servroot');
    $base =~ s{/+$}{};
    $ServRoot = "${base}_$ServerPort";
    $ENV{TEST_NGINX_SERVER_PORT} = $ServerPort;
} else {
    $ServRoot = $ENV{TEST_NGINX_SERVROOT} || File::Spec->rel2abs('t/servroot');
    $ServRoot =~ s{/+$}{};
}
$ServRoot = File::Spec->rel2abs($ServRoot);
my $OwnServRoot = $Randomize ? $ServRoot : '';
my $ServerPortForClient = $ENV{TEST_NGINX_CLIENT_PORT} || $ServerPort;
$ENV{TEST_NGINX_SERVER_ROOT} = $ServRoot;

my $LogDir     = "$ServRoot/logs";
my $ErrLogFile = "$LogDir/error.log";
my $AccLogFile = "$LogDir/access.log";
my $HtmlDir    = "$ServRoot/html";
my $ConfDir    = "$ServRoot/conf";
my $ConfFile   = "$ConfDir/nginx.conf";
my $PidFile    = "$LogDir/nginx.pid";

# run-time state
my $ErrLogPos = 0;
my $PrevBlock;
my $PrevConfig;
my $FirstStart = 1;
my $ChildPid;          # valgrind mode: the forked (non-daemon) nginx
my $ConfigVersion = '';
my $RandPorts = {};
my $NginxVersion;
my $ConnectFailures = 0;
our $InCleanup = 0;

# ----------------------------------------------------------------------
# Functions exported to the .t files
# ----------------------------------------------------------------------

sub repeat_each {
    $RepeatEach = shift if @_;
    return $RepeatEach;
}

sub no_shuffle ()          { $NoShuffle = 1 }
sub no_long_string ()      { $NoLongString = 1 }
sub no_root_location ()    { $NoRootLocation = 1 }
sub no_nginx_manager ()    { $NoNginxManager = 1 }
sub use_hup ()             { $UseHup = 1 }
sub check_accum_error_log () { $AccumErrLog = 1 }
sub master_on ()           { $MasterProcess = 'on' }
sub master_off ()          { $MasterProcess = 'off' }
sub config_preamble ($)    { $ConfigPreamble = shift }
sub server_root ()         { $ServRoot }
sub html_dir ()            { $HtmlDir }
sub add_block_preprocessor (&) { unshift @BlockPreprocessors, shift }
sub add_cleanup_handler ($)    { unshift @CleanupHandlers, shift }
sub add_test_cleanup_handler ($) { unshift @TestCleanupHandlers, shift }
sub add_response_body_check ($)  { push @ResponseBodyChecks, shift }

sub log_level {
    $LogLevel = shift if @_;
    return $LogLevel;
}

sub workers {
    $Workers = shift if @_;
    return $Workers;
}

sub worker_connections {
    $WorkerConnections = shift if @_;
    return $WorkerConnections;
}

sub master_process_enabled {
    if (@_) {
        $MasterProcess = shift() ? 'on' : 'off';
    }
    return $MasterProcess;
}

sub server_name {
    $ServerName = shift if @_;
    return $ServerName;
}

sub server_addr {
    $ServerAddr = shift if @_;
    return $ServerAddr;
}

sub server_port {
    $ServerPort = shift if @_;
    return $ServerPort;
}

sub server_port_for_client {
    $ServerPortForClient = shift if @_;
    return $ServerPortForClient;
}

sub timeout {
    $Timeout = shift if @_;
    return $Timeout;
}

sub env_to_nginx {
    Carp::croak("env_to_nginx: no arguments specified") unless @_;
    for my $v (@_) {
        Carp::croak("env_to_nginx: bad argument value: $v")
            if $v !~ /^[A-Za-z_]/ || $v =~ /\n/;
        push @EnvToNginx, $v;
    }
}

sub is_str {
    my ($got, $expected, $desc) = @_;
    if (ref $expected && ref $expected eq 'Regexp') {
        return Test::More::like($got, $expected, $desc);
    }
    return Test::More::is($got, $expected, $desc);
}

sub bail_out {
    cleanup();
    Test::More::BAIL_OUT(join '', @_);
}

# ----------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------

sub _parse_time {
    my ($t) = @_;
    return undef unless defined $t;
    $t =~ s/^\s+|\s+$//g;
    if ($t =~ s/(\d)ms$/$1/) {
        return $t / 1000;
    }
    $t =~ s/(\d)s$/$1/;
    return $t;
}

sub _expand_env {
    my ($text, $name) = @_;
    return $text if !defined $text || ref $text;
    my $used = { $ServerPort => 1, map { $_ => 1 } values %$RandPorts };
    $text =~ s{\$(TEST_NGINX_[_A-Z0-9]+)}{
        my $var = $1;
        my $val;
        if ($var =~ /^TEST_NGINX_RAND_PORT_\d+$/) {
            if (!defined $RandPorts->{$var}) {
                my $p = _pick_free_port($used);
                bail_out("$name - Cannot find an available listening port "
                         . "number for $var.\n") unless defined $p;
                $RandPorts->{$var} = $p;
                $used->{$p} = 1;
            }
            $val = $RandPorts->{$var};
        } else {
            bail_out("$name - No environment $var defined.\n")
                unless defined $ENV{$var};
            $val = $ENV{$var};
        }
        $val;
    }ge;
    return $text;
}

sub _fmt {
    my ($s) = @_;
    $s = "$s";
    chomp $s;
    $s =~ s/"/\\"/g;
    $s =~ s/\r/\\r/g;
    $s =~ s/\n/\\n/g;
    return $s;
}

sub _nginx_version {
    return $NginxVersion if defined $NginxVersion;
    my $out = `$NginxBinary -V 2>&1`;
    if (defined $out && $out =~ m{nginx/(\d+)\.(\d+)\.(\d+)}) {
        $NginxVersion = sprintf "%d.%03d%03d", $1, $2, $3;
    } else {
        $NginxVersion = 0;
    }
    return $NginxVersion;
}

sub _nginx_V {
    my $out = `$NginxBinary -V 2>&1`;
    return defined $out ? $out : '';
}

sub _pid_alive {
    my ($pid) = @_;
    return 0 unless $pid && $pid =~ /^\d+$/;
    return 0 unless kill 0, $pid;
    # a daemonised nginx is not our child: a zombie counts as gone
    if (open my $st, '<', "/proc/$pid/stat") {
        my $line = <$st>;
        close $st;
        return 0 if defined $line && $line =~ /^\d+ \(.*\) Z/s;
    }
    return 1;
}

sub _read_pid {
    open my $in, '<', $PidFile or return undef;
    my $pid = do { local $/; <$in> };
    close $in;
    return undef unless defined $pid;
    $pid =~ s/\s+//g;
    return $pid =~ /^\d+$/ ? $pid : undef;
}

sub _reap {
    while ((my $p = waitpid(-1, POSIX::WNOHANG())) > 0) {
        undef $ChildPid if defined $ChildPid && $p == $ChildPid;
    }
}

# Become a child subreaper (Linux) so that the daemonised nginx is
# re-parented to this process and can be reaped: otherwise it stays a
# zombie in containers whose PID 1 does not reap orphans.
if ($^O eq 'linux') {
    require Config;
    my $arch = $Config::Config{archname} || '';
    my $nr = $arch =~ /^x86_64/ ? 157
           : $arch =~ /^(?:aarch64|arm64)/ ? 167 : undef;
    eval { syscall($nr, 36, 1, 0, 0, 0) } if defined $nr;  # PR_SET_CHILD_SUBREAPER
}

# stop a running nginx: QUIT, wait up to timeout(), TERM, then KILL
sub _stop_pid {
    my ($pid, $name) = @_;
    return unless _pid_alive($pid);
    kill($ENV{TEST_NGINX_FAST_SHUTDOWN} ? 'TERM' : 'QUIT', $pid);
    my $left = $Timeout;
    while ($left > 0 && _pid_alive($pid)) {
        _reap();
        Time::HiRes::sleep(0.05);
        $left -= 0.05;
    }
    if (_pid_alive($pid)) {
        warn "$name - timeout when waiting for the process $pid to exit\n";
        kill 'TERM', $pid;
        for (1 .. 20) {
            _reap();
            last unless _pid_alive($pid);
            Time::HiRes::sleep(0.05);
        }
        if (_pid_alive($pid)) {
            warn "$name - WARNING: killing the process $pid with force...\n";
            kill 'KILL', $pid;
            Time::HiRes::sleep(0.05);
        }
    }
    _reap();
}

sub _stop_nginx {
    my ($name) = @_;
    my $pid = _read_pid();
    _stop_pid($pid, $name) if defined $pid;
    if (defined $ChildPid) {
        # valgrind / foreground child: make sure it is gone and reaped
        my $left = $Timeout;
        while ($left > 0 && defined $ChildPid) {
            _reap();
            last unless defined $ChildPid && _pid_alive($ChildPid);
            Time::HiRes::sleep(0.05);
            $left -= 0.05;
        }
        if (defined $ChildPid && _pid_alive($ChildPid)) {
            kill 'KILL', -$ChildPid;
            kill 'KILL', $ChildPid;
            waitpid($ChildPid, 0);
        }
        undef $ChildPid;
        _dump_valgrind_logs();
    }
    unlink $PidFile if -f $PidFile && !(defined $pid && _pid_alive($pid));
}

sub _dump_valgrind_logs {
    for my $f (glob "$LogDir/valgrind.*.log") {
        next unless -s $f;
        if (open my $in, '<', $f) {
            local $/;
            my $d = <$in>;
            close $in;
            print STDERR $d if defined $d && length $d;
        }
        rename $f, "$f.seen";
    }
}

sub cleanup {
    return if $InCleanup;
    local $InCleanup = 1;
    $_->() for @CleanupHandlers;
    unless ($NoClean && !$UseValgrind) {
        _stop_nginx('cleanup');
    }
}

sub _error_log_lines {
    Time::HiRes::sleep($Sleep * 3);
    open my $in, '<', $ErrLogFile or return [];
    binmode $in;
    seek $in, $ErrLogPos, 0 if !$AccumErrLog && $ErrLogPos > 0;
    my @lines = <$in>;
    $ErrLogPos = tell($in) unless $AccumErrLog;
    close $in;
    return \@lines;
}

# ----------------------------------------------------------------------
# Server root, user files, nginx.conf
# ----------------------------------------------------------------------

sub _setup_server_root {
    my ($keep_running) = @_;
    if (-d $ServRoot) {
        if ($keep_running) {
            # HUP mode: nginx keeps running; keep its pid file
            File::Path::remove_tree($ConfDir, glob("$ServRoot/*_temp"),
                                    glob("$ServRoot/*_cache"));
            for my $dir ($LogDir, $HtmlDir, "$ServRoot/cache") {
                next unless -d $dir;
                File::Path::remove_tree($dir, { keep_root => 1 })
                    if $dir ne $LogDir;
            }
            for my $f (glob("$LogDir/*")) {
                next if $f eq $PidFile || $f =~ /\.sock$/;
                File::Path::remove_tree($f);
            }
        } else {
            File::Path::remove_tree($ConfDir, $LogDir, $HtmlDir,
                                    "$ServRoot/cache",
                                    glob("$ServRoot/*_temp"),
                                    glob("$ServRoot/*_cache"));
            rmdir $ServRoot
                or bail_out("Can't remove $ServRoot (not empty?): $!");
        }
    }
    for my $d ($ServRoot, $LogDir, $HtmlDir, $ConfDir) {
        next if -d $d;
        File::Path::make_path($d) or bail_out("Failed to mkdir $d: $!");
    }
    open my $out, '>', "$HtmlDir/index.html"
        or bail_out("Can't write $HtmlDir/index.html: $!");
    print $out '<html><head><title>It works!</title></head>'
               . '<body>It works!</body></html>';
    close $out;
}

sub _run_post_setup {
    my ($block) = @_;
    my $code = $block->post_setup_server_root;
    return unless defined $code;
    eval $code;
    bail_out($block->name . " - post_setup_server_root failed: $@") if $@;
}

sub _write_user_files {
    my ($block) = @_;
    my $name  = $block->name;
    my $files = $block->user_files;
    return unless defined $files;
    my @list;
    if (!ref $files) {
        my ($fname, $body, $date);
        for my $line (split /^/m, $files) {
            if ($line =~ /^>>> (\S+)(?:\s+(.+))?/) {
                push @list, [$fname, $body, $date] if defined $fname;
                ($fname, $date, $body) = ($1, $2, undef);
            } else {
                $body .= $line;
            }
        }
        push @list, [$fname, $body, $date] if defined $fname;
    } elsif (ref $files eq 'ARRAY') {
        @list = @$files;
    } else {
        bail_out("$name - wrong value type for --- user_files: " . ref $files);
    }
    for my $f (@list) {
        my ($fname, $body, $date) = @$f;
        $body = '' unless defined $body;
        my $path = $fname =~ m{^/} ? $fname : "$HtmlDir/$fname";
        if ($path =~ m{^(.*)/} && !-d $1) {
            File::Path::make_path($1)
                or bail_out("$name - Cannot create directory $1");
        }
        $body = _expand_env($body, $name);
        open my $out, '>', $path
            or bail_out("$name - Cannot open $path for writing: $!");
        binmode $out;
        print $out $body;
        close $out;
        if ($date) {
            $date =~ s/\s+$//;
            system("TZ=GMT touch -t '$date' '$path'") == 0
                or bail_out("$name - cannot set mtime of $path to $date");
        }
    }
}

sub _write_config {
    my ($block, $config) = @_;
    my $name = $block->name;

    my $http_config = _expand_env(scalar $block->http_config, $name);
    $http_config = '' unless defined $http_config;
    my $main_config = $block->main_config;
    $main_config = '' unless defined $main_config;
    if ($LoadModules) {
        my @mods = map { "load_module $_;" } grep { length } split /\s+/,
                   $LoadModules;
        $main_config = join ' ', @mods, $main_config if @mods;
    }
    $main_config = _expand_env($main_config, $name);
    my $post_main = _expand_env(scalar $block->post_main_config, $name);
    $post_main = '' unless defined $post_main;
    my $errlog = $block->error_log_file || $ErrLogFile;
    $errlog = _expand_env($errlog, $name);
    $errlog =~ s/\s+$//;
    my $level = $block->log_level || $LogLevel;
    $level =~ s/\s+$//;
    my $sname = defined $block->server_name ? $block->server_name
                                             : $ServerName;
    $sname =~ s/\s+$//;
    $sname =~ s/\\/\\\\/g;
    $sname =~ s/'/\\'/g;
    my $master = $UseHup ? 'on' : $MasterProcess;

    my $extra_http = '';
    if (defined $PostponeOut && $http_config !~ /\bpostpone_output\b/) {
        bail_out("Bad TEST_NGINX_POSTPONE_OUTPUT value: $PostponeOut")
            if $PostponeOut !~ /^\d+$/;
        $extra_http = "\n    postpone_output $PostponeOut;\n";
    }

    my $V = _nginx_V();
    my @temp;
    push @temp, "client_body_temp_path $ServRoot/client_body_temp;"
        unless $http_config =~ /\bclient_body_temp_path\b/;
    push @temp, "proxy_temp_path $ServRoot/proxy_temp;"
        unless $http_config =~ /\bproxy_temp_path\b/;
    for my $m (qw(fastcgi scgi uwsgi)) {
        push @temp, "${m}_temp_path $ServRoot/${m}_temp;"
            unless $V =~ /--without-http_${m}_module/;
    }
    my $listen_opts = $ReusePort ? ' reuseport' : '';

    my $c = '';
    $c .= "worker_processes  $Workers;\n";
    $c .= "daemon $Daemon;\n";
    $c .= "master_process $master;\n";
    $c .= "error_log $errlog $level;\n";
    $c .= "pid       $PidFile;\n";
    $c .= "env $_;\n" for qw(MOCKEAGAIN_VERBOSE MOCKEAGAIN
        MOCKEAGAIN_WRITE_TIMEOUT_PATTERN LD_PRELOAD LD_LIBRARY_PATH
        DYLD_INSERT_LIBRARIES DYLD_FORCE_FLAT_NAMESPACE);
    for my $v (@EnvToNginx) {
        $c .= $v =~ /\s/ ? "env '$v';\n" : "env $v;\n";
    }
    $c .= "#env LUA_PATH;\n#env LUA_CPATH;\n\n";
    $c .= "$main_config\n\n";
    $c .= "http {\n";
    $c .= "    access_log $AccLogFile; " . join(' ', @temp) . "\n";
    $c .= "    #access_log off;\n\n";
    $c .= "    default_type text/plain;\n";
    $c .= "    keepalive_timeout  68000ms;\n\n";
    $c .= "$http_config\n";
    $c .= "    server {\n";
    $c .= "        listen          $ServerPort$listen_opts;\n";
    $c .= "        #placeholder\n";
    $c .= "        server_name     '$sname';\n";
    $c .= "        \n";
    $c .= "        client_max_body_size 30M;\n";
    $c .= "        #client_body_buffer_size 4k;\n\n";
    $c .= "        # Begin preamble config...\n$ConfigPreamble\n";
    $c .= "        # End preamble config...\n\n";
    $c .= "        # Begin test case config...\n$config\n";
    $c .= "        # End test case config.\n\n";
    unless ($NoRootLocation) {
        $c .= "        location / {\n";
        $c .= "            root $HtmlDir;\n";
        $c .= "            index index.html index.htm;\n";
        $c .= "        }\n";
    }
    $c .= "    }\n";
    if ($UseHup) {
        $c .= "    server {\n";
        $c .= "        listen          $ServerPort$listen_opts; \n";
        $c .= "        server_name     'Test-Nginx';\n\n";
        $c .= "        location = /ver {\n";
        $c .= "            return 200 '$ConfigVersion';\n";
        $c .= "        }\n";
        $c .= "    }\n\n$extra_http\n";
    }
    $c .= "}\n\n$post_main\n\n#timer_resolution 100ms;\n\n";
    $c .= "events {\n    accept_mutex off;\n\n";
    $c .= "    worker_connections  $WorkerConnections;\n";
    $c .= "    use $EventType;\n" if $EventType;
    $c .= "}\n";
    $c .= "env ASAN_OPTIONS;\nenv MOCKNOEAGAIN_VERBOSE;\nenv MOCKNOEAGAIN;\n";
    if (defined $WorkerUser) {
        $c .= "user $WorkerUser;\n";
    } elsif ($> == 0) {
        $c .= "user root;\n";
    }

    open my $out, '>', $ConfFile
        or bail_out("Can't open $ConfFile for writing: $!");
    print $out $c;
    close $out;
}

# ----------------------------------------------------------------------
# Starting nginx
# ----------------------------------------------------------------------

sub _nginx_cmd {
    my $cmd = "$NginxBinary -e $ErrLogFile -p $ServRoot/ -c $ConfFile";
    if (defined $ENV{TEST_NGINX_LD_PRELOAD}) {
        my $pre = $ENV{TEST_NGINX_LD_PRELOAD};
        $pre .= " $ENV{LD_PRELOAD}" if defined $ENV{LD_PRELOAD};
        $cmd = qq{LD_PRELOAD="$pre" $cmd};
    }
    return $cmd;
}

sub _wait_pid_file {
    my ($max) = @_;
    my $waited = 0;
    while ($waited < $max) {
        my $pid = _read_pid();
        return $pid if defined $pid;
        Time::HiRes::sleep(0.01);
        $waited += 0.01;
    }
    return undef;
}

# returns (status, exit_code, signalled/coredump flag)
sub _run_nginx_once {
    my ($block) = @_;
    my $cmd = _nginx_cmd() . ' > /dev/null';
    $cmd .= ' 2> /dev/null' if defined $block->suppress_stderr;
    warn "command: $cmd\n" if $Verbose;
    system($cmd);
    my $status = $?;
    return ($status, undef, 0) if $status == -1;
    return ($status, $status >> 8, ($status & 127) ? 1 : 0);
}

sub _start_valgrind {
    my ($block) = @_;
    my $opts;
    if ($UseValgrind =~ /^\d+$/) {
        $opts = '--tool=memcheck --leak-check=full --keep-debuginfo=yes '
              . '--show-possibly-lost=no --num-callers=100 '
              . '--gen-suppressions=all';
        $opts .= ' --suppressions=valgrind.suppress' if -f 'valgrind.suppress';
    } else {
        $opts = $UseValgrind;
    }
    my $cmd = "valgrind -q --log-file=$LogDir/valgrind.%p.log $opts "
              . _nginx_cmd();
    warn $block->name, "\n";
    my $pid = fork();
    bail_out($block->name . " - fork() failed: $!") unless defined $pid;
    if ($pid == 0) {
        setpgrp(0, 0);
        exec "exec $cmd" or POSIX::_exit(127);
    }
    $ChildPid = $pid;
    # valgrind is slow: wait for the pid file (written once listening)
    _wait_pid_file(60);
}

sub _start_nginx {
    my ($block) = @_;
    my $name = $block->name;
    if ($UseValgrind) {
        _start_valgrind($block);
        return;
    }
    my $waited = 0;
    my $try = 0;
    while (1) {
        $ErrLogPos = 0;
        my ($status) = _run_nginx_once($block);
        if ($status == 0) {
            _wait_pid_file($Timeout)
                or warn "$name - WARNING: no pid file after nginx started\n";
            Time::HiRes::sleep($Sleep);
            return;
        }
        # retry only when the port may still be held by someone else
        my $log = '';
        if (open my $in, '<', $ErrLogFile) { local $/; $log = <$in> // ''; }
        $try++;
        my $delay = 0.1 * $try;
        $delay = 1 if $delay > 1;
        if ($log =~ /Address already in use/ && $waited < 30) {
            Time::HiRes::sleep($delay);
            $waited += $delay;
            next;
        }
        bail_out("$name - Cannot start nginx using command \""
                 . _nginx_cmd() . "\" (status code $status).");
    }
}

# ----------------------------------------------------------------------
# HTTP client (raw sockets, byte-exact)
# ----------------------------------------------------------------------

sub _parse_more_headers {
    my ($in) = @_;
    my ($out, $chunked) = ('', 0);
    for my $h (split /\n+/, $in) {
        next if $h =~ /^\s*#/;
        my ($k, $v) = split /:\s*/, $h, 2;
        next unless defined $k;
        $v = '' unless defined $v;
        $chunked = 1 if lc($k) eq 'transfer-encoding' && $v eq 'chunked';
        $out .= "$k: $v\r\n";
    }
    return ($out, $chunked);
}

# Turn the "METHOD URI [VER]\nbody" notation (possibly split into packets)
# into a full HTTP request, keeping the packet boundaries.
sub _build_request {
    my ($name, $more, $chunked, $conn, $packets) = @_;
    my $whole = join '', @$packets;
    $whole =~ /\A([^\n]*\n?)/;
    my $first = $1;
    bail_out("$name - Request line should be non-empty") if $first eq '';
    $first =~ /^(\s*)(\S+)( *)(?:(\S+)( *))?(?:(\S+)( *))?(\s*)$/
        or bail_out("$name - Request line is not valid. Should be "
                    . "'meth [url [version]]' but got \"$first\".");
    my @m = ($1, $2, $3, $4, $5, $6, $7, $8);
    my $content = substr($whole, length $first);

    my $clen = '';
    if (!$chunked && $content ne '' && $more !~ /(?:^|\n)Content-Length:/) {
        $content =~ s/^\s+|\s+$//gs;
        $clen = 'Content-Length: ' . length($content) . "\r\n";
    }
    (my $mh = $more) =~ s/(?<!\r)\n/\r\n/gs;
    my $hdrs = '';
    $hdrs .= "Host: $ServerName\r\n" if $more !~ /(?:^|\n)Host:/msi;
    $hdrs .= "Connection: $conn\r\n" if $more !~ /(?:^|\n)Connection/msi;
    $hdrs .= "$mh$clen\r\n";

    # segments over the original text: [orig length, replacement]
    my @seg = (
        [length $m[0], ''],
        [length $m[1], "$m[1] "],
        [length $m[2], ''],
        [defined $m[3] ? length $m[3] : 0,
         (defined $m[3] ? $m[3] : '/') . ' '],
        [defined $m[4] ? length $m[4] : 0, ''],
        [defined $m[5] ? length $m[5] : 0,
         (defined $m[5] ? $m[5] : 'HTTP/1.1') . "\r\n"],
        [(defined $m[6] ? length $m[6] : 0) + length $m[7], ''],
        [0, $hdrs],
        [length($whole) - length($first), $content],
    );
    return [ join '', map { $_->[1] } @seg ] if @$packets <= 1;

    # distribute the replacements over the original packets
    my @bounds;
    my $pos = 0;
    for my $p (@$packets) { push @bounds, [$pos, $pos + length $p]; $pos += length $p }
    my @out = ('') x @$packets;
    my $off = 0;
    my $last_pk = 0;
    for my $s (@seg) {
        my ($len, $rep) = @$s;
        my ($a, $b) = ($off, $off + $len);
        $off = $b;
        if ($len == 0) {
            $out[$last_pk] .= $rep;
            next;
        }
        my @cover = grep { $bounds[$_][0] < $b && $bounds[$_][1] > $a }
                    0 .. $#bounds;
        for my $i (0 .. $#cover) {
            my $k = $cover[$i];
            if ($i == $#cover) {
                $out[$k] .= $rep;
                $rep = '';
            } else {
                my $ov = List::Util::min($b, $bounds[$k][1])
                         - List::Util::max($a, $bounds[$k][0]);
                $out[$k] .= substr($rep, 0, $ov, '');
            }
            $last_pk = $k;
        }
    }
    return \@out;
}

# list of requests; each request = list of {value, delay_before} packets
sub _requests_from_block {
    my ($block) = @_;
    my $name = $block->name;
    my @list;

    if (defined $block->raw_request) {
        my $raw = $block->raw_request;
        if (ref $raw eq 'ARRAY') {
            push @list, [ map { { value => $_ } } @$raw ];
        } else {
            push @list, [ { value => $raw } ];
        }
        return \@list;
    }

    my $request = $block->request;
    if (defined $block->request_eval) {
        $request = eval $block->request_eval;
        warn $@ if $@;
    }
    if (defined $request && !ref $request) {
        1 while $request =~ s/^\s*\#[^\n]+\s+|^\s+//gs;
    }
    my $more = $block->more_headers;
    $more = '' unless defined $more;

    my $hdr_for = sub {
        my ($i) = @_;
        if (ref $more eq 'ARRAY') {
            bail_out("$name - --- more_headers lacks data for request $i")
                unless defined $more->[$i];
            return _parse_more_headers($more->[$i]);
        }
        return _parse_more_headers($more);
    };

    if ($block->pipelined_requests) {
        my $reqs = $block->pipelined_requests;
        bail_out("$name - invalid entries in --- pipelined_requests")
            unless ref $reqs eq 'ARRAY';
        my $all = '';
        for my $i (0 .. $#$reqs) {
            my $r = _expand_env($reqs->[$i], $name);
            my ($h, $ch) = $hdr_for->($i);
            my $conn = $i == $#$reqs ? 'close' : 'keep-alive';
            $all .= _build_request($name, $h, $ch, $conn, [$r])->[0];
        }
        return [ [ { value => $all } ] ];
    }

    bail_out("$name - no --- request specified") unless defined $request;

    if (!ref $request) {
        my ($h, $ch) = $hdr_for->(0);
        push @list, [ { value => _build_request($name, $h, $ch, 'close',
                                                [$request])->[0] } ];
    } elsif (ref $request eq 'ARRAY') {
        for my $i (0 .. $#$request) {
            my $one = $request->[$i];
            my ($h, $ch) = $hdr_for->($i);
            if (!ref $one) {
                push @list, [ { value => _build_request($name, $h, $ch,
                                                 'close', [$one])->[0] } ];
            } elsif (ref $one eq 'ARRAY') {
                my @pk = map {
                    ref $_ eq 'HASH' ? $_ : { value => $_ }
                } @$one;
                my $built = _build_request($name, $h, $ch, 'close',
                                           [ map { $_->{value} } @pk ]);
                push @list, [ map { +{ %{ $pk[$_] }, value => $built->[$_] } }
                              0 .. $#pk ];
            } else {
                bail_out("$name - Invalid syntax: $one should be a string "
                         . "or an array of packets.");
            }
        }
    } else {
        bail_out("$name - invalid --- request: MUST be string or array");
    }
    return \@list;
}

sub _connect {
    my ($block) = @_;
    my $addr = $block->server_addr_for_client;
    $addr = $ServerAddr unless defined $addr;
    my $max = $ConnectFailures ? 20 : 50;
    for my $try (1 .. $max) {
        my $sock = IO::Socket::INET->new(PeerAddr => $addr,
                                         PeerPort => $ServerPortForClient,
                                         Proto => 'tcp', Timeout => $Timeout);
        return $sock if $sock;
        my $err = $!;
        if (defined $ChildPid) {
            _reap();
            last unless defined $ChildPid && _pid_alive($ChildPid);
        }
        my $wait = ($Sleep + $Sleep * $try) * $try / 2;
        $wait = 1 if $wait > 1;
        warn $block->name . " - Can't connect to $addr:$ServerPortForClient:"
             . " $err\n\tRetry connecting after $wait sec\n" if $wait >= 0.6;
        Time::HiRes::sleep($wait);
    }
    my $msg = $block->name . " - Can't connect to $addr:$ServerPortForClient:"
              . " $! (aborted)\n";
    if (++$ConnectFailures < 3) {
        Test::More->builder->no_ending(1);
        Test::More::fail($msg);
        return undef;
    }
    bail_out($msg);
}

# send one request (list of packets), read until EOF or timeout
sub _send_request {
    my ($packets, $middle_delay, $timeout, $block) = @_;
    my $sock = _connect($block) or return undef;
    binmode $sock;
    $sock->blocking(0);
    my @todo = @$packets;
    my $cur = shift @todo;
    my ($wbuf, $woff) = ($cur->{value}, 0);
    my $resp = '';
    my $writing = 1;
    my $sel = IO::Select->new($sock);
    local $SIG{PIPE} = 'IGNORE';

    while (1) {
        my ($r, $w) = IO::Select->select($sel, $writing ? $sel : undef,
                                         undef, $timeout);
        if (!$r && !$w) {
            if ($! == Errno::EINTR) { next }
            close $sock;
            unless (defined $block->abort) {
                Test::More->builder->no_ending(1);
                Test::More::fail("ERROR: client socket timed out - "
                                 . $block->name . "\n");
            }
            return $resp;
        }
        if ($w && @$w) {
            while ($writing) {
                if ($woff < length $wbuf) {
                    my $n = syswrite($sock, $wbuf, length($wbuf) - $woff, $woff);
                    if (!defined $n) {
                        last if $! == Errno::EAGAIN || $! == Errno::EWOULDBLOCK;
                        warn "write failed: $!\n";
                        $writing = 0;
                        last;
                    }
                    $woff += $n;
                    next;
                }
                $cur = shift @todo;
                if (!$cur) {
                    $writing = 0;
                    my $sd = $block->shutdown;
                    if (defined $sd) {
                        $sd = 1 if $sd =~ /^\s*$/;
                        shutdown($sock, $sd);
                    }
                    last;
                }
                my $d = defined $cur->{delay_before} ? $cur->{delay_before}
                                                     : $middle_delay;
                Time::HiRes::sleep($d) if $d;
                ($wbuf, $woff) = ($cur->{value}, 0);
            }
        }
        if ($r && @$r) {
            my $eof = 0;
            while (1) {
                my $buf;
                my $n = sysread($sock, $buf, 65536);
                if (!defined $n) {
                    last if $! == Errno::EAGAIN || $! == Errno::EWOULDBLOCK;
                    warn "WARNING: " . $block->name
                         . " - HTTP response read failure: $!\n"
                         unless $! == Errno::ECONNRESET;
                    $eof = 1;
                    last;
                }
                if ($n == 0) { $eof = 1; last }
                $resp .= $buf;
            }
            if ($eof) {
                close $sock;
                return $resp;
            }
        }
    }
}

# parse one response off the front of $raw; returns (res, raw_headers, left)
sub _parse_response {
    my ($name, $raw, $head_req) = @_;
    my $raw_headers = '';
    $raw_headers = $1 if $raw =~ /\A(.*?\r\n)\r\n/s;
    my $res = HTTP::Response->parse($raw);
    my $code = $res->code;
    if (defined $code && $code !~ /^\d+$/) {
        $res->code(undef);
        $code = undef;
    }
    return ($res, $raw_headers, undef)
        if $code && ($code == 304 || $code == 101);

    my $body = $res->content;
    $body = '' unless defined $body;
    my $te  = $res->header('Transfer-Encoding');
    my $len = $res->header('Content-Length');
    my $left;

    if (defined $te && $te eq 'chunked') {
        my @trailers = $res->header('Trailer');
        my $decoded = '';
        my $p = 0;
        while (1) {
            pos($body) = $p;
            if ($body =~ /\G[ \t]*([0-9A-Fa-f]+)[^\r\n]*\r\n/gc) {
                my $size = hex $1;
                $p = pos($body);
                if ($size == 0) {
                    # trailers (if any), then the final CRLF
                    my $end = index($body, "\r\n", $p);
                    while ($end > $p) {      # a trailer line
                        $p = $end + 2;
                        $end = index($body, "\r\n", $p);
                    }
                    if ($end < 0) {
                        Test::More->builder->no_ending(1);
                        Test::More::fail("$name - invalid chunked data "
                                         . "received (expected CRLF).");
                        return;
                    }
                    $p = $end + 2;
                    $left = substr($body, $p) if $p < length $body;
                    last;
                }
                if (length($body) - $p < $size + 2
                    || substr($body, $p + $size, 2) ne "\r\n")
                {
                    Test::More->builder->no_ending(1);
                    Test::More::fail("$name - invalid chunked data received "
                        . (length($body) - $p < $size
                           ? "(not enought octets for the data section)"
                           : "(expected CRLF)."));
                    return;
                }
                $decoded .= substr($body, $p, $size);
                $p += $size + 2;
            } else {
                Test::More->builder->no_ending(1);
                if ($p < length $body) {
                    Test::More::fail("$name - invalid chunked body received: "
                                     . substr($body, $p));
                } else {
                    Test::More::fail("$name - no last chunk found - $body");
                }
                return;
            }
        }
        $res->content($decoded);
    } elsif ($head_req) {
        if (length $body) {
            $left = $body;
            $res->content('');
        }
    } elsif (defined $len && $len =~ /^\s*(\d+)\s*$/) {
        $len = $1;
        if (length($body) < $len) {
            warn "WARNING: $name - response body truncated: $len expected, "
                 . "but got " . length($body) . "\n";
        } elsif (length($body) > $len) {
            $left = substr($body, $len);
            $res->content(substr($body, 0, $len));
        }
    }
    return ($res, $raw_headers, $left);
}

# ----------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------

sub _indexed {
    my ($name, $val, $idx, $need_array) = @_;
    if ($need_array) {
        return $val->[$idx] if ref $val eq 'ARRAY';
        bail_out("$name - You asked for many requests, the expected results "
                 . "should be arrays as well.");
    }
    return $val->[0] if ref $val eq 'ARRAY';
    return $val;
}

sub _check_error_code {
    my ($block, $res, $dry, $idx, $need) = @_;
    my $name = $block->name;
    SKIP: {
        Test::More::skip("$name - tests skipped due to $dry", 1) if $dry;
        my $got = ($res && $res->code) || '';
        if (defined $block->error_code_like) {
            my $v = _indexed($name, scalar $block->error_code_like, $idx, $need);
            Test::More::like($got, qr/$v/sm, "$name - status code ok");
        } elsif (defined $block->error_code) {
            my $v = _indexed($name, scalar $block->error_code, $idx, $need);
            $v =~ s/^\s+|\s+$//g if defined $v && !ref $v;
            Test::More::is($got, $v, "$name - status code ok");
        } else {
            Test::More::is($got, 200, "$name - status code ok");
        }
    }
}

sub _check_raw_headers {
    my ($block, $raw, $dry, $idx, $need) = @_;
    my $name = $block->name;
    for my $kind (qw(like unlike)) {
        my $meth = "raw_response_headers_$kind";
        next unless defined $block->$meth;
        SKIP: {
            Test::More::skip("$name - $meth - tests skipped due to $dry", 1)
                if $dry;
            my $v = _indexed($name, scalar $block->$meth, $idx, $need);
            if ($kind eq 'like') {
                Test::More::like($raw, qr/$v/s, "$name - raw resp headers like");
            } else {
                Test::More::unlike($raw, qr/$v/s,
                                   "$name - raw resp headers unlike");
            }
        }
    }
}

sub _parse_header_spec {
    my ($s) = @_;
    my %h;
    return \%h unless defined $s;
    for my $line (split /\n/, $s) {
        $line =~ s/^\s+|\s+$//g;
        next if $line eq '';
        if ($line =~ s/^!\s*//) {
            $h{$line} = undef;
        } else {
            my ($k, $v) = split /\s*:\s*/, $line, 2;
            $h{$k} = $v;
        }
    }
    return \%h;
}

sub _check_headers {
    my ($block, $res, $raw, $dry, $idx, $need) = @_;
    my $name = $block->name;
    if (defined $block->response_headers) {
        my $h = _parse_header_spec(
            _indexed($name, scalar $block->response_headers, $idx, $need));
        for my $k (sort keys %$h) {
            my $v = $h->{$k};
            SKIP: {
                Test::More::skip("$name - response_headers - tests skipped "
                                 . "due to $dry", 1) if $dry;
                if (!defined $v) {
                    Test::More::unlike($raw, qr/^\s*\Q$k\E\s*:/ms,
                        "$name - header $k not present in the raw headers");
                    next;
                }
                $v =~ s/\$ServerPort\b/$ServerPort/g;
                $v =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
                my $got = $res ? $res->header($k) : undef;
                $got = '' unless defined $got;
                Test::More::is($got, $v, "$name - header $k ok");
            }
        }
    } elsif (defined $block->response_headers_like) {
        my $h = _parse_header_spec(
            _indexed($name, scalar $block->response_headers_like, $idx, $need));
        for my $k (sort keys %$h) {
            my $v = $h->{$k};
            $v = '' unless defined $v;
            my $got = $res ? $res->header($k) : undef;
            $got = '' unless defined $got;
            SKIP: {
                Test::More::skip("$name - response_headers_like - tests "
                                 . "skipped due to $dry", 1) if $dry;
                Test::More::like($got, qr/^$v$/, "$name - header $k like ok");
            }
        }
    }
}

sub _apply_body_filters {
    my ($block, $res, $idx) = @_;
    my $f = $block->response_body_filters;
    return unless defined $f && $res && defined $res->content;
    my $name = $block->name;
    if (!ref $f) {
        $f =~ s/^\s+|\s+$//g;
        $f = [ split /\s+/, $f ];
    } elsif (ref $f ne 'ARRAY') {
        $f = [$f];
    }
    if (@$f && ref $f->[0] eq 'ARRAY') {
        $f = $f->[$idx];
        bail_out("$name - the --- response_body_filters two-dimensional "
                 . "array unmatch the specified request($idx)")
            unless defined $f;
    }
    my $c = $res->content;
    for my $one (ref $f eq 'ARRAY' ? @$f : ($f)) {
        if (ref $one eq 'CODE') { $c = $one->($c); next }
        if    ($one eq 'md5_hex')  { require Digest::MD5; $c = Digest::MD5::md5_hex($c) }
        elsif ($one eq 'sha1_hex') { require Digest::SHA; $c = Digest::SHA::sha1_hex($c) }
        elsif ($one eq 'uc')       { $c = uc $c }
        elsif ($one eq 'lc')       { $c = lc $c }
        elsif ($one eq 'ucfirst')  { $c = ucfirst $c }
        elsif ($one eq 'lcfirst')  { $c = lcfirst $c }
        elsif ($one eq 'length')   { $c = length $c }
        else { bail_out("$name - unknown filter, \"$one\", specified in the "
                        . "--- response_body_filters section") }
    }
    $res->content($c);
}

sub _check_body {
    my ($block, $res, $dry, $idx, $rep, $need) = @_;
    my $name = $block->name;
    if (defined $block->write_resp_body_file && $res) {
        if (open my $out, '>', $block->write_resp_body_file) {
            binmode $out;
            print $out $res->content // '';
            close $out;
        }
    }
    my $content = $res ? $res->content : undef;

    if (defined $block->response_body || defined $block->response_body_eval) {
        my $exp;
        if (defined $block->response_body_eval) {
            $exp = eval _indexed($name, scalar $block->response_body_eval, $idx,
                                 $need);
            warn $@ if $@;
        } else {
            $exp = _indexed($name, scalar $block->response_body, $idx, $need);
        }
        if (defined $block->charset && defined $exp && !ref $exp) {
            require Encode;
            Encode::from_to($exp, 'UTF-8', $block->charset);
        }
        if (defined $exp && !ref $exp) {
            $exp =~ s/\$ServerPort\b/$ServerPort/g;
            $exp =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
            $exp = _expand_env($exp, $name);
        }
        SKIP: {
            Test::More::skip("$name - response_body - tests skipped due to "
                             . "$dry", 1) if $dry;
            my $desc = "$name - response_body - ";
            if (ref $exp) {
                Test::More::like($content, $exp,
                    "${desc}like (repeated req $rep, req $idx)");
            } else {
                Test::More::is($content, $exp,
                    "${desc}response is expected (repeated req $rep, req $idx)");
            }
        }
    } elsif (defined $block->response_body_like
             || defined $block->response_body_unlike)
    {
        my $type = defined $block->response_body_like ? 'like' : 'unlike';
        my $meth = "response_body_$type";
        my $pat = _indexed($name, scalar $block->$meth, $idx, $need);
        $pat =~ s/\$ServerPort\b/$ServerPort/g;
        $pat =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
        my $summary = defined $content ? $content : '';
        $summary =~ s/^\s+|\s+$//g;
        $summary =~ s/\s+/ /g;
        SKIP: {
            Test::More::skip("$name - $meth - tests skipped due to $dry", 1)
                if $dry;
            my $desc = "$name - $meth - response is expected ($summary)";
            if ($type eq 'like') {
                Test::More::like($content, qr/$pat/s, $desc);
            } else {
                Test::More::unlike($content, qr/$pat/s, $desc);
            }
        }
    }
    for my $check (@ResponseBodyChecks) {
        $check->($block, $content, $idx, $rep, $dry);
    }
}

sub _pattern_list {
    my ($pats) = @_;
    if (!ref $pats) {
        chomp $pats;
        return [ split /\n+/, $pats ];
    }
    return [$pats] if ref $pats eq 'Regexp';
    return [@$pats];
}

sub _matches {
    my ($line, $pat) = @_;
    return ref $pat ? $line =~ $pat : index($line, $pat) >= 0;
}

sub _contains {
    my ($val, $s) = @_;
    return 0 unless defined $val;
    if (ref $val eq 'ARRAY') {
        for (@$val) { return 1 if _contains($_, $s) }
        return 0;
    }
    return index("$val", $s) >= 0;
}

sub _check_error_log {
    my ($block, $dry, $rep) = @_;
    my $name = $block->name;
    my $lines;
    my %warn_on = map { $_ => 1 } qw(alert crit emerg);

    my $grep = $block->grep_error_log;
    if (defined $grep) {
        $grep = $grep->[$rep] if ref $grep eq 'ARRAY';
    } elsif (defined $block->grep_error_log_out) {
        bail_out("$name - No --- grep_error_log defined but "
                 . "--- grep_error_log_out is defined");
    }
    if (defined $grep) {
        my $exp = $block->grep_error_log_out;
        bail_out("$name - No --- grep_error_log_out defined but "
                 . "--- grep_error_log is defined") unless defined $exp;
        $exp = $exp->[$rep] if ref $exp eq 'ARRAY';
        $exp = _expand_env($exp, $name);
        SKIP: {
            Test::More::skip("$name - error_log - tests skipped due to $dry", 1)
                if $dry;
            $lines ||= _error_log_lines();
            my $got = '';
            for my $l (@$lines) {
                my $m;
                if (ref $grep) {
                    $m = $& if $l =~ $grep;
                } elsif (index($l, $grep) >= 0) {
                    $m = $grep;
                }
                $got .= "$m\n" if defined $m && $m !~ /\n/;
            }
            my $desc = "$name - grep_error_log_out (req $rep)";
            if (ref $exp eq 'Regexp') {
                Test::More::like($got, $exp, $desc);
            } else {
                Test::More::is($got, $exp, $desc);
            }
        }
    }

    if (defined $block->error_log) {
        my $raw = $block->error_log;
        for my $lvl (keys %warn_on) {
            delete $warn_on{$lvl} if _contains($raw, "[$lvl");
        }
        my $pats = _pattern_list($raw);
        $lines ||= _error_log_lines();
        for my $l (@$lines) {
            for my $p (@$pats) {
                next unless defined $p;
                next unless _matches($l, $p);
                SKIP: {
                    Test::More::skip("$name - error_log - tests skipped due "
                                     . "to $dry", 1) if $dry;
                    Test::More::pass("$name - pattern \"$p\" matches a line "
                                     . "in error.log (req $rep)");
                }
                undef $p;
            }
        }
        for my $p (@$pats) {
            next unless defined $p;
            SKIP: {
                Test::More::skip("$name - error_log - tests skipped due to "
                                 . "$dry", 1) if $dry;
                Test::More::fail("$name - pattern \"$p\" should match a line "
                                 . "in error.log (req $rep)");
            }
        }
    }

    if (defined $block->no_error_log) {
        my $raw = $block->no_error_log;
        for my $lvl (keys %warn_on) {
            delete $warn_on{$lvl} if _contains($raw, "[$lvl");
        }
        my $pats = _pattern_list($raw);
        $lines ||= _error_log_lines();
        my %found;
        for my $l (@$lines) {
            for my $p (@$pats) {
                next unless defined $p;
                next unless _matches($l, $p);
                Test::More->builder->no_ending(1) if $found{$p}++;
                SKIP: {
                    Test::More::skip("$name - no_error_log - tests skipped due "
                                     . "to $dry", 1) if $dry;
                    Test::More::fail("$name - pattern \"" . _fmt($p)
                        . "\" should not match any line in error.log but "
                        . "matches line \"" . _fmt($l) . "\" (req $rep)");
                }
            }
        }
        for my $p (@$pats) {
            next if !defined $p || $found{$p};
            SKIP: {
                Test::More::skip("$name - no_error_log - tests skipped due to "
                                 . "$dry", 1) if $dry;
                Test::More::pass("$name - pattern \"" . _fmt($p)
                                 . "\" does not match a line in error.log "
                                 . "(req $rep)");
            }
        }
    }

    if (!$dry) {
        $lines ||= _error_log_lines();
        for my $l (@$lines) {
            for my $lvl (sort keys %warn_on) {
                warn "WARNING: $name - " . _fmt($l) . "\n"
                    if $l =~ /\[\Q$lvl\E\]/;
            }
        }
    }
    for my $l (@{ $lines || [] }) {
        if ($l =~ /\bAssertion .*?failed\b/) {
            Test::More->builder->no_ending(1);
            (my $x = $l) =~ s/\n$//;
            Test::More::fail("$name - $x\n");
        }
    }
}

sub _check_shutdown_error_log {
    my ($block, $dry) = @_;
    my $name = $block->name;
    my $lines;
    if (defined $block->shutdown_error_log) {
        my $pats = _pattern_list(scalar $block->shutdown_error_log);
        $lines ||= _error_log_lines();
        for my $l (@$lines) {
            for my $p (@$pats) {
                next unless defined $p && _matches($l, $p);
                SKIP: {
                    Test::More::skip("$name - shutdown_error_log - tests "
                                     . "skipped due to dry_run", 1) if $dry;
                    Test::More::pass("$name - pattern \"$p\" matches a line "
                                     . "in error.log");
                }
                undef $p;
            }
        }
        for my $p (@$pats) {
            next unless defined $p;
            SKIP: {
                Test::More::skip("$name - shutdown_error_log - tests skipped "
                                 . "due to dry_run", 1) if $dry;
                Test::More::fail("$name - pattern \"$p\" should match a line "
                                 . "in error.log");
            }
        }
    }
    if (defined $block->no_shutdown_error_log) {
        my $pats = _pattern_list(scalar $block->no_shutdown_error_log);
        $lines ||= _error_log_lines();
        my %found;
        for my $l (@$lines) {
            for my $p (@$pats) {
                next unless defined $p && _matches($l, $p);
                $found{$p}++;
                SKIP: {
                    Test::More::skip("$name - no_shutdown_error_log - tests "
                                     . "skipped due to dry_run", 1) if $dry;
                    Test::More::fail("$name - pattern \"" . _fmt($p)
                        . "\" should not match any line in error.log but "
                        . "matches line \"" . _fmt($l) . "\"");
                }
            }
        }
        for my $p (@$pats) {
            next if !defined $p || $found{$p};
            SKIP: {
                Test::More::skip("$name - no_shutdown_error_log - tests "
                                 . "skipped due to dry_run", 1) if $dry;
                Test::More::pass("$name - pattern \"" . _fmt($p)
                                 . "\" does not match a line in error.log");
            }
        }
    }
}

sub _check_prev_shutdown_log {
    my $block = $PrevBlock;
    return unless $block;
    undef $PrevBlock;
    return unless defined $block->shutdown_error_log
               || defined $block->no_shutdown_error_log;
    my $dry = ($UseHup || $NoClean) ? 1 : 0;
    _check_shutdown_error_log($block, $dry);
}

# ----------------------------------------------------------------------
# Running one block
# ----------------------------------------------------------------------

sub _run_requests {
    my ($block, $dry, $rep) = @_;
    my $name = $block->name;
    my $reqs = _requests_from_block($block);
    bail_out("$name - request empty") unless @$reqs;

    my $timeout = _parse_time(scalar $block->timeout);
    $timeout = $Timeout unless defined $timeout;
    my $pipelined = $block->pipelined_requests;
    my $need = $pipelined ? 1 : (@$reqs > 1 ? 1 : 0);
    my $idx = 0;

    for my $ri (0 .. $#$reqs) {
        my $one = $reqs->[$ri];
        my $joined = join '', map { $_->{value} } @$one;
        my $head = $joined =~ /^\s*HEAD\s+/ ? 1 : 0;
        my $raw = $dry ? "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
                       : _send_request($one, scalar $block->raw_request_middle_delay,
                                       $timeout, $block);
        $raw = '' unless defined $raw;
        my $n = $pipelined ? scalar(@$pipelined) : 0;

        while (1) {
            my ($res, $raw_headers, $left);
            unless (defined $block->ignore_response) {
                if (defined $block->http09) {
                    $res = HTTP::Response->new(200, 'OK', [], $raw);
                    $raw_headers = '';
                } else {
                    ($res, $raw_headers, $left) =
                        _parse_response($name, $raw, $head);
                }
            }
            if ($n) {
                $raw = defined $left ? $left : '';
                $n--;
            } elsif (defined $left && length $left) {
                (my $l = $left) =~ s/([\0-\037\200-\377])/sprintf('\x{%02x}', ord $1)/eg;
                warn "WARNING: $name - unexpected extra bytes after last "
                     . "chunk in response: \"$l\"\n";
            }
            unless (defined $block->ignore_response) {
                $raw_headers = '' unless defined $raw_headers;
                _check_error_code($block, $res, $dry, $idx, $need);
                _check_raw_headers($block, $raw_headers, $dry, $idx, $need);
                _check_headers($block, $res, $raw_headers, $dry, $idx, $need);
                _apply_body_filters($block, $res, $idx);
                _check_body($block, $res, $dry, $idx, $rep, $need);
            }
            if ($n || $ri < $#$reqs) {
                Time::HiRes::sleep(_parse_time(scalar $block->wait))
                    if $block->wait;
                _check_error_log($block, $dry, $rep);
            }
            $idx++;
            last unless $n;
        }
    }
    Time::HiRes::sleep(_parse_time(scalar $block->wait)) if $block->wait;
    _check_error_log($block, $dry, $rep);
}

sub _version_probe_ok {
    my ($block) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => $ServerAddr,
                                     PeerPort => $ServerPort, Proto => 'tcp',
                                     Timeout => 2) or return 0;
    binmode $sock;
    print $sock "GET /ver HTTP/1.1\r\nHost: Test-Nginx\r\n"
                . "Connection: close\r\n\r\n";
    my $resp = '';
    my $sel = IO::Select->new($sock);
    while ($sel->can_read(2)) {
        my $n = sysread($sock, my $buf, 4096);
        last unless $n;
        $resp .= $buf;
    }
    close $sock;
    my ($res) = _parse_response($block->name, $resp, 0);
    return $res && ($res->content // '') eq $ConfigVersion;
}

sub _hup_reload {
    my ($block, $config, $pid) = @_;
    my $name = $block->name;
    _setup_server_root(1);
    _run_post_setup($block);
    _write_user_files($block);
    _write_config($block, $config);
    kill 'USR1', $pid or return 0;
    Time::HiRes::sleep($Sleep);
    kill 'HUP', $pid or return 0;
    Time::HiRes::sleep($Sleep * 3);
    if (defined $block->reload_fails) {
        Time::HiRes::sleep(0.3);
        return 1;
    }
    my $ok = 0;
    for my $try (1 .. 200) {
        if (_version_probe_ok($block)) {
            return 1 if ++$ok >= 20;
            next;
        }
        $ok = 0;
        my $w = ($Sleep + $Sleep * $try) * $try / 2;
        $w = 1 if $w > 1;
        Time::HiRes::sleep($w);
    }
    Test::More->builder->no_ending(1);
    Test::More::fail("$name - failed to reload configuration after 200 "
                     . "failed test requests");
    return 1;
}

sub _skip_info {
    my ($block) = @_;
    my $name = $block->name;
    my $ver = _nginx_version();
    my $canon = sub { sprintf "%d.%03d%03d", @_ };
    if (defined(my $s = $block->skip_nginx)) {
        $s =~ /^\s*(\d+)\s*:\s*([<>]=?)\s*(\d+)\.(\d+)\.(\d+)(?:\s*:\s*(.*))?\s*$/
            or bail_out("$name - Invalid --- skip_nginx spec: $s");
        my ($n, $op, $reason) = ($1, $2, $6);
        my $v = $canon->($3, $4, $5);
        my $skip = eval "$ver $op $v";
        return ($n, $reason || "nginx version $op $3.$4.$5") if $skip;
        return;
    }
    if (defined(my $s = $block->skip_eval)) {
        if ($s =~ /^\s*(\d+)\s*:\s*(.*)/s) {
            my ($n, $code) = ($1, $2);
            my $skip = eval $code;
            bail_out("$name - skip_eval - failed to eval the Perl code "
                     . "\"$code\": $@") if $@;
            return ($n, 'skip_eval') if $skip;
        }
    }
    return;
}

sub run_test {
    my ($block) = @_;
    return if defined $block->SKIP;
    my $name = $block->name;

    $RandPorts = {};
    my $config = _expand_env(scalar $block->config, $name);
    my $must_die = $block->must_die;
    local $UseHup = $UseHup;
    local $UseValgrind = $UseValgrind;
    local $Daemon = $Daemon;
    if (defined $must_die) {
        undef $UseHup;
        if ($UseValgrind) { undef $UseValgrind; $Daemon = 'on' }
    }

    my ($to_skip, $skip_reason) = _skip_info($block);
    my $should_restart = 1;
    if (!defined $config) {
        if (!$NoNginxManager && !defined $PrevConfig) {
            bail_out("$name - No '--- config' section specified and could "
                     . "not get previous one.");
        }
        $should_restart = 0;
    } elsif ($NoNginxManager) {
        $should_restart = 0;
    } elsif (defined $PrevConfig && $config eq $PrevConfig && !$ForceRestart
             && _pid_alive(_read_pid()))
    {
        $should_restart = 0;
    }

    if (!$NoNginxManager && !$to_skip && $should_restart) {
        $PrevConfig = $config;
        my $pid = _read_pid();
        my $reloaded = 0;
        if ($UseHup) {
            $ConfigVersion = join '', map { ('a'..'z', 0..9)[rand 36] } 1..10;
        }
        if (defined $pid && _pid_alive($pid) && $UseHup && !$FirstStart) {
            $reloaded = _hup_reload($block, $config, $pid);
            _check_prev_shutdown_log() if $reloaded;
        }
        if (!$reloaded) {
            _stop_nginx($name) if defined $pid || defined $ChildPid;
            unlink $PidFile if -f $PidFile;
            _check_prev_shutdown_log();
            _setup_server_root(0);
            _run_post_setup($block);
            _write_user_files($block);
            _write_config($block, $config);
            $FirstStart = 0;

            if (defined $must_die) {
                $ErrLogPos = 0;
                for my $i (0 .. $RepeatEach - 1) {
                    my ($status, $code, $sig) = _run_nginx_once($block);
                    if ($status == -1) {
                        Test::More::fail("$name - failed to execute the nginx "
                                         . "command line");
                    } elsif ($sig) {
                        Test::More::fail("$name - nginx core dumped");
                    } elsif (Scalar::Util::looks_like_number($must_die)) {
                        Test::More::is($must_die, $code,
                                       "$name - die with the expected exit code");
                    } else {
                        Test::More::isnt($status, 0, "$name - die as expected");
                    }
                    _check_error_log($block, 0, $i);
                    if ($status == 0) {
                        warn "WARNING: $name - nginx must die but it does "
                             . "not; killing it (req $i)\n";
                        _wait_pid_file(1);
                        _stop_nginx($name);
                    }
                }
                return;
            }
            _start_nginx($block);
        }
    }

    if (defined(my $init = $block->init)) {
        eval $init;
        bail_out("$name - init failed: $@") if $@;
    }

    $ErrLogPos = 0;
    for my $i (0 .. $RepeatEach - 1) {
        _write_user_files($block) if $i > 0;
        if ($to_skip) {
            SKIP: {
                Test::More::skip("$name - $skip_reason", $to_skip);
            }
            next;
        }
        _run_requests($block, 0, $i);
    }

    if ($UseValgrind && !$UseHup) {
        _stop_nginx($name);
    }
}

sub run_tests {
    srand($$ ^ int(Time::HiRes::time() * 1000000));
    $ENV{TEST_NGINX_SERVER_PORT} = $ServerPort
        if $Randomize || !defined $ENV{TEST_NGINX_SERVER_PORT};
    my @blocks = Test::Base::blocks();
    @blocks = List::Util::shuffle(@blocks) unless $NoShuffle;
    for my $block (@blocks) {
        $_->($block) for @BlockPreprocessors;
        $block->set_value('name', "$0 " . $block->name);
        run_test($block);
        $_->($block) for @TestCleanupHandlers;
        $PrevBlock = $block;
    }
    _finish();
}

my $Finished = 0;

sub _finish {
    return if $Finished++;
    cleanup();
    _check_prev_shutdown_log();
    # the per-file servroot "<base>_<port>" is ours: remove it
    if ($Randomize && !$NoClean && -d $ServRoot
        && $ServRoot eq $OwnServRoot)
    {
        File::Path::remove_tree($ServRoot);
    }
}

for my $sig (qw(INT TERM HUP)) {
    $SIG{$sig} = sub {
        $SIG{$sig} = 'DEFAULT';
        local $?;
        _stop_nginx("signal $sig");
        File::Path::remove_tree($OwnServRoot)
            if $OwnServRoot && !$NoClean && -d $OwnServRoot;
        kill $sig, $$;
    };
}

END {
    local $?;
    _finish();
}

1;
__END__

=head1 NAME

Test::Nginx::Socket - clean-room compatible fallback runner (kv module t/)

=head1 DESCRIPTION

This is B<not> openresty's Test::Nginx. It is a small, independently written
runner that accepts the same C<.t> file format (Test::Base C<__DATA__>
blocks, C<use Test::Nginx::Socket 'no_plan';>, C<run_tests();>) and produces
the same number of TAP tests per block, so that the project's suites pass
under both. It is only used when the real module is not installed
(C<prove -I t/compat ...>).

Built on Test::Base (libtest-base-perl), IO::Socket::INET and HTTP::Response
(libhttp-message-perl); everything else is core Perl.

Supported: repeat_each, no_shuffle (blocks are shuffled otherwise),
no_long_string, no_diff, log_level, workers, master_on/off,
master_process_enabled, env_to_nginx, worker_connections, config_preamble,
no_root_location, server_name, server_root, html_dir, server_port, timeout,
add_block_preprocessor, add_response_body_check; sections config,
http_config, main_config, post_main_config, user_files, init,
post_setup_server_root, request (plain, eval string/array/packet arrays),
more_headers (string or array), pipelined_requests, raw_request (string or
packet array), raw_request_middle_delay, shutdown, abort, http09, timeout,
wait, error_code(_like), response_headers(_like), raw_response_headers_like/
unlike, response_body (string/eval/array/Regexp), response_body_like/unlike,
response_body_filters, error_log, no_error_log, grep_error_log(_out),
shutdown_error_log, no_shutdown_error_log, must_die (incl. exit code),
ignore_response, log_level, error_log_file, server_name, skip_nginx,
skip_eval, suppress_stderr, ONLY/SKIP/LAST. Modes: TEST_NGINX_USE_HUP and
TEST_NGINX_USE_VALGRIND (output in servroot/logs/valgrind.PID.log, echoed to
stderr after nginx exits).

Port/servroot: with TEST_NGINX_RANDOMIZE a free random port is picked per
test file and the server root is "<TEST_NGINX_SERVROOT or t/servroot>_<port>"
(removed at the end); otherwise TEST_NGINX_SERVER_PORT / TEST_NGINX_PORT /
1984 and TEST_NGINX_SERVROOT / t/servroot.

Not supported: stap*, tcp_listen/udp_listen, access_log checks, http2/http3,
curl, check-leak and benchmark modes. See t/compat/README.md.

=cut
