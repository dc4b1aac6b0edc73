/* SPDX-License-Identifier: MIT */
/* vhdx: CRC-32C, the two headers and the log (search, replay, and the
 * entries that commit BAT changes). See vhdx.c for the design. */
#include "vhdx.h"

#include "vbd/iov.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

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
        uint32_t lo = get_le32p(p) ^ crc, hi = get_le32p(p + 4);
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
uint32_t vhdx_crc(const uint8_t *buf, size_t len, size_t crc_at)
{
    static const uint8_t zero4[4];
    pthread_once(&crc_once, crc_init);
    uint32_t c = crc32c_update(0xffffffffu, buf, crc_at);
    c = crc32c_update(c, zero4, 4);
    c = crc32c_update(c, buf + crc_at + 4, len - crc_at - 4);
    return ~c;
}

void vhdx_set_crc(uint8_t *buf, size_t len, size_t crc_at)
{
    put_le32p(buf + crc_at, vhdx_crc(buf, len, crc_at));
}

void vhdx_guid_generate(uint8_t *g)
{
    if (getrandom(g, 16, 0) != 16)
        for (int i = 0; i < 16; i++)
            g[i] = (uint8_t)rand();
    g[7] = (uint8_t)((g[7] & 0x0f) | 0x40); /* version 4, in the little-endian data3 */
    g[8] = (uint8_t)((g[8] & 0x3f) | 0x80);
}

/* ---------- headers ---------- */

static int header_offset(int i)
{
    return i ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF;
}

int vhdx_read_headers(struct vbd_node *n, struct vhdx_state *s, struct vbd_error **err)
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
        valid[i] = !memcmp(h, "head", 4) && get_le32p(h + 4) == vhdx_crc(h, VHDX_HEADER_SIZE, 4) &&
                   get_le16p(h + H_VERSION) == 1;
        seq[i] = get_le64p(h + H_SEQ);
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
        vbd_error_setf(err, EINVAL, "No valid VHDX header found"); /* QEMU's words */
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
    put_le64p(h + H_SEQ, get_le64p(s->hdr[s->cur] + H_SEQ) + 1);
    memcpy(h + H_FILE_GUID, s->session_guid, 16);
    if (new_data_guid)
        vhdx_guid_generate(h + H_DATA_GUID);
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

int vhdx_update_headers(struct vbd_node *n, struct vhdx_state *s, bool new_data_guid, const uint8_t *log_guid)
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
    uint32_t len = get_le32p(h + L_ENTRY_LENGTH);
    uint64_t seq = get_le64p(h + L_SEQ);
    uint32_t count = get_le32p(h + L_DESC_COUNT);
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
        if (get_le64p(d + 24) != seq || get_le64p(d + 16) % VHDX_LOG_SECTOR)
            goto invalid;
        if (!memcmp(d, "zero", 4)) {
            if (get_le64p(d + 8) % VHDX_LOG_SECTOR)
                goto invalid;
        } else if (!memcmp(d, "desc", 4)) {
            if (dsect + ndata >= sectors)
                goto invalid;
            const uint8_t *ds = buf + (uint64_t)(dsect + ndata) * VHDX_LOG_SECTOR;
            if (memcmp(ds, "data", 4) || ((uint64_t)get_le32p(ds + 4) << 32 | get_le32p(ds + 4092)) != seq)
                goto invalid;
            ndata++;
        } else {
            goto invalid;
        }
    }
    if (vhdx_crc(buf, len, L_CHECKSUM) != get_le32p(buf + L_CHECKSUM))
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
int vhdx_log_replay(struct vbd_node *n, struct vhdx_state *s, struct vbd_error **err)
{
    const char *name = n->file->filename;
    const uint8_t *h = s->hdr[s->cur];
    s->log_offset = get_le64p(h + H_LOG_OFFSET);
    s->log_length = get_le32p(h + H_LOG_LENGTH);
    uint64_t fsize = vbd_node_size(n->file);
    if (s->log_offset < MiB || s->log_offset % MiB) {
        vbd_error_setf(err, EINVAL, "Image '%s': invalid VHDX log offset %llu", name, (unsigned long long)s->log_offset);
        return -EINVAL;
    }
    if (get_le16p(h + H_LOG_VERSION) != 0) {
        vbd_error_setf(err, ENOTSUP, "Image '%s': unsupported VHDX log version %u", name, get_le16p(h + H_LOG_VERSION));
        return -ENOTSUP;
    }
    if (!memcmp(h + H_LOG_GUID, vhdx_zero_guid, 16) || s->log_length == 0)
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
        uint64_t flushed = get_le64p(b + L_FLUSHED), last = get_le64p(b + L_LAST);
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
        uint32_t count = get_le32p(b + L_DESC_COUNT);
        for (uint32_t j = 0; j < count; j++) {
            const uint8_t *d = b + L_HDR_SIZE + (uint64_t)j * D_SIZE;
            uint64_t off = get_le64p(d + 16);
            uint64_t len = memcmp(d, "zero", 4) ? VHDX_LOG_SECTOR : get_le64p(d + 8);
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
        uint32_t count = get_le32p(b + L_DESC_COUNT), dsect = desc_sectors(count), ndata = 0;
        for (uint32_t j = 0; j < count && rc == 0; j++) {
            const uint8_t *d = b + L_HDR_SIZE + (uint64_t)j * D_SIZE;
            uint64_t off = get_le64p(d + 16);
            if (!memcmp(d, "zero", 4)) {
                rc = vbd_node_co_pwrite_zeroes(n->file, off, get_le64p(d + 8), 0);
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
        rc = vhdx_update_headers(n, s, false, vhdx_zero_guid);
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
/* Whether the log can hold one entry of a BAT update (a header sector and
 * a data sector). A header may say length 0 (no log) with any offset, as
 * the spec allows for an image that is never written: the offset is then
 * no region of its own, and an entry written there lands on whatever is
 * (checked at open only when the length is not 0). */
bool vhdx_log_has_room(const struct vhdx_state *s)
{
    return s->log_length >= 2 * VHDX_LOG_SECTOR;
}

int vhdx_log_write_bat_entry(struct vbd_node *n, struct vhdx_state *s, uint64_t idx, uint64_t entry)
{
    uint64_t sector_index = idx * 8 / VHDX_LOG_SECTOR;
    uint8_t log_guid[16];
    int rc = 0;
    if (!vhdx_log_has_room(s))
        return -EINVAL;
    vhdx_guid_generate(log_guid);
    rc = vhdx_update_headers(n, s, false, log_guid);
    if (rc < 0)
        return rc;
    uint8_t *e = vbd_alloc_aligned(4096, 2 * VHDX_LOG_SECTOR);
    memset(e, 0, 2 * VHDX_LOG_SECTOR);
    uint8_t *data = e + VHDX_LOG_SECTOR;
    uint8_t *sec = vbd_alloc_aligned(4096, VHDX_LOG_SECTOR);
    const uint64_t *src = s->bat + sector_index * (VHDX_LOG_SECTOR / 8);
    for (unsigned i = 0; i < VHDX_LOG_SECTOR / 8; i++)
        put_le64p(sec + i * 8, src[i]);
    put_le64p(sec + idx * 8 % VHDX_LOG_SECTOR, entry);
    uint64_t seq = s->log_seq ? s->log_seq : 1;
    uint64_t fsize = vbd_node_size(n->file);
    uint64_t file_off = s->bat_offset + sector_index * VHDX_LOG_SECTOR;
    memcpy(e, "loge", 4);
    put_le32p(e + L_ENTRY_LENGTH, 2 * VHDX_LOG_SECTOR);
    put_le32p(e + L_TAIL, 0);
    put_le64p(e + L_SEQ, seq);
    put_le32p(e + L_DESC_COUNT, 1);
    memcpy(e + L_LOG_GUID, log_guid, 16);
    put_le64p(e + L_FLUSHED, fsize);
    put_le64p(e + L_LAST, fsize);
    uint8_t *d = e + L_HDR_SIZE;
    memcpy(d, "desc", 4);
    memcpy(d + 4, sec + 4092, 4);
    memcpy(d + 8, sec, 8);
    put_le64p(d + 16, file_off);
    put_le64p(d + 24, seq);
    memcpy(data, "data", 4);
    put_le32p(data + 4, (uint32_t)(seq >> 32));
    memcpy(data + 8, sec + 8, 4084);
    put_le32p(data + 4092, (uint32_t)seq);
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
        rc = vhdx_update_headers(n, s, false, vhdx_zero_guid);
    }
    s->log_seq = seq + 1;
    free(e);
    free(sec);
    return rc;
}
