/* SPDX-License-Identifier: MIT */
#ifndef VBD_QMP_MONITOR_H
#define VBD_QMP_MONITOR_H

#include <stdbool.h>
#include <stddef.h>

struct json_object;
struct json_tokener;

/*
 * QMP input is a stream of JSON values, not lines (json-stream.c). Bounds:
 * a value is at most QMP_MAX_REQUEST bytes and nests at most QMP_MAX_DEPTH
 * levels; beyond either, or on malformed JSON or invalid UTF-8, the
 * callback gets an error text ("JSON parse error, ...") and the parser
 * skips to the next newline (where a line-oriented client starts its next
 * request). A client that sends more than QMP_MAX_REQUEST further bytes
 * without a newline while skipping is to be dropped (feed returns -1).
 */
#define QMP_MAX_REQUEST (1u << 20)
#define QMP_MAX_DEPTH 64

/* value: a complete JSON value (the callback does not keep the reference),
 * or NULL with error set. The callback may yield. */
typedef void qmp_stream_cb(void *opaque, struct json_object *value, const char *error);

struct qmp_stream {
    struct json_tokener *tok;
    size_t value_bytes; /* fed to the value being parsed */
    /* duplicate keys: json-c keeps the last one silently; the ':' outside
     * strings of a value must equal the members json-c kept */
    size_t colons;
    bool in_string, escaped;
    /* "\u0000" in a string or key: json-c keeps the string past it, but a
     * key and every string a command uses is read as a C string that ends
     * there ("a.img\u0000x" would name a.img); such a request is refused */
    unsigned char hex_left; /* hex digits of a \u escape still to come */
    bool hex_zero, nul;
    bool skipping;      /* after an error, up to the next newline */
    size_t skipped;
    qmp_stream_cb *cb;
    void *opaque;
};

/* query-chardev's answer: the --chardev list (monitor.c). Main loop. */
struct json_object *vbd_qmp_query_chardev(void);

void qmp_stream_init(struct qmp_stream *s, qmp_stream_cb *cb, void *opaque);
void qmp_stream_destroy(struct qmp_stream *s);
/* 0, or -1: the client keeps going past the bound after an error. */
int qmp_stream_feed(struct qmp_stream *s, const char *buf, size_t len);

/* {"qemu": {"micro", "minor", "major"}, "package"}: the greeting's and query-version's. */
struct json_object *vbd_qmp_version(void);
/* The quit command: the daemon stops as on SIGTERM. */
void vbd_qmp_request_quit(void);

#endif
