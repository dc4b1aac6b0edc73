/* SPDX-License-Identifier: MIT */
/*
 * Options as json-c objects. keyval (QEMU's -blockdev syntax) and JSON
 * arrive in the same shape; typed "take" accessors convert strings so
 * "size=1G" and {"size": 1073741824} are the same to a driver.
 */
#include "vbd/options.h"

#include "vbd/alloc.h"
#include "vbd/error.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int keyval_set(struct json_object *root, const char *key, size_t klen, struct json_object *val,
                      struct vbd_error **err)
{
    struct json_object *obj = root;
    const char *p = key, *end = key + klen;
    for (;;) {
        const char *dot = memchr(p, '.', end - p);
        size_t len = (dot ? dot : end) - p;
        char name[256];
        bool valid = len > 0 && len < sizeof(name);
        for (size_t i = 0; valid && i < len; i++) {
            char ch = p[i];
            valid = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
                    ch == '_';
        }
        if (!valid) {
            vbd_error_setf(err, EINVAL, "Invalid parameter '%.*s'", (int)klen, key);
            goto fail;
        }
        memcpy(name, p, len);
        name[len] = 0;
        struct json_object *cur = NULL;
        bool exists = json_object_object_get_ex(obj, name, &cur);
        if (!dot) {
            if (exists) {
                vbd_error_setf(err, EINVAL, "Parameter '%.*s' is given more than once", (int)klen, key);
                goto fail;
            }
            json_object_object_add(obj, name, val);
            return 0;
        }
        if (exists && !json_object_is_type(cur, json_type_object)) {
            vbd_error_setf(err, EINVAL, "Parameter '%.*s' conflicts with '%s'", (int)klen, key, name);
            goto fail;
        }
        if (!exists) {
            cur = json_object_new_object();
            json_object_object_add(obj, name, cur);
        }
        obj = cur;
        p = dot + 1;
    }
fail:
    json_object_put(val);
    return -EINVAL;
}

/* A value up to the next single ',' (",," is a literal comma) into val;
 * *p is left on that ',' or the end. Returns the value's length. */
static size_t take_value(const char **p, char *val)
{
    const char *q = *p;
    size_t n = 0;
    while (*q) {
        if (*q == ',') {
            if (q[1] != ',')
                break;
            q++; /* the second ',' is copied below */
        }
        val[n++] = *q++;
    }
    *p = q;
    return n;
}

static struct json_object *keyval_parse(const char *str, const char *implied_key, bool flags_allowed,
                                        struct vbd_error **err)
{
    struct json_object *root = json_object_new_object();
    const char *p = str;
    bool first = true;
    size_t cap = strlen(str) + 1;
    char *val = vbd_xmalloc(cap);
    while (*p) {
        /* key: up to '=' or ',' (keys cannot contain either) */
        const char *k = p;
        while (*p && *p != '=' && *p != ',')
            p++;
        size_t klen = p - k;
        const char *key = k;
        bool has_value = *p == '=';
        size_t vlen = 0;
        if (has_value) {
            p++;
            vlen = take_value(&p, val);
        } else if (first && implied_key) {
            /* leading bare value belongs to the implied key, commas doubled */
            p = k;
            vlen = take_value(&p, val);
            key = implied_key;
            klen = strlen(implied_key);
            has_value = true;
        }
        val[vlen] = 0;
        /* QEMU's keyval takes a bare "help" or "?" as a request for help
         * (before an implied key); qsd's --blockdev, --export, --monitor
         * and --nbd-server have none to give */
        size_t bare = (size_t)(p - k); /* the word without '=': k[0..bare) */
        if (!flags_allowed && (!has_value || key == implied_key) &&
            ((bare == 4 && !strncmp(k, "help", 4)) || (bare == 1 && *k == '?'))) {
            vbd_error_setf(err, EINVAL, "Help is not available for this option");
            goto fail;
        }
        if (!has_value && !flags_allowed && klen) {
            vbd_error_setf(err, EINVAL, "Expected '=' after parameter '%.*s'", (int)klen, key); /* QEMU's keyval */
            goto fail;
        }
        if (klen == 0) {
            vbd_error_setf(err, EINVAL, "Invalid parameter '' in '%s'", str);
            goto fail;
        }
        /* A bare word after the first is a flag ("ro", "writethru"): value "on" (QemuOpts). */
        struct json_object *jv = json_object_new_string(has_value ? val : "on");
        if (keyval_set(root, key, klen, jv, err) < 0)
            goto fail;
        first = false;
        if (*p == ',')
            p++;
    }
    free(val);
    return root;
fail:
    free(val);
    json_object_put(root);
    return NULL;
}

/* A "\u0000" escape in JSON text: json-c keeps the string past it, but
 * every key and string is read as a C string that ends there
 * ('json:{"filename": "a.img\u0000x"}' would name a.img; QEMU keeps the
 * bytes C0 80 instead). An escape is a backslash and the character after
 * it: stepping over each whole escape finds "\u0000" only where it is one. */
static bool has_nul_escape(const char *p)
{
    for (; *p; p++)
        if (*p == '\\') {
            if (p[1] == 'u' && !strncmp(p + 2, "0000", 4))
                return true;
            if (!*++p)
                break;
        }
    return false;
}

struct json_object *vbd_json_parse_object(const char *str, struct vbd_error **err)
{
    if (strncmp(str, "json:", 5) == 0)
        str += 5;
    if (has_nul_escape(str)) {
        vbd_error_setf(err, EINVAL, "Invalid JSON '%s': U+0000 (NUL) in a string", str);
        return NULL;
    }
    enum json_tokener_error jerr;
    struct json_object *o = json_tokener_parse_verbose(str, &jerr);
    if (!o) {
        vbd_error_setf(err, EINVAL, "Invalid JSON '%s': %s", str, json_tokener_error_desc(jerr));
        return NULL;
    }
    if (!json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        vbd_error_setf(err, EINVAL, "Invalid JSON '%s': expected an object", str);
        return NULL;
    }
    return o;
}

struct json_object *vbd_keyval_parse(const char *str, const char *implied_key, struct vbd_error **err)
{
    return keyval_parse(str, implied_key, true, err);
}

static struct json_object *opts_parse(const char *str, const char *implied_key, bool flags_allowed,
                                      struct vbd_error **err)
{
    const char *s = str;
    while (isspace((unsigned char)*s))
        s++;
    if (*s == '{' || strncmp(s, "json:", 5) == 0)
        return vbd_json_parse_object(s, err);
    return keyval_parse(str, implied_key, flags_allowed, err);
}

struct json_object *vbd_opts_parse(const char *str, const char *implied_key, struct vbd_error **err)
{
    return opts_parse(str, implied_key, true, err);
}

struct json_object *vbd_opts_parse_strict(const char *str, const char *implied_key, struct vbd_error **err)
{
    return opts_parse(str, implied_key, false, err);
}

/* Find the parent object of a dotted path and the leaf name. */
static struct json_object *path_parent(struct json_object *opts, const char *path, char *leaf, size_t leafsz)
{
    struct json_object *obj = opts;
    const char *p = path;
    for (;;) {
        const char *dot = strchr(p, '.');
        if (!dot) {
            snprintf(leaf, leafsz, "%s", p);
            return obj;
        }
        char name[256];
        size_t len = dot - p;
        if (len >= sizeof(name))
            return NULL;
        memcpy(name, p, len);
        name[len] = 0;
        struct json_object *next;
        if (!json_object_object_get_ex(obj, name, &next) || !json_object_is_type(next, json_type_object)) {
            /* A literal key containing the dot ("cache.direct" in JSON) */
            snprintf(leaf, leafsz, "%s", p);
            return obj;
        }
        obj = next;
        p = dot + 1;
    }
}

struct json_object *vbd_opt_get(struct json_object *opts, const char *path)
{
    if (!opts)
        return NULL;
    char leaf[256];
    struct json_object *parent = path_parent(opts, path, leaf, sizeof(leaf));
    struct json_object *v = NULL;
    if (parent && json_object_object_get_ex(parent, leaf, &v))
        return v;
    if (json_object_object_get_ex(opts, path, &v)) /* flat "a.b" key */
        return v;
    return NULL;
}

/* Remove a taken key, and parents that became empty ("cache": {}). */
static void opt_remove(struct json_object *opts, const char *path)
{
    char leaf[256];
    struct json_object *parent = path_parent(opts, path, leaf, sizeof(leaf));
    struct json_object *v;
    if (parent && json_object_object_get_ex(parent, leaf, &v)) {
        json_object_object_del(parent, leaf);
    } else {
        json_object_object_del(opts, path);
        return;
    }
    const char *dot = strrchr(path, '.');
    if (dot && parent != opts && json_object_object_length(parent) == 0) {
        char up[256];
        snprintf(up, sizeof(up), "%.*s", (int)(dot - path), path);
        opt_remove(opts, up);
    }
}

static const char *scalar_str(struct json_object *v, char *buf, size_t len)
{
    switch (json_object_get_type(v)) {
    case json_type_string:
        return json_object_get_string(v);
    case json_type_boolean:
        return json_object_get_boolean(v) ? "on" : "off";
    case json_type_int:
        snprintf(buf, len, "%lld", (long long)json_object_get_int64(v));
        return buf;
    case json_type_double:
        snprintf(buf, len, "%.17g", json_object_get_double(v));
        return buf;
    default:
        return NULL;
    }
}

int vbd_opt_take_str(struct json_object *opts, const char *key, char **out, struct vbd_error **err)
{
    struct json_object *v = vbd_opt_get(opts, key);
    if (!v)
        return 0;
    char buf[64];
    const char *s = scalar_str(v, buf, sizeof(buf));
    if (!s) {
        vbd_error_setf(err, EINVAL, "Parameter '%s' expects a string", key);
        return -EINVAL;
    }
    *out = vbd_xstrdup(s);
    opt_remove(opts, key);
    return 1;
}

int vbd_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"on", "true", "yes", "1", NULL};
    static const char *const no[] = {"off", "false", "no", "0", NULL};
    for (int i = 0; yes[i]; i++)
        if (!strcmp(s, yes[i]))
            return *out = true, 0;
    for (int i = 0; no[i]; i++)
        if (!strcmp(s, no[i]))
            return *out = false, 0;
    return -EINVAL;
}

int vbd_opt_take_bool(struct json_object *opts, const char *key, bool *out, struct vbd_error **err)
{
    struct json_object *v = vbd_opt_get(opts, key);
    if (!v)
        return 0;
    if (json_object_is_type(v, json_type_boolean)) {
        *out = json_object_get_boolean(v);
    } else {
        char buf[64];
        const char *s = scalar_str(v, buf, sizeof(buf));
        if (!s || vbd_parse_bool(s, out) < 0) {
            /* QEMU's words (QemuOpts and keyval alike): the value is not repeated */
            vbd_error_setf(err, EINVAL, "Parameter '%s' expects 'on' or 'off'", key);
            return -EINVAL;
        }
    }
    opt_remove(opts, key);
    return 1;
}

int vbd_opt_take_u64(struct json_object *opts, const char *key, uint64_t *out, struct vbd_error **err)
{
    struct json_object *v = vbd_opt_get(opts, key);
    if (!v)
        return 0;
    if (json_object_is_type(v, json_type_int)) {
        int64_t i = json_object_get_int64(v);
        if (i < 0) {
            vbd_error_setf(err, EINVAL, "Parameter '%s' expects a non-negative number", key);
            return -EINVAL;
        }
        *out = (uint64_t)i;
    } else {
        char buf[64];
        const char *s = scalar_str(v, buf, sizeof(buf));
        char *end;
        errno = 0;
        unsigned long long u = s ? strtoull(s, &end, 0) : 0;
        if (!s || !*s || *end || errno || s[0] == '-') {
            vbd_error_setf(err, EINVAL, "Parameter '%s' expects a number, not '%s'", key, s ? s : "?");
            return -EINVAL;
        }
        *out = u;
    }
    opt_remove(opts, key);
    return 1;
}

int vbd_parse_size(const char *str, uint64_t *out, struct vbd_error **err)
{
    const char *s = str;
    while (isspace((unsigned char)*s))
        s++;
    if (!*s || *s == '-' || *s == '+')
        goto bad;
    char *end;
    errno = 0;
    /* Integers exactly (no double rounding for big byte counts). */
    unsigned long long whole = strtoull(s, &end, 10);
    if (errno || end == s)
        goto bad;
    double frac = 0;
    if (*end == '.') {
        char *fend;
        frac = strtod(end, &fend);
        if (fend == end + 1)
            goto bad;
        end = fend;
    }
    uint64_t mult = 1;
    switch (*end) {
    case 0: break;
    case 'b': case 'B': end++; break;
    case 'k': case 'K': mult = 1ull << 10; end++; break;
    case 'm': case 'M': mult = 1ull << 20; end++; break;
    case 'g': case 'G': mult = 1ull << 30; end++; break;
    case 't': case 'T': mult = 1ull << 40; end++; break;
    case 'p': case 'P': mult = 1ull << 50; end++; break;
    case 'e': case 'E': mult = 1ull << 60; end++; break;
    default: goto bad;
    }
    if (*end)
        goto bad;
    if (frac != 0 && mult == 1)
        goto bad; /* fractional bytes */
    if (whole > INT64_MAX / mult)
        goto too_big;
    uint64_t v = whole * mult + (uint64_t)(frac * (double)mult);
    if (v > INT64_MAX)
        goto too_big;
    *out = v;
    return 0;
bad:
    vbd_error_setf(err, EINVAL,
                   "Invalid size '%s': use a number with an optional k, M, G, T, P or E suffix", str);
    return -EINVAL;
too_big:
    vbd_error_setf(err, ERANGE, "Invalid size '%s': too large (the maximum is 8 EiB - 1)", str);
    return -ERANGE;
}

int vbd_opt_take_size(struct json_object *opts, const char *key, uint64_t *out, struct vbd_error **err)
{
    struct json_object *v = vbd_opt_get(opts, key);
    if (!v)
        return 0;
    if (json_object_is_type(v, json_type_int)) {
        int64_t i = json_object_get_int64(v);
        if (i < 0) {
            vbd_error_setf(err, EINVAL, "Parameter '%s' expects a size, not %lld", key, (long long)i);
            return -EINVAL;
        }
        *out = (uint64_t)i;
    } else {
        char buf[64];
        const char *s = scalar_str(v, buf, sizeof(buf));
        struct vbd_error *e = NULL;
        if (!s || vbd_parse_size(s, out, &e) < 0) {
            vbd_error_setf(err, EINVAL, "Parameter '%s': %s", key, e ? e->msg : "expects a size");
            vbd_error_free(e);
            return -EINVAL;
        }
    }
    opt_remove(opts, key);
    return 1;
}

int vbd_opt_take_enum(struct json_object *opts, const char *key, const char *const *choices, int *out,
                      struct vbd_error **err)
{
    char *s = NULL;
    int rc = vbd_opt_take_str(opts, key, &s, err);
    if (rc <= 0)
        return rc;
    for (int i = 0; choices[i]; i++) {
        if (!strcmp(s, choices[i])) {
            *out = i;
            free(s);
            return 1;
        }
    }
    vbd_error_setf(err, EINVAL, "Parameter '%s' does not accept value '%s'", key, s); /* QEMU's words, no list */
    free(s);
    return -EINVAL;
}

struct json_object *vbd_opt_take_obj(struct json_object *opts, const char *key)
{
    struct json_object *v = vbd_opt_get(opts, key);
    if (!v)
        return NULL;
    json_object_get(v);
    opt_remove(opts, key);
    return v;
}

static void first_key(struct json_object *o, char *buf, size_t len, const char *prefix)
{
    json_object_object_foreach(o, k, v)
    {
        char path[512];
        snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", k);
        if (json_object_is_type(v, json_type_object) && json_object_object_length(v) > 0)
            first_key(v, buf, len, path);
        else
            snprintf(buf, len, "%s", path);
        return;
    }
}

int vbd_opts_check_empty_worded(struct json_object *opts, const char *what, const char *does_not,
                                struct vbd_error **err)
{
    if (!opts || json_object_object_length(opts) == 0)
        return 0;
    char key[512] = "";
    first_key(opts, key, sizeof(key), "");
    vbd_error_setf(err, EINVAL, "%s %s support the option '%s'", what, does_not, key);
    return -EINVAL;
}

int vbd_opts_check_empty(struct json_object *opts, const char *what, struct vbd_error **err)
{
    return vbd_opts_check_empty_worded(opts, what, "does not", err);
}

/* QEMU 7.2's ObjectType enum: the qom-types its schema knows */
static const char *const qemu_object_types[] = {
    "authz-list", "authz-listfile", "authz-pam", "authz-simple", "can-bus", "can-host-socketcan", "colo-compare",
    "cryptodev-backend", "cryptodev-backend-builtin", "cryptodev-backend-lkcf", "cryptodev-vhost-user",
    "dbus-vmstate", "filter-buffer", "filter-dump", "filter-mirror", "filter-redirector", "filter-replay",
    "filter-rewriter", "input-barrier", "input-linux", "iothread", "main-loop", "memory-backend-epc",
    "memory-backend-file", "memory-backend-memfd", "memory-backend-ram", "pef-guest", "pr-manager-helper", "qtest",
    "rng-builtin", "rng-egd", "rng-random", "secret", "secret_keyring", "sev-guest", "s390-pv-guest",
    "throttle-group", "tls-creds-anon", "tls-creds-psk", "tls-creds-x509", "tls-cipher-suites", "x-remote-object",
    "x-vfio-user-server", NULL};

bool vbd_qom_type_known(const char *type)
{
    for (int i = 0; qemu_object_types[i]; i++)
        if (!strcmp(qemu_object_types[i], type))
            return true;
    return false;
}
