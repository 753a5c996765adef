/*
 * queue-batch.c - batched ublk commands (UBLK_F_BATCH_IO, Linux 7.3) for a
 * queue thread (see ublk/queue.c, include/ublk.h).
 *
 * Without the flag every tag owns a uring_cmd: FETCH, then one
 * COMMIT_AND_FETCH per request.  With it the thread owns three kinds of
 * commands for its queue, each naming many tags:
 *
 *   PREP_IO_CMDS    once, at start: every tag (and its buffer address, or
 *                   its buffer index for AUTO_BUF_REG) in one command;
 *   FETCH_IO_CMDS   one multishot command; each CQE hands over the tags of
 *                   newly queued requests, written as __u16s into a buffer
 *                   the kernel picks from a provided-buffer ring;
 *   COMMIT_IO_CMDS  the results of every tag completed in one loop
 *                   iteration, one command.
 *
 * The tag coroutines of queue.c stay as they are: instead of queueing its
 * own command, a tag that finished a request adds (tag, result) to the
 * pending commit and waits; the FETCH callback wakes the tags it names.
 *
 * From the driver (drivers/block/ublk_drv.c, 7.3): the kernel reads a PREP
 * or COMMIT buffer when it issues the command, which is normally inline in
 * io_uring_submit but can be later (io-wq), so a buffer is reused only after
 * its CQE.  A COMMIT's result is the bytes of elements it processed; it
 * stops at the first bad element.  The FETCH's buffers are consumed whole
 * (no incremental consumption), one per CQE, and given back after their
 * tags are taken; -ENOBUFS, or a CQE without IORING_CQE_F_MORE and no error,
 * ends the multishot and it is armed again; -ENODEV (UBLK_IO_RES_ABORT) is
 * the device going away.  BATCH_IO devices get neither PER_IO_DAEMON nor
 * NEED_GET_DATA, and the kernel does not tie a tag to a task.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <syslog.h>
#include <unistd.h>
#include "aio.h"
#include "ublk.h"

#ifndef IORING_URING_CMD_MULTISHOT
#define IORING_URING_CMD_MULTISHOT (1U << 1)
#endif

#define BATCH_COMMIT_BUFS 4        /* commit buffers: one filling, the rest in flight */
#define BATCH_FETCH_BUFS  8        /* entries of the provided-buffer ring */
#define BATCH_FETCH_GROUP 0        /* its buffer group: the ring's only one */

enum { TAG_IDLE, TAG_BUSY };       /* waiting for a FETCH / with the daemon */

typedef struct BatchCommitBuf {
    AioCompletion comp;
    UblkBatchQueue *b;
    char *elems;
    unsigned n;                    /* elements; 0 = free */
    bool in_flight;
} BatchCommitBuf;

struct UblkBatchQueue {
    AioContext *ctx;
    UblkDev *d;
    unsigned q_id, ntags;
    bool cdev_fixed;
    char *bufs;                    /* tag buffers (copy path), else NULL */
    size_t buf_stride;
    uint16_t buf_index_base;       /* AUTO_BUF_REG index of tag 0 (0; 0xffff in tests) */
    UblkBatchWakeFn *wake;
    void *opaque;

    unsigned elem_bytes;           /* 8, or 16 with a buffer address */
    uint16_t cmd_flags;            /* UBLK_BATCH_F_* */
    uint8_t *tag_state;

    BatchCommitBuf commit[BATCH_COMMIT_BUFS];
    unsigned filling;              /* the commit buffer tags are added to */
    bool commit_logged;

    AioCompletion prep_comp;
    int prep_res;                  /* 1 until PREP_IO_CMDS completes */

    AioCompletion fetch_comp;
    struct io_uring_buf_ring *br;
    size_t br_size;
    char *fetch_bufs;
    unsigned fetch_buf_len;
    bool br_registered;
    bool dead;                     /* FETCH ended for good: no more requests */
};

static struct io_uring_sqe *batch_sqe(UblkBatchQueue *b, uint32_t op, unsigned nr_elem,
                                      unsigned elem_bytes, uint16_t flags)
{
    struct io_uring_sqe *sqe = aio_get_sqe(b->ctx);
    if (b->cdev_fixed) {
        io_uring_prep_rw(IORING_OP_URING_CMD, sqe, 0, NULL, 0, 0);
        sqe->flags |= IOSQE_FIXED_FILE;
    } else {
        io_uring_prep_rw(IORING_OP_URING_CMD, sqe, b->d->cdev_fd, NULL, 0, 0);
    }
    sqe->cmd_op = op;
    struct ublk_batch_io *cmd = (struct ublk_batch_io *)sqe->cmd;
    memset(cmd, 0, sizeof(*cmd));
    cmd->q_id = (uint16_t)b->q_id;
    cmd->flags = flags;
    cmd->nr_elem = (uint16_t)nr_elem;
    cmd->elem_bytes = (uint8_t)elem_bytes;
    return sqe;
}

/* Element k of a PREP/COMMIT buffer for tag, result. */
static void batch_elem(UblkBatchQueue *b, char *elems, unsigned k, unsigned tag, int result)
{
    char *e = elems + (size_t)k * b->elem_bytes;
    struct ublk_elem_header h = {
        .tag = (uint16_t)tag,
        .buf_index = (uint16_t)(b->buf_index_base + tag),
        .result = result,
    };
    memcpy(e, &h, sizeof(h));
    if (b->cmd_flags & UBLK_BATCH_F_HAS_BUF_ADDR) {
        uint64_t addr = (uintptr_t)(b->bufs + (size_t)tag * b->buf_stride);
        memcpy(e + sizeof(h), &addr, sizeof(addr));
    }
}

/* ---- FETCH_IO_CMDS ---- */

static void batch_fetch_arm(UblkBatchQueue *b)
{
    struct io_uring_sqe *sqe = batch_sqe(b, UBLK_U_IO_FETCH_IO_CMDS,
                                         b->fetch_buf_len / sizeof(uint16_t),
                                         sizeof(uint16_t), 0);
    sqe->uring_cmd_flags = IORING_URING_CMD_MULTISHOT;
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BATCH_FETCH_GROUP;
    aio_sqe_set_completion(sqe, &b->fetch_comp);
}

static void batch_fetch_give_back(UblkBatchQueue *b, unsigned bid)
{
    io_uring_buf_ring_add(b->br, b->fetch_bufs + (size_t)bid * b->fetch_buf_len,
                          b->fetch_buf_len, (unsigned short)bid,
                          io_uring_buf_ring_mask(BATCH_FETCH_BUFS), 0);
    io_uring_buf_ring_advance(b->br, 1);
}

/* The device is going away: tags waiting for a request end their loops. */
static void batch_die(UblkBatchQueue *b)
{
    b->dead = true;
    for (unsigned t = 0; t < b->ntags; t++) {
        if (b->tag_state[t] == TAG_IDLE) {
            b->tag_state[t] = TAG_BUSY;
            b->wake(b->opaque, t, UBLK_IO_RES_ABORT);
        }
    }
}

static void batch_fetch_done(AioCompletion *c, int res, unsigned flags)
{
    UblkBatchQueue *b = container_of(c, UblkBatchQueue, fetch_comp);

    if (flags & IORING_CQE_F_BUFFER) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        if (bid >= BATCH_FETCH_BUFS) {
            ublk_log(LOG_ERR, "/dev/ublkc%u queue %u: FETCH_IO_CMDS returned unknown buffer %u",
                     b->d->dev_id, b->q_id, bid);
        } else {
            const char *p = b->fetch_bufs + (size_t)bid * b->fetch_buf_len;
            unsigned n = res > 0 ? MIN((unsigned)res, b->fetch_buf_len) / sizeof(uint16_t) : 0;
            for (unsigned i = 0; i < n; i++) {
                uint16_t tag;
                memcpy(&tag, p + i * sizeof(tag), sizeof(tag));
                /* A tag we do not wait for would re-enter a coroutine that
                 * is elsewhere: only a kernel bug sends one, but check. */
                if (tag >= b->ntags || b->tag_state[tag] != TAG_IDLE) {
                    ublk_log(LOG_ERR, "/dev/ublkc%u queue %u: FETCH_IO_CMDS returned tag %u, "
                             "which is not waiting for a request", b->d->dev_id, b->q_id, tag);
                    continue;
                }
                b->tag_state[tag] = TAG_BUSY;
                b->wake(b->opaque, tag, UBLK_IO_RES_OK);
            }
            /* Its tags are taken: the kernel may fill it again. */
            batch_fetch_give_back(b, bid);
        }
    }
    if (flags & IORING_CQE_F_MORE) {
        return;
    }
    if (res >= 0 || res == -ENOBUFS) {
        /* The multishot ended (ring ran dry, or the kernel chose to):
         * requests queued meanwhile wait in the kernel for the next one. */
        if (!b->dead) {
            batch_fetch_arm(b);
        }
        return;
    }
    if (res != UBLK_IO_RES_ABORT) {
        ublk_log(LOG_ERR, "/dev/ublkc%u queue %u: FETCH_IO_CMDS failed: %s", b->d->dev_id,
                 b->q_id, strerror(-res));
    }
    batch_die(b);
}

/* ---- COMMIT_IO_CMDS ---- */

static void batch_commit_done(AioCompletion *c, int res, unsigned flags)
{
    (void)flags;
    BatchCommitBuf *cb = container_of(c, BatchCommitBuf, comp);
    UblkBatchQueue *b = cb->b;
    int want = (int)(cb->n * b->elem_bytes);
    if (res != want && !b->commit_logged) {
        /* The kernel stops at the first element it refuses: that request
         * and the ones after it were not completed. */
        b->commit_logged = true;
        unsigned bad = res >= 0 ? (unsigned)res / b->elem_bytes : 0;
        struct ublk_elem_header h;
        memcpy(&h, cb->elems + (size_t)bad * b->elem_bytes, sizeof(h));
        ublk_log(LOG_ERR, "/dev/ublkc%u queue %u: COMMIT_IO_CMDS took %d of %d bytes (%s); "
                 "tag %u and %u after it were not committed", b->d->dev_id, b->q_id,
                 res < 0 ? 0 : res, want, res < 0 ? strerror(-res) : "refused element",
                 h.tag, cb->n - bad - 1);
    }
    cb->n = 0;
    cb->in_flight = false;
}

bool ublk_batch_tag_ready(UblkBatchQueue *b, unsigned tag, bool commit, int result)
{
    if (commit) {
        BatchCommitBuf *cb = &b->commit[b->filling];
        /* A tag is in at most one pending commit: it gets no new request
         * before its commit is processed, so depth elements suffice. */
        batch_elem(b, cb->elems, cb->n++, tag, result);
    }
    if (b->dead) {
        return false;
    }
    b->tag_state[tag] = TAG_IDLE;
    return true;
}

void ublk_batch_flush(UblkBatchQueue *b)
{
    BatchCommitBuf *cb = &b->commit[b->filling];
    if (!cb->n) {
        return;
    }
    unsigned next = BATCH_COMMIT_BUFS;
    for (unsigned i = 0; i < BATCH_COMMIT_BUFS; i++) {
        if (i != b->filling && !b->commit[i].in_flight) {
            next = i;
            break;
        }
    }
    if (next == BATCH_COMMIT_BUFS) {
        return;     /* all busy: these go with the next iteration's */
    }
    struct io_uring_sqe *sqe = batch_sqe(b, UBLK_U_IO_COMMIT_IO_CMDS, cb->n, b->elem_bytes,
                                         b->cmd_flags);
    sqe->addr = (uintptr_t)cb->elems;
    sqe->len = cb->n * b->elem_bytes;
    cb->in_flight = true;
    aio_sqe_set_completion(sqe, &cb->comp);
    b->filling = next;
}

void ublk_batch_drain(UblkBatchQueue *b)
{
    for (;;) {
        ublk_batch_flush(b);
        if (!b->commit[b->filling].n) {
            break;
        }
        aio_poll(b->ctx, true);     /* every buffer in flight: wait for one */
    }
    aio_submit(b->ctx);
}

/* ---- setup ---- */

static void batch_prep_done(AioCompletion *c, int res, unsigned flags)
{
    (void)flags;
    UblkBatchQueue *b = container_of(c, UblkBatchQueue, prep_comp);
    b->prep_res = res;
}

UblkBatchQueue *ublk_batch_new(const UblkBatchSetup *s, Error **errp)
{
    UblkDev *d = s->d;
    UblkBatchQueue *b = calloc(1, sizeof(*b));
    if (!b) {
        error_setg(errp, "queue %u of /dev/ublkc%u: out of memory", s->q_id, d->dev_id);
        return NULL;
    }
    b->ctx = s->ctx;
    b->d = d;
    b->q_id = s->q_id;
    b->ntags = s->ntags;
    b->cdev_fixed = s->cdev_fixed;
    b->bufs = s->bufs;
    b->buf_stride = s->buf_stride;
    b->buf_index_base = s->buf_index_base;
    b->wake = s->wake;
    b->opaque = s->opaque;
    b->elem_bytes = sizeof(struct ublk_elem_header);
    if (d->flags & UBLK_F_AUTO_BUF_REG) {
        /* As with the single-tag commands: a request whose pages cannot
         * be registered still arrives, flagged UBLK_IO_F_NEED_REG_BUF. */
        b->cmd_flags = UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK;
    } else if (!(d->flags & (UBLK_F_USER_COPY | UBLK_F_SUPPORT_ZERO_COPY))) {
        /* The kernel copies to and from the tag buffers: every PREP and
         * COMMIT element carries its address. */
        b->cmd_flags = UBLK_BATCH_F_HAS_BUF_ADDR;
        b->elem_bytes += sizeof(uint64_t);
    }
    b->tag_state = malloc(b->ntags);
    size_t commit_len = (size_t)b->ntags * b->elem_bytes;
    b->fetch_buf_len = (unsigned)(b->ntags * sizeof(uint16_t));
    b->br_size = BATCH_FETCH_BUFS * sizeof(struct io_uring_buf);
    long page = sysconf(_SC_PAGESIZE);
    b->br_size = (b->br_size + page - 1) / page * page;
    void *br = mmap(NULL, b->br_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                    -1, 0);
    b->br = br == MAP_FAILED ? NULL : br;
    b->fetch_bufs = malloc((size_t)BATCH_FETCH_BUFS * b->fetch_buf_len);
    bool ok = b->tag_state && b->br && b->fetch_bufs;
    for (unsigned i = 0; ok && i < BATCH_COMMIT_BUFS; i++) {
        b->commit[i].b = b;
        b->commit[i].comp.cb = batch_commit_done;
        b->commit[i].elems = malloc(commit_len);
        ok = b->commit[i].elems != NULL;
    }
    if (!ok) {
        error_setg(errp, "queue %u of /dev/ublkc%u: out of memory for the batch buffers",
                   s->q_id, d->dev_id);
        ublk_batch_free(b);
        return NULL;
    }
    memset(b->tag_state, TAG_BUSY, b->ntags);
    b->fetch_comp.cb = batch_fetch_done;
    b->prep_comp.cb = batch_prep_done;

    /* The provided-buffer ring FETCH_IO_CMDS writes tags into (the raw
     * registration: Debian 12's liburing 2.3 has no io_uring_setup_buf_ring). */
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uintptr_t)b->br;
    reg.ring_entries = BATCH_FETCH_BUFS;
    reg.bgid = BATCH_FETCH_GROUP;
    int ret = io_uring_register_buf_ring(aio_ring(b->ctx), &reg, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "queue %u of /dev/ublkc%u: cannot register the ring of "
                         "buffers for FETCH_IO_CMDS (UBLK_F_BATCH_IO)", s->q_id, d->dev_id);
        ublk_batch_free(b);
        return NULL;
    }
    b->br_registered = true;
    io_uring_buf_ring_init(b->br);
    for (unsigned i = 0; i < BATCH_FETCH_BUFS; i++) {
        batch_fetch_give_back(b, i);
    }
    return b;
}

int ublk_batch_start(UblkBatchQueue *b, Error **errp)
{
    /* Every tag in one PREP; its buffer is the first commit buffer, free
     * until the PREP has completed (we wait for it here). */
    char *elems = b->commit[0].elems;
    for (unsigned t = 0; t < b->ntags; t++) {
        batch_elem(b, elems, t, t, 0);
    }
    struct io_uring_sqe *sqe = batch_sqe(b, UBLK_U_IO_PREP_IO_CMDS, b->ntags, b->elem_bytes,
                                         b->cmd_flags);
    sqe->addr = (uintptr_t)elems;
    sqe->len = b->ntags * b->elem_bytes;
    aio_sqe_set_completion(sqe, &b->prep_comp);
    b->prep_res = 1;
    int ret = aio_submit(b->ctx);
    while (ret >= 0 && b->prep_res == 1) {
        aio_poll(b->ctx, true);
    }
    if (ret < 0 || b->prep_res < 0) {
        error_setg_errno(errp, ret < 0 ? -ret : -b->prep_res, "queue %u of /dev/ublkc%u: "
                         "PREP_IO_CMDS (%u tags, UBLK_F_BATCH_IO) failed", b->q_id,
                         b->d->dev_id, b->ntags);
        return -1;
    }
    batch_fetch_arm(b);
    ret = aio_submit(b->ctx);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "queue %u of /dev/ublkc%u: cannot submit FETCH_IO_CMDS",
                         b->q_id, b->d->dev_id);
        return -1;
    }
    return 0;
}

void ublk_batch_free(UblkBatchQueue *b)
{
    if (!b) {
        return;
    }
    /* After the ring is gone (ublk_queues_stop): it may still have held
     * the buffers. */
    for (unsigned i = 0; i < BATCH_COMMIT_BUFS; i++) {
        free(b->commit[i].elems);
    }
    if (b->br) {
        munmap(b->br, b->br_size);
    }
    free(b->fetch_bufs);
    free(b->tag_state);
    free(b);
}
