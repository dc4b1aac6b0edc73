/* SPDX-License-Identifier: MIT */
/*
 * vbd-img: option helpers shared by several verbs.
 */
#include "img.h"

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
    uint64_t v;
    struct vbd_error *err = NULL;
    if (vbd_parse_size(s, &v, &err) < 0 || v > INT64_MAX) {
        vbd_error_free(err);
        vbd_error_report("Invalid %s specified. You may use k, M, G, T, P or E suffixes for", name);
        vbd_error_report("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return -1;
    }
    if ((int64_t)v < min || (int64_t)v > max) {
        vbd_error_report("Invalid %s specified. Must be between %lld and %lld.", name, (long long)min, (long long)max);
        return -1;
    }
    return (int64_t)v;
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

/* Merge "-o a=b,c=d" strings into one options object. "help" is special. */
int add_o(struct json_object **opts, const char *s)
{
    /* qemu-img takes a "?" element of the list as "help" (the keyval syntax has no such key) */
    for (const char *p = s; *p;) {
        size_t len = strcspn(p, ",");
        if (len == 1 && *p == '?') {
            if (!*opts)
                *opts = json_object_new_object();
            json_object_object_add(*opts, "help", json_object_new_boolean(true));
            return 0;
        }
        p += len;
        while (*p == ',')
            p++;
    }
    struct vbd_error *err = NULL;
    struct json_object *o = vbd_keyval_parse(s, NULL, &err);
    if (!o) {
        vbd_error_report("Invalid option list: %s", err ? err->msg : s);
        vbd_error_free(err);
        return -1;
    }
    if (!*opts)
        *opts = json_object_new_object();
    json_object_object_foreach(o, k, v) json_object_object_add(*opts, k, json_object_get(v));
    json_object_put(o);
    return 0;
}

bool o_is_help(struct json_object *opts)
{
    return opts && (json_object_object_get_ex(opts, "help", NULL) || json_object_object_get_ex(opts, "?", NULL));
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
