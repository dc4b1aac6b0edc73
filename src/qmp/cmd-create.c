/* SPDX-License-Identifier: MIT */
/*
 * blockdev-create and x-blockdev-amend (QEMU 7.2 qapi/block-core.json,
 * block/create.c, block/amend.c). The options are checked here as QEMU's
 * QAPI visitor checks them (missing, wrong type, unknown value, unexpected
 * member: "options.X" in QEMU's words), before the job exists; what can
 * only be known by trying (the node, the size, the geometry) fails the job
 * with its error, as QEMU's. The jobs: src/job/create.c.
 */
#include "qmp/commands.h"

#include "vbd/block.h"
#include "vbd/job.h"

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

/* QEMU's BlockdevDriver enum (7.2): the values 'driver' accepts. */
static const char block_drivers[] =
    "|blkdebug|blklogwrites|blkreplay|blkverify|bochs|cloop|compress|copy-before-write|copy-on-read|dmg|file|"
    "snapshot-access|ftp|ftps|gluster|host_cdrom|host_device|http|https|iscsi|luks|nbd|nfs|null-aio|null-co|nvme|"
    "parallels|preallocate|qcow|qcow2|qed|quorum|raw|rbd|replication|ssh|throttle|vdi|vhdx|vmdk|vpc|vvfat|";

#define PREALLOC "enum:off|metadata|falloc|full"
/* BlockdevCreateOptions members vbd-daemon creates, in QEMU's order:
 * "name=type", '?' optional; type str, int, uint (QEMU's size and
 * uint64: its error says so), bool, ref (BlockdevRef),
 * object, drv (BlockdevDriver), enum:A|B. */
static const struct {
    const char *driver, *members;
} create_specs[] = {
    {"file", "filename=str size=uint ?preallocation=" PREALLOC " ?nocow=bool ?extent-size-hint=uint"},
    {"qcow2", "file=ref ?data-file=ref ?data-file-raw=bool ?extended-l2=bool size=uint ?version=enum:v2|v3 "
              "?backing-file=str ?backing-fmt=drv ?encrypt=object ?cluster-size=uint ?preallocation=" PREALLOC
              " ?lazy-refcounts=bool ?refcount-bits=int ?compression-type=enum:zlib|zstd"},
    {"parallels", "file=ref size=uint ?cluster-size=uint"},
    {"qed", "file=ref size=uint ?backing-file=str ?backing-fmt=drv ?cluster-size=uint ?table-size=int"},
    {"vdi", "file=ref size=uint ?preallocation=" PREALLOC},
    {"vpc", "file=ref size=uint ?subformat=enum:dynamic|fixed ?force-size=bool"},
    {"vhdx", "file=ref size=uint ?log-size=uint ?block-size=uint ?subformat=enum:dynamic|fixed ?block-state-zero=bool"},
};
/* QEMU's create drivers vbd-daemon does not create on a node (yet). */
static const char qemu_create_drivers[] = "|gluster|luks|nfs|qcow|rbd|ssh|vmdk|";

static bool in_list(const char *list, const char *word)
{
    char w[80];
    snprintf(w, sizeof(w), "|%s|", word);
    return strstr(list, w) != NULL;
}

static const char *expected(const char *type)
{
    if (!strcmp(type, "int"))
        return "integer";
    if (!strcmp(type, "bool"))
        return "boolean";
    if (!strcmp(type, "ref"))
        return "BlockdevRef";
    if (!strcmp(type, "object"))
        return "object";
    return "string";
}

/* QAPI's checks of one object against spec, member names prefixed with
 * "options." in the errors. */
static bool check_members(struct json_object *o, const char *spec, struct vbd_qmp_error *err)
{
    char name[64], type[160];
    const char *p = spec;
    while (*p) {
        while (*p == ' ')
            p++;
        bool opt = *p == '?';
        p += opt;
        size_t n = strcspn(p, "=");
        snprintf(name, sizeof(name), "%.*s", (int)n, p);
        p += n + 1;
        n = strcspn(p, " ");
        snprintf(type, sizeof(type), "%.*s", (int)n, p);
        p += n;
        struct json_object *v;
        if (!json_object_object_get_ex(o, name, &v)) {
            if (!opt) {
                vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'options.%s' is missing", name);
                return false;
            }
            continue;
        }
        json_type t = json_object_get_type(v);
        bool str = !strcmp(type, "str") || !strcmp(type, "drv") || !strncmp(type, "enum:", 5);
        bool ok = str ? t == json_type_string
                : !strcmp(type, "int") || !strcmp(type, "uint") ? t == json_type_int
                : !strcmp(type, "bool") ? t == json_type_boolean
                : !strcmp(type, "ref") ? (t == json_type_string || t == json_type_object)
                : t == json_type_object;
        if (!ok && !strcmp(type, "uint")) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'options.%s' expects uint64", name);
            return false;
        }
        if (!ok) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for 'options.%s', expected: %s",
                               name, expected(type));
            return false;
        }
        char vals[170];
        snprintf(vals, sizeof(vals), "|%s|", !strncmp(type, "enum:", 5) ? type + 5 : "");
        if ((!strcmp(type, "drv") && !in_list(block_drivers, json_object_get_string(v))) ||
            (!strncmp(type, "enum:", 5) && !in_list(vals, json_object_get_string(v)))) {
            /* QAPI's enum visitor names the member alone, without 'options.' */
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter '%s' does not accept value '%s'", name,
                               json_object_get_string(v));
            return false;
        }
    }
    json_object_object_foreach(o, key, val)
    {
        (void)val;
        char w[80];
        snprintf(w, sizeof(w), " %s=", key);
        char sp[600];
        snprintf(sp, sizeof(sp), " %s", spec);
        for (char *q = sp; *q; q++)
            if (*q == '?')
                *q = ' ';
        if (strcmp(key, "driver") && !strstr(sp, w)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'options.%s' is unexpected", key);
            return false;
        }
    }
    return true;
}

/* The union's tag: 'driver', a BlockdevDriver. */
static const char *check_driver(struct json_object *options, struct vbd_qmp_error *err)
{
    struct json_object *d;
    if (!json_object_object_get_ex(options, "driver", &d)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'options.driver' is missing");
        return NULL;
    }
    if (!json_object_is_type(d, json_type_string)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Invalid parameter type for 'options.driver', expected: string");
        return NULL;
    }
    const char *driver = json_object_get_string(d);
    if (!in_list(block_drivers, driver)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Parameter 'driver' does not accept value '%s'", driver);
        return NULL;
    }
    return driver;
}

static struct json_object *qmp_blockdev_create(struct json_object *args, struct vbd_qmp_error *err)
{
    struct json_object *options = json_object_object_get(args, "options");
    const char *job_id = json_object_get_string(json_object_object_get(args, "job-id"));
    const char *driver = check_driver(options, err);
    if (!driver)
        return NULL;
    const char *spec = NULL;
    for (size_t i = 0; i < sizeof(create_specs) / sizeof(create_specs[0]); i++)
        if (!strcmp(create_specs[i].driver, driver))
            spec = create_specs[i].members;
    if (!spec && in_list(qemu_create_drivers, driver)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR,
                           "Driver '%s' does not support blockdev-create in vbd-daemon (vbd-img create makes it)", driver);
        return NULL;
    }
    if (!spec) {
        /* a driver QEMU's union has no branch for: no members at all */
        if (!check_members(options, "", err))
            return NULL;
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Driver does not support blockdev-create");
        return NULL;
    }
    if (!check_members(options, spec, err))
        return NULL;
    const struct vbd_driver *drv = vbd_driver_find(driver);
    if (strcmp(driver, "file") && (!drv || !drv->create_onto_node)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Driver does not support blockdev-create");
        return NULL;
    }
    if (!vbd_create_job_start(job_id, options, err))
        return NULL;
    return vbd_qmp_ok();
}

static struct json_object *qmp_x_blockdev_amend(struct json_object *args, struct vbd_qmp_error *err)
{
    struct json_object *options = json_object_object_get(args, "options"), *v;
    const char *job_id = json_object_get_string(json_object_object_get(args, "job-id"));
    const char *node_name = json_object_get_string(json_object_object_get(args, "node-name"));
    bool force = json_object_object_get_ex(args, "force", &v) && json_object_get_boolean(v);
    const char *driver = check_driver(options, err);
    if (!driver)
        return NULL;
    /* BlockdevAmendOptions: qcow2 {encrypt}, luks {...}; no members for the rest */
    bool qcow2 = !strcmp(driver, "qcow2");
    if (!strcmp(driver, "luks")) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Driver 'luks' is not supported by vbd-daemon");
        return NULL;
    }
    if (!check_members(options, qcow2 ? "?encrypt=object" : "", err))
        return NULL;
    struct vbd_node *n = vbd_node_find(node_name);
    if (!n) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Cannot find device='' nor node-name='%s'", node_name);
        return NULL;
    }
    if (strcmp(n->drv->name, driver)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "x-blockdev-amend doesn't support changing the block driver");
        return NULL;
    }
    if (!qcow2 || !n->drv->co_amend) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Driver does not support x-blockdev-amend");
        return NULL;
    }
    if (!vbd_amend_job_start(job_id, n, options, force, err))
        return NULL;
    return vbd_qmp_ok();
}

const struct vbd_qmp_command vbd_qmp_cmds_create[] = {
    {"blockdev-create", "job-id:str options:object", qmp_blockdev_create, 0},
    {"x-blockdev-amend", "job-id:str node-name:str options:object ?force:bool", qmp_x_blockdev_amend, 0},
    {NULL, NULL, NULL, 0},
};
