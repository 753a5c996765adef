# ublkd - see README.md.  `make` builds build/ublkd; `make test` runs what CI runs.
# Build-time options are documented in Kconfig.md (make CONFIG_X=n).

BUILD    ?= build
.DEFAULT_GOAL := all
PREFIX   ?= /usr/local
DESTDIR  ?=

# ---- configuration (Kconfig.md) ----
CONFIG_RAW      ?= y
CONFIG_NULL     ?= y
CONFIG_VDI      ?= y
CONFIG_QCOW2    ?= y
CONFIG_BLKDEBUG ?= y
CONFIG_QUORUM   ?= y
CONFIG_UBLK     ?= y
CONFIG_JSON     ?= y
CONFIG_ZSTD     ?= y
CONFIG_CRYPTO   ?= y
CONFIG_RBD      ?= y
CONFIG_NBD      ?= y

CFLAGS_BASE := -std=gnu11 -Wall -Wextra -Werror -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 \
               -Iinclude -I$(BUILD) -MMD -MP -fno-strict-aliasing
OPT       ?= -O2 -g
CFLAGS    ?=
ALL_CFLAGS = $(CFLAGS_BASE) $(OPT) $(CFLAGS) $(EXTRA_CFLAGS)
LDLIBS    := -luring -lpthread
LDFLAGS   ?=

# ---- sources, one subsystem per file ----
IO_SRCS := io/error.c io/coroutine.c io/co-lock.c io/aio.c io/aio-signal.c io/iov.c io/iov-fixed.c
# node graph, options
IO_SRCS += io/options.c io/block.c io/block-open.c io/block-snapshot.c io/block-perm.c
# request path, throttling, export handle
IO_SRCS += io/block-io.c io/block-io-fixed.c io/block-io-zero.c io/block-io-drain.c io/block-status.c
IO_SRCS += io/throttle.c io/block-backend.c
# metadata cache for format drivers (qcow2 L2/refcount tables)
IO_SRCS += io/meta-cache.c
IO_SRCS += io/thread-slot.c io/block-counters.c
# events drivers report (quorum votes lost, rewrites)
IO_SRCS += io/block-events.c
# disk encryption over libcrypto: sector ciphers, LUKS headers, secrets
IO_SRCS += $(if $(filter y,$(CONFIG_CRYPTO)),io/crypto-cipher.c io/crypto-luks.c io/crypto-luks-amend.c io/crypto-secret.c)

# Drivers: one line each.  The name must match `const BlockDriver bdrv_<name>`
# in the driver's file; the registry is generated from this list.
# `file` is the protocol driver in drivers/file*.c and is always built.
DRIVERS-y := file
DRIVERS-$(CONFIG_RAW)      += raw
DRIVERS-$(CONFIG_NULL)     += null
DRIVERS-$(CONFIG_VDI)      += vdi
DRIVERS-$(CONFIG_QCOW2)    += qcow2
DRIVERS-$(CONFIG_BLKDEBUG) += blkdebug
DRIVERS-$(CONFIG_QUORUM)   += quorum
DRIVERS-$(CONFIG_RBD)      += rbd
DRIVERS-$(CONFIG_NBD)      += nbd
# Extra files of a driver split by concern: DRIVER_SRCS-<name> := drivers/<name>-x.c
DRIVER_SRCS-file := drivers/file-io.c drivers/file-lock.c
DRIVER_SRCS-blkdebug := drivers/blkdebug-rules.c drivers/blkdebug-control.c
DRIVER_SRCS-quorum := drivers/quorum-vote.c drivers/quorum-rebuild.c
DRIVER_SRCS-rbd := drivers/rbd-io.c drivers/rbd-name.c drivers/rbd-lib.c
DRIVER_SRCS-nbd := drivers/nbd-uri.c drivers/nbd-io.c
DRIVER_SRCS-vdi := drivers/vdi-write.c drivers/vdi-create.c drivers/vdi-check.c
DRIVER_SRCS-qcow2 := drivers/qcow2-header.c drivers/qcow2-cluster.c drivers/qcow2-refcount.c \
                     drivers/qcow2-compress.c drivers/qcow2-create.c drivers/qcow2-create-layout.c \
                     drivers/qcow2-alloc.c drivers/qcow2-write.c drivers/qcow2-compress-write.c \
                     drivers/qcow2-check.c drivers/qcow2-check-repair.c drivers/qcow2-measure.c \
                     drivers/qcow2-header-write.c drivers/qcow2-resize.c drivers/qcow2-crypto.c \
                     drivers/qcow2-snapshot.c drivers/qcow2-bitmap.c drivers/qcow2-amend.c
DRIVER_SRCS := $(foreach d,$(DRIVERS-y),$(wildcard drivers/$(d).c) $(DRIVER_SRCS-$(d)))

# ublk server: control plane, params, config/state, queue threads, daemon
UBLK_SRCS := ublk/ctrl.c ublk/params.c ublk/config.c ublk/queue.c ublk/queue-batch.c ublk/ctlsock.c ublk/server.c \
             ublk/list-remote.c
TOOL_SRCS := tools/ublkd.c
# device verbs (add/del/list/recover/features)
TOOL_SRCS += $(if $(filter y,$(CONFIG_UBLK)),tools/dev.c)
# `ublkd img` (qemu-img-like image tool); img-util.c is pure logic, unit-tested
IMG_SRCS := tools/img.c tools/img-util.c tools/img-json.c tools/progress.c \
            tools/img-create.c tools/img-info.c tools/img-check.c tools/img-convert.c \
            tools/img-compare.c tools/img-map.c tools/img-bench.c tools/img-io.c \
            tools/img-io-cmds.c tools/img-dd.c tools/img-measure.c tools/img-rebase.c \
            tools/img-commit.c tools/img-resize.c tools/img-snapshot.c tools/img-bitmap.c tools/img-amend.c
TOOL_SRCS += $(IMG_SRCS)

ifeq ($(CONFIG_JSON),y)
LDLIBS += -ljson-c
endif
ifeq ($(CONFIG_ZSTD),y)
LDLIBS += -lzstd
endif
ifeq ($(CONFIG_CRYPTO),y)
LDLIBS += -lcrypto
endif
# CONFIG_RBD links neither librbd nor librados: drivers/rbd-lib.c dlopens them
# on the first rbd open (glibc 2.34+ has dlopen in libc).
ifeq ($(CONFIG_NBD),y)
LDLIBS += -lnbd
endif
LDLIBS += -luuid -lz

LIB_SRCS := $(IO_SRCS) $(DRIVER_SRCS) $(if $(filter y,$(CONFIG_UBLK)),$(UBLK_SRCS))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o)
TOOL_OBJS := $(TOOL_SRCS:%.c=$(BUILD)/%.o)

# Unit tests: tests/unit/test-*.c, each its own binary; other files in
# tests/unit/ are helpers linked into every test.  test-<driver>*.c tests a
# configurable driver and is built only with it (driver:CONFIG_ pairs).
UNIT_TEST_NEEDS := raw:RAW null:NULL vdi:VDI qcow2:QCOW2 blkdebug:BLKDEBUG quorum:QUORUM crypto:CRYPTO rbd:RBD nbd:NBD
UNIT_TEST_ALL := $(sort $(wildcard tests/unit/test-*.c))
UNIT_TEST_SRCS := $(filter-out $(foreach n,$(UNIT_TEST_NEEDS),$(if $(filter y,$(CONFIG_$(lastword $(subst :, ,$(n))))),,tests/unit/test-$(firstword $(subst :, ,$(n)))%)),$(UNIT_TEST_ALL))
UNIT_HELPER_SRCS := $(filter-out $(UNIT_TEST_ALL),$(wildcard tests/unit/*.c))
UNIT_TESTS := $(UNIT_TEST_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
UNIT_HELPER_OBJS := $(UNIT_HELPER_SRCS:%.c=$(BUILD)/%.o)

BENCH_SRCS := $(sort $(wildcard tests/bench/bench-*.c))
BENCHES := $(BENCH_SRCS:tests/bench/%.c=$(BUILD)/tests/%)

# Debian packages the build, the tests and the VM harness need.  `make deps`
# installs whichever are missing (as root, or through sudo).
DEB_PACKAGES := gcc clang make pkg-config liburing-dev libcmocka-dev libjson-c-dev \
    libzstd-dev libssl-dev uuid-dev zlib1g-dev libclang-rt-14-dev libtsan2 libasan8 libubsan1 qemu-utils fio e2fsprogs \
    util-linux mount python3 time qemu-system-x86 busybox-static cpio kmod xz-utils jq \
    dmsetup xfsprogs systemd groff-base man-db libnbd-bin librbd-dev librados-dev libnbd-dev nbdkit gnutls-bin nbd-client \
    ceph-mon ceph-osd ceph-common iproute2
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: deps
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	else echo "deps: all installed"; fi

# The Ceph daemons `make test-ceph` starts (tests/ceph/cluster.sh; part of
# `make test`, so in deps too); the build alone needs only librbd-dev/librados-dev.
CEPH_DEB_PACKAGES := ceph-mon ceph-osd ceph-common
.PHONY: deps-ceph test-ceph
deps-ceph:
	@$(MAKE) --no-print-directory deps DEB_PACKAGES="$(CEPH_DEB_PACKAGES)"

# The rbd protocol against a single-host cluster in a temporary directory
# (one mon, one memstore OSD; ~10 s to start, the whole test ~40 s).
test-ceph: $(BUILD)/ublkd
	@UBLKD=$(abspath $(BUILD)/ublkd) tests/ceph/test_rbd.sh

.PHONY: test-builds all clean install uninstall check-install test check-layering check-unit check-interop check-interop-parity check-vm check-vm-7.3 check-vm-asan check-vm-asan-quick soak check-fuzz fuzz-long asan tsan bench bench-qcow2 bench-vm bench-kublk tests check-hostile check-hostile-quick
all: $(BUILD)/ublkd

# ---- generated config ----
CONFIG_VARS := RAW NULL VDI QCOW2 BLKDEBUG QUORUM UBLK JSON ZSTD CRYPTO RBD NBD
$(BUILD)/config.h: FORCE
	@mkdir -p $(BUILD)
	@{ echo "/* generated by make from CONFIG_* */"; \
	  $(foreach v,$(CONFIG_VARS),$(if $(filter y,$(CONFIG_$(v))),echo "#define CONFIG_$(v) 1";,echo "/* CONFIG_$(v) is not set */";)) \
	  echo "#define BLOCK_DRIVER_LIST(X) \\"; \
	  $(foreach d,$(DRIVERS-y),echo "    X($(d)) \\";) \
	  echo ""; } > $@.tmp.$$$$; \
	cmp -s $@.tmp.$$$$ $@ || mv $@.tmp.$$$$ $@; rm -f $@.tmp.$$$$
FORCE:

$(BUILD)/%.o: %.c $(BUILD)/config.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -include $(BUILD)/config.h -c -o $@ $<

$(BUILD)/libublkd.a: $(LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/ublkd: $(TOOL_OBJS) $(BUILD)/libublkd.a
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $(TOOL_OBJS) $(BUILD)/libublkd.a $(LDLIBS)

# Static pattern rules: their objects are named prerequisites, not make
# intermediates, so a first build keeps them and the next `make tests` has
# nothing to do (an implicit chain would delete them after linking).
$(UNIT_TESTS): $(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(UNIT_HELPER_OBJS) $(BUILD)/libublkd.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -Wl,--wrap=pthread_create -o $@ $(filter %.o,$^) $(BUILD)/libublkd.a $(LDLIBS) -lcmocka

# test-img-parse links the image tool's pure helpers and JSON printer (not in libublkd.a)
$(BUILD)/tests/test-img-parse: $(BUILD)/tools/img-util.o $(BUILD)/tools/img-json.o

$(BENCHES): $(BUILD)/tests/bench-%: $(BUILD)/tests/bench/bench-%.o $(BUILD)/libublkd.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libublkd.a $(LDLIBS)

# The VM suite's helper that rebuilds a dm-log-writes device at any point of
# its log (tests/vm/test_powerloss*.sh): a test tool, not linked to libublkd.
$(BUILD)/log-writes-replay: tests/vm/log-writes-replay.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $<

tests: $(UNIT_TESTS) $(BUILD)/ublkd $(BUILD)/log-writes-replay

# ---- test entry points ----
# check-unit prints cmocka's summary for every suite and a total line.
UNIT_LABEL ?= unit
# UNIT_SKIP: suites a sanitizer run leaves out (names, e.g. test-qcow2-crash);
# UNIT_ONLY: the only suites it runs (empty: all).  Each run writes the names of
# the suites that started a thread to $(BUILD)/threaded-suites
# (tests/unit/thread-probe.c).
UNIT_RUN = $(filter-out $(UNIT_SKIP:%=$(BUILD)/tests/%),$(if $(strip $(UNIT_ONLY)),$(filter $(UNIT_ONLY:%=$(BUILD)/tests/%),$(UNIT_TESTS)),$(UNIT_TESTS)))
check-unit: $(UNIT_TESTS) check-layering
	@UNIT_LABEL=$(UNIT_LABEL) UNIT_THREAD_LIST=$(BUILD)/threaded-suites tests/run-unit.sh $(UNIT_RUN)

# The users of the block layer (ublk/, tools/ and the headers they include)
# see only the public API: block.h, block-backend.h.  The driver API and the
# block layer's internals stay out of them, and io/'s internals out of drivers/.
LAYERING_PRIVATE := block-driver.h block-int.h block-req.h block-io-int.h meta-cache.h
LAYERING_USERS := ublk tools include/block.h include/block-backend.h include/ublk.h
check-layering:
	@bad=$$(grep -rnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"($(subst .,\.,$(subst $(eval) ,|,$(LAYERING_PRIVATE))))"' \
	    $(LAYERING_USERS)); \
	if [ -n "$$bad" ]; then echo "check-layering: ublk/ and tools/ may use only block.h and block-backend.h:"; \
	    echo "$$bad"; exit 1; fi; \
	bad=$$(grep -rnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"(block-int|block-io-int)\.h"' drivers); \
	if [ -n "$$bad" ]; then echo "check-layering: drivers/ use the driver API (block-driver.h), not io/ internals:"; \
	    echo "$$bad"; exit 1; fi; echo "layering: ublk/ and tools/ include no driver API header, drivers/ no io/ internals"

# test_qcow2_crash.sh judges the images the unit crash simulator leaves
# Two tests at a time: most of their time is qemu-img, fsync and kill -9
# points, not CPU (INTEROP_JOBS=1 for one at a time).
INTEROP_JOBS ?= 2
check-interop: $(BUILD)/ublkd $(filter %/test-qcow2-crash,$(UNIT_TESTS))
	@INTEROP_JOBS=$(INTEROP_JOBS) UBLKD=$(abspath $(BUILD)/ublkd) tests/interop/run.sh

# The interop suite with every qemu-img also run as ublkd img: counts the
# invocations whose output and exit code match byte for byte.
check-interop-parity: $(BUILD)/ublkd
	@UBLKD=$(abspath $(BUILD)/ublkd) tests/interop/run.sh --parity

# The VM suite's daemon: $(BUILD)/ublkd, or with SAN=asan (ASan+UBSan) or
# SAN=tsan an instrumented one built in build-$(SAN)-daemon.  tests/vm/suite.sh
# sends sanitizer reports to files and fails the test that caused one.
SAN ?=
SAN_OPT-asan := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SAN_LD-asan  := -fsanitize=address,undefined
SAN_OPT-tsan := -O1 -g -fsanitize=thread -fno-omit-frame-pointer
SAN_LD-tsan  := -fsanitize=thread
VM_UBLKD = $(if $(SAN),build-$(SAN)-daemon/ublkd,$(BUILD)/ublkd)

# (Only in the top make: inside, $(BUILD)/ublkd is the same target.)
ifeq ($(filter build-%-daemon,$(BUILD)),)
build-asan-daemon/ublkd build-tsan-daemon/ublkd: build-%-daemon/ublkd: FORCE
	$(MAKE) BUILD=build-$*-daemon OPT="$(SAN_OPT-$*)" LDFLAGS="$(SAN_LD-$*)" build-$*-daemon/ublkd
endif

# The kill -9 soak runs 5 cycles per format here (the formats side by side: ~155 s
# for the 15 under TCG); `make soak` runs 50.
# VM_TIMEOUT: the guest's limit, generous, since the host lane of make test runs beside it.
# VM_TESTS: the tests to run (names without test_ and .sh; empty: all).
check-vm: $(VM_UBLKD) $(BUILD)/log-writes-replay
	@VM_TIMEOUT=$${VM_TIMEOUT:-2400} UBLKD=$(abspath $(VM_UBLKD)) LOG_WRITES_REPLAY=$(abspath $(BUILD)/log-writes-replay) \
	    KILL9_CYCLES=$${KILL9_CYCLES:-5} tests/vm/run.sh $(VM_TESTS)

# The tests whose behaviour depends on what the kernel's ublk driver has (features, zero
# copy by auto buffer registration - 7.x's default - recovery modes, safe stop, unprivileged
# devices, the list of flags) also run in a Linux 7.3 guest.  The whole suite there takes
# ~15 min under TCG, which the CI budget cannot hold next to 6.12's; run it with
# `VM_KERNEL=7.3 make check-vm`, or `make check-vm-7.3 VM_73_TESTS=` for all of it.
# This guest has 4 CPUs, so qcow2_verify's -q 4 gets 4 queues (the kernel makes at most one
# per possible CPU; the 6.12 guest has 2).
VM_73_TESTS ?= features list lifecycle safe_stop recovery recovery_modes unpriv zerocopy \
	raw_verify del_pid teardown resize upgrade per_io batch qcow2_verify io_scheduler
check-vm-7.3: $(VM_UBLKD) $(BUILD)/log-writes-replay
	@VM_KERNEL=7.3 VM_CPUS=$${VM_CPUS:-4} VM_TIMEOUT=$${VM_TIMEOUT:-2400} UBLKD=$(abspath $(VM_UBLKD)) LOG_WRITES_REPLAY=$(abspath $(BUILD)/log-writes-replay) \
	    KILL9_CYCLES=$${KILL9_CYCLES:-2} tests/vm/run.sh $(VM_73_TESTS)

# make test balances its two guests: the tests that do not depend on the kernel's driver
# and are listed in VM_ON_73 run in the 7.3 guest instead of the 6.12 one (every test
# runs on at least one kernel; VM_73_TESTS on both).
VM_ALL_TESTS := $(sort $(patsubst tests/vm/test_%.sh,%,$(wildcard tests/vm/test_*.sh)))
VM_ON_73 ?= nbd quorum_nbd powerloss_xfs qcow2_fs docs_devices
.PHONY: check-vm-lane check-vm-7.3-lane
check-vm-lane:
	@$(MAKE) --no-print-directory check-vm VM_TESTS="$(filter-out $(VM_ON_73),$(VM_ALL_TESTS))"
check-vm-7.3-lane:
	@$(MAKE) --no-print-directory check-vm-7.3 VM_73_TESTS="$(VM_73_TESTS) $(VM_ON_73)"

# kill -9 soak (tests/vm/test_kill9_soak.sh) with SOAK_CYCLES cycles per
# format against a ThreadSanitizer daemon (SOAK_SAN=asan, or SOAK_SAN= for
# the plain one); a sanitizer report fails it like any test failure.
SOAK_CYCLES ?= 50
SOAK_SAN ?= tsan
SOAK_UBLKD = $(if $(SOAK_SAN),build-$(SOAK_SAN)-daemon/ublkd,$(BUILD)/ublkd)
soak: $(SOAK_UBLKD)
	@UBLKD=$(abspath $(SOAK_UBLKD)) KILL9_CYCLES=$(SOAK_CYCLES) TEST_TIMEOUT=$${TEST_TIMEOUT:-5400} \
	    VM_TIMEOUT=$${VM_TIMEOUT:-6000} tests/vm/run.sh kill9_soak

# Each harness for 5 s in make test (FUZZ_TIME=N for longer; make fuzz-long).
check-fuzz:
	@FUZZ_TIME=$${FUZZ_TIME:-5} tests/fuzz/run.sh

# Every harness for FUZZ_TIME seconds (default 600; FUZZ_ONLY="state ..." to
# pick some) one after another (FUZZ_JOBS=2: two at a time); what each found is merged with its seeds
# into the scratch corpus build-fuzz/fuzz-corpus/NAME, not the repository.
FUZZ_TIME ?= 600
fuzz-long:
	@FUZZ_TIME=$(FUZZ_TIME) FUZZ_JOBS=$${FUZZ_JOBS:-1} FUZZ_MERGE=1 tests/fuzz/run.sh

# Builds first (both cores compile), then the host suites and the VM guests
# side by side (tests/run-lanes.sh; LANES=1 runs them one after the other).
test: test-builds
	@BUILD=$(BUILD) tests/run-lanes.sh

# -j: CI calls plain `make test`; the compilers get every core.
NPROC := $(shell nproc 2>/dev/null || echo 2)
test-builds:
	$(MAKE) -j$(NPROC) all tests
	$(MAKE) -j$(NPROC) $(ASAN_VARS) tests
	$(MAKE) -j$(NPROC) $(TSAN_VARS) tests
	$(MAKE) -j$(NPROC) build-asan-daemon/ublkd

# The VM suite with the ASan+UBSan daemon (a second guest boot).  Under TCG
# it takes about twice the plain daemon's time (the 7.3 set: 1071 s against
# 497 s), more than CI's budget holds beside the plain suites; `make test`
# runs check-vm-asan-quick instead: the data paths (raw, qcow2, quorum, vdi),
# recovery and the unprivileged device on 7.3 (zero copy by auto buffer
# registration, the newest code), as tests the daemon serves real fio through.
check-vm-asan:
	$(MAKE) check-vm SAN=asan
VM_ASAN_TESTS ?= raw_verify qcow2_verify quorum vdi_01 recovery unpriv
check-vm-asan-quick:
	$(MAKE) check-vm-7.3 SAN=asan VM_73_TESTS="$(VM_ASAN_TESTS)"

# The unit suites under a sanitizer, each in its own build tree, each with
# its own total line (unit-asan: / unit-tsan:) in the check-unit format.
ASAN_VARS = BUILD=build-asan OPT="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	    LDFLAGS="-fsanitize=address,undefined"
TSAN_VARS = BUILD=build-tsan OPT="-O1 -g -fsanitize=thread -fno-omit-frame-pointer" LDFLAGS="-fsanitize=thread"
asan:
	$(MAKE) $(ASAN_VARS) UNIT_LABEL=unit-asan check-unit

# ThreadSanitizer: io/coroutine.c announces every coroutine switch through
# TSan's fiber API.  A report makes the suite exit non-zero (exitcode 66),
# so check-unit fails; no suppression file.  Only the suites that start a
# second thread run: TSan can find nothing in the others, and they were most
# of its time (the crash and differential suites alone 180 of 400 s).  The
# plain `make check-unit` writes that list to $(BUILD)/threaded-suites
# (tests/unit/thread-probe.c); without it every suite runs.  ASan and the
# plain run keep every suite.
tsan:
	TSAN_OPTIONS="$(TSAN_OPTIONS) second_deadlock_stack=1" \
	$(MAKE) $(TSAN_VARS) UNIT_LABEL=unit-tsan UNIT_ONLY="$$(sort -u $(BUILD)/threaded-suites 2>/dev/null)" check-unit

# Every img subcommand and add option with hostile values, run against an
# ASan+UBSan ublkd (tests/interop/test_hostile_args.sh; check-interop skips it).
check-hostile: build-asan-daemon/ublkd
	@UBLKD_HOSTILE=1 UBLKD=$(abspath build-asan-daemon/ublkd) tests/interop/run.sh test_hostile_args.sh

# The same templates with a handful of values each, for `make test` (CI).
check-hostile-quick: build-asan-daemon/ublkd
	@UBLKD_HOSTILE=quick UBLKD=$(abspath build-asan-daemon/ublkd) tests/interop/run.sh test_hostile_args.sh

bench: $(BENCHES) $(BUILD)/ublkd
	@UBLKD=$(abspath $(BUILD)/ublkd) BUILD=$(abspath $(BUILD)) tests/bench/run.sh

# qcow2 against qemu-img bench, thread scaling, allocating writes, qcow2 vs raw.
bench-qcow2: $(BUILD)/ublkd
	@UBLKD=$(abspath $(BUILD)/ublkd) tests/bench/bench_qcow2.sh

# ---- soak: long runs, not part of `make test` ----
# Each long run is a soak-* prerequisite of soak.
.PHONY: soak soak-powerloss
soak: soak-powerloss

# Power loss (tests/vm/powerloss.sh): every mark, every flush and the entries
# half-way between flushes replayed and checked, for each host fs and format.
# Each record's three fsyncs put several flushes into the log, and a point
# costs seconds under TCG: POWERLOSS_SOAK_RECORDS sets the length.
POWERLOSS_SOAK_RECORDS ?= 10
soak-powerloss: $(BUILD)/ublkd $(BUILD)/log-writes-replay
	@UBLKD=$(abspath $(BUILD)/ublkd) POWERLOSS_RECORDS=$(POWERLOSS_SOAK_RECORDS) POWERLOSS_POINTS=all \
	    POWERLOSS_FORMATS="$${POWERLOSS_FORMATS:-raw vdi qcow2}" \
	    POWERLOSS_XFS_FORMATS="$${POWERLOSS_XFS_FORMATS:-$${POWERLOSS_FORMATS:-raw vdi qcow2}}" \
	    TEST_TIMEOUT=$${TEST_TIMEOUT:-14400} VM_TIMEOUT=$${VM_TIMEOUT:-30000} \
	    tests/vm/run.sh test_powerloss_ext4 test_powerloss_xfs

bench-vm: $(BUILD)/ublkd
	@UBLKD=$(abspath $(BUILD)/ublkd) tests/vm/bench.sh

# ublkd against the kernel's kublk (built by tests/vm/build-kublk.sh), null_blk and
# loop, in one VM boot (VM_KERNEL=7.3 for the 7.3 guest; see docs/PERFORMANCE.md).
bench-kublk: $(BUILD)/ublkd
	@UBLKD=$(abspath $(BUILD)/ublkd) tests/vm/bench-kublk.sh

# ---- install: the binary, the udev helper and rule, the systemd unit and its worker,
# man pages, bash completion, examples.  Every directory can be overridden.  udev reads
# no rules under /usr/local, so a /usr/local install puts its rule (and the device
# configuration) under /etc; any other PREFIX keeps everything under it.
BINDIR         ?= $(PREFIX)/bin
LIBEXECDIR     ?= $(PREFIX)/lib/ublkd
MANDIR         ?= $(PREFIX)/share/man
DOCDIR         ?= $(PREFIX)/share/doc/ublkd
BASHCOMPDIR    ?= $(PREFIX)/share/bash-completion/completions
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
ifneq ($(filter /usr /usr/local,$(PREFIX)),)
SYSCONFDIR     ?= /etc
UDEVRULESDIR   ?= $(if $(filter /usr,$(PREFIX)),/usr/lib/udev/rules.d,/etc/udev/rules.d)
else
SYSCONFDIR     ?= $(PREFIX)/etc
UDEVRULESDIR   ?= $(PREFIX)/lib/udev/rules.d
endif
SUBST = sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@LIBEXECDIR@|$(LIBEXECDIR)|g' \
            -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g'

install: $(BUILD)/ublkd
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(MANDIR)/man1 \
	    $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(DOCDIR)/examples/devices.d $(DESTDIR)$(BASHCOMPDIR) \
	    $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(UDEVRULESDIR) $(DESTDIR)$(SYSCONFDIR)/ublkd/devices.d
	install -m 0755 $(BUILD)/ublkd $(DESTDIR)$(BINDIR)/ublkd
	$(SUBST) dist/ublk-chown.in > $(DESTDIR)$(LIBEXECDIR)/ublk-chown
	$(SUBST) dist/ublkd-service.in > $(DESTDIR)$(LIBEXECDIR)/ublkd-service
	chmod 0755 $(DESTDIR)$(LIBEXECDIR)/ublk-chown $(DESTDIR)$(LIBEXECDIR)/ublkd-service
	$(SUBST) dist/udev/90-ublk.rules.in > $(DESTDIR)$(UDEVRULESDIR)/90-ublk.rules
	$(SUBST) dist/systemd/ublkd@.service.in > $(DESTDIR)$(SYSTEMDUNITDIR)/ublkd@.service
	install -m 0644 docs/man/ublkd.8 $(DESTDIR)$(MANDIR)/man8/ublkd.8
	install -m 0644 docs/man/ublkd-img.1 $(DESTDIR)$(MANDIR)/man1/ublkd-img.1
	install -m 0644 dist/bash-completion/ublkd $(DESTDIR)$(BASHCOMPDIR)/ublkd
	install -m 0644 examples/README.md examples/*.fio $(DESTDIR)$(DOCDIR)/examples/
	install -m 0644 examples/devices.d/example.conf $(DESTDIR)$(DOCDIR)/examples/devices.d/

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/ublkd $(DESTDIR)$(LIBEXECDIR)/ublk-chown \
	    $(DESTDIR)$(LIBEXECDIR)/ublkd-service $(DESTDIR)$(UDEVRULESDIR)/90-ublk.rules \
	    $(DESTDIR)$(SYSTEMDUNITDIR)/ublkd@.service $(DESTDIR)$(MANDIR)/man8/ublkd.8 \
	    $(DESTDIR)$(MANDIR)/man1/ublkd-img.1 $(DESTDIR)$(BASHCOMPDIR)/ublkd
	rm -rf $(DESTDIR)$(DOCDIR)/examples
	-rmdir $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(DOCDIR) 2>/dev/null

# Installs into a scratch prefix and checks every installed file (tests/install).
check-install: $(BUILD)/ublkd
	@tests/install/test_install.sh

clean:
	rm -rf $(BUILD) build-asan build-tsan build-*

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
