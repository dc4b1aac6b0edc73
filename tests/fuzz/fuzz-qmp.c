/* The QMP input path on arbitrary bytes: the monitor's stream parser
 * (split into two reads at a point the input picks) and the dispatcher on
 * every value it yields, before and after negotiation. Only harmless
 * commands can run: the dispatcher looks commands up in this file's table
 * (the real qmp_capabilities, query-version, query-commands and
 * query-qmp-schema, and probes that only exercise the argument checks), so
 * no input can quit the process or touch a file. The first byte picks
 * raw bytes or a text built from QMP tokens (so the deterministic runner
 * of gcc builds reaches the dispatcher too). No input may crash, leak,
 * read out of bounds, or produce a reply that is neither return nor error. */
#include "qmp/monitor.h"
#include "vbd/coroutine.h"
#include "vbd/qmp.h"

#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct json_object *probe(struct json_object *args, struct vbd_qmp_error *err)
{
    struct json_object *fail;
    if (json_object_object_get_ex(args, "fail", &fail) && json_object_get_boolean(fail)) {
        vbd_qmp_error_setf(err, VBD_QMP_DEVICE_NOT_FOUND, "probe failed as asked");
        return NULL;
    }
    return json_object_get(args); /* the checked arguments come back */
}

static struct vbd_qmp_command table[8];

static void build_table(void)
{
    static const char *const real[] = {"qmp_capabilities", "query-version", "query-commands", "query-qmp-schema"};
    size_t n = 0;
    for (size_t i = 0; i < sizeof(real) / sizeof(real[0]); i++) {
        const struct vbd_qmp_command *c = vbd_qmp_command_find(real[i]);
        if (c)
            table[n++] = *c;
    }
    table[n++] = (struct vbd_qmp_command){"probe", "a:str ?b:int ?c:number ?d:bool ?e:object ?f:array ?g:any ?fail:bool",
                                          probe, 0};
    table[n++] = (struct vbd_qmp_command){"probe-boxed", NULL, probe, 0};
    table[n] = (struct vbd_qmp_command){NULL, NULL, NULL, 0};
}

struct run {
    const char *text;
    size_t len, split;
    bool negotiated;
};

static void on_value(void *opaque, struct json_object *v, const char *error)
{
    struct run *r = opaque;
    if (error) {
        if (strncmp(error, "JSON parse error, ", 18))
            abort();
        return;
    }
    struct json_object *reply = vbd_qmp_dispatch_table(v, r->negotiated, table);
    bool ret = json_object_object_get_ex(reply, "return", NULL), err = json_object_object_get_ex(reply, "error", NULL);
    if (ret == err)
        abort();
    /* the monitor negotiates on a successful qmp_capabilities */
    struct json_object *exec;
    if (ret && json_object_object_get_ex(v, "execute", &exec) && !strcmp(json_object_get_string(exec), "qmp_capabilities"))
        r->negotiated = true;
    (void)json_object_to_json_string(reply);
    json_object_put(reply);
}

static void run_co(void *opaque)
{
    struct run *r = opaque;
    struct qmp_stream s;
    qmp_stream_init(&s, on_value, r);
    if (qmp_stream_feed(&s, r->text, r->split) == 0)
        qmp_stream_feed(&s, r->text + r->split, r->len - r->split);
    qmp_stream_destroy(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const tokens[] = {
        "{", "}", "[", "]", ":", ",", "\n", " ", "\"execute\"", "\"arguments\"", "\"id\"",
        "\"qmp_capabilities\"", "\"query-version\"", "\"query-commands\"", "\"query-qmp-schema\"", "\"probe\"",
        "\"probe-boxed\"", "\"a\"", "\"b\"", "\"c\"", "\"d\"", "\"e\"", "\"f\"", "\"g\"", "\"fail\"", "\"enable\"",
        "\"oob\"", "true", "false", "null", "0", "-1", "1.5e3", "18446744073709551616", "\"\\ud800\"",
        "\"\xc3\x28\"", "\"\xf0\x9f\x98\x80\"", "\"\\u0000\"", "\"x\"", "{\"execute\": \"probe\", \"arguments\": {",
        "{\"execute\": \"qmp_capabilities\"}\n", "\xff", "\"", "\\",
    };
    if (size < 2 || size > 65536)
        return 0;
    static bool init;
    if (!init) {
        build_table();
        init = true;
    }
    struct run r = {.negotiated = data[0] & 2};
    char *text;
    size_t len = 0;
    if (data[0] & 1) {
        text = malloc(size * 48 + 1);
        for (size_t i = 2; i < size; i++) {
            const char *t = tokens[data[i] % (sizeof(tokens) / sizeof(tokens[0]))];
            size_t n = strlen(t);
            memcpy(text + len, t, n);
            len += n;
        }
    } else {
        text = malloc(size);
        memcpy(text, data + 2, size - 2);
        len = size - 2;
    }
    r.text = text;
    r.len = len;
    r.split = len ? data[1] % (len + 1) : 0;
    vbd_co_run_sync(run_co, &r);
    free(text);
    return 0;
}
