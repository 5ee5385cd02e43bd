// Keeps a binary linked on a newer glibc loadable by glibc 2.34 (Amazon Linux 2023).
//
// glibc 2.35 gave hypotf a new symbol version, and the static Swift runtime calls hypotf, so every binary linked on
// Debian 12 would need hypotf@GLIBC_2.35 and fail to load on AL2023. Defining hypotf here, forwarding to the
// original version, makes the link resolve to this definition and the old version instead.
#if defined(__linux__)
#include <features.h>  // defines __GLIBC__
#endif
#if defined(__linux__) && defined(__GLIBC__)
#if defined(__x86_64__)
__asm__(".symver pz_hypotf_compat, hypotf@GLIBC_2.2.5");
#define PZ_HAVE_COMPAT 1
#elif defined(__aarch64__)
__asm__(".symver pz_hypotf_compat, hypotf@GLIBC_2.17");
#define PZ_HAVE_COMPAT 1
#endif
#ifdef PZ_HAVE_COMPAT
extern float pz_hypotf_compat(float x, float y);
float hypotf(float x, float y) { return pz_hypotf_compat(x, y); }
#endif
#endif

#include "CGlibcCompat.h"
#if defined(__linux__) && defined(__GLIBC__)
#include <malloc.h>
void pz_fix_mmap_threshold(int bytes) { (void)mallopt(M_MMAP_THRESHOLD, bytes); }
#else
void pz_fix_mmap_threshold(int bytes) { (void)bytes; }
#endif
