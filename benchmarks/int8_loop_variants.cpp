// The int8 decode-linear inner loop (tiled weight, 1 activation row, 4 output channels per
// block, widened to fp32 and FMA'd), in variants of its software prefetch and loads, standalone
// so that the loop alone is timed (benchmarks/RESULTS.md, "Where an int8 step's layers go").
// Arguments: K, N, and how many distinct weights to cycle through (1: in cache; enough to exceed
// the L3: from DRAM). AVX2 + FMA:
//   g++ -O3 -mavx2 -mfma -fopenmp benchmarks/int8_loop_variants.cpp -o /tmp/int8_loop_variants
//   OMP_NUM_THREADS=2 /tmp/int8_loop_variants 576 960 1      # in cache
//   OMP_NUM_THREADS=2 /tmp/int8_loop_variants 576 960 200    # from DRAM
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <omp.h>
static inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
// tiled: blocks of 4 rows, K/32 chunks of 4x32
template <int V>
void kern(const int8_t* w, const float* x, float* y, int64_t N, int64_t K) {
  #pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < N / 4; ++b) {
    const int8_t* blk = w + b * 4 * K;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t c = 0; c < K / 32; ++c) {
      const int8_t* ch = blk + c * 128;
      if (V == 2) { __builtin_prefetch(ch + 8 * K, 0, 0); __builtin_prefetch(ch + 64 + 8 * K, 0, 0); }
      for (int s = 0; s < 32; s += (V == 3 || V == 4 ? 16 : 8)) {
        const __m256 x0 = _mm256_loadu_ps(x + c * 32 + s);
        if (V == 3 || V == 4) {
          const __m256 x1 = _mm256_loadu_ps(x + c * 32 + s + 8);
          for (int j = 0; j < 4; ++j) {
            const __m128i v = _mm_loadu_si128((const __m128i*)(ch + j * 32 + s));
            if (V == 3) __builtin_prefetch(ch + j * 32 + s + 8 * K, 0, 0);
            const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
            const __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v)));
            acc[j] = _mm256_fmadd_ps(x0, w0, acc[j]);
            acc[j] = _mm256_fmadd_ps(x1, w1, acc[j]);
          }
          if (V == 4 && s == 0) { __builtin_prefetch(ch + 8 * K, 0, 0); __builtin_prefetch(ch + 64 + 8 * K, 0, 0); }
        } else {
          for (int j = 0; j < 4; ++j) {
            if (V == 0) __builtin_prefetch(ch + j * 32 + s + 8 * K, 0, 0);
            acc[j] = _mm256_fmadd_ps(x0, widen8(ch + j * 32 + s), acc[j]);
          }
        }
      }
    }
    float o[8];
    for (int j = 0; j < 4; ++j) { _mm256_storeu_ps(o, acc[j]); float t = 0; for (int i = 0; i < 8; ++i) t += o[i]; y[b * 4 + j] = t; }
  }
}
int main(int argc, char** argv) {
  const int64_t K = atoi(argv[1]), N = atoi(argv[2]);
  const int copies = atoi(argv[3]);  // how many distinct weights to cycle (1: in cache)
  std::vector<int8_t> w(copies * N * K);
  for (auto& v : w) v = rand() % 255 - 127;
  std::vector<float> x(K), y(N);
  for (auto& v : x) v = rand() / (float)RAND_MAX;
  void (*fs[])(const int8_t*, const float*, float*, int64_t, int64_t) = {kern<0>, kern<1>, kern<2>, kern<3>, kern<4>};
  const char* names[] = {"cur (pf each)", "no pf", "pf per chunk", "16B loads pf", "16B loads pf/chunk"};
  for (int round = 0; round < 2; ++round)
    for (int v = 0; v < 5; ++v) {
      double best = 1e9;
      for (int r = 0; r < 30; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        for (int c = 0; c < copies; ++c) fs[v](w.data() + c * N * K, x.data(), y.data(), N, K);
        double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / copies;
        best = std::min(best, t);
      }
      printf("%-20s K=%ld N=%ld copies=%d: %7.1f us  %5.1f GB/s\n", names[v], K, N, copies, best * 1e6, N * K / best / 1e9);
    }
}
