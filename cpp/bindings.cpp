// pybind11 module fpmatch._core. This layer only converts and validates
// arguments (dtype, shape, strides) and releases the GIL; all logic lives in
// the headers it includes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>

#include "hamming_scan.h"
#include "hybrid_rescore.h"
#include "index_io.h"
#include "modular_scan.h"
#include "negacyclic_ntt.h"
#include "projection_hash.h"
#include "weighted_distance.h"

namespace py = pybind11;
using namespace fpmatch;

namespace {

template <class T>
struct Rows {
  const T* data;
  size_t n, cols, row_stride;  // row_stride in elements
};

template <class T>
const char* dtype_name();
template <> const char* dtype_name<float>() { return "float32"; }
template <> const char* dtype_name<uint8_t>() { return "uint8"; }
template <> const char* dtype_name<int64_t>() { return "int64"; }

template <class T>
void check_dtype(const py::array& a, const char* what) {
  if (!py::isinstance<py::array_t<T>>(a))
    throw WrongDtype(std::string(what) + " must have dtype " + dtype_name<T>() + ", got " +
                         std::string(py::str(a.dtype())) + "; convert explicitly with np.asarray(x, dtype=np." +
                         dtype_name<T>() + ")");
}

// A 2-D array whose rows may be strided but whose elements within a row are
// contiguous: such arrays are read in place, without a copy.
template <class T>
Rows<T> as_rows(const py::array& a, const char* what, size_t cols) {
  check_dtype<T>(a, what);
  if (a.ndim() != 2)
    throw InvalidInput(std::string(what) + " must be a 2-D array of shape (n, " + std::to_string(cols) +
                          "), got " + std::to_string(a.ndim()) + " dimension(s)");
  if (size_t(a.shape(1)) != cols)
    throw InvalidInput(std::string(what) + " must have " + std::to_string(cols) + " columns, got " +
                          std::to_string(a.shape(1)));
  if (a.shape(0) == 0) return {static_cast<const T*>(a.data()), 0, cols, cols};
  if (reinterpret_cast<std::uintptr_t>(a.data()) % alignof(T) != 0)  // e.g. np.frombuffer at an odd offset
    throw InvalidInput(std::string(what) + " must be aligned for its dtype; pass np.require(x, requirements='AC')");
  if (a.shape(0) > 1 && (a.strides(0) <= 0 || a.strides(0) % ssize_t(sizeof(T)) != 0))
    throw InvalidInput(std::string(what) + " rows must be laid out forwards in memory; pass np.ascontiguousarray(x)");
  if (cols > 1 && a.strides(1) != ssize_t(sizeof(T)))
    throw InvalidInput(std::string(what) + " must be contiguous within each row; pass np.ascontiguousarray(x)");
  size_t stride = a.shape(0) > 1 ? size_t(a.strides(0)) / sizeof(T) : cols;
  return {static_cast<const T*>(a.data()), size_t(a.shape(0)), cols, stride};
}

const int64_t* as_ids(const py::array& a, size_t n) {
  check_dtype<int64_t>(a, "ids");
  if (a.ndim() != 1 || size_t(a.shape(0)) != n)
    throw InvalidInput("ids must be a 1-D array with one id per code (" + std::to_string(n) + ")");
  if (n > 1 && a.strides(0) != ssize_t(sizeof(int64_t)))
    throw InvalidInput("ids must be contiguous; pass np.ascontiguousarray(ids)");
  return static_cast<const int64_t*>(a.data());
}

std::vector<uint8_t> as_key(const py::bytes& key) {
  std::string s = key;
  return std::vector<uint8_t>(s.begin(), s.end());
}

CodeBatch as_codes(const py::array& a, const ProtectedIndex& index, const char* what) {
  Rows<uint8_t> rows = as_rows<uint8_t>(a, what, index.code_size());
  return {rows.data, rows.n, rows.row_stride};
}

// A 2-D uint8 array of packed values (modular_scan.h: 6 bytes each) read in
// place: contiguous within rows, rows forwards and not overlapping. Anything
// else is refused, never copied.
modq::Matrix as_matrix(const py::array& a, const char* what) {
  check_dtype<uint8_t>(a, what);
  if (a.ndim() != 2) throw InvalidInput(std::string(what) + " must be 2-D arrays");
  const size_t rows = size_t(a.shape(0)), bytes = size_t(a.shape(1));
  if (rows == 0 || bytes == 0) throw InvalidInput(std::string(what) + " must not be empty");
  if (bytes % modq::kPackedBytes != 0)
    throw InvalidInput(std::string(what) + " rows must hold whole packed values (a multiple of 6 bytes), got " +
                       std::to_string(bytes) + " bytes");
  if (bytes > 1 && a.strides(1) != 1)
    throw InvalidInput(std::string(what) + " must be contiguous within each row; pass np.ascontiguousarray(x)");
  size_t stride = bytes;
  if (rows > 1) {
    if (a.strides(0) <= 0 || size_t(a.strides(0)) < bytes)
      throw InvalidInput(std::string(what) + " rows must be laid out forwards without overlap; pass np.ascontiguousarray(x)");
    stride = size_t(a.strides(0));
  }
  return {static_cast<const uint8_t*>(a.data()), rows, bytes / modq::kPackedBytes, stride};
}

// A list of same-shape matrices; `keep` holds them while the GIL is released.
std::vector<modq::Matrix> as_matrices(const py::sequence& seq, std::vector<py::array>& keep) {
  std::vector<modq::Matrix> out;
  for (const py::handle& item : seq) {
    if (!py::isinstance<py::array>(item)) throw WrongDtype("matrices must be numpy uint8 arrays of packed values");
    keep.push_back(py::reinterpret_borrow<py::array>(item));
    out.push_back(as_matrix(keep.back(), "matrices"));
    if (out.back().rows != out[0].rows || out.back().cols != out[0].cols)
      throw InvalidInput("all matrices must have the same shape");
  }
  if (out.empty()) throw InvalidInput("no matrices given");
  return out;
}

const int64_t* as_vector(const py::array& a, const char* what, size_t n) {
  check_dtype<int64_t>(a, what);
  if (a.ndim() != 1 || size_t(a.shape(0)) != n)
    throw InvalidInput(std::string(what) + " must be a 1-D array of length " + std::to_string(n));
  if (reinterpret_cast<uintptr_t>(a.data()) % alignof(int64_t) != 0 || (n > 1 && a.strides(0) != ssize_t(sizeof(int64_t))))
    throw InvalidInput(std::string(what) + " must be contiguous and aligned; pass np.ascontiguousarray(x)");
  return static_cast<const int64_t*>(a.data());
}

py::bytes to_bytes(const std::vector<uint8_t>& v) {
  return py::bytes(reinterpret_cast<const char*>(v.data()), v.size());
}

// Each row (m, N) of values in [0, q) through an NTT of that size (a copy; the GIL released).
template <class Transform>
py::array_t<int64_t> transform_rows(const py::array& values, uint64_t q, uint64_t psi, const char* name,
                                    const char* out_of_range) {
  Rows<int64_t> rows = as_rows<int64_t>(values, name, values.ndim() == 2 ? size_t(values.shape(1)) : 0);
  const Transform transform(rows.cols, q, psi);
  py::array_t<int64_t> out({rows.n, rows.cols});
  int64_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    for (size_t i = 0; i < rows.n; ++i)
      for (size_t c = 0; c < rows.cols; ++c) {
        const int64_t v = rows.data[i * rows.row_stride + c];
        if (v < 0 || uint64_t(v) >= q) throw InvalidInput(out_of_range);
        dst[i * rows.cols + c] = v;
      }
    for (size_t i = 0; i < rows.n; ++i) transform.apply(reinterpret_cast<uint64_t*>(dst + i * rows.cols));
  }
  return out;
}

void translate_errors() {
  // Leaked on purpose: it must outlive interpreter shutdown.
  static py::handle errors = py::module_::import("fpmatch.errors").release();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const AuthenticationFailed& e) {
      PyErr_SetString(errors.attr("AuthenticationError").ptr(), e.what());
    } catch (const IdConflict& e) {
      PyErr_SetString(errors.attr("IdConflictError").ptr(), e.what());
    } catch (const WrongDtype& e) {
      PyErr_SetString(errors.attr("DtypeError").ptr(), e.what());
    } catch (const InvalidInput& e) {
      PyErr_SetString(errors.attr("InvalidInputError").ptr(), e.what());
    } catch (const faiss::FaissException& e) {
      PyErr_SetString(errors.attr("IndexFormatError").ptr(), e.what());
    }
  });
}

}  // namespace

// ---- The hybrid path (hybrid_rescore.h, negacyclic_ntt.h): conversion and validation only.
namespace {

// A contiguous, aligned 1-D array of exactly n elements of T (any length when n is SIZE_MAX).
template <class T>
const T* as_flat(const py::array& a, const char* what, size_t n) {
  check_dtype<T>(a, what);
  if (a.ndim() != 1 || (n != SIZE_MAX && size_t(a.shape(0)) != n))
    throw InvalidInput(std::string(what) + " must be a 1-D array" +
                       (n != SIZE_MAX ? " of length " + std::to_string(n) : std::string()));
  if (reinterpret_cast<uintptr_t>(a.data()) % alignof(T) != 0 || (a.shape(0) > 1 && a.strides(0) != ssize_t(sizeof(T))))
    throw InvalidInput(std::string(what) + " must be contiguous and aligned; pass np.ascontiguousarray(x)");
  return static_cast<const T*>(a.data());
}

// The first `count` rows of packed c0 and c1 arrays (rows.py), N values a row.
hybrid::PackedRows as_packed_rows(const py::array& c0, const py::array& c1, size_t count, size_t n) {
  if (count == 0) return {nullptr, nullptr, 0, 0, 0};
  const modq::Matrix a = as_matrix(c0, "c0"), b = as_matrix(c1, "c1");
  if (a.cols != n || b.cols != n)
    throw InvalidInput("c0 and c1 rows must hold N = " + std::to_string(n) + " packed values");
  if (count > a.rows || count > b.rows) throw InvalidInput("count exceeds the rows given");
  return {a.data, b.data, count, a.row_stride, b.row_stride};
}

// A vector handed to numpy without a copy: the array owns it.
template <class T>
py::array_t<T> adopt(std::vector<T>&& v, std::vector<size_t> shape) {
  auto* held = new std::vector<T>(std::move(v));
  py::capsule owner(held, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, held->data(), owner);
}

py::tuple request_arrays(hybrid::Request&& r, size_t n) {
  const size_t rows = r.alpha.size() / n, m = r.beta.size();
  return py::make_tuple(adopt(std::move(r.alpha), {rows, n}), adopt(std::move(r.beta), {m}),
                        adopt(std::move(r.index), {m}), adopt(std::move(r.row), {m}));
}

void bind_hybrid(py::module_& m) {
  m.def("ntt_forward", [](const py::array& coefficients, uint64_t q, uint64_t psi) {
          return transform_rows<ntt::ForwardNtt>(coefficients, q, psi, "coefficients", "coefficients must lie in [0, q)");
        },
        py::arg("coefficients"), py::arg("q"), py::arg("psi"),
        "NTT values in [0, q), SEAL's order (value i at psi^(2 bitrev(i) + 1)), of polynomials given as "
        "coefficients (m, N) in [0, q); the inverse of ntt_inverse.");

  using hybrid::Rescorer;
  py::class_<Rescorer>(m, "HybridRescorer",
                       "The hybrid path: a code shortlist and the encrypted scores of its packed ciphertext rows.")
      .def(py::init<size_t, size_t, uint64_t, uint64_t>(), py::arg("n"), py::arg("dim"), py::arg("q"), py::arg("psi"))
      .def_property_readonly("n", &Rescorer::n)
      .def_property_readonly("dim", &Rescorer::dim)
      .def_property_readonly("group", &Rescorer::group)
      .def("score", [](const Rescorer& r, const py::array& c0, const py::array& c1, size_t count,
                       const py::array& slots, const py::array& weights, int n_threads) {
             const hybrid::PackedRows rows = as_packed_rows(c0, c1, count, r.n());
             const int64_t* s = as_flat<int64_t>(slots, "slots", SIZE_MAX);
             const size_t m = size_t(slots.shape(0));
             const int64_t* w = as_flat<int64_t>(weights, "weights", r.dim());
             hybrid::Request out;
             {
               py::gil_scoped_release release;
               out = r.score(rows, s, m, w, n_threads);
             }
             return request_arrays(std::move(out), r.n());
           },
           py::arg("c0"), py::arg("c1"), py::arg("count"), py::arg("slots"), py::arg("weights"),
           py::arg("n_threads") = 0, "(alpha, beta, index, row) of the weights against the slots, in order.")
      .def("identify", [](const Rescorer& r, const ProtectedIndex& index, const py::array& code,
                          const py::array& reliability, size_t want, size_t hamming, const py::array& slot_of_id,
                          const py::array& c0, const py::array& c1, size_t count, const py::array& weights,
                          int n_threads) {
             const uint8_t* c = as_flat<uint8_t>(code, "code", index.code_size());
             const float* rel = as_flat<float>(reliability, "reliability", index.bits());
             const hybrid::SlotTable table{as_flat<int64_t>(slot_of_id, "slot_of_id", SIZE_MAX), size_t(slot_of_id.shape(0))};
             const hybrid::PackedRows rows = as_packed_rows(c0, c1, count, r.n());
             const int64_t* w = as_flat<int64_t>(weights, "weights", r.dim());
             std::pair<hybrid::Shortlist, hybrid::Request> out;
             {
               py::gil_scoped_release release;
               out = r.identify(index, c, rel, want, hamming, table, rows, w, n_threads);
             }
             const size_t k = out.first.ids.size();
             py::tuple parts = request_arrays(std::move(out.second), r.n());
             return py::make_tuple(adopt(std::move(out.first.ids), {k}), adopt(std::move(out.first.slots), {k}), parts[0],
                                   parts[1], parts[2], parts[3]);
           },
           py::arg("index"), py::arg("code"), py::arg("reliability"), py::arg("want"), py::arg("hamming"),
           py::arg("slot_of_id"), py::arg("c0"), py::arg("c1"), py::arg("count"), py::arg("weights"),
           py::arg("n_threads") = 0,
           "shortlist, then score, in one call with the GIL released: (ids, slots, alpha, beta, index, row).");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fpmatch native core: keyed hashing, protected binary indexes, authenticated serialisation";
  translate_errors();

  m.def("sha256", [](const py::bytes& data) {
    std::string s = data;
    Digest d = sha256(s.data(), s.size());
    return py::bytes(reinterpret_cast<const char*>(d.data()), d.size());
  }, py::arg("data"));
  m.def("hmac_sha256", [](const py::bytes& key, const py::bytes& msg) {
    std::string k = key, s = msg;
    Digest d = hmac_sha256(reinterpret_cast<const uint8_t*>(k.data()), k.size(), s.data(), s.size());
    return py::bytes(reinterpret_cast<const char*>(d.data()), d.size());
  }, py::arg("key"), py::arg("message"));
  m.def("derive_subkey", [](const py::bytes& master, const std::string& purpose) {
    return to_bytes(derive_subkey(as_key(master), purpose));
  }, py::arg("master_key"), py::arg("purpose"));
  m.def("scan_kernel", &scan::kernel_name, "The Hamming scan kernel chosen for this CPU.");
  m.def("weighted_distances", [](const py::array& queries, const py::array& weights, const py::array& rows_a,
                                  const py::array& codes, const py::array& rows_b, int n_threads) {
          check_dtype<uint8_t>(queries, "queries");
          if (queries.ndim() != 2) throw InvalidInput("queries must be a 2-D uint8 array of codes");
          const size_t code_size = size_t(queries.shape(1));
          if (code_size == 0 || code_size % 8 != 0) throw InvalidInput("codes must be a multiple of 8 bytes wide");
          Rows<uint8_t> q = as_rows<uint8_t>(queries, "queries", code_size);
          Rows<uint8_t> c = as_rows<uint8_t>(codes, "codes", code_size);
          Rows<float> w = as_rows<float>(weights, "weights", code_size * 8);
          if (w.n != q.n) throw InvalidInput("weights need one row per query");
          const size_t n = rows_a.ndim() == 1 ? size_t(rows_a.shape(0)) : 0;
          const int64_t* a = as_ids(rows_a, n);
          const int64_t* b = as_ids(rows_b, n);
          py::array_t<float> out(n);
          float* dst = out.mutable_data();
          {
            py::gil_scoped_release release;
            weighted_pair_distances({q.data, q.n, q.row_stride}, {w.data, w.n, w.row_stride},
                                    {c.data, c.n, c.row_stride}, code_size, a, b, n, dst, n_threads);
          }
          return out;
        },
        py::arg("queries"), py::arg("weights"), py::arg("rows_a"), py::arg("codes"), py::arg("rows_b"),
        py::arg("n_threads") = 0,
        "Weighted Hamming distance of pair i, queries[rows_a[i]] to codes[rows_b[i]]: a mismatch in "
        "bit j costs weights[rows_a[i], j].");

  m.def("modular_kernels", [] {
    std::vector<std::string> names;
    for (modq::Kernel k : modq::available_kernels()) names.push_back(modq::kernel_name(k));
    return names;
  }, "The encrypted-scoring kernels this CPU can run, fastest (the default) first.");
  m.def("modular_combine", [](const py::sequence& matrices, const py::array& weights, uint64_t q, int n_threads,
                              const std::string& kernel) {
          std::vector<py::array> keep;
          std::vector<modq::Matrix> ms = as_matrices(matrices, keep);
          const bool batch = weights.ndim() == 2;
          check_dtype<int64_t>(weights, "weights");
          if (batch && (weights.shape(0) == 0 || size_t(weights.shape(1)) != ms[0].rows))
            throw InvalidInput("weights must be (probes, " + std::to_string(ms[0].rows) + ") with at least one probe");
          const size_t probes = batch ? size_t(weights.shape(0)) : 1;
          auto flat = py::array_t<int64_t, py::array::c_style>::ensure(weights);  // same dtype: a layout copy at most
          const int64_t* w = batch ? flat.data() : as_vector(weights, "weights", ms[0].rows);
          const modq::Kernel k = modq::kernel_named(kernel);
          modq::check_modulus(q);
          std::vector<size_t> shape{ms.size(), ms[0].cols};
          if (batch) shape.insert(shape.begin(), probes);
          py::array_t<int64_t> out(shape);
          int64_t* dst = out.mutable_data();
          {
            py::gil_scoped_release release;
            modq::combine(ms, w, probes, q, dst, n_threads, k);
          }
          return out;
        },
        py::arg("matrices"), py::arg("weights"), py::arg("q"), py::kw_only(), py::arg("n_threads") = 0,
        py::arg("kernel") = "auto",
        "out[i] = sum_j weights[j] * matrices[i][j] mod q, in [0, q), for same-shape uint8 matrices of packed "
        "values (6 bytes little-endian each, x + (q-1)/2 for x centred mod q; q odd, below 2^48). weights (d,) "
        "gives (matrices, cols); weights (probes, d) scores the batch in one sweep and gives (probes, matrices, "
        "cols). Stored values above q - 1 raise InvalidInputError.");
  m.def("modular_multiply", [](const py::array& a, const py::array& b, uint64_t q) {
          modq::Matrix x = as_matrix(a, "a");
          const int64_t* y = as_vector(b, "b", x.cols);
          modq::check_modulus(q);
          py::array_t<int64_t> out({x.rows, x.cols});
          int64_t* dst = out.mutable_data();
          {
            py::gil_scoped_release release;
            modq::multiply(x, nullptr, x.rows, y, q, dst);
          }
          return out;
        },
        py::arg("a"), py::arg("b"), py::arg("q"),
        "a * b mod q elementwise by row, in [0, q): a packed (uint8, 6 bytes a value), b (one row) in [0, q).");
  m.def("modular_read", [](const py::sequence& matrices, int n_threads) {
          std::vector<py::array> keep;
          std::vector<modq::Matrix> ms = as_matrices(matrices, keep);
          py::gil_scoped_release release;
          return modq::read_all(ms, n_threads);
        },
        py::arg("matrices"), py::kw_only(), py::arg("n_threads") = 0,
        "XOR of every value, read as modular_combine reads them (a memory-bandwidth baseline).");

  m.def("pack_values", [](const py::array& values, uint64_t q) {
          Rows<int64_t> rows = as_rows<int64_t>(values, "values", values.ndim() == 2 ? size_t(values.shape(1)) : 0);
          modq::check_modulus(q);
          py::array_t<uint8_t> out({rows.n, rows.cols * modq::kPackedBytes});
          uint8_t* dst = out.mutable_data();
          {
            py::gil_scoped_release release;
            for (size_t i = 0; i < rows.n; ++i)
              modq::pack(rows.data + i * rows.row_stride, rows.cols, q, dst + i * rows.cols * modq::kPackedBytes);
          }
          return out;
        },
        py::arg("values"), py::arg("q"),
        "int64 (rows, k), any values -> their packed form (uint8 (rows, 6k)): x mod q centred, stored as x + (q-1)/2 "
        "in 6 bytes little-endian.");
  m.def("unpack_values", [](const py::array& packed, uint64_t q) {
          const modq::Matrix x = as_matrix(packed, "packed");
          modq::check_modulus(q);
          py::array_t<int64_t> out({x.rows, x.cols});
          int64_t* dst = out.mutable_data();
          bool in_range = true;
          {
            py::gil_scoped_release release;
            for (size_t i = 0; i < x.rows; ++i)
              in_range &= modq::unpack(x.data + i * x.row_stride, x.cols, q, dst + i * x.cols);
          }
          if (!in_range) modq::out_of_range();
          return out;
        },
        py::arg("packed"), py::arg("q"),
        "Packed values (uint8 (rows, 6k)) -> centred int64 (rows, k); a stored value above q - 1 raises "
        "InvalidInputError.");
  m.def("ntt_inverse", [](const py::array& values, uint64_t q, uint64_t psi) {
          return transform_rows<ntt::InverseNtt>(values, q, psi, "values", "NTT values must lie in [0, q)");
        },
        py::arg("values"), py::arg("q"), py::arg("psi"),
        "Coefficients in [0, q) of polynomials given as NTT values (m, N) in SEAL's order (value i at "
        "psi^(2 bitrev(i) + 1)), for psi SEAL's primitive 2N-th root of unity mod the prime q.");

  py::class_<ProjectionHasher>(m, "ProjectionHasher")
      .def(py::init([](const py::bytes& key, size_t dim, size_t bits, std::optional<py::array> offset,
                       float offset_removal, const std::string& scheme) {
             std::vector<float> off;
             if (offset) {
               check_dtype<float>(*offset, "offset");
               if (offset->ndim() != 1 || size_t(offset->shape(0)) != dim)
                 throw InvalidInput("offset must be a 1-D array of length dim");
               auto flat = py::array_t<float, py::array::c_style>::ensure(*offset);  // same dtype: a layout copy only
               off.assign(flat.data(), flat.data() + dim);
             }
             return std::make_unique<ProjectionHasher>(as_key(key), dim, bits, std::move(off), offset_removal,
                                                       scheme);
           }),
           py::arg("key"), py::arg("dim"), py::arg("bits"), py::arg("offset") = py::none(),
           py::arg("offset_removal") = 1.0f, py::arg("scheme") = "srp-v2")
      .def_property_readonly("dim", &ProjectionHasher::dim)
      .def_property_readonly("bits", &ProjectionHasher::bits)
      .def_property_readonly("code_size", &ProjectionHasher::code_size)
      .def_property_readonly("offset_removal", &ProjectionHasher::offset_removal)
      .def_property_readonly("scheme", &ProjectionHasher::scheme)
      .def("hash", [](const ProjectionHasher& h, const py::array& x, int n_threads) {
             Rows<float> rows = as_rows<float>(x, "templates", h.dim());
             py::array_t<uint8_t> out({rows.n, h.code_size()});
             uint8_t* dst = out.mutable_data();
             {
               py::gil_scoped_release release;
               h.hash(rows.data, rows.n, rows.row_stride, dst, n_threads);
             }
             return out;
           },
           py::arg("templates"), py::arg("n_threads") = 0)
      .def("hash_with_reliability", [](const ProjectionHasher& h, const py::array& x, int n_threads) {
             Rows<float> rows = as_rows<float>(x, "templates", h.dim());
             py::array_t<uint8_t> codes({rows.n, h.code_size()});
             py::array_t<float> reliability({rows.n, h.bits()});
             uint8_t* dst = codes.mutable_data();
             float* rel = reliability.mutable_data();
             {
               py::gil_scoped_release release;
               h.hash(rows.data, rows.n, rows.row_stride, dst, n_threads, rel);
             }
             return py::make_tuple(codes, reliability);
           },
           py::arg("templates"), py::arg("n_threads") = 0,
           "Codes and per-bit reliabilities (n x bits, rows sum to 1). Keep reliabilities per request only.")
      .def("weights", [](const ProjectionHasher& h) {
             py::array_t<float> out({h.dim(), h.bits()});
             std::copy(h.weights().begin(), h.weights().end(), out.mutable_data());
             return out;
           },
           "The secret projection matrix (dim x bits). Whoever holds it can approximately invert codes.");

  py::class_<ProtectedIndex>(m, "ProtectedIndex")
      .def_property_readonly("bits", &ProtectedIndex::bits)
      .def_property_readonly("code_size", &ProtectedIndex::code_size)
      .def_property_readonly("kind", [](const ProtectedIndex& i) {
        switch (i.kind()) {
          case ProtectedIndex::Kind::Flat: return "flat";
          case ProtectedIndex::Kind::Hnsw: return "hnsw";
          case ProtectedIndex::Kind::Ivf: return "ivf";
        }
        return "unknown";
      })
      .def("__len__", &ProtectedIndex::size)
      .def("__contains__", &ProtectedIndex::contains)
      .def("ids", [](const ProtectedIndex& i) {
        std::vector<int64_t> ids = i.ids();
        return py::array_t<int64_t>(ids.size(), ids.data());
      })
      .def("add", [](ProtectedIndex& i, const py::array& codes, const py::array& ids, int n_threads) {
             CodeBatch batch = as_codes(codes, i, "codes");
             const int64_t* id_ptr = as_ids(ids, batch.n);
             py::gil_scoped_release release;
             i.add(batch, id_ptr, n_threads);
           },
           py::arg("codes"), py::arg("ids"), py::arg("n_threads") = 0)
      .def("remove", [](ProtectedIndex& i, const py::array& ids) {
             check_dtype<int64_t>(ids, "ids");
             if (ids.ndim() != 1) throw InvalidInput("ids must be 1-D");
             const int64_t* id_ptr = as_ids(ids, size_t(ids.shape(0)));
             py::gil_scoped_release release;
             return i.remove(size_t(ids.shape(0)), id_ptr);
           },
           py::arg("ids"))
      .def("reconstruct", [](const ProtectedIndex& i, const py::array& ids) {
             check_dtype<int64_t>(ids, "ids");
             if (ids.ndim() != 1) throw InvalidInput("ids must be 1-D");
             const size_t n = size_t(ids.shape(0));
             const int64_t* id_ptr = as_ids(ids, n);
             py::array_t<uint8_t> out({n, i.code_size()});
             uint8_t* dst = out.mutable_data();
             {
               py::gil_scoped_release release;
               i.reconstruct(n, id_ptr, dst);
             }
             return out;
           },
           py::arg("ids"), "Stored codes of the given ids (each must be present).")
      .def("search", [](const ProtectedIndex& i, const py::array& queries, size_t k, int n_threads) {
             ProtectedIndex::check_neighbours(k, "k");  // before the results are allocated
             CodeBatch batch = as_codes(queries, i, "queries");
             py::array_t<int32_t> distances({batch.n, k});
             py::array_t<int64_t> labels({batch.n, k});
             int32_t* d = distances.mutable_data();
             int64_t* l = labels.mutable_data();
             {
               py::gil_scoped_release release;
               i.search(batch, k, d, l, n_threads);
             }
             return py::make_tuple(distances, labels);
           },
           py::arg("queries"), py::arg("k"), py::arg("n_threads") = 0)
      .def("search_weighted", [](const ProtectedIndex& i, const py::array& queries, const py::array& weights,
                                 size_t k, size_t shortlist, int n_threads) {
             ProtectedIndex::check_neighbours(k, "k");
             if (shortlist > ProtectedIndex::kMaxNeighbours) ProtectedIndex::check_neighbours(shortlist, "shortlist");
             CodeBatch batch = as_codes(queries, i, "queries");
             Rows<float> w = as_rows<float>(weights, "weights", i.bits());
             if (w.n != batch.n) throw InvalidInput("weights must have one row per query");
             if (w.n > 1 && w.row_stride != w.cols)
               throw InvalidInput("weights must be C-contiguous; pass np.ascontiguousarray(weights)");
             py::array_t<float> distances({batch.n, k});
             py::array_t<int64_t> labels({batch.n, k});
             float* d = distances.mutable_data();
             int64_t* l = labels.mutable_data();
             {
               py::gil_scoped_release release;
               i.search_weighted(batch, w.data, k, shortlist, d, l, n_threads);
             }
             return py::make_tuple(distances, labels);
           },
           py::arg("queries"), py::arg("weights"), py::arg("k"), py::arg("shortlist") = 0,
           py::arg("n_threads") = 0)
      .def("range_search", [](const ProtectedIndex& i, const py::array& queries, int32_t radius, int n_threads) {
             CodeBatch batch = as_codes(queries, i, "queries");
             RangeResult r;
             {
               py::gil_scoped_release release;
               r = i.range_search(batch, radius, n_threads);
             }
             return py::make_tuple(py::array_t<int64_t>(r.lims.size(), reinterpret_cast<const int64_t*>(r.lims.data())),
                                   py::array_t<int32_t>(r.distances.size(), r.distances.data()),
                                   py::array_t<int64_t>(r.labels.size(), r.labels.data()));
           },
           py::arg("queries"), py::arg("radius"), py::arg("n_threads") = 0)
      .def("serialize", [](const ProtectedIndex& i, const py::bytes& mac_key) {
             std::vector<uint8_t> key = as_key(mac_key), out;
             {
               py::gil_scoped_release release;
               out = serialize_index(i, key);
             }
             return to_bytes(out);
           },
           py::arg("mac_key"));

  py::class_<FlatIndex, ProtectedIndex>(m, "FlatIndex").def(py::init<size_t>(), py::arg("bits"));

  py::class_<HnswIndex, ProtectedIndex>(m, "HnswIndex")
      .def(py::init<size_t, int, int, int>(), py::arg("bits"), py::arg("m") = 32,
           py::arg("ef_construction") = 80, py::arg("ef_search") = 64)
      .def_property("ef_search", &HnswIndex::ef_search, &HnswIndex::set_ef_search)
      .def_property_readonly("m", &HnswIndex::m)
      .def_property_readonly("tombstones", &HnswIndex::tombstones)
      .def("compact", &HnswIndex::compact, py::arg("n_threads") = 0, py::call_guard<py::gil_scoped_release>());

  py::class_<IvfIndex, ProtectedIndex>(m, "IvfIndex")
      .def(py::init<size_t, size_t, size_t, size_t, size_t>(), py::arg("bits"), py::arg("nlist") = 1024,
           py::arg("prefix_bits") = 256, py::arg("nprobe") = 512, py::arg("rerank") = 256)
      .def("train", [](IvfIndex& i, const py::array& codes, int n_threads) {
             CodeBatch batch = as_codes(codes, i, "codes");
             py::gil_scoped_release release;
             i.train(batch, n_threads);
           },
           py::arg("codes"), py::arg("n_threads") = 0)
      .def_property_readonly("is_trained", &IvfIndex::is_trained)
      .def("list_sizes", [](const IvfIndex& i) {
        std::vector<size_t> sizes = i.list_sizes();
        return py::array_t<uint64_t>(sizes.size(), reinterpret_cast<const uint64_t*>(sizes.data()));
      })
      .def_property_readonly("nlist", &IvfIndex::nlist)
      .def_property_readonly("prefix_bits", &IvfIndex::prefix_bits)
      .def_property("nprobe", &IvfIndex::nprobe, &IvfIndex::set_nprobe)
      .def_property("rerank", &IvfIndex::rerank, &IvfIndex::set_rerank);

  m.def("deserialize_index", [](const py::buffer& data, const py::bytes& mac_key) {
          // Copy first: a mutable buffer could change between authentication and parsing.
          py::buffer_info info = data.request();
          if (info.itemsize != 1 || info.ndim != 1) throw WrongDtype("data must be a bytes-like object");
          const uint8_t* p = static_cast<const uint8_t*>(info.ptr);
          std::vector<uint8_t> copy(p, p + info.size);
          std::vector<uint8_t> key = as_key(mac_key);
          py::gil_scoped_release release;
          return deserialize_index(copy.data(), copy.size(), key);
        },
        py::arg("data"), py::arg("mac_key"));

  bind_hybrid(m);
}
