/* SPDX-License-Identifier: MIT */
/*
 * Coroutine TLS sessions (GnuTLS), as QEMU's crypto/tlssession.c.
 *
 * GnuTLS runs in non-blocking mode on the socket itself (no transport
 * callbacks): when a call returns GNUTLS_E_AGAIN the coroutine waits with
 * vbd_co_poll for the direction gnutls_record_get_direction() names, then
 * repeats the same call, as GnuTLS requires. Nothing is read ahead of what
 * GnuTLS asks for, so a STARTTLS upgrade never loses plaintext bytes.
 */
#include "tls-internal.h"

#include "vbd/alloc.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/loop.h"

#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/x509.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* The largest record payload: what one gnutls_record_send puts on the wire. */
#define TLS_STAGE 16384
/* Read-ahead: one recv brings several records (GnuTLS alone reads each
 * record's header and body separately: two syscalls per 16 KiB). */
#define TLS_INBUF (128 * 1024)
/* The records of one send call leave in one or a few sends. */
#define TLS_OUTBUF (256 * 1024)
#define TLS_HANDSHAKE_NS (30ull * 1000000000)

struct vbd_tls {
    gnutls_session_t session;
    int fd;
    bool server, failed;
    atomic_bool rd_shut; /* vbd_chan_shutdown(SHUT_RD): receive no more (set from the main loop
                          * while an NBD connection reads on an iothread) */
    bool nowait;     /* bye / try_send: the transport never waits */
    bool corked;     /* inside a send call: encrypted records gather in out[] */
    bool timed_out;  /* the handshake timer fired */
    /* vbd_tls_recv_idle: the receiving coroutine's waits for input are
     * this cancellable one (another coroutine's, a sender's, are not) ... */
    struct vbd_poll_wait *idle;
    struct vbd_co *idle_co;
    bool cancelled; /* ... and one was cancelled */
    char error[160]; /* why the session failed after the handshake ("" if it did not) */
    struct vbd_tls_creds *creds;
    char *hostname;
    size_t in_pos, in_len, out_len;
    uint8_t *in, *out;
    struct vbd_timer timer;
    uint8_t stage[TLS_STAGE]; /* small pieces of a sendv gathered into one record */
};

/* ------------------------------------------------------------------ */
/* transport: GnuTLS reads and writes through these                    */

/* These wait by yielding the coroutine, so GnuTLS sees a blocking socket
 * and never has to be called again with the same arguments. Exceptions:
 * t->nowait (never wait: EAGAIN), and t->rd_shut, which makes a receive
 * give up with EAGAIN so that the session stays able to send. */

static ssize_t sock_send(struct vbd_tls *t, const void *buf, size_t len)
{
    for (;;) {
        ssize_t r = send(t->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r >= 0)
            return r;
        if (errno == EINTR)
            continue;
        if ((errno != EAGAIN && errno != EWOULDBLOCK) || t->nowait || !vbd_in_co())
            return -1;
        int p = vbd_co_poll(t->fd, POLLOUT);
        if (p < 0) {
            errno = -p;
            return -1;
        }
    }
}

/* 0, or -1 with errno (the stream is then lost). */
static int flush_out(struct vbd_tls *t)
{
    size_t done = 0;
    while (done < t->out_len) {
        ssize_t r = sock_send(t, t->out + done, t->out_len - done);
        if (r < 0) {
            t->out_len = 0;
            return -1;
        }
        done += (size_t)r;
    }
    t->out_len = 0;
    return 0;
}

static ssize_t tls_push(gnutls_transport_ptr_t p, const void *buf, size_t len)
{
    struct vbd_tls *t = p;
    if (t->corked && len <= TLS_OUTBUF) {
        if (t->out_len + len > TLS_OUTBUF && flush_out(t) < 0) {
            tlslib.gnutls_transport_set_errno(t->session, errno);
            return -1;
        }
        memcpy(t->out + t->out_len, buf, len);
        t->out_len += len;
        return (ssize_t)len;
    }
    if (t->out_len && flush_out(t) < 0) { /* keep the order */
        tlslib.gnutls_transport_set_errno(t->session, errno);
        return -1;
    }
    ssize_t r = sock_send(t, buf, len);
    if (r < 0)
        tlslib.gnutls_transport_set_errno(t->session, errno);
    return r;
}

/* The cancellable wait of vbd_tls_recv_idle, for its own coroutine only. */
static struct vbd_poll_wait *idle_wait(struct vbd_tls *t)
{
    return t->idle && t->idle_co == vbd_co_self() ? t->idle : NULL;
}

static ssize_t tls_pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
    struct vbd_tls *t = p;
    for (;;) {
        if (t->in_pos < t->in_len) {
            size_t n = t->in_len - t->in_pos < len ? t->in_len - t->in_pos : len;
            memcpy(buf, t->in + t->in_pos, n);
            t->in_pos += n;
            return (ssize_t)n;
        }
        if (t->rd_shut) {
            tlslib.gnutls_transport_set_errno(t->session, EAGAIN);
            return -1;
        }
        ssize_t r = len >= TLS_INBUF ? recv(t->fd, buf, len, MSG_DONTWAIT)
                                     : recv(t->fd, t->in, TLS_INBUF, MSG_DONTWAIT);
        if (r > 0 && len >= TLS_INBUF)
            return r;
        if (r > 0) {
            t->in_pos = 0;
            t->in_len = (size_t)r;
            continue;
        }
        if (r == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if ((errno == EAGAIN || errno == EWOULDBLOCK) && !t->nowait && vbd_in_co()) {
            struct vbd_poll_wait *w = idle_wait(t);
            int pr = w ? vbd_co_poll_wait(w, t->fd, POLLIN) : vbd_co_poll(t->fd, POLLIN);
            if (pr == -ECANCELED) {
                /* GnuTLS keeps what it read of a record and asks again next time */
                t->cancelled = true;
                tlslib.gnutls_transport_set_errno(t->session, EAGAIN);
                return -1;
            }
            if (pr < 0) {
                tlslib.gnutls_transport_set_errno(t->session, -pr);
                return -1;
            }
            continue;
        }
        tlslib.gnutls_transport_set_errno(t->session, errno);
        return -1;
    }
}

/* GnuTLS asks whether data is there (ms = 0) or to wait for it. */
static int tls_pull_timeout(gnutls_transport_ptr_t p, unsigned ms)
{
    struct vbd_tls *t = p;
    if (t->in_pos < t->in_len || t->rd_shut)
        return 1;
    struct pollfd pfd = {.fd = t->fd, .events = POLLIN};
    if (!ms || t->nowait || !vbd_in_co())
        return poll(&pfd, 1, 0);
    return vbd_co_poll(t->fd, POLLIN) < 0 ? -1 : 1; /* our own timer bounds the handshake */
}

/* ------------------------------------------------------------------ */
/* sessions                                                            */

struct vbd_tls *vbd_tls_new(struct vbd_tls_creds *c, int fd, const char *hostname, struct vbd_error **err)
{
    struct vbd_tls *t = vbd_xcalloc(1, sizeof(*t));
    t->fd = fd;
    t->server = c->endpoint == VBD_TLS_SERVER;
    t->in = vbd_xmalloc(TLS_INBUF);
    t->out = vbd_xmalloc(TLS_OUTBUF);
    const char *errpos = NULL;
    int g = tlslib.gnutls_init(&t->session,
                        (t->server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL);
    if (g < 0) {
        vbd_error_setf(err, ENOMEM, "TLS: cannot create a session: %s", tlslib.gnutls_strerror(g));
        free(t->in);
        free(t->out);
        free(t);
        return NULL;
    }
    t->creds = c;
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
    if ((g = tlslib.gnutls_priority_set_direct(t->session, c->priority, &errpos)) < 0)
        goto fail;
    switch (c->kind) {
    case CREDS_X509:
        g = tlslib.gnutls_credentials_set(t->session, GNUTLS_CRD_CERTIFICATE, c->x509);
        if (g >= 0 && t->server && c->verify_peer)
            tlslib.gnutls_certificate_server_set_request(t->session, GNUTLS_CERT_REQUIRE);
        break;
    case CREDS_PSK:
        g = tlslib.gnutls_credentials_set(t->session, GNUTLS_CRD_PSK,
                                   t->server ? (void *)c->psk_server : (void *)c->psk_client);
        break;
    case CREDS_ANON:
        g = tlslib.gnutls_credentials_set(t->session, GNUTLS_CRD_ANON,
                                   t->server ? (void *)c->anon_server : (void *)c->anon_client);
        break;
    }
    if (g < 0)
        goto fail;
    if (!t->server && hostname && *hostname) {
        t->hostname = vbd_xstrdup(hostname);
        unsigned char addr[16];
        /* SNI carries DNS names only (RFC 6066) */
        if (!inet_pton(AF_INET, hostname, addr) && !inet_pton(AF_INET6, hostname, addr) &&
            (g = tlslib.gnutls_server_name_set(t->session, GNUTLS_NAME_DNS, hostname, strlen(hostname))) < 0)
            goto fail;
    }
    if (c->verify_peer)
        tlslib.gnutls_session_set_verify_cert(t->session, t->server ? NULL : t->hostname, 0);
    tlslib.gnutls_transport_set_ptr(t->session, t);
    tlslib.gnutls_transport_set_push_function(t->session, tls_push);
    tlslib.gnutls_transport_set_pull_function(t->session, tls_pull);
    tlslib.gnutls_transport_set_pull_timeout_function(t->session, tls_pull_timeout);
    tlslib.gnutls_handshake_set_timeout(t->session, 0); /* ours: t->timer */
    return t;
fail:
    vbd_error_setf(err, EINVAL, "TLS: cannot set up a session with %s: %s", c->what, tlslib.gnutls_strerror(g));
    vbd_tls_free(t);
    return NULL;
}

void vbd_tls_free(struct vbd_tls *t)
{
    if (!t)
        return;
    tlslib.gnutls_deinit(t->session);
    vbd_tls_creds_unref(t->creds);
    free(t->hostname);
    free(t->in);
    free(t->out);
    free(t);
}

/* Wait for what the interrupted GnuTLS call needs. */
static int tls_wait(struct vbd_tls *t)
{
    bool out = tlslib.gnutls_record_get_direction(t->session);
    struct vbd_poll_wait *w = out ? NULL : idle_wait(t);
    int p = w ? vbd_co_poll_wait(w, t->fd, POLLIN) : vbd_co_poll(t->fd, out ? POLLOUT : POLLIN);
    return p < 0 ? p : 0;
}

static void handshake_timeout(void *arg)
{
    struct vbd_tls *t = arg;
    t->timed_out = true;
    shutdown(t->fd, SHUT_RDWR); /* the waiting transport call returns */
}

static int handshake(struct vbd_tls *t, struct vbd_error **err);

int vbd_tls_handshake(struct vbd_tls *t, struct vbd_error **err)
{
    t->timer.fn = handshake_timeout;
    t->timer.arg = t;
    vbd_timer_arm(&t->timer, vbd_clock_ns() + TLS_HANDSHAKE_NS);
    int rc = handshake(t, err);
    vbd_timer_cancel(&t->timer);
    if (rc < 0 && t->timed_out) {
        if (err && *err) {
            vbd_error_free(*err);
            *err = NULL;
        }
        vbd_error_setf(err, ETIMEDOUT, "TLS handshake timed out after %llu s",
                       (unsigned long long)(TLS_HANDSHAKE_NS / 1000000000));
        rc = -ETIMEDOUT;
    }
    return rc;
}

static int handshake(struct vbd_tls *t, struct vbd_error **err)
{
    const char *peer = t->server ? "client" : "server";
    for (;;) {
        int g = tlslib.gnutls_handshake(t->session);
        if (g == 0)
            break;
        if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED) {
            int p = tls_wait(t);
            if (p < 0) {
                vbd_error_setf(err, -p, "TLS handshake: %s", strerror(-p));
                t->failed = true;
                return p;
            }
            continue;
        }
        if (!tlslib.gnutls_error_is_fatal(g))
            continue; /* a warning alert */
        t->failed = true;
        /* tell the peer why (GnuTLS does not on its own); one try, no waiting */
        if (g != GNUTLS_E_FATAL_ALERT_RECEIVED && g != GNUTLS_E_PREMATURE_TERMINATION &&
            g != GNUTLS_E_PULL_ERROR && g != GNUTLS_E_PUSH_ERROR) {
            t->nowait = true;
            tlslib.gnutls_alert_send_appropriate(t->session, g);
            t->nowait = false;
        }
        if (g == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
            gnutls_datum_t out = {NULL, 0};
            unsigned st = tlslib.gnutls_session_get_verify_cert_status(t->session);
            tlslib.gnutls_certificate_verification_status_print(st, GNUTLS_CRT_X509, &out, 0);
            for (size_t n = out.data ? strlen((char *)out.data) : 0; n && out.data[n - 1] == ' '; n--)
                out.data[n - 1] = 0;
            vbd_error_setf(err, EACCES, "TLS handshake failed: the %s's certificate is not accepted: %s",
                           peer, out.data ? (char *)out.data : "verification failed");
            tlslib.free(out.data);
            return -EACCES;
        }
        const char *psk_hint = t->creds->kind != CREDS_PSK ? ""
                               : t->server ? " (the client's PSK username or key is not in keys.psk)"
                                           : " (the server does not know this PSK username or key)";
        if (g == GNUTLS_E_FATAL_ALERT_RECEIVED) {
            const char *a = tlslib.gnutls_alert_get_name(tlslib.gnutls_alert_get(t->session));
            vbd_error_setf(err, EACCES, "TLS handshake failed: the %s refused it (alert: %s)%s", peer,
                           a ? a : "?", psk_hint);
            return -EACCES;
        }
        if (g == GNUTLS_E_PREMATURE_TERMINATION || g == GNUTLS_E_PULL_ERROR || g == GNUTLS_E_PUSH_ERROR) {
            vbd_error_setf(err, ECONNRESET, "TLS handshake failed: the %s closed the connection%s", peer,
                           t->creds->kind == CREDS_PSK ? psk_hint
                           : t->server && t->creds->kind == CREDS_X509
                               ? " (it may not trust this server's certificate)"
                               : "");
            return -ECONNRESET;
        }
        vbd_error_setf(err, EPROTO, "TLS handshake failed: %s%s", tlslib.gnutls_strerror(g),
                       g == GNUTLS_E_RECEIVED_ILLEGAL_PARAMETER || g == GNUTLS_E_DECRYPTION_FAILED ? psk_hint
                                                                                                   : "");
        return -EPROTO;
    }
    if (vbd_log_get_level() >= VBD_LOG_DEBUG) {
        char d[128];
        vbd_debug("TLS session with the %s: %s", peer, vbd_tls_describe(t, d, sizeof(d)));
    }
    return 0;
}

const char *vbd_tls_describe(struct vbd_tls *t, char *buf, size_t len)
{
    char *d = tlslib.gnutls_session_get_desc(t->session);
    const char *kx = tlslib.gnutls_kx_get_name(tlslib.gnutls_kx_get(t->session));
    snprintf(buf, len, "%s, key exchange %s", d ? d : "?", kx ? kx : "?");
    tlslib.free(d);
    return buf;
}

char *vbd_tls_peer_dn(struct vbd_tls *t, struct vbd_error **err)
{
    unsigned n = 0;
    const gnutls_datum_t *certs = tlslib.gnutls_certificate_type_get(t->session) == GNUTLS_CRT_X509
                                      ? tlslib.gnutls_certificate_get_peers(t->session, &n)
                                      : NULL;
    if (!certs || !n) {
        vbd_error_setf(err, EACCES, "the %s sent no certificate", t->server ? "client" : "server");
        return NULL;
    }
    gnutls_x509_crt_t crt;
    char *dn = NULL;
    size_t len = 0;
    int g = tlslib.gnutls_x509_crt_init(&crt);
    if (g < 0) {
        vbd_error_setf(err, ENOMEM, "cannot read the peer's certificate: %s", tlslib.gnutls_strerror(g));
        return NULL;
    }
    /* the first certificate is the peer's own; the DN as QEMU's authz sees it */
    if ((g = tlslib.gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER)) >= 0 &&
        (g = tlslib.gnutls_x509_crt_get_dn(crt, NULL, &len)) == GNUTLS_E_SHORT_MEMORY_BUFFER) {
        len++;
        dn = vbd_xmalloc(len);
        g = tlslib.gnutls_x509_crt_get_dn(crt, dn, &len);
    }
    tlslib.gnutls_x509_crt_deinit(crt);
    if (g < 0 || !dn) {
        vbd_error_setf(err, EACCES, "cannot read the distinguished name of the peer's certificate: %s",
                       tlslib.gnutls_strerror(g < 0 ? g : GNUTLS_E_INTERNAL_ERROR));
        free(dn);
        return NULL;
    }
    return dn;
}

void vbd_tls_deny(struct vbd_tls *t)
{
    if (t->failed)
        return;
    t->nowait = true; /* one try: the connection is dropped next anyway */
    tlslib.gnutls_alert_send(t->session, GNUTLS_AL_FATAL, GNUTLS_A_ACCESS_DENIED);
    t->nowait = false;
    t->failed = true;
}

void vbd_tls_bye(struct vbd_tls *t)
{
    if (!t || t->failed)
        return;
    t->nowait = true; /* one try */
    tlslib.gnutls_bye(t->session, GNUTLS_SHUT_WR);
    t->nowait = false;
}

int vbd_tls_try_send(struct vbd_tls *t, const void *buf, size_t len)
{
    if (t->failed)
        return -EIO;
    t->nowait = true;
    ssize_t r = tlslib.gnutls_record_send(t->session, buf, len);
    t->nowait = false;
    if (r != (ssize_t)len)
        t->failed = true; /* maybe half a record out: nothing more can follow */
    return r == (ssize_t)len ? 0 : -EAGAIN;
}

/* A fatal GnuTLS error as -errno (the session is then unusable). */
static int tls_error(struct vbd_tls *t, ssize_t g, const char *op)
{
    t->failed = true;
    if (g == GNUTLS_E_PREMATURE_TERMINATION || g == GNUTLS_E_PULL_ERROR || g == GNUTLS_E_PUSH_ERROR ||
        g == GNUTLS_E_SESSION_EOF)
        return -ECONNRESET;
    if (g == GNUTLS_E_FATAL_ALERT_RECEIVED) {
        /* TLS 1.3: a server that refuses the client's certificate says so after the handshake */
        const char *a = tlslib.gnutls_alert_get_name(tlslib.gnutls_alert_get(t->session));
        snprintf(t->error, sizeof(t->error), "the %s ended the TLS session (alert: %s)",
                 t->server ? "client" : "server", a ? a : "?");
    } else {
        snprintf(t->error, sizeof(t->error), "TLS %s failed: %s", op, tlslib.gnutls_strerror((int)g));
    }
    vbd_debug("%s", t->error);
    return -EIO;
}

const char *vbd_tls_error(const struct vbd_tls *t)
{
    return t && t->error[0] ? t->error : NULL;
}

ssize_t vbd_tls_recv(struct vbd_tls *t, void *buf, size_t len)
{
    for (;;) {
        if (t->rd_shut)
            return -ECONNRESET;
        if (t->failed)
            return -EIO;
        ssize_t g = tlslib.gnutls_record_recv(t->session, buf, len);
        if (g > 0)
            return g;
        if (g == 0)
            return -ECONNRESET; /* close_notify */
        if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED) {
            if (t->rd_shut)
                return -ECONNRESET;
            if (t->cancelled) {
                t->cancelled = false;
                return -ECANCELED;
            }
            int p = tls_wait(t);
            if (p < 0)
                return p;
            continue;
        }
        if (!tlslib.gnutls_error_is_fatal((int)g))
            continue; /* warning alert, renegotiation request (refused) */
        return tls_error(t, g, "receive");
    }
}

ssize_t vbd_tls_recv_idle(struct vbd_tls *t, void *buf, size_t len, struct vbd_poll_wait *w)
{
    t->idle = w;
    t->idle_co = vbd_co_self();
    ssize_t r = vbd_tls_recv(t, buf, len);
    t->idle = NULL;
    t->idle_co = NULL;
    t->cancelled = false;
    return r;
}

/* Sends buf whole (possibly several records); corked by the caller. */
static int tls_send_all(struct vbd_tls *t, const uint8_t *buf, size_t len)
{
    while (len) {
        if (t->failed)
            return -EIO;
        ssize_t g = tlslib.gnutls_record_send(t->session, buf, len);
        if (g > 0) {
            buf += g;
            len -= (size_t)g;
            continue;
        }
        if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED) {
            /* the same call is repeated after the wait, as GnuTLS requires */
            int p = tls_wait(t);
            if (p < 0) {
                t->failed = true; /* a record is half out: the stream is lost */
                return p;
            }
            continue;
        }
        if (g == 0 || !tlslib.gnutls_error_is_fatal((int)g))
            continue;
        return tls_error(t, g, "send");
    }
    return 0;
}

static int tls_sendv_records(struct vbd_tls *t, const struct iovec *iov, int iovcnt);

/* Everything in iov, as records gathered in t->out and sent together. */
int vbd_tls_sendv(struct vbd_tls *t, const struct iovec *iov, int iovcnt)
{
    t->corked = true;
    int rc = tls_sendv_records(t, iov, iovcnt);
    t->corked = false;
    if (rc == 0 && t->out_len && flush_out(t) < 0) {
        rc = errno == EPIPE ? -EPIPE : -ECONNRESET;
        t->failed = true;
    }
    t->out_len = 0;
    return rc;
}

/* Small pieces (headers) are gathered with the start of what follows into
 * one record; large buffers are encrypted from where they are. */
static int tls_sendv_records(struct vbd_tls *t, const struct iovec *iov, int iovcnt)
{
    size_t fill = 0;
    int rc;
    for (int i = 0; i < iovcnt; i++) {
        const uint8_t *p = iov[i].iov_base;
        size_t left = iov[i].iov_len;
        while (left) {
            if (!fill && left >= TLS_STAGE) {
                size_t n = left - left % TLS_STAGE; /* whole records; the tail may join the next piece */
                if ((rc = tls_send_all(t, p, n)) < 0)
                    return rc;
                p += n;
                left -= n;
                continue;
            }
            size_t n = TLS_STAGE - fill < left ? TLS_STAGE - fill : left;
            memcpy(t->stage + fill, p, n);
            fill += n;
            p += n;
            left -= n;
            if (fill == TLS_STAGE) {
                if ((rc = tls_send_all(t, t->stage, fill)) < 0)
                    return rc;
                fill = 0;
            }
        }
    }
    return fill ? tls_send_all(t, t->stage, fill) : 0;
}

void vbd_tls_shut_rd(struct vbd_tls *t)
{
    t->rd_shut = true;
}
