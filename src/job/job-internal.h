/* SPDX-License-Identifier: MIT */
/* Shared by the job drivers (src/job/). */
#ifndef VBD_JOB_INTERNAL_H
#define VBD_JOB_INTERNAL_H

#include "vbd/job.h"

/* A job copies in chunks of this size, one at a time (the guest's requests
 * interleave between chunks; a chunk bounds the memory and the latency a
 * guest write waits behind a locked range), through a buffer of huge pages
 * (vbd_alloc_transfer_buffer): with cache.direct=on a 512 KiB request from
 * 4 KiB pages is 128 descriptors a virtio disk's host serves one by one,
 * from a huge page it is one. */
#define JOB_CHUNK (512 * 1024)

/* Copy [off, off + bytes) of src into the same range of dst (write-zeroes
 * when zero), applying the job's error policy: 0 when done or ignored
 * (*ignored keeps the first ignored error), -errno to fail the job, 1 when
 * the policy stopped the job: the caller unlocks, passes its pause point
 * (until job-resume) and tries the range again. */
int job_copy_range(struct vbd_job *job, struct vbd_node *src, struct vbd_node *dst, uint64_t off, uint64_t bytes,
                   bool zero, void *buf, int *ignored);

/* The node whose backing is n, or NULL. */
struct vbd_node *job_overlay_of(struct vbd_node *n);

/* The mirroring loop (mirror.c) of blockdev-mirror and active commit: a
 * dirty bitmap on src fed by its writes, chunks copied to target several at
 * a time, READY once in sync, then on until job-complete or a cancel. */
struct job_mirror;
struct job_mirror_opts {
    struct vbd_node *src, *target;
    struct vbd_node *base;   /* block status stops there: what it provides is not copied (NULL: whole chain) */
    uint64_t granularity, buf_size; /* 0: 64 KiB, 16 MiB */
    bool initial_copy;       /* everything is dirty at the start (else only what is written from now on) */
    bool target_new;         /* the target reads zeroes already (a new image): only data needs copying */
    bool top_unbacked;       /* sync=top of a node without a backing file (QEMU copies what it allocates, zeroes nothing) */
    bool unmap;              /* zero ranges may deallocate on the target */
    bool write_blocking;     /* guest writes reach the target before they complete */
};
/* The nodes are borrowed: the caller holds them until job_mirror_free. */
struct job_mirror *job_mirror_new(struct vbd_job *job, const struct job_mirror_opts *o);
/* The job's run: 0 (READY and completed, or cancelled in READY) or -errno. */
int job_mirror_run(struct job_mirror *m);
void job_mirror_complete(struct job_mirror *m);
/* The job's pause point (its driver's pause): the copies in flight end. */
void job_mirror_pause(struct job_mirror *m);
/* In prepare, with src's writers drained: the last dirty chunks, target flushed. */
int job_mirror_sync_last(struct job_mirror *m);
/* No more tracking of src's writes (coroutine: waits for writes inside the hook). */
void job_mirror_stop_tracking(struct job_mirror *m);
void job_mirror_free(struct job_mirror *m);

/* filter-node-name (filter.c): a named filter node above top while the
 * job runs, which every export and parent of top moves onto. */
enum job_filter_kind { JOB_FILTER_STREAM, JOB_FILTER_COMMIT, JOB_FILTER_MIRROR, JOB_FILTER_BACKUP };
/* name NULL: nothing inserted, 0. Else 0 with *out the filter (the job's
 * reference), or -1 with QEMU's error. stream: bottom is copy-on-read's.
 * Main loop, coroutine; drains the exports over top meanwhile. */
int job_filter_insert(enum job_filter_kind kind, struct vbd_node *top, const char *name, const char *bottom,
                      struct vbd_node **out, struct vbd_qmp_error *err);
/* Its parents and exports go back to its file, the node is closed and
 * *filter NULL. job_filter_drop: the caller has drained them (a job's
 * prepare, before its own graph change); job_filter_co_remove drains. */
void job_filter_drop(struct vbd_node **filter);
void job_filter_co_remove(struct vbd_node **filter);

#endif
