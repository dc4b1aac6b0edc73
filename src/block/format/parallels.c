/* SPDX-License-Identifier: MIT */
/* Format driver "parallels": Parallels/Virtuozzo expanding images (a
 * 64-byte header, a block allocation table of 32-bit entries, then the
 * clusters in allocation order), read and written as qemu-img does. */
#include "vbd/block.h"
#include "vbd/bswap.h"
#include "vbd/error.h"
#include "vbd/options.h"

#include <endian.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PRL_MAGIC_V1 "WithoutFreeSpace" /* BAT entries count sectors */
#define PRL_MAGIC_V2 "WithouFreSpacExt" /* BAT entries count clusters */
#define PRL_VERSION 2
#define PRL_INUSE_MAGIC 0x746F6E59u
#define PRL_HEADER_SIZE 64
#define PRL_DEFAULT_CLUSTER 1048576u
/* QEMU refuses clusters beyond this many sectors ("Too big cluster") */
#define PRL_MAX_TRACKS (INT32_MAX / 513)

struct parallels_state {
    struct vbd_node *n;
    uint32_t *bat;          /* little-endian, as on disk: written back without a copy */
    uint32_t bat_entries;
    uint64_t cluster_size;
    uint64_t off_multiplier; /* bytes per unit of a BAT entry */
    uint64_t data_end;      /* next cluster is allocated here */
    uint64_t data_off;      /* where the data area starts: the header and BAT are below */
    uint8_t header[PRL_HEADER_SIZE];
    bool writable;
    bool unclean;           /* the in-use flag was set when we opened it */
    bool bat_dirty;
    uint32_t dirty_lo, dirty_hi; /* BAT entries [lo, hi) not yet on disk */
    struct vbd_co_mutex alloc_lock;
};


static int parallels_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < PRL_HEADER_SIZE)
        return 0;
    if ((!memcmp(buf, PRL_MAGIC_V1, 16) || !memcmp(buf, PRL_MAGIC_V2, 16)) && get_le32p(buf + 16) == PRL_VERSION)
        return 100;
    return 0;
}

/* Host byte offset of cluster idx's data, 0 if unallocated. */
static uint64_t cluster_host_offset(const struct parallels_state *s, uint64_t idx)
{
    if (idx >= s->bat_entries)
        return 0;
    return (uint64_t)le32toh(s->bat[idx]) * s->off_multiplier;
}

static int write_header_inuse(struct parallels_state *s, bool inuse)
{
    put_le32p(s->header + 44, inuse ? PRL_INUSE_MAGIC : 0);
    int rc = vbd_node_co_pwrite(s->n->file, 0, s->header, PRL_HEADER_SIZE, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(s->n->file);
    return rc;
}

/* BAT entries reach the disk only after the data they point to is stable
 * (the flush before writing them), so a crash never leaves an entry
 * pointing at unwritten data. Called with alloc_lock held. */
static int write_dirty_bat(struct parallels_state *s)
{
    if (!s->bat_dirty)
        return 0;
    int rc = vbd_node_co_flush(s->n->file);
    if (rc < 0)
        return rc;
    uint32_t lo = s->dirty_lo, hi = s->dirty_hi;
    rc = vbd_node_co_pwrite(s->n->file, PRL_HEADER_SIZE + (uint64_t)lo * 4, s->bat + lo, (uint64_t)(hi - lo) * 4, 0);
    if (rc == 0)
        s->bat_dirty = false;
    return rc;
}

/* BAT entry i changed in memory: it goes to disk with the next write_dirty_bat. */
static void mark_bat_dirty(struct parallels_state *s, uint32_t i)
{
    if (!s->bat_dirty || i < s->dirty_lo)
        s->dirty_lo = i;
    if (!s->bat_dirty || i + 1 > s->dirty_hi)
        s->dirty_hi = i + 1;
    s->bat_dirty = true;
}

/* BAT entries whose clusters overlap in the file (the same cluster named
 * twice; in version 1 images, whose entries count sectors, also clusters
 * that half overlap). A write through one of them changes what the other
 * guest block reads. QEMU 7.2 neither checks nor refuses such an image
 * (newer QEMU repairs it at a read-write open). */
struct shared_clusters {
    uint64_t *dup; /* a bit per BAT entry that overlaps one before it (NULL: none) */
    uint32_t count;
    uint32_t first, first_owner; /* the lowest such entry and the entry whose cluster it overlaps */
};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int mark_shared(const struct parallels_state *s, struct shared_clusters *sh, uint32_t idx, uint32_t owner)
{
    if (!sh->dup && !(sh->dup = calloc(((size_t)s->bat_entries + 63) / 64, sizeof(uint64_t))))
        return -ENOMEM;
    sh->dup[idx / 64] |= 1ull << (idx % 64);
    if (!sh->count++ || idx < sh->first) {
        sh->first = idx;
        sh->first_owner = owner;
    }
    return 0;
}

/* Version 2 entries count whole clusters: two overlap only when equal. One
 * bit per cluster of the file, the BAT in order (a bitmap, not a sort: a
 * read-write open of an image of 2^20 clusters took 0.5 s more sorted,
 * under ASan). */
static int find_equal_entries(const struct parallels_state *s, uint64_t limit, struct shared_clusters *sh)
{
    uint64_t nbits = limit / s->cluster_size + 1;
    uint64_t *seen = calloc((size_t)((nbits + 63) / 64), sizeof(uint64_t));
    if (!seen)
        return -ENOMEM;
    int rc = 0;
    for (uint32_t i = 0; i < s->bat_entries && rc == 0; i++) {
        uint32_t v = le32toh(s->bat[i]);
        if (!v || (uint64_t)v * s->cluster_size > limit)
            continue;
        if (!(seen[v / 64] & (1ull << (v % 64)))) {
            seen[v / 64] |= 1ull << (v % 64);
            continue;
        }
        uint32_t owner = 0;
        while (!sh->count && s->bat[owner] != s->bat[i]) /* for the first only: the first entry on it */
            owner++;
        rc = mark_shared(s, sh, i, owner);
    }
    free(seen);
    return rc;
}

/* Fills *sh for the entries whose clusters start at or before limit (past
 * it: check's "outside image"). Of the entries that overlap, the one
 * lowest in the file keeps its cluster (of those on the same cluster, the
 * lowest entry: the one QEMU keeps); the others are marked. */
static int find_shared_clusters(const struct parallels_state *s, uint64_t limit, struct shared_clusters *sh)
{
    *sh = (struct shared_clusters){0};
    if (s->off_multiplier == s->cluster_size) {
        int rc = find_equal_entries(s, limit, sh);
        if (rc < 0)
            free(sh->dup);
        return rc;
    }
    /* version 1: entries count sectors, clusters can half overlap; sorted by offset */
    size_t n = 0;
    for (uint32_t i = 0; i < s->bat_entries; i++)
        if (s->bat[i] && cluster_host_offset(s, i) <= limit)
            n++;
    if (n < 2)
        return 0;
    /* the entry's value above its index: sorted, in file order */
    uint64_t *keys = malloc(n * sizeof(*keys));
    if (!keys)
        return -ENOMEM;
    n = 0;
    for (uint32_t i = 0; i < s->bat_entries; i++)
        if (s->bat[i] && cluster_host_offset(s, i) <= limit)
            keys[n++] = (uint64_t)le32toh(s->bat[i]) << 32 | i;
    qsort(keys, n, sizeof(*keys), cmp_u64);
    uint64_t end = 0;
    uint32_t owner = 0;
    for (size_t k = 0; k < n; k++) {
        uint32_t idx = (uint32_t)keys[k];
        uint64_t off = (keys[k] >> 32) * s->off_multiplier;
        if (off >= end) {
            end = off + s->cluster_size;
            owner = idx;
            continue;
        }
        if (mark_shared(s, sh, idx, owner) < 0) {
            free(keys);
            free(sh->dup);
            return -ENOMEM;
        }
    }
    free(keys);
    return 0;
}

static int open_image(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct parallels_state *s = n->opaque;
    s->n = n;
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file)
        return -EINVAL;
    const char *name = n->file->filename;
    uint64_t fsize = n->file->size;
    uint8_t *h = s->header;
    if (fsize < PRL_HEADER_SIZE || vbd_node_co_pread(n->file, 0, h, PRL_HEADER_SIZE) < 0) {
        vbd_error_setf(err, EINVAL, "Could not read the parallels header of '%s'", name);
        return -EINVAL;
    }
    if (get_le32p(h + 16) != PRL_VERSION || (memcmp(h, PRL_MAGIC_V1, 16) && memcmp(h, PRL_MAGIC_V2, 16))) {
        /* QEMU's words and order, for each check it makes too */
        vbd_error_setf(err, EINVAL, "Image not in Parallels format");
        return -EINVAL;
    }
    bool v1 = !memcmp(h, PRL_MAGIC_V1, 16);
    uint32_t tracks = get_le32p(h + 28);
    if (tracks == 0) {
        vbd_error_setf(err, EINVAL, "Invalid image: Zero sectors per track");
        return -EINVAL;
    }
    if (tracks > PRL_MAX_TRACKS) {
        vbd_error_setf(err, EFBIG, "Invalid image: Too big cluster");
        return -EFBIG;
    }
    s->cluster_size = (uint64_t)tracks * 512;
    s->off_multiplier = v1 ? 512 : s->cluster_size;
    s->bat_entries = get_le32p(h + 32);
    if (s->bat_entries > INT32_MAX / 4) {
        vbd_error_setf(err, EFBIG, "Catalog too large");
        return -EFBIG;
    }
    uint64_t nb_sectors = get_le64p(h + 36);
    if (v1)
        nb_sectors &= 0xffffffffu;
    if (nb_sectors > VBD_MAX_REQUEST_END / 512) {
        /* QEMU's words: its block layer's, for a size past INT64_MAX */
        vbd_error_setf(err, EFBIG, "Could not refresh total sector count: File too large");
        return -EFBIG;
    }
    uint64_t bat_end = PRL_HEADER_SIZE + (uint64_t)s->bat_entries * 4;
    if (bat_end > fsize) {
        vbd_error_setf(err, EINVAL, "Invalid parallels image '%s': BAT (bat_entries %u) reaches past the end of the file",
                       name, s->bat_entries);
        return -EINVAL;
    }
    uint64_t data_off = (uint64_t)get_le32p(h + 48) * 512;
    if (data_off == 0)
        data_off = (bat_end + 511) & ~511ull;
    if (data_off < bat_end || data_off > fsize) {
        vbd_error_setf(err, EINVAL, "Invalid parallels image '%s': data_off %llu outside [end of BAT, file size]", name,
                       (unsigned long long)data_off);
        return -EINVAL;
    }
    s->bat = malloc(s->bat_entries ? (size_t)s->bat_entries * 4 : 4);
    if (!s->bat) {
        vbd_error_setf(err, ENOMEM, "Could not allocate the parallels BAT of '%s'", name);
        return -ENOMEM;
    }
    if (s->bat_entries && vbd_node_co_pread(n->file, PRL_HEADER_SIZE, s->bat, (uint64_t)s->bat_entries * 4) < 0) {
        vbd_error_setf(err, EIO, "Could not read the parallels BAT of '%s'", name);
        return -EIO;
    }
    /* the next cluster goes after the last one in use, as in QEMU */
    s->data_end = data_off;
    s->data_off = data_off;
    for (uint32_t i = 0; i < s->bat_entries; i++) {
        uint64_t off = cluster_host_offset(s, i);
        if (!off)
            continue;
        if (off < data_off || off > fsize || fsize - off < s->cluster_size) {
            /* a short last cluster reads as zeroes past EOF; check reports
             * clusters past the end of the file (and -r drops them) */
            bool short_last = off >= data_off && off < fsize && !(flags & VBD_OPEN_RDWR);
            if (!short_last && !(flags & VBD_OPEN_CHECK)) {
                vbd_error_setf(err, EINVAL,
                               "Invalid parallels image '%s': BAT entry %u (offset %llu) outside the data area of the file",
                               name, i, (unsigned long long)off);
                return -EINVAL;
            }
            if (off > fsize)
                continue;
        }
        /* every cluster in the file, also those check finds wrong: a
         * cluster check allocates must not land on any of them */
        if (off + s->cluster_size > s->data_end)
            s->data_end = off + s->cluster_size;
    }
    n->size = nb_sectors * 512;
    n->bl.request_alignment = 1;
    n->bl.min_mem_alignment = n->file->bl.min_mem_alignment;
    s->writable = (flags & VBD_OPEN_RDWR) != 0;
    bool unclean = get_le32p(h + 44) == PRL_INUSE_MAGIC;
    s->unclean = unclean;
    if (s->writable) {
        /* a writer that died left the BAT possibly inconsistent: QEMU 7.2
         * asks for a check before it writes again */
        if (unclean && !(flags & VBD_OPEN_CHECK)) {
            vbd_error_setf(err, EACCES, "parallels: Image was not closed correctly; cannot be opened read/write");
            return -EACCES;
        }
        if (!(flags & VBD_OPEN_CHECK)) {
            struct shared_clusters sh;
            if (find_shared_clusters(s, fsize, &sh) < 0) {
                vbd_error_setf(err, ENOMEM, "Could not check the parallels BAT of '%s'", name);
                return -ENOMEM;
            }
            free(sh.dup);
            if (sh.count) {
                vbd_error_setf(err, EINVAL,
                               "parallels: Image '%s' has BAT entries %u and %u that point into the same cluster (offset %llu); "
                               "cannot be opened read/write (vbd-img check -r all repairs it)",
                               name, sh.first_owner, sh.first, (unsigned long long)cluster_host_offset(s, sh.first));
                return -EINVAL;
            }
        }
        if (s->data_end / s->off_multiplier >= UINT32_MAX) {
            vbd_error_setf(err, EFBIG, "Invalid parallels image '%s': too large to be written", name);
            return -EFBIG;
        }
        int rc = write_header_inuse(s, true);
        if (rc < 0) {
            vbd_error_setf(err, -rc, "Could not mark the parallels image '%s' in use: %s", name, strerror(-rc));
            return rc;
        }
    }
    return 0;
}

/* close is not called when open fails: nothing of a half-open image stays */
static int parallels_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct parallels_state *s = n->opaque;
    int rc = open_image(n, opts, flags, err);
    if (rc < 0) {
        free(s->bat);
        s->bat = NULL;
        s->writable = false;
    }
    return rc;
}

static void close_co(void *arg)
{
    struct parallels_state *s = arg;
    vbd_co_mutex_lock(&s->alloc_lock);
    int rc = write_dirty_bat(s);
    if (rc == 0)
        rc = vbd_node_co_flush(s->n->file);
    if (rc == 0)
        write_header_inuse(s, false); /* left in use on failure: the next writer must check */
    vbd_co_mutex_unlock(&s->alloc_lock);
}

static void parallels_close(struct vbd_node *n)
{
    struct parallels_state *s = n->opaque;
    if (s->writable && s->bat) {
        if (vbd_in_co())
            close_co(s);
        else
            vbd_co_run_sync(close_co, s);
    }
    free(s->bat);
    s->bat = NULL;
}

static int parallels_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                            unsigned flags)
{
    struct parallels_state *s = n->opaque;
    (void)flags;
    while (bytes) {
        uint64_t idx = off / s->cluster_size, in = off % s->cluster_size;
        uint64_t len = s->cluster_size - in < bytes ? s->cluster_size - in : bytes;
        uint64_t host = cluster_host_offset(s, idx);
        if (host) {
            int rc = vbd_node_co_preadv(n->file, host + in, len, q, qoff, 0);
            if (rc < 0)
                return rc;
        } else {
            vbd_iov_memset(q->iov, q->niov, qoff, 0, len);
        }
        off += len;
        qoff += len;
        bytes -= len;
    }
    return 0;
}

/* Where the next new cluster goes (after every cluster in use, on the
 * grid of BAT entries); 0 when a BAT entry cannot address it. */
static uint64_t next_cluster(const struct parallels_state *s)
{
    /* v2 entries count clusters: a foreign image's data area may start off that grid */
    uint64_t host = (s->data_end + s->off_multiplier - 1) / s->off_multiplier * s->off_multiplier;
    return host / s->off_multiplier > UINT32_MAX ? 0 : host;
}

/* A new cluster for idx, zeroed, with [in, in+len) of the request in it;
 * its BAT entry goes to disk at the next flush (write_dirty_bat). */
static int allocate_and_write(struct parallels_state *s, uint64_t idx, uint64_t in, uint64_t len,
                              struct vbd_qiov *q, size_t qoff)
{
    struct vbd_node *f = s->n->file;
    vbd_co_mutex_lock(&s->alloc_lock);
    uint64_t host = cluster_host_offset(s, idx);
    int rc = 0;
    if (host) { /* another request allocated it while we waited */
        vbd_co_mutex_unlock(&s->alloc_lock);
        return vbd_node_co_pwritev(f, host + in, len, q, qoff, 0);
    }
    if (idx >= s->bat_entries) {
        vbd_node_report_corruption(s->n, "write past the end of the parallels BAT", -1, -1, false);
        rc = -EIO;
        goto out;
    }
    host = next_cluster(s);
    if (!host) {
        vbd_node_report_corruption(s->n, "parallels image full: a BAT entry cannot address a new cluster", -1, -1, false);
        rc = -EFBIG;
        goto out;
    }
    if (in > 0)
        rc = vbd_node_co_pwrite_zeroes(f, host, in, 0);
    if (rc == 0)
        rc = vbd_node_co_pwritev(f, host + in, len, q, qoff, 0);
    if (rc == 0 && in + len < s->cluster_size)
        rc = vbd_node_co_pwrite_zeroes(f, host + in + len, s->cluster_size - in - len, 0);
    if (rc < 0)
        goto out;
    s->data_end = host + s->cluster_size;
    s->bat[idx] = htole32((uint32_t)(host / s->off_multiplier));
    mark_bat_dirty(s, (uint32_t)idx);
out:
    vbd_co_mutex_unlock(&s->alloc_lock);
    return rc;
}

static int parallels_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                             unsigned flags)
{
    struct parallels_state *s = n->opaque;
    (void)flags;
    while (bytes) {
        uint64_t idx = off / s->cluster_size, in = off % s->cluster_size;
        uint64_t len = s->cluster_size - in < bytes ? s->cluster_size - in : bytes;
        uint64_t host = cluster_host_offset(s, idx);
        int rc = host ? vbd_node_co_pwritev(n->file, host + in, len, q, qoff, 0)
                      : allocate_and_write(s, idx, in, len, q, qoff);
        if (rc < 0)
            return rc;
        off += len;
        qoff += len;
        bytes -= len;
    }
    return 0;
}

static int parallels_flush(struct vbd_node *n)
{
    struct parallels_state *s = n->opaque;
    if (!s->bat_dirty)
        return 0;
    vbd_co_mutex_lock(&s->alloc_lock);
    int rc = write_dirty_bat(s);
    vbd_co_mutex_unlock(&s->alloc_lock);
    return rc;
}

static int parallels_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                                  uint64_t *map, struct vbd_node **file)
{
    struct parallels_state *s = n->opaque;
    (void)want_zero;
    uint64_t idx = off / s->cluster_size, in = off % s->cluster_size;
    uint64_t host = cluster_host_offset(s, idx);
    uint64_t len = s->cluster_size - in;
    /* extend over following clusters of the same kind (contiguous if allocated) */
    while (len < bytes) {
        uint64_t next = cluster_host_offset(s, idx + 1);
        if (host ? next != host + (len + in) : next != 0)
            break;
        len += s->cluster_size;
        idx++;
    }
    *pnum = len < bytes ? len : bytes;
    if (!host)
        return VBD_BS_ZERO; /* no backing: unallocated clusters read as zeroes */
    host = cluster_host_offset(s, off / s->cluster_size) + in;
    *map = host;
    *file = n->file;
    return VBD_BS_DATA | VBD_BS_OFFSET_VALID | VBD_BS_ALLOCATED;
}

static int parallels_get_info(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err)
{
    /* as qemu-img 7.2: no cluster size, no dirty flag, no format-specific data */
    (void)n;
    (void)info;
    (void)err;
    return 0;
}

/* BAT entry idx gets a cluster of its own: a copy of the one it shares
 * (read as it reads now: zeroes past the end of the file), at the end of
 * the data. Its new entry goes to disk after the copy (write_dirty_bat). */
static int unshare_cluster(struct parallels_state *s, uint32_t idx, uint64_t fsize)
{
    struct vbd_node *f = s->n->file;
    uint64_t from = cluster_host_offset(s, idx), to = next_cluster(s);
    if (!to)
        return -EFBIG;
    uint8_t *buf = calloc(1, s->cluster_size);
    if (!buf)
        return -ENOMEM;
    uint64_t have = from < fsize ? fsize - from : 0;
    if (have > s->cluster_size)
        have = s->cluster_size;
    int rc = have ? vbd_node_co_pread(f, from, buf, have) : 0;
    if (rc == 0)
        rc = vbd_node_co_pwrite(f, to, buf, s->cluster_size, 0);
    free(buf);
    if (rc < 0)
        return rc;
    s->data_end = to + s->cluster_size;
    s->bat[idx] = htole32((uint32_t)(to / s->off_multiplier));
    mark_bat_dirty(s, idx);
    return 0;
}

/* As qemu-img 7.2 checks a parallels image: the in-use flag and BAT
 * entries past the file are corruptions, the file beyond the last cluster
 * a leak; -r all drops those entries, clears the flag (at close) and
 * truncates the file. Messages as QEMU's, on stderr. Past 7.2, as newer
 * QEMU: entries that share a cluster are corruptions; -r all gives each
 * but the first a copy of its own. */
static int parallels_check(struct vbd_node *n, struct vbd_check_result *res, unsigned fix, struct vbd_error **err)
{
    struct parallels_state *s = n->opaque;
    bool fix_errors = (fix & VBD_CHECK_FIX_ERRORS) && s->writable;
    bool fix_leaks = (fix & VBD_CHECK_FIX_LEAKS) && s->writable;
    /* whole sectors, as QEMU measures the file */
    uint64_t fsize = (vbd_node_size(n->file) + 511) & ~511ull;
    int rc = 0;
    if (s->unclean) {
        fprintf(stderr, "%s image was not closed correctly\n", fix_errors ? "Repairing" : "ERROR");
        if (fix_errors) {
            s->unclean = false; /* the flag is cleared when the image is closed */
            res->corruptions_fixed++;
        } else {
            res->corruptions++;
        }
    }
    vbd_co_mutex_lock(&s->alloc_lock);
    for (uint32_t i = 0; i < s->bat_entries; i++) {
        /* past the file, or (not in qemu-img 7.2's check, which passes
         * it; its qemu-io then writes the block over the BAT) into the
         * header and BAT: a read-write open refuses it, so check says
         * so, and -r all drops it as QEMU drops one past the file */
        uint64_t off = cluster_host_offset(s, i);
        if (!off || (off >= s->data_off && off <= fsize))
            continue;
        fprintf(stderr, "%s cluster %u is outside image\n", fix_errors ? "Repairing" : "ERROR", i);
        if (fix_errors) {
            s->bat[i] = 0;
            mark_bat_dirty(s, i);
            res->corruptions_fixed++;
        } else {
            res->corruptions++; /* still counted below, as qemu-img does */
        }
    }
    struct shared_clusters sh;
    if (find_shared_clusters(s, fsize, &sh) < 0) {
        res->check_errors++;
        sh.count = 0;
    }
    for (uint32_t i = 0; sh.count && i < s->bat_entries; i++) {
        if (!(sh.dup[i / 64] & (1ull << (i % 64))))
            continue;
        fprintf(stderr, "%s duplicate offset in BAT entry %u\n", fix_errors ? "Repairing" : "ERROR", i);
        if (!fix_errors) {
            res->corruptions++;
            continue;
        }
        int urc = unshare_cluster(s, i, vbd_node_size(n->file));
        if (urc < 0) {
            fprintf(stderr, "ERROR could not give BAT entry %u a cluster of its own: %s\n", i, strerror(-urc));
            res->check_errors++;
            res->corruptions++;
        } else {
            res->corruptions_fixed++;
        }
    }
    free(sh.dup);
    uint64_t high = 0, prev = 0;
    res->total_clusters = s->bat_entries;
    for (uint32_t i = 0; i < s->bat_entries; i++) {
        uint64_t off = cluster_host_offset(s, i);
        if (!off) {
            prev = 0; /* as qemu-img: a hole between two clusters is no fragmentation */
            continue;
        }
        res->allocated_clusters++;
        if (off > high)
            high = off;
        /* qemu-img's count: neighbour entries whose clusters do not follow each other in the file */
        if (prev && prev + s->cluster_size != off)
            res->fragmented_clusters++;
        prev = off;
    }
    fsize = (vbd_node_size(n->file) + 511) & ~511ull; /* with the clusters unshare_cluster added */
    uint64_t end = high ? high + s->cluster_size : (uint64_t)get_le32p(s->header + 48) * 512;
    if (!end)
        end = (PRL_HEADER_SIZE + (uint64_t)s->bat_entries * 4 + 511) & ~511ull;
    res->image_end_offset = (int64_t)end;
    if (fsize > end) {
        uint64_t count = (fsize - end + s->cluster_size - 1) / s->cluster_size;
        fprintf(stderr, "%s space leaked at the end of the image %llu\n", fix_leaks ? "Repairing" : "ERROR",
                (unsigned long long)(fsize - end));
        if (fix_leaks) {
            rc = vbd_node_co_truncate(n->file, end, true, VBD_PREALLOC_OFF, err);
            if (rc < 0) {
                res->check_errors++;
                res->leaks += (int64_t)count;
            } else {
                res->leaks_fixed += (int64_t)count;
            }
        } else {
            res->leaks += (int64_t)count;
        }
    }
    if (rc == 0 && s->bat_dirty) {
        rc = write_dirty_bat(s);
        if (rc == 0)
            rc = vbd_node_co_flush(n->file);
        if (rc < 0) {
            res->check_errors++;
            vbd_error_setf(err, -rc, "Could not write the parallels BAT: %s", strerror(-rc));
        }
    }
    vbd_co_mutex_unlock(&s->alloc_lock);
    return rc;
}

static const struct vbd_opt_desc parallels_create_opts[] = {
    {"size", VBD_OPT_SIZE, "Virtual disk size", NULL},
    {"cluster_size", VBD_OPT_SIZE, "Parallels image cluster size", "1048576"},
    {NULL, 0, NULL, NULL},
};

/* The image at filename (made here), or on target (blockdev-create). */
static int create_image(const char *filename, struct vbd_node *target, struct json_object *opts,
                        struct json_object *file_hints, struct vbd_error **err)
{
    uint64_t size = 0, cluster_size = PRL_DEFAULT_CLUSTER;
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 ||
        vbd_opt_take_size(opts, "cluster_size", &cluster_size, err) < 0)
        return -EINVAL;
    if (vbd_opts_check_empty(opts, "Block format 'parallels'", err) < 0)
        return -EINVAL;
    if (size > VBD_MAX_REQUEST_END - 511 || cluster_size > VBD_MAX_REQUEST_END - 511) {
        vbd_error_setf(err, EINVAL, "Image size is too large for this cluster size");
        return -EINVAL;
    }
    size = (size + 511) & ~511ull;
    cluster_size = (cluster_size + 511) & ~511ull;
    if (cluster_size == 0 || cluster_size / 512 > PRL_MAX_TRACKS) {
        vbd_error_setf(err, EINVAL, "Cluster size %llu is out of range for a parallels image",
                       (unsigned long long)cluster_size);
        return -EINVAL;
    }
    if (size / cluster_size >= (1ull << 32) / 4) {
        vbd_error_setf(err, EINVAL, "Image size is too large for this cluster size");
        return -EINVAL;
    }
    uint64_t bat_entries = (size + cluster_size - 1) / cluster_size;
    uint64_t meta = (PRL_HEADER_SIZE + bat_entries * 4 + cluster_size - 1) / cluster_size * cluster_size;
    int rc;
    struct vbd_node *f = vbd_create_protocol_node(filename, target, 0, file_hints, err);
    if (!f)
        return -EIO;
    uint8_t h[PRL_HEADER_SIZE] = {0};
    memcpy(h, PRL_MAGIC_V2, 16);
    put_le32p(h + 16, PRL_VERSION);
    put_le32p(h + 20, 16);                              /* heads: geometry is unused on the image level */
    put_le32p(h + 24, (uint32_t)(size / 512 / 16 / 32)); /* cylinders */
    put_le32p(h + 28, (uint32_t)(cluster_size / 512));
    put_le32p(h + 32, (uint32_t)bat_entries);
    put_le64p(h + 36, size / 512);
    put_le32p(h + 48, (uint32_t)(meta / 512));
    /* the zeroed BAT first, then the header that makes it an image */
    rc = vbd_node_co_pwrite_zeroes(f, 0, meta, 0);
    if (rc == 0)
        rc = vbd_node_co_pwrite(f, 0, h, sizeof(h), 0);
    if (rc == 0)
        rc = vbd_node_co_flush(f);
    if (rc < 0)
        vbd_error_setf(err, -rc, "Could not write the parallels image '%s': %s", filename, strerror(-rc));
    vbd_node_unref(f);
    return rc;
}

static int parallels_measure(struct json_object *opts, struct vbd_node *in, uint64_t *required,
                             uint64_t *fully_allocated, struct vbd_error **err)
{
    uint64_t size = 0, cluster_size = PRL_DEFAULT_CLUSTER;
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 ||
        vbd_opt_take_size(opts, "cluster_size", &cluster_size, err) < 0)
        return -EINVAL;
    if (in)
        size = in->size;
    cluster_size = (cluster_size + 511) & ~511ull;
    if (!cluster_size)
        cluster_size = 512;
    uint64_t clusters = (size + cluster_size - 1) / cluster_size;
    uint64_t meta = (PRL_HEADER_SIZE + clusters * 4 + cluster_size - 1) / cluster_size * cluster_size;
    *fully_allocated = meta + clusters * cluster_size;
    *required = *fully_allocated;
    return 0;
}

static const struct vbd_driver parallels_driver = {
    .name = "parallels",
    .kind = VBD_DRV_FORMAT,
    .state_size = sizeof(struct parallels_state),
    .probe = parallels_probe,
    .open = parallels_open,
    .close = parallels_close,
    .co_preadv = parallels_preadv,
    .co_pwritev = parallels_pwritev,
    .co_flush = parallels_flush,
    .co_block_status = parallels_block_status,
    .get_info = parallels_get_info,
    .co_check = parallels_check,
    .create_opts = parallels_create_opts,
    .co_create = create_image,
    .create_onto_node = true,
    .measure = parallels_measure,
};
VBD_DRIVER_REGISTER(parallels, parallels_driver);
