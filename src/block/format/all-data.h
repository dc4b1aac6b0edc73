/* Block status and image info of the read-only formats whose data is not
 * stored 1:1 in the file (bochs, cloop, dmg), as QEMU's formats without
 * block status: one helper for each, shared by their driver tables. */
#ifndef VBD_FORMAT_ALL_DATA_H
#define VBD_FORMAT_ALL_DATA_H

#include "vbd/block.h"
#include "vbd/error.h"

/* All data, allocated here, at no offset a reader could use. */
int vbd_all_data_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                              uint64_t *map, struct vbd_node **file);
/* The virtual size and nothing format-specific. */
int vbd_all_data_get_info(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err);

#endif
