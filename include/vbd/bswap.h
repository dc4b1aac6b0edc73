/* SPDX-License-Identifier: MIT */
#ifndef VBD_BSWAP_H
#define VBD_BSWAP_H

/*
 * Byte-order helpers for every on-disk and on-wire format: big-endian
 * (qcow2, NBD, vpc, dmg, cloop) and little-endian (vdi, vhdx, vmdk,
 * parallels, bochs, qed). be16/be32/be64 convert a value either way (the
 * swap is its own inverse); get_*p/put_*p read and write through unaligned
 * pointers (memcpy, which compilers turn into one load or store, plus a
 * bswap for the other byte order).
 */
#include <endian.h>
#include <stdint.h>
#include <string.h>

static inline uint16_t be16(uint16_t v) { return htobe16(v); }
static inline uint32_t be32(uint32_t v) { return htobe32(v); }
static inline uint64_t be64(uint64_t v) { return htobe64(v); }

static inline uint16_t get_be16p(const void *p) { uint16_t v; memcpy(&v, p, 2); return be16toh(v); }
static inline uint32_t get_be32p(const void *p) { uint32_t v; memcpy(&v, p, 4); return be32toh(v); }
static inline uint64_t get_be64p(const void *p) { uint64_t v; memcpy(&v, p, 8); return be64toh(v); }

static inline void put_be16p(void *p, uint16_t v) { v = htobe16(v); memcpy(p, &v, 2); }
static inline void put_be32p(void *p, uint32_t v) { v = htobe32(v); memcpy(p, &v, 4); }
static inline void put_be64p(void *p, uint64_t v) { v = htobe64(v); memcpy(p, &v, 8); }

static inline uint16_t get_le16p(const void *p) { uint16_t v; memcpy(&v, p, 2); return le16toh(v); }
static inline uint32_t get_le32p(const void *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static inline uint64_t get_le64p(const void *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }

static inline void put_le16p(void *p, uint16_t v) { v = htole16(v); memcpy(p, &v, 2); }
static inline void put_le32p(void *p, uint32_t v) { v = htole32(v); memcpy(p, &v, 4); }
static inline void put_le64p(void *p, uint64_t v) { v = htole64(v); memcpy(p, &v, 8); }

#endif
