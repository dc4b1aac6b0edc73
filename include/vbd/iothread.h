/* SPDX-License-Identifier: MIT */
#ifndef VBD_IOTHREAD_H
#define VBD_IOTHREAD_H

#include <stdbool.h>
#include <stdint.h>

struct json_object;
struct vbd_error;
struct vbd_loop;

/* iothreads: `--object iothread,id=X[,poll-max-ns=NS]` starts a thread with
 * its own loop (src/engine/iothread.c). Exports look them up by id (NULL:
 * no such iothread); they stop after every export has shut down. Every
 * function here: main thread only (asserted: the list is not locked). */
int vbd_iothread_add(struct json_object *opts, struct vbd_error **err);
struct vbd_loop *vbd_iothread_loop(const char *id);
void vbd_iothread_stop_all(void);

/* A user (an export's rings, a node moved there) takes the iothread and
 * gives it back when it no longer runs anything there; object-del refuses
 * an iothread that has users. acquire: NULL if there is no such iothread. */
struct vbd_loop *vbd_iothread_acquire(const char *id);
void vbd_iothread_release(struct vbd_loop *loop);
/* A block node lives there (its home loop, vbd/block.h): vbd_node_co_set_home
 * and the node's close count them; no-ops for a loop that is no iothread
 * (the main loop). */
void vbd_iothread_node_hold(struct vbd_loop *loop);
void vbd_iothread_node_release(struct vbd_loop *loop);
/* The id of the iothread running loop, or NULL (the main loop). */
const char *vbd_iothread_id(struct vbd_loop *loop);
/* QMP object-del: stop and join the thread. -EBUSY while it has users,
 * -ENOENT if there is none, with *err saying so. */
int vbd_iothread_remove(const char *id, struct vbd_error **err);

/* For query-iothreads and qom-get/qom-set/qom-list. */
struct vbd_iothread_info {
    const char *id;
    int thread_id;
    uint64_t poll_max_ns, poll_grow, poll_shrink, aio_max_batch, thread_pool_min, thread_pool_max;
    int users;
};
bool vbd_iothread_info(const char *id, struct vbd_iothread_info *info);
/* The ids in creation order: start with NULL; NULL at the end. */
const char *vbd_iothread_next(const char *prev);
/* poll-max-ns (applied on the thread), poll-grow, poll-shrink,
 * aio-max-batch (kept: the loop's own rules apply); -EINVAL for any other
 * property, -ENOENT for no such iothread. */
int vbd_iothread_set(const char *id, const char *prop, uint64_t value);

#endif
