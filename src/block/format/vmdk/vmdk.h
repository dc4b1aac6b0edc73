/* SPDX-License-Identifier: MIT */
/* The vmdk driver's shared parts: on-disk constants, the extent and node
 * state, and what create.c (create, measure) offers vmdk.c. */
#ifndef VBD_FORMAT_VMDK_H
#define VBD_FORMAT_VMDK_H

#include "vbd/block.h"
#include "vbd/bswap.h"

#include <stdbool.h>
#include <stdint.h>

struct json_object;
struct vbd_error;

#define VMDK4_MAGIC 0x564d444bu /* "KDMV" read as little-endian */
#define VMDK3_MAGIC 0x44574f43u /* "COWD" */
#define F_NL_DETECT (1u << 0)
#define F_RGD (1u << 1)
#define F_ZERO_GRAIN (1u << 2)
#define F_COMPRESS (1u << 16)
#define F_MARKER (1u << 17)
#define GD_AT_END UINT64_MAX
#define GTE_ZEROED 1u
#define DEFLATE 1
#define SECTOR 512u
#define DESC_MAX ((1u << 20) - 1)   /* longest descriptor read, as qemu-img */
#define MAX_GRAIN_SECTORS 0x200000u /* 1 GiB grains: qemu-img's limit */
#define MAX_GD_ENTRIES (32u << 20)
#define MAX_EXTENTS 65536u
#define RUN_MAX 512u
#define SPLIT_SIZE 0x80000000ull    /* twoGbMaxExtent* extent size */
#define MARKER_BYTES 12u

enum { K_UNALLOC, K_ZERO, K_DATA, K_COMP };

/* bytes [start, end) of an extent file */
struct vmdk_range {
    uint64_t start, end;
};

struct vmdk_extent {
    struct vbd_node *file; /* n->file or owned */
    bool owned;
    bool flat, compressed, has_marker, zero_grain, cowd;
    char type[16];          /* the extent line's type ("" for the monolithic ones, as qemu-img) */
    uint64_t start, bytes;  /* range of the virtual disk */
    uint64_t flat_off;      /* flat: where the range starts in the file */
    uint64_t grain;         /* bytes per grain */
    uint32_t gtes;          /* entries per grain table */
    uint32_t gd_entries;
    uint64_t gd_off, rgd_off; /* bytes; rgd_off 0 = none */
    uint32_t *gd, *rgd;     /* host order, sectors */
    uint64_t file_end;      /* next allocation */
    uint64_t data_start;    /* bytes: grains live at or past the header's overHead (0: unchecked) */
    /* Where the extent's own metadata lies (the header up to overHead, the
     * directories, every grain table, those appended later too): sorted,
     * disjoint, merged when they touch. A grain there is corruption. */
    struct vmdk_range *meta;
    unsigned nmeta;
    bool gd_at_end;
};

struct vmdk_state {
    struct vmdk_extent *ext;
    unsigned next;
    char create_type[64];
    uint32_t cid, parent_cid;
    char *desc;            /* descriptor text (NUL-terminated) */
    uint64_t desc_off;     /* where it lives in n->file; 0: n->file is a descriptor file */
    uint64_t desc_room;    /* embedded: bytes it may fill (up to the tables, grains) */
    bool cid_updated, backing_checked, backing_ok;
    bool read_only;
    bool stream_ro;        /* an extent has its GD at the end: writes refused */
    struct vbd_co_mutex lock;
};

static inline uint64_t div_up(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

extern const struct vbd_opt_desc vmdk_create_opts[];
int vmdk_create(const char *filename, struct vbd_node *file, struct json_object *opts, struct json_object *file_hints,
                   struct vbd_error **err);
int vmdk_measure(struct json_object *opts, struct vbd_node *in, uint64_t *required, uint64_t *fully,
                 struct vbd_error **err);

#endif
