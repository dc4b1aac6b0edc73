/* SPDX-License-Identifier: MIT */
#include "vbd/error.h"

#include <stdio.h>
#include <string.h>

static enum vbd_log_level log_level = VBD_LOG_INFO;
static char log_prog[64] = "vbd";

void vbd_log_set_level(enum vbd_log_level lvl) { log_level = lvl; }
enum vbd_log_level vbd_log_get_level(void) { return log_level; }

void vbd_log_set_prog(const char *prog)
{
    const char *slash = strrchr(prog, '/');
    snprintf(log_prog, sizeof(log_prog), "%s", slash ? slash + 1 : prog);
}

void vbd_log(enum vbd_log_level lvl, const char *fmt, ...)
{
    static const char *const prefix[] = {"", "warning: ", "", "debug: "};
    if (lvl > log_level)
        return;
    /* One write per line so lines from several threads never interleave. */
    char line[2048];
    int n = snprintf(line, sizeof(line), "%s: %s", log_prog, prefix[lvl]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    n += m < 0 ? 0 : (m > (int)sizeof(line) - n - 2 ? (int)sizeof(line) - n - 2 : m);
    line[n++] = '\n';
    fwrite(line, 1, n, stderr);
}
