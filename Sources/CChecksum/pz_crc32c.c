#include "pz_crc32c.h"
#include <pthread.h>
#include <string.h>

// Slicing-by-8 tables for the reflected polynomial 0x82F63B78, built once.
static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void build_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ ((c & 1) ? 0x82F63B78u : 0);
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        for (int t = 1; t < 8; t++) table[t][n] = (table[t - 1][n] >> 8) ^ table[0][table[t - 1][n] & 0xff];
    }
}

uint32_t pz_crc32c_portable(uint32_t crc, const void *data, size_t length) {
    pthread_once(&table_once, build_table);
    const unsigned char *p = data;
    uint32_t c = ~crc;
    while (length && ((uintptr_t)p & 7)) { c = table[0][(c ^ *p++) & 0xff] ^ (c >> 8); length--; }
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        word ^= c;
        c = table[7][word & 0xff] ^ table[6][(word >> 8) & 0xff] ^ table[5][(word >> 16) & 0xff] ^
            table[4][(word >> 24) & 0xff] ^ table[3][(word >> 32) & 0xff] ^ table[2][(word >> 40) & 0xff] ^
            table[1][(word >> 48) & 0xff] ^ table[0][word >> 56];
        p += 8;
        length -= 8;
    }
    while (length--) c = table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const void *data, size_t length) {
    const unsigned char *p = data;
    uint64_t c = ~crc;
    while (length && ((uintptr_t)p & 7)) { c = _mm_crc32_u8((uint32_t)c, *p++); length--; }
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = _mm_crc32_u64(c, word);
        p += 8;
        length -= 8;
    }
    while (length--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}

int pz_crc32c_hardware(void) { return __builtin_cpu_supports("sse4.2") ? 1 : 0; }

uint32_t pz_crc32c(uint32_t crc, const void *data, size_t length) {
    return pz_crc32c_hardware() ? crc32c_sse42(crc, data, length) : pz_crc32c_portable(crc, data, length);
}
#else
int pz_crc32c_hardware(void) { return 0; }

uint32_t pz_crc32c(uint32_t crc, const void *data, size_t length) { return pz_crc32c_portable(crc, data, length); }
#endif

// Combining: the CRC of A followed by B, from crc(A), crc(B) and B's length. Appending n zero bytes to A multiplies
// its CRC register by x^(8n) modulo the polynomial, so combine = crc(A) * x^(8 len(B)) mod P, xor crc(B) (the
// pre- and post-inversions cancel). Polynomials are kept reflected, as the CRC itself is: bit 31 is x^0.
#define PZ_CRC32C_POLY 0x82F63B78u

static uint32_t multiply_mod_p(uint32_t a, uint32_t b) {
    uint32_t product = 0;
    for (uint32_t bit = 1u << 31; bit != 0; bit >>= 1) {
        if (a & bit) product ^= b;
        b = (b & 1) ? (b >> 1) ^ PZ_CRC32C_POLY : b >> 1;  // b *= x
    }
    return product;
}

// x^(2^k) mod P for k = 0..63, built once by squaring.
static uint32_t x_to_2_to_k[64];
static pthread_once_t powers_once = PTHREAD_ONCE_INIT;

static void build_powers(void) {
    uint32_t p = 1u << 30;  // x^1
    for (int k = 0; k < 64; k++) {
        x_to_2_to_k[k] = p;
        p = multiply_mod_p(p, p);
    }
}

uint32_t pz_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b) {
    pthread_once(&powers_once, build_powers);
    // x^(8 length_b): the powers x^(2^k) for the bits of 8 * length_b (k starts at 3 for the factor 8).
    uint32_t shift = 1u << 31;  // x^0
    int k = 3;
    for (uint64_t n = length_b; n != 0 && k < 64; n >>= 1, k++) {
        if (n & 1) shift = multiply_mod_p(x_to_2_to_k[k], shift);
    }
    return multiply_mod_p(shift, crc_a) ^ crc_b;
}
