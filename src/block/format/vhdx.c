/* SPDX-License-Identifier: MIT */
/* Format driver "vhdx": Hyper-V VHDX, fixed and dynamic (Microsoft's
 * VHDX Format Specification v1.00).
 *
 * Layout: a 1 MiB header section (file identifier, two 4 KiB headers at
 * 64 KiB and 128 KiB, two 64 KiB region tables at 192 KiB and 256 KiB),
 * then, where the region table and the header say, the log, the block
 * allocation table (BAT) and the metadata region. Headers, region tables
 * and log entries carry CRC-32C checksums. The BAT interleaves one sector
 * bitmap entry after every chunk_ratio payload block entries; payload
 * entries hold a state (3 bits) and the block's file offset in MiB.
 *
 * Metadata updates go through the log as QEMU does: a new block is written
 * and flushed, then a log entry holding the new BAT sector is written and
 * flushed, then the sector is written in place and flushed, then the log
 * is marked empty (log GUID zeroed in both headers). A crash anywhere
 * leaves either the old BAT (the block is unreferenced space) or a log
 * that the next read-write open replays. A dirty image (a log to replay)
 * opened read-only is refused, as QEMU does, with the command that
 * replays it.
 *
 * Differencing images (has_parent; QEMU refuses them) are read, read-only:
 * the parent named by the parent locator's relative_path is the backing
 * node; a PARTIALLY_PRESENT block's sectors come from this file where the
 * block's sector bitmap (one bit per logical sector, in the sector bitmap
 * block the BAT lists after each chunk of payload blocks) says so, from
 * the parent elsewhere; absent, undefined and unmapped blocks are the
 * parent's. */
#include "vbd/block.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/iov.h"
#include "vbd/options.h"

#include <endian.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

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
#define GUID(d1, d2, d3, a, b, c, d, e, f, g, h)                                                                    \
    {(uint8_t)(d1), (uint8_t)((d1) >> 8), (uint8_t)((d1) >> 16), (uint8_t)((d1) >> 24), (uint8_t)(d2),              \
     (uint8_t)((d2) >> 8), (uint8_t)(d3), (uint8_t)((d3) >> 8), a, b, c, d, e, f, g, h}
static const uint8_t bat_guid[16] = GUID(0x2dc27766, 0xf623, 0x4200, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08);
static const uint8_t metadata_guid[16] = GUID(0x8b7ca206, 0x4790, 0x4b9a, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e);
static const uint8_t file_param_guid[16] = GUID(0xcaa16737, 0xfa36, 0x4d43, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b);
static const uint8_t vsize_guid[16] = GUID(0x2fa54224, 0xcd1b, 0x4876, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8);
static const uint8_t page83_guid[16] = GUID(0xbeca12ab, 0xb2e6, 0x4523, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46);
static const uint8_t lsec_guid[16] = GUID(0x8141bf1d, 0xa96f, 0x4709, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f);
static const uint8_t psec_guid[16] = GUID(0xcda348c7, 0x445d, 0x4471, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56);
static const uint8_t parent_loc_guid[16] = GUID(0xa8d35f2d, 0xb30b, 0x454d, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c);
static const uint8_t zero_guid[16];

static inline uint16_t get_le16(const void *p) { uint16_t v; memcpy(&v, p, 2); return le16toh(v); }
static inline uint32_t get_le32(const void *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static inline uint64_t get_le64(const void *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }
static inline void put_le16(void *p, uint16_t v) { v = htole16(v); memcpy(p, &v, 2); }
static inline void put_le32(void *p, uint32_t v) { v = htole32(v); memcpy(p, &v, 4); }
static inline void put_le64(void *p, uint64_t v) { v = htole64(v); memcpy(p, &v, 8); }

/* ---------- CRC-32C (Castagnoli, reflected 0x82f63b78), slicing by 8 ---------- */

static uint32_t crc_tab[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xff];
}

static uint32_t crc32c_update(uint32_t crc, const uint8_t *p, size_t len)
{
    while (len && ((uintptr_t)p & 7)) {
        crc = (crc >> 8) ^ crc_tab[0][(crc ^ *p++) & 0xff];
        len--;
    }
    while (len >= 8) {
        uint32_t lo = get_le32(p) ^ crc, hi = get_le32(p + 4);
        crc = crc_tab[7][lo & 0xff] ^ crc_tab[6][(lo >> 8) & 0xff] ^ crc_tab[5][(lo >> 16) & 0xff] ^
              crc_tab[4][lo >> 24] ^ crc_tab[3][hi & 0xff] ^ crc_tab[2][(hi >> 8) & 0xff] ^
              crc_tab[1][(hi >> 16) & 0xff] ^ crc_tab[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = (crc >> 8) ^ crc_tab[0][(crc ^ *p++) & 0xff];
    return crc;
}

/* The checksum of buf with its 4-byte checksum field at crc_at read as zero. */
static uint32_t vhdx_crc(const uint8_t *buf, size_t len, size_t crc_at)
{
    static const uint8_t zero4[4];
    pthread_once(&crc_once, crc_init);
    uint32_t c = crc32c_update(0xffffffffu, buf, crc_at);
    c = crc32c_update(c, zero4, 4);
    c = crc32c_update(c, buf + crc_at + 4, len - crc_at - 4);
    return ~c;
}

static void vhdx_set_crc(uint8_t *buf, size_t len, size_t crc_at)
{
    put_le32(buf + crc_at, vhdx_crc(buf, len, crc_at));
}

static void guid_generate(uint8_t *g)
{
    if (getrandom(g, 16, 0) != 16)
        for (int i = 0; i < 16; i++)
            g[i] = (uint8_t)rand();
    g[7] = (uint8_t)((g[7] & 0x0f) | 0x40); /* version 4, in the little-endian data3 */
    g[8] = (uint8_t)((g[8] & 0x3f) | 0x80);
}

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

static uint64_t bat_index(const struct vhdx_state *s, uint64_t blk)
{
    return blk + blk / s->chunk_ratio;
}

static void vhdx_free(struct vhdx_state *s)
{
    free(s->bat);
    s->bat = NULL;
}

/* ---------- headers ---------- */

static int header_offset(int i)
{
    return i ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF;
}

static int read_headers(struct vbd_node *n, struct vhdx_state *s, struct vbd_error **err)
{
    bool valid[2];
    uint64_t seq[2];
    for (int i = 0; i < 2; i++) {
        int rc = vbd_node_co_pread(n->file, header_offset(i), s->hdr[i], VHDX_HEADER_SIZE);
        if (rc < 0) {
            vbd_error_setf(err, -rc, "Could not read the VHDX headers of '%s': %s", n->file->filename, strerror(-rc));
            return rc;
        }
        const uint8_t *h = s->hdr[i];
        valid[i] = !memcmp(h, "head", 4) && get_le32(h + 4) == vhdx_crc(h, VHDX_HEADER_SIZE, 4) &&
                   get_le16(h + H_VERSION) == 1;
        seq[i] = get_le64(h + H_SEQ);
    }
    if (valid[0] && valid[1]) {
        if (seq[0] != seq[1])
            s->cur = seq[1] > seq[0];
        else if (!memcmp(s->hdr[0], s->hdr[1], 80)) /* Disk2VHD writes two identical headers */
            s->cur = 0;
        else
            valid[0] = valid[1] = false;
    } else {
        s->cur = valid[1];
    }
    if (!valid[0] && !valid[1]) {
        vbd_error_setf(err, EINVAL, "Image '%s': no valid VHDX header found", n->file->filename);
        return -EINVAL;
    }
    return 0;
}

/* Write the inactive header as the new active one (sequence + 1), with
 * this session's file_write_guid, optionally a new data_write_guid and a
 * new log GUID. The spec updates the headers twice so both are current. */
static int update_header(struct vbd_node *n, struct vhdx_state *s, bool new_data_guid, const uint8_t *log_guid)
{
    int other = !s->cur;
    uint8_t *h = s->hdr[other];
    memcpy(h, s->hdr[s->cur], VHDX_HEADER_SIZE);
    put_le64(h + H_SEQ, get_le64(s->hdr[s->cur] + H_SEQ) + 1);
    memcpy(h + H_FILE_GUID, s->session_guid, 16);
    if (new_data_guid)
        guid_generate(h + H_DATA_GUID);
    if (log_guid)
        memcpy(h + H_LOG_GUID, log_guid, 16);
    vhdx_set_crc(h, VHDX_HEADER_SIZE, 4);
    int rc = vbd_node_co_pwrite(n->file, header_offset(other), h, VHDX_HEADER_SIZE, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(n->file);
    if (rc == 0)
        s->cur = other;
    return rc;
}

static int update_headers(struct vbd_node *n, struct vhdx_state *s, bool new_data_guid, const uint8_t *log_guid)
{
    int rc = update_header(n, s, new_data_guid, log_guid);
    return rc < 0 ? rc : update_header(n, s, new_data_guid, log_guid);
}

/* ---------- log ---------- */

/* log entry header */
#define L_CHECKSUM 4
#define L_ENTRY_LENGTH 8
#define L_TAIL 12
#define L_SEQ 16
#define L_DESC_COUNT 24
#define L_LOG_GUID 32
#define L_FLUSHED 48
#define L_LAST 56
#define L_HDR_SIZE 64
/* descriptors: "desc"/"zero", trailing(4)/reserved, leading(8)/zero_length, file_offset, seq */
#define D_SIZE 32

struct log_entry {
    uint64_t seq;
    uint32_t sectors;
    uint8_t *buf; /* the entry, contiguous (malloc'd) */
};

static uint32_t desc_sectors(uint32_t count)
{
    return (uint32_t)(((uint64_t)count + 2 + 127) / 128); /* the header takes two descriptor slots */
}

/* Validate the entry starting at log sector pos (wrapping around the
 * circular log): signature, GUID, sequence (want_seq, 0 = any), lengths,
 * descriptors, data sectors and checksum. *budget bounds the bytes
 * checksummed so that a log full of near-valid entries cannot hang the
 * open. Returns 1 with *e filled, 0 if not a valid entry, -E2BIG when
 * the budget is spent (refuse rather than miss the active sequence),
 * -ENOMEM. */
static int log_entry_at(const struct vhdx_state *s, const uint8_t *log, uint32_t nsect, uint32_t pos,
                        uint64_t want_seq, uint64_t *budget, struct log_entry *e)
{
    const uint8_t *h = log + (uint64_t)pos * VHDX_LOG_SECTOR;
    if (memcmp(h, "loge", 4))
        return 0;
    uint32_t len = get_le32(h + L_ENTRY_LENGTH);
    uint64_t seq = get_le64(h + L_SEQ);
    uint32_t count = get_le32(h + L_DESC_COUNT);
    if (!len || len % VHDX_LOG_SECTOR || len > s->log_length || !seq || (want_seq && seq != want_seq) ||
        memcmp(h + L_LOG_GUID, s->hdr[s->cur] + H_LOG_GUID, 16))
        return 0;
    uint32_t sectors = len / VHDX_LOG_SECTOR, dsect = desc_sectors(count);
    if (dsect > sectors)
        return 0;
    if (*budget < len)
        return -E2BIG;
    *budget -= len;
    uint8_t *buf = malloc(len);
    if (!buf)
        return -ENOMEM;
    for (uint32_t i = 0; i < sectors; i++)
        memcpy(buf + (uint64_t)i * VHDX_LOG_SECTOR, log + (uint64_t)((pos + i) % nsect) * VHDX_LOG_SECTOR,
               VHDX_LOG_SECTOR);
    uint32_t ndata = 0;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *d = buf + L_HDR_SIZE + (uint64_t)i * D_SIZE;
        if (get_le64(d + 24) != seq || get_le64(d + 16) % VHDX_LOG_SECTOR)
            goto invalid;
        if (!memcmp(d, "zero", 4)) {
            if (get_le64(d + 8) % VHDX_LOG_SECTOR)
                goto invalid;
        } else if (!memcmp(d, "desc", 4)) {
            if (dsect + ndata >= sectors)
                goto invalid;
            const uint8_t *ds = buf + (uint64_t)(dsect + ndata) * VHDX_LOG_SECTOR;
            if (memcmp(ds, "data", 4) || ((uint64_t)get_le32(ds + 4) << 32 | get_le32(ds + 4092)) != seq)
                goto invalid;
            ndata++;
        } else {
            goto invalid;
        }
    }
    if (vhdx_crc(buf, len, L_CHECKSUM) != get_le32(buf + L_CHECKSUM))
        goto invalid;
    e->seq = seq;
    e->sectors = sectors;
    e->buf = buf;
    return 1;
invalid:
    free(buf);
    return 0;
}

static void free_entries(struct log_entry *v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        free(v[i].buf);
    free(v);
}

/* The active sequence, as QEMU finds it: scanning the log from its start,
 * every run of valid entries with consecutive sequence numbers; the run
 * ending with the highest sequence number wins. */
static int log_search(const struct vhdx_state *s, const uint8_t *log, struct log_entry **out, uint32_t *nout)
{
    uint32_t nsect = s->log_length / VHDX_LOG_SECTOR;
    uint64_t budget = VHDX_LOG_SCAN_BUDGET;
    struct log_entry *best = NULL;
    uint32_t nbest = 0;
    uint64_t best_seq = 0;
    uint64_t pos = 0;
    while (pos < nsect) {
        struct log_entry e;
        int v = log_entry_at(s, log, nsect, (uint32_t)pos, 0, &budget, &e);
        if (v < 0) {
            free_entries(best, nbest);
            return v;
        }
        if (!v) {
            pos++;
            continue;
        }
        struct log_entry *run = malloc(sizeof(*run) * 4);
        if (!run) {
            free(e.buf);
            free_entries(best, nbest);
            return -ENOMEM;
        }
        uint32_t nrun = 0, cap = 4;
        uint64_t used = e.sectors;
        run[nrun++] = e;
        pos += e.sectors;
        while (used < nsect) {
            struct log_entry f;
            int w = log_entry_at(s, log, nsect, (uint32_t)(pos % nsect), e.seq + 1, &budget, &f);
            if (w < 0) {
                free_entries(run, nrun);
                free_entries(best, nbest);
                return w;
            }
            if (!w)
                break;
            if (used + f.sectors > nsect) {
                free(f.buf);
                break;
            }
            if (nrun == cap) {
                struct log_entry *r = realloc(run, sizeof(*run) * cap * 2);
                if (!r) {
                    free(f.buf);
                    free_entries(run, nrun);
                    free_entries(best, nbest);
                    return -ENOMEM;
                }
                run = r;
                cap *= 2;
            }
            run[nrun++] = f;
            e = f;
            used += f.sectors;
            pos += f.sectors;
        }
        if (!best || e.seq > best_seq) {
            free_entries(best, nbest);
            best = run;
            nbest = nrun;
            best_seq = e.seq;
        } else {
            free_entries(run, nrun);
        }
    }
    *out = best;
    *nout = nbest;
    return 0;
}

/* Replay the active log sequence, if any, into the file (read-write) or
 * refuse (read-only). Runs before the region tables are read: the log may
 * rewrite the BAT and the metadata, never the header section or itself. */
static int log_replay(struct vbd_node *n, struct vhdx_state *s, struct vbd_error **err)
{
    const char *name = n->file->filename;
    const uint8_t *h = s->hdr[s->cur];
    s->log_offset = get_le64(h + H_LOG_OFFSET);
    s->log_length = get_le32(h + H_LOG_LENGTH);
    uint64_t fsize = vbd_node_size(n->file);
    if (s->log_offset < MiB || s->log_offset % MiB) {
        vbd_error_setf(err, EINVAL, "Image '%s': invalid VHDX log offset %llu", name, (unsigned long long)s->log_offset);
        return -EINVAL;
    }
    if (get_le16(h + H_LOG_VERSION) != 0) {
        vbd_error_setf(err, ENOTSUP, "Image '%s': unsupported VHDX log version %u", name, get_le16(h + H_LOG_VERSION));
        return -ENOTSUP;
    }
    if (!memcmp(h + H_LOG_GUID, zero_guid, 16) || s->log_length == 0)
        return 0;
    if (s->log_length % MiB) {
        vbd_error_setf(err, EINVAL, "Image '%s': invalid VHDX log length %u", name, s->log_length);
        return -EINVAL;
    }
    if (s->log_offset > fsize || s->log_length > fsize - s->log_offset) {
        vbd_error_setf(err, EINVAL, "Image '%s': the VHDX log (offset %llu, length %u) is past the end of the file", name,
                       (unsigned long long)s->log_offset, s->log_length);
        return -EINVAL;
    }
    uint8_t *log = malloc(s->log_length);
    if (!log) {
        vbd_error_setf(err, ENOMEM, "Image '%s': cannot allocate the VHDX log", name);
        return -ENOMEM;
    }
    int rc = vbd_node_co_pread(n->file, s->log_offset, log, s->log_length);
    struct log_entry *ents = NULL;
    uint32_t nents = 0;
    if (rc == 0)
        rc = log_search(s, log, &ents, &nents);
    free(log);
    if (rc == -E2BIG) {
        vbd_error_setf(err, EINVAL, "Image '%s': the VHDX log holds too many damaged entries to find the active ones", name);
        return -EINVAL;
    }
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Image '%s': could not read the VHDX log: %s", name, strerror(-rc));
        return rc;
    }
    if (!nents)
        return 0; /* a log GUID but no valid entry: nothing was committed */
    if (!s->rw) {
        free_entries(ents, nents);
        vbd_error_setf(err, EPERM,
                       "VHDX image file '%s' opened read-only, but contains a log that needs to be replayed; "
                       "to replay the log, run: vbd-img check -r all '%s'", name, name);
        return -EPERM;
    }
    /* Check every write first so that a hostile entry changes nothing. An
     * entry may grow the file to its last_file_offset, within one block of
     * the current end (QEMU grows it). */
    uint64_t limit = fsize;
    for (uint32_t i = 0; i < nents; i++) {
        const uint8_t *b = ents[i].buf;
        uint64_t flushed = get_le64(b + L_FLUSHED), last = get_le64(b + L_LAST);
        if (flushed > fsize) {
            vbd_error_setf(err, EINVAL, "Image '%s': VHDX log entry %llu expects a file of %llu bytes, it has %llu: truncated image",
                           name, (unsigned long long)ents[i].seq, (unsigned long long)flushed, (unsigned long long)fsize);
            rc = -EINVAL;
            goto out;
        }
        if (last > limit && last <= fsize + VHDX_BLOCK_MAX + MiB)
            limit = last;
    }
    for (uint32_t i = 0; i < nents; i++) {
        const uint8_t *b = ents[i].buf;
        uint32_t count = get_le32(b + L_DESC_COUNT);
        for (uint32_t j = 0; j < count; j++) {
            const uint8_t *d = b + L_HDR_SIZE + (uint64_t)j * D_SIZE;
            uint64_t off = get_le64(d + 16);
            uint64_t len = memcmp(d, "zero", 4) ? VHDX_LOG_SECTOR : get_le64(d + 8);
            bool in_log = off < s->log_offset + s->log_length && off + len > s->log_offset;
            if (off < VHDX_HEADER_SECTION || off > limit || len > limit - off || in_log) {
                vbd_error_setf(err, EINVAL,
                               "Image '%s': VHDX log entry %llu writes %llu bytes at %llu, outside the file's data (file size %llu)",
                               name, (unsigned long long)ents[i].seq, (unsigned long long)len, (unsigned long long)off,
                               (unsigned long long)fsize);
                rc = -EINVAL;
                goto out;
            }
        }
    }
    uint8_t *sector = vbd_alloc_aligned(4096, VHDX_LOG_SECTOR);
    for (uint32_t i = 0; i < nents && rc == 0; i++) {
        const uint8_t *b = ents[i].buf;
        uint32_t count = get_le32(b + L_DESC_COUNT), dsect = desc_sectors(count), ndata = 0;
        for (uint32_t j = 0; j < count && rc == 0; j++) {
            const uint8_t *d = b + L_HDR_SIZE + (uint64_t)j * D_SIZE;
            uint64_t off = get_le64(d + 16);
            if (!memcmp(d, "zero", 4)) {
                rc = vbd_node_co_pwrite_zeroes(n->file, off, get_le64(d + 8), 0);
                continue;
            }
            const uint8_t *ds = b + (uint64_t)(dsect + ndata++) * VHDX_LOG_SECTOR;
            memcpy(sector, d + 8, 8);              /* leading bytes */
            memcpy(sector + 8, ds + 8, 4084);
            memcpy(sector + 4092, d + 4, 4);       /* trailing bytes */
            rc = vbd_node_co_pwrite(n->file, off, sector, VHDX_LOG_SECTOR, 0);
        }
    }
    free(sector);
    if (rc == 0 && limit > vbd_node_size(n->file))
        rc = vbd_node_co_truncate(n->file, (limit + MiB - 1) & ~(MiB - 1), false, VBD_PREALLOC_OFF, NULL);
    if (rc == 0)
        rc = vbd_node_co_flush(n->file);
    if (rc == 0)
        rc = update_headers(n, s, false, zero_guid);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Image '%s': could not replay the VHDX log: %s", name, strerror(-rc));
        goto out;
    }
    s->log_seq = ents[nents - 1].seq + 1;
    s->log_replayed = true;
out:
    free_entries(ents, nents);
    return rc;
}

/* Set BAT entry idx to entry through the log (see the top of the file):
 * the in-memory entry changes only once the change is on disk, so that
 * other requests see the block only when it is there for good. */
static int log_write_bat_entry(struct vbd_node *n, struct vhdx_state *s, uint64_t idx, uint64_t entry)
{
    uint64_t sector_index = idx * 8 / VHDX_LOG_SECTOR;
    uint8_t log_guid[16];
    int rc = 0;
    guid_generate(log_guid);
    rc = update_headers(n, s, false, log_guid);
    if (rc < 0)
        return rc;
    uint8_t *e = vbd_alloc_aligned(4096, 2 * VHDX_LOG_SECTOR);
    memset(e, 0, 2 * VHDX_LOG_SECTOR);
    uint8_t *data = e + VHDX_LOG_SECTOR;
    uint8_t *sec = vbd_alloc_aligned(4096, VHDX_LOG_SECTOR);
    const uint64_t *src = s->bat + sector_index * (VHDX_LOG_SECTOR / 8);
    for (unsigned i = 0; i < VHDX_LOG_SECTOR / 8; i++)
        put_le64(sec + i * 8, src[i]);
    put_le64(sec + idx * 8 % VHDX_LOG_SECTOR, entry);
    uint64_t seq = s->log_seq ? s->log_seq : 1;
    uint64_t fsize = vbd_node_size(n->file);
    uint64_t file_off = s->bat_offset + sector_index * VHDX_LOG_SECTOR;
    memcpy(e, "loge", 4);
    put_le32(e + L_ENTRY_LENGTH, 2 * VHDX_LOG_SECTOR);
    put_le32(e + L_TAIL, 0);
    put_le64(e + L_SEQ, seq);
    put_le32(e + L_DESC_COUNT, 1);
    memcpy(e + L_LOG_GUID, log_guid, 16);
    put_le64(e + L_FLUSHED, fsize);
    put_le64(e + L_LAST, fsize);
    uint8_t *d = e + L_HDR_SIZE;
    memcpy(d, "desc", 4);
    memcpy(d + 4, sec + 4092, 4);
    memcpy(d + 8, sec, 8);
    put_le64(d + 16, file_off);
    put_le64(d + 24, seq);
    memcpy(data, "data", 4);
    put_le32(data + 4, (uint32_t)(seq >> 32));
    memcpy(data + 8, sec + 8, 4084);
    put_le32(data + 4092, (uint32_t)seq);
    vhdx_set_crc(e, 2 * VHDX_LOG_SECTOR, L_CHECKSUM);
    rc = vbd_node_co_pwrite(n->file, s->log_offset, e, 2 * VHDX_LOG_SECTOR, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(n->file);
    if (rc == 0)
        rc = vbd_node_co_pwrite(n->file, file_off, sec, VHDX_LOG_SECTOR, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(n->file);
    if (rc == 0) {
        s->bat[idx] = entry; /* committed: the replay of the log would write it too */
        rc = update_headers(n, s, false, zero_guid);
    }
    s->log_seq = seq + 1;
    free(e);
    free(sec);
    return rc;
}

/* ---------- open ---------- */

static int bad(struct vbd_error **err, int code, const char *name, const char *fmt, unsigned long long v)
{
    char what[256];
    snprintf(what, sizeof(what), fmt, v);
    vbd_error_setf(err, code, "Image '%s': %s", name, what);
    return -code;
}

struct region {
    uint64_t start, end;
};

static bool overlaps(const struct region *r, int nr, uint64_t start, uint64_t len)
{
    for (int i = 0; i < nr; i++)
        if (start < r[i].end && start + len > r[i].start)
            return true;
    return false;
}

static int read_region_table(struct vbd_node *n, struct vhdx_state *s, struct region *regs, int *nregs,
                             struct vbd_error **err)
{
    const char *name = n->file->filename;
    uint8_t *rt = vbd_alloc_aligned(4096, VHDX_RT_SIZE);
    int rc = -EINVAL;
    bool ok = false;
    for (int t = 0; t < 2 && !ok; t++) { /* the second copy if the first is damaged */
        rc = vbd_node_co_pread(n->file, t ? VHDX_RT2_OFF : VHDX_RT1_OFF, rt, VHDX_RT_SIZE);
        if (rc < 0) {
            vbd_error_setf(err, -rc, "Could not read the VHDX region table of '%s': %s", name, strerror(-rc));
            goto out;
        }
        ok = !memcmp(rt, "regi", 4) && get_le32(rt + 4) == vhdx_crc(rt, VHDX_RT_SIZE, 4);
    }
    rc = -EINVAL;
    if (!ok) {
        vbd_error_setf(err, EINVAL, "Image '%s': no valid VHDX region table (bad signature or checksum)", name);
        goto out;
    }
    uint32_t count = get_le32(rt + 8);
    if (count > 2047) {
        bad(err, EINVAL, name, "VHDX region table has %llu entries (at most 2047)", count);
        goto out;
    }
    bool have_bat = false, have_meta = false;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *e = rt + 16 + i * 32;
        uint64_t off = get_le64(e + 16);
        uint32_t len = get_le32(e + 24), bits = get_le32(e + 28);
        bool is_bat = !memcmp(e, bat_guid, 16), is_meta = !memcmp(e, metadata_guid, 16);
        if (!is_bat && !is_meta) {
            if (bits & 1) {
                vbd_error_setf(err, ENOTSUP, "Image '%s': unsupported required VHDX region", name);
                rc = -ENOTSUP;
                goto out;
            }
            continue;
        }
        if ((is_bat && have_bat) || (is_meta && have_meta)) {
            vbd_error_setf(err, EINVAL, "Image '%s': duplicate VHDX %s region", name, is_bat ? "BAT" : "metadata");
            goto out;
        }
        if (off % MiB || len % MiB || !len) {
            vbd_error_setf(err, EINVAL, "Image '%s': VHDX %s region (offset %llu, length %u) is not aligned to 1 MiB",
                           name, is_bat ? "BAT" : "metadata", (unsigned long long)off, len);
            goto out;
        }
        if (off > vbd_node_size(n->file) || len > vbd_node_size(n->file) - off) {
            vbd_error_setf(err, EINVAL, "Image '%s': VHDX %s region (offset %llu, length %u) is past the end of the file",
                           name, is_bat ? "BAT" : "metadata", (unsigned long long)off, len);
            goto out;
        }
        if (overlaps(regs, *nregs, off, len)) {
            vbd_error_setf(err, EINVAL, "Image '%s': VHDX %s region (offset %llu, length %u) overlaps another region",
                           name, is_bat ? "BAT" : "metadata", (unsigned long long)off, len);
            goto out;
        }
        regs[*nregs].start = off;
        regs[*nregs].end = off + len;
        (*nregs)++;
        if (is_bat) {
            have_bat = true;
            s->bat_offset = off;
            s->bat_length = len;
        } else {
            have_meta = true;
            s->meta_offset = off;
            s->meta_length = len;
        }
    }
    if (!have_bat || !have_meta) {
        vbd_error_setf(err, EINVAL, "Image '%s': the VHDX region table has no %s region", name, have_bat ? "metadata" : "BAT");
        goto out;
    }
    rc = 0;
out:
    free(rt);
    return rc;
}

/* UTF-16LE (BMP) to UTF-8, NUL-terminated; false if it does not fit. */
static bool utf16_to_utf8(const uint8_t *in, size_t in_len, char *out, size_t out_size)
{
    size_t o = 0;
    for (size_t i = 0; i + 1 < in_len; i += 2) {
        uint16_t c = get_le16(in + i);
        uint8_t b[3];
        size_t nb;
        if (c < 0x80) {
            b[0] = (uint8_t)c;
            nb = 1;
        } else if (c < 0x800) {
            b[0] = (uint8_t)(0xc0 | c >> 6);
            b[1] = (uint8_t)(0x80 | (c & 0x3f));
            nb = 2;
        } else {
            b[0] = (uint8_t)(0xe0 | c >> 12);
            b[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3f));
            b[2] = (uint8_t)(0x80 | (c & 0x3f));
            nb = 3;
        }
        if (!c || o + nb >= out_size)
            return false;
        memcpy(out + o, b, nb);
        o += nb;
    }
    out[o] = 0;
    return true;
}

/* The parent's path from the VHDX parent locator: relative_path (Windows
 * separators), else the last component of absolute_win32_path, looked up
 * beside the image as vbd_open_backing does with relative names. */
static int read_parent_locator(struct vbd_node *n, uint64_t off, uint32_t len, struct vbd_error **err)
{
    const char *name = n->file->filename;
    if (len < 20 || len > 64 * KiB) {
        vbd_error_setf(err, EINVAL, "Image '%s': VHDX parent locator of %u bytes", name, len);
        return -EINVAL;
    }
    uint8_t *l = malloc(len);
    if (!l)
        return -ENOMEM;
    int rc = vbd_node_co_pread(n->file, off, l, len);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Could not read the VHDX parent locator of '%s': %s", name, strerror(-rc));
        free(l);
        return rc;
    }
    uint16_t count = get_le16(l + 18);
    char rel[1024] = "", abs_path[1024] = "";
    rc = -EINVAL;
    if (20 + (uint64_t)count * 12 > len) {
        vbd_error_setf(err, EINVAL, "Image '%s': VHDX parent locator has %u entries, more than fit", name, count);
        goto out;
    }
    for (uint16_t i = 0; i < count; i++) {
        const uint8_t *e = l + 20 + i * 12;
        uint32_t ko = get_le32(e), vo = get_le32(e + 4);
        uint16_t kl = get_le16(e + 8), vl = get_le16(e + 10);
        if (ko > len || kl > len - ko || vo > len || vl > len - vo) {
            vbd_error_setf(err, EINVAL, "Image '%s': VHDX parent locator entry %u is outside the locator", name, i);
            goto out;
        }
        char key[64], val[1024];
        if (!utf16_to_utf8(l + ko, kl, key, sizeof(key)) || !utf16_to_utf8(l + vo, vl, val, sizeof(val)))
            continue;
        if (!strcmp(key, "relative_path"))
            memcpy(rel, val, sizeof(rel));
        else if (!strcmp(key, "absolute_win32_path"))
            memcpy(abs_path, val, sizeof(abs_path));
    }
    const char *path = rel;
    if (!*rel && *abs_path) {
        char *base = strrchr(abs_path, '\\');
        path = base ? base + 1 : abs_path;
    }
    if (!*path) {
        vbd_error_setf(err, EINVAL, "Image '%s': the VHDX parent locator names no parent path", name);
        goto out;
    }
    char *d = n->backing_file;
    const char *p = path;
    if (!strncmp(p, ".\\", 2))
        p += 2;
    for (; *p && d < n->backing_file + sizeof(n->backing_file) - 1; p++)
        *d++ = *p == '\\' ? '/' : *p;
    *d = 0;
    snprintf(n->backing_format, sizeof(n->backing_format), "vhdx");
    rc = 0;
out:
    free(l);
    return rc;
}

static int read_metadata(struct vbd_node *n, struct vhdx_state *s, struct vbd_error **err)
{
    const char *name = n->file->filename;
    if (s->meta_length < VHDX_META_TABLE_SIZE)
        return bad(err, EINVAL, name, "VHDX metadata region of %llu bytes is too small", s->meta_length);
    uint8_t *m = vbd_alloc_aligned(4096, VHDX_META_TABLE_SIZE);
    int rc = vbd_node_co_pread(n->file, s->meta_offset, m, VHDX_META_TABLE_SIZE);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Could not read the VHDX metadata of '%s': %s", name, strerror(-rc));
        goto out;
    }
    rc = -EINVAL;
    if (memcmp(m, "metadata", 8)) {
        vbd_error_setf(err, EINVAL, "Image '%s': no 'metadata' signature in the VHDX metadata region", name);
        goto out;
    }
    uint16_t count = get_le16(m + 10);
    if ((uint64_t)count * 32 > VHDX_META_TABLE_SIZE - 32) {
        bad(err, EINVAL, name, "VHDX metadata table has %llu entries, more than fit", count);
        goto out;
    }
    static const uint8_t *const guids[] = {file_param_guid, vsize_guid, page83_guid, lsec_guid, psec_guid, parent_loc_guid};
    static const uint32_t min_len[] = {8, 8, 16, 4, 4, 0};
    static const char *const names[] = {"file parameters", "virtual disk size", "page 83 data", "logical sector size",
                                        "physical sector size", "parent locator"};
    uint64_t item_off[6];
    bool have[6] = {false};
    for (uint16_t i = 0; i < count; i++) {
        const uint8_t *e = m + 32 + i * 32;
        uint32_t off = get_le32(e + 16), len = get_le32(e + 20), flags = get_le32(e + 24);
        int k;
        for (k = 0; k < 6; k++)
            if (!memcmp(e, guids[k], 16))
                break;
        if (k == 6) {
            if (flags & 4) {
                vbd_error_setf(err, ENOTSUP, "Image '%s': unsupported required VHDX metadata item", name);
                rc = -ENOTSUP;
                goto out;
            }
            continue;
        }
        if (have[k]) {
            vbd_error_setf(err, EINVAL, "Image '%s': duplicate VHDX metadata item '%s'", name, names[k]);
            goto out;
        }
        if (len < min_len[k] || off > s->meta_length || len > s->meta_length - off) {
            vbd_error_setf(err, EINVAL, "Image '%s': VHDX metadata item '%s' (offset %u, length %u) is outside the metadata region",
                           name, names[k], off, len);
            goto out;
        }
        have[k] = true;
        item_off[k] = s->meta_offset + off;
    }
    for (int k = 0; k < 5; k++)
        if (!have[k]) {
            vbd_error_setf(err, EINVAL, "Image '%s': required VHDX metadata item '%s' is missing", name, names[k]);
            goto out;
        }
    uint8_t v[16];
    if ((rc = vbd_node_co_pread(n->file, item_off[0], v, 8)) < 0)
        goto io;
    s->block_size = get_le32(v);
    uint32_t pflags = get_le32(v + 4);
    s->fixed = pflags & 1;
    if (pflags & 2) {
        if (!have[5]) {
            vbd_error_setf(err, EINVAL, "Image '%s': a differencing VHDX image without a parent locator", name);
            rc = -EINVAL;
            goto out;
        }
        if (s->rw) {
            vbd_error_setf(err, ENOTSUP, "Image '%s': differencing VHDX images can only be opened read-only", name);
            rc = -ENOTSUP;
            goto out;
        }
        s->diff = true;
        for (uint16_t i = 0; i < count; i++) /* the locator's length, checked above */
            if (!memcmp(m + 32 + i * 32, parent_loc_guid, 16))
                rc = read_parent_locator(n, item_off[5], get_le32(m + 32 + i * 32 + 20), err);
        if (rc < 0)
            goto out;
    }
    if ((rc = vbd_node_co_pread(n->file, item_off[1], v, 8)) < 0)
        goto io;
    s->vsize = get_le64(v);
    if ((rc = vbd_node_co_pread(n->file, item_off[3], v, 4)) < 0)
        goto io;
    s->lsec = get_le32(v);
    if ((rc = vbd_node_co_pread(n->file, item_off[4], v, 4)) < 0)
        goto io;
    s->psec = get_le32(v);
    rc = -EINVAL;
    if (s->block_size < VHDX_BLOCK_MIN || s->block_size > VHDX_BLOCK_MAX || (s->block_size & (s->block_size - 1))) {
        bad(err, EINVAL, name, "invalid VHDX block size %llu", s->block_size);
        goto out;
    }
    if (s->lsec != 512 && s->lsec != 4096) {
        bad(err, EINVAL, name, "invalid VHDX logical sector size %llu", s->lsec);
        goto out;
    }
    if (s->psec != 512 && s->psec != 4096) {
        bad(err, EINVAL, name, "invalid VHDX physical sector size %llu", s->psec);
        goto out;
    }
    if (s->vsize > VHDX_MAX_SIZE || s->vsize % s->lsec) {
        bad(err, EINVAL, name, "invalid VHDX virtual disk size %llu", (unsigned long long)s->vsize);
        goto out;
    }
    rc = 0;
    goto out;
io:
    vbd_error_setf(err, -rc, "Could not read the VHDX metadata of '%s': %s", name, strerror(-rc));
out:
    free(m);
    return rc;
}

static int cmp_region(const void *a, const void *b)
{
    const struct region *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Blocks past the end of the file (QEMU's message), or overlapping the
 * metadata or each other. report: count them (check), else fail at the
 * first. */
static int check_bat(struct vbd_node *n, struct vhdx_state *s, const struct region *regs, int nregs, int64_t *errors,
                     struct vbd_error **err)
{
    uint64_t fsize = vbd_node_size(n->file);
    struct region *blocks = malloc(sizeof(*blocks) * (s->data_blocks ? s->data_blocks : 1));
    uint64_t nb = 0;
    int rc = 0;
    if (!blocks) {
        vbd_error_setf(err, ENOMEM, "Image '%s': out of memory", n->file->filename);
        return -ENOMEM;
    }
    for (uint64_t i = 0; i < s->data_blocks; i++) {
        uint64_t e = s->bat[bat_index(s, i)];
        if ((e & BAT_STATE_MASK) != PB_FULLY_PRESENT && (e & BAT_STATE_MASK) != PB_PARTIALLY_PRESENT)
            continue;
        uint64_t off = e & BAT_OFFSET_MASK;
        /* the last block may end with the disk: QEMU once made such images */
        uint64_t len = s->vsize - i * s->block_size < s->block_size ? s->vsize - i * s->block_size : s->block_size;
        const char *why = NULL;
        char msg[256];
        if (off > fsize || len > fsize - off) {
            snprintf(msg, sizeof(msg), "VHDX BAT entry %llu start offset %llu points after end of file (%llu). Image has probably been truncated.",
                     (unsigned long long)i, (unsigned long long)off, (unsigned long long)fsize);
            why = msg;
        } else if (overlaps(regs, nregs, off, s->block_size)) {
            snprintf(msg, sizeof(msg), "VHDX BAT entry %llu offset %llu overlaps the image's metadata", (unsigned long long)i,
                     (unsigned long long)off);
            why = msg;
        } else {
            blocks[nb].start = off;
            blocks[nb++].end = off + len;
        }
        if (why) {
            if (!errors) {
                vbd_error_setf(err, EINVAL, "Image '%s': %s", n->file->filename, why);
                rc = -EINVAL;
                goto out;
            }
            vbd_error_report("%s", why);
            (*errors)++;
        }
    }
    for (uint64_t c = 0; s->diff && c < s->bat_entries / (s->chunk_ratio + 1); c++) {
        uint64_t e = s->bat[c * (s->chunk_ratio + 1) + s->chunk_ratio];
        if ((e & BAT_STATE_MASK) != PB_FULLY_PRESENT) /* SB_BLOCK_PRESENT has the same value */
            continue;
        uint64_t off = e & BAT_OFFSET_MASK;
        char msg[256] = "";
        if (off > fsize || MiB > fsize - off)
            snprintf(msg, sizeof(msg), "VHDX sector bitmap block %llu at offset %llu points after end of file (%llu)",
                     (unsigned long long)c, (unsigned long long)off, (unsigned long long)fsize);
        else if (overlaps(regs, nregs, off, MiB))
            snprintf(msg, sizeof(msg), "VHDX sector bitmap block %llu at offset %llu overlaps the image's metadata",
                     (unsigned long long)c, (unsigned long long)off);
        if (!*msg) {
            struct region *b = realloc(blocks, sizeof(*blocks) * (nb + 1));
            if (!b) {
                rc = -ENOMEM;
                goto out;
            }
            blocks = b;
            blocks[nb].start = off;
            blocks[nb++].end = off + MiB;
            continue;
        }
        if (!errors) {
            vbd_error_setf(err, EINVAL, "Image '%s': %s", n->file->filename, msg);
            rc = -EINVAL;
            goto out;
        }
        vbd_error_report("%s", msg);
        (*errors)++;
    }
    qsort(blocks, nb, sizeof(*blocks), cmp_region);
    for (uint64_t i = 1; i < nb; i++)
        if (blocks[i].start < blocks[i - 1].end) {
            char msg[256];
            snprintf(msg, sizeof(msg), "VHDX BAT: blocks at offsets %llu and %llu overlap",
                     (unsigned long long)blocks[i - 1].start, (unsigned long long)blocks[i].start);
            if (!errors) {
                vbd_error_setf(err, EINVAL, "Image '%s': %s", n->file->filename, msg);
                rc = -EINVAL;
                goto out;
            }
            vbd_error_report("%s", msg);
            (*errors)++;
        }
out:
    free(blocks);
    return rc;
}

static int vhdx_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    return len >= 8 && !memcmp(buf, "vhdxfile", 8) ? 100 : 0;
}

static int vhdx_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct vhdx_state *s = n->opaque;
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file)
        return -EINVAL;
    const char *name = n->file->filename;
    s->rw = flags & VBD_OPEN_RDWR;
    uint8_t sig[8];
    uint64_t fsize = vbd_node_size(n->file);
    if (fsize < VHDX_HEADER_SECTION)
        return bad(err, EINVAL, name, "not a VHDX image: %llu bytes, smaller than its 1 MiB header section", fsize);
    int rc = vbd_node_co_pread(n->file, 0, sig, 8);
    if (rc < 0) {
        vbd_error_setf(err, -rc, "Could not read '%s': %s", name, strerror(-rc));
        return rc;
    }
    if (memcmp(sig, "vhdxfile", 8)) {
        vbd_error_setf(err, EINVAL, "Image '%s' is not a VHDX image: no 'vhdxfile' signature", name);
        return -EINVAL;
    }
    guid_generate(s->session_guid);
    if ((rc = read_headers(n, s, err)) < 0)
        return rc;
    if ((rc = log_replay(n, s, err)) < 0)
        return rc;
    fsize = vbd_node_size(n->file);
    struct region regs[4] = {{0, VHDX_HEADER_SECTION}};
    int nregs = 1;
    if (s->log_length) {
        if (overlaps(regs, nregs, s->log_offset, s->log_length))
            return bad(err, EINVAL, name, "the VHDX log overlaps the header section (offset %llu)", s->log_offset);
        regs[nregs].start = s->log_offset;
        regs[nregs++].end = s->log_offset + s->log_length;
    }
    if ((rc = read_region_table(n, s, regs, &nregs, err)) < 0)
        return rc;
    if ((rc = read_metadata(n, s, err)) < 0)
        return rc;
    s->chunk_ratio = VHDX_MAX_SECTORS_PER_BLOCK * s->lsec / s->block_size;
    s->data_blocks = (s->vsize + s->block_size - 1) / s->block_size;
    if (s->diff) /* every chunk ends with its sector bitmap entry */
        s->bat_entries = (s->data_blocks + s->chunk_ratio - 1) / s->chunk_ratio * (s->chunk_ratio + 1);
    else
        s->bat_entries = s->data_blocks ? s->data_blocks + (s->data_blocks - 1) / s->chunk_ratio : 0;
    if (s->bat_entries > s->bat_length / 8)
        return bad(err, EINVAL, name, "the VHDX BAT region is too small for %llu entries", s->bat_entries);
    s->bat = malloc(s->bat_length); /* a multiple of 1 MiB, so whole log sectors */
    if (!s->bat) {
        vbd_error_setf(err, ENOMEM, "Image '%s': cannot allocate the VHDX BAT", name);
        return -ENOMEM;
    }
    rc = vbd_node_co_pread(n->file, s->bat_offset, s->bat, s->bat_length);
    if (rc < 0) {
        vhdx_free(s);
        vbd_error_setf(err, -rc, "Could not read the VHDX BAT of '%s': %s", name, strerror(-rc));
        return rc;
    }
    for (uint64_t i = 0; i < s->bat_length / 8; i++)
        s->bat[i] = le64toh(s->bat[i]);
    if (!(flags & VBD_OPEN_CHECK) && (rc = check_bat(n, s, regs, nregs, NULL, err)) < 0) {
        vhdx_free(s);
        return rc;
    }
    s->alloc_end = fsize;
    for (int i = 0; i < nregs; i++)
        if (regs[i].end > s->alloc_end)
            s->alloc_end = regs[i].end;
    for (uint64_t i = 0; i < s->data_blocks; i++) {
        uint64_t e = s->bat[bat_index(s, i)];
        if ((e & BAT_STATE_MASK) == PB_FULLY_PRESENT && (e & BAT_OFFSET_MASK) + s->block_size > s->alloc_end)
            s->alloc_end = (e & BAT_OFFSET_MASK) + s->block_size;
    }
    if (s->rw) {
        if (s->log_offset > fsize || s->log_length > fsize - s->log_offset) {
            vhdx_free(s);
            return bad(err, EINVAL, name, "the VHDX log (offset %llu) is past the end of the file", s->log_offset);
        }
        /* a new file_write_guid before any other write, as the spec asks */
        rc = update_headers(n, s, false, NULL);
        if (rc < 0) {
            vhdx_free(s);
            vbd_error_setf(err, -rc, "Could not write the VHDX headers of '%s': %s", name, strerror(-rc));
            return rc;
        }
    }
    n->size = s->vsize;
    n->bl.request_alignment = 1;
    n->bl.min_mem_alignment = n->file->bl.min_mem_alignment;
    n->bl.opt_transfer = s->block_size;
    if (s->diff && (rc = vbd_open_backing(n, opts, flags, err)) < 0) {
        vhdx_free(s);
        return rc;
    }
    return 0;
}

static void vhdx_close(struct vbd_node *n)
{
    vhdx_free(n->opaque);
}

/* ---------- I/O ---------- */

static uint64_t entry_of(const struct vhdx_state *s, uint64_t off, uint64_t *in_block, uint64_t *avail)
{
    uint64_t blk = off / s->block_size;
    *in_block = off % s->block_size;
    *avail = s->block_size - *in_block;
    return s->bat[bat_index(s, blk)];
}

/* The parent's bytes (zeroes past its end, or without one). */
static int read_parent(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff)
{
    uint64_t psize = n->backing ? vbd_node_size(n->backing) : 0;
    uint64_t have = off >= psize ? 0 : psize - off < bytes ? psize - off : bytes;
    if (have) {
        int rc = vbd_node_co_preadv(n->backing, off, have, q, qoff, 0);
        if (rc < 0)
            return rc;
    }
    if (have < bytes)
        vbd_iov_memset(q->iov, q->niov, qoff + have, 0, bytes - have);
    return 0;
}

/* [off, off+len) of a PARTIALLY_PRESENT block at host offset block_off:
 * runs of sectors whose bitmap bit is set come from the file, the others
 * from the parent. Bit k (LSB first) of the chunk's bitmap is its
 * logical sector k. */
static int read_partial(struct vbd_node *n, uint64_t off, uint64_t in, uint64_t len, uint64_t block_off,
                        struct vbd_qiov *q, size_t qoff)
{
    struct vhdx_state *s = n->opaque;
    uint64_t blk = off / s->block_size, chunk = blk / s->chunk_ratio;
    uint64_t sbe = s->bat[chunk * (s->chunk_ratio + 1) + s->chunk_ratio];
    if ((sbe & BAT_STATE_MASK) != PB_FULLY_PRESENT)
        return -EIO; /* a partial block without its sector bitmap */
    uint64_t start = (blk % s->chunk_ratio) * s->block_size + in; /* byte in the chunk */
    uint64_t first = start / s->lsec, last = (start + len - 1) / s->lsec;
    uint64_t nbytes = last / 8 - first / 8 + 1;
    uint8_t *bm = malloc(nbytes);
    if (!bm)
        return -ENOMEM;
    int rc = vbd_node_co_pread(n->file, (sbe & BAT_OFFSET_MASK) + first / 8, bm, nbytes);
    for (uint64_t done = 0; rc == 0 && done < len;) {
        uint64_t sec = (start + done) / s->lsec;
        bool bit = bm[sec / 8 - first / 8] >> (sec % 8) & 1;
        uint64_t run = (sec + 1) * s->lsec - (start + done);
        while (done + run < len) {
            uint64_t nx = (start + done + run) / s->lsec;
            if ((bool)(bm[nx / 8 - first / 8] >> (nx % 8) & 1) != bit)
                break;
            run += s->lsec;
        }
        if (done + run > len)
            run = len - done;
        rc = bit ? vbd_node_co_preadv(n->file, block_off + in + done, run, q, qoff + done, 0)
                 : read_parent(n, off + done, run, q, qoff + done);
        done += run;
    }
    free(bm);
    return rc;
}

/* In the partial block of off: whether its sector is this file's, and
 * *len cut to the run of sectors alike. */
static int partial_run(struct vbd_node *n, uint64_t off, uint64_t in, uint64_t *len, bool *mine)
{
    struct vhdx_state *s = n->opaque;
    uint64_t blk = off / s->block_size, chunk = blk / s->chunk_ratio;
    uint64_t sbe = s->bat[chunk * (s->chunk_ratio + 1) + s->chunk_ratio];
    if ((sbe & BAT_STATE_MASK) != PB_FULLY_PRESENT)
        return -EIO;
    uint64_t start = (blk % s->chunk_ratio) * s->block_size + in;
    uint64_t first = start / s->lsec, last = (start + *len - 1) / s->lsec;
    uint64_t nbytes = last / 8 - first / 8 + 1;
    uint8_t *bm = malloc(nbytes);
    if (!bm)
        return -ENOMEM;
    int rc = vbd_node_co_pread(n->file, (sbe & BAT_OFFSET_MASK) + first / 8, bm, nbytes);
    if (rc == 0) {
        *mine = bm[0] >> (first % 8) & 1;
        uint64_t sec = first + 1;
        while (sec <= last && (bool)(bm[sec / 8 - first / 8] >> (sec % 8) & 1) == *mine)
            sec++;
        if (sec <= last)
            *len = sec * s->lsec - start;
    }
    free(bm);
    return rc;
}

static int vhdx_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    struct vhdx_state *s = n->opaque;
    (void)flags;
    while (bytes) {
        uint64_t in, avail;
        uint64_t e = entry_of(s, off, &in, &avail);
        uint64_t len = avail < bytes ? avail : bytes;
        int rc = 0;
        switch (e & BAT_STATE_MASK) {
        case PB_FULLY_PRESENT:
            rc = vbd_node_co_preadv(n->file, (e & BAT_OFFSET_MASK) + in, len, q, qoff, 0);
            break;
        case PB_NOT_PRESENT:
        case PB_UNDEFINED:
        case PB_UNMAPPED:
        case PB_UNMAPPED_V095:
            if (s->diff) {
                rc = read_parent(n, off, len, q, qoff);
                break;
            }
            /* fall through */
        case PB_ZERO:
            vbd_iov_memset(q->iov, q->niov, qoff, 0, len);
            break;
        case PB_PARTIALLY_PRESENT:
            if (s->diff) {
                rc = read_partial(n, off, in, len, e & BAT_OFFSET_MASK, q, qoff);
                break;
            }
            return -EIO;
        default: /* 4 is no state */
            return -EIO;
        }
        if (rc < 0)
            return rc;
        off += len;
        qoff += len;
        bytes -= len;
    }
    return 0;
}

/* Allocate the block of off at the end of the file and write [off,
 * off+len) of the request into it, unless another request allocated it
 * meanwhile. The rest of a new block reads as zeroes (the file grows with
 * a hole), whatever the block's state was (ZERO, NOT_PRESENT, UNMAPPED). */
static int alloc_write(struct vbd_node *n, uint64_t off, uint64_t len, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    struct vhdx_state *s = n->opaque;
    vbd_co_mutex_lock(&s->lock);
    uint64_t in, avail;
    uint64_t e = entry_of(s, off, &in, &avail);
    int rc;
    if ((e & BAT_STATE_MASK) == PB_FULLY_PRESENT) {
        vbd_co_mutex_unlock(&s->lock);
        return vbd_node_co_pwritev(n->file, (e & BAT_OFFSET_MASK) + in, len, q, qoff, flags);
    }
    uint64_t idx = bat_index(s, off / s->block_size);
    uint64_t block = (s->alloc_end + MiB - 1) & ~(MiB - 1);
    uint64_t end = block + s->block_size;
    if (end > (1ull << 63)) {
        rc = -EFBIG;
        goto out;
    }
    if (vbd_node_size(n->file) < end) {
        rc = vbd_node_co_truncate(n->file, end, true, VBD_PREALLOC_OFF, NULL);
        if (rc < 0)
            goto out;
    }
    s->alloc_end = end; /* even on failure below: the space may hold half a block */
    rc = vbd_node_co_pwritev(n->file, block + in, len, q, qoff, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(n->file); /* the data before the BAT entry that makes it visible */
    if (rc < 0)
        goto out;
    rc = log_write_bat_entry(n, s, idx, block | PB_FULLY_PRESENT);
out:
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

/* The spec asks for a new data_write_guid before the first write a guest
 * can see. */
static int first_write(struct vbd_node *n, struct vhdx_state *s)
{
    int rc = 0;
    vbd_co_mutex_lock(&s->lock);
    if (!s->data_guid_done) {
        rc = update_headers(n, s, true, NULL);
        if (rc == 0)
            s->data_guid_done = true;
    }
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

static int vhdx_pwritev(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff, unsigned flags)
{
    struct vhdx_state *s = n->opaque;
    int rc;
    if (!s->data_guid_done && (rc = first_write(n, s)) < 0)
        return rc;
    while (bytes) {
        uint64_t in, avail;
        uint64_t e = entry_of(s, off, &in, &avail);
        uint64_t len = avail < bytes ? avail : bytes;
        switch (e & BAT_STATE_MASK) {
        case PB_FULLY_PRESENT:
            rc = vbd_node_co_pwritev(n->file, (e & BAT_OFFSET_MASK) + in, len, q, qoff, flags);
            break;
        case PB_NOT_PRESENT:
        case PB_UNDEFINED:
        case PB_ZERO:
        case PB_UNMAPPED:
        case PB_UNMAPPED_V095:
            rc = alloc_write(n, off, len, q, qoff, flags);
            break;
        default:
            return -EIO;
        }
        if (rc < 0)
            return rc;
        off += len;
        qoff += len;
        bytes -= len;
    }
    return 0;
}

static int vhdx_block_status(struct vbd_node *n, bool want_zero, uint64_t off, uint64_t bytes, uint64_t *pnum,
                             uint64_t *map, struct vbd_node **file)
{
    struct vhdx_state *s = n->opaque;
    (void)want_zero;
    *file = n->file;
    uint64_t in, avail;
    uint64_t e = entry_of(s, off, &in, &avail);
    unsigned st = e & BAT_STATE_MASK;
    if (st == 4 || (st == PB_PARTIALLY_PRESENT && !s->diff))
        return -EIO;
    if (s->diff && st != PB_FULLY_PRESENT) {
        /* one block at a time: absent blocks are the parent's; in a partial
         * one, the run of sectors alike in the bitmap */
        *pnum = avail < bytes ? avail : bytes;
        if (st == PB_ZERO)
            return VBD_BS_ZERO | VBD_BS_ALLOCATED;
        if (st != PB_PARTIALLY_PRESENT)
            return 0;
        bool mine;
        int rc = partial_run(n, off, in, pnum, &mine);
        if (rc < 0)
            return rc;
        if (!mine)
            return 0;
        *map = (e & BAT_OFFSET_MASK) + in;
        return VBD_BS_DATA | VBD_BS_OFFSET_VALID | VBD_BS_ALLOCATED;
    }
    bool data = st == PB_FULLY_PRESENT;
    uint64_t host = (e & BAT_OFFSET_MASK) + in;
    uint64_t done = 0;
    /* merge following blocks alike, contiguous in the file when data */
    for (;;) {
        uint64_t len = avail < bytes - done ? avail : bytes - done;
        done += len;
        if (done == bytes)
            break;
        uint64_t f = entry_of(s, off + done, &in, &avail);
        unsigned fst = f & BAT_STATE_MASK;
        if ((fst == PB_FULLY_PRESENT) != data || fst == 4 || fst == PB_PARTIALLY_PRESENT ||
            (data && (f & BAT_OFFSET_MASK) != host + done))
            break;
    }
    *pnum = done;
    if (!data)
        return VBD_BS_ZERO | (st == PB_ZERO ? VBD_BS_ALLOCATED : 0);
    *map = host;
    return VBD_BS_DATA | VBD_BS_OFFSET_VALID | VBD_BS_ALLOCATED;
}

static int vhdx_get_info(struct vbd_node *n, struct vbd_image_info *info, struct vbd_error **err)
{
    struct vhdx_state *s = n->opaque;
    (void)err;
    info->virtual_size = n->size;
    info->cluster_size = s->block_size;
    return 0;
}

/* QEMU's check: a log replayed at open counts as a fixed corruption;
 * blocks past the end of the file or overlapping are corruptions. */
static int vhdx_co_check(struct vbd_node *n, struct vbd_check_result *res, unsigned fix, struct vbd_error **err)
{
    struct vhdx_state *s = n->opaque;
    (void)fix;
    if (s->log_replayed)
        res->corruptions_fixed++;
    struct region regs[4] = {{0, VHDX_HEADER_SECTION},
                             {s->bat_offset, s->bat_offset + s->bat_length},
                             {s->meta_offset, s->meta_offset + s->meta_length},
                             {s->log_offset, s->log_offset + s->log_length}};
    int nregs = s->log_length ? 4 : 3;
    return check_bat(n, s, regs, nregs, &res->corruptions, err);
}

/* ---------- create ---------- */

static const struct vbd_opt_desc vhdx_create_opts[] = {
    {"size", VBD_OPT_SIZE, "Virtual disk size; max of 64TB.", NULL},
    {"log_size", VBD_OPT_SIZE, "Log size; min 1MB.", "1048576"},
    {"block_size", VBD_OPT_SIZE, "Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.", "0"},
    {"subformat", VBD_OPT_STRING, "VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'.", "dynamic"},
    {"block_state_zero", VBD_OPT_BOOL,
     "Force use of payload blocks of type 'ZERO'. Non-standard, but default.  Do not set to 'off' when using 'qemu-img convert' with subformat=dynamic.",
     "on"},
    {NULL, 0, NULL, NULL},
};

static const char *const vhdx_subformat_names[] = {"dynamic", "fixed", NULL};

struct vhdx_params {
    uint64_t size;
    uint64_t log_size, block_size;
    bool fixed, zero_blocks;
    /* layout */
    uint64_t bat_offset, bat_length, meta_offset, data_offset, bat_entries, data_blocks;
};

static int vhdx_parse_create(struct json_object *opts, const struct vbd_node *in, struct vhdx_params *p,
                             struct vbd_error **err)
{
    int sub = 0;
    p->log_size = MiB;
    p->block_size = 0;
    p->zero_blocks = true;
    if (vbd_opt_take_size(opts, "size", &p->size, err) < 0 || vbd_opt_take_size(opts, "log_size", &p->log_size, err) < 0 ||
        vbd_opt_take_size(opts, "block_size", &p->block_size, err) < 0 ||
        vbd_opt_take_enum(opts, "subformat", vhdx_subformat_names, &sub, err) < 0 ||
        vbd_opt_take_bool(opts, "block_state_zero", &p->zero_blocks, err) < 0)
        return -EINVAL;
    if (vbd_opts_check_empty(opts, "Block format 'vhdx'", err) < 0)
        return -EINVAL;
    p->fixed = sub == 1;
    if (in)
        p->size = in->size;
    p->size = (p->size + 511) & ~511ull;
    if (p->size > VHDX_MAX_SIZE) {
        vbd_error_setf(err, EINVAL, "Image size too large; max of 64TB");
        return -EINVAL;
    }
    /* qemu-img rounds the log up to 1 MiB first, then refuses an empty one */
    p->log_size = (p->log_size + MiB - 1) & ~(MiB - 1);
    if (p->log_size < MiB || p->log_size > UINT32_MAX) {
        vbd_error_setf(err, EINVAL, "Log size must be a multiple of 1 MB");
        return -EINVAL;
    }
    if (p->block_size == 0) {
        if (p->size > 32 * TiB)
            p->block_size = 64 * MiB;
        else if (p->size > 100 * 1024 * MiB)
            p->block_size = 32 * MiB;
        else if (p->size > 1024 * MiB)
            p->block_size = 16 * MiB;
        else
            p->block_size = 8 * MiB;
    }
    p->block_size = (p->block_size + MiB - 1) & ~(MiB - 1);
    if (p->block_size > VHDX_BLOCK_MAX)
        p->block_size = VHDX_BLOCK_MAX;
    if (p->block_size & (p->block_size - 1)) {
        vbd_error_setf(err, EINVAL, "Block size must be a power of two");
        return -EINVAL;
    }
    uint64_t chunk_ratio = VHDX_MAX_SECTORS_PER_BLOCK * 512 / p->block_size;
    p->data_blocks = (p->size + p->block_size - 1) / p->block_size;
    p->bat_entries = p->data_blocks ? p->data_blocks + (p->data_blocks - 1) / chunk_ratio : 0;
    p->bat_offset = VHDX_HEADER_SECTION + p->log_size;
    p->bat_length = (p->bat_entries * 8 + MiB - 1) & ~(MiB - 1);
    if (!p->bat_length)
        p->bat_length = MiB;
    p->meta_offset = p->bat_offset + p->bat_length;
    p->data_offset = p->bat_offset + p->bat_length + 5 * MiB; /* as QEMU: metadata, then room to grow */
    return 0;
}

static int vhdx_create(const char *filename, struct json_object *opts, struct vbd_error **err)
{
    struct vhdx_params p;
    int rc = vhdx_parse_create(opts, NULL, &p, err);
    if (rc < 0)
        return rc;
    rc = vbd_create_protocol(filename, 0, VBD_PREALLOC_OFF, err);
    if (rc < 0)
        return rc;
    struct vbd_node *f = vbd_open(filename, json_object_new_object(), VBD_OPEN_RDWR | VBD_OPEN_PROTOCOL, err);
    if (!f)
        return -EIO;
    uint64_t file_size = p.data_offset + (p.fixed ? p.size : 0);
    uint8_t *hs = calloc(1, VHDX_HEADER_SECTION); /* file id, headers, region tables */
    uint8_t *meta = calloc(1, VHDX_META_TABLE_SIZE + 64);
    uint8_t *bat = calloc(1, p.bat_length);
    if (!hs || !meta || !bat) {
        rc = -ENOMEM;
        goto out;
    }
    rc = vbd_node_co_truncate(f, file_size, true, VBD_PREALLOC_OFF, err);
    if (rc < 0)
        goto out;

    memcpy(hs, "vhdxfile", 8);
    static const char creator[] = "vbd";
    for (size_t i = 0; i < sizeof(creator) - 1; i++)
        put_le16(hs + 8 + 2 * i, (uint16_t)creator[i]);
    uint8_t *h = hs + VHDX_HEADER1_OFF;
    uint32_t seq;
    if (getrandom(&seq, sizeof(seq), 0) != sizeof(seq))
        seq = (uint32_t)rand();
    memcpy(h, "head", 4);
    put_le64(h + H_SEQ, seq);
    guid_generate(h + H_FILE_GUID);
    guid_generate(h + H_DATA_GUID);
    put_le16(h + H_LOG_VERSION, 0);
    put_le16(h + H_VERSION, 1);
    put_le32(h + H_LOG_LENGTH, (uint32_t)p.log_size);
    put_le64(h + H_LOG_OFFSET, VHDX_HEADER_SECTION);
    vhdx_set_crc(h, VHDX_HEADER_SIZE, 4);
    uint8_t *h2 = hs + VHDX_HEADER2_OFF;
    memcpy(h2, h, VHDX_HEADER_SIZE);
    put_le64(h2 + H_SEQ, (uint64_t)seq + 1);
    vhdx_set_crc(h2, VHDX_HEADER_SIZE, 4);
    uint8_t *rt = hs + VHDX_RT1_OFF;
    memcpy(rt, "regi", 4);
    put_le32(rt + 8, 2);
    memcpy(rt + 16, bat_guid, 16);
    put_le64(rt + 32, p.bat_offset);
    put_le32(rt + 40, (uint32_t)p.bat_length);
    memcpy(rt + 48, metadata_guid, 16);
    put_le64(rt + 64, p.meta_offset);
    put_le32(rt + 72, (uint32_t)MiB);
    vhdx_set_crc(rt, VHDX_RT_SIZE, 4);
    memcpy(hs + VHDX_RT2_OFF, rt, VHDX_RT_SIZE);

    memcpy(meta, "metadata", 8);
    put_le16(meta + 10, 5);
    static const uint8_t *const guids[5] = {file_param_guid, vsize_guid, page83_guid, lsec_guid, psec_guid};
    static const uint32_t lens[5] = {8, 8, 16, 4, 4};
    static const uint32_t flags[5] = {4, 6, 6, 6, 6}; /* required (and virtual disk) */
    uint32_t item = VHDX_META_TABLE_SIZE;
    for (int i = 0; i < 5; i++) {
        uint8_t *e = meta + 32 + 32 * i;
        memcpy(e, guids[i], 16);
        put_le32(e + 16, item);
        put_le32(e + 20, lens[i]);
        put_le32(e + 24, flags[i]);
        item += lens[i];
    }
    uint8_t *items = meta + VHDX_META_TABLE_SIZE;
    put_le32(items, (uint32_t)p.block_size);
    put_le32(items + 4, p.fixed ? 1 : 0);
    put_le64(items + 8, p.size);
    guid_generate(items + 16);
    put_le32(items + 32, 512);
    put_le32(items + 36, 512);

    /* QEMU's BAT: ZERO blocks with block_state_zero (even when fixed),
     * else a fixed image's blocks laid out after the metadata, else
     * NOT_PRESENT */
    uint64_t chunk_ratio = VHDX_MAX_SECTORS_PER_BLOCK * 512 / p.block_size;
    for (uint64_t b = 0; b < p.data_blocks; b++) {
        uint64_t e = PB_NOT_PRESENT;
        if (p.zero_blocks)
            e = PB_ZERO;
        else if (p.fixed)
            e = ((p.data_offset + b * p.block_size + MiB - 1) & ~(MiB - 1)) | PB_FULLY_PRESENT;
        put_le64(bat + (b + b / chunk_ratio) * 8, e);
    }
    rc = vbd_node_co_pwrite(f, 0, hs, VHDX_HEADER_SECTION, 0);
    if (rc == 0)
        rc = vbd_node_co_pwrite(f, p.bat_offset, bat, p.bat_length, 0);
    if (rc == 0)
        rc = vbd_node_co_pwrite(f, p.meta_offset, meta, VHDX_META_TABLE_SIZE + 64, 0);
    if (rc == 0)
        rc = vbd_node_co_flush(f);
out:
    if (rc < 0 && !(err && *err))
        vbd_error_setf(err, -rc, "Could not create the VHDX image '%s': %s", filename, strerror(-rc));
    free(hs);
    free(meta);
    free(bat);
    vbd_node_unref(f);
    return rc < 0 ? rc : 0;
}

/* qemu-img 7.2 cannot measure vhdx; this gives what vbd-img convert
 * writes: the metadata QEMU's layout reserves, plus the blocks holding
 * data (all of them when fixed). */
static int vhdx_measure(struct json_object *opts, struct vbd_node *in, uint64_t *required, uint64_t *fully_allocated,
                        struct vbd_error **err)
{
    struct vhdx_params p;
    int rc = vhdx_parse_create(opts, in, &p, err);
    if (rc < 0)
        return rc;
    uint64_t blocks_bytes = p.data_blocks * p.block_size;
    *fully_allocated = p.data_offset + blocks_bytes;
    if (p.fixed) {
        *required = *fully_allocated;
        return 0;
    }
    *required = p.data_offset;
    if (!in)
        return 0;
    /* a block is written when any of it holds data */
    for (uint64_t b = 0; b < p.data_blocks; b++) {
        uint64_t off = b * p.block_size, end = off + p.block_size < in->size ? off + p.block_size : in->size;
        while (off < end) {
            uint64_t pnum = 0, map;
            struct vbd_node *file;
            int depth;
            int st = vbd_node_co_block_status_above(in, NULL, true, off, end - off, &pnum, &map, &file, &depth);
            if (st < 0) {
                vbd_error_setf(err, -st, "Could not measure: block status failed: %s", strerror(-st));
                return st;
            }
            if (!(st & VBD_BS_ZERO) && (st & (VBD_BS_DATA | VBD_BS_ALLOCATED))) {
                *required += p.block_size;
                break;
            }
            off += pnum;
        }
    }
    return 0;
}

static const struct vbd_driver vhdx_driver = {
    .name = "vhdx",
    .kind = VBD_DRV_FORMAT,
    .state_size = sizeof(struct vhdx_state),
    .probe = vhdx_probe,
    .open = vhdx_open,
    .close = vhdx_close,
    .co_preadv = vhdx_preadv,
    .co_pwritev = vhdx_pwritev,
    .co_block_status = vhdx_block_status,
    .get_info = vhdx_get_info,
    .create_opts = vhdx_create_opts,
    .co_create = vhdx_create,
    .measure = vhdx_measure,
    .co_check = vhdx_co_check,
};
VBD_DRIVER_REGISTER(vhdx, vhdx_driver);
