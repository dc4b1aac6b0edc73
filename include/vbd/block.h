/* SPDX-License-Identifier: MIT */
#ifndef VBD_BLOCK_H
#define VBD_BLOCK_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vbd/coroutine.h"
#include "vbd/iov.h"

struct json_object;
struct vbd_error;
struct vbd_loop;

/* ---------- request flags ---------- */
#define VBD_REQ_FUA         0x1u /* write: data durable before completion */
#define VBD_REQ_MAY_UNMAP   0x2u /* write_zeroes: may deallocate */
#define VBD_REQ_NO_FALLBACK 0x4u /* write_zeroes: fail with -ENOTSUP rather than write zero buffers */
#define VBD_REQ_COMPRESSED  0x8u /* write: store compressed (formats that list it in supported_write_flags) */
/* read: a file node makes a page-cache (or tmpfs) copy on the calling
 * thread instead of handing a big one to the pool. For a caller that runs
 * one request at a time on each of several loops (vbd_co_convert's
 * threads), so that a chunk is read, scanned and written by one CPU.
 * Other drivers pass it down or ignore it. */
#define VBD_REQ_INLINE      0x10u

/* ---------- open flags ---------- */
#define VBD_OPEN_RDWR        0x0001u
#define VBD_OPEN_NOCACHE     0x0002u /* O_DIRECT on file nodes (cache.direct=on) */
#define VBD_OPEN_NO_FLUSH    0x0004u /* flushes are no-ops (cache.no-flush=on, cache=unsafe) */
#define VBD_OPEN_NO_BACKING  0x0008u /* do not open the backing chain */
#define VBD_OPEN_FORCE_SHARE 0x0010u /* -U: take no image locks, allow others to write */
#define VBD_OPEN_UNMAP       0x0020u /* discard=unmap: pass discards down */
#define VBD_OPEN_PROTOCOL    0x0040u /* open as protocol only: no format probing */
#define VBD_OPEN_NO_IO       0x0080u /* metadata only (info): skip e.g. dirty-bit repair */
#define VBD_OPEN_AIO_THREADS 0x0100u /* aio=threads for file nodes */
#define VBD_OPEN_CHECK       0x0200u /* opened for check: allow a corrupt image */
/* File nodes write through the page cache on the calling thread, not on
 * the pool (vbd-img convert's target: its in-order writes, which the
 * file's inode lock serialises anyway, then follow each other without a
 * hop to a worker and back; reads, O_DIRECT writes to a disk and other
 * protocols are unchanged). Blocks the loop for each write: not for a
 * daemon's nodes. */
#define VBD_OPEN_INLINE_WRITES 0x0400u
/* Image locks as QEMU's permissions (block.c, bdrv_default_perms): a file
 * node below a format that keeps metadata in it (qcow2, qed, vdi, ...; not
 * raw, not a filter) needs consistent reads and shares neither writes nor
 * resizes, even read-only: another writer would tear the metadata it
 * reads. vbd_open_child sets it for such a "file" child and passes it
 * through raw and filters; callers never set it. */
#define VBD_OPEN_META_PARENT 0x0800u
/* qemu-img convert's sources (BDRV_O_NO_SHARE): share only consistent
 * reads and unchanged writes, down the whole chain, backing files too. */
#define VBD_OPEN_NO_SHARE    0x1000u
/* opened as driver host_device: the file must be a block or character device (QEMU's hdev_open) */
#define VBD_OPEN_HOST_DEVICE 0x2000u
/* the tools' -i native: refused by file nodes without NOCACHE, as qemu-io and qemu-img do (Linux AIO is O_DIRECT only) */
#define VBD_OPEN_AIO_NATIVE  0x4000u
/* Block status as the image knows it, down the chain (backing files too).
 * Formats that QEMU 7.2 reports as all data (vhdx: no block status there)
 * report so without it, and qemu-img map/measure and qemu-io map/alloc
 * show what QEMU shows; a caller that only uses status to skip work (vbd-img
 * convert's sources) sets it, and those formats then tell what they know
 * (unallocated blocks, holes in the file). */
#define VBD_OPEN_EXACT_STATUS 0x8000u
/* The format was probed and came out raw (QEMU's bs->probed): raw then
 * refuses a write that would make block 0 probe as another format (EPERM,
 * "write operations on block 0 will be restricted"), so that a guest can
 * not turn its disk into, say, a qcow2 naming a host file as backing. */
#define VBD_OPEN_PROBED_RAW  0x10000u
/* vbd-daemon's nodes (blockdev-add, --blockdev and the children their open
 * opens): a file node's image locks follow what the users of the graph
 * need, as QEMU's file-posix takes them from the cumulative permissions of
 * its parents (set by the daemon: vbd_file_set_lock_perm), not the open
 * flags: a file node nobody uses holds none. Until the daemon sets them, a
 * file node only claims what a format opening or reopening above it needs
 * for its metadata (VBD_OPEN_META_PARENT, meta_parent, write_use). The
 * tools never set it: their locks stay those of their open flags, as
 * qemu-img's. */
#define VBD_OPEN_LOCK_BY_USERS 0x20000u

/* detect-zeroes: an all-zero write becomes a write-zeroes request (unmap:
 * one that may deallocate; only with discard=unmap, as QEMU requires) */
enum vbd_detect_zeroes { VBD_DZ_OFF, VBD_DZ_ON, VBD_DZ_UNMAP };
extern const char *const vbd_detect_zeroes_names[]; /* "off","on","unmap",NULL */

/* ---------- block status ---------- */
#define VBD_BS_DATA         0x01u /* reads come from this node's file at *map */
#define VBD_BS_ZERO         0x02u /* reads return zeroes */
#define VBD_BS_OFFSET_VALID 0x04u /* *map and *file are meaningful */
#define VBD_BS_ALLOCATED    0x08u /* defined by this layer (not by the backing) */
#define VBD_BS_EOF          0x10u /* range reaches end of file */
#define VBD_BS_COMPRESSED   0x20u

enum vbd_prealloc { VBD_PREALLOC_OFF, VBD_PREALLOC_METADATA, VBD_PREALLOC_FALLOC, VBD_PREALLOC_FULL };
extern const char *const vbd_prealloc_names[]; /* "off","metadata","falloc","full",NULL */

/* Limits a driver declares; the generic layer enforces/emulates (pattern 2). */
struct vbd_limits {
    uint32_t request_alignment;  /* bytes; 1 = byte granularity. Power of two. */
    uint32_t min_mem_alignment;  /* buffer alignment needed (O_DIRECT: 512/4096) */
    uint64_t max_transfer;       /* 0 = unlimited; requests are split */
    uint32_t opt_transfer;
    uint32_t pdiscard_alignment;
    uint64_t max_pdiscard;
    uint64_t max_pwrite_zeroes;
};

struct vbd_node;
struct vbd_tracked_req;

struct vbd_image_info {
    uint64_t virtual_size;
    int64_t actual_size;     /* bytes allocated on the host, -1 unknown */
    uint32_t cluster_size;   /* 0 if the format has none */
    bool dirty_flag;
    bool has_dirty_flag;
    bool corrupt;
    /* writes must be whole compressed clusters (a streamOptimized vmdk):
     * convert writes it as with -c, as qemu-img does */
    bool needs_compressed_writes;
    /* format-specific part, as QEMU's ImageInfoSpecific:
     * {"type":"qcow2","data":{"compat":"1.1",...}}; owned by the caller. */
    struct json_object *format_specific;
};

struct vbd_check_result {
    int64_t corruptions, leaks, check_errors;
    int64_t corruptions_fixed, leaks_fixed;
    int64_t image_end_offset;
    uint64_t total_clusters, allocated_clusters, fragmented_clusters, compressed_clusters;
};
#define VBD_CHECK_FIX_LEAKS  1u
#define VBD_CHECK_FIX_ERRORS 2u

struct vbd_snapshot_info {
    char id[128];
    char name[256];
    uint64_t vm_state_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint32_t icount_valid;
    uint64_t icount;
};

/* One change to a persistent dirty bitmap (qemu-img bitmap's actions). */
enum vbd_bitmap_action { VBD_BITMAP_ADD, VBD_BITMAP_REMOVE, VBD_BITMAP_CLEAR, VBD_BITMAP_ENABLE, VBD_BITMAP_DISABLE, VBD_BITMAP_MERGE };
struct vbd_bitmap_op {
    enum vbd_bitmap_action action;
    const char *name;
    uint32_t granularity;       /* ADD: bytes per bit, 0 = the format's default */
    bool disabled;              /* ADD: created not tracking writes */
    const uint64_t (*ranges)[2]; /* MERGE: the source's dirty (offset, length) ranges */
    size_t nranges;
};

/* Create-time option descriptor (help text and validation for -o). */
enum vbd_opt_type { VBD_OPT_STRING, VBD_OPT_BOOL, VBD_OPT_NUMBER, VBD_OPT_SIZE };
struct vbd_opt_desc {
    const char *name;
    enum vbd_opt_type type;
    const char *help;
    const char *def_value; /* NULL = none */
};

enum vbd_driver_kind { VBD_DRV_PROTOCOL, VBD_DRV_FORMAT, VBD_DRV_FILTER };
/* What a driver is, for the generic layer and the tools (they ask these,
 * never a driver's name). */
#define VBD_DRV_CAP_MULTI_LOOP 0x1u /* requests may come from several loops (threads) at once */
/* Its bytes are n->file's at an offset, 1:1 (block status maps into the
 * file): a server may send data straight from the file (sendfile). */
#define VBD_DRV_CAP_FILE_WINDOW 0x2u
/* Probing settles on it when no other format matches (it takes any file):
 * opening such a guess writable warns, as a guest could write another
 * format's header into block 0. */
#define VBD_DRV_CAP_PROBE_FALLBACK 0x4u
/* The data is behind a server: image info (the dirty flag) cannot be
 * known here (QEMU's nbd driver answers no get_info either). */
#define VBD_DRV_CAP_REMOTE 0x8u

/* Its requests are bound to the loop it was opened on (the nbd client's
 * connection and reader coroutine, the iscsi client's session, socket
 * watch and timer, quorum's children): it never changes home loop. */
#define VBD_DRV_CAP_FIXED_LOOP 0x10u
/* It can write compressed clusters (VBD_REQ_COMPRESSED, where a node's
 * supported_write_flags allow it): convert -c asks before it makes the
 * target, as qemu-img asks its output driver. */
#define VBD_DRV_CAP_COMPRESSED_WRITES 0x20u

/*
 * Concurrency contract of a node (docs/DESIGN.md, "Concurrency contract").
 *
 * Two owners. The graph belongs to the thread that opened the node
 * (n->home_thread: the daemon's main thread): references, children,
 * names, options, open and the decision to close change only there, in
 * vbd_node_ref/unref and vbd_open (asserted). The driver's state belongs
 * to the node's home loop (n->home_loop): the loop that opened it, until
 * vbd_node_co_set_home moves the node (and everything below it) to
 * another loop, an iothread. Every driver call runs on the home loop:
 * requests, flush, truncate, refresh_size, get_info, check, amend,
 * snapshots, bitmaps, change_backing_file, make_empty, reopen, close.
 *
 * A driver without VBD_DRV_CAP_MULTI_LOOP (qcow2 and the other formats
 * with metadata, the nbd and iscsi clients, copy-on-read,
 * copy-before-write, quorum) is
 * therefore entered from one loop at a time, so its state needs no thread
 * lock, only coroutine locks (vbd_co_mutex) where a request yields in the
 * middle of an update. The generic entry points (io.c: the vbd_node_co_*
 * requests, block status, bitmap status, truncate, refresh_size, get_info,
 * get_allocated_size) move a caller on another loop to the home loop and
 * back (vbd_co_move_to), so they may be called from any loop, in a
 * coroutine. Code that calls driver hooks itself (QMP's snapshot, bitmap
 * and backing-file commands) brackets the calls with
 * vbd_node_co_enter_home/vbd_node_co_leave_home and changes no graph
 * structure in between.
 *
 * Moving (vbd_node_co_set_home) happens on the graph thread, in a
 * coroutine, while nothing else can enter the moved nodes: every backend
 * that reaches them drained, no other control command running (QMP runs
 * one at a time), and no user that reads them outside a backend (the NBD
 * server's block status). A driver with loop-bound state (qcow2's
 * cache-clean timer) gets detach_loop on the old loop and attach_loop on
 * the new one; one whose state cannot move (VBD_DRV_CAP_FIXED_LOOP) makes
 * the move fail with an error naming it. home_loop is read without a lock
 * (atomic) by requests on any loop: it only changes while they cannot run.
 *
 * A driver with VBD_DRV_CAP_MULTI_LOOP (file, raw, null-co, rbd, throttle,
 * blkdebug) may see
 * co_preadv, co_pwritev, co_flush, co_pdiscard, co_pwrite_zeroes and
 * co_block_status from coroutines of several loops at once, each doing its
 * I/O on its own loop's io_uring, and concurrently with the home-loop calls
 * above. What those calls touch must be immutable after open, atomic, or
 * under a lock never held across a yield (file: the size through
 * vbd_node_size/vbd_node_set_size, its extent cache atomic; raw: its window
 * changes only by blockdev-reopen, with every request drained).
 * The capability is a promise about the driver's own state only: a backend
 * runs its requests on the caller's loop only if every node below its root
 * is multi-loop too (raw over qcow2 hops to qcow2's home loop in io.c).
 *
 * The generic layer (io.c) is multi-loop safe for every node: its list of
 * requests in flight (alignment, read-modify-write) is guarded by
 * n->reqs_lock, taken only when a serialising request is in flight.
 *
 * Checked: vbd_node_ref/unref and vbd_node_co_set_home assert the graph
 * thread, io.c asserts that a single-loop driver is entered on its home
 * loop.
 */

/*
 * A driver: one file (qcow2: one folder), one `static const struct
 * vbd_driver` table, one line in src/block/registry.c (pattern 1).
 * Every co_ function runs in a coroutine. NULL entries: the generic layer
 * emulates (write_zeroes -> zero buffer writes, block_status -> "all
 * data", flush -> no-op for nodes without children, pass to file for
 * filters).
 *
 * A request is validated once, where it enters the library: the
 * vbd_node_co_* entry points (io.c). Drivers may assume, and assert rather
 * than check, that every request they get
 *  - has bytes > 0 and lies within n->size rounded up to request_alignment
 *    (no overflow); only a growable node (vbd_node_growable: a file under
 *    a format) gets writes and reads past its end;
 *  - co_preadv/co_pwritev: off and bytes are multiples of
 *    bl.request_alignment, bytes <= bl.max_transfer (if set), the buffers
 *    are aligned to bl.min_mem_alignment, qiov holds qiov_off + bytes;
 *  - co_pwritev/co_pdiscard/co_pwrite_zeroes: the node is not read-only;
 *  - co_pwritev flags are a subset of n->supported_write_flags (FUA is
 *    emulated with a flush above); co_preadv gets no flags;
 *  - co_pwrite_zeroes: aligned to request_alignment, bytes <=
 *    bl.max_pwrite_zeroes (if set); VBD_REQ_NO_FALLBACK only if the node
 *    lists it in supported_zero_flags, VBD_REQ_MAY_UNMAP only if it was
 *    opened with VBD_OPEN_UNMAP;
 *  - co_pdiscard: only on a node opened with VBD_OPEN_UNMAP, aligned to
 *    the larger of bl.pdiscard_alignment and request_alignment, bytes <=
 *    bl.max_pdiscard;
 *  - co_block_status/co_bitmap_status: off + bytes <= n->size.
 * What comes from the image itself (tables, entries, offsets read from
 * disk) is not a request: a driver checks it and fails with an error
 * (-EIO, corrupt), never with an assert.
 */
/* A write of data to a format node whose bytes the caller writes itself,
 * from any loop (convert writing a new qcow2 image on several threads: the
 * image's metadata stays on its home loop, the data copy does not). */
struct vbd_split_write {
    uint64_t off, len;     /* guest bytes [off, off+len) placed; len 0: none */
    uint64_t normal;       /* with len 0: bytes from off to write with vbd_node_co_pwritev instead */
    struct vbd_node *file; /* the data of [off, off+len) goes to file at host: multi-loop */
    uint64_t host;
    _Alignas(8) unsigned char priv[64]; /* the driver's, until commit (qcow2: its range lock) */
};

struct vbd_driver {
    const char *name;
    enum vbd_driver_kind kind;
    const char *const *protocols; /* URI/filename prefixes ("nbd", "nbd+unix"), NULL-terminated */
    size_t state_size;            /* bytes of n->opaque, zeroed before open */
    unsigned caps;                /* VBD_DRV_CAP_* */

    /* Format probing: a score 0..100 for the first 512+ bytes of a file. */
    int (*probe)(const uint8_t *buf, size_t len, const char *filename);
    /* "nbd://h/e" -> {"server":{...},"export":"e"} merged into opts. */
    int (*parse_filename)(const char *filename, struct json_object *opts, struct vbd_error **err);

    int (*open)(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err);
    void (*close)(struct vbd_node *n);

    int (*co_preadv)(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov, size_t qiov_off, unsigned flags);
    int (*co_pwritev)(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov, size_t qiov_off, unsigned flags);
    /* Optional, a write split in three (struct vbd_split_write): prepare
     * places a prefix of [off, off+bytes) in w (or says how much to write
     * with co_pwritev instead), the caller writes the data to w->file,
     * commit links it (rc < 0: gives it back). Same contract as
     * co_pwritev (no flags); both on the home loop. */
    int (*co_write_prepare)(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_split_write *w);
    int (*co_write_commit)(struct vbd_node *n, struct vbd_split_write *w, int rc);
    int (*co_flush)(struct vbd_node *n);
    int (*co_pdiscard)(struct vbd_node *n, uint64_t off, uint64_t bytes);
    int (*co_pwrite_zeroes)(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags);
    /* Status of [off, off+bytes): flags VBD_BS_*, *pnum = bytes with the same
     * status (>0, <= bytes). With OFFSET_VALID, *map is the offset in *file. */
    int (*co_block_status)(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes,
                           uint64_t *pnum, uint64_t *map, struct vbd_node **file);
    int (*co_truncate)(struct vbd_node *n, uint64_t size, bool exact, enum vbd_prealloc prealloc, struct vbd_error **err);
    int64_t (*get_allocated_size)(struct vbd_node *n);
    int (*get_info)(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err);
    /* The VM state area the format keeps beside the guest's disk (QEMU's
     * savevm data; qemu-io's read/write -b): bytes [pos, pos+bytes) of it
     * read (save false) or written. Home loop, coroutine; pos + bytes
     * checked by the caller against overflow only. NULL: see
     * vbd_node_co_vmstate. */
    int (*co_vmstate)(struct vbd_node *n, uint64_t pos, uint64_t bytes, struct vbd_qiov *q, bool save);

    /* Image creation: opts holds "size" and the -o options (values as
     * strings or numbers). file NULL: the driver creates the protocol file
     * filename itself via vbd_create_protocol(). Otherwise (only drivers
     * with create_onto_node) the image goes into file, an open protocol
     * node whose content it replaces (QMP blockdev-create names the
     * image's file by node), and filename is file's. file_hints: the file
     * protocol's options given among a format's (qemu-img create -f qcow2
     * -o nocow=on: "nocow", "extent_size_hint"), which a format driver
     * hands to every file it makes (the image, a data file, extents) through
     * vbd_create_protocol*(); NULL if none. Each create carries its own:
     * two creates interleaved (coroutines) do not see each other's. */
    const struct vbd_opt_desc *create_opts; /* {NULL} terminated */
    int (*co_create)(const char *filename, struct vbd_node *file, struct json_object *opts,
                     struct json_object *file_hints, struct vbd_error **err);
    bool create_onto_node;
    /* Space needed to convert `in` (may be NULL: only size) to this format with opts. */
    int (*measure)(struct json_object *opts, struct vbd_node *in, uint64_t *required, uint64_t *fully_allocated, struct vbd_error **err);

    /* Format extras. */
    int (*co_check)(struct vbd_node *n, struct vbd_check_result *res, unsigned fix, struct vbd_error **err);
    int (*co_amend)(struct vbd_node *n, struct json_object *opts, bool force, struct vbd_error **err);
    int (*snapshot_create)(struct vbd_node *n, struct vbd_snapshot_info *sn, struct vbd_error **err);
    int (*snapshot_goto)(struct vbd_node *n, const char *id_or_name, struct vbd_error **err);
    int (*snapshot_delete)(struct vbd_node *n, const char *id, const char *name, struct vbd_error **err);
    int (*snapshot_list)(struct vbd_node *n, struct vbd_snapshot_info **out); /* returns count, *out malloc'd */
    /* Change the recorded backing file (rebase -u, commit -d ...). */
    int (*change_backing_file)(struct vbd_node *n, const char *backing_file, const char *backing_fmt, struct vbd_error **err);
    /* Drop all data of this layer so reads fall through to the backing
     * (commit without -d). */
    int (*co_make_empty)(struct vbd_node *n);
    /* Re-read a size that can change behind our back (a file grown or
     * shrunk by another program); the children are refreshed first. */
    int (*refresh_size)(struct vbd_node *n);
    /* Persistent dirty bitmap `name`: 1 if [off, ...) starts dirty, 0 if
     * clean, *pnum bytes alike (<= bytes); -ENOENT: no such bitmap,
     * -EINVAL: it is marked inconsistent. */
    int (*co_bitmap_status)(struct vbd_node *n, const char *name, uint64_t off, uint64_t bytes, uint64_t *pnum);
    /* Add, remove, clear, enable, disable or merge into a persistent bitmap
     * (stored before returning); errors worded as qemu-img's. */
    int (*co_bitmap_change)(struct vbd_node *n, const struct vbd_bitmap_op *op, struct vbd_error **err);
    /* Make a read-only node show an internal snapshot's contents instead
     * of the active image's (qemu-img convert -l); id and/or name select it. */
    int (*snapshot_load_tmp)(struct vbd_node *n, const char *id, const char *name, struct vbd_error **err);
    /* The file descriptor whose bytes are the node's, 1:1, read through the
     * page cache (a local file), if [off, off + bytes) of it is in memory
     * right now; else -1. Lets a server send data with splice(2) instead of
     * reading it into memory first: a splice runs on the caller's thread,
     * so a range that needs the disk would stall the caller's whole loop. */
    int (*page_cache_fd)(struct vbd_node *n, uint64_t off, uint64_t bytes);
    /* Writes are copies into memory (the page cache, tmpfs) made on the
     * calling thread (VBD_OPEN_INLINE_WRITES took effect): the caller's
     * thread is the writer, one write at a time. NULL: false. */
    bool (*writes_inline)(struct vbd_node *n);
    /* blockdev-reopen read-only <-> read-write (vbd_node_co_set_read_only
     * calls it between flushing and switching n->read_only; children are
     * switched by the caller). Going read-only: write everything back and
     * leave the image clean for other readers; going read-write: prepare
     * it as an open for writing would. NULL: the driver cannot switch. */
    int (*reopen_rw)(struct vbd_node *n, bool rw, struct vbd_error **err);
    /* blockdev-reopen cache.direct of a protocol node (vbd_node_co_set_direct):
     * bypass the host's page cache or stop, with the request and memory
     * alignment (n->bl) that goes with it. Called with every request to
     * the node drained, on its home loop; on failure nothing changed.
     * NULL: the node keeps what it was opened with. */
    int (*reopen_direct)(struct vbd_node *n, bool direct, struct vbd_error **err);
    /* blockdev-reopen of the driver's own options (QEMU's
     * bdrv_reopen_prepare/commit/abort): reopen_prepare takes from opts
     * (removes) the keys it may change, checks them and stages the change
     * in *staged without changing anything a request sees; the keys it
     * leaves must be unchanged. reopen_commit makes the staged change with
     * every export over the node drained (it cannot fail); reopen_abort
     * drops it. Main loop. NULL: no option of the driver changes. */
    int (*reopen_prepare)(struct vbd_node *n, struct json_object *opts, void **staged, struct vbd_error **err);
    void (*reopen_commit)(struct vbd_node *n, void *staged);
    void (*reopen_abort)(struct vbd_node *n, void *staged);
    /* vbd_node_co_set_home: detach_loop runs on the old home loop (cancel
     * what is armed there: timers, watches), attach_loop on the new one
     * (re-arm). NULL: the driver keeps nothing bound to a loop. */
    void (*detach_loop)(struct vbd_node *n);
    void (*attach_loop)(struct vbd_node *n);
    /* A format parent that keeps metadata in this node came (+1) or went
     * (-1) after the open (a parent that references an existing node, as
     * vbd-daemon's --blockdev file=NAME): the image locks follow, as
     * VBD_OPEN_META_PARENT at open. Fails (nothing changed) when another
     * process holds what the new locks exclude. NULL: no locks. */
    /* writes: the parent that comes is read-write (its metadata will be
     * written: a node locked by its users claims the write with it, in one
     * step, as QEMU's parent takes its permissions at once) */
    int (*meta_parent)(struct vbd_node *n, int delta, bool writes, struct vbd_error **err);
    /* Whether anything writes this read-write node now (a read-write
     * parent, an export; vbd_node_refresh_write_use decides): without, the
     * image locks give up the write and resize permissions and the node
     * stays read-write, as QEMU's locks follow the permissions its parents
     * take, not the node's own read-only option. Fails (nothing changed)
     * when another process holds what the write lock excludes. NULL: the
     * node's locks follow its read-only flag only. */
    int (*write_use)(struct vbd_node *n, bool written, struct vbd_error **err);
    /* A node with a list of children besides file and backing (quorum).
     * child_at: child i (NULL past the last) and its name ("children.N")
     * in name[len]; any thread that holds the graph (no yield between
     * calls). add_child / del_child (x-blockdev-change): take one more
     * child (a reference of its own; the caller checked it has no other
     * parent) or let the one named `name` go; the driver waits for its
     * requests in flight and holds new ones back meanwhile. Home loop,
     * coroutine. NULL: the node has no such list. */
    struct vbd_node *(*child_at)(struct vbd_node *n, int i, char *name, size_t len);
    int (*add_child)(struct vbd_node *n, struct vbd_node *child, struct vbd_error **err);
    int (*del_child)(struct vbd_node *n, const char *name, struct vbd_error **err);
    /* Breakpoints (blkdebug; qemu-io's break, remove_break, resume,
     * wait_break): see vbd_node_debug_breakpoint. NULL: none. */
    int (*debug_breakpoint)(struct vbd_node *n, const char *event, const char *tag);
    int (*debug_remove_breakpoint)(struct vbd_node *n, const char *tag);
    int (*debug_resume)(struct vbd_node *n, const char *tag);
    bool (*debug_is_suspended)(struct vbd_node *n, const char *tag);
    /* A drained section over the node begins / ends (nested; QEMU's
     * bdrv_drain_begin/end of a driver): a driver that holds requests back
     * (a throttle node's queue) lets them go until the end, so that the
     * drain does not wait for them. The drainer's thread, not necessarily
     * the home loop: the state they change must be thread safe. NULL:
     * nothing held back. */
    void (*drain_begin)(struct vbd_node *n);
    void (*drain_end)(struct vbd_node *n);
};

/* A node: one driver instance in a graph. Created only through vbd_open*().
 * Fields are written at open, on the home thread, and only read afterwards
 * (from any loop for a multi-loop chain), except: size (vbd_node_size), the
 * generic-layer private part (io.c), refcnt and next_named (home thread). */
struct vbd_node {
    const struct vbd_driver *drv;
    void *opaque;                /* driver state (drv->state_size bytes) */
    char node_name[64];          /* user-given or auto "#nodeN" */
    char filename[4096];         /* what info prints: path, URI or json:{...} */
    struct vbd_node *file;       /* protocol/format child ("file") */
    struct vbd_node *backing;    /* backing child, or NULL */
    char backing_file[4096];     /* as recorded in the image ("" = none) */
    char backing_format[32];
    char full_backing_filename[4096];
    uint64_t size;               /* virtual size in bytes; drivers keep it current */
    unsigned open_flags;         /* VBD_OPEN_* as opened */
    bool file_meta;              /* counted as a metadata parent of its "file" child (vbd_open_child) */
    bool file_ref;               /* the "file" (blkdebug: "image") child is an existing node it references (file=NAME), not its own */
    bool opening;                /* its driver's open runs: no child may reference it by name (a cycle) */
    bool read_only;
    /* vbd-daemon: a node a command opened by filename and left in the
     * graph (blockdev-snapshot-sync's overlay, drive-mirror's target after
     * its pivot), held by its users only (not the monitor's: it closes
     * with the last of them, as qsd's); --state describes it while it lives */
    bool held_by_users;
    /* drive-mirror's target (sync=top/none) while its job runs: QEMU opens
     * it without its backing and attaches that at the job's end, so the
     * backing edge takes and unshares nothing before (an export may write
     * the source it reads) */
    bool backing_at_job_end;
    struct vbd_limits bl;
    unsigned supported_write_flags; /* VBD_REQ_FUA if the driver does FUA natively */
    unsigned supported_zero_flags;  /* VBD_REQ_MAY_UNMAP / FUA / NO_FALLBACK */
    /* Set by the driver's open: its co_preadv and co_pwritev complete
     * without waiting (never yield), so a request that the generic layer
     * would pass straight to them may run outside a coroutine
     * (vbd_node_rw_inline). null-co without latency-ns. */
    bool io_inline;
    uint8_t detect_zeroes;          /* enum vbd_detect_zeroes (detect-zeroes=) */
    int refcnt;
    /* generic-layer private (io.c): requests in flight on a node with
     * request_alignment > 1, which may come from several loops at once */
    pthread_mutex_t reqs_lock;             /* guards tracked and tracked_seq */
    struct vbd_tracked_req *tracked;
    uint64_t tracked_seq;
    atomic_uint untracked_in_flight;       /* aligned requests off the list */
    atomic_uint serialising_in_flight;     /* read-modify-write requests on the list */
    pthread_t home_thread;                 /* the thread that opened it: the graph changes there */
    struct vbd_loop *home_loop;            /* driver calls run there (atomic: vbd_node_home_loop) */
    /* home_thread's loop, fixed at open: where vbd_node_unref from another
     * thread's coroutine goes. A thread has one loop for its life (made by
     * its first vbd_loop_current or vbd_loop_new; vbd_loop_free, the only
     * way to clear it, is called by the joiner of an iothread or a convert
     * thread, never by a thread on its own loop), so this is the loop the
     * graph thread runs now; home_loop may move away from it. */
    struct vbd_loop *graph_loop;
    struct vbd_node *next_named;
    /* when the node got its name in QEMU's order (bdrv_assign_node_name):
     * a format's or filter's "file" child opened with it is named before
     * it, its backing and other children after; query-named-block-nodes
     * lists the newest first, query-blockstats the oldest (vbd_node_order) */
    uint64_t name_seq;
    struct json_object *options; /* effective options, for json: filenames and query-named-block-nodes */
    /* The options a monitor gave the node (blockdev-add, --blockdev, then
     * each blockdev-reopen: QEMU's bs->explicit_options), NULL if none did:
     * what a reopen compares with and may not leave out. vbd-daemon's. */
    struct json_object *given_options;
    uint64_t write_threshold;    /* block-set-write-threshold; 0 = off (atomic: checked by writes on any loop) */
    struct vbd_write_hook *write_hook; /* the block jobs watching writes: a list (atomic; NULL: none) */
    struct vbd_dirty_bitmap *dirty_bitmaps; /* in-memory bitmaps (vbd/dirty-bitmap.h; atomic head) */
};

/* A block job's view of the writes to a node (stream: its copy must not
 * overwrite the guest's newer data; active commit: a dirty bitmap). Every
 * write, zeroing and discard entering the node calls begin before and end
 * after it, with w on the writer's stack; begin may yield. */
struct vbd_hooked_write {
    uint64_t off, bytes;
    struct vbd_co *co;
    struct vbd_hooked_write *next;
    /* what is written, for a job that writes it to its target too (mirror's
     * write-blocking, as QEMU's active mirror): the guest's data (NULL:
     * zeroes, or a discard), the request's flags, and its result for end */
    struct vbd_qiov *qiov;
    size_t qoff;
    unsigned flags;
    bool discard;
    int ret;
    bool job_copies; /* set by the job in begin: it copies this write itself, nothing to mark dirty */
};
struct vbd_write_hook {
    void (*begin)(struct vbd_write_hook *h, struct vbd_hooked_write *w);
    void (*end)(struct vbd_write_hook *h, struct vbd_hooked_write *w);
    struct vbd_write_hook *next; /* the hook added before it (atomic) */
};
/* Several backups of one node each hook its writes, as QEMU stacks a
 * copy-before-write filter per backup: a write begins every hook on the
 * list, newest first, and ends them in the opposite order. At most one
 * hook per node uses w->next (the job tracker: the jobs' busy checks
 * allow no second one). On the node's control thread (the main loop). */
void vbd_node_add_write_hook(struct vbd_node *n, struct vbd_write_hook *h);
/* Off the list: new writes no longer see it; the caller waits for the
 * writes already inside (begin called, end not yet). */
void vbd_node_remove_write_hook(struct vbd_node *n, struct vbd_write_hook *h);

static inline struct vbd_loop *vbd_node_home_loop(const struct vbd_node *n)
{
    return __atomic_load_n(&n->home_loop, __ATOMIC_ACQUIRE);
}

/* n->size is written on the node's home loop (open, truncate, refresh, a
 * protocol file growing under its format) while requests on other loops
 * check their bounds against it: both sides go through these. */
static inline uint64_t vbd_node_size(const struct vbd_node *n) { return __atomic_load_n(&n->size, __ATOMIC_RELAXED); }
static inline void vbd_node_set_size(struct vbd_node *n, uint64_t size) { __atomic_store_n(&n->size, size, __ATOMIC_RELAXED); }

/* A driver file ends with VBD_DRIVER_REGISTER(qcow2, qcow2_driver); and
 * src/block/registry.c lists `vbd_driver_qcow2` once: grep finds every driver. */
#define VBD_DRIVER_REGISTER(name, table) const struct vbd_driver *const vbd_driver_##name = &(table)

/* ---------- registry ---------- */
const struct vbd_driver *vbd_driver_find(const char *name);
/* The format whose probe scores BUF (an image's first LEN bytes; FILENAME
 * may be NULL) highest; raw, the fallback, for an empty image. */
const struct vbd_driver *vbd_probe_buffer(const uint8_t *buf, size_t len, const char *filename);
/* All drivers, NULL-terminated (for --help and probing). */
const struct vbd_driver *const *vbd_driver_list(void);

/* ---------- graph ---------- */
/*
 * Open a node as QEMU's bdrv_open does: opts may be NULL or hold "driver",
 * "node-name", "file" (object, node-name reference or filename), "backing"
 * (object, node-name, or JSON null to disable), "read-only", "cache.direct",
 * "cache.no-flush", "discard", "detect-zeroes", "aio", "force-share", plus
 * driver options.
 * filename may be NULL, a path, a protocol URI (nbd://...) or "json:{...}".
 * Without "driver", the format is probed (raw as the fallback, with the
 * same warning qemu-img gives for raw writes of probed images).
 * Ownership of opts is taken (json_object_put'ed). The calling thread
 * becomes the node's graph thread (n->home_thread), its loop the home loop.
 */
struct vbd_node *vbd_open(const char *filename, struct json_object *opts, unsigned flags, struct vbd_error **err);
/* Open a node of a driver the registry does not list (QEMU's
 * bdrv_new_open_driver: a job's own filter), with "node-name", "file" and
 * the generic options in opts (taken). Home thread, coroutine. */
struct vbd_node *vbd_open_driver(const struct vbd_driver *drv, struct json_object *opts, unsigned flags,
                                 struct vbd_error **err);
/* For drivers: open child `key` ("file" or "backing") from parent opts.
 * If absent, and filename != NULL, opens that as protocol (for "file").
 * Returns NULL with *err set on failure. */
struct vbd_node *vbd_open_child(struct vbd_node *parent, struct json_object *opts, const char *key,
                                const char *filename, unsigned flags, struct vbd_error **err);
/* Open the backing chain of a format node from n->backing_file /
 * n->backing_format (relative paths resolved against the directory of the
 * overlay's file), unless opts["backing"] overrides it. Formats call this
 * at the end of open. */
int vbd_open_backing(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err);
void vbd_node_ref(struct vbd_node *n);
void vbd_node_unref(struct vbd_node *n); /* closes at 0 (children unref'd) */
/* The named nodes: one list, the graph thread's (unlocked). */
struct vbd_node *vbd_node_find(const char *node_name);
/* Iterate named nodes: pass NULL first. */
struct vbd_node *vbd_node_next(struct vbd_node *prev);
/* A number that grows with every call: the order in which the users of
 * the graph (exports, jobs) were made, for x-debug-query-block-graph,
 * which lists them in that order as QEMU does. Graph thread. */
uint64_t vbd_graph_user_seq(void);
/* Format name of the top node ("raw", "qcow2", "file", ...). */
static inline const char *vbd_node_format(const struct vbd_node *n) { return n->drv->name; }
/* First node below n that is not a filter (for info on filtered chains). */
struct vbd_node *vbd_node_skip_filters(struct vbd_node *n);
/* The last node of n's file chain (n->file->file...): the protocol under
 * a format and its filters, where the bytes are stored. */
struct vbd_node *vbd_node_bottom(struct vbd_node *n);
/* Whether writes to n end as copies made on the writing thread (asked of
 * n's bottom node, see writes_inline): then the writer is the critical
 * path, and more requests in flight or out-of-order writes add nothing. */
bool vbd_node_writes_inline(struct vbd_node *n);
/* The node that keeps n's data and size to itself, as QEMU's parents that
 * share neither WRITE nor RESIZE: a format's file node (raw passes its
 * parent's permissions through; a writable format also needs WRITE and
 * RESIZE there, a read-only one (FORMAT_RO) CONSISTENT_READ only) or a
 * quorum's child. Its description in QEMU's permission errors goes to by
 * ("node 'q' (uses node 'f1' as 'children.1' child)"). */
enum { VBD_NODE_OWNER_NONE, VBD_NODE_OWNER_FORMAT, VBD_NODE_OWNER_FORMAT_RO, VBD_NODE_OWNER_QUORUM };
int vbd_node_data_owner(struct vbd_node *n, char *by, size_t len);
/* Is `to` n itself or below it (file, backing, a driver's child_at list)?
 * Graph thread: a node taking a new child checks it makes no cycle. */
bool vbd_node_reaches(struct vbd_node *n, struct vbd_node *to);
/* Every node below n (files and backing chains) is VBD_DRV_CAP_MULTI_LOOP:
 * requests to n run on the caller's loop, never hop to a home loop. */
bool vbd_node_chain_multi_loop(struct vbd_node *n);

/* ---------- I/O (coroutine context only; bounds/alignment checked here) ----------
 * Return 0 on success (whole range done) or -errno. Offsets past the end are
 * -EINVAL; writes to a read-only node are -EACCES; a VBD_REQ_NO_FALLBACK
 * zeroing the node cannot do fast is -ENOTSUP, before anything is written.
 * Unaligned requests on a node with request_alignment > 1 do
 * read-modify-write, serialized against overlapping requests; requests
 * above max_transfer are split. */

/* No request reaches past this byte: offsets become off_t (files) and
 * int64_t (QEMU's limit, which NBD clients share) below. */
#define VBD_MAX_REQUEST_END ((uint64_t)INT64_MAX)
/* The range rule of every request, in one place: 0 if [off, off+bytes)
 * does not overflow and lies within size, else -EINVAL. The entry points
 * below apply it; an export that must answer a bad range with its own
 * protocol's error checks with this first, and nothing else. */
static inline int vbd_request_check(uint64_t size, uint64_t off, uint64_t bytes)
{
    /* inline: every request of every export passes it (a call was half its cost) */
    if (off > VBD_MAX_REQUEST_END || bytes > VBD_MAX_REQUEST_END - off)
        return -EINVAL;
    if (off > size || bytes > size - off)
        return -EINVAL;
    return 0;
}
/* A node that may be written past its end (a protocol node that can be
 * resized: the format above grows its file). Its requests are only
 * checked for overflow; a user's drive over one is bounded by its
 * backend. */
bool vbd_node_growable(const struct vbd_node *n);
int vbd_node_co_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov, size_t qiov_off, unsigned flags);
/* The bytes [off, off+bytes) of n's backing node into qiov at qiov_off, for
 * a format's unallocated ranges: zeroes past the backing node's end or
 * without one (an overlay grown after its snapshot). flags: the read's
 * VBD_REQ_INLINE, passed down. */
int vbd_node_co_read_backing(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov, size_t qiov_off,
                             unsigned flags);
/* A read or write of a node whose driver completes inline (n->io_inline),
 * run at once, in or outside a coroutine, when the generic layer would pass
 * it to the driver as it is (multi-loop node, nothing to align, split,
 * track, hook or emulate; vbd_node_co_preadv's fast path): true and *rc its
 * result. false: nothing was done, use vbd_node_co_preadv/pwritev. */
bool vbd_node_rw_inline(struct vbd_node *n, bool write, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov,
                        unsigned flags, int *rc);
int vbd_node_co_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *qiov, size_t qiov_off, unsigned flags);
/* The split write (struct vbd_split_write), from any loop: prepare places
 * a prefix of [off, off+bytes) (w->len, 0 when the node cannot: then
 * w->normal bytes go through vbd_node_co_pwritev); the caller writes w->len
 * bytes to w->file at w->host, then commit links them whatever the write
 * returned (rc: its result; < 0 gives the space back) and returns rc or
 * commit's error. Until commit, the range reads as before. Not with a
 * write hook, dirty bitmaps, detect-zeroes or a write threshold on n. */
int vbd_node_co_write_prepare(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_split_write *w);
int vbd_node_co_write_commit(struct vbd_node *n, struct vbd_split_write *w, int rc);
/* Whether n's driver can split writes (vbd_node_co_write_prepare may place some). */
bool vbd_node_can_split_writes(const struct vbd_node *n);
int vbd_node_co_pread(struct vbd_node *n, uint64_t off, void *buf, uint64_t bytes);
int vbd_node_co_pwrite(struct vbd_node *n, uint64_t off, const void *buf, uint64_t bytes, unsigned flags);
int vbd_node_co_flush(struct vbd_node *n);  /* flushes the node and, below it, its children */
int vbd_node_co_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes);
int vbd_node_co_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags);
/* The dirty bitmap `name` of n (or of the format node under n's filters); see co_bitmap_status. */
int vbd_node_co_bitmap_status(struct vbd_node *n, const char *name, uint64_t off, uint64_t bytes, uint64_t *pnum);
/* The bytes set in n's bitmap `name` (as vbd_node_co_bitmap_status finds
 * it) in *count; 0, or the status's error (-EINVAL: an inconsistent
 * persistent bitmap) with *count what was counted before it. */
int vbd_node_co_bitmap_count(struct vbd_node *n, const char *name, uint64_t *count);
/* The persistent bitmap `name` of img itself (its driver's; -ENOENT: none there). */
int vbd_node_co_persistent_bitmap_status(struct vbd_node *img, const char *name, uint64_t off, uint64_t bytes,
                                         uint64_t *pnum);
int vbd_node_co_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes,
                             uint64_t *pnum, uint64_t *map, struct vbd_node **file);
/* Status through the backing chain from top down to (not including) base
 * (NULL = whole chain). *depth: 0 = top, 1 = its backing, ... (as qemu-img map).
 * VBD_BS_ALLOCATED is set when some layer defines the range ("present"). */
int vbd_node_co_block_status_above(struct vbd_node *top, struct vbd_node *base, bool want_zero, uint64_t off,
                                   uint64_t bytes, uint64_t *pnum, uint64_t *map, struct vbd_node **file, int *depth);
/* A file whose bytes at map are n's bytes at off, for a zero-copy send of a
 * data range: n is a file node or a raw node right above one (the only
 * mappings that cannot change under a reader), the whole range is data and
 * in the page cache. Returns the fd (the node's; not to be closed) and
 * *map, or -1. */
int vbd_node_co_zero_copy_source(struct vbd_node *n, uint64_t off, uint64_t bytes, uint64_t *map);
/* Re-read the sizes of n and its children (files resized by someone else,
 * e.g. `truncate -s` or `qemu-img resize` before a SIGHUP to vbd-daemon).
 * Nodes whose size is fixed by their own metadata (qcow2) keep it. */
int vbd_node_refresh_size(struct vbd_node *n, struct vbd_error **err);
int vbd_node_co_truncate(struct vbd_node *n, uint64_t size, bool exact, enum vbd_prealloc prealloc, struct vbd_error **err);
int64_t vbd_node_get_allocated_size(struct vbd_node *n);
int vbd_node_get_info(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err);
/* Read (save false) or write bytes [pos, pos+bytes) of the VM state of the
 * image under n: the first node from n down its file links whose driver
 * keeps one (qcow2), as QEMU's bdrv_co_readv_vmstate goes down to the
 * primary child; -ENOTSUP where none does (raw over a file), -EACCES on a
 * read-only node, -EIO past 2^63 - 1 GiB (QEMU's request limit). */
int vbd_node_co_vmstate(struct vbd_node *n, uint64_t pos, void *buf, uint64_t bytes, bool save);

/* ---------- home loop (the concurrency contract above) ---------- */
/* In a coroutine: continue on n's home loop if n is single-loop and the
 * caller is elsewhere. Returns the loop to come back to (NULL: stayed);
 * pass it to vbd_node_co_leave_home. */
struct vbd_loop *vbd_node_co_enter_home(struct vbd_node *n);
void vbd_node_co_leave_home(struct vbd_loop *origin);
/* n or a node below it (file, backing, recursively) that cannot leave its
 * loop (VBD_DRV_CAP_FIXED_LOOP), or NULL. */
struct vbd_node *vbd_node_fixed_loop_below(struct vbd_node *n);
/* Move n and every node below it to `loop` (file and backing children,
 * recursively), calling the drivers' detach_loop/attach_loop on the old and
 * new loops. Graph thread, coroutine; the caller has made sure nothing
 * enters these nodes meanwhile (every backend over them drained). Fails,
 * moving nothing, if a node below is VBD_DRV_CAP_FIXED_LOOP. */
int vbd_node_co_set_home(struct vbd_node *n, struct vbd_loop *loop, struct vbd_error **err);

/* ---------- control of a live node (vbd-daemon's QMP monitor) ---------- */
/* Switch n between read-only and read-write, as blockdev-reopen does.
 * Going read-only flushes n, then its own "file" child (opened with it)
 * follows if no other read-write node sits on it; going read-write
 * switches that child first. A "file" child it references (file=NAME,
 * n->file_ref) keeps its own read-only option, as QEMU reopens only the
 * children that inherit from n: its write lock follows instead
 * (vbd_node_refresh_write_use). The image locks follow (qemu-img sees the
 * change). Home thread, coroutine. Fails with -ENOTSUP for drivers
 * without reopen_rw. */
int vbd_node_co_set_read_only(struct vbd_node *n, bool read_only, struct vbd_error **err);
/* A read-write node's image locks after its parents or exports changed:
 * the write lock is held while a read-write node sits on it through
 * "file", an export writes it, or no node sits on it through "file" (a
 * node of its own, which vbd keeps locked as opened); given up while
 * every such parent is read-only (QEMU: a read-only qcow2 over a
 * read-write file node takes no write permission there). Nothing for a
 * node opened with VBD_OPEN_LOCK_BY_USERS (the daemon sets its locks).
 * Home thread. */
int vbd_node_refresh_write_use(struct vbd_node *n, struct vbd_error **err);
/* The image locks of a file node opened with VBD_OPEN_LOCK_BY_USERS, in
 * QEMU's BLK_PERM_* bits (consistent read 1, write 2, write unchanged 4,
 * resize 8; src/block/protocol/file.c, the only driver that takes image
 * locks): vbd_file_lock_perm says what it holds now (false: it takes none:
 * not a file node, locking=off, force-share, or not by users);
 * vbd_file_set_lock_perm makes the locks exactly perm (bytes 100+) and
 * ~shared (bytes 200+), or fails with nothing changed when another open
 * file description holds what they exclude. Main loop (the daemon's
 * vbd_qmp_image_locks_follow). */
bool vbd_file_lock_perm(struct vbd_node *n, unsigned *perm, unsigned *shared);
int vbd_file_set_lock_perm(struct vbd_node *n, unsigned perm, unsigned shared, struct vbd_error **err);
/* Would parent, a format that keeps metadata in c (its "file"), conflict
 * with another such format on c (read-write: rw)? Both read-only is fine;
 * if either writes, the other's metadata goes stale under it or two write
 * it: -EBUSY with QEMU's permission conflict words (a format's "file"
 * unshares write and resize; a read-write one takes both). 0 for a parent
 * that keeps no metadata there. Home thread. */
/* Does n write its "file" (blkdebug: "image") child only when its own
 * users write (raw, throttle, blkdebug: QEMU's filter and raw child
 * perms), not by itself (a format's metadata, copy-on-read's copies)? */
bool vbd_node_passes_writes_down(const struct vbd_node *n);
int vbd_node_check_metadata_writer(struct vbd_node *parent, struct vbd_node *c, bool rw, struct vbd_error **err);
/* blockdev-reopen cache.direct of a protocol node: written back (flushed)
 * first as QEMU's reopen does, then the driver's reopen_direct. The caller
 * has drained every request to n. Home thread, coroutine. -ENOTSUP for
 * drivers without reopen_direct. The node's open flags are the caller's. */
int vbd_node_co_set_direct(struct vbd_node *n, bool direct, struct vbd_error **err);

/* qemu-io's breakpoints, on the first node at or below n (down its file
 * children) whose driver has them (blkdebug): a request that fires event
 * (read_aio, write_aio, flush_to_disk) stops there, tagged tag, until
 * vbd_node_debug_resume(tag) lets it go (the newest stopped one of that
 * tag); a breakpoint fires once. -ENOTSUP without such a node, -ENOENT for
 * an unknown event or tag. Home loop; the stopped request's coroutine waits
 * on it. is_suspended: a request with tag is stopped (false: no node). */
int vbd_node_debug_breakpoint(struct vbd_node *n, const char *event, const char *tag);
int vbd_node_debug_remove_breakpoint(struct vbd_node *n, const char *tag);
int vbd_node_debug_resume(struct vbd_node *n, const char *tag);
bool vbd_node_debug_is_suspended(struct vbd_node *n, const char *tag);

/* What a node reports to the management layer (any thread), and what
 * the management layer knows about a node (home thread). */
struct vbd_node_event_handlers {
    /* A write (or zeroing, discard) ended past the threshold by `exceeded` bytes. */
    void (*write_threshold)(struct vbd_node *n, uint64_t threshold, uint64_t exceeded);
    /* A format driver found its metadata corrupt (offset/size -1: unknown). */
    void (*corrupted)(struct vbd_node *n, const char *msg, int64_t offset, int64_t size, bool fatal);
    /* Does a user outside the graph (a writable export) write to n? Then
     * n stays read-write when a node above it becomes read-only. */
    bool (*written_outside)(struct vbd_node *n);
};
void vbd_node_set_event_handlers(const struct vbd_node_event_handlers *h); /* once, before any node opens */
/* From the driver, on its home loop (the handler may run on any thread). */
void vbd_node_report_corruption(struct vbd_node *n, const char *msg, int64_t offset, int64_t size, bool fatal);
/* block-set-write-threshold: the first write that ends past `threshold`
 * reports it once and disarms it (0: off), as QEMU. */
void vbd_node_set_write_threshold(struct vbd_node *n, uint64_t threshold);
void vbd_node_write_threshold_exceeded(struct vbd_node *n, uint64_t threshold, uint64_t end);
/* The write path's check: one relaxed load when no threshold is set. */
static inline void vbd_node_check_write_threshold(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    uint64_t t = __atomic_load_n(&n->write_threshold, __ATOMIC_RELAXED);
    if (__builtin_expect(t != 0 && off + bytes > t, 0))
        vbd_node_write_threshold_exceeded(n, t, off + bytes);
}

/* ---------- creation ---------- */
/* Create an image of format fmt ("raw","qcow2",...). opts: "size" and -o options. */
int vbd_image_co_create(const char *fmt, const char *filename, struct json_object *opts, struct vbd_error **err);
/* For format drivers: create the protocol-level file (truncate/preallocate)
 * with the create's file_hints (co_create's; may be NULL). */
int vbd_create_protocol(const char *filename, uint64_t size, enum vbd_prealloc prealloc, struct json_object *file_hints,
                        struct vbd_error **err);
/* The same with the protocol's own creation options (rbd's cluster_size);
 * a key the protocol does not list is an error. */
/* For format drivers' create: the protocol node to write the new image
 * to, emptied and sized: target itself (create_onto_node) or the file made
 * at filename (co_create). A new reference, or NULL with *err. */
struct vbd_node *vbd_create_protocol_node(const char *filename, struct vbd_node *target, uint64_t size,
                                          struct json_object *file_hints, struct vbd_error **err);
int vbd_create_protocol_opts(const char *filename, uint64_t size, enum vbd_prealloc prealloc,
                             struct json_object *file_hints, struct json_object *extra, struct vbd_error **err);

#endif
