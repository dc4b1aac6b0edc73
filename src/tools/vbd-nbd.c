/* SPDX-License-Identifier: MIT */
/*
 * vbd-nbd: qemu-nbd's command line (QEMU 7.2) over vbd's NBD server, so
 * that a qemu-nbd user need not learn --blockdev/--export. One image, one
 * export, served until the last client leaves (-t: until a signal). The
 * options are read as qemu-nbd reads them (same defaults, the same exit
 * status and error lines for bad options and images); what is then opened
 * and served is the daemon's: vbd_open, the daemon's node and export
 * tables, the one NBD server. README's "vbd-nbd" section lists what
 * still differs.
 */
#include "common.h"
#include "nbd-list.h"
#include "daemon/daemon.h"
#include "daemon/objects.h"
#include "qmp/cmd-export.h"
#include "qmp/commands.h"

#include "vbd/alloc.h"
#include "vbd/authz.h"
#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/iothread.h"
#include "vbd/loop.h"
#include "vbd/nbd.h"
#include "vbd/options.h"
#include "vbd/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NBD_DEFAULT_PORT "10809"
#define NBD_MAX_STRING 4096 /* qemu-nbd's NBD_MAX_STRING_SIZE for -x and -D */
#define NODE_NAME "qemu-nbd-node"
#define BASE_NAME "qemu-nbd-base"

enum { OPT_CACHE = 256, OPT_AIO, OPT_DISCARD, OPT_DETECT_ZEROES, OPT_OBJECT, OPT_TLSCREDS, OPT_IMAGE_OPTS, OPT_FORK,
       OPT_TLSAUTHZ, OPT_PID_FILE, OPT_SELINUX_LABEL, OPT_TLSHOSTNAME };

static const char *prog = "vbd-nbd";

static void usage(void)
{
    printf("Usage: %s [OPTIONS] FILE\n"
           "  or:  %s -L [OPTIONS]\n"
           "Serve FILE over NBD with qemu-nbd's options (vbd's NBD server)\n"
           "\n"
           "  -h, --help                display this help and exit\n"
           "  -V, --version             output version information and exit\n"
           "\n"
           "Connection properties:\n"
           "  -p, --port=PORT           port to listen on (default `" NBD_DEFAULT_PORT "')\n"
           "  -b, --bind=IFACE          interface to bind to (default `0.0.0.0')\n"
           "  -k, --socket=PATH         path to the unix socket\n"
           "  -e, --shared=NUM          device can be shared by NUM clients (default '1', 0: no limit)\n"
           "  -t, --persistent          don't exit on the last connection\n"
           "  -v, --verbose             display extra debugging information\n"
           "  -x, --export-name=NAME    expose export by name (default is empty string)\n"
           "  -D, --description=TEXT    export a human-readable description\n"
           "\n"
           "Exposing part of the image:\n"
           "  -o, --offset=OFFSET       offset into the image\n"
           "  -A, --allocation-depth    expose the allocation depth\n"
           "  -B, --bitmap=NAME         expose a persistent dirty bitmap\n"
           "\n"
           "General purpose options:\n"
           "  -L, --list                list exports available from another NBD server\n"
           "  --object type,id=ID,...   define an object (secret, tls-creds-x509/psk, authz-simple/list)\n"
           "  --tls-creds=ID            use id of an earlier --object to provide TLS\n"
           "  --tls-authz=ID            use id of an earlier --object to provide authorization\n"
           "  --fork                    fork off the server process and exit the parent\n"
           "                            once the server is running\n"
           "  --pid-file=PATH           store the server's process ID in the given file\n"
           "\n"
           "Block device options:\n"
           "  -f, --format=FORMAT       set image format (raw, qcow2, ...)\n"
           "  -r, --read-only           export read-only\n"
           "  -s, --snapshot            use FILE as an external snapshot, create a temporary\n"
           "                            file with backing_file=FILE, redirect the write to\n"
           "                            the temporary one\n"
           "  -l, --load-snapshot=SNAPSHOT_PARAM\n"
           "                            load an internal snapshot inside FILE and export it\n"
           "                            as an read-only device, SNAPSHOT_PARAM format is\n"
           "                            'snapshot.id=[ID],snapshot.name=[NAME]', or\n"
           "                            '[ID_OR_NAME]'\n"
           "  -n, --nocache             disable host cache\n"
           "      --cache=MODE          set cache mode used to access the disk image, the\n"
           "                            valid options are: 'none', 'writeback' (default),\n"
           "                            'writethrough', 'directsync' and 'unsafe'\n"
           "      --aio=MODE            set AIO mode (native, io_uring or threads)\n"
           "      --discard=MODE        set discard mode (ignore, unmap)\n"
           "      --detect-zeroes=MODE  set detect-zeroes mode (off, on, unmap)\n"
           "      --image-opts          treat FILE as a full set of image options\n"
           "\n"
           "Not supported (refused): -c/--connect and -d/--disconnect (kernel /dev/nbdN: use\n"
           "nbd-client), --selinux-label. -T/--trace is taken and ignored (vbd has no QEMU\n"
           "trace events; -v: a debug log).\n",
           prog, prog);
}

/* qemu-nbd's settings, as its main() keeps them */
static struct {
    const char *bindto, *port, *sockpath, *fmt, *export_name, *description, *tlscreds, *tlsauthz;
    const char *tlshostname, *pid_file, *snapshot, *filename, *selinux_label;
    struct vbd_tls_creds *list_creds; /* -L --tls-creds: a client's */
    const char **bitmaps; /* -B, in the order given: one meta context each */
    size_t nbitmaps;
    char *detect_zeroes;
    uint64_t offset;
    int shared;
    bool persistent, readonly, alloc_depth, image_opts, fork_process, temp_snapshot, writethrough, list;
    unsigned flags;
    int old_stderr;
} o = {.shared = 1, .flags = VBD_OPEN_RDWR, .old_stderr = -1};

static volatile sig_atomic_t stop_requested;
static int rc_main;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
    vbd_daemon_wake();
}

/* qemu-nbd's error_report + exit(EXIT_FAILURE) for the option checks */
#define FAIL(...)                                                                                                     \
    do {                                                                                                              \
        vbd_error_report(__VA_ARGS__);                                                                                \
        exit(EXIT_FAILURE);                                                                                           \
    } while (0)

static bool parse_int(const char *s, long long *v)
{
    char *end;
    errno = 0;
    *v = strtoll(s, &end, 0);
    return !errno && end != s && !*end;
}

static void add_object(const char *arg)
{
    /* the objects vbd_qmp_object_add_cmdline makes (daemon/objects.c) */
    static const char *const types[] = {"authz-list",     "authz-simple",   "iothread",      "secret",
                                        "throttle-group", "tls-creds-anon", "tls-creds-psk", "tls-creds-x509",
                                        NULL};
    if (vbd_qom_object_help(arg, types)) /* qemu-nbd's --object help, --object TYPE,help */
        exit(0);
    struct vbd_error *err = NULL;
    struct json_object *opts = vbd_opts_parse(arg, "qom-type", &err);
    int rc = opts ? vbd_qmp_object_add_cmdline(opts, arg[0] != '{' && strncmp(arg, "json:", 5), &err) : -1;
    json_object_put(opts);
    if (rc < 0) {
        vbd_error_report("%s", err ? err->msg : "--object: failed");
        vbd_error_free(err);
        exit(EXIT_FAILURE);
    }
}

static void refuse_kernel_device(const char *what)
{
    /* vbd has no kernel NBD client of its own: nbd-client (or qemu-nbd -c)
     * attaches /dev/nbdN to this server */
    struct stat st;
    if (stat("/sys/module/nbd", &st) < 0)
        FAIL("%s: Kernel /dev/nbdN support not available (the nbd kernel module is not loaded); vbd-nbd serves "
             "NBD only: serve the image and attach it with nbd-client",
             what);
    FAIL("%s: not supported by vbd-nbd, which serves NBD only: serve the image (-k SOCKET or -p PORT) and attach "
         "/dev/nbdN with nbd-client",
         what);
}

/* the whole value, longer than vbd_log's line */
static void too_long(const char *what, const char *v)
{
    fprintf(stderr, "%s: %s '%s' too long\n", prog, what, v);
    exit(EXIT_FAILURE);
}

static void parse_args(int argc, char **argv)
{
    static const char sopt[] = "hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L";
    static const struct option lopt[] = {
        {"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, 'V'},
        {"bind", required_argument, NULL, 'b'}, {"port", required_argument, NULL, 'p'},
        {"socket", required_argument, NULL, 'k'}, {"offset", required_argument, NULL, 'o'},
        {"read-only", no_argument, NULL, 'r'}, {"allocation-depth", no_argument, NULL, 'A'},
        {"bitmap", required_argument, NULL, 'B'}, {"connect", required_argument, NULL, 'c'},
        {"disconnect", no_argument, NULL, 'd'}, {"list", no_argument, NULL, 'L'},
        {"snapshot", no_argument, NULL, 's'}, {"load-snapshot", required_argument, NULL, 'l'},
        {"nocache", no_argument, NULL, 'n'}, {"cache", required_argument, NULL, OPT_CACHE},
        {"aio", required_argument, NULL, OPT_AIO}, {"discard", required_argument, NULL, OPT_DISCARD},
        {"detect-zeroes", required_argument, NULL, OPT_DETECT_ZEROES}, {"shared", required_argument, NULL, 'e'},
        {"format", required_argument, NULL, 'f'}, {"persistent", no_argument, NULL, 't'},
        {"verbose", no_argument, NULL, 'v'}, {"object", required_argument, NULL, OPT_OBJECT},
        {"export-name", required_argument, NULL, 'x'}, {"description", required_argument, NULL, 'D'},
        {"tls-creds", required_argument, NULL, OPT_TLSCREDS}, {"tls-hostname", required_argument, NULL, OPT_TLSHOSTNAME},
        {"tls-authz", required_argument, NULL, OPT_TLSAUTHZ}, {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"trace", required_argument, NULL, 'T'}, {"fork", no_argument, NULL, OPT_FORK},
        {"pid-file", required_argument, NULL, OPT_PID_FILE}, {"selinux-label", required_argument, NULL, OPT_SELINUX_LABEL},
        {NULL, 0, NULL, 0}};
    bool seen_cache = false, seen_aio = false, seen_discard = false, list = false, unmap = false;
    const char *device = NULL;
    bool disconnect = false;
    int ch;
    while ((ch = getopt_long(argc, argv, sopt, lopt, NULL)) != -1) {
        switch (ch) {
        case 's': o.temp_snapshot = true; break;
        case 'n':
            optarg = (char *)"none";
            /* fallthrough */
        case OPT_CACHE: {
            if (seen_cache)
                FAIL("-n and --cache can only be specified once");
            seen_cache = true;
            enum vbd_cache_mode m;
            if (vbd_cache_mode_parse(optarg, &m) < 0 || !strcmp(optarg, "writethru"))
                FAIL("Invalid cache mode `%s'", optarg);
            o.flags |= vbd_cache_mode_open_flags(m);
            o.writethrough = vbd_cache_mode_writethrough(m);
            break;
        }
        case OPT_AIO:
            if (seen_aio)
                FAIL("--aio can only be specified once");
            seen_aio = true;
            if (strcmp(optarg, "native") && strcmp(optarg, "io_uring") && strcmp(optarg, "threads"))
                FAIL("Invalid aio mode '%s'", optarg);
            if (!strcmp(optarg, "threads"))
                o.flags |= VBD_OPEN_AIO_THREADS;
            break;
        case OPT_DISCARD:
            if (seen_discard)
                FAIL("--discard can only be specified once");
            seen_discard = true;
            /* QEMU's bdrv_parse_discard_flags: ignore/off, unmap/on */
            if (!strcmp(optarg, "ignore") || !strcmp(optarg, "off"))
                unmap = false;
            else if (!strcmp(optarg, "unmap") || !strcmp(optarg, "on"))
                unmap = true;
            else
                FAIL("Invalid discard mode `%s'", optarg);
            if (unmap)
                o.flags |= VBD_OPEN_UNMAP;
            else
                o.flags &= ~VBD_OPEN_UNMAP;
            break;
        case OPT_DETECT_ZEROES: {
            int i = 0;
            while (vbd_detect_zeroes_names[i] && strcmp(vbd_detect_zeroes_names[i], optarg))
                i++;
            if (!vbd_detect_zeroes_names[i])
                FAIL("Failed to parse detect_zeroes mode: invalid parameter value: %s", optarg);
            if (!strcmp(optarg, "unmap") && !(o.flags & VBD_OPEN_UNMAP))
                FAIL("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap");
            free(o.detect_zeroes);
            o.detect_zeroes = vbd_xstrdup(optarg);
            break;
        }
        case 'b': o.bindto = optarg; break;
        case 'p': o.port = optarg; break;
        case 'o': {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 0);
            /* qemu_strtou64: "-1" wraps as strtoull's; the raw node refuses it */
            if (errno || end == optarg || *end)
                FAIL("Invalid offset '%s'", optarg);
            o.offset = v;
            break;
        }
        case 'l':
            o.snapshot = optarg; /* an internal snapshot is exported read-only */
            /* fallthrough */
        case 'r':
            o.readonly = true;
            o.flags &= ~VBD_OPEN_RDWR;
            break;
        case 'A': o.alloc_depth = true; break;
        case 'B':
            o.bitmaps = vbd_xrealloc(o.bitmaps, (o.nbitmaps + 1) * sizeof(*o.bitmaps));
            o.bitmaps[o.nbitmaps++] = optarg;
            break;
        case 'k':
            o.sockpath = optarg;
            if (optarg[0] != '/')
                FAIL("socket path must be absolute");
            break;
        case 'd': disconnect = true; break;
        case 'c': device = optarg; break;
        case 'e': {
            long long v;
            if (!parse_int(optarg, &v) || v < 0 || v > 0x7fffffff)
                FAIL("Invalid shared device number '%s'", optarg);
            o.shared = (int)v;
            break;
        }
        case 'f': o.fmt = optarg; break;
        case 't': o.persistent = true; break;
        case 'x':
            if (strlen(optarg) > NBD_MAX_STRING)
                too_long("export name", optarg);
            o.export_name = optarg;
            break;
        case 'D':
            if (strlen(optarg) > NBD_MAX_STRING)
                too_long("export description", optarg);
            o.description = optarg;
            break;
        case 'v': vbd_log_set_level(VBD_LOG_DEBUG); break;
        case 'V': printf("%s version " VBD_VERSION " (qemu-nbd 7.2's options)\n", prog); exit(0);
        case 'h': usage(); exit(0);
        case '?': FAIL("Try `%s --help' for more information.", prog);
        case OPT_OBJECT: add_object(optarg); break;
        case OPT_TLSCREDS: o.tlscreds = optarg; break;
        case OPT_TLSHOSTNAME: o.tlshostname = optarg; break;
        case OPT_IMAGE_OPTS: o.image_opts = true; break;
        case 'T':
            /* a command line written for qemu-nbd keeps working, as vbd-img's -T */
            vbd_error_report("-T %s: vbd has no trace events, ignored", optarg);
            break;
        case OPT_TLSAUTHZ: o.tlsauthz = optarg; break;
        case OPT_FORK: o.fork_process = true; break;
        case 'L': list = true; break;
        case OPT_PID_FILE: o.pid_file = optarg; break;
        case OPT_SELINUX_LABEL: o.selinux_label = optarg; break;
        }
    }
    if (list) {
        /* qemu-nbd's checks, in its order: -L takes the connection's
         * options only (-l snapshot.id=... is not among those it counts) */
        if (argc != optind)
            FAIL("List mode is incompatible with a file name");
        if (o.export_name || o.description || o.offset || device || disconnect || o.fmt ||
            (o.snapshot && strncmp(o.snapshot, "snapshot.", 9)) || o.nbitmaps || o.alloc_depth || seen_aio ||
            seen_discard || seen_cache)
            FAIL("List mode is incompatible with per-device settings");
        if (o.fork_process)
            FAIL("List mode is incompatible with forking");
    } else if (argc - optind != 1) {
        vbd_error_report("Invalid number of arguments");
        fprintf(stderr, "Try `%s --help' for more information.\n", prog);
        exit(EXIT_FAILURE);
    } else {
        o.filename = argv[optind];
        if (!o.export_name)
            o.export_name = "";
    }
    o.list = list;
    if (!o.bindto)
        o.bindto = "0.0.0.0";
    if (!o.port)
        o.port = NBD_DEFAULT_PORT;
    if (o.tlscreds) {
        if (device)
            FAIL("TLS is not supported with a host device");
        if (o.tlsauthz && list)
            FAIL("TLS authorization is incompatible with export list");
        if (o.tlshostname && !list)
            FAIL("TLS hostname is only supported with export list");
        struct vbd_error *err = NULL;
        struct vbd_tls_creds *c =
            vbd_tls_creds_get(o.tlscreds, list ? VBD_TLS_CLIENT : VBD_TLS_SERVER, list ? "NBD client" : "NBD server", &err);
        if (!c && err && err->code == EINVAL) /* the other endpoint: qemu-nbd's words */
            FAIL("Failed to get TLS creds: Expected TLS credentials for a %s endpoint", list ? "client" : "server");
        if (!c)
            FAIL("Failed to get TLS creds: %s", err ? err->msg : "failed");
        if (list)
            o.list_creds = c; /* the list's session holds it */
        else
            vbd_tls_creds_unref(c);
    } else if (o.tlsauthz) {
        FAIL("--tls-authz is not permitted without --tls-creds");
    } else if (o.tlshostname) {
        FAIL("--tls-hostname is not permitted without --tls-creds");
    }
    /* qemu-nbd built with SELinux (as distributions build it) labels its
     * listening socket; vbd-nbd cannot, but a list (no socket of its own)
     * goes on as qemu-nbd's */
    if (o.selinux_label && !o.sockpath && !device)
        FAIL("--selinux-label is not permitted without --socket");
    if (o.selinux_label && !list)
        FAIL("SELinux support not enabled in this binary");
    if (disconnect)
        refuse_kernel_device("-d/--disconnect");
    if (device)
        refuse_kernel_device("-c/--connect");
    if (o.image_opts && o.fmt)
        FAIL("--image-opts and -f are mutually exclusive");
}

/*
 * --fork as qemu-nbd's: the child's stderr goes to a pipe the parent copies
 * to its own stderr until the child closes it (once serving, or by
 * exiting); the parent's status is 1 if anything came through (an error,
 * or a warning such as the probed-raw one), else 0.
 */
static void do_fork(void)
{
    int p[2];
    if (pipe(p) < 0)
        FAIL("Error setting up communication pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        FAIL("Failed to fork: %s", strerror(errno));
    if (pid == 0) {
        close(p[0]);
        o.old_stderr = dup(STDERR_FILENO);
        if (setsid() < 0 || o.old_stderr < 0) {
            dup2(p[1], STDERR_FILENO);
            FAIL("Failed to daemonize: %s", strerror(errno));
        }
        int dn = open("/dev/null", O_RDWR);
        if (dn >= 0) {
            dup2(dn, STDIN_FILENO);
            dup2(dn, STDOUT_FILENO);
            close(dn);
        }
        dup2(p[1], STDERR_FILENO);
        close(p[1]);
        return;
    }
    close(p[1]);
    bool errors = false;
    char buf[1024];
    ssize_t n;
    while ((n = read(p[0], buf, sizeof(buf))) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            FAIL("Cannot read from daemon: %s", strerror(errno));
        errors = true;
        if (write(STDERR_FILENO, buf, (size_t)n) != n)
            exit(EXIT_FAILURE);
    }
    exit(errors);
}

static void report_open(struct vbd_error *err)
{
    const char *msg = err ? err->msg : "failed";
    /* QEMU says "Could not open 'F': " only before open(2)'s errno text; a
     * format's own complaint ("Image is not in qcow2 format") stands alone */
    char head[4200];
    snprintf(head, sizeof(head), "Could not open '%s': ", o.filename);
    if (err && !strncmp(msg, head, strlen(head)) && strcmp(msg + strlen(head), strerror(err->code)))
        msg += strlen(head);
    vbd_error_report("Failed to blk_new_open '%s': %s", o.filename, msg);
    vbd_error_free(err);
}

/* The image's node as qemu-nbd's blk_new_open opens it (-f, probing,
 * --image-opts), named NODE_NAME (or BASE_NAME under -s). */
static struct vbd_node *open_image(const char *node_name, unsigned flags)
{
    struct json_object *opts = NULL;
    const char *filename = o.filename;
    bool unknown = false;
    struct vbd_error *oerr = NULL;
    /* qemu-nbd's --image-opts is QemuOpts with "file" implied, as qemu-img's */
    if (!tool_open_options(&filename, o.fmt, o.image_opts, "file", &opts, &unknown, &oerr)) {
        if (unknown)
            vbd_error_setf(&oerr, EINVAL, "Unknown driver '%s'", o.fmt);
        if (oerr)
            report_open(oerr);
        return NULL;
    }
    if (!opts)
        opts = json_object_new_object();
    json_object_object_add(opts, "node-name", json_object_new_string(node_name));
    if (o.detect_zeroes && !o.temp_snapshot && !o.offset)
        json_object_object_add(opts, "detect-zeroes", json_object_new_string(o.detect_zeroes));
    struct vbd_error *err = NULL;
    struct vbd_node *n = vbd_open(filename, opts, flags, &err);
    if (!n)
        report_open(err);
    return n;
}

/* -s: a temporary qcow2 overlay over the image (qemu's BDRV_O_SNAPSHOT):
 * writes go there, the image is opened read-only and never written. The
 * overlay is unlinked once open, so it goes away with the process. */
static struct vbd_node *open_temp_snapshot(void)
{
    struct vbd_node *base = open_image(BASE_NAME, o.flags & ~VBD_OPEN_RDWR);
    if (!base)
        return NULL;
    struct vbd_error *err = NULL;
    struct json_object *opts = json_object_new_object();
    json_object_object_add(opts, "node-name", json_object_new_string(NODE_NAME));
    if (o.detect_zeroes && !o.offset)
        json_object_object_add(opts, "detect-zeroes", json_object_new_string(o.detect_zeroes));
    struct vbd_node *top = tool_open_temp_overlay(base, o.flags, opts, &err);
    vbd_node_unref(base); /* the overlay holds it as its backing */
    if (!top)
        tool_report(err);
    return top;
}

/* -l: qemu-nbd's bdrv_snapshot_load_tmp(_by_id_or_name) */
static int load_snapshot(struct vbd_node *n)
{
    struct vbd_error *err = NULL;
    int rc;
    if (!n->drv->snapshot_load_tmp) {
        vbd_error_report("Failed to load snapshot: Block format '%s' used by device '' does not support temporarily "
                         "loading internal snapshots",
                         n->drv->name);
        return -1;
    }
    if (!strncmp(o.snapshot, "snapshot.", 9)) {
        struct json_object *so = vbd_opts_parse(o.snapshot, NULL, &err);
        if (!so) {
            vbd_error_report("Failed in parsing snapshot param `%s'", o.snapshot);
            vbd_error_free(err);
            return -1;
        }
        struct json_object *id = vbd_opt_get(so, "snapshot.id"), *name = vbd_opt_get(so, "snapshot.name");
        rc = n->drv->snapshot_load_tmp(n, id ? json_object_get_string(id) : NULL,
                                       name ? json_object_get_string(name) : NULL, &err);
        json_object_put(so);
    } else {
        /* an id first, then a name, as bdrv_snapshot_load_tmp_by_id_or_name */
        rc = n->drv->snapshot_load_tmp(n, o.snapshot, NULL, &err);
        if (rc == -ENOENT) {
            vbd_error_free(err);
            err = NULL;
            rc = n->drv->snapshot_load_tmp(n, NULL, o.snapshot, &err);
        }
    }
    if (rc < 0) {
        vbd_error_report("Failed to load snapshot: %s", err ? err->msg : strerror(-rc));
        vbd_error_free(err);
        return -1;
    }
    return 0;
}

/* Without -t, qemu-nbd exits once its last client has gone (one that got
 * as far as choosing the export). */
static void watch_last_client(void *arg)
{
    (void)arg;
    if (vbd_nbd_server_wait_last_client()) {
        stop_requested = 1;
        vbd_daemon_wake();
    }
}

static int start_server(void)
{
    struct json_object *so = json_object_new_object();
    if (o.sockpath) {
        json_object_object_add(so, "addr.type", json_object_new_string("unix"));
        json_object_object_add(so, "addr.path", json_object_new_string(o.sockpath));
    } else {
        json_object_object_add(so, "addr.type", json_object_new_string("inet"));
        json_object_object_add(so, "addr.host", json_object_new_string(o.bindto));
        json_object_object_add(so, "addr.port", json_object_new_string(o.port));
    }
    /* -e N: the server's max-connections (0: no limit, as -e 0) */
    json_object_object_add(so, "max-connections", json_object_new_uint64((uint64_t)o.shared));
    if (o.tlscreds)
        json_object_object_add(so, "tls-creds", json_object_new_string(o.tlscreds));
    if (o.tlsauthz)
        json_object_object_add(so, "tls-authz", json_object_new_string(o.tlsauthz));
    struct vbd_error *err = NULL;
    int rc = vbd_nbd_server_start(so, &err);
    json_object_put(so);
    if (rc < 0) {
        vbd_error_report("%s", err ? err->msg : "cannot start the NBD server");
        vbd_error_free(err);
    }
    return rc;
}

static int add_export(struct vbd_node *n)
{
    /* the export finds each -B bitmap as qemu-nbd does: on the image, then
     * down its chain (and words a missing one as qemu-nbd) */
    struct vbd_error *err = NULL;
    struct json_object *eo = json_object_new_object();
    json_object_object_add(eo, "type", json_object_new_string("nbd"));
    json_object_object_add(eo, "id", json_object_new_string("qemu-nbd-export"));
    json_object_object_add(eo, "node-name", json_object_new_string(n->node_name));
    json_object_object_add(eo, "name", json_object_new_string(o.export_name));
    if (o.description)
        json_object_object_add(eo, "description", json_object_new_string(o.description));
    json_object_object_add(eo, "writable", json_object_new_boolean(!o.readonly));
    json_object_object_add(eo, "allocation-depth", json_object_new_boolean(o.alloc_depth));
    /* qemu-nbd's --cache=writethrough/directsync: the export's write cache off */
    json_object_object_add(eo, "writethrough", json_object_new_boolean(o.writethrough));
    if (o.nbitmaps) {
        struct json_object *list = json_object_new_array();
        for (size_t i = 0; i < o.nbitmaps; i++)
            json_object_array_add(list, json_object_new_string(o.bitmaps[i]));
        json_object_object_add(eo, "bitmaps", list);
    }
    int rc = vbd_daemon_export_add(eo, "vbd-nbd", &err);
    json_object_put(eo);
    if (rc < 0) {
        vbd_error_report("%s", err ? err->msg : "cannot export the image");
        vbd_error_free(err);
    }
    return rc;
}

static void main_co(void *arg)
{
    (void)arg;
    rc_main = EXIT_FAILURE;
    struct vbd_node *n = o.temp_snapshot ? open_temp_snapshot() : open_image(NODE_NAME, o.flags);
    if (!n)
        goto out;
    if (o.offset > INT64_MAX) {
        /* qemu-nbd passes it as a QDict int: its keyval words */
        vbd_error_report("Parameter 'offset' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, "
                         "P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.");
        vbd_node_unref(n);
        goto out;
    }
    if (o.offset) {
        /* qemu-nbd -o: a raw node at that offset over the image */
        struct json_object *ro = json_object_new_object();
        json_object_object_add(ro, "driver", json_object_new_string("raw"));
        json_object_object_add(ro, "file", json_object_new_string(n->node_name));
        json_object_object_add(ro, "offset", json_object_new_uint64(o.offset));
        json_object_object_add(ro, "node-name", json_object_new_string("qemu-nbd-offset"));
        if (o.detect_zeroes)
            json_object_object_add(ro, "detect-zeroes", json_object_new_string(o.detect_zeroes));
        struct vbd_error *err = NULL;
        struct vbd_node *top = vbd_open(NULL, ro, o.flags, &err);
        vbd_node_unref(n);
        if (!top) {
            vbd_error_report("%s", err ? err->msg : "cannot open the offset node");
            vbd_error_free(err);
            goto out;
        }
        n = top;
    }
    vbd_daemon_node_add(n);
    if (o.snapshot && load_snapshot(n) < 0)
        goto out;
    if (start_server() < 0 || add_export(n) < 0)
        goto out;
    if (o.pid_file && vbd_daemon_write_pidfile(o.pid_file, "") < 0)
        goto out;
    /* as qemu-nbd, so that a busy filesystem can be unmounted */
    if (chdir("/") < 0) {
        vbd_error_report("Could not chdir to root directory: %s", strerror(errno));
        goto out;
    }
    if (o.old_stderr >= 0) {
        /* serving: the --fork parent sees its pipe close and returns */
        dup2(o.old_stderr, STDERR_FILENO);
        close(o.old_stderr);
        o.old_stderr = -1;
    }
    rc_main = EXIT_SUCCESS;
    if (!o.persistent)
        vbd_co_wake(vbd_co_create(watch_last_client, NULL));
    while (!stop_requested)
        vbd_daemon_co_wait_wake(); /* signals and the last client's exit wake it */
out:
    vbd_daemon_shutdown_exports();
    vbd_nbd_server_stop();
    vbd_daemon_flush_nodes();
    vbd_daemon_close_pidfile();
}

int main(int argc, char **argv)
{
    vbd_log_set_prog(prog);
    /* qemu-nbd prints nothing while it serves; -v: the debug log */
    vbd_log_set_level(VBD_LOG_WARN);
    parse_args(argc, argv);
    if (o.list) {
        /* qemu-nbd -L: a client of another server (nbd-list.c); the TLS
         * hostname defaults to the address connected to, as qemu-nbd's */
        struct nbd_list_args la = {.sockpath = o.sockpath, .host = o.bindto, .port = o.port,
                                   .tls_creds = o.list_creds, .tls_hostname = o.tlshostname ? o.tlshostname : o.bindto};
        int rc = nbd_list_exports(&la);
        vbd_tls_creds_unref(o.list_creds);
        vbd_tls_creds_remove_all();
        vbd_authz_remove_all();
        free(o.detect_zeroes);
        free(o.bitmaps);
        return rc;
    }
    if (o.fork_process)
        do_fork();
    vbd_daemon_wake_init();
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    vbd_co_run_sync(main_co, NULL);
    vbd_iothread_stop_all();
    vbd_daemon_free_all();
    vbd_tls_creds_remove_all();
    vbd_authz_remove_all();
    free(o.detect_zeroes);
    free(o.bitmaps);
    return rc_main;
}
