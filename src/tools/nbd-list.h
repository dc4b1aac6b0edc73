/* SPDX-License-Identifier: MIT */
#ifndef VBD_TOOLS_NBD_LIST_H
#define VBD_TOOLS_NBD_LIST_H

struct vbd_tls_creds;

/* Where qemu-nbd -L connects: a unix socket (sockpath) or host:port; with
 * tls_creds (a client's) STARTTLS first, the server's certificate checked
 * against tls_hostname. */
struct nbd_list_args {
    const char *sockpath, *host, *port;
    struct vbd_tls_creds *tls_creds;
    const char *tls_hostname;
};

/* vbd-nbd -L: print the server's exports as qemu-nbd -L does; 0, or 1
 * after printing why not (nbd-list.c) */
int nbd_list_exports(const struct nbd_list_args *a);

#endif
