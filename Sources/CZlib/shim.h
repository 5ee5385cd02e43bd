#ifndef PZ_CZLIB_SHIM_H
#define PZ_CZLIB_SHIM_H
// zlib, which libcurl links already: inflate for the environment archive (zip's deflate, tar.gz), and crc32.
#include <zlib.h>

// inflateInit2 is a macro; Swift sees functions only.
static inline int pz_inflate_init(z_stream *_Nonnull stream, int window_bits) {
    return inflateInit2(stream, window_bits);
}

#endif
