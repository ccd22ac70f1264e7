# libquant - one Makefile, out-of-tree build in $(BUILD), automatic header
# dependencies, optional CUDA.
#
#   make                 libquant.a, libquant.so, the tools, gpu/ when nvcc is found
#   make check           unit tests (also under ASan+UBSan), CLI tests, man EXAMPLES
#   make check-gpu       GPU tests (needs a GPU)
#   make bench           benchmarks (writes results to stdout; see BENCHMARKS.md)
#   make fuzz            libFuzzer targets (clang), FUZZ_SECONDS each
#   make demo            install deps if missing, build, run the demo pipeline
#   make install PREFIX=/usr/local DESTDIR=

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCDIR ?= $(PREFIX)/include
MANPREFIX ?= $(PREFIX)/share/man
BUILD ?= build

CC ?= cc
OPT ?= -O2 -g
PKGS := libcurl libcrypto libxxhash jansson libpcre2-8 libutf8proc
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -lcurl -lcrypto -lxxhash -ljansson -lpcre2-8 -lutf8proc)

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -fPIC -pthread $(WARN) -Ilibquant -Iformats $(PKG_CFLAGS)
ifeq ($(SAN),1)
BASE_CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
SAN_LDFLAGS := -fsanitize=address,undefined
endif
ALL_CFLAGS = $(BASE_CFLAGS) $(OPT) $(CFLAGS) -MMD -MP
ALL_LDFLAGS = -pthread $(SAN_LDFLAGS) $(LDFLAGS)
LIBS = $(PKG_LIBS) $(CUDA_LIBS) -lm

# ---------------------------------------------------------------- CUDA probe
CUDA ?= 1
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifeq ($(CUDA),0)
NVCC :=
endif
CUARCH ?= -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=compute_80
NVCCFLAGS ?= -O3 -std=c++17 $(CUARCH) -Xcompiler -fPIC,-Wall -Ilibquant -Igpu
# GPU_TRACE=1: a diagnostic build whose decode kernels record %globaltimer
# (tests/gpu_trace.py; use its own BUILD directory)
ifeq ($(GPU_TRACE),1)
NVCCFLAGS += -DTC_TRACE
endif
# GPU_DEFS="-DTC_DEPTH=1 ...": compile-time knobs of gpu/*.cu for an A/B build
# (its own BUILD directory; tests/ab-gpu compares two builds)
NVCCFLAGS += $(GPU_DEFS)

# ---------------------------------------------------------------- sources
LIB_SRC := $(sort $(wildcard libquant/*.c formats/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
TOOL_SRC := $(sort $(wildcard tools/*.c))
TOOLS := $(patsubst tools/%.c,$(BUILD)/bin/%,$(TOOL_SRC))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TESTS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
TEST_HELPER_SRC := $(sort $(wildcard tests/gen_*.c))
TEST_HELPERS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_HELPER_SRC))
BENCH_SRC := $(sort $(wildcard tests/bench_*.c))
BENCHES := $(patsubst tests/%.c,$(BUILD)/tests/%,$(BENCH_SRC))
FUZZ_SRC := $(sort $(wildcard tests/fuzz_*.c))
CU_SRC := $(sort $(wildcard gpu/*.cu))
CU_OBJ := $(CU_SRC:%.cu=$(BUILD)/%.o)
CU_TEST_SRC := $(sort $(wildcard gpu/test_*.cu))
CU_LIB_OBJ := $(filter-out $(CU_TEST_SRC:%.cu=$(BUILD)/%.o),$(CU_OBJ))
CU_TESTS := $(patsubst gpu/%.cu,$(BUILD)/gpu/%,$(CU_TEST_SRC))

ifneq ($(NVCC),)
CUDA_MSG := building with CUDA ($(NVCC))
GPU_TARGETS := $(CU_TESTS)
CUDA_LIBDIR := $(dir $(NVCC))../lib64
# the CUDA backend is part of libquant: cudart is linked statically, cuBLAS
# is opened at run time (only when a GPU runs a prefill), so nothing that
# links libquant needs a GPU or the CUDA libraries to start
LIB_OBJ += $(CU_LIB_OBJ)
BASE_CFLAGS += -DLQ_HAVE_CUDA
CUDA_LIBS := -L$(CUDA_LIBDIR) -lcudart_static -ldl -lrt -lstdc++
else
CUDA_MSG := building without CUDA (nvcc not found or CUDA=0)
GPU_TARGETS :=
endif

# the CUDA configuration of this build directory: switching it (CUDA=0, or
# nvcc appearing) rebuilds what depends on it instead of mixing the two
CUDA_STAMP := $(BUILD)/.cuda-$(if $(NVCC),on,off)
$(CUDA_STAMP):
	@mkdir -p $(@D)
	@rm -f $(BUILD)/.cuda-on $(BUILD)/.cuda-off
	@touch $@

.PHONY: all lib tools tests check check-gpu bench-gpu \
	bench fuzz demo install uninstall clean cuda-msg
.DEFAULT_GOAL := all

all: cuda-msg lib tools $(GPU_TARGETS) $(BUILD)/libquant.pc

cuda-msg:
	@echo "libquant: $(CUDA_MSG)"

lib: $(BUILD)/libquant.a $(BUILD)/libquant.so
tools: $(TOOLS)
tests: $(TESTS) $(TEST_HELPERS) $(BENCHES)

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libquant.a: $(LIB_OBJ) $(CUDA_STAMP)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $(LIB_OBJ)

$(BUILD)/libquant.so: $(LIB_OBJ) $(CUDA_STAMP)
	$(CC) -shared -o $@ $(LIB_OBJ) $(ALL_LDFLAGS) $(LIBS)

$(BUILD)/libquant/cuda_none.o: $(CUDA_STAMP)

$(BUILD)/bin/%: $(BUILD)/tools/%.o $(BUILD)/libquant.a
	@mkdir -p $(@D)
	$(CC) -o $@ $< $(BUILD)/libquant.a $(ALL_LDFLAGS) $(LIBS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/libquant.a
	@mkdir -p $(@D)
	$(CC) -o $@ $< $(BUILD)/libquant.a $(ALL_LDFLAGS) $(LIBS)

# tools may use only the public header: compile each against libquant.h alone
$(BUILD)/tools/%.o: tools/%.c
	@mkdir -p $(@D)
	$(CC) $(filter-out -Iformats,$(ALL_CFLAGS)) -c $< -o $@

# ---------------------------------------------------------------- CUDA
$(BUILD)/gpu/%.o: gpu/%.cu
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/gpu/test_%: $(BUILD)/gpu/test_%.o $(BUILD)/libquant.a
	$(NVCC) $(CUARCH) -Xlinker --as-needed -o $@ $^ $(PKG_LIBS) -lm

# ---------------------------------------------------------------- checks
check: cuda-msg
	@$(MAKE) --no-print-directory all tests
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/san SAN=1 OPT="-O1 -g" CUDA=0 lib tests
	@tests/run-checks $(BUILD)

check-gpu: all
	@$(MAKE) --no-print-directory tests
	@tests/run-gpu-checks $(BUILD)

bench-gpu: all
	$(NVCC) $(NVCCFLAGS) -DLQ_BENCH_MAIN -Xlinker --as-needed -o $(BUILD)/gpu/bench_gemv gpu/bench_gemv.cu $(BUILD)/libquant.a $(PKG_LIBS) -lm
	$(BUILD)/gpu/bench_gemv
	$(BUILD)/gpu/bench_gemv --x32
	$(NVCC) $(NVCCFLAGS) -DLQ_BENCH_MAIN -Xlinker --as-needed -o $(BUILD)/gpu/bench_sample gpu/bench_sample.cu $(BUILD)/libquant.a $(PKG_LIBS) -lm
	$(BUILD)/gpu/bench_sample
	tests/run-bench-gpu $(BUILD)

bench: all tests
	@tests/run-bench $(BUILD)

FUZZ_SECONDS ?= 20
FUZZ_CC ?= clang
fuzz:
	@tests/run-fuzz $(BUILD)/fuzz $(FUZZ_SECONDS) $(FUZZ_CC)

demo:
	@scripts/install-deps --if-missing
	@$(MAKE) --no-print-directory all tests
	@examples/demo.sh $(BUILD)

# ---------------------------------------------------------------- install
PUBLIC_HEADERS := $(wildcard libquant/libquant.h libquant/lq_*.h)
MAN1 := $(wildcard man/*.1)
MAN3 := $(wildcard man/*.3)
MAN5 := $(wildcard man/*.5)

PC_FORMAT := 'prefix=%s\nlibdir=%s\nincludedir=%s\n\nName: libquant\nDescription: blockwise NF4/FP4/INT8 weight quantization and the LQ packed format\nVersion: 0.1.0\nRequires.private: %s\nLibs: -L$${libdir} -lquant\nLibs.private: %s-lm -pthread\nCflags: -I$${includedir}\n'
PC_ARGS = '$(PREFIX)' '$(subst $(PREFIX),$${prefix},$(LIBDIR))' '$(subst $(PREFIX),$${prefix},$(INCDIR))' '$(PKGS)' '$(if $(CUDA_LIBS),$(CUDA_LIBS) ,)'

$(BUILD)/libquant.pc: Makefile
	@mkdir -p $(@D)
	@printf $(PC_FORMAT) $(PC_ARGS) > $@

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR) \
		$(DESTDIR)$(MANPREFIX)/man1 $(DESTDIR)$(MANPREFIX)/man3 $(DESTDIR)$(MANPREFIX)/man5
	install -m 755 $(TOOLS) $(DESTDIR)$(BINDIR)/
	install -m 644 $(BUILD)/libquant.a $(DESTDIR)$(LIBDIR)/
	install -m 755 $(BUILD)/libquant.so $(DESTDIR)$(LIBDIR)/
	install -m 644 $(PUBLIC_HEADERS) $(DESTDIR)$(INCDIR)/
	printf $(PC_FORMAT) $(PC_ARGS) > $(DESTDIR)$(LIBDIR)/pkgconfig/libquant.pc
	$(if $(MAN1),install -m 644 $(MAN1) $(DESTDIR)$(MANPREFIX)/man1/)
	$(if $(MAN3),install -m 644 $(MAN3) $(DESTDIR)$(MANPREFIX)/man3/)
	$(if $(MAN5),install -m 644 $(MAN5) $(DESTDIR)$(MANPREFIX)/man5/)

uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(notdir $(TOOLS)))
	rm -f $(DESTDIR)$(LIBDIR)/libquant.a $(DESTDIR)$(LIBDIR)/libquant.so $(DESTDIR)$(LIBDIR)/pkgconfig/libquant.pc
	rm -f $(addprefix $(DESTDIR)$(INCDIR)/,$(notdir $(PUBLIC_HEADERS)))

clean:
	rm -rf $(BUILD)

-include $(LIB_OBJ:.o=.d) $(TOOL_SRC:%.c=$(BUILD)/%.d) $(TEST_SRC:%.c=$(BUILD)/%.d) \
	$(TEST_HELPER_SRC:%.c=$(BUILD)/%.d) $(BENCH_SRC:%.c=$(BUILD)/%.d) $(CU_OBJ:.o=.d)
