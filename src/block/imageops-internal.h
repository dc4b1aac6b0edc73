/* SPDX-License-Identifier: MIT */
/*
 * What the imageops files (copy.c, commit.c, rebase.c, convert.c) share:
 * options with their defaults filled in, progress and cancellation, and
 * the chunk writer with zero detection and compression.
 */
#ifndef VBD_BLOCK_IMAGEOPS_INTERNAL_H
#define VBD_BLOCK_IMAGEOPS_INTERNAL_H

#include "vbd/imageops.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vbd_node;
struct vbd_error;

/* opts (may be NULL) with the defaults of struct vbd_copy_opts applied;
 * -EINVAL with *err set if they do not fit together. */
int imageops_opts(const struct vbd_copy_opts *in, struct vbd_copy_opts *out, struct vbd_error **err);

/* The name a message gives a node: its file name, else its node name. */
const char *imageops_node_label(const struct vbd_node *n);

/* -ECANCELED with *err set if the caller asked to stop; 0 otherwise. */
int imageops_check_cancel(struct vbd_imageops_ctl *ctl, const struct vbd_node *n, uint64_t off, struct vbd_error **err);
void imageops_add_total(struct vbd_imageops_ctl *ctl, uint64_t bytes);
/* Count bytes as done and call the caller's chunk_done; its error (with *err set) or 0. */
int imageops_advance(struct vbd_imageops_ctl *ctl, const struct vbd_node *n, uint64_t off, uint64_t bytes,
                     uint64_t written, struct vbd_error **err);

/* Write len (<= o->chunk_size) bytes of buf (already read) to dst at off,
 * as opts says: zero runs as write-zeroes or not at all, compressed
 * clusters whole. runs: scratch from imageops_runs_new(o), allocated once
 * per operation rather than once per chunk. */
int imageops_write(struct vbd_node *dst, uint64_t off, uint64_t len, const uint8_t *buf, uint64_t *runs,
                   const struct vbd_copy_opts *o, struct vbd_error **err);
/* Room for the runs of one chunk of o->chunk_size bytes (free() it). */
uint64_t *imageops_runs_new(const struct vbd_copy_opts *o);
/* imageops_write in two steps, so that a caller can look for zeroes before
 * it waits for its turn to write: imageops_zero_runs splits buf into
 * alternating data and zero runs (at most imageops_runs_max(o, len) of
 * them, the first a zero run if *first_zero), imageops_write_runs writes
 * them. */
size_t imageops_runs_max(const struct vbd_copy_opts *o, uint64_t len);
unsigned imageops_zero_runs(const uint8_t *buf, uint64_t len, const struct vbd_copy_opts *o, uint64_t *runs,
                            bool *first_zero);
int imageops_write_runs(struct vbd_node *dst, uint64_t off, const uint8_t *buf, const uint64_t *runs, unsigned n,
                        bool first_zero, const struct vbd_copy_opts *o, struct vbd_error **err);
/* A range known to read as zeroes (block status): nothing if the target
 * is zero already, else one write-zeroes request. */
int imageops_write_zeroes(struct vbd_node *dst, uint64_t off, uint64_t len, const struct vbd_copy_opts *o,
                          struct vbd_error **err);
/* Copy [off, off + bytes) src -> dst through buf (o->chunk_size bytes) and
 * runs (imageops_runs_new), chunk by chunk, counting progress and checking
 * cancellation per chunk. */
int imageops_copy(struct vbd_node *src, struct vbd_node *dst, uint64_t off, uint64_t bytes, uint8_t *buf,
                  uint64_t *runs, const struct vbd_copy_opts *o, struct vbd_imageops_ctl *ctl, struct vbd_error **err);

/* Error helpers: "<what> '<node>' at offset N: <strerror>" with code -rc; return rc. */
int imageops_io_error(struct vbd_error **err, int rc, const char *what, const struct vbd_node *n, uint64_t off);

#endif
