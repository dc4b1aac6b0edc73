/* SPDX-License-Identifier: MIT */
/*
 * NBD server: listens (unix or inet), accepts, and runs each connection
 * through the handshake and transmission; starts and stops the server.
 */
#include "internal.h"
#include "util/socket.h"

#include "vbd/authz.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/nbd.h"
#include "vbd/options.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct nbd_server srv;

static bool local_zero_copy(void)
{
    const char *v = getenv("VBD_NBD_LOCAL_ZERO_COPY");
    return v && strcmp(v, "1") == 0;
}

/* Whether the TCP client of connected socket fd (whose own address is
 * local) runs on this host: its address is a loopback one or the socket's
 * own (a connection to one of the host's addresses). */
static bool tcp_peer_on_this_host(int fd, const struct sockaddr_storage *local)
{
    struct sockaddr_storage peer;
    socklen_t len = sizeof(peer);
    if (getpeername(fd, (struct sockaddr *)&peer, &len) < 0 || peer.ss_family != local->ss_family)
        return false;
    if (peer.ss_family == AF_INET) {
        struct in_addr p = ((const struct sockaddr_in *)&peer)->sin_addr, l = ((const struct sockaddr_in *)local)->sin_addr;
        return (ntohl(p.s_addr) >> 24) == 127 || p.s_addr == l.s_addr;
    }
    if (peer.ss_family == AF_INET6) {
        const struct in6_addr *p = &((const struct sockaddr_in6 *)&peer)->sin6_addr, *l = &((const struct sockaddr_in6 *)local)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(p) || (IN6_IS_ADDR_V4MAPPED(p) && p->s6_addr[12] == 127) || IN6_ARE_ADDR_EQUAL(p, l);
    }
    return false;
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
    int rc = nbd_handshake(c);
    vbd_timer_cancel(&c->handshake_timer);
    bool negotiated = rc == 0 && c->exp;
    if (negotiated && !srv.stopping)
        nbd_transmission(c);
    if (c->ch.tls) {
        vbd_tls_bye(c->ch.tls);
        vbd_tls_free(c->ch.tls);
    }
    close(c->ch.fd);
    if (c->zc_pipe_size) {
        close(c->zc_pipe[0]);
        close(c->zc_pipe[1]);
    }
    for (struct nbd_conn **pp = &srv.conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    nbd_meta_reset(c);
    free(c);
    srv.nconns--;
    if (negotiated && !srv.nconns)
        srv.last_client_gone++;
    vbd_co_queue_wake_all(&srv.idle_q);
}

bool vbd_nbd_server_wait_last_client(void)
{
    uint64_t seen = srv.last_client_gone;
    while (srv.running && !srv.stopping && srv.last_client_gone == seen)
        vbd_co_queue_wait(&srv.idle_q);
    return srv.last_client_gone != seen;
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
    int listen_fd = (int)(intptr_t)opaque;
    while (!srv.stopping) {
        /* At max-connections nothing is accepted (QEMU's): the next client
         * waits in the listen backlog until a connection ends, instead of
         * being refused */
        while (srv.max_connections && (uint32_t)srv.nconns >= srv.max_connections && !srv.stopping)
            vbd_co_queue_wait(&srv.idle_q);
        if (srv.stopping)
            break;
        int fd = vbd_co_accept(listen_fd, NULL, NULL);
        if (fd < 0) {
            if (srv.stopping)
                break;
            if (vbd_co_accept_backoff(&srv.accept_lacking, fd, "nbd"))
                continue;
            if (fd == -EINVAL || fd == -EBADF || fd == -ESHUTDOWN)
                break;
            continue;
        }
        vbd_co_accept_backoff(&srv.accept_lacking, fd, "nbd");
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
        bool named = getsockname(fd, (struct sockaddr *)&sa, &salen) == 0;
        /* Zero-copy reads (send_read_zero_copy) over unix sockets and for
         * TCP clients on other hosts. A TCP client on this host (loopback)
         * receives the page-cache pages themselves and copies out of them on
         * its own CPU, at about twice the cost of copying our fresh socket
         * buffers: fio 1M reads at QD8 paid 850-1080 us per request against
         * the zero-copy replies, 330-370 us against copied ones, and ran
         * 1.3-1.8x faster; nbdcopy and vbd-bench level (bench/RESULTS.md,
         * nbd24). Over unix the same held for fio (+57 %) but vbd-bench lost
         * half its IOPS: left zero-copy there. A remote client copies from
         * its NIC's buffers either way: the server's saved copy is pure gain.
         * VBD_NBD_LOCAL_ZERO_COPY=1 gives loopback TCP clients the zero-copy
         * path too (tests reach it so). */
        bool inet = named && (sa.ss_family == AF_INET || sa.ss_family == AF_INET6);
        c->zero_copy_ok = (named && sa.ss_family == AF_UNIX) || (inet && (!tcp_peer_on_this_host(fd, &sa) || local_zero_copy()));
        if (named && sa.ss_family == AF_UNIX) {
            /* A unix socket's send buffer (212 KiB by default) takes a
             * fifth of a 1 MiB read: sendfile then goes out in pieces, each
             * waiting for the client to drain the buffer to a quarter. With
             * room for a few whole replies, 1M reads at QD8 cost 65 us of
             * server CPU instead of 205 and ran 1.6-3x faster. The kernel
             * caps it at net.core.wmem_max (x2). TCP tunes its own. */
            int sb = NBD_UNIX_SNDBUF;
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sb, sizeof(sb));
        }
        c->next = srv.conns;
        srv.conns = c;
        srv.nconns++;
        vbd_co_wake(vbd_co_create(conn_co, c));
    }
    srv.accepting--;
    vbd_co_queue_wake_all(&srv.idle_q);
}

/* QEMU's inet_ai_family_from_address: the address families ipv4= and
 * ipv6= ask for (absent: either). */
static int inet_family(int ipv4, int ipv6, const char *host, struct vbd_error **err)
{
    if (ipv4 == 0 && ipv6 == 0) {
        vbd_error_setf(err, EINVAL, "Cannot disable IPv4 and IPv6 at same time");
        return -1;
    }
    if (ipv4 == 1 && ipv6 == 1) /* one dual-stack socket for the wildcard */
        return !host || !host[0] ? AF_INET6 : AF_UNSPEC;
    if (ipv6 == 1 || ipv4 == 0)
        return AF_INET6;
    if (ipv4 == 1 || ipv6 == 0)
        return AF_INET;
    return AF_UNSPEC;
}

/* QEMU's try_bind: an IPv6 socket takes IPv4 too (IPV6_V6ONLY off) when
 * neither family or both were asked for; if the IPv4 port is taken (the
 * wildcard's other socket), IPv6 alone. */
static int bind_inet(int fd, const struct addrinfo *e, int ipv4, int ipv6)
{
    int v6only = (ipv4 < 0 && ipv6 < 0) || (ipv4 == 1 && ipv6 == 1) ? 0 : 1;
    for (;;) {
        if (e->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
        if (bind(fd, e->ai_addr, e->ai_addrlen) == 0)
            return 0;
        if (e->ai_family != AF_INET6 || errno != EADDRINUSE || v6only)
            return -1;
        v6only = 1;
    }
}

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

/* One address of the host: a socket listening on the first free port of
 * port..to (QEMU's inet_listen_saddr), or -1 with *why set. */
static int listen_inet_one(struct addrinfo *e, int port, int to, int ipv4, int ipv6, bool mptcp, const char **why,
                           int *why_errno)
{
    bool created = false;
    *why_errno = 0;
    for (int p = port; p <= to; p++) {
        if (e->ai_family == AF_INET)
            ((struct sockaddr_in *)e->ai_addr)->sin_port = htons((uint16_t)p);
        else
            ((struct sockaddr_in6 *)e->ai_addr)->sin6_port = htons((uint16_t)p);
        int fd = socket(e->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, mptcp ? IPPROTO_MPTCP : 0);
        if (fd < 0) {
            if (p == port) { /* this family may not be there at all (no IPv6) */
                *why_errno = errno;
                break;
            }
            *why = "Failed to recreate failed listening socket";
            *why_errno = errno;
            return -1;
        }
        created = true;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind_inet(fd, e, ipv4, ipv6) < 0) {
            *why_errno = errno;
            if (errno != EADDRINUSE) {
                *why = "Failed to bind socket";
                close(fd);
                return -1;
            }
        } else if (listen(fd, 128) == 0) {
            return fd;
        } else {
            *why_errno = errno;
            if (errno != EADDRINUSE) {
                *why = "Failed to listen on socket";
                close(fd);
                return -1;
            }
        }
        close(fd); /* the port is taken: the next one, on a new socket */
    }
    *why = created ? "Failed to find an available port" : "Failed to create a socket";
    return -1;
}

/* inet: a socket on every address the host resolves to (QEMU's
 * qio_net_listener_open_sync; one that listens is enough, else the first
 * error). ipv4/ipv6/numeric/to/mptcp as QEMU 7.2's; keep-alive is taken
 * and, as in qsd 7.2, not applied to the server's sockets (QAPI: "not
 * supported for passive sockets"). */
static int listen_inet(struct json_object *opts, const char *host, const char *port_str, struct vbd_error **err)
{
    bool b;
    int ipv4 = -1, ipv6 = -1, rc;
    bool numeric = false, mptcp = false;
    uint64_t to = 0;
    bool has_to = false;
    if ((rc = vbd_opt_take_bool(opts, "addr.ipv4", &b, err)) < 0)
        return -1;
    if (rc > 0)
        ipv4 = b;
    if ((rc = vbd_opt_take_bool(opts, "addr.ipv6", &b, err)) < 0)
        return -1;
    if (rc > 0)
        ipv6 = b;
    if (vbd_opt_take_bool(opts, "addr.numeric", &numeric, err) < 0 || vbd_opt_take_bool(opts, "addr.keep-alive", &b, err) < 0 ||
        vbd_opt_take_bool(opts, "addr.mptcp", &mptcp, err) < 0 || (rc = vbd_opt_take_u64(opts, "addr.to", &to, err)) < 0)
        return -1;
    has_to = rc > 0;
    int family = inet_family(ipv4, ipv6, host, err);
    if (family < 0)
        return -1;
    struct addrinfo hints = {.ai_family = family, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res;
    if (numeric)
        hints.ai_flags |= AI_NUMERICHOST | AI_NUMERICSERV;
    int gai = getaddrinfo(host[0] ? host : NULL, port_str[0] ? port_str : NULL, &hints, &res);
    if (gai) {
        vbd_error_setf(err, EINVAL, "address resolution failed for %s:%s: %s", host, port_str,
                       gai_strerror(gai)); /* QEMU's words */
        return -1;
    }
    const char *why = NULL;
    int why_errno = 0;
    for (struct addrinfo *e = res; e && srv.nlisten < NBD_MAX_LISTENERS; e = e->ai_next) {
        if (e->ai_family != AF_INET && e->ai_family != AF_INET6)
            continue;
        int port = ntohs(e->ai_family == AF_INET ? ((struct sockaddr_in *)e->ai_addr)->sin_port
                                                 : ((struct sockaddr_in6 *)e->ai_addr)->sin6_port);
        int last = has_to ? (int)(to > 65535 ? 65535 : to) : port;
        const char *w = NULL;
        int we = 0;
        int fd = listen_inet_one(e, port, last, ipv4, ipv6, mptcp, &w, &we);
        if (fd >= 0) {
            srv.listen_fds[srv.nlisten++] = fd;
        } else if (!why) {
            why = w;
            why_errno = we;
        }
    }
    freeaddrinfo(res);
    if (srv.nlisten)
        return 0;
    if (!why)
        why = "Failed to create a socket";
    if (why_errno)
        vbd_error_setf(err, why_errno, "%s: %s", why, strerror(why_errno));
    else
        vbd_error_setf(err, EINVAL, "%s", why);
    return -1;
}

/* The listening sockets in srv.listen_fds, or -1 with *err set. */
static int listen_on(struct json_object *opts, struct vbd_error **err)
{
    char *type = NULL, *path = NULL, *host = NULL, *port = NULL;
    int rc = -1;
    if (vbd_opt_take_str(opts, "addr.type", &type, err) < 0 || vbd_opt_take_str(opts, "addr.path", &path, err) < 0 ||
        vbd_opt_take_str(opts, "addr.host", &host, err) < 0 || vbd_opt_take_str(opts, "addr.port", &port, err) < 0)
        goto out;
    if (!type || !strcmp(type, "unix")) {
        if (!path) {
            vbd_error_setf(err, EINVAL, "Parameter 'addr.path' is missing"); /* qsd's words */
            goto out;
        }
        int fd = vbd_unix_listen(path, 128);
        if (fd == -ENAMETOOLONG) {
            vbd_error_setf(err, ENAMETOOLONG, "NBD server: socket path '%s' is too long", path);
            goto out;
        }
        if (fd < 0) {
            vbd_error_setf(err, -fd, "Failed to bind socket to %s: %s", path, strerror(-fd)); /* qsd's words */
            goto out;
        }
        srv.listen_fds[srv.nlisten++] = fd;
        srv.unix_path = path;
        path = NULL;
        rc = 0;
    } else if (!strcmp(type, "inet")) {
        rc = listen_inet(opts, host ? host : "0.0.0.0", port ? port : "10809", err);
    } else {
        vbd_error_setf(err, EINVAL, "NBD server: addr.type must be 'unix' or 'inet', not '%s'", type);
    }
out:
    free(type);
    free(path);
    free(host);
    free(port);
    return rc;
}

static void close_listeners(void)
{
    for (int i = 0; i < srv.nlisten; i++)
        close(srv.listen_fds[i]);
    srv.nlisten = 0;
}

int vbd_nbd_server_start(struct json_object *opts, struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the server, its lists, the handshakes: the main loop's */
    if (srv.running) {
        vbd_error_setf(err, EBUSY, "NBD server already running");
        return -EBUSY;
    }
    vbd_sigpipe_ignore(); /* zero-copy replies are spliced: no MSG_NOSIGNAL there */
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
    int rc = ok ? listen_on(opts, err) : -1;
    if (rc == 0 && vbd_opts_check_empty(opts, "--nbd-server", err) < 0)
        rc = -1;
    if (rc < 0) {
        close_listeners();
        if (srv.unix_path) {
            unlink(srv.unix_path);
            free(srv.unix_path);
            srv.unix_path = NULL;
        }
        vbd_tls_creds_unref(creds);
        vbd_authz_unref(az);
        return -EINVAL;
    }
    srv.tls = creds;
    srv.authz = az;
    srv.max_connections = (uint32_t)maxc;
    srv.running = true;
    srv.stopping = false;
    srv.accepting = srv.nlisten;
    for (int i = 0; i < srv.nlisten; i++)
        vbd_co_wake(vbd_co_create(accept_co, (void *)(intptr_t)srv.listen_fds[i]));
    return 0;
}

/* NBD_STOP_GRACE_NS after the stop began: no more replies (see vbd_nbd_server_stop). */
static void cut_conns(void *arg)
{
    (void)arg;
    for (struct nbd_conn *c = srv.conns; c; c = c->next)
        vbd_chan_shutdown(&c->ch, SHUT_RDWR);
}

void vbd_nbd_server_stop(void)
{
    assert(vbd_thread_is_main()); /* the server, its lists, the handshakes: the main loop's */
    if (!srv.running)
        return;
    srv.stopping = true;
    for (int i = 0; i < srv.nlisten; i++)
        shutdown(srv.listen_fds[i], SHUT_RDWR); /* wakes the accept loops */
    vbd_co_queue_wake_all(&srv.idle_q); /* ... or its wait for a free slot */
    for (struct nbd_conn *c = srv.conns; c; c = c->next) {
        c->closing = true;
        vbd_chan_shutdown(&c->ch, SHUT_RD); /* in-flight replies still go out */
    }
    if (vbd_in_co()) {
        struct vbd_timer cut = {.fn = cut_conns};
        vbd_timer_arm(&cut, vbd_clock_ns() + NBD_STOP_GRACE_NS);
        while (srv.nconns || srv.accepting)
            vbd_co_queue_wait(&srv.idle_q);
        vbd_timer_cancel(&cut);
    }
    close_listeners();
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

bool vbd_nbd_server_running(void)
{
    return srv.running;
}
