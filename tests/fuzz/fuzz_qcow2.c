/* Fuzz target: arbitrary bytes as a qcow2 image file. Open it (read-only),
 * read every byte of the disk, map it, list snapshots and run check (the
 * scaffold: fuzz-image.c); then open it read-write, write (allocating
 * clusters, over compressed ones, across L2 tables), zero and discard, and
 * read back. When check found the image clean before the writes, each
 * write must read back, check must find the image clean after them and a
 * fresh open must read the written bytes back: a write that lands on
 * metadata (or metadata on the written data) breaks one of these. And
 * nothing but the written, zeroed and discarded bytes may change, before
 * the close and once reopened (the disk's first 9 MiB and a bit, read
 * whole before and after): a write, a copy-on-write or a table update
 * that lands on another cluster's data shows there. (A
 * corrupt image owes no more than not crashing: qcow2-hostile.sh has the
 * corrupt images whose writes must still not alias.) Inputs shorter than
 * a header get a valid 64 KiB-cluster header prefix so that mutations
 * reach the tables. */
#include "fuzz-image.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CLEAN 1u /* j->tag: check found no corruption and no check error before the writes */

/* guest offsets of the writes: the first cluster's middle, across a 64 KiB
 * cluster boundary, far into the disk (another L2 table for small clusters) */
static const uint64_t offs[] = {1000, 65536 - 2000, 9u << 20};
#define WRITE_LEN 5000u

static int64_t check_problems(struct fuzz_job *j, struct vbd_node *n)
{
    struct vbd_check_result r = {0};
    struct vbd_error *err = NULL;
    FILE *saved = stderr;
    stderr = fopen("/dev/null", "w"); /* check reports each problem on stderr, as qemu-img's */
    int rc = n->drv->co_check(n, &r, 0, &err);
    fclose(stderr);
    stderr = saved;
    vbd_error_free(err);
    (void)j;
    return rc < 0 ? -1 : r.corruptions + r.check_errors;
}

static void qcow2_inspect(struct fuzz_job *j, struct vbd_node *n)
{
    struct vbd_snapshot_info *sn = NULL;
    if (n->drv->snapshot_list && n->drv->snapshot_list(n, &sn) >= 0)
        free(sn);
    if (check_problems(j, n) == 0)
        j->tag |= CLEAN;
}

/* The isolation check's span: up to the last write's end */
#define ISOLATED ((9u << 20) + WRITE_LEN)

/* Writes over several clusters, twice and then in part: the first
 * allocates the clusters of [RUN_OFF, +RUN_LEN) (or overwrites what the
 * input holds there), the next ones write over clusters the image alone
 * holds, at consecutive host offsets when the first allocated them
 * together: qcow2.c's overwrite_run sends those as one request to the file
 * (with 64 KiB clusters the run is 4 clusters; with 512-byte ones it
 * crosses L2 tables). The writes with WRITE_LEN bytes above span at most 2
 * clusters of 64 KiB, under a run. Right after the second of those, so
 * that the seeds' small disks (256 KiB, 1 MiB) hold it, clipped to the disk. */
#define RUN_OFF 70000u
#define RUN_LEN (3u * 65536 + 2000)
static const struct {
    uint64_t at, len; /* inside [RUN_OFF, +RUN_LEN) */
    uint8_t pattern;
} run_writes[] = {{0, RUN_LEN, 0x3c}, {0, RUN_LEN, 0xc3}, {70000, 100000, 0x69}};

/* The disk's first limit bytes as they are compared with the model. */
static void compare_model(const uint8_t *model, const uint8_t *now, uint64_t limit, const char *when)
{
    /* memcmp first: the byte loop, coverage-instrumented, was ~90 % of a
     * 16 MiB disk's input (round 28's slow units of 5-11 s at load) */
    if (!memcmp(model, now, limit))
        return;
    for (uint64_t i = 0; i < limit; i++)
        if (model[i] != now[i]) {
            fprintf(stderr, "a clean qcow2 image: byte %llu reads 0x%02x %s, 0x%02x expected (a write, zero or "
                            "discard changed bytes outside its range)\n", (unsigned long long)i, now[i], when, model[i]);
            abort();
        }
}

/* The model takes what [off, off+len) reads now (a refused request may
 * have done part of its work, a discard may leave the old bytes or
 * zeroes); false if it does not read. */
static bool model_take(struct vbd_node *n, uint8_t *model, uint64_t limit, uint64_t off, uint64_t len)
{
    if (off >= limit)
        return true;
    if (len > limit - off)
        len = limit - off;
    return vbd_node_co_pread(n, off, model + off, len) == 0;
}

static void qcow2_after(struct fuzz_job *j)
{
    struct vbd_node *n = fuzz_image_open(j, VBD_OPEN_RDWR | VBD_OPEN_NO_FLUSH); /* no fsync per input */
    if (!n)
        return;
    bool written[sizeof(offs) / sizeof(offs[0])] = {false};
    uint8_t *pattern = j->buf, *back = j->buf + WRITE_LEN;
    memset(pattern, 0xa5, WRITE_LEN);
    /* on a clean image: the disk before the requests, each request's range
     * then as it must read, the rest unchanged */
    static uint8_t *model, *now;
    if (!model && (!(model = malloc(ISOLATED)) || !(now = malloc(ISOLATED))))
        abort();
    uint64_t limit = n->size < ISOLATED ? n->size : ISOLATED;
    bool isolated = (j->tag & CLEAN) && vbd_node_co_pread(n, 0, model, limit) == 0;
    /* zero and discard first, elsewhere, so that they free or reuse what the writes may reach */
    if (n->size > (4u << 20) + 65536) {
        if (vbd_node_co_pwrite_zeroes(n, 4u << 20, 65536, 0) == 0 && limit >= (4u << 20) + 65536)
            memset(model + (4u << 20), 0, 65536);
        else
            isolated = isolated && model_take(n, model, limit, 4u << 20, 65536);
    }
    if (n->size > (6u << 20) + 131072) {
        vbd_node_co_pdiscard(n, 6u << 20, 131072);
        isolated = isolated && model_take(n, model, limit, 6u << 20, 131072);
    }
    for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
        if (offs[i] + WRITE_LEN > n->size || vbd_node_co_pwrite(n, offs[i], pattern, WRITE_LEN, 0) < 0) {
            if (offs[i] + WRITE_LEN <= n->size)
                isolated = isolated && model_take(n, model, limit, offs[i], WRITE_LEN);
            continue; /* a refused write need not stop the others */
        }
        if (vbd_node_co_pread(n, offs[i], back, WRITE_LEN) < 0) {
            isolated = false;
            continue;
        }
        /* a write that succeeded must read back; in a corrupt image a
         * cluster in use may have refcount 0 and be handed out again (QEMU
         * too): there the write owes no more than not crashing */
        if (memcmp(pattern, back, WRITE_LEN) && (j->tag & CLEAN))
            abort();
        written[i] = true;
        if (offs[i] + WRITE_LEN <= limit)
            memcpy(model + offs[i], pattern, WRITE_LEN);
    }
    /* the run writes: the region's expected bytes while every one succeeded */
    static uint8_t *run_expect, *run_buf;
    if (!run_expect && (!(run_expect = malloc(RUN_LEN)) || !(run_buf = malloc(RUN_LEN))))
        abort();
    uint64_t run_len = n->size > RUN_OFF ? (n->size - RUN_OFF < RUN_LEN ? n->size - RUN_OFF : RUN_LEN) : 0;
    bool run_written = run_len > 0;
    for (size_t i = 0; run_written && i < sizeof(run_writes) / sizeof(run_writes[0]); i++) {
        if (run_writes[i].at >= run_len)
            continue;
        uint64_t at = RUN_OFF + run_writes[i].at;
        uint64_t len = run_len - run_writes[i].at < run_writes[i].len ? run_len - run_writes[i].at : run_writes[i].len;
        memset(run_buf, run_writes[i].pattern, len);
        if (vbd_node_co_pwrite(n, at, run_buf, len, 0) < 0) {
            run_written = false;
            isolated = isolated && model_take(n, model, limit, RUN_OFF, run_len);
            break;
        }
        memset(run_expect + run_writes[i].at, run_writes[i].pattern, len);
        if (vbd_node_co_pread(n, RUN_OFF, run_buf, run_len) < 0) {
            run_written = isolated = false;
            break;
        }
        if (memcmp(run_expect, run_buf, run_len) && (j->tag & CLEAN)) {
            fprintf(stderr, "a clean qcow2 image: write %zu over [%llu, +%llu) does not read back\n", i,
                    (unsigned long long)at, (unsigned long long)len);
            abort();
        }
        memcpy(model + RUN_OFF, run_expect, run_len); /* RUN_OFF + run_len <= limit: limit is the size or more */
    }
    if (isolated && vbd_node_co_pread(n, 0, now, limit) == 0)
        compare_model(model, now, limit, "after the writes");
    if (getenv("VBD_FUZZ_VERBOSE")) /* whether inputs reach this check at all */
        fprintf(stderr, "write check: %s, %llu bytes compared\n", isolated ? "clean image" : "not checked",
                isolated ? (unsigned long long)limit : 0ull);
    vbd_node_unref(n);
    if (!(j->tag & CLEAN))
        return; /* a corrupt image may alias clusters: its writes owe nothing more */
    n = fuzz_image_open(j, VBD_OPEN_CHECK);
    if (!n) {
        fprintf(stderr, "a clean qcow2 image does not open after writes\n");
        abort();
    }
    struct vbd_image_info info = {0};
    struct vbd_error *err = NULL;
    if (vbd_node_get_info(n, &info, &err) < 0 || info.corrupt) {
        vbd_error_free(err);
        json_object_put(info.format_specific);
        vbd_node_unref(n);
        return; /* the writes found what check did not (e.g. a refcount it cannot prove): flagged, not lost */
    }
    json_object_put(info.format_specific);
    for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++)
        if (written[i] && (vbd_node_co_pread(n, offs[i], back, WRITE_LEN) < 0 || memcmp(pattern, back, WRITE_LEN))) {
            fprintf(stderr, "a clean qcow2 image lost the write at %llu\n", (unsigned long long)offs[i]);
            abort();
        }
    if (run_written && (vbd_node_co_pread(n, RUN_OFF, run_buf, run_len) < 0 || memcmp(run_expect, run_buf, run_len))) {
        fprintf(stderr, "a clean qcow2 image lost the writes over [%llu, +%llu)\n", (unsigned long long)RUN_OFF,
                (unsigned long long)run_len);
        abort();
    }
    if (isolated && n->size >= limit && vbd_node_co_pread(n, 0, now, limit) == 0)
        compare_model(model, now, limit, "once closed and reopened");
    if (check_problems(j, n) != 0) {
        fprintf(stderr, "a clean qcow2 image is corrupt after writes\n");
        abort();
    }
    vbd_node_unref(n);
}

static bool qcow2_synth(struct fuzz_job *j, FILE *f, const uint8_t *data, size_t size)
{
    (void)j;
    /* a valid v3 header (64 KiB clusters, 16 MiB disk) under the input when it is short */
    static const uint8_t hdr[112] = {
        'Q', 'F', 'I', 0xfb, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, /* version 3, no backing */
        0, 0, 0, 0, 0, 0, 0, 16,                                 /* cluster_bits 16 */
        0, 0, 0, 0, 1, 0, 0, 0,                                  /* size 16 MiB */
        0, 0, 0, 0, 0, 0, 0, 1,                                  /* crypt 0, l1_size 1 */
        0, 0, 0, 0, 0, 3, 0, 0,                                  /* l1 at 0x30000 */
        0, 0, 0, 0, 0, 1, 0, 0,                                  /* reftable at 0x10000 */
        0, 0, 0, 1, 0, 0, 0, 0,                                  /* 1 cluster, 0 snapshots */
        0, 0, 0, 0, 0, 0, 0, 0,                                  /* snapshots offset */
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,          /* incompat, compat */
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 112,        /* autoclear, refcount_order 4, hlen */
    };
    if (size < sizeof(hdr) || memcmp(data, "QFI\xfb", 4)) {
        fwrite(hdr, 1, sizeof(hdr), f);
        fseek(f, 4 * 65536 - 1, SEEK_SET);
        fputc(0, f);
        fseek(f, 0x30000, SEEK_SET); /* the input becomes the L1 table and what follows */
    }
    fwrite(data, 1, size, f);
    return true;
}

static const struct fuzz_image qcow2 = {
    .driver = "qcow2",
    .l2_cache_size = "256k",
    .no_backing = true,
    .synth = qcow2_synth,
    .inspect = qcow2_inspect,
    .after = qcow2_after,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_input(&qcow2, data, size);
}
