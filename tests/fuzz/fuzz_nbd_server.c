/* Fuzz target: arbitrary bytes are what a client sends to the NBD server
 * (handshake options, then commands with payloads) over a socketpair; the
 * server must answer or close, never crash or read/write outside a request.
 * The export is a 1 MiB null-co node, writable.
 *
 * A coroutine on the server's loop reads its answers meanwhile: unread,
 * replies of more than the socket's buffer (four 64 KiB reads) left the
 * server waiting for ever (a thread cost a hand-off per input: the smoke
 * run took twice as long). After the valid handshake (data[0] bit 0) it also checks them as
 * the NBD spec (proto.md) lets a client: every request the server took
 * (the input parsed as transmission.c reads it) gets one final reply and
 * nothing after it; only the chunk types the spec defines, with their
 * lengths (a data chunk carries at least one byte, a hole chunk is 12
 * bytes and not empty, a block status chunk holds at least one extent, none
 * of length 0, an error chunk a non-zero error and a message that fits);
 * a read's content inside its range and, without an error, covering it;
 * block status extents no longer than the request; no simple reply to a
 * read or a block status. Anything else aborts. */
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/coroutine.h"
#include "vbd/export.h"
#include "vbd/loop.h"
#include "vbd/nbd.h"
#include "vbd/nbd-protocol.h"
#include "vbd/options.h"

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* transmission.c's NBD_MAX_REQUEST: a longer write ends the connection */
#define SERVER_MAX_WRITE (32u << 20)

/* A request the server reads after the handshake, and what its replies said. */
struct sent_req {
    uint64_t cookie, off;
    uint32_t len;
    uint16_t type;
    bool shared; /* another request has its cookie: replies cannot be told apart */
    bool done, errored;
    uint64_t covered; /* a read's content bytes */
};

struct input {
    const uint8_t *data;
    size_t size;
    bool check;         /* the handshake was the valid preamble: replies are checked */
    size_t requests_at; /* where the requests start in data */
};

struct replies {
    int fd;
    bool check;
    struct sent_req *reqs;
    size_t nreqs;
    bool done; /* the server closed and every answer was read */
    struct vbd_co_queue done_q;
};

static _Noreturn void bad_reply(uint64_t cookie, const char *what)
{
    fprintf(stderr, "fuzz-nbd-server: invalid reply (cookie 0x%llx): %s\n", (unsigned long long)cookie, what);
    abort();
}

/* 1: n bytes read; 0: the server closed before the first; -1: part way */
static int read_exact(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = vbd_co_recv(fd, (uint8_t *)buf + got, n - got);
        if (r <= 0)
            return got ? -1 : 0;
        got += (size_t)r;
    }
    return 1;
}

static void read_reply(int fd, void *buf, size_t n, uint64_t cookie)
{
    if (read_exact(fd, buf, n) != 1)
        bad_reply(cookie, "the connection ended inside a reply");
}

static void skip_reply(int fd, uint64_t n, uint64_t cookie)
{
    static uint8_t sink[65536];
    while (n) {
        size_t k = n < sizeof(sink) ? (size_t)n : sizeof(sink);
        read_reply(fd, sink, k, cookie);
        n -= k;
    }
}

static int by_cookie(const void *a, const void *b)
{
    uint64_t x = ((const struct sent_req *)a)->cookie, y = ((const struct sent_req *)b)->cookie;
    return x < y ? -1 : x > y;
}

/* The requests after the handshake as transmission.c reads them: it stops
 * at a bad magic, NBD_CMD_DISC, a write over the maximum or cut short. */
static size_t parse_requests(const uint8_t *p, size_t n, struct sent_req *out)
{
    size_t k = 0, at = 0;
    while (n - at >= 28) {
        const uint8_t *h = p + at;
        uint16_t type = get_be16p(h + 6);
        uint32_t len = get_be32p(h + 24);
        size_t payload = type == NBD_CMD_WRITE ? len : 0;
        if (get_be32p(h) != NBD_REQUEST_MAGIC || type == NBD_CMD_DISC || payload > SERVER_MAX_WRITE ||
            payload > n - at - 28)
            break;
        out[k++] =
            (struct sent_req){.cookie = get_be64p(h + 8), .off = get_be64p(h + 16), .len = len, .type = type};
        at += 28 + payload;
    }
    qsort(out, k, sizeof(*out), by_cookie);
    for (size_t i = 1; i < k; i++)
        if (out[i].cookie == out[i - 1].cookie)
            out[i].shared = out[i - 1].shared = true;
    return k;
}

static struct sent_req *find_req(struct replies *o, uint64_t cookie)
{
    struct sent_req key = {.cookie = cookie};
    struct sent_req *r = bsearch(&key, o->reqs, o->nreqs, sizeof(key), by_cookie);
    if (!r)
        bad_reply(cookie, "no request has this cookie");
    return r;
}

static void check_chunk(struct replies *o, uint16_t flags, uint16_t type, uint64_t cookie, uint32_t len)
{
    static uint8_t p[65536];
    struct sent_req *r = find_req(o, cookie);
    bool mine = !r->shared; /* the checks against the request need to know which it is */
    if (mine && r->done)
        bad_reply(cookie, "a chunk after the final one");
    if (flags & ~NBD_REPLY_FLAG_DONE)
        bad_reply(cookie, "chunk flags the spec does not define");
    switch (type) {
    case NBD_REPLY_TYPE_NONE:
        if (len || !(flags & NBD_REPLY_FLAG_DONE))
            bad_reply(cookie, "a NONE chunk with a payload or without DONE");
        break;
    case NBD_REPLY_TYPE_OFFSET_DATA:
    case NBD_REPLY_TYPE_OFFSET_HOLE: {
        bool data = type == NBD_REPLY_TYPE_OFFSET_DATA;
        if (data ? len < 9 : len != 12)
            bad_reply(cookie,
                      data ? "a data chunk without data (length under 9)" : "a hole chunk not of 12 bytes");
        read_reply(o->fd, p, data ? 8 : 12, cookie);
        uint64_t off = get_be64p(p), n = data ? len - 8u : get_be32p(p + 8);
        if (data)
            skip_reply(o->fd, n, cookie);
        if (!n)
            bad_reply(cookie, "a hole of 0 bytes");
        if (mine &&
            (r->type != NBD_CMD_READ || off < r->off || off - r->off > r->len || n > r->len - (off - r->off)))
            bad_reply(cookie, "content outside the read's range, or for no read");
        if (mine)
            r->covered += n;
        break;
    }
    case NBD_REPLY_TYPE_BLOCK_STATUS: {
        if (len < 12 || (len - 4) % 8 || len > sizeof(p))
            bad_reply(cookie, "a block status chunk not of 4 + 8n bytes (n >= 1)");
        read_reply(o->fd, p, len, cookie);
        uint64_t sum = 0;
        for (uint32_t i = 4; i < len; i += 8) {
            if (!get_be32p(p + i))
                bad_reply(cookie, "a block status extent of 0 bytes");
            sum += get_be32p(p + i);
        }
        if (mine && (r->type != NBD_CMD_BLOCK_STATUS || sum > r->len))
            bad_reply(cookie, "block status extents past the request, or for no block status");
        break;
    }
    case NBD_REPLY_TYPE_ERROR:
    case NBD_REPLY_TYPE_ERROR_OFFSET: {
        uint32_t fixed = type == NBD_REPLY_TYPE_ERROR ? 6 : 14;
        if (len < fixed || len > sizeof(p))
            bad_reply(cookie, "an error chunk too short");
        read_reply(o->fd, p, len, cookie);
        if (!get_be32p(p) || get_be16p(p + 4) > len - fixed)
            bad_reply(cookie, "an error chunk with error 0, or a message longer than the chunk");
        if (mine)
            r->errored = true;
        break;
    }
    default:
        bad_reply(cookie, "a chunk type the spec does not define");
    }
    if ((flags & NBD_REPLY_FLAG_DONE) && mine) {
        if (r->type == NBD_CMD_READ && !r->errored && r->covered != r->len)
            bad_reply(cookie, "a read's content chunks do not cover it");
        r->done = true;
    }
}

/* The server's answers, read as they come (checked when o->check) until it closes. */
static void check_replies(struct replies *o)
{
    uint8_t h[20];
    if (!o->check) {
        static uint8_t sink[65536];
        while (vbd_co_recv(o->fd, sink, sizeof(sink)) > 0)
            ;
        return;
    }
    read_reply(o->fd, h, 18, 0); /* the greeting */
    for (;;) {                   /* the preamble's options, GO last */
        read_reply(o->fd, h, 20, 0);
        uint32_t opt = get_be32p(h + 8), type = get_be32p(h + 12), len = get_be32p(h + 16);
        if (get_be64p(h) != NBD_REP_MAGIC || (type & 0x80000000u) || len > 65536)
            bad_reply(0, "the valid handshake was not answered as such");
        skip_reply(o->fd, len, 0);
        if (opt == NBD_OPT_GO && type == NBD_REP_ACK)
            break;
    }
    for (;;) {
        int rc = read_exact(o->fd, h, 4);
        if (rc == 0)
            break;
        if (rc < 0)
            bad_reply(0, "the connection ended inside a reply");
        if (get_be32p(h) == NBD_SIMPLE_REPLY_MAGIC) {
            read_reply(o->fd, h + 4, 12, 0);
            uint64_t cookie = get_be64p(h + 8);
            struct sent_req *r = find_req(o, cookie);
            if (r->shared)
                continue;
            if (r->done)
                bad_reply(cookie, "a second reply");
            if (r->type == NBD_CMD_READ || r->type == NBD_CMD_BLOCK_STATUS)
                bad_reply(cookie, "a simple reply to a read or block status after structured replies");
            r->done = true;
        } else if (get_be32p(h) == NBD_STRUCTURED_REPLY_MAGIC) {
            read_reply(o->fd, h + 4, 16, 0);
            check_chunk(o, get_be16p(h + 4), get_be16p(h + 6), get_be64p(h + 8), get_be32p(h + 16));
        } else {
            bad_reply(0, "a reply with an unknown magic");
        }
    }
    for (size_t i = 0; i < o->nreqs; i++)
        if (!o->reqs[i].shared && !o->reqs[i].done)
            bad_reply(o->reqs[i].cookie, "a request the server read got no final reply");
}

static void read_replies_co(void *arg)
{
    struct replies *o = arg;
    check_replies(o);
    o->done = true;
    vbd_co_queue_wake_all(&o->done_q);
}

static void setup_co(void *arg)
{
    (void)arg;
    struct vbd_error *err = NULL;
    char path[64];
    snprintf(path, sizeof(path), "/tmp/vbd-fuzz-nbd-%d.sock", (int)getpid());
    struct json_object *so = json_object_new_object();
    json_object_object_add(so, "addr.type", json_object_new_string("unix"));
    json_object_object_add(so, "addr.path", json_object_new_string(path));
    if (vbd_nbd_server_start(so, &err) < 0)
        abort();
    json_object_put(so);
    struct json_object *no = json_object_new_object();
    json_object_object_add(no, "driver", json_object_new_string("null-co"));
    json_object_object_add(no, "node-name", json_object_new_string("n0"));
    json_object_object_add(no, "size", json_object_new_string("1M"));
    json_object_object_add(no, "read-zeroes", json_object_new_boolean(1));
    if (!vbd_open(NULL, no, VBD_OPEN_RDWR, &err))
        abort();
    struct json_object *eo = json_object_new_object();
    json_object_object_add(eo, "id", json_object_new_string("e0"));
    json_object_object_add(eo, "node-name", json_object_new_string("n0"));
    json_object_object_add(eo, "name", json_object_new_string("disk"));
    json_object_object_add(eo, "writable", json_object_new_boolean(1));
    if (!vbd_export_type_nbd.create(eo, &err))
        abort();
    json_object_put(eo);
    unlink(path);
}

static void client_co(void *arg)
{
    struct input *in = arg;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    /* the whole input is queued at once, then the client side is closed: the
     * server sees the bytes and then EOF (answers may fill the buffer: drained below) */
    int sndbuf = 4 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof(sndbuf));
    size_t off = 0;
    while (off < in->size) {
        ssize_t w = send(sv[1], in->data + off, in->size - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    shutdown(sv[1], SHUT_WR);
    struct replies o = {.fd = sv[1], .check = in->check};
    if (o.check) {
        size_t n = off > in->requests_at ? off - in->requests_at : 0; /* what reached the server */
        o.reqs = malloc((n / 28 + 1) * sizeof(*o.reqs));
        if (!o.reqs)
            abort();
        o.nreqs = parse_requests(in->data + in->requests_at, n, o.reqs);
    }
    vbd_co_wake(vbd_co_create(read_replies_co, &o));
    vbd_nbd_serve_fd(sv[0]); /* closes sv[0]: the reader sees the end */
    while (!o.done)
        vbd_co_queue_wait(&o.done_q);
    free(o.reqs);
    close(sv[1]);
}

static void stop_co(void *arg)
{
    (void)arg;
    vbd_nbd_server_stop();
}

static void stop_server(void)
{
    vbd_co_run_sync(stop_co, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        vbd_log_set_level(VBD_LOG_ERROR);
        vbd_co_run_sync(setup_co, NULL);
        atexit(stop_server);
        ready = 1;
    }
    if (size > (1u << 20))
        return 0;
    /* data[0] bit 0: start with a valid handshake (structured replies, GO "disk") so
     * that random bytes reach the command parser (and the replies are checked);
     * bit 2: with base:allocation selected before the GO (block status answers);
     * bit 1: force the request magic and a known command type on every 28-byte
     * request header */
    static uint8_t buf[(1u << 20) + 256];
    size_t n = 0;
    const uint8_t *rest = size ? data + 1 : data;
    size_t rlen = size ? size - 1 : 0;
    if (size && (data[0] & 1)) {
        static const uint8_t hello[] = {
            0, 0, 0, 3,                                                           /* client flags */
            'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 8, 0, 0, 0, 0};      /* STRUCTURED_REPLY */
        static const uint8_t meta[] = {
            'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 10, 0, 0, 0, 31,     /* SET_META_CONTEXT */
            0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 0, 0, 1, 0, 0, 0, 15,
            'b', 'a', 's', 'e', ':', 'a', 'l', 'l', 'o', 'c', 'a', 't', 'i', 'o', 'n'};
        static const uint8_t go[] = {
            'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 7, 0, 0, 0, 10,      /* GO */
            0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 0};
        memcpy(buf, hello, sizeof(hello));
        n = sizeof(hello);
        if (data[0] & 4) {
            memcpy(buf + n, meta, sizeof(meta));
            n += sizeof(meta);
        }
        memcpy(buf + n, go, sizeof(go));
        n += sizeof(go);
    }
    memcpy(buf + n, rest, rlen);
    if (size && (data[0] & 2))
        for (size_t at = n; at + 28 <= n + rlen; at += 28) {
            static const uint8_t magic[4] = {0x25, 0x60, 0x95, 0x13};
            memcpy(buf + at, magic, 4);
            buf[at + 6] = 0;
            buf[at + 7] %= 10;
            buf[at + 24] = buf[at + 25] = 0; /* lengths below 64 KiB */
            buf[at + 16] = buf[at + 17] = buf[at + 18] = buf[at + 19] = buf[at + 20] = 0; /* offsets near 1 MiB */
            if (buf[at + 7] == 1)
                at += ((size_t)buf[at + 26] << 8 | buf[at + 27]); /* a write: its payload follows */
        }
    struct input in = {buf, n + rlen, size && (data[0] & 1), n};
    vbd_co_run_sync(client_co, &in);
    return 0;
}
