/* SPDX-License-Identifier: MIT */
#include "vhost_client.h"

#include "vbd/barrier.h"
#include "vbd/vhost-user-protocol.h"

#include <errno.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>


static int seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

int vhc_send(struct vhc *c, uint32_t req, uint32_t flags, const void *payload, uint32_t size, const int *fds, int nfds)
{
    uint8_t hdr[12];
    flags |= VHOST_USER_VERSION;
    memcpy(hdr, &req, 4);
    memcpy(hdr + 4, &flags, 4);
    memcpy(hdr + 8, &size, 4);
    struct iovec iov[2] = {{hdr, 12}, {(void *)payload, size}};
    char cbuf[CMSG_SPACE(sizeof(int) * VHC_MAX_SEND_FDS)];
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = size ? 2 : 1};
    if (nfds < 0 || nfds > VHC_MAX_SEND_FDS)
        return -1;
    if (nfds) {
        memset(cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }
    ssize_t r = sendmsg(c->sock, &mh, MSG_NOSIGNAL);
    return r == (ssize_t)(12 + size) ? 0 : -1;
}

/* A hostile back end may send anything: the reply must be for req, at most
 * 4096 bytes; fds it attaches are dropped by the kernel (no control buffer). */
int vhc_recv(struct vhc *c, uint32_t req, void *payload, uint32_t size)
{
    uint8_t hdr[12];
    if (recv(c->sock, hdr, 12, MSG_WAITALL) != 12)
        return -1;
    uint32_t r, sz;
    memcpy(&r, hdr, 4);
    memcpy(&sz, hdr + 8, 4);
    if (r != req || sz > 4096)
        return -1;
    uint8_t buf[4096];
    if (sz && recv(c->sock, buf, sz, MSG_WAITALL) != (ssize_t)sz)
        return -1;
    memcpy(payload, buf, sz < size ? sz : size);
    return (int)sz;
}

static int get_u64(struct vhc *c, uint32_t req, uint64_t *v)
{
    if (vhc_send(c, req, 0, NULL, 0, NULL, 0) < 0 || vhc_recv(c, req, v, 8) != 8)
        return -1;
    return 0;
}

/* With REPLY_ACK every setting message is confirmed, so errors surface at once. */
static int set_msg(struct vhc *c, uint32_t req, const void *payload, uint32_t size, const int *fds, int nfds)
{
    bool ack = c->protocol_features & (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK);
    if (vhc_send(c, req, ack ? 0x8 : 0, payload, size, fds, nfds) < 0)
        return -1;
    if (ack) {
        uint64_t v = 1;
        if (vhc_recv(c, req, &v, 8) != 8 || v != 0)
            return -1;
    }
    return 0;
}

void *vhc_alloc(struct vhc *c, size_t size, size_t align)
{
    size_t off = (c->mem_used + align - 1) & ~(align - 1);
    if (off + size > c->mem_size)
        return NULL;
    c->mem_used = off + size;
    return c->mem + off;
}

uint64_t vhc_gpa(const struct vhc *c, const void *p)
{
    return (uint64_t)((const uint8_t *)p - c->mem);
}

int vhc_open(struct vhc *c, const char *path, int nqueues, uint16_t ring_size, size_t mem_size, unsigned flags,
             char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    c->sock = c->memfd = -1;
    for (int i = 0; i < VHC_MAX_QUEUES; i++)
        c->q[i].kick_fd = c->q[i].call_fd = -1;
    if (nqueues < 1 || nqueues > VHC_MAX_QUEUES)
        return seterr(err, errlen, "number of queues must be 1..%d", VHC_MAX_QUEUES);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return seterr(err, errlen, "socket path '%s' is too long", path);
    strcpy(sa.sun_path, path);
    c->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->sock < 0 || connect(c->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return seterr(err, errlen, "cannot connect to '%s': %s", path, strerror(errno));
    /* a back end that never answers fails the open; 10 s was short of an
     * ASan daemon's answer on a host at load 20-30 */
    struct timeval tv = {.tv_sec = 60};
    setsockopt(c->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

    c->mem_size = mem_size;
    c->memfd = memfd_create("vbd-bench-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING); /* as QEMU's memfd backend */
    if (c->memfd < 0 || ftruncate(c->memfd, (off_t)mem_size) < 0)
        return seterr(err, errlen, "cannot create guest memory: %s", strerror(errno));
    c->mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, c->memfd, 0);
    if (c->mem == MAP_FAILED) {
        c->mem = NULL;
        return seterr(err, errlen, "cannot map guest memory: %s", strerror(errno));
    }

    uint64_t f;
    if (get_u64(c, VHOST_USER_GET_FEATURES, &f) < 0)
        return seterr(err, errlen, "'%s': no answer to VHOST_USER_GET_FEATURES (not a vhost-user back end?)", path);
    if (!(f & (1ull << VIRTIO_F_VERSION_1)))
        return seterr(err, errlen, "'%s': the back end does not offer VIRTIO_F_VERSION_1", path);
    uint64_t want = (1ull << VIRTIO_F_VERSION_1) | (1ull << VHOST_USER_F_PROTOCOL_FEATURES) | (1ull << VIRTIO_BLK_F_FLUSH) |
                    (1ull << VIRTIO_BLK_F_BLK_SIZE) | (1ull << VIRTIO_BLK_F_SEG_MAX) | (1ull << VIRTIO_BLK_F_MQ) |
                    (1ull << VIRTIO_BLK_F_RO) | (1ull << VIRTIO_BLK_F_DISCARD) | (1ull << VIRTIO_BLK_F_WRITE_ZEROES);
    if (flags & VHC_EVENT_IDX)
        want |= 1ull << VIRTIO_RING_F_EVENT_IDX;
    if (flags & VHC_INDIRECT)
        want |= 1ull << VIRTIO_RING_F_INDIRECT_DESC;
    c->features = f & want;
    c->event_idx = c->features & (1ull << VIRTIO_RING_F_EVENT_IDX);
    if (f & (1ull << VHOST_USER_F_PROTOCOL_FEATURES)) {
        uint64_t pf;
        if (get_u64(c, VHOST_USER_GET_PROTOCOL_FEATURES, &pf) < 0)
            return seterr(err, errlen, "'%s': no answer to VHOST_USER_GET_PROTOCOL_FEATURES", path);
        uint64_t pw = pf & ((1ull << VHOST_USER_PROTOCOL_F_MQ) | (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) | (1ull << VHOST_USER_PROTOCOL_F_CONFIG));
        if (vhc_send(c, VHOST_USER_SET_PROTOCOL_FEATURES, 0, &pw, 8, NULL, 0) < 0)
            return seterr(err, errlen, "'%s': connection lost", path);
        c->protocol_features = pw;
    }
    c->backend_queues = 1;
    if (c->protocol_features & (1ull << VHOST_USER_PROTOCOL_F_MQ)) {
        uint64_t n;
        if (get_u64(c, VHOST_USER_GET_QUEUE_NUM, &n) < 0)
            return seterr(err, errlen, "'%s': no answer to VHOST_USER_GET_QUEUE_NUM", path);
        c->backend_queues = n > 0xffff ? 0xffff : (uint16_t)n;
    }
    if (nqueues > c->backend_queues)
        return seterr(err, errlen, "'%s': the back end supports %u queues, %d requested", path, c->backend_queues,
                      nqueues);
    if (set_msg(c, VHOST_USER_SET_OWNER, NULL, 0, NULL, 0) < 0 || set_msg(c, VHOST_USER_SET_FEATURES, &c->features, 8, NULL, 0) < 0)
        return seterr(err, errlen, "'%s': VHOST_USER_SET_OWNER/VHOST_USER_SET_FEATURES refused", path);
    if (c->protocol_features & (1ull << VHOST_USER_PROTOCOL_F_CONFIG)) {
        uint8_t cfg[12 + 60] = {0};
        uint32_t sz = 60;
        memcpy(cfg + 4, &sz, 4);
        if (vhc_send(c, VHOST_USER_GET_CONFIG, 0, cfg, sizeof(cfg), NULL, 0) < 0 ||
            vhc_recv(c, VHOST_USER_GET_CONFIG, cfg, sizeof(cfg)) < 12 + 28)
            return seterr(err, errlen, "'%s': VHOST_USER_GET_CONFIG failed", path);
        memcpy(&c->capacity, cfg + 12, 8);
        memcpy(&c->blk_size, cfg + 12 + 20, 4);
    }
    if (!c->blk_size || !(c->features & (1ull << VIRTIO_BLK_F_BLK_SIZE)))
        c->blk_size = 512;
    if (c->blk_size < 512 || c->blk_size > (1u << 20) || (c->blk_size & (c->blk_size - 1)))
        return seterr(err, errlen, "'%s': the device reports a block size of %u bytes (a power of two 512..1M)",
                      path, c->blk_size);
    if (!c->capacity)
        return seterr(err, errlen, "'%s': the device reports no capacity (CONFIG not offered?)", path);
    if (c->capacity > (UINT64_MAX >> 9) / 2)
        return seterr(err, errlen, "'%s': the device reports an impossible capacity of %llu sectors", path,
                      (unsigned long long)c->capacity);

    struct {
        uint32_t n, pad;
        uint64_t gpa, size, qva, off;
    } mt = {1, 0, 0, mem_size, (uint64_t)(uintptr_t)c->mem, 0};
    if (set_msg(c, VHOST_USER_SET_MEM_TABLE, &mt, sizeof(mt), &c->memfd, 1) < 0)
        return seterr(err, errlen, "'%s': VHOST_USER_SET_MEM_TABLE refused", path);

    c->nqueues = nqueues;
    for (int i = 0; i < nqueues; i++) {
        struct vhc_queue *q = &c->q[i];
        q->num = ring_size;
        q->desc = vhc_alloc(c, 16 * (size_t)ring_size, 4096);
        /* + 2: used_event and avail_event (EVENT_IDX) follow the rings */
        q->avail = vhc_alloc(c, 6 + 2 * (size_t)ring_size + 2, 4096);
        q->used = vhc_alloc(c, 6 + 8 * (size_t)ring_size + 2, 4096);
        q->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        q->call_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (!q->desc || !q->avail || !q->used || q->kick_fd < 0 || q->call_fd < 0)
            return seterr(err, errlen, "out of guest memory for the rings");
        uint32_t st[2] = {(uint32_t)i, ring_size};
        struct {
            uint32_t index, flags;
            uint64_t desc, used, avail, log;
        } va = {(uint32_t)i, 0, (uint64_t)(uintptr_t)q->desc, (uint64_t)(uintptr_t)q->used,
                (uint64_t)(uintptr_t)q->avail, 0};
        uint32_t base[2] = {(uint32_t)i, 0};
        uint64_t idx = (uint64_t)i;
        uint32_t en[2] = {(uint32_t)i, 1};
        if (set_msg(c, VHOST_USER_SET_VRING_NUM, st, 8, NULL, 0) < 0 || set_msg(c, VHOST_USER_SET_VRING_BASE, base, 8, NULL, 0) < 0 ||
            set_msg(c, VHOST_USER_SET_VRING_ADDR, &va, sizeof(va), NULL, 0) < 0 ||
            set_msg(c, VHOST_USER_SET_VRING_CALL, &idx, 8, &q->call_fd, 1) < 0 ||
            set_msg(c, VHOST_USER_SET_VRING_KICK, &idx, 8, &q->kick_fd, 1) < 0)
            return seterr(err, errlen, "'%s': queue %d set-up refused", path, i);
        if ((c->features & (1ull << VHOST_USER_F_PROTOCOL_FEATURES)) && set_msg(c, VHOST_USER_SET_VRING_ENABLE, en, 8, NULL, 0) < 0)
            return seterr(err, errlen, "'%s': VHOST_USER_SET_VRING_ENABLE refused", path);
    }
    return 0;
}

void vhc_close(struct vhc *c)
{
    for (int i = 0; i < c->nqueues && c->sock >= 0; i++) {
        uint32_t st[2] = {(uint32_t)i, 0};
        if (vhc_send(c, VHOST_USER_GET_VRING_BASE, 0, st, 8, NULL, 0) == 0)
            vhc_recv(c, VHOST_USER_GET_VRING_BASE, st, 8);
    }
    for (int i = 0; i < VHC_MAX_QUEUES; i++) {
        if (c->q[i].kick_fd >= 0)
            close(c->q[i].kick_fd);
        if (c->q[i].call_fd >= 0)
            close(c->q[i].call_fd);
    }
    if (c->sock >= 0)
        close(c->sock);
    if (c->mem)
        munmap(c->mem, c->mem_size);
    if (c->memfd >= 0)
        close(c->memfd);
    memset(c, 0, sizeof(*c));
    c->sock = c->memfd = -1;
}

void vhc_set_desc(struct vhc *c, int q, uint16_t i, uint64_t gpa, uint32_t len, uint16_t flags, uint16_t next)
{
    struct vring_desc *d = (struct vring_desc *)c->q[q].desc + i;
    d->addr = gpa;
    d->len = len;
    d->flags = flags;
    d->next = next;
}

void vhc_offer(struct vhc *c, int q, uint16_t head)
{
    struct vhc_queue *vq = &c->q[q];
    struct vring_avail *a = vq->avail;
    a->ring[vq->avail_idx % vq->num] = head;
    vq->avail_idx++;
    __atomic_store_n(&a->idx, vq->avail_idx, __ATOMIC_RELEASE);
}

/* EVENT_IDX: the driver's used_event follows the available ring, the
 * device's avail_event the used ring (virtio 1.x, 2.7). */
static uint16_t *used_event(struct vhc_queue *vq)
{
    return &((struct vring_avail *)vq->avail)->ring[vq->num];
}

static uint16_t *avail_event(struct vhc_queue *vq)
{
    return (uint16_t *)&((struct vring_used *)vq->used)->ring[vq->num];
}

void vhc_kick(struct vhc *c, int q)
{
    struct vhc_queue *vq = &c->q[q];
    struct vring_used *u = vq->used;
    /* the new avail index before the device's wish: it publishes its wish,
     * then re-reads the avail index (the mirror of vhc_enable_interrupt) */
    vbd_smp_mb();
    bool kick;
    if (c->event_idx) {
        /* as Linux's virtqueue_kick_prepare: kick only if the entries added
         * since the last decision cross the index the device asked for */
        uint16_t ev = __atomic_load_n(avail_event(vq), __ATOMIC_ACQUIRE);
        kick = vring_need_event(ev, vq->avail_idx, vq->kicked_avail);
        vq->kicked_avail = vq->avail_idx;
    } else {
        kick = !(__atomic_load_n(&u->flags, __ATOMIC_ACQUIRE) & VRING_USED_F_NO_NOTIFY);
    }
    if (kick)
        eventfd_write(vq->kick_fd, 1);
}

int vhc_used(struct vhc *c, int q, uint32_t *id, uint32_t *len)
{
    struct vhc_queue *vq = &c->q[q];
    struct vring_used *u = vq->used;
    uint16_t idx = __atomic_load_n(&u->idx, __ATOMIC_ACQUIRE);
    if (idx == vq->last_used)
        return 0;
    if ((uint16_t)(idx - vq->last_used) > vq->num)
        return -1; /* more completions than the ring holds: a broken back end */
    struct vring_used_elem *e = &u->ring[vq->last_used % vq->num];
    *id = e->id;
    *len = e->len;
    vq->last_used++;
    return 1;
}

int vhc_wait(struct vhc *c, int timeout_ms)
{
    struct pollfd p[VHC_MAX_QUEUES];
    for (int i = 0; i < c->nqueues; i++)
        p[i] = (struct pollfd){.fd = c->q[i].call_fd, .events = POLLIN};
    int r = poll(p, (nfds_t)c->nqueues, timeout_ms);
    for (int i = 0; r > 0 && i < c->nqueues; i++)
        if (p[i].revents & POLLIN) {
            eventfd_t v;
            eventfd_read(c->q[i].call_fd, &v);
        }
    return r;
}

void vhc_set_no_interrupt(struct vhc *c, int q, bool on)
{
    if (on)
        vhc_disable_interrupt(c, q);
    else
        vhc_enable_interrupt(c, q);
}

void vhc_disable_interrupt(struct vhc *c, int q)
{
    struct vhc_queue *vq = &c->q[q];
    if (c->event_idx) {
        /* With EVENT_IDX the flags word must stay 0 (virtio 1.x, 2.7.7.2);
         * as Linux, used_event goes half the index space ahead, where the
         * device's used index does not reach while we drain. Interrupts left
         * off for long (busy polling) move it again every 0x4000
         * completions, before the used index can catch up with it. */
        if (!vq->irq_off || (uint16_t)(vq->last_used - vq->irq_off_at) >= 0x4000) {
            __atomic_store_n(used_event(vq), (uint16_t)(vq->last_used + 0x8000), __ATOMIC_RELAXED);
            vq->irq_off_at = vq->last_used;
        }
    } else if (!vq->irq_off) {
        __atomic_store_n(&((struct vring_avail *)vq->avail)->flags, VRING_AVAIL_F_NO_INTERRUPT, __ATOMIC_RELAXED);
    }
    vq->irq_off = true;
}

bool vhc_enable_interrupt(struct vhc *c, int q)
{
    struct vhc_queue *vq = &c->q[q];
    if (c->event_idx)
        __atomic_store_n(used_event(vq), vq->last_used, __ATOMIC_RELAXED); /* signal at the next completion */
    else if (vq->irq_off)
        __atomic_store_n(&((struct vring_avail *)vq->avail)->flags, 0, __ATOMIC_RELAXED);
    vq->irq_off = false;
    /* The store above before the used index is read again: the device
     * publishes the used index, then reads our wish. One of the two sees
     * the other's store, so a completion is either seen here or signalled;
     * without the barrier both could miss and the caller sleep forever. */
    vbd_smp_mb();
    return __atomic_load_n(&((struct vring_used *)vq->used)->idx, __ATOMIC_ACQUIRE) != vq->last_used;
}
