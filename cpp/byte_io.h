// Little-endian integers in and out of byte buffers, with bounds checks on read.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "errors.h"

namespace fpmatch {

inline void put_u64(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(uint8_t(v >> (8 * i)));
}

class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t len) : data_(data), len_(len) {}

  uint64_t u64() {
    const uint8_t* p = bytes(8);
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);
    return v;
  }

  const uint8_t* bytes(size_t n) {
    if (n > len_ - pos_) throw AuthenticationFailed("index bytes are truncated");
    pos_ += n;
    return data_ + pos_ - n;
  }

  size_t remaining() const { return len_ - pos_; }

 private:
  const uint8_t* data_;
  size_t len_, pos_ = 0;
};

}  // namespace fpmatch
