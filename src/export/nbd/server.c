/* SPDX-License-Identifier: MIT */
/*
 * NBD server: fixed newstyle handshake as an explicit sequence that never
 * trusts a length, then transmission with requests of one connection
 * running concurrently (a bounded pool of request slots) and replies sent
 * whole under a per-connection lock, in completion order.
 */
#include "nbd-proto.h"

#include "vbd/authz.h"
#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/export.h"
#include "vbd/loop.h"
#include "vbd/nbd.h"
#include "vbd/options.h"
#include "vbd/tls.h"

#include <errno.h>
#include <poll.h>
#include <json-c/json.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define NBD_MAX_OPTION_LEN   (64 * 1024)        /* a longer option ends the connection */
#define NBD_MAX_NAME_LEN     4096
#define NBD_MAX_REQUEST      (32u * 1024 * 1024) /* advertised maximum block size */
#define NBD_SLOTS            64                  /* requests in flight per connection */
/* Data buffers a client can make us hold: in flight, and kept for reuse.
 * Without a bound, 64 maximum-size requests pin 2 GiB per connection. */
#define NBD_MAX_INFLIGHT_BYTES (64u * 1024 * 1024)
#define NBD_MAX_KEPT_BYTES     (64u * 1024 * 1024)
#define NBD_MAX_EXTENTS      256
#define NBD_HANDSHAKE_NS     (10ull * 1000000000) /* a client that stalls in the handshake is dropped */
#define META_ALLOCATION      1u
#define META_DEPTH           2u
#define META_BITMAP          3u

struct nbd_export {
    struct vbd_export base;
    char *id, *name, *description;
    char *bitmap; /* exported as the meta context qemu:dirty-bitmap:NAME */
    struct vbd_backend *be;
    bool writable;
    struct nbd_export *next;
};

#define NBD_REPLY_PARTS      40   /* iovecs of one reply: up to 16 read runs, a header and data each */
#define NBD_REPLY_SMALL      17   /* chunk headers with their small payloads */
#define NBD_OUT_IOV          512  /* replies gathered into one send */
#define NBD_RBUF             (64 * 1024) /* request headers (and small writes) read ahead */
#define NBD_POLL_NS          (32 * 1000) /* busy-poll the socket this long before waiting */
#define NBD_POLL_MAX_INFLIGHT (256 * 1024) /* ... unless this much data is in flight */
#define NBD_ZERO_COPY_MIN    (64 * 1024)  /* reads at least this large go out with sendfile(2) */

struct nbd_conn;
struct nbd_req {
    struct nbd_conn *c;
    uint16_t flags, type;
    uint64_t cookie, offset;
    uint32_t len;
    uint8_t *buf;
    size_t cap;
    struct nbd_req *next;
    /* the reply being built: pieces point into small[], buf or ext */
    struct iovec riov[NBD_REPLY_PARTS];
    int rn, nsmall;
    uint8_t small[NBD_REPLY_SMALL][32];
    uint8_t *ext; /* block status payloads (two contexts), allocated on first use */
    bool counted; /* its length is in c->inflight_bytes */
};

struct nbd_conn {
    struct vbd_chan ch; /* the socket, and its TLS session once STARTTLS is done */
    struct nbd_export *exp;
    bool structured, no_zeroes;
    unsigned meta; /* META_* selected */
    bool closing;
    int inflight;
    /* Replies of requests that finish in the same loop iteration leave in
     * one send: requests queue their pieces and wait; the flusher sends. */
    struct iovec *out, *out_spare;
    int out_n;
    uint64_t out_gen, sent_gen; /* batch being filled / last batch sent */
    int send_err;
    bool flusher_running, flush_stop;
    struct vbd_co_queue flush_q, sent_q, space_q, flusher_exit_q;
    struct vbd_co_mutex send_lock; /* one reply at a time on the socket: the flusher's batch or a sendfile reply */
    bool sendfile_ok;              /* a unix socket: see send_read_zero_copy */
    uint64_t inflight_bytes; /* data of the reads and writes in flight */
    uint64_t buf_bytes;      /* the slots' data buffers (r->cap), in flight or kept */
    uint8_t *rbuf; /* plain sockets: read-ahead of the request stream */
    size_t rpos, rlen;
    struct vbd_co_queue slot_q, drain_q;
    struct nbd_req slots[NBD_SLOTS];
    struct nbd_req *free_slots;
    struct vbd_timer handshake_timer;
    struct nbd_conn *next;
};

static struct {
    bool running, stopping;
    int listen_fd;
    char *unix_path;
    uint32_t max_connections;
    int nconns;
    struct nbd_conn *conns;
    struct nbd_export *exports;
    struct vbd_tls_creds *tls; /* set: TLS is required (NBD_OPT_STARTTLS first) */
    struct vbd_authz *authz;   /* set: the client certificate's DN must be allowed by it */
    struct vbd_co_queue idle_q;
    bool accept_done;
} srv = {.listen_fd = -1};

/* ------------------------------------------------------------------ */

static int send_opt_reply(struct nbd_conn *c, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
    uint8_t h[20];
    put_be64(h, NBD_REP_MAGIC);
    put_be32(h + 8, opt);
    put_be32(h + 12, type);
    put_be32(h + 16, len);
    struct iovec iov[2] = {{h, sizeof(h)}, {(void *)data, len}};
    return vbd_chan_sendv_full(&c->ch, iov, len ? 2 : 1);
}

static int send_opt_error(struct nbd_conn *c, uint32_t opt, uint32_t type, const char *msg)
{
    vbd_debug("nbd: option %u refused: %s", opt, msg);
    return send_opt_reply(c, opt, type, msg, (uint32_t)strlen(msg));
}

static struct nbd_export *find_export(const char *name)
{
    struct nbd_export *only = srv.exports && !srv.exports->next ? srv.exports : NULL;
    for (struct nbd_export *e = srv.exports; e; e = e->next)
        if (!strcmp(e->name, name))
            return e;
    /* "" is the default export when there is just one, as with qemu-nbd */
    return !*name ? only : NULL;
}

static uint16_t export_flags(struct nbd_export *e)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_DF | NBD_FLAG_SEND_CACHE |
                 NBD_FLAG_CAN_MULTI_CONN; /* flush goes to the shared node: covers every connection */
    if (!e->writable)
        f |= NBD_FLAG_READ_ONLY;
    else
        f |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    return f;
}

/* Parse "u32 namelen, name" at p (len bytes); returns bytes used or -1. */
static int parse_name(const uint8_t *p, uint32_t len, char *name)
{
    if (len < 4)
        return -1;
    uint32_t nl = get_be32(p);
    if (nl > NBD_MAX_NAME_LEN || nl > len - 4)
        return -1;
    memcpy(name, p + 4, nl);
    name[nl] = 0;
    if (strlen(name) != nl)
        return -1; /* embedded NUL */
    return (int)(4 + nl);
}

static int reply_info(struct nbd_conn *c, uint32_t opt, const uint8_t *data, uint32_t len, bool go, bool *done)
{
    char name[NBD_MAX_NAME_LEN + 1];
    int used = parse_name(data, len, name);
    if (used < 0 || len - used < 2)
        return send_opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO request");
    uint16_t nreq = get_be16(data + used);
    if ((uint32_t)used + 2 + 2u * nreq != len)
        return send_opt_error(c, opt, NBD_REP_ERR_INVALID, "NBD_OPT_INFO/GO length does not match its content");
    struct nbd_export *e = find_export(name);
    if (!e) {
        char msg[NBD_MAX_NAME_LEN + 64];
        snprintf(msg, sizeof(msg), "export '%s' not present", name);
        return send_opt_error(c, opt, NBD_REP_ERR_UNKNOWN, msg);
    }
    bool want_name = false, want_desc = false, want_bs = false;
    for (uint16_t i = 0; i < nreq; i++) {
        uint16_t t = get_be16(data + used + 2 + 2 * i);
        want_name |= t == NBD_INFO_NAME;
        want_desc |= t == NBD_INFO_DESCRIPTION;
        want_bs |= t == NBD_INFO_BLOCK_SIZE;
    }
    uint8_t buf[12];
    int rc;
    put_be16(buf, NBD_INFO_EXPORT);
    put_be64(buf + 2, vbd_backend_size(e->be));
    put_be16(buf + 10, export_flags(e));
    if ((rc = send_opt_reply(c, opt, NBD_REP_INFO, buf, 12)) < 0)
        return rc;
    if (want_name) {
        size_t nl = strlen(e->name);
        uint8_t *b = malloc(2 + nl);
        put_be16(b, NBD_INFO_NAME);
        memcpy(b + 2, e->name, nl);
        rc = send_opt_reply(c, opt, NBD_REP_INFO, b, (uint32_t)(2 + nl));
        free(b);
        if (rc < 0)
            return rc;
    }
    if (want_desc && e->description) {
        size_t dl = strlen(e->description);
        uint8_t *b = malloc(2 + dl);
        put_be16(b, NBD_INFO_DESCRIPTION);
        memcpy(b + 2, e->description, dl);
        rc = send_opt_reply(c, opt, NBD_REP_INFO, b, (uint32_t)(2 + dl));
        free(b);
        if (rc < 0)
            return rc;
    }
    if (want_bs) {
        uint8_t b[14];
        put_be16(b, NBD_INFO_BLOCK_SIZE);
        put_be32(b + 2, 1);
        put_be32(b + 6, 4096);
        put_be32(b + 10, NBD_MAX_REQUEST);
        if ((rc = send_opt_reply(c, opt, NBD_REP_INFO, b, 14)) < 0)
            return rc;
    }
    if ((rc = send_opt_reply(c, opt, NBD_REP_ACK, NULL, 0)) < 0)
        return rc;
    if (go) {
        c->exp = e;
        *done = true;
    }
    return 0;
}

static const struct {
    const char *name;
    unsigned id;
} meta_contexts[] = {{"base:allocation", META_ALLOCATION}, {"qemu:allocation-depth", META_DEPTH}};

static int reply_meta(struct nbd_conn *c, uint32_t opt, const uint8_t *data, uint32_t len)
{
    bool set = opt == NBD_OPT_SET_META_CONTEXT;
    if (!c->structured)
        return send_opt_error(c, opt, NBD_REP_ERR_INVALID, "structured replies must be negotiated first");
    char name[NBD_MAX_NAME_LEN + 1];
    int used = parse_name(data, len, name);
    if (used < 0 || len - used < 4)
        return send_opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed meta context request");
    struct nbd_export *exp = find_export(name);
    if (!exp) {
        char msg[NBD_MAX_NAME_LEN + 64];
        snprintf(msg, sizeof(msg), "export '%s' not present", name);
        return send_opt_error(c, opt, NBD_REP_ERR_UNKNOWN, msg);
    }
    char bitmap_ctx[NBD_MAX_NAME_LEN + 32];
    struct { const char *name; unsigned id; } ctx[3];
    size_t nctx = 0;
    for (size_t m = 0; m < sizeof(meta_contexts) / sizeof(meta_contexts[0]); m++) {
        ctx[nctx].name = meta_contexts[m].name;
        ctx[nctx++].id = meta_contexts[m].id;
    }
    if (exp->bitmap) {
        snprintf(bitmap_ctx, sizeof(bitmap_ctx), "qemu:dirty-bitmap:%s", exp->bitmap);
        ctx[nctx].name = bitmap_ctx;
        ctx[nctx++].id = META_BITMAP;
    }
    uint32_t nq = get_be32(data + used);
    uint32_t pos = used + 4;
    unsigned selected = 0;
    /* validate all queries before replying */
    uint32_t p = pos;
    for (uint32_t i = 0; i < nq; i++) {
        if (len - p < 4 || get_be32(data + p) > len - p - 4 || get_be32(data + p) > NBD_MAX_NAME_LEN)
            return send_opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed meta context query");
        p += 4 + get_be32(data + p);
    }
    if (p != len)
        return send_opt_error(c, opt, NBD_REP_ERR_INVALID, "meta context request length does not match its content");
    for (uint32_t i = 0; i <= nq; i++) {
        char q[NBD_MAX_NAME_LEN + 1];
        if (i == nq && nq)
            break;
        if (nq) {
            uint32_t ql = get_be32(data + pos);
            memcpy(q, data + pos + 4, ql);
            q[ql] = 0;
            pos += 4 + ql;
        }
        for (size_t m = 0; m < nctx; m++) {
            const char *mn = ctx[m].name;
            bool match = nq == 0 ? !set
                                 : (!strcmp(q, mn) || (!set && strchr(q, ':') && q[strlen(q) - 1] == ':' &&
                                                       !strncmp(q, mn, strlen(q))));
            unsigned bit = 1u << (ctx[m].id - 1);
            if (!match || (selected & bit))
                continue;
            selected |= bit;
            size_t nl = strlen(mn);
            uint8_t b[4 + NBD_MAX_NAME_LEN + 32];
            put_be32(b, set ? ctx[m].id : 0);
            memcpy(b + 4, mn, nl);
            int rc = send_opt_reply(c, opt, NBD_REP_META_CONTEXT, b, (uint32_t)(4 + nl));
            if (rc < 0)
                return rc;
        }
        if (!nq)
            break;
    }
    if (set)
        c->meta = selected;
    return send_opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_STARTTLS was acknowledged: the TLS handshake on the same socket
 * (the client sends nothing else before it, so nothing is buffered). */
static int start_tls(struct nbd_conn *c)
{
    struct vbd_error *err = NULL;
    struct vbd_tls *t = vbd_tls_new(srv.tls, c->ch.fd, NULL, &err);
    int rc = t ? vbd_tls_handshake(t, &err) : -EIO;
    if (rc == 0 && srv.authz) {
        /* QEMU's tls-authz: checked once the handshake has verified the certificate, before any option */
        char *dn = vbd_tls_peer_dn(t, &err);
        if (dn && !vbd_authz_is_allowed(srv.authz, dn))
            vbd_error_setf(&err, EACCES, "TLS x509 authz check for '%s' is denied by '%s'", dn,
                           vbd_authz_id(srv.authz));
        else if (dn)
            vbd_debug("nbd: client '%s' allowed by '%s'", dn, vbd_authz_id(srv.authz));
        free(dn);
        if (err) {
            vbd_tls_deny(t); /* the client learns why: an access_denied alert */
            rc = -EACCES;
        }
    }
    if (rc < 0) {
        vbd_warn("nbd: client connection: %s", err ? err->msg : "TLS failed");
        vbd_error_free(err);
        vbd_tls_free(t);
        /* Let the alert reach the client: closing with its next bytes unread would reset the connection
         * and drop the alert. Read until it closes (the handshake timer bounds this). */
        shutdown(c->ch.fd, SHUT_WR);
        char junk[4096];
        while (vbd_co_recv(c->ch.fd, junk, sizeof(junk)) > 0)
            ;
        return rc;
    }
    c->ch.tls = t;
    return 0;
}

/* Returns 0 when transmission should start, <0 to drop the connection. */
static int handshake(struct nbd_conn *c)
{
    uint8_t hello[18];
    put_be64(hello, NBD_MAGIC);
    put_be64(hello + 8, NBD_IHAVEOPT);
    put_be16(hello + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    int rc = vbd_chan_send_full(&c->ch, hello, sizeof(hello));
    uint8_t cf[4];
    if (rc < 0 || (rc = vbd_chan_recv_full(&c->ch, cf, 4)) < 0)
        return rc;
    uint32_t cflags = get_be32(cf);
    if (!(cflags & NBD_FLAG_C_FIXED_NEWSTYLE) || (cflags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))) {
        vbd_warn("nbd: client sent unsupported handshake flags 0x%x, closing", cflags);
        return -EPROTO;
    }
    c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;
    uint8_t *data = NULL;
    for (;;) {
        uint8_t h[16];
        if ((rc = vbd_chan_recv_full(&c->ch, h, 16)) < 0)
            break;
        if (get_be64(h) != NBD_IHAVEOPT) {
            vbd_warn("nbd: bad option magic from client, closing");
            rc = -EPROTO;
            break;
        }
        uint32_t opt = get_be32(h + 8), len = get_be32(h + 12);
        if (len > NBD_MAX_OPTION_LEN) {
            vbd_warn("nbd: option %u with %u bytes of data is too long, closing", opt, len);
            rc = -EPROTO;
            break;
        }
        free(data);
        data = malloc(len ? len : 1);
        if (!data || (rc = vbd_chan_recv_full(&c->ch, data, len)) < 0)
            break;
        bool done = false;
        if (srv.tls && !c->ch.tls && opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT) {
            /* TLS first: every other option is refused, EXPORT_NAME (no error reply possible) closes */
            if (opt == NBD_OPT_EXPORT_NAME) {
                vbd_warn("nbd: client asked for an export without TLS, which this server requires; closing");
                rc = -EACCES;
            } else {
                rc = send_opt_error(c, opt, NBD_REP_ERR_TLS_REQD, "TLS is required on this server (NBD_OPT_STARTTLS)");
            }
            if (rc < 0)
                break;
            continue;
        }
        switch (opt) {
        case NBD_OPT_EXPORT_NAME: {
            char name[NBD_MAX_NAME_LEN + 1];
            if (len > NBD_MAX_NAME_LEN) {
                rc = -EPROTO;
                break;
            }
            memcpy(name, data, len);
            name[len] = 0;
            struct nbd_export *e = find_export(name);
            if (!e) {
                vbd_warn("nbd: client asked for unknown export '%s', closing", name);
                rc = -ENOENT;
                break;
            }
            uint8_t r[10 + 124] = {0};
            put_be64(r, vbd_backend_size(e->be));
            put_be16(r + 8, export_flags(e));
            rc = vbd_chan_send_full(&c->ch, r, c->no_zeroes ? 10 : sizeof(r));
            c->exp = e;
            done = true;
            break;
        }
        case NBD_OPT_ABORT:
            send_opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
            rc = -ECONNRESET;
            break;
        case NBD_OPT_LIST:
            if (len) {
                rc = send_opt_error(c, opt, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
                break;
            }
            for (struct nbd_export *e = srv.exports; e && rc >= 0; e = e->next) {
                size_t nl = strlen(e->name), dl = e->description ? strlen(e->description) : 0;
                uint8_t *b = malloc(4 + nl + dl);
                put_be32(b, (uint32_t)nl);
                memcpy(b + 4, e->name, nl);
                if (dl)
                    memcpy(b + 4 + nl, e->description, dl);
                rc = send_opt_reply(c, opt, NBD_REP_SERVER, b, (uint32_t)(4 + nl + dl));
                free(b);
            }
            if (rc >= 0)
                rc = send_opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
            break;
        case NBD_OPT_STARTTLS:
            if (!srv.tls)
                rc = send_opt_error(c, opt, NBD_REP_ERR_POLICY, "TLS is not configured on this server");
            else if (c->ch.tls)
                rc = send_opt_error(c, opt, NBD_REP_ERR_INVALID, "TLS is already negotiated");
            else if (len)
                rc = send_opt_error(c, opt, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
            else if ((rc = send_opt_reply(c, opt, NBD_REP_ACK, NULL, 0)) >= 0)
                rc = start_tls(c);
            break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
            rc = reply_info(c, opt, data, len, opt == NBD_OPT_GO, &done);
            break;
        case NBD_OPT_STRUCTURED_REPLY:
            if (len)
                rc = send_opt_error(c, opt, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
            else if (c->structured)
                rc = send_opt_error(c, opt, NBD_REP_ERR_INVALID, "structured replies already negotiated");
            else {
                c->structured = true;
                rc = send_opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
            }
            break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
            rc = reply_meta(c, opt, data, len);
            break;
        default: {
            char msg[64];
            snprintf(msg, sizeof(msg), "option %u is not supported", opt);
            rc = send_opt_error(c, opt, NBD_REP_ERR_UNSUP, msg);
        }
        }
        if (rc < 0 || done)
            break;
    }
    free(data);
    return rc < 0 ? rc : 0;
}

/* ------------------------------------------------------------------ */
/* transmission                                                        */

static uint32_t errno_to_nbd(int err)
{
    switch (err) {
    case EPERM: case EROFS: case EACCES: return NBD_EPERM;
    case ENOMEM: return NBD_ENOMEM;
    case EINVAL: return NBD_EINVAL;
    case ENOSPC: case EDQUOT: case EFBIG: return NBD_ENOSPC;
    case EOVERFLOW: return NBD_EOVERFLOW;
    case ENOTSUP: return NBD_ENOTSUP;
    case ESHUTDOWN: return NBD_ESHUTDOWN;
    default: return NBD_EIO;
    }
}

static void reply_small(struct nbd_req *r, const void *a, size_t la, const void *b, size_t lb)
{
    uint8_t *p = r->small[r->nsmall++];
    memcpy(p, a, la);
    if (lb)
        memcpy(p + la, b, lb);
    r->riov[r->rn++] = (struct iovec){p, la + lb};
}

static void reply_ref(struct nbd_req *r, const void *p, size_t len)
{
    if (len)
        r->riov[r->rn++] = (struct iovec){(void *)p, len};
}

/* Sends the reply built in r (with the other replies of this loop
 * iteration) and waits until it is out: its pieces point into r. */
static int reply_send(struct nbd_conn *c, struct nbd_req *r)
{
    int n = r->rn;
    r->rn = r->nsmall = 0;
    while (!c->send_err && c->out_n + n > NBD_OUT_IOV)
        vbd_co_queue_wait(&c->space_q);
    if (c->send_err)
        return c->send_err;
    memcpy(c->out + c->out_n, r->riov, (size_t)n * sizeof(struct iovec));
    c->out_n += n;
    uint64_t mine = c->out_gen;
    vbd_co_queue_wake_one(&c->flush_q);
    while (!c->send_err && c->sent_gen < mine)
        vbd_co_queue_wait(&c->sent_q);
    return c->send_err;
}

static void flusher_co(void *opaque)
{
    struct nbd_conn *c = opaque;
    for (;;) {
        while (!c->out_n && !c->flush_stop)
            vbd_co_queue_wait(&c->flush_q);
        if (!c->out_n)
            break;
        struct iovec *batch = c->out;
        int n = c->out_n;
        uint64_t gen = c->out_gen++;
        c->out = c->out_spare;
        c->out_spare = batch;
        c->out_n = 0;
        vbd_co_queue_wake_all(&c->space_q);
        vbd_co_mutex_lock(&c->send_lock);
        int rc = c->send_err ? c->send_err : vbd_chan_sendv_full(&c->ch, batch, n);
        vbd_co_mutex_unlock(&c->send_lock);
        if (rc < 0 && !c->send_err)
            c->send_err = rc;
        c->sent_gen = gen;
        vbd_co_queue_wake_all(&c->sent_q);
    }
    c->flusher_running = false;
    vbd_co_queue_wake_all(&c->flusher_exit_q);
}

/* Request bytes: from the read-ahead buffer; large payloads straight into
 * place. TLS sessions keep their own read-ahead. */
static int conn_recv(struct nbd_conn *c, void *dst, size_t len)
{
    if (!len)
        return 0;
    if (c->ch.tls || !c->rbuf)
        return vbd_chan_recv_full(&c->ch, dst, len);
    size_t have = c->rlen - c->rpos, take = have < len ? have : len;
    memcpy(dst, c->rbuf + c->rpos, take);
    c->rpos += take;
    dst = (uint8_t *)dst + take;
    len -= take;
    if (!len)
        return 0;
    c->rpos = c->rlen = 0;
    if (len >= NBD_RBUF / 2)
        return vbd_co_recv_full(c->ch.fd, dst, len);
    uint64_t spin_until = 0;
    while (c->rlen < len) {
        /* Poll briefly before arming a wait: arming a poll on the socket costs
         * more than a few retries when the client sends its next request
         * right after our reply (QEMU's adaptive polling does the same). */
        ssize_t r = recv(c->ch.fd, c->rbuf + c->rlen, NBD_RBUF - c->rlen, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            uint64_t now = vbd_clock_ns();
            /* large transfers in flight use other threads (and are few): no spinning against them */
            if (!spin_until)
                spin_until = c->inflight_bytes < NBD_POLL_MAX_INFLIGHT ? now + NBD_POLL_NS : now;
            if (now < spin_until) {
                vbd_co_wake(vbd_co_self()); /* let the replies and other requests run first */
                vbd_co_yield();
                continue;
            }
            r = vbd_co_recv(c->ch.fd, c->rbuf + c->rlen, NBD_RBUF - c->rlen);
        } else if (r < 0 && errno != EINTR) {
            r = -errno;
        } else if (r < 0) {
            continue;
        }
        if (r < 0)
            return (int)r;
        if (r == 0)
            return -ECONNRESET;
        c->rlen += (size_t)r;
    }
    memcpy(dst, c->rbuf, len);
    c->rpos = len;
    return 0;
}

static void simple_header(uint8_t h[16], const struct nbd_req *r, int err)
{
    put_be32(h, NBD_SIMPLE_REPLY_MAGIC);
    put_be32(h + 4, err ? errno_to_nbd(err) : 0);
    put_be64(h + 8, r->cookie);
}

/* A structured chunk's header; len: the payload's bytes after it. */
static void chunk_header(uint8_t h[20], const struct nbd_req *r, uint16_t flags, uint16_t type, uint32_t len)
{
    put_be32(h, NBD_STRUCTURED_REPLY_MAGIC);
    put_be16(h + 4, flags);
    put_be16(h + 6, type);
    put_be64(h + 8, r->cookie);
    put_be32(h + 16, len);
}

static int send_simple(struct nbd_conn *c, struct nbd_req *r, int err, const void *data, uint32_t len)
{
    uint8_t h[16];
    simple_header(h, r, err);
    reply_small(r, h, 16, NULL, 0);
    if (data && !err)
        reply_ref(r, data, len);
    return reply_send(c, r);
}

/* Adds one structured chunk to r's reply: p1 (at most 12 bytes) is copied, p2 referenced. */
static void add_chunk(struct nbd_req *r, uint16_t flags, uint16_t type, const void *p1, uint32_t l1, const void *p2,
                      uint32_t l2)
{
    uint8_t h[20];
    chunk_header(h, r, flags, type, l1 + l2);
    reply_small(r, h, 20, p1, l1);
    reply_ref(r, p2, l2);
}

/* A read reply whose data goes from the page cache to the socket with
 * sendfile(2): the server neither reads it into memory nor copies it out
 * again (half the memory traffic). Only for plain unix sockets (over TCP loopback the page-sized
 * pieces of a spliced send cost more than the copy they save: 1M reads
 * went from 3.2k to 1.8k IOPS) and mappings that cannot move under us (see
 * vbd_node_co_zero_copy_source); the header and data leave under the send
 * lock, so no other reply lands in between. */
static int send_read_zero_copy(struct nbd_conn *c, struct nbd_req *r, int fd, uint64_t foff)
{
    uint8_t h[28];
    size_t hl;
    if (c->structured) {
        chunk_header(h, r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, 8 + r->len);
        put_be64(h + 20, r->offset);
        hl = 28;
    } else {
        simple_header(h, r, 0);
        hl = 16;
    }
    vbd_co_mutex_lock(&c->send_lock);
    int rc = c->send_err;
    if (!rc) {
        struct iovec iov = {h, hl};
        rc = vbd_co_sendv_full(c->ch.fd, &iov, 1);
    }
    off_t pos = (off_t)foff;
    size_t left = r->len;
    while (!rc && left) {
        ssize_t w = sendfile(c->ch.fd, fd, &pos, left);
        if (w > 0) {
            left -= (size_t)w;
        } else if (w == 0) {
            /* the file ended under us (truncated): the promised length still goes out, as zeroes */
            static const uint8_t zeroes[4096];
            struct iovec z = {(void *)zeroes, left < sizeof(zeroes) ? left : sizeof(zeroes)};
            rc = vbd_co_sendv_full(c->ch.fd, &z, 1);
            left -= z.iov_len;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int ev = vbd_co_poll(c->ch.fd, POLLOUT);
            rc = ev < 0 ? ev : 0;
        } else if (errno != EINTR) {
            rc = -errno;
        }
    }
    if (rc < 0 && !c->send_err)
        c->send_err = rc; /* a reply cut short: the stream is unusable */
    vbd_co_mutex_unlock(&c->send_lock);
    return rc;
}

static int send_error_reply(struct nbd_conn *c, struct nbd_req *r, int err)
{
    r->rn = r->nsmall = 0; /* whatever was being built is replaced */
    if (!c->structured)
        return send_simple(c, r, err, NULL, 0);
    uint8_t p[6];
    put_be32(p, errno_to_nbd(err));
    put_be16(p + 4, 0);
    add_chunk(r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, p, 6, NULL, 0);
    return reply_send(c, r);
}

static int send_ok(struct nbd_conn *c, struct nbd_req *r)
{
    if (!c->structured)
        return send_simple(c, r, 0, NULL, 0);
    add_chunk(r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, NULL, 0, NULL, 0);
    return reply_send(c, r);
}

static int backend_read(struct nbd_export *e, uint64_t off, uint8_t *buf, uint32_t len)
{
    struct iovec one;
    struct vbd_qiov q;
    vbd_qiov_init_buf(&q, &one, buf, len);
    return vbd_backend_co_preadv(e->be, off, len, &q, 0);
}

static int handle_read(struct nbd_conn *c, struct nbd_req *r)
{
    struct nbd_export *e = c->exp;
    struct vbd_node *n = vbd_backend_node(e->be);
    if (c->sendfile_ok && !c->ch.tls && r->len >= NBD_ZERO_COPY_MIN) {
        uint64_t foff;
        int fd = vbd_node_co_zero_copy_source(n, r->offset, r->len, &foff);
        if (fd >= 0)
            return send_read_zero_copy(c, r, fd, foff);
    }
    if (!c->structured) {
        int rc = backend_read(e, r->offset, r->buf, r->len);
        return rc < 0 ? send_simple(c, r, -rc, NULL, 0) : send_simple(c, r, 0, r->buf, r->len);
    }
    /* Structured: holes are sent as hole chunks instead of zero bytes. */
    struct { uint64_t off; uint32_t len; bool hole; } runs[16];
    int nruns = 0;
    uint64_t pos = r->offset, end = r->offset + r->len;
    bool df = r->flags & NBD_CMD_FLAG_DF;
    while (pos < end && !df) {
        uint64_t pnum;
        int st = vbd_node_co_block_status_above(n, NULL, true, pos, end - pos, &pnum, NULL, NULL, NULL);
        if (st < 0 || pnum == 0)
            break;
        bool hole = (st & VBD_BS_ZERO) || !(st & VBD_BS_ALLOCATED);
        if (nruns && runs[nruns - 1].hole == hole) {
            runs[nruns - 1].len += (uint32_t)pnum;
        } else if (nruns == 16) {
            runs[15].len += (uint32_t)pnum;
            runs[15].hole = false; /* too fragmented: send the rest as data */
        } else {
            runs[nruns].off = pos;
            runs[nruns].len = (uint32_t)pnum;
            runs[nruns].hole = hole;
            nruns++;
        }
        pos += pnum;
    }
    if (pos < end || nruns == 0) { /* DF, or status unavailable: one data chunk */
        nruns = 1;
        runs[0].off = r->offset;
        runs[0].len = r->len;
        runs[0].hole = false;
    }
    for (int i = 0; i < nruns; i++) {
        if (runs[i].hole)
            continue;
        int rc = backend_read(e, runs[i].off, r->buf + (runs[i].off - r->offset), runs[i].len);
        if (rc < 0)
            return send_error_reply(c, r, -rc);
    }
    for (int i = 0; i < nruns; i++) {
        uint16_t flags = i == nruns - 1 ? NBD_REPLY_FLAG_DONE : 0;
        uint8_t p[12];
        put_be64(p, runs[i].off);
        if (runs[i].hole) {
            put_be32(p + 8, runs[i].len);
            add_chunk(r, flags, NBD_REPLY_TYPE_OFFSET_HOLE, p, 12, NULL, 0);
        } else {
            add_chunk(r, flags, NBD_REPLY_TYPE_OFFSET_DATA, p, 8, r->buf + (runs[i].off - r->offset), runs[i].len);
        }
    }
    return reply_send(c, r);
}

static int handle_block_status(struct nbd_conn *c, struct nbd_req *r)
{
    if (!c->structured || !c->meta)
        return send_error_reply(c, r, EINVAL);
    struct vbd_node *n = vbd_backend_node(c->exp->be);
    unsigned todo[3], ntodo = 0;
    if (c->meta & META_ALLOCATION)
        todo[ntodo++] = META_ALLOCATION;
    if (c->meta & META_DEPTH)
        todo[ntodo++] = META_DEPTH;
    if ((c->meta & (1u << (META_BITMAP - 1))) && c->exp->bitmap)
        todo[ntodo++] = META_BITMAP;
    uint32_t maxext = (r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : NBD_MAX_EXTENTS;
    size_t per_ctx = 4 + 8 * NBD_MAX_EXTENTS;
    if (!r->ext && !(r->ext = malloc(3 * per_ctx)))
        return send_error_reply(c, r, ENOMEM);
    int rc = 0;
    for (unsigned k = 0; k < ntodo && rc >= 0; k++) {
        uint8_t *ext = r->ext + k * per_ctx;
        uint32_t next = 0;
        uint64_t pos = r->offset, end = r->offset + r->len;
        while (pos < end && next < maxext) {
            uint64_t pnum;
            int depth = 0;
            int st = todo[k] == META_BITMAP
                         ? vbd_node_co_bitmap_status(n, c->exp->bitmap, pos, end - pos, &pnum)
                         : vbd_node_co_block_status_above(n, NULL, true, pos, end - pos, &pnum, NULL, NULL, &depth);
            if (st < 0) {
                rc = st;
                break;
            }
            if (pnum == 0)
                break;
            uint32_t flags;
            if (todo[k] == META_BITMAP)
                flags = st ? 1 : 0; /* NBD_STATE_DIRTY */
            else if (todo[k] == META_ALLOCATION)
                flags = ((st & VBD_BS_DATA) ? 0 : NBD_STATE_HOLE) | ((st & VBD_BS_ZERO) ? NBD_STATE_ZERO : 0);
            else
                flags = (st & VBD_BS_ALLOCATED) ? (uint32_t)depth + 1 : 0;
            if (next && get_be32(ext + 4 + 8 * (next - 1) + 4) == flags)
                put_be32(ext + 4 + 8 * (next - 1), get_be32(ext + 4 + 8 * (next - 1)) + (uint32_t)pnum);
            else {
                put_be32(ext + 4 + 8 * next, (uint32_t)pnum);
                put_be32(ext + 4 + 8 * next + 4, flags);
                next++;
            }
            pos += pnum;
        }
        if (rc < 0)
            break;
        put_be32(ext, todo[k]);
        add_chunk(r, k == ntodo - 1 ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_BLOCK_STATUS, NULL, 0, ext, 4 + 8 * next);
    }
    if (rc < 0)
        return send_error_reply(c, r, -rc);
    return reply_send(c, r);
}

static void request_done(struct nbd_conn *c, struct nbd_req *r)
{
    if (r->counted)
        c->inflight_bytes -= r->len;
    r->counted = false;
    if (c->buf_bytes > NBD_MAX_KEPT_BYTES && r->cap > 65536) {
        c->buf_bytes -= r->cap;
        free(r->buf);
        r->buf = NULL;
        r->cap = 0;
    }
    r->next = c->free_slots;
    c->free_slots = r;
    c->inflight--;
    vbd_co_queue_wake_one(&c->slot_q);
    if (!c->inflight)
        vbd_co_queue_wake_all(&c->drain_q);
}

static void request_co(void *opaque)
{
    struct nbd_req *r = opaque;
    struct nbd_conn *c = r->c;
    struct nbd_export *e = c->exp;
    uint64_t size = vbd_backend_size(e->be);
    int rc = 0;
    bool bad_range = r->offset > size || r->len > size - r->offset;
    switch (r->type) {
    case NBD_CMD_READ:
        rc = bad_range ? send_error_reply(c, r, EINVAL) : handle_read(c, r);
        break;
    case NBD_CMD_WRITE: {
        if (!e->writable) {
            rc = send_error_reply(c, r, EPERM);
            break;
        }
        if (bad_range) {
            rc = send_error_reply(c, r, ENOSPC);
            break;
        }
        struct iovec one;
        struct vbd_qiov q;
        vbd_qiov_init_buf(&q, &one, r->buf, r->len);
        int err = vbd_backend_co_pwritev(e->be, r->offset, r->len, &q, (r->flags & NBD_CMD_FLAG_FUA) ? VBD_REQ_FUA : 0);
        rc = err < 0 ? send_error_reply(c, r, -err) : send_ok(c, r);
        break;
    }
    case NBD_CMD_FLUSH: {
        int err = vbd_backend_co_flush(e->be);
        rc = err < 0 ? send_error_reply(c, r, -err) : send_ok(c, r);
        break;
    }
    case NBD_CMD_TRIM:
    case NBD_CMD_WRITE_ZEROES: {
        if (!e->writable) {
            rc = send_error_reply(c, r, EPERM);
            break;
        }
        if (bad_range) {
            rc = send_error_reply(c, r, ENOSPC);
            break;
        }
        int err;
        if (r->type == NBD_CMD_TRIM) {
            err = vbd_backend_co_pdiscard(e->be, r->offset, r->len);
            if (err == 0 && (r->flags & NBD_CMD_FLAG_FUA))
                err = vbd_backend_co_flush(e->be);
        } else {
            unsigned f = (r->flags & NBD_CMD_FLAG_NO_HOLE) ? 0 : VBD_REQ_MAY_UNMAP;
            if (r->flags & NBD_CMD_FLAG_FUA)
                f |= VBD_REQ_FUA;
            if (r->flags & NBD_CMD_FLAG_FAST_ZERO)
                f |= VBD_REQ_NO_FALLBACK;
            err = vbd_backend_co_pwrite_zeroes(e->be, r->offset, r->len, f);
        }
        rc = err < 0 ? send_error_reply(c, r, -err) : send_ok(c, r);
        break;
    }
    case NBD_CMD_CACHE:
        rc = bad_range ? send_error_reply(c, r, EINVAL) : send_ok(c, r); /* the host page cache does this */
        break;
    case NBD_CMD_BLOCK_STATUS:
        rc = bad_range || !r->len ? send_error_reply(c, r, EINVAL) : handle_block_status(c, r);
        break;
    default:
        rc = send_error_reply(c, r, EINVAL);
    }
    if (rc < 0 && !c->closing) {
        c->closing = true;
        vbd_chan_shutdown(&c->ch, SHUT_RDWR);
    }
    request_done(c, r);
}

static bool flags_valid(uint16_t type, uint16_t flags)
{
    static const uint16_t allowed[] = {
        [NBD_CMD_READ] = NBD_CMD_FLAG_DF,
        [NBD_CMD_WRITE] = NBD_CMD_FLAG_FUA,
        [NBD_CMD_DISC] = 0,
        [NBD_CMD_FLUSH] = 0,
        [NBD_CMD_TRIM] = NBD_CMD_FLAG_FUA,
        [NBD_CMD_CACHE] = 0,
        [NBD_CMD_WRITE_ZEROES] = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
        [NBD_CMD_BLOCK_STATUS] = NBD_CMD_FLAG_REQ_ONE,
    };
    if (type > NBD_CMD_BLOCK_STATUS)
        return true; /* unknown commands get EINVAL in request_co */
    return !(flags & ~allowed[type]);
}

static void transmission(struct nbd_conn *c)
{
    for (int i = 0; i < NBD_SLOTS; i++) {
        c->slots[i].c = c;
        c->slots[i].next = c->free_slots;
        c->free_slots = &c->slots[i];
    }
    c->out = malloc(sizeof(struct iovec) * NBD_OUT_IOV);
    c->out_spare = malloc(sizeof(struct iovec) * NBD_OUT_IOV);
    c->rbuf = c->ch.tls ? NULL : malloc(NBD_RBUF);
    if (!c->out || !c->out_spare) {
        free(c->out);
        free(c->out_spare);
        free(c->rbuf);
        return;
    }
    c->out_gen = 1;
    c->flusher_running = true;
    vbd_co_wake(vbd_co_create(flusher_co, c));
    while (!c->closing) {
        uint8_t h[28];
        if (conn_recv(c, h, 28) < 0)
            break;
        if (get_be32(h) != NBD_REQUEST_MAGIC) {
            vbd_warn("nbd: bad request magic 0x%08x, closing the connection", get_be32(h));
            break;
        }
        while (!c->free_slots)
            vbd_co_queue_wait(&c->slot_q);
        struct nbd_req *r = c->free_slots;
        c->free_slots = r->next;
        c->inflight++;
        r->flags = get_be16(h + 4);
        r->type = get_be16(h + 6);
        r->cookie = get_be64(h + 8);
        r->offset = get_be64(h + 16);
        r->len = get_be32(h + 20 + 4 - 4);
        r->len = get_be32(h + 24);
        if (r->type == NBD_CMD_DISC) {
            request_done(c, r);
            break;
        }
        bool needs_buf = r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE;
        if (needs_buf && r->len > NBD_MAX_REQUEST) {
            if (r->type == NBD_CMD_WRITE) {
                /* its payload cannot be skipped safely: the spec lets us close */
                vbd_warn("nbd: write of %u bytes exceeds the maximum %u, closing", r->len, NBD_MAX_REQUEST);
                request_done(c, r);
                break;
            }
            send_error_reply(c, r, EINVAL);
            request_done(c, r);
            continue;
        }
        while (needs_buf && c->inflight_bytes && c->inflight_bytes + r->len > NBD_MAX_INFLIGHT_BYTES)
            vbd_co_queue_wait(&c->slot_q);
        if (needs_buf && r->cap < r->len) {
            free(r->buf);
            c->buf_bytes -= r->cap;
            r->cap = r->len < 65536 ? 65536 : r->len;
            r->buf = vbd_alloc_aligned(4096, r->cap);
            c->buf_bytes += r->cap;
        }
        if (r->type == NBD_CMD_WRITE && conn_recv(c, r->buf, r->len) < 0) {
            request_done(c, r);
            break;
        }
        if (!flags_valid(r->type, r->flags)) {
            send_error_reply(c, r, EINVAL);
            request_done(c, r);
            continue;
        }
        /* run on the next iteration: requests read in one go are submitted together */
        r->counted = r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE;
        if (r->counted)
            c->inflight_bytes += r->len;
        vbd_co_wake(vbd_co_create(request_co, r));
    }
    c->closing = true;
    while (c->inflight)
        vbd_co_queue_wait(&c->drain_q);
    c->flush_stop = true;
    vbd_co_queue_wake_all(&c->flush_q);
    while (c->flusher_running)
        vbd_co_queue_wait(&c->flusher_exit_q);
    for (int i = 0; i < NBD_SLOTS; i++) {
        free(c->slots[i].buf);
        free(c->slots[i].ext);
    }
    free(c->out);
    free(c->out_spare);
    free(c->rbuf);
}

static void handshake_timeout(void *opaque)
{
    struct nbd_conn *c = opaque;
    vbd_warn("nbd: client did not finish the handshake in time, closing");
    vbd_chan_shutdown(&c->ch, SHUT_RDWR);
}

static void conn_co(void *opaque)
{
    struct nbd_conn *c = opaque;
    c->handshake_timer.fn = handshake_timeout;
    c->handshake_timer.arg = c;
    vbd_timer_arm(&c->handshake_timer, vbd_clock_ns() + NBD_HANDSHAKE_NS);
    int rc = handshake(c);
    vbd_timer_cancel(&c->handshake_timer);
    if (rc == 0 && c->exp && !srv.stopping)
        transmission(c);
    if (c->ch.tls) {
        vbd_tls_bye(c->ch.tls);
        vbd_tls_free(c->ch.tls);
    }
    close(c->ch.fd);
    for (struct nbd_conn **pp = &srv.conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    free(c);
    srv.nconns--;
    vbd_co_queue_wake_all(&srv.idle_q);
}

/* Serves one already connected socket to completion (tests and the fuzzer
 * feed the server through a socketpair). Coroutine context. */
void vbd_nbd_serve_fd(int fd)
{
    struct nbd_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return;
    }
    c->ch.fd = fd;
    c->next = srv.conns;
    srv.conns = c;
    srv.nconns++;
    conn_co(c);
}

static void accept_co(void *opaque)
{
    while (!srv.stopping) {
        int fd = vbd_co_accept(srv.listen_fd, NULL, NULL);
        if (fd < 0) {
            if (srv.stopping)
                break;
            if (fd == -EMFILE || fd == -ENFILE || fd == -ENOMEM) {
                vbd_warn("nbd: cannot accept a connection: %s", strerror(-fd));
                vbd_co_sleep_ns(100000000);
                continue;
            }
            if (fd == -EINVAL || fd == -EBADF || fd == -ESHUTDOWN)
                break;
            continue;
        }
        if (srv.max_connections && (uint32_t)srv.nconns >= srv.max_connections) {
            vbd_warn("nbd: refusing a connection: max-connections=%u reached", srv.max_connections);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct nbd_conn *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->ch.fd = fd;
        struct sockaddr_storage sa;
        socklen_t salen = sizeof(sa);
        c->sendfile_ok = getsockname(fd, (struct sockaddr *)&sa, &salen) == 0 && sa.ss_family == AF_UNIX;
        c->next = srv.conns;
        srv.conns = c;
        srv.nconns++;
        vbd_co_wake(vbd_co_create(conn_co, c));
    }
    srv.accept_done = true;
    vbd_co_queue_wake_all(&srv.idle_q);
}

/* ------------------------------------------------------------------ */
/* server and export lifecycle                                         */

static int listen_on(struct json_object *opts, struct vbd_error **err)
{
    char *type = NULL, *path = NULL, *host = NULL, *port = NULL;
    int fd = -1;
    if (vbd_opt_take_str(opts, "addr.type", &type, err) < 0 || vbd_opt_take_str(opts, "addr.path", &path, err) < 0 ||
        vbd_opt_take_str(opts, "addr.host", &host, err) < 0 || vbd_opt_take_str(opts, "addr.port", &port, err) < 0)
        goto out;
    if (!type || !strcmp(type, "unix")) {
        if (!path) {
            vbd_error_setf(err, EINVAL, "NBD server: 'addr.path' is required for addr.type=unix");
            goto out;
        }
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof(sa.sun_path)) {
            vbd_error_setf(err, ENAMETOOLONG, "NBD server: socket path '%s' is too long", path);
            goto out;
        }
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        unlink(path);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 128) < 0) {
            vbd_error_setf(err, errno, "NBD server: cannot listen on '%s': %s", path, strerror(errno));
            if (fd >= 0)
                close(fd);
            fd = -1;
            goto out;
        }
        srv.unix_path = path;
        path = NULL;
    } else if (!strcmp(type, "inet")) {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res;
        int gai = getaddrinfo(host ? host : "0.0.0.0", port ? port : "10809", &hints, &res);
        if (gai) {
            vbd_error_setf(err, EINVAL, "NBD server: address '%s:%s': %s", host ? host : "", port ? port : "10809",
                           gai_strerror(gai));
            goto out;
        }
        fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd >= 0)
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 128) < 0) {
            vbd_error_setf(err, errno, "NBD server: cannot listen on %s:%s: %s", host ? host : "*",
                           port ? port : "10809", strerror(errno));
            if (fd >= 0)
                close(fd);
            fd = -1;
        }
        freeaddrinfo(res);
    } else {
        vbd_error_setf(err, EINVAL, "NBD server: addr.type must be 'unix' or 'inet', not '%s'", type);
    }
out:
    free(type);
    free(path);
    free(host);
    free(port);
    return fd;
}

int vbd_nbd_server_start(struct json_object *opts, struct vbd_error **err)
{
    if (srv.running) {
        vbd_error_setf(err, EBUSY, "NBD server already running");
        return -EBUSY;
    }
    uint64_t maxc = 0;
    char *tls = NULL, *authz = NULL;
    if (vbd_opt_take_u64(opts, "max-connections", &maxc, err) < 0 || vbd_opt_take_str(opts, "tls-creds", &tls, err) < 0 ||
        vbd_opt_take_str(opts, "tls-authz", &authz, err) < 0) {
        free(tls);
        return -EINVAL;
    }
    struct vbd_tls_creds *creds = NULL;
    struct vbd_authz *az = NULL;
    if (tls)
        creds = vbd_tls_creds_get(tls, VBD_TLS_SERVER, "NBD server", err);
    if (authz && (!tls || creds)) {
        /* the DN is only worth checking on a certificate the handshake verified */
        if (!creds)
            vbd_error_setf(err, EINVAL, "NBD server: tls-authz=%s needs tls-creds (x509 with verify-peer=on)",
                           authz);
        else if (!vbd_tls_creds_verify_peer(creds))
            vbd_error_setf(
                err, EINVAL,
                "NBD server: tls-authz=%s needs x509 credentials with verify-peer=on ('%s' is %s%s)", authz,
                tls, vbd_tls_creds_type_name(creds),
                strcmp(vbd_tls_creds_type_name(creds), "tls-creds-x509") ? "" : " with verify-peer=off");
        else
            az = vbd_authz_get(authz, "NBD server", err);
    }
    bool ok = (!tls || creds) && (!authz || az);
    free(tls);
    free(authz);
    int fd = ok ? listen_on(opts, err) : -1;
    if (fd >= 0 && vbd_opts_check_empty(opts, "--nbd-server", err) < 0) {
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        vbd_tls_creds_unref(creds);
        vbd_authz_unref(az);
        return -EINVAL;
    }
    srv.tls = creds;
    srv.authz = az;
    srv.listen_fd = fd;
    srv.max_connections = (uint32_t)maxc;
    srv.running = true;
    srv.stopping = false;
    srv.accept_done = false;
    vbd_co_wake(vbd_co_create(accept_co, NULL));
    return 0;
}

void vbd_nbd_server_stop(void)
{
    if (!srv.running)
        return;
    srv.stopping = true;
    shutdown(srv.listen_fd, SHUT_RDWR); /* wakes the accept loop */
    for (struct nbd_conn *c = srv.conns; c; c = c->next) {
        c->closing = true;
        vbd_chan_shutdown(&c->ch, SHUT_RD); /* in-flight replies still go out */
    }
    if (vbd_in_co())
        while (srv.nconns || !srv.accept_done)
            vbd_co_queue_wait(&srv.idle_q);
    close(srv.listen_fd);
    srv.listen_fd = -1;
    if (srv.unix_path) {
        unlink(srv.unix_path);
        free(srv.unix_path);
        srv.unix_path = NULL;
    }
    vbd_tls_creds_unref(srv.tls); /* sessions hold their own references */
    srv.tls = NULL;
    vbd_authz_unref(srv.authz);
    srv.authz = NULL;
    srv.running = false;
}

static struct vbd_export *nbd_export_create(struct json_object *opts, struct vbd_error **err)
{
    char *id = NULL, *node = NULL, *name = NULL, *desc = NULL, *bitmap = NULL;
    bool writable = false, depth = true;
    struct nbd_export *e = NULL;
    if (vbd_opt_take_str(opts, "id", &id, err) < 0 || vbd_opt_take_str(opts, "node-name", &node, err) < 0 ||
        vbd_opt_take_str(opts, "name", &name, err) < 0 || vbd_opt_take_str(opts, "description", &desc, err) < 0 ||
        vbd_opt_take_bool(opts, "writable", &writable, err) < 0 || vbd_opt_take_str(opts, "bitmap", &bitmap, err) < 0 ||
        vbd_opt_take_bool(opts, "allocation-depth", &depth, err) < 0)
        goto fail;
    if (!id || !node) {
        vbd_error_setf(err, EINVAL, "NBD export: '%s' is required", id ? "node-name" : "id");
        goto fail;
    }
    if (!srv.running) {
        vbd_error_setf(err, EINVAL, "NBD export '%s': the NBD server is not running (use --nbd-server first)", id);
        goto fail;
    }
    struct vbd_node *n = vbd_node_find(node);
    if (!n) {
        vbd_error_setf(err, ENOENT, "NBD export '%s': no node named '%s'", id, node);
        goto fail;
    }
    if (!name)
        name = strdup(node);
    if (strlen(name) > NBD_MAX_NAME_LEN) {
        vbd_error_setf(err, EINVAL, "NBD export '%s': name longer than %d bytes", id, NBD_MAX_NAME_LEN);
        goto fail;
    }
    for (struct nbd_export *o = srv.exports; o; o = o->next)
        if (!strcmp(o->name, name) || !strcmp(o->id, id)) {
            vbd_error_setf(err, EEXIST, "NBD export '%s': an export with this %s already exists", id,
                           !strcmp(o->id, id) ? "id" : "name");
            goto fail;
        }
    if (bitmap) {
        uint64_t pnum;
        int st = vbd_node_co_bitmap_status(n, bitmap, 0, n->size ? n->size : 1, &pnum);
        if (st < 0) {
            vbd_error_setf(err, -st, "NBD export '%s': %s '%s' on node '%s'", id,
                           st == -ENOENT ? "no persistent dirty bitmap named" : "cannot export the inconsistent bitmap",
                           bitmap, node);
            goto fail;
        }
    }
    struct vbd_backend_opts bo = {.read_only = !writable, .discard_unmap = true, .name = id};
    struct vbd_backend *be = vbd_backend_new(n, &bo, err);
    if (!be) {
        vbd_error_prepend(err, "NBD export '%s': ", id);
        goto fail;
    }
    e = calloc(1, sizeof(*e));
    e->base.type = &vbd_export_type_nbd;
    e->id = id;
    e->name = name;
    e->description = desc;
    e->bitmap = bitmap;
    bitmap = NULL;
    e->be = be;
    e->writable = writable;
    e->next = srv.exports;
    srv.exports = e;
    free(node);
    return &e->base;
fail:
    free(id);
    free(node);
    free(name);
    free(desc);
    free(bitmap);
    return NULL;
}

static void nbd_export_shutdown(struct vbd_export *base)
{
    struct nbd_export *e = (struct nbd_export *)base;
    /* connections using this export are closed gracefully */
    for (struct nbd_conn *c = srv.conns; c; c = c->next)
        if (c->exp == e && !c->closing) {
            c->closing = true;
            vbd_chan_shutdown(&c->ch, SHUT_RD);
        }
    if (vbd_in_co()) {
        for (;;) {
            bool busy = false;
            for (struct nbd_conn *c = srv.conns; c; c = c->next)
                busy |= c->exp == e;
            if (!busy)
                break;
            vbd_co_queue_wait(&srv.idle_q);
        }
        vbd_backend_co_flush(e->be);
    }
    for (struct nbd_export **pp = &srv.exports; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            break;
        }
}

static void nbd_export_free(struct vbd_export *base)
{
    struct nbd_export *e = (struct nbd_export *)base;
    vbd_backend_free(e->be);
    free(e->id);
    free(e->name);
    free(e->description);
    free(e->bitmap);
    free(e);
}

static struct json_object *nbd_export_query(struct vbd_export *base)
{
    struct nbd_export *e = (struct nbd_export *)base;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string("nbd"));
    json_object_object_add(o, "id", json_object_new_string(e->id));
    json_object_object_add(o, "node-name", json_object_new_string(vbd_backend_node(e->be)->node_name));
    json_object_object_add(o, "shutting-down", json_object_new_boolean(false));
    return o;
}

const struct vbd_export_type vbd_export_type_nbd = {
    .type = "nbd",
    .create = nbd_export_create,
    .shutdown = nbd_export_shutdown,
    .free = nbd_export_free,
    .query = nbd_export_query,
};
