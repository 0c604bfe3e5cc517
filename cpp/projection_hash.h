// Keyed cancellable hash: sign of a secret random projection.
//
//   code_j = [ w_j . x' > 0 ],  j = 0 .. bits-1
//
// Schemes: "srp-v1" uses the key-derived vectors w_j as drawn. "srp-v2" (the
// default) orthonormalises them in consecutive groups of min(dim, 128)
// ("super-bit" hashing, Ji et al. 2012): within a group no two hyperplanes
// repeat each other, which lowers the variance of the angle each code
// estimates. Gram-Schmidt runs in double precision in a fixed order.
//
// x' is the template with a share a of its component along an optional shared
// offset direction u removed: x' = x - a (x.u) u. Face models often place every
// template in a narrow cone around u; hyperplanes through the origin then barely
// cut the cone and most bits carry no information. Removing most of the u
// component spreads the cone; keeping some of it keeps the cosine ranking of
// templates that sit at different distances from the axis (measured: README).
//
// hash() can also return each bit's reliability, |w_j . x'| normalised to sum
// to 1: a probe's weighted Hamming distance to a stored code (weighted_distance.h)
// estimates the angle better than the plain count, and reliabilities never leave
// the request that made them.
//
// The projection matrix W comes from the key alone: each entry is the sum of
// the four 16-bit lanes of one key-stream word minus 131070 (an integer whose
// distribution is close to Gaussian), so W is bit-identical everywhere. Bits are
// generated output-major, so a longer code extends a shorter one. Sums run in
// a fixed order in float32 with FMA contraction disabled (-ffp-contract=off),
// so codes do not depend on SIMD width or compiler.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "key_stream.h"
#include "parallel.h"

namespace fpmatch {

class ProjectionHasher {
 public:
  static constexpr size_t kMinKeyBytes = 16;
  static constexpr size_t kSuperBitDepth = 128;

  ProjectionHasher(const std::vector<uint8_t>& master_key, size_t dim, size_t bits,
                   std::vector<float> offset = {}, float offset_removal = 1.0f,
                   const std::string& scheme = "srp-v2")
      : scheme_(scheme), dim_(dim), bits_(bits), offset_(std::move(offset)), offset_removal_(offset_removal) {
    if (scheme != "srp-v1" && scheme != "srp-v2")
      throw InvalidInput("unknown hash scheme '" + scheme + "' (known: srp-v1, srp-v2)");
    if (master_key.size() < kMinKeyBytes)
      throw InvalidInput("key must be at least 16 bytes");
    if (dim < 2 || dim > 65536) throw InvalidInput("dim must be in [2, 65536]");
    if (bits < 64 || bits > 8192 || bits % 64 != 0)
      throw InvalidInput("bits must be a multiple of 64 in [64, 8192]");
    if (!offset_.empty()) check_offset();
    if (!(offset_removal > 0.0f && offset_removal <= 1.0f)) throw InvalidInput("offset_removal must be in (0, 1]");
    // v2 draws from the same stream as v1 and only then orthonormalises.
    KeyStream stream(derive_subkey(master_key, "transform"),
                     std::string("fpmatch.srp.v1.dim=") + std::to_string(dim));
    std::vector<double> rows(bits * dim);  // row j is w_j
    for (double& v : rows) v = entry(stream.next_u64());
    if (scheme_ == "srp-v2") orthonormalise_groups(rows);
    weights_.resize(dim * bits);
    for (size_t j = 0; j < bits; ++j)
      for (size_t i = 0; i < dim; ++i) weights_[i * bits + j] = float(rows[j * dim + i]);
  }

  const std::string& scheme() const { return scheme_; }

  size_t dim() const { return dim_; }
  size_t bits() const { return bits_; }
  size_t code_size() const { return bits_ / 8; }
  const std::vector<float>& weights() const { return weights_; }  // dim x bits, row-major
  const std::vector<float>& offset() const { return offset_; }
  float offset_removal() const { return offset_removal_; }

  // x: n rows of dim floats, row i at x + i * row_stride. out: n * code_size bytes.
  // Bit j of a code is bit (j % 8) of byte j / 8 (least significant first).
  // reliability, if not null, receives n * bits floats (each row sums to 1).
  void hash(const float* x, size_t n, size_t row_stride, uint8_t* out, int n_threads,
            float* reliability = nullptr) const {
    const size_t n_blocks = (n + kBlock - 1) / kBlock;
    parallel_for(n_blocks, n_threads, [&](size_t b) {
      size_t first = b * kBlock, rows = std::min(kBlock, n - first);
      hash_block(x + first * row_stride, rows, row_stride, first, out + first * code_size(),
                 reliability ? reliability + first * bits_ : nullptr);
    });
  }

 private:
  static constexpr size_t kBlock = 8;  // rows sharing one pass over W

  static float entry(uint64_t word) {
    int64_t s = int64_t(word & 0xffff) + int64_t((word >> 16) & 0xffff) +
                int64_t((word >> 32) & 0xffff) + int64_t(word >> 48);
    return float(s - 131070);
  }

  void check_offset() const {
    if (offset_.size() != dim_) throw InvalidInput("offset must have length dim");
    double norm2 = 0;
    for (float v : offset_) {
      if (!std::isfinite(v)) throw InvalidInput("offset contains NaN or Inf");
      norm2 += double(v) * v;
    }
    if (std::fabs(norm2 - 1.0) > 1e-3) throw InvalidInput("offset must be a unit vector");
  }

  // Modified Gram-Schmidt within each group of kSuperBitDepth consecutive rows.
  void orthonormalise_groups(std::vector<double>& rows) const {
    const size_t depth = std::min(dim_, kSuperBitDepth);
    for (size_t j = 0; j < bits_; ++j) {
      double* w = rows.data() + j * dim_;
      for (size_t prev = j - j % depth; prev < j; ++prev) {
        const double* u = rows.data() + prev * dim_;
        double dot = 0;
        for (size_t i = 0; i < dim_; ++i) dot += w[i] * u[i];
        for (size_t i = 0; i < dim_; ++i) w[i] -= dot * u[i];
      }
      double norm2 = 0;
      for (size_t i = 0; i < dim_; ++i) norm2 += w[i] * w[i];
      // Entries are integers of magnitude ~1e4, so a residual this small means
      // the stream repeated itself; it cannot happen for a sound key stream.
      if (!(norm2 > 1e-6)) throw InvalidInput("degenerate projection drawn from this key");
      const double inv = 1.0 / std::sqrt(norm2);
      for (size_t i = 0; i < dim_; ++i) w[i] *= inv;
    }
  }

  void hash_block(const float* x, size_t rows, size_t row_stride, size_t first_row, uint8_t* out,
                  float* reliability) const {
    std::vector<float> input(rows * dim_), acc(rows * bits_, 0.0f);
    for (size_t r = 0; r < rows; ++r) {
      const float* row = x + r * row_stride;
      float* dst = input.data() + r * dim_;
      bool nonzero = false;
      for (size_t i = 0; i < dim_; ++i) {
        if (!std::isfinite(row[i]))
          throw InvalidInput("template " + std::to_string(first_row + r) + " contains NaN or Inf");
        nonzero |= row[i] != 0.0f;
        dst[i] = row[i];
      }
      if (!nonzero) throw InvalidInput("template " + std::to_string(first_row + r) + " is a zero vector");
      if (!offset_.empty()) remove_offset(dst);
    }
    for (size_t i = 0; i < dim_; ++i) {
      const float* w = weights_.data() + i * bits_;
      for (size_t r = 0; r < rows; ++r) {
        const float xi = input[r * dim_ + i];
        float* a = acc.data() + r * bits_;
        for (size_t j = 0; j < bits_; ++j) a[j] += xi * w[j];
      }
    }
    for (size_t r = 0; r < rows; ++r) {
      const float* a = acc.data() + r * bits_;
      uint8_t* code = out + r * code_size();
      for (size_t byte = 0; byte < code_size(); ++byte) {
        uint8_t v = 0;
        for (int bit = 0; bit < 8; ++bit) v |= uint8_t(a[byte * 8 + bit] > 0.0f) << bit;
        code[byte] = v;
      }
      if (reliability) write_reliability(a, reliability + r * bits_);
    }
  }

  void write_reliability(const float* projection, float* out) const {
    double total = 0;
    for (size_t j = 0; j < bits_; ++j) total += std::fabs(projection[j]);
    if (total == 0) {  // x' = 0 (on the offset axis, offset_removal 1): no bit is more reliable
      std::fill(out, out + bits_, float(1.0 / double(bits_)));
      return;
    }
    for (size_t j = 0; j < bits_; ++j) out[j] = float(std::fabs(projection[j]) / total);
  }

  void remove_offset(float* v) const {
    float dot = 0.0f;
    for (size_t i = 0; i < dim_; ++i) dot += v[i] * offset_[i];
    const float share = offset_removal_ * dot;
    for (size_t i = 0; i < dim_; ++i) v[i] -= share * offset_[i];
  }

  std::string scheme_;
  size_t dim_, bits_;
  std::vector<float> offset_;
  float offset_removal_;
  std::vector<float> weights_;
};

}  // namespace fpmatch
