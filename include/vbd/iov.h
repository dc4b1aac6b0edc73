/* SPDX-License-Identifier: MIT */
#ifndef VBD_IOV_H
#define VBD_IOV_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/*
 * An I/O vector with its total size. Guest and client buffers are passed
 * down the graph as iovecs, never copied: a driver that needs part of a
 * request (qcow2 splitting at cluster boundaries) passes the same qiov with
 * an offset (qiov_off) or slices into a caller-provided array.
 */
struct vbd_qiov {
    struct iovec *iov;
    int niov;
    size_t size;
};

static inline void vbd_qiov_init(struct vbd_qiov *q, struct iovec *iov, int niov)
{
    size_t s = 0;
    for (int i = 0; i < niov; i++)
        s += iov[i].iov_len;
    q->iov = iov;
    q->niov = niov;
    q->size = s;
}
/* Single buffer: q->iov points at *one. */
static inline void vbd_qiov_init_buf(struct vbd_qiov *q, struct iovec *one, void *buf, size_t len)
{
    one->iov_base = buf;
    one->iov_len = len;
    q->iov = one;
    q->niov = 1;
    q->size = len;
}
/* Fill dst (capacity cap entries) with the bytes [off, off+len) of src.
 * Returns number of entries, or -1 if cap is too small (caller then
 * falls back to a bounce buffer or splits further). */
int vbd_iov_slice(struct iovec *dst, int cap, const struct iovec *src, int niov, size_t off, size_t len);
size_t vbd_iov_to_buf(const struct iovec *iov, int niov, size_t off, void *buf, size_t len);
size_t vbd_iov_from_buf(const struct iovec *iov, int niov, size_t off, const void *buf, size_t len);
size_t vbd_iov_memset(const struct iovec *iov, int niov, size_t off, int c, size_t len);
/* True if all bytes are zero (used by -S sparse detection and zero detection). */
int vbd_buffer_is_zero(const void *buf, size_t len);

/* Page-aligned buffer allocation (for O_DIRECT bounce buffers, caches). */
void *vbd_alloc_aligned(size_t align, size_t size); /* aborts on OOM; free() it */
/* A buffer for large transfers: whole 2 MiB pages, 2 MiB aligned, backed by
 * transparent huge pages where the kernel gives them (also in its madvise
 * mode). Aborts on OOM; freed with vbd_free_transfer_buffer(p, size). */
void *vbd_alloc_transfer_buffer(size_t size);
void vbd_free_transfer_buffer(void *p, size_t size);

#endif
