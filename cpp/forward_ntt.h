// The forward negacyclic NTT modulo one prime q < 2^62, in SEAL's order (the
// inverse of negacyclic_ntt.h's InverseNtt): value i of the output is the
// polynomial at psi^(2 * bitrev(i) + 1), psi SEAL's primitive 2N-th root of
// unity. The hybrid path takes one probe polynomial through it per request;
// SEAL's own transform is reachable from Python only through a list of N
// integers, which costs milliseconds. A fixed linear map of public values.
//
// Cooley-Tukey butterflies on bit-reversed powers of psi, with Shoup's
// precomputed quotients (see InverseNtt): x * w mod q = x * w - floor(x * w' / 2^64) * q,
// off by at most one q.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "errors.h"
#include "negacyclic_ntt.h"

namespace fpmatch {
namespace ntt {

class ForwardNtt {
 public:
  // The same parameter checks as InverseNtt.
  ForwardNtt(size_t n, uint64_t q, uint64_t psi) : n_(n), q_(q), root_(n), quotient_(n) {
    if (n < 2 || n > (size_t(1) << 17) || (n & (n - 1)) != 0) throw InvalidInput("N must be a power of two");
    if (q < 3 || q % 2 == 0 || q >= (uint64_t(1) << 62)) throw InvalidInput("q must be odd and below 2^62");
    if (psi == 0 || psi >= q || pow_mod(psi, n, q) != q - 1)
      throw InvalidInput("psi must be a primitive 2N-th root of unity mod q");
    int bits = 0;
    while ((size_t(1) << bits) < n) ++bits;
    std::vector<uint64_t> power(n);  // psi^k by successive products: N multiplies, not N exponentiations
    power[0] = 1;
    for (size_t k = 1; k < n; ++k) power[k] = mul_mod(power[k - 1], psi, q);
    for (size_t k = 0; k < n; ++k) {
      root_[k] = power[bit_reverse(k, bits)];
      quotient_[k] = uint64_t((u128(root_[k]) << 64) / q);
    }
  }

  size_t size() const { return n_; }
  uint64_t modulus() const { return q_; }

  // a (N coefficients in [0, q)) becomes the polynomial's NTT values in [0, q), SEAL's order.
  void apply(uint64_t* a) const {
    const uint64_t q = q_;
    size_t t = n_;
    for (size_t m = 1; m < n_; m <<= 1) {
      t >>= 1;
      for (size_t i = 0, j1 = 0; i < m; ++i, j1 += 2 * t) {
        const uint64_t w = root_[m + i], w_quotient = quotient_[m + i];
        for (size_t j = j1; j < j1 + t; ++j) {
          const uint64_t u = a[j], v = times(a[j + t], w, w_quotient);
          const uint64_t sum = u + v;
          a[j] = sum >= q ? sum - q : sum;
          a[j + t] = u >= v ? u - v : u + q - v;
        }
      }
    }
  }

 private:
  uint64_t times(uint64_t x, uint64_t w, uint64_t w_quotient) const {
    const uint64_t estimate = uint64_t((u128(x) * w_quotient) >> 64);
    const uint64_t r = x * w - estimate * q_;  // in [0, 2q), exact modulo 2^64
    return r >= q_ ? r - q_ : r;
  }

  size_t n_;
  uint64_t q_;
  std::vector<uint64_t> root_, quotient_;
};

}  // namespace ntt
}  // namespace fpmatch
