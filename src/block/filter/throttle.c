/* SPDX-License-Identifier: MIT */
/* Filter driver "throttle" (QEMU's block/throttle.c): the requests of its
 * file wait until the limits of its throttle group let them through
 * (vbd/throttle.h). Reads count as reads; writes, zeroing and discards as
 * writes; flushes and block status are not throttled. */
#include "block/filter/passthrough.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/options.h"
#include "vbd/throttle.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct throttle_state {
    struct vbd_throttle_member *m;
};

/* The group the options name (open and reopen both require one). */
static int take_group(struct json_object *opts, char **group, struct vbd_error **err)
{
    if (vbd_opt_take_str(opts, "throttle-group", group, err) < 0)
        return -EINVAL;
    if (!*group) {
        vbd_error_setf(err, EINVAL, "Parameter 'throttle-group' is missing");
        return -EINVAL;
    }
    return 0;
}

static int throttle_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct throttle_state *s = n->opaque;
    char *group = NULL;
    if (take_group(opts, &group, err) < 0)
        return -EINVAL;
    s->m = vbd_throttle_member_join(group, err);
    free(group);
    if (!s->m)
        return -EINVAL;
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file) {
        vbd_throttle_member_leave(s->m);
        s->m = NULL;
        return -EINVAL;
    }
    vbd_filter_inherit(n);
    return 0;
}

static void throttle_close(struct vbd_node *n)
{
    struct throttle_state *s = n->opaque;
    vbd_throttle_member_leave(s->m);
    s->m = NULL;
}

static int throttle_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                           unsigned flags)
{
    struct throttle_state *s = n->opaque;
    vbd_throttle_co_intercept(s->m, false, bytes);
    return vbd_node_co_preadv(n->file, off, bytes, q, qoff, flags);
}

static int throttle_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                            unsigned flags)
{
    struct throttle_state *s = n->opaque;
    vbd_throttle_co_intercept(s->m, true, bytes);
    return vbd_node_co_pwritev(n->file, off, bytes, q, qoff, flags);
}

static int throttle_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    struct throttle_state *s = n->opaque;
    vbd_throttle_co_intercept(s->m, true, bytes);
    return vbd_node_co_pdiscard(n->file, off, bytes);
}

static int throttle_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    struct throttle_state *s = n->opaque;
    vbd_throttle_co_intercept(s->m, true, bytes);
    return vbd_node_co_pwrite_zeroes(n->file, off, bytes, flags);
}

/* blockdev-reopen may move the node to another group (QEMU's
 * throttle_reopen_prepare): it joins the new one at prepare, so that a
 * group that does not exist fails before anything changes; the switch is
 * made drained, no request of the node waiting in the old group. */
static int throttle_reopen_prepare(struct vbd_node *n, struct json_object *opts, void **staged,
                                   struct vbd_error **err)
{
    struct throttle_state *s = n->opaque;
    char *group = NULL;
    *staged = NULL;
    if (take_group(opts, &group, err) < 0)
        return -EINVAL;
    if (strcmp(group, vbd_throttle_member_group(s->m)))
        *staged = vbd_throttle_member_join(group, err);
    bool ok = *staged || !strcmp(group, vbd_throttle_member_group(s->m));
    free(group);
    return ok ? 0 : -EINVAL;
}

static void throttle_reopen_commit(struct vbd_node *n, void *staged)
{
    struct throttle_state *s = n->opaque;
    if (!staged)
        return;
    vbd_throttle_member_take_drains(staged, s->m);
    vbd_throttle_member_leave(s->m);
    s->m = staged;
}

static void throttle_reopen_abort(struct vbd_node *n, void *staged)
{
    (void)n;
    vbd_throttle_member_leave(staged);
}

/* A drained section over the node: its requests waiting in the group go
 * at once and new ones pass, as QEMU's throttle_co_drain_begin (else a
 * drain would wait for the limits: minutes for a few MiB at a low bps). */
static void throttle_drain_begin(struct vbd_node *n)
{
    struct throttle_state *s = n->opaque;
    vbd_throttle_member_drain_begin(s->m);
}

static void throttle_drain_end(struct vbd_node *n)
{
    struct throttle_state *s = n->opaque;
    vbd_throttle_member_drain_end(s->m);
}

static const struct vbd_driver throttle_driver = {
    .name = "throttle",
    .kind = VBD_DRV_FILTER,
    .state_size = sizeof(struct throttle_state),
    .caps = VBD_DRV_CAP_MULTI_LOOP,
    .open = throttle_open,
    .close = throttle_close,
    .co_preadv = throttle_preadv,
    .co_pwritev = throttle_pwritev,
    .co_pdiscard = throttle_pdiscard,
    .co_pwrite_zeroes = throttle_pwrite_zeroes,
    .co_block_status = vbd_filter_co_block_status,
    .co_truncate = vbd_filter_co_truncate,
    .refresh_size = vbd_filter_refresh_size,
    .reopen_rw = vbd_filter_reopen_rw,
    .reopen_prepare = throttle_reopen_prepare,
    .reopen_commit = throttle_reopen_commit,
    .reopen_abort = throttle_reopen_abort,
    .drain_begin = throttle_drain_begin,
    .drain_end = throttle_drain_end,
};
VBD_DRIVER_REGISTER(throttle, throttle_driver);
