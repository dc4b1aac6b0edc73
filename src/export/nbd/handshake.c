/* SPDX-License-Identifier: MIT */
/*
 * NBD server, handshake: fixed newstyle option negotiation as an explicit
 * sequence that never trusts a length (STARTTLS, INFO/GO, LIST, meta
 * contexts), up to the export the client picks.
 */
#include "internal.h"

#include "vbd/alloc.h"
#include "vbd/authz.h"
#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int send_opt_reply(struct nbd_conn *c, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
    uint8_t h[20];
    put_be64p(h, NBD_REP_MAGIC);
    put_be32p(h + 8, opt);
    put_be32p(h + 12, type);
    put_be32p(h + 16, len);
    struct iovec iov[2] = {{h, sizeof(h)}, {(void *)data, len}};
    return vbd_chan_sendv_full(&c->ch, iov, len ? 2 : 1);
}

static int send_opt_error(struct nbd_conn *c, uint32_t opt, uint32_t type, const char *msg)
{
    vbd_debug("nbd: option %u refused: %s", opt, msg);
    return send_opt_reply(c, opt, type, msg, (uint32_t)strlen(msg));
}

static uint16_t export_flags(const struct nbd_conn *c, struct nbd_export *e)
{
    /* QEMU 7.2's flags: FUA even when read-only; DF only once structured
     * replies are negotiated (the NBD spec: the flag MUST be clear
     * otherwise); multi-conn (a flush goes to the shared node, so it covers
     * every connection) unless the server takes one connection only
     * (qemu-nbd's default -e 1), where a client trusting it would open
     * connections that are refused */
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE;
    if (c->structured)
        f |= NBD_FLAG_SEND_DF;
    if (srv.max_connections != 1)
        f |= NBD_FLAG_CAN_MULTI_CONN;
    if (!e->writable)
        f |= NBD_FLAG_READ_ONLY;
    else
        f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    return f;
}

/* Parse "u32 namelen, name" at p (len bytes); returns bytes used or -1. */
static int parse_name(const uint8_t *p, uint32_t len, char *name)
{
    if (len < 4)
        return -1;
    uint32_t nl = get_be32p(p);
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
    uint16_t nreq = get_be16p(data + used);
    if ((uint32_t)used + 2 + 2u * nreq != len)
        return send_opt_error(c, opt, NBD_REP_ERR_INVALID, "NBD_OPT_INFO/GO length does not match its content");
    struct nbd_export *e = nbd_find_export(name);
    c->pinned = e; /* held across the replies' sends: see struct nbd_conn */
    if (!e) {
        char msg[NBD_MAX_NAME_LEN + 64];
        snprintf(msg, sizeof(msg), "export '%s' not present", name);
        return send_opt_error(c, opt, NBD_REP_ERR_UNKNOWN, msg);
    }
    bool want_name = false, want_desc = false, want_bs = false;
    for (uint16_t i = 0; i < nreq; i++) {
        uint16_t t = get_be16p(data + used + 2 + 2 * i);
        want_name |= t == NBD_INFO_NAME;
        want_desc |= t == NBD_INFO_DESCRIPTION;
        want_bs |= t == NBD_INFO_BLOCK_SIZE;
    }
    uint8_t buf[12];
    int rc;
    put_be16p(buf, NBD_INFO_EXPORT);
    put_be64p(buf + 2, vbd_backend_size(e->be));
    put_be16p(buf + 10, export_flags(c, e));
    if ((rc = send_opt_reply(c, opt, NBD_REP_INFO, buf, 12)) < 0)
        return rc;
    if (want_name) {
        size_t nl = strlen(e->name);
        uint8_t *b = vbd_xmalloc(2 + nl);
        put_be16p(b, NBD_INFO_NAME);
        memcpy(b + 2, e->name, nl);
        rc = send_opt_reply(c, opt, NBD_REP_INFO, b, (uint32_t)(2 + nl));
        free(b);
        if (rc < 0)
            return rc;
    }
    if (want_desc && e->description) {
        size_t dl = strlen(e->description);
        uint8_t *b = vbd_xmalloc(2 + dl);
        put_be16p(b, NBD_INFO_DESCRIPTION);
        memcpy(b + 2, e->description, dl);
        rc = send_opt_reply(c, opt, NBD_REP_INFO, b, (uint32_t)(2 + dl));
        free(b);
        if (rc < 0)
            return rc;
    }
    if (want_bs) {
        /* QEMU 7.2's sizes over a format node (its root has byte
         * granularity whatever the file's alignment): minimum 1 (512 on a
         * probed raw image, whose block 0 QEMU writes only whole),
         * preferred 4096, the largest request of the node (blkdebug
         * max-transfer=, an NBD or rbd node below) up to 32 MiB */
        const struct vbd_node *root = vbd_backend_node(e->be);
        uint64_t mt = root->bl.max_transfer;
        uint8_t b[14];
        put_be16p(b, NBD_INFO_BLOCK_SIZE);
        put_be32p(b + 2, (root->open_flags & VBD_OPEN_PROBED_RAW) ? 512 : 1);
        put_be32p(b + 6, 4096);
        put_be32p(b + 10, mt && mt < NBD_MAX_REQUEST ? (uint32_t)mt : NBD_MAX_REQUEST);
        if ((rc = send_opt_reply(c, opt, NBD_REP_INFO, b, 14)) < 0)
            return rc;
    }
    if ((rc = send_opt_reply(c, opt, NBD_REP_ACK, NULL, 0)) < 0)
        return rc;
    if (go) {
        if (c->meta_exp != e)
            nbd_meta_reset(c); /* contexts selected for another export: none (QEMU's nbd_check_meta_export) */
        c->exp = e;
        *done = true;
    }
    return 0;
}

void nbd_meta_reset(struct nbd_conn *c)
{
    free(c->meta_bitmaps);
    c->meta_bitmaps = NULL;
    c->meta_exp = NULL;
    c->meta_alloc = c->meta_depth = false;
    c->meta_count = 0;
}

/* One query of NBD_OPT_LIST/SET_META_CONTEXT against exp, as QEMU 7.2's
 * nbd_meta_base_query / nbd_meta_qemu_query: an exact name selects its
 * context; in a LIST, a namespace alone ("base:", "qemu:",
 * "qemu:dirty-bitmap:") selects all of its contexts. Unknown names select
 * nothing. */
static void meta_query(const char *q, bool list, const struct nbd_export *exp, bool *alloc, bool *depth, bool *bitmaps)
{
    static const char dirty[] = "qemu:dirty-bitmap:";
    if (!strncmp(q, "base:", 5)) {
        *alloc |= !strcmp(q + 5, "allocation") || (list && !q[5]);
    } else if (!strcmp(q, "qemu:")) {
        if (list) {
            *depth |= exp->allocation_depth;
            memset(bitmaps, 1, exp->nbitmaps);
        }
    } else if (!strcmp(q, "qemu:allocation-depth")) {
        *depth |= exp->allocation_depth;
    } else if (!strncmp(q, dirty, sizeof(dirty) - 1)) {
        const char *bm = q + sizeof(dirty) - 1;
        if (!*bm && list)
            memset(bitmaps, 1, exp->nbitmaps);
        for (uint32_t i = 0; *bm && i < exp->nbitmaps; i++)
            if (!strcmp(exp->bitmaps[i], bm)) {
                bitmaps[i] = true;
                break; /* a name given twice (-B b -B b): the first, as QEMU */
            }
    }
}

static int send_meta_context(struct nbd_conn *c, uint32_t opt, uint32_t id, const char *prefix, const char *name)
{
    size_t pl = strlen(prefix), nl = strlen(name);
    uint8_t b[4 + NBD_MAX_NAME_LEN];
    if (pl + nl > NBD_MAX_NAME_LEN)
        return 0; /* cannot be: export names and bitmap names are bounded at export-add */
    put_be32p(b, opt == NBD_OPT_SET_META_CONTEXT ? id : 0);
    memcpy(b + 4, prefix, pl);
    memcpy(b + 4 + pl, name, nl);
    return send_opt_reply(c, opt, NBD_REP_META_CONTEXT, b, (uint32_t)(4 + pl + nl));
}

static int reply_meta(struct nbd_conn *c, uint32_t opt, const uint8_t *data, uint32_t len)
{
    bool set = opt == NBD_OPT_SET_META_CONTEXT;
    /* a LIST is answered without structured replies, as QEMU's */
    if (set && !c->structured)
        return send_opt_error(c, opt, NBD_REP_ERR_INVALID, "structured replies must be negotiated first");
    if (set)
        nbd_meta_reset(c); /* a SET replaces the selection, even one that fails (QEMU's) */
    char name[NBD_MAX_NAME_LEN + 1];
    int used = parse_name(data, len, name);
    if (used < 0 || len - used < 4)
        return send_opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed meta context request");
    uint32_t nq = get_be32p(data + used);
    uint32_t pos = used + 4;
    /* validate all queries before replying */
    uint32_t p = pos;
    for (uint32_t i = 0; i < nq; i++) {
        if (len - p < 4 || get_be32p(data + p) > len - p - 4 || get_be32p(data + p) > NBD_MAX_NAME_LEN)
            return send_opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed meta context query");
        p += 4 + get_be32p(data + p);
    }
    if (p != len)
        return send_opt_error(c, opt, NBD_REP_ERR_INVALID, "meta context request length does not match its content");
    struct nbd_export *exp = nbd_find_export(name);
    if (!exp) {
        char msg[NBD_MAX_NAME_LEN + 64];
        snprintf(msg, sizeof(msg), "export '%s' not present", name);
        return send_opt_error(c, opt, NBD_REP_ERR_UNKNOWN, msg);
    }
    bool alloc = false, depth = false;
    bool *bitmaps = vbd_xcalloc(exp->nbitmaps + 1, sizeof(*bitmaps));
    if (nq == 0 && !set) { /* LIST of nothing: every context */
        alloc = true;
        depth = exp->allocation_depth;
        memset(bitmaps, 1, exp->nbitmaps);
    }
    for (uint32_t i = 0; i < nq; i++) {
        char q[NBD_MAX_NAME_LEN + 1];
        uint32_t ql = get_be32p(data + pos);
        memcpy(q, data + pos + 4, ql);
        q[ql] = 0;
        pos += 4 + ql;
        meta_query(q, !set, exp, &alloc, &depth, bitmaps);
    }
    /* the replies in QEMU's order, whatever the queries' */
    c->pinned = exp; /* its names are read across the sends */
    uint32_t count = 0;
    int rc = 0;
    if (alloc && (rc = send_meta_context(c, opt, META_ALLOCATION, "base:allocation", "")) >= 0)
        count++;
    if (rc >= 0 && depth && (rc = send_meta_context(c, opt, META_DEPTH, "qemu:allocation-depth", "")) >= 0)
        count++;
    for (uint32_t i = 0; rc >= 0 && i < exp->nbitmaps; i++)
        if (bitmaps[i] && (rc = send_meta_context(c, opt, META_BITMAP + i, "qemu:dirty-bitmap:", exp->bitmaps[i])) >= 0)
            count++;
    if (rc >= 0)
        rc = send_opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
    c->pinned = NULL;
    if (rc >= 0 && set && count) {
        c->meta_exp = exp;
        c->meta_alloc = alloc;
        c->meta_depth = depth;
        c->meta_bitmaps = bitmaps;
        c->meta_count = count;
        bitmaps = NULL;
    }
    free(bitmaps);
    return rc;
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
            /* Logged before the alert goes out: a client (or a test) that
             * sees the refusal finds it in the log already. */
            vbd_warn("nbd: client connection: %s", err->msg);
            vbd_error_free(err);
            err = NULL;
            vbd_tls_deny(t); /* the client learns why: an access_denied alert */
            rc = -EACCES;
        }
    } else if (rc < 0) {
        vbd_warn("nbd: client connection: %s", err ? err->msg : "TLS failed");
        vbd_error_free(err);
    }
    if (rc < 0) {
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
int nbd_handshake(struct nbd_conn *c)
{
    uint8_t hello[18];
    put_be64p(hello, NBD_MAGIC);
    put_be64p(hello + 8, NBD_IHAVEOPT);
    put_be16p(hello + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    int rc = vbd_chan_send_full(&c->ch, hello, sizeof(hello));
    uint8_t cf[4];
    if (rc < 0 || (rc = vbd_chan_recv_full(&c->ch, cf, 4)) < 0)
        return rc;
    uint32_t cflags = get_be32p(cf);
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
        if (get_be64p(h) != NBD_IHAVEOPT) {
            vbd_warn("nbd: bad option magic from client, closing");
            rc = -EPROTO;
            break;
        }
        uint32_t opt = get_be32p(h + 8), len = get_be32p(h + 12);
        if (len > NBD_MAX_OPTION_LEN) {
            vbd_warn("nbd: option %u with %u bytes of data is too long, closing", opt, len);
            rc = -EPROTO;
            break;
        }
        free(data);
        data = vbd_xmalloc(len);
        if ((rc = vbd_chan_recv_full(&c->ch, data, len)) < 0)
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
                /* no error reply exists for EXPORT_NAME (QEMU closes too: "Bad length received") */
                vbd_warn("nbd: client asked for an export name of %u bytes (at most %u), closing", len,
                         NBD_MAX_NAME_LEN);
                rc = -EPROTO;
                break;
            }
            memcpy(name, data, len);
            name[len] = 0;
            struct nbd_export *e = nbd_find_export(name);
            if (!e) {
                vbd_warn("nbd: client asked for unknown export '%s', closing", name);
                rc = -ENOENT;
                break;
            }
            uint8_t r[10 + 124] = {0};
            put_be64p(r, vbd_backend_size(e->be));
            put_be16p(r + 8, export_flags(c, e));
            c->pinned = e;
            rc = vbd_chan_send_full(&c->ch, r, c->no_zeroes ? 10 : sizeof(r));
            c->pinned = NULL;
            if (c->meta_exp != e)
                nbd_meta_reset(c);
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
                uint8_t *b = vbd_xmalloc(4 + nl + dl);
                put_be32p(b, (uint32_t)nl);
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
            c->pinned = NULL;
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
