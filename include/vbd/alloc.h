/* SPDX-License-Identifier: MIT */
#ifndef VBD_ALLOC_H
#define VBD_ALLOC_H

#include <stddef.h>

/*
 * The out-of-memory policy (QEMU's g_malloc's): an allocation on a control
 * path (objects, names, option strings, buffers a protocol bounds) does not
 * fail on Linux short of the OOM killer, and an error path that is never
 * run is a bug waiting; these print one line naming the size and abort.
 * Only a size chosen by a peer or a user that may rightly be refused (an
 * image's table, a request's bounce buffer) is checked and reported as
 * -ENOMEM to that caller. The I/O hot path allocates nothing.
 */
__attribute__((noreturn)) void vbd_out_of_memory(size_t size);

__attribute__((malloc)) void *vbd_xmalloc(size_t size);
__attribute__((malloc)) void *vbd_xcalloc(size_t n, size_t size);
void *vbd_xrealloc(void *p, size_t size);
__attribute__((malloc)) char *vbd_xstrdup(const char *s);
__attribute__((malloc)) char *vbd_xstrndup(const char *s, size_t n);
/* A new string, as asprintf. */
__attribute__((malloc, format(printf, 1, 2))) char *vbd_xasprintf(const char *fmt, ...);

#endif
