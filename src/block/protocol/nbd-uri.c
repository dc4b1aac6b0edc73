/* SPDX-License-Identifier: MIT */
/*
 * NBD URIs (the NBD URI spec: nbd://, nbds://, nbd+unix://, nbds+unix://,
 * with libnbd's query parameters) and QEMU's older nbd:HOST:PORT and
 * nbd:unix:PATH filenames, parsed into the nbd driver's options; and the
 * nbds:// filename an open node reports.
 */
#include "nbd-uri.h"

#include "vbd/alloc.h"
#include "vbd/error.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* RFC 3986 percent-decoding of s[0, len): a new string, or NULL for a bad escape or an encoded NUL. */
static char *uri_decode(const char *s, size_t len)
{
    char *out = vbd_xmalloc(len + 1), *o = out;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') {
            *o++ = s[i];
            continue;
        }
        int hi = len - i >= 3 ? hexval(s[i + 1]) : -1, lo = len - i >= 3 ? hexval(s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(out);
            return NULL;
        }
        *o++ = (char)(hi << 4 | lo);
        i += 2;
    }
    *o = 0;
    return out;
}

/* The query parameters an NBD URI may carry: libnbd's, plus tls-creds naming an --object (QEMU's way). */
static const char *const uri_params[] = {"socket",       "tls-creds",    "tls-certificates", "tls-psk-file",
                                         "tls-username", "tls-hostname", "tls-verify-peer",  NULL};

/* scheme://[user@]host[:port][/export][?key=value&...] (the NBD URI spec, libnbd's query parameters). */
static int parse_url(const char *uri, size_t scheme_len, struct json_object *opts, struct vbd_error **err)
{
    bool tls = !strncasecmp(uri, "nbds", 4);
    bool unix_sock = scheme_len > 5 && !strncasecmp(uri + scheme_len - 5, "+unix", 5);
    const char *a = uri + scheme_len + 3;
    size_t alen = strcspn(a, "/?#");
    const char *hp = a, *p;
    char *user = NULL, *host = NULL, *port = NULL, *export = NULL, *vals[7] = {NULL};
    int rc = -EINVAL;
    const char *at = memrchr(a, '@', alen);
    if (at) {
        if (!(user = uri_decode(a, (size_t)(at - a))))
            goto bad_escape;
        hp = at + 1;
    }
    size_t hlen = (size_t)(a + alen - hp);
    const char *colon = NULL;
    if (hlen && *hp == '[') { /* IPv6 literal */
        const char *rb = memchr(hp, ']', hlen);
        if (!rb || (rb + 1 < hp + hlen && rb[1] != ':')) {
            vbd_error_setf(err, EINVAL,
                           "NBD URI '%s': bad IPv6 address (expected [ADDRESS] or [ADDRESS]:PORT)", uri);
            goto out;
        }
        host = vbd_xstrndup(hp + 1, (size_t)(rb - hp - 1));
        colon = rb + 1 < hp + hlen ? rb + 1 : NULL;
    } else {
        colon = memchr(hp, ':', hlen);
        if (!(host = uri_decode(hp, colon ? (size_t)(colon - hp) : hlen)))
            goto bad_escape;
    }
    if (colon) {
        size_t pl = (size_t)(hp + hlen - colon - 1);
        char *end = NULL;
        port = vbd_xstrndup(colon + 1, pl);
        unsigned long pn = strtoul(port, &end, 10);
        if (!pl || strspn(port, "0123456789") != pl || pn == 0 || pn > 65535) {
            vbd_error_setf(err, EINVAL, "NBD URI '%s': bad port '%s'", uri, port);
            goto out;
        }
    }
    p = a + alen;
    if (*p == '/') {
        size_t el = strcspn(p + 1, "?#");
        if (!(export = uri_decode(p + 1, el)))
            goto bad_escape;
        p += 1 + el;
    }
    if (*p == '?') {
        const char *q = p + 1, *qend = q + strcspn(q, "#");
        while (q < qend) {
            size_t il = strcspn(q, "&");
            if (q + il > qend)
                il = (size_t)(qend - q);
            const char *eq = memchr(q, '=', il);
            char *key = il ? uri_decode(q, eq ? (size_t)(eq - q) : il) : NULL;
            if (il && !key)
                goto bad_escape;
            int k = -1;
            for (int i = 0; key && uri_params[i]; i++)
                if (!strcmp(key, uri_params[i]))
                    k = i;
            if (key && k < 0) {
                vbd_error_setf(err, EINVAL,
                               "NBD URI '%s': unknown query parameter '%s' (known: socket, tls-certificates, "
                               "tls-psk-file, tls-username, tls-hostname, tls-verify-peer, tls-creds)",
                               uri, key);
                free(key);
                goto out;
            }
            if (k >= 0) {
                if (vals[k] || !eq || eq + 1 == q + il) {
                    vbd_error_setf(err, EINVAL, "NBD URI '%s': query parameter '%s' %s", uri, key,
                                   vals[k] ? "is given twice" : "needs a value");
                    free(key);
                    goto out;
                }
                if (!(vals[k] = uri_decode(eq + 1, (size_t)(q + il - eq - 1)))) {
                    free(key);
                    goto bad_escape;
                }
            }
            free(key);
            q += il + (q + il < qend);
        }
    }
    if (unix_sock && (*host || port)) {
        vbd_error_setf(err, EINVAL, "NBD URI '%s': %.*s takes no host or port (the socket is ?socket=PATH)",
                       uri, (int)scheme_len, uri);
        goto out;
    }
    if (unix_sock != !!vals[0]) {
        vbd_error_setf(err, EINVAL, "NBD URI '%s': %s", uri,
                       unix_sock ? "nbd+unix needs ?socket=PATH" : "socket= is for nbd+unix:// URIs");
        goto out;
    }
    for (int i = 1; !tls && uri_params[i]; i++)
        if (vals[i]) {
            vbd_error_setf(err, EINVAL,
                           "NBD URI '%s': %s= is for nbds:// URIs (an nbd:// URI never uses TLS)", uri,
                           uri_params[i]);
            goto out;
        }
    if (unix_sock) {
        json_object_object_add(opts, "server.type", json_object_new_string("unix"));
        json_object_object_add(opts, "server.path", json_object_new_string(vals[0]));
    } else {
        json_object_object_add(opts, "server.type", json_object_new_string("inet"));
        json_object_object_add(opts, "server.host", json_object_new_string(*host ? host : "localhost"));
        json_object_object_add(opts, "server.port", json_object_new_string(port ? port : "10809"));
    }
    json_object_object_add(opts, "export", json_object_new_string(export ? export : ""));
    if (tls) {
        json_object_object_add(opts, "tls", json_object_new_string("on"));
        for (int i = 1; uri_params[i]; i++)
            if (vals[i])
                json_object_object_add(opts, uri_params[i], json_object_new_string(vals[i]));
        /* libnbd: the URI's user is the PSK username */
        if (user && *user && vals[3] && !vals[4])
            json_object_object_add(opts, "tls-username", json_object_new_string(user));
    }
    rc = 0;
    goto out;
bad_escape:
    vbd_error_setf(err, EINVAL, "NBD URI '%s': bad percent-encoding", uri);
out:
    for (int i = 0; i < 7; i++)
        free(vals[i]);
    free(user);
    free(host);
    free(port);
    free(export);
    return rc;
}

int nbd_uri_parse(const char *uri, struct json_object *opts, struct vbd_error **err)
{
    static const char *const schemes[] = {"nbd",      "nbd+tcp",   "nbd+unix", "nbds",
                                          "nbds+tcp", "nbds+unix", NULL};
    const char *sep = strstr(uri, "://");
    if (sep) {
        size_t sl = (size_t)(sep - uri);
        for (int i = 0; schemes[i]; i++)
            if (strlen(schemes[i]) == sl && !strncasecmp(uri, schemes[i], sl))
                return parse_url(uri, sl, opts, err);
        vbd_error_setf(err, EINVAL,
                       "'%s' is not an NBD URI (schemes: nbd, nbd+tcp, nbd+unix, nbds, nbds+tcp, nbds+unix)",
                       uri);
        return -EINVAL;
    }
    /* QEMU's old forms: nbd:unix:PATH[:exportname=E], nbd:HOST:PORT[:exportname=E] */
    char *dup = vbd_xstrdup(uri);
    int rc = -EINVAL;
    if (!strncmp(dup, "nbd:", 4)) {
        char *p = dup + 4, *ex = strstr(p, ":exportname=");
        if (ex) {
            *ex = 0;
            json_object_object_add(opts, "export", json_object_new_string(ex + 12));
        }
        if (!strncmp(p, "unix:", 5)) {
            json_object_object_add(opts, "server.type", json_object_new_string("unix"));
            json_object_object_add(opts, "server.path", json_object_new_string(p + 5));
        } else {
            char *colon = strrchr(p, ':');
            if (!colon) {
                vbd_error_setf(err, EINVAL, "NBD filename '%s': expected nbd:HOST:PORT or nbd:unix:PATH",
                               uri);
                goto out;
            }
            *colon = 0;
            json_object_object_add(opts, "server.type", json_object_new_string("inet"));
            json_object_object_add(opts, "server.host", json_object_new_string(p));
            json_object_object_add(opts, "server.port", json_object_new_string(colon + 1));
        }
    } else {
        vbd_error_setf(err, EINVAL, "'%s' is not an NBD URI", uri);
        goto out;
    }
    rc = 0;
out:
    free(dup);
    return rc;
}

/* Appends s, percent-encoding what would end or split a query value or a path. */
static void uri_put(char *buf, size_t size, size_t *len, const char *str, bool value)
{
    for (const unsigned char *c = (const unsigned char *)str; *c && *len + 4 < size; c++) {
        if (*c > 0x20 && *c < 0x7f && !strchr(value ? "%&#+?" : "%#?", *c))
            buf[(*len)++] = (char)*c;
        else
            *len += (size_t)snprintf(buf + *len, size - *len, "%%%02X", *c);
    }
    buf[*len] = 0;
}

void nbd_uri_tls_filename(char *buf, size_t size, const struct nbd_uri_addr *s, const char *q[][2], size_t nq)
{
    size_t len = 0;
    bool v6 = s->host && strchr(s->host, ':');
    len += (size_t)snprintf(buf, size, "%s://%s%s%s%s%s/", s->path ? "nbds+unix" : "nbds", v6 ? "[" : "",
                            s->host ? s->host : "", v6 ? "]" : "", s->host ? ":" : "",
                            s->port && s->host ? s->port : "");
    if (len >= size) {
        buf[size - 1] = 0;
        return;
    }
    uri_put(buf, size, &len, s->export, false);
    char sep = '?';
    for (size_t i = 0; i <= nq; i++) {
        const char *key = i ? q[i - 1][0] : "socket", *val = i ? q[i - 1][1] : s->path;
        if (!val || len + strlen(key) + 3 >= size)
            continue;
        len += (size_t)snprintf(buf + len, size - len, "%c%s=", sep, key);
        uri_put(buf, size, &len, val, true);
        sep = '&';
    }
}
