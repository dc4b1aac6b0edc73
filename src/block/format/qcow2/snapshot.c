/* SPDX-License-Identifier: MIT */
/* qcow2 internal snapshots: the snapshot table, read and bounds-checked
 * (listing; create/apply/delete are not implemented yet). */
#include "qcow2.h"

#include "vbd/error.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define SNAPSHOT_TABLE_MAX (64u << 20) /* as QEMU: caps memory taken from the image */

int qcow2_snapshot_list(struct vbd_node *n, struct vbd_snapshot_info **out)
{
    struct qcow2_state *s = n->opaque;
    *out = NULL;
    if (!s->nb_snapshots)
        return 0;
    uint64_t fsize = n->file->size, off = s->snapshots_offset;
    struct vbd_snapshot_info *list = calloc(s->nb_snapshots, sizeof(*list));
    if (!list)
        return -ENOMEM;
    uint64_t total = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        uint8_t h[40];
        if (off + 40 > fsize || vbd_node_co_pread(n->file, off, h, 40) < 0)
            goto bad;
        uint16_t id_len = (uint16_t)((h[12] << 8) | h[13]), name_len = (uint16_t)((h[14] << 8) | h[15]);
        uint32_t extra = get_be32p(h + 36);
        struct vbd_snapshot_info *sn = &list[i];
        sn->date_sec = get_be32p(h + 16);
        sn->date_nsec = get_be32p(h + 20);
        sn->vm_clock_nsec = get_be64p(h + 24);
        sn->vm_state_size = get_be32p(h + 32);
        if (extra > 1024)
            goto bad;
        uint8_t ex[1024];
        if (extra && (off + 40 + extra > fsize || vbd_node_co_pread(n->file, off + 40, ex, extra) < 0))
            goto bad;
        if (extra >= 8)
            sn->vm_state_size = get_be64p(ex);
        if (extra >= 24) {
            sn->icount = get_be64p(ex + 16);
            sn->icount_valid = sn->icount != UINT64_MAX;
        }
        uint64_t p = off + 40 + extra;
        if (id_len >= sizeof(sn->id) || name_len >= sizeof(sn->name) || p + id_len + name_len > fsize)
            goto bad;
        if ((id_len && vbd_node_co_pread(n->file, p, sn->id, id_len) < 0) ||
            (name_len && vbd_node_co_pread(n->file, p + id_len, sn->name, name_len) < 0))
            goto bad;
        uint64_t len = 40 + extra + id_len + name_len;
        len = (len + 7) & ~7ull;
        total += len;
        if (total > SNAPSHOT_TABLE_MAX)
            goto bad;
        off += len;
    }
    *out = list;
    return (int)s->nb_snapshots;
bad:
    vbd_error_report("qcow2: the snapshot table of '%s' is invalid (entry past the end of the file or too large)",
                     n->file->filename);
    free(list);
    return -EINVAL;
}
