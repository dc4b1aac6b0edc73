/* SPDX-License-Identifier: MIT */
/*
 * vbd-img convert.
 */
#include "img.h"

#include "vbd/alloc.h"

#include <linux/magic.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

/* The bytes of n are in a file on tmpfs (memory: every read and write a copy). */
static bool on_tmpfs(struct vbd_node *n)
{
    struct statfs sfs;
    const char *path = vbd_node_bottom(n)->filename;
    return path[0] && statfs(path, &sfs) == 0 && sfs.f_type == TMPFS_MAGIC;
}

/* How many threads copy (vbd_copy_opts.threads): from sources on tmpfs to
 * a tmpfs target whose writes are inline, all of them chains that never hop
 * to a home loop (raw over file), one per CPU up to 4 and -m, each reading,
 * scanning and writing a chunk itself. There the read, the scan and the
 * write are all memory copies; read on a pool thread and written on this
 * one, every byte crossed vCPUs. Not on a page-cache target on a disk: two
 * writers out of order there cost ext4 its streaming writes (a prototype,
 * raw->raw to /var/tmp: one writer 0.50 s, two 0.78 s; 2026-12-05); not
 * from a disk, where a read that waits for it would leave one request in
 * flight per thread instead of -m. Not with -p (its callback runs in the
 * copy's coroutines) nor -c (qcow2 is single-loop). A qcow2 source, opened
 * read-only and locked (not -U), is mapped on this loop and its data read
 * from its file on the threads (vbd_convert_source_mapped). A qcow2
 * target's data is written from the threads too, its metadata on this
 * loop (vbd_node_co_write_prepare). */
static unsigned convert_threads(struct vbd_node *const *src, int nsrc, struct vbd_node *dst, int parallel)
{
    if (!vbd_node_writes_inline(dst) || !(vbd_node_chain_multi_loop(dst) || vbd_node_can_split_writes(dst)) ||
        !on_tmpfs(dst))
        return 1;
    for (int i = 0; i < nsrc; i++) {
        if (!vbd_node_chain_multi_loop(src[i]) && !vbd_convert_source_mapped(src[i]))
            return 1;
        /* a qcow2 source's backing files too: a read from a disk would wait on that thread */
        for (struct vbd_node *b = src[i]; b; b = vbd_node_skip_filters(b)->backing)
            if (!on_tmpfs(b))
                return 1;
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned n = cpus < 1 ? 1 : cpus > 4 ? 4 : (unsigned)cpus;
    return n < (unsigned)parallel ? n : (unsigned)parallel;
}

/* requests in flight by default (-m), and at most when the target's writes
 * are page-cache copies on this thread (see below) */
#define PARALLEL_DEFAULT 8

/* qcow2 v3 alone stores persistent bitmaps (qemu's supports_persistent_dirty_bitmap) */
static bool stores_bitmaps(struct vbd_node *n)
{
    struct vbd_node *img = vbd_node_skip_filters(n);
    if (!img->drv->co_bitmap_change)
        return false;
    struct vbd_image_info info = {0};
    struct json_object *data, *v;
    bool v2 = vbd_node_get_info(img, &info, NULL) == 0 && info.format_specific &&
              json_object_object_get_ex(info.format_specific, "data", &data) &&
              json_object_object_get_ex(data, "compat", &v) && !strcmp(json_object_get_string(v), "0.10");
    json_object_put(info.format_specific);
    return !v2;
}

enum { OPT_BITMAPS = 400, OPT_SKIP_BROKEN, OPT_SALVAGE };

/* -r: the target's writes at most rate bytes a second (qemu-img throttles
 * the target's writes); -p's progress too when asked */
struct convert_pace {
    struct vbd_imageops_ctl ctl; /* first: the callback gets it */
    uint64_t rate, start_ns, written;
    bool progress;
    uint64_t progress_shown; /* the data bytes counted at the last step */
};

static int convert_chunk_done(struct vbd_imageops_ctl *ctl, uint64_t off, uint64_t written)
{
    struct convert_pace *p = (struct convert_pace *)ctl;
    uint64_t current, total;
    vbd_imageops_progress(ctl, &current, &total);
    /* qemu-img steps at each chunk of data only (its progress counts
     * nothing else: a range of zeroes changes nothing here) */
    if (p->progress && current != p->progress_shown) {
        p->progress_shown = current;
        tool_progress_step((float)(100.0 * (double)current / (double)total));
    }
    if (!p->rate)
        return 0;
    /* the time by which this many bytes are allowed: sleep until then */
    p->written += written;
    uint64_t now = vbd_clock_ns();
    if (!p->start_ns)
        p->start_ns = now;
    unsigned __int128 due = p->start_ns + (unsigned __int128)p->written * 1000000000u / p->rate;
    if (due > now)
        vbd_co_sleep_ns(due - now > 3600ull * 1000000000u ? 3600ull * 1000000000u : (uint64_t)(due - now));
    return 0;
}

/* a refused option: what -o made so far is freed (a leak otherwise) */
static int put_opts_fail(struct json_object *opts)
{
    json_object_put(opts);
    return 1;
}

int verb_convert(int argc, char **argv)
{
    bool bitmaps = false, skip_broken = false;
    bool out_fmt_given = false; /* -O (with --target-image-opts: refused at the target's open, as qemu-img) */
    const char *fmt = NULL, *out_fmt = "raw", *cache = "unsafe", *src_cache = "writeback", *backing = NULL,
               *backing_fmt = NULL;
    struct json_object *opts = NULL;
    bool compress = false, progress = false, no_create = false, out_of_order = false, quiet = false, force = false,
         target_zero = false, image_opts = false, target_image_opts = false, target_backing = false,
         copy_range = false, salvage = false, explicit_sparse = false;
    int64_t sparse = 4096, parallel = PARALLEL_DEFAULT, rate = 0;
    static const struct option lo[] = {{"object", required_argument, NULL, OPT_OBJECT}, {"help", no_argument, NULL, 'h'}, {"target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO},
                                       {"target-image-opts", no_argument, NULL, OPT_TARGET_IMAGE_OPTS},
                                       {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS}, {"force-share", no_argument, NULL, 'U'},
                                       {"bitmaps", no_argument, NULL, OPT_BITMAPS},
                                       {"skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN},
                                       {"salvage", no_argument, NULL, OPT_SALVAGE},
                                       {NULL, 0, NULL, 0}};
    int c;
    /* -l as qemu-img 7.2 reads it: snapshot.id=/snapshot.name= options
     * (the last such -l) or a bare id or name (the last), the options
     * first when both were given */
    const char *snap_opts = NULL, *snap_name = NULL;
    while ((c = getopt_long(argc, argv, ":hf:O:o:cpS:nm:Wt:T:B:F:qUl:Cr:", lo, NULL)) != -1) {
        switch (c) {
        /* qemu-img makes each --object as its options meet it */
        case OPT_OBJECT: if (tool_add_object(optarg) < 0) return put_opts_fail(opts); break;
        case 'f': fmt = optarg; break;
        case 'O': out_fmt = optarg; out_fmt_given = true; break;
        case 'l':
            if (!strncmp(optarg, "snapshot.", 9))
                snap_opts = optarg;
            else
                snap_name = optarg;
            break;
        case 'o':
            if (add_o(&opts, optarg) < 0)
                return put_opts_fail(opts);
            break;
        case 'c': compress = true; break;
        case 'p': progress = true; break;
        case 'S':
            if ((sparse = img_cvtnum("buffer size for sparse output", optarg, 0, INT64_MAX)) < 0)
                return put_opts_fail(opts);
            if (sparse % 512 || sparse > 16 * MIB) {
                vbd_error_report("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up "
                                 "to 16777216. Select 0 to disable sparse detection (fully allocates output).");
                return put_opts_fail(opts);
            }
            explicit_sparse = true;
            break;
        case 'n': no_create = true; break;
        case 'r':
            if ((rate = img_cvtnum("rate limit", optarg, 0, INT64_MAX)) < 0)
                return put_opts_fail(opts);
            break;
        /* copy offloading: vbd copies through its own buffers (qemu-img
         * falls back to them where offloading fails); as with it, data
         * that reads as zeroes is copied as data, not detected */
        case 'C': copy_range = true; break;
        case OPT_SALVAGE: salvage = true; break;
        case 'm':
            parallel = atoi(optarg);
            if (parallel < 1 || parallel > 16) {
                vbd_error_report("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16");
                return put_opts_fail(opts);
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
        case OPT_BITMAPS: bitmaps = true; break;
        case OPT_SKIP_BROKEN: skip_broken = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case OPT_TARGET_IMAGE_OPTS: target_image_opts = true; break;
        case 'h':
            printf("Usage: vbd-img convert [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]]\n"
                   "                       [-l snapshot_param] (snapshot.id=ID,snapshot.name=NAME or an id or name)\n"
                   "                       [-o options] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] [-C] [--salvage] [--target-is-zero] [--target-image-opts] [-U] filename [filename2 [...]] output_filename\n"
                   "Copy (and concatenate) images into OUTPUT, converting the format. Holes and zero runs of -S bytes\n"
                   "(default 4k) are not written; -c compresses (formats that support it); -m runs N requests in parallel;\n"
                   "-r caps the target's writes at RATE bytes a second; --salvage reads what cannot be read as zeroes.\n");
            json_object_put(opts);
            return 0;
        default:
            put_opts_fail(opts);
            return img_bad_option(c, argv);
        }
    }
    /* qemu-img 7.2's checks, in its order */
    const char *bad = skip_broken && !bitmaps       ? "Use of --skip-broken-bitmaps requires --bitmaps"
                      : compress && copy_range       ? "Cannot enable copy offloading when -c is used"
                      : explicit_sparse && copy_range ? "Cannot enable copy offloading when -S is used"
                      : copy_range && salvage        ? "Cannot use copy offloading in salvaging mode"
                      : target_image_opts && !no_create ? "--target-image-opts requires use of -n flag"
                      : no_create && opts ? "-o has no effect when skipping image creation"
                      : target_zero && !no_create     ? "--target-is-zero requires use of -n flag"
                                                      : NULL;
    if (bad) {
        vbd_error_report("%s", bad);
        json_object_put(opts);
        return 1;
    }
    if (o_is_help(opts)) {
        int rc = print_create_help(out_fmt, argc - optind >= 2 ? argv[argc - 1] : NULL);
        json_object_put(opts);
        return rc;
    }
    if (argc - optind < 2) {
        vbd_error_report("Must specify image file name");
        json_object_put(opts);
        return 1;
    }
    enum vbd_cache_mode src_mode;
    if (vbd_cache_mode_parse(src_cache, &src_mode) < 0) {
        vbd_error_report("Invalid source cache option: %s", src_cache);
        json_object_put(opts);
        return 1;
    }
    const char *out = argv[argc - 1];
    int nsrc = argc - optind - 1;
    struct vbd_node **src = vbd_xcalloc(nsrc, sizeof(*src)), *dst = NULL;
    uint64_t total = 0;
    int rc = 1;
    /* qemu-img's progress starts here, before the sources are opened: a
     * convert that fails after this point ends the line with the error */
    bool show_progress = progress && !quiet;
    if (show_progress) {
        tool_progress_init(1);
        tool_progress_step(0);
    }
    for (int i = 0; i < nsrc; i++) {
        /* as qemu-img (BDRV_O_NO_SHARE): nobody writes a source while it is
         * copied. Status only skips work here: what a vhdx source leaves
         * unallocated is not read (qemu reads it and finds zeroes, the same
         * target); with -S 0 qemu writes those zeroes, so the source is all
         * data then, as in qemu */
        unsigned flags = (force ? VBD_OPEN_FORCE_SHARE : VBD_OPEN_NO_SHARE) | (sparse > 0 ? VBD_OPEN_EXACT_STATUS : 0);
        src[i] = tool_open(argv[optind + i], fmt, image_opts, flags, src_cache, NULL);
        if (!src[i])
            goto out;
        total += src[i]->size;
    }
    /* once every source is open, into the first source only (qemu-img
     * 7.2: the other sources are read as they are); a bare name cannot
     * serve several sources */
    if (!snap_opts && snap_name && nsrc > 1) {
        vbd_error_report("No support for concatenating multiple snapshot");
        goto out;
    }
    if ((snap_opts || snap_name) && img_load_snapshot(src[0], snap_opts ? snap_opts : snap_name) < 0)
        goto out;
    const struct vbd_driver *od = vbd_driver_find(out_fmt);
    if (!od || od->kind != VBD_DRV_FORMAT) {
        vbd_error_report("Unknown file format '%s'", out_fmt);
        goto out;
    }
    if (!no_create) {
        if (!od->co_create) {
            vbd_error_report("Format driver '%s' does not support image creation", od->name);
            goto out;
        }
        if (!opts)
            opts = json_object_new_object();
        /* refused before anything is made, as qemu-img refuses them */
        if (img_check_create_options(od, out, opts, NULL) < 0)
            goto out;
        if ((backing && !img_known_create_option(od, "backing_file")) ||
            (backing_fmt && !img_known_create_option(od, "backing_fmt"))) {
            vbd_error_report("Backing file%s not supported for file format '%s'",
                             backing && !img_known_create_option(od, "backing_file") ? "" : " format", out_fmt);
            goto out;
        }
        if (backing)
            json_object_object_add(opts, "backing_file", json_object_new_string(backing));
        if (backing_fmt)
            json_object_object_add(opts, "backing_fmt", json_object_new_string(backing_fmt));
    }
    /* -o backing_file is -B (qemu-img's out_baseimg): a target made with a
     * backing file does not read as zeroes (skipping zero writes showed the
     * backing file's data where the source has zeroes), and what the
     * source's top leaves unallocated is left to the backing file; with -n
     * -B says the target has one */
    target_backing = backing || (opts && vbd_opt_get(opts, "backing_file"));
    if (target_zero && target_backing) {
        /* qemu-img 7.2 says so and exits 0 (its ret is still 0 there): so does vbd-img */
        vbd_error_report("Cannot use --target-is-zero when the destination image has a backing file");
        rc = 0;
        goto out;
    }
    if (nsrc > 1 && target_backing) {
        vbd_error_report("Having a backing file for the target makes no sense when concatenating multiple input "
                         "images");
        goto out;
    }
    if (!no_create && target_backing && !vbd_opt_get(opts, "backing_fmt")) {
        vbd_error_report("Use of backing file requires explicit backing format");
        goto out;
    }
    if (compress && !no_create && !(od->caps & VBD_DRV_CAP_COMPRESSED_WRITES)) {
        /* as qemu-img: before the target is made (none is left behind) */
        vbd_error_report("Compression not supported for this file format");
        goto out;
    }
    if (compress && !no_create) {
        struct json_object *pa = vbd_opt_get(opts, "preallocation");
        if (pa && strcmp(json_object_get_string(pa), "off")) {
            vbd_error_report("Compression and preallocation not supported at the same time");
            goto out;
        }
    }
    if (bitmaps && nsrc > 1) {
        vbd_error_report("Copying bitmaps only possible with single source");
        goto out;
    }
    if (bitmaps && !stores_bitmaps(src[0])) {
        vbd_error_report("Source lacks bitmap support");
        goto out;
    }
    if (bitmaps && img_check_bitmaps(src[0], skip_broken) < 0)
        goto out;
    if (!no_create) {
        json_object_object_add(opts, "size", json_object_new_int64((int64_t)total));
        img_normalize_create_options(od, out, opts);
        struct vbd_error *err = NULL;
        if (vbd_image_co_create(out_fmt, out, opts, &err) < 0) {
            char msg[2048];
            snprintf(msg, sizeof(msg), "%s: error while converting %s: %s", out, out_fmt, err ? err->msg : "failed");
            tool_report_text(msg);
            vbd_error_free(err);
            goto out;
        }
        /* A fresh image without backing reads as zeroes: skip zero writes. */
        target_zero = !target_backing;
    }
    struct json_object *dopts = json_object_new_object();
    json_object_object_add(dopts, "driver", json_object_new_string(out_fmt));
    bool wt = false;
    /* this process's loop serves nothing but the convert: its in-order
     * writes are best made on it (see VBD_OPEN_INLINE_WRITES) */
    unsigned dflags = VBD_OPEN_RDWR | VBD_OPEN_UNMAP | VBD_OPEN_INLINE_WRITES;
    if (tool_cache_flags(cache, &dflags, &wt) < 0) {
        json_object_put(dopts);
        goto out;
    }
    /* A target with a backing file is opened with it, as qemu-img opens
     * it: a write into part of a cluster copies the rest from the backing
     * file (opened without, a 4k source cluster over a 64k target cluster
     * left zeroes where the source reads the backing file's data), and
     * zeroes into part of a cluster over backing data are data. */
    struct vbd_error *err = NULL;
    if (target_image_opts && out_fmt_given) {
        vbd_error_report("--image-opts and --format are mutually exclusive");
        json_object_put(dopts);
        goto out;
    }
    if (target_image_opts) {
        /* OUTPUT is the whole option string (driver=raw,file.driver=nbd,...), as qemu-img's */
        json_object_put(dopts);
        if (!(dopts = vbd_opts_parse(out, NULL, &err))) {
            tool_report(err);
            goto out;
        }
    }
    dst = vbd_open(target_image_opts ? NULL : out, dopts, dflags, &err);
    if (!dst) {
        /* a missing backing file: the block layer names the target already
         * ("Could not open 'OUT': Could not open backing file: ..."), once as
         * qemu-img does (a missing OUT itself it names twice, as qemu-img) */
        if (err && !strncmp(err->msg, "Could not open '", 16) && strstr(err->msg, "': Could not open backing file: "))
            tool_report(err);
        else
            tool_report_open(out, err);
        goto out;
    }
    if (bitmaps && !stores_bitmaps(dst)) { /* as qemu-img: once the target is made */
        vbd_error_report("Format driver '%s' does not support bitmaps", vbd_node_skip_filters(dst)->drv->name);
        goto out;
    }
    if (!compress) {
        struct vbd_image_info info = {0};
        if (vbd_node_get_info(vbd_node_skip_filters(dst), &info, NULL) == 0 && info.needs_compressed_writes)
            compress = true;
        json_object_put(info.format_specific);
    }
    if (compress && !(dst->supported_write_flags & VBD_REQ_COMPRESSED)) {
        vbd_error_report("Compression not supported for this file format");
        goto out;
    }
    /* after the compression check, as qemu-img */
    if (dst->size < total) {
        /* qemu-img's words (only -n's target can be: a new one is made at the size) */
        vbd_error_report("output file is smaller than input file");
        goto out;
    }
    /* A target whose writes are page-cache (or tmpfs) copies made on this
     * loop (the file driver's own rule for VBD_OPEN_INLINE_WRITES, asked
     * of the node: buffered files and block devices, tmpfs even with -t
     * none) is written one write at a time (and a file's inode lock
     * serializes them in the kernel anyway): the convert is bound by this
     * thread, and neither more requests than the default nor out-of-order
     * writes can add throughput. They cost it: -m 16 starts up to 16 pool
     * threads reading ahead on 2 cores beside the writer and 32 MiB of
     * buffers (6,000 more page faults), -W interleaves writes that in
     * order stream through the page cache (tmpfs raw->raw: default
     * 0.29 s, -m 16 0.30, -W 0.32, -m 16 -W 0.33 s; ext4: 0.19, 0.21,
     * 0.21, 0.22 s; 2026-12-04). -m and -W permit, they do not require:
     * such a target is written in order with at most the default number
     * of requests. Copied by threads (convert_threads, below), -W is
     * kept: each thread writes its own chunks there, and what -W changes is
     * only whether a qcow2 target's clusters are placed in guest order
     * (each thread taking its turn on the target's home loop) or as the
     * threads come (see below). */
    bool inline_dst = vbd_node_writes_inline(dst);
    if (parallel > PARALLEL_DEFAULT && inline_dst)
        parallel = PARALLEL_DEFAULT;
    struct vbd_copy_opts copy = {.zero_detect = (uint64_t)sparse, .target_is_zero = target_zero,
                                 .zero_flags = VBD_REQ_MAY_UNMAP, .parallel = (unsigned)parallel,
                                 .out_of_order = out_of_order, .target_has_backing = target_backing,
                                 .salvage = salvage, .quiet = quiet, .data_verbatim = copy_range,
                                 .progress_data_only = show_progress};
    if (target_backing) {
        /* -n -B over a target without one: no end past which zeroes need no write */
        struct vbd_node *b = vbd_node_skip_filters(dst)->backing;
        copy.target_backing_size = b ? vbd_node_size(b) : UINT64_MAX;
    }
    {
        /* compressed clusters are written whole; without, chunks end on
         * the target's cluster boundaries (its map then as qemu-img's) */
        struct vbd_image_info info = {0};
        if (vbd_node_get_info(vbd_node_skip_filters(dst), &info, NULL) == 0)
            copy.cluster_size = info.cluster_size;
        json_object_put(info.format_specific);
    }
    if (!compress && copy.cluster_size > VBD_IMAGEOPS_CHUNK_DEFAULT)
        copy.cluster_size = 0;
    if (compress) {
        if (!copy.cluster_size || copy.cluster_size > VBD_IMAGEOPS_CHUNK_DEFAULT) {
            vbd_error_report("Compression needs a cluster size of at most %u bytes", VBD_IMAGEOPS_CHUNK_DEFAULT);
            goto out;
        }
        copy.write_flags = VBD_REQ_COMPRESSED;
        /* qemu-img compresses a cluster at a time, and -p steps at each
         * (vbd's chunks hold several otherwise: the same image) */
        if (show_progress)
            copy.chunk_size = copy.cluster_size;
    }
    if (!compress && !show_progress && !rate && !salvage)
        copy.threads = convert_threads(src, nsrc, dst, parallel);
    /* Threaded to a qcow2 target, -W lets a thread place its clusters as
     * soon as it has read its chunk instead of waiting for the thread with
     * the chunk before (as qemu-img -W writes as its coroutines come: its
     * layout then changes from run to run, and so does vbd's). A turn
     * missed costs most when the machine is loaded: the thread before may
     * be off its CPU (tmpfs raw->qcow2 -m 16 -W at load 21: 1.17x qemu-img,
     * which gains from -W there; round 18). Written in order on this
     * thread, -W is dropped as said above. */
    if (copy.threads <= 1 && inline_dst)
        copy.out_of_order = false;
    struct convert_pace pace = {.rate = (uint64_t)rate, .progress = show_progress};
    if (pace.rate || pace.progress)
        pace.ctl.chunk_done = convert_chunk_done;
    int crc = vbd_co_convert(src, nsrc, dst, &copy, &pace.ctl, &err);
    if (crc < 0) {
        tool_report(err);
        goto out;
    }
    int frc = vbd_node_co_flush(dst);
    if (frc < 0) {
        vbd_error_report("error while writing at byte %llu: %s", (unsigned long long)total, strerror(-frc));
        goto out;
    }
    if (bitmaps && img_copy_bitmaps(src[0], dst, skip_broken) < 0)
        goto out;
    rc = 0;
out:
    if (show_progress)
        tool_progress_finish(rc == 0);
    json_object_put(opts);
    if (dst)
        vbd_node_unref(dst);
    for (int i = 0; i < nsrc; i++)
        if (src[i])
            vbd_node_unref(src[i]);
    free(src);
    return rc;
}
