/* SPDX-License-Identifier: MIT */
/* qcow2 internals shared by the files of this folder (QEMU docs/interop/qcow2.txt). */
#ifndef VBD_QCOW2_H
#define VBD_QCOW2_H

#include "vbd/block.h"
#include "vbd/bswap.h"
#include "vbd/coroutine.h"
#include "vbd/dirty-bitmap.h"
#include "vbd/loop.h"

#include <stdbool.h>
#include <stdint.h>

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_L1_BYTES (32u << 20)       /* as QEMU: caps memory taken from l1_size */
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_BACKING_NAME 1023

#define QCOW2_INCOMPAT_DIRTY (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1full
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)

#define QCOW2_EXT_END 0
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_ENCRYPTION 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

#define L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define L2E_STD_RESERVED 0x3f000000000001feull /* bits 1-8 and 56-61 of a standard entry */
#define QCOW_OFLAG_COPIED (1ull << 63)
#define QCOW_OFLAG_COMPRESSED (1ull << 62)
#define QCOW_OFLAG_ZERO (1ull << 0)
#define REFT_OFFSET_MASK 0xfffffffffffffe00ull

enum qcow2_cluster_type {
    QCOW2_UNALLOCATED,
    QCOW2_UNALLOC_ALLOC, /* extended L2: unallocated subcluster of an allocated cluster */
    QCOW2_ZERO_PLAIN,   /* zero flag, no host cluster */
    QCOW2_ZERO_ALLOC,   /* zero flag with a preallocated host cluster */
    QCOW2_NORMAL,
    QCOW2_COMPRESSED,
};

struct qcow2_l2_slot {
    uint64_t offset; /* host offset of the L2 table, 0 = free slot */
    uint64_t *table; /* big-endian entries as on disk */
    uint64_t lru;
    bool dirty;
    bool foreign; /* lies on other metadata (qcow2_table_on_other_metadata): never written */
};

/*
 * A guest range a request works on (QEMU's in-flight allocations, made
 * general). It is registered under s->lock before the request first drops
 * the lock and unregistered when the request is done with it, and lives on
 * the request's stack. Exclusive: whoever changes the range's mapping (an
 * allocation, a copy-on-write, a zero or discard, a compressed write).
 * Shared: whoever reads or overwrites the mapped host clusters in place,
 * which must not be freed or reused meanwhile. A request holds at most one
 * range at a time, so waiting for one cannot deadlock.
 */
struct qcow2_range {
    uint64_t start, end; /* guest bytes, cluster aligned */
    bool exclusive;
    struct vbd_co_queue waiters;
    struct qcow2_range *next;
};

struct qcow2_ext {
    uint32_t type, len;
    uint8_t *data;
};

/* overlap-check's kinds of metadata, QEMU's QCOW2_OL_* bits in the order
 * of its option names (main-header, active-l1, ... bitmap-directory) */
enum {
    QCOW2_OL_MAIN_HEADER = 1 << 0,
    QCOW2_OL_ACTIVE_L1 = 1 << 1,
    QCOW2_OL_ACTIVE_L2 = 1 << 2,
    QCOW2_OL_REFCOUNT_TABLE = 1 << 3,
    QCOW2_OL_REFCOUNT_BLOCK = 1 << 4,
    QCOW2_OL_SNAPSHOT_TABLE = 1 << 5,
    QCOW2_OL_INACTIVE_L1 = 1 << 6,
    QCOW2_OL_INACTIVE_L2 = 1 << 7,
    QCOW2_OL_BITMAP_DIRECTORY = 1 << 8,
    QCOW2_OL_CONSTANT = QCOW2_OL_MAIN_HEADER | QCOW2_OL_ACTIVE_L1 | QCOW2_OL_REFCOUNT_TABLE | QCOW2_OL_SNAPSHOT_TABLE |
                        QCOW2_OL_BITMAP_DIRECTORY,
    QCOW2_OL_CACHED = QCOW2_OL_CONSTANT | QCOW2_OL_ACTIVE_L2 | QCOW2_OL_REFCOUNT_BLOCK | QCOW2_OL_INACTIVE_L1,
    QCOW2_OL_ALL = QCOW2_OL_CACHED | QCOW2_OL_INACTIVE_L2,
    /* what qcow2_overlaps_metadata looks at */
    QCOW2_OL_TRACKED = QCOW2_OL_MAIN_HEADER | QCOW2_OL_ACTIVE_L1 | QCOW2_OL_ACTIVE_L2 | QCOW2_OL_REFCOUNT_TABLE |
                       QCOW2_OL_REFCOUNT_BLOCK | QCOW2_OL_SNAPSHOT_TABLE | QCOW2_OL_INACTIVE_L1 |
                       QCOW2_OL_BITMAP_DIRECTORY,
};

struct qcow2_state {
    struct vbd_node *n;
    uint32_t version;
    uint32_t cluster_bits;
    uint64_t cluster_size;
    uint32_t l2_bits;       /* log2 of entries per L2 table */
    uint32_t l2_entry_size; /* 8, or 16 with extended L2 */
    bool extended_l2;
    bool data_no_zero_range; /* the data file has no cheap write-zeroes (tmpfs): a copy-on-write of zeroes is written */
    uint32_t subcluster_bits;
    uint32_t refcount_order;
    uint64_t incompat, compat, autoclear;
    uint32_t header_length;
    uint8_t compression_type; /* 0 zlib, 1 zstd */
    uint32_t csize_shift;     /* compressed descriptor layout */
    uint64_t csize_mask, coffset_mask;

    uint64_t l1_table_offset;
    uint32_t l1_size;
    uint64_t *l1; /* host-endian copy */

    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint64_t *reftable; /* host-endian copy, refcount_table_clusters * cluster_size / 8 entries */
    uint64_t reftable_entries;
    /* a check open: the entries refused (reserved bits, not cluster
     * aligned) as they were on disk, 0 in reftable; NULL when none */
    uint64_t *reftable_bad;

    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t snapshots_size; /* bytes of the snapshot table */
    uint64_t (*snap_l1)[2];  /* the snapshots' L1 tables (offset, bytes), sorted by offset */
    uint32_t nsnap_l1;

    /* host clusters of L2 tables and refcount blocks, sorted, for the
     * overlap check; rebuilt from s->l1 and s->reftable after they change */
    uint64_t *meta_index;
    size_t nmeta, meta_cap;
    bool meta_valid;
    /* overlap-check: the kinds of metadata (QCOW2_OL_*) a data write may
     * not hit; QCOW2_OL_CACHED unless the open or a reopen said otherwise */
    uint16_t overlap_mask;

    uint64_t backing_file_offset;
    uint32_t backing_file_size;

    struct qcow2_ext *exts; /* unknown/other extensions, kept verbatim */
    int nexts;
    char *feature_names; /* raw feature name table, for messages */
    uint32_t feature_names_len;

    struct qcow2_l2_slot *l2_cache;
    int l2_cache_slots;
    uint64_t lru_clock;
    uint64_t cache_clean_interval; /* seconds; 0 = never */
    uint64_t lru_at_last_clean;
    struct vbd_timer clean_timer;
    /* refcount block cache (refcount-cache-size): LRU slots, written back
     * on eviction and by qcow2_write_refcounts()/qcow2_flush_refcounts() */
    struct qcow2_rc_slot {
        uint64_t offset; /* 0 = free */
        uint8_t *data;
        uint64_t lru;
        bool dirty;
        bool foreign; /* lies on other metadata: never written (set_refcount refuses) */
    } *rc_slots, *rc_cur;
    int rc_nslots;

    uint64_t free_cluster_hint; /* first host cluster that may be free */
    uint64_t file_end;          /* host bytes in use (allocation starts here) */
    struct vbd_co_mutex lock;   /* metadata: L1/L2/refcounts */
    uint8_t *cluster_buf;       /* decompression / COW scratch (one cluster) */
    uint8_t *cbuf;              /* compressed input scratch */
    bool corrupt;
    bool quiet_check;
    uint8_t lazy_opt; /* the lazy-refcounts runtime option: 0 unset (the header's compat bit rules), 1 off, 2 on */
    /* QEMU's pass-discard-* runtime options: which freed clusters go back
     * to the file system. request: 0 unset (discard=unmap on the node
     * rules), 1 off, 2 on; snapshot: on unless set off (what a snapshot's
     * create, delete or revert frees); other: taken and checked, vbd
     * passes down none of those frees (tables moved by a write) */
    uint8_t discard_request_opt;
    bool pass_discard_snapshot, pass_discard_other;
    uint8_t metadata_prealloc; /* block status: 0 not looked at yet, 1 no, 2 yes (see qcow2_block_status) */
    /* external data file: guest offset == host offset, data clusters not refcounted */
    struct vbd_node *data; /* where data clusters live: n->file, or the data file */
    bool external;
    bool data_raw; /* the data file alone is a valid raw image: kept so */
    /* persistent dirty bitmaps tracked while open read-write (bitmaps.c) */
    struct qcow2_bitmap *bitmaps;
    int nbitmaps;
    /* A bitmap change (bitmaps.c) stores the bitmaps, frees them and opens
     * them again, yielding in between: the ranges written meanwhile (by a
     * block job: the exports are drained, the jobs are not) are kept here
     * and marked once the bitmaps are back, so no dirty bit is lost. */
    bool bitmaps_changing;
    /* the close stores the bitmaps as QEMU's does after a read-write open
     * (new clusters); off once a bitmap change or a resize laid them out */
    bool bitmaps_store_anew;
    bool check_open; /* opened read-write for check -r: bitmaps not taken yet */
    bool bitmaps_kept; /* a resize stored the bitmaps and holds them on (qcow2_bitmaps_reload) */
    struct vbd_bitmap_ranges written_in_change;
    uint8_t *bm_dir;
    uint64_t bm_dir_offset, bm_dir_size; /* the repair at open of a dirty image prints nothing */
    bool read_only;
    uint64_t compress_pos; /* end of the last compressed chunk written */
    /* Deferred metadata: dirty L2 tables reach the disk only after a flush
     * has made the refcounts (and data) they depend on durable; clusters they
     * no longer reference are released only after they are on disk. */
    /* guest ranges that requests work on while s->lock is dropped (qcow2.c) */
    struct qcow2_range *ranges;
    uint8_t *bufpool[16]; /* cluster-sized buffers for copy-on-write */
    int nbufpool;
    uint64_t *frees; /* host offsets; bit 0: freed by a guest's discard or zeroes */
    size_t nfrees, frees_cap;
    /* While set, qcow2_defer_free marks what it notes as freed by a guest's
     * discard or zeroes: with discard=unmap on the node, those clusters go
     * back to the file system at writeback, as QEMU's QCOW2_DISCARD_REQUEST
     * (pass-discard-request, on with discard=unmap) gives them back */
    bool frees_requested;
    /* While set (a shrink: QEMU's QCOW2_DISCARD_ALWAYS), a host cluster
     * whose refcount falls to 0 is noted here, to be given back to the
     * file system by qcow2_punch_freed once nothing on disk names it */
    bool punch_freed;
    uint64_t *to_punch; /* host cluster indexes */
    size_t nto_punch, to_punch_cap;
};

/* header.c */
int qcow2_read_header(struct vbd_node *n, struct qcow2_state *s, unsigned flags, struct vbd_error **err);
int qcow2_write_header(struct qcow2_state *s);
int qcow2_update_incompat(struct qcow2_state *s, uint64_t set, uint64_t clear);
void qcow2_free_header(struct qcow2_state *s);

/* cluster.c: mapping (lock held) */
int qcow2_get_l2(struct qcow2_state *s, uint64_t guest_off, bool alloc, uint64_t **table, uint32_t *index,
                 struct qcow2_l2_slot **slot);
int qcow2_get_entry(struct qcow2_state *s, uint64_t guest_off, uint64_t *entry, uint64_t *bitmap);
enum qcow2_cluster_type qcow2_entry_type(struct qcow2_state *s, uint64_t entry);
int qcow2_zero_grown(struct vbd_node *n, uint64_t old, uint64_t size);
int qcow2_signal_corruption(struct qcow2_state *s, const char *what, uint64_t off);
int qcow2_read_compressed(struct qcow2_state *s, uint64_t entry, uint8_t *out);
int qcow2_write_l1_entry(struct qcow2_state *s, uint32_t index);
int qcow2_writeback(struct qcow2_state *s);
void qcow2_defer_free(struct qcow2_state *s, uint64_t host_off);
void qcow2_release_entry(struct qcow2_state *s, uint64_t entry); /* qcow2.c */

/* bitmaps.c */
int qcow2_bitmaps_open(struct qcow2_state *s, struct vbd_error **err);
void qcow2_bitmaps_dirty(struct qcow2_state *s, uint64_t off, uint64_t len);
int qcow2_bitmaps_store(struct qcow2_state *s);
/* the close after an amend: every bitmap stored anew, as qemu-img's close does */
int qcow2_bitmaps_store_anew(struct qcow2_state *s);
void qcow2_bitmaps_free(struct qcow2_state *s);
int qcow2_bitmap_status(struct vbd_node *n, const char *name, uint64_t off, uint64_t bytes, uint64_t *pnum);
int qcow2_bitmap_change(struct vbd_node *n, const struct vbd_bitmap_op *op, struct vbd_error **err);
int qcow2_bitmaps_remove_all(struct qcow2_state *s, struct vbd_error **err);
/* Where the header's bitmaps extension puts the bitmap directory (its
 * end clamped to 2^64); false if the image has no bitmaps. */
bool qcow2_bitmap_dir_range(struct qcow2_state *s, uint64_t *start, uint64_t *end);
int qcow2_bitmaps_check_resize(struct qcow2_state *s, struct vbd_error **err);
int qcow2_bitmaps_resize(struct qcow2_state *s, uint64_t size, struct vbd_error **err);
int qcow2_bitmaps_reload(struct qcow2_state *s, int rc, struct vbd_error **err);

/* resize.c */
int qcow2_grow_l1(struct qcow2_state *s, uint64_t entries);
int qcow2_preallocate(struct qcow2_state *s, uint64_t start, uint64_t end, enum vbd_prealloc mode, struct vbd_error **err);
int qcow2_truncate(struct vbd_node *n, uint64_t size, bool exact, enum vbd_prealloc prealloc, struct vbd_error **err);

/* amend.c */
int qcow2_check_geometry(uint64_t cluster_size, uint64_t refcount_bits, uint32_t *order, struct vbd_error **err);
int64_t qcow2_put_extensions(uint8_t *h, uint64_t cluster_size, uint64_t pos, const char *backing, const char *backing_fmt,
                             const struct qcow2_ext *exts, int nexts, uint32_t skip_type, bool with_feature_table);
int qcow2_rewrite_header(struct qcow2_state *s, const char *backing, const char *backing_fmt, struct vbd_error **err);
int qcow2_change_backing_file(struct vbd_node *n, const char *backing, const char *backing_fmt, struct vbd_error **err);
int qcow2_amend(struct vbd_node *n, struct json_object *opts, bool force, struct vbd_error **err);
int qcow2_make_empty(struct vbd_node *n);
int qcow2_measure(struct json_object *opts, struct vbd_node *in, uint64_t *required, uint64_t *fully_allocated,
                  struct vbd_error **err);

/* snapshot.c */
int qcow2_snapshot_list(struct vbd_node *n, struct vbd_snapshot_info **out);
int qcow2_snapshot_table(struct qcow2_state *s, uint8_t **tab, uint64_t *len, uint64_t **offs);
/* Caches where the snapshots' L1 tables are (for the overlap check) from the table on disk. */
int qcow2_snapshot_l1_ranges(struct qcow2_state *s);
int qcow2_snapshot_create(struct vbd_node *n, struct vbd_snapshot_info *sn, struct vbd_error **err);
int qcow2_snapshot_goto(struct vbd_node *n, const char *id_or_name, struct vbd_error **err);
int qcow2_snapshot_delete(struct vbd_node *n, const char *id, const char *name, struct vbd_error **err);
int qcow2_snapshot_load_tmp(struct vbd_node *n, const char *id, const char *name, struct vbd_error **err);

/* check.c */
int qcow2_co_check(struct vbd_node *n, struct vbd_check_result *res, unsigned fix, struct vbd_error **err);

/* refcount.c (lock held) */
int qcow2_load_reftable(struct qcow2_state *s, bool check, struct vbd_error **err);
void qcow2_free_refcount_cache(struct qcow2_state *s);
int64_t qcow2_alloc_clusters(struct qcow2_state *s, uint64_t count);
/* At a read-write open: file_end past every cluster a refcount block counts. */
int qcow2_skip_counted_tail(struct qcow2_state *s);
int qcow2_get_refcount(struct qcow2_state *s, uint64_t host_cluster, uint64_t *rc);
int qcow2_update_refcount(struct qcow2_state *s, uint64_t host_off, int64_t delta);
int qcow2_flush_refcounts(struct qcow2_state *s);
int qcow2_write_refcounts(struct qcow2_state *s); /* without a flush */
/* The clusters noted while s->punch_freed was set that still have refcount
 * 0, punched in the file as QEMU's qcow2_process_discards does (adjacent
 * ones in one request); advisory: a failure only keeps the space. */
void qcow2_punch_freed(struct qcow2_state *s);
/* The same, but the clusters noted from index `alone` on are punched one
 * by one, never merged with a neighbour: a punch of a cluster smaller than
 * the file system's block leaves the block allocated, so only QEMU's ranges
 * leave QEMU's allocation (its shrink frees L2 tables one at a time). */
void qcow2_punch_freed_apart(struct qcow2_state *s, size_t alone);
void qcow2_punch_later(struct qcow2_state *s, uint64_t host_cluster); /* noted for qcow2_punch_freed */
/* check -r all: a new refcount structure holding count[k] for host cluster k < n, placed from cluster n on */
int qcow2_rebuild_refcounts(struct qcow2_state *s, const uint64_t *count, uint64_t n);
/* create-layout.c: a new image as qemu-img lays it out, written through
 * w as it is made (its pread reads back what its pwrite wrote; clusters
 * qemu-img never writes are left holes): the refcount structure, the L1
 * table and, with metadata_size, every guest cluster of [0, metadata_size)
 * mapped (preallocation=metadata; the L2 tables, l2_entry_bytes an entry).
 * Cluster 0 is written zero: the caller writes the header over it, then
 * makes the file `length` bytes long (written clusters may pass it).
 * Memory stays bounded whatever the size. */
struct qcow2_plan_writer {
    void *opaque;
    int (*pwrite)(void *opaque, uint64_t off, const void *buf, uint64_t len);
    int (*pread)(void *opaque, uint64_t off, void *buf, uint64_t len);
};
struct qcow2_create_plan {
    uint64_t length, l1_offset, reftable_offset;
    uint32_t reftable_clusters;
};
int qcow2_plan_create(uint64_t cluster_size, uint32_t refcount_order, uint64_t l1_entries, uint64_t metadata_size,
                      uint32_t l2_entry_bytes, const struct qcow2_plan_writer *w, struct qcow2_create_plan *out);
/* QEMU's qcow2_refcount_area (exact size): refcount blocks and a new table
 * from start_off on, counting the file and `additional` clusters past them;
 * returns where those go */
int64_t qcow2_refcount_area(struct qcow2_state *s, uint64_t start_off, uint64_t additional);
/* amend -o refcount_bits=2^order: the refcount structure rewritten in the
 * new width (QEMU's qcow2_change_refcount_order), the header switched to it
 * once it is on disk; err says why not (a refcount too large for it) */
int qcow2_change_refcount_order(struct qcow2_state *s, uint32_t order, struct vbd_error **err);
bool qcow2_overlaps_metadata(struct qcow2_state *s, uint64_t off, uint64_t len);
/* Which kinds of metadata (QCOW2_OL_*) [off, off+len) hits: the slow path,
 * asked only once qcow2_overlaps_metadata said it hits something. */
unsigned qcow2_overlap_kinds(struct qcow2_state *s, uint64_t off, uint64_t len);
bool qcow2_table_on_other_metadata(struct qcow2_state *s, uint64_t off);
static inline void qcow2_metadata_moved(struct qcow2_state *s)
{
    s->meta_valid = false; /* an L1 or refcount table entry changed */
}
void qcow2_metadata_added(struct qcow2_state *s, uint64_t off); /* a new L2 table or refcount block */
/* QEMU's use_lazy_refcounts: the runtime option, else the header's bit */
static inline bool qcow2_lazy(const struct qcow2_state *s)
{
    return s->lazy_opt ? s->lazy_opt == 2 : (s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS) != 0;
}
/* A data write's overlap check, as the overlap-check option asks it. Data
 * in its own file cannot hit metadata. vbd tracks every kind but the
 * snapshots' L2 tables (as QEMU's default, "cached"): with all of the tracked
 * kinds asked for (the default, "cached", and "all") one lookup decides. */
static inline bool qcow2_data_overlaps(struct qcow2_state *s, uint64_t off, uint64_t len)
{
    if (s->external || !(s->overlap_mask & QCOW2_OL_TRACKED) || !qcow2_overlaps_metadata(s, off, len))
        return false;
    return (s->overlap_mask & QCOW2_OL_TRACKED) == QCOW2_OL_TRACKED ||
           (qcow2_overlap_kinds(s, off, len) & s->overlap_mask) != 0;
}
const char *qcow2_data_file_name(struct qcow2_state *s, uint32_t *len); /* header.c: from the extension */

#endif
