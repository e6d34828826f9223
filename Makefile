# vmc build.  `make` builds the library and the CLI; `make test` runs the
# tests; `make SAN=1 test` builds into build-san/ with ASan+UBSan; `make demo`
# runs the README's main job.  CC=clang works too.
CC      ?= cc
SAN     ?= 0
OPT     ?= -O3
ifeq ($(SAN),1)
BUILD   ?= build-san
SANFLAGS = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
OPT      = -O1 -g
else
BUILD   ?= build
SANFLAGS =
endif

CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter \
              -fPIC -fopenmp $(OPT) $(SANFLAGS) -Iinclude -Isrc
# gcc's -O3 format-truncation analysis flags bounded snprintf calls that
# truncate by design; clang has no such warning.
ifeq ($(findstring clang,$(shell $(CC) --version 2>/dev/null)),)
CFLAGS_BASE += -Wno-format-truncation
endif
CFLAGS  ?=
ALL_CFLAGS = $(CFLAGS_BASE) $(CFLAGS)
LDLIBS  = -fopenmp -lz -lm $(SANFLAGS)
STB_LIB = -lstb
TOOL_LIBS = -lcjson

# Each ISA's sources get their own flags, so one binary runs on any x86-64.
AVX2_FLAGS   = -mavx2 -mfma -mf16c
AVX512_FLAGS = -mavx2 -mfma -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni
AVXVNNI_FLAGS = -mavx2 -mfma -mavxvnni

LIB_SRC  = $(sort $(wildcard src/*/*.c))
LIB_OBJ  = $(LIB_SRC:%.c=$(BUILD)/%.o)
TOOL_SRC = $(sort $(wildcard tools/vmc/*.c))
TOOL_OBJ = $(TOOL_SRC:%.c=$(BUILD)/%.o)
TEST_SRC = $(sort $(wildcard tests/*.c))
TEST_OBJ = $(TEST_SRC:%.c=$(BUILD)/%.o)
BENCH_SRC = $(sort $(wildcard bench/*.c))
BENCH_BIN = $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all lib tools test check demo bench clean deps fixtures
all: lib tools

lib: $(BUILD)/libvmc.a $(BUILD)/libvmc.so
tools: $(BUILD)/vmc

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(AVX2_FLAGS) -MMD -MP -c $< -o $@
$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(AVX512_FLAGS) -MMD -MP -c $< -o $@
$(BUILD)/%_avxvnni.o: %_avxvnni.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(AVXVNNI_FLAGS) -MMD -MP -c $< -o $@
$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libvmc.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^
$(BUILD)/libvmc.so: $(LIB_OBJ)
	$(CC) -shared -o $@ $^ $(LDLIBS) $(STB_LIB)
$(BUILD)/vmc: $(TOOL_OBJ) $(BUILD)/libvmc.a
	$(CC) -o $@ $(TOOL_OBJ) $(BUILD)/libvmc.a $(LDLIBS) $(STB_LIB) $(TOOL_LIBS)
$(BUILD)/vmc_tests: $(TEST_OBJ) $(BUILD)/libvmc.a
	$(CC) -o $@ $(TEST_OBJ) $(BUILD)/libvmc.a $(LDLIBS) $(STB_LIB)
$(BUILD)/bench/%: bench/%.c $(BUILD)/libvmc.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -o $@ $< $(BUILD)/libvmc.a $(LDLIBS) $(STB_LIB) -ldl

# The README's test command: installs what it needs, builds, runs every test.
test: deps
	$(MAKE) $(BUILD)/vmc_tests $(BUILD)/vmc
	VMC_BIN=$(BUILD)/vmc $(BUILD)/vmc_tests
check: test

deps:
	@scripts/deps.sh

demo: deps
	$(MAKE) all
	scripts/demo.sh $(BUILD)/vmc

bench: all $(BENCH_BIN)

fixtures:
	/usr/bin/python3 tests/fixtures/make_fixtures.py tests/fixtures

clean:
	rm -rf build build-san

-include $(LIB_OBJ:.o=.d) $(TOOL_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(BENCH_BIN:=.d)
