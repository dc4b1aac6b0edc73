/* SPDX-License-Identifier: MIT */
#ifndef VBD_DAEMON_STATE_H
#define VBD_DAEMON_STATE_H

struct vbd_error;

/*
 * vbd-daemon --state FILE: what QMP changed in the daemon's configuration
 * (nodes, exports, the NBD server, objects, iothread moves, and the graph
 * changes of snapshots and jobs) survives a restart, as SPDK's
 * save_config/load_config. FILE holds the QMP commands that rebuild the
 * current configuration on top of the command line (not a log: a node
 * deleted is gone from it, a pivot rewrites the export's node), in an
 * envelope with a version and a CRC. It is rewritten atomically (temporary
 * file, fsync, rename, fsync of the directory) after every change, before
 * the command's reply. Main loop only.
 */

/* Load FILE (absent: an empty state) and replay it; the command line has
 * already been processed, and anything it made is never written to FILE.
 * A damaged, truncated or newer FILE, or a command of it that fails (a
 * node-name the command line already uses), is an error naming FILE; FILE
 * is left as it is. Coroutine on the main loop. */
/* Called with the QMP graph lock held (the daemon holds it until its
 * command line and FILE are applied). */
int vbd_state_load(const char *path, struct vbd_error **err);
void vbd_state_free(void);
/* An export the command line made (its options, as vbd_daemon_export_add
 * got them): a pivot or delete of it over QMP is kept. */
struct json_object;
void vbd_state_note_cmdline_export(struct json_object *opts);

#endif
