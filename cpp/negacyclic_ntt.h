// The inverse negacyclic NTT modulo one prime q < 2^62, in SEAL's order: value i
// of an NTT array is the polynomial at psi^(2 * bitrev(i) + 1), psi a primitive
// 2N-th root of unity (the caller passes SEAL's, which is value 0 of the NTT of
// X). Fresh SEAL ciphertexts come out in NTT form; turning their c0 half back
// into coefficients here saves a second copy out of SEAL. No secret is involved:
// it is a fixed linear map of public values.
//
// Gentleman-Sande butterflies with Shoup's precomputed quotients: each twiddle
// w has w' = floor(w * 2^64 / q), and x * w mod q = x * w - floor(x * w' / 2^64) * q,
// off by at most one q.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "errors.h"

namespace fpmatch {
namespace ntt {

using u128 = unsigned __int128;

inline uint64_t mul_mod(uint64_t a, uint64_t b, uint64_t q) { return uint64_t(u128(a) * b % q); }

inline uint64_t pow_mod(uint64_t a, uint64_t e, uint64_t q) {
  uint64_t r = 1;
  for (; e; e >>= 1, a = mul_mod(a, a, q))
    if (e & 1) r = mul_mod(r, a, q);
  return r;
}

inline size_t bit_reverse(size_t i, int bits) {
  size_t r = 0;
  for (int b = 0; b < bits; ++b) r |= ((i >> b) & 1) << (bits - 1 - b);
  return r;
}

class InverseNtt {
 public:
  // Refuses anything but N a power of two from 2 to 2^17, q odd below 2^62 and
  // psi a primitive 2N-th root of unity mod q.
  InverseNtt(size_t n, uint64_t q, uint64_t psi) : n_(n), q_(q), twiddle_(n), quotient_(n) {
    if (n < 2 || n > (size_t(1) << 17) || (n & (n - 1)) != 0) throw InvalidInput("N must be a power of two");
    if (q < 3 || q % 2 == 0 || q >= (uint64_t(1) << 62)) throw InvalidInput("q must be odd and below 2^62");
    if (psi == 0 || psi >= q || pow_mod(psi, n, q) != q - 1)
      throw InvalidInput("psi must be a primitive 2N-th root of unity mod q");
    int bits = 0;
    while ((size_t(1) << bits) < n) ++bits;
    const uint64_t inverse_psi = pow_mod(psi, q - 2, q);  // q is prime
    for (size_t k = 0; k < n; ++k) {
      twiddle_[k] = pow_mod(inverse_psi, bit_reverse(k, bits), q);
      quotient_[k] = uint64_t((u128(twiddle_[k]) << 64) / q);
    }
    n_inverse_ = pow_mod(n % q, q - 2, q);
    n_inverse_quotient_ = uint64_t((u128(n_inverse_) << 64) / q);
  }

  // a (N values in [0, q), NTT order) becomes the polynomial's coefficients in [0, q).
  void apply(uint64_t* a) const {
    const uint64_t q = q_;
    size_t t = 1;
    for (size_t m = n_; m > 1; m >>= 1) {
      const size_t h = m / 2;
      for (size_t i = 0, j1 = 0; i < h; ++i, j1 += 2 * t) {
        const uint64_t w = twiddle_[h + i], w_quotient = quotient_[h + i];
        for (size_t j = j1; j < j1 + t; ++j) {
          const uint64_t u = a[j], v = a[j + t];
          const uint64_t sum = u + v;
          a[j] = sum >= q ? sum - q : sum;
          a[j + t] = times(u >= v ? u - v : u + q - v, w, w_quotient);
        }
      }
      t *= 2;
    }
    for (size_t j = 0; j < n_; ++j) a[j] = times(a[j], n_inverse_, n_inverse_quotient_);
  }

 private:
  uint64_t times(uint64_t x, uint64_t w, uint64_t w_quotient) const {
    const uint64_t estimate = uint64_t((u128(x) * w_quotient) >> 64);
    const uint64_t r = x * w - estimate * q_;  // in [0, 2q), exact modulo 2^64
    return r >= q_ ? r - q_ : r;
  }

  size_t n_;
  uint64_t q_;
  std::vector<uint64_t> twiddle_, quotient_;
  uint64_t n_inverse_ = 0, n_inverse_quotient_ = 0;
};

}  // namespace ntt
}  // namespace fpmatch
