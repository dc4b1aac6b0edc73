/* SPDX-License-Identifier: MIT */
#include "util/socket.h"

#include "vbd/error.h"
#include "vbd/loop.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int vbd_unix_listen(const char *path, int backlog)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return -ENAMETOOLONG;
    /* the temporary name lives in the same directory: rename() must not cross file systems */
    const char *slash = strrchr(path, '/');
    int dirlen = slash ? (int)(slash - path + 1) : 0;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int e = EADDRINUSE;
    for (int attempt = 0; attempt < 16 && e == EADDRINUSE; attempt++) {
        unsigned int r = 0;
        if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != sizeof(r))
            r = (unsigned int)getpid() * 2654435761u + (unsigned int)attempt;
        int n = snprintf(sa.sun_path, sizeof(sa.sun_path), "%.*s.vbd%08x", dirlen, path, r);
        if (n < 0 || (size_t)n >= sizeof(sa.sun_path)) {
            /* no room for a temporary name beside PATH: bind PATH itself (a
             * client may then see the file a moment before it is accepted) */
            strcpy(sa.sun_path, path);
            unlink(path);
            if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                e = errno;
                close(fd);
                return -e;
            }
            if (listen(fd, backlog) < 0) {
                e = errno;
                unlink(path);
                close(fd);
                return -e;
            }
            return fd;
        }
        e = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? errno : 0;
    }
    if (e) {
        close(fd);
        return -e;
    }
    if (listen(fd, backlog) < 0 || rename(sa.sun_path, path) < 0) {
        e = errno;
        unlink(sa.sun_path);
        close(fd);
        return -e;
    }
    return fd;
}

void vbd_sigpipe_ignore(void)
{
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
}

bool vbd_co_accept_backoff(bool *lacking, int rc, const char *what)
{
    if (rc >= 0) {
        if (*lacking)
            vbd_info("%s: accepting connections again", what);
        *lacking = false;
        return false;
    }
    if (rc != -EMFILE && rc != -ENFILE && rc != -ENOMEM && rc != -ENOBUFS)
        return false;
    if (!*lacking)
        vbd_warn("%s: cannot accept a connection: %s (it waits; trying again every 100 ms)", what,
                 strerror(-rc));
    *lacking = true;
    vbd_co_sleep_ns(100000000);
    return true;
}
