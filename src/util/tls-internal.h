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
#include <gnutls/x509.h>

/* GnuTLS is loaded when the first credentials are made, not linked (see
 * util/dynlib.h): every GnuTLS function the TLS files call is one of these
 * pointers (tlslib.f; tlslib.free is gnutls_free's value). Nothing calls
 * them without credentials: a session needs some. */
#define TLSLIB_FUNCS(X) \
    X(gnutls_alert_get) \
    X(gnutls_alert_get_name) \
    X(gnutls_alert_send) \
    X(gnutls_alert_send_appropriate) \
    X(gnutls_anon_allocate_client_credentials) \
    X(gnutls_anon_allocate_server_credentials) \
    X(gnutls_anon_free_client_credentials) \
    X(gnutls_anon_free_server_credentials) \
    X(gnutls_anon_set_server_known_dh_params) \
    X(gnutls_bye) \
    X(gnutls_certificate_allocate_credentials) \
    X(gnutls_certificate_free_credentials) \
    X(gnutls_certificate_get_peers) \
    X(gnutls_certificate_server_set_request) \
    X(gnutls_certificate_set_dh_params) \
    X(gnutls_certificate_set_known_dh_params) \
    X(gnutls_certificate_set_x509_crl_file) \
    X(gnutls_certificate_set_x509_key_file) \
    X(gnutls_certificate_set_x509_system_trust) \
    X(gnutls_certificate_set_x509_trust_file) \
    X(gnutls_certificate_type_get) \
    X(gnutls_certificate_verification_status_print) \
    X(gnutls_credentials_set) \
    X(gnutls_deinit) \
    X(gnutls_dh_params_deinit) \
    X(gnutls_dh_params_import_pkcs3) \
    X(gnutls_dh_params_init) \
    X(gnutls_error_is_fatal) \
    X(gnutls_handshake) \
    X(gnutls_handshake_set_timeout) \
    X(gnutls_init) \
    X(gnutls_kx_get) \
    X(gnutls_kx_get_name) \
    X(gnutls_load_file) \
    X(gnutls_priority_deinit) \
    X(gnutls_priority_init) \
    X(gnutls_priority_set_direct) \
    X(gnutls_psk_allocate_client_credentials) \
    X(gnutls_psk_allocate_server_credentials) \
    X(gnutls_psk_free_client_credentials) \
    X(gnutls_psk_free_server_credentials) \
    X(gnutls_psk_set_client_credentials) \
    X(gnutls_psk_set_server_credentials_file) \
    X(gnutls_psk_set_server_dh_params) \
    X(gnutls_psk_set_server_known_dh_params) \
    X(gnutls_record_get_direction) \
    X(gnutls_record_recv) \
    X(gnutls_record_send) \
    X(gnutls_server_name_set) \
    X(gnutls_session_get_desc) \
    X(gnutls_session_get_verify_cert_status) \
    X(gnutls_session_set_verify_cert) \
    X(gnutls_strerror) \
    X(gnutls_transport_set_errno) \
    X(gnutls_transport_set_ptr) \
    X(gnutls_transport_set_pull_function) \
    X(gnutls_transport_set_pull_timeout_function) \
    X(gnutls_transport_set_push_function) \
    X(gnutls_x509_crt_deinit) \
    X(gnutls_x509_crt_get_dn) \
    X(gnutls_x509_crt_import) \
    X(gnutls_x509_crt_init)
struct tlslib {
#define X(f) __typeof__(f) *f;
    TLSLIB_FUNCS(X)
#undef X
    gnutls_free_function free;
};
extern struct tlslib tlslib;
/* 0 once GnuTLS is loaded, else -ENOTSUP with *err "TLS not available: ..." */
int tls_lib_load(struct vbd_error **err);

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
