/* SPDX-License-Identifier: MIT */
/*
 * The job core: QEMU's job state machine (qapi/job.json), its verbs and
 * events, pause points, the rate limit and the error policy. Main loop
 * only: the jobs' coroutines and the QMP handlers that steer them.
 */
#include "vbd/job.h"

#include "vbd/alloc.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/qmp.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const vbd_job_status_names[VBD_JOB_STATUS_NR] = {
    "undefined", "created", "running", "paused", "ready", "standby",
    "waiting", "pending", "aborting", "concluded", "null",
};
static const char *const verb_names[VBD_VERB_NR] = {"cancel", "pause", "resume", "set-speed", "complete", "finalize",
                                                    "dismiss"};

/* QEMU's transition table (job.c JobSTT): from -> to. */
static const bool stt[VBD_JOB_STATUS_NR][VBD_JOB_STATUS_NR] = {
    /*                      U  C  R  P  Y  S  W  D  X  E  N */
    [VBD_JOB_UNDEFINED] = {0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    [VBD_JOB_CREATED]   = {0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1},
    [VBD_JOB_RUNNING]   = {0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0},
    [VBD_JOB_PAUSED]    = {0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0},
    [VBD_JOB_READY]     = {0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0},
    [VBD_JOB_STANDBY]   = {0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0},
    [VBD_JOB_WAITING]   = {0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0},
    [VBD_JOB_PENDING]   = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0},
    [VBD_JOB_ABORTING]  = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0},
    [VBD_JOB_CONCLUDED] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
    [VBD_JOB_NULL]      = {0},
};
/* Which verbs each state takes (JobVerbTable). */
static const bool verbs[VBD_VERB_NR][VBD_JOB_STATUS_NR] = {
    /*                       U  C  R  P  Y  S  W  D  X  E  N */
    [VBD_VERB_CANCEL]    = {0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0},
    [VBD_VERB_PAUSE]     = {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    [VBD_VERB_RESUME]    = {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    [VBD_VERB_SET_SPEED] = {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
    [VBD_VERB_COMPLETE]  = {0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0}, /* standby too, as QEMU 7.2 does */
    [VBD_VERB_FINALIZE]  = {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0},
    [VBD_VERB_DISMISS]   = {0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0},
};

/* The jobs, their list and their timers are the main loop's (vbd/job.h):
 * every entry point checks that it runs there. */
#define ASSERT_MAIN_LOOP() assert(vbd_thread_is_main())

static struct vbd_job *jobs;
static struct vbd_co_queue jobs_gone = VBD_CO_QUEUE_INIT;
static struct vbd_co_queue jobs_ran = VBD_CO_QUEUE_INIT; /* a job's run returned */
/* a job stopped doing I/O: parked at a pause point, or its run returned */
static struct vbd_co_queue jobs_quiet = VBD_CO_QUEUE_INIT;

/* QEMU's JobTxn. Jobs are put first, so a group aborts and finalizes the
 * last created first, as QEMU's list does. */
struct vbd_job_txn {
    int refs;
    bool aborting;
    struct vbd_job *jobs;
};

static void set_status(struct vbd_job *job, enum vbd_job_status s)
{
    if (job->status == s)
        return; /* QEMU sends no event for a non-change */
    if (!stt[job->status][s])
        vbd_log(VBD_LOG_WARN, "job '%s': unexpected transition %s -> %s", job->id, vbd_job_status_names[job->status],
                     vbd_job_status_names[s]);
    job->status = s;
    /* an ended job's nodes give up what it took there before a client
     * that waits for the event looks at them (dismissed: no user any more) */
    if (s == VBD_JOB_CONCLUDED || s == VBD_JOB_NULL)
        vbd_qmp_image_locks_follow(NULL, 0, 0, NULL);
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "id", json_object_new_string(job->id));
    json_object_object_add(d, "status", json_object_new_string(vbd_job_status_names[s]));
    vbd_qmp_event("JOB_STATUS_CHANGE", d);
}

static int apply_verb(struct vbd_job *job, enum vbd_job_verb v, struct vbd_qmp_error *err)
{
    if (verbs[v][job->status])
        return 0;
    vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Job '%s' in state '%s' cannot accept command verb '%s'", job->id,
                       vbd_job_status_names[job->status], verb_names[v]);
    return -1;
}

/* QEMU's id_wellformed. */
static bool id_ok(const char *s)
{
    if (!isalpha((unsigned char)s[0]))
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("-._", *s))
            return false;
    return true;
}

struct vbd_job *vbd_job_find(const char *id)
{
    ASSERT_MAIN_LOOP();
    for (struct vbd_job *j = jobs; j; j = j->next)
        if (!strcmp(j->id, id))
            return j;
    return NULL;
}

struct vbd_job *vbd_job_next(struct vbd_job *prev)
{
    ASSERT_MAIN_LOOP();
    return prev ? prev->next : jobs;
}

struct vbd_job *vbd_job_using_node(struct vbd_node *n)
{
    ASSERT_MAIN_LOOP();
    for (struct vbd_job *j = jobs; j; j = j->next)
        if (j->status != VBD_JOB_NULL && j->drv->uses_node && j->drv->uses_node(j, n))
            return j;
    return NULL;
}

struct vbd_job *vbd_job_writing_node(struct vbd_node *n)
{
    ASSERT_MAIN_LOOP();
    for (struct vbd_job *j = jobs; j; j = j->next)
        if (j->status != VBD_JOB_NULL && j->drv->writes_node && j->drv->writes_node(j, n))
            return j;
    return NULL;
}

struct vbd_job *vbd_job_create(const struct vbd_job_driver *drv, const char *id, bool auto_finalize,
                               bool auto_dismiss, uint64_t speed, enum vbd_on_error on_error, struct vbd_qmp_error *err)
{
    ASSERT_MAIN_LOOP();
    if (!id || !id_ok(id)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid job ID '%s'", id ? id : "");
        return NULL;
    }
    if (vbd_job_find(id)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Job ID '%s' already in use", id);
        return NULL;
    }
    struct vbd_job *job = vbd_xcalloc(1, sizeof(*job));
    job->drv = drv;
    job->id = vbd_xstrdup(id);
    job->auto_finalize = auto_finalize;
    job->auto_dismiss = auto_dismiss;
    job->speed = speed;
    job->on_error = on_error;
    job->on_target_error = on_error;
    job->busy = true;
    job->refs = 1; /* the job list's, until dismissed */
    job->created = vbd_graph_user_seq();
    struct vbd_job **pp = &jobs;
    while (*pp)
        pp = &(*pp)->next;
    *pp = job;
    set_status(job, VBD_JOB_CREATED);
    return job;
}

void vbd_job_ref(struct vbd_job *job) { job->refs++; }

void vbd_job_unref(struct vbd_job *job)
{
    if (--job->refs == 0) {
        free(job->id);
        free(job);
    }
}

/* ---------- groups (completion-mode=grouped) ---------- */

struct vbd_job_txn *vbd_job_txn_new(void)
{
    ASSERT_MAIN_LOOP();
    struct vbd_job_txn *txn = vbd_xcalloc(1, sizeof(*txn));
    txn->refs = 1;
    return txn;
}

void vbd_job_txn_unref(struct vbd_job_txn *txn)
{
    if (txn && --txn->refs == 0)
        free(txn);
}

void vbd_job_txn_add(struct vbd_job_txn *txn, struct vbd_job *job)
{
    ASSERT_MAIN_LOOP();
    job->txn = txn;
    job->txn_next = txn->jobs;
    txn->jobs = job;
    txn->refs++;
}

static void txn_del(struct vbd_job *job)
{
    struct vbd_job_txn *txn = job->txn;
    if (!txn)
        return;
    for (struct vbd_job **pp = &txn->jobs; *pp; pp = &(*pp)->txn_next)
        if (*pp == job) {
            *pp = job->txn_next;
            break;
        }
    job->txn = NULL;
    vbd_job_txn_unref(txn);
}

static void job_free(struct vbd_job *job)
{
    for (struct vbd_job **pp = &jobs; *pp; pp = &(*pp)->next)
        if (*pp == job) {
            *pp = job->next;
            break;
        }
    txn_del(job);
    vbd_timer_cancel(&job->timer);
    if (job->drv->free)
        job->drv->free(job);
    job->opaque = NULL;
    vbd_co_queue_wake_all(&jobs_gone);
    vbd_job_unref(job);
}

/* ---------- events ---------- */

static struct json_object *block_event_data(struct vbd_job *job)
{
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "type", json_object_new_string(job->drv->type));
    json_object_object_add(d, "device", json_object_new_string(job->id));
    uint64_t cur, total;
    vbd_imageops_progress(&job->ctl, &cur, &total);
    json_object_object_add(d, "len", json_object_new_int64((int64_t)total));
    json_object_object_add(d, "offset", json_object_new_int64((int64_t)cur));
    json_object_object_add(d, "speed", json_object_new_int64((int64_t)job->speed));
    return d;
}

/* ---------- the end of a job (graph lock held) ---------- */

static void conclude(struct vbd_job *job)
{
    set_status(job, VBD_JOB_CONCLUDED);
    if (job->auto_dismiss || !job->co) { /* never started: nothing to dismiss by hand (QEMU) */
        set_status(job, VBD_JOB_NULL);
        job_free(job);
    }
}

static void set_failed(struct vbd_job *job, int ret, const char *msg);

/* QEMU's job_update_rc: a cancelled job failed with ECANCELED, a failed one aborts. */
static void update_rc(struct vbd_job *job)
{
    if (job->ret == 0 && vbd_job_is_cancelled(job))
        set_failed(job, -ECANCELED, NULL);
    if (job->ret < 0)
        set_status(job, VBD_JOB_ABORTING);
}

static void finalize_single(struct vbd_job *job)
{
    update_rc(job); /* a group's member aborted after it finished */
    if (job->ret == 0) {
        if (job->drv->commit)
            job->drv->commit(job);
        /* prepare/commit may have changed the graph (a layer dropped, a
         * pivot): vbd-daemon --state */
        struct vbd_error *e = NULL;
        if (vbd_qmp_config_changed("job-finalize", NULL, &e) < 0)
            vbd_warn("job '%s': %s", job->id, e ? e->msg : "the daemon's state was not saved");
        vbd_error_free(e);
    } else if (job->drv->abort) {
        job->drv->abort(job);
    }
    if (job->drv->clean)
        job->drv->clean(job);
    if (job->drv->plain || !job->co) {
        /* JOB_STATUS_CHANGE only; none either for a job never started (QEMU) */
    } else if (vbd_job_is_cancelled(job)) {
        vbd_qmp_event("BLOCK_JOB_CANCELLED", block_event_data(job));
    } else {
        struct json_object *d = block_event_data(job);
        if (job->ret)
            json_object_object_add(d, "error", json_object_new_string(job->error));
        vbd_qmp_event("BLOCK_JOB_COMPLETED", d);
    }
    txn_del(job);
    conclude(job);
}

static void set_failed(struct vbd_job *job, int ret, const char *msg)
{
    job->ret = ret;
    if (!job->error[0])
        snprintf(job->error, sizeof(job->error), "%s", msg ? msg : strerror(-ret));
}

static void abort_job(struct vbd_job *job)
{
    set_status(job, VBD_JOB_ABORTING);
    finalize_single(job);
}

static bool is_completed(const struct vbd_job *job)
{
    return job->status >= VBD_JOB_WAITING;
}

static void cancel_async(struct vbd_job *job, bool force)
{
    if (job->user_paused) {
        job->user_paused = false;
        job->pause_count--;
    }
    job->cancelled = true;
    job->force_cancel |= force;
    vbd_imageops_cancel(&job->ctl);
}

/* QEMU's job_completed_txn_abort: job failed (or was cancelled); the
 * others of its group are cancelled, waited for, and all finalized
 * (aborted), the last created first. Graph lock held. */
static void txn_abort(struct vbd_job *job)
{
    struct vbd_job_txn *txn = job->txn;
    if (txn->aborting)
        return; /* the first failed one does it all */
    txn->aborting = true;
    txn->refs++;
    for (struct vbd_job *o = txn->jobs; o; o = o->txn_next)
        if (o != job)
            cancel_async(o, true);
    while (txn->jobs) {
        struct vbd_job *o = txn->jobs;
        if (!is_completed(o)) {
            /* its run ends at its next cancel point; its coroutine then
             * sees the end taken in hand (completed) and leaves it */
            while (o->co && !o->run_done) {
                vbd_job_kick(o);
                vbd_co_queue_wait(&jobs_ran);
            }
            o->completed = true;
            update_rc(o);
        }
        finalize_single(o);
    }
    vbd_job_txn_unref(txn);
}

/* QEMU's job_do_finalize for a group: every member prepared, then all
 * committed; a failed prepare aborts the group. */
static void txn_finalize(struct vbd_job *job)
{
    struct vbd_job_txn *txn = job->txn;
    for (struct vbd_job *o = txn->jobs; o; o = o->txn_next) {
        struct vbd_error *e = NULL;
        int rc = o->ret == 0 && o->drv->prepare ? o->drv->prepare(o, &e) : 0;
        if (rc < 0) {
            set_failed(o, rc, e ? e->msg : NULL);
            vbd_error_free(e);
            update_rc(o);
            txn_abort(job);
            return;
        }
    }
    txn->refs++;
    while (txn->jobs)
        finalize_single(txn->jobs);
    vbd_job_txn_unref(txn);
}

/* QEMU's job_completed_txn_success: waiting until the whole group is,
 * then all pending, then finalized unless one waits for job-finalize. */
static void txn_success(struct vbd_job *job)
{
    struct vbd_job_txn *txn = job->txn;
    set_status(job, VBD_JOB_WAITING);
    for (struct vbd_job *o = txn->jobs; o; o = o->txn_next)
        if (!is_completed(o))
            return;
    bool manual = false;
    for (struct vbd_job *o = txn->jobs; o; o = o->txn_next) {
        set_status(o, VBD_JOB_PENDING);
        if (!o->auto_finalize) {
            manual = true;
            if (!o->drv->plain) {
                struct json_object *d = json_object_new_object();
                json_object_object_add(d, "type", json_object_new_string(o->drv->type));
                json_object_object_add(d, "id", json_object_new_string(o->id));
                vbd_qmp_event("BLOCK_JOB_PENDING", d);
            }
        }
    }
    if (!manual)
        txn_finalize(job);
}

void vbd_job_cancel_unstarted(struct vbd_job *job)
{
    ASSERT_MAIN_LOOP();
    if (job->status == VBD_JOB_NULL || job->co)
        return;
    cancel_async(job, true);
    job->completed = true;
    update_rc(job);
    if (job->txn)
        txn_abort(job);
    else
        finalize_single(job);
}

/* PENDING -> prepare -> commit/abort -> CONCLUDED */
static void do_finalize(struct vbd_job *job)
{
    if (job->txn) {
        txn_finalize(job);
        return;
    }
    struct vbd_error *e = NULL;
    int rc = job->drv->prepare ? job->drv->prepare(job, &e) : 0;
    if (rc < 0) {
        set_failed(job, rc, e ? e->msg : NULL);
        vbd_error_free(e);
        abort_job(job);
        return;
    }
    finalize_single(job);
}

/* run ended: RUNNING/READY -> WAITING -> PENDING (-> finalize) or ABORTING */
static void job_completed(struct vbd_job *job)
{
    job->completed = true;
    if (job->ret == 0 && vbd_job_is_cancelled(job))
        set_failed(job, -ECANCELED, NULL);
    if (job->ret < 0) {
        if (job->txn) {
            set_status(job, VBD_JOB_ABORTING);
            txn_abort(job);
        } else {
            abort_job(job);
        }
        return;
    }
    if (job->txn) {
        txn_success(job);
        return;
    }
    set_status(job, VBD_JOB_WAITING);
    set_status(job, VBD_JOB_PENDING);
    if (job->auto_finalize) {
        do_finalize(job);
        return;
    }
    if (job->drv->plain)
        return;
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "type", json_object_new_string(job->drv->type));
    json_object_object_add(d, "id", json_object_new_string(job->id));
    vbd_qmp_event("BLOCK_JOB_PENDING", d);
}

static void job_co(void *arg)
{
    struct vbd_job *job = arg;
    struct vbd_error *e = NULL;
    vbd_job_ref(job); /* a group's abort may finalize and dismiss it while this waits for the graph lock */
    vbd_job_pause_point(job);
    int rc = vbd_job_is_cancelled(job) ? -ECANCELED : job->drv->run(job, &e);
    job->busy = false;
    job->run_done = true;
    if (rc < 0 && !(rc == -ECANCELED && vbd_job_is_cancelled(job)))
        set_failed(job, rc, e ? e->msg : NULL);
    vbd_error_free(e);
    vbd_co_queue_wake_all(&jobs_ran);
    vbd_co_queue_wake_all(&jobs_quiet);
    vbd_qmp_graph_lock();
    if (!job->completed)
        job_completed(job);
    vbd_qmp_graph_unlock();
    vbd_job_unref(job);
}

void vbd_job_early_fail(struct vbd_job *job)
{
    ASSERT_MAIN_LOOP();
    set_status(job, VBD_JOB_NULL);
    job_free(job);
}

void vbd_job_start(struct vbd_job *job)
{
    ASSERT_MAIN_LOOP();
    set_status(job, VBD_JOB_RUNNING);
    job->co = vbd_co_create(job_co, job);
    vbd_co_wake(job->co);
}

/* ---------- inside run ---------- */

bool vbd_job_is_cancelled(struct vbd_job *job) { return job->cancelled && job->force_cancel; }
bool vbd_job_cancel_requested(struct vbd_job *job) { return job->cancelled; }

void vbd_job_kick(struct vbd_job *job)
{
    ASSERT_MAIN_LOOP();
    if (job->parked) {
        job->parked = false;
        vbd_timer_cancel(&job->timer);
        vbd_co_wake(job->co);
    }
}

static void timer_cb(void *arg)
{
    vbd_job_kick(arg);
}

static void park(struct vbd_job *job)
{
    job->parked = true;
    job->busy = false;
    while (job->parked)
        vbd_co_yield();
    job->busy = true;
}

/* The status a pause showed goes back (running, ready) */
static void pause_shown_end(struct vbd_job *job)
{
    if (job->pause_shown) {
        job->pause_shown = false;
        set_status(job, job->pause_was);
    }
}

bool vbd_job_should_pause(const struct vbd_job *job)
{
    return job->pause_count > 0 || job->drain_pauses > 0 || job->quiet_pauses > 0;
}

void vbd_job_pause_point(struct vbd_job *job)
{
    ASSERT_MAIN_LOOP();
    if (!vbd_job_should_pause(job) || vbd_job_is_cancelled(job))
        return;
    /* the requests of the job's other coroutines end first: a paused job
     * does no I/O (a drain waits for that) */
    if (job->drv->pause)
        job->drv->pause(job);
    while (vbd_job_should_pause(job) && !vbd_job_is_cancelled(job)) {
        /* a quiet drain's pause keeps the status (QEMU has no drain there) */
        if (!job->pause_shown && (job->pause_count > 0 || job->drain_pauses > 0)) {
            job->pause_was = job->status;
            set_status(job, job->status == VBD_JOB_READY ? VBD_JOB_STANDBY : VBD_JOB_PAUSED);
            job->pause_shown = true;
        }
        job->at_pause = true;
        vbd_co_queue_wake_all(&jobs_quiet);
        park(job);
        job->at_pause = false;
    }
    pause_shown_end(job);
}

void vbd_job_wait(struct vbd_job *job)
{
    ASSERT_MAIN_LOOP();
    if (vbd_job_cancel_requested(job) || vbd_job_should_pause(job))
        return;
    park(job);
}

void vbd_job_sleep_ns(struct vbd_job *job, uint64_t ns)
{
    ASSERT_MAIN_LOOP();
    if (!vbd_job_cancel_requested(job) && !vbd_job_should_pause(job)) {
        job->timer.fn = timer_cb;
        job->timer.arg = job;
        vbd_timer_arm(&job->timer, vbd_clock_ns() + ns);
        park(job);
        vbd_timer_cancel(&job->timer);
    }
    vbd_job_pause_point(job);
}

void vbd_job_ratelimit(struct vbd_job *job, uint64_t written)
{
    if (!job->speed) {
        vbd_job_pause_point(job);
        return;
    }
    uint64_t now = vbd_clock_ns();
    if (!job->rl_start_ns)
        job->rl_start_ns = now;
    job->rl_bytes += written;
    for (;;) {
        /* the time by which this many bytes are allowed at this speed */
        uint64_t speed = job->speed;
        if (!speed || vbd_job_cancel_requested(job))
            break;
        unsigned __int128 due = job->rl_start_ns + (unsigned __int128)job->rl_bytes * 1000000000u / speed;
        now = vbd_clock_ns();
        if (due <= now)
            break;
        uint64_t wait = due - now > 3600ull * 1000000000u ? 3600ull * 1000000000u : (uint64_t)(due - now);
        vbd_job_sleep_ns(job, wait);
    }
    vbd_job_pause_point(job);
}

void vbd_job_transition_ready(struct vbd_job *job)
{
    ASSERT_MAIN_LOOP();
    set_status(job, VBD_JOB_READY);
    vbd_qmp_event("BLOCK_JOB_READY", block_event_data(job));
}

enum vbd_error_action vbd_job_error_action(struct vbd_job *job, bool is_read, int error)
{
    ASSERT_MAIN_LOOP();
    enum vbd_error_action a;
    switch (is_read ? job->on_error : job->on_target_error) {
    case VBD_ON_ERROR_ENOSPC: a = error == ENOSPC ? VBD_ACTION_STOP : VBD_ACTION_REPORT; break;
    case VBD_ON_ERROR_STOP: a = VBD_ACTION_STOP; break;
    case VBD_ON_ERROR_IGNORE: a = VBD_ACTION_IGNORE; break;
    default: a = VBD_ACTION_REPORT; break;
    }
    static const char *const names[] = {"report", "ignore", "stop"};
    struct json_object *d = json_object_new_object();
    json_object_object_add(d, "device", json_object_new_string(job->id));
    json_object_object_add(d, "operation", json_object_new_string(is_read ? "read" : "write"));
    json_object_object_add(d, "action", json_object_new_string(names[a]));
    vbd_qmp_event("BLOCK_JOB_ERROR", d);
    if (a == VBD_ACTION_STOP) {
        /* paused as by the user: job-resume retries. Once, as QEMU's
         * block_job_error_action, however many copies in flight failed */
        if (!job->user_paused) {
            job->pause_count++;
            job->user_paused = true;
        }
        job->iostatus_failed = true;
        job->iostatus_nospace = error == ENOSPC;
    }
    return a;
}

/* ---------- verbs ---------- */

int vbd_job_user_pause(struct vbd_job *job, struct vbd_qmp_error *err)
{
    ASSERT_MAIN_LOOP();
    if (apply_verb(job, VBD_VERB_PAUSE, err) < 0)
        return -1;
    if (job->user_paused) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Job is already paused");
        return -1;
    }
    job->user_paused = true;
    job->pause_count++;
    vbd_job_kick(job); /* a sleeping job reaches its pause point now */
    return 0;
}

int vbd_job_user_resume(struct vbd_job *job, struct vbd_qmp_error *err)
{
    ASSERT_MAIN_LOOP();
    if (!job->user_paused || job->pause_count <= 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Can't resume a job that was not paused");
        return -1;
    }
    if (apply_verb(job, VBD_VERB_RESUME, err) < 0)
        return -1;
    job->iostatus_failed = false;
    job->user_paused = false;
    job->pause_count--;
    if (job->pause_count == 0)
        vbd_job_kick(job);
    return 0;
}

int vbd_job_user_cancel(struct vbd_job *job, bool force, struct vbd_qmp_error *err)
{
    ASSERT_MAIN_LOOP();
    if (apply_verb(job, VBD_VERB_CANCEL, err) < 0)
        return -1;
    /* only a READY job can be cancelled softly (it then completes without
     * its graph change, as QEMU's mirror) */
    if (job->status != VBD_JOB_READY && job->status != VBD_JOB_STANDBY && !job->run_done)
        force = true;
    job->force_cancel |= force;
    job->cancelled = true;
    vbd_imageops_cancel(&job->ctl);
    if (job->run_done && job->txn) {
        /* waiting for its group or for job-finalize: the group aborts */
        if (job->completed) {
            job->force_cancel = true;
            txn_abort(job);
        }
        return 0;
    }
    if (job->run_done) {
        /* waiting for job-finalize: abort it now */
        if (job->status == VBD_JOB_PENDING || job->status == VBD_JOB_WAITING) {
            job->force_cancel = true;
            set_failed(job, -ECANCELED, NULL);
            abort_job(job);
        }
        return 0;
    }
    if (job->pause_count > 0 && force) {
        /* a paused job is cancelled too (QEMU resumes it to let it die) */
        job->pause_count = 0;
        job->user_paused = false;
    }
    vbd_job_kick(job);
    return 0;
}

int vbd_job_complete(struct vbd_job *job, struct vbd_qmp_error *err)
{
    ASSERT_MAIN_LOOP();
    if (apply_verb(job, VBD_VERB_COMPLETE, err) < 0)
        return -1;
    if (vbd_job_cancel_requested(job) || !job->drv->complete) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "The active block job '%s' cannot be completed", job->id);
        return -1;
    }
    job->drv->complete(job);
    vbd_job_kick(job);
    return 0;
}

int vbd_job_finalize(struct vbd_job *job, struct vbd_qmp_error *err)
{
    ASSERT_MAIN_LOOP();
    if (apply_verb(job, VBD_VERB_FINALIZE, err) < 0)
        return -1;
    do_finalize(job);
    return 0;
}

int vbd_job_dismiss(struct vbd_job *job, struct vbd_qmp_error *err)
{
    ASSERT_MAIN_LOOP();
    if (apply_verb(job, VBD_VERB_DISMISS, err) < 0)
        return -1;
    set_status(job, VBD_JOB_NULL);
    job_free(job);
    return 0;
}

int vbd_job_set_speed(struct vbd_job *job, int64_t speed, struct vbd_qmp_error *err)
{
    ASSERT_MAIN_LOOP();
    if (apply_verb(job, VBD_VERB_SET_SPEED, err) < 0)
        return -1;
    if (speed < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'speed' expects a non-negative value");
        return -1;
    }
    job->speed = (uint64_t)speed;
    job->rl_start_ns = 0;
    job->rl_bytes = 0;
    vbd_job_kick(job); /* a job sleeping for the old speed recomputes */
    return 0;
}

/* ---------- drained sections ---------- */

bool vbd_job_is_running_copy(const struct vbd_job *job)
{
    return job->co && !job->run_done && job->status != VBD_JOB_NULL;
}

void vbd_job_drain_pause(struct vbd_job *job, bool quiet)
{
    ASSERT_MAIN_LOOP();
    vbd_job_ref(job); /* until drain_resume, whatever ends meanwhile */
    if (quiet)
        job->quiet_pauses++;
    else
        job->drain_pauses++;
    vbd_job_kick(job); /* a sleeping or waiting job goes to its pause point */
}

void vbd_job_co_drain_wait(struct vbd_job *job)
{
    ASSERT_MAIN_LOOP();
    /* a force-cancelled job passes its pause points: its run ends instead
     * (QEMU's drain polls a busy job the same way) */
    while (vbd_job_is_running_copy(job) && !job->at_pause && job->co != vbd_co_self())
        vbd_co_queue_wait(&jobs_quiet);
}

void vbd_job_drain_resume(struct vbd_job *job, bool quiet)
{
    ASSERT_MAIN_LOOP();
    if (quiet)
        job->quiet_pauses--;
    else
        job->drain_pauses--;
    if (!vbd_job_should_pause(job) && vbd_job_is_running_copy(job)) {
        /* QEMU's job_resume enters the job at once: its status is back
         * (JOB_STATUS_CHANGE running) before the drain's user goes on, and a
         * drain right after pauses it again (paused, as qsd shows) */
        if (job->at_pause && !vbd_job_is_cancelled(job)) {
            pause_shown_end(job);
            job->at_pause = false; /* a drain from now on waits until it parks again */
        }
        vbd_job_kick(job);
    }
    vbd_job_unref(job);
}

/* ---------- queries ---------- */

struct json_object *vbd_job_info(struct vbd_job *job)
{
    struct json_object *o = json_object_new_object();
    uint64_t cur, total;
    vbd_imageops_progress(&job->ctl, &cur, &total);
    json_object_object_add(o, "id", json_object_new_string(job->id));
    json_object_object_add(o, "type", json_object_new_string(job->drv->type));
    json_object_object_add(o, "status", json_object_new_string(vbd_job_status_names[job->status]));
    json_object_object_add(o, "current-progress", json_object_new_int64((int64_t)cur));
    json_object_object_add(o, "total-progress", json_object_new_int64((int64_t)total));
    if (job->ret)
        json_object_object_add(o, "error", json_object_new_string(job->error));
    return o;
}

struct json_object *vbd_block_job_info(struct vbd_job *job)
{
    struct json_object *o = block_event_data(job);
    json_object_object_add(o, "busy", json_object_new_boolean(job->busy));
    json_object_object_add(o, "paused", json_object_new_boolean(job->pause_count > 0));
    json_object_object_add(o, "io-status", json_object_new_string(!job->iostatus_failed ? "ok" : job->iostatus_nospace ? "nospace" : "failed"));
    json_object_object_add(o, "ready", json_object_new_boolean(job->status == VBD_JOB_READY ||
                                                               job->status == VBD_JOB_STANDBY));
    json_object_object_add(o, "status", json_object_new_string(vbd_job_status_names[job->status]));
    json_object_object_add(o, "auto-finalize", json_object_new_boolean(job->auto_finalize));
    json_object_object_add(o, "auto-dismiss", json_object_new_boolean(job->auto_dismiss));
    if (job->ret)
        json_object_object_add(o, "error", json_object_new_string(job->error));
    return o;
}

void vbd_job_cancel_all_sync(void)
{
    ASSERT_MAIN_LOOP();
    for (;;) {
        struct vbd_job *live = NULL;
        for (struct vbd_job *j = jobs; j; j = j->next) {
            if (j->status == VBD_JOB_CONCLUDED) {
                struct vbd_qmp_error e = {0};
                vbd_job_dismiss(j, &e);
                live = NULL;
                break;
            }
            live = j;
        }
        if (!jobs)
            return;
        if (!live)
            continue;
        struct vbd_qmp_error e = {0};
        char *id = vbd_xstrdup(live->id);
        vbd_qmp_graph_lock();
        /* every job ends dismissed: a group's abort concludes the others
         * of the group, maybe while this waited for the lock (live may be
         * gone or concluded by now) */
        for (struct vbd_job *j = jobs; j; j = j->next)
            j->auto_dismiss = true;
        live = vbd_job_find(id);
        if (!live || live->status == VBD_JOB_CONCLUDED) {
            vbd_qmp_graph_unlock();
            free(id);
            continue;
        }
        if (!live->cancelled || !live->force_cancel)
            vbd_job_user_cancel(live, true, &e);
        vbd_qmp_graph_unlock();
        if (vbd_job_find(id)) /* not ended at once (pending) */
            vbd_co_queue_wait(&jobs_gone);
        free(id);
    }
}
