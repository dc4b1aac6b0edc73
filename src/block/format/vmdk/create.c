/* SPDX-License-Identifier: MIT */
/* vmdk image creation as qemu-img 7.2 lays it out (every subformat, its
 * -o options), and measure. */
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/iov.h"
#include "vbd/loop.h"
#include "vbd/options.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <zlib.h>
#include "vmdk.h"

/* ---------- create ---------- */

const struct vbd_opt_desc vmdk_create_opts[] = {
    {"size", VBD_OPT_SIZE, "Virtual disk size", NULL},
    {"adapter_type", VBD_OPT_STRING, "Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX", NULL},
    {"backing_file", VBD_OPT_STRING, "File name of a base image", NULL},
    {"backing_fmt", VBD_OPT_STRING, "Must be 'vmdk' if present", NULL},
    {"compat6", VBD_OPT_BOOL, "VMDK version 6 image", "off"},
    {"hwversion", VBD_OPT_STRING, "VMDK hardware version", "undefined"},
    {"toolsversion", VBD_OPT_STRING, "VMware guest tools version", NULL},
    {"subformat", VBD_OPT_STRING,
     "VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | "
     "twoGbMaxExtentFlat | streamOptimized} ",
     NULL},
    {"zeroed_grain", VBD_OPT_BOOL, "Enable efficient zero writes using the zeroed-grain GTE feature", NULL},
    {NULL, 0, NULL, NULL},
};

/* The sparse extent layout qemu-img makes: header, descriptor room (20
 * sectors), redundant GD and GTs, GD and GTs, grains from a 64 KiB
 * boundary. */
struct sparse_layout {
    uint64_t cap, gd_sectors, gt_count, rgd, gd, grain_off;
};

static void sparse_layout(uint64_t bytes, struct sparse_layout *l)
{
    l->cap = bytes / SECTOR;
    uint64_t grains = div_up(l->cap, 128);
    l->gt_count = div_up(grains, 512);
    l->gd_sectors = div_up(l->gt_count * 4, SECTOR);
    l->rgd = 21;
    l->gd = l->rgd + l->gd_sectors + 4 * l->gt_count;
    l->grain_off = div_up(l->gd + l->gd_sectors + 4 * l->gt_count, 128) * 128;
}

static int init_sparse(struct vbd_node *f, uint64_t bytes, bool compress, bool zeroed_grain)
{
    struct sparse_layout l;
    sparse_layout(bytes, &l);
    uint8_t h[SECTOR] = {0};
    put_le32p(h, VMDK4_MAGIC);
    put_le32p(h + 4, compress ? 3 : zeroed_grain ? 2 : 1);
    put_le32p(h + 8, F_RGD | F_NL_DETECT | (compress ? F_COMPRESS | F_MARKER : 0) | (zeroed_grain ? F_ZERO_GRAIN : 0));
    put_le64p(h + 12, l.cap);
    put_le64p(h + 20, 128);
    put_le64p(h + 28, 1);
    put_le64p(h + 36, 20);
    put_le32p(h + 44, 512);
    put_le64p(h + 48, l.rgd);
    put_le64p(h + 56, l.gd);
    put_le64p(h + 64, l.grain_off);
    h[73] = 0xa;
    h[74] = 0x20;
    h[75] = 0xd;
    h[76] = 0xa;
    h[77] = compress ? DEFLATE : 0;
    int rc = vbd_node_co_pwrite(f, 0, h, SECTOR, 0);
    if (rc == 0)
        rc = vbd_node_co_truncate(f, l.grain_off * SECTOR, false, VBD_PREALLOC_OFF, NULL);
    uint64_t gdb = l.gd_sectors * SECTOR;
    uint8_t *gd = calloc(1, gdb ? gdb : 1);
    for (uint64_t i = 0; rc == 0 && i < l.gt_count; i++)
        put_le32p(gd + 4 * i, (uint32_t)(l.rgd + l.gd_sectors + 4 * i));
    if (rc == 0 && gdb)
        rc = vbd_node_co_pwrite(f, l.rgd * SECTOR, gd, gdb, 0);
    for (uint64_t i = 0; rc == 0 && i < l.gt_count; i++)
        put_le32p(gd + 4 * i, (uint32_t)(l.gd + l.gd_sectors + 4 * i));
    if (rc == 0 && gdb)
        rc = vbd_node_co_pwrite(f, l.gd * SECTOR, gd, gdb, 0);
    free(gd);
    return rc;
}

static struct vbd_node *create_file(const char *path, struct json_object *file_hints, struct vbd_error **err)
{
    if (vbd_create_protocol(path, 0, VBD_PREALLOC_OFF, file_hints, err) < 0)
        return NULL;
    return vbd_open(path, json_object_new_object(), VBD_OPEN_RDWR | VBD_OPEN_PROTOCOL, err);
}

static const char *const subformats[] = {"monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
                                         "twoGbMaxExtentFlat", "streamOptimized", NULL};
static const char *const adapters[] = {"ide", "buslogic", "lsilogic", "legacyESX", NULL};

int vmdk_create(const char *filename, struct vbd_node *file, struct json_object *opts,
                struct json_object *file_hints, struct vbd_error **err)
{
    uint64_t size = 0;
    char *adapter = NULL, *backing = NULL, *backing_fmt = NULL, *hw = NULL, *tools = NULL, *subfmt = NULL;
    bool compat6 = false, zeroed = false;
    int rc = -EINVAL;
    struct vbd_node *desc_node = NULL;
    char *lines = NULL, *desc = NULL;
    size_t lines_len = 0;
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 || vbd_opt_take_str(opts, "adapter_type", &adapter, err) < 0 ||
        vbd_opt_take_str(opts, "backing_file", &backing, err) < 0 ||
        vbd_opt_take_str(opts, "backing_fmt", &backing_fmt, err) < 0 ||
        vbd_opt_take_bool(opts, "compat6", &compat6, err) < 0 || vbd_opt_take_str(opts, "hwversion", &hw, err) < 0 ||
        vbd_opt_take_str(opts, "toolsversion", &tools, err) < 0 || vbd_opt_take_str(opts, "subformat", &subfmt, err) < 0 ||
        vbd_opt_take_bool(opts, "zeroed_grain", &zeroed, err) < 0)
        goto out;
    if (vbd_opts_check_empty(opts, "Block format 'vmdk'", err) < 0)
        goto out;
    if (backing_fmt && strcmp(backing_fmt, "vmdk")) {
        vbd_error_setf(err, EINVAL, "backing_file must be a vmdk image");
        goto out;
    }
    size = div_up(size, SECTOR) * SECTOR;
    /* qemu-img's order and words (vmdk_co_create_opts: the adapter type,
     * then the subformat, each through qapi_enum_parse) */
    int sub = 0, ad = 0;
    if (adapter) {
        for (ad = 0; adapters[ad] && strcmp(adapters[ad], adapter); ad++)
            ;
        if (!adapters[ad]) {
            vbd_error_setf(err, EINVAL, "invalid parameter value: %s", adapter);
            goto out;
        }
    }
    if (subfmt) {
        for (sub = 0; subformats[sub] && strcmp(subformats[sub], subfmt); sub++)
            ;
        if (!subformats[sub]) {
            vbd_error_setf(err, EINVAL, "invalid parameter value: %s", subfmt);
            goto out;
        }
    }
    if (hw && !strcmp(hw, "undefined")) {
        free(hw);
        hw = NULL;
    }
    if (compat6) {
        if (hw) {
            vbd_error_setf(err, EINVAL, "compat6 cannot be enabled with hwversion set");
            goto out;
        }
        hw = strdup("6");
    }
    bool split = sub == 2 || sub == 3, flat = sub == 1 || sub == 3, compress = sub == 4;
    if (flat && backing) {
        vbd_error_setf(err, ENOTSUP, "Flat image can't have backing file");
        rc = -ENOTSUP;
        goto out;
    }
    if (flat && zeroed) {
        vbd_error_setf(err, ENOTSUP, "Flat image can't enable zeroed grain");
        rc = -ENOTSUP;
        goto out;
    }
    if (size / SECTOR > (uint64_t)UINT32_MAX * 128 && !flat) {
        /* grain offsets are 32-bit sectors: qemu-img's limit for sparse extents */
        vbd_error_setf(err, EFBIG, "Could not create '%s': size too large for a sparse VMDK extent", filename);
        rc = -EFBIG;
        goto out;
    }
    /* path/prefix/postfix of the name, as qemu-img splits it */
    char path[4096], prefix[4096], postfix[4096];
    const char *base = strrchr(filename, '/');
    base = base ? base + 1 : filename;
    if ((size_t)(base - filename) >= sizeof(path) || strlen(base) >= sizeof(prefix)) {
        vbd_error_setf(err, ENAMETOOLONG, "Could not create '%s': name too long", filename);
        goto out;
    }
    memcpy(path, filename, (size_t)(base - filename));
    path[base - filename] = 0;
    const char *dot = strrchr(base, '.');
    snprintf(prefix, sizeof(prefix), "%.*s", dot ? (int)(dot - base) : (int)strlen(base), base);
    snprintf(postfix, sizeof(postfix), "%s", dot ? dot : "");

    uint32_t parent_cid = 0xffffffffu;
    if (backing) {
        char full[8192];
        if (backing[0] == '/' || strstr(backing, "://") || !strncmp(backing, "json:", 5))
            snprintf(full, sizeof(full), "%s", backing);
        else
            snprintf(full, sizeof(full), "%s%s", path, backing);
        struct vbd_node *b = vbd_open(full, NULL, VBD_OPEN_NO_BACKING, err);
        if (!b) {
            rc = -EIO;
            goto out;
        }
        struct vbd_node *bf = vbd_node_skip_filters(b);
        if (strcmp(vbd_node_format(bf), "vmdk")) {
            vbd_error_setf(err, EINVAL, "Invalid backing file format: %s. Must be vmdk", vbd_node_format(bf));
            vbd_node_unref(b);
            goto out;
        }
        parent_cid = ((struct vmdk_state *)bf->opaque)->cid;
        vbd_node_unref(b);
    }
    desc_node = create_file(filename, file_hints, err);
    if (!desc_node) {
        rc = -EIO;
        goto out;
    }
    lines = calloc(1, 1);
    if (!split && !flat) {
        if ((rc = init_sparse(desc_node, size, compress, zeroed)) < 0) {
            vbd_error_setf(err, -rc, "Could not write '%s': %s", filename, strerror(-rc));
            goto out;
        }
        lines_len = (size_t)asprintf(&desc, "RW %" PRIu64 " SPARSE \"%s\"\n", size / SECTOR, base);
        free(lines);
        lines = desc;
        desc = NULL;
    } else {
        uint64_t done = 0;
        for (int idx = 1; done < size; idx++) {
            uint64_t cur = split && size - done > SPLIT_SIZE ? SPLIT_SIZE : size - done;
            char rel[8300], full[16600];
            if (split)
                snprintf(rel, sizeof(rel), "%s-%c%03d%s", prefix, flat ? 'f' : 's', idx, postfix);
            else
                snprintf(rel, sizeof(rel), "%s-flat%s", prefix, postfix);
            snprintf(full, sizeof(full), "%s%s", path, rel);
            struct vbd_node *f = create_file(full, file_hints, err);
            if (!f) {
                rc = -EIO;
                goto out;
            }
            rc = flat ? vbd_node_co_truncate(f, cur, false, VBD_PREALLOC_OFF, NULL) : init_sparse(f, cur, compress, zeroed);
            vbd_node_unref(f);
            if (rc < 0) {
                vbd_error_setf(err, -rc, "Could not write '%s': %s", full, strerror(-rc));
                goto out;
            }
            char *l = NULL;
            int ln = flat ? asprintf(&l, "RW %" PRIu64 " FLAT \"%s\" 0\n", cur / SECTOR, rel)
                          : asprintf(&l, "RW %" PRIu64 " SPARSE \"%s\"\n", cur / SECTOR, rel);
            lines = realloc(lines, lines_len + (size_t)ln + 1);
            memcpy(lines + lines_len, l, (size_t)ln + 1);
            lines_len += (size_t)ln;
            free(l);
            done += cur;
        }
    }
    uint32_t cid;
    if (getrandom(&cid, sizeof(cid), 0) != sizeof(cid))
        cid = (uint32_t)rand();
    char parent_line[4200] = "";
    if (backing)
        snprintf(parent_line, sizeof(parent_line), "parentFileNameHint=\"%s\"", backing);
    uint32_t heads = ad == 0 ? 16 : 255;
    int dl = asprintf(&desc,
                      "# Disk DescriptorFile\nversion=1\nCID=%" PRIx32 "\nparentCID=%" PRIx32 "\ncreateType=\"%s\"\n%s\n"
                      "# Extent description\n%s\n# The Disk Data Base\n#DDB\n\n"
                      "ddb.virtualHWVersion = \"%s\"\nddb.geometry.cylinders = \"%" PRIu64 "\"\n"
                      "ddb.geometry.heads = \"%" PRIu32 "\"\nddb.geometry.sectors = \"63\"\n"
                      "ddb.adapterType = \"%s\"\nddb.toolsVersion = \"%s\"\n",
                      cid, parent_cid, subformats[sub], parent_line, lines, hw ? hw : "4",
                      (uint64_t)(size / (63ull * heads * SECTOR)), heads, adapters[ad], tools ? tools : "2147483647");
    if (!split && !flat && (size_t)dl > 20 * SECTOR) {
        vbd_error_setf(err, EINVAL, "Could not create '%s': the descriptor is too long", filename);
        goto out;
    }
    rc = vbd_node_co_pwrite(desc_node, !split && !flat ? SECTOR : 0, desc, (uint64_t)dl, 0);
    if (rc == 0 && (split || flat))
        rc = vbd_node_co_truncate(desc_node, (uint64_t)dl, false, VBD_PREALLOC_OFF, NULL);
    if (rc == 0)
        rc = vbd_node_co_flush(desc_node);
    if (rc < 0)
        vbd_error_setf(err, -rc, "Could not write description: %s", strerror(-rc));
out:
    if (desc_node)
        vbd_node_unref(desc_node);
    free(lines);
    free(desc);
    free(adapter);
    free(backing);
    free(backing_fmt);
    free(hw);
    free(tools);
    free(subfmt);
    return rc < 0 ? rc : 0;
}

/* Space a conversion needs: the metadata qemu-img lays out, plus every
 * grain with data (compressed grains counted whole: an upper bound). */
int vmdk_measure(struct json_object *opts, struct vbd_node *in, uint64_t *required, uint64_t *fully,
                        struct vbd_error **err)
{
    uint64_t size = 0;
    char *subfmt = NULL;
    if (vbd_opt_take_size(opts, "size", &size, err) < 0 || vbd_opt_take_str(opts, "subformat", &subfmt, err) < 0)
        return -EINVAL;
    int sub = 0;
    if (subfmt)
        for (sub = 0; subformats[sub] && strcmp(subformats[sub], subfmt); sub++)
            ;
    free(subfmt);
    if (!subformats[sub]) {
        vbd_error_setf(err, EINVAL, "Invalid subformat");
        return -EINVAL;
    }
    if (in)
        size = vbd_node_size(in);
    size = div_up(size, SECTOR) * SECTOR;
    bool flat = sub == 1 || sub == 3;
    const uint64_t desc = 1024, grain = 65536;
    if (flat) {
        *required = *fully = size + desc;
        return 0;
    }
    uint64_t meta = 0;
    uint64_t per = sub == 2 || sub == 3 ? SPLIT_SIZE : size;
    for (uint64_t done = 0; done < size || (done == 0 && size == 0); done += per) {
        struct sparse_layout l;
        sparse_layout(size - done < per ? size - done : per, &l);
        meta += l.grain_off * SECTOR;
        if (!per)
            break;
    }
    *fully = meta + div_up(size, grain) * grain + (sub == 2 ? desc : 0);
    uint64_t data = 0;
    for (uint64_t off = 0; in && off < size;) {
        uint64_t pnum = 0, map = 0;
        struct vbd_node *file = NULL;
        int depth = 0;
        uint64_t end = (off / grain + 1) * grain;
        if (end > size)
            end = size;
        int st = vbd_node_co_block_status_above(in, NULL, true, off, end - off, &pnum, &map, &file, &depth);
        if (st < 0)
            return st;
        if ((st & VBD_BS_ALLOCATED) && !(st & VBD_BS_ZERO)) {
            data += grain;
            off = end;
        } else {
            off += pnum ? pnum : end - off;
        }
    }
    *required = in ? meta + data + (sub == 2 ? desc : 0) : *fully - div_up(size, grain) * grain;
    return 0;
}
