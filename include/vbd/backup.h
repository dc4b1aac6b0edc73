/* SPDX-License-Identifier: MIT */
#ifndef VBD_BACKUP_H
#define VBD_BACKUP_H

/* The backup job (QEMU's block/backup.c): blockdev-backup / drive-backup. */
#include "vbd/job.h"

struct vbd_dirty_bitmap;

enum vbd_backup_sync { VBD_BACKUP_FULL, VBD_BACKUP_TOP, VBD_BACKUP_NONE, VBD_BACKUP_BITMAP };
enum vbd_bitmap_sync_mode { VBD_BITMAP_SYNC_ON_SUCCESS, VBD_BITMAP_SYNC_NEVER, VBD_BITMAP_SYNC_ALWAYS };

struct vbd_backup_opts {
    enum vbd_backup_sync sync;
    struct vbd_dirty_bitmap *bitmap; /* NULL: none */
    /* or a persistent (qcow2) bitmap, the driver's: the node that holds it
     * and its name (QEMU loads those as in-memory bitmaps; vbd leaves them
     * with their driver and changes them through co_bitmap_change) */
    struct vbd_node *persistent_node;
    const char *persistent_name;
    enum vbd_bitmap_sync_mode bitmap_mode;
    bool compress;
    uint64_t speed;
    enum vbd_on_error on_source_error, on_target_error;
    bool auto_finalize, auto_dismiss;
    int max_workers; /* chunks in flight (x-perf.max-workers); 0: the default */
    const char *filter_node_name; /* a copy-before-write node of that name above source while the job runs */
    struct vbd_job_txn *txn;      /* completion-mode=grouped: the job's group, or NULL */
};

/* A point-in-time copy of source into target (same size), taken when the
 * job is created: the guest's writes to the source first save the old data
 * into the target. QMP's checks are the caller's. The job is created, not started (a transaction's prepare: the point in
 * time is now; vbd_job_start in its commit, or vbd_job_cancel_unstarted in
 * its abort, which leaves nothing behind). */
struct vbd_job *vbd_backup_create(const char *job_id, struct vbd_node *source, struct vbd_node *target,
                                  const struct vbd_backup_opts *o, struct vbd_qmp_error *err);

/* Is j a backup job whose source is n? (Another backup of n may start:
 * each hooks n's writes, as QEMU stacks their copy-before-write nodes.) */
bool vbd_backup_job_reads(struct vbd_job *j, struct vbd_node *n);

/* Does a backup job use n's persistent bitmap `name`? (busy: QMP refuses
 * to change it, as QEMU's frozen bitmap) */
bool vbd_backup_uses_persistent_bitmap(struct vbd_node *n, const char *name);

#endif
