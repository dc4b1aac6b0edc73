/* SPDX-License-Identifier: MIT */
#ifndef VBD_DAEMON_LIBVIRT_DISK_H
#define VBD_DAEMON_LIBVIRT_DISK_H

#include <stdbool.h>
#include <stdint.h>

struct vbd_error;

/*
 * One libvirt <disk> turned into vbd nodes, named after its target dev
 * (the top node is TARGET itself; below it TARGET-throttle's child
 * TARGET-cor, TARGET-format, TARGET-storage, and TARGET-bN-format/-storage
 * for the Nth backingStore). What is not a node (write cache, serial,
 * block sizes, queues, error policies, iothread) is kept for the export.
 */
struct vbd_libvirt_disk {
    char target[32];
    char top[64];
    bool readonly, writethrough;
    uint64_t lbs, pbs, queues;
    char *serial, *werror, *rerror, *iothread;
    char *keep_xml; /* <alias>, <address>, <boot> as written, for --print-libvirt-disk */
};

/*
 * --libvirt-disk FILE[#TARGET]: FILE holds a <disk> element or a whole
 * <domain> (every disk, or only the one whose <target dev> is TARGET).
 * The nodes are added as blockdev-add adds them. On success *out is an
 * array of *n disks in document order (free with vbd_libvirt_disks_free).
 */
int vbd_libvirt_disk_add(const char *arg, struct vbd_libvirt_disk **out, int *n, struct vbd_error **err);
void vbd_libvirt_disks_free(struct vbd_libvirt_disk *d, int n);

/* The <disk type='vhostuser'> element a domain uses instead of d once it
 * is exported over vhost-user-blk on sock (malloc'd). */
char *vbd_libvirt_disk_vhostuser_xml(const struct vbd_libvirt_disk *d, const char *sock, uint64_t queues);

#endif
