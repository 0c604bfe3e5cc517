// The packed form of ciphertext values, shared by the encrypted-scoring kernels
// and by the code that makes and stores ciphertexts.
//
// A value x, taken mod q and centred in [-h, h] with h = (q - 1) / 2, is stored
// as u = x + h in [0, q - 1], in 6 bytes little-endian (q < 2^48). Zero is
// stored as h. Packing accepts any int64 (SEAL's residues in [0, q), centred
// values, or sums of them) and reduces it first; unpacking refuses u > q - 1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace fpmatch {
namespace modq {

constexpr size_t kPackedBytes = 6;                    // bytes per stored value
constexpr uint64_t kMaxModulus = uint64_t(1) << 48;   // every u < q fits the 6 bytes

// One packed value (little-endian on every host).
inline uint64_t load_packed(const uint8_t* p) {
  uint64_t u = 0;
  for (size_t b = 0; b < kPackedBytes; ++b) u |= uint64_t(p[b]) << (8 * b);
  return u;
}

// The same value read as one eight-byte load, the next value's first two bytes masked
// off: only where two more bytes of the row follow it.
inline uint64_t load_packed_within(const uint8_t* p) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "an eight-byte load is read as little-endian");
  uint64_t u;
  std::memcpy(&u, p, sizeof u);
  return u & (kMaxModulus - 1);
}

inline void store_packed(uint64_t u, uint8_t* p) {
  for (size_t b = 0; b < kPackedBytes; ++b) p[b] = uint8_t(u >> (8 * b));
}

// out[6i .. 6i+5] = the stored form of x[i] mod q, for i < count (q odd, below 2^48).
inline void pack(const int64_t* x, size_t count, uint64_t q, uint8_t* out) {
  const int64_t sq = int64_t(q);
  const uint64_t h = q / 2;
  for (size_t i = 0; i < count; ++i) {
    int64_t r = x[i] % sq;
    if (r < 0) r += sq;
    uint64_t u = uint64_t(r) + h;  // r <= h: centred r; above: centred r - q, stored r - q + h
    if (u >= q) u -= q;
    store_packed(u, out + kPackedBytes * i);
  }
}

// x[i] = the centred value stored at p[6i ..]; false (x then meaningless) if some u > q - 1.
inline bool unpack(const uint8_t* p, size_t count, uint64_t q, int64_t* x) {
  const uint64_t h = q / 2;
  uint64_t worst = 0;
  for (size_t i = 0; i < count; ++i) {
    const uint64_t u = load_packed(p + kPackedBytes * i);
    worst = u > worst ? u : worst;
    x[i] = int64_t(u) - int64_t(h);
  }
  return worst <= q - 1;
}

}  // namespace modq
}  // namespace fpmatch
