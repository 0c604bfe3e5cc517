// Exact search: every stored code is compared with the query. Codes live in a
// faiss::IndexBinaryFlat (for its file format); the scan is ours (hamming_scan.h).
// Removal moves the last code into the freed slot and zeroes the old tail.
#pragma once

#include <faiss/IndexBinaryFlat.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "protected_index.h"

namespace fpmatch {

class FlatIndex : public ProtectedIndex {
 public:
  explicit FlatIndex(size_t bits)
      : ProtectedIndex(bits, {}), index_(std::make_unique<faiss::IndexBinaryFlat>(int64_t(bits))) {}

  FlatIndex(std::unique_ptr<faiss::IndexBinaryFlat> index, std::vector<int64_t> labels)
      : ProtectedIndex(size_t(index->d), std::move(labels)), index_(std::move(index)) {
    if (size_t(index_->ntotal) != labels_.size() || index_->xb.size() != labels_.size() * code_size())
      throw InvalidInput("flat index and labels disagree in size");
    if (positions_.size() != labels_.size()) throw InvalidInput("flat index holds removed slots");
  }

  Kind kind() const override { return Kind::Flat; }
  const faiss::IndexBinary& faiss_index() const override { return *index_; }

 protected:
  const faiss::IndexBinaryFlat& storage() const override { return *index_; }

  void store_codes(const CodeBatch& codes, int) override { append(*index_, codes); }

  void erase_position(size_t pos) override { swap_remove(*index_, pos); }

  void knn(const CodeBatch& queries, size_t k, int32_t* distances, int64_t* positions,
           int n_threads) const override {
    const size_t n = labels_.size();
    const uint8_t* codes = index_->xb.data();
    const size_t threads = size_t(resolve_threads(n_threads));
    if (queries.n >= threads || n < 4096 * threads) {
      parallel_for(queries.n, n_threads, [&](size_t q) {
        scan::knn(queries.row(q), codes, 0, n, code_size(), k, distances + q * k, positions + q * k);
      });
    } else {
      // Few queries, many threads: split the codes, then merge the partial top-k.
      std::vector<int32_t> part_d(threads * k);
      std::vector<int64_t> part_p(threads * k);
      for (size_t q = 0; q < queries.n; ++q) {
        parallel_for(threads, int(threads), [&](size_t t) {
          scan::knn(queries.row(q), codes, n * t / threads, n * (t + 1) / threads, code_size(), k,
                    part_d.data() + t * k, part_p.data() + t * k);
        });
        std::vector<size_t> order(threads * k);
        for (size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](size_t a, size_t b) {
          return std::make_pair(part_d[a], uint64_t(part_p[a])) < std::make_pair(part_d[b], uint64_t(part_p[b]));
        });
        for (size_t i = 0; i < k; ++i) {
          distances[q * k + i] = part_d[order[i]];
          positions[q * k + i] = part_p[order[i]];
        }
      }
    }
  }

 private:
  std::unique_ptr<faiss::IndexBinaryFlat> index_;
};

}  // namespace fpmatch
