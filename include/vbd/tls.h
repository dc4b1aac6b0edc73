/* SPDX-License-Identifier: MIT */
#ifndef VBD_TLS_H
#define VBD_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

struct json_object;
struct vbd_error;

/*
 * TLS (GnuTLS) for the NBD server and client, with QEMU's credential
 * objects:
 *
 *   --object tls-creds-x509,id=ID,dir=DIR,endpoint=server|client[,verify-peer=on|off][,priority=P]
 *   --object tls-creds-psk,id=ID,dir=DIR,endpoint=server|client[,username=NAME][,priority=P]
 *   --object tls-creds-anon,id=ID,endpoint=server|client[,priority=P]
 *
 * x509 DIR holds ca-cert.pem (the CA that signs the peer), server-cert.pem
 * and server-key.pem (server), client-cert.pem and client-key.pem (client,
 * optional), ca-crl.pem and dh-params.pem (optional). PSK DIR holds
 * keys.psk, lines "username:hexkey" (psktool's format); a client uses the
 * line of its username (default "qemu"). Credentials are loaded when the
 * object is created, so a missing or bad file is reported then.
 *
 * Sessions run on non-blocking sockets inside coroutines: every GnuTLS
 * call that would block yields on vbd_co_poll for the direction GnuTLS
 * asks for. One coroutine may receive while another sends on the same
 * session (the NBD reader and the request senders); senders must be
 * serialised by the caller, as for a plain socket.
 *
 * Threads: credential objects are created, looked up and removed on the
 * main thread (add and remove asserted: the registry is not locked); a
 * session belongs to the loop of the socket it runs on.
 */

enum vbd_tls_endpoint { VBD_TLS_SERVER = 0, VBD_TLS_CLIENT = 1 };

struct vbd_tls_creds;
struct vbd_tls;

/* True for the qom-types this file creates (tls-creds-x509/-psk/-anon). */
bool vbd_tls_creds_type(const char *qom_type);
/* Create and register an object; opts are its keys without qom-type
 * (id, dir, endpoint, ...). Unknown keys are reported. */
int vbd_tls_creds_add(const char *qom_type, struct json_object *opts, struct vbd_error **err);
/* Find credentials by id for a user at endpoint `want` ("who" names the
 * user in messages). Returns a new reference or NULL with *err. */
struct vbd_tls_creds *vbd_tls_creds_get(const char *id, enum vbd_tls_endpoint want, const char *who,
                                        struct vbd_error **err);
void vbd_tls_creds_unref(struct vbd_tls_creds *c);
const char *vbd_tls_creds_id(const struct vbd_tls_creds *c);
/* "tls-creds-x509", "tls-creds-psk" or "tls-creds-anon". */
const char *vbd_tls_creds_type_name(const struct vbd_tls_creds *c);
/* x509 credentials that check the peer's certificate (verify-peer=on). */
bool vbd_tls_creds_verify_peer(const struct vbd_tls_creds *c);

/*
 * Client credentials given the way libnbd's URIs give them (nbds://...?
 * tls-certificates=DIR or tls-psk-file=FILE): private to their user, not
 * registered. psk_file set: PSK with that psktool file and username (NULL:
 * the login name). Else x509 from cert_dir (ca-cert.pem, optional
 * client-cert.pem and client-key.pem); cert_dir NULL: libnbd's defaults
 * ($HOME/.pki/libnbd, $HOME/.config/pki/libnbd, or /etc/pki/libnbd for
 * root), else the system's trusted CAs. "who" starts messages.
 */
struct vbd_tls_client_opts {
    const char *cert_dir, *psk_file, *username;
    bool verify_peer;
};
struct vbd_tls_creds *vbd_tls_creds_new_client(const struct vbd_tls_client_opts *o, const char *who,
                                               struct vbd_error **err);
/* Created by vbd_tls_creds_new_client from the system's CAs (false for NULL). */
bool vbd_tls_creds_system_ca(const struct vbd_tls_creds *c);
/* Drop every registered object (at exit; users keep their references). */
void vbd_tls_creds_remove_all(void);
/* QMP object-del: unregister and drop object id. -EBUSY while anything
 * else holds a reference (the NBD server, an nbd node, a session), -ENOENT
 * if there is none, with *err saying so. */
int vbd_tls_creds_remove(const char *id, struct vbd_error **err);
/* The registered ids, newest first: start with NULL; NULL at the end. */
const char *vbd_tls_creds_next(const char *prev);
/* qom-get/qom-list: the object's qom-type and its properties as JSON
 * (endpoint, dir, verify-peer, username, loaded), a new object; NULL if
 * there is no such object. */
struct json_object *vbd_tls_creds_props(const char *id, const char **qom_type);

/* A session on connected socket fd. hostname (client only, may be NULL):
 * the name the server's certificate must carry, also sent as SNI. */
struct vbd_tls *vbd_tls_new(struct vbd_tls_creds *c, int fd, const char *hostname, struct vbd_error **err);
/* Coroutine: run the handshake (and, with verify-peer, check the peer's
 * certificate). 0 or -errno with *err saying why (a certificate that does
 * not verify is named as such). */
int vbd_tls_handshake(struct vbd_tls *t, struct vbd_error **err);
/* Send close_notify if it can go out without waiting; never blocks. */
void vbd_tls_bye(struct vbd_tls *t);
/* One attempt to send len bytes without waiting (for a goodbye request on
 * close); returns 0 if all went out. */
int vbd_tls_try_send(struct vbd_tls *t, const void *buf, size_t len);
void vbd_tls_free(struct vbd_tls *t);
/* Why a session that had completed its handshake failed (a fatal alert
 * from the peer, say), or NULL. */
const char *vbd_tls_error(const struct vbd_tls *t);
/* The distinguished name of the peer's x509 certificate as GnuTLS writes
 * it (gnutls_x509_crt_get_dn, what QEMU's tls-authz checks), malloc'd;
 * NULL with *err when the peer sent none. After the handshake. */
char *vbd_tls_peer_dn(struct vbd_tls *t, struct vbd_error **err);
/* Refuse a session whose handshake succeeded: send a fatal access_denied
 * alert (one try, no waiting); the session is unusable afterwards. */
void vbd_tls_deny(struct vbd_tls *t);
/* "TLS1.3 / ECDHE-RSA / AES-256-GCM" style description for logs. */
const char *vbd_tls_describe(struct vbd_tls *t, char *buf, size_t len);

/*
 * A channel is a socket with or without TLS; the NBD code does all its
 * I/O through these (coroutine context). Same contract as vbd_co_*_full:
 * 0 after all bytes, -errno otherwise; -ECONNRESET when the peer closed.
 * The iov arrays are modified.
 */
struct vbd_chan {
    int fd;
    struct vbd_tls *tls; /* NULL: plain socket */
};
int vbd_chan_recv_full(struct vbd_chan *ch, void *buf, size_t len);
int vbd_chan_recvv_full(struct vbd_chan *ch, struct iovec *iov, int iovcnt);
int vbd_chan_send_full(struct vbd_chan *ch, const void *buf, size_t len);
int vbd_chan_sendv_full(struct vbd_chan *ch, struct iovec *iov, int iovcnt);
/* shutdown(2) of the socket. SHUT_RD ends receiving only: a coroutine
 * waiting to receive gets -ECONNRESET, and with TLS the session can still
 * send (GnuTLS would refuse to send after it saw the end of the stream). */
void vbd_chan_shutdown(struct vbd_chan *ch, int how);
/* As vbd_chan_recv_full for a message the peer may be long to start (an
 * NBD request header): the wait for its first byte is w's
 * (vbd_co_poll_wait), so that the loop's thread can cut it short
 * (vbd_co_poll_wait_cancel): -ECANCELED, nothing received. */
struct vbd_poll_wait;
int vbd_chan_recv_full_idle(struct vbd_chan *ch, void *buf, size_t len, struct vbd_poll_wait *w);

#endif
