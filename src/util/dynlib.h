/* SPDX-License-Identifier: MIT */
#ifndef VBD_UTIL_DYNLIB_H
#define VBD_UTIL_DYNLIB_H

/*
 * A shared library loaded when first needed (dlopen), not linked. Linked,
 * libiscsi (with libibverbs, librdmacm, libnl), GnuTLS (p11-kit, nettle,
 * gmp, libidn2, libunistring...) and libxml2 (ICU with its 30 MB data
 * file, libstdc++, liblzma) were 21 of vbd-img's 28 libraries and ~4.3 ms
 * of every start (ld.so mapping and relocating them, their constructors),
 * whether or not the run touched iSCSI, TLS or libvirt XML: more than the
 * rest of a `vbd-img info` (bench/RESULTS.md, 2026-12-08). QEMU keeps such
 * drivers in modules for the same reason; rbd.c loads librbd this way too.
 *
 * The user keeps a table of pointers to the library's functions it calls
 * (an X-macro list) and fills it in `resolve`; calls through the table
 * cost what calls through the PLT did.
 */
#include <stdatomic.h>

struct vbd_error;

struct vbd_dynlib {
    const char *what;   /* what needs it, for the error: "Block driver 'iscsi'" */
    const char *soname; /* the ABI the headers describe: "libiscsi.so.7" */
    /* fills the table from dlopen's handle: NULL, else the symbol missing */
    const char *(*resolve)(void *handle);
    atomic_int state; /* 0 not tried, 1 loaded, -1 failed (error says why) */
    char error[512];
};

/*
 * 0 once lib is loaded and its table filled: the first caller loads it
 * (~1 ms; on a thread of its own with a main thread's 8 MiB stack, as
 * constructors may need more than a coroutine's). Else -ENOTSUP and *err
 * "<what> not available: <file>: <reason>" (the same at every call: a
 * failed load is not retried). Any thread, any context.
 */
int vbd_dynlib_load(struct vbd_dynlib *lib, struct vbd_error **err);

#endif
