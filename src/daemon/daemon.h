/* SPDX-License-Identifier: MIT */
#ifndef VBD_DAEMON_H
#define VBD_DAEMON_H
int vbd_daemon_main(int argc, char **argv);
#endif
