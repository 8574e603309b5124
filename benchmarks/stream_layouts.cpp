// How fast one int8 decode-linear inner loop streams a weight from DRAM, by layout: the LM
// head's shape (49152 x 576), the kernel's loop (4 output channels at a time, 8 columns per
// step, widened to fp32 and FMA'd). Row-major without software prefetch (pf=0), with the
// kernel's (pf=1), once per cache line (pf=2) or further ahead (pf=16, 32 rows), against the
// tiled layout read front to back with a prefetch pf bytes ahead (benchmarks/RESULTS.md,
// "Tiled weights"). AVX2 + FMA:
//   g++ -O3 -mavx2 -mfma -fopenmp benchmarks/stream_layouts.cpp -o /tmp/stream_layouts
//   OMP_NUM_THREADS=1 /tmp/stream_layouts; OMP_NUM_THREADS=2 /tmp/stream_layouts
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>
const int64_t N = 49152, K = 576;
static inline __m256 widen(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
float hsum(__m256 a){ float o[8]; _mm256_storeu_ps(o,a); float s=0; for(int i=0;i<8;i++) s+=o[i]; return s; }
// row-major, 4 rows interleaved, prefetch 8 rows ahead
void rows4(const int8_t* w, const float* x, float* y, int pf) {
  #pragma omp parallel for schedule(static)
  for (int64_t n0 = 0; n0 < N; n0 += 4) {
    __m256 acc[4] = {_mm256_setzero_ps(),_mm256_setzero_ps(),_mm256_setzero_ps(),_mm256_setzero_ps()};
    for (int64_t k = 0; k < K; k += 8) {
      __m256 xv = _mm256_loadu_ps(x + k);
      for (int j = 0; j < 4; ++j) {
        const int8_t* r = w + (n0 + j) * K;
        if (pf == 1 || (pf > 1 && k % 64 == 0)) __builtin_prefetch(r + (pf > 2 ? pf : 8) * K + k, 0, 0);
        acc[j] = _mm256_fmadd_ps(xv, widen(r + k), acc[j]);
      }
    }
    for (int j = 0; j < 4; ++j) y[n0 + j] = hsum(acc[j]);
  }
}
// packed: block of 4 rows stored as [k/8][j][8]: strictly sequential
void packed4(const int8_t* w, const float* x, float* y, int pf) {
  #pragma omp parallel for schedule(static)
  for (int64_t n0 = 0; n0 < N; n0 += 4) {
    const int8_t* b = w + n0 * K;
    __m256 acc[4] = {_mm256_setzero_ps(),_mm256_setzero_ps(),_mm256_setzero_ps(),_mm256_setzero_ps()};
    for (int64_t k = 0; k < K; k += 8) {
      __m256 xv = _mm256_loadu_ps(x + k);
      const int8_t* c = b + k * 4;
      if (pf && (k % 16 == 0)) __builtin_prefetch(c + pf, 0, 0);
      for (int j = 0; j < 4; ++j) acc[j] = _mm256_fmadd_ps(xv, widen(c + 8 * j), acc[j]);
    }
    for (int j = 0; j < 4; ++j) y[n0 + j] = hsum(acc[j]);
  }
}
int main() {
  const int copies = 3;
  std::vector<int8_t*> ws;
  for (int c = 0; c < copies; ++c) { int8_t* w = (int8_t*)aligned_alloc(64, N*K); for (int64_t i=0;i<N*K;i++) w[i]=(int8_t)(rand()%255-127); ws.push_back(w);}  
  std::vector<float> x(K, 0.5f), y(N);
  auto run = [&](const char* name, auto f, int pf) {
    double best = 1e9;
    for (int r = 0; r < 5; ++r) for (auto w : ws) {
      auto t = std::chrono::steady_clock::now(); f(w, x.data(), y.data(), pf);
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
      if (s < best) best = s;
    }
    printf("%-22s pf=%5d %.2f ms %.1f GB/s\n", name, pf, best*1e3, N*K/best/1e9);
  };
  for (int rep = 0; rep < 2; ++rep) {
    run("rows4", rows4, 0); run("rows4", rows4, 1); run("rows4 once/line", rows4, 2); run("rows4 once/line 16", rows4, 16); run("rows4 once/line 32", rows4, 32);
    run("packed4", packed4, 4096); run("packed4", packed4, 8192); run("packed4", packed4, 16384); run("packed4", packed4, 32768);
  }
}
