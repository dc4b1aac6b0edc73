/* SPDX-License-Identifier: MIT */
/*
 * vbd-io's open image, shared by the command interpreter (vbd-io.c) and
 * open/reopen/close (io-open.c). One thread: the tool's coroutines.
 */
#ifndef VBD_TOOLS_IO_H
#define VBD_TOOLS_IO_H

#include <stdbool.h>

struct json_object;

/* how open and the command line's -s and -C open an image */
#define IO_SNAPSHOT 0x1u /* -s: writes go to a temporary overlay, gone at close */
#define IO_COR      0x2u /* -C: copy-on-read */

extern struct vbd_backend *io_be;
extern struct vbd_node *io_node; /* NULL: no image open (close, or none given) */
/* open -C: the copy-on-read filter over io_node that the backend runs on
 * (info, map and alloc describe io_node, as qemu-io's copy-on-read is a
 * flag of the image's own node) */
extern struct vbd_node *io_cor_filter;
extern bool io_read_only;

/* Opens the image (filename, or what opts name; opts is taken) with
 * qemu-io's messages; 0 or -1 (reported). */
int io_open_file(const char *filename, struct json_object *opts, unsigned flags, unsigned mode, bool writethrough,
                 bool force_share);
/* the open image's cache mode writes through (no write cache) */
bool io_writethrough(void);
/* the requests in flight end first, as qemu-io drains */
void io_close_image(void);
/* the open and reopen commands: 0 or -EINVAL (reported) */
int io_do_open(int argc, char **argv);
int io_do_reopen(int argc, char **argv);

/* vbd-io.c: a command's usage line; waiting for the aio requests in flight */
void io_print_usage(const char *name);
int io_wait_aio(void);

#endif
