#ifndef PZ_CRC32C_H
#define PZ_CRC32C_H
#include <stddef.h>
#include <stdint.h>

/// CRC-32C (Castagnoli, the polynomial S3's `x-amz-checksum-crc32c` uses) of `length` bytes, continuing from
/// `crc` (0 to start). Uses the CPU's CRC32 instruction where there is one (x86-64 with SSE 4.2, checked once at
/// run time), about 20 times faster than the table; the result is the same either way.
uint32_t pz_crc32c(uint32_t crc, const void *_Nullable data, size_t length);

/// The portable table version, always; for tests that compare both paths.
uint32_t pz_crc32c_portable(uint32_t crc, const void *_Nullable data, size_t length);

/// The CRC-32C of A followed by B, from A's and B's CRC-32C and B's length: how ranges fetched in parallel are
/// checked against the whole object's checksum without reading the file again.
uint32_t pz_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b);

/// 1 when `pz_crc32c` uses the CPU instruction.
int pz_crc32c_hardware(void);

#endif
