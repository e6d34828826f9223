/* libFuzzer target for the .vmc reader: feeds arbitrary bytes to
 * vmc_model_read_memory.  Any crash, leak, sanitizer report or timeout is a
 * bug in the reader (or in an op's shape inference, which the reader calls).
 *
 * Not built by the Makefile (it lives below tests/, out of the glob of test
 * sources).  Build and run by hand from the repository root, with clang:
 *
 *   make CC=clang BUILD=build/fuzz CFLAGS="-fsanitize=fuzzer-no-link,address,undefined \
 *        -fno-sanitize-recover=all -g -Wno-pass-failed" build/fuzz/libvmc.a
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
 *        -fno-sanitize-recover=all -Iinclude -Isrc tests/fuzz/fuzz_vmcfile.c \
 *        build/fuzz/libvmc.a -fopenmp -lz -lm -o build/fuzz/fuzz_vmcfile
 *   mkdir -p build/fuzz/corpus
 *   VMC_FUZZ_SEED_DIR=build/fuzz/corpus build/vmc_tests round_trip
 *   build/fuzz/fuzz_vmcfile -max_len=16384 build/fuzz/corpus
 *
 * (The round-trip tests write small valid models into $VMC_FUZZ_SEED_DIR,
 * seeds that get the fuzzer past the CRC check: tiny.vmc (f32, format
 * version 1), qtiny.vmc with s8/s4 weights (version 2), ctiny.vmc with
 * entropy-coded ones (version 3), and the compact layout of version 4:
 * qtiny4.vmc, ctiny4.vmc, and vtiny.vmc with coded scales and f32 weights
 * and biases stored as s32 codes.)
 * (-Wno-pass-failed: clang 14 cannot vectorize some `omp simd` loops of the
 * kernels under the sanitizers and says so, an error under -Werror.)
 * Mutations rarely keep the CRC-32 valid, so by default this target fixes the
 * CRC of every input before reading it: the parser behind the checksum is
 * what needs fuzzing.  Build with -DVMC_FUZZ_KEEP_CRC to fuzz the input
 * exactly as given. */
#include "core/core.h"
#include "graph/graph.h"
#include "io/io.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* A copy of exactly size bytes, so any read past the end is caught. */
  uint8_t *buf = malloc(size ? size : 1);
  if (!buf) return 0;
  if (size) memcpy(buf, data, size);
#ifndef VMC_FUZZ_KEEP_CRC
  if (size >= VMC_FILE_HEADER_BYTES + 4) {
    uint32_t crc = vmc_crc32(0, buf, size - 4);
    for (int i = 0; i < 4; i++) buf[size - 4 + i] = (uint8_t)(crc >> (8 * i));
  }
#endif
  vmc_graph *g = NULL;
  vmc_blob *extra = NULL;
  int n_extra = 0;
  vmc_status s = vmc_model_read_memory(buf, size, "fuzz", &g, &extra, &n_extra);
  if (s == VMC_OK) {
    vmc_graph_free(g);
    vmc_blobs_free(extra, n_extra);
  } else if (g || extra || n_extra) {
    abort(); /* a failed read must return nothing */
  }
  free(buf);
  return 0;
}
