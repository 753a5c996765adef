/*
 * compiler.h - small language helpers shared by every subsystem.
 *
 * Annotations (coroutine_fn), container_of, min/max, alignment helpers and
 * likely/unlikely.  Nothing here allocates or has state.
 */
#ifndef UBLKD_COMPILER_H
#define UBLKD_COMPILER_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* Marks functions that may only be called from coroutine context (they may yield). */
#define coroutine_fn

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define MIN(a, b) ({ __typeof__(a) _a = (a); __typeof__(b) _b = (b); _a < _b ? _a : _b; })
#define MAX(a, b) ({ __typeof__(a) _a = (a); __typeof__(b) _b = (b); _a > _b ? _a : _b; })

/* n must be a power of two for the *_POW2 forms. */
#define ALIGN_DOWN_POW2(x, n) ((x) & ~((__typeof__(x))(n) - 1))
#define ALIGN_UP_POW2(x, n)   ALIGN_DOWN_POW2((x) + (n) - 1, n)
#define ALIGN_DOWN(x, n)      ((x) / (n) * (n))
#define ALIGN_UP(x, n)        ALIGN_DOWN((x) + (n) - 1, n)
#define IS_ALIGNED(x, n)      (((x) % (n)) == 0)
#define DIV_ROUND_UP(x, n)    (((x) + (n) - 1) / (n))
#define IS_POW2(x)            ((x) != 0 && (((x) & ((x) - 1)) == 0))

#define KiB (1ULL << 10)
#define MiB (1ULL << 20)
#define GiB (1ULL << 30)
#define TiB (1ULL << 40)

#define UNUSED __attribute__((unused))
#define PRINTF_FMT(a, b) __attribute__((format(printf, a, b)))

#endif
