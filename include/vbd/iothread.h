/* SPDX-License-Identifier: MIT */
#ifndef VBD_IOTHREAD_H
#define VBD_IOTHREAD_H

struct json_object;
struct vbd_error;
struct vbd_loop;

/* iothreads: `--object iothread,id=X[,poll-max-ns=NS]` starts a thread with
 * its own loop (src/engine/iothread.c). Exports look them up by id (NULL:
 * no such iothread); they stop after every export has shut down. Main
 * thread only. */
int vbd_iothread_add(struct json_object *opts, struct vbd_error **err);
struct vbd_loop *vbd_iothread_loop(const char *id);
void vbd_iothread_stop_all(void);

#endif
