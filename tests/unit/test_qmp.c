/* QMP events, as clients of two monitors see them: an event raised on
 * another thread reaches the negotiated client (event, data, timestamp)
 * and not the one that has not negotiated; a negotiated client that
 * never reads is disconnected once its events pass the output bound, and
 * the daemon's loop keeps running meanwhile. The monitors run in this
 * process (vbd-daemon has no command that raises an event on demand). */
#include "unit.h"

#include "vbd/coroutine.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"
#include "vbd/qmp.h"

#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

struct client {
    int fd;
    char buf[1 << 18]; /* a whole 64 KiB event line fits */
    size_t len;
};

static bool client_open(struct client *c, const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    c->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    c->len = 0;
    struct timeval tv = {.tv_sec = 60};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
}

/* The next line as JSON (NULL at EOF or timeout). */
static struct json_object *client_read(struct client *c)
{
    for (;;) {
        char *nl = memchr(c->buf, '\n', c->len);
        if (nl) {
            *nl = 0;
            struct json_object *o = json_tokener_parse(c->buf);
            size_t used = (size_t)(nl + 1 - c->buf);
            memmove(c->buf, nl + 1, c->len - used);
            c->len -= used;
            return o;
        }
        if (c->len == sizeof(c->buf))
            return NULL;
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
        if (n <= 0)
            return NULL;
        c->len += (size_t)n;
    }
}

static bool client_send(struct client *c, const char *s)
{
    return send(c->fd, s, strlen(s), MSG_NOSIGNAL) == (ssize_t)strlen(s);
}

static const char *str_at(struct json_object *o, const char *a, const char *b)
{
    struct json_object *v = NULL;
    if (!json_object_object_get_ex(o, a, &v) || (b && !json_object_object_get_ex(v, b, &v)))
        return NULL;
    return json_object_get_string(v);
}

static char paths[2][256];
static atomic_bool clients_done;
static struct vbd_loop *main_loop;

static void *clients_thread(void *unused)
{
    static struct client a, b;
    CHECK(client_open(&a, paths[0]));
    CHECK(client_open(&b, paths[1]));
    struct json_object *g = client_read(&a);
    CHECK(str_at(g, "QMP", "version") != NULL);
    json_object_put(g);
    json_object_put(client_read(&b));
    CHECK(client_send(&a, "{\"execute\": \"qmp_capabilities\"}\n"));
    struct json_object *r = client_read(&a);
    CHECK(r && json_object_object_get_ex(r, "return", NULL));
    json_object_put(r);

    /* raised here, on a thread that is not the main loop */
    struct json_object *data = json_object_new_object();
    json_object_object_add(data, "node-name", json_object_new_string("n0"));
    vbd_qmp_event("TEST_EVENT", data);
    struct json_object *ev = client_read(&a);
    CHECK_STR(str_at(ev, "event", NULL), "TEST_EVENT");
    CHECK_STR(str_at(ev, "data", "node-name"), "n0");
    struct json_object *ts, *sec, *usec;
    CHECK(json_object_object_get_ex(ev, "timestamp", &ts) && json_object_object_get_ex(ts, "seconds", &sec) &&
          json_object_object_get_ex(ts, "microseconds", &usec) && json_object_is_type(sec, json_type_int) &&
          json_object_get_int64(sec) > 1600000000 && json_object_get_int64(usec) < 1000000);
    json_object_put(ev);
    /* the event went out to a before b's request was read: b's first line is its reply */
    CHECK(client_send(&b, "{\"execute\": \"query-version\", \"id\": \"b\"}\n"));
    r = client_read(&b);
    CHECK_STR(str_at(r, "error", "class"), "CommandNotFound");
    CHECK_STR(str_at(r, "id", NULL), "b");
    json_object_put(r);

    /* b negotiates and stops reading: events pile up until it is dropped */
    CHECK(client_send(&b, "{\"execute\": \"qmp_capabilities\"}\n"));
    r = client_read(&b);
    CHECK(r && json_object_object_get_ex(r, "return", NULL));
    json_object_put(r);
    static char big[64 * 1024];
    memset(big, 'x', sizeof(big) - 1);
    /* 12.5 MiB of events, past the 4 MiB bound and any socket buffer; a
     * reads each one as it comes and gets them all */
    int got = 0;
    for (int i = 0; i < 200; i++) {
        struct json_object *d = json_object_new_object();
        json_object_object_add(d, "pad", json_object_new_string(big));
        vbd_qmp_event("TEST_BIG", d);
        ev = client_read(&a);
        const char *name = str_at(ev, "event", NULL);
        got += name && !strcmp(name, "TEST_BIG");
        json_object_put(ev);
    }
    CHECK_EQ(got, 200);
    CHECK(client_send(&a, "{\"execute\": \"query-version\", \"id\": \"a\"}\n"));
    r = client_read(&a);
    CHECK_STR(str_at(r, "id", NULL), "a");
    json_object_put(r);
    /* b reads now: some events, then the end of the connection */
    size_t total = 0;
    char sink[65536];
    for (;;) {
        ssize_t n = recv(b.fd, sink, sizeof(sink), 0);
        if (n <= 0) {
            CHECK(n == 0 || errno == ECONNRESET);
            break;
        }
        total += (size_t)n;
    }
    CHECK(total < 200 * sizeof(big));
    close(a.fd);
    close(b.fd);
    atomic_store(&clients_done, true);
    vbd_loop_kick(main_loop);
    return NULL;
}

static void daemon_co(void *unused)
{
    for (int i = 0; i < 2; i++) {
        snprintf(paths[i], sizeof(paths[i]), "%s/m%d.sock", unit_tmpdir(), i);
        char opts[400];
        snprintf(opts, sizeof(opts), "socket,id=m%d,path=%s,server=on,wait=off", i, paths[i]);
        struct vbd_error *err = NULL;
        struct json_object *o = vbd_opts_parse(opts, "backend", &err);
        CHECK(o && vbd_qmp_chardev_add(o, &err) == 0);
        json_object_put(o);
        snprintf(opts, sizeof(opts), "m%d", i);
        o = vbd_opts_parse(opts, "chardev", &err);
        CHECK(o && vbd_qmp_monitor_add(o, &err) == 0);
        json_object_put(o);
        vbd_error_free(err);
    }
    pthread_t t;
    pthread_create(&t, NULL, clients_thread, NULL);
    while (!atomic_load(&clients_done))
        vbd_co_sleep_ns(10 * 1000 * 1000); /* the loop serves the clients meanwhile */
    pthread_join(t, NULL);
    vbd_qmp_shutdown();
    CHECK(access(paths[0], F_OK) != 0 && access(paths[1], F_OK) != 0);
}

UNIT_TEST(qmp_events)
{
    main_loop = vbd_loop_current();
    vbd_co_run_sync(daemon_co, NULL);
}
