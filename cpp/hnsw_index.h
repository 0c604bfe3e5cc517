// Approximate search for large galleries: a FAISS HNSW graph over the codes.
//
// The graph and its storage live in a faiss::IndexBinaryHNSW (for its file
// format), but insertion and search drive faiss::HNSW directly with our own
// distance computer, because the one compiled into Debian's libfaiss.a has no
// POPCNT and makes building and searching several times slower.
//
// FAISS cannot delete from HNSW, so removal leaves a tombstone: the code is
// zeroed in storage, its label set to -1, and searches skip it. The node stays
// in the graph for routing until compact() rebuilds it from live codes.
#pragma once

#include <faiss/IndexBinaryHNSW.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/DistanceComputer.h>
#include <faiss/utils/Heap.h>
#include <faiss/utils/random.h>
#include <omp.h>

#include <limits>
#include <memory>
#include <tuple>
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
    if (size_t(index_->ntotal) != labels_.size() || storage().xb.size() != labels_.size() * code_size() ||
        index_->hnsw.levels.size() != labels_.size())
      throw InvalidInput("HNSW graph, storage and labels disagree in size");
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
    if (ef < 1 || size_t(ef) > kMaxNeighbours) throw InvalidInput("ef_search must be in [1, 2^20]");
    std::unique_lock<std::shared_mutex> lock(mutex_);
    index_->hnsw.efSearch = ef;
  }

  int m() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return int(index_->hnsw.nb_neighbors(1));
  }

  // Rebuilds the graph from live codes only, dropping every tombstone.
  void compact(int n_threads) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    if (positions_.size() == labels_.size()) return;
    auto fresh = make_graph(bits_, int(index_->hnsw.nb_neighbors(1)), index_->hnsw.efConstruction,
                            index_->hnsw.efSearch);
    std::vector<uint8_t> live;
    std::vector<int64_t> live_labels;
    live.reserve(positions_.size() * code_size());
    for (size_t pos = 0; pos < labels_.size(); ++pos) {
      if (labels_[pos] == kNoLabel) continue;
      const uint8_t* code = storage().xb.data() + pos * code_size();
      live.insert(live.end(), code, code + code_size());
      live_labels.push_back(labels_[pos]);
    }
    insert(*fresh, {live.data(), live_labels.size(), code_size()}, n_threads);
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

  void store_codes(const CodeBatch& codes, int n_threads) override { insert(*index_, codes, n_threads); }

  void erase_position(size_t pos) override {
    auto* flat = static_cast<faiss::IndexBinaryFlat*>(index_->storage);
    std::memset(flat->xb.data() + pos * code_size(), 0, code_size());
    labels_[pos] = kNoLabel;
  }

  void knn(const CodeBatch& queries, size_t k, int32_t* distances, int64_t* positions,
           int n_threads) const override {
    const size_t stored = labels_.size();
    const size_t dead = stored - positions_.size();
    const faiss::HNSW& graph = index_->hnsw;
    parallel_for(queries.n, n_threads, [&](size_t q) {
      std::unique_ptr<faiss::DistanceComputer> dis = scan::hamming_distance(storage().xb.data(), code_size());
      dis->set_query(reinterpret_cast<const float*>(queries.row(q)));
      faiss::VisitedTable& visited = visited_table(stored);
      std::vector<float> d;
      std::vector<faiss::HNSW::idx_t> p;
      size_t found = 0, want = std::min(stored, k + dead);
      while (stored > 0) {
        d.resize(want);
        p.resize(want);
        faiss::SearchParametersHNSW params;
        params.efSearch = std::max(graph.efSearch, int(want));
        // faiss::HNSW fills a max-heap; sort it nearest-first.
        faiss::maxheap_heapify(want, d.data(), p.data());
        graph.search(*dis, int(want), p.data(), d.data(), visited, &params);
        faiss::maxheap_reorder(want, d.data(), p.data());
        found = 0;
        for (size_t i = 0; i < want && found < k; ++i) {
          if (p[i] < 0 || labels_[size_t(p[i])] == kNoLabel) continue;
          distances[q * k + found] = int32_t(d[i]);
          positions[q * k + found] = p[i];
          ++found;
        }
        // Tombstones crowded out live results: widen the search.
        if (found == k || found == positions_.size() || want >= stored) break;
        want = std::min(stored, want * 2);
      }
      // Live nodes the graph cannot reach (linked only through removed ones):
      // answer exactly from storage instead.
      if (found < std::min(k, positions_.size())) found = scan_live(queries.row(q), k, distances + q * k, positions + q * k);
      for (size_t i = found; i < k; ++i) {
        distances[q * k + i] = std::numeric_limits<int32_t>::max();
        positions[q * k + i] = kNoLabel;
      }
    });
  }

 private:
  static std::unique_ptr<faiss::IndexBinaryHNSW> make_graph(size_t bits, int m, int ef_construction,
                                                            int ef_search) {
    if (m < 2 || m > 256) throw InvalidInput("M must be in [2, 256]");
    if (ef_construction < 1 || ef_search < 1 || size_t(ef_construction) > kMaxNeighbours ||
        size_t(ef_search) > kMaxNeighbours)
      throw InvalidInput("ef values must be in [1, 2^20]");
    auto index = std::make_unique<faiss::IndexBinaryHNSW>(int(bits), m);
    index->hnsw.efConstruction = ef_construction;
    index->hnsw.efSearch = ef_search;
    return index;
  }

  // Exhaustive k nearest live codes, ties by label; returns how many were written.
  size_t scan_live(const uint8_t* query, size_t k, int32_t* distances, int64_t* positions) const {
    const size_t stored = labels_.size();
    std::vector<int32_t> d(stored);
    scan::distances(query, storage().xb.data(), stored, code_size(), d.data());
    std::vector<std::tuple<int32_t, int64_t, int64_t>> live;  // distance, label, position
    live.reserve(positions_.size());
    for (size_t pos = 0; pos < stored; ++pos)
      if (labels_[pos] != kNoLabel) live.emplace_back(d[pos], labels_[pos], int64_t(pos));
    size_t found = std::min(k, live.size());
    std::partial_sort(live.begin(), live.begin() + found, live.end());
    for (size_t i = 0; i < found; ++i) {
      distances[i] = std::get<0>(live[i]);
      positions[i] = std::get<2>(live[i]);
    }
    return found;
  }

  // One reusable table per thread: allocating ntotal bytes per query would
  // dominate search time on large galleries. A table only grows.
  static faiss::VisitedTable& visited_table(size_t size) {
    thread_local std::unique_ptr<faiss::VisitedTable> table;
    if (!table || table->visited.size() < size) table = std::make_unique<faiss::VisitedTable>(int(size));
    return *table;
  }

  // Appends codes to storage and links them into the graph: levels are drawn,
  // then points are inserted from the top level down, each level in parallel
  // (the same order FAISS uses, with per-node locks from faiss::HNSW).
  static void insert(faiss::IndexBinaryHNSW& index, const CodeBatch& codes, int n_threads) {
    auto* flat = static_cast<faiss::IndexBinaryFlat*>(index.storage);
    const size_t n0 = size_t(flat->ntotal), n = codes.n, code_size = size_t(flat->code_size);
    if (n0 + n > size_t(std::numeric_limits<int>::max()))
      throw InvalidInput("an HNSW index holds at most 2^31-1 codes");
    append(*flat, codes);
    index.ntotal = flat->ntotal;
    if (n == 0) return;

    faiss::HNSW& graph = index.hnsw;
    int max_level = graph.prepare_level_tab(n, false);
    std::vector<std::vector<int>> by_level(size_t(max_level) + 1);
    for (size_t i = 0; i < n; ++i) by_level[size_t(graph.levels[n0 + i] - 1)].push_back(int(n0 + i));

    const size_t total = n0 + n;
    std::vector<omp_lock_t> locks(total);
    for (auto& l : locks) omp_init_lock(&l);
    const size_t threads = size_t(resolve_threads(n_threads));
    faiss::RandomGenerator shuffle(789);
    try {
      for (int level = max_level; level >= 0; --level) {
        std::vector<int>& points = by_level[size_t(level)];
        for (size_t j = 0; j + 1 < points.size(); ++j)  // drop any ordering bias of the input
          std::swap(points[j], points[j + size_t(shuffle.rand_int(int(points.size() - j)))]);
        parallel_for(threads, int(threads), [&](size_t t) {
          faiss::VisitedTable visited{int(total)};
          std::unique_ptr<faiss::DistanceComputer> dis = scan::hamming_distance(flat->xb.data(), code_size);
          for (size_t j = t; j < points.size(); j += threads) {
            dis->set_query(reinterpret_cast<const float*>(flat->xb.data() + size_t(points[j]) * code_size));
            graph.add_with_locks(*dis, level, points[j], locks, visited);
          }
        });
      }
    } catch (...) {
      for (auto& l : locks) omp_destroy_lock(&l);
      throw;
    }
    for (auto& l : locks) omp_destroy_lock(&l);
  }

  std::unique_ptr<faiss::IndexBinaryHNSW> index_;
};

}  // namespace fpmatch
