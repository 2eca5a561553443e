# pairstore — build, test, demo, install.
# `make demo` and `make test` work as the first command on a fresh Debian 12 machine:
# missing Debian packages are installed when run as root (or listed with the exact
# apt-get line otherwise) by .ci/deps.
#
# One source, four runtimes: make LUA=lua5.4 (the default) | lua5.3 | lua5.1 | luajit
# (Debian's luajit2, OpenResty's LuaJIT 2.1). Each builds into build/$(LUA)/, so switching
# LUA never loads another runtime's core.so.

LUA        ?= lua5.4
LUA_NAME    = $(notdir $(LUA))
ifeq ($(filter lua5.4 lua5.3 lua5.1 luajit,$(LUA_NAME)),)
$(error LUA=$(LUA): pairstore builds for lua5.4, lua5.3, lua5.1 or luajit)
endif
# The Lua version whose module paths and C API the runtime has, and its pkg-config package.
LUA_VERSION = $(if $(filter luajit,$(LUA_NAME)),5.1,$(patsubst lua%,%,$(LUA_NAME)))
LUA_PC      = $(if $(filter luajit,$(LUA_NAME)),luajit,lua$(LUA_VERSION))
# PG=0: no PostgreSQL (neither libpq's headers nor the engine); QR=0: no QR codes (no
# libqrencode). A small gateway image that uses only files needs neither. Such a build goes
# into a directory of its own (build/<runtime>-nopg-noqr).
PG ?= 1
QR ?= 1
NOPG = $(filter 0,$(PG))
NOQR = $(filter 0,$(QR))
PREFIX     ?= /usr/local
DESTDIR    ?=
LUA_CMOD   ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
LUA_LMOD   ?= $(PREFIX)/share/lua/$(LUA_VERSION)
BINDIR     ?= $(PREFIX)/bin

PKG_CONFIG ?= pkg-config
CC         ?= cc
CFLAGS     ?= -O2 -g
WERROR     ?=
PS_CFLAGS   = -std=c11 -D_GNU_SOURCE -fPIC -fvisibility=hidden \
              -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes -pedantic $(WERROR) \
              $(shell $(PKG_CONFIG) --cflags $(LUA_PC) libsodium $(if $(NOQR),,libqrencode) $(if $(NOPG),,libpq) 2>/dev/null) \
              $(if $(NOPG),-DPS_NO_PG)
PS_LDFLAGS  = -shared
# libpq is loaded when a PostgreSQL target is first opened (csrc/pq.c): its headers only here.
PS_LIBS     = $(shell $(PKG_CONFIG) --libs libsodium $(if $(NOQR),,libqrencode) 2>/dev/null || echo -lsodium $(if $(NOQR),,-lqrencode)) -ldl -lpthread

# What ships (make all, make install, the rockspec): every C file but the test hooks.
TEST_SRCS = csrc/testhooks.c
PG_SRCS   = csrc/engine_pg.c csrc/pg_link.c csrc/pq.c
QR_SRCS   = csrc/qr.c
SRCS  = $(filter-out $(TEST_SRCS) csrc/pg_none.c csrc/qr_none.c $(if $(NOPG),$(PG_SRCS)) $(if $(NOQR),$(QR_SRCS)),\
          $(wildcard csrc/*.c csrc/engine/file/*.c)) $(if $(NOPG),csrc/pg_none.c) $(if $(NOQR),csrc/qr_none.c)
HDRS  = $(wildcard csrc/*.h csrc/engine/file/*.h)
BUILD = build/$(LUA_NAME)$(if $(NOPG),-nopg)$(if $(NOQR),-noqr)
CORE  = $(BUILD)/pairstore/core.so
# The test build (as SQLite's SQLITE_TEST): -DPS_TEST and testhooks.c, so core.test_hooks()
# exists; make test and the heavy runs that use the hooks load it, never what ships.
TBUILD = build/$(LUA_NAME)-test
TCORE  = $(TBUILD)/pairstore/core.so

# Run Lua against the in-tree build (of this runtime: .busted's cpath says the same, the test
# build, for the interpreter busted runs under); spec children run $(PAIRSTORE_TEST_LUA).
export LUA_PATH  := $(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;
export LUA_CPATH := $(CURDIR)/$(BUILD)/?.so;;
export PAIRSTORE_TEST_LUA := $(LUA_NAME)

# The heavy runs (stress, fault, sanitize, ha, bench, fuzz) are for Lua 5.4 only.
only54 = $(if $(filter lua5.4,$(LUA_NAME)),,$(error make $@ runs on lua5.4 only (LUA=$(LUA))))

.PHONY: all deps test check-layering demo install uninstall clean lint test-stress test-fault test-sanitize test-ha test-nginx test-browser test-metrics fuzz bench bench-nginx

all: $(CORE)

$(CORE): $(SRCS) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PS_CFLAGS) $(LDFLAGS) $(PS_LDFLAGS) -o $@.tmp $(SRCS) $(PS_LIBS) && mv -f $@.tmp $@

$(TCORE): $(SRCS) $(TEST_SRCS) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PS_CFLAGS) -DPS_TEST $(LDFLAGS) $(PS_LDFLAGS) -o $@.tmp $(SRCS) $(TEST_SRCS) $(PS_LIBS) && mv -f $@.tmp $@

deps:
	@bash .ci/deps $(LUA_NAME)

# Test-only helper (fork for the specs), beside the test build; never installed.
FORKUTIL = $(TBUILD)/test/forkutil.so

$(FORKUTIL): spec/support/forkutil.c csrc/compat.h Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -std=c11 -D_GNU_SOURCE -fPIC -Wall -Wextra $(WERROR) $(shell $(PKG_CONFIG) --cflags $(LUA_PC)) \
	  $(LDFLAGS) -shared -o $@ $<

# Test-only helper (bare libpq calls for the bench's PostgreSQL floor); never installed.
PGFLOOR = $(BUILD)/test/pgfloor.so

$(PGFLOOR): spec/bench/pgfloor.c csrc/compat.h Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -std=c11 -D_GNU_SOURCE -fPIC -Wall -Wextra $(WERROR) $(shell $(PKG_CONFIG) --cflags $(LUA_PC) libpq) \
	  $(LDFLAGS) -shared -o $@ $< $(shell $(PKG_CONFIG) --libs libpq 2>/dev/null || echo -lpq)

# No two C files use each other, nor any longer cycle: which file defines and which uses each
# ps_ symbol, from nm over one object per source (spec/support/layering.lua).
LAYER_OBJS = $(patsubst %.c,$(BUILD)/layering/%.o,$(SRCS) $(TEST_SRCS))

$(BUILD)/layering/%.o: %.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	@$(CC) -O0 $(PS_CFLAGS) -DPS_TEST -DPS_FAULT_INJECTION -c -o $@ $<

check-layering: $(LAYER_OBJS)
	$(LUA_NAME) spec/support/layering.lua $(BUILD)/layering $(LAYER_OBJS)

# The suite runs against both backends: with-pg.sh starts a private PostgreSQL cluster (unix
# socket in a temp dir) for it and removes it afterwards, also on failure.
# make test SPEC=spec/cli_spec.lua (one spec or several, with LUA=... as ever) runs just those.
SPEC ?= spec
test: export LUA_CPATH := $(CURDIR)/$(TBUILD)/?.so;;
test: deps
	@$(MAKE) --no-print-directory all $(TCORE) $(FORKUTIL) check-layering
	bash spec/support/with-pg.sh busted --lua=$(LUA_NAME) $(SPEC)

demo: deps
	@$(MAKE) --no-print-directory all
	$(LUA_NAME) examples/pairing_flow.lua

lint:
	luacheck --no-color -q lua spec examples bin/pairstore

# The heavy runs (issue 3 and 5): each is a script that prints what it tried and what held.
# .ci/run runs them all with bounded durations.
FAULT_CORE = build-fault/pairstore/core.so

$(FAULT_CORE): $(SRCS) $(TEST_SRCS) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PS_CFLAGS) -DPS_TEST -DPS_FAULT_INJECTION $(LDFLAGS) $(PS_LDFLAGS) -o $@.tmp $(SRCS) $(TEST_SRCS) $(PS_LIBS) && mv -f $@.tmp $@

test-stress: deps all
	$(only54)
	bash spec/stress/run.sh

test-fault: deps all $(TCORE) $(FAULT_CORE)
	$(only54)
	bash spec/fault/run.sh

# Failover on one machine: a primary and a synchronous streaming standby (spec/ha/run.sh).
test-ha: deps all
	$(only54)
	bash spec/ha/run.sh

# The pairing flow inside a real nginx (examples/nginx: 4 workers, as nobody when root) on
# both backends (spec/nginx/run.sh starts the PostgreSQL cluster itself): the flow, parallel
# codes and responses, a killed worker, a lock held by another process, per-request times;
# on PostgreSQL also the database frozen and black-holed, aborted requests and long polls
# (spec/nginx/outage.lua, with 4 and 1 workers), and a failover: a primary and its synchronous
# standby of their own, the primary killed and the standby promoted under HTTP traffic
# (spec/nginx/failover.lua, the checks of make test-ha).
test-nginx:
	@bash .ci/deps $(LUA_NAME) nginx
	@$(MAKE) --no-print-directory LUA=lua5.4 all build/lua5.4-test/test/forkutil.so
	@$(MAKE) --no-print-directory LUA=luajit all
	bash spec/nginx/run.sh

# Metrics (issue 21): the nginx example's /metrics under a real Prometheus server (Debian's
# prometheus: the server and promtool) on both backends: a scripted flow's exact counts
# through Prometheus's query API, 1 000 parallel requests, nginx -s reload, no secrets.
test-metrics:
	@bash .ci/deps $(LUA_NAME) nginx
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  { echo "test-metrics: needs prometheus and promtool: apt-get install prometheus"; exit 1; }
	@$(MAKE) --no-print-directory LUA=lua5.4 all
	@$(MAKE) --no-print-directory LUA=luajit all
	bash spec/metrics/run.sh

# The phone page (examples/nginx/html) in Debian's headless Chromium, driven by playwright-core
# (spec/browser/package-lock.json, npm ci when missing, no browser download), against the
# nginx example as test-nginx starts it, on both backends: the page's crypto against the
# known-answer vectors, then pairing, wrong codes, "already used"; screenshots of each step.
test-browser:
	@bash .ci/deps $(LUA_NAME) nginx browser
	@$(MAKE) --no-print-directory LUA=lua5.4 all
	@$(MAKE) --no-print-directory LUA=luajit all
	bash spec/browser/run.sh

# Under with-pg.sh too (run.sh starts it itself), so valgrind and ASan cover the PostgreSQL backend.
test-sanitize: deps
	$(only54)
	@$(MAKE) --no-print-directory all $(TCORE) $(FORKUTIL)
	bash spec/sanitize/run.sh

fuzz: deps
	$(only54)
	bash csrc/fuzz/run.sh

# The PostgreSQL section starts a private cluster of its own (spec/support/with-pg.sh); so
# does the nginx section (spec/bench/nginx.sh, `make bench-nginx` alone).
bench: deps all $(PGFLOOR)
	$(only54)
	@bash .ci/deps $(LUA_NAME) nginx ab
	@$(MAKE) --no-print-directory LUA=luajit all
	bash spec/bench/run.sh

# The nginx example over HTTP (ab) on a PostgreSQL store: the non-blocking path (the thread
# pool) against the blocking one, 1 and 4 workers; the static page meanwhile and while the
# database is frozen (issue 18). BENCH_QUICK=1 for a short run.
bench-nginx:
	$(only54)
	@bash .ci/deps $(LUA_NAME) nginx ab
	@$(MAKE) --no-print-directory LUA=lua5.4 all
	@$(MAKE) --no-print-directory LUA=luajit all
	bash spec/support/with-pg.sh bash spec/bench/nginx.sh

install: $(CORE)
	install -d $(DESTDIR)$(LUA_CMOD)/pairstore $(DESTDIR)$(LUA_LMOD)/pairstore \
	  $(DESTDIR)$(LUA_LMOD)/pairstore/cli/commands $(DESTDIR)$(BINDIR)
	install -m 0755 $(CORE) $(DESTDIR)$(LUA_CMOD)/pairstore/core.so
	install -m 0644 lua/pairstore/*.lua $(DESTDIR)$(LUA_LMOD)/pairstore/
	install -m 0644 lua/pairstore/cli/*.lua $(DESTDIR)$(LUA_LMOD)/pairstore/cli/
	install -m 0644 lua/pairstore/cli/commands/*.lua $(DESTDIR)$(LUA_LMOD)/pairstore/cli/commands/
	sed '1s|.*|#!/usr/bin/env $(LUA_NAME)|' bin/pairstore > $(DESTDIR)$(BINDIR)/pairstore.tmp
	chmod 0755 $(DESTDIR)$(BINDIR)/pairstore.tmp && mv -f $(DESTDIR)$(BINDIR)/pairstore.tmp $(DESTDIR)$(BINDIR)/pairstore

uninstall:
	rm -rf $(DESTDIR)$(LUA_CMOD)/pairstore $(DESTDIR)$(LUA_LMOD)/pairstore $(DESTDIR)$(BINDIR)/pairstore

clean:
	rm -rf build build-fault build-asan build-fuzz
