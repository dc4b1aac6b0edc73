/* SPDX-License-Identifier: MIT */
/*
 * Protocol driver "nbd": an NBD client (NetworkBlockDevice/nbd doc/proto.md).
 * Fixed newstyle handshake with GO (EXPORT_NAME for old servers),
 * structured replies and base:allocation block status. Requests of one
 * connection are in flight together: the issuing coroutine sends and
 * sleeps, one reader coroutine reads replies and hands each to its owner by
 * cookie; read data lands straight in the caller's buffers. A lost
 * connection is re-established for up to reconnect-delay seconds, and the
 * requests that were in flight are sent again.
 */
#include "vbd/alloc.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/nbd-protocol.h"
#include "vbd/options.h"
#include "vbd/tls.h"

#include "nbd-uri.h"
#include "util/readahead.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_INFLIGHT 64
#define NBD_RBUF (64 * 1024) /* the reader's read-ahead (see rd_full) */

struct nbd_req {
    bool busy, done, sent;
    /* Its coroutine waits for the reply (in do_request's loop): only then
     * may the reader wake it. A server that replies before a write's
     * payload is all out (an early error, or a hostile one) woke it inside
     * its send's wait for the socket, which then returned with that wait
     * still registered: a crash (epoll engine) once the coroutine moved on. */
    bool waiting;
    uint16_t type, flags;
    uint64_t off;
    uint32_t len;
    struct vbd_qiov *qiov; /* read: destination; write: source */
    size_t qoff;
    const void *payload; /* write from a plain buffer (nothing else uses it) */
    int error;
    uint32_t bs_len, bs_flags; /* its block status extent */
    bool bs_got;
    bool chunked; /* a structured chunk came for it: its reply is structured */
    /* read: bytes its data and hole chunks covered. While covered is NULL
     * they are [off, off + seen), one after the other (how qemu-nbd and
     * nbdkit send them); a chunk anywhere else starts covered, a bit per
     * byte of the read (cover_chunk). */
    uint64_t seen;
    uint64_t *covered;
    uint64_t cookie; /* of its last send: the slot, and a count above it (see reply_req) */
    struct vbd_co *co;
};

/* What a handshake learned of the export; the state's copy is the live
 * connection's, replaced only by a reconnect that export_changed accepts. */
struct nbd_export_info {
    uint64_t size;
    uint16_t tflags;
    bool structured, has_meta;
    uint32_t meta_id;
    uint32_t min_block, pref_block, max_block;
};

struct nbd_state {
    char *path, *host, *port, *export;
    uint64_t reconnect_ns;
    struct vbd_chan ch; /* the connection (fd -1: none) and its TLS session */
    struct vbd_tls_creds *tls_creds;
    char *tls_hostname; /* the name the server's certificate must carry */
    struct nbd_export_info info;
    /* counts connections made: a request records the one it was meant
     * for and is not sent on a later one (send_request) */
    uint64_t conn_gen;
    struct nbd_req reqs[MAX_INFLIGHT];
    struct vbd_co_queue slot_q, conn_q;
    struct vbd_co_mutex send_lock;
    bool reader_running, connecting, closing;
    /* a reconnect-delay ran out with no server: one attempt per request
     * from then on, until a connection is made (ensure_connected) */
    bool gave_up;
    bool quit; /* the server broke the protocol: no reconnect (reader_co) */
    char refused[128]; /* why the last reconnect's server was refused (export_changed), for one warning */
    int inflight;
    uint8_t *rbuf; /* the reader's read-ahead, plain sockets (rd_full) */
    size_t rpos, rlen;
    uint64_t sends; /* requests sent, for unique cookies */
    char why[192]; /* why the reader stopped, for the line that says the connection is lost */
};

static int nbd_errno(uint32_t e)
{
    switch (e) {
    case NBD_EPERM:
        return -EPERM;
    case NBD_EIO:
        return -EIO;
    case NBD_ENOMEM:
        return -ENOMEM;
    case NBD_EINVAL:
        return -EINVAL;
    case NBD_ENOSPC:
        return -ENOSPC;
    case NBD_EOVERFLOW:
        return -EOVERFLOW;
    case NBD_ENOTSUP:
        return -ENOTSUP;
    case NBD_ESHUTDOWN:
        return -ESHUTDOWN;
    default:
        return -EIO;
    }
}

static int send_opt(struct vbd_chan *ch, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t h[16];
    uint64_t m = be64(NBD_IHAVEOPT);
    uint32_t o = be32(opt), l = be32(len);
    memcpy(h, &m, 8);
    memcpy(h + 8, &o, 4);
    memcpy(h + 12, &l, 4);
    int rc = vbd_chan_send_full(ch, h, 16);
    return rc == 0 && len ? vbd_chan_send_full(ch, data, len) : rc;
}

/* One option reply; payload (up to cap bytes kept, the rest skipped). */
static int recv_opt_reply(struct vbd_chan *ch, uint32_t *type, uint8_t *buf, uint32_t cap, uint32_t *len)
{
    uint8_t h[20];
    int rc = vbd_chan_recv_full(ch, h, 20);
    if (rc < 0)
        return rc;
    uint64_t m;
    memcpy(&m, h, 8);
    if (be64(m) != NBD_REP_MAGIC)
        return -EPROTO;
    uint32_t t, l;
    memcpy(&t, h + 12, 4);
    memcpy(&l, h + 16, 4);
    *type = be32(t);
    *len = be32(l);
    uint32_t keep = *len < cap ? *len : cap;
    if (keep && (rc = vbd_chan_recv_full(ch, buf, keep)) < 0)
        return rc;
    for (uint32_t left = *len - keep; left;) {
        uint8_t junk[256];
        uint32_t c = left < sizeof(junk) ? left : sizeof(junk);
        if ((rc = vbd_chan_recv_full(ch, junk, c)) < 0)
            return rc;
        left -= c;
    }
    return 0;
}

/* One connection attempt, its socket where a deadline's timer finds it
 * (attempt_expired). */
struct nbd_attempt {
    struct vbd_chan ch;
    bool expired;
};

/* A reconnect attempt's deadline: the socket is shut down, which ends a
 * handshake with a server that took the connection and says nothing (a
 * stopped or hung server: the kernel still accepts on its listening
 * socket) at once, and a TCP connect to a host that drops the SYNs (gone
 * from the network, a firewall): Linux aborts a connect in SYN_SENT on
 * shutdown(2). Before, the handshake waited on such a server for good,
 * and the connect for the kernel's SYN retries (tcp_syn_retries 6: 127 s),
 * every request behind them too, however short the reconnect-delay. */
static void attempt_expired(void *arg)
{
    struct nbd_attempt *at = arg;
    at->expired = true;
    if (at->ch.fd >= 0)
        shutdown(at->ch.fd, SHUT_RDWR);
}

/* Connects at->ch.fd to the server (-1 and an error if none answers). */
static int dial(struct nbd_state *s, struct nbd_attempt *at, struct vbd_error **err)
{
    if (s->path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(s->path) >= sizeof(sa.sun_path)) {
            vbd_error_setf(err, ENAMETOOLONG, "NBD socket path '%s' is too long", s->path);
            return -ENAMETOOLONG;
        }
        strcpy(sa.sun_path, s->path);
        at->ch.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int rc = at->ch.fd < 0 ? -errno : vbd_co_connect(at->ch.fd, (struct sockaddr *)&sa, sizeof(sa));
        if (rc == 0 && at->expired)
            rc = -ETIMEDOUT;
        if (rc < 0) {
            if (at->ch.fd >= 0)
                close(at->ch.fd);
            at->ch.fd = -1;
            if (at->expired)
                rc = -ETIMEDOUT;
            vbd_error_setf(err, -rc, "Failed to connect to '%s': %s", s->path, strerror(-rc));
            return rc;
        }
        return 0;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int gai = getaddrinfo(s->host, s->port, &hints, &res);
    if (gai) {
        vbd_error_setf(err, EINVAL, "address resolution failed for %s:%s: %s", s->host, s->port,
                       gai_strerror(gai));
        return -EINVAL;
    }
    int rc = -ECONNREFUSED;
    for (struct addrinfo *a = res; a && !at->expired; a = a->ai_next) {
        at->ch.fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (at->ch.fd < 0)
            continue;
        rc = vbd_co_connect(at->ch.fd, a->ai_addr, a->ai_addrlen);
        if (rc == 0 && !at->expired)
            break;
        close(at->ch.fd);
        at->ch.fd = -1;
    }
    freeaddrinfo(res);
    if (at->ch.fd < 0) {
        if (at->expired)
            rc = -ETIMEDOUT;
        vbd_error_setf(err, -rc, "Failed to connect to '%s:%s': %s", s->host, s->port, strerror(-rc));
        return rc;
    }
    int one = 1;
    setsockopt(at->ch.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return 0;
}

/* The connection ended in the handshake: say so, with TLS's reason if it has one. */
static int closed(struct vbd_chan *ch, struct vbd_error **err)
{
    const char *why = vbd_tls_error(ch->tls);
    if (why) {
        vbd_error_setf(err, EACCES, "%s", why);
        return -EACCES;
    }
    vbd_error_setf(err, EIO, "NBD server closed the connection during the handshake");
    return -EIO;
}

/* An export larger than a signed 64-bit offset holds: every size and
 * offset past that is negative for the block layer (vbd-img info said
 * "virtual size: -512 B" for a server's 2^64 - 512). QEMU 7.2 fails such
 * an open too ("Could not refresh total sector count"). */
static int export_size_check(const struct nbd_export_info *info, struct vbd_error **err)
{
    if (info->size <= VBD_MAX_REQUEST_END)
        return 0;
    vbd_error_setf(err, EFBIG, "the export's size (%llu bytes) is larger than 2^63 - 1 bytes",
                   (unsigned long long)info->size);
    return -EFBIG;
}

static int handshake(struct nbd_state *s, struct vbd_chan *ch, struct nbd_export_info *info, struct vbd_error **err)
{
    uint8_t g[18];
    if (vbd_chan_recv_full(ch, g, 18) < 0)
        return closed(ch, err);
    uint64_t m1, m2;
    uint16_t hf;
    memcpy(&m1, g, 8);
    memcpy(&m2, g + 8, 8);
    memcpy(&hf, g + 16, 2);
    hf = be16(hf);
    if (be64(m1) != NBD_MAGIC || be64(m2) != NBD_IHAVEOPT || !(hf & NBD_FLAG_FIXED_NEWSTYLE)) {
        vbd_error_setf(err, EPROTO, "the server does not speak fixed newstyle NBD");
        return -EPROTO;
    }
    uint32_t cf = be32(NBD_FLAG_C_FIXED_NEWSTYLE | (hf & NBD_FLAG_NO_ZEROES));
    if (vbd_chan_send_full(ch, &cf, 4) < 0)
        return closed(ch, err);
    uint8_t buf[512];
    uint32_t type, len;
    if (s->tls_creds) {
        /* STARTTLS, then the rest of the handshake inside TLS */
        if (send_opt(ch, NBD_OPT_STARTTLS, NULL, 0) < 0 || recv_opt_reply(ch, &type, buf, sizeof(buf), &len) < 0)
            return closed(ch, err);
        if (type != NBD_REP_ACK) {
            buf[len < sizeof(buf) ? len : sizeof(buf) - 1] = 0;
            vbd_error_setf(err, ENOTSUP, "the NBD server does not accept TLS%s%s", len ? ": " : "",
                           len ? (char *)buf : "");
            return -ENOTSUP;
        }
        if (!(ch->tls = vbd_tls_new(s->tls_creds, ch->fd, s->tls_hostname, err)))
            return -EIO;
        int rc = vbd_tls_handshake(ch->tls, err);
        if (rc < 0)
            return rc;
    }
    info->structured = false;
    if (send_opt(ch, NBD_OPT_STRUCTURED_REPLY, NULL, 0) < 0 || recv_opt_reply(ch, &type, buf, sizeof(buf), &len) < 0)
        return closed(ch, err);
    if (type == NBD_REP_ERR_TLS_REQD) {
        vbd_error_setf(err, EACCES, "the NBD server requires TLS (give the client tls-creds)");
        return -EACCES;
    }
    info->structured = type == NBD_REP_ACK;
    size_t nl = strlen(s->export);
    info->has_meta = false;
    if (info->structured) {
        uint8_t q[4 + 4096 + 4 + 4 + 15];
        uint32_t v = be32((uint32_t)nl);
        memcpy(q, &v, 4);
        memcpy(q + 4, s->export, nl);
        v = be32(1);
        memcpy(q + 4 + nl, &v, 4);
        v = be32(15);
        memcpy(q + 8 + nl, &v, 4);
        memcpy(q + 12 + nl, "base:allocation", 15);
        if (send_opt(ch, NBD_OPT_SET_META_CONTEXT, q, (uint32_t)(27 + nl)) < 0)
            return closed(ch, err);
        for (;;) {
            if (recv_opt_reply(ch, &type, buf, sizeof(buf), &len) < 0)
                return closed(ch, err);
            if (type == NBD_REP_META_CONTEXT && len >= 4) {
                memcpy(&info->meta_id, buf, 4);
                info->meta_id = be32(info->meta_id);
                info->has_meta = true;
                continue;
            }
            break; /* ACK or an error: block status is then just "data" */
        }
    }
    uint8_t q[4 + 4096 + 2 + 2];
    uint32_t v = be32((uint32_t)nl);
    memcpy(q, &v, 4);
    memcpy(q + 4, s->export, nl);
    uint16_t ni = be16(1), it = be16(NBD_INFO_BLOCK_SIZE);
    memcpy(q + 4 + nl, &ni, 2);
    memcpy(q + 6 + nl, &it, 2);
    if (send_opt(ch, NBD_OPT_GO, q, (uint32_t)(8 + nl)) < 0)
        return closed(ch, err);
    info->min_block = 1;
    info->pref_block = 4096;
    info->max_block = 32u << 20;
    bool have_export = false;
    for (;;) {
        if (recv_opt_reply(ch, &type, buf, sizeof(buf), &len) < 0)
            return closed(ch, err);
        if (type == NBD_REP_INFO && len >= 2) {
            uint16_t itype;
            memcpy(&itype, buf, 2);
            itype = be16(itype);
            if (itype == NBD_INFO_EXPORT && len >= 12) {
                uint64_t sz;
                memcpy(&sz, buf + 2, 8);
                memcpy(&info->tflags, buf + 10, 2);
                info->size = be64(sz);
                info->tflags = be16(info->tflags);
                have_export = true;
            } else if (itype == NBD_INFO_BLOCK_SIZE && len >= 14) {
                uint32_t mn, pr, mx;
                memcpy(&mn, buf + 2, 4);
                memcpy(&pr, buf + 6, 4);
                memcpy(&mx, buf + 10, 4);
                mn = be32(mn);
                pr = be32(pr);
                mx = be32(mx);
                /* the generic layer's alignment emulation needs a power of two; the spec promises one */
                if (!mn || (mn & (mn - 1)) || mn > 65536 || mx < mn || mx % mn || pr < mn) {
                    vbd_error_setf(
                        err, EPROTO,
                        "NBD server sent invalid block sizes (minimum %u, preferred %u, maximum %u)", mn, pr,
                        mx);
                    return -EPROTO;
                }
                info->min_block = mn;
                info->pref_block = pr;
                info->max_block = mx;
            }
            continue;
        }
        if (type == NBD_REP_ACK && have_export)
            return export_size_check(info, err);
        if (type & 0x80000000u) {
            if (type == 0x80000001u) /* GO unsupported: the old way */
                break;
            if (type == NBD_REP_ERR_TLS_REQD) {
                vbd_error_setf(err, EACCES, "the NBD server requires TLS (give the client tls-creds)");
                return -EACCES;
            }
            buf[len < sizeof(buf) ? len : sizeof(buf) - 1] = 0;
            vbd_error_setf(err, ENOENT, "Requested export '%s' not available%s%s", s->export, len ? ": " : "",
                           len ? (char *)buf : "");
            return -ENOENT;
        }
        vbd_error_setf(err, EPROTO, "unexpected NBD option reply 0x%x", type);
        return -EPROTO;
    }
    if (send_opt(ch, NBD_OPT_EXPORT_NAME, s->export, (uint32_t)nl) < 0)
        return closed(ch, err);
    uint8_t e[10];
    if (vbd_chan_recv_full(ch, e, 10) < 0) {
        vbd_error_setf(err, ENOENT, "Requested export '%s' not available", s->export);
        return -ENOENT;
    }
    uint64_t sz;
    memcpy(&sz, e, 8);
    memcpy(&info->tflags, e + 8, 2);
    info->size = be64(sz);
    info->tflags = be16(info->tflags);
    if (!(hf & NBD_FLAG_NO_ZEROES)) {
        uint8_t z[124];
        vbd_chan_recv_full(ch, z, 124);
    }
    return export_size_check(info, err);
}

static void reader_co(void *arg);

static void chan_close(struct vbd_chan *ch)
{
    vbd_tls_free(ch->tls);
    ch->tls = NULL;
    if (ch->fd >= 0)
        close(ch->fd);
    ch->fd = -1;
}

/* Reply bytes, for the reader coroutine: on plain sockets through a
 * read-ahead buffer, so that one recv(2) brings a reply's header, its
 * structured chunk's offset and a small payload (and at QD32 the next
 * replies too) where reading each piece exactly took four (and a fifth
 * that found nothing): vbd-img bench 4K reads from nbdkit over TCP made
 * 5.0 recv calls per request at QD1 and 4.0 at QD32, now 2.0 and 0.13.
 * Payloads of half the buffer or more go straight into place from the
 * socket. TLS sessions keep their own read-ahead (gnutls' records).
 * Emptied for each new connection. */
static int rd_full(struct nbd_state *s, void *dst, size_t len)
{
    if (!s->rbuf || s->ch.tls)
        return vbd_chan_recv_full(&s->ch, dst, len);
    while (len) {
        size_t take = vbd_readahead_take(dst, len, s->rbuf, &s->rpos, s->rlen);
        dst = (uint8_t *)dst + take;
        len -= take;
        if (!len)
            break;
        if (len >= NBD_RBUF / 2)
            return vbd_co_recv_full(s->ch.fd, dst, len);
        ssize_t r = vbd_co_recv(s->ch.fd, s->rbuf, NBD_RBUF);
        if (r <= 0)
            return r < 0 ? (int)r : -ECONNRESET;
        s->rpos = 0;
        s->rlen = (size_t)r;
    }
    return 0;
}

/* The reader stops: the reason, for reader_co's warning. */
static int reply_error(struct nbd_state *s, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int reply_error(struct nbd_state *s, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->why, sizeof(s->why), fmt, ap);
    va_end(ap);
    return rc;
}

/* Reading reply bytes failed: the server closed, or the socket failed. */
static int recv_error(struct nbd_state *s, int rc)
{
    if (rc == -ECONNRESET)
        return reply_error(s, -EIO, "the server closed the connection");
    return reply_error(s, -EIO, "receiving a reply: %s", strerror(-rc));
}

/* The request a reply names: one sent and not yet answered in full. A
 * reply for any other cookie (never sent, already done) is the server's
 * error; taking it could land its data in another request's buffer. Each
 * send has its own cookie (the slot in the low 8 bits, a count above):
 * with the slot alone, a reply the server repeated was taken for the
 * slot's next request and its data landed there. */
static struct nbd_req *reply_req(struct nbd_state *s, uint64_t cookie)
{
    static_assert(MAX_INFLIGHT <= 256, "the slot is a cookie's low 8 bits");
    struct nbd_req *r = (cookie & 0xff) < MAX_INFLIGHT ? &s->reqs[cookie & 0xff] : NULL;
    if (!r || !r->busy || !r->sent || r->done || r->cookie != cookie) {
        reply_error(s, -EPROTO, "reply for unknown handle %llu", (unsigned long long)cookie);
        return NULL;
    }
    return r;
}

/* A data or hole chunk [o, o + l) lies inside read r (o and l come from
 * the server: no sum that can wrap). */
static bool chunk_inside(const struct nbd_req *r, uint64_t o, uint64_t l)
{
    return o >= r->off && o - r->off <= r->len && l <= r->len - (o - r->off);
}

/* The bits of word i / 64 from bit i up to end (at most the word's rest);
 * *take: how many. */
static uint64_t word_mask(uint64_t i, uint64_t end, uint64_t *take)
{
    *take = 64 - i % 64 < end - i ? 64 - i % 64 : end - i;
    return (*take == 64 ? ~0ull : ((1ull << *take) - 1)) << (i % 64);
}

/* Bits [from, from + n) of map: any set? */
static bool bits_any(const uint64_t *map, uint64_t from, uint64_t n)
{
    uint64_t take;
    for (uint64_t i = from, end = from + n; i < end; i += take)
        if (map[i / 64] & word_mask(i, end, &take))
            return true;
    return false;
}

static void bits_set(uint64_t *map, uint64_t from, uint64_t n)
{
    uint64_t take;
    for (uint64_t i = from, end = from + n; i < end; i += take)
        map[i / 64] |= word_mask(i, end, &take);
}

/*
 * A content chunk [o, o + l) of read r (inside it, l > 0) is taken: 0; it
 * overlaps one before it: -EPROTO (the spec's MUST NOT). Before, only the
 * bytes were summed: two chunks over the same range made up for one never
 * sent, the read succeeded and handed the caller what its buffer held for
 * that gap (QEMU 7.2 checks neither). Chunks in order cost a compare; the
 * first one out of order makes a bitmap of the read (1/8 of its buffer,
 * one per read in flight): no overlap means each byte is marked once, so
 * however the server cuts and orders its chunks, the work stays linear in
 * the read's length.
 */
static int cover_chunk(struct nbd_req *r, uint64_t o, uint64_t l)
{
    uint64_t rel = o - r->off;
    if (!r->covered) {
        if (rel == r->seen) {
            r->seen += l;
            return 0;
        }
        if (!(r->covered = calloc(((size_t)r->len + 63) / 64, sizeof(uint64_t))))
            return -ENOMEM;
        bits_set(r->covered, 0, r->seen);
    }
    if (bits_any(r->covered, rel, l))
        return -EPROTO;
    bits_set(r->covered, rel, l);
    r->seen += l;
    return 0;
}

/* Why cover_chunk refused a chunk (what a data or hole chunk), for reader_co's warning. */
static int cover_error(struct nbd_state *s, const struct nbd_req *r, int rc, const char *what, uint64_t o, uint64_t l)
{
    if (rc == -ENOMEM)
        return reply_error(s, rc, "no memory to track the chunks of a read of %u bytes", r->len);
    return reply_error(s, rc, "%s chunk of %llu bytes at %llu overlaps an earlier chunk of the read of %u at %llu",
                       what, (unsigned long long)l, (unsigned long long)o, r->len, (unsigned long long)r->off);
}

static const char *cmd_name(uint16_t type)
{
    static const char *const names[] = {"read", "write", "disconnect", "flush", "trim", "cache", "write zeroes",
                                        "block status"};
    return type < sizeof(names) / sizeof(names[0]) ? names[type] : "unknown";
}

static int skip_bytes(struct nbd_state *s, uint64_t n)
{
    uint8_t junk[4096];
    while (n) {
        uint32_t c = n < sizeof(junk) ? (uint32_t)n : sizeof(junk);
        int rc = rd_full(s, junk, c);
        if (rc < 0)
            return rc;
        n -= c;
    }
    return 0;
}

/* Reads len bytes from the connection into qiov at qoff. */
static int recv_into(struct nbd_state *s, struct vbd_qiov *q, size_t qoff, uint32_t len)
{
    struct iovec small[64], *iov = small;
    int cap = 64, rc = 0;
    if (s->rbuf && !s->ch.tls) {
        /* what the read-ahead holds, then small rests through it too */
        for (;;) {
            size_t have = s->rlen - s->rpos, take = have < len ? have : len;
            if (take && vbd_iov_from_buf(q->iov, q->niov, qoff, s->rbuf + s->rpos, take) != take)
                return -EIO;
            s->rpos += take;
            qoff += take;
            len -= (uint32_t)take;
            if (!len)
                return 0;
            if (len >= NBD_RBUF / 2)
                break;
            ssize_t r = vbd_co_recv(s->ch.fd, s->rbuf, NBD_RBUF);
            if (r <= 0)
                return r < 0 ? (int)r : -ECONNRESET;
            s->rpos = 0;
            s->rlen = (size_t)r;
        }
    }
    if (!len)
        return 0;
    if (q->niov > 64) {
        cap = q->niov;
        iov = malloc(sizeof(*iov) * (size_t)cap);
        if (!iov)
            return -ENOMEM;
    }
    int cnt = vbd_iov_slice(iov, cap, q->iov, q->niov, qoff, len);
    rc = cnt <= 0 ? -EIO : vbd_chan_recvv_full(&s->ch, iov, cnt);
    if (iov != small)
        free(iov);
    return rc;
}

static void complete(struct nbd_state *s, struct nbd_req *r)
{
    r->done = true;
    if (r->co && r->waiting)
        vbd_co_wake(r->co);
    (void)s;
}

/* A structured chunk's content: where the spec says what it holds and for
 * which request, what breaks it is a protocol error (the spec: "for all
 * other messages with unknown or unexpected type or inconsistent contents,
 * the client MUST initiate a hard disconnect"), as QEMU's client has them. */
static int read_chunk(struct nbd_state *s, struct nbd_req *r, uint16_t flags, uint16_t type, uint32_t len)
{
    int rc;
    switch (type) {
    case NBD_REPLY_TYPE_NONE:
        if (!(flags & NBD_REPLY_FLAG_DONE))
            return reply_error(s, -EPROTO, "NONE chunk without the DONE flag");
        if (len)
            return reply_error(s, -EPROTO, "NONE chunk of %u bytes", len);
        return 0;
    case NBD_REPLY_TYPE_OFFSET_DATA: {
        if (r->type != NBD_CMD_READ)
            return reply_error(s, -EPROTO, "data chunk for a %s request", cmd_name(r->type));
        if (len <= 8)
            return reply_error(s, -EPROTO, "data chunk of %u bytes, too short for an offset and data", len);
        uint64_t o;
        if ((rc = rd_full(s, &o, 8)) < 0)
            return recv_error(s, rc);
        o = be64(o);
        if (!chunk_inside(r, o, len - 8))
            return reply_error(s, -EPROTO, "data chunk of %u bytes at %llu outside the read of %u at %llu", len - 8,
                               (unsigned long long)o, r->len, (unsigned long long)r->off);
        if ((rc = cover_chunk(r, o, len - 8)) < 0)
            return cover_error(s, r, rc, "data", o, len - 8);
        if ((rc = recv_into(s, r->qiov, r->qoff + (o - r->off), len - 8)) < 0)
            return recv_error(s, rc);
        return 0;
    }
    case NBD_REPLY_TYPE_OFFSET_HOLE: {
        if (r->type != NBD_CMD_READ)
            return reply_error(s, -EPROTO, "hole chunk for a %s request", cmd_name(r->type));
        if (len != 12)
            return reply_error(s, -EPROTO, "hole chunk of %u bytes, not 12", len);
        uint8_t b[12];
        if ((rc = rd_full(s, b, 12)) < 0)
            return recv_error(s, rc);
        uint64_t o = get_be64p(b);
        uint32_t l = get_be32p(b + 8);
        if (!l)
            return reply_error(s, -EPROTO, "hole chunk of 0 bytes at %llu", (unsigned long long)o);
        if (!chunk_inside(r, o, l))
            return reply_error(s, -EPROTO, "hole chunk of %u bytes at %llu outside the read of %u at %llu", l,
                               (unsigned long long)o, r->len, (unsigned long long)r->off);
        if ((rc = cover_chunk(r, o, l)) < 0)
            return cover_error(s, r, rc, "hole", o, l);
        vbd_iov_memset(r->qiov->iov, r->qiov->niov, r->qoff + (o - r->off), 0, l);
        return 0;
    }
    case NBD_REPLY_TYPE_BLOCK_STATUS: {
        if (r->type != NBD_CMD_BLOCK_STATUS)
            return reply_error(s, -EPROTO, "block status chunk for a %s request", cmd_name(r->type));
        if (len < 12)
            return reply_error(s, -EPROTO, "block status chunk of %u bytes, too short for an extent", len);
        uint8_t b[12];
        if ((rc = rd_full(s, b, 12)) < 0)
            return recv_error(s, rc);
        uint32_t id = get_be32p(b), l = get_be32p(b + 4);
        if (id != s->info.meta_id)
            return reply_error(s, -EPROTO, "block status chunk for context %u, not the negotiated %u", id,
                               s->info.meta_id);
        /* one chunk per context; REQ_ONE asks for one extent, more (a
         * SHOULD NOT) are skipped as QEMU does */
        if (r->bs_got)
            return reply_error(s, -EPROTO, "several block status chunks for one request");
        if (!l)
            return reply_error(s, -EPROTO, "block status extent of 0 bytes at %llu", (unsigned long long)r->off);
        r->bs_len = l;
        r->bs_flags = get_be32p(b + 8);
        r->bs_got = true;
        if ((rc = skip_bytes(s, len - 12)) < 0)
            return recv_error(s, rc);
        return 0;
    }
    }
    if (!(type & 0x8000))
        return reply_error(s, -EPROTO, "reply chunk of unknown type %u for a %s request", type, cmd_name(r->type));
    /* Every error type fails its request, those this client does not
     * know too (the spec's MUST). Before, only ERROR and ERROR_OFFSET
     * did: a write answered with another error type, or with an error
     * chunk too short to hold its error, completed as written. The
     * payload: the error, its message's length, the message. */
    uint8_t b[6];
    if (len < 6)
        return reply_error(s, -EPROTO, "error chunk (type 0x%x) of %u bytes, too short for an error", type, len);
    if ((rc = rd_full(s, b, 6)) < 0)
        return recv_error(s, rc);
    uint32_t e = get_be32p(b);
    uint16_t msg_len = get_be16p(b + 4);
    if (!e)
        return reply_error(s, -EPROTO, "error chunk (type 0x%x) with error 0", type);
    if (msg_len > len - 6)
        return reply_error(s, -EPROTO, "error chunk (type 0x%x) of %u bytes with a message of %u", type, len, msg_len);
    if ((rc = skip_bytes(s, len - 6)) < 0)
        return recv_error(s, rc);
    if (!r->error)
        r->error = nbd_errno(e);
    return 0;
}

static int read_reply(struct nbd_state *s, const char *name)
{
    uint8_t h[20];
    int rc;
    if ((rc = rd_full(s, h, 4)) < 0)
        return recv_error(s, rc);
    uint32_t magic;
    memcpy(&magic, h, 4);
    magic = be32(magic);
    if (magic == NBD_SIMPLE_REPLY_MAGIC) {
        if ((rc = rd_full(s, h + 4, 12)) < 0)
            return recv_error(s, rc);
        uint32_t e;
        uint64_t cookie;
        memcpy(&e, h + 4, 4);
        memcpy(&cookie, h + 8, 8);
        struct nbd_req *r = reply_req(s, be64(cookie));
        if (!r)
            return -EPROTO;
        /* a reply is one simple reply or structured chunks, and a read's
         * is structured once they are negotiated (the spec; QEMU's words) */
        if (r->chunked || (r->type == NBD_CMD_READ && s->info.structured))
            return reply_error(s, -EPROTO, "simple reply to a %s request when structured reply chunk was expected",
                               cmd_name(r->type));
        if (e) {
            r->error = nbd_errno(be32(e));
        } else if (r->type == NBD_CMD_READ) {
            if ((rc = recv_into(s, r->qiov, r->qoff, r->len)) < 0)
                return recv_error(s, rc);
        } else if (r->type == NBD_CMD_BLOCK_STATUS) {
            vbd_warn("NBD server '%s' replied to block status at %llu with no extent", name,
                     (unsigned long long)r->off);
            r->error = -EIO;
        }
        complete(s, r);
        return 0;
    }
    if (magic != NBD_STRUCTURED_REPLY_MAGIC)
        return reply_error(s, -EPROTO, "bad reply magic 0x%08x", magic);
    if ((rc = rd_full(s, h + 4, 16)) < 0)
        return recv_error(s, rc);
    uint16_t flags, type;
    uint64_t cookie;
    uint32_t len;
    memcpy(&flags, h + 4, 2);
    memcpy(&type, h + 6, 2);
    memcpy(&cookie, h + 8, 8);
    memcpy(&len, h + 16, 4);
    flags = be16(flags);
    type = be16(type);
    len = be32(len);
    if (!s->info.structured)
        return reply_error(s, -EPROTO, "structured reply chunk, but structured replies were not negotiated");
    struct nbd_req *r = reply_req(s, be64(cookie));
    if (!r)
        return -EPROTO;
    r->chunked = true;
    if ((rc = read_chunk(s, r, flags, type, len)) < 0)
        return rc;
    if (flags & NBD_REPLY_FLAG_DONE) {
        /* A successful read is whole: chunks that left part of the buffer
         * unwritten would hand the caller whatever it held before (as
         * libnbd, an error for this request, the stream is still in sync).
         * No two chunks overlap (cover_chunk): the bytes they covered add
         * up to the read's length only when nothing is left out. */
        if (r->type == NBD_CMD_READ && !r->error && r->seen != r->len) {
            vbd_warn("NBD server '%s' replied to a read of %u bytes at %llu with %llu bytes of data and holes", name,
                     r->len, (unsigned long long)r->off, (unsigned long long)r->seen);
            r->error = -EIO;
        }
        /* a successful block status names its extent (QEMU: "Server did
         * not reply with any status extents", EIO; the stream in sync) */
        if (r->type == NBD_CMD_BLOCK_STATUS && !r->error && !r->bs_got) {
            vbd_warn("NBD server '%s' replied to block status at %llu with no extent", name,
                     (unsigned long long)r->off);
            r->error = -EIO;
        }
        complete(s, r);
    }
    return 0;
}

static void reader_co(void *arg)
{
    struct vbd_node *n = arg;
    struct nbd_state *s = n->opaque;
    int rc = 0;
    while (!s->closing && (rc = read_reply(s, n->filename)) == 0)
        ;
    s->reader_running = false;
    if (s->closing) {
        vbd_co_queue_wake_all(&s->conn_q);
        return;
    }
    /* A server that broke the protocol is not connected to again, as
     * QEMU's client quits on one (NBD_CLIENT_QUIT; it reconnects after a
     * lost connection only): with reconnect-delay, a reconnect sent the
     * requests again to the same server, which broke it again, and they
     * never ended. */
    bool quit = rc == -EPROTO && s->reconnect_ns;
    if (rc == -EPROTO)
        s->quit = true;
    vbd_warn("NBD connection to '%s' lost: %s%s", n->filename, s->why[0] ? s->why : "reading a reply failed",
             quit ? " (not reconnecting to a server that broke the protocol)" : "");
    s->why[0] = 0;
    vbd_chan_shutdown(&s->ch, SHUT_RDWR);
    /* requests in flight: resent after a reconnect, or failed */
    for (int i = 0; i < MAX_INFLIGHT; i++)
        if (s->reqs[i].busy && !s->reqs[i].done) {
            s->reqs[i].sent = false;
            if (!s->reconnect_ns || s->quit) {
                s->reqs[i].error = -EIO;
                complete(s, &s->reqs[i]);
            } else if (s->reqs[i].co && s->reqs[i].waiting) {
                vbd_co_wake(s->reqs[i].co); /* it reconnects and sends again */
            }
        }
    vbd_co_queue_wake_all(&s->conn_q);
}

/*
 * Whether the export a reconnect found may stand in for the one the node
 * was opened on; NULL if so, else why not (in buf). QEMU's nbd driver
 * refuses a read-only export under a writable node
 * (nbd_handle_updated_info: "NBD export is read-only"), and so does this.
 * It takes the rest as it comes, which can hurt: FUA on a write to a server
 * that no longer offers it trips an assertion in QEMU 7.2 and is a
 * protocol error for the server; without flush a guest's flush would
 * return without making anything durable; requests past a shrunken end,
 * smaller than a new minimum block or larger than a new maximum fail.
 * Those are refused too: the requests wait for a server that fits, up to
 * reconnect-delay, then fail with EIO as for a server that is not back.
 */
static const char *export_changed(const struct vbd_node *n, const struct nbd_export_info *was,
                                  const struct nbd_export_info *now, char *buf, size_t len)
{
    if (!n->read_only && (now->tflags & NBD_FLAG_READ_ONLY))
        return "the export is read-only now and the node is writable";
    if (now->size < n->size)
        snprintf(buf, len, "the export shrank from %llu to %llu bytes", (unsigned long long)n->size,
                 (unsigned long long)now->size);
    else if (!n->read_only && (was->tflags & NBD_FLAG_SEND_FUA) && !(now->tflags & NBD_FLAG_SEND_FUA))
        snprintf(buf, len, "the server no longer offers FUA writes");
    else if (!n->read_only && (was->tflags & NBD_FLAG_SEND_FLUSH) && !(now->tflags & NBD_FLAG_SEND_FLUSH))
        snprintf(buf, len, "the server no longer offers flush");
    else if (now->min_block > n->bl.request_alignment)
        snprintf(buf, len, "its minimum block size grew from %u to %u bytes", n->bl.request_alignment,
                 now->min_block);
    else if (now->max_block < n->bl.max_transfer)
        snprintf(buf, len, "its maximum block size shrank from %llu to %u bytes",
                 (unsigned long long)n->bl.max_transfer, now->max_block);
    else
        return NULL;
    return buf;
}

/* One reconnect: attempts every 200 ms until one succeeds or the deadline
 * passes (a single attempt once the server was given up on); the
 * deadline bounds each attempt's connect and handshake too. */
static int reconnect(struct vbd_node *n, uint64_t deadline)
{
    struct nbd_state *s = n->opaque;
    int rc = -EIO;
    while (!s->closing) {
        struct vbd_error *e = NULL;
        struct nbd_attempt at = {.ch = {.fd = -1}};
        struct vbd_timer bound = {.fn = attempt_expired, .arg = &at};
        struct nbd_export_info info = {0};
        vbd_timer_arm(&bound, deadline);
        int hrc = dial(s, &at, &e);
        if (hrc == 0)
            hrc = handshake(s, &at.ch, &info, &e);
        vbd_timer_cancel(&bound);
        char why[128];
        const char *changed = hrc == 0 ? export_changed(n, &s->info, &info, why, sizeof(why)) : NULL;
        if (changed) {
            /* as QEMU: NBD_CMD_DISC as a courtesy, then the next attempt */
            uint8_t h[28] = {0};
            uint32_t m = be32(NBD_REQUEST_MAGIC);
            uint16_t t = be16(NBD_CMD_DISC);
            memcpy(h, &m, 4);
            memcpy(h + 6, &t, 2);
            (void)vbd_chan_send_full(&at.ch, h, sizeof(h));
            if (strcmp(s->refused, changed)) /* once, not every 200 ms */
                vbd_warn("NBD server '%s' refused on reconnect: %s", n->filename, changed);
            snprintf(s->refused, sizeof(s->refused), "%s", changed);
            hrc = -EIO;
        } else if (hrc == 0) {
            /* under the send lock: no sender is still inside the old connection's TLS session */
            vbd_co_mutex_lock(&s->send_lock);
            chan_close(&s->ch);
            s->ch = at.ch;
            s->info = info;
            s->conn_gen++;
            vbd_co_mutex_unlock(&s->send_lock);
            s->rpos = s->rlen = 0; /* the old connection's bytes are not this one's */
            s->reader_running = true;
            s->gave_up = false;
            s->refused[0] = 0;
            vbd_co_wake(vbd_co_create(reader_co, n));
            vbd_info("NBD connection to '%s' re-established%s", n->filename, at.ch.tls ? " (TLS)" : "");
            vbd_error_free(e);
            rc = 0;
            break;
        }
        vbd_debug("NBD reconnect to '%s': %s", n->filename, changed ? changed : e ? e->msg : "failed");
        vbd_error_free(e);
        chan_close(&at.ch);
        if (s->gave_up || vbd_clock_ns() >= deadline)
            break;
        uint64_t now = vbd_clock_ns(), pause = 200000000;
        vbd_co_sleep_ns(deadline - now < pause ? deadline - now : pause);
        if (vbd_clock_ns() >= deadline)
            break;
    }
    if (rc < 0 && !s->gave_up && !s->closing) {
        s->gave_up = true;
        vbd_warn("NBD server '%s' not back within reconnect-delay%s%s%s: requests fail until it is", n->filename,
                 s->refused[0] ? " (refused: " : "", s->refused, s->refused[0] ? ")" : "");
    }
    return rc;
}

/*
 * Makes sure a live connection exists, as QEMU's driver does: after a loss
 * the requests wait up to reconnect-delay for a server (reconnecting every
 * 200 ms); when that has run out with no server, each request makes one
 * attempt and fails if it finds none (QEMU's NBD_CLIENT_CONNECTING_NOWAIT),
 * until a connection is made again. Before, every request waited the whole
 * delay anew: with the server away for good, each I/O of a guest took
 * reconnect-delay seconds to fail where QEMU fails it at once. A request
 * that waited for another one's reconnect and finds that connection lost
 * again by the time it runs (the server dropped it at once: an export
 * deleted right after the handshake) goes on trying until its own delay is
 * up, as QEMU's client does; it failed with EIO before
 * (export-readd-stress.sh).
 */
static int ensure_connected(struct vbd_node *n)
{
    struct nbd_state *s = n->opaque;
    uint64_t deadline = vbd_clock_ns() + s->reconnect_ns;
    bool attempted = false;
    while (!s->reader_running) {
        if (s->connecting) {
            while (s->connecting)
                vbd_co_queue_wait(&s->conn_q);
            if (!s->reader_running && s->gave_up)
                return -EIO; /* that reconnect ran out of time: no attempt of its own */
            continue;
        }
        if (!s->reconnect_ns || s->closing || s->quit)
            return -EIO;
        if (s->gave_up ? attempted : (attempted && vbd_clock_ns() >= deadline))
            return -EIO;
        attempted = true;
        s->connecting = true;
        reconnect(n, deadline);
        s->connecting = false;
        vbd_co_queue_wake_all(&s->conn_q);
    }
    return 0;
}

/* Sends r on the connection it was meant for (gen: s->conn_gen when it
 * was); -EAGAIN without sending if a reconnect replaced that connection
 * while r waited for the send lock. Sent on the new one, it was a request
 * the reader had already marked unsent (its connection was lost): its
 * reply there named a cookie nothing waited for, a protocol error that
 * dropped the new connection and every request on it (the "reply for
 * unknown handle" reconnect). */
static int send_request(struct nbd_state *s, struct nbd_req *r, uint64_t cookie, uint64_t gen)
{
    uint8_t h[28];
    uint32_t m = be32(NBD_REQUEST_MAGIC), l = be32(r->len);
    uint16_t f = be16(r->flags), t = be16(r->type);
    uint64_t c = be64(cookie), o = be64(r->off);
    memcpy(h, &m, 4);
    memcpy(h + 4, &f, 2);
    memcpy(h + 6, &t, 2);
    memcpy(h + 8, &c, 8);
    memcpy(h + 16, &o, 8);
    memcpy(h + 24, &l, 4);
    /* header and payload leave in one sendmsg: fewer syscalls, and nothing can split them */
    struct iovec small[65], *iov = small;
    int cnt = 0;
    if (r->type == NBD_CMD_WRITE) {
        int cap = r->qiov->niov > 64 ? r->qiov->niov : 64;
        if (cap > 64 && !(iov = malloc(sizeof(*iov) * (size_t)(cap + 1))))
            return -ENOMEM;
        cnt = vbd_iov_slice(iov + 1, cap, r->qiov->iov, r->qiov->niov, r->qoff, r->len);
    }
    iov[0] = (struct iovec){.iov_base = h, .iov_len = 28};
    vbd_co_mutex_lock(&s->send_lock);
    int rc = s->conn_gen != gen ? -EAGAIN : vbd_chan_sendv_full(&s->ch, iov, cnt + 1);
    if (rc < 0 && rc != -EAGAIN)
        vbd_chan_shutdown(&s->ch,
                          SHUT_RDWR); /* a half-sent request: only a new connection is in sync again */
    vbd_co_mutex_unlock(&s->send_lock);
    if (iov != small)
        free(iov);
    return rc;
}

static int do_request(struct vbd_node *n, uint16_t type, uint16_t flags, uint64_t off, uint32_t len,
                      struct vbd_qiov *q, size_t qoff, struct nbd_req *out)
{
    struct nbd_state *s = n->opaque;
    int slot = -1;
    for (;;) {
        for (int i = 0; i < MAX_INFLIGHT; i++)
            if (!s->reqs[i].busy) {
                slot = i;
                break;
            }
        if (slot >= 0)
            break;
        vbd_co_queue_wait(&s->slot_q);
    }
    struct nbd_req *r = &s->reqs[slot];
    *r = (struct nbd_req){.busy = true,
                          .type = type,
                          .flags = flags,
                          .off = off,
                          .len = len,
                          .qiov = q,
                          .qoff = qoff,
                          .co = vbd_co_self()};
    int rc = 0;
    for (;;) {
        rc = ensure_connected(n);
        if (rc < 0)
            break;
        if (!r->sent) {
            r->sent = true;
            r->done = false;
            r->error = 0;
            r->bs_got = false;
            r->chunked = false;
            r->seen = 0;
            free(r->covered);
            r->covered = NULL;
            r->cookie = ++s->sends << 8 | (uint64_t)slot;
            int src = send_request(s, r, r->cookie, s->conn_gen);
            if (src < 0) {
                r->sent = false;
                if (src == -EAGAIN)
                    continue; /* a new connection: send there */
                /* the reader notices the broken socket; wait for it */
            }
        }
        /* The reply needs the server's work: alone in flight, the loop
         * busy-polls for it in its window for replies, which ends for
         * servers slower than its bound; with others in flight, not at
         * all (vbd_loop_remote_begin, loop.c's poll_window). Not spinning
         * at QD1 either (vbd_loop_io_begin, round 5) cost 4K reads over
         * TCP 14-33 % of their IOPS against nbdkit and qemu-nbd; spinning
         * at QD32 too cost 19-25 % (bench/nbd-client-ab.sh, RESULTS.md
         * 2026-12-04 nbdclient6). Runs on the node's home loop (the nbd
         * node is FIXED_LOOP), in the request's coroutine; the reader
         * coroutine, on the same loop, wakes it, so begin and end pair on
         * one loop. */
        struct vbd_loop *loop = vbd_loop_current();
        vbd_loop_remote_begin(loop);
        r->waiting = true;
        while (!r->done && (r->sent || s->reader_running))
            vbd_co_yield();
        r->waiting = false;
        vbd_loop_remote_end(loop);
        if (r->done) {
            rc = r->error;
            break;
        }
    }
    free(r->covered);
    r->covered = NULL;
    if (out)
        *out = *r;
    r->busy = false;
    vbd_co_queue_wake_one(&s->slot_q);
    return rc;
}

static int nbd_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct nbd_state *s = n->opaque;
    char *type = NULL, *tls = NULL, *certs = NULL, *psk = NULL, *user = NULL, *hostname = NULL;
    uint64_t delay = 0, open_timeout = 0;
    bool tls_on = false, verify = true;
    int have_tls = 0, have_verify = 0;
    s->ch.fd = -1;
    if (vbd_opt_take_str(opts, "server.type", &type, err) < 0 ||
        vbd_opt_take_str(opts, "server.path", &s->path, err) < 0 ||
        vbd_opt_take_str(opts, "server.host", &s->host, err) < 0 ||
        vbd_opt_take_str(opts, "server.port", &s->port, err) < 0 ||
        vbd_opt_take_str(opts, "export", &s->export, err) < 0 ||
        vbd_opt_take_u64(opts, "reconnect-delay", &delay, err) < 0 ||
        vbd_opt_take_u64(opts, "open-timeout", &open_timeout, err) < 0 ||
        vbd_opt_take_str(opts, "tls-creds", &tls, err) < 0 ||
        vbd_opt_take_str(opts, "tls-hostname", &hostname, err) < 0 ||
        (have_tls = vbd_opt_take_bool(opts, "tls", &tls_on, err)) < 0 ||
        vbd_opt_take_str(opts, "tls-certificates", &certs, err) < 0 ||
        vbd_opt_take_str(opts, "tls-psk-file", &psk, err) < 0 ||
        vbd_opt_take_str(opts, "tls-username", &user, err) < 0 ||
        (have_verify = vbd_opt_take_bool(opts, "tls-verify-peer", &verify, err)) < 0)
        goto fail;
    /* libnbd's way (an nbds:// URI): tls=on, credentials from tls-certificates/tls-psk-file or defaults */
    bool libnbd_tls = tls_on || certs || psk;
    if (have_tls && !tls_on && (tls || certs || psk)) {
        vbd_error_setf(err, EINVAL, "NBD: tls=off contradicts %s",
                       tls     ? "tls-creds"
                       : certs ? "tls-certificates"
                               : "tls-psk-file");
        goto fail;
    }
    if (tls && (certs || psk)) {
        vbd_error_setf(err, EINVAL, "NBD: tls-creds=%s and %s= both give TLS credentials: give one", tls,
                       certs ? "tls-certificates" : "tls-psk-file");
        goto fail;
    }
    if (certs && psk) {
        vbd_error_setf(err, EINVAL, "NBD: tls-certificates= (x509) and tls-psk-file= (PSK): give one");
        goto fail;
    }
    if (user && !psk) {
        vbd_error_setf(err, EINVAL, "NBD: tls-username is the PSK username: it needs tls-psk-file");
        goto fail;
    }
    if (have_verify && (!libnbd_tls || tls || psk)) {
        vbd_error_setf(err, EINVAL, "NBD: tls-verify-peer is for x509 credentials from tls-certificates%s",
                       tls ? " (tls-creds objects have their own verify-peer)" : "");
        goto fail;
    }
    if (hostname && !tls && !libnbd_tls) {
        vbd_error_setf(err, EINVAL, "NBD: tls-hostname needs tls-creds");
        goto fail;
    }
    s->tls_hostname = hostname ? vbd_xstrdup(hostname) : NULL;
    if (!type || (strcmp(type, "unix") && strcmp(type, "inet"))) {
        vbd_error_setf(err, EINVAL, "NBD: server.type must be 'unix' or 'inet'%s%s%s", type ? " (not '" : "",
                       type ? type : "", type ? "')" : "");
        goto fail;
    }
    if (!strcmp(type, "unix") ? !s->path : !s->host) {
        vbd_error_setf(err, EINVAL, "NBD: server.%s is required", !strcmp(type, "unix") ? "path" : "host");
        goto fail;
    }
    if (!strcmp(type, "unix")) {
        free(s->host);
        s->host = NULL;
    } else {
        free(s->path);
        s->path = NULL;
        if (!s->port)
            s->port = vbd_xstrdup("10809");
        /* the server's certificate must name the host we dial, unless told otherwise */
        if ((tls || libnbd_tls) && !s->tls_hostname)
            s->tls_hostname = vbd_xstrdup(s->host);
    }
    if (tls && !(s->tls_creds = vbd_tls_creds_get(tls, VBD_TLS_CLIENT, "NBD client", err)))
        goto fail;
    if (libnbd_tls && !tls) {
        struct vbd_tls_client_opts to = {
            .cert_dir = certs, .psk_file = psk, .username = user, .verify_peer = verify};
        if (!(s->tls_creds = vbd_tls_creds_new_client(&to, "NBD client", err)))
            goto fail;
    }
    if (!s->export)
        s->export = vbd_xstrdup("");
    if (strlen(s->export) > 4096) {
        vbd_error_setf(err, EINVAL, "NBD export name too long");
        goto fail;
    }
    s->reconnect_ns = delay * 1000000000ull;
    /* open-timeout as QEMU's (7.0 on): 0 tries once; N tries again every
     * 200 ms for up to N seconds, which bound each attempt's connect and
     * handshake too (a host that drops the SYNs, a server that says
     * nothing; attempt_expired) */
    uint64_t open_deadline = open_timeout ? vbd_clock_ns() + open_timeout * 1000000000ull : 0;
    struct vbd_chan ch;
    struct nbd_export_info info = {0};
    int hrc;
    for (;;) {
        struct nbd_attempt at = {.ch = {.fd = -1}};
        struct vbd_timer bound = {.fn = attempt_expired, .arg = &at};
        if (open_deadline)
            vbd_timer_arm(&bound, open_deadline);
        bool dialed = (hrc = dial(s, &at, err)) == 0;
        if (dialed)
            hrc = handshake(s, &at.ch, &info, err);
        if (open_deadline)
            vbd_timer_cancel(&bound);
        ch = at.ch;
        uint64_t now = vbd_clock_ns();
        if (hrc == 0 || !open_deadline || now >= open_deadline) {
            if (!dialed)
                goto fail;
            break;
        }
        chan_close(&ch);
        if (err) {
            vbd_error_free(*err);
            *err = NULL;
        }
        vbd_co_sleep_ns(open_deadline - now < 200000000 ? open_deadline - now : 200000000);
    }
    if (hrc < 0) {
        chan_close(&ch);
        if (err && *err) {
            vbd_error_prepend(err, "NBD server %s: ", s->path ? s->path : s->host);
            if (hrc == -EACCES && vbd_tls_creds_system_ca(s->tls_creds)) {
                size_t l = strlen((*err)->msg);
                snprintf((*err)->msg + l, sizeof((*err)->msg) - l,
                         " (nbds:// without tls-certificates= trusts the system's CAs only)");
            }
        }
        goto fail;
    }
    s->ch = ch;
    s->info = info;
    s->conn_gen = 1;
    n->size = info.size;
    if ((flags & VBD_OPEN_RDWR) && (s->info.tflags & NBD_FLAG_READ_ONLY)) {
        vbd_error_setf(err, EACCES, "NBD export '%s' is read-only", s->export);
        chan_close(&s->ch);
        goto fail;
    }
    n->bl.request_alignment = s->info.min_block ? s->info.min_block : 1;
    n->bl.max_transfer = s->info.max_block ? s->info.max_block : (32u << 20);
    if (n->bl.max_transfer > (32u << 20))
        n->bl.max_transfer = 32u << 20;
    n->bl.opt_transfer = s->info.pref_block;
    /* lengths travel as 32 bits; servers accept trim/zero beyond the data maximum */
    n->bl.max_pdiscard = 1u << 31;
    n->bl.max_pwrite_zeroes = 1u << 31;
    n->supported_write_flags = (s->info.tflags & NBD_FLAG_SEND_FUA) ? VBD_REQ_FUA : 0;
    n->supported_zero_flags = VBD_REQ_MAY_UNMAP | ((s->info.tflags & NBD_FLAG_SEND_FUA) ? VBD_REQ_FUA : 0) |
                              ((s->info.tflags & NBD_FLAG_SEND_FAST_ZERO) ? VBD_REQ_NO_FALLBACK : 0);
    if (libnbd_tls) {
        const char *tlsq[][2] = {{"tls-creds", tls},         {"tls-certificates", certs},
                                 {"tls-psk-file", psk},      {"tls-username", user},
                                 {"tls-hostname", hostname}, {"tls-verify-peer", verify ? NULL : "false"}};
        struct nbd_uri_addr addr = {.path = s->path, .host = s->host, .port = s->port, .export = s->export};
        nbd_uri_tls_filename(n->filename, sizeof(n->filename), &addr, tlsq, sizeof(tlsq) / sizeof(tlsq[0]));
    } else if (s->path) {
        snprintf(n->filename, sizeof(n->filename), "nbd+unix:///%s?socket=%s", s->export, s->path);
    } else {
        snprintf(n->filename, sizeof(n->filename), "nbd://%s:%s/%s", s->host, s->port, s->export);
    }
    s->rbuf = vbd_xmalloc(NBD_RBUF);
    s->reader_running = true;
    vbd_co_wake(vbd_co_create(reader_co, n));
    free(type);
    free(tls);
    free(certs);
    free(psk);
    free(user);
    free(hostname);
    return 0;
fail:
    free(type);
    free(tls);
    free(certs);
    free(psk);
    free(user);
    free(hostname);
    free(s->path);
    free(s->host);
    free(s->port);
    free(s->export);
    free(s->tls_hostname);
    vbd_tls_creds_unref(s->tls_creds);
    s->tls_creds = NULL;
    s->path = s->host = s->port = s->export = s->tls_hostname = NULL;
    return -EINVAL;
}

static void wait_reader(void *arg)
{
    struct nbd_state *s = arg;
    while (s->reader_running)
        vbd_co_queue_wait(&s->conn_q);
}

static void nbd_close(struct vbd_node *n)
{
    struct nbd_state *s = n->opaque;
    s->closing = true;
    if (s->ch.fd >= 0) {
        uint8_t h[28] = {0};
        uint32_t m = be32(NBD_REQUEST_MAGIC);
        uint16_t t = be16(NBD_CMD_DISC);
        memcpy(h, &m, 4);
        memcpy(h + 6, &t, 2);
        /* goodbye without waiting: if it cannot go out now, the server is gone or busy anyway */
        if (s->ch.tls) {
            if (!s->send_lock.locked && s->reader_running && vbd_tls_try_send(s->ch.tls, h, 28) == 0)
                vbd_tls_bye(s->ch.tls);
        } else if (send(s->ch.fd, h, 28, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
            /* the server is gone anyway */
        }
        vbd_chan_shutdown(&s->ch, SHUT_RDWR);
        /* the reader coroutine ends on the shut-down socket: wait for it, it uses our state */
        if (s->reader_running) {
            if (vbd_in_co())
                while (s->reader_running)
                    vbd_co_queue_wait(&s->conn_q);
            else
                vbd_co_run_sync(wait_reader, s);
        }
        chan_close(&s->ch);
    }
    vbd_tls_creds_unref(s->tls_creds);
    free(s->rbuf);
    free(s->tls_hostname);
    free(s->path);
    free(s->host);
    free(s->port);
    free(s->export);
}

/* Lengths travel as 32 bits: io.c splits requests at bl.max_transfer
 * (<= 32 MiB), bl.max_pdiscard and bl.max_pwrite_zeroes (2 GiB), set in
 * nbd_open. */
static int nbd_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                      unsigned flags)
{
    (void)flags;
    assert(bytes <= n->bl.max_transfer);
    return do_request(n, NBD_CMD_READ, 0, off, (uint32_t)bytes, q, qoff, NULL);
}

static int nbd_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                       unsigned flags)
{
    assert(bytes <= n->bl.max_transfer);
    return do_request(n, NBD_CMD_WRITE, (flags & VBD_REQ_FUA) ? NBD_CMD_FLAG_FUA : 0, off, (uint32_t)bytes, q, qoff,
                      NULL);
}

static int nbd_flush(struct vbd_node *n)
{
    struct nbd_state *s = n->opaque;
    if (!(s->info.tflags & NBD_FLAG_SEND_FLUSH))
        return 0;
    return do_request(n, NBD_CMD_FLUSH, 0, 0, 0, NULL, 0, NULL);
}

static int nbd_pdiscard(struct vbd_node *n, uint64_t off, uint64_t bytes)
{
    struct nbd_state *s = n->opaque;
    if (!(s->info.tflags & NBD_FLAG_SEND_TRIM))
        return -ENOTSUP;
    assert(bytes <= n->bl.max_pdiscard);
    return do_request(n, NBD_CMD_TRIM, 0, off, (uint32_t)bytes, NULL, 0, NULL);
}

static int nbd_pwrite_zeroes(struct vbd_node *n, uint64_t off, uint64_t bytes, unsigned flags)
{
    struct nbd_state *s = n->opaque;
    if (!(s->info.tflags & NBD_FLAG_SEND_WRITE_ZEROES))
        return -ENOTSUP;
    /* io.c passes NO_FALLBACK only as supported_zero_flags allow (the first
     * server's FAST_ZERO), but a reconnect may land on a server without it */
    if ((flags & VBD_REQ_NO_FALLBACK) && !(s->info.tflags & NBD_FLAG_SEND_FAST_ZERO))
        return -ENOTSUP;
    assert(bytes <= n->bl.max_pwrite_zeroes);
    uint16_t f = ((flags & VBD_REQ_MAY_UNMAP) ? 0 : NBD_CMD_FLAG_NO_HOLE) | ((flags & VBD_REQ_FUA) ? NBD_CMD_FLAG_FUA : 0) |
                 ((flags & VBD_REQ_NO_FALLBACK) ? NBD_CMD_FLAG_FAST_ZERO : 0);
    return do_request(n, NBD_CMD_WRITE_ZEROES, f, off, (uint32_t)bytes, NULL, 0, NULL);
}

static int nbd_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                            uint64_t *map, struct vbd_node **file)
{
    struct nbd_state *s = n->opaque;
    (void)want_zero;
    *map = off;
    *file = n;
    if (!s->info.has_meta) {
        *pnum = bytes;
        return VBD_BS_DATA | VBD_BS_OFFSET_VALID;
    }
    uint32_t len = bytes > (1u << 31) ? (1u << 31) : (uint32_t)bytes;
    struct nbd_req r;
    int rc = do_request(n, NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, off, len, NULL, 0, &r);
    if (rc < 0)
        return rc;
    assert(r.bs_got && r.bs_len); /* read_reply failed the request otherwise */
    /* with REQ_ONE the extent ends inside the request; a server's longer one says nothing past it */
    *pnum = r.bs_len < len ? r.bs_len : len;
    int st = VBD_BS_OFFSET_VALID;
    if (!(r.bs_flags & NBD_STATE_HOLE)) /* not a hole */
        st |= VBD_BS_DATA;
    if (r.bs_flags & NBD_STATE_ZERO)
        st |= VBD_BS_ZERO;
    return st;
}

static int nbd_parse_filename(const char *filename, struct json_object *opts, struct vbd_error **err)
{
    return nbd_uri_parse(filename, opts, err);
}

static const char *const nbd_protocols[] = {"nbd",       "nbd+unix", "nbd+tcp", "nbds",
                                            "nbds+unix", "nbds+tcp", NULL};

static const struct vbd_driver nbd_driver = {
    .name = "nbd",
    .kind = VBD_DRV_PROTOCOL,
    .caps = VBD_DRV_CAP_REMOTE | VBD_DRV_CAP_FIXED_LOOP, /* the connection and its reader coroutine live on the opening loop */
    .protocols = nbd_protocols,
    .state_size = sizeof(struct nbd_state),
    .parse_filename = nbd_parse_filename,
    .open = nbd_open,
    .close = nbd_close,
    .co_preadv = nbd_preadv,
    .co_pwritev = nbd_pwritev,
    .co_flush = nbd_flush,
    .co_pdiscard = nbd_pdiscard,
    .co_pwrite_zeroes = nbd_pwrite_zeroes,
    .co_block_status = nbd_block_status,
};
VBD_DRIVER_REGISTER(nbd, nbd_driver);
