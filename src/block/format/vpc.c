/* SPDX-License-Identifier: MIT */
/* Format driver "vpc": Virtual PC / Hyper-V VHD, fixed and dynamic.
 *
 * A 512-byte footer ("conectix") ends every image; a dynamic image also
 * keeps a copy at offset 0, followed by its dynamic header ("cxsparse")
 * and the block allocation table (BAT: big-endian sector numbers of the
 * blocks, 0xffffffff = unallocated). Each allocated block is a sector
 * bitmap (rounded up to 512 bytes) followed by block_size bytes of data.
 * As qemu, reads of a dynamic image ignore the bitmap and allocation sets
 * it all ones. A fixed image is raw data plus the footer at its end, so
 * probing cannot see it: it opens only with -f vpc.
 *
 * A differencing image is a dynamic one over a parent VHD: a sector whose
 * bitmap bit is set (most significant bit first) is the child's, any
 * other sector, and every sector of an unallocated block, reads from the
 * parent. The parent is found by the dynamic header's parent locators: a
 * relative Windows path (W2ru, relative to the child's directory), an
 * absolute one (W2ku: on a non-Windows host, its file name in the child's
 * directory), a file:// URL (MacX), else the parent's name in the header.
 * qemu 7.2 reads such an image as a dynamic one, without its parent.
 * Differencing images are read-only here. */
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
#include <time.h>

#define VHD_FOOTER_SIZE 512
#define VHD_DYN_HEADER_SIZE 1024
#define VHD_FIXED 2
#define VHD_DYNAMIC 3
#define VHD_DIFFERENCING 4
#define VHD_BAT_FREE 0xffffffffu
#define VHD_TIMESTAMP_BASE 946684800 /* 2000-01-01 00:00:00 UTC */
#define VHD_CHS_MAX_C 65535ull
#define VHD_CHS_MAX_H 16ull
#define VHD_CHS_MAX_S 255ull
#define VHD_MAX_GEOMETRY (VHD_CHS_MAX_C * VHD_CHS_MAX_H * VHD_CHS_MAX_S)
#define VHD_MAX_SECTORS 0xff000000ull /* 2040 GiB, qemu's limit */
#define VHD_DEFAULT_BLOCK_SIZE 0x200000u

/* footer field offsets */
#define F_COOKIE 0
#define F_FEATURES 8
#define F_VERSION 12
#define F_DATA_OFFSET 16
#define F_TIMESTAMP 24
#define F_CREATOR_APP 28
#define F_CREATOR_VER 32
#define F_CREATOR_OS 36
#define F_ORIG_SIZE 40
#define F_CURRENT_SIZE 48
#define F_CYLS 56
#define F_HEADS 58
#define F_SECS 59
#define F_TYPE 60
#define F_CHECKSUM 64
#define F_UUID 68

/* dynamic header field offsets */
#define D_COOKIE 0
#define D_DATA_OFFSET 8
#define D_TABLE_OFFSET 16
#define D_VERSION 24
#define D_MAX_ENTRIES 28
#define D_BLOCK_SIZE 32
#define D_CHECKSUM 36

struct vpc_state {
    uint8_t footer[VHD_FOOTER_SIZE];
    uint32_t type;
    uint32_t block_size;
    uint32_t bitmap_size;
    uint32_t max_table_entries;
    uint64_t bat_offset;
    uint32_t *bat;                 /* host order; written only under alloc_lock */
    uint64_t free_data_block_offset; /* where the next block goes: the footer's place */
    struct vbd_co_mutex alloc_lock;
    uint8_t *ones_bitmap;          /* bitmap_size bytes of 0xff, written at allocation */
    bool diff;                     /* differencing: bitmaps count, n->backing is the parent */
};

static uint32_t vpc_checksum(const uint8_t *buf, size_t len, size_t skip_at)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i++)
        if (i < skip_at || i >= skip_at + 4)
            sum += buf[i];
    return ~sum;
}

static int vpc_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return len >= 8 && !memcmp(buf, "conectix", 8) ? 100 : 0;
}

/* The Virtual Hard Disk spec's CHS algorithm (Appendix: CHS calculation). */
static void vpc_calculate_geometry(uint64_t total_sectors, uint16_t *cyls, uint8_t *heads, uint8_t *secs)
{
    uint64_t cyls_times_heads;
    if (total_sectors > VHD_MAX_GEOMETRY)
        total_sectors = VHD_MAX_GEOMETRY;
    if (total_sectors >= 65535ull * 16 * 63) {
        *secs = 255;
        *heads = 16;
        cyls_times_heads = total_sectors / *secs;
    } else {
        *secs = 17;
        cyls_times_heads = total_sectors / *secs;
        uint64_t h = (cyls_times_heads + 1023) / 1024;
        if (h < 4)
            h = 4;
        if (cyls_times_heads >= h * 1024 || h > 16) {
            *secs = 31;
            h = 16;
            cyls_times_heads = total_sectors / *secs;
        }
        if (cyls_times_heads >= h * 1024) {
            *secs = 63;
            h = 16;
            cyls_times_heads = total_sectors / *secs;
        }
        *heads = (uint8_t)h;
    }
    *cyls = (uint16_t)(cyls_times_heads / *heads);
}

enum { VPC_SIZE_AUTO = -1, VPC_SIZE_CHS = 0, VPC_SIZE_CURRENT = 1 };
static const char *const vpc_size_calc_names[] = {"chs", "current_size", NULL};

static void vpc_free(struct vpc_state *s)
{
    free(s->bat);
    free(s->ones_bitmap);
    s->bat = NULL;
    s->ones_bitmap = NULL;
}

/* UTF-16 (little- or big-endian) of len bytes to UTF-8 in out, up to a NUL;
 * false if it is malformed or does not fit. */
static bool utf16_to_utf8(const uint8_t *p, size_t len, bool be, char *out, size_t outsz)
{
    size_t o = 0;
    for (size_t i = 0; i + 1 < len; i += 2) {
        uint32_t c = be ? (uint32_t)(p[i] << 8 | p[i + 1]) : (uint32_t)(p[i + 1] << 8 | p[i]);
        if (c == 0)
            break;
        if (c >= 0xd800 && c < 0xdc00) {
            if (i + 3 >= len)
                return false;
            uint32_t lo = be ? (uint32_t)(p[i + 2] << 8 | p[i + 3]) : (uint32_t)(p[i + 3] << 8 | p[i + 2]);
            if (lo < 0xdc00 || lo >= 0xe000)
                return false;
            c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
            i += 2;
        } else if (c >= 0xdc00 && c < 0xe000) {
            return false;
        }
        uint8_t u[4];
        size_t n = 0;
        if (c < 0x80) {
            u[n++] = (uint8_t)c;
        } else if (c < 0x800) {
            u[n++] = (uint8_t)(0xc0 | c >> 6);
            u[n++] = (uint8_t)(0x80 | (c & 0x3f));
        } else if (c < 0x10000) {
            u[n++] = (uint8_t)(0xe0 | c >> 12);
            u[n++] = (uint8_t)(0x80 | (c >> 6 & 0x3f));
            u[n++] = (uint8_t)(0x80 | (c & 0x3f));
        } else {
            u[n++] = (uint8_t)(0xf0 | c >> 18);
            u[n++] = (uint8_t)(0x80 | (c >> 12 & 0x3f));
            u[n++] = (uint8_t)(0x80 | (c >> 6 & 0x3f));
            u[n++] = (uint8_t)(0x80 | (c & 0x3f));
        }
        if (o + n >= outsz)
            return false;
        memcpy(out + o, u, n);
        o += n;
    }
    out[o] = 0;
    return o > 0;
}

#define VHD_MAX_LOCATOR 8192 /* bytes of a parent path we read */

/* n->backing_file from the parent locators of dynamic header d (see the
 * top of the file for the order). */
static int vpc_parent_name(struct vbd_node *n, const uint8_t *d, uint64_t fsize, struct vbd_error **err)
{
    static const char codes[][5] = {"W2ru", "W2ku", "MacX"};
    const char *name = n->file->filename;
    char path[sizeof(n->backing_file)];
    path[0] = 0;
    for (int c = 0; c < 3 && !path[0]; c++) {
        for (int i = 0; i < 8 && !path[0]; i++) {
            const uint8_t *e = d + 576 + 24 * i;
            if (memcmp(e, codes[c], 4))
                continue;
            uint64_t len = get_be32p(e + 8), off = get_be64p(e + 16);
            if (len == 0 || len > VHD_MAX_LOCATOR || off > fsize || len > fsize - off) {
                vbd_error_setf(err, EINVAL, "Image '%s': VHD parent locator %s (offset %llu, %llu bytes) is outside the file",
                               name, codes[c], (unsigned long long)off, (unsigned long long)len);
                return -EINVAL;
            }
            uint8_t buf[VHD_MAX_LOCATOR + 1];
            int rc = vbd_node_co_pread(n->file, off, buf, len);
            if (rc < 0) {
                vbd_error_setf(err, -rc, "Could not read the VHD parent locator of '%s': %s", name, strerror(-rc));
                return rc;
            }
            bool ok;
            if (c == 2) { /* UTF-8 file:// URL */
                buf[len] = 0;
                const char *p = (const char *)buf;
                if (!strncmp(p, "file://", 7))
                    p += 7;
                ok = *p && strlen(p) < sizeof(path);
                if (ok)
                    snprintf(path, sizeof(path), "%s", p);
            } else {
                ok = utf16_to_utf8(buf, len, false, path, sizeof(path));
            }
            if (!ok) {
                vbd_error_setf(err, EINVAL, "Image '%s': VHD parent locator %s is not a valid path", name, codes[c]);
                return -EINVAL;
            }
        }
        if (path[0] && c < 2) { /* a Windows path */
            for (char *p = path; *p; p++)
                if (*p == '\\')
                    *p = '/';
            if (c == 1 && strchr(path, ':')) { /* "C:/dir/parent.vhd": its file name beside the child */
                char *b = strrchr(path, '/');
                memmove(path, b ? b + 1 : strchr(path, ':') + 1, strlen(b ? b + 1 : strchr(path, ':') + 1) + 1);
            }
            while (!strncmp(path, "./", 2))
                memmove(path, path + 2, strlen(path + 2) + 1);
        }
    }
    if (!path[0] && !utf16_to_utf8(d + 64, 512, true, path, sizeof(path))) {
        vbd_error_setf(err, EINVAL, "Image '%s': differencing VHD image names no parent", name);
        return -EINVAL;
    }
    if (!path[0]) {
        vbd_error_setf(err, EINVAL, "Image '%s': differencing VHD image names no parent", name);
        return -EINVAL;
    }
    snprintf(n->backing_file, sizeof(n->backing_file), "%s", path);
    snprintf(n->backing_format, sizeof(n->backing_format), "vpc"); /* a fixed parent does not probe */
    return 0;
}

static int vpc_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct vpc_state *s = n->opaque;
    int size_calc = VPC_SIZE_AUTO;
    if (vbd_opt_take_enum(opts, "force_size_calc", vpc_size_calc_names, &size_calc, err) < 0)
        return -EINVAL;
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file)
        return -EINVAL;
    const char *name = n->file->filename;
    uint64_t fsize = n->file->size;
    /* a file of another format is refused in qemu-img's words (users and
     * scripts meet them): an empty file is too small, any other without
     * the footer's cookie "invalid VPC image" (QEMU reads a short file as
     * one zero-padded sector) */
    if (fsize == 0) {
        vbd_error_setf(err, EINVAL, "File too small for a VHD header");
        return -EINVAL;
    }
    uint8_t *f = s->footer;
    memset(f, 0, VHD_FOOTER_SIZE);
    int rc = vbd_node_co_pread(n->file, 0, f, fsize < VHD_FOOTER_SIZE ? fsize : VHD_FOOTER_SIZE);
    if (rc < 0)
        goto io_error;
    if (memcmp(f, "conectix", 8) && fsize >= VHD_FOOTER_SIZE) { /* a fixed image: the footer is only at the end */
        rc = vbd_node_co_pread(n->file, fsize - VHD_FOOTER_SIZE, f, VHD_FOOTER_SIZE);
        if (rc < 0)
            goto io_error;
    }
    if (memcmp(f, "conectix", 8)) {
        vbd_error_setf(err, EINVAL, "invalid VPC image");
        return -EINVAL;
    }
    if (vpc_checksum(f, VHD_FOOTER_SIZE, F_CHECKSUM) != get_be32p(f + F_CHECKSUM)) {
        vbd_error_setf(err, EINVAL, "Incorrect header checksum"); /* QEMU's words, as below where it checks too */
        return -EINVAL;
    }
    if (fsize < VHD_FOOTER_SIZE) { /* a whole footer in a shorter file: no image */
        vbd_error_setf(err, EINVAL, "Image '%s' is not a VHD image: smaller than its 512-byte footer", name);
        return -EINVAL;
    }
    s->type = get_be32p(f + F_TYPE);
    s->diff = s->type == VHD_DIFFERENCING;
    if (s->diff && (flags & VBD_OPEN_RDWR)) {
        vbd_error_setf(err, ENOTSUP, "Image '%s': writing to differencing VHD images is not supported (open it read-only)",
                       name);
        return -ENOTSUP;
    }
    if (s->type != VHD_FIXED && s->type != VHD_DYNAMIC && !s->diff) {
        vbd_error_setf(err, EINVAL, "Image '%s': unknown VHD disk type %u in the footer", name, s->type);
        return -EINVAL;
    }

    /* Virtual PC sizes a disk by its CHS geometry, Hyper-V (and qemu with
     * force_size) by current_size: the creator app tells which, as qemu. */
    const char *app = (const char *)f + F_CREATOR_APP;
    bool use_chs = memcmp(app, "win ", 4) && memcmp(app, "qem2", 4) && memcmp(app, "d2v ", 4) &&
                   memcmp(app, "CTXS", 4) && memcmp(app, "tap", 4) && memcmp(app, "wa\0", 4);
    if (size_calc != VPC_SIZE_AUTO)
        use_chs = size_calc == VPC_SIZE_CHS;
    uint64_t chs_sectors = (uint64_t)get_be16p(f + F_CYLS) * f[F_HEADS] * f[F_SECS];
    uint64_t current_size = get_be64p(f + F_CURRENT_SIZE);
    uint64_t sectors = chs_sectors;
    if (!use_chs || chs_sectors == VHD_MAX_GEOMETRY)
        sectors = current_size / 512;
    if (sectors > VHD_MAX_SECTORS) {
        vbd_error_setf(err, EFBIG, "Image '%s': VHD footer size %llu bytes is above the 2040 GiB maximum", name,
                       (unsigned long long)(sectors * 512));
        return -EFBIG;
    }
    n->size = sectors * 512;

    if (s->type == VHD_FIXED) {
        if (n->size > fsize - VHD_FOOTER_SIZE) {
            vbd_error_setf(err, EINVAL, "Image '%s': fixed VHD size %llu is past the end of the file (%llu)", name,
                           (unsigned long long)n->size, (unsigned long long)fsize);
            return -EINVAL;
        }
        n->bl = n->file->bl;
        n->supported_write_flags = n->file->supported_write_flags;
        return 0;
    }

    uint64_t dyn_off = get_be64p(f + F_DATA_OFFSET);
    if (dyn_off > fsize || fsize - dyn_off < VHD_DYN_HEADER_SIZE) {
        vbd_error_setf(err, EINVAL, "Image '%s': VHD data_offset %llu is past the end of the file", name,
                       (unsigned long long)dyn_off);
        return -EINVAL;
    }
    uint8_t d[VHD_DYN_HEADER_SIZE];
    rc = vbd_node_co_pread(n->file, dyn_off, d, sizeof(d));
    if (rc < 0)
        goto io_error;
    if (memcmp(d, "cxsparse", 8)) {
        vbd_error_setf(err, EINVAL, "Image '%s': no 'cxsparse' dynamic disk header at %llu", name,
                       (unsigned long long)dyn_off);
        return -EINVAL;
    }
    if (vpc_checksum(d, sizeof(d), D_CHECKSUM) != get_be32p(d + D_CHECKSUM)) {
        vbd_error_setf(err, EINVAL, "Image '%s': incorrect VHD dynamic header checksum", name);
        return -EINVAL;
    }
    s->block_size = get_be32p(d + D_BLOCK_SIZE);
    if (s->block_size < 512 || (s->block_size & (s->block_size - 1))) {
        vbd_error_setf(err, EINVAL, "Invalid block size %u", s->block_size);
        return -EINVAL;
    }
    s->bitmap_size = ((s->block_size / (8 * 512)) + 511) & ~511u;
    s->max_table_entries = get_be32p(d + D_MAX_ENTRIES);
    s->bat_offset = get_be64p(d + D_TABLE_OFFSET);
    uint64_t bat_bytes = (uint64_t)s->max_table_entries * 4;
    if (s->max_table_entries > INT32_MAX / 4) {
        vbd_error_setf(err, EINVAL, "Max Table Entries too large (%d)", (int32_t)s->max_table_entries);
        return -EINVAL;
    }
    if ((uint64_t)s->max_table_entries * s->block_size < n->size) {
        vbd_error_setf(err, EINVAL, "Page table too small");
        return -EINVAL;
    }
    if (s->bat_offset > fsize || bat_bytes > fsize - s->bat_offset) {
        vbd_error_setf(err, EINVAL, "Error reading pagetable"); /* QEMU's words: its read of it fails */
        return -EINVAL;
    }
    s->bat = malloc(bat_bytes ? bat_bytes : 4);
    if (!s->bat) {
        vbd_error_setf(err, ENOMEM, "Image '%s': cannot allocate the VHD block allocation table", name);
        return -ENOMEM;
    }
    rc = vbd_node_co_pread(n->file, s->bat_offset, s->bat, bat_bytes);
    if (rc < 0) {
        vpc_free(s);
        goto io_error;
    }
    s->free_data_block_offset = (s->bat_offset + bat_bytes + 511) & ~511ull;
    uint64_t block_span = (uint64_t)s->bitmap_size + s->block_size;
    for (uint32_t i = 0; i < s->max_table_entries; i++) {
        s->bat[i] = be32toh(s->bat[i]);
        if (s->bat[i] == VHD_BAT_FREE)
            continue;
        uint64_t start = (uint64_t)s->bat[i] * 512, end = start + block_span;
        /* A block on the footer's copy, the dynamic header or the BAT: a
         * guest write there lands on that metadata (the next open found
         * the image "truncated", every block lost; QEMU 7.2 opens and
         * writes it alike). Read-only, it only reads odd data. */
        if ((flags & VBD_OPEN_RDWR) &&
            (start < VHD_FOOTER_SIZE || (start < dyn_off + VHD_DYN_HEADER_SIZE && dyn_off < end) ||
             (start < s->bat_offset + bat_bytes && s->bat_offset < end))) {
            vbd_error_setf(err, EINVAL,
                           "Image '%s': VHD block %u (at %llu) lies on the image's metadata (footer copy, dynamic "
                           "header or BAT): refused read-write",
                           name, i, (unsigned long long)start);
            vpc_free(s);
            return -EINVAL;
        }
        if (end > s->free_data_block_offset)
            s->free_data_block_offset = end;
    }
    /* Space before the footer that no BAT entry names is a block whose
     * allocation was cut short (a crash, a failed write) before its BAT
     * entry: it holds that write's data. A new block reads its unwritten
     * sectors from the file, so it goes over the footer, where the file
     * reads as zeroes after it, not over that space. */
    if (fsize >= VHD_FOOTER_SIZE) {
        uint64_t footer_at = (fsize - VHD_FOOTER_SIZE + 511) & ~511ull;
        if (footer_at > s->free_data_block_offset)
            s->free_data_block_offset = footer_at;
    }
    if (s->free_data_block_offset > fsize) {
        vbd_error_setf(err, EINVAL,
                       "block-vpc: free_data_block_offset points after the end of file. The image has been truncated.");
        vpc_free(s);
        return -EINVAL;
    }
    s->ones_bitmap = malloc(s->bitmap_size);
    if (!s->ones_bitmap) {
        vpc_free(s);
        vbd_error_setf(err, ENOMEM, "Image '%s': out of memory", name);
        return -ENOMEM;
    }
    memset(s->ones_bitmap, 0xff, s->bitmap_size);
    n->bl.request_alignment = 512; /* io.c does the read-modify-write of partial sectors */
    n->bl.min_mem_alignment = n->file->bl.min_mem_alignment;
    n->bl.opt_transfer = s->block_size;
    if (s->diff) {
        rc = vpc_parent_name(n, d, fsize, err);
        if (rc == 0)
            rc = vbd_open_backing(n, opts, flags, err);
        if (rc < 0) {
            vpc_free(s);
            return rc;
        }
    }
    return 0;

io_error:
    vbd_error_setf(err, -rc, "Could not read the VHD image '%s': %s", name, strerror(-rc));
    return rc;
}

static void vpc_close(struct vbd_node *n)
{
    vpc_free(n->opaque);
}

/* Host offset of virtual byte off in a dynamic image, 0 if its block is not
 * allocated; *avail = bytes to the block's end. Blocks are checked to lie
 * within the file at open (free_data_block_offset). */
static uint64_t vpc_lookup(struct vpc_state *s, uint64_t off, uint64_t *avail)
{
    uint64_t index = off / s->block_size;
    uint64_t in_block = off % s->block_size;
    *avail = s->block_size - in_block;
    uint32_t entry = index < s->max_table_entries ? s->bat[index] : VHD_BAT_FREE;
    if (entry == VHD_BAT_FREE)
        return 0;
    return (uint64_t)entry * 512 + s->bitmap_size + in_block;
}

#define VPC_BITMAP_CHUNK 4096 /* bitmap bytes read at once: 32768 sectors */

/* Sectors [off, off+len) of one allocated block of a differencing image
 * whose data for off is at host: the bitmap says child or parent. */
static int vpc_read_diff(struct vbd_node *n, uint64_t off, uint64_t len, uint64_t host, struct vbd_qiov *q, size_t qoff)
{
    struct vpc_state *s = n->opaque;
    uint64_t first = off % s->block_size / 512;
    uint64_t bitmap_off = host - off % s->block_size - s->bitmap_size;
    uint8_t bm[VPC_BITMAP_CHUNK];
    while (len) {
        uint64_t count = len / 512;
        uint64_t b0 = first / 8;
        if (count > (VPC_BITMAP_CHUNK - 1) * 8ull)
            count = (VPC_BITMAP_CHUNK - 1) * 8ull;
        uint64_t b1 = (first + count - 1) / 8;
        int rc = vbd_node_co_pread(n->file, bitmap_off + b0, bm, b1 - b0 + 1);
        if (rc < 0)
            return rc;
        for (uint64_t i = 0; i < count;) {
            bool set = bm[(first + i) / 8 - b0] & (0x80 >> ((first + i) % 8));
            uint64_t j = i + 1;
            while (j < count && (bool)(bm[(first + j) / 8 - b0] & (0x80 >> ((first + j) % 8))) == set)
                j++;
            uint64_t run = (j - i) * 512;
            rc = set ? vbd_node_co_preadv(n->file, host + i * 512, run, q, qoff + i * 512, 0)
                     : vbd_node_co_read_backing(n, off + i * 512, run, q, qoff + i * 512, 0);
            if (rc < 0)
                return rc;
            i = j;
        }
        first += count;
        off += count * 512;
        host += count * 512;
        qoff += count * 512;
        len -= count * 512;
    }
    return 0;
}

static int vpc_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                      unsigned flags)
{
    struct vpc_state *s = n->opaque;
    (void)flags;
    if (s->type == VHD_FIXED)
        return vbd_node_co_preadv(n->file, off, bytes, q, qoff, 0);
    while (bytes) {
        uint64_t avail;
        uint64_t host = vpc_lookup(s, off, &avail);
        uint64_t len = avail < bytes ? avail : bytes;
        int rc = 0;
        if (host && s->diff)
            rc = vpc_read_diff(n, off, len, host, q, qoff);
        else if (host)
            rc = vbd_node_co_preadv(n->file, host, len, q, qoff, 0);
        else if (s->diff)
            rc = vbd_node_co_read_backing(n, off, len, q, qoff, 0);
        else
            vbd_iov_memset(q->iov, q->niov, qoff, 0, len);
        if (rc < 0)
            return rc;
        off += len;
        qoff += len;
        bytes -= len;
    }
    return 0;
}

/* Allocate the block of off and write [off, off+len) of the request into
 * it, unless another request allocated it meanwhile (then write normally).
 * Crash order: bitmap and data, the footer at the new end, a flush, then
 * the BAT entry that makes the block visible. The rest of the block is
 * past the old end of the file: it reads as zeroes. */
static int vpc_alloc_write(struct vbd_node *n, uint64_t off, uint64_t len, struct vbd_qiov *q, size_t qoff)
{
    struct vpc_state *s = n->opaque;
    vbd_co_mutex_lock(&s->alloc_lock);
    uint64_t avail;
    uint64_t host = vpc_lookup(s, off, &avail);
    int rc;
    if (host) {
        vbd_co_mutex_unlock(&s->alloc_lock);
        return vbd_node_co_pwritev(n->file, host, len, q, qoff, 0);
    }
    uint64_t index = off / s->block_size;
    uint64_t block_off = s->free_data_block_offset;
    uint64_t new_end = block_off + s->bitmap_size + s->block_size;
    if (block_off / 512 >= VHD_BAT_FREE) {
        rc = -EFBIG;
        goto out;
    }
    /* from here on the space holds this request's data even if a write
     * below fails: the next block goes after it (unwritten sectors of a
     * block read what the file has there) */
    s->free_data_block_offset = new_end;
    rc = vbd_node_co_pwrite(n->file, block_off, s->ones_bitmap, s->bitmap_size, 0);
    if (rc == 0)
        rc = vbd_node_co_pwritev(n->file, block_off + s->bitmap_size + off % s->block_size, len, q, qoff, 0);
    if (rc == 0)
        rc = vbd_node_co_pwrite(n->file, new_end, s->footer, VHD_FOOTER_SIZE, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(n->file);
    if (rc < 0)
        goto out;
    uint8_t entry[4];
    put_be32p(entry, (uint32_t)(block_off / 512));
    rc = vbd_node_co_pwrite(n->file, s->bat_offset + index * 4, entry, 4, 0);
    if (rc < 0)
        goto out;
    s->bat[index] = (uint32_t)(block_off / 512);
out:
    vbd_co_mutex_unlock(&s->alloc_lock);
    return rc;
}

static int vpc_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                       unsigned flags)
{
    struct vpc_state *s = n->opaque;
    if (s->type == VHD_FIXED)
        return vbd_node_co_pwritev(n->file, off, bytes, q, qoff, flags);
    while (bytes) {
        uint64_t avail;
        uint64_t host = vpc_lookup(s, off, &avail);
        uint64_t len = avail < bytes ? avail : bytes;
        int rc = host ? vbd_node_co_pwritev(n->file, host, len, q, qoff, 0) : vpc_alloc_write(n, off, len, q, qoff);
        if (rc < 0)
            return rc;
        off += len;
        qoff += len;
        bytes -= len;
    }
    return 0;
}

static int vpc_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                            uint64_t *map, struct vbd_node **file)
{
    struct vpc_state *s = n->opaque;
    *file = n->file;
    if (s->type == VHD_FIXED) { /* as raw: the file's holes and data are the disk's (qemu recurses too) */
        int rc = vbd_node_co_block_status(n->file, want_zero, off, bytes, pnum, map, file);
        if (rc < 0)
            return rc;
        /* qemu's fixed vpc is data throughout; the file's holes only add "zero" */
        return (rc & ~VBD_BS_EOF) | VBD_BS_DATA | VBD_BS_ALLOCATED;
    }
    uint64_t avail;
    uint64_t host = vpc_lookup(s, off, &avail);
    bool allocated = host != 0;
    uint64_t done = 0;
    if (s->diff && allocated) { /* the run of sectors alike in the bitmap, within this block */
        uint64_t first = off % s->block_size / 512;
        uint64_t count = (avail < bytes ? avail : bytes) / 512;
        if (count > (VPC_BITMAP_CHUNK - 1) * 8ull)
            count = (VPC_BITMAP_CHUNK - 1) * 8ull;
        if (count == 0) /* the disk's last partial sector */
            count = 1;
        uint8_t bm[VPC_BITMAP_CHUNK];
        uint64_t b0 = first / 8, b1 = (first + count - 1) / 8;
        uint64_t in_block = off % s->block_size;
        int rc = vbd_node_co_pread(n->file, host - in_block - s->bitmap_size + b0, bm, b1 - b0 + 1);
        if (rc < 0)
            return rc;
        bool set = bm[0] & (0x80 >> (first % 8));
        uint64_t j = 1;
        while (j < count && (bool)(bm[(first + j) / 8 - b0] & (0x80 >> ((first + j) % 8))) == set)
            j++;
        uint64_t run = (first + j) * 512 - in_block;
        *pnum = run < bytes ? run : bytes;
        if (!set)
            return !n->backing || off >= vbd_node_size(n->backing) ? VBD_BS_ZERO : 0;
        *map = host;
        return VBD_BS_DATA | VBD_BS_OFFSET_VALID | VBD_BS_ALLOCATED;
    }
    /* merge following blocks of the same kind, contiguous in the file when allocated */
    for (;;) {
        uint64_t len = avail < bytes - done ? avail : bytes - done;
        done += len;
        if (done == bytes)
            break;
        uint64_t next = vpc_lookup(s, off + done, &avail);
        if ((next != 0) != allocated || (allocated && next != host + done))
            break;
    }
    *pnum = done;
    if (!allocated && s->diff) /* the parent's */
        return !n->backing || off >= vbd_node_size(n->backing) ? VBD_BS_ZERO : 0;
    if (!allocated) /* reads as zeroes from this image: allocated, as qemu counts a ZERO answer */
        return VBD_BS_ZERO | VBD_BS_ALLOCATED;
    *map = host;
    return VBD_BS_DATA | VBD_BS_OFFSET_VALID | VBD_BS_ALLOCATED;
}

static int vpc_get_info(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err)
{
    struct vpc_state *s = n->opaque;
    (void)err;
    info->virtual_size = n->size;
    info->cluster_size = s->type != VHD_FIXED ? s->block_size : 0;
    return 0;
}

static const struct vbd_opt_desc vpc_create_opts[] = {
    {"size", VBD_OPT_SIZE, "Virtual disk size", NULL},
    {"subformat", VBD_OPT_STRING, "Type of virtual hard disk format. Supported formats are {dynamic (default) | fixed} ", "dynamic"},
    {"force_size", VBD_OPT_BOOL,
     "Force disk size calculation to use the actual size specified, rather than using the nearest CHS-based calculation", "off"},
    {NULL, 0, NULL, NULL},
};

static const char *const vpc_subformat_names[] = {"dynamic", "fixed", NULL};

/* qemu's rounding: the smallest CHS geometry holding size (rounded up, so
 * that convert never truncates), or, with force_size or a disk beyond
 * CHS, the maximum geometry and the exact size. */
static int vpc_rounded_size(uint64_t size, bool force_size, uint16_t *cyls, uint8_t *heads, uint8_t *secs,
                            uint64_t *total_sectors, struct vbd_error **err)
{
    uint16_t c = 0;
    uint8_t h = 0, sc = 0;
    if (force_size) {
        c = VHD_CHS_MAX_C;
        h = VHD_CHS_MAX_H;
        sc = VHD_CHS_MAX_S;
    } else {
        uint64_t want = size / 512 < VHD_MAX_GEOMETRY ? size / 512 : VHD_MAX_GEOMETRY;
        for (uint64_t i = 0; want > (uint64_t)c * h * sc; i++)
            vpc_calculate_geometry(want + i, &c, &h, &sc);
    }
    if ((uint64_t)c * h * sc == VHD_MAX_GEOMETRY) {
        *total_sectors = size / 512;
        if (*total_sectors > VHD_MAX_SECTORS) {
            vbd_error_setf(err, EFBIG, "The image size is too large for file format 'vpc' (max 2040 GiB)");
            return -EFBIG;
        }
    } else {
        *total_sectors = (uint64_t)c * h * sc;
    }
    *cyls = c;
    *heads = h;
    *secs = sc;
    return 0;
}

/* The image at filename (made here), or on target (blockdev-create). */
static int create_image(const char *filename, struct vbd_node *target, struct json_object *opts,
                        struct json_object *file_hints, struct vbd_error **err)
{
    uint64_t size = 0;
    int subformat = 0;
    bool force_size = false;
    /* the subformat is read once the file is made (below) */
    struct json_object *sf = vbd_opt_take_obj(opts, "subformat");
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 ||
        vbd_opt_take_bool(opts, "force_size", &force_size, err) < 0 ||
        vbd_opts_check_empty(opts, "Block format 'vpc'", err) < 0) {
        json_object_put(sf);
        return -EINVAL;
    }
    uint16_t cyls;
    uint8_t heads, secs;
    uint64_t total_sectors;
    /* as qemu-img: a new file is made first, then the subformat and the
     * size checked (a refused one leaves it empty); blockdev-create's
     * target is left alone until they pass */
    struct vbd_node *f = NULL;
    if (!target && !(f = vbd_create_protocol_node(filename, NULL, 0, file_hints, err))) {
        json_object_put(sf);
        return -EIO;
    }
    int rc = 0;
    if (sf) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "subformat", sf);
        rc = vbd_opt_take_enum(o, "subformat", vpc_subformat_names, &subformat, err) < 0 ? -EINVAL : 0;
        json_object_put(o);
    }
    bool fixed = subformat == 1;
    if (rc == 0)
        rc = vpc_rounded_size(size, force_size, &cyls, &heads, &secs, &total_sectors, err);
    if (rc < 0) {
        if (f)
            vbd_node_unref(f);
        return rc;
    }
    uint64_t total_size = total_sectors * 512;
    if (target && total_size != size) {
        /* blockdev-create takes the size as it is (QEMU rounds it up to a
         * geometry only for qemu-img create) */
        vbd_error_setf(err, EINVAL, "The requested image size cannot be represented in CHS geometry");
        return -EINVAL;
    }

    uint8_t footer[VHD_FOOTER_SIZE] = {0};
    memcpy(footer + F_COOKIE, "conectix", 8);
    put_be32p(footer + F_FEATURES, 2);
    put_be32p(footer + F_VERSION, 0x00010000);
    put_be64p(footer + F_DATA_OFFSET, fixed ? UINT64_MAX : VHD_FOOTER_SIZE);
    put_be32p(footer + F_TIMESTAMP, (uint32_t)(time(NULL) - VHD_TIMESTAMP_BASE));
    memcpy(footer + F_CREATOR_APP, force_size ? "qem2" : "qemu", 4);
    put_be32p(footer + F_CREATOR_VER, 0x00050003); /* Virtual PC 2007, as qemu */
    memcpy(footer + F_CREATOR_OS, "Wi2k", 4);
    put_be64p(footer + F_ORIG_SIZE, total_size);
    put_be64p(footer + F_CURRENT_SIZE, total_size);
    put_be16p(footer + F_CYLS, cyls);
    footer[F_HEADS] = heads;
    footer[F_SECS] = secs;
    put_be32p(footer + F_TYPE, fixed ? VHD_FIXED : VHD_DYNAMIC);
    if (getrandom(footer + F_UUID, 16, 0) != 16)
        for (int i = 0; i < 16; i++)
            footer[F_UUID + i] = (uint8_t)rand();
    footer[F_UUID + 6] = (uint8_t)((footer[F_UUID + 6] & 0x0f) | 0x40); /* version 4 UUID */
    footer[F_UUID + 8] = (uint8_t)((footer[F_UUID + 8] & 0x3f) | 0x80);
    put_be32p(footer + F_CHECKSUM, vpc_checksum(footer, sizeof(footer), F_CHECKSUM));

    if (!f && !(f = vbd_create_protocol_node(filename, target, 0, file_hints, err)))
        return -EIO;
    uint8_t *meta = NULL;
    if (fixed) {
        rc = vbd_node_co_truncate(f, total_size + VHD_FOOTER_SIZE, true, VBD_PREALLOC_OFF, err);
        if (rc < 0)
            goto out;
        rc = vbd_node_co_pwrite(f, total_size, footer, VHD_FOOTER_SIZE, 0);
    } else {
        uint64_t entries = (total_sectors + VHD_DEFAULT_BLOCK_SIZE / 512 - 1) / (VHD_DEFAULT_BLOCK_SIZE / 512);
        uint64_t bat_bytes = (entries * 4 + 511) & ~511ull;
        uint64_t meta_len = 3 * 512 + bat_bytes + VHD_FOOTER_SIZE;
        meta = calloc(1, meta_len);
        if (!meta) {
            rc = -ENOMEM;
            vbd_error_setf(err, ENOMEM, "Could not create '%s': out of memory", filename);
            goto out;
        }
        memcpy(meta, footer, VHD_FOOTER_SIZE);
        uint8_t *d = meta + VHD_FOOTER_SIZE;
        memcpy(d + D_COOKIE, "cxsparse", 8);
        put_be64p(d + D_DATA_OFFSET, UINT64_MAX);
        put_be64p(d + D_TABLE_OFFSET, 3 * 512);
        put_be32p(d + D_VERSION, 0x00010000);
        put_be32p(d + D_MAX_ENTRIES, (uint32_t)entries);
        put_be32p(d + D_BLOCK_SIZE, VHD_DEFAULT_BLOCK_SIZE);
        put_be32p(d + D_CHECKSUM, vpc_checksum(d, VHD_DYN_HEADER_SIZE, D_CHECKSUM));
        memset(meta + 3 * 512, 0xff, bat_bytes);
        memcpy(meta + 3 * 512 + bat_bytes, footer, VHD_FOOTER_SIZE);
        rc = vbd_node_co_pwrite(f, 0, meta, meta_len, 0);
    }
    if (rc == 0)
        rc = vbd_node_co_flush(f);
    if (rc < 0 && !(err && *err))
        vbd_error_setf(err, -rc, "Could not write the VHD image '%s': %s", filename, strerror(-rc));
out:
    free(meta);
    vbd_node_unref(f);
    return rc < 0 ? rc : 0;
}

static int vpc_measure(struct json_object *opts, struct vbd_node *in, uint64_t *required, uint64_t *fully_allocated,
                       struct vbd_error **err)
{
    uint64_t size = 0;
    int subformat = 0;
    bool force_size = false;
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 ||
        vbd_opt_take_enum(opts, "subformat", vpc_subformat_names, &subformat, err) < 0 ||
        vbd_opt_take_bool(opts, "force_size", &force_size, err) < 0)
        return -EINVAL;
    if (in)
        size = in->size;
    uint16_t c;
    uint8_t h, sc;
    uint64_t sectors;
    int rc = vpc_rounded_size(size, force_size, &c, &h, &sc, &sectors, err);
    if (rc < 0)
        return rc;
    uint64_t bytes = sectors * 512;
    if (subformat == 1) {
        *required = *fully_allocated = bytes + VHD_FOOTER_SIZE;
        return 0;
    }
    uint64_t entries = (bytes + VHD_DEFAULT_BLOCK_SIZE - 1) / VHD_DEFAULT_BLOCK_SIZE;
    uint64_t meta = 3 * 512 + ((entries * 4 + 511) & ~511ull) + VHD_FOOTER_SIZE;
    *fully_allocated = meta + entries * (VHD_DEFAULT_BLOCK_SIZE + 512);
    /* empty: the metadata only; from an input, without walking its allocation: an upper bound */
    *required = in ? *fully_allocated : meta;
    return 0;
}

static const struct vbd_driver vpc_driver = {
    .name = "vpc",
    .kind = VBD_DRV_FORMAT,
    .state_size = sizeof(struct vpc_state),
    .probe = vpc_probe,
    .open = vpc_open,
    .close = vpc_close,
    .co_preadv = vpc_preadv,
    .co_pwritev = vpc_pwritev,
    .co_block_status = vpc_block_status,
    .get_info = vpc_get_info,
    .create_opts = vpc_create_opts,
    .co_create = create_image,
    .create_onto_node = true,
    .measure = vpc_measure,
};
VBD_DRIVER_REGISTER(vpc, vpc_driver);
