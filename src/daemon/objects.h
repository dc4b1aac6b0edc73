/* SPDX-License-Identifier: MIT */
#ifndef VBD_DAEMON_OBJECTS_H
#define VBD_DAEMON_OBJECTS_H

#include <stdbool.h>
#include <stdint.h>

struct json_object;
struct vbd_error;
struct vbd_export;
struct vbd_export_type;
struct vbd_node;

/*
 * What the user created in vbd-daemon, from the command line or QMP: the
 * nodes it named (--blockdev, --drive, blockdev-add; the daemon holds one
 * reference on each, as QEMU's "monitor-owned" nodes) and the exports by
 * id. Main thread only (the main loop's coroutines: startup, QMP commands,
 * signals).
 */

/* Takes over the caller's reference on n. */
void vbd_daemon_node_add(struct vbd_node *n);
/* A node the user added, by node-name, or NULL (nodes opened implicitly
 * below one, e.g. its "file", are reachable with vbd_node_find). */
struct vbd_node *vbd_daemon_node_find(const char *name);
/* Iterate the user's nodes in the order they were added; start with NULL. */
struct vbd_node *vbd_daemon_node_next(struct vbd_node *prev);
/* blockdev-del: drop the daemon's reference. Refused (-EBUSY, message
 * naming the node) while anything else holds it: an export, a parent
 * node, a job. -ENOENT if the user did not add it. */
int vbd_daemon_node_del(const char *name, struct vbd_error **err);
/* --state's replay of a node its users hold (blockdev-snapshot-sync's
 * overlay, drive-mirror's target): the daemon's
 * reference goes, its users (exports, nodes above it) hold it from now
 * on, as the command left it (vbd_node.held_by_users). -ENOENT if the
 * user did not add it. */
int vbd_daemon_node_release(const char *name, struct vbd_error **err);

struct vbd_daemon_export {
    char *id; /* as given, however long (QEMU keeps it whole) */
    const struct vbd_export_type *type;
    struct vbd_export *exp;
    struct vbd_daemon_export *next;
    struct vbd_loop *moved_to; /* it took its graph to this iothread (follow_export) */
    struct vbd_loop *fixed_loop; /* fixed-iothread=true: its graph stays on this loop */
    uint64_t created;          /* vbd_graph_user_seq at its creation */
};
/* --export / block-export-add: opts holds "type", "id" and the type's
 * keys (taken; leftovers are an error naming `what`). */
int vbd_daemon_export_add(struct json_object *opts, const char *what, struct vbd_error **err);
struct vbd_daemon_export *vbd_daemon_export_find(const char *id);
struct vbd_daemon_export *vbd_daemon_export_first(void);
/* The node the export serves now (a pivot may have changed it), or NULL. */
struct vbd_node *vbd_daemon_export_node(struct vbd_daemon_export *e);
/* Shut the export down (in-flight requests finish) and free it. */
void vbd_daemon_export_remove(struct vbd_daemon_export *e);

/*
 * Graph changes under running exports (live snapshots, internal snapshots
 * and bitmap changes over QMP). A drain covers every export whose backend
 * reaches the node (it is the backend's root or below it): their requests
 * in flight finish and new ones wait until drain_end (vbd/backend.h). The
 * block jobs that use the node or a node above it pause (QEMU's drain
 * pauses a job through its child_job edge) and the drain waits until they
 * do no I/O; the exports over the other nodes such a job uses are drained
 * too (a guest write there may copy into the node: copy-before-write).
 * In a coroutine on the main loop; the set is kept in `d` so that
 * drain_end ends exactly what begin started, even after the graph changed.
 * _quiet: the jobs pause without a status change (vbd's own drains where
 * QEMU has none and shows nothing: persistent bitmap changes, a job's
 * write tracker coming off).
 */
struct vbd_job;
struct vbd_daemon_drain {
    struct vbd_backend **be;
    int n;
    struct vbd_job **jobs; /* the jobs it paused (referenced) */
    int njobs;
    struct vbd_node **held; /* nodes whose drain_begin it called (referenced) */
    int nheld;
    bool quiet;
};
void vbd_daemon_co_drain_begin(struct vbd_node *node, struct vbd_daemon_drain *d);
void vbd_daemon_co_drain_begin_quiet(struct vbd_node *node, struct vbd_daemon_drain *d);
void vbd_daemon_drain_end(struct vbd_daemon_drain *d);
/* QEMU's bdrv_drain_all at the start of a transaction (and of the
 * commands that are one: blockdev-backup, drive-backup, the snapshots): a
 * drained section of every node, ended at once: every running block job
 * pauses and resumes (JOB_STATUS_CHANGE paused, running, as qsd's). */
void vbd_daemon_co_drain_all(void);
/* A job made inside d (a backup action's, whose drain of its source was
 * begun first) joins it, as QEMU's job attached to a drained node is
 * paused at once: it stops at its first pause point after its start
 * until d ends. */
void vbd_daemon_drain_add_job(struct vbd_daemon_drain *d, struct vbd_job *job);
/* Inside a drain of `old`: every export whose backend's root is old sends
 * its requests to `new` from now on. Nothing changes on failure (a
 * writable export and a read-only new node). Returns how many switched. */
int vbd_daemon_replace_root(struct vbd_node *old, struct vbd_node *new_root, struct vbd_error **err);

/* x-blockdev-set-iothread: move n and the nodes below it to loop (NULL:
 * the main loop), with every node of a block job using one of them (as
 * QEMU moves a job's nodes together); the exports over them drained and
 * the jobs paused meanwhile (paused/running events, as qsd's drain).
 * Refused, nothing moved, if an export with fixed-iothread keeps one of
 * them on its loop or one cannot move (an nbd client node). Main loop,
 * coroutine. */
struct vbd_loop;
int vbd_daemon_co_move_node(struct vbd_node *n, struct vbd_loop *loop, struct vbd_error **err);

/* blockdev-mirror/-backup, drive-mirror/-backup: the target (and the
 * nodes below it) joins the source's home loop when the job is made, as
 * QEMU moves the target into the source's AioContext; its exports drained
 * meanwhile, NBD connections following, another job's nodes too (as
 * vbd_daemon_co_move_node). One that cannot move (a driver bound to its
 * loop) stays where it is: the job's requests hop there. The caller
 * checked vbd_daemon_node_pinned. Main loop, coroutine. */
void vbd_daemon_co_join_source_loop(struct vbd_node *target, struct vbd_node *source);

/* Whether an export with fixed-iothread keeps n's graph off loop: every
 * move of it there is refused ("Cannot change iothread of active block
 * backend", qsd's words), those a block job makes itself too (a backup or
 * mirror target joining its source's thread). */
bool vbd_daemon_node_pinned(struct vbd_node *n, struct vbd_loop *loop);

/* Daemon exit: shut every export down, flush every node (remove_all
 * frees them, after the iothreads stopped). */
void vbd_daemon_shutdown_exports(void);
void vbd_daemon_flush_nodes(void);
void vbd_daemon_free_all(void);

#endif
