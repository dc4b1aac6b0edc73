// syscall-tax: runs a command with every system call made dearer, to stand
// in for a host where syscalls are slow (a PVM guest: ~1 us per null
// syscall, against ~0.17 us in a KVM guest) on a host where they are not.
//
//   syscall-tax [--ns N | --insns N] [--calibrate] [--] COMMAND [ARG...]
//
// It sets PR_SET_NO_NEW_PRIVS and installs seccomp filters that load
// syscall arguments many times over and then allow the call (every call,
// whatever it is: behaviour is unchanged, only slower), then execs COMMAND.
// The filters are inherited across fork, clone (threads) and exec, so every
// process and thread COMMAND starts pays the same.
//
// --ns N: the total cost wanted for getppid() (a null syscall), in ns; the
// instruction count is calibrated here, on this host, by timing getppid()
// in a child with growing filters. --insns N: that many loads, no
// calibration. --calibrate: print "insns N ns-before B ns-after A" and exit.
//
// Limits (bench/RESULTS.md's section of 2026-12-05 measures them):
// - The kernel's seccomp action cache (5.11+) skips filters whose verdict
//   depends only on the syscall number and arch; loading args[] makes the
//   verdict depend on the arguments, so the filter runs on every call.
// - One filter holds at most BPF_MAXINSNS (4096) instructions, and all the
//   filters of a task together at most MAX_INSNS_PER_PATH (32768, counting
//   4 more per filter): more cost than that cannot be added.
// - io_uring requests the kernel completes inline or in its io-wq workers
//   (kernel threads, copied from the submitter but they make no syscalls)
//   pay nothing; io_uring_enter itself pays. Page faults, interrupts and
//   context switches are not syscalls and are not taxed either.
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// 4096 per filter, minus the arch check and the final return
#define PER_FILTER (BPF_MAXINSNS - 8)
// MAX_INSNS_PER_PATH is 32768 (with 4 instructions of overhead per filter)
#define MAX_TOTAL 32000

static int install_one(unsigned n)
{
    struct sock_filter *f = calloc(n + 2, sizeof(*f));
    if (!f)
        return -1;
    unsigned i = 0;
    // Loads of the six args (low words) in turn: an argument-dependent
    // filter, which the action cache cannot mark "always allow".
    for (; i < n; i++) {
        uint32_t off = offsetof(struct seccomp_data, args) + (i % 6) * sizeof(uint64_t);
        f[i] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, off);
    }
    f[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {.len = (unsigned short)i, .filter = f};
    int rc = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
    free(f);
    return rc;
}

// n loads, in filters of at most PER_FILTER
static int install(unsigned n)
{
    if (n > MAX_TOTAL) {
        fprintf(stderr, "syscall-tax: %u loads: more than the kernel allows (%d)\n", n, MAX_TOTAL);
        return -1;
    }
    while (n > 0) {
        unsigned k = n > PER_FILTER ? PER_FILTER : n;
        if (install_one(k) < 0) {
            fprintf(stderr, "syscall-tax: seccomp: %s\n", strerror(errno));
            return -1;
        }
        n -= k;
    }
    return 0;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

// ns per getppid(): the best of 41 short runs of 2000 (the best: other
// sessions' load only ever adds, and a short run is more often untouched)
static double getppid_ns(void)
{
    double best = 1e18;
    for (int r = 0; r < 41; r++) {
        double t0 = now_ns();
        for (int i = 0; i < 2000; i++)
            syscall(SYS_getppid);
        double d = (now_ns() - t0) / 2000;
        if (d < best)
            best = d;
    }
    return best;
}

// ns per getppid() with n loads installed, measured in a child (filters
// cannot be removed once installed); < 0 on failure
static double measure(unsigned n)
{
    int p[2];
    if (pipe(p) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        double d = install(n) < 0 ? -1 : getppid_ns();
        ssize_t w = write(p[1], &d, sizeof(d));
        _exit(w == sizeof(d) ? 0 : 1);
    }
    close(p[1]);
    double d = -1;
    if (read(p[0], &d, sizeof(d)) != sizeof(d))
        d = -1;
    close(p[0]);
    waitpid(pid, NULL, 0);
    return d;
}

// the load count that brings getppid() to ~target ns in total: the cost
// is linear in the count, so two points give the slope
static long calibrate(double target, double *base)
{
    *base = measure(0);
    if (*base < 0 || target <= *base)
        return *base < 0 ? -1 : 0;
    unsigned probe = 4000;
    double at = measure(probe);
    if (at < 0)
        return -1;
    double per = (at - *base) / probe;
    if (per <= 0)
        return -1;
    long n = (long)((target - *base) / per);
    if (n > MAX_TOTAL)
        n = MAX_TOTAL;
    // one refinement at the estimate (the slope bends a little with the
    // number of filters)
    double got = measure((unsigned)n);
    if (got > *base) {
        per = (got - *base) / n;
        n = (long)((target - *base) / per);
        if (n > MAX_TOTAL)
            n = MAX_TOTAL;
    }
    return n;
}

static void usage(void)
{
    fprintf(stderr, "usage: syscall-tax [--ns N | --insns N] [--calibrate] [--] COMMAND [ARG...]\n");
    exit(2);
}

// a non-negative count given as WHAT (an option or a variable), or exit 2
static long count_arg(const char *what, const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0) {
        fprintf(stderr, "syscall-tax: %s: '%s' is not a count (a non-negative integer)\n", what, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    long ns = -1, insns = -1;
    int only_calibrate = 0, i = 1;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--ns") && i + 1 < argc)
            ns = count_arg("--ns", argv[++i]);
        else if (!strcmp(argv[i], "--insns") && i + 1 < argc)
            insns = count_arg("--insns", argv[++i]);
        else if (!strcmp(argv[i], "--calibrate"))
            only_calibrate = 1;
        else if (!strcmp(argv[i], "--")) {
            i++;
            break;
        } else if (argv[i][0] == '-')
            usage();
        else
            break;
    }
    if ((ns < 0) == (insns < 0) || (!only_calibrate && i >= argc))
        usage();
    // without privileges, seccomp filters need no_new_privs (also for the
    // calibration's children, which inherit it)
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        perror("syscall-tax: PR_SET_NO_NEW_PRIVS");
        return 1;
    }
    double base = -1;
    if (ns >= 0) {
        // The calibration is cached for the benchmarks' many starts:
        // SYSCALL_TAX_INSNS set by the caller skips it.
        const char *c = getenv("SYSCALL_TAX_INSNS");
        insns = c && !only_calibrate ? count_arg("SYSCALL_TAX_INSNS", c) : calibrate((double)ns, &base);
        if (insns < 0) {
            fprintf(stderr, "syscall-tax: calibration failed\n");
            return 1;
        }
    }
    if (only_calibrate) {
        if (base < 0)
            base = measure(0);
        printf("insns %ld ns-before %.0f ns-after %.0f\n", insns, base, measure((unsigned)insns));
        return 0;
    }
    if (install((unsigned)insns) < 0)
        return 1;
    execvp(argv[i], argv + i);
    fprintf(stderr, "syscall-tax: %s: %s\n", argv[i], strerror(errno));
    return 127;
}
