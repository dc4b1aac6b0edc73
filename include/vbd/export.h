/* SPDX-License-Identifier: MIT */
#ifndef VBD_EXPORT_H
#define VBD_EXPORT_H

#include "vbd/iothread.h" /* exports put their queues on iothreads */

#include <stdbool.h>

struct json_object;
struct vbd_error;
struct vbd_loop;
struct vbd_backend;

/*
 * An export serves a node to the outside (vhost-user-blk, nbd). The
 * daemon parses `--export type=T,id=...,node-name=...,...` into JSON and
 * calls the type's create() from the main thread (its loop is running or
 * about to run). One table per export type, registered in
 * src/export/registry.c.
 */
struct vbd_export_type;
/* Every export implementation embeds this first. */
struct vbd_export {
    const struct vbd_export_type *type;
};
struct vbd_export_type {
    const char *type; /* "vhost-user-blk", "nbd" */
    /* opts: all keys of --export except "type" (id, node-name, writable, ...).
     * Takes the keys it knows; leftovers are reported by the caller. */
    struct vbd_export *(*create)(struct json_object *opts, struct vbd_error **err);
    /* Stop accepting, finish in-flight requests, flush, remove sockets.
     * Called from the main thread's coroutine; returns when done. */
    void (*shutdown)(struct vbd_export *exp);
    void (*free)(struct vbd_export *exp);
    /* For query-block-exports / stats (may be NULL). */
    struct json_object *(*query)(struct vbd_export *exp);
    /* Optional, from the main thread's coroutine. cont: retry requests
     * stopped by an error policy (werror=stop) now, as QMP 'cont' does.
     * resized: the node's size may have changed; tell the client. */
    void (*cont)(struct vbd_export *exp);
    void (*resized)(struct vbd_export *exp);
    /* The backend the export's requests go through (query-blockstats, and
     * who writes to which node for blockdev-reopen). */
    struct vbd_backend *(*backend)(struct vbd_export *exp);
};

/* Export types, NULL-terminated (src/export/registry.c). */
const struct vbd_export_type *const *vbd_export_types(void);

#endif
