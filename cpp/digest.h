// SHA-256 and HMAC-SHA256 from OpenSSL's libcrypto (3.0 or later), linked
// statically with hidden symbols: the module carries its own private copy.
#pragma once

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

namespace fpmatch {

using Digest = std::array<uint8_t, 32>;

namespace digest_detail {

inline void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("libcrypto: ") + what + " failed");
}

struct Algorithms {
  EVP_MD* sha256 = nullptr;
  EVP_MAC* hmac = nullptr;

  Algorithms() {
    // No configuration file: nothing on the host may change which implementation
    // derives keys. No clean-up at exit: a thread still hashing while the
    // interpreter ends must not find the library torn down under it.
    check(OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG | OPENSSL_INIT_NO_ATEXIT, nullptr) == 1, "init");
    sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    hmac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    check(sha256 != nullptr && hmac != nullptr, "fetching SHA256 and HMAC");
  }
};

// Fetched once, then shared read-only by every thread.
inline const Algorithms& algorithms() {
  static const Algorithms fetched;
  return fetched;
}

struct MacCtxFree {
  void operator()(EVP_MAC_CTX* ctx) const { EVP_MAC_CTX_free(ctx); }
};

}  // namespace digest_detail

inline Digest sha256(const void* data, size_t len) {
  Digest out;
  unsigned int written = 0;
  digest_detail::check(EVP_Digest(data, len, out.data(), &written, digest_detail::algorithms().sha256, nullptr) == 1 &&
                           written == out.size(),
                       "SHA-256");
  return out;
}

// Streaming HMAC-SHA256. The key is absorbed once, so one object serves many
// messages (key-stream blocks) without rehashing it.
class HmacSha256 {
 public:
  HmacSha256(const uint8_t* key, size_t key_len) : ctx_(EVP_MAC_CTX_new(digest_detail::algorithms().hmac)) {
    digest_detail::check(ctx_ != nullptr, "HMAC context");
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    // A null key would mean "keep the previous one": an empty key is passed as zero bytes of something.
    static const uint8_t kNone = 0;
    digest_detail::check(EVP_MAC_init(ctx_.get(), key_len ? key : &kNone, key_len, params) == 1, "HMAC key");
  }

  HmacSha256& update(const void* data, size_t len) {
    digest_detail::check(EVP_MAC_update(ctx_.get(), static_cast<const unsigned char*>(data), len) == 1,
                         "HMAC update");
    return *this;
  }

  // Returns the tag and makes the object ready for the next message under the same key.
  Digest finish() {
    Digest tag;
    size_t written = 0;
    digest_detail::check(EVP_MAC_final(ctx_.get(), tag.data(), &written, tag.size()) == 1 && written == tag.size(),
                         "HMAC final");
    digest_detail::check(EVP_MAC_init(ctx_.get(), nullptr, 0, nullptr) == 1, "HMAC restart");
    return tag;
  }

 private:
  std::unique_ptr<EVP_MAC_CTX, digest_detail::MacCtxFree> ctx_;
};

inline Digest hmac_sha256(const uint8_t* key, size_t key_len, const void* msg, size_t len) {
  return HmacSha256(key, key_len).update(msg, len).finish();
}

// Takes the same time wherever two tags first differ.
inline bool equal_constant_time(const uint8_t* a, const uint8_t* b, size_t n) {
  return CRYPTO_memcmp(a, b, n) == 0;
}

}  // namespace fpmatch
