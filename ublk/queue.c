/*
 * queue.c - ublk queue threads (see include/ublk.h).
 *
 * One thread per hardware queue, each with its own AioContext whose ring
 * carries both the ublk I/O commands and the backing-file I/O, so a request
 * never leaves the thread that received it.  Every tag owns, from start to
 * stop, a coroutine and a max-I/O-sized buffer; the coroutine is a loop:
 *
 *     FETCH -> yield -> (NEED_GET_DATA -> yield) -> blk_co_* on the buffer
 *           -> COMMIT_AND_FETCH(result) -> yield -> ...
 *
 * The ublk command's completion (an AioCompletion embedded in the tag)
 * re-enters the coroutine, so nothing is allocated or looked up per request.
 * A tag's loop ends when the kernel answers UBLK_IO_RES_ABORT (device
 * stopping); the thread ends when all its tags have, or when the main thread
 * says stop and no request is being handled.
 *
 * The thread attaches itself to the graph (blk_attach_thread) before its
 * first request and detaches after its last, so drivers with per-thread
 * state set it up and drop it on the thread that uses it.
 *
 * With UBLK_F_USER_COPY the kernel does not copy data to/from the tag
 * buffer: the tag reads/writes /dev/ublkcN at ublk_user_copy_pos(), also as
 * SQEs on this ring.
 *
 * Per-I/O threads (--per-io-threads, UBLK_F_PER_IO_DAEMON): the kernel
 * lets the task that FETCHes a tag serve it, so the threads need not match
 * the queues.  Thread idx of n serves every n-th (queue, tag) pair of the
 * device (ublk_per_io_thread_pair), one queue spread over several threads
 * that way.  The kernel takes a tag's later commands (COMMIT_AND_FETCH,
 * NEED_GET_DATA, REGISTER_IO_BUF...) only from the task that fetched it
 * (-EINVAL otherwise); this is why a tag never moves between threads.
 * Each thread numbers its tags 0.. (the tag's slot): the slot picks its
 * buffer and its index in the thread's ring, since two queues' tag 5 can
 * share a thread and the kernel registers a request's pages in the ring that
 * fetched it.  Without the option, thread i serves queue i and slot = tag.
 *
 * Zero copy: there are no tag buffers.  The request's own pages sit at
 * index `slot` of this ring's buffer table while the daemon handles it, and
 * go down the graph as one registered-buffer reference (include/iov.h);
 * layers that must see the bytes bounce (io/block-io-fixed.c).  With
 * UBLK_F_AUTO_BUF_REG the kernel registers them before it completes the
 * FETCH/COMMIT_AND_FETCH that named the index in sqe->addr, and unregisters
 * them when the commit arrives.  With UBLK_F_SUPPORT_ZERO_COPY alone (6.15)
 * the tag queues REGISTER_IO_BUF before its first data SQE and
 * UNREGISTER_IO_BUF before its commit; the ring issues SQEs in order and
 * both commands complete inline, so neither needs a wait of its own.
 * With UBLK_AUTO_BUF_REG_FALLBACK a request whose pages the kernel could not
 * register arrives flagged UBLK_IO_F_NEED_REG_BUF; the device has
 * SUPPORT_ZERO_COPY too (ublk_dev_config_zero_copy_flags), so the tag
 * registers them itself as on 6.15.
 *
 * Batched commands (UBLK_F_BATCH_IO, ublk/queue-batch.c): the tags keep
 * their loop, but a tag's command is an element of the queue's PREP/COMMIT
 * and its wake-up comes from the queue's multishot FETCH; the thread loop
 * sends the commits of each iteration as one command.
 */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <syslog.h>
#include <unistd.h>
#include "aio.h"
#include "coroutine.h"
#include "ublk.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

typedef struct UblkTag {
    AioCompletion comp;        /* completion of this tag's ublk command */
    Coroutine *co;
    UblkQueue *q;              /* the thread serving it */
    const struct ublksrv_io_desc *descs;   /* its hardware queue's descriptors */
    unsigned q_id;             /* its hardware queue */
    unsigned tag;
    unsigned slot;             /* its index in the thread: buffer, ring buffer index */
    int res;
    void *buf;                 /* NULL with zero copy */
    AioCompletion reg_comp;    /* SUPPORT_ZERO_COPY: REGISTER_IO_BUF */
    AioCompletion unreg_comp;  /* and UNREGISTER_IO_BUF, neither waited for */
    int reg_res;               /* REGISTER_IO_BUF's result; 1 until it arrives */
} UblkTag;

struct UblkQueue {
    UblkDev *d;
    unsigned q_id;             /* the queue; with per-I/O threads the thread's index */
    pthread_t thread;
    bool thread_started;
    AioContext *ctx;
    const struct ublksrv_io_desc **descs;  /* per hardware queue; NULL where unserved */
    size_t descs_size;         /* of each mapping */
    char *bufs;
    size_t bufs_size;
    UblkTag *tags;
    unsigned ntags;            /* depth, or this thread's share of all tags */
    uint64_t served;           /* requests handled (read after the join) */
    unsigned live_tags;        /* tags whose loop has not ended */
    unsigned busy;             /* tags between a request's arrival and its commit */
    bool pin;
    bool cdev_fixed;           /* /dev/ublkcN is fixed file 0 of the ring */
    bool zc_auto;              /* UBLK_F_AUTO_BUF_REG */
    bool zc_register;          /* UBLK_F_SUPPORT_ZERO_COPY without AUTO_BUF_REG */
    bool need_reg_logged;
    uint16_t auto_reg_base;    /* AUTO_BUF_REG index of slot 0: 0, or past the
                                  table when UBLKD_TEST_AUTO_BUF_REG_FAIL is set */
    UblkBatchQueue *batch;     /* UBLK_F_BATCH_IO */
    cpu_set_t cpus;
    sem_t ready;
    Error *err;                /* set if setup failed */
    volatile int exited;
};

/* ---- the ublk commands ---- */

static void tag_cmd_done(AioCompletion *c, int res, unsigned flags)
{
    (void)flags;
    UblkTag *t = container_of(c, UblkTag, comp);
    t->res = res;
    aio_co_wake(t->co);
}

static struct io_uring_sqe *queue_uring_cmd(UblkQueue *q)
{
    struct io_uring_sqe *sqe = aio_get_sqe(q->ctx);
    if (q->cdev_fixed) {
        io_uring_prep_rw(IORING_OP_URING_CMD, sqe, 0, NULL, 0, 0);
        sqe->flags |= IOSQE_FIXED_FILE;
    } else {
        io_uring_prep_rw(IORING_OP_URING_CMD, sqe, q->d->cdev_fd, NULL, 0, 0);
    }
    return sqe;
}

static void tag_queue_cmd(UblkTag *t, unsigned nr, int result)
{
    UblkQueue *q = t->q;
    UblkDev *d = q->d;
    struct io_uring_sqe *sqe = queue_uring_cmd(q);
    if (d->flags & UBLK_F_CMD_IOCTL_ENCODE) {
        sqe->cmd_op = nr == UBLK_IO_FETCH_REQ ? UBLK_U_IO_FETCH_REQ
                    : nr == UBLK_IO_COMMIT_AND_FETCH_REQ ? UBLK_U_IO_COMMIT_AND_FETCH_REQ
                    : UBLK_U_IO_NEED_GET_DATA;
    } else {
        sqe->cmd_op = nr;
    }
    struct ublksrv_io_cmd *cmd = (struct ublksrv_io_cmd *)sqe->cmd;
    cmd->q_id = t->q_id;
    cmd->tag = t->tag;
    cmd->result = result;
    /* 0 with USER_COPY, and with zero copy (t->buf is NULL then) */
    cmd->addr = (d->flags & UBLK_F_USER_COPY) ? 0 : (uintptr_t)t->buf;
    if (q->zc_auto) {
        /* The next request's pages go to index `slot`.  FALLBACK: should
         * the kernel fail to register them, it still delivers the request
         * (flagged NEED_REG_BUF) instead of failing it unseen. */
        struct ublk_auto_buf_reg reg = { .index = (__u16)(q->auto_reg_base + t->slot),
                                         .flags = UBLK_AUTO_BUF_REG_FALLBACK };
        sqe->addr = ublk_auto_buf_reg_to_sqe_addr(&reg);
    }
    aio_sqe_set_completion(sqe, &t->comp);
}

static void tag_reg_done(AioCompletion *c, int res, unsigned flags)
{
    (void)flags;
    UblkTag *t = container_of(c, UblkTag, reg_comp);
    t->reg_res = res;
    if (res < 0) {
        ublk_log(3, "/dev/ublkc%u queue %u tag %u: REGISTER_IO_BUF failed: %s",
                 t->q->d->dev_id, t->q_id, t->tag, strerror(-res));
    }
}

static void tag_unreg_done(AioCompletion *c, int res, unsigned flags)
{
    (void)flags;
    UblkTag *t = container_of(c, UblkTag, unreg_comp);
    if (res < 0) {
        ublk_log(3, "/dev/ublkc%u queue %u tag %u: UNREGISTER_IO_BUF failed: %s",
                 t->q->d->dev_id, t->q_id, t->tag, strerror(-res));
    }
}

/* SUPPORT_ZERO_COPY: put the request's pages at (or take them from) index
 * `slot`.  Not waited for: SQEs queued after this one are issued after it. */
static void tag_queue_buf_cmd(UblkTag *t, bool reg)
{
    UblkQueue *q = t->q;
    struct io_uring_sqe *sqe = queue_uring_cmd(q);
    sqe->cmd_op = reg ? UBLK_U_IO_REGISTER_IO_BUF : UBLK_U_IO_UNREGISTER_IO_BUF;
    struct ublksrv_io_cmd *cmd = (struct ublksrv_io_cmd *)sqe->cmd;
    cmd->q_id = t->q_id;
    cmd->tag = t->tag;
    cmd->result = 0;
    cmd->addr = t->slot;       /* the buffer index */
    if (reg) {
        t->reg_res = 1;
    }
    aio_sqe_set_completion(sqe, reg ? &t->reg_comp : &t->unreg_comp);
}

/* Requests served through UBLK_IO_F_NEED_REG_BUF (process-wide: a daemon
 * serves one device). */
static uint64_t zc_reg_fallbacks;

uint64_t ublk_zc_reg_fallback_count(void)
{
    return __atomic_load_n(&zc_reg_fallbacks, __ATOMIC_RELAXED);
}

/* A read or write whose data stays in the request's pages. */
static int coroutine_fn tag_rw_zero_copy(UblkTag *t, const UblkRequest *req, uint32_t op_flags)
{
    UblkQueue *q = t->q;
    UblkDev *d = q->d;
    IOVector qiov;
    int ret;

    bool reg = q->zc_register;
    if (q->zc_auto && (op_flags & UBLK_IO_F_NEED_REG_BUF) &&
        (d->flags & UBLK_F_SUPPORT_ZERO_COPY)) {
        /* The kernel could not register the pages (out of memory, or an
         * index it refused): register them by hand, at the tag's slot. */
        reg = true;
        __atomic_fetch_add(&zc_reg_fallbacks, 1, __ATOMIC_RELAXED);
    } else if (q->zc_auto && (op_flags & UBLK_IO_F_NEED_REG_BUF)) {
        /* A device added before the fallback asked for SUPPORT_ZERO_COPY
         * (recovered from an older ublkd): no other way to the data. */
        if (!q->need_reg_logged) {
            q->need_reg_logged = true;
            ublk_log(3, "/dev/ublkc%u queue %u: the kernel could not register a request's "
                     "buffer (UBLK_IO_F_NEED_REG_BUF); failing such requests with EIO",
                     d->dev_id, t->q_id);
        }
        return -EIO;
    }
    if (reg) {
        tag_queue_buf_cmd(t, true);
    }
    aio_kernel_buffer_set(q->ctx, t->slot, (size_t)req->bytes);
    iov_init_buf(&qiov, iov_reg_cookie(aio_ring_id(q->ctx), t->slot, 0), (size_t)req->bytes);
    if (req->op == UBLK_IO_OP_READ) {
        ret = blk_co_preadv(d->blk, req->offset, req->bytes, &qiov, 0);
    } else {
        ret = blk_co_pwritev(d->blk, req->offset, req->bytes, &qiov, req->flags);
    }
    aio_kernel_buffer_clear(q->ctx, t->slot);
    if (reg) {
        /* Its error, once it arrived, is the one to report: the I/O's
         * (-EFAULT, -ENOENT...) only follows from it. */
        if (t->reg_res < 0) {
            ret = t->reg_res;
        }
        tag_queue_buf_cmd(t, false);
    }
    return ret < 0 ? ret : (int)req->bytes;
}

/* USER_COPY: move len bytes between the tag buffer and the request.
 * Plain READ/WRITE, not aio_co_preadv/pwritev: the tag buffers are
 * registered, and the ublk char device refuses the kernel-side (bvec)
 * iterator a READ_FIXED/WRITE_FIXED hands it, with -EACCES. */
static int coroutine_fn user_copy(UblkTag *t, size_t len, bool to_request)
{
    UblkDev *d = t->q->d;
    size_t done = 0;
    while (done < len) {
        char *p = (char *)t->buf + done;
        unsigned n = (unsigned)(len - done);
        uint64_t pos = (uint64_t)ublk_user_copy_pos(t->q_id, t->tag, done);
        struct io_uring_sqe *sqe = aio_get_sqe(t->q->ctx);
        if (to_request) {
            io_uring_prep_write(sqe, d->cdev_fd, p, n, pos);
        } else {
            io_uring_prep_read(sqe, d->cdev_fd, p, n, pos);
        }
        int r = aio_co_submit_sqe_wait(sqe, NULL);
        if (r < 0) {
            return r;
        }
        if (r == 0) {
            return -EIO;
        }
        done += r;
    }
    return 0;
}

int ublk_io_desc_to_request(const struct ublksrv_io_desc *iod, int64_t dev_size,
                            uint32_t max_io_size, UblkRequest *req)
{
    unsigned op = ublksrv_get_op(iod);
    uint64_t sectors = dev_size > 0 ? (uint64_t)dev_size >> 9 : 0;

    memset(req, 0, sizeof(*req));
    req->op = op;
    switch (op) {
    case UBLK_IO_OP_FLUSH:
        return 0;
    case UBLK_IO_OP_READ:
    case UBLK_IO_OP_WRITE:
    case UBLK_IO_OP_DISCARD:
    case UBLK_IO_OP_WRITE_ZEROES:
        break;
    default:
        return -EOPNOTSUPP;
    }
    /* In sectors, so nothing overflows: the device has at most 2^54. */
    if (iod->start_sector > sectors || iod->nr_sectors > sectors - iod->start_sector) {
        return -EINVAL;
    }
    req->offset = (int64_t)(iod->start_sector << 9);
    req->bytes = (int64_t)iod->nr_sectors << 9;
    if ((op == UBLK_IO_OP_READ || op == UBLK_IO_OP_WRITE) && req->bytes > (int64_t)max_io_size) {
        return -EINVAL;
    }
    if (op == UBLK_IO_OP_WRITE && (iod->op_flags & UBLK_IO_F_FUA)) {
        req->flags = BDRV_REQ_FUA;
    }
    if (op == UBLK_IO_OP_WRITE_ZEROES && !(iod->op_flags & UBLK_IO_F_NOUNMAP)) {
        req->flags = BDRV_REQ_MAY_UNMAP;
    }
    return 0;
}

/* Handle one request; returns the COMMIT result (bytes or -errno). */
static int coroutine_fn tag_handle_io(UblkTag *t)
{
    UblkQueue *q = t->q;
    UblkDev *d = q->d;
    UblkRequest req;
    IOVector qiov;
    int ret;

    /* One copy of the shared descriptor: what is checked is what is used. */
    struct ublksrv_io_desc iod = t->descs[t->tag];
    ret = ublk_io_desc_to_request(&iod, __atomic_load_n(&d->size, __ATOMIC_ACQUIRE),
                                  d->max_io_size, &req);
    if (ret < 0) {
        return ret;
    }
    if ((q->zc_auto || q->zc_register) &&
        (req.op == UBLK_IO_OP_READ || req.op == UBLK_IO_OP_WRITE)) {
        return tag_rw_zero_copy(t, &req, iod.op_flags);
    }
    switch (req.op) {
    case UBLK_IO_OP_READ:
        iov_init_buf(&qiov, t->buf, req.bytes);
        ret = blk_co_preadv(d->blk, req.offset, req.bytes, &qiov, 0);
        if (ret >= 0 && (d->flags & UBLK_F_USER_COPY)) {
            ret = user_copy(t, req.bytes, true);
        }
        return ret < 0 ? ret : (int)req.bytes;
    case UBLK_IO_OP_WRITE:
        if (d->flags & UBLK_F_USER_COPY) {
            ret = user_copy(t, req.bytes, false);
            if (ret < 0) {
                return ret;
            }
        }
        iov_init_buf(&qiov, t->buf, req.bytes);
        ret = blk_co_pwritev(d->blk, req.offset, req.bytes, &qiov, req.flags);
        return ret < 0 ? ret : (int)req.bytes;
    case UBLK_IO_OP_FLUSH:
        return blk_co_flush(d->blk);
    case UBLK_IO_OP_DISCARD:
        return blk_co_pdiscard(d->blk, req.offset, req.bytes);
    default: /* UBLK_IO_OP_WRITE_ZEROES */
        return blk_co_pwrite_zeroes(d->blk, req.offset, req.bytes, req.flags);
    }
}

static void coroutine_fn tag_main(void *opaque)
{
    UblkTag *t = opaque;
    UblkQueue *q = t->q;
    unsigned cmd = UBLK_IO_FETCH_REQ;
    int result = 0;

    for (;;) {
        if (!q->batch) {
            tag_queue_cmd(t, cmd, result);
            co_yield();
        } else if (ublk_batch_tag_ready(q->batch, t->tag, cmd != UBLK_IO_FETCH_REQ, result)) {
            co_yield();          /* tag_batch_wake sets t->res */
        } else {
            t->res = UBLK_IO_RES_ABORT;
        }
        if (t->res == UBLK_IO_RES_ABORT) {
            break;
        }
        if (t->res < 0) {
            ublk_log(3, "/dev/ublkc%u queue %u tag %u: %s failed: %s", q->d->dev_id, t->q_id,
                     t->tag, cmd == UBLK_IO_FETCH_REQ ? "FETCH_REQ" : "COMMIT_AND_FETCH_REQ",
                     strerror(-t->res));
            break;
        }
        q->busy++;
        if (t->res == UBLK_IO_RES_NEED_GET_DATA) {
            tag_queue_cmd(t, UBLK_IO_NEED_GET_DATA, 0);
            co_yield();
            if (t->res < 0) {
                q->busy--;
                if (t->res != UBLK_IO_RES_ABORT) {
                    ublk_log(3, "/dev/ublkc%u queue %u tag %u: NEED_GET_DATA failed: %s",
                             q->d->dev_id, t->q_id, t->tag, strerror(-t->res));
                }
                break;
            }
        }
        result = tag_handle_io(t);
        q->busy--;
        q->served++;
        cmd = UBLK_IO_COMMIT_AND_FETCH_REQ;
    }
    q->live_tags--;
}

static void tag_batch_wake(void *opaque, unsigned tag, int res)
{
    UblkQueue *q = opaque;
    UblkTag *t = &q->tags[tag];     /* slot = tag: BATCH_IO has no per-I/O threads */
    t->res = res;
    aio_co_wake(t->co);
}

/* ---- the thread ---- */

static int queue_start_tags(UblkQueue *q);

/* "queue 0" or "I/O thread 0": what messages call this thread */
static const char *queue_what(const UblkQueue *q)
{
    return q->d->per_io_threads ? "I/O thread" : "queue";
}

/* The (queue, tag) pair of the thread's k-th tag. */
static void queue_pair(const UblkQueue *q, unsigned k, unsigned *q_id, unsigned *tag)
{
    const UblkDev *d = q->d;
    if (d->per_io_threads) {
        ublk_per_io_thread_pair(d->depth, d->nr_threads, q->q_id, k, q_id, tag);
    } else {
        *q_id = q->q_id;
        *tag = k;
    }
}

/* Map the descriptor arrays of the queues this thread serves (read-only,
 * shared with the kernel; one mapping per queue and thread). */
static int queue_map_descs(UblkQueue *q)
{
    UblkDev *d = q->d;
    size_t page = sysconf(_SC_PAGESIZE);
    q->descs = calloc(d->nr_queues, sizeof(*q->descs));
    if (!q->descs) {
        error_setg(&q->err, "%s %u of /dev/ublkc%u: out of memory", queue_what(q), q->q_id,
                   d->dev_id);
        return -1;
    }
    q->descs_size = ublk_queue_desc_size(d->depth, page);
    for (unsigned k = 0; k < q->ntags; k++) {
        unsigned qid, tag;
        queue_pair(q, k, &qid, &tag);
        if (q->descs[qid]) {
            continue;
        }
        void *m = mmap(NULL, q->descs_size, PROT_READ, MAP_SHARED | MAP_POPULATE, d->cdev_fd,
                       ublk_queue_desc_offset(qid));
        if (m == MAP_FAILED) {
            error_setg_errno(&q->err, errno, "queue %u: cannot map the descriptors of "
                             "/dev/ublkc%u", qid, d->dev_id);
            return -1;
        }
        q->descs[qid] = m;
    }
    return 0;
}

static int queue_setup(UblkQueue *q)
{
    UblkDev *d = q->d;

    q->ntags = d->per_io_threads
               ? ublk_per_io_thread_ntags(d->nr_queues, d->depth, d->nr_threads, q->q_id)
               : d->depth;
    unsigned entries = MIN(2 * q->ntags + 64, 32768U);
    q->ctx = aio_context_new(entries, &q->err);
    if (!q->ctx) {
        error_prepend(&q->err, "%s %u of /dev/ublkc%u: ", queue_what(q), q->q_id, d->dev_id);
        return -1;
    }
    aio_set_current(q->ctx);
    /* Every command names the char device: as a fixed file the kernel
     * skips a file lookup and reference per command (ublksrv does this). */
    q->cdev_fixed = io_uring_register_files(aio_ring(q->ctx), &d->cdev_fd, 1) == 0;

    if (queue_map_descs(q) < 0) {
        return -1;
    }

    q->zc_auto = d->flags & UBLK_F_AUTO_BUF_REG;
    /* Test hook: an index past the table makes every registration fail,
     * so every request takes the NEED_REG_BUF path (kublk's null target
     * does the same with --auto_zc_fallback). */
    if (q->zc_auto && getenv("UBLKD_TEST_AUTO_BUF_REG_FAIL")) {
        q->auto_reg_base = (uint16_t)(UINT16_MAX - q->ntags + 1);
    }
    q->zc_register = !q->zc_auto && (d->flags & UBLK_F_SUPPORT_ZERO_COPY);
    if (q->zc_auto || q->zc_register) {
        /* The kernel fills index `slot` with each request's pages. */
        int ret = aio_kernel_buffers_init(q->ctx, q->ntags);
        if (ret < 0) {
            error_setg_errno(&q->err, -ret, "%s %u of /dev/ublkc%u: cannot make the ring's "
                             "table of %u buffers for zero copy", queue_what(q), q->q_id,
                             d->dev_id, q->ntags);
            return -1;
        }
        return queue_start_tags(q);
    }
    q->bufs_size = (size_t)q->ntags * d->max_io_size;
    void *m = mmap(NULL, q->bufs_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        error_setg_errno(&q->err, errno, "%s %u of /dev/ublkc%u: cannot allocate %zu bytes "
                         "of buffers (%u tags x --max-io-size %u)", queue_what(q), q->q_id,
                         d->dev_id, q->bufs_size, q->ntags, d->max_io_size);
        return -1;
    }
    q->bufs = m;
    /* Each tag touches only as much of its buffer as its requests need;
     * transparent huge pages would fault in (and clear) 2 MiB at a time,
     * on the I/O path, for every few tags. */
    madvise(q->bufs, q->bufs_size, MADV_NOHUGEPAGE);
    /* Backing O_DIRECT I/O into registered tag buffers skips pinning the
     * pages per request.  Without it (old kernel, memlock limit) nothing
     * changes; USER_COPY's char device I/O never uses it (user_copy). */
    aio_register_buffer_slots(q->ctx, q->bufs, d->max_io_size, q->ntags);
    return queue_start_tags(q);
}

static int queue_start_tags(UblkQueue *q)
{
    UblkDev *d = q->d;
    q->tags = calloc(q->ntags, sizeof(UblkTag));
    if (!q->tags) {
        error_setg(&q->err, "%s %u of /dev/ublkc%u: out of memory for %u tags",
                   queue_what(q), q->q_id, d->dev_id, q->ntags);
        return -1;
    }
    for (unsigned i = 0; i < q->ntags; i++) {
        UblkTag *t = &q->tags[i];
        t->comp.cb = tag_cmd_done;
        t->reg_comp.cb = tag_reg_done;
        t->unreg_comp.cb = tag_unreg_done;
        t->q = q;
        queue_pair(q, i, &t->q_id, &t->tag);
        t->slot = i;
        t->descs = q->descs[t->q_id];
        t->buf = q->bufs ? q->bufs + (size_t)i * d->max_io_size : NULL;
        t->co = co_create(tag_main, t);
        q->live_tags++;
    }
    if (d->flags & UBLK_F_BATCH_IO) {
        UblkBatchSetup bs = {
            .ctx = q->ctx, .d = d, .q_id = q->q_id, .ntags = q->ntags,
            .cdev_fixed = q->cdev_fixed, .bufs = q->bufs, .buf_stride = d->max_io_size,
            .buf_index_base = q->auto_reg_base, .wake = tag_batch_wake, .opaque = q,
        };
        q->batch = ublk_batch_new(&bs, &q->err);
        if (!q->batch) {
            return -1;
        }
    }
    for (unsigned i = 0; i < q->ntags; i++) {
        co_enter(q->tags[i].co);   /* queues FETCH (or waits for the batch's) and yields */
    }
    if (q->batch) {
        return ublk_batch_start(q->batch, &q->err);
    }
    /* The kernel must see every FETCH before START_DEV can complete. */
    int ret = aio_submit(q->ctx);
    if (ret < 0) {
        error_setg_errno(&q->err, -ret, "%s %u of /dev/ublkc%u: cannot submit FETCH commands",
                         queue_what(q), q->q_id, d->dev_id);
        return -1;
    }
    return 0;
}

/* The ring itself is freed by ublk_queues_stop after the join, so the main
 * thread can aio_notify it without racing with its destruction.  Tag
 * coroutines still parked in a FETCH are abandoned: the ring's exit cancels
 * their commands, and the process is about to go anyway. */
static void queue_teardown(UblkQueue *q)
{
    for (unsigned i = 0; q->descs && i < q->d->nr_queues; i++) {
        if (q->descs[i]) {
            munmap((void *)q->descs[i], q->descs_size);
        }
    }
    free(q->descs);
    q->descs = NULL;
    if (q->bufs) {
        munmap(q->bufs, q->bufs_size);
        q->bufs = NULL;
    }
}

static void *queue_thread(void *opaque)
{
    UblkQueue *q = opaque;
    UblkDev *d = q->d;
    char name[16];

    /* `ublkd list` and the tests find the threads by these names. */
    snprintf(name, sizeof(name), d->per_io_threads ? "ublk%u-t%u" : "ublk%u-q%u", d->dev_id,
             q->q_id);
    pthread_setname_np(pthread_self(), name);
    if (q->pin) {
        sched_setaffinity(0, sizeof(q->cpus), &q->cpus);
    }
    /* Memory reclaim may write to this device: do not let it wait on us. */
    prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0);

    if (queue_setup(q) < 0) {
        sem_post(&q->ready);
        queue_teardown(q);
        q->exited = 1;
        return NULL;
    }
    /* Before the first poll, so before the first request: the FETCHes
     * queued by queue_setup return only from there. */
    if (d->blk) {
        blk_attach_thread(d->blk);
    }
    sem_post(&q->ready);

    while (q->live_tags > 0) {
        if (q->batch) {
            ublk_batch_flush(q->batch);   /* this iteration's commits, one command */
        }
        if (__atomic_load_n(&d->stopping, __ATOMIC_ACQUIRE) && q->busy == 0) {
            aio_submit(q->ctx);      /* commits queued in this iteration */
            break;
        }
        aio_poll(q->ctx, true);
    }
    /* No request of this thread is in flight: the loop ends only when no
     * tag is busy. */
    if (q->batch) {
        ublk_batch_drain(q->batch);
    }
    if (d->blk) {
        blk_detach_thread(d->blk);
    }
    queue_teardown(q);
    __atomic_store_n(&q->exited, 1, __ATOMIC_RELEASE);
    if (!__atomic_load_n(&d->stopping, __ATOMIC_ACQUIRE)) {
        kill(getpid(), SIGUSR2);     /* the kernel took the device away: tell main */
    }
    return NULL;
}

int ublk_queues_start(UblkDev *d, Error **errp)
{
    /* Fewer tags than threads (the kernel granted fewer queues than asked
     * for) would leave threads with nothing to serve. */
    if (d->per_io_threads) {
        d->nr_threads = MIN(d->per_io_threads, d->nr_queues * d->depth);
    } else {
        d->nr_threads = d->nr_queues;
    }
    d->queues = calloc(d->nr_threads, sizeof(UblkQueue *));
    if (!d->queues) {
        error_setg(errp, "/dev/ublkc%u: out of memory for %u threads", d->dev_id, d->nr_threads);
        return -1;
    }
    for (unsigned i = 0; i < d->nr_threads; i++) {
        UblkQueue *q = calloc(1, sizeof(*q));
        if (!q) {
            error_setg(errp, "thread %u of /dev/ublkc%u: out of memory", i, d->dev_id);
            return -1;
        }
        q->d = d;
        q->q_id = i;
        sem_init(&q->ready, 0, 0);
        if (!d->per_io_threads && d->affinity == UBLK_AFFINITY_QUEUE && d->ctrl &&
            ublk_ctrl_get_queue_affinity(d->ctrl, d->dev_id, i, &q->cpus) == 0 &&
            CPU_COUNT(&q->cpus) > 0) {
            q->pin = true;
        }
        d->queues[i] = q;
        int ret = pthread_create(&q->thread, NULL, queue_thread, q);
        if (ret) {
            error_setg_errno(errp, ret, "cannot start the thread of %s %u of /dev/ublkc%u",
                             queue_what(q), i, d->dev_id);
            return -1;
        }
        q->thread_started = true;
        sem_wait(&q->ready);
        if (q->err) {
            error_propagate(errp, q->err);
            q->err = NULL;
            return -1;
        }
    }
    return 0;
}

void ublk_queues_stop(UblkDev *d)
{
    if (!d->queues) {
        return;
    }
    __atomic_store_n(&d->stopping, 1, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < d->nr_threads; i++) {
        UblkQueue *q = d->queues[i];
        if (q && q->thread_started && q->ctx) {
            aio_notify(q->ctx);
        }
    }
    for (unsigned i = 0; i < d->nr_threads; i++) {
        UblkQueue *q = d->queues[i];
        if (!q) {
            continue;
        }
        if (q->thread_started) {
            pthread_join(q->thread, NULL);
        }
        if (d->per_io_threads && q->thread_started) {
            /* How the work was shared: the tests check every thread served. */
            ublk_log(LOG_INFO, "I/O thread %u (%u tags) served %llu requests", i, q->ntags,
                     (unsigned long long)q->served);
        }
        aio_context_free(q->ctx);
        ublk_batch_free(q->batch);
        sem_destroy(&q->ready);
        error_free(q->err);
        free(q->tags);
        free(q);
    }
    free(d->queues);
    d->queues = NULL;
}

unsigned ublk_queues_running(UblkDev *d)
{
    unsigned n = 0;
    for (unsigned i = 0; d->queues && i < d->nr_threads; i++) {
        if (d->queues[i] && !__atomic_load_n(&d->queues[i]->exited, __ATOMIC_ACQUIRE)) {
            n++;
        }
    }
    return n;
}
