/* SPDX-License-Identifier: MIT */
#ifndef VBD_JOB_H
#define VBD_JOB_H

/*
 * Block jobs (QEMU's qapi/job.json): long-running coroutines on the main
 * loop (the nodes' home) that copy between nodes while the guest runs,
 * with QEMU's state machine, verbs, events, rate limit and error policy.
 *
 * A job is a driver (DESIGN.md pattern 10): `run` copies with pause and
 * cancel points; prepare/commit/abort/clean make the graph change at the
 * end, in QEMU's order. Everything here runs on the main loop: the job's
 * coroutine and the QMP handlers; graph changes hold the QMP dispatch lock
 * (vbd_qmp_graph_lock), so a command never sees half a change. The job
 * core's entry points assert it (vbd_thread_is_main). A job's nodes may
 * live on an iothread: its requests hop there in io.c and come back, and
 * the guest's writes on that iothread reach the job's bookkeeping by
 * moving to the main loop (the tracker and the copy-before-write state do).
 */
#include <stdbool.h>
#include <stdint.h>

#include "vbd/block.h"
#include "vbd/imageops.h"
#include "vbd/loop.h"

struct vbd_error;
struct vbd_qmp_error;
struct json_object;

enum vbd_job_status {
    VBD_JOB_UNDEFINED, VBD_JOB_CREATED, VBD_JOB_RUNNING, VBD_JOB_PAUSED, VBD_JOB_READY, VBD_JOB_STANDBY,
    VBD_JOB_WAITING, VBD_JOB_PENDING, VBD_JOB_ABORTING, VBD_JOB_CONCLUDED, VBD_JOB_NULL, VBD_JOB_STATUS_NR
};
enum vbd_job_verb { VBD_VERB_CANCEL, VBD_VERB_PAUSE, VBD_VERB_RESUME, VBD_VERB_SET_SPEED, VBD_VERB_COMPLETE,
                    VBD_VERB_FINALIZE, VBD_VERB_DISMISS, VBD_VERB_NR };
/* BlockdevOnError */
enum vbd_on_error { VBD_ON_ERROR_REPORT, VBD_ON_ERROR_IGNORE, VBD_ON_ERROR_ENOSPC, VBD_ON_ERROR_STOP, VBD_ON_ERROR_AUTO };
enum vbd_error_action { VBD_ACTION_REPORT, VBD_ACTION_IGNORE, VBD_ACTION_STOP };

struct vbd_job;
/* An edge of the job's part of the graph (x-debug-query-block-graph):
 * parent NULL: the job itself holds child; else an edge of the job's
 * filter node that vbd's graph has no child for. perm and shared are
 * QEMU's BLK_PERM_* bits (consistent-read 1, write 2, write-unchanged 4,
 * resize 8). */
typedef void vbd_job_edge_fn(void *opaque, struct vbd_node *parent, const char *name, struct vbd_node *child,
                             unsigned perm, unsigned shared);
struct vbd_job_driver {
    const char *type; /* JobType: "stream", "commit" */
    /* A job on no block device (QEMU's Job, not BlockJob: blockdev-create,
     * x-blockdev-amend): no BLOCK_JOB_* events, not in query-block-jobs,
     * not found by the block-job-* verbs. */
    bool plain;
    /* The copy. 0 or -errno (-ECANCELED when cancelled), *err may say why. */
    int (*run)(struct vbd_job *job, struct vbd_error **err);
    /* job-complete on a READY job (NULL: the verb is refused). */
    void (*complete)(struct vbd_job *job);
    /* Graph change at the end of a successful run (drained, graph lock held). */
    int (*prepare)(struct vbd_job *job, struct vbd_error **err);
    void (*commit)(struct vbd_job *job);
    void (*abort)(struct vbd_job *job);
    void (*clean)(struct vbd_job *job);
    void (*free)(struct vbd_job *job); /* the driver's part of the job */
    /* Does the job use n (busy for another job / blockdev-del)? */
    bool (*uses_node)(struct vbd_job *job, struct vbd_node *n);
    /* The nodes it holds, as QEMU's block_job_add_bdrv lists them (in
     * the order QEMU's job->nodes list has them: the newest first). NULL:
     * the graph shows the job without edges. */
    void (*graph_edges)(struct vbd_job *job, vbd_job_edge_fn *edge, void *opaque);
    /* The block backends QEMU's job makes for itself (mirror's on its
     * target): each one's "root" edge (parent NULL). NULL: none. */
    void (*graph_backends)(struct vbd_job *job, vbd_job_edge_fn *edge, void *opaque);
    /* Does the job write to n (its target: blockdev-reopen cannot make it
     * read-only meanwhile, as QEMU's job holds the write permission)? */
    bool (*writes_node)(struct vbd_job *job, struct vbd_node *n);
    /* At a pause point, before the job parks: the requests it has in
     * flight in coroutines of its own end first (QEMU's .pause), so that a
     * paused job does no I/O at all. NULL: the job's coroutine is its only
     * one (stream, commit). */
    void (*pause)(struct vbd_job *job);
    /* Its nodes cannot change thread while it runs (x-blockdev-set-iothread
     * of one of them refused with qsd's "Cannot change iothread of active
     * block backend"): QEMU's job holds BlockBackends of its own there that
     * do not follow a move (a commit's, not a mirror's). Otherwise a move
     * of one of its nodes takes all of them along. */
    bool nodes_stay;
};

struct vbd_job {
    const struct vbd_job_driver *drv;
    char *id; /* as given, however long (QEMU keeps it whole) */
    enum vbd_job_status status;
    bool auto_finalize, auto_dismiss;
    int pause_count; /* the user's pause and the error policy's stop (query-block-jobs' "paused") */
    bool user_paused;
    /* Drained sections of its nodes (vbd_job_drain_pause): the job stops at
     * its next pause point; `drain_pauses` shows it paused (QEMU's drains
     * do: JOB_STATUS_CHANGE paused/standby and back), `quiet_pauses` does
     * not (vbd's own drains that QEMU has not: bitmap changes). */
    int drain_pauses, quiet_pauses;
    bool at_pause;   /* parked in a pause point, its requests all ended */
    bool pause_shown; /* its status shows the pause (paused/standby), pause_was before it */
    enum vbd_job_status pause_was;
    bool busy;
    bool cancelled, force_cancel;
    bool run_done;   /* run returned; the job waits in waiting/pending or ended */
    bool iostatus_failed;
    bool iostatus_nospace; /* the failure was ENOSPC: io-status 'nospace' */
    uint64_t speed;  /* bytes/s, 0 = unlimited */
    uint64_t rl_start_ns, rl_bytes;
    struct vbd_imageops_ctl ctl; /* progress (current/total) */
    int ret;
    char error[512];  /* set when ret < 0 */
    enum vbd_on_error on_error;        /* reads (on-source-error), and writes unless: */
    enum vbd_on_error on_target_error; /* writes (mirror's on-target-error; = on_error by default) */
    struct vbd_co *co;
    bool parked;      /* yielded in a sleep or a pause; a kick wakes it */
    struct vbd_timer timer;
    struct vbd_job *next;
    void *opaque;     /* the driver's */
    /* Kept while referenced (vbd_job_ref): its coroutine until it returns,
     * a transaction action from prepare to clean; a dismissed job stays
     * readable (status null) until the last reference goes. */
    int refs;
    bool completed;  /* its end taken in hand (by its own coroutine or its group's abort) */
    struct vbd_job_txn *txn; /* completion-mode=grouped: the group, or NULL */
    uint64_t created;        /* vbd_graph_user_seq at its creation */
    struct vbd_job *txn_next;
};

extern const char *const vbd_job_status_names[VBD_JOB_STATUS_NR];

/* Creation: registers the job (status created, event) with a checked id;
 * NULL with QEMU's error. The caller fills opaque, then starts it. */
struct vbd_job *vbd_job_create(const struct vbd_job_driver *drv, const char *id, bool auto_finalize,
                               bool auto_dismiss, uint64_t speed, enum vbd_on_error on_error, struct vbd_qmp_error *err);
void vbd_job_start(struct vbd_job *job);
/* A job refused after its creation (as QEMU's job_early_fail): null, freed. */
void vbd_job_early_fail(struct vbd_job *job);
/* A transaction's backup action (QEMU's job_cancel_sync on a job its
 * prepare created and nothing started): aborting, concluded, null, no
 * BLOCK_JOB_* event, the driver's abort and clean run. A job already gone
 * (its group aborted it) is left alone. */
void vbd_job_cancel_unstarted(struct vbd_job *job);
void vbd_job_ref(struct vbd_job *job);
void vbd_job_unref(struct vbd_job *job);

/* completion-mode=grouped (QEMU's JobTxn): the jobs of a group wait for
 * each other (waiting) and go pending and are finalized together; if one
 * fails or is cancelled, the others are cancelled and all abort. */
struct vbd_job_txn;
struct vbd_job_txn *vbd_job_txn_new(void);
void vbd_job_txn_unref(struct vbd_job_txn *txn);
/* A job just created joins the group (before it starts). */
void vbd_job_txn_add(struct vbd_job_txn *txn, struct vbd_job *job);

struct vbd_job *vbd_job_find(const char *id);
struct vbd_job *vbd_job_next(struct vbd_job *prev);
/* The job that uses n, or NULL. */
struct vbd_job *vbd_job_using_node(struct vbd_node *n);
/* The job that writes to n, or NULL. */
struct vbd_job *vbd_job_writing_node(struct vbd_node *n);

/* In run: */
bool vbd_job_is_cancelled(struct vbd_job *job);     /* force cancel: stop now */
bool vbd_job_cancel_requested(struct vbd_job *job); /* any cancel (a soft one in READY completes without pivot) */
/* A pause is asked for (the user's, an error stop or a drained section):
 * start no new request; the next pause point stops. */
bool vbd_job_should_pause(const struct vbd_job *job);
void vbd_job_pause_point(struct vbd_job *job);
/* Sleep (with pause and cancel points), then the rate limit for `written` bytes. */
void vbd_job_sleep_ns(struct vbd_job *job, uint64_t ns);
void vbd_job_ratelimit(struct vbd_job *job, uint64_t written);
/* Yield until kicked (a write, complete, cancel, pause). */
void vbd_job_wait(struct vbd_job *job);
void vbd_job_kick(struct vbd_job *job);
void vbd_job_transition_ready(struct vbd_job *job);
/* An I/O error: the action by on_error (BLOCK_JOB_ERROR sent); STOP pauses the job. */
enum vbd_error_action vbd_job_error_action(struct vbd_job *job, bool is_read, int error);

/* Verbs (QMP handlers, graph lock held). 0 or -1 with *err. */
int vbd_job_user_pause(struct vbd_job *job, struct vbd_qmp_error *err);
int vbd_job_user_resume(struct vbd_job *job, struct vbd_qmp_error *err);
int vbd_job_user_cancel(struct vbd_job *job, bool force, struct vbd_qmp_error *err);
int vbd_job_complete(struct vbd_job *job, struct vbd_qmp_error *err);
int vbd_job_finalize(struct vbd_job *job, struct vbd_qmp_error *err);
int vbd_job_dismiss(struct vbd_job *job, struct vbd_qmp_error *err);
int vbd_job_set_speed(struct vbd_job *job, int64_t speed, struct vbd_qmp_error *err);

/* Drained sections (QEMU's child_job drained_begin/poll/end): a drain of
 * one of the job's nodes pauses it; co_drain_wait returns once it does no
 * I/O (parked at a pause point with its requests ended, or its run over,
 * or never started); drain_resume lets it go on. quiet: the status stays
 * as it is (no event). A job the caller's own coroutine runs is never
 * waited for. Main loop; wait in a coroutine. */
void vbd_job_drain_pause(struct vbd_job *job, bool quiet);
void vbd_job_co_drain_wait(struct vbd_job *job);
void vbd_job_drain_resume(struct vbd_job *job, bool quiet);
/* Is the job running its copy now (started, its run not over)? */
bool vbd_job_is_running_copy(const struct vbd_job *job);

/* JobInfo and BlockJobInfo. */
struct json_object *vbd_job_info(struct vbd_job *job);
struct json_object *vbd_block_job_info(struct vbd_job *job);

/* Daemon exit: cancel every job and wait until they are gone. Coroutine. */
void vbd_job_cancel_all_sync(void);

/* ---------- the jobs (QMP's checks done by the caller) ---------- */
/* block-stream: copy the chain between top and base (NULL: all of it) into top. */
/* filter_node_name: a copy-on-read node of that name above top while the
 * job runs (NULL: none); the same for commit (commit_top, or mirror_top
 * when active), mirror (mirror_top) and backup (copy-before-write). */
struct vbd_job *vbd_stream_start(const char *job_id, struct vbd_node *top, struct vbd_node *base,
                                 const char *backing_file, const char *filter_node_name, uint64_t speed,
                                 enum vbd_on_error on_error, bool auto_finalize, bool auto_dismiss,
                                 struct vbd_qmp_error *err);
/* block-commit: top..above base into base. active: top is an export's
 * root; the job mirrors until READY and job-complete moves the exports to
 * base. Otherwise overlay (top's parent) is re-pointed to base at the end. */
struct vbd_job *vbd_commit_start(const char *job_id, struct vbd_node *top, struct vbd_node *base, bool active,
                                 const char *backing_file, const char *filter_node_name, int64_t speed,
                                 enum vbd_on_error on_error, bool auto_finalize, bool auto_dismiss,
                                 struct vbd_qmp_error *err);

/* blockdev-create: a "create" job writing the image options describe
 * (BlockdevCreateOptions, checked by the caller: a driver with
 * create_onto_node, or "file"). */
struct vbd_job *vbd_create_job_start(const char *job_id, struct json_object *options, struct vbd_qmp_error *err);
/* x-blockdev-amend: an "amend" job on n (options checked: n's driver). */
struct vbd_job *vbd_amend_job_start(const char *job_id, struct vbd_node *n, struct json_object *options, bool force,
                                    struct vbd_qmp_error *err);

/* blockdev-mirror / drive-mirror: src copied to target (same size or
 * larger) until READY; job-complete moves replaces' (default: src's)
 * exports and parent nodes to target. */
enum vbd_mirror_sync { VBD_MIRROR_SYNC_FULL, VBD_MIRROR_SYNC_TOP, VBD_MIRROR_SYNC_NONE };
struct vbd_mirror_args {
    const char *job_id;
    struct vbd_node *src, *target, *replaces;
    bool target_owned; /* the caller's reference on target passes to the job (drive-mirror) */
    bool target_new;   /* drive-mirror made the target: a new image, reading zeroes */
    enum vbd_mirror_sync sync;
    uint64_t granularity, buf_size; /* 0: defaults (64 KiB, 16 MiB) */
    int64_t speed;
    enum vbd_on_error on_source_error, on_target_error;
    bool unmap, auto_finalize, auto_dismiss;
    bool write_blocking; /* copy-mode=write-blocking */
    const char *filter_node_name; /* NULL: none */
};
struct vbd_job *vbd_mirror_start(const struct vbd_mirror_args *a, struct vbd_qmp_error *err);

/* n, or the node under it if n is a job's filter node (filter-node-name),
 * which a restart of the daemon would not have. */
struct vbd_node *vbd_job_filter_skip(struct vbd_node *n);

/* ---------- guest writes seen by a job (vbd_write_hook on its node) ----------
 * The tracker lives on the loop that made it (the main loop); the hook's
 * begin and end move a writer from any loop there and back. The calls below
 * are the job's, on that loop. */
struct vbd_job_tracker;
/* Track writes to n: ranges the job locks wait for writes in flight and
 * hold new ones back; with a dirty bitmap (granularity > 0) every write
 * marks its range. */
struct vbd_job_tracker *vbd_job_tracker_new(struct vbd_node *n, uint64_t granularity);
/* Unhooks, then waits (coroutine) for the writes inside the hook to end. */
void vbd_job_tracker_free(struct vbd_job_tracker *t);
void vbd_job_tracker_lock(struct vbd_job_tracker *t, uint64_t off, uint64_t bytes);
void vbd_job_tracker_unlock(struct vbd_job_tracker *t);
/* First dirty chunk at or after *off (cleared; returned in *off and *bytes): false when none. */
bool vbd_job_tracker_take_dirty(struct vbd_job_tracker *t, uint64_t *off, uint64_t *bytes, uint64_t max);
uint64_t vbd_job_tracker_dirty_count(struct vbd_job_tracker *t);
void vbd_job_tracker_set_dirty(struct vbd_job_tracker *t, uint64_t off, uint64_t bytes);
/* Granules touching [off, off + bytes) become clean. */
void vbd_job_tracker_clear_dirty(struct vbd_job_tracker *t, uint64_t off, uint64_t bytes);
/* Write-blocking copies (mirror): before runs in each write's coroutine on
 * the tracker's loop before the write (and before it is marked dirty: it
 * may set w->job_copies, then nothing is marked for it), after once the
 * write is done, before it completes, also while the tracker closes
 * (NULL: none). */
void vbd_job_tracker_set_write_copy(struct vbd_job_tracker *t, void (*before)(void *opaque, struct vbd_hooked_write *w),
                                    void (*after)(void *opaque, struct vbd_hooked_write *w), void *opaque);
/* The granule holding off is dirty. */
bool vbd_job_tracker_is_dirty(struct vbd_job_tracker *t, uint64_t off);
/* A guest write past begin (not yet ended) touches [off, off + bytes). */
bool vbd_job_tracker_writes_overlap(struct vbd_job_tracker *t, uint64_t off, uint64_t bytes);
/* The job to kick when a write marks something dirty. */
void vbd_job_tracker_set_job(struct vbd_job_tracker *t, struct vbd_job *job);

#endif
