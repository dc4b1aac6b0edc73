/* SPDX-License-Identifier: MIT */
#ifndef VBD_SHA256_H
#define VBD_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* SHA-256 (FIPS 180-4) of len bytes at data, as 64 lowercase hex digits
 * and a NUL in hex[65]: what QEMU's debug commands print (x-debug-block-
 * dirty-bitmap-sha256). Not on a hot path. */
void vbd_sha256_hex(const void *data, size_t len, char hex[65]);

#endif
