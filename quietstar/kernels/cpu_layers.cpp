// Every decoder layer of a decode step in one call: the same ops, in the same order and with the
// same roundings, as quietstar.llama's DecoderLayer on the engine's kernel path (RMSNorm, fused
// q/k/v projection, RoPE on q and k, decode attention over the caches, output projection and
// residual, RMSNorm, fused gate/up projection, SiLU-gated product, down projection and
// residual), so its results are bitwise those of the layer-by-layer path. What it saves is the
// Python between the kernels: about a dozen module calls and tensor views per layer, which cost
// as much as the attention itself at one row.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "cpu_ops.h"

namespace {

using quietstar_cpu::decode_attention;
using quietstar_cpu::linear_bf16;
using quietstar_cpu::linear_fp32;
using quietstar_cpu::linear_int8;
using quietstar_cpu::linear_q4_1;
using quietstar_cpu::rms_norm;
using quietstar_cpu::rope;
using quietstar_cpu::silu_mul;

// Each layer's entries in `weights`, in this order; a projection is its weight (bf16, fp32, int8
// with one fp32 scale per output channel, int4 codes in PyTorch's CPU packing (2-D), or Q4_1
// blocks in quietstar's layout (3-D; every row real)), its scales (int8: (N,) fp32; int4: scales
// and zeros (K / G, N, 2); None otherwise) and its bias (or None).
enum Entry {
  kInputNorm,
  kQkv,
  kOut = kQkv + 3,
  kPostNorm = kOut + 3,
  kGateUp,
  kDown = kGateUp + 3,
  kPerLayer = kDown + 3
};

using Weights = std::vector<c10::optional<at::Tensor>>;

const at::Tensor& required(const Weights& w, int64_t i) {
  TORCH_CHECK(w[i].has_value() && w[i]->defined(), "decode_layers: weight entry ", i,
              " (layer ", i / kPerLayer, ", entry ", i % kPerLayer, ") is None");
  return *w[i];
}

// The projection at entry `at` of x, plus `residual` where given (residual + projection, as the
// layer's `x + ...` rounds it).
at::Tensor project(const at::Tensor& x, const Weights& w, int64_t at,
                   const at::Tensor* residual = nullptr) {
  const at::Tensor& weight = required(w, at);
  const c10::optional<at::Tensor>& bias = w[at + 2];
  if (weight.scalar_type() == at::kChar)
    return linear_int8(x, weight, required(w, at + 1), bias, residual);
  if (weight.scalar_type() == at::kByte && weight.dim() == 3)
    return linear_q4_1(x, weight, bias, c10::nullopt, residual);
  if (weight.scalar_type() == at::kByte) {  // int4: PyTorch's kernel, as quietstar.quant's layer
    const at::Tensor& scales_zeros = required(w, at + 1);
    TORCH_CHECK(scales_zeros.dim() == 3 && x.size(1) % scales_zeros.size(0) == 0,
                "decode_layers: projection ", at, " has int4 scales of shape ",
                scales_zeros.sizes(), " for ", x.size(1), " input features");
    at::Tensor y = at::_weight_int4pack_mm_for_cpu(
        x, weight, x.size(1) / scales_zeros.size(0), scales_zeros);
    if (bias.has_value() && bias->defined()) y = y + *bias;
    return residual ? *residual + y : y;
  }
  if (weight.scalar_type() == at::kFloat)
    return linear_fp32(x, weight, bias, c10::nullopt, residual);
  TORCH_CHECK(weight.scalar_type() == at::kBFloat16, "decode_layers: projection ", at,
              " has a ", c10::toString(weight.scalar_type()), " weight; bf16, fp32, int8, int4 or q4_1 only");
  return linear_bf16(x, weight, bias, c10::nullopt, residual);
}

// x (N, d): the step's rows after the embeddings; cos/sin (1, N, D); k/v (L, S, KVH, P, D) and,
// when a row thinks, tk/tv (L, S, K, KVH, T, D); info as decode_attention reads it.
// -> (N, d), the hidden states before the final norm.
at::Tensor decode_layers(const at::Tensor& x_in, const at::Tensor& cos, const at::Tensor& sin,
                         const c10::List<c10::optional<at::Tensor>>& weight_list, at::Tensor k,
                         at::Tensor v, c10::optional<at::Tensor> tk, c10::optional<at::Tensor> tv,
                         const at::Tensor& info, int64_t heads, double eps, double scale) {
  TORCH_CHECK(x_in.dim() == 2, "decode_layers: x must be (rows, hidden), got ", x_in.sizes());
  TORCH_CHECK(k.dim() == 5 && v.sizes() == k.sizes(),
              "decode_layers: k/v caches must be (layers, slots, kv heads, positions, head dim)");
  const bool thoughts = tk.has_value() && tk->defined();
  const int64_t N = x_in.size(0), layers = k.size(0), kvh = k.size(2), D = k.size(4);
  TORCH_CHECK(heads > 0 && heads % kvh == 0, "decode_layers: ", heads,
              " query heads are not a multiple of ", kvh, " key/value heads");
  const Weights w = weight_list.vec();
  TORCH_CHECK(static_cast<int64_t>(w.size()) == layers * kPerLayer, "decode_layers: ", w.size(),
              " weight entries for ", layers, " layers of ", int(kPerLayer));
  const int64_t qk_width = (heads + kvh) * D;
  at::Tensor x = x_in;
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t at = l * kPerLayer;
    const at::Tensor qkv = project(rms_norm(x, required(w, at + kInputNorm), eps), w, at + kQkv);
    TORCH_CHECK(qkv.size(1) == qk_width + kvh * D, "decode_layers: layer ", l, " projects ",
                qkv.size(1), " q/k/v features, the caches hold ", qk_width + kvh * D);
    const at::Tensor qk = rope(qkv.narrow(1, 0, qk_width).view({1, N, heads + kvh, D}), cos, sin)[0];
    const at::Tensor attended = decode_attention(
        qk.narrow(1, 0, heads).view({N, kvh, heads / kvh, D}), qk.narrow(1, heads, kvh),
        qkv.narrow(1, qk_width, kvh * D).view({N, kvh, D}), k[l], v[l],
        thoughts ? c10::optional<at::Tensor>((*tk)[l]) : c10::nullopt,
        thoughts ? c10::optional<at::Tensor>((*tv)[l]) : c10::nullopt, info, scale);
    x = project(attended.view({N, heads * D}), w, at + kOut, &x);
    const at::Tensor gate_up =
        project(rms_norm(x, required(w, at + kPostNorm), eps), w, at + kGateUp);
    x = project(silu_mul(gate_up), w, at + kDown, &x);
  }
  return x;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(quietstar_cpu, m) {
  m.def(
      "decode_layers(Tensor x, Tensor cos, Tensor sin, Tensor?[] weights, Tensor(a!) k, "
      "Tensor(b!) v, Tensor(c!)? tk, Tensor(d!)? tv, Tensor info, int heads, float eps, "
      "float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(quietstar_cpu, CPU, m) { m.impl("decode_layers", &decode_layers); }
