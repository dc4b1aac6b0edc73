/* SPDX-License-Identifier: MIT */
/*
 * Guest memory and split virtqueues as a vhost-user back end sees them.
 * Everything the guest controls (descriptor addresses, lengths, indices,
 * flags) is untrusted: every access goes through the memory table and
 * every chain is bounded. Kept free of sockets so that unit tests and the
 * fuzzer can build hostile rings in plain memory.
 */
#ifndef VBD_VIRTQUEUE_H
#define VBD_VIRTQUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define VU_MAX_MEM_REGIONS 32
#define VU_MAX_QUEUE_SIZE  1024
/* Longest chain we map: a full ring, or an indirect table of that size,
 * plus splits where a buffer crosses memory regions. */
#define VU_MAX_IOV (VU_MAX_QUEUE_SIZE + 16)
#define VU_MAX_IOV_TEXT "1040" /* for messages; blk.c asserts it is VU_MAX_IOV */

struct vu_mem_region {
    uint64_t gpa;  /* guest physical address */
    uint64_t size;
    uint64_t qva;  /* the front end's virtual address (ring addresses use it) */
    uint8_t *host; /* our mapping of gpa */
    void *mmap_base;
    size_t mmap_len;
};

struct vu_mem {
    int nregions;
    struct vu_mem_region r[VU_MAX_MEM_REGIONS];
};

/* Host pointer for [gpa, gpa+len) when it lies inside one region, else NULL. */
void *vu_gpa_to_host(const struct vu_mem *m, uint64_t gpa, uint64_t len);
void *vu_qva_to_host(const struct vu_mem *m, uint64_t qva, uint64_t len);
/* The guest address of host pointer p (a buffer mapped by vu_vq_pop, which
 * lies inside one region): true with *gpa set, false outside guest memory. */
bool vu_host_to_gpa(const struct vu_mem *m, const void *p, uint64_t len, uint64_t *gpa);

/* Marks the guest pages of [gpa, gpa+len) dirty in a dirty log of size
 * bytes (vhost-user "Migration": bit page%8 of byte page/8), each byte by
 * an atomic OR: the front end and the other rings' threads share the log.
 * False when some page lies beyond the log (nothing marked then). */
bool vu_log_mark(uint8_t *log, uint64_t size, uint64_t gpa, uint64_t len);

/* Per-descriptor record of the shared inflight region (split rings), so a
 * restarted back end can find the requests that were in flight. */
struct vu_inflight_desc {
    uint8_t inflight;
    uint8_t padding[5];
    uint16_t next;
    uint64_t counter;
};
struct vu_inflight_queue {
    uint64_t features;
    uint16_t version;
    uint16_t desc_num;
    uint16_t last_batch_head;
    uint16_t used_idx;
    struct vu_inflight_desc desc[];
};
size_t vu_inflight_queue_size(uint16_t queue_size);

struct vring_desc;
struct vring_avail;
struct vring_used;

struct vu_vq {
    uint16_t num;
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    uint16_t last_avail_idx;
    /* Entries from last_avail_idx on that the driver is known to have made
     * available (the avail index read by the last vu_vq_pop that looked):
     * a pop takes the next of them without reading avail->idx again. That
     * index is the line the driver writes at every request; read per pop, it
     * moved between the two CPUs at every request when the device kept pace
     * with the driver (the slow mode of 2-queue 4K QD32, vu9). 0: unknown,
     * read it; whatever sets last_avail_idx sets this to 0. */
    uint16_t avail_known;
    uint16_t used_idx;
    /* The memory region (an index into the table: it may change between
     * chains) the last chain's last buffer lay in: the next chain's first
     * buffer is tried there before the table is searched. */
    uint8_t region_hint;
    uint16_t signalled_used;
    bool signalled_used_valid;
    bool event_idx;
    bool indirect;
    bool broken; /* set on a malformed ring: no further processing until reset */
    struct vu_inflight_queue *inflight;
    uint64_t inflight_counter;
    /* While the used ring's writes are logged for a migration (VHOST_F_LOG_ALL
     * and the ring's VHOST_VRING_F_LOG): the front end's dirty log (bytes
     * of bits, one per guest page) and the guest address the used ring's
     * first byte is logged at. NULL: not logged (the hot path's one test). */
    uint8_t *used_log;
    uint64_t used_log_size, used_log_gpa;
};

/* A popped chain: out (device-readable) segments first, then in. */
struct vu_elem {
    uint16_t head;
    int out_num, in_num;
    /* the sums of the out and of the in segments' lengths, added up by the
     * chain walk that maps them (a device's decode need not loop again) */
    uint64_t out_bytes, in_bytes;
    struct iovec *iov;
    int iov_cap;
};

/* Returns 1 with *e filled, 0 when the ring is empty, or a negative errno
 * when the ring or chain is refused and the queue is then broken: -E2BIG
 * when the chain has more segments than e->iov_cap (a caller may retry with
 * a larger vector after clearing vq->broken), -EFAULT when a buffer lies
 * outside guest memory, -EINVAL for any other malformed ring or chain.
 * *why names the reason, for the log line only; callers compare errnos. */
int vu_vq_pop(struct vu_vq *vq, const struct vu_mem *m, struct vu_elem *e, const char **why);

/* Whether the pops have taken every entry the last read of the avail index
 * counted (the next pop reads it again). */
static inline bool vu_vq_batch_done(const struct vu_vq *vq)
{
    return vq->avail_known == 0;
}
/* Maps the chain at head (used when resubmitting inflight requests); errors
 * as vu_vq_pop's. */
int vu_vq_map_chain(struct vu_vq *vq, const struct vu_mem *m, uint16_t head, struct vu_elem *e, const char **why);
/* vu_vq_map_chain without its walk for the common chains (virtqueue.c,
 * map_chain_common): every chain, every refusal. For the tests and the
 * fuzzer, which check that both walks map a chain alike. */
int vu_vq_map_chain_general(struct vu_vq *vq, const struct vu_mem *m, uint16_t head, struct vu_elem *e,
                            const char **why);
/* Adds one used element and publishes it. */
void vu_vq_push(struct vu_vq *vq, uint16_t head, uint32_t len);
/* After pushes: true when the driver wants an interrupt now (EVENT_IDX aware). */
bool vu_vq_should_notify(struct vu_vq *vq);
/* With EVENT_IDX: how many completions past the one the driver asked to be
 * signalled for have been pushed (1: the signal is due with the last push),
 * 0 when the driver asked for none among them (or interrupts are off).
 * A hint (no barrier): vu_vq_should_notify decides. */
uint16_t vu_vq_completions_waited(const struct vu_vq *vq);
/* With EVENT_IDX: ask for a kick at the next avail entry; returns true if
 * more entries arrived meanwhile (the caller pops again). */
bool vu_vq_enable_notification(struct vu_vq *vq);
/* While the device polls the ring: ask the driver not to kick. */
void vu_vq_disable_notification(struct vu_vq *vq);
/* Count of avail entries not yet popped, or -1 if the index is impossible. */
int vu_vq_pending(const struct vu_vq *vq);
/* Whether at least n avail entries are not yet popped. The entries the
 * last read of the avail index counted (avail_known) answer without
 * reading it again: that index is the line the driver writes at every
 * request, most often a cache miss. */
static inline bool vu_vq_pending_at_least(const struct vu_vq *vq, int n)
{
    return vq->avail_known >= n || vu_vq_pending(vq) >= n;
}

/* Inflight region bookkeeping (no-ops without a region). */
void vu_vq_inflight_get(struct vu_vq *vq, uint16_t head);
/* Start of a ring with a region: repairs the last batch, returns the heads
 * still in flight in submission order (n written to *count, at most cap). */
int vu_vq_inflight_recover(struct vu_vq *vq, uint16_t *heads, int cap);

#endif
