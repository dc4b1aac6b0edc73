/* SPDX-License-Identifier: MIT */
#ifndef VBD_ERROR_H
#define VBD_ERROR_H

#include <stdarg.h>

/*
 * Two error channels (DESIGN.md pattern 7): I/O paths return -errno;
 * control paths additionally fill a struct vbd_error passed as the last
 * parameter, so a user always sees "what failed, on which node, why".
 *
 * Callers pass `struct vbd_error **err` (may be NULL to ignore). The callee
 * sets *err only when it fails; the caller frees it with vbd_error_free().
 */
struct vbd_error {
    int code;     /* positive errno value (EINVAL, EIO, ...) */
    char msg[512];
};

__attribute__((format(printf, 3, 4)))
void vbd_error_setf(struct vbd_error **err, int code, const char *fmt, ...);
void vbd_error_vsetf(struct vbd_error **err, int code, const char *fmt, va_list ap);
/* Prepend context: "opening 'x.qcow2': " + old message. No-op if err==NULL or *err==NULL. */
__attribute__((format(printf, 2, 3)))
void vbd_error_prepend(struct vbd_error **err, const char *fmt, ...);
void vbd_error_free(struct vbd_error *e);
/* Move src into *dst (if dst non-NULL and *dst empty), else free src. */
void vbd_error_propagate(struct vbd_error **dst, struct vbd_error *src);

/* Logging for daemons and tools: one line, prefixed with program name.
 * vbd_log from any thread (one write per line); the setters at start. */
enum vbd_log_level { VBD_LOG_ERROR, VBD_LOG_WARN, VBD_LOG_INFO, VBD_LOG_DEBUG };
void vbd_log_set_level(enum vbd_log_level lvl);
void vbd_log_set_prog(const char *prog);
enum vbd_log_level vbd_log_get_level(void);
__attribute__((format(printf, 2, 3)))
void vbd_log(enum vbd_log_level lvl, const char *fmt, ...);
#define vbd_error_report(...) vbd_log(VBD_LOG_ERROR, __VA_ARGS__)
#define vbd_warn(...) vbd_log(VBD_LOG_WARN, __VA_ARGS__)
#define vbd_info(...) vbd_log(VBD_LOG_INFO, __VA_ARGS__)
#define vbd_debug(...) do { if (vbd_log_get_level() >= VBD_LOG_DEBUG) vbd_log(VBD_LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
