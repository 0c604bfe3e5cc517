// Approximate search for large galleries: a faiss::IndexBinaryHNSW graph over
// the codes. FAISS cannot delete from HNSW, so removal leaves a tombstone: the
// code is zeroed in storage, its label set to -1, and searches skip it. The
// graph keeps the node for routing until compact() rebuilds it from live codes.
#pragma once

#include <faiss/IndexBinaryHNSW.h>
#include <omp.h>

#include <limits>
#include <memory>
#include <utility>

#include "protected_index.h"

namespace fpmatch {

class HnswIndex : public ProtectedIndex {
 public:
  HnswIndex(size_t bits, int m, int ef_construction, int ef_search)
      : ProtectedIndex(bits, {}), index_(make_graph(bits, m, ef_construction, ef_search)) {}

  HnswIndex(std::unique_ptr<faiss::IndexBinaryHNSW> index, std::vector<int64_t> labels)
      : ProtectedIndex(size_t(index->d), std::move(labels)), index_(std::move(index)) {
    if (!dynamic_cast<faiss::IndexBinaryFlat*>(index_->storage))
      throw InvalidInput("HNSW storage is not a flat binary index");
    if (size_t(index_->ntotal) != labels_.size() || storage().xb.size() != labels_.size() * code_size())
      throw InvalidInput("HNSW index and labels disagree in size");
  }

  Kind kind() const override { return Kind::Hnsw; }
  const faiss::IndexBinary& faiss_index() const override { return *index_; }

  size_t tombstones() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return labels_.size() - positions_.size();
  }

  int ef_search() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return index_->hnsw.efSearch;
  }

  void set_ef_search(int ef) {
    if (ef < 1) throw InvalidInput("ef_search must be at least 1");
    std::unique_lock<std::shared_mutex> lock(mutex_);
    index_->hnsw.efSearch = ef;
  }

  int m() const { return int(index_->hnsw.nb_neighbors(1)); }

  // Rebuilds the graph from live codes only, dropping every tombstone.
  void compact(int n_threads) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    if (positions_.size() == labels_.size()) return;
    auto fresh = make_graph(bits_, m(), index_->hnsw.efConstruction, index_->hnsw.efSearch);
    std::vector<uint8_t> live;
    std::vector<int64_t> live_labels;
    live.reserve(positions_.size() * code_size());
    for (size_t pos = 0; pos < labels_.size(); ++pos) {
      if (labels_[pos] == kNoLabel) continue;
      const uint8_t* code = storage().xb.data() + pos * code_size();
      live.insert(live.end(), code, code + code_size());
      live_labels.push_back(labels_[pos]);
    }
    omp_set_num_threads(resolve_threads(n_threads));
    fresh->add(int64_t(live_labels.size()), live.data());
    std::fill(live.begin(), live.end(), 0);
    index_ = std::move(fresh);
    labels_ = std::move(live_labels);
    positions_.clear();
    for (size_t pos = 0; pos < labels_.size(); ++pos) positions_[labels_[pos]] = pos;
  }

 protected:
  const faiss::IndexBinaryFlat& storage() const override {
    return *static_cast<const faiss::IndexBinaryFlat*>(index_->storage);
  }

  void store_codes(const CodeBatch& codes, int n_threads) override {
    std::vector<uint8_t> packed = contiguous(codes);
    omp_set_num_threads(resolve_threads(n_threads));
    index_->add(int64_t(codes.n), packed.data());
  }

  void erase_position(size_t pos) override {
    auto* flat = static_cast<faiss::IndexBinaryFlat*>(index_->storage);
    std::memset(flat->xb.data() + pos * code_size(), 0, code_size());
    labels_[pos] = kNoLabel;
  }

  void knn(const CodeBatch& queries, size_t k, int32_t* distances, int64_t* labels,
           int n_threads) const override {
    const size_t stored = labels_.size();
    const size_t dead = stored - positions_.size();
    parallel_for(queries.n, n_threads, [&](size_t q) {
      omp_set_num_threads(1);  // parallelism is ours; keep FAISS from nesting teams
      size_t want = std::min(stored, k + dead);
      std::vector<int32_t> d;
      std::vector<int64_t> p;
      size_t found = 0;
      while (true) {
        want = std::max<size_t>(want, 1);
        d.assign(want, 0);
        p.assign(want, -1);
        if (stored > 0) index_->search(1, queries.row(q), int64_t(want), d.data(), p.data());
        found = 0;
        for (size_t i = 0; i < want && found < k; ++i) {
          if (p[i] < 0 || labels_[size_t(p[i])] == kNoLabel) continue;
          distances[q * k + found] = d[i];
          labels[q * k + found] = labels_[size_t(p[i])];
          ++found;
        }
        // Tombstones crowded out live results: widen the search.
        if (found == k || want >= stored || found == positions_.size()) break;
        want = std::min(stored, want * 2);
      }
      for (size_t i = found; i < k; ++i) {
        distances[q * k + i] = std::numeric_limits<int32_t>::max();
        labels[q * k + i] = kNoLabel;
      }
    });
  }

 private:
  static std::unique_ptr<faiss::IndexBinaryHNSW> make_graph(size_t bits, int m, int ef_construction,
                                                            int ef_search) {
    if (m < 2 || m > 256) throw InvalidInput("M must be in [2, 256]");
    if (ef_construction < 1 || ef_search < 1) throw InvalidInput("ef values must be at least 1");
    auto index = std::make_unique<faiss::IndexBinaryHNSW>(int(bits), m);
    index->hnsw.efConstruction = ef_construction;
    index->hnsw.efSearch = ef_search;
    return index;
  }

  std::unique_ptr<faiss::IndexBinaryHNSW> index_;
};

}  // namespace fpmatch
