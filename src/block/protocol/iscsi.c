/* SPDX-License-Identifier: MIT */
/*
 * Protocol driver "iscsi": a LUN of an iSCSI target through libiscsi's
 * asynchronous API, driven from the node's loop (its socket watched with
 * the events iscsi_which_events asks for, iscsi_service on each, and a
 * 250 ms timer for libiscsi's timeouts, reconnect back-off and NOP-Out
 * keepalives, as QEMU's driver does).
 *
 * Each request is one SCSI task: the issuing coroutine queues it and sleeps
 * until libiscsi calls back. libiscsi reconnects a lost session by itself
 * and re-sends the commands that were in flight on the new one; on top of
 * that a command that ends in UNIT ATTENTION (the new session's reset
 * report), BUSY, TASK SET FULL or a timeout is sent again after a short
 * back-off, so a target restart costs time, not data.
 *
 * Options are QEMU's (BlockdevOptionsIscsi): transport, portal, target,
 * lun, user, password-secret, initiator-name, header-digest, timeout; the
 * URI iscsi://[user[%password]@]host[:port]/target-iqn/lun fills them.
 */
#include "util/dynlib.h"
#include "util/socket.h"
#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"
#include "vbd/secret.h"

#include <dlfcn.h>
#include <errno.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <json-c/json.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libiscsi is loaded when an iscsi node is first opened, not linked (see
 * util/dynlib.h): every libiscsi function this file calls is one of these
 * pointers (iscsilib.f). */
#define ISCSILIB_FUNCS(X) \
    X(iscsi_create_context) \
    X(iscsi_destroy_context) \
    X(iscsi_full_connect_async) \
    X(iscsi_get_error) \
    X(iscsi_get_fd) \
    X(iscsi_get_lba_status_task) \
    X(iscsi_get_nops_in_flight) \
    X(iscsi_inquiry_task) \
    X(iscsi_is_logged_in) \
    X(iscsi_logout_async) \
    X(iscsi_modesense6_task) \
    X(iscsi_nop_out_async) \
    X(iscsi_read10_iov_task) \
    X(iscsi_read16_iov_task) \
    X(iscsi_readcapacity10_task) \
    X(iscsi_readcapacity16_task) \
    X(iscsi_reconnect) \
    X(iscsi_service) \
    X(iscsi_set_header_digest) \
    X(iscsi_set_initiator_username_pwd) \
    X(iscsi_set_session_type) \
    X(iscsi_set_targetname) \
    X(iscsi_set_timeout) \
    X(iscsi_synchronizecache10_task) \
    X(iscsi_unmap_task) \
    X(iscsi_which_events) \
    X(iscsi_write10_iov_task) \
    X(iscsi_write16_iov_task) \
    X(iscsi_writesame16_task) \
    X(scsi_datain_unmarshall) \
    X(scsi_devtype_to_str) \
    X(scsi_free_scsi_task) \
    X(scsi_task_set_iov_in)
static struct {
#define X(f) __typeof__(f) *f;
    ISCSILIB_FUNCS(X)
#undef X
} iscsilib;

static const char *iscsilib_resolve(void *h)
{
#define X(f) \
    if (!(*(void **)&iscsilib.f = dlsym(h, #f))) \
        return #f;
    ISCSILIB_FUNCS(X)
#undef X
    return NULL;
}

static struct vbd_dynlib iscsilib_so = {
    .what = "Block driver 'iscsi'",
    .soname = "libiscsi.so.7",
    .resolve = iscsilib_resolve,
};

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

#define ISCSI_DEFAULT_PORT "3260"
#define ISCSI_DEFAULT_INITIATOR "iqn.2008-11.org.linux-kvm"
#define EVENT_INTERVAL_NS 250000000ull
#define NOP_INTERVAL_TICKS 20 /* 5 s */
#define MAX_NOP_FAILURES 3
#define CMD_RETRIES 7
#define MAX_TRANSFER (32u << 20)
#define DEFAULT_CONNECT_TIMEOUT_S 30
/* with the session down this long, libiscsi's reconnect is given up on and
 * a new session started (see reset_session) */
#define RESET_TICKS 40        /* 10 s */
#define RESET_STALLED_TICKS 8 /* 2 s when libiscsi holds no socket at all */

enum iscsi_op { OP_READ, OP_WRITE, OP_FLUSH, OP_UNMAP, OP_WRITE_SAME, OP_LBA_STATUS, OP_INQUIRY, OP_RC16, OP_RC10, OP_MODE_SENSE };

struct iscsi_req {
    enum iscsi_op op;
    uint64_t lba;
    uint32_t nblocks;
    struct scsi_iovec *iov;
    int niov;
    int fua, unmap, evpd, page;
    struct scsi_task *task; /* the completed task (caller frees) */
    int status;
    unsigned resets; /* the state's count when it was sent */
    bool done, waiting;
    struct vbd_co *co;
};

struct iscsi_state {
    struct iscsi_context *iscsi;
    struct vbd_loop *loop;
    struct vbd_fd_watch *watch;
    int watch_fd;
    short watch_events;
    bool watch_logged_in;
    bool socket_failed; /* no watch until the next tick (see fd_ready) */
    bool session_lost; /* said so; say when it is back */
    bool logging_out;
    struct vbd_timer timer;
    unsigned ticks, down_ticks;
    /* a session of our own replaces the one libiscsi could not bring back:
     * commands wait for its login, then go again */
    bool resetting;
    unsigned resets;
    char *user, *password; /* CHAP, kept for such a new session */
    int digest;
    uint64_t timeout;
    bool request_timed_out;
    char *portal, *target, *initiator;
    int lun;
    uint32_t block_size;
    uint64_t num_blocks;
    bool use_16, dpofua, lbpme, lbprz, lbpu, lbpws, has_write_same, has_lba_status;
    uint32_t max_ws_blocks, max_unmap_blocks;
    uint8_t *zero_block;
    bool closing;
    /*
     * What GET LBA STATUS said, per cluster, so block status (the NBD
     * server asks before each read) and reads of unmapped ranges need no
     * round trip, as QEMU's allocmap/allocmap_valid. A set bit of allocmap:
     * the cluster may hold data. A set bit of validmap: the cluster is known
     * to be wholly mapped (allocmap set) or wholly unmapped (clear). Writes
     * set allocmap over every cluster they touch, so a "wholly unmapped"
     * never outlives one; discards forget what was known. No validmap with
     * cache.direct=on: every question then goes to the target.
     */
    uint64_t *allocmap, *validmap;
    uint64_t cluster_size, nclusters;
    uint64_t unmap_gran_bytes;
    bool nocache;
    uint64_t writes_done; /* bumped by each data-changing command's end */
};

/* ---------- the loop side ---------- */

static void update_events(struct iscsi_state *s);
static void drop_watch(struct iscsi_state *s);
static void free_conn_strings(struct iscsi_state *s);

/* ---------- the allocation cache ---------- */

static void bits_set(uint64_t *map, uint64_t first, uint64_t n, bool on)
{
    for (uint64_t i = first; i < first + n; i++) {
        if (on)
            map[i / 64] |= 1ull << (i % 64);
        else
            map[i / 64] &= ~(1ull << (i % 64));
    }
}

static bool bit(const uint64_t *map, uint64_t i)
{
    return map[i / 64] >> (i % 64) & 1;
}

static void allocmap_free(struct iscsi_state *s)
{
    free(s->allocmap);
    free(s->validmap);
    s->allocmap = s->validmap = NULL;
    s->nclusters = 0;
}

/* The target's unmap granularity when it is a sensible page size, else
 * 64 KiB; larger for huge LUNs so each map stays within 2 MiB. */
static void allocmap_init(struct iscsi_state *s)
{
    uint64_t unmap_gran_bytes = s->unmap_gran_bytes;
    bool nocache = s->nocache;
    allocmap_free(s);
    if (!s->lbpme)
        return;
    uint64_t cs = 65536, size = s->num_blocks * s->block_size;
    if (unmap_gran_bytes >= 4096 && unmap_gran_bytes <= (16u << 20) && !(unmap_gran_bytes & (unmap_gran_bytes - 1)))
        cs = unmap_gran_bytes;
    if (cs < s->block_size)
        cs = s->block_size;
    while ((size + cs - 1) / cs > (1ull << 24))
        cs *= 2;
    s->cluster_size = cs;
    s->nclusters = (size + cs - 1) / cs;
    size_t words = (size_t)((s->nclusters + 63) / 64);
    s->allocmap = calloc(words ? words : 1, sizeof(uint64_t));
    /* nothing known yet: allocmap all set (maybe data), validmap clear */
    if (s->allocmap)
        memset(s->allocmap, 0xff, words * sizeof(uint64_t));
    if (!nocache)
        s->validmap = calloc(words ? words : 1, sizeof(uint64_t));
    if (!s->allocmap || (!nocache && !s->validmap))
        allocmap_free(s);
}

/*
 * [off, off + bytes) is mapped (allocated), unmapped (!allocated), or
 * changed in a way not known (!valid: a discard). Every cluster it touches
 * may hold data after a write; only the clusters it wholly covers become
 * known.
 */
static void allocmap_update(struct iscsi_state *s, uint64_t off, uint64_t bytes, bool allocated, bool valid)
{
    if (!s->allocmap || !bytes)
        return;
    uint64_t cs = s->cluster_size, end = off + bytes;
    uint64_t out_first = off / cs, out_end = (end + cs - 1) / cs;
    uint64_t in_first = (off + cs - 1) / cs, in_end = end / cs;
    /* the last cluster may be short: reaching the LUN's end covers it */
    if (end >= s->num_blocks * s->block_size)
        in_end = s->nclusters;
    if (out_end > s->nclusters)
        out_end = s->nclusters;
    if (out_first >= out_end)
        return;
    if (allocated)
        bits_set(s->allocmap, out_first, out_end - out_first, true);
    else if (in_end > in_first)
        bits_set(s->allocmap, in_first, in_end - in_first, false);
    if (!s->validmap)
        return;
    if (!valid)
        bits_set(s->validmap, out_first, out_end - out_first, false);
    else if (in_end > in_first)
        bits_set(s->validmap, in_first, in_end - in_first, true);
}

/* What the cache knows at off: -1 nothing, else 1 (mapped) or 0 (unmapped)
 * for *len bytes from off (at most bytes). */
static int allocmap_lookup(struct iscsi_state *s, uint64_t off, uint64_t bytes, uint64_t *len)
{
    if (!s->validmap)
        return -1;
    uint64_t cs = s->cluster_size, c = off / cs, end = off + bytes;
    if (c >= s->nclusters || !bit(s->validmap, c))
        return -1;
    bool a = bit(s->allocmap, c);
    uint64_t run_end = (c + 1) * cs;
    for (c++; run_end < end && c < s->nclusters && bit(s->validmap, c) && bit(s->allocmap, c) == a; c++)
        run_end += cs;
    *len = (run_end < end ? run_end : end) - off;
    return a;
}

static void fd_ready(void *arg, short revents)
{
    struct iscsi_state *s = arg;
    int r = iscsilib.iscsi_service(s->iscsi, revents);
    if (r < 0)
        vbd_debug("iSCSI %s: %s", s->portal, iscsilib.iscsi_get_error(s->iscsi));
    /* a socket that reported an error or hang-up is finished with: watch
     * whatever socket libiscsi holds now, even under the same number */
    if ((revents & (POLLERR | POLLHUP | POLLNVAL)) || !iscsilib.iscsi_is_logged_in(s->iscsi)) {
        s->watch_fd = -1;
        /* Out of session, libiscsi may keep a socket that failed (a new
         * session's connect refused) and ask for it again: watched at once,
         * it reports the error at once, a busy loop (a quarter of a CPU, 84k
         * wake-ups/s, measured with the target gone). The timer's next tick
         * (250 ms) watches it again. */
        if (!iscsilib.iscsi_is_logged_in(s->iscsi) && (r < 0 || (revents & (POLLERR | POLLHUP | POLLNVAL))))
            s->socket_failed = true;
    }
    update_events(s);
}

/* Watch the socket for what libiscsi wants now. A reconnect replaces the
 * socket (possibly under the same number) and goes through a logged-out
 * phase, so a change of login state re-arms the watch too. */
static void update_events(struct iscsi_state *s)
{
    if (s->closing)
        return;
    int fd = iscsilib.iscsi_get_fd(s->iscsi);
    short ev = (short)iscsilib.iscsi_which_events(s->iscsi);
    bool in = iscsilib.iscsi_is_logged_in(s->iscsi) != 0;
    if (s->watch && fd == s->watch_fd && ev == s->watch_events && in == s->watch_logged_in)
        return;
    if (s->zero_block && !s->logging_out && in != s->watch_logged_in) {
        /* after open: a lost session and its return are worth a line each */
        if (!in && !s->session_lost) {
            s->session_lost = true;
            vbd_warn("iSCSI %s: session lost, reconnecting", s->portal);
        } else if (in && s->session_lost) {
            s->session_lost = false;
            vbd_warn("iSCSI %s: session re-established", s->portal);
        }
    }
    vbd_loop_unwatch_fd(s->watch);
    s->watch = NULL;
    s->watch_fd = -1;
    s->watch_logged_in = in;
    /* 0: libiscsi waits (reconnect back-off); the timer asks again */
    if (fd < 0 || !ev || s->socket_failed)
        return;
    s->watch = vbd_loop_watch_fd(s->loop, fd, ev, fd_ready, s);
    if (s->watch) {
        s->watch_fd = fd;
        s->watch_events = ev;
    }
}

/* A context set up for s's target: digest, CHAP, a normal session. */
static struct iscsi_context *new_context(struct iscsi_state *s)
{
    static const enum iscsi_header_digest dg[] = {ISCSI_HEADER_DIGEST_CRC32C, ISCSI_HEADER_DIGEST_NONE,
                                                  ISCSI_HEADER_DIGEST_CRC32C_NONE, ISCSI_HEADER_DIGEST_NONE_CRC32C};
    struct iscsi_context *c = iscsilib.iscsi_create_context(s->initiator);
    if (!c)
        return NULL;
    iscsilib.iscsi_set_targetname(c, s->target);
    iscsilib.iscsi_set_session_type(c, ISCSI_SESSION_NORMAL);
    iscsilib.iscsi_set_header_digest(c, dg[s->digest]);
    if (s->user && iscsilib.iscsi_set_initiator_username_pwd(c, s->user, s->password ? s->password : "") != 0) {
        iscsilib.iscsi_destroy_context(c);
        return NULL;
    }
    /* the login's PDUs time out in libiscsi itself; the commands
     * afterwards get the user's timeout (0: none) */
    iscsilib.iscsi_set_timeout(c, (int)(s->timeout ? s->timeout : DEFAULT_CONNECT_TIMEOUT_S));
    return c;
}

static void reset_cb(struct iscsi_context *iscsi, int status, void *command_data, void *opaque)
{
    (void)command_data;
    struct iscsi_state *s = opaque;
    if (status != SCSI_STATUS_GOOD) {
        vbd_debug("iSCSI %s: new session: %s", s->portal, iscsilib.iscsi_get_error(iscsi));
        return; /* the timer tries again */
    }
    iscsilib.iscsi_set_timeout(iscsi, (int)s->timeout);
    s->resetting = false;
}

/*
 * libiscsi 1.19's own reconnect can wait for good: a login sent on a
 * connection that the other end never answers nor closes has no timeout
 * (the user's timeout is 0 by default), and a connect that fails at once
 * leaves it with no socket and nothing pending, after which iscsi_service
 * and iscsi_reconnect both return without doing anything; the commands it
 * parked for the new session never time out either. After RESET_TICKS of
 * no session, drop the context (libiscsi cancels what it held: run() sends
 * those commands again once the new session is in) and log in on a new
 * one, as often as needed while the target stays away.
 */
static void reset_session(struct iscsi_state *s)
{
    struct iscsi_context *fresh = new_context(s);
    if (!fresh)
        return;
    vbd_warn("iSCSI %s: no session for %u s, starting a new one", s->portal, s->down_ticks / 4);
    vbd_loop_unwatch_fd(s->watch);
    s->watch = NULL;
    s->watch_fd = -1;
    struct iscsi_context *old = s->iscsi;
    s->iscsi = fresh;
    s->resetting = true;
    s->resets++;
    iscsilib.iscsi_destroy_context(old);
    if (iscsilib.iscsi_full_connect_async(fresh, s->portal, s->lun, reset_cb, s) != 0)
        vbd_debug("iSCSI %s: new session: %s", s->portal, iscsilib.iscsi_get_error(fresh));
}

static void timer_fn(void *arg)
{
    struct iscsi_state *s = arg;
    if (s->request_timed_out) {
        /* a command timed out: the session is presumed dead (QEMU's rule) */
        s->request_timed_out = false;
        iscsilib.iscsi_reconnect(s->iscsi);
    }
    /* timeouts of commands in flight and the reconnect back-off live here */
    iscsilib.iscsi_service(s->iscsi, 0);
    if (++s->ticks % NOP_INTERVAL_TICKS == 0 && iscsilib.iscsi_is_logged_in(s->iscsi)) {
        if (iscsilib.iscsi_get_nops_in_flight(s->iscsi) > MAX_NOP_FAILURES) {
            vbd_warn("iSCSI %s: NOP-Out timeout, reconnecting", s->portal);
            iscsilib.iscsi_reconnect(s->iscsi);
        } else {
            iscsilib.iscsi_nop_out_async(s->iscsi, NULL, NULL, 0, NULL);
        }
    }
    if (s->zero_block && !s->logging_out && !iscsilib.iscsi_is_logged_in(s->iscsi)) {
        s->down_ticks++;
        if (s->down_ticks % RESET_TICKS == 0 || (iscsilib.iscsi_get_fd(s->iscsi) < 0 && s->down_ticks % RESET_STALLED_TICKS == 0))
            reset_session(s);
    } else {
        s->down_ticks = 0;
    }
    /* while it reconnects, libiscsi swaps sockets, a new one maybe under
     * the old one's number, which the watch cannot tell apart: watch
     * afresh on every tick until the session is back */
    if (!iscsilib.iscsi_is_logged_in(s->iscsi))
        s->watch_fd = -1;
    s->socket_failed = false;
    update_events(s);
    vbd_timer_arm(&s->timer, vbd_clock_ns() + EVENT_INTERVAL_NS);
}

/* After queueing: send now if the session is up (one write instead of a
 * loop round trip), and watch for writability if the socket is full. */
static void kick(struct iscsi_state *s)
{
    if (iscsilib.iscsi_is_logged_in(s->iscsi) && (iscsilib.iscsi_which_events(s->iscsi) & POLLOUT))
        iscsilib.iscsi_service(s->iscsi, POLLOUT);
    update_events(s);
}

/* ---------- commands ---------- */

static void task_cb(struct iscsi_context *iscsi, int status, void *command_data, void *opaque)
{
    (void)iscsi;
    struct iscsi_req *r = opaque;
    r->status = status;
    r->task = command_data;
    r->done = true;
    /* only a sleeping issuer is woken: a callback that runs while it is
     * still submitting (kick) must not leave a stray wake-up behind */
    if (r->waiting)
        vbd_co_wake(r->co);
}

/* descriptors asked per GET LBA STATUS: the cache learns that much more */
#define LBA_STATUS_DESCS 32

static struct scsi_task *submit(struct iscsi_state *s, struct iscsi_req *r)
{
    struct iscsi_context *i = s->iscsi;
    uint32_t bytes = r->nblocks * s->block_size;
    struct scsi_task *t = NULL;
    switch (r->op) {
    case OP_READ:
        if (s->use_16)
            t = iscsilib.iscsi_read16_iov_task(i, s->lun, r->lba, bytes, (int)s->block_size, 0, 0, 0, 0, 0, task_cb, r, r->iov, r->niov);
        else
            t = iscsilib.iscsi_read10_iov_task(i, s->lun, (uint32_t)r->lba, bytes, (int)s->block_size, 0, 0, 0, 0, 0, task_cb, r, r->iov,
                                      r->niov);
        /* data lands straight in the caller's buffers */
        if (t)
            iscsilib.scsi_task_set_iov_in(t, r->iov, r->niov);
        break;
    case OP_WRITE:
        if (s->use_16)
            t = iscsilib.iscsi_write16_iov_task(i, s->lun, r->lba, NULL, bytes, (int)s->block_size, 0, 0, r->fua, 0, 0, task_cb, r, r->iov,
                                       r->niov);
        else
            t = iscsilib.iscsi_write10_iov_task(i, s->lun, (uint32_t)r->lba, NULL, bytes, (int)s->block_size, 0, 0, r->fua, 0, 0, task_cb,
                                       r, r->iov, r->niov);
        break;
    case OP_FLUSH:
        t = iscsilib.iscsi_synchronizecache10_task(i, s->lun, 0, 0, 0, 0, task_cb, r);
        break;
    case OP_UNMAP: {
        struct unmap_list l = {.lba = r->lba, .num = r->nblocks};
        t = iscsilib.iscsi_unmap_task(i, s->lun, 0, 0, &l, 1, task_cb, r);
        break;
    }
    case OP_WRITE_SAME:
        t = iscsilib.iscsi_writesame16_task(i, s->lun, r->lba, s->zero_block, s->block_size, r->nblocks, 0, r->unmap, 0, 0, task_cb, r);
        break;
    case OP_LBA_STATUS:
        t = iscsilib.iscsi_get_lba_status_task(i, s->lun, r->lba, 8 + 16 * LBA_STATUS_DESCS, task_cb, r);
        break;
    case OP_INQUIRY:
        t = iscsilib.iscsi_inquiry_task(i, s->lun, r->evpd, r->page, 255, task_cb, r);
        break;
    case OP_RC16:
        t = iscsilib.iscsi_readcapacity16_task(i, s->lun, task_cb, r);
        break;
    case OP_RC10:
        t = iscsilib.iscsi_readcapacity10_task(i, s->lun, 0, 0, task_cb, r);
        break;
    case OP_MODE_SENSE:
        t = iscsilib.iscsi_modesense6_task(i, s->lun, 0, SCSI_MODESENSE_PC_CURRENT, SCSI_MODEPAGE_RETURN_ALL_PAGES, 0, 255, task_cb, r);
        break;
    }
    return t;
}

/* The errno of a CHECK CONDITION, as QEMU maps sense data; -EAGAIN: send it again. */
static int sense_errno(const struct scsi_sense *sense)
{
    switch (sense->key) {
    case SCSI_SENSE_UNIT_ATTENTION:
        return -EAGAIN;
    case SCSI_SENSE_NOT_READY:
        return -EBUSY;
    case SCSI_SENSE_DATA_PROTECTION:
        return -EACCES;
    case SCSI_SENSE_COMMAND_ABORTED:
        return -ECANCELED;
    case SCSI_SENSE_ILLEGAL_REQUEST:
        switch (sense->ascq) {
        case SCSI_SENSE_ASCQ_PARAMETER_LIST_LENGTH_ERROR:
        case SCSI_SENSE_ASCQ_INVALID_OPERATION_CODE:
        case SCSI_SENSE_ASCQ_INVALID_FIELD_IN_CDB:
        case SCSI_SENSE_ASCQ_INVALID_FIELD_IN_PARAMETER_LIST:
            return -EINVAL;
        case SCSI_SENSE_ASCQ_LBA_OUT_OF_RANGE:
            return -ENOSPC;
        case SCSI_SENSE_ASCQ_LOGICAL_UNIT_NOT_SUPPORTED:
            return -ENOTSUP;
        case SCSI_SENSE_ASCQ_WRITE_PROTECTED:
            return -EACCES;
        default:
            return -EINVAL;
        }
    default:
        return -EIO;
    }
}

static const char *op_name(enum iscsi_op op, bool use_16)
{
    static const char *const names[] = {"READ", "WRITE", "SYNCHRONIZE CACHE(10)", "UNMAP", "WRITE SAME(16)", "GET LBA STATUS",
                                        "INQUIRY", "READ CAPACITY(16)", "READ CAPACITY(10)", "MODE SENSE(6)"};
    if (op == OP_READ)
        return use_16 ? "READ(16)" : "READ(10)";
    if (op == OP_WRITE)
        return use_16 ? "WRITE(16)" : "WRITE(10)";
    return names[op];
}

static void sleep_backoff(int retry)
{
    /* QEMU's growing back-off (8 ms .. 32 s), randomised so that many
     * waiters do not come back together */
    static const unsigned ms[] = {8, 32, 128, 512, 2048, 8192, 32768};
    unsigned m = ms[retry < 7 ? retry : 6];
    vbd_co_sleep_ns((uint64_t)(rand() % m + 1) * 1000000ull);
}

/* Send r's command until it completes for good. On success r->task holds
 * the task (the caller frees it); sense holds the last CHECK CONDITION. */
static int run(struct vbd_node *n, struct iscsi_req *r, struct scsi_sense *sense)
{
    struct iscsi_state *s = n->opaque;
    int rc = -EIO;
    r->co = vbd_co_self();
    uint64_t waited_since = 0;
    for (int retry = 0;; retry++) {
        /* a new session is logging in: nothing goes out before it is in */
        while (s->resetting && !s->closing) {
            uint64_t now = vbd_clock_ns();
            if (!waited_since)
                waited_since = now;
            if (s->timeout && now - waited_since >= s->timeout * 1000000000ull)
                return -ETIMEDOUT;
            vbd_co_sleep_ns(EVENT_INTERVAL_NS);
        }
        r->done = r->waiting = false;
        r->task = NULL;
        r->resets = s->resets;
        struct scsi_task *t = submit(s, r);
        if (!t) {
            vbd_error_report("iSCSI %s: cannot queue %s: %s", n->filename, op_name(r->op, s->use_16),
                             iscsilib.iscsi_get_error(s->iscsi));
            return -ENOMEM;
        }
        kick(s);
        /* The answer needs the target's work (on this host, often: tgtd,
         * LIO): the loop must not spin on its rings meanwhile. 4K reads
         * from tgtd to vbd-bench: 7 us of daemon CPU per request instead
         * of 11-13, IOPS up 10-25 % (bench/iscsi-row.sh). */
        struct vbd_loop *loop = vbd_loop_current();
        vbd_loop_io_begin(loop);
        while (!r->done) {
            r->waiting = true;
            vbd_co_yield();
            r->waiting = false;
        }
        vbd_loop_io_end(loop);
        if (r->status == SCSI_STATUS_GOOD)
            return 0;
        bool again = false;
        switch (r->status) {
        case SCSI_STATUS_CHECK_CONDITION:
            if (sense)
                *sense = t->sense;
            rc = sense_errno(&t->sense);
            again = rc == -EAGAIN;
            /* a target that rejects READ(16)/WRITE(16) gets the 10-byte
             * commands when the LUN fits in them */
            if ((r->op == OP_READ || r->op == OP_WRITE) && s->use_16 && t->sense.key == SCSI_SENSE_ILLEGAL_REQUEST &&
                t->sense.ascq == SCSI_SENSE_ASCQ_INVALID_OPERATION_CODE && s->num_blocks <= 0xffffffffull) {
                s->use_16 = false;
                again = true;
                retry = -1;
            }
            if (!again && r->op != OP_LBA_STATUS && r->op != OP_WRITE_SAME && r->op != OP_UNMAP)
                vbd_error_report("iSCSI %s: %s at LBA %llu failed: %s (%s)", n->filename, op_name(r->op, s->use_16),
                                 (unsigned long long)r->lba, iscsilib.iscsi_get_error(s->iscsi), strerror(-rc));
            break;
        case SCSI_STATUS_TIMEOUT:
            /* the timer reconnects first, then the command goes again */
            s->request_timed_out = true;
            again = true;
            rc = -ETIMEDOUT;
            break;
        case SCSI_STATUS_BUSY:
        case SCSI_STATUS_TASK_SET_FULL:
            again = true;
            rc = -EBUSY;
            break;
        case SCSI_STATUS_CANCELLED:
            rc = -ECANCELED;
            /* dropped with a session that reset_session gave up on */
            if (r->resets != s->resets) {
                again = true;
                retry = -1;
            }
            break;
        case SCSI_STATUS_RESERVATION_CONFLICT:
            rc = -EBADE;
            vbd_error_report("iSCSI %s: %s: reservation conflict", n->filename, op_name(r->op, s->use_16));
            break;
        default:
            rc = -EIO;
            vbd_error_report("iSCSI %s: %s failed: %s", n->filename, op_name(r->op, s->use_16), iscsilib.iscsi_get_error(s->iscsi));
            break;
        }
        iscsilib.scsi_free_scsi_task(t);
        r->task = NULL;
        if (!again || s->closing || retry >= CMD_RETRIES)
            return rc;
        if (rc == -ETIMEDOUT)
            vbd_co_sleep_ns(2 * EVENT_INTERVAL_NS);
        else if (rc != -EAGAIN && retry >= 0)
            sleep_backoff(retry);
    }
}

/* ---------- open ---------- */

struct connect_wait {
    struct vbd_co *co;
    int status;
    bool done, waiting, timed_out;
};

static void connect_cb(struct iscsi_context *iscsi, int status, void *command_data, void *opaque)
{
    (void)iscsi;
    (void)command_data;
    struct connect_wait *w = opaque;
    w->status = status;
    w->done = true;
    if (w->waiting)
        vbd_co_wake(w->co);
}

static void connect_timeout(void *arg)
{
    struct connect_wait *w = arg;
    w->timed_out = true;
    if (w->waiting)
        vbd_co_wake(w->co);
}

/* libiscsi words a refused or reset TCP connection as a failed
 * reconnect: ask the portal once more ourselves for the reason. */
static const char *login_error(struct iscsi_state *s)
{
    static __thread char buf[512];
    snprintf(buf, sizeof(buf), "%s", iscsilib.iscsi_get_error(s->iscsi));
    for (size_t l = strlen(buf); l && (buf[l - 1] == '\n' || buf[l - 1] == ' '); l--)
        buf[l - 1] = 0;
    if (!strstr(buf, "reconnect"))
        return buf;
    char host[256];
    snprintf(host, sizeof(host), "%s", s->portal[0] == '[' ? s->portal + 1 : s->portal);
    char *colon = strrchr(host, ':');
    if (colon)
        *colon = 0;
    if (host[0] && host[strlen(host) - 1] == ']')
        host[strlen(host) - 1] = 0;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = -ECONNRESET;
    if (colon && getaddrinfo(host, colon + 1, &hints, &res) == 0) {
        int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        rc = fd < 0 ? -errno : vbd_co_connect(fd, res->ai_addr, res->ai_addrlen);
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
    }
    snprintf(buf, sizeof(buf), "%s", rc < 0 ? strerror(-rc) : "the target closed the connection");
    return buf;
}

/* The secret store keeps base64 (Ceph's keys want it); CHAP wants the
 * text itself, which must not hold a NUL. */
static char *secret_string(const char *id, struct vbd_error **err)
{
    char *b64 = vbd_secret_get_base64(id, err);
    if (!b64) {
        vbd_error_prepend(err, "iSCSI: password-secret: ");
        return NULL;
    }
    size_t n = strlen(b64), o = 0;
    char *out = vbd_xmalloc(n / 4 * 3 + 1);
    unsigned acc = 0;
    int bits = 0;
    bool bad = false;
    for (size_t i = 0; i < n && b64[i] != '='; i++) {
        const char *p = strchr(b64chars, b64[i]);
        if (!p || !*p) {
            bad = true;
            break;
        }
        acc = acc << 6 | (unsigned)(p - b64chars);
        if ((bits += 6) >= 8) {
            bits -= 8;
            out[o++] = (char)(acc >> bits & 0xff);
        }
    }
    out[o] = 0;
    memset(b64, 0, n);
    free(b64);
    if (bad || memchr(out, 0, o)) {
        memset(out, 0, o);
        free(out);
        vbd_error_setf(err, EINVAL, "iSCSI: password-secret '%s' is not a text password", id);
        return NULL;
    }
    return out;
}

static const char *const header_digests[] = {"crc32c", "none", "crc32c-none", "none-crc32c", NULL};

static int inquiry(struct vbd_node *n, int evpd, int page, struct scsi_task **out)
{
    struct iscsi_req r = {.op = OP_INQUIRY, .evpd = evpd, .page = page};
    int rc = run(n, &r, NULL);
    *out = r.task;
    return rc;
}

/* What the LUN is and can do: device type, capacity, block limits,
 * provisioning and FUA (QEMU's iscsi_open probes the same pages). */
static int probe_lun(struct vbd_node *n, unsigned flags, struct vbd_error **err)
{
    struct iscsi_state *s = n->opaque;
    struct scsi_task *t = NULL;
    struct scsi_sense sense = {0};
    int rc = inquiry(n, 0, 0, &t);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "iSCSI: INQUIRY of LUN %d failed: %s", s->lun, iscsilib.iscsi_get_error(s->iscsi));
        return rc;
    }
    struct scsi_inquiry_standard *std = iscsilib.scsi_datain_unmarshall(t);
    if (!std || std->qualifier != SCSI_INQUIRY_PERIPHERAL_QUALIFIER_CONNECTED ||
        std->device_type != SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS) {
        vbd_error_setf(err, ENOTSUP, "iSCSI: LUN %d of %s is not a disk (%s)", s->lun, s->target,
                       !std ? "no INQUIRY data"
                       : std->qualifier != SCSI_INQUIRY_PERIPHERAL_QUALIFIER_CONNECTED
                           ? "no logical unit there"
                           : iscsilib.scsi_devtype_to_str(std->device_type));
        iscsilib.scsi_free_scsi_task(t);
        return -ENOTSUP;
    }
    iscsilib.scsi_free_scsi_task(t);

    struct iscsi_req r = {.op = OP_RC16};
    rc = run(n, &r, &sense);
    struct scsi_readcapacity16 *rc16 = rc == 0 ? iscsilib.scsi_datain_unmarshall(r.task) : NULL;
    if (rc16) {
        s->block_size = rc16->block_length;
        s->num_blocks = rc16->returned_lba + 1;
        s->lbpme = rc16->lbpme;
        s->lbprz = rc16->lbprz;
        s->use_16 = true;
    } else {
        if (r.task)
            iscsilib.scsi_free_scsi_task(r.task);
        r = (struct iscsi_req){.op = OP_RC10};
        rc = run(n, &r, NULL);
        struct scsi_readcapacity10 *rc10 = rc == 0 ? iscsilib.scsi_datain_unmarshall(r.task) : NULL;
        if (!rc10) {
            vbd_error_setf(err, rc < 0 ? -rc : EIO, "iSCSI: READ CAPACITY of LUN %d failed: %s", s->lun,
                           iscsilib.iscsi_get_error(s->iscsi));
            if (r.task)
                iscsilib.scsi_free_scsi_task(r.task);
            return rc < 0 ? rc : -EIO;
        }
        s->block_size = rc10->block_size;
        s->num_blocks = (uint64_t)rc10->lba + 1;
        s->use_16 = false;
    }
    iscsilib.scsi_free_scsi_task(r.task);
    if (s->block_size < 512 || s->block_size > 65536 || (s->block_size & (s->block_size - 1))) {
        vbd_error_setf(err, ENOTSUP, "iSCSI: LUN %d has an unsupported block size of %u bytes", s->lun, s->block_size);
        return -ENOTSUP;
    }
    if (s->num_blocks > VBD_MAX_REQUEST_END / s->block_size) {
        vbd_error_setf(err, EFBIG, "iSCSI: LUN %d is too large", s->lun);
        return -EFBIG;
    }

    uint32_t max_xfer = 0, opt_xfer = 0, unmap_gran = 0;
    bool has_bl = false, has_lbp = false;
    if (inquiry(n, 1, SCSI_INQUIRY_PAGECODE_SUPPORTED_VPD_PAGES, &t) == 0) {
        struct scsi_inquiry_supported_pages *sp = iscsilib.scsi_datain_unmarshall(t);
        for (int i = 0; sp && i < sp->num_pages; i++) {
            has_bl |= sp->pages[i] == SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS;
            has_lbp |= sp->pages[i] == SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING;
        }
        iscsilib.scsi_free_scsi_task(t);
    }
    if (has_lbp && inquiry(n, 1, SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING, &t) == 0) {
        struct scsi_inquiry_logical_block_provisioning *lbp = iscsilib.scsi_datain_unmarshall(t);
        if (lbp) {
            s->lbpu = lbp->lbpu;
            s->lbpws = lbp->lbpws;
            s->lbprz = s->lbprz || lbp->lbprz;
        }
        iscsilib.scsi_free_scsi_task(t);
    }
    if (has_bl && inquiry(n, 1, SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS, &t) == 0) {
        struct scsi_inquiry_block_limits *bl = iscsilib.scsi_datain_unmarshall(t);
        if (bl) {
            max_xfer = bl->max_xfer_len;
            opt_xfer = bl->opt_xfer_len;
            s->max_unmap_blocks = bl->max_unmap;
            unmap_gran = bl->opt_unmap_gran;
            s->max_ws_blocks = bl->max_ws_len > 0xffffffffull ? 0xffffffffu : (uint32_t)bl->max_ws_len;
        }
        iscsilib.scsi_free_scsi_task(t);
    }
    /* write protection and DPOFUA, from the device-specific parameter */
    r = (struct iscsi_req){.op = OP_MODE_SENSE};
    if (run(n, &r, NULL) == 0) {
        struct scsi_mode_sense *ms = iscsilib.scsi_datain_unmarshall(r.task);
        if (ms) {
            s->dpofua = ms->device_specific_parameter & 0x10;
            if ((flags & VBD_OPEN_RDWR) && (ms->device_specific_parameter & 0x80)) {
                iscsilib.scsi_free_scsi_task(r.task);
                vbd_error_setf(err, EACCES, "iSCSI: LUN %d of %s is write-protected", s->lun, s->target);
                return -EACCES;
            }
        }
    }
    if (r.task)
        iscsilib.scsi_free_scsi_task(r.task);

    n->size = s->num_blocks * s->block_size;
    n->bl.request_alignment = s->block_size;
    uint64_t mt = MAX_TRANSFER;
    if (max_xfer && (uint64_t)max_xfer * s->block_size < mt)
        mt = (uint64_t)max_xfer * s->block_size;
    if (!s->use_16 && 0xffffull * s->block_size < mt) /* 10-byte commands: 16-bit lengths */
        mt = 0xffffull * s->block_size;
    n->bl.max_transfer = mt / s->block_size * s->block_size;
    if (opt_xfer && (uint64_t)opt_xfer * s->block_size <= n->bl.max_transfer)
        n->bl.opt_transfer = opt_xfer * s->block_size;
    if (unmap_gran > 1 && !(unmap_gran & (unmap_gran - 1)) && (uint64_t)unmap_gran * s->block_size <= (1u << 30))
        n->bl.pdiscard_alignment = unmap_gran * s->block_size;
    uint64_t cap = 1ull << 30; /* one command does not hold the session for long */
    uint64_t mu = s->max_unmap_blocks && s->max_unmap_blocks != 0xffffffffu ? (uint64_t)s->max_unmap_blocks * s->block_size : cap;
    n->bl.max_pdiscard = (mu < cap ? mu : cap) / s->block_size * s->block_size;
    uint64_t mw = s->max_ws_blocks ? (uint64_t)s->max_ws_blocks * s->block_size : cap;
    n->bl.max_pwrite_zeroes = (mw < cap ? mw : cap) / s->block_size * s->block_size;
    s->has_write_same = true;
    s->has_lba_status = s->lbpme;
    n->supported_write_flags = s->dpofua ? VBD_REQ_FUA : 0;
    /* unmapping in WRITE SAME only where unmapped blocks read as zeroes */
    n->supported_zero_flags = s->lbpws && s->lbprz ? VBD_REQ_MAY_UNMAP : 0;
    s->unmap_gran_bytes = (uint64_t)unmap_gran * s->block_size;
    s->nocache = flags & VBD_OPEN_NOCACHE;
    allocmap_init(s);
    return 0;
}

static int iscsi_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct iscsi_state *s = n->opaque;
    char *transport = NULL, *portal = NULL, *target = NULL, *user = NULL, *password = NULL, *secret = NULL,
         *initiator = NULL;
    uint64_t lun = 0, timeout = 0;
    int digest = 3; /* none-crc32c, QEMU's default */
    int rc = -EINVAL;
    s->watch_fd = -1;
    if (vbd_dynlib_load(&iscsilib_so, err) < 0)
        return -ENOTSUP;
    if (vbd_opt_take_str(opts, "transport", &transport, err) < 0 || vbd_opt_take_str(opts, "portal", &portal, err) < 0 ||
        vbd_opt_take_str(opts, "target", &target, err) < 0 || vbd_opt_take_u64(opts, "lun", &lun, err) < 0 ||
        vbd_opt_take_str(opts, "user", &user, err) < 0 || vbd_opt_take_str(opts, "password", &password, err) < 0 ||
        vbd_opt_take_str(opts, "password-secret", &secret, err) < 0 ||
        vbd_opt_take_str(opts, "initiator-name", &initiator, err) < 0 ||
        vbd_opt_take_enum(opts, "header-digest", header_digests, &digest, err) < 0 ||
        vbd_opt_take_u64(opts, "timeout", &timeout, err) < 0)
        goto out;
    if (transport && strcmp(transport, "tcp")) {
        vbd_error_setf(err, ENOTSUP, "iSCSI: transport '%s' is not supported (only 'tcp')", transport);
        goto out;
    }
    if (!portal || !*portal || !target || !*target) {
        vbd_error_setf(err, EINVAL, "iSCSI: '%s' is required", !portal || !*portal ? "portal" : "target");
        goto out;
    }
    if (lun > 0x3fff) {
        vbd_error_setf(err, EINVAL, "iSCSI: LUN %llu is out of range (0..16383)", (unsigned long long)lun);
        goto out;
    }
    if (timeout > 3600) {
        vbd_error_setf(err, EINVAL, "iSCSI: timeout %llu is out of range (0..3600 seconds)", (unsigned long long)timeout);
        goto out;
    }
    if (secret) {
        if (password) {
            vbd_error_setf(err, EINVAL, "iSCSI: 'password' and 'password-secret' are mutually exclusive");
            goto out;
        }
        if (!(password = secret_string(secret, err)))
            goto out;
    }
    if (password && !user) {
        vbd_error_setf(err, EINVAL, "iSCSI: a password needs a 'user'");
        goto out;
    }
    s->lun = (int)lun;
    s->portal = strchr(portal, ':') && !strchr(portal, ']') && strchr(portal, ':') == strrchr(portal, ':')
                    ? vbd_xstrdup(portal)
                : portal[0] == '[' && strstr(portal, "]:") ? vbd_xstrdup(portal)
                                                           : vbd_xasprintf("%s:%s", portal, ISCSI_DEFAULT_PORT);
    s->target = target;
    target = NULL;
    s->initiator = initiator ? initiator : vbd_xstrdup(ISCSI_DEFAULT_INITIATOR);
    initiator = NULL;
    s->user = user;
    s->password = password;
    user = password = NULL;
    s->digest = digest;
    s->timeout = timeout;
    if (!(s->iscsi = new_context(s))) {
        vbd_error_setf(err, EINVAL, "iSCSI: cannot set up a context%s", s->user ? " (CHAP user)" : "");
        rc = -EINVAL;
        goto fail;
    }
    uint64_t limit = timeout ? timeout : DEFAULT_CONNECT_TIMEOUT_S;
    snprintf(n->filename, sizeof(n->filename), "iscsi://%s/%s/%d", s->portal, s->target, s->lun);

    /* libiscsi writes with writev(2), which cannot say MSG_NOSIGNAL: a
     * target that dies under a write would kill the whole process with
     * SIGPIPE instead of starting a reconnect */
    vbd_sigpipe_ignore();
    /* log in, bounded: a portal that does not answer is an error in time */
    s->loop = vbd_loop_current();
    struct connect_wait w = {.co = vbd_co_self()};
    if (iscsilib.iscsi_full_connect_async(s->iscsi, s->portal, s->lun, connect_cb, &w) != 0) {
        vbd_error_setf(err, EIO, "iSCSI: cannot connect to %s: %s", s->portal, iscsilib.iscsi_get_error(s->iscsi));
        rc = -EIO;
        goto fail;
    }
    s->timer = (struct vbd_timer){.fn = timer_fn, .arg = s};
    vbd_timer_arm(&s->timer, vbd_clock_ns() + EVENT_INTERVAL_NS);
    /* a safety net for a TCP connect that never completes */
    struct vbd_timer wt = {.fn = connect_timeout, .arg = &w};
    vbd_timer_arm(&wt, vbd_clock_ns() + (limit + 2) * 1000000000ull);
    update_events(s);
    while (!w.done && !w.timed_out) {
        w.waiting = true;
        vbd_co_yield();
        w.waiting = false;
    }
    vbd_timer_cancel(&wt);
    if (!w.done || w.status != SCSI_STATUS_GOOD) {
        if (!w.done)
            vbd_error_setf(err, ETIMEDOUT, "iSCSI: login to %s at %s timed out after %llu seconds", s->target, s->portal,
                           (unsigned long long)limit + 2);
        else
            vbd_error_setf(err, EIO, "iSCSI: cannot open LUN %d of %s at %s: %s", s->lun, s->target, s->portal,
                           login_error(s));
        rc = w.done ? -EIO : -ETIMEDOUT;
        goto fail;
    }
    iscsilib.iscsi_set_timeout(s->iscsi, (int)timeout);
    if ((rc = probe_lun(n, flags, err)) < 0)
        goto fail;
    s->zero_block = vbd_xcalloc(1, s->block_size);
    rc = 0;
    goto out;
fail:
    s->closing = true;
    vbd_timer_cancel(&s->timer);
    drop_watch(s);
    if (s->iscsi)
        iscsilib.iscsi_destroy_context(s->iscsi);
    s->iscsi = NULL;
    free_conn_strings(s);
    if (rc >= 0)
        rc = -EIO;
out:
    free(transport);
    free(portal);
    free(target);
    free(user);
    if (password)
        memset(password, 0, strlen(password));
    free(password);
    free(secret);
    free(initiator);
    return rc;
}

static void free_conn_strings(struct iscsi_state *s)
{
    if (s->password)
        memset(s->password, 0, strlen(s->password));
    free(s->password);
    free(s->user);
    free(s->portal);
    free(s->target);
    free(s->initiator);
    s->portal = s->target = s->initiator = s->user = s->password = NULL;
}

/* The watch is freed when the loop sees its poll cancelled: let it. */
static void drop_watch(struct iscsi_state *s)
{
    if (!s->watch)
        return;
    vbd_loop_unwatch_fd(s->watch);
    s->watch = NULL;
    vbd_co_sleep_ns(1000000);
}

static void logout_cb(struct iscsi_context *iscsi, int status, void *command_data, void *opaque)
{
    (void)iscsi;
    (void)status;
    (void)command_data;
    connect_cb(iscsi, status, NULL, opaque);
}

static void close_co(void *arg)
{
    struct iscsi_state *s = arg;
    struct connect_wait w = {.co = vbd_co_self()};
    s->logging_out = true;
    if (!iscsilib.iscsi_is_logged_in(s->iscsi) || iscsilib.iscsi_logout_async(s->iscsi, logout_cb, &w) != 0)
        return;
    struct vbd_timer wt = {.fn = connect_timeout, .arg = &w};
    vbd_timer_arm(&wt, vbd_clock_ns() + 2000000000ull);
    kick(s);
    while (!w.done && !w.timed_out) {
        w.waiting = true;
        vbd_co_yield();
        w.waiting = false;
    }
    vbd_timer_cancel(&wt);
}

static void close_end_co(void *arg)
{
    struct iscsi_state *s = arg;
    s->closing = true;
    vbd_timer_cancel(&s->timer);
    drop_watch(s);
}

static void iscsi_close(struct vbd_node *n)
{
    struct iscsi_state *s = n->opaque;
    /* a polite logout (bounded), so the target frees the session now */
    vbd_co_run_sync(close_co, s);
    vbd_co_run_sync(close_end_co, s);
    iscsilib.iscsi_destroy_context(s->iscsi);
    free(s->zero_block);
    allocmap_free(s);
    free_conn_strings(s);
}

/* ---------- I/O ---------- */

static int rw(struct vbd_node *n, bool write, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    struct iscsi_state *s = n->opaque;
    struct iovec small[64], *iov = small;
    int cap = q->niov > 64 ? q->niov : 64;
    if (cap > 64)
        iov = vbd_xmalloc(sizeof(*iov) * (size_t)cap);
    int cnt = vbd_iov_slice(iov, cap, q->iov, q->niov, qoff, bytes);
    /* struct scsi_iovec is laid out as struct iovec */
    struct iscsi_req r = {.op = write ? OP_WRITE : OP_READ,
                          .lba = off / s->block_size,
                          .nblocks = (uint32_t)(bytes / s->block_size),
                          .iov = (struct scsi_iovec *)iov,
                          .niov = cnt,
                          .fua = (flags & VBD_REQ_FUA) ? 1 : 0};
    if (write) /* a block status answered meanwhile must not say "unmapped" */
        allocmap_update(s, off, bytes, true, true);
    int rc = run(n, &r, NULL);
    if (write) {
        /* even a failed write may have mapped some of it */
        allocmap_update(s, off, bytes, true, true);
        s->writes_done++;
    }
    if (r.task)
        iscsilib.scsi_free_scsi_task(r.task);
    if (iov != small)
        free(iov);
    return rc;
}

static int iscsi_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    struct iscsi_state *s = n->opaque;
    (void)flags;
    uint64_t len;
    /* known unmapped, and unmapped blocks read as zeroes: no round trip */
    if (s->lbprz && allocmap_lookup(s, off, bytes, &len) == 0 && len == bytes) {
        vbd_iov_memset(q->iov, q->niov, qoff, 0, bytes);
        return 0;
    }
    return rw(n, false, off, bytes, q, qoff, 0);
}

static int iscsi_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    return rw(n, true, off, bytes, q, qoff, flags);
}

static int iscsi_flush(struct vbd_node *n)
{
    struct iscsi_req r = {.op = OP_FLUSH};
    int rc = run(n, &r, NULL);
    if (r.task)
        iscsilib.scsi_free_scsi_task(r.task);
    return rc;
}

static int iscsi_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    struct iscsi_state *s = n->opaque;
    if (!s->lbpu)
        return -ENOTSUP;
    struct iscsi_req r = {.op = OP_UNMAP, .lba = off / s->block_size, .nblocks = (uint32_t)(bytes / s->block_size)};
    struct scsi_sense sense = {0};
    /* the target may unmap all, some or none of it */
    allocmap_update(s, off, bytes, false, false);
    int rc = run(n, &r, &sense);
    allocmap_update(s, off, bytes, false, false);
    s->writes_done++;
    if (r.task)
        iscsilib.scsi_free_scsi_task(r.task);
    /* discard is advisory: a target that turns UNMAP down is not asked again */
    if (rc == -EINVAL && sense.key == SCSI_SENSE_ILLEGAL_REQUEST) {
        s->lbpu = false;
        return -ENOTSUP;
    }
    return rc;
}

static int iscsi_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    struct iscsi_state *s = n->opaque;
    if (!s->has_write_same)
        return -ENOTSUP;
    struct iscsi_req r = {.op = OP_WRITE_SAME,
                          .lba = off / s->block_size,
                          .nblocks = (uint32_t)(bytes / s->block_size),
                          .unmap = (flags & VBD_REQ_MAY_UNMAP) && s->lbpws && s->lbprz};
    struct scsi_sense sense = {0};
    /* zeroes with UNMAP may leave the blocks mapped or not; without, mapped */
    allocmap_update(s, off, bytes, !r.unmap, !r.unmap);
    int rc = run(n, &r, &sense);
    allocmap_update(s, off, bytes, !r.unmap, !r.unmap);
    s->writes_done++;
    if (r.task)
        iscsilib.scsi_free_scsi_task(r.task);
    /* no WRITE SAME(16) there: the generic layer writes zero buffers, now and later */
    if (rc == -EINVAL && sense.key == SCSI_SENSE_ILLEGAL_REQUEST) {
        s->has_write_same = false;
        return -ENOTSUP;
    }
    return rc;
}

static int iscsi_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                              uint64_t *map, struct vbd_node **file)
{
    struct iscsi_state *s = n->opaque;
    (void)want_zero;
    *map = off;
    *file = n;
    *pnum = bytes;
    if (!s->has_lba_status)
        return VBD_BS_DATA | VBD_BS_OFFSET_VALID;
    uint64_t known_len;
    int known = allocmap_lookup(s, off, bytes, &known_len);
    if (known >= 0) {
        *pnum = known_len;
        return known ? VBD_BS_DATA | VBD_BS_OFFSET_VALID : VBD_BS_OFFSET_VALID | (s->lbprz ? VBD_BS_ZERO : 0);
    }
    uint64_t lba = off / s->block_size, writes_before = s->writes_done;
    struct iscsi_req r = {.op = OP_LBA_STATUS, .lba = lba};
    struct scsi_sense sense = {0};
    int rc = run(n, &r, &sense);
    struct scsi_get_lba_status *st = rc == 0 ? iscsilib.scsi_datain_unmarshall(r.task) : NULL;
    int ret = VBD_BS_DATA | VBD_BS_OFFSET_VALID;
    if (rc < 0) {
        if (r.task)
            iscsilib.scsi_free_scsi_task(r.task);
        if (sense.key == SCSI_SENSE_ILLEGAL_REQUEST) {
            s->has_lba_status = false; /* the target has no GET LBA STATUS: everything is data */
            return ret;
        }
        return rc;
    }
    if (st && st->num_descriptors > 0) {
        const struct scsi_lba_status_descriptor *d = &st->descriptors[0];
        if (d->lba <= lba && d->lba + d->num_blocks > lba) {
            uint64_t len = (d->lba + d->num_blocks - lba) * s->block_size;
            if (len < bytes)
                *pnum = len;
            if (d->provisioning != SCSI_PROVISIONING_TYPE_MAPPED)
                ret = VBD_BS_OFFSET_VALID | (s->lbprz ? VBD_BS_ZERO : 0);
        }
    }
    /* Remembered unless data changed while the target answered: then the
     * answer may be older than a write the cache already knows of. */
    for (uint32_t i = 0; st && s->writes_done == writes_before && i < st->num_descriptors; i++) {
        const struct scsi_lba_status_descriptor *d = &st->descriptors[i];
        if (d->lba >= s->num_blocks || !d->num_blocks)
            break;
        uint64_t nb = d->num_blocks < s->num_blocks - d->lba ? d->num_blocks : s->num_blocks - d->lba;
        bool mapped = d->provisioning == SCSI_PROVISIONING_TYPE_MAPPED;
        allocmap_update(s, d->lba * s->block_size, nb * s->block_size, mapped, true);
    }
    iscsilib.scsi_free_scsi_task(r.task);
    return ret;
}

/* The capacity may change (the target's LUN resized): read it again. */
static int iscsi_refresh_size(struct vbd_node *n)
{
    struct iscsi_state *s = n->opaque;
    struct iscsi_req r = {.op = s->use_16 ? OP_RC16 : OP_RC10};
    int rc = run(n, &r, NULL);
    if (rc == 0) {
        uint64_t blocks = 0;
        if (r.op == OP_RC16) {
            struct scsi_readcapacity16 *c = iscsilib.scsi_datain_unmarshall(r.task);
            blocks = c && c->block_length == s->block_size ? c->returned_lba + 1 : 0;
        } else {
            struct scsi_readcapacity10 *c = iscsilib.scsi_datain_unmarshall(r.task);
            blocks = c && c->block_size == s->block_size ? (uint64_t)c->lba + 1 : 0;
        }
        if (blocks && blocks <= VBD_MAX_REQUEST_END / s->block_size) {
            bool changed = blocks != s->num_blocks;
            s->num_blocks = blocks;
            if (changed) /* new clusters, maybe a new cluster size: start over */
                allocmap_init(s);
            vbd_node_set_size(n, blocks * s->block_size);
        } else {
            rc = -EIO;
        }
    }
    if (r.task)
        iscsilib.scsi_free_scsi_task(r.task);
    return rc;
}

/* ---------- the URI ---------- */

/* iscsi://[user[%password]@]host[:port]/target-iqn/lun, as libiscsi and QEMU
 * read it; written into QEMU's options (transport, portal, target, lun,
 * user, password). */
static int iscsi_parse_filename(const char *filename, struct json_object *opts, struct vbd_error **err)
{
    if (strncmp(filename, "iscsi://", 8)) {
        vbd_error_setf(err, EINVAL, "Invalid iSCSI URI '%s': it must start with iscsi://", filename);
        return -EINVAL;
    }
    const char *p = filename + 8;
    const char *slash = strchr(p, '/');
    if (!slash || slash == p) {
        vbd_error_setf(err, EINVAL, "Invalid iSCSI URI '%s': expected iscsi://[user[%%password]@]host[:port]/target-iqn/lun",
                       filename);
        return -EINVAL;
    }
    char *auth = vbd_xstrndup(p, (size_t)(slash - p)), *host = auth, *user = NULL, *pass = NULL;
    char *at = strrchr(auth, '@');
    if (at) {
        *at = 0;
        user = auth;
        host = at + 1;
        char *pct = strchr(user, '%');
        if (pct) {
            *pct = 0;
            pass = pct + 1;
        }
    }
    const char *tgt = slash + 1, *lslash = strrchr(tgt, '/');
    int rc = -EINVAL;
    if (!*host || (user && !*user)) {
        vbd_error_setf(err, EINVAL, "Invalid iSCSI URI '%s': %s is empty", filename, !*host ? "the host" : "the user");
        goto out;
    }
    if (!lslash || lslash == tgt) {
        vbd_error_setf(err, EINVAL, "Invalid iSCSI URI '%s': expected .../target-iqn/lun", filename);
        goto out;
    }
    char *end;
    errno = 0;
    unsigned long lun = strtoul(lslash + 1, &end, 10);
    if (!lslash[1] || *end || errno || lun > 0x3fff || lslash[1] == '-' || lslash[1] == '+') {
        vbd_error_setf(err, EINVAL, "Invalid iSCSI URI '%s': LUN '%s' is not a number in 0..16383", filename, lslash + 1);
        goto out;
    }
    json_object_object_add(opts, "transport", json_object_new_string("tcp"));
    json_object_object_add(opts, "portal", json_object_new_string(host));
    json_object_object_add(opts, "target", json_object_new_string_len(tgt, (int)(lslash - tgt)));
    json_object_object_add(opts, "lun", json_object_new_int64((int64_t)lun));
    if (user)
        json_object_object_add(opts, "user", json_object_new_string(user));
    if (pass)
        json_object_object_add(opts, "password", json_object_new_string(pass));
    rc = 0;
out:
    free(auth);
    return rc;
}

static const char *const iscsi_protocols[] = {"iscsi", NULL};

static const struct vbd_driver iscsi_driver = {
    .name = "iscsi",
    .kind = VBD_DRV_PROTOCOL,
    /* not VBD_DRV_CAP_REMOTE: QEMU's iscsi driver answers get_info, so
     * qemu-img info shows a dirty flag (false) for it. FIXED_LOOP: the
     * libiscsi context, its socket watch and the 250 ms timer are the
     * opening loop's (s->loop); moved to an iothread, requests there would
     * use the context while the main loop services its socket. */
    .caps = VBD_DRV_CAP_FIXED_LOOP,
    .protocols = iscsi_protocols,
    .state_size = sizeof(struct iscsi_state),
    .parse_filename = iscsi_parse_filename,
    .open = iscsi_open,
    .close = iscsi_close,
    .co_preadv = iscsi_preadv,
    .co_pwritev = iscsi_pwritev,
    .co_flush = iscsi_flush,
    .co_pdiscard = iscsi_pdiscard,
    .co_pwrite_zeroes = iscsi_pwrite_zeroes,
    .co_block_status = iscsi_block_status,
    .refresh_size = iscsi_refresh_size,
};
VBD_DRIVER_REGISTER(iscsi, iscsi_driver);
