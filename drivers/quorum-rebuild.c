/*
 * quorum-rebuild.c - rebuilding a quorum child from the others while the
 * device serves (a child replaced or added: `ublkd quorum --replace/--add`,
 * or one marked children.N.rebuild=on at open).
 *
 * The new child starts incomplete: its bit in s->incomplete and rb[i].done
 * = 0.  A job (one coroutine per quorum node, on its home context: the
 * daemon's main loop) copies it chunk by chunk from the others: it reads
 * each chunk from the children complete there, votes block by block as a
 * read does (the winner needs vote-threshold votes), writes the winner to
 * the new child and then moves rb[i].done past the chunk.  Reads let the
 * child vote only below done as it was before they read (quorum.c); writes
 * go to it at once.  One child is rebuilt at a time, lowest number first;
 * others wait (QRB_PENDING), voting nowhere.
 *
 * The race.  A guest write W to a chunk C goes to every child, the new one
 * too.  If the job read C from the others before W reached them, and its
 * write of that old data reaches the new child after W did, the new child
 * ends with the old data where W landed: it would vote for data the guest
 * overwrote.  So the job and guest writes exclude each other per range, by
 * the rebuild window: the job publishes C as the window (win_off/win_len,
 * under win_lock) and then waits until no registered write in flight
 * overlaps C; a guest write registers under the same lock and waits first
 * while the window overlaps it.  Hence every write overlapping C either
 *   - completed on every child before the job read C (it had registered
 *     before the window was set, and the job waited for it): the job reads
 *     its data from the majority and writes the same to the new child, or
 *   - registered after the window closed: it starts only after the job's
 *     write to the new child has completed, so it lands last.
 * No write overlapping C is in flight between the job's read and its write:
 * the new child's C ends up holding what the majority holds, or newer.
 * done moves past C only after the write completed, and only then may reads
 * count the child there.
 *
 * Registration costs a mutex per write, taken only while win_active is set
 * (a rebuild is pending or running); it is set inside a drained section of
 * the quorum (or at open), so no write that skipped registering is still in
 * flight when the first window is published.
 *
 * Drain: drain_begin pauses the job at its next chunk boundary (after
 * releasing the window, so no write waits on a paused job); a change of
 * the children waits for that (quorum_rebuild_wait_idle), since a drained
 * section of one child does not wait for the job's reads of the others.
 * A failed write to the new child, or a chunk where no version reaches the
 * threshold, stops the rebuild of that child (QRB_FAILED,
 * QUORUM_REBUILD_FAILED): it stays incomplete, voting only below done.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "aio.h"
#include "quorum-int.h"

/* Bytes copied per step: big enough to stream, small enough that a guest
 * write waiting on the window waits for one copy of it. */
#define QRB_CHUNK (1 * MiB)

void quorum_rebuild_init(QuorumState *s)
{
    s->job_child = -1;
    pthread_mutex_init(&s->win_lock, NULL);
    co_queue_init(&s->win_q);
    co_queue_init(&s->job_win_q);
    co_queue_init(&s->idle_q);
}

/* ---- guest writes and the window ---- */

static bool overlaps(int64_t a, int64_t alen, int64_t b, int64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

bool coroutine_fn quorum_write_begin(QuorumState *s, QuorumWriteReg *w, int64_t offset,
                                     int64_t bytes)
{
    if (!__atomic_load_n(&s->win_active, __ATOMIC_ACQUIRE)) {
        return false;
    }
    w->offset = offset;
    w->bytes = bytes;
    pthread_mutex_lock(&s->win_lock);
    while (overlaps(s->win_off, s->win_len, offset, bytes)) {
        co_queue_wait_mutex(&s->win_q, &s->win_lock);
    }
    w->prev = NULL;
    w->next = s->writes;
    if (s->writes) {
        s->writes->prev = w;
    }
    s->writes = w;
    pthread_mutex_unlock(&s->win_lock);
    return true;
}

void quorum_write_end(QuorumState *s, QuorumWriteReg *w)
{
    pthread_mutex_lock(&s->win_lock);
    if (w->prev) {
        w->prev->next = w->next;
    } else {
        s->writes = w->next;
    }
    if (w->next) {
        w->next->prev = w->prev;
    }
    if (overlaps(s->win_off, s->win_len, w->offset, w->bytes)) {
        co_queue_restart_all(&s->job_win_q);
    }
    pthread_mutex_unlock(&s->win_lock);
}

static bool writes_overlap(QuorumState *s, int64_t off, int64_t len)
{
    for (QuorumWriteReg *w = s->writes; w; w = w->next) {
        if (overlaps(off, len, w->offset, w->bytes)) {
            return true;
        }
    }
    return false;
}

static void coroutine_fn window_open(QuorumState *s, int64_t off, int64_t len)
{
    pthread_mutex_lock(&s->win_lock);
    s->win_off = off;
    s->win_len = len;
    while (writes_overlap(s, off, len)) {
        co_queue_wait_mutex(&s->job_win_q, &s->win_lock);
    }
    pthread_mutex_unlock(&s->win_lock);
}

static void window_close(QuorumState *s)
{
    pthread_mutex_lock(&s->win_lock);
    s->win_len = 0;
    co_queue_restart_all(&s->win_q);
    pthread_mutex_unlock(&s->win_lock);
}

/* ---- events ---- */

static void rebuild_event(BlockDriverState *bs, int i, const char *type, int err,
                          const char *more)
{
    QuorumState *s = bs->opaque;
    QuorumRebuild *rb = &s->rb[i];
    char extra[256];
    snprintf(extra, sizeof(extra), ",\"done\":%" PRId64 ",\"total\":%" PRId64 "%s",
             __atomic_load_n(&rb->done, __ATOMIC_ACQUIRE), rb->total, more ? more : "");
    quorum_child_event(bs, i, type, "rebuild", 0, rb->total, err, extra);
}

/* ---- the job ---- */

void quorum_rebuild_mark(BlockDriverState *bs, int i)
{
    QuorumState *s = bs->opaque;
    QuorumRebuild *rb = &s->rb[i];
    rb->total = bdrv_getlength(bs);
    if (rb->total < 0) {
        rb->total = 0;
    }
    rb->err = 0;
    rb->t0_ns = 0;
    rb->done0 = 0;
    __atomic_store_n(&rb->done, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&rb->state, QRB_PENDING, __ATOMIC_RELEASE);
    __atomic_or_fetch(&s->incomplete, 1u << i, __ATOMIC_SEQ_CST);
    __atomic_store_n(&s->win_active, 1, __ATOMIC_SEQ_CST);
    quorum_rebuild_kick(bs);
}

/* Wake whoever waits for the job to be idle. */
static void job_idle(QuorumState *s)
{
    s->job_busy = false;
    co_queue_restart_all(&s->idle_q);
    if (s->idle_poll) {
        aio_notify(aio_current());
    }
}

/* Between chunks: stop while drained (or for good on cancel). */
static void coroutine_fn job_pause_point(QuorumState *s)
{
    while (s->paused && !s->cancel) {
        job_idle(s);
        s->job_parked = co_self();
        co_yield();
    }
    s->job_busy = true;
}

void quorum_drain_begin(BlockDriverState *bs)
{
    QuorumState *s = bs->opaque;
    s->paused = true;
}

void quorum_drain_end(BlockDriverState *bs)
{
    QuorumState *s = bs->opaque;
    s->paused = false;
    Coroutine *co = s->job_parked;
    if (co) {
        s->job_parked = NULL;
        aio_co_wake(co);
    }
}

static void coroutine_fn job_wait_idle_co(QuorumState *s)
{
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&m);
    while (s->job && s->job_busy) {
        co_queue_wait_mutex(&s->idle_q, &m);
    }
    pthread_mutex_unlock(&m);
}

void quorum_rebuild_wait_idle(BlockDriverState *bs)
{
    QuorumState *s = bs->opaque;
    if (in_coroutine()) {
        job_wait_idle_co(s);
        return;
    }
    s->idle_poll = true;
    AIO_WAIT_WHILE(bdrv_get_home_context(bs), s->job && s->job_busy);
    s->idle_poll = false;
}

/* The child to work on: the one under way, else the lowest waiting. */
static int job_pick(QuorumState *s)
{
    int k = s->job_child;
    if (k >= 0 && k < s->n && __atomic_load_n(&s->rb[k].state, __ATOMIC_ACQUIRE) == QRB_RUNNING) {
        return k;
    }
    for (k = 0; k < s->n; k++) {
        if (__atomic_load_n(&s->rb[k].state, __ATOMIC_ACQUIRE) == QRB_RUNNING) {
            return k;
        }
    }
    for (k = 0; k < s->n; k++) {
        if (__atomic_load_n(&s->rb[k].state, __ATOMIC_ACQUIRE) == QRB_PENDING) {
            return k;
        }
    }
    return -1;
}

static void job_fail(BlockDriverState *bs, int k, int err, const char *why)
{
    QuorumState *s = bs->opaque;
    char more[256], esc[160];
    s->rb[k].err = err;
    __atomic_store_n(&s->rb[k].state, QRB_FAILED, __ATOMIC_RELEASE);
    bdrv_json_escape(why, esc, sizeof(esc));
    snprintf(more, sizeof(more), ",\"reason\":\"%s\"", esc);
    rebuild_event(bs, k, "QUORUM_REBUILD_FAILED", err, more);
}

typedef struct JobBufs {
    uint8_t *area;      /* n + 1 chunks: one per child, and the result */
    size_t stride;
    int nslots;
} JobBufs;

/* Copy the next chunk of child k.  Returns false when k is finished
 * (done or failed). */
static bool coroutine_fn job_step(BlockDriverState *bs, int k, JobBufs *jb)
{
    QuorumState *s = bs->opaque;
    QuorumRebuild *rb = &s->rb[k];
    int64_t off = __atomic_load_n(&rb->done, __ATOMIC_ACQUIRE);
    if (off >= rb->total) {
        int64_t ms = (clock_monotonic_ns() - rb->t0_ns) / 1000000;
        char more[64];
        snprintf(more, sizeof(more), ",\"duration-ms\":%" PRId64, ms);
        __atomic_store_n(&rb->state, QRB_DONE, __ATOMIC_RELEASE);
        __atomic_and_fetch(&s->incomplete, ~(1u << k), __ATOMIC_SEQ_CST);
        rebuild_event(bs, k, "QUORUM_REBUILD_DONE", 0, more);
        return false;
    }
    int64_t len = MIN((int64_t)QRB_CHUNK, rb->total - off);
    if (jb->nslots < s->n + 1) {
        free(jb->area);
        jb->stride = QRB_CHUNK;
        jb->nslots = QUORUM_MAX_CHILDREN + 1;
        if (posix_memalign((void **)&jb->area, 4096, jb->stride * (size_t)jb->nslots)) {
            jb->area = NULL;
            jb->nslots = 0;
            job_fail(bs, k, -ENOMEM, "out of memory for the copy buffers");
            return false;
        }
    }
    /* Sources: the children whose data counts over the whole chunk. */
    uint32_t mask = 0;
    for (int j = 0; j < s->n; j++) {
        if (j != k && quorum_vote_limit(s, j) >= off + len) {
            mask |= 1u << j;
        }
    }
    if (__builtin_popcount(mask) < s->threshold) {
        job_fail(bs, k, -EIO, "fewer complete children than vote-threshold to copy from");
        return false;
    }
    uint8_t *bufs[QUORUM_MAX_CHILDREN];
    const uint8_t *cbufs[QUORUM_MAX_CHILDREN];
    int errs[QUORUM_MAX_CHILDREN];
    for (int j = 0; j < s->n; j++) {
        bufs[j] = jb->area + jb->stride * (size_t)j;
        cbufs[j] = bufs[j];
    }
    uint8_t *out = jb->area + jb->stride * (size_t)QUORUM_MAX_CHILDREN;

    window_open(s, off, len);
    quorum_read_children(bs, mask, off, len, bufs, errs);
    QuorumVoteIn in = { .n = s->n, .bufs = cbufs, .errs = errs, .threshold = s->threshold };
    const uint8_t *src = NULL;
    int ret = 0;
    if (quorum_successes(errs, s->n) < s->threshold) {
        int real[QUORUM_MAX_CHILDREN];
        for (int j = 0; j < s->n; j++) {
            real[j] = errs[j] == QUORUM_NO_VOTE ? 0 : errs[j];
        }
        ret = quorum_most_common_error(real, s->n);
        window_close(s);
        job_fail(bs, k, ret ? ret : -EIO, "reading the other children failed");
        return false;
    }
    if (quorum_all_agree(&in, 0, (size_t)len)) {
        int first = 0;
        while (errs[first]) {
            first++;
        }
        src = bufs[first];
    } else {
        uint32_t block = MAX(bs->bl.request_alignment, (uint32_t)BDRV_SECTOR_SIZE);
        for (int64_t pos = 0; pos < len;) {
            size_t bl = quorum_block_len(off, len, block, pos);
            QuorumBlockVote v;
            quorum_vote_block(&in, (size_t)pos, bl, &v);
            if (v.winner < 0) {
                window_close(s);
                char why[128];
                snprintf(why, sizeof(why), "no version of bytes %" PRId64 "..%" PRId64
                         " has vote-threshold votes", off + pos, off + pos + (int64_t)bl);
                job_fail(bs, k, -EIO, why);
                return false;
            }
            memcpy(out + pos, bufs[v.winner] + pos, bl);
            pos += (int64_t)bl;
        }
        src = out;
    }
    /* Zeros are written as zeros (a sparse source stays sparse). */
    size_t z = 0;
    while (z < (size_t)len) {
        size_t n = MIN((size_t)len - z, (size_t)BDRV_MAX_BOUNCE_BUFFER);
        if (memcmp(src + z, bdrv_zero_buffer(), n)) {
            break;
        }
        z += n;
    }
    if (z == (size_t)len) {
        ret = bdrv_co_pwrite_zeroes(s->children[k], off, len, BDRV_REQ_MAY_UNMAP);
    }
    if (z != (size_t)len || ret == -ENOTSUP) {
        IOVector q;
        iov_init_buf(&q, (void *)src, (size_t)len);
        ret = bdrv_co_pwritev(s->children[k], off, len, &q, 0);
    }
    if (ret < 0) {
        window_close(s);
        quorum_count(s, k, QC_ERRORS);
        job_fail(bs, k, ret, "writing the new child failed");
        return false;
    }
    /* Rebuilt: reads may count the child here from now on; then writes
     * waiting for the window go on (and land after the copy). */
    __atomic_store_n(&rb->done, off + len, __ATOMIC_RELEASE);
    window_close(s);
    return true;
}

static void coroutine_fn quorum_rebuild_job(void *opaque)
{
    BlockDriverState *bs = opaque;
    QuorumState *s = bs->opaque;
    JobBufs jb = { 0 };
    for (;;) {
        job_pause_point(s);
        if (s->cancel) {
            break;
        }
        int k = job_pick(s);
        if (k < 0) {
            break;
        }
        if (__atomic_load_n(&s->rb[k].state, __ATOMIC_ACQUIRE) == QRB_PENDING) {
            s->rb[k].t0_ns = clock_monotonic_ns();
            s->rb[k].done0 = __atomic_load_n(&s->rb[k].done, __ATOMIC_ACQUIRE);
            __atomic_store_n(&s->rb[k].state, QRB_RUNNING, __ATOMIC_RELEASE);
            rebuild_event(bs, k, "QUORUM_REBUILD_START", 0, NULL);
        }
        s->job_child = k;
        if (!job_step(bs, k, &jb)) {
            s->job_child = -1;
        }
    }
    free(jb.area);
    s->job_child = -1;
    /* Writes need not register once nothing is pending or running (a
     * failed child gets no more copies); a new mark sets it again inside
     * a drained section. */
    bool more = false;
    for (int j = 0; j < s->n; j++) {
        int st = __atomic_load_n(&s->rb[j].state, __ATOMIC_ACQUIRE);
        more |= st == QRB_PENDING || st == QRB_RUNNING;
    }
    if (!more) {
        __atomic_store_n(&s->win_active, 0, __ATOMIC_RELEASE);
    }
    s->job = false;
    job_idle(s);
}

void quorum_rebuild_kick(BlockDriverState *bs)
{
    QuorumState *s = bs->opaque;
    if (s->job || bs->read_only || !(bs->open_flags & BDRV_O_RDWR)) {
        return;
    }
    s->job = true;
    s->job_busy = true;
    aio_co_spawn(bdrv_get_home_context(bs), quorum_rebuild_job, bs);
}

void quorum_rebuild_cleanup(BlockDriverState *bs)
{
    QuorumState *s = bs->opaque;
    s->cancel = true;
    Coroutine *co = s->job_parked;
    if (co) {
        s->job_parked = NULL;
        aio_co_wake(co);
    }
    /* A job that never ran yet, or one with a chunk in flight. */
    if (s->job && !in_coroutine()) {
        AIO_WAIT_WHILE(bdrv_get_home_context(bs), s->job);
    } else if (s->job) {
        pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
        pthread_mutex_lock(&m);
        while (s->job) {
            co_queue_wait_mutex(&s->idle_q, &m);
        }
        pthread_mutex_unlock(&m);
    }
    pthread_mutex_destroy(&s->win_lock);
}

/* children.N.rebuild-done/-total/-eta-s/-error for every child that has
 * been rebuilt or is being: `ublkd list` shows them. */
void quorum_rebuild_counters(BlockDriverState *bs, ImageSpecificInfo *out)
{
    QuorumState *s = bs->opaque;
    int64_t now = clock_monotonic_ns();
    for (int i = 0; i < s->n; i++) {
        QuorumRebuild *rb = &s->rb[i];
        int st = __atomic_load_n(&rb->state, __ATOMIC_ACQUIRE);
        if (st == QRB_NONE) {
            continue;
        }
        int64_t done = __atomic_load_n(&rb->done, __ATOMIC_ACQUIRE);
        char key[64];
        snprintf(key, sizeof(key), "children.%d.rebuild-done", i);
        image_info_add_int(out, key, done);
        snprintf(key, sizeof(key), "children.%d.rebuild-total", i);
        image_info_add_int(out, key, rb->total);
        snprintf(key, sizeof(key), "children.%d.rebuild-running", i);
        image_info_add_int(out, key, st == QRB_RUNNING || st == QRB_PENDING);
        /* The estimate: this run's rate so far (none before a first chunk
         * has taken measurable time). */
        if (st == QRB_RUNNING && done > rb->done0 && now > rb->t0_ns) {
            double rate = (double)(done - rb->done0) / (double)(now - rb->t0_ns);
            snprintf(key, sizeof(key), "children.%d.rebuild-eta-s", i);
            image_info_add_int(out, key, (int64_t)((double)(rb->total - done) / rate / 1e9 + 0.5));
        } else if (st == QRB_DONE) {
            snprintf(key, sizeof(key), "children.%d.rebuild-eta-s", i);
            image_info_add_int(out, key, 0);
        }
        snprintf(key, sizeof(key), "children.%d.rebuild-error", i);
        image_info_add_int(out, key, st == QRB_FAILED ? -rb->err : 0);
    }
}
