# relbooth build. `make` builds build/librelbooth.{a,so} and build/relbooth; `make test` runs every
# test and ends with "N passed, N failed". Dependencies come from Debian (scripts/install-deps.sh).

CC      ?= cc
PREFIX  ?= /usr/local
ARCH    ?= -march=native
OPT     ?= -O2
SAN     ?=
CFLAGS  ?= $(OPT) $(ARCH) -g
WARN    := -Wall -Wextra -Wno-unused-parameter
ifneq ($(CI)$(WERROR),)
WARN    += -Werror
endif
BUILD   ?= build
# pkg-config names; ompi-c is OpenMPI for data-parallel runs (src/core/dist.c, docs/distributed.md)
PKGS    := libpng libjpeg libwebp libzip jansson yaml-0.1 libutf8proc ompi-c

# The packages' flags are read once the packages are there: $(BUILD)/pkgflags.mk is made by installing
# what is missing (scripts/install-deps.sh) and asking pkg-config; make then restarts with it, so a
# plain `make` works on a fresh machine.
.DEFAULT_GOAL := all
PKG_MK  := $(BUILD)/pkgflags.mk
-include $(PKG_MK)
$(PKG_MK): scripts/install-deps.sh Makefile
	@scripts/install-deps.sh --if-missing
	@mkdir -p $(dir $@)
	@printf 'PKG_CFLAGS := %s\nPKG_LIBS := %s\n' "$$(pkg-config --cflags $(PKGS))" "$$(pkg-config --libs $(PKGS))" >$@

ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -fPIC -fopenmp $(WARN) $(CFLAGS) $(SAN) -Iinclude -Isrc -Itools $(PKG_CFLAGS)
LIBS    = $(PKG_LIBS) -ldnnl -fopenmp -lm -lpthread
LDFLAGS ?=

LIB_SRCS   := $(sort $(wildcard src/*/*.c))
TOOL_SRCS  := $(sort $(wildcard tools/*.c bench/*.c))
TEST_SRCS  := $(sort $(wildcard tests/test_*.c))
LIB_OBJS   := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
TOOL_OBJS  := $(TOOL_SRCS:%.c=$(BUILD)/obj/%.o)
TEST_BINS  := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
# helpers that tests start (e.g. under mpirun); no test_ prefix, so tests/run.sh does not run them itself
TEST_HELPERS := $(BUILD)/tests/mpi_worker $(BUILD)/tests/api_example

.PHONY: all deps test test-golden install uninstall clean demo bench fuzz
all: $(BUILD)/librelbooth.a $(BUILD)/librelbooth.so $(BUILD)/relbooth

deps:
	scripts/install-deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/librelbooth.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/librelbooth.so: $(LIB_OBJS)
	$(CC) -shared -Wl,-soname,librelbooth.so.0 -o $@ $^ $(LDFLAGS) $(LIBS)

$(BUILD)/relbooth: $(TOOL_OBJS) $(BUILD)/librelbooth.a
	$(CC) $(SAN) -o $@ $(TOOL_OBJS) $(BUILD)/librelbooth.a $(LDFLAGS) $(LIBS)

$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(BUILD)/librelbooth.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests -o $@ $< $(BUILD)/librelbooth.a $(LDFLAGS) $(LIBS)

# docs/api-example.c built as an embedding program would: the public header only (tests/test_api.c runs it)
$(BUILD)/tests/api_example: docs/api-example.c include/relbooth.h $(BUILD)/librelbooth.a
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(WARN) $(CFLAGS) $(SAN) -Iinclude -o $@ $< $(BUILD)/librelbooth.a $(LDFLAGS) $(LIBS)

test: all $(TEST_BINS) $(TEST_HELPERS)
	@tests/run.sh $(BUILD)

# `make test-golden GOLDEN=DIR`: the conformance tests (every tests/test_*.c that reads the golden
# folder through t_golden_path) against DIR, any folder laid out like ../shared/golden
# (docs/conformance.md). A missing DIR makes those tests skip. `make test` runs them too, against
# RELBOOTH_GOLDEN or ../shared/golden.
GOLDEN       ?= ../shared/golden
GOLDEN_TESTS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(shell grep -l t_golden_path $(TEST_SRCS)))
test-golden: all $(GOLDEN_TESTS) $(TEST_HELPERS)
	@RELBOOTH_GOLDEN=$(abspath $(GOLDEN)) tests/run.sh $(BUILD) $(GOLDEN_TESTS)

bench: all
	$(BUILD)/relbooth bench ops

demo: all
	@scripts/demo.sh $(BUILD)

install: all
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin \
	           $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(BUILD)/librelbooth.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/librelbooth.so $(DESTDIR)$(PREFIX)/lib/librelbooth.so.0
	ln -sf librelbooth.so.0 $(DESTDIR)$(PREFIX)/lib/librelbooth.so
	install -m 644 include/relbooth.h $(DESTDIR)$(PREFIX)/include/
	install -m 755 $(BUILD)/relbooth $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(shell sed -n 's/^#define RELBOOTH_VERSION "\(.*\)"/\1/p' include/relbooth.h)|' \
	    relbooth.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/relbooth.pc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/lib/librelbooth.a $(DESTDIR)$(PREFIX)/lib/librelbooth.so* \
	      $(DESTDIR)$(PREFIX)/include/relbooth.h $(DESTDIR)$(PREFIX)/bin/relbooth \
	      $(DESTDIR)$(PREFIX)/lib/pkgconfig/relbooth.pc

clean:
	rm -rf $(BUILD)

-include $(LIB_OBJS:.o=.d) $(TOOL_OBJS:.o=.d)

# --- Untrusted input (docs/security.md) ---------------------------------------------------------
# `make sanitize`: the whole test suite built in build-san/ with AddressSanitizer + UBSan (leaks
# checked; tests/lsan.supp only silences oneDNN/OpenMP global state).
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
SAN_ENV   := ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
             LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0
.PHONY: sanitize fuzz-build
sanitize:
	$(SAN_ENV) $(MAKE) BUILD=build-san OPT=-O1 SAN="$(SAN_FLAGS)" test

# `make fuzz [FUZZ_SECONDS=60]`: libFuzzer targets fuzz/fuzz_*.c (clang) linked with the library
# compiled by clang with ASan/UBSan in build-fuzz/; each runs FUZZ_SECONDS and a crash fails.
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_BINS    := $(patsubst fuzz/%.c,$(FUZZ_BUILD)/%,$(sort $(wildcard fuzz/fuzz_*.c)))
fuzz-build:
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=clang CI= WERROR= SAN="$(FUZZ_SAN) -fsanitize=fuzzer-no-link" \
	        $(FUZZ_BUILD)/librelbooth.a
	$(MAKE) CC=clang CI= WERROR= $(FUZZ_BINS)
$(FUZZ_BUILD)/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz.h $(FUZZ_BUILD)/librelbooth.a
	clang $(ALL_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $< $(FUZZ_BUILD)/librelbooth.a $(LIBS)
fuzz: fuzz-build
	fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_BINS)
