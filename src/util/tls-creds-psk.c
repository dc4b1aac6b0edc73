/* SPDX-License-Identifier: MIT */
/* tls-creds-psk: psktool's keys.psk files, and the login name libnbd
 * uses as the PSK username. */
#include "tls-internal.h"

#include "vbd/error.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* psktool's keys.psk: "username:hexkey" lines. */
int tls_load_psk(struct vbd_tls_creds *c, const char *dir, const char *path, const char *username,
                 struct vbd_error **err)
{
    int rc = -1;
    int g;
    if (c->endpoint == VBD_TLS_SERVER) {
        if ((g = tlslib.gnutls_psk_allocate_server_credentials(&c->psk_server)) < 0 ||
            (g = tlslib.gnutls_psk_set_server_credentials_file(c->psk_server, path)) < 0) {
            vbd_error_setf(err, EINVAL, "%s: cannot load %s: %s", c->what, path, tlslib.gnutls_strerror(g));
            goto out;
        }
        int dh = tls_load_dh(c, dir, err);
        if (dh < 0)
            goto out;
        if (dh)
            tlslib.gnutls_psk_set_server_dh_params(c->psk_server, c->dh);
        else
            tlslib.gnutls_psk_set_server_known_dh_params(c->psk_server, GNUTLS_SEC_PARAM_MEDIUM);
        rc = 0;
        goto out;
    }
    FILE *f = fopen(path, "re");
    if (!f) {
        vbd_error_setf(err, errno, "%s: cannot open %s: %s", c->what, path, strerror(errno));
        goto out;
    }
    char line[1024];
    size_t ul = strlen(username);
    bool found = false;
    while (!found && fgets(line, sizeof(line), f)) {
        if (strncmp(line, username, ul) || line[ul] != ':')
            continue;
        char *hex = line + ul + 1;
        hex[strcspn(hex, "\r\n")] = 0;
        gnutls_datum_t key = {(unsigned char *)hex, (unsigned)strlen(hex)};
        if (!key.size) {
            vbd_error_setf(err, EINVAL, "%s: empty key for user '%s' in %s", c->what, username, path);
            break;
        }
        if ((g = tlslib.gnutls_psk_allocate_client_credentials(&c->psk_client)) < 0 ||
            (g = tlslib.gnutls_psk_set_client_credentials(c->psk_client, username, &key, GNUTLS_PSK_KEY_HEX)) < 0) {
            vbd_error_setf(err, EINVAL, "%s: bad key for user '%s' in %s: %s", c->what, username, path,
                           tlslib.gnutls_strerror(g));
            break;
        }
        found = true;
    }
    explicit_bzero(line, sizeof(line));
    fclose(f);
    if (!found) {
        vbd_error_setf(err, ENOENT, "%s: username '%s' not found in %s", c->what, username, path);
        goto out;
    }
    rc = 0;
out:
    return rc;
}

/* The login name, as libnbd takes it for PSK; the effective user's name where there is no login
 * (no controlling terminal, as under a service manager). */
int tls_login_name(char *buf, size_t len)
{
    if (getlogin_r(buf, len) == 0 && *buf)
        return 0;
    struct passwd pw, *res = NULL;
    char tmp[1024];
    if (getpwuid_r(geteuid(), &pw, tmp, sizeof(tmp), &res) != 0 || !res || strlen(res->pw_name) >= len)
        return -1;
    strcpy(buf, res->pw_name);
    return 0;
}
