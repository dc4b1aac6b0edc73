/* SPDX-License-Identifier: MIT */
/*
 * vbd-io: qemu-io's commands for scripts and tests. Options, argument
 * checks, messages (on qemu-io 7.2's streams) and output lines match
 * qemu-io's so scripts can run either (tests/integration/io-parity.sh);
 * README lists where it differs on purpose (e.g. a failed aio request also
 * makes the exit status 1).
 */
#include "common.h"
#include "io.h"

#include "vbd/alloc.h"
#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"
#include "vbd/tls.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static const char usage_text[] =
    "Usage: vbd-io [OPTIONS]... [-c COMMAND]... [FILE]\n"
    "vbd-io -- a block-layer exerciser with qemu-io's commands\n"
    "\n"
    "  -c, --cmd STRING     run command STRING (may be repeated; run in order)\n"
    "  -f, --format FMT     image format (raw, qcow2, ...); probed if absent\n"
    "  -r, --read-only      open read-only\n"
    "  -s, --snapshot       writes go to a temporary overlay, discarded at exit\n"
    "  -C, --copy-on-read   data read from the backing chain is copied into the image\n"
    "  -n, --nocache        disable the host cache (same as -t none)\n"
    "  -t, --cache MODE     writeback|writethrough|none|directsync|unsafe (default writethrough)\n"
    "  -i, --aio MODE       io_uring|threads|native (default io_uring); -k, --native-aio: native\n"
    "  -m, --misalign       data buffers 16 bytes off their alignment (for O_DIRECT paths)\n"
    "  -T, --trace OPTS     accepted for qemu-io's scripts; vbd has no trace events (a warning)\n"
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
    "  read [-bCpqv] [-P pat [-s off] [-l len]] OFF LEN  read, verify pattern byte pat if given;\n"
    "                                                  -b: from the VM state (qcow2), not the disk\n"
    "  readv [-Cqv] [-P pat] OFF LEN [LEN..]           vectored read\n"
    "  write [-bcCfnpquz] [-P pat] OFF LEN             write pattern (default 0xcd), zeroes (-z, -u may\n"
    "                                                  unmap), FUA (-f), compressed (-c), VM state (-b)\n"
    "  writev [-Cfq] [-P pat] OFF LEN [LEN..]\n"
    "  aio_read / aio_write [same flags] OFF LEN [LEN..]  start in the background; aio_flush waits for all\n"
    "  discard [-Cq] OFF LEN | alloc OFF [LEN] | map | info | length | truncate [-m mode] SIZE | flush\n"
    "  write -s FILE OFF LEN                           write FILE's bytes, repeated\n"
    "  open [-rsCnkU] [-t cache] [-d discard] [-i aio] [-o options] [path] | close\n"
    "  reopen [-r|-w] [-c cache] [-o options]          the image again with changed options\n"
    "  break EVENT TAG | wait_break TAG | resume TAG | remove_break TAG   blkdebug breakpoints\n"
    "  help [CMD] | sleep MS | sigraise SIG | abort | quit\n"
    "Numbers take k, M, G, T, P, E suffixes. Exit status 0 only if every command succeeded.\n";

static bool quiet, misalign;
static int failures;
/* do_rw got as far as issuing its request (its command line was good) */
static bool rw_issued;
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

/* qemu-io 7.2's commands as its help shows them: arguments, one line,
 * and the longer text of "help CMD" (NULL: none). The one line with the
 * arguments is also the usage printed (to stdout, as qemu-io does) when a
 * command's options or operands are wrong. */
static const struct cmd_help {
    const char *name, *args, *oneline, *text;
} helps[] = {
    {"abort", NULL, "simulate a program crash using abort(3)",
        NULL},
    {"aio_flush", NULL, "completes all outstanding aio requests",
        NULL},
    {"aio_read", "[-Ciqv] [-P pattern] off len [len..]", "asynchronously reads a number of bytes",
        "\n"
        " asynchronously reads a range of bytes from the given offset\n"
        "\n"
        " Example:\n"
        " 'aio_read -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file\n"
        "\n"
        " Reads a segment of the currently open file, optionally dumping it to the\n"
        " standard output stream (with -v option) for subsequent inspection.\n"
        " The read is performed asynchronously and the aio_flush command must be\n"
        " used to ensure all outstanding aio requests have been completed.\n"
        " Note that due to its asynchronous nature, this command will be\n"
        " considered successful once the request is submitted, independently\n"
        " of potential I/O errors or pattern mismatches.\n"
        " -C, -- report statistics in a machine parsable format\n"
        " -P, -- use a pattern to verify read data\n"
        " -i, -- treat request as invalid, for exercising stats\n"
        " -v, -- dump buffer to standard output\n"
        " -q, -- quiet mode, do not show I/O statistics\n"
        "\n"},
    {"aio_write", "[-Cfiquz] [-P pattern] off len [len..]", "asynchronously writes a number of bytes",
        "\n"
        " asynchronously writes a range of bytes from the given offset source\n"
        " from multiple buffers\n"
        "\n"
        " Example:\n"
        " 'aio_write 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file\n"
        "\n"
        " Writes into a segment of the currently open file, using a buffer\n"
        " filled with a set pattern (0xcdcdcdcd).\n"
        " The write is performed asynchronously and the aio_flush command must be\n"
        " used to ensure all outstanding aio requests have been completed.\n"
        " Note that due to its asynchronous nature, this command will be\n"
        " considered successful once the request is submitted, independently\n"
        " of potential I/O errors or pattern mismatches.\n"
        " -P, -- use different pattern to fill file\n"
        " -C, -- report statistics in a machine parsable format\n"
        " -f, -- use Force Unit Access semantics\n"
        " -i, -- treat request as invalid, for exercising stats\n"
        " -q, -- quiet mode, do not show I/O statistics\n"
        " -u, -- with -z, allow unmapping\n"
        " -z, -- write zeroes using blk_aio_pwrite_zeroes\n"
        "\n"},
    {"alloc", "offset [count]", "checks if offset is allocated in the file",
        NULL},
    {"break", "event tag", "sets a breakpoint on event and tags the stopped request as tag",
        NULL},
    {"close", NULL, "close the current open file",
        NULL},
    {"discard", "[-Cq] off len", "discards a number of bytes at a specified offset",
        "\n"
        " discards a range of bytes from the given offset\n"
        "\n"
        " Example:\n"
        " 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file\n"
        "\n"
        " Discards a segment of the currently open file.\n"
        " -C, -- report statistics in a machine parsable format\n"
        " -q, -- quiet mode, do not show I/O statistics\n"
        "\n"},
    {"flush", NULL, "flush all in-core file state to disk",
        NULL},
    {"help", "[command]", "help for one or all commands",
        NULL},
    {"info", NULL, "prints information about the current file",
        NULL},
    {"length", NULL, "gets the length of the current file",
        NULL},
    {"map", "", "prints the allocated areas of a file",
        NULL},
    {"open", "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]", "open the file specified by path",
        "\n"
        " opens a new file in the requested mode\n"
        "\n"
        " Example:\n"
        " 'open -n -o driver=raw /tmp/data' - opens raw data file read-write, uncached\n"
        "\n"
        " Opens a file for subsequent use by all of the other vbd-io commands.\n"
        " -r, -- open file read-only\n"
        " -s, -- use snapshot file\n"
        " -C, -- use copy-on-read\n"
        " -n, -- disable host cache, short for -t none\n"
        " -U, -- force shared permissions\n"
        " -k, -- use kernel AIO implementation (Linux only, prefer use of -i)\n"
        " -i, -- use AIO mode (threads, native or io_uring)\n"
        " -t, -- use the given cache mode for the image\n"
        " -d, -- use the given discard mode for the image\n"
        " -o, -- options to be given to the block driver\n"},
    {"quit", NULL, "exit the program",
        NULL},
    {"read", "[-abCqv] [-P pattern [-s off] [-l len]] off len", "reads a number of bytes at a specified offset",
        "\n"
        " reads a range of bytes from the given offset\n"
        "\n"
        " Example:\n"
        " 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file\n"
        "\n"
        " Reads a segment of the currently open file, optionally dumping it to the\n"
        " standard output stream (with -v option) for subsequent inspection.\n"
        " -b, -- read from the VM state rather than the virtual disk\n"
        " -C, -- report statistics in a machine parsable format\n"
        " -l, -- length for pattern verification (only with -P)\n"
        " -p, -- ignored for backwards compatibility\n"
        " -P, -- use a pattern to verify read data\n"
        " -q, -- quiet mode, do not show I/O statistics\n"
        " -s, -- start offset for pattern verification (only with -P)\n"
        " -v, -- dump buffer to standard output\n"
        "\n"},
    {"readv", "[-Cqv] [-P pattern] off len [len..]", "reads a number of bytes at a specified offset",
        "\n"
        " reads a range of bytes from the given offset into multiple buffers\n"
        "\n"
        " Example:\n"
        " 'readv -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into the file\n"
        "\n"
        " Reads a segment of the currently open file, optionally dumping it to the\n"
        " standard output stream (with -v option) for subsequent inspection.\n"
        " Uses multiple iovec buffers if more than one byte range is specified.\n"
        " -C, -- report statistics in a machine parsable format\n"
        " -P, -- use a pattern to verify read data\n"
        " -v, -- dump buffer to standard output\n"
        " -q, -- quiet mode, do not show I/O statistics\n"
        "\n"},
    {"remove_break", "tag", "remove a breakpoint by tag",
        NULL},
    {"reopen", "[(-r|-w)] [-c cache] [-o options]", "reopens an image with new options",
        "\n"
        " Changes the open options of an already opened image\n"
        "\n"
        " Example:\n"
        " 'reopen -o lazy-refcounts=on' - activates lazy refcount writeback on a qcow2 image\n"
        "\n"
        " -r, -- Reopen the image read-only\n"
        " -w, -- Reopen the image read-write\n"
        " -c, -- Change the cache mode to the given value\n"
        " -o, -- Changes block driver options (cf. 'open' command)\n"
        "\n"},
    {"resume", "tag", "resumes the request tagged as tag",
        NULL},
    {"sigraise", "signal", "raises a signal",
        "\n"
        " raises the given signal\n"
        "\n"
        " Example:\n"
        " 'sigraise 15' - raises SIGTERM\n"
        "\n"
        " Invokes raise(signal), where \"signal\" is the mandatory integer argument\n"
        " given to sigraise.\n"
        "\n"},
    {"sleep", NULL, "waits for the given value in milliseconds",
        NULL},
    {"truncate", "[-m prealloc_mode] off", "truncates the current file at the given offset",
        NULL},
    {"wait_break", "tag", "waits for the suspension of a request",
        NULL},
    {"write", "[-bcCfnquz] [-P pattern | -s source_file] off len", "writes a number of bytes at a specified offset",
        "\n"
        " writes a range of bytes from the given offset\n"
        "\n"
        " Example:\n"
        " 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file\n"
        "\n"
        " Writes into a segment of the currently open file, using a buffer\n"
        " filled with a set pattern (0xcdcdcdcd).\n"
        " -b, -- write to the VM state rather than the virtual disk\n"
        " -c, -- write compressed data with blk_write_compressed\n"
        " -f, -- use Force Unit Access semantics\n"
        " -n, -- with -z, don't allow slow fallback\n"
        " -p, -- ignored for backwards compatibility\n"
        " -P, -- use different pattern to fill file\n"
        " -s, -- use a pattern file to fill the write buffer\n"
        " -C, -- report statistics in a machine parsable format\n"
        " -q, -- quiet mode, do not show I/O statistics\n"
        " -u, -- with -z, allow unmapping\n"
        " -z, -- write zeroes using blk_co_pwrite_zeroes\n"
        "\n"},
    {"writev", "[-Cfq] [-P pattern] off len [len..]", "writes a number of bytes at a specified offset",
        "\n"
        " writes a range of bytes from the given offset source from multiple buffers\n"
        "\n"
        " Example:\n"
        " 'writev 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open file\n"
        "\n"
        " Writes into a segment of the currently open file, using a buffer\n"
        " filled with a set pattern (0xcdcdcdcd).\n"
        " -P, -- use different pattern to fill file\n"
        " -C, -- report statistics in a machine parsable format\n"
        " -f, -- use Force Unit Access semantics\n"
        " -q, -- quiet mode, do not show I/O statistics\n"
        "\n"},
};

static const struct cmd_help *find_help(const char *name)
{
    for (size_t i = 0; i < sizeof(helps) / sizeof(helps[0]); i++)
        if (!strcmp(helps[i].name, name))
            return &helps[i];
    return NULL;
}

/* "NAME ARGS -- ONELINE" (qemu-io's: no ARGS, no space for them) */
static void print_cmd_line(const char *name, const struct cmd_help *h)
{
    printf("%s%s%s -- %s\n", name, h->args ? " " : "", h->args ? h->args : "", h->oneline);
}

void io_print_usage(const char *name)
{
    const struct cmd_help *h = find_help(name);
    if (h)
        print_cmd_line(h->name, h);
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
    if (vbd_node_get_info(io_node, &info, &err) < 0) {
        vbd_error_free(err);
        return true;
    }
    json_object_put(info.format_specific);
    uint64_t cs = info.cluster_size;
    /* QEMU's vmdk writes a compressed request to a sparse or flat extent
     * as a plain one, anywhere; only streamOptimized grains go whole */
    if (!strcmp(io_node->drv->name, "vmdk") && !info.needs_compressed_writes)
        return true;
    return !cs || (off % cs == 0 && (len % cs == 0 || (uint64_t)(off + len) == io_node->size));
}

/* write -s FILE: the buffer holds FILE's first len bytes, repeated to
 * fill it; qemu-io's messages (on stderr) for a file it cannot read or
 * that gives nothing (empty, or len 0). */
static int fill_from_file(uint8_t *buf, int64_t len, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t got = fread(buf, 1, (size_t)len, f);
    if (ferror(f)) {
        perror(path);
        fclose(f);
        return -1;
    }
    fclose(f);
    if (got == 0) {
        fprintf(stderr, "%s: file is empty\n", path);
        return -1;
    }
    for (int64_t pos = (int64_t)got; pos < len; pos += (int64_t)got)
        memcpy(buf + pos, buf, (size_t)(len - pos < (int64_t)got ? len - pos : (int64_t)got));
    return 0;
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
    bool lflag = false, sflag = false, nofallback = false, compress = false, vmstate = false;
    const char *source = NULL; /* write -s: the data, repeated */
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
                source = optarg;
                break;
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
        case 'p': break;
        case 'i':
            /* qemu-io counts an invalid request in the statistics and
             * stops there: vbd has no such counter, the words are kept */
            printf("injecting invalid %s request\n", write ? "write" : "read");
            return 0;
        case 'b': vmstate = true; break;
        case 'c': compress = true; break;
        default: io_print_usage(name); return -EINVAL;
        }
    }
    int nargs = argc - optind;
    if (nargs < 2 || (!vectored && nargs != 2)) {
        io_print_usage(name);
        return -EINVAL;
    }
    /* qemu-io 7.2's aio_write: -z takes one length; its "-z and -P" check
     * never fires (the zeroes are written) */
    bool aio_write = !strcmp(name, "aio_write");
    if (aio_write && zero && nargs != 2) {
        printf("-z supports only a single length parameter\n");
        return -EINVAL;
    }
    if (vmstate && zero) {
        printf("-b and -z cannot be specified at the same time\n");
        return -EINVAL;
    }
    if (fua && (vmstate || compress)) {
        printf("-f and -b or -c cannot be specified at the same time\n");
        return -EINVAL;
    }
    if (write && !aio_write && (zero + (pattern >= 0) + (source != NULL)) > 1) {
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
    if (!write && pattern < 0 && (lflag || sflag)) {
        io_print_usage(name);
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
    /* qemu-io's order: after the length and pattern checks */
    if ((compress || vmstate) && (off % 512 || total % 512)) {
        if (off % 512)
            printf("%lld is not a sector-aligned value for 'offset'\n", (long long)off);
        else
            printf("%lld is not a sector-aligned value for 'count'\n", (long long)total);
        free(iov);
        return -EINVAL;
    }
    /* -m: the data 16 bytes past an aligned start, as qemu-io's misalign */
    uint8_t *base = zero ? NULL : vbd_alloc_aligned(4096, (total ? total : 1) + (misalign ? 16 : 0));
    uint8_t *buf = base && misalign ? base + 16 : base;
    for (size_t k = 0, pos = 0; k < (size_t)niov && buf; pos += iov[k].iov_len, k++)
        iov[k].iov_base = buf + pos;
    if (buf)
        memset(buf, write ? (pattern >= 0 ? pattern : 0xcd) : 0xab, total);
    if (source && fill_from_file(buf, total, source) < 0) {
        free(base);
        free(iov);
        return -EINVAL;
    }
    struct vbd_qiov q;
    vbd_qiov_init(&q, iov, niov);
    uint64_t t0 = vbd_clock_ns();
    int rc;
    rw_issued = true;
    uint64_t size = vbd_backend_size(io_be);
    bool past_end = (uint64_t)off > size || size - off < (uint64_t)total;
    if (vmstate) {
        /* the image's VM state area (qcow2's), as qemu-io's blk_load_vmstate
         * and blk_save_vmstate; the latter flushes without a write cache */
        past_end = false;
        rc = vbd_node_co_vmstate(vbd_backend_node(io_be), (uint64_t)off, buf, (uint64_t)total, write);
        if (rc == 0 && write && io_writethrough())
            rc = vbd_backend_co_flush(io_be);
    } else if (compress && !zero && !past_end && !(io_node->supported_write_flags & VBD_REQ_COMPRESSED))
        rc = -ENOTSUP; /* the block layer would write it uncompressed */
    else if (compress && !zero && !past_end && !compress_aligned(off, total))
        rc = -EINVAL;
    else if (write && zero)
        rc = vbd_backend_co_pwrite_zeroes(io_be, off, total, (unmap ? VBD_REQ_MAY_UNMAP : 0) | (fua ? VBD_REQ_FUA : 0));
    else if (write)
        rc = vbd_backend_co_pwritev(io_be, off, total, &q,
                                    (fua ? VBD_REQ_FUA : 0) | (compress ? VBD_REQ_COMPRESSED : 0));
    else
        rc = vbd_backend_co_preadv(io_be, off, total, &q, 0);
    /* the backend refuses a range past the end (EINVAL); qemu-io's says EIO */
    if (rc == -EINVAL && past_end)
        rc = -EIO;
    if (rc < 0) {
        /* qemu-io's words: its aio_read's completion says readv too */
        printf("%s failed: %s\n",
               !strcmp(name, "aio_write") ? "aio_write" : vectored ? (write ? "writev" : "readv") : write ? "write" : "read",
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
    free(base);
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
    /* as qemu-io: a bad command line fails the command (and the exit
     * status), what happens to the request once issued is only printed */
    rw_issued = false;
    if (do_rw(j->argc, j->argv, j->argv[0], j->write, true) < 0 && !rw_issued)
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
    /* as qemu-io, the request starts within the command (a breakpoint it
     * meets stops it before the next command) */
    vbd_co_enter(vbd_co_create(aio_entry, j));
    return 0;
}

int io_wait_aio(void)
{
    while (aio_pending)
        vbd_co_queue_wait(&aio_waiters);
    return 0;
}

/* qemu-io's map: what the image itself (not its backing chain) defines,
 * runs of the same state merged */
static int do_map(void)
{
    uint64_t off = 0, size = io_node->size;
    while (off < size) {
        uint64_t pnum;
        int rc = vbd_node_co_block_status(io_node, false, off, size - off, &pnum, NULL, NULL);
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
            int rc2 = vbd_node_co_block_status(io_node, false, off + len, size - off - len, &p2, NULL, NULL);
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
 * qemu-io checks before parsing them); max -1: no limit. nofile: runs with
 * no image open. */
static const struct cmd_def {
    const char *name, *alias;
    int min, max;
    bool nofile;
} cmd_defs[] = {
    {"read", "r", 2, -1, false},     {"readv", NULL, 2, -1, false},     {"write", "w", 2, -1, false},
    {"writev", NULL, 2, -1, false},  {"aio_read", NULL, 2, -1, false},  {"aio_write", NULL, 2, -1, false},
    {"aio_flush", NULL, 0, 0, false}, {"flush", "f", 0, 0, false},       {"discard", "d", 2, -1, false},
    {"length", "l", 0, 0, false},    {"map", NULL, 0, 0, false},        {"info", "i", 0, 0, false},
    {"truncate", "t", 1, 3, false},  {"alloc", "a", 1, 2, false},       {"sleep", NULL, 1, 1, true},
    {"close", "c", 0, 0, false},     {"quit", "q", 0, -1, true},        {"open", "o", 1, -1, true},
    {"reopen", NULL, 0, -1, false},  {"help", "?", 0, 1, true},         {"abort", NULL, 0, 0, true},
    {"sigraise", NULL, 1, 1, true},  {"break", NULL, 2, 2, false},      {"remove_break", NULL, 1, 1, false},
    {"resume", NULL, 1, 1, false},   {"wait_break", NULL, 1, 1, false},
};

static bool quitting;

static const struct cmd_def *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof(cmd_defs) / sizeof(cmd_defs[0]); i++)
        if (!strcmp(name, cmd_defs[i].name) || (cmd_defs[i].alias && !strcmp(name, cmd_defs[i].alias)))
            return &cmd_defs[i];
    return NULL;
}

/* help [CMD]: every command's line, or CMD's (named as given) and its text */
static int do_help(int argc, char **argv)
{
    if (argc == 1) {
        for (size_t i = 0; i < sizeof(helps) / sizeof(helps[0]); i++)
            print_cmd_line(helps[i].name, &helps[i]);
        printf("\nUse 'help commandname' for extended help.\n");
        return 0;
    }
    const struct cmd_def *d = find_command(argv[1]);
    const struct cmd_help *h = d ? find_help(d->name) : NULL;
    if (!h) {
        printf("command %s not found\n", argv[1]);
        return -EINVAL;
    }
    print_cmd_line(argv[1], h);
    if (h->text)
        fputs(h->text, stdout);
    return 0;
}

/* sigraise N: raise(N), as qemu-io (N past NSIG refused, others left to raise) */
static int do_sigraise(const char *arg)
{
    int64_t sig;
    if (get_num(arg, &sig) < 0)
        return -EINVAL;
    if (sig > NSIG) {
        printf("signal argument '%s' is too large to be a valid signal\n", arg);
        return -EINVAL;
    }
    fflush(stdout);
    fflush(stderr);
    raise((int)sig);
    return 0;
}

/* break/remove_break/resume/wait_break: the blkdebug node's breakpoints */
static int do_breakpoint(const char *cmd, int argc, char **argv)
{
    (void)argc;
    int rc;
    if (!strcmp(cmd, "break")) {
        rc = vbd_node_debug_breakpoint(io_node, argv[1], argv[2]);
        if (rc < 0)
            printf("Could not set breakpoint: %s\n", strerror(-rc));
    } else if (!strcmp(cmd, "remove_break")) {
        rc = vbd_node_debug_remove_breakpoint(io_node, argv[1]);
        if (rc < 0)
            printf("Could not remove breakpoint %s: %s\n", argv[1], strerror(-rc));
    } else if (!strcmp(cmd, "resume")) {
        rc = vbd_node_debug_resume(io_node, argv[1]);
        if (rc < 0)
            printf("Could not resume request: %s\n", strerror(-rc));
    } else {
        /* as qemu-io: waits until a request with the tag stops (forever if
         * none will); the loop runs the requests meanwhile */
        while (!vbd_node_debug_is_suspended(io_node, argv[1]))
            vbd_co_sleep_ns(100000);
        rc = 0;
    }
    return rc;
}

/* qemu-io's alloc: what this layer (not its backing) defines, 512 bytes
 * unless a count is given. */
static int do_alloc(int argc, char **argv)
{
    int64_t off, count = 512;
    if (get_num(argv[1], &off) < 0)
        return -EINVAL;
    if (argc == 3 && get_num(argv[2], &count) < 0)
        return -EINVAL;
    uint64_t size = io_node->size, start = off, pos = off, remaining = count, sum = 0;
    while (remaining) {
        if (pos >= size) {
            count -= remaining;
            break;
        }
        uint64_t pnum, len = remaining < size - pos ? remaining : size - pos;
        int rc = vbd_node_co_block_status(io_node, false, pos, len, &pnum, NULL, NULL);
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
            io_print_usage("discard");
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        io_print_usage("discard");
        return -EINVAL;
    }
    if (get_num(argv[optind], &a) < 0 || get_num(argv[optind + 1], &b) < 0)
        return -EINVAL;
    if (b > 2147483136) {
        printf("length cannot exceed %d, given %s\n", 2147483136, argv[optind + 1]);
        return -EINVAL;
    }
    uint64_t t0 = vbd_clock_ns();
    uint64_t size = vbd_backend_size(io_be);
    int rc = vbd_backend_co_pdiscard(io_be, a, b);
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
            io_print_usage("truncate");
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
        io_print_usage("truncate");
        return -EINVAL;
    }
    if (get_num(argv[optind], &a) < 0)
        return -EINVAL;
    struct vbd_error *err = NULL;
    int rc = vbd_node_co_truncate(io_cor_filter ? io_cor_filter : io_node, a, true, prealloc, &err); /* the filter follows */
    if (rc < 0) {
        vbd_error_report("%s", err ? err->msg : strerror(-rc));
        vbd_error_free(err);
    }
    return rc;
}

static int do_info(void)
{
    printf("format name: %s\n", io_node->drv->name);
    /* QEMU's parallels driver has no info: qemu-io stops here, failing */
    if (!strcmp(io_node->drv->name, "parallels"))
        return -ENOTSUP;
    struct vbd_image_info info;
    struct vbd_error *err = NULL;
    if (vbd_node_get_info(io_node, &info, &err) < 0) {
        tool_report(err);
        return -EIO;
    }
    char s[64];
    tool_cvtstr(info.cluster_size, s, sizeof(s));
    printf("cluster size: %s\n", s);
    /* qcow2 keeps the VM state after the guest's data: at the first L1
     * entry past the virtual size (l2 tables of cluster_size / 8 entries,
     * / 16 with extended L2 entries) */
    uint64_t vmstate = 0;
    if (!strcmp(io_node->drv->name, "qcow2") && info.cluster_size) {
        struct json_object *data = NULL, *ext = NULL;
        bool extended = info.format_specific && json_object_object_get_ex(info.format_specific, "data", &data) &&
                        json_object_object_get_ex(data, "extended-l2", &ext) && json_object_get_boolean(ext);
        uint64_t per_l1 = (uint64_t)info.cluster_size * (info.cluster_size / (extended ? 16 : 8));
        vmstate = (io_node->size + per_l1 - 1) / per_l1 * per_l1;
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
    const struct cmd_def *d = find_command(argv[0]);
    if (!d) {
        fprintf(stderr, "command \"%s\" not found\n", argv[0]);
        return -EINVAL;
    }
    const char *c = d->name;
    if (!io_node && !d->nofile) {
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
    if (io_read_only && (!strcmp(c, "write") || !strcmp(c, "writev") || !strcmp(c, "aio_write") ||
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
        /* qemu-io's aio_flush drains the requests in flight and flushes
         * nothing (that is "flush"'s job): no fdatasync of its own */
        io_wait_aio();
        return 0;
    }
    if (!strcmp(c, "flush")) {
        rc = vbd_backend_co_flush(io_be);
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
        tool_cvtstr((double)vbd_backend_size(io_be), s, sizeof(s));
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
        io_close_image();
        return 0;
    }
    if (!strcmp(c, "open"))
        return io_do_open(argc, argv);
    if (!strcmp(c, "reopen"))
        return io_do_reopen(argc, argv);
    if (!strcmp(c, "help"))
        return do_help(argc, argv);
    if (!strcmp(c, "abort"))
        abort();
    if (!strcmp(c, "sigraise"))
        return do_sigraise(argv[1]);
    if (!strcmp(c, "break") || !strcmp(c, "remove_break") || !strcmp(c, "resume") || !strcmp(c, "wait_break"))
        return do_breakpoint(c, argc, argv);
    quitting = true;
    return 0;
}

struct run_args {
    char **cmds;
    int ncmds;
};

/* The next line of standard input into *line (without its newline; the
 * caller frees it); false at the end of the input. Lines of any length,
 * as qemu-io's readline takes them: a fixed 4 KiB buffer cut a longer
 * line into two commands. The wait for input is the loop's, so aio
 * requests in flight complete meanwhile, as qemu-io's readline does on its
 * main loop. */
static bool read_stdin_line(char **line)
{
    static char *buf;
    static size_t have, cap, scanned; /* scanned: bytes known to hold no newline */
    static bool eof;
    char *nl = NULL;
    for (;;) {
        if (have > scanned && (nl = memchr(buf + scanned, '\n', have - scanned)))
            break;
        scanned = have;
        if (eof)
            break;
        if (have == cap) {
            cap = cap ? cap * 2 : 4096;
            buf = vbd_xrealloc(buf, cap);
        }
        (void)vbd_co_poll(STDIN_FILENO, POLLIN); /* a regular file cannot be polled: read it anyway */
        ssize_t r = read(STDIN_FILENO, buf + have, cap - have);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0)
            eof = true;
        else
            have += (size_t)r;
    }
    if (!nl && !have) {
        free(buf);
        buf = NULL;
        cap = scanned = 0;
        return false;
    }
    size_t len = nl ? (size_t)(nl - buf) : have; /* a last line without a newline */
    *line = vbd_xstrndup(buf, len);
    size_t used = nl ? len + 1 : len;
    memmove(buf, buf + used, have - used);
    have -= used;
    scanned = 0;
    return true;
}

/* Without -c, qemu-io reads its commands from standard input, a
 * "qemu-io> " prompt before each (also when the input is not a terminal),
 * until "quit" or the end of the input. */
static void run_stdin(void)
{
    while (!quitting) {
        fputs("vbd-io> ", stdout);
        fflush(stdout);
        char *line;
        if (!read_stdin_line(&line))
            break;
        if (run_command(line) < 0)
            failures++;
        free(line);
    }
}

static void run_all(void *opaque)
{
    struct run_args *r = opaque;
    if (!r->ncmds) {
        run_stdin();
        io_wait_aio();
        return;
    }
    for (int i = 0; i < r->ncmds && !quitting; i++) {
        char *line = strdup(r->cmds[i]);
        if (run_command(line) < 0)
            failures++;
        free(line);
    }
    io_wait_aio();
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
        {"misalign", no_argument, NULL, 'm'},    {"trace", required_argument, NULL, 'T'},
        {"snapshot", no_argument, NULL, 's'},    {"copy-on-read", no_argument, NULL, 'C'},
        {NULL, 0, NULL, 0},
    };
    vbd_log_set_prog("vbd-io");
    /* as many -c as qemu-io takes (no limit): each one is an argv word; static
     * so that it stays reachable until exit on every return path */
    static char **cmds;
    cmds = calloc((size_t)argc, sizeof *cmds);
    if (!cmds) {
        vbd_error_report("out of memory");
        return 1;
    }
    int ncmds = 0;
    const char *fmt = NULL, *cache = "writethrough", *aio = NULL;
    bool ro = false, force_share = false, image_opts = false, unmap = true;
    unsigned mode = 0;
    int c;
    while ((c = getopt_long(argc, argv, "c:f:rsnCt:i:UqhVkd:mT:", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            cmds[ncmds++] = optarg;
            break;
        case 'f': fmt = optarg; break;
        case 'r': ro = true; break;
        case 's': mode |= IO_SNAPSHOT; break;
        case 'C': mode |= IO_COR; break;
        case 'n': cache = "none"; break;
        /* -t and -i checked as met, as qemu-io (before a later bad option) */
        case 't':
            if (tool_cache_flags(optarg, &(unsigned){0}, NULL) < 0)
                return 1;
            cache = optarg;
            break;
        case 'i':
            if (tool_aio_flags(optarg, &(unsigned){0}) < 0)
                return 1;
            aio = optarg;
            break;
        case 'U': force_share = true; break;
        case 'O': image_opts = true; break;
        case 'q': quiet = true; break;
        case 'k': aio = "native"; break; /* qemu-io's --native-aio: -i native */
        case 'm': misalign = true; break;
        case 'T':
            /* scripts pass qemu-io's trace options; vbd has no trace events */
            vbd_error_report("-T %s: vbd has no trace events, ignored", optarg);
            break;
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
    unsigned flags = ro ? 0 : VBD_OPEN_RDWR;
    if (unmap)
        flags |= VBD_OPEN_UNMAP;
    bool writethrough = true;
    /* qemu-io checks -i and -t as it parses them, -f with --image-opts
     * before it runs anything: with no image named too */
    if (tool_aio_flags(aio, &flags) < 0 || tool_cache_flags(cache, &flags, &writethrough) < 0)
        return 1;
    if (aio && !strcmp(aio, "native"))
        flags |= VBD_OPEN_AIO_NATIVE; /* io_uring runs it; the file node refuses it without -t none as qemu-io does */
    if (optind < argc - 1) {
        fputs(usage_text, stdout);
        return 1;
    }
    if (image_opts && fmt) {
        vbd_error_report("--image-opts and -f are mutually exclusive");
        return 1;
    }
    struct run_args ra = {cmds, ncmds};
    if (optind == argc) {
        /* as qemu-io: no image, commands but open say so */
        vbd_co_run_sync(run_all, &ra);
        /* an image the commands opened (open without a close) is closed
         * as one named on the command line is: its cached metadata
         * (qcow2's L2 tables and refcounts) written back */
        io_close_image();
        vbd_tls_creds_remove_all();
        return failures ? 1 : 0;
    }
    const char *filename = argv[optind];
    struct json_object *opts = NULL;
    struct vbd_error *err = NULL;
    bool unknown_fmt = false;
    /* qemu-io's --image-opts has no implied name: a bare first word is a flag */
    if (!tool_open_options(&filename, fmt, image_opts, NULL, &opts, &unknown_fmt, &err)) {
        if (unknown_fmt)
            vbd_error_report("can't open device %s: Unknown driver '%s'", filename, fmt);
        if (err)
            vbd_error_report("can't open%s%s: %s", image_opts ? "" : " device ", image_opts ? "" : filename, err->msg);
        vbd_error_free(err);
        return 1;
    }
    if (io_open_file(filename, opts, flags, mode, writethrough, force_share) < 0)
        return 1;
    vbd_co_run_sync(run_all, &ra);
    io_close_image();
    vbd_tls_creds_remove_all();
    return failures ? 1 : 0;
}
