// Decode attention on CPU over the engine's KV caches, for any mix of rows: every row's new
// key/value is written first (into its slot's prefix, or into its thought branch), then each
// row's G query rows per key/value head attend its slot's prefix and, for a thought row, its own
// branch, each read in place up to the row's lengths: no mask, no dense (slot, column) layout, no
// concatenation and no log-sum-exp merge. Scores and softmax in fp32; bf16 caches on AVX512-BF16
// take bf16 dot products (attend_head_bf16).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_ops.h"
#include "cpu_vec.h"

namespace {

using namespace quietstar_cpu;

// One key/value segment of a slot and head: element j's key is k + j * step.
template <typename T>
struct Segment {
  const T* k;
  const T* v;
  int64_t k_step, v_step, length;
};

// row[0..n) <- its softmax, in vector lanes (exp within 2 ulp, see cpu_vec.h); the order of
// every sum depends on n only. A NaN score makes its exp, the denominator and so the whole row
// NaN, whatever the maximum saw. With `stats`, stats[0] and stats[1] get the row's maximum and
// the denominator (the sum of exp(score - maximum)): what merging it with other keys' needs.
inline void softmax_row(float* row, int64_t n, float* stats = nullptr) {
  if (n == 0) return;
  const int64_t body = n / kLanes * kLanes;
  float top = -std::numeric_limits<float>::infinity();
  if (body) {
    Reg m = broadcast(top);
    for (int64_t j = 0; j < body; j += kLanes) m = max(m, load(row + j));
    top = max_lanes(m);
  }
  for (int64_t j = body; j < n; ++j) top = std::max(top, row[j]);
  const Reg minus_top = broadcast(-top);
  Reg acc = zero();
  for (int64_t j = 0; j < body; j += kLanes) {
    const Reg e = exp(add(load(row + j), minus_top));
    store(row + j, e);
    acc = add(acc, e);
  }
  float denom = sum(acc);
  for (int64_t j = body; j < n; ++j) denom += (row[j] = std::exp(row[j] - top));
  if (stats) stats[0] = top, stats[1] = denom;
  const float inv = 1.0f / denom;
  const Reg invv = broadcast(inv);
  for (int64_t j = 0; j < body; j += kLanes) store(row + j, mul(load(row + j), invv));
  for (int64_t j = body; j < n; ++j) row[j] *= inv;
}

// scores[g * total + col] = (q[g] . key) * scale for every key of the segments, then each row
// of scores becomes its softmax (fp32). GQ > 0: G as a compile-time constant (accumulators in
// registers, each key widened once for all G rows); 0: any G. With GQ <= 4, four keys at a time
// share one reduction of their 4 x GQ accumulators (`sum4`); a segment's last few keys, and every
// key with GQ > 4, are reduced one at a time. Which keys go which way depends on the segment's
// length only, so a row's scores never depend on the other rows.
template <int GQ, typename T>
void softmax_scores(const float* q, int64_t G_, int64_t D, float scale, const Segment<T>* segments,
                    int num_segments, int64_t total, float* scores, float* stats) {
  const int64_t G = GQ ? GQ : G_;
  int64_t col = 0;
  for (int s = 0; s < num_segments; ++s) {
    const Segment<T>& seg = segments[s];
    int64_t j = 0;
    if constexpr (GQ > 0 && GQ <= 4) {
      for (; j + 4 <= seg.length; j += 4, col += 4) {
        Reg acc[GQ][4];
        for (int g = 0; g < GQ; ++g)
          for (int c = 0; c < 4; ++c) acc[g][c] = zero();
        const T* key = seg.k + j * seg.k_step;
        for (int64_t d = 0; d < D; d += kLanes) {
          Reg kv[4];
          for (int c = 0; c < 4; ++c) kv[c] = widen(key + c * seg.k_step + d);
          for (int g = 0; g < GQ; ++g) {
            const Reg qv = load(q + g * D + d);
            for (int c = 0; c < 4; ++c) acc[g][c] = fma(qv, kv[c], acc[g][c]);
          }
        }
        for (int g = 0; g < GQ; ++g) {
          float four[4];
          sum4(acc[g], four);
          for (int c = 0; c < 4; ++c) scores[g * total + col + c] = four[c] * scale;
        }
      }
    }
    for (; j < seg.length; ++j, ++col) {
      const T* key = seg.k + j * seg.k_step;
      if constexpr (GQ > 0) {
        Reg acc[GQ];
        for (int g = 0; g < GQ; ++g) acc[g] = zero();
        for (int64_t d = 0; d < D; d += kLanes) {
          const Reg kv = widen(key + d);
          for (int g = 0; g < GQ; ++g) acc[g] = fma(load(q + g * D + d), kv, acc[g]);
        }
        for (int g = 0; g < GQ; ++g) scores[g * total + col] = sum(acc[g]) * scale;
      } else {
        for (int64_t g = 0; g < G; ++g) {
          Reg acc = zero();
          for (int64_t d = 0; d < D; d += kLanes) acc = fma(load(q + g * D + d), widen(key + d), acc);
          scores[g * total + col] = sum(acc) * scale;
        }
      }
    }
  }
  for (int64_t g = 0; g < G; ++g) softmax_row(scores + g * total, total, stats ? stats + 2 * g : nullptr);
}

// out (G, D) = probabilities (scores) applied to the values; with GQ > 0, each value chunk is
// widened once for all G rows and the outputs stay in registers.
template <int GQ, typename T>
void weighted_values(const float* scores, int64_t G_, int64_t D, const Segment<T>* segments,
                     int num_segments, int64_t total, float* out) {
  const int64_t G = GQ ? GQ : G_;
  if constexpr (GQ > 0) {
    // R registers of each value row per pass over the keys (GQ x R accumulators): one pass
    // reads R * kLanes contiguous values of each row, where one register per pass walked every
    // row D / kLanes times. Each output still sums its keys in order, one FMA at a time.
    constexpr int NR = GQ <= 3 ? 4 : GQ <= 6 ? 2 : 1;
    auto pass = [&](auto regs, int64_t d) {
      constexpr int R = decltype(regs)::value;
      Reg o[GQ][R];
      for (int g = 0; g < GQ; ++g)
        for (int r = 0; r < R; ++r) o[g][r] = zero();
      int64_t col = 0;
      for (int s = 0; s < num_segments; ++s) {
        const Segment<T>& seg = segments[s];
        for (int64_t j = 0; j < seg.length; ++j, ++col) {
          const T* value = seg.v + j * seg.v_step + d;
          Reg p[GQ];
          for (int g = 0; g < GQ; ++g) p[g] = broadcast(scores[g * total + col]);
          for (int r = 0; r < R; ++r) {
            const Reg vv = widen(value + r * kLanes);
            for (int g = 0; g < GQ; ++g) o[g][r] = fma(p[g], vv, o[g][r]);
          }
        }
      }
      for (int g = 0; g < GQ; ++g)
        for (int r = 0; r < R; ++r) store(out + g * D + d + r * kLanes, o[g][r]);
    };
    int64_t d = 0;
    for (; d + NR * kLanes <= D; d += NR * kLanes) pass(std::integral_constant<int, NR>{}, d);
    for (; d < D; d += kLanes) pass(std::integral_constant<int, 1>{}, d);
  } else {
    std::fill(out, out + G * D, 0.0f);
    int64_t col = 0;
    for (int s = 0; s < num_segments; ++s) {
      const Segment<T>& seg = segments[s];
      for (int64_t j = 0; j < seg.length; ++j, ++col) {
        const T* value = seg.v + j * seg.v_step;
        for (int64_t g = 0; g < G; ++g) {
          const Reg p = broadcast(scores[g * total + col]);
          for (int64_t d = 0; d < D; d += kLanes)
            store(out + g * D + d, fma(p, widen(value + d), load(out + g * D + d)));
        }
      }
    }
  }
}

#if defined(__AVX512BF16__)
// bf16 caches with AVX512-BF16: vdpbf16ps multiplies 32 bf16 pairs per instruction, so keys and
// values are read as stored, never widened. Scores: q (bf16, as the model computed it) against
// four keys at a time, products exact and summed in fp32. Values: the probabilities are rounded
// to bf16 (as PyTorch's bf16 attention does before its value product) and two keys' value rows
// are interleaved into (v_j, v_j+1) pairs against (p_j, p_j+1); a segment's odd last key pairs
// with zeros. Sums run in fp32 in an order that depends on the segment lengths only.
template <int GQ>
void attend_head_bf16(const uint16_t* q, int64_t G_, int64_t D, float scale,
                      const Segment<uint16_t>* segments, int num_segments, float* scores,
                      uint16_t* probs, float* out, float* stats) {
  const int64_t G = GQ ? GQ : G_;
  int64_t total = 0;
  for (int s = 0; s < num_segments; ++s) total += segments[s].length;
  auto pairs = [](const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); };
  constexpr int GN = GQ ? GQ : 1;  // query rows per pass: all G, or one at a time
  int64_t col = 0;
  for (int s = 0; s < num_segments; ++s) {
    const Segment<uint16_t>& seg = segments[s];
    for (int64_t j = 0; j < seg.length; j += 4) {
      const int keys = static_cast<int>(std::min<int64_t>(4, seg.length - j));
      for (int64_t g0 = 0; g0 < G; g0 += GN) {
        __m512 acc[GN][4];
        for (int g = 0; g < GN; ++g)
          for (int c = 0; c < 4; ++c) acc[g][c] = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 32) {
          __m512bh kv[4];
          for (int c = 0; c < 4; ++c)
            kv[c] = c < keys ? pairs(seg.k + (j + c) * seg.k_step + d) : (__m512bh)_mm512_setzero_si512();
          for (int g = 0; g < GN; ++g) {
            const __m512bh qv = pairs(q + (g0 + g) * D + d);
            for (int c = 0; c < 4; ++c) acc[g][c] = _mm512_dpbf16_ps(acc[g][c], qv, kv[c]);
          }
        }
        for (int g = 0; g < GN; ++g) {
          float four[4];
          sum4(acc[g], four);
          for (int c = 0; c < keys; ++c) scores[(g0 + g) * total + col + j + c] = four[c] * scale;
        }
      }
    }
    col += seg.length;
  }
  for (int64_t g = 0; g < G; ++g) {
    softmax_row(scores + g * total, total, stats ? stats + 2 * g : nullptr);
    int64_t j = 0;
    for (; j + 16 <= total; j += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(probs + g * total + j),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(scores + g * total + j)));
    if (j < total) {  // the last few, through a zero-padded block of 16
      alignas(64) float tail[16] = {};
      alignas(32) uint16_t rounded[16];
      std::copy(scores + g * total + j, scores + (g + 1) * total, tail);
      _mm256_store_si256(reinterpret_cast<__m256i*>(rounded),
                         (__m256i)_mm512_cvtneps_pbh(_mm512_load_ps(tail)));
      std::copy(rounded, rounded + (total - j), probs + g * total + j);
    }
  }
  // out[g] over 32 columns of d at a time: lo/hi hold the columns of each 128-bit lane's
  // first/second four (unpacklo/hi's order), put back in order at the end.
  const __m512i lo_then_hi = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i rest = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int64_t d = 0; d < D; d += 32) {
    __m512 lo[GN], hi[GN];
    for (int64_t g0 = 0; g0 < G; g0 += GN) {
      for (int g = 0; g < GN; ++g) lo[g] = hi[g] = _mm512_setzero_ps();
      int64_t c0 = 0;
      for (int s = 0; s < num_segments; ++s) {
        const Segment<uint16_t>& seg = segments[s];
        for (int64_t j = 0; j < seg.length; j += 2) {
          const bool pair = j + 1 < seg.length;
          const __m512i a = _mm512_loadu_si512(seg.v + j * seg.v_step + d);
          const __m512i b = pair ? _mm512_loadu_si512(seg.v + (j + 1) * seg.v_step + d)
                                 : _mm512_setzero_si512();
          const __m512bh vlo = (__m512bh)_mm512_unpacklo_epi16(a, b);
          const __m512bh vhi = (__m512bh)_mm512_unpackhi_epi16(a, b);
          for (int g = 0; g < GN; ++g) {
            const uint16_t* pg = probs + (g0 + g) * total + c0 + j;
            const uint32_t both = pair ? static_cast<uint32_t>(pg[0]) | static_cast<uint32_t>(pg[1]) << 16
                                       : static_cast<uint32_t>(pg[0]);
            const __m512bh pv = (__m512bh)_mm512_set1_epi32(static_cast<int>(both));
            lo[g] = _mm512_dpbf16_ps(lo[g], vlo, pv);
            hi[g] = _mm512_dpbf16_ps(hi[g], vhi, pv);
          }
        }
        c0 += seg.length;
      }
      for (int g = 0; g < GN; ++g) {
        _mm512_storeu_ps(out + (g0 + g) * D + d, _mm512_permutex2var_ps(lo[g], lo_then_hi, hi[g]));
        _mm512_storeu_ps(out + (g0 + g) * D + d + 16, _mm512_permutex2var_ps(lo[g], rest, hi[g]));
      }
    }
  }
}
constexpr bool kBf16Attention = true;
#else
template <int GQ>
void attend_head_bf16(const uint16_t*, int64_t, int64_t, float, const Segment<uint16_t>*, int,
                      float*, uint16_t*, float*, float*) {}
constexpr bool kBf16Attention = false;
#endif

// out[g] = softmax over every key of the segments of (q[g] . key) * scale, applied to the values;
// q (G, D) fp32, out (G, D) fp32; scores is G * (total keys) scratch; stats (or null) gets each
// row's softmax maximum and denominator (softmax_row).
template <typename T>
void attend_head(const float* q, int64_t G, int64_t D, float scale, const Segment<T>* segments,
                 int num_segments, float* scores, float* out, float* stats) {
  int64_t total = 0;
  for (int s = 0; s < num_segments; ++s) total += segments[s].length;
  auto run = [&](auto gq) {
    constexpr int GQ = decltype(gq)::value;
    softmax_scores<GQ>(q, G, D, scale, segments, num_segments, total, scores, stats);
    weighted_values<GQ>(scores, G, D, segments, num_segments, total, out);
  };
  switch (G) {
    case 1: run(std::integral_constant<int, 1>{}); break;
    case 2: run(std::integral_constant<int, 2>{}); break;
    case 3: run(std::integral_constant<int, 3>{}); break;
    case 4: run(std::integral_constant<int, 4>{}); break;
    case 6: run(std::integral_constant<int, 6>{}); break;
    case 8: run(std::integral_constant<int, 8>{}); break;
    default: run(std::integral_constant<int, 0>{}); break;
  }
}

// Row i of `info` (N, 7) int64: the slot it reads, its prefix length there, its thought column
// (-1: a base row), its thought length, 1 if its new key/value goes to the thought branch (else
// the prefix), and the slot and position written (a padding row writes a scratch slot).
enum Info { kSlot, kPrefix, kColumn, kThought, kWriteThought, kWriteSlot, kWritePos, kInfo };

struct Caches {
  at::Tensor k, v;    // (S, KVH, P, D): prefixes
  at::Tensor tk, tv;  // (S, K, KVH, T, D): thought branches, or undefined
};

template <typename T>
T* prefix_row(const at::Tensor& c, int64_t slot, int64_t h, int64_t pos) {
  return reinterpret_cast<T*>(c.data_ptr()) + slot * c.stride(0) + h * c.stride(1) + pos * c.stride(2);
}

template <typename T>
T* thought_row(const at::Tensor& c, int64_t slot, int64_t col, int64_t h, int64_t pos) {
  return reinterpret_cast<T*>(c.data_ptr()) + slot * c.stride(0) + col * c.stride(1) +
         h * c.stride(2) + pos * c.stride(3);
}

// Keys per attention task. A row's keys (its prefix, then its thought branch) are cut into
// chunks of kKeyChunk, and each chunk of each key/value head is a task of its own, merged with
// the others by their softmax maxima and denominators. A step of one row over a long context then
// spreads over every thread: SmolLM2 has 3 key/value heads, so on 2 threads one thread read two
// heads' keys while the other read one (1000 keys, one row: 2.0-2.1 ms a step against 2.7-2.9
// uncut, benchmarks/RESULTS.md). Shorter cuts bought nothing at 100-300 keys and cost a little at
// 8 rows, which have tasks enough. Where a row's keys are cut depends on their number only, so
// its result never depends on the batch or the threads; a row of at most kKeyChunk keys is one
// task, computed with no merge.
constexpr int64_t kKeyChunk = 256;

// out[0..) <- the part [begin, end) of the keys that `segments` hold one after the other; returns
// how many segments that part spans.
template <typename T>
int cut_segments(const Segment<T>* segments, int num_segments, int64_t begin, int64_t end,
                 Segment<T>* out) {
  int n = 0;
  int64_t start = 0;
  for (int s = 0; s < num_segments; ++s) {
    const Segment<T>& seg = segments[s];
    const int64_t a = std::max(begin, start), b = std::min(end, start + seg.length);
    if (a < b)
      out[n++] = Segment<T>{seg.k + (a - start) * seg.k_step, seg.v + (a - start) * seg.v_step,
                            seg.k_step, seg.v_step, b - a};
    start += seg.length;
  }
  return n;
}

// out (G, D) from a head's `chunks` partial results, in chunk order: parts (chunks, G, D), each
// normalised over its own keys, and stats (chunks, G, 2), each row's maximum and denominator.
// A chunk weighs its denominator times exp(its maximum - the largest maximum).
void merge_chunks(const float* parts, const float* stats, int64_t chunks, int64_t G, int64_t D,
                  float* out) {
  for (int64_t g = 0; g < G; ++g) {
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < chunks; ++c) top = std::max(top, stats[(c * G + g) * 2]);
    float* o = out + g * D;
    std::fill(o, o + D, 0.0f);
    float total = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) {
      const float* st = stats + (c * G + g) * 2;
      const float w = st[1] * std::exp(st[0] - top);
      total += w;
      const float* part = parts + (c * G + g) * D;
      for (int64_t d = 0; d < D; ++d) o[d] += w * part[d];
    }
    const float inv = 1.0f / total;
    for (int64_t d = 0; d < D; ++d) o[d] *= inv;
  }
}

template <typename T>
void write_and_attend(const at::Tensor& qf, const at::Tensor& k_new, const at::Tensor& v_new,
                      const Caches& c, const int64_t* info, double scale, float* out) {
  const int64_t N = qf.size(0), kvh = qf.size(1), G = qf.size(2), D = qf.size(3);
  const auto* kn = reinterpret_cast<const T*>(k_new.data_ptr());
  const auto* vn = reinterpret_cast<const T*>(v_new.data_ptr());
  for (int64_t i = 0; i < N; ++i) {
    const int64_t* r = info + i * kInfo;
    for (int64_t h = 0; h < kvh; ++h) {
      const int64_t slot = r[kWriteSlot], pos = r[kWritePos];
      T* kd = r[kWriteThought] ? thought_row<T>(c.tk, slot, r[kColumn], h, pos)
                               : prefix_row<T>(c.k, slot, h, pos);
      T* vd = r[kWriteThought] ? thought_row<T>(c.tv, slot, r[kColumn], h, pos)
                               : prefix_row<T>(c.v, slot, h, pos);
      std::memcpy(kd, kn + (i * kvh + h) * D, D * sizeof(T));
      std::memcpy(vd, vn + (i * kvh + h) * D, D * sizeof(T));
    }
  }
  const float* qp = qf.scalar_type() == at::kFloat ? qf.data_ptr<float>() : nullptr;
  // bf16 queries (the bf16 dot-product path) or fp32 ones
  const auto* qb = qp ? nullptr : reinterpret_cast<const uint16_t*>(qf.data_ptr());
  auto keys_of = [&](int64_t i) {
    const int64_t* r = info + i * kInfo;
    return r[kPrefix] + (r[kColumn] >= 0 ? r[kThought] : 0);
  };
  // tasks: (row, head, chunk), a head's chunks one after the other; `first[p]` is head p's first
  std::vector<int64_t> first(N * kvh + 1, 0);
  for (int64_t p = 0; p < N * kvh; ++p) {
    const int64_t keys = keys_of(p / kvh);
    first[p + 1] = first[p] + (keys > kKeyChunk ? (keys + kKeyChunk - 1) / kKeyChunk : 1);
  }
  const int64_t tasks = first[N * kvh];
  std::vector<int64_t> head_of(tasks);
  for (int64_t p = 0; p < N * kvh; ++p)
    std::fill(head_of.begin() + first[p], head_of.begin() + first[p + 1], p);
  const bool cut = tasks > N * kvh;
  std::vector<float> parts(cut ? tasks * G * D : 0), stats(cut ? tasks * G * 2 : 0);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<uint16_t> probs;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t p = head_of[task], i = p / kvh, h = p % kvh;
      const int64_t* r = info + i * kInfo;
      Segment<T> whole[2];
      whole[0] = Segment<T>{prefix_row<T>(c.k, r[kSlot], h, 0), prefix_row<T>(c.v, r[kSlot], h, 0),
                            c.k.stride(2), c.v.stride(2), r[kPrefix]};
      int num_whole = 1;
      if (r[kColumn] >= 0 && r[kThought] > 0) {
        whole[1] = Segment<T>{thought_row<T>(c.tk, r[kSlot], r[kColumn], h, 0),
                              thought_row<T>(c.tv, r[kSlot], r[kColumn], h, 0),
                              c.tk.stride(3), c.tv.stride(3), r[kThought]};
        num_whole = 2;
      }
      // this task's keys, [begin, end) of the row's; a head cut in chunks leaves its part to
      // the merge, an uncut one writes its output
      const int64_t begin_key = (task - first[p]) * kKeyChunk;
      const int64_t keys = std::min(keys_of(i) - begin_key, kKeyChunk);
      Segment<T> segments[2];
      const int num_segments =
          cut_segments(whole, num_whole, begin_key, begin_key + keys, segments);
      const bool part = first[p + 1] - first[p] > 1;
      float* dest = part ? parts.data() + task * G * D : out + p * G * D;
      float* st = part ? stats.data() + task * G * 2 : nullptr;
      scores.resize(G * std::max<int64_t>(keys, 1));
      if constexpr (std::is_same_v<T, uint16_t> && kBf16Attention) {
        if (qb) {
          probs.resize(G * std::max<int64_t>(keys, 1));
          auto run = [&](auto gq) {
            attend_head_bf16<decltype(gq)::value>(qb + p * G * D, G, D, static_cast<float>(scale),
                                                  segments, num_segments, scores.data(),
                                                  probs.data(), dest, st);
          };
          switch (G) {
            case 1: run(std::integral_constant<int, 1>{}); break;
            case 2: run(std::integral_constant<int, 2>{}); break;
            case 3: run(std::integral_constant<int, 3>{}); break;
            case 4: run(std::integral_constant<int, 4>{}); break;
            default: run(std::integral_constant<int, 0>{}); break;
          }
          continue;
        }
      }
      attend_head(qp + p * G * D, G, D, static_cast<float>(scale), segments, num_segments,
                  scores.data(), dest, st);
    }
  });
  if (!cut) return;
  std::vector<int64_t> merged;  // the heads that were cut
  for (int64_t p = 0; p < N * kvh; ++p)
    if (first[p + 1] - first[p] > 1) merged.push_back(p);
  at::parallel_for(0, static_cast<int64_t>(merged.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const int64_t p = merged[m];
      merge_chunks(parts.data() + first[p] * G * D, stats.data() + first[p] * G * 2,
                   first[p + 1] - first[p], G, D, out + p * G * D);
    }
  });
}

void check_cache(const at::Tensor& c, int64_t dims, int64_t kvh_dim, int64_t kvh, int64_t D,
                 at::ScalarType dtype, const char* name) {
  TORCH_CHECK(c.device().is_cpu() && c.dim() == dims && c.size(kvh_dim) == kvh &&
                  c.size(dims - 1) == D && c.stride(dims - 1) == 1 && c.scalar_type() == dtype,
              "decode_attention: ", name, " cache must be a CPU ", c10::toString(dtype), " tensor of ",
              dims, " dimensions with ", kvh, " key/value heads of ", D,
              " contiguous values, got ", c10::toString(c.scalar_type()), " ", c.sizes());
}

}  // namespace

namespace quietstar_cpu {

// q (N, KVH, G, D) and the rows' new keys/values (N, KVH, D); the caches of one layer: k/v
// (S, KVH, P, D) and, when any row thinks, tk/tv (S, K, KVH, T, D); info as above.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                            at::Tensor k, at::Tensor v, c10::optional<at::Tensor> tk,
                            c10::optional<at::Tensor> tv, const at::Tensor& info, double scale) {
  TORCH_CHECK(q.device().is_cpu() && q.dim() == 4,
              "decode_attention: q must be (N, KVH, G, D) on CPU");
  const int64_t N = q.size(0), kvh = q.size(1), D = q.size(3);
  TORCH_CHECK(D % 16 == 0, "decode_attention: head dim ", D, " not a multiple of 16");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16,
              "decode_attention: float32 or bfloat16 only, got ", c10::toString(dtype));
  TORCH_CHECK(k_new.sizes() == at::IntArrayRef({N, kvh, D}) && v_new.sizes() == k_new.sizes() &&
                  k_new.scalar_type() == dtype && v_new.scalar_type() == dtype,
              "decode_attention: new keys/values must be (", N, ", ", kvh, ", ", D, ") ",
              c10::toString(dtype));
  check_cache(k, 4, 1, kvh, D, dtype, "prefix key");
  check_cache(v, 4, 1, kvh, D, dtype, "prefix value");
  const bool thoughts = tk.has_value() && tk->defined();
  TORCH_CHECK(thoughts == (tv.has_value() && tv->defined()),
              "decode_attention: thought keys and values go together");
  if (thoughts) {
    check_cache(*tk, 5, 2, kvh, D, dtype, "thought key");
    check_cache(*tv, 5, 2, kvh, D, dtype, "thought value");
  }
  TORCH_CHECK(info.scalar_type() == at::kLong && info.dim() == 2 && info.size(0) == N &&
                  info.size(1) == kInfo,
              "decode_attention: info must be int64 of shape (", N, ", ", int(kInfo), ")");
  const at::Tensor ic = info.contiguous();
  const int64_t* rows = ic.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i) {
    const int64_t* r = rows + i * kInfo;
    for (const int f : {int(kSlot), int(kWriteSlot)})
      TORCH_CHECK(r[f] >= 0 && r[f] < k.size(0), "decode_attention: row ", i, " slot ", r[f],
                  " outside the cache's ", k.size(0));
    TORCH_CHECK(r[kPrefix] >= 0 && r[kPrefix] <= k.size(2), "decode_attention: row ", i,
                " prefix length ", r[kPrefix], " outside [0, ", k.size(2), "]");
    const bool thinks = r[kColumn] >= 0;
    TORCH_CHECK(!thinks || (thoughts && r[kColumn] < tk->size(1) && r[kThought] >= 0 &&
                            r[kThought] <= tk->size(3)),
                "decode_attention: row ", i, " thought column ", r[kColumn], " or length ",
                r[kThought], " outside the thought cache");
    TORCH_CHECK(!r[kWriteThought] || thinks, "decode_attention: row ", i,
                " writes a thought but has no thought column");
    const int64_t limit = r[kWriteThought] ? tk->size(3) : k.size(2);
    TORCH_CHECK(r[kWritePos] >= 0 && r[kWritePos] < limit, "decode_attention: row ", i,
                " writes position ", r[kWritePos], " outside [0, ", limit, ")");
  }
  const at::Tensor kn = k_new.contiguous(), vn = v_new.contiguous();
  // bf16 caches with AVX512-BF16 and a head dim of whole 32-lane pairs: bf16 dot products on the
  // queries as they are; else fp32 queries
  const bool bf16_dots = kBf16Attention && dtype == at::kBFloat16 && D % 32 == 0;
  const at::Tensor qf = bf16_dots ? q.contiguous() : q.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options().dtype(at::kFloat));
  Caches caches{k, v, thoughts ? *tk : at::Tensor(), thoughts ? *tv : at::Tensor()};
  if (dtype == at::kFloat)
    write_and_attend<float>(qf, kn, vn, caches, rows, scale, out.data_ptr<float>());
  else
    write_and_attend<uint16_t>(qf, kn, vn, caches, rows, scale, out.data_ptr<float>());
  return out.to(dtype);
}

}  // namespace quietstar_cpu

TORCH_LIBRARY_FRAGMENT(quietstar_cpu, m) {
  m.def(
      "decode_attention(Tensor q, Tensor k_new, Tensor v_new, Tensor(a!) k, Tensor(b!) v, "
      "Tensor(c!)? tk, Tensor(d!)? tv, Tensor info, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(quietstar_cpu, CPU, m) {
  m.impl("decode_attention", &quietstar_cpu::decode_attention);
}
