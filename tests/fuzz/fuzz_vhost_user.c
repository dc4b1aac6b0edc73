/* Fuzz target: arbitrary bytes are what a malicious VMM (the vhost-user
 * front end) sends to a vhost-user-blk export: messages with any request
 * number, flags, payload size and file descriptors (memfds of the guest's
 * memory, of 4 KiB and of 0 bytes, eventfds, pipes, a socket, /dev/null, a
 * directory; more than a message takes), in any order and repeated, with
 * kicks and virtio-blk requests written into the guest's memory between
 * them. The export is the real one (vbd_export_type_vhost_user_blk on a
 * 1 MiB node, two queues; one of two, see exports) listening on a unix
 * socket on this process's loop, so every message goes through recvmsg,
 * the checks and the handlers as it does in vbd-daemon.
 *
 * After each message the front end sends GET_QUEUE_NUM and reads every
 * reply until that one's: a reply must be well formed (version 1 with the
 * REPLY flag, at most 4 KiB) and answer the message just sent, one reply
 * at most, and only to a request that has one (a GET, SET_LOG_BASE) or
 * asked for it (NEED_REPLY). When the back end closes the connection the
 * front end connects again with the rest of the input. At the end of each
 * input, once the back end has let the last front end go, this process
 * must hold exactly the file descriptors and memfd mappings it held
 * before: a message's fds, the memory table's and the inflight region's
 * mappings are all given back. Anything else aborts.
 *
 * Input: byte 0 bit 0 starts each connection with a well-behaved front
 * end's set-up (features, protocol features with REPLY_ACK, the memory
 * table, two rings of 64 entries running with kick and call eventfds), so
 * that the rest reaches a device that runs; bit 1 negotiates EVENT_IDX and
 * INDIRECT_DESC in it; bit 2 picks the export that stops on I/O errors
 * (see exports). Then operations, one byte each and their
 * arguments (see run_ops).
 */
#include "blk-internal.h"
#include "fuzz-input.h"

#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"
#include "vbd/vhost-user-protocol.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define GUEST_MEM (256u << 10)
#define QVA_BASE 0x7f1200000000ull /* the front end's address of the guest memory */
#define RING_NUM 64
#define RING_STRIDE 0x4000u /* ring q: descriptors at q * stride, avail +0x1000, used +0x2000 */
#define HDR_AREA 0x8000u    /* request headers and status bytes, 0x200 a slot */
#define DATA_AREA 0x10000u  /* request data, 0x2000 a slot */
#define SLOTS 21            /* chains of three descriptors in a ring of 64 */
#define MAX_EVENTFDS 32
#define MAX_PAYLOAD 4096 /* the back end's limit */
/* An input's cost is bounded: make check runs 5000 random inputs of up to
 * 4 KiB (unbounded, that run had not ended after 10 min at load 50; at
 * most 96 messages over 4 connections, 8 min at load 65). The rest of a
 * longer input is not used. */
#define MAX_MESSAGES 64 /* the set-ups' included */
#define MAX_SESSIONS 2

/* Two exports: e0 on a null-co node; e1 with werror=stop and rerror=stop
 * on a blkdebug node over null-co that fails reads and writes at sector
 * 2000 (EIO): its failed requests are parked, the rings stop popping, and
 * only stopping the ring (GET_VRING_BASE, a reset, the front end gone)
 * completes them. */
static struct vbd_export *exports[2];
static char sock_paths[2][108];
static uint8_t *guest;   /* our mapping of the guest's memory */
static int guest_fd;     /* a memfd, kept across inputs */
/* This process's fds and memfd mappings when the input began (no front
 * end connected). Per input, not once: libFuzzer opens pipes of its own
 * between inputs (to llvm-symbolizer, at its first NEW_FUNC line). */
static int fds_at_start;
static int maps_at_start;

/* The front end's state for one input. */
struct front_end {
    struct input in;
    int which; /* the export: 0, or 1 (the one that stops on errors) */
    bool setup, ring_features;
    int sock;                     /* -1 once the back end closed it */
    int eventfds[MAX_EVENTFDS];   /* our copies of the eventfds we sent (kicks) */
    int neventfds;
    int kick[2];                  /* the set-up's kick eventfds (copies in eventfds[]) */
    int messages;                 /* sent in this input (MAX_MESSAGES) */
};

static bool fd_at_start[4096];

/* Counts this process's fds; with `record`, notes which they are; with
 * `report`, prints those that were not there at the start. */
static int count_fds(bool record, bool report)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        abort();
    int n = 0;
    struct dirent *e;
    if (record)
        memset(fd_at_start, 0, sizeof(fd_at_start));
    while ((e = readdir(d))) {
        n++;
        int fd = atoi(e->d_name);
        if (e->d_name[0] < '0' || e->d_name[0] > '9' || fd == dirfd(d) || fd >= 4096)
            continue;
        if (record)
            fd_at_start[fd] = true;
        if (report && !fd_at_start[fd]) {
            char link[64], target[256] = "?";
            snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
            ssize_t l = readlink(link, target, sizeof(target) - 1);
            target[l > 0 ? l : 1] = 0;
            fprintf(stderr, "fuzz-vhost-user: fd %d (%s) left open\n", fd, target);
        }
    }
    closedir(d);
    return n;
}

/* Mappings of our memfds: the guest's memory and the inflight regions. */
static int count_memfd_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        abort();
    char line[512];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        if (strstr(line, "memfd:vbd-"))
            n++;
    fclose(f);
    return n;
}

static _Noreturn void fail(const char *what, uint32_t request)
{
    fprintf(stderr, "fuzz-vhost-user: %s (request %u)\n", what, request);
    abort();
}

static const uint64_t words[] = {
    0,
    1,
    2,
    8,
    16,
    0x100, /* VHOST_USER_VRING_NOFD */
    0x101,
    0xfff,
    0x1000,
    0x2000,
    0x4000,
    0x8000,
    GUEST_MEM - 0x1000,
    GUEST_MEM,
    2 * GUEST_MEM,
    QVA_BASE,
    QVA_BASE + 0x1000,
    QVA_BASE + 0x2000,
    QVA_BASE + GUEST_MEM - 0x1000,
    QVA_BASE + GUEST_MEM,
    64ull << 32,             /* SET_VRING_NUM/BASE queue 0, 64 */
    (64ull << 32) | 1,       /* queue 1 */
    (1024ull << 32) | 1,
    (2048ull << 32),
    (3ull << 32),
    (65536ull << 32) | 1,
    1ull << 32,
    1ull << 40,
    1ull << 63,
    UINT64_MAX,
    UINT64_MAX - 0xfff,
    (1ull << VIRTIO_F_VERSION_1) | (1ull << VHOST_USER_F_PROTOCOL_FEATURES) | (1ull << VIRTIO_BLK_F_FLUSH),
    (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_RING_F_EVENT_IDX) | (1ull << VIRTIO_RING_F_INDIRECT_DESC),
    (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) | (1ull << VHOST_USER_PROTOCOL_F_MQ) |
        (1ull << VHOST_USER_PROTOCOL_F_CONFIG) | (1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) |
        (1ull << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS) | (1ull << VHOST_USER_PROTOCOL_F_BACKEND_REQ),
};
#define NWORDS (sizeof(words) / sizeof(words[0]))

static bool has_own_reply(uint32_t request)
{
    switch (request) {
    case VHOST_USER_GET_FEATURES:
    case VHOST_USER_GET_PROTOCOL_FEATURES:
    case VHOST_USER_GET_VRING_BASE:
    case VHOST_USER_GET_QUEUE_NUM:
    case VHOST_USER_GET_CONFIG:
    case VHOST_USER_GET_INFLIGHT_FD:
    case VHOST_USER_GET_MAX_MEM_SLOTS:
    case VHOST_USER_SET_LOG_BASE:
        return true;
    }
    return false;
}

static int new_memfd(const char *name, off_t size, unsigned flags)
{
    int fd = memfd_create(name, MFD_CLOEXEC | flags);
    if (fd < 0 || ftruncate(fd, size) < 0)
        abort();
    return fd;
}

/* A file descriptor of the kind k for a message (we close ours after sending it). */
static int make_fd(struct front_end *fe, uint8_t k)
{
    int p[2], fd;
    switch (k % 10) {
    case 0:
        return fcntl(guest_fd, F_DUPFD_CLOEXEC, 0);
    case 1:
        return new_memfd("vbd-fuzz-small", 4096, MFD_ALLOW_SEALING);
    case 2:
        return new_memfd("vbd-fuzz-empty", 0, 0);
    case 3:
        fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd < 0)
            abort();
        if (fe->neventfds < MAX_EVENTFDS) {
            fe->eventfds[fe->neventfds++] = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        }
        return fd;
    case 4: /* a pipe's read end, its writer gone: at its end at once */
    case 5: /* a pipe's write end, its reader gone */
        if (pipe2(p, O_CLOEXEC) < 0)
            abort();
        close(p[k % 10 == 4 ? 1 : 0]);
        return p[k % 10 == 4 ? 0 : 1];
    case 6:
        return open("/dev/null", O_RDWR | O_CLOEXEC);
    case 7:
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) < 0)
            abort();
        close(p[1]);
        return p[0];
    case 8: /* memory that cannot be sealed against shrinking any more */
        fd = new_memfd("vbd-fuzz-sealed", GUEST_MEM, MFD_ALLOW_SEALING);
        fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL);
        return fd;
    default:
        return open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    }
}

/* Reads the back end's replies until the one to GET_QUEUE_NUM that
 * followed `request`; false when the back end closed the connection. */
static bool read_replies(struct front_end *fe, uint32_t request, uint32_t flags, int barriers)
{
    int answered = 0;
    while (barriers) {
        uint8_t hdr[12];
        char cbuf[CMSG_SPACE(sizeof(int) * 8)];
        struct iovec iov = {hdr, sizeof(hdr)};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
        ssize_t r = vbd_co_recvmsg(fe->sock, &mh, 0);
        for (struct cmsghdr *c = r > 0 ? CMSG_FIRSTHDR(&mh) : NULL; c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                    int fd;
                    memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                    close(fd);
                }
        if (r == 0 || r == -ECONNRESET || r == -EPIPE) /* closed (with our bytes unread: reset) */
            return false;
        if (r < 0)
            fail("cannot read the back end's reply", request);
        if (r < (ssize_t)sizeof(hdr) && vbd_co_recv_full(fe->sock, hdr + r, sizeof(hdr) - (size_t)r) < 0)
            fail("the back end closed inside a reply header", request);
        uint32_t rq, fl, sz;
        memcpy(&rq, hdr, 4);
        memcpy(&fl, hdr + 4, 4);
        memcpy(&sz, hdr + 8, 4);
        if (fl != (VHOST_USER_VERSION | VHOST_USER_FLAG_REPLY) || sz > MAX_PAYLOAD)
            fail("a reply with bad flags or size", rq);
        static uint8_t payload[MAX_PAYLOAD];
        if (sz && vbd_co_recv_full(fe->sock, payload, sz) < 0)
            fail("the back end closed inside a reply's payload", rq);
        if (rq == VHOST_USER_GET_QUEUE_NUM && (request != VHOST_USER_GET_QUEUE_NUM || answered)) {
            if (sz != 8)
                fail("GET_QUEUE_NUM's reply is not 8 bytes", rq);
            barriers--;
            continue;
        }
        if (rq != request)
            fail("a reply to a request that was not sent", rq);
        if (answered++)
            fail("two replies to one request", rq);
        if (!has_own_reply(rq) && !(flags & VHOST_USER_FLAG_NEED_REPLY))
            fail("a reply to a request that takes none and did not ask for one", rq);
        if (!has_own_reply(rq) && sz != 8)
            fail("a REPLY_ACK that is not 8 bytes", rq);
        if (rq == VHOST_USER_GET_QUEUE_NUM)
            barriers--;
    }
    return true;
}

/* One message (and the GET_QUEUE_NUM behind it); false when the back end
 * closed the connection. */
static bool send_msg(struct front_end *fe, uint32_t request, uint32_t flags, const void *payload, uint32_t size,
                     const int *fds, int nfds)
{
    fe->messages++;
    uint8_t buf[12 + MAX_PAYLOAD + 64];
    memcpy(buf, &request, 4);
    memcpy(buf + 4, &flags, 4);
    memcpy(buf + 8, &size, 4);
    memcpy(buf + 12, payload, size);
    struct iovec iov = {buf, 12 + size};
    char cbuf[CMSG_SPACE(sizeof(int) * 16)];
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds) {
        memset(cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t r = vbd_co_sendmsg(fe->sock, &mh, 0);
    if (r < 0)
        return false; /* the back end is gone: its EOF is read below */
    if ((size_t)r < 12 + size && vbd_co_send_full(fe->sock, buf + r, 12 + size - (size_t)r) < 0)
        return false;
    uint32_t barrier[3] = {VHOST_USER_GET_QUEUE_NUM, VHOST_USER_VERSION, 0};
    if (vbd_co_send_full(fe->sock, barrier, sizeof(barrier)) < 0)
        return false;
    return read_replies(fe, request, flags, request == VHOST_USER_GET_QUEUE_NUM ? 2 : 1);
}

static bool send_u64(struct front_end *fe, uint32_t request, uint64_t v, int fd)
{
    bool ok = send_msg(fe, request, VHOST_USER_VERSION, &v, sizeof(v), &fd, fd >= 0);
    if (fd >= 0)
        close(fd);
    return ok;
}

static int new_eventfd(struct front_end *fe)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0 || fe->neventfds >= MAX_EVENTFDS)
        abort();
    fe->eventfds[fe->neventfds++] = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    return fd;
}

/* What a well-behaved front end does before the guest runs. */
static bool setup_device(struct front_end *fe)
{
    uint64_t features = (1ull << VIRTIO_F_VERSION_1) | (1ull << VHOST_USER_F_PROTOCOL_FEATURES) |
                        (1ull << VIRTIO_BLK_F_FLUSH) | (1ull << VIRTIO_BLK_F_MQ) |
                        (1ull << VIRTIO_BLK_F_WRITE_ZEROES) | (1ull << VIRTIO_BLK_F_SEG_MAX);
    if (fe->ring_features)
        features |= (1ull << VIRTIO_RING_F_EVENT_IDX) | (1ull << VIRTIO_RING_F_INDIRECT_DESC);
    uint64_t protocol = (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) | (1ull << VHOST_USER_PROTOCOL_F_MQ) |
                        (1ull << VHOST_USER_PROTOCOL_F_CONFIG) | (1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) |
                        (1ull << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS);
    if (!send_u64(fe, VHOST_USER_SET_OWNER, 0, -1) || !send_u64(fe, VHOST_USER_GET_FEATURES, 0, -1) ||
        !send_u64(fe, VHOST_USER_SET_FEATURES, features, -1) ||
        !send_u64(fe, VHOST_USER_SET_PROTOCOL_FEATURES, protocol, -1))
        return false;
    struct {
        uint32_t n, pad;
        uint64_t gpa, size, qva, mmap_offset;
    } table = {1, 0, 0, GUEST_MEM, QVA_BASE, 0};
    int fd = fcntl(guest_fd, F_DUPFD_CLOEXEC, 0);
    bool ok = send_msg(fe, VHOST_USER_SET_MEM_TABLE, VHOST_USER_VERSION, &table, sizeof(table), &fd, 1);
    close(fd);
    if (!ok)
        return false;
    for (uint32_t q = 0; q < 2; q++) {
        uint64_t qva = QVA_BASE + q * RING_STRIDE;
        struct {
            uint32_t index, flags;
            uint64_t desc, used, avail, log;
        } addr = {q, 0, qva, qva + 0x2000, qva + 0x1000, 0};
        if (!send_u64(fe, VHOST_USER_SET_VRING_NUM, q | (uint64_t)RING_NUM << 32, -1) ||
            !send_msg(fe, VHOST_USER_SET_VRING_ADDR, VHOST_USER_VERSION, &addr, sizeof(addr), NULL, 0) ||
            !send_u64(fe, VHOST_USER_SET_VRING_BASE, q, -1) ||
            !send_u64(fe, VHOST_USER_SET_VRING_CALL, q, new_eventfd(fe)))
            return false;
        int kick = new_eventfd(fe);
        fe->kick[q] = fe->eventfds[fe->neventfds - 1];
        if (!send_u64(fe, VHOST_USER_SET_VRING_KICK, q, kick) ||
            !send_u64(fe, VHOST_USER_SET_VRING_ENABLE, q | 1ull << 32, -1))
            return false;
    }
    return true;
}

/* A virtio-blk request the guest puts on ring q (bit 0; bit 7: no kick,
 * so that the next kick pops it with others, a batch that merges):
 * header, data, status. */
static void post_request(struct front_end *fe, uint8_t q, uint8_t type, uint8_t sector, uint8_t sectors)
{
    static const uint32_t types[] = {VIRTIO_BLK_T_IN,      VIRTIO_BLK_T_OUT,          VIRTIO_BLK_T_FLUSH,
                                     VIRTIO_BLK_T_GET_ID,  VIRTIO_BLK_T_DISCARD,      VIRTIO_BLK_T_WRITE_ZEROES,
                                     0x7fff};
    bool kick = !(q & 0x80); /* else it waits for the next kick, with others: a batch to merge */
    q &= 1;
    uint8_t *ring = guest + q * RING_STRIDE;
    struct vring_desc *desc = (struct vring_desc *)ring;
    struct vring_avail *avail = (struct vring_avail *)(ring + 0x1000);
    uint16_t idx = __atomic_load_n(&avail->idx, __ATOMIC_RELAXED);
    unsigned slot = idx % SLOTS;
    uint16_t head = (uint16_t)(slot * 3);
    uint32_t t = types[type % (sizeof(types) / sizeof(types[0]))];
    bool device_reads = t == VIRTIO_BLK_T_OUT || t == VIRTIO_BLK_T_DISCARD || t == VIRTIO_BLK_T_WRITE_ZEROES;
    uint32_t len = t == VIRTIO_BLK_T_DISCARD || t == VIRTIO_BLK_T_WRITE_ZEROES ? 16 : (sectors % 17) * 512u;
    uint64_t hdr_gpa = HDR_AREA + q * 0x4000u + slot * 0x200u, data_gpa = DATA_AREA + slot * 0x2000u;
    struct virtio_blk_outhdr h = {.type = t, .sector = (uint64_t)sector * 16};
    memcpy(guest + hdr_gpa, &h, sizeof(h));
    if (len == 16) { /* one discard or write-zeroes range */
        struct virtio_blk_discard_write_zeroes dz = {.sector = (uint64_t)sector * 8, .num_sectors = sectors};
        memcpy(guest + data_gpa, &dz, sizeof(dz));
    }
    desc[head] = (struct vring_desc){hdr_gpa, sizeof(h), VRING_DESC_F_NEXT, (uint16_t)(head + 1)};
    uint16_t next_desc = (uint16_t)(head + 1);
    if (len) {
        desc[next_desc] = (struct vring_desc){data_gpa, len, (uint16_t)(VRING_DESC_F_NEXT | (device_reads ? 0 : VRING_DESC_F_WRITE)),
                                              (uint16_t)(head + 2)};
        next_desc++;
    }
    desc[next_desc] = (struct vring_desc){hdr_gpa + 0x100, 1, VRING_DESC_F_WRITE, 0};
    avail->ring[idx % RING_NUM] = head;
    __atomic_store_n(&avail->idx, (uint16_t)(idx + 1), __ATOMIC_RELEASE);
    if (fe->setup && kick)
        eventfd_write(fe->kick[q], 1);
}

/* The message of op: request number, flags, payload (built of words,
 * small pairs and raw bytes), fds. */
static bool fuzzed_msg(struct front_end *fe, uint8_t op)
{
    struct input *c = &fe->in;
    uint32_t request = input_next(c) % 42;
    uint8_t f = input_next(c);
    uint32_t flags = (f & 0x30) == 0x30 ? f & 3 : VHOST_USER_VERSION; /* now and then a wrong version */
    flags |= f & (VHOST_USER_FLAG_REPLY | VHOST_USER_FLAG_NEED_REPLY);
    uint8_t payload[MAX_PAYLOAD];
    uint32_t size = 0;
    unsigned chunks = input_next(c) % 16;
    if (op & 0x80) { /* a large payload: up to the limit */
        uint32_t hi = input_next(c); /* two statements: the order of calls in one expression is unspecified */
        size = (hi << 8 | input_next(c)) % (MAX_PAYLOAD + 1);
        for (uint32_t i = 0; i < size; i++)
            payload[i] = input_next(c);
        chunks = 0;
    }
    for (unsigned i = 0; i < chunks && size <= MAX_PAYLOAD - 64; i++) {
        uint8_t s = input_next(c);
        if (s < 128) { /* a 64-bit word from the list */
            memcpy(payload + size, &words[s % NWORDS], 8);
            size += 8;
        } else if (s < 192) { /* a small 32-bit value */
            uint32_t v = s & 63;
            memcpy(payload + size, &v, 4);
            size += 4;
        } else { /* raw bytes */
            for (int k = 0; k < s - 191; k++)
                payload[size++] = input_next(c);
        }
    }
    uint8_t fdspec = input_next(c);
    int nfds = fdspec % 11, fds[16];
    for (int i = 0; i < nfds; i++)
        fds[i] = make_fd(fe, input_next(c));
    bool ok = send_msg(fe, request, flags, payload, size, fds, nfds);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    return ok;
}

/* Operations until the input ends or the back end closes the connection:
 *   op % 8 < 5   a message (fuzzed_msg)
 *   op % 8 == 5  a kick on one of the eventfds we sent
 *   op % 8 == 6  a request on a ring (post_request)
 *   op % 8 == 7  guest memory overwritten (offset, bytes from the input)
 * Returns true when the input (or its budget of messages) ended first. */
static bool run_ops(struct front_end *fe)
{
    struct input *c = &fe->in;
    while (c->left && fe->messages < MAX_MESSAGES) {
        uint8_t op = input_next(c);
        switch (op % 8) {
        case 5: {
            uint8_t k = input_next(c);
            if (fe->neventfds)
                eventfd_write(fe->eventfds[k % fe->neventfds], 1);
            break;
        }
        case 6: {
            uint8_t q = input_next(c), t = input_next(c), s = input_next(c), n = input_next(c);
            post_request(fe, q, t, s, n);
            break;
        }
        case 7: {
            uint32_t off = (uint32_t)input_next(c) << 10;
            off = (off | (uint32_t)input_next(c) << 2) % GUEST_MEM;
            unsigned n = input_next(c) % 32;
            for (unsigned i = 0; i < n && off + i < GUEST_MEM; i++)
                guest[off + i] = input_next(c);
            break;
        }
        default:
            if (!fuzzed_msg(fe, op))
                return false;
        }
    }
    return true;
}

static void wait_back_end_idle(struct front_end *fe)
{
    struct blk_export *e = (struct blk_export *)exports[fe->which];
    while (!e->dev.conn_done || __atomic_load_n(&e->dev.conn_fd, __ATOMIC_RELAXED) >= 0)
        vbd_co_queue_wait(&e->dev.idle);
}

static void front_end_co(void *arg)
{
    struct front_end *fe = arg;
    bool input_left = true;
    for (int session = 0; input_left && session < MAX_SESSIONS && fe->messages < MAX_MESSAGES; session++) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_paths[fe->which]);
        fe->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fe->sock < 0 || vbd_co_connect(fe->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            abort();
        memset(guest, 0, GUEST_MEM);
        if (fe->setup && !setup_device(fe))
            fail("the back end refused a well-behaved front end's set-up", 0);
        input_left = !run_ops(fe);
        /* the front end goes: the back end must let everything go */
        shutdown(fe->sock, SHUT_WR);
        char sink[256];
        while (vbd_co_recv(fe->sock, sink, sizeof(sink)) > 0)
            ;
        close(fe->sock);
        for (int i = 0; i < fe->neventfds; i++)
            close(fe->eventfds[i]);
        fe->neventfds = 0;
        wait_back_end_idle(fe);
        int fds = count_fds(false, false), maps = count_memfd_maps();
        if (fds != fds_at_start) {
            count_fds(false, true);
            fprintf(stderr, "fuzz-vhost-user: %d file descriptors open after the front end left, %d before\n", fds,
                    fds_at_start);
        }
        if (maps != maps_at_start)
            fprintf(stderr, "fuzz-vhost-user: %d memfd mappings after the front end left, %d before\n", maps,
                    maps_at_start);
        if (fds != fds_at_start || maps != maps_at_start)
            abort();
    }
}

static struct json_object *export_opts(const char *id, const char *node, const char *path)
{
    struct json_object *eo = json_object_new_object();
    json_object_object_add(eo, "id", json_object_new_string(id));
    json_object_object_add(eo, "node-name", json_object_new_string(node));
    json_object_object_add(eo, "addr.type", json_object_new_string("unix"));
    json_object_object_add(eo, "addr.path", json_object_new_string(path));
    json_object_object_add(eo, "writable", json_object_new_boolean(1));
    json_object_object_add(eo, "num-queues", json_object_new_int(2));
    return eo;
}

static void setup_co(void *arg)
{
    (void)arg;
    struct vbd_error *err = NULL;
    const char *dir = getenv("TMPDIR");
    if (!dir || strlen(dir) > 60)
        dir = "/tmp";
    for (int i = 0; i < 2; i++) {
        snprintf(sock_paths[i], sizeof(sock_paths[i]), "%s/vbd-fuzz-vu-%d.%d.sock", dir, (int)getpid(), i);
        unlink(sock_paths[i]);
    }
    struct json_object *no = json_object_new_object();
    json_object_object_add(no, "driver", json_object_new_string("null-co"));
    json_object_object_add(no, "node-name", json_object_new_string("n0"));
    json_object_object_add(no, "size", json_object_new_string("1M"));
    json_object_object_add(no, "read-zeroes", json_object_new_boolean(1));
    if (!vbd_open(NULL, no, VBD_OPEN_RDWR, &err))
        abort();
    struct json_object *bo = vbd_keyval_parse("driver=blkdebug,node-name=b0,image.driver=null-co,image.size=1M,"
                                              "image.read-zeroes=on,inject-error.0.event=read_aio,"
                                              "inject-error.0.sector=2000,inject-error.1.event=write_aio,"
                                              "inject-error.1.sector=2000",
                                              NULL, &err);
    if (!bo)
        abort();
    if (!vbd_open(NULL, bo, VBD_OPEN_RDWR, &err)) {
        fprintf(stderr, "fuzz-vhost-user: %s\n", err ? err->msg : "cannot open the blkdebug node");
        abort();
    }
    struct json_object *eo[2] = {export_opts("e0", "n0", sock_paths[0]), export_opts("e1", "b0", sock_paths[1])};
    json_object_object_add(eo[1], "werror", json_object_new_string("stop"));
    json_object_object_add(eo[1], "rerror", json_object_new_string("stop"));
    json_object_object_add(eo[1], "retry-interval", json_object_new_int(0)); /* only on SIGUSR1: never here */
    for (int i = 0; i < 2; i++) {
        exports[i] = vbd_export_type_vhost_user_blk.create(eo[i], &err);
        if (!exports[i]) {
            fprintf(stderr, "fuzz-vhost-user: %s\n", err ? err->msg : "cannot create the export");
            abort();
        }
        json_object_put(eo[i]);
    }
}

static void stop_co(void *arg)
{
    (void)arg;
    for (int i = 0; i < 2; i++) {
        vbd_export_type_vhost_user_blk.shutdown(exports[i]);
        vbd_export_type_vhost_user_blk.free(exports[i]);
    }
}

static void stop_export(void)
{
    vbd_co_run_sync(stop_co, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        signal(SIGPIPE, SIG_IGN); /* as vbd-daemon: a call fd that is a pipe with no reader */
        vbd_log_set_level(VBD_LOG_ERROR);
        vbd_co_run_sync(setup_co, NULL);
        guest_fd = new_memfd("vbd-fuzz-guest", GUEST_MEM, MFD_ALLOW_SEALING);
        guest = mmap(NULL, GUEST_MEM, PROT_READ | PROT_WRITE, MAP_SHARED, guest_fd, 0);
        if (guest == MAP_FAILED)
            abort();
        atexit(stop_export);
        ready = 1;
    }
    if (!size || size > (64u << 10))
        return 0;
    fds_at_start = count_fds(true, false);
    maps_at_start = count_memfd_maps();
    struct front_end fe = {
        .in = {data + 1, size - 1},
        .setup = data[0] & 1,
        .ring_features = data[0] & 2,
        .which = (data[0] >> 2) & 1,
    };
    vbd_co_run_sync(front_end_co, &fe);
    return 0;
}
