/* SPDX-License-Identifier: MIT */
/*
 * TLS credentials objects (--object tls-creds-x509/-psk/-anon, as QEMU's
 * crypto/tlscreds.c): the registry, creation from options, the client
 * credentials an nbds:// URI gives, the priority string. The x509 and PSK
 * files are read by tls-creds-x509.c and tls-creds-psk.c.
 */
#include "tls-internal.h"

#include "util/dynlib.h"
#include "vbd/alloc.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"

#include <assert.h>
#include <dlfcn.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char *const vbd_tls_kind_names[] = {"tls-creds-x509", "tls-creds-psk", "tls-creds-anon"};

static struct vbd_tls_creds *registry;

struct tlslib tlslib;

static const char *tlslib_resolve(void *h)
{
#define X(f) \
    if (!(*(void **)&tlslib.f = dlsym(h, #f))) \
        return #f;
    TLSLIB_FUNCS(X)
#undef X
    /* gnutls_free is a variable holding the function (gnutls_malloc's partner) */
    gnutls_free_function *free_fn = dlsym(h, "gnutls_free");
    if (!free_fn || !*free_fn)
        return "gnutls_free";
    tlslib.free = *free_fn;
    return NULL;
}

static struct vbd_dynlib tlslib_so = {
    .what = "TLS",
    .soname = "libgnutls.so.30",
    .resolve = tlslib_resolve,
};

int tls_lib_load(struct vbd_error **err)
{
    return vbd_dynlib_load(&tlslib_so, err);
}

bool vbd_tls_creds_type(const char *qom_type)
{
    for (size_t i = 0; i < sizeof(vbd_tls_kind_names) / sizeof(vbd_tls_kind_names[0]); i++)
        if (!strcmp(qom_type, vbd_tls_kind_names[i]))
            return true;
    return false;
}

static void creds_free(struct vbd_tls_creds *c)
{
    if (c->x509)
        tlslib.gnutls_certificate_free_credentials(c->x509);
    if (c->psk_server)
        tlslib.gnutls_psk_free_server_credentials(c->psk_server);
    if (c->psk_client)
        tlslib.gnutls_psk_free_client_credentials(c->psk_client);
    if (c->anon_server)
        tlslib.gnutls_anon_free_server_credentials(c->anon_server);
    if (c->anon_client)
        tlslib.gnutls_anon_free_client_credentials(c->anon_client);
    if (c->dh)
        tlslib.gnutls_dh_params_deinit(c->dh);
    free(c->id);
    free(c->dir);
    free(c->username);
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

int tls_creds_file(const struct vbd_tls_creds *c, const char *dir, const char *name, bool required,
                   char **path, struct vbd_error **err)
{
    *path = vbd_xasprintf("%s/%s", dir, name);
    struct stat st;
    if (stat(*path, &st) == 0)
        return 1;
    int e = errno;
    if (e == ENOENT && !required)
        return 0;
    (void)c;
    vbd_error_setf(err, e, "Unable to access credentials %s: %s", *path, strerror(e)); /* QEMU's words */
    return -1;
}

int tls_load_dh(struct vbd_tls_creds *c, const char *dir, struct vbd_error **err)
{
    char *path = NULL;
    int have = tls_creds_file(c, dir, "dh-params.pem", false, &path, err);
    if (have <= 0) {
        free(path);
        return have;
    }
    gnutls_datum_t d = {NULL, 0};
    int rc = tlslib.gnutls_load_file(path, &d);
    if (rc >= 0 && (rc = tlslib.gnutls_dh_params_init(&c->dh)) >= 0)
        rc = tlslib.gnutls_dh_params_import_pkcs3(c->dh, &d, GNUTLS_X509_FMT_PEM);
    tlslib.free(d.data);
    if (rc < 0)
        vbd_error_setf(err, EINVAL, "%s: cannot load DH parameters %s: %s", c->what, path,
                       tlslib.gnutls_strerror(rc));
    free(path);
    return rc < 0 ? -1 : 1;
}

static struct vbd_tls_creds *creds_alloc(enum creds_kind kind, enum vbd_tls_endpoint endpoint, const char *id,
                                         const char *what)
{
    struct vbd_tls_creds *c = vbd_xcalloc(1, sizeof(*c));
    c->id = vbd_xstrdup(id);
    c->what = what ? vbd_xstrdup(what) : vbd_xasprintf("%s '%s'", vbd_tls_kind_names[kind], id);
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
    c->priority = vbd_xasprintf("%s%s", priority ? priority : def, extra[c->kind]);
    gnutls_priority_t pc;
    const char *errpos = NULL;
    int g = tlslib.gnutls_priority_init(&pc, c->priority, &errpos);
    if (g < 0) {
        vbd_error_setf(err, EINVAL, "%s: bad priority string '%s' (at '%s'): %s", c->what, c->priority,
                       errpos ? errpos : "", tlslib.gnutls_strerror(g));
        return -1;
    }
    tlslib.gnutls_priority_deinit(pc);
    return 0;
}

int vbd_tls_creds_add(const char *qom_type, struct json_object *opts, struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the registry is the main thread's */
    static const char *const endpoints[] = {"server", "client", NULL};
    char *id = NULL, *dir = NULL, *username = NULL, *priority = NULL, *psk = NULL;
    int endpoint = VBD_TLS_CLIENT;
    bool verify = true;
    struct vbd_tls_creds *c = NULL;
    int kind = -1;
    for (int i = 0; i < 3; i++)
        if (!strcmp(qom_type, vbd_tls_kind_names[i]))
            kind = i;
    if (kind < 0) {
        vbd_error_setf(err, EINVAL, "unknown TLS credentials type '%s'", qom_type);
        return -EINVAL;
    }
    if (tls_lib_load(err) < 0)
        return -ENOTSUP;
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
        vbd_error_setf(err, EINVAL, "Missing 'dir' property value"); /* QEMU's words */
        goto fail;
    }
    if (kind == CREDS_PSK && username && endpoint == VBD_TLS_SERVER) {
        vbd_error_setf(err, EINVAL, "%s '%s': 'username' is for endpoint=client", qom_type, id);
        goto fail;
    }
    c = creds_alloc((enum creds_kind)kind, (enum vbd_tls_endpoint)endpoint, id, NULL);
    /* PSK and anonymous sessions have no certificates to check */
    c->verify_peer = kind == CREDS_X509 && verify;
    int rc = 0, g = 0;
    switch (c->kind) {
    case CREDS_X509:
        rc = tls_load_x509(c, dir, err);
        break;
    case CREDS_PSK:
        rc = tls_creds_file(c, dir, "keys.psk", true, &psk, err);
        if (rc >= 0)
            rc = tls_load_psk(c, dir, psk, username ? username : "qemu", err);
        break;
    case CREDS_ANON:
        if (c->endpoint == VBD_TLS_SERVER) {
            if ((g = tlslib.gnutls_anon_allocate_server_credentials(&c->anon_server)) >= 0)
                tlslib.gnutls_anon_set_server_known_dh_params(c->anon_server, GNUTLS_SEC_PARAM_MEDIUM);
        } else {
            g = tlslib.gnutls_anon_allocate_client_credentials(&c->anon_client);
        }
        if (g < 0) {
            vbd_error_setf(err, ENOMEM, "%s: %s", c->what, tlslib.gnutls_strerror(g));
            rc = -1;
        }
        break;
    }
    if (rc < 0 || set_priority(c, priority, err) < 0)
        goto fail;
    c->dir = dir;
    c->username = username;
    dir = username = NULL;
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

struct vbd_tls_creds *vbd_tls_creds_new_client(const struct vbd_tls_client_opts *o, const char *who,
                                               struct vbd_error **err)
{
    struct vbd_tls_creds *c = NULL;
    char *dir = NULL, what[4200];
    if (tls_lib_load(err) < 0)
        return NULL;
    if (o->psk_file) {
        char user[256];
        const char *username = o->username;
        if (!username) {
            if (tls_login_name(user, sizeof(user)) < 0) {
                vbd_error_setf(err, ENOENT, "%s: no login name for the PSK username (give tls-username=NAME)",
                               who);
                return NULL;
            }
            username = user;
        }
        snprintf(what, sizeof(what), "%s: tls-psk-file=%s", who, o->psk_file);
        c = creds_alloc(CREDS_PSK, VBD_TLS_CLIENT, "tls-psk-file", what);
        struct stat st;
        if (stat(o->psk_file, &st) < 0) {
            vbd_error_setf(err, errno, "%s: %s", what, strerror(errno));
            goto fail;
        }
        if (tls_load_psk(c, NULL, o->psk_file, username, err) < 0)
            goto fail;
    } else {
        /* like libnbd: the given directory, else its default ones, else the system's CAs */
        dir = o->cert_dir ? vbd_xstrdup(o->cert_dir) : tls_default_cert_dir();
        if (dir)
            snprintf(what, sizeof(what), "%s: tls-certificates=%s", who, dir);
        else
            snprintf(what, sizeof(what), "%s: the system's trusted CAs", who);
        c = creds_alloc(CREDS_X509, VBD_TLS_CLIENT, dir ? "tls-certificates" : "system-ca", what);
        c->verify_peer = o->verify_peer;
        if (dir) {
            if (tls_load_x509(c, dir, err) < 0)
                goto fail;
        } else {
            int g = tlslib.gnutls_certificate_allocate_credentials(&c->x509);
            if (g >= 0)
                g = tlslib.gnutls_certificate_set_x509_system_trust(c->x509);
            if (g <= 0) {
                vbd_error_setf(
                    err, ENOENT,
                    "%s: no system CA certificates%s%s (give tls-certificates=DIR, tls-psk-file=FILE "
                    "or tls-creds=ID)",
                    who, g < 0 ? ": " : "", g < 0 ? tlslib.gnutls_strerror(g) : "");
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
    return vbd_tls_kind_names[c->kind];
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
        if (c->endpoint != want) { /* QEMU's words, as its NBD server and client say them */
            vbd_error_setf(err, EINVAL, "Expecting TLS credentials with a %s endpoint",
                           want == VBD_TLS_SERVER ? "server" : "client");
            return NULL;
        }
        __atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
        return c;
    }
    (void)who;
    vbd_error_setf(err, ENOENT, "No TLS credentials with id '%s'", id);
    return NULL;
}

void vbd_tls_creds_remove_all(void)
{
    assert(vbd_thread_is_main()); /* the registry is the main thread's */
    while (registry) {
        struct vbd_tls_creds *c = registry;
        registry = c->next;
        vbd_tls_creds_unref(c);
    }
}

int vbd_tls_creds_remove(const char *id, struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the registry is the main thread's */
    for (struct vbd_tls_creds **pp = &registry; *pp; pp = &(*pp)->next) {
        struct vbd_tls_creds *c = *pp;
        if (strcmp(c->id, id))
            continue;
        if (__atomic_load_n(&c->refs, __ATOMIC_ACQUIRE) > 1) {
            vbd_error_setf(err, EBUSY, "%s is in use (by the NBD server, an nbd node or a TLS session)", c->what);
            return -EBUSY;
        }
        *pp = c->next;
        vbd_tls_creds_unref(c);
        return 0;
    }
    vbd_error_setf(err, ENOENT, "object '%s' not found", id);
    return -ENOENT;
}

const char *vbd_tls_creds_next(const char *prev)
{
    struct vbd_tls_creds *c = registry;
    if (prev) {
        while (c && strcmp(c->id, prev))
            c = c->next;
        c = c ? c->next : NULL;
    }
    return c ? c->id : NULL;
}

struct json_object *vbd_tls_creds_props(const char *id, const char **qom_type)
{
    struct vbd_tls_creds *c = registry;
    while (c && strcmp(c->id, id))
        c = c->next;
    if (!c)
        return NULL;
    *qom_type = vbd_tls_kind_names[c->kind];
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "endpoint", json_object_new_string(c->endpoint == VBD_TLS_SERVER ? "server" : "client"));
    if (c->dir)
        json_object_object_add(o, "dir", json_object_new_string(c->dir));
    if (c->kind == CREDS_X509)
        json_object_object_add(o, "verify-peer", json_object_new_boolean(c->verify_peer));
    if (c->kind == CREDS_PSK && c->username)
        json_object_object_add(o, "username", json_object_new_string(c->username));
    json_object_object_add(o, "loaded", json_object_new_boolean(true));
    return o;
}
