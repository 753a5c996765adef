/*
 * test-ublk-desc.c - ublk_io_desc_to_request: which descriptors the queue
 * code serves and the block request each becomes; ranges at and beyond the
 * end of the device, sector counts whose byte offset overflows, ops and
 * flags.  (tests/fuzz/fuzz-ublk-desc.c explores the same function.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <string.h>
#include <cmocka.h>
#ifdef CONFIG_UBLK
#include "ublk.h"

#define DEV_SIZE ((int64_t)1 << 30)      /* 2097152 sectors */
#define MAX_IO   (512 * 1024)

static int xlate(unsigned op_flags, uint64_t start, uint32_t nr, UblkRequest *req)
{
    struct ublksrv_io_desc iod = { .op_flags = op_flags, .nr_sectors = nr,
                                   .start_sector = start };
    return ublk_io_desc_to_request(&iod, DEV_SIZE, MAX_IO, req);
}

static void test_read_write(void **state)
{
    (void)state;
    UblkRequest r;
    assert_int_equal(xlate(UBLK_IO_OP_READ, 8, 16, &r), 0);
    assert_int_equal(r.op, UBLK_IO_OP_READ);
    assert_int_equal(r.offset, 4096);
    assert_int_equal(r.bytes, 8192);
    assert_int_equal(r.flags, 0);
    assert_int_equal(xlate(UBLK_IO_OP_WRITE | UBLK_IO_F_FUA, 0, 1, &r), 0);
    assert_int_equal(r.flags, BDRV_REQ_FUA);
    /* FUA means nothing to a read */
    assert_int_equal(xlate(UBLK_IO_OP_READ | UBLK_IO_F_FUA, 0, 1, &r), 0);
    assert_int_equal(r.flags, 0);
    /* the tag buffer's size is the limit */
    assert_int_equal(xlate(UBLK_IO_OP_WRITE, 0, MAX_IO >> 9, &r), 0);
    assert_int_equal(xlate(UBLK_IO_OP_WRITE, 0, (MAX_IO >> 9) + 1, &r), -EINVAL);
    assert_int_equal(xlate(UBLK_IO_OP_READ, 0, UINT32_MAX, &r), -EINVAL);
}

static void test_device_end(void **state)
{
    (void)state;
    UblkRequest r;
    uint64_t sectors = DEV_SIZE >> 9;
    assert_int_equal(xlate(UBLK_IO_OP_READ, sectors - 8, 8, &r), 0);
    assert_int_equal(r.offset + r.bytes, DEV_SIZE);
    assert_int_equal(xlate(UBLK_IO_OP_READ, sectors - 7, 8, &r), -EINVAL);
    assert_int_equal(xlate(UBLK_IO_OP_WRITE, sectors, 1, &r), -EINVAL);
    assert_int_equal(xlate(UBLK_IO_OP_READ, sectors, 0, &r), 0);     /* empty, at the end */
    assert_int_equal(xlate(UBLK_IO_OP_READ, sectors + 1, 0, &r), -EINVAL);
    assert_int_equal(xlate(UBLK_IO_OP_DISCARD, 0, sectors, &r), 0);
    assert_int_equal(r.bytes, DEV_SIZE);
    assert_int_equal(xlate(UBLK_IO_OP_DISCARD, 1, sectors, &r), -EINVAL);
    /* A partial last sector is not addressable: the kernel sees whole ones. */
    struct ublksrv_io_desc iod = { .op_flags = UBLK_IO_OP_READ, .nr_sectors = 1,
                                   .start_sector = 2 };
    assert_int_equal(ublk_io_desc_to_request(&iod, 3 * 512 - 1, MAX_IO, &r), -EINVAL);
    assert_int_equal(ublk_io_desc_to_request(&iod, 3 * 512, MAX_IO, &r), 0);
}

/* start_sector << 9 used to be taken as the byte offset unchecked: 2^55 + 8
 * sectors wrapped to byte 4096, inside the device. */
static void test_offset_overflow(void **state)
{
    (void)state;
    UblkRequest r;
    assert_int_equal(xlate(UBLK_IO_OP_WRITE, (1ULL << 55) + 8, 8, &r), -EINVAL);
    assert_int_equal(xlate(UBLK_IO_OP_READ, 1ULL << 54, 8, &r), -EINVAL);
    assert_int_equal(xlate(UBLK_IO_OP_WRITE_ZEROES, UINT64_MAX, 2, &r), -EINVAL);
    assert_int_equal(xlate(UBLK_IO_OP_DISCARD, UINT64_MAX - 1, UINT32_MAX, &r), -EINVAL);
}

static void test_ops_and_flags(void **state)
{
    (void)state;
    UblkRequest r;
    assert_int_equal(xlate(UBLK_IO_OP_FLUSH, UINT64_MAX, UINT32_MAX, &r), 0);  /* no range */
    assert_int_equal(r.offset, 0);
    assert_int_equal(r.bytes, 0);
    assert_int_equal(xlate(UBLK_IO_OP_WRITE_ZEROES, 0, 8, &r), 0);
    assert_int_equal(r.flags, BDRV_REQ_MAY_UNMAP);
    assert_int_equal(xlate(UBLK_IO_OP_WRITE_ZEROES | UBLK_IO_F_NOUNMAP, 0, 8, &r), 0);
    assert_int_equal(r.flags, 0);
    /* write zeroes and discard are not bounded by the tag buffer */
    assert_int_equal(xlate(UBLK_IO_OP_WRITE_ZEROES, 0, 1 << 20, &r), 0);
    assert_int_equal(xlate(UBLK_IO_OP_DISCARD | UBLK_IO_F_NOUNMAP, 0, 8, &r), 0);
    assert_int_equal(r.flags, 0);
    static const unsigned unsupported[] = {
        UBLK_IO_OP_WRITE_SAME, UBLK_IO_OP_ZONE_OPEN, UBLK_IO_OP_ZONE_APPEND,
        UBLK_IO_OP_REPORT_ZONES, 6, 255,
    };
    for (size_t i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++) {
        assert_int_equal(xlate(unsupported[i], 0, 1, &r), -EOPNOTSUPP);
    }
    /* flags do not change the op: bit 8 up is not the op */
    assert_int_equal(xlate(UBLK_IO_OP_READ | UBLK_IO_F_META | UBLK_IO_F_SWAP | 0xff000000u,
                           0, 1, &r), 0);
    assert_int_equal(r.op, UBLK_IO_OP_READ);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_write),
        cmocka_unit_test(test_device_end),
        cmocka_unit_test(test_offset_overflow),
        cmocka_unit_test(test_ops_and_flags),
    };
    return cmocka_run_group_tests_name("ublk-desc", tests, NULL, NULL);
}
#else
/* Built without the ublk server (CONFIG_UBLK=n): nothing to test. */
int main(void)
{
    return 0;
}
#endif
