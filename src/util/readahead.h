/* SPDX-License-Identifier: MIT */
#ifndef VBD_UTIL_READAHEAD_H
#define VBD_UTIL_READAHEAD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/*
 * The take of a socket read-ahead buffer: up to LEN bytes of what BUF holds
 * from *pos to END go to DST; *pos moves past them; returns how many. The
 * NBD client (reply bytes, rd_full) and server (request bytes, conn_recv)
 * take the same way and refill by their own rules (the client empties the
 * buffer before a refill, the server appends to it while batching). Inline,
 * and DST/LEN by value: it runs for every request and reply header, and
 * the callers stay small enough to be inlined themselves.
 */
static inline size_t vbd_readahead_take(void *dst, size_t len, const uint8_t *buf, size_t *pos, size_t end)
{
    size_t have = end - *pos, take = have < len ? have : len;
    memcpy(dst, buf + *pos, take);
    *pos += take;
    return take;
}

#endif
