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
PKGS    := libpng libjpeg libwebp libzip jansson yaml-0.1 libutf8proc
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -fPIC -fopenmp $(WARN) $(CFLAGS) $(SAN) -Iinclude -Isrc -Itools \
              $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LIBS    := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -ldnnl -fopenmp -lm -lpthread
LDFLAGS ?=

LIB_SRCS   := $(sort $(wildcard src/*/*.c))
TOOL_SRCS  := $(sort $(wildcard tools/*.c bench/*.c))
TEST_SRCS  := $(sort $(wildcard tests/test_*.c))
LIB_OBJS   := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
TOOL_OBJS  := $(TOOL_SRCS:%.c=$(BUILD)/obj/%.o)
TEST_BINS  := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
DEPS_STAMP := $(BUILD)/.deps-ok

.PHONY: all deps test install uninstall clean demo bench fuzz
all: $(BUILD)/librelbooth.a $(BUILD)/librelbooth.so $(BUILD)/relbooth

# Installs the Debian packages once when a header or pkg-config file is missing.
$(DEPS_STAMP): scripts/install-deps.sh
	@scripts/install-deps.sh --if-missing
	@mkdir -p $(BUILD) && touch $@
deps:
	scripts/install-deps.sh

$(BUILD)/obj/%.o: %.c | $(DEPS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/librelbooth.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/librelbooth.so: $(LIB_OBJS)
	$(CC) -shared -Wl,-soname,librelbooth.so.0 -o $@ $^ $(LDFLAGS) $(LIBS)

$(BUILD)/relbooth: $(TOOL_OBJS) $(BUILD)/librelbooth.a
	$(CC) $(SAN) -o $@ $(TOOL_OBJS) $(BUILD)/librelbooth.a $(LDFLAGS) $(LIBS)

$(BUILD)/tests/%: tests/%.c tests/harness.h $(BUILD)/librelbooth.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests -o $@ $< $(BUILD)/librelbooth.a $(LDFLAGS) $(LIBS)

test: all $(TEST_BINS)
	@tests/run.sh $(BUILD)

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
