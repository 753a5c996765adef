/*
 * fuzz-ublk-desc.c - libFuzzer harness for the ublk I/O descriptor check
 * (ublk_io_desc_to_request in ublk/queue.c, which every tag's request goes
 * through before it reaches the BlockBackend).  The input is the 24-byte
 * struct ublksrv_io_desc the kernel writes, then the device size (8 bytes)
 * and the tag buffer size (4 bytes, capped at the ABI's 32 MiB), shorter
 * inputs zero-padded.  Bit 0 of the last byte, when set, counts the start
 * sector back from the end of the device, so the edges get explored.
 * Properties, with an independent 128-bit oracle:
 *   - accepted iff the op is one we serve (read, write, flush, discard,
 *     write zeroes) and, but for flush, the range lies within the device,
 *     and a read/write fits the tag buffer; otherwise -EOPNOTSUPP for the
 *     op, -EINVAL for the range;
 *   - an accepted request is the descriptor's range in bytes, carries FUA
 *     only for a write with UBLK_IO_F_FUA and MAY_UNMAP only for write
 *     zeroes without UBLK_IO_F_NOUNMAP;
 *   - the block layer (a BlockBackend on a null node of the device's size)
 *     takes every accepted request without a range error.
 * Built and run by tests/fuzz/run.sh.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "aio.h"
#include "block-backend.h"
#include "block.h"
#include "ublk.h"
#include "fuzz-check.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *tag_buf;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    Error *err = NULL;
    if (!aio_main_init(&err)) {
        error_report_err(err);
        abort();
    }
    /* Never touched by the null node: costs address space only. */
    tag_buf = calloc(1, UBLK_MAX_IO_LIMIT);
    CHECK(tag_buf);
    return 0;
}

static bool known_op(unsigned op)
{
    return op == UBLK_IO_OP_READ || op == UBLK_IO_OP_WRITE || op == UBLK_IO_OP_FLUSH ||
           op == UBLK_IO_OP_DISCARD || op == UBLK_IO_OP_WRITE_ZEROES;
}

/* The block layer's answer to an accepted request on a null node of
 * dev_size bytes: any error but a range one is the null node's business. */
static void run_on_block_layer(const UblkRequest *req, int64_t dev_size)
{
    OptDict *o = optdict_new();
    Error *err = NULL;
    optdict_set(o, "driver", "null");
    optdict_set_int(o, "size", dev_size);
    optdict_set(o, "read-zeroes", "off");
    BlockBackend *blk = blk_new_open(NULL, o, BDRV_O_RDWR | BDRV_O_UNMAP, &err);
    if (!blk) {
        /* The null node takes any size the device can have. */
        fprintf(stderr, "null node of %lld bytes: %s\n", (long long)dev_size,
                error_get_pretty(err));
        abort();
    }
    CHECK(blk_getlength(blk) == dev_size);
    int ret;
    switch (req->op) {
    case UBLK_IO_OP_READ:
        ret = blk_pread(blk, req->offset, req->bytes, tag_buf, 0);
        break;
    case UBLK_IO_OP_WRITE:
        ret = blk_pwrite(blk, req->offset, req->bytes, tag_buf, req->flags);
        break;
    case UBLK_IO_OP_FLUSH:
        ret = blk_flush(blk);
        break;
    case UBLK_IO_OP_DISCARD:
        ret = blk_pdiscard(blk, req->offset, req->bytes);
        break;
    default:
        ret = blk_pwrite_zeroes(blk, req->offset, req->bytes, req->flags);
        break;
    }
    if (ret == -EIO || ret == -EINVAL || ret == -ERANGE || ret == -EFBIG) {
        fprintf(stderr, "op %u offset %lld bytes %lld on %lld bytes: %s\n", req->op,
                (long long)req->offset, (long long)req->bytes, (long long)dev_size,
                strerror(-ret));
        abort();
    }
    blk_unref(blk);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t in[24 + 8 + 4] = { 0 };
    memcpy(in, data, MIN(size, sizeof(in)));
    struct ublksrv_io_desc iod;
    uint64_t dev_size_raw;
    uint32_t max_io;
    memcpy(&iod, in, 24);
    memcpy(&dev_size_raw, in + 24, 8);
    memcpy(&max_io, in + 32, 4);
    /* What the server can have: a positive int64 size, a buffer up to 32M. */
    int64_t dev_size = (int64_t)(dev_size_raw % (uint64_t)BDRV_MAX_LENGTH) + 1;
    max_io %= UBLK_MAX_IO_LIMIT + 1;
    uint64_t dev_sectors = (uint64_t)dev_size >> 9;
    if (size >= sizeof(in) && (data[sizeof(in) - 1] & 1)) {
        iod.start_sector = dev_sectors - iod.start_sector;   /* may wrap: fine */
    }

    UblkRequest req;
    int ret = ublk_io_desc_to_request(&iod, dev_size, max_io, &req);

    unsigned op = ublksrv_get_op(&iod);
    unsigned __int128 end = (unsigned __int128)iod.start_sector + iod.nr_sectors;
    bool in_device = end <= dev_sectors;
    bool fits = (uint64_t)iod.nr_sectors * 512 <= max_io;
    bool rw = op == UBLK_IO_OP_READ || op == UBLK_IO_OP_WRITE;
    int want = !known_op(op) ? -EOPNOTSUPP
             : op == UBLK_IO_OP_FLUSH ? 0
             : !in_device || (rw && !fits) ? -EINVAL : 0;
    if (ret != want) {
        fprintf(stderr, "op 0x%x start %llu nr %u on %llu sectors, buffer %u: got %d, want %d\n",
                iod.op_flags, (unsigned long long)iod.start_sector, iod.nr_sectors,
                (unsigned long long)dev_sectors, max_io, ret, want);
        abort();
    }
    if (ret < 0) {
        return 0;
    }
    CHECK(req.op == op);
    if (op == UBLK_IO_OP_FLUSH) {
        CHECK(req.offset == 0 && req.bytes == 0 && req.flags == 0);
    } else {
        CHECK(req.offset >= 0 && req.bytes >= 0);
        CHECK((uint64_t)req.offset == iod.start_sector * 512);
        CHECK((uint64_t)req.bytes == (uint64_t)iod.nr_sectors * 512);
        CHECK(req.offset + req.bytes <= dev_size);
        CHECK(!rw || req.bytes <= (int64_t)max_io);
    }
    BdrvRequestFlags want_flags =
        op == UBLK_IO_OP_WRITE && (iod.op_flags & UBLK_IO_F_FUA) ? BDRV_REQ_FUA
        : op == UBLK_IO_OP_WRITE_ZEROES && !(iod.op_flags & UBLK_IO_F_NOUNMAP) ? BDRV_REQ_MAY_UNMAP
        : 0;
    CHECK(req.flags == want_flags);
    run_on_block_layer(&req, dev_size);
    return 0;
}
