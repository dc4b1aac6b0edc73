/* SPDX-License-Identifier: MIT */
/* vhdx: image creation with qemu-img 7.2's options and layout, and measure
 * (which qemu-img 7.2 cannot do for vhdx). */
#include "vhdx.h"

#include "vbd/options.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <sys/random.h>

/* ---------- create ---------- */

const struct vbd_opt_desc vhdx_create_opts[] = {
    {"size", VBD_OPT_SIZE, "Virtual disk size; max of 64TB.", NULL},
    {"log_size", VBD_OPT_SIZE, "Log size; min 1MB.", "1048576"},
    {"block_size", VBD_OPT_SIZE, "Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.", "0"},
    {"subformat", VBD_OPT_STRING, "VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'.", "dynamic"},
    {"block_state_zero", VBD_OPT_BOOL,
     "Force use of payload blocks of type 'ZERO'. Non-standard, but default.  Do not set to 'off' when using 'vbd-img convert' with subformat=dynamic.",
     "on"},
    {NULL, 0, NULL, NULL},
};

static const char *const vhdx_subformat_names[] = {"dynamic", "fixed", NULL};

struct vhdx_params {
    uint64_t size;
    uint64_t log_size, block_size;
    bool fixed, zero_blocks;
    /* layout */
    uint64_t bat_offset, bat_length, meta_offset, data_offset, bat_entries, data_blocks;
};

static int vhdx_parse_create(struct json_object *opts, const struct vbd_node *in, struct vhdx_params *p,
                             struct vbd_error **err,
                             bool *opts_taken)
{
    int sub = 0;
    p->log_size = MiB;
    p->block_size = 0;
    p->zero_blocks = true;
    /* the subformat is QEMU's vhdx_co_create's to check, with the sizes */
    struct json_object *sf = vbd_opt_take_obj(opts, "subformat");
    if (vbd_opt_take_size(opts, "size", &p->size, err) < 0 || vbd_opt_take_size(opts, "log_size", &p->log_size, err) < 0 ||
        vbd_opt_take_size(opts, "block_size", &p->block_size, err) < 0 ||
        vbd_opt_take_bool(opts, "block_state_zero", &p->zero_blocks, err) < 0 ||
        vbd_opts_check_empty(opts, "Block format 'vhdx'", err) < 0) {
        json_object_put(sf);
        return -EINVAL;
    }
    /* what follows is QEMU's vhdx_co_create's to check: qemu-img made
     * the file already */
    if (opts_taken)
        *opts_taken = true;
    if (sf) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "subformat", sf);
        int rc = vbd_opt_take_enum(o, "subformat", vhdx_subformat_names, &sub, err);
        json_object_put(o);
        if (rc < 0)
            return -EINVAL;
    }
    p->fixed = sub == 1;
    if (in)
        p->size = in->size;
    p->size = (p->size + 511) & ~511ull;
    if (p->size > VHDX_MAX_SIZE) {
        vbd_error_setf(err, EINVAL, "Image size too large; max of 64TB");
        return -EINVAL;
    }
    /* qemu-img rounds the log up to 1 MiB first, then refuses an empty one */
    p->log_size = (p->log_size + MiB - 1) & ~(MiB - 1);
    if (p->log_size < MiB || p->log_size > UINT32_MAX) {
        vbd_error_setf(err, EINVAL, "Log size must be a multiple of 1 MB");
        return -EINVAL;
    }
    if (p->block_size == 0) {
        if (p->size > 32 * TiB)
            p->block_size = 64 * MiB;
        else if (p->size > 100 * 1024 * MiB)
            p->block_size = 32 * MiB;
        else if (p->size > 1024 * MiB)
            p->block_size = 16 * MiB;
        else
            p->block_size = 8 * MiB;
    }
    p->block_size = (p->block_size + MiB - 1) & ~(MiB - 1);
    if (p->block_size > VHDX_BLOCK_MAX)
        p->block_size = VHDX_BLOCK_MAX;
    if (p->block_size & (p->block_size - 1)) {
        vbd_error_setf(err, EINVAL, "Block size must be a power of two");
        return -EINVAL;
    }
    uint64_t chunk_ratio = VHDX_MAX_SECTORS_PER_BLOCK * 512 / p->block_size;
    p->data_blocks = (p->size + p->block_size - 1) / p->block_size;
    /* QEMU counts the entries in 32 bits (vhdx_calc_bat_entries): for an
     * empty image data_blocks - 1 wraps, and the BAT region it makes, and
     * wants at open, holds 0xffffffff / chunk_ratio entries (64 MiB with
     * 8 MiB blocks). The same region here: with a smaller one (vbd's 1
     * MiB) qemu-img could not open vbd's empty vhdx. */
    p->bat_entries = p->data_blocks ? p->data_blocks + (p->data_blocks - 1) / chunk_ratio : UINT32_MAX / chunk_ratio;
    p->bat_offset = VHDX_HEADER_SECTION + p->log_size;
    p->bat_length = (p->bat_entries * 8 + MiB - 1) & ~(MiB - 1);
    p->meta_offset = p->bat_offset + p->bat_length;
    p->data_offset = p->bat_offset + p->bat_length + 5 * MiB; /* as QEMU: metadata, then room to grow */
    return 0;
}

/* The image at filename (made here), or on target (blockdev-create). */
int vhdx_co_create(const char *filename, struct vbd_node *target, struct json_object *opts,
                   struct json_object *file_hints, struct vbd_error **err)
{
    struct vhdx_params p;
    /* blockdev-create takes sizes as they are (QEMU rounds them up to
     * 1 MiB only for qemu-img create) */
    struct json_object *v;
    if (target && (v = vbd_opt_get(opts, "log_size")) && json_object_get_int64(v) % (int64_t)MiB) {
        vbd_error_setf(err, EINVAL, "Log size must be a multiple of 1 MB");
        return -EINVAL;
    }
    if (target && (v = vbd_opt_get(opts, "block_size")) && json_object_get_int64(v) % (int64_t)MiB) {
        vbd_error_setf(err, EINVAL, "Block size must be a multiple of 1 MB");
        return -EINVAL;
    }
    bool opts_taken = false;
    int rc = vhdx_parse_create(opts, NULL, &p, err, &opts_taken);
    if (rc < 0) {
        /* a size, log or block size refused: the new file is left empty,
         * as qemu-img leaves it (blockdev-create's target is left alone) */
        if (opts_taken && !target) {
            struct vbd_node *f = vbd_create_protocol_node(filename, NULL, 0, file_hints, NULL);
            if (f)
                vbd_node_unref(f);
        }
        return rc;
    }
    struct vbd_node *f = vbd_create_protocol_node(filename, target, 0, file_hints, err);
    if (!f)
        return -EIO;
    uint64_t file_size = p.data_offset + (p.fixed ? p.size : 0);
    uint8_t *hs = calloc(1, VHDX_HEADER_SECTION); /* file id, headers, region tables */
    uint8_t *meta = calloc(1, VHDX_META_TABLE_SIZE + 64);
    /* the entries the blocks use (QEMU writes the region whole: the rest
     * is written as zeroes below, without a buffer as large as an empty
     * image's 64 MiB region) */
    uint64_t chunk_ratio = VHDX_MAX_SECTORS_PER_BLOCK * 512 / p.block_size;
    uint64_t bat_used = p.data_blocks ? (p.data_blocks + (p.data_blocks - 1) / chunk_ratio) * 8 : 0;
    bat_used = (bat_used + 4095) & ~4095ull;
    uint8_t *bat = calloc(1, bat_used ? bat_used : 1);
    if (!hs || !meta || !bat) {
        rc = -ENOMEM;
        goto out;
    }
    rc = vbd_node_co_truncate(f, file_size, true, VBD_PREALLOC_OFF, err);
    if (rc < 0)
        goto out;

    memcpy(hs, "vhdxfile", 8);
    static const char creator[] = "vbd";
    for (size_t i = 0; i < sizeof(creator) - 1; i++)
        put_le16p(hs + 8 + 2 * i, (uint16_t)creator[i]);
    uint8_t *h = hs + VHDX_HEADER1_OFF;
    uint32_t seq;
    if (getrandom(&seq, sizeof(seq), 0) != sizeof(seq))
        seq = (uint32_t)rand();
    memcpy(h, "head", 4);
    put_le64p(h + H_SEQ, seq);
    vhdx_guid_generate(h + H_FILE_GUID);
    vhdx_guid_generate(h + H_DATA_GUID);
    put_le16p(h + H_LOG_VERSION, 0);
    put_le16p(h + H_VERSION, 1);
    put_le32p(h + H_LOG_LENGTH, (uint32_t)p.log_size);
    put_le64p(h + H_LOG_OFFSET, VHDX_HEADER_SECTION);
    vhdx_set_crc(h, VHDX_HEADER_SIZE, 4);
    uint8_t *h2 = hs + VHDX_HEADER2_OFF;
    memcpy(h2, h, VHDX_HEADER_SIZE);
    put_le64p(h2 + H_SEQ, (uint64_t)seq + 1);
    vhdx_set_crc(h2, VHDX_HEADER_SIZE, 4);
    uint8_t *rt = hs + VHDX_RT1_OFF;
    memcpy(rt, "regi", 4);
    put_le32p(rt + 8, 2);
    memcpy(rt + 16, vhdx_bat_guid, 16);
    put_le64p(rt + 32, p.bat_offset);
    put_le32p(rt + 40, (uint32_t)p.bat_length);
    memcpy(rt + 48, vhdx_metadata_guid, 16);
    put_le64p(rt + 64, p.meta_offset);
    put_le32p(rt + 72, (uint32_t)MiB);
    vhdx_set_crc(rt, VHDX_RT_SIZE, 4);
    memcpy(hs + VHDX_RT2_OFF, rt, VHDX_RT_SIZE);

    memcpy(meta, "metadata", 8);
    put_le16p(meta + 10, 5);
    static const uint8_t *const guids[5] = {vhdx_file_param_guid, vhdx_vsize_guid, vhdx_page83_guid, vhdx_lsec_guid, vhdx_psec_guid};
    static const uint32_t lens[5] = {8, 8, 16, 4, 4};
    static const uint32_t flags[5] = {4, 6, 6, 6, 6}; /* required (and virtual disk) */
    uint32_t item = VHDX_META_TABLE_SIZE;
    for (int i = 0; i < 5; i++) {
        uint8_t *e = meta + 32 + 32 * i;
        memcpy(e, guids[i], 16);
        put_le32p(e + 16, item);
        put_le32p(e + 20, lens[i]);
        put_le32p(e + 24, flags[i]);
        item += lens[i];
    }
    uint8_t *items = meta + VHDX_META_TABLE_SIZE;
    put_le32p(items, (uint32_t)p.block_size);
    put_le32p(items + 4, p.fixed ? 1 : 0);
    put_le64p(items + 8, p.size);
    vhdx_guid_generate(items + 16);
    put_le32p(items + 32, 512);
    put_le32p(items + 36, 512);

    /* QEMU's BAT: ZERO blocks with block_state_zero (even when fixed),
     * else a fixed image's blocks laid out after the metadata, else
     * NOT_PRESENT */
    for (uint64_t b = 0; b < p.data_blocks; b++) {
        uint64_t e = PB_NOT_PRESENT;
        if (p.zero_blocks)
            e = PB_ZERO;
        else if (p.fixed)
            e = ((p.data_offset + b * p.block_size + MiB - 1) & ~(MiB - 1)) | PB_FULLY_PRESENT;
        put_le64p(bat + (b + b / chunk_ratio) * 8, e);
    }
    /* the file identifier, the two headers and the two region tables, each
     * alone, as qemu-img writes them: the rest of the first MiB (and the
     * log) stays a hole of the new file, so the image takes the space
     * qemu-img's takes (`du`: 880 KiB less than the whole section) */
    static const struct {
        uint64_t off, len;
    } parts[] = {{0, VHDX_HEADER_SIZE},
                 {VHDX_HEADER1_OFF, VHDX_HEADER_SIZE},
                 {VHDX_HEADER2_OFF, VHDX_HEADER_SIZE},
                 {VHDX_RT1_OFF, VHDX_RT_SIZE},
                 {VHDX_RT2_OFF, VHDX_RT_SIZE}};
    for (size_t i = 0; rc == 0 && i < sizeof(parts) / sizeof(parts[0]); i++)
        rc = vbd_node_co_pwrite(f, parts[i].off, hs + parts[i].off, parts[i].len, 0);
    if (rc == 0 && bat_used)
        rc = vbd_node_co_pwrite(f, p.bat_offset, bat, bat_used, 0);
    if (rc == 0 && bat_used < p.bat_length)
        rc = vbd_node_co_pwrite_zeroes(f, p.bat_offset + bat_used, p.bat_length - bat_used, 0);
    if (rc == 0)
        rc = vbd_node_co_pwrite(f, p.meta_offset, meta, VHDX_META_TABLE_SIZE + 64, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(f);
out:
    if (rc < 0 && !(err && *err))
        vbd_error_setf(err, -rc, "Could not create the VHDX image '%s': %s", filename, strerror(-rc));
    free(hs);
    free(meta);
    free(bat);
    vbd_node_unref(f);
    return rc < 0 ? rc : 0;
}

/* qemu-img 7.2 cannot measure vhdx; this gives what vbd-img convert
 * writes: the metadata QEMU's layout reserves, plus the blocks holding
 * data (all of them when fixed). */
int vhdx_measure(struct json_object *opts, struct vbd_node *in, uint64_t *required, uint64_t *fully_allocated,
                 struct vbd_error **err)
{
    struct vhdx_params p;
    int rc = vhdx_parse_create(opts, in, &p, err, NULL);
    if (rc < 0)
        return rc;
    uint64_t blocks_bytes = p.data_blocks * p.block_size;
    *fully_allocated = p.data_offset + blocks_bytes;
    if (p.fixed) {
        *required = *fully_allocated;
        return 0;
    }
    *required = p.data_offset;
    if (!in)
        return 0;
    /* a block is written when any of it holds data */
    for (uint64_t b = 0; b < p.data_blocks; b++) {
        uint64_t off = b * p.block_size, end = off + p.block_size < in->size ? off + p.block_size : in->size;
        while (off < end) {
            uint64_t pnum = 0, map;
            struct vbd_node *file;
            int depth;
            int st = vbd_node_co_block_status_above(in, NULL, true, off, end - off, &pnum, &map, &file, &depth);
            if (st < 0) {
                vbd_error_setf(err, -st, "Could not measure: block status failed: %s", strerror(-st));
                return st;
            }
            if (!(st & VBD_BS_ZERO) && (st & (VBD_BS_DATA | VBD_BS_ALLOCATED))) {
                *required += p.block_size;
                break;
            }
            off += pnum;
        }
    }
    return 0;
}
