#include "fuzz-image.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BUF (64u << 10)

struct vbd_node *fuzz_image_open(struct fuzz_job *j, unsigned flags)
{
    const struct fuzz_image *fmt = j->fmt;
    struct vbd_error *err = NULL;
    struct json_object *o = json_object_new_object();
    json_object_object_add(o, "driver", json_object_new_string(fmt->driver));
    if (fmt->l2_cache_size)
        json_object_object_add(o, "l2-cache-size", json_object_new_string(fmt->l2_cache_size));
    struct json_object *f = json_object_new_object();
    json_object_object_add(f, "driver", json_object_new_string("file"));
    json_object_object_add(f, "filename", json_object_new_string(j->path));
    json_object_object_add(f, "locking", json_object_new_string("off"));
    json_object_object_add(o, "file", f);
    if (fmt->no_backing)
        json_object_object_add(o, "backing", NULL);
    struct vbd_node *n = vbd_open(NULL, o, flags | VBD_OPEN_NO_BACKING, &err);
    if (err && getenv("VBD_FUZZ_VERBOSE")) /* why an input is refused, when a seed does not get far */
        fprintf(stderr, "open: %s\n", err->msg);
    vbd_error_free(err);
    return n;
}

void fuzz_image_read_map(struct fuzz_job *j, struct vbd_node *n)
{
    uint64_t max = j->fmt->max_read ? j->fmt->max_read : 64u << 20;
    uint64_t limit = n->size < max ? n->size : max;
    for (uint64_t off = 0; off < limit; off += BUF) {
        uint64_t len = limit - off < BUF ? limit - off : BUF;
        if (vbd_node_co_pread(n, off, j->buf, len) < 0)
            break;
    }
    if (j->fmt->unaligned_read && limit > 1000)
        vbd_node_co_pread(n, 1000 - 7, j->buf, 5000 < limit - 993 ? 5000 : limit - 993);
    for (uint64_t off = 0; off < limit;) {
        uint64_t pnum = 0, map = 0;
        struct vbd_node *file = NULL;
        int depth = 0;
        if (vbd_node_co_block_status_above(n, NULL, true, off, limit - off, &pnum, &map, &file, &depth) < 0 || !pnum)
            break;
        off += pnum;
    }
}

void fuzz_image_check(struct fuzz_job *j, struct vbd_node *n, unsigned fix)
{
    if (!n->drv->co_check)
        return;
    struct vbd_check_result r = {0};
    struct vbd_error *err = NULL;
    FILE *saved = stderr;
    if (j->fmt->quiet_check)
        stderr = fopen("/dev/null", "w");
    n->drv->co_check(n, &r, fix, &err);
    if (j->fmt->quiet_check) {
        fclose(stderr);
        stderr = saved;
    }
    vbd_error_free(err);
}

void fuzz_image_write_back(struct fuzz_job *j, struct vbd_node *n, const uint64_t *offs, size_t count,
                           uint64_t len, uint64_t zero)
{
    uint8_t *back = j->buf + BUF / 2;
    if (len > BUF / 2)
        len = BUF / 2;
    memset(j->buf, 0xa5, BUF / 2);
    for (size_t i = 0; i < count; i++) {
        if (offs[i] >= n->size)
            continue;
        uint64_t l = n->size - offs[i] < len ? n->size - offs[i] : len;
        if (vbd_node_co_pwrite(n, offs[i], j->buf, l, 0) < 0 || vbd_node_co_pread(n, offs[i], back, l) < 0)
            continue; /* a refused block need not stop the others */
        if (memcmp(j->buf, back, l))
            abort(); /* a write that succeeded must read back */
        if (zero)
            vbd_node_co_pwrite_zeroes(n, offs[i] & ~(zero - 1), zero, 0);
    }
}

/* Whether the format's own check (no repair) finds the image free of
 * corruption: only then does every place of the disk have a place in the
 * file of its own. */
static bool image_clean(struct fuzz_job *j, struct vbd_node *n)
{
    if (!n->drv->co_check)
        return false;
    static FILE *devnull;
    if (!devnull && !(devnull = fopen("/dev/null", "w")))
        return false;
    (void)j;
    struct vbd_check_result r = {0};
    struct vbd_error *err = NULL;
    FILE *saved = stderr;
    stderr = devnull; /* what check reports is not this question's answer */
    int rc = n->drv->co_check(n, &r, 0, &err);
    stderr = saved;
    vbd_error_free(err);
    return rc == 0 && r.corruptions == 0 && r.check_errors == 0;
}

/* One request for the whole range: the driver splits it as it must. */
static int read_all(struct vbd_node *n, uint8_t *dst, uint64_t limit)
{
    return vbd_node_co_pread(n, 0, dst, limit);
}

static void compare_model(struct fuzz_job *j, const uint8_t *model, const uint8_t *now, uint64_t limit,
                          const char *when)
{
    if (!memcmp(model, now, limit))
        return;
    for (uint64_t i = 0; i < limit; i++)
        if (model[i] != now[i]) {
            fprintf(stderr, "a clean %s image: byte %llu reads 0x%02x %s, 0x%02x expected (a write went outside "
                            "its range)\n", j->fmt->driver, (unsigned long long)i, now[i], when, model[i]);
            abort();
        }
}

#define ISOLATED_MIN (4u << 20)
#define ISOLATED_MAX (16u << 20)

bool fuzz_image_write_isolated(struct fuzz_job *j, struct vbd_node *n, const uint64_t *offs, size_t count,
                               uint64_t len, bool drop)
{
    if (len > BUF / 2)
        len = BUF / 2;
    /* the disk up to 4 MiB, or to the last write's end: read three times per input, it bounds the cost */
    uint64_t limit = ISOLATED_MIN;
    for (size_t i = 0; i < count; i++)
        if (offs[i] < ISOLATED_MAX && offs[i] + len > limit)
            limit = offs[i] + len;
    if (limit > n->size)
        limit = n->size;
    static uint8_t *model, *now; /* ISOLATED_MAX + 32 KiB each, kept for every input */
    if (!model) {
        model = malloc(ISOLATED_MAX + BUF / 2);
        now = malloc(ISOLATED_MAX + BUF / 2);
        if (!model || !now)
            abort();
    }
    bool checked = limit && image_clean(j, n) && read_all(n, model, limit) == 0;
    if (!checked) {
        fuzz_image_write_back(j, n, offs, count, len, 0);
        if (drop)
            vbd_node_unref(n);
        return false;
    }
    for (size_t i = 0; i < count; i++) {
        if (offs[i] >= limit)
            continue;
        uint64_t l = limit - offs[i] < len ? limit - offs[i] : len;
        memset(j->buf, 0xa0 + (int)i, l);
        if (vbd_node_co_pwrite(n, offs[i], j->buf, l, 0) == 0) {
            memcpy(model + offs[i], j->buf, l);
        } else if (vbd_node_co_pread(n, offs[i], model + offs[i], l) < 0) {
            checked = false; /* a refused write's own range may read as anything, or not at all */
            break;
        }
    }
    if (checked && read_all(n, now, limit) == 0)
        compare_model(j, model, now, limit, "after the writes");
    if (getenv("VBD_FUZZ_VERBOSE")) /* whether inputs reach this check at all */
        fprintf(stderr, "write check: %s image, %llu bytes compared\n", checked ? "clean" : "refused",
                (unsigned long long)limit);
    if (drop) {
        vbd_node_unref(n);
        struct vbd_node *m = checked ? fuzz_image_open(j, 0) : NULL;
        if (m && m->size >= limit && read_all(m, now, limit) == 0)
            compare_model(j, model, now, limit, "once closed and reopened");
        if (m)
            vbd_node_unref(m);
    }
    return checked;
}

/* A digest of what the disk reads as, up to max_read and 8 MiB; false if
 * a read fails. Words, not bytes: this runs twice for every input. */
static bool read_digest(struct fuzz_job *j, struct vbd_node *n, uint64_t *digest)
{
    uint64_t max = j->fmt->max_read ? j->fmt->max_read : 64u << 20;
    if (max > 8u << 20)
        max = 8u << 20;
    uint64_t limit = n->size < max ? n->size : max;
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t off = 0; off < limit; off += BUF) {
        uint64_t len = limit - off < BUF ? limit - off : BUF;
        memset(j->buf, 0, BUF);
        if (vbd_node_co_pread(n, off, j->buf, len) < 0)
            return false;
        for (uint64_t i = 0; i < BUF; i += 8) {
            uint64_t w;
            memcpy(&w, j->buf + i, 8);
            h = (h ^ w) * 0x100000001b3ull;
            h ^= h >> 29;
        }
    }
    *digest = h;
    return true;
}

void fuzz_image_unref_compare(struct fuzz_job *j, struct vbd_node *n)
{
    uint64_t before = 0, after = 0;
    bool ok = read_digest(j, n, &before);
    vbd_node_unref(n);
    if (!ok)
        return;
    struct vbd_node *m = fuzz_image_open(j, 0);
    if (!m)
        return;
    ok = read_digest(j, m, &after);
    vbd_node_unref(m);
    if (ok && after != before) {
        fprintf(stderr, "a %s image reads differently once closed and reopened: metadata in memory and on disk "
                        "differ\n", j->fmt->driver);
        abort();
    }
}

static void run_co(void *arg)
{
    struct fuzz_job *j = arg;
    const struct fuzz_image *fmt = j->fmt;
    struct vbd_node *n;
    if (fmt->read_only && (n = fuzz_image_open(j, VBD_OPEN_RDWR))) {
        fprintf(stderr, "a %s image opened read-write\n", fmt->driver);
        abort();
    }
    n = fuzz_image_open(j, j->open_flags);
    if (n) {
        fuzz_image_read_map(j, n);
        if (fmt->inspect)
            fmt->inspect(j, n);
        if (fmt->check)
            fuzz_image_check(j, n, 0);
        /* a check open skips the validation that keeps writes off the metadata */
        if (fmt->persist && (j->open_flags & VBD_OPEN_RDWR) && !(j->open_flags & VBD_OPEN_CHECK))
            fuzz_image_unref_compare(j, n);
        else
            vbd_node_unref(n);
    }
    if (fmt->after)
        fmt->after(j);
}

/* Every input is written out, opened, written, flushed and checked: on a
 * disk file system each flush waits for the disk (5000 inputs of parallels,
 * vdi or vhdx: ~30 s, ~10 s in memory), which says nothing about the
 * parsing under test. So the scratch files live in /dev/shm where there is
 * one. */
static const char *scratch_dir(void)
{
    return access("/dev/shm", W_OK | X_OK) == 0 ? "/dev/shm" : "/tmp";
}

static char dir[64];

/* A private directory holds what the driver made beside the image (vmdk's
 * extent files): gone at exit, as the image is after each input. */
static void remove_dir(void)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char p[sizeof(dir) + 256];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

int fuzz_image_input(const struct fuzz_image *fmt, const uint8_t *data, size_t size)
{
    static char path[96];
    static uint8_t *buf;
    if (!buf) {
        vbd_log_set_level(VBD_LOG_ERROR);
        if (fmt->private_dir) {
            snprintf(dir, sizeof(dir), "%s/vbd-fuzz-%s-%d", scratch_dir(), fmt->driver, (int)getpid());
            mkdir(dir, 0700);
            atexit(remove_dir);
            snprintf(path, sizeof(path), "%s/f.%s", dir, fmt->driver);
        } else {
            snprintf(path, sizeof(path), "%s/vbd-fuzz-%s-%d.img", scratch_dir(), fmt->driver, (int)getpid());
        }
        buf = malloc(BUF);
    }
    if (size > (fmt->max_input ? fmt->max_input : 4u << 20))
        return 0;
    struct fuzz_job j = {fmt, path, fmt->private_dir ? dir : NULL, fmt->read_only ? 0 : VBD_OPEN_CHECK, 0, buf};
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    bool ok = fmt->synth(&j, f, data, size);
    if (fclose(f) == 0 && ok) {
        memset(buf, 0, BUF);
        vbd_co_run_sync(run_co, &j);
    }
    unlink(path);
    return 0;
}

void fuzz_put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}
