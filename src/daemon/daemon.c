/* SPDX-License-Identifier: MIT */
/*
 * vbd-daemon: long-running storage daemon in the style of
 * qemu-storage-daemon (--blockdev, --export, --nbd-server, --object,
 * --pidfile, --daemonize). Objects are created in command-line order, so
 * an export can name a node defined before it. SIGTERM/SIGINT: exports
 * finish their in-flight requests, nodes are flushed, sockets removed.
 */
#include "daemon.h"
#include "daemon/libvirt-disk.h"
#include "daemon/objects.h"
#include "daemon/state.h"
#include "qmp/cmd-block.h"
#include "qmp/cmd-export.h"
#include "qmp/commands.h"
#include "vbd/job.h"

#include "vbd/alloc.h"
#include "vbd/authz.h"
#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/export.h"
#include "vbd/iothread.h"
#include "vbd/loop.h"
#include "vbd/nbd.h"
#include "vbd/options.h"
#include "vbd/qmp.h"
#include "vbd/secret.h"
#include "vbd/throttle.h"
#include "vbd/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#define VBD_DAEMON_VERSION VBD_VERSION

static const char usage_text[] =
    "Usage: vbd-daemon [options]\n"
    "Serve block devices to VMs and NBD clients (qemu-storage-daemon's options).\n"
    "\n"
    "  --blockdev [driver=]DRIVER,node-name=NAME[,opt=val...] | JSON\n"
    "                    open a block node (file, null-co, raw, ...); keys as in QEMU's -blockdev\n"
    "  --export type=nbd,id=ID,node-name=NAME[,name=EXPORT][,description=TEXT][,writable=on|off]\n"
    "                    [,writethrough=on|off]   export a node (needs --nbd-server first;\n"
    "                    writethrough: each write durable before its reply)\n"
    "  --nbd-server addr.type=unix,addr.path=PATH | addr.type=inet,addr.host=HOST,addr.port=PORT\n"
    "               [,addr.to=PORT][,addr.ipv4=on|off][,addr.ipv6=on|off][,addr.numeric=on|off][,addr.mptcp=on|off]\n"
    "                    [,max-connections=N][,tls-creds=ID[,tls-authz=ID]]   start the NBD server\n"
    "                    (inet: on every address HOST resolves to; \"\" for the wildcards)\n"
    "                    (tls-creds: TLS required; tls-authz: the client certificate's DN must be\n"
    "                    allowed by that authz object, and tls-creds x509 with verify-peer=on)\n"
    "  --export type=vhost-user-blk,id=ID,node-name=NAME,addr.type=unix,addr.path=SOCKET[,writable=on|off]\n"
    "           [,num-queues=N][,logical-block-size=512|4096][,physical-block-size=N][,writethrough=on|off]\n"
    "           [,serial=S][,server=on|off][,werror=report|stop|enospc][,rerror=report|stop]\n"
    "           [,retry-interval=MS][,merge=on|off][,iothread=ID | iothread.0=ID,iothread.1=ID...]\n"
    "                    serve a node to a VMM as a virtio-blk device. server=off: connect to the VMM's\n"
    "                    socket. werror/rerror=stop (enospc: on ENOSPC only): a failed request waits and is\n"
    "                    retried every retry-interval (default 1000 ms; 0: only on SIGUSR1). merge: adjacent\n"
    "                    requests of one kick go down as one request (default on)\n"
    "  --drive file=IMG[,format=raw|qcow2][,cache=writethrough|writeback|none|directsync|unsafe][,readonly=on]\n"
    "          [,sectorsize=512|4096|LOGICAL/PHYSICAL][,range=START_LBA/SECTORS][,discard=unmap][,id=NAME]\n"
    "          [,detect-zeroes=on|unmap]\n"
    "          [,num-queues=N][,serial=S][,werror=report|stop|enospc][,rerror=report|stop]\n"
    "          [,throttling.iops-total=N,throttling.bps-read=N,...,throttling.group=NAME]\n"
    "          [,iops=N,iops_rd=N,bps_wr=N,iops_max=N,iops_size=N,group=NAME,...][,copy-on-read=on]\n"
    "                    short form (as -drive and ACRN's device model: ro, writethru and\n"
    "                    writeback are accepted as bare words); writethrough is the default\n"
    "  --vhost-user SOCKET   export the last --drive or --libvirt-disk over vhost-user-blk on SOCKET\n"
    "  --libvirt-disk FILE[#TARGET]\n"
    "                    the nodes libvirt's qemu driver builds for a <disk> element (FILE: a <disk>, or a\n"
    "                    <domain>: every disk, or the one with <target dev='TARGET'>); the top node is named\n"
    "                    TARGET (vda). serial, blockio, cache's write cache, queues, error_policy and iothread\n"
    "                    go to the --vhost-user export; iotune makes a throttle group (group_name or TARGET)\n"
    "  --print-libvirt-disk  once serving, print the <disk type='vhostuser'> element to use instead of each\n"
    "                    --libvirt-disk exported with --vhost-user (on stdout: not with --chardev stdio)\n"
    "  --object iothread,id=ID[,poll-max-ns=NS]\n"
    "                    a thread with its own event loop for exports' queues (vhost-user-blk: iothread=ID,\n"
    "                    or iothread.0=ID0,iothread.1=ID1,... to spread the queues); poll-max-ns bounds the\n"
    "                    busy-polling of rings and NBD sockets before the thread sleeps (default 131072, 0: off)\n"
    "  --object throttle-group,id=ID,limits.iops-total=N[,limits.bps-read=N,limits.iops-total-max=N,\n"
    "          limits.iops-total-max-length=SECONDS,limits.iops-size=BYTES...]\n"
    "                    I/O limits as QEMU's, shared by the throttle nodes that name the group\n"
    "                    (--blockdev throttle,node-name=NAME,throttle-group=ID,file=NODE); qom-set changes them\n"
    "  --object tls-creds-x509,id=ID,dir=DIR,endpoint=server|client[,verify-peer=on|off]\n"
    "  --object tls-creds-psk,id=ID,dir=DIR,endpoint=server|client[,username=NAME]\n"
    "                    TLS credentials for --nbd-server tls-creds=ID and nbd nodes' tls-creds=ID\n"
    "                    (x509 DIR: ca-cert.pem, server-cert.pem/-key.pem or client-cert.pem/-key.pem;\n"
    "                    psk DIR: keys.psk as psktool writes it)\n"
    "  --object authz-simple,id=ID,identity=DN\n"
    "  --object '{\"qom-type\":\"authz-list\",\"id\":\"ID\",\"policy\":\"deny\",\"rules\":\n"
    "            [{\"match\":\"O=vbd,CN=*\",\"policy\":\"allow\",\"format\":\"glob\"}]}'\n"
    "                    who may connect to --nbd-server tls-authz=ID: the client certificate's\n"
    "                    distinguished name (as O=vbd,CN=client; in keyval ',' is written ',,')\n"
    "                    must equal identity (authz-simple), or the first rule that matches it decides\n"
    "                    (authz-list; exact or glob with * and ?; no rule: policy, default deny)\n"
    "  --chardev socket,id=ID,path=PATH,server=on,wait=off\n"
    "  --chardev socket,id=ID,host=HOST,port=PORT,server=on,wait=off[,insecure-remote=on]\n"
    "                    a socket for a QMP monitor (unix: created mode 0600; TCP: loopback only unless\n"
    "                    insecure-remote=on, as QMP has no authentication). One client at a time\n"
    "  --chardev stdio,id=ID[,signal=on|off]\n"
    "                    the daemon's stdin and stdout (a script's pipe), for one monitor; not with --daemonize\n"
    "  --monitor [chardev=]ID[,mode=control][,pretty=on|off]\n"
    "                    serve QMP (qemu-storage-daemon's control protocol) on chardev ID (pretty: indented)\n"
    "  --state FILE      keep what QMP changes (nodes, exports, NBD server, objects, snapshots, job pivots) in\n"
    "                    FILE, written atomically before each reply; at start FILE is replayed after the other\n"
    "                    options (the same node-name or id in both is an error; a damaged FILE is refused)\n"
    "  --pidfile PATH    write the daemon's PID (after everything listens)\n"
    "  --daemonize       go to the background once every socket listens\n"
    "  -v, --verbose     debug log;  -h, --help;  -V, --version\n"
    "  -T, --trace ...   qsd's trace options: taken and ignored (vbd has no QEMU trace events; -v logs)\n"
    "\n"
    "Options are processed in order. SIGTERM, SIGINT or QMP 'quit' stop the daemon cleanly (a second signal\n"
    "while stopping exits without waiting for requests in flight). SIGHUP re-reads the\n"
    "size of every node (after a file was resized) and tells the VMs. SIGUSR1 retries stopped requests.\n";

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t hup_requested, cont_requested;
static int ready_pipe = -1;
/* --print-libvirt-disk: stdout carries the <disk> elements (seen before the
 * options are processed, as --daemonize, so that a stdio monitor given
 * before it is refused before it greets anyone on stdout) */
static bool print_libvirt;

/* Set once the daemon stops: a second SIGTERM/SIGINT then exits at once.
 * Stopping waits for every request in flight and flushes every node; a
 * storage server that stopped answering (an iSCSI target or NBD server
 * gone, with no timeout set) makes that wait last until it is back. The
 * images are then left as after kill -9, which the crash tests cover:
 * consistent, with only unflushed writes possibly missing. */
static volatile sig_atomic_t stopping;
/* A SIGTERM/SIGINT came. Only a second one forces the exit: a stop that
 * QMP's quit began is not one, so a service manager's SIGTERM that follows
 * a quit (or a script that sends both) still waits for the flush. */
static volatile sig_atomic_t signalled;

/* The signal flags are set by on_signal, which runs on whichever thread
 * the kernel picks (an iothread, a pool worker), and read and cleared by
 * the main coroutine: atomic on both sides (ThreadSanitizer saw the plain
 * stores of two handlers, on a pool worker and the main thread, race
 * under SIGHUP storms: daemon-sighup-graph.sh). */
#define FLAG_SET(f) __atomic_store_n(&(f), 1, __ATOMIC_SEQ_CST)
#define FLAG_GET(f) __atomic_load_n(&(f), __ATOMIC_SEQ_CST)
#define FLAG_TAKE(f) __atomic_exchange_n(&(f), 0, __ATOMIC_SEQ_CST)

static void on_signal(int sig)
{
    int saved_errno = errno; /* the interrupted code's, whatever the handler calls */
    bool stop_sig = sig == SIGTERM || sig == SIGINT;
    if (stop_sig && FLAG_GET(stopping) && FLAG_GET(signalled)) {
        static const char msg[] =
            "vbd-daemon: second signal while stopping: exiting without waiting for requests in flight\n";
        ssize_t unused = write(STDERR_FILENO, msg, sizeof(msg) - 1);
        (void)unused;
        _exit(1);
    }
    if (stop_sig && FLAG_GET(stopping)) {
        static const char msg[] = "vbd-daemon: already stopping (QMP quit or a failed start); a second SIGTERM or SIGINT exits "
                                  "without waiting for requests in flight\n";
        ssize_t unused = write(STDERR_FILENO, msg, sizeof(msg) - 1);
        (void)unused;
    }
    if (stop_sig)
        FLAG_SET(signalled);
    if (sig == SIGHUP)
        FLAG_SET(hup_requested);
    else if (sig == SIGUSR1)
        FLAG_SET(cont_requested);
    else
        FLAG_SET(stop_requested);
    vbd_daemon_wake();
    errno = saved_errno;
}

/* qsd checks --blockdev against blockdev-add's schema: a file node without
 * its filename is "Parameter 'PATH.filename' is missing" there, before any
 * open (the driver's own words are qemu-img's). blockdev-add's check of one
 * object, on each object depth-first, as the visitor meets them. */
static bool file_lacks_filename(struct json_object *o, const char *prefix, struct vbd_error **err)
{
    if (vbd_qmp_file_lacks_filename(o)) {
        vbd_error_setf(err, EINVAL, "Parameter '%sfilename' is missing", prefix);
        return true;
    }
    json_object_object_foreach(o, key, v) {
        if (!json_object_is_type(v, json_type_object))
            continue;
        char sub[512];
        snprintf(sub, sizeof(sub), "%s%s.", prefix, key);
        if (file_lacks_filename(v, sub, err))
            return true;
    }
    return false;
}

static int add_blockdev(const char *arg, struct vbd_error **err)
{
    struct json_object *opts = vbd_opts_parse_strict(arg, "driver", err);
    if (!opts)
        return -EINVAL;
    if (!vbd_opt_get(opts, "node-name")) {
        vbd_error_setf(err, EINVAL, "'node-name' must be specified for the root node"); /* qsd's words */
        json_object_put(opts);
        return -EINVAL;
    }
    /* qsd refuses an unknown driver as a value of its schema's enum */
    struct json_object *dv = vbd_opt_get(opts, "driver");
    if (dv && json_object_is_type(dv, json_type_string) && !vbd_driver_find(json_object_get_string(dv))) {
        vbd_error_setf(err, EINVAL, "Parameter 'driver' does not accept value '%s'", json_object_get_string(dv));
        json_object_put(opts);
        return -EINVAL;
    }
    /* qsd's --blockdev is blockdev-add: the same check of the name, before anything opens */
    struct vbd_qmp_error qe = {0};
    if (!vbd_qmp_node_name_check(json_object_get_string(vbd_opt_get(opts, "node-name")), &qe)) {
        vbd_error_setf(err, EINVAL, "%s", qe.desc);
        json_object_put(opts);
        return -EINVAL;
    }
    if (file_lacks_filename(opts, "", err)) {
        json_object_put(opts);
        return -EINVAL;
    }
    struct json_object *given = NULL;
    json_object_deep_copy(opts, &given, NULL); /* the open takes from opts */
    struct vbd_node *n = vbd_open(NULL, opts, VBD_OPEN_RDWR | VBD_OPEN_LOCK_BY_USERS, err);
    if (!n) {
        json_object_put(given);
        return -EINVAL;
    }
    vbd_qmp_node_given_options(n, given);
    vbd_daemon_node_add(n);
    /* its locks as its users need them (none if nothing uses it yet) */
    if (vbd_qmp_image_locks_follow(NULL, 0, 0, err) < 0) {
        vbd_daemon_node_del(n->node_name, NULL);
        vbd_qmp_image_locks_follow(NULL, 0, 0, NULL);
        return -EINVAL;
    }
    return 0;
}

/*
 * --chardev is QemuOpts in qsd, whose short-form booleans ("server",
 * "nowait": X=on, noX=off) old scripts and guides still write; qsd takes
 * them with a deprecation warning each. arg rewritten with X=on / X=off
 * (malloc'd), the warnings printed in qsd's words.
 */
static char *chardev_long_form(const char *arg)
{
    size_t len = strlen(arg);
    char *out = vbd_xmalloc(len * 2 + 8), *o = out;
    const char *p = arg;
    bool first = true;
    while (*p) {
        const char *tok = p;
        while (*p && !(*p == ',' && p[1] != ',')) /* up to a single ',' (",," is a comma in a value) */
            p += (*p == ',') ? 2 : 1;
        size_t n = (size_t)(p - tok);
        bool bare = !memchr(tok, '=', n);
        if (!first)
            *o++ = ',';
        if (bare && !first && n) {
            bool no = n > 2 && !strncmp(tok, "no", 2);
            const char *name = no ? tok + 2 : tok;
            size_t nn = no ? n - 2 : n;
            vbd_error_report("--chardev %s: warning: short-form boolean option '%.*s' deprecated\nPlease use %.*s=%s "
                             "instead",
                             arg, (int)n, tok, (int)nn, name, no ? "off" : "on");
            o += sprintf(o, "%.*s=%s", (int)nn, name, no ? "off" : "on");
        } else {
            memcpy(o, tok, n);
            o += n;
        }
        first = false;
        if (*p == ',')
            p++;
    }
    *o = 0;
    return out;
}

/* Both would write stdout: the QMP client would read XML, libvirt JSON. */
static const char stdout_taken[] = "stdio and --print-libvirt-disk both write to stdout (the QMP replies would be mixed "
                                   "with the <disk> elements): give the monitor a socket chardev";

static int add_chardev(const char *arg, struct vbd_error **err)
{
    char *long_form = arg[0] == '{' || !strncmp(arg, "json:", 5) ? NULL : chardev_long_form(arg);
    struct json_object *opts = vbd_opts_parse(long_form ? long_form : arg, "backend", err);
    free(long_form);
    if (!opts)
        return -EINVAL;
    struct json_object *backend;
    if (ready_pipe >= 0 && json_object_object_get_ex(opts, "backend", &backend) &&
        !strcmp(json_object_get_string(backend), "stdio")) {
        /* --daemonize puts /dev/null there */
        vbd_error_setf(err, EINVAL, "cannot use stdio with -daemonize"); /* qsd's words */
        json_object_put(opts);
        return -EINVAL;
    }
    if (print_libvirt && json_object_object_get_ex(opts, "backend", &backend) &&
        !strcmp(json_object_get_string(backend), "stdio")) {
        vbd_error_setf(err, EINVAL, "%s", stdout_taken);
        json_object_put(opts);
        return -EINVAL;
    }
    int rc = vbd_qmp_chardev_add(opts, err);
    json_object_put(opts);
    return rc;
}

static int add_monitor(const char *arg, struct vbd_error **err)
{
    struct json_object *opts = vbd_opts_parse_strict(arg, "chardev", err);
    if (!opts)
        return -EINVAL;
    int rc = vbd_qmp_monitor_add(opts, err);
    json_object_put(opts);
    return rc;
}

static int add_export(const char *arg, struct vbd_error **err)
{
    /* qsd's implied key: --export nbd,id=e,node-name=n */
    struct json_object *opts = vbd_opts_parse_strict(arg, "type", err);
    if (!opts)
        return -EINVAL;
    struct json_object *copy = NULL;
    json_object_deep_copy(opts, &copy, NULL);
    int rc = vbd_daemon_export_add(opts, "--export", err);
    if (rc == 0)
        vbd_state_note_cmdline_export(copy);
    json_object_put(copy);
    json_object_put(opts);
    return rc;
}

static int add_nbd_server(const char *arg, struct vbd_error **err)
{
    struct json_object *opts = vbd_opts_parse_strict(arg, NULL, err);
    if (!opts)
        return -EINVAL;
    /* qsd reads it as QAPI's NbdServerOptions: its checks and words */
    struct vbd_qmp_error qe = {0};
    if (!vbd_qmp_nbd_server_opts_check(opts, arg[0] != '{' && strncmp(arg, "json:", 5), &qe)) {
        vbd_error_setf(err, EINVAL, "%s", qe.desc);
        json_object_put(opts);
        return -EINVAL;
    }
    int rc = vbd_nbd_server_start(opts, err);
    json_object_put(opts);
    return rc;
}

/* The qom-types --object makes (daemon/objects.c), sorted as qsd lists them. */
static const char *const object_types[] = {"authz-list",     "authz-simple",   "iothread",      "secret",
                                           "throttle-group", "tls-creds-anon", "tls-creds-psk", "tls-creds-x509",
                                           NULL};

static int add_object(const char *arg, struct vbd_error **err)
{
    struct json_object *opts = vbd_opts_parse_strict(arg, "qom-type", err);
    if (!opts)
        return -EINVAL;
    /* qsd's --object is object-add (JSON text as QMP types it; keyval's
     * strings read as its keyval visitor reads them): the same checks,
     * the same messages */
    int rc = vbd_qmp_object_add_cmdline(opts, arg[0] != '{' && strncmp(arg, "json:", 5), err);
    if (rc < 0 && err && *err && !strcmp((*err)->msg, "Parameter 'id' expects an identifier"))
        snprintf((*err)->msg, sizeof((*err)->msg), "%s\nIdentifiers consist of letters, digits, '-', '.', '_', "
                 "starting with a letter.", "Parameter 'id' expects an identifier"); /* qsd's hint, below it */
    json_object_put(opts);
    return rc;
}

/* The last --drive, waiting for its --vhost-user. */
static struct pending_drive {
    char node[64];
    bool readonly, writethrough;
    uint64_t lbs, pbs, queues;
    char *serial, *werror, *rerror, *iothread;
    bool set;
    const struct vbd_libvirt_disk *lv; /* from --libvirt-disk: for --print-libvirt-disk */
} drive;
/* --libvirt-disk's disks (kept for the export and the printed element) */
static struct lv_set {
    struct vbd_libvirt_disk *d;
    int n;
} *lv_sets;
static int n_lv_sets;
/* <disk type='vhostuser'> elements for --print-libvirt-disk, in export order */
static char **lv_print;
static int n_lv_print;
static int ndrives;

/* ACRN writes bare words (ro, writethru) and the path first: make it keyval. */
static char *drive_to_keyval(const char *arg)
{
    size_t len = strlen(arg);
    char *out = malloc(len * 2 + 64), *o = out;
    bool first = true;
    for (const char *p = arg; *p || first;) {
        const char *start = p;
        while (*p && !(*p == ',' && p[1] != ',')) /* ",," is an escaped comma */
            p += (*p == ',' ? 2 : 1);
        size_t n = (size_t)(p - start);
        char word[64];
        bool bare = !memchr(start, '=', n);
        if (!first)
            *o++ = ',';
        if (bare && n < sizeof(word)) {
            memcpy(word, start, n);
            word[n] = 0;
            const char *m = !strcmp(word, "ro") ? "readonly=on"
                            : !strcmp(word, "writethru") ? "cache=writethrough"
                            : !strcmp(word, "writeback") ? "cache=writeback"
                            : !strcmp(word, "nocache") ? "cache=none"
                            : NULL;
            if (m) {
                o += sprintf(o, "%s", m);
                goto next;
            }
        }
        if (bare && first)
            o += sprintf(o, "file=");
        memcpy(o, start, n);
        o += n;
    next:
        first = false;
        if (!*p)
            break;
        p++;
    }
    *o = 0;
    return out;
}

static bool is_protocol_uri(const char *f)
{
    const char *colon = strchr(f, ':'), *slash = strchr(f, '/');
    if (!colon || (slash && slash < colon))
        return false;
    for (const struct vbd_driver *const *d = vbd_driver_list(); *d; d++)
        for (const char *const *p = (*d)->protocols; p && *p; p++)
            if (strlen(*p) == (size_t)(colon - f) && !strncmp(*p, f, strlen(*p)))
                return true;
    return false;
}

static int add_drive(const char *arg, struct vbd_error **err)
{
    char *kv = drive_to_keyval(arg);
    struct json_object *o = vbd_opts_parse(kv, NULL, err);
    free(kv);
    if (!o)
        return -EINVAL;
    char *file = NULL, *format = NULL, *cache = NULL, *sectorsize = NULL, *range = NULL, *discard = NULL, *dzero = NULL,
         *id = NULL, *serial = NULL, *werror = NULL, *rerror = NULL;
    bool readonly = false;
    uint64_t queues = 0;
    struct vbd_node *n = NULL;
    int rc = -EINVAL;
    struct vbd_throttle_config tcfg;
    char *tgroup = NULL;
    int throttled = vbd_throttle_take_drive_opts(o, &tcfg, &tgroup, err);
    bool cor = false;
    if (throttled < 0 || vbd_opt_take_bool(o, "copy-on-read", &cor, err) < 0)
        goto out;
    if (vbd_opt_take_str(o, "file", &file, err) < 0 || vbd_opt_take_str(o, "format", &format, err) < 0 ||
        vbd_opt_take_str(o, "cache", &cache, err) < 0 || vbd_opt_take_str(o, "sectorsize", &sectorsize, err) < 0 ||
        vbd_opt_take_str(o, "range", &range, err) < 0 || vbd_opt_take_str(o, "discard", &discard, err) < 0 ||
        vbd_opt_take_str(o, "detect-zeroes", &dzero, err) < 0 ||
        vbd_opt_take_str(o, "id", &id, err) < 0 || vbd_opt_take_str(o, "serial", &serial, err) < 0 ||
        vbd_opt_take_str(o, "werror", &werror, err) < 0 || vbd_opt_take_str(o, "rerror", &rerror, err) < 0 ||
        vbd_opt_take_bool(o, "readonly", &readonly, err) < 0 || vbd_opt_take_u64(o, "num-queues", &queues, err) < 0 ||
        vbd_opts_check_empty(o, "--drive", err) < 0)
        goto out;
    if (!file) {
        vbd_error_setf(err, EINVAL, "--drive %s: 'file' is required", arg);
        goto out;
    }
    enum vbd_cache_mode mode = VBD_CACHE_WRITETHROUGH; /* ACRN's default */
    if (cache && vbd_cache_mode_parse(cache, &mode) < 0) {
        vbd_error_setf(err, EINVAL,
                       "--drive: cache=%s: expected writethrough, writeback, none, directsync or unsafe", cache);
        goto out;
    }
    uint64_t lbs = 512, pbs = 0;
    if (sectorsize) {
        char *end;
        lbs = strtoull(sectorsize, &end, 10);
        if (*end == '/')
            pbs = strtoull(end + 1, &end, 10);
        if (*end || (lbs != 512 && lbs != 4096) || (pbs && (pbs < lbs || (pbs & (pbs - 1))))) {
            vbd_error_setf(err, EINVAL, "--drive: sectorsize=%s: expected 512, 4096 or LOGICAL/PHYSICAL", sectorsize);
            goto out;
        }
    }
    bool unmap = false;
    if (discard) {
        if (!strcmp(discard, "unmap") || !strcmp(discard, "on"))
            unmap = true;
        else if (strcmp(discard, "ignore") && strcmp(discard, "off")) {
            vbd_error_setf(err, EINVAL, "--drive: discard=%s: expected unmap or ignore", discard);
            goto out;
        }
    }
    char name[64];
    if (id)
        snprintf(name, sizeof(name), "%s", id);
    else
        snprintf(name, sizeof(name), "drive%d", ndrives);
    /* a URI (iscsi://, nbd://) opens its protocol driver under the format */
    struct json_object *fo = json_object_new_object();
    if (!is_protocol_uri(file))
        json_object_object_add(fo, "driver", json_object_new_string("file"));
    json_object_object_add(fo, "filename", json_object_new_string(file));
    struct json_object *no = json_object_new_object();
    if (format) {
        json_object_object_add(no, "driver", json_object_new_string(format));
        json_object_object_add(no, "file", fo);
    } else {
        json_object_put(fo); /* probed from the file name */
    }
    /* throttled: a throttle node on top takes the drive's name (QEMU puts
     * the limits on the drive's BlockBackend; the result is the same) */
    char inner[80], cor_name[80];
    snprintf(inner, sizeof(inner), "%s-%s", name, cor ? "fmt" : "throttled");
    snprintf(cor_name, sizeof(cor_name), "%s-cor", name);
    bool filtered = throttled || cor;
    if (!range)
        json_object_object_add(no, "node-name", json_object_new_string(filtered ? inner : name));
    if (unmap)
        json_object_object_add(no, "discard", json_object_new_string("unmap"));
    if (dzero) /* checked by the node like blockdev-add's (unmap needs discard=unmap) */
        json_object_object_add(no, "detect-zeroes", json_object_new_string(dzero));
    /* locked by its users, as --blockdev's nodes: a raw image holds only
     * what its export needs (qsd's --blockdev + --export), and lets go of
     * it when the export goes; opened otherwise, it kept the open's write
     * and resize locks, unshared, until the daemon exited */
    unsigned flags = (readonly ? 0 : VBD_OPEN_RDWR) | vbd_cache_mode_open_flags(mode) | (unmap ? VBD_OPEN_UNMAP : 0) |
                     VBD_OPEN_LOCK_BY_USERS;
    n = vbd_open(format ? NULL : file, no, flags, err);
    if (!n) {
        vbd_error_prepend(err, "--drive %s: ", file);
        goto out;
    }
    if (range) {
        /* ACRN: range=<first 512-byte sector>/<number of sectors>; a raw window over the image */
        char *end;
        uint64_t start = strtoull(range, &end, 10), count = 0;
        if (*end == '/')
            count = strtoull(end + 1, &end, 10);
        if (*end || !count || start > (UINT64_MAX >> 9) || count > (UINT64_MAX >> 9) ||
            (start << 9) + (count << 9) < (start << 9) || (start << 9) + (count << 9) > vbd_node_size(n)) {
            vbd_error_setf(err, EINVAL, "--drive: range=%s: expected START_LBA/SECTORS inside the image (%llu sectors)",
                           range, (unsigned long long)(vbd_node_size(n) >> 9));
            vbd_node_unref(n);
            n = NULL;
            goto out;
        }
        struct json_object *wo = json_object_new_object();
        json_object_object_add(wo, "driver", json_object_new_string("raw"));
        json_object_object_add(wo, "node-name", json_object_new_string(filtered ? inner : name));
        json_object_object_add(wo, "file", json_object_new_string(n->node_name));
        json_object_object_add(wo, "offset", json_object_new_uint64(start << 9));
        json_object_object_add(wo, "size", json_object_new_uint64(count << 9));
        struct vbd_node *w = vbd_open(NULL, wo, flags, err);
        if (!w) {
            vbd_error_prepend(err, "--drive %s: range=%s: ", file, range);
            vbd_node_unref(n);
            n = NULL;
            goto out;
        }
        vbd_daemon_node_add(n);
        n = w;
    }
    if (cor) {
        /* copy-on-read=on: the filter goes right above the format, under
         * the throttling (as QEMU's -drive) */
        struct json_object *co = json_object_new_object();
        json_object_object_add(co, "driver", json_object_new_string("copy-on-read"));
        json_object_object_add(co, "node-name", json_object_new_string(throttled ? cor_name : name));
        json_object_object_add(co, "file", json_object_new_string(n->node_name));
        struct vbd_node *c = vbd_open(NULL, co, flags, err);
        if (!c) {
            vbd_error_prepend(err, "--drive %s: ", file);
            vbd_node_unref(n);
            n = NULL;
            goto out;
        }
        vbd_daemon_node_add(n);
        n = c;
    }
    if (throttled) {
        /* as -drive: the group is the drive's unless throttling.group names one */
        const char *gname = tgroup ? tgroup : name;
        struct json_object *to = json_object_new_object();
        json_object_object_add(to, "driver", json_object_new_string("throttle"));
        json_object_object_add(to, "node-name", json_object_new_string(name));
        json_object_object_add(to, "throttle-group", json_object_new_string(gname));
        json_object_object_add(to, "file", json_object_new_string(n->node_name));
        struct vbd_node *t = NULL;
        if (vbd_throttle_group_configure(gname, &tcfg, err) == 0)
            t = vbd_open(NULL, to, flags, err);
        else
            json_object_put(to);
        if (!t) {
            vbd_error_prepend(err, "--drive %s: ", file);
            vbd_node_unref(n);
            n = NULL;
            goto out;
        }
        vbd_daemon_node_add(n);
        n = t;
    }
    vbd_daemon_node_add(n);
    /* its locks as its users need them (none until an export uses it) */
    if (vbd_qmp_image_locks_follow(NULL, 0, 0, err) < 0) {
        vbd_daemon_node_del(n->node_name, NULL);
        vbd_qmp_image_locks_follow(NULL, 0, 0, NULL);
        n = NULL;
        goto out;
    }
    free(drive.serial);
    free(drive.werror);
    free(drive.rerror);
    free(drive.iothread);
    drive = (struct pending_drive){.readonly = readonly,
                                   .writethrough = vbd_cache_mode_writethrough(mode),
                                   .lbs = lbs,
                                   .pbs = pbs,
                                   .queues = queues,
                                   .serial = serial,
                                   .werror = werror,
                                   .rerror = rerror,
                                   .set = true};
    serial = werror = rerror = NULL;
    snprintf(drive.node, sizeof(drive.node), "%s", name);
    ndrives++;
    rc = 0;
out:
    json_object_put(o);
    free(tgroup);
    free(file);
    free(format);
    free(cache);
    free(sectorsize);
    free(range);
    free(discard);
    free(dzero);
    free(id);
    free(serial);
    free(werror);
    free(rerror);
    return rc;
}

static int add_vhost_user(const char *sock, struct vbd_error **err)
{
    if (!drive.set) {
        vbd_error_setf(err, EINVAL, "--vhost-user %s: no --drive before it", sock);
        return -EINVAL;
    }
    struct json_object *o = json_object_new_object();
    char id[80];
    snprintf(id, sizeof(id), "vhost-user-%s", drive.node);
    json_object_object_add(o, "type", json_object_new_string("vhost-user-blk"));
    json_object_object_add(o, "id", json_object_new_string(id));
    json_object_object_add(o, "node-name", json_object_new_string(drive.node));
    json_object_object_add(o, "addr.type", json_object_new_string("unix"));
    json_object_object_add(o, "addr.path", json_object_new_string(sock));
    json_object_object_add(o, "writable", json_object_new_boolean(!drive.readonly));
    json_object_object_add(o, "writethrough", json_object_new_boolean(drive.writethrough));
    json_object_object_add(o, "logical-block-size", json_object_new_uint64(drive.lbs));
    if (drive.pbs)
        json_object_object_add(o, "physical-block-size", json_object_new_uint64(drive.pbs));
    if (drive.queues)
        json_object_object_add(o, "num-queues", json_object_new_uint64(drive.queues));
    if (drive.serial)
        json_object_object_add(o, "serial", json_object_new_string(drive.serial));
    if (drive.werror)
        json_object_object_add(o, "werror", json_object_new_string(drive.werror));
    if (drive.rerror)
        json_object_object_add(o, "rerror", json_object_new_string(drive.rerror));
    if (drive.iothread)
        json_object_object_add(o, "iothread", json_object_new_string(drive.iothread));
    struct json_object *copy = NULL;
    json_object_deep_copy(o, &copy, NULL);
    int rc = vbd_daemon_export_add(o, "--vhost-user", err);
    if (rc == 0)
        vbd_state_note_cmdline_export(copy);
    json_object_put(copy);
    json_object_put(o);
    if (rc == 0 && drive.lv) {
        char *x = vbd_libvirt_disk_vhostuser_xml(drive.lv, sock, drive.queues ? drive.queues : 1);
        if (x) {
            lv_print = realloc(lv_print, sizeof(*lv_print) * (size_t)(n_lv_print + 1));
            lv_print[n_lv_print++] = x;
        }
    }
    if (rc == 0)
        drive.set = false;
    return rc;
}

/* --libvirt-disk FILE[#TARGET]: the nodes now; the last disk waits for
 * --vhost-user as a --drive does (the others: --export node-name=TARGET). */
static int add_libvirt_disk(const char *arg, struct vbd_error **err)
{
    struct vbd_libvirt_disk *d;
    int n;
    if (vbd_libvirt_disk_add(arg, &d, &n, err) < 0)
        return -EINVAL;
    lv_sets = realloc(lv_sets, sizeof(*lv_sets) * (size_t)(n_lv_sets + 1));
    lv_sets[n_lv_sets++] = (struct lv_set){d, n};
    const struct vbd_libvirt_disk *last = &d[n - 1];
    free(drive.serial);
    free(drive.werror);
    free(drive.rerror);
    free(drive.iothread);
    drive = (struct pending_drive){.readonly = last->readonly,
                                   .writethrough = last->writethrough,
                                   .lbs = last->lbs,
                                   .pbs = last->pbs,
                                   .queues = last->queues,
                                   .serial = last->serial ? vbd_xstrdup(last->serial) : NULL,
                                   .werror = last->werror ? vbd_xstrdup(last->werror) : NULL,
                                   .rerror = last->rerror ? vbd_xstrdup(last->rerror) : NULL,
                                   .iothread = last->iothread ? vbd_xstrdup(last->iothread) : NULL,
                                   .set = true,
                                   .lv = last};
    snprintf(drive.node, sizeof(drive.node), "%s", last->top);
    for (int i = 0; i < n; i++)
        vbd_info("--libvirt-disk %s: <target dev='%s'> is node '%s'", arg, d[i].target, d[i].top);
    return 0;
}

struct startup {
    int argc;
    char **argv;
    int rc;
};

enum { OPT_BLOCKDEV = 256, OPT_EXPORT, OPT_NBD_SERVER, OPT_OBJECT, OPT_PIDFILE, OPT_DAEMONIZE, OPT_DRIVE, OPT_VHOST_USER,
       OPT_CHARDEV, OPT_MONITOR, OPT_STATE, OPT_LIBVIRT_DISK, OPT_PRINT_LIBVIRT_DISK };

/* SIGHUP: files may have been resized by someone else; re-read the sizes
 * and let the exports tell their clients. */
static void refresh_sizes(void)
{
    for (struct vbd_node *n = vbd_daemon_node_next(NULL); n; n = vbd_daemon_node_next(n)) {
        /* vbd_node_size: a file under a format on an iothread grows there
         * while this reads it (a plain load here was a data race under
         * TSan: tsan-iothreads.sh, SIGHUP under qcow2 allocating writes) */
        uint64_t old = vbd_node_size(n), now;
        struct vbd_error *err = NULL;
        if (vbd_node_refresh_size(n, &err) < 0) {
            vbd_warn("SIGHUP: node '%s': %s", n->node_name, err ? err->msg : "cannot refresh its size");
            vbd_error_free(err);
        } else if ((now = vbd_node_size(n)) != old) {
            vbd_info("SIGHUP: node '%s' is now %llu bytes (was %llu)", n->node_name, (unsigned long long)now,
                     (unsigned long long)old);
        }
    }
    for (struct vbd_daemon_export *e = vbd_daemon_export_first(); e; e = e->next)
        if (e->type->resized)
            e->type->resized(e->exp);
}

/* SIGUSR1: retry the requests an error policy stopped (werror/rerror=stop),
 * as QMP's block-export-cont does for all exports. */
static void retry_stopped(void)
{
    for (struct vbd_daemon_export *e = vbd_daemon_export_first(); e; e = e->next)
        if (e->type->cont)
            e->type->cont(e->exp);
}

/*
 * SIGHUP's refresh and SIGUSR1's retry each run as a coroutine of their own
 * under the lock QMP commands and the jobs' graph changes take: the walks
 * yield (each node's refresh runs on its home loop, an iothread's; a retry
 * waits for the export's vhost-user handler and visits each ring on its
 * loop), and a blockdev-del, blockdev-reopen, x-blockdev-set-iothread,
 * block-export-add/-del or a job's end must not change the graph or the
 * export list under them meanwhile (a node or export freed under the walk).
 * The main coroutine does not wait for them: behind a command that hangs
 * (storage that does not answer) it still sees SIGTERM and stops, as it
 * does without a SIGHUP or SIGUSR1 (shutdown_all: a second signal exits).
 * One walk of each kind at a time; signals while one runs ask for one more
 * pass after it.
 */
struct signal_walk {
    const char *signal; /* its name, for -v */
    void (*walk)(void);
    bool running, again;
    struct vbd_co_queue done;
};
static struct signal_walk refresh_walk = {.signal = "SIGHUP", .walk = refresh_sizes, .done = VBD_CO_QUEUE_INIT};
static struct signal_walk retry_walk = {.signal = "SIGUSR1", .walk = retry_stopped, .done = VBD_CO_QUEUE_INIT};

static void signal_walk_co(void *arg)
{
    struct signal_walk *w = arg;
    do {
        w->again = false;
        vbd_qmp_graph_lock();
        if (!FLAG_GET(stopping)) /* the daemon stops: its nodes and exports are going */
            w->walk();
        vbd_qmp_graph_unlock();
    } while (w->again && !FLAG_GET(stopping));
    w->running = false;
    vbd_co_queue_wake_all(&w->done);
}

/* The main coroutine took w's signal. -v says so: the tests' sync point
 * for a signal taken while a QMP command holds the lock (the walk waits
 * for it, the main coroutine goes on to see SIGTERM). */
static void signal_walk_start(struct signal_walk *w)
{
    vbd_debug("%s taken: %s", w->signal, w->running ? "one more walk after the one running" : "a walk starts");
    if (w->running) {
        w->again = true;
        return;
    }
    w->running = true;
    vbd_co_wake(vbd_co_create(signal_walk_co, w));
}

/* a walk that waited for the lock sees stopping and ends */
static void signal_walk_wait(struct signal_walk *w)
{
    while (w->running)
        vbd_co_queue_wait(&w->done);
}

static void slow_stop_hint(void *arg)
{
    (void)arg;
    vbd_warn("still stopping after 5 s: waiting for requests in flight and the nodes' flush (a storage "
             "server not answering?); SIGTERM or SIGINT again exits without waiting");
}

static void shutdown_all(void)
{
    FLAG_SET(stopping);
    struct vbd_timer hint = {.fn = slow_stop_hint};
    vbd_timer_arm(&hint, vbd_clock_ns() + 5000000000ull);
    /* In qsd's order (its main() after the loop), so that a monitor sees
     * the same events: no command runs from here, the exports stop (one
     * BLOCK_EXPORT_DELETED each, in creation order), then the jobs are
     * cancelled (their events), the nodes flushed, and only then quit's
     * reply and the end of the monitors. */
    vbd_qmp_quiesce();
    signal_walk_wait(&refresh_walk);
    signal_walk_wait(&retry_walk);
    vbd_daemon_shutdown_exports();
    vbd_job_cancel_all_sync(); /* images consistent: a cancelled job leaves its target as QEMU's does */
    vbd_nbd_server_stop();
    vbd_daemon_flush_nodes();
    vbd_qmp_shutdown();
    vbd_timer_cancel(&hint);
}

/* An option's error as qsd reports it: "--NAME ARG: MESSAGE", so that a
 * script that knows qemu-storage-daemon's errors finds the option it gave.
 * A message that already names the option ("--monitor: ...",
 * "--monitor m: ...") loses that prefix rather than saying it twice. */
static void report_option_error(const char *name, const char *arg, const char *msg)
{
    size_t n = strlen(name);
    if (!strncmp(msg, "--", 2) && !strncmp(msg + 2, name, n)) {
        /* only "--NAME: " or "--NAME WORD: ": a sentence that starts with
         * the option ("--object X is not supported (...: ...)") stays whole */
        const char *p = msg + 2 + n;
        if (*p == ' ')
            p += 1 + strcspn(p + 1, " :");
        if (p[0] == ':' && p[1] == ' ')
            msg = p + 2;
    }
    /* a lock conflict's question is a hint line of its own, as qsd's */
    const char *q = strstr(msg, " lock: Is another process using the image [");
    if (q)
        vbd_error_report("--%s %s: %.*s\n%s", name, arg, (int)(q - msg) + 5, msg, q + 7);
    else
        vbd_error_report("--%s %s: %s", name, arg, msg);
}

/* --pidfile's file, open and locked for the daemon's life */
static int pidfile_fd = -1;

/*
 * As QEMU's qemu_write_pidfile: created 0600, locked with lockf so that a
 * second daemon given the same file refuses to start (its words), and the
 * lock checked to be on the file that is at the path now (one removed and
 * made again while we locked it is tried again).
 */
int vbd_daemon_write_pidfile(const char *path, const char *prefix)
{
    int fd;
    for (;;) {
        fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, S_IRUSR | S_IWUSR);
        if (fd < 0) {
            vbd_error_report("%sCould not create '%s': %s", prefix, path, strerror(errno));
            return -1;
        }
        struct stat a, b;
        if (fstat(fd, &b) < 0) {
            vbd_error_report("%sCannot stat file: %s", prefix, strerror(errno));
            close(fd);
            return -1;
        }
        if (lockf(fd, F_TLOCK, 0) < 0) {
            vbd_error_report("%sCannot lock pid file: %s", prefix, strerror(errno));
            close(fd);
            return -1;
        }
        if (stat(path, &a) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev)
            break;
        close(fd);
    }
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (ftruncate(fd, 0) < 0 || write(fd, buf, (size_t)n) != n) {
        vbd_error_report("%sFailed to write pid file: %s", prefix, strerror(errno));
        close(fd);
        return -1;
    }
    pidfile_fd = fd;
    return 0;
}

static void daemon_co(void *opaque)
{
    struct startup *s = opaque;
    static const struct option lo[] = {
        {"blockdev", required_argument, NULL, OPT_BLOCKDEV}, {"export", required_argument, NULL, OPT_EXPORT},
        {"nbd-server", required_argument, NULL, OPT_NBD_SERVER}, {"object", required_argument, NULL, OPT_OBJECT},
        {"chardev", required_argument, NULL, OPT_CHARDEV}, {"monitor", required_argument, NULL, OPT_MONITOR},
        {"drive", required_argument, NULL, OPT_DRIVE}, {"vhost-user", required_argument, NULL, OPT_VHOST_USER},
        {"state", required_argument, NULL, OPT_STATE}, {"pidfile", required_argument, NULL, OPT_PIDFILE},
        {"daemonize", no_argument, NULL, OPT_DAEMONIZE}, {"libvirt-disk", required_argument, NULL, OPT_LIBVIRT_DISK},
        {"print-libvirt-disk", no_argument, NULL, OPT_PRINT_LIBVIRT_DISK},
        {"verbose", no_argument, NULL, 'v'}, {"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, 'V'},
        {"trace", required_argument, NULL, 'T'},
        {NULL, 0, NULL, 0}};
    const char *pidfile = NULL, *state = NULL;
    int c, li = -1;
    optind = 1;
    /* A monitor given before --blockdev accepts clients while later nodes
     * open (an rbd or nbd open yields): their commands wait until the
     * command line and --state FILE are applied, never seeing a node
     * half open. */
    vbd_qmp_graph_lock();
    while ((c = getopt_long(s->argc, s->argv, "vhVT:", lo, &li)) != -1) {
        struct vbd_error *err = NULL;
        int rc = 0;
        switch (c) {
        case OPT_BLOCKDEV: rc = add_blockdev(optarg, &err); break;
        case OPT_EXPORT: rc = add_export(optarg, &err); break;
        case OPT_NBD_SERVER: rc = add_nbd_server(optarg, &err); break;
        case OPT_OBJECT:
            if (vbd_qom_object_help(optarg, object_types)) { /* --object help, --object TYPE,help: qsd's answer */
                s->rc = 0;
                vbd_qmp_graph_unlock();
                return;
            }
            rc = add_object(optarg, &err);
            break;
        case OPT_CHARDEV:
            if (!strcmp(optarg, "help") || !strcmp(optarg, "?")) {
                /* qsd's list, in its layout, of the backends vbd makes
                 * (stdio only on the command line) */
                fputs("Available chardev backend types: \n  memory\n  file\n  socket\n  stdio\n  ringbuf\n  null\n"
                      "  pipe\n",
                      stdout);
                s->rc = 0;
                vbd_qmp_graph_unlock();
                return;
            }
            rc = add_chardev(optarg, &err);
            break;
        case OPT_MONITOR: rc = add_monitor(optarg, &err); break;
        case OPT_DRIVE: rc = add_drive(optarg, &err); break;
        case OPT_VHOST_USER: rc = add_vhost_user(optarg, &err); break;
        case OPT_LIBVIRT_DISK: rc = add_libvirt_disk(optarg, &err); break;
        case OPT_PRINT_LIBVIRT_DISK: print_libvirt = true; break;
        case OPT_PIDFILE: pidfile = optarg; break;
        case OPT_STATE: state = optarg; break;
        case OPT_DAEMONIZE: break;
        case 'v': vbd_log_set_level(VBD_LOG_DEBUG); break;
        case 'T':
            /* command lines written for qsd pass its trace options (as
             * vbd-img and vbd-nbd take them): no QEMU trace events here */
            vbd_error_report("-T %s: vbd has no trace events, ignored", optarg);
            break;
        case 'h': fputs(usage_text, stdout); s->rc = 0; vbd_qmp_graph_unlock(); return;
        case 'V': printf("vbd-daemon version " VBD_DAEMON_VERSION "\n"); s->rc = 0; vbd_qmp_graph_unlock(); return;
        default: s->rc = 1; FLAG_SET(stop_requested); break;
        }
        if (rc < 0) {
            report_option_error(lo[li].name, optarg, err ? err->msg : "failed");
            vbd_error_free(err);
            s->rc = 1;
        }
        if (s->rc)
            break;
    }
    if (!s->rc && optind < s->argc) {
        vbd_error_report("%s: Unexpected argument", s->argv[optind]); /* qsd's words */
        s->rc = 1;
    }
    if (!s->rc && state) {
        /* after the command line: FILE's nodes may sit on its nodes */
        struct vbd_error *err = NULL;
        if (vbd_state_load(state, &err) < 0) {
            vbd_error_report("%s", err ? err->msg : "--state: failed");
            vbd_error_free(err);
            s->rc = 1;
        }
    }
    vbd_qmp_graph_unlock();
    if (!s->rc && print_libvirt) {
        /* once every socket listens, so that a domain started with it connects at once */
        if (!n_lv_print) {
            vbd_error_report("--print-libvirt-disk: no --libvirt-disk was exported with --vhost-user");
            s->rc = 1;
        }
        for (int i = 0; !s->rc && i < n_lv_print; i++)
            fputs(lv_print[i], stdout);
        fflush(stdout);
    }
    if (!s->rc && pidfile && vbd_daemon_write_pidfile(pidfile, "cannot create PID file: ") < 0)
        s->rc = 1;
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
    while (!s->rc && !FLAG_GET(stop_requested) && !vbd_qmp_quit_requested()) {
        vbd_daemon_co_wait_wake(); /* signals and quit wake it */
        if (FLAG_GET(stop_requested) || vbd_qmp_quit_requested())
            break;
        if (FLAG_TAKE(hup_requested))
            signal_walk_start(&refresh_walk);
        if (FLAG_TAKE(cont_requested))
            signal_walk_start(&retry_walk);
    }
    vbd_state_free(); /* exit closes exports and nodes: that is no change to keep */
    shutdown_all();
    if (pidfile && !s->rc)
        unlink(pidfile);
    vbd_daemon_close_pidfile();
}

void vbd_daemon_close_pidfile(void)
{
    if (pidfile_fd >= 0)
        close(pidfile_fd); /* the lock goes with it, after the unlink */
    pidfile_fd = -1;
}

/* A loop kick ends the loop's wait but enters no coroutine: the main
 * coroutine waits on this eventfd, which a signal handler may write. Its
 * poll is in the main loop's wait (io_uring or epoll), so the write alone
 * ends that wait; nothing else on the main loop waits for a signal, and
 * the handlers kick no loop. */
static int wake_fd = -1;

void vbd_daemon_wake_init(void)
{
    wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd < 0)
        vbd_warn("eventfd: %s: signals are seen within 200 ms", strerror(errno));
}

void vbd_daemon_wake(void)
{
    if (wake_fd < 0)
        return;
    int saved = errno; /* a signal handler must leave errno as it was */
    uint64_t one = 1;
    ssize_t unused = write(wake_fd, &one, sizeof(one));
    (void)unused; /* only EAGAIN at a counter near 2^64: a wake is pending then */
    errno = saved;
}

void vbd_daemon_co_wait_wake(void)
{
    if (wake_fd < 0 || vbd_co_eventfd_wait(wake_fd) < 0)
        vbd_co_sleep_ns(200000000); /* no eventfd: the caller's flags are checked this often */
}

int vbd_daemon_main(int argc, char **argv)
{
    vbd_log_set_prog("vbd-daemon");
    bool daemonize = false;
    for (int i = 1; i < argc; i++) {
        daemonize |= !strcmp(argv[i], "--daemonize");
        /* getopt_long takes any unambiguous abbreviation: --pr is one */
        size_t n = strlen(argv[i]);
        print_libvirt |= n >= 4 && !strncmp(argv[i], "--print-libvirt-disk", n);
    }
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
    vbd_daemon_wake_init();
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct startup s = {argc, argv, 0};
    vbd_co_run_sync(daemon_co, &s);
    vbd_iothread_stop_all(); /* every export has stopped using them */
    vbd_daemon_free_all();
    vbd_tls_creds_remove_all();
    vbd_authz_remove_all();
    free(drive.serial);
    free(drive.werror);
    free(drive.rerror);
    free(drive.iothread);
    for (int i = 0; i < n_lv_sets; i++)
        vbd_libvirt_disks_free(lv_sets[i].d, lv_sets[i].n);
    free(lv_sets);
    for (int i = 0; i < n_lv_print; i++)
        free(lv_print[i]);
    free(lv_print);
    return s.rc;
}
