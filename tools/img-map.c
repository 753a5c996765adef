/*
 * img-map.c - `ublkd img map`: where the image's data lives, as qemu-img map
 * prints it (human: data runs with their host offset; json: every run with
 * depth/present/zero/data/offset).  Runs come from block status one backing
 * layer at a time, exactly as qemu-img's get_block_status walks the chain,
 * and are merged by img_map_entry_mergeable (img-util.c).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include "block-backend.h"
#include "img.h"

static int get_block_status(BlockDriverState *bs, int64_t offset, int64_t bytes, ImgMapEntry *e)
{
    int depth = 0, ret;
    int64_t map = 0, pnum = 0;
    BlockDriverState *file = NULL;
    for (;;) {
        bs = bdrv_skip_filters(bs);
        ret = bdrv_block_status_above(bs, bdrv_backing_bs(bs), offset, bytes, &pnum, &map, &file);
        if (ret < 0) {
            return ret;
        }
        if (pnum <= 0) {
            return -EIO;
        }
        bytes = pnum;
        if (ret & (BDRV_BLOCK_ZERO | BDRV_BLOCK_DATA)) {
            break;
        }
        bs = bdrv_backing_bs(bs);
        if (!bs) {
            ret = 0;
            break;
        }
        depth++;
    }
    bool has_offset = ret & BDRV_BLOCK_OFFSET_VALID;
    *e = (ImgMapEntry){
        .start = offset,
        .length = bytes,
        .data = ret & BDRV_BLOCK_DATA,
        .zero = ret & BDRV_BLOCK_ZERO,
        .offset = map,
        .has_offset = has_offset,
        .depth = depth,
        .present = ret & BDRV_BLOCK_ALLOCATED,
        .filename = file && has_offset ? bdrv_get_filename(file) : NULL,
    };
    return 0;
}

int img_map(int argc, char **argv)
{
    ImgOpenOpts oo = { 0 };
    OutputFormat ofmt = OFORMAT_HUMAN;
    int64_t start_offset = 0, max_length = -1;
    static const struct option longopts[] = {
        IMG_IMAGE_LONGOPTS,
        { "start-offset", required_argument, NULL, 's' },
        { "max-length", required_argument, NULL, 'l' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":f:s:l:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 's':
            start_offset = img_cvtnum_full("start offset", optarg, 0, INT64_MAX);
            if (start_offset < 0) {
                return 1;
            }
            break;
        case 'l':
            max_length = img_cvtnum_full("max length", optarg, 0, INT64_MAX);
            if (max_length < 0) {
                return 1;
            }
            break;
        case 'h':
            printf("usage: ublkd img map [--image-opts] [-f fmt] [--start-offset=offset]"
                   " [--max-length=len] [--output=ofmt] [-U] filename\n");
            return 0;
        default:
            if (img_image_opt(c, argv, &oo, &ofmt)) {
                return 1;
            }
        }
    }
    BlockBackend *blk = img_open_arg(argc, argv, &oo);
    if (!blk) {
        return 1;
    }
    BlockDriverState *bs = blk_bs(blk);
    int ret = 0;
    if (ofmt == OFORMAT_HUMAN) {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    } else {
        printf("[");
    }
    int64_t length = blk_getlength(blk);
    if (length < 0) {
        error_report("Failed to get size for '%s'", argv[optind]);
        ret = 1;
        goto out;
    }
    /* MIN(start + max, length), compared without the sum: both may be near
     * INT64_MAX. */
    if (max_length != -1 && start_offset <= length && max_length < length - start_offset) {
        length = start_offset + max_length;
    }
    ImgMapEntry curr = { .start = start_offset }, next;
    while (curr.start + curr.length < length) {
        int64_t offset = curr.start + curr.length;
        int r = get_block_status(bs, offset, length - offset, &next);
        if (r < 0) {
            error_report("Could not read file metadata: %s", strerror(-r));
            ret = 1;
            goto out;
        }
        if (img_map_entry_mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0 && img_map_dump_entry(stdout, ofmt, &curr, &next) < 0) {
            error_report("File contains external, encrypted or compressed clusters.");
            ret = 1;
            goto out;
        }
        curr = next;
    }
    if (img_map_dump_entry(stdout, ofmt, &curr, NULL) < 0) {
        error_report("File contains external, encrypted or compressed clusters.");
        ret = 1;
    }
    if (ofmt == OFORMAT_JSON) {
        puts("]");
    }
out:
    blk_unref(blk);
    return ret;
}
