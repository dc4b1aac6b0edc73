/* SPDX-License-Identifier: MIT */
/*
 * What the TLS files share: the credentials (tls-creds.c,
 * tls-creds-x509.c, tls-creds-psk.c, as QEMU's crypto/tlscreds*.c),
 * sessions (tls-session.c, as crypto/tlssession.c) and the channel
 * (tls-channel.c, as io/channel-tls.c). Without GnuTLS, tls-stub.c stands
 * in for all but the channel.
 */
#ifndef VBD_TLS_INTERNAL_H
#define VBD_TLS_INTERNAL_H

#include "vbd-config.h"
#include "vbd/tls.h"

#include <sys/types.h>

struct vbd_error;

/* The channel's calls on an established session (coroutine context):
 * bytes received (>0) or -errno, -ECONNRESET at the end of the stream; 0
 * once all of iov went out, or -errno. vbd_tls_shut_rd: receive no more,
 * while the session can still send. */
ssize_t vbd_tls_recv(struct vbd_tls *t, void *buf, size_t len);
/* vbd_tls_recv whose waits for the socket are w's (cancellable): a cancel
 * gives -ECANCELED, nothing received (a record half read stays in the
 * session for the next call). */
struct vbd_poll_wait;
ssize_t vbd_tls_recv_idle(struct vbd_tls *t, void *buf, size_t len, struct vbd_poll_wait *w);
int vbd_tls_sendv(struct vbd_tls *t, const struct iovec *iov, int iovcnt);
void vbd_tls_shut_rd(struct vbd_tls *t);

#if VBD_HAVE_GNUTLS
#include <gnutls/gnutls.h>

enum creds_kind { CREDS_X509, CREDS_PSK, CREDS_ANON };

struct vbd_tls_creds {
    char *id;
    char *what; /* how messages name it: "tls-creds-x509 'ID'", or the URI parameter it came from */
    enum creds_kind kind;
    enum vbd_tls_endpoint endpoint;
    bool verify_peer;
    bool system_ca; /* x509 client trusting the system's CAs (an nbds:// URI without credentials) */
    char *priority;
    char *dir, *username; /* as given, for qom-get */
    int refs;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk_server;
    gnutls_psk_client_credentials_t psk_client;
    gnutls_anon_server_credentials_t anon_server;
    gnutls_anon_client_credentials_t anon_client;
    gnutls_dh_params_t dh;
    struct vbd_tls_creds *next;
};
extern const char *const vbd_tls_kind_names[3]; /* by enum creds_kind: the qom-types */

/* dir/name; *path malloc'd. Returns 1 if the file exists, 0 if it does not
 * (an error only when required), -1 on error. */
int tls_creds_file(const struct vbd_tls_creds *c, const char *dir, const char *name, bool required, char **path,
                   struct vbd_error **err);
/* dh-params.pem of dir, if there is one: 1 loaded, 0 none, -1 error. */
int tls_load_dh(struct vbd_tls_creds *c, const char *dir, struct vbd_error **err);
/* tls-creds-x509.c */
int tls_load_x509(struct vbd_tls_creds *c, const char *dir, struct vbd_error **err);
char *tls_default_cert_dir(void);
/* tls-creds-psk.c */
int tls_load_psk(struct vbd_tls_creds *c, const char *dir, const char *path, const char *username,
                 struct vbd_error **err);
int tls_login_name(char *buf, size_t len);
#endif

#endif
