/* SPDX-License-Identifier: MIT */
#include "vbd/alloc.h"
#include "vbd/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void vbd_error_vsetf(struct vbd_error **err, int code, const char *fmt, va_list ap)
{
    if (!err || *err)
        return; /* keep the first, most specific error */
    struct vbd_error *e = vbd_xcalloc(1, sizeof(*e));
    e->code = code < 0 ? -code : code;
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    *err = e;
}

void vbd_error_setf(struct vbd_error **err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vbd_error_vsetf(err, code, fmt, ap);
    va_end(ap);
}

void vbd_error_prepend(struct vbd_error **err, const char *fmt, ...)
{
    if (!err || !*err)
        return;
    char prefix[sizeof((*err)->msg)];
    char old[sizeof((*err)->msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, (*err)->msg, sizeof(old));
    snprintf((*err)->msg, sizeof((*err)->msg), "%s%s", prefix, old);
}

void vbd_error_free(struct vbd_error *e)
{
    free(e);
}

void vbd_error_propagate(struct vbd_error **dst, struct vbd_error *src)
{
    if (!src)
        return;
    if (dst && !*dst)
        *dst = src;
    else
        free(src);
}
