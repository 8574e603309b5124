// Work split for the kernels' parallel loops, with stealing.
//
// A decode step's linear is a few hundred blocks read from memory, and on a shared machine one
// core often streams slower than the other: with PyTorch's static split (each thread a fixed
// share) the faster thread then idles at the end of every call, measured at 15-20 % of the
// decode linears' time on a 2-core VM. Here each thread still starts on its own contiguous
// share, read front to back (so the kernels' prefetching stays on the stream), and a thread
// that finishes takes chunks from the back of the share with the most left. Which thread
// computes an item never changes its result.

#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

namespace quietstar_cpu {

// work(begin, end) for every item of [0, items), each exactly once, over at most
// at::get_num_threads() threads and no fewer than `grain` items per thread. Shares are split
// into chunks of about a sixteenth of a share (at most `max_chunk` items): small enough for the
// end of a call to balance, large enough that claiming one (a compare-and-swap) is noise.
template <typename Work>
void parallel_balanced(int64_t items, int64_t grain, int64_t max_chunk, const Work& work) {
  if (items <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t threads =
      std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(1, items / grain));
  if (threads <= 1 || at::in_parallel_region()) {
    work(0, items);
    return;
  }
  if (items > int64_t{0xffffffff}) {  // beyond a share's 32-bit ends: PyTorch's static split
    at::parallel_for(0, items, grain, work);
    return;
  }
  // a share's unclaimed items, [front, back), packed into one word that both ends update
  struct alignas(64) Share {
    std::atomic<uint64_t> range;
  };
  const std::unique_ptr<Share[]> shares(new Share[threads]);
  auto pack = [](int64_t front, int64_t back) {
    return static_cast<uint64_t>(front) << 32 | static_cast<uint64_t>(back);
  };
  auto front_of = [](uint64_t v) { return static_cast<int64_t>(v >> 32); };
  auto back_of = [](uint64_t v) { return static_cast<int64_t>(v & 0xffffffffu); };
  for (int64_t t = 0; t < threads; ++t)
    shares[t].range.store(pack(items * t / threads, items * (t + 1) / threads),
                          std::memory_order_relaxed);
  const int64_t chunk =
      std::clamp<int64_t>(items / threads / 16, 1, std::max<int64_t>(max_chunk, 1));
  // claims up to `chunk` items from share s's front (the owner) or back (a thief)
  auto claim = [&](int64_t s, bool front, int64_t& lo, int64_t& hi) {
    uint64_t v = shares[s].range.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t f = front_of(v), b = back_of(v);
      if (f >= b) return false;
      lo = front ? f : std::max(f, b - chunk);
      hi = front ? std::min(b, f + chunk) : b;
      const uint64_t next = front ? pack(hi, b) : pack(f, lo);
      if (shares[s].range.compare_exchange_weak(v, next, std::memory_order_acq_rel,
                                                std::memory_order_relaxed))
        return true;
    }
  };
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      int64_t lo, hi;
      while (claim(t, true, lo, hi)) work(lo, hi);
    }
    for (;;) {  // steal from the share with the most left until none has any
      int64_t victim = -1, most = 0;
      for (int64_t s = 0; s < threads; ++s) {
        const uint64_t v = shares[s].range.load(std::memory_order_relaxed);
        const int64_t left = back_of(v) - front_of(v);
        if (left > most) victim = s, most = left;
      }
      if (victim < 0) return;
      int64_t lo, hi;
      if (claim(victim, false, lo, hi)) work(lo, hi);
    }
  });
}

}  // namespace quietstar_cpu
