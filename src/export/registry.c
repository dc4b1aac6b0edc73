/* SPDX-License-Identifier: MIT */
/* Every export type, once (pattern 1). */
#include "vbd/export.h"
#include "vbd/nbd.h"

#include <stddef.h>

extern const struct vbd_export_type vbd_export_type_vhost_user_blk;

static const struct vbd_export_type *const export_types[] = {
    &vbd_export_type_vhost_user_blk,
    &vbd_export_type_nbd,
    NULL,
};

const struct vbd_export_type *const *vbd_export_types(void)
{
    return export_types;
}
