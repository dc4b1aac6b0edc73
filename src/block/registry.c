/* SPDX-License-Identifier: MIT */
/* Every driver, once. grep VBD_DRIVER_REGISTER finds their tables. */
#include "vbd/block.h"
#include "vbd-config.h"

#include <string.h>

extern const struct vbd_driver *const vbd_driver_file;
extern const struct vbd_driver *const vbd_driver_null_co;
extern const struct vbd_driver *const vbd_driver_nbd;
#if VBD_HAVE_RBD
extern const struct vbd_driver *const vbd_driver_rbd;
#endif
extern const struct vbd_driver *const vbd_driver_raw;
extern const struct vbd_driver *const vbd_driver_qcow2;
extern const struct vbd_driver *const vbd_driver_vdi;
extern const struct vbd_driver *const vbd_driver_qed;
extern const struct vbd_driver *const vbd_driver_qcow;
extern const struct vbd_driver *const vbd_driver_parallels;
extern const struct vbd_driver *const vbd_driver_vpc;
extern const struct vbd_driver *const vbd_driver_throttle;
extern const struct vbd_driver *const vbd_driver_blkdebug;
extern const struct vbd_driver *const vbd_driver_copy_on_read;
extern const struct vbd_driver *const vbd_driver_copy_before_write;
extern const struct vbd_driver *const vbd_driver_snapshot_access;
extern const struct vbd_driver *const vbd_driver_quorum;
extern const struct vbd_driver *const vbd_driver_vmdk;
extern const struct vbd_driver *const vbd_driver_vhdx;
extern const struct vbd_driver *const vbd_driver_bochs;
extern const struct vbd_driver *const vbd_driver_cloop;
extern const struct vbd_driver *const vbd_driver_dmg;
#if VBD_HAVE_LIBISCSI
extern const struct vbd_driver *const vbd_driver_iscsi;
#endif

static const struct vbd_driver *const *const registry[] = {
    &vbd_driver_file,
    &vbd_driver_null_co,
    &vbd_driver_nbd,
#if VBD_HAVE_RBD
    &vbd_driver_rbd,
#endif
    &vbd_driver_raw,
    &vbd_driver_qcow2,
    &vbd_driver_vdi,
    &vbd_driver_qed,
    &vbd_driver_qcow,
    &vbd_driver_parallels,
    &vbd_driver_vpc,
    &vbd_driver_throttle,
    &vbd_driver_blkdebug,
    &vbd_driver_copy_on_read,
    &vbd_driver_copy_before_write,
    &vbd_driver_snapshot_access,
    &vbd_driver_quorum,
    &vbd_driver_vmdk,
    &vbd_driver_vhdx,
    &vbd_driver_bochs,
    &vbd_driver_cloop,
    &vbd_driver_dmg,
#if VBD_HAVE_LIBISCSI
    &vbd_driver_iscsi,
#endif
    NULL,
};

const struct vbd_driver *const *vbd_driver_list(void)
{
    static const struct vbd_driver *list[sizeof(registry) / sizeof(registry[0])];
    if (!list[0])
        for (size_t i = 0; registry[i]; i++)
            list[i] = *registry[i];
    return list;
}

const struct vbd_driver *vbd_driver_find(const char *name)
{
    if (!strcmp(name, "null"))
        name = "null-co";
    if (!strcmp(name, "host_device") || !strcmp(name, "host_cdrom"))
        name = "file";
    for (const struct vbd_driver *const *d = vbd_driver_list(); *d; d++)
        if (!strcmp((*d)->name, name))
            return *d;
    return NULL;
}
