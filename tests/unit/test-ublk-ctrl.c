/*
 * test-ublk-ctrl.c - which control opcodes ublk/ctrl.c sends to kernels of
 * different ages, and how it reads their answers to GET_FEATURES.  The
 * kernels are small models of ublk_ctrl_uring_cmd() (6.1, 6.4 with and
 * without legacy opcodes, 6.12) behind a fake control reply path, so no
 * ublk driver is needed.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#ifdef CONFIG_UBLK
#include <linux/ioctl.h>
#include "ublk.h"

#define OLD_SET (UBLK_F_URING_CMD_COMP_IN_TASK | UBLK_F_NEED_GET_DATA | \
                 UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE)

typedef struct Kernel {
    int version;          /* 601, 604, 612 */
    bool legacy;          /* CONFIG_BLKDEV_UBLK_LEGACY_OPCODES (6.4+) */
    bool dev0;            /* device 0 exists */
    uint64_t features;    /* what GET_FEATURES reports (6.5+) */
    bool dev0_unpriv;     /* device 0 was added with UBLK_F_UNPRIVILEGED_DEV */
    unsigned ops[16];
    uint16_t path_len[16];
    int n;
} Kernel;

/* The order of checks in ublk_ctrl_uring_cmd() is what matters: the opcode
 * type check (6.4+), GET_FEATURES (6.5+), the device lookup by dev_id for
 * everything but ADD_DEV, then the switch whose default is -ENOTSUPP.
 * 6.1-6.3 compare the whole cmd_op, 6.4+ only _IOC_NR of it. */
static int fake_kernel(void *opaque, unsigned op, const struct ublksrv_ctrl_cmd *cmd)
{
    Kernel *k = opaque;
    assert_true(k->n < (int)ARRAY_SIZE(k->ops));
    k->path_len[k->n] = cmd->dev_path_len;
    k->ops[k->n++] = op;
    unsigned nr = op;
    if (k->version >= 604) {
        unsigned type = _IOC_TYPE(op);
        if (type != 'u' && (type != 0 || !k->legacy)) {
            return -EOPNOTSUPP;
        }
        nr = _IOC_NR(op);
    }
    if (k->version >= 605 && op == UBLK_U_CMD_GET_FEATURES) {
        memcpy((void *)(uintptr_t)cmd->addr, &k->features, sizeof(k->features));
        return 0;
    }
    if (nr != UBLK_CMD_ADD_DEV && (cmd->dev_id != 0 || !k->dev0)) {
        return -ENODEV;
    }
    /* ublk_ctrl_uring_cmd_permission(): an unprivileged device needs the
     * char device path from every caller; GET_DEV_INFO2 always carries it. */
    bool info2 = nr == UBLK_CMD_GET_DEV_INFO2 && k->version >= 602;
    if (nr != UBLK_CMD_ADD_DEV && (k->dev0_unpriv || info2) && !cmd->dev_path_len) {
        return -EINVAL;
    }
    if (info2) {
        struct ublksrv_ctrl_dev_info info = {
            .dev_id = 0, .flags = k->dev0_unpriv ? UBLK_F_UNPRIVILEGED_DEV : 0,
        };
        assert_true(cmd->len >= cmd->dev_path_len + sizeof(info));
        memcpy((char *)(uintptr_t)cmd->addr + cmd->dev_path_len, &info, sizeof(info));
    }
    switch (nr) {
    case UBLK_CMD_ADD_DEV:
    case UBLK_CMD_DEL_DEV:
    case UBLK_CMD_GET_DEV_INFO:
        return 0;
    case UBLK_CMD_GET_DEV_INFO2:
        return k->version >= 602 ? 0 : -UBLK_ENOTSUPP;
    default:
        return -UBLK_ENOTSUPP;
    }
}

static void test_features_from_reply(void **state)
{
    (void)state;
    const int absent[] = { -ENODEV, -UBLK_ENOTSUPP, -EOPNOTSUPP, -EINVAL, -EPERM };
    uint64_t f;
    for (unsigned i = 0; i < ARRAY_SIZE(absent); i++) {
        f = 0;
        assert_int_equal(ublk_features_from_reply(absent[i], 0x1234, &f), 0);
        assert_int_equal(f, OLD_SET);
    }
    assert_int_equal(ublk_features_from_reply(0, 0x1234, &f), 1);
    assert_int_equal(f, 0x1234);
    f = 7;
    assert_int_equal(ublk_features_from_reply(-EIO, 0, &f), -EIO);
    assert_int_equal(f, 7);
}

static void test_opcode(void **state)
{
    (void)state;
    assert_int_equal(ublk_ctrl_opcode(UBLK_CMD_ADD_DEV, OLD_SET), UBLK_CMD_ADD_DEV);
    assert_int_equal(ublk_ctrl_opcode(UBLK_CMD_ADD_DEV, UBLK_F_CMD_IOCTL_ENCODE),
                     UBLK_U_CMD_ADD_DEV);
    assert_int_equal(ublk_ctrl_opcode(UBLK_CMD_GET_DEV_INFO2, 0), UBLK_CMD_GET_DEV_INFO2);
    /* GET_FEATURES has no legacy number: always encoded. */
    assert_int_equal(ublk_ctrl_opcode(UBLK_CMD_GET_FEATURES, 0), UBLK_U_CMD_GET_FEATURES);
}

static void add_dev(UblkCtrl *c)
{
    struct ublksrv_ctrl_dev_info info = { .dev_id = (uint32_t)-1, .nr_hw_queues = 1 };
    assert_int_equal(ublk_ctrl_add_dev(c, &info), 0);
}

/* 6.1 with no device 0: GET_FEATURES is -ENODEV, and ADD_DEV must go out
 * as the legacy number (the encoded one would be -ENODEV too). */
static void test_6_1_empty(void **state)
{
    (void)state;
    Kernel k = { .version = 601 };
    UblkCtrl *c = ublk_ctrl_new_fake(fake_kernel, &k, false);
    uint64_t f;
    bool probed = true;
    assert_int_equal(ublk_ctrl_get_features(c, &f, &probed), 0);
    assert_false(probed);
    assert_int_equal(f, OLD_SET);
    add_dev(c);
    assert_int_equal(k.n, 2);
    assert_int_equal(k.ops[0], UBLK_U_CMD_GET_FEATURES);
    assert_int_equal(k.ops[1], UBLK_CMD_ADD_DEV);
    ublk_ctrl_close(c);
}

/* 6.1 with device 0: GET_FEATURES is -ENOTSUPP (524); GET_DEV_INFO2 does
 * not exist (-ENOTSUPP) and GET_DEV_INFO is used instead. */
static void test_6_1_with_dev0(void **state)
{
    (void)state;
    Kernel k = { .version = 601, .dev0 = true };
    UblkCtrl *c = ublk_ctrl_new_fake(fake_kernel, &k, false);
    struct ublksrv_ctrl_dev_info info;
    assert_int_equal(ublk_ctrl_get_info(c, 0, &info), 0);
    assert_int_equal(k.n, 3);
    assert_int_equal(k.ops[0], UBLK_U_CMD_GET_FEATURES);     /* asked first, once */
    assert_int_equal(k.ops[1], UBLK_CMD_GET_DEV_INFO2);
    assert_int_equal(k.ops[2], UBLK_CMD_GET_DEV_INFO);
    assert_int_equal(ublk_ctrl_del_dev(c, 0), 0);
    assert_int_equal(k.n, 4);
    assert_int_equal(k.ops[3], UBLK_CMD_DEL_DEV);
    ublk_ctrl_close(c);
}

/* 6.12: features answered, every opcode encoded. */
static void test_6_12(void **state)
{
    (void)state;
    Kernel k = { .version = 612, .legacy = true, .dev0 = true,
                 .features = OLD_SET | UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_USER_COPY };
    UblkCtrl *c = ublk_ctrl_new_fake(fake_kernel, &k, false);
    uint64_t f;
    bool probed = false;
    assert_int_equal(ublk_ctrl_get_features(c, &f, &probed), 0);
    assert_true(probed);
    assert_int_equal(f, k.features);
    add_dev(c);
    assert_int_equal(ublk_ctrl_del_dev(c, 0), 0);
    assert_int_equal(k.n, 3);
    assert_int_equal(k.ops[1], UBLK_U_CMD_ADD_DEV);
    assert_int_equal(k.ops[2], UBLK_U_CMD_DEL_DEV);
    ublk_ctrl_close(c);
}

/* Root deleting a device a user added (its daemon died, say): the first
 * try without the path gets -EINVAL, GET_DEV_INFO2 shows the device is
 * unprivileged, and the retry carries the path.  A root device is sent
 * its command once, without a path and without the extra query. */
static void test_root_on_unprivileged_device(void **state)
{
    (void)state;
    Kernel k = { .version = 612, .legacy = true, .dev0 = true, .dev0_unpriv = true,
                 .features = OLD_SET | UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_UNPRIVILEGED_DEV };
    UblkCtrl *c = ublk_ctrl_new_fake(fake_kernel, &k, false);
    assert_int_equal(ublk_ctrl_del_dev(c, 0), 0);
    assert_int_equal(k.n, 4);
    assert_int_equal(k.ops[0], UBLK_U_CMD_GET_FEATURES);
    assert_int_equal(k.ops[1], UBLK_U_CMD_DEL_DEV);
    assert_int_equal(k.path_len[1], 0);
    assert_int_equal(k.ops[2], UBLK_U_CMD_GET_DEV_INFO2);
    assert_int_equal(k.ops[3], UBLK_U_CMD_DEL_DEV);
    assert_int_equal(k.path_len[3], strlen("/dev/ublkc0") + 1);
    struct ublksrv_ctrl_dev_info info;
    assert_int_equal(ublk_ctrl_get_info(c, 0, &info), 0);
    assert_true(info.flags & UBLK_F_UNPRIVILEGED_DEV);
    ublk_ctrl_close(c);

    Kernel r = { .version = 612, .legacy = true, .dev0 = true,
                 .features = OLD_SET | UBLK_F_CMD_IOCTL_ENCODE | UBLK_F_UNPRIVILEGED_DEV };
    c = ublk_ctrl_new_fake(fake_kernel, &r, false);
    assert_int_equal(ublk_ctrl_del_dev(c, 0), 0);
    assert_int_equal(r.n, 2);
    assert_int_equal(r.ops[1], UBLK_U_CMD_DEL_DEV);
    assert_int_equal(r.path_len[1], 0);
    ublk_ctrl_close(c);
}

/* A kernel with the encoding but before GET_FEATURES (modelled as 6.4),
 * built without legacy opcodes: the legacy number is refused with
 * -EOPNOTSUPP, and the encoded one is used from then on. */
static void test_6_4_no_legacy(void **state)
{
    (void)state;
    Kernel k = { .version = 604, .legacy = false };
    UblkCtrl *c = ublk_ctrl_new_fake(fake_kernel, &k, false);
    add_dev(c);
    assert_int_equal(k.n, 3);
    assert_int_equal(k.ops[0], UBLK_U_CMD_GET_FEATURES);
    assert_int_equal(k.ops[1], UBLK_CMD_ADD_DEV);
    assert_int_equal(k.ops[2], UBLK_U_CMD_ADD_DEV);
    add_dev(c);
    assert_int_equal(k.n, 4);
    assert_int_equal(k.ops[3], UBLK_U_CMD_ADD_DEV);
    ublk_ctrl_close(c);
}

/* A real failure of GET_FEATURES is reported, and no command is sent blind. */
static int failing_kernel(void *opaque, unsigned op, const struct ublksrv_ctrl_cmd *cmd)
{
    (void)cmd;
    (*(int *)opaque)++;
    return op == UBLK_U_CMD_GET_FEATURES ? -EIO : 0;
}

static void test_features_error(void **state)
{
    (void)state;
    int calls = 0;
    UblkCtrl *c = ublk_ctrl_new_fake(failing_kernel, &calls, false);
    uint64_t f;
    assert_int_equal(ublk_ctrl_get_features(c, &f, NULL), -EIO);
    assert_int_equal(ublk_ctrl_del_dev(c, 3), -EIO);
    assert_int_equal(calls, 2);
    ublk_ctrl_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_features_from_reply),
        cmocka_unit_test(test_opcode),
        cmocka_unit_test(test_6_1_empty),
        cmocka_unit_test(test_6_1_with_dev0),
        cmocka_unit_test(test_6_12),
        cmocka_unit_test(test_6_4_no_legacy),
        cmocka_unit_test(test_root_on_unprivileged_device),
        cmocka_unit_test(test_features_error),
    };
    return cmocka_run_group_tests_name("ublk-ctrl", tests, NULL, NULL);
}
#else
/* Built without the ublk server (CONFIG_UBLK=n): nothing to test. */
int main(void)
{
    return 0;
}
#endif
