/* SPDX-License-Identifier: MIT */
/* Format driver "dmg": Apple UDIF disk images, read-only as in qemu.
 *
 * The 512-byte "koly" trailer near the end of the file gives the data
 * fork, the resource fork and the XML property list, and the disk's sector
 * count. The chunk table comes from the "mish" blocks: in the resource
 * fork (length-prefixed resources) or, base64 in <data> elements, in the
 * XML plist. Each mish block gives a base sector and a base offset in the
 * data fork, then 40-byte chunk entries: type, first sector, sector
 * count, offset and length of its data. Chunk types: zeroes (UDZE),
 * ignored (UDIG, read as zeroes), raw (UDRW), zlib (UDZO), bzip2 (UDBZ),
 * lzfse (ULFO). Debian has no lzfse library, so lzfse chunks are kept in
 * the table and reading one fails with an error naming the chunk (qemu
 * without its dmg-lzfse module fails such reads with EIO too); comments
 * and the terminator are dropped as in qemu.
 *
 * Hostile images: every table lies within the file before it is read, the
 * XML at most 16 MiB, a resource at most 64 MiB, at most 8M chunks, chunk
 * data within the file, compressed lengths and
 * the sector counts of chunks that are decompressed or copied at most
 * 64 MiB (qemu's bounds), and decompression writes into a buffer of
 * exactly the chunk's size and must fill it. */
#include "all-data.h"
#include "vbd/block.h"
#include "vbd/bswap.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/iov.h"

#include <bzlib.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define DMG_LENGTHS_MAX (64u << 20)
#define DMG_SECTORCOUNTS_MAX (DMG_LENGTHS_MAX / 512)
#define DMG_XML_MAX (16u << 20)
#define DMG_RESOURCE_MAX (64u << 20) /* one mish block: 1.6M chunks */
#define DMG_MAX_CHUNKS (1u << 23)    /* 8 TiB in 1 MiB chunks; a 320 MiB table */

enum {
    UDZE = 0,
    UDRW = 1,
    UDIG = 2,
    UDCO = 0x80000004u, /* ADC: qemu has no decoder either */
    UDZO = 0x80000005u,
    UDBZ = 0x80000006u,
    ULFO = 0x80000007u,
    UDCM = 0x7ffffffeu,
    UDLE = 0xffffffffu,
};

struct dmg_chunk {
    uint32_t type;
    uint64_t sector, count;   /* disk sectors [sector, sector + count) */
    uint64_t offset, length;  /* its data in the file */
};

struct dmg_state {
    struct dmg_chunk *chunks;
    uint32_t n_chunks, cap;
    uint64_t data_fork;
    uint64_t max_compressed, max_sectors;
    uint8_t *compressed, *uncompressed;
    uint32_t current;          /* chunk in uncompressed, n_chunks = none */
    z_stream zs;
    bool zs_ready;
    bool warned_lzfse, warned_unknown;
    struct vbd_co_mutex lock;  /* the chunk cache and zs */
};

static int dmg_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)buf;
    (void)len;
    size_t l = filename ? strlen(filename) : 0;
    return l > 4 && !strcmp(filename + l - 4, ".dmg") ? 2 : 0; /* qemu: no magic at the start, the name only */
}

static bool dmg_data_type(uint32_t t)
{
    return t != UDZE && t != UDIG;
}

/* One mish block of len bytes (anything else is skipped, as qemu). */
static int dmg_parse_mish(struct vbd_node *n, const uint8_t *b, uint64_t len, struct vbd_error **err)
{
    struct dmg_state *s = n->opaque;
    const char *name = n->file->filename;
    if (len < 244 || get_be32p(b) != 0x6d697368) /* "mish" */
        return 0;
    uint64_t out_base = get_be64p(b + 8);
    uint64_t in_base = get_be64p(b + 0x18);
    if (in_base > UINT64_MAX - s->data_fork) {
        vbd_error_setf(err, EINVAL, "Image '%s': dmg mish data offset %llu overflows", name, (unsigned long long)in_base);
        return -EINVAL;
    }
    in_base += s->data_fork;
    uint64_t fsize = n->file->size;
    for (uint64_t p = 204; p + 40 <= len; p += 40) {
        const uint8_t *e = b + p;
        struct dmg_chunk c = {.type = get_be32p(e)};
        if (c.type == UDCM || c.type == UDLE)
            continue;
        c.sector = get_be64p(e + 8);
        c.count = get_be64p(e + 0x10);
        c.offset = get_be64p(e + 0x18);
        c.length = get_be64p(e + 0x20);
        uint32_t idx = s->n_chunks;
        if (c.sector > UINT64_MAX - out_base || (c.sector += out_base) > (uint64_t)INT64_MAX / 512 ||
            c.count > (uint64_t)INT64_MAX / 512 - c.sector) {
            vbd_error_setf(err, EINVAL, "Image '%s': dmg chunk %u sectors out of range", name, idx);
            return -EINVAL;
        }
        if (dmg_data_type(c.type)) {
            if (c.count > DMG_SECTORCOUNTS_MAX) {
                vbd_error_setf(err, EINVAL, "Image '%s': dmg sector count %llu for chunk %u is larger than max (%u)",
                               name, (unsigned long long)c.count, idx, DMG_SECTORCOUNTS_MAX);
                return -EINVAL;
            }
            if (c.length > DMG_LENGTHS_MAX) {
                vbd_error_setf(err, EINVAL, "Image '%s': dmg length %llu for chunk %u is larger than max (%u)", name,
                               (unsigned long long)c.length, idx, DMG_LENGTHS_MAX);
                return -EINVAL;
            }
            if (c.offset > UINT64_MAX - in_base || (c.offset += in_base) > fsize || c.length > fsize - c.offset) {
                vbd_error_setf(err, EINVAL, "Image '%s': dmg chunk %u data is past the end of the file", name, idx);
                return -EINVAL;
            }
            if (c.type != UDRW && c.length > s->max_compressed)
                s->max_compressed = c.length;
            if (c.count > s->max_sectors)
                s->max_sectors = c.count;
            if (c.type == ULFO && !s->warned_lzfse) {
                vbd_warn("dmg image '%s' has lzfse-compressed chunks, which vbd cannot decompress: reading them fails",
                         name);
                s->warned_lzfse = true;
            } else if (c.type != UDRW && c.type != UDZO && c.type != UDBZ && c.type != ULFO && !s->warned_unknown) {
                vbd_warn("dmg image '%s' has chunks of unknown type 0x%x: reading them fails", name, c.type);
                s->warned_unknown = true;
            }
        }
        if (s->n_chunks == DMG_MAX_CHUNKS) {
            vbd_error_setf(err, EFBIG, "Image '%s': more than %u dmg chunks", name, DMG_MAX_CHUNKS);
            return -EFBIG;
        }
        if (s->n_chunks == s->cap) {
            uint32_t cap = s->cap ? s->cap * 2 : 64;
            struct dmg_chunk *nc = realloc(s->chunks, (size_t)cap * sizeof(*nc));
            if (!nc) {
                vbd_error_setf(err, ENOMEM, "Image '%s': cannot allocate the dmg chunk table", name);
                return -ENOMEM;
            }
            s->chunks = nc;
            s->cap = cap;
        }
        s->chunks[s->n_chunks++] = c;
    }
    return 0;
}

static int dmg_read_rsrc(struct vbd_node *n, uint64_t begin, uint64_t length, struct vbd_error **err)
{
    const char *name = n->file->filename;
    uint8_t h[12];
    int rc = vbd_node_co_pread(n->file, begin, h, sizeof(h));
    if (rc < 0)
        return rc;
    uint64_t data_off = get_be32p(h), count = get_be32p(h + 8);
    if (data_off > length || count == 0 || count > length - data_off) {
        vbd_error_setf(err, EINVAL, "Image '%s': dmg resource fork data (offset %llu, %llu bytes) is outside the fork",
                       name, (unsigned long long)data_off, (unsigned long long)count);
        return -EINVAL;
    }
    uint64_t off = begin + data_off, end = off + count;
    uint8_t *buf = NULL;
    while (off < end) {
        uint8_t l[4];
        if (end - off < 4) {
            rc = -EINVAL;
            break;
        }
        rc = vbd_node_co_pread(n->file, off, l, 4);
        if (rc < 0)
            break;
        uint64_t len = get_be32p(l);
        off += 4;
        if (len == 0 || len > end - off) {
            rc = -EINVAL;
            break;
        }
        if (len > DMG_RESOURCE_MAX) {
            vbd_error_setf(err, EINVAL, "Image '%s': dmg resource of %llu bytes is too large (max %u)", name,
                           (unsigned long long)len, DMG_RESOURCE_MAX);
            rc = -EINVAL;
            break;
        }
        uint8_t *nb = realloc(buf, len);
        if (!nb) {
            rc = -ENOMEM;
            break;
        }
        buf = nb;
        rc = vbd_node_co_pread(n->file, off, buf, len);
        if (rc < 0)
            break;
        rc = dmg_parse_mish(n, buf, len, err);
        if (rc < 0)
            break;
        off += len;
    }
    free(buf);
    if (rc == -EINVAL && !*err)
        vbd_error_setf(err, EINVAL, "Image '%s': a dmg resource reaches past the resource data", name);
    return rc;
}

static int b64_value(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Base64 of [p, end) into out (room for 3/4 of the input); characters
 * outside the alphabet (whitespace in the plist) are skipped, '=' ends it. */
static size_t b64_decode(const uint8_t *p, const uint8_t *end, uint8_t *out)
{
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (; p < end && *p != '='; p++) {
        int v = b64_value(*p);
        if (v < 0)
            continue;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    return n;
}

static int dmg_read_xml(struct vbd_node *n, uint64_t begin, uint64_t length, struct vbd_error **err)
{
    const char *name = n->file->filename;
    if (length == 0 || length > DMG_XML_MAX) {
        vbd_error_setf(err, EINVAL, "Image '%s': dmg XML property list of %llu bytes (must be 1 byte to 16 MiB)", name,
                       (unsigned long long)length);
        return -EINVAL;
    }
    uint8_t *xml = malloc(length);
    uint8_t *mish = malloc(length / 4 * 3 + 3);
    int rc = xml && mish ? vbd_node_co_pread(n->file, begin, xml, length) : -ENOMEM;
    const uint8_t *end = xml + length, *p = xml;
    while (rc == 0) {
        const uint8_t *d = memmem(p, (size_t)(end - p), "<data>", 6);
        if (!d)
            break;
        d += 6;
        const uint8_t *de = memmem(d, (size_t)(end - d), "</data>", 7);
        if (!de) {
            vbd_error_setf(err, EINVAL, "Image '%s': malformed dmg XML property list (<data> without </data>)", name);
            rc = -EINVAL;
            break;
        }
        size_t len = b64_decode(d, de, mish);
        rc = dmg_parse_mish(n, mish, len, err);
        p = de + 7;
    }
    free(xml);
    free(mish);
    return rc;
}

static void dmg_free(struct dmg_state *s)
{
    free(s->chunks);
    free(s->compressed);
    free(s->uncompressed);
    s->chunks = NULL;
    s->compressed = s->uncompressed = NULL;
    if (s->zs_ready)
        inflateEnd(&s->zs);
    s->zs_ready = false;
}

static int dmg_open(struct vbd_node *n, struct json_object *opts, unsigned flags, struct vbd_error **err)
{
    struct dmg_state *s = n->opaque;
    n->file = vbd_open_child(n, opts, "file", NULL, flags, err);
    if (!n->file)
        return -EINVAL;
    const char *name = n->file->filename;
    if (flags & VBD_OPEN_RDWR) {
        vbd_error_setf(err, EACCES, "Image is read-only"); /* QEMU's words (bdrv_apply_auto_read_only) */
        return -EACCES;
    }
    uint64_t fsize = n->file->size;
    if (fsize < 512) {
        vbd_error_setf(err, EINVAL, "Image '%s': a dmg file must be at least 512 bytes long", name);
        return -EINVAL;
    }
    /* the trailer starts in the last 1023 bytes, at most 512 from the end (qemu's search) */
    uint8_t buf[515];
    uint64_t start = fsize > 1023 ? fsize - 1023 : 0;
    size_t blen = fsize < sizeof(buf) ? (size_t)fsize : sizeof(buf);
    int rc = vbd_node_co_pread(n->file, start, buf, blen);
    if (rc < 0)
        goto io_error;
    uint64_t koly = UINT64_MAX;
    for (size_t i = 0; i + 4 <= blen; i++)
        if (!memcmp(buf + i, "koly", 4)) {
            koly = start + i;
            break;
        }
    if (koly == UINT64_MAX || fsize - koly < 512) {
        vbd_error_setf(err, EINVAL, "Image '%s': could not locate the UDIF trailer ('koly') in the dmg file", name);
        return -EINVAL;
    }
    uint8_t k[512];
    rc = vbd_node_co_pread(n->file, koly, k, sizeof(k));
    if (rc < 0)
        goto io_error;
    s->data_fork = get_be64p(k + 0x18);
    uint64_t rsrc_off = get_be64p(k + 0x28), rsrc_len = get_be64p(k + 0x30);
    uint64_t xml_off = get_be64p(k + 0xd8), xml_len = get_be64p(k + 0xe0);
    uint64_t sectors = get_be64p(k + 0x1ec);
    if (s->data_fork > koly) {
        vbd_error_setf(err, EINVAL, "Image '%s': dmg data fork offset %llu is past the trailer", name,
                       (unsigned long long)s->data_fork);
        return -EINVAL;
    }
    if (rsrc_off >= koly || rsrc_len > koly - rsrc_off || xml_off >= koly || xml_len > koly - xml_off) {
        vbd_error_setf(err, EINVAL, "Image '%s': dmg resource fork or XML property list is past the trailer", name);
        return -EINVAL;
    }
    if (sectors > (uint64_t)INT64_MAX / 512) {
        vbd_error_setf(err, EINVAL, "Image '%s': dmg sector count %llu is too large", name, (unsigned long long)sectors);
        return -EINVAL;
    }
    s->max_compressed = 1;
    s->max_sectors = 1;
    if (rsrc_len)
        rc = dmg_read_rsrc(n, rsrc_off, rsrc_len, err);
    else if (xml_len)
        rc = dmg_read_xml(n, xml_off, xml_len, err);
    else {
        vbd_error_setf(err, EINVAL, "Image '%s': dmg trailer has neither a resource fork nor an XML property list", name);
        rc = -EINVAL;
    }
    if (rc < 0) {
        if (!*err)
            vbd_error_setf(err, -rc, "Could not read the dmg image '%s': %s", name, strerror(-rc));
        dmg_free(s);
        return rc;
    }
    s->compressed = malloc(s->max_compressed);
    s->uncompressed = malloc(s->max_sectors * 512);
    if (!s->compressed || !s->uncompressed || inflateInit(&s->zs) != Z_OK) {
        vbd_error_setf(err, ENOMEM, "Image '%s': cannot allocate dmg chunk buffers", name);
        dmg_free(s);
        return -ENOMEM;
    }
    s->zs_ready = true;
    s->current = s->n_chunks;
    n->size = sectors * 512;
    n->bl.request_alignment = 512;
    return 0;

io_error:
    vbd_error_setf(err, -rc, "Could not read the dmg image '%s': %s", name, strerror(-rc));
    return rc;
}

static void dmg_close(struct vbd_node *n)
{
    dmg_free(n->opaque);
}

/* The chunk holding sector, by binary search over the chunks in table
 * order as qemu (a valid image lists them by sector); n_chunks if none. */
static uint32_t dmg_find(struct dmg_state *s, uint64_t sector)
{
    uint32_t lo = 0, hi = s->n_chunks;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const struct dmg_chunk *c = &s->chunks[mid];
        if (c->sector > sector)
            hi = mid;
        else if (sector - c->sector < c->count)
            return mid;
        else
            lo = mid + 1;
    }
    return s->n_chunks;
}

static int dmg_bunzip(struct dmg_state *s, uint64_t in_len, uint64_t out_len)
{
    bz_stream bz = {0};
    if (BZ2_bzDecompressInit(&bz, 0, 0) != BZ_OK)
        return -ENOMEM;
    bz.next_in = (char *)s->compressed;
    bz.avail_in = (unsigned)in_len;
    bz.next_out = (char *)s->uncompressed;
    bz.avail_out = (unsigned)out_len;
    int r = BZ2_bzDecompress(&bz);
    uint64_t total = ((uint64_t)bz.total_out_hi32 << 32) | bz.total_out_lo32;
    BZ2_bzDecompressEnd(&bz);
    return r == BZ_STREAM_END && total == out_len ? 0 : -EIO;
}

/* Make chunk i's bytes the content of s->uncompressed (under s->lock). */
static int dmg_load(struct vbd_node *n, uint32_t i)
{
    struct dmg_state *s = n->opaque;
    if (s->current == i)
        return 0;
    s->current = s->n_chunks;
    const struct dmg_chunk *c = &s->chunks[i];
    uint64_t out_len = c->count * 512;
    int rc;
    switch (c->type) {
    case UDRW: {
        uint64_t len = c->length < out_len ? c->length : out_len;
        rc = len ? vbd_node_co_pread(n->file, c->offset, s->uncompressed, len) : 0;
        if (rc < 0)
            return rc;
        memset(s->uncompressed + len, 0, out_len - len);
        break;
    }
    case UDZO:
    case UDBZ:
        rc = c->length ? vbd_node_co_pread(n->file, c->offset, s->compressed, c->length) : 0;
        if (rc < 0)
            return rc;
        if (c->type == UDBZ) {
            rc = dmg_bunzip(s, c->length, out_len);
        } else {
            rc = inflateReset(&s->zs) == Z_OK ? 0 : -EIO;
            s->zs.next_in = s->compressed;
            s->zs.avail_in = (uInt)c->length;
            s->zs.next_out = s->uncompressed;
            s->zs.avail_out = (uInt)out_len;
            if (rc == 0 && (inflate(&s->zs, Z_FINISH) != Z_STREAM_END || s->zs.total_out != out_len))
                rc = -EIO;
        }
        if (rc < 0) {
            vbd_error_report("dmg image '%s': chunk %u does not decompress to %llu bytes", n->file->filename, i,
                             (unsigned long long)out_len);
            return rc;
        }
        break;
    case ULFO:
        vbd_error_report("dmg image '%s': chunk %u is lzfse-compressed, which vbd cannot decompress",
                         n->file->filename, i);
        return -ENOTSUP;
    default:
        vbd_error_report("dmg image '%s': chunk %u has the unsupported type 0x%x", n->file->filename, i, c->type);
        return -ENOTSUP;
    }
    s->current = i;
    return 0;
}

static int dmg_preadv(struct vbd_node *n, uint64_t off, uint64_t bytes, struct vbd_qiov *q, size_t qoff,
                      unsigned flags)
{
    struct dmg_state *s = n->opaque;
    (void)flags;
    int rc = 0;
    vbd_co_mutex_lock(&s->lock);
    while (bytes) {
        uint64_t sector = off / 512;
        uint32_t i = dmg_find(s, sector);
        if (i == s->n_chunks) {
            rc = -EIO; /* no chunk describes it: qemu fails the read too */
            break;
        }
        const struct dmg_chunk *c = &s->chunks[i];
        uint64_t in = (sector - c->sector) * 512;
        uint64_t len = c->count * 512 - in;
        if (len > bytes)
            len = bytes;
        if (!dmg_data_type(c->type)) {
            vbd_iov_memset(q->iov, q->niov, qoff, 0, len);
        } else {
            rc = dmg_load(n, i);
            if (rc < 0)
                break;
            vbd_iov_from_buf(q->iov, q->niov, qoff, s->uncompressed + in, len);
        }
        off += len;
        qoff += len;
        bytes -= len;
    }
    vbd_co_mutex_unlock(&s->lock);
    return rc;
}

static const struct vbd_driver dmg_driver = {
    .name = "dmg",
    .kind = VBD_DRV_FORMAT,
    .state_size = sizeof(struct dmg_state),
    .probe = dmg_probe,
    .open = dmg_open,
    .close = dmg_close,
    .co_preadv = dmg_preadv,
    .co_block_status = vbd_all_data_block_status,
    .get_info = vbd_all_data_get_info,
};
VBD_DRIVER_REGISTER(dmg, dmg_driver);
