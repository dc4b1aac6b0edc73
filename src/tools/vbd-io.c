/* SPDX-License-Identifier: MIT */
/*
 * vbd-io: qemu-io's commands for scripts and tests. Output lines match
 * qemu-io's so scripts can parse either; unlike qemu-io, any failed
 * command or pattern mismatch makes the exit status 1.
 */
#include "common.h"

#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/tls.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static const char usage_text[] =
    "Usage: vbd-io [OPTIONS]... [-c COMMAND]... [FILE]\n"
    "vbd-io -- a block-layer exerciser with qemu-io's commands\n"
    "\n"
    "  -c, --cmd STRING     run command STRING (may be repeated; run in order)\n"
    "  -f, --format FMT     image format (raw, qcow2, ...); probed if absent\n"
    "  -r, --read-only      open read-only\n"
    "  -n, --nocache        disable the host cache (same as -t none)\n"
    "  -t, --cache MODE     writeback|writethrough|none|directsync|unsafe (default writethrough)\n"
    "  -i, --aio MODE       io_uring|threads (default io_uring)\n"
    "  -U, --force-share    open without taking image locks (read-only)\n"
    "      --image-opts     FILE is an option string (driver=...,file.filename=...)\n"
    "      --object OBJ     tls-creds-x509|tls-creds-psk,id=ID,dir=DIR,endpoint=client,... (for an nbd\n"
    "                       node's tls-creds=ID)\n"
    "  FILE may be an NBD URI: nbd://, nbd+unix://, or nbds://, nbds+unix:// (TLS required) with\n"
    "  ?tls-certificates=DIR, ?tls-psk-file=FILE[&tls-username=NAME] or ?tls-creds=ID\n"
    "  -q, --quiet          print nothing but errors\n"
    "  -h, --help           this help;  -V, --version  version\n"
    "\n"
    "Commands:\n"
    "  read [-P pat] [-q] [-v] OFF LEN     read, verify pattern byte pat if given\n"
    "  readv [-P pat] [-q] OFF LEN [LEN..] vectored read\n"
    "  write [-P pat] [-z [-u]] [-f] [-q] OFF LEN   write pattern (default 0xcd), zeroes (-z, -u may unmap), FUA (-f)\n"
    "  writev [-P pat] [-f] [-q] OFF LEN [LEN..]\n"
    "  aio_read / aio_write [same flags] OFF LEN    start in the background; aio_flush waits for all and flushes\n"
    "  discard OFF LEN | flush | length | map | info | truncate SIZE | sleep MS\n"
    "Numbers take k, M, G, T, P, E suffixes. Exit status 0 only if every command succeeded.\n";

static struct vbd_backend *be;
static struct vbd_node *node;
static bool quiet;
static int failures;
static int aio_pending;
static struct vbd_co_queue aio_waiters = VBD_CO_QUEUE_INIT;

static void report(const char *op, int64_t done, int64_t len, int64_t off, uint64_t t0, int ops)
{
    if (quiet)
        return;
    double secs = (vbd_clock_ns() - t0) / 1e9;
    char sz[64], rate[64];
    printf("%s %lld/%lld bytes at offset %lld\n", op, (long long)done, (long long)len, (long long)off);
    tool_cvtstr((double)len, sz, sizeof(sz));
    tool_cvtstr(secs > 0 ? len / secs : 0, rate, sizeof(rate));
    char ts[32];
    if (secs < 60)
        snprintf(ts, sizeof(ts), "%05.2f sec", secs);
    else
        snprintf(ts, sizeof(ts), "%d:%05.2f sec", (int)(secs / 60), secs - 60 * (int)(secs / 60));
    printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n", sz, ops, ts, rate, secs > 0 ? ops / secs : 0.0);
}

struct rw_opts {
    int pattern; /* -1: none */
    bool zero, unmap, fua, quiet, verbose;
    int argi;
};

static int parse_rw_flags(int argc, char **argv, struct rw_opts *o, const char *allowed)
{
    o->pattern = -1;
    int i = 1;
    for (; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
        char f = argv[i][1];
        if (!strchr(allowed, f) || argv[i][2]) {
            fprintf(stderr, "%s: invalid option -- '%s'\n", argv[0], argv[i] + 1);
            return -1;
        }
        if (f == 'P') {
            if (++i >= argc) {
                fprintf(stderr, "%s: -P needs a pattern\n", argv[0]);
                return -1;
            }
            char *end;
            long p = strtol(argv[i], &end, 0);
            if (*end || p < 0 || p > 255) {
                fprintf(stderr, "%s: invalid pattern '%s'\n", argv[0], argv[i]);
                return -1;
            }
            o->pattern = (int)p;
        } else if (f == 'z') {
            o->zero = true;
        } else if (f == 'u') {
            o->unmap = true;
        } else if (f == 'f') {
            o->fua = true;
        } else if (f == 'q') {
            o->quiet = true;
        } else if (f == 'v') {
            o->verbose = true;
        }
    }
    o->argi = i;
    return 0;
}

static int get_num(const char *s, const char *what, int64_t *out)
{
    *out = tool_cvtnum(s);
    if (*out < 0) {
        fprintf(stderr, "non-numeric %s argument -- %s\n", what, s);
        return -1;
    }
    return 0;
}

static void dump(const uint8_t *buf, int64_t off, int64_t len)
{
    for (int64_t i = 0; i < len; i += 16) {
        printf("%08llx: ", (unsigned long long)(off + i));
        for (int j = 0; j < 16 && i + j < len; j++)
            printf(" %02x", buf[i + j]);
        printf("\n");
    }
}

/* read/readv/write/writev with any number of lengths (one buffer each). */
static int do_rw(int argc, char **argv, bool write, bool vectored)
{
    struct rw_opts o = {0};
    if (parse_rw_flags(argc, argv, &o, write ? "Pzufqv" : "Pqv") < 0)
        return -EINVAL;
    int nargs = argc - o.argi;
    if (nargs < 2 || (!vectored && nargs != 2)) {
        fprintf(stderr, "%s: wrong number of arguments\n", argv[0]);
        return -EINVAL;
    }
    int64_t off, total = 0;
    if (get_num(argv[o.argi], "offset", &off) < 0)
        return -EINVAL;
    int niov = nargs - 1;
    struct iovec *iov = calloc(niov, sizeof(*iov));
    for (int k = 0; k < niov; k++) {
        int64_t l;
        if (get_num(argv[o.argi + 1 + k], "length", &l) < 0) {
            free(iov);
            return -EINVAL;
        }
        iov[k].iov_len = l;
        total += l;
    }
    uint8_t *buf = o.zero ? NULL : vbd_alloc_aligned(4096, total ? total : 1);
    for (int k = 0, pos = 0; k < niov && buf; pos += iov[k].iov_len, k++)
        iov[k].iov_base = buf + pos;
    if (buf && write)
        memset(buf, o.pattern >= 0 ? o.pattern : 0xcd, total);
    struct vbd_qiov q;
    vbd_qiov_init(&q, iov, niov);
    uint64_t t0 = vbd_clock_ns();
    int rc;
    if (write && o.zero)
        rc = vbd_backend_co_pwrite_zeroes(be, off, total, (o.unmap ? VBD_REQ_MAY_UNMAP : 0) | (o.fua ? VBD_REQ_FUA : 0));
    else if (write)
        rc = vbd_backend_co_pwritev(be, off, total, &q, o.fua ? VBD_REQ_FUA : 0);
    else
        rc = vbd_backend_co_preadv(be, off, total, &q, 0);
    if (rc < 0) {
        fprintf(stderr, "%s failed: %s\n", write ? "write" : "read", strerror(-rc));
    } else {
        if (!write && o.pattern >= 0) {
            for (int64_t i = 0; i < total; i++)
                if (buf[i] != o.pattern) {
                    printf("Pattern verification failed at offset %lld, %lld bytes\n", (long long)(off + i),
                           (long long)total);
                    rc = -EILSEQ;
                    break;
                }
        }
        if (!write && o.verbose && !quiet)
            dump(buf, off, total);
        if (!o.quiet)
            report(write ? "wrote" : "read", total, total, off, t0, 1);
    }
    free(buf);
    free(iov);
    return rc;
}

struct aio_job {
    int argc;
    char **argv;
    bool write;
};

static void aio_entry(void *opaque)
{
    struct aio_job *j = opaque;
    if (do_rw(j->argc, j->argv, j->write, false) < 0)
        failures++;
    for (int i = 0; i < j->argc; i++)
        free(j->argv[i]);
    free(j->argv);
    free(j);
    if (--aio_pending == 0)
        vbd_co_queue_wake_all(&aio_waiters);
}

static int start_aio(int argc, char **argv, bool write)
{
    struct aio_job *j = calloc(1, sizeof(*j));
    j->argc = argc;
    j->write = write;
    j->argv = calloc(argc + 1, sizeof(char *));
    for (int i = 0; i < argc; i++)
        j->argv[i] = strdup(argv[i]);
    aio_pending++;
    vbd_co_wake(vbd_co_create(aio_entry, j));
    return 0;
}

static int wait_aio(void)
{
    while (aio_pending)
        vbd_co_queue_wait(&aio_waiters);
    return 0;
}

static int do_map(void)
{
    uint64_t off = 0, size = node->size;
    while (off < size) {
        uint64_t pnum;
        int depth;
        int rc = vbd_node_co_block_status_above(node, NULL, false, off, size - off, &pnum, NULL, NULL, &depth);
        if (rc < 0) {
            fprintf(stderr, "map failed: %s\n", strerror(-rc));
            return rc;
        }
        /* merge runs with the same allocation state */
        bool alloc = rc & VBD_BS_ALLOCATED;
        uint64_t len = pnum;
        while (off + len < size) {
            uint64_t p2;
            int rc2 = vbd_node_co_block_status_above(node, NULL, false, off + len, size - off - len, &p2, NULL, NULL,
                                                     &depth);
            if (rc2 < 0 || (bool)(rc2 & VBD_BS_ALLOCATED) != alloc)
                break;
            len += p2;
        }
        char s1[64], s2[64];
        tool_cvtstr((double)len, s1, sizeof(s1));
        tool_cvtstr((double)off, s2, sizeof(s2));
        printf("%s (0x%llx) bytes %s allocated at offset %s (0x%llx)\n", s1, (unsigned long long)len,
               alloc ? "   " : "not", s2, (unsigned long long)off);
        off += len;
    }
    return 0;
}

static int run_command(char *line)
{
    char *argv[64];
    int argc = 0;
    for (char *tok = strtok(line, " \t"); tok && argc < 63; tok = strtok(NULL, " \t"))
        argv[argc++] = tok;
    argv[argc] = NULL;
    if (argc == 0)
        return 0;
    const char *c = argv[0];
    int64_t a, b;
    int rc;
    if (!strcmp(c, "read") || !strcmp(c, "r"))
        return do_rw(argc, argv, false, false);
    if (!strcmp(c, "write") || !strcmp(c, "w"))
        return do_rw(argc, argv, true, false);
    if (!strcmp(c, "readv"))
        return do_rw(argc, argv, false, true);
    if (!strcmp(c, "writev"))
        return do_rw(argc, argv, true, true);
    if (!strcmp(c, "aio_read"))
        return start_aio(argc, argv, false);
    if (!strcmp(c, "aio_write"))
        return start_aio(argc, argv, true);
    if (!strcmp(c, "aio_flush")) {
        wait_aio();
        rc = vbd_backend_co_flush(be);
        if (rc < 0)
            fprintf(stderr, "aio_flush failed: %s\n", strerror(-rc));
        return rc;
    }
    if (!strcmp(c, "flush") || !strcmp(c, "f")) {
        rc = vbd_backend_co_flush(be);
        if (rc < 0)
            fprintf(stderr, "flush failed: %s\n", strerror(-rc));
        return rc;
    }
    if (!strcmp(c, "discard") || !strcmp(c, "d")) {
        int i = 1;
        bool q = false;
        if (argc > 1 && !strcmp(argv[1], "-q"))
            q = true, i++;
        if (argc - i != 2 || get_num(argv[i], "offset", &a) < 0 || get_num(argv[i + 1], "length", &b) < 0) {
            fprintf(stderr, "discard: wrong arguments\n");
            return -EINVAL;
        }
        uint64_t t0 = vbd_clock_ns();
        rc = vbd_backend_co_pdiscard(be, a, b);
        if (rc < 0)
            fprintf(stderr, "discard failed: %s\n", strerror(-rc));
        else if (!q)
            report("discard", b, b, a, t0, 1);
        return rc;
    }
    if (!strcmp(c, "length") || !strcmp(c, "l")) {
        char s[64];
        tool_cvtstr((double)vbd_backend_size(be), s, sizeof(s));
        printf("%s\n", s);
        return 0;
    }
    if (!strcmp(c, "map"))
        return do_map();
    if (!strcmp(c, "info") || !strcmp(c, "i")) {
        struct vbd_image_info info;
        struct vbd_error *err = NULL;
        if (vbd_node_get_info(node, &info, &err) < 0) {
            tool_report(err);
            return -EIO;
        }
        char s[64];
        printf("format name: %s\n", node->drv->name);
        tool_cvtstr(info.cluster_size, s, sizeof(s));
        printf("cluster size: %s\n", s);
        printf("vm state offset: 0 bytes\n");
        json_object_put(info.format_specific);
        return 0;
    }
    if (!strcmp(c, "truncate") || !strcmp(c, "t")) {
        if (argc != 2 || get_num(argv[1], "size", &a) < 0)
            return -EINVAL;
        struct vbd_error *err = NULL;
        rc = vbd_node_co_truncate(node, a, true, VBD_PREALLOC_OFF, &err);
        if (rc < 0) {
            fprintf(stderr, "truncate: %s\n", err ? err->msg : strerror(-rc));
            vbd_error_free(err);
        }
        return rc;
    }
    if (!strcmp(c, "sleep")) {
        if (argc != 2 || get_num(argv[1], "milliseconds", &a) < 0)
            return -EINVAL;
        vbd_co_sleep_ns((uint64_t)a * 1000000ull);
        return 0;
    }
    fprintf(stderr, "command \"%s\" not found\n", c);
    return -EINVAL;
}

struct run_args {
    char **cmds;
    int ncmds;
};

static void run_all(void *opaque)
{
    struct run_args *r = opaque;
    for (int i = 0; i < r->ncmds; i++) {
        char *line = strdup(r->cmds[i]);
        if (run_command(line) < 0)
            failures++;
        free(line);
    }
    wait_aio();
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* one line per command, as it completes (scripts watch it) */
    static const struct option longopts[] = {
        {"cmd", required_argument, NULL, 'c'},   {"format", required_argument, NULL, 'f'},
        {"read-only", no_argument, NULL, 'r'},   {"nocache", no_argument, NULL, 'n'},
        {"cache", required_argument, NULL, 't'}, {"aio", required_argument, NULL, 'i'},
        {"force-share", no_argument, NULL, 'U'}, {"image-opts", no_argument, NULL, 'O'},
        {"quiet", no_argument, NULL, 'q'},       {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},     {"object", required_argument, NULL, 'o'},
        {NULL, 0, NULL, 0},
    };
    vbd_log_set_prog("vbd-io");
    static char *cmds[256];
    int ncmds = 0;
    const char *fmt = NULL, *cache = "writethrough", *aio = NULL;
    bool ro = false, force_share = false, image_opts = false;
    int c;
    while ((c = getopt_long(argc, argv, "c:f:rnt:i:UqhVk", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            if (ncmds == 255) {
                vbd_error_report("too many -c commands (at most 255)");
                return 1;
            }
            cmds[ncmds++] = optarg;
            break;
        case 'f': fmt = optarg; break;
        case 'r': ro = true; break;
        case 'n': cache = "none"; break;
        case 't': cache = optarg; break;
        case 'i': aio = optarg; break;
        case 'U': force_share = true; break;
        case 'O': image_opts = true; break;
        case 'q': quiet = true; break;
        case 'k': break;
        case 'o':
            if (tool_add_object(optarg) < 0) {
                vbd_tls_creds_remove_all();
                return 1;
            }
            break;
        case 'h': fputs(usage_text, stdout); return 0;
        case 'V': printf("vbd-io version " "0.1.0" "\n"); return 0;
        default: fputs(usage_text, stderr); return 1;
        }
    }
    if (optind != argc - 1) {
        vbd_error_report("expected exactly one image; see 'vbd-io --help'");
        return 1;
    }
    unsigned flags = ro ? 0 : VBD_OPEN_RDWR;
    flags |= VBD_OPEN_UNMAP;
    if (force_share)
        flags |= VBD_OPEN_FORCE_SHARE;
    if (force_share && !ro) {
        vbd_error_report("force-share=on can only be used with read-only images");
        return 1;
    }
    if (tool_aio_flags(aio, &flags) < 0)
        return 1;
    bool writethrough = true;
    node = tool_open(argv[optind], fmt, image_opts, flags, cache, &writethrough);
    if (!node)
        return 1;
    struct vbd_error *err = NULL;
    struct vbd_backend_opts bo = {.read_only = ro, .writethrough = writethrough, .discard_unmap = true};
    be = vbd_backend_new(node, &bo, &err);
    if (!be) {
        tool_report(err);
        vbd_node_unref(node);
        return 1;
    }
    struct run_args ra = {cmds, ncmds};
    vbd_co_run_sync(run_all, &ra);
    vbd_backend_free(be);
    vbd_node_unref(node);
    vbd_tls_creds_remove_all();
    return failures ? 1 : 0;
}
