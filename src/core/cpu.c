/* CPU feature detection (once), ISA choice, thread count. */
#include "core/core.h"

#include <cpuid.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned detect(void) {
  unsigned a, b, c, d, f = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1;
  if (!osxsave) return 0;
  /* Which register states the OS saves (XCR0). */
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  (void)hi;
  int ymm = (lo & 0x6) == 0x6, zmm = ymm && (lo & 0xe0) == 0xe0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  if (ymm && ((b >> 5) & 1)) f |= VMC_CPU_AVX2;
  if (ymm && fma) f |= VMC_CPU_FMA;
  if (zmm && ((b >> 16) & 1)) f |= VMC_CPU_AVX512F;
  if (zmm && ((b >> 30) & 1)) f |= VMC_CPU_AVX512BW;
  if (zmm && ((b >> 31) & 1)) f |= VMC_CPU_AVX512VL;
  if (zmm && ((c >> 11) & 1)) f |= VMC_CPU_AVX512VNNI;
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d) && ymm && ((a >> 4) & 1)) f |= VMC_CPU_AVXVNNI;
  return f;
}

static unsigned g_features;
static const char *g_isa;
static int g_level = -1; /* VMC_ISA_* of g_isa, set last */
static char g_names[128];

/* The ISA paths' names, indexed by VMC_ISA_*. */
static const char *const k_isa_names[] = {"ref", "avx2", "avx512"};

/* VMC_ISA_* of a path's name, or -1. */
static int isa_level_of(const char *name) {
  for (int i = 0; i < (int)(sizeof k_isa_names / sizeof k_isa_names[0]); i++)
    if (!strcmp(name, k_isa_names[i])) return i;
  return -1;
}

int vmc_isa_known(const char *name) { return name && isa_level_of(name) >= 0; }

static void init_all(void) {
  unsigned f = detect();
  static const struct { unsigned bit; const char *name; } names[] = {
      {VMC_CPU_AVX2, "avx2"},         {VMC_CPU_FMA, "fma"},
      {VMC_CPU_AVX512F, "avx512f"},   {VMC_CPU_AVX512BW, "avx512bw"},
      {VMC_CPU_AVX512VL, "avx512vl"}, {VMC_CPU_AVX512VNNI, "avx512vnni"},
      {VMC_CPU_AVXVNNI, "avxvnni"}};
  char buf[128] = "";
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (f & names[i].bit) {
      if (buf[0]) strcat(buf, " ");
      strcat(buf, names[i].name);
    }
  int best = (f & VMC_CPU_NEEDS_AVX512) == VMC_CPU_NEEDS_AVX512 ? VMC_ISA_AVX512
             : (f & VMC_CPU_NEEDS_AVX2) == VMC_CPU_NEEDS_AVX2   ? VMC_ISA_AVX2
                                                                : VMC_ISA_REF;
  const char *want = getenv("VMC_ISA");
  /* Only ever step down: a forced ISA the CPU lacks falls back to the best
   * (an unknown name changes nothing; the tool refuses it). */
  const int forced = want && *want ? isa_level_of(want) : -1;
  if (forced >= 0 && forced < best) best = forced;
  g_features = f;
  memcpy(g_names, buf, sizeof g_names);
  __atomic_store_n(&g_isa, k_isa_names[best], __ATOMIC_RELEASE);
  __atomic_store_n(&g_level, best, __ATOMIC_RELEASE);
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void init_once(void) { pthread_once(&g_once, init_all); }

unsigned vmc_cpu_features(void) {
  init_once();
  return g_features;
}
const char *vmc_cpu_features_str(void) {
  init_once();
  return g_names;
}
const char *vmc_isa_name(void) {
  init_once();
  return g_isa;
}
int vmc_cpu_runs(int isa) {
  const unsigned f = vmc_cpu_features();
  switch (isa) {
  case VMC_ISA_REF: return 1;
  case VMC_ISA_AVX2: return (f & VMC_CPU_NEEDS_AVX2) == VMC_CPU_NEEDS_AVX2;
  case VMC_ISA_AVX512: return (f & VMC_CPU_NEEDS_AVX512) == VMC_CPU_NEEDS_AVX512;
  default: return 0;
  }
}
int vmc_isa_level(void) {
  const int l = __atomic_load_n(&g_level, __ATOMIC_ACQUIRE);
  if (l >= 0) return l;
  init_once();
  return __atomic_load_n(&g_level, __ATOMIC_ACQUIRE);
}

static int g_threads;

void vmc_set_threads(int n) {
  if (n <= 0) n = omp_get_num_procs();
  if (n < 1) n = 1;
  g_threads = n;
  omp_set_num_threads(n);
}

int vmc_get_threads(void) {
  if (g_threads <= 0) vmc_set_threads(0);
  return g_threads;
}
