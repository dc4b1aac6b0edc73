/* SPDX-License-Identifier: MIT */
#ifndef VBD_CBW_H
#define VBD_CBW_H

/*
 * Copy-before-write (QEMU's block/copy-before-write.c + block-copy): a
 * point-in-time image of `source` kept in `target`. Every cluster starts
 * "to copy"; a write to the source first copies the old data of the
 * clusters it touches that are still to copy into the target (once: a
 * second writer, or the backup job, waits for a copy in flight instead of
 * copying again), and waits for point-in-time reads of those clusters
 * from the source to end. Whatever was copied is read from the target,
 * the rest from the source: that is the image at the start.
 *
 * Used by the copy-before-write filter driver (snapshot-access reads it:
 * image fleecing) and by the backup job (its copy loop shares the state,
 * and the guest's writes reach it through the source's write hook).
 *
 * Threads: the state lives on the loop that created it (vbd_cbw_new: the
 * main loop, where the filter node is opened and the backup job runs).
 * The co_ calls move their coroutine there and back, so they may come from
 * any loop (a guest write on an iothread); the other calls run on that
 * loop (asserted where they change or walk the bits: next, todo, forget).
 */
#include <stdbool.h>
#include <stdint.h>

#include "vbd/block.h"
#include "vbd/iov.h"

struct vbd_cbw;
struct vbd_dirty_bitmap;

/* cluster: power of two. bitmap: only its dirty clusters are to copy (NULL: all). */
struct vbd_cbw *vbd_cbw_new(struct vbd_node *source, struct vbd_node *target, uint64_t cluster,
                            struct vbd_dirty_bitmap *bitmap);
/* Waits (coroutine) for the copies and reads in flight. */
void vbd_cbw_free(struct vbd_cbw *c);
/* QEMU's default: max(64 KiB, the target's cluster size). */
uint64_t vbd_cbw_default_cluster(struct vbd_node *target);
uint64_t vbd_cbw_cluster(struct vbd_cbw *c);

/* A guest write to [off, off + bytes) of the source is about to happen.
 * 0, or -errno when a copy failed (the target is then incomplete). */
int vbd_cbw_co_before_write(struct vbd_cbw *c, uint64_t off, uint64_t bytes);
/* The job: copy what is still to copy in [off, off + bytes); *copied gets
 * the bytes it copied itself (0: done already, or nothing to copy). With
 * skip_unallocated (sync=top), clusters the source's top layer does not
 * define are dropped from the copy instead. */
int vbd_cbw_co_copy(struct vbd_cbw *c, uint64_t off, uint64_t bytes, bool skip_unallocated, uint64_t *copied);
/* First cluster still to copy at or after off: its offset, or false. */
bool vbd_cbw_next(struct vbd_cbw *c, uint64_t *off);
/* Bytes still to copy. */
uint64_t vbd_cbw_remaining(struct vbd_cbw *c);
/* Bytes still to copy in the clusters of [off, off + bytes). */
uint64_t vbd_cbw_todo_bytes(struct vbd_cbw *c, uint64_t off, uint64_t bytes);
/* Is the cluster at off still to copy (read from the source)? */
bool vbd_cbw_todo(struct vbd_cbw *c, uint64_t off);
/* Drop [off, off + bytes) from what is to copy (sync=top's unallocated, snapshot-access discard). */
void vbd_cbw_forget(struct vbd_cbw *c, uint64_t off, uint64_t bytes);
/* Read the point-in-time image. */
int vbd_cbw_co_snapshot_read(struct vbd_cbw *c, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff);
/* A copy failed with on-cbw-error=break-snapshot: reads of the image fail with it. */
int vbd_cbw_snapshot_error(struct vbd_cbw *c);
void vbd_cbw_set_break_snapshot(struct vbd_cbw *c, bool on);
/* The first error of a copy for a guest write (0: none): the backup job
 * fails with it. The job's own copies return theirs (its error policy). */
int vbd_cbw_copy_error(struct vbd_cbw *c);
/* Did the last failed copy fail reading the source (else writing the target)? */
bool vbd_cbw_last_error_read(struct vbd_cbw *c);
/* cbw-timeout: a guest write's copy that takes longer than ns fails with
 * -ETIMEDOUT (the copy goes on; vbd_cbw_free waits for it). 0: no limit. */
void vbd_cbw_set_timeout_ns(struct vbd_cbw *c, uint64_t ns);
/* Write the copies compressed (the target lists VBD_REQ_COMPRESSED). */
void vbd_cbw_set_compress(struct vbd_cbw *c, bool on);

/* The state of a copy-before-write filter node, or NULL (not one). */
struct vbd_cbw *vbd_cbw_of_node(struct vbd_node *n);
/* The "target" child of a copy-before-write filter node, or NULL (not one). */
struct vbd_node *vbd_cbw_node_target(struct vbd_node *n);

#endif
