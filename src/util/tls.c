/* SPDX-License-Identifier: MIT */
/*
 * TLS credentials objects and coroutine TLS sessions (GnuTLS), plus the
 * channel helpers the NBD server and client do their I/O through.
 *
 * GnuTLS runs in non-blocking mode on the socket itself (no transport
 * callbacks): when a call returns GNUTLS_E_AGAIN the coroutine waits with
 * vbd_co_poll for the direction gnutls_record_get_direction() names, then
 * repeats the same call, as GnuTLS requires. Nothing is read ahead of what
 * GnuTLS asks for, so a STARTTLS upgrade never loses plaintext bytes.
 */
#include "vbd-config.h"

#include "vbd/tls.h"

#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"

#include <errno.h>
#include <json-c/json.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* ------------------------------------------------------------------ */
/* channels                                                            */

static int plain_recvv_full(int fd, struct iovec *iov, int iovcnt)
{
    while (iovcnt > 0) {
        if (!iov->iov_len) {
            iov++;
            iovcnt--;
            continue;
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)iovcnt};
        ssize_t r = vbd_co_recvmsg(fd, &mh, 0);
        if (r < 0)
            return (int)r;
        if (r == 0)
            return -ECONNRESET;
        while (iovcnt > 0 && (size_t)r >= iov->iov_len) {
            r -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + r;
            iov->iov_len -= (size_t)r;
        }
    }
    return 0;
}

#if VBD_HAVE_GNUTLS

#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

enum creds_kind { CREDS_X509, CREDS_PSK, CREDS_ANON };
static const char *const kind_names[] = {"tls-creds-x509", "tls-creds-psk", "tls-creds-anon"};

struct vbd_tls_creds {
    char *id;
    char *what; /* how messages name it: "tls-creds-x509 'ID'", or the URI parameter it came from */
    enum creds_kind kind;
    enum vbd_tls_endpoint endpoint;
    bool verify_peer;
    bool system_ca; /* x509 client trusting the system's CAs (an nbds:// URI without credentials) */
    char *priority;
    int refs;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk_server;
    gnutls_psk_client_credentials_t psk_client;
    gnutls_anon_server_credentials_t anon_server;
    gnutls_anon_client_credentials_t anon_client;
    gnutls_dh_params_t dh;
    struct vbd_tls_creds *next;
};

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
    bool rd_shut;    /* vbd_chan_shutdown(SHUT_RD): receive no more */
    bool nowait;     /* bye / try_send: the transport never waits */
    bool corked;     /* inside a send call: encrypted records gather in out[] */
    bool timed_out;  /* the handshake timer fired */
    char error[160]; /* why the session failed after the handshake ("" if it did not) */
    struct vbd_tls_creds *creds;
    char *hostname;
    size_t in_pos, in_len, out_len;
    uint8_t *in, *out;
    struct vbd_timer timer;
    uint8_t stage[TLS_STAGE]; /* small pieces of a sendv gathered into one record */
};

static struct vbd_tls_creds *registry;

bool vbd_tls_creds_type(const char *qom_type)
{
    for (size_t i = 0; i < sizeof(kind_names) / sizeof(kind_names[0]); i++)
        if (!strcmp(qom_type, kind_names[i]))
            return true;
    return false;
}

static void creds_free(struct vbd_tls_creds *c)
{
    if (c->x509)
        gnutls_certificate_free_credentials(c->x509);
    if (c->psk_server)
        gnutls_psk_free_server_credentials(c->psk_server);
    if (c->psk_client)
        gnutls_psk_free_client_credentials(c->psk_client);
    if (c->anon_server)
        gnutls_anon_free_server_credentials(c->anon_server);
    if (c->anon_client)
        gnutls_anon_free_client_credentials(c->anon_client);
    if (c->dh)
        gnutls_dh_params_deinit(c->dh);
    free(c->id);
    free(c->what);
    free(c->priority);
    free(c);
}

void vbd_tls_creds_unref(struct vbd_tls_creds *c)
{
    if (c && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
        creds_free(c);
}

const char *vbd_tls_creds_id(const struct vbd_tls_creds *c)
{
    return c->id;
}

/* dir/name; *path malloc'd. Returns 1 if the file exists, 0 if it does not
 * (an error only when required), -1 on error. */
static int creds_file(const struct vbd_tls_creds *c, const char *dir, const char *name, bool required,
                      char **path, struct vbd_error **err)
{
    if (asprintf(path, "%s/%s", dir, name) < 0) {
        *path = NULL;
        vbd_error_setf(err, ENOMEM, "out of memory");
        return -1;
    }
    struct stat st;
    if (stat(*path, &st) == 0)
        return 1;
    int e = errno;
    if (e == ENOENT && !required)
        return 0;
    vbd_error_setf(err, e, "%s: unable to access credentials %s: %s", c->what, *path, strerror(e));
    return -1;
}

static int load_dh(struct vbd_tls_creds *c, const char *dir, struct vbd_error **err)
{
    char *path = NULL;
    int have = creds_file(c, dir, "dh-params.pem", false, &path, err);
    if (have <= 0) {
        free(path);
        return have;
    }
    gnutls_datum_t d = {NULL, 0};
    int rc = gnutls_load_file(path, &d);
    if (rc >= 0 && (rc = gnutls_dh_params_init(&c->dh)) >= 0)
        rc = gnutls_dh_params_import_pkcs3(c->dh, &d, GNUTLS_X509_FMT_PEM);
    gnutls_free(d.data);
    if (rc < 0)
        vbd_error_setf(err, EINVAL, "%s: cannot load DH parameters %s: %s", c->what, path,
                       gnutls_strerror(rc));
    free(path);
    return rc < 0 ? -1 : 1;
}

static int load_x509(struct vbd_tls_creds *c, const char *dir, struct vbd_error **err)
{
    bool server = c->endpoint == VBD_TLS_SERVER;
    char *ca = NULL, *crl = NULL, *cert = NULL, *key = NULL;
    int have_ca, have_crl = 0, have_cert, have_key, rc = -1;
    /* the CA verifies the peer: a client always needs it (QEMU's rule), a server when it checks clients */
    if ((have_ca = creds_file(c, dir, "ca-cert.pem", !server || c->verify_peer, &ca, err)) < 0 ||
        (have_ca && (have_crl = creds_file(c, dir, "ca-crl.pem", false, &crl, err)) < 0) ||
        (have_cert = creds_file(c, dir, server ? "server-cert.pem" : "client-cert.pem", server, &cert, err)) <
            0 ||
        (have_key = creds_file(c, dir, server ? "server-key.pem" : "client-key.pem", server || have_cert,
                               &key, err)) < 0)
        goto out;
    if (have_key && !have_cert) {
        vbd_error_setf(err, ENOENT, "%s: %s/client-key.pem has no client-cert.pem beside it", c->what, dir);
        goto out;
    }
    int g = gnutls_certificate_allocate_credentials(&c->x509);
    if (g < 0) {
        vbd_error_setf(err, ENOMEM, "%s: %s", c->what, gnutls_strerror(g));
        goto out;
    }
    if (have_ca) {
        g = gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM);
        if (g <= 0) {
            vbd_error_setf(err, EINVAL, "%s: cannot load CA certificate %s: %s", c->what, ca,
                           g < 0 ? gnutls_strerror(g) : "no certificate in the file");
            goto out;
        }
    }
    if (have_crl && (g = gnutls_certificate_set_x509_crl_file(c->x509, crl, GNUTLS_X509_FMT_PEM)) < 0) {
        vbd_error_setf(err, EINVAL, "%s: cannot load CRL %s: %s", c->what, crl, gnutls_strerror(g));
        goto out;
    }
    if (have_cert &&
        (g = gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM)) < 0) {
        vbd_error_setf(err, EINVAL, "%s: cannot load certificate %s with key %s: %s", c->what, cert, key,
                       gnutls_strerror(g));
        goto out;
    }
    if (server) {
        int dh = load_dh(c, dir, err);
        if (dh < 0)
            goto out;
        if (dh)
            gnutls_certificate_set_dh_params(c->x509, c->dh);
        else
            gnutls_certificate_set_known_dh_params(c->x509, GNUTLS_SEC_PARAM_MEDIUM);
    }
    rc = 0;
out:
    free(ca);
    free(crl);
    free(cert);
    free(key);
    return rc;
}

/* psktool's keys.psk: "username:hexkey" lines. */
static int load_psk(struct vbd_tls_creds *c, const char *dir, const char *path, const char *username,
                    struct vbd_error **err)
{
    int rc = -1;
    int g;
    if (c->endpoint == VBD_TLS_SERVER) {
        if ((g = gnutls_psk_allocate_server_credentials(&c->psk_server)) < 0 ||
            (g = gnutls_psk_set_server_credentials_file(c->psk_server, path)) < 0) {
            vbd_error_setf(err, EINVAL, "%s: cannot load %s: %s", c->what, path, gnutls_strerror(g));
            goto out;
        }
        int dh = load_dh(c, dir, err);
        if (dh < 0)
            goto out;
        if (dh)
            gnutls_psk_set_server_dh_params(c->psk_server, c->dh);
        else
            gnutls_psk_set_server_known_dh_params(c->psk_server, GNUTLS_SEC_PARAM_MEDIUM);
        rc = 0;
        goto out;
    }
    FILE *f = fopen(path, "re");
    if (!f) {
        vbd_error_setf(err, errno, "%s: cannot open %s: %s", c->what, path, strerror(errno));
        goto out;
    }
    char line[1024];
    size_t ul = strlen(username);
    bool found = false;
    while (!found && fgets(line, sizeof(line), f)) {
        if (strncmp(line, username, ul) || line[ul] != ':')
            continue;
        char *hex = line + ul + 1;
        hex[strcspn(hex, "\r\n")] = 0;
        gnutls_datum_t key = {(unsigned char *)hex, (unsigned)strlen(hex)};
        if (!key.size) {
            vbd_error_setf(err, EINVAL, "%s: empty key for user '%s' in %s", c->what, username, path);
            break;
        }
        if ((g = gnutls_psk_allocate_client_credentials(&c->psk_client)) < 0 ||
            (g = gnutls_psk_set_client_credentials(c->psk_client, username, &key, GNUTLS_PSK_KEY_HEX)) < 0) {
            vbd_error_setf(err, EINVAL, "%s: bad key for user '%s' in %s: %s", c->what, username, path,
                           gnutls_strerror(g));
            break;
        }
        found = true;
    }
    explicit_bzero(line, sizeof(line));
    fclose(f);
    if (!found) {
        vbd_error_setf(err, ENOENT, "%s: username '%s' not found in %s", c->what, username, path);
        goto out;
    }
    rc = 0;
out:
    return rc;
}

static struct vbd_tls_creds *creds_alloc(enum creds_kind kind, enum vbd_tls_endpoint endpoint, const char *id,
                                         const char *what, struct vbd_error **err)
{
    struct vbd_tls_creds *c = calloc(1, sizeof(*c));
    if (!c || !(c->id = strdup(id)) ||
        (what ? !(c->what = strdup(what)) : asprintf(&c->what, "%s '%s'", kind_names[kind], id) < 0)) {
        if (c) {
            c->what = NULL;
            free(c->id);
        }
        free(c);
        vbd_error_setf(err, ENOMEM, "out of memory");
        return NULL;
    }
    c->kind = kind;
    c->endpoint = endpoint;
    c->refs = 1;
    return c;
}

/* The session priority string, checked now rather than at the first connection. */
static int set_priority(struct vbd_tls_creds *c, const char *priority, struct vbd_error **err)
{
    static const char *const extra[] = {"", ":+ECDHE-PSK:+DHE-PSK:+PSK", ":+ANON-ECDH:+ANON-DH"};
    /* NORMAL lists ChaCha20 before AES-128-GCM, and PSK sessions (SHA-256 only in TLS 1.3) then get
     * ChaCha20, many times slower than AES-GCM where the CPU has AES instructions: move it last there,
     * and let a server's order decide. An explicit priority= is taken as it is. */
    const char *def = "NORMAL";
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("aes"))
        def = c->endpoint == VBD_TLS_SERVER
                  ? "NORMAL:-CHACHA20-POLY1305:+CHACHA20-POLY1305:%SERVER_PRECEDENCE"
                  : "NORMAL:-CHACHA20-POLY1305:+CHACHA20-POLY1305";
#endif
    if (asprintf(&c->priority, "%s%s", priority ? priority : def, extra[c->kind]) < 0) {
        c->priority = NULL;
        vbd_error_setf(err, ENOMEM, "out of memory");
        return -1;
    }
    gnutls_priority_t pc;
    const char *errpos = NULL;
    int g = gnutls_priority_init(&pc, c->priority, &errpos);
    if (g < 0) {
        vbd_error_setf(err, EINVAL, "%s: bad priority string '%s' (at '%s'): %s", c->what, c->priority,
                       errpos ? errpos : "", gnutls_strerror(g));
        return -1;
    }
    gnutls_priority_deinit(pc);
    return 0;
}

int vbd_tls_creds_add(const char *qom_type, struct json_object *opts, struct vbd_error **err)
{
    static const char *const endpoints[] = {"server", "client", NULL};
    char *id = NULL, *dir = NULL, *username = NULL, *priority = NULL, *psk = NULL;
    int endpoint = VBD_TLS_CLIENT;
    bool verify = true;
    struct vbd_tls_creds *c = NULL;
    int kind = -1;
    for (int i = 0; i < 3; i++)
        if (!strcmp(qom_type, kind_names[i]))
            kind = i;
    if (kind < 0) {
        vbd_error_setf(err, EINVAL, "unknown TLS credentials type '%s'", qom_type);
        return -EINVAL;
    }
    if (vbd_opt_take_str(opts, "id", &id, err) < 0 || vbd_opt_take_str(opts, "dir", &dir, err) < 0 ||
        vbd_opt_take_enum(opts, "endpoint", endpoints, &endpoint, err) < 0 ||
        vbd_opt_take_bool(opts, "verify-peer", &verify, err) < 0 ||
        vbd_opt_take_str(opts, "priority", &priority, err) < 0 ||
        (kind == CREDS_PSK && vbd_opt_take_str(opts, "username", &username, err) < 0))
        goto fail;
    if (!id) {
        vbd_error_setf(err, EINVAL, "%s: 'id' is required", qom_type);
        goto fail;
    }
    if (vbd_opts_check_empty(opts, qom_type, err) < 0)
        goto fail;
    for (struct vbd_tls_creds *o = registry; o; o = o->next)
        if (!strcmp(o->id, id)) {
            vbd_error_setf(err, EEXIST, "attempt to add duplicate object id '%s'", id);
            goto fail;
        }
    if (kind != CREDS_ANON && !dir) {
        vbd_error_setf(err, EINVAL, "%s '%s': 'dir' is required", qom_type, id);
        goto fail;
    }
    if (kind == CREDS_PSK && username && endpoint == VBD_TLS_SERVER) {
        vbd_error_setf(err, EINVAL, "%s '%s': 'username' is for endpoint=client", qom_type, id);
        goto fail;
    }
    if (!(c = creds_alloc((enum creds_kind)kind, (enum vbd_tls_endpoint)endpoint, id, NULL, err)))
        goto fail;
    /* PSK and anonymous sessions have no certificates to check */
    c->verify_peer = kind == CREDS_X509 && verify;
    int rc = 0, g = 0;
    switch (c->kind) {
    case CREDS_X509:
        rc = load_x509(c, dir, err);
        break;
    case CREDS_PSK:
        rc = creds_file(c, dir, "keys.psk", true, &psk, err);
        if (rc >= 0)
            rc = load_psk(c, dir, psk, username ? username : "qemu", err);
        break;
    case CREDS_ANON:
        if (c->endpoint == VBD_TLS_SERVER) {
            if ((g = gnutls_anon_allocate_server_credentials(&c->anon_server)) >= 0)
                gnutls_anon_set_server_known_dh_params(c->anon_server, GNUTLS_SEC_PARAM_MEDIUM);
        } else {
            g = gnutls_anon_allocate_client_credentials(&c->anon_client);
        }
        if (g < 0) {
            vbd_error_setf(err, ENOMEM, "%s: %s", c->what, gnutls_strerror(g));
            rc = -1;
        }
        break;
    }
    if (rc < 0 || set_priority(c, priority, err) < 0)
        goto fail;
    c->next = registry;
    registry = c;
    free(id);
    free(dir);
    free(psk);
    free(username);
    free(priority);
    return 0;
fail:
    if (c)
        creds_free(c);
    free(id);
    free(dir);
    free(psk);
    free(username);
    free(priority);
    return -EINVAL;
}

/* The login name, as libnbd takes it for PSK; the effective user's name where there is no login
 * (no controlling terminal, as under a service manager). */
static int login_name(char *buf, size_t len)
{
    if (getlogin_r(buf, len) == 0 && *buf)
        return 0;
    struct passwd pw, *res = NULL;
    char tmp[1024];
    if (getpwuid_r(geteuid(), &pw, tmp, sizeof(tmp), &res) != 0 || !res || strlen(res->pw_name) >= len)
        return -1;
    strcpy(buf, res->pw_name);
    return 0;
}

/* libnbd's default certificate directories, in its order: the first with a ca-cert.pem. */
static char *default_cert_dir(void)
{
    const char *home = getenv("HOME");
    char *d = NULL;
    if (geteuid() == 0) {
        d = strdup("/etc/pki/libnbd");
    } else if (home && *home) {
        if (asprintf(&d, "%s/.pki/libnbd", home) < 0)
            return NULL;
        char *ca = NULL;
        bool have = asprintf(&ca, "%s/ca-cert.pem", d) >= 0 && access(ca, R_OK) == 0;
        free(ca);
        if (have)
            return d;
        free(d);
        if (asprintf(&d, "%s/.config/pki/libnbd", home) < 0)
            return NULL;
    }
    char *ca = NULL;
    bool have = d && asprintf(&ca, "%s/ca-cert.pem", d) >= 0 && access(ca, R_OK) == 0;
    free(ca);
    if (!have) {
        free(d);
        d = NULL;
    }
    return d;
}

struct vbd_tls_creds *vbd_tls_creds_new_client(const struct vbd_tls_client_opts *o, const char *who,
                                               struct vbd_error **err)
{
    struct vbd_tls_creds *c = NULL;
    char *dir = NULL, what[4200];
    if (o->psk_file) {
        char user[256];
        const char *username = o->username;
        if (!username) {
            if (login_name(user, sizeof(user)) < 0) {
                vbd_error_setf(err, ENOENT, "%s: no login name for the PSK username (give tls-username=NAME)",
                               who);
                return NULL;
            }
            username = user;
        }
        snprintf(what, sizeof(what), "%s: tls-psk-file=%s", who, o->psk_file);
        if (!(c = creds_alloc(CREDS_PSK, VBD_TLS_CLIENT, "tls-psk-file", what, err)))
            return NULL;
        struct stat st;
        if (stat(o->psk_file, &st) < 0) {
            vbd_error_setf(err, errno, "%s: %s", what, strerror(errno));
            goto fail;
        }
        if (load_psk(c, NULL, o->psk_file, username, err) < 0)
            goto fail;
    } else {
        /* like libnbd: the given directory, else its default ones, else the system's CAs */
        dir = o->cert_dir ? strdup(o->cert_dir) : default_cert_dir();
        if (dir)
            snprintf(what, sizeof(what), "%s: tls-certificates=%s", who, dir);
        else
            snprintf(what, sizeof(what), "%s: the system's trusted CAs", who);
        if (!(c = creds_alloc(CREDS_X509, VBD_TLS_CLIENT, dir ? "tls-certificates" : "system-ca", what, err)))
            goto fail;
        c->verify_peer = o->verify_peer;
        if (dir) {
            if (load_x509(c, dir, err) < 0)
                goto fail;
        } else {
            int g = gnutls_certificate_allocate_credentials(&c->x509);
            if (g >= 0)
                g = gnutls_certificate_set_x509_system_trust(c->x509);
            if (g <= 0) {
                vbd_error_setf(
                    err, ENOENT,
                    "%s: no system CA certificates%s%s (give tls-certificates=DIR, tls-psk-file=FILE "
                    "or tls-creds=ID)",
                    who, g < 0 ? ": " : "", g < 0 ? gnutls_strerror(g) : "");
                goto fail;
            }
        }
        c->system_ca = !dir;
    }
    if (set_priority(c, NULL, err) < 0)
        goto fail;
    free(dir);
    return c;
fail:
    free(dir);
    if (c)
        creds_free(c);
    return NULL;
}

bool vbd_tls_creds_verify_peer(const struct vbd_tls_creds *c)
{
    return c->verify_peer;
}

const char *vbd_tls_creds_type_name(const struct vbd_tls_creds *c)
{
    return kind_names[c->kind];
}

bool vbd_tls_creds_system_ca(const struct vbd_tls_creds *c)
{
    return c && c->system_ca;
}

struct vbd_tls_creds *vbd_tls_creds_get(const char *id, enum vbd_tls_endpoint want, const char *who,
                                        struct vbd_error **err)
{
    for (struct vbd_tls_creds *c = registry; c; c = c->next) {
        if (strcmp(c->id, id))
            continue;
        if (c->endpoint != want) {
            vbd_error_setf(err, EINVAL, "%s: TLS credentials '%s' have endpoint=%s, expected endpoint=%s",
                           who, id, c->endpoint == VBD_TLS_SERVER ? "server" : "client",
                           want == VBD_TLS_SERVER ? "server" : "client");
            return NULL;
        }
        __atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
        return c;
    }
    vbd_error_setf(err, ENOENT,
                   "%s: no TLS credentials object with id '%s' (create it with --object tls-creds-x509 or "
                   "tls-creds-psk)",
                   who, id);
    return NULL;
}

void vbd_tls_creds_remove_all(void)
{
    while (registry) {
        struct vbd_tls_creds *c = registry;
        registry = c->next;
        vbd_tls_creds_unref(c);
    }
}

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
            gnutls_transport_set_errno(t->session, errno);
            return -1;
        }
        memcpy(t->out + t->out_len, buf, len);
        t->out_len += len;
        return (ssize_t)len;
    }
    if (t->out_len && flush_out(t) < 0) { /* keep the order */
        gnutls_transport_set_errno(t->session, errno);
        return -1;
    }
    ssize_t r = sock_send(t, buf, len);
    if (r < 0)
        gnutls_transport_set_errno(t->session, errno);
    return r;
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
            gnutls_transport_set_errno(t->session, EAGAIN);
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
            int pr = vbd_co_poll(t->fd, POLLIN);
            if (pr < 0) {
                gnutls_transport_set_errno(t->session, -pr);
                return -1;
            }
            continue;
        }
        gnutls_transport_set_errno(t->session, errno);
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
    struct vbd_tls *t = calloc(1, sizeof(*t));
    if (!t) {
        vbd_error_setf(err, ENOMEM, "out of memory");
        return NULL;
    }
    t->fd = fd;
    t->server = c->endpoint == VBD_TLS_SERVER;
    t->in = malloc(TLS_INBUF);
    t->out = malloc(TLS_OUTBUF);
    if (!t->in || !t->out) {
        vbd_error_setf(err, ENOMEM, "out of memory");
        free(t->in);
        free(t->out);
        free(t);
        return NULL;
    }
    const char *errpos = NULL;
    int g = gnutls_init(&t->session,
                        (t->server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL);
    if (g < 0) {
        vbd_error_setf(err, ENOMEM, "TLS: cannot create a session: %s", gnutls_strerror(g));
        free(t->in);
        free(t->out);
        free(t);
        return NULL;
    }
    t->creds = c;
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
    if ((g = gnutls_priority_set_direct(t->session, c->priority, &errpos)) < 0)
        goto fail;
    switch (c->kind) {
    case CREDS_X509:
        g = gnutls_credentials_set(t->session, GNUTLS_CRD_CERTIFICATE, c->x509);
        if (g >= 0 && t->server && c->verify_peer)
            gnutls_certificate_server_set_request(t->session, GNUTLS_CERT_REQUIRE);
        break;
    case CREDS_PSK:
        g = gnutls_credentials_set(t->session, GNUTLS_CRD_PSK,
                                   t->server ? (void *)c->psk_server : (void *)c->psk_client);
        break;
    case CREDS_ANON:
        g = gnutls_credentials_set(t->session, GNUTLS_CRD_ANON,
                                   t->server ? (void *)c->anon_server : (void *)c->anon_client);
        break;
    }
    if (g < 0)
        goto fail;
    if (!t->server && hostname && *hostname) {
        t->hostname = strdup(hostname);
        unsigned char addr[16];
        /* SNI carries DNS names only (RFC 6066) */
        if (!inet_pton(AF_INET, hostname, addr) && !inet_pton(AF_INET6, hostname, addr) &&
            (g = gnutls_server_name_set(t->session, GNUTLS_NAME_DNS, hostname, strlen(hostname))) < 0)
            goto fail;
    }
    if (c->verify_peer)
        gnutls_session_set_verify_cert(t->session, t->server ? NULL : t->hostname, 0);
    gnutls_transport_set_ptr(t->session, t);
    gnutls_transport_set_push_function(t->session, tls_push);
    gnutls_transport_set_pull_function(t->session, tls_pull);
    gnutls_transport_set_pull_timeout_function(t->session, tls_pull_timeout);
    gnutls_handshake_set_timeout(t->session, 0); /* ours: t->timer */
    return t;
fail:
    vbd_error_setf(err, EINVAL, "TLS: cannot set up a session with %s: %s", c->what, gnutls_strerror(g));
    vbd_tls_free(t);
    return NULL;
}

void vbd_tls_free(struct vbd_tls *t)
{
    if (!t)
        return;
    gnutls_deinit(t->session);
    vbd_tls_creds_unref(t->creds);
    free(t->hostname);
    free(t->in);
    free(t->out);
    free(t);
}

/* Wait for what the interrupted GnuTLS call needs. */
static int tls_wait(struct vbd_tls *t)
{
    int p = vbd_co_poll(t->fd, gnutls_record_get_direction(t->session) ? POLLOUT : POLLIN);
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
        int g = gnutls_handshake(t->session);
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
        if (!gnutls_error_is_fatal(g))
            continue; /* a warning alert */
        t->failed = true;
        /* tell the peer why (GnuTLS does not on its own); one try, no waiting */
        if (g != GNUTLS_E_FATAL_ALERT_RECEIVED && g != GNUTLS_E_PREMATURE_TERMINATION &&
            g != GNUTLS_E_PULL_ERROR && g != GNUTLS_E_PUSH_ERROR) {
            t->nowait = true;
            gnutls_alert_send_appropriate(t->session, g);
            t->nowait = false;
        }
        if (g == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
            gnutls_datum_t out = {NULL, 0};
            unsigned st = gnutls_session_get_verify_cert_status(t->session);
            gnutls_certificate_verification_status_print(st, GNUTLS_CRT_X509, &out, 0);
            for (size_t n = out.data ? strlen((char *)out.data) : 0; n && out.data[n - 1] == ' '; n--)
                out.data[n - 1] = 0;
            vbd_error_setf(err, EACCES, "TLS handshake failed: the %s's certificate is not accepted: %s",
                           peer, out.data ? (char *)out.data : "verification failed");
            gnutls_free(out.data);
            return -EACCES;
        }
        const char *psk_hint = t->creds->kind != CREDS_PSK ? ""
                               : t->server ? " (the client's PSK username or key is not in keys.psk)"
                                           : " (the server does not know this PSK username or key)";
        if (g == GNUTLS_E_FATAL_ALERT_RECEIVED) {
            const char *a = gnutls_alert_get_name(gnutls_alert_get(t->session));
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
        vbd_error_setf(err, EPROTO, "TLS handshake failed: %s%s", gnutls_strerror(g),
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
    char *d = gnutls_session_get_desc(t->session);
    const char *kx = gnutls_kx_get_name(gnutls_kx_get(t->session));
    snprintf(buf, len, "%s, key exchange %s", d ? d : "?", kx ? kx : "?");
    gnutls_free(d);
    return buf;
}

char *vbd_tls_peer_dn(struct vbd_tls *t, struct vbd_error **err)
{
    unsigned n = 0;
    const gnutls_datum_t *certs = gnutls_certificate_type_get(t->session) == GNUTLS_CRT_X509
                                      ? gnutls_certificate_get_peers(t->session, &n)
                                      : NULL;
    if (!certs || !n) {
        vbd_error_setf(err, EACCES, "the %s sent no certificate", t->server ? "client" : "server");
        return NULL;
    }
    gnutls_x509_crt_t crt;
    char *dn = NULL;
    size_t len = 0;
    int g = gnutls_x509_crt_init(&crt);
    if (g < 0) {
        vbd_error_setf(err, ENOMEM, "cannot read the peer's certificate: %s", gnutls_strerror(g));
        return NULL;
    }
    /* the first certificate is the peer's own; the DN as QEMU's authz sees it */
    if ((g = gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER)) >= 0 &&
        (g = gnutls_x509_crt_get_dn(crt, NULL, &len)) == GNUTLS_E_SHORT_MEMORY_BUFFER) {
        len++;
        if (!(dn = malloc(len)))
            g = GNUTLS_E_MEMORY_ERROR;
        else
            g = gnutls_x509_crt_get_dn(crt, dn, &len);
    }
    gnutls_x509_crt_deinit(crt);
    if (g < 0 || !dn) {
        vbd_error_setf(err, EACCES, "cannot read the distinguished name of the peer's certificate: %s",
                       gnutls_strerror(g < 0 ? g : GNUTLS_E_INTERNAL_ERROR));
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
    gnutls_alert_send(t->session, GNUTLS_AL_FATAL, GNUTLS_A_ACCESS_DENIED);
    t->nowait = false;
    t->failed = true;
}

void vbd_tls_bye(struct vbd_tls *t)
{
    if (!t || t->failed)
        return;
    t->nowait = true; /* one try */
    gnutls_bye(t->session, GNUTLS_SHUT_WR);
    t->nowait = false;
}

int vbd_tls_try_send(struct vbd_tls *t, const void *buf, size_t len)
{
    if (t->failed)
        return -EIO;
    t->nowait = true;
    ssize_t r = gnutls_record_send(t->session, buf, len);
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
        const char *a = gnutls_alert_get_name(gnutls_alert_get(t->session));
        snprintf(t->error, sizeof(t->error), "the %s ended the TLS session (alert: %s)",
                 t->server ? "client" : "server", a ? a : "?");
    } else {
        snprintf(t->error, sizeof(t->error), "TLS %s failed: %s", op, gnutls_strerror((int)g));
    }
    vbd_debug("%s", t->error);
    return -EIO;
}

const char *vbd_tls_error(const struct vbd_tls *t)
{
    return t && t->error[0] ? t->error : NULL;
}

static ssize_t tls_recv(struct vbd_tls *t, void *buf, size_t len)
{
    for (;;) {
        if (t->rd_shut)
            return -ECONNRESET;
        if (t->failed)
            return -EIO;
        ssize_t g = gnutls_record_recv(t->session, buf, len);
        if (g > 0)
            return g;
        if (g == 0)
            return -ECONNRESET; /* close_notify */
        if (g == GNUTLS_E_AGAIN || g == GNUTLS_E_INTERRUPTED) {
            if (t->rd_shut)
                return -ECONNRESET;
            int p = tls_wait(t);
            if (p < 0)
                return p;
            continue;
        }
        if (!gnutls_error_is_fatal((int)g))
            continue; /* warning alert, renegotiation request (refused) */
        return tls_error(t, g, "receive");
    }
}

/* Sends buf whole (possibly several records); corked by the caller. */
static int tls_send_all(struct vbd_tls *t, const uint8_t *buf, size_t len)
{
    while (len) {
        if (t->failed)
            return -EIO;
        ssize_t g = gnutls_record_send(t->session, buf, len);
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
        if (g == 0 || !gnutls_error_is_fatal((int)g))
            continue;
        return tls_error(t, g, "send");
    }
    return 0;
}

static int tls_sendv_records(struct vbd_tls *t, const struct iovec *iov, int iovcnt);

/* Everything in iov, as records gathered in t->out and sent together. */
static int tls_sendv(struct vbd_tls *t, const struct iovec *iov, int iovcnt)
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

void vbd_chan_shutdown(struct vbd_chan *ch, int how)
{
    if (ch->tls && (how == SHUT_RD || how == SHUT_RDWR))
        ch->tls->rd_shut = true;
    shutdown(ch->fd, how);
}

int vbd_chan_recv_full(struct vbd_chan *ch, void *buf, size_t len)
{
    if (!ch->tls)
        return vbd_co_recv_full(ch->fd, buf, len);
    while (len) {
        ssize_t r = tls_recv(ch->tls, buf, len);
        if (r < 0)
            return (int)r;
        buf = (char *)buf + r;
        len -= (size_t)r;
    }
    return 0;
}

int vbd_chan_recvv_full(struct vbd_chan *ch, struct iovec *iov, int iovcnt)
{
    if (!ch->tls)
        return plain_recvv_full(ch->fd, iov, iovcnt);
    for (int i = 0; i < iovcnt; i++) {
        int rc = vbd_chan_recv_full(ch, iov[i].iov_base, iov[i].iov_len);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int vbd_chan_send_full(struct vbd_chan *ch, const void *buf, size_t len)
{
    if (!ch->tls)
        return vbd_co_send_full(ch->fd, buf, len);
    struct iovec one = {(void *)buf, len};
    return tls_sendv(ch->tls, &one, 1);
}

int vbd_chan_sendv_full(struct vbd_chan *ch, struct iovec *iov, int iovcnt)
{
    if (!ch->tls)
        return vbd_co_sendv_full(ch->fd, iov, iovcnt);
    return tls_sendv(ch->tls, iov, iovcnt);
}

#else /* !VBD_HAVE_GNUTLS: credentials cannot be created, so no session ever exists */

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

void vbd_chan_shutdown(struct vbd_chan *ch, int how)
{
    shutdown(ch->fd, how);
}
int vbd_chan_recv_full(struct vbd_chan *ch, void *buf, size_t len)
{
    return vbd_co_recv_full(ch->fd, buf, len);
}
int vbd_chan_recvv_full(struct vbd_chan *ch, struct iovec *iov, int iovcnt)
{
    return plain_recvv_full(ch->fd, iov, iovcnt);
}
int vbd_chan_send_full(struct vbd_chan *ch, const void *buf, size_t len)
{
    return vbd_co_send_full(ch->fd, buf, len);
}
int vbd_chan_sendv_full(struct vbd_chan *ch, struct iovec *iov, int iovcnt)
{
    return vbd_co_sendv_full(ch->fd, iov, iovcnt);
}

#endif
