/* SPDX-License-Identifier: MIT */
/* The vhdx driver's shared parts: on-disk constants, the state, and what
 * vhdx.c (open, I/O, check), vhdx-log.c (checksums, headers, the log) and
 * vhdx-create.c (create, measure) call of each other. See vhdx.c. */
#ifndef VBD_FORMAT_VHDX_H
#define VBD_FORMAT_VHDX_H

#include "vbd/block.h"
#include "vbd/bswap.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"

#include <endian.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define TiB (MiB * MiB)

#define VHDX_HEADER_SECTION MiB
#define VHDX_HEADER_SIZE 4096
#define VHDX_HEADER1_OFF (64 * KiB)
#define VHDX_HEADER2_OFF (128 * KiB)
#define VHDX_RT1_OFF (192 * KiB)
#define VHDX_RT2_OFF (256 * KiB)
#define VHDX_RT_SIZE (64 * KiB)
#define VHDX_META_TABLE_SIZE (64 * KiB)
#define VHDX_LOG_SECTOR 4096u
#define VHDX_BLOCK_MIN MiB
#define VHDX_BLOCK_MAX (256 * MiB)
#define VHDX_MAX_SIZE (64 * TiB)
#define VHDX_MAX_SECTORS_PER_BLOCK (1ull << 23)
#define VHDX_LOG_SCAN_BUDGET (512 * MiB) /* bytes checksummed while searching a damaged log */

/* header fields */
#define H_SEQ 8
#define H_FILE_GUID 16
#define H_DATA_GUID 32
#define H_LOG_GUID 48
#define H_LOG_VERSION 64
#define H_VERSION 66
#define H_LOG_LENGTH 68
#define H_LOG_OFFSET 72

/* payload block states */
#define PB_NOT_PRESENT 0
#define PB_UNDEFINED 1
#define PB_ZERO 2
#define PB_UNMAPPED 3
#define PB_UNMAPPED_V095 5 /* an older draft's value, read as UNMAPPED (as QEMU) */
#define PB_FULLY_PRESENT 6
#define PB_PARTIALLY_PRESENT 7
#define BAT_STATE_MASK 7ull
#define BAT_OFFSET_MASK (~(MiB - 1))

/* GUIDs as stored: data1/2/3 little-endian, data4 as bytes */
#define VHDX_GUID(d1, d2, d3, a, b, c, d, e, f, g, h)                                                                    \
    {(uint8_t)(d1), (uint8_t)((d1) >> 8), (uint8_t)((d1) >> 16), (uint8_t)((d1) >> 24), (uint8_t)(d2),              \
     (uint8_t)((d2) >> 8), (uint8_t)(d3), (uint8_t)((d3) >> 8), a, b, c, d, e, f, g, h}
extern const uint8_t vhdx_bat_guid[16];
extern const uint8_t vhdx_metadata_guid[16];
extern const uint8_t vhdx_file_param_guid[16];
extern const uint8_t vhdx_vsize_guid[16];
extern const uint8_t vhdx_page83_guid[16];
extern const uint8_t vhdx_lsec_guid[16];
extern const uint8_t vhdx_psec_guid[16];
extern const uint8_t vhdx_parent_loc_guid[16];
extern const uint8_t vhdx_zero_guid[16];


/* ---------- state ---------- */

struct vhdx_state {
    uint8_t hdr[2][VHDX_HEADER_SIZE]; /* both headers as on disk; hdr[cur] is active */
    int cur;
    uint8_t session_guid[16];
    uint64_t log_offset;
    uint32_t log_length;
    uint64_t bat_offset, bat_length;
    uint64_t meta_offset, meta_length;
    uint32_t block_size, lsec, psec;
    bool fixed;           /* leave_blocks_allocated */
    bool diff;            /* has_parent: a differencing image */
    uint64_t vsize;
    uint64_t chunk_ratio;
    uint64_t data_blocks, bat_entries;
    uint64_t *bat;        /* host order, bat_length rounded up to a log sector; written under lock */
    uint64_t alloc_end;   /* new blocks go at this, rounded up to 1 MiB */
    uint64_t log_seq;     /* sequence number of the next log entry */
    bool data_guid_done;  /* data_write_guid renewed for this session */
    bool log_replayed;
    bool rw;
    struct vbd_co_mutex lock;
};

static inline uint64_t bat_index(const struct vhdx_state *s, uint64_t blk)
{
    return blk + blk / s->chunk_ratio;
}

uint32_t vhdx_crc(const uint8_t *buf, size_t len, size_t crc_at);
void vhdx_set_crc(uint8_t *buf, size_t len, size_t crc_at);
void vhdx_guid_generate(uint8_t *g);
int vhdx_read_headers(struct vbd_node *n, struct vhdx_state *s, struct vbd_error **err);
int vhdx_update_headers(struct vbd_node *n, struct vhdx_state *s, bool new_data_guid, const uint8_t *log_guid);
int vhdx_log_replay(struct vbd_node *n, struct vhdx_state *s, struct vbd_error **err);
bool vhdx_log_has_room(const struct vhdx_state *s);
int vhdx_log_write_bat_entry(struct vbd_node *n, struct vhdx_state *s, uint64_t idx, uint64_t entry);
extern const struct vbd_opt_desc vhdx_create_opts[];
int vhdx_co_create(const char *filename, struct vbd_node *file, struct json_object *opts, struct json_object *file_hints,
                   struct vbd_error **err);
int vhdx_measure(struct json_object *opts, struct vbd_node *in, uint64_t *required, uint64_t *fully_allocated,
                 struct vbd_error **err);

#endif
