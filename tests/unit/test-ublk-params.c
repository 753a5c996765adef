/*
 * test-ublk-params.c - device parameters derived from limits, size, cache
 * mode and overrides; the ABI offset helpers (descriptor mmap stride, user
 * copy positions) and the ABI struct layouts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>
#ifdef CONFIG_UBLK
#include "ublk.h"

static void cfg_init(UblkDevConfig *c)
{
    ublk_dev_config_init(c);
}

static void test_basic_defaults(void **state)
{
    (void)state;
    UblkDevConfig c;
    cfg_init(&c);
    BlockLimits bl = { .request_alignment = 1 };
    struct ublk_params p;
    assert_int_equal(ublk_params_build(&c, &bl, 1 << 30, BDRV_O_RDWR | BDRV_O_NOCACHE, false,
                                       true, &p, NULL), 0);
    assert_int_equal(p.types, UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD);
    assert_int_equal(p.basic.logical_bs_shift, 9);
    assert_int_equal(p.basic.physical_bs_shift, 9);
    assert_int_equal(p.basic.io_opt_shift, 0);
    assert_int_equal(p.basic.max_sectors, 1024);          /* 512 KiB */
    assert_int_equal(p.basic.dev_sectors, 2 * 1024 * 1024);
    assert_int_equal(p.basic.attrs, UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA);
    assert_int_equal(p.discard.discard_granularity, 512);
    assert_int_equal(p.discard.max_discard_segments, 1);
    assert_int_equal(p.discard.max_discard_sectors, (1 << 30) >> 9);
    assert_int_equal(p.discard.max_write_zeroes_sectors, (1 << 30) >> 9);
}

static void test_from_limits(void **state)
{
    (void)state;
    UblkDevConfig c;
    cfg_init(&c);
    /* A 4k-aligned O_DIRECT file with 64k optimal transfers and 1M discard units. */
    BlockLimits bl = { .request_alignment = 4096, .opt_transfer = 65536,
                       .pdiscard_alignment = 1 << 20, .max_pdiscard = 1ULL << 26,
                       .max_pwrite_zeroes = 1ULL << 24 };
    struct ublk_params p;
    assert_int_equal(ublk_params_build(&c, &bl, 1 << 30, BDRV_O_RDWR, false, true, &p,
                                       NULL), 0);
    assert_int_equal(p.basic.logical_bs_shift, 12);
    assert_int_equal(p.basic.physical_bs_shift, 12);
    assert_int_equal(p.basic.io_opt_shift, 16);
    assert_int_equal(p.basic.dev_sectors, (1 << 30) >> 9);
    assert_int_equal(p.discard.discard_granularity, 1 << 20);
    assert_int_equal(p.discard.max_discard_sectors, (1 << 26) >> 9);
    assert_int_equal(p.discard.max_write_zeroes_sectors, (1 << 24) >> 9);
    /* Odd alignments round up to a power of two, capped at a page. */
    bl.request_alignment = 3000;
    assert_int_equal(ublk_params_build(&c, &bl, 1 << 20, 0, false, true, &p, NULL), 0);
    assert_int_equal(p.basic.logical_bs_shift, 12);
    bl.request_alignment = 65536;
    assert_int_equal(ublk_params_build(&c, &bl, 1 << 20, 0, false, true, &p, NULL), 0);
    assert_int_equal(p.basic.logical_bs_shift, 12);
}

static void test_overrides(void **state)
{
    (void)state;
    UblkDevConfig c;
    cfg_init(&c);
    c.logical_bs = 4096;
    c.physical_bs = 16384;
    c.io_opt = 1 << 20;
    c.max_io_size = 1 << 20;
    c.read_only = true;
    c.rotational = true;
    c.discard_granularity = 65536;
    BlockLimits bl = { .request_alignment = 512, .opt_transfer = 4096 };
    struct ublk_params p;
    assert_int_equal(ublk_params_build(&c, &bl, 1 << 30, BDRV_O_WRITETHROUGH, false, true, &p,
                                       NULL), 0);
    assert_int_equal(p.basic.logical_bs_shift, 12);
    assert_int_equal(p.basic.physical_bs_shift, 14);
    assert_int_equal(p.basic.io_min_shift, 14);
    assert_int_equal(p.basic.io_opt_shift, 20);
    assert_int_equal(p.basic.max_sectors, 2048);
    assert_int_equal(p.basic.attrs, UBLK_ATTR_ROTATIONAL);   /* writethrough: no cache */
    assert_int_equal(p.discard.discard_granularity, 65536);
    /* Read-only devices: the attribute, and no discard. */
    assert_int_equal(ublk_params_build(&c, &bl, 1 << 30, 0, true, true, &p, NULL), 0);
    assert_true(p.basic.attrs & UBLK_ATTR_READ_ONLY);
    assert_int_equal(p.types, UBLK_PARAM_TYPE_BASIC);
    /* cache=unsafe ignores flushes: no volatile cache to advertise either. */
    assert_int_equal(ublk_params_build(&c, &bl, 1 << 30, BDRV_O_NO_FLUSH, false, true, &p, NULL), 0);
    assert_false(p.basic.attrs & UBLK_ATTR_VOLATILE_CACHE);
    /* --no-discard: no discard sectors, but write-zeroes offload stays. */
    c.no_discard = true;
    c.read_only = false;
    c.max_discard = 100;   /* irrelevant without discard */
    assert_int_equal(ublk_params_build(&c, &bl, 1 << 30, 0, false, true, &p, NULL), 0);
    assert_int_equal(p.types, UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD);
    assert_int_equal(p.discard.max_discard_sectors, 0);
    assert_int_equal(p.discard.max_write_zeroes_sectors, (1 << 30) >> 9);
    assert_int_equal(p.discard.discard_granularity, 65536);   /* the kernel wants one */
}

/* Sizes are never rounded down in silence: a tail the logical block size
 * cannot reach is refused with what would be lost, or (for a block size
 * derived from the image's alignment) a smaller block covers it. */
static void expect_size_error(UblkDevConfig *c, const BlockLimits *bl, int64_t size,
                              const char *msg)
{
    struct ublk_params p;
    Error *err = NULL;
    assert_int_equal(ublk_params_build(c, bl, size, 0, false, true, &p, &err), -1);
    assert_non_null(err);
    if (strcmp(error_get_pretty(err), msg)) {
        fail_msg("got '%s', expected '%s'", error_get_pretty(err), msg);
    }
    error_free(err);
}

static void test_tail_never_cut(void **state)
{
    (void)state;
    UblkDevConfig c;
    cfg_init(&c);
    BlockLimits bl = { .request_alignment = 1 };
    struct ublk_params p;
    /* add null --size 1000 */
    expect_size_error(&c, &bl, 1000, "the image is 1000 bytes, not a multiple of the 512-byte "
                      "logical block size: its last 488 bytes would be unreachable (resize it "
                      "to 1024 bytes)");
    /* a raw image of 1 MiB + 1000 bytes */
    expect_size_error(&c, &bl, (1 << 20) + 1000, "the image is 1049576 bytes, not a multiple of "
                      "the 512-byte logical block size: its last 488 bytes would be unreachable "
                      "(resize it to 1049600 bytes)");
    /* --logical-block-size 4096 on a 64M+512 image */
    c.logical_bs = 4096;
    expect_size_error(&c, &bl, (64 << 20) + 512, "the image is 67109376 bytes, not a multiple "
                      "of the 4096-byte logical block size: its last 512 bytes would be "
                      "unreachable (resize it to 67112960 bytes, or give a smaller "
                      "--logical-block-size)");
    /* The same image with a 4k-aligned file and no --logical-block-size:
     * 512-byte blocks expose all of it. */
    c.logical_bs = 0;
    bl.request_alignment = 4096;
    assert_int_equal(ublk_params_build(&c, &bl, (64 << 20) + 512, 0, false, true, &p, NULL), 0);
    assert_int_equal(p.basic.logical_bs_shift, 9);
    assert_int_equal(p.basic.dev_sectors, ((64 << 20) + 512) >> 9);
    assert_int_equal(ublk_params_build(&c, &bl, (64 << 20) + 2048, 0, false, true, &p, NULL), 0);
    assert_int_equal(p.basic.logical_bs_shift, 11);
    assert_int_equal(ublk_params_build(&c, &bl, 64 << 20, 0, false, true, &p, NULL), 0);
    assert_int_equal(p.basic.logical_bs_shift, 12);
}

static void test_bad_sizes(void **state)
{
    (void)state;
    UblkDevConfig c;
    cfg_init(&c);
    BlockLimits bl = { .request_alignment = 512 };
    struct ublk_params p;
    Error *err = NULL;
    assert_int_equal(ublk_params_build(&c, &bl, 0, 0, false, true, &p, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "size 0"));
    error_free(err);
    err = NULL;
    c.logical_bs = 4096;
    assert_int_equal(ublk_params_build(&c, &bl, 1000, 0, false, true, &p, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "smaller than one 4096-byte block"));
    error_free(err);
    err = NULL;
    c.logical_bs = 0;
    c.max_discard = 100;
    c.discard_granularity = 4096;
    assert_int_equal(ublk_params_build(&c, &bl, 1 << 20, 0, false, true, &p, &err), -1);
    assert_non_null(strstr(error_get_pretty(err), "--max-discard"));
    error_free(err);
}

static void test_abi_offsets(void **state)
{
    (void)state;
    /* Descriptor arrays are strided by a 4096-deep queue: 4096 * 24 = 96 KiB. */
    assert_int_equal(ublk_queue_desc_offset(0), 0);
    assert_int_equal(ublk_queue_desc_offset(1), 98304);
    assert_int_equal(ublk_queue_desc_offset(3), 3 * 98304);
    assert_int_equal(ublk_queue_desc_size(128, 4096), 4096);
    assert_int_equal(ublk_queue_desc_size(171, 4096), 8192);   /* 171 * 24 = 4104 */
    assert_int_equal(ublk_queue_desc_size(4096, 4096), 98304);
    /* User copy: 2 GiB base, byte offset in bits 0-24, tag 25-40, queue 41-52. */
    assert_int_equal(ublk_user_copy_pos(0, 0, 0), 0x80000000ULL);
    assert_int_equal(ublk_user_copy_pos(0, 1, 0), 0x80000000ULL + (1ULL << 25));
    assert_int_equal(ublk_user_copy_pos(1, 0, 0), 0x80000000ULL + (1ULL << 41));
    assert_int_equal(ublk_user_copy_pos(2, 4095, 4096),
                     0x80000000ULL + (2ULL << 41) + (4095ULL << 25) + 4096);
    /* Layouts the kernel reads. */
    assert_int_equal(offsetof(struct ublksrv_ctrl_cmd, dev_path_len), 24);
    assert_int_equal(offsetof(struct ublksrv_ctrl_dev_info, flags), 24);
    assert_int_equal(offsetof(struct ublksrv_ctrl_dev_info, owner_uid), 40);
    assert_int_equal(offsetof(struct ublk_params, basic), 8);
    assert_int_equal(offsetof(struct ublk_params, discard), 40);
    assert_int_equal(offsetof(struct ublk_params, devt), 60);
    assert_int_equal(offsetof(struct ublk_params, zoned), 76);
    /* ioctl-encoded opcodes as the 6.12 kernel expects them. */
    assert_int_equal(UBLK_U_CMD_ADD_DEV, 0xc0207504);
    assert_int_equal(UBLK_U_CMD_GET_FEATURES, 0x80207513);
    assert_int_equal(UBLK_U_IO_FETCH_REQ, 0xc0107520);
    assert_int_equal(UBLK_U_IO_COMMIT_AND_FETCH_REQ, 0xc0107521);
}

static void test_names(void **state)
{
    (void)state;
    char buf[256];
    ublk_flags_to_string(UBLK_F_USER_COPY | UBLK_F_CMD_IOCTL_ENCODE | (1ULL << 40), buf, sizeof(buf));
    assert_string_equal(buf, "CMD_IOCTL_ENCODE,USER_COPY,0x10000000000");
    assert_string_equal(ublk_state_name(UBLK_S_DEV_QUIESCED), "QUIESCED");
    assert_string_equal(ublk_feature_name(9), "USER_RECOVERY_FAIL_IO");
    /* Every bit a 7.3 kernel reports (0x1fffff) has its name. */
    for (unsigned b = 0; b <= 20; b++) {
        assert_non_null(ublk_feature_name(b));
    }
    assert_string_equal(ublk_feature_name(14), "BUF_REG_OFF_DAEMON");
    assert_string_equal(ublk_feature_name(17), "SAFE_STOP_DEV");
    assert_string_equal(ublk_feature_name(20), "IO_DESC_SIZE");
    ublk_flags_to_string(0x1fffff, buf, sizeof(buf));
    assert_null(strstr(buf, "0x"));
    assert_null(ublk_feature_name(21));
    assert_null(ublk_feature_name(63));
    /* The bits ublkd decided against say why; the ones it uses say nothing. */
    assert_non_null(strstr(ublk_feature_unsupported(16), "integrity"));
    assert_non_null(ublk_feature_unsupported(19));
    assert_non_null(ublk_feature_unsupported(20));
    assert_null(ublk_feature_unsupported(0));
    assert_null(ublk_feature_unsupported(11));
    assert_null(ublk_feature_unsupported(7));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic_defaults),
        cmocka_unit_test(test_from_limits),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_bad_sizes),
        cmocka_unit_test(test_tail_never_cut),
        cmocka_unit_test(test_abi_offsets),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests_name("ublk-params", tests, NULL, NULL);
}
#else
/* Built without the ublk server (CONFIG_UBLK=n): nothing to test. */
int main(void)
{
    return 0;
}
#endif
