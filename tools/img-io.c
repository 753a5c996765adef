/*
 * img-io.c - `ublkd img io`: open one image and run qemu-io style commands
 * on it, from -c arguments in order or, without -c, from stdin.
 *
 * Options are qemu-io's (-f, -n = cache none, -t cache, -r read-only,
 * -d discard mode, -U, --image-opts).  As in qemu-io 7.2 a failing command
 * does not stop the ones after it, and the exit code is 1 if any failed.
 * The commands themselves are in img-io-cmds.c.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "block-backend.h"
#include "img.h"

int img_io(int argc, char **argv)
{
    ImgOpenOpts oo = { .writable = true, .extra_flags = BDRV_O_UNMAP };
    const char **cmds = calloc(argc, sizeof(*cmds));
    int ncmds = 0;
    bool nocache = false;
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "cmd", required_argument, NULL, 'c' },
        { "format", required_argument, NULL, 'f' },
        { "read-only", no_argument, NULL, 'r' },
        { "nocache", no_argument, NULL, 'n' },
        { "cache", required_argument, NULL, 't' },
        { "discard", required_argument, NULL, 'd' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { "object", required_argument, NULL, 'X' },
        { NULL, 0, NULL, 0 },
    };
    int c, ret = 0;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":c:d:f:hnrt:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': cmds[ncmds++] = optarg; break;
        case 'd':
            if (!strcmp(optarg, "unmap") || !strcmp(optarg, "on")) {
                oo.extra_flags |= BDRV_O_UNMAP;
            } else if (!strcmp(optarg, "ignore") || !strcmp(optarg, "off")) {
                oo.extra_flags &= ~BDRV_O_UNMAP;
            } else {
                error_report("Invalid discard option: %s", optarg);
                ret = 1;
                goto out;
            }
            break;
        case 'f': oo.fmt = optarg; break;
        case 'n': nocache = true; break;
        case 'r': oo.writable = false; break;
        case 't': oo.cache = optarg; break;
        case 'X':
            if (img_object_add(optarg)) {
                return 1;
            }
            break;
        case 'U': oo.force_share = true; break;
        case 'I': oo.image_opts = true; break;
        case 'h':
            printf("usage: ublkd img io [-f fmt] [--image-opts] [-n] [-t cache] [-r] [-d discard]"
                   " [-U] [-c command]... filename\n"
                   "Commands (-c 'help' lists their options): read, readv, write, writev,"
                   " discard, flush, length, map, truncate\n");
            goto out;
        default:
            ret = img_opt_error(c, argv);
            goto out;
        }
    }
    if (nocache) {
        if (oo.cache && strcmp(oo.cache, "none")) {
            error_report("-n and -t are mutually exclusive");
            ret = 1;
            goto out;
        }
        oo.cache = "none";
    }
    BlockBackend *blk = img_open_arg(argc, argv, &oo);
    if (!blk) {
        ret = 1;
        goto out;
    }
    bool failed = false;
    if (ncmds) {
        for (int i = 0; i < ncmds; i++) {
            failed |= img_io_command(blk, cmds[i]) < 0;
        }
    } else {
        char *line = NULL;
        size_t cap = 0;
        bool tty = isatty(STDIN_FILENO);
        for (;;) {
            if (tty) {
                printf("ublkd-io> ");
                fflush(stdout);
            }
            if (getline(&line, &cap, stdin) < 0) {
                break;
            }
            line[strcspn(line, "\n")] = '\0';
            if (!strcmp(line, "quit") || !strcmp(line, "q")) {
                break;
            }
            failed |= img_io_command(blk, line) < 0;
        }
        free(line);
    }
    blk_unref(blk);
    ret = failed ? 1 : 0;
out:
    free(cmds);
    return ret;
}
