# mq — top-level build.  GNU make, gcc, C11.
#
# Layout (see README "Layout"): every folder builds into one archive or program.
#   kernels/*.c      -> build/libmqkernels.a  (*_avx2.c / *_avx512.c get their ISA flags)
#   common/*.c       -> build/libmqcommon.a   (error messages, clocks)
#   ipc/*.c          -> build/libmqipc.a
#   engine/*.c       -> build/libmqengine.a   (runs a model; no sockets)
#   daemon/*.c       -> build/libmqd.a (all but main.c) + build/mqd
#   libclient/*.c    -> build/libmq.so (+ ipc and common objects)
#   tools/<name>.c   -> build/<name>        (mqctl, mq, ...)
#   mq-openai/*.c    -> build/libmqopenai.a (all but main.c) + build/mq-openai (HTTP front,
#                       a client of mqd through libmq only)
#   tests/*/test_*.c -> build/tests/test_*  (linked with everything)
#   tests/bench/*.c, tests/tools/*.c -> build/<name>
#
# BUILD=build-asan SAN=1 gives the ASan+UBSan build used by `make test`.

CC      ?= gcc
BUILD   ?= build
SAN     ?= 0
PREFIX  ?= /usr/local
DESTDIR ?=
MQ_SHARED ?= $(abspath ../shared)
export MQ_SHARED

OPT      ?= -O2
CFLAGS_BASE = -std=gnu11 $(OPT) -g -Wall -Wextra -Werror -fPIC -pthread \
              -I.
ifeq ($(SAN),1)
CFLAGS_BASE += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS_SAN  = -fsanitize=address,undefined
endif
# SAN=thread: ThreadSanitizer (make test-tsan). GCC 12's TSan instrumentation makes
# -Wmaybe-uninitialized report variables every path sets (tokenizer_encode.c's `nl`, `pc`).
ifeq ($(SAN),thread)
CFLAGS_BASE += -fsanitize=thread -fno-omit-frame-pointer -Wno-maybe-uninitialized
LDFLAGS_SAN  = -fsanitize=thread
endif
CFLAGS  += $(CFLAGS_BASE)
AVX2_FLAGS   = -mavx2 -mfma -mf16c
AVX512_FLAGS = -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mfma -mf16c
LIBS    = -luring -lbpf -lcap -lseccomp -lcjson -lsystemd -lpcre2-8 -lxxhash -lutf8proc -lm -lpthread
LDFLAGS += $(LDFLAGS_SAN)

KERNEL_SRC  := $(wildcard kernels/*.c)
COMMON_SRC  := $(wildcard common/*.c)
IPC_SRC     := $(wildcard ipc/*.c)
ENGINE_SRC  := $(wildcard engine/*.c)
DAEMON_SRC  := $(filter-out daemon/main.c daemon/%.bpf.c,$(wildcard daemon/*.c))
CLIENT_SRC  := $(wildcard libclient/*.c)
TOOL_SRC    := $(wildcard tools/*.c)
OAI_SRC     := $(filter-out mq-openai/main.c,$(wildcard mq-openai/*.c))
TEST_SRC    := $(wildcard tests/unit/test_*.c tests/golden/test_*.c tests/integration/test_*.c)
BENCH_SRC   := $(wildcard tests/bench/*.c tests/tools/*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
KERNEL_OBJ := $(call obj,$(KERNEL_SRC))
COMMON_OBJ := $(call obj,$(COMMON_SRC))
IPC_OBJ    := $(call obj,$(IPC_SRC))
ENGINE_OBJ := $(call obj,$(ENGINE_SRC))
DAEMON_OBJ := $(call obj,$(DAEMON_SRC))
CLIENT_OBJ := $(call obj,$(CLIENT_SRC))
OAI_OBJ    := $(call obj,$(OAI_SRC))

LIBKERNELS := $(BUILD)/libmqkernels.a
LIBCOMMON  := $(BUILD)/libmqcommon.a
LIBIPC     := $(BUILD)/libmqipc.a
LIBENGINE  := $(BUILD)/libmqengine.a
LIBMQD     := $(BUILD)/libmqd.a
LIBMQ_SO   := $(BUILD)/libmq.so.1
LIBOAI     := $(BUILD)/libmqopenai.a
MQ_OPENAI  := $(if $(wildcard mq-openai/main.c),$(BUILD)/mq-openai)
OAI_LIBS    = -lmicrohttpd -lcjson -lsystemd -lcrypt -lpthread -lm
MQD        := $(if $(wildcard daemon/main.c),$(BUILD)/mqd)
TOOLS      := $(patsubst tools/%.c,$(BUILD)/%,$(TOOL_SRC))
TESTS      := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
BENCHES    := $(addprefix $(BUILD)/,$(basename $(notdir $(BENCH_SRC))))

ALL_LIBS = $(LIBMQD) $(LIBENGINE) $(LIBKERNELS) $(LIBIPC) $(LIBCOMMON)

.SECONDARY:

.PHONY: format format-check
# One style (.clang-format, clang-format 14 as Debian 12 ships it). `make test` checks it.
FORMAT_SRC = $(filter-out daemon/probes.bpf.c,$(shell git ls-files '*.c' '*.h' 2>/dev/null))
format:
	@clang-format -i $(FORMAT_SRC)
format-check:
	@bad=$$(for f in $(FORMAT_SRC); do clang-format $$f | cmp -s - $$f || echo $$f; done); \
	if [ -n "$$bad" ]; then echo "not formatted (run make format):" $$bad; exit 1; fi

.PHONY: all test test-fast test-asan bench bench-kernels bench-e2e eval run install clean deps fuzz
all: $(LIBKERNELS) $(LIBCOMMON) $(LIBIPC) $(LIBENGINE) $(LIBMQD) $(MQD) $(if $(CLIENT_SRC),$(LIBMQ_SO)) $(TOOLS) \
     $(LIBOAI) $(MQ_OPENAI) $(TESTS) $(BENCHES) $(BUILD)/mq_soak

$(BUILD)/obj/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(AVX2_FLAGS) -MMD -MP -c $< -o $@
$(BUILD)/obj/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(AVX512_FLAGS) -MMD -MP -c $< -o $@
$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIBKERNELS): $(KERNEL_OBJ)
	@mkdir -p $(dir $@); rm -f $@; ar rcs $@ $^
$(LIBCOMMON): $(COMMON_OBJ)
	@mkdir -p $(dir $@); rm -f $@; ar rcs $@ $^
$(LIBIPC): $(IPC_OBJ)
	@mkdir -p $(dir $@); rm -f $@; ar rcs $@ $^
$(LIBENGINE): $(ENGINE_OBJ)
	@mkdir -p $(dir $@); rm -f $@; ar rcs $@ $^
$(LIBMQD): $(DAEMON_OBJ)
	@mkdir -p $(dir $@); rm -f $@; ar rcs $@ $^
$(LIBOAI): $(OAI_OBJ)
	@mkdir -p $(dir $@); rm -f $@; ar rcs $@ $^

# mq-openai links libmq only (DESIGN.md: the HTTP front is a client like any other)
$(BUILD)/mq-openai: $(BUILD)/obj/mq-openai/main.o $(LIBOAI) $(LIBMQ_SO) $(LIBCOMMON)
	$(CC) $(LDFLAGS) -o $@ $< $(LIBOAI) -L$(BUILD) -lmq $(LIBCOMMON) $(OAI_LIBS) -Wl,-rpath,'$$ORIGIN'

$(BUILD)/mqd: $(BUILD)/obj/daemon/main.o $(ALL_LIBS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(LIBMQ_SO): $(CLIENT_OBJ) $(IPC_OBJ) $(COMMON_OBJ) libclient/libmq.map
	$(CC) $(LDFLAGS) -shared -Wl,-soname,libmq.so.1 -Wl,--version-script=libclient/libmq.map \
	    -o $@ $(CLIENT_OBJ) $(IPC_OBJ) $(COMMON_OBJ) -lpthread
	ln -sf libmq.so.1 $(BUILD)/libmq.so

# tools link only libmq (+ ipc, cJSON for the admin protocol)
$(BUILD)/%: $(BUILD)/obj/tools/%.o $(LIBMQ_SO) $(LIBIPC) $(LIBCOMMON)
	$(CC) $(LDFLAGS) -o $@ $< -L$(BUILD) -lmq $(LIBIPC) $(LIBCOMMON) -lcjson -lpthread -lm -Wl,-rpath,'$$ORIGIN'

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(ALL_LIBS) $(LIBOAI) $(if $(CLIENT_SRC),$(LIBMQ_SO))
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIBOAI) $(if $(CLIENT_SRC),$(CLIENT_OBJ)) $(ALL_LIBS) $(LIBS) -lmicrohttpd -lcrypt

define bench_rule
$(BUILD)/$(basename $(notdir $(1))): $(call obj,$(1)) $(ALL_LIBS) $(LIBOAI) $(CLIENT_OBJ)
	$$(CC) $$(LDFLAGS) -o $$@ $$< $(LIBOAI) $(CLIENT_OBJ) $(ALL_LIBS) $$(LIBS)
endef
$(foreach b,$(BENCH_SRC),$(eval $(call bench_rule,$(b))))

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# ---------------------------------------------------------------------------
deps:
	@sh dist/install-deps.sh

# The suite: optimised build runs every test; the ASan+UBSan build runs tests/unit.
ASAN_BUILD = $(MAKE) --no-print-directory BUILD=build-asan SAN=1 OPT=-O1 asan-tests
test: deps
	@$(MAKE) --no-print-directory format-check
	@$(MAKE) --no-print-directory all
	@$(ASAN_BUILD)
	@$(MAKE) --no-print-directory fuzz-run
	@sh tests/run.sh build build-asan

.PHONY: asan-tests
asan-tests: $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/test_*.c))

test-fast: all
	@sh tests/run.sh build

# The ASan+UBSan half of `make test` alone: tests/unit built into build-asan/ and run.
test-asan: deps
	@$(ASAN_BUILD)
	@sh tests/run.sh build-asan

# ThreadSanitizer (not in `make test`: it runs the model ~15x slower). The threaded tests
# (rings, pools, event loop, KV store, scheduler) and mqd itself (test_e2e, test_faults,
# test_client_faults and test_resource_faults start build-tsan/mqd) are built with
# -fsanitize=thread; every process writes its reports to build-tsan/tsan/ (mqd runs as
# nobody: the folder is world-writable), and any report fails the run, whatever the tests
# said. No suppressions. Waits in the tests scale with MQ_TEST_TIME_SCALE=10.
TSAN_TESTS = unit/test_ring unit/test_pool unit/test_evloop unit/test_kv_store \
             integration/test_sched integration/test_e2e integration/test_faults \
             integration/test_client_faults integration/test_resource_faults
.PHONY: test-tsan
test-tsan: deps
	@$(MAKE) --no-print-directory BUILD=build-tsan SAN=thread OPT=-O1 build-tsan/mqd build-tsan/mqctl \
	    build-tsan/mq $(addprefix build-tsan/tests/,$(TSAN_TESTS))
	@rm -rf build-tsan/tsan && mkdir -p build-tsan/tsan && chmod 1777 build-tsan/tsan
	@TSAN_OPTIONS="log_path=$(CURDIR)/build-tsan/tsan/report second_deadlock_stack=1" MQ_TEST_TIME_SCALE=10 \
	    sh tests/run.sh build-tsan; rc=$$?; \
	if ls build-tsan/tsan/report.* >/dev/null 2>&1; then \
	    echo "ThreadSanitizer reports:"; cat build-tsan/tsan/report.*; \
	    grep -h '^SUMMARY' build-tsan/tsan/report.* | sort | uniq -c; exit 1; fi; \
	echo "tsan: no reports"; exit $$rc

bench-kernels: deps all
	$(BUILD)/bench_kernels

# `make bench` runs every target listed in BENCH_TARGETS, in order; other benchmarks
# append themselves (BENCH_TARGETS += bench-e2e) anywhere in this Makefile.
BENCH_TARGETS += bench-kernels
# End to end: scheduler + engine on synthetic Qwen3-0.6B/-1.7B checkpoints (written once
# into build/models by build/mq_synth). BENCH_E2E_FLAGS=--quick for a shorter run.
BENCH_TARGETS += bench-e2e
bench-e2e: deps all
	$(BUILD)/bench_e2e $(BENCH_E2E_FLAGS)
bench:
	@for t in $(BENCH_TARGETS); do $(MAKE) --no-print-directory $$t || exit 1; done

clean:
	rm -rf build build-asan build-fuzz build-tsan

# ---------------------------------------------------------------------------
# BPF probes (daemon/probes.bpf.c -> libbpf skeleton included by daemon/probes.c).
# vmlinux.h comes from the running kernel's BTF at build time (never committed). Without
# clang, bpftool or kernel BTF, probes.c builds its fallback that reports "BPF not built".
BPF_CLANG   ?= $(shell command -v clang 2>/dev/null)
BPFTOOL     ?= $(shell command -v bpftool 2>/dev/null || { test -x /usr/sbin/bpftool && echo /usr/sbin/bpftool; })
KERNEL_BTF  ?= /sys/kernel/btf/vmlinux
BPF_GEN     := $(BUILD)/gen
BPF_ARCH    := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
ifneq ($(and $(BPF_CLANG),$(BPFTOOL),$(wildcard $(KERNEL_BTF))),)
$(BUILD)/obj/daemon/probes.o: $(BPF_GEN)/probes.skel.h
$(BUILD)/obj/daemon/probes.o: CFLAGS += -I$(BPF_GEN) -DMQ_HAVE_BPF=1
$(BPF_GEN)/vmlinux.h:
	@mkdir -p $(dir $@)
	$(BPFTOOL) btf dump file $(KERNEL_BTF) format c > $@.tmp && mv $@.tmp $@
$(BPF_GEN)/probes.bpf.o: daemon/probes.bpf.c daemon/probes_shared.h $(BPF_GEN)/vmlinux.h
	$(BPF_CLANG) -target bpf -D__TARGET_ARCH_$(BPF_ARCH) -O2 -g -I$(BPF_GEN) -I. -c $< -o $@
$(BPF_GEN)/probes.skel.h: $(BPF_GEN)/probes.bpf.o
	$(BPFTOOL) gen skeleton $< name mq_probes_bpf > $@.tmp && mv $@.tmp $@
else
$(info mq: clang, bpftool or $(KERNEL_BTF) missing: building the BPF probes fallback ("BPF not built"))
endif

# ---------------------------------------------------------------------------
# make soak (minutes; not in `make test`): 64 clients x 100 requests through libmq, then
# 64 x 100 through mq-openai, against one mqd on SOAK_MODEL — prompts of 10 to 8000
# tokens, greedy (each compared with its prompt answered alone) and sampled, cancels,
# dropped connections, readers that stop, clients SIGKILLed (HTTP: reset) mid-stream —
# and the slow readers' cost to the others; prints the soak_* figures
# (tests/soak/mq_soak.c says what each is) and fails on a bound missed.
SOAK_MODEL    ?= $(MQ_SHARED)/models/mq-agent-45m
SOAK_CLIENTS  ?= 64
SOAK_REQUESTS ?= 100
$(BUILD)/mq_soak: $(BUILD)/obj/tests/soak/mq_soak.o $(LIBMQ_SO)
	$(CC) $(LDFLAGS) -o $@ $< -L$(BUILD) -lmq -lcjson -lpthread -lm -Wl,-rpath,'$$ORIGIN'
.PHONY: soak
soak: deps
	@$(MAKE) --no-print-directory $(MQD) $(MQ_OPENAI) $(BUILD)/mqctl $(BUILD)/mq_soak
	$(BUILD)/mq_soak --mqd $(MQD) --mqctl $(BUILD)/mqctl --model $(SOAK_MODEL) \
	    $(if $(MQ_OPENAI),--openai $(MQ_OPENAI)) --clients $(SOAK_CLIENTS) --requests $(SOAK_REQUESTS)

# ---------------------------------------------------------------------------
# make run: deps, build, start mqd on $(MODEL) in the background with its sockets under
# $(RUN_DIR), wait until it is ready, answer a prompt through `mq run`, start mq-openai on
# 127.0.0.1:$(HTTP_PORT) and answer a chat request with curl; leave both running.
MODEL   ?= $(MQ_SHARED)/models/mq-qwen3-80m
RUN_DIR ?= $(CURDIR)/run
PROMPT  ?= Write a Python function that returns the sum of a list of numbers.
HTTP_PORT ?= 8000
run: deps
	@$(MAKE) --no-print-directory $(MQD) $(LIBMQ_SO) $(BUILD)/mq $(BUILD)/mqctl $(BUILD)/mq-openai
	@sh dist/run.sh "$(MODEL)" "$(RUN_DIR)" "$(CURDIR)/$(BUILD)" "$(PROMPT)" "$(HTTP_PORT)"

# make install: PREFIX (default /usr/local) and DESTDIR honoured.
SYSTEMD_UNIT_DIR ?= /etc/systemd/system
install: $(MQD) $(LIBMQ_SO) $(BUILD)/mq $(BUILD)/mqctl $(BUILD)/mq-openai
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	    $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(SYSTEMD_UNIT_DIR) $(DESTDIR)/etc/mq
	install -m 0755 $(MQD) $(BUILD)/mq $(BUILD)/mqctl $(BUILD)/mq-openai $(DESTDIR)$(PREFIX)/bin/
	install -m 0755 $(LIBMQ_SO) $(DESTDIR)$(PREFIX)/lib/libmq.so.1
	ln -sf libmq.so.1 $(DESTDIR)$(PREFIX)/lib/libmq.so
	install -m 0644 libclient/mq.h $(DESTDIR)$(PREFIX)/include/mq.h
	install -d $(DESTDIR)$(PREFIX)/share/doc/mq/docs/design
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/mq/
	install -m 0644 docs/*.md $(DESTDIR)$(PREFIX)/share/doc/mq/docs/
	install -m 0644 docs/design/*.md $(DESTDIR)$(PREFIX)/share/doc/mq/docs/design/
	sed 's|@PREFIX@|$(PREFIX)|g' libclient/libmq.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/libmq.pc
	for u in mqd.service mqd.socket mqd-admin.socket mq-openai.service mq-openai.socket; do \
	    sed 's|/usr/local|$(PREFIX)|g' dist/$$u > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$u; done
	[ -e $(DESTDIR)/etc/mq/mqd.json ] || install -m 0644 dist/mqd.json $(DESTDIR)/etc/mq/mqd.json
	[ -e $(DESTDIR)/etc/mq/mq-openai.json ] || install -m 0644 dist/mq-openai.json $(DESTDIR)/etc/mq/mq-openai.json
	[ -n "$(DESTDIR)" ] || ldconfig 2>/dev/null || true

# ---------------------------------------------------------------------------
# Fuzzing: every tests/fuzz/fuzz_<x>.c becomes build-fuzz/fuzz_<x> (clang, libFuzzer +
# ASan + UBSan), linked with kernels/, common/, ipc/, engine/ and daemon/ (not daemon/main.c) compiled by
# clang with the same sanitizers. `make fuzz-run` runs each for FUZZ_SECONDS (seed corpus:
# tests/fuzz/corpus/fuzz_<x>/ if present); a crash fails it. `make test` runs it.
FUZZ_CC      ?= clang
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 10
FUZZ_SRC     := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS    := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(FUZZ_SRC))
FUZZ_LIB_OBJ := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(KERNEL_SRC) $(COMMON_SRC) $(IPC_SRC) $(ENGINE_SRC) $(DAEMON_SRC) \
                  $(OAI_SRC) $(CLIENT_SRC))
FUZZ_CFLAGS   = -std=gnu11 -O1 -g -fno-omit-frame-pointer -fPIC -pthread -Werror=implicit-function-declaration \
                -fsanitize=address,undefined -fno-sanitize-recover=undefined \
                -I.

# kernels/ are numeric code the fuzzers do not target: built plainly (instrumenting the
# AVX-512 GEMM with ASan+UBSan+coverage costs clang minutes).
FUZZ_PLAIN    = -std=gnu11 -O1 -g -fPIC -pthread -I.
$(FUZZ_BUILD)/obj/kernels/%_avx2.o: kernels/%_avx2.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_PLAIN) $(AVX2_FLAGS) -MMD -MP -c $< -o $@
$(FUZZ_BUILD)/obj/kernels/%_avx512.o: kernels/%_avx512.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_PLAIN) $(AVX512_FLAGS) -MMD -MP -c $< -o $@
$(FUZZ_BUILD)/obj/kernels/%.o: kernels/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_PLAIN) -MMD -MP -c $< -o $@
$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@
$(FUZZ_BUILD)/libfuzzdeps.a: $(FUZZ_LIB_OBJ)
	@mkdir -p $(dir $@); rm -f $@; ar rcs $@ $^
$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_BUILD)/libfuzzdeps.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_BUILD)/libfuzzdeps.a $(LIBS) -lmicrohttpd -lcrypt

-include $(shell find $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)

fuzz: $(FUZZ_BINS)

.PHONY: fuzz-run
fuzz-run: fuzz
	@sh tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_BINS)

# make fuzz-long FUZZ_S=600: every target for FUZZ_S seconds (fork mode: a crash is
# recorded and the run goes on), printing execs and crashes per target and the rows for
# docs/results.md; FUZZ_PAR=2 runs two targets at a time (half the wall time; each gets
# the CPU that is left). Not in `make test` (that keeps its FUZZ_SECONDS per target).
FUZZ_S ?= 600
FUZZ_PAR ?= 1
.PHONY: fuzz-long
fuzz-long: deps fuzz
	@FUZZ_PAR=$(FUZZ_PAR) sh tests/fuzz/long.sh $(FUZZ_BUILD) $(FUZZ_S) $(FUZZ_BINS)

# ---------------------------------------------------------------------------
# The agent evaluation through the HTTP API (issue 10): every assistant turn of the agent
# conversations through mq-openai with the official OpenAI client, greedy, in each mode.
# TASKS=n: the first n conversations (default all). Last lines: agent_acc_bf16,
# agent_acc_mixed, agent_acc_fp4, agent_match_golden.
AGENT_MODEL ?= $(MQ_SHARED)/models/mq-agent-45m
AGENT_DIR   ?= $(MQ_SHARED)/golden/mq-agent-45m
TASKS       ?=
.PHONY: eval-agent bench-http
eval-agent: deps
	@$(MAKE) --no-print-directory $(MQD) $(BUILD)/mqctl $(BUILD)/mq-openai
	@sh tests/http/serve.sh $(BUILD) $(AGENT_MODEL) sh -c 'cd tests && node http/eval_agent.mjs \
	    --base-url "$$MQ_HTTP_URL/v1" --dir "$(AGENT_DIR)" $(if $(TASKS),--tasks $(TASKS))'

# HTTP vs libmq for the same requests (32 concurrent streams) and an agent replay over
# HTTP with X-Session-Id: http_ttft_overhead_ms_p50, http_tokens_per_s_vs_libmq,
# http_replay_cached_ratio.
BENCH_TARGETS += bench-http
bench-http: deps
	@$(MAKE) --no-print-directory $(MQD) $(BUILD)/mqctl $(BUILD)/mq-openai $(BUILD)/bench_http
	@sh tests/http/serve.sh $(BUILD) $(AGENT_MODEL) sh -c '$(BUILD)/bench_http --url "$$MQ_HTTP_URL" \
	    --socket "$$MQ_CLIENT_SOCKET" --dir "$(AGENT_DIR)"'

# ---------------------------------------------------------------------------
# Several mq hosts behind HAProxy (issue 12): two mqd + mq-openai pairs on loopback and
# HAProxy run from dist/haproxy/mq.cfg, agent replays through it with the official OpenAI
# client, a drain. tests/integration/test_cluster.c; part of `make test` (about half a
# minute), this target runs it alone. Prints cluster_cached_ratio_session_hash and
# cluster_cached_ratio_round_robin.
.PHONY: test-cluster
test-cluster: deps
	@$(MAKE) --no-print-directory $(MQD) $(BUILD)/mqctl $(BUILD)/mq-openai $(BUILD)/tests/integration/test_cluster
	@MQ_TEST_FILTER=test_cluster sh tests/run.sh $(BUILD)

# ---------------------------------------------------------------------------
# Quality evaluation of the three modes (issue 3): perplexity, continuation NLL, KL and
# top-1 agreement against bf16. Overridable: make eval MODEL=dir CORPUS=file DOCS=n
# (MODEL defaults to mq-qwen3-80m, set with `make run` above)
CORPUS ?= $(MQ_SHARED)/corpus/dev.txt
DOCS   ?= 200
eval: deps
	@$(MAKE) --no-print-directory $(BUILD)/mq_eval
	$(BUILD)/mq_eval --model $(MODEL) --corpus $(CORPUS) --docs $(DOCS) --threads 2
