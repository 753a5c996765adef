/*
 * test-coroutine.c - coroutine switch, lifecycle, pool and stack guard.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include "aio.h"
#include "coroutine.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static int log_buf[64];
static int log_n;
static void log_add(int v)
{
    log_buf[log_n++] = v;
}
static void log_expect(const int *exp, int n)
{
    assert_int_equal(log_n, n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(log_buf[i], exp[i]);
    }
    log_n = 0;
}

/* ---- enter / yield / terminate ---- */

static void coroutine_fn yield_twice(void *opaque)
{
    Coroutine *self = co_self();
    assert_non_null(self);
    assert_true(in_coroutine());
    assert_true(co_entered(self));
    *(Coroutine **)opaque = self;
    log_add(1);
    co_yield();
    log_add(3);
    co_yield();
    log_add(5);
}

static void test_enter_yield_order(void **state)
{
    (void)state;
    Coroutine *seen = NULL;
    assert_null(co_self());
    assert_false(in_coroutine());
    Coroutine *co = co_create(yield_twice, &seen);
    assert_false(co_entered(co));
    co_enter(co);
    assert_ptr_equal(seen, co);
    assert_false(co_entered(co));
    log_add(2);
    co_enter(co);
    log_add(4);
    co_enter(co);                /* terminates */
    log_add(6);
    static const int exp[] = { 1, 2, 3, 4, 5, 6 };
    log_expect(exp, 6);
    assert_null(co_self());
}

/* Values in callee-saved registers and on the stack survive switches. */
static void coroutine_fn compute(void *opaque)
{
    uint64_t *out = opaque;
    volatile uint64_t a = 1, b = 1;
    for (int i = 0; i < 50; i++) {
        uint64_t t = a + b;
        a = b;
        b = t;
        co_yield();
    }
    *out = b;
}

static void test_state_preserved(void **state)
{
    (void)state;
    uint64_t r1 = 0, r2 = 0;
    Coroutine *c1 = co_create(compute, &r1);
    Coroutine *c2 = co_create(compute, &r2);
    double d = 1.5;
    for (int i = 0; i < 51; i++) {
        co_enter(c1);
        d *= 1.01;
        co_enter(c2);
    }
    /* fib(52) */
    assert_int_equal(r1, 32951280099ULL);
    assert_int_equal(r2, 32951280099ULL);
    assert_true(d > 1.5);
}

/* ---- nested enter ---- */

static Coroutine *inner_co;

static void coroutine_fn inner(void *opaque)
{
    Coroutine *outer = opaque;
    assert_ptr_equal(co_self(), inner_co);
    assert_true(co_entered(outer));      /* outer is on the call chain */
    log_add(2);
    co_yield();                          /* back to outer, not to main */
    log_add(5);
}

static void coroutine_fn outer(void *opaque)
{
    (void)opaque;
    Coroutine *self = co_self();
    log_add(1);
    inner_co = co_create(inner, self);
    co_enter(inner_co);
    assert_ptr_equal(co_self(), self);
    log_add(3);
    co_yield();
    log_add(6);
}

static void test_nested_enter(void **state)
{
    (void)state;
    Coroutine *o = co_create(outer, NULL);
    co_enter(o);
    log_add(4);
    co_enter(inner_co);                  /* inner terminates; main continues */
    co_enter(o);
    static const int exp[] = { 1, 2, 3, 4, 5, 6 };
    log_expect(exp, 6);
}

/* ---- wake after yield ---- */

static Coroutine *sleeper;

static void coroutine_fn sleeper_fn(void *opaque)
{
    (void)opaque;
    log_add(1);
    co_yield();
    log_add(4);
}

static void coroutine_fn waker_fn(void *opaque)
{
    (void)opaque;
    log_add(2);
    aio_co_wake(sleeper);                /* must not run sleeper inside us */
    log_add(3);
}

static void test_wake_runs_after_yield(void **state)
{
    (void)state;
    sleeper = co_create(sleeper_fn, NULL);
    co_enter(sleeper);
    co_enter(co_create(waker_fn, NULL));
    static const int exp[] = { 1, 2, 3, 4 };
    log_expect(exp, 4);
}

/* ---- pool ---- */

static void coroutine_fn nop(void *opaque)
{
    (void)opaque;
}

static void coroutine_fn yield_once(void *opaque)
{
    (void)opaque;
    co_yield();
}

static void test_pool_reuse(void **state)
{
    (void)state;
    co_enter(co_create(nop, NULL));      /* warm the pool */
    size_t before = co_pool_allocated();
    assert_true(before >= 1);
    for (int i = 0; i < 100000; i++) {
        Coroutine *co = co_create(i & 1 ? nop : yield_once, NULL);
        co_enter(co);
        if (!(i & 1)) {
            co_enter(co);
        }
    }
    assert_int_equal(co_pool_allocated(), before);

    /* 100 alive at a time: the pool grows once, then stays flat. */
    Coroutine *live[100];
    for (int round = 0; round < 100; round++) {
        for (int i = 0; i < 100; i++) {
            live[i] = co_create(yield_once, NULL);
            co_enter(live[i]);
        }
        for (int i = 0; i < 100; i++) {
            co_enter(live[i]);
        }
        if (round == 0) {
            before = co_pool_allocated();
        }
    }
    assert_int_equal(co_pool_allocated(), before);
}

/* Created on one thread, finished on another: the global pool rebalances. */
#define XT_N 1000
static Coroutine *xt_cos[XT_N];

static void *xt_creator(void *arg)
{
    (void)arg;
    for (int i = 0; i < XT_N; i++) {
        xt_cos[i] = co_create(yield_once, NULL);
        co_enter(xt_cos[i]);
    }
    return NULL;
}

static void *xt_finisher(void *arg)
{
    (void)arg;
    for (int i = 0; i < XT_N; i++) {
        co_enter(xt_cos[i]);
    }
    return NULL;
}

static void test_pool_cross_thread(void **state)
{
    (void)state;
    size_t after_first = 0;
    for (int round = 0; round < 10; round++) {
        pthread_t t;
        pthread_create(&t, NULL, xt_creator, NULL);
        pthread_join(t, NULL);
        pthread_create(&t, NULL, xt_finisher, NULL);
        pthread_join(t, NULL);
        if (round == 0) {
            after_first = co_pool_allocated();
        }
    }
    assert_int_equal(co_pool_allocated(), after_first);
}

/* ---- stack ---- */

typedef struct {
    uintptr_t lo, hi;            /* mapping holding the stack */
    uintptr_t guard_lo, guard_hi;
    char guard_perms[8];
} StackMaps;

static void coroutine_fn find_stack(void *opaque)
{
    StackMaps *m = opaque;
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    uintptr_t prev_lo = 0, prev_hi = 0;
    char prev_perms[8] = "";
    assert_non_null(f);
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3) {
            continue;
        }
        if (here >= lo && here < hi) {
            m->lo = lo;
            m->hi = hi;
            m->guard_lo = prev_lo;
            m->guard_hi = prev_hi;
            memcpy(m->guard_perms, prev_perms, sizeof(prev_perms));
        }
        prev_lo = lo;
        prev_hi = hi;
        memcpy(prev_perms, perms, sizeof(perms));
    }
    fclose(f);
}

static void test_guard_page(void **state)
{
    (void)state;
    StackMaps m = { 0 };
    co_enter(co_create(find_stack, &m));
    assert_true(m.lo != 0);
    assert_true(m.hi - m.lo >= COROUTINE_STACK_SIZE);
    /* Directly below the stack: an inaccessible page. */
    assert_int_equal(m.guard_hi, m.lo);
    assert_string_equal(m.guard_perms, "---p");
    assert_int_equal(m.guard_hi - m.guard_lo, (uintptr_t)sysconf(_SC_PAGESIZE));
}

/* The stack really is ~COROUTINE_STACK_SIZE: 200 KiB of locals work. */
static void coroutine_fn big_frame(void *opaque)
{
    volatile char buf[200 * 1024];
    memset((char *)buf, 0x5a, sizeof(buf));
    *(int *)opaque = buf[0] + buf[sizeof(buf) - 1];
}

static void test_big_stack(void **state)
{
    (void)state;
    int r = 0;
    co_enter(co_create(big_frame, &r));
    assert_int_equal(r, 0xb4);
}

static volatile int recurse_limit = 1 << 30;

static int __attribute__((noinline, unused)) recurse(int n)
{
    volatile char pad[1024];
    pad[0] = (char)n;
    if (n >= recurse_limit) {
        return 0;
    }
    return recurse(n + 1) + pad[0];
}

static void coroutine_fn UNUSED overflow(void *opaque)
{
    (void)opaque;
    recurse(0);
}

static void coroutine_fn self_enter(void *opaque)
{
    (void)opaque;
    co_enter(co_self());
}

/* Run fn in a forked child and return its wait status. */
static int in_child(CoroutineEntry *fn)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit rl = { 0, 0 };
        setrlimit(RLIMIT_CORE, &rl);
        if (!freopen("/dev/null", "w", stderr)) {
            _exit(99);
        }
        co_enter(co_create(fn, NULL));
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static void test_overflow_hits_guard(void **state)
{
    (void)state;
#ifdef UNDER_ASAN
    skip();                      /* ASan reports the overflow instead */
#else
    int st = in_child(overflow);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGSEGV);
#endif
}

static void test_enter_running_aborts(void **state)
{
    (void)state;
    int st = in_child(self_enter);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGABRT);
}

/* ---- migration between threads ---- */

static void *enter_on_thread(void *arg)
{
    co_enter(arg);
    return NULL;
}

/* pthread_self() is __attribute__((const)): the compiler may reuse its value
 * across a yield, which is wrong once a coroutine migrates.  Hide it. */
static pthread_t __attribute__((noinline)) current_thread(void)
{
    pthread_t t = pthread_self();
    __asm__ volatile("" : "+r"(t));
    return t;
}

static void coroutine_fn note_thread(void *opaque)
{
    pthread_t *seen = opaque;
    seen[0] = current_thread();
    co_yield();
    seen[1] = current_thread();
    assert_ptr_not_equal(co_self(), NULL);
}

static void test_resume_on_other_thread(void **state)
{
    (void)state;
    pthread_t seen[2] = { 0 };
    Coroutine *co = co_create(note_thread, seen);
    co_enter(co);
    pthread_t t;
    pthread_create(&t, NULL, enter_on_thread, co);
    pthread_join(t, NULL);
    assert_true(pthread_equal(seen[0], pthread_self()));
    assert_true(pthread_equal(seen[1], t));
    assert_null(co_self());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enter_yield_order),
        cmocka_unit_test(test_state_preserved),
        cmocka_unit_test(test_nested_enter),
        cmocka_unit_test(test_wake_runs_after_yield),
        cmocka_unit_test(test_pool_reuse),
        cmocka_unit_test(test_pool_cross_thread),
        cmocka_unit_test(test_guard_page),
        cmocka_unit_test(test_big_stack),
        cmocka_unit_test(test_overflow_hits_guard),
        cmocka_unit_test(test_enter_running_aborts),
        cmocka_unit_test(test_resume_on_other_thread),
    };
    return cmocka_run_group_tests_name("coroutine", tests, NULL, NULL);
}
