/* Fuzz target: a VHDX image whose structures are mutated by the input.
 * A valid image (1 MiB blocks, 8 MiB disk: headers, region tables,
 * metadata, a BAT with present, zero and absent blocks, optionally a log
 * to replay, optionally differencing with a partially present block) is
 * built in memory; the input, after a flags byte, is XORed
 * over windows of the active header, the first region table, the metadata
 * table and items, the BAT and the log (from the window the second byte
 * picks on), so that an all-zero input is the
 * valid image and small values flip a few bits. Checksums are recomputed
 * unless the flags say not. The image is opened (read-write or read-only),
 * every byte read, mapped, a few writes allocate blocks and are read back,
 * it is checked and reopened read-only (the scaffold: fuzz-image.c). */
#include "fuzz-image.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MB (1u << 20)
#define IMG_SIZE (8u * MB)

/* CRC-32C (reflected 0x82f63b78) a byte at a time from a table: the
 * harness's own, not the driver's; every input checksums ~150 KiB, which
 * bit by bit was a quarter of the smoke run's time */
static uint32_t crc32c(const uint8_t *p, size_t len)
{
    static uint32_t tab[256];
    if (!tab[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
            tab[i] = c;
        }
    uint32_t c = 0xffffffffu;
    while (len--)
        c = (c >> 8) ^ tab[(c ^ *p++) & 0xff];
    return ~c;
}

static void fix_crc(uint8_t *p, size_t len)
{
    put_le32p(p + 4, 0);
    put_le32p(p + 4, crc32c(p, len));
}

static const uint8_t g_bat[16] = {0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08};
static const uint8_t g_meta[16] = {0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e};
static const uint8_t g_items[5][16] = {
    {0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b},
    {0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8},
    {0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46},
    {0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f},
    {0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56},
};
static const uint8_t log_guid[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

/* The valid image; with a log: one entry (seq 10) allocating block 3 at
 * 6 MiB through a BAT sector and zeroing 8 KiB of block 0. */
static void build(uint8_t *img, bool dirty, bool diff)
{
    memcpy(img, "vhdxfile", 8);
    for (int i = 0; i < 2; i++) {
        uint8_t *h = img + (64u << 10) * (i + 1);
        memcpy(h, "head", 4);
        put_le64p(h + 8, 1 + i);
        h[16] = 1; /* GUIDs: any */
        h[32] = 2;
        if (dirty && i == 1)
            memcpy(h + 48, log_guid, 16);
        put_le16p(h + 66, 1);
        put_le32p(h + 68, MB);
        put_le64p(h + 72, MB);
    }
    uint8_t *rt = img + (192u << 10);
    memcpy(rt, "regi", 4);
    put_le32p(rt + 8, 2);
    memcpy(rt + 16, g_bat, 16);
    put_le64p(rt + 32, 2 * MB);
    put_le32p(rt + 40, MB);
    memcpy(rt + 48, g_meta, 16);
    put_le64p(rt + 64, 3 * MB);
    put_le32p(rt + 72, MB);
    memcpy(img + (256u << 10), rt, 64u << 10);
    uint8_t *m = img + 3 * MB;
    memcpy(m, "metadata", 8);
    put_le16p(m + 10, diff ? 6 : 5);
    static const uint32_t lens[5] = {8, 8, 16, 4, 4};
    uint32_t off = 64u << 10;
    for (int i = 0; i < 5; i++) {
        uint8_t *e = m + 32 + 32 * i;
        memcpy(e, g_items[i], 16);
        put_le32p(e + 16, off);
        put_le32p(e + 20, lens[i]);
        put_le32p(e + 24, i ? 6 : 4);
        off += lens[i];
    }
    uint8_t *it = m + (64u << 10);
    put_le32p(it, MB);
    if (diff) { /* has_parent, a locator naming "p.vhdx", block 2 partial with its bitmap at 7 MiB */
        static const uint8_t g_loc[16] = {0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c};
        put_le32p(it + 4, 2);
        uint8_t *e = m + 32 + 32 * 5;
        memcpy(e, g_loc, 16);
        put_le32p(e + 16, (64u << 10) + 4096);
        put_le32p(e + 20, 128);
        put_le32p(e + 24, 4);
        uint8_t *l = m + (64u << 10) + 4096;
        put_le16p(l + 18, 1);
        put_le32p(l + 20, 32);
        put_le32p(l + 24, 60);
        put_le16p(l + 28, 26);
        put_le16p(l + 30, 12);
        static const char k[] = "relative_path", v[] = "p.vhdx";
        for (int i = 0; i < 13; i++)
            put_le16p(l + 32 + 2 * i, (uint8_t)k[i]);
        for (int i = 0; i < 6; i++)
            put_le16p(l + 60 + 2 * i, (uint8_t)v[i]);
        memset(img + 7 * MB, 0x0f, 4096);
        put_le64p(img + 2 * MB + 4096 * 8, 7 * MB | 6);
    }
    put_le64p(it + 8, 8 * MB);
    put_le32p(it + 32, 512);
    put_le32p(it + 36, 512);
    uint8_t *bat = img + 2 * MB;
    put_le64p(bat, 4 * MB | 6);
    put_le64p(bat + 8, 2);
    put_le64p(bat + 16, 5 * MB | (diff ? 7 : 6));
    memset(img + 4 * MB, 0x11, 4096);
    memset(img + 5 * MB, 0x22, 4096);
    if (dirty) {
        uint8_t *e = img + MB, sector[4096];
        memcpy(sector, bat, 4096);
        put_le64p(sector + 24, 6 * MB | 6);
        memcpy(e, "loge", 4);
        put_le32p(e + 8, 3 * 4096);
        put_le64p(e + 16, 10);
        put_le32p(e + 24, 2);
        memcpy(e + 32, log_guid, 16);
        put_le64p(e + 48, IMG_SIZE);
        put_le64p(e + 56, IMG_SIZE);
        uint8_t *d = e + 64;
        memcpy(d, "desc", 4);
        memcpy(d + 4, sector + 4092, 4);
        memcpy(d + 8, sector, 8);
        put_le64p(d + 16, 2 * MB);
        put_le64p(d + 24, 10);
        d += 32;
        memcpy(d, "zero", 4);
        put_le64p(d + 8, 8192);
        put_le64p(d + 16, 4 * MB + 4096);
        put_le64p(d + 24, 10);
        uint8_t *ds = e + 4096;
        memcpy(ds, "data", 4);
        memcpy(ds + 8, sector + 8, 4084);
        put_le32p(ds + 4092, 10);
        memset(img + 6 * MB, 0x33, 4096);
        fix_crc(e, 3 * 4096);
    }
    fix_crc(img + (64u << 10), 4096);
    fix_crc(img + (128u << 10), 4096);
    fix_crc(rt, 64u << 10);
    fix_crc(img + (256u << 10), 64u << 10);
}

/* The first open is read-write unless flag 0x10 says read-only: a few
 * writes allocate blocks. */
static void vhdx_inspect(struct fuzz_job *j, struct vbd_node *n)
{
    static const uint64_t offs[] = {1000, (3u << 20) + 1000, (6u << 20) + 1000};
    if (j->open_flags & VBD_OPEN_RDWR)
        fuzz_image_write_back(j, n, offs, sizeof(offs) / sizeof(offs[0]), 5000, 0);
}

/* Then read-only (the only way a differencing image opens without its parent). */
static void vhdx_after(struct fuzz_job *j)
{
    struct vbd_node *n = fuzz_image_open(j, VBD_OPEN_NO_FLUSH | (j->tag & 0x20 ? VBD_OPEN_CHECK : 0));
    if (n) {
        fuzz_image_read_map(j, n);
        fuzz_image_check(j, n, 0);
        vbd_node_unref(n);
    }
}

static bool vhdx_synth(struct fuzz_job *j, FILE *f, const uint8_t *data, size_t size)
{
    static uint8_t *img;
    if (!img)
        img = malloc(IMG_SIZE);
    if (!size)
        return false;
    unsigned flags = data[0];
    data++;
    size--;
    /* the parts of the image that are not holes */
    static const struct { uint32_t off, len; } parts[] = {
        {0, 320u << 10}, {MB, 3 * 4096}, {2 * MB, 4096}, {3 * MB, (64u << 10) + 8192},
        {4 * MB, 4096}, {5 * MB, 4096}, {6 * MB, 4096}, {7 * MB, 4096}, {2 * MB + (32u << 10), 4096},
    };
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        memset(img + parts[i].off, 0, parts[i].len);
    build(img, flags & 1, flags & 0x80);
    /* windows the input is XORed over, in order */
    static const struct { uint32_t off, len; } win[] = {
        /* past the signatures: a wrong one is one early refusal */
        {(128u << 10) + 8, 120},   /* the active header (seq 2) */
        {(192u << 10) + 8, 120},   /* region table 1 */
        {3 * MB + 8, 216},         /* metadata table */
        {3 * MB + (64u << 10), 48}, /* metadata items */
        {2 * MB, 256},             /* BAT */
        {MB + 8, 3 * 4096 - 8},    /* log */
        {3 * MB + (64u << 10) + 4096, 128}, /* parent locator (0x80) */
    };
    size_t nwin = sizeof(win) / sizeof(win[0]);
    size_t pos = 1, first = size ? data[0] % nwin : 0; /* the second byte picks where the input starts */
    for (size_t w = first; w < nwin && pos < size; w++)
        for (uint32_t i = 0; i < win[w].len && pos < size; i++)
            img[win[w].off + i] ^= data[pos++];
    if (!(flags & 2))
        fix_crc(img + (128u << 10), 4096);
    if (!(flags & 4))
        fix_crc(img + (192u << 10), 64u << 10);
    uint32_t elen = get_le32p(img + MB + 8);
    if (!(flags & 8) && elen >= 64 && elen <= MB)
        fix_crc(img + MB, elen);
    int fd = fileno(f);
    size_t end = flags & 0x80 ? IMG_SIZE : flags & 1 ? 7 * MB : 6 * MB;
    if (flags & 0x40)
        end -= MB / 2; /* truncated */
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        if (parts[i].off < end && pwrite(fd, img + parts[i].off, parts[i].len, parts[i].off) < 0)
            break;
    if (ftruncate(fd, (off_t)end) < 0)
        return false;
    j->tag = flags;
    j->open_flags = VBD_OPEN_NO_FLUSH | (flags & 0x10 ? 0 : VBD_OPEN_RDWR) | (flags & 0x20 ? VBD_OPEN_CHECK : 0);
    return true;
}

static const struct fuzz_image vhdx = {
    .driver = "vhdx",
    .max_input = 1u << 20,
    .max_read = 32u << 20,
    .check = true,
    .synth = vhdx_synth,
    .inspect = vhdx_inspect,
    .after = vhdx_after,
    .persist = true,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_image_input(&vhdx, data, size);
}
