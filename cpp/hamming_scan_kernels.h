// Kernel bodies for hamming_scan.h. Included by one translation unit per
// instruction set, each wrapping it in its own namespace FPMATCH_SCAN_NS.
#include <faiss/impl/DistanceComputer.h>
#include <faiss/utils/Heap.h>
#include <faiss/utils/hamming.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace fpmatch {
namespace FPMATCH_SCAN_NS {

using MaxHeap = faiss::CMax<int32_t, int64_t>;

void knn(const uint8_t* query, const uint8_t* codes, size_t begin, size_t end,
         size_t code_size, size_t k, int32_t* distances, int64_t* positions) {
  faiss::heap_heapify<MaxHeap>(k, distances, positions);
  faiss::HammingComputerDefault hc(query, int(code_size));
  const uint8_t* code = codes + begin * code_size;
  for (size_t i = begin; i < end; ++i, code += code_size) {
    int32_t d = hc.hamming(code);
    if (d < distances[0]) faiss::heap_replace_top<MaxHeap>(k, distances, positions, d, int64_t(i));
  }
  faiss::heap_reorder<MaxHeap>(k, distances, positions);
}

void within(const uint8_t* query, const uint8_t* codes, size_t n, size_t code_size,
            int32_t radius, std::vector<int32_t>& distances, std::vector<int64_t>& positions) {
  faiss::HammingComputerDefault hc(query, int(code_size));
  const uint8_t* code = codes;
  for (size_t i = 0; i < n; ++i, code += code_size) {
    int32_t d = hc.hamming(code);
    if (d <= radius) {
      distances.push_back(d);
      positions.push_back(int64_t(i));
    }
  }
}

}  // namespace FPMATCH_SCAN_NS
}  // namespace fpmatch

namespace fpmatch {
namespace FPMATCH_SCAN_NS {

// Hamming distance for faiss::HNSW graph routines. FAISS passes binary
// queries through set_query as a float pointer; they are codes.
struct HammingDistance : faiss::DistanceComputer {
  HammingDistance(const uint8_t* codes, size_t code_size) : codes_(codes), code_size_(code_size) {}

  void set_query(const float* x) override {
    query_.set(reinterpret_cast<const uint8_t*>(x), int(code_size_));
  }
  float operator()(idx_t i) override { return float(query_.hamming(codes_ + size_t(i) * code_size_)); }
  float symmetric_dis(idx_t i, idx_t j) override {
    faiss::HammingComputerDefault a(codes_ + size_t(i) * code_size_, int(code_size_));
    return float(a.hamming(codes_ + size_t(j) * code_size_));
  }

 private:
  const uint8_t* codes_;
  size_t code_size_;
  faiss::HammingComputerDefault query_;
};

std::unique_ptr<faiss::DistanceComputer> hamming_distance(const uint8_t* codes, size_t code_size) {
  return std::make_unique<HammingDistance>(codes, code_size);
}

}  // namespace FPMATCH_SCAN_NS
}  // namespace fpmatch
