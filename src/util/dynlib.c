/* SPDX-License-Identifier: MIT */
/* Loading a library on first use: see dynlib.h. */
#include "util/dynlib.h"

#include "vbd/error.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* one load at a time: dlerror's message is per thread, but two libraries'
 * first users racing would only load in parallel what takes ~1 ms */
static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;

static void *load_thread(void *arg)
{
    struct vbd_dynlib *lib = arg;
    void *h = dlopen(lib->soname, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        /* dlerror names the file: "libiscsi.so.7: cannot open shared object file: ..." */
        const char *why = dlerror();
        snprintf(lib->error, sizeof(lib->error), "%s not available: %s", lib->what, why ? why : lib->soname);
        return NULL;
    }
    const char *missing = lib->resolve(h);
    if (missing) {
        snprintf(lib->error, sizeof(lib->error), "%s not available: %s: no symbol %s", lib->what, lib->soname,
                 missing);
        return NULL;
    }
    return h; /* never closed: the table points into it */
}

static int load(struct vbd_dynlib *lib)
{
    pthread_attr_t attr;
    pthread_t t;
    void *h = NULL;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 8u << 20);
    int rc = pthread_create(&t, &attr, load_thread, lib);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        snprintf(lib->error, sizeof(lib->error), "%s not available: cannot start a thread to load %s: %s",
                 lib->what, lib->soname, strerror(rc));
        return -1;
    }
    pthread_join(t, &h);
    return h ? 1 : -1;
}

int vbd_dynlib_load(struct vbd_dynlib *lib, struct vbd_error **err)
{
    int st = atomic_load_explicit(&lib->state, memory_order_acquire);
    if (st == 0) {
        pthread_mutex_lock(&load_lock);
        st = atomic_load_explicit(&lib->state, memory_order_relaxed);
        if (st == 0) {
            st = load(lib);
            atomic_store_explicit(&lib->state, st, memory_order_release);
        }
        pthread_mutex_unlock(&load_lock);
    }
    if (st < 0) {
        vbd_error_setf(err, ENOTSUP, "%s", lib->error);
        return -ENOTSUP;
    }
    return 0;
}
