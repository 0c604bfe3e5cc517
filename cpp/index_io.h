// Serialised form of a ProtectedIndex, authenticated before anything parses it:
//
//   "FPMATCHI" | u32 format | u32 kind | u64 bits | u64 n | FAISS bytes (n)
//   | u64 count | count x i64 labels | u64 m | kind-specific bytes (m)
//   | HMAC-SHA256 tag (32 bytes)
//
// Integers are little-endian. The tag covers every byte before it. FAISS 1.7.3
// has no limits when it reads an index, so hostile or truncated bytes must
// never reach it: the tag is checked first, in constant time.
#pragma once

#include <faiss/IndexBinaryFlat.h>
#include <faiss/IndexBinaryHNSW.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>

#include <memory>
#include <string>
#include <vector>

#include "byte_io.h"
#include "digest.h"
#include "flat_index.h"
#include "hnsw_index.h"
#include "ivf_index.h"

namespace fpmatch {

namespace io_detail {

constexpr char kMagic[8] = {'F', 'P', 'M', 'A', 'T', 'C', 'H', 'I'};
constexpr uint32_t kFormat = 1;
constexpr size_t kTagBytes = 32;
constexpr size_t kMinKeyBytes = 16;

inline void check_key(const std::vector<uint8_t>& key) {
  if (key.size() < kMinKeyBytes) throw InvalidInput("MAC key must be at least 16 bytes");
}

}  // namespace io_detail

inline std::vector<uint8_t> serialize_index(const ProtectedIndex& index, const std::vector<uint8_t>& mac_key) {
  using namespace io_detail;
  check_key(mac_key);
  std::shared_lock<std::shared_mutex> lock(index.mutex());
  faiss::VectorIOWriter faiss_bytes;
  faiss::write_index_binary(&index.faiss_index(), &faiss_bytes);
  const std::vector<int64_t>& labels = index.labels_by_position();

  std::vector<uint8_t> out(kMagic, kMagic + 8);
  out.reserve(64 + faiss_bytes.data.size() + 8 * labels.size());
  put_u64(out, uint64_t(kFormat) | uint64_t(index.kind()) << 32);
  put_u64(out, index.bits());
  put_u64(out, faiss_bytes.data.size());
  out.insert(out.end(), faiss_bytes.data.begin(), faiss_bytes.data.end());
  put_u64(out, labels.size());
  for (int64_t label : labels) put_u64(out, uint64_t(label));
  std::vector<uint8_t> extra;
  index.write_extra(extra);
  put_u64(out, extra.size());
  out.insert(out.end(), extra.begin(), extra.end());
  Digest tag = hmac_sha256(mac_key.data(), mac_key.size(), out.data(), out.size());
  out.insert(out.end(), tag.begin(), tag.end());
  return out;
}

inline std::unique_ptr<ProtectedIndex> deserialize_index(const uint8_t* data, size_t len,
                                                         const std::vector<uint8_t>& mac_key) {
  using namespace io_detail;
  check_key(mac_key);
  if (len < 8 || std::memcmp(data, kMagic, 8) != 0)
    throw AuthenticationFailed("not an fpmatch index (bad magic bytes)");
  if (len < 8 + 8 + 8 + 8 + 8 + kTagBytes) throw AuthenticationFailed("index bytes are truncated");
  const size_t body = len - kTagBytes;
  Digest tag = hmac_sha256(mac_key.data(), mac_key.size(), data, body);
  if (!equal_constant_time(tag.data(), data + body, kTagBytes))
    throw AuthenticationFailed(
        "index authentication failed: the bytes were modified, truncated, or written under another key");

  // Authenticated: these bytes were written by serialize_index under this key.
  ByteReader in(data + 8, body - 8);
  uint64_t header = in.u64();
  uint32_t format = uint32_t(header), kind = uint32_t(header >> 32);
  if (format != kFormat) throw InvalidInput("unsupported index format " + std::to_string(format));
  uint64_t bits = in.u64();
  uint64_t faiss_len = in.u64();
  faiss::VectorIOReader faiss_in;
  const uint8_t* faiss_bytes = in.bytes(size_t(faiss_len));
  faiss_in.data.assign(faiss_bytes, faiss_bytes + faiss_len);
  uint64_t count = in.u64();
  if (count > in.remaining() / 8) throw AuthenticationFailed("index bytes are truncated");
  std::vector<int64_t> labels(count);
  for (auto& label : labels) label = int64_t(in.u64());
  uint64_t extra_len = in.u64();
  const uint8_t* extra = in.bytes(size_t(extra_len));
  if (in.remaining() != 0) throw InvalidInput("trailing bytes after the index");

  std::unique_ptr<faiss::IndexBinary> parsed(faiss::read_index_binary(&faiss_in));
  if (size_t(parsed->d) != bits) throw InvalidInput("index code width does not match its header");
  if (kind == uint32_t(ProtectedIndex::Kind::Flat) || kind == uint32_t(ProtectedIndex::Kind::Ivf)) {
    auto* flat = dynamic_cast<faiss::IndexBinaryFlat*>(parsed.get());
    if (!flat) throw InvalidInput("FAISS payload is not the IndexBinaryFlat the header names");
    parsed.release();
    std::unique_ptr<faiss::IndexBinaryFlat> storage(flat);
    if (kind == uint32_t(ProtectedIndex::Kind::Ivf))
      return std::make_unique<IvfIndex>(std::move(storage), std::move(labels), ByteReader(extra, extra_len));
    return std::make_unique<FlatIndex>(std::move(storage), std::move(labels));
  }
  if (kind == uint32_t(ProtectedIndex::Kind::Hnsw)) {
    auto* hnsw = dynamic_cast<faiss::IndexBinaryHNSW*>(parsed.get());
    if (!hnsw) throw InvalidInput("header says HNSW index but FAISS payload is not IndexBinaryHNSW");
    parsed.release();
    return std::make_unique<HnswIndex>(std::unique_ptr<faiss::IndexBinaryHNSW>(hnsw), std::move(labels));
  }
  throw InvalidInput("unknown index kind " + std::to_string(kind));
}

}  // namespace fpmatch
