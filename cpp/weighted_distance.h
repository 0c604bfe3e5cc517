// Weighted Hamming distance: a mismatch in bit j costs weights[j].
//
// With a probe's bit reliabilities as weights (ProjectionHasher::hash), the
// weighted distance d estimates the angle between probe and stored template
// better than the plain count: 1 - 2 d estimates their cosine (asymmetric
// distance, Gordo et al. 2014). Used to re-rank a Hamming shortlist, where
// the table below makes one comparison cost code_size lookups.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "errors.h"

namespace fpmatch {

inline void check_weights(const float* weights, size_t count) {
  for (size_t i = 0; i < count; ++i)
    if (!(weights[i] >= 0.0f && std::isfinite(weights[i])))
      throw InvalidInput("weights must be finite and non-negative");
}

class WeightedDistance {
 public:
  // weights: bits = 8 * code_size floats.
  WeightedDistance(const uint8_t* query, const float* weights, size_t code_size)
      : query_(query, query + code_size), table_(code_size * 256) {
    // table_[b * 256 + v]: cost of mismatch pattern v in byte b, its bits added
    // from the highest down, as once() adds them.
    for (size_t b = 0; b < code_size; ++b) {
      float* t = table_.data() + b * 256;
      t[0] = 0.0f;
      for (unsigned v = 1; v < 256; ++v) t[v] = t[v & (v - 1)] + weights[b * 8 + lowest_bit(v)];
    }
  }

  float operator()(const uint8_t* code) const {
    float d = 0.0f;
    const float* t = table_.data();
    for (size_t b = 0; b < query_.size(); ++b, t += 256) d += t[query_[b] ^ code[b]];
    return d;
  }

  // One comparison without the table (cheaper when a query meets few codes);
  // the same additions in the same order, so the same float.
  static float once(const uint8_t* query, const float* weights, const uint8_t* code, size_t code_size) {
    float d = 0.0f;
    for (size_t b = 0; b < code_size; ++b) {
      const unsigned mismatch = query[b] ^ code[b];
      float byte_cost = 0.0f;  // adding 0 for a match changes nothing and needs no branch
      for (int bit = 7; bit >= 0; --bit) byte_cost += weights[b * 8 + size_t(bit)] * float(mismatch >> bit & 1u);
      d += byte_cost;
    }
    return d;
  }

 private:
  static unsigned lowest_bit(unsigned v) {
    unsigned i = 0;
    while (!(v & 1u)) v >>= 1, ++i;
    return i;
  }

  std::vector<uint8_t> query_;
  std::vector<float> table_;
};

}  // namespace fpmatch
