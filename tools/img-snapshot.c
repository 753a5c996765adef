/*
 * img-snapshot.c - `ublkd img snapshot`: list, create, apply and delete
 * internal snapshots (qcow2), with qemu-img 7.2's syntax, output (the list
 * byte for byte, dates in local time) and exit codes.  Also the snapshot
 * list of `img info` (img_dump_snapshots, img_snapshots_json).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include "block-backend.h"
#include "block-snapshot.h"
#include "img.h"

/* QEMU's bdrv_snapshot_dump: the header line (sn NULL) or one snapshot. */
void img_snapshot_dump(FILE *f, const BdrvSnapshotInfo *sn)
{
    if (!sn) {
        fprintf(f, "%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK",
                "ICOUNT");
        return;
    }
    char date[64] = "", clock[64], icount[32] = "";
    time_t t = (time_t)sn->date_sec;
    struct tm tm;
    if (localtime_r(&t, &tm)) {
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
    }
    uint64_t secs = sn->vm_clock_nsec / 1000000000ULL;
    snprintf(clock, sizeof(clock), "%02d:%02d:%02d.%03d", (int)(secs / 3600),
             (int)((secs / 60) % 60), (int)(secs % 60),
             (int)((sn->vm_clock_nsec / 1000000) % 1000));
    if (sn->icount != UINT64_MAX) {
        snprintf(icount, sizeof(icount), "%" PRId64, (int64_t)sn->icount);
    }
    char *size = img_size_to_str(sn->vm_state_size);
    fprintf(f, "%-9s %-16s %8s%20s%13s%11s", sn->id_str, sn->name, size ? size : "", date, clock,
            icount);
    free(size);
}

/* qemu-img's dump_snapshots: nothing when there are none. */
void img_dump_snapshots(FILE *f, const BdrvSnapshotInfo *sns, int n)
{
    if (n <= 0) {
        return;
    }
    fprintf(f, "Snapshot list:\n");
    img_snapshot_dump(f, NULL);
    fprintf(f, "\n");
    for (int i = 0; i < n; i++) {
        img_snapshot_dump(f, &sns[i]);
        fprintf(f, "\n");
    }
}

enum { SNAP_NONE, SNAP_LIST, SNAP_APPLY, SNAP_CREATE, SNAP_DELETE };

int img_snapshot(int argc, char **argv)
{
    ImgOpenOpts oo = { .writable = true };
    const char *name = NULL;
    bool quiet = false;
    int action = SNAP_NONE, c;
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, 'O' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };

    optind = 0;
    while ((c = getopt_long(argc, argv, ":la:c:d:f:hqU", longopts, NULL)) != -1) {
        switch (c) {
        case 'l': case 'a': case 'c': case 'd':
            if (action != SNAP_NONE) {
                return img_usage_error("Cannot mix '-l', '-a', '-c', '-d'");
            }
            action = c == 'l' ? SNAP_LIST : c == 'a' ? SNAP_APPLY : c == 'c' ? SNAP_CREATE
                                                                             : SNAP_DELETE;
            if (c == 'l') {
                oo.writable = false;
            } else {
                name = optarg;
            }
            break;
        case 'f': oo.fmt = optarg; break;
        case 'q': quiet = true; break;
        case 'U': oo.force_share = true; break;
        case 'I': oo.image_opts = true; break;
        case 'O':
            error_report("--object is not supported by ublkd img");
            return 1;
        case 'h':
            printf("usage: ublkd img snapshot [--image-opts] [-U] [-q] [-l | -a snapshot |"
                   " -c snapshot | -d snapshot] filename\n");
            return 0;
        default:
            return img_opt_error(c, argv);
        }
    }
    (void)quiet;            /* qemu-img prints nothing on success either way */
    if (optind != argc - 1) {
        return img_usage_error("Expecting one image file name");
    }
    if (oo.force_share && oo.writable) {
        error_report("Could not open '%s': force-share=on can only be used with read-only"
                     " images", argv[optind]);
        return 1;
    }
    BlockBackend *blk = img_open(argv[optind], &oo);
    if (!blk) {
        return 1;
    }
    BlockDriverState *bs = blk_bs(blk);
    Error *err = NULL;
    int ret = 0;
    switch (action) {
    case SNAP_LIST: {
        BdrvSnapshotInfo *sns;
        int n = bdrv_snapshot_list(bs, &sns);
        img_dump_snapshots(stdout, sns, n);
        free(sns);
        break;
    }
    case SNAP_CREATE: {
        BdrvSnapshotInfo sn = { 0 };
        struct timeval tv;
        snprintf(sn.name, sizeof(sn.name), "%s", name);
        gettimeofday(&tv, NULL);
        sn.date_sec = (uint32_t)tv.tv_sec;
        sn.date_nsec = (uint32_t)tv.tv_usec * 1000;
        ret = bdrv_snapshot_create(bs, &sn, &err);
        if (ret) {
            error_free(err);
            error_report("Could not create snapshot '%s': %d (%s)", name, ret, strerror(-ret));
        }
        break;
    }
    case SNAP_APPLY:
        ret = bdrv_snapshot_goto(bs, name, &err);
        if (ret) {
            error_prepend(&err, "Could not apply snapshot '%s': ", name);
            error_report_err(err);
        }
        break;
    case SNAP_DELETE: {
        /* qemu-img's bdrv_snapshot_find: by name only */
        BdrvSnapshotInfo *sns;
        int n = bdrv_snapshot_list(bs, &sns), i = 0;
        while (i < n && strcmp(sns[i].name, name)) {
            i++;
        }
        if (i >= n) {
            error_report("Could not delete snapshot '%s': snapshot not found", name);
            ret = 1;
        } else {
            ret = bdrv_snapshot_delete(bs, sns[i].id_str, sns[i].name, &err);
            if (ret < 0) {
                error_prepend(&err, "Could not delete snapshot '%s': ", name);
                error_report_err(err);
            }
        }
        free(sns);
        break;
    }
    default:
        break;
    }
    blk_unref(blk);
    return ret ? 1 : 0;
}

/*
 * convert -l: "snapshot.id=ID,snapshot.name=NAME" (either or both) or a
 * plain ID_OR_NAME (by id first, then by name), as qemu-img parses it.
 * 0, or 1 after printing qemu-img's message.
 */
int img_parse_snapshot_param(const char *arg, ImgSnapshotParam *p)
{
    *p = (ImgSnapshotParam){ 0 };
    p->given = true;
    if (strlen(arg) >= sizeof(p->buf)) {
        error_report("Failed in parsing snapshot param '%s': too long", arg);
        return 1;
    }
    memcpy(p->buf, arg, strlen(arg) + 1);
    if (strncmp(arg, "snapshot.", 9)) {
        p->by_id_or_name = true;
        p->name = p->buf;
        return 0;
    }
    char *save = NULL;
    for (char *kv = strtok_r(p->buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (eq) {
            *eq = 0;
        }
        const char **dst = !strcmp(kv, "snapshot.id") ? &p->id
                           : !strcmp(kv, "snapshot.name") ? &p->name : NULL;
        if (!dst || !eq) {
            error_report("Invalid parameter '%s'", kv);
            error_report("Failed in parsing snapshot param '%s'", arg);
            return 1;
        }
        *dst = eq + 1;
    }
    return 0;
}

/* Open filename showing the snapshot (read-only, qcow2's load-snapshot-id);
 * qemu-img's "Failed to load snapshot: ..." when there is none such. */
BlockBackend *img_open_snapshot(const char *filename, const ImgOpenOpts *o, const char *id,
                                const char *name, bool by_id_or_name)
{
    BlockBackend *blk = img_open(filename, o);
    if (!blk) {
        return NULL;
    }
    BlockDriverState *bs = blk_bs(blk);
    BdrvSnapshotInfo *sns;
    int n = bdrv_snapshot_list(bs, &sns), found = -1;
    if (n == -ENOTSUP) {
        error_report("Failed to load snapshot: Block format '%s' used by device '' does not"
                     " support temporarily loading internal snapshots",
                     bdrv_get_format_name(bs));
        blk_unref(blk);
        return NULL;
    }
    for (int pass = 0; pass < 2 && found < 0; pass++) {
        for (int i = 0; i < n && found < 0; i++) {
            bool ok;
            if (by_id_or_name) {
                ok = !strcmp(pass ? sns[i].name : sns[i].id_str, name);
            } else {
                ok = pass == 0 && (!id || !strcmp(sns[i].id_str, id)) &&
                     (!name || !strcmp(sns[i].name, name)) && (id || name);
            }
            if (ok) {
                found = i;
            }
        }
    }
    blk_unref(blk);
    if (found < 0) {
        error_report("Failed to load snapshot: Can't find snapshot");
        free(sns);
        return NULL;
    }
    char opt[200];
    snprintf(opt, sizeof(opt), "load-snapshot-id=%s", sns[found].id_str);
    free(sns);
    if (strchr(opt, ',')) {
        error_report("Failed to load snapshot: snapshot id with a comma");
        return NULL;
    }
    ImgOpenOpts so = *o;
    so.extra_options = opt;
    return img_open(filename, &so);
}
