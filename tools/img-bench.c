/*
 * img-bench.c - `ublkd img bench`: qemu-img bench on ublkd's request path.
 *
 * -d coroutines each issue requests back to back through the BlockBackend
 * until -c requests are done.  Offsets follow qemu-img bench exactly
 * (start at -o, advance by -S, wrap modulo size - bufsize), or with
 * --random are drawn uniformly from bufsize-aligned slots of the image
 * (xorshift64*, --seed, so runs are repeatable).  Output starts with
 * qemu-img's two lines, then IOPS, throughput and CPU time per I/O
 * (getrusage), which is what docs/PERFORMANCE.md compares.
 *
 * --threads N runs the same load from N threads, each with its own
 * AioContext and -d coroutines, on the one BlockBackend, as N ublk queues
 * do.  The -c requests are split between the threads, so IOPS and time
 * compare directly with a one-thread run; each thread draws its own offsets
 * (random: its own seed derived from --seed; sequential: it starts where the
 * one-thread sequence would be after the requests of the threads before it).
 * The clock runs from the moment every thread has its context until the
 * last thread is done.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include "aio.h"
#include "block-backend.h"
#include "img.h"

/* Far more than the cores of any machine this runs on; each thread costs a
 * ring and -d coroutines, and the request path stripes per-thread counters
 * over a fixed number of slots (thread-slot.h), beyond which threads share. */
#define BENCH_MAX_THREADS 64

typedef struct Bench {
    BlockBackend *blk;
    int64_t image_size, offset, step, bufsize;
    int count, depth, flush_interval;
    bool write, drain, random;
    uint64_t rng;
    int pattern;
    void *buf;                   /* shared by all requests, as qemu-img bench does */

    int issued, completed, in_flight, running;
    int ret;
    bool flushing;               /* draining for a flush: no new requests */
    Coroutine *waiters[1024];
    int nwaiters;
} Bench;

static uint64_t xorshift64s(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 2685821657736338717ULL;
}

static int64_t next_offset(Bench *b)
{
    if (b->random) {
        uint64_t slots = (uint64_t)(b->image_size - b->offset) / (uint64_t)b->bufsize;
        return b->offset + (int64_t)(xorshift64s(&b->rng) % (slots ? slots : 1)) * b->bufsize;
    }
    /* qemu-img bench's sequence, wrap-around included. */
    int64_t off = b->offset;
    if (b->image_size <= b->bufsize) {
        b->offset = 0;
    } else {
        /* (offset + step) % span, reduced first: -o may be near INT64_MAX. */
        int64_t span = b->image_size - b->bufsize;
        uint64_t sum = (uint64_t)(b->offset % span) + (uint64_t)(b->step % span);
        b->offset = (int64_t)(sum % (uint64_t)span);
    }
    return off;
}

static void wake_all(Bench *b)
{
    while (b->nwaiters) {
        aio_co_wake(b->waiters[--b->nwaiters]);
    }
}

static void coroutine_fn wait_here(Bench *b)
{
    b->waiters[b->nwaiters++] = co_self();
    co_yield();
}

static void coroutine_fn do_flush(Bench *b)
{
    if (b->drain) {
        /* Like qemu-img bench: stop issuing, let in-flight requests finish. */
        b->flushing = true;
        while (b->in_flight > 0) {
            wait_here(b);
        }
    }
    int ret = blk_co_flush(b->blk);
    if (ret < 0 && !b->ret) {
        error_report("Failed flush request: %s", strerror(-ret));
        b->ret = ret;
    }
    if (b->drain) {
        b->flushing = false;
        wake_all(b);
    }
}

static void coroutine_fn bench_worker(void *opaque)
{
    Bench *b = opaque;
    void *buf = b->buf;
    while (!b->ret && b->issued < b->count) {
        if (b->flushing) {
            wait_here(b);
            continue;
        }
        int64_t off = next_offset(b);
        b->issued++;
        b->in_flight++;
        IOVector q;
        iov_init_buf(&q, buf, b->bufsize);
        int ret = b->write ? blk_co_pwritev(b->blk, off, b->bufsize, &q, 0)
                           : blk_co_preadv(b->blk, off, b->bufsize, &q, 0);
        b->in_flight--;
        if (ret < 0 && !b->ret) {
            error_report("Failed request at offset %" PRId64 ": %s", off, strerror(-ret));
            b->ret = ret;
        }
        b->completed++;
        if (b->flushing && b->in_flight == 0) {
            wake_all(b);
        }
        if (b->flush_interval && b->completed % b->flush_interval == 0) {
            do_flush(b);
        }
    }
    b->running--;
    wake_all(b);
}

/* Run b's -d coroutines to completion on ctx (the calling thread's context). */
static void bench_run(Bench *b, AioContext *ctx)
{
    b->buf = aligned_alloc_or_die(4096, b->bufsize);
    memset(b->buf, b->pattern, b->bufsize);
    if (b->depth > b->count) {
        b->depth = b->count;
    }
    b->running = b->depth;
    for (int i = 0; i < b->depth; i++) {
        co_enter(co_create(bench_worker, b));
    }
    AIO_WAIT_WHILE(ctx, b->running > 0);
    free(b->buf);
    b->buf = NULL;
}

typedef struct BenchThread {
    Bench b;
    pthread_t tid;
    pthread_barrier_t *start;    /* every thread ready: the clock starts */
    Error *err;                  /* its context could not be created */
    AioContext *main_ctx;        /* polled while the threads run: a node's home */
    int *running;                /* threads not finished yet (atomic) */
} BenchThread;

static void bench_thread_done(BenchThread *t)
{
    __atomic_sub_fetch(t->running, 1, __ATOMIC_SEQ_CST);
    aio_notify(t->main_ctx);
}

static void *bench_thread(void *opaque)
{
    BenchThread *t = opaque;
    AioContext *ctx = aio_context_new(AIO_DEFAULT_ENTRIES, &t->err);
    if (ctx) {
        aio_set_current(ctx);
    }
    pthread_barrier_wait(t->start);
    if (!ctx) {
        t->b.ret = -ENOMEM;
        bench_thread_done(t);
        return NULL;
    }
    bench_run(&t->b, ctx);
    aio_context_free(ctx);
    bench_thread_done(t);
    return NULL;
}

/* Thread i's share of the run: its count, seed and first offset. */
static void bench_split(const Bench *all, int nthreads, int i, Bench *b)
{
    *b = *all;
    int base = all->count / nthreads, extra = all->count % nthreads;
    b->count = base + (i < extra);
    if (all->random) {
        if (i) {
            /* Distinct, reproducible streams; xorshift must not start at 0. */
            b->rng = all->rng ^ (0x9E3779B97F4A7C15ULL * (uint64_t)i);
            b->rng = b->rng ? b->rng : 1;
        }
        return;
    }
    /* Requests of the threads before this one, then qemu-img's wrap. */
    int64_t before = (int64_t)i * base + MIN(i, extra);
    if (i && all->image_size > all->bufsize) {
        unsigned __int128 off = (unsigned __int128)all->offset +
                                (unsigned __int128)before * (uint64_t)all->step;
        b->offset = (int64_t)(off % (uint64_t)(all->image_size - all->bufsize));
    } else if (i) {
        b->offset = 0;
    }
}

/* Run the load from nthreads threads of their own; returns the first error. */
static int bench_threads(Bench *all, int nthreads, int64_t *t0, int64_t *t1, int *completed)
{
    BenchThread *t = calloc(nthreads, sizeof(*t));
    pthread_barrier_t start;
    int ret = 0, started = 0;
    if (!t) {
        error_report("Out of memory for %d bench threads", nthreads);
        return -ENOMEM;
    }
    pthread_barrier_init(&start, NULL, nthreads + 1);
    /* The main context is the nodes' home: work the threads' requests hand
     * to it (an nbd connection's I/O, timers) runs while they wait. */
    AioContext *main_ctx = aio_current();
    int running = nthreads;
    for (int i = 0; i < nthreads; i++) {
        bench_split(all, nthreads, i, &t[i].b);
        t[i].start = &start;
        t[i].main_ctx = main_ctx;
        t[i].running = &running;
        int err = pthread_create(&t[i].tid, NULL, bench_thread, &t[i]);
        if (err) {
            /* The barrier counts every thread: give up before anyone waits
             * on it for ever (the ones started are stuck, so exit). */
            error_report("Could not start bench thread %d: %s", i, strerror(err));
            exit(1);
        }
        started++;
    }
    pthread_barrier_wait(&start);
    *t0 = clock_monotonic_ns();
    *completed = 0;
    AIO_WAIT_WHILE(main_ctx, __atomic_load_n(&running, __ATOMIC_SEQ_CST) > 0);
    for (int i = 0; i < started; i++) {
        pthread_join(t[i].tid, NULL);
    }
    *t1 = clock_monotonic_ns();
    for (int i = 0; i < started; i++) {
        if (t[i].err) {
            error_prepend(&t[i].err, "bench thread %d: ", i);
            error_report_err(t[i].err);
        }
        if (t[i].b.ret < 0 && !ret) {
            ret = t[i].b.ret;
        }
        *completed += t[i].b.completed;
    }
    pthread_barrier_destroy(&start);
    free(t);
    return ret;
}

/* A whole number from min to max, or qemu-img's "Invalid <what> specified". */
static int parse_ulong(const char *s, unsigned long min, unsigned long max, const char *what,
                       unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 0);
    /* A leading '-' is refused: strtoul would turn "-1" into ULONG_MAX. */
    if (!*s || *s == '-' || *end || errno || v < min || v > max) {
        error_report("Invalid %s specified", what);
        return -1;
    }
    *out = v;
    return 0;
}

static double tv_sec(struct timeval tv)
{
    return tv.tv_sec + tv.tv_usec / 1e6;
}

int img_bench(int argc, char **argv)
{
    ImgOpenOpts oo = { 0 };
    Bench b = { .count = 75000, .depth = 64, .bufsize = 4096, .drain = true, .rng = 1 };
    int64_t step = 0, offset = 0;
    bool quiet = false, no_drain = false;
    int nthreads = 0;            /* 0: no --threads, run on the main thread */
    const char *aio = NULL;
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "flush-interval", required_argument, NULL, 'F' },
        { "image-opts", no_argument, NULL, 'I' },
        { "pattern", required_argument, NULL, 'P' },
        { "no-drain", no_argument, NULL, 'D' },
        { "force-share", no_argument, NULL, 'U' },
        { "object", required_argument, NULL, 'X' },
        { "random", no_argument, NULL, 'R' },
        { "seed", required_argument, NULL, 'e' },
        { "threads", required_argument, NULL, 'T' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    unsigned long v;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            if (parse_ulong(optarg, 0, INT_MAX, "request count", &v) < 0) {
                return 1;
            }
            b.count = (int)v;
            break;
        case 'd':
            if (parse_ulong(optarg, 1, 1024, "queue depth", &v) < 0) {
                return 1;
            }
            b.depth = (int)v;
            break;
        case 'f': oo.fmt = optarg; break;
        case 'n': aio = "native"; break;
        case 'i':
            if (strcmp(optarg, "io_uring") && strcmp(optarg, "native") &&
                strcmp(optarg, "threads")) {
                error_report("Invalid aio option: %s", optarg);
                return 1;
            }
            aio = optarg;
            break;
        case 'o':
            offset = img_cvtnum_full("offset", optarg, 0, INT64_MAX);
            if (offset < 0) {
                return 1;
            }
            break;
        case 'q': quiet = true; break;
        case 's':
            b.bufsize = img_cvtnum_full("buffer size", optarg, 1, INT_MAX);
            if (b.bufsize < 0) {
                return 1;
            }
            break;
        case 'S':
            step = img_cvtnum_full("step_size", optarg, 0, INT_MAX);
            if (step < 0) {
                return 1;
            }
            break;
        case 't': {
            int cache_flags;
            if (bdrv_parse_cache_mode(optarg, &cache_flags, NULL) < 0) {
                error_report("Invalid cache mode");   /* qemu-img bench's words */
                return 1;
            }
            oo.cache = optarg;
            break;
        }
        case 'w': b.write = true; break;
        case 'X':
            if (img_object_add(optarg)) {
                return 1;
            }
            break;
        case 'U': oo.force_share = true; break;
        case 'I': oo.image_opts = true; break;
        case 'F':
            if (parse_ulong(optarg, 0, INT_MAX, "flush interval", &v) < 0) {
                return 1;
            }
            b.flush_interval = (int)v;
            break;
        case 'P':
            if (parse_ulong(optarg, 0, 0xff, "pattern byte", &v) < 0) {
                return 1;
            }
            b.pattern = (int)v;
            break;
        case 'D': no_drain = true; break;
        case 'R': b.random = true; break;
        case 'e':
            if (parse_ulong(optarg, 0, ULONG_MAX, "seed", &v) < 0) {
                return 1;
            }
            b.rng = v ? v : 1;   /* xorshift must not start at 0 */
            break;
        case 'T': {
            char *end;
            errno = 0;
            long n = strtol(optarg, &end, 10);
            if (!*optarg || *end || errno || n < 1 || n > BENCH_MAX_THREADS) {
                error_report("Invalid thread count '%s': --threads takes 1 to %d",
                             optarg, BENCH_MAX_THREADS);
                return 1;
            }
            nthreads = (int)n;
            break;
        }
        case 'h':
            printf("usage: ublkd img bench [-c count] [-d depth] [-f fmt]"
                   " [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset]"
                   " [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w]"
                   " [-U] [--random] [--seed=N] [--threads=N] filename\n");
            return 0;
        default:
            return img_opt_error(c, argv);
        }
    }
    if (optind != argc - 1) {
        return img_usage_error("Expecting one image file name");
    }
    if (!b.write && b.flush_interval) {
        error_report("--flush-interval is only available in write tests");
        return 1;
    }
    if (b.flush_interval && b.flush_interval < b.depth) {
        error_report("Flush interval can't be smaller than depth");
        return 1;
    }
    if (no_drain && !b.flush_interval) {
        error_report("--no-drain requires --flush-interval");
        return 1;
    }
    b.drain = !no_drain;
    if (aio && strcmp(aio, "io_uring") && !quiet) {
        fprintf(stderr, "ublkd img: note: aio=%s is served by io_uring in ublkd\n", aio);
    }
    oo.writable = b.write;
    b.blk = img_open(argv[optind], &oo);
    if (!b.blk) {
        return 1;
    }
    b.image_size = blk_getlength(b.blk);
    if (b.image_size < 0) {
        error_report("Could not get size of '%s'", argv[optind]);
        blk_unref(b.blk);
        return 1;
    }
    if (b.random && offset > b.image_size - b.bufsize) {
        error_report("--random: offset + buffer size exceed the image size");
        blk_unref(b.blk);
        return 1;
    }
    b.offset = offset;
    b.step = step ? step : b.bufsize;
    if (!quiet) {
        if (b.random) {
            printf("Sending %d random %s requests, %" PRId64 " bytes each, %d in parallel "
                   "(offsets aligned to %" PRId64 " from offset %" PRId64 ", seed %" PRIu64 ")\n",
                   b.count, b.write ? "write" : "read", b.bufsize, b.depth, b.bufsize, offset,
                   b.rng);
        } else {
            printf("Sending %d %s requests, %" PRId64 " bytes each, %d in parallel "
                   "(starting at offset %" PRId64 ", step size %" PRId64 ")\n",
                   b.count, b.write ? "write" : "read", b.bufsize, b.depth, offset, b.step);
        }
        if (b.flush_interval) {
            printf("Sending flush every %d requests\n", b.flush_interval);
        }
        if (nthreads) {
            printf("Using %d thread%s, each with its own event loop and %d requests in "
                   "parallel; the %d requests are split between them\n", nthreads,
                   nthreads == 1 ? "" : "s", b.depth, b.count);
        }
        fflush(stdout);
    }
    /* qemu-img's banner shows -d as given; only the run is bounded by -c. */
    struct rusage ru0, ru1;
    int64_t t0 = 0, t1 = 0;
    getrusage(RUSAGE_SELF, &ru0);
    if (nthreads) {
        int ret = bench_threads(&b, nthreads, &t0, &t1, &b.completed);
        if (ret < 0 && !b.ret) {
            b.ret = ret;
        }
    } else {
        t0 = clock_monotonic_ns();
        bench_run(&b, aio_current());
        t1 = clock_monotonic_ns();
    }
    getrusage(RUSAGE_SELF, &ru1);
    double secs = (t1 - t0) / 1e9;
    double usr = tv_sec(ru1.ru_utime) - tv_sec(ru0.ru_utime);
    double sys = tv_sec(ru1.ru_stime) - tv_sec(ru0.ru_stime);
    /* A failed request was reported; qemu-img exits there, without a
     * summary of a run that did not complete. */
    if (!quiet && b.ret >= 0) {
        printf("Run completed in %3.3f seconds.\n", secs);
        if (b.completed && secs > 0) {
            printf("%.0f IOPS, %.2f MiB/s, CPU %.2f us/IO (user %.2f s, sys %.2f s)\n",
                   b.completed / secs, (double)b.completed * b.bufsize / secs / MiB,
                   (usr + sys) * 1e6 / b.completed, usr, sys);
        }
    }
    blk_unref(b.blk);
    return b.ret < 0 ? 1 : 0;
}
