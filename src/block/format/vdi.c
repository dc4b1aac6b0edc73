/* SPDX-License-Identifier: MIT */
/* Format driver "vdi": VirtualBox disk images, version 1.1, dynamic and
 * static. A 512-byte little-endian header, a block map (one 32-bit entry
 * per 1 MiB block: the block's index in the data area, or unallocated),
 * then the data blocks in allocation order. Differencing images (a parent
 * UUID) are refused, as qemu-img does. */
#include "vbd/block.h"
#include "vbd/bswap.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/iov.h"
#include "vbd/options.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define VDI_SIGNATURE 0xbeda107fu
#define VDI_VERSION_1_1 0x00010001u
#define VDI_TYPE_DYNAMIC 1u
#define VDI_TYPE_STATIC 2u
#define VDI_HEADER_SIZE 512u
#define VDI_SECTOR 512u
#define VDI_BLOCK_SIZE (1u << 20) /* the only block size VirtualBox and qemu-img make */
#define VDI_UNALLOCATED 0xffffffffu
#define VDI_DISCARDED 0xfffffffeu /* reads as zeroes, as unallocated */
/* qemu-img's limit: 512 Mi - 128 blocks, a 2 GiB block map */
#define VDI_BLOCKS_MAX 0x1fffff80u

/* header field offsets */
enum {
    H_SIGNATURE = 0x40, H_VERSION = 0x44, H_HEADER_SIZE = 0x48, H_TYPE = 0x4c, H_FLAGS = 0x50,
    H_OFFSET_BMAP = 0x154, H_OFFSET_DATA = 0x158, H_CYLINDERS = 0x15c, H_HEADS = 0x160, H_SECTORS = 0x164,
    H_SECTOR_SIZE = 0x168, H_DISK_SIZE = 0x170, H_BLOCK_SIZE = 0x178, H_BLOCK_EXTRA = 0x17c,
    H_BLOCKS = 0x180, H_BLOCKS_ALLOCATED = 0x184, H_UUID_IMAGE = 0x188, H_UUID_LAST_SNAP = 0x198,
    H_UUID_LINK = 0x1a8, H_UUID_PARENT = 0x1b8,
};

struct vdi_state {
    uint8_t header[VDI_HEADER_SIZE]; /* as on disk; blocks_allocated kept current */
    uint32_t *bmap;                  /* host-endian copy of the block map */
    uint32_t blocks;                 /* entries in the map */
    uint32_t blocks_allocated;       /* the next block's index in the data area */
    uint32_t offset_bmap, offset_data, image_type;
    uint64_t disk_size;
    uint8_t *block_buf;              /* one block, for allocations (under alloc_lock) */
    struct vbd_co_mutex alloc_lock;  /* serialises block allocation: map entry and header */
};


static bool is_nil_uuid(const uint8_t *u)
{
    for (int i = 0; i < 16; i++)
        if (u[i])
            return false;
    return true;
}

static int vdi_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return len >= H_SIGNATURE + 4 && get_le32p(buf + H_SIGNATURE) == VDI_SIGNATURE ? 100 : 0;
}

static void vdi_close(struct vbd_node *n)
{
    struct vdi_state *s = n->opaque;
    free(s->bmap);
    free(s->block_buf);
    s->bmap = NULL;
    s->block_buf = NULL;
}

static int bad_header(struct vbd_node *n, struct vbd_error **err, const char *what, unsigned long long v)
{
    vbd_error_setf(err, EINVAL, "Unsupported or corrupt VDI image '%s': %s (%llu)", n->filename, what, v);
    return -EINVAL;
}

static int vdi_read_header(struct vbd_node *n, struct vdi_state *s, unsigned flags, struct vbd_error **err)
{
    uint64_t fsize = n->file->size;
    uint8_t *h = s->header;
    if (fsize < VDI_HEADER_SIZE)
        return bad_header(n, err, "file shorter than the 512-byte header", fsize);
    int rc = vbd_node_co_pread(n->file, 0, h, VDI_HEADER_SIZE);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Could not read the VDI header of '%s': %s", n->filename, strerror(-rc));
        return rc;
    }
    /* QEMU's checks in its order and words; vbd's own after them */
    s->disk_size = get_le64p(h + H_DISK_SIZE);
    if (s->disk_size > (uint64_t)VDI_BLOCKS_MAX * VDI_BLOCK_SIZE) {
        vbd_error_setf(err, ENOTSUP, "Unsupported VDI image size (size is 0x%llx, max supported is 0x%llx)",
                       (unsigned long long)s->disk_size, (unsigned long long)VDI_BLOCKS_MAX * VDI_BLOCK_SIZE);
        return -ENOTSUP;
    }
    uint32_t signature = get_le32p(h + H_SIGNATURE), version = get_le32p(h + H_VERSION);
    s->offset_bmap = get_le32p(h + H_OFFSET_BMAP);
    s->offset_data = get_le32p(h + H_OFFSET_DATA);
    s->blocks = get_le32p(h + H_BLOCKS);
    const char *what = NULL;
    char why[128];
    if (signature != VDI_SIGNATURE) {
        vbd_error_setf(err, EINVAL, "Image not in VDI format (bad signature %08x)", signature);
        return -EINVAL;
    } else if (version != VDI_VERSION_1_1) {
        snprintf(why, sizeof(why), "version %u.%u", version >> 16, version & 0xffff);
        what = why;
    } else if (s->offset_bmap % VDI_SECTOR) {
        snprintf(why, sizeof(why), "unaligned block map offset 0x%x", s->offset_bmap);
        what = why;
    } else if (s->offset_data % VDI_SECTOR) {
        snprintf(why, sizeof(why), "unaligned data offset 0x%x", s->offset_data);
        what = why;
    } else if (get_le32p(h + H_SECTOR_SIZE) != VDI_SECTOR) {
        snprintf(why, sizeof(why), "sector size %u is not %u", get_le32p(h + H_SECTOR_SIZE), VDI_SECTOR);
        what = why;
    } else if (get_le32p(h + H_BLOCK_SIZE) != VDI_BLOCK_SIZE) {
        snprintf(why, sizeof(why), "block size %u is not %u", get_le32p(h + H_BLOCK_SIZE), VDI_BLOCK_SIZE);
        what = why;
    } else if (s->disk_size > (uint64_t)s->blocks * VDI_BLOCK_SIZE) {
        snprintf(why, sizeof(why), "disk size %llu, image bitmap has room for %llu", (unsigned long long)s->disk_size,
                 (unsigned long long)s->blocks * VDI_BLOCK_SIZE);
        what = why;
    } else if (!is_nil_uuid(h + H_UUID_LINK)) {
        what = "non-NULL link UUID";
    } else if (!is_nil_uuid(h + H_UUID_PARENT)) {
        what = "non-NULL parent UUID";
    } else if (s->blocks > VDI_BLOCKS_MAX) {
        snprintf(why, sizeof(why), "too many blocks %u, max is %u", s->blocks, VDI_BLOCKS_MAX);
        what = why;
    }
    if (what) {
        vbd_error_setf(err, ENOTSUP, "unsupported VDI image (%s)", what);
        return -ENOTSUP;
    }
    uint32_t header_size = get_le32p(h + H_HEADER_SIZE);
    /* counted from the end of the version field; the 1.1 header ends after the parent UUID */
    if (header_size < H_UUID_PARENT + 16 - H_HEADER_SIZE)
        return bad_header(n, err, "header size", header_size);
    s->image_type = get_le32p(h + H_TYPE);
    if (s->image_type != VDI_TYPE_DYNAMIC && s->image_type != VDI_TYPE_STATIC)
        return bad_header(n, err, "image type", s->image_type);
    if (s->offset_bmap < VDI_HEADER_SIZE)
        return bad_header(n, err, "block map offset", s->offset_bmap);
    if (get_le32p(h + H_BLOCK_EXTRA) != 0)
        return bad_header(n, err, "block extra data", get_le32p(h + H_BLOCK_EXTRA));
    s->blocks_allocated = get_le32p(h + H_BLOCKS_ALLOCATED);
    /* VBoxManage convertfromraw can make odd sizes: the disk is whole sectors, as in qemu-img */
    s->disk_size = (s->disk_size + VDI_SECTOR - 1) & ~(uint64_t)(VDI_SECTOR - 1);
    if (s->blocks_allocated > s->blocks)
        return bad_header(n, err, "allocated blocks more than blocks in image", s->blocks_allocated);
    uint64_t bmap_bytes = (uint64_t)s->blocks * 4;
    if (bmap_bytes > fsize || s->offset_bmap > fsize - bmap_bytes)
        return bad_header(n, err, "block map past the end of the file", s->offset_bmap);
    if (s->offset_data < s->offset_bmap + bmap_bytes)
        return bad_header(n, err, "data offset inside the block map", s->offset_data);
    s->bmap = malloc(bmap_bytes ? bmap_bytes : 1);
    if (!s->bmap) {
        vbd_error_setf(err, ENOMEM, "VDI image '%s': no memory for the block map", n->filename);
        return -ENOMEM;
    }
    if (bmap_bytes && (rc = vbd_node_co_pread(n->file, s->offset_bmap, s->bmap, bmap_bytes)) < 0) {
        vbd_error_setf(err, -rc, "Could not read the VDI block map of '%s': %s", n->filename, strerror(-rc));
        return rc;
    }
    for (uint32_t i = 0; i < s->blocks; i++)
        s->bmap[i] = get_le32p((const uint8_t *)&s->bmap[i]);
    if (flags & VBD_OPEN_CHECK)
        return 0; /* check reports what is wrong with the map */
    /* every entry names a block of the data area, once; writes allocate after the last */
    uint8_t *seen = calloc((size_t)s->blocks / 8 + 1, 1);
    if (!seen) {
        vbd_error_setf(err, ENOMEM, "VDI image '%s': no memory to check the block map", n->filename);
        return -ENOMEM;
    }
    uint32_t in_use = 0, after_last = 0;
    rc = 0;
    for (uint32_t i = 0; i < s->blocks; i++) {
        uint32_t e = s->bmap[i];
        if (e == VDI_UNALLOCATED || e == VDI_DISCARDED)
            continue;
        if (e >= s->blocks) {
            vbd_error_setf(err, EINVAL, "Corrupt VDI image '%s': block map entry %u points to block %u of %u",
                           n->filename, i, e, s->blocks);
            rc = -EINVAL;
            break;
        }
        if (seen[e / 8] & (1u << (e % 8))) {
            vbd_error_setf(err, EINVAL, "Corrupt VDI image '%s': block %u is used twice in the block map (entry %u)",
                           n->filename, e, i);
            rc = -EINVAL;
            break;
        }
        seen[e / 8] |= (uint8_t)(1u << (e % 8));
        in_use++;
        if (e >= after_last)
            after_last = e + 1;
        if (e >= s->blocks_allocated && (flags & VBD_OPEN_RDWR)) {
            vbd_error_setf(err, EINVAL,
                           "Corrupt VDI image '%s': block map entry %u points to block %u, past the %u allocated "
                           "blocks",
                           n->filename, i, e, s->blocks_allocated);
            rc = -EINVAL;
            break;
        }
    }
    free(seen);
    /* more blocks in the map than the count: a new block would take one of theirs (fewer: a leak, below) */
    if (rc == 0 && in_use > s->blocks_allocated && (flags & VBD_OPEN_RDWR)) {
        vbd_error_setf(err, EINVAL, "Corrupt VDI image '%s': %u blocks in the map, the header says %u allocated",
                       n->filename, in_use, s->blocks_allocated);
        rc = -EINVAL;
    }
    /* A crash between an allocation's count and its map entry (the order
     * that can only leak) leaves the count past every block the map names:
     * the leaked block is the last, and it is taken again by the next
     * allocation (which writes the lower count after its data), so that a
     * full image keeps a block for each entry instead of failing the last
     * write with no free block index. */
    if (rc == 0 && (flags & VBD_OPEN_RDWR) && after_last < s->blocks_allocated)
        s->blocks_allocated = after_last;
    return rc;
}

static int vdi_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct vdi_state *s = n->opaque;
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file)
        return -EINVAL;
    int rc = vdi_read_header(n, s, flags, err);
    if (rc < 0) {
        vdi_close(n);
        return rc;
    }
    if (flags & VBD_OPEN_RDWR)
        s->block_buf = vbd_alloc_aligned(4096, VDI_BLOCK_SIZE);
    n->size = s->disk_size;
    n->bl.request_alignment = 1;
    n->bl.min_mem_alignment = n->file->bl.min_mem_alignment;
    n->bl.max_transfer = 0;
    n->bl.opt_transfer = VDI_BLOCK_SIZE;
    n->supported_write_flags = 0;
    n->supported_zero_flags = 0;
    return 0;
}

/* Where byte off of the disk lives: 0 and *host, or 1 if it reads as zeroes.
 * *len is how many bytes from off share that (within one block). */
static int vdi_map(struct vdi_state *s, uint64_t off, uint64_t bytes, uint64_t *host, uint64_t *len)
{
    uint32_t block = (uint32_t)(off / VDI_BLOCK_SIZE);
    uint64_t in_block = off % VDI_BLOCK_SIZE;
    *len = VDI_BLOCK_SIZE - in_block < bytes ? VDI_BLOCK_SIZE - in_block : bytes;
    uint32_t e = __atomic_load_n(&s->bmap[block], __ATOMIC_ACQUIRE);
    if (e == VDI_UNALLOCATED || e == VDI_DISCARDED)
        return 1;
    *host = s->offset_data + (uint64_t)e * VDI_BLOCK_SIZE + in_block;
    return 0;
}

static int vdi_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                      unsigned flags)
{
    struct vdi_state *s = n->opaque;
    (void)flags;
    while (bytes) {
        uint64_t host, len;
        if (vdi_map(s, off, bytes, &host, &len)) {
            vbd_iov_memset(q->iov, q->niov, qoff, 0, len);
        } else {
            int rc = vbd_node_co_preadv(n->file, host, len, q, qoff, 0);
            if (rc < 0)
                return rc;
        }
        off += len;
        qoff += len;
        bytes -= len;
    }
    return 0;
}

/* A write into an unallocated block: the whole block is written at the end
 * of the data area (zeroes around the request's bytes), then the header's
 * count, then the block's map entry, as QEMU orders them: a crash or a
 * failed write between the two leaves a count one past the blocks in the
 * map (a leaked block, the next allocation goes after it), never a map
 * entry past the count, which the next writer (QEMU's or ours) would hand
 * out a second time. */
static int vdi_allocate_write(struct vbd_node *n, struct vdi_state *s, uint32_t block, uint64_t in_block,
                              uint64_t len, struct vbd_qiov *q, size_t qoff)
{
    vbd_co_mutex_lock(&s->alloc_lock);
    int rc = 0;
    uint32_t e = s->bmap[block];
    if (e != VDI_UNALLOCATED && e != VDI_DISCARDED) { /* another request allocated it meanwhile */
        vbd_co_mutex_unlock(&s->alloc_lock);
        return vbd_node_co_pwritev(n->file, s->offset_data + (uint64_t)e * VDI_BLOCK_SIZE + in_block, len, q, qoff, 0);
    }
    if (s->blocks_allocated >= s->blocks) { /* checked at open: the map would name a block twice */
        vbd_node_report_corruption(n, "VDI: no free block index left", -1, -1, true);
        rc = -EIO;
        goto out;
    }
    uint32_t idx = s->blocks_allocated;
    memset(s->block_buf, 0, VDI_BLOCK_SIZE);
    vbd_iov_to_buf(q->iov, q->niov, qoff, s->block_buf + in_block, len);
    rc = vbd_node_co_pwrite(n->file, s->offset_data + (uint64_t)idx * VDI_BLOCK_SIZE, s->block_buf, VDI_BLOCK_SIZE, 0);
    if (rc < 0)
        goto out;
    put_le32p(s->header + H_BLOCKS_ALLOCATED, idx + 1);
    rc = vbd_node_co_pwrite(n->file, H_BLOCKS_ALLOCATED, s->header + H_BLOCKS_ALLOCATED, 4, 0);
    s->blocks_allocated = idx + 1; /* even if that failed: the count on disk may be either, idx stays unused */
    if (rc < 0)
        goto out;
    /* the map's sector holding the entry */
    uint32_t first = block & ~(uint32_t)(VDI_SECTOR / 4 - 1);
    uint32_t count = s->blocks - first < VDI_SECTOR / 4 ? s->blocks - first : VDI_SECTOR / 4;
    uint8_t sector[VDI_SECTOR];
    for (uint32_t i = 0; i < count; i++)
        put_le32p(sector + 4 * i, first + i == block ? idx : s->bmap[first + i]);
    rc = vbd_node_co_pwrite(n->file, s->offset_bmap + (uint64_t)first * 4, sector, (uint64_t)count * 4, 0);
    if (rc < 0) /* the entry may or may not be on disk: its block stays reserved, the map as it was */
        goto out;
    __atomic_store_n(&s->bmap[block], idx, __ATOMIC_RELEASE);
out:
    vbd_co_mutex_unlock(&s->alloc_lock);
    return rc;
}

static int vdi_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                       unsigned flags)
{
    struct vdi_state *s = n->opaque;
    (void)flags;
    while (bytes) {
        uint64_t host, len;
        int rc;
        if (vdi_map(s, off, bytes, &host, &len))
            rc = vdi_allocate_write(n, s, (uint32_t)(off / VDI_BLOCK_SIZE), off % VDI_BLOCK_SIZE, len, q, qoff);
        else
            rc = vbd_node_co_pwritev(n->file, host, len, q, qoff, 0);
        if (rc < 0)
            return rc;
        off += len;
        qoff += len;
        bytes -= len;
    }
    return 0;
}

/* Unallocated blocks already read as zeroes: only allocated ones are written. */
static int vdi_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    struct vdi_state *s = n->opaque;
    (void)flags;
    while (bytes) {
        uint64_t host, len;
        if (!vdi_map(s, off, bytes, &host, &len)) {
            int rc = vbd_node_co_pwrite_zeroes(n->file, host, len, 0);
            if (rc < 0)
                return rc;
        }
        off += len;
        bytes -= len;
    }
    return 0;
}

static int vdi_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                            uint64_t *map, struct vbd_node **file)
{
    struct vdi_state *s = n->opaque;
    uint64_t host, len;
    int zero = vdi_map(s, off, bytes, &host, &len);
    /* runs of blocks alike are one answer */
    uint64_t total = len;
    while (total < bytes) {
        uint64_t h2, l2;
        int z2 = vdi_map(s, off + total, bytes - total, &h2, &l2);
        if (z2 != zero || (!zero && h2 != host + total))
            break;
        total += l2;
    }
    *pnum = total;
    /* no backing file: an unallocated block is this layer's zeroes, as qemu-img map shows it */
    if (zero)
        return VBD_BS_ZERO | VBD_BS_ALLOCATED;
    *map = host;
    *file = n->file;
    int st = VBD_BS_DATA | VBD_BS_OFFSET_VALID | VBD_BS_ALLOCATED;
    if (want_zero && s->image_type == VDI_TYPE_STATIC) {
        /* a static image's block over a hole of the file reads as zeroes, as qemu-img reports it (QEMU's
         * vdi asks the file for static images only: a dynamic image's block is data throughout, holes of
         * a sparse copy too) */
        uint64_t file_pnum = 0;
        int fst = vbd_node_co_block_status(n->file, true, host, total, &file_pnum, NULL, NULL);
        if (fst >= 0) {
            if ((fst & VBD_BS_EOF) && (!file_pnum || (fst & VBD_BS_ZERO))) {
                st |= VBD_BS_ZERO; /* past the end of the file */
            } else {
                *pnum = file_pnum;
                st |= fst & VBD_BS_ZERO;
            }
        }
    }
    return st;
}

static int vdi_get_info(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err)
{
    (void)n;
    (void)err;
    info->cluster_size = VDI_BLOCK_SIZE;
    return 0;
}

/* The map's entries, as qemu-img checks them: each within the image, no
 * block used twice, their count the header's. Reported, not repaired. */
static int vdi_co_check(struct vbd_node *n, struct vbd_check_result *res, unsigned fix, struct vbd_error **err)
{
    struct vdi_state *s = n->opaque;
    if (fix) /* qemu's vdi repairs nothing: -r is 'does not support checks' (exit 63) */
        return -ENOTSUP;
    uint32_t *owner = malloc(((size_t)s->blocks + 1) * sizeof(*owner)); /* data block -> the map entry using it */
    if (!owner) {
        vbd_error_setf(err, ENOMEM, "VDI image '%s': no memory to check the block map", n->filename);
        return -ENOMEM;
    }
    memset(owner, 0xff, ((size_t)s->blocks + 1) * sizeof(*owner));
    uint32_t in_use = 0;
    for (uint32_t i = 0; i < s->blocks; i++) {
        uint32_t e = s->bmap[i];
        if (e == VDI_UNALLOCATED || e == VDI_DISCARDED)
            continue;
        if (e >= s->blocks) {
            fprintf(stderr, "ERROR: block index %u too large, is %u\n", i, e);
            res->corruptions++;
            continue;
        }
        in_use++;
        if (owner[e] != VDI_UNALLOCATED) {
            fprintf(stderr, "ERROR: block %u of the data area used by map entries %u and %u\n", e, owner[e], i);
            res->corruptions++;
        } else {
            owner[e] = i;
        }
    }
    free(owner);
    if (in_use != s->blocks_allocated) {
        fprintf(stderr, "ERROR: allocated blocks mismatch, is %u, should be %u\n", in_use, s->blocks_allocated);
        res->corruptions++;
    }
    return 0;
}

static const struct vbd_opt_desc vdi_create_opts[] = {
    {"size", VBD_OPT_SIZE, "Virtual disk size", NULL},
    {"static", VBD_OPT_BOOL, "VDI static (pre-allocated) image", "off"},
    {NULL, 0, NULL, NULL},
};

static void new_uuid(uint8_t *u)
{
    if (getrandom(u, 16, 0) != 16)
        memset(u, 0x5a, 16);
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40); /* version 4 (random) */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
}

/* The image at filename (made here), or on target (blockdev-create). */
static int create_image(const char *filename, struct vbd_node *target, struct json_object *opts,
                        struct json_object *file_hints, struct vbd_error **err)
{
    uint64_t size = 0;
    bool is_static = false;
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 || vbd_opt_take_bool(opts, "static", &is_static, err) < 0)
        return -EINVAL;
    if (vbd_opts_check_empty(opts, "Block format 'vdi'", err) < 0)
        return -EINVAL;
    if (size > (uint64_t)VDI_BLOCKS_MAX * VDI_BLOCK_SIZE) {
        vbd_error_setf(err, EINVAL, "Unsupported VDI image size (size is 0x%llx, max supported is 0x%llx)",
                       (unsigned long long)size, (unsigned long long)VDI_BLOCKS_MAX * VDI_BLOCK_SIZE);
        return -EINVAL;
    }
    size = (size + VDI_SECTOR - 1) & ~(uint64_t)(VDI_SECTOR - 1);
    uint32_t blocks = (uint32_t)((size + VDI_BLOCK_SIZE - 1) / VDI_BLOCK_SIZE);
    uint64_t bmap_bytes = ((uint64_t)blocks * 4 + VDI_SECTOR - 1) & ~(uint64_t)(VDI_SECTOR - 1);
    uint64_t offset_data = VDI_HEADER_SIZE + bmap_bytes;
    if (offset_data > UINT32_MAX) {
        vbd_error_setf(err, EINVAL, "VDI image size too large: its block map would not fit 32-bit offsets");
        return -EINVAL;
    }
    uint64_t meta = offset_data;
    uint8_t *buf = calloc(1, meta);
    if (!buf) {
        vbd_error_setf(err, ENOMEM, "No memory for the VDI block map of '%s'", filename);
        return -ENOMEM;
    }
    snprintf((char *)buf, 0x40, "<<< QEMU VM Virtual Disk Image >>>\n");
    put_le32p(buf + H_SIGNATURE, VDI_SIGNATURE);
    put_le32p(buf + H_VERSION, VDI_VERSION_1_1);
    put_le32p(buf + H_HEADER_SIZE, 0x180); /* the 1.1 header without its unused tail, as VirtualBox writes */
    put_le32p(buf + H_TYPE, is_static ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC);
    put_le32p(buf + H_OFFSET_BMAP, VDI_HEADER_SIZE);
    put_le32p(buf + H_OFFSET_DATA, (uint32_t)offset_data);
    put_le32p(buf + H_SECTOR_SIZE, VDI_SECTOR);
    put_le64p(buf + H_DISK_SIZE, size);
    put_le32p(buf + H_BLOCK_SIZE, VDI_BLOCK_SIZE);
    put_le32p(buf + H_BLOCKS, blocks);
    put_le32p(buf + H_BLOCKS_ALLOCATED, is_static ? blocks : 0);
    new_uuid(buf + H_UUID_IMAGE);
    new_uuid(buf + H_UUID_LAST_SNAP);
    for (uint32_t i = 0; i < blocks; i++)
        put_le32p(buf + VDI_HEADER_SIZE + 4 * (uint64_t)i, is_static ? i : VDI_UNALLOCATED);
    uint64_t file_size = is_static ? offset_data + (uint64_t)blocks * VDI_BLOCK_SIZE : 0;
    int rc;
    struct vbd_node *f = vbd_create_protocol_node(filename, target, file_size, file_hints, err);
    if (!f) {
        free(buf);
        return -EIO;
    }
    rc = vbd_node_co_pwrite(f, 0, buf, meta, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(f);
    if (rc < 0)
        vbd_error_setf(err, -rc, "Could not write the VDI image '%s': %s", filename, strerror(-rc));
    vbd_node_unref(f);
    free(buf);
    return rc < 0 ? rc : 0;
}

static const struct vbd_driver vdi_driver = {
    .name = "vdi",
    .kind = VBD_DRV_FORMAT,
    .state_size = sizeof(struct vdi_state),
    .probe = vdi_probe,
    .open = vdi_open,
    .close = vdi_close,
    .co_preadv = vdi_preadv,
    .co_pwritev = vdi_pwritev,
    .co_pwrite_zeroes = vdi_pwrite_zeroes,
    .co_block_status = vdi_block_status,
    .get_info = vdi_get_info,
    .co_check = vdi_co_check,
    .create_opts = vdi_create_opts,
    .co_create = create_image,
    .create_onto_node = true,
};
VBD_DRIVER_REGISTER(vdi, vdi_driver);
