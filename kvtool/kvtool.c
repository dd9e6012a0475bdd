#define _GNU_SOURCE

/*
 * kvtool COMMAND ...: see kvtool_usage().  This file only reads the
 * command line and dispatches to the command's file; what the commands
 * share is in kvtool_util.c.
 */

#include <inttypes.h>
#include <string.h>

#include "kvtool.h"


static const char  *kvtool_usage_text =
    "usage: kvtool COMMAND [OPTIONS] ARGS\n"
    "\n"
    "  check DIR               verify every record and hint file; exit 1\n"
    "                          on damage (works on a running store)\n"
    "  dump DIR                print every live key as one JSON object per\n"
    "                          line, sorted by key (works on a running "
    "store)\n"
    "  compact [--segment-size=SIZE] [--index=hash|sorted] DIR\n"
    "                          compact a stopped store; --index=sorted\n"
    "                          writes every key into sorted segments (for\n"
    "                          index=sorted), --index=hash into log\n"
    "                          segments; default: as the store is\n"
    "  import-seed [--segment-size=SIZE] FILE DIR\n"
    "                          import the original Go server's data file\n"
    "  repair DIR              move damaged records of a stopped store to\n"
    "                          DIR/lost+found so that it starts again\n"
    "  owner --servers=LIST DIR\n"
    "                          print \"SERVER<TAB>KEY\" for every key: the\n"
    "                          server of LIST that nginx's \"hash $kv_key\n"
    "                          consistent\" sends it to (KEY %-encoded)\n"
    "  reshard --servers=LIST --self=NAME [--prefix=/db/] [--dry-run] DIR\n"
    "                          move the keys of shard NAME (data in DIR)\n"
    "                          that LIST gives to other servers to them,\n"
    "                          over HTTP (works on a running store)\n"
    "\n"
    "Options go right after the command name.  --segment-size=SIZE (or\n"
    "--segment-size SIZE): new segments roll over at SIZE, which should be\n"
    "the kv_zone's segment_size; nginx's syntax (16m, 64k, 1g), from 64k\n"
    "to 512g, default 64m.\n"
    "\n"
    "dump prints {\"key\": ..., \"value\": ..., \"content_type\": ..., "
    "\"seq\": N}:\n"
    "a JSON value is embedded as JSON, other values and keys are strings\n"
    "when they are UTF-8 text, else \"value_base64\" and \"key_base64\".\n"
    "\n"
    "LIST: the server names of the router's upstream block, as written\n"
    "there, separated by commas, each optionally followed by \" weight=N\".\n"
    "Exit codes: 0 ok, 1 damage found or the operation failed, 2 usage.\n";


static int
kvtool_usage(FILE *out, int code)
{
    fputs(kvtool_usage_text, out);

    return code;
}


/*
 * A size in nginx's syntax, as ngx_parse_offset() reads kv_zone's: digits
 * and an optional k, m or g (either case), nothing else.  -1 if s is not
 * one or does not fit.
 */
static int
kvtool_parse_size(const char *s, uint64_t *size)
{
    size_t    len, i;
    uint64_t  n, scale;

    len = strlen(s);

    switch (len > 0 ? s[len - 1] : '\0') {

    case 'K':
    case 'k':
        scale = 1024;
        len--;
        break;

    case 'M':
    case 'm':
        scale = 1024 * 1024;
        len--;
        break;

    case 'G':
    case 'g':
        scale = 1024 * 1024 * 1024;
        len--;
        break;

    default:
        scale = 1;
    }

    if (len == 0) {
        return -1;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9'
            || n > (UINT64_MAX - (uint64_t) (s[i] - '0')) / 10)
        {
            return -1;
        }

        n = n * 10 + (uint64_t) (s[i] - '0');
    }

    if (n > UINT64_MAX / scale) {
        return -1;
    }

    *size = n * scale;

    return 0;
}


/* the options given: what the commands that write take */
typedef struct {
    uint64_t     segment_size;
    unsigned     mode;          /* KVTOOL_WRITE, or as --index says */
} kvtool_opts_t;


/*
 * 1 if argv[*i] is the option name: --NAME=VALUE, or --NAME with VALUE the
 * next argument (*i moves to it); *value is NULL if none follows.
 */
static int
kvtool_option_is(int argc, char **argv, int *i, const char *name,
    const char **value)
{
    size_t       len;
    const char  *arg;

    arg = argv[*i];
    len = strlen(name);

    if (strncmp(arg, name, len) != 0
        || (arg[len] != '=' && arg[len] != '\0'))
    {
        return 0;
    }

    if (arg[len] == '=') {
        *value = arg + len + 1;

    } else if (*i + 1 < argc) {
        *value = argv[++*i];

    } else {
        *value = NULL;
    }

    return 1;
}


/*
 * The option at argv[*i]: --segment-size=SIZE or --index=hash|sorted, each
 * also with its value as the next argument.  KVTOOL_OK or KVTOOL_USAGE,
 * reported.
 */
static int
kvtool_option(int argc, char **argv, int *i, kvtool_opts_t *o)
{
    const char  *arg, *value;

    arg = argv[*i];

    if (kvtool_option_is(argc, argv, i, "--index", &value)) {
        if (value == NULL
            || (strcmp(value, "hash") != 0 && strcmp(value, "sorted") != 0))
        {
            kvtool_error("invalid \"%s\": --index is hash or sorted, as "
                         "kv_zone's index=", value ? value : arg);
            return KVTOOL_USAGE;
        }

        o->mode = value[0] == 's' ? KVTOOL_WRITE_SORTED : KVTOOL_WRITE_HASH;

        return KVTOOL_OK;
    }

    if (!kvtool_option_is(argc, argv, i, "--segment-size", &value)) {
        kvtool_error("unknown option \"%s\"", arg);
        return KVTOOL_USAGE;
    }

    if (value == NULL) {
        kvtool_error("the option \"%s\" needs a SIZE", arg);
        return KVTOOL_USAGE;
    }

    if (kvtool_parse_size(value, &o->segment_size) == -1
        || o->segment_size < KV_SEGMENT_SIZE_MIN
        || o->segment_size > KV_SEGMENT_SIZE_MAX)
    {
        kvtool_error("invalid --segment-size \"%s\": it must be a size "
                     "from %" PRIu64 " to %" PRIu64 " bytes, with an "
                     "optional k, m or g suffix, as kv_zone's segment_size",
                     value, KV_SEGMENT_SIZE_MIN, KV_SEGMENT_SIZE_MAX);
        return KVTOOL_USAGE;
    }

    return KVTOOL_OK;
}


int
main(int argc, char **argv)
{
    int            i, n, rc;
    const char    *cmd;
    kvtool_opts_t  o;

    if (argc < 2) {
        return kvtool_usage(stderr, KVTOOL_USAGE);
    }

    cmd = argv[1];

    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "-h") == 0
        || strcmp(cmd, "--help") == 0)
    {
        return kvtool_usage(stdout, KVTOOL_OK);
    }

    if (strcmp(cmd, "owner") == 0 || strcmp(cmd, "reshard") == 0) {
        rc = kvtool_reshard(argc - 1, argv + 1);
        return rc == KVTOOL_USAGE ? kvtool_usage(stderr, rc) : rc;
    }

    o.segment_size = KV_SEGMENT_SIZE_DEFAULT;
    o.mode = KVTOOL_WRITE;

    for (i = 2; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        rc = kvtool_option(argc, argv, &i, &o);
        if (rc != KVTOOL_OK) {
            return kvtool_usage(stderr, rc);
        }
    }

    /* only the commands that write new segments take --segment-size */
    if (i > 2 && strcmp(cmd, "compact") != 0
        && strcmp(cmd, "import-seed") != 0)
    {
        kvtool_error("\"%s\" takes no options", cmd);
        return kvtool_usage(stderr, KVTOOL_USAGE);
    }

    if (o.mode != KVTOOL_WRITE && strcmp(cmd, "compact") != 0) {
        kvtool_error("\"%s\" takes no --index: only compact does", cmd);
        return kvtool_usage(stderr, KVTOOL_USAGE);
    }

    n = argc - i;
    argv += i;

    if (n == 1 && strcmp(cmd, "check") == 0) {
        return kvtool_check(argv[0]);
    }

    if (n == 1 && strcmp(cmd, "dump") == 0) {
        return kvtool_dump(argv[0]);
    }

    if (n == 1 && strcmp(cmd, "compact") == 0) {
        return kvtool_compact(argv[0], o.segment_size, o.mode);
    }

    if (n == 2 && strcmp(cmd, "import-seed") == 0) {
        return kvtool_import_seed(argv[0], argv[1], o.segment_size);
    }

    if (n == 1 && strcmp(cmd, "repair") == 0) {
        return kvtool_repair(argv[0]);
    }

    for (i = 0; i < n; i++) {
        if (strncmp(argv[i], "--", 2) == 0) {
            kvtool_error("the option \"%s\" comes after an argument: "
                         "options go right after the command name", argv[i]);
            return kvtool_usage(stderr, KVTOOL_USAGE);
        }
    }

    kvtool_error("bad command line");

    return kvtool_usage(stderr, KVTOOL_USAGE);
}
