/* The generic request path, driven through an in-memory protocol driver
 * that records what reaches it. */
#include "unit.h"
#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/iov.h"
#include "vbd/loop.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>

#define MEM_SIZE (1 << 20)
static uint8_t mem[MEM_SIZE];
static int reqs, flushes, zero_calls;
static uint32_t cfg_align = 1;
static uint64_t cfg_max_transfer;
static bool cfg_zeroes_supported, cfg_fua_native;
static uint64_t max_seen_len;
static bool misaligned_seen;

static int mem_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    n->size = MEM_SIZE;
    n->bl.request_alignment = cfg_align;
    n->bl.max_transfer = cfg_max_transfer;
    n->supported_write_flags = cfg_fua_native ? VBD_REQ_FUA : 0;
    return 0;
}

static int mem_rw(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, bool w)
{
    reqs++;
    if (bytes > max_seen_len)
        max_seen_len = bytes;
    if ((off | bytes) & (cfg_align - 1))
        misaligned_seen = true;
    /* yield so concurrent requests really interleave: a read takes its
     * data at once, a write lands late (the worst case for a
     * read-modify-write racing another write) */
    if (!w)
        vbd_iov_from_buf(q->iov, q->niov, qoff, mem + off, bytes);
    vbd_co_sleep_ns(100000);
    if (w)
        vbd_iov_to_buf(q->iov, q->niov, qoff, mem + off, bytes);
    return 0;
}
static int mem_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned f) { return mem_rw(n, off, bytes, q, qoff, false); }
static int mem_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned f) { return mem_rw(n, off, bytes, q, qoff, true); }
static int mem_flush(struct vbd_node *n) { flushes++; return 0; }
static int mem_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned f)
{
    zero_calls++;
    if (!cfg_zeroes_supported)
        return -ENOTSUP;
    memset(mem + off, 0, bytes);
    return 0;
}

static const struct vbd_driver mem_driver = {
    .name = "file", .kind = VBD_DRV_PROTOCOL,
    .open = mem_open, .co_preadv = mem_preadv, .co_pwritev = mem_pwritev, .co_flush = mem_flush,
    .co_pwrite_zeroes = mem_zeroes,
};

/* Open a node on mem_driver without the registry: vbd_open with a driver
 * name finds the registered "file" driver, so we patch the node after. */
static struct vbd_node *open_mem(void)
{
    struct vbd_error *err = NULL;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("null-co"));
    json_object_object_add(o, "size", json_object_new_int64(MEM_SIZE));
    struct vbd_node *n = vbd_open(NULL, o, VBD_OPEN_RDWR, &err);
    if (!n) {
        fprintf(stderr, "open: %s\n", err->msg);
        return NULL;
    }
    n->drv = &mem_driver;
    mem_open(n, NULL, 0, NULL);
    reqs = flushes = zero_calls = 0;
    max_seen_len = 0;
    misaligned_seen = false;
    return n;
}

struct wr { struct vbd_node *n; uint64_t off, len; int pat; int rc; int *done; };
static void writer(void *opaque)
{
    struct wr *w = opaque;
    uint8_t *buf = malloc(w->len);
    memset(buf, w->pat, w->len);
    w->rc = vbd_node_co_pwrite(w->n, w->off, buf, w->len, 0);
    free(buf);
    (*w->done)++;
}

static void run_until(int *done, int want)
{
    while (*done < want)
        vbd_loop_run_once(vbd_loop_current(), -1);
}

UNIT_TEST(unaligned_writes_rmw_serialised)
{
    cfg_align = 4096;
    cfg_max_transfer = 0;
    struct vbd_node *n = open_mem();
    CHECK(n != NULL);
    memset(mem, 0xee, MEM_SIZE);
    int done = 0;
    /* overlapping in the same 4k blocks; each must land whole */
    struct wr w[4] = {{n, 100, 200, 1, 1, &done}, {n, 250, 4000, 2, 1, &done}, {n, 4095, 2, 3, 1, &done}, {n, 9000, 10, 4, 1, &done}};
    for (int i = 0; i < 4; i++)
        vbd_co_enter(vbd_co_create(writer, &w[i]));
    run_until(&done, 4);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(w[i].rc, 0);
    CHECK(!misaligned_seen);
    CHECK_EQ(mem[99], 0xee);
    CHECK_EQ(mem[100], 1);
    CHECK_EQ(mem[249], 1);
    CHECK_EQ(mem[250], 2);
    CHECK_EQ(mem[4094], 2);
    CHECK_EQ(mem[4095], 3);
    CHECK_EQ(mem[4096], 3);
    CHECK_EQ(mem[4097], 2);
    CHECK_EQ(mem[4249], 2);
    CHECK_EQ(mem[4250], 0xee);
    CHECK_EQ(mem[8999], 0xee);
    CHECK_EQ(mem[9000], 4);
    CHECK_EQ(mem[9010], 0xee);
    vbd_node_unref(n);
}

/* Aligned requests skip the lock while no read-modify-write is in flight;
 * they must still never overlap one, in either order of arrival. */
UNIT_TEST(aligned_and_rmw_writes_never_overlap)
{
    cfg_align = 4096;
    struct vbd_node *n = open_mem();
    CHECK(n != NULL);
    for (int order = 0; order < 2; order++) {
        memset(mem, 0xee, 3 * 4096);
        int done = 0;
        struct wr rmw = {n, 4096 + 100, 100, 1, 1, &done};
        struct wr whole = {n, 0, 3 * 4096, 2, 1, &done};
        struct wr *first = order ? &whole : &rmw, *second = order ? &rmw : &whole;
        vbd_co_enter(vbd_co_create(writer, first));
        vbd_co_enter(vbd_co_create(writer, second));
        run_until(&done, 2);
        CHECK_EQ(rmw.rc, 0);
        CHECK_EQ(whole.rc, 0);
        CHECK(!misaligned_seen);
        /* the later request wins where they overlap, the earlier one elsewhere */
        uint8_t in_rmw = order ? 1 : 2;
        for (int i = 0; i < 3 * 4096; i++) {
            uint8_t want = i >= 4096 + 100 && i < 4096 + 200 ? in_rmw : 2;
            if (mem[i] != want) {
                CHECK_EQ(mem[i], want);
                break;
            }
        }
    }
    vbd_node_unref(n);
}

struct rd { struct vbd_node *n; int rc; uint8_t buf[3000]; };
static void reader(void *opaque) { struct rd *r = opaque; r->rc = vbd_node_co_pread(r->n, 1001, r->buf, 3000); }

UNIT_TEST(unaligned_read_and_bounds)
{
    cfg_align = 512;
    struct vbd_node *n = open_mem();
    for (int i = 0; i < MEM_SIZE; i++)
        mem[i] = (uint8_t)(i * 7);
    struct rd r = {n, 1, {0}};
    vbd_co_run_sync(reader, &r);
    CHECK_EQ(r.rc, 0);
    CHECK(!misaligned_seen);
    CHECK_EQ(r.buf[0], (uint8_t)(1001 * 7));
    CHECK_EQ(r.buf[2999], (uint8_t)(4000 * 7));
    int done = 0;
    struct wr past = {n, MEM_SIZE - 10, 20, 9, 1, &done};
    vbd_co_run_sync(writer, &past);
    CHECK_EQ(past.rc, -EINVAL);
    CHECK_EQ(mem[MEM_SIZE - 10], (uint8_t)((MEM_SIZE - 10) * 7));
    struct wr huge = {n, UINT64_MAX - 5, 10, 9, 1, &done};
    vbd_co_run_sync(writer, &huge);
    CHECK_EQ(huge.rc, -EINVAL);
    vbd_node_unref(n);
}

UNIT_TEST(split_at_max_transfer)
{
    cfg_align = 512;
    cfg_max_transfer = 64 * 1024;
    struct vbd_node *n = open_mem();
    int done = 0;
    struct wr w = {n, 0, 300 * 1024, 5, 1, &done};
    vbd_co_run_sync(writer, &w);
    CHECK_EQ(w.rc, 0);
    CHECK(max_seen_len <= 64 * 1024);
    CHECK_EQ(reqs, 5);
    CHECK_EQ(mem[300 * 1024 - 1], 5);
    cfg_max_transfer = 0;
    vbd_node_unref(n);
}

struct fz { struct vbd_node *n; int rc; };
static void fua_write(void *o) { struct fz *f = o; uint8_t b[512] = {0}; f->rc = vbd_node_co_pwrite(f->n, 0, b, 512, VBD_REQ_FUA); }
static void zero_write(void *o) { struct fz *f = o; f->rc = vbd_node_co_pwrite_zeroes(f->n, 1000, 10000, 0); }
static void zero_nofallback(void *o) { struct fz *f = o; f->rc = vbd_node_co_pwrite_zeroes(f->n, 0, 4096, VBD_REQ_NO_FALLBACK); }

UNIT_TEST(fua_and_zero_emulation)
{
    cfg_align = 512;
    cfg_fua_native = false;
    struct vbd_node *n = open_mem();
    struct fz f = {n, 1};
    vbd_co_run_sync(fua_write, &f);
    CHECK_EQ(f.rc, 0);
    CHECK_EQ(flushes, 1); /* FUA emulated by a flush */
    memset(mem, 0xaa, MEM_SIZE);
    cfg_zeroes_supported = false;
    vbd_co_run_sync(zero_write, &f);
    CHECK_EQ(f.rc, 0);
    CHECK_EQ(mem[999], 0xaa);
    CHECK_EQ(mem[1000], 0);
    CHECK_EQ(mem[10999], 0);
    CHECK_EQ(mem[11000], 0xaa);
    vbd_co_run_sync(zero_nofallback, &f);
    CHECK_EQ(f.rc, -ENOTSUP);
    vbd_node_unref(n);
}

static void ro_write(void *o) { struct fz *f = o; uint8_t b[512] = {0}; f->rc = vbd_node_co_pwrite(f->n, 0, b, 512, 0); }
UNIT_TEST(read_only_node_refuses_writes)
{
    struct vbd_error *err = NULL;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("null-co"));
    struct vbd_node *n = vbd_open(NULL, o, 0, &err);
    CHECK(n != NULL);
    struct fz f = {n, 1};
    vbd_co_run_sync(ro_write, &f);
    CHECK_EQ(f.rc, -EACCES);
    struct vbd_backend_opts bo = {.read_only = false};
    CHECK(vbd_backend_new(n, &bo, &err) == NULL);
    CHECK(err && strstr(err->msg, "read-only"));
    vbd_error_free(err);
    vbd_node_unref(n);
}

/* The one range rule (vbd/block.h): io.c applies it, exports check with it. */
UNIT_TEST(request_range_rule)
{
    const uint64_t m = 1 << 20, top = VBD_MAX_REQUEST_END;
    CHECK_EQ(vbd_request_check(m, 0, m), 0);
    CHECK_EQ(vbd_request_check(m, m, 0), 0);
    CHECK_EQ(vbd_request_check(m, m - 512, 512), 0);
    CHECK_EQ(vbd_request_check(m, m, 1), -EINVAL);
    CHECK_EQ(vbd_request_check(m, m - 512, 513), -EINVAL);
    CHECK_EQ(vbd_request_check(m, m + 1, 0), -EINVAL);
    CHECK_EQ(vbd_request_check(m, UINT64_MAX - 511, 1024), -EINVAL); /* wraps 2^64 */
    CHECK_EQ(vbd_request_check(UINT64_MAX, top, 0), 0);
    CHECK_EQ(vbd_request_check(UINT64_MAX, top, 1), -EINVAL);
    CHECK_EQ(vbd_request_check(UINT64_MAX, top + 1, 0), -EINVAL);
    CHECK_EQ(vbd_request_check(UINT64_MAX, 1, top), -EINVAL);
}

/* A zeroing that must not fall back to writing zero data, on a node that
 * cannot zero fast, fails before anything is written (its unaligned edges
 * included) and never reaches the driver. */
static void zero_nofallback_unaligned(void *o) { struct fz *f = o; f->rc = vbd_node_co_pwrite_zeroes(f->n, 100, 8192, VBD_REQ_NO_FALLBACK); }
static void zero_nofallback_aligned(void *o) { struct fz *f = o; f->rc = vbd_node_co_pwrite_zeroes(f->n, 512, 8192, VBD_REQ_NO_FALLBACK); }
UNIT_TEST(no_fallback_zeroing_has_no_side_effects)
{
    cfg_align = 512;
    cfg_zeroes_supported = false;
    struct vbd_node *n = open_mem();
    n->supported_zero_flags = 0;
    memset(mem, 0xaa, 16384);
    struct fz f = {n, 1};
    vbd_co_run_sync(zero_nofallback_unaligned, &f);
    CHECK_EQ(f.rc, -ENOTSUP);
    CHECK_EQ(reqs, 0);
    CHECK_EQ(zero_calls, 0);
    CHECK_EQ(mem[100], 0xaa);
    CHECK_EQ(mem[8291], 0xaa);
    /* a node that lists the flag: a request misaligned to its 512 bytes
     * still fails untouched (its edges would be data writes: QEMU's
     * bdrv_co_pwritev_part says so too), an aligned one reaches the driver */
    n->supported_zero_flags = VBD_REQ_NO_FALLBACK;
    cfg_zeroes_supported = true;
    vbd_co_run_sync(zero_nofallback_unaligned, &f);
    CHECK_EQ(f.rc, -ENOTSUP);
    CHECK_EQ(reqs, 0);
    CHECK_EQ(zero_calls, 0);
    CHECK_EQ(mem[100], 0xaa);
    vbd_co_run_sync(zero_nofallback_aligned, &f);
    CHECK_EQ(f.rc, 0);
    CHECK_EQ(zero_calls, 1);
    CHECK_EQ(mem[511], 0xaa);
    CHECK_EQ(mem[512], 0);
    CHECK_EQ(mem[8703], 0);
    CHECK_EQ(mem[8704], 0xaa);
    cfg_zeroes_supported = false;
    vbd_node_unref(n);
}

UNIT_TEST(cache_modes_as_qemu)
{
    enum vbd_cache_mode m;
    CHECK_EQ(vbd_cache_mode_parse("none", &m), 0);
    CHECK_EQ(vbd_cache_mode_open_flags(m), VBD_OPEN_NOCACHE);
    CHECK(!vbd_cache_mode_writethrough(m));
    CHECK_EQ(vbd_cache_mode_parse("directsync", &m), 0);
    CHECK_EQ(vbd_cache_mode_open_flags(m), VBD_OPEN_NOCACHE);
    CHECK(vbd_cache_mode_writethrough(m));
    CHECK_EQ(vbd_cache_mode_parse("writethru", &m), 0);
    CHECK(vbd_cache_mode_writethrough(m));
    CHECK_EQ(vbd_cache_mode_parse("unsafe", &m), 0);
    CHECK_EQ(vbd_cache_mode_open_flags(m), VBD_OPEN_NO_FLUSH);
    CHECK(vbd_cache_mode_parse("sometimes", &m) < 0);
}

/* vbd_iov_memset zeroes exactly its range across segments of every size
 * (the AVX2 loop's body and tail, glibc's below and above it) and leaves
 * the bytes around each segment alone; other fill bytes take memset. */
UNIT_TEST(iov_memset_zero_segments)
{
    static const size_t sizes[] = {1, 100, 127, 128, 129, 255, 4096, 4100, 65535, 65536, 70000};
    enum { N = sizeof(sizes) / sizeof(sizes[0]), GUARD = 64 };
    size_t total = 0;
    for (int i = 0; i < N; i++)
        total += sizes[i] + 2 * GUARD + 1;
    uint8_t *buf = malloc(total);
    for (int c = 0; c < 2; c++) {
        for (size_t off = 0; off < 200; off += 37) {
            struct iovec iov[N];
            uint8_t *p = buf;
            size_t len = 0;
            memset(buf, 0xa5, total);
            for (int i = 0; i < N; i++) {
                p += GUARD + (i & 1); /* odd addresses too */
                iov[i].iov_base = p;
                iov[i].iov_len = sizes[i];
                p += sizes[i] + GUARD;
                len += sizes[i];
            }
            size_t want = len - off - 3;
            CHECK_EQ(vbd_iov_memset(iov, N, off, c ? 0x3c : 0, want), want);
            size_t at = 0; /* byte position in the vector */
            uint8_t fill = c ? 0x3c : 0;
            for (int i = 0; i < N; i++) {
                uint8_t *s = iov[i].iov_base;
                for (int g = 1; g <= GUARD; g++) {
                    CHECK_EQ(s[-g], 0xa5);
                    CHECK_EQ(s[sizes[i] + g - 1], 0xa5);
                }
                size_t bad = 0;
                for (size_t k = 0; k < sizes[i]; k++, at++) {
                    uint8_t expect = at >= off && at < off + want ? fill : 0xa5;
                    bad += s[k] != expect;
                }
                CHECK_EQ(bad, 0);
            }
        }
    }
    free(buf);
}
