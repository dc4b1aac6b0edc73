/* SPDX-License-Identifier: MIT */
/*
 * vbd-img internals: the verbs (one img-<verb>.c each, dispatched from
 * vbd-img.c) and the helpers more than one verb uses.
 */
#ifndef VBD_TOOLS_IMG_H
#define VBD_TOOLS_IMG_H

#include "common.h"

#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/imageops.h"
#include "vbd/loop.h"
#include "vbd/options.h"
#include "vbd/tls.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024 * 1024)

/* long options without a short letter (img-bitmap.c numbers its own from 300) */
enum {
    OPT_OUTPUT = 256, OPT_IMAGE_OPTS, OPT_BACKING_CHAIN, OPT_SHRINK, OPT_PREALLOC, OPT_SIZE, OPT_PATTERN,
    OPT_FLUSH_INTERVAL, OPT_NO_DRAIN, OPT_TARGET_IS_ZERO, OPT_START, OPT_MAXLEN, OPT_OBJECT, OPT_FORCE,
    OPT_TARGET_IMAGE_OPTS,
};

/* img-common.c */
bool parse_output(const char *s, bool *json);
/* qemu-img's error_exit: the message, then "Try 'vbd-img --help' for more
 * information"; returns 1 (every verb's exit code for a bad command line,
 * compare's too) */
int img_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* getopt_long's ':' (an option without its argument) or '?' (an unknown
 * option), reported as qemu-img does; the optstrings start with ':' */
int img_bad_option(int c, char **argv);
/* KEY is a creation option of DRV or of a protocol (QEMU merges the lists) */
bool img_known_create_option(const struct vbd_driver *drv, const char *key);
/* Set by create and convert: QEMU's qcow2 encryption options (encryption,
 * encrypt.*) pass img_check_create_options, for img_refuse_encryption:
 * 0 when none asks for encryption (encryption=off removed), else -1 after
 * qemu-img's words for what it would refuse too, or vbd's refusal */
extern bool img_encryption_options;
int img_refuse_encryption(const struct vbd_driver *drv, const char *filename, struct json_object *opts);
/* qemu-img's cvtnum_full: S as a size (k, M, G... suffixes) within
 * [MIN, MAX], or -1 after "Invalid NAME specified. ..." (qemu-img's two
 * lines for a bad number, one for one out of range) */
int64_t img_cvtnum(const char *name, const char *s, int64_t min, int64_t max);
/* convert/measure -l: loads the snapshot (qemu-img's forms and messages);
 * -1 after reporting the error */
int img_load_snapshot(struct vbd_node *n, const char *arg);
/* convert --bitmaps (img-bitmap.c): the source's persistent bitmaps, checked
 * before the copy (-1 after qemu-img's error for an inconsistent one unless
 * skip_broken) and copied into dst after it (-1 after reporting) */
int img_check_bitmaps(struct vbd_node *src, bool skip_broken);
int img_copy_bitmaps(struct vbd_node *src, struct vbd_node *dst, bool skip_broken);
int add_o(struct json_object **opts, const char *s);
/* The creation options of DRV and of the protocol that makes TARGET (NULL:
 * a file) checked as qemu-img's QemuOpts parse checks them, -o's in the
 * order given: an unknown name ("Invalid parameter 'X'"), a size, number
 * or bool that does not parse, in QEMU's words ("FILENAME: " before them
 * when FILENAME is not NULL). -1 after reporting the first. */
int img_check_create_options(const struct vbd_driver *drv, const char *target, struct json_object *opts,
                             const char *filename);
/* QemuOpts' number (qemu_strtou64, any base): 0, or -errno with QEMU's message in *err */
int img_opt_number(const char *name, const char *value, uint64_t *out, struct vbd_error **err);
/* Checked values as the drivers take them: sizes and numbers (hex, suffixes) as numbers, bools as on/off. */
void img_normalize_create_options(const struct vbd_driver *drv, const char *target, struct json_object *opts);
bool o_is_help(struct json_object *opts);
int print_create_help(const char *fmt, const char *filename);
/* A vbd_imageops_ctl chunk_done that prints -p progress (tool_progress). */
int img_print_progress(struct vbd_imageops_ctl *ctl, uint64_t off, uint64_t written);
static inline const char *fmt_or_null(const char *f) { return f && *f ? f : NULL; }
/* A read by a verb that reads one chunk at a time and waits for each (dd,
 * compare): a copy from the page cache (tmpfs) is made on this thread
 * (VBD_REQ_INLINE) instead of by a pool worker it would wait for. */
static inline int img_pread(struct vbd_node *n, uint64_t off, void *buf, uint64_t bytes)
{
    struct iovec one;
    struct vbd_qiov q;
    vbd_qiov_init_buf(&q, &one, buf, bytes);
    return vbd_node_co_preadv(n, off, bytes, &q, 0, VBD_REQ_INLINE);
}

/* img-info.c, also used by snapshot -l */
struct json_object *image_info_json(struct vbd_node *n, struct vbd_error **err);
void print_snapshot_table(struct json_object *v);

/* the verbs: argv[0] is the verb's name, options follow; the exit code is returned */
int verb_amend(int argc, char **argv);
int verb_bench(int argc, char **argv);
int verb_bitmap(int argc, char **argv);
int verb_check(int argc, char **argv);
int verb_commit(int argc, char **argv);
int verb_compare(int argc, char **argv);
int verb_convert(int argc, char **argv);
int verb_create(int argc, char **argv);
int verb_dd(int argc, char **argv);
int verb_info(int argc, char **argv);
int verb_map(int argc, char **argv);
int verb_measure(int argc, char **argv);
int verb_rebase(int argc, char **argv);
int verb_resize(int argc, char **argv);
int verb_snapshot(int argc, char **argv);

#endif
