// AVX-512 kernels for modular_scan.h, built with function-level target
// attributes (the module itself targets baseline x86-64) and called only when
// the CPU has the instructions. Both compute what accumulate_portable does,
// 8 columns and 4 rows at a time, with 64-bit partial sums in scratch (room
// for 3 * cols values); leftover columns go to the portable loop.
//
// Eight packed values (48 bytes) are one masked load of twelve 32-bit words,
// a word permutation that gives value k the two words holding its bytes, a
// shift by 16 bits for odd k (whose bytes start mid-word) and a 48-bit mask.
//
// A row pass has at most kRowsPerPass (4096) rows, u < 2^48 and v < 2^48, so
// the 64-bit partial sums below cannot overflow:
//   avx512ifma: u * v = hi * 2^52 + lo with lo, hi < 2^52 (IFMA's 52-bit
//               multiply-add), so sum lo < 2^64 and sum hi < 2^60.
//   avx512:     u = u1 * 2^26 + u0 and v = v1 * 2^26 + v0 (u0, v0 < 2^26;
//               u1, v1 < 2^24), so each 32 x 32-bit product is exact and the
//               sums of u0 v0, u0 v1 + u1 v0 and u1 v1 stay below 2^64.
// A value out of range may wrap these sums; the pass then reports failure.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FPMATCH_MODQ_AVX512 1
#include <immintrin.h>

// GCC 12's AVX-512 intrinsic headers trip this warning on their own
// placeholder operands, not on anything here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fpmatch {
namespace modq {

struct Unpacker {
  __m512i words, shifts, mask;
  __attribute__((target("avx512f"))) Unpacker() {
    alignas(64) static const int32_t pick[16] = {0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 7, 8, 9, 10, 10, 11};
    words = _mm512_load_si512(pick);
    shifts = _mm512_set_epi64(16, 0, 16, 0, 16, 0, 16, 0);
    mask = _mm512_set1_epi64(int64_t((uint64_t(1) << 48) - 1));
  }
  __attribute__((target("avx512f"))) __m512i operator()(const uint8_t* p) const {
    const __m512i raw = _mm512_maskz_loadu_epi32(__mmask16(0x0FFF), p);
    return _mm512_and_si512(_mm512_srlv_epi64(_mm512_permutexvar_epi32(words, raw), shifts), mask);
  }
};

__attribute__((target("avx512f,avx512ifma"))) inline bool accumulate_avx512ifma(
    const uint8_t* x, size_t stride, size_t rows, size_t cols, const uint64_t* v, uint64_t h, u128* acc,
    uint64_t* scratch) {
  const size_t wide = cols - cols % 8;
  uint64_t *lo = scratch, *hi = scratch + wide;
  std::fill(scratch, scratch + 2 * wide, 0);
  const Unpacker unpack;
  __m512i worst = _mm512_setzero_si512();
  for (size_t j = 0; j < rows; j += 4) {
    const FourRows r(x, stride, rows, v, j);
    __m512i w[4];
    for (int k = 0; k < 4; ++k) w[k] = _mm512_set1_epi64(int64_t(r.weight[k]));
    for (size_t c = 0; c < wide; c += 8) {
      __m512i l = _mm512_loadu_si512(lo + c), m = _mm512_loadu_si512(hi + c);
      for (int k = 0; k < 4; ++k) {
        const __m512i u = unpack(r.row[k] + kPackedBytes * c);
        worst = _mm512_max_epu64(worst, u);
        l = _mm512_madd52lo_epu64(l, u, w[k]);
        m = _mm512_madd52hi_epu64(m, u, w[k]);
      }
      _mm512_storeu_si512(lo + c, l);
      _mm512_storeu_si512(hi + c, m);
    }
  }
  const bool in_range = _mm512_cmpgt_epu64_mask(worst, _mm512_set1_epi64(int64_t(2 * h))) == 0;
  for (size_t c = 0; c < wide; ++c) acc[c] += (u128(hi[c]) << 52) + lo[c];
  return accumulate_portable(x + kPackedBytes * wide, stride, rows, cols - wide, v, h, acc + wide) && in_range;
}

// accumulate_avx512ifma for up to kBatchProbes probes at once: each group of
// eight rows and eight columns is loaded and unpacked once for all of them.
// Rows past the last are the last row again with weight 0 (FourRows).
// weights[p] and acc[p] are probe p's; scratch has room for 2 * probes * cols.
constexpr size_t kBatchProbes = 8;

__attribute__((target("avx512f,avx512ifma"))) inline bool accumulate_avx512ifma_batch(
    const uint8_t* x, size_t stride, size_t rows, size_t cols, const uint64_t* const* weights, size_t probes,
    uint64_t h, u128* const* acc, uint64_t* scratch) {
  const size_t wide = cols - cols % 8;
  std::fill(scratch, scratch + 2 * probes * wide, 0);
  const Unpacker unpack;
  __m512i worst = _mm512_setzero_si512();
  __m512i w[kBatchProbes][8];  // this group's weights, broadcast once
  for (size_t j = 0; j < rows; j += 8) {  // eight rows a group: one scratch round trip per 16 products
    const FourRows r0(x, stride, rows, weights[0], j), r1(x, stride, rows, weights[0], j + 4);
    const uint8_t* row[8] = {r0.row[0], r0.row[1], r0.row[2], r0.row[3], r1.row[0], r1.row[1], r1.row[2], r1.row[3]};
    for (size_t p = 0; p < probes; ++p)
      for (size_t k = 0; k < 8; ++k) w[p][k] = _mm512_set1_epi64(int64_t(j + k < rows ? weights[p][j + k] : 0));
    for (size_t c = 0; c < wide; c += 8) {
      __m512i u[8];
      for (int k = 0; k < 8; ++k) {
        u[k] = unpack(row[k] + kPackedBytes * c);
        worst = _mm512_max_epu64(worst, u[k]);
      }
      for (size_t p = 0; p < probes; ++p) {
        uint64_t* lo = scratch + 2 * p * wide;
        uint64_t* hi = lo + wide;
        __m512i l = _mm512_loadu_si512(lo + c), m = _mm512_loadu_si512(hi + c);
        for (int k = 0; k < 8; ++k) {
          l = _mm512_madd52lo_epu64(l, u[k], w[p][k]);
          m = _mm512_madd52hi_epu64(m, u[k], w[p][k]);
        }
        _mm512_storeu_si512(lo + c, l);
        _mm512_storeu_si512(hi + c, m);
      }
    }
  }
  bool in_range = _mm512_cmpgt_epu64_mask(worst, _mm512_set1_epi64(int64_t(2 * h))) == 0;
  for (size_t p = 0; p < probes; ++p) {
    const uint64_t *lo = scratch + 2 * p * wide, *hi = lo + wide;
    for (size_t c = 0; c < wide; ++c) acc[p][c] += (u128(hi[c]) << 52) + lo[c];
    in_range &= accumulate_portable(x + kPackedBytes * wide, stride, rows, cols - wide, weights[p], h, acc[p] + wide);
  }
  return in_range;
}

__attribute__((target("avx512f"))) inline bool accumulate_avx512(const uint8_t* x, size_t stride, size_t rows,
                                                                size_t cols, const uint64_t* v, uint64_t h,
                                                                u128* acc, uint64_t* scratch) {
  const size_t wide = cols - cols % 8;
  uint64_t *s0 = scratch, *s1 = scratch + wide, *s2 = scratch + 2 * wide;
  std::fill(scratch, scratch + 3 * wide, 0);
  const Unpacker unpack;
  const __m512i low = _mm512_set1_epi64((int64_t(1) << 26) - 1);
  __m512i worst = _mm512_setzero_si512();
  for (size_t j = 0; j < rows; j += 4) {
    const FourRows r(x, stride, rows, v, j);
    __m512i v0[4], v1[4];
    for (int k = 0; k < 4; ++k) {
      v0[k] = _mm512_set1_epi64(int64_t(r.weight[k] & ((uint64_t(1) << 26) - 1)));
      v1[k] = _mm512_set1_epi64(int64_t(r.weight[k] >> 26));
    }
    for (size_t c = 0; c < wide; c += 8) {
      __m512i a0 = _mm512_loadu_si512(s0 + c), a1 = _mm512_loadu_si512(s1 + c), a2 = _mm512_loadu_si512(s2 + c);
      for (int k = 0; k < 4; ++k) {
        const __m512i u = unpack(r.row[k] + kPackedBytes * c);
        worst = _mm512_max_epu64(worst, u);
        const __m512i u0 = _mm512_and_si512(u, low), u1 = _mm512_srli_epi64(u, 26);
        a0 = _mm512_add_epi64(a0, _mm512_mul_epu32(u0, v0[k]));
        a1 = _mm512_add_epi64(a1, _mm512_add_epi64(_mm512_mul_epu32(u0, v1[k]), _mm512_mul_epu32(u1, v0[k])));
        a2 = _mm512_add_epi64(a2, _mm512_mul_epu32(u1, v1[k]));
      }
      _mm512_storeu_si512(s0 + c, a0);
      _mm512_storeu_si512(s1 + c, a1);
      _mm512_storeu_si512(s2 + c, a2);
    }
  }
  const bool in_range = _mm512_cmpgt_epu64_mask(worst, _mm512_set1_epi64(int64_t(2 * h))) == 0;
  for (size_t c = 0; c < wide; ++c) acc[c] += u128(s0[c]) + (u128(s1[c]) << 26) + (u128(s2[c]) << 52);
  return accumulate_portable(x + kPackedBytes * wide, stride, rows, cols - wide, v, h, acc + wide) && in_range;
}

}  // namespace modq
}  // namespace fpmatch
#pragma GCC diagnostic pop
#else
#define FPMATCH_MODQ_AVX512 0
#endif
