# nginx -t never writes to the data directory: it does not create a missing
# one, and it leaves an existing one byte-identical (contents, names, sizes,
# mtimes), also while a server is running on it.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep);
use Digest::MD5 qw(md5_hex);
use File::Find;
use KvTest qw(read_file);

# name => "size md5 mtime mode" for the directory and everything in it
sub snapshot {
    my ($dir) = @_;
    my %s;
    return \%s unless -e $dir;
    find({ no_chdir => 1, wanted => sub {
        my @st = lstat $_;
        my $sum = -f _ ? md5_hex(read_file($_) // '') : '-';
        (my $rel = $_) =~ s/^\Q$dir\E/./;
        # mtime with sub-second precision where available
        my $mtime = (stat $_)[9];
        my $ns = '';
        if (open my $p, '-|', 'stat', '-c', '%y %s', $_) { $ns = <$p> // ''; close $p; chomp $ns }
        $s{$rel} = join ' ', $st[7], $sum, $mtime, $ns, sprintf('%o', $st[2]), $st[4], $st[5];
    }}, $dir);
    return \%s;
}

# --- a data directory that does not exist (nor does its parent)
{
    my $missing = KvTest::tmp_root() . "/nginx-t-missing/sub/dir";
    my $srv = KvTest->new(name => 'nt-missing', data_dir => $missing);
    my ($rc, $out) = $srv->nginx_t;
    is $rc, 0, 'nginx -t succeeds with a missing data directory' or diag $out;
    like $out, qr/test is successful/, 'nginx -t reports success';
    ok !-e $missing, 'the data directory was not created';
    ok !-e KvTest::tmp_root() . "/nginx-t-missing", 'nor its parent';
}

# --- an existing data directory with data, no server running
my $srv = KvTest->new(name => 'nt-existing', workers => 2);
$srv->start_ok or BAIL_OUT("cannot start nginx");
for my $i (1 .. 50) {
    $srv->put("k$i", "value $i") ;
}
$srv->req(DELETE => '/db/k3');
ok $srv->stop, 'stopped';
my $dir = $srv->data_dir;
my $before = snapshot($dir);
ok scalar(keys %$before) >= 2, 'snapshot of the data directory (' . join(' ', sort keys %$before) . ')';
sleep 1.1;    # a write would now move mtimes by a visible amount
my ($rc, $out) = $srv->nginx_t;
is $rc, 0, 'nginx -t succeeds on an existing data directory' or diag $out;
is_deeply snapshot($dir), $before, 'data directory byte-identical, mtimes unchanged';

# --- while a server runs on it
$srv->start_ok('server running on the directory');
is $srv->get('k1')->{body}, 'value 1', 'server serves the data';
my $during = snapshot($dir);
sleep 1.1;
($rc, $out) = $srv->nginx_t;
is $rc, 0, 'nginx -t succeeds while the directory is in use' or diag $out;
is_deeply snapshot($dir), $during, 'data directory untouched by nginx -t while in use';
is $srv->get('k2')->{body}, 'value 2', 'server still serves';
is $srv->put('after-t', 'works')->{status}, 201, 'server still writes';
is $srv->get('after-t')->{body}, 'works', 'and reads the write back';

# the running server still holds the directory lock: a second instance is refused
my $other = KvTest->new(name => 'nt-second', data_dir => $dir);
my ($rc2, $out2) = $other->start_raw;
isnt $rc2, 0, 'after nginx -t, a second instance is still refused (lock held)';
$other->stop if $rc2 == 0;

ok $srv->stop, 'graceful stop';
done_testing;
