/* SPDX-License-Identifier: MIT */
/*
 * QMP's input: a stream of JSON values parsed incrementally with json-c's
 * tokener (strict JSON, UTF-8 validated, depth-limited), whatever way the
 * bytes are split into reads. Bounds and resync: see monitor.h.
 */
#include "qmp/monitor.h"

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

void qmp_stream_init(struct qmp_stream *s, qmp_stream_cb *cb, void *opaque)
{
    memset(s, 0, sizeof(*s));
    /* json-c counts the top-level value as one level */
    s->tok = json_tokener_new_ex(QMP_MAX_DEPTH + 1);
    if (s->tok)
        json_tokener_set_flags(s->tok,
                               JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS | JSON_TOKENER_VALIDATE_UTF8);
    s->cb = cb;
    s->opaque = opaque;
}

void qmp_stream_destroy(struct qmp_stream *s)
{
    if (s->tok)
        json_tokener_free(s->tok);
    s->tok = NULL;
}

static void parse_error(struct qmp_stream *s, const char *why)
{
    char desc[160];
    snprintf(desc, sizeof(desc), "JSON parse error, %s", why);
    json_tokener_reset(s->tok);
    s->value_bytes = 0;
    s->skipping = true;
    s->skipped = 0;
    s->cb(s->opaque, NULL, desc);
}

int qmp_stream_feed(struct qmp_stream *s, const char *buf, size_t len)
{
    if (!s->tok) {
        s->cb(s->opaque, NULL, "JSON parse error, out of memory");
        return -1;
    }
    while (len) {
        if (s->skipping) {
            const char *nl = memchr(buf, '\n', len);
            if (!nl) {
                s->skipped += len;
                return s->skipped > QMP_MAX_REQUEST ? -1 : 0;
            }
            len -= (size_t)(nl + 1 - buf);
            buf = nl + 1;
            s->skipping = false;
            continue;
        }
        if (s->value_bytes == 0) {
            /* blank space between values does not count towards a request's size */
            while (len && (*buf == ' ' || *buf == '\t' || *buf == '\r' || *buf == '\n'))
                buf++, len--;
            if (!len)
                break;
        }
        size_t room = QMP_MAX_REQUEST - s->value_bytes;
        size_t chunk = len < room ? len : room;
        struct json_object *v = json_tokener_parse_ex(s->tok, buf, (int)chunk);
        enum json_tokener_error jerr = json_tokener_get_error(s->tok);
        size_t used = json_tokener_get_parse_end(s->tok);
        if (used > chunk)
            used = chunk;
        if ((v || jerr == json_tokener_success) && used) {
            /* a complete value (json null comes back as NULL with success) */
            json_tokener_reset(s->tok);
            s->value_bytes = 0;
            buf += used;
            len -= used;
            s->cb(s->opaque, v, NULL);
            json_object_put(v);
            continue;
        }
        if (jerr == json_tokener_continue) {
            s->value_bytes += chunk;
            buf += chunk;
            len -= chunk;
            if (s->value_bytes >= QMP_MAX_REQUEST) {
                char why[80];
                snprintf(why, sizeof(why), "request larger than %u bytes", QMP_MAX_REQUEST);
                parse_error(s, why);
            }
            continue;
        }
        buf += used;
        len -= used;
        if (jerr == json_tokener_error_depth) {
            char why[80];
            snprintf(why, sizeof(why), "nesting deeper than %d levels", QMP_MAX_DEPTH);
            parse_error(s, why);
        } else {
            parse_error(s, json_tokener_error_desc(jerr));
        }
        /* the rest of the line belongs to the bad value: skipped, unless
         * the error was found on the newline itself */
        if (used && buf[-1] == '\n')
            s->skipping = false;
    }
    return 0;
}
