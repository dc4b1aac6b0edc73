/* The scaffold of the image format fuzz targets: an input becomes an image
 * file (the format's synth hook, which may give a short or foreign input a
 * valid header so that mutations reach the tables behind it), the format
 * driver opens it over a file node with locking off, and every step (read
 * every byte, map, check, reopen read-write, write and read back) must fail
 * cleanly or succeed, never crash, never touch memory out of bounds. */
#ifndef VBD_FUZZ_IMAGE_H
#define VBD_FUZZ_IMAGE_H

#include "vbd/block.h"
#include "vbd/bswap.h" /* the little-endian fields the synth hooks write: put_le32p, put_le64p */
#include "vbd/coroutine.h"
#include "vbd/error.h"

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct fuzz_job;

struct fuzz_image {
    const char *driver;
    size_t max_input;    /* larger inputs are skipped; 0: 4 MiB */
    uint64_t max_read;   /* bounded work per input: bytes read and mapped; 0: 64 MiB */
    bool read_only;      /* a read-only format: a read-write open must be refused */
    bool unaligned_read; /* one more read at an odd offset across sectors */
    bool check;          /* co_check (no repair) on the first node */
    bool quiet_check;    /* check reports on stderr, as qemu-img's: keep it quiet */
    bool no_backing;     /* "backing": null, never follow a backing name from the input */
    const char *l2_cache_size;
    /* A node opened read-write (and written) reads the same once closed and
     * reopened read-only: what the driver kept in memory is what it wrote. */
    bool persist;
    /* A private directory for the image (f.DRIVER in it), so that names in
     * the input (extent files) can reach only what the target puts there. */
    bool private_dir;
    /* Writes the image for one input to f (open, empty); may set j->open_flags
     * and j->tag. Returns false to skip the input. */
    bool (*synth)(struct fuzz_job *j, FILE *f, const uint8_t *data, size_t size);
    /* On the first node after it is read and mapped, before check. */
    void (*inspect)(struct fuzz_job *j, struct vbd_node *n);
    /* After the first node is closed (also when it did not open). */
    void (*after)(struct fuzz_job *j);
};

struct fuzz_job {
    const struct fuzz_image *fmt;
    const char *path;
    const char *dir;     /* the private directory, or NULL */
    unsigned open_flags; /* of the first open: VBD_OPEN_CHECK (0 for read_only) unless synth says otherwise */
    unsigned tag;        /* the format's own per-input state */
    uint8_t *buf;        /* 64 KiB of scratch, zeroed for each input */
};

/* The body of LLVMFuzzerTestOneInput for a format. */
int fuzz_image_input(const struct fuzz_image *fmt, const uint8_t *data, size_t size);

/* Opens the image as the format (VBD_OPEN_NO_BACKING always); NULL when refused. */
struct vbd_node *fuzz_image_open(struct fuzz_job *j, unsigned flags);
/* Reads every byte up to the format's max_read, then maps it. */
void fuzz_image_read_map(struct fuzz_job *j, struct vbd_node *n);
void fuzz_image_check(struct fuzz_job *j, struct vbd_node *n, unsigned fix);
/* Writes len bytes of 0xa5 (clipped to the disk) at each offset inside the
 * disk and reads them back: a write that succeeded must read back. zero > 0:
 * then zeroes the aligned zero bytes around the offset. A failure at one
 * offset goes on with the next. */
void fuzz_image_write_back(struct fuzz_job *j, struct vbd_node *n, const uint64_t *offs, size_t count,
                           uint64_t len, uint64_t zero);
/* On an image the format's check finds free of corruption: writes len
 * bytes (clipped to 32 KiB) at each offset below 16 MiB, and the disk (its
 * first 4 MiB, or up to the last write's end) must then read as before
 * except where the writes went: a driver's
 * own writes (tables, logs, headers) never land on data. With drop, n is
 * dropped and the image, reopened read-only, must read the same. On other
 * images (or when a refused write's range cannot be read back) it is
 * fuzz_image_write_back; returns whether the check ran. */
bool fuzz_image_write_isolated(struct fuzz_job *j, struct vbd_node *n, const uint64_t *offs, size_t count,
                               uint64_t len, bool drop);
/* Drops n, a read-write node; then the image, reopened read-only, must read
 * what n read before it was closed (abort if not). A reopen that fails, or
 * reads that fail, end it quietly: other steps judge those. */
void fuzz_image_unref_compare(struct fuzz_job *j, struct vbd_node *n);

void fuzz_put_be(uint8_t *p, uint64_t v, int n);

#endif
