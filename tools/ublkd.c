/* ublkd.c - the `ublkd` command: dispatch to the image tool or the device verbs. */
#include <stdio.h>
#include <string.h>
#include "error.h"
#include "tools.h"

#define UBLKD_VERSION "0.1.0"

const char *ublkd_version(void)
{
    return UBLKD_VERSION;
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: ublkd COMMAND [options]\n"
        "\n"
        "Image tool (no ublk driver needed):\n"
        "  ublkd img create|info|check|convert|compare|map|bench|io|dd ...   (ublkd img --help)\n"
#ifdef CONFIG_UBLK
        "\n"
        "Block devices (needs ublk_drv and /dev/ublk-control):\n"
        "  ublkd add TYPE FILE [options]        expose an image as /dev/ublkbN\n"
        "  ublkd add -t TYPE -f FILE [options]  the same, as ublksrv and rublk spell it\n"
        "  ublkd add --blockdev 'driver=...'    expose any block graph\n"
        "  ublkd del -n ID | -a                 remove devices\n"
        "  ublkd list [-n ID] [--json]          show devices\n"
        "  ublkd recover -n ID [--reissue]      restart the server of a quiesced device\n"
        "  ublkd resize -n ID [--shrink] SIZE   grow (or shrink) a device and its image\n"
        "  ublkd upgrade -n ID [--binary PATH]  replace a live device's daemon\n"
        "  ublkd snapshot -n ID -c NAME         take an internal snapshot (qcow2) of a live device\n"
        "  ublkd quorum -n ID --replace N --with OPTS | --add OPTS | --remove N\n"
        "                                       change a live quorum's children\n"
        "  ublkd features                       list what the kernel's ublk driver supports\n"
        "  (ublkd help VERB for a verb's options)\n"
#endif
        "\n"
        "  ublkd --version\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        if (argc > 2 && strcmp(cmd, "help") == 0) {
            /* `ublkd help VERB` is `ublkd VERB --help`, for every verb. */
            if (!strcmp(argv[2], "img")) {
                char *args[] = { "img", "--help", NULL };
                error_set_progname("ublkd img");
                return img_main(2, args);
            }
#ifdef CONFIG_UBLK
            static const char *const dev_verbs[] = { "add", "del", "list", "recover",
                                                     "resize", "upgrade", "quorum", "snapshot", "features",
                                                     NULL };
            for (int i = 0; dev_verbs[i]; i++) {
                if (!strcmp(argv[2], dev_verbs[i])) {
                    char *args[] = { argv[2], "--help", NULL };
                    return dev_main(2, args);
                }
            }
#endif
            error_report("unknown command '%s' (try 'ublkd --help')", argv[2]);
            return 2;
        }
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        printf("ublkd version %s\n", UBLKD_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "img")) {
        error_set_progname("ublkd img");
        return img_main(argc - 1, argv + 1);
    }
#ifdef CONFIG_UBLK
    static const char *const verbs[] = { "add", "del", "list", "recover", "resize", "upgrade",
                                         "quorum", "snapshot", "features", NULL };
    for (int i = 0; verbs[i]; i++) {
        if (!strcmp(cmd, verbs[i])) {
            return dev_main(argc - 1, argv + 1);
        }
    }
#endif
    error_report("unknown command '%s' (try 'ublkd --help')", cmd);
    return 2;
}
