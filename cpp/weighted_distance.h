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
#include <string>
#include <vector>

#include "errors.h"
#include "parallel.h"

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

// n rows of T, row i at data + i * stride elements.
template <class T>
struct StridedRows {
  const T* data;
  size_t n, stride;
  const T* row(size_t i) const { return data + i * stride; }
};

// out[i]: weighted distance of query rows_a[i] (with its weights row) to code
// rows_b[i]. Per pair with once(), so equal to what a search reports.
inline void weighted_pair_distances(StridedRows<uint8_t> queries, StridedRows<float> weights,
                                    StridedRows<uint8_t> codes, size_t code_size, const int64_t* rows_a,
                                    const int64_t* rows_b, size_t n_pairs, float* out, int n_threads) {
  for (size_t i = 0; i < n_pairs; ++i)
    if (rows_a[i] < 0 || size_t(rows_a[i]) >= queries.n || rows_b[i] < 0 || size_t(rows_b[i]) >= codes.n)
      throw InvalidInput("pair " + std::to_string(i) + " names a row out of range");
  for (size_t q = 0; q < weights.n; ++q) check_weights(weights.row(q), code_size * 8);
  parallel_for(n_pairs, n_threads, [&](size_t i) {
    const size_t a = size_t(rows_a[i]);
    out[i] = WeightedDistance::once(queries.row(a), weights.row(a), codes.row(size_t(rows_b[i])), code_size);
  });
}

}  // namespace fpmatch
