// Encrypted scoring of the he schemes: integer combinations of ciphertext rows
// modulo the data prime q. SEAL makes the keys and ciphertexts; this file only
// multiplies and adds numbers it is given, exactly.
//
// Values are read in their packed form (packed_values.h: x centred mod q stored
// as u = x + h, h = (q - 1) / 2, in 6 bytes). A row of k values is 6k bytes;
// rows of a matrix start row_stride bytes apart.
//
// A weight w is read as v = w mod q. Each column gets S = sum_j v_j u_j exactly
// (an unsigned 128-bit sum), and the result is S - h * sum_j v_j = sum_j w_j x_j
// mod q: one reduction per column, however many rows (lazy reduction). The SIMD
// kernels (modular_scan_avx512.h) build S from partial sums of at most
// kRowsPerPass rows that cannot overflow 64 bits.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "packed_values.h"
#include "parallel.h"

namespace fpmatch {
namespace modq {

using u128 = unsigned __int128;

constexpr size_t kMaxRows = size_t(1) << 16;          // keeps S below 2^112
constexpr size_t kRowsPerPass = 4096;                 // 4096 terms below 2^52 fit 64 bits
constexpr size_t kTileCols = 8192;                    // whole rows of N = 4096 blocks: reads stay sequential
constexpr size_t kBatchTileBytes = size_t(1) << 20;   // a tile every probe of a batch rereads: fits L2
constexpr size_t kMinWorkPerThread = size_t(1) << 18; // values; below this a thread costs more than it saves

// rows x cols packed values, row j starting at data + j * row_stride (bytes).
struct Matrix {
  const uint8_t* data;
  size_t rows, cols, row_stride;
};

// Rows j .. j+3 and their weights; past the last row, the last row again with
// weight 0 (it adds nothing and is in range if the row is).
struct FourRows {
  const uint8_t* row[4];
  uint64_t weight[4];
  FourRows(const uint8_t* x, size_t stride, size_t rows, const uint64_t* v, size_t j) {
    for (size_t k = 0; k < 4; ++k) {
      const bool real = j + k < rows;
      row[k] = x + (real ? j + k : rows - 1) * stride;
      weight[k] = real ? v[j + k] : 0;
    }
  }
};

// acc[c] += sum_{j < rows} v[j] * u[j, c] for c < cols, four rows per pass
// over acc. False if some u exceeds 2h (acc is then meaningless).
inline bool accumulate_portable(const uint8_t* x, size_t stride, size_t rows, size_t cols, const uint64_t* v,
                                uint64_t h, u128* acc) {
  uint64_t worst = 0;
  for (size_t j = 0; j < rows; j += 4) {
    const FourRows r(x, stride, rows, v, j);
    for (size_t c = 0; c < cols; ++c) {
      u128 s = acc[c];
      for (int k = 0; k < 4; ++k) {
        const uint64_t u = load_packed(r.row[k] + kPackedBytes * c);
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

inline bool accumulate(Kernel k, const uint8_t* x, size_t stride, size_t rows, size_t cols, const uint64_t* v,
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
    throw InvalidInput("the modulus must be odd, at least 3 and below 2^48 (values are stored in 6 bytes), got " +
                       std::to_string(q));
}

[[noreturn]] inline void out_of_range() {
  throw InvalidInput("ciphertext values out of range: each stored value must lie in [0, q - 1]");
}

// One probe's weights read mod q, and what storing x as x + h adds to each column.
struct Weights {
  std::vector<uint64_t> v;
  uint64_t shift;
  Weights(const int64_t* w, size_t rows, uint64_t q) : v(rows) {
    uint64_t sum_v = 0;
    for (size_t j = 0; j < rows; ++j) {
      const int64_t r = w[j] % int64_t(q);
      v[j] = uint64_t(r < 0 ? r + int64_t(q) : r);
      sum_v = (sum_v + v[j]) % q;
    }
    shift = uint64_t(u128(q / 2) * sum_v % q);
  }
};

// Probes first .. first + count - 1 over one row pass starting at row r:
// together on the IFMA path, one after another on the others.
inline bool accumulate_probes(Kernel k, const uint8_t* x, size_t stride, size_t rows, size_t cols,
                              const std::vector<Weights>& probes, size_t first, size_t count, size_t r, uint64_t h,
                              u128* acc, uint64_t* scratch) {
#if FPMATCH_MODQ_AVX512
  if (k == Kernel::Avx512Ifma && count > 1) {
    const uint64_t* weights[kBatchProbes];
    u128* sums[kBatchProbes];
    for (size_t p = 0; p < count; ++p) {
      weights[p] = probes[first + p].v.data() + r;
      sums[p] = acc + p * cols;
    }
    return accumulate_avx512ifma_batch(x, stride, rows, cols, weights, count, h, sums, scratch);
  }
#endif
  bool in_range = true;
  for (size_t p = 0; p < count; ++p)
    in_range &= accumulate(k, x, stride, rows, cols, probes[first + p].v.data() + r, h, acc + p * cols, scratch);
  return in_range;
}

// out[(p * M + i) * cols + c] = sum_j weights[p * rows + j] * x_i[j, c] mod q, in
// [0, q), for every probe p < n_probes and matrix i < M (all rows x cols, rows =
// the number of weights per probe). Work is split by (matrix, column tile) over
// up to n_threads threads (0: every core); within a tile every probe of the
// batch is scored while the tile is in cache, so one sweep serves the batch.
inline void combine(const std::vector<Matrix>& matrices, const int64_t* weights, size_t n_probes, uint64_t q,
                    int64_t* out, int n_threads, Kernel kernel) {
  check_modulus(q);
  if (matrices.empty() || n_probes == 0) return;
  const size_t rows = matrices[0].rows, cols = matrices[0].cols;
  for (const Matrix& m : matrices)
    if (m.rows != rows || m.cols != cols) throw InvalidInput("all matrices must have the same shape");
  if (rows == 0 || rows > kMaxRows || cols == 0)
    throw InvalidInput("matrices need 1 to " + std::to_string(kMaxRows) + " rows and at least one column");
  const uint64_t h = q / 2;
  std::vector<Weights> probes;
  for (size_t p = 0; p < n_probes; ++p) probes.emplace_back(weights + p * rows, rows, q);
  const size_t by_work = std::max<size_t>(1, n_probes * matrices.size() * rows * cols / kMinWorkPerThread);
  const size_t threads = std::min<size_t>(size_t(resolve_threads(n_threads)), by_work);
  // Column tiles: whole rows up to kTileCols (one probe streams), a cache-sized
  // slice for a batch, narrower when there are fewer matrices than threads.
  const size_t cached = std::max<size_t>(8, kBatchTileBytes / (rows * kPackedBytes) / 8 * 8);
  const size_t widest = n_probes > 1 ? std::min(kTileCols, cached) : kTileCols;
  const size_t split = (threads + matrices.size() - 1) / matrices.size();
  const size_t tile = std::min(widest, ((cols + split - 1) / split + 7) / 8 * 8);
  const size_t tiles = (cols + tile - 1) / tile;
  const size_t block = matrices.size() * cols;  // one probe's output
  parallel_for(matrices.size() * tiles, int(threads), [&](size_t item) {
    const size_t i = item / tiles, first = (item % tiles) * tile;
    const size_t width = std::min(tile, cols - first);
    const Matrix& m = matrices[i];
    const size_t group = std::min(n_probes, kernel == Kernel::Avx512Ifma ? kBatchProbes : size_t(1));
    std::vector<u128> acc(group * width);
    std::vector<uint64_t> scratch(std::max<size_t>(3, 2 * group) * width);
    for (size_t p0 = 0; p0 < n_probes; p0 += group) {
      const size_t count = std::min(group, n_probes - p0);
      std::fill(acc.begin(), acc.end(), u128(0));
      for (size_t r = 0; r < rows; r += kRowsPerPass) {
        const size_t pass = std::min(kRowsPerPass, rows - r);
        const uint8_t* x = m.data + r * m.row_stride + first * kPackedBytes;
        if (!accumulate_probes(kernel, x, m.row_stride, pass, width, probes, p0, count, r, h, acc.data(),
                               scratch.data()))
          out_of_range();
      }
      for (size_t p = p0; p < p0 + count; ++p) {
        const uint64_t shift = probes[p].shift;
        const u128* sums = acc.data() + (p - p0) * width;
        int64_t* dst = out + p * block + i * cols + first;
        for (size_t c = 0; c < width; ++c) {
          const uint64_t s = uint64_t(sums[c] % q);
          dst[c] = int64_t(s >= shift ? s - shift : s + q - shift);
        }
      }
    }
  });
}

// XOR of every stored byte of every matrix (8 at a time), read tile by tile as
// combine reads them: the benchmark's memory-bandwidth baseline for the same
// bytes. Eight independent accumulators keep the loop bound by memory.
inline uint64_t read_all(const std::vector<Matrix>& matrices, int n_threads) {
  if (matrices.empty()) return 0;
  const size_t cols = matrices[0].cols, tiles = (cols + kTileCols - 1) / kTileCols;
  std::vector<uint64_t> parts(matrices.size() * tiles, 0);
  parallel_for(parts.size(), n_threads, [&](size_t item) {
    const Matrix& m = matrices[item / tiles];
    const size_t first = (item % tiles) * kTileCols, width = std::min(kTileCols, cols - first);
    const size_t bytes = width * kPackedBytes;
    uint64_t x[8] = {};
    for (size_t j = 0; j < m.rows; ++j) {
      const uint8_t* row = m.data + j * m.row_stride + first * kPackedBytes;
      size_t b = 0;
      for (; b + 64 <= bytes; b += 64)
        for (size_t k = 0; k < 8; ++k) {
          uint64_t word;
          std::memcpy(&word, row + b + 8 * k, 8);
          x[k] ^= word;
        }
      for (; b < bytes; ++b) x[0] ^= row[b];
    }
    parts[item] = x[0] ^ x[1] ^ x[2] ^ x[3] ^ x[4] ^ x[5] ^ x[6] ^ x[7];
  });
  uint64_t x = 0;
  for (uint64_t p : parts) x ^= p;
  return x;
}

// out[k, c] = x[r_k, c] * b[c] mod q, in [0, q), for the rows r_0 .. r_{count-1} of a
// (`selected`; nullptr: rows 0 .. count-1): x packed, b in [0, q). For the few rows a
// shortlist re-scores, so one thread and no SIMD. Rows are read where they lie.
inline void multiply(const Matrix& a, const int64_t* selected, size_t count, const int64_t* b, uint64_t q,
                     int64_t* out) {
  check_modulus(q);
  const uint64_t h = q / 2;
  std::vector<uint64_t> quotient(a.cols);  // Shoup's floor(b * 2^64 / q): one multiply estimates each quotient
  for (size_t c = 0; c < a.cols; ++c) {
    if (b[c] < 0 || uint64_t(b[c]) >= q) throw InvalidInput("plaintext values must lie in [0, q)");
    quotient[c] = uint64_t((u128(uint64_t(b[c])) << 64) / q);
  }
  bool in_range = true;
  for (size_t k = 0; k < count; ++k) {
    const uint8_t* x = a.data + size_t(selected ? selected[k] : int64_t(k)) * a.row_stride;
    int64_t* dst = out + k * a.cols;
    for (size_t c = 0; c < a.cols; ++c) {
      const uint64_t stored = c + 1 < a.cols ? load_packed_within(x + kPackedBytes * c) : load_packed(x + kPackedBytes * c);
      in_range &= stored <= 2 * h;
      const uint64_t u = stored >= h ? stored - h : stored + q - h;  // x mod q
      const uint64_t estimate = uint64_t((u128(u) * quotient[c]) >> 64);
      const uint64_t r = u * uint64_t(b[c]) - estimate * q;  // in [0, 2q), exact modulo 2^64
      dst[c] = int64_t(r >= q ? r - q : r);
    }
  }
  if (!in_range) out_of_range();
}

}  // namespace modq
}  // namespace fpmatch
