/* SPDX-License-Identifier: MIT */
/* qcow2 header and header extensions: every field is checked before use,
 * and memory sized by a field is capped (a hostile image can ask for
 * anything). */
#include "qcow2.h"

#include "vbd/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *feature_name(struct qcow2_state *s, int type, int bit, char *buf, size_t len)
{
    for (uint32_t i = 0; i + 48 <= s->feature_names_len; i += 48) {
        const uint8_t *e = (const uint8_t *)s->feature_names + i;
        if (e[0] == type && e[1] == bit) {
            snprintf(buf, len, "%.46s", (const char *)e + 2);
            return buf;
        }
    }
    snprintf(buf, len, "Unknown incompatible feature: %llx", 1ull << bit);
    return buf;
}

static int parse_extensions(struct vbd_node *n, struct qcow2_state *s, const uint8_t *hdr, uint64_t start,
                            uint64_t end, struct vbd_error **err)
{
    uint64_t off = start;
    while (off + 8 <= end) {
        uint32_t type = get_be32p(hdr + off), len = get_be32p(hdr + off + 4);
        off += 8;
        if (type == QCOW2_EXT_END)
            return 0;
        if (len > end - off) {
            vbd_error_setf(err, EINVAL, "qcow2 header extension 0x%x is larger than the header cluster", type);
            return -EINVAL;
        }
        const uint8_t *d = hdr + off;
        switch (type) {
        case QCOW2_EXT_BACKING_FORMAT:
            if (len >= sizeof(n->backing_format)) {
                vbd_error_setf(err, EINVAL, "qcow2 backing format name too long (%u bytes)", len);
                return -EINVAL;
            }
            memcpy(n->backing_format, d, len);
            n->backing_format[len] = 0;
            break;
        case QCOW2_EXT_FEATURE_TABLE:
            free(s->feature_names);
            s->feature_names = malloc(len + 1);
            memcpy(s->feature_names, d, len);
            s->feature_names_len = len;
            break;
        default: {
            /* kept verbatim (bitmaps, data file name, unknown ones) */
            if (s->nexts >= 64) {
                vbd_error_setf(err, EINVAL, "qcow2 image has too many header extensions");
                return -EINVAL;
            }
            s->exts = realloc(s->exts, sizeof(*s->exts) * (s->nexts + 1));
            struct qcow2_ext *x = &s->exts[s->nexts++];
            x->type = type;
            x->len = len;
            x->data = malloc(len ? len : 1);
            memcpy(x->data, d, len);
        }
        }
        off += (len + 7) & ~7ull;
    }
    return 0;
}

int qcow2_read_header(struct vbd_node *n, struct qcow2_state *s, unsigned flags, struct vbd_error **err)
{
    uint8_t first[512] = {0};
    uint64_t fsize = vbd_node_size(n->file);
    size_t have = fsize < sizeof(first) ? (size_t)fsize : sizeof(first);
    int prc = have ? vbd_node_co_pread(n->file, 0, first, have) : 0;
    if (prc < 0) {
        vbd_error_setf(err, -prc, "Could not read the qcow2 header: %s", strerror(-prc));
        return prc;
    }
    /* a file too short to be anything (empty, say) is "not qcow2" as to
     * QEMU (its read past the end gives zeroes) */
    if (get_be32p(first) != QCOW2_MAGIC) {
        vbd_error_setf(err, EINVAL, "Image is not in qcow2 format");
        return -EINVAL;
    }
    if (fsize < 72) {
        vbd_error_setf(err, EINVAL, "Image is not in qcow2 format (too short)");
        return -EINVAL;
    }
    s->version = get_be32p(first + 4);
    if (s->version != 2 && s->version != 3) {
        vbd_error_setf(err, ENOTSUP, "Unsupported qcow2 version %u", s->version);
        return -ENOTSUP;
    }
    s->cluster_bits = get_be32p(first + 20);
    if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS || s->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        vbd_error_setf(err, EINVAL, "Unsupported cluster size: 2^%u", s->cluster_bits);
        return -EINVAL;
    }
    s->cluster_size = 1ull << s->cluster_bits;
    uint8_t *hdr = calloc(1, s->cluster_size);
    int rc = -EINVAL;
    uint64_t hlen = fsize < s->cluster_size ? fsize : s->cluster_size;
    if (vbd_node_co_pread(n->file, 0, hdr, hlen) < 0) {
        vbd_error_setf(err, EIO, "Could not read the qcow2 header");
        rc = -EIO;
        goto out;
    }
    s->backing_file_offset = get_be64p(hdr + 8);
    s->backing_file_size = get_be32p(hdr + 16);
    n->size = get_be64p(hdr + 24);
    uint32_t crypt = get_be32p(hdr + 32);
    s->l1_size = get_be32p(hdr + 36);
    s->l1_table_offset = get_be64p(hdr + 40);
    s->refcount_table_offset = get_be64p(hdr + 48);
    s->refcount_table_clusters = get_be32p(hdr + 56);
    s->nb_snapshots = get_be32p(hdr + 60);
    s->snapshots_offset = get_be64p(hdr + 64);
    if (s->version == 2) {
        s->refcount_order = 4;
        s->header_length = 72;
    } else {
        s->incompat = get_be64p(hdr + 72);
        s->compat = get_be64p(hdr + 80);
        s->autoclear = get_be64p(hdr + 88);
        s->refcount_order = get_be32p(hdr + 96);
        s->header_length = get_be32p(hdr + 100);
        if (s->header_length < 104 || s->header_length > s->cluster_size || s->header_length % 8) {
            vbd_error_setf(err, EINVAL, "qcow2 header length %u is invalid", s->header_length);
            goto out;
        }
        if (s->header_length > 104)
            s->compression_type = hdr[104];
    }
    if (s->refcount_order > 6) {
        vbd_error_setf(err, EINVAL, "qcow2 refcount width 2^%u bits is invalid (at most 64)", s->refcount_order);
        goto out;
    }
    if (parse_extensions(n, s, hdr, s->header_length,
                         s->backing_file_offset && s->backing_file_offset < s->cluster_size ? s->backing_file_offset
                                                                                            : s->cluster_size,
                         err) < 0)
        goto out;
    if (s->incompat & ~QCOW2_INCOMPAT_KNOWN) {
        char names[512] = "", one[64];
        for (int b = 0; b < 64; b++)
            if ((s->incompat & ~QCOW2_INCOMPAT_KNOWN) & (1ull << b)) {
                if (names[0])
                    strncat(names, ", ", sizeof(names) - strlen(names) - 1);
                strncat(names, feature_name(s, 0, b, one, sizeof(one)), sizeof(names) - strlen(names) - 1);
            }
        vbd_error_setf(err, ENOTSUP, "Unsupported qcow2 feature(s): %s", names);
        rc = -ENOTSUP;
        goto out;
    }
    if (crypt) {
        vbd_error_setf(err, ENOTSUP, "qcow2: encrypted images (crypt_method %u) are not supported", crypt);
        rc = -ENOTSUP;
        goto out;
    }
    s->external = (s->incompat & QCOW2_INCOMPAT_DATA_FILE) != 0;
    s->data_raw = s->external && (s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW);
    if (!s->external && (s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW))
        s->autoclear &= ~QCOW2_AUTOCLEAR_DATA_FILE_RAW; /* meaningless without a data file */
    if (s->incompat & QCOW2_INCOMPAT_COMPRESSION) {
        if (s->header_length <= 104 || s->compression_type > 1) {
            vbd_error_setf(err, EINVAL, "qcow2: unknown compression type %u", s->compression_type);
            goto out;
        }
    } else if (s->compression_type) {
        vbd_error_setf(err, EINVAL, "qcow2: compression type %u without the compression-type feature bit",
                       s->compression_type);
        goto out;
    }
    s->extended_l2 = (s->incompat & QCOW2_INCOMPAT_EXTL2) != 0;
    if (s->extended_l2 && s->cluster_bits < 14) {
        vbd_error_setf(err, EINVAL, "qcow2: extended L2 entries need clusters of 16 KiB or more");
        goto out;
    }
    s->l2_entry_size = s->extended_l2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (s->extended_l2 ? 4 : 3);
    s->subcluster_bits = s->extended_l2 ? s->cluster_bits - 5 : s->cluster_bits;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1ull << (s->cluster_bits - 8)) - 1;
    s->coffset_mask = (1ull << s->csize_shift) - 1;

    /* the guest size must be mappable by the L1 table */
    if (n->size > (1ull << 62)) {
        vbd_error_setf(err, EINVAL, "qcow2 image size %llu is too large", (unsigned long long)n->size);
        goto out;
    }
    uint64_t per_l1 = 1ull << (s->l2_bits + s->cluster_bits);
    uint64_t need_l1 = (n->size + per_l1 - 1) / per_l1;
    if (s->l1_size < need_l1) {
        vbd_error_setf(err, EINVAL, "qcow2 L1 table is too small (%u entries) for the image size", s->l1_size);
        goto out;
    }
    if ((uint64_t)s->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        vbd_error_setf(err, EFBIG, "qcow2 active L1 table too large (%u entries)", s->l1_size);
        rc = -EFBIG;
        goto out;
    }
    /* check opens a truncated image (tables past the end read as zeroes) to report it corrupt, as qemu-img does */
    uint64_t table_limit = (flags & VBD_OPEN_CHECK) ? UINT64_MAX / 2 : fsize;
    if (s->l1_size && (s->l1_table_offset % s->cluster_size || s->l1_table_offset > table_limit ||
                       (uint64_t)s->l1_size * 8 > table_limit - s->l1_table_offset)) {
        vbd_error_setf(err, EINVAL, "qcow2 L1 table offset 0x%llx is invalid or past the end of the file",
                       (unsigned long long)s->l1_table_offset);
        goto out;
    }
    if (s->refcount_table_offset % s->cluster_size || !s->refcount_table_clusters ||
        (uint64_t)s->refcount_table_clusters * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES ||
        s->refcount_table_offset > table_limit ||
        (uint64_t)s->refcount_table_clusters * s->cluster_size > table_limit - s->refcount_table_offset) {
        vbd_error_setf(err, EINVAL, "qcow2 refcount table (offset 0x%llx, %u clusters) is invalid",
                       (unsigned long long)s->refcount_table_offset, s->refcount_table_clusters);
        goto out;
    }
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS ||
        (s->nb_snapshots && (s->snapshots_offset % s->cluster_size || s->snapshots_offset >= table_limit))) {
        vbd_error_setf(err, EINVAL, "qcow2 snapshot table (%u snapshots at 0x%llx) is invalid", s->nb_snapshots,
                       (unsigned long long)s->snapshots_offset);
        goto out;
    }
    if (s->backing_file_offset) {
        if (s->backing_file_size > QCOW2_MAX_BACKING_NAME || s->backing_file_offset > s->cluster_size ||
            s->backing_file_size > s->cluster_size - s->backing_file_offset || s->backing_file_offset > hlen ||
            s->backing_file_size > hlen - s->backing_file_offset) {
            vbd_error_setf(err, EINVAL, "qcow2 backing file name (%u bytes at %llu) is invalid",
                           s->backing_file_size, (unsigned long long)s->backing_file_offset);
            goto out;
        }
        memcpy(n->backing_file, hdr + s->backing_file_offset, s->backing_file_size);
        n->backing_file[s->backing_file_size] = 0;
    }
    s->corrupt = (s->incompat & QCOW2_INCOMPAT_CORRUPT) != 0;
    if (s->corrupt && (flags & VBD_OPEN_RDWR) && !(flags & VBD_OPEN_CHECK)) {
        vbd_error_setf(err, EACCES, "qcow2: image is corrupt; cannot be opened read/write");
        rc = -EACCES;
        goto out;
    }
    if (s->l1_size) {
        s->l1 = malloc((size_t)s->l1_size * 8);
        if (!s->l1 || vbd_node_co_pread(n->file, s->l1_table_offset, s->l1, (uint64_t)s->l1_size * 8) < 0) {
            vbd_error_setf(err, EIO, "Could not read the qcow2 L1 table");
            rc = -EIO;
            goto out;
        }
        for (uint32_t i = 0; i < s->l1_size; i++)
            s->l1[i] = be64(s->l1[i]);
    }
    rc = 0;
out:
    free(hdr);
    return rc;
}

int qcow2_update_incompat(struct qcow2_state *s, uint64_t set, uint64_t clear)
{
    if (s->version < 3)
        return 0;
    uint64_t v = (s->incompat | set) & ~clear;
    if (v == s->incompat)
        return 0;
    uint8_t b[8];
    put_be64p(b, v);
    int rc = vbd_node_co_pwrite(s->n->file, 72, b, 8, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(s->n->file);
    if (rc == 0)
        s->incompat = v;
    return rc;
}

const char *qcow2_data_file_name(struct qcow2_state *s, uint32_t *len)
{
    for (int i = 0; i < s->nexts; i++)
        if (s->exts[i].type == QCOW2_EXT_DATA_FILE) {
            *len = s->exts[i].len;
            return (const char *)s->exts[i].data;
        }
    *len = 0;
    return NULL;
}

void qcow2_free_header(struct qcow2_state *s)
{
    for (int i = 0; i < s->nexts; i++)
        free(s->exts[i].data);
    free(s->exts);
    free(s->feature_names);
    free(s->l1);
    s->exts = NULL;
    s->feature_names = NULL;
    s->l1 = NULL;
}
