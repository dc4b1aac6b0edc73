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
/* The main coroutine's wait for a stop or another request (vbd-daemon's and
 * vbd-nbd's): wake_init makes its eventfd (before the signal handlers are
 * set; without one it warns, and the wait is 200 ms), wake ends the wait
 * (async-signal-safe, any thread: the signal handlers, QMP quit, vbd-nbd's
 * last client), co_wait_wake waits (main loop, coroutine; returns at once
 * after a wake that came before it; the caller then checks its flags). */
void vbd_daemon_wake_init(void);
void vbd_daemon_wake(void);
void vbd_daemon_co_wait_wake(void);
#endif
