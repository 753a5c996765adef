/*
 * coroutine.c - stackful coroutines: pooled mmap'ed stacks, fast switch.
 *
 * Each coroutine lives in one mmap: a PROT_NONE guard page, the stack, and
 * the Coroutine struct at the very top (so creating one never mallocs).
 * Terminated coroutines go to a per-thread pool; a thread whose pool is
 * full hands a whole batch to a small global pool, which threads that run
 * dry take from.  That keeps the steady state allocation-free even when
 * coroutines are created on one thread and finish on another.
 *
 * The switch saves only callee-saved registers and the stack pointer
 * (x86-64 and aarch64 assembly below); other architectures use ucontext to
 * start a coroutine and _setjmp/_longjmp afterwards.  Under ASan every
 * switch is announced with __sanitizer_{start,finish}_switch_fiber, so
 * ASan knows which stack is live; under TSan each stack is a TSan fiber and
 * every switch goes through __tsan_switch_to_fiber, so TSan keeps a shadow
 * call stack per coroutine and orders what the old fiber did before what
 * the new one does (a switch is a handover on one thread, not a race).
 *
 * A coroutine may yield on one thread and be resumed on another (after
 * aio_co_reschedule_self), so thread-local state is read through the
 * noinline co_tls() after every switch, never through a cached address.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "aio.h"
#include "coroutine-int.h"

#include "sanitizer.h"

#ifdef UBLKD_ASAN
#define CO_ASAN 1
#endif
#ifdef CO_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#ifdef UBLKD_TSAN
#define CO_TSAN 1
#endif

#if (defined(__x86_64__) || defined(__aarch64__)) && !defined(CO_FORCE_UCONTEXT)
#define CO_ASM 1
#else
#include <setjmp.h>
#include <ucontext.h>
#endif

enum { CO_IDLE, CO_RUNNING, CO_YIELDED, CO_TERMINATED, CO_POOLED };

struct Coroutine {
    void *sp;                    /* saved stack pointer while switched out */
    CoroutineEntry *entry;
    void *opaque;
    Coroutine *caller;           /* who entered us; we yield back to it */
    AioContext *ctx;             /* home context: where we were last entered */
    int state;
    /* Coroutines woken (aio_co_wake) by us on our own thread; entered by
     * co_enter once we yield, so the waker never nests inside the wakee. */
    Coroutine *wake_head, *wake_tail, *wake_next;
    AioContext *reschedule_to;
    Coroutine *sched_next;       /* AioContext scheduled list */
    atomic_bool scheduled;
    Coroutine *pool_next;
    Coroutine *batch_next;       /* global pool: list of batches */
    unsigned batch_size;
    char *stack;                 /* lowest usable byte (above the guard) */
    size_t stack_size;
#ifdef CO_ASAN
    void *fake_stack;
    const void *asan_bottom;     /* leader only: thread stack for ASan */
    size_t asan_size;
#endif
#ifdef CO_TSAN
    void *tsan_fiber;            /* leader: the thread's; else the stack's */
#endif
#ifndef CO_ASM
    jmp_buf env;
    ucontext_t uc;
    bool fresh;                  /* not started: first switch uses setcontext */
#endif
};

/* ---------------------------------------------------------------- switch */

#if defined(CO_ASM) && defined(__x86_64__)
/* co_switch_asm(void **save_sp, void *new_sp): the SysV callee-saved GPRs
 * go on the old stack; mxcsr/x87 CW are left alone (nothing changes them). */
__asm__(".text\n"
        ".globl ublkd_co_switch_asm\n"
        ".hidden ublkd_co_switch_asm\n"
        ".type ublkd_co_switch_asm,@function\n"
        "ublkd_co_switch_asm:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size ublkd_co_switch_asm, .-ublkd_co_switch_asm\n"
        ".section .note.GNU-stack,\"\",@progbits\n"
        ".text\n");
#define CO_FRAME_WORDS 6
#elif defined(CO_ASM) && defined(__aarch64__)
/* AAPCS64 callee-saved: x19-x28, fp, lr, d8-d15; 160 bytes, 16-aligned. */
__asm__(".text\n"
        ".globl ublkd_co_switch_asm\n"
        ".hidden ublkd_co_switch_asm\n"
        ".type ublkd_co_switch_asm,%function\n"
        "ublkd_co_switch_asm:\n"
        "    sub sp, sp, #160\n"
        "    stp x19, x20, [sp, #0]\n"
        "    stp x21, x22, [sp, #16]\n"
        "    stp x23, x24, [sp, #32]\n"
        "    stp x25, x26, [sp, #48]\n"
        "    stp x27, x28, [sp, #64]\n"
        "    stp x29, x30, [sp, #80]\n"
        "    stp d8, d9, [sp, #96]\n"
        "    stp d10, d11, [sp, #112]\n"
        "    stp d12, d13, [sp, #128]\n"
        "    stp d14, d15, [sp, #144]\n"
        "    mov x2, sp\n"
        "    str x2, [x0]\n"
        "    mov sp, x1\n"
        "    ldp x19, x20, [sp, #0]\n"
        "    ldp x21, x22, [sp, #16]\n"
        "    ldp x23, x24, [sp, #32]\n"
        "    ldp x25, x26, [sp, #48]\n"
        "    ldp x27, x28, [sp, #64]\n"
        "    ldp x29, x30, [sp, #80]\n"
        "    ldp d8, d9, [sp, #96]\n"
        "    ldp d10, d11, [sp, #112]\n"
        "    ldp d12, d13, [sp, #128]\n"
        "    ldp d14, d15, [sp, #144]\n"
        "    add sp, sp, #160\n"
        "    ret\n"
        ".size ublkd_co_switch_asm, .-ublkd_co_switch_asm\n"
        ".section .note.GNU-stack,\"\",%progbits\n"
        ".text\n");
#define CO_FRAME_WORDS 20
#endif

#ifdef CO_ASM
void ublkd_co_switch_asm(void **save_sp, void *new_sp);
#endif

/* ----------------------------------------------------------- thread state */

typedef struct CoThread {
    Coroutine leader;            /* stands for the thread's own stack */
    Coroutine *current;
    Coroutine *pool;
    unsigned pool_size;
    bool init;
} CoThread;

static __thread CoThread co_thread_state;
static pthread_key_t co_thread_key;
static pthread_once_t co_key_once = PTHREAD_ONCE_INIT;

/* Pool sizes: a thread keeps up to POOL_LOCAL_MAX stacks; overflow moves to
 * the global pool in batches, which holds at most POOL_GLOBAL_MAX_BATCHES. */
#define POOL_LOCAL_MAX 256
#define POOL_BATCH 64
#define POOL_GLOBAL_MAX_BATCHES 64

static pthread_mutex_t global_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static Coroutine *global_batches;
static unsigned global_nbatches;
static atomic_size_t stacks_allocated;

static void co_free_stack(Coroutine *co);

static void pool_give_batch(Coroutine *head, unsigned n)
{
    pthread_mutex_lock(&global_pool_lock);
    if (global_nbatches < POOL_GLOBAL_MAX_BATCHES) {
        head->batch_size = n;
        head->batch_next = global_batches;
        global_batches = head;
        global_nbatches++;
        head = NULL;
    }
    pthread_mutex_unlock(&global_pool_lock);
    while (head) {
        Coroutine *next = head->pool_next;
        co_free_stack(head);
        head = next;
    }
}

static void co_thread_exit(void *arg)
{
    CoThread *t = arg;
    /* Our stacks may still be wanted by other threads. */
    while (t->pool) {
        Coroutine *head = t->pool, *co = head;
        unsigned n = 1;
        while (n < POOL_BATCH && co->pool_next) {
            co = co->pool_next;
            n++;
        }
        t->pool = co->pool_next;
        co->pool_next = NULL;
        pool_give_batch(head, n);
    }
    t->pool_size = 0;
}

#ifdef CO_TSAN
/* TSan does not order a fiber made before fork() with the child's thread,
 * so the child gets fresh fibers for the stacks it can reach: the forking
 * thread's pool and the global one (taken under its lock across the fork).
 * Coroutines alive at the fork are not resumed in a child. */
static void tsan_renew_fibers(Coroutine *list)
{
    for (Coroutine *co = list; co; co = co->pool_next) {
        __tsan_destroy_fiber(co->tsan_fiber);
        co->tsan_fiber = __tsan_create_fiber(0);
    }
}

static void co_fork_prepare(void)
{
    pthread_mutex_lock(&global_pool_lock);
}

static void co_fork_parent(void)
{
    pthread_mutex_unlock(&global_pool_lock);
}

static void co_fork_child(void)
{
    tsan_renew_fibers(co_thread_state.pool);
    for (Coroutine *b = global_batches; b; b = b->batch_next) {
        tsan_renew_fibers(b);
    }
    pthread_mutex_unlock(&global_pool_lock);
}
#endif

static void co_make_key(void)
{
    if (pthread_key_create(&co_thread_key, co_thread_exit)) {
        abort();
    }
#ifdef CO_TSAN
    pthread_atfork(co_fork_prepare, co_fork_parent, co_fork_child);
#endif
}

static CoThread *co_tls_init(CoThread *t)
{
    pthread_once(&co_key_once, co_make_key);
    pthread_setspecific(co_thread_key, t);
    t->leader.state = CO_RUNNING;
    t->current = &t->leader;
#ifdef CO_ASAN
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        void *addr;
        size_t size;
        if (pthread_attr_getstack(&attr, &addr, &size) == 0) {
            t->leader.asan_bottom = addr;
            t->leader.asan_size = size;
        }
        pthread_attr_destroy(&attr);
    }
#endif
#ifdef CO_TSAN
    t->leader.tsan_fiber = __tsan_get_current_fiber();
#endif
    t->init = true;
    return t;
}

/* noinline + empty asm: the compiler must recompute the TLS address after
 * every call, because a coroutine can migrate threads across a yield. */
static __attribute__((noinline)) CoThread *co_tls(void)
{
    CoThread *t = &co_thread_state;
    __asm__ volatile("" : "+r"(t));
    if (unlikely(!t->init)) {
        return co_tls_init(t);
    }
    return t;
}

/* ------------------------------------------------------------------- ASan */

#ifdef CO_ASAN
static void asan_start(Coroutine *from, Coroutine *to, bool terminating)
{
    /* NULL save slot tells ASan to destroy the dying fiber's fake stack. */
    __sanitizer_start_switch_fiber(terminating ? NULL : &from->fake_stack,
                                   to->stack ? (const void *)to->stack : to->asan_bottom,
                                   to->stack ? to->stack_size : to->asan_size);
}

static void asan_finish(Coroutine *self, Coroutine *from)
{
    const void *bottom;
    size_t size;
    __sanitizer_finish_switch_fiber(self->fake_stack, &bottom, &size);
    /* Fallback if pthread_getattr_np could not tell us the thread stack. */
    if (from && !from->stack && !from->asan_bottom) {
        from->asan_bottom = bottom;
        from->asan_size = size;
    }
}
#else
static inline void asan_start(Coroutine *from, Coroutine *to, bool terminating)
{
    (void)from; (void)to; (void)terminating;
}
static inline void asan_finish(Coroutine *self, Coroutine *from)
{
    (void)self; (void)from;
}
#endif

/* ------------------------------------------------------------------- TSan */

#ifdef CO_TSAN
static inline void tsan_switch(Coroutine *to)
{
    /* flags 0: TSan synchronises the switch, as the real handover does. */
    __tsan_switch_to_fiber(to->tsan_fiber, 0);
}
#else
static inline void tsan_switch(Coroutine *to)
{
    (void)to;
}
#endif

/* -------------------------------------------------------------- lifecycle */

static void co_trampoline_body(Coroutine *co) __attribute__((noreturn));

static inline void co_switch(Coroutine *from, Coroutine *to, bool terminating)
{
    asan_start(from, to, terminating);
    tsan_switch(to);
#ifdef CO_ASM
    ublkd_co_switch_asm(&from->sp, to->sp);
#else
    if (!_setjmp(from->env)) {
        if (to->fresh) {
            to->fresh = false;
            setcontext(&to->uc);
        }
        _longjmp(to->env, 1);
    }
#endif
    asan_finish(from, NULL);
}

/* Loops rather than returning: a terminated coroutine parks here, and a
 * pooled stack is reused by switching back into it with a new entry.  So a
 * stack's frames never pile up (TSan keeps one shadow call stack per fiber,
 * which a trampoline restarted from the top on each reuse would grow). */
static void co_trampoline_body(Coroutine *co)
{
    asan_finish(co, co->caller);
    for (;;) {
        co->entry(co->opaque);
        co->state = CO_TERMINATED;
        /* The caller's co_enter already points current back at itself. */
        co_switch(co, co->caller, true);
        /* Taken from the pool by co_create and entered again. */
    }
}

#ifdef CO_ASM
static void __attribute__((noreturn)) co_trampoline(void)
{
    co_trampoline_body(co_tls()->current);
}
#else
static void co_trampoline(void)
{
    co_trampoline_body(co_tls()->current);
}
#endif

/* Lay out a fresh frame so the first switch "returns" into co_trampoline. */
static void co_reset_stack(Coroutine *co)
{
#ifdef CO_ASM
    uintptr_t top = ((uintptr_t)co - 64) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = NULL;                      /* fake return address of trampoline */
#if defined(__x86_64__)
    *--sp = (void *)co_trampoline;     /* popped by ret; rsp%16==8 at entry */
    for (int i = 0; i < CO_FRAME_WORDS; i++) {
        *--sp = NULL;
    }
#else
    *--sp = NULL;                      /* keep 16-byte alignment */
    sp -= CO_FRAME_WORDS;
    memset(sp, 0, CO_FRAME_WORDS * sizeof(void *));
    sp[11] = (void *)co_trampoline;    /* x30 slot at [sp, #88] */
#endif
    co->sp = sp;
#else
    if (getcontext(&co->uc)) {
        abort();
    }
    co->uc.uc_link = NULL;
    co->uc.uc_stack.ss_sp = co->stack;
    co->uc.uc_stack.ss_size = (size_t)(((char *)co - 64) - co->stack);
    makecontext(&co->uc, co_trampoline, 0);
    co->fresh = true;
#endif
}

static size_t page_size(void)
{
    static size_t ps;
    if (!ps) {
        ps = (size_t)sysconf(_SC_PAGESIZE);
    }
    return ps;
}

static Coroutine *co_alloc_stack(void)
{
    size_t ps = page_size();
    size_t total = ps + COROUTINE_STACK_SIZE;
    char *map = mmap(NULL, total, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (map == MAP_FAILED) {
        fprintf(stderr, "ublkd: coroutine stack mmap failed: %s\n", strerror(errno));
        abort();
    }
    if (mprotect(map, ps, PROT_NONE)) {
        fprintf(stderr, "ublkd: coroutine guard page: %s\n", strerror(errno));
        abort();
    }
    /* The struct sits at the top of the stack mapping, cache-line aligned. */
    uintptr_t co_addr = ((uintptr_t)map + total - sizeof(Coroutine)) & ~(uintptr_t)63;
    Coroutine *co = (Coroutine *)co_addr;
    memset(co, 0, sizeof(*co));
    co->stack = map + ps;
    co->stack_size = COROUTINE_STACK_SIZE;
#ifdef CO_TSAN
    co->tsan_fiber = __tsan_create_fiber(0);   /* one per stack, kept in the pool */
#endif
    atomic_fetch_add_explicit(&stacks_allocated, 1, memory_order_relaxed);
    return co;
}

static void co_free_stack(Coroutine *co)
{
    size_t ps = page_size();
#ifdef CO_TSAN
    __tsan_destroy_fiber(co->tsan_fiber);
#endif
    munmap(co->stack - ps, ps + co->stack_size);
}

static Coroutine *pool_take(CoThread *t)
{
    if (!t->pool) {
        pthread_mutex_lock(&global_pool_lock);
        Coroutine *b = global_batches;
        if (b) {
            global_batches = b->batch_next;
            global_nbatches--;
        }
        pthread_mutex_unlock(&global_pool_lock);
        if (!b) {
            return NULL;
        }
        t->pool = b;
        t->pool_size = b->batch_size;
    }
    Coroutine *co = t->pool;
    t->pool = co->pool_next;
    t->pool_size--;
    return co;
}

static void pool_put(CoThread *t, Coroutine *co)
{
    co->state = CO_POOLED;
    if (t->pool_size >= POOL_LOCAL_MAX) {
        /* Hand a batch to the global pool; keep the rest local. */
        Coroutine *head = t->pool, *tail = head;
        for (unsigned i = 1; i < POOL_BATCH; i++) {
            tail = tail->pool_next;
        }
        t->pool = tail->pool_next;
        tail->pool_next = NULL;
        t->pool_size -= POOL_BATCH;
        pool_give_batch(head, POOL_BATCH);
    }
    co->pool_next = t->pool;
    t->pool = co;
    t->pool_size++;
}

Coroutine *co_create(CoroutineEntry *entry, void *opaque)
{
    CoThread *t = co_tls();
    Coroutine *co = pool_take(t);
    if (!co) {
        co = co_alloc_stack();
        co_reset_stack(co);      /* a pooled one waits in its trampoline */
    }
#ifdef CO_ASAN
    /* Frames of the previous user may have left poisoned redzones. */
    ASAN_UNPOISON_MEMORY_REGION(co->stack, (size_t)((char *)co - co->stack));
    co->fake_stack = NULL;
#endif
    co->entry = entry;
    co->opaque = opaque;
    co->caller = NULL;
    co->ctx = NULL;
    co->state = CO_IDLE;
    co->wake_head = co->wake_tail = co->wake_next = NULL;
    co->reschedule_to = NULL;
    co->sched_next = NULL;
    atomic_store_explicit(&co->scheduled, false, memory_order_relaxed);
    return co;
}

void co_enter(Coroutine *co)
{
    CoThread *t = co_tls();
    Coroutine *self = t->current;

    if (unlikely(co->state != CO_IDLE && co->state != CO_YIELDED)) {
        fprintf(stderr, "ublkd: co_enter: coroutine %p is %s\n", (void *)co,
                co->state == CO_RUNNING ? "already running" : "terminated");
        abort();
    }
    if (unlikely(atomic_load_explicit(&co->scheduled, memory_order_relaxed))) {
        /* It would run twice: once now and once from the scheduled list. */
        fprintf(stderr, "ublkd: co_enter: coroutine %p is scheduled on a context\n", (void *)co);
        abort();
    }
    co->caller = self;
    co->ctx = aio_current();
    co->state = CO_RUNNING;
    t->current = co;
    co_switch(self, co, false);
    /* co yielded or terminated, on this thread: our TLS is still ours. */
    t->current = self;

    Coroutine *wake = co->wake_head;
    co->wake_head = co->wake_tail = NULL;
    AioContext *move = co->reschedule_to;
    co->reschedule_to = NULL;
    if (co->state == CO_TERMINATED) {
        pool_put(t, co);
    } else if (move) {
        aio_co_schedule(move, co);
    }
    while (wake) {
        Coroutine *next = wake->wake_next;
        wake->wake_next = NULL;
        co_enter(wake);
        wake = next;
    }
}

void coroutine_fn co_yield(void)
{
    CoThread *t = co_tls();
    Coroutine *self = t->current;
    Coroutine *to = self->caller;

    if (unlikely(!to)) {
        fprintf(stderr, "ublkd: co_yield outside coroutine\n");
        abort();
    }
    self->caller = NULL;
    self->state = CO_YIELDED;
    t->current = to;
    co_switch(self, to, false);
    /* Resumed, maybe on another thread: co_enter there set up everything. */
}

Coroutine *co_self(void)
{
    CoThread *t = co_tls();
    return t->current == &t->leader ? NULL : t->current;
}

bool in_coroutine(void)
{
    return co_self() != NULL;
}

AioContext *co_get_ctx(const Coroutine *co)
{
    return co->ctx;
}

bool co_entered(const Coroutine *co)
{
    return co->state == CO_RUNNING;
}

size_t co_pool_allocated(void)
{
    return atomic_load_explicit(&stacks_allocated, memory_order_relaxed);
}

/* ---------------------------------------------------- hooks for io/aio.c */

Coroutine **co_sched_link(Coroutine *co)
{
    return &co->sched_next;
}

atomic_bool *co_sched_flag(Coroutine *co)
{
    return &co->scheduled;
}

void co_set_reschedule(Coroutine *self, AioContext *ctx)
{
    self->reschedule_to = ctx;
}

void co_queue_wakeup_after_yield(Coroutine *co)
{
    Coroutine *self = co_self();
    if (!self) {
        abort();
    }
    co->wake_next = NULL;
    if (self->wake_tail) {
        self->wake_tail->wake_next = co;
    } else {
        self->wake_head = co;
    }
    self->wake_tail = co;
}
