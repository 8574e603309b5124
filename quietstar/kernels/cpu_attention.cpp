// Decode attention on CPU for one row per slot: the row's new key/value is written into the
// slot's cache, then its G query rows per key/value head attend that slot's keys, in one or two
// segments (its prefix, and its thought branch), each read up to the slot's own length, so
// neither a mask nor a concatenation of the two segments is needed. Scores and softmax in fp32;
// keys and values are read and written in place in the cache views (any strides but the last).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

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

// out[g] = softmax over every key of both segments of (q[g] . key) * scale, applied to the values;
// q (G, D) fp32, out (G, D) fp32; scores is G * (len1 + len2) scratch.
template <typename T>
void attend_head(const float* q, int64_t G, int64_t D, float scale, const Segment<T>* segments,
                 int num_segments, float* scores, float* out) {
  int64_t total = 0;
  for (int s = 0; s < num_segments; ++s) total += segments[s].length;
  int64_t col = 0;
  for (int s = 0; s < num_segments; ++s) {
    const Segment<T>& seg = segments[s];
    for (int64_t j = 0; j < seg.length; ++j, ++col) {
      const T* key = seg.k + j * seg.k_step;
      for (int64_t g = 0; g < G; ++g) {
        Reg acc = zero();
        for (int64_t d = 0; d < D; d += kLanes) acc = fma(load(q + g * D + d), widen(key + d), acc);
        scores[g * total + col] = sum(acc) * scale;
      }
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    float* row = scores + g * total;
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < total; ++j) top = std::max(top, row[j]);
    float denom = 0.0f;
    for (int64_t j = 0; j < total; ++j) denom += (row[j] = std::exp(row[j] - top));
    const float inv = total ? 1.0f / denom : 0.0f;
    for (int64_t j = 0; j < total; ++j) row[j] *= inv;
  }
  std::fill(out, out + G * D, 0.0f);
  col = 0;
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

void check_kv(const at::Tensor& k, const at::Tensor& v, const at::Tensor& lengths, int64_t n,
              int64_t kvh, int64_t D, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes() && k.size(0) >= n && k.size(1) == kvh &&
                  k.size(3) == D,
              "decode_attention: ", name, " keys/values must be (slots, ", kvh, ", S, ", D,
              "), got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK(k.scalar_type() == dtype && v.scalar_type() == dtype, "decode_attention: ", name,
              " keys/values must have the queries' dtype ", c10::toString(dtype));
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "decode_attention: ", name,
              " keys/values must be contiguous in the head dimension");
  TORCH_CHECK(lengths.scalar_type() == at::kLong && lengths.dim() == 1 && lengths.numel() == n,
              "decode_attention: ", name, " lengths must be int64 of shape (", n, ")");
  const int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t s = 0; s < n; ++s)
    TORCH_CHECK(len[s] >= 0 && len[s] <= k.size(2), "decode_attention: ", name, " length ",
                len[s], " of slot ", s, " outside [0, ", k.size(2), "]");
}

template <typename T>
void run(const at::Tensor& q, const at::Tensor& qf, const std::vector<const at::Tensor*>& kvl,
         double scale, at::Tensor& out) {
  const int64_t n = q.size(0), kvh = q.size(1), G = q.size(2), D = q.size(3);
  const int num_segments = static_cast<int>(kvl.size() / 3);
  const float* qp = qf.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n * kvh, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / kvh, h = task % kvh;
      Segment<T> segments[2];
      int64_t total = 0;
      for (int i = 0; i < num_segments; ++i) {
        const at::Tensor &k = *kvl[3 * i], &v = *kvl[3 * i + 1];
        const auto* kp = reinterpret_cast<const T*>(k.data_ptr()) + s * k.stride(0) + h * k.stride(1);
        const auto* vp = reinterpret_cast<const T*>(v.data_ptr()) + s * v.stride(0) + h * v.stride(1);
        const int64_t length = kvl[3 * i + 2]->data_ptr<int64_t>()[s];
        segments[i] = Segment<T>{kp, vp, k.stride(2), v.stride(2), length};
        total += length;
      }
      scores.resize(G * std::max<int64_t>(total, 1));
      attend_head(qp + task * G * D, G, D, static_cast<float>(scale), segments, num_segments,
                  scores.data(), op + task * G * D);
    }
  });
}

// Writes row i's key/value (n, KVH, D) at [slots[i], :, positions[i]] of k/v.
template <typename T>
void write_rows(const at::Tensor& k_new, const at::Tensor& v_new, at::Tensor& k, at::Tensor& v,
                const at::Tensor& slots, const at::Tensor& positions) {
  const int64_t n = k_new.size(0), kvh = k_new.size(1), D = k_new.size(2);
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* pp = positions.data_ptr<int64_t>();
  const auto* kn = reinterpret_cast<const T*>(k_new.data_ptr());
  const auto* vn = reinterpret_cast<const T*>(v_new.data_ptr());
  auto* kp = reinterpret_cast<T*>(k.data_ptr());
  auto* vp = reinterpret_cast<T*>(v.data_ptr());
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(sp[i] >= 0 && sp[i] < k.size(0) && pp[i] >= 0 && pp[i] < k.size(2),
                "decode_attention: write of row ", i, " to slot ", sp[i], " position ", pp[i],
                " outside the cache");
    for (int64_t h = 0; h < kvh; ++h) {
      const int64_t src = (i * kvh + h) * D;
      std::memcpy(kp + sp[i] * k.stride(0) + h * k.stride(1) + pp[i] * k.stride(2), kn + src,
                  D * sizeof(T));
      std::memcpy(vp + sp[i] * v.stride(0) + h * v.stride(1) + pp[i] * v.stride(2), vn + src,
                  D * sizeof(T));
    }
  }
}

// q (n, KVH, G, D) and the rows' new keys/values k_new/v_new (n, KVH, D); segment 1 k1/v1
// (>= n, KVH, S1, D) with lengths1 (n,), optionally segment 2 likewise. The new keys/values go
// to [write_slots, :, write_positions] of segment 2 when `write_second`, else of segment 1;
// lengths count them.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                            at::Tensor k1, at::Tensor v1, const at::Tensor& lengths1,
                            c10::optional<at::Tensor> k2, c10::optional<at::Tensor> v2,
                            const c10::optional<at::Tensor>& lengths2,
                            const at::Tensor& write_slots, const at::Tensor& write_positions,
                            bool write_second, double scale) {
  TORCH_CHECK(q.device().is_cpu() && q.dim() == 4,
              "decode_attention: q must be (n, KVH, G, D) on CPU");
  const int64_t n = q.size(0), kvh = q.size(1), D = q.size(3);
  TORCH_CHECK(D % 16 == 0, "decode_attention: head dim ", D, " not a multiple of 16");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16,
              "decode_attention: float32 or bfloat16 only, got ", c10::toString(dtype));
  check_kv(k1, v1, lengths1, n, kvh, D, dtype, "first");
  std::vector<const at::Tensor*> kvl{&k1, &v1, &lengths1};
  const bool second = k2.has_value() && k2->defined();
  TORCH_CHECK(second == (v2.has_value() && v2->defined()) &&
                  second == (lengths2.has_value() && lengths2->defined()),
              "decode_attention: a second segment needs keys, values and lengths");
  if (second) {
    check_kv(*k2, *v2, *lengths2, n, kvh, D, dtype, "second");
    kvl.insert(kvl.end(), {&*k2, &*v2, &*lengths2});
  }
  TORCH_CHECK(!write_second || second, "decode_attention: write_second without a second segment");
  TORCH_CHECK(k_new.sizes() == at::IntArrayRef({n, kvh, D}) && v_new.sizes() == k_new.sizes() &&
                  k_new.scalar_type() == dtype && v_new.scalar_type() == dtype,
              "decode_attention: new keys/values must be (", n, ", ", kvh, ", ", D, ") ",
              c10::toString(dtype));
  TORCH_CHECK(write_slots.scalar_type() == at::kLong && write_slots.numel() == n &&
                  write_positions.scalar_type() == at::kLong && write_positions.numel() == n,
              "decode_attention: write slots and positions must be int64 of shape (", n, ")");
  const at::Tensor kn = k_new.contiguous(), vn = v_new.contiguous();
  at::Tensor& wk = write_second ? *k2 : k1;
  at::Tensor& wv = write_second ? *v2 : v1;
  const at::Tensor ws = write_slots.contiguous(), wp = write_positions.contiguous();
  const at::Tensor qf = q.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options().dtype(at::kFloat));
  if (dtype == at::kFloat) {
    write_rows<float>(kn, vn, wk, wv, ws, wp);
    run<float>(q, qf, kvl, scale, out);
  } else {
    write_rows<uint16_t>(kn, vn, wk, wv, ws, wp);
    run<uint16_t>(q, qf, kvl, scale, out);
  }
  return out.to(dtype);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(quietstar_cpu, m) {
  m.def(
      "decode_attention(Tensor q, Tensor k_new, Tensor v_new, Tensor(a!) k1, Tensor(b!) v1, "
      "Tensor lengths1, Tensor(c!)? k2, Tensor(d!)? v2, Tensor? lengths2, Tensor write_slots, "
      "Tensor write_positions, bool write_second, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(quietstar_cpu, CPU, m) { m.impl("decode_attention", &decode_attention); }
