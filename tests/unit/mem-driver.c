/*
 * mem-driver.c - the in-memory test driver "mem" and the helpers around it
 * (see tests/unit/test-util.h for the API and what each knob is for).
 *
 * One BlockDriver table per combination of "callbacks left out" and
 * format/protocol, built and registered the first time a test asks for it:
 * the core decides fallbacks by whether a callback exists, so the tables must
 * really differ.  Every callback logs what it received before doing anything
 * else, so tests can assert on the exact requests the core produced.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "test-util.h"

#define MEM_LOG_MAX 8192
#define MEM_MAX_INJECT 8

typedef struct MemInject {
    MemOp op;
    int64_t offset, bytes;
    int err, count;
} MemInject;

typedef struct MemState {
    pthread_mutex_t lock;       /* everything below; never held across a yield */
    MemConfig cfg;
    uint8_t *data;
    int64_t size;
    uint8_t *status;            /* MemStatus per granule */
    int64_t ngran;
    uint32_t gran;
    unsigned yield_mask;
    unsigned gate_mask;         /* ops that park before returning */
    int64_t gate_before_off, gate_before_len;   /* writes here park before storing */
    int gate_parked;
    CoQueue gate_queue;
    MemInject inject[MEM_MAX_INJECT];
    int ninject;
    int calls[MEM_OP__MAX];
    int64_t bytes[MEM_OP__MAX];
    MemLogEntry log[MEM_LOG_MAX];
    int nlog;
    int drain_calls[2];         /* drain_begin, drain_end */
    unsigned drain_seq[2];      /* mem_drain_clock at the last of each */
} MemState;

/* Orders drain callbacks across nodes. */
static unsigned mem_drain_clock;

/* The config for the node being opened (nodes are opened on one thread). */
static const MemConfig *mem_pending_cfg;

static MemState *ms(BlockDriverState *bs)
{
    assert_true(bs_is_mem(bs));
    return bs->opaque;
}

/* ---- state helpers (lock held) ---- */

static void mem_resize_locked(MemState *s, int64_t new_size, MemStatus fill)
{
    int64_t ngran = (new_size + s->gran - 1) / s->gran;
    s->data = realloc(s->data, new_size ? new_size : 1);
    assert_non_null(s->data);
    if (new_size > s->size) {
        memset(s->data + s->size, 0, new_size - s->size);
    }
    s->status = realloc(s->status, ngran ? ngran : 1);
    assert_non_null(s->status);
    if (ngran > s->ngran) {
        memset(s->status + s->ngran, fill, ngran - s->ngran);
    }
    s->size = new_size;
    s->ngran = ngran;
}

static void mem_mark_locked(MemState *s, int64_t offset, int64_t len, MemStatus st)
{
    if (len <= 0) {
        return;
    }
    int64_t first = offset / s->gran, last = (offset + len - 1) / s->gran;
    for (int64_t g = first; g <= last && g < s->ngran; g++) {
        s->status[g] = st;
    }
}

static MemStatus mem_status_locked(MemState *s, int64_t offset)
{
    int64_t g = offset / s->gran;
    return g < s->ngran ? (MemStatus)s->status[g] : MEM_ZERO;
}

/* Length of the run of equal status starting at offset, capped at end. */
static int64_t mem_run_locked(MemState *s, int64_t offset, int64_t end, MemStatus *st)
{
    *st = mem_status_locked(s, offset);
    int64_t pos = offset;
    while (pos < end && mem_status_locked(s, pos) == *st) {
        pos = (pos / s->gran + 1) * s->gran;
    }
    return MIN(pos, end) - offset;
}

/* Log the call and decide whether an injected error applies. */
static int mem_enter(BlockDriverState *bs, MemOp op, int64_t offset, int64_t bytes,
                     BdrvRequestFlags flags, int *log_index)
{
    MemState *s = ms(bs);
    int ret = 0;
    pthread_mutex_lock(&s->lock);
    s->calls[op]++;
    s->bytes[op] += bytes;
    *log_index = -1;
    if (s->nlog < MEM_LOG_MAX) {
        *log_index = s->nlog;
        s->log[s->nlog++] = (MemLogEntry){ op, offset, bytes, flags, 0, 0 };
    }
    for (int i = 0; i < s->ninject; i++) {
        MemInject *in = &s->inject[i];
        if (in->op != op || in->count == 0) {
            continue;
        }
        if (in->bytes && (offset + bytes <= in->offset || offset >= in->offset + in->bytes)) {
            continue;
        }
        if (in->count > 0) {
            in->count--;
        }
        ret = in->err;
        break;
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int mem_leave(BlockDriverState *bs, int log_index, int ret)
{
    MemState *s = bs->opaque;
    if (log_index >= 0) {
        pthread_mutex_lock(&s->lock);
        s->log[log_index].ret = ret;
        pthread_mutex_unlock(&s->lock);
    }
    return ret;
}

static void mem_wake(void *opaque)
{
    aio_co_wake(opaque);
}

/* Let other coroutines on this thread run before we continue. */
static void coroutine_fn mem_yield(void)
{
    aio_bh_schedule_oneshot(aio_current(), mem_wake, co_self());
    co_yield();
}

static bool mem_should_yield(BlockDriverState *bs, MemOp op)
{
    MemState *s = bs->opaque;
    return __atomic_load_n(&s->yield_mask, __ATOMIC_RELAXED) & (1u << op);
}

/* Park while the gate is closed for op; mem_gate_open() wakes us on our own
 * context (the CoQueue drops s->lock while we wait). */
static void coroutine_fn mem_gate(BlockDriverState *bs, MemOp op)
{
    MemState *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    while (s->gate_mask & (1u << op)) {
        s->gate_parked++;
        co_queue_wait_mutex(&s->gate_queue, &s->lock);
        s->gate_parked--;
    }
    pthread_mutex_unlock(&s->lock);
}

/* Park a write overlapping the before-gate's range before it stores anything. */
static void coroutine_fn mem_gate_before(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    MemState *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    while (s->gate_before_len && offset < s->gate_before_off + s->gate_before_len &&
           s->gate_before_off < offset + bytes) {
        s->gate_parked++;
        co_queue_wait_mutex(&s->gate_queue, &s->lock);
        s->gate_parked--;
    }
    pthread_mutex_unlock(&s->lock);
}

/* Elements of qiov spanned by [offset, offset+bytes). */
static int mem_count_iov(const IOVector *qiov, size_t offset, int64_t bytes)
{
    int n = 0;
    for (int i = 0; i < qiov->niov && bytes > 0; i++) {
        size_t l = qiov->iov[i].iov_len;
        if (offset >= l) {
            offset -= l;
            continue;
        }
        bytes -= (int64_t)(l - offset);
        offset = 0;
        n++;
    }
    return n;
}

/* Log the vector's length; a vector longer than max_iov fails as preadv(2)
 * fails beyond IOV_MAX, so a core that ignores the limit cannot pass. */
static int mem_check_iov(BlockDriverState *bs, int log_index, const IOVector *qiov,
                         size_t qiov_offset, int64_t bytes)
{
    MemState *s = bs->opaque;
    int niov = mem_count_iov(qiov, qiov_offset, bytes);
    pthread_mutex_lock(&s->lock);
    if (log_index >= 0) {
        s->log[log_index].niov = niov;
    }
    int max_iov = s->cfg.max_iov;
    pthread_mutex_unlock(&s->lock);
    return max_iov && niov > max_iov ? -EINVAL : 0;
}

/* ---- driver callbacks ---- */

static int mem_open(BlockDriverState *bs, OptDict *options, int flags, Error **errp)
{
    (void)options;
    (void)flags;
    MemState *s = bs->opaque;
    MemConfig def = { 0 };
    const MemConfig *cfg = mem_pending_cfg ? mem_pending_cfg : &def;

    if (!mem_pending_cfg) {
        error_setg(errp, "mem: open only through mem_node_new()");
        return -EINVAL;
    }
    pthread_mutex_init(&s->lock, NULL);
    co_queue_init(&s->gate_queue);
    s->cfg = *cfg;
    s->cfg.node_name = NULL;
    if (!s->cfg.size) {
        s->cfg.size = 1 * MiB;
    }
    if (!s->cfg.request_alignment) {
        s->cfg.request_alignment = 1;
    }
    if (!s->cfg.min_mem_alignment) {
        s->cfg.min_mem_alignment = 1;
    }
    s->gran = s->cfg.status_granularity ? s->cfg.status_granularity
                                        : MAX(s->cfg.request_alignment, 512u);
    mem_resize_locked(s, s->cfg.size, s->cfg.format ? MEM_UNALLOC : MEM_DATA);
    mem_apply_config(bs);
    return 0;
}

static void mem_close(BlockDriverState *bs)
{
    MemState *s = bs->opaque;
    free(s->data);
    free(s->status);
    pthread_mutex_destroy(&s->lock);
}

static void mem_refresh_limits(BlockDriverState *bs, Error **errp)
{
    (void)errp;
    MemState *s = bs->opaque;
    bs->bl.request_alignment = s->cfg.request_alignment;
    bs->bl.max_transfer = s->cfg.max_transfer;
    bs->bl.pdiscard_alignment = s->cfg.pdiscard_alignment;
    bs->bl.max_pdiscard = s->cfg.max_pdiscard;
    bs->bl.pwrite_zeroes_alignment = s->cfg.pwrite_zeroes_alignment;
    bs->bl.max_pwrite_zeroes = s->cfg.max_pwrite_zeroes;
    bs->bl.min_mem_alignment = s->cfg.min_mem_alignment;
    bs->bl.opt_mem_alignment = s->cfg.min_mem_alignment;
    bs->bl.max_iov = s->cfg.max_iov;
    bs->bl.has_discard = !(s->cfg.callbacks & MEM_NO_DISCARD_CB) && !s->cfg.discard_enotsup;
}

static int coroutine_fn mem_co_preadv(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                      IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    MemState *s = bs->opaque;
    int li, ret = mem_enter(bs, MEM_OP_READ, offset, bytes, flags, &li);
    if (!ret) {
        ret = mem_check_iov(bs, li, qiov, qiov_offset, bytes);
    }
    if (ret) {
        /* A closed gate holds failing reads too, so a test can keep a
         * failing load in flight while others wait for it. */
        mem_gate(bs, MEM_OP_READ);
        return mem_leave(bs, li, ret);
    }
    if (mem_should_yield(bs, MEM_OP_READ)) {
        mem_yield();
    }
    int64_t pos = offset, end = offset + bytes;
    while (pos < end) {
        MemStatus st;
        pthread_mutex_lock(&s->lock);
        int64_t n = mem_run_locked(s, pos, end, &st);
        size_t qoff = qiov_offset + (pos - offset);
        bool from_backing = st == MEM_UNALLOC && s->cfg.format && bs->backing;
        if (st == MEM_DATA && pos < s->size) {
            int64_t in = MIN(n, s->size - pos);
            iov_from_buf(qiov, qoff, s->data + pos, in);
            iov_memset(qiov, qoff + in, 0, n - in);
        } else if (!from_backing) {
            iov_memset(qiov, qoff, 0, n);
        }
        pthread_mutex_unlock(&s->lock);
        if (from_backing) {
            ret = bdrv_co_preadv_part(bs->backing, pos, n, qiov, qoff, 0);
            if (ret < 0) {
                return mem_leave(bs, li, ret);
            }
        }
        pos += n;
    }
    mem_gate(bs, MEM_OP_READ);
    return mem_leave(bs, li, 0);
}

/* Make room for [offset, offset+bytes): grow if allowed, else -EIO. */
static int mem_check_write_locked(MemState *s, int64_t offset, int64_t bytes)
{
    if (offset + bytes <= s->size) {
        return 0;
    }
    if (!s->cfg.growable) {
        return -EIO;
    }
    mem_resize_locked(s, offset + bytes, s->cfg.format ? MEM_UNALLOC : MEM_ZERO);
    return 0;
}

static int coroutine_fn mem_co_pwritev(BlockDriverState *bs, int64_t offset, int64_t bytes,
                                       IOVector *qiov, size_t qiov_offset, BdrvRequestFlags flags)
{
    MemState *s = bs->opaque;
    int li, ret = mem_enter(bs, MEM_OP_WRITE, offset, bytes, flags, &li);
    if (!ret) {
        ret = mem_check_iov(bs, li, qiov, qiov_offset, bytes);
    }
    if (ret) {
        return mem_leave(bs, li, ret);
    }
    mem_gate_before(bs, offset, bytes);
    /* Copy in two halves with a yield between: an unserialised overlapping
     * write can then interleave and leave a torn result. */
    int64_t half = mem_should_yield(bs, MEM_OP_WRITE) ? bytes / 2 : bytes;
    pthread_mutex_lock(&s->lock);
    ret = mem_check_write_locked(s, offset, bytes);
    if (ret == 0) {
        iov_to_buf(qiov, qiov_offset, s->data + offset, half);
        mem_mark_locked(s, offset, bytes, MEM_DATA);
    }
    pthread_mutex_unlock(&s->lock);
    if (ret) {
        return mem_leave(bs, li, ret);
    }
    if (half < bytes) {
        mem_yield();
        pthread_mutex_lock(&s->lock);
        if (offset + bytes <= s->size) {
            iov_to_buf(qiov, qiov_offset + half, s->data + offset + half, bytes - half);
        }
        pthread_mutex_unlock(&s->lock);
    }
    mem_gate(bs, MEM_OP_WRITE);
    return mem_leave(bs, li, 0);
}

static int coroutine_fn mem_co_pwrite_zeroes(BlockDriverState *bs, int64_t offset,
                                             int64_t bytes, BdrvRequestFlags flags)
{
    MemState *s = bs->opaque;
    int li, ret = mem_enter(bs, MEM_OP_ZEROES, offset, bytes, flags, &li);
    if (ret) {
        return mem_leave(bs, li, ret);
    }
    if (s->cfg.zeroes_enotsup) {
        return mem_leave(bs, li, -ENOTSUP);
    }
    if (mem_should_yield(bs, MEM_OP_ZEROES)) {
        mem_yield();
    }
    pthread_mutex_lock(&s->lock);
    ret = mem_check_write_locked(s, offset, bytes);
    if (ret == 0) {
        memset(s->data + offset, 0, bytes);
        mem_mark_locked(s, offset, bytes, MEM_ZERO);
    }
    pthread_mutex_unlock(&s->lock);
    return mem_leave(bs, li, ret);
}

static int coroutine_fn mem_co_pdiscard(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    MemState *s = bs->opaque;
    int li, ret = mem_enter(bs, MEM_OP_DISCARD, offset, bytes, 0, &li);
    if (ret) {
        return mem_leave(bs, li, ret);
    }
    if (s->cfg.discard_enotsup) {
        return mem_leave(bs, li, -ENOTSUP);
    }
    if (mem_should_yield(bs, MEM_OP_DISCARD)) {
        mem_yield();
    }
    pthread_mutex_lock(&s->lock);
    int64_t end = MIN(offset + bytes, s->size);
    if (offset < end) {
        memset(s->data + offset, 0, end - offset);
        mem_mark_locked(s, offset, end - offset, MEM_ZERO);
    }
    pthread_mutex_unlock(&s->lock);
    return mem_leave(bs, li, 0);
}

static int coroutine_fn mem_co_flush_to_disk(BlockDriverState *bs)
{
    int li, ret = mem_enter(bs, MEM_OP_FLUSH, 0, 0, 0, &li);
    /* Even a failing flush takes its time, as a real fsync would. */
    if (mem_should_yield(bs, MEM_OP_FLUSH)) {
        mem_yield();
    }
    return mem_leave(bs, li, ret);
}

static int coroutine_fn mem_co_flush_to_os(BlockDriverState *bs)
{
    int li, ret = mem_enter(bs, MEM_OP_FLUSH_OS, 0, 0, 0, &li);
    return mem_leave(bs, li, ret);
}

static int coroutine_fn mem_co_block_status(BlockDriverState *bs, bool want_zero,
                                            int64_t offset, int64_t bytes, int64_t *pnum,
                                            int64_t *map, BlockDriverState **file)
{
    (void)want_zero;
    MemState *s = bs->opaque;
    int li, ret = mem_enter(bs, MEM_OP_STATUS, offset, bytes, 0, &li);
    if (ret) {
        return mem_leave(bs, li, ret);
    }
    MemStatus st;
    pthread_mutex_lock(&s->lock);
    *pnum = mem_run_locked(s, offset, offset + bytes, &st);
    pthread_mutex_unlock(&s->lock);
    *map = offset;
    *file = bs;
    switch (st) {
    case MEM_DATA:
        ret = BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID;
        if (s->cfg.status_recurse) {
            ret |= BDRV_BLOCK_RECURSE;
        }
        break;
    case MEM_ZERO:
        ret = BDRV_BLOCK_ZERO | (s->cfg.format ? 0 : BDRV_BLOCK_OFFSET_VALID);
        break;
    default:
        ret = 0;
        break;
    }
    return mem_leave(bs, li, ret);
}

static int coroutine_fn mem_co_truncate(BlockDriverState *bs, int64_t offset, bool exact,
                                        PreallocMode prealloc, BdrvRequestFlags flags,
                                        Error **errp)
{
    (void)exact;
    (void)prealloc;
    MemState *s = bs->opaque;
    int li, ret = mem_enter(bs, MEM_OP_TRUNCATE, offset, 0, flags, &li);
    if (ret) {
        error_setg_errno(errp, -ret, "mem: injected truncate failure");
        return mem_leave(bs, li, ret);
    }
    pthread_mutex_lock(&s->lock);
    mem_resize_locked(s, offset, s->cfg.format ? MEM_UNALLOC : MEM_ZERO);
    pthread_mutex_unlock(&s->lock);
    return mem_leave(bs, li, 0);
}

static void mem_drain_note(BlockDriverState *bs, int end)
{
    MemState *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    s->drain_calls[end]++;
    s->drain_seq[end] = __atomic_add_fetch(&mem_drain_clock, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&s->lock);
}

static void mem_drain_begin(BlockDriverState *bs)
{
    mem_drain_note(bs, 0);
}

static void mem_drain_end(BlockDriverState *bs)
{
    mem_drain_note(bs, 1);
}

static int64_t mem_getlength(BlockDriverState *bs)
{
    MemState *s = bs->opaque;
    pthread_mutex_lock(&s->lock);
    int64_t size = s->size;
    pthread_mutex_unlock(&s->lock);
    return size;
}

static int mem_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    MemState *s = bs->opaque;
    memset(bdi, 0, sizeof(*bdi));
    bdi->cluster_size = s->cfg.cluster_size;
    return 0;
}

static int mem_has_zero_init(BlockDriverState *bs)
{
    (void)bs;
    return 1;
}

/* ---- driver tables ---- */

#define MEM_VARIANTS 64   /* 5 callback bits x format */
static BlockDriver mem_tables[MEM_VARIANTS];
static char mem_names[MEM_VARIANTS][24];
static bool mem_registered[MEM_VARIANTS];
static pthread_mutex_t mem_tables_lock = PTHREAD_MUTEX_INITIALIZER;

const BlockDriver *mem_driver(const MemConfig *cfg)
{
    unsigned v = (cfg->callbacks & 31) | (cfg->format ? 32 : 0);
    BlockDriver *d = &mem_tables[v];
    pthread_mutex_lock(&mem_tables_lock);
    if (!mem_registered[v]) {
        snprintf(mem_names[v], sizeof(mem_names[v]), "mem%s-%u", cfg->format ? "fmt" : "", v & 31);
        *d = (BlockDriver){
            .format_name = mem_names[v],
            .instance_size = sizeof(MemState),
            .is_format = cfg->format,
            .supports_backing = cfg->format,
            .open = mem_open,
            .close = mem_close,
            .refresh_limits = mem_refresh_limits,
            .co_preadv = mem_co_preadv,
            .co_pwritev = mem_co_pwritev,
            .co_pwrite_zeroes = (cfg->callbacks & MEM_NO_ZEROES_CB) ? NULL : mem_co_pwrite_zeroes,
            .co_pdiscard = (cfg->callbacks & MEM_NO_DISCARD_CB) ? NULL : mem_co_pdiscard,
            .co_flush_to_os = mem_co_flush_to_os,
            .co_flush_to_disk = (cfg->callbacks & MEM_NO_FLUSH_CB) ? NULL : mem_co_flush_to_disk,
            .co_block_status = (cfg->callbacks & MEM_NO_STATUS_CB) ? NULL : mem_co_block_status,
            .co_truncate = (cfg->callbacks & MEM_NO_TRUNCATE_CB) ? NULL : mem_co_truncate,
            .getlength = mem_getlength,
            .get_info = mem_get_info,
            .has_zero_init = mem_has_zero_init,
            .drain_begin = mem_drain_begin,
            .drain_end = mem_drain_end,
        };
        bdrv_register(d);
        mem_registered[v] = true;
    }
    pthread_mutex_unlock(&mem_tables_lock);
    return d;
}

bool bs_is_mem(BlockDriverState *bs)
{
    return bs && bs->drv >= &mem_tables[0] && bs->drv < &mem_tables[MEM_VARIANTS];
}

/* ---- public helpers ---- */

BlockDriverState *mem_node_new(const MemConfig *cfg)
{
    static const MemConfig defaults = { 0 };
    Error *err = NULL;
    if (!cfg) {
        cfg = &defaults;
    }
    int flags = cfg->open_flags;
    if (!cfg->read_only) {
        flags |= BDRV_O_RDWR;
    }
    mem_pending_cfg = cfg;
    BlockDriverState *bs = bdrv_new_open_driver(mem_driver(cfg), cfg->node_name, flags, NULL, &err);
    mem_pending_cfg = NULL;
    if (!bs) {
        fail_msg("mem_node_new: %s", err ? error_get_pretty(err) : "failed");
    }
    /* The core may have recomputed limits before our config was complete. */
    mem_apply_config(bs);
    return bs;
}

MemConfig *mem_config(BlockDriverState *bs)
{
    return &ms(bs)->cfg;
}

void mem_apply_config(BlockDriverState *bs)
{
    MemState *s = bs->opaque;
    bs->supported_write_flags = s->cfg.write_flags;
    bs->supported_zero_flags = (s->cfg.callbacks & MEM_NO_ZEROES_CB) ? 0 : s->cfg.zero_flags;
    bs->growable = s->cfg.growable;
    bdrv_set_total_bytes(bs, mem_getlength(bs));
    mem_refresh_limits(bs, NULL);
}

void mem_set_backing(BlockDriverState *top, BlockDriverState *base)
{
    Error *err = NULL;
    assert_true(ms(top)->cfg.format);
    bdrv_ref(base);   /* the edge's reference; the caller keeps its own */
    BdrvChild *c = bdrv_attach_child(top, base, "backing", BDRV_CHILD_COW, &err);
    if (!c) {
        fail_msg("mem_set_backing: %s", err ? error_get_pretty(err) : "failed");
    }
    if (!top->backing) {
        top->backing = c;
    }
}

void mem_chain_new(BlockDriverState **top, BlockDriverState **base, int64_t top_size,
                   int64_t base_size, bool cor)
{
    MemConfig bcfg = { .size = base_size };
    *base = mem_node_new(&bcfg);
    mem_fill(*base, 0, base_size, 0xba);
    MemConfig tcfg = { .size = top_size, .format = true, .cluster_size = 4096,
                       .status_granularity = 4096,
                       .open_flags = cor ? BDRV_O_COPY_ON_READ : 0 };
    *top = mem_node_new(&tcfg);
    mem_set_backing(*top, *base);
}

BdrvChild *test_child_new(BlockDriverState *bs)
{
    Error *err = NULL;
    bdrv_ref(bs);   /* the edge's reference; the caller keeps its own */
    BdrvChild *c = bdrv_attach_child(NULL, bs, "test", BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY, &err);
    if (!c) {
        fail_msg("test_child_new: %s", err ? error_get_pretty(err) : "failed");
    }
    return c;
}

void test_child_free(BdrvChild *c)
{
    if (c) {
        bdrv_unref_child(NULL, c);
    }
}

void mem_fill(BlockDriverState *bs, int64_t offset, int64_t len, int byte)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    assert_true(offset + len <= s->size);
    memset(s->data + offset, byte, len);
    pthread_mutex_unlock(&s->lock);
}

void mem_write_raw(BlockDriverState *bs, int64_t offset, const void *buf, int64_t len)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    assert_true(offset + len <= s->size);
    memcpy(s->data + offset, buf, len);
    pthread_mutex_unlock(&s->lock);
}

void mem_read_raw(BlockDriverState *bs, int64_t offset, void *buf, int64_t len)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    assert_true(offset + len <= s->size);
    memcpy(buf, s->data + offset, len);
    pthread_mutex_unlock(&s->lock);
}

int64_t mem_size(BlockDriverState *bs)
{
    return mem_getlength(bs);
}

void mem_set_status(BlockDriverState *bs, int64_t offset, int64_t len, MemStatus st)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    assert_true(offset % s->gran == 0);
    mem_mark_locked(s, offset, len, st);
    pthread_mutex_unlock(&s->lock);
}

MemStatus mem_get_status(BlockDriverState *bs, int64_t offset)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    MemStatus st = mem_status_locked(s, offset);
    pthread_mutex_unlock(&s->lock);
    return st;
}

void mem_set_yield(BlockDriverState *bs, unsigned op_mask)
{
    __atomic_store_n(&ms(bs)->yield_mask, op_mask, __ATOMIC_RELAXED);
}

void mem_gate_close(BlockDriverState *bs, unsigned op_mask)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    s->gate_mask = op_mask;
    pthread_mutex_unlock(&s->lock);
}

void mem_gate_close_before(BlockDriverState *bs, int64_t offset, int64_t bytes)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    s->gate_before_off = offset;
    s->gate_before_len = bytes;
    pthread_mutex_unlock(&s->lock);
}

int mem_gate_parked(BlockDriverState *bs)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    int n = s->gate_parked;
    pthread_mutex_unlock(&s->lock);
    return n;
}

void mem_gate_open(BlockDriverState *bs)
{
    MemState *s = ms(bs);
    CoQueue parked;
    pthread_mutex_lock(&s->lock);
    s->gate_mask = 0;
    s->gate_before_len = 0;
    parked = s->gate_queue;
    co_queue_init(&s->gate_queue);
    pthread_mutex_unlock(&s->lock);
    /* Outside the lock: each waiter re-takes it as it resumes. */
    co_queue_restart_all(&parked);
}

void mem_inject_error(BlockDriverState *bs, MemOp op, int64_t offset, int64_t bytes, int err,
                      int count)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    assert_true(s->ninject < MEM_MAX_INJECT);
    s->inject[s->ninject++] = (MemInject){ op, offset, bytes, err, count };
    pthread_mutex_unlock(&s->lock);
}

int mem_calls(BlockDriverState *bs, MemOp op)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    int n = s->calls[op];
    pthread_mutex_unlock(&s->lock);
    return n;
}

int mem_drain_calls(BlockDriverState *bs, bool end)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    int n = s->drain_calls[end];
    pthread_mutex_unlock(&s->lock);
    return n;
}

unsigned mem_drain_seq(BlockDriverState *bs, bool end)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    unsigned n = s->drain_seq[end];
    pthread_mutex_unlock(&s->lock);
    return n;
}

int64_t mem_bytes(BlockDriverState *bs, MemOp op)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    int64_t n = s->bytes[op];
    pthread_mutex_unlock(&s->lock);
    return n;
}

const MemLogEntry *mem_log(BlockDriverState *bs, MemOp op, int i)
{
    MemState *s = ms(bs);
    const MemLogEntry *found = NULL;
    pthread_mutex_lock(&s->lock);
    for (int k = 0; k < s->nlog; k++) {
        if (s->log[k].op == op && i-- == 0) {
            found = &s->log[k];
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return found;
}

void mem_log_clear(BlockDriverState *bs)
{
    MemState *s = ms(bs);
    pthread_mutex_lock(&s->lock);
    s->nlog = 0;
    memset(s->calls, 0, sizeof(s->calls));
    memset(s->bytes, 0, sizeof(s->bytes));
    pthread_mutex_unlock(&s->lock);
}

AioContext *test_loop_init(void)
{
    Error *err = NULL;
    AioContext *ctx = aio_current();
    if (!ctx) {
        ctx = aio_main_init(&err);
        if (!ctx) {
            fail_msg("aio_main_init: %s", err ? error_get_pretty(err) : "failed");
        }
    }
    return ctx;
}

void test_run_co(CoroutineEntry *fn, void *opaque)
{
    test_loop_init();
    aio_co_run_sync(fn, opaque);
}

void test_pattern(void *buf, size_t len, uint64_t seed)
{
    uint8_t *p = buf;
    uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

bool test_buf_is(const void *buf, size_t len, int byte)
{
    const uint8_t *p = buf;
    for (size_t i = 0; i < len; i++) {
        if (p[i] != (uint8_t)byte) {
            return false;
        }
    }
    return true;
}
