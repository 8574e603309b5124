// fp32 vector registers for quietstar's CPU kernels: one register of fp32 lanes on the
// instruction set a file is built for (AVX-512, AVX2 + FMA, or one float elsewhere) and the loads
// that widen stored values (fp32, bf16 bits, int8) into it.
#pragma once

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

namespace quietstar_cpu {

// sum4 / sum16: out[p] = the sum of register a[p]'s lanes, for 4 or 16 registers at once (a few
// shuffles for all of them instead of a reduction each). Every register is summed in one fixed
// order, pairs within 128-bit lanes and then across them, whichever of the two reduces it, so a
// dot product's result never depends on what else was reduced with it.

#if defined(__AVX512F__)
constexpr int kLanes = 16;
using Reg = __m512;
inline Reg zero() { return _mm512_setzero_ps(); }
inline Reg load(const float* p) { return _mm512_loadu_ps(p); }
inline Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
inline float sum(Reg a) { return _mm512_reduce_add_ps(a); }
inline Reg widen(const uint16_t* p) {  // bf16 bits -> fp32: the same bits, 16 higher
  __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}
inline Reg widen(const int8_t* p) {
  __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
}
inline Reg widen(const float* p) { return _mm512_loadu_ps(p); }
inline Reg broadcast(float v) { return _mm512_set1_ps(v); }
inline Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
inline void store(float* p, Reg a) { _mm512_storeu_ps(p, a); }
inline Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
// The larger lane by lane; a NaN in `b` is kept (the instruction returns its second operand).
inline Reg max(Reg a, Reg b) { return _mm512_max_ps(a, b); }
inline Reg min(Reg a, Reg b) { return _mm512_min_ps(a, b); }
inline float max_lanes(Reg a) { return _mm512_reduce_max_ps(a); }
inline Reg floor(Reg a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
inline Reg pow2(Reg n) {  // 2^n for integral n in [-127, 128]
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
// Per 128-bit lane: [a0 + a2, b0 + b2, a1 + a3, b1 + b3].
inline Reg pair_lanes(Reg a, Reg b) {
  return _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
}
// a[0..3] -> per 128-bit lane k: the lane's sum of each of the four registers.
inline Reg quad_lanes(const Reg* a) {
  const __m512d ab = _mm512_castps_pd(pair_lanes(a[0], a[1]));
  const __m512d cd = _mm512_castps_pd(pair_lanes(a[2], a[3]));
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(ab, cd)),
                       _mm512_castpd_ps(_mm512_unpackhi_pd(ab, cd)));
}
// [x.L0 + x.L1, x.L2 + x.L3, y.L0 + y.L1, y.L2 + y.L3] over 128-bit lanes.
inline Reg fold_lanes(Reg x, Reg y) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xDD));
}
inline void sum4(const Reg* a, float* out) {
  const Reg w = quad_lanes(a), f = fold_lanes(w, w);
  _mm_storeu_ps(out, _mm512_castps512_ps128(fold_lanes(f, f)));
}
inline void sum16(const Reg* a, float* out) {
  const Reg w0 = quad_lanes(a), w1 = quad_lanes(a + 4), w2 = quad_lanes(a + 8);
  const Reg w3 = quad_lanes(a + 12);
  _mm512_storeu_ps(out, fold_lanes(fold_lanes(w0, w1), fold_lanes(w2, w3)));
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kLanes = 8;
using Reg = __m256;
inline Reg zero() { return _mm256_setzero_ps(); }
inline Reg load(const float* p) { return _mm256_loadu_ps(p); }
inline Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
inline float sum(Reg a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline Reg widen(const uint16_t* p) {
  __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
inline Reg widen(const int8_t* p) {
  __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
}
inline Reg widen(const float* p) { return _mm256_loadu_ps(p); }
inline Reg broadcast(float v) { return _mm256_set1_ps(v); }
inline Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
inline void store(float* p, Reg a) { _mm256_storeu_ps(p, a); }
inline Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
inline Reg max(Reg a, Reg b) { return _mm256_max_ps(a, b); }
inline Reg min(Reg a, Reg b) { return _mm256_min_ps(a, b); }
inline float max_lanes(Reg a) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
inline Reg floor(Reg a) { return _mm256_floor_ps(a); }
inline Reg pow2(Reg n) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
inline Reg pair_lanes(Reg a, Reg b) {  // as the AVX-512 one, per 128-bit lane
  return _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
}
inline Reg quad_lanes(const Reg* a) {
  const __m256d ab = _mm256_castps_pd(pair_lanes(a[0], a[1]));
  const __m256d cd = _mm256_castps_pd(pair_lanes(a[2], a[3]));
  return _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(ab, cd)),
                       _mm256_castpd_ps(_mm256_unpackhi_pd(ab, cd)));
}
inline void sum4(const Reg* a, float* out) {
  const Reg w = quad_lanes(a);
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(w), _mm256_extractf128_ps(w, 1)));
}
inline void sum16(const Reg* a, float* out) {
  for (int g = 0; g < 4; g += 2) {
    const Reg w0 = quad_lanes(a + 4 * g), w1 = quad_lanes(a + 4 * g + 4);
    _mm256_storeu_ps(out + 4 * g, _mm256_add_ps(_mm256_permute2f128_ps(w0, w1, 0x20),
                                                _mm256_permute2f128_ps(w0, w1, 0x31)));
  }
}
#else
constexpr int kLanes = 1;
using Reg = float;
inline Reg zero() { return 0.0f; }
inline Reg load(const float* p) { return *p; }
inline Reg fma(Reg a, Reg b, Reg c) { return a * b + c; }
inline float sum(Reg a) { return a; }
inline Reg widen(const uint16_t* p) {
  uint32_t u = static_cast<uint32_t>(*p) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline Reg widen(const int8_t* p) { return static_cast<float>(*p); }
inline Reg widen(const float* p) { return *p; }
inline Reg broadcast(float v) { return v; }
inline Reg mul(Reg a, Reg b) { return a * b; }
inline void store(float* p, Reg a) { *p = a; }
inline Reg add(Reg a, Reg b) { return a + b; }
inline Reg max(Reg a, Reg b) { return a > b ? a : b; }
inline float max_lanes(Reg a) { return a; }
inline void sum4(const Reg* a, float* out) {
  for (int i = 0; i < 4; ++i) out[i] = a[i];
}
inline void sum16(const Reg* a, float* out) {
  for (int i = 0; i < 16; ++i) out[i] = a[i];
}
#endif

#if defined(__AVX2__) || defined(__AVX512F__)
// e^x in every lane, within 2 ulp of expf: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two
// for an exact n ln2), e^r by its degree-6 polynomial (Cephes' coefficients), times 2^n. Results
// below 2^-126 are flushed to 0, x above 88.37 saturates, and a NaN stays NaN (min and max
// return their second operand when either is NaN).
inline Reg exp(Reg x) {
  x = min(broadcast(88.3762626647949f), max(broadcast(-88.0f), x));
  const Reg n = floor(fma(x, broadcast(1.44269504088896341f), broadcast(0.5f)));
  Reg r = fma(n, broadcast(-0.693359375f), x);
  r = fma(n, broadcast(2.12194440e-4f), r);
  Reg p = broadcast(1.9875691500E-4f);
  p = fma(p, r, broadcast(1.3981999507E-3f));
  p = fma(p, r, broadcast(8.3334519073E-3f));
  p = fma(p, r, broadcast(4.1665795894E-2f));
  p = fma(p, r, broadcast(1.6666665459E-1f));
  p = fma(p, r, broadcast(5.0000001201E-1f));
  p = fma(p, mul(r, r), add(r, broadcast(1.0f)));
  return mul(p, pow2(n));
}
#else
inline Reg exp(Reg x) { return std::exp(x); }
#endif

}  // namespace quietstar_cpu
