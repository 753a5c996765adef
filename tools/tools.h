/*
 * tools.h - entry points of the `ublkd` command's subcommand families.
 *
 * tools/ublkd.c dispatches argv[1]: "img" goes to img_main (tools/img*.c, the
 * qemu-img-like image tool), the device verbs (add, del, list, recover,
 * features) go to dev_main (tools/dev*.c, the ublk front end).  Each returns
 * the process exit code.
 */
#ifndef UBLKD_TOOLS_H
#define UBLKD_TOOLS_H

int img_main(int argc, char **argv);     /* argv[0] == "img" */
int dev_main(int argc, char **argv);     /* argv[0] == the verb */
const char *ublkd_version(void);

#endif
