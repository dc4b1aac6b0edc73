/* SPDX-License-Identifier: MIT */
/*
 * Character devices, as qemu-storage-daemon 7.2 has them (QEMU chardev/):
 * --chardev socket (or stdio) for the monitors, and at run time chardev-add,
 * chardev-change, chardev-remove, chardev-send-break, ringbuf-read,
 * ringbuf-write, query-chardev and query-chardev-backends.
 *
 * What a storage daemon's chardev is for: a monitor (only --monitor makes
 * one: qsd 7.2 has no monitor-add), or a place a script keeps open (a
 * socket, a file, a pipe) or reads and writes (a ring buffer). Nothing in
 * the daemon writes to a chardev without a frontend, as in qsd; a socket
 * chardev without a monitor listens (or is connected) and is not read.
 *
 * Refused where qsd does something unsafe: a ring buffer of size 0 (qsd
 * writes through a NULL buffer) or too large to allocate (qsd aborts), a
 * server that waits for its client (wait=on blocks the whole daemon in
 * qsd); chardev-change opens the new backend before it lets the old one
 * go, so a change that fails leaves the old chardev as it was (qsd has
 * removed it by then). Main thread only.
 */
#include "qmp/chardev.h"

#include "qmp/commands.h"
#include "qmp/monitor.h"
#include "util/socket.h"
#include "vbd/error.h"
#include "vbd/loop.h"
#include "vbd/options.h"
#include "vbd/qmp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* A ring buffer's bound: qsd takes any power of two and aborts when it
 * cannot allocate it; 1 GiB is far above what a script reads back. */
#define RINGBUF_MAX (1ull << 30)

static struct qmp_chardev *chardevs;
/* The stdio chardev's fds' flags before it made them non-blocking: put
 * back when it goes (they are shared with whoever started the daemon). */
static int stdio_saved_flags[2] = {-1, -1};

struct qmp_chardev *qmp_chardev_find(const char *id)
{
    for (struct qmp_chardev *c = chardevs; c; c = c->next)
        if (!strcmp(c->id, id))
            return c;
    return NULL;
}

static struct qmp_chardev *chardev_new(void)
{
    struct qmp_chardev *c = calloc(1, sizeof(*c));
    if (c)
        c->listen_fd = c->fd = c->fd_in = -1;
    return c;
}

/* A socket chardev without a monitor, as qsd's without a frontend: a
 * server takes one client at a time and a client's hang-up is seen (what
 * a client sends is read and dropped: nobody reads it, and its sends must
 * not stall on a full buffer). */
static void watch_co(void *opaque)
{
    struct qmp_chardev *c = opaque;
    char scratch[4096];
    while (!c->closing) {
        if (c->fd < 0) {
            if (c->listen_fd < 0)
                break; /* a client whose server went away: no reconnect, as qsd's reconnect=0 */
            int fd = vbd_co_accept(c->listen_fd, NULL, NULL);
            if (c->closing) {
                if (fd >= 0)
                    close(fd);
                break;
            }
            char what[160];
            snprintf(what, sizeof(what), "chardev '%s'", c->id);
            if (vbd_co_accept_backoff(&c->accept_lacking, fd, what))
                continue;
            if (fd < 0)
                break;
            c->fd = fd;
        }
        int r = vbd_co_poll(c->fd, POLLIN);
        if (c->closing)
            break;
        ssize_t n = r < 0 ? -1 : recv(c->fd, scratch, sizeof(scratch), MSG_DONTWAIT);
        if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR)))
            continue;
        close(c->fd); /* gone: a server takes the next one */
        c->fd = -1;
        c->lost = c->listen_fd < 0;
    }
    c->watching = false;
    vbd_co_queue_wake_all(&c->watch_done);
}

static void watch_start(struct qmp_chardev *c)
{
    c->watching = true;
    vbd_co_wake(vbd_co_create(watch_co, c));
}

/* In a coroutine: the watcher has ended (it may touch c until then). */
static void watch_stop(struct qmp_chardev *c)
{
    c->closing = true;
    if (!c->watching)
        return;
    if (c->listen_fd >= 0)
        shutdown(c->listen_fd, SHUT_RDWR); /* wakes the accept */
    if (c->fd >= 0)
        shutdown(c->fd, SHUT_RDWR); /* wakes the poll */
    if (vbd_in_co())
        while (c->watching)
            vbd_co_queue_wait(&c->watch_done);
}

static void chardev_free(struct qmp_chardev *c, const char *keep_path)
{
    watch_stop(c);
    if (c->backend && !strcmp(c->backend, "stdio")) {
        /* the daemon's own stdin and stdout: left open, their flags as they were */
        for (int fd = 0; fd < 2; fd++)
            if (stdio_saved_flags[fd] >= 0)
                fcntl(fd, F_SETFL, stdio_saved_flags[fd]);
        c->fd = c->fd_in = -1;
    }
    if (c->listen_fd >= 0)
        close(c->listen_fd);
    if (c->fd >= 0)
        close(c->fd);
    if (c->fd_in >= 0)
        close(c->fd_in);
    /* a listening socket's path goes with it, as QEMU's socket_listen_cleanup,
     * unless a chardev-change put its replacement there */
    if (c->unix_path && (!keep_path || strcmp(keep_path, c->unix_path)))
        unlink(c->unix_path);
    free(c->unix_path);
    free(c->filename);
    free(c->peer_text);
    free(c->ring);
    free(c->id);
    free(c);
}

void qmp_chardev_close_all(void)
{
    for (struct qmp_chardev *c = chardevs, *next; c; c = next) {
        next = c->next;
        chardev_free(c, NULL);
    }
    chardevs = NULL;
}

/* host:port of a TCP address as QEMU prints it (numeric; brackets
 * around an IPv6 host only in a connected chardev's text) */
static void tcp_text(const struct sockaddr_storage *ss, socklen_t len, bool brackets, char *out, size_t size)
{
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (getnameinfo((const struct sockaddr *)ss, len, host, sizeof(host), serv, sizeof(serv),
                    NI_NUMERICHOST | NI_NUMERICSERV)) {
        snprintf(out, size, "?:?");
        return;
    }
    bool b = brackets && ss->ss_family == AF_INET6;
    snprintf(out, size, "%s%s%s:%s", b ? "[" : "", host, b ? "]" : "", serv);
}

/* A connected socket as QEMU's qemu_chr_compute_filename words it. */
static void connected_text(int fd, bool server, char *out, size_t size)
{
    struct sockaddr_storage here, peer;
    socklen_t hl = sizeof(here), pl = sizeof(peer);
    if (getsockname(fd, (struct sockaddr *)&here, &hl) || getpeername(fd, (struct sockaddr *)&peer, &pl)) {
        snprintf(out, size, "unknown");
        return;
    }
    if (here.ss_family == AF_UNIX) {
        const struct sockaddr_un *u = (const struct sockaddr_un *)&here;
        size_t n = hl > offsetof(struct sockaddr_un, sun_path) ? hl - offsetof(struct sockaddr_un, sun_path) : 0;
        snprintf(out, size, "unix:%.*s%s", (int)strnlen(u->sun_path, n), u->sun_path, server ? ",server=on" : "");
        return;
    }
    char h[NI_MAXHOST + 16], p[NI_MAXHOST + 16];
    tcp_text(&here, hl, true, h, sizeof(h));
    tcp_text(&peer, pl, true, p, sizeof(p));
    snprintf(out, size, "tcp:%s%s <-> %s", h, server ? ",server=on" : "", p);
}

/* query-chardev (qsd 7.2's ChardevInfo): every chardev with its address
 * as QEMU words it, "disconnected:" while no client is connected, and
 * frontend-open when a monitor uses it. */
struct json_object *vbd_qmp_query_chardev(void)
{
    struct json_object *list = json_object_new_array();
    for (struct qmp_chardev *c = chardevs; c; c = c->next) {
        char text[2 * NI_MAXHOST + 4200];
        if (c->filename) {
            snprintf(text, sizeof(text), "%s", c->filename);
        } else if (c->listen_fd < 0) { /* a client */
            if (c->fd >= 0)
                connected_text(c->fd, false, text, sizeof(text));
            else
                snprintf(text, sizeof(text), "disconnected:%s", c->peer_text ? c->peer_text : "");
        } else {
            int client = c->has_monitor ? qmp_monitor_client_fd(c) : c->fd;
            if (client >= 0 && c->unix_path) {
                snprintf(text, sizeof(text), "unix:%s,server=on", c->unix_path);
            } else if (client >= 0) {
                connected_text(client, true, text, sizeof(text));
            } else if (c->unix_path) {
                snprintf(text, sizeof(text), "disconnected:unix:%s,server=on", c->unix_path);
            } else {
                struct sockaddr_storage here;
                socklen_t hl = sizeof(here);
                char h[NI_MAXHOST + 16];
                if (!getsockname(c->listen_fd, (struct sockaddr *)&here, &hl)) {
                    tcp_text(&here, hl, false, h, sizeof(h));
                    snprintf(text, sizeof(text), "disconnected:tcp:%s,server=on", h);
                } else {
                    snprintf(text, sizeof(text), "disconnected:tcp");
                }
            }
        }
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "frontend-open", json_object_new_boolean(c->has_monitor));
        json_object_object_add(o, "filename", json_object_new_string(text));
        json_object_object_add(o, "label", json_object_new_string(c->id));
        json_object_array_add(list, o);
    }
    return list;
}

struct qmp_chardev *qmp_chardev_next(struct qmp_chardev *prev)
{
    return prev ? prev->next : chardevs;
}

/* QOM's "addr" of a socket chardev (SocketAddress, flat): a server's as it
 * listens (a TCP one numeric, with the port it got and the family, as
 * QEMU's inet_listen_saddr records them), a client's as it was given. */
static struct json_object *socket_addr(const struct qmp_chardev *c)
{
    struct json_object *a = json_object_new_object();
    const char *text = c->peer_text;
    if (c->listen_fd >= 0 && c->unix_path) {
        json_object_object_add(a, "path", json_object_new_string(c->unix_path));
        json_object_object_add(a, "type", json_object_new_string("unix"));
    } else if (c->listen_fd >= 0) {
        struct sockaddr_storage here;
        socklen_t hl = sizeof(here);
        char host[NI_MAXHOST], serv[NI_MAXSERV];
        if (getsockname(c->listen_fd, (struct sockaddr *)&here, &hl) ||
            getnameinfo((struct sockaddr *)&here, hl, host, sizeof(host), serv, sizeof(serv),
                        NI_NUMERICHOST | NI_NUMERICSERV)) {
            json_object_put(a);
            return NULL;
        }
        json_object_object_add(a, "host", json_object_new_string(host));
        json_object_object_add(a, here.ss_family == AF_INET6 ? "ipv6" : "ipv4", json_object_new_boolean(true));
        json_object_object_add(a, "port", json_object_new_string(serv));
        json_object_object_add(a, "type", json_object_new_string("inet"));
    } else if (text && !strncmp(text, "unix:", 5)) {
        json_object_object_add(a, "path", json_object_new_string(text + 5));
        json_object_object_add(a, "type", json_object_new_string("unix"));
    } else if (text && !strncmp(text, "tcp:", 4) && strrchr(text, ':') > text + 3) {
        const char *colon = strrchr(text, ':');
        json_object_object_add(a, "host", json_object_new_string_len(text + 4, (int)(colon - text - 4)));
        json_object_object_add(a, "port", json_object_new_string(colon + 1));
        json_object_object_add(a, "type", json_object_new_string("inet"));
    } else {
        json_object_put(a);
        return NULL;
    }
    return a;
}

struct json_object *qmp_chardev_qom_props(const char *id, const char **type)
{
    static const char *const types[][2] = {{"socket", "chardev-socket"}, {"file", "chardev-file"},
                                           {"pipe", "chardev-pipe"},     {"null", "chardev-null"},
                                           {"ringbuf", "chardev-ringbuf"}, {"memory", "chardev-memory"}, {"stdio", "chardev-stdio"}};
    struct qmp_chardev *c = qmp_chardev_find(id);
    if (!c)
        return NULL;
    *type = "chardev";
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (!strcmp(c->backend, types[i][0]))
            *type = types[i][1];
    struct json_object *o = json_object_new_object();
    if (!strcmp(c->backend, "socket")) {
        int client = c->listen_fd < 0 ? c->fd : c->has_monitor ? qmp_monitor_client_fd(c) : c->fd;
        json_object_object_add(o, "connected", json_object_new_boolean(client >= 0));
        struct json_object *a = socket_addr(c);
        if (a)
            json_object_object_add(o, "addr", a);
    }
    return o;
}

static bool is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a))
            return a->s6_addr[12] == 127;
        return IN6_IS_ADDR_LOOPBACK(a);
    }
    return false;
}

/* qmp: chardev-add's (qsd's words), else --chardev's */
static int tcp_listen(const char *id, const char *host, const char *port, bool remote_ok, bool qmp,
                      struct vbd_error **err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res;
    int gai = getaddrinfo(host && *host ? host : NULL, port, &hints, &res);
    if (gai && qmp) {
        vbd_error_setf(err, EINVAL, "address resolution failed for %s:%s: %s", host ? host : "", port,
                       gai_strerror(gai));
        return -EINVAL;
    }
    if (gai) {
        vbd_error_setf(err, EINVAL, "--chardev %s: address '%s:%s': %s", id, host ? host : "", port,
                       gai_strerror(gai));
        return -EINVAL;
    }
    if (!remote_ok && !is_loopback(res->ai_addr)) {
        vbd_error_setf(err, EPERM,
                       "--chardev %s: refusing to serve QMP on '%s', which is not a loopback address (QMP has "
                       "no authentication: anyone who can connect controls the daemon); add "
                       "insecure-remote=on to do it anyway",
                       id, host && *host ? host : "*");
        freeaddrinfo(res);
        return -EPERM;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 16) < 0) {
        int e = errno;
        vbd_error_setf(err, e, "--chardev %s: cannot listen on %s:%s: %s", id, host && *host ? host : "*", port,
                       strerror(e));
        if (fd >= 0)
            close(fd);
        fd = -e;
    }
    freeaddrinfo(res);
    return fd;
}

static int unix_server(const char *path, bool private, struct vbd_error **err)
{
    /* 0600 whatever the umask for a monitor's socket: whoever connects
     * controls the daemon (those are made at startup, before any other
     * thread creates files); a chardev added at run time has no monitor */
    mode_t old = private ? umask(0177) : 0;
    int fd = vbd_unix_listen(path, 16); /* queued clients wait there for their turn */
    if (private)
        umask(old);
    if (fd < 0)
        vbd_error_setf(err, -fd, "Failed to bind socket to %s: %s", path, strerror(-fd)); /* qsd's words */
    return fd;
}

static void chardev_link(struct qmp_chardev *c)
{
    struct qmp_chardev **tail = &chardevs;
    while (*tail)
        tail = &(*tail)->next;
    *tail = c;
}

/* --chardev stdio: a monitor on the daemon's stdin and stdout, as qsd's
 * (a script drives the daemon through a pipe). Both fds are made
 * non-blocking so the main loop never waits on them; the terminal is not
 * put in raw mode (signal= is taken and has no effect: ^C is SIGINT). */
static int stdio_add(struct json_object *opts, char **id, struct vbd_error **err)
{
    bool sig = true;
    if (vbd_opt_take_bool(opts, "signal", &sig, err) < 0)
        return -EINVAL;
    json_object_object_foreach(opts, key, unused_val)
    {
        (void)unused_val;
        vbd_error_setf(err, EINVAL, "Invalid parameter '%s'", key); /* qsd's words, as the checks below */
        return -EINVAL;
    }
    if (!*id) {
        vbd_error_setf(err, EINVAL, "chardev: no id specified");
        return -EINVAL;
    }
    for (struct qmp_chardev *o = chardevs; o; o = o->next)
        if (!strcmp(o->backend, "stdio")) {
            vbd_error_setf(err, EBUSY, "cannot use stdio by multiple character devices");
            return -EBUSY;
        }
    if (qmp_chardev_find(*id)) {
        vbd_error_setf(err, EEXIST, "--chardev: duplicate ID '%s'", *id);
        return -EEXIST;
    }
    struct qmp_chardev *c = chardev_new();
    char *name = strdup("stdio");
    if (!c || !name) {
        free(c);
        free(name);
        vbd_error_setf(err, ENOMEM, "--chardev %s: out of memory", *id);
        return -ENOMEM;
    }
    for (int fd = 0; fd < 2; fd++) {
        int fl = fcntl(fd, F_GETFL);
        stdio_saved_flags[fd] = fl;
        if (fl >= 0 && !(fl & O_NONBLOCK))
            fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    }
    c->id = *id;
    *id = NULL;
    c->backend = "stdio";
    c->fd_in = 0;
    c->fd = 1;
    c->filename = name; /* query-chardev's "filename", as qsd's */
    chardev_link(c);
    return 0;
}

int vbd_qmp_chardev_add(struct json_object *opts, struct vbd_error **err)
{
    char *backend = NULL, *id = NULL, *path = NULL, *host = NULL, *port = NULL;
    bool server = false, wait = false, remote_ok = false;
    int fd = -1, rc = -EINVAL;
    qmp_monitor_set_main_loop();
    if (vbd_opt_take_str(opts, "backend", &backend, err) < 0 || vbd_opt_take_str(opts, "id", &id, err) < 0)
        goto out;
    if (backend && !strcmp(backend, "stdio")) {
        rc = stdio_add(opts, &id, err);
        goto out;
    }
    if (vbd_opt_take_str(opts, "path", &path, err) < 0 || vbd_opt_take_str(opts, "host", &host, err) < 0 ||
        vbd_opt_take_str(opts, "port", &port, err) < 0 || vbd_opt_take_bool(opts, "server", &server, err) < 0 ||
        vbd_opt_take_bool(opts, "wait", &wait, err) < 0 ||
        vbd_opt_take_bool(opts, "insecure-remote", &remote_ok, err) < 0)
        goto out;
    if (!id) {
        vbd_error_setf(err, EINVAL, "--chardev: 'id' is required");
        goto out;
    }
    if (!backend || strcmp(backend, "socket")) {
        vbd_error_setf(err, EINVAL, "--chardev %s: backend '%s' is not supported (only 'socket' and 'stdio')", id,
                       backend ? backend : "");
        goto out;
    }
    if (vbd_opts_check_empty(opts, "--chardev socket", err) < 0)
        goto out;
    if (qmp_chardev_find(id)) {
        vbd_error_setf(err, EEXIST, "--chardev: duplicate ID '%s'", id);
        goto out;
    }
    if (!server) {
        vbd_error_setf(err, EINVAL, "--chardev %s: only server=on is supported (the daemon listens)", id);
        goto out;
    }
    if (wait) {
        vbd_error_setf(err, EINVAL, "--chardev %s: wait=on is not supported (use wait=off)", id);
        goto out;
    }
    if (!path == !port) {
        vbd_error_setf(err, EINVAL, "--chardev %s: give either path=PATH or host=HOST,port=PORT", id);
        goto out;
    }
    fd = path ? unix_server(path, true, err) : tcp_listen(id, host, port, remote_ok, false, err);
    if (fd < 0)
        goto out;
    struct qmp_chardev *c = chardev_new();
    if (!c) {
        vbd_error_setf(err, ENOMEM, "--chardev %s: out of memory", id);
        goto out;
    }
    c->id = id;
    c->backend = "socket";
    c->listen_fd = fd;
    c->unix_path = path;
    chardev_link(c);
    id = path = NULL;
    fd = -1;
    rc = 0;
out:
    if (fd >= 0) {
        close(fd);
        if (path)
            unlink(path);
    }
    free(backend);
    free(id);
    free(path);
    free(host);
    free(port);
    return rc;
}

/* ---- QMP ---- */

static const char *str_of(struct json_object *o, const char *key)
{
    struct json_object *v;
    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string) ? json_object_get_string(v)
                                                                                            : NULL;
}

static bool bool_of(struct json_object *o, const char *key, bool def)
{
    struct json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_boolean(v) : def;
}

/* ChardevBackendKind (QEMU 7.2, qapi/char.json) */
static const char *const backend_kinds[] = {"file", "serial", "parallel", "pipe", "socket", "udp", "pty",
                                            "null", "mux", "msmouse", "wctablet", "braille", "testdev",
                                            "stdio", "console", "spicevmc", "spiceport", "qemu-vdagent",
                                            "dbus", "vc", "ringbuf", "memory", NULL};
/* what qsd 7.2 can make (its query-chardev-backends) and vbd cannot */
static const char *const qsd_only[] = {"serial", "parallel", "udp", "pty", "mux", "stdio", "testdev", NULL};

static bool in_list(const char *const *l, const char *s)
{
    for (; *l; l++)
        if (!strcmp(*l, s))
            return true;
    return false;
}

#define COMMON "?logfile:str ?logappend:bool"

static int open_failed(struct vbd_qmp_error *err, const char *path, int e)
{
    vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Could not open '%s': %s", path, strerror(e));
    return -1;
}

static int socket_open(struct qmp_chardev *c, struct json_object *data, bool *opening, struct vbd_qmp_error *err)
{
    struct json_object *addr = json_object_object_get(data, "addr"), *ad;
    const char *type = str_of(addr, "type");
    ad = json_object_object_get(addr, "data");
    bool is_unix = !strcmp(type, "unix");
    if (!is_unix && strcmp(type, "inet")) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "chardev '%s': socket address type '%s' is not supported "
                           "by vbd-daemon (unix or inet)", c->id, type);
        return -1;
    }
    *opening = true; /* from here on, qsd's errors come from the backend's open */
    static const char *const unsupported[] = {"tls-creds", "tls-authz", "telnet", "tn3270", "websocket", "reconnect",
                                              "logfile", NULL};
    for (int i = 0; unsupported[i]; i++)
        if (json_object_object_get_ex(data, unsupported[i], NULL)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "chardev '%s': socket option '%s' is not supported by "
                               "vbd-daemon", c->id, unsupported[i]);
            return -1;
        }
    if (bool_of(ad, "abstract", false)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "chardev '%s': abstract unix sockets are not supported by "
                           "vbd-daemon", c->id);
        return -1;
    }
    bool server = bool_of(data, "server", true), wait = bool_of(data, "wait", false);
    if (!server && json_object_object_get_ex(data, "wait", NULL)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "'wait' option is incompatible with socket in client connect mode");
        return -1;
    }
    if (server && wait) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "chardev '%s': wait=true is not supported (it would stop the "
                           "daemon until a client connects); use wait=false", c->id);
        return -1;
    }
    const char *path = str_of(ad, "path"), *host = str_of(ad, "host"), *port = str_of(ad, "port");
    struct vbd_error *e = NULL;
    if (is_unix && strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "UNIX socket path '%s' is too long", path);
        return -1;
    }
    if (server) {
        int fd = is_unix ? unix_server(path, false, &e) : tcp_listen(c->id, host, port, true, true, &e);
        if (fd < 0) {
            vbd_qmp_error_take(err, e);
            return -1;
        }
        c->listen_fd = fd;
        if (is_unix && !(c->unix_path = strdup(path))) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "out of memory");
            return -1;
        }
        return 0;
    }
    /* a client connects now, as qsd's (reconnect=0): its peer must be
     * there. Without blocking the daemon: a unix server whose backlog is
     * full refuses (EAGAIN), a TCP connection is waited for in the
     * command's coroutine while the loop serves the rest. */
    if (is_unix) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof(sa.sun_path)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "UNIX socket path '%s' is too long", path);
            return -1;
        }
        memcpy(sa.sun_path, path, strlen(path));
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            int en = errno;
            if (fd >= 0)
                close(fd);
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to connect to '%s': %s", path, strerror(en));
            return -1;
        }
        c->fd = fd;
        if (asprintf(&c->peer_text, "unix:%s", path) < 0) /* for query-chardev once it is gone */
            c->peer_text = NULL;
        return 0;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "address resolution failed for %s:%s: %s", host, port,
                           gai_strerror(gai));
        return -1;
    }
    int fd = -1, en = EHOSTUNREACH;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            en = errno;
            continue;
        }
        int rc = vbd_co_connect(fd, a->ai_addr, a->ai_addrlen);
        if (rc < 0) {
            en = -rc;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Failed to connect to '%s:%s': %s", host, port, strerror(en));
        return -1;
    }
    c->fd = fd;
    if (asprintf(&c->peer_text, "tcp:%s:%s", host, port) < 0)
        c->peer_text = NULL;
    return 0;
}

/* The backend of a chardev-add or chardev-change into c (c->id set), or -1 with *err. */
/* The checks of qsd's schema (QAPI visits the arguments before the
 * command runs: chardev-change of a chardev that does not exist names a
 * wrongly typed member first); no side effects. */
static bool backend_schema_ok(struct json_object *backend, struct vbd_qmp_error *err)
{
    static const char *const addr_types[] = {"inet", "unix", "vsock", "fd", NULL};
    if (!qmp_check_members(backend, "type:str data:object", "backend", err) ||
        !qmp_check_enum(backend, "type", "", backend_kinds, err)) /* qsd names a union's tag plainly */
        return false;
    const char *type = str_of(backend, "type");
    struct json_object *data = json_object_object_get(backend, "data");
    if (!strcmp(type, "file"))
        return qmp_check_members(data, "out:str ?in:str ?append:bool " COMMON, "backend.data", err);
    if (!strcmp(type, "pipe"))
        return qmp_check_members(data, "device:str " COMMON, "backend.data", err);
    if (!strcmp(type, "null"))
        return qmp_check_members(data, COMMON, "backend.data", err);
    if (!strcmp(type, "ringbuf") || !strcmp(type, "memory"))
        return qmp_check_members(data, "?size:int " COMMON, "backend.data", err);
    if (strcmp(type, "socket"))
        return true; /* a backend vbd does not make: refused by backend_open */
    if (!qmp_check_members(data,
                           "addr:object ?tls-creds:str ?tls-authz:str ?server:bool ?wait:bool ?nodelay:bool "
                           "?telnet:bool ?tn3270:bool ?websocket:bool ?reconnect:int " COMMON,
                           "backend.data", err))
        return false;
    struct json_object *addr = json_object_object_get(data, "addr");
    if (!qmp_check_members(addr, "type:str data:object", "backend.data.addr", err) ||
        !qmp_check_enum(addr, "type", "", addr_types, err))
        return false;
    const char *at = str_of(addr, "type");
    struct json_object *ad = json_object_object_get(addr, "data");
    if (!strcmp(at, "unix"))
        return qmp_check_members(ad, "path:str ?abstract:bool ?tight:bool", "backend.data.addr.data", err);
    if (!strcmp(at, "inet"))
        return qmp_check_members(ad,
                                 "host:str port:str ?numeric:bool ?to:int ?ipv4:bool ?ipv6:bool ?keep-alive:bool "
                                 "?mptcp:bool",
                                 "backend.data.addr.data", err);
    return true;
}

static int backend_open(struct qmp_chardev *c, struct json_object *backend, bool *opening,
                        struct vbd_qmp_error *err)
{
    if (!backend_schema_ok(backend, err))
        return -1;
    const char *type = str_of(backend, "type");
    struct json_object *data = json_object_object_get(backend, "data");
    if (in_list(qsd_only, type)) {
        *opening = true;
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "chardev backend '%s' is not supported by vbd-daemon", type);
        return -1;
    }
    if (!strcmp(type, "socket")) {
        c->backend = "socket";
        return socket_open(c, data, opening, err);
    }
    if (strcmp(type, "file") && strcmp(type, "pipe") && strcmp(type, "null") && strcmp(type, "ringbuf") &&
        strcmp(type, "memory")) {
        *opening = true;
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "'%s' is not a valid char driver name", type);
        return -1;
    }
    *opening = true;
    if (json_object_object_get_ex(data, "logfile", NULL)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "chardev '%s': logfile is not supported by vbd-daemon", c->id);
        return -1;
    }
    for (int i = 0; backend_kinds[i]; i++)
        if (!strcmp(backend_kinds[i], type))
            c->backend = backend_kinds[i];
    if (!(c->filename = strdup(type))) { /* QEMU's name for a chardev without an address: its type's */
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "out of memory");
        return -1;
    }
    if (!strcmp(type, "file")) {
        const char *out = str_of(data, "out"), *in = str_of(data, "in");
        int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (bool_of(data, "append", false) ? O_APPEND : O_TRUNC);
        if ((c->fd = open(out, flags, 0666)) < 0)
            return open_failed(err, out, errno);
        if (in && (c->fd_in = open(in, O_RDONLY | O_CLOEXEC)) < 0)
            return open_failed(err, in, errno);
    } else if (!strcmp(type, "pipe")) {
        /* DEVICE.in and DEVICE.out, or DEVICE both ways, as qemu_chr_open_pipe */
        const char *dev = str_of(data, "device");
        size_t n = strlen(dev) + 5;
        char *in = malloc(n), *out = malloc(n);
        if (in && out) {
            snprintf(in, n, "%s.in", dev);
            snprintf(out, n, "%s.out", dev);
            c->fd_in = open(in, O_RDWR | O_CLOEXEC | O_NONBLOCK);
            c->fd = open(out, O_RDWR | O_CLOEXEC | O_NONBLOCK);
        }
        free(in);
        free(out);
        if (c->fd_in < 0 || c->fd < 0) {
            if (c->fd_in >= 0)
                close(c->fd_in);
            if (c->fd >= 0)
                close(c->fd);
            c->fd_in = -1;
            if ((c->fd = open(dev, O_RDWR | O_CLOEXEC | O_NONBLOCK)) < 0)
                return open_failed(err, dev, errno);
        }
    } else if (!strcmp(type, "ringbuf") || !strcmp(type, "memory")) {
        struct json_object *v;
        int64_t size = json_object_object_get_ex(data, "size", &v) ? json_object_get_int64(v) : 65536;
        if (size & (size - 1)) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "size of ringbuf chardev must be power of two");
            return -1;
        }
        if (size <= 0 || (uint64_t)size > RINGBUF_MAX) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "size of ringbuf chardev must be between 1 and %llu",
                               (unsigned long long)RINGBUF_MAX);
            return -1;
        }
        if (!(c->ring = calloc(1, (size_t)size))) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "chardev '%s': cannot allocate %lld bytes", c->id,
                               (long long)size);
            return -1;
        }
        c->ring_size = (uint64_t)size;
    }
    return 0;
}

/* A new chardev for id from a QMP backend, not yet linked, or NULL with *err. */
static struct qmp_chardev *chardev_from_qmp(const char *id, struct json_object *backend, struct vbd_qmp_error *err)
{
    struct qmp_chardev *c = chardev_new();
    if (!c || !(c->id = strdup(id))) {
        free(c);
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "out of memory");
        return NULL;
    }
    bool opening = false;
    if (backend_open(c, backend, &opening, err) < 0) {
        if (opening) { /* qsd's words around what the backend's open says */
            char desc[sizeof(err->desc)];
            snprintf(desc, sizeof(desc), "%s", err->desc);
            const char *cls = err->cls;
            err->cls = NULL; /* setf keeps a first error: this one replaces it */
            vbd_qmp_error_setf(err, cls, "Failed to add chardev '%s': %s", id, desc);
        }
        chardev_free(c, NULL);
        return NULL;
    }
    return c;
}

static struct json_object *chardev_add(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *id = str_of(args, "id");
    struct json_object *backend = json_object_object_get(args, "backend");
    if (qmp_chardev_find(id)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Chardev with id '%s' already exists", id);
        return NULL;
    }
    struct qmp_chardev *c = chardev_from_qmp(id, backend, err);
    if (!c)
        return NULL;
    chardev_link(c);
    if (!strcmp(c->backend, "socket"))
        watch_start(c);
    return vbd_qmp_ok();
}

static struct json_object *chardev_change(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *id = str_of(args, "id");
    struct json_object *backend = json_object_object_get(args, "backend");
    if (!backend_schema_ok(backend, err))
        return NULL;
    struct qmp_chardev *old = qmp_chardev_find(id);
    if (!old) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Chardev '%s' does not exist", id);
        return NULL;
    }
    if (old->has_monitor) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Chardev user does not support chardev hotswap");
        return NULL;
    }
    struct qmp_chardev *c = chardev_from_qmp(id, backend, err);
    if (!c)
        return NULL; /* the old one stays */
    c->next = old->next;
    for (struct qmp_chardev **p = &chardevs; *p; p = &(*p)->next)
        if (*p == old) {
            *p = c;
            break;
        }
    chardev_free(old, c->unix_path);
    if (!strcmp(c->backend, "socket"))
        watch_start(c);
    return vbd_qmp_ok();
}

static struct json_object *chardev_remove(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *id = str_of(args, "id");
    struct qmp_chardev *c = qmp_chardev_find(id);
    if (!c) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Chardev '%s' not found", id);
        return NULL;
    }
    if (c->has_monitor) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Chardev '%s' is busy", id);
        return NULL;
    }
    for (struct qmp_chardev **p = &chardevs; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    chardev_free(c, NULL);
    return vbd_qmp_ok();
}

static struct json_object *chardev_send_break(struct json_object *args, struct vbd_qmp_error *err)
{
    const char *id = str_of(args, "id");
    if (!qmp_chardev_find(id)) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Chardev '%s' not found", id);
        return NULL;
    }
    return vbd_qmp_ok(); /* a break goes to the frontend: a monitor ignores it, as QEMU's */
}

static struct json_object *query_chardev_backends(struct json_object *args, struct vbd_qmp_error *err)
{
    (void)args;
    (void)err;
    static const char *const ours[] = {"file", "pipe", "socket", "null", "ringbuf", "memory", NULL};
    struct json_object *list = json_object_new_array();
    for (int i = 0; ours[i]; i++) {
        struct json_object *o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(ours[i]));
        json_object_array_add(list, o);
    }
    return list;
}

static const char *const data_formats[] = {"utf8", "base64", NULL};

static struct qmp_chardev *ringbuf_of(struct json_object *args, struct vbd_qmp_error *err)
{
    if (!qmp_check_enum(args, "format", "", data_formats, err))
        return NULL;
    const char *dev = str_of(args, "device");
    struct qmp_chardev *c = qmp_chardev_find(dev);
    if (!c) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Device '%s' not found", dev);
        return NULL;
    }
    if (!c->ring) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "%s is not a ringbuf device", dev);
        return NULL;
    }
    return c;
}

static bool is_base64(struct json_object *args)
{
    const char *f = str_of(args, "format");
    return f && !strcmp(f, "base64");
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_value(char ch)
{
    const char *p = ch ? strchr(b64, ch) : NULL;
    return p ? (int)(p - b64) : -1;
}

/* base64 as qsd takes it (QEMU's qbase64_decode over GLib's decoder):
 * only a character outside the alphabet and '=' is refused; '=' counts as
 * a zero digit that drops its byte, each whole group of four digits gives
 * its bytes, and a last incomplete group gives none. */
static uint8_t *b64_decode(const char *in, size_t *out_len, struct vbd_qmp_error *err)
{
    size_t len = strlen(in);
    for (size_t i = 0; i < len; i++)
        if (in[i] != '=' && b64_value(in[i]) < 0) {
            vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "Base64 data contains invalid characters");
            return NULL;
        }
    uint8_t *out = malloc(len / 4 * 3 + 1);
    if (!out) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "out of memory");
        return NULL;
    }
    size_t n = 0;
    uint32_t v = 0;
    int digits = 0;
    char last = 0, before_last = 0;
    for (size_t i = 0; i < len; i++) {
        before_last = last;
        last = in[i];
        v = v << 6 | (uint32_t)(in[i] == '=' ? 0 : b64_value(in[i]));
        if (++digits == 4) {
            out[n++] = (uint8_t)(v >> 16);
            if (before_last != '=')
                out[n++] = (uint8_t)(v >> 8);
            if (last != '=')
                out[n++] = (uint8_t)v;
            digits = 0;
        }
    }
    *out_len = n;
    return out;
}

static char *b64_encode(const uint8_t *in, size_t len)
{
    char *out = malloc((len + 2) / 3 * 4 + 1), *p = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t w = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < len ? in[i + 2] : 0);
        *p++ = b64[w >> 18 & 63];
        *p++ = b64[w >> 12 & 63];
        *p++ = i + 1 < len ? b64[w >> 6 & 63] : '=';
        *p++ = i + 2 < len ? b64[w & 63] : '=';
    }
    *p = 0;
    return out;
}

static struct json_object *ringbuf_write(struct json_object *args, struct vbd_qmp_error *err)
{
    struct qmp_chardev *c = ringbuf_of(args, err);
    if (!c)
        return NULL;
    const char *data = str_of(args, "data");
    size_t len = strlen(data);
    uint8_t *decoded = NULL;
    const uint8_t *p = (const uint8_t *)data;
    if (is_base64(args)) {
        if (!(decoded = b64_decode(data, &len, err)))
            return NULL;
        p = decoded;
    }
    /* the oldest bytes give way, as QEMU's ringbuf_chr_write */
    for (size_t i = 0; i < len; i++) {
        c->ring[c->ring_prod++ & (c->ring_size - 1)] = p[i];
        if (c->ring_prod - c->ring_cons > c->ring_size)
            c->ring_cons = c->ring_prod - c->ring_size;
    }
    free(decoded);
    return vbd_qmp_ok();
}

/* QEMU's mod_utf8_codepoint: the code point at s (at most n bytes), or -1
 * for an invalid sequence; *end after what it took. */
static int32_t codepoint(const uint8_t *s, size_t n, size_t *used)
{
    static const int32_t min_cp[5] = {0x80, 0x800, 0x10000, 0x200000, 0x4000000};
    uint8_t byte = s[0];
    *used = 1;
    if (byte < 0x80)
        return byte;
    if (byte >= 0xfe || !(byte & 0x40))
        return -1; /* impossible byte, or a continuation byte first */
    unsigned len = 0, mask;
    for (mask = 0x80; byte & mask; mask >>= 1)
        len++;
    int32_t cp = byte & (mask - 1);
    for (unsigned i = 1; i < len; i++) {
        uint8_t b = i < n ? s[i] : 0;
        if ((b & 0xc0) != 0x80)
            return -1; /* a continuation byte missing */
        (*used)++;
        cp = cp << 6 | (b & 0x3f);
    }
    if (cp > 0x10ffff || (cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) == 0xfffe || (cp >= 0xd800 && cp <= 0xdfff) ||
        (cp < min_cp[len - 2] && !(cp == 0 && len == 2)))
        return -1;
    return cp;
}

/* The bytes as the JSON string qsd sends: up to the first NUL (a C
 * string there), each invalid sequence as U+FFFD. */
static struct json_object *utf8_string(const uint8_t *p, size_t len)
{
    char *out = malloc(len * 3 + 1);
    size_t o = 0;
    if (!out)
        return json_object_new_string("");
    for (size_t i = 0; i < len && p[i];) {
        size_t used;
        int32_t cp = codepoint(p + i, len - i, &used);
        i += used;
        if (cp < 0)
            cp = 0xfffd;
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else if (cp < 0x800) {
            out[o++] = (char)(0xc0 | cp >> 6);
            out[o++] = (char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            out[o++] = (char)(0xe0 | cp >> 12);
            out[o++] = (char)(0x80 | (cp >> 6 & 0x3f));
            out[o++] = (char)(0x80 | (cp & 0x3f));
        } else {
            out[o++] = (char)(0xf0 | cp >> 18);
            out[o++] = (char)(0x80 | (cp >> 12 & 0x3f));
            out[o++] = (char)(0x80 | (cp >> 6 & 0x3f));
            out[o++] = (char)(0x80 | (cp & 0x3f));
        }
    }
    struct json_object *s = json_object_new_string_len(out, (int)o);
    free(out);
    return s;
}

static struct json_object *ringbuf_read(struct json_object *args, struct vbd_qmp_error *err)
{
    struct qmp_chardev *c = ringbuf_of(args, err);
    if (!c)
        return NULL;
    int64_t size = json_object_get_int64(json_object_object_get(args, "size"));
    if (size <= 0) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "size must be greater than zero");
        return NULL;
    }
    uint64_t count = c->ring_prod - c->ring_cons;
    if ((uint64_t)size > count)
        size = (int64_t)count;
    uint8_t *buf = malloc((size_t)size + 1);
    if (!buf) {
        vbd_qmp_error_setf(err, VBD_QMP_GENERIC_ERROR, "out of memory");
        return NULL;
    }
    for (int64_t i = 0; i < size; i++)
        buf[i] = c->ring[c->ring_cons++ & (c->ring_size - 1)];
    struct json_object *r;
    if (is_base64(args)) {
        char *s = b64_encode(buf, (size_t)size);
        r = json_object_new_string(s ? s : "");
        free(s);
    } else {
        r = utf8_string(buf, (size_t)size);
    }
    free(buf);
    return r;
}

const struct vbd_qmp_command vbd_qmp_cmds_chardev[] = {
    {"chardev-add", "id:str backend:object", chardev_add, 0},
    {"chardev-change", "id:str backend:object", chardev_change, 0},
    {"chardev-remove", "id:str", chardev_remove, 0},
    {"chardev-send-break", "id:str", chardev_send_break, 0},
    {"query-chardev-backends", "", query_chardev_backends, 0},
    {"ringbuf-write", "device:str data:str ?format:str", ringbuf_write, 0},
    {"ringbuf-read", "device:str size:int ?format:str", ringbuf_read, 0},
    {NULL, NULL, NULL, 0},
};
