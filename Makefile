# vbd: the two commands are `make demo` and `make check`.
BUILD      ?= build
BUILD_ASAN ?= build-asan
BUILD_TSAN ?= build-tsan
MESON_OPTS ?=

.PHONY: all deps build build-asan build-tsan check check-unit check-integration demo bench clean format fuzz soak guest-crash

all: build

deps:
	@./scripts/deps.sh

# The release build (make build, make demo, the benchmarks) links the tools
# with link-time optimisation (meson option lto_tools: their requests cross
# small functions in many files, which only LTO inlines into each other);
# LTO=false: without. The tests, the sanitizer and the fuzz builds link
# without (an LTO link redoes the optimisation: quick builds, plain reports).
LTO ?= true
$(BUILD)/build.ninja:
	meson setup $(BUILD) --buildtype=release -Db_ndebug=false -Dlto_tools=$(LTO) $(MESON_OPTS)

$(BUILD_ASAN)/build.ninja:
	meson setup $(BUILD_ASAN) --buildtype=debug -Doptimization=1 -Db_sanitize=address,undefined -Db_lundef=false $(MESON_OPTS)

# ThreadSanitizer build of the programs that run threads: vbd-daemon
# (iothreads, the thread pool; tests/integration/tsan-iothreads.sh and
# tsan-qmp-paths.sh), vbd-img (convert -m N's loop threads) and vbd-nbd
# (--aio=threads: the pool) (tsan-tools.sh), and vbd-bench, their client
# (make check builds it). The library is built once for all four.
$(BUILD_TSAN)/build.ninja:
	meson setup $(BUILD_TSAN) --buildtype=debugoptimized -Db_sanitize=thread $(MESON_OPTS)

build-tsan: deps $(BUILD_TSAN)/build.ninja
	ninja -C $(BUILD_TSAN) src/tools/vbd-daemon src/tools/vbd-img src/tools/vbd-nbd src/tools/vbd-bench

# a release build dir set up with the other setting, or before the option
# existed, is switched once (a reconfigure rewrites the build files every
# time it runs, so only when the setting differs)
build: deps $(BUILD)/build.ninja
	@[ "$$(meson configure $(BUILD) | awk '$$1 == "lto_tools" {print $$2}')" = "$(LTO)" ] || \
	    meson setup --reconfigure $(BUILD) -Dlto_tools=$(LTO) >/dev/null
	ninja -C $(BUILD)

build-asan: deps $(BUILD_ASAN)/build.ninja
	ninja -C $(BUILD_ASAN)

# Every test (unit + interop against qemu-img/qemu-io/qemu-nbd/nbdkit/guest)
# under ASan+UBSan; ends with "N passed, N failed".
check: build-asan build-tsan
	@./tests/run.sh $(BUILD_ASAN)

demo: build
	@./scripts/demo.sh $(BUILD)

bench: build
	@./bench/run.sh $(BUILD)

# libFuzzer runs of every fuzz target (clang), FUZZ_SECONDS each; make check
# only runs their deterministic smoke mode.
FUZZ_SECONDS ?= 60
build-fuzz/build.ninja:
	CC=clang meson setup build-fuzz --buildtype=debug -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false $(MESON_OPTS)

fuzz: deps build-fuzz/build.ninja
	ninja -C build-fuzz
	@./scripts/fuzz-seeds.sh build-fuzz/corpus
	@for t in build-fuzz/tests/fuzz/fuzz-*; do [ -f "$$t" ] && [ -x "$$t" ] || continue; mkdir -p build-fuzz/corpus/$${t##*/}; \
	    echo "== $$t"; "$$t" -max_total_time=$(FUZZ_SECONDS) build-fuzz/corpus/$${t##*/} >build-fuzz/$${t##*/}.log 2>&1 \
	    || { tail -30 build-fuzz/$${t##*/}.log; exit 1; }; tail -1 build-fuzz/$${t##*/}.log; done

# The qcow2 stress test (tests/stress) with random seeds for SOAK_SECONDS,
# cycling over every image kind and NBD / vhost-user / in-process; prints the
# seed of any failure and the number of operations. Release build (asserts
# on) for more operations per second; SOAK_BUILD=build-asan for sanitizers.
# Then (SOAK_JOBS=1, the default) the block jobs under --overlap writers,
# too long for make check: the mirror soak (7.5 min) and active commit,
# stream, fleecing and backup, each on the main loop and on an iothread;
# internal snapshots taken and deleted under --overlap writers.
SOAK_SECONDS ?= 600
SOAK_BUILD ?= $(BUILD)
SOAK_JOBS ?= 1
soak: build
	@SOAK_SECONDS=$(SOAK_SECONDS) ./tests/stress/soak.sh $(SOAK_BUILD)
	@if [ "$(SOAK_JOBS)" = 1 ]; then \
	    ./tests/stress/job-mirror-overlap-soak.sh $(SOAK_BUILD) && ./tests/stress/job-overlap-soak.sh $(SOAK_BUILD) && \
	    ./tests/stress/snapshot-internal-overlap-soak.sh $(SOAK_BUILD); fi

# tests/integration/guest-crash.sh (power cut under a guest writing files
# with fsync) even where the guest runs under TCG (minutes a round; make
# check skips it there). GUEST_CRASH_ROUNDS rounds (default 2).
guest-crash: build-asan
	@VBD_GUEST_CRASH=1 ASAN_OPTIONS=$${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} VBD_BUILD=$(abspath $(BUILD_ASAN)) VBD_ROOT=$(CURDIR) bash tests/integration/guest-crash.sh

# The differential QMP sweep against qemu-storage-daemon at length
# (tests/qmp/qmpsweep.py; make check runs 2 sequences of seed 28):
# SWEEP_COUNT sequences of SWEEP_STEPS commands of seed SWEEP_SEED, under
# ASan+UBSan; each difference's qmpdiff reproducer in tests/out/qmp-sweep.
# what the sweeps below run under: the ASan+UBSan build, leaks reported
SWEEP_ENV = VBD_BUILD=$(abspath $(BUILD_ASAN)) ASAN_OPTIONS=$${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
SWEEP_SEED ?= 1
SWEEP_COUNT ?= 1000
SWEEP_STEPS ?= 40
.PHONY: qmp-sweep
qmp-sweep: build-asan
	@mkdir -p tests/out
	@$(SWEEP_ENV) \
	    python3 tests/qmp/qmpsweep.py --seed $(SWEEP_SEED) --count $(SWEEP_COUNT) --steps $(SWEEP_STEPS) \
	    --keep $(CURDIR)/tests/out/qmp-sweep

# The differential sweep of the image tools against qemu-img/qemu-io 7.2
# at length (tests/integration/imgsweep.py; make check runs 25 command
# lines of seed 29): IMGSWEEP_COUNT command lines of seed IMGSWEEP_SEED,
# under ASan+UBSan; each difference's two directories (qemu's q/, vbd's v/,
# the command line) in tests/out/img-sweep.
IMGSWEEP_SEED ?= 1
IMGSWEEP_COUNT ?= 2000
.PHONY: img-sweep
img-sweep: build-asan
	@mkdir -p tests/out
	@$(SWEEP_ENV) \
	    python3 tests/integration/imgsweep.py --seed $(IMGSWEEP_SEED) --count $(IMGSWEEP_COUNT) \
	    --keep $(CURDIR)/tests/out/img-sweep

# The differential NBD server sweep against qemu-nbd 7.2 at length
# (tests/integration/nbdsweep.py; make check runs its fixed table and 8
# sequences of seed 30): NBDSWEEP_COUNT sequences of NBDSWEEP_STEPS requests
# of seed NBDSWEEP_SEED, vbd-nbd under ASan+UBSan; each difference's two
# directories (qemu-nbd's q/, vbd-nbd's v/: images, stderr) in
# tests/out/nbd-sweep. Needs python3-libnbd (scripts/deps.sh).
NBDSWEEP_SEED ?= 1
NBDSWEEP_COUNT ?= 500
NBDSWEEP_STEPS ?= 40
.PHONY: nbd-sweep
nbd-sweep: build-asan
	@mkdir -p tests/out
	@$(SWEEP_ENV) \
	    /usr/bin/python3 tests/integration/nbdsweep.py --table --seed $(NBDSWEEP_SEED) --count $(NBDSWEEP_COUNT) \
	    --steps $(NBDSWEEP_STEPS) --keep $(CURDIR)/tests/out/nbd-sweep

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

# make install PREFIX=$$HOME/.local (default /usr/local): the tools into PREFIX/bin.
PREFIX ?= /usr/local
.PHONY: install
install: build
	meson configure $(BUILD) -Dprefix=$(abspath $(PREFIX))
	meson install -C $(BUILD)

# every build directory and the test logs
clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_TSAN) build-fuzz tests/out
