/* SPDX-License-Identifier: MIT */
/* Format driver "vhdx": Hyper-V VHDX, fixed and dynamic (Microsoft's
 * VHDX Format Specification v1.00).
 *
 * Layout: a 1 MiB header section (file identifier, two 4 KiB headers at
 * 64 KiB and 128 KiB, two 64 KiB region tables at 192 KiB and 256 KiB),
 * then, where the region table and the header say, the log, the block
 * allocation table (BAT) and the metadata region. Headers, region tables
 * and log entries carry CRC-32C checksums. The BAT interleaves one sector
 * bitmap entry after every chunk_ratio payload block entries; payload
 * entries hold a state (3 bits) and the block's file offset in MiB.
 *
 * Metadata updates go through the log as QEMU does: a new block is written
 * and flushed, then a log entry holding the new BAT sector is written and
 * flushed, then the sector is written in place and flushed, then the log
 * is marked empty (log GUID zeroed in both headers). A crash anywhere
 * leaves either the old BAT (the block is unreferenced space) or a log
 * that the next read-write open replays. A dirty image (a log to replay)
 * opened read-only is refused, as QEMU does, with the command that
 * replays it.
 *
 * Differencing images (has_parent; QEMU refuses them) are read, read-only:
 * the parent named by the parent locator's relative_path is the backing
 * node; a PARTIALLY_PRESENT block's sectors come from this file where the
 * block's sector bitmap (one bit per logical sector, in the sector bitmap
 * block the BAT lists after each chunk of payload blocks) says so, from
 * the parent elsewhere; absent, undefined and unmapped blocks are the
 * parent's. */
#include "vhdx.h"

#include "vbd/iov.h"
#include "vbd/options.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const uint8_t vhdx_bat_guid[16] = VHDX_GUID(0x2dc27766, 0xf623, 0x4200, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08);
const uint8_t vhdx_metadata_guid[16] = VHDX_GUID(0x8b7ca206, 0x4790, 0x4b9a, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e);
const uint8_t vhdx_file_param_guid[16] = VHDX_GUID(0xcaa16737, 0xfa36, 0x4d43, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b);
const uint8_t vhdx_vsize_guid[16] = VHDX_GUID(0x2fa54224, 0xcd1b, 0x4876, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8);
const uint8_t vhdx_page83_guid[16] = VHDX_GUID(0xbeca12ab, 0xb2e6, 0x4523, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46);
const uint8_t vhdx_lsec_guid[16] = VHDX_GUID(0x8141bf1d, 0xa96f, 0x4709, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f);
const uint8_t vhdx_psec_guid[16] = VHDX_GUID(0xcda348c7, 0x445d, 0x4471, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56);
const uint8_t vhdx_parent_loc_guid[16] = VHDX_GUID(0xa8d35f2d, 0xb30b, 0x454d, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c);
const uint8_t vhdx_zero_guid[16] = {0};

static void vhdx_free(struct vhdx_state *s)
{
    free(s->bat);
    s->bat = NULL;
}

/* ---------- open ---------- */

static int bad(struct vbd_error **err, int code, const char *name, const char *fmt, unsigned long long v)
{
    char what[256];
    snprintf(what, sizeof(what), fmt, v);
    vbd_error_setf(err, code, "Image '%s': %s", name, what);
    return -code;
}

struct region {
    uint64_t start, end;
};

static bool overlaps(const struct region *r, int nr, uint64_t start, uint64_t len)
{
    for (int i = 0; i < nr; i++)
        if (start < r[i].end && start + len > r[i].start)
            return true;
    return false;
}

static int read_region_table(struct vbd_node *n, struct vhdx_state *s, struct region *regs, int *nregs,
                             struct vbd_error **err)
{
    const char *name = n->file->filename;
    uint8_t *rt = vbd_alloc_aligned(4096, VHDX_RT_SIZE);
    int rc = -EINVAL;
    bool ok = false;
    for (int t = 0; t < 2 && !ok; t++) { /* the second copy if the first is damaged */
        rc = vbd_node_co_pread(n->file, t ? VHDX_RT2_OFF : VHDX_RT1_OFF, rt, VHDX_RT_SIZE);
        if (rc < 0) {
            vbd_error_setf(err, -rc, "Could not read the VHDX region table of '%s': %s", name, strerror(-rc));
            goto out;
        }
        ok = !memcmp(rt, "regi", 4) && get_le32p(rt + 4) == vhdx_crc(rt, VHDX_RT_SIZE, 4);
    }
    rc = -EINVAL;
    if (!ok) {
        vbd_error_setf(err, EINVAL, "Image '%s': no valid VHDX region table (bad signature or checksum)", name);
        goto out;
    }
    uint32_t count = get_le32p(rt + 8);
    if (count > 2047) {
        bad(err, EINVAL, name, "VHDX region table has %llu entries (at most 2047)", count);
        goto out;
    }
    bool have_bat = false, have_meta = false;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *e = rt + 16 + i * 32;
        uint64_t off = get_le64p(e + 16);
        uint32_t len = get_le32p(e + 24), bits = get_le32p(e + 28);
        bool is_bat = !memcmp(e, vhdx_bat_guid, 16), is_meta = !memcmp(e, vhdx_metadata_guid, 16);
        if (!is_bat && !is_meta) {
            if (bits & 1) {
                vbd_error_setf(err, ENOTSUP, "Image '%s': unsupported required VHDX region", name);
                rc = -ENOTSUP;
                goto out;
            }
            continue;
        }
        if ((is_bat && have_bat) || (is_meta && have_meta)) {
            vbd_error_setf(err, EINVAL, "Image '%s': duplicate VHDX %s region", name, is_bat ? "BAT" : "metadata");
            goto out;
        }
        if (off % MiB || len % MiB || !len) {
            vbd_error_setf(err, EINVAL, "Image '%s': VHDX %s region (offset %llu, length %u) is not aligned to 1 MiB",
                           name, is_bat ? "BAT" : "metadata", (unsigned long long)off, len);
            goto out;
        }
        if (off > vbd_node_size(n->file) || len > vbd_node_size(n->file) - off) {
            vbd_error_setf(err, EINVAL, "Image '%s': VHDX %s region (offset %llu, length %u) is past the end of the file",
                           name, is_bat ? "BAT" : "metadata", (unsigned long long)off, len);
            goto out;
        }
        if (overlaps(regs, *nregs, off, len)) {
            vbd_error_setf(err, EINVAL, "Image '%s': VHDX %s region (offset %llu, length %u) overlaps another region",
                           name, is_bat ? "BAT" : "metadata", (unsigned long long)off, len);
            goto out;
        }
        regs[*nregs].start = off;
        regs[*nregs].end = off + len;
        (*nregs)++;
        if (is_bat) {
            have_bat = true;
            s->bat_offset = off;
            s->bat_length = len;
        } else {
            have_meta = true;
            s->meta_offset = off;
            s->meta_length = len;
        }
    }
    if (!have_bat || !have_meta) {
        vbd_error_setf(err, EINVAL, "Image '%s': the VHDX region table has no %s region", name, have_bat ? "metadata" : "BAT");
        goto out;
    }
    rc = 0;
out:
    free(rt);
    return rc;
}

/* UTF-16LE (BMP) to UTF-8, NUL-terminated; false if it does not fit. */
static bool utf16_to_utf8(const uint8_t *in, size_t in_len, char *out, size_t out_size)
{
    size_t o = 0;
    for (size_t i = 0; i + 1 < in_len; i += 2) {
        uint16_t c = get_le16p(in + i);
        uint8_t b[3];
        size_t nb;
        if (c < 0x80) {
            b[0] = (uint8_t)c;
            nb = 1;
        } else if (c < 0x800) {
            b[0] = (uint8_t)(0xc0 | c >> 6);
            b[1] = (uint8_t)(0x80 | (c & 0x3f));
            nb = 2;
        } else {
            b[0] = (uint8_t)(0xe0 | c >> 12);
            b[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3f));
            b[2] = (uint8_t)(0x80 | (c & 0x3f));
            nb = 3;
        }
        if (!c || o + nb >= out_size)
            return false;
        memcpy(out + o, b, nb);
        o += nb;
    }
    out[o] = 0;
    return true;
}

/* The parent's path from the VHDX parent locator: relative_path (Windows
 * separators), else the last component of absolute_win32_path, looked up
 * beside the image as vbd_open_backing does with relative names. */
static int read_parent_locator(struct vbd_node *n, uint64_t off, uint32_t len, struct vbd_error **err)
{
    const char *name = n->file->filename;
    if (len < 20 || len > 64 * KiB) {
        vbd_error_setf(err, EINVAL, "Image '%s': VHDX parent locator of %u bytes", name, len);
        return -EINVAL;
    }
    uint8_t *l = malloc(len);
    if (!l)
        return -ENOMEM;
    int rc = vbd_node_co_pread(n->file, off, l, len);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Could not read the VHDX parent locator of '%s': %s", name, strerror(-rc));
        free(l);
        return rc;
    }
    uint16_t count = get_le16p(l + 18);
    char rel[1024] = "", abs_path[1024] = "";
    rc = -EINVAL;
    if (20 + (uint64_t)count * 12 > len) {
        vbd_error_setf(err, EINVAL, "Image '%s': VHDX parent locator has %u entries, more than fit", name, count);
        goto out;
    }
    for (uint16_t i = 0; i < count; i++) {
        const uint8_t *e = l + 20 + i * 12;
        uint32_t ko = get_le32p(e), vo = get_le32p(e + 4);
        uint16_t kl = get_le16p(e + 8), vl = get_le16p(e + 10);
        if (ko > len || kl > len - ko || vo > len || vl > len - vo) {
            vbd_error_setf(err, EINVAL, "Image '%s': VHDX parent locator entry %u is outside the locator", name, i);
            goto out;
        }
        char key[64], val[1024];
        if (!utf16_to_utf8(l + ko, kl, key, sizeof(key)) || !utf16_to_utf8(l + vo, vl, val, sizeof(val)))
            continue;
        if (!strcmp(key, "relative_path"))
            memcpy(rel, val, sizeof(rel));
        else if (!strcmp(key, "absolute_win32_path"))
            memcpy(abs_path, val, sizeof(abs_path));
    }
    const char *path = rel;
    if (!*rel && *abs_path) {
        char *base = strrchr(abs_path, '\\');
        path = base ? base + 1 : abs_path;
    }
    if (!*path) {
        vbd_error_setf(err, EINVAL, "Image '%s': the VHDX parent locator names no parent path", name);
        goto out;
    }
    char *d = n->backing_file;
    const char *p = path;
    if (!strncmp(p, ".\\", 2))
        p += 2;
    for (; *p && d < n->backing_file + sizeof(n->backing_file) - 1; p++)
        *d++ = *p == '\\' ? '/' : *p;
    *d = 0;
    snprintf(n->backing_format, sizeof(n->backing_format), "vhdx");
    rc = 0;
out:
    free(l);
    return rc;
}

static int read_metadata(struct vbd_node *n, struct vhdx_state *s, struct vbd_error **err)
{
    const char *name = n->file->filename;
    if (s->meta_length < VHDX_META_TABLE_SIZE)
        return bad(err, EINVAL, name, "VHDX metadata region of %llu bytes is too small", s->meta_length);
    uint8_t *m = vbd_alloc_aligned(4096, VHDX_META_TABLE_SIZE);
    int rc = vbd_node_co_pread(n->file, s->meta_offset, m, VHDX_META_TABLE_SIZE);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Could not read the VHDX metadata of '%s': %s", name, strerror(-rc));
        goto out;
    }
    rc = -EINVAL;
    if (memcmp(m, "metadata", 8)) {
        vbd_error_setf(err, EINVAL, "Image '%s': no 'metadata' signature in the VHDX metadata region", name);
        goto out;
    }
    uint16_t count = get_le16p(m + 10);
    if ((uint64_t)count * 32 > VHDX_META_TABLE_SIZE - 32) {
        bad(err, EINVAL, name, "VHDX metadata table has %llu entries, more than fit", count);
        goto out;
    }
    static const uint8_t *const guids[] = {vhdx_file_param_guid, vhdx_vsize_guid, vhdx_page83_guid, vhdx_lsec_guid, vhdx_psec_guid, vhdx_parent_loc_guid};
    static const uint32_t min_len[] = {8, 8, 16, 4, 4, 0};
    static const char *const names[] = {"file parameters", "virtual disk size", "page 83 data", "logical sector size",
                                        "physical sector size", "parent locator"};
    uint64_t item_off[6];
    bool have[6] = {false};
    for (uint16_t i = 0; i < count; i++) {
        const uint8_t *e = m + 32 + i * 32;
        uint32_t off = get_le32p(e + 16), len = get_le32p(e + 20), flags = get_le32p(e + 24);
        int k;
        for (k = 0; k < 6; k++)
            if (!memcmp(e, guids[k], 16))
                break;
        if (k == 6) {
            if (flags & 4) {
                vbd_error_setf(err, ENOTSUP, "Image '%s': unsupported required VHDX metadata item", name);
                rc = -ENOTSUP;
                goto out;
            }
            continue;
        }
        if (have[k]) {
            vbd_error_setf(err, EINVAL, "Image '%s': duplicate VHDX metadata item '%s'", name, names[k]);
            goto out;
        }
        if (len < min_len[k] || off > s->meta_length || len > s->meta_length - off) {
            vbd_error_setf(err, EINVAL, "Image '%s': VHDX metadata item '%s' (offset %u, length %u) is outside the metadata region",
                           name, names[k], off, len);
            goto out;
        }
        have[k] = true;
        item_off[k] = s->meta_offset + off;
    }
    for (int k = 0; k < 5; k++)
        if (!have[k]) {
            vbd_error_setf(err, EINVAL, "Image '%s': required VHDX metadata item '%s' is missing", name, names[k]);
            goto out;
        }
    uint8_t v[16];
    if ((rc = vbd_node_co_pread(n->file, item_off[0], v, 8)) < 0)
        goto io;
    s->block_size = get_le32p(v);
    uint32_t pflags = get_le32p(v + 4);
    s->fixed = pflags & 1;
    if (pflags & 2) {
        if (!have[5]) {
            vbd_error_setf(err, EINVAL, "Image '%s': a differencing VHDX image without a parent locator", name);
            rc = -EINVAL;
            goto out;
        }
        if (s->rw) {
            vbd_error_setf(err, ENOTSUP, "Image '%s': differencing VHDX images can only be opened read-only", name);
            rc = -ENOTSUP;
            goto out;
        }
        s->diff = true;
        for (uint16_t i = 0; i < count; i++) /* the locator's length, checked above */
            if (!memcmp(m + 32 + i * 32, vhdx_parent_loc_guid, 16))
                rc = read_parent_locator(n, item_off[5], get_le32p(m + 32 + i * 32 + 20), err);
        if (rc < 0)
            goto out;
    }
    if ((rc = vbd_node_co_pread(n->file, item_off[1], v, 8)) < 0)
        goto io;
    s->vsize = get_le64p(v);
    if ((rc = vbd_node_co_pread(n->file, item_off[3], v, 4)) < 0)
        goto io;
    s->lsec = get_le32p(v);
    if ((rc = vbd_node_co_pread(n->file, item_off[4], v, 4)) < 0)
        goto io;
    s->psec = get_le32p(v);
    rc = -EINVAL;
    if (s->block_size < VHDX_BLOCK_MIN || s->block_size > VHDX_BLOCK_MAX || (s->block_size & (s->block_size - 1))) {
        bad(err, EINVAL, name, "invalid VHDX block size %llu", s->block_size);
        goto out;
    }
    if (s->lsec != 512 && s->lsec != 4096) {
        bad(err, EINVAL, name, "invalid VHDX logical sector size %llu", s->lsec);
        goto out;
    }
    if (s->psec != 512 && s->psec != 4096) {
        bad(err, EINVAL, name, "invalid VHDX physical sector size %llu", s->psec);
        goto out;
    }
    if (s->vsize > VHDX_MAX_SIZE || s->vsize % s->lsec) {
        bad(err, EINVAL, name, "invalid VHDX virtual disk size %llu", (unsigned long long)s->vsize);
        goto out;
    }
    rc = 0;
    goto out;
io:
    vbd_error_setf(err, -rc, "Could not read the VHDX metadata of '%s': %s", name, strerror(-rc));
out:
    free(m);
    return rc;
}

static int cmp_region(const void *a, const void *b)
{
    const struct region *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Blocks past the end of the file (QEMU's message), or overlapping the
 * metadata or each other. report: count them (check), else fail at the
 * first. */
static int check_bat(struct vbd_node *n, struct vhdx_state *s, const struct region *regs, int nregs, int64_t *errors,
                     struct vbd_error **err)
{
    uint64_t fsize = vbd_node_size(n->file);
    struct region *blocks = malloc(sizeof(*blocks) * (s->data_blocks ? s->data_blocks : 1));
    uint64_t nb = 0;
    int rc = 0;
    if (!blocks) {
        vbd_error_setf(err, ENOMEM, "Image '%s': out of memory", n->file->filename);
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < s->data_blocks; i++) {
        uint64_t e = s->bat[bat_index(s, i)];
        if ((e & BAT_STATE_MASK) != PB_FULLY_PRESENT && (e & BAT_STATE_MASK) != PB_PARTIALLY_PRESENT)
            continue;
        uint64_t off = e & BAT_OFFSET_MASK;
        /* the last block may end with the disk: QEMU once made such images */
        uint64_t len = s->vsize - i * s->block_size < s->block_size ? s->vsize - i * s->block_size : s->block_size;
        const char *why = NULL;
        char msg[256];
        if (off > fsize || len > fsize - off) {
            snprintf(msg, sizeof(msg), "VHDX BAT entry %llu start offset %llu points after end of file (%llu). Image has probably been truncated.",
                     (unsigned long long)i, (unsigned long long)off, (unsigned long long)fsize);
            why = msg;
        } else if (overlaps(regs, nregs, off, s->block_size)) {
            snprintf(msg, sizeof(msg), "VHDX BAT entry %llu offset %llu overlaps the image's metadata", (unsigned long long)i,
                     (unsigned long long)off);
            why = msg;
        } else {
            blocks[nb].start = off;
            blocks[nb++].end = off + len;
        }
        if (why) {
            if (!errors) {
                vbd_error_setf(err, EINVAL, "Image '%s': %s", n->file->filename, why);
                rc = -EINVAL;
                goto out;
            }
            vbd_error_report("%s", why);
            (*errors)++;
        }
    }
    for (uint64_t c = 0; s->diff && c < s->bat_entries / (s->chunk_ratio + 1); c++) {
        uint64_t e = s->bat[c * (s->chunk_ratio + 1) + s->chunk_ratio];
        if ((e & BAT_STATE_MASK) != PB_FULLY_PRESENT) /* SB_BLOCK_PRESENT has the same value */
            continue;
        uint64_t off = e & BAT_OFFSET_MASK;
        char msg[256] = "";
        if (off > fsize || MiB > fsize - off)
            snprintf(msg, sizeof(msg), "VHDX sector bitmap block %llu at offset %llu points after end of file (%llu)",
                     (unsigned long long)c, (unsigned long long)off, (unsigned long long)fsize);
        else if (overlaps(regs, nregs, off, MiB))
            snprintf(msg, sizeof(msg), "VHDX sector bitmap block %llu at offset %llu overlaps the image's metadata",
                     (unsigned long long)c, (unsigned long long)off);
        if (!*msg) {
            struct region *b = realloc(blocks, sizeof(*blocks) * (nb + 1));
            if (!b) {
                rc = -ENOMEM;
                goto out;
            }
            blocks = b;
            blocks[nb].start = off;
            blocks[nb++].end = off + MiB;
            continue;
        }
        if (!errors) {
            vbd_error_setf(err, EINVAL, "Image '%s': %s", n->file->filename, msg);
            rc = -EINVAL;
            goto out;
        }
        vbd_error_report("%s", msg);
        (*errors)++;
    }
    qsort(blocks, nb, sizeof(*blocks), cmp_region);
    for (uint64_t i = 1; i < nb; i++)
        if (blocks[i].start < blocks[i - 1].end) {
            char msg[256];
            snprintf(msg, sizeof(msg), "VHDX BAT: blocks at offsets %llu and %llu overlap",
                     (unsigned long long)blocks[i - 1].start, (unsigned long long)blocks[i].start);
            if (!errors) {
                vbd_error_setf(err, EINVAL, "Image '%s': %s", n->file->filename, msg);
                rc = -EINVAL;
                goto out;
            }
            vbd_error_report("%s", msg);
            (*errors)++;
        }
out:
    free(blocks);
    return rc;
}

static int vhdx_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return len >= 8 && !memcmp(buf, "vhdxfile", 8) ? 100 : 0;
}

static int vhdx_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct vhdx_state *s = n->opaque;
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file)
        return -EINVAL;
    const char *name = n->file->filename;
    s->rw = flags & VBD_OPEN_RDWR;
    uint8_t sig[8] = {0};
    uint64_t fsize = vbd_node_size(n->file);
    int rc = fsize ? vbd_node_co_pread(n->file, 0, sig, fsize < 8 ? fsize : 8) : 0;
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Could not read '%s': %s", name, strerror(-rc));
        return rc;
    }
    /* a file of another format (no signature, however short): QEMU's
     * driver fails without a word of its own, and its block layer says
     * "Could not open 'F': Invalid argument" (users and scripts meet
     * that line; the tools prefix it as qemu-img's do) */
    if (memcmp(sig, "vhdxfile", 8)) {
        vbd_error_setf(err, EINVAL, "Could not open '%s': %s", name, strerror(EINVAL));
        return -EINVAL;
    }
    if (fsize < VHDX_HEADER_SECTION)
        return bad(err, EINVAL, name, "not a VHDX image: %llu bytes, smaller than its 1 MiB header section", fsize);
    vhdx_guid_generate(s->session_guid);
    if ((rc = vhdx_read_headers(n, s, err)) < 0)
        return rc;
    if ((rc = vhdx_log_replay(n, s, err)) < 0)
        return rc;
    fsize = vbd_node_size(n->file);
    struct region regs[4] = {{0, VHDX_HEADER_SECTION}};
    int nregs = 1;
    if (s->log_length) {
        if (overlaps(regs, nregs, s->log_offset, s->log_length))
            return bad(err, EINVAL, name, "the VHDX log overlaps the header section (offset %llu)", s->log_offset);
        regs[nregs].start = s->log_offset;
        regs[nregs++].end = s->log_offset + s->log_length;
    }
    if ((rc = read_region_table(n, s, regs, &nregs, err)) < 0)
        return rc;
    if ((rc = read_metadata(n, s, err)) < 0)
        return rc;
    s->chunk_ratio = VHDX_MAX_SECTORS_PER_BLOCK * s->lsec / s->block_size;
    s->data_blocks = (s->vsize + s->block_size - 1) / s->block_size;
    if (s->diff) /* every chunk ends with its sector bitmap entry */
        s->bat_entries = (s->data_blocks + s->chunk_ratio - 1) / s->chunk_ratio * (s->chunk_ratio + 1);
    else
        s->bat_entries = s->data_blocks ? s->data_blocks + (s->data_blocks - 1) / s->chunk_ratio : 0;
    if (s->bat_entries > s->bat_length / 8)
        return bad(err, EINVAL, name, "the VHDX BAT region is too small for %llu entries", s->bat_entries);
    s->bat = malloc(s->bat_length); /* a multiple of 1 MiB, so whole log sectors */
    if (!s->bat) {
        vbd_error_setf(err, ENOMEM, "Image '%s': cannot allocate the VHDX BAT", name);
        return -ENOMEM;
    }
    rc = vbd_node_co_pread(n->file, s->bat_offset, s->bat, s->bat_length);
    if (rc < 0) {
        vhdx_free(s);
        vbd_error_setf(err, -rc, "Could not read the VHDX BAT of '%s': %s", name, strerror(-rc));
        return rc;
    }
    for (uint64_t i = 0; i < s->bat_length / 8; i++)
        s->bat[i] = le64toh(s->bat[i]);
    if (!(flags & VBD_OPEN_CHECK) && (rc = check_bat(n, s, regs, nregs, NULL, err)) < 0) {
        vhdx_free(s);
        return rc;
    }
    s->alloc_end = fsize;
    for (int i = 0; i < nregs; i++)
        if (regs[i].end > s->alloc_end)
            s->alloc_end = regs[i].end;
    for (uint64_t i = 0; i < s->data_blocks; i++) {
        uint64_t e = s->bat[bat_index(s, i)];
        if ((e & BAT_STATE_MASK) == PB_FULLY_PRESENT && (e & BAT_OFFSET_MASK) + s->block_size > s->alloc_end)
            s->alloc_end = (e & BAT_OFFSET_MASK) + s->block_size;
    }
    if (s->rw) {
        if (s->log_offset > fsize || s->log_length > fsize - s->log_offset) {
            vhdx_free(s);
            return bad(err, EINVAL, name, "the VHDX log (offset %llu) is past the end of the file", s->log_offset);
        }
        /* The headers get this session's file_write_guid at the first
         * write (first_write), before anything else is written, as QEMU
         * does since 2.x: an open that writes nothing (check, info, a
         * command line refused after the open) leaves the file as it was. */
    }
    n->size = s->vsize;
    n->bl.request_alignment = 1;
    n->bl.min_mem_alignment = n->file->bl.min_mem_alignment;
    n->bl.opt_transfer = s->block_size;
    if (s->diff && (rc = vbd_open_backing(n, opts, flags, err)) < 0) {
        vhdx_free(s);
        return rc;
    }
    return 0;
}

static void vhdx_close(struct vbd_node *n)
{
    vhdx_free(n->opaque);
}

/* ---------- I/O ---------- */

static uint64_t entry_of(const struct vhdx_state *s, uint64_t off, uint64_t *in_block, uint64_t *avail)
{
    uint64_t blk = off / s->block_size;
    *in_block = off % s->block_size;
    *avail = s->block_size - *in_block;
    return s->bat[bat_index(s, blk)];
}

/* [off, off+len) of a PARTIALLY_PRESENT block at host offset block_off:
 * runs of sectors whose bitmap bit is set come from the file, the others
 * from the parent. Bit k (LSB first) of the chunk's bitmap is its
 * logical sector k. */
static int read_partial(struct vbd_node *n, uint64_t off, uint64_t in, uint64_t len, uint64_t block_off,
                        struct vbd_qiov *q, size_t qoff)
{
    struct vhdx_state *s = n->opaque;
    uint64_t blk = off / s->block_size, chunk = blk / s->chunk_ratio;
    uint64_t sbe = s->bat[chunk * (s->chunk_ratio + 1) + s->chunk_ratio];
    if ((sbe & BAT_STATE_MASK) != PB_FULLY_PRESENT)
        return -EIO; /* a partial block without its sector bitmap */
    uint64_t start = (blk % s->chunk_ratio) * s->block_size + in; /* byte in the chunk */
    uint64_t first = start / s->lsec, last = (start + len - 1) / s->lsec;
    uint64_t nbytes = last / 8 - first / 8 + 1;
    uint8_t *bm = malloc(nbytes);
    if (!bm)
        return -ENOMEM;
    int rc = vbd_node_co_pread(n->file, (sbe & BAT_OFFSET_MASK) + first / 8, bm, nbytes);
    for (uint64_t done = 0; rc == 0 && done < len;) {
        uint64_t sec = (start + done) / s->lsec;
        bool bit = bm[sec / 8 - first / 8] >> (sec % 8) & 1;
        uint64_t run = (sec + 1) * s->lsec - (start + done);
        while (done + run < len) {
            uint64_t nx = (start + done + run) / s->lsec;
            if ((bool)(bm[nx / 8 - first / 8] >> (nx % 8) & 1) != bit)
                break;
            run += s->lsec;
        }
        if (done + run > len)
            run = len - done;
        rc = bit ? vbd_node_co_preadv(n->file, block_off + in + done, run, q, qoff + done, 0)
                 : vbd_node_co_read_backing(n, off + done, run, q, qoff + done, 0);
        done += run;
    }
    free(bm);
    return rc;
}

/* In the partial block of off: whether its sector is this file's, and
 * *len cut to the run of sectors alike. */
static int partial_run(struct vbd_node *n, uint64_t off, uint64_t in, uint64_t *len, bool *mine)
{
    struct vhdx_state *s = n->opaque;
    uint64_t blk = off / s->block_size, chunk = blk / s->chunk_ratio;
    uint64_t sbe = s->bat[chunk * (s->chunk_ratio + 1) + s->chunk_ratio];
    if ((sbe & BAT_STATE_MASK) != PB_FULLY_PRESENT)
        return -EIO;
    uint64_t start = (blk % s->chunk_ratio) * s->block_size + in;
    uint64_t first = start / s->lsec, last = (start + *len - 1) / s->lsec;
    uint64_t nbytes = last / 8 - first / 8 + 1;
    uint8_t *bm = malloc(nbytes);
    if (!bm)
        return -ENOMEM;
    int rc = vbd_node_co_pread(n->file, (sbe & BAT_OFFSET_MASK) + first / 8, bm, nbytes);
    if (rc == 0) {
        *mine = bm[0] >> (first % 8) & 1;
        uint64_t sec = first + 1;
        while (sec <= last && (bool)(bm[sec / 8 - first / 8] >> (sec % 8) & 1) == *mine)
            sec++;
        if (sec <= last)
            *len = sec * s->lsec - start;
    }
    free(bm);
    return rc;
}

static int vhdx_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    struct vhdx_state *s = n->opaque;
    (void)flags;
    while (bytes) {
        uint64_t in, avail;
        uint64_t e = entry_of(s, off, &in, &avail);
        uint64_t len = avail < bytes ? avail : bytes;
        int rc = 0;
        switch (e & BAT_STATE_MASK) {
        case PB_FULLY_PRESENT:
            rc = vbd_node_co_preadv(n->file, (e & BAT_OFFSET_MASK) + in, len, q, qoff, 0);
            break;
        case PB_NOT_PRESENT:
        case PB_UNDEFINED:
        case PB_UNMAPPED:
        case PB_UNMAPPED_V095:
            if (s->diff) {
                rc = vbd_node_co_read_backing(n, off, len, q, qoff, 0);
                break;
            }
            /* fall through */
        case PB_ZERO:
            vbd_iov_memset(q->iov, q->niov, qoff, 0, len);
            break;
        case PB_PARTIALLY_PRESENT:
            if (s->diff) {
                rc = read_partial(n, off, in, len, e & BAT_OFFSET_MASK, q, qoff);
                break;
            }
            return -EIO;
        default: /* 4 is no state */
            return -EIO;
        }
        if (rc < 0)
            return rc;
        off += len;
        qoff += len;
        bytes -= len;
    }
    return 0;
}

/* Allocate the block of off at the end of the file and write [off,
 * off+len) of the request into it, unless another request allocated it
 * meanwhile. The rest of a new block reads as zeroes (the file grows with
 * a hole), whatever the block's state was (ZERO, NOT_PRESENT, UNMAPPED). */
static int alloc_write(struct vbd_node *n, uint64_t off, uint64_t len, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    struct vhdx_state *s = n->opaque;
    vbd_co_mutex_lock(&s->lock);
    uint64_t in, avail;
    uint64_t e = entry_of(s, off, &in, &avail);
    int rc;
    if ((e & BAT_STATE_MASK) == PB_FULLY_PRESENT) {
        vbd_co_mutex_unlock(&s->lock);
        return vbd_node_co_pwritev(n->file, (e & BAT_OFFSET_MASK) + in, len, q, qoff, flags);
    }
    if (!vhdx_log_has_room(s)) {
        /* the BAT entry goes through the log: without one (length 0), its
         * offset names no space of its own, perhaps a block or the
         * metadata. QEMU 7.2 refuses the write too (EINVAL). */
        vbd_node_report_corruption(n, "vhdx: no log to update the BAT through", -1, -1, false);
        rc = -EINVAL;
        goto out;
    }
    uint64_t idx = bat_index(s, off / s->block_size);
    uint64_t block = (s->alloc_end + MiB - 1) & ~(MiB - 1);
    uint64_t end = block + s->block_size;
    if (end > (1ull << 63)) {
        rc = -EFBIG;
        goto out;
    }
    if (vbd_node_size(n->file) < end) {
        rc = vbd_node_co_truncate(n->file, end, true, VBD_PREALLOC_OFF, NULL);
        if (rc < 0)
            goto out;
    }
    s->alloc_end = end; /* even on failure below: the space may hold half a block */
    rc = vbd_node_co_pwritev(n->file, block + in, len, q, qoff, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(n->file); /* the data before the BAT entry that makes it visible */
    if (rc < 0)
        goto out;
    rc = vhdx_log_write_bat_entry(n, s, idx, block | PB_FULLY_PRESENT);
out:
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

/* The spec asks for a new data_write_guid before the first write a guest
 * can see. */
static int first_write(struct vbd_node *n, struct vhdx_state *s)
{
    int rc = 0;
    vbd_co_mutex_lock(&s->lock);
    if (!s->data_guid_done) {
        rc = vhdx_update_headers(n, s, true, NULL);
        if (rc == 0)
            s->data_guid_done = true;
    }
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

static int vhdx_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    struct vhdx_state *s = n->opaque;
    int rc;
    if (!s->data_guid_done && (rc = first_write(n, s)) < 0)
        return rc;
    while (bytes) {
        uint64_t in, avail;
        uint64_t e = entry_of(s, off, &in, &avail);
        uint64_t len = avail < bytes ? avail : bytes;
        switch (e & BAT_STATE_MASK) {
        case PB_FULLY_PRESENT:
            rc = vbd_node_co_pwritev(n->file, (e & BAT_OFFSET_MASK) + in, len, q, qoff, flags);
            break;
        case PB_NOT_PRESENT:
        case PB_UNDEFINED:
        case PB_ZERO:
        case PB_UNMAPPED:
        case PB_UNMAPPED_V095:
            rc = alloc_write(n, off, len, q, qoff, flags);
            break;
        default:
            return -EIO;
        }
        if (rc < 0)
            return rc;
        off += len;
        qoff += len;
        bytes -= len;
    }
    return 0;
}

static int vhdx_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                             uint64_t *map, struct vbd_node **file)
{
    struct vhdx_state *s = n->opaque;
    *file = n->file;
    if (!s->diff && !(n->open_flags & VBD_OPEN_EXACT_STATUS)) { /* qemu's vhdx: all data, no offset */
        (void)want_zero;
        *pnum = bytes;
        return VBD_BS_DATA | VBD_BS_ALLOCATED;
    }
    uint64_t in, avail;
    uint64_t e = entry_of(s, off, &in, &avail);
    unsigned st = e & BAT_STATE_MASK;
    if (st == 4 || (st == PB_PARTIALLY_PRESENT && !s->diff))
        return -EIO;
    if (s->diff && st != PB_FULLY_PRESENT) {
        /* one block at a time: absent blocks are the parent's; in a partial
         * one, the run of sectors alike in the bitmap */
        *pnum = avail < bytes ? avail : bytes;
        if (st == PB_ZERO)
            return VBD_BS_ZERO | VBD_BS_ALLOCATED;
        if (st != PB_PARTIALLY_PRESENT)
            return 0;
        bool mine = false;
        int rc = partial_run(n, off, in, pnum, &mine);
        if (rc < 0)
            return rc;
        if (!mine)
            return 0;
        *map = (e & BAT_OFFSET_MASK) + in;
        return VBD_BS_DATA | VBD_BS_OFFSET_VALID | VBD_BS_ALLOCATED;
    }
    bool data = st == PB_FULLY_PRESENT;
    uint64_t host = (e & BAT_OFFSET_MASK) + in;
    uint64_t done = 0;
    /* merge following blocks alike, contiguous in the file when data */
    for (;;) {
        uint64_t len = avail < bytes - done ? avail : bytes - done;
        done += len;
        if (done == bytes)
            break;
        uint64_t f = entry_of(s, off + done, &in, &avail);
        unsigned fst = f & BAT_STATE_MASK;
        if ((fst == PB_FULLY_PRESENT) != data || fst == 4 || fst == PB_PARTIALLY_PRESENT ||
            (data && (f & BAT_OFFSET_MASK) != host + done))
            break;
    }
    *pnum = done;
    if (!data)
        return VBD_BS_ZERO | (st == PB_ZERO ? VBD_BS_ALLOCATED : 0);
    *map = host;
    int rc = VBD_BS_DATA | VBD_BS_OFFSET_VALID | VBD_BS_ALLOCATED;
    if (want_zero) {
        /* qemu-img writes a block's zero runs as holes of the file: they read
         * as zeroes, and convert then skips them instead of reading them */
        uint64_t fp = 0;
        int fst = vbd_node_co_block_status(n->file, true, host, done, &fp, NULL, NULL);
        if (fst >= 0 && fp) {
            *pnum = fp;
            rc |= fst & VBD_BS_ZERO;
        } else if (fst >= 0 && (fst & VBD_BS_EOF)) {
            rc |= VBD_BS_ZERO; /* past the file's end */
        }
    }
    return rc;
}

static int vhdx_get_info(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err)
{
    struct vhdx_state *s = n->opaque;
    (void)err;
    info->virtual_size = n->size;
    info->cluster_size = s->block_size;
    return 0;
}

/* QEMU's check: a log replayed at open counts as a fixed corruption;
 * blocks past the end of the file or overlapping are corruptions. */
static int vhdx_co_check(struct vbd_node *n, struct vbd_check_result *res, unsigned fix, struct vbd_error **err)
{
    struct vhdx_state *s = n->opaque;
    (void)fix;
    if (s->log_replayed)
        res->corruptions_fixed++;
    struct region regs[4] = {{0, VHDX_HEADER_SECTION},
                             {s->bat_offset, s->bat_offset + s->bat_length},
                             {s->meta_offset, s->meta_offset + s->meta_length},
                             {s->log_offset, s->log_offset + s->log_length}};
    int nregs = s->log_length ? 4 : 3;
    return check_bat(n, s, regs, nregs, &res->corruptions, err);
}

static const struct vbd_driver vhdx_driver = {
    .name = "vhdx",
    .kind = VBD_DRV_FORMAT,
    .state_size = sizeof(struct vhdx_state),
    .probe = vhdx_probe,
    .open = vhdx_open,
    .close = vhdx_close,
    .co_preadv = vhdx_preadv,
    .co_pwritev = vhdx_pwritev,
    .co_block_status = vhdx_block_status,
    .get_info = vhdx_get_info,
    .create_opts = vhdx_create_opts,
    .co_create = vhdx_co_create,
    .create_onto_node = true,
    .measure = vhdx_measure,
    .co_check = vhdx_co_check,
};
VBD_DRIVER_REGISTER(vhdx, vhdx_driver);
