// ProtectedIndex: the one abstraction over stored binary codes. Concrete
// indexes (flat_index.h, hnsw_index.h) keep codes in a FAISS binary index and
// share the id bookkeeping and locking defined here.
//
// Concurrency model: any number of searches run at once (shared lock); add,
// remove and maintenance take the lock exclusively, so a write waits for running
// searches and new searches wait for the write.
#pragma once

#include <faiss/IndexBinaryFlat.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "errors.h"
#include "hamming_scan.h"
#include "parallel.h"
#include "weighted_distance.h"

namespace fpmatch {

struct RangeResult {
  std::vector<size_t> lims;  // query i owns entries [lims[i], lims[i+1])
  std::vector<int32_t> distances;
  std::vector<int64_t> labels;
};

// A batch of codes: n rows of code_size bytes, row i at data + i * row_stride.
struct CodeBatch {
  const uint8_t* data;
  size_t n;
  size_t row_stride;
  const uint8_t* row(size_t i) const { return data + i * row_stride; }
};

class ProtectedIndex {
 public:
  enum class Kind : uint32_t { Flat = 1, Hnsw = 2, Ivf = 3 };
  static constexpr int64_t kNoLabel = -1;
  // The most neighbours (k, shortlists, beams) a search may ask for: results are
  // allocated per query, so a caller's number must not size memory without bound.
  static constexpr size_t kMaxNeighbours = size_t(1) << 20;

  static void check_neighbours(size_t value, const char* what) {
    if (value < 1 || value > kMaxNeighbours)
      throw InvalidInput(std::string(what) + " must be in [1, 2^20], got " + std::to_string(value));
  }

  virtual ~ProtectedIndex() = default;
  virtual Kind kind() const = 0;

  size_t bits() const { return bits_; }
  size_t code_size() const { return bits_ / 8; }

  size_t size() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return positions_.size();
  }

  bool contains(int64_t id) const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return positions_.count(id) != 0;
  }

  std::vector<int64_t> ids() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    std::vector<int64_t> out;
    out.reserve(positions_.size());
    for (int64_t label : labels_)
      if (label != kNoLabel) out.push_back(label);
    return out;
  }

  // All-or-nothing: every id is checked before any code is stored.
  void add(const CodeBatch& codes, const int64_t* ids, int n_threads) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    std::unordered_set<int64_t> batch;
    for (size_t i = 0; i < codes.n; ++i) {
      if (ids[i] < 0) throw IdConflict("ids must be non-negative, got " + std::to_string(ids[i]));
      if (positions_.count(ids[i]) || !batch.insert(ids[i]).second)
        throw IdConflict("id " + std::to_string(ids[i]) + " is already in the index");
    }
    size_t first = labels_.size();
    store_codes(codes, n_threads);
    for (size_t i = 0; i < codes.n; ++i) {
      labels_.push_back(ids[i]);
      positions_[ids[i]] = first + i;
    }
    written();
  }

  // Removes the ids that are present and returns how many were removed. The
  // removed codes are overwritten in memory, not only unlinked.
  size_t remove(size_t n, const int64_t* ids) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    size_t removed = 0;
    for (size_t i = 0; i < n; ++i) {
      auto it = positions_.find(ids[i]);
      if (it == positions_.end()) continue;
      size_t pos = it->second;
      positions_.erase(it);
      erase_position(pos);
      ++removed;
    }
    if (removed) written();
    return removed;
  }

  // Copies the stored codes of ids (each must be present) into out.
  void reconstruct(size_t n, const int64_t* ids, uint8_t* out) const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    for (size_t i = 0; i < n; ++i) {
      auto it = positions_.find(ids[i]);
      if (it == positions_.end()) throw IdConflict("id " + std::to_string(ids[i]) + " is not in the index");
      std::memcpy(out + i * code_size(), storage().xb.data() + it->second * code_size(), code_size());
    }
  }

  // k nearest per query, ascending Hamming distance; missing slots hold
  // label -1 and distance INT32_MAX (as FAISS does).
  void search(const CodeBatch& queries, size_t k, int32_t* distances, int64_t* labels,
              int n_threads) const {
    check_neighbours(k, "k");
    std::shared_lock<std::shared_mutex> lock(mutex_);
    knn(queries, k, distances, labels, n_threads);
    for (size_t i = 0; i < queries.n * k; ++i)
      if (labels[i] != kNoLabel) labels[i] = labels_[size_t(labels[i])];
  }

  // The k best of a Hamming shortlist of max(k, shortlist) candidates per query,
  // ranked by weighted distance (weighted_distance.h), ascending by (distance,
  // id). weights: queries.n rows of bits non-negative floats. Missing slots hold
  // label -1 and distance +inf.
  void search_weighted(const CodeBatch& queries, const float* weights, size_t k, size_t shortlist,
                       float* distances, int64_t* labels, int n_threads) const {
    check_neighbours(k, "k");
    if (shortlist > kMaxNeighbours) check_neighbours(shortlist, "shortlist");
    check_weights(weights, queries.n * bits_);
    const size_t depth = std::max(k, shortlist);
    std::shared_lock<std::shared_mutex> lock(mutex_);
    std::vector<int32_t> hamming(queries.n * depth);
    std::vector<int64_t> candidates(queries.n * depth);  // positions
    knn(queries, depth, hamming.data(), candidates.data(), n_threads);
    const uint8_t* codes = storage().xb.data();
    parallel_for(queries.n, n_threads, [&](size_t q) {
      WeightedDistance distance(queries.row(q), weights + q * bits_, code_size());
      std::vector<std::pair<float, int64_t>> ranked;
      for (size_t i = q * depth; i < (q + 1) * depth; ++i) {
        if (candidates[i] == kNoLabel) continue;
        const size_t pos = size_t(candidates[i]);
        ranked.emplace_back(distance(codes + pos * code_size()), labels_[pos]);
      }
      const size_t found = std::min(k, ranked.size());
      std::partial_sort(ranked.begin(), ranked.begin() + found, ranked.end());
      for (size_t i = 0; i < k; ++i) {
        distances[q * k + i] = i < found ? ranked[i].first : INFINITY;
        labels[q * k + i] = i < found ? ranked[i].second : kNoLabel;
      }
    });
  }

  // Exact on every index kind: an exhaustive scan of the stored codes.
  RangeResult range_search(const CodeBatch& queries, int32_t radius, int n_threads) const {
    if (radius < 0) throw InvalidInput("radius must be non-negative");
    std::shared_lock<std::shared_mutex> lock(mutex_);
    std::vector<std::vector<int32_t>> dist(queries.n);
    std::vector<std::vector<int64_t>> pos(queries.n);
    const faiss::IndexBinaryFlat& store = storage();
    parallel_for(queries.n, n_threads, [&](size_t q) {
      scan::within(queries.row(q), store.xb.data(), size_t(store.ntotal), code_size(), radius,
                   dist[q], pos[q]);
    });
    RangeResult out;
    out.lims.push_back(0);
    for (size_t q = 0; q < queries.n; ++q) {
      for (size_t i = 0; i < pos[q].size(); ++i) {
        int64_t label = labels_[size_t(pos[q][i])];
        if (label == kNoLabel) continue;
        out.distances.push_back(dist[q][i]);
        out.labels.push_back(label);
      }
      out.lims.push_back(out.labels.size());
    }
    return out;
  }

  // The FAISS index holding the codes, and position -> label (-1: removed).
  virtual const faiss::IndexBinary& faiss_index() const = 0;
  // Anything else a kind must save (appended after the labels); caller holds the lock.
  virtual void write_extra(std::vector<uint8_t>&) const {}
  const std::vector<int64_t>& labels_by_position() const { return labels_; }
  std::shared_mutex& mutex() const { return mutex_; }

 protected:
  ProtectedIndex(size_t bits, std::vector<int64_t> labels) : bits_(bits), labels_(std::move(labels)) {
    if (bits < 64 || bits > 8192 || bits % 64 != 0)
      throw InvalidInput("bits must be a multiple of 64 in [64, 8192]");
    for (size_t pos = 0; pos < labels_.size(); ++pos) {
      if (labels_[pos] == kNoLabel) continue;
      if (labels_[pos] < 0 || !positions_.emplace(labels_[pos], pos).second)
        throw InvalidInput("stored labels are not unique non-negative ids");
    }
  }

  virtual const faiss::IndexBinaryFlat& storage() const = 0;
  virtual void store_codes(const CodeBatch& codes, int n_threads) = 0;
  virtual void erase_position(size_t pos) = 0;
  // Called at the end of every add or remove batch, still under the write lock.
  virtual void written() {}
  // k nearest live codes per query as storage positions (-1: none), nearest
  // first; callers map positions to labels. Caller holds the lock.
  virtual void knn(const CodeBatch& queries, size_t k, int32_t* distances, int64_t* positions,
                   int n_threads) const = 0;

  // Moves the last stored code into the freed slot pos and zeroes the old tail
  // (for kinds whose storage is a dense faiss::IndexBinaryFlat). Returns the
  // position the moved code came from.
  size_t swap_remove(faiss::IndexBinaryFlat& store, size_t pos) {
    std::vector<uint8_t>& xb = store.xb;
    size_t last = labels_.size() - 1;
    if (pos != last) {
      std::memcpy(xb.data() + pos * code_size(), xb.data() + last * code_size(), code_size());
      labels_[pos] = labels_[last];
      positions_[labels_[pos]] = pos;
    }
    std::memset(xb.data() + last * code_size(), 0, code_size());
    xb.resize(last * code_size());
    labels_.pop_back();
    store.ntotal -= 1;
    return last;
  }

  // Appends a batch of codes to a dense faiss::IndexBinaryFlat.
  static void append(faiss::IndexBinaryFlat& store, const CodeBatch& codes) {
    std::vector<uint8_t>& xb = store.xb;
    const size_t size = size_t(store.code_size), old = xb.size();
    xb.resize(old + codes.n * size);
    for (size_t i = 0; i < codes.n; ++i) std::memcpy(xb.data() + old + i * size, codes.row(i), size);
    store.ntotal += int64_t(codes.n);
  }

  // Contiguous copy of a strided batch (FAISS takes only contiguous codes).
  std::vector<uint8_t> contiguous(const CodeBatch& codes) const {
    std::vector<uint8_t> out(codes.n * code_size());
    for (size_t i = 0; i < codes.n; ++i)
      std::memcpy(out.data() + i * code_size(), codes.row(i), code_size());
    return out;
  }

  const size_t bits_;
  std::vector<int64_t> labels_;
  std::unordered_map<int64_t, size_t> positions_;
  mutable std::shared_mutex mutex_;
};

}  // namespace fpmatch
