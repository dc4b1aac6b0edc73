/* Fuzz target: QMP's block export and block job commands run for real, in
 * process, on a small graph built afresh for each input: a qcow2 chain
 * base <- mid <- top (each with data of its own; their file nodes are
 * named NODE-file), a qcow2 "tgt" and a null-co "nul" of the same size, a
 * smaller null-co "small", an iothread io0 and the NBD server on a unix
 * socket, all in a scratch directory ($TMPDIR, else /dev/shm). The input
 * is a sequence of commands (block-export-add nbd and vhost-user-blk,
 * block-export-del, block-stream, block-commit, drive-mirror,
 * blockdev-mirror, blockdev-backup, drive-backup, transaction, the job-*
 * and block-job-* verbs, dirty bitmaps, block_resize,
 * x-blockdev-set-iothread, blockdev-del, nbd-server-add/remove/stop,
 * pauses that let the jobs run) whose argument trees the input builds.
 * Three commands in four are plausible (the graph's names, sane numbers,
 * a job-id, few optional members), so that jobs start and go through
 * their states; the fourth is hostile: every member present or missing,
 * values from pools that reach the graph or of a wrong type, numbers
 * negative, huge or beyond int64, members the command does not know.
 * Paths come only from the pools: no input can touch a file outside the
 * scratch directory; there is no quit. (The four images are made once and
 * copied for each input: make_pristine_images.)
 *
 * Each command must answer with return or error (an error says why); after
 * the input the daemon must still answer query-block-jobs,
 * query-named-block-nodes, query-block-exports and query-jobs; then every
 * export is deleted, every job cancelled (as the daemon's stop does), the
 * NBD server stopped and every node deleted with blockdev-del, and
 * nothing may be left: no node, job or export (the next input builds the
 * same graph again). No crash, no leak, no hang (libFuzzer's -timeout),
 * no out-of-bounds access. VBD_FUZZ_VERBOSE=1 prints every command, its
 * reply and its time. */
#include "daemon/objects.h"
#include "fuzz-input.h"
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/job.h"
#include "vbd/loop.h"
#include "vbd/nbd.h"
#include "vbd/qmp.h"

#include <fcntl.h>
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DISK (1u << 20)
#define MAX_COMMANDS 24

static char dir[256];


#define PICK(in, arr) (arr[input_next(in) % (sizeof(arr) / sizeof(arr[0]))])

/* ------------------------------------------------------------------ */
/* the scratch directory                                               */

static char *scratch(const char *name)
{
    static char paths[16][320];
    static unsigned turn;
    char *p = paths[turn++ % 16];
    snprintf(p, 320, "%s/%s", dir, name);
    return p;
}

static void remove_scratch(void)
{
    static const char *const files[] = {"base.qcow2",          "mid.qcow2",          "top.qcow2",
                                        "tgt.qcow2",           "d0.qcow2",           "d1.raw",
                                        "d2.vmdk",             "nbd.sock",           "vu0.sock",
                                        "vu1.sock",            "base.qcow2.pristine", "mid.qcow2.pristine",
                                        "top.qcow2.pristine",  "tgt.qcow2.pristine"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        unlink(scratch(files[i]));
    rmdir(dir);
}

/* ------------------------------------------------------------------ */
/* values                                                              */

static const int64_t ints[] = {
    0,         1,          -1,       2,        7,         511,       512,           4096,      65536,
    1 << 20,   DISK + 512, 2 * DISK, 1 << 30,  INT64_MAX, INT64_MIN, 4095,          1LL << 31, 1LL << 32,
    1LL << 40, 1LL << 62,  -4096,    DISK / 2, 123456789, 64 << 20,  (64 << 20) + 1};
static const char *const strs[] = {"",      "x",        "on",  "off",  "1",    "-1",   "1k",
                                   "x\xff", "\xc3\x28", "a b", "0x10", "auto", "qcow2"};
static const char *const nodes[] = {"top", "mid", "base",     "tgt",      "nul",      "small",
                                    "f0",  "m0",  "",         "nosuch",   "top",      "tgt",
                                    "nul", "mid", "top-file", "tgt-file", "base-file"};
static const char *const new_nodes[] = {"f0", "m0", "top", "", "1bad", "#x", "f1"};
static const char *const jobs[] = {"j0", "j1", "top", "mid", "tgt", "", "1bad", "j0"};
static const char *const exports[] = {"e0", "e1", "", "1bad", "e0", "e1", "e0"};
static const char *const bitmaps[] = {"b0", "b1", "", "b0"};
static const char *const on_errors[] = {"report", "ignore", "enospc", "stop", "auto"};
static const char *const syncs[] = {"full", "top", "none", "incremental", "bitmap", "full"};
static const char *const formats[] = {"qcow2", "raw", "vmdk", "null-co", "file"};
static const char *const modes_drive[] = {"existing", "absolute-paths"};
static const char *const modes_del[] = {"safe", "hard"};
static const char *const copy_modes[] = {"background", "write-blocking"};
static const char *const bitmap_modes[] = {"on-success", "never", "always"};
static const char *const werrors[] = {"report", "stop", "enospc", "ignore"};
static const char *const rerrors[] = {"report", "stop", "ignore"};
static const char *const export_types[] = {"nbd", "vhost-user-blk", "fuse", "vduse-blk", ""};
static const char *const iothreads[] = {"io0", "io0", "nosuch", ""};
static const char *const paths[] = {"d0.qcow2",   "d1.raw",    "d2.vmdk",         "d0.qcow2",
                                    "base.qcow2", "mid.qcow2", "no/such/d.qcow2", "top.qcow2"};
static const char *const completion_modes[] = {"individual", "grouped"};

/* a value of some type the command does not expect */
static struct json_object *wrong(struct input *in)
{
    switch (input_next(in) % 8) {
    case 0:
        return json_object_new_int64(PICK(in, ints));
    case 1:
        return json_object_new_string(PICK(in, strs));
    case 2:
        return json_object_new_boolean(input_next(in) & 1);
    case 3:
        return NULL;
    case 4:
        return json_object_new_double((double)(int8_t)input_next(in) / 3.0);
    case 5:
        return json_object_new_array();
    case 6:
        return json_object_new_object();
    default:
        return json_object_new_uint64(UINT64_MAX - input_next(in));
    }
}

static struct json_object *str(const char *s)
{
    return json_object_new_string(s);
}

static struct json_object *path(struct input *in)
{
    unsigned b = input_next(in);
    if (b % 11 == 10) { /* longer than a socket's path may be */
        char longp[300];
        memset(longp, 'p', sizeof(longp) - 1);
        longp[sizeof(longp) - 1] = 0;
        return str(longp);
    }
    return str(scratch(paths[b % (sizeof(paths) / sizeof(paths[0]))]));
}

/* A unix socket address, right or wrong in one of several ways. */
static struct json_object *addr(struct input *in)
{
    struct json_object *a = json_object_new_object();
    unsigned b = input_next(in);
    json_object_object_add(a, "type",
                           str(b % 7 == 1   ? "inet"
                               : b % 7 == 2 ? "fd"
                               : b % 7 == 3 ? "bogus"
                                            : "unix"));
    if (b % 5 != 4)
        json_object_object_add(a, "path",
                               b % 9 == 8 ? path(in) : str(scratch(input_next(in) & 1 ? "vu1.sock" : "vu0.sock")));
    if (b % 13 == 5)
        json_object_object_add(a, "abstract", json_object_new_boolean(input_next(in) & 1));
    if (b % 17 == 6)
        json_object_object_add(a, "tight", json_object_new_boolean(input_next(in) & 1));
    if (b % 19 == 7)
        json_object_object_add(a, "port", str("10809"));
    if (b % 23 == 8)
        json_object_object_add(a, "host", wrong(in));
    return a;
}

/* The members' kinds. */
enum kind {
    K_BOOL,
    K_INT,
    K_STR,
    K_NODE,
    K_NEW_NODE,
    K_JOB,
    K_EXPORT,
    K_BITMAP,
    K_PATH,
    K_ENUM,
    K_IOTHREAD,  /* one id */
    K_IOTHREADS, /* one id or a list */
    K_ADDR,
    K_EXPORT_BITMAPS,
    K_XPERF,
    K_SIZE,
    K_BITMAP_LIST,
};

struct member {
    const char *name;
    enum kind kind;
    bool required;
    const char *const *choices; /* K_ENUM */
    size_t nchoices;
};

#define M(n, k)                                                                                              \
    {                                                                                                        \
        n, k, false, NULL, 0                                                                                 \
    }
#define R(n, k)                                                                                              \
    {                                                                                                        \
        n, k, true, NULL, 0                                                                                  \
    }
#define E(n, c)                                                                                              \
    {                                                                                                        \
        n, K_ENUM, false, c, sizeof(c) / sizeof(c[0])                                                        \
    }
#define RE(n, c)                                                                                             \
    {                                                                                                        \
        n, K_ENUM, true, c, sizeof(c) / sizeof(c[0])                                                         \
    }
#define END                                                                                                  \
    {                                                                                                        \
        NULL, 0, false, NULL, 0                                                                              \
    }

static struct json_object *value(struct input *in, const struct member *m, int depth);

/* Most commands are plausible (this flag): values from the names the graph
 * has and sane numbers, optional members now and then, no wrong types; the
 * others are hostile. Commands whose members are all drawn from the
 * hostile pools almost never start a job: the states a job goes through
 * would be left unexplored. */
static bool plausible;

static struct json_object *plausible_value(struct input *in, const struct member *m)
{
    static const char *const p_nodes[] = {"top", "tgt", "nul", "mid", "base", "top", "tgt"};
    static const char *const p_jobs[] = {"j0", "j1", "top"};
    static const char *const p_exports[] = {"e0", "e1"};
    static const int64_t p_ints[] = {0, 512, 65536, 1 << 20, 4096, 1};
    static const int64_t p_sizes[] = {DISK, 2 * DISK, DISK + 65536};
    switch (m->kind) {
    case K_INT:
        return json_object_new_int64(PICK(in, p_ints));
    case K_SIZE:
        return json_object_new_int64(PICK(in, p_sizes));
    case K_NODE:
        return str(PICK(in, p_nodes));
    case K_JOB:
        return str(PICK(in, p_jobs));
    case K_EXPORT:
        return str(PICK(in, p_exports));
    case K_BITMAP:
        return str("b0");
    case K_ENUM:
        return str(m->choices[input_next(in) % m->nchoices]);
    case K_IOTHREAD:
    case K_IOTHREADS:
        return str("io0");
    default:
        return NULL; /* the hostile generator's */
    }
}

static struct json_object *good(struct input *in, const struct member *m, int depth)
{
    if (plausible) {
        struct json_object *v = plausible_value(in, m);
        if (v)
            return v;
    }
    switch (m->kind) {
    case K_BOOL:
        return json_object_new_boolean(input_next(in) & 1);
    case K_INT:
        return json_object_new_int64(PICK(in, ints));
    case K_SIZE: {
        static const int64_t sizes[] = {DISK, DISK / 2,  2 * DISK,  DISK + 512, 0,
                                        -1,   INT64_MAX, 1LL << 40, DISK + 1};
        return json_object_new_int64(PICK(in, sizes));
    }
    case K_STR:
        return str(PICK(in, strs));
    case K_NODE:
        return str(PICK(in, nodes));
    case K_NEW_NODE:
        return str(PICK(in, new_nodes));
    case K_JOB:
        return str(PICK(in, jobs));
    case K_EXPORT:
        return str(PICK(in, exports));
    case K_BITMAP:
        return str(PICK(in, bitmaps));
    case K_PATH:
        return path(in);
    case K_ENUM: {
        unsigned b = input_next(in);
        return str(b % 8 == 7 ? "bogus" : m->choices[b % m->nchoices]);
    }
    case K_IOTHREAD:
        return input_next(in) % 4 == 3 ? NULL : str(PICK(in, iothreads));
    case K_IOTHREADS: {
        if (input_next(in) % 3)
            return str(PICK(in, iothreads));
        struct json_object *a = json_object_new_array();
        for (unsigned i = 0, n = input_next(in) % 4; i < n; i++)
            json_object_array_add(a, str(PICK(in, iothreads)));
        return a;
    }
    case K_ADDR:
        return addr(in);
    case K_EXPORT_BITMAPS:
    case K_BITMAP_LIST: {
        struct json_object *a = json_object_new_array();
        for (unsigned i = 0, n = input_next(in) % 3; i < n; i++) {
            unsigned b = input_next(in);
            if (b % 3 == 2 || (m->kind == K_BITMAP_LIST && b % 3 == 1)) {
                struct json_object *o = json_object_new_object();
                json_object_object_add(o, "node", str(PICK(in, nodes)));
                json_object_object_add(o, "name", str(PICK(in, bitmaps)));
                json_object_array_add(a, o);
            } else if (b % 3 == 1) {
                json_object_array_add(a, wrong(in));
            } else {
                json_object_array_add(a, str(PICK(in, bitmaps)));
            }
        }
        return a;
    }
    case K_XPERF: {
        static const struct member perf[] = {M("use-copy-range", K_BOOL), M("max-workers", K_INT),
                                             M("max-chunk", K_INT), M("bogus", K_INT), END};
        struct json_object *o = json_object_new_object();
        for (const struct member *p = perf; p->name; p++)
            if (input_next(in) & 1)
                json_object_object_add(o, p->name, value(in, p, depth + 1));
        return o;
    }
    }
    return NULL;
}

static struct json_object *value(struct input *in, const struct member *m, int depth)
{
    /* an input that ran out (zero bytes) gives good values and every
     * required member: the commands get past their checks */
    return input_next(in) % 16 == 15 && depth < 3 && !plausible ? wrong(in) : good(in, m, depth);
}

/* The arguments of a command: each member present (mostly, if required)
 * or not, now and then one the command does not know. */
static struct json_object *arguments(struct input *in, const struct member *ms, int depth)
{
    struct json_object *o = json_object_new_object();
    for (const struct member *m = ms; m->name; m++) {
        unsigned b = input_next(in);
        /* a job-id, which qsd's jobs need (a daemon's node has no device name to default to) */
        bool want = m->required || (plausible && !strcmp(m->name, "job-id"));
        if (want ? b % 32 == 31 && !plausible : b % (plausible ? 6 : 3) != 0)
            continue;
        json_object_object_add(o, m->name, value(in, m, depth));
    }
    if (input_next(in) % 16 == 15 && !plausible)
        json_object_object_add(o, "bogus", wrong(in));
    return o;
}

/* ------------------------------------------------------------------ */
/* the commands                                                        */

#define JOB_COMMON                                                                                           \
    M("speed", K_INT), E("on-error", on_errors), M("filter-node-name", K_NEW_NODE),                          \
        M("auto-finalize", K_BOOL), M("auto-dismiss", K_BOOL)
#define MIRROR_COMMON                                                                                        \
    M("job-id", K_JOB), R("device", K_NODE), M("replaces", K_NODE), RE("sync", syncs), M("speed", K_INT),    \
        M("granularity", K_INT), M("buf-size", K_INT), E("on-source-error", on_errors),                      \
        E("on-target-error", on_errors), E("copy-mode", copy_modes), M("auto-finalize", K_BOOL),             \
        M("auto-dismiss", K_BOOL)
#define BACKUP_COMMON                                                                                        \
    M("job-id", K_JOB), R("device", K_NODE), RE("sync", syncs), M("speed", K_INT), M("bitmap", K_BITMAP),    \
        E("bitmap-mode", bitmap_modes), M("compress", K_BOOL), E("on-source-error", on_errors),              \
        E("on-target-error", on_errors), M("auto-finalize", K_BOOL), M("auto-dismiss", K_BOOL),              \
        M("filter-node-name", K_NEW_NODE), M("x-perf", K_XPERF)
#define EXPORT_COMMON                                                                                        \
    R("id", K_EXPORT), M("fixed-iothread", K_BOOL), M("iothread", K_IOTHREADS), R("node-name", K_NODE),      \
        M("writable", K_BOOL), M("writethrough", K_BOOL)

static const struct member export_nbd[] = {EXPORT_COMMON,
                                           M("name", K_STR),
                                           M("description", K_STR),
                                           M("bitmaps", K_EXPORT_BITMAPS),
                                           M("allocation-depth", K_BOOL),
                                           END};
static const struct member export_vhost[] = {EXPORT_COMMON,
                                             R("addr", K_ADDR),
                                             M("logical-block-size", K_INT),
                                             M("num-queues", K_INT),
                                             M("physical-block-size", K_INT),
                                             M("serial", K_STR),
                                             E("werror", werrors),
                                             E("rerror", rerrors),
                                             M("retry-interval", K_INT),
                                             M("merge", K_BOOL),
                                             M("server", K_BOOL),
                                             END};
static const struct member export_del[] = {R("id", K_EXPORT), E("mode", modes_del), END};
static const struct member stream[] = {
    M("job-id", K_JOB),       R("device", K_NODE), M("base", K_PATH), M("base-node", K_NODE),
    M("backing-file", K_STR), M("bottom", K_NODE), JOB_COMMON,        END};
static const struct member commit[] = {M("job-id", K_JOB),
                                       R("device", K_NODE),
                                       M("base-node", K_NODE),
                                       M("base", K_PATH),
                                       M("top-node", K_NODE),
                                       M("top", K_PATH),
                                       M("backing-file", K_STR),
                                       JOB_COMMON,
                                       END};
static const struct member drive_mirror[] = {MIRROR_COMMON,
                                             R("target", K_PATH),
                                             E("format", formats),
                                             M("node-name", K_NEW_NODE),
                                             E("mode", modes_drive),
                                             M("unmap", K_BOOL),
                                             END};
static const struct member blockdev_mirror[] = {MIRROR_COMMON, R("target", K_NODE),
                                                M("filter-node-name", K_NEW_NODE), END};
static const struct member blockdev_backup[] = {BACKUP_COMMON, R("target", K_NODE), END};
static const struct member drive_backup[] = {BACKUP_COMMON, R("target", K_PATH), E("format", formats),
                                             E("mode", modes_drive), END};
static const struct member job_id[] = {R("id", K_JOB), END};
static const struct member job_device[] = {R("device", K_JOB), END};
static const struct member job_cancel[] = {R("device", K_JOB), M("force", K_BOOL), END};
static const struct member job_speed[] = {R("device", K_JOB), R("speed", K_INT), END};
static const struct member bitmap_add[] = {R("node", K_NODE),       R("name", K_BITMAP),
                                           M("granularity", K_INT), M("persistent", K_BOOL),
                                           M("disabled", K_BOOL),   END};
static const struct member bitmap_name[] = {R("node", K_NODE), R("name", K_BITMAP), END};
static const struct member bitmap_merge[] = {R("node", K_NODE), R("target", K_BITMAP),
                                             R("bitmaps", K_BITMAP_LIST), END};
static const struct member resize[] = {M("node-name", K_NODE), M("device", K_NODE), R("size", K_SIZE), END};
static const struct member set_iothread[] = {R("node-name", K_NODE), R("iothread", K_IOTHREAD),
                                             M("force", K_BOOL), END};
static const struct member node_del[] = {R("node-name", K_NODE), END};
static const struct member server_add[] = {R("device", K_NODE),     M("name", K_EXPORT),
                                           M("description", K_STR), M("writable", K_BOOL),
                                           M("bitmap", K_BITMAP),   END};
static const struct member server_remove[] = {R("name", K_EXPORT), E("mode", modes_del), END};
static const struct member none[] = {END};

struct command {
    const char *name;
    const struct member *members;
    const char *type; /* block-export-add's type, first */
};

static const struct command commands[] = {
    {"block-export-add", export_nbd, "nbd"},
    {"block-export-add", export_vhost, "vhost-user-blk"},
    {"block-export-add", export_nbd, NULL}, /* the type from the input */
    {"block-export-del", export_del, NULL},
    {"query-block-exports", none, NULL},
    {"block-stream", stream, NULL},
    {"block-commit", commit, NULL},
    {"drive-mirror", drive_mirror, NULL},
    {"blockdev-mirror", blockdev_mirror, NULL},
    {"blockdev-backup", blockdev_backup, NULL},
    {"drive-backup", drive_backup, NULL},
    {"transaction", NULL, NULL},
    {"job-pause", job_id, NULL},
    {"job-resume", job_id, NULL},
    {"job-cancel", job_id, NULL},
    {"job-complete", job_id, NULL},
    {"job-finalize", job_id, NULL},
    {"job-dismiss", job_id, NULL},
    {"block-job-pause", job_device, NULL},
    {"block-job-resume", job_device, NULL},
    {"block-job-cancel", job_cancel, NULL},
    {"block-job-complete", job_device, NULL},
    {"block-job-finalize", job_id, NULL},
    {"block-job-dismiss", job_id, NULL},
    {"block-job-set-speed", job_speed, NULL},
    {"query-jobs", none, NULL},
    {"query-block-jobs", none, NULL},
    {"block-dirty-bitmap-add", bitmap_add, NULL},
    {"block-dirty-bitmap-remove", bitmap_name, NULL},
    {"block-dirty-bitmap-disable", bitmap_name, NULL},
    {"block-dirty-bitmap-merge", bitmap_merge, NULL},
    {"block_resize", resize, NULL},
    {"x-blockdev-set-iothread", set_iothread, NULL},
    {"blockdev-del", node_del, NULL},
    {"nbd-server-add", server_add, NULL},
    {"nbd-server-remove", server_remove, NULL},
    {"nbd-server-stop", none, NULL},
    {NULL, NULL, NULL}, /* a pause: the jobs run */
    {NULL, NULL, NULL},
    {NULL, NULL, NULL},
};

static struct json_object *transaction(struct input *in)
{
    static const struct {
        const char *type;
        const struct member *members;
    } actions[] = {{"blockdev-backup", blockdev_backup},
                   {"drive-backup", drive_backup},
                   {"block-dirty-bitmap-add", bitmap_add},
                   {"block-dirty-bitmap-clear", bitmap_name},
                   {"block-dirty-bitmap-disable", bitmap_name},
                   {"block-dirty-bitmap-merge", bitmap_merge},
                   {"abort", none},
                   {"bogus", none}};
    struct json_object *args = json_object_new_object(), *list = json_object_new_array();
    for (unsigned i = 0, n = 1 + input_next(in) % 3; i < n; i++) {
        unsigned a = input_next(in) % (sizeof(actions) / sizeof(actions[0]));
        struct json_object *act = json_object_new_object();
        json_object_object_add(act, "type", str(actions[a].type));
        json_object_object_add(act, "data", arguments(in, actions[a].members, 1));
        json_object_array_add(list, act);
    }
    json_object_object_add(args, "actions", list);
    if (input_next(in) % 3 == 0) {
        struct json_object *p = json_object_new_object();
        json_object_object_add(p, "completion-mode", str(PICK(in, completion_modes)));
        json_object_object_add(args, "properties", p);
    }
    return args;
}

/* ------------------------------------------------------------------ */
/* running them                                                        */

static bool verbose;

/* One command as the monitor runs it: the commands' lock, the dispatch,
 * the image locks following the graph. The reply; it must be one. */
static struct json_object *execute(const char *name, struct json_object *args)
{
    struct json_object *req = json_object_new_object();
    json_object_object_add(req, "execute", str(name));
    if (args)
        json_object_object_add(req, "arguments", args);
    if (verbose)
        fprintf(stderr, "-> [%.1f ms] %s\n", vbd_clock_ns() / 1e6, json_object_to_json_string(req));
    uint64_t t0 = vbd_clock_ns();
    vbd_qmp_graph_lock();
    struct json_object *reply = vbd_qmp_dispatch(req, true);
    struct vbd_error *le = NULL;
    vbd_qmp_image_locks_refresh(&le);
    vbd_error_free(le);
    vbd_qmp_graph_unlock();
    json_object_put(req);
    struct json_object *e, *d;
    bool ret = json_object_object_get_ex(reply, "return", NULL),
         err = json_object_object_get_ex(reply, "error", &e);
    if (verbose)
        fprintf(stderr, "<- (%.1f ms) %s\n", (vbd_clock_ns() - t0) / 1e6, json_object_to_json_string(reply));
    if (ret == err) {
        fprintf(stderr, "%s: a reply that is neither return nor error: %s\n", name,
                json_object_to_json_string(reply));
        abort();
    }
    if (err && (!json_object_object_get_ex(e, "desc", &d) || !json_object_get_string_len(d))) {
        fprintf(stderr, "%s: an error that does not say why: %s\n", name, json_object_to_json_string(reply));
        abort();
    }
    return reply;
}

static bool ok(struct json_object *reply)
{
    bool r = json_object_object_get_ex(reply, "return", NULL);
    json_object_put(reply);
    return r;
}

/* Setup commands that must succeed. */
static void must(const char *name, struct json_object *args)
{
    struct json_object *reply = execute(name, args);
    if (!json_object_object_get_ex(reply, "return", NULL)) {
        fprintf(stderr, "%s (the graph's setup) failed: %s\n", name, json_object_to_json_string(reply));
        abort();
    }
    json_object_put(reply);
}

static struct json_object *parse(const char *text)
{
    struct json_object *o = json_tokener_parse(text);
    if (!o)
        abort();
    return o;
}

static void create(const char *name, const char *backing)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "size", json_object_new_int64(DISK));
    if (backing) {
        json_object_object_add(o, "backing_file", str(scratch(backing)));
        json_object_object_add(o, "backing_fmt", str("qcow2"));
    }
    struct vbd_error *err = NULL;
    if (vbd_image_co_create("qcow2", scratch(name), o, &err) < 0) {
        fprintf(stderr, "cannot create %s: %s\n", scratch(name), err ? err->msg : "?");
        abort();
    }
    json_object_put(o);
}

static void add_qcow2(const char *node, const char *file, const char *backing)
{
    char text[1024];
    snprintf(text, sizeof(text),
             "{\"driver\": \"qcow2\", \"node-name\": \"%s\", \"file\": {\"driver\": \"file\", \"node-name\": "
             "\"%s-file\", \"filename\": \"%s\"}%s%s%s}",
             node, node, scratch(file), backing ? ", \"backing\": \"" : "", backing ? backing : "",
             backing ? "\"" : "");
    must("blockdev-add", parse(text));
}

/* 64 KiB of FILL at OFF of node NODE */
static void fill(const char *node, uint64_t off, uint8_t fill)
{
    static uint8_t buf[65536];
    memset(buf, fill, sizeof(buf));
    struct vbd_node *n = vbd_node_find(node);
    if (!n || vbd_node_co_pwrite(n, off, buf, sizeof(buf), 0) < 0) {
        fprintf(stderr, "cannot write to %s\n", node);
        abort();
    }
}

/* FROM's bytes into a new file TO (both in the scratch directory), its
 * holes left holes: the copy takes the space the original takes, as the
 * daemon's answers (actual-size) show */
static void copy_file(const char *from, const char *to)
{
    char src[320], dst[320];
    snprintf(src, sizeof(src), "%s", scratch(from));
    snprintf(dst, sizeof(dst), "%s", scratch(to));
    int in = open(src, O_RDONLY), out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    off_t end = in >= 0 ? lseek(in, 0, SEEK_END) : -1;
    bool copied = in >= 0 && out >= 0 && end >= 0 && ftruncate(out, end) == 0;
    static char buf[65536];
    for (off_t at = 0; copied && at < end;) {
        off_t data = lseek(in, at, SEEK_DATA);
        if (data < 0) /* no data after at (ENXIO) */
            break;
        off_t hole = lseek(in, data, SEEK_HOLE);
        copied = hole > data;
        for (at = data; copied && at < hole;) {
            size_t want = (size_t)(hole - at) < sizeof(buf) ? (size_t)(hole - at) : sizeof(buf);
            ssize_t n = pread(in, buf, want, at);
            copied = n > 0 && pwrite(out, buf, (size_t)n, at) == n;
            at += n;
        }
    }
    if (!copied) {
        fprintf(stderr, "cannot copy %s to %s\n", src, dst);
        abort();
    }
    close(in);
    close(out);
}

static void teardown(void);

static const char *const images[] = {"base.qcow2", "mid.qcow2", "top.qcow2", "tgt.qcow2"};

/* The chain's and tgt's images as every input starts with them, made once
 * (created, the data written through their nodes, the nodes deleted) and
 * kept as NAME.pristine: each input's graph opens copies of them. Made
 * afresh for each input, they took half of an input's time (ASan). */
static void make_pristine_images(void)
{
    create("base.qcow2", NULL);
    create("mid.qcow2", "base.qcow2");
    create("top.qcow2", "mid.qcow2");
    create("tgt.qcow2", NULL);
    add_qcow2("base", "base.qcow2", NULL);
    add_qcow2("mid", "mid.qcow2", "base");
    add_qcow2("top", "top.qcow2", "mid");
    add_qcow2("tgt", "tgt.qcow2", NULL);
    fill("base", 0, 0x11);
    fill("mid", 65536, 0x22);
    fill("top", 3 * 65536, 0x33);
    fill("tgt", DISK - 65536, 0x44);
    teardown();
    for (size_t i = 0; i < sizeof(images) / sizeof(images[0]); i++) {
        char pristine[64];
        snprintf(pristine, sizeof(pristine), "%s.pristine", images[i]);
        copy_file(images[i], pristine);
    }
}

static void build_graph(void)
{
    static bool pristine_made;
    if (!pristine_made) {
        make_pristine_images();
        pristine_made = true;
    }
    static const char *const drop[] = {"d0.qcow2", "d1.raw", "d2.vmdk", "vu0.sock", "vu1.sock"};
    for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
        unlink(scratch(drop[i]));
    for (size_t i = 0; i < sizeof(images) / sizeof(images[0]); i++) {
        char pristine[64];
        snprintf(pristine, sizeof(pristine), "%s.pristine", images[i]);
        copy_file(pristine, images[i]);
    }
    add_qcow2("base", "base.qcow2", NULL);
    add_qcow2("mid", "mid.qcow2", "base");
    add_qcow2("top", "top.qcow2", "mid");
    add_qcow2("tgt", "tgt.qcow2", NULL);
    must(
        "blockdev-add",
        parse("{\"driver\": \"null-co\", \"node-name\": \"nul\", \"size\": 1048576, \"read-zeroes\": true}"));
    must("blockdev-add", parse("{\"driver\": \"null-co\", \"node-name\": \"small\", \"size\": 524288}"));
    if (!vbd_nbd_server_running()) {
        char text[512];
        snprintf(text, sizeof(text), "{\"addr\": {\"type\": \"unix\", \"data\": {\"path\": \"%s\"}}}",
                 scratch("nbd.sock"));
        unlink(scratch("nbd.sock"));
        must("nbd-server-start", parse(text));
    }
}

/* Whatever the input left: exports deleted, jobs cancelled, nodes
 * deleted; nothing may remain. */
static void teardown(void)
{
    for (;;) {
        struct vbd_daemon_export *e = vbd_daemon_export_first();
        if (!e)
            break;
        struct json_object *a = json_object_new_object();
        json_object_object_add(a, "id", str(e->id));
        json_object_object_add(a, "mode", str("hard"));
        if (!ok(execute("block-export-del", a))) {
            fprintf(stderr, "export '%s' cannot be deleted\n", e->id);
            abort();
        }
    }
    vbd_job_cancel_all_sync();
    /* the NBD server goes too (started again by the next input): its
     * accept loop waits in the kernel's ring, where LeakSanitizer does not
     * see the coroutine it holds */
    if (vbd_nbd_server_running() && !ok(execute("nbd-server-stop", NULL))) {
        fprintf(stderr, "nbd-server-stop failed\n");
        abort();
    }
    for (bool progress = true; progress;) {
        progress = false;
        for (struct vbd_node *n = vbd_daemon_node_next(NULL), *nx; n; n = nx) {
            nx = vbd_daemon_node_next(n);
            char name[128];
            snprintf(name, sizeof(name), "%s", n->node_name);
            struct json_object *a = json_object_new_object();
            json_object_object_add(a, "node-name", str(name));
            if (ok(execute("blockdev-del", a))) {
                progress = true;
                break; /* the list changed */
            }
        }
    }
    struct vbd_node *left = vbd_node_next(NULL);
    struct vbd_job *job = vbd_job_next(NULL);
    if (left || job || vbd_daemon_export_first()) {
        fprintf(stderr, "left after the teardown: node '%s', job '%s'\n", left ? left->node_name : "-",
                job ? job->id : "-");
        abort();
    }
}

struct run {
    const uint8_t *data;
    size_t size;
};

static void run_co(void *arg)
{
    struct run *r = arg;
    struct input in = {r->data, r->size};
    build_graph();
    if (verbose)
        fprintf(stderr, "graph built [%.1f ms]\n", vbd_clock_ns() / 1e6);
    for (int i = 0; i < MAX_COMMANDS && in.left; i++) {
        const struct command *c = &commands[input_next(&in) % (sizeof(commands) / sizeof(commands[0]))];
        plausible = input_next(&in) % 4 != 3;
        if (!c->name) {
            static const uint64_t waits[] = {0, 10000, 100000, 1000000, 5000000};
            vbd_co_sleep_ns(PICK(&in, waits));
            continue;
        }
        struct json_object *args;
        if (!strcmp(c->name, "transaction")) {
            args = transaction(&in);
        } else {
            args = arguments(&in, c->members, 0);
            if (!strcmp(c->name, "block-export-add") && (input_next(&in) % 16 != 15 || !c->type))
                json_object_object_add(args, "type", str(c->type ? c->type : PICK(&in, export_types)));
        }
        json_object_put(execute(c->name, args));
    }
    /* still answering */
    static const char *const queries[] = {"query-block-jobs", "query-named-block-nodes",
                                          "query-block-exports", "query-jobs"};
    for (size_t i = 0; i < sizeof(queries) / sizeof(queries[0]); i++)
        if (!ok(execute(queries[i], NULL))) {
            fprintf(stderr, "%s failed after the input\n", queries[i]);
            abort();
        }
    teardown();
    if (verbose)
        fprintf(stderr, "torn down [%.1f ms]\n", vbd_clock_ns() / 1e6);
}

static void init_co(void *arg)
{
    (void)arg;
    must("object-add", parse("{\"qom-type\": \"iothread\", \"id\": \"io0\"}"));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4096)
        return 0;
    if (!dir[0]) {
        /* TMPDIR if set, else tmpfs: every input creates and closes four
         * images, and a disk's fsyncs at close made an input take seconds */
        const char *t = getenv("TMPDIR");
        if (!t || !*t)
            t = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(dir, sizeof(dir), "%s/vbd-fuzz-qmp-jobs.XXXXXX", t);
        if (!mkdtemp(dir)) {
            perror(dir);
            abort();
        }
        atexit(remove_scratch);
        verbose = getenv("VBD_FUZZ_VERBOSE") != NULL;
        vbd_co_run_sync(init_co, NULL);
    }
    struct run r = {data, size};
    vbd_co_run_sync(run_co, &r);
    return 0;
}
