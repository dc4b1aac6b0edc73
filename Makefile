# vbd: the two commands are `make demo` and `make check`.
BUILD      ?= build
BUILD_ASAN ?= build-asan
MESON_OPTS ?=

.PHONY: all deps build build-asan check check-unit check-integration demo bench clean format

all: build

deps:
	@./scripts/deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD) --buildtype=release -Db_ndebug=false $(MESON_OPTS)

$(BUILD_ASAN)/build.ninja:
	meson setup $(BUILD_ASAN) --buildtype=debug -Doptimization=1 -Db_sanitize=address,undefined -Db_lundef=false $(MESON_OPTS)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

build-asan: deps $(BUILD_ASAN)/build.ninja
	ninja -C $(BUILD_ASAN)

# Every test (unit + interop against qemu-img/qemu-io/qemu-nbd/nbdkit/guest)
# under ASan+UBSan; ends with "N passed, N failed".
check: build-asan
	@./tests/run.sh $(BUILD_ASAN)

demo: build
	@./scripts/demo.sh $(BUILD)

bench: build
	@./bench/run.sh $(BUILD)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
