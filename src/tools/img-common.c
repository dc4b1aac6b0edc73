/* SPDX-License-Identifier: MIT */
/*
 * vbd-img: option helpers shared by several verbs.
 */
#include "img.h"

#include "vbd/alloc.h"
#include "vbd/secret.h"

#include <ctype.h>
#include <stdarg.h>

int img_usage_error(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    vbd_error_report("%s", msg);
    fprintf(stderr, "Try 'vbd-img --help' for more information\n");
    return 1;
}

int64_t img_cvtnum(const char *name, const char *s, int64_t min, int64_t max)
{
    int64_t v = tool_strtosz(s);
    if (v == -EINVAL) {
        vbd_error_report("Invalid %s specified. You may use k, M, G, T, P or E suffixes for", name);
        vbd_error_report("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return -1;
    }
    if (v < min || v > max) { /* -ERANGE too */
        vbd_error_report("Invalid %s specified. Must be between %lld and %lld.", name, (long long)min, (long long)max);
        return -1;
    }
    return v;
}

bool img_known_create_option(const struct vbd_driver *drv, const char *key)
{
    for (const struct vbd_driver *const *d = vbd_driver_list(); *d; d++)
        if (*d == drv || (*d)->kind == VBD_DRV_PROTOCOL)
            for (const struct vbd_opt_desc *o = (*d)->create_opts; o && o->name; o++)
                if (!strcmp(o->name, key))
                    return true;
    return false;
}

int img_bad_option(int c, char **argv)
{
    /* argv[optind - 1] is the word getopt stopped at, as qemu-img names it */
    if (c == ':')
        return img_usage_error("missing argument for option '%s'", argv[optind - 1]);
    return img_usage_error("unrecognized option '%s'", argv[optind - 1]);
}

bool parse_output(const char *s, bool *json)
{
    if (!strcmp(s, "json"))
        *json = true;
    else if (!strcmp(s, "human"))
        *json = false;
    else {
        vbd_error_report("--output must be used with human or json as argument.");
        return false;
    }
    return true;
}

/* The -o options in the order given, [[NAME, VALUE], ...]: qemu-img
 * parses (and refuses) them in that order, a later one of a name replacing
 * the earlier one only once both parsed */
static struct json_object *o_given;

/* qemu-img's is_valid_option_list: not empty, no leading ',', no single trailing ',' */
static bool valid_option_list(const char *s)
{
    size_t len = strlen(s), i = len;
    if (!*s || *s == ',')
        return false;
    while (i > 0 && s[i - 1] == ',')
        i--;
    return (len - i) % 2 == 0;
}

/*
 * Merge a -o string into one options object, read as qemu-img reads it
 * (QemuOpts, not keyval): a name ends at '=' or ','; ",," in a value is a
 * comma; an element without '=' is a flag ("X" is X=on, "noX" X=off, a
 * bare "help" or "?" asks for help); a name given again replaces the
 * earlier value; "id" is dropped. Names stay flat ("encrypt.format").
 */
int add_o(struct json_object **opts, const char *s)
{
    if (!valid_option_list(s)) {
        vbd_error_report("Invalid option list: %s", s);
        return -1;
    }
    if (!*opts)
        *opts = json_object_new_object();
    if (!o_given)
        o_given = json_object_new_array();
    char *value = vbd_xmalloc(strlen(s) + 4);
    for (const char *p = s; *p;) {
        size_t len = strcspn(p, "=,");
        char *name = strndup(p, len);
        bool flag = p[len] != '=';
        p += len;
        if (flag) {
            bool help = !strcmp(name, "help") || !strcmp(name, "?");
            bool no = !help && !strncmp(name, "no", 2);
            strcpy(value, no ? "off" : "on");
            if (no)
                memmove(name, name + 2, strlen(name + 2) + 1);
            if (help) {
                json_object_object_add(*opts, "help", json_object_new_boolean(true));
                free(name);
                if (*p == ',')
                    p++;
                continue;
            }
        } else {
            size_t n = 0;
            for (p++; *p && !(p[0] == ',' && p[1] != ','); p++) {
                if (*p == ',')
                    p++;
                value[n++] = *p;
            }
            value[n] = 0;
        }
        if (*p == ',')
            p++;
        if (strcmp(name, "id")) {
            json_object_object_add(*opts, name, json_object_new_string(value));
            struct json_object *pair = json_object_new_array();
            json_object_array_add(pair, json_object_new_string(name));
            json_object_array_add(pair, json_object_new_string(value));
            json_object_array_add(o_given, pair);
        }
        free(name);
    }
    free(value);
    return 0;
}

/* the protocol a new image TARGET is made with (QEMU's bdrv_find_protocol:
 * "PROTO:..." before any '/', else the file protocol) */
static const struct vbd_driver *target_protocol(const char *target)
{
    const char *colon = target ? strchr(target, ':') : NULL, *slash = target ? strchr(target, '/') : NULL;
    if (colon && (!slash || colon < slash))
        for (const struct vbd_driver *const *d = vbd_driver_list(); *d; d++)
            for (const char *const *p = (*d)->protocols; p && *p; p++)
                if (strlen(*p) == (size_t)(colon - target) && !strncmp(*p, target, colon - target))
                    return *d;
    return vbd_driver_find("file");
}

/* QEMU's qcow2 encryption options: parsed as qemu-img parses them, then
 * refused (img_refuse_encryption): vbd makes no encrypted images */
static const struct vbd_opt_desc qcow2_encrypt_opts[] = {
    {"encryption", VBD_OPT_BOOL, NULL, NULL},
    {"encrypt.format", VBD_OPT_STRING, NULL, NULL},
    {"encrypt.key-secret", VBD_OPT_STRING, NULL, NULL},
    {"encrypt.cipher-alg", VBD_OPT_STRING, NULL, NULL},
    {"encrypt.cipher-mode", VBD_OPT_STRING, NULL, NULL},
    {"encrypt.ivgen-alg", VBD_OPT_STRING, NULL, NULL},
    {"encrypt.ivgen-hash-alg", VBD_OPT_STRING, NULL, NULL},
    {"encrypt.hash-alg", VBD_OPT_STRING, NULL, NULL},
    {"encrypt.iter-time", VBD_OPT_NUMBER, NULL, NULL},
    {NULL, 0, NULL, NULL},
};
bool img_encryption_options;

/* KEY among DRV's creation options and its target's protocol's (QEMU appends one list to the other) */
static const struct vbd_opt_desc *create_option_desc(const struct vbd_driver *drv, const char *target, const char *key)
{
    const struct vbd_driver *lists[2] = {drv, target_protocol(target)};
    for (int i = 0; i < 2; i++)
        for (const struct vbd_opt_desc *o = lists[i] ? lists[i]->create_opts : NULL; o && o->name; o++)
            if (!strcmp(o->name, key))
                return o;
    if (img_encryption_options && !strcmp(drv->name, "qcow2"))
        for (const struct vbd_opt_desc *o = qcow2_encrypt_opts; o->name; o++)
            if (!strcmp(o->name, key))
                return o;
    return NULL;
}

int img_refuse_encryption(const struct vbd_driver *drv, const char *filename, struct json_object *opts)
{
    if (strcmp(drv->name, "qcow2"))
        return 0;
    struct json_object *on = vbd_opt_get(opts, "encryption"), *fo = vbd_opt_get(opts, "encrypt.format");
    struct json_object *ko = vbd_opt_get(opts, "encrypt.key-secret");
    /* as qcow2_co_create_opts reads them: encryption=off is dropped, "on"
     * is the aes format, any other word an alias of encrypt.format */
    const char *alias = on ? json_object_get_string(on) : NULL, *f = fo ? json_object_get_string(fo) : NULL;
    if (alias && !strcmp(alias, "off"))
        alias = NULL;
    else if (alias && !strcmp(alias, "on"))
        alias = "aes";
    const char *format = f ? f : alias;
    bool any = false;
    for (const struct vbd_opt_desc *o = qcow2_encrypt_opts + 1; o->name; o++)
        any = any || vbd_opt_get(opts, o->name);
    if (!format && !any) {
        json_object_object_del(opts, "encryption");
        return 0;
    }
    /* qcow2_co_create_opts' checks, in its words, before vbd's own refusal */
    struct vbd_error *err = NULL;
    char *key = NULL;
    if (alias && f)
        vbd_error_report("%s: 'encrypt.format' and its alias 'encryption' can't be used at the same time", filename);
    else if (!format)
        vbd_error_report("%s: Parameter 'encrypt.format' is missing", filename);
    else if (strcmp(format, "aes") && strcmp(format, "qcow") && strcmp(format, "luks"))
        vbd_error_report("%s: Parameter 'format' does not accept value '%s'", filename, format);
    else if (!ko)
        vbd_error_report("%s: Parameter 'encrypt.key-secret' is required for cipher", filename);
    else if (!(key = vbd_secret_get_base64(json_object_get_string(ko), &err)))
        vbd_error_report("%s: %s", filename, err ? err->msg : "no such secret");
    else
        vbd_error_report("%s: vbd-img cannot make encrypted images (encrypt.format=%s): vbd reads and writes no "
                         "encrypted qcow2",
                         filename, format);
    free(key);
    vbd_error_free(err);
    return -1;
}

/* QemuOpts' parse_option_number (qemu_strtou64, any base) */
int img_opt_number(const char *name, const char *value, uint64_t *out, struct vbd_error **err)
{
    const char *p = value;
    while (isspace((unsigned char)*p))
        p++;
    char *end;
    errno = 0;
    unsigned long long v = *p == '-' ? 0 : strtoull(p, &end, 0);
    if (*p != '-' && errno == ERANGE) {
        vbd_error_setf(err, ERANGE, "Value '%s' is too large for parameter '%s'", value, name);
        return -ERANGE;
    }
    if (*p == '-' || errno || end == p || *end) {
        vbd_error_setf(err, EINVAL, "Parameter '%s' expects a number", name);
        return -EINVAL;
    }
    *out = v;
    return 0;
}

/* QEMU's qapi_bool_parse */
static int opt_bool(const char *name, const char *value, bool *out, struct vbd_error **err)
{
    static const char *const yes[] = {"on", "yes", "true", "y"}, *const no[] = {"off", "no", "false", "n"};
    for (int i = 0; i < 4; i++) {
        if (!strcmp(value, yes[i]) || !strcmp(value, no[i])) {
            *out = !strcmp(value, yes[i]);
            return 0;
        }
    }
    vbd_error_setf(err, EINVAL, "Parameter '%s' expects 'on' or 'off'", name);
    return -EINVAL;
}

/* one option's value as QemuOpts parses it for its type: 0, or -errno with QEMU's message */
static int check_create_value(const struct vbd_opt_desc *d, const char *value, struct vbd_error **err)
{
    uint64_t n;
    bool b;
    switch (d->type) {
    case VBD_OPT_SIZE: return tool_opt_size(d->name, value, &n, err);
    case VBD_OPT_NUMBER: return img_opt_number(d->name, value, &n, err);
    case VBD_OPT_BOOL: return opt_bool(d->name, value, &b, err);
    default: return 0;
    }
}

int img_check_create_options(const struct vbd_driver *drv, const char *target, struct json_object *opts,
                              const char *filename)
{
    /* the -o options in their order, else the object's (options not from -o) */
    struct json_object *list = o_given;
    if (!list) {
        list = json_object_new_array();
        json_object_object_foreach(opts, k, v) {
            struct json_object *pair = json_object_new_array();
            json_object_array_add(pair, json_object_new_string(k));
            json_object_array_add(pair, json_object_get(v));
            json_object_array_add(list, pair);
        }
    } else {
        json_object_get(list);
    }
    int rc = 0;
    for (size_t i = 0; i < json_object_array_length(list) && rc == 0; i++) {
        struct json_object *pair = json_object_array_get_idx(list, i);
        const char *k = json_object_get_string(json_object_array_get_idx(pair, 0));
        const char *v = json_object_get_string(json_object_array_get_idx(pair, 1));
        const struct vbd_opt_desc *d = create_option_desc(drv, target, k);
        struct vbd_error *err = NULL;
        if (!d)
            vbd_error_setf(&err, EINVAL, "Invalid parameter '%s'", k);
        else if (v)
            check_create_value(d, v, &err);
        if (err) {
            if (filename)
                vbd_error_report("%s: %s", filename, err->msg);
            else
                vbd_error_report("%s", err->msg);
            vbd_error_free(err);
            rc = -1;
        }
    }
    json_object_put(list);
    return rc;
}

void img_normalize_create_options(const struct vbd_driver *drv, const char *target, struct json_object *opts)
{
    json_object_object_foreach(opts, k, v) {
        const struct vbd_opt_desc *d = create_option_desc(drv, target, k);
        const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
        uint64_t n;
        bool b;
        if (!d || !s)
            continue;
        if ((d->type == VBD_OPT_SIZE && tool_strtosz_u64(s, &n, false) == 0 && n <= INT64_MAX) ||
            (d->type == VBD_OPT_NUMBER && img_opt_number(k, s, &n, NULL) == 0 && n <= INT64_MAX))
            json_object_object_add(opts, k, json_object_new_int64((int64_t)n));
        else if (d->type == VBD_OPT_BOOL && opt_bool(k, s, &b, NULL) == 0)
            json_object_object_add(opts, k, json_object_new_string(b ? "on" : "off"));
    }
}

bool o_is_help(struct json_object *opts)
{
    struct json_object *h;
    return opts && json_object_object_get_ex(opts, "help", &h) && json_object_is_type(h, json_type_boolean);
}

static int cmp_desc(const void *a, const void *b)
{
    return strcmp((*(const struct vbd_opt_desc *const *)a)->name, (*(const struct vbd_opt_desc *const *)b)->name);
}

/* -o help as qemu-img prints it: sorted, NAME=<TYPE> - HELP; with a file
 * name the protocol's options too ("Supported options:") */
int print_create_help(const char *fmt, const char *filename)
{
    const struct vbd_driver *d = vbd_driver_find(fmt);
    if (!d || d->kind != VBD_DRV_FORMAT) {
        vbd_error_report("Unknown file format '%s'", fmt);
        return 1;
    }
    const struct vbd_driver *proto = filename ? vbd_driver_find("file") : NULL;
    const struct vbd_opt_desc *list[64];
    size_t n = 0;
    for (const struct vbd_driver *drv = d; drv; drv = drv == d ? proto : NULL)
        for (const struct vbd_opt_desc *o = drv->create_opts; o && o->name && n < 64; o++) {
            /* QEMU's raw passes preallocation to the protocol: listed with it */
            bool dup = !proto && drv == d && !strcmp(d->name, "raw") && strcmp(o->name, "size");
            for (size_t i = 0; i < n && !dup; i++)
                dup = !strcmp(list[i]->name, o->name);
            if (!dup)
                list[n++] = o;
        }
    qsort(list, n, sizeof(list[0]), cmp_desc);
    static const char *const types[] = {"str", "bool (on/off)", "num", "size"};
    if (proto)
        printf("Supported options:\n");
    else
        printf("Supported %s options:\n", fmt);
    for (size_t i = 0; i < n; i++) {
        char head[128];
        snprintf(head, sizeof(head), "  %s=<%s>", list[i]->name, types[list[i]->type]);
        if (list[i]->help)
            printf("%-24s - %s\n", head, list[i]->help);
        else
            printf("%s\n", head);
    }
    if (!proto)
        printf("\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n");
    return 0;
}

int img_print_progress(struct vbd_imageops_ctl *ctl, uint64_t off, uint64_t written)
{
    uint64_t current, total;
    vbd_imageops_progress(ctl, &current, &total);
    tool_progress(100.0 * current / (total ? total : 1));
    return 0;
}

/* -l snapshot.id=ID,snapshot.name=NAME or -l ID_OR_NAME (an id first, then a name, as qemu-img). */
int img_load_snapshot(struct vbd_node *n, const char *arg)
{
    struct vbd_node *img = vbd_node_skip_filters(n);
    char *id = NULL, *name = NULL;
    struct vbd_error *err = NULL;
    int rc = -1;
    if (!strncmp(arg, "snapshot.", 9)) {
        struct json_object *o = vbd_keyval_parse(arg, NULL, &err), *sn = NULL, *v;
        bool ok = o && json_object_object_get_ex(o, "snapshot", &sn) && json_object_is_type(sn, json_type_object);
        if (ok) {
            json_object_object_foreach(sn, k, val) {
                if ((strcmp(k, "id") && strcmp(k, "name")) || !json_object_is_type(val, json_type_string)) {
                    vbd_error_report("Invalid parameter 'snapshot.%s'", k);
                    ok = false;
                    break;
                }
            }
        }
        if (ok && json_object_object_get_ex(sn, "id", &v))
            id = strdup(json_object_get_string(v));
        if (ok && json_object_object_get_ex(sn, "name", &v))
            name = strdup(json_object_get_string(v));
        json_object_put(o);
        vbd_error_free(err);
        err = NULL;
        if (!ok) {
            vbd_error_report("Failed in parsing snapshot param '%s'", arg);
            goto out;
        }
    }
    if (!img->drv->snapshot_load_tmp) {
        /* qemu-img's words; its device (a BlockBackend) has no name */
        vbd_error_report("Failed to load snapshot: Block format '%s' used by device '' does not support temporarily "
                         "loading internal snapshots",
                         img->drv->name);
        goto out;
    }
    if (id || name)
        rc = img->drv->snapshot_load_tmp(img, id, name, &err);
    else if (!strncmp(arg, "snapshot.", 9))
        vbd_error_setf(&err, EINVAL, "snapshot_id and name are both NULL");
    else if ((rc = img->drv->snapshot_load_tmp(img, arg, NULL, &err)) == -ENOENT) {
        vbd_error_free(err);
        err = NULL;
        rc = img->drv->snapshot_load_tmp(img, NULL, arg, &err);
    }
    if (rc < 0)
        vbd_error_report("Failed to load snapshot: %s", err ? err->msg : "failed");
out:
    vbd_error_free(err);
    free(id);
    free(name);
    return rc < 0 ? -1 : 0;
}
