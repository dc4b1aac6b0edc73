/* SPDX-License-Identifier: MIT */
/* tls-creds-x509: the CA, CRL, certificate and key files of a directory,
 * and libnbd's default directories. */
#include "tls-internal.h"

#include "vbd/alloc.h"
#include "vbd/error.h"

#include <errno.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int tls_load_x509(struct vbd_tls_creds *c, const char *dir, struct vbd_error **err)
{
    bool server = c->endpoint == VBD_TLS_SERVER;
    char *ca = NULL, *crl = NULL, *cert = NULL, *key = NULL;
    int have_ca, have_crl = 0, have_cert, have_key, rc = -1;
    /* the CA verifies the peer: a client always needs it (QEMU's rule), a server when it checks clients */
    if ((have_ca = tls_creds_file(c, dir, "ca-cert.pem", !server || c->verify_peer, &ca, err)) < 0 ||
        (have_ca && (have_crl = tls_creds_file(c, dir, "ca-crl.pem", false, &crl, err)) < 0) ||
        (have_cert = tls_creds_file(c, dir, server ? "server-cert.pem" : "client-cert.pem", server, &cert, err)) <
            0 ||
        (have_key = tls_creds_file(c, dir, server ? "server-key.pem" : "client-key.pem", server || have_cert,
                               &key, err)) < 0)
        goto out;
    if (have_key && !have_cert) {
        vbd_error_setf(err, ENOENT, "%s: %s/client-key.pem has no client-cert.pem beside it", c->what, dir);
        goto out;
    }
    int g = tlslib.gnutls_certificate_allocate_credentials(&c->x509);
    if (g < 0) {
        vbd_error_setf(err, ENOMEM, "%s: %s", c->what, tlslib.gnutls_strerror(g));
        goto out;
    }
    if (have_ca) {
        g = tlslib.gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM);
        if (g <= 0) {
            vbd_error_setf(err, EINVAL, "%s: cannot load CA certificate %s: %s", c->what, ca,
                           g < 0 ? tlslib.gnutls_strerror(g) : "no certificate in the file");
            goto out;
        }
    }
    if (have_crl && (g = tlslib.gnutls_certificate_set_x509_crl_file(c->x509, crl, GNUTLS_X509_FMT_PEM)) < 0) {
        vbd_error_setf(err, EINVAL, "%s: cannot load CRL %s: %s", c->what, crl, tlslib.gnutls_strerror(g));
        goto out;
    }
    if (have_cert &&
        (g = tlslib.gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM)) < 0) {
        vbd_error_setf(err, EINVAL, "%s: cannot load certificate %s with key %s: %s", c->what, cert, key,
                       tlslib.gnutls_strerror(g));
        goto out;
    }
    if (server) {
        int dh = tls_load_dh(c, dir, err);
        if (dh < 0)
            goto out;
        if (dh)
            tlslib.gnutls_certificate_set_dh_params(c->x509, c->dh);
        else
            tlslib.gnutls_certificate_set_known_dh_params(c->x509, GNUTLS_SEC_PARAM_MEDIUM);
    }
    rc = 0;
out:
    free(ca);
    free(crl);
    free(cert);
    free(key);
    return rc;
}

/* libnbd's default certificate directories, in its order: the first with a ca-cert.pem. */
char *tls_default_cert_dir(void)
{
    const char *home = getenv("HOME");
    char *d = NULL;
    if (geteuid() == 0) {
        d = vbd_xstrdup("/etc/pki/libnbd");
    } else if (home && *home) {
        d = vbd_xasprintf("%s/.pki/libnbd", home);
        char *ca = vbd_xasprintf("%s/ca-cert.pem", d);
        bool have = access(ca, R_OK) == 0;
        free(ca);
        if (have)
            return d;
        free(d);
        d = vbd_xasprintf("%s/.config/pki/libnbd", home);
    }
    char *ca = d ? vbd_xasprintf("%s/ca-cert.pem", d) : NULL;
    bool have = ca && access(ca, R_OK) == 0;
    free(ca);
    if (!have) {
        free(d);
        d = NULL;
    }
    return d;
}
