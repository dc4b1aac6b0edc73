/* SPDX-License-Identifier: MIT */
/*
 * vbd-img convert.
 */
#include "img.h"

struct convert {
    struct vbd_node **src;
    int nsrc;
    uint64_t *src_start; /* offset of each source in the concatenation */
    uint64_t total;
    struct vbd_node *dst;
    uint64_t next; /* next offset to hand out */
    uint64_t next_write_seq, seq;
    bool in_order;
    bool target_zero;
    bool compress;
    uint64_t cluster; /* -c: the target's cluster size; chunks are whole clusters */
    uint64_t sparse; /* -S: 0 = no detection */
    uint64_t done_bytes;
    bool progress;
    int error;
    int running;
    struct vbd_co_queue order_q, done_q;
    /* block status may yield (nbd): without it, workers would claim the same offset */
    struct vbd_co_mutex claim_lock;
};

#define CONVERT_CHUNK (2 * MIB)

static int convert_chunk_write(struct convert *cv, uint64_t off, uint64_t len, uint8_t *buf, bool zero)
{
    if (zero) {
        if (cv->target_zero)
            return 0;
        return vbd_node_co_pwrite_zeroes(cv->dst, off, len, VBD_REQ_MAY_UNMAP);
    }
    if (cv->compress) {
        /* As qemu-img: every cluster with data is written compressed (whole), an
         * all-zero one is not written at all (-S 0: written all the same). */
        for (uint64_t pos = 0; pos < len; pos += cv->cluster) {
            uint64_t l = len - pos < cv->cluster ? len - pos : cv->cluster;
            int rc;
            if (cv->sparse && vbd_buffer_is_zero(buf + pos, l))
                rc = cv->target_zero ? 0 : vbd_node_co_pwrite_zeroes(cv->dst, off + pos, l, VBD_REQ_MAY_UNMAP);
            else
                rc = vbd_node_co_pwrite(cv->dst, off + pos, buf + pos, l, VBD_REQ_COMPRESSED);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    if (cv->sparse) {
        /* Write only the parts that are not all-zero runs of -S bytes. */
        uint64_t s = cv->sparse, pos = 0;
        while (pos < len) {
            uint64_t l = len - pos < s ? len - pos : s;
            bool z = vbd_buffer_is_zero(buf + pos, l);
            uint64_t run = l;
            while (pos + run < len) {
                uint64_t l2 = len - pos - run < s ? len - pos - run : s;
                if (vbd_buffer_is_zero(buf + pos + run, l2) != z)
                    break;
                run += l2;
            }
            int rc = z ? (cv->target_zero ? 0 : vbd_node_co_pwrite_zeroes(cv->dst, off + pos, run, VBD_REQ_MAY_UNMAP))
                       : vbd_node_co_pwrite(cv->dst, off + pos, buf + pos, run, 0);
            if (rc < 0)
                return rc;
            pos += run;
        }
        return 0;
    }
    return vbd_node_co_pwrite(cv->dst, off, buf, len, 0);
}

static void convert_worker(void *opaque)
{
    struct convert *cv = opaque;
    uint8_t *buf = vbd_alloc_aligned(4096, CONVERT_CHUNK);
    for (;;) {
        vbd_co_mutex_lock(&cv->claim_lock);
        if (cv->error || cv->next >= cv->total) {
            vbd_co_mutex_unlock(&cv->claim_lock);
            break;
        }
        uint64_t off = cv->next;
        int si = 0;
        while (si + 1 < cv->nsrc && off >= cv->src_start[si + 1])
            si++;
        struct vbd_node *src = cv->src[si];
        uint64_t soff = off - cv->src_start[si];
        uint64_t len = src->size - soff < CONVERT_CHUNK ? src->size - soff : CONVERT_CHUNK;
        uint64_t pnum;
        int st = vbd_node_co_block_status_above(src, NULL, true, soff, len, &pnum, NULL, NULL, NULL);
        if (st < 0) {
            cv->error = st;
            vbd_co_mutex_unlock(&cv->claim_lock);
            break;
        }
        if (pnum == 0)
            pnum = len;
        bool zero = (st & VBD_BS_ZERO) || !(st & VBD_BS_ALLOCATED);
        if (cv->compress) {
            /* compressed clusters are written whole (off stays cluster aligned): a zero
             * run shorter than a cluster is read with the data around it */
            if (pnum >= cv->cluster) {
                pnum -= pnum % cv->cluster;
            } else {
                pnum = len < cv->cluster ? len : cv->cluster;
                zero = false;
            }
        }
        cv->next = off + pnum;
        uint64_t my_seq = cv->seq++;
        vbd_co_mutex_unlock(&cv->claim_lock);
        int rc = 0;
        if (!zero)
            rc = vbd_node_co_pread(src, soff, buf, pnum);
        if (cv->in_order)
            while (cv->next_write_seq != my_seq && !cv->error)
                vbd_co_queue_wait(&cv->order_q);
        if (rc == 0 && !cv->error)
            rc = convert_chunk_write(cv, off, pnum, buf, zero);
        if (cv->in_order) {
            cv->next_write_seq++;
            vbd_co_queue_wake_all(&cv->order_q);
        }
        if (rc < 0) {
            cv->error = rc;
            break;
        }
        cv->done_bytes += pnum;
        if (cv->progress)
            tool_progress(100.0 * cv->done_bytes / (cv->total ? cv->total : 1));
    }
    free(buf);
    if (--cv->running == 0)
        vbd_co_queue_wake_all(&cv->done_q);
    vbd_co_queue_wake_all(&cv->order_q);
}

/* -l snapshot.id=ID,snapshot.name=NAME or -l ID_OR_NAME (an id first, then a name, as qemu-img). */
static int convert_load_snapshot(struct vbd_node *n, const char *arg)
{
    struct vbd_node *img = vbd_node_skip_filters(n);
    char *id = NULL, *name = NULL;
    struct vbd_error *err = NULL;
    int rc = -1;
    if (!strncmp(arg, "snapshot.", 9)) {
        struct json_object *o = vbd_keyval_parse(arg, NULL, &err), *sn = NULL, *v;
        bool ok = o && json_object_object_get_ex(o, "snapshot", &sn) && json_object_is_type(sn, json_type_object);
        if (ok) {
            json_object_object_foreach(sn, k, val) {
                if ((strcmp(k, "id") && strcmp(k, "name")) || !json_object_is_type(val, json_type_string)) {
                    vbd_error_report("Invalid parameter 'snapshot.%s'", k);
                    ok = false;
                    break;
                }
            }
        }
        if (ok && json_object_object_get_ex(sn, "id", &v))
            id = strdup(json_object_get_string(v));
        if (ok && json_object_object_get_ex(sn, "name", &v))
            name = strdup(json_object_get_string(v));
        json_object_put(o);
        vbd_error_free(err);
        err = NULL;
        if (!ok) {
            vbd_error_report("Failed in parsing snapshot param '%s'", arg);
            goto out;
        }
    }
    if (!img->drv->snapshot_load_tmp) {
        vbd_error_report("Failed to load snapshot: Block format '%s' used by device '%s' does not support internal snapshots",
                         img->drv->name, img->node_name);
        goto out;
    }
    if (id || name)
        rc = img->drv->snapshot_load_tmp(img, id, name, &err);
    else if (!strncmp(arg, "snapshot.", 9))
        vbd_error_setf(&err, EINVAL, "snapshot_id and name are both NULL");
    else if ((rc = img->drv->snapshot_load_tmp(img, arg, NULL, &err)) == -ENOENT) {
        vbd_error_free(err);
        err = NULL;
        rc = img->drv->snapshot_load_tmp(img, NULL, arg, &err);
    }
    if (rc < 0)
        vbd_error_report("Failed to load snapshot: %s", err ? err->msg : "failed");
out:
    vbd_error_free(err);
    free(id);
    free(name);
    return rc < 0 ? -1 : 0;
}

int verb_convert(int argc, char **argv)
{
    const char *fmt = NULL, *out_fmt = "raw", *cache = "unsafe", *src_cache = "writeback", *backing = NULL,
               *backing_fmt = NULL;
    struct json_object *opts = NULL;
    bool compress = false, progress = false, no_create = false, out_of_order = false, quiet = false, force = false,
         target_zero = false, image_opts = false, target_image_opts = false;
    int64_t sparse = 4096, parallel = 8;
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'}, {"target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO},
                                       {"target-image-opts", no_argument, NULL, OPT_TARGET_IMAGE_OPTS},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {"force-share", no_argument, NULL, 'U'},
                                       {NULL, 0, NULL, 0}};
    int c;
    const char *snapshot = NULL;
    while ((c = getopt_long(argc, argv, "hf:O:o:cpS:nm:Wt:T:B:F:qUl:", lo, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'l': snapshot = optarg; break;
        case 'o': if (add_o(&opts, optarg) < 0) return 1; break;
        case 'c': compress = true; break;
        case 'p': progress = true; break;
        case 'S':
            sparse = tool_cvtnum(optarg);
            if (sparse < 0 || (sparse && sparse % 512)) {
                vbd_error_report("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16M, or 0");
                return 1;
            }
            break;
        case 'n': no_create = true; break;
        case 'm':
            parallel = atoi(optarg);
            if (parallel < 1 || parallel > 16) {
                vbd_error_report("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16");
                return 1;
            }
            break;
        case 'W': out_of_order = true; break;
        case 't': cache = optarg; break;
        case 'T': src_cache = optarg; break;
        case 'B': backing = optarg; break;
        case 'F': backing_fmt = optarg; break;
        case 'q': quiet = true; break;
        case 'U': force = true; break;
        case OPT_TARGET_IS_ZERO: target_zero = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case OPT_TARGET_IMAGE_OPTS: target_image_opts = true; break;
        case 'h':
            printf("Usage: vbd-img convert [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]]\n"
                   "                       [-l snapshot_param] (snapshot.id=ID,snapshot.name=NAME or an id or name)\n"
                   "                       [-o options] [-S sparse_size] [-m num_coroutines] [-W] [--target-is-zero] [--target-image-opts] [-U] filename [filename2 [...]] output_filename\n"
                   "Copy (and concatenate) images into OUTPUT, converting the format. Holes and zero runs of -S bytes\n"
                   "(default 4k) are not written; -c compresses (formats that support it); -m runs N requests in parallel.\n");
            return 0;
        default: return 1;
        }
    }
    if (o_is_help(opts)) {
        print_create_help(out_fmt);
        json_object_put(opts);
        return 0;
    }
    if (argc - optind < 2) {
        vbd_error_report("Expecting image file name");
        return 1;
    }
    if (target_zero && !no_create) {
        vbd_error_report("--target-is-zero requires use of -n flag");
        return 1;
    }
    if (target_image_opts && !no_create) {
        vbd_error_report("--target-image-opts requires use of -n flag");
        return 1;
    }
    const char *out = argv[argc - 1];
    struct convert cv = {.in_order = !out_of_order, .sparse = (uint64_t)sparse, .progress = progress && !quiet,
                         .compress = compress};
    cv.nsrc = argc - optind - 1;
    if (snapshot && cv.nsrc > 1) {
        vbd_error_report("No support for concatenating multiple snapshot");
        return 1;
    }
    cv.src = calloc(cv.nsrc, sizeof(*cv.src));
    cv.src_start = calloc(cv.nsrc + 1, sizeof(uint64_t));
    int rc = 1;
    for (int i = 0; i < cv.nsrc; i++) {
        cv.src[i] = tool_open(argv[optind + i], fmt_or_null(fmt), image_opts, force ? VBD_OPEN_FORCE_SHARE : 0, src_cache, NULL);
        if (!cv.src[i])
            goto out;
        if (snapshot && convert_load_snapshot(cv.src[i], snapshot) < 0)
            goto out;
        cv.src_start[i] = cv.total;
        cv.total += cv.src[i]->size;
    }
    cv.src_start[cv.nsrc] = cv.total;
    const struct vbd_driver *od = vbd_driver_find(out_fmt);
    if (!od || od->kind != VBD_DRV_FORMAT) {
        vbd_error_report("Unknown file format '%s'", out_fmt);
        goto out;
    }
    if (!no_create) {
        if (!opts)
            opts = json_object_new_object();
        json_object_object_add(opts, "size", json_object_new_int64((int64_t)cv.total));
        if (backing)
            json_object_object_add(opts, "backing_file", json_object_new_string(backing));
        if (backing_fmt)
            json_object_object_add(opts, "backing_fmt", json_object_new_string(backing_fmt));
        struct vbd_error *err = NULL;
        if (vbd_image_co_create(out_fmt, out, opts, &err) < 0) {
            vbd_error_report("%s: error while converting %s: %s", out, out_fmt, err ? err->msg : "failed");
            vbd_error_free(err);
            goto out;
        }
        /* A fresh image without backing reads as zeroes: skip zero writes. */
        target_zero = !backing;
    } else if (opts) {
        vbd_error_report("-o has no effect when skipping image creation");
        goto out;
    }
    cv.target_zero = target_zero;
    struct json_object *dopts = json_object_new_object();
    json_object_object_add(dopts, "driver", json_object_new_string(out_fmt));
    bool wt = false;
    unsigned dflags = VBD_OPEN_RDWR | VBD_OPEN_UNMAP;
    if (tool_cache_flags(cache, &dflags, &wt) < 0) {
        json_object_put(dopts);
        goto out;
    }
    if (backing)
        dflags |= VBD_OPEN_NO_BACKING;
    struct vbd_error *err = NULL;
    if (target_image_opts) {
        /* OUTPUT is the whole option string (driver=raw,file.driver=nbd,...), as qemu-img's */
        json_object_put(dopts);
        if (!(dopts = vbd_opts_parse(out, NULL, &err))) {
            tool_report(err);
            goto out;
        }
    }
    cv.dst = vbd_open(target_image_opts ? NULL : out, dopts, dflags, &err);
    if (!cv.dst) {
        tool_report(err);
        goto out;
    }
    if (cv.dst->size < cv.total) {
        vbd_error_report("Output image is too small (%llu < %llu bytes)", (unsigned long long)cv.dst->size,
                         (unsigned long long)cv.total);
        goto out;
    }
    if (compress && !(cv.dst->supported_write_flags & VBD_REQ_COMPRESSED)) {
        vbd_error_report("Compression not supported for this file format");
        goto out;
    }
    if (compress) {
        struct vbd_image_info info = {0};
        if (vbd_node_get_info(vbd_node_skip_filters(cv.dst), &info, NULL) == 0)
            cv.cluster = info.cluster_size;
        json_object_put(info.format_specific);
        if (!cv.cluster || cv.cluster > CONVERT_CHUNK) {
            vbd_error_report("Compression needs a cluster size of at most %u bytes", (unsigned)CONVERT_CHUNK);
            goto out;
        }
    }
    cv.running = (int)parallel;
    for (int i = 0; i < parallel; i++)
        vbd_co_wake(vbd_co_create(convert_worker, &cv));
    while (cv.running)
        vbd_co_queue_wait(&cv.done_q);
    if (cv.progress)
        tool_progress_end();
    if (!cv.error)
        cv.error = vbd_node_co_flush(cv.dst);
    if (cv.error) {
        vbd_error_report("error while writing at byte %llu: %s", (unsigned long long)cv.next, strerror(-cv.error));
        goto out;
    }
    rc = 0;
out:
    json_object_put(opts);
    if (cv.dst)
        vbd_node_unref(cv.dst);
    for (int i = 0; i < cv.nsrc; i++)
        if (cv.src[i])
            vbd_node_unref(cv.src[i]);
    free(cv.src);
    free(cv.src_start);
    return rc;
}
