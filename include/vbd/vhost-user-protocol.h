/* SPDX-License-Identifier: MIT */
/*
 * The vhost-user wire format (QEMU docs/interop/vhost-user.rst): message
 * numbers, feature bits and header flags, shared by the back end
 * (src/export/vhost-user-blk), the front end behind vbd-bench
 * (src/vhost-client) and the hostile front end of the tests.
 */
#ifndef VBD_VHOST_USER_PROTOCOL_H
#define VBD_VHOST_USER_PROTOCOL_H

enum vu_request {
    VHOST_USER_GET_FEATURES = 1,
    VHOST_USER_SET_FEATURES = 2,
    VHOST_USER_SET_OWNER = 3,
    VHOST_USER_RESET_OWNER = 4,
    VHOST_USER_SET_MEM_TABLE = 5,
    VHOST_USER_SET_LOG_BASE = 6,
    VHOST_USER_SET_LOG_FD = 7,
    VHOST_USER_SET_VRING_NUM = 8,
    VHOST_USER_SET_VRING_ADDR = 9,
    VHOST_USER_SET_VRING_BASE = 10,
    VHOST_USER_GET_VRING_BASE = 11,
    VHOST_USER_SET_VRING_KICK = 12,
    VHOST_USER_SET_VRING_CALL = 13,
    VHOST_USER_SET_VRING_ERR = 14,
    VHOST_USER_GET_PROTOCOL_FEATURES = 15,
    VHOST_USER_SET_PROTOCOL_FEATURES = 16,
    VHOST_USER_GET_QUEUE_NUM = 17,
    VHOST_USER_SET_VRING_ENABLE = 18,
    VHOST_USER_SEND_RARP = 19,
    VHOST_USER_NET_SET_MTU = 20,
    VHOST_USER_SET_BACKEND_REQ_FD = 21,
    VHOST_USER_IOTLB_MSG = 22,
    VHOST_USER_SET_VRING_ENDIAN = 23,
    VHOST_USER_GET_CONFIG = 24,
    VHOST_USER_SET_CONFIG = 25,
    VHOST_USER_GET_INFLIGHT_FD = 31,
    VHOST_USER_SET_INFLIGHT_FD = 32,
    VHOST_USER_RESET_DEVICE = 34,
    VHOST_USER_VRING_KICK = 35,
    VHOST_USER_GET_MAX_MEM_SLOTS = 36,
    VHOST_USER_ADD_MEM_REG = 37,
    VHOST_USER_REM_MEM_REG = 38,
    VHOST_USER_SET_STATUS = 39,
    VHOST_USER_GET_STATUS = 40,
};

#define VHOST_USER_F_PROTOCOL_FEATURES 30
#define VHOST_F_LOG_ALL 26 /* the back end logs its writes into guest memory (migration) */
#define VHOST_USER_PROTOCOL_F_MQ 0
#define VHOST_USER_PROTOCOL_F_REPLY_ACK 3
#define VHOST_USER_PROTOCOL_F_LOG_SHMFD 1
#define VHOST_USER_PROTOCOL_F_BACKEND_REQ 5
#define VHOST_USER_PROTOCOL_F_CONFIG 9
#define VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD 12
#define VHOST_USER_PROTOCOL_F_RESET_DEVICE 13
#define VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS 15

#define VHOST_USER_VERSION 0x1u
#define VHOST_USER_FLAG_REPLY 0x4u
#define VHOST_USER_FLAG_NEED_REPLY 0x8u
#define VHOST_USER_VRING_NOFD (1ull << 8)
#define VHOST_VRING_F_LOG_USED 0x1u /* SET_VRING_ADDR flags: log the used ring's writes at log_guest_addr */
#define VHOST_LOG_PAGE 0x1000u      /* one bit of the dirty log per guest page of this size */

#endif
