// The hybrid path in one call: a probe's hash code and bit reliabilities give a
// shortlist from a ProtectedIndex; the shortlisted templates' ciphertexts are
// scored against the probe's fixed-point weights, giving what the key holder
// decrypts (python/fpmatch/he/scores.py). Nothing here is secret or random:
// SEAL made the ciphertexts; this file only searches codes and multiplies and
// adds numbers it is given, exactly.
//
// Layout (python/fpmatch/he/rows.py). g = N / d templates share a ciphertext
// ("row"); slot s is template s % g of row s / g, at coefficients p*d .. p*d+d-1
// with p = s % g. c0 is kept as coefficients, c1 as NTT values, both packed
// (modular_scan.h: 6 bytes a value). The probe w becomes P(X) = sum_i w_i X^-i;
// coefficient p*d of c * P is then the inner product with template p, so a
// request carries, per distinct row, alpha = c1 * NTT(P) (NTT values), and per
// slot beta = sum_i w_i c0[p*d + i] mod q.
//
// Cut. The gallery's own id -> slot table is passed in (an int64 array, -1
// where an id holds nothing): ids the index returns without a slot are passed
// over, as the Python gallery passes over ids it holds no subject for. Richer
// eligibility (consent) is a Python callable, which a call without the GIL
// cannot ask: such a caller filters its own shortlist before anything is
// scored and hands the slots it keeps to score().
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "errors.h"
#include "negacyclic_ntt.h"
#include "modular_scan.h"
#include "protected_index.h"

namespace fpmatch {
namespace hybrid {

// Packed ciphertext rows: row r's c0 at c0 + r * stride0, its c1 at c1 + r * stride1 (bytes).
struct PackedRows {
  const uint8_t* c0;
  const uint8_t* c1;
  size_t count, stride0, stride1;
};

// The parts of an encrypted-scores request, in shortlist order.
struct Request {
  std::vector<int64_t> alpha;  // distinct rows (ascending) x N, in [0, q)
  std::vector<int64_t> beta;   // one per slot, in [0, q)
  std::vector<int64_t> index;  // coefficient p * d of each slot
  std::vector<int64_t> row;    // each slot's row of alpha
};

// Ids nearest first, and the slot each is stored in.
struct Shortlist {
  std::vector<int64_t> ids, slots;
};

// id -> slot: slot_of_id[id] for 0 <= id < size, -1 where the id holds nothing.
struct SlotTable {
  const int64_t* slot_of_id;
  size_t size;
  int64_t operator()(int64_t id) const { return id >= 0 && size_t(id) < size ? slot_of_id[id] : -1; }
};

class Rescorer {
 public:
  Rescorer(size_t n, size_t dim, uint64_t q, uint64_t psi) : ntt_(n, q, psi), n_(n), dim_(dim), q_(q) {
    modq::check_modulus(q);
    if (dim < 1 || dim > n) throw InvalidInput("dim must be in [1, N], got " + std::to_string(dim));
  }

  size_t n() const { return n_; }
  size_t dim() const { return dim_; }
  size_t group() const { return n_ / dim_; }

  // NTT values in [0, q) of P(X) = sum_i w_i X^-i (X^-i = -X^(N-i) mod X^N + 1).
  std::vector<int64_t> probe_ntt(const int64_t* w) const {
    std::vector<uint64_t> poly(n_, 0);
    poly[0] = reduce(w[0]);
    for (size_t i = 1; i < dim_; ++i) {
      const uint64_t v = reduce(w[i]);
      poly[n_ - i] = v == 0 ? 0 : q_ - v;
    }
    ntt_.apply(poly.data());
    return std::vector<int64_t>(poly.begin(), poly.end());
  }

  // The request scoring weights w (dim values) against slots (m >= 1), in that order.
  Request score(const PackedRows& rows, const int64_t* slots, size_t m, const int64_t* w, int n_threads) const {
    if (m == 0) throw InvalidInput("an empty shortlist has nothing to score");
    const size_t g = group();
    std::vector<int64_t> row_of(m);
    for (size_t i = 0; i < m; ++i) {
      if (slots[i] < 0 || size_t(slots[i]) / g >= rows.count)
        throw InvalidInput("slot " + std::to_string(slots[i]) + " holds no ciphertext");
      row_of[i] = slots[i] / int64_t(g);
    }
    std::vector<int64_t> distinct(row_of);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());

    Request out;
    out.beta.resize(m);
    out.index.resize(m);
    out.row.resize(m);
    std::vector<modq::Matrix> windows(m);  // d rows of one value each: slot i's template coefficients of c0
    for (size_t i = 0; i < m; ++i) {
      out.index[i] = (slots[i] % int64_t(g)) * int64_t(dim_);
      out.row[i] = std::lower_bound(distinct.begin(), distinct.end(), row_of[i]) - distinct.begin();
      const uint8_t* at = rows.c0 + size_t(row_of[i]) * rows.stride0 + modq::kPackedBytes * size_t(out.index[i]);
      windows[i] = {at, dim_, 1, modq::kPackedBytes};
    }
    modq::combine(windows, w, 1, q_, out.beta.data(), n_threads, modq::best_kernel());

    const std::vector<int64_t> p_hat = probe_ntt(w);
    out.alpha.resize(distinct.size() * n_);
    const modq::Matrix c1{rows.c1, rows.count, n_, rows.stride1};
    modq::multiply(c1, distinct.data(), distinct.size(), p_hat.data(), q_, out.alpha.data());
    return out;
  }

  // Up to `want` ids with a slot nearest the probe's code, nearest first: the
  // index's weighted search over a Hamming shortlist of max(hamming, depth),
  // searched four times deeper while ids without a slot fill it (as
  // python/fpmatch/galleries/codes.py CodeTable.nearest does).
  static Shortlist shortlist(const ProtectedIndex& index, const uint8_t* code, const float* reliability, size_t want,
                             size_t hamming, const SlotTable& table, int n_threads) {
    ProtectedIndex::check_neighbours(want, "want");
    const size_t total = index.size();
    size_t depth = std::min(total, std::max<size_t>(want, 16));
    Shortlist found;
    const CodeBatch query{code, 1, index.code_size()};
    while (depth) {
      std::vector<float> distances(depth);
      std::vector<int64_t> labels(depth);
      index.search_weighted(query, reliability, depth, std::max(hamming, depth), distances.data(), labels.data(),
                            n_threads);
      found = {};
      for (int64_t label : labels) {
        const int64_t slot = label >= 0 ? table(label) : -1;
        if (slot < 0) continue;
        found.ids.push_back(label);
        found.slots.push_back(slot);
        if (found.ids.size() == want) return found;
      }
      if (std::count(labels.begin(), labels.end(), ProtectedIndex::kNoLabel) || depth >= total) break;
      depth = std::min(total, depth * 4);
    }
    return found;
  }

  // The one call: the shortlist, then its request (left empty when nothing was shortlisted).
  std::pair<Shortlist, Request> identify(const ProtectedIndex& index, const uint8_t* code, const float* reliability,
                                         size_t want, size_t hamming, const SlotTable& table, const PackedRows& rows,
                                         const int64_t* w, int n_threads) const {
    Shortlist found = shortlist(index, code, reliability, want, hamming, table, n_threads);
    if (found.slots.empty()) return {std::move(found), Request{}};
    Request request = score(rows, found.slots.data(), found.slots.size(), w, n_threads);
    return {std::move(found), std::move(request)};
  }

 private:
  uint64_t reduce(int64_t x) const {
    const int64_t r = x % int64_t(q_);
    return uint64_t(r < 0 ? r + int64_t(q_) : r);
  }

  ntt::ForwardNtt ntt_;
  size_t n_, dim_;
  uint64_t q_;
};

}  // namespace hybrid
}  // namespace fpmatch
