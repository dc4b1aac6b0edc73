/* SPDX-License-Identifier: MIT */
/*
 * Character devices (chardev.c), as qemu-storage-daemon has them: made by
 * --chardev (a socket server, for a monitor) or chardev-add at run time
 * (socket server or client, file, pipe, null, ringbuf/memory), listed by
 * query-chardev, removed by chardev-remove unless a monitor uses them.
 * Main thread only.
 */
#ifndef VBD_QMP_CHARDEV_H
#define VBD_QMP_CHARDEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vbd/coroutine.h"

struct json_object;

struct qmp_chardev {
    char *id;
    const char *backend;   /* ChardevBackendKind: "socket", "file", "pipe", "null", "ringbuf", "memory", "stdio" */
    int listen_fd;         /* socket server: the listening socket; else -1 */
    bool accept_lacking;   /* its accept is short of fds or memory (vbd_co_accept_backoff) */
    int fd;                /* socket client: the connection; file and pipe: output; stdio: 1; else -1 */
    int fd_in;             /* file in=, pipe's separate input end; stdio: 0; else -1 */
    char *unix_path;       /* socket server on a path: removed when it closes */
    char *filename;        /* query-chardev's text where it does not follow a connection */
    bool has_monitor;      /* a monitor uses it (busy: not removable, not changeable) */
    uint8_t *ring;         /* ringbuf/memory: size bytes, a power of two */
    uint64_t ring_size, ring_prod, ring_cons;
    /* a socket chardev added at run time: a coroutine takes one client at
     * a time (server) and sees it go (server and client); chardev-remove
     * stops it and waits for it */
    bool watching, closing;
    bool lost;             /* a client chardev whose server went away */
    char *peer_text;       /* a client's address as QEMU words it disconnected */
    struct vbd_co_queue watch_done;
    struct qmp_chardev *next;
};

struct qmp_chardev *qmp_chardev_find(const char *id);
/* The chardevs in the order they were made: NULL gives the first, then NULL after the last. */
struct qmp_chardev *qmp_chardev_next(struct qmp_chardev *prev);
/* qom-list / qom-get of /chardevs/ID, as QEMU's chardev objects: the QOM
 * type ("chardev-socket", ...) in *type and the properties (not "type";
 * a socket's "connected" and "addr"), or NULL: no chardev has that id. */
struct json_object *qmp_chardev_qom_props(const char *id, const char **type);
/* Close and free every chardev (daemon exit, after the monitors ended). */
void qmp_chardev_close_all(void);

/* monitor.c: the fd of the client connected to c's monitor, or -1. */
int qmp_monitor_client_fd(const struct qmp_chardev *c);
/* monitor.c: remember the main loop for events (the first --chardev). */
void qmp_monitor_set_main_loop(void);

#endif
