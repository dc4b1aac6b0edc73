// wake-cost: what the two per-request costs that bound vhost-user-blk's
// null-node 64K rows cost on this host, for bench/vhost-user*.sh's header
// (a kind of host, as the syscall's cost is):
//
//   wake-cost [ROUNDS]   (default 400)
//
// - wake: one eventfd write (a back end's call-eventfd signal) that wakes a
//   thread sleeping in poll() on the other CPU (the bench's client, on CPU
//   1; the writer runs on CPU 0 as the servers do), the writer's own time in
//   the call, and how long after the write the woken thread runs. The
//   sleeper's CPU is idle between rounds (200 us apart), as the client's is
//   while it waits; on a guest whose idle vCPU halts (guest_halt_poll_ns=0)
//   the wake is an IPI to a halted vCPU, paid by the writer.
// - write: the same write with nobody asleep on the eventfd (a signal the
//   client does not wait for): a plain syscall.
// - fill: one 64 KiB zero fill (glibc's memset, what a null-co read-zeroes
//   read of one 64 KiB segment does) rotating over 8 and 16 buffers in a
//   shared memfd, as guest memory is: the working sets of the 1-queue and
//   2-queue QD8 rows (0.5 and 1 MiB).
//
// Prints one line: "wake W ns (runs after L ns), write N ns, 64K fill F8/F16 ns"
// (medians). Not a test; the figures move with the host's load.
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    return sched_setaffinity(0, sizeof(s), &s);
}

static int efd;
static uint64_t woke_ns; // when the sleeper last ran after a wake (atomic)

static void *sleeper(void *arg)
{
    (void)arg;
    pin(1);
    for (;;) {
        struct pollfd p = {.fd = efd, .events = POLLIN};
        if (poll(&p, 1, -1) < 0)
            continue;
        __atomic_store_n(&woke_ns, now_ns(), __ATOMIC_RELEASE);
        eventfd_t v;
        eventfd_read(efd, &v);
    }
    return NULL;
}

static int by_value(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), by_value);
    return v[n / 2];
}

static void spin_until(uint64_t t)
{
    while (now_ns() < t)
        ;
}

// median ns of one 64 KiB fill over `slots` buffers (blocks of 256 fills)
static uint64_t fill_ns(int slots)
{
    const size_t size = 64u << 10, stride = size + 4096; // not all on the same cache sets
    int fd = memfd_create("wake-cost", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)(stride * (size_t)slots)) < 0)
        return 0;
    char *m = mmap(NULL, stride * (size_t)slots, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return 0;
    enum { BLOCKS = 31, PER = 256 };
    uint64_t t[BLOCKS];
    for (int b = 0; b < BLOCKS; b++) {
        uint64_t a = now_ns();
        for (int i = 0; i < PER; i++) {
            char *p = m + (size_t)(i % slots) * stride;
            memset(p, 0, size);
            __asm__ volatile("" : : "r"(p) : "memory"); // the stores happen
        }
        t[b] = (now_ns() - a) / PER;
    }
    munmap(m, stride * (size_t)slots);
    return median(t, BLOCKS);
}

int main(int argc, char **argv)
{
    long rounds = 400;
    if (argc > 2) {
        fprintf(stderr, "wake-cost: one argument at most (ROUNDS), not %d\n", argc - 1);
        return 2;
    }
    if (argc == 2) {
        char *end;
        rounds = strtol(argv[1], &end, 10);
        if (end == argv[1] || *end || rounds < 3 || rounds > 100000) {
            fprintf(stderr, "wake-cost: ROUNDS '%s': expected a count from 3 to 100000\n", argv[1]);
            return 2;
        }
    }
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) < 0 || !CPU_ISSET(0, &allowed) || !CPU_ISSET(1, &allowed)) {
        fprintf(stderr, "wake-cost: needs CPUs 0 and 1 (the benchmarks' server and client CPUs)\n");
        return 2;
    }
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_t t;
    if (efd < 0 || pin(0) < 0 || pthread_create(&t, NULL, sleeper, NULL) != 0) {
        perror("wake-cost");
        return 1;
    }
    uint64_t *wake = calloc((size_t)rounds, sizeof(*wake)), *lat = calloc((size_t)rounds, sizeof(*lat)),
             *plain = calloc((size_t)rounds, sizeof(*plain));
    if (!wake || !lat || !plain) {
        fprintf(stderr, "wake-cost: out of memory\n");
        return 1;
    }
    int n = 0;
    for (int i = 0; i < rounds; i++) {
        spin_until(now_ns() + 200000); // the sleeper is back in poll() and its CPU idle
        uint64_t before = __atomic_load_n(&woke_ns, __ATOMIC_ACQUIRE);
        uint64_t a = now_ns();
        eventfd_write(efd, 1);
        uint64_t b = now_ns();
        uint64_t w;
        while ((w = __atomic_load_n(&woke_ns, __ATOMIC_ACQUIRE)) == before && now_ns() - a < 100000000)
            ;
        if (w == before)
            continue; // not woken in 100 ms: a stalled host, not a figure
        wake[n] = b - a;
        lat[n] = w > a ? w - a : 0;
        n++;
    }
    // nobody waits: a second eventfd, never polled
    int quiet = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    for (int i = 0; i < rounds; i++) {
        uint64_t a = now_ns();
        eventfd_write(quiet, 1);
        plain[i] = now_ns() - a;
    }
    close(quiet);
    if (n < 3) {
        fprintf(stderr, "wake-cost: the sleeping thread was not woken within 100 ms in %d of %ld rounds\n",
                (int)rounds - n, rounds);
        return 1;
    }
    printf("wake %llu ns (runs after %llu ns), write %llu ns, 64K fill %llu/%llu ns\n",
           (unsigned long long)median(wake, n), (unsigned long long)median(lat, n),
           (unsigned long long)median(plain, (int)rounds), (unsigned long long)fill_ns(8),
           (unsigned long long)fill_ns(16));
    free(wake);
    free(lat);
    free(plain);
    return 0;
}
