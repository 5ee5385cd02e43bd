#ifndef PZ_CCRYPTO_SHIM_H
#define PZ_CCRYPTO_SHIM_H
// libcrypto, as much as SigV4 and S3 checksums need: SHA-256, HMAC-SHA256, MD5.
// The EVP digest API is used for streaming because the low-level SHA256_* calls are deprecated in OpenSSL 3.
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <openssl/md5.h>
#include <openssl/crypto.h>
#include <openssl/opensslv.h>

static inline const char *_Nonnull pz_openssl_version(void) { return OpenSSL_version(OPENSSL_VERSION); }

#endif
