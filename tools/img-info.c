/*
 * img-info.c - `ublkd img info`: what qemu-img info prints, human or JSON,
 * for one image or its whole backing chain.
 *
 * The JSON keys are qemu's (virtual-size, actual-size, dirty-flag,
 * format-specific, ...) and printed in qemu's order (img-json.c).  The
 * driver's get_specific_info entries use JSON-style keys ("refcount-bits");
 * the human form turns '-' into ' ' as qemu's dump does.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef CONFIG_JSON
#include <json-c/json.h>
#endif
#include "block-backend.h"
#include "block-snapshot.h"
#include "img.h"

typedef struct ImageInfo {
    const char *filename;
    const char *format;
    int64_t virtual_size, actual_size;   /* actual < 0: unavailable */
    int cluster_size;
    bool dirty, encrypted;
    const char *backing;                 /* NULL if none */
    char *full_backing;
    const char *backing_fmt;             /* NULL if none */
    ImageSpecificInfo spec;
    BdrvSnapshotInfo *sns;               /* internal snapshots, nsns of them */
    int nsns;
} ImageInfo;

static char *full_backing_name(const char *image, const char *backing)
{
    /* A relative backing name is relative to the image's directory. */
    const char *slash = strrchr(image, '/');
    char *s = NULL;
    if (backing[0] == '/' || !slash || !strncmp(image, "json:", 5)) {
        s = strdup(backing);
    } else if (asprintf(&s, "%.*s%s", (int)(slash - image + 1), image, backing) < 0) {
        s = NULL;
    }
    if (!s) {
        abort();
    }
    return s;
}

static void collect(BlockDriverState *bs, const char *name, ImageInfo *info)
{
    memset(info, 0, sizeof(*info));
    info->filename = name && *name ? name : bdrv_get_filename(bs);
    info->format = bdrv_get_format_name(bs);
    info->virtual_size = bdrv_getlength(bs);
    info->actual_size = bdrv_get_allocated_file_size(bs);
    BlockDriverInfo bdi = { 0 };
    if (bdrv_get_info(bs, &bdi) >= 0) {
        info->cluster_size = bdi.cluster_size;
        info->dirty = bdi.is_dirty;
        info->encrypted = bdi.encrypted;
    }
    const char *backing = bdrv_get_backing_filename(bs);
    if (backing[0]) {
        info->backing = backing;
        info->full_backing = full_backing_name(info->filename, backing);
        if (bdrv_get_backing_format(bs)[0]) {
            info->backing_fmt = bdrv_get_backing_format(bs);
        }
    }
    bdrv_get_specific_info(bs, &info->spec);
    info->nsns = bdrv_snapshot_list(bs, &info->sns);
}

static void dump_human(const ImageInfo *info)
{
    char *vsize = img_size_to_str(info->virtual_size);
    char *dsize = info->actual_size >= 0 ? img_size_to_str(info->actual_size)
                                         : strdup("unavailable");
    printf("image: %s\nfile format: %s\nvirtual size: %s (%" PRId64 " bytes)\ndisk size: %s\n",
           info->filename, info->format, vsize, info->virtual_size, dsize);
    free(vsize);
    free(dsize);
    if (info->encrypted) {
        printf("encrypted: yes\n");
    }
    if (info->cluster_size) {
        printf("cluster_size: %d\n", info->cluster_size);
    }
    if (info->dirty) {
        printf("cleanly shut down: no\n");
    }
    if (info->backing) {
        printf("backing file: %s", info->backing);
        if (strcmp(info->backing, info->full_backing)) {
            printf(" (actual path: %s)", info->full_backing);
        }
        printf("\n");
        if (info->backing_fmt) {
            printf("backing file format: %s\n", info->backing_fmt);
        }
    }
    fflush(stdout);
    img_dump_snapshots(stdout, info->sns, info->nsns);
    if (info->spec.n) {
        printf("Format specific information:\n");
        const char *group = NULL;
        size_t glen = 0;
        for (int i = 0; i < info->spec.n; i++) {
            char *key = strdup(info->spec.entries[i].key);
            for (char *p = key; *p; p++) {
                if (*p == '-') {
                    *p = ' ';
                }
            }
            /* "encrypt.format" is "format" nested under "encrypt:", as qemu-img
             * prints its nested dictionaries */
            const char *dot = info->spec.entries[i].nested ? strchr(info->spec.entries[i].key, '.')
                                                           : NULL;
            if (info->spec.entries[i].human) {
                group = NULL;
                printf("    %s:\n%s\n", key, info->spec.entries[i].human);
            } else if (dot) {
                size_t l = (size_t)(dot - info->spec.entries[i].key);
                if (!group || glen != l || strncmp(group, info->spec.entries[i].key, l)) {
                    group = info->spec.entries[i].key;
                    glen = l;
                    printf("    %.*s:\n", (int)l, group);
                }
                printf("        %s: %s\n", key + l + 1, info->spec.entries[i].value);
            } else {
                group = NULL;
                printf("    %s: %s\n", key, info->spec.entries[i].value);
            }
            free(key);
        }
    }
}

#ifdef CONFIG_JSON
static json_object *to_json(const ImageInfo *info)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "virtual-size", json_object_new_int64(info->virtual_size));
    json_object_object_add(o, "filename", json_object_new_string(info->filename));
    if (info->cluster_size) {
        json_object_object_add(o, "cluster-size", json_object_new_int64(info->cluster_size));
    }
    json_object_object_add(o, "format", json_object_new_string(info->format));
    if (info->actual_size >= 0) {
        json_object_object_add(o, "actual-size", json_object_new_int64(info->actual_size));
    }
    if (info->spec.n) {
        json_object *fs = json_object_new_object(), *data = json_object_new_object();
        json_object_object_add(fs, "type", json_object_new_string(info->format));
        for (int i = 0; i < info->spec.n; i++) {
            const ImageInfoEntry *e = &info->spec.entries[i];
            json_object *v;
            if (e->human) {
                v = json_tokener_parse(e->value);
            } else if (e->is_number) {
                v = json_object_new_int64(strtoll(e->value, NULL, 0));
            } else if (e->is_bool) {
                v = json_object_new_boolean(!strcmp(e->value, "true") || !strcmp(e->value, "on"));
            } else {
                v = json_object_new_string(e->value);
            }
            /* "encrypt.format" goes into an "encrypt" object, as qemu-img nests it */
            const char *dot = e->nested ? strchr(e->key, '.') : NULL;
            json_object *sub = NULL;
            if (dot) {
                char *group = strndup(e->key, (size_t)(dot - e->key));
                if (!json_object_object_get_ex(data, group, &sub)) {
                    sub = json_object_new_object();
                    json_object_object_add(data, group, sub);
                }
                free(group);
            }
            if (sub && json_object_is_type(sub, json_type_object)) {
                json_object_object_add(sub, dot + 1, v);
            } else {
                json_object_object_add(data, e->key, v);
            }
        }
        json_object_object_add(fs, "data", data);
        json_object_object_add(o, "format-specific", fs);
    }
    if (info->backing) {
        json_object_object_add(o, "backing-filename", json_object_new_string(info->backing));
        json_object_object_add(o, "full-backing-filename",
                               json_object_new_string(info->full_backing));
        if (info->backing_fmt) {
            json_object_object_add(o, "backing-filename-format",
                                   json_object_new_string(info->backing_fmt));
        }
    }
    if (info->encrypted) {
        json_object_object_add(o, "encrypted", json_object_new_boolean(true));
    }
    if (info->nsns > 0) {
        json_object *a = json_object_new_array();
        for (int i = 0; i < info->nsns; i++) {
            const BdrvSnapshotInfo *sn = &info->sns[i];
            json_object *j = json_object_new_object();
            if (sn->icount != UINT64_MAX) {
                json_object_object_add(j, "icount", json_object_new_int64((int64_t)sn->icount));
            }
            json_object_object_add(j, "vm-clock-nsec",
                                   json_object_new_int64((int64_t)(sn->vm_clock_nsec %
                                                                   1000000000ULL)));
            json_object_object_add(j, "name", json_object_new_string(sn->name));
            json_object_object_add(j, "date-sec", json_object_new_int64(sn->date_sec));
            json_object_object_add(j, "date-nsec", json_object_new_int64(sn->date_nsec));
            json_object_object_add(j, "vm-clock-sec",
                                   json_object_new_int64((int64_t)(sn->vm_clock_nsec /
                                                                   1000000000ULL)));
            json_object_object_add(j, "id", json_object_new_string(sn->id_str));
            json_object_object_add(j, "vm-state-size",
                                   json_object_new_int64((int64_t)sn->vm_state_size));
            json_object_array_add(a, j);
        }
        json_object_object_add(o, "snapshots", a);
    }
    json_object_object_add(o, "dirty-flag", json_object_new_boolean(info->dirty));
    return o;
}
#endif

int img_info(int argc, char **argv)
{
    ImgOpenOpts oo = { 0 };
    OutputFormat ofmt = OFORMAT_HUMAN;
    bool chain = false;
    static const struct option longopts[] = {
        IMG_IMAGE_LONGOPTS,
        { "backing-chain", no_argument, NULL, 'b' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'b': chain = true; break;
        case 'h':
            printf("usage: ublkd img info [--image-opts] [-f fmt] [--output=ofmt]"
                   " [--backing-chain] [-U] filename\n");
            return 0;
        default:
            if (img_image_opt(c, argv, &oo, &ofmt)) {
                return 1;
            }
        }
    }
    oo.no_backing = !chain;
    oo.extra_flags |= BDRV_O_NO_IO;     /* an encrypted image needs no key for info */
    BlockBackend *blk = img_open_arg(argc, argv, &oo);
    if (!blk) {
        return 1;
    }
    const char *filename = argv[optind];
    ImageInfo infos[64];
    int n = 0;
    for (BlockDriverState *bs = blk_bs(blk); bs && n < 64; bs = chain ? bdrv_backing_bs(bs) : NULL) {
        bs = bdrv_skip_filters(bs);
        /* json:/--image-opts names are not file names: use the node's. */
        bool plain = n == 0 && !oo.image_opts && strncmp(filename, "json:", 5);
        collect(bs, plain ? filename : NULL, &infos[n]);
        n++;
    }
    if (ofmt == OFORMAT_HUMAN) {
        for (int i = 0; i < n; i++) {
            if (i) {
                printf("\n");
            }
            dump_human(&infos[i]);
        }
    }
#ifdef CONFIG_JSON
    else {
        json_object *out;
        if (chain) {
            out = json_object_new_array();
            for (int i = 0; i < n; i++) {
                json_object_array_add(out, to_json(&infos[i]));
            }
        } else {
            out = to_json(&infos[0]);
        }
        img_json_print(stdout, out);
        json_object_put(out);
    }
#endif
    for (int i = 0; i < n; i++) {
        free(infos[i].full_backing);
        free(infos[i].sns);
        image_info_free(&infos[i].spec);
    }
    blk_unref(blk);
    return 0;
}
