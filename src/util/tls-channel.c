/* SPDX-License-Identifier: MIT */
/*
 * Channels: a socket with or without TLS, the one I/O path of the NBD
 * server and client (as QEMU's io/channel-tls.c over io/channel-socket.c).
 */
#include "tls-internal.h"

#include "vbd/coroutine.h"
#include "vbd/loop.h"

#include <errno.h>
#include <limits.h> /* IOV_MAX (1024): the most segments one readv/writev/sendmsg/recvmsg takes */
#include <poll.h>
#include <sys/socket.h>

static int plain_recvv_full(int fd, struct iovec *iov, int iovcnt)
{
    while (iovcnt > 0) {
        if (!iov->iov_len) {
            iov++;
            iovcnt--;
            continue;
        }
        /* at most IOV_MAX a call: more is EMSGSIZE */
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)(iovcnt < IOV_MAX ? iovcnt : IOV_MAX)};
        ssize_t r = vbd_co_recvmsg(fd, &mh, 0);
        if (r < 0)
            return (int)r;
        if (r == 0)
            return -ECONNRESET;
        while (iovcnt > 0 && (size_t)r >= iov->iov_len) {
            r -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + r;
            iov->iov_len -= (size_t)r;
        }
    }
    return 0;
}

void vbd_chan_shutdown(struct vbd_chan *ch, int how)
{
    if (ch->tls && (how == SHUT_RD || how == SHUT_RDWR))
        vbd_tls_shut_rd(ch->tls);
    shutdown(ch->fd, how);
}

int vbd_chan_recv_full(struct vbd_chan *ch, void *buf, size_t len)
{
    if (!ch->tls)
        return vbd_co_recv_full(ch->fd, buf, len);
    while (len) {
        ssize_t r = vbd_tls_recv(ch->tls, buf, len);
        if (r < 0)
            return (int)r;
        buf = (char *)buf + r;
        len -= (size_t)r;
    }
    return 0;
}

int vbd_chan_recv_full_idle(struct vbd_chan *ch, void *buf, size_t len, struct vbd_poll_wait *w)
{
    ssize_t r;
    if (!len)
        return 0;
    if (ch->tls) {
        r = vbd_tls_recv_idle(ch->tls, buf, len, w);
    } else {
        r = vbd_co_recv_cancellable(ch->fd, buf, len, w);
        if (r == 0)
            return -ECONNRESET;
    }
    if (r < 0)
        return (int)r;
    return vbd_chan_recv_full(ch, (char *)buf + r, len - (size_t)r);
}

int vbd_chan_recvv_full(struct vbd_chan *ch, struct iovec *iov, int iovcnt)
{
    if (!ch->tls)
        return plain_recvv_full(ch->fd, iov, iovcnt);
    for (int i = 0; i < iovcnt; i++) {
        int rc = vbd_chan_recv_full(ch, iov[i].iov_base, iov[i].iov_len);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int vbd_chan_send_full(struct vbd_chan *ch, const void *buf, size_t len)
{
    if (!ch->tls)
        return vbd_co_send_full(ch->fd, buf, len);
    struct iovec one = {(void *)buf, len};
    return vbd_tls_sendv(ch->tls, &one, 1);
}

int vbd_chan_sendv_full(struct vbd_chan *ch, struct iovec *iov, int iovcnt)
{
    if (!ch->tls)
        return vbd_co_sendv_full(ch->fd, iov, iovcnt, 0);
    return vbd_tls_sendv(ch->tls, iov, iovcnt);
}
