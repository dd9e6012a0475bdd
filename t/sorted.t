# index=sorted through HTTP: a zone that holds a few thousand keys takes
# many times more (merges into sorted segments instead of 507), every key
# is read back, deletes and overwrites win over the sorted segments,
# listing walks them all, and all of it survives a restart; /kv/status
# says where the keys are.  A directory written in index=hash with more
# keys than the zone holds opens too.

use strict;
use warnings;

use Test::More;
use JSON::PP ();
use POSIX qw(WNOHANG);
use KvTest qw(http_req http_pipelined);

my $N = 40000;

my $srv = KvTest->new(name => 'sorted', workers => 2, zone_size => '256k',
                      endpoints => 1,
                      zone_extra => 'index=sorted segment_size=1m',
                      http_extra => '    kv_list on;');
$srv->start_ok or BAIL_OUT("cannot start nginx");
my $port = $srv->port;

sub key { sprintf "key:%06d", $_[0] }
sub val { "value of $_[0] round $_[1]" }

# writes in pipelined batches; a 507 (the index full while a merge runs)
# is retried after a pause, as a client would
my %want;
my $retried = 0;

sub write_all {
    my ($round, @ids) = @_;
    while (@ids) {
        my @batch = splice @ids, 0, 200;
        my @todo = @batch;
        for my $try (1 .. 50) {
            my @rs = http_pipelined($port, map {
                $round ? ['PUT', '/db/' . key($_), val($_, $round),
                          'application/octet-stream']
                       : ['DELETE', '/db/' . key($_)]
            } @todo);
            my @again;
            for my $i (0 .. $#todo) {
                my $st = $rs[$i] ? $rs[$i]{status} : 0;
                if ($st == 507 || $st == 0) {
                    push @again, $todo[$i];
                } elsif ($st == ($round ? 201 : 200)) {
                    if ($round) { $want{key($todo[$i])} = val($todo[$i], $round) }
                    else        { delete $want{key($todo[$i])} }
                } else {
                    die "unexpected $st for " . key($todo[$i]);
                }
            }
            $retried += @again;
            last unless @again;
            @todo = @again;
            select(undef, undef, undef, 0.05);
        }
    }
}

write_all(1, 0 .. $N - 1);
is(scalar keys %want, $N, "$N keys written through a 256k zone");

my $st = $srv->status;
is($st->{index}{mode}, 'sorted', 'status: index=sorted');
ok($st->{sorted_segments}{count} > 0, 'status: sorted segments exist ('
   . $st->{sorted_segments}{count} . ')');
ok($st->{index}{keys} < $N / 4, "status: the index holds $st->{index}{keys}"
   . " keys of $N");
diag("writes retried after a 507: $retried");

# overwrite and delete some of them, some in the index and some not
write_all(2, grep { $_ % 7 == 0 } 0 .. $N - 1);
write_all(0, grep { $_ % 5 == 0 } 0 .. $N - 1);

sub check_all {
    my ($tag) = @_;
    my ($bad, $n) = (0, 0);
    my @ids = (0 .. $N - 1);
    while (my @batch = splice @ids, 0, 500) {
        my @rs = http_pipelined($port, map { ['GET', '/db/' . key($_)] }
                                       @batch);
        for my $i (0 .. $#batch) {
            my $k = key($batch[$i]);
            my $r = $rs[$i];
            if (exists $want{$k}) {
                $bad++ unless $r && $r->{status} == 200
                              && $r->{body} eq $want{$k};
            } else {
                $bad++ unless $r && $r->{status} == 404;
            }
            $n++;
        }
    }
    is($bad, 0, "$tag: each of $n keys holds its last value or is gone");
}

sub walk {
    my ($limit) = @_;
    my (@keys, $cursor, $pages);
    $pages = 0;
    do {
        my $r = http_req($port, 'GET', "/db/?limit=$limit"
                         . (defined $cursor ? "&cursor=$cursor" : ''));
        die "listing: $r->{status}" unless $r->{status} == 200;
        my $page = JSON::PP::decode_json($r->{body});
        push @keys, @{ $page->{keys} };
        $cursor = $page->{cursor};
        $pages++;
    } while (defined $cursor);
    return (\@keys, $pages);
}

sub check_list {
    my ($tag) = @_;
    my ($keys, $pages) = walk(1000);
    is_deeply($keys, [sort keys %want],
              "$tag: a walk by cursor lists exactly the live keys, in order "
              . "($pages pages)");
}

check_all('after merges');
check_list('after merges');

$srv->stop;
$srv->start_ok('restarted') or BAIL_OUT("cannot restart nginx");
like($srv->log_text, qr/recovered \d+ records/, 'recovery logged');

check_all('after a restart');
check_list('after a restart');

# an operator's compaction merges every run into one
my ($code, $done) = $srv->compact_and_wait;
is($code, 202, 'POST /kv/compact');
ok($done, 'the full merge ended');
is($srv->status->{sorted_segments}{runs}, 1, 'one run left');
check_all('after a full merge');
check_list('after a full merge');

$srv->stop;

# A directory written in index=hash with more keys than this zone holds:
# index=sorted moves them into sorted segments as it starts, and says so in
# error.log; a start killed during that leaves nothing lost, and the next
# one converts again.  Then the same zone serves and lists every key.
{
    my $M = 20000;
    my $h = KvTest->new(name => 'sorted-convert', zone_size => '8m',
                        endpoints => 1,
                        zone_extra => 'segment_size=1m');
    $h->start_ok('index=hash, 8m') or BAIL_OUT("cannot start nginx");
    my $bad = 0;
    my @ids = (0 .. $M - 1);
    while (my @batch = splice @ids, 0, 500) {
        my @rs = http_pipelined($h->port, map {
            ['PUT', '/db/' . key($_), val($_, 1), 'application/octet-stream']
        } @batch);
        $bad += grep { !$_ || $_->{status} != 201 } @rs;
    }
    is($bad, 0, "$M keys written in index=hash");
    $h->stop;

    my $dir = $h->data_dir;
    $h->set(zone_size => '256k',
            zone_extra => 'index=sorted segment_size=1m',
            http_extra => '    kv_list on;');

    # a zone added by a reload does not convert: the master would hold
    # the reload for it; it answers 503 and error.log says what to do
    {
        my $r = KvTest->new(name => 'sorted-reload', zone_size => '256k');
        $r->start_ok('another nginx') or BAIL_OUT("cannot start nginx");
        $r->set(http_extra => "    kv_zone zone=late:256k path=$dir "
                              . 'index=sorted segment_size=1m;',
                server_extra => '        location /late/ { kv late; }');
        ok($r->reload, 'a reload adds a zone over the hash directory');
        my $late = http_req($r->port, 'GET', '/late/' . key(1));
        is($late->{status}, 503, 'that zone answers 503');
        like($r->log_since,
             qr/index memory too small for the keys in "\Q$dir\E": index=sorted holds the keys of the log segments: .*nginx does as it starts/,
             'error.log says that a start moves the keys');
        unlike($r->log_since, qr/hold more keys than the index memory/,
               'the reload did not convert');
        $r->stop;
    }

    # killed as soon as the conversion's merge has begun, if it has by then
    my $pid = $h->start_spawn;
    my ($merging, $exited) = (0, 0);
    for (1 .. 60000) {
        if (-e "$dir/MERGE") {
            $merging = 1;
            last;
        }
        if (waitpid($pid, WNOHANG) == $pid) {
            $exited = 1;
            last;
        }
        select(undef, undef, undef, 0.0005);
    }
    if ($exited) {
        is($?, 0, 'the start that converted ended well');
    } else {
        kill 'KILL', $pid;
        waitpid($pid, 0);
    }
    # the start may have ended, and nginx daemonized, just before the kill
    if ($exited || KvTest::wait_until(sub { -e $h->pid_file }, 1)) {
        $h->wait_ready;
        $h->stop;
    }
    note($merging ? 'the start was killed during the conversion'
                  : 'the start ended before the kill');

    $h->start_ok('index=sorted, 256k: the hash directory opens')
        or BAIL_OUT("cannot start nginx");
    # every start that began to convert says why, and each one not killed
    # says when it ended (a kill after the merge's commit, before MERGE is
    # removed, leaves nothing for the next start to convert)
    my $began = () = $h->log_text =~
        /the log segments of "\Q$dir\E" hold more keys than the index memory .*index=sorted moves them into sorted segments first/g;
    my $ended = () = $h->log_text =~
        /moved the keys of "\Q$dir\E" into sorted segments in \d+ ms/g;
    ok($began >= 1, 'error.log says why the keys move');
    ok($ended >= 1 && $began - $ended <= ($exited ? 0 : 1),
       'error.log says when they have moved')
        or diag("began $began, ended $ended, exited $exited");
    unlike($h->log_text, qr/\[(?:emerg|alert|crit|error)\]/,
           'no error in error.log');
    my $st = $h->status;
    is($st->{sorted_segments}{keys}, $M, "status: $M keys in sorted segments");
    $bad = 0;
    @ids = (0 .. $M - 1);
    while (my @batch = splice @ids, 0, 500) {
        my @rs = http_pipelined($h->port, map { ['GET', '/db/' . key($_)] }
                                          @batch);
        for my $i (0 .. $#batch) {
            $bad++ unless $rs[$i] && $rs[$i]{status} == 200
                          && $rs[$i]{body} eq val($batch[$i], 1);
        }
    }
    is($bad, 0, "every one of the $M keys reads back");
    %want = map { (key($_) => 1) } 0 .. $M - 1;
    $port = $h->port;
    check_list('after the conversion');
    $h->stop;
}

done_testing();
