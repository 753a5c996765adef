/*
 * sanitizer.h - which sanitizer this build runs under (UBLKD_ASAN,
 * UBLKD_TSAN), and the two annotations for synchronisation ThreadSanitizer
 * cannot see.
 *
 * TSan follows memory through the libc calls it intercepts.  liburing maps
 * and unmaps its rings with raw syscalls, so when a ring is torn down and a
 * new one lands at the same address TSan still remembers the old owner's
 * writes to the submission queue.  aio.c marks the teardown with
 * tsan_release() and the next setup with tsan_acquire() on one object: the
 * kernel unmapped the old ring before it could map the new one there, so
 * that order is real.  Both are no-ops in other builds.
 */
#ifndef UBLKD_SANITIZER_H
#define UBLKD_SANITIZER_H

#if defined(__SANITIZE_ADDRESS__)
#define UBLKD_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UBLKD_ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define UBLKD_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UBLKD_TSAN 1
#endif
#endif

#ifdef UBLKD_TSAN
#include <sanitizer/tsan_interface.h>
static inline void tsan_release(void *addr) { __tsan_release(addr); }
static inline void tsan_acquire(void *addr) { __tsan_acquire(addr); }
#else
static inline void tsan_release(void *addr) { (void)addr; }
static inline void tsan_acquire(void *addr) { (void)addr; }
#endif

#endif
