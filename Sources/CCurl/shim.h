#ifndef PZ_CCURL_SHIM_H
#define PZ_CCURL_SHIM_H
// curl_easy_setopt and curl_easy_getinfo are variadic, which Swift cannot call.
// These typed wrappers, one per argument kind, are the whole C surface the HTTP layer uses.
#include <curl/curl.h>

typedef size_t (*pz_curl_datafn)(char *_Nonnull, size_t, size_t, void *_Nullable);
typedef int (*pz_curl_seekfn)(void *_Nullable, curl_off_t, int);
typedef int (*pz_curl_xferinfofn)(void *_Nullable, curl_off_t, curl_off_t, curl_off_t, curl_off_t);

static inline CURLcode pz_curl_setopt_long(CURL *_Nonnull h, CURLoption o, long v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode pz_curl_setopt_off_t(CURL *_Nonnull h, CURLoption o, curl_off_t v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode pz_curl_setopt_string(CURL *_Nonnull h, CURLoption o, const char *_Nullable v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode pz_curl_setopt_ptr(CURL *_Nonnull h, CURLoption o, void *_Nullable v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode pz_curl_setopt_slist(CURL *_Nonnull h, CURLoption o, struct curl_slist *_Nullable v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode pz_curl_setopt_datafn(CURL *_Nonnull h, CURLoption o, pz_curl_datafn _Nullable v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode pz_curl_setopt_seekfn(CURL *_Nonnull h, CURLoption o, pz_curl_seekfn _Nullable v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode pz_curl_setopt_xferinfofn(CURL *_Nonnull h, CURLoption o, pz_curl_xferinfofn _Nullable v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode pz_curl_getinfo_long(CURL *_Nonnull h, CURLINFO i, long *_Nonnull v) { return curl_easy_getinfo(h, i, v); }
static inline CURLcode pz_curl_getinfo_off_t(CURL *_Nonnull h, CURLINFO i, curl_off_t *_Nonnull v) { return curl_easy_getinfo(h, i, v); }
// Not curl_version(): to name its LDAP library, it initialises libldap, which resolves this host's own name
// (ldap_pvt_get_fqdn), 10 s on a system whose DNS does not answer. curl_version_info names what we print without.
static inline const curl_version_info_data *_Nonnull pz_curl_version_info(void) { return curl_version_info(CURLVERSION_NOW); }

#endif
