// Deterministic pseudo-random stream from a secret key: HMAC-SHA256 in counter
// mode. Block i = HMAC(key, label || 0x00 || uint64_be(i)); bytes are consumed in
// order and read as little-endian words. Only integer operations, so every
// platform and every later version derive exactly the same values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "digest.h"

namespace fpmatch {

class KeyStream {
 public:
  KeyStream(const std::vector<uint8_t>& key, const std::string& label)
      : mac_(key.data(), key.size()), label_(label) {}

  uint64_t next_u64() {
    if (used_ + 8 > block_.size()) refill();
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | block_[used_ + i];
    used_ += 8;
    return v;
  }

 private:
  void refill() {
    uint8_t ctr[9] = {0};
    for (int i = 0; i < 8; ++i) ctr[1 + i] = uint8_t(counter_ >> (56 - 8 * i));
    mac_.update(label_.data(), label_.size()).update(ctr, sizeof ctr);
    block_ = mac_.finish();
    ++counter_;
    used_ = 0;
  }

  HmacSha256 mac_;
  std::string label_;
  Digest block_{};
  size_t used_ = 32;
  uint64_t counter_ = 0;
};

// A named sub-key, so one master key serves several independent purposes
// (transform, file authentication) without one revealing another.
inline std::vector<uint8_t> derive_subkey(const std::vector<uint8_t>& master, const std::string& purpose) {
  std::string msg = "fpmatch.subkey.v1." + purpose;
  Digest d = hmac_sha256(master.data(), master.size(), msg.data(), msg.size());
  return std::vector<uint8_t>(d.begin(), d.end());
}

}  // namespace fpmatch
