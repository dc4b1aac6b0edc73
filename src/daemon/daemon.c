/* SPDX-License-Identifier: MIT */
/*
 * vbd-daemon: long-running storage daemon in the style of
 * qemu-storage-daemon (--blockdev, --export, --nbd-server, --object,
 * --pidfile, --daemonize). Objects are created in command-line order, so
 * an export can name a node defined before it. SIGTERM/SIGINT: exports
 * finish their in-flight requests, nodes are flushed, sockets removed.
 */
#include "daemon.h"

#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/export.h"
#include "vbd/loop.h"
#include "vbd/nbd.h"
#include "vbd/options.h"

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

#define VBD_DAEMON_VERSION "0.1.0"

static const char usage_text[] =
    "Usage: vbd-daemon [options]\n"
    "Serve block devices to VMs and NBD clients (qemu-storage-daemon's options).\n"
    "\n"
    "  --blockdev [driver=]DRIVER,node-name=NAME[,opt=val...] | JSON\n"
    "                    open a block node (file, null-co, raw, ...); keys as in QEMU's -blockdev\n"
    "  --export type=nbd,id=ID,node-name=NAME[,name=EXPORT][,description=TEXT][,writable=on|off]\n"
    "                    export a node (needs --nbd-server first)\n"
    "  --nbd-server addr.type=unix,addr.path=PATH | addr.type=inet,addr.host=HOST,addr.port=PORT\n"
    "                    [,max-connections=N]   start the NBD server\n"
    "  --object iothread,id=ID   accepted for compatibility (exports run on the main loop)\n"
    "  --pidfile PATH    write the daemon's PID (after everything listens)\n"
    "  --daemonize       go to the background once every socket listens\n"
    "  -v, --verbose     debug log;  -h, --help;  -V, --version\n"
    "\n"
    "Options are processed in order. SIGTERM or SIGINT stops the daemon cleanly.\n";

struct export_entry {
    const struct vbd_export_type *type;
    struct vbd_export *exp;
    struct export_entry *next;
};

static struct export_entry *exports;
static struct vbd_node **nodes;
static int nnodes;
static volatile bool stop_requested;
static struct vbd_loop *main_loop;
static int ready_pipe = -1;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = true;
    if (main_loop)
        vbd_loop_kick(main_loop);
}

static int add_blockdev(const char *arg, struct vbd_error **err)
{
    struct json_object *opts = vbd_opts_parse(arg, "driver", err);
    if (!opts)
        return -EINVAL;
    if (!vbd_opt_get(opts, "node-name")) {
        vbd_error_setf(err, EINVAL, "--blockdev %s: 'node-name' is required", arg);
        json_object_put(opts);
        return -EINVAL;
    }
    struct vbd_node *n = vbd_open(NULL, opts, VBD_OPEN_RDWR, err);
    if (!n)
        return -EINVAL;
    nodes = realloc(nodes, sizeof(*nodes) * (nnodes + 1));
    nodes[nnodes++] = n;
    return 0;
}

static int add_export(const char *arg, struct vbd_error **err)
{
    struct json_object *opts = vbd_opts_parse(arg, NULL, err);
    if (!opts)
        return -EINVAL;
    char *type = NULL;
    int rc = vbd_opt_take_str(opts, "type", &type, err);
    const struct vbd_export_type *t = NULL;
    if (rc == 0)
        vbd_error_setf(err, EINVAL, "--export %s: 'type' is required", arg);
    for (const struct vbd_export_type *const *p = vbd_export_types(); rc > 0 && *p; p++)
        if (!strcmp((*p)->type, type))
            t = *p;
    if (rc > 0 && !t)
        vbd_error_setf(err, EINVAL, "--export: unknown export type '%s'", type);
    struct vbd_export *e = t ? t->create(opts, err) : NULL;
    if (e && vbd_opts_check_empty(opts, "--export", err) < 0) {
        t->shutdown(e);
        t->free(e);
        e = NULL;
    }
    json_object_put(opts);
    free(type);
    if (!e)
        return -EINVAL;
    struct export_entry *ent = calloc(1, sizeof(*ent));
    ent->type = t;
    ent->exp = e;
    ent->next = exports;
    exports = ent;
    return 0;
}

static int add_nbd_server(const char *arg, struct vbd_error **err)
{
    struct json_object *opts = vbd_opts_parse(arg, NULL, err);
    if (!opts)
        return -EINVAL;
    int rc = vbd_nbd_server_start(opts, err);
    json_object_put(opts);
    return rc;
}

static int add_object(const char *arg, struct vbd_error **err)
{
    struct json_object *opts = vbd_opts_parse(arg, "qom-type", err);
    if (!opts)
        return -EINVAL;
    char *t = NULL;
    vbd_opt_take_str(opts, "qom-type", &t, err);
    int rc = 0;
    if (!t || strcmp(t, "iothread")) {
        vbd_error_setf(err, EINVAL, "--object: unsupported object type '%s' (supported: iothread)", t ? t : "");
        rc = -EINVAL;
    }
    free(t);
    json_object_put(opts);
    return rc;
}

struct startup {
    int argc;
    char **argv;
    int rc;
};

enum { OPT_BLOCKDEV = 256, OPT_EXPORT, OPT_NBD_SERVER, OPT_OBJECT, OPT_PIDFILE, OPT_DAEMONIZE };

static void shutdown_all(void)
{
    for (struct export_entry *e = exports; e; e = e->next)
        e->type->shutdown(e->exp);
    vbd_nbd_server_stop();
    for (int i = 0; i < nnodes; i++)
        vbd_node_co_flush(nodes[i]);
}

static void daemon_co(void *opaque)
{
    struct startup *s = opaque;
    static const struct option lo[] = {
        {"blockdev", required_argument, NULL, OPT_BLOCKDEV}, {"export", required_argument, NULL, OPT_EXPORT},
        {"nbd-server", required_argument, NULL, OPT_NBD_SERVER}, {"object", required_argument, NULL, OPT_OBJECT},
        {"pidfile", required_argument, NULL, OPT_PIDFILE}, {"daemonize", no_argument, NULL, OPT_DAEMONIZE},
        {"verbose", no_argument, NULL, 'v'}, {"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0}};
    const char *pidfile = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(s->argc, s->argv, "vhV", lo, NULL)) != -1) {
        struct vbd_error *err = NULL;
        int rc = 0;
        switch (c) {
        case OPT_BLOCKDEV: rc = add_blockdev(optarg, &err); break;
        case OPT_EXPORT: rc = add_export(optarg, &err); break;
        case OPT_NBD_SERVER: rc = add_nbd_server(optarg, &err); break;
        case OPT_OBJECT: rc = add_object(optarg, &err); break;
        case OPT_PIDFILE: pidfile = optarg; break;
        case OPT_DAEMONIZE: break;
        case 'v': vbd_log_set_level(VBD_LOG_DEBUG); break;
        case 'h': fputs(usage_text, stdout); s->rc = 0; return;
        case 'V': printf("vbd-daemon version " VBD_DAEMON_VERSION "\n"); s->rc = 0; return;
        default: s->rc = 1; stop_requested = true; break;
        }
        if (rc < 0) {
            vbd_error_report("%s", err ? err->msg : "failed");
            vbd_error_free(err);
            s->rc = 1;
        }
        if (s->rc)
            break;
    }
    if (!s->rc && optind < s->argc) {
        vbd_error_report("unexpected argument '%s'", s->argv[optind]);
        s->rc = 1;
    }
    if (!s->rc && pidfile) {
        FILE *f = fopen(pidfile, "w");
        if (!f || fprintf(f, "%d\n", getpid()) < 0 || fclose(f) != 0) {
            vbd_error_report("cannot write pidfile '%s': %s", pidfile, strerror(errno));
            s->rc = 1;
        }
    }
    if (!s->rc && ready_pipe >= 0) {
        /* everything listens: let the parent of --daemonize exit */
        char ok = 0;
        if (write(ready_pipe, &ok, 1) != 1)
            vbd_warn("cannot notify the parent process");
        close(ready_pipe);
        ready_pipe = -1;
        int dn = open("/dev/null", O_RDWR);
        if (dn >= 0) {
            dup2(dn, 0);
            dup2(dn, 1);
            close(dn);
        }
    }
    while (!s->rc && !stop_requested)
        vbd_co_sleep_ns(200000000); /* the loop is kicked by signals; this bounds the check */
    shutdown_all();
    if (pidfile && !s->rc)
        unlink(pidfile);
}

int vbd_daemon_main(int argc, char **argv)
{
    vbd_log_set_prog("vbd-daemon");
    bool daemonize = false;
    for (int i = 1; i < argc; i++)
        daemonize |= !strcmp(argv[i], "--daemonize");
    if (daemonize) {
        int p[2];
        if (pipe(p) < 0) {
            vbd_error_report("cannot daemonize: %s", strerror(errno));
            return 1;
        }
        pid_t pid = fork();
        if (pid < 0) {
            vbd_error_report("cannot daemonize: %s", strerror(errno));
            return 1;
        }
        if (pid > 0) {
            close(p[1]);
            char ok;
            /* exit 0 only once the child listens; its errors went to stderr */
            return read(p[0], &ok, 1) == 1 ? 0 : 1;
        }
        close(p[0]);
        setsid();
        ready_pipe = p[1];
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    main_loop = vbd_loop_current();
    struct startup s = {argc, argv, 0};
    vbd_co_run_sync(daemon_co, &s);
    for (struct export_entry *e = exports, *n; e; e = n) {
        n = e->next;
        e->type->free(e->exp);
        free(e);
    }
    for (int i = 0; i < nnodes; i++)
        vbd_node_unref(nodes[i]);
    free(nodes);
    return s.rc;
}
