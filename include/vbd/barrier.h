/* SPDX-License-Identifier: MIT */
#ifndef VBD_BARRIER_H
#define VBD_BARRIER_H

/*
 * A full memory barrier between this process and another one sharing the
 * memory (a guest's virtqueue, the VMM's inflight region): stores before it
 * are visible before loads after it. ThreadSanitizer does not model
 * fences, so its builds use a sequentially consistent read-modify-write,
 * which it does model and which is a full barrier on x86 (a locked
 * instruction) as well.
 */
#if defined(__SANITIZE_THREAD__)
#define VBD_TSAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define VBD_TSAN_BUILD 1
#endif
#endif

#ifdef VBD_TSAN_BUILD
static inline void vbd_smp_mb(void)
{
    static int word;
    __atomic_fetch_add(&word, 0, __ATOMIC_SEQ_CST);
}
#else
static inline void vbd_smp_mb(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
#endif

#endif
