# ngx_http_kv_module: build, test and run against Debian's nginx.
#
#   make          build build/ngx_http_kv_module.so
#   make run      install what is missing, build, run nginx in the foreground
#   make test     install what is missing, build, run unit tests, fuzzers
#                 for seconds, t/ (also against the module under ASan and
#                 UBSan, and one suite under valgrind)
#   make deb      build the Debian packages into build/deb (debian/)
#   make deb-test build, lint, install, serve and purge them (in make test)
#   make bench    build, run the benchmarks of bench/ (bench/README.md)
#   make bench-peers  install the peers, build, compare (bench/peers.sh)
#
# Everything built lands in build/.

SHELL     := /bin/bash
comma     := ,
REPO      := $(abspath .)
BUILD     := $(REPO)/build
NGX_SRC   ?= /usr/share/nginx/src
NGINX     ?= /usr/sbin/nginx
MODULE    := $(BUILD)/ngx_http_kv_module.so
PORT      ?= 8080
DATA_DIR  ?= $(REPO)/data

# Debian packages: to build, to run, to test.
BUILD_PKGS := build-essential nginx-dev libprotobuf-c-dev protobuf-c-compiler \
              libcjson-dev libxxhash-dev
RUN_PKGS   := nginx
TEST_PKGS  := libcmocka-dev libtest-base-perl libwww-perl libipc-run-perl \
              libtext-diff-perl libhttp-message-perl curl
# and to fuzz (make fuzz, fuzz-check in make test), to run under valgrind
FUZZ_PKGS  := clang libclang-rt-14-dev
VALGRIND_PKGS := valgrind
# and to build the Debian packages (make deb), to check them (make deb-test)
DEB_PKGS      := debhelper dpkg-dev
DEB_TEST_PKGS := lintian

KV_SRCS    := $(wildcard kvstore/*.c)
KV_HDRS    := $(wildcard kvstore/*.h)
MOD_SRCS   := config $(wildcard ngx_http_kv_*.c ngx_http_kv_*.h kv_http_*.c \
                kv_http_*.h) proto/kv.proto

UNIT_CC     ?= cc
UNIT_CFLAGS := -std=c11 -g -O1 -Wall -Wextra -Werror -fno-omit-frame-pointer \
               -fsanitize=address,undefined -fno-sanitize-recover=all \
               -Ikvstore -I$(BUILD)/unit/proto
UNIT_LIBS   := -lcmocka -lprotobuf-c -lxxhash
UNIT_TESTS  := $(patsubst kvstore/tests/%.c,$(BUILD)/unit/%, \
                 $(filter-out kvstore/tests/test_util.c, \
                   $(wildcard kvstore/tests/test_*.c)))

KVTOOL        := $(BUILD)/kvtool
KVTOOL_SRCS   := $(wildcard kvtool/*.c)
KVTOOL_PROTO  := $(BUILD)/proto/kv.pb-c.c $(BUILD)/proto/seed.pb-c.c
KVTOOL_CFLAGS := -std=c11 -O2 -Wall -Wextra -Werror -Ikvstore \
                 -I$(BUILD)/proto

.PHONY: all build deps deps-build deps-run deps-test unit t test soak run clean

all: build

build: $(MODULE) $(KVTOOL)

# nginx's configure writes its Makefile into build/; the module is then
# compiled with the exact flags Debian's nginx was built with (--with-compat).
# $(1): the build directory, $(2): more configure arguments.
define ngx_configure
	mkdir -p $(1)
	cd $(NGX_SRC) && . ./conf_flags && \
	    ./configure "$${NGX_CONF_FLAGS[@]}" $(2) --add-dynamic-module=$(REPO) \
	    --builddir=$(1) > $(1)/configure.log 2>&1 || \
	    { tail -20 $(1)/configure.log; exit 1; }
endef

$(BUILD)/Makefile: config proto/kv.proto
	$(call ngx_configure,$(BUILD))

$(MODULE): $(BUILD)/Makefile $(MOD_SRCS) $(KV_SRCS) $(KV_HDRS)
	$(MAKE) -f $(BUILD)/Makefile -C $(NGX_SRC) modules

# apt-get runs only when a package is missing.
define apt_install
	@missing=""; for p in $(1); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | \
	        grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

deps-build:
	$(call apt_install,$(BUILD_PKGS))

deps-run:
	$(call apt_install,$(RUN_PKGS))

deps-test:
	$(call apt_install,$(TEST_PKGS))

deps-fuzz:
	$(call apt_install,$(FUZZ_PKGS))

deps-valgrind:
	$(call apt_install,$(VALGRIND_PKGS))

deps-deb:
	$(call apt_install,$(DEB_PKGS))

deps-deb-test:
	$(call apt_install,$(DEB_TEST_PKGS))

deps: deps-build deps-run deps-test deps-fuzz deps-valgrind deps-deb \
      deps-deb-test

# kvstore unit tests, under AddressSanitizer and UndefinedBehaviorSanitizer.
$(BUILD)/unit/proto/kv.pb-c.c: proto/kv.proto
	mkdir -p $(BUILD)/unit/proto
	protoc-c --c_out=$(BUILD)/unit/proto --proto_path=proto proto/kv.proto

$(BUILD)/unit/%: kvstore/tests/%.c kvstore/tests/test_util.c $(KV_SRCS) \
                 $(KV_HDRS) kvstore/tests/test_util.h \
                 $(BUILD)/unit/proto/kv.pb-c.c
	$(UNIT_CC) $(UNIT_CFLAGS) -o $@ $< kvstore/tests/test_util.c \
	    $(KV_SRCS) $(BUILD)/unit/proto/kv.pb-c.c $(UNIT_LIBS)

# kvtool, the operations CLI: the engine linked over an arena host.
$(BUILD)/proto/%.pb-c.c: proto/%.proto
	mkdir -p $(BUILD)/proto
	protoc-c --c_out=$(BUILD)/proto --proto_path=proto $<

$(KVTOOL): $(KVTOOL_SRCS) $(wildcard kvtool/*.h) $(KV_SRCS) $(KV_HDRS) \
           $(KVTOOL_PROTO)
	$(CC) $(KVTOOL_CFLAGS) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ \
	    $(KVTOOL_SRCS) $(KV_SRCS) $(KVTOOL_PROTO) -lprotobuf-c -lcjson -lxxhash

unit: $(UNIT_TESTS)
	@set -e; for t in $(UNIT_TESTS); do \
	    echo "== $$(basename $$t)"; \
	    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 $$t; \
	done

# libFuzzer harnesses, fuzz/<target>.c, built with clang under ASan and
# UBSan; fuzz/corpus/<target>/ holds each one's seeds and the inputs of
# every crash found (regressions).  New inputs go to build/fuzz/, never
# into the repository.
#   make fuzz-check            every harness for FUZZ_CHECK_TIME seconds
#                              (in make test)
#   make fuzz [FUZZ_TIME=s]    the long run: each harness for FUZZ_TIME
#                              seconds (default 600); make -j2 fuzz runs
#                              two at a time
FUZZ_CC         ?= clang
FUZZ_CFLAGS     := -std=c11 -g -O1 -Wall -Wextra -Werror \
                   -fno-omit-frame-pointer \
                   -fsanitize=fuzzer,address,undefined \
                   -fno-sanitize-recover=all -I. -Ikvstore \
                   -I$(BUILD)/unit/proto
FUZZ_ENGINE     := frame hint table
FUZZ_HTTP       := key json ttl etag cursor
FUZZ_TARGETS    := $(FUZZ_ENGINE) $(FUZZ_HTTP)
FUZZ_BINS       := $(patsubst %,$(BUILD)/fuzz/%,$(FUZZ_TARGETS))
FUZZ_CHECK_TIME ?= 5
FUZZ_TIME       ?= 600

.PHONY: deps-fuzz fuzz fuzz-check fuzz-build \
        $(patsubst %,fuzz-run-%,$(FUZZ_TARGETS))

$(patsubst %,$(BUILD)/fuzz/%,$(FUZZ_ENGINE)): $(BUILD)/fuzz/%: fuzz/%.c \
        $(KV_SRCS) $(KV_HDRS) $(BUILD)/unit/proto/kv.pb-c.c
	@mkdir -p $(BUILD)/fuzz
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(KV_SRCS) \
	    $(BUILD)/unit/proto/kv.pb-c.c -lprotobuf-c -lxxhash

$(patsubst %,$(BUILD)/fuzz/%,$(FUZZ_HTTP)): $(BUILD)/fuzz/%: fuzz/%.c \
        kv_http_parse.c kv_http_parse.h kvstore/kvstore.h
	@mkdir -p $(BUILD)/fuzz
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< kv_http_parse.c -lcjson

fuzz-build: $(FUZZ_BINS)

# One harness for FUZZ_SECS seconds: it reads the seeds, writes what it
# finds to build/fuzz/<target>.corpus and a crash to build/fuzz/<target>-*;
# the summary line gives the executions.
FUZZ_SECS ?= $(FUZZ_CHECK_TIME)

$(patsubst %,fuzz-run-%,$(FUZZ_TARGETS)): fuzz-run-%: $(BUILD)/fuzz/%
	@mkdir -p $(BUILD)/fuzz/$*.corpus
	@TMPDIR=/dev/shm $(BUILD)/fuzz/$* -max_total_time=$(FUZZ_SECS) \
	    -print_final_stats=1 -artifact_prefix=$(BUILD)/fuzz/$*- \
	    $(BUILD)/fuzz/$*.corpus fuzz/corpus/$* > $(BUILD)/fuzz/$*.log 2>&1 \
	    || { tail -60 $(BUILD)/fuzz/$*.log; \
	         echo "fuzz/$*: CRASH, input in $(BUILD)/fuzz/$*-*"; exit 1; }
	@awk '/^stat::number_of_executed_units/ { n = $$2 } \
	      /^Done/ { s = $$5 } \
	      END { printf "fuzz/%s: %s executions in %s s, no crash\n", \
	            "$*", n, s }' $(BUILD)/fuzz/$*.log

fuzz-check: deps-fuzz $(FUZZ_BINS)
	@$(MAKE) --no-print-directory FUZZ_SECS=$(FUZZ_CHECK_TIME) \
	    $(patsubst %,fuzz-run-%,$(FUZZ_TARGETS))

fuzz: deps-build deps-fuzz $(FUZZ_BINS)
	@$(MAKE) --no-print-directory FUZZ_SECS=$(FUZZ_TIME) \
	    $(patsubst %,fuzz-run-%,$(FUZZ_TARGETS))

# One suite (VT, t/api.t by default) with nginx under valgrind's memcheck
# (Test::Nginx's TEST_NGINX_USE_VALGRIND: one process, in the foreground);
# any error valgrind reports, which the runner copies to stderr, fails it.
VT ?= t/api.t

.PHONY: deps-valgrind t-valgrind

t-valgrind: deps-test deps-valgrind build
	@inc=""; perl -MTest::Nginx::Socket -e1 2>/dev/null || inc="-I t/compat"; \
	root=$$(mktemp -d /tmp/kv-valgrind.XXXXXX); \
	TEST_NGINX_USE_VALGRIND="--tool=memcheck --num-callers=30" \
	TEST_NGINX_BINARY=$(NGINX) \
	TEST_NGINX_LOAD_MODULES=$(MODULE) \
	TEST_NGINX_SERVROOT=$$root/servroot \
	TEST_NGINX_RANDOMIZE=1 \
	KV_TEST_TMP=$$root \
	    prove $$inc -I t/lib $(VT) 2> >(tee $$root/stderr >&2); rc=$$?; \
	if grep -qE '^==[0-9]+== ' $$root/stderr; then \
	    echo "t-valgrind: FAILED, valgrind reported errors (above)"; rc=1; \
	else \
	    echo "t-valgrind: no valgrind error"; \
	fi; \
	rm -rf $$root; exit $$rc

# promtool, Prometheus' own parser and linter of the metrics format, for
# t/metrics.t: taken out of Debian's prometheus package, which is not
# installed (its service is not wanted on a test machine).
PROMTOOL := $(BUILD)/prometheus/usr/bin/promtool

$(PROMTOOL):
	mkdir -p $(BUILD)/prometheus
	cd $(BUILD) && apt-get download -q prometheus
	dpkg-deb -x $(BUILD)/prometheus_*.deb $(BUILD)/prometheus
	rm -f $(BUILD)/prometheus_*.deb

# t/faults.t's LD_PRELOAD shim: file system calls that fail on request
FAULT_SHIM := $(BUILD)/kvfault.so

$(FAULT_SHIM): t/lib/kvfault.c
	mkdir -p $(BUILD)
	$(CC) -shared -fPIC -O1 -Wall -Wextra -Werror -o $@ $< -ldl

# t/ suites: openresty's Test::Nginx when installed, else the compatible
# runner in t/compat.  Each suite gets its own server root and free port.
# make t T=t/compact.t runs one suite
T ?= t/

t: build $(KVTOOL) $(PROMTOOL) $(FAULT_SHIM)
	@inc=""; perl -MTest::Nginx::Socket -e1 2>/dev/null || inc="-I t/compat"; \
	root=$$(mktemp -d /tmp/kv-t.XXXXXX); \
	KV_PROMTOOL=$(PROMTOOL) \
	KV_FAULT_SHIM=$(FAULT_SHIM) \
	TEST_NGINX_BINARY=$(NGINX) \
	TEST_NGINX_LOAD_MODULES=$(MODULE) \
	TEST_NGINX_SERVROOT=$$root/servroot \
	TEST_NGINX_RANDOMIZE=1 \
	KV_TEST_TMP=$$root \
	    prove $$inc -I t/lib -r $(T); rc=$$?; \
	rm -rf $$root; exit $$rc

test: deps build unit fuzz-check k8s-check deb-test t t-asan t-valgrind

# The module under AddressSanitizer and UndefinedBehaviorSanitizer, in
# Debian's nginx: gcc's runtimes are preloaded into /usr/sbin/nginx by the
# wrapper build/asan/nginx (and into nothing else the suites run).  Any
# report fails make t-asan; the sanitizers stop the process at the first
# one.  Reports go to the run's reports/ (log_path), except UBSan's in
# nginx workers, which start UBSan only at their first report, after
# nginx cleared their environment: those go to stderr, that is the error
# log, which is searched.  libubsan comes before libasan: in the other
# order UBSan reports through libasan's copy of its handlers, which never
# reads log_path.  Leak checking is off: nginx frees its pools only in
# part at exit.
# make t-asan T=t/api.t runs one suite.
ASAN_BUILD  := $(BUILD)/asan
ASAN_MODULE := $(ASAN_BUILD)/ngx_http_kv_module.so
ASAN_NGINX  := $(ASAN_BUILD)/nginx
ASAN_CFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all \
               -fno-omit-frame-pointer
ASAN_REPORT := ERROR: AddressSanitizer|runtime error:
# freed memory ASan holds back to catch a use after free: t/slow-clients.t
# allows for it when it measures the worker's memory
ASAN_QUARANTINE_MB := 64

.PHONY: t-asan

$(ASAN_BUILD)/Makefile: config proto/kv.proto
	$(call ngx_configure,$(ASAN_BUILD),--with-cc-opt="$(ASAN_CFLAGS)" \
	    --with-ld-opt="-fsanitize=address$(comma)undefined")

$(ASAN_MODULE): $(ASAN_BUILD)/Makefile $(MOD_SRCS) $(KV_SRCS) $(KV_HDRS)
	$(MAKE) -f $(ASAN_BUILD)/Makefile -C $(NGX_SRC) modules

$(ASAN_NGINX): Makefile
	mkdir -p $(ASAN_BUILD)
	printf '#!/bin/sh\n%s\nLD_PRELOAD="%s %s $$LD_PRELOAD" exec %s "$$@"\n' \
	    'ASAN_OPTIONS="verify_asan_link_order=0:$$ASAN_OPTIONS"; export ASAN_OPTIONS' \
	    "$$(realpath $$($(CC) -print-file-name=libubsan.so))" \
	    "$$(realpath $$($(CC) -print-file-name=libasan.so))" \
	    $(NGINX) > $@
	chmod +x $@

t-asan: deps-build deps-run deps-test $(ASAN_MODULE) $(ASAN_NGINX) \
        $(KVTOOL) $(PROMTOOL) $(FAULT_SHIM)
	@inc=""; perl -MTest::Nginx::Socket -e1 2>/dev/null || inc="-I t/compat"; \
	root=$$(mktemp -d /tmp/kv-asan.XXXXXX); mkdir $$root/reports; \
	ASAN_OPTIONS=log_path=$$root/reports/asan:detect_leaks=0:quarantine_size_mb=$(ASAN_QUARANTINE_MB) \
	KV_ASAN_QUARANTINE_MB=$(ASAN_QUARANTINE_MB) \
	UBSAN_OPTIONS=log_path=$$root/reports/ubsan:print_stacktrace=1 \
	KV_PROMTOOL=$(PROMTOOL) \
	KV_FAULT_SHIM=$(FAULT_SHIM) \
	TEST_NGINX_BINARY=$(ASAN_NGINX) \
	TEST_NGINX_LOAD_MODULES=$(ASAN_MODULE) \
	TEST_NGINX_SERVROOT=$$root/servroot \
	TEST_NGINX_RANDOMIZE=1 \
	KV_TEST_TMP=$$root \
	    prove $$inc -I t/lib -r $(T); rc=$$?; \
	reports="$$(ls -d $$root/reports/* 2>/dev/null) \
	         $$(grep -rlE '$(ASAN_REPORT)' --include='*.log' $$root)"; \
	if [ -n "$${reports// }" ]; then \
	    for f in $$reports; do \
	        echo "== $$f"; grep -A20 -E '$(ASAN_REPORT)' $$f | head -40; \
	    done; \
	    echo "t-asan: FAILED, sanitizer reports above"; rc=1; \
	else \
	    echo "t-asan: no sanitizer report"; \
	fi; \
	rm -rf $$root; exit $$rc

# deploy/k8s, offline: rendered with kustomize (kubectl kustomize) and
# checked against the Kubernetes API schemas (npm kubernetes-models, pinned
# in deploy/validate/package-lock.json).  Node.js and kubectl come from
# Debian when the machine has none.
K8S_VALIDATE := deploy/validate

.PHONY: deps-k8s k8s-check

deps-k8s:
ifeq ($(and $(shell command -v node),$(shell command -v npm)),)
	$(call apt_install,nodejs npm)
endif
ifeq ($(shell command -v kubectl),)
	$(call apt_install,kubernetes-client)
endif

$(K8S_VALIDATE)/node_modules/.package-lock.json: \
        $(K8S_VALIDATE)/package.json $(K8S_VALIDATE)/package-lock.json
	cd $(K8S_VALIDATE) && npm ci --no-audit --no-fund

k8s-check: deps-k8s $(K8S_VALIDATE)/node_modules/.package-lock.json
	@mkdir -p $(BUILD)
	kubectl kustomize deploy/k8s > $(BUILD)/k8s.yaml
	node $(K8S_VALIDATE)/validate.mjs --self-test $(BUILD)/k8s.yaml
	node $(K8S_VALIDATE)/validate.mjs $(BUILD)/k8s.yaml

# The crash-torture test of t/, long: 500 kill -9 cycles, about 16 minutes.
soak: build
	@root=$$(mktemp -d /tmp/kv-soak.XXXXXX); \
	TEST_NGINX_BINARY=$(NGINX) \
	TEST_NGINX_LOAD_MODULES=$(MODULE) \
	KV_TEST_TMP=$$root \
	KV_TORTURE_CYCLES=$${KV_TORTURE_CYCLES:-500} \
	    prove -I t/lib t/crash-torture.t; rc=$$?; \
	rm -rf $$root; exit $$rc

run: deps-build deps-run build
	@PORT=$(PORT) DATA_DIR=$(DATA_DIR) NGINX=$(NGINX) MODULE=$(MODULE) \
	    RUN_DIR=$(BUILD)/run ./run-nginx.sh

# Benchmarks: speed and space targets live here, never in unit tests.
# bench-peers: the comparison with nginx, lua_shared_dict and Redis
# (bench/peers.sh), about 10 minutes; it installs the build's packages
# with the peers', with their services kept from starting, then builds.
BENCH_KEYS   ?= 10000000
BENCH_CFLAGS := -std=c11 -O2 -g -Wall -Wextra -Werror -Ikvstore \
                -I$(BUILD)/unit/proto

.PHONY: bench bench-peers

$(BUILD)/bench/startup: bench/startup.c $(KV_SRCS) $(KV_HDRS) \
                        $(BUILD)/unit/proto/kv.pb-c.c
	mkdir -p $(BUILD)/bench
	$(CC) $(BENCH_CFLAGS) -o $@ bench/startup.c $(KV_SRCS) \
	    $(BUILD)/unit/proto/kv.pb-c.c -lprotobuf-c -lxxhash -lpthread

$(BUILD)/bench/sorted: bench/sorted.c $(KV_SRCS) $(KV_HDRS) \
                       $(BUILD)/unit/proto/kv.pb-c.c
	mkdir -p $(BUILD)/bench
	$(CC) $(BENCH_CFLAGS) -o $@ bench/sorted.c $(KV_SRCS) \
	    $(BUILD)/unit/proto/kv.pb-c.c -lprotobuf-c -lxxhash -lpthread

bench: build $(BUILD)/bench/startup
	@mkdir -p bench/out; set -o pipefail; rc=0; { \
	    $(BUILD)/bench/startup $(BENCH_KEYS) || rc=1; \
	    bench/groupcommit.sh || rc=1; \
	    bench/space.sh || rc=1; exit $$rc; \
	} 2>&1 | tee bench/out/bench-$$(date -u +%Y%m%dT%H%M%SZ).log

bench-peers:
	BUILD_PKGS="$(BUILD_PKGS)" bench/peers.sh

clean:
	rm -rf $(BUILD)

.PHONY: deb deb-test deps-deb deps-deb-test

# Debian packages: dpkg-buildpackage on a copy of the tree in build/deb/src,
# so that its output (which goes to the parent directory) lands in build/deb.
DEB_DIR := $(BUILD)/deb

deb: deps-build deps-deb
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src
	tar -C $(REPO) -cf - --exclude-vcs --exclude=./build --exclude=./data \
	    --exclude='./t/servroot*' --exclude=./bench/out . | \
	    tar -C $(DEB_DIR)/src -xf -
	cd $(DEB_DIR)/src && dpkg-buildpackage -us -uc -b > $(DEB_DIR)/build.log \
	    2>&1 || { tail -40 $(DEB_DIR)/build.log; exit 1; }
	@cd $(DEB_DIR) && ls *.deb && echo "install: apt install" \
	    $$(ls *.deb | grep -v dbgsym | sed 's|^|$(DEB_DIR)/|')

# Builds, lints, installs, serves and purges the packages on this machine.
deb-test: deps-run deps-test deps-deb-test deb
	t/deb-package.sh $(DEB_DIR)
