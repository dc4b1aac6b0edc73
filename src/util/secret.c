/* SPDX-License-Identifier: MIT */
/* QEMU's "secret" objects (vbd/secret.h). */
#include "vbd/secret.h"

#include "vbd/alloc.h"
#include "vbd/error.h"
#include "vbd/options.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct secret {
    char *id, *value;
    struct secret *next;
};
static struct secret *secrets;

static char *read_file(const char *path, struct vbd_error **err)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        vbd_error_setf(err, errno, "secret: cannot read '%s': %s", path, strerror(errno));
        return NULL;
    }
    char *buf = vbd_xmalloc(65537);
    size_t len = fread(buf, 1, 65537, f);
    int bad = ferror(f) || len > 65536 || memchr(buf, 0, len);
    fclose(f);
    if (bad) {
        vbd_error_setf(err, EINVAL, "secret: '%s' is unreadable, over 64 KiB or holds a NUL byte", path);
        free(buf);
        return NULL;
    }
    buf[len] = 0;
    return buf;
}

int vbd_secret_add(struct json_object *opts, struct vbd_error **err)
{
    char *id = NULL, *data = NULL, *file = NULL, *format = NULL, *iv = NULL, *keyid = NULL;
    int rc = -EINVAL;
    if (vbd_opt_take_str(opts, "id", &id, err) < 0 || vbd_opt_take_str(opts, "data", &data, err) < 0 ||
        vbd_opt_take_str(opts, "file", &file, err) < 0 || vbd_opt_take_str(opts, "format", &format, err) < 0 ||
        vbd_opt_take_str(opts, "iv", &iv, err) < 0 || vbd_opt_take_str(opts, "keyid", &keyid, err) < 0 ||
        vbd_opts_check_empty(opts, "secret", err) < 0)
        goto out;
    if (!id || !*id) {
        vbd_error_setf(err, EINVAL, "secret: 'id' is required");
        goto out;
    }
    if (!!data == !!file) {
        vbd_error_setf(err, EINVAL, "secret '%s': give exactly one of 'data' and 'file'", id);
        goto out;
    }
    if ((format && strcmp(format, "raw")) || iv || keyid) {
        vbd_error_setf(err, ENOTSUP, "secret '%s': only format=raw without keyid/iv is supported", id);
        goto out;
    }
    for (struct secret *s = secrets; s; s = s->next)
        if (!strcmp(s->id, id)) {
            vbd_error_setf(err, EEXIST, "attempt to add duplicate property '%s' to object (type 'container')", id);
            goto out;
        }
    char *value = data ? data : read_file(file, err);
    if (!value)
        goto out;
    data = NULL;
    struct secret *s = vbd_xcalloc(1, sizeof(*s));
    s->id = id;
    s->value = value;
    s->next = secrets;
    secrets = s;
    id = NULL;
    rc = 0;
out:
    free(id);
    free(data);
    free(file);
    free(format);
    free(iv);
    free(keyid);
    return rc;
}

char *vbd_secret_lookup(const char *id, struct vbd_error **err)
{
    for (struct secret *s = secrets; s; s = s->next)
        if (!strcmp(s->id, id))
            return vbd_xstrdup(s->value);
    vbd_error_setf(err, ENOENT, "No secret with id '%s'", id);
    return NULL;
}
