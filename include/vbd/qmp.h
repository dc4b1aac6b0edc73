/* SPDX-License-Identifier: MIT */
#ifndef VBD_QMP_H
#define VBD_QMP_H

#include <stdbool.h>
#include <stddef.h>

struct json_object;
struct vbd_error;
struct vbd_node;

/*
 * QMP, the control protocol of qemu-storage-daemon, served by vbd-daemon
 * (docs/interop/qmp-spec in QEMU). The monitor (src/qmp/monitor.c) reads
 * requests, the dispatcher (src/qmp/dispatch.c) checks the top-level
 * arguments against the command's table entry and runs it; each group of
 * commands is one file, src/qmp/cmd-<group>.c, with one table listed in
 * src/qmp/commands.c.
 *
 * Threads: commands run one at a time, in a coroutine on the main loop
 * (they may yield: flush, drain, wait for an iothread). Events may be
 * raised from any thread. The dispatcher and the change hook check that
 * they run in a coroutine on the main thread (assert); everything else
 * here is main thread too, except vbd_qmp_event.
 */

/* vbd's version, as the QMP greeting's "package" says it. */
#define VBD_VERSION "0.1.0"
#define VBD_QMP_PACKAGE "vbd-daemon " VBD_VERSION

/* Error classes QEMU still uses (qapi/error.json). */
#define VBD_QMP_GENERIC_ERROR "GenericError"
#define VBD_QMP_COMMAND_NOT_FOUND "CommandNotFound"
#define VBD_QMP_DEVICE_NOT_ACTIVE "DeviceNotActive"
#define VBD_QMP_DEVICE_NOT_FOUND "DeviceNotFound"

struct vbd_qmp_error {
    const char *cls; /* one of the classes above; NULL: no error */
    char desc[512];
};

__attribute__((format(printf, 3, 4)))
void vbd_qmp_error_setf(struct vbd_qmp_error *e, const char *cls, const char *fmt, ...);
/* GenericError with src's message; frees src (NULL src: "failed"). */
void vbd_qmp_error_take(struct vbd_qmp_error *e, struct vbd_error *src);

/*
 * A command. args is the "arguments" object (an empty object when the
 * request had none); the handler may take keys out of it. It returns the
 * "return" value (a new reference; vbd_qmp_ok() for {}), or NULL with *err
 * set.
 *
 * arg_spec lists the top-level arguments for the dispatcher and for
 * query-qmp-schema: space-separated "name:type", type one of str, int,
 * number, bool, object, array, any; a leading '?' marks it optional, e.g.
 * "node-name:str size:int ?iothread:str". The dispatcher refuses a missing
 * or unexpected argument and a wrong JSON type, as QEMU words them, before
 * the handler runs. NULL: the command is "boxed" (blockdev-add, object-add,
 * block-export-add ...) and its handler checks everything itself.
 */
struct vbd_qmp_command {
    const char *name;
    const char *arg_spec;
    struct json_object *(*run)(struct json_object *args, struct vbd_qmp_error *err);
    unsigned flags; /* VBD_QMP_* */
};
#define VBD_QMP_BEFORE_CAPS 1u /* allowed before qmp_capabilities (only qmp_capabilities itself) */

/* NULL-terminated list of every command (src/qmp/commands.c). */
const struct vbd_qmp_command *vbd_qmp_command_find(const char *name);
/* Iterate: start with NULL. */
const struct vbd_qmp_command *vbd_qmp_command_next(const struct vbd_qmp_command *prev);

/* The lock commands run under (one at a time): a block job holds it while
 * it changes the graph at its end. Coroutine, main loop. */
void vbd_qmp_graph_lock(void);
void vbd_qmp_graph_unlock(void);

/* The image locks of the daemon's file nodes (VBD_OPEN_LOCK_BY_USERS) made
 * what the users of the graph need now, as QEMU's permissions give them
 * (src/qmp/cmd-block-graph.c: the exports', the jobs' and every parent
 * node's, down the graph; docs/DESIGN.md, "Image locks"). extra: a user
 * about to come (an export before it serves, a job's target before it is
 * written), taking perm and sharing shared (BLK_PERM_* bits) on it; NULL:
 * none. The locks only given up first, then the ones taken: on a conflict
 * with another open file description (another process, or another file
 * node of ours on the same image) nothing stays changed and err says
 * which lock. Main loop only (asserted), no yield: call it after every
 * change to the graph's users, before anything writes through the change.
 * With err, first QEMU's in-process check (bdrv_parent_perms_conflict): a
 * user that takes what another user of the same node does not share is
 * refused with QEMU's "Permission conflict on node ..." (-EPERM) and no
 * lock changes; without err (a user went: only locks that go) no check. */
int vbd_qmp_image_locks_follow(struct vbd_node *extra, unsigned perm, unsigned shared, struct vbd_error **err);
/* The same with the extra user named as QEMU names it in a conflict (user:
 * "node 'cbw'", child: the name of its edge, "target"); the one above is
 * "an unnamed block device" and "root" (an export's or a job's backend). */
int vbd_qmp_image_locks_follow_as(struct vbd_node *extra, unsigned perm, unsigned shared, const char *user,
                                  const char *child, struct vbd_error **err);
/* A user about to come, for vbd_qmp_perm_check: it takes perm and shares
 * shared (BLK_PERM_* bits) on node, through an edge named child ("root",
 * "target", "main node"); its parent: a node (named as QEMU names a node
 * parent) or, NULL, the user named by user ("an unnamed block device",
 * "backup job 'j1'"). */
struct vbd_qmp_perm_user {
    struct vbd_node *node;
    unsigned perm, shared;
    struct vbd_node *parent;
    const char *user, *child;
};
/* QEMU's permission check (bdrv_parent_perms_conflict on every node) of
 * the graph with these users added, down through the nodes they reach:
 * 0, or -EPERM with err in qsd's words. No lock changes, main loop only;
 * at graph changes, never on the I/O path. */
int vbd_qmp_perm_check(const struct vbd_qmp_perm_user *extra, size_t nextra, struct vbd_error **err);
/* vbd_qmp_image_locks_follow with these users about to come (a job's
 * edges before the job holds them: its source's reads, its target's
 * writes). */
int vbd_qmp_image_locks_follow_users(const struct vbd_qmp_perm_user *extra, size_t nextra, struct vbd_error **err);
/* The same without the users' check: after a command or a job's end, which
 * changed the graph as QEMU would have it (a conflict left by such a change
 * is not a reason to keep stale locks). */
int vbd_qmp_image_locks_refresh(struct vbd_error **err);

/*
 * A change to the daemon's configuration (vbd-daemon --state): the hook
 * runs after every command that succeeded (args: its arguments, NULL if
 * none) and after a block job changed the graph at its end (command
 * "job-finalize", args NULL), under the commands' lock, before the reply
 * goes out. A failure of the hook turns the reply into an error. Main loop.
 */
typedef int (*vbd_qmp_change_hook)(const char *command, struct json_object *args, struct vbd_error **err);
void vbd_qmp_set_change_hook(vbd_qmp_change_hook fn);
int vbd_qmp_config_changed(const char *command, struct json_object *args, struct vbd_error **err);

/* {} as a return value. */
struct json_object *vbd_qmp_ok(void);

/*
 * Run one request object ({"execute": ..., "arguments": ..., "id": ...})
 * and return the reply object ({"return": ...} or {"error": ...}, with the
 * id echoed). negotiated: the client sent qmp_capabilities. Coroutine on
 * the main loop. Used by the monitor and by the fuzz target.
 */
struct json_object *vbd_qmp_dispatch(struct json_object *request, bool negotiated);
/* The same with the commands looked up in table (ended by a NULL name)
 * instead of every group: the fuzz target runs only harmless commands. */
struct json_object *vbd_qmp_dispatch_table(struct json_object *request, bool negotiated,
                                           const struct vbd_qmp_command *table);

/*
 * Events: sent to every monitor that negotiated capabilities, with a
 * timestamp taken now. Takes the reference on data (may be NULL). Safe
 * from any thread; the monitors send it from the main loop.
 */
void vbd_qmp_event(const char *name, struct json_object *data);

/* vbd-daemon: --chardev socket,id=ID,path=PATH,server=on,wait=off (or
 * host=,port=) and --monitor [chardev=]ID. Main thread. */
int vbd_qmp_chardev_add(struct json_object *opts, struct vbd_error **err);
int vbd_qmp_monitor_add(struct json_object *opts, struct vbd_error **err);
/* Daemon exit, first step: no command runs from here on (a running one
 * ends first; quit's reply is held), but the clients stay connected and
 * get the events of the stop (BLOCK_EXPORT_DELETED, the jobs'). */
void vbd_qmp_quiesce(void);
/* Last step: the held reply to quit, then every monitor and chardev is
 * closed (implies vbd_qmp_quiesce). */
void vbd_qmp_shutdown(void);
/* Set by the 'quit' command; the daemon's main coroutine watches it. */
bool vbd_qmp_quit_requested(void);

#endif
