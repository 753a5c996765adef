/*
 * crash-file.h - "crashfile", an in-memory protocol that simulates a crash
 * (kill -9 of the server, or power loss of the host) for the format
 * drivers' crash-consistency tests (tests/unit/test-qcow2-crash.c).
 *
 * The node keeps two images: what reads see now, and what is durable.
 * Every write, write-zeroes and discard that completes is recorded as
 * pending; a flush makes the ones that completed before it started durable.
 * At the armed crash point (the Nth write, zeroes, discard or flush from
 * arming) the disk freezes: that operation and every later one still
 * happen for readers, so the driver above runs on unaware, but nothing
 * more becomes durable.  crash_file_persisted() then builds one image a
 * crash could leave: the durable image plus ANY subset of the pending
 * operations (chosen from a seed, applied in the order they completed),
 * some of them torn at sector granularity (only some of their 512-byte
 * sectors reached the disk).
 *
 * Requests yield to the event loop before they act (flushes also between
 * noting what they cover and making it durable), so a test that starts
 * several coroutines gets several requests in flight and interleaved.
 * Single-threaded: every request on the thread that opened the node.
 */
#ifndef UBLKD_TESTS_CRASH_FILE_H
#define UBLKD_TESTS_CRASH_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "block-driver.h"

/* A node holding len bytes of data, all durable. */
BlockDriverState *crash_file_new(const char *node_name, const void *data, size_t len);
/* All crashfile nodes are one machine: they count operations on one clock
 * and crash together (an image and its external data file); bs is any of
 * them.  Crash at the nth (1-based) write/zeroes/discard/flush from now;
 * 0 never.  Arming clears an earlier crash. */
void crash_file_arm(BlockDriverState *bs, int64_t nth);
bool crash_file_crashed(BlockDriverState *bs);
/* Writes, zeroes, discards and flushes seen so far (all nodes). */
int64_t crash_file_ops(BlockDriverState *bs);
/* Operations pending (not durable) right now, or at the crash. */
int crash_file_pending(BlockDriverState *bs);
/*
 * An image the crash could leave (the current durable state if there was
 * no crash): durable + a subset of pending chosen from seed.  keep_pct is
 * the chance of each pending operation to persist (0..100), torn_pct the
 * chance that a persisted one is torn.  *len gets the file's length.  The
 * caller frees the buffer.
 */
uint8_t *crash_file_persisted(BlockDriverState *bs, uint64_t seed, int keep_pct, int torn_pct,
                              size_t *len);
/* The same with the choice made by keep(offset, bytes, opaque) for each
 * pending operation (in order), none torn: for tests that need one
 * particular bad subset. */
uint8_t *crash_file_persisted_if(BlockDriverState *bs,
                                 bool (*keep)(int64_t offset, int64_t bytes, void *opaque),
                                 void *opaque, size_t *len);
/* What reads see now (no copy; valid until the next request). */
const uint8_t *crash_file_current(BlockDriverState *bs, size_t *len);

#endif
