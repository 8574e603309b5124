// Linears for the few rows of a decode step on CPU, weights stored bf16, fp32, int8 or in Q4_1
// blocks (the last with 8-bit activations, at the end of this file's kernels).
//
// At one to a few rows a linear layer is bound by the bytes of its weight, and a decode step
// reads every weight of the model once. These kernels stream each weight row once, widen it to
// fp32 once for up to four activation rows, accumulate in fp32 and prefetch the rows ahead. They
// use AVX-512 or AVX2 intrinsics when built for them (quietstar/kernels/__init__.py picks the
// instruction set from PyTorch's own CPU capability) and a scalar loop elsewhere, threaded over
// output channels with PyTorch's intra-op pool, the threads stealing blocks from each other's
// shares at the end of a call (cpu_parallel.h).
//
// Every row's result is computed the same way whatever the number of rows (batch-invariant):
// accumulation order depends only on K, never on M or on the thread count.
//
// A weight comes row-major (N, K), or tiled (ceil(N / 4), K / 32, 128): each block of 4 output
// channels stored as K / 32 chunks of 4 x 32 values, chunk after chunk, the last block padded
// with zero rows (`quietstar.kernels.modules.tile_rows` makes it once at load). The results are
// the same, bit for bit; what changes is that the kernel reads a tiled weight front to back,
// where a row-major one is four interleaved streams that the hardware prefetchers follow badly.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_ops.h"
#include "cpu_parallel.h"
#include "cpu_vec.h"

namespace {

using namespace quietstar_cpu;

// Prefetch the same columns kAhead output channels (two blocks) ahead: each thread walks its
// weight rows in order, and a decode step reads them from DRAM.
constexpr int64_t kAhead = 8;
template <typename T>
inline void prefetch(const T* p) {
  __builtin_prefetch(p, 0, 0);
}

constexpr int kBlockN = 4;  // output channels per block: independent FMA chains, one weight
constexpr int kBlockM = 4;  // activation rows per tile: each widened weight serves them all

// The tiled layout: blocks of kBlockN rows, each K / kChunk chunks of kBlockN x kChunk values.
constexpr int64_t kChunk = 32;
static_assert(kChunk % kLanes == 0, "a vector load stays within a chunk");

// Where a weight's values lie: L::row(w, n, K) is row n's first value in layout L, row-major or
// tiled, and for_columns<L, Step>(K, step) calls step(k, offset) for k = 0, Step, 2 Step, ... < K,
// where `offset` is column k's place from any row's first value (whole chunks at a time in the
// tiled layout, so that the offsets within a chunk are constants).
struct RowMajor {
  template <typename T>
  static const T* row(const T* w, int64_t n, int64_t K) { return w + n * K; }
};
struct Tiled {
  template <typename T>
  static const T* row(const T* w, int64_t n, int64_t K) {
    return w + (n / kBlockN) * kBlockN * K + (n % kBlockN) * kChunk;
  }
};
template <typename L, int Step, typename F>
inline void for_columns(int64_t K, F step) {
  static_assert(kChunk % Step == 0, "a step stays within a chunk");
  constexpr int64_t skip = std::is_same_v<L, Tiled> ? (kBlockN - 1) * kChunk : 0;
  for (int64_t k = 0; k < K; k += Step) step(k, k + (k / kChunk) * skip);
}

// sums[i * kBlockN + j] = the lanes' sum of acc[i * NB + j], for a tile's MB x NB accumulators
// (NB = 4, or 2 with MB up to 8): 16 at once where the tile has them, else 4 at a time, in the
// same order per register either way (`sum4`, `sum16`).
template <int MB, int NB>
inline void store_sums(const Reg* acc, float* sums) {
  static_assert(NB == kBlockN || NB == 2, "tiles of 4 or 2 output channels");
  float out[16];
  int done = 0;
  if constexpr (MB * NB == 16) {
    sum16(acc, out);
    done = 16;
  }
  for (; done + 4 <= MB * NB; done += 4) sum4(acc + done, out + done);
  if (done < MB * NB) {  // an odd row of a 2-channel tile: pad with zeros
    Reg rest[4] = {acc[done], acc[done + 1], zero(), zero()};
    sum4(rest, out + done);
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) sums[i * kBlockN + j] = out[i * NB + j];
}

// sums[i * kBlockN + j] = sum over k in [0, K) of x[i, k] * W_j[k] for MB rows of x starting at
// `x` and the kBlockN weight rows `rows` (T: bf16 bits, fp32 or int8) in layout L. MB is a
// compile-time constant so that every accumulator stays in a register.
template <int MB, typename L, typename T>
inline void dot_tile(const T* const* rows, const float* x, int64_t K, float* sums) {
  Reg acc[MB][kBlockN];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < kBlockN; ++j) acc[i][j] = zero();
  for_columns<L, kLanes>(K, [&](int64_t k, int64_t at) {
    Reg w[kBlockN];
    for (int j = 0; j < kBlockN; ++j) {
      prefetch(rows[j] + at + kAhead * K);  // the block two on
      w[j] = widen(rows[j] + at);
    }
    for (int i = 0; i < MB; ++i) {
      const Reg xv = load(x + i * K + k);
      for (int j = 0; j < kBlockN; ++j) acc[i][j] = fma(xv, w[j], acc[i][j]);
    }
  });
  store_sums<MB, kBlockN>(acc[0], sums);
}

#if defined(__AVX512BF16__)
// With AVX512-BF16 and bf16 activations, one vdpbf16ps multiplies 32 bf16 pairs into 16 fp32
// lanes: twice the FMAs per instruction of the fp32 path, and bf16 weights need no widening at
// all (int8 ones are widened to bf16 exactly: every |q| <= 127 is a bf16 value).
inline __m512bh bf16_pairs(const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
inline __m512bh bf16_pairs(const int8_t* p) {
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
  return _mm512_cvtne2ps_pbh(hi, lo);  // columns 0..15 from lo, 16..31 from hi
}

// dot_tile for bf16 activations `x` (MB rows of K bf16 bits) and NB weight rows, K a multiple
// of 32; sums[i * kBlockN + j]. int8 weights take NB = 2 and MB up to 8, so that each widening
// serves eight rows.
template <int MB, int NB, typename L, typename T>
inline void dot_tile_bf16(const T* const* rows, const uint16_t* x, int64_t K, float* sums) {
  __m512 acc[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  for_columns<L, 32>(K, [&](int64_t k, int64_t at) {
    __m512bh w[NB];
    for (int j = 0; j < NB; ++j) {
      prefetch(rows[j] + at + kAhead * K);
      w[j] = bf16_pairs(rows[j] + at);
    }
    for (int i = 0; i < MB; ++i) {
      const __m512bh xv = bf16_pairs(x + i * K + k);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, w[j]);
    }
  });
  store_sums<MB, NB>(acc[0], sums);
}
constexpr bool kBf16DotProducts = true;
#else
template <int MB, int NB, typename L, typename T>
inline void dot_tile_bf16(const T* const*, const uint16_t*, int64_t, float*) {}
constexpr bool kBf16DotProducts = false;
#endif

// Every row of x (M of them) in tiles of up to Max (4 or 8) rows: tile(rows, m0), where `rows`
// is a std::integral_constant so that the tile size reaches the kernels as a template argument.
template <int Max = kBlockM, typename Tile>
inline void for_row_tiles(int64_t M, Tile tile) {
  static_assert(Max == 4 || Max == 8, "tiles of 4 or 8 rows");
  int64_t m0 = 0;
  for (; m0 + Max <= M; m0 += Max) tile(std::integral_constant<int, Max>{}, m0);
  switch (M - m0) {
    case 7: if constexpr (Max > 7) tile(std::integral_constant<int, 7>{}, m0); break;
    case 6: if constexpr (Max > 6) tile(std::integral_constant<int, 6>{}, m0); break;
    case 5: if constexpr (Max > 5) tile(std::integral_constant<int, 5>{}, m0); break;
    case 4: if constexpr (Max > 4) tile(std::integral_constant<int, 4>{}, m0); break;
    case 3: tile(std::integral_constant<int, 3>{}, m0); break;
    case 2: tile(std::integral_constant<int, 2>{}, m0); break;
    case 1: tile(std::integral_constant<int, 1>{}, m0); break;
    default: break;
  }
}

// A tensor's values as fp32, without a dispatcher call: fp32 contiguous ones in place, bf16 ones
// widened into an owned buffer (a decode step's activations are a few rows).
struct Floats {
  std::vector<float> owned;
  const float* data = nullptr;

  explicit Floats(const at::Tensor& t) {
    if (t.scalar_type() == at::kFloat && t.is_contiguous()) {
      data = t.data_ptr<float>();
      return;
    }
    const at::Tensor c = t.contiguous();
    owned.resize(c.numel());
    if (c.scalar_type() == at::kBFloat16) {
      const at::BFloat16* p = c.data_ptr<at::BFloat16>();
      for (size_t i = 0; i < owned.size(); ++i) owned[i] = static_cast<float>(p[i]);
    } else {
      const at::Tensor f = c.to(at::kFloat);
      std::memcpy(owned.data(), f.data_ptr<float>(), owned.size() * sizeof(float));
    }
    data = owned.data();
  }
};

void check_activation(const at::Tensor& x, int64_t K) {
  TORCH_CHECK(x.device().is_cpu(), "quietstar_cpu linears take CPU tensors");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "quietstar_cpu linears take float32 or bfloat16 activations, got ",
              c10::toString(x.scalar_type()));
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, "activation has ", x.dim() ? x.size(-1) : 0,
              " features, the weight ", K);
}

void check_weight(const at::Tensor& w, at::ScalarType dtype, const char* op) {
  const bool tiled = w.dim() == 3 && w.size(2) == kBlockN * kChunk;
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == dtype && (w.dim() == 2 || tiled) &&
                  w.is_contiguous(),
              op, " needs a contiguous CPU ", c10::toString(dtype),
              " weight, (N, K) or tiled (ceil(N / ", kBlockN, "), K / ", kChunk, ", ",
              kBlockN * kChunk, "), got ",
              c10::toString(w.scalar_type()), " of shape ", w.sizes());
}

// Runs `block(n0, sums)` for each block of kBlockN output channels, in parallel over blocks,
// and writes out[m, n0 + j] = sums[m * kBlockN + j] + bias[n0 + j], rounded to Out, then, with a
// residual, residual[m, n0 + j] + that, rounded again (PyTorch's `residual + linear(x)`). When N
// is not a multiple of kBlockN, the last block repeats row N - 1 (see `block_row`) and drops it.
template <typename Out, typename Block>
void run_blocks(Out* out, int64_t M, int64_t N, const float* bias, const Out* residual,
                Block block) {
  parallel_balanced((N + kBlockN - 1) / kBlockN, 8, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> sums(M * kBlockN);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n0 = i * kBlockN;
      const int valid = static_cast<int>(std::min<int64_t>(kBlockN, N - n0));
      block(n0, sums.data());
      for (int64_t m = 0; m < M; ++m)
        for (int j = 0; j < valid; ++j) {
          const int64_t at = m * N + n0 + j;
          out[at] = static_cast<Out>(sums[m * kBlockN + j] + (bias ? bias[n0 + j] : 0.0f));
          if (residual)
            out[at] = static_cast<Out>(static_cast<float>(residual[at]) + static_cast<float>(out[at]));
        }
    }
  });
}

// Row n0 + j of a weight of N rows of K values in layout L, the last row standing in past the end.
template <typename L, typename T>
inline const T* block_row(const T* w, int64_t n0, int j, int64_t N, int64_t K) {
  return L::row(w, std::min<int64_t>(n0 + j, N - 1), K);
}

// y (..., N) in x's dtype, for x's M rows: run_blocks(block) with the bias (checked) added, and
// the residual (checked: x's dtype, M x N values) where given.
template <typename Block>
at::Tensor linear_out(const at::Tensor& x, int64_t M, int64_t N,
                      const c10::optional<at::Tensor>& bias, const at::Tensor* residual,
                      Block block) {
  c10::optional<Floats> bf;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == N, "bias has ", bias->numel(), " values for ", N, " outputs");
    bf.emplace(*bias);
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  at::Tensor res;
  if (residual) {
    TORCH_CHECK(residual->scalar_type() == x.scalar_type() && residual->numel() == M * N,
                "the residual must hold ", M, " x ", N, " values of ", c10::toString(x.scalar_type()),
                ", got ", c10::toString(residual->scalar_type()), " ", residual->sizes());
    res = residual->contiguous();
  }
  at::Tensor y = at::empty(shape, x.options());
  const float* bp = bf ? bf->data : nullptr;
  if (x.scalar_type() == at::kFloat)
    run_blocks(y.data_ptr<float>(), M, N, bp, residual ? res.data_ptr<float>() : nullptr, block);
  else
    run_blocks(y.data_ptr<at::BFloat16>(), M, N, bp,
               residual ? res.data_ptr<at::BFloat16>() : nullptr, block);
  return y;
}

// x (..., K) @ W^T (* scales) (+ bias) -> (..., N) in x's dtype, for a weight of N rows of K in
// layout L.
template <typename L, typename T>
at::Tensor linear_rows(const at::Tensor& x, int64_t N, int64_t K, const T* wp, const float* scales,
                       const c10::optional<at::Tensor>& bias, const at::Tensor* residual) {
  check_activation(x, K);
  TORCH_CHECK(K % 16 == 0, "input features ", K, " not a multiple of 16");
  const int64_t M = x.numel() / K;
  const at::Tensor xc = x.contiguous();
  // fp32 weights take fp32 FMAs whatever the activations (their products are not bf16 pairs)
  constexpr bool kWeightPairs = !std::is_same_v<T, float>;
  const bool bf16_dots =
      kWeightPairs && kBf16DotProducts && x.scalar_type() == at::kBFloat16 && K % 32 == 0;
  const uint16_t* xb = bf16_dots ? reinterpret_cast<const uint16_t*>(xc.data_ptr<at::BFloat16>())
                                 : nullptr;
  c10::optional<Floats> xf;
  if (!bf16_dots) xf.emplace(xc);
  const float* xp = bf16_dots ? nullptr : xf->data;
  auto block = [&](int64_t n0, float* sums) {
    const T* rows[kBlockN];
    for (int j = 0; j < kBlockN; ++j) rows[j] = block_row<L>(wp, n0, j, N, K);
    if constexpr (!kWeightPairs) {
      for_row_tiles(M, [&](auto mb, int64_t m0) {
        dot_tile<decltype(mb)::value, L>(rows, xp + m0 * K, K, sums + m0 * kBlockN);
      });
    } else if (bf16_dots && std::is_same_v<T, int8_t>) {
      for (int half = 0; half < kBlockN; half += 2)
        for_row_tiles<8>(M, [&](auto mb, int64_t m0) {
          dot_tile_bf16<decltype(mb)::value, 2, L>(rows + half, xb + m0 * K, K,
                                                   sums + m0 * kBlockN + half);
        });
    } else {
      for_row_tiles(M, [&](auto mb, int64_t m0) {
        if (bf16_dots)
          dot_tile_bf16<decltype(mb)::value, kBlockN, L>(rows, xb + m0 * K, K, sums + m0 * kBlockN);
        else
          dot_tile<decltype(mb)::value, L>(rows, xp + m0 * K, K, sums + m0 * kBlockN);
      });
    }
    if (scales)
      for (int64_t m = 0; m < M; ++m)
        for (int j = 0; j < kBlockN; ++j)
          sums[m * kBlockN + j] *= scales[std::min<int64_t>(n0 + j, N - 1)];
  };
  return linear_out(x, M, N, bias, residual, block);
}

// The rows weight `w` (checked by check_weight) stores, padding included, and its K.
int64_t stored_rows(const at::Tensor& w) { return w.dim() == 3 ? w.size(0) * kBlockN : w.size(0); }
int64_t in_features(const at::Tensor& w) { return w.dim() == 3 ? w.size(1) * kChunk : w.size(1); }

// N, the output channels of weight `w`: `given` where the caller says (a tiled weight's last
// block may hold up to kBlockN - 1 zero rows of padding), else every row `w` stores. `what`
// names the given count in the error.
int64_t out_features(const at::Tensor& w, c10::optional<int64_t> given, const char* op,
                     const char* what = "output channels") {
  const int64_t rows = stored_rows(w);
  if (!given.has_value()) return rows;
  const int64_t n = *given;
  const bool fits = w.dim() == 3 ? n > rows - kBlockN && n <= rows : n == rows;
  TORCH_CHECK(fits, op, ": ", n, " ", what, " do not fit a weight of shape ", w.sizes());
  return n;
}

// linear_rows for the first N output channels of weight `w` (checked by check_weight) in
// whichever layout it has.
template <typename T>
at::Tensor linear_any(const at::Tensor& x, const at::Tensor& w, int64_t N, const T* wp,
                      const float* scales, const c10::optional<at::Tensor>& bias,
                      const at::Tensor* residual) {
  const int64_t K = in_features(w);
  if (w.dim() == 3) return linear_rows<Tiled>(x, N, K, wp, scales, bias, residual);
  return linear_rows<RowMajor>(x, N, K, wp, scales, bias, residual);
}

// ---------------------------------------------------------------- Q4_1 weights, 8-bit activations
//
// llama.cpp's Q4_1 x Q8_1 arithmetic on CPU. A weight row is blocks of 32 values, each stored as
// 4-bit codes q in [0, 15] with an fp16 scale d and minimum m (w = q d + m); the activation row is
// rounded per 32 values to int8 codes a with a scale e = max |x| / 127 (x ~ a e), and each output
// is sum over blocks of d e (q . a) + m (sum of that block's x). The q . a products are exact
// integer sums (vpmaddubsw, vpmaddwd): a few instructions per 32 values, where widening each
// weight to fp32 for an FMA takes three per 8, and a weight reads 0.625 bytes, so a decode step's
// linears run at the memory's speed.
//
// The layout (quietstar.quant.pack_q4_1): blocks of kBlockN output channels, K / 32 chunks each,
// a chunk kQ4Bytes bytes: for channel j, 16 bytes at 16 j whose byte i holds column i in its low
// nibble and column i + 16 in its high one; then the four scales d_j, then the four minimums m_j,
// as fp16. Every row's result is computed the same way whatever the number of rows or threads.

constexpr int64_t kQ4Bytes = kBlockN * 16 + kBlockN * 2 * 2;

// One activation row's blocks: K int8 codes, and per block of 32 eight floats {e x4, s x4} (e the
// scale, s the sum of the block's x), the layout the kernel multiplies the chunk's {d x4, m x4} by.
// A NaN is left out of the maximum, gets the code -127 (the clamp keeps it defined) and makes its
// block's sum NaN. With AVX2 the block is four registers: codes rounded to nearest even as
// nearbyint rounds them, the sum taken in a fixed tree ((x0 + x1) + (x2 + x3) by lanes, then
// the lanes); elsewhere one value at a time.
void quantize_row_q8(const float* x, int64_t K, int8_t* codes, float* coef) {
  for (int64_t c = 0; c < K / kChunk; ++c) {
    const float* xb = x + c * kChunk;
    float amax = 0.0f, s = 0.0f;
#if defined(__AVX2__)
    __m256 v[4];
    for (int r = 0; r < 4; ++r) v[r] = _mm256_loadu_ps(xb + 8 * r);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 top = _mm256_setzero_ps();
    for (int r = 0; r < 4; ++r) top = _mm256_max_ps(_mm256_andnot_ps(sign, v[r]), top);
    float lanes[8];
    _mm256_storeu_ps(lanes, top);
    for (const float l : lanes) amax = std::max(amax, l);
    _mm256_storeu_ps(lanes, _mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3])));
    s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    const float e = amax / 127.0f, inv = e > 0.0f ? 1.0f / e : 0.0f;
    const __m256 scale = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    __m256i q[4];
    for (int r = 0; r < 4; ++r) {
      const __m256 clamped = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[r], scale), lo), hi);
      q[r] = _mm256_cvtps_epi32(
          _mm256_round_ps(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + c * kChunk),
                        _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
#else
    for (int i = 0; i < kChunk; ++i) {
      amax = std::max(amax, std::fabs(xb[i]));
      s += xb[i];
    }
    const float e = amax / 127.0f, inv = e > 0.0f ? 1.0f / e : 0.0f;
    for (int i = 0; i < kChunk; ++i)
      codes[c * kChunk + i] =
          static_cast<int8_t>(std::nearbyint(std::min(127.0f, std::max(-127.0f, xb[i] * inv))));
#endif
    for (int i = 0; i < 4; ++i) {
      coef[c * 8 + i] = e;
      coef[c * 8 + 4 + i] = s;
    }
  }
}

#if defined(__AVX2__)
// sums[i * kBlockN + j] for MB activation rows (codes, coefs) and the block of kBlockN channels
// at `blk`, `chunks` = K / 32.
template <int MB>
inline void q4_tile(const uint8_t* blk, const int8_t* codes, const float* coef, int64_t chunks,
                    float* sums) {
  __m256 acc01[MB], acc23[MB], accm[MB];
  for (int i = 0; i < MB; ++i) acc01[i] = acc23[i] = accm[i] = _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const __m256i pick01 = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  const __m256i pick23 = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
  const int64_t K = chunks * kChunk, ahead = kAhead / kBlockN * chunks * kQ4Bytes;
  for (int64_t c = 0; c < chunks; ++c) {
    const uint8_t* p = blk + c * kQ4Bytes;
    prefetch(p + ahead);
    prefetch(p + ahead + 64);
    const __m256i v01 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i v23 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
    const __m256i lo01 = _mm256_and_si256(v01, low);
    const __m256i hi01 = _mm256_and_si256(_mm256_srli_epi16(v01, 4), low);
    const __m256i lo23 = _mm256_and_si256(v23, low);
    const __m256i hi23 = _mm256_and_si256(_mm256_srli_epi16(v23, 4), low);
    const __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 64)));
    for (int i = 0; i < MB; ++i) {
      const int8_t* a = codes + i * K + c * kChunk;
      const auto* a16 = reinterpret_cast<const __m128i*>(a);
      const __m256i a_lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(a16));
      const __m256i a_hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(a16 + 1));
      const __m256i s01 = _mm256_madd_epi16(
          _mm256_add_epi16(_mm256_maddubs_epi16(lo01, a_lo), _mm256_maddubs_epi16(hi01, a_hi)),
          ones);
      const __m256i s23 = _mm256_madd_epi16(
          _mm256_add_epi16(_mm256_maddubs_epi16(lo23, a_lo), _mm256_maddubs_epi16(hi23, a_hi)),
          ones);
      const __m256 k = _mm256_mul_ps(dm, _mm256_loadu_ps(coef + (i * chunks + c) * 8));
      accm[i] = _mm256_add_ps(accm[i], k);  // lanes 4..7: m_j s
      acc01[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s01), _mm256_permutevar8x32_ps(k, pick01),
                                 acc01[i]);
      acc23[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s23), _mm256_permutevar8x32_ps(k, pick23),
                                 acc23[i]);
    }
  }
  for (int i = 0; i < MB; ++i) {
    float a[8], b[8], m[8];
    _mm256_storeu_ps(a, acc01[i]);
    _mm256_storeu_ps(b, acc23[i]);
    _mm256_storeu_ps(m, accm[i]);
    float* out = sums + i * kBlockN;
    out[0] = ((a[0] + a[1]) + (a[2] + a[3])) + m[4];
    out[1] = ((a[4] + a[5]) + (a[6] + a[7])) + m[5];
    out[2] = ((b[0] + b[1]) + (b[2] + b[3])) + m[6];
    out[3] = ((b[4] + b[5]) + (b[6] + b[7])) + m[7];
  }
}
#else
inline float half_value(uint16_t h) {
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
}

template <int MB>
inline void q4_tile(const uint8_t* blk, const int8_t* codes, const float* coef, int64_t chunks,
                    float* sums) {
  const int64_t K = chunks * kChunk;
  for (int i = 0; i < MB; ++i) {
    float acc[kBlockN] = {}, accm[kBlockN] = {};
    for (int64_t c = 0; c < chunks; ++c) {
      const uint8_t* p = blk + c * kQ4Bytes;
      const int8_t* a = codes + i * K + c * kChunk;
      const float* k = coef + (i * chunks + c) * 8;
      for (int j = 0; j < kBlockN; ++j) {
        int32_t dot = 0;
        for (int b = 0; b < 16; ++b) {
          dot += (p[16 * j + b] & 0x0F) * a[b] + (p[16 * j + b] >> 4) * a[b + 16];
        }
        uint16_t d, m;
        std::memcpy(&d, p + 64 + 2 * j, 2);
        std::memcpy(&m, p + 72 + 2 * j, 2);
        acc[j] += static_cast<float>(dot) * (half_value(d) * k[0]);
        accm[j] += half_value(m) * k[4];
      }
    }
    for (int j = 0; j < kBlockN; ++j) sums[i * kBlockN + j] = acc[j] + accm[j];
  }
}
#endif

}  // namespace

namespace quietstar_cpu {

at::Tensor linear_q4_1(const at::Tensor& x, const at::Tensor& w,
                       const c10::optional<at::Tensor>& bias, c10::optional<int64_t> n,
                       const at::Tensor* residual) {
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kByte && w.dim() == 3 &&
                  w.size(2) == kQ4Bytes && w.is_contiguous(),
              "linear_q4_1 needs a contiguous CPU uint8 weight (ceil(N / ", kBlockN, "), K / ",
              kChunk, ", ", kQ4Bytes, "), got ", c10::toString(w.scalar_type()), " of shape ",
              w.sizes());
  const int64_t chunks = w.size(1), K = chunks * kChunk;
  const int64_t N = out_features(w, n, "linear_q4_1");
  check_activation(x, K);
  const int64_t M = x.numel() / K;
  const Floats xf(x.contiguous());
  std::vector<int8_t> codes(M * K);
  std::vector<float> coef(M * chunks * 8);
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m)
      quantize_row_q8(xf.data + m * K, K, codes.data() + m * K, coef.data() + m * chunks * 8);
  });
  const uint8_t* wp = w.data_ptr<uint8_t>();
  return linear_out(x, M, N, bias, residual, [&](int64_t n0, float* sums) {
    const uint8_t* blk = wp + (n0 / kBlockN) * chunks * kQ4Bytes;
    for_row_tiles(M, [&](auto mb, int64_t m0) {
      q4_tile<decltype(mb)::value>(blk, codes.data() + m0 * K, coef.data() + m0 * chunks * 8,
                                   chunks, sums + m0 * kBlockN);
    });
  });
}

at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& w,
                       const c10::optional<at::Tensor>& bias, c10::optional<int64_t> n,
                       const at::Tensor* residual) {
  check_weight(w, at::kBFloat16, "linear_bf16");
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  return linear_any(x, w, out_features(w, n, "linear_bf16"), wp, nullptr, bias, residual);
}

at::Tensor linear_fp32(const at::Tensor& x, const at::Tensor& w,
                       const c10::optional<at::Tensor>& bias, c10::optional<int64_t> n,
                       const at::Tensor* residual) {
  check_weight(w, at::kFloat, "linear_fp32");
  return linear_any(x, w, out_features(w, n, "linear_fp32"), w.data_ptr<float>(), nullptr, bias,
                    residual);
}

at::Tensor linear_int8(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales,
                       const c10::optional<at::Tensor>& bias, const at::Tensor* residual) {
  check_weight(q, at::kChar, "linear_int8");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 1,
              "linear_int8 needs one contiguous fp32 scale per output channel");
  const int64_t N =
      out_features(q, scales.numel(), "linear_int8", "scales (one per output channel)");
  return linear_any(x, q, N, q.data_ptr<int8_t>(), scales.data_ptr<float>(), bias, residual);
}

// bf16 <-> fp32 on bits, as c10::BFloat16 converts (round to nearest even; NaN -> 0x7FC0), in
// plain C++ that the compiler vectorises.
inline float bf16_value(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return f != f ? uint16_t{0x7FC0} : static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}
inline float stored(const float* p, int64_t i) { return p[i]; }
inline float stored(const uint16_t* p, int64_t i) { return bf16_value(p[i]); }
inline float rounded(float v, const float*) { return v; }
inline float rounded(float v, const uint16_t*) { return bf16_value(bf16_bits(v)); }
inline void put(float* p, int64_t i, float v) { p[i] = v; }
inline void put(uint16_t* p, int64_t i, float v) { p[i] = bf16_bits(v); }

// out (N, K) = q's first N rows as out's dtype (fp32 or bf16: every int8 value is exact in
// both), from q in either layout: the weight a GEMM multiplies by, written into a buffer the
// caller keeps (prefill and scoring reuse it, layer after layer, instead of allocating).
at::Tensor widen_int8(const at::Tensor& q, at::Tensor out) {
  check_weight(q, at::kChar, "widen_int8");
  TORCH_CHECK(out.device().is_cpu() && out.dim() == 2 && out.is_contiguous() &&
                  (out.scalar_type() == at::kFloat || out.scalar_type() == at::kBFloat16),
              "widen_int8 writes a contiguous (N, K) float32 or bfloat16 CPU tensor, got ",
              c10::toString(out.scalar_type()), " of shape ", out.sizes());
  const int64_t K = in_features(q);
  const int64_t N = out_features(q, out.size(0), "widen_int8", "rows");
  TORCH_CHECK(out.size(1) == K, "widen_int8: out has ", out.size(1), " columns, the weight ", K);
  const int8_t* qp = q.data_ptr<int8_t>();
  auto rows = [&](auto* o, auto layout) {
    using L = decltype(layout);
    constexpr bool kFloatOut = std::is_same_v<std::remove_pointer_t<decltype(o)>, float>;
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int8_t* src = L::row(qp, n, K);
        auto* dst = o + n * K;
        if (kFloatOut && K % kLanes == 0) {  // whole vectors (every tiled weight: K % 32 == 0)
          for_columns<L, kLanes>(K, [&](int64_t k, int64_t at) {
            if constexpr (kFloatOut) store(dst + k, widen(src + at));
          });
          continue;
        }
        for_columns<L, kChunk>(K, [&](int64_t k, int64_t at) {
          for (int64_t c = 0; c < kChunk && k + c < K; ++c) put(dst, k + c, src[at + c]);
        });
      }
    });
  };
  auto layouts = [&](auto* o) {
    if (q.dim() == 3) rows(o, Tiled{}); else rows(o, RowMajor{});
  };
  if (out.scalar_type() == at::kFloat)
    layouts(out.data_ptr<float>());
  else
    layouts(reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()));
  return out;
}

// HF's RMSNorm at inference: y = weight * (x * rsqrt(mean(x^2) + eps)) with the normalisation in
// fp32 and rounded to x's dtype before the (x's dtype) product with the weight. T: float, or
// uint16_t for bf16 bits. The sum of squares runs in vector lanes, the rest vectorised by the
// compiler: a decode step makes two calls per layer.
template <typename T>
void rms_norm_rows(const T* x, const T* w, T* y, int64_t rows, int64_t D, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * D;
      T* yr = y + r * D;
      Reg acc = zero();
      int64_t d = 0;
      for (; d + kLanes <= D; d += kLanes) {
        const Reg v = widen(xr + d);
        acc = fma(v, v, acc);
      }
      float ss = sum(acc);
      for (; d < D; ++d) ss += stored(xr, d) * stored(xr, d);
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(D) + eps);
      for (d = 0; d < D; ++d) put(yr, d, stored(w, d) * rounded(stored(xr, d) * inv, xr));
    }
  });
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "rms_norm takes CPU tensors");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "rms_norm needs x and weight of one dtype, float32 or bfloat16");
  const int64_t D = weight.numel();
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == D, "rms_norm: x has ", x.size(-1),
              " features, the weight ", D);
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t rows = xc.numel() / D;
  if (x.scalar_type() == at::kFloat)
    rms_norm_rows(xc.data_ptr<float>(), wc.data_ptr<float>(), y.data_ptr<float>(), rows, D,
                  static_cast<float>(eps));
  else
    rms_norm_rows(reinterpret_cast<const uint16_t*>(xc.data_ptr<at::BFloat16>()),
                  reinterpret_cast<const uint16_t*>(wc.data_ptr<at::BFloat16>()),
                  reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()), rows, D,
                  static_cast<float>(eps));
  return y;
}

// RoPE, rotate-half form: x (B, T, H, D), any strides but the last; cos/sin (B, T, D) contiguous
// -> x * cos + rotate_half(x) * sin, contiguous, with PyTorch's roundings for x's dtype (each
// product rounded, then the sum).
template <typename T>
void rope_rows(const at::Tensor& x, const T* cos, const T* sin, T* y) {
  const int64_t B = x.size(0), T_ = x.size(1), H = x.size(2), D = x.size(3), half = D / 2;
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  at::parallel_for(0, B * T_, 4, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / T_, t = bt % T_;
      const T* c = cos + bt * D;
      const T* s = sin + bt * D;
      for (int64_t h = 0; h < H; ++h) {
        const T* xr = xp + b * x.stride(0) + t * x.stride(1) + h * x.stride(2);
        T* yr = y + (bt * H + h) * D;
        for (int64_t d = 0; d < D; ++d) {
          const float rotated = d < half ? -static_cast<float>(xr[d + half])
                                         : static_cast<float>(xr[d - half]);
          const T a = static_cast<T>(static_cast<float>(xr[d]) * static_cast<float>(c[d]));
          const T r = static_cast<T>(static_cast<T>(rotated) * static_cast<float>(s[d]));
          yr[d] = static_cast<T>(static_cast<float>(a) + static_cast<float>(r));
        }
      }
    }
  });
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.stride(3) == 1 && x.size(3) % 2 == 0,
              "rope needs a CPU (B, T, H, D) tensor, contiguous in an even D");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "rope takes float32 or bfloat16");
  for (const at::Tensor* t : {&cos, &sin})
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->dim() == 3 && t->size(0) == x.size(0) &&
                    t->size(1) == x.size(1) && t->size(2) == x.size(3),
                "rope needs cos/sin of x's dtype and shape (B, T, D)");
  const at::Tensor c = cos.contiguous(), s = sin.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.scalar_type() == at::kFloat)
    rope_rows(x, c.data_ptr<float>(), s.data_ptr<float>(), y.data_ptr<float>());
  else
    rope_rows(x, c.data_ptr<at::BFloat16>(), s.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>());
  return y;
}

// SiLU-gated product: y[..., i] = silu(g[..., i]) * u[..., i] for x = [g, u] (..., 2m), with
// PyTorch's roundings for x's dtype (silu computed in fp32 and rounded, then the product).
// silu(v) = v / (1 + e^-v), e^-v in vector lanes (cpu_vec.h's exp; std::exp for the few values
// past the last whole vector, so which way a value goes depends on m only).
template <typename T>
void silu_mul_rows(const T* x, T* y, int64_t rows, int64_t m) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> e(m);
    for (int64_t r = begin; r < end; ++r) {
      const T* g = x + r * 2 * m;
      const T* u = g + m;
      T* yr = y + r * m;
      int64_t i = 0;
      for (; i + kLanes <= m; i += kLanes) {
        const Reg v = widen(g + i);
        store(e.data() + i, exp(mul(v, broadcast(-1.0f))));
      }
      for (; i < m; ++i) e[i] = std::exp(-stored(g, i));
      for (i = 0; i < m; ++i) {
        const float v = stored(g, i);
        put(yr, i, rounded(v / (1.0f + e[i]), g) * stored(u, i));
      }
    }
  });
}

at::Tensor silu_mul(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "silu_mul takes a CPU float32 or bfloat16 tensor");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) % 2 == 0, "silu_mul needs [gate, up] halves, got ",
              x.sizes());
  const at::Tensor xc = x.contiguous();
  const int64_t m = x.size(-1) / 2, rows = m ? xc.numel() / (2 * m) : 0;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = m;
  at::Tensor y = at::empty(shape, x.options());
  if (x.scalar_type() == at::kFloat)
    silu_mul_rows(xc.data_ptr<float>(), y.data_ptr<float>(), rows, m);
  else
    silu_mul_rows(reinterpret_cast<const uint16_t*>(xc.data_ptr<at::BFloat16>()),
                  reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()), rows, m);
  return y;
}

}  // namespace quietstar_cpu

using namespace quietstar_cpu;

TORCH_LIBRARY(quietstar_cpu, m) {
  m.def("linear_bf16(Tensor x, Tensor weight, Tensor? bias, int? out_features=None) -> Tensor");
  m.def("linear_fp32(Tensor x, Tensor weight, Tensor? bias, int? out_features=None) -> Tensor");
  m.def("linear_int8(Tensor x, Tensor weight, Tensor scales, Tensor? bias) -> Tensor");
  m.def("linear_q4_1(Tensor x, Tensor weight, Tensor? bias, int? out_features=None) -> Tensor");
  m.def("widen_int8(Tensor weight, Tensor(a!) out) -> Tensor(a!)");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rope(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  m.def("silu_mul(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(quietstar_cpu, CPU, m) {
  // the linears without a residual (decode_layers adds one in C++)
  m.impl("linear_bf16", [](const at::Tensor& x, const at::Tensor& w,
                           const c10::optional<at::Tensor>& bias, c10::optional<int64_t> n) {
    return linear_bf16(x, w, bias, n);
  });
  m.impl("linear_fp32", [](const at::Tensor& x, const at::Tensor& w,
                           const c10::optional<at::Tensor>& bias, c10::optional<int64_t> n) {
    return linear_fp32(x, w, bias, n);
  });
  m.impl("linear_int8", [](const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales,
                           const c10::optional<at::Tensor>& bias) {
    return linear_int8(x, q, scales, bias);
  });
  m.impl("linear_q4_1", [](const at::Tensor& x, const at::Tensor& w,
                           const c10::optional<at::Tensor>& bias, c10::optional<int64_t> n) {
    return linear_q4_1(x, w, bias, n);
  });
  m.impl("silu_mul", &silu_mul);
  m.impl("widen_int8", &widen_int8);
  m.impl("rms_norm", &rms_norm);
  m.impl("rope", &rope);
}
