/* SPDX-License-Identifier: MIT */
/*
 * imageops: copying a range from one node to another, and what commit,
 * rebase and convert share (the chunk writer, progress, cancellation).
 */
#include "imageops-internal.h"

#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/iov.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define PARALLEL_DEFAULT 8
#define PARALLEL_MAX 64
#define CHUNK_MAX (64u * 1024 * 1024)

int imageops_opts(const struct vbd_copy_opts *in, struct vbd_copy_opts *out, struct vbd_error **err)
{
    static const struct vbd_copy_opts defaults;
    *out = in ? *in : defaults;
    if (!out->chunk_size)
        out->chunk_size = VBD_IMAGEOPS_CHUNK_DEFAULT;
    if (!out->parallel)
        out->parallel = PARALLEL_DEFAULT;
    if (out->chunk_size % 512 || out->chunk_size > CHUNK_MAX) {
        vbd_error_setf(err, EINVAL, "Chunk size %llu is not a multiple of 512 bytes up to 64 MiB",
                       (unsigned long long)out->chunk_size);
        return -EINVAL;
    }
    if (out->zero_detect % 512) {
        vbd_error_setf(err, EINVAL, "Zero detection granularity %llu is not a multiple of 512 bytes",
                       (unsigned long long)out->zero_detect);
        return -EINVAL;
    }
    if ((out->write_flags & VBD_REQ_COMPRESSED) &&
        (!out->cluster_size || out->cluster_size > out->chunk_size || out->chunk_size % out->cluster_size)) {
        vbd_error_setf(err, EINVAL, "Compression needs a cluster size of at most %llu bytes",
                       (unsigned long long)out->chunk_size);
        return -EINVAL;
    }
    if (out->parallel > PARALLEL_MAX) {
        vbd_error_setf(err, EINVAL, "At most %d requests can run in parallel, not %u", PARALLEL_MAX, out->parallel);
        return -EINVAL;
    }
    return 0;
}

const char *imageops_node_label(const struct vbd_node *n)
{
    return n->filename[0] ? n->filename : n->node_name;
}

int imageops_io_error(struct vbd_error **err, int rc, const char *what, const struct vbd_node *n, uint64_t off)
{
    vbd_error_setf(err, -rc, "%s '%s' at offset %llu: %s", what, imageops_node_label(n), (unsigned long long)off,
                   strerror(-rc));
    return rc;
}

int imageops_check_cancel(struct vbd_imageops_ctl *ctl, const struct vbd_node *n, uint64_t off, struct vbd_error **err)
{
    if (!ctl || !__atomic_load_n(&ctl->cancel, __ATOMIC_RELAXED))
        return 0;
    vbd_error_setf(err, ECANCELED, "Cancelled at offset %llu of '%s'", (unsigned long long)off, imageops_node_label(n));
    return -ECANCELED;
}

void imageops_add_total(struct vbd_imageops_ctl *ctl, uint64_t bytes)
{
    if (ctl)
        __atomic_add_fetch(&ctl->total, bytes, __ATOMIC_RELAXED);
}

int imageops_advance(struct vbd_imageops_ctl *ctl, const struct vbd_node *n, uint64_t off, uint64_t bytes,
                     uint64_t written, struct vbd_error **err)
{
    if (!ctl)
        return 0;
    __atomic_add_fetch(&ctl->current, bytes, __ATOMIC_RELAXED);
    if (!ctl->chunk_done)
        return 0;
    int rc = ctl->chunk_done(ctl, off, written);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Stopped at offset %llu of '%s': %s", (unsigned long long)(off + bytes),
                       imageops_node_label(n), strerror(-rc));
        return rc;
    }
    return 0;
}

int imageops_write_zeroes(struct vbd_node *dst, uint64_t off, uint64_t len, const struct vbd_copy_opts *o,
                          struct vbd_error **err)
{
    if (o->target_is_zero)
        return 0;
    int rc = vbd_node_co_pwrite_zeroes(dst, off, len, o->zero_flags);
    return rc < 0 ? imageops_io_error(err, rc, "Could not write zeroes to", dst, off) : 0;
}

static int write_data(struct vbd_node *dst, uint64_t off, uint64_t len, const uint8_t *buf, unsigned flags,
                      struct vbd_error **err)
{
    int rc = vbd_node_co_pwrite(dst, off, buf, len, flags);
    return rc < 0 ? imageops_io_error(err, rc, "Could not write", dst, off) : 0;
}

/* The unit zero detection judges: a cluster when compressing (written whole
 * or not at all), else zero_detect bytes; 0 without zero detection. */
static uint64_t zero_unit(const struct vbd_copy_opts *o)
{
    if (o->write_flags & VBD_REQ_COMPRESSED)
        return o->cluster_size;
    return o->zero_detect;
}

size_t imageops_runs_max(const struct vbd_copy_opts *o, uint64_t len)
{
    uint64_t u = zero_unit(o);
    /* without zero detection but compressing, every cluster is one data run of one request: still one run */
    return u ? (size_t)((len + u - 1) / u) : 1;
}

unsigned imageops_zero_runs(const uint8_t *buf, uint64_t len, const struct vbd_copy_opts *o, uint64_t *runs,
                            bool *first_zero)
{
    uint64_t u = zero_unit(o);
    bool detect = o->zero_detect != 0 && !o->data_verbatim;
    *first_zero = false;
    if (!u || !detect) {
        runs[0] = len;
        return len ? 1 : 0;
    }
    unsigned n = 0;
    bool cur = false;
    for (uint64_t pos = 0; pos < len;) {
        uint64_t l = len - pos < u ? len - pos : u;
        bool zero = vbd_buffer_is_zero(buf + pos, l);
        if (n && zero == cur) {
            runs[n - 1] += l;
        } else {
            if (!n)
                *first_zero = zero;
            cur = zero;
            runs[n++] = l;
        }
        pos += l;
    }
    return n;
}

int imageops_write_runs(struct vbd_node *dst, uint64_t off, const uint8_t *buf, const uint64_t *runs, unsigned n,
                        bool first_zero, const struct vbd_copy_opts *o, struct vbd_error **err)
{
    /* As qemu-img: with compression every cluster with data is written
     * compressed (whole), an all-zero one is not written as data; a run of
     * data clusters goes as one request (the driver compresses them in
     * parallel). Without, zero runs of zero_detect bytes become
     * write-zeroes (or nothing on a zero target). */
    int rc = 0;
    uint64_t pos = 0;
    for (unsigned i = 0; i < n && rc == 0; i++) {
        bool zero = (i % 2 == 0) == first_zero;
        rc = zero ? imageops_write_zeroes(dst, off + pos, runs[i], o, err)
                  : write_data(dst, off + pos, runs[i], buf + pos, o->write_flags, err);
        pos += runs[i];
    }
    return rc;
}

uint64_t *imageops_runs_new(const struct vbd_copy_opts *o)
{
    return vbd_xcalloc(imageops_runs_max(o, o->chunk_size), sizeof(uint64_t));
}

int imageops_write(struct vbd_node *dst, uint64_t off, uint64_t len, const uint8_t *buf, uint64_t *runs,
                   const struct vbd_copy_opts *o, struct vbd_error **err)
{
    assert(len <= o->chunk_size); /* runs has room for a chunk's runs only */
    bool first_zero;
    unsigned n = imageops_zero_runs(buf, len, o, runs, &first_zero);
    return imageops_write_runs(dst, off, buf, runs, n, first_zero, o, err);
}

int imageops_copy(struct vbd_node *src, struct vbd_node *dst, uint64_t off, uint64_t bytes, uint8_t *buf,
                  uint64_t *runs, const struct vbd_copy_opts *o, struct vbd_imageops_ctl *ctl, struct vbd_error **err)
{
    while (bytes) {
        uint64_t l = bytes < o->chunk_size ? bytes : o->chunk_size;
        int rc = imageops_check_cancel(ctl, dst, off, err);
        if (rc < 0)
            return rc;
        struct iovec one;
        struct vbd_qiov q;
        vbd_qiov_init_buf(&q, &one, buf, l);
        rc = vbd_node_co_preadv(src, off, l, &q, 0, o->read_flags & VBD_REQ_INLINE);
        if (rc < 0)
            return imageops_io_error(err, rc, "Could not read", src, off);
        rc = imageops_write(dst, off, l, buf, runs, o, err);
        if (rc < 0)
            return rc;
        rc = imageops_advance(ctl, dst, off, l, l, err);
        if (rc < 0)
            return rc;
        off += l;
        bytes -= l;
    }
    return 0;
}

int vbd_co_copy_range(struct vbd_node *src, struct vbd_node *dst, uint64_t off, uint64_t bytes,
                      const struct vbd_copy_opts *opts, struct vbd_imageops_ctl *ctl, struct vbd_error **err)
{
    struct vbd_copy_opts o;
    int rc = imageops_opts(opts, &o, err);
    if (rc < 0)
        return rc;
    uint64_t src_size = vbd_node_size(src), dst_size = vbd_node_size(dst);
    if (off > src_size || bytes > src_size - off || off > dst_size || bytes > dst_size - off) {
        vbd_error_setf(err, EINVAL, "Range %llu+%llu lies past the end of '%s' (%llu bytes) or '%s' (%llu bytes)",
                       (unsigned long long)off, (unsigned long long)bytes, imageops_node_label(src),
                       (unsigned long long)src_size, imageops_node_label(dst), (unsigned long long)dst_size);
        return -EINVAL;
    }
    imageops_add_total(ctl, bytes);
    uint8_t *buf = vbd_alloc_aligned(4096, o.chunk_size);
    uint64_t *runs = imageops_runs_new(&o);
    rc = imageops_copy(src, dst, off, bytes, buf, runs, &o, ctl, err);
    free(runs);
    free(buf);
    return rc;
}
