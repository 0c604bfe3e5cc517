// The negacyclic NTT modulo one prime q < 2^62, both ways, in SEAL's order:
// value i of an NTT array is the polynomial at psi^(2 * bitrev(i) + 1), psi a
// primitive 2N-th root of unity (the caller passes SEAL's, which is value 0 of
// the NTT of X). Fresh SEAL ciphertexts come out in NTT form: the inverse turns
// their c0 half back into coefficients without a second copy out of SEAL. The
// hybrid path takes one probe polynomial per request through the forward one;
// SEAL's own is reachable from Python only through a list of N integers. No
// secret is involved: both are fixed linear maps of public values.
//
// Butterflies (Cooley-Tukey forward, Gentleman-Sande inverse) with Shoup's
// precomputed quotients: each twiddle w has w' = floor(w * 2^64 / q), and
// x * w mod q = x * w - floor(x * w' / 2^64) * q, off by at most one q.
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

// A twiddle and its Shoup quotient; times() is x * w mod q for x in [0, q).
struct Twiddle {
  uint64_t w, quotient;
  Twiddle(uint64_t w_ = 0, uint64_t q = 1) : w(w_), quotient(uint64_t((u128(w_) << 64) / q)) {}
  uint64_t times(uint64_t x, uint64_t q) const {
    const uint64_t estimate = uint64_t((u128(x) * quotient) >> 64);
    const uint64_t r = x * w - estimate * q;  // in [0, 2q), exact modulo 2^64
    return r >= q ? r - q : r;
  }
};

// Refuses anything but N a power of two from 2 to 2^17, q odd below 2^62 and
// psi a primitive 2N-th root of unity mod q; returns log2 N.
inline int check_parameters(size_t n, uint64_t q, uint64_t psi) {
  if (n < 2 || n > (size_t(1) << 17) || (n & (n - 1)) != 0) throw InvalidInput("N must be a power of two");
  if (q < 3 || q % 2 == 0 || q >= (uint64_t(1) << 62)) throw InvalidInput("q must be odd and below 2^62");
  if (psi == 0 || psi >= q || pow_mod(psi, n, q) != q - 1)
    throw InvalidInput("psi must be a primitive 2N-th root of unity mod q");
  int bits = 0;
  while ((size_t(1) << bits) < n) ++bits;
  return bits;
}

// Twiddle k is root^bitrev(k), k < N.
inline std::vector<Twiddle> bit_reversed_powers(size_t n, int bits, uint64_t root, uint64_t q) {
  std::vector<uint64_t> power(n);  // root^k by successive products: N multiplies, not N exponentiations
  power[0] = 1;
  for (size_t k = 1; k < n; ++k) power[k] = mul_mod(power[k - 1], root, q);
  std::vector<Twiddle> out;
  out.reserve(n);
  for (size_t k = 0; k < n; ++k) out.emplace_back(power[bit_reverse(k, bits)], q);
  return out;
}

class ForwardNtt {
 public:
  ForwardNtt(size_t n, uint64_t q, uint64_t psi)
      : n_(n), q_(q), twiddle_(bit_reversed_powers(n, check_parameters(n, q, psi), psi, q)) {}

  // a (N coefficients in [0, q)) becomes the polynomial's NTT values in [0, q), SEAL's order.
  void apply(uint64_t* a) const {
    const uint64_t q = q_;
    size_t t = n_;
    for (size_t m = 1; m < n_; m <<= 1) {
      t >>= 1;
      for (size_t i = 0, j1 = 0; i < m; ++i, j1 += 2 * t) {
        const Twiddle& w = twiddle_[m + i];
        for (size_t j = j1; j < j1 + t; ++j) {
          const uint64_t u = a[j], v = w.times(a[j + t], q);
          const uint64_t sum = u + v;
          a[j] = sum >= q ? sum - q : sum;
          a[j + t] = u >= v ? u - v : u + q - v;
        }
      }
    }
  }

 private:
  size_t n_;
  uint64_t q_;
  std::vector<Twiddle> twiddle_;
};

class InverseNtt {
 public:
  InverseNtt(size_t n, uint64_t q, uint64_t psi)
      : n_(n),
        q_(q),
        twiddle_(bit_reversed_powers(n, check_parameters(n, q, psi), pow_mod(psi, q - 2, q), q)),  // q is prime
        n_inverse_(pow_mod(n % q, q - 2, q), q) {}

  // a (N values in [0, q), NTT order) becomes the polynomial's coefficients in [0, q).
  void apply(uint64_t* a) const {
    const uint64_t q = q_;
    size_t t = 1;
    for (size_t m = n_; m > 1; m >>= 1) {
      const size_t h = m / 2;
      for (size_t i = 0, j1 = 0; i < h; ++i, j1 += 2 * t) {
        const Twiddle& w = twiddle_[h + i];
        for (size_t j = j1; j < j1 + t; ++j) {
          const uint64_t u = a[j], v = a[j + t];
          const uint64_t sum = u + v;
          a[j] = sum >= q ? sum - q : sum;
          a[j + t] = w.times(u >= v ? u - v : u + q - v, q);
        }
      }
      t *= 2;
    }
    for (size_t j = 0; j < n_; ++j) a[j] = n_inverse_.times(a[j], q);
  }

 private:
  size_t n_;
  uint64_t q_;
  std::vector<Twiddle> twiddle_;
  Twiddle n_inverse_;
};

}  // namespace ntt
}  // namespace fpmatch
