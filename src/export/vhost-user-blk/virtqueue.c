/* SPDX-License-Identifier: MIT */
/* Split virtqueue processing over untrusted guest memory (virtio 1.x, 2.7). */
#include "virtqueue.h"

#include "vbd/barrier.h"
#include "vbd/vhost-user-protocol.h"


#include <errno.h>
#include <stddef.h>
#include <linux/virtio_ring.h>
#include <stdlib.h>
#include <string.h>

static inline uint16_t load_acquire16(const volatile uint16_t *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline void store_release16(volatile uint16_t *p, uint16_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

void *vu_gpa_to_host(const struct vu_mem *m, uint64_t gpa, uint64_t len)
{
    for (int i = 0; i < m->nregions; i++) {
        const struct vu_mem_region *r = &m->r[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size && len <= r->size - (gpa - r->gpa))
            return r->host + (gpa - r->gpa);
    }
    return NULL;
}

void *vu_qva_to_host(const struct vu_mem *m, uint64_t qva, uint64_t len)
{
    for (int i = 0; i < m->nregions; i++) {
        const struct vu_mem_region *r = &m->r[i];
        if (qva >= r->qva && qva - r->qva < r->size && len <= r->size - (qva - r->qva))
            return r->host + (qva - r->qva);
    }
    return NULL;
}

bool vu_host_to_gpa(const struct vu_mem *m, const void *p, uint64_t len, uint64_t *gpa)
{
    uintptr_t a = (uintptr_t)p;
    for (int i = 0; i < m->nregions; i++) {
        const struct vu_mem_region *r = &m->r[i];
        uintptr_t h = (uintptr_t)r->host;
        if (a >= h && a - h < r->size && len <= r->size - (a - h)) {
            *gpa = r->gpa + (a - h);
            return true;
        }
    }
    return false;
}

bool vu_log_mark(uint8_t *log, uint64_t size, uint64_t gpa, uint64_t len)
{
    if (!len)
        return true;
    uint64_t first = gpa / VHOST_LOG_PAGE, last = (gpa + len - 1) / VHOST_LOG_PAGE;
    if (gpa + len < gpa || last / 8 >= size)
        return false;
    for (uint64_t page = first; page <= last; page++)
        __atomic_fetch_or(&log[page / 8], (uint8_t)(1u << (page % 8)), __ATOMIC_RELAXED);
    return true;
}

/* The used ring's bytes [off, off+len) were written: logged while a
 * migration asks for it. A log too small for the ring was refused when the
 * ring's log address was set (vhost-user.c, log_apply_here). */
static inline void log_used(struct vu_vq *vq, uint64_t off, uint64_t len)
{
    if (__builtin_expect(vq->used_log != NULL, 0))
        vu_log_mark(vq->used_log, vq->used_log_size, vq->used_log_gpa + off, len);
}

/* The ring slot of a free-running 16-bit index. The rings of a front end
 * have a power-of-two size (SET_VRING_NUM refuses others): a mask, where
 * the division it replaces was the costliest instruction of a pop and a
 * push. Other sizes (the fuzzer's rings) still divide. */
static inline uint16_t ring_slot(const struct vu_vq *vq, uint16_t idx)
{
    uint16_t num = vq->num;
    return (num & (num - 1)) == 0 ? (uint16_t)(idx & (num - 1)) : (uint16_t)(idx % num);
}

/* A buffer may span adjacent regions: map it piecewise. *hint is set to
 * the region it (its last piece) lies in. */
static int map_buffer(const struct vu_mem *m, uint64_t gpa, uint32_t len, struct vu_elem *e, int *n,
                      const struct vu_mem_region **hint)
{
    while (len) {
        const struct vu_mem_region *r = NULL;
        for (int i = 0; i < m->nregions; i++)
            if (gpa >= m->r[i].gpa && gpa - m->r[i].gpa < m->r[i].size) {
                r = &m->r[i];
                break;
            }
        if (!r)
            return -EFAULT;
        *hint = r;
        uint64_t avail = r->size - (gpa - r->gpa);
        uint32_t chunk = avail < len ? (uint32_t)avail : len;
        if (*n >= e->iov_cap)
            return -E2BIG;
        e->iov[*n].iov_base = r->host + (gpa - r->gpa);
        e->iov[*n].iov_len = chunk;
        (*n)++;
        gpa += chunk;
        len -= chunk;
    }
    return 0;
}

__attribute__((noinline)) int vu_vq_map_chain_general(struct vu_vq *vq, const struct vu_mem *m, uint16_t head,
                                                    struct vu_elem *e, const char **why)
{
    const struct vring_desc *table = vq->desc;
    unsigned max = vq->num, idx = head, seen = 0;
    bool in_indirect = false;
    struct iovec *iov = e->iov;
    const int cap = e->iov_cap;
    int n = 0, nout = 0, nin = 0;
    uint64_t out_bytes = 0, in_bytes = 0;
    /* regions never overlap (guest-memory.c refuses it): any region the
     * buffer lies wholly inside is the one the search would find. No
     * hint: a region of size 0, which holds nothing */
    const struct vu_mem_region *hint = vq->region_hint < m->nregions ? &m->r[vq->region_hint] : NULL;
    uint64_t h_gpa = hint ? hint->gpa : 0, h_size = hint ? hint->size : 0;
    uint8_t *h_host = hint ? hint->host : NULL;
    e->head = head;
    e->out_num = e->in_num = 0;
    e->out_bytes = e->in_bytes = 0;
    if (head >= vq->num) {
        *why = "descriptor head index out of range";
        return -EINVAL;
    }
    for (;;) {
        if (++seen > max) {
            *why = "descriptor chain longer than its table (a loop?)";
            return -EINVAL;
        }
        struct vring_desc d;
        memcpy(&d, (const void *)&table[idx], sizeof(d)); /* one snapshot: the guest may change it meanwhile */
        if (d.flags & VRING_DESC_F_INDIRECT) {
            if (!vq->indirect) {
                *why = "indirect descriptor without the feature";
                return -EINVAL;
            }
            if (in_indirect) {
                *why = "indirect table inside an indirect table";
                return -EINVAL;
            }
            if (d.flags & VRING_DESC_F_NEXT) {
                *why = "indirect descriptor with the NEXT flag";
                return -EINVAL;
            }
            if (d.len == 0 || d.len % sizeof(struct vring_desc) || d.len / sizeof(struct vring_desc) > VU_MAX_QUEUE_SIZE) {
                *why = "indirect table of a bad size";
                return -EINVAL;
            }
            table = vu_gpa_to_host(m, d.addr, d.len);
            if (!table) {
                *why = "indirect table outside guest memory";
                return -EINVAL;
            }
            in_indirect = true;
            max = d.len / sizeof(struct vring_desc);
            idx = 0;
            seen = 0;
            continue;
        }
        bool writable = d.flags & VRING_DESC_F_WRITE;
        if (!writable && nin) {
            *why = "device-readable descriptor after a device-writable one";
            return -EINVAL;
        }
        int before = n;
        uint64_t off = d.addr - h_gpa;
        if (d.len && off < h_size && d.len <= h_size - off && n < cap) {
            /* Whole inside the region of the previous buffer (of this
             * chain, or the last chain's last), as a chain's buffers
             * nearly always are: regions never overlap, so this is what
             * map_buffer's search in table order would find, without the
             * search. */
            iov[n].iov_base = h_host + off;
            iov[n].iov_len = d.len;
            n++;
        } else {
            int rc = map_buffer(m, d.addr, d.len, e, &n, &hint);
            if (rc < 0) {
                *why = rc == -E2BIG ? "too many segments in one request" : "buffer outside guest memory";
                return rc;
            }
            if (hint) {
                h_gpa = hint->gpa;
                h_size = hint->size;
                h_host = hint->host;
            }
        }
        if (writable) {
            nin += n - before;
            in_bytes += d.len;
        } else {
            nout += n - before;
            out_bytes += d.len;
        }
        if (!(d.flags & VRING_DESC_F_NEXT))
            break;
        if (d.next >= max) {
            *why = "next descriptor index out of range";
            return -EINVAL;
        }
        idx = d.next;
    }
    e->out_num = nout;
    e->in_num = nin;
    e->out_bytes = out_bytes;
    e->in_bytes = in_bytes;
    if (hint)
        vq->region_hint = (uint8_t)(hint - m->r);
    return 0;
}

/*
 * The chains every driver sends: direct descriptors, or one indirect table
 * (Linux uses one per request once INDIRECT_DESC is negotiated), each
 * buffer non-empty and wholly inside the memory region the last chain's
 * last buffer lay in, readable ones first, no more of them than the vector
 * holds. Mapped by a tight walk that keeps its state in registers: every
 * such descriptor is one segment, so the segment count also bounds the
 * walk (a loop ends at the table's size, as `seen` does below). Anything
 * else, refusals included, is left to vu_vq_map_chain_general, which walks the
 * chain again from its head with its own snapshots and gives the same
 * result for the chains this one takes (2q 64K reads: map_chain 230 -> ~100
 * instructions per request, callgrind). Returns 0 when it did not map the
 * chain (nothing in *e but iov entries it may have written).
 */
static inline bool map_chain_common(const struct vu_vq *vq, const struct vu_mem *m, uint16_t head, struct vu_elem *e)
{
    const struct vring_desc *table = vq->desc;
    unsigned max = vq->num, idx = head;
    if (head >= max || vq->region_hint >= m->nregions)
        return false;
    const struct vu_mem_region *r = &m->r[vq->region_hint];
    const uint64_t h_gpa = r->gpa, h_size = r->size;
    uint8_t *const h_host = r->host;
    struct vring_desc d;
    memcpy(&d, (const void *)&table[idx], sizeof(d)); /* one snapshot: the guest may change it meanwhile */
    if (d.flags & VRING_DESC_F_INDIRECT) {
        if (!vq->indirect || (d.flags & VRING_DESC_F_NEXT) || d.len == 0 || d.len % sizeof(struct vring_desc) ||
            d.len / sizeof(struct vring_desc) > VU_MAX_QUEUE_SIZE)
            return false;
        uint64_t off = d.addr - h_gpa;
        if (off >= h_size || d.len > h_size - off)
            return false;
        table = (const struct vring_desc *)(h_host + off);
        max = d.len / sizeof(struct vring_desc);
        idx = 0;
        memcpy(&d, (const void *)&table[0], sizeof(d));
    }
    struct iovec *iov = e->iov;
    unsigned lim = max < (unsigned)e->iov_cap ? max : (unsigned)e->iov_cap, n = 0, nin = 0;
    uint64_t out_bytes = 0, in_bytes = 0;
    for (;;) {
        uint64_t off = d.addr - h_gpa;
        if ((d.flags & VRING_DESC_F_INDIRECT) || d.len == 0 || off >= h_size || d.len > h_size - off)
            return false;
        if (d.flags & VRING_DESC_F_WRITE) {
            nin++;
            in_bytes += d.len;
        } else {
            if (nin)
                return false;
            out_bytes += d.len;
        }
        iov[n].iov_base = h_host + off;
        iov[n].iov_len = d.len;
        n++;
        if (!(d.flags & VRING_DESC_F_NEXT))
            break;
        if (d.next >= max || n >= lim)
            return false;
        idx = d.next;
        memcpy(&d, (const void *)&table[idx], sizeof(d));
    }
    e->head = head;
    e->out_num = (int)(n - nin);
    e->in_num = (int)nin;
    e->out_bytes = out_bytes;
    e->in_bytes = in_bytes;
    return true;
}

int vu_vq_map_chain(struct vu_vq *vq, const struct vu_mem *m, uint16_t head, struct vu_elem *e, const char **why)
{
    if (map_chain_common(vq, m, head, e))
        return 0;
    return vu_vq_map_chain_general(vq, m, head, e, why);
}

int vu_vq_pending(const struct vu_vq *vq)
{
    uint16_t avail_idx = load_acquire16(&vq->avail->idx);
    uint16_t n = (uint16_t)(avail_idx - vq->last_avail_idx);
    return n > vq->num ? -1 : n;
}

int vu_vq_pop(struct vu_vq *vq, const struct vu_mem *m, struct vu_elem *e, const char **why)
{
    if (vq->broken) {
        *why = "queue is broken";
        return -EINVAL;
    }
    if (vq->avail_known == 0) {
        int pending = vu_vq_pending(vq); /* its acquire orders the reads of every entry it counts */
        if (pending < 0) {
            *why = "available index moved by more than the queue size";
            vq->broken = true;
            return -EINVAL;
        }
        if (pending == 0)
            return 0;
        vq->avail_known = (uint16_t)pending;
    }
    uint16_t head = vq->avail->ring[ring_slot(vq, vq->last_avail_idx)];
    int rc = vu_vq_map_chain(vq, m, head, e, why);
    if (rc < 0) {
        vq->broken = true;
        return rc;
    }
    vq->last_avail_idx++;
    vq->avail_known--;
    vu_vq_inflight_get(vq, head);
    return 1;
}

void vu_vq_inflight_get(struct vu_vq *vq, uint16_t head)
{
    if (!vq->inflight)
        return;
    vq->inflight->desc[head].counter = vq->inflight_counter++;
    vq->inflight->desc[head].inflight = 1;
}

void vu_vq_push(struct vu_vq *vq, uint16_t head, uint32_t len)
{
    struct vu_inflight_queue *q = vq->inflight;
    if (q)
        q->last_batch_head = head;
    uint16_t slot = ring_slot(vq, vq->used_idx);
    struct vring_used_elem *u = &vq->used->ring[slot];
    u->id = head;
    u->len = len;
    log_used(vq, offsetof(struct vring_used, ring) + slot * sizeof(*u), sizeof(*u));
    vq->used_idx++;
    store_release16(&vq->used->idx, vq->used_idx);
    log_used(vq, offsetof(struct vring_used, idx), sizeof(vq->used->idx));
    if (q) {
        q->desc[head].inflight = 0;
        __atomic_store_n(&q->used_idx, vq->used_idx, __ATOMIC_RELEASE); /* after the entry is cleared */
    }
}

bool vu_vq_should_notify(struct vu_vq *vq)
{
    /* the used index must be visible before we read the driver's wishes */
    vbd_smp_mb();
    if (!vq->event_idx)
        return !(load_acquire16(&vq->avail->flags) & VRING_AVAIL_F_NO_INTERRUPT);
    uint16_t old = vq->signalled_used, new_idx = vq->used_idx;
    bool valid = vq->signalled_used_valid;
    vq->signalled_used = new_idx;
    vq->signalled_used_valid = true;
    if (!valid)
        return true;
    uint16_t used_event = load_acquire16(&vq->avail->ring[vq->num]);
    return vring_need_event(used_event, new_idx, old);
}

uint16_t vu_vq_completions_waited(const struct vu_vq *vq)
{
    /* a hint for when to signal, not the decision (vu_vq_should_notify's,
     * behind its barrier): a stale read only moves a signal later */
    uint16_t used_event = load_acquire16(&vq->avail->ring[vq->num]);
    uint16_t past = (uint16_t)(vq->used_idx - used_event);
    return past <= vq->num ? past : 0;
}

bool vu_vq_enable_notification(struct vu_vq *vq)
{
    if (vq->event_idx) {
        /* avail_event lives after the used ring */
        uint16_t *avail_event = (uint16_t *)&vq->used->ring[vq->num];
        store_release16(avail_event, vq->last_avail_idx);
        log_used(vq, offsetof(struct vring_used, ring) + vq->num * sizeof(struct vring_used_elem), 2);
    } else {
        store_release16(&vq->used->flags, load_acquire16(&vq->used->flags) & ~VRING_USED_F_NO_NOTIFY);
        log_used(vq, offsetof(struct vring_used, flags), 2);
    }
    vbd_smp_mb();
    return vu_vq_pending(vq) != 0;
}

void vu_vq_disable_notification(struct vu_vq *vq)
{
    /* with EVENT_IDX nothing to write: avail_event is left behind, so the
     * driver stops kicking once it has passed it */
    if (!vq->event_idx) {
        store_release16(&vq->used->flags, load_acquire16(&vq->used->flags) | VRING_USED_F_NO_NOTIFY);
        log_used(vq, offsetof(struct vring_used, flags), 2);
    }
}

size_t vu_inflight_queue_size(uint16_t queue_size)
{
    size_t s = sizeof(struct vu_inflight_queue) + (size_t)queue_size * sizeof(struct vu_inflight_desc);
    return (s + 63) & ~(size_t)63;
}

struct counter_head {
    uint64_t counter;
    uint16_t head;
};

static int by_counter(const void *a, const void *b)
{
    const struct counter_head *x = a, *y = b;
    return x->counter < y->counter ? -1 : x->counter > y->counter;
}

int vu_vq_inflight_recover(struct vu_vq *vq, uint16_t *heads, int cap)
{
    struct vu_inflight_queue *q = vq->inflight;
    if (!q)
        return 0;
    uint16_t used_idx = load_acquire16(&vq->used->idx);
    if (q->version == 0 || q->desc_num != vq->num) {
        /* fresh region (or a ring of another size): nothing to recover */
        memset(q->desc, 0, (size_t)vq->num * sizeof(q->desc[0]));
        q->version = 1;
        q->desc_num = vq->num;
        q->used_idx = used_idx;
        vq->inflight_counter = 1;
        return 0;
    }
    if (q->used_idx != used_idx) {
        /* we died between publishing the used index and clearing the entry */
        q->desc[q->last_batch_head % vq->num].inflight = 0;
        __atomic_store_n(&q->used_idx, used_idx, __ATOMIC_RELEASE); /* after the entry is cleared */
    }
    struct counter_head *list = malloc(sizeof(*list) * vq->num);
    if (!list)
        return -ENOMEM;
    int n = 0;
    uint64_t max = 0;
    for (uint16_t i = 0; i < vq->num; i++) {
        if (q->desc[i].inflight != 1)
            continue;
        list[n].counter = q->desc[i].counter;
        list[n].head = i;
        if (list[n].counter > max)
            max = list[n].counter;
        n++;
    }
    qsort(list, n, sizeof(*list), by_counter);
    if (n > cap)
        n = cap;
    for (int i = 0; i < n; i++)
        heads[i] = list[i].head;
    free(list);
    vq->inflight_counter = max + 1;
    /* every popped request is either in the used ring or still in flight */
    vq->used_idx = used_idx;
    vq->last_avail_idx = (uint16_t)(used_idx + n);
    vq->avail_known = 0;
    return n;
}
