/* SPDX-License-Identifier: MIT */
/*
 * vbd-nbd -L: qemu-nbd 7.2's export list. Connects to a server, asks for
 * its exports (NBD_OPT_LIST), then for each one its size, flags and block
 * sizes (NBD_OPT_INFO) and, once structured replies are on, its meta
 * contexts (NBD_OPT_LIST_META_CONTEXT), and prints them in qemu-nbd's
 * lines; a server it cannot list is reported in qemu-nbd's words (exit 1).
 * The handshake never reaches transmission: it ends with NBD_OPT_ABORT
 * (an old-style server, which has no options, gets NBD_CMD_DISC).
 */
#include "nbd-list.h"

#include "vbd/alloc.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/nbd-protocol.h"
#include "vbd/tls.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define NBD_OLDSTYLE_MAGIC 0x00420281861253ull
#define NBD_MAX_STRING 4096             /* names, descriptions */
#define NBD_MAX_BUFFER (32u << 20)      /* any one option reply */

struct listed_export {
    char *name, *description;
    uint64_t size;
    uint16_t flags;
    uint32_t min_block, opt_block, max_block;
    char **contexts;
    size_t ncontexts;
};

struct lister {
    const struct nbd_list_args *a;
    struct vbd_chan ch;
    struct listed_export *ex;
    size_t nex;
    bool failed;
    char msg[1024];  /* the error, once failed */
    char hint[8192]; /* lines printed after it, as QEMU's error hints */
    int rc;
};

static const char *opt_name(uint32_t opt)
{
    switch (opt) {
    case NBD_OPT_EXPORT_NAME: return "export name";
    case NBD_OPT_ABORT: return "abort";
    case NBD_OPT_LIST: return "list";
    case NBD_OPT_STARTTLS: return "starttls";
    case NBD_OPT_INFO: return "info";
    case NBD_OPT_GO: return "go";
    case NBD_OPT_STRUCTURED_REPLY: return "structured reply";
    case NBD_OPT_LIST_META_CONTEXT: return "list meta context";
    case NBD_OPT_SET_META_CONTEXT: return "set meta context";
    default: return "<unknown>";
    }
}

static const char *rep_name(uint32_t rep)
{
    switch (rep) {
    case NBD_REP_ACK: return "ack";
    case NBD_REP_SERVER: return "server";
    case NBD_REP_INFO: return "info";
    case NBD_REP_META_CONTEXT: return "meta context";
    case NBD_REP_ERR_UNSUP: return "unsupported";
    case NBD_REP_ERR_POLICY: return "denied by policy";
    case NBD_REP_ERR_INVALID: return "invalid";
    case NBD_REP_ERR_PLATFORM: return "platform lacks support";
    case NBD_REP_ERR_TLS_REQD: return "TLS required";
    case NBD_REP_ERR_UNKNOWN: return "export unknown";
    case NBD_REP_ERR_SHUTDOWN: return "server shutting down";
    case 0x80000008u: return "block size required";
    default: return "<unknown>";
    }
}

/* the first error only: what goes wrong after it (the abort's send) is noise */
__attribute__((format(printf, 2, 3))) static int fail(struct lister *l, const char *fmt, ...)
{
    if (!l->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(l->msg, sizeof(l->msg), fmt, ap);
        va_end(ap);
        l->failed = true;
    }
    return -1;
}

__attribute__((format(printf, 2, 3))) static void add_hint(struct lister *l, const char *fmt, ...)
{
    size_t used = strlen(l->hint);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->hint + used, sizeof(l->hint) - used, fmt, ap);
    va_end(ap);
}

/* QEMU's nbd_read: "Failed to read WHAT: " before the channel's reason */
static int rd(struct lister *l, void *buf, size_t len, const char *what)
{
    int rc = len ? vbd_chan_recv_full(&l->ch, buf, len) : 0;
    if (rc == 0)
        return 0;
    const char *why = rc == -ECONNRESET ? "Unexpected end-of-file before all data were read" : NULL;
    char sys[160];
    if (!why) {
        snprintf(sys, sizeof(sys), "Unable to read from socket: %s", strerror(-rc));
        why = sys;
    }
    return what ? fail(l, "Failed to read %s: %s", what, why) : fail(l, "%s", why);
}

static int drop(struct lister *l, uint64_t len)
{
    uint8_t junk[4096];
    while (len) {
        size_t c = len < sizeof(junk) ? (size_t)len : sizeof(junk);
        if (rd(l, junk, c, NULL) < 0)
            return -1;
        len -= c;
    }
    return 0;
}

static int send_opt(struct lister *l, uint32_t opt, const void *data, uint32_t len)
{
    uint8_t h[16];
    put_be64p(h, NBD_IHAVEOPT);
    put_be32p(h + 8, opt);
    put_be32p(h + 12, len);
    int rc = vbd_chan_send_full(&l->ch, h, sizeof(h));
    if (rc < 0)
        return fail(l, "Failed to send option request header: Unable to write to socket: %s", strerror(-rc));
    if (len && (rc = vbd_chan_send_full(&l->ch, data, len)) < 0)
        return fail(l, "Failed to send option request data: Unable to write to socket: %s", strerror(-rc));
    return 0;
}

/* a courtesy before hanging up; whether it gets there does not matter */
static void send_abort(struct lister *l)
{
    bool failed = l->failed;
    l->failed = true; /* keeps the error already set */
    send_opt(l, NBD_OPT_ABORT, NULL, 0);
    l->failed = failed;
}

struct opt_reply {
    uint32_t opt, type, len;
};

static int recv_reply(struct lister *l, uint32_t opt, struct opt_reply *r)
{
    uint8_t h[20];
    if (rd(l, h, sizeof(h), "option reply") < 0)
        return -1;
    r->opt = get_be32p(h + 8);
    r->type = get_be32p(h + 12);
    r->len = get_be32p(h + 16);
    if (get_be64p(h) != NBD_REP_MAGIC)
        return fail(l, "Unexpected option reply magic");
    if (r->opt != opt)
        return fail(l, "Unexpected option type %u (%s), expected %u (%s)", r->opt, opt_name(r->opt), opt,
                    opt_name(opt));
    return 0;
}

/* QEMU's nbd_handle_reply_err: 1 for a reply that is no error; 0 for
 * NBD_REP_ERR_UNSUP, or any error unless strict (the caller goes on
 * without); -1 with the error in QEMU's words (the server's message as a
 * hint) */
static int reply_error(struct lister *l, const struct opt_reply *r, bool strict)
{
    if (!(r->type & 0x80000000u))
        return 1;
    char *msg = NULL;
    if (r->len) {
        if (r->len > NBD_MAX_BUFFER)
            return fail(l, "server error %u (%s) message is too long", r->type, rep_name(r->type));
        msg = vbd_xmalloc(r->len + 1);
        if (rd(l, msg, r->len, NULL) < 0) {
            char why[512];
            snprintf(why, sizeof(why), "%s", l->msg);
            snprintf(l->msg, sizeof(l->msg), "Failed to read option error %u (%s) message: %s", r->type,
                     rep_name(r->type), why);
            free(msg);
            return -1;
        }
        msg[r->len] = 0;
    }
    if (r->type == NBD_REP_ERR_UNSUP || !strict) {
        free(msg);
        return 0;
    }
    const char *o = opt_name(r->opt);
    switch (r->type) {
    case NBD_REP_ERR_POLICY: fail(l, "Denied by server for option %u (%s)", r->opt, o); break;
    case NBD_REP_ERR_INVALID: fail(l, "Invalid parameters for option %u (%s)", r->opt, o); break;
    case NBD_REP_ERR_PLATFORM: fail(l, "Server lacks support for option %u (%s)", r->opt, o); break;
    case NBD_REP_ERR_TLS_REQD:
        fail(l, "TLS negotiation required before option %u (%s)", r->opt, o);
        add_hint(l, "Did you forget a valid tls-creds?\n");
        break;
    case NBD_REP_ERR_UNKNOWN: fail(l, "Requested export not available"); break;
    case NBD_REP_ERR_SHUTDOWN: fail(l, "Server shutting down before option %u (%s)", r->opt, o); break;
    case 0x80000008u: fail(l, "Server requires INFO_BLOCK_SIZE for option %u (%s)", r->opt, o); break;
    default: fail(l, "Unknown error code when asking for option %u (%s)", r->opt, o); break;
    }
    if (msg)
        add_hint(l, "server reported: %s\n", msg);
    free(msg);
    send_abort(l);
    return -1;
}

/* an option whose only good answer is an empty ACK: 1 done, 0 not done (see reply_error), -1 failed */
static int simple_option(struct lister *l, uint32_t opt, bool strict)
{
    struct opt_reply r;
    if (send_opt(l, opt, NULL, 0) < 0 || recv_reply(l, opt, &r) < 0)
        return -1;
    int rc = reply_error(l, &r, strict);
    if (rc <= 0)
        return rc;
    if (r.type != NBD_REP_ACK)
        return fail(l, "Server answered option %u (%s) with unexpected reply %u (%s)", opt, opt_name(opt), r.type,
                    rep_name(r.type));
    if (r.len)
        return fail(l, "Option %u ('%s') response length is %u (it should be zero)", opt, opt_name(opt), r.len);
    return 1;
}

static int connect_server(struct lister *l)
{
    const struct nbd_list_args *a = l->a;
    if (a->sockpath) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(a->sockpath) >= sizeof(sa.sun_path))
            return fail(l, "UNIX socket path '%s' is too long", a->sockpath);
        strcpy(sa.sun_path, a->sockpath);
        l->ch.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int rc = l->ch.fd < 0 ? -errno : vbd_co_connect(l->ch.fd, (struct sockaddr *)&sa, sizeof(sa));
        if (rc < 0)
            return fail(l, "Failed to connect to '%s': %s", a->sockpath, strerror(-rc));
        return 0;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG}, *res;
    int gai = getaddrinfo(a->host, a->port, &hints, &res);
    if (gai)
        return fail(l, "address resolution failed for %s:%s: %s", a->host, a->port, gai_strerror(gai));
    int rc = -ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        l->ch.fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (l->ch.fd < 0) {
            rc = -errno;
            continue;
        }
        rc = vbd_co_connect(l->ch.fd, ai->ai_addr, ai->ai_addrlen);
        if (rc == 0)
            break;
        close(l->ch.fd);
        l->ch.fd = -1;
    }
    freeaddrinfo(res);
    if (l->ch.fd < 0)
        return fail(l, "Failed to connect to '%s:%s': %s", a->host, a->port, strerror(-rc));
    int one = 1;
    setsockopt(l->ch.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return 0;
}

/* QEMU's NBDMode: what the handshake found the server can do */
enum mode { MODE_OLDSTYLE, MODE_EXPORT_NAME, MODE_SIMPLE, MODE_STRUCTURED };

static int start_negotiate(struct lister *l)
{
    uint8_t b[8];
    if (rd(l, b, 8, "initial magic") < 0)
        return -1;
    if (get_be64p(b) != NBD_MAGIC)
        return fail(l, "Bad initial magic received: 0x%" PRIx64, get_be64p(b));
    if (rd(l, b, 8, "server magic") < 0)
        return -1;
    uint64_t magic = get_be64p(b);
    if (magic == NBD_OLDSTYLE_MAGIC) {
        if (l->a->tls_creds)
            return fail(l, "Server does not support STARTTLS");
        return MODE_OLDSTYLE;
    }
    if (magic != NBD_IHAVEOPT)
        return fail(l, "Bad server magic received: 0x%" PRIx64, magic);
    if (rd(l, b, 2, "server flags") < 0)
        return -1;
    uint16_t gflags = get_be16p(b);
    bool fixed = gflags & NBD_FLAG_FIXED_NEWSTYLE;
    uint8_t cf[4];
    put_be32p(cf, (fixed ? NBD_FLAG_C_FIXED_NEWSTYLE : 0) | (gflags & NBD_FLAG_NO_ZEROES ? NBD_FLAG_C_NO_ZEROES : 0));
    int rc = vbd_chan_send_full(&l->ch, cf, sizeof(cf));
    if (rc < 0)
        return fail(l, "Failed to send clientflags field: Unable to write to socket: %s", strerror(-rc));
    if (l->a->tls_creds) {
        if (!fixed)
            return fail(l, "Server does not support STARTTLS");
        rc = simple_option(l, NBD_OPT_STARTTLS, true);
        if (rc == 0) {
            fail(l, "Server don't support STARTTLS option");
            send_abort(l);
        }
        if (rc <= 0)
            return -1;
        struct vbd_error *err = NULL;
        l->ch.tls = vbd_tls_new(l->a->tls_creds, l->ch.fd, l->a->tls_hostname, &err);
        if (!l->ch.tls || vbd_tls_handshake(l->ch.tls, &err) < 0) {
            fail(l, "%s", err ? err->msg : "TLS handshake failed");
            vbd_error_free(err);
            return -1;
        }
    }
    if (!fixed)
        return MODE_EXPORT_NAME;
    rc = simple_option(l, NBD_OPT_STRUCTURED_REPLY, false);
    return rc < 0 ? -1 : rc ? MODE_STRUCTURED : MODE_SIMPLE;
}

/* one NBD_OPT_LIST reply: 1 an export (added), 0 the end, -1 failed */
static int receive_list(struct lister *l)
{
    struct opt_reply r;
    if (recv_reply(l, NBD_OPT_LIST, &r) < 0)
        return -1;
    int rc = reply_error(l, &r, true);
    if (rc <= 0)
        return rc;
    if (r.type == NBD_REP_ACK) {
        if (r.len) {
            fail(l, "length too long for option end");
            send_abort(l);
            return -1;
        }
        return 0;
    }
    if (r.type != NBD_REP_SERVER) {
        fail(l, "Unexpected reply type %u (%s), expected %u (%s)", r.type, rep_name(r.type), NBD_REP_SERVER,
             rep_name(NBD_REP_SERVER));
        send_abort(l);
        return -1;
    }
    uint8_t b[4];
    if (r.len < 4 || r.len > NBD_MAX_BUFFER)
        fail(l, "incorrect option length %u", r.len);
    else if (rd(l, b, 4, "option name length") == 0 && (r.len - 4 < get_be32p(b) || get_be32p(b) > NBD_MAX_STRING))
        fail(l, "incorrect name length in server's list response");
    else if (!l->failed && r.len - 4 - get_be32p(b) > NBD_MAX_STRING)
        fail(l, "incorrect description length in server's list response");
    if (l->failed) {
        send_abort(l);
        return -1;
    }
    uint32_t nl = get_be32p(b), dl = r.len - 4 - nl;
    struct listed_export e = {.name = vbd_xmalloc(nl + 1), .description = dl ? vbd_xmalloc(dl + 1) : NULL};
    l->ex = vbd_xrealloc(l->ex, (l->nex + 1) * sizeof(*l->ex));
    l->ex[l->nex++] = e;
    if (rd(l, e.name, nl, "export name") < 0 || (dl && rd(l, e.description, dl, "export description") < 0)) {
        send_abort(l);
        return -1;
    }
    e.name[nl] = 0;
    if (dl)
        e.description[dl] = 0;
    return 1;
}

static bool pow2(uint32_t v) { return v && !(v & (v - 1)); }

/* NBD_OPT_INFO of e, asking for its block sizes: 1 done, 0 not supported, -1 failed */
static int export_info(struct lister *l, struct listed_export *e)
{
    size_t nl = strlen(e->name);
    uint8_t *q = vbd_xmalloc(nl + 8);
    put_be32p(q, (uint32_t)nl);
    memcpy(q + 4, e->name, nl);
    put_be16p(q + 4 + nl, 1);
    put_be16p(q + 6 + nl, NBD_INFO_BLOCK_SIZE);
    int rc = send_opt(l, NBD_OPT_INFO, q, (uint32_t)(nl + 8));
    free(q);
    if (rc < 0)
        return -1;
    e->flags = 0; /* the server must send some (HAS_FLAGS at least) */
    for (;;) {
        struct opt_reply r;
        if (recv_reply(l, NBD_OPT_INFO, &r) < 0)
            return -1;
        if ((rc = reply_error(l, &r, true)) <= 0)
            return rc;
        if (r.type == NBD_REP_ACK) {
            if (r.len)
                return fail(l, "server sent invalid NBD_REP_ACK");
            if (!e->flags)
                return fail(l, "broken server omitted NBD_INFO_EXPORT");
            return 1;
        }
        if (r.type != NBD_REP_INFO)
            fail(l, "unexpected reply type %u (%s), expected %u (%s)", r.type, rep_name(r.type), NBD_REP_INFO,
                 rep_name(NBD_REP_INFO));
        else if (r.len < 2)
            fail(l, "NBD_REP_INFO length %u is too short", r.len);
        uint8_t b[12];
        if (l->failed || rd(l, b, 2, "info type") < 0)
            goto abort;
        uint16_t type = get_be16p(b);
        uint32_t len = r.len - 2;
        if (type == NBD_INFO_EXPORT) {
            if (len != 10) {
                fail(l, "remaining export info len %u is unexpected size", len);
                goto abort;
            }
            if (rd(l, b, 8, "info size") < 0 || rd(l, b + 8, 2, "info flags") < 0)
                goto abort;
            e->size = get_be64p(b);
            e->flags = get_be16p(b + 8);
            if (e->min_block && e->size % e->min_block) {
                fail(l, "export size %" PRIu64 " is not multiple of minimum block size %u", e->size, e->min_block);
                goto abort;
            }
        } else if (type == NBD_INFO_BLOCK_SIZE) {
            if (len != 12) {
                fail(l, "remaining export info len %u is unexpected size", len);
                goto abort;
            }
            if (rd(l, b, 4, "info minimum block size") < 0)
                goto abort;
            if (!pow2(e->min_block = get_be32p(b))) {
                fail(l, "server minimum block size %u is not a power of two", e->min_block);
                goto abort;
            }
            if (rd(l, b, 4, "info preferred block size") < 0)
                goto abort;
            e->opt_block = get_be32p(b);
            if (!pow2(e->opt_block) || e->opt_block < e->min_block) {
                fail(l, "server preferred block size %u is not valid", e->opt_block);
                goto abort;
            }
            if (rd(l, b, 4, "info maximum block size") < 0)
                goto abort;
            e->max_block = get_be32p(b);
            if (e->max_block < e->min_block) {
                fail(l, "server maximum block size %u is not valid", e->max_block);
                goto abort;
            }
        } else if (drop(l, len) < 0) {
            char why[512];
            snprintf(why, sizeof(why), "%s", l->msg);
            snprintf(l->msg, sizeof(l->msg), "Failed to read info payload: %s", why);
            goto abort;
        }
    }
abort:
    send_abort(l);
    return -1;
}

/* one NBD_OPT_LIST_META_CONTEXT query (none: all contexts) for export NAME */
static int send_meta_query(struct lister *l, const char *name, const char *query)
{
    size_t nl = strlen(name), ql = query ? strlen(query) : 0;
    uint8_t *q = vbd_xmalloc(nl + ql + 12);
    size_t len = 0;
    put_be32p(q, (uint32_t)nl);
    memcpy(q + 4, name, nl);
    put_be32p(q + 4 + nl, query ? 1 : 0);
    len = nl + 8;
    if (query) {
        put_be32p(q + len, (uint32_t)ql);
        memcpy(q + len + 4, query, ql);
        len += 4 + ql;
    }
    int rc = send_opt(l, NBD_OPT_LIST_META_CONTEXT, q, (uint32_t)len);
    free(q);
    return rc;
}

/* one reply to it: 1 a context (added to e), 0 the end (an error reply too), -1 failed */
static int receive_meta_context(struct lister *l, struct listed_export *e)
{
    struct opt_reply r;
    if (recv_reply(l, NBD_OPT_LIST_META_CONTEXT, &r) < 0)
        return -1;
    int rc = reply_error(l, &r, false);
    if (rc <= 0)
        return rc;
    if (r.type == NBD_REP_ACK) {
        if (r.len)
            fail(l, "Unexpected length to ACK response");
        else
            return 0;
    } else if (r.type != NBD_REP_META_CONTEXT) {
        fail(l, "Unexpected reply type %u (%s), expected %u (%s)", r.type, rep_name(r.type), NBD_REP_META_CONTEXT,
             rep_name(NBD_REP_META_CONTEXT));
    } else if (r.len <= 4 || r.len > NBD_MAX_BUFFER) {
        fail(l, "Failed to negotiate meta context, server answered with unexpected length %u", r.len);
    }
    if (l->failed) {
        send_abort(l);
        return -1;
    }
    uint8_t id[4];
    if (rd(l, id, 4, "context id") < 0)
        return -1;
    char *name = vbd_xmalloc(r.len - 4 + 1);
    if (rd(l, name, r.len - 4, "context name") < 0) {
        free(name);
        return -1;
    }
    name[r.len - 4] = 0;
    e->contexts = vbd_xrealloc(e->contexts, (e->ncontexts + 1) * sizeof(*e->contexts));
    e->contexts[e->ncontexts++] = name;
    return 1;
}

/* every context of e; a server that lists no "qemu:" one for the empty
 * query is asked for "qemu:" too (QEMU 3.0's server forgot them) */
static int list_meta_contexts(struct lister *l, struct listed_export *e)
{
    bool seen_any = false, seen_qemu = false;
    if (send_meta_query(l, e->name, NULL) < 0)
        return -1;
    for (;;) {
        size_t before = e->ncontexts;
        int rc = receive_meta_context(l, e);
        if (rc == 0 && seen_any && !seen_qemu) {
            seen_qemu = true;
            if (send_meta_query(l, e->name, "qemu:") < 0)
                return -1;
            continue;
        }
        if (rc <= 0)
            return rc;
        seen_any = true;
        if (!strncmp(e->contexts[before], "qemu:", 5))
            seen_qemu = true;
    }
}

static int oldstyle_export(struct lister *l)
{
    uint8_t b[12];
    if (rd(l, b, 8, "export length") < 0 || rd(l, b + 8, 4, "export flags") < 0)
        return -1;
    uint32_t flags = get_be32p(b + 8);
    if (flags & ~0xffffu)
        return fail(l, "Unexpected export flags %0xx", flags); /* sic: qemu-nbd's format */
    struct listed_export e = {.name = vbd_xstrdup(""), .size = get_be64p(b), .flags = (uint16_t)flags};
    l->ex = vbd_xmalloc(sizeof(*l->ex));
    l->ex[l->nex++] = e;
    /* a courtesy NBD_CMD_DISC once past the reserved zeroes */
    l->failed = true;
    if (drop(l, 124) == 0) {
        uint8_t req[28] = {0};
        put_be32p(req, NBD_REQUEST_MAGIC);
        put_be16p(req + 6, NBD_CMD_DISC);
        vbd_chan_send_full(&l->ch, req, sizeof(req));
    }
    l->failed = false;
    return 0;
}

static int receive_export_list(struct lister *l)
{
    int mode = start_negotiate(l);
    if (mode < 0)
        return -1;
    if (mode == MODE_OLDSTYLE)
        return oldstyle_export(l);
    if (mode == MODE_EXPORT_NAME)
        return fail(l, "Server does not support export lists");
    if (send_opt(l, NBD_OPT_LIST, NULL, 0) < 0)
        return -1;
    int rc;
    while ((rc = receive_list(l)) > 0)
        ;
    if (rc < 0)
        return -1;
    for (size_t i = 0; i < l->nex; i++) {
        rc = export_info(l, &l->ex[i]);
        if (rc < 0)
            return -1;
        if (rc == 0)
            break; /* no NBD_OPT_INFO: the rest would fail alike */
        if (mode == MODE_STRUCTURED && list_meta_contexts(l, &l->ex[i]) < 0)
            return -1;
    }
    send_abort(l);
    return 0;
}

static void print_exports(const struct lister *l)
{
    static const char *const flag_names[] = {NULL,      "readonly", "flush", "fua",   "rotational", "trim",
                                             "zeroes",  "df",       "multi", "resize", "cache",     "fast-zero"};
    printf("exports available: %zu\n", l->nex);
    for (size_t i = 0; i < l->nex; i++) {
        const struct listed_export *e = &l->ex[i];
        printf(" export: '%s'\n", e->name);
        if (e->description && *e->description)
            printf("  description: %s\n", e->description);
        if (e->flags & NBD_FLAG_HAS_FLAGS) {
            printf("  size:  %" PRIu64 "\n", e->size);
            printf("  flags: 0x%x (", e->flags);
            for (size_t bit = 0; bit < sizeof(flag_names) / sizeof(flag_names[0]); bit++)
                if (flag_names[bit] && (e->flags & (1u << bit)))
                    printf(" %s", flag_names[bit]);
            printf(" )\n");
        }
        if (e->min_block) {
            printf("  min block: %u\n", e->min_block);
            printf("  opt block: %u\n", e->opt_block);
            printf("  max block: %u\n", e->max_block);
        }
        if (e->ncontexts) {
            printf("  available meta contexts: %zu\n", e->ncontexts);
            for (size_t j = 0; j < e->ncontexts; j++)
                printf("   %s\n", e->contexts[j]);
        }
    }
}

static void list_co(void *arg)
{
    struct lister *l = arg;
    l->rc = 1;
    if (connect_server(l) == 0 && receive_export_list(l) == 0) {
        print_exports(l);
        l->rc = 0;
    }
    if (l->ch.tls)
        vbd_tls_bye(l->ch.tls);
    vbd_tls_free(l->ch.tls);
    if (l->ch.fd >= 0) {
        shutdown(l->ch.fd, SHUT_RDWR);
        close(l->ch.fd);
    }
}

int nbd_list_exports(const struct nbd_list_args *a)
{
    struct lister l = {.a = a, .ch = {.fd = -1}};
    vbd_co_run_sync(list_co, &l);
    if (l.rc) {
        vbd_error_report("%s", l.msg);
        fputs(l.hint, stderr);
    }
    for (size_t i = 0; i < l.nex; i++) {
        free(l.ex[i].name);
        free(l.ex[i].description);
        for (size_t j = 0; j < l.ex[i].ncontexts; j++)
            free(l.ex[i].contexts[j]);
        free(l.ex[i].contexts);
    }
    free(l.ex);
    fflush(stdout);
    return l.rc;
}
