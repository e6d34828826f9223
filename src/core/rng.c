/* xoshiro256** seeded through splitmix64.  The state is plain data, so
 * checkpoints save and restore it exactly. */
#include "core/core.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void vmc_rng_seed(vmc_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
  r->has_spare = 0;
  r->spare = 0;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t vmc_rng_u64(vmc_rng *r) {
  uint64_t *s = r->s;
  uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return out;
}

uint32_t vmc_rng_below(vmc_rng *r, uint32_t n) {
  /* Lemire's multiply-shift with rejection: unbiased. */
  uint64_t m = (uint64_t)(uint32_t)(vmc_rng_u64(r) >> 32) * n;
  uint32_t lo = (uint32_t)m;
  if (lo < n) {
    uint32_t t = (uint32_t)(-n) % n;
    while (lo < t) {
      m = (uint64_t)(uint32_t)(vmc_rng_u64(r) >> 32) * n;
      lo = (uint32_t)m;
    }
  }
  return (uint32_t)(m >> 32);
}

float vmc_rng_uniform(vmc_rng *r) { return (float)(vmc_rng_u64(r) >> 40) * 0x1.0p-24f; }

float vmc_rng_normal(vmc_rng *r) {
  if (r->has_spare) {
    r->has_spare = 0;
    return r->spare;
  }
  double u1, u2;
  do u1 = (double)(vmc_rng_u64(r) >> 11) * 0x1.0p-53;
  while (u1 <= 0.0);
  u2 = (double)(vmc_rng_u64(r) >> 11) * 0x1.0p-53;
  double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
  r->spare = (float)(rad * sin(th));
  r->has_spare = 1;
  return (float)(rad * cos(th));
}

void vmc_rng_shuffle(vmc_rng *r, int *a, int n) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)vmc_rng_below(r, (uint32_t)i + 1);
    int t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}
