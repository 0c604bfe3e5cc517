// Runs fn(i) for i in [0, n) on up to n_threads std::threads. The first
// exception thrown by any worker is captured and rethrown in the caller after
// all workers have joined, so a worker error becomes one Python exception.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace fpmatch {

// More threads than this are never started, whatever a caller asks for.
constexpr int kMaxThreads = 256;

inline int resolve_threads(int requested) {
  if (requested > 0) return requested < kMaxThreads ? requested : kMaxThreads;
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : int(hw);
}

template <class Fn>
void parallel_for(size_t n, int n_threads, Fn fn) {
  size_t workers = std::min<size_t>(size_t(resolve_threads(n_threads)), n);
  if (workers <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&]() {
    for (;;) {
      size_t i = next.fetch_add(1);
      if (i >= n) return;
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next.store(n);  // stop handing out work
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (size_t t = 0; t + 1 < workers; ++t) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace fpmatch
