/* SPDX-License-Identifier: MIT */
/*
 * vbd-io: opening, reopening and closing the image, apart from the command
 * interpreter (vbd-io.c). vbd-io runs on one thread (the tool's
 * coroutines): nothing here is shared with another.
 */
#include "common.h"
#include "io.h"

#include "vbd/alloc.h"
#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/options.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct vbd_backend *io_be;
struct vbd_node *io_node;
struct vbd_node *io_cor_filter;
bool io_read_only;
/* what the open image was opened with: reopen starts from it */
static struct {
    char *filename;          /* NULL: the options name it */
    struct json_object *opts; /* NULL: none */
    unsigned flags;          /* VBD_OPEN_* */
    unsigned mode;           /* IO_* */
    bool writethrough;
} cur;

bool io_writethrough(void)
{
    return cur.writethrough;
}

static bool reopening; /* open_file's errors are reopen's: no "can't open" */

/* -s and -C over the image n just opened (taken): QEMU's BDRV_O_SNAPSHOT
 * puts the temporary overlay above it (the image itself was opened
 * read-only), BDRV_O_COPY_ON_READ copies into the top layer, refused
 * without write access. *image: what info describes (the overlay or n);
 * returns what the backend runs on, or NULL with err set. */
static struct vbd_node *apply_mode(struct vbd_node *n, unsigned mode, unsigned flags, struct vbd_node **image,
                                   struct vbd_error **err)
{
    if (mode & IO_SNAPSHOT) {
        /* QEMU's temporary overlay: cache.direct=off, cache.no-flush=on
         * whatever the image's cache mode (bdrv_temp_snapshot_options) */
        unsigned oflags = (flags & ~(VBD_OPEN_NOCACHE | VBD_OPEN_AIO_NATIVE | VBD_OPEN_FORCE_SHARE)) | VBD_OPEN_NO_FLUSH;
        struct vbd_node *overlay = tool_open_temp_overlay(n, oflags, NULL, err);
        vbd_node_unref(n); /* held by the overlay as its backing */
        if (!overlay)
            return NULL;
        n = overlay;
    }
    *image = n;
    if (!(mode & IO_COR))
        return n;
    /* QEMU refuses it at the open of a node read-only by -r or by its
     * options (read-only=on), before the permission check */
    if (!(flags & VBD_OPEN_RDWR) || n->read_only) {
        vbd_error_setf(err, EINVAL, "Can't use copy-on-read on read-only device");
        vbd_node_unref(n);
        return NULL;
    }
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("copy-on-read"));
    json_object_object_add(o, "file", json_object_new_string(n->node_name));
    struct vbd_node *cor = vbd_open(NULL, o, flags, err);
    vbd_node_unref(n); /* the filter holds it as its file */
    return cor;
}

/* Opens the image (filename, or what opts name; opts is taken) as qemu-io's
 * openfile does, with its messages: "can't open device FILE: " (or
 * "can't open: " without one) before the reason, which names the file only
 * when open(2) itself failed. The backend is made for it; 0 or -1. */
int io_open_file(const char *filename, struct json_object *opts, unsigned flags, unsigned mode,
                     bool writethrough, bool force_share)
{
    struct vbd_error *err = NULL;
    const char *dev = filename ? " device " : "", *name = filename ? filename : "";
    if (io_node) {
        vbd_error_report("file open already, try 'help close'");
        json_object_put(opts);
        return -1;
    }
    /* with -s the image itself is opened read-only: -U is for it */
    if (force_share && (flags & VBD_OPEN_RDWR) && !(mode & IO_SNAPSHOT)) {
        vbd_error_report("can't open%s%s: force-share=on can only be used with read-only images", dev, name);
        json_object_put(opts);
        return -1;
    }
    if (force_share)
        flags |= VBD_OPEN_FORCE_SHARE;
    struct json_object *kept = NULL;
    if (opts)
        json_object_deep_copy(opts, &kept, NULL);
    /* -s: the image itself is the overlay's read-only backing file */
    struct vbd_node *n = vbd_open(filename, opts, mode & IO_SNAPSHOT ? flags & ~VBD_OPEN_RDWR : flags, &err);
    struct vbd_node *image = NULL, *top = n ? apply_mode(n, mode, flags, &image, &err) : NULL;
    /* QEMU refuses -C on a read-only open before the format driver opens
     * the image (once its file is open): a format's own refusal gives way */
    if (!n && (mode & IO_COR) && !(mode & IO_SNAPSHOT) && !(flags & VBD_OPEN_RDWR) && err &&
        !tool_is_open_errno(err)) {
        vbd_error_free(err);
        err = NULL;
        vbd_error_setf(&err, EINVAL, "Can't use copy-on-read on read-only device");
    }
    if (!top) {
        const char *m = err ? err->msg : "unknown error";
        /* the block layer names the file before a format's reason, as
         * qemu-img does; qemu-io keeps that only for open(2)'s errno */
        if (err && !strncmp(m, "Could not open '", 16)) {
            const char *q = strstr(m + 16, "': ");
            const char *tail = strerror(err->code);
            if (q && strcmp(q + 3, tail))
                m = q + 3;
        }
        /* qemu-io prints a lock conflict's question as a hint line of its own */
        const char *hint = strstr(m, " lock: Is another process");
        if (reopening)
            vbd_error_report("%s", m);
        else if (hint)
            vbd_error_report("can't open%s%s: %.*s\n%s", dev, name, (int)(hint - m + 5), m, hint + 7);
        else
            vbd_error_report("can't open%s%s: %s", dev, name, m);
        vbd_error_free(err);
        json_object_put(kept);
        return -1;
    }
    /* read-only=on in the options without -r: qemu-io's open fails on the
     * write permission, in its words (the block layer's names the node;
     * reopen keeps its own path) */
    if (!reopening && (flags & VBD_OPEN_RDWR) && top->read_only) {
        vbd_error_report("can't open%s%s: Block node is read-only", dev, name);
        vbd_node_unref(top);
        json_object_put(kept);
        return -1;
    }
    struct vbd_backend_opts bo = {.read_only = !(flags & VBD_OPEN_RDWR),
                                  .writethrough = writethrough,
                                  .discard_unmap = (flags & VBD_OPEN_UNMAP) != 0};
    io_be = vbd_backend_new(top, &bo, &err);
    if (!io_be) {
        tool_report(err);
        vbd_node_unref(top);
        json_object_put(kept);
        return -1;
    }
    io_node = image;
    io_cor_filter = top != image ? top : NULL;
    io_read_only = !(flags & VBD_OPEN_RDWR);
    cur.filename = filename ? vbd_xstrdup(filename) : NULL;
    cur.opts = kept;
    cur.flags = flags;
    cur.mode = mode;
    cur.writethrough = writethrough;
    return 0;
}

/* close: the requests in flight end first, as qemu-io drains */
void io_close_image(void)
{
    if (!io_node)
        return;
    io_wait_aio();
    vbd_backend_free(io_be);
    vbd_node_unref(io_cor_filter ? io_cor_filter : io_node); /* the filter holds the image */
    io_be = NULL;
    io_node = io_cor_filter = NULL;
    free(cur.filename);
    json_object_put(cur.opts);
    memset(&cur, 0, sizeof(cur));
}

/* -d of open, discard= of reopen -o (QEMU words its error without the
 * value there: named false): into open flags */
static int discard_flags(const char *mode, unsigned *flags, bool named)
{
    if (!strcmp(mode, "ignore") || !strcmp(mode, "off"))
        *flags &= ~VBD_OPEN_UNMAP;
    else if (!strcmp(mode, "unmap") || !strcmp(mode, "on"))
        *flags |= VBD_OPEN_UNMAP;
    else {
        if (named)
            vbd_error_report("Invalid discard option: %s", mode);
        else
            vbd_error_report("Invalid discard option");
        return -1;
    }
    return 0;
}

/* reopen -o's on/off options: 1 taken (*out set), 0 absent, -1 after
 * QEMU's words naming the option as given (shown) */
static int take_on_off(struct json_object *o, const char *key, const char *shown, bool *out)
{
    struct vbd_error *err = NULL;
    int got = vbd_opt_take_bool(o, key, out, &err);
    if (got < 0) {
        vbd_error_free(err);
        vbd_error_report("Parameter '%s' expects 'on' or 'off'", shown);
        return -1;
    }
    return got;
}

/* the options of open -o (QemuOpts, no implied name), merged when given twice */
static int merge_options(struct json_object **into, const char *text)
{
    struct vbd_error *err = NULL;
    struct json_object *o = vbd_keyval_parse(text, NULL, &err);
    if (!o) {
        tool_report(err);
        return -1;
    }
    if (!*into) {
        *into = o;
        return 0;
    }
    json_object_object_foreach(o, k, v) json_object_object_add(*into, k, json_object_get(v));
    json_object_put(o);
    return 0;
}

/* open [-rsCnkU] [-t cache] [-d discard] [-i aio] [-o options] [path] */
int io_do_open(int argc, char **argv)
{
    unsigned flags = VBD_OPEN_UNMAP, mode = 0;
    bool ro = false, writethrough = true, force_share = false;
    const char *aio = NULL;
    struct json_object *opts = NULL;
    int c;
    optind = 0;
    while ((c = getopt(argc, argv, "snCro:ki:t:d:U")) != -1) {
        int rc = 0;
        switch (c) {
        case 's': mode |= IO_SNAPSHOT; break;
        case 'C': mode |= IO_COR; break;
        case 'n':
            flags |= VBD_OPEN_NOCACHE;
            writethrough = false;
            break;
        case 'r': ro = true; break;
        case 'k': aio = "native"; break;
        case 'i':
            aio = optarg;
            rc = tool_aio_flags(aio, &flags);
            break;
        case 't':
            flags &= ~(VBD_OPEN_NOCACHE | VBD_OPEN_NO_FLUSH);
            rc = tool_cache_flags(optarg, &flags, &writethrough);
            break;
        case 'd': rc = discard_flags(optarg, &flags, true); break;
        case 'o': rc = merge_options(&opts, optarg); break;
        case 'U': force_share = true; break;
        default:
            io_print_usage("open");
            rc = -1;
        }
        if (rc < 0) {
            json_object_put(opts);
            return -EINVAL;
        }
    }
    if (aio && !strcmp(aio, "native"))
        flags |= VBD_OPEN_AIO_NATIVE;
    if (!ro)
        flags |= VBD_OPEN_RDWR;
    if (optind < argc - 1) {
        json_object_put(opts);
        io_print_usage("open");
        return -EINVAL;
    }
    return io_open_file(optind == argc - 1 ? argv[optind] : NULL, opts, flags, mode, writethrough, force_share) < 0
               ? -EINVAL
               : 0;
}

/* reopen [-r|-w] [-c cache] [-o options]: the image opened again with the
 * changes (vbd reopens it whole; the old options come back if that fails).
 * Changeable as QEMU's: read-only, cache.direct, cache.no-flush, discard,
 * and a format's own runtime options (qcow2's caches, lazy-refcounts...). */
int io_do_reopen(int argc, char **argv)
{
    unsigned flags = cur.flags;
    bool writethrough = cur.writethrough, has_rw = false, has_cache = false;
    struct json_object *o = NULL, *format_opts = NULL;
    struct vbd_error *err = NULL;
    int c, rc = -EINVAL;
    optind = 0;
    while ((c = getopt(argc, argv, "c:o:rw")) != -1) {
        switch (c) {
        case 'c':
            flags &= ~(VBD_OPEN_NOCACHE | VBD_OPEN_NO_FLUSH);
            if (tool_cache_flags(optarg, &flags, &writethrough) < 0)
                goto out;
            has_cache = true;
            break;
        case 'o':
            if (merge_options(&o, optarg) < 0)
                goto out;
            break;
        case 'r':
        case 'w':
            if (has_rw) {
                vbd_error_report("Only one -r/-w option may be given");
                goto out;
            }
            has_rw = true;
            flags = c == 'r' ? flags & ~VBD_OPEN_RDWR : flags | VBD_OPEN_RDWR;
            break;
        default:
            io_print_usage("reopen");
            goto out;
        }
    }
    if (optind != argc) {
        io_print_usage("reopen");
        goto out;
    }
    if (cur.mode & IO_SNAPSHOT) {
        /* vbd reopens by opening again: the temporary overlay, and what was
         * written to it, would be lost (QEMU reopens the overlay in place) */
        vbd_error_report("Cannot reopen an image opened with -s: its temporary overlay would be lost");
        goto out;
    }
    format_opts = json_object_new_object();
    if (o) {
        bool b;
        int got;
        if (json_object_object_get_ex(o, "read-only", NULL) && has_rw) {
            vbd_error_report("Cannot set both -r/-w and 'read-only'");
            goto out;
        }
        if ((got = take_on_off(o, "read-only", "read-only", &b)) < 0)
            goto out;
        if (got && b && !io_read_only) {
            /* qemu-io's BlockBackend keeps its write permission */
            vbd_error_report("Read-only block node '%s' cannot support read-write users", io_node->node_name);
            goto out;
        }
        if (got && !b)
            flags |= VBD_OPEN_RDWR;
        struct json_object *cache = vbd_opt_take_obj(o, "cache");
        if (cache && has_cache) {
            json_object_put(cache);
            vbd_error_report("Cannot set both -c and the cache options");
            goto out;
        }
        if (cache) {
            if ((got = take_on_off(cache, "direct", "cache.direct", &b)) < 0) {
                json_object_put(cache);
                goto out;
            }
            if (got)
                flags = b ? flags | VBD_OPEN_NOCACHE : flags & ~VBD_OPEN_NOCACHE;
            if ((got = take_on_off(cache, "no-flush", "cache.no-flush", &b)) < 0) {
                json_object_put(cache);
                goto out;
            }
            if (got)
                flags = b ? flags | VBD_OPEN_NO_FLUSH : flags & ~VBD_OPEN_NO_FLUSH;
            json_object_object_foreach(cache, ck, cv) {
                (void)cv;
                vbd_error_report("Cannot change the option 'cache.%s'", ck);
                json_object_put(cache);
                goto out;
            }
            json_object_put(cache);
        }
        char *discard = NULL;
        if (vbd_opt_take_str(o, "discard", &discard, &err) < 0)
            goto bad_opt;
        unsigned discard_flag = flags;
        if (discard && discard_flags(discard, &discard_flag, false) < 0) {
            free(discard);
            goto out;
        }
        free(discard);
        flags = discard_flag;
        /* the rest: the format's own options, its children's are fixed */
        bool format_runtime = !strcmp(io_node->drv->name, "qcow2");
        json_object_object_foreach(o, k, v) {
            if (!format_runtime || !strcmp(k, "driver") || json_object_is_type(v, json_type_object) ||
                !strncmp(k, "file", 4) || !strncmp(k, "backing", 7) || !strncmp(k, "data-file", 9) ||
                !strncmp(k, "encrypt", 7)) {
                /* QEMU names a child's option by its own key (file.filename: 'filename') */
                const char *leaf = k;
                for (struct json_object *sub = v; json_object_is_type(sub, json_type_object);) {
                    if (!json_object_object_length(sub))
                        break;
                    struct json_object_iterator it = json_object_iter_begin(sub);
                    leaf = json_object_iter_peek_name(&it);
                    sub = json_object_iter_peek_value(&it);
                }
                vbd_error_report("Cannot change the option '%s'", leaf);
                goto out;
            }
            json_object_object_add(format_opts, k, json_object_get(v));
        }
    }
    /* the new options over the old ones */
    struct json_object *opts = NULL, *old = NULL;
    if (cur.opts) {
        json_object_deep_copy(cur.opts, &opts, NULL);
        json_object_deep_copy(cur.opts, &old, NULL);
    }
    if (json_object_object_length(format_opts)) {
        if (!opts) {
            opts = json_object_new_object();
            json_object_object_add(opts, "driver", json_object_new_string(io_node->drv->name));
        }
        json_object_object_foreach(format_opts, fk, fv) json_object_object_add(opts, fk, json_object_get(fv));
    }
    json_object_put(format_opts);
    format_opts = NULL;
    char *filename = cur.filename ? vbd_xstrdup(cur.filename) : NULL;
    unsigned old_flags = cur.flags & ~VBD_OPEN_FORCE_SHARE, mode = cur.mode;
    bool old_wt = cur.writethrough, force_share = (cur.flags & VBD_OPEN_FORCE_SHARE) != 0;
    io_close_image();
    reopening = true;
    if (io_open_file(filename, opts, flags & ~VBD_OPEN_FORCE_SHARE, mode, writethrough, force_share) == 0) {
        json_object_put(old);
        rc = 0;
    } else if (io_open_file(filename, old, old_flags, mode, old_wt, force_share) < 0) {
        vbd_error_report("the image could not be opened again as it was: no file open");
    }
    reopening = false;
    free(filename);
    goto out;
bad_opt:
    tool_report(err);
out:
    json_object_put(format_opts);
    json_object_put(o);
    return rc;
}
