/* SPDX-License-Identifier: MIT */
#ifndef VBD_NBD_URI_H
#define VBD_NBD_URI_H

#include <stdbool.h>
#include <stddef.h>

struct json_object;
struct vbd_error;

/* uri (an NBD URI or QEMU's nbd:... filename) as the nbd driver's options:
 * server.type/path/host/port, export, tls and the TLS parameters. 0, or
 * -errno with *err naming the URI and what is wrong with it. */
int nbd_uri_parse(const char *uri, struct json_object *opts, struct vbd_error **err);

/* Where a connection goes: path (a unix socket) or host and port. */
struct nbd_uri_addr {
    const char *path, *host, *port, *export;
};
/* The nbds:// filename of a node: the URI's scheme and every TLS parameter
 * it was given (q: nq key/value pairs, NULL values left out), so it opens
 * again as it is. Truncated to size. */
void nbd_uri_tls_filename(char *buf, size_t size, const struct nbd_uri_addr *s, const char *q[][2], size_t nq);

#endif
