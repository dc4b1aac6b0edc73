/* Image creation: the file protocol's hints (nocow, extent_size_hint)
 * given among a format's options reach every file that create makes, and
 * only that create's files. vbd_image_co_create kept them in a file-level
 * variable for the create's duration: a second create started while the
 * first waited on its I/O replaced them, and the first create's later
 * files got the second's hints (and the second's later files the first's
 * once the first ended). */
#include "unit.h"
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"

#include <fcntl.h>
#include <json-c/json.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

struct create_arg {
    char path[512];
    const char *hint;
    int rc;
};

static int pending;
static struct vbd_co_queue done_q;

static void create_co(void *opaque)
{
    struct create_arg *a = opaque;
    struct json_object *o = json_object_new_object();
    /* a split vmdk: a descriptor and one extent per 2 GiB, each file made
     * (and its header written, which yields) one after the other */
    json_object_object_add(o, "size", json_object_new_int64(a->hint[0] == '0' ? 7ll << 30 : 1ll << 30));
    json_object_object_add(o, "subformat", json_object_new_string("twoGbMaxExtentSparse"));
    json_object_object_add(o, "extent_size_hint", json_object_new_string(a->hint));
    struct vbd_error *err = NULL;
    a->rc = vbd_image_co_create("vmdk", a->path, o, &err);
    if (err)
        fprintf(stderr, "create %s: %s\n", a->path, err->msg);
    vbd_error_free(err);
    json_object_put(o);
    pending--;
    vbd_co_queue_wake_all(&done_q);
}

static struct create_arg args[2];

static void both_co(void *opaque)
{
    (void)opaque;
    pending = 2;
    vbd_co_wake(vbd_co_create(create_co, &args[0]));
    vbd_co_wake(vbd_co_create(create_co, &args[1]));
    while (pending)
        vbd_co_queue_wait(&done_q);
}

/* The extent size hint a file has (-1: the file system keeps none). */
static long extsize_of(const char *path)
{
    int fd = open(path, O_RDONLY);
    struct fsxattr xa;
    long v = fd >= 0 && ioctl(fd, FS_IOC_FSGETXATTR, &xa) == 0 && (xa.fsx_xflags & FS_XFLAG_EXTSIZE) ? (long)xa.fsx_extsize : -1;
    if (fd >= 0)
        close(fd);
    return v;
}

/* What the file system in dir does with an extent size hint: keeps it
 * (XFS: 1), refuses it (tmpfs: 2, and each file made with a hint given
 * warns "Failed to set extent size hint", which this test counts then),
 * or takes it and keeps nothing (ext4: 0, nothing to see). */
static int hint_mode(const char *dir)
{
    char p[600];
    snprintf(p, sizeof(p), "%s/probe", dir);
    int fd = open(p, O_RDWR | O_CREAT, 0644);
    struct fsxattr xa;
    int mode = 2;
    if (fd >= 0 && ioctl(fd, FS_IOC_FSGETXATTR, &xa) == 0) {
        xa.fsx_xflags |= FS_XFLAG_EXTSIZE;
        xa.fsx_extsize = 1 << 20;
        if (ioctl(fd, FS_IOC_FSSETXATTR, &xa) == 0)
            mode = extsize_of(p) == 1 << 20 ? 1 : 0;
    }
    if (fd >= 0)
        close(fd);
    unlink(p);
    return mode;
}

UNIT_TEST(create_interleaved_file_hints)
{
    const char *dir = unit_tmpdir();
    char shm[] = "/dev/shm/vbd-unit-XXXXXX";
    int mode = hint_mode(dir);
    bool in_shm = false;
    if (mode == 0 && mkdtemp(shm)) {
        in_shm = true;
        dir = shm;
        mode = hint_mode(dir);
    }
    if (mode == 0) {
        if (in_shm)
            rmdir(shm);
        printf("  skipped: no file system here keeps an extent size hint (XFS) or refuses one (tmpfs)\n");
        return;
    }
    bool xfs = mode == 1;
    /* a: 7 GiB (a descriptor and 4 extents), hint 0 (none: no warning);
     * b: 1 GiB (a descriptor and 1 extent), hint 1M, started while a waits */
    snprintf(args[0].path, sizeof(args[0].path), "%s/a.vmdk", dir);
    args[0].hint = "0";
    snprintf(args[1].path, sizeof(args[1].path), "%s/b.vmdk", dir);
    args[1].hint = "1M";
    char log[600];
    snprintf(log, sizeof(log), "%s/stderr", dir);
    fflush(stderr);
    int saved = dup(2), fd = open(log, O_RDWR | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    vbd_co_run_sync(both_co, NULL);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    CHECK_EQ(args[0].rc, 0);
    CHECK_EQ(args[1].rc, 0);
    const char *a_files[] = {"a.vmdk", "a-s001.vmdk", "a-s002.vmdk", "a-s003.vmdk", "a-s004.vmdk"};
    const char *b_files[] = {"b.vmdk", "b-s001.vmdk"};
    char p[700];
    if (xfs) {
        for (size_t i = 0; i < sizeof(a_files) / sizeof(a_files[0]); i++) {
            snprintf(p, sizeof(p), "%s/%s", dir, a_files[i]);
            CHECK_EQ(extsize_of(p), 0);
        }
        for (size_t i = 0; i < sizeof(b_files) / sizeof(b_files[0]); i++) {
            snprintf(p, sizeof(p), "%s/%s", dir, b_files[i]);
            CHECK_EQ(extsize_of(p), 1 << 20);
        }
    } else {
        for (size_t i = 0; i < sizeof(a_files) / sizeof(a_files[0]); i++) {
            snprintf(p, sizeof(p), "%s/%s", dir, a_files[i]);
            CHECK(access(p, F_OK) == 0);
        }
        /* one warning per file of b's (its hint given, not kept), none for a's */
        char buf[8192] = "";
        ssize_t len = pread(fd, buf, sizeof(buf) - 1, 0);
        int warnings = 0;
        for (char *s = buf; len > 0 && (s = strstr(s, "Failed to set extent size hint")); s++)
            warnings++;
        CHECK_EQ(warnings, (int)(sizeof(b_files) / sizeof(b_files[0])));
        if (warnings != 2)
            fprintf(stderr, "  the creates' stderr:\n%s", buf);
    }
    close(fd);
    if (in_shm) {
        for (size_t i = 0; i < sizeof(a_files) / sizeof(a_files[0]); i++) {
            snprintf(p, sizeof(p), "%s/%s", dir, a_files[i]);
            unlink(p);
        }
        for (size_t i = 0; i < sizeof(b_files) / sizeof(b_files[0]); i++) {
            snprintf(p, sizeof(p), "%s/%s", dir, b_files[i]);
            unlink(p);
        }
        unlink(log);
        rmdir(dir);
    }
}
