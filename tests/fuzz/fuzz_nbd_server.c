/* Fuzz target: arbitrary bytes are what a client sends to the NBD server
 * (handshake options, then commands with payloads) over a socketpair; the
 * server must answer or close, never crash or read/write outside a request.
 * The export is a 1 MiB null-co node, writable. */
#include "vbd/block.h"
#include "vbd/error.h"
#include "vbd/coroutine.h"
#include "vbd/export.h"
#include "vbd/loop.h"
#include "vbd/nbd.h"
#include "vbd/options.h"

#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct input {
    const uint8_t *data;
    size_t size;
};

static void setup_co(void *arg)
{
    (void)arg;
    struct vbd_error *err = NULL;
    char path[64];
    snprintf(path, sizeof(path), "/tmp/vbd-fuzz-nbd-%d.sock", (int)getpid());
    struct json_object *so = json_object_new_object();
    json_object_object_add(so, "addr.type", json_object_new_string("unix"));
    json_object_object_add(so, "addr.path", json_object_new_string(path));
    if (vbd_nbd_server_start(so, &err) < 0)
        abort();
    json_object_put(so);
    struct json_object *no = json_object_new_object();
    json_object_object_add(no, "driver", json_object_new_string("null-co"));
    json_object_object_add(no, "node-name", json_object_new_string("n0"));
    json_object_object_add(no, "size", json_object_new_string("1M"));
    json_object_object_add(no, "read-zeroes", json_object_new_boolean(1));
    if (!vbd_open(NULL, no, VBD_OPEN_RDWR, &err))
        abort();
    struct json_object *eo = json_object_new_object();
    json_object_object_add(eo, "id", json_object_new_string("e0"));
    json_object_object_add(eo, "node-name", json_object_new_string("n0"));
    json_object_object_add(eo, "name", json_object_new_string("disk"));
    json_object_object_add(eo, "writable", json_object_new_boolean(1));
    if (!vbd_export_type_nbd.create(eo, &err))
        abort();
    json_object_put(eo);
    unlink(path);
}

static void client_co(void *arg)
{
    struct input *in = arg;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    /* the whole input is queued at once, then the client side is closed: the
     * server sees the bytes and then EOF (answers may fill the buffer: drained below) */
    int sndbuf = 4 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof(sndbuf));
    size_t off = 0;
    while (off < in->size) {
        ssize_t w = send(sv[1], in->data + off, in->size - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    shutdown(sv[1], SHUT_WR);
    vbd_nbd_serve_fd(sv[0]); /* closes sv[0] */
    close(sv[1]);
}

static void stop_co(void *arg)
{
    (void)arg;
    vbd_nbd_server_stop();
}

static void stop_server(void)
{
    vbd_co_run_sync(stop_co, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        vbd_log_set_level(VBD_LOG_ERROR);
        vbd_co_run_sync(setup_co, NULL);
        atexit(stop_server);
        ready = 1;
    }
    if (size > (1u << 20))
        return 0;
    /* data[0] bit 0: start with a valid handshake (structured replies, GO "disk") so
     * that random bytes reach the command parser; bit 1: force the request magic and
     * a known command type on every 28-byte request header */
    static uint8_t buf[(1u << 20) + 256];
    size_t n = 0;
    const uint8_t *rest = size ? data + 1 : data;
    size_t rlen = size ? size - 1 : 0;
    if (size && (data[0] & 1)) {
        static const uint8_t pre[] = {
            0, 0, 0, 3,                                                           /* client flags */
            'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 8, 0, 0, 0, 0,       /* STRUCTURED_REPLY */
            'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 7, 0, 0, 0, 10,      /* GO */
            0, 0, 0, 4, 'd', 'i', 's', 'k', 0, 0};
        memcpy(buf, pre, sizeof(pre));
        n = sizeof(pre);
    }
    memcpy(buf + n, rest, rlen);
    if (size && (data[0] & 2))
        for (size_t at = n; at + 28 <= n + rlen; at += 28) {
            static const uint8_t magic[4] = {0x25, 0x60, 0x95, 0x13};
            memcpy(buf + at, magic, 4);
            buf[at + 6] = 0;
            buf[at + 7] %= 10;
            buf[at + 24] = buf[at + 25] = 0; /* lengths below 64 KiB */
            buf[at + 16] = buf[at + 17] = buf[at + 18] = buf[at + 19] = buf[at + 20] = 0; /* offsets near 1 MiB */
            if (buf[at + 7] == 1)
                at += ((size_t)buf[at + 26] << 8 | buf[at + 27]); /* a write: its payload follows */
        }
    struct input in = {buf, n + rlen};
    vbd_co_run_sync(client_co, &in);
    return 0;
}
