// fp32 vector registers for quietstar's CPU kernels: one register of fp32 lanes on the
// instruction set a file is built for (AVX-512, AVX2 + FMA, or one float elsewhere) and the loads
// that widen stored values (fp32, bf16 bits, int8) into it.
#pragma once

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

namespace quietstar_cpu {

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
#endif

}  // namespace quietstar_cpu
