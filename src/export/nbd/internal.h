/* SPDX-License-Identifier: MIT */
/*
 * The NBD server's parts (one file per phase of the protocol, as nbdkit
 * splits its server): server.c listens, accepts and runs each connection;
 * handshake.c negotiates options up to NBD_OPT_GO; transmission.c reads
 * requests, runs them on the backend and sends the replies; exports.c
 * keeps the exports (the export type table). The server, the handshake
 * and the lists run on the main loop; a connection's transmission runs on
 * the loop of its export's node (transmission.c: serve_loop), as qsd
 * serves an export in its node's AioContext.
 */
#ifndef VBD_NBD_SERVER_INTERNAL_H
#define VBD_NBD_SERVER_INTERNAL_H

#include "vbd/coroutine.h"
#include "vbd/export.h"
#include "vbd/loop.h"
#include "vbd/nbd-protocol.h"
#include "vbd/tls.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#define NBD_MAX_OPTION_LEN   (64 * 1024)        /* a longer option ends the connection */
#define NBD_MAX_NAME_LEN     4096
#define NBD_MAX_REQUEST      (32u * 1024 * 1024) /* advertised maximum block size */
#define NBD_SLOTS            64                  /* requests in flight per connection */
/* Data buffers a client can make us hold: in flight, and kept for reuse.
 * Without a bound, 64 maximum-size requests pin 2 GiB per connection. */
#define NBD_MAX_INFLIGHT_BYTES (64u * 1024 * 1024)
#define NBD_MAX_KEPT_BYTES     (64u * 1024 * 1024)
#define NBD_MAX_EXTENTS      256
/* A block status reply goes out this many contexts' chunks at a time (the
 * last batch carries NBD_REPLY_FLAG_DONE): a reply's iovecs and chunk
 * headers are bounded (NBD_REPLY_PARTS, NBD_REPLY_SMALL) however many
 * bitmaps the export has. */
#define NBD_STATUS_BATCH     3
#define NBD_HANDSHAKE_NS     (10ull * 1000000000) /* a client that stalls in the handshake is dropped */
/* Stopping (an export shut down, the server stopped): the replies of the
 * requests in flight still go out, for this long; then the connections
 * left are cut. A client that does not read its replies otherwise held
 * the daemon's SIGTERM forever (QEMU cuts them at once). */
#define NBD_STOP_GRACE_NS    (3ull * 1000000000)
/* A node move waits this long at most for the export's connections to
 * follow (nbd_export_node_moved); normally a few loop iterations. */
#define NBD_MOVE_WAIT_NS     (10ull * 1000000000)
/* Meta context ids: the export's bitmaps are META_BITMAP + their index in
 * e->bitmaps (QEMU's numbering, one up: vbd never hands out id 0). */
#define META_ALLOCATION      1u
#define META_DEPTH           2u
#define META_BITMAP          3u

struct nbd_export {
    struct vbd_export base;
    char *id, *name, *description;
    /* each exported as the meta context qemu:dirty-bitmap:NAME, listed and
     * answered in this order (qemu-nbd -B ... -B ..., qsd's bitmaps list) */
    char **bitmaps;
    struct vbd_dirty_bitmap **mem_bitmaps; /* nbitmaps: each in-memory one (busy while exported), else NULL */
    struct vbd_node **bitmap_nodes;        /* nbitmaps: the node holding each (a reference) */
    uint32_t nbitmaps;
    struct vbd_backend *be;
    bool writable;
    bool allocation_depth; /* the qemu:allocation-depth meta context is offered */
    struct nbd_export *next;
};

#define NBD_REPLY_PARTS      40   /* iovecs of one reply: up to 16 read runs, a header and data each */
#define NBD_REPLY_SMALL      17   /* chunk headers with their small payloads */
#define NBD_OUT_IOV          512  /* replies gathered into one send */
/* Request headers and small writes are read ahead, NBD_RBUF at a time. A
 * batch read takes at most 15 4K writes then, and their replies go out
 * before the next read. 256 KiB (a QD32 client's 4K writes whole) was tried:
 * fio 4K randwrite QD32 over unix lost 2-11 % in 7 of 7 pairs (one read
 * took the client's whole queue and fio idled until all 32 replies came),
 * TCP moved within its noise. */
#define NBD_RBUF             (64 * 1024)
/* conn_recv busy-polls the socket before it waits for the next request, for
 * a window that adapts per connection like KVM's halt_poll_ns, bounded by
 * the poll-max-ns of the loop it is served on (an iothread's, qom-set
 * applies it; the main loop's default; 0: no spin): it starts at
 * NBD_POLL_NS; a request that came after the window ran out but within
 * the bound of the spin's start doubles it (from NBD_POLL_GROW_NS when
 * it was off), one that came later halves it (off below NBD_POLL_GROW_NS).
 * A spin that catches its request leaves it as it is. */
#define NBD_POLL_NS          (32 * 1000)
#define NBD_POLL_GROW_NS     (4 * 1000)
#define NBD_POLL_MAX_INFLIGHT (256 * 1024) /* ... unless this much data is in flight */
/* Request batching (see conn_recv): while a client keeps requests on
 * the way, sleep NBD_BATCH_MIN_NS..NBD_BATCH_MAX_NS between reads, sized
 * (from the last reads) for NBD_BATCH_REQS requests, up to
 * NBD_BATCH_REQS_MAX for a client seen keeping twice that many on the way
 * (the sleep's bound then grows in proportion; see batch_target), no sleep
 * after a read of twice the batch; NBD_BATCH_EMPTY sleeps
 * in a row that find nothing end it (busy-poll again) and it is tried
 * again after NBD_BATCH_PROBE requests (NBD_BATCH_PROBE_DEEP for a client
 * whose batches were above NBD_BATCH_REQS). */
#define NBD_BATCH_REQS       4
#define NBD_BATCH_REQS_MAX   8
#define NBD_BATCH_WINDOW     128 /* batch reads over which the client's depth is judged */
#define NBD_BATCH_MIN_NS     (8 * 1000)
#define NBD_BATCH_MAX_NS     (60 * 1000)
#define NBD_BATCH_EMPTY      4
#define NBD_BATCH_PROBE      1024
#define NBD_BATCH_PROBE_DEEP 32
#define NBD_BATCH_SLICE_NS   (100 * 1000) /* the loop thread's EEVDF slice while batching (see batch_slice) */
/* ... taken only while the thread waits to run (see slice_gate) */
#define NBD_SLICE_SAMPLE_NS  (1000 * 1000) /* run-queue delay sampled every ms */
#define NBD_SLICE_WINDOW     16            /* samples judged together */
#define NBD_SLICE_ON_PCT     10            /* waited more than this share of a window: on */
#define NBD_SLICE_OFF_PCT    2             /* ... less, NBD_SLICE_OFF_WINDOWS such windows: off */
#define NBD_SLICE_OFF_WINDOWS 4
#define NBD_SLICE_KEEP_NS    (100ull * 1000 * 1000) /* a busy sample this recent counts at a session's start */
#define NBD_ZERO_COPY_MIN    (64 * 1024)  /* reads at least this large go out with sendfile(2) */
/* Structured reads at least this large look for holes (block status) to
 * send them as hole chunks. Below it the query costs more than the zeroes
 * it saves: a 4 KiB hole chunk spares the client 4 KiB of copying, the
 * status walk through the node graph costs the server about as much as the
 * read (4K random reads over a unix socket: 4.5-4.9 us of server CPU per
 * request without it, 5.1-5.6 with it), and a cold extent cache sends it to
 * SEEK_HOLE, which on tmpfs scans the rest of the file (3 ms for 1 GiB) on
 * the loop thread. nbdkit's file plugin never sends holes in reads. */
#define NBD_SPARSE_READ_MIN  (64 * 1024)
#define NBD_ZC_PIPE_SIZE     (1024 * 1024)    /* splice pipe of a connection: one 1 MiB reply at once */
#define NBD_UNIX_SNDBUF      (4 * 1024 * 1024) /* SO_SNDBUF of a unix socket: several 1 MiB replies */

struct nbd_conn;
struct nbd_req {
    struct nbd_conn *c;
    uint16_t flags, type;
    uint64_t cookie, offset;
    uint32_t len;
    uint8_t *buf;
    size_t cap;
    struct nbd_req *next;
    /* the reply being built: pieces point into small[], buf or ext */
    struct iovec riov[NBD_REPLY_PARTS];
    int rn, nsmall;
    uint8_t small[NBD_REPLY_SMALL][32];
    uint8_t *ext; /* block status payloads (NBD_STATUS_BATCH contexts), allocated on first use */
    bool counted; /* its length is in c->inflight_bytes */
};

struct nbd_conn {
    struct vbd_chan ch; /* the socket, and its TLS session once STARTTLS is done */
    struct nbd_export *exp;
    /* The export a handshake reply is about while it is being sent (the
     * sends yield): an export being removed (block-export-del) waits for
     * it as for exp, or it would be freed under the handshake. */
    struct nbd_export *pinned;
    bool structured, no_zeroes;
    /* The meta contexts NBD_OPT_SET_META_CONTEXT selected, for meta_exp:
     * base:allocation, qemu:allocation-depth and, by the index in
     * meta_exp->bitmaps, its bitmaps. A GO to another export drops them
     * (QEMU's nbd_check_meta_export); so does meta_exp's removal. */
    struct nbd_export *meta_exp;
    bool meta_alloc, meta_depth;
    bool *meta_bitmaps; /* meta_exp->nbitmaps entries; NULL: none */
    uint32_t meta_count;  /* contexts selected: 0, no block status */
    /* Set by the main loop (an export's removal, the server's stop) while
     * the connection runs on its serving loop: atomic. */
    atomic_bool closing;
    /* Transmission runs on serve_loop, the home loop of the export's node
     * when it started or last moved (an iothread: held, so object-del
     * cannot stop it under the connection); ctl_loop is the main loop,
     * where it was accepted and where it ends. */
    struct vbd_loop *ctl_loop, *serve_loop;
    /* Following a node move at once (nbd_export_node_moved): the mover,
     * on serve_loop, cancels idle_wait, the reader's wait for a header of
     * which nothing has come yet; the cancel stays latched there until the
     * reader, before its next header, has looked at the node's loop (a
     * kick while it served a request is seen then). served_next: the
     * connections served on a thread (transmission.c, served_here), only
     * touched there. kick_gen / homed_gen (main loop): the move that
     * kicked it, the last one it settled after (serve_on). */
    struct vbd_poll_wait idle_wait;
    struct nbd_conn *served_next;
    uint64_t kick_gen, homed_gen;
    int inflight;
    /* Replies of requests that finish in the same loop iteration leave in
     * one send: requests queue their pieces and wait; the flusher sends. */
    struct iovec *out, *out_spare;
    int out_n;
    uint64_t out_gen, sent_gen; /* batch being filled / last batch sent */
    int send_err;
    bool flusher_running, flush_stop;
    struct vbd_co_queue flush_q, sent_q, space_q, flusher_exit_q;
    struct vbd_co_mutex send_lock; /* one reply at a time on the socket: the flusher's batch or a sendfile reply */
    int zc_pipe[2];                /* splice's pipe for zero-copy reads, made on the first */
    size_t zc_pipe_size;           /* its capacity; 0: none yet (or it could not be made) */
    bool zero_copy_ok;             /* zero-copy reads allowed: unix or TCP (not TLS); see send_read_zero_copy */
    uint64_t inflight_bytes; /* data of the reads and writes in flight */
    uint64_t buf_bytes;      /* the slots' data buffers (r->cap), in flight or kept */
    uint8_t *rbuf; /* plain sockets: read-ahead of the request stream */
    size_t rpos, rlen;
    bool batching;        /* reading in batches (see conn_recv) */
    uint32_t batch_probe; /* requests until batching is tried (again) */
    uint32_t batch_unit;  /* bytes of one request on the wire */
    uint32_t batch_empty; /* batch sleeps in a row that found nothing */
    uint64_t batch_ns;    /* the next batch sleep */
    uint32_t batch_reqs;  /* requests a batch is sized for (see batch_target) */
    uint32_t batch_depth; /* most requests one read brought in the last window ... */
    uint32_t batch_win;   /* ... and in this one so far */
    uint32_t batch_reads; /* batch reads in this window */
    uint32_t batch_got;   /* requests parsed since the last batch read */
    uint64_t poll_ns;     /* conn_recv's busy-poll window (see NBD_POLL_NS) */
    bool client_waited;   /* the last socket read had to wait for the client (see conn_recv) */
    uint32_t batch_sess_max; /* most requests one read brought since batching (re)started */
    bool batch_resume;    /* the last session saw the client deep: see batch_count */
    struct vbd_co_queue slot_q, drain_q;
    struct nbd_req slots[NBD_SLOTS];
    struct nbd_req *free_slots;
    struct vbd_timer handshake_timer;
    struct nbd_conn *next;
};

#define NBD_MAX_LISTENERS 16

struct nbd_server {
    bool running, stopping;
    /* inet: one socket per address the host resolves to (QEMU's
     * QIONetListener: "localhost" may be ::1 and 127.0.0.1, "" both
     * wildcards); unix: one */
    int listen_fds[NBD_MAX_LISTENERS];
    int nlisten;
    char *unix_path;
    uint32_t max_connections;
    int nconns;
    struct nbd_conn *conns;
    struct nbd_export *exports;
    struct vbd_tls_creds *tls; /* set: TLS is required (NBD_OPT_STARTTLS first) */
    struct vbd_authz *authz;   /* set: the client certificate's DN must be allowed by it */
    struct vbd_co_queue idle_q; /* woken when a connection ends and when accepting stops */
    int accepting; /* accept loops still running (one per listening socket) */
    bool accept_lacking; /* accept is short of fds or memory (vbd_co_accept_backoff) */
    uint64_t last_client_gone; /* times a negotiated connection ended leaving none */
    struct vbd_co_queue rehome_q; /* woken when a connection changes loops or ends its transmission */
    uint64_t kick_gen;            /* node moves that kicked connections (nbd_export_node_moved) */
};

/* The one server of the process (server.c). */
extern struct nbd_server srv;

/* handshake.c: returns 0 when transmission should start (c->exp is set),
 * <0 to drop the connection. */
int nbd_handshake(struct nbd_conn *c);
/* transmission.c: serves requests until the client leaves or c->closing,
 * then waits for the requests in flight. */
void nbd_transmission(struct nbd_conn *c);
/* transmission.c, main loop coroutine: e's node moved to another loop;
 * returns once e's connections serve from there (idle ones are woken to
 * follow), or after NBD_MOVE_WAIT_NS (one busy on a request that does not
 * end follows later, between two requests). */
void nbd_export_node_moved(struct nbd_export *e);
/* exports.c: the export a client asks for by name ("" is the only one). */
struct nbd_export *nbd_find_export(const char *name);
/* Bitmap i of export e: see vbd_dirty_bitmap_status. */
int nbd_export_bitmap_status(struct nbd_export *e, uint32_t i, uint64_t off, uint64_t bytes, uint64_t *pnum);
/* handshake.c: forgets the meta contexts c selected (an export gone, a GO
 * to another one, the connection's end). */
void nbd_meta_reset(struct nbd_conn *c);
/* A request failed on the node: QMP's BLOCK_IO_ERROR (action report: the
 * client gets the error). */
void nbd_export_io_error(struct nbd_export *e, bool write, int err);

#endif
