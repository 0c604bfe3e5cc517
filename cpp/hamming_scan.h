// Exhaustive Hamming scans over a contiguous array of codes.
//
// Debian's libfaiss.a is built for baseline x86-64 and its compiled Hamming
// loops use no POPCNT instruction (about 8x slower). The loops here are
// compiled twice, once with -mpopcnt, and the faster one is chosen at run time.
// Codes must be a multiple of 8 bytes (at most 1024) and stored codes 8-byte aligned.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace faiss {
struct DistanceComputer;
}

namespace fpmatch {
namespace scan {

// The k nearest of codes[begin, end) to query, ascending by (distance, position).
// Slots beyond the number of codes hold distance INT32_MAX and position -1.
void knn(const uint8_t* query, const uint8_t* codes, size_t begin, size_t end,
         size_t code_size, size_t k, int32_t* distances, int64_t* positions);

// Offers n codes to a k-slot max-heap of (distance, id) that the caller set up
// with faiss::heap_heapify; code i carries id ids[i], or id_base + i if ids is null.
// The heap ends holding the k smallest (distance, id) pairs, whatever the order.
void scan_into_heap(const uint8_t* query, const uint8_t* codes, size_t n, size_t code_size,
                    const int64_t* ids, int64_t id_base, size_t k, int32_t* heap_distances,
                    int64_t* heap_ids);

int32_t distance(const uint8_t* a, const uint8_t* b, size_t code_size);

// out[i] = distance from query to codes[i], for i in [0, n).
void distances(const uint8_t* query, const uint8_t* codes, size_t n, size_t code_size, int32_t* out);

// Every position in codes[0, n) within Hamming distance radius of query (inclusive).
void within(const uint8_t* query, const uint8_t* codes, size_t n, size_t code_size,
            int32_t radius, std::vector<int32_t>& distances, std::vector<int64_t>& positions);

// Distances between a query code and codes[i], for faiss::HNSW graph routines.
// codes must stay valid (not reallocated) while the computer is used.
std::unique_ptr<faiss::DistanceComputer> hamming_distance(const uint8_t* codes, size_t code_size);

// "popcnt" or "baseline": the kernel knn/within dispatch to on this CPU.
const char* kernel_name();

}  // namespace scan
}  // namespace fpmatch
