/* SPDX-License-Identifier: MIT */
#ifndef VBD_TOOLS_COMMON_H
#define VBD_TOOLS_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vbd_node;
struct vbd_error;
struct json_object;

/* qemu's cvtstr: "4 KiB", "1.500 MiB", "512 bytes". */
void tool_cvtstr(double value, char *buf, size_t len);
/* qemu's size_to_str for qemu-img info: "4 KiB", "2.07 MiB", "512 B". */
void tool_size_to_str(double value, char *buf, size_t len);
/* QEMU's qemu_strtosz: decimal or 0x hex, a fraction only with a unit
 * suffix (b k M G T P E, either case), a suffix on hex warned about on
 * stderr if warn; 0, -EINVAL, or -ERANGE past UINT64_MAX. */
int tool_strtosz_u64(const char *s, uint64_t *out, bool warn);
/* the same as its tools' cvtnum uses it: the value, -EINVAL, or -ERANGE past INT64_MAX */
int64_t tool_strtosz(const char *s);
/* a QemuOpts size option's value (parse_option_size): 0, or -errno with
 * QEMU's message in *err (the second and third lines its hint) */
int tool_opt_size(const char *name, const char *value, uint64_t *out, struct vbd_error **err);
/* the same, -1 on any error */
int64_t tool_cvtnum(const char *s);
/* The options an open takes from --image-opts (FILENAME is an option
 * string, read as QemuOpts: implied names the first element when it has no
 * '=', qemu-img's "file", NULL for qemu-io; JSON is taken too; *filename
 * becomes NULL) or from -f FMT. false after reporting an option string
 * that does not parse, with *unknown_fmt set when FMT names no driver, or
 * with *open_err set for what QEMU finds only at the open (the caller words
 * both: qemu-img and qemu-io differ). */
bool tool_open_options(const char **filename, const char *fmt, bool image_opts, const char *implied,
                       struct json_object **opts, bool *unknown_fmt, struct vbd_error **open_err);
/* Open an image as qemu-img does: fmt may be NULL (probe); image_opts: the
 * filename is an option string (tool_open_options). cache: qemu-img -t/-T
 * names (NULL: default). Returns NULL after printing "prog: msg" to stderr. */
struct vbd_node *tool_open(const char *filename, const char *fmt, bool image_opts, unsigned flags,
                           const char *cache, bool *writethrough);
/* Parse a cache mode into open flags (prints error, returns -1 on bad name). */
int tool_cache_flags(const char *cache, unsigned *flags, bool *writethrough);
int tool_aio_flags(const char *aio, unsigned *flags);
/* Print an error object as "prog: message" and free it. */
void tool_report(struct vbd_error *err);
/* Set by vbd-img: tool_open reports a file that cannot be opened as
 * qemu-img does, "Could not open 'F': " before the protocol's own
 * "Could not open 'F': <errno text>" (qemu-img's img_open prefixes every
 * open error). */
extern bool tool_open_prefix_errors;
/* Report MSG as vbd_error_report does, a lock conflict's question on a
 * line of its own (qemu-img's hint) */
void tool_report_text(const char *msg);
/* ERR is the file protocol's failed open(2), "Could not open 'F': <strerror>"
 * (which qemu-img prints as it is; the block layer's other reasons come
 * without that prefix in the messages that name the file themselves) */
bool tool_is_open_errno(const struct vbd_error *err);
/* report (and free) ERR from opening SHOWN as tool_open does */
void tool_report_open(const char *shown, struct vbd_error *err);
/* "[  42.00/100%]" progress on stderr-free stdout like qemu-img -p. */
void tool_progress(double pct);
void tool_progress_end(void);
/* qemu-img's own progress lines (util/qemu-progress.c), which convert -p
 * and compare -p print: tool_progress_init(MIN_SKIP) starts at 0 (convert
 * skips 1 point, compare 2); tool_progress_step(PCT) sets the progress to
 * PCT and prints "    (PCT/100%)\r" when it passed the last one printed
 * by more than MIN_SKIP or is 0 or 100 (in float, as QEMU);
 * tool_progress_add(DELTA) steps to the progress plus DELTA (compare's
 * relative steps); tool_progress_finish(ok) steps to 100 if ok, then
 * prints the line's end. */
void tool_progress_init(float min_skip);
void tool_progress_step(float pct);
void tool_progress_add(float delta);
void tool_progress_finish(bool ok);
/* --object ARG (tls-creds-x509, tls-creds-psk, tls-creds-anon): create it;
 * -1 after printing the error. */
int tool_add_object(const char *arg);
/* JSON printed like QEMU's (4-space indent, ": " separators). */
void tool_print_json(struct json_object *o);
char *tool_json_pretty(struct json_object *o);

/* -s of qemu-io and qemu-nbd (QEMU's BDRV_O_SNAPSHOT): a qcow2 overlay of
 * base's size in a temporary file ($TMPDIR, else /var/tmp) with base as its
 * backing node, opened with flags and the options in extra (taken; may be
 * NULL). The file is removed as soon as it is open, so the overlay goes
 * with the process. base keeps the caller's reference. NULL with err set
 * in QEMU's words. */
struct vbd_node *tool_open_temp_overlay(struct vbd_node *base, unsigned flags, struct json_object *extra,
                                        struct vbd_error **err);

/* Print format-specific info (json) as qemu-img info and qemu-io info do. */
void tool_print_specific(struct json_object *v, int indent);

#endif
