/* SPDX-License-Identifier: MIT */
#ifndef VBD_DAEMON_H
#define VBD_DAEMON_H
int vbd_daemon_main(int argc, char **argv);
/* --pidfile (and vbd-nbd's --pid-file): as QEMU's qemu_write_pidfile, the
 * file created 0600 and locked for the process's life (a second process
 * given it refuses, QEMU's words). -1 after reporting, prefix before the
 * words (qsd says "cannot create PID file: ", qemu-nbd nothing).
 * close_pidfile drops the lock (after the caller unlinked the file). */
int vbd_daemon_write_pidfile(const char *path, const char *prefix);
void vbd_daemon_close_pidfile(void);
#endif
