/* SPDX-License-Identifier: MIT */
/* qcow2 header and header extensions: every field is checked before use,
 * and memory sized by a field is capped (a hostile image can ask for
 * anything). */
#include "qcow2.h"

#include "vbd/error.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "Unsupported qcow2 feature(s): " as QEMU words it: the names the image's
 * feature name table gives, in the table's order, then the bits it does
 * not name, as one mask */
static void report_unsupported_features(struct qcow2_state *s, uint64_t mask, struct vbd_error **err)
{
    char names[1024] = "";
    size_t used = 0;
    for (uint32_t i = 0; i + 48 <= s->feature_names_len && used < sizeof(names); i += 48) {
        const uint8_t *e = (const uint8_t *)s->feature_names + i;
        if (e[0] != 0 || e[1] > 63 || !(mask & (1ull << e[1])))
            continue;
        used += (size_t)snprintf(names + used, sizeof(names) - used, "%s%.46s", used ? ", " : "",
                                 (const char *)e + 2);
        mask &= ~(1ull << e[1]);
    }
    if (mask && used < sizeof(names))
        snprintf(names + used, sizeof(names) - used, "%sUnknown incompatible feature: %llx", used ? ", " : "",
                 (unsigned long long)mask);
    vbd_error_setf(err, ENOTSUP, "Unsupported qcow2 feature(s): %s", names);
}

/* A table of len bytes at off: cluster aligned (QEMU's check, even when
 * empty), and inside the first limit bytes of the file */
static bool table_fits(const struct qcow2_state *s, uint64_t off, uint64_t len, uint64_t limit)
{
    return !(off & (s->cluster_size - 1)) && (!len || (off <= limit && len <= limit - off));
}

static int parse_extensions(struct vbd_node *n, struct qcow2_state *s, const uint8_t *hdr, uint64_t start,
                            uint64_t end, struct vbd_error **err)
{
    uint64_t off = start;
    while (off < end) {
        /* as QEMU: an extension whose own 8 bytes cross the end is too large too */
        uint32_t type = off + 8 <= end ? get_be32p(hdr + off) : QCOW2_EXT_END + 1;
        uint32_t len = off + 8 <= end ? get_be32p(hdr + off + 4) : 0;
        off += 8;
        if (off <= end && type == QCOW2_EXT_END)
            return 0;
        if (off > end || len > end - off) {
            vbd_error_setf(err, EINVAL, "Header extension too large");
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
        /* the checks and their words are QEMU's, in its order (what a
         * user or script sees for an image with several faults) */
        if (s->header_length < 104) {
            vbd_error_setf(err, EINVAL, "qcow2 header too short");
            goto out;
        }
        if (s->header_length > 104)
            s->compression_type = hdr[104];
    }
    if (s->header_length > s->cluster_size) {
        vbd_error_setf(err, EINVAL, "qcow2 header exceeds cluster size");
        goto out;
    }
    if (s->header_length % 8) {
        vbd_error_setf(err, EINVAL, "qcow2 header length %u is not a multiple of 8", s->header_length);
        goto out;
    }
    if (s->backing_file_offset > s->cluster_size) {
        vbd_error_setf(err, EINVAL, "Invalid backing file offset");
        goto out;
    }
    /* the extensions end where the backing file name starts; an error in
     * them is reported where QEMU reads them for good (after the tables'
     * checks), the feature name table read before for the message below */
    struct vbd_error *ext_err = NULL;
    parse_extensions(n, s, hdr, s->header_length, s->backing_file_offset ? s->backing_file_offset : s->cluster_size,
                     &ext_err);
    if (s->incompat & ~QCOW2_INCOMPAT_KNOWN) {
        report_unsupported_features(s, s->incompat & ~QCOW2_INCOMPAT_KNOWN, err);
        rc = -ENOTSUP;
        goto out_ext;
    }
    s->corrupt = (s->incompat & QCOW2_INCOMPAT_CORRUPT) != 0;
    if (s->corrupt && (flags & VBD_OPEN_RDWR) && !(flags & VBD_OPEN_CHECK)) {
        vbd_error_setf(err, EACCES, "qcow2: Image is corrupt; cannot be opened read/write");
        rc = -EACCES;
        goto out_ext;
    }
    if (s->refcount_order > 6) {
        vbd_error_setf(err, EINVAL, "Reference count entry width too large; may not exceed 64 bits");
        goto out_ext;
    }
    if (crypt > 2) {
        vbd_error_setf(err, EINVAL, "Unsupported encryption method %u", crypt);
        goto out_ext;
    }
    if (crypt) {
        vbd_error_setf(err, ENOTSUP, "qcow2: encrypted images (crypt_method %u) are not supported", crypt);
        rc = -ENOTSUP;
        goto out_ext;
    }
    s->external = (s->incompat & QCOW2_INCOMPAT_DATA_FILE) != 0;
    s->data_raw = s->external && (s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW);
    if (!s->external && (s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW))
        s->autoclear &= ~QCOW2_AUTOCLEAR_DATA_FILE_RAW; /* meaningless without a data file */
    if (s->incompat & QCOW2_INCOMPAT_COMPRESSION) {
        if (s->header_length <= 104 || s->compression_type > 1) {
            vbd_error_setf(err, EINVAL, "qcow2: unknown compression type %u", s->compression_type);
            goto out_ext;
        }
    } else if (s->compression_type) {
        vbd_error_setf(err, EINVAL, "qcow2: compression type %u without the compression-type feature bit",
                       s->compression_type);
        goto out_ext;
    }
    s->extended_l2 = (s->incompat & QCOW2_INCOMPAT_EXTL2) != 0;
    if (s->extended_l2 && s->cluster_bits < 14) {
        vbd_error_setf(err, EINVAL, "qcow2: extended L2 entries need clusters of 16 KiB or more");
        goto out_ext;
    }
    s->l2_entry_size = s->extended_l2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (s->extended_l2 ? 4 : 3);
    s->subcluster_bits = s->extended_l2 ? s->cluster_bits - 5 : s->cluster_bits;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1ull << (s->cluster_bits - 8)) - 1;
    s->coffset_mask = (1ull << s->csize_shift) - 1;

    /* check opens a truncated image (tables past the end read as zeroes)
     * to report it corrupt, as qemu-img does; else a table must lie in the
     * file (QEMU reads zeroes past its end) */
    uint64_t table_limit = (flags & VBD_OPEN_CHECK) ? UINT64_MAX / 2 : fsize;
    if (!s->refcount_table_clusters && !(flags & VBD_OPEN_CHECK)) {
        vbd_error_setf(err, EINVAL, "Image does not contain a reference count table");
        goto out_ext;
    }
    if ((uint64_t)s->refcount_table_clusters * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES) {
        vbd_error_setf(err, EFBIG, "Reference count table too large");
        rc = -EFBIG;
        goto out_ext;
    }
    if (!table_fits(s, s->refcount_table_offset, (uint64_t)s->refcount_table_clusters * s->cluster_size,
                    table_limit) ||
        !s->refcount_table_clusters) {
        vbd_error_setf(err, EINVAL, "Reference count table offset invalid");
        goto out_ext;
    }
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        vbd_error_setf(err, EFBIG, "Snapshot table too large");
        rc = -EFBIG;
        goto out_ext;
    }
    /* aligned even when there is no snapshot, as QEMU wants it */
    if (!table_fits(s, s->snapshots_offset, s->nb_snapshots ? 1 : 0, table_limit)) {
        vbd_error_setf(err, EINVAL, "Snapshot table offset invalid");
        goto out_ext;
    }
    if ((uint64_t)s->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        vbd_error_setf(err, EFBIG, "Active L1 table too large");
        rc = -EFBIG;
        goto out_ext;
    }
    if (!table_fits(s, s->l1_table_offset, (uint64_t)s->l1_size * 8, table_limit)) {
        vbd_error_setf(err, EINVAL, "Active L1 table offset invalid");
        goto out_ext;
    }
    /* the guest size must be mappable by the L1 table */
    uint64_t per_l1 = 1ull << (s->l2_bits + s->cluster_bits);
    uint64_t need_l1 = n->size / per_l1 + (n->size % per_l1 != 0);
    if (need_l1 > INT32_MAX) {
        vbd_error_setf(err, EFBIG, "Image is too big");
        rc = -EFBIG;
        goto out_ext;
    }
    if (s->l1_size < need_l1) {
        vbd_error_setf(err, EINVAL, "L1 table is too small");
        goto out_ext;
    }
    if (ext_err) {
        vbd_error_propagate(err, ext_err);
        ext_err = NULL;
        goto out;
    }
    if (s->backing_file_offset) {
        if (s->backing_file_size > QCOW2_MAX_BACKING_NAME ||
            s->backing_file_size > s->cluster_size - s->backing_file_offset) {
            vbd_error_setf(err, EINVAL, "Backing file name too long");
            goto out;
        }
        if (s->backing_file_offset > hlen || s->backing_file_size > hlen - s->backing_file_offset) {
            vbd_error_setf(err, EINVAL, "Could not read backing file name: the file ends first");
            goto out;
        }
        memcpy(n->backing_file, hdr + s->backing_file_offset, s->backing_file_size);
        n->backing_file[s->backing_file_size] = 0;
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
    goto out;
out_ext:
    vbd_error_free(ext_err);
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
