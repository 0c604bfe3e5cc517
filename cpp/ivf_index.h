// Inverted-file search for large galleries.
//
// A coarse quantizer of nlist binary centroids (k-means in Hamming space,
// majority vote per bit) splits the gallery into lists. A query scans the
// nprobe lists whose centroids are nearest, comparing only the first
// prefix_bits of each code (codes extend one another, see projection_hash.h),
// keeps the rerank best, and orders those by their full codes. Scanning short
// prefixes of half the lists costs a fraction of an exhaustive scan.
//
// Full codes live in a dense faiss::IndexBinaryFlat (for its file format) with
// the flat index's swap-remove. The lists are one contiguous array of code
// prefixes grouped by list, rebuilt after every add or remove batch: a write
// costs a pass over the gallery (milliseconds per million codes), and searches
// stream memory instead of hopping between a thousand small allocations (which
// measured twice as slow).
#pragma once

#include <faiss/IndexBinaryFlat.h>
#include <faiss/utils/Heap.h>
#include <faiss/utils/random.h>

#include <memory>
#include <numeric>
#include <tuple>
#include <utility>

#include "byte_io.h"
#include "protected_index.h"

namespace fpmatch {

class IvfIndex : public ProtectedIndex {
 public:
  IvfIndex(size_t bits, size_t nlist, size_t prefix_bits, size_t nprobe, size_t rerank)
      : ProtectedIndex(bits, {}),
        storage_(std::make_unique<faiss::IndexBinaryFlat>(int64_t(bits))),
        nlist_(nlist),
        prefix_bytes_(prefix_bits / 8) {
    if (nlist < 1 || nlist > (1u << 20)) throw InvalidInput("nlist must be in [1, 2^20]");
    list_start_.assign(nlist + 1, 0);
    if (prefix_bits < 64 || prefix_bits > bits || prefix_bits % 64 != 0)
      throw InvalidInput("prefix_bits must be a multiple of 64 in [64, bits]");
    set_nprobe_unlocked(nprobe);
    set_rerank_unlocked(rerank);
  }

  // From a file: storage and labels as written, then the parameters, centroids
  // and each position's list; the lists themselves are rebuilt.
  IvfIndex(std::unique_ptr<faiss::IndexBinaryFlat> storage, std::vector<int64_t> labels, ByteReader extra)
      : ProtectedIndex(size_t(storage->d), std::move(labels)), storage_(std::move(storage)) {
    if (size_t(storage_->ntotal) != labels_.size() || storage_->xb.size() != labels_.size() * code_size() ||
        positions_.size() != labels_.size())
      throw InvalidInput("IVF storage and labels disagree in size");
    nlist_ = size_t(extra.u64());
    prefix_bytes_ = size_t(extra.u64()) / 8;
    set_nprobe_unlocked(size_t(extra.u64()));
    set_rerank_unlocked(size_t(extra.u64()));
    if (nlist_ < 1 || nlist_ > (1u << 20) || prefix_bytes_ < 8 || prefix_bytes_ % 8 || prefix_bytes_ > code_size())
      throw InvalidInput("bad IVF parameters");
    trained_ = extra.u64() != 0;
    if (trained_) {
      const uint8_t* centroids = extra.bytes(nlist_ * code_size());
      centroids_.assign(centroids, centroids + nlist_ * code_size());
    }
    list_of_.resize(labels_.size());
    for (uint32_t& list : list_of_) {
      uint64_t value = extra.u64();
      if (!trained_ || value >= nlist_) throw InvalidInput("IVF list assignment out of range");
      list = uint32_t(value);
    }
    if (extra.remaining() != 0) throw InvalidInput("trailing bytes after IVF lists");
    written();
  }

  Kind kind() const override { return Kind::Ivf; }
  const faiss::IndexBinary& faiss_index() const override { return *storage_; }

  bool is_trained() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return trained_;
  }
  size_t nlist() const { return nlist_; }
  size_t prefix_bits() const { return prefix_bytes_ * 8; }
  size_t nprobe() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return nprobe_;
  }
  void set_nprobe(size_t nprobe) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    set_nprobe_unlocked(nprobe);
  }
  size_t rerank() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return rerank_;
  }
  void set_rerank(size_t rerank) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    set_rerank_unlocked(rerank);
  }

  std::vector<size_t> list_sizes() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    std::vector<size_t> sizes(nlist_);
    for (size_t l = 0; l < nlist_; ++l) sizes[l] = list_start_[l + 1] - list_start_[l];
    return sizes;
  }

  // Binary k-means on (a deterministic sample of) codes. Only before any add.
  void train(const CodeBatch& codes, int n_threads) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    if (!labels_.empty()) throw InvalidInput("an IVF index is trained before codes are added");
    if (codes.n < nlist_)
      throw InvalidInput("IVF training needs at least nlist (" + std::to_string(nlist_) + ") codes");
    std::vector<size_t> order(codes.n);
    std::iota(order.begin(), order.end(), size_t(0));
    faiss::RandomGenerator rng(1234);
    const size_t m = std::min(codes.n, nlist_ * kTrainPerList);
    for (size_t i = 0; i < m; ++i) std::swap(order[i], order[i + size_t(rng.rand_int(int(codes.n - i)))]);
    std::vector<uint8_t> sample(m * code_size());
    for (size_t i = 0; i < m; ++i) std::memcpy(&sample[i * code_size()], codes.row(order[i]), code_size());

    std::vector<uint8_t> centroids(sample.begin(), sample.begin() + nlist_ * code_size());
    std::vector<int64_t> assign(m);
    std::vector<uint32_t> ones(nlist_ * bits_), sizes(nlist_);
    for (int iter = 0; iter < kTrainIterations; ++iter) {
      nearest_centroids(centroids, sample.data(), m, 1, assign.data(), n_threads);
      std::fill(ones.begin(), ones.end(), 0);
      std::fill(sizes.begin(), sizes.end(), 0);
      for (size_t i = 0; i < m; ++i) {
        const uint8_t* code = &sample[i * code_size()];
        uint32_t* count = &ones[size_t(assign[i]) * bits_];
        for (size_t b = 0; b < bits_; ++b) count[b] += (code[b >> 3] >> (b & 7)) & 1;
        ++sizes[size_t(assign[i])];
      }
      for (size_t c = 0; c < nlist_; ++c) {
        uint8_t* centroid = &centroids[c * code_size()];
        if (sizes[c] == 0) {  // an empty list takes a random sample code
          std::memcpy(centroid, &sample[size_t(rng.rand_int(int(m))) * code_size()], code_size());
          continue;
        }
        for (size_t b = 0; b < bits_; ++b) {
          uint32_t twice = 2 * ones[c * bits_ + b];
          if (twice == sizes[c]) continue;  // a tie keeps the current bit
          uint8_t mask = uint8_t(1u << (b & 7));
          centroid[b >> 3] = twice > sizes[c] ? uint8_t(centroid[b >> 3] | mask) : uint8_t(centroid[b >> 3] & ~mask);
        }
      }
    }
    std::fill(sample.begin(), sample.end(), 0);
    centroids_ = std::move(centroids);
    trained_ = true;
  }

  void write_extra(std::vector<uint8_t>& out) const override {
    put_u64(out, nlist_);
    put_u64(out, prefix_bytes_ * 8);
    put_u64(out, nprobe_);
    put_u64(out, rerank_);
    put_u64(out, trained_ ? 1 : 0);
    out.insert(out.end(), centroids_.begin(), centroids_.end());
    for (uint32_t list : list_of_) put_u64(out, list);
  }

 protected:
  const faiss::IndexBinaryFlat& storage() const override { return *storage_; }

  void store_codes(const CodeBatch& codes, int n_threads) override {
    if (!trained_) throw InvalidInput("train the IVF index (on enough codes) before adding");
    std::vector<uint8_t> packed = contiguous(codes);
    std::vector<int64_t> lists(codes.n);
    nearest_centroids(centroids_, packed.data(), codes.n, 1, lists.data(), n_threads);
    append(*storage_, codes);
    for (int64_t list : lists) list_of_.push_back(uint32_t(list));
  }

  void erase_position(size_t pos) override {
    size_t moved_from = swap_remove(*storage_, pos);
    list_of_[pos] = list_of_[moved_from];
    list_of_.pop_back();
  }

  // Regroups prefixes by list (a counting sort over storage order).
  void written() override {
    std::vector<size_t> start(nlist_ + 1, 0);
    for (uint32_t list : list_of_) ++start[list + 1];
    for (size_t l = 0; l < nlist_; ++l) start[l + 1] += start[l];
    std::vector<size_t> cursor(start.begin(), start.end() - 1);
    std::fill(packed_prefixes_.begin(), packed_prefixes_.end(), 0);
    packed_prefixes_.assign(list_of_.size() * prefix_bytes_, 0);
    packed_positions_.assign(list_of_.size(), 0);
    for (size_t pos = 0; pos < list_of_.size(); ++pos) {
      size_t slot = cursor[list_of_[pos]]++;
      std::memcpy(&packed_prefixes_[slot * prefix_bytes_], storage_->xb.data() + pos * code_size(), prefix_bytes_);
      packed_positions_[slot] = int64_t(pos);
    }
    list_start_ = std::move(start);
  }

  void knn(const CodeBatch& queries, size_t k, int32_t* distances, int64_t* positions,
           int n_threads) const override {
    const size_t probes = std::min(nprobe_, nlist_);
    const size_t shortlist = std::max(rerank_, k);
    parallel_for(queries.n, n_threads, [&](size_t q) {
      const uint8_t* query = queries.row(q);
      std::vector<int64_t> lists = probe_lists(query, probes);
      std::vector<int32_t> heap_d(shortlist);
      std::vector<int64_t> heap_p(shortlist);
      faiss::heap_heapify<faiss::CMax<int32_t, int64_t>>(shortlist, heap_d.data(), heap_p.data());
      for (int64_t l : lists) {
        size_t begin = list_start_[size_t(l)], end = list_start_[size_t(l) + 1];
        scan::scan_into_heap(query, &packed_prefixes_[begin * prefix_bytes_], end - begin, prefix_bytes_,
                             &packed_positions_[begin], 0, shortlist, heap_d.data(), heap_p.data());
      }
      // Order the shortlist by full-code distance, ties by label.
      std::vector<std::tuple<int32_t, int64_t, int64_t>> best;  // distance, label, position
      best.reserve(shortlist);
      for (size_t i = 0; i < shortlist; ++i) {
        if (heap_p[i] < 0) continue;
        const uint8_t* code = storage_->xb.data() + size_t(heap_p[i]) * code_size();
        best.emplace_back(scan::distance(query, code, code_size()), labels_[size_t(heap_p[i])], heap_p[i]);
      }
      size_t found = std::min(k, best.size());
      std::partial_sort(best.begin(), best.begin() + found, best.end());
      for (size_t i = 0; i < k; ++i) {
        distances[q * k + i] = i < found ? std::get<0>(best[i]) : std::numeric_limits<int32_t>::max();
        positions[q * k + i] = i < found ? std::get<2>(best[i]) : kNoLabel;
      }
    });
  }

 private:
  static constexpr size_t kTrainPerList = 64;
  static constexpr int kTrainIterations = 8;

  void set_nprobe_unlocked(size_t nprobe) {
    check_neighbours(nprobe, "nprobe");
    nprobe_ = nprobe;
  }
  void set_rerank_unlocked(size_t rerank) {
    check_neighbours(rerank, "rerank");
    rerank_ = rerank;
  }

  // The `count` lists nearest the query, in memory order: the result does not
  // depend on the order (ties go to the smaller position), and forward sweeps
  // stream. A selection, not a heap: count is often half of nlist.
  std::vector<int64_t> probe_lists(const uint8_t* query, size_t count) const {
    if (labels_.empty()) return {};
    std::vector<int32_t> d(nlist_);
    scan::distances(query, centroids_.data(), nlist_, code_size(), d.data());
    std::vector<int64_t> lists(nlist_);
    std::iota(lists.begin(), lists.end(), int64_t(0));
    auto nearer = [&](int64_t a, int64_t b) { return std::make_pair(d[size_t(a)], a) < std::make_pair(d[size_t(b)], b); };
    std::nth_element(lists.begin(), lists.begin() + (count - 1), lists.end(), nearer);
    lists.resize(count);
    std::sort(lists.begin(), lists.end());
    return lists;
  }

  // The `count` nearest centroids of each of n codes.
  void nearest_centroids(const std::vector<uint8_t>& centroids, const uint8_t* codes, size_t n, size_t count,
                         int64_t* out, int n_threads) const {
    parallel_for(n, n_threads, [&](size_t i) {
      std::vector<int32_t> d(count);
      scan::knn(codes + i * code_size(), centroids.data(), 0, nlist_, code_size(), count, d.data(), out + i * count);
    });
  }

  std::unique_ptr<faiss::IndexBinaryFlat> storage_;
  size_t nlist_, prefix_bytes_, nprobe_ = 1, rerank_ = 1;
  bool trained_ = false;
  std::vector<uint8_t> centroids_;        // nlist x code_size
  std::vector<uint32_t> list_of_;         // by storage position
  std::vector<size_t> list_start_;        // list l owns packed entries [start[l], start[l+1])
  std::vector<uint8_t> packed_prefixes_;  // prefix_bytes per entry, grouped by list
  std::vector<int64_t> packed_positions_;
};

}  // namespace fpmatch
