#ifndef PZ_GLIBC_COMPAT_H
#define PZ_GLIBC_COMPAT_H
// glibc specifics: link-time symbols for the portable release (see compat.c), and process-wide allocator settings.

/// Fixes glibc malloc's mmap threshold at `bytes`, so blocks that large are always mapped and returned to the
/// system when freed. (glibc otherwise raises the threshold whenever such a block is freed, after which large
/// transfer buffers come from the heap and stay resident.) Does nothing on other C libraries.
void pz_fix_mmap_threshold(int bytes);

#endif
