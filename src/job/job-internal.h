/* SPDX-License-Identifier: MIT */
/* Shared by the job drivers (src/job/). */
#ifndef VBD_JOB_INTERNAL_H
#define VBD_JOB_INTERNAL_H

#include "vbd/job.h"

/* A job copies in chunks of this size, one at a time (the guest's requests
 * interleave between chunks; a chunk bounds the memory and the latency a
 * guest write waits behind a locked range). */
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

#endif
