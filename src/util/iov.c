/* SPDX-License-Identifier: MIT */
#include "vbd/alloc.h"
#include "vbd/iov.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int vbd_iov_slice(struct iovec *dst, int cap, const struct iovec *src, int niov, size_t off, size_t len)
{
    int n = 0;
    for (int i = 0; i < niov && len > 0; i++) {
        if (off >= src[i].iov_len) {
            off -= src[i].iov_len;
            continue;
        }
        if (n == cap)
            return -1;
        size_t take = src[i].iov_len - off;
        if (take > len)
            take = len;
        dst[n].iov_base = (char *)src[i].iov_base + off;
        dst[n].iov_len = take;
        n++;
        len -= take;
        off = 0;
    }
    return len ? -1 : n;
}

static size_t iov_copy(const struct iovec *iov, int niov, size_t off, void *buf, size_t len, int to_buf)
{
    size_t done = 0;
    for (int i = 0; i < niov && done < len; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t take = iov[i].iov_len - off;
        if (take > len - done)
            take = len - done;
        if (to_buf)
            memcpy((char *)buf + done, (char *)iov[i].iov_base + off, take);
        else
            memcpy((char *)iov[i].iov_base + off, (const char *)buf + done, take);
        done += take;
        off = 0;
    }
    return done;
}

size_t vbd_iov_to_buf(const struct iovec *iov, int niov, size_t off, void *buf, size_t len)
{
    return iov_copy(iov, niov, off, buf, len, 1);
}

size_t vbd_iov_from_buf(const struct iovec *iov, int niov, size_t off, const void *buf, size_t len)
{
    return iov_copy(iov, niov, off, (void *)buf, len, 0);
}

size_t vbd_iov_memset(const struct iovec *iov, int niov, size_t off, int c, size_t len)
{
    size_t done = 0;
    for (int i = 0; i < niov && done < len; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t take = iov[i].iov_len - off;
        if (take > len - done)
            take = len - done;
        memset((char *)iov[i].iov_base + off, c, take);
        done += take;
        off = 0;
    }
    return done;
}

int vbd_buffer_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    /* Head bytes until 8-aligned, then 64 bytes per step, then the tail. */
    while (len && ((uintptr_t)p & 7)) {
        if (*p)
            return 0;
        p++, len--;
    }
    const uint64_t *q = (const uint64_t *)p;
    while (len >= 64) {
        if (q[0] | q[1] | q[2] | q[3] | q[4] | q[5] | q[6] | q[7])
            return 0;
        q += 8;
        len -= 64;
    }
    p = (const unsigned char *)q;
    while (len--)
        if (*p++)
            return 0;
    return 1;
}

void *vbd_alloc_aligned(size_t align, size_t size)
{
    void *p = NULL;
    if (align < sizeof(void *))
        align = sizeof(void *);
    if (posix_memalign(&p, align, size ? size : align) != 0)
        vbd_out_of_memory(size);
    return p;
}
