/* CRC-32, reflected polynomial 0xEDB88320, slicing by one byte. */
#include "core/core.h"

static uint32_t g_table[256];
static int g_ready;

static void init_table(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    g_table[i] = c;
  }
  __atomic_store_n(&g_ready, 1, __ATOMIC_RELEASE);
}

uint32_t vmc_crc32(uint32_t crc, const void *data, size_t n) {
  if (!__atomic_load_n(&g_ready, __ATOMIC_ACQUIRE)) init_table();
  const uint8_t *p = data;
  crc = ~crc;
  for (size_t i = 0; i < n; i++) crc = g_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}
