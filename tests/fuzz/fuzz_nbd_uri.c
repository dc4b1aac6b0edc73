/* The nbd driver's filename parser (every URI form, with query parameters
 * and percent-escapes) and the authz glob matcher, on arbitrary text: the
 * first byte picks a scheme so that most inputs get past the prefix. No
 * input may crash, leak or read out of bounds; a refusal must come with a
 * message. */
#include "vbd/authz.h"
#include "vbd/block.h"
#include "vbd/error.h"

#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const schemes[] = {"nbd://",       "nbds://",      "nbd+unix:///", "nbds+unix:///",
                                          "nbd+tcp://",   "nbds+tcp://",  "nbd:",         "nbd:unix:",
                                          "nbd://[",      "nbds://u@h/e?", ""};
    if (size < 1 || size > 4096)
        return 0;
    const char *scheme = schemes[data[0] % (sizeof(schemes) / sizeof(schemes[0]))];
    /* bytes 0-19 of each class become URI punctuation, so queries and escapes come up often */
    static const char punct[] = "?&=%:/[]@.tls-certificates socket export=0123456789";
    size_t sl = strlen(scheme);
    char *s = malloc(sl + size);
    memcpy(s, scheme, sl);
    for (size_t i = 1; i < size; i++) {
        uint8_t b = data[i];
        s[sl + i - 1] = b < 20 ? punct[b] : (char)b;
    }
    s[sl + size - 1] = 0;
    const struct vbd_driver *d = vbd_driver_find("nbd");
    struct json_object *o = json_object_new_object();
    struct vbd_error *err = NULL;
    if (d->parse_filename(s, o, &err) < 0 && (!err || !err->msg[0]))
        abort(); /* a refusal without a message */
    vbd_error_free(err);
    json_object_put(o);
    /* glob: the input split in two at its first '|' (pattern|text) */
    char *bar = strchr(s + sl, '|');
    if (bar) {
        *bar = 0;
        (void)vbd_authz_glob_match(s + sl, bar + 1);
    }
    free(s);
    return 0;
}
