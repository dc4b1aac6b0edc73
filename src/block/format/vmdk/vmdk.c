/* SPDX-License-Identifier: MIT */
/*
 * Format driver "vmdk": VMware virtual disks, as qemu-img reads and makes
 * them. A disk is a list of extents, each a range of the virtual disk kept
 * in one file:
 *  - hosted sparse (magic "KDMV"): a header, a grain directory (GD) of
 *    sector offsets of grain tables (GT), GT entries holding the sector of
 *    each grain (0 = unallocated, 1 = zeroed with the zeroed-grain flag),
 *    and a redundant copy of both (RGD) kept in step; streamOptimized is
 *    the same with every grain deflated behind a 12-byte marker (lba, size),
 *    the grain directory possibly at the end of the stream (a footer);
 *  - ESX sparse (magic "COWD", vmfsSparse): the same two levels, 4096
 *    entries per table, no redundant copy;
 *  - flat: the bytes of the range at an offset of a file.
 * monolithicSparse and streamOptimized carry their descriptor (a text file
 * of key=value lines and extent lines) inside the sparse file; the other
 * subformats have a descriptor file naming extent files next to it.
 *
 * Allocating writes append a grain at the end of the extent file and then
 * set its GT entries (and flush before that when a backing file's data was
 * copied in): a crash leaves at worst a leaked grain. New GTs are written
 * before the GD entry naming them. All of it under one coroutine mutex;
 * reads and writes in place of allocated grains do not take it.
 */
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/iov.h"
#include "vbd/loop.h"
#include "vbd/options.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <zlib.h>
#include "vmdk.h"

/* ---------- probe ---------- */

static int vmdk_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < 4)
        return 0;
    uint32_t m = get_le32p(buf);
    if (m == VMDK4_MAGIC || m == VMDK3_MAGIC)
        return 100;
    /* a descriptor file: comments and blank lines, then version=1|2|3 */
    const char *p = (const char *)buf, *end = p + len;
    while (p < end) {
        if (*p == '#') {
            while (p < end && *p != '\n')
                p++;
            p++;
            continue;
        }
        if (*p == ' ') {
            while (p < end && *p == ' ')
                p++;
            if (p < end && *p == '\r')
                p++;
            if (p == end || *p != '\n')
                return 0;
            p++;
            continue;
        }
        size_t left = (size_t)(end - p);
        if (left >= 10 && !strncmp(p, "version=", 8) && p[8] >= '1' && p[8] <= '3' &&
            (p[9] == '\n' || (p[9] == '\r' && left >= 11 && p[10] == '\n')))
            return 100;
        return 0;
    }
    return 0;
}

/* ---------- descriptor text ---------- */

/* Value of `key` in a descriptor (key = "value" or key=value) into out. */
static bool desc_get(const char *desc, const char *key, char *out, size_t outlen)
{
    size_t kl = strlen(key);
    for (const char *p = desc; *p;) {
        const char *eol = strchr(p, '\n');
        const char *le = eol ? eol : p + strlen(p);
        const char *q = p;
        while (q < le && (*q == ' ' || *q == '\t'))
            q++;
        if ((size_t)(le - q) > kl && !strncmp(q, key, kl)) {
            const char *v = q + kl;
            while (v < le && (*v == ' ' || *v == '\t'))
                v++;
            if (v < le && *v == '=') {
                v++;
                while (v < le && (*v == ' ' || *v == '\t'))
                    v++;
                const char *ve = le;
                while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                    ve--;
                if (ve - v >= 2 && *v == '"' && ve[-1] == '"') {
                    v++;
                    ve--;
                } else if (v < ve && *v == '"') {
                    return false;
                }
                if ((size_t)(ve - v) >= outlen)
                    return false;
                memcpy(out, v, (size_t)(ve - v));
                out[ve - v] = 0;
                return true;
            }
        }
        p = eol ? eol + 1 : le;
    }
    return false;
}

static bool desc_get_hex32(const char *desc, const char *key, uint32_t *v)
{
    char b[32], *end;
    if (!desc_get(desc, key, b, sizeof(b)))
        return false;
    errno = 0;
    unsigned long long x = strtoull(b, &end, 16);
    if (end == b || errno || x > UINT32_MAX)
        return false;
    *v = (uint32_t)x;
    return true;
}

/* The descriptor with CID's value replaced (malloc'd). */
static char *desc_with_cid(const char *desc, uint32_t cid)
{
    size_t len = strlen(desc);
    char *out = malloc(len + 16);
    size_t o = 0;
    bool done = false;
    for (const char *p = desc; *p;) {
        const char *eol = strchr(p, '\n');
        const char *le = eol ? eol + 1 : p + strlen(p);
        if (!done && !strncmp(p, "CID", 3) && (p[3] == '=' || p[3] == ' ')) {
            o += (size_t)sprintf(out + o, "CID=%08" PRIx32 "\n", cid);
            done = true;
        } else {
            memcpy(out + o, p, (size_t)(le - p));
            o += (size_t)(le - p);
        }
        p = le;
    }
    out[o] = 0;
    return out;
}

/* ---------- the embedded descriptor's room ---------- */

/* Ends *end at [start, stop) if that overlaps [off, *end). */
static void clip_room(uint64_t off, uint64_t *end, uint64_t start, uint64_t stop)
{
    if (start < *end && stop > off)
        *end = start > off ? start : off;
}

/* The bytes from off (an embedded descriptor in extent e's file, room
 * bytes by its header) that hold nothing else: the room ends where a
 * grain directory, a grain table or the grains begin (0 if the descriptor
 * starts inside one). The header's descriptor size is only a claim: one
 * that reached over the directories had the first write's CID update
 * rewrite them, the tables and grains behind them too. */
static uint64_t desc_room_of(const struct vmdk_extent *e, uint64_t off, uint64_t room)
{
    uint64_t end = off + room;
    uint64_t tb = div_up((uint64_t)e->gtes * 4, SECTOR) * SECTOR;
    uint64_t db = div_up((uint64_t)e->gd_entries * 4, SECTOR) * SECTOR;
    if (e->data_start)
        clip_room(off, &end, e->data_start, UINT64_MAX);
    clip_room(off, &end, e->gd_off, e->gd_off + db);
    if (e->rgd)
        clip_room(off, &end, e->rgd_off, e->rgd_off + db);
    for (uint32_t i = 0; i < e->gd_entries; i++) {
        if (e->gd[i])
            clip_room(off, &end, (uint64_t)e->gd[i] * SECTOR, (uint64_t)e->gd[i] * SECTOR + tb);
        if (e->rgd && e->rgd[i])
            clip_room(off, &end, (uint64_t)e->rgd[i] * SECTOR, (uint64_t)e->rgd[i] * SECTOR + tb);
    }
    return end - off;
}

/* ---------- extents: lookup ---------- */

static struct vmdk_extent *find_extent(struct vmdk_state *s, uint64_t off)
{
    unsigned lo = 0, hi = s->next;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        struct vmdk_extent *e = &s->ext[mid];
        if (off < e->start)
            hi = mid;
        else if (off - e->start >= e->bytes)
            lo = mid + 1;
        else
            return e;
    }
    return NULL;
}

static void report_bad(struct vbd_node *n, const char *what, uint64_t off)
{
    char msg[128];
    snprintf(msg, sizeof(msg), "vmdk: %s points outside the extent file", what);
    vbd_node_report_corruption(n, msg, (int64_t)off, -1, false);
}

static uint64_t gt_bytes(const struct vmdk_extent *e) { return (uint64_t)e->gtes * 4; }

/* Whether [start, end) overlaps the extent's metadata. */
static bool in_meta(const struct vmdk_extent *e, uint64_t start, uint64_t end)
{
    unsigned lo = 0, hi = e->nmeta;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        if (e->meta[mid].end <= start)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < e->nmeta && e->meta[lo].start < end;
}

static int range_cmp(const void *a, const void *b)
{
    const struct vmdk_range *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Sort r[0..k) and merge the ranges that overlap or touch; the count left. */
static size_t merge_ranges(struct vmdk_range *r, size_t k)
{
    if (!k)
        return 0;
    qsort(r, k, sizeof(*r), range_cmp);
    size_t o = 0;
    for (size_t i = 1; i < k; i++) {
        if (r[i].start <= r[o].end) {
            if (r[i].end > r[o].end)
                r[o].end = r[i].end;
        } else {
            r[++o] = r[i];
        }
    }
    return o + 1;
}

/* e->meta from the header's overHead, the directories and the tables they
 * point to (their entries were checked to lie in the file). */
static int build_meta(struct vbd_node *n, struct vmdk_extent *e, struct vbd_error **err)
{
    uint64_t tb = div_up(gt_bytes(e), SECTOR) * SECTOR;
    uint64_t db = div_up((uint64_t)e->gd_entries * 4, SECTOR) * SECTOR;
    size_t cap = 3 + (size_t)e->gd_entries * (e->rgd ? 2 : 1), k = 0;
    struct vmdk_range *r = malloc(cap * sizeof(*r));
    if (!r) {
        vbd_error_setf(err, ENOMEM, "Could not open '%s': no memory for the table of its metadata", n->filename);
        return -ENOMEM;
    }
    if (e->data_start)
        r[k++] = (struct vmdk_range){0, e->data_start};
    r[k++] = (struct vmdk_range){e->gd_off, e->gd_off + db};
    if (e->rgd)
        r[k++] = (struct vmdk_range){e->rgd_off, e->rgd_off + db};
    for (uint32_t i = 0; i < e->gd_entries; i++) {
        if (e->gd[i])
            r[k++] = (struct vmdk_range){(uint64_t)e->gd[i] * SECTOR, (uint64_t)e->gd[i] * SECTOR + tb};
        if (e->rgd && e->rgd[i])
            r[k++] = (struct vmdk_range){(uint64_t)e->rgd[i] * SECTOR, (uint64_t)e->rgd[i] * SECTOR + tb};
    }
    k = merge_ranges(r, k);
    struct vmdk_range *t = realloc(r, (k ? k : 1) * sizeof(*r));
    free(e->meta);
    e->meta = t ? t : r;
    e->nmeta = (unsigned)k;
    return 0;
}

/* A table written after open joins e->meta. */
static int meta_add(struct vmdk_extent *e, uint64_t start, uint64_t end)
{
    struct vmdk_range *r = realloc(e->meta, ((size_t)e->nmeta + 1) * sizeof(*r));
    if (!r)
        return -ENOMEM;
    r[e->nmeta] = (struct vmdk_range){start, end};
    e->meta = r;
    e->nmeta = (unsigned)merge_ranges(r, (size_t)e->nmeta + 1);
    return 0;
}

/* The run from off (inside extent e, not past bytes) of one kind: K_DATA
 * at contiguous *host offsets, K_COMP compressed grains (*host: the first one's
 * marker), K_ZERO or K_UNALLOC. */
static int lookup(struct vbd_node *n, struct vmdk_extent *e, uint64_t off, uint64_t bytes, uint64_t *run, int *kind,
                  uint64_t *host)
{
    uint64_t rel = off - e->start;
    if (bytes > e->bytes - rel)
        bytes = e->bytes - rel;
    if (e->flat) {
        *run = bytes;
        *kind = K_DATA;
        *host = e->flat_off + rel;
        return 0;
    }
    uint64_t gi = rel / e->grain, in = rel % e->grain;
    uint64_t gdi = gi / e->gtes, gti = gi % e->gtes;
    if (gdi >= e->gd_entries)
        return -EIO;
    uint64_t cnt = div_up(in + bytes, e->grain);
    if (cnt > e->gtes - gti)
        cnt = e->gtes - gti;
    if (cnt > RUN_MAX)
        cnt = RUN_MAX;
    uint64_t gt = (uint64_t)e->gd[gdi] * SECTOR;
    if (!gt) {
        uint64_t len = cnt * e->grain - in;
        *run = len < bytes ? len : bytes;
        *kind = K_UNALLOC;
        *host = 0;
        return 0;
    }
    if (gt + gt_bytes(e) > vbd_node_size(e->file)) {
        report_bad(n, "a grain directory entry", gt);
        return -EIO;
    }
    uint32_t ent[RUN_MAX];
    int rc = vbd_node_co_pread(e->file, gt + gti * 4, ent, cnt * 4);
    if (rc < 0)
        return rc;
    /* The file's size is read after its grain table: a request allocating
     * meanwhile (under the lock, while this one waited for the read)
     * appends its grain before it writes the entry, so an entry seen here
     * points inside the size read now; read before, that new grain was
     * "past the end" and the request failed with EIO. */
    uint64_t fsize = vbd_node_size(e->file);
    int k = 0;
    uint64_t i;
    for (i = 0; i < cnt; i++) {
        uint32_t v = le32toh(ent[i]);
        int ki = v == 0 ? K_UNALLOC : (v == GTE_ZEROED && e->zero_grain) ? K_ZERO : e->compressed ? K_COMP : K_DATA;
        uint64_t h = (uint64_t)v * SECTOR;
        /* a grain inside the header, descriptor or tables would let a
         * guest write overwrite the image's own metadata (a compressed
         * grain is never written in place: its start is enough) */
        bool meta = ki >= K_DATA && h < fsize && in_meta(e, h, ki == K_DATA ? h + e->grain : h + 1);
        if (ki >= K_DATA && (h >= fsize || meta)) {
            if (i == 0) {
                if (meta)
                    vbd_node_report_corruption(n, "vmdk: a grain table entry points into the image's metadata",
                                               (int64_t)h, -1, false);
                else
                    report_bad(n, "a grain table entry", h);
                return -EIO;
            }
            break; /* the next lookup reports it */
        }
        if (i == 0) {
            k = ki;
            *host = ki >= K_DATA ? h + (ki == K_DATA ? in : 0) : 0;
            continue;
        }
        /* compressed grains make one run for block status; reads take them one by one */
        if (ki != k || (k == K_DATA && h != *host - in + i * e->grain))
            break;
    }
    uint64_t len = i * e->grain - in;
    *run = len < bytes ? len : bytes;
    *kind = k;
    return 0;
}

/* ---------- reads ---------- */

/* CID of a vmdk backing file must be our parentCID, as qemu-img checks
 * before reading through to it. */
static bool backing_valid(struct vbd_node *n)
{
    struct vmdk_state *s = n->opaque;
    if (!s->backing_checked) {
        s->backing_checked = true;
        s->backing_ok = true;
        struct vbd_node *b = n->backing ? vbd_node_skip_filters(n->backing) : NULL;
        if (b && b->drv == n->drv) {
            struct vmdk_state *bs = b->opaque;
            s->backing_ok = bs->cid == s->parent_cid;
        } else if (b) {
            s->backing_ok = false;
        }
    }
    return s->backing_ok;
}

static int read_backing(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff)
{
    if (n->backing && !backing_valid(n))
        return -EINVAL;
    return vbd_node_co_read_backing(n, off, bytes, q, qoff, 0);
}

struct inflate_job {
    const uint8_t *in;
    uint64_t in_len;
    uint8_t *out;
    uint64_t out_len;
};

static long inflate_job_run(void *arg)
{
    struct inflate_job *j = arg;
    uLongf olen = (uLongf)j->out_len;
    if (uncompress(j->out, &olen, j->in, (uLong)j->in_len) != Z_OK)
        return -EIO;
    j->out_len = olen;
    return 0;
}

/* Inflate the grain whose marker is at host into out (e->grain bytes);
 * *got = bytes it holds (the last grain of a disk may be shorter). The
 * inflating runs on the thread pool: the requests in flight (convert's
 * workers) inflate their grains on several cores at once. */
static int read_compressed(struct vbd_node *n, struct vmdk_extent *e, uint64_t host, uint8_t *out, uint64_t *got)
{
    uint64_t fsize = vbd_node_size(e->file);
    uint64_t max = 2 * e->grain + MARKER_BYTES; /* as qemu-img: a grain deflates to at most twice its size */
    if (max > fsize - host)
        max = fsize - host;
    /* most grains deflate to less than a grain: read that much first */
    uint64_t want = e->grain + 4096 < max ? e->grain + 4096 : max;
    uint8_t *buf = vbd_alloc_aligned(4096, max ? max : 1);
    int rc = vbd_node_co_pread(e->file, host, buf, want);
    if (rc < 0)
        goto out;
    const uint8_t *data = buf;
    uint64_t dlen = want;
    if (e->has_marker) {
        if (want < MARKER_BYTES) {
            rc = -EIO;
            goto out;
        }
        dlen = get_le32p(buf + 8);
        data = buf + MARKER_BYTES;
        if (!dlen || dlen > max - MARKER_BYTES) {
            rc = -EIO;
            goto out;
        }
        if (MARKER_BYTES + dlen > want && (rc = vbd_node_co_pread(e->file, host + want, buf + want,
                                                                   MARKER_BYTES + dlen - want)) < 0)
            goto out;
    } else if (want < max && (rc = vbd_node_co_pread(e->file, host + want, buf + want, max - want)) == 0) {
        dlen = max;
    }
    struct inflate_job j = {.in = data, .in_len = dlen, .out = out, .out_len = e->grain};
    rc = (int)vbd_co_run_in_thread(inflate_job_run, &j);
    if (rc == 0)
        *got = j.out_len;
out:
    free(buf);
    if (rc == -EIO)
        vbd_node_report_corruption(n, "vmdk: a compressed grain does not inflate", (int64_t)host, -1, false);
    return rc;
}

static int vmdk_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    struct vmdk_state *s = n->opaque;
    (void)flags;
    uint8_t *gbuf = NULL;
    int rc = 0;
    while (bytes && rc == 0) {
        struct vmdk_extent *e = find_extent(s, off);
        if (!e) {
            rc = -EIO;
            break;
        }
        uint64_t run, host;
        int kind;
        rc = lookup(n, e, off, bytes, &run, &kind, &host);
        if (rc < 0)
            break;
        if (kind == K_DATA) {
            rc = vbd_node_co_preadv(e->file, host, run, q, qoff, 0);
        } else if (kind == K_COMP) {
            uint64_t in = (off - e->start) % e->grain, got = 0;
            if (run > e->grain - in)
                run = e->grain - in;
            if (!gbuf)
                gbuf = malloc(e->grain);
            rc = read_compressed(n, e, host, gbuf, &got);
            if (rc == 0 && in + run > got) {
                vbd_node_report_corruption(n, "vmdk: a compressed grain is too short", (int64_t)host, -1, false);
                rc = -EIO;
            }
            if (rc == 0)
                vbd_iov_from_buf(q->iov, q->niov, qoff, gbuf + in, run);
        } else if (kind == K_UNALLOC) {
            rc = read_backing(n, off, run, q, qoff);
        } else {
            vbd_iov_memset(q->iov, q->niov, qoff, 0, run);
        }
        off += run;
        qoff += run;
        bytes -= run;
    }
    free(gbuf);
    return rc;
}

/* ---------- writes ---------- */

static int update_cid(struct vbd_node *n)
{
    struct vmdk_state *s = n->opaque;
    if (s->cid_updated || !s->desc)
        return 0;
    s->cid_updated = true;
    uint32_t cid;
    if (getrandom(&cid, sizeof(cid), 0) != sizeof(cid))
        cid = (uint32_t)rand();
    char *nd = desc_with_cid(s->desc, cid);
    size_t len = strlen(nd);
    int rc;
    if (s->desc_off) { /* embedded in a sparse file */
        if (len > s->desc_room) {
            free(nd);
            return 0; /* no room: leave the old CID, as the data is what matters */
        }
        /* the new text over the old one, with its NUL (bytes behind the
         * old text's NUL are not the descriptor and must not join it),
         * zero-padded to the old one's end (within the room): what lies
         * after it is left alone, as QEMU rewrites only the descriptor's
         * bytes */
        size_t old = strlen(s->desc);
        size_t span = len + 1 > old ? len + 1 : old;
        if (span > s->desc_room)
            span = s->desc_room;
        uint8_t *buf = calloc(1, span);
        memcpy(buf, nd, len);
        rc = vbd_node_co_pwrite(n->file, s->desc_off, buf, span, 0);
        free(buf);
    } else {
        /* a descriptor file: the new text ends with a NUL, zero-padded to
         * the old text's end, as QEMU writes it. A truncate to the new
         * length (one that may leave the file longer) left the old text's
         * last bytes behind a shorter new one, and a longer one ran over
         * the NUL that ended the old text: either way bytes that were not
         * the descriptor became lines of it (a second extent). */
        size_t old = strlen(s->desc), span = len + 1 > old ? len + 1 : old;
        uint8_t *buf = calloc(1, span);
        memcpy(buf, nd, len);
        rc = vbd_node_co_pwrite(n->file, 0, buf, span, 0);
        free(buf);
    }
    if (rc == 0) {
        free(s->desc);
        s->desc = nd;
        s->cid = cid;
    } else {
        free(nd);
    }
    return rc;
}

/* A new grain table (and its redundant copy) for GD entry gdi: zeroed
 * tables first, then the directory entries. */
static int alloc_gt(struct vmdk_extent *e, uint64_t gdi)
{
    uint64_t tb = div_up(gt_bytes(e), SECTOR) * SECTOR;
    int copies = e->rgd ? 2 : 1;
    uint64_t at = e->file_end;
    if (at / SECTOR + (uint64_t)copies * tb / SECTOR > UINT32_MAX)
        return -ENOSPC;
    uint8_t *z = vbd_alloc_aligned(4096, tb * (uint64_t)copies);
    memset(z, 0, tb * (uint64_t)copies);
    int rc = vbd_node_co_pwrite(e->file, at, z, tb * (uint64_t)copies, 0);
    free(z);
    if (rc < 0)
        return rc;
    if ((rc = meta_add(e, at, at + tb * (uint64_t)copies)) < 0)
        return rc;
    e->file_end = at + tb * (uint64_t)copies;
    if (!e->compressed)
        e->file_end = div_up(e->file_end, e->grain) * e->grain;
    uint8_t le[4];
    if (e->rgd) {
        put_le32p(le, (uint32_t)((at + tb) / SECTOR));
        if ((rc = vbd_node_co_pwrite(e->file, e->rgd_off + gdi * 4, le, 4, 0)) < 0)
            return rc;
        e->rgd[gdi] = (uint32_t)((at + tb) / SECTOR);
    }
    put_le32p(le, (uint32_t)(at / SECTOR));
    if ((rc = vbd_node_co_pwrite(e->file, e->gd_off + gdi * 4, le, 4, 0)) < 0)
        return rc;
    e->gd[gdi] = (uint32_t)(at / SECTOR);
    return 0;
}

static int set_gte(struct vmdk_extent *e, uint64_t gi, uint32_t v)
{
    uint64_t gdi = gi / e->gtes, gti = gi % e->gtes;
    uint8_t le[4];
    put_le32p(le, v);
    int rc = vbd_node_co_pwrite(e->file, (uint64_t)e->gd[gdi] * SECTOR + gti * 4, le, 4, 0);
    if (rc == 0 && e->rgd && e->rgd[gdi] && gdi < e->gd_entries)
        rc = vbd_node_co_pwrite(e->file, (uint64_t)e->rgd[gdi] * SECTOR + gti * 4, le, 4, 0);
    return rc;
}

/* Write the grain holding off (lock held): its old contents (backing or
 * zeroes; a compressed extent's grains are written whole, once: see
 * write_stream_grain) with [off, off+len) from q (NULL: zeroes) go to a
 * new grain at the end of the file, deflated in a compressed extent, then
 * its GT entry. */
static int write_new_grain(struct vbd_node *n, struct vmdk_extent *e, uint64_t off, uint64_t len, int kind,
                           uint64_t host, struct vbd_qiov *q, size_t qoff)
{
    uint64_t rel = off - e->start;
    uint64_t gi = rel / e->grain, in = rel % e->grain;
    uint64_t gstart = off - in;
    uint64_t glen = e->bytes - (rel - in) < e->grain ? e->bytes - (rel - in) : e->grain;
    uint64_t gdi = gi / e->gtes;
    int rc = 0;
    if (!e->gd[gdi] && (rc = alloc_gt(e, gdi)) < 0)
        return rc;
    uint8_t *buf = vbd_alloc_aligned(4096, e->grain);
    memset(buf, 0, e->grain);
    struct iovec one;
    struct vbd_qiov bq;
    vbd_qiov_init_buf(&bq, &one, buf, glen);
    if (in > 0 || in + len < glen) {
        if (kind == K_UNALLOC && n->backing) {
            rc = read_backing(n, gstart, glen, &bq, 0);
        } else if (kind == K_DATA) {
            rc = vbd_node_co_pread(e->file, host, buf, glen);
        }
    }
    if (rc < 0)
        goto out;
    if (q)
        vbd_iov_to_buf(q->iov, q->niov, qoff, buf + in, len);
    else
        memset(buf + in, 0, len);
    uint64_t at = e->file_end;
    if (e->compressed) {
        uLongf clen = compressBound((uLong)glen);
        uint64_t room = div_up(MARKER_BYTES + clen, SECTOR) * SECTOR;
        uint8_t *c = vbd_alloc_aligned(4096, room);
        memset(c, 0, room);
        if (compress(c + MARKER_BYTES, &clen, buf, (uLong)glen) != Z_OK) {
            free(c);
            rc = -EIO;
            goto out;
        }
        put_le64p(c, gstart / SECTOR - e->start / SECTOR);
        put_le32p(c + 8, (uint32_t)clen);
        room = div_up(MARKER_BYTES + clen, SECTOR) * SECTOR;
        if (at / SECTOR > UINT32_MAX - room / SECTOR) {
            free(c);
            rc = -ENOSPC;
            goto out;
        }
        rc = vbd_node_co_pwrite(e->file, at, c, room, 0);
        free(c);
        if (rc == 0)
            e->file_end = at + room;
    } else {
        if (at / SECTOR > UINT32_MAX - e->grain / SECTOR) {
            rc = -ENOSPC;
            goto out;
        }
        rc = vbd_node_co_pwrite(e->file, at, buf, e->grain, 0);
        if (rc == 0)
            e->file_end = at + e->grain;
    }
    if (rc == 0 && n->backing && kind == K_UNALLOC)
        rc = vbd_node_co_flush(e->file);
    if (rc == 0)
        rc = set_gte(e, gi, (uint32_t)(at / SECTOR));
out:
    free(buf);
    return rc;
}

/* A write (q NULL: zeroes) from off into one grain of a compressed
 * (streamOptimized) extent, under the lock; *done: its bytes. As QEMU
 * 7.2's vmdk: a grain is written once and whole (the disk's last grain up
 * to the disk's end). A grain that holds data is refused with EIO and
 * QEMU's line, a part of a grain with EINVAL; zeroes go to a zeroed grain
 * entry where the image has them (a whole grain), else they are a grain
 * of zeroes (what QEMU's generic fallback writes), so a later write there
 * is refused as QEMU refuses it. */
static int write_stream_grain(struct vbd_node *n, struct vmdk_extent *e, uint64_t off, uint64_t bytes,
                              struct vbd_qiov *q, size_t qoff, uint64_t *done)
{
    struct vmdk_state *s = n->opaque;
    uint64_t rel = off - e->start, in = rel % e->grain;
    uint64_t glen = e->bytes - (rel - in) < e->grain ? e->bytes - (rel - in) : e->grain;
    uint64_t len = glen - in < bytes ? glen - in : bytes;
    uint64_t run, host;
    int kind;
    *done = len;
    vbd_co_mutex_lock(&s->lock);
    int rc = lookup(n, e, off, len, &run, &kind, &host);
    if (rc < 0)
        goto out;
    if (kind == K_COMP || kind == K_DATA) {
        vbd_error_report("Could not write to allocated cluster for streamOptimized");
        rc = -EIO;
    } else if (in > 0 || len < glen) {
        rc = -EINVAL;
    } else if (!q && e->zero_grain && glen == e->grain) {
        uint64_t gi = rel / e->grain;
        if (kind != K_ZERO && !e->gd[gi / e->gtes])
            rc = alloc_gt(e, gi / e->gtes);
        if (rc == 0 && kind != K_ZERO)
            rc = set_gte(e, gi, GTE_ZEROED);
    } else if (!e->has_marker) {
        rc = -EINVAL; /* as QEMU: a deflated grain goes behind a marker or not at all */
    } else {
        rc = write_new_grain(n, e, off, len, kind, host, q, qoff);
    }
out:
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

static int vmdk_write(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    struct vmdk_state *s = n->opaque;
    int rc = 0;
    if (s->stream_ro)
        return -EROFS; /* appending grains would overwrite the footer: read-only, as VMware streams are */
    if (!s->cid_updated) {
        vbd_co_mutex_lock(&s->lock);
        rc = update_cid(n);
        vbd_co_mutex_unlock(&s->lock);
        if (rc < 0)
            return rc;
    }
    while (bytes) {
        struct vmdk_extent *e = find_extent(s, off);
        if (!e)
            return -EIO;
        uint64_t run, host;
        int kind;
        if (e->compressed) {
            if ((rc = write_stream_grain(n, e, off, bytes, q, qoff, &run)) < 0)
                return rc;
            off += run;
            qoff += run;
            bytes -= run;
            continue;
        }
        if ((rc = lookup(n, e, off, bytes, &run, &kind, &host)) < 0)
            return rc;
        uint64_t in = e->flat ? 0 : (off - e->start) % e->grain;
        bool zero_gte = !q && !e->flat && e->zero_grain && in == 0 && bytes >= e->grain &&
                        e->bytes - (off - e->start) >= e->grain;
        if (kind == K_DATA && !zero_gte) {
            if (q)
                rc = vbd_node_co_pwritev(e->file, host, run, q, qoff, 0);
            else
                rc = vbd_node_co_pwrite_zeroes(e->file, host, run, 0);
        } else {
            vbd_co_mutex_lock(&s->lock);
            /* another request may have allocated it meanwhile: look again, one grain */
            uint64_t cap = e->grain - in < bytes ? e->grain - in : bytes;
            rc = lookup(n, e, off, cap, &run, &kind, &host);
            if (rc == 0) {
                if (!q && kind == K_ZERO)
                    ; /* already zeroes */
                else if (!q && kind == K_UNALLOC && !n->backing)
                    ; /* reads as zeroes already */
                else if (zero_gte && run == e->grain) {
                    /* as qemu-img: a whole grain becomes a zeroed entry, its old data left behind */
                    uint64_t gi = (off - e->start) / e->grain;
                    if (!e->gd[gi / e->gtes])
                        rc = alloc_gt(e, gi / e->gtes);
                    if (rc == 0)
                        rc = set_gte(e, gi, GTE_ZEROED);
                } else if (kind == K_DATA)
                    run = 0; /* now allocated: written in place next round */
                else
                    rc = write_new_grain(n, e, off, run, kind, host, q, qoff);
            }
            vbd_co_mutex_unlock(&s->lock);
        }
        if (rc < 0)
            return rc;
        off += run;
        qoff += run;
        bytes -= run;
    }
    if (flags & VBD_REQ_FUA)
        rc = vbd_node_co_flush(n);
    return rc;
}

static int vmdk_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    return vmdk_write(n, off, bytes, q, qoff, flags);
}

static int vmdk_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    return vmdk_write(n, off, bytes, NULL, 0, flags & VBD_REQ_FUA);
}

static int vmdk_flush(struct vbd_node *n)
{
    struct vmdk_state *s = n->opaque;
    int rc = 0;
    for (unsigned i = 0; i < s->next && rc == 0; i++)
        if (s->ext[i].owned)
            rc = vbd_node_co_flush(s->ext[i].file);
    if (rc == 0)
        rc = vbd_node_co_flush(n->file);
    return rc;
}

static int vmdk_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                             uint64_t *map, struct vbd_node **file)
{
    struct vmdk_state *s = n->opaque;
    struct vmdk_extent *e = find_extent(s, off);
    if (!e)
        return -EIO;
    uint64_t host;
    int kind;
    int rc = lookup(n, e, off, bytes, pnum, &kind, &host);
    if (rc < 0)
        return rc;
    if (kind == K_UNALLOC)
        return !n->backing || off >= vbd_node_size(n->backing) ? VBD_BS_ZERO : 0;
    if (kind == K_ZERO)
        return VBD_BS_ZERO | VBD_BS_ALLOCATED;
    *file = e->file;
    if (kind == K_COMP)
        return VBD_BS_DATA | VBD_BS_ALLOCATED | VBD_BS_COMPRESSED;
    *map = host;
    int st = VBD_BS_DATA | VBD_BS_OFFSET_VALID | VBD_BS_ALLOCATED;
    if (e->flat && want_zero) {
        /* as qemu-img: holes of a flat extent's file read as zeroes */
        uint64_t fsize = vbd_node_size(e->file), fp = 0, fm = 0;
        struct vbd_node *ff = NULL;
        if (host >= fsize)
            return st | VBD_BS_ZERO;
        uint64_t l = fsize - host < *pnum ? fsize - host : *pnum;
        int fst = vbd_node_co_block_status(e->file, true, host, l, &fp, &fm, &ff);
        if (fst >= 0 && fp) {
            *pnum = fp;
            st |= fst & VBD_BS_ZERO;
        }
    }
    return st;
}

/* ---------- open ---------- */

static void free_extents(struct vmdk_state *s)
{
    for (unsigned i = 0; i < s->next; i++) {
        struct vmdk_extent *e = &s->ext[i];
        free(e->gd);
        free(e->rgd);
        free(e->meta);
        if (e->owned && e->file)
            vbd_node_unref(e->file);
    }
    free(s->ext);
    s->ext = NULL;
    s->next = 0;
}

static struct vmdk_extent *add_extent(struct vmdk_state *s, struct vbd_node *file, bool owned, uint64_t sectors)
{
    if (s->next % 16 == 0)
        s->ext = realloc(s->ext, (s->next + 16) * sizeof(*s->ext));
    struct vmdk_extent *e = &s->ext[s->next];
    memset(e, 0, sizeof(*e));
    e->file = file;
    e->owned = owned;
    e->start = s->next ? s->ext[s->next - 1].start + s->ext[s->next - 1].bytes : 0;
    e->bytes = sectors * SECTOR;
    s->next++;
    return e;
}

static int load_table(struct vbd_node *n, struct vmdk_extent *e, uint64_t off, uint32_t **out, const char *what,
                      struct vbd_error **err)
{
    uint64_t len = (uint64_t)e->gd_entries * 4, fsize = vbd_node_size(e->file);
    if (off > fsize || len > fsize - off) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': the %s lies past the end of '%s'", n->filename, what,
                       e->file->filename);
        return -EINVAL;
    }
    uint32_t *t = malloc(len ? len : 1);
    int rc = vbd_node_co_pread(e->file, off, t, len);
    if (rc < 0) {
        free(t);
        vbd_error_setf(err, -rc, "Could not read the %s from '%s': %s", what, e->file->filename, strerror(-rc));
        return rc;
    }
    for (uint64_t i = 0; i < e->gd_entries; i++) {
        t[i] = le32toh(t[i]);
        if (t[i] && (uint64_t)t[i] * SECTOR + gt_bytes(e) > fsize) {
            vbd_error_setf(err, EINVAL, "Could not open '%s': %s entry %" PRIu64 " points past the end of '%s'",
                           n->filename, what, i, e->file->filename);
            free(t);
            return -EINVAL;
        }
    }
    *out = t;
    return 0;
}

static int sparse_geometry(struct vbd_node *n, struct vmdk_extent *e, uint64_t capacity, uint64_t granularity,
                           uint32_t gtes, struct vbd_error **err)
{
    /* QEMU's checks in its order */
    if (gtes == 0 || granularity == 0) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': L1 entry size is invalid", n->filename);
        return -EINVAL;
    }
    if (granularity > MAX_GRAIN_SECTORS) {
        vbd_error_setf(err, EFBIG, "Could not open '%s': Invalid granularity, image may be corrupt", n->filename);
        return -EFBIG;
    }
    uint64_t per_gt = (uint64_t)gtes * granularity;
    uint64_t gd = div_up(capacity, per_gt);
    if (gd > MAX_GD_ENTRIES) {
        vbd_error_setf(err, EFBIG, "Could not open '%s': L1 size too big", n->filename);
        return -EFBIG;
    }
    e->grain = granularity * SECTOR;
    e->gtes = gtes;
    e->gd_entries = (uint32_t)gd;
    return 0;
}

static int open_sparse(struct vbd_node *n, struct vmdk_extent *e, const uint8_t *h, bool writable,
                       struct vbd_error **err)
{
    uint64_t fsize = vbd_node_size(e->file);
    int rc;
    if (get_le32p(h) == VMDK3_MAGIC) {
        /* ESX sparse: version, flags, disk sectors, granularity, GD sector, GD size */
        e->cowd = true;
        uint64_t cap = get_le32p(h + 12), gran = get_le32p(h + 16), gdo = get_le32p(h + 20), gds = get_le32p(h + 24);
        e->bytes = cap * SECTOR; /* the header's size, not the extent line's, as qemu-img */
        if ((rc = sparse_geometry(n, e, e->bytes / SECTOR, gran, 4096, err)) < 0)
            return rc;
        if (gds < e->gd_entries) {
            vbd_error_setf(err, EINVAL, "Could not open '%s': the grain directory of '%s' is too small", n->filename,
                           e->file->filename);
            return -EINVAL;
        }
        e->gd_off = gdo * SECTOR;
        snprintf(e->type, sizeof(e->type), "%s", e->type[0] ? e->type : "VMFSSPARSE");
        rc = load_table(n, e, e->gd_off, &e->gd, "grain directory", err);
        e->file_end = div_up(fsize, e->grain) * e->grain;
        return rc < 0 ? rc : build_meta(n, e, err);
    }
    uint32_t version = get_le32p(h + 4), flags = get_le32p(h + 8), gtes = get_le32p(h + 44);
    uint64_t capacity = get_le64p(h + 12), gran = get_le64p(h + 20), rgd = get_le64p(h + 48), gdo = get_le64p(h + 56);
    uint64_t grain_off = get_le64p(h + 64);
    uint16_t alg = (uint16_t)(h[77] | h[78] << 8);
    if (gdo == GD_AT_END) {
        /* streamOptimized written as a stream: the footer (a marker sector,
         * a header, an end-of-stream marker) holds the real header */
        uint8_t f[3 * SECTOR];
        if (fsize < 4 * SECTOR) {
            vbd_error_setf(err, EINVAL, "Could not open '%s': Invalid footer", n->filename);
            return -EINVAL;
        }
        if ((rc = vbd_node_co_pread(e->file, (fsize & ~(uint64_t)(SECTOR - 1)) - sizeof(f), f, sizeof(f))) < 0) {
            vbd_error_setf(err, -rc, "Could not open '%s': Failed to read footer", n->filename);
            return rc;
        }
        const uint8_t *fh = f + SECTOR, *eos = f + 2 * SECTOR;
        if (get_le32p(fh) != VMDK4_MAGIC || get_le32p(f + 8) != 0 || get_le32p(f + 12) != 3 || get_le64p(eos) != 0 || get_le32p(eos + 8) != 0 ||
            get_le32p(eos + 12) != 0) {
            vbd_error_setf(err, EINVAL, "Could not open '%s': Invalid footer", n->filename);
            return -EINVAL;
        }
        version = get_le32p(fh + 4);
        flags = get_le32p(fh + 8);
        gtes = get_le32p(fh + 44);
        capacity = get_le64p(fh + 12);
        gran = get_le64p(fh + 20);
        rgd = get_le64p(fh + 48);
        gdo = get_le64p(fh + 56);
        grain_off = get_le64p(fh + 64);
        alg = (uint16_t)(fh[77] | fh[78] << 8);
        e->gd_at_end = true;
    }
    e->compressed = alg == DEFLATE;
    if (version > 3) {
        vbd_error_setf(err, ENOTSUP, "Could not open '%s': Unsupported VMDK version %" PRIu32, n->filename, version);
        return -ENOTSUP;
    }
    if (version == 3 && writable && !e->compressed) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': VMDK version 3 must be read only", n->filename);
        return -EINVAL;
    }
    if (gtes > 512) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': L2 table size too big", n->filename);
        return -EINVAL;
    }
    if (capacity > VBD_MAX_REQUEST_END / SECTOR) {
        /* QEMU's words: the grain directory it would need is past its limit */
        vbd_error_setf(err, EFBIG, "Could not open '%s': L1 size too big", n->filename);
        return -EFBIG;
    }
    if (grain_off > fsize / SECTOR) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': File truncated, expecting at least %" PRIu64 " bytes",
                       n->filename, grain_off * SECTOR);
        return -EINVAL;
    }
    e->bytes = capacity * SECTOR; /* the header's size, not the extent line's, as qemu-img */
    e->data_start = grain_off * SECTOR;
    if ((rc = sparse_geometry(n, e, e->bytes / SECTOR, gran, gtes, err)) < 0)
        return rc;
    if (gdo > UINT64_MAX / SECTOR || ((flags & F_RGD) && rgd > UINT64_MAX / SECTOR)) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': the grain directory lies past the end of '%s'", n->filename,
                       e->file->filename);
        return -EINVAL;
    }
    e->has_marker = flags & F_MARKER;
    e->zero_grain = flags & F_ZERO_GRAIN;
    e->gd_off = gdo * SECTOR;
    if ((rc = load_table(n, e, e->gd_off, &e->gd, "grain directory", err)) < 0)
        return rc;
    if (flags & F_RGD) {
        e->rgd_off = rgd * SECTOR;
        if ((rc = load_table(n, e, e->rgd_off, &e->rgd, "redundant grain directory", err)) < 0)
            return rc;
    }
    e->file_end = e->compressed ? div_up(fsize, SECTOR) * SECTOR : div_up(fsize, e->grain) * e->grain;
    return build_meta(n, e, err);
}

/* Directory of the descriptor's file name (with the trailing '/'), "" for none. */
static void dir_of(const char *path, char *out, size_t outlen)
{
    const char *sl = strrchr(path, '/');
    size_t l = sl ? (size_t)(sl - path) + 1 : 0;
    if (l >= outlen)
        l = 0;
    memcpy(out, path, l);
    out[l] = 0;
}

/* The descriptor's file name as a path: that of the node under the filters
 * the descriptor may sit on (blkdebug, throttle, copy-on-read name their
 * node "blkdebug::PATH" or after their child). Extents are found beside
 * it, as QEMU finds them beside the descriptor's file. */
static const char *descriptor_path(const struct vbd_node *n)
{
    const struct vbd_node *f = n->file;
    while (f->drv->kind == VBD_DRV_FILTER && f->file && f->file != f)
        f = f->file;
    return f->filename;
}

/* An extent file name may only name a file in the descriptor's own
 * directory tree: no absolute paths, no "..", no symlink leading out. */
static int check_extent_path(struct vbd_node *n, const char *dir, const char *fname, const char *full,
                             struct vbd_error **err)
{
    if (fname[0] == '/' || !strcmp(fname, "..") || !strncmp(fname, "../", 3) || strstr(fname, "/../") ||
        (strlen(fname) >= 3 && !strcmp(fname + strlen(fname) - 3, "/.."))) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': extent file '%s' lies outside the descriptor's directory",
                       n->filename, fname);
        return -EINVAL;
    }
    char rd[PATH_MAX], rf[PATH_MAX];
    if (!realpath(dir[0] ? dir : ".", rd))
        return 0; /* not a local path: opening it gives the error */
    if (!realpath(full, rf))
        return 0;
    size_t l = strlen(rd);
    if (strncmp(rf, rd, l) || (rf[l] != '/' && !(l == 1 && rd[0] == '/'))) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': extent file '%s' lies outside the descriptor's directory",
                       n->filename, fname);
        return -EINVAL;
    }
    struct stat a, b;
    char rdesc[PATH_MAX];
    if (realpath(descriptor_path(n), rdesc) && !strcmp(rdesc, rf)) {
        vbd_error_setf(err, ELOOP, "Could not open '%s': extent file '%s' is the descriptor itself", n->filename, fname);
        return -ELOOP;
    }
    if (stat(descriptor_path(n), &a) == 0 && stat(full, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
        vbd_error_setf(err, ELOOP, "Could not open '%s': extent file '%s' is the descriptor itself", n->filename, fname);
        return -ELOOP;
    }
    return 0;
}

static int parse_extents(struct vbd_node *n, const char *desc, unsigned flags, struct vbd_error **err)
{
    struct vmdk_state *s = n->opaque;
    char dir[4096];
    dir_of(descriptor_path(n), dir, sizeof(dir));
    bool writable = flags & VBD_OPEN_RDWR;
    for (const char *p = desc; *p;) {
        const char *eol = strchr(p, '\n');
        size_t ll = eol ? (size_t)(eol - p) : strlen(p);
        char line[1100];
        const char *next = eol ? eol + 1 : p + ll;
        if (ll >= sizeof(line)) {
            p = next;
            continue;
        }
        memcpy(line, p, ll);
        line[ll] = 0;
        p = next;
        char access[11], type[11], fname[512];
        int64_t sectors = 0, flat_off = -1;
        int m = sscanf(line, "%10s %" SCNd64 " %10s \"%511[^\n\r\"]\" %" SCNd64, access, &sectors, type, fname, &flat_off);
        if (m < 4 || strcmp(access, "RW"))
            continue;
        bool bad = false;
        if (!strcmp(type, "FLAT"))
            bad = m != 5 || flat_off < 0;
        else if (!strcmp(type, "VMFS")) {
            bad = m != 4;
            flat_off = 0;
        } else
            bad = m != 4;
        if (bad) {
            vbd_error_setf(err, EINVAL, "Could not open '%s': Invalid extent line: %s", n->filename, line);
            return -EINVAL;
        }
        if (sectors <= 0 || (strcmp(type, "FLAT") && strcmp(type, "SPARSE") && strcmp(type, "VMFS") &&
                             strcmp(type, "VMFSSPARSE") && strcmp(type, "SESPARSE")))
            continue;
        if (!strcmp(type, "SESPARSE")) {
            vbd_error_setf(err, ENOTSUP, "Could not open '%s': seSparse extents are not supported", n->filename);
            return -ENOTSUP;
        }
        uint64_t start = s->next ? s->ext[s->next - 1].start + s->ext[s->next - 1].bytes : 0;
        if ((uint64_t)sectors > (VBD_MAX_REQUEST_END - start) / SECTOR || s->next >= MAX_EXTENTS ||
            (flat_off > 0 && (uint64_t)flat_off > UINT64_MAX / SECTOR)) {
            vbd_error_setf(err, EFBIG, "Could not open '%s': the extents are too large", n->filename);
            return -EFBIG;
        }
        char full[4096 + 512];
        snprintf(full, sizeof(full), "%s%s", dir, fname);
        int rc = check_extent_path(n, dir, fname, full, err);
        if (rc < 0)
            return rc;
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "driver", json_object_new_string("file"));
        struct json_object *lk = NULL;
        if (n->file->options && json_object_object_get_ex(n->file->options, "locking", &lk) && lk)
            json_object_object_add(o, "locking", json_object_get(lk));
        /* a sparse extent holds metadata (grain tables), a flat one data
         * only: the image locks as QEMU's extent roles */
        bool meta = strcmp(type, "FLAT") && strcmp(type, "VMFS");
        struct vbd_node *f = vbd_open(full, o, (flags & (VBD_OPEN_RDWR | VBD_OPEN_NOCACHE | VBD_OPEN_NO_FLUSH |
                                                         VBD_OPEN_FORCE_SHARE | VBD_OPEN_AIO_THREADS |
                                                         VBD_OPEN_NO_SHARE)) |
                                                   VBD_OPEN_PROTOCOL | (meta ? VBD_OPEN_META_PARENT : 0),
                                      err);
        if (!f)
            return -EINVAL;
        struct vmdk_extent *e = add_extent(s, f, true, (uint64_t)sectors);
        snprintf(e->type, sizeof(e->type), "%s", type);
        if (!strcmp(type, "FLAT") || !strcmp(type, "VMFS")) {
            e->flat = true;
            e->flat_off = (uint64_t)flat_off * SECTOR;
            continue;
        }
        uint8_t h[SECTOR];
        if (vbd_node_size(f) < SECTOR || vbd_node_co_pread(f, 0, h, SECTOR) < 0 ||
            (get_le32p(h) != VMDK4_MAGIC && get_le32p(h) != VMDK3_MAGIC)) {
            vbd_error_setf(err, EINVAL, "Could not open '%s': extent '%s' is not in VMDK format", n->filename, fname);
            return -EINVAL;
        }
        if (get_le32p(h) == VMDK4_MAGIC && get_le64p(h + 12) == 0 && get_le64p(h + 28) != 0) {
            vbd_error_setf(err, ELOOP, "Could not open '%s': extent '%s' is itself a descriptor", n->filename, fname);
            return -ELOOP;
        }
        if ((rc = open_sparse(n, e, h, writable, err)) < 0)
            return rc;
        if (e->bytes > VBD_MAX_REQUEST_END - e->start) {
            vbd_error_setf(err, EFBIG, "Could not open '%s': the extents are too large", n->filename);
            return -EFBIG;
        }
    }
    if (!s->next) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': the descriptor names no extent", n->filename);
        return -EINVAL;
    }
    return 0;
}

static char *read_desc(struct vbd_node *n, uint64_t off, uint64_t max, struct vbd_error **err)
{
    uint64_t fsize = vbd_node_size(n->file);
    uint64_t len = off < fsize ? fsize - off : 0;
    if (len > max)
        len = max;
    char *d = malloc(len + 1);
    int rc = len ? vbd_node_co_pread(n->file, off, d, len) : 0;
    if (rc < 0) {
        free(d);
        vbd_error_setf(err, -rc, "Could not open '%s': cannot read the descriptor: %s", n->filename, strerror(-rc));
        return NULL;
    }
    d[len] = 0;
    return d;
}

static int open_desc_file(struct vbd_node *n, unsigned flags, struct vbd_error **err)
{
    struct vmdk_state *s = n->opaque;
    if (!desc_get(s->desc, "createType", s->create_type, sizeof(s->create_type))) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': invalid VMDK image descriptor", n->filename);
        return -EINVAL;
    }
    static const char *const ok[] = {"monolithicFlat", "vmfs", "vmfsSparse", "twoGbMaxExtentSparse",
                                     "twoGbMaxExtentFlat", NULL};
    bool found = false;
    for (int i = 0; ok[i]; i++)
        found |= !strcmp(ok[i], s->create_type);
    if (!found) {
        vbd_error_setf(err, ENOTSUP, "Could not open '%s': Unsupported image type '%s'", n->filename, s->create_type);
        return -ENOTSUP;
    }
    return parse_extents(n, s->desc, flags, err);
}

static int vmdk_open_inner(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct vmdk_state *s = n->opaque;
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file)
        return -EINVAL;
    s->read_only = !(flags & VBD_OPEN_RDWR);
    uint64_t fsize = vbd_node_size(n->file);
    if (fsize < 4) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': File is too small, not a valid image", n->filename);
        return -EINVAL;
    }
    uint8_t h[SECTOR] = {0};
    int rc = vbd_node_co_pread(n->file, 0, h, fsize < SECTOR ? fsize : SECTOR);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Could not open '%s': Could not read from file: %s", n->filename, strerror(-rc));
        return rc;
    }
    uint32_t magic = get_le32p(h);
    if (magic == VMDK4_MAGIC || magic == VMDK3_MAGIC) {
        if (fsize < SECTOR) {
            vbd_error_setf(err, EINVAL, "Could not open '%s': File truncated, the header is incomplete", n->filename);
            return -EINVAL;
        }
        uint64_t dofs = magic == VMDK4_MAGIC ? get_le64p(h + 28) : 0, dsz = magic == VMDK4_MAGIC ? get_le64p(h + 36) : 0;
        if (magic == VMDK4_MAGIC && get_le64p(h + 12) == 0 && dofs) {
            /* a sparse header that only carries a descriptor */
            if (dofs > fsize / SECTOR) {
                vbd_error_setf(err, EINVAL, "Could not open '%s': the descriptor lies past the end of the file", n->filename);
                return -EINVAL;
            }
            if (!(s->desc = read_desc(n, dofs * SECTOR, DESC_MAX, err)))
                return -EIO;
            s->desc_off = dofs * SECTOR;
            s->desc_room = dsz * SECTOR < DESC_MAX ? dsz * SECTOR : DESC_MAX;
            if ((rc = open_desc_file(n, flags, err)) < 0)
                return rc;
        } else {
            struct vmdk_extent *e = add_extent(s, n->file, false, 0);
            if ((rc = open_sparse(n, e, h, flags & VBD_OPEN_RDWR, err)) < 0)
                return rc;
            snprintf(s->create_type, sizeof(s->create_type), "%s",
                     e->compressed ? "streamOptimized" : e->cowd ? "vmfsSparse" : "monolithicSparse");
            if (magic == VMDK4_MAGIC && dofs && dofs <= fsize / SECTOR) {
                s->desc_off = dofs * SECTOR;
                s->desc_room = dsz * SECTOR < DESC_MAX ? dsz * SECTOR : DESC_MAX;
                if (!s->desc_room)
                    s->desc_room = SECTOR;
                if (!(s->desc = read_desc(n, s->desc_off, s->desc_room, err)))
                    return -EIO;
                s->desc_room = desc_room_of(e, s->desc_off, s->desc_room);
            }
        }
    } else {
        if (!(s->desc = read_desc(n, 0, DESC_MAX, err)))
            return -EIO;
        if ((rc = open_desc_file(n, flags, err)) < 0)
            return rc;
    }
    if (!s->desc || !desc_get_hex32(s->desc, "CID", &s->cid) || !desc_get_hex32(s->desc, "parentCID", &s->parent_cid)) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': the descriptor has no valid CID/parentCID", n->filename);
        return -EINVAL;
    }
    char hint[4096];
    if (desc_get(s->desc, "parentFileNameHint", hint, sizeof(hint))) {
        snprintf(n->backing_file, sizeof(n->backing_file), "%s", hint);
        snprintf(n->backing_format, sizeof(n->backing_format), "vmdk");
    } else if (strstr(s->desc, "parentFileNameHint")) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': invalid parentFileNameHint", n->filename);
        return -EINVAL;
    }
    for (unsigned i = 0; i < s->next; i++)
        s->stream_ro |= s->ext[i].gd_at_end;
    n->size = s->next ? s->ext[s->next - 1].start + s->ext[s->next - 1].bytes : 0;
    n->bl.request_alignment = 1;
    n->bl.min_mem_alignment = n->file->bl.min_mem_alignment;
    for (unsigned i = 0; i < s->next; i++) {
        if (s->ext[i].file->bl.min_mem_alignment > n->bl.min_mem_alignment)
            n->bl.min_mem_alignment = s->ext[i].file->bl.min_mem_alignment;
        if (!s->ext[i].flat && s->ext[i].grain > n->bl.opt_transfer)
            n->bl.opt_transfer = (uint32_t)s->ext[i].grain;
    }
    n->supported_write_flags = VBD_REQ_FUA | VBD_REQ_COMPRESSED;
    n->supported_zero_flags = VBD_REQ_MAY_UNMAP | VBD_REQ_FUA;
    return vbd_open_backing(n, opts, flags, err);
}

static void vmdk_close(struct vbd_node *n)
{
    struct vmdk_state *s = n->opaque;
    free_extents(s);
    free(s->desc);
    s->desc = NULL;
}

static int vmdk_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    int rc = vmdk_open_inner(n, opts, flags, err);
    if (rc < 0)
        vmdk_close(n);
    return rc;
}

static int vmdk_reopen_rw(struct vbd_node *n, bool rw, struct vbd_error **err)
{
    struct vmdk_state *s = n->opaque;
    if (rw) {
        for (unsigned i = 0; i < s->next; i++) {
            if (s->ext[i].owned || s->ext[i].gd_at_end) {
                vbd_error_setf(err, ENOTSUP, "vmdk: '%s' cannot be switched to read-write", n->filename);
                return -ENOTSUP;
            }
        }
    }
    s->read_only = !rw;
    return 0;
}

/* ---------- info, check ---------- */

static int vmdk_get_info(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err)
{
    struct vmdk_state *s = n->opaque;
    (void)err;
    bool same = true;
    for (unsigned i = 1; i < s->next; i++) {
        const struct vmdk_extent *a = &s->ext[0], *b = &s->ext[i];
        same &= a->flat == b->flat && a->compressed == b->compressed && (a->flat || a->grain == b->grain);
    }
    if (same && s->next && !s->ext[0].flat)
        info->cluster_size = (uint32_t)s->ext[0].grain;
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "cid", json_object_new_int64(s->cid));
    json_object_object_add(d, "parent-cid", json_object_new_int64(s->parent_cid));
    json_object_object_add(d, "create-type", json_object_new_string(s->create_type));
    struct json_object *a = json_object_new_array();
    for (unsigned i = 0; i < s->next; i++) {
        const struct vmdk_extent *e = &s->ext[i];
        struct json_object *x = json_object_new_object();
        if (e->compressed)
            json_object_object_add(x, "compressed", json_object_new_boolean(1));
        json_object_object_add(x, "virtual-size", json_object_new_int64((int64_t)e->bytes));
        json_object_object_add(x, "filename", json_object_new_string(e->file->filename));
        if (!e->flat)
            json_object_object_add(x, "cluster-size", json_object_new_int64((int64_t)e->grain));
        json_object_object_add(x, "format", json_object_new_string(e->type));
        json_object_array_add(a, x);
    }
    json_object_object_add(d, "extents", a);
    struct json_object *fs = json_object_new_object();
    json_object_object_add(fs, "type", json_object_new_string("vmdk"));
    json_object_object_add(fs, "data", d);
    info->format_specific = fs;
    info->needs_compressed_writes = s->next && s->ext[0].compressed;
    return 0;
}

static int64_t vmdk_allocated_size(struct vbd_node *n)
{
    struct vmdk_state *s = n->opaque;
    int64_t total = vbd_node_get_allocated_size(n->file);
    if (total < 0)
        return total;
    for (unsigned i = 0; i < s->next; i++) {
        if (!s->ext[i].owned)
            continue;
        int64_t r = vbd_node_get_allocated_size(s->ext[i].file);
        if (r < 0)
            return r;
        total += r;
    }
    return total;
}

/* As qemu-img: every allocated grain must start inside its file; the
 * first one that does not ends the check with one corruption and fails it
 * (qemu-img: "Check failed: Invalid argument", or "Operation not
 * permitted" when a table cannot be read: its internal -1). No cluster
 * counts: qemu-img reports none for vmdk. */
static int vmdk_co_check(struct vbd_node *n, struct vbd_check_result *res, unsigned fix, struct vbd_error **err)
{
    struct vmdk_state *s = n->opaque;
    if (fix) /* as qemu's: -r is 'does not support checks' (exit 63) */
        return -ENOTSUP;
    for (unsigned i = 0; i < s->next; i++) {
        struct vmdk_extent *e = &s->ext[i];
        if (e->flat)
            continue;
        uint64_t fsize = vbd_node_size(e->file);
        uint32_t *t = malloc(gt_bytes(e));
        for (uint64_t gdi = 0; gdi < e->gd_entries; gdi++) {
            uint64_t gt = (uint64_t)e->gd[gdi] * SECTOR;
            if (!gt)
                continue;
            uint64_t first = gdi * e->gtes, ngr = div_up(e->bytes, e->grain);
            uint64_t cnt = ngr - first < e->gtes ? ngr - first : e->gtes;
            int rc = gt + cnt * 4 > fsize ? -EINVAL : vbd_node_co_pread(e->file, gt, t, cnt * 4);
            if (rc < 0) {
                fprintf(stderr, "ERROR: could not get cluster_offset for sector %" PRIu64 "\n",
                        (e->start + first * e->grain) / SECTOR);
                res->corruptions++;
                free(t);
                return -EPERM;
            }
            for (uint64_t j = 0; j < cnt; j++) {
                uint32_t v = le32toh(t[j]);
                if (!v || (v == GTE_ZEROED && e->zero_grain))
                    continue;
                if ((uint64_t)v * SECTOR >= fsize) {
                    fprintf(stderr, "ERROR: cluster offset for sector %" PRIu64 " points after EOF\n",
                            (e->start + (first + j) * e->grain) / SECTOR);
                    res->corruptions++;
                    free(t);
                    return -EINVAL;
                }
            }
        }
        free(t);
    }
    return 0;
}

static const struct vbd_driver vmdk_driver = {
    .name = "vmdk",
    .kind = VBD_DRV_FORMAT,
    .caps = VBD_DRV_CAP_COMPRESSED_WRITES,
    .state_size = sizeof(struct vmdk_state),
    .probe = vmdk_probe,
    .open = vmdk_open,
    .close = vmdk_close,
    .co_preadv = vmdk_preadv,
    .co_pwritev = vmdk_pwritev,
    .co_pwrite_zeroes = vmdk_pwrite_zeroes,
    .co_flush = vmdk_flush,
    .co_block_status = vmdk_block_status,
    .get_allocated_size = vmdk_allocated_size,
    .get_info = vmdk_get_info,
    .co_check = vmdk_co_check,
    .create_opts = vmdk_create_opts,
    .co_create = vmdk_create,
    .measure = vmdk_measure,
    .reopen_rw = vmdk_reopen_rw,
};
VBD_DRIVER_REGISTER(vmdk, vmdk_driver);
