/* SPDX-License-Identifier: MIT */
#ifndef VBD_IMAGEOPS_H
#define VBD_IMAGEOPS_H

/*
 * Whole-image operations on open nodes: copy a range, commit a chain into
 * its base, the data copy of a safe rebase, and convert's copy loop over a
 * concatenation of sources. vbd-img's commit, rebase and convert are thin
 * wrappers around them. The daemon's block jobs copy with loops of their
 * own (src/job/: they interleave with the guest's writes) and share only
 * struct vbd_imageops_ctl for their progress and cancellation.
 *
 * Every function here runs in a coroutine on the home loop of the nodes it
 * is given (block.h, "Concurrency contract"), takes nodes, never file
 * names, and prints nothing: a failure returns -errno and fills *err with
 * what failed, on which node, at which offset. None of them flushes: the
 * caller decides when the target must be durable.
 *
 * Control: a caller that wants progress, cancellation or a say between
 * chunks passes a struct vbd_imageops_ctl (or NULL for none).
 */

#include <stdbool.h>
#include <stdint.h>

struct vbd_node;
struct vbd_error;

#define VBD_IMAGEOPS_CHUNK_DEFAULT (2u * 1024 * 1024)

/* How data is read and written. Zero-initialised: 2 MiB chunks, data
 * written as read, ranges the source reports as zeroes written as
 * write-zeroes requests without flags. */
struct vbd_copy_opts {
    uint64_t chunk_size;    /* bytes per read and write request (multiple of 512, <= 64 MiB); 0: VBD_IMAGEOPS_CHUNK_DEFAULT */
    /* All-zero data is looked for in runs of this many bytes (multiple of
     * 512, <= chunk_size), and such runs are written as zeroes instead of
     * data (qemu-img's -S). 0: data is written as read. */
    uint64_t zero_detect;
    bool target_is_zero;    /* the target reads as zeroes: zero ranges are not written at all */
    /* vbd_co_convert only: the target has a backing file (qemu-img -B):
     * what a source's top layer does not allocate is not written (the
     * backing file is taken to hold it, as qemu-img takes it) */
    bool target_has_backing;
    /* with target_has_backing: the backing file's size. Past it the target
     * reads as zeroes without it, and zero ranges are not written there
     * (qemu-img's post-allocated range) */
    uint64_t target_backing_size;
    unsigned zero_flags;    /* flags of write-zeroes requests (VBD_REQ_MAY_UNMAP) */
    /* flags of data writes (VBD_REQ_FUA, VBD_REQ_COMPRESSED). With
     * VBD_REQ_COMPRESSED every cluster of data is written whole
     * (cluster_size bytes, aligned) and an all-zero cluster is left out
     * when zero_detect is set, as qemu-img convert -c does. */
    unsigned write_flags;
    /* flags of data reads: VBD_REQ_INLINE for a caller that copies one
     * chunk at a time (vbd-img commit): a read from the page cache is
     * copied on its thread instead of waiting for the pool to copy it
     * (vbd_co_commit_layers, vbd_co_copy_range; vbd_co_rebase_safe: the
     * reads of the old and the new backing file) */
    unsigned read_flags;
    uint64_t cluster_size;  /* the target's cluster size; needed with VBD_REQ_COMPRESSED (<= chunk_size);
                             * convert's chunks end on its boundaries (0: anywhere) */
    /* vbd_co_convert only: coroutines copying at once (qemu-img -m; 0: 8)
     * and whether writes may land out of order (-W). */
    unsigned parallel;
    bool out_of_order;
    /* vbd_co_convert only: > 1 copies on this many threads (the caller's
     * loop and threads - 1 loops of its own; with a mapped source, threads
     * loops of its own while the caller's maps), one chunk at a time on each,
     * read (VBD_REQ_INLINE), scanned and written by one thread, out of
     * order; parallel only caps it. For sources and a target whose chains
     * are multi-loop (vbd_node_chain_multi_loop; a source may instead be
     * one vbd_convert_source_mapped accepts) and whose copies are made
     * on the calling thread (a page-cache or tmpfs target, inline writes):
     * anything else would hop to a home loop or the pool per request.
     * Ignored with a chunk_done callback (it would run on those threads)
     * and when a chain is neither multi-loop nor mapped. */
    unsigned threads;
    /* vbd_co_convert only (qemu-img --salvage): a source range that cannot
     * be read is read again sector by sector, and a sector that still
     * fails reads as zeroes; a block status that fails is asked again over
     * a quarter of the range, down to one sector, which is then read as
     * data. Each sector given up is warned about on stderr unless quiet
     * (qemu-img's warnings). Single-threaded (threads is ignored). */
    bool salvage;
    bool quiet;
    /* data (what block status does not call zero or unallocated) is
     * written as read, never scanned for zeroes (qemu-img convert -C, whose
     * copy offloading copies it byte for byte); zero_detect then only
     * decides whether zero ranges are written as zeroes */
    bool data_verbatim;
    /* The ctl's progress counts only what qemu-img's -p counts. Convert:
     * the bytes copied as data (with zero_detect 0, the zeroes written
     * too), not the whole size: a walk over the sources' block status
     * before the copy adds their sum to total, and a range not copied as
     * data (zeroes, what the target's backing file holds) is reported to
     * chunk_done without adding to current. Rebase (safe): the ranges the
     * image does not allocate (those compared); total stays the size. */
    bool progress_data_only;
};

struct vbd_imageops_ctl;
/* Called after every unit of work (a chunk copied, a range found to need
 * nothing), in the operation's coroutine (vbd_co_convert: in the worker
 * that did the chunk, so calls may overlap when one yields), with the
 * progress already counted. off is where the unit starts (in the target);
 * written is how many of its bytes were written to the target (0 for a
 * skipped range), for a rate limit. It may yield (a job pauses or sleeps
 * here) and may set the cancel flag. A negative return stops the
 * operation with that error. */
typedef int vbd_imageops_chunk_fn(struct vbd_imageops_ctl *ctl, uint64_t off, uint64_t written);

struct vbd_imageops_ctl {
    /* Progress in bytes. An operation adds its size to total when it starts
     * and the bytes it has dealt with to current as it goes (never
     * decreasing), so one ctl can count several operations of a job.
     * Written by the operation's coroutine; another thread reads them with
     * vbd_imageops_progress(). */
    uint64_t current, total;
    /* Set with vbd_imageops_cancel() (from any thread, or from chunk_done):
     * checked before every chunk; the operation then returns -ECANCELED,
     * having finished the chunk in flight, so every image stays consistent
     * (a partly committed base still lies under the unchanged top; a partly
     * rebased image still has its old backing file). */
    bool cancel;
    vbd_imageops_chunk_fn *chunk_done; /* NULL: none */
    void *opaque;                      /* for chunk_done */
};

static inline void vbd_imageops_cancel(struct vbd_imageops_ctl *ctl) { __atomic_store_n(&ctl->cancel, true, __ATOMIC_RELAXED); }
static inline void vbd_imageops_progress(const struct vbd_imageops_ctl *ctl, uint64_t *current, uint64_t *total)
{
    *current = __atomic_load_n(&ctl->current, __ATOMIC_RELAXED);
    *total = __atomic_load_n(&ctl->total, __ATOMIC_RELAXED);
}

/* Copy [off, off + bytes) of src to the same range of dst, chunk by chunk. */
int vbd_co_copy_range(struct vbd_node *src, struct vbd_node *dst, uint64_t off, uint64_t bytes,
                      const struct vbd_copy_opts *opts, struct vbd_imageops_ctl *ctl, struct vbd_error **err);

/* Commit: write into base what layers[0..n-1] define (layers[0] the top,
 * each the backing of the one before, the last right above base), over the
 * top's size: for every range the topmost layer that allocates it decides
 * its content (data, or zeroes written as write-zeroes). Each layer's own
 * allocation is asked (block status without its backing), so the layers
 * may be opened on their own (vbd-img opens them without their chains, so
 * that no read-only backing child locks the base against writing). base
 * grows to the top's size first if it is smaller. The layers are not
 * changed: emptying the top (vbd-img) or dropping the layers from the
 * chain (a job) is the caller's part. */
int vbd_co_commit_layers(struct vbd_node *const *layers, int nlayers, struct vbd_node *base,
                         const struct vbd_copy_opts *opts, struct vbd_imageops_ctl *ctl, struct vbd_error **err);
/* The same over a linked chain: the layers are top, top->backing, ... down
 * to the node whose backing is base (-EINVAL if base is not in the chain). */
int vbd_co_commit(struct vbd_node *top, struct vbd_node *base, const struct vbd_copy_opts *opts,
                  struct vbd_imageops_ctl *ctl, struct vbd_error **err);

/* The data part of a safe rebase of node from old_backing onto
 * new_backing (either may be NULL: reads as zeroes; both read as zeroes
 * past their ends): every 512-byte sector that node does not allocate
 * itself and where the two backings differ gets old_backing's data, so
 * that node reads the same afterwards. Changing the backing file in the
 * header is the caller's next step (node->drv->change_backing_file). */
int vbd_co_rebase_safe(struct vbd_node *node, struct vbd_node *old_backing, struct vbd_node *new_backing,
                       const struct vbd_copy_opts *opts, struct vbd_imageops_ctl *ctl, struct vbd_error **err);

/* Convert's copy loop: the concatenation of src[0..nsrc-1] (each read
 * through its whole backing chain) is written to dst from offset 0, by
 * opts->parallel coroutines, using block status to skip holes and zero
 * ranges. dst must be at least as large as the sum of the sources. */
int vbd_co_convert(struct vbd_node *const *src, int nsrc, struct vbd_node *dst, const struct vbd_copy_opts *opts,
                   struct vbd_imageops_ctl *ctl, struct vbd_error **err);
/* Whether a threaded vbd_co_convert can copy from src although its chain
 * is not multi-loop (a qcow2 image): every node of it is read-only and
 * locked against other writers (not VBD_OPEN_FORCE_SHARE), so the map its
 * block status gives stays true while the copy runs. Such a source is
 * mapped on its home loop, a window of extents at a time, and its data
 * clusters are read from its file on the copying threads. */
bool vbd_convert_source_mapped(struct vbd_node *src);

#endif
