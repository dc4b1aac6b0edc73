/* SPDX-License-Identifier: MIT */
/*
 * vbd-io: qemu-io's commands for scripts and tests. Options, argument
 * checks, messages (on qemu-io 7.2's streams) and output lines match
 * qemu-io's so scripts can run either (tests/integration/io-parity.sh);
 * README lists where it differs on purpose (e.g. a failed aio request also
 * makes the exit status 1).
 */
#include "common.h"

#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"
#include "vbd/tls.h"

#include <ctype.h>
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
    "  -d, --discard MODE   unmap|on (default) or ignore|off: discards do nothing\n"
    "      --image-opts     FILE is an option string (driver=...,file.filename=...)\n"
    "      --object OBJ     tls-creds-x509|tls-creds-psk,id=ID,dir=DIR,endpoint=client,... (for an nbd\n"
    "                       node's tls-creds=ID)\n"
    "  FILE may be an NBD URI: nbd://, nbd+unix://, or nbds://, nbds+unix:// (TLS required) with\n"
    "  ?tls-certificates=DIR, ?tls-psk-file=FILE[&tls-username=NAME] or ?tls-creds=ID\n"
    "  -q, --quiet          print nothing but errors\n"
    "  -h, --help           this help;  -V, --version  version\n"
    "\n"
    "Commands (qemu-io's options, messages and output):\n"
    "  read [-Cpqv] [-P pat [-s off] [-l len]] OFF LEN   read, verify pattern byte pat if given\n"
    "  readv [-Cqv] [-P pat] OFF LEN [LEN..]           vectored read\n"
    "  write [-cCfnpquz] [-P pat] OFF LEN              write pattern (default 0xcd), zeroes (-z, -u may\n"
    "                                                  unmap), FUA (-f), compressed (-c)\n"
    "  writev [-Cfq] [-P pat] OFF LEN [LEN..]\n"
    "  aio_read / aio_write [same flags] OFF LEN [LEN..]  start in the background; aio_flush waits for all\n"
    "  discard [-Cq] OFF LEN | alloc OFF [LEN] | map | info | length | truncate [-m mode] SIZE | flush\n"
    "  sleep MS | close | quit\n"
    "Numbers take k, M, G, T, P, E suffixes. Exit status 0 only if every command succeeded.\n";

static struct vbd_backend *be;
static struct vbd_node *node;
static bool quiet, read_only;
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

/* qemu-io's one-line usage, printed (to stdout, as qemu-io does) when a
 * command's options or operands are wrong. */
static const struct cmd_usage {
    const char *name, *line;
} usages[] = {
    {"read", "read [-abCqv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset"},
    {"readv", "readv [-Cqv] [-P pattern] off len [len..] -- reads a number of bytes at a specified offset"},
    {"write", "write [-bcCfnquz] [-P pattern | -s source_file] off len -- writes a number of bytes at a specified "
              "offset"},
    {"writev", "writev [-Cfq] [-P pattern] off len [len..] -- writes a number of bytes at a specified offset"},
    {"aio_read", "aio_read [-Ciqv] [-P pattern] off len [len..] -- asynchronously reads a number of bytes"},
    {"aio_write", "aio_write [-Cfiquz] [-P pattern] off len [len..] -- asynchronously writes a number of bytes"},
    {"discard", "discard [-Cq] off len -- discards a number of bytes at a specified offset"},
    {"truncate", "truncate [-m prealloc_mode] off -- truncates the current file at the given offset"},
};

static void print_usage(const char *name)
{
    for (size_t i = 0; i < sizeof(usages) / sizeof(usages[0]); i++)
        if (!strcmp(usages[i].name, name))
            printf("%s\n", usages[i].line);
}

/* qemu-io prints parse errors on stdout */
static int get_num(const char *s, int64_t *out)
{
    *out = tool_strtosz(s);
    if (*out == -EINVAL)
        printf("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n", s);
    else if (*out == -ERANGE)
        printf("Parsing error: argument too large -- %s\n", s);
    return *out < 0 ? (int)*out : 0;
}

static int parse_pattern(const char *arg)
{
    char *end;
    long p = strtol(arg, &end, 0);
    if (p < 0 || p > 255 || *end) {
        printf("%s is not a valid pattern byte\n", arg);
        return -1;
    }
    return (int)p;
}

static void dump(const uint8_t *buf, int64_t off, int64_t len)
{
    for (int64_t i = 0; i < len; i += 16) {
        printf("%08llx:  ", (unsigned long long)(off + i));
        int j;
        for (j = 0; j < 16 && i + j < len; j++)
            printf("%02x ", buf[i + j]);
        printf(" ");
        for (j = 0; j < 16 && i + j < len; j++)
            putchar(isalnum(buf[i + j]) ? buf[i + j] : '.');
        printf("\n");
    }
}

static void report_csv(int64_t len, uint64_t t0)
{
    double secs = (vbd_clock_ns() - t0) / 1e9;
    int h = (int)(secs / 3600), m = (int)(secs / 60) % 60;
    printf("%lld,%d,%d:%02d:%05.2f,%.3f,%.3f\n", (long long)len, 1, h, m, secs - 3600 * h - 60 * m,
           secs > 0 ? len / secs : 0, secs > 0 ? 1 / secs : 0);
}

/* QEMU's compressed writes cover whole clusters, the image's last one
 * possibly partial; vbd would take any range, qemu-io refuses it. */
static bool compress_aligned(int64_t off, int64_t len)
{
    struct vbd_image_info info;
    struct vbd_error *err = NULL;
    if (vbd_node_get_info(node, &info, &err) < 0) {
        vbd_error_free(err);
        return true;
    }
    json_object_put(info.format_specific);
    uint64_t cs = info.cluster_size;
    return !cs || (off % cs == 0 && (len % cs == 0 || (uint64_t)(off + len) == node->size));
}

/* read/readv/write/writev/aio_*: qemu-io's options, checks and messages.
 * name is the command as qemu-io names it (for usage lines). */
static int do_rw(int argc, char **argv, const char *name, bool write, bool vectored)
{
    const char *optstr = !strcmp(name, "read") ? "bCl:pP:qs:v" : !strcmp(name, "readv") ? "CP:qv"
                       : !strcmp(name, "aio_read") ? "CP:iqv" : !strcmp(name, "write") ? "bcCfnpP:qs:uz"
                       : !strcmp(name, "writev") ? "CfP:q" : "CfiP:quz";
    int pattern = -1, c;
    bool zero = false, unmap = false, fua = false, oquiet = false, verbose = false, csv = false;
    bool lflag = false, sflag = false, nofallback = false, compress = false;
    int64_t pat_off = 0, pat_len = 0;
    optind = 0;
    while ((c = getopt(argc, argv, optstr)) != -1) {
        switch (c) {
        case 'P':
            pattern = parse_pattern(optarg);
            if (pattern < 0)
                return -EINVAL;
            break;
        case 'l':
            lflag = true;
            if (get_num(optarg, &pat_len) < 0)
                return -EINVAL;
            break;
        case 's':
            if (write) {
                /* write -s FILE: data from a file is not a vbd-io feature */
                printf("write -s is not supported\n");
                return -ENOTSUP;
            }
            sflag = true;
            if (get_num(optarg, &pat_off) < 0)
                return -EINVAL;
            break;
        case 'z': zero = true; break;
        case 'u': unmap = true; break;
        case 'f': fua = true; break;
        case 'n': nofallback = true; break;
        case 'q': oquiet = true; break;
        case 'v': verbose = true; break;
        case 'C': csv = true; break;
        case 'p': case 'i': break;
        case 'b':
            printf("%s -b: the VM state is not supported\n", name);
            return -ENOTSUP;
        case 'c': compress = true; break;
        default: print_usage(name); return -EINVAL;
        }
    }
    int nargs = argc - optind;
    if (nargs < 2 || (!vectored && nargs != 2)) {
        print_usage(name);
        return -EINVAL;
    }
    if (write && zero && pattern >= 0) {
        printf("Only one of -z, -P, and -s can be specified at the same time\n");
        return -EINVAL;
    }
    if (unmap && !zero) {
        printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    if (nofallback && !zero) {
        printf("-n requires -z to be specified\n");
        return -EINVAL;
    }
    int64_t off, total = 0;
    if (get_num(argv[optind], &off) < 0)
        return -EINVAL;
    if (compress && off % 512) {
        printf("%lld is not a sector-aligned value for 'offset'\n", (long long)off);
        return -EINVAL;
    }
    int niov = nargs - 1;
    struct iovec *iov = calloc(niov, sizeof(*iov));
    for (int k = 0; k < niov; k++) {
        int64_t l;
        if (get_num(argv[optind + 1 + k], &l) < 0) {
            free(iov);
            return -EINVAL;
        }
        iov[k].iov_len = l;
        total += l;
    }
    /* BDRV_REQUEST_MAX_BYTES */
    const int64_t max = 2147483136;
    if (total > max && !vectored && !(write && nofallback)) {
        printf("length cannot exceed %lld%s, given %s\n", (long long)max,
               write ? " without -n" : "", argv[optind + 1]);
        free(iov);
        return -EINVAL;
    }
    if (compress && total % 512) {
        printf("%lld is not a sector-aligned value for 'count'\n", (long long)total);
        free(iov);
        return -EINVAL;
    }
    if (!write && pattern < 0 && (lflag || sflag)) {
        print_usage(name);
        free(iov);
        return -EINVAL;
    }
    if (!lflag)
        pat_len = total - pat_off;
    if (pat_len < 0 || pat_len + pat_off > total) {
        printf("pattern verification range exceeds end of read data\n");
        free(iov);
        return -EINVAL;
    }
    uint8_t *buf = zero ? NULL : vbd_alloc_aligned(4096, total ? total : 1);
    for (size_t k = 0, pos = 0; k < (size_t)niov && buf; pos += iov[k].iov_len, k++)
        iov[k].iov_base = buf + pos;
    if (buf)
        memset(buf, write ? (pattern >= 0 ? pattern : 0xcd) : 0xab, total);
    struct vbd_qiov q;
    vbd_qiov_init(&q, iov, niov);
    uint64_t t0 = vbd_clock_ns();
    int rc;
    uint64_t size = vbd_backend_size(be);
    bool past_end = (uint64_t)off > size || size - off < (uint64_t)total;
    if (compress && !zero && !past_end && !(node->supported_write_flags & VBD_REQ_COMPRESSED))
        rc = -ENOTSUP; /* the block layer would write it uncompressed */
    else if (compress && !zero && !past_end && !compress_aligned(off, total))
        rc = -EINVAL;
    else if (write && zero)
        rc = vbd_backend_co_pwrite_zeroes(be, off, total, (unmap ? VBD_REQ_MAY_UNMAP : 0) | (fua ? VBD_REQ_FUA : 0));
    else if (write)
        rc = vbd_backend_co_pwritev(be, off, total, &q,
                                    (fua ? VBD_REQ_FUA : 0) | (compress ? VBD_REQ_COMPRESSED : 0));
    else
        rc = vbd_backend_co_preadv(be, off, total, &q, 0);
    /* the backend refuses a range past the end (EINVAL); qemu-io's says EIO */
    if (rc == -EINVAL && past_end)
        rc = -EIO;
    if (rc < 0) {
        printf("%s failed: %s\n", vectored ? (write ? "writev" : "readv") : write ? "write" : "read",
               strerror(-rc));
    } else {
        if (!write && pattern >= 0) {
            for (int64_t i = pat_off; i < pat_off + pat_len; i++)
                if (buf[i] != pattern) {
                    printf("Pattern verification failed at offset %lld, %lld bytes\n", (long long)(off + pat_off),
                           (long long)pat_len);
                    rc = -EILSEQ;
                    break;
                }
        }
        if (!oquiet && !quiet) {
            if (!write && verbose)
                dump(buf, off, total);
            if (csv)
                report_csv(total, t0);
            else
                report(write ? "wrote" : "read", total, total, off, t0, 1);
        }
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
    if (do_rw(j->argc, j->argv, j->argv[0], j->write, true) < 0)
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

/* qemu-io's map: what the image itself (not its backing chain) defines,
 * runs of the same state merged */
static int do_map(void)
{
    uint64_t off = 0, size = node->size;
    while (off < size) {
        uint64_t pnum;
        int rc = vbd_node_co_block_status(node, false, off, size - off, &pnum, NULL, NULL);
        if (rc < 0) {
            vbd_error_report("Failed to get allocation status: %s", strerror(-rc));
            return rc;
        }
        if (pnum == 0) {
            vbd_error_report("Unexpected end of image");
            return -EIO;
        }
        bool alloc = rc & VBD_BS_ALLOCATED;
        uint64_t len = pnum;
        while (off + len < size) {
            uint64_t p2;
            int rc2 = vbd_node_co_block_status(node, false, off + len, size - off - len, &p2, NULL, NULL);
            if (rc2 < 0 || p2 == 0 || (bool)(rc2 & VBD_BS_ALLOCATED) != alloc)
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

/* qemu-io's commands, aliases and operand counts (options count too, as
 * qemu-io checks before parsing them); max -1: no limit. */
static const struct cmd_def {
    const char *name, *alias;
    int min, max;
} cmd_defs[] = {
    {"read", "r", 2, -1},     {"readv", NULL, 2, -1},    {"write", "w", 2, -1},    {"writev", NULL, 2, -1},
    {"aio_read", NULL, 2, -1}, {"aio_write", NULL, 2, -1}, {"aio_flush", NULL, 0, 0}, {"flush", "f", 0, 0},
    {"discard", "d", 2, -1},  {"length", "l", 0, 0},     {"map", NULL, 0, 0},      {"info", "i", 0, 0},
    {"truncate", "t", 1, 3},  {"alloc", "a", 1, 2},      {"sleep", NULL, 1, 1},    {"close", "c", 0, 0},
    {"quit", "q", 0, 0},
};

static bool closed, quitting;

/* qemu-io's alloc: what this layer (not its backing) defines, 512 bytes
 * unless a count is given. */
static int do_alloc(int argc, char **argv)
{
    int64_t off, count = 512;
    if (get_num(argv[1], &off) < 0)
        return -EINVAL;
    if (argc == 3 && get_num(argv[2], &count) < 0)
        return -EINVAL;
    uint64_t size = node->size, start = off, pos = off, remaining = count, sum = 0;
    while (remaining) {
        if (pos >= size) {
            count -= remaining;
            break;
        }
        uint64_t pnum, len = remaining < size - pos ? remaining : size - pos;
        int rc = vbd_node_co_block_status(node, false, pos, len, &pnum, NULL, NULL);
        if (rc < 0) {
            printf("is_allocated failed: %s\n", strerror(-rc));
            return rc;
        }
        if (pnum == 0) {
            count -= remaining;
            break;
        }
        if (rc & VBD_BS_ALLOCATED)
            sum += pnum;
        pos += pnum;
        remaining -= pnum;
    }
    char s[64];
    tool_cvtstr((double)start, s, sizeof(s));
    printf("%llu/%lld bytes allocated at offset %s\n", (unsigned long long)sum, (long long)count, s);
    return 0;
}

static int do_discard(int argc, char **argv)
{
    bool q = false, csv = false;
    int c;
    int64_t a, b;
    optind = 0;
    while ((c = getopt(argc, argv, "Cq")) != -1) {
        if (c == 'q')
            q = true;
        else if (c == 'C')
            csv = true;
        else {
            print_usage("discard");
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        print_usage("discard");
        return -EINVAL;
    }
    if (get_num(argv[optind], &a) < 0 || get_num(argv[optind + 1], &b) < 0)
        return -EINVAL;
    if (b > 2147483136) {
        printf("length cannot exceed %d, given %s\n", 2147483136, argv[optind + 1]);
        return -EINVAL;
    }
    uint64_t t0 = vbd_clock_ns();
    uint64_t size = vbd_backend_size(be);
    int rc = vbd_backend_co_pdiscard(be, a, b);
    if (rc == -EINVAL && ((uint64_t)a > size || size - a < (uint64_t)b))
        rc = -EIO; /* as qemu-io */
    if (rc < 0)
        printf("discard failed: %s\n", strerror(-rc));
    else if (!q && !quiet)
        csv ? report_csv(b, t0) : report("discard", b, b, a, t0, 1);
    return rc;
}

static int do_truncate(int argc, char **argv)
{
    enum vbd_prealloc prealloc = VBD_PREALLOC_OFF;
    int c;
    int64_t a;
    optind = 0;
    while ((c = getopt(argc, argv, "m:")) != -1) {
        if (c != 'm') {
            print_usage("truncate");
            return -EINVAL;
        }
        if (!strcmp(optarg, "off"))
            prealloc = VBD_PREALLOC_OFF;
        else if (!strcmp(optarg, "metadata"))
            prealloc = VBD_PREALLOC_METADATA;
        else if (!strcmp(optarg, "falloc"))
            prealloc = VBD_PREALLOC_FALLOC;
        else if (!strcmp(optarg, "full"))
            prealloc = VBD_PREALLOC_FULL;
        else {
            vbd_error_report("Invalid preallocation mode '%s'", optarg);
            return -EINVAL;
        }
    }
    /* qemu-io 7.2 takes the first operand and ignores the rest */
    if (optind > argc - 1) {
        print_usage("truncate");
        return -EINVAL;
    }
    if (get_num(argv[optind], &a) < 0)
        return -EINVAL;
    struct vbd_error *err = NULL;
    int rc = vbd_node_co_truncate(node, a, true, prealloc, &err);
    if (rc < 0) {
        vbd_error_report("%s", err ? err->msg : strerror(-rc));
        vbd_error_free(err);
    }
    return rc;
}

static int do_info(void)
{
    printf("format name: %s\n", node->drv->name);
    /* QEMU's parallels driver has no info: qemu-io stops here, failing */
    if (!strcmp(node->drv->name, "parallels"))
        return -ENOTSUP;
    struct vbd_image_info info;
    struct vbd_error *err = NULL;
    if (vbd_node_get_info(node, &info, &err) < 0) {
        tool_report(err);
        return -EIO;
    }
    char s[64];
    tool_cvtstr(info.cluster_size, s, sizeof(s));
    printf("cluster size: %s\n", s);
    /* qcow2 keeps the VM state after the guest's data: at the first L1
     * entry past the virtual size (l2 tables of cluster_size / 8 entries) */
    uint64_t vmstate = 0;
    if (!strcmp(node->drv->name, "qcow2") && info.cluster_size) {
        uint64_t per_l1 = (uint64_t)info.cluster_size * (info.cluster_size / 8);
        vmstate = (node->size + per_l1 - 1) / per_l1 * per_l1;
    }
    tool_cvtstr((double)vmstate, s, sizeof(s));
    printf("vm state offset: %s\n", s);
    struct json_object *data;
    if (info.format_specific && json_object_object_get_ex(info.format_specific, "data", &data)) {
        printf("Format specific information:\n");
        tool_print_specific(data, 4);
    }
    json_object_put(info.format_specific);
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
    const struct cmd_def *d = NULL;
    for (size_t i = 0; i < sizeof(cmd_defs) / sizeof(cmd_defs[0]); i++)
        if (!strcmp(argv[0], cmd_defs[i].name) || (cmd_defs[i].alias && !strcmp(argv[0], cmd_defs[i].alias)))
            d = &cmd_defs[i];
    if (!d) {
        fprintf(stderr, "command \"%s\" not found\n", argv[0]);
        return -EINVAL;
    }
    const char *c = d->name;
    if (closed && strcmp(c, "quit")) {
        fprintf(stderr, "no file open, try 'help open'\n");
        return -EINVAL;
    }
    int n = argc - 1;
    if (n < d->min || (d->max != -1 && n > d->max)) {
        if (d->max == d->min)
            fprintf(stderr, "bad argument count %d to %s, expected %d arguments\n", n, argv[0], d->min);
        else if (d->max == -1)
            fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n", n, argv[0], d->min);
        else
            fprintf(stderr, "bad argument count %d to %s, expected between %d and %d arguments\n", n, argv[0],
                    d->min, d->max);
        return -EINVAL;
    }
    int rc;
    /* qemu-io asks for write permission before parsing the command */
    if (read_only && (!strcmp(c, "write") || !strcmp(c, "writev") || !strcmp(c, "aio_write") ||
                      !strcmp(c, "discard") || !strcmp(c, "truncate"))) {
        vbd_error_report("Block node is read-only");
        return -EPERM;
    }
    if (!strcmp(c, "read"))
        return do_rw(argc, argv, c, false, false);
    if (!strcmp(c, "write"))
        return do_rw(argc, argv, c, true, false);
    if (!strcmp(c, "readv"))
        return do_rw(argc, argv, c, false, true);
    if (!strcmp(c, "writev"))
        return do_rw(argc, argv, c, true, true);
    if (!strcmp(c, "aio_read"))
        return start_aio(argc, argv, false);
    if (!strcmp(c, "aio_write"))
        return start_aio(argc, argv, true);
    if (!strcmp(c, "aio_flush")) {
        wait_aio();
        rc = vbd_backend_co_flush(be);
        if (rc < 0)
            printf("aio_flush failed: %s\n", strerror(-rc));
        return rc;
    }
    if (!strcmp(c, "flush")) {
        rc = vbd_backend_co_flush(be);
        if (rc < 0)
            printf("flush failed: %s\n", strerror(-rc));
        return rc;
    }
    if (!strcmp(c, "discard"))
        return do_discard(argc, argv);
    if (!strcmp(c, "alloc"))
        return do_alloc(argc, argv);
    if (!strcmp(c, "length")) {
        char s[64];
        tool_cvtstr((double)vbd_backend_size(be), s, sizeof(s));
        printf("%s\n", s);
        return 0;
    }
    if (!strcmp(c, "map"))
        return do_map();
    if (!strcmp(c, "info"))
        return do_info();
    if (!strcmp(c, "truncate"))
        return do_truncate(argc, argv);
    if (!strcmp(c, "sleep")) {
        char *end;
        long ms = strtol(argv[1], &end, 0);
        if (ms < 0 || *end) {
            printf("%s is not a valid number\n", argv[1]);
            return -EINVAL;
        }
        vbd_co_sleep_ns((uint64_t)ms * 1000000ull);
        return 0;
    }
    if (!strcmp(c, "close")) {
        /* the image stays open until exit; later commands see it closed */
        wait_aio();
        closed = true;
        return 0;
    }
    quitting = true;
    return 0;
}

struct run_args {
    char **cmds;
    int ncmds;
};

static void run_all(void *opaque)
{
    struct run_args *r = opaque;
    for (int i = 0; i < r->ncmds && !quitting; i++) {
        char *line = strdup(r->cmds[i]);
        if (run_command(line) < 0)
            failures++;
        free(line);
    }
    wait_aio();
}

/* Opens the image as tool_open does, with qemu-io's messages: "can't open
 * device FILE: " (or "can't open: " for --image-opts) before the reason,
 * which names the file only when open(2) itself failed. */
static struct vbd_node *open_image(const char *filename, const char *fmt, bool image_opts, unsigned flags,
                                   bool share_rw)
{
    struct vbd_error *err = NULL;
    struct json_object *opts = NULL;
    const char *dev = image_opts ? "" : " device ", *name = image_opts ? "" : filename;
    if (image_opts && fmt) {
        vbd_error_report("--image-opts and -f are mutually exclusive");
        return NULL;
    }
    if (share_rw) {
        vbd_error_report("can't open%s%s: force-share=on can only be used with read-only images", dev, name);
        return NULL;
    }
    bool unknown_fmt = false;
    struct vbd_node *n = NULL;
    /* qemu-io's --image-opts has no implied name: a bare first word is a flag */
    if (!tool_open_options(&filename, fmt, image_opts, NULL, &opts, &unknown_fmt, &err)) {
        if (unknown_fmt)
            vbd_error_report("can't open device %s: Unknown driver '%s'", name, fmt);
        if (!err)
            return NULL;
    } else {
        n = vbd_open(filename, opts, flags, &err);
    }
    if (!n) {
        const char *m = err ? err->msg : "unknown error";
        /* the block layer names the file before a format's reason, as
         * qemu-img does; qemu-io keeps that only for open(2)'s errno */
        if (err && !strncmp(m, "Could not open '", 16)) {
            const char *q = strstr(m + 16, "': ");
            const char *tail = strerror(err->code);
            if (q && strcmp(q + 3, tail))
                m = q + 3;
        }
        /* qemu-io prints a lock conflict's question as a hint line of its own */
        const char *hint = strstr(m, " lock: Is another process");
        if (hint)
            vbd_error_report("can't open%s%s: %.*s\n%s", dev, name, (int)(hint - m + 5), m, hint + 7);
        else
            vbd_error_report("can't open%s%s: %s", dev, name, m);
        vbd_error_free(err);
    }
    return n;
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
        {"discard", required_argument, NULL, 'd'}, {"native-aio", no_argument, NULL, 'k'},
        {NULL, 0, NULL, 0},
    };
    vbd_log_set_prog("vbd-io");
    static char *cmds[256];
    int ncmds = 0;
    const char *fmt = NULL, *cache = "writethrough", *aio = NULL;
    bool ro = false, force_share = false, image_opts = false, unmap = true;
    int c;
    while ((c = getopt_long(argc, argv, "c:f:rnt:i:UqhVkd:", longopts, NULL)) != -1) {
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
        case 'k': aio = "native"; break; /* qemu-io's --native-aio: -i native */
        case 'd':
            if (!strcmp(optarg, "ignore") || !strcmp(optarg, "off"))
                unmap = false;
            else if (!strcmp(optarg, "unmap") || !strcmp(optarg, "on"))
                unmap = true;
            else {
                vbd_error_report("Invalid discard option: %s", optarg);
                return 1;
            }
            break;
        case 'o':
            if (tool_add_object(optarg) < 0) {
                vbd_tls_creds_remove_all();
                return 1;
            }
            break;
        case 'h': fputs(usage_text, stdout); return 0;
        case 'V': printf("vbd-io version " "0.1.0" "\n"); return 0;
        default: fputs(usage_text, stdout); return 1;
        }
    }
    if (optind < argc - 1) {
        fputs(usage_text, stdout);
        return 1;
    }
    struct run_args ra = {cmds, ncmds};
    if (optind == argc) {
        /* as qemu-io: no image, every command says so */
        closed = true;
        vbd_co_run_sync(run_all, &ra);
        vbd_tls_creds_remove_all();
        return failures ? 1 : 0;
    }
    unsigned flags = ro ? 0 : VBD_OPEN_RDWR;
    if (unmap)
        flags |= VBD_OPEN_UNMAP;
    if (force_share)
        flags |= VBD_OPEN_FORCE_SHARE;
    read_only = ro;
    bool writethrough = true;
    if (tool_aio_flags(aio, &flags) < 0 || tool_cache_flags(cache, &flags, &writethrough) < 0)
        return 1;
    if (aio && !strcmp(aio, "native"))
        flags |= VBD_OPEN_AIO_NATIVE; /* io_uring runs it; the file node refuses it without -t none as qemu-io does */
    node = open_image(argv[optind], fmt, image_opts, flags, force_share && !ro);
    if (!node)
        return 1;
    struct vbd_error *err = NULL;
    struct vbd_backend_opts bo = {.read_only = ro, .writethrough = writethrough, .discard_unmap = unmap};
    be = vbd_backend_new(node, &bo, &err);
    if (!be) {
        tool_report(err);
        vbd_node_unref(node);
        return 1;
    }
    vbd_co_run_sync(run_all, &ra);
    vbd_backend_free(be);
    vbd_node_unref(node);
    vbd_tls_creds_remove_all();
    return failures ? 1 : 0;
}
