/* SPDX-License-Identifier: MIT */
#include "vbd/alloc.h"
#include "vbd/iov.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int vbd_iov_slice(struct iovec *dst, int cap, const struct iovec *src, int niov, size_t off, size_t len)
{
    int n = 0;
    for (int i = 0; i < niov && len > 0; i++) {
        if (off >= src[i].iov_len) {
            off -= src[i].iov_len;
            continue;
        }
        if (n == cap)
            return -1;
        size_t take = src[i].iov_len - off;
        if (take > len)
            take = len;
        dst[n].iov_base = (char *)src[i].iov_base + off;
        dst[n].iov_len = take;
        n++;
        len -= take;
        off = 0;
    }
    return len ? -1 : n;
}

static size_t iov_copy(const struct iovec *iov, int niov, size_t off, void *buf, size_t len, int to_buf)
{
    size_t done = 0;
    for (int i = 0; i < niov && done < len; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t take = iov[i].iov_len - off;
        if (take > len - done)
            take = len - done;
        if (to_buf)
            memcpy((char *)buf + done, (char *)iov[i].iov_base + off, take);
        else
            memcpy((char *)iov[i].iov_base + off, (const char *)buf + done, take);
        done += take;
        off = 0;
    }
    return done;
}

size_t vbd_iov_to_buf(const struct iovec *iov, int niov, size_t off, void *buf, size_t len)
{
    return iov_copy(iov, niov, off, buf, len, 1);
}

size_t vbd_iov_from_buf(const struct iovec *iov, int niov, size_t off, const void *buf, size_t len)
{
    return iov_copy(iov, niov, off, (void *)buf, len, 0);
}

/*
 * Zeroes for reads of holes and of null-co's read-zeroes (vbd_iov_memset
 * with c == 0) go straight into guest memory, which a Linux guest gives as
 * page-sized segments that are not contiguous (a 64K read: sixteen 4 KiB
 * descriptors). glibc's memset fills each with rep stosb, whose start-up
 * cost is paid per call: on this AMD Zen 3 host 16 x 4 KiB a page apart
 * took 1251-1266 ns (memset 1307) where a loop of 32-byte AVX2 stores took
 * 1117-1120; one 64 KiB segment is level (923-1013 vs 950-1026), and an
 * SSE2 loop (16-byte stores) was slower than both (1318-1652). vhost-user
 * null 64K reads in 16 segments QD8: 5-9 % more IOPS, 8-9 % less server
 * CPU per request (RESULTS.md 2026-12-06, vuperf19). Segments of 64 KiB
 * and more keep glibc's memset, which may pick non-temporal stores for
 * huge ones; without AVX2 (or off x86-64) everything does.
 * Non-temporal stores (or clzero) for a 64 KiB fill are not a win either:
 * 1.6-1.8 us against memset's 0.9-1.2 when nobody reads the data (the
 * benchmark), and a reader on the other vCPU then reads it from DRAM
 * (4.0-4.7 us per 64 KiB against 1.4-1.5 when the vCPUs sit near each
 * other); only in runs where the two vCPUs were far apart (likely the
 * host's placement, which we cannot see) and the reader still held the
 * lines did cached stores cost more (12-16 us against 2.3-2.6)
 * (RESULTS.md 2026-12-06, vu20).
 */
#define ZERO_LOOP_MIN 128        /* the loop's step */
#define ZERO_LOOP_MAX (64u << 10) /* from here on, glibc's */
#if defined(__x86_64__)
__attribute__((target("avx2"))) static void zero_avx2(void *p, size_t n) /* n: a non-zero multiple of 128 */
{
    /* asm, not intrinsics: a compiler may turn a loop of zero stores back into a call to memset */
    __asm__ volatile("vpxor %%xmm0, %%xmm0, %%xmm0\n"
                     "1:\n"
                     "vmovdqu %%ymm0, (%0)\n"
                     "vmovdqu %%ymm0, 32(%0)\n"
                     "vmovdqu %%ymm0, 64(%0)\n"
                     "vmovdqu %%ymm0, 96(%0)\n"
                     "add $128, %0\n"
                     "sub $128, %1\n"
                     "jnz 1b\n"
                     "vzeroupper\n"
                     : "+r"(p), "+r"(n)
                     :
                     : "xmm0", "memory", "cc");
}
#endif

static void zero_fill(void *p, size_t n)
{
#if defined(__x86_64__)
    if (n >= ZERO_LOOP_MIN && n < ZERO_LOOP_MAX && __builtin_cpu_supports("avx2")) {
        size_t body = n & ~(size_t)(ZERO_LOOP_MIN - 1);
        zero_avx2(p, body);
        if (n > body)
            memset((char *)p + body, 0, n - body);
        return;
    }
#endif
    memset(p, 0, n);
}

size_t vbd_iov_memset(const struct iovec *iov, int niov, size_t off, int c, size_t len)
{
    size_t done = 0;
    for (int i = 0; i < niov && done < len; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t take = iov[i].iov_len - off;
        if (take > len - done)
            take = len - done;
        if (c == 0)
            zero_fill((char *)iov[i].iov_base + off, take);
        else
            memset((char *)iov[i].iov_base + off, c, take);
        done += take;
        off = 0;
    }
    return done;
}

int vbd_buffer_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    /* Head bytes until 8-aligned, then 64 bytes per step, then the tail. */
    while (len && ((uintptr_t)p & 7)) {
        if (*p)
            return 0;
        p++, len--;
    }
    const uint64_t *q = (const uint64_t *)p;
    while (len >= 64) {
        if (q[0] | q[1] | q[2] | q[3] | q[4] | q[5] | q[6] | q[7])
            return 0;
        q += 8;
        len -= 64;
    }
    p = (const unsigned char *)q;
    while (len--)
        if (*p++)
            return 0;
    return 1;
}

void *vbd_alloc_aligned(size_t align, size_t size)
{
    void *p = NULL;
    if (align < sizeof(void *))
        align = sizeof(void *);
    if (posix_memalign(&p, align, size ? size : align) != 0)
        vbd_out_of_memory(size);
    return p;
}

/* An O_DIRECT request reaches a virtio disk as one descriptor per
 * physically contiguous run of its buffer: from 4 KiB pages a 2 MiB read
 * was four requests of 254 + 2 + 254 + 2 pages (the queue's 254-segment
 * limit), each page a descriptor the host handles on its own; from a huge
 * page it is one request of one segment. 512 x 2 MiB O_DIRECT reads at QD1
 * on this project's Firecracker guest: 2.6-2.9 s from 4 KiB pages, 0.47-0.54 s
 * from a huge page; 512 x 1 MiB writes 2.5-3.4 s and 1.1-2.4 s
 * (2026-12-06). Page-cache copies from it take fewer TLB misses and one
 * fault per 2 MiB. */
#define TRANSFER_PAGE (2u << 20)

static size_t transfer_span(size_t size)
{
    return size ? (size + TRANSFER_PAGE - 1) / TRANSFER_PAGE * TRANSFER_PAGE : TRANSFER_PAGE;
}

void *vbd_alloc_transfer_buffer(size_t size)
{
    size_t span = transfer_span(size);
    /* one huge page more than needed, for the alignment; the rest is unmapped */
    uint8_t *raw = mmap(NULL, span + TRANSFER_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        vbd_out_of_memory(size);
    uint8_t *p = (uint8_t *)(((uintptr_t)raw + TRANSFER_PAGE - 1) & ~(uintptr_t)(TRANSFER_PAGE - 1));
    if (p > raw)
        munmap(raw, (size_t)(p - raw));
    if (p + span < raw + span + TRANSFER_PAGE)
        munmap(p + span, (size_t)(raw + span + TRANSFER_PAGE - (p + span)));
    /* advice only: without THP (or with it off) these are plain pages */
    (void)madvise(p, span, MADV_HUGEPAGE);
    return p;
}

void vbd_free_transfer_buffer(void *p, size_t size)
{
    if (p)
        munmap(p, transfer_span(size));
}
