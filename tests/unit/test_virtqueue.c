/* Hostile and well-formed split rings built in plain memory: every
 * malformed chain is refused with a reason, nothing is read or written
 * outside the guest memory regions. */
#include "unit.h"
#include "virtqueue.h"

#include <errno.h>
#include <linux/virtio_ring.h>
#include <stdlib.h>

#define GPA_BASE 0x100000ull
#define MEM_SIZE (1u << 20)
#define QSIZE 16

struct fake {
    uint8_t *mem;
    uint8_t *second; /* add_second_region's memory */
    struct vu_mem m;
    struct vu_vq vq;
    struct iovec iov[64];
    struct vu_elem e;
};

static uint64_t gpa(struct fake *f, void *p)
{
    return GPA_BASE + (uint64_t)((uint8_t *)p - f->mem);
}

static void setup(struct fake *f)
{
    memset(f, 0, sizeof(*f));
    f->mem = calloc(1, MEM_SIZE);
    f->m.nregions = 1;
    f->m.r[0] = (struct vu_mem_region){.gpa = GPA_BASE, .size = MEM_SIZE, .qva = 0x7f0000000000ull, .host = f->mem};
    f->vq.num = QSIZE;
    f->vq.desc = (struct vring_desc *)f->mem;
    f->vq.avail = (struct vring_avail *)(f->mem + 4096);
    f->vq.used = (struct vring_used *)(f->mem + 8192);
    f->vq.indirect = true;
    f->e.iov = f->iov;
    f->e.iov_cap = 64;
}

static void teardown(struct fake *f)
{
    free(f->mem);
    free(f->second);
}

/* A second region of 64 KiB, at the guest address right after the first
 * (a buffer may cross into it), at another host address: returns its host
 * memory (freed by teardown). */
static uint8_t *add_second_region(struct fake *f)
{
    f->second = calloc(1, 65536);
    f->m.r[1] = (struct vu_mem_region){.gpa = GPA_BASE + MEM_SIZE, .size = 65536, .qva = 1, .host = f->second};
    f->m.nregions = 2;
    return f->second;
}

static void set_desc(struct fake *f, struct vring_desc *table, int i, uint64_t addr, uint32_t len, uint16_t flags,
                     uint16_t next)
{
    (void)f;
    table[i].addr = addr;
    table[i].len = len;
    table[i].flags = flags;
    table[i].next = next;
}

static void offer(struct fake *f, uint16_t head)
{
    f->vq.avail->ring[f->vq.avail->idx % QSIZE] = head;
    f->vq.avail->idx++;
}

static int pop(struct fake *f, const char **why)
{
    *why = "";
    return vu_vq_pop(&f->vq, &f->m, &f->e, why);
}

UNIT_TEST(valid_chain_maps_out_then_in)
{
    struct fake f;
    setup(&f);
    uint8_t *buf = f.mem + 65536;
    set_desc(&f, f.vq.desc, 0, gpa(&f, buf), 16, VRING_DESC_F_NEXT, 1);
    set_desc(&f, f.vq.desc, 1, gpa(&f, buf + 4096), 4096, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    set_desc(&f, f.vq.desc, 2, gpa(&f, buf + 16), 1, VRING_DESC_F_WRITE, 0);
    offer(&f, 0);
    const char *why;
    CHECK_EQ(pop(&f, &why), 1);
    CHECK_EQ(f.e.out_num, 1);
    CHECK_EQ(f.e.in_num, 2);
    CHECK(f.iov[1].iov_base == buf + 4096);
    CHECK_EQ(f.iov[1].iov_len, 4096);
    CHECK_EQ(pop(&f, &why), 0); /* empty now */
    vu_vq_push(&f.vq, 0, 4097);
    CHECK_EQ(f.vq.used->idx, 1);
    CHECK_EQ(f.vq.used->ring[0].id, 0);
    CHECK_EQ(f.vq.used->ring[0].len, 4097);
    teardown(&f);
}

UNIT_TEST(head_out_of_range)
{
    struct fake f;
    setup(&f);
    offer(&f, QSIZE + 3);
    const char *why;
    CHECK_EQ(pop(&f, &why), -EINVAL);
    CHECK_STR(why, "descriptor head index out of range");
    CHECK(f.vq.broken);
    teardown(&f);
}

UNIT_TEST(chain_loop)
{
    struct fake f;
    setup(&f);
    set_desc(&f, f.vq.desc, 0, GPA_BASE + 65536, 16, VRING_DESC_F_NEXT, 1);
    set_desc(&f, f.vq.desc, 1, GPA_BASE + 65536, 16, VRING_DESC_F_NEXT, 0);
    offer(&f, 0);
    const char *why;
    CHECK_EQ(pop(&f, &why), -EINVAL);
    CHECK_STR(why, "descriptor chain longer than its table (a loop?)");
    teardown(&f);
}

UNIT_TEST(next_out_of_range)
{
    struct fake f;
    setup(&f);
    set_desc(&f, f.vq.desc, 0, GPA_BASE + 65536, 16, VRING_DESC_F_NEXT, 999);
    offer(&f, 0);
    const char *why;
    CHECK_EQ(pop(&f, &why), -EINVAL);
    CHECK_STR(why, "next descriptor index out of range");
    teardown(&f);
}

UNIT_TEST(buffers_outside_memory)
{
    const uint64_t bad[][2] = {
        {0, 16},                          /* below the region */
        {GPA_BASE + MEM_SIZE - 8, 16},    /* crosses its end */
        {GPA_BASE + MEM_SIZE, 1},         /* just past it */
        {UINT64_MAX - 4, 16},             /* wraps around */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct fake f;
        setup(&f);
        set_desc(&f, f.vq.desc, 0, bad[i][0], (uint32_t)bad[i][1], 0, 0);
        offer(&f, 0);
        const char *why;
        CHECK_EQ(pop(&f, &why), -EFAULT);
        CHECK_STR(why, "buffer outside guest memory");
        teardown(&f);
    }
}

UNIT_TEST(buffer_spanning_two_regions_is_split)
{
    struct fake f;
    setup(&f);
    uint8_t *second = add_second_region(&f);
    set_desc(&f, f.vq.desc, 0, GPA_BASE + MEM_SIZE - 100, 300, VRING_DESC_F_WRITE, 0);
    offer(&f, 0);
    const char *why;
    CHECK_EQ(pop(&f, &why), 1);
    CHECK_EQ(f.e.in_num, 2);
    CHECK_EQ(f.iov[0].iov_len, 100);
    CHECK(f.iov[1].iov_base == second);
    CHECK_EQ(f.iov[1].iov_len, 200);
    teardown(&f);
}

UNIT_TEST(readable_after_writable)
{
    struct fake f;
    setup(&f);
    set_desc(&f, f.vq.desc, 0, GPA_BASE + 65536, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1);
    set_desc(&f, f.vq.desc, 1, GPA_BASE + 65536, 16, 0, 0);
    offer(&f, 0);
    const char *why;
    CHECK_EQ(pop(&f, &why), -EINVAL);
    CHECK_STR(why, "device-readable descriptor after a device-writable one");
    teardown(&f);
}

UNIT_TEST(indirect_tables)
{
    struct fake f;
    setup(&f);
    struct vring_desc *ind = (struct vring_desc *)(f.mem + 32768);
    set_desc(&f, ind, 0, GPA_BASE + 65536, 16, VRING_DESC_F_NEXT, 1);
    set_desc(&f, ind, 1, GPA_BASE + 70000, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2);
    set_desc(&f, ind, 2, GPA_BASE + 80000, 1, VRING_DESC_F_WRITE, 0);
    set_desc(&f, f.vq.desc, 0, gpa(&f, ind), 3 * 16, VRING_DESC_F_INDIRECT, 0);
    offer(&f, 0);
    const char *why;
    CHECK_EQ(pop(&f, &why), 1);
    CHECK_EQ(f.e.out_num, 1);
    CHECK_EQ(f.e.in_num, 2);

    /* an indirect descriptor inside the table */
    set_desc(&f, ind, 2, gpa(&f, ind), 16, VRING_DESC_F_INDIRECT, 0);
    offer(&f, 0);
    CHECK_EQ(pop(&f, &why), -EINVAL);
    CHECK_STR(why, "indirect table inside an indirect table");

    const struct {
        uint64_t addr;
        uint32_t len;
        uint16_t flags;
        const char *why;
    } bad[] = {
        {GPA_BASE + 32768, 3 * 16, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, "indirect descriptor with the NEXT flag"},
        {GPA_BASE + 32768, 20, VRING_DESC_F_INDIRECT, "indirect table of a bad size"},
        {GPA_BASE + 32768, 0, VRING_DESC_F_INDIRECT, "indirect table of a bad size"},
        {GPA_BASE + 32768, 16 * 4096, VRING_DESC_F_INDIRECT, "indirect table of a bad size"},
        {GPA_BASE + MEM_SIZE - 16, 32, VRING_DESC_F_INDIRECT, "indirect table outside guest memory"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct fake g;
        setup(&g);
        set_desc(&g, g.vq.desc, 0, bad[i].addr, bad[i].len, bad[i].flags, 1);
        offer(&g, 0);
        CHECK_EQ(pop(&g, &why), -EINVAL);
        CHECK_STR(why, bad[i].why);
        teardown(&g);
    }
    /* without the feature */
    struct fake h;
    setup(&h);
    h.vq.indirect = false;
    set_desc(&h, h.vq.desc, 0, GPA_BASE + 32768, 16, VRING_DESC_F_INDIRECT, 0);
    offer(&h, 0);
    CHECK_EQ(pop(&h, &why), -EINVAL);
    CHECK_STR(why, "indirect descriptor without the feature");
    teardown(&h);
    teardown(&f);
}

UNIT_TEST(too_many_segments)
{
    struct fake f;
    setup(&f);
    f.e.iov_cap = 4;
    for (int i = 0; i < 8; i++)
        set_desc(&f, f.vq.desc, i, GPA_BASE + 65536 + i * 512, 512, i < 7 ? VRING_DESC_F_NEXT : 0, i + 1);
    offer(&f, 0);
    const char *why;
    CHECK_EQ(pop(&f, &why), -E2BIG);
    CHECK_STR(why, "too many segments in one request");
    teardown(&f);
}

UNIT_TEST(avail_index_jump)
{
    struct fake f;
    setup(&f);
    f.vq.avail->idx = QSIZE + 1;
    const char *why;
    CHECK_EQ(pop(&f, &why), -EINVAL);
    CHECK_STR(why, "available index moved by more than the queue size");
    CHECK(f.vq.broken);
    CHECK_EQ(pop(&f, &why), -EINVAL); /* stays broken */
    teardown(&f);
}

UNIT_TEST(event_idx_notification)
{
    struct fake f;
    setup(&f);
    f.vq.event_idx = true;
    set_desc(&f, f.vq.desc, 0, GPA_BASE + 65536, 1, VRING_DESC_F_WRITE, 0);
    uint16_t *used_event = &f.vq.avail->ring[QSIZE];
    *used_event = 0;
    vu_vq_push(&f.vq, 0, 1);
    CHECK(vu_vq_should_notify(&f.vq)); /* first one always */
    *used_event = 5;                   /* the driver wants to hear at 6 */
    vu_vq_push(&f.vq, 0, 1);
    CHECK(!vu_vq_should_notify(&f.vq));
    for (int i = 0; i < 4; i++)
        vu_vq_push(&f.vq, 0, 1);
    CHECK(vu_vq_should_notify(&f.vq)); /* crossed 5 */
    /* without EVENT_IDX the NO_INTERRUPT flag decides */
    f.vq.event_idx = false;
    f.vq.avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
    CHECK(!vu_vq_should_notify(&f.vq));
    f.vq.avail->flags = 0;
    CHECK(vu_vq_should_notify(&f.vq));
    /* the device asks for a kick at the next entry */
    f.vq.event_idx = true;
    f.vq.last_avail_idx = 7;
    f.vq.avail->idx = 7;
    CHECK(!vu_vq_enable_notification(&f.vq));
    CHECK_EQ(*(uint16_t *)&f.vq.used->ring[QSIZE], 7);
    teardown(&f);
}

UNIT_TEST(completions_waited_counts_past_used_event)
{
    struct fake f;
    setup(&f);
    f.vq.event_idx = true;
    uint16_t *used_event = &f.vq.avail->ring[QSIZE];
    *used_event = 3; /* the driver wants to hear when the used index passes 3 */
    for (int i = 0; i < 3; i++)
        vu_vq_push(&f.vq, 0, 1);
    CHECK_EQ(vu_vq_completions_waited(&f.vq), 0); /* not reached */
    vu_vq_push(&f.vq, 0, 1);
    CHECK_EQ(vu_vq_completions_waited(&f.vq), 1);
    vu_vq_push(&f.vq, 0, 1);
    CHECK_EQ(vu_vq_completions_waited(&f.vq), 2);
    /* interrupts off: used_event half the index space ahead */
    *used_event = (uint16_t)(f.vq.used_idx + 0x8000);
    CHECK_EQ(vu_vq_completions_waited(&f.vq), 0);
    /* across the 16-bit wrap */
    f.vq.used_idx = 0xfffe;
    *used_event = 0xfffd;
    vu_vq_push(&f.vq, 0, 1);
    vu_vq_push(&f.vq, 0, 1);
    CHECK_EQ(f.vq.used_idx, 0);
    CHECK_EQ(vu_vq_completions_waited(&f.vq), 3);
    teardown(&f);
}

UNIT_TEST(inflight_recovery_in_submission_order)
{
    struct fake f;
    setup(&f);
    uint8_t *region = calloc(1, vu_inflight_queue_size(QSIZE));
    f.vq.inflight = (struct vu_inflight_queue *)region;
    uint16_t heads[QSIZE];
    CHECK_EQ(vu_vq_inflight_recover(&f.vq, heads, QSIZE), 0); /* fresh */
    for (int i = 0; i < 4; i++)
        set_desc(&f, f.vq.desc, i, GPA_BASE + 65536, 1, VRING_DESC_F_WRITE, 0);
    offer(&f, 3);
    offer(&f, 1);
    offer(&f, 2);
    const char *why;
    for (int i = 0; i < 3; i++)
        CHECK_EQ(pop(&f, &why), 1);
    vu_vq_push(&f.vq, 1, 1); /* 1 completes; 3 and 2 are lost with the back end */
    /* a new back end maps the same region and ring */
    struct vu_vq fresh = f.vq;
    fresh.last_avail_idx = 0;
    fresh.used_idx = 0;
    CHECK_EQ(vu_vq_inflight_recover(&fresh, heads, QSIZE), 2);
    CHECK_EQ(heads[0], 3);
    CHECK_EQ(heads[1], 2);
    CHECK_EQ(fresh.last_avail_idx, 3);
    CHECK_EQ(fresh.used_idx, 1);

    /* died between publishing the used index and clearing the entry */
    f.vq.inflight->used_idx = 0;
    f.vq.inflight->last_batch_head = 1;
    f.vq.inflight->desc[1].inflight = 1;
    fresh = f.vq;
    CHECK_EQ(vu_vq_inflight_recover(&fresh, heads, QSIZE), 2);
    free(region);
    teardown(&f);
}

/* vu_vq_pop reads the avail index once per batch (avail_known): entries
 * counted then are popped without reading it again, nothing beyond them is
 * popped before it is read again, and a rebased ring (avail_known = 0, as
 * SET_VRING_BASE and inflight recovery leave it) reads it afresh. */
UNIT_TEST(pop_reads_avail_index_once_per_batch)
{
    struct fake f;
    setup(&f);
    for (int i = 0; i < QSIZE; i++)
        set_desc(&f, f.vq.desc, i, GPA_BASE + 65536, 1, VRING_DESC_F_WRITE, 0);
    offer(&f, 4);
    offer(&f, 5);
    offer(&f, 6);
    const char *why;
    CHECK(vu_vq_batch_done(&f.vq));
    CHECK_EQ(pop(&f, &why), 1);
    CHECK_EQ(f.e.head, 4);
    CHECK_EQ(f.vq.avail_known, 2);
    CHECK(!vu_vq_batch_done(&f.vq)); /* blk_queue_kick goes on */
    /* an index the driver could never write: not looked at while the batch lasts */
    f.vq.avail->idx = 3 + QSIZE + 1; /* QSIZE + 1 past the 3 offered */
    CHECK_EQ(pop(&f, &why), 1);
    CHECK_EQ(f.e.head, 5);
    CHECK(!vu_vq_batch_done(&f.vq));
    CHECK_EQ(pop(&f, &why), 1);
    CHECK_EQ(f.e.head, 6);
    CHECK_EQ(f.vq.avail_known, 0);
    CHECK(vu_vq_batch_done(&f.vq)); /* blk_queue_kick returns to the loop here */
    /* the batch is over: the next pop reads it and refuses it */
    CHECK_EQ(pop(&f, &why), -EINVAL);
    CHECK(f.vq.broken);
    /* entries the driver adds after a batch are seen by the next pop */
    f.vq.broken = false;
    f.vq.avail->idx = 3;
    CHECK_EQ(pop(&f, &why), 0);
    offer(&f, 7);
    CHECK_EQ(pop(&f, &why), 1);
    CHECK_EQ(f.e.head, 7);
    CHECK_EQ(pop(&f, &why), 0);
    /* rebased (SET_VRING_BASE to 1): the count is read again from there */
    offer(&f, 8);
    f.vq.last_avail_idx = 1;
    f.vq.avail_known = 0;
    CHECK_EQ(pop(&f, &why), 1);
    CHECK_EQ(f.e.head, 5);
    CHECK_EQ(f.vq.avail_known, 3); /* 6, 7, 8 */
    teardown(&f);
}

/* vu_vq_map_chain maps the common chains (direct or one indirect table,
 * buffers inside the last chain's region) by a walk of its own and leaves
 * every other chain to vu_vq_map_chain_general: both must give the same
 * segments, counts, sums, region hint and refusal for any chain. Random
 * chains over two regions, mostly well formed, some not in every way the
 * fast walk gives up on (zero lengths, buffers crossing or outside the
 * regions, readable after writable, bad next indices, nested indirect
 * tables, a short vector, no hint). */
UNIT_TEST(common_chain_walk_maps_as_the_general_one)
{
    struct fake f;
    setup(&f);
    add_second_region(&f);
    struct vring_desc *ind = (struct vring_desc *)(f.mem + 32768);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
#define RND() (seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17, seed)
    int mapped = 0, refused = 0;
    for (int iter = 0; iter < 20000; iter++) {
        bool indirect = RND() % 3 == 0;
        struct vring_desc *table = indirect ? ind : f.vq.desc;
        unsigned ndesc = 1 + RND() % 6, base = indirect ? 0 : 1 + RND() % (QSIZE - 7);
        bool written = false;
        for (unsigned i = 0; i < ndesc; i++) {
            uint64_t addr;
            uint32_t len = RND() % 8 ? 1 + RND() % 8192 : 0;
            switch (RND() % 16) {
            case 0: addr = GPA_BASE + MEM_SIZE - 1 - RND() % 4096; break;  /* crosses into the second region */
            case 1: addr = GPA_BASE + MEM_SIZE + RND() % 65536; break;      /* in the second one */
            case 2: addr = GPA_BASE + MEM_SIZE + 65536 + RND() % 4096; break; /* outside both */
            default: addr = GPA_BASE + 65536 + RND() % (MEM_SIZE - 2 * 65536); break;
            }
            uint16_t flags = 0;
            if (written || RND() % 3 == 0)
                flags |= VRING_DESC_F_WRITE;
            if (RND() % 40 == 0)
                flags ^= VRING_DESC_F_WRITE; /* readable after writable, now and then */
            written |= flags & VRING_DESC_F_WRITE;
            uint16_t next = (uint16_t)(indirect ? i + 1 : base + i + 1);
            if (i + 1 < ndesc)
                flags |= VRING_DESC_F_NEXT;
            if (RND() % 60 == 0)
                next = (uint16_t)(RND() % 64); /* out of range, or a loop */
            if (RND() % 80 == 0)
                flags |= VRING_DESC_F_INDIRECT;
            set_desc(&f, table, (int)(indirect ? i : base + i), addr, len, flags, next);
        }
        uint16_t head = (uint16_t)(indirect ? 0 : base);
        if (indirect) {
            uint32_t tlen = (uint32_t)(ndesc * 16);
            if (RND() % 30 == 0)
                tlen += 8; /* a bad size */
            set_desc(&f, f.vq.desc, 0, gpa(&f, ind), tlen, VRING_DESC_F_INDIRECT, 0);
        }
        f.vq.region_hint = (uint8_t)(RND() % 8 ? 0 : RND() % 3); /* 2: no such region */
        struct vu_vq vq2 = f.vq;
        struct iovec iov2[64];
        struct vu_elem e2 = {.iov = iov2, .iov_cap = RND() % 4 ? 64 : 1 + (int)(RND() % 4)};
        f.e.iov_cap = e2.iov_cap;
        const char *why = "", *why2 = "";
        int rc = vu_vq_map_chain(&f.vq, &f.m, head, &f.e, &why);
        int rc2 = vu_vq_map_chain_general(&vq2, &f.m, head, &e2, &why2);
        CHECK_EQ(rc, rc2);
        if (rc != rc2)
            break;
        if (rc < 0) {
            CHECK_STR(why, why2);
            refused++;
            continue;
        }
        mapped++;
        CHECK_EQ(f.e.head, e2.head);
        CHECK_EQ(f.e.out_num, e2.out_num);
        CHECK_EQ(f.e.in_num, e2.in_num);
        CHECK_EQ(f.e.out_bytes, e2.out_bytes);
        CHECK_EQ(f.e.in_bytes, e2.in_bytes);
        CHECK_EQ(f.vq.region_hint, vq2.region_hint);
        for (int i = 0; i < f.e.out_num + f.e.in_num; i++) {
            CHECK(f.iov[i].iov_base == iov2[i].iov_base);
            CHECK_EQ(f.iov[i].iov_len, iov2[i].iov_len);
        }
    }
#undef RND
    CHECK(mapped > 5000);
    CHECK(refused > 1000);
    teardown(&f);
}
