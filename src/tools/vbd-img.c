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
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
        printf("vbd-img version " VBD_VERSION_STR "\n");
        return 0;
    }
    for (const struct verb *v = verbs; v->name; v++) {
        if (!strcmp(v->name, argv[1])) {
            verb_argc = argc - 1;
            verb_argv = argv + 1;
            /* --object (TLS credentials for nbd nodes) works with every command, as in qemu-img */
            if (tool_take_objects(&verb_argc, verb_argv) < 0) {
                vbd_tls_creds_remove_all();
                return 1;
            }
            optind = 1;
            /* qemu-img's raw-probing warning is noise for a tool run */
            vbd_co_run_sync(run_verb, (void *)v);
            vbd_tls_creds_remove_all();
            fflush(stdout);
            return verb_rc;
        }
    }
    vbd_error_report("Command not found: %s", argv[1]);
    return 1;
}
