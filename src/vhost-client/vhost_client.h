/* SPDX-License-Identifier: MIT */
/*
 * A small vhost-user-blk front end: it plays the VMM's part (guest memory
 * in a memfd, feature negotiation, split rings) so that vbd-bench and the
 * tests can drive any vhost-user-blk back end (ours, qemu-storage-daemon)
 * without a VM. Single-threaded; the caller owns the request slots.
 */
#ifndef VBD_VHOST_CLIENT_H
#define VBD_VHOST_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VHC_MAX_QUEUES 16

struct vhc_queue {
    uint16_t num;
    void *desc, *avail, *used; /* our mapping */
    uint16_t avail_idx, last_used;
    uint16_t kicked_avail; /* EVENT_IDX: avail_idx when vhc_kick last decided */
    bool irq_off;          /* interrupts suppressed (vhc_disable_interrupt) */
    uint16_t irq_off_at;   /* EVENT_IDX: last_used when used_event was pushed away */
    int kick_fd, call_fd;
};

struct vhc {
    int sock;
    int memfd;
    uint8_t *mem;
    size_t mem_size;
    size_t mem_used; /* bump allocator */
    uint64_t features, protocol_features;
    uint64_t capacity; /* 512-byte sectors */
    uint32_t blk_size;
    uint16_t backend_queues;
    int nqueues;
    struct vhc_queue q[VHC_MAX_QUEUES];
    bool event_idx; /* VIRTIO_RING_F_EVENT_IDX negotiated */
};

/* vhc_open flags. VHC_EVENT_IDX: negotiate VIRTIO_RING_F_EVENT_IDX when the
 * back end offers it, as Linux's virtio_ring does. The caller must then use
 * vhc_disable_interrupt/vhc_enable_interrupt around its waits: with EVENT_IDX
 * the back end signals only when the used index passes used_event, which
 * only vhc_enable_interrupt moves forward. */
#define VHC_EVENT_IDX 1u
/* VHC_INDIRECT: negotiate VIRTIO_RING_F_INDIRECT_DESC when offered (tests
 * that build indirect tables themselves). */
#define VHC_INDIRECT 2u

/* Connects and negotiates; nqueues rings of ring_size entries. On failure
 * returns -1 and prints a one-line reason into err. */
int vhc_open(struct vhc *c, const char *socket_path, int nqueues, uint16_t ring_size, size_t mem_size, unsigned flags,
             char *err, size_t errlen);
void vhc_close(struct vhc *c);
/* Raw messages (tests that play a hostile front end): send one message
 * with up to VHC_MAX_SEND_FDS fds (version bits added to flags); receive the
 * reply to req, copying at most size bytes. Return 0 / the reply's payload
 * size, or -1. */
#define VHC_MAX_SEND_FDS 16
int vhc_send(struct vhc *c, uint32_t req, uint32_t flags, const void *payload, uint32_t size, const int *fds,
             int nfds);
int vhc_recv(struct vhc *c, uint32_t req, void *payload, uint32_t size);
/* Aligned memory inside guest RAM; returns NULL when exhausted. */
void *vhc_alloc(struct vhc *c, size_t size, size_t align);
uint64_t vhc_gpa(const struct vhc *c, const void *p);

/* Descriptor helpers: writes descriptor i of queue q. */
void vhc_set_desc(struct vhc *c, int q, uint16_t i, uint64_t gpa, uint32_t len, uint16_t flags, uint16_t next);
/* Publishes head in the available ring (no kick). */
void vhc_offer(struct vhc *c, int q, uint16_t head);
void vhc_kick(struct vhc *c, int q);
/* Pops one used element: returns 1 and fills id/len, 0 if none, -1 when
 * the back end moved the used index further than the ring's size. */
int vhc_used(struct vhc *c, int q, uint32_t *id, uint32_t *len);
/* Waits up to timeout_ms for an interrupt on any queue. */
int vhc_wait(struct vhc *c, int timeout_ms);
/* Asks the back end not to interrupt (busy polling). */
void vhc_set_no_interrupt(struct vhc *c, int q, bool on);
/* Linux's virtqueue_disable_cb / virtqueue_enable_cb: interrupts off while
 * the caller drains the used ring, on again before it sleeps. Enabling
 * returns true when completions arrived meanwhile (drain again, do not
 * sleep: the back end may have seen interrupts still off and not signalled). */
void vhc_disable_interrupt(struct vhc *c, int q);
bool vhc_enable_interrupt(struct vhc *c, int q);

#endif
