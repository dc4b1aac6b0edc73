/* SPDX-License-Identifier: MIT */
/*
 * Protocol driver "file": regular files and host block devices, through
 * the loop's io_uring (or its thread pool with aio=threads). Image locks
 * are OFD locks on the same bytes QEMU uses, so vbd and QEMU tools see
 * each other's locks.
 */
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

/* QEMU's permission bits and lock byte ranges (file-posix.c): byte
 * 100+bit = "I use this permission", 200+bit = "I don't share it". */
enum {
    PERM_CONSISTENT_READ = 0x1,
    PERM_WRITE = 0x2,
    PERM_WRITE_UNCHANGED = 0x4,
    PERM_RESIZE = 0x8,
    PERM_ALL = 0xf,
    LOCK_PERM_BASE = 100,
    LOCK_SHARED_BASE = 200,
};
static const char *const perm_names[] = {"consistent read", "write", "write unchanged", "resize"};

struct file_state {
    int fd;
    bool is_blockdev;
    bool is_chardev; /* host_device on a character device */
    enum vbd_aio aio;
    bool direct;
    bool in_memory; /* tmpfs: even O_DIRECT is a memcpy */
    bool inline_writes; /* VBD_OPEN_INLINE_WRITES */
    bool falloc_writes; /* allocate before an inline write (file_pwritev); atomic: cleared on EOPNOTSUPP */
    /* The last data extent SEEK_DATA/SEEK_HOLE found: SEEK_HOLE can cost a
     * scan of the whole rest of the file (0.5 ms for 256 MiB on tmpfs) and an
     * NBD server asks for each read. Writes only add data; anything that can
     * make holes (discard, zeroes, truncate) forgets it. */
    uint64_t data_start, data_end;
    /* Where the last SEEK_DATA from inside a hole found data (0: none): a
     * walk over the file asks there next, and needs only the SEEK_HOLE. */
    uint64_t next_data;
    bool locked;
    unsigned perm, shared;  /* the locks held (PERM_* bits), when locked */
    unsigned meta_parents;  /* formats with metadata above (VBD_OPEN_META_PARENT, file_meta_parent) */
    bool no_share;          /* VBD_OPEN_NO_SHARE */
    bool write_unused;      /* read-write, but nothing writes it now: locked as a reader (file_write_use) */
    bool by_users;          /* VBD_OPEN_LOCK_BY_USERS: locks set by file_set_perm, claimed in between */
    bool force_share;       /* force-share=on with by_users: its claims share everything (its users' edges do too) */
    /* A flush with nothing to make durable is skipped (file_flush; QEMU's
     * write_gen/flushed_gen). Every request that changes the file (data,
     * zeroes, holes, its size: file_pwritev, file_pwrite_zeroes,
     * file_pdiscard, file_truncate, the only places that write to fd) adds
     * one to writes_begun before it is issued and one to writes_ended once
     * it has completed, on the thread of the coroutine that issues it: the
     * node is multi-loop, so any loop's (the daemon's iothreads, convert's
     * threads); the pool's workers and io_uring never touch them. A flush
     * (any loop) reads writes_ended, then writes_begun: equal, every write
     * begun before the second load had completed before the first, so its
     * fdatasync, issued after both, covers every write begun so far, and
     * when it succeeds it stores that count in `flushed` (the largest, as
     * flushes on several loops may end in any order). A flush that finds
     * writes_begun still equal to `flushed` has nothing a flush must cover:
     * no write has begun since one that a completed fdatasync covered. A
     * flush that starts with a write in flight syncs and records nothing,
     * so the next flush syncs again. All three start at 0: a flush covers
     * the writes made through this node, not what the file held when it
     * was opened (QEMU's write_gen and flushed_gen start equal too; an
     * open that only reads, or a second open of a file a first one wrote
     * and flushed at its close, syncs nothing). 64 bytes on either side:
     * every request writes these, the fields above are read by all. */
    char pad_before[64];
    uint64_t writes_begun, writes_ended, flushed;
    char pad_after[64];
    /* An fdatasync failed on a file written through the page cache: Linux
     * marks the pages it could not write clean (they are dropped, the disk
     * keeps the old data) and reports the error once, so the next fdatasync
     * succeeds with the writes lost. Every flush fails from then on (QEMU's
     * page_cache_inconsistent): a flush must never say that a write is on
     * the disk when it is not. O_DIRECT writes bypass the page cache: a
     * failed sync of them is reported and the next one tried. Atomic: the
     * node's flushes run on any loop. */
    bool page_cache_lost;
};

/* The extent cache is read and changed by requests on every loop, without
 * a lock: each field is accessed atomically and a reader may see a start
 * and an end from two different extents, or an extent a concurrent
 * discard just punched. Both only make a hole look like data, which is
 * always a correct answer (reads of it return zeroes); a range is never
 * reported as a hole from the cache. */
static void extent_get(const struct file_state *s, uint64_t *start, uint64_t *end)
{
    *start = __atomic_load_n(&s->data_start, __ATOMIC_RELAXED);
    *end = __atomic_load_n(&s->data_end, __ATOMIC_RELAXED);
}

static void extent_set(struct file_state *s, uint64_t start, uint64_t end)
{
    __atomic_store_n(&s->data_start, start, __ATOMIC_RELAXED);
    __atomic_store_n(&s->data_end, end, __ATOMIC_RELAXED);
}

static void extent_forget(struct file_state *s)
{
    extent_set(s, 0, 0);
    __atomic_store_n(&s->next_data, 0, __ATOMIC_RELAXED);
}

static int lock_byte(int fd, off_t byte, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

static bool byte_locked_by_other(int fd, off_t byte)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return false;
    return fl.l_type != F_UNLCK;
}

/* Move the image locks of fd from (old_perm, old_shared) to (perm, shared):
 * take the new bytes, check that no other open file description holds
 * what they conflict with (QEMU's raw_apply_lock_bytes, then
 * raw_check_lock_bytes), then drop the bytes no longer wanted. On a
 * conflict the bytes just taken go again and the old state stays. */
static int set_locks(struct vbd_node *n, int fd, unsigned old_perm, unsigned old_shared, unsigned perm,
                     unsigned shared, struct vbd_error **err)
{
    unsigned old_unshared = ~old_shared & PERM_ALL, unshared = ~shared & PERM_ALL;
    unsigned add_perm = perm & ~old_perm, add_unshared = unshared & ~old_unshared;
    int rc = 0;
    for (int i = 0; i < 4 && rc == 0; i++) {
        if ((add_perm & (1u << i)) && lock_byte(fd, LOCK_PERM_BASE + i, F_RDLCK) < 0)
            rc = -errno;
        else if ((add_unshared & (1u << i)) && lock_byte(fd, LOCK_SHARED_BASE + i, F_RDLCK) < 0)
            rc = -errno;
    }
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Failed to lock '%s': %s", n->filename, strerror(-rc));
    } else {
        for (int i = 0; i < 4; i++) {
            if ((add_perm & (1u << i)) && byte_locked_by_other(fd, LOCK_SHARED_BASE + i)) {
                vbd_error_setf(err, EAGAIN, "Failed to get \"%s\" lock: Is another process using the image [%s]?",
                               perm_names[i], n->filename);
                rc = -EAGAIN;
                break;
            }
            if ((add_unshared & (1u << i)) && byte_locked_by_other(fd, LOCK_PERM_BASE + i)) {
                vbd_error_setf(err, EAGAIN,
                               "Failed to get shared \"%s\" lock: Is another process using the image [%s]?",
                               perm_names[i], n->filename);
                rc = -EAGAIN;
                break;
            }
        }
    }
    /* on failure undo what was added, on success drop what is no longer wanted */
    unsigned drop_perm = rc < 0 ? add_perm : old_perm & ~perm;
    unsigned drop_unshared = rc < 0 ? add_unshared : old_unshared & ~unshared;
    for (int i = 0; i < 4; i++) {
        if (drop_perm & (1u << i))
            lock_byte(fd, LOCK_PERM_BASE + i, F_UNLCK);
        if (drop_unshared & (1u << i))
            lock_byte(fd, LOCK_SHARED_BASE + i, F_UNLCK);
    }
    return rc;
}

/* What a file node takes and shares, as QEMU derives it for the file child
 * (block.c): a reader needs consistent reads and shares everything (qemu-img
 * info of a raw image in use works); a writer also takes write and resize
 * and shares neither (stricter than QEMU, whose raw writers share writes:
 * two writers of one image are a fault vbd keeps refusing); a format with
 * metadata above (bdrv_default_perms_for_storage: "bs->file always needs
 * to be consistent because of the metadata") shares neither writes nor
 * resizes even read-only; qemu-img convert's source (BDRV_O_NO_SHARE)
 * shares only consistent reads and unchanged writes. */
static void wanted_perms(bool rw, unsigned meta_parents, bool no_share, unsigned *perm, unsigned *shared)
{
    *perm = PERM_CONSISTENT_READ;
    *shared = PERM_ALL;
    if (rw) {
        *perm |= PERM_WRITE | PERM_RESIZE;
        *shared = PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED;
    }
    if (meta_parents || no_share)
        *shared &= ~(PERM_WRITE | PERM_RESIZE);
}

/* A node locked by its users (VBD_OPEN_LOCK_BY_USERS): a format above
 * opens or reopens and will read or write its metadata before the daemon
 * sets the users' locks (file_set_perm): what it needs is added to what
 * the node holds, nothing is given up (the daemon's set does that). */
static int claim_locks(struct vbd_node *n, struct file_state *s, unsigned perm, unsigned shared,
                       struct vbd_error **err)
{
    perm |= s->perm;
    shared &= s->shared;
    if (s->force_share)
        shared = PERM_ALL;
    int rc = set_locks(n, s->fd, s->perm, s->shared, perm, shared, err);
    if (rc == 0) {
        s->perm = perm;
        s->shared = shared;
    }
    return rc;
}

static int probe_direct_alignment(int fd, uint32_t *align)
{
    void *buf = vbd_alloc_aligned(4096, 4096);
    int rc = -EINVAL;
    for (uint32_t a = 512; a <= 4096; a *= 2) {
        if (pread(fd, buf, a, 0) >= 0) {
            *align = a;
            rc = 0;
            break;
        }
    }
    free(buf);
    return rc;
}

/* The request and buffer alignment O_DIRECT asks of this file: a block
 * device's logical sector size, else the smallest read at offset 0 the
 * file takes (4096 if none does). At open and at a reopen to O_DIRECT. */
static uint32_t direct_alignment(const struct file_state *s)
{
    uint32_t a = 512;
    int ssz;
    if (s->is_blockdev && ioctl(s->fd, BLKSSZGET, &ssz) == 0)
        a = (uint32_t)ssz;
    else if (probe_direct_alignment(s->fd, &a) < 0)
        a = 4096;
    return a;
}

/* A regular file's length as QEMU's block layer sees it: whole 512-byte
 * sectors, the last one completed with zeroes (reads past the end read
 * zeroes; a write there grows the file). Rounded down, the last partial
 * sector of an image whose size is not a multiple of 512 was out of every
 * reader's reach (a guest's last sector, qemu-img compare). */
static uint64_t file_length(off_t st_size)
{
    return ((uint64_t)st_size + 511) & ~(uint64_t)511;
}

/* An integer, negative ones included, as QEMU's "aio-max-batch" (a QAPI int) */
static int take_aio_max_batch(struct json_object *opts, int64_t *out, struct vbd_error **err)
{
    struct json_object *v = vbd_opt_get(opts, "aio-max-batch");
    if (!v)
        return 0;
    errno = 0;
    char *end = NULL;
    const char *str = json_object_get_string(v);
    *out = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : strtoll(str, &end, 0);
    if (!json_object_is_type(v, json_type_int) && (errno || end == str || *end)) {
        vbd_error_setf(err, EINVAL, "Parameter 'aio-max-batch' expects integer");
        return -EINVAL;
    }
    json_object_object_del(opts, "aio-max-batch");
    return 1;
}

static int file_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct file_state *s = n->opaque;
    char *filename = NULL;
    int locking = 0; /* auto */
    static const char *const lockmodes[] = {"auto", "on", "off", NULL};
    s->fd = -1;
    /* QEMU 7.2 takes these: drop-cache and x-check-cache-dropped concern its
     * cache invalidation on migration, which vbd has no counterpart of;
     * aio-max-batch, any integer (0: the default), bounds its Linux AIO
     * batches, while vbd submits what a loop iteration gathered */
    bool ignore_bool;
    int64_t ignore_int;
    if (vbd_opt_take_str(opts, "filename", &filename, err) < 0 ||
        vbd_opt_take_enum(opts, "locking", lockmodes, &locking, err) < 0 ||
        vbd_opt_take_bool(opts, "drop-cache", &ignore_bool, err) < 0 ||
        vbd_opt_take_bool(opts, "x-check-cache-dropped", &ignore_bool, err) < 0 ||
        take_aio_max_batch(opts, &ignore_int, err) < 0)
        goto fail;
    if (!filename || !*filename) {
        /* an empty name is none (QEMU's bdrv_open_common); qemu-img's and qemu-io's words (blockdev-add and --blockdev say "Parameter 'filename' is missing" before this: src/qmp/cmd-block.c) */
        vbd_error_setf(err, EINVAL, "The 'file' block driver requires a file name");
        goto fail;
    }
    snprintf(n->filename, sizeof(n->filename), "%s", filename);
    s->aio = (flags & VBD_OPEN_AIO_THREADS) ? VBD_AIO_THREADS : VBD_AIO_IO_URING;
    int oflags = O_CLOEXEC | ((flags & VBD_OPEN_RDWR) ? O_RDWR : O_RDONLY);
    if (flags & VBD_OPEN_NOCACHE)
        oflags |= O_DIRECT;
    s->direct = (flags & VBD_OPEN_NOCACHE) != 0;
    s->inline_writes = (flags & VBD_OPEN_INLINE_WRITES) != 0;
    s->fd = open(filename, oflags);
    if (s->fd < 0 && errno == EINVAL && (flags & VBD_OPEN_NOCACHE)) {
        vbd_error_setf(err, EINVAL,
                       "Could not open '%s': the filesystem does not support O_DIRECT (cache.direct=on / cache=none)",
                       filename);
        goto fail;
    }
    if (s->fd < 0) {
        vbd_error_setf(err, errno, "Could not open '%s': %s", filename, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(s->fd, &st) < 0) {
        vbd_error_setf(err, errno, "Could not stat '%s': %s", filename, strerror(errno));
        goto fail;
    }
    struct statfs sfs;
    bool fs_ok = fstatfs(s->fd, &sfs) == 0;
    s->in_memory = fs_ok && sfs.f_type == TMPFS_MAGIC;
    /* after open(2), as QEMU's raw_open_common: a missing file is reported first */
    if ((flags & VBD_OPEN_AIO_NATIVE) && !(flags & VBD_OPEN_NOCACHE)) {
        vbd_error_setf(err, EINVAL, "aio=native was specified, but it requires cache.direct=on, which was not specified.");
        goto fail;
    }
    /* QEMU 7.2's raw_open_common: host_device takes a character or block
     * device, file a regular file (vbd's file takes a block device too: a
     * wider door, no user of QEMU's is refused). A directory opened for
     * writing failed above with EISDIR, as QEMU's. */
    if ((flags & VBD_OPEN_HOST_DEVICE) && !S_ISBLK(st.st_mode) && !S_ISCHR(st.st_mode)) {
        vbd_error_setf(err, ENOTBLK, "'host_device' driver requires '%s' to be either a character or block device",
                       filename);
        goto fail;
    }
    if (!(flags & VBD_OPEN_HOST_DEVICE) && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        vbd_error_setf(err, EINVAL, "'file' driver requires '%s' to be a regular file", filename);
        goto fail;
    }
    if (S_ISBLK(st.st_mode)) {
        uint64_t size;
        s->is_blockdev = true;
        if (ioctl(s->fd, BLKGETSIZE64, &size) < 0) {
            vbd_error_setf(err, errno, "Could not get the size of '%s': %s", filename, strerror(errno));
            goto fail;
        }
        vbd_node_set_size(n, size);
    } else if (S_ISREG(st.st_mode)) {
        vbd_node_set_size(n, file_length(st.st_size));
        /* ext2/3/4 share the magic: ext2 and ext3 files without extents
         * answer EOPNOTSUPP, and that turns it off. Only inline writes
         * allocate first, and O_DIRECT ones on ext4 are not inline: a
         * reopen may switch O_DIRECT either way. */
        s->falloc_writes = s->inline_writes && fs_ok && sfs.f_type == EXT4_SUPER_MAGIC;
    } else {
        /* host_device on a character device (/dev/null, /dev/zero): as
         * QEMU's hdev, its size is where lseek(SEEK_END) lands (0 for
         * those two), and it is a device: no holes, no growth, no page
         * cache to send from */
        off_t end = lseek(s->fd, 0, SEEK_END);
        if (end < 0) {
            vbd_error_setf(err, errno, "Could not get the size of '%s': %s", filename, strerror(errno));
            goto fail;
        }
        s->is_chardev = true;
        vbd_node_set_size(n, (uint64_t)end);
    }
    if (flags & VBD_OPEN_NOCACHE) {
        uint32_t a = direct_alignment(s);
        n->bl.request_alignment = a;
        n->bl.min_mem_alignment = a;
    }
    /* force-share: no lock for a tool (qemu-img -U); a daemon's node is
     * locked by its users as qsd's, which share everything with it but
     * still take their consistent reads (byte 100) */
    bool do_lock = locking != 2 && (!(flags & VBD_OPEN_FORCE_SHARE) || (flags & VBD_OPEN_LOCK_BY_USERS));
    if ((flags & VBD_OPEN_FORCE_SHARE) && (flags & VBD_OPEN_RDWR)) {
        vbd_error_setf(err, EINVAL, "force-share=on can only be used with read-only images");
        goto fail;
    }
    s->meta_parents = (flags & VBD_OPEN_META_PARENT) ? 1 : 0;
    s->no_share = (flags & VBD_OPEN_NO_SHARE) != 0;
    s->by_users = (flags & VBD_OPEN_LOCK_BY_USERS) != 0;
    s->force_share = s->by_users && (flags & VBD_OPEN_FORCE_SHARE);
    if (do_lock) {
        /* by users: nothing until they say, but what a format opening
         * above needs while it reads and writes its metadata */
        unsigned perm = 0, shared = PERM_ALL;
        if (!s->by_users || s->meta_parents)
            wanted_perms(flags & VBD_OPEN_RDWR, s->meta_parents, s->no_share, &perm, &shared);
        if (s->force_share)
            shared = PERM_ALL;
        if (set_locks(n, s->fd, 0, PERM_ALL, perm, shared, err) < 0)
            goto fail;
        s->locked = true;
        s->perm = perm;
        s->shared = shared;
    }
    n->supported_write_flags = VBD_REQ_FUA;
    n->supported_zero_flags = VBD_REQ_MAY_UNMAP | VBD_REQ_NO_FALLBACK; /* zeroes by fallocate or not at all */
    n->bl.max_transfer = 0;
    free(filename);
    return 0;
fail:
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    free(filename);
    return -EINVAL;
}

static void file_close(struct vbd_node *n)
{
    struct file_state *s = n->opaque;
    if (s->fd < 0)
        return;
    /* What was written since the last flush reaches the disk before the
     * file is let go, as QEMU's close flushes every node (qemu-io's write
     * and exit makes one fdatasync, qsd's blockdev-del and quit too):
     * a tool that returned or a daemon that stopped cleanly leaves nothing
     * behind in the page cache. cache.no-flush skips it, as there; after
     * a failed sync the writes are lost already (page_cache_lost). */
    if (!s->is_chardev && !(n->open_flags & VBD_OPEN_NO_FLUSH) &&
        !__atomic_load_n(&s->page_cache_lost, __ATOMIC_ACQUIRE) &&
        __atomic_load_n(&s->writes_begun, __ATOMIC_ACQUIRE) != __atomic_load_n(&s->flushed, __ATOMIC_ACQUIRE) &&
        fdatasync(s->fd) < 0)
        vbd_warn("'%s': fdatasync at close failed (%s): writes since the last flush may be lost", n->filename,
                 strerror(errno));
    close(s->fd); /* drops the OFD locks too */
}

/* A large buffered transfer (or any on tmpfs) is a memcpy to or from the page cache, which
 * io_uring performs inline in the submitting thread; on the pool it runs on
 * another core in parallel with the loop (convert on tmpfs: 0.31 s -> 0.21 s). */
#define FILE_BUFFERED_OFFLOAD (256 * 1024)
static enum vbd_aio aio_for(const struct file_state *s, uint64_t bytes)
{
    if ((!s->direct || s->in_memory) && bytes >= FILE_BUFFERED_OFFLOAD)
        return VBD_AIO_THREADS;
    /* tmpfs: a small copy on this thread beats a hop to io_uring's workers (tmpfs reads are punted there) */
    return s->in_memory && s->aio == VBD_AIO_IO_URING ? VBD_AIO_SYNC : s->aio;
}

/* A write past the end grew the file. Writers on several loops may race
 * here: the size only ever grows. */
static void grow_to(struct vbd_node *n, uint64_t end)
{
    uint64_t cur = vbd_node_size(n);
    while (end > cur && !__atomic_compare_exchange_n(&n->size, &cur, end, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

/* Around every request that changes the file (the comment at writes_begun):
 * file_X counts X_fd, which does it */
static void write_begin(struct file_state *s) { __atomic_fetch_add(&s->writes_begun, 1, __ATOMIC_RELEASE); }
static void write_end(struct file_state *s) { __atomic_fetch_add(&s->writes_ended, 1, __ATOMIC_RELEASE); }

static int file_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                       unsigned flags)
{
    struct file_state *s = n->opaque;
    enum vbd_aio aio = aio_for(s, bytes);
    /* the caller's thread is the reader (VBD_REQ_INLINE): a copy it makes, not a disk read */
    if ((flags & VBD_REQ_INLINE) && (!s->direct || s->in_memory))
        aio = VBD_AIO_SYNC;
    struct iovec iov[64];
    if (qoff == 0 && bytes == q->size)
        return vbd_co_preadv_full(s->fd, q->iov, q->niov, off, aio);
    int cnt = vbd_iov_slice(iov, 64, q->iov, q->niov, qoff, bytes);
    if (cnt >= 0)
        return vbd_co_preadv_full(s->fd, iov, cnt, off, aio);
    struct iovec *big = malloc(sizeof(*big) * q->niov);
    if (!big)
        return -ENOMEM;
    cnt = vbd_iov_slice(big, q->niov, q->iov, q->niov, qoff, bytes);
    int rc = vbd_co_preadv_full(s->fd, big, cnt, off, aio);
    free(big);
    return rc;
}

/* A write to the page cache (or tmpfs, even with O_DIRECT) is a copy: with
 * VBD_OPEN_INLINE_WRITES it is made here, on the caller's thread. One rule
 * for file_pwritev and for callers that ask (file_writes_inline). */
static bool writes_inline(const struct file_state *s)
{
    return s->inline_writes && (!s->direct || s->in_memory);
}

/* A buffered write into a hole of an ext4 file pays for delayed
 * allocation page by page (a reservation, the extent status tree, quota);
 * the same range allocated first, as one unwritten extent, leaves the copy
 * as the only per-page cost. 512 x 1 MiB written into a new ext4 file at a
 * 4 MiB stride (the bench's raw target), one thread: 0.160 -> 0.102 s,
 * with an fsync at the end 0.405 -> 0.342 s; appended (a qcow2 target's
 * clusters) 0.127 -> 0.098 s; tmpfs gains nothing (0.273 -> 0.289 s;
 * 2026-12-04) and O_DIRECT writes are not inline. Only the bytes about
 * to be written are allocated, and KEEP_SIZE leaves the size to the write:
 * the file ends as sparse and as long as without. A failure is ignored
 * (the write goes ahead and reports its own), EOPNOTSUPP turns it off. For
 * big writes only: the syscall and an extent lookup cost what ~8 pages of
 * delayed allocation save. */
#define FILE_FALLOC_MIN (256 * 1024)
static void falloc_before_write(struct file_state *s, uint64_t off, uint64_t bytes)
{
    if (bytes < FILE_FALLOC_MIN || !__atomic_load_n(&s->falloc_writes, __ATOMIC_RELAXED))
        return;
    if (fallocate(s->fd, FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)bytes) < 0 && errno == EOPNOTSUPP)
        __atomic_store_n(&s->falloc_writes, false, __ATOMIC_RELAXED);
}

static int pwritev_fd(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                      unsigned flags)
{
    struct file_state *s = n->opaque;
    int rwf = (flags & VBD_REQ_FUA) ? RWF_DSYNC : 0;
    enum vbd_aio aio = aio_for(s, bytes);
    /* tmpfs takes the inode lock for every write, so the pool's parallel
     * writers of one file only spin on it (img-bench 1M seqwrite QD4: a
     * quarter of the CPU in rwsem_spin_on_owner). io_uring punts a tmpfs
     * write to its kernel workers hashed by inode: still off this thread,
     * one at a time, with no user-space hand-off (as qemu-img's aio=io_uring). */
    if (s->in_memory && s->aio == VBD_AIO_IO_URING && aio == VBD_AIO_THREADS)
        aio = VBD_AIO_IO_URING;
    if (writes_inline(s)) {
        aio = VBD_AIO_SYNC;
        falloc_before_write(s, off, bytes);
    }
    struct iovec iov[64];
    int rc;
    if (qoff == 0 && bytes == q->size) {
        rc = vbd_co_pwritev_full(s->fd, q->iov, q->niov, off, rwf, aio);
    } else {
        int cnt = vbd_iov_slice(iov, 64, q->iov, q->niov, qoff, bytes);
        if (cnt >= 0) {
            rc = vbd_co_pwritev_full(s->fd, iov, cnt, off, rwf, aio);
        } else {
            struct iovec *big = malloc(sizeof(*big) * q->niov);
            if (!big)
                return -ENOMEM;
            cnt = vbd_iov_slice(big, q->niov, q->iov, q->niov, qoff, bytes);
            rc = vbd_co_pwritev_full(s->fd, big, cnt, off, rwf, aio);
            free(big);
        }
    }
    if (rc == 0 && !s->is_blockdev && !s->is_chardev)
        grow_to(n, off + bytes);
    return rc;
}

static int file_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                        unsigned flags)
{
    struct file_state *s = n->opaque;
    write_begin(s);
    int rc = pwritev_fd(n, off, bytes, q, qoff, flags);
    write_end(s);
    return rc;
}

static int file_flush(struct vbd_node *n)
{
    struct file_state *s = n->opaque;
    if (n->open_flags & VBD_OPEN_NO_FLUSH)
        return 0;
    if (__atomic_load_n(&s->page_cache_lost, __ATOMIC_ACQUIRE))
        return -EIO;
    /* ended first: see writes_begun */
    uint64_t ended = __atomic_load_n(&s->writes_ended, __ATOMIC_ACQUIRE);
    uint64_t begun = __atomic_load_n(&s->writes_begun, __ATOMIC_ACQUIRE);
    if (begun == __atomic_load_n(&s->flushed, __ATOMIC_ACQUIRE))
        return 0;
    int rc = vbd_co_fsync(s->fd, true, s->aio);
    if (rc < 0 && !s->direct && !__atomic_exchange_n(&s->page_cache_lost, true, __ATOMIC_ACQ_REL))
        vbd_warn("'%s': fdatasync failed (%s): writes since the last flush may be lost; every flush of it fails from now on",
                 n->filename, strerror(-rc));
    if (rc == 0 && ended == begun) {
        uint64_t cur = __atomic_load_n(&s->flushed, __ATOMIC_RELAXED);
        while (cur < begun &&
               !__atomic_compare_exchange_n(&s->flushed, &cur, begun, false, __ATOMIC_RELEASE, __ATOMIC_RELAXED))
            ;
    }
    return rc;
}

struct blk_ioctl {
    int fd;
    unsigned long req;
    uint64_t range[2];
};

static long do_blk_ioctl(void *opaque)
{
    struct blk_ioctl *b = opaque;
    return ioctl(b->fd, b->req, b->range) < 0 ? -errno : 0;
}

static int pdiscard_fd(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    struct file_state *s = n->opaque;
    if (s->is_chardev)
        return -ENOTSUP;
    if (s->is_blockdev) {
        struct blk_ioctl b = {s->fd, BLKDISCARD, {off, bytes}};
        long rc = vbd_co_run_in_thread(do_blk_ioctl, &b);
        return rc == -EOPNOTSUPP ? -ENOTSUP : (int)rc;
    }
    extent_forget(s);
    int rc = vbd_co_fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, bytes);
    return rc == -EOPNOTSUPP ? -ENOTSUP : rc;
}

static int pwrite_zeroes_fd(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    struct file_state *s = n->opaque;
    int rc;
    if (s->is_chardev)
        return -ENOTSUP; /* written as zeroes by the generic layer */
    if (s->is_blockdev) {
        struct blk_ioctl b = {s->fd, BLKZEROOUT, {off, bytes}};
        rc = (int)vbd_co_run_in_thread(do_blk_ioctl, &b);
        return rc == -EOPNOTSUPP || rc == -EINVAL ? -ENOTSUP : rc;
    }
    extent_forget(s);
    if ((flags & VBD_REQ_MAY_UNMAP) && off + bytes <= vbd_node_size(n)) {
        rc = vbd_co_fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, bytes);
        if (rc == 0)
            return 0;
    }
    rc = vbd_co_fallocate(s->fd, FALLOC_FL_ZERO_RANGE, off, bytes);
    if (rc == -EOPNOTSUPP || rc == -EINVAL)
        return -ENOTSUP;
    if (rc == 0)
        grow_to(n, off + bytes);
    return rc;
}

static int file_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    struct file_state *s = n->opaque;
    write_begin(s);
    int rc = pdiscard_fd(n, off, bytes);
    write_end(s);
    return rc;
}

static int file_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    struct file_state *s = n->opaque;
    write_begin(s);
    int rc = pwrite_zeroes_fd(n, off, bytes, flags);
    write_end(s);
    return rc;
}

static int file_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                             uint64_t *map, struct vbd_node **file)
{
    struct file_state *s = n->opaque;
    *map = off;
    *file = n;
    if (s->is_blockdev || s->is_chardev) {
        *pnum = bytes;
        return VBD_BS_DATA | VBD_BS_OFFSET_VALID;
    }
    uint64_t cached_start, cached_end;
    extent_get(s, &cached_start, &cached_end);
    if (off >= cached_start && off < cached_end) {
        *pnum = cached_end - off < bytes ? cached_end - off : bytes;
        return VBD_BS_DATA | VBD_BS_OFFSET_VALID;
    }
    /* a stale hint (a discard raced) makes SEEK_HOLE below find the hole
     * at off, and the range is said to be data: still a correct answer */
    uint64_t hint = __atomic_load_n(&s->next_data, __ATOMIC_RELAXED);
    off_t data = hint && hint == off ? (off_t)off : lseek(s->fd, off, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) { /* no data after off: a hole to the end */
            *pnum = bytes;
            return VBD_BS_ZERO | VBD_BS_OFFSET_VALID;
        }
        *pnum = bytes; /* SEEK_DATA unsupported: say data */
        return VBD_BS_DATA | VBD_BS_OFFSET_VALID;
    }
    if ((uint64_t)data > off) {
        __atomic_store_n(&s->next_data, (uint64_t)data, __ATOMIC_RELAXED);
        uint64_t len = (uint64_t)data - off;
        *pnum = len < bytes ? len : bytes;
        return VBD_BS_ZERO | VBD_BS_OFFSET_VALID;
    }
    off_t hole = lseek(s->fd, off, SEEK_HOLE);
    uint64_t len = hole > (off_t)off ? (uint64_t)hole - off : bytes;
    if (hole > (off_t)off) {
        /* one data extent cached; one that touches it grows it (random
         * reads of a fully written file soon hit it every time) */
        if (cached_end > cached_start && off <= cached_end && (uint64_t)hole >= cached_start)
            extent_set(s, off < cached_start ? off : cached_start,
                       (uint64_t)hole > cached_end ? (uint64_t)hole : cached_end);
        else
            extent_set(s, off, (uint64_t)hole);
    }
    *pnum = len < bytes ? len : bytes;
    return VBD_BS_DATA | VBD_BS_OFFSET_VALID;
}

static int prealloc_range(int fd, uint64_t from, uint64_t to, enum vbd_prealloc p, struct vbd_error **err,
                          const char *name)
{
    if (to <= from || p == VBD_PREALLOC_OFF || p == VBD_PREALLOC_METADATA)
        return 0;
    if (p == VBD_PREALLOC_FALLOC) {
        if (fallocate(fd, 0, from, to - from) < 0) {
            vbd_error_setf(err, errno, "Could not preallocate '%s': %s", name, strerror(errno));
            return -errno;
        }
        return 0;
    }
    static char zero[1 << 16];
    for (uint64_t pos = from; pos < to;) {
        size_t len = to - pos < sizeof(zero) ? to - pos : sizeof(zero);
        ssize_t r = pwrite(fd, zero, len, pos);
        if (r < 0) {
            vbd_error_setf(err, errno, "Could not preallocate '%s': %s", name, strerror(errno));
            return -errno;
        }
        pos += r;
    }
    return 0;
}

static int truncate_fd(struct vbd_node *n, uint64_t size, bool exact, enum vbd_prealloc prealloc,
                       struct vbd_error **err)
{
    struct file_state *s = n->opaque;
    if (s->is_blockdev || s->is_chardev) {
        if (size > vbd_node_size(n) || (exact && size != vbd_node_size(n))) {
            vbd_error_setf(err, ENOTSUP, "Cannot grow device files");
            return -ENOTSUP;
        }
        return 0;
    }
    /* QEMU's file driver takes off, falloc and full (resize --preallocation=metadata of a raw image resized it) */
    if (prealloc != VBD_PREALLOC_OFF && prealloc != VBD_PREALLOC_FALLOC && prealloc != VBD_PREALLOC_FULL) {
        vbd_error_setf(err, ENOTSUP, "Unsupported preallocation mode: %s", vbd_prealloc_names[prealloc]);
        return -ENOTSUP;
    }
    uint64_t old = vbd_node_size(n);
    if (!exact && size < old)
        return 0;
    extent_forget(s);
    if (ftruncate(s->fd, size) < 0) {
        vbd_error_setf(err, errno, "Failed to resize '%s': %s", n->filename, strerror(errno));
        return -errno;
    }
    vbd_node_set_size(n, size);
    if (prealloc == VBD_PREALLOC_OFF && old == 0 && size) {
        /* as QEMU's handle_aiocb_truncate: an empty file grown gets its
         * first block allocated (alignment probing finds data there; a
         * fixed vpc made by qemu-img maps so) */
        static const char zero[4096];
        ssize_t w = pwrite(s->fd, zero, size < sizeof(zero) ? size : sizeof(zero), 0);
        (void)w;
        return 0;
    }
    return prealloc_range(s->fd, old, size, prealloc, err, n->filename);
}

static int file_truncate(struct vbd_node *n, uint64_t size, bool exact, enum vbd_prealloc prealloc,
                         struct vbd_error **err)
{
    struct file_state *s = n->opaque;
    write_begin(s);
    int rc = truncate_fd(n, size, exact, prealloc, err);
    write_end(s);
    return rc;
}

static int64_t file_allocated(struct vbd_node *n)
{
    struct file_state *s = n->opaque;
    struct stat st;
    if (fstat(s->fd, &st) < 0)
        return -errno;
    return (int64_t)st.st_blocks * 512;
}

static const struct vbd_opt_desc file_create_opts[] = {
    {"size", VBD_OPT_SIZE, "Virtual disk size", NULL},
    {"preallocation", VBD_OPT_STRING, "Preallocation mode (allowed values: off, falloc, full)", "off"},
    {"nocow", VBD_OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)", NULL},
    {"extent_size_hint", VBD_OPT_SIZE, "Extent size hint for the image file, 0 to disable", NULL},
    {NULL, 0, NULL, NULL},
};

/* The hints QEMU's file driver gives a new, empty file (raw_co_create):
 * no copy-on-write (btrfs honours it only while the file is empty), and
 * an extent size hint (XFS allocates in extents of that size; QEMU sets
 * 1 MiB unless told otherwise). Both are optimisations a file system may
 * not have: failures are ignored, as QEMU ignores them, except a hint
 * given explicitly, which gets QEMU's warning. Given the emptied file,
 * between its truncation and its new size; true (a hint never fails the
 * create). */
static bool file_create_hints(int fd, bool nocow, uint64_t extent_size_hint, bool hint_given)
{
    int attr;
    if (nocow && ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
        attr |= FS_NOCOW_FL;
        (void)ioctl(fd, FS_IOC_SETFLAGS, &attr);
    }
    struct fsxattr xa;
    int rc = ioctl(fd, FS_IOC_FSGETXATTR, &xa);
    if (rc == 0) {
        xa.fsx_xflags |= FS_XFLAG_EXTSIZE;
        xa.fsx_extsize = (uint32_t)extent_size_hint;
        rc = ioctl(fd, FS_IOC_FSSETXATTR, &xa);
    }
    if (rc < 0 && hint_given && extent_size_hint)
        vbd_warn("Failed to set extent size hint: %s", strerror(errno));
    return true;
}

static int file_create(const char *filename, struct vbd_node *file, struct json_object *opts,
                       struct json_object *file_hints, struct vbd_error **err)
{
    (void)file_hints; /* a protocol's own options are in opts */
    uint64_t size = 0, extent_size_hint = 1024 * 1024;
    int prealloc = 0, hint_given = 0;
    bool nocow = false;
    char *pa = NULL;
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 || vbd_opt_take_str(opts, "preallocation", &pa, err) < 0 ||
        vbd_opt_take_bool(opts, "nocow", &nocow, err) < 0 ||
        (hint_given = vbd_opt_take_size(opts, "extent_size_hint", &extent_size_hint, err)) < 0) {
        free(pa);
        return -EINVAL;
    }
    for (int i = 0; pa && vbd_prealloc_names[i]; i++)
        if (!strcmp(pa, vbd_prealloc_names[i]))
            prealloc = i;
    /* QEMU's words (its enum parse, then its truncate's) */
    if (pa && strcmp(pa, vbd_prealloc_names[prealloc])) {
        vbd_error_setf(err, EINVAL, "invalid parameter value: %s", pa);
        free(pa);
        return -EINVAL;
    }
    free(pa);
    if (extent_size_hint > UINT32_MAX) { /* fsx_extsize is 32 bits */
        vbd_error_setf(err, EINVAL, "Extent size hint is too large");
        return -EINVAL;
    }
    int fd = open(filename, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        vbd_error_setf(err, errno, "Could not create '%s': %s", filename, strerror(errno));
        return -errno;
    }
    struct stat st;
    int rc = 0;
    /* Take the write lock like an open would: never truncate an image in use. */
    if (lock_byte(fd, LOCK_PERM_BASE + 1, F_RDLCK) == 0 && byte_locked_by_other(fd, LOCK_SHARED_BASE + 1)) {
        vbd_error_setf(err, EAGAIN, "Failed to get \"write\" lock: Is another process using the image [%s]?",
                       filename);
        rc = -EAGAIN;
    } else if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode) && prealloc != VBD_PREALLOC_METADATA) {
        rc = 0; /* devices keep their size */
    } else if (!S_ISBLK(st.st_mode) &&
               (ftruncate(fd, 0) < 0 || !file_create_hints(fd, nocow, extent_size_hint, hint_given > 0))) {
        vbd_error_setf(err, errno, "Could not resize '%s': %s", filename, strerror(errno));
        rc = -errno;
    } else if (prealloc == VBD_PREALLOC_METADATA) {
        /* refused by the truncate, as QEMU's raw_co_create: the file is
         * made and left empty */
        vbd_error_setf(err, ENOTSUP, "Unsupported preallocation mode: metadata");
        rc = -ENOTSUP;
    } else if (ftruncate(fd, size) < 0) {
        vbd_error_setf(err, errno, "Could not resize '%s': %s", filename, strerror(errno));
        rc = -errno;
    } else {
        rc = prealloc_range(fd, 0, size, prealloc, err, filename);
        /* As QEMU does: allocate the first block so O_DIRECT alignment
         * probing on the new image finds data (and maps match qemu-img's). */
        if (rc == 0 && prealloc == VBD_PREALLOC_OFF && size) {
            static const char zero[4096];
            ssize_t w = pwrite(fd, zero, size < 4096 ? size : 4096, 0);
            (void)w;
        }
    }
    close(fd);
    return rc;
}

static int file_refresh_size(struct vbd_node *n)
{
    struct file_state *s = n->opaque;
    if (s->is_chardev) {
        off_t end = lseek(s->fd, 0, SEEK_END);
        if (end < 0)
            return -errno;
        vbd_node_set_size(n, (uint64_t)end);
        return 0;
    }
    if (s->is_blockdev) {
        uint64_t size;
        if (ioctl(s->fd, BLKGETSIZE64, &size) < 0)
            return -errno;
        vbd_node_set_size(n, size);
        return 0;
    }
    /* A refresh comes from the caller's loop (file is multi-loop: the main
     * loop for SIGHUP, block_resize and reopen) while a format on an
     * iothread writes past the end there (grow_to, after its write is
     * done). A plain store of what fstat said could put back a size that
     * such a write raised after the fstat: the format then saw its file
     * shorter than the clusters it has just written (qcow2 reads a refcount
     * block past that end as zeroes). So the size changes only from the
     * value the fstat was taken against, and a write that raised it
     * meanwhile makes the refresh look again: its data is in the file by
     * then, the next fstat sees it. */
    uint64_t cur = vbd_node_size(n);
    for (;;) {
        struct stat st;
        if (fstat(s->fd, &st) < 0)
            return -errno;
        uint64_t now = file_length(st.st_size);
        if (now == cur)
            return 0;
        if (__atomic_compare_exchange_n(&n->size, &cur, now, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            break;
    }
    extent_forget(s);
    return 0;
}

#ifndef __NR_cachestat
#define __NR_cachestat 451 /* Linux 6.5; the same number on every architecture */
#endif
struct file_cachestat_range {
    uint64_t off, len;
};
struct file_cachestat {
    uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};

/* Whether every page of [off, off + bytes) of fd is in the page cache:
 * 1 yes, 0 no, -1 the kernel cannot say (before 6.5). One syscall and a
 * walk of the range's pages in the cache (a 1 MiB read: 256 entries). */
static int range_cached(int fd, uint64_t off, uint64_t bytes)
{
    static int unsupported;
    if (__atomic_load_n(&unsupported, __ATOMIC_RELAXED))
        return -1;
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    struct file_cachestat_range r = {off, bytes};
    struct file_cachestat cs;
    if (syscall(__NR_cachestat, fd, &r, &cs, 0) < 0) {
        if (errno == ENOSYS)
            __atomic_store_n(&unsupported, 1, __ATOMIC_RELAXED);
        return -1;
    }
    uint64_t pages = (off + bytes + page - 1) / page - off / page;
    return cs.nr_cache >= pages;
}

static int file_page_cache_fd(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    struct file_state *s = n->opaque;
    if (s->is_blockdev || s->is_chardev || (s->direct && !s->in_memory))
        return -1;
    /* A page that is not in memory would make the splice read the disk on
     * the server's loop thread (every other client of that loop waits);
     * the normal read goes through io_uring or the pool instead. Without
     * cachestat(2), only tmpfs is known to be memory. */
    int cached = range_cached(s->fd, off, bytes);
    return cached > 0 || (cached < 0 && s->in_memory) ? s->fd : -1;
}

static bool file_writes_inline(struct vbd_node *n)
{
    return writes_inline(n->opaque);
}

/* blockdev-reopen: a new open file description with the new access mode
 * and the locks that go with it takes the place of the old one under the
 * same fd number (requests on other loops keep using s->fd); closing the
 * old description drops its locks, so other programs see the change. */
static int file_reopen_rw(struct vbd_node *n, bool rw, struct vbd_error **err)
{
    struct file_state *s = n->opaque;
    int fd = open(n->filename, O_CLOEXEC | (rw ? O_RDWR : O_RDONLY) | (s->direct ? O_DIRECT : 0));
    if (fd < 0) {
        int e = errno;
        vbd_error_setf(err, e, "Could not reopen '%s' %s: %s", n->filename, rw ? "read-write" : "read-only",
                       strerror(e));
        return -e;
    }
    /* The old description's locks go first, not when the last reference to
     * it (an io_uring request still holding the file) is dropped, and
     * before the new ones are taken: a reader below a format unshares the
     * write that the new read-write description takes, and the check
     * cannot tell our own old description from another process. */
    unsigned perm = 0, shared = PERM_ALL;
    if (s->locked && s->by_users) {
        /* what it holds, and the write a format above will need for its
         * metadata; read-only, no writes or resizes (QEMU gives nobody
         * those on a read-only node) */
        if (rw)
            perm = s->perm | (s->meta_parents ? PERM_WRITE | PERM_RESIZE : 0);
        else
            perm = s->perm & ~(PERM_WRITE | PERM_WRITE_UNCHANGED | PERM_RESIZE);
        shared = s->shared;
    } else if (s->locked) {
        wanted_perms(rw && !s->write_unused, s->meta_parents, s->no_share, &perm, &shared);
    }
    if (s->locked) {
        set_locks(n, s->fd, s->perm, s->shared, 0, PERM_ALL, NULL);
        int rc = set_locks(n, fd, 0, PERM_ALL, perm, shared, err);
        if (rc < 0) {
            /* best effort: the old locks back (another process may have
             * taken what they exclude meanwhile) */
            set_locks(n, s->fd, 0, PERM_ALL, s->perm, s->shared, NULL);
            close(fd);
            return rc;
        }
    }
    if (dup3(fd, s->fd, O_CLOEXEC) < 0) {
        int e = errno;
        vbd_error_setf(err, e, "Could not reopen '%s': %s", n->filename, strerror(e));
        if (s->locked)
            set_locks(n, s->fd, 0, PERM_ALL, s->perm, s->shared, NULL);
        close(fd);
        return -e;
    }
    close(fd);
    if (s->locked) {
        s->perm = perm;
        s->shared = shared;
    }
    if (!rw)
        s->write_unused = false; /* read-write again: locked as opened, then as its users say */
    return 0;
}

/* blockdev-reopen cache.direct: O_DIRECT set on or cleared from the open
 * file description (fcntl F_SETFL: the same fd on every loop, its locks
 * untouched, no reopen by name of a file that may have been renamed),
 * then the alignment that goes with it, probed as at open (1 without).
 * Called with every request to the node drained: io.c reads the limits
 * and the read paths s->direct without a lock. QEMU's file-posix opens
 * the file again with the new flags; its words when that fails. */
static int file_reopen_direct(struct vbd_node *n, bool direct, struct vbd_error **err)
{
    struct file_state *s = n->opaque;
    if (s->direct == direct)
        return 0;
    int fl = fcntl(s->fd, F_GETFL);
    if (fl < 0 || fcntl(s->fd, F_SETFL, direct ? (fl | O_DIRECT) : (fl & ~O_DIRECT)) < 0) {
        int e = errno;
        vbd_error_setf(err, e, "Could not open '%s': %s", n->filename, strerror(e));
        return -e;
    }
    s->direct = direct;
    uint32_t a = direct ? direct_alignment(s) : 1;
    n->bl.request_alignment = a;
    n->bl.min_mem_alignment = direct ? a : 0; /* as a buffered open leaves it */
    return 0;
}

/* A format with metadata came above this node or went (vbd_open_child,
 * node close): it unshares writes and resizes, or gives them back. */
static int file_meta_parent(struct vbd_node *n, int delta, bool writes, struct vbd_error **err)
{
    struct file_state *s = n->opaque;
    if (delta < 0 && s->meta_parents == 0)
        return 0; /* not counted here (a parent repointed to another node) */
    unsigned count = (unsigned)((int)s->meta_parents + delta);
    if (s->locked && s->by_users) {
        unsigned perm, shared;
        wanted_perms(writes && !n->read_only, 1, s->no_share, &perm, &shared);
        if (delta > 0 && claim_locks(n, s, perm, shared, err) < 0)
            return -EAGAIN;
    } else if (s->locked) {
        unsigned perm, shared;
        wanted_perms(!n->read_only && !s->write_unused, count, s->no_share, &perm, &shared);
        int rc = set_locks(n, s->fd, s->perm, s->shared, perm, shared, err);
        if (rc < 0)
            return rc;
        s->perm = perm;
        s->shared = shared;
    }
    s->meta_parents = count;
    return 0;
}

/* Whether anything writes this read-write node now
 * (vbd_node_refresh_write_use): the write and resize locks follow, the
 * open file description stays read-write (QEMU keeps its fd too). */
static int file_write_use(struct vbd_node *n, bool written, struct vbd_error **err)
{
    struct file_state *s = n->opaque;
    if (s->by_users) {
        /* a read-write format about to write its metadata: the write
         * claimed (a raw parent writes only for its users, who take their
         * locks themselves) */
        if (s->locked && written && s->meta_parents &&
            claim_locks(n, s, PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE,
                        PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED, err) < 0)
            return -EAGAIN;
        return 0;
    }
    if (s->write_unused == !written)
        return 0;
    if (s->locked) {
        unsigned perm, shared;
        wanted_perms(written, s->meta_parents, s->no_share, &perm, &shared);
        int rc = set_locks(n, s->fd, s->perm, s->shared, perm, shared, err);
        if (rc < 0)
            return rc;
        s->perm = perm;
        s->shared = shared;
    }
    s->write_unused = !written;
    return 0;
}

static const struct vbd_driver file_driver;

/* The daemon's users of a node locked by them: QEMU's raw_handle_perm_lock */
bool vbd_file_lock_perm(struct vbd_node *n, unsigned *perm, unsigned *shared)
{
    struct file_state *s = n->opaque;
    if (n->drv != &file_driver || !s->locked || !s->by_users)
        return false;
    *perm = s->perm;
    *shared = s->shared;
    return true;
}

int vbd_file_set_lock_perm(struct vbd_node *n, unsigned perm, unsigned shared, struct vbd_error **err)
{
    struct file_state *s = n->opaque;
    if (n->drv != &file_driver || !s->locked || !s->by_users)
        return 0;
    perm &= PERM_ALL;
    shared &= PERM_ALL;
    int rc = set_locks(n, s->fd, s->perm, s->shared, perm, shared, err);
    if (rc == 0) {
        s->perm = perm;
        s->shared = shared;
    }
    return rc;
}

static const struct vbd_driver file_driver = {
    .name = "file",
    .kind = VBD_DRV_PROTOCOL,
    .state_size = sizeof(struct file_state),
    .refresh_size = file_refresh_size,
    .caps = VBD_DRV_CAP_MULTI_LOOP,
    .open = file_open,
    .close = file_close,
    .co_preadv = file_preadv,
    .co_pwritev = file_pwritev,
    .co_flush = file_flush,
    .co_pdiscard = file_pdiscard,
    .co_pwrite_zeroes = file_pwrite_zeroes,
    .co_block_status = file_block_status,
    .page_cache_fd = file_page_cache_fd,
    .writes_inline = file_writes_inline,
    .co_truncate = file_truncate,
    .get_allocated_size = file_allocated,
    .create_opts = file_create_opts,
    .co_create = file_create,
    .reopen_rw = file_reopen_rw,
    .reopen_direct = file_reopen_direct,
    .meta_parent = file_meta_parent,
    .write_use = file_write_use,
};
VBD_DRIVER_REGISTER(file, file_driver);
