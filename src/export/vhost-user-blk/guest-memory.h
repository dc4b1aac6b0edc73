/* SPDX-License-Identifier: MIT */
/*
 * vhost-user back end: the front end's memory table (guest-memory.c),
 * changed by the message handler (vhost-user.c) on the device's control
 * loop.
 */
#ifndef VBD_VHOST_USER_GUEST_MEMORY_H
#define VBD_VHOST_USER_GUEST_MEMORY_H

#include "vhost-user.h"

#include <stdint.h>

/* The messages' payloads (size bytes) and fds; 0 or a negative errno after
 * one line naming the device and the reason. The table changes only once
 * every new region is mapped. */
int vu_mem_set_table(struct vu_dev *dev, const uint8_t *payload, uint32_t size, const int *fds, int nfds);
int vu_mem_add_region(struct vu_dev *dev, const uint8_t *payload, uint32_t size, const int *fds, int nfds);
int vu_mem_remove_region(struct vu_dev *dev, const uint8_t *payload, uint32_t size);
/* unmaps every region (disconnect: no ring runs) */
void vu_mem_clear(struct vu_dev *dev);
/* fd is a file or memfd backing size bytes at offset (sealed against
 * shrinking where it can be): 0, or -EINVAL reported as what */
int vu_region_fits_fd(struct vu_dev *dev, const char *what, int fd, uint64_t offset, uint64_t size);

/* vhost-user.c: on q's loop, waits until no request of q is in flight and
 * its last interrupt went out; the rings' host addresses from the current
 * table (NULL, or why they cannot be used) */
void vu_queue_wait_idle(struct vu_queue *q);
const char *vu_queue_translate_rings(struct vu_dev *dev, struct vu_queue *q);

#endif
