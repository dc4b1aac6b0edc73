/* SPDX-License-Identifier: MIT */
/* Protocol driver "null-co": a disk that stores nothing, for benchmarks
 * (QEMU's null-co options: size, read-zeroes, latency-ns). */
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct null_state {
    bool read_zeroes;
    uint64_t latency_ns;
};

static int null_parse_filename(const char *filename, struct json_object *opts, struct vbd_error **err)
{
    /* "null-co://" carries no parameters */
    (void)opts;
    const char *rest = strstr(filename, "://");
    if (!rest || rest[3]) {
        vbd_error_setf(err, EINVAL, "The null-co driver takes no filename, use 'null-co://'");
        return -EINVAL;
    }
    return 0;
}

static int null_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct null_state *s = n->opaque;
    uint64_t size = 1ull << 30;
    char *fname = NULL;
    bool size_given = vbd_opt_get(opts, "size") != NULL, zeroes_given = vbd_opt_get(opts, "read-zeroes") != NULL;
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 ||
        vbd_opt_take_bool(opts, "read-zeroes", &s->read_zeroes, err) < 0 ||
        vbd_opt_take_u64(opts, "latency-ns", &s->latency_ns, err) < 0 ||
        vbd_opt_take_str(opts, "filename", &fname, err) < 0)
        return -EINVAL;
    free(fname);
    n->size = size;
    /* QEMU's null_refresh_filename: "null-co://" names only a node of the
     * default size and data; one given size or read-zeroes (its strong
     * options) is named by them, as json: with QEMU's key order (its
     * QDict's hash buckets: read-zeroes, driver, size) */
    if (!size_given && !zeroes_given) {
        snprintf(n->filename, sizeof(n->filename), "null-co://");
    } else {
        char size_part[48] = "";
        if (size_given)
            snprintf(size_part, sizeof(size_part), ", \"size\": %llu", (unsigned long long)size);
        snprintf(n->filename, sizeof(n->filename), "json:{%s\"driver\": \"null-co\"%s}",
                 !zeroes_given ? "" : s->read_zeroes ? "\"read-zeroes\": true, " : "\"read-zeroes\": false, ", size_part);
    }
    n->supported_write_flags = VBD_REQ_FUA;
    n->io_inline = s->latency_ns == 0; /* null_preadv/pwritev wait only for latency-ns */
    n->supported_zero_flags = VBD_REQ_MAY_UNMAP | VBD_REQ_FUA | VBD_REQ_NO_FALLBACK;
    return 0;
}

static int null_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                       unsigned flags)
{
    struct null_state *s = n->opaque;
    if (s->latency_ns)
        vbd_co_sleep_ns(s->latency_ns);
    if (s->read_zeroes)
        vbd_iov_memset(q->iov, q->niov, qoff, 0, bytes);
    return 0;
}

static int null_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                        unsigned flags)
{
    struct null_state *s = n->opaque;
    if (s->latency_ns)
        vbd_co_sleep_ns(s->latency_ns);
    return 0;
}

static int null_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    return null_pwritev(n, off, bytes, NULL, 0, flags);
}

static int null_discard(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    return 0;
}

static int null_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                             uint64_t *map, struct vbd_node **file)
{
    struct null_state *s = n->opaque;
    *pnum = bytes;
    *map = off;
    *file = n;
    return VBD_BS_OFFSET_VALID | (s->read_zeroes ? VBD_BS_ZERO : VBD_BS_DATA);
}

static int64_t null_allocated(struct vbd_node *n)
{
    return 0;
}

/* Nothing to reopen: read-only or not only changes what the generic layer
 * lets through, as QEMU's null-co takes any reopen (a block-stream of a
 * null-co that a snapshot made read-only, blockdev-reopen read-only=on) */
static int null_reopen_rw(struct vbd_node *n, bool rw, struct vbd_error **err)
{
    (void)n;
    (void)rw;
    (void)err;
    return 0;
}

static const char *const null_protocols[] = {"null-co", NULL};

static const struct vbd_driver null_driver = {
    .name = "null-co",
    .kind = VBD_DRV_PROTOCOL,
    .protocols = null_protocols,
    .state_size = sizeof(struct null_state),
    .caps = VBD_DRV_CAP_MULTI_LOOP,
    .parse_filename = null_parse_filename,
    .open = null_open,
    .co_preadv = null_preadv,
    .co_pwritev = null_pwritev,
    .co_pwrite_zeroes = null_zeroes,
    .co_pdiscard = null_discard,
    .co_block_status = null_block_status,
    .get_allocated_size = null_allocated,
    .reopen_rw = null_reopen_rw,
};
VBD_DRIVER_REGISTER(null_co, null_driver);
