/* SPDX-License-Identifier: MIT */
#ifndef VBD_THROTTLE_H
#define VBD_THROTTLE_H

#include <stdbool.h>
#include <stdint.h>

struct json_object;
struct vbd_error;

/*
 * I/O throttling as QEMU's (util/throttle.c, block/throttle-groups.c), so
 * that a set of limits behaves as a QEMU user expects: six leaky buckets
 * (bytes and operations; total, read, write) that drain at their average
 * rate, a request waits while a bucket it fills holds more than its size
 * (avg/10 without a burst; max * max-length with one, and then also no more
 * than max/10 above what the burst rate drains), and a request counts as
 * bytes/iops-size operations when it is larger than iops-size.
 */
enum {
    VBD_THR_BPS_TOTAL,
    VBD_THR_BPS_READ,
    VBD_THR_BPS_WRITE,
    VBD_THR_OPS_TOTAL,
    VBD_THR_OPS_READ,
    VBD_THR_OPS_WRITE,
    VBD_THR_BUCKETS
};
/* QEMU's THROTTLE_VALUE_MAX */
#define VBD_THROTTLE_VALUE_MAX 1000000000000000ULL

struct vbd_throttle_bucket {
    uint64_t avg, max, burst_length; /* burst_length: seconds at max (1: no burst) */
    double level, burst_level;
};
struct vbd_throttle_config {
    struct vbd_throttle_bucket b[VBD_THR_BUCKETS];
    uint64_t op_size;
};

/* No limits, burst lengths 1. */
void vbd_throttle_config_init(struct vbd_throttle_config *c);
/* QEMU's throttle_is_valid() with its messages. */
int vbd_throttle_config_check(const struct vbd_throttle_config *c, struct vbd_error **err);
/* ThrottleLimits (QAPI, "iops-total", "bps-read-max-length", ...): sets
 * the keys present (integers, or their text from keyval), then checks the
 * result. prefix names the object in messages ("limits."). */
int vbd_throttle_limits_apply(struct vbd_throttle_config *c, struct json_object *limits, const char *prefix,
                              struct vbd_error **err);
/* All 19 ThrottleLimits members. */
struct json_object *vbd_throttle_limits_json(const struct vbd_throttle_config *c);
/* The -drive names (throttling.iops-total, iops_rd, bps_max, ...) taken
 * from opts into c (and "throttling.group"/"group" into *group, malloc'd).
 * Returns 1 if any limit was given, 0 if none, <0 on a bad value. */
int vbd_throttle_take_drive_opts(struct json_object *opts, struct vbd_throttle_config *c, char **group,
                                 struct vbd_error **err);

/*
 * Groups, by name. The registry is used from the main loop only (objects
 * and node opens; asserted where it changes: add, remove, configure,
 * join); a group's state is shared by its members, which may run on
 * several loops: it is under a lock never held across a yield, its timer
 * lives on the loop that created the group. vbd_throttle_co_intercept:
 * any loop, in a coroutine.
 */
/* A user's group (object-add/--object throttle-group). -EEXIST if the name
 * is taken. */
int vbd_throttle_group_add(const char *name, const struct vbd_throttle_config *cfg, struct vbd_error **err);
/* The same from object-add's/--object's options: id, limits (ThrottleLimits)
 * and the flat x-iops-total... properties. */
int vbd_throttle_group_add_opts(struct json_object *opts, struct vbd_error **err);
/* object-del: refused while a throttle node uses it. */
int vbd_throttle_group_remove(const char *name, struct vbd_error **err);
/* A user's group (implicit ones, made by --drive, are not objects). */
bool vbd_throttle_group_is_object(const char *name);
const char *vbd_throttle_group_next(const char *prev); /* user groups, in creation order */
/* The limits (levels zeroed) of any group; false if none has that name. */
bool vbd_throttle_group_get(const char *name, struct vbd_throttle_config *cfg);
/* New limits, effective at once for the requests waiting too. */
int vbd_throttle_group_set(const char *name, const struct vbd_throttle_config *cfg, struct vbd_error **err);
/* Make a group that exists only while it has members (--drive), or set
 * the limits of an existing one (as QEMU's -drive throttling.group=). */
int vbd_throttle_group_configure(const char *name, const struct vbd_throttle_config *cfg, struct vbd_error **err);

/* One throttle node in a group. */
struct vbd_throttle_member;
struct vbd_throttle_member *vbd_throttle_member_join(const char *group, struct vbd_error **err);
/* No request of the member may be waiting (the node is drained). */
void vbd_throttle_member_leave(struct vbd_throttle_member *m);
const char *vbd_throttle_member_group(const struct vbd_throttle_member *m);
/* Coroutine: waits (yields, in order, members served round-robin) until
 * the group's limits let a request of `bytes` through, and accounts it. */
void vbd_throttle_co_intercept(struct vbd_throttle_member *m, bool is_write, uint64_t bytes);
/* A drained section over the member's node (nested; QEMU's
 * throttle_co_drain_begin/end): its queued requests go at once and its new
 * ones pass without waiting (still accounted: the group's other members
 * wait the longer) until the last end. Any thread. */
void vbd_throttle_member_drain_begin(struct vbd_throttle_member *m);
void vbd_throttle_member_drain_end(struct vbd_throttle_member *m);
/* blockdev-reopen into another group, drained: the new member takes the
 * old one's drained sections (their ends come to it). */
void vbd_throttle_member_take_drains(struct vbd_throttle_member *to, struct vbd_throttle_member *from);

#endif
