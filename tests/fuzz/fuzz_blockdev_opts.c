/* Fuzz target: blockdev-add's option trees (what QMP blockdev-add, --blockdev
 * and --drive hand to vbd_open) built from the input: a driver, then keys
 * and values picked by the input's bytes from the options vbd's drivers
 * take (generic ones: node-name, read-only, discard, detect-zeroes, cache.*,
 * force-share; raw's offset/size, quorum's children and vote-threshold,
 * blkdebug's align and inject-error rules, null's size, ...), with values of
 * every type and range (negative, huge, strings where numbers go, nested
 * objects and arrays), children as nested trees or node names. Only drivers
 * that touch no file, socket or clock are offered (null-co, null-aio, raw,
 * copy-on-read, quorum, blkdebug without a config file, throttle without a
 * group, compress, snapshot-access, copy-before-write): the input cannot make
 * the process open a path or wait. An open must fail with an error or give
 * a node that reads (and writes, if read-write) at its start and its end and
 * closes, every node it made with it; no crash, no leak, no out-of-bounds
 * access. */
#include "fuzz-input.h"
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"

#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static const char *const drivers[] = {"null-co", "null-aio", "raw", "copy-on-read", "quorum", "blkdebug",
                                      "throttle", "compress", "snapshot-access", "copy-before-write"};
static const char *const keys[] = {
    "node-name", "read-only", "auto-read-only", "discard", "detect-zeroes", "cache.direct", "cache.no-flush",
    "force-share", "size", "read-zeroes", "offset", "file", "children", "vote-threshold", "read-pattern",
    "rewrite-corrupted", "blkverify", "align", "max-transfer", "opt-write-zero", "max-write-zero", "opt-discard",
    "max-discard", "inject-error", "set-state", "image", "bottom", "target", "throttle-group", "bitmap",
    "on-cbw-error", "cbw-timeout", "backing", "driver", "cache", "x", "event", "state", "errno", "sector",
    "once", "immediately", "iotype", "new_state", "limits",
};
static const char *const strings[] = {
    "n0", "n1", "on", "off", "unmap", "ignore", "true", "4096", "1k", "64M", "-1", "", "fifo", "quorum",
    "read", "write", "flush_to_disk", "read_aio", "write_aio", "break-guest-write", "break-snapshot",
    "18446744073709551616", "0x10", "1e3", "null-co", "#block001", "x\xff",
};
static const int64_t ints[] = {0, 1, -1, 2, 3, 7, 512, 4096, 65536, 1 << 20, 1 << 30, INT64_MAX, INT64_MIN, 4095, 1023};

static struct json_object *tree(struct input *in, int depth);

static struct json_object *value(struct input *in, int depth, const char *key)
{
    unsigned b = input_next(in);
    if (!strcmp(key, "driver"))
        return json_object_new_string(drivers[b % (sizeof(drivers) / sizeof(drivers[0]))]);
    bool child = !strcmp(key, "file") || !strcmp(key, "image") || !strcmp(key, "target") || !strcmp(key, "bottom") ||
                 !strcmp(key, "backing");
    if (child && depth < 4 && b % 3 == 0)
        return tree(in, depth + 1);
    if (!strcmp(key, "children") && depth < 4 && b % 2 == 0) {
        struct json_object *a = json_object_new_array();
        for (unsigned i = 0, n = input_next(in) % 5; i < n; i++)
            json_object_array_add(a, tree(in, depth + 1));
        return a;
    }
    switch (b % 9) {
    case 0:
    case 1: return json_object_new_int64(ints[input_next(in) % (sizeof(ints) / sizeof(ints[0]))]);
    case 2:
    case 3: return json_object_new_string(strings[input_next(in) % (sizeof(strings) / sizeof(strings[0]))]);
    case 4: return json_object_new_boolean(input_next(in) & 1);
    case 5: return NULL;
    case 6: return json_object_new_double((double)(int8_t)input_next(in) * 1.5);
    case 7: {
        if (depth >= 4)
            return json_object_new_int(1);
        struct json_object *a = json_object_new_array();
        for (unsigned i = 0, n = input_next(in) % 3; i < n; i++)
            json_object_array_add(a, input_next(in) & 1 ? tree(in, depth + 1) : value(in, depth + 1, "x"));
        return a;
    }
    default: return depth < 4 ? tree(in, depth + 1) : json_object_new_int(0);
    }
}

/* An object: a driver first (most of the time), then keys the input picks. */
static struct json_object *tree(struct input *in, int depth)
{
    struct json_object *o = json_object_new_object();
    if (input_next(in) % 8)
        json_object_object_add(o, "driver", value(in, depth, "driver"));
    for (unsigned i = 0, n = input_next(in) % 7; i < n && in->left; i++) {
        const char *k = keys[input_next(in) % (sizeof(keys) / sizeof(keys[0]))];
        json_object_object_add(o, k, value(in, depth, k));
    }
    return o;
}

struct run {
    const uint8_t *data;
    size_t size;
};

static void run_co(void *arg)
{
    struct run *r = arg;
    struct input in = {r->data + 1, r->size - 1};
    unsigned flags = r->data[0] & 1 ? VBD_OPEN_RDWR : 0;
    struct json_object *o = tree(&in, 0);
    if (getenv("VBD_FUZZ_VERBOSE"))
        fprintf(stderr, "options: %s\n", json_object_to_json_string(o));
    struct vbd_error *err = NULL;
    struct vbd_node *n = vbd_open(NULL, o, flags, &err);
    if (!n) {
        if (!err || !err->msg[0])
            abort(); /* a refusal says why */
        vbd_error_free(err);
        return;
    }
    if (getenv("VBD_FUZZ_VERBOSE")) /* whether inputs get past the options at all */
        fprintf(stderr, "opened: %s%s\n", n->drv->name, n->read_only ? " (read-only)" : "");
    static uint8_t buf[4096];
    uint64_t sz = vbd_node_size(n);
    uint64_t len = sz < sizeof(buf) ? sz : sizeof(buf);
    if (len) {
        vbd_node_co_pread(n, 0, buf, len);
        vbd_node_co_pread(n, sz - len, buf, len);
        if (flags & VBD_OPEN_RDWR && !n->read_only) {
            memset(buf, 0x5a, len);
            vbd_node_co_pwrite(n, sz - len, buf, len, 0);
            vbd_node_co_flush(n);
        }
    }
    vbd_node_unref(n);
    struct vbd_node *left = vbd_node_next(NULL);
    if (left) { /* every node the input made is gone with its last reference (a cycle kept them) */
        fprintf(stderr, "node '%s' outlived its input\n", left->node_name);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > 4096)
        return 0;
    struct run r = {data, size};
    vbd_co_run_sync(run_co, &r);
    return 0;
}
