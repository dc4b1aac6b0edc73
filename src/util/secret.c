/* SPDX-License-Identifier: MIT */
/* The "secret" object: see include/vbd/secret.h. */
#include "vbd/secret.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct secret {
    char *id;
    char *b64; /* kept encoded: every user so far (Ceph's key) wants base64 */
    int format; /* as given: 0 raw, 1 base64 */
    struct secret *next;
};
static struct secret *secrets;

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const unsigned char *in, size_t len)
{
    char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = in[i] << 16 | (i + 1 < len ? in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        *o++ = b64chars[v >> 18 & 63];
        *o++ = b64chars[v >> 12 & 63];
        *o++ = i + 1 < len ? b64chars[v >> 6 & 63] : '=';
        *o++ = i + 2 < len ? b64chars[v & 63] : '=';
    }
    *o = 0;
    return out;
}

/* QEMU takes base64 data made of its alphabet, '=' and newlines, and
 * decodes it leniently (glib's: up to the first '=', a group cut short
 * giving its whole bytes only): s re-encoded from those bytes (a new
 * string), or NULL when s holds another character */
static char *b64_canonical(const char *s)
{
    size_t n = strlen(s);
    if (strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n") != n)
        return NULL;
    unsigned char *bytes = malloc(n / 4 * 3 + 3);
    size_t nb = 0;
    unsigned acc = 0, bits = 0;
    for (size_t i = 0; i < n && s[i] != '='; i++) {
        if (s[i] == '\n')
            continue;
        acc = (acc << 6 | (unsigned)(strchr(b64chars, s[i]) - b64chars)) & 0xffffff;
        if ((bits += 6) >= 8) {
            bits -= 8;
            bytes[nb++] = (unsigned char)(acc >> bits);
        }
    }
    char *canon = b64_encode(bytes, nb);
    free(bytes);
    return canon;
}

static struct secret *find(const char *id)
{
    for (struct secret *s = secrets; s; s = s->next)
        if (!strcmp(s->id, id))
            return s;
    return NULL;
}

static char *read_file(const char *path, size_t *len, struct vbd_error **err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        /* QEMU's words, with the GLib message it quotes */
        vbd_error_setf(err, errno, "Unable to read %s: Failed to open file \u201c%s\u201d: %s", path, path,
                       strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap && cap < (1u << 20))
            buf = realloc(buf, cap *= 2);
        else if (n == cap)
            break;
    }
    if (ferror(f)) { /* a directory opens, then fails to read (EISDIR) */
        int e = errno;
        vbd_error_setf(err, e, "Unable to read %s: Error reading file \u201c%s\u201d: %s", path, path, strerror(e));
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    *len = n;
    return buf;
}

int vbd_secret_add(struct json_object *opts, struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the store is the main thread's */
    char *id = NULL, *data = NULL, *file = NULL, *keyid = NULL;
    int format = 0, rc = -EINVAL;
    static const char *const formats[] = {"raw", "base64", NULL};
    if (vbd_opt_take_str(opts, "id", &id, err) < 0 || vbd_opt_take_str(opts, "data", &data, err) < 0 ||
        vbd_opt_take_str(opts, "file", &file, err) < 0 || vbd_opt_take_str(opts, "keyid", &keyid, err) < 0 ||
        vbd_opt_take_enum(opts, "format", formats, &format, err) < 0)
        goto out;
    if (!id) {
        vbd_error_setf(err, EINVAL, "Parameter 'id' is missing");
        goto out;
    }
    /* QEMU's object visitor refuses an unknown member before the secret
     * looks at its own (its words, not the block layer's "does not
     * support the option") */
    if (json_object_object_length(opts)) {
        struct json_object_iterator first = json_object_iter_begin(opts);
        vbd_error_setf(err, EINVAL, "Parameter '%s' is unexpected", json_object_iter_peek_name(&first));
        goto out;
    }
    if (keyid) {
        vbd_error_setf(err, ENOTSUP, "secret '%s': encrypted secrets (keyid) are not supported", id);
        goto out;
    }
    if (data && file) { /* QEMU's words */
        vbd_error_setf(err, EINVAL, "'file' and 'data' are mutually exclusive");
        goto out;
    }
    if (!data && !file) {
        vbd_error_setf(err, EINVAL, "Either 'file' or 'data' must be provided");
        goto out;
    }
    if (find(id)) {
        vbd_error_setf(err, EEXIST, "attempt to add duplicate property '%s' to object (type 'container')", id);
        goto out;
    }
    size_t len = data ? strlen(data) : 0;
    char *bytes = data ? data : read_file(file, &len, err);
    if (!bytes)
        goto out;
    char *b64;
    if (format == 1) {
        char *text = strndup(bytes, len);
        /* a trailing newline from a file is not part of the text */
        while (*text && (text[strlen(text) - 1] == '\n' || text[strlen(text) - 1] == '\r'))
            text[strlen(text) - 1] = 0;
        b64 = b64_canonical(text);
        free(text);
        if (!b64) {
            vbd_error_setf(err, EINVAL, "Base64 data contains invalid characters"); /* QEMU's words */
            if (bytes != data)
                free(bytes);
            goto out;
        }
    } else {
        b64 = b64_encode((const unsigned char *)bytes, len);
    }
    if (bytes != data)
        free(bytes);
    static bool registered;
    if (!registered) {
        registered = true;
        atexit(vbd_secret_remove_all);
    }
    struct secret *s = calloc(1, sizeof(*s));
    s->id = id;
    id = NULL;
    s->b64 = b64;
    s->format = format;
    s->next = secrets;
    secrets = s;
    rc = 0;
out:
    free(id);
    free(data);
    free(file);
    free(keyid);
    return rc;
}

char *vbd_secret_get_base64(const char *id, struct vbd_error **err)
{
    struct secret *s = find(id);
    if (!s) {
        vbd_error_setf(err, ENOENT, "No secret with id '%s'", id);
        return NULL;
    }
    return strdup(s->b64);
}

const char *vbd_secret_format(const char *id)
{
    struct secret *s = id ? find(id) : NULL;
    return s ? (s->format ? "base64" : "raw") : NULL;
}

const char *vbd_secret_next(const char *prev)
{
    if (!prev)
        return secrets ? secrets->id : NULL;
    struct secret *s = find(prev);
    return s && s->next ? s->next->id : NULL;
}

int vbd_secret_remove(const char *id, struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the store is the main thread's */
    for (struct secret **pp = &secrets; *pp; pp = &(*pp)->next) {
        struct secret *s = *pp;
        if (strcmp(s->id, id))
            continue;
        *pp = s->next;
        free(s->id);
        /* the key does not linger in freed memory */
        memset(s->b64, 0, strlen(s->b64));
        free(s->b64);
        free(s);
        return 0;
    }
    vbd_error_setf(err, ENOENT, "object '%s' not found", id);
    return -ENOENT;
}

void vbd_secret_remove_all(void)
{
    assert(vbd_thread_is_main()); /* the store is the main thread's */
    while (secrets) {
        struct secret *s = secrets;
        secrets = s->next;
        free(s->id);
        free(s->b64);
        free(s);
    }
}
