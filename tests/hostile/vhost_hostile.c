/* SPDX-License-Identifier: MIT */
/*
 * A hostile vhost-user front end: it plays a malicious or buggy VMM against
 * a running vbd-daemon (vhost-user-blk export, 2 queues) and checks, case
 * by case, that the daemon refuses the bad message with a line in its log
 * (NACKed when REPLY_ACK is on), drops the connection cleanly, and serves a
 * well-behaved front end right after. The daemon's fd count and RSS are
 * measured after the first round and after the last: they must stay flat.
 *
 *   vhost_hostile SOCKET DAEMON_LOG DAEMON_PID ROUNDS [MAX_RSS_GROWTH_KB] [CASE]
 *
 * With --backend it plays a hostile back end for one front end (vbd-bench):
 *
 *   vhost_hostile --backend SOCKET KIND
 *
 * Waits are on conditions (a line in the log, a used ring entry), each
 * bounded by a generous deadline; nothing depends on timing.
 */
#include "vbd/vhost-user-protocol.h" /* the wire format, as the daemon reads it */
#include "vhost-client/vhost_client.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_ring.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MEM (1u << 20)
#define DEADLINE_NS (60ull * 1000000000ull)

static const char *sock_path, *log_path;
static pid_t daemon_pid;
static long case_off; /* the daemon log's size when the current case began */
static int conns;     /* connections the current case opened (each must be logged as disconnected) */
static char why[512];

static int failf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    return -1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void pause_ms(int ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- the daemon's log -------------------------------------------------- */

static long log_size(void)
{
    struct stat st;
    return stat(log_path, &st) == 0 ? (long)st.st_size : 0;
}

/* The log from off on (malloc'd, NUL-terminated). */
static char *log_since(long off)
{
    FILE *f = fopen(log_path, "r");
    if (!f)
        return strdup("");
    fseek(f, 0, SEEK_END);
    long end = ftell(f);
    long n = end > off ? end - off : 0;
    char *buf = malloc((size_t)n + 1);
    fseek(f, off, SEEK_SET);
    n = (long)fread(buf, 1, (size_t)n, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static int count_in(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* Waits until the log since off holds expect (if any) and `disconnects`
 * disconnection lines. */
static int wait_log(long off, const char *expect, int disconnects)
{
    uint64_t deadline = now_ns() + DEADLINE_NS;
    for (;;) {
        char *text = log_since(off);
        bool seen = !expect || strstr(text, expect);
        int d = count_in(text, "front end disconnected");
        bool sanitizer = strstr(text, "Sanitizer") || strstr(text, "runtime error");
        free(text);
        if (sanitizer)
            return failf("sanitizer report in the daemon log");
        if (kill(daemon_pid, 0) < 0)
            return failf("the daemon died");
        if (seen && d >= disconnects)
            return 0;
        if (now_ns() > deadline)
            return seen ? failf("the daemon logged %d of %d disconnections", d, disconnects)
                        : failf("no '%s' in the daemon log", expect);
        pause_ms(5);
    }
}

/* ---- connections and messages ------------------------------------------ */

static int raw_connect(struct vhc *c)
{
    memset(c, 0, sizeof(*c));
    c->memfd = -1;
    for (int i = 0; i < VHC_MAX_QUEUES; i++)
        c->q[i].kick_fd = c->q[i].call_fd = -1;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
    c->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->sock < 0 || connect(c->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return failf("cannot connect: %s", strerror(errno));
    struct timeval tv = {.tv_sec = 60};
    setsockopt(c->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    conns++;
    return 0;
}

/* A negotiated front end with ring 0 running (ring 1 left unset). */
static int good_open(struct vhc *c)
{
    char err[256];
    conns++;
    if (vhc_open(c, sock_path, 1, 8, MEM, 0, err, sizeof(err)) < 0) {
        vhc_close(c);
        return failf("a good front end was refused: %s", err);
    }
    return 0;
}

/* Sends with NEED_REPLY: the back end must answer with a failure. */
static int expect_nack(struct vhc *c, uint32_t req, const void *payload, uint32_t size, const int *fds,
                       int nfds)
{
    uint64_t v = 0;
    if (vhc_send(c, req, VHOST_USER_FLAG_NEED_REPLY, payload, size, fds, nfds) < 0)
        return failf("cannot send request %u", req);
    if (vhc_recv(c, req, &v, 8) != 8)
        return failf("no reply to request %u", req);
    return v ? 0 : failf("request %u was accepted", req);
}

static int expect_ack(struct vhc *c, uint32_t req, const void *payload, uint32_t size, const int *fds,
                      int nfds)
{
    uint64_t v = 1;
    if (vhc_send(c, req, VHOST_USER_FLAG_NEED_REPLY, payload, size, fds, nfds) < 0 || vhc_recv(c, req, &v, 8) != 8)
        return failf("no reply to request %u", req);
    return v == 0 ? 0 : failf("request %u was refused", req);
}

/* A header that may lie about the payload size, and any number of fds. */
static int raw_send(int sock, uint32_t req, uint32_t flags, uint32_t size, const void *payload, size_t len,
                    const int *fds, int nfds)
{
    uint8_t buf[12 + 256];
    memcpy(buf, &req, 4);
    memcpy(buf + 4, &flags, 4);
    memcpy(buf + 8, &size, 4);
    if (len > 256)
        return -1;
    memcpy(buf + 12, payload, len);
    struct iovec iov = {buf, 12 + len};
    char cbuf[CMSG_SPACE(sizeof(int) * 32)];
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds) {
        memset(cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    }
    return sendmsg(sock, &mh, MSG_NOSIGNAL) == (ssize_t)(12 + len) ? 0 : -1;
}

static int memfd_of(size_t size)
{
    int fd = memfd_create("hostile", MFD_CLOEXEC);
    if (fd >= 0 && ftruncate(fd, (off_t)size) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void close_all(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

struct region {
    uint64_t gpa, size, qva, offset;
};
struct mem_reg_msg {
    uint32_t pad, pad2;
    struct region r;
};

/* ADD_MEM_REG of r backed by fd must be refused. */
static int add_region_refused(struct region r, int fd)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    struct mem_reg_msg m = {0, 0, r};
    int rc = expect_nack(&c, VHOST_USER_ADD_MEM_REG, &m, sizeof(m), &fd, 1);
    close(fd);
    vhc_close(&c);
    return rc;
}

/* SET_MEM_TABLE of n regions with nfds fds must be refused. */
static int mem_table_refused(const struct region *r, uint32_t n, const int *fds, int nfds)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint8_t buf[8 + 8 * sizeof(struct region)] = {0};
    uint32_t shown = n > 8 ? 8 : n;
    memcpy(buf, &n, 4);
    memcpy(buf + 8, r, shown * sizeof(*r));
    int rc = expect_nack(&c, VHOST_USER_SET_MEM_TABLE, buf, 8 + shown * (uint32_t)sizeof(*r), fds, nfds);
    vhc_close(&c);
    return rc;
}

/* One read on ring q (descriptors 0-2 of a ring that took none yet),
 * completed with status OK. */
static int one_read_on(struct vhc *c, int q, bool wait_irq)
{
    struct virtio_blk_outhdr *h = vhc_alloc(c, sizeof(*h), 16);
    uint8_t *buf = vhc_alloc(c, 512, 512), *status = vhc_alloc(c, 1, 1);
    if (!h || !buf || !status)
        return failf("out of guest memory");
    h->type = VIRTIO_BLK_T_IN;
    h->sector = 0;
    *status = 0xff;
    vhc_set_desc(c, q, 0, vhc_gpa(c, h), sizeof(*h), VRING_DESC_F_NEXT, 1);
    vhc_set_desc(c, q, 1, vhc_gpa(c, buf), 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    vhc_set_desc(c, q, 2, vhc_gpa(c, status), 1, VRING_DESC_F_WRITE, 0);
    vhc_offer(c, q, 0);
    vhc_kick(c, q);
    uint64_t deadline = now_ns() + DEADLINE_NS;
    uint32_t id, len;
    while (!vhc_used(c, q, &id, &len)) {
        if (now_ns() > deadline)
            return failf("the request on ring %d was never completed", q);
        if (wait_irq)
            vhc_wait(c, 1000);
        else
            pause_ms(1);
    }
    return id == 0 && *status == VIRTIO_BLK_S_OK ? 0
                                                 : failf("request completed as id %u status %u", id, *status);
}

/* One request on ring 0, completed with status OK. */
static int one_read(struct vhc *c, bool wait_irq)
{
    return one_read_on(c, 0, wait_irq);
}

static int good_client(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    int rc = one_read(&c, true);
    vhc_close(&c);
    return rc;
}

/* Ring 1 (not running on a fresh good connection): the addresses given. */
static int vring_addr_refused(uint32_t flags, uint64_t desc_off, uint64_t avail_off, uint64_t used_off)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint64_t base = (uint64_t)(uintptr_t)c.mem + 0x80000;
    struct {
        uint32_t index, flags;
        uint64_t desc, used, avail, log;
    } va = {1, flags, base + desc_off, base + 0x1000 + used_off, base + 0x2000 + avail_off, base + 0x3000};
    uint32_t st[2] = {1, 8};
    int rc = expect_ack(&c, VHOST_USER_SET_VRING_NUM, st, 8, NULL, 0);
    if (rc == 0)
        rc = expect_nack(&c, VHOST_USER_SET_VRING_ADDR, &va, sizeof(va), NULL, 0);
    vhc_close(&c);
    return rc;
}

/* Ring 0 restarted with kick_fd: the ring must fail (logged), nothing spins. */
static int bad_kick_fd(int kick_fd)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint64_t idx = 0;
    /* accepted (it is a valid fd), then refused when the ring watches it */
    vhc_send(&c, VHOST_USER_SET_VRING_KICK, VHOST_USER_FLAG_NEED_REPLY, &idx, 8, &kick_fd, 1);
    uint64_t v;
    int rc = vhc_recv(&c, VHOST_USER_SET_VRING_KICK, &v, 8) == 8 ? 0 : failf("no reply to SET_VRING_KICK");
    /* the ring fails when its loop sees the fd: wait for it before hanging up */
    if (rc == 0)
        rc = wait_log(case_off, "the kick file descriptor", 0);
    close(kick_fd);
    vhc_close(&c);
    return rc;
}

/* ---- the cases ---------------------------------------------------------- */

static int c_mem_past_fd(void)
{
    return add_region_refused((struct region){1ull << 32, MEM, 1ull << 40, 0}, memfd_of(65536));
}

/* The front end shrinks its (sealable, as QEMU makes them) memfd after
 * handing it over: refused by the seal the back end put on it, and the
 * ring goes on working (without the seal, the next request would touch a
 * page past the end: SIGBUS). */
static int c_mem_shrunk_after_handover(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    int rc = 0;
    if (ftruncate(c.memfd, 4096) == 0)
        rc = failf("the front end could shrink guest memory under the back end's mapping");
    else if (errno != EPERM)
        rc = failf("shrinking the memfd failed with %s, expected EPERM (sealed)", strerror(errno));
    if (rc == 0)
        rc = one_read(&c, true);
    vhc_close(&c);
    return rc;
}

static int c_mem_offset_past_fd(void)
{
    return add_region_refused((struct region){1ull << 32, 65536, 1ull << 40, 1 << 20}, memfd_of(65536));
}

static int c_mem_offset_wraps(void)
{
    return add_region_refused((struct region){1ull << 32, 8192, 1ull << 40, UINT64_MAX - 4095},
                              memfd_of(65536));
}

static int c_mem_gpa_wraps(void)
{
    return add_region_refused((struct region){UINT64_MAX - 4095, 8192, 1ull << 40, 0}, memfd_of(65536));
}

static int c_mem_qva_wraps(void)
{
    return add_region_refused((struct region){1ull << 32, 8192, UINT64_MAX - 4095, 0}, memfd_of(65536));
}

static int c_mem_empty(void)
{
    return add_region_refused((struct region){1ull << 32, 0, 1ull << 40, 0}, memfd_of(65536));
}

static int c_mem_overlap(void)
{
    /* the good client's RAM is at guest address 0 */
    return add_region_refused((struct region){4096, 65536, 1ull << 40, 0}, memfd_of(65536));
}

static int c_mem_not_a_file(void)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return failf("pipe");
    close(p[0]);
    return add_region_refused((struct region){1ull << 32, 4096, 1ull << 40, 0}, p[1]);
}

static int c_mem_table_overlap(void)
{
    int fds[2] = {memfd_of(MEM), memfd_of(MEM)};
    struct region r[2] = {{0, MEM, 1ull << 40, 0}, {MEM / 2, MEM, 1ull << 41, 0}};
    int rc = mem_table_refused(r, 2, fds, 2);
    close_all(fds, 2);
    return rc;
}

static int c_mem_table_fd_count(void)
{
    int fd = memfd_of(MEM);
    struct region r[2] = {{0, MEM, 1ull << 40, 0}, {1ull << 32, MEM, 1ull << 41, 0}};
    int rc = mem_table_refused(r, 2, &fd, 1);
    close(fd);
    return rc;
}

static int c_mem_table_too_many(void)
{
    struct region r[8] = {{0}};
    return mem_table_refused(r, 1000, NULL, 0);
}

static int c_mem_table_past_fd(void)
{
    int fd = memfd_of(65536);
    struct region r = {0, MEM, 1ull << 40, 0};
    int rc = mem_table_refused(&r, 1, &fd, 1);
    close(fd);
    return rc;
}

struct inflight_msg {
    uint64_t mmap_size, mmap_offset;
    uint16_t num_queues, queue_size;
    uint8_t pad[4];
};

static int c_inflight_past_fd(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint32_t st[2] = {0, 0};
    int rc = -1;
    /* rings stopped first: the region's size is what gets refused */
    if (vhc_send(&c, VHOST_USER_GET_VRING_BASE, 0, st, 8, NULL, 0) < 0 || vhc_recv(&c, VHOST_USER_GET_VRING_BASE, st, 8) != 8) {
        failf("no reply to GET_VRING_BASE");
    } else {
        int fd = memfd_of(4096);
        struct inflight_msg m = {1 << 20, 0, 1, 8, {0}};
        rc = expect_nack(&c, VHOST_USER_SET_INFLIGHT_FD, &m, sizeof(m), &fd, 1);
        close(fd);
    }
    vhc_close(&c);
    return rc;
}

static int c_inflight_while_running(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    int fd = memfd_of(1 << 20);
    struct inflight_msg m = {1 << 20, 0, 2, 8, {0}};
    int rc = expect_nack(&c, VHOST_USER_SET_INFLIGHT_FD, &m, sizeof(m), &fd, 1);
    close(fd);
    if (rc == 0)
        rc = one_read(&c, true); /* the ring still works on the region it had */
    vhc_close(&c);
    return rc;
}

static int c_inflight_get_while_running(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    struct inflight_msg m = {0, 0, 2, 8, {0}};
    /* a GET the front end waits for: refused by dropping the connection */
    vhc_send(&c, VHOST_USER_GET_INFLIGHT_FD, 0, &m, sizeof(m), NULL, 0);
    int rc = vhc_recv(&c, VHOST_USER_GET_INFLIGHT_FD, &m, sizeof(m)) < 0 ? 0 : failf("GET_INFLIGHT_FD answered");
    vhc_close(&c);
    return rc;
}

static int c_rem_ring_region(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    /* a request in flight, then the ring's own memory goes away */
    struct virtio_blk_outhdr *h = vhc_alloc(&c, sizeof(*h), 16);
    uint8_t *buf = vhc_alloc(&c, 512, 512), *status = vhc_alloc(&c, 1, 1);
    h->type = VIRTIO_BLK_T_IN;
    vhc_set_desc(&c, 0, 0, vhc_gpa(&c, h), sizeof(*h), VRING_DESC_F_NEXT, 1);
    vhc_set_desc(&c, 0, 1, vhc_gpa(&c, buf), 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    vhc_set_desc(&c, 0, 2, vhc_gpa(&c, status), 1, VRING_DESC_F_WRITE, 0);
    vhc_offer(&c, 0, 0);
    vhc_kick(&c, 0);
    struct mem_reg_msg m = {0, 0, {0, MEM, (uint64_t)(uintptr_t)c.mem, 0}};
    int rc = expect_ack(&c, VHOST_USER_REM_MEM_REG, &m, sizeof(m), &c.memfd, 1);
    uint32_t st[2] = {0, 0};
    if (rc == 0 &&
        (vhc_send(&c, VHOST_USER_GET_VRING_BASE, 0, st, 8, NULL, 0) < 0 || vhc_recv(&c, VHOST_USER_GET_VRING_BASE, st, 8) != 8))
        rc = failf("no reply to GET_VRING_BASE after the ring's memory was removed");
    vhc_close(&c);
    return rc;
}

/* Eight fds with a message the reader refuses before the handler. */
static int framing_with_fds(uint32_t flags, uint32_t size)
{
    struct vhc c;
    if (raw_connect(&c) < 0)
        return -1;
    int fds[8];
    for (int i = 0; i < 8; i++)
        fds[i] = eventfd(0, EFD_CLOEXEC);
    uint64_t v = 0;
    int rc = raw_send(c.sock, VHOST_USER_SET_FEATURES, flags, size, &v, 8, fds, 8);
    close_all(fds, 8);
    vhc_close(&c);
    return rc < 0 ? failf("send failed") : 0;
}

static int c_bad_version(void)
{
    return framing_with_fds(2, 8);
}

static int c_oversize(void)
{
    return framing_with_fds(1, 1u << 20);
}

static int c_too_many_fds(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    int fds[12];
    for (int i = 0; i < 12; i++)
        fds[i] = eventfd(0, EFD_CLOEXEC);
    uint64_t idx = 1;
    int rc = expect_nack(&c, VHOST_USER_SET_VRING_CALL, &idx, 8, fds, 12);
    close_all(fds, 12);
    vhc_close(&c);
    return rc;
}

static int c_fds_on_plain_message(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    int fds[3] = {eventfd(0, EFD_CLOEXEC), eventfd(0, EFD_CLOEXEC), memfd_of(4096)};
    int rc = expect_nack(&c, VHOST_USER_SET_FEATURES, &c.features, 8, fds, 3);
    close_all(fds, 3);
    vhc_close(&c);
    return rc;
}

static int c_fd_with_nofd(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    int fd = eventfd(0, EFD_CLOEXEC);
    uint64_t idx = 1 | VHOST_USER_VRING_NOFD;
    int rc = expect_nack(&c, VHOST_USER_SET_VRING_CALL, &idx, 8, &fd, 1);
    close(fd);
    vhc_close(&c);
    return rc;
}

static int c_kick_without_fd(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint64_t idx = 1;
    int rc = expect_nack(&c, VHOST_USER_SET_VRING_KICK, &idx, 8, NULL, 0);
    vhc_close(&c);
    return rc;
}

static int c_unaligned_desc(void)
{
    return vring_addr_refused(0, 8, 0, 0);
}

static int c_unaligned_avail(void)
{
    return vring_addr_refused(0, 0, 1, 0);
}

static int c_unaligned_used(void)
{
    return vring_addr_refused(0, 0, 0, 2);
}

/* Aligned front-end addresses in a region mapped at an odd file offset: the
 * rings would be unaligned where the back end reads them. */
static int c_unaligned_in_mapping(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint64_t qva = 1ull << 40;
    int fd = memfd_of(1 << 17);
    struct mem_reg_msg m = {0, 0, {1ull << 32, 1 << 16, qva, 8}};
    uint32_t st[2] = {1, 8};
    struct {
        uint32_t index, flags;
        uint64_t desc, used, avail, log;
    } va = {1, 0, qva, qva + 0x2000, qva + 0x1000, 0};
    int rc = expect_ack(&c, VHOST_USER_ADD_MEM_REG, &m, sizeof(m), &fd, 1);
    close(fd);
    if (rc == 0)
        rc = expect_ack(&c, VHOST_USER_SET_VRING_NUM, st, 8, NULL, 0);
    if (rc == 0)
        rc = expect_nack(&c, VHOST_USER_SET_VRING_ADDR, &va, sizeof(va), NULL, 0);
    vhc_close(&c);
    return rc;
}

/* A running ring keeps its addresses: QEMU changes only its logging (the
 * VHOST_VRING_F_LOG flag and log address) while it runs. */
static int c_vring_addr_moves(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint64_t base = (uint64_t)(uintptr_t)c.mem + 0x80000;
    struct {
        uint32_t index, flags;
        uint64_t desc, used, avail, log;
    } va = {0, 0, base, base + 0x1000, base + 0x2000, 0};
    int rc = expect_nack(&c, VHOST_USER_SET_VRING_ADDR, &va, sizeof(va), NULL, 0);
    vhc_close(&c);
    return rc;
}

static int c_kick_pipe_no_reader(void)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return failf("pipe");
    close(p[0]);
    return bad_kick_fd(p[1]);
}

static int c_kick_pipe_eof(void)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return failf("pipe");
    close(p[1]);
    return bad_kick_fd(p[0]);
}

static int c_kick_regular_file(void)
{
    return bad_kick_fd(memfd_of(4096));
}

/* A payload of the wrong size for req. */
static int wrong_size(uint32_t req, uint32_t size, bool with_fd)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint8_t payload[64] = {1};
    int fd = with_fd ? memfd_of(4096) : -1;
    int rc = expect_nack(&c, req, payload, size, &fd, with_fd);
    if (fd >= 0)
        close(fd);
    vhc_close(&c);
    return rc;
}

static int c_size_set_features(void)
{
    return wrong_size(VHOST_USER_SET_FEATURES, 4, false);
}

static int c_size_vring_addr(void)
{
    return wrong_size(VHOST_USER_SET_VRING_ADDR, 24, false);
}

static int c_size_vring_num(void)
{
    return wrong_size(VHOST_USER_SET_VRING_NUM, 0, false);
}

static int c_size_add_mem_reg(void)
{
    return wrong_size(VHOST_USER_ADD_MEM_REG, 8, true);
}

static int c_size_mem_table(void)
{
    return wrong_size(VHOST_USER_SET_MEM_TABLE, 4, false);
}

/* Every fixed-size request, four bytes too long: refused, one line each. */
static int c_size_every_request(void)
{
    static const struct {
        uint32_t req, size;
    } fixed[] = {{VHOST_USER_SET_FEATURES, 8},
                 {VHOST_USER_SET_PROTOCOL_FEATURES, 8},
                 {VHOST_USER_SET_VRING_NUM, 8},
                 {VHOST_USER_SET_VRING_BASE, 8},
                 {18 /* SET_VRING_ENABLE */, 8},
                 {VHOST_USER_SET_VRING_ADDR, 40},
                 {VHOST_USER_REM_MEM_REG, 40},
                 {VHOST_USER_SET_VRING_CALL, 8}};
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint8_t payload[64] = {1};
    int rc = 0;
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]) && rc == 0; i++)
        rc = expect_nack(&c, fixed[i].req, payload, fixed[i].size + 4, NULL, 0);
    vhc_close(&c);
    return rc;
}

static int vring_state_refused(uint32_t req, uint32_t index, uint32_t num)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint32_t st[2] = {index, num};
    int rc = expect_nack(&c, req, st, 8, NULL, 0);
    vhc_close(&c);
    return rc;
}

static int c_ring_size_huge(void)
{
    return vring_state_refused(VHOST_USER_SET_VRING_NUM, 1, 65536);
}

static int c_ring_size_npot(void)
{
    return vring_state_refused(VHOST_USER_SET_VRING_NUM, 1, 100);
}

static int c_vring_base_big(void)
{
    return vring_state_refused(VHOST_USER_SET_VRING_BASE, 1, 70000);
}

static int c_vring_index(void)
{
    return vring_state_refused(VHOST_USER_SET_VRING_NUM, 1000, 8);
}

static int c_vring_call_index(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    int fd = eventfd(0, EFD_CLOEXEC);
    uint64_t idx = 200;
    int rc = expect_nack(&c, VHOST_USER_SET_VRING_CALL, &idx, 8, &fd, 1);
    close(fd);
    vhc_close(&c);
    return rc;
}

static int c_get_vring_base_index(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint32_t st[2] = {99, 0};
    vhc_send(&c, VHOST_USER_GET_VRING_BASE, 0, st, 8, NULL, 0);
    int rc = vhc_recv(&c, VHOST_USER_GET_VRING_BASE, st, 8) < 0 ? 0 : failf("GET_VRING_BASE of queue 99 answered");
    vhc_close(&c);
    return rc;
}

static int c_kick_before_features(void)
{
    struct vhc c;
    if (raw_connect(&c) < 0)
        return -1;
    int memfd = memfd_of(MEM);
    uint8_t *mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    uint64_t qva = (uint64_t)(uintptr_t)mem;
    uint8_t mt[8 + sizeof(struct region)] = {1};
    struct region r = {0, MEM, qva, 0};
    memcpy(mt + 8, &r, sizeof(r));
    uint32_t st[2] = {0, 8};
    struct {
        uint32_t index, flags;
        uint64_t desc, used, avail, log;
    } va = {0, 0, qva, qva + 4096, qva + 8192, 0};
    int kick = eventfd(0, EFD_CLOEXEC);
    uint64_t idx = 0;
    int rc = vhc_send(&c, VHOST_USER_SET_MEM_TABLE, 0, mt, sizeof(mt), &memfd, 1) < 0 ||
                     vhc_send(&c, VHOST_USER_SET_VRING_NUM, 0, st, 8, NULL, 0) < 0 ||
                     vhc_send(&c, VHOST_USER_SET_VRING_ADDR, 0, &va, sizeof(va), NULL, 0) < 0 ||
                     vhc_send(&c, VHOST_USER_SET_VRING_KICK, 0, &idx, 8, &kick, 1) < 0
                 ? failf("send failed")
                 : 0;
    /* the reply to a GET comes after every message before it was handled */
    uint64_t f;
    if (rc == 0 &&
        (vhc_send(&c, VHOST_USER_GET_FEATURES, 0, NULL, 0, NULL, 0) < 0 || vhc_recv(&c, VHOST_USER_GET_FEATURES, &f, 8) != 8))
        rc = failf("no answer to GET_FEATURES");
    close(kick);
    munmap(mem, MEM);
    close(memfd);
    vhc_close(&c);
    return rc;
}

static int c_owner_twice(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    int rc = expect_nack(&c, VHOST_USER_SET_OWNER, NULL, 0, NULL, 0);
    vhc_close(&c);
    return rc;
}

static int c_protocol_features_unoffered(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint64_t pf = c.protocol_features | (1ull << 40);
    int rc = expect_nack(&c, VHOST_USER_SET_PROTOCOL_FEATURES, &pf, 8, NULL, 0);
    vhc_close(&c);
    return rc;
}

static int c_features_unoffered(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint64_t f = c.features | (1ull << 63);
    int rc = expect_nack(&c, VHOST_USER_SET_FEATURES, &f, 8, NULL, 0);
    vhc_close(&c);
    return rc;
}

static int c_get_config_oversize(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    uint8_t cfg[12 + 60] = {0};
    uint32_t sz = 100000;
    memcpy(cfg + 4, &sz, 4);
    vhc_send(&c, VHOST_USER_GET_CONFIG, 0, cfg, sizeof(cfg), NULL, 0);
    int rc =
        vhc_recv(&c, VHOST_USER_GET_CONFIG, cfg, sizeof(cfg)) < 0 ? 0 : failf("GET_CONFIG of 100000 bytes answered");
    vhc_close(&c);
    return rc;
}

static int c_truncated_header(void)
{
    struct vhc c;
    if (raw_connect(&c) < 0)
        return -1;
    int fds[4] = {eventfd(0, EFD_CLOEXEC), eventfd(0, EFD_CLOEXEC), memfd_of(4096), memfd_of(4096)};
    /* 6 of the header's 12 bytes, 4 fds, then the connection closes */
    struct msghdr mh = {0};
    uint8_t hdr[6] = {VHOST_USER_SET_MEM_TABLE, 0, 0, 0, 1, 0};
    struct iovec iov = {hdr, sizeof(hdr)};
    char cbuf[CMSG_SPACE(sizeof(fds))];
    memset(cbuf, 0, sizeof(cbuf));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof(cbuf);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(cm), fds, sizeof(fds));
    int rc = sendmsg(c.sock, &mh, MSG_NOSIGNAL) == (ssize_t)sizeof(hdr) ? 0 : failf("send failed");
    close_all(fds, 4);
    vhc_close(&c);
    return rc;
}

static int c_close_mid_payload(void)
{
    struct vhc c;
    if (raw_connect(&c) < 0)
        return -1;
    int fds[2] = {memfd_of(MEM), memfd_of(MEM)};
    uint8_t part[10] = {2};
    int rc = raw_send(c.sock, VHOST_USER_SET_MEM_TABLE, 1, 8 + 2 * sizeof(struct region), part, sizeof(part), fds, 2);
    close_all(fds, 2);
    vhc_close(&c);
    return rc < 0 ? failf("send failed") : 0;
}

static int c_call_fd_full_pipe(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
        vhc_close(&c);
        return failf("pipe");
    }
    char junk[4096] = {0};
    while (write(p[1], junk, sizeof(junk)) > 0)
        ;
    /* blocking again on our side: the back end must not block on it */
    fcntl(p[1], F_SETFL, fcntl(p[1], F_GETFL) & ~O_NONBLOCK);
    uint64_t idx = 0;
    int rc = expect_ack(&c, VHOST_USER_SET_VRING_CALL, &idx, 8, &p[1], 1);
    close(p[1]);
    if (rc == 0)
        rc = one_read(&c, false); /* no interrupt can come: poll the used ring */
    close(p[0]);
    vhc_close(&c);
    return rc;
}

static int c_reset_owner_running(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    int rc = vhc_send(&c, VHOST_USER_RESET_OWNER, 0, NULL, 0, NULL, 0) < 0 ? failf("send failed") : 0;
    uint64_t f;
    if (rc == 0 &&
        (vhc_send(&c, VHOST_USER_GET_FEATURES, 0, NULL, 0, NULL, 0) < 0 || vhc_recv(&c, VHOST_USER_GET_FEATURES, &f, 8) != 8))
        rc = failf("no answer to GET_FEATURES after RESET_OWNER");
    vhc_close(&c);
    return rc;
}

static int c_unknown_request(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    int rc = expect_nack(&c, 999, NULL, 0, NULL, 0);
    vhc_close(&c);
    return rc;
}

static int c_log_base(void)
{
    struct vhc c;
    if (good_open(&c) < 0)
        return -1;
    int fd = memfd_of(4096);
    uint64_t log[2] = {4096, 0};
    int rc = vhc_send(&c, VHOST_USER_SET_LOG_BASE, 0, log, sizeof(log), &fd, 1) < 0 ? failf("send failed") : 0;
    close(fd);
    vhc_close(&c);
    return rc;
}

/* ---- hostile rings: what the guest writes into its descriptors -------- */

/* Guest memory of a ring case: a request header, a data buffer, a status
 * byte and room for indirect tables. */
struct ring_bufs {
    struct virtio_blk_outhdr *h;
    uint8_t *buf, *status;
    struct vring_desc *table; /* RING_TABLE entries, 16-byte aligned */
    uint64_t h_gpa, buf_gpa, status_gpa, table_gpa;
};
#define RING_TABLE 2048

static void table_set(struct ring_bufs *b, int i, uint64_t gpa, uint32_t len, uint16_t flags, uint16_t next)
{
    b->table[i] = (struct vring_desc){.addr = gpa, .len = len, .flags = flags, .next = next};
}

/* The usual three descriptors of a read: header, 512-byte buffer, status. */
static void plain_read(struct vhc *c, const struct ring_bufs *b)
{
    vhc_set_desc(c, 0, 0, b->h_gpa, sizeof(*b->h), VRING_DESC_F_NEXT, 1);
    vhc_set_desc(c, 0, 1, b->buf_gpa, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    vhc_set_desc(c, 0, 2, b->status_gpa, 1, VRING_DESC_F_WRITE, 0);
}

enum ring_end {
    RING_BREAKS,    /* the queue is refused: nothing completed on it */
    RING_GIVEN_BACK /* the malformed request is given back unprocessed (used length 0) */
};

/* A front end with two rings (indirect descriptors negotiated when asked)
 * puts what build wrote on ring 0 and kicks: the daemon must log expect
 * once, complete nothing (or give the request back untouched), and keep
 * serving ring 1 of the same device. */
static int ring_case(bool indirect, void (*build)(struct vhc *, struct ring_bufs *), const char *expect,
                     enum ring_end end)
{
    struct vhc c;
    char err[256];
    conns++;
    if (vhc_open(&c, sock_path, 2, 8, MEM, indirect ? VHC_INDIRECT : 0, err, sizeof(err)) < 0) {
        vhc_close(&c);
        return failf("a good front end was refused: %s", err);
    }
    if (indirect && !(c.features & (1ull << VIRTIO_RING_F_INDIRECT_DESC))) {
        vhc_close(&c);
        return failf("the daemon does not offer VIRTIO_RING_F_INDIRECT_DESC");
    }
    struct ring_bufs b;
    b.h = vhc_alloc(&c, sizeof(*b.h), 16);
    b.buf = vhc_alloc(&c, 4096, 4096);
    b.status = vhc_alloc(&c, 1, 1);
    b.table = vhc_alloc(&c, RING_TABLE * sizeof(struct vring_desc), 16);
    if (!b.h || !b.buf || !b.status || !b.table) {
        vhc_close(&c);
        return failf("out of guest memory");
    }
    b.h_gpa = vhc_gpa(&c, b.h);
    b.buf_gpa = vhc_gpa(&c, b.buf);
    b.status_gpa = vhc_gpa(&c, b.status);
    b.table_gpa = vhc_gpa(&c, b.table);
    b.h->type = VIRTIO_BLK_T_IN;
    b.h->sector = 0;
    *b.status = 0xee;
    memset(b.buf, 0xcc, 4096);
    build(&c, &b);
    vhc_kick(&c, 0);
    int rc = wait_log(case_off, expect, 0);
    uint32_t id, len;
    int got = rc == 0 ? vhc_used(&c, 0, &id, &len) : 0;
    /* a request given back is pushed just after the line is logged */
    for (uint64_t deadline = now_ns() + DEADLINE_NS; rc == 0 && end == RING_GIVEN_BACK && !got && now_ns() < deadline;
         got = vhc_used(&c, 0, &id, &len))
        vhc_wait(&c, 1000);
    if (rc == 0 && end == RING_BREAKS && got != 0)
        rc = failf("a refused chain was completed (used id %u, length %u)", id, len);
    if (rc == 0 && end == RING_GIVEN_BACK && (got != 1 || len != 0 || *b.status != 0xee))
        rc = failf("the malformed request was not given back untouched (used %d, length %u, status 0x%x)", got,
                   got == 1 ? len : 0, *b.status);
    if (rc == 0 && b.buf[0] != 0xcc)
        rc = failf("the refused request wrote into its buffer");
    if (rc == 0)
        rc = one_read_on(&c, 1, true); /* the device's other ring is not affected */
    vhc_close(&c);
    return rc;
}

/* (device-readable all the way: a writable one before the loop closes is refused for that first) */
static void b_desc_loop(struct vhc *c, struct ring_bufs *b)
{
    vhc_set_desc(c, 0, 0, b->h_gpa, sizeof(*b->h), VRING_DESC_F_NEXT, 1);
    vhc_set_desc(c, 0, 1, b->buf_gpa, 512, VRING_DESC_F_NEXT, 0);
    vhc_offer(c, 0, 0);
}
static int c_ring_desc_loop(void)
{
    return ring_case(false, b_desc_loop, "descriptor chain longer than its table (a loop?)", RING_BREAKS);
}

static void b_buffer_outside(struct vhc *c, struct ring_bufs *b)
{
    plain_read(c, b);
    vhc_set_desc(c, 0, 1, MEM + 4096, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    vhc_offer(c, 0, 0);
}
static void b_buffer_wraps(struct vhc *c, struct ring_bufs *b)
{
    plain_read(c, b);
    vhc_set_desc(c, 0, 1, UINT64_MAX - 255, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    vhc_offer(c, 0, 0);
}
/* starts inside guest memory, ends past it */
static void b_buffer_past_end(struct vhc *c, struct ring_bufs *b)
{
    plain_read(c, b);
    vhc_set_desc(c, 0, 1, MEM - 256, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    vhc_offer(c, 0, 0);
}
static void b_buffer_len_max(struct vhc *c, struct ring_bufs *b)
{
    plain_read(c, b);
    vhc_set_desc(c, 0, 1, b->buf_gpa, UINT32_MAX, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    vhc_offer(c, 0, 0);
}
static int c_ring_buffer_outside(void)
{
    return ring_case(false, b_buffer_outside, "buffer outside guest memory", RING_BREAKS);
}
static int c_ring_buffer_wraps(void)
{
    return ring_case(false, b_buffer_wraps, "buffer outside guest memory", RING_BREAKS);
}
static int c_ring_buffer_past_end(void)
{
    return ring_case(false, b_buffer_past_end, "buffer outside guest memory", RING_BREAKS);
}
static int c_ring_buffer_len_max(void)
{
    return ring_case(false, b_buffer_len_max, "buffer outside guest memory", RING_BREAKS);
}

static void b_head_range(struct vhc *c, struct ring_bufs *b)
{
    plain_read(c, b);
    vhc_offer(c, 0, 8);
}
static int c_ring_head_range(void)
{
    return ring_case(false, b_head_range, "descriptor head index out of range", RING_BREAKS);
}

static void b_next_range(struct vhc *c, struct ring_bufs *b)
{
    plain_read(c, b);
    vhc_set_desc(c, 0, 0, b->h_gpa, sizeof(*b->h), VRING_DESC_F_NEXT, 8);
    vhc_offer(c, 0, 0);
}
static int c_ring_next_range(void)
{
    return ring_case(false, b_next_range, "next descriptor index out of range", RING_BREAKS);
}

/* the available index 9 entries ahead on a ring of 8 */
static void b_avail_jump(struct vhc *c, struct ring_bufs *b)
{
    plain_read(c, b);
    struct vring_avail *a = c->q[0].avail;
    c->q[0].avail_idx = 9;
    __atomic_store_n(&a->idx, 9, __ATOMIC_RELEASE);
}
static int c_ring_avail_jump(void)
{
    return ring_case(false, b_avail_jump, "available index moved by more than the queue size", RING_BREAKS);
}

/* an indirect descriptor at the head, its table holding the plain read */
static void indirect_head(struct vhc *c, struct ring_bufs *b, uint16_t flags, uint32_t len)
{
    table_set(b, 0, b->h_gpa, sizeof(*b->h), VRING_DESC_F_NEXT, 1);
    table_set(b, 1, b->buf_gpa, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    table_set(b, 2, b->status_gpa, 1, VRING_DESC_F_WRITE, 0);
    vhc_set_desc(c, 0, 0, b->table_gpa, len, VRING_DESC_F_INDIRECT | flags, 1);
    vhc_offer(c, 0, 0);
}
static void b_indirect_plain(struct vhc *c, struct ring_bufs *b)
{
    indirect_head(c, b, 0, 3 * sizeof(struct vring_desc));
}
static int c_ring_indirect_unnegotiated(void)
{
    return ring_case(false, b_indirect_plain, "indirect descriptor without the feature", RING_BREAKS);
}
static void b_indirect_nested(struct vhc *c, struct ring_bufs *b)
{
    indirect_head(c, b, 0, 4 * sizeof(struct vring_desc));
    table_set(b, 0, b->table_gpa + 3 * sizeof(struct vring_desc), sizeof(struct vring_desc), VRING_DESC_F_INDIRECT, 0);
    table_set(b, 3, b->h_gpa, sizeof(*b->h), VRING_DESC_F_NEXT, 1);
}
static int c_ring_indirect_nested(void)
{
    return ring_case(true, b_indirect_nested, "indirect table inside an indirect table", RING_BREAKS);
}
static void b_indirect_next(struct vhc *c, struct ring_bufs *b)
{
    indirect_head(c, b, VRING_DESC_F_NEXT, 3 * sizeof(struct vring_desc));
}
static int c_ring_indirect_next(void)
{
    return ring_case(true, b_indirect_next, "indirect descriptor with the NEXT flag", RING_BREAKS);
}
static void b_indirect_odd(struct vhc *c, struct ring_bufs *b)
{
    indirect_head(c, b, 0, 3 * sizeof(struct vring_desc) + 8);
}
static void b_indirect_huge(struct vhc *c, struct ring_bufs *b)
{
    indirect_head(c, b, 0, 1025 * sizeof(struct vring_desc));
}
static void b_indirect_empty(struct vhc *c, struct ring_bufs *b)
{
    indirect_head(c, b, 0, 0);
}
static int c_ring_indirect_odd(void)
{
    return ring_case(true, b_indirect_odd, "indirect table of a bad size", RING_BREAKS);
}
static int c_ring_indirect_huge(void)
{
    return ring_case(true, b_indirect_huge, "indirect table of a bad size", RING_BREAKS);
}
static int c_ring_indirect_empty(void)
{
    return ring_case(true, b_indirect_empty, "indirect table of a bad size", RING_BREAKS);
}
static void b_indirect_outside(struct vhc *c, struct ring_bufs *b)
{
    indirect_head(c, b, 0, 3 * sizeof(struct vring_desc));
    vhc_set_desc(c, 0, 0, MEM - 16, 3 * sizeof(struct vring_desc), VRING_DESC_F_INDIRECT, 0);
}
static int c_ring_indirect_outside(void)
{
    return ring_case(true, b_indirect_outside, "indirect table outside guest memory", RING_BREAKS);
}
static void b_indirect_loop(struct vhc *c, struct ring_bufs *b)
{
    indirect_head(c, b, 0, 3 * sizeof(struct vring_desc));
    table_set(b, 1, b->buf_gpa, 512, VRING_DESC_F_NEXT, 0);
}
static int c_ring_indirect_loop(void)
{
    return ring_case(true, b_indirect_loop, "descriptor chain longer than its table (a loop?)", RING_BREAKS);
}
/* next inside the ring's size but past the indirect table's end */
static void b_indirect_next_range(struct vhc *c, struct ring_bufs *b)
{
    indirect_head(c, b, 0, 3 * sizeof(struct vring_desc));
    table_set(b, 1, b->buf_gpa, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 5);
}
static int c_ring_indirect_next_range(void)
{
    return ring_case(true, b_indirect_next_range, "next descriptor index out of range", RING_BREAKS);
}

static void b_readable_after_writable(struct vhc *c, struct ring_bufs *b)
{
    vhc_set_desc(c, 0, 0, b->h_gpa, sizeof(*b->h), VRING_DESC_F_NEXT, 1);
    vhc_set_desc(c, 0, 1, b->status_gpa, 1, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    vhc_set_desc(c, 0, 2, b->buf_gpa, 512, 0, 0);
    vhc_offer(c, 0, 0);
}
static int c_ring_readable_after_writable(void)
{
    return ring_case(false, b_readable_after_writable, "device-readable descriptor after a device-writable one",
                     RING_BREAKS);
}

static void b_no_status(struct vhc *c, struct ring_bufs *b)
{
    vhc_set_desc(c, 0, 0, b->h_gpa, sizeof(*b->h), VRING_DESC_F_NEXT, 1);
    vhc_set_desc(c, 0, 1, b->buf_gpa, 512, 0, 0);
    vhc_offer(c, 0, 0);
}
static int c_ring_no_status(void)
{
    return ring_case(false, b_no_status, "request without a status byte", RING_GIVEN_BACK);
}
static void b_short_header(struct vhc *c, struct ring_bufs *b)
{
    vhc_set_desc(c, 0, 0, b->h_gpa, 8, VRING_DESC_F_NEXT, 1);
    vhc_set_desc(c, 0, 1, b->status_gpa, 1, VRING_DESC_F_WRITE, 0);
    vhc_offer(c, 0, 0);
}
static int c_ring_short_header(void)
{
    return ring_case(false, b_short_header, "request without a complete header", RING_GIVEN_BACK);
}

/* A chain of more segments than the largest vector (1040): 1000 writable
 * descriptors, each across the border between two adjacent memory regions
 * (two segments each). */
static int c_ring_too_many_segments(void)
{
    struct vhc c;
    char err[256];
    conns++;
    if (vhc_open(&c, sock_path, 2, 8, MEM, VHC_INDIRECT, err, sizeof(err)) < 0) {
        vhc_close(&c);
        return failf("a good front end was refused: %s", err);
    }
    int fd = memfd_of(MEM);
    uint8_t *second = fd >= 0 ? mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    struct mem_reg_msg add = {0, 0, {MEM, MEM, (uint64_t)(uintptr_t)second, 0}};
    int rc = second == MAP_FAILED ? failf("cannot map a second region") : 0;
    if (rc == 0)
        rc = expect_ack(&c, VHOST_USER_ADD_MEM_REG, &add, sizeof(add), &fd, 1);
    struct virtio_blk_outhdr *h = vhc_alloc(&c, sizeof(*h), 16);
    uint8_t *status = vhc_alloc(&c, 1, 1);
    struct vring_desc *t = vhc_alloc(&c, 1002 * sizeof(*t), 16);
    if (rc == 0 && (!h || !status || !t))
        rc = failf("out of guest memory");
    if (rc == 0) {
        h->type = VIRTIO_BLK_T_IN;
        h->sector = 0;
        *status = 0xee;
        t[0] = (struct vring_desc){vhc_gpa(&c, h), sizeof(*h), VRING_DESC_F_NEXT, 1};
        for (uint16_t i = 1; i <= 1000; i++)
            t[i] = (struct vring_desc){MEM - 256, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, (uint16_t)(i + 1)};
        t[1001] = (struct vring_desc){vhc_gpa(&c, status), 1, VRING_DESC_F_WRITE, 0};
        vhc_set_desc(&c, 0, 0, vhc_gpa(&c, t), 1002 * sizeof(*t), VRING_DESC_F_INDIRECT, 0);
        vhc_offer(&c, 0, 0);
        vhc_kick(&c, 0);
        rc = wait_log(case_off, "too many segments in one request", 0);
    }
    uint32_t id, len;
    if (rc == 0 && vhc_used(&c, 0, &id, &len) != 0)
        rc = failf("a refused chain was completed");
    if (rc == 0 && *status != 0xee)
        rc = failf("the refused request got a status");
    if (rc == 0)
        rc = one_read_on(&c, 1, true);
    if (second != MAP_FAILED)
        munmap(second, MEM);
    if (fd >= 0)
        close(fd);
    vhc_close(&c);
    return rc;
}

/* The longest chain a guest may send (an indirect table of 1024: header,
 * 1022 buffers, status) is served, past the 260 segments a request holds
 * inline: 1022 x 512 bytes read, status OK. */
static int c_ring_longest_chain(void)
{
    struct vhc c;
    char err[256];
    conns++;
    if (vhc_open(&c, sock_path, 1, 8, MEM, VHC_INDIRECT, err, sizeof(err)) < 0) {
        vhc_close(&c);
        return failf("a good front end was refused: %s", err);
    }
    struct virtio_blk_outhdr *h = vhc_alloc(&c, sizeof(*h), 16);
    uint8_t *status = vhc_alloc(&c, 1, 1);
    struct vring_desc *t = vhc_alloc(&c, 1024 * sizeof(*t), 16);
    uint8_t *buf = vhc_alloc(&c, 512, 512);
    int rc = 0;
    if (!h || !status || !t || !buf)
        rc = failf("out of guest memory");
    uint32_t id = 0, len = 0;
    if (rc == 0) {
        h->type = VIRTIO_BLK_T_IN;
        h->sector = 0;
        *status = 0xee;
        t[0] = (struct vring_desc){vhc_gpa(&c, h), sizeof(*h), VRING_DESC_F_NEXT, 1};
        for (uint16_t i = 1; i <= 1022; i++) /* the same buffer each time: the guest may do that */
            t[i] = (struct vring_desc){vhc_gpa(&c, buf), 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, (uint16_t)(i + 1)};
        t[1023] = (struct vring_desc){vhc_gpa(&c, status), 1, VRING_DESC_F_WRITE, 0};
        vhc_set_desc(&c, 0, 0, vhc_gpa(&c, t), 1024 * sizeof(*t), VRING_DESC_F_INDIRECT, 0);
        vhc_offer(&c, 0, 0);
        vhc_kick(&c, 0);
        uint64_t deadline = now_ns() + DEADLINE_NS;
        while (!vhc_used(&c, 0, &id, &len)) {
            if (now_ns() > deadline) {
                rc = failf("the longest chain was never completed");
                break;
            }
            vhc_wait(&c, 1000);
        }
    }
    if (rc == 0 && (*status != VIRTIO_BLK_S_OK || len != 1022 * 512 + 1))
        rc = failf("the longest chain completed with status %u, length %u", *status, len);
    vhc_close(&c);
    return rc;
}

/* A chain of 1024 descriptors whose buffers become more segments than one
 * readv/writev takes (1024): 12 of its 1022 data buffers cross the border
 * between two memory regions, 1034 segments of data. A write of it then a
 * read back into cleared buffers: both complete with status OK and the
 * data read is the data written (such requests failed with EIO). */
static int chain_across_regions(struct vhc *c, uint16_t head, uint8_t type, uint8_t *bufs, uint8_t *cross,
                                struct vring_desc *t, struct virtio_blk_outhdr *h, uint8_t *status, uint32_t *len)
{
    uint16_t flags = type == VIRTIO_BLK_T_IN ? VRING_DESC_F_WRITE : 0;
    h->type = type;
    h->sector = 64;
    *status = 0xee;
    t[0] = (struct vring_desc){vhc_gpa(c, h), sizeof(*h), VRING_DESC_F_NEXT, 1};
    for (uint16_t i = 1; i <= 1022; i++) {
        bool crosses = i % 85 == 0; /* 12 of them */
        uint64_t gpa = crosses ? vhc_gpa(c, cross) : vhc_gpa(c, bufs + (size_t)(i - 1) * 256);
        t[i] = (struct vring_desc){gpa, crosses ? 512 : 256, VRING_DESC_F_NEXT | flags, (uint16_t)(i + 1)};
    }
    t[1023] = (struct vring_desc){vhc_gpa(c, status), 1, VRING_DESC_F_WRITE, 0};
    vhc_set_desc(c, 0, head, vhc_gpa(c, t), 1024 * sizeof(*t), VRING_DESC_F_INDIRECT, 0);
    vhc_offer(c, 0, head);
    vhc_kick(c, 0);
    uint64_t deadline = now_ns() + DEADLINE_NS;
    uint32_t id;
    while (!vhc_used(c, 0, &id, len)) {
        if (now_ns() > deadline)
            return failf("the chain across regions (type %u) was never completed", type);
        vhc_wait(c, 1000);
    }
    if (id != head || *status != VIRTIO_BLK_S_OK)
        return failf("the chain across regions (type %u) completed as id %u with status %u", type, id, *status);
    return 0;
}

static int c_ring_segments_past_iov_max(void)
{
    struct vhc c;
    char err[256];
    conns++;
    if (vhc_open(&c, sock_path, 2, 8, MEM, VHC_INDIRECT, err, sizeof(err)) < 0) {
        vhc_close(&c);
        return failf("a good front end was refused: %s", err);
    }
    int fd = memfd_of(MEM);
    uint8_t *second = fd >= 0 ? mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    struct mem_reg_msg add = {0, 0, {MEM, MEM, (uint64_t)(uintptr_t)second, 0}};
    int rc = second == MAP_FAILED ? failf("cannot map a second region") : 0;
    if (rc == 0)
        rc = expect_ack(&c, VHOST_USER_ADD_MEM_REG, &add, sizeof(add), &fd, 1);
    struct virtio_blk_outhdr *h = vhc_alloc(&c, sizeof(*h), 16);
    uint8_t *status = vhc_alloc(&c, 1, 1);
    struct vring_desc *t = vhc_alloc(&c, 1024 * sizeof(*t), 16);
    uint8_t *bufs = vhc_alloc(&c, 1022 * 256, 512);
    uint8_t *cross = c.mem + MEM - 256; /* 256 bytes here, 256 at the start of the second region */
    if (rc == 0 && (!h || !status || !t || !bufs || bufs + 1022 * 256 > cross))
        rc = failf("out of guest memory");
    uint32_t len = 0;
    if (rc == 0) {
        for (size_t i = 0; i < 1022 * 256; i++)
            bufs[i] = (uint8_t)(i * 7 + i / 256);
        memset(cross, 0x5a, 256);
        memset(second, 0xa5, 256);
        rc = chain_across_regions(&c, 0, VIRTIO_BLK_T_OUT, bufs, cross, t, h, status, &len);
    }
    if (rc == 0) {
        memset(bufs, 0, 1022 * 256);
        memset(cross, 0, 256);
        memset(second, 0, 256);
        rc = chain_across_regions(&c, 1, VIRTIO_BLK_T_IN, bufs, cross, t, h, status, &len);
    }
    if (rc == 0 && len != 1010 * 256 + 12 * 512 + 1)
        rc = failf("the read across regions completed with length %u", len);
    for (size_t i = 0; rc == 0 && i < 1022 * 256; i++)
        if (i / 256 % 85 != 84 && bufs[i] != (uint8_t)(i * 7 + i / 256))
            rc = failf("the read across regions brought 0x%02x at byte %zu of buffer %zu", bufs[i], i % 256, i / 256);
    for (int i = 0; rc == 0 && i < 256; i++)
        if (cross[i] != 0x5a || second[i] != 0xa5)
            rc = failf("the read across regions brought 0x%02x 0x%02x at byte %d of the crossing buffer", cross[i],
                       second[i], i);
    if (second != MAP_FAILED)
        munmap(second, MEM);
    if (fd >= 0)
        close(fd);
    vhc_close(&c);
    return rc;
}

/* A good request, a looping one, a good one: the first completes, the ring
 * stops at the second (one line), the third is never taken. */
static void b_mid_batch(struct vhc *c, struct ring_bufs *b)
{
    plain_read(c, b);
    vhc_set_desc(c, 0, 3, b->h_gpa, sizeof(*b->h), VRING_DESC_F_NEXT, 4);
    vhc_set_desc(c, 0, 4, b->buf_gpa, 512, VRING_DESC_F_NEXT, 3);
    vhc_offer(c, 0, 0);
    vhc_offer(c, 0, 3);
    vhc_offer(c, 0, 0);
}
static int c_ring_mid_batch(void)
{
    struct vhc c;
    char err[256];
    conns++;
    if (vhc_open(&c, sock_path, 1, 8, MEM, 0, err, sizeof(err)) < 0) {
        vhc_close(&c);
        return failf("a good front end was refused: %s", err);
    }
    struct ring_bufs b;
    b.h = vhc_alloc(&c, sizeof(*b.h), 16);
    b.buf = vhc_alloc(&c, 512, 512);
    b.status = vhc_alloc(&c, 1, 1);
    b.h_gpa = vhc_gpa(&c, b.h);
    b.buf_gpa = vhc_gpa(&c, b.buf);
    b.status_gpa = vhc_gpa(&c, b.status);
    b.h->type = VIRTIO_BLK_T_IN;
    b.h->sector = 0;
    *b.status = 0xee;
    b_mid_batch(&c, &b);
    vhc_kick(&c, 0);
    int rc = wait_log(case_off, "descriptor chain longer than its table", 0);
    uint32_t id, len;
    uint64_t deadline = now_ns() + DEADLINE_NS;
    int got = 0;
    while (rc == 0 && (got = vhc_used(&c, 0, &id, &len)) == 0 && now_ns() < deadline)
        vhc_wait(&c, 1000);
    if (rc == 0 && (got != 1 || id != 0 || *b.status != VIRTIO_BLK_S_OK))
        rc = failf("the request before the bad one: used %d, id %u, status %u", got, id, *b.status);
    if (rc == 0 && vhc_used(&c, 0, &id, &len) != 0)
        rc = failf("a request after the bad one was completed");
    vhc_close(&c);
    return rc;
}

/* Two 4K reads kicked and the connection closed at once: the daemon waits
 * for them and disconnects cleanly (no fd or memory left behind). */
static int c_ring_close_in_flight(void)
{
    struct vhc c;
    char err[256];
    conns++;
    if (vhc_open(&c, sock_path, 1, 8, MEM, 0, err, sizeof(err)) < 0) {
        vhc_close(&c);
        return failf("a good front end was refused: %s", err);
    }
    struct virtio_blk_outhdr *h = vhc_alloc(&c, 8 * sizeof(*h), 16);
    uint8_t *buf = vhc_alloc(&c, 8 * 4096, 4096), *status = vhc_alloc(&c, 8, 1);
    if (!h || !buf || !status) {
        vhc_close(&c);
        return failf("out of guest memory");
    }
    for (uint16_t i = 0; i < 2; i++) {
        h[i] = (struct virtio_blk_outhdr){.type = VIRTIO_BLK_T_IN, .sector = i * 8};
        vhc_set_desc(&c, 0, (uint16_t)(3 * i), vhc_gpa(&c, &h[i]), sizeof(*h), VRING_DESC_F_NEXT, (uint16_t)(3 * i + 1));
        vhc_set_desc(&c, 0, (uint16_t)(3 * i + 1), vhc_gpa(&c, buf + 4096 * i), 4096,
                     VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, (uint16_t)(3 * i + 2));
        vhc_set_desc(&c, 0, (uint16_t)(3 * i + 2), vhc_gpa(&c, status + i), 1, VRING_DESC_F_WRITE, 0);
        vhc_offer(&c, 0, (uint16_t)(3 * i));
    }
    vhc_kick(&c, 0);
    close(c.sock); /* no GET_VRING_BASE: the front end is gone */
    c.sock = -1;
    vhc_close(&c);
    return 0;
}

struct hcase {
    const char *name;
    int (*run)(void);
    const char *expect; /* in the daemon log; NULL: a plain disconnection */
    int times;          /* how often expect is logged per connection */
};

static const struct hcase cases[] = {
    {"mem-past-fd", c_mem_past_fd, "go past the end of its fd", 1},
    {"mem-shrunk-after-handover", c_mem_shrunk_after_handover, NULL, 0},
    {"mem-offset-past-fd", c_mem_offset_past_fd, "go past the end of its fd", 1},
    {"mem-offset-wraps", c_mem_offset_wraps, "go past the end of its fd", 1},
    {"mem-gpa-wraps", c_mem_gpa_wraps, "is empty or wraps", 1},
    {"mem-qva-wraps", c_mem_qva_wraps, "is empty or wraps", 1},
    {"mem-empty", c_mem_empty, "is empty or wraps", 1},
    {"mem-overlap", c_mem_overlap, "overlaps the one at", 1},
    {"mem-not-a-file", c_mem_not_a_file, "not a file or memfd", 1},
    {"mem-table-overlap", c_mem_table_overlap, "overlaps the one at", 1},
    {"mem-table-fd-count", c_mem_table_fd_count, "SET_MEM_TABLE of 72 bytes with 2 regions and 1 fds", 1},
    {"mem-table-too-many", c_mem_table_too_many, "with 1000 regions", 1},
    {"mem-table-past-fd", c_mem_table_past_fd, "go past the end of its fd", 1},
    {"inflight-past-fd", c_inflight_past_fd, "SET_INFLIGHT_FD: 1048576 bytes at offset 0 go past the end", 1},
    {"inflight-while-running", c_inflight_while_running, "SET_INFLIGHT_FD while queue 0 runs", 1},
    {"inflight-get-while-running", c_inflight_get_while_running, "GET_INFLIGHT_FD while queue 0 runs", 1},
    {"rem-ring-region", c_rem_ring_region, "no longer in guest memory (a region was removed while it ran)",
     1},
    {"bad-version", c_bad_version, "protocol version 2", 1},
    {"oversize", c_oversize, "is too large", 1},
    {"too-many-fds", c_too_many_fds, "came with more than 8 file descriptors", 1},
    {"fds-on-plain-message", c_fds_on_plain_message, "SET_FEATURES came with 3 file descriptors (it takes 0)",
     1},
    {"fd-with-nofd", c_fd_with_nofd, "SET_VRING_CALL came with 1 file descriptors (it takes 0)", 1},
    {"kick-without-fd", c_kick_without_fd, "SET_VRING_KICK without a file descriptor", 1},
    {"unaligned-desc", c_unaligned_desc, "unaligned ring addresses", 1},
    {"unaligned-avail", c_unaligned_avail, "unaligned ring addresses", 1},
    {"unaligned-used", c_unaligned_used, "unaligned ring addresses", 1},
    {"unaligned-in-mapping", c_unaligned_in_mapping, "the rings land unaligned in our mapping", 1},
    {"vring-addr-moves", c_vring_addr_moves, "SET_VRING_ADDR moves queue 0 while it runs", 1},
    {"kick-pipe-no-reader", c_kick_pipe_no_reader, "the kick file descriptor", 1},
    {"kick-pipe-eof", c_kick_pipe_eof, "the kick file descriptor", 1},
    {"kick-regular-file", c_kick_regular_file, "the kick file descriptor", 1},
    {"size-set-features", c_size_set_features, "SET_FEATURES with a payload of 4 bytes", 1},
    {"size-vring-addr", c_size_vring_addr, "SET_VRING_ADDR with a payload of 24 bytes", 1},
    {"size-vring-num", c_size_vring_num, "SET_VRING_NUM with a payload of 0 bytes", 1},
    {"size-add-mem-reg", c_size_add_mem_reg, "ADD_MEM_REG with a payload of 8 bytes", 1},
    {"size-every-request", c_size_every_request, "with a payload of 12 bytes (expected 8)", 6},
    {"size-mem-table", c_size_mem_table, "SET_MEM_TABLE with a payload of 4 bytes", 1},
    {"ring-size-huge", c_ring_size_huge, "bad ring size 65536", 1},
    {"ring-size-not-power-of-2", c_ring_size_npot, "bad ring size 100", 1},
    {"vring-base-big", c_vring_base_big, "SET_VRING_BASE 70000 beyond", 1},
    {"vring-index", c_vring_index, "SET_VRING_NUM for queue 1000", 1},
    {"vring-call-index", c_vring_call_index, "SET_VRING_CALL for queue 200", 1},
    {"get-vring-base-index", c_get_vring_base_index, "GET_VRING_BASE for queue 99", 1},
    {"kick-before-features", c_kick_before_features, "kick before SET_FEATURES", 1},
    {"owner-twice", c_owner_twice, "SET_OWNER again", 1},
    {"protocol-features-unoffered", c_protocol_features_unoffered,
     "protocol features 0x10000000000 we did not offer", 1},
    {"features-unoffered", c_features_unoffered, "features 0x8000000000000000 we did not offer", 1},
    {"get-config-oversize", c_get_config_oversize, "GET_CONFIG of 100000 bytes", 1},
    {"truncated-header", c_truncated_header, NULL, 1},
    {"close-mid-payload", c_close_mid_payload, NULL, 1},
    {"call-fd-full-pipe", c_call_fd_full_pipe, NULL, 1},
    {"reset-owner-running", c_reset_owner_running, NULL, 1},
    {"unknown-request", c_unknown_request, "unsupported vhost-user message 999", 1},
    {"log-base", c_log_base, "SET_LOG_BASE without LOG_SHMFD negotiated", 1},
    {"ring-desc-loop", c_ring_desc_loop, "descriptor chain longer than its table (a loop?)", 1},
    {"ring-buffer-outside", c_ring_buffer_outside, "buffer outside guest memory", 1},
    {"ring-buffer-wraps", c_ring_buffer_wraps, "buffer outside guest memory", 1},
    {"ring-buffer-past-end", c_ring_buffer_past_end, "buffer outside guest memory", 1},
    {"ring-buffer-len-max", c_ring_buffer_len_max, "buffer outside guest memory", 1},
    {"ring-head-range", c_ring_head_range, "descriptor head index out of range", 1},
    {"ring-next-range", c_ring_next_range, "next descriptor index out of range", 1},
    {"ring-avail-jump", c_ring_avail_jump, "available index moved by more than the queue size", 1},
    {"ring-indirect-unnegotiated", c_ring_indirect_unnegotiated, "indirect descriptor without the feature", 1},
    {"ring-indirect-nested", c_ring_indirect_nested, "indirect table inside an indirect table", 1},
    {"ring-indirect-next", c_ring_indirect_next, "indirect descriptor with the NEXT flag", 1},
    {"ring-indirect-odd", c_ring_indirect_odd, "indirect table of a bad size", 1},
    {"ring-indirect-huge", c_ring_indirect_huge, "indirect table of a bad size", 1},
    {"ring-indirect-empty", c_ring_indirect_empty, "indirect table of a bad size", 1},
    {"ring-indirect-outside", c_ring_indirect_outside, "indirect table outside guest memory", 1},
    {"ring-indirect-loop", c_ring_indirect_loop, "descriptor chain longer than its table (a loop?)", 1},
    {"ring-indirect-next-range", c_ring_indirect_next_range, "next descriptor index out of range", 1},
    {"ring-readable-after-writable", c_ring_readable_after_writable,
     "device-readable descriptor after a device-writable one", 1},
    {"ring-no-status", c_ring_no_status, "request without a status byte", 1},
    {"ring-short-header", c_ring_short_header, "request without a complete header", 1},
    {"ring-too-many-segments", c_ring_too_many_segments, "too many segments in one request", 1},
    {"ring-longest-chain", c_ring_longest_chain, NULL, 0},
    {"ring-segments-past-iov-max", c_ring_segments_past_iov_max, NULL, 0},
    {"ring-mid-batch", c_ring_mid_batch, "descriptor chain longer than its table (a loop?)", 1},
    {"ring-close-in-flight", c_ring_close_in_flight, NULL, 0},
};

static long fd_count(void)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)daemon_pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    long n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static long rss_kb(void)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)daemon_pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmRSS:", 6))
            kb = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kb;
}

/* ---- a hostile back end ------------------------------------------------- */

struct be_msg {
    uint32_t req, flags, size;
    uint8_t payload[4096];
    int fds[8], nfds;
};

static int be_recv(int sock, struct be_msg *m)
{
    uint8_t hdr[12];
    char cbuf[CMSG_SPACE(sizeof(int) * 8)];
    struct iovec iov = {hdr, 12};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    m->nfds = 0;
    ssize_t r = recvmsg(sock, &mh, MSG_WAITALL | MSG_CMSG_CLOEXEC);
    if (r != 12)
        return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < n && m->nfds < 8; i++)
                memcpy(&m->fds[m->nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        }
    memcpy(&m->req, hdr, 4);
    memcpy(&m->flags, hdr + 4, 4);
    memcpy(&m->size, hdr + 8, 4);
    if (m->size > sizeof(m->payload) ||
        (m->size && recv(sock, m->payload, m->size, MSG_WAITALL) != (ssize_t)m->size))
        return -1;
    return 0;
}

static void be_reply(int sock, uint32_t req, uint32_t size_field, const void *payload, uint32_t len)
{
    uint8_t buf[12 + 256];
    uint32_t flags = 1 | 0x4;
    memcpy(buf, &req, 4);
    memcpy(buf + 4, &flags, 4);
    memcpy(buf + 8, &size_field, 4);
    memcpy(buf + 12, payload, len);
    if (send(sock, buf, 12 + len, MSG_NOSIGNAL) < 0)
        return;
}

/* Listens on path only once it accepts: bind a temporary name, listen, rename. */
static int be_listen(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s.tmp", path);
    unlink(sa.sun_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1) < 0 ||
        rename(sa.sun_path, path) < 0) {
        perror("vhost-hostile: listen");
        return -1;
    }
    return fd;
}

static int backend_main(const char *path, const char *kind)
{
    int lfd = be_listen(path);
    if (lfd < 0)
        return 2;
    int sock = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (sock < 0)
        return 2;
    struct be_msg *m = malloc(sizeof(*m));
    uint8_t *mem = NULL;
    size_t mem_len = 0;
    uint64_t mem_qva = 0, used_qva = 0;
    int call_fd = -1;
    bool acks = false;
    uint64_t features =
        (1ull << 32) | (1ull << 30) | (1ull << VIRTIO_BLK_F_BLK_SIZE) | (1ull << VIRTIO_BLK_F_FLUSH);
    while (be_recv(sock, m) == 0) {
        uint64_t v = 0;
        bool replied = false;
        switch (m->req) {
        case VHOST_USER_GET_FEATURES:
            if (!strcmp(kind, "reply-wrong-request"))
                be_reply(sock, VHOST_USER_SET_FEATURES, 8, &features, 8);
            else if (!strcmp(kind, "reply-huge"))
                be_reply(sock, VHOST_USER_GET_FEATURES, 0x7fffffff, &features, 8);
            else if (!strcmp(kind, "reply-cut"))
                be_reply(sock, VHOST_USER_GET_FEATURES, 8, &features, 3);
            else
                be_reply(sock, VHOST_USER_GET_FEATURES, 8, &features, 8);
            if (!strcmp(kind, "reply-cut"))
                goto out;
            replied = true;
            break;
        case 15: /* GET_PROTOCOL_FEATURES: MQ, REPLY_ACK, CONFIG */
            v = 1 | 8 | (1 << 9);
            be_reply(sock, m->req, 8, &v, 8);
            replied = true;
            break;
        case VHOST_USER_SET_PROTOCOL_FEATURES:
            memcpy(&v, m->payload, 8);
            acks = v & 8;
            break;
        case 17: /* GET_QUEUE_NUM */
            v = !strcmp(kind, "queues-zero") ? 0 : !strcmp(kind, "queues-huge") ? 1ull << 40 : 1;
            be_reply(sock, m->req, 8, &v, 8);
            replied = true;
            break;
        case VHOST_USER_GET_CONFIG: {
            uint8_t cfg[12 + 60] = {0};
            uint64_t capacity = !strcmp(kind, "capacity-huge") ? UINT64_MAX / 4 : 2048;
            uint32_t blk = !strcmp(kind, "blk-size-odd")    ? 3
                           : !strcmp(kind, "blk-size-huge") ? 1u << 31
                                                            : 512;
            memcpy(cfg + 12, &capacity, 8);
            memcpy(cfg + 12 + 20, &blk, 4);
            be_reply(sock, m->req, !strcmp(kind, "config-short") ? 16 : sizeof(cfg), cfg,
                     !strcmp(kind, "config-short") ? 16 : sizeof(cfg));
            replied = true;
            break;
        }
        case VHOST_USER_SET_MEM_TABLE:
            if (m->nfds == 1 && m->size >= 8 + sizeof(struct region)) {
                struct region r;
                memcpy(&r, m->payload + 8, sizeof(r));
                mem_len = r.size + r.offset;
                mem_qva = r.qva - r.offset;
                mem = mmap(NULL, mem_len, PROT_READ | PROT_WRITE, MAP_SHARED, m->fds[0], 0);
                if (mem == MAP_FAILED)
                    mem = NULL;
            }
            break;
        case VHOST_USER_SET_VRING_ADDR:
            memcpy(&used_qva, m->payload + 16, 8);
            break;
        case VHOST_USER_GET_VRING_BASE:
            be_reply(sock, m->req, 8, m->payload, 8);
            replied = true;
            break;
        case VHOST_USER_SET_VRING_CALL:
            if (m->nfds) {
                call_fd = m->fds[0];
                m->fds[0] = -1;
            }
            break;
        }
        if (!replied && acks && (m->flags & VHOST_USER_FLAG_NEED_REPLY)) {
            v = !strcmp(kind, "nack-all");
            be_reply(sock, m->req, 8, &v, 8);
        }
        /* the first kick: the used ring jumps far past the ring's size */
        if (m->req == VHOST_USER_SET_VRING_KICK && !strcmp(kind, "used-jump") && mem && used_qva - mem_qva < mem_len) {
            struct vring_used *u = (struct vring_used *)(mem + (used_qva - mem_qva));
            __atomic_store_n(&u->idx, (uint16_t)40000, __ATOMIC_RELEASE);
            if (call_fd >= 0)
                eventfd_write(call_fd, 1);
        }
        close_all(m->fds, m->nfds);
    }
out:
    free(m);
    if (mem)
        munmap(mem, mem_len);
    if (call_fd >= 0)
        close(call_fd);
    close(sock);
    close(lfd);
    unlink(path);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "--backend"))
        return backend_main(argv[2], argv[3]);
    if (argc < 5) {
        fprintf(stderr, "usage: %s SOCKET DAEMON_LOG DAEMON_PID ROUNDS [MAX_RSS_GROWTH_KB] [CASE]\n",
                argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    sock_path = argv[1];
    log_path = argv[2];
    daemon_pid = (pid_t)atoi(argv[3]);
    int rounds = atoi(argv[4]);
    long max_growth = argc > 5 ? atol(argv[5]) : 16384;
    const char *only = argc > 6 ? argv[6] : NULL;
    size_t ncases = sizeof(cases) / sizeof(cases[0]);
    long fds0 = 0, rss0 = 0, connections = 0;
    for (int round = 0; round < rounds; round++) {
        for (size_t i = 0; i < ncases; i++) {
            const struct hcase *t = &cases[i];
            if (only && strcmp(only, t->name))
                continue;
            long off = case_off = log_size();
            conns = 0;
            why[0] = 0;
            int rc = t->run();
            int bad_conns = conns;
            if (rc == 0)
                rc = wait_log(off, t->expect, conns);
            if (rc == 0) {
                char *text = log_since(off);
                /* the refusal is one line, and not repeated (a failed kick fd is not re-armed) */
                int want = t->times * bad_conns;
                if (t->expect && count_in(text, t->expect) != want)
                    rc = failf("'%s' logged %d times (expected %d)", t->expect, count_in(text, t->expect),
                               want);
                free(text);
            }
            if (rc == 0 && (rc = good_client()) == 0)
                rc = wait_log(off, NULL, conns);
            connections += conns;
            if (rc < 0) {
                fprintf(stderr, "FAIL %s (round %d): %s\n", t->name, round + 1, why);
                return 1;
            }
            if (round == 0)
                printf("ok   %s\n", t->name);
        }
        if (round == 0) {
            fds0 = fd_count();
            rss0 = rss_kb();
        }
    }
    long fds1 = fd_count(), rss1 = rss_kb();
    printf("%ld connections; daemon fds %ld -> %ld, VmRSS %ld -> %ld kB\n", connections, fds0, fds1, rss0,
           rss1);
    if (fds1 != fds0) {
        fprintf(stderr, "FAIL the daemon's fd count went from %ld to %ld\n", fds0, fds1);
        return 1;
    }
    if (rss1 - rss0 > max_growth) {
        fprintf(stderr, "FAIL the daemon's RSS grew by %ld kB (allowed %ld)\n", rss1 - rss0, max_growth);
        return 1;
    }
    return 0;
}
