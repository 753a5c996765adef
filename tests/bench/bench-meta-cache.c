/*
 * bench-meta-cache.c - warm lookups in the metadata cache from 1, 2 and 4
 * threads: each thread (its own AioContext, one coroutine) gets a random
 * entry that is already cached, reads one 8-byte word of it as an L2 lookup
 * would, and puts it.  The cache (1024 entries of 4 KiB) is loaded from a
 * null-co node first, so no run does I/O.
 *
 * Runs are interleaved (1, 2, 4, 1, 2, 4, ...) so that load from other users
 * of the machine hits every thread count alike; the medians are printed.
 * Usage: bench-meta-cache [rounds (5)] [ms per run (300)]
 */
#include <stdatomic.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "aio.h"
#include "block-driver.h"
#include "meta-cache.h"

#define ENTRIES 1024
#define ENTRY_SIZE 4096
#define MAX_THREADS 4
#define MAX_ROUNDS 64

static MetaCache *cache;
static atomic_int ready, go, stop;

typedef struct {
    pthread_t thread;
    unsigned seed;
    long lookups;
    int64_t ns, cpu_ns;
    uint64_t sink;
    atomic_bool done;
} Worker;

static int64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void coroutine_fn lookup_loop(void *opaque)
{
    Worker *w = opaque;
    uint64_t x = w->seed * 0x9e3779b97f4a7c15ull + 1, sink = 0;
    long n = 0;
    int64_t t0 = clock_monotonic_ns(), c0 = thread_cpu_ns();
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        for (int i = 0; i < 256; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            void *t;
            int64_t off = (int64_t)(x % ENTRIES) * ENTRY_SIZE;
            if (meta_cache_get(cache, off, &t) < 0) {
                fprintf(stderr, "bench-meta-cache: get failed\n");
                exit(1);
            }
            sink += __atomic_load_n(&((uint64_t *)t)[(x >> 32) % (ENTRY_SIZE / 8)],
                                    __ATOMIC_RELAXED);
            meta_cache_put(cache, t);
        }
        n += 256;
    }
    w->ns = clock_monotonic_ns() - t0;
    w->cpu_ns = thread_cpu_ns() - c0;
    w->lookups = n;
    w->sink = sink;
    atomic_store(&w->done, true);
}

static void *worker_main(void *arg)
{
    Worker *w = arg;
    AioContext *ctx = aio_context_new(64, NULL);
    if (!ctx) {
        exit(1);
    }
    aio_set_current(ctx);
    atomic_fetch_add(&ready, 1);
    while (!atomic_load(&go)) {
    }
    co_enter(co_create(lookup_loop, w));
    AIO_WAIT_WHILE(ctx, !atomic_load(&w->done));
    aio_set_current(NULL);
    aio_context_free(ctx);
    return NULL;
}

/*
 * Lookups per second of all threads together (wall clock), and in *per_cpu
 * lookups per second of CPU time the threads got: on a machine shared with
 * other work the first is capped by the CPU we are given, the second shows
 * whether threads slow each other down (contention, cache-line bouncing).
 */
static double run(int nthreads, int ms, double *per_cpu)
{
    Worker w[MAX_THREADS];
    memset(w, 0, sizeof(w));
    atomic_store(&ready, 0);
    atomic_store(&go, 0);
    atomic_store(&stop, 0);
    for (int i = 0; i < nthreads; i++) {
        w[i].seed = (unsigned)(i + 1) * 7919u + (unsigned)clock_monotonic_ns();
        pthread_create(&w[i].thread, NULL, worker_main, &w[i]);
    }
    while (atomic_load(&ready) < nthreads) {
    }
    atomic_store(&go, 1);
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
    atomic_store(&stop, 1);
    double rate = 0, lookups = 0, cpu = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(w[i].thread, NULL);
        rate += (double)w[i].lookups * 1e9 / (double)w[i].ns;
        lookups += (double)w[i].lookups;
        cpu += (double)w[i].cpu_ns;
    }
    *per_cpu = cpu > 0 ? lookups * 1e9 / cpu : 0;
    return rate;
}

static void coroutine_fn warm(void *opaque)
{
    (void)opaque;
    for (int i = 0; i < ENTRIES; i++) {
        void *t;
        if (meta_cache_get(cache, (int64_t)i * ENTRY_SIZE, &t) < 0) {
            fprintf(stderr, "bench-meta-cache: load failed\n");
            exit(1);
        }
        meta_cache_put(cache, t);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 5;
    int ms = argc > 2 ? atoi(argv[2]) : 300;
    rounds = rounds < 1 ? 1 : rounds > MAX_ROUNDS ? MAX_ROUNDS : rounds;
    ms = ms < 10 ? 10 : ms;
    Error *err = NULL;
    if (!aio_main_init(&err)) {
        fprintf(stderr, "bench-meta-cache: %s\n", error_get_pretty(err));
        return 1;
    }
    BlockDriverState *bs = bdrv_open("null-co://", NULL, BDRV_O_PROTOCOL, &err);
    if (!bs) {
        fprintf(stderr, "bench-meta-cache: %s\n", error_get_pretty(err));
        return 1;
    }
    bdrv_ref(bs);
    BdrvChild *child = bdrv_attach_child(NULL, bs, "bench", BDRV_CHILD_FILTERED | BDRV_CHILD_PRIMARY, &err);
    if (!child) {
        fprintf(stderr, "bench-meta-cache: %s\n", error_get_pretty(err));
        return 1;
    }
    MetaCacheConfig cfg = { .child = child, .entry_size = ENTRY_SIZE, .nr_entries = ENTRIES,
                            .name = "bench" };
    cache = meta_cache_new(&cfg, &err);
    if (!cache) {
        fprintf(stderr, "bench-meta-cache: %s\n", error_get_pretty(err));
        return 1;
    }
    aio_co_run_sync(warm, NULL);

    static const int counts[] = { 1, 2, 4 };
    double rate[3][MAX_ROUNDS], per_cpu[3][MAX_ROUNDS];
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < 3; k++) {
            rate[k][r] = run(counts[k], ms, &per_cpu[k][r]);
        }
    }
    double med[3], med_cpu[3];
    for (int k = 0; k < 3; k++) {
        qsort(rate[k], (size_t)rounds, sizeof(double), cmp_double);
        qsort(per_cpu[k], (size_t)rounds, sizeof(double), cmp_double);
        med[k] = rate[k][rounds / 2];
        med_cpu[k] = per_cpu[k][rounds / 2];
        printf("meta-cache warm get+put, %d thread%s: %.1f M lookups/s "
               "(median of %d x %d ms; min %.1f, max %.1f)\n", counts[k],
               counts[k] > 1 ? "s" : "", med[k] / 1e6, rounds, ms, rate[k][0] / 1e6,
               rate[k][rounds - 1] / 1e6);
        printf("meta-cache warm get+put, %d thread%s, per CPU-second: %.1f M lookups "
               "(%.1f ns of CPU per lookup)\n", counts[k], counts[k] > 1 ? "s" : "",
               med_cpu[k] / 1e6, 1e9 / med_cpu[k]);
    }
    printf("meta-cache warm get+put, 2 threads / 1: %.2fx; 4 threads / 2: %.2fx\n",
           med[1] / med[0], med[2] / med[1]);
    meta_cache_free(cache);
    bdrv_unref_child(NULL, child);
    bdrv_unref(bs);
    return 0;
}
