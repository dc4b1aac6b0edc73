/* SPDX-License-Identifier: MIT */
/*
 * The QMP monitor: --chardev socket (unix or loopback TCP, server side) or
 * stdio and --monitor [pretty=on], as qemu-storage-daemon has them.
 *
 * One client per chardev at a time, as QEMU's socket chardev: a second
 * connection waits in the listen backlog until the first one closes. Each
 * client has two coroutines on the main loop: the reader parses requests
 * and runs them one at a time (vbd_qmp_dispatch), the writer sends the
 * output queue (replies and events) whenever the socket is writable; the
 * socket is non-blocking, so the main loop never waits for a client.
 *
 * Bounds (a hostile or stuck client cannot grow the daemon):
 *  - input: one JSON value is at most QMP_MAX_REQUEST bytes and nests at
 *    most QMP_MAX_DEPTH levels (json-stream.c); beyond: an error reply and
 *    the rest of the line is skipped; a client that keeps sending after
 *    that without a newline is disconnected.
 *  - output: above QMP_OUT_SOFT queued bytes the reader stops reading (a
 *    client that does not read its replies gets no new ones: back-pressure);
 *    replies come only from requests, so at most one reply passes the soft
 *    bound. Events do not wait for requests: an event that would take the
 *    queue past QMP_OUT_HARD disconnects the client. Dropping the event
 *    instead would leave the client believing in state that changed (an
 *    export it thinks is there) without any sign; a closed connection is
 *    a sign every QMP client handles (reconnect, query again). (QEMU keeps
 *    whatever the chardev did not take in the monitor's output buffer,
 *    without a bound, and drops nothing but rate-limited guest events.)
 */
#include "daemon/daemon.h"
#include "qmp/monitor.h"
#include "qmp/chardev.h"

#include "util/socket.h"
#include "vbd/alloc.h"
#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"
#include "vbd/qmp.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <json-c/json.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define QMP_OUT_SOFT (1u << 20)
#define QMP_OUT_HARD (4u << 20)

struct out_msg {
    struct out_msg *next;
    size_t len, off;
    char data[];
};

struct qmp_client {
    int fd;     /* input: the socket, or stdin */
    int fd_out; /* output: the socket, or stdout */
    /* stdio (not a socket): shutdown cannot end the coroutines' waits, a
     * cancel of these does */
    bool is_stdio;
    struct vbd_poll_wait in_wait, out_wait;
    bool pretty; /* --monitor pretty=on: QEMU's indented layout */
    bool negotiated;
    bool closing;     /* stop reading, writer finishes */
    bool writer_done;
    bool writer_busy; /* in vbd_co_send with the head message */
    struct out_msg *out_head, *out_tail;
    size_t out_bytes;
    struct json_object *quit_reply; /* held until the daemon has stopped (vbd_qmp_shutdown) */
    struct vbd_co_queue writer_wait; /* writer: queue empty */
    struct vbd_co_queue reader_wait; /* reader: queue over the soft bound, or waiting for the writer */
    struct qmp_stream stream;
    char buf[65536]; /* input; one per client: a command may yield while another client reads */
};

struct qmp_monitor {
    struct qmp_chardev *chr;
    struct qmp_client *client; /* the connected one, or NULL */
    bool done;                 /* accept loop ended */
    bool pretty;               /* pretty=on */
    bool accept_lacking;       /* accept is short of fds or memory (vbd_co_accept_backoff) */
    char accept_what[160];     /* "QMP on 'ID'", for its lines */
    struct qmp_monitor *next;
};

static struct qmp_monitor *monitors;
static bool stopping, quit_requested;
/* The daemon is stopping (vbd_qmp_quiesce): no command runs any more, but
 * the clients stay connected for the events of the stop itself. */
static bool quiesced;
static struct vbd_co_queue monitors_done_q = VBD_CO_QUEUE_INIT;
static struct vbd_loop *main_loop;

/* ---- output ---- */

/* Send what is queued as far as the socket takes it now, without waiting. */
static void flush_now(struct qmp_client *c)
{
    if (c->writer_busy)
        return; /* the writer is in a send of the head message: it owns it until it returns */
    while (c->out_head) {
        struct out_msg *m = c->out_head;
        ssize_t n = c->is_stdio ? write(c->fd_out, m->data + m->off, m->len - m->off) /* non-blocking */
                                : send(c->fd_out, m->data + m->off, m->len - m->off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n <= 0)
            break;
        m->off += (size_t)n;
        c->out_bytes -= (size_t)n;
        if (m->off < m->len)
            break;
        c->out_head = m->next;
        if (!c->out_head)
            c->out_tail = NULL;
        free(m);
    }
}

/* flush: the last replies (an error that explains why) go out first if the
 * socket takes them without waiting. */
static void client_drop(struct qmp_client *c, const char *why, bool flush)
{
    if (c->closing)
        return;
    if (why)
        vbd_warn("QMP: disconnecting a client: %s", why);
    if (flush)
        flush_now(c);
    c->closing = true;
    if (c->is_stdio) {
        vbd_co_poll_wait_cancel(&c->in_wait);
        vbd_co_poll_wait_cancel(&c->out_wait);
    } else {
        shutdown(c->fd, SHUT_RDWR); /* wakes both coroutines out of their polls */
    }
    vbd_co_queue_wake_all(&c->writer_wait);
    vbd_co_queue_wake_all(&c->reader_wait);
}

/* Queue text + "\r\n" (QEMU's monitor ends every line so). */
static bool client_queue(struct qmp_client *c, const char *text, size_t len, bool is_event)
{
    if (c->closing)
        return false;
    if (is_event && c->out_bytes + len + 2 > QMP_OUT_HARD) {
        client_drop(c, "it does not read its output (events queued past the bound)", false);
        return false;
    }
    struct out_msg *m = malloc(sizeof(*m) + len + 2);
    if (!m) {
        client_drop(c, "out of memory", false);
        return false;
    }
    memcpy(m->data, text, len);
    memcpy(m->data + len, "\r\n", 2);
    m->len = len + 2;
    m->off = 0;
    m->next = NULL;
    if (c->out_tail)
        c->out_tail->next = m;
    else
        c->out_head = m;
    c->out_tail = m;
    c->out_bytes += m->len;
    vbd_co_queue_wake_one(&c->writer_wait);
    return true;
}

/* Growable text for one message. */
struct text {
    char *p;
    size_t len, cap;
    bool failed;
};

static void text_add(struct text *t, const char *s, size_t n)
{
    if (t->failed)
        return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *p = realloc(t->p, cap);
        if (!p) {
            t->failed = true;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = 0;
}

/* pretty=on: a new line ("\r\n": QEMU's monitor writes every '\n' so)
 * indented 4 spaces a level; nothing when level < 0 (one line) */
static void text_newline(struct text *t, int level)
{
    if (level < 0)
        return;
    text_add(t, "\r\n", 2);
    for (int i = 0; i < level; i++)
        text_add(t, "    ", 4);
}

/* QEMU's layout, {"key": value, "key": [1, 2]}, so a session reads the same
 * as with qemu-storage-daemon; '/' is not escaped (paths stay readable).
 * level >= 0: pretty=on's layout as QEMU's qobject_to_json_pretty, members
 * one a line at level + 1 (an empty object or list too: "{", "}" on two
 * lines); -1: one line. */
static void text_json(struct text *t, struct json_object *o, int level)
{
    int inner = level < 0 ? -1 : level + 1;
    const char *sep = level < 0 ? ", " : ",";
    switch (json_object_get_type(o)) {
    case json_type_object: {
        bool first = true;
        text_add(t, "{", 1);
        json_object_object_foreach(o, key, val)
        {
            if (!first)
                text_add(t, sep, strlen(sep));
            first = false;
            text_newline(t, inner);
            struct json_object *k = json_object_new_string(key);
            const char *ks = json_object_to_json_string_ext(k, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
            text_add(t, ks, strlen(ks));
            json_object_put(k);
            text_add(t, ": ", 2);
            text_json(t, val, inner);
        }
        text_newline(t, level);
        text_add(t, "}", 1);
        break;
    }
    case json_type_array: {
        size_t n = json_object_array_length(o);
        text_add(t, "[", 1);
        for (size_t i = 0; i < n; i++) {
            if (i)
                text_add(t, sep, strlen(sep));
            text_newline(t, inner);
            text_json(t, json_object_array_get_idx(o, i), inner);
        }
        text_newline(t, level);
        text_add(t, "]", 1);
        break;
    }
    default: {
        size_t n;
        const char *s = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
        text_add(t, s, n);
        break;
    }
    }
}

/* The message as text (malloc'd; one line unless pretty), or NULL. */
static char *json_line(struct json_object *o, bool pretty, size_t *len)
{
    struct text t = {0};
    text_json(&t, o, pretty ? 0 : -1);
    if (t.failed || !t.p) {
        free(t.p);
        return NULL;
    }
    *len = t.len;
    return t.p;
}

static void client_queue_json(struct qmp_client *c, struct json_object *o, bool is_event)
{
    size_t len;
    char *s = json_line(o, c->pretty, &len);
    if (!s) {
        client_drop(c, "out of memory", false);
        return;
    }
    client_queue(c, s, len, is_event);
    free(s);
}

/* Some of buf written (>= 0) or -errno; the wait for room is cancelled by client_drop. */
static ssize_t client_send(struct qmp_client *c, const void *buf, size_t len)
{
    if (!c->is_stdio)
        return vbd_co_send(c->fd_out, buf, len);
    for (;;) {
        ssize_t n = write(c->fd_out, buf, len); /* stdout: non-blocking (chardev.c) */
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int r = vbd_co_poll_wait(&c->out_wait, c->fd_out, POLLOUT);
        if (r < 0)
            return r;
    }
}

static void writer_co(void *opaque)
{
    struct qmp_client *c = opaque;
    for (;;) {
        while (!c->out_head && !c->closing)
            vbd_co_queue_wait(&c->writer_wait);
        if (!c->out_head)
            break;
        struct out_msg *m = c->out_head;
        c->writer_busy = true;
        ssize_t n = client_send(c, m->data + m->off, m->len - m->off);
        c->writer_busy = false;
        if (n <= 0) {
            client_drop(c, NULL, false); /* the peer went away */
            break;
        }
        m->off += (size_t)n;
        c->out_bytes -= (size_t)n;
        if (m->off == m->len) {
            c->out_head = m->next;
            if (!c->out_head)
                c->out_tail = NULL;
            free(m);
        }
        if (c->out_bytes <= QMP_OUT_SOFT)
            vbd_co_queue_wake_all(&c->reader_wait);
    }
    c->writer_done = true;
    vbd_co_queue_wake_all(&c->reader_wait);
}

/* ---- input ---- */

static struct json_object *error_reply(const char *desc, bool has_id, struct json_object *id)
{
    struct json_object *reply = json_object_new_object(), *e = json_object_new_object();
    json_object_object_add(e, "class", json_object_new_string(VBD_QMP_GENERIC_ERROR));
    json_object_object_add(e, "desc", json_object_new_string(desc));
    json_object_object_add(reply, "error", e);
    if (has_id)
        json_object_object_add(reply, "id", json_object_get(id));
    return reply;
}

/* qmp_capabilities {"enable": [..., "oob", ...]} (already checked by the dispatcher) */
static bool wants_oob(struct json_object *req)
{
    struct json_object *args, *enable;
    if (!json_object_object_get_ex(req, "arguments", &args) || !json_object_object_get_ex(args, "enable", &enable) ||
        !json_object_is_type(enable, json_type_array))
        return false;
    for (size_t i = 0; i < json_object_array_length(enable); i++) {
        const char *cap = json_object_get_string(json_object_array_get_idx(enable, i));
        if (cap && !strcmp(cap, "oob"))
            return true;
    }
    return false;
}

static struct vbd_co_mutex dispatch_lock = VBD_CO_MUTEX_INIT;

/* A block job's graph change at its end takes the commands' lock too, and
 * so do SIGHUP's and SIGUSR1's walks. A coroutine lock: its state and its
 * waiters are the main loop's, so a taker that moved to an iothread would
 * corrupt them (two threads on one wait queue); asserted, it is cheap. */
void vbd_qmp_graph_lock(void)
{
    assert(vbd_thread_is_main() && vbd_in_co());
    vbd_co_mutex_lock(&dispatch_lock);
}

void vbd_qmp_graph_unlock(void)
{
    assert(vbd_thread_is_main());
    vbd_co_mutex_unlock(&dispatch_lock);
}

static void on_request(void *opaque, struct json_object *req, const char *parse_error)
{
    struct qmp_client *c = opaque;
    struct json_object *reply;
    /* back-pressure per request: one read may hold many small requests */
    while (c->out_bytes > QMP_OUT_SOFT && !c->closing)
        vbd_co_queue_wait(&c->reader_wait);
    if (c->closing || quiesced || quit_requested)
        return; /* the daemon stops: nothing more is answered, a parse error neither */
    if (parse_error) {
        reply = error_reply(parse_error, false, NULL);
    } else {
        bool is_caps = false;
        struct json_object *exec;
        if (json_object_is_type(req, json_type_object) && json_object_object_get_ex(req, "execute", &exec) &&
            json_object_is_type(exec, json_type_string))
            is_caps = !strcmp(json_object_get_string(exec), "qmp_capabilities");
        /* One command at a time across every monitor, as QEMU's dispatcher:
         * a handler may yield (drain, flush) and must not find the graph
         * changed under it by another client's command meanwhile. */
        vbd_co_mutex_lock(&dispatch_lock);
        /* closed while it waited its turn, or the daemon stops: after quit
         * or a signal no command runs and none is answered, as qsd's
         * dispatcher takes no request once its main loop has ended */
        if (c->closing || quiesced || quit_requested) {
            vbd_co_mutex_unlock(&dispatch_lock);
            return;
        }
        reply = vbd_qmp_dispatch(req, c->negotiated);
        /* whatever the command changed in the graph (a snapshot's overlay,
         * a job's end, a child swapped), the image locks follow; the
         * commands that add a user took its locks before (a conflict
         * refused them) and this changes nothing there */
        if (!is_caps) {
            struct vbd_error *le = NULL;
            if (vbd_qmp_image_locks_refresh(&le) < 0)
                vbd_log(VBD_LOG_WARN, "image locks: %s", le ? le->msg : "failed");
            vbd_error_free(le);
        }
        vbd_co_mutex_unlock(&dispatch_lock);
        if (quit_requested && !c->quit_reply && json_object_object_get_ex(reply, "return", NULL)) {
            /* quit's reply comes after the events of the stop, once the
             * nodes are flushed (qsd sends it from monitor_cleanup): a
             * client that has it knows the images are consistent */
            c->quit_reply = reply;
            return;
        }
        if (is_caps && json_object_object_get_ex(reply, "return", NULL)) {
            if (wants_oob(req)) {
                /* QEMU's answer where out-of-band is not offered: commands run in order here */
                struct json_object *id = NULL;
                bool has_id = json_object_object_get_ex(req, "id", &id);
                json_object_put(reply);
                reply = error_reply("Capability oob not available", has_id, id);
            } else {
                c->negotiated = true;
            }
        }
    }
    client_queue_json(c, reply, false);
    json_object_put(reply);
}

static void greet(struct qmp_client *c)
{
    struct json_object *g = json_object_new_object(), *q = json_object_new_object();
    json_object_object_add(q, "version", vbd_qmp_version());
    json_object_object_add(q, "capabilities", json_object_new_array()); /* no OOB: commands run in order */
    json_object_object_add(g, "QMP", q);
    client_queue_json(c, g, false);
    json_object_put(g);
}

/* A client on fd (a socket, closed at the end), or on the stdio chardev
 * (fd_out: stdout; stdin and stdout stay open). */
static void serve_client(struct qmp_monitor *mon, int fd, int fd_out, bool is_stdio)
{
    struct qmp_client *c = calloc(1, sizeof(*c));
    if (!c) {
        if (!is_stdio)
            close(fd);
        return;
    }
    c->fd = fd;
    c->fd_out = fd_out;
    c->is_stdio = is_stdio;
    c->pretty = mon->pretty;
    int one = 1;
    if (!is_stdio)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* TCP: replies go out at once (fails harmlessly on unix) */
    qmp_stream_init(&c->stream, on_request, c);
    mon->client = c;
    greet(c);
    vbd_co_wake(vbd_co_create(writer_co, c));
    while (!c->closing && !stopping) {
        while (c->out_bytes > QMP_OUT_SOFT && !c->closing)
            vbd_co_queue_wait(&c->reader_wait);
        if (c->closing)
            break;
        ssize_t n = is_stdio ? vbd_co_recv_cancellable(fd, c->buf, sizeof(c->buf), &c->in_wait)
                             : vbd_co_recv(fd, c->buf, sizeof(c->buf));
        if (n <= 0)
            break;
        if (qmp_stream_feed(&c->stream, c->buf, (size_t)n) < 0) {
            client_drop(c, "it keeps sending a request over the size bound", true);
            break;
        }
    }
    /* EOF right after quit (a script's input ends with it): quit's reply,
     * held until the daemon has stopped, still goes out, as qsd's does;
     * vbd_qmp_shutdown queues it and drops the client */
    while (c->quit_reply && !c->closing)
        vbd_co_queue_wait(&c->reader_wait);
    /* EOF: the client may have half-closed and still read the replies */
    c->closing = true;
    vbd_co_queue_wake_all(&c->writer_wait);
    while (!c->writer_done)
        vbd_co_queue_wait(&c->reader_wait);
    mon->client = NULL;
    json_object_put(c->quit_reply); /* the client went away first */
    for (struct out_msg *m = c->out_head, *next; m; m = next) {
        next = m->next;
        free(m);
    }
    qmp_stream_destroy(&c->stream);
    if (!is_stdio)
        close(fd);
    free(c);
}

static void monitor_co(void *opaque)
{
    struct qmp_monitor *mon = opaque;
    if (mon->chr->listen_fd < 0) {
        /* stdio: one client, the process that started the daemon; after
         * its EOF the daemon runs on without a monitor there, as qsd */
        serve_client(mon, mon->chr->fd_in, mon->chr->fd, true);
        mon->done = true;
        vbd_co_queue_wake_all(&monitors_done_q);
        return;
    }
    while (!stopping) {
        int fd = vbd_co_accept(mon->chr->listen_fd, NULL, NULL);
        if (fd < 0 && (stopping || fd == -EINVAL || fd == -EBADF))
            break;
        if (vbd_co_accept_backoff(&mon->accept_lacking, fd, mon->accept_what) || fd < 0)
            continue;
        serve_client(mon, fd, fd, false);
    }
    mon->done = true;
    vbd_co_queue_wake_all(&monitors_done_q);
}

/* ---- events ---- */

struct pending_event {
    struct pending_event *next;
    struct json_object *msg;
};
static pthread_mutex_t events_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pending_event *events_head, **events_tail = &events_head;
static bool events_bh_scheduled;
static struct vbd_bh events_bh;

static void broadcast(struct json_object *msg)
{
    size_t len[2] = {0, 0};
    char *s[2] = {NULL, NULL}; /* one line, pretty: each made once, if a monitor wants it */
    for (struct qmp_monitor *mon = monitors; mon; mon = mon->next) {
        if (!mon->client || !mon->client->negotiated)
            continue;
        int p = mon->pretty;
        if (!s[p])
            s[p] = json_line(msg, p, &len[p]);
        if (s[p])
            client_queue(mon->client, s[p], len[p], true);
    }
    free(s[0]);
    free(s[1]);
}

/*
 * Events a guest can raise as often as it likes (a quorum child read over
 * and over) go out at most once a second, as QEMU's
 * monitor_qapi_event_conf: the first at once, and the latest of those that
 * come within the second when it ends (the ones between are dropped).
 * QUORUM_REPORT_BAD is limited per child (node-name), as QEMU's hash.
 * Main loop only (send_events and the timers).
 */
#define EVENT_RATE_NS 1000000000ull
struct event_limit {
    char name[32], key[128];
    struct json_object *pending; /* the latest held back, or NULL */
    struct vbd_timer timer;
    struct event_limit *next;
};
static struct event_limit *event_limits;

static const char *limit_key(const char *name, struct json_object *msg)
{
    if (!strcmp(name, "QUORUM_FAILURE"))
        return "";
    if (strcmp(name, "QUORUM_REPORT_BAD"))
        return NULL;
    struct json_object *data, *nn;
    if (json_object_object_get_ex(msg, "data", &data) && json_object_object_get_ex(data, "node-name", &nn))
        return json_object_get_string(nn);
    return "";
}

static void event_limit_end(void *arg)
{
    struct event_limit *l = arg;
    if (l->pending) {
        /* sent now, and the next second starts */
        broadcast(l->pending);
        json_object_put(l->pending);
        l->pending = NULL;
        vbd_timer_arm(&l->timer, vbd_clock_ns() + EVENT_RATE_NS);
        return;
    }
    for (struct event_limit **p = &event_limits; *p; p = &(*p)->next)
        if (*p == l) {
            *p = l->next;
            break;
        }
    free(l);
}

/* Takes msg: sent, held back or dropped. */
static void send_limited(struct json_object *msg)
{
    struct json_object *ev;
    const char *name = json_object_object_get_ex(msg, "event", &ev) ? json_object_get_string(ev) : "";
    const char *key = limit_key(name, msg);
    if (!monitors) { /* after vbd_qmp_shutdown: nobody to send to */
        json_object_put(msg);
        return;
    }
    if (!key) {
        broadcast(msg);
        json_object_put(msg);
        return;
    }
    for (struct event_limit *l = event_limits; l; l = l->next)
        if (!strcmp(l->name, name) && !strcmp(l->key, key)) {
            json_object_put(l->pending);
            l->pending = msg;
            return;
        }
    struct event_limit *l = vbd_xcalloc(1, sizeof(*l));
    snprintf(l->name, sizeof(l->name), "%s", name);
    snprintf(l->key, sizeof(l->key), "%s", key);
    l->timer.fn = event_limit_end;
    l->timer.arg = l;
    l->next = event_limits;
    event_limits = l;
    broadcast(msg);
    json_object_put(msg);
    vbd_timer_arm(&l->timer, vbd_clock_ns() + EVENT_RATE_NS);
}

static void send_events(void *unused)
{
    pthread_mutex_lock(&events_lock);
    struct pending_event *list = events_head;
    events_head = NULL;
    events_tail = &events_head;
    events_bh_scheduled = false; /* from here a new event schedules the bh again (it left the loop's list) */
    pthread_mutex_unlock(&events_lock);
    while (list) {
        struct pending_event *ev = list;
        list = ev->next;
        send_limited(ev->msg);
        free(ev);
    }
}

void vbd_qmp_event(const char *name, struct json_object *data)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct json_object *msg = json_object_new_object(), *ts = json_object_new_object();
    json_object_object_add(ts, "seconds", json_object_new_int64(tv.tv_sec));
    json_object_object_add(ts, "microseconds", json_object_new_int64(tv.tv_usec));
    json_object_object_add(msg, "timestamp", ts);
    json_object_object_add(msg, "event", json_object_new_string(name));
    if (data)
        json_object_object_add(msg, "data", data);
    struct pending_event *ev = malloc(sizeof(*ev));
    if (!ev) {
        json_object_put(msg);
        return;
    }
    ev->msg = msg;
    ev->next = NULL;
    pthread_mutex_lock(&events_lock);
    if (!main_loop || stopping) {
        pthread_mutex_unlock(&events_lock);
        json_object_put(msg);
        free(ev);
        return;
    }
    *events_tail = ev;
    events_tail = &ev->next;
    bool schedule = !events_bh_scheduled;
    events_bh_scheduled = true;
    if (schedule) {
        events_bh.fn = send_events;
        events_bh.arg = NULL;
        vbd_loop_schedule_bh(main_loop, &events_bh);
    }
    pthread_mutex_unlock(&events_lock);
}

/* ---- monitors ---- */

int qmp_monitor_client_fd(const struct qmp_chardev *c)
{
    for (struct qmp_monitor *m = monitors; m; m = m->next)
        if (m->chr == c && m->client && !m->client->closing)
            return m->client->is_stdio ? -1 : m->client->fd;
    return -1;
}

void qmp_monitor_set_main_loop(void)
{
    pthread_mutex_lock(&events_lock); /* an iothread may raise an event meanwhile */
    if (!main_loop)
        main_loop = vbd_loop_current();
    pthread_mutex_unlock(&events_lock);
}

int vbd_qmp_monitor_add(struct json_object *opts, struct vbd_error **err)
{
    char *chr = NULL, *mode = NULL;
    bool pretty = false;
    int rc = -EINVAL;
    if (vbd_opt_take_str(opts, "chardev", &chr, err) < 0 || vbd_opt_take_str(opts, "mode", &mode, err) < 0 ||
        vbd_opt_take_bool(opts, "pretty", &pretty, err) < 0 || vbd_opts_check_empty(opts, "--monitor", err) < 0)
        goto out;
    if (!chr) {
        vbd_error_setf(err, EINVAL, "--monitor: 'chardev' is required");
        goto out;
    }
    if (mode && strcmp(mode, "control")) {
        vbd_error_setf(err, EINVAL, "Only QMP is supported"); /* qsd's words: mode=control */
        goto out;
    }
    struct qmp_chardev *c = qmp_chardev_find(chr);
    if (!c) {
        vbd_error_setf(err, ENOENT, "chardev \"%s\" not found", chr); /* qsd's words */
        goto out;
    }
    if (c->has_monitor) {
        vbd_error_setf(err, EBUSY, "--monitor: chardev '%s' already has a monitor", chr);
        goto out;
    }
    struct qmp_monitor *mon = calloc(1, sizeof(*mon));
    if (!mon) {
        vbd_error_setf(err, ENOMEM, "--monitor %s: out of memory", chr);
        goto out;
    }
    mon->chr = c;
    mon->pretty = pretty;
    snprintf(mon->accept_what, sizeof(mon->accept_what), "QMP on '%s'", c->id);
    c->has_monitor = true;
    mon->next = monitors;
    monitors = mon;
    vbd_co_wake(vbd_co_create(monitor_co, mon));
    rc = 0;
out:
    free(chr);
    free(mode);
    return rc;
}

void vbd_qmp_request_quit(void)
{
    quit_requested = true;
    vbd_daemon_wake(); /* the daemon's main coroutine waits for it */
}

bool vbd_qmp_quit_requested(void)
{
    return quit_requested;
}

void vbd_qmp_quiesce(void)
{
    quiesced = true;
    /* no new client: qsd's listener is not polled once its main loop ended */
    for (struct qmp_monitor *mon = monitors; mon; mon = mon->next)
        if (mon->chr->listen_fd >= 0)
            shutdown(mon->chr->listen_fd, SHUT_RDWR); /* wakes the accept */
    if (vbd_in_co()) {
        /* a command that was running (it may yield) ends first; none starts after */
        vbd_co_mutex_lock(&dispatch_lock);
        vbd_co_mutex_unlock(&dispatch_lock);
    }
}

void vbd_qmp_shutdown(void)
{
    vbd_qmp_quiesce();
    send_events(NULL); /* those raised by the stop go out before quit's reply and the end */
    pthread_mutex_lock(&events_lock);
    stopping = true; /* no more events queued */
    pthread_mutex_unlock(&events_lock);
    for (struct qmp_monitor *mon = monitors; mon; mon = mon->next) {
        struct qmp_client *c = mon->client;
        if (c) {
            if (c->quit_reply) {
                client_queue_json(c, c->quit_reply, false);
                json_object_put(c->quit_reply);
                c->quit_reply = NULL;
            }
            client_drop(c, NULL, true); /* what is queued goes out if the socket takes it now */
        }
    }
    if (vbd_in_co()) {
        for (struct qmp_monitor *mon = monitors; mon; mon = mon->next)
            while (!mon->done)
                vbd_co_queue_wait(&monitors_done_q);
    }
    /* the events bh may still be scheduled: it finds no monitor */
    while (event_limits) {
        struct event_limit *l = event_limits;
        event_limits = l->next;
        vbd_timer_cancel(&l->timer);
        json_object_put(l->pending);
        free(l);
    }
    for (struct qmp_monitor *mon = monitors, *next; mon; mon = next) {
        next = mon->next;
        free(mon);
    }
    monitors = NULL;
    qmp_chardev_close_all();
    pthread_mutex_lock(&events_lock);
    while (events_head) {
        struct pending_event *ev = events_head;
        events_head = ev->next;
        json_object_put(ev->msg);
        free(ev);
    }
    events_tail = &events_head;
    pthread_mutex_unlock(&events_lock);
}
