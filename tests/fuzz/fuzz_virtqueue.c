/* Fuzz target: arbitrary bytes become guest memory holding a split ring
 * (descriptors, available ring, indirect tables). Every chain popped is
 * touched end to end (ASan catches any byte outside the region) and given
 * back; a malformed ring must be refused, never followed. */
#include "virtqueue.h"

#include <linux/virtio_ring.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GPA_BASE 0x10000ull
#define MEM 65536

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    /* exactly MEM bytes, so ASan sees any access past the region */
    uint8_t *mem = malloc(MEM);
    for (size_t i = 0; i < MEM; i++)
        mem[i] = size > 4 ? data[4 + i % (size - 4)] : 0;
    struct vu_mem m = {.nregions = 1};
    m.r[0] = (struct vu_mem_region){.gpa = GPA_BASE, .size = MEM, .qva = GPA_BASE, .host = mem};
    uint16_t num = (uint16_t)(data[0] % 64 + 1);
    struct vu_vq vq = {
        .num = num,
        .desc = (struct vring_desc *)mem,
        .avail = (struct vring_avail *)(mem + 16 * num),
        .used = (struct vring_used *)(mem + 32768),
        .indirect = data[1] & 1,
        .event_idx = data[1] & 2,
        .last_avail_idx = data[2],
    };
    static struct iovec iov[VU_MAX_IOV], iov2[VU_MAX_IOV];
    struct vu_elem e = {.iov = iov, .iov_cap = (data[3] & 1) ? VU_MAX_IOV : 8};
    for (int round = 0; round < num + 2; round++) {
        const char *why = NULL;
        int rc = vu_vq_pop(&vq, &m, &e, &why);
        if (rc <= 0) {
            if (rc < 0 && !why)
                abort(); /* a refusal always names its reason */
            break;
        }
        /* the general walk maps the chain alike (vu_vq_map_chain may have
         * taken it by its walk for common chains) */
        struct vu_vq again = vq;
        struct vu_elem e2 = {.iov = iov2, .iov_cap = e.iov_cap};
        const char *why2 = NULL;
        if (vu_vq_map_chain_general(&again, &m, e.head, &e2, &why2) != 0 || e2.out_num != e.out_num ||
            e2.in_num != e.in_num || e2.out_bytes != e.out_bytes || e2.in_bytes != e.in_bytes ||
            memcmp(iov2, iov, sizeof(iov[0]) * (size_t)(e.out_num + e.in_num)))
            abort();
        uint32_t total = 0;
        for (int i = 0; i < e.out_num + e.in_num; i++) {
            volatile uint8_t *p = iov[i].iov_base;
            for (size_t j = 0; j < iov[i].iov_len; j++)
                total += p[j];
            if (i >= e.out_num && iov[i].iov_len)
                p[iov[i].iov_len - 1] = (uint8_t)total; /* the device writes into writable buffers only */
        }
        vu_vq_push(&vq, e.head, 1);
        vu_vq_should_notify(&vq);
        vu_vq_enable_notification(&vq);
    }
    free(mem);
    return 0;
}
