// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), written out so that key
// derivation and file authentication do not depend on any crypto library and
// give identical bytes on every platform.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace fpmatch {

using Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256() { reset(); }

  void reset() {
    state_ = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
              0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    total_bytes_ = 0;
    buffered_ = 0;
  }

  Sha256& update(const void* data, size_t len) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    total_bytes_ += len;
    if (buffered_ > 0) {
      size_t take = std::min(len, size_t(64) - buffered_);
      std::memcpy(buffer_ + buffered_, p, take);
      buffered_ += take;
      p += take;
      len -= take;
      if (buffered_ < 64) return *this;
      compress(buffer_);
      buffered_ = 0;
    }
    for (; len >= 64; p += 64, len -= 64) compress(p);
    std::memcpy(buffer_, p, len);
    buffered_ = len;
    return *this;
  }

  Digest finish() {
    uint64_t bit_len = total_bytes_ * 8;
    uint8_t pad[72] = {0x80};
    size_t pad_len = (buffered_ < 56) ? 56 - buffered_ : 120 - buffered_;
    for (int i = 0; i < 8; ++i) pad[pad_len + i] = uint8_t(bit_len >> (56 - 8 * i));
    update(pad, pad_len + 8);
    Digest out;
    for (int i = 0; i < 8; ++i)
      for (int b = 0; b < 4; ++b) out[4 * i + b] = uint8_t(state_[i] >> (24 - 8 * b));
    reset();
    return out;
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void compress(const uint8_t* block) {
    static const uint32_t K[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(block[4 * i]) << 24 | uint32_t(block[4 * i + 1]) << 16 |
             uint32_t(block[4 * i + 2]) << 8 | uint32_t(block[4 * i + 3]);
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
    uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g; g = f; f = e; e = d + t1;
      d = c; c = b; b = a; a = t1 + t2;
    }
    state_[0] += a; state_[1] += b; state_[2] += c; state_[3] += d;
    state_[4] += e; state_[5] += f; state_[6] += g; state_[7] += h;
  }

  std::array<uint32_t, 8> state_;
  uint8_t buffer_[64];
  size_t buffered_;
  uint64_t total_bytes_;
};

// Streaming HMAC-SHA256. The key pads are absorbed once, so re-using one
// object for many messages (key-stream blocks, large files) costs no rehash.
class HmacSha256 {
 public:
  HmacSha256(const uint8_t* key, size_t key_len) {
    uint8_t block[64] = {0};
    if (key_len > 64) {
      Digest kd = Sha256().update(key, key_len).finish();
      std::memcpy(block, kd.data(), kd.size());
    } else if (key_len > 0) {
      std::memcpy(block, key, key_len);
    }
    uint8_t ipad[64], opad[64];
    for (int i = 0; i < 64; ++i) {
      ipad[i] = block[i] ^ 0x36;
      opad[i] = block[i] ^ 0x5c;
    }
    inner_keyed_.update(ipad, 64);
    outer_keyed_.update(opad, 64);
    inner_ = inner_keyed_;
  }

  HmacSha256& update(const void* data, size_t len) {
    inner_.update(data, len);
    return *this;
  }

  // Returns the tag and makes the object ready for the next message.
  Digest finish() {
    Digest inner_digest = inner_.finish();
    Sha256 outer = outer_keyed_;
    Digest tag = outer.update(inner_digest.data(), inner_digest.size()).finish();
    inner_ = inner_keyed_;
    return tag;
  }

 private:
  Sha256 inner_keyed_, outer_keyed_, inner_;
};

inline Digest hmac_sha256(const uint8_t* key, size_t key_len, const void* msg, size_t len) {
  return HmacSha256(key, key_len).update(msg, len).finish();
}

// Compares without an early exit so the time taken does not reveal where
// two tags first differ.
inline bool equal_constant_time(const uint8_t* a, const uint8_t* b, size_t n) {
  uint8_t diff = 0;
  for (size_t i = 0; i < n; ++i) diff |= uint8_t(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace fpmatch
