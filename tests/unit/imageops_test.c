/* SPDX-License-Identifier: MIT */
/*
 * imageops-test: drives the library's image operations (include/vbd/imageops.h)
 * on images that tests/integration/imageops.sh builds with qemu-img and checks
 * with qemu-img and qemu-io afterwards.
 *
 *   imageops-test [--chunk BYTES] [--cancel-at BYTES] commit TOP MID BASE
 *       opens the linked chain BASE (read-write) <- MID <- TOP as a daemon
 *       would and commits MID into BASE (an intermediate commit)
 *   imageops-test [--chunk BYTES] [--cancel-at BYTES] copy SRC DST OFF LEN
 *       copies [OFF, OFF+LEN) of SRC (with its chain) to DST (qcow2, read-write)
 *
 * --cancel-at: the per-chunk callback sets the cancel flag once progress
 * reaches BYTES. Checked here: progress never decreases, never passes the
 * total, and reaches it when not cancelled; a cancelled run ends with
 * -ECANCELED. Prints "rc=R current=C total=T chunks=N" and exits 0 if the
 * checks held, 1 if not.
 */
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/imageops.h"

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct run {
    int argc;
    char **argv;
    uint64_t chunk, cancel_at;
    /* what the callback saw */
    uint64_t last_current, chunks;
    bool backwards, overshoot;
    int exit_code;
};

static int on_chunk(struct vbd_imageops_ctl *ctl, uint64_t off, uint64_t written)
{
    struct run *r = ctl->opaque;
    uint64_t current, total;
    vbd_imageops_progress(ctl, &current, &total);
    if (current < r->last_current)
        r->backwards = true;
    if (current > total)
        r->overshoot = true;
    r->last_current = current;
    r->chunks++;
    if (r->cancel_at && current >= r->cancel_at)
        vbd_imageops_cancel(ctl);
    return 0;
}

/* qcow2 over file; backing: a node name, or NULL for the image's own (the test's bases have none) */
static struct vbd_node *open_qcow2(const char *path, const char *node_name, const char *backing, unsigned flags)
{
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string("qcow2"));
    json_object_object_add(o, "node-name", json_object_new_string(node_name));
    if (backing)
        json_object_object_add(o, "backing", json_object_new_string(backing));
    struct vbd_error *err = NULL;
    struct vbd_node *n = vbd_open(path, o, flags, &err);
    if (!n) {
        fprintf(stderr, "imageops-test: %s: %s\n", path, err ? err->msg : "open failed");
        vbd_error_free(err);
    }
    return n;
}

static void run(void *opaque)
{
    struct run *r = opaque;
    struct vbd_copy_opts opts = {.chunk_size = r->chunk, .zero_detect = r->chunk};
    struct vbd_imageops_ctl ctl = {.chunk_done = on_chunk, .opaque = r};
    struct vbd_error *err = NULL;
    struct vbd_node *nodes[3] = {NULL, NULL, NULL}, *written = NULL;
    int rc = -EINVAL;
    const char *op = r->argv[0];
    if (!strcmp(op, "commit") && r->argc == 4) {
        /* bottom up, each layer's backing a reference to the one below */
        if ((nodes[0] = open_qcow2(r->argv[3], "base", NULL, VBD_OPEN_RDWR)) &&
            (nodes[1] = open_qcow2(r->argv[2], "mid", "base", 0)) &&
            (nodes[2] = open_qcow2(r->argv[1], "top", "mid", 0))) {
            written = nodes[0];
            rc = vbd_co_commit(nodes[1], nodes[0], &opts, &ctl, &err);
        }
    } else if (!strcmp(op, "copy") && r->argc == 5) {
        struct vbd_error *oerr = NULL;
        if ((nodes[0] = vbd_open(r->argv[1], NULL, 0, &oerr)) &&
            (nodes[1] = open_qcow2(r->argv[2], "dst", NULL, VBD_OPEN_RDWR))) {
            written = nodes[1];
            rc = vbd_co_copy_range(nodes[0], nodes[1], strtoull(r->argv[3], NULL, 0), strtoull(r->argv[4], NULL, 0),
                                   &opts, &ctl, &err);
        } else if (oerr) {
            fprintf(stderr, "imageops-test: %s: %s\n", r->argv[1], oerr->msg);
            vbd_error_free(oerr);
        }
    } else {
        fprintf(stderr, "imageops-test: bad command line\n");
        r->exit_code = 2;
        return;
    }
    if (written) {
        int frc = vbd_node_co_flush(written);
        if (frc < 0)
            fprintf(stderr, "imageops-test: flush: %s\n", strerror(-frc));
    }
    uint64_t current, total;
    vbd_imageops_progress(&ctl, &current, &total);
    printf("rc=%d current=%" PRIu64 " total=%" PRIu64 " chunks=%" PRIu64 "\n", rc, current, total, r->chunks);
    if (err)
        printf("error: %s\n", err->msg);
    bool ok = !r->backwards && !r->overshoot && total > 0;
    if (r->backwards)
        fprintf(stderr, "imageops-test: progress went backwards\n");
    if (r->overshoot)
        fprintf(stderr, "imageops-test: progress passed the total\n");
    if (r->cancel_at) {
        if (rc != -ECANCELED || !err || err->code != ECANCELED || current >= total) {
            fprintf(stderr, "imageops-test: the cancel flag did not stop the operation early with -ECANCELED\n");
            ok = false;
        }
    } else if (rc != 0 || current != total) {
        fprintf(stderr, "imageops-test: failed, or progress did not reach the total\n");
        ok = false;
    }
    vbd_error_free(err);
    for (int i = 2; i >= 0; i--)
        if (nodes[i])
            vbd_node_unref(nodes[i]);
    r->exit_code = ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    struct run r = {.chunk = 0};
    int i = 1;
    for (; i + 1 < argc && !strncmp(argv[i], "--", 2); i += 2) {
        if (!strcmp(argv[i], "--chunk"))
            r.chunk = strtoull(argv[i + 1], NULL, 0);
        else if (!strcmp(argv[i], "--cancel-at"))
            r.cancel_at = strtoull(argv[i + 1], NULL, 0);
        else
            break;
    }
    if (i >= argc) {
        fprintf(stderr, "usage: imageops-test [--chunk BYTES] [--cancel-at BYTES] commit TOP MID BASE | copy SRC DST OFF LEN\n");
        return 2;
    }
    r.argc = argc - i;
    r.argv = argv + i;
    vbd_co_run_sync(run, &r);
    return r.exit_code;
}
