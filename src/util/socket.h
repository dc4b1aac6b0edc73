/* SPDX-License-Identifier: MIT */
#ifndef VBD_UTIL_SOCKET_H
#define VBD_UTIL_SOCKET_H

#include <stdbool.h>

/*
 * A listening unix socket at PATH that exists only once it accepts: the
 * socket is bound to a temporary name in PATH's directory, listens, and is
 * then renamed over PATH (replacing a stale socket left there). A client
 * that waits for the file and connects at once is never refused.
 * Returns a non-blocking, close-on-exec fd, or -errno (nothing left behind).
 */
int vbd_unix_listen(const char *path, int backlog);

/*
 * Called by an accept loop with each accept's result (in a coroutine). A
 * lack of fds or memory (EMFILE, ENFILE, ENOMEM, ENOBUFS) leaves the
 * connection in the listen backlog: this waits 100 ms and returns true (the
 * caller accepts again). It warns once when such a lack begins, naming
 * `what`, and says once when a connection is accepted again, never every
 * 100 ms: clients that hold the daemon at its fd limit would flood the log.
 * *lacking is the loop's state (false at first). Other results: false.
 */
bool vbd_co_accept_backoff(bool *lacking, int rc, const char *what);

/*
 * Ignore SIGPIPE unless the program chose a disposition itself: writes
 * that cannot say MSG_NOSIGNAL (writev in libiscsi, splice into a socket)
 * to a peer that went away would otherwise kill the whole process instead
 * of failing with EPIPE. vbd-daemon ignores it already; the tools do not.
 */
void vbd_sigpipe_ignore(void);

#endif
