/* SPDX-License-Identifier: MIT */
#ifndef VBD_NBD_H
#define VBD_NBD_H

#include <stdbool.h>

struct json_object;
struct vbd_error;

/*
 * The daemon's NBD server (one per process, like qemu-storage-daemon's
 * --nbd-server): opts are the keys of `--nbd-server` / QMP nbd-server-start:
 * addr.type=unix|inet, addr.path, addr.host, addr.port, tls-creds (the id
 * of an endpoint=server tls-creds-* object: TLS is then required;
 * tls-authz is refused), max-connections. Runs on the main loop (called from its
 * coroutine or before the loop runs; start and stop assert the main thread). NBD exports are created through the
 * export type table (type=nbd) and need a running server.
 */
struct vbd_export_type;
extern const struct vbd_export_type vbd_export_type_nbd;

int vbd_nbd_server_start(struct json_object *opts, struct vbd_error **err);
/* Stop listening, finish in-flight replies, close connections. */
void vbd_nbd_server_stop(void);
bool vbd_nbd_server_running(void);
/* Coroutine: waits until a client that reached transmission disconnects
 * leaving no connection (qemu-nbd without -t exits then; one that only
 * listed the exports or failed its handshake does not count). false when
 * the server stops first. Main loop. */
bool vbd_nbd_server_wait_last_client(void);
/* Serve one connected socket (closed at the end); for tests and fuzzing. */
void vbd_nbd_serve_fd(int fd);
/* Whether an NBD export serves node n's persistent bitmap `name`: it is
 * busy then, as QEMU's (an in-memory one carries its own busy flag). */
struct vbd_node;
bool vbd_nbd_bitmap_exported(struct vbd_node *n, const char *name);

#endif
