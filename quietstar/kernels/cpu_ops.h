// The ops of quietstar's CPU kernels, callable from C++ without the dispatcher (decode_layers
// chains them); each is also registered as torch.ops.quietstar_cpu.<name>.
#pragma once

#include <ATen/ATen.h>

namespace quietstar_cpu {

// x (..., K) @ weight^T (+ bias) -> (..., N) in x's dtype; weight bf16, (N, K) or tiled
// (ceil(N / 4), K / 32, 128: quietstar.kernels.modules.tile_rows). N is `out_features` where
// given (a tiled weight's last block may be padding), else every row the weight stores. With a
// `residual` (x's dtype, the output's shape), the result is residual + that, rounded as
// PyTorch's add rounds it (a residual connection without another pass over the rows).
at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias,
                       c10::optional<int64_t> out_features = c10::nullopt,
                       const at::Tensor* residual = nullptr);
// The same with an fp32 weight (fp32 FMAs).
at::Tensor linear_fp32(const at::Tensor& x, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias,
                       c10::optional<int64_t> out_features = c10::nullopt,
                       const at::Tensor* residual = nullptr);
// The same with an int8 weight and one fp32 scale per output channel (N: the scales).
at::Tensor linear_int8(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales,
                       const c10::optional<at::Tensor>& bias, const at::Tensor* residual = nullptr);
// The same with a weight in the Q4_1 layout (quietstar.quant.pack_q4_1: 4-bit codes, fp16 scale
// and minimum per 32 values), each row of x rounded to 8 bits per 32 values first (llama.cpp's
// Q4_1 x Q8_1 arithmetic).
at::Tensor linear_q4_1(const at::Tensor& x, const at::Tensor& weight,
                       const c10::optional<at::Tensor>& bias,
                       c10::optional<int64_t> out_features = c10::nullopt,
                       const at::Tensor* residual = nullptr);
// HF's RMSNorm at inference.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
// Rotate-half RoPE: x (B, T, H, D), cos/sin (B, T, D) -> contiguous (B, T, H, D).
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
// [gate, up] (..., 2m) -> silu(gate) * up (..., m), with PyTorch's roundings for x's dtype.
at::Tensor silu_mul(const at::Tensor& x);
// Writes the rows' K/V into one layer's caches, then attends (cpu_attention.cpp).
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                            at::Tensor k, at::Tensor v, c10::optional<at::Tensor> tk,
                            c10::optional<at::Tensor> tv, const at::Tensor& info, double scale);

}  // namespace quietstar_cpu
