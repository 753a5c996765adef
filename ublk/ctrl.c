/*
 * ctrl.c - commands on /dev/ublk-control (see include/ublk.h).
 *
 * The control plane is synchronous on purpose: it runs on the main thread,
 * one command at a time, on a small ring of its own (IORING_SETUP_SQE128,
 * because struct ublksrv_ctrl_cmd needs the 80-byte command area).  Some
 * commands (START_DEV, END_USER_RECOVERY) block in the kernel until every
 * queue has fetched, which is why the queue threads never use this ring.
 *
 * Two compatibility rules live here and nowhere else:
 *  - opcodes are sent ioctl-encoded only to a kernel whose GET_FEATURES
 *    lists UBLK_F_CMD_IOCTL_ENCODE; older kernels (no GET_FEATURES, < 6.5)
 *    get the legacy plain numbers.  Guessing from the error of an encoded
 *    command does not work: kernels before the encoding look the device up
 *    by dev_id before they look at the opcode, so the answer is -ENODEV,
 *    or -ENOTSUPP (524) when that device exists, never -EOPNOTSUPP;
 *  - callers without CAP_SYS_ADMIN own unprivileged devices, and every
 *    command on such a device (and GET_DEV_INFO2 on any) carries the char
 *    device path at the front of its buffer.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <liburing.h>
#include "ublk.h"

struct UblkCtrl {
    int fd;
    struct io_uring ring;
    UblkCtrlSubmitFn fake;     /* tests: replaces the kernel */
    void *fake_opaque;
    bool have_features;        /* GET_FEATURES was asked (once per handle) */
    bool probed;               /* ... and the kernel answered it */
    uint64_t features;
    bool unprivileged;
};

static bool has_cap_sys_admin(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    bool ok = geteuid() == 0;
    if (!f) {
        return ok;
    }
    while (fgets(line, sizeof(line), f)) {
        unsigned long long eff;
        if (sscanf(line, "CapEff: %llx", &eff) == 1) {
            ok = eff & (1ULL << 21);   /* CAP_SYS_ADMIN */
            break;
        }
    }
    fclose(f);
    return ok;
}

UblkCtrl *ublk_ctrl_open(Error **errp)
{
    UblkCtrl *c = calloc(1, sizeof(*c));
    if (!c) {
        error_setg(errp, "out of memory");
        return NULL;
    }
    c->fd = open(UBLK_CONTROL_PATH, O_RDWR | O_CLOEXEC);
    if (c->fd < 0) {
        int e = errno;
        if (e == ENOENT) {
            error_setg(errp, "%s does not exist: is the ublk_drv module loaded? (modprobe ublk_drv)",
                       UBLK_CONTROL_PATH);
        } else {
            error_setg_errno(errp, e, "cannot open %s", UBLK_CONTROL_PATH);
        }
        free(c);
        return NULL;
    }
    int ret = io_uring_queue_init(8, &c->ring, IORING_SETUP_SQE128);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "cannot set up an io_uring with 128-byte SQEs for %s",
                         UBLK_CONTROL_PATH);
        close(c->fd);
        free(c);
        return NULL;
    }
    c->unprivileged = !has_cap_sys_admin();
    return c;
}

UblkCtrl *ublk_ctrl_new_fake(UblkCtrlSubmitFn fn, void *opaque, bool unprivileged)
{
    UblkCtrl *c = calloc(1, sizeof(*c));
    if (c) {
        c->fd = -1;
        c->fake = fn;
        c->fake_opaque = opaque;
        c->unprivileged = unprivileged;
    }
    return c;
}

void ublk_ctrl_close(UblkCtrl *c)
{
    if (!c) {
        return;
    }
    if (!c->fake) {
        io_uring_queue_exit(&c->ring);
        close(c->fd);
    }
    free(c);
}

bool ublk_ctrl_unprivileged(const UblkCtrl *c)
{
    return c->unprivileged;
}

static unsigned encoded_op(unsigned nr)
{
    switch (nr) {
    case UBLK_CMD_GET_QUEUE_AFFINITY:  return UBLK_U_CMD_GET_QUEUE_AFFINITY;
    case UBLK_CMD_GET_DEV_INFO:        return UBLK_U_CMD_GET_DEV_INFO;
    case UBLK_CMD_ADD_DEV:             return UBLK_U_CMD_ADD_DEV;
    case UBLK_CMD_DEL_DEV:             return UBLK_U_CMD_DEL_DEV;
    case UBLK_CMD_START_DEV:           return UBLK_U_CMD_START_DEV;
    case UBLK_CMD_STOP_DEV:            return UBLK_U_CMD_STOP_DEV;
    case UBLK_CMD_SET_PARAMS:          return UBLK_U_CMD_SET_PARAMS;
    case UBLK_CMD_GET_PARAMS:          return UBLK_U_CMD_GET_PARAMS;
    case UBLK_CMD_START_USER_RECOVERY: return UBLK_U_CMD_START_USER_RECOVERY;
    case UBLK_CMD_END_USER_RECOVERY:   return UBLK_U_CMD_END_USER_RECOVERY;
    case UBLK_CMD_GET_DEV_INFO2:       return UBLK_U_CMD_GET_DEV_INFO2;
    case UBLK_CMD_GET_FEATURES:        return UBLK_U_CMD_GET_FEATURES;
    case UBLK_CMD_TRY_STOP_DEV:        return UBLK_U_CMD_TRY_STOP_DEV;
    case UBLK_CMD_UPDATE_SIZE:         return UBLK_U_CMD_UPDATE_SIZE;
    case UBLK_CMD_QUIESCE_DEV:         return UBLK_U_CMD_QUIESCE_DEV;
    default:                           return 0;
    }
}

unsigned ublk_ctrl_opcode(unsigned nr, uint64_t features)
{
    if (nr == UBLK_CMD_GET_FEATURES || (features & UBLK_F_CMD_IOCTL_ENCODE)) {
        return encoded_op(nr);
    }
    return nr < UBLK_CMD_GET_FEATURES ? nr : 0;
}

int ublk_features_from_reply(int ret, uint64_t reply, uint64_t *features)
{
    switch (ret) {
    case -ENODEV:          /* < 6.5: no device dev_id (0), looked up first */
    case -UBLK_ENOTSUPP:   /* < 6.5: device 0 exists, opcode unknown */
    case -EOPNOTSUPP:
    case -EINVAL:
    case -EPERM:           /* 6.1 checks CAP_SYS_ADMIN first; 6.5+ never for this */
        /* No GET_FEATURES (before 6.5): assume what 6.1 had. */
        *features = UBLK_F_URING_CMD_COMP_IN_TASK | UBLK_F_NEED_GET_DATA |
                    UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
        return 0;
    default:
        if (ret < 0) {
            return ret;
        }
        *features = reply;
        return 1;
    }
}

static int submit_one(UblkCtrl *c, unsigned op, const struct ublksrv_ctrl_cmd *cmd)
{
    if (c->fake) {
        return c->fake(c->fake_opaque, op, cmd);
    }
    struct io_uring_sqe *sqe = io_uring_get_sqe(&c->ring);
    if (!sqe) {
        return -EBUSY;
    }
    memset(sqe, 0, 2 * sizeof(*sqe));      /* SQE128: two slots */
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = c->fd;
    sqe->cmd_op = op;
    memcpy(sqe->cmd, cmd, sizeof(*cmd));
    int ret = io_uring_submit_and_wait(&c->ring, 1);
    if (ret < 0) {
        return ret;
    }
    struct io_uring_cqe *cqe;
    ret = io_uring_wait_cqe(&c->ring, &cqe);
    if (ret < 0) {
        return ret;
    }
    ret = cqe->res;
    io_uring_cqe_seen(&c->ring, cqe);
    return ret;
}

/*
 * Send command nr once.  buf/len is the command's payload (in and/or out);
 * with_path prefixes it with /dev/ublkcN as unprivileged devices require.
 */
static int ctrl_cmd_once(UblkCtrl *c, unsigned nr, uint32_t dev_id, uint16_t q, void *buf,
                         uint16_t len, uint64_t data0, bool with_path)
{
    struct ublksrv_ctrl_cmd cmd = {
        .dev_id = dev_id, .queue_id = q, .len = len,
        .addr = (uintptr_t)buf, .data = { data0 },
    };
    char *tmp = NULL;
    size_t plen = 0;
    if (with_path) {
        char path[64];
        ublk_cdev_path(dev_id, path, sizeof(path));
        plen = strlen(path) + 1;
        tmp = malloc(plen + len);
        if (!tmp) {
            return -ENOMEM;
        }
        memcpy(tmp, path, plen);
        if (len) {
            memcpy(tmp + plen, buf, len);
        }
        cmd.addr = (uintptr_t)tmp;
        cmd.len = plen + len;
        cmd.dev_path_len = plen;
    }
    unsigned op = ublk_ctrl_opcode(nr, c->features);
    int ret = op ? submit_one(c, op, &cmd) : -EOPNOTSUPP;
    /* A kernel that has the encoding but not yet GET_FEATURES, built
     * without CONFIG_BLKDEV_UBLK_LEGACY_OPCODES, refuses legacy numbers
     * with -EOPNOTSUPP (kernels without the encoding never answer that). */
    if (ret == -EOPNOTSUPP && !c->probed && op == nr && encoded_op(nr)) {
        c->features |= UBLK_F_CMD_IOCTL_ENCODE;
        ret = submit_one(c, encoded_op(nr), &cmd);
    }
    if (tmp) {
        if (ret >= 0 && len) {
            memcpy(buf, tmp + plen, len);
        }
        free(tmp);
    }
    return ret;
}

/* Whether dev_id was added by an unprivileged user.  GET_DEV_INFO2 always
 * carries the path, because the caller may not know that yet. */
static bool dev_is_unprivileged(UblkCtrl *c, uint32_t dev_id)
{
    struct ublksrv_ctrl_dev_info info;
    memset(&info, 0, sizeof(info));
    int ret = ctrl_cmd_once(c, UBLK_CMD_GET_DEV_INFO2, dev_id, (uint16_t)-1, &info,
                            sizeof(info), 0, true);
    return ret >= 0 && (info.flags & UBLK_F_UNPRIVILEGED_DEV);
}

static int ctrl_cmd(UblkCtrl *c, unsigned nr, uint32_t dev_id, uint16_t q, void *buf,
                    uint16_t len, uint64_t data0)
{
    if (nr != UBLK_CMD_GET_FEATURES && !c->have_features) {
        uint64_t f;
        int ret = ublk_ctrl_get_features(c, &f, NULL);
        if (ret < 0) {
            return ret;
        }
    }
    bool on_device = nr != UBLK_CMD_ADD_DEV && nr != UBLK_CMD_GET_FEATURES;
    bool with_path = on_device && (c->unprivileged || nr == UBLK_CMD_GET_DEV_INFO2);
    int ret = ctrl_cmd_once(c, nr, dev_id, q, buf, len, data0, with_path);
    /* A device a user added (UBLK_F_UNPRIVILEGED_DEV) wants the path from
     * everyone, root too, and says -EINVAL before it looks at the command;
     * without this root could not delete one whose daemon died. */
    if (ret == -EINVAL && on_device && !with_path && dev_is_unprivileged(c, dev_id)) {
        ret = ctrl_cmd_once(c, nr, dev_id, q, buf, len, data0, true);
    }
    return ret;
}

int ublk_ctrl_get_features(UblkCtrl *c, uint64_t *features, bool *probed)
{
    if (!c->have_features) {
        uint64_t f = 0;
        int ret = ctrl_cmd(c, UBLK_CMD_GET_FEATURES, 0, (uint16_t)-1, &f, sizeof(f), 0);
        ret = ublk_features_from_reply(ret, f, &c->features);
        if (ret < 0) {
            return ret;
        }
        c->probed = ret > 0;
        c->have_features = true;
    }
    *features = c->features;
    if (probed) {
        *probed = c->probed;
    }
    return 0;
}

int ublk_ctrl_add_dev(UblkCtrl *c, struct ublksrv_ctrl_dev_info *info)
{
    int ret = ctrl_cmd(c, UBLK_CMD_ADD_DEV, info->dev_id, (uint16_t)-1, info, sizeof(*info), 0);
    return ret < 0 ? ret : 0;
}

int ublk_ctrl_del_dev(UblkCtrl *c, uint32_t dev_id)
{
    int ret = ctrl_cmd(c, UBLK_CMD_DEL_DEV, dev_id, (uint16_t)-1, NULL, 0, 0);
    return ret < 0 ? ret : 0;
}

int ublk_ctrl_start_dev(UblkCtrl *c, uint32_t dev_id, pid_t pid)
{
    int ret = ctrl_cmd(c, UBLK_CMD_START_DEV, dev_id, (uint16_t)-1, NULL, 0, pid);
    return ret < 0 ? ret : 0;
}

int ublk_ctrl_stop_dev(UblkCtrl *c, uint32_t dev_id)
{
    int ret = ctrl_cmd(c, UBLK_CMD_STOP_DEV, dev_id, (uint16_t)-1, NULL, 0, 0);
    return ret < 0 ? ret : 0;
}

int ublk_ctrl_try_stop_dev(UblkCtrl *c, uint32_t dev_id)
{
    int ret = ctrl_cmd(c, UBLK_CMD_TRY_STOP_DEV, dev_id, (uint16_t)-1, NULL, 0, 0);
    return ret < 0 ? ret : 0;
}

int ublk_ctrl_set_params(UblkCtrl *c, uint32_t dev_id, struct ublk_params *p)
{
    p->len = sizeof(*p);
    int ret = ctrl_cmd(c, UBLK_CMD_SET_PARAMS, dev_id, (uint16_t)-1, p, sizeof(*p), 0);
    return ret < 0 ? ret : 0;
}

int ublk_ctrl_get_params(UblkCtrl *c, uint32_t dev_id, struct ublk_params *p)
{
    memset(p, 0, sizeof(*p));
    p->len = sizeof(*p);
    int ret = ctrl_cmd(c, UBLK_CMD_GET_PARAMS, dev_id, (uint16_t)-1, p, sizeof(*p), 0);
    return ret < 0 ? ret : 0;
}

int ublk_ctrl_get_info(UblkCtrl *c, uint32_t dev_id, struct ublksrv_ctrl_dev_info *info)
{
    memset(info, 0, sizeof(*info));
    int ret = ctrl_cmd(c, UBLK_CMD_GET_DEV_INFO2, dev_id, (uint16_t)-1, info, sizeof(*info), 0);
    /* 6.1 has no GET_DEV_INFO2 and answers -ENOTSUPP for the unknown opcode. */
    if (ret == -EOPNOTSUPP || ret == -UBLK_ENOTSUPP || (ret == -EINVAL && !c->unprivileged)) {
        ret = ctrl_cmd(c, UBLK_CMD_GET_DEV_INFO, dev_id, (uint16_t)-1, info, sizeof(*info), 0);
    }
    return ret < 0 ? ret : 0;
}

int ublk_ctrl_get_queue_affinity(UblkCtrl *c, uint32_t dev_id, unsigned q, cpu_set_t *set)
{
    CPU_ZERO(set);
    int ret = ctrl_cmd(c, UBLK_CMD_GET_QUEUE_AFFINITY, dev_id, q, set, sizeof(*set), q);
    return ret < 0 ? ret : 0;
}

int ublk_ctrl_update_size(UblkCtrl *c, uint32_t dev_id, uint64_t sectors)
{
    int ret = ctrl_cmd(c, UBLK_CMD_UPDATE_SIZE, dev_id, (uint16_t)-1, NULL, 0, sectors);
    return ret < 0 ? ret : 0;
}

int ublk_ctrl_quiesce(UblkCtrl *c, uint32_t dev_id, uint64_t timeout_ms)
{
    int ret = ctrl_cmd(c, UBLK_CMD_QUIESCE_DEV, dev_id, (uint16_t)-1, NULL, 0, timeout_ms);
    return ret < 0 ? ret : 0;
}

int ublk_ctrl_start_recovery(UblkCtrl *c, uint32_t dev_id)
{
    int ret = ctrl_cmd(c, UBLK_CMD_START_USER_RECOVERY, dev_id, (uint16_t)-1, NULL, 0, 0);
    return ret < 0 ? ret : 0;
}

int ublk_ctrl_end_recovery(UblkCtrl *c, uint32_t dev_id, pid_t pid)
{
    int ret = ctrl_cmd(c, UBLK_CMD_END_USER_RECOVERY, dev_id, (uint16_t)-1, NULL, 0, pid);
    return ret < 0 ? ret : 0;
}

static const char *const feature_names[] = {
    "ZERO_COPY", "URING_CMD_COMP_IN_TASK", "NEED_GET_DATA", "USER_RECOVERY",
    "USER_RECOVERY_REISSUE", "UNPRIVILEGED_DEV", "CMD_IOCTL_ENCODE", "USER_COPY",
    "ZONED", "USER_RECOVERY_FAIL_IO", "UPDATE_SIZE", "AUTO_BUF_REG", "QUIESCE",
    "PER_IO_DAEMON", "BUF_REG_OFF_DAEMON", "BATCH_IO", "INTEGRITY", "SAFE_STOP_DEV",
    "NO_AUTO_PART_SCAN", "SHMEM_ZC", "IO_DESC_SIZE",
};
_Static_assert(ARRAY_SIZE(feature_names) == UBLK_F_LAST_BIT + 1, "a name for every feature bit");

_Static_assert(UBLK_F_INTEGRITY == 1ULL << 16 && UBLK_F_SHMEM_ZC == 1ULL << 19 &&
               UBLK_F_IO_DESC_SIZE == 1ULL << 20, "the bits ublk_feature_unsupported names");

const char *ublk_feature_unsupported(unsigned bit)
{
    /* Decided in docs/ARCHITECTURE.md ("Kernel features ublkd leaves out"). */
    switch (bit) {
    case 16: return "no image format ublkd serves stores integrity metadata";
    case 19: return "zero copy for clients that share their buffers only; "
                    "--zero-copy covers every client";
    case 20: return "ublkd's descriptors need no bytes beyond the 24 every kernel has";
    default: return NULL;
    }
}

const char *ublk_feature_name(unsigned bit)
{
    return bit < ARRAY_SIZE(feature_names) ? feature_names[bit] : NULL;
}

const char *ublk_state_name(unsigned state)
{
    switch (state) {
    case UBLK_S_DEV_DEAD:     return "DEAD";
    case UBLK_S_DEV_LIVE:     return "LIVE";
    case UBLK_S_DEV_QUIESCED: return "QUIESCED";
    case UBLK_S_DEV_FAIL_IO:  return "FAIL_IO";
    default:                  return "?";
    }
}

void ublk_flags_to_string(uint64_t flags, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = 0;
    for (unsigned b = 0; b < 64 && n < len; b++) {
        if (!(flags & (1ULL << b))) {
            continue;
        }
        const char *name = ublk_feature_name(b);
        int w = name ? snprintf(buf + n, len - n, "%s%s", n ? "," : "", name)
                     : snprintf(buf + n, len - n, "%s0x%llx", n ? "," : "", 1ULL << b);
        if (w < 0) {
            break;
        }
        n += w;
    }
}
