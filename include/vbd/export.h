/* SPDX-License-Identifier: MIT */
#ifndef VBD_EXPORT_H
#define VBD_EXPORT_H

#include "vbd/iothread.h" /* exports put their queues on iothreads */

#include <stdbool.h>

struct json_object;
struct vbd_backend;
struct vbd_error;
struct vbd_loop;

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
    /* Optional, main thread. in_use: a client is connected (QMP's
     * block-export-del mode=safe refuses then). disconnect: drop the
     * clients now (mode=hard), without waiting for them: shutdown() then
     * finishes what was in flight. */
    bool (*in_use)(struct vbd_export *exp);
    void (*disconnect)(struct vbd_export *exp);
    /* Optional, main thread: every client still counted by in_use has
     * closed its end of the connection (the connection ends once it reads
     * that): block-export-del mode=safe waits for those rather than
     * refusing a client that left just before the command. */
    bool (*clients_leaving)(struct vbd_export *exp);
    /* Optional, from the main thread's coroutine. cont: retry requests
     * stopped by an error policy (werror=stop) now, as QMP 'cont' does.
     * resized: the node's size may have changed; tell the client. */
    void (*cont)(struct vbd_export *exp);
    void (*resized)(struct vbd_export *exp);
    /* The backend its requests go through (may be NULL: the export has
     * none): query-blockstats, who writes to which node for
     * blockdev-reopen; the daemon drains it and swaps its root for graph
     * changes under a running export (live snapshot). */
    struct vbd_backend *(*backend)(struct vbd_export *exp);
    /* Optional: the loop its requests arrive on when that is not the main
     * loop (vhost-user-blk: its first ring's iothread). The daemon moves
     * the node's graph there when no other export uses it, so that a
     * single-loop graph (qcow2) does not hop for every request. */
    struct vbd_loop *(*request_loop)(struct vbd_export *exp);
    /* It serves its requests on its node's home loop, following the node
     * when it moves (NBD: each connection between two requests), and
     * takes qsd's common export options for it: `iothread` (the daemon
     * moves the node there before create(); a failed move is ignored
     * unless `fixed-iothread`) and `fixed-iothread` (the node may not move
     * to another loop while exported: "Cannot change iothread of active
     * block backend"). */
    bool node_iothread;
    /* Optional, with node_iothread, from the main thread's coroutine after
     * its node (or one below) moved to another loop and the drain ended:
     * returns once its clients serve from the new loop, as qsd moves them
     * in the move's drained section (NBD: idle connections are woken to
     * follow at once, so object-del of the old iothread succeeds next). */
    void (*node_moved)(struct vbd_export *exp);
};

/*
 * An export's request failed on the node: raise QMP's BLOCK_IO_ERROR
 * {device: the export id, node-name, operation read|write, action
 * report|stop|ignore, nospace, reason}. Any thread; errors only, never the
 * successful path (it allocates).
 */
void vbd_export_io_error_event(const char *export_id, const char *node_name, bool write, int err,
                               const char *action);

/* Export types, NULL-terminated (src/export/registry.c). */
const struct vbd_export_type *const *vbd_export_types(void);

#endif
