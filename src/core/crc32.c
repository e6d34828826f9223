/* CRC-32, reflected polynomial 0xEDB88320 (zlib's), slicing by 8 bytes. */
#include "core/core.h"

static uint32_t g_table[8][256];
static int g_ready;

static void init_table(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    g_table[0][i] = c;
  }
  /* g_table[k][i]: the CRC of byte i followed by k zero bytes. */
  for (int k = 1; k < 8; k++)
    for (uint32_t i = 0; i < 256; i++)
      g_table[k][i] = g_table[0][g_table[k - 1][i] & 0xff] ^ (g_table[k - 1][i] >> 8);
  __atomic_store_n(&g_ready, 1, __ATOMIC_RELEASE);
}

uint32_t vmc_crc32(uint32_t crc, const void *data, size_t n) {
  if (!__atomic_load_n(&g_ready, __ATOMIC_ACQUIRE)) init_table();
  const uint8_t *p = data;
  crc = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    const uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                               (uint32_t)p[3] << 24);
    crc = g_table[7][lo & 0xff] ^ g_table[6][(lo >> 8) & 0xff] ^ g_table[5][(lo >> 16) & 0xff] ^
          g_table[4][lo >> 24] ^ g_table[3][p[4]] ^ g_table[2][p[5]] ^ g_table[1][p[6]] ^
          g_table[0][p[7]];
  }
  for (; n; n--, p++) crc = g_table[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
  return ~crc;
}
