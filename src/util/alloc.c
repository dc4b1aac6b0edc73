/* SPDX-License-Identifier: MIT */
/* Allocations that abort on failure (the policy is in vbd/alloc.h). */
#include "vbd/alloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void vbd_out_of_memory(size_t size)
{
    fprintf(stderr, "vbd: out of memory allocating %zu bytes\n", size);
    abort();
}

void *vbd_xmalloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        vbd_out_of_memory(size);
    return p;
}

void *vbd_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        vbd_out_of_memory(n * size);
    return p;
}

void *vbd_xrealloc(void *p, size_t size)
{
    void *q = realloc(p, size ? size : 1);
    if (!q)
        vbd_out_of_memory(size);
    return q;
}

char *vbd_xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d)
        vbd_out_of_memory(strlen(s) + 1);
    return d;
}

char *vbd_xstrndup(const char *s, size_t n)
{
    char *d = strndup(s, n);
    if (!d)
        vbd_out_of_memory(n + 1);
    return d;
}

char *vbd_xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        vbd_out_of_memory(strlen(fmt));
    return s;
}
