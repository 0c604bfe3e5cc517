// Encrypted scoring of the he schemes: integer combinations of ciphertext rows
// modulo the data prime q. SEAL makes the keys and ciphertexts; this file only
// multiplies and adds numbers it is given, exactly.
//
// Ciphertext values arrive centred, x in [-h, h] with h = (q - 1) / 2, and are
// read as u = x + h in [0, 2h]. A weight w is read as v = w mod q. Each column
// gets S = sum_j v_j u_j exactly (an unsigned 128-bit sum), and the result is
// S - h * sum_j v_j = sum_j w_j x_j mod q: one reduction per column, however
// many rows (lazy reduction). The SIMD kernels (modular_scan_avx512.h) build S
// from partial sums of at most kRowsPerPass rows that cannot overflow 64 bits.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "errors.h"
#include "parallel.h"

namespace fpmatch {
namespace modq {

using u128 = unsigned __int128;

constexpr uint64_t kMaxModulus = uint64_t(1) << 50;  // the SIMD paths multiply 52-bit values
constexpr size_t kMaxRows = size_t(1) << 16;          // keeps S below 2^116
constexpr size_t kRowsPerPass = 4096;                 // 4096 terms below 2^52 fit 64 bits
constexpr size_t kTileCols = 8192;                    // whole rows of N = 4096 blocks: reads stay sequential
constexpr size_t kMinWorkPerThread = size_t(1) << 18; // values; below this a thread costs more than it saves

// rows x cols int64 values, row j starting at data + j * row_stride.
struct Matrix {
  const int64_t* data;
  size_t rows, cols, row_stride;
};

// Rows j .. j+3 and their weights; past the last row, the last row again with
// weight 0 (it adds nothing and is in range if the row is).
struct FourRows {
  const int64_t* row[4];
  uint64_t weight[4];
  FourRows(const int64_t* x, size_t stride, size_t rows, const uint64_t* v, size_t j) {
    for (size_t k = 0; k < 4; ++k) {
      const bool real = j + k < rows;
      row[k] = x + (real ? j + k : rows - 1) * stride;
      weight[k] = real ? v[j + k] : 0;
    }
  }
};

// acc[c] += sum_{j < rows} v[j] * (x[j * stride + c] + h) for c < cols, four
// rows per pass over acc. False if some x lies outside [-h, h] (acc is then
// meaningless).
inline bool accumulate_portable(const int64_t* x, size_t stride, size_t rows, size_t cols, const uint64_t* v,
                                uint64_t h, u128* acc) {
  uint64_t worst = 0;
  for (size_t j = 0; j < rows; j += 4) {
    const FourRows r(x, stride, rows, v, j);
    for (size_t c = 0; c < cols; ++c) {
      u128 s = acc[c];
      for (int k = 0; k < 4; ++k) {
        const uint64_t u = uint64_t(r.row[k][c]) + h;  // wraps past 2h for any value out of range
        worst = std::max(worst, u);
        s += u128(u) * r.weight[k];
      }
      acc[c] = s;
    }
  }
  return worst <= 2 * h;
}

}  // namespace modq
}  // namespace fpmatch

#include "modular_scan_avx512.h"  // uses FourRows, and the portable loop for leftover columns

namespace fpmatch {
namespace modq {

enum class Kernel { Portable, Avx512, Avx512Ifma };

inline const char* kernel_name(Kernel k) {
  switch (k) {
    case Kernel::Avx512Ifma: return "avx512ifma";
    case Kernel::Avx512: return "avx512";
    case Kernel::Portable: break;
  }
  return "portable";
}

inline bool cpu_has(Kernel k) {
#if FPMATCH_MODQ_AVX512
  if (k == Kernel::Avx512) return __builtin_cpu_supports("avx512f");
  if (k == Kernel::Avx512Ifma) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512ifma");
#endif
  return k == Kernel::Portable;
}

// The kernels this CPU can run, fastest first.
inline std::vector<Kernel> available_kernels() {
  std::vector<Kernel> out;
  for (Kernel k : {Kernel::Avx512Ifma, Kernel::Avx512, Kernel::Portable})
    if (cpu_has(k)) out.push_back(k);
  return out;
}

inline Kernel best_kernel() {
  static const Kernel best = available_kernels().front();
  return best;
}

// "auto" or a kernel name; a kernel this CPU cannot run is refused.
inline Kernel kernel_named(const std::string& name) {
  if (name == "auto") return best_kernel();
  for (Kernel k : {Kernel::Avx512Ifma, Kernel::Avx512, Kernel::Portable})
    if (name == kernel_name(k)) {
      if (!cpu_has(k)) throw InvalidInput("this CPU cannot run the " + name + " kernel");
      return k;
    }
  throw InvalidInput("unknown kernel '" + name + "': use auto, avx512ifma, avx512 or portable");
}

inline bool accumulate(Kernel k, const int64_t* x, size_t stride, size_t rows, size_t cols, const uint64_t* v,
                       uint64_t h, u128* acc, uint64_t* scratch) {
#if FPMATCH_MODQ_AVX512
  if (k == Kernel::Avx512Ifma) return accumulate_avx512ifma(x, stride, rows, cols, v, h, acc, scratch);
  if (k == Kernel::Avx512) return accumulate_avx512(x, stride, rows, cols, v, h, acc, scratch);
#endif
  (void)k, (void)scratch;
  return accumulate_portable(x, stride, rows, cols, v, h, acc);
}

inline void check_modulus(uint64_t q) {
  if (q < 3 || q >= kMaxModulus || q % 2 == 0)
    throw InvalidInput("the modulus must be odd, at least 3 and below 2^50, got " + std::to_string(q));
}

[[noreturn]] inline void out_of_range() {
  throw InvalidInput("ciphertext values out of range: each must lie in [-(q-1)/2, (q-1)/2]");
}

// out[i * cols + c] = sum_j weights[j] * m_i[j, c] mod q, in [0, q), for every
// matrix m_i (all rows x cols, rows = the number of weights). Work is split by
// (matrix, column tile) over up to n_threads threads (0: every core).
inline void combine(const std::vector<Matrix>& matrices, const int64_t* weights, uint64_t q, int64_t* out,
                    int n_threads, Kernel kernel) {
  check_modulus(q);
  if (matrices.empty()) return;
  const size_t rows = matrices[0].rows, cols = matrices[0].cols;
  for (const Matrix& m : matrices)
    if (m.rows != rows || m.cols != cols) throw InvalidInput("all matrices must have the same shape");
  if (rows == 0 || rows > kMaxRows || cols == 0)
    throw InvalidInput("matrices need 1 to " + std::to_string(kMaxRows) + " rows and at least one column");
  const uint64_t h = q / 2;
  std::vector<uint64_t> v(rows);
  uint64_t sum_v = 0;
  for (size_t j = 0; j < rows; ++j) {
    const int64_t r = weights[j] % int64_t(q);
    v[j] = uint64_t(r < 0 ? r + int64_t(q) : r);
    sum_v = (sum_v + v[j]) % q;
  }
  const uint64_t shift = uint64_t(u128(h) * sum_v % q);  // what reading x as x + h added to every column
  const size_t by_work = std::max<size_t>(1, matrices.size() * rows * cols / kMinWorkPerThread);
  const size_t threads = std::min<size_t>(size_t(resolve_threads(n_threads)), by_work);
  // Column tiles: whole rows up to kTileCols, narrower when there are fewer matrices than threads.
  const size_t split = (threads + matrices.size() - 1) / matrices.size();
  const size_t tile = std::min(kTileCols, ((cols + split - 1) / split + 7) / 8 * 8);
  const size_t tiles = (cols + tile - 1) / tile;
  parallel_for(matrices.size() * tiles, int(threads), [&](size_t item) {
    const size_t i = item / tiles, first = (item % tiles) * tile;
    const size_t width = std::min(tile, cols - first);
    const Matrix& m = matrices[i];
    std::vector<u128> acc(width);
    std::vector<uint64_t> scratch(3 * width);
    for (size_t r = 0; r < rows; r += kRowsPerPass) {
      const size_t pass = std::min(kRowsPerPass, rows - r);
      if (!accumulate(kernel, m.data + r * m.row_stride + first, m.row_stride, pass, width, v.data() + r, h,
                      acc.data(), scratch.data()))
        out_of_range();
    }
    int64_t* dst = out + i * cols + first;
    for (size_t c = 0; c < width; ++c) {
      const uint64_t s = uint64_t(acc[c] % q);
      dst[c] = int64_t(s >= shift ? s - shift : s + q - shift);
    }
  });
}

// XOR of every value of every matrix, read tile by tile as combine reads
// them: the benchmark's memory-bandwidth baseline for the same bytes. Eight
// independent accumulators keep the loop bound by memory, not by one chain.
inline uint64_t read_all(const std::vector<Matrix>& matrices, int n_threads) {
  if (matrices.empty()) return 0;
  const size_t cols = matrices[0].cols, tiles = (cols + kTileCols - 1) / kTileCols;
  std::vector<uint64_t> parts(matrices.size() * tiles, 0);
  parallel_for(parts.size(), n_threads, [&](size_t item) {
    const Matrix& m = matrices[item / tiles];
    const size_t first = (item % tiles) * kTileCols, width = std::min(kTileCols, cols - first);
    uint64_t x[8] = {};
    for (size_t j = 0; j < m.rows; ++j) {
      const int64_t* row = m.data + j * m.row_stride + first;
      size_t c = 0;
      for (; c + 8 <= width; c += 8)
        for (size_t k = 0; k < 8; ++k) x[k] ^= uint64_t(row[c + k]);
      for (; c < width; ++c) x[0] ^= uint64_t(row[c]);
    }
    parts[item] = x[0] ^ x[1] ^ x[2] ^ x[3] ^ x[4] ^ x[5] ^ x[6] ^ x[7];
  });
  uint64_t x = 0;
  for (uint64_t p : parts) x ^= p;
  return x;
}

// out[i, c] = a[i, c] * b[c] mod q, in [0, q): a centred ([-h, h]), b in [0, q).
// For the few rows a shortlist re-scores, so one thread and no SIMD.
inline void multiply(const Matrix& a, const int64_t* b, uint64_t q, int64_t* out) {
  check_modulus(q);
  const int64_t h = int64_t(q / 2);
  std::vector<uint64_t> quotient(a.cols);  // Shoup's floor(b * 2^64 / q): one multiply estimates each quotient
  for (size_t c = 0; c < a.cols; ++c) {
    if (b[c] < 0 || uint64_t(b[c]) >= q) throw InvalidInput("plaintext values must lie in [0, q)");
    quotient[c] = uint64_t((u128(uint64_t(b[c])) << 64) / q);
  }
  bool in_range = true;
  for (size_t i = 0; i < a.rows; ++i) {
    const int64_t* x = a.data + i * a.row_stride;
    int64_t* dst = out + i * a.cols;
    for (size_t c = 0; c < a.cols; ++c) {
      in_range &= x[c] >= -h && x[c] <= h;
      const uint64_t u = uint64_t(x[c] < 0 ? x[c] + int64_t(q) : x[c]);
      const uint64_t estimate = uint64_t((u128(u) * quotient[c]) >> 64);
      const uint64_t r = u * uint64_t(b[c]) - estimate * q;  // in [0, 2q), exact modulo 2^64
      dst[c] = int64_t(r >= q ? r - q : r);
    }
  }
  if (!in_range) out_of_range();
}

}  // namespace modq
}  // namespace fpmatch
