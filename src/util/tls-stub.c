/* SPDX-License-Identifier: MIT */
/* TLS when GnuTLS is absent: credentials cannot be created, so no session
 * ever exists and the channel runs on plain sockets only. */
#include "tls-internal.h"

#include "vbd/error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

bool vbd_tls_creds_type(const char *qom_type)
{
    return !strcmp(qom_type, "tls-creds-x509") || !strcmp(qom_type, "tls-creds-psk") ||
           !strcmp(qom_type, "tls-creds-anon");
}

int vbd_tls_creds_add(const char *qom_type, struct json_object *opts, struct vbd_error **err)
{
    (void)opts;
    vbd_error_setf(err, ENOTSUP, "%s: this build of vbd has no TLS support (GnuTLS was not found)", qom_type);
    return -ENOTSUP;
}

struct vbd_tls_creds *vbd_tls_creds_get(const char *id, enum vbd_tls_endpoint want, const char *who,
                                        struct vbd_error **err)
{
    (void)want;
    vbd_error_setf(err, ENOTSUP, "%s: TLS (tls-creds=%s) is not available in this build", who, id);
    return NULL;
}

struct vbd_tls_creds *vbd_tls_creds_new_client(const struct vbd_tls_client_opts *o, const char *who,
                                               struct vbd_error **err)
{
    (void)o;
    vbd_error_setf(err, ENOTSUP, "%s: TLS is not available in this build", who);
    return NULL;
}
bool vbd_tls_creds_verify_peer(const struct vbd_tls_creds *c)
{
    (void)c;
    return false;
}
const char *vbd_tls_creds_type_name(const struct vbd_tls_creds *c)
{
    (void)c;
    return "";
}
bool vbd_tls_creds_system_ca(const struct vbd_tls_creds *c)
{
    (void)c;
    return false;
}
char *vbd_tls_peer_dn(struct vbd_tls *t, struct vbd_error **err)
{
    (void)t;
    vbd_error_setf(err, ENOTSUP, "TLS is not available in this build");
    return NULL;
}
void vbd_tls_deny(struct vbd_tls *t)
{
    (void)t;
}

void vbd_tls_creds_unref(struct vbd_tls_creds *c)
{
    (void)c;
}
const char *vbd_tls_creds_id(const struct vbd_tls_creds *c)
{
    (void)c;
    return "";
}
void vbd_tls_creds_remove_all(void) {}
int vbd_tls_creds_remove(const char *id, struct vbd_error **err)
{
    vbd_error_setf(err, ENOENT, "object '%s' not found", id);
    return -ENOENT;
}
const char *vbd_tls_creds_next(const char *prev)
{
    (void)prev;
    return NULL;
}
struct json_object *vbd_tls_creds_props(const char *id, const char **qom_type)
{
    (void)id, (void)qom_type;
    return NULL;
}

struct vbd_tls *vbd_tls_new(struct vbd_tls_creds *c, int fd, const char *hostname, struct vbd_error **err)
{
    (void)c, (void)fd, (void)hostname;
    vbd_error_setf(err, ENOTSUP, "TLS is not available in this build");
    return NULL;
}

int vbd_tls_handshake(struct vbd_tls *t, struct vbd_error **err)
{
    (void)t;
    vbd_error_setf(err, ENOTSUP, "TLS is not available in this build");
    return -ENOTSUP;
}

void vbd_tls_bye(struct vbd_tls *t)
{
    (void)t;
}
const char *vbd_tls_error(const struct vbd_tls *t)
{
    (void)t;
    return NULL;
}
int vbd_tls_try_send(struct vbd_tls *t, const void *buf, size_t len)
{
    (void)t, (void)buf, (void)len;
    return -ENOTSUP;
}
void vbd_tls_free(struct vbd_tls *t)
{
    (void)t;
}

const char *vbd_tls_describe(struct vbd_tls *t, char *buf, size_t len)
{
    (void)t;
    snprintf(buf, len, "none");
    return buf;
}

ssize_t vbd_tls_recv(struct vbd_tls *t, void *buf, size_t len)
{
    (void)t, (void)buf, (void)len;
    return -ENOTSUP;
}

ssize_t vbd_tls_recv_idle(struct vbd_tls *t, void *buf, size_t len, struct vbd_poll_wait *w)
{
    (void)t, (void)buf, (void)len, (void)w;
    return -ENOTSUP;
}
int vbd_tls_sendv(struct vbd_tls *t, const struct iovec *iov, int iovcnt)
{
    (void)t, (void)iov, (void)iovcnt;
    return -ENOTSUP;
}
void vbd_tls_shut_rd(struct vbd_tls *t)
{
    (void)t;
}
