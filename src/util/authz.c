/* SPDX-License-Identifier: MIT */
/*
 * authz-simple and authz-list objects (QEMU's authz/simple.c and
 * authz/list.c behaviour): an identity is allowed or not.
 */
#include "vbd/authz.h"

#include "vbd/alloc.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"

#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct authz_rule {
    char *match;
    bool allow, glob;
};

struct vbd_authz {
    char *id;
    bool list;          /* authz-list; else authz-simple */
    char *identity;     /* authz-simple */
    bool allow_default; /* authz-list: when no rule matches */
    struct authz_rule *rules;
    size_t nrules;
    int refs;
    struct vbd_authz *next;
};

static struct vbd_authz *registry;

bool vbd_authz_type(const char *qom_type)
{
    return !strncmp(qom_type, "authz-", 6);
}

static void authz_free(struct vbd_authz *a)
{
    for (size_t i = 0; i < a->nrules; i++)
        free(a->rules[i].match);
    free(a->rules);
    free(a->identity);
    free(a->id);
    free(a);
}

void vbd_authz_unref(struct vbd_authz *a)
{
    if (a && --a->refs == 0)
        authz_free(a);
}

const char *vbd_authz_id(const struct vbd_authz *a)
{
    return a->id;
}

static const char *utf8_next(const char *s)
{
    s++;
    while ((*s & 0xc0) == 0x80)
        s++;
    return s;
}

bool vbd_authz_glob_match(const char *p, const char *s)
{
    /* the usual backtracking to the last '*': linear in practice, no recursion on hostile input */
    const char *star_p = NULL, *star_s = NULL;
    while (*s) {
        if (*p == '*') {
            star_p = ++p;
            star_s = s;
        } else if (*p == '?') {
            p++;
            s = utf8_next(s);
        } else if (*p && *p == *s) {
            p++;
            s++;
        } else if (star_p) {
            p = star_p;
            s = star_s = utf8_next(star_s);
        } else {
            return false;
        }
    }
    while (*p == '*')
        p++;
    return !*p;
}

bool vbd_authz_is_allowed(const struct vbd_authz *a, const char *identity)
{
    if (!a->list)
        return !strcmp(a->identity, identity);
    for (size_t i = 0; i < a->nrules; i++) {
        const struct authz_rule *r = &a->rules[i];
        if (r->glob ? vbd_authz_glob_match(r->match, identity) : !strcmp(r->match, identity))
            return r->allow;
    }
    return a->allow_default;
}

static const char *const policies[] = {"deny", "allow", NULL};

/* One rule object: match, policy, format. */
static int take_rule(struct vbd_authz *a, struct json_object *ro, size_t i, struct vbd_error **err)
{
    static const char *const formats[] = {"exact", "glob", NULL};
    char what[96];
    snprintf(what, sizeof(what), "authz-list '%s' rule %zu", a->id, i);
    if (!json_object_is_type(ro, json_type_object)) {
        vbd_error_setf(err, EINVAL, "%s: expected an object with match, policy and format", what);
        return -EINVAL;
    }
    struct authz_rule *r = &a->rules[a->nrules];
    int policy = -1, format = 0;
    if (vbd_opt_take_str(ro, "match", &r->match, err) < 0 ||
        vbd_opt_take_enum(ro, "policy", policies, &policy, err) < 0 ||
        vbd_opt_take_enum(ro, "format", formats, &format, err) < 0) {
        vbd_error_prepend(err, "%s: ", what);
        free(r->match);
        r->match = NULL;
        return -EINVAL;
    }
    a->nrules++; /* owns r->match from here */
    if (!r->match || policy < 0) {
        vbd_error_setf(err, EINVAL, "%s: '%s' is required", what, r->match ? "policy" : "match");
        return -EINVAL;
    }
    r->allow = policy == 1;
    r->glob = format == 1;
    return vbd_opts_check_empty(ro, what, err) < 0 ? -EINVAL : 0;
}

/* rules: a JSON array, or keyval's {"0": {...}, "1": {...}}. */
static int take_rules(struct vbd_authz *a, struct json_object *rules, struct vbd_error **err)
{
    size_t n;
    bool array = json_object_is_type(rules, json_type_array);
    if (array) {
        n = json_object_array_length(rules);
    } else if (json_object_is_type(rules, json_type_object)) {
        n = (size_t)json_object_object_length(rules);
    } else {
        vbd_error_setf(err, EINVAL, "authz-list '%s': 'rules' must be a list of rules", a->id);
        return -EINVAL;
    }
    if (n)
        a->rules = vbd_xcalloc(n, sizeof(*a->rules));
    for (size_t i = 0; i < n; i++) {
        struct json_object *ro = NULL;
        if (array) {
            ro = json_object_array_get_idx(rules, i);
        } else {
            char key[24];
            snprintf(key, sizeof(key), "%zu", i);
            if (!json_object_object_get_ex(rules, key, &ro)) {
                vbd_error_setf(err, EINVAL, "authz-list '%s': rules are not numbered 0 to %zu (no rules.%zu)",
                               a->id, n - 1, i);
                return -EINVAL;
            }
        }
        int rc = take_rule(a, ro, i, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int vbd_authz_add(const char *qom_type, struct json_object *opts, struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the registry is the main thread's */
    bool list = !strcmp(qom_type, "authz-list");
    if (!list && strcmp(qom_type, "authz-simple")) {
        vbd_error_setf(err, ENOTSUP, "--object %s is not supported (supported: authz-simple, authz-list)",
                       qom_type);
        return -ENOTSUP;
    }
    struct vbd_authz *a = vbd_xcalloc(1, sizeof(*a));
    a->list = list;
    a->refs = 1;
    int policy = 0;
    struct json_object *rules = NULL;
    if (vbd_opt_take_str(opts, "id", &a->id, err) < 0)
        goto fail;
    if (!a->id) {
        vbd_error_setf(err, EINVAL, "%s: 'id' is required", qom_type);
        goto fail;
    }
    for (struct vbd_authz *o = registry; o; o = o->next)
        if (!strcmp(o->id, a->id)) {
            vbd_error_setf(err, EEXIST, "attempt to add duplicate object id '%s'", a->id);
            goto fail;
        }
    if (!list) {
        if (vbd_opt_take_str(opts, "identity", &a->identity, err) < 0)
            goto fail;
        if (!a->identity) {
            vbd_error_setf(err, EINVAL, "authz-simple '%s': 'identity' is required", a->id);
            goto fail;
        }
    } else {
        if (vbd_opt_take_enum(opts, "policy", policies, &policy, err) < 0)
            goto fail;
        a->allow_default = policy == 1;
        rules = vbd_opt_take_obj(opts, "rules");
        if (rules && take_rules(a, rules, err) < 0)
            goto fail;
    }
    char what[96];
    snprintf(what, sizeof(what), "%s '%s'", qom_type, a->id);
    if (vbd_opts_check_empty(opts, what, err) < 0)
        goto fail;
    json_object_put(rules);
    a->next = registry;
    registry = a;
    return 0;
fail:
    json_object_put(rules);
    authz_free(a);
    return -EINVAL;
}

struct vbd_authz *vbd_authz_get(const char *id, const char *who, struct vbd_error **err)
{
    for (struct vbd_authz *a = registry; a; a = a->next)
        if (!strcmp(a->id, id)) {
            a->refs++;
            return a;
        }
    vbd_error_setf(
        err, ENOENT,
        "%s: no authorization object with id '%s' (create it with --object authz-simple or authz-list)", who,
        id);
    return NULL;
}

void vbd_authz_remove_all(void)
{
    assert(vbd_thread_is_main()); /* the registry is the main thread's */
    while (registry) {
        struct vbd_authz *a = registry;
        registry = a->next;
        vbd_authz_unref(a);
    }
}

static struct vbd_authz *find(const char *id)
{
    struct vbd_authz *a = registry;
    while (a && strcmp(a->id, id))
        a = a->next;
    return a;
}

int vbd_authz_remove(const char *id, struct vbd_error **err)
{
    assert(vbd_thread_is_main()); /* the registry is the main thread's */
    for (struct vbd_authz **pp = &registry; *pp; pp = &(*pp)->next) {
        struct vbd_authz *a = *pp;
        if (strcmp(a->id, id))
            continue;
        if (a->refs > 1) {
            vbd_error_setf(err, EBUSY, "%s '%s' is in use by the NBD server (tls-authz)",
                           a->list ? "authz-list" : "authz-simple", id);
            return -EBUSY;
        }
        *pp = a->next;
        vbd_authz_unref(a);
        return 0;
    }
    vbd_error_setf(err, ENOENT, "object '%s' not found", id);
    return -ENOENT;
}

const char *vbd_authz_next(const char *prev)
{
    struct vbd_authz *a = prev ? find(prev) : NULL;
    a = prev ? (a ? a->next : NULL) : registry;
    return a ? a->id : NULL;
}

struct json_object *vbd_authz_props(const char *id, const char **qom_type)
{
    struct vbd_authz *a = find(id);
    if (!a)
        return NULL;
    *qom_type = a->list ? "authz-list" : "authz-simple";
    struct json_object *o = json_object_new_object();
    if (!a->list) {
        json_object_object_add(o, "identity", json_object_new_string(a->identity));
        return o;
    }
    json_object_object_add(o, "policy", json_object_new_string(policies[a->allow_default]));
    struct json_object *rules = json_object_new_array();
    for (size_t i = 0; i < a->nrules; i++) {
        struct json_object *r = json_object_new_object();
        json_object_object_add(r, "match", json_object_new_string(a->rules[i].match));
        json_object_object_add(r, "policy", json_object_new_string(policies[a->rules[i].allow]));
        json_object_object_add(r, "format", json_object_new_string(a->rules[i].glob ? "glob" : "exact"));
        json_object_array_add(rules, r);
    }
    json_object_object_add(o, "rules", rules);
    return o;
}

int vbd_authz_set_identity(const char *id, const char *identity)
{
    struct vbd_authz *a = find(id);
    if (!a)
        return -ENOENT;
    if (a->list)
        return -EINVAL;
    char *copy = vbd_xstrdup(identity);
    free(a->identity);
    a->identity = copy;
    return 0;
}
