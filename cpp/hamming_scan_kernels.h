// Kernel bodies for hamming_scan.h. Included by one translation unit per
// instruction set, each wrapping it in its own namespace FPMATCH_SCAN_NS.
//
// Distances run over 64-bit words with four independent accumulators; for the
// common code widths the word count is a template constant, so the query stays
// in registers and the loop unrolls fully.
#include <faiss/impl/DistanceComputer.h>
#include <faiss/utils/Heap.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

namespace fpmatch {
namespace FPMATCH_SCAN_NS {

using MaxHeap = faiss::CMax<int32_t, int64_t>;
constexpr size_t kMaxWords = 128;  // 8192-bit codes, the widest an index accepts

inline int32_t popcount_words(const uint64_t* a, const uint64_t* b, size_t words) {
  int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  size_t i = 0;
  for (; i + 4 <= words; i += 4) {
    s0 += __builtin_popcountll(a[i] ^ b[i]);
    s1 += __builtin_popcountll(a[i + 1] ^ b[i + 1]);
    s2 += __builtin_popcountll(a[i + 2] ^ b[i + 2]);
    s3 += __builtin_popcountll(a[i + 3] ^ b[i + 3]);
  }
  for (; i < words; ++i) s0 += __builtin_popcountll(a[i] ^ b[i]);
  return s0 + s1 + s2 + s3;
}

// W > 0: compile-time word count; W == 0: run-time word count.
template <size_t W>
struct Words {
  size_t n;
  size_t count() const { return W > 0 ? W : n; }
};

template <size_t W>
void scan_words(const uint64_t* query, const uint8_t* codes, size_t n, Words<W> words, const int64_t* ids,
                int64_t id_base, size_t k, int32_t* heap_distances, int64_t* heap_ids) {
  const size_t stride = words.count();
  uint64_t q[W > 0 ? W : 1];
  const uint64_t* qp = query;
  if (W > 0) {
    std::memcpy(q, query, W * 8);
    qp = q;
  }
  const uint64_t* code = reinterpret_cast<const uint64_t*>(codes);
  for (size_t i = 0; i < n; ++i, code += stride) {
    int32_t d = popcount_words(qp, code, words.count());
    if (d > heap_distances[0]) continue;
    // Ties go to the smaller id, so the kept set does not depend on scan order.
    int64_t id = ids ? ids[i] : id_base + int64_t(i);
    if (d < heap_distances[0] || id < heap_ids[0])
      faiss::heap_replace_top<MaxHeap>(k, heap_distances, heap_ids, d, id);
  }
}

// Copies a code into 64-bit words (codes from numpy need not be 8-byte aligned).
inline void load_words(const uint8_t* code, size_t words, uint64_t* out) { std::memcpy(out, code, words * 8); }

// Codes are multiples of 8 bytes and 8-byte aligned (FAISS storage vectors).
void scan_into_heap(const uint8_t* query, const uint8_t* codes, size_t n, size_t code_size,
                    const int64_t* ids, int64_t id_base, size_t k, int32_t* heap_distances,
                    int64_t* heap_ids) {
  uint64_t q[kMaxWords];
  load_words(query, code_size / 8, q);
  switch (code_size / 8) {
    case 4: scan_words(q, codes, n, Words<4>{4}, ids, id_base, k, heap_distances, heap_ids); break;
    case 8: scan_words(q, codes, n, Words<8>{8}, ids, id_base, k, heap_distances, heap_ids); break;
    case 16: scan_words(q, codes, n, Words<16>{16}, ids, id_base, k, heap_distances, heap_ids); break;
    case 32: scan_words(q, codes, n, Words<32>{32}, ids, id_base, k, heap_distances, heap_ids); break;
    default: scan_words(q, codes, n, Words<0>{code_size / 8}, ids, id_base, k, heap_distances, heap_ids);
  }
}

void distances(const uint8_t* query, const uint8_t* codes, size_t n, size_t code_size, int32_t* out) {
  const size_t words = code_size / 8;
  uint64_t q[kMaxWords];
  load_words(query, words, q);
  const uint64_t* code = reinterpret_cast<const uint64_t*>(codes);
  for (size_t i = 0; i < n; ++i, code += words) out[i] = popcount_words(q, code, words);
}

int32_t distance(const uint8_t* a, const uint8_t* b, size_t code_size) {
  const size_t words = code_size / 8;
  uint64_t wa[kMaxWords], wb[kMaxWords];
  load_words(a, words, wa);
  load_words(b, words, wb);
  return popcount_words(wa, wb, words);
}

void within(const uint8_t* query, const uint8_t* codes, size_t n, size_t code_size, int32_t radius,
            std::vector<int32_t>& distances, std::vector<int64_t>& positions) {
  const size_t words = code_size / 8;
  uint64_t q[kMaxWords];
  load_words(query, words, q);
  const uint64_t* code = reinterpret_cast<const uint64_t*>(codes);
  for (size_t i = 0; i < n; ++i, code += words) {
    int32_t d = popcount_words(q, code, words);
    if (d <= radius) {
      distances.push_back(d);
      positions.push_back(int64_t(i));
    }
  }
}

// Hamming distance for faiss::HNSW graph routines. FAISS passes binary
// queries through set_query as a float pointer; they are codes.
struct HammingDistance : faiss::DistanceComputer {
  HammingDistance(const uint8_t* codes, size_t code_size)
      : codes_(reinterpret_cast<const uint64_t*>(codes)), words_(code_size / 8), query_(words_) {}

  void set_query(const float* x) override { std::memcpy(query_.data(), x, words_ * 8); }
  float operator()(idx_t i) override {
    return float(popcount_words(query_.data(), codes_ + size_t(i) * words_, words_));
  }
  float symmetric_dis(idx_t i, idx_t j) override {
    return float(popcount_words(codes_ + size_t(i) * words_, codes_ + size_t(j) * words_, words_));
  }

 private:
  const uint64_t* codes_;
  size_t words_;
  std::vector<uint64_t> query_;
};

std::unique_ptr<faiss::DistanceComputer> hamming_distance(const uint8_t* codes, size_t code_size) {
  return std::make_unique<HammingDistance>(codes, code_size);
}

}  // namespace FPMATCH_SCAN_NS
}  // namespace fpmatch
