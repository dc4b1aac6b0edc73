/* SPDX-License-Identifier: MIT */
/*
 * QMP's input: a stream of JSON values parsed incrementally with json-c's
 * tokener (strict JSON, UTF-8 validated, depth-limited), whatever way the
 * bytes are split into reads. Bounds and resync: see monitor.h.
 *
 * Where QEMU's own JSON parser differs (tests/qmp/diff-core.jsonl marks
 * each): QEMU also takes single-quoted strings, refuses a lone surrogate
 * escape ("\ud800") and turns an integer beyond 64 bits into a float;
 * json-c turns the escape into U+FFFD and saturates the integer. QEMU
 * resyncs after an error where the brackets balance, this parser at the
 * next newline. A duplicate key, which json-c takes silently (the last
 * wins), is refused as QEMU does (count_colons). A "\u0000" escape, which
 * QEMU keeps as the bytes C0 80, is refused: the rest of vbd reads strings
 * as C strings, which would end there.
 */
#include "qmp/monitor.h"

#include <json-c/json.h>
#include <stdbool.h>
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


/* RFC 3629 UTF-8: no overlong forms, no surrogates, nothing above
 * U+10FFFF (json-c's own check lets all three through; QEMU refuses them). */
static bool utf8_valid(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
        if (!len || c > 0xf4 || i + len > n)
            return false;
        unsigned cp = c & (0x3f >> (len - 1));
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (p[i + k] & 0x3f);
        }
        static const unsigned min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

/* Every key and string in v (depth bounded by the tokener); *members
 * counts the object members json-c kept. */
static bool strings_valid(struct json_object *v, size_t *members)
{
    switch (json_object_get_type(v)) {
    case json_type_string:
        return utf8_valid((const unsigned char *)json_object_get_string(v), (size_t)json_object_get_string_len(v));
    case json_type_object: {
        *members += (size_t)json_object_object_length(v);
        json_object_object_foreach(v, key, val)
        {
            if (!utf8_valid((const unsigned char *)key, strlen(key)) || !strings_valid(val, members))
                return false;
        }
        return true;
    }
    case json_type_array:
        for (size_t i = 0; i < json_object_array_length(v); i++)
            if (!strings_valid(json_object_array_get_idx(v, i), members))
                return false;
        return true;
    default:
        return true;
    }
}

/* In JSON text a ':' outside strings separates one object member's key
 * and value: counted over the bytes json-c consumed for this value, it is
 * the number of members written. json-c can only keep fewer (a duplicate
 * replaces the earlier member, and whatever that held), so the counts
 * differ exactly when some object had a duplicate key. */
static void count_colons(struct qmp_stream *s, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (s->escaped) {
            s->escaped = false;
            if (c == 'u')
                s->hex_left = 4, s->hex_zero = true;
        } else if (s->hex_left) {
            s->hex_zero &= c == '0';
            if (--s->hex_left == 0 && s->hex_zero)
                s->nul = true;
        } else if (s->in_string)
            s->escaped = c == '\\', s->in_string = c != '"';
        else if (c == '"')
            s->in_string = true;
        else if (c == ':')
            s->colons++;
    }
}

static void value_reset(struct qmp_stream *s)
{
    json_tokener_reset(s->tok);
    s->value_bytes = 0;
    s->colons = 0;
    s->in_string = s->escaped = false;
    s->hex_left = 0;
    s->nul = false;
}

static void parse_error(struct qmp_stream *s, const char *why)
{
    char desc[160];
    snprintf(desc, sizeof(desc), "JSON parse error, %s", why);
    value_reset(s);
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
        if (v || (jerr == json_tokener_success && used)) {
            /* a complete value (json null comes back as NULL with success);
             * a number or literal ends on the byte after it, which may be
             * the first of this chunk: then nothing of it is used */
            count_colons(s, buf, used);
            size_t written = s->colons, kept = 0;
            bool nul = s->nul;
            value_reset(s);
            buf += used;
            len -= used;
            if (!strings_valid(v, &kept))
                s->cb(s->opaque, NULL, "JSON parse error, invalid UTF-8 sequence in string");
            else if (nul)
                s->cb(s->opaque, NULL, "JSON parse error, U+0000 (NUL) in a string");
            else if (kept != written)
                s->cb(s->opaque, NULL, "JSON parse error, duplicate key"); /* QEMU's words */
            else
                s->cb(s->opaque, v, NULL);
            json_object_put(v);
            continue;
        }
        if (jerr == json_tokener_continue) {
            count_colons(s, buf, chunk);
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
