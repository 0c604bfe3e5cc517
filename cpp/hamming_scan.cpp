#include "hamming_scan.h"

#include <faiss/impl/DistanceComputer.h>
#include <faiss/utils/Heap.h>

namespace fpmatch {

#define FPMATCH_DECLARE_KERNELS(ns)                                                          \
  namespace ns {                                                                             \
  void scan_into_heap(const uint8_t*, const uint8_t*, size_t, size_t, const int64_t*, int64_t,  \
                      size_t, int32_t*, int64_t*);                                            \
  int32_t distance(const uint8_t*, const uint8_t*, size_t);                                   \
  void distances(const uint8_t*, const uint8_t*, size_t, size_t, int32_t*);                   \
  void within(const uint8_t*, const uint8_t*, size_t, size_t, int32_t, std::vector<int32_t>&, \
              std::vector<int64_t>&);                                                        \
  std::unique_ptr<faiss::DistanceComputer> hamming_distance(const uint8_t*, size_t);          \
  }
FPMATCH_DECLARE_KERNELS(baseline_impl)
#if defined(FPMATCH_HAVE_POPCNT_KERNEL)
FPMATCH_DECLARE_KERNELS(popcnt_impl)
#endif

namespace scan {
namespace {

bool use_popcnt() {
#if defined(FPMATCH_HAVE_POPCNT_KERNEL)
  static const bool has = __builtin_cpu_supports("popcnt");
  return has;
#else
  return false;
#endif
}

}  // namespace

void scan_into_heap(const uint8_t* query, const uint8_t* codes, size_t n, size_t code_size,
                    const int64_t* ids, int64_t id_base, size_t k, int32_t* heap_distances,
                    int64_t* heap_ids) {
#if defined(FPMATCH_HAVE_POPCNT_KERNEL)
  if (use_popcnt())
    return popcnt_impl::scan_into_heap(query, codes, n, code_size, ids, id_base, k, heap_distances, heap_ids);
#endif
  baseline_impl::scan_into_heap(query, codes, n, code_size, ids, id_base, k, heap_distances, heap_ids);
}

void knn(const uint8_t* query, const uint8_t* codes, size_t begin, size_t end,
         size_t code_size, size_t k, int32_t* distances, int64_t* positions) {
  faiss::heap_heapify<faiss::CMax<int32_t, int64_t>>(k, distances, positions);
  scan_into_heap(query, codes + begin * code_size, end - begin, code_size, nullptr, int64_t(begin), k,
                 distances, positions);
  faiss::heap_reorder<faiss::CMax<int32_t, int64_t>>(k, distances, positions);
}

int32_t distance(const uint8_t* a, const uint8_t* b, size_t code_size) {
#if defined(FPMATCH_HAVE_POPCNT_KERNEL)
  if (use_popcnt()) return popcnt_impl::distance(a, b, code_size);
#endif
  return baseline_impl::distance(a, b, code_size);
}

void within(const uint8_t* query, const uint8_t* codes, size_t n, size_t code_size,
            int32_t radius, std::vector<int32_t>& distances, std::vector<int64_t>& positions) {
#if defined(FPMATCH_HAVE_POPCNT_KERNEL)
  if (use_popcnt()) return popcnt_impl::within(query, codes, n, code_size, radius, distances, positions);
#endif
  baseline_impl::within(query, codes, n, code_size, radius, distances, positions);
}

std::unique_ptr<faiss::DistanceComputer> hamming_distance(const uint8_t* codes, size_t code_size) {
#if defined(FPMATCH_HAVE_POPCNT_KERNEL)
  if (use_popcnt()) return popcnt_impl::hamming_distance(codes, code_size);
#endif
  return baseline_impl::hamming_distance(codes, code_size);
}

void distances(const uint8_t* query, const uint8_t* codes, size_t n, size_t code_size, int32_t* out) {
#if defined(FPMATCH_HAVE_POPCNT_KERNEL)
  if (use_popcnt()) return popcnt_impl::distances(query, codes, n, code_size, out);
#endif
  baseline_impl::distances(query, codes, n, code_size, out);
}

const char* kernel_name() { return use_popcnt() ? "popcnt" : "baseline"; }

}  // namespace scan
}  // namespace fpmatch
