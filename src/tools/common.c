/* SPDX-License-Identifier: MIT */
#include "common.h"
#include "qmp/cmd-export.h"
#include "qmp/commands.h"

#include "vbd/alloc.h"
#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/options.h"
#include "vbd/secret.h"
#include "vbd/tls.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void tool_cvtstr(double value, char *buf, size_t len)
{
    static const char *const units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    int u = 0;
    while (value >= 1024 && u < 6) {
        value /= 1024;
        u++;
    }
    if (u == 0) {
        snprintf(buf, len, "%.0f bytes", value);
        return;
    }
    snprintf(buf, len, "%.3f", value);
    char *dot = strchr(buf, '.');
    if (dot && !strcmp(dot, ".000"))
        *dot = 0;
    snprintf(buf + strlen(buf), len - strlen(buf), " %s", units[u]);
}

void tool_size_to_str(double value, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    /* QEMU's rule: the unit changes at 1000 of the previous one, so
     * 1000..1023 bytes print as "0.977 KiB". */
    int e = 0;
    frexp(value / (1000.0 / 1024.0), &e);
    int u = (e - 1) / 10;
    if (u < 0)
        u = 0;
    if (u > 6)
        u = 6;
    snprintf(buf, len, "%0.3g %s", value / (double)(1ull << (u * 10)), units[u]);
}

int tool_strtosz_u64(const char *s, uint64_t *out, bool warn)
{
    const char *p = s;
    while (*p == ' ' || (*p >= '\t' && *p <= '\r'))
        p++;
    if (*p == '-' || *p == '+' || !(*p >= '0' && *p <= '9'))
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long val = strtoull(p, &end, 10);
    if (errno == ERANGE)
        return -ERANGE;
    uint64_t valf = 0; /* the fraction, 64.64 fixed point as QEMU's */
    if (val == 0 && (*end == 'x' || *end == 'X')) {
        errno = 0;
        val = strtoull(p, &end, 16);
        if (errno == ERANGE)
            return -ERANGE;
        if (end == p + 1 || *end == '.')
            return -EINVAL;
    } else if (*end == '.') {
        /* a '.' with no digits after it is skipped ("1.k" is 1 KiB); an
         * exponent makes the whole number invalid */
        const char *f = end + 1;
        while (*f >= '0' && *f <= '9')
            f++;
        if (f == end + 1) {
            end++;
        } else {
            double fraction = strtod(end, NULL);
            if (*f == 'e' || *f == 'E') {
                char *fe;
                strtod(end, &fe);
                if (fe > f)
                    return -EINVAL;
            }
            valf = fraction >= 1.0 ? UINT64_MAX : (uint64_t)(fraction * 0x1p64);
            end = (char *)f;
        }
    }
    static const char units[] = "bkmgtpe";
    const char *u = *end ? strchr(units, *end | 0x20) : NULL;
    uint64_t mul = 1;
    if (u) {
        if (warn && (p[1] == 'x' || p[1] == 'X'))
            vbd_error_report("warning: Using a multiplier suffix on hex numbers is deprecated: %s", s);
        for (long k = 0; k < u - units; k++)
            mul *= 1024;
        end++;
    }
    if (*end || (mul == 1 && valf))
        return -EINVAL;
    /* exact: 64.64 x 64.0, the fraction's half rounded up, as qemu_strtosz */
    unsigned __int128 r = (unsigned __int128)val * mul + (((unsigned __int128)valf * mul + ((unsigned __int128)1 << 63)) >> 64);
    if (r > UINT64_MAX)
        return -ERANGE;
    *out = (uint64_t)r;
    return 0;
}

int64_t tool_strtosz(const char *s)
{
    uint64_t v;
    int rc = tool_strtosz_u64(s, &v, true);
    return rc < 0 ? rc : v > INT64_MAX ? -ERANGE : (int64_t)v;
}

int tool_opt_size(const char *name, const char *value, uint64_t *out, struct vbd_error **err)
{
    int rc = tool_strtosz_u64(value, out, true);
    if (rc == -ERANGE)
        vbd_error_setf(err, ERANGE, "Value '%s' is out of range for parameter '%s'", value, name);
    else if (rc < 0)
        vbd_error_setf(err, EINVAL,
                       "Parameter '%s' expects a non-negative number below 2^64\n"
                       "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                       "and exabytes, respectively.",
                       name);
    return rc;
}

int64_t tool_cvtnum(const char *s)
{
    int64_t v = tool_strtosz(s);
    return v < 0 ? -1 : v;
}

void tool_report(struct vbd_error *err)
{
    if (err)
        vbd_error_report("%s", err->msg);
    vbd_error_free(err);
}

int tool_cache_flags(const char *cache, unsigned *flags, bool *writethrough)
{
    enum vbd_cache_mode mode;
    if (!cache)
        return 0;
    if (vbd_cache_mode_parse(cache, &mode) < 0) {
        vbd_error_report("Invalid cache option: %s", cache);
        return -1;
    }
    *flags |= vbd_cache_mode_open_flags(mode);
    if (writethrough)
        *writethrough = vbd_cache_mode_writethrough(mode);
    return 0;
}

int tool_aio_flags(const char *aio, unsigned *flags)
{
    if (!aio || !strcmp(aio, "io_uring") || !strcmp(aio, "native"))
        return 0;
    if (!strcmp(aio, "threads")) {
        *flags |= VBD_OPEN_AIO_THREADS;
        return 0;
    }
    vbd_error_report("Invalid aio option: %s", aio);
    return -1;
}

bool tool_open_prefix_errors;

/* the file protocol's failed open(2): "Could not open 'F': <strerror>" */
bool tool_is_open_errno(const struct vbd_error *err)
{
    const char *tail = strerror(err->code);
    size_t ml = strlen(err->msg), tl = strlen(tail);
    /* file-posix's refusal of a file of the wrong type is prefixed too */
    if (strstr(err->msg, "' driver requires '"))
        return true;
    /* and its refusal of an empty name ("qemu-img info ''"), of aio=native
     * without O_DIRECT (qemu-img bench -n / -i native) */
    if (!strcmp(err->msg, "The 'file' block driver requires a file name") ||
        !strncmp(err->msg, "aio=native was specified, but", 29))
        return true;
    /* a backing file's open(2): the block layer named the image already */
    if (strstr(err->msg, "Could not open backing file: "))
        return false;
    return !strncmp(err->msg, "Could not open '", 16) && ml > tl + 3 && !strcmp(err->msg + ml - tl, tail) &&
           !strncmp(err->msg + ml - tl - 3, "': ", 3);
}

/* A lock conflict, as qemu-img reports it: the image it opened named
 * first, then the block layer's words, with the question on a line of its
 * own ("Could not open 'X': Failed to get shared "write" lock" /
 * "Is another process using the image [X]?"). */
static bool report_lock_conflict(const char *shown, const struct vbd_error *err)
{
    const char *m = err->msg, *q = strstr(m, " lock: Is another process using the image [");
    if (!q)
        return false;
    int head = (int)(q - m) + 5; /* up to and with " lock" */
    if (!shown || !strncmp(m, "Could not open '", 16))
        vbd_error_report("%.*s\n%s", head, m, q + 7);
    else
        vbd_error_report("Could not open '%s': %.*s\n%s", shown, head, m, q + 7);
    return true;
}

void tool_report_text(const char *msg)
{
    const char *q = strstr(msg, " lock: Is another process using the image [");
    if (q)
        vbd_error_report("%.*s\n%s", (int)(q - msg) + 5, msg, q + 7);
    else
        vbd_error_report("%s", msg);
}

void tool_report_open(const char *shown, struct vbd_error *err)
{
    const char *loop = err && err->code == ELOOP ? strstr(err->msg, "Backing file '") : NULL;
    if (loop) {
        /* the chain's innermost words, as qemu-img info's one line */
        vbd_error_report("%s.", loop);
        vbd_error_free(err);
    } else if (err && report_lock_conflict(shown, err)) {
        vbd_error_free(err);
    } else if (err && shown && tool_open_prefix_errors && tool_is_open_errno(err)) {
        vbd_error_report("Could not open '%s': %s", shown, err->msg);
        vbd_error_free(err);
    } else
        tool_report(err);
}

/* A QemuOpts value from *p up to a single ',' (",," is a literal comma),
 * onto *o with its commas doubled again for keyval; *p left on that ','. */
static void opts_value(const char **p, char **o)
{
    const char *q = *p;
    while (*q && !(q[0] == ',' && q[1] != ',')) {
        if (q[0] == ',') {
            *(*o)++ = ',';
            q++;
        }
        *(*o)++ = *q++;
    }
    *p = q;
}

static void opts_put(char **o, const char *s, size_t n)
{
    memcpy(*o, s, n);
    *o += n;
}

/*
 * --image-opts is a QemuOpts string to qemu-img and qemu-io, not keyval
 * (QEMU's get_opt_name_value): a name ends at '=' or ',' (no ",," in
 * names); an element without '=' is a flag, "X" meaning X=on and "noX"
 * X=off, with QemuOpts' deprecation warning; but when the tool has an
 * implied name (qemu-img's "file") a first element without '=' is its
 * value: "WORD" is file=WORD, a reference to a node named WORD, which a
 * tool never has. Returns the string with every key explicit, for keyval
 * (a flag with an empty name is warned about and left out: keyval has no
 * empty key, and QEMU refuses the open for it anyway).
 */
static char *image_opts_explicit(const char *str, const char *implied)
{
    size_t len = strlen(str);
    /* at worst every ',' doubled and each element given "=off" or the implied name */
    char *out = vbd_xmalloc(2 * len + (len + 1) * ((implied ? strlen(implied) : 0) + 5) + 1), *o = out;
    const char *p = str;
    for (bool first = true; *p; first = false) {
        size_t n = strcspn(p, "=,");
        char *start = o;
        if (o > out)
            *o++ = ',';
        if (first && implied && p[n] != '=') {
            opts_put(&o, implied, strlen(implied));
            *o++ = '=';
            opts_value(&p, &o);
        } else if (p[n] == '=') {
            opts_put(&o, p, n + 1);
            p += n + 1;
            opts_value(&p, &o);
        } else {
            bool no = !strncmp(p, "no", 2) && n >= 2;
            vbd_warn("short-form boolean option '%.*s' deprecated", (int)n, p);
            fprintf(stderr, "Please use %.*s=%s instead\n", (int)(no ? n - 2 : n), no ? p + 2 : p, no ? "off" : "on");
            if (n > (no ? 2u : 0u)) {
                opts_put(&o, no ? p + 2 : p, no ? n - 2 : n);
                opts_put(&o, no ? "=off" : "=on", no ? 4 : 3);
            } else {
                o = start;
            }
            p += n;
        }
        if (*p == ',')
            p++;
    }
    *o = 0;
    return out;
}

/* QEMU's bdrv_open_child refuses a child given as a node name ("file=NAME",
 * qemu-img's bare first word) together with options of its own: before
 * keyval, which would call the two a conflict of its own words. */
static bool reference_with_options(const char *explicit, const char *child)
{
    size_t n = strlen(child);
    bool ref = false, sub = false;
    for (const char *p = explicit; *p;) {
        if (!strncmp(p, child, n) && p[n] == '=')
            ref = true;
        else if (!strncmp(p, child, n) && p[n] == '.')
            sub = true;
        while (*p && !(p[0] == ',' && p[1] != ','))
            p += p[0] == ',' ? 2 : 1;
        if (*p)
            p++;
    }
    return ref && sub;
}

bool tool_open_options(const char **filename, const char *fmt, bool image_opts, const char *implied,
                       struct json_object **opts, bool *unknown_fmt, struct vbd_error **open_err)
{
    *opts = NULL;
    if (image_opts) {
        struct vbd_error *err = NULL;
        const char *s = *filename;
        while (isspace((unsigned char)*s))
            s++;
        if (*s == '{' || !strncmp(s, "json:", 5)) {
            *opts = vbd_opts_parse(*filename, NULL, &err);
        } else {
            char *explicit = image_opts_explicit(*filename, implied);
            if (reference_with_options(explicit, "file")) {
                free(explicit);
                vbd_error_setf(open_err, EINVAL,
                               "Cannot reference an existing block device with additional options or a new filename");
                return false;
            }
            *opts = vbd_keyval_parse(explicit, NULL, &err);
            free(explicit);
        }
        if (!*opts) {
            tool_report(err);
            return false;
        }
        *filename = NULL;
    } else if (fmt) {
        if (!vbd_driver_find(fmt)) {
            *unknown_fmt = true;
            return false;
        }
        *opts = json_object_new_object();
        json_object_object_add(*opts, "driver", json_object_new_string(fmt));
    }
    return true;
}

struct vbd_node *tool_open(const char *filename, const char *fmt, bool image_opts, unsigned flags,
                           const char *cache, bool *writethrough)
{
    struct vbd_error *err = NULL;
    struct json_object *opts = NULL;
    const char *shown = filename; /* qemu-img names the option string of --image-opts too */
    if (tool_cache_flags(cache, &flags, writethrough) < 0)
        return NULL;
    if (image_opts && fmt) {
        vbd_error_report("--image-opts and --format are mutually exclusive");
        return NULL;
    }
    bool unknown_fmt = false;
    if (!tool_open_options(&filename, fmt, image_opts, "file", &opts, &unknown_fmt, &err)) {
        if (unknown_fmt)
            vbd_error_report("Could not open '%s': Unknown driver '%s'", filename, fmt);
    } else {
        struct vbd_node *n = vbd_open(filename, opts, flags, &err);
        /* read-only=on in the options and a verb that writes: qemu-img's
         * open fails on the write permission (before the verb runs) */
        if (n && (flags & VBD_OPEN_RDWR) && n->read_only) {
            vbd_node_unref(n);
            n = NULL;
            vbd_error_setf(&err, EACCES, "Block node is read-only");
        }
        if (n)
            return n;
    }
    if (err && image_opts && !report_lock_conflict(shown, err)) {
        /* qemu-img's img_open_opts puts the option string before every reason */
        vbd_error_report("Could not open '%s': %s", shown, err->msg);
        vbd_error_free(err);
    } else if (err && image_opts) {
        vbd_error_free(err);
    } else if (err) {
        tool_report_open(shown, err);
    }
    return NULL;
}

static double progress_last = -1;

void tool_progress(double pct)
{
    /* as qemu-img: a new line only after at least 1% of progress */
    if (progress_last >= 0 && pct - progress_last < 1.0 && pct < 100.0)
        return;
    progress_last = pct;
    printf("    (%.2f/100%%)\r", pct);
    fflush(stdout);
}

void tool_progress_end(void)
{
    if (progress_last >= 0) {
        printf("    (100.00/100%%)\n");
        progress_last = -1;
    }
}

static struct {
    float current, last_print, min_skip;
} qemu_progress = {.min_skip = 1};

void tool_progress_init(float min_skip)
{
    qemu_progress.current = qemu_progress.last_print = 0;
    qemu_progress.min_skip = min_skip;
}

void tool_progress_step(float pct)
{
    if (pct > 100)
        pct = 100;
    qemu_progress.current = pct;
    if (pct > qemu_progress.last_print + qemu_progress.min_skip || pct == 100 || pct == 0) {
        qemu_progress.last_print = pct;
        printf("    (%3.2f/100%%)\r", pct);
        fflush(stdout);
    }
}

void tool_progress_add(float delta)
{
    /* QEMU's float arithmetic, for the same sums */
    tool_progress_step(qemu_progress.current + delta / 100 * 100);
}

void tool_progress_finish(bool ok)
{
    if (ok)
        tool_progress_step(100);
    printf("\n");
    fflush(stdout);
}

char *tool_json_pretty(struct json_object *o)
{
    const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE);
    /* json-c indents by 2; QEMU by 4 */
    size_t len = strlen(s);
    char *out = malloc(len * 2 + 1), *p = out;
    bool bol = true;
    for (const char *q = s; *q; q++) {
        if (bol && *q == ' ') {
            *p++ = ' ';
            *p++ = ' ';
            continue;
        }
        bol = *q == '\n';
        *p++ = *q;
    }
    *p = 0;
    return out;
}

void tool_print_json(struct json_object *o)
{
    char *s = tool_json_pretty(o);
    printf("%s\n", s);
    free(s);
}

int tool_add_object(const char *arg)
{
    struct vbd_error *err = NULL;
    /* the QEMU tools' --object help (the types it makes, sorted) and
     * --object TYPE,help (its properties), exit 0 */
    static const char *const types[] = {"authz-list",    "authz-simple",   "secret", "throttle-group",
                                        "tls-creds-psk", "tls-creds-x509", NULL};
    if (vbd_qom_object_help(arg, types))
        exit(0);
    struct json_object *opts = vbd_opts_parse(arg, "qom-type", &err);
    if (!opts) {
        tool_report(err);
        return -1;
    }
    char *type = NULL;
    int rc = vbd_opt_take_str(opts, "qom-type", &type, &err);
    /* the QEMU tools' words: a type QEMU's schema does not know, one it
     * knows that the tool cannot make (vbd's tools make secrets and TLS
     * credentials, throttle groups and authz lists as qemu-img does) */
    if (rc == 0)
        vbd_error_setf(&err, EINVAL, "Parameter 'qom-type' is missing");
    else if (rc > 0 && !strcmp(type, "secret"))
        rc = vbd_secret_add(opts, &err);
    else if (rc > 0 && (!strcmp(type, "throttle-group") || !strcmp(type, "authz-simple") || !strcmp(type, "authz-list"))) {
        /* the ones qemu-img and qemu-io make too (a throttle filter in
         * --image-opts takes its group), checked as QMP object-add */
        json_object_object_add(opts, "qom-type", json_object_new_string(type));
        rc = vbd_qmp_object_add_cmdline(opts, arg[0] != '{' && strncmp(arg, "json:", 5), &err);
    }
    else if (rc > 0 && !vbd_tls_creds_type(type) && !vbd_qom_type_known(type))
        vbd_error_setf(&err, EINVAL, "Parameter 'qom-type' does not accept value '%s'", type);
    else if (rc > 0 && !vbd_tls_creds_type(type))
        vbd_error_setf(&err, EINVAL, "invalid object type: %s", type);
    else if (rc > 0)
        rc = vbd_tls_creds_add(type, opts, &err);
    free(type);
    json_object_put(opts);
    if (err) {
        tool_report(err);
        return -1;
    }
    return 0;
}

/* qemu-img info's layout of format-specific data: keys with spaces for
 * dashes, nested objects and array elements indented by four. */
void tool_print_specific(struct json_object *v, int indent)
{
    json_object_object_foreach(v, k, val) {
        char key[128];
        snprintf(key, sizeof(key), "%s", k);
        for (char *p = key; *p; p++)
            if (*p == '-')
                *p = ' ';
        if (json_object_is_type(val, json_type_object)) {
            printf("%*s%s:\n", indent, "", key);
            tool_print_specific(val, indent + 4);
        } else if (json_object_is_type(val, json_type_array)) {
            printf("%*s%s:\n", indent, "", key);
            for (size_t i = 0; i < json_object_array_length(val); i++) {
                struct json_object *e = json_object_array_get_idx(val, i);
                if (json_object_is_type(e, json_type_object)) {
                    printf("%*s[%zu]:\n", indent + 4, "", i);
                    tool_print_specific(e, indent + 8);
                } else {
                    printf("%*s[%zu]: %s\n", indent + 4, "", i, json_object_get_string(e));
                }
            }
        } else {
            printf("%*s%s: %s\n", indent, "", key, json_object_get_string(val));
        }
    }
}

struct temp_create {
    const char *path;
    uint64_t size;
    struct vbd_error **err;
    int rc;
};

static void temp_create_entry(void *opaque)
{
    struct temp_create *t = opaque;
    struct json_object *co = json_object_new_object();
    json_object_object_add(co, "size", json_object_new_int64((int64_t)t->size));
    t->rc = vbd_image_co_create("qcow2", t->path, co, t->err);
    json_object_put(co);
}

struct vbd_node *tool_open_temp_overlay(struct vbd_node *base, unsigned flags, struct json_object *extra,
                                        struct vbd_error **err)
{
    const char *dir = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/vl.XXXXXX", dir && *dir ? dir : "/var/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        vbd_error_setf(err, errno, "Could not get temporary filename: %s", strerror(errno));
        json_object_put(extra);
        return NULL;
    }
    close(fd);
    struct vbd_error *e = NULL;
    struct temp_create t = {path, base->size, &e, 0};
    vbd_co_run_sync(temp_create_entry, &t);
    struct vbd_node *top = NULL;
    if (t.rc == 0) {
        struct json_object *opts = extra ? extra : json_object_new_object();
        struct json_object *file = json_object_new_object();
        json_object_object_add(file, "driver", json_object_new_string("file"));
        json_object_object_add(file, "filename", json_object_new_string(path));
        json_object_object_add(opts, "driver", json_object_new_string("qcow2"));
        json_object_object_add(opts, "file", file);
        json_object_object_add(opts, "backing", json_object_new_string(base->node_name));
        extra = NULL;
        top = vbd_open(NULL, opts, flags, &e);
    }
    json_object_put(extra);
    unlink(path);
    if (!top) {
        vbd_error_setf(err, e ? e->code : EIO, "Could not create temporary overlay '%s': %s", path,
                       e ? e->msg : "failed");
        vbd_error_free(e);
    }
    return top;
}
