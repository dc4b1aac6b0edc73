/* SPDX-License-Identifier: MIT */
/*
 * vhost-user back end: the front end's memory regions. Each region is
 * checked (backed by its fd to the last byte, no overlap) and mapped
 * before the table changes; the change itself waits for every ring to go
 * quiet and translates the running rings again after it (their pointers
 * must never outlive a mapping). Runs on the device's control loop, in the
 * message handler's coroutine (see vhost-user.h).
 */
#include "guest-memory.h"

#include "vbd/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

/* SET_MEM_TABLE's and ADD/REM_MEM_REG's region (little-endian, packed as in the spec) */
struct vu_region_wire {
    uint64_t gpa, size, qva, mmap_offset;
};


static void unmap_region(struct vu_mem_region *r)
{
    if (r->mmap_base)
        munmap(r->mmap_base, r->mmap_len);
    memset(r, 0, sizeof(*r));
}

/* [a, a+alen) and [b, b+blen) meet (lengths non-zero, ends may be 2^64). */
static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a - b < blen || b - a < alen;
}

/* A region must be backed by its fd to its last byte: a mapping past the
 * end of the file faults (SIGBUS) at the first access, and the guest
 * chooses which addresses we touch. A memfd is sealed against shrinking
 * first (QEMU seals its memfd backends itself), so the size checked here
 * stays true: a front end cannot truncate the memory under a running ring.
 * A memfd already sealed with F_SEAL_SEAL, a tmpfs or hugetlbfs file cannot
 * be protected so; a front end that truncates its own guest's memory then
 * kills us as it kills its guest. */
int vu_region_fits_fd(struct vu_dev *dev, const char *what, int fd, uint64_t offset, uint64_t size)
{
    struct stat st;
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
        vbd_debug("%s: %s: the memory fd cannot be sealed against shrinking: %s", dev->name, what, strerror(errno));
    if (fstat(fd, &st) < 0) {
        vbd_error_report("%s: %s: cannot inspect the memory fd: %s", dev->name, what, strerror(errno));
        return -EINVAL;
    }
    if (!S_ISREG(st.st_mode)) {
        vbd_error_report("%s: %s: the memory fd is not a file or memfd (mode 0%o)", dev->name, what,
                         (unsigned)(st.st_mode & S_IFMT));
        return -EINVAL;
    }
    if (offset + size < offset || offset + size > (uint64_t)st.st_size || offset + size > SIZE_MAX) {
        vbd_error_report("%s: %s: %llu bytes at offset %llu go past the end of its fd (%lld bytes)", dev->name,
                         what, (unsigned long long)size, (unsigned long long)offset, (long long)st.st_size);
        return -EINVAL;
    }
    return 0;
}

/* The region must not overlap the regions of mem (in guest physical or in
 * front-end virtual addresses): a translation would depend on the order. */
static int region_check(struct vu_dev *dev, const char *what, const struct vu_region_wire *w, const struct vu_mem *mem)
{
    if (!w->size || (w->gpa + w->size < w->gpa && w->gpa + w->size != 0) ||
        (w->qva + w->size < w->qva && w->qva + w->size != 0)) {
        vbd_error_report("%s: %s: region of %llu bytes at guest address 0x%llx (front end 0x%llx) is empty or wraps",
                         dev->name, what, (unsigned long long)w->size, (unsigned long long)w->gpa,
                         (unsigned long long)w->qva);
        return -EINVAL;
    }
    for (int i = 0; i < mem->nregions; i++) {
        const struct vu_mem_region *o = &mem->r[i];
        if (ranges_overlap(w->gpa, w->size, o->gpa, o->size) || ranges_overlap(w->qva, w->size, o->qva, o->size)) {
            vbd_error_report("%s: %s: region at guest address 0x%llx overlaps the one at 0x%llx", dev->name, what,
                             (unsigned long long)w->gpa, (unsigned long long)o->gpa);
            return -EINVAL;
        }
    }
    return 0;
}

static int map_region(struct vu_dev *dev, const struct vu_region_wire *w, int fd, struct vu_mem_region *r)
{
    if (vu_region_fits_fd(dev, "memory region", fd, w->mmap_offset, w->size) < 0)
        return -EINVAL;
    size_t len = w->mmap_offset + w->size;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED) {
        vbd_error_report("%s: cannot map guest memory (%llu bytes): %s", dev->name, (unsigned long long)len,
                         strerror(errno));
        return -errno;
    }
    r->gpa = w->gpa;
    r->size = w->size;
    r->qva = w->qva;
    r->mmap_base = p;
    r->mmap_len = len;
    r->host = (uint8_t *)p + w->mmap_offset;
    return 0;
}

/* Stop taking requests, wait for the ones in flight: they point into the old mappings. */
static void mem_quiesce(struct vu_dev *dev)
{
    /* a ring thread that sees the flag pops nothing more; the visit to its
     * loop comes after every pop it had started */
    __atomic_store_n(&dev->mem_changing, true, __ATOMIC_RELEASE);
    for (int i = 0; i < dev->max_queues; i++)
        if (dev->queues[i]) {
            struct vbd_loop *prev = vu_queue_enter(dev->queues[i]);
            vu_queue_wait_idle(dev->queues[i]);
            vu_queue_leave(prev);
        }
}

static void mem_resume(struct vu_dev *dev)
{
    for (int i = 0; i < dev->max_queues; i++) {
        struct vu_queue *q = dev->queues[i];
        if (!q)
            continue;
        struct vbd_loop *prev = vu_queue_enter(q);
        if (!q->started) {
            /* translated again when it starts: nothing may point into the old mappings meanwhile */
            q->vq.desc = NULL;
            q->vq.avail = NULL;
            q->vq.used = NULL;
        } else if (vu_queue_translate_rings(dev, q) && !q->vq.broken) {
            /* a running ring whose memory went away fails; it keeps no pointer into the old mapping */
            vu_queue_fail(q, "its rings are no longer in guest memory (a region was removed while it ran)");
        }
        vu_queue_leave(prev);
    }
    __atomic_store_n(&dev->mem_changing, false, __ATOMIC_RELEASE);
    for (int i = 0; i < dev->max_queues; i++) {
        struct vu_queue *q = dev->queues[i];
        if (q && q->started) {
            struct vbd_loop *prev = vu_queue_enter(q);
            if (vu_queue_can_process(q))
                dev->ops->queue_kick(q);
            vu_queue_leave(prev);
        }
    }
}

void vu_mem_clear(struct vu_dev *dev)
{
    for (int i = 0; i < dev->mem.nregions; i++)
        unmap_region(&dev->mem.r[i]);
    dev->mem.nregions = 0;
}

int vu_mem_set_table(struct vu_dev *dev, const uint8_t *payload, uint32_t size, const int *fds, int nfds)
{
    uint32_t n = 0;
    memcpy(&n, payload, 4);
    if (size < 8 || n > VU_MAX_MEM_REGIONS || size != 8 + n * sizeof(struct vu_region_wire) ||
        (int)n != nfds) {
        vbd_error_report("%s: SET_MEM_TABLE of %u bytes with %u regions and %d fds (at most %d regions, one fd each)",
                         dev->name, size, n, nfds, VU_MAX_MEM_REGIONS);
        return -EINVAL;
    }
    struct vu_mem fresh = {0};
    for (uint32_t i = 0; i < n; i++) {
        struct vu_region_wire w;
        memcpy(&w, payload + 8 + i * sizeof(w), sizeof(w));
        if (region_check(dev, "SET_MEM_TABLE", &w, &fresh) < 0 || map_region(dev, &w, fds[i], &fresh.r[i]) < 0) {
            for (uint32_t j = 0; j < i; j++)
                unmap_region(&fresh.r[j]);
            return -EINVAL;
        }
        fresh.nregions++;
    }
    mem_quiesce(dev);
    vu_mem_clear(dev);
    dev->mem = fresh;
    mem_resume(dev);
    return 0;
}

int vu_mem_add_region(struct vu_dev *dev, const uint8_t *payload, uint32_t size, const int *fds, int nfds)
{
    struct vu_region_wire w;
    if (size < 8 + sizeof(w) || nfds != 1) {
        vbd_error_report("%s: ADD_MEM_REG without a region or its fd", dev->name);
        return -EINVAL;
    }
    memcpy(&w, payload + 8, sizeof(w));
    if (dev->mem.nregions >= VU_MAX_MEM_REGIONS) {
        vbd_error_report("%s: ADD_MEM_REG beyond %d regions", dev->name, VU_MAX_MEM_REGIONS);
        return -ENOSPC;
    }
    for (int i = 0; i < dev->mem.nregions; i++) {
        const struct vu_mem_region *o = &dev->mem.r[i];
        if (o->gpa == w.gpa && o->size == w.size && o->qva == w.qva) {
            vbd_debug("%s: ADD_MEM_REG of a region we have already", dev->name);
            return 0;
        }
    }
    struct vu_mem_region r;
    if (region_check(dev, "ADD_MEM_REG", &w, &dev->mem) < 0 || map_region(dev, &w, fds[0], &r) < 0)
        return -EINVAL;
    mem_quiesce(dev);
    dev->mem.r[dev->mem.nregions++] = r;
    mem_resume(dev);
    return 0;
}

int vu_mem_remove_region(struct vu_dev *dev, const uint8_t *payload, uint32_t size)
{
    struct vu_region_wire w;
    if (size < 8 + sizeof(w))
        return -EINVAL;
    memcpy(&w, payload + 8, sizeof(w));
    for (int i = 0; i < dev->mem.nregions; i++) {
        struct vu_mem_region *r = &dev->mem.r[i];
        if (r->gpa == w.gpa && r->size == w.size) {
            mem_quiesce(dev);
            unmap_region(r);
            dev->mem.r[i] = dev->mem.r[--dev->mem.nregions];
            memset(&dev->mem.r[dev->mem.nregions], 0, sizeof(*r));
            mem_resume(dev);
            return 0;
        }
    }
    vbd_error_report("%s: REM_MEM_REG of a region that is not mapped", dev->name);
    return -ENOENT;
}
