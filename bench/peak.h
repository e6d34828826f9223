/* The machine's arithmetic limit, measured by register-only loops: the
 * denominator of every kernel figure (bench/bench_peak.c prints it,
 * bench/bench_blas.c divides by it).
 *
 *   fp32 FMA, zmm (AVX-512F): 16 independent accumulators, 32 flops each;
 *   fp32 FMA, ymm (AVX2+FMA): 12 independent accumulators, 16 flops each;
 *   int8 vpdpbusd, zmm (AVX512-VNNI): 16 accumulators, 64 u8 x s8
 *     multiply-adds = 128 ops each;
 *   int8 without VNNI, ymm (AVX2): the step of the AVX2 int8 GEMM
 *     (qgemm_avx2.c), vpmaddwd into a vpaddd, 12 accumulators, 16 s16
 *     multiply-adds = 32 ops each;
 *   the same for 7-bit weights: the narrow AVX2 GEMM's step, vpmaddubsw,
 *     vpmaddwd by ones, vpaddd, 12 accumulators, 32 u8 x s8 multiply-adds
 *     = 64 ops each.
 * Enough accumulators to cover FMA latency x throughput on current x86
 * (4 cycles x 2 pipes).  Nothing is loaded or stored inside the loops.
 *
 * The bench files are compiled with the plain rule (no -m flags), so each
 * loop is a target-attributed function; callers check vmc_cpu_features()
 * first (peak_has_*).  Header-only: each bench includes it once. */
#ifndef VMC_BENCH_PEAK_H
#define VMC_BENCH_PEAK_H

#include "core/core.h"

#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double peak_now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static inline int peak_cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static inline int peak_has_avx2(void) { return vmc_cpu_runs(VMC_ISA_AVX2); }
static inline int peak_has_avx512(void) {
  return peak_has_avx2() && (vmc_cpu_features() & VMC_CPU_AVX512F);
}
static inline int peak_has_vnni512(void) {
  return peak_has_avx512() && (vmc_cpu_features() & VMC_CPU_AVX512VNNI);
}

#define PEAK_ZMM_ACC 16
#define PEAK_YMM_ACC 12
#define PEAK_VNNI_ACC 16
#define PEAK_MADDWD_ACC 12

/* Each function runs iters iterations of one instruction per accumulator
 * and returns a value depending on every accumulator (so nothing is dead).
 * acc = acc * x + y with x just below 1 stays bounded and normal.  The
 * accumulators are named variables (not an array) so that both compilers
 * keep them in registers. */
#define PEAK_REP12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define PEAK_REP16(X) PEAK_REP12(X) X(12) X(13) X(14) X(15)

__attribute__((target("avx2,fma"), noinline)) static float peak_loop_ymm(long iters) {
  const __m256 x = _mm256_set1_ps(0.99999f), y = _mm256_set1_ps(1e-3f);
#define DECL(j) __m256 a##j = _mm256_set1_ps((float)j);
#define STEP(j) a##j = _mm256_fmadd_ps(a##j, x, y);
#define SUM(j) s = _mm256_add_ps(s, a##j);
  PEAK_REP12(DECL)
  for (long i = 0; i < iters; i++) {
    PEAK_REP12(STEP)
  }
  __m256 s = _mm256_setzero_ps();
  PEAK_REP12(SUM)
#undef DECL
#undef STEP
#undef SUM
  return _mm256_cvtss_f32(s);
}

__attribute__((target("avx512f"), noinline)) static float peak_loop_zmm(long iters) {
  const __m512 x = _mm512_set1_ps(0.99999f), y = _mm512_set1_ps(1e-3f);
#define DECL(j) __m512 a##j = _mm512_set1_ps((float)j);
#define STEP(j) a##j = _mm512_fmadd_ps(a##j, x, y);
#define SUM(j) s = _mm512_add_ps(s, a##j);
  PEAK_REP16(DECL)
  for (long i = 0; i < iters; i++) {
    PEAK_REP16(STEP)
  }
  __m512 s = _mm512_setzero_ps();
  PEAK_REP16(SUM)
#undef DECL
#undef STEP
#undef SUM
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512vnni"), noinline)) static float
peak_loop_vnni(long iters) {
  const __m512i u = _mm512_set1_epi8(3), s8 = _mm512_set1_epi8(-2);
#define DECL(j) __m512i a##j = _mm512_set1_epi32(j);
/* gcc surrounds the intrinsic with register copies; the asm is the bare
 * instruction (AT&T order: s8 source, u8 source, accumulator). */
#define STEP(j) __asm__("vpdpbusd %2, %1, %0" : "+v"(a##j) : "v"(u), "v"(s8));
#define SUM(j) s = _mm512_add_epi32(s, a##j);
  PEAK_REP16(DECL)
  for (long i = 0; i < iters; i++) {
    PEAK_REP16(STEP)
  }
  __m512i s = _mm512_setzero_si512();
  PEAK_REP16(SUM)
#undef DECL
#undef STEP
#undef SUM
  return (float)_mm512_reduce_add_epi32(s);
}

/* The AVX2 int8 GEMMs' steps, each in one asm (with a scratch register):
 * intrinsics let the compiler hoist the loop-invariant products, and a
 * separate asm output made gcc spill the accumulators.  narrow == 0: acc +=
 * madd(u, v), the full-range step; else acc += madd(maddubs(u, v), ones),
 * the narrow one. */
__attribute__((target("avx2"), noinline)) static float peak_loop_int_ymm(long iters,
                                                                         int narrow) {
  const __m256i u = _mm256_set1_epi8(3), v = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
#define DECL(j) __m256i a##j = _mm256_set1_epi32(j);
#define WIDE(j)                                                                    \
  __asm__("vpmaddwd %2, %1, %%ymm15\n\tvpaddd %%ymm15, %0, %0" : "+x"(a##j)       \
          : "x"(u), "x"(v) : "xmm15");
#define NARROW(j)                                                                  \
  __asm__("vpmaddubsw %2, %1, %%ymm15\n\tvpmaddwd %3, %%ymm15, %%ymm15\n\t"         \
          "vpaddd %%ymm15, %0, %0"                                                 \
          : "+x"(a##j) : "x"(u), "x"(v), "x"(ones) : "xmm15");
#define SUM(j) s = _mm256_add_epi32(s, a##j);
  PEAK_REP12(DECL)
  if (narrow)
    for (long i = 0; i < iters; i++) {
      PEAK_REP12(NARROW)
    }
  else
    for (long i = 0; i < iters; i++) {
      PEAK_REP12(WIDE)
    }
  __m256i s = _mm256_setzero_si256();
  PEAK_REP12(SUM)
#undef DECL
#undef WIDE
#undef NARROW
#undef SUM
  return (float)_mm256_extract_epi32(s, 0);
}

enum { PEAK_YMM, PEAK_ZMM, PEAK_VNNI, PEAK_MADDWD, PEAK_MADDUBS };

/* Arithmetic (flops or ops) of one iteration of a loop. */
static inline double peak_ops_per_iter(int which) {
  switch (which) {
  case PEAK_YMM: return PEAK_YMM_ACC * 8 * 2.0;
  case PEAK_ZMM: return PEAK_ZMM_ACC * 16 * 2.0;
  case PEAK_MADDWD: return PEAK_MADDWD_ACC * 16 * 2.0;
  case PEAK_MADDUBS: return PEAK_MADDWD_ACC * 32 * 2.0;
  default: return PEAK_VNNI_ACC * 64 * 2.0;
  }
}

static volatile float peak_sink;

/* One timed run of `which` on nt threads (a parallel region; each thread
 * runs iters iterations between two barriers): G(FL)OP/s of all threads. */
static inline double peak_run(int which, int nt, long iters) {
  double t0 = 0, t1 = 0;
  int team = 1;
#pragma omp parallel num_threads(nt)
  {
#pragma omp barrier
#pragma omp master
    t0 = peak_now_s();
    float v = which == PEAK_YMM      ? peak_loop_ymm(iters)
              : which == PEAK_ZMM    ? peak_loop_zmm(iters)
              : which == PEAK_MADDWD ? peak_loop_int_ymm(iters, 0)
              : which == PEAK_MADDUBS ? peak_loop_int_ymm(iters, 1)
                                     : peak_loop_vnni(iters);
#pragma omp barrier
#pragma omp master
    {
      t1 = peak_now_s();
      peak_sink = v;
      team = omp_get_num_threads();
    }
  }
  return peak_ops_per_iter(which) * (double)iters * team / (t1 - t0) / 1e9;
}

/* Median over `runs` runs of about `seconds` each; 0 if the CPU lacks it. */
static inline double peak_measure(int which, int nt, int runs, double seconds) {
  if (((which == PEAK_YMM || which == PEAK_MADDWD || which == PEAK_MADDUBS) && !peak_has_avx2()) ||
      (which == PEAK_ZMM && !peak_has_avx512()) || (which == PEAK_VNNI && !peak_has_vnni512()))
    return 0;
  if (runs > 64) runs = 64;
  if (runs < 1) runs = 1;
  /* Size iters from a short single-thread run (about 1 ms). */
  long iters = 1 << 14;
  double g = peak_run(which, 1, iters);
  iters = (long)(seconds * g * 1e9 / peak_ops_per_iter(which));
  if (iters < 1000) iters = 1000;
  double r[64];
  for (int i = 0; i < runs; i++) r[i] = peak_run(which, nt, iters);
  qsort(r, (size_t)runs, sizeof r[0], peak_cmp_double);
  return r[runs / 2];
}

/* Best fp32 FMA peak (zmm or ymm, whichever is higher) on nt threads. */
static inline double peak_fp32(int nt, int runs, double seconds) {
  const double z = peak_measure(PEAK_ZMM, nt, runs, seconds);
  const double y = peak_measure(PEAK_YMM, nt, runs, seconds);
  return z > y ? z : y;
}

/* "model name" of /proc/cpuinfo, or the CPUID brand string. */
static inline const char *peak_cpu_model(void) {
  static char name[128];
  if (name[0]) return name;
  FILE *f = fopen("/proc/cpuinfo", "r");
  char line[256];
  while (f && fgets(line, sizeof line, f)) {
    if (strncmp(line, "model name", 10) == 0) {
      const char *p = strchr(line, ':');
      if (p) {
        p++;
        while (*p == ' ' || *p == '\t') p++;
        snprintf(name, sizeof name, "%s", p);
        name[strcspn(name, "\n")] = 0;
      }
      break;
    }
  }
  if (f) fclose(f);
  if (!name[0]) snprintf(name, sizeof name, "unknown");
  return name;
}

/* CPUID family/model/stepping (e.g. Zen 4 Genoa: family 0x19 model 0x11). */
static inline void peak_cpu_fms(unsigned *family, unsigned *model, unsigned *stepping) {
  unsigned a = 0, b, c, d;
  __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
  unsigned fam = (a >> 8) & 0xf, mod = (a >> 4) & 0xf;
  if (fam == 0xf) fam += (a >> 20) & 0xff;
  if (fam >= 0x6) mod |= ((a >> 16) & 0xf) << 4;
  *family = fam, *model = mod, *stepping = a & 0xf;
}

#endif
