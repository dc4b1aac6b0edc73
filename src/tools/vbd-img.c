/* SPDX-License-Identifier: MIT */
/*
 * vbd-img: qemu-img's verbs, options, messages, exit codes and JSON keys.
 * Every verb runs as one coroutine on the main thread's loop.
 */
#include "img.h"

#include "vbd/backend.h"
#include "vbd/block.h"
#include "vbd/error.h"
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

#define VBD_VERSION_STR "0.1.0"

static int verb_argc;
static char **verb_argv;
static int verb_rc;

/* ------------------------------------------------------------------ */
/* dispatch                                                            */

static const struct verb {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} verbs[] = {
    {"amend", verb_amend, "change format options of an image"},
    {"bench", verb_bench, "run a simple I/O benchmark on an image"},
    {"bitmap", verb_bitmap, "add, remove, clear, enable, disable or merge persistent dirty bitmaps"},
    {"check", verb_check, "check (and repair) an image's metadata"},
    {"commit", verb_commit, "write an image's changes into its backing file"},
    {"compare", verb_compare, "compare the contents of two images"},
    {"convert", verb_convert, "convert/copy images between formats"},
    {"create", verb_create, "create a new image"},
    {"dd", verb_dd, "copy part of an image like dd(1)"},
    {"info", verb_info, "show information about an image"},
    {"map", verb_map, "show where an image's data is"},
    {"measure", verb_measure, "measure the space a conversion needs"},
    {"rebase", verb_rebase, "change the backing file of an image"},
    {"resize", verb_resize, "change the virtual size of an image"},
    {"snapshot", verb_snapshot, "list, create, apply or delete internal snapshots"},
    {NULL, NULL, NULL},
};

static void usage(FILE *f)
{
    fprintf(f, "vbd-img version " VBD_VERSION_STR "\n"
               "usage: vbd-img [--help | --version] COMMAND [command options]\n"
               "A disk image tool with qemu-img's commands, options, exit codes and JSON output.\n\nCommands:\n");
    for (const struct verb *v = verbs; v->name; v++)
        fprintf(f, "  %-10s %s\n", v->name, v->summary);
    fprintf(f, "\nRun 'vbd-img COMMAND --help' for a command's options. Every command also takes\n"
               "--object tls-creds-x509|tls-creds-psk,id=ID,dir=DIR,endpoint=client,... for nbd nodes' tls-creds=ID.\n"
               "NBD filenames: nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, and with TLS required\n"
               "nbds:// and nbds+unix:// taking libnbd's tls-certificates=DIR, tls-psk-file=FILE, tls-username=NAME,\n"
               "tls-verify-peer=false, tls-hostname=NAME, or tls-creds=ID (an --object).\n"
               "Supported formats:");
    for (const struct vbd_driver *const *d = vbd_driver_list(); *d; d++)
        fprintf(f, " %s", (*d)->name);
    fprintf(f, "\n");
}

static void run_verb(void *opaque)
{
    const struct verb *v = opaque;
    verb_rc = v->fn(verb_argc, verb_argv);
}

int main(int argc, char **argv)
{
    vbd_log_set_prog("vbd-img");
    tool_open_prefix_errors = true;
    if (argc < 2)
        return img_usage_error("Not enough arguments");
    /* qemu-img's own options before the command ("+": the first word that
     * is not one is the command), in its words for a bad one */
    static const struct option lo[] = {{"help", no_argument, NULL, 'h'},
                                       {"version", no_argument, NULL, 'V'},
                                       {"trace", required_argument, NULL, 'T'},
                                       {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "+:hVT:", lo, NULL)) != -1) {
        switch (c) {
        case 'h': usage(stdout); return 0;
        case 'V': printf("vbd-img version " VBD_VERSION_STR "\n"); return 0;
        case 'T':
            /* scripts pass qemu-img's trace options; vbd has no trace events */
            vbd_error_report("-T %s: vbd has no trace events, ignored", optarg);
            break;
        default: return img_bad_option(c, argv);
        }
    }
    /* qemu-img: nothing to do after its options, exit 0 */
    if (optind >= argc)
        return 0;
    const char *cmd = argv[optind];
    for (const struct verb *v = verbs; v->name; v++) {
        if (!strcmp(v->name, cmd)) {
            verb_argc = argc - optind;
            verb_argv = argv + optind;
            /* --object (TLS credentials for nbd nodes, secrets) works with
             * every command, as in qemu-img: each verb's getopt makes them as
             * met (an option's value is never taken for one) */
            /* 0: glibc's full reset (the verbs permute; main's "+" stops at the verb) */
            optind = 0;
            /* qemu-img's raw-probing warning is noise for a tool run */
            vbd_co_run_sync(run_verb, (void *)v);
            vbd_tls_creds_remove_all();
            fflush(stdout);
            return verb_rc;
        }
    }
    return img_usage_error("Command not found: %s", cmd);
}
