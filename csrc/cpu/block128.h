// 128 float columns of a running sum held in eight AVX-512 registers: the sparse reductions (decode, weight
// gradients) add value * row for many gathered rows into one sum, and a sum kept in memory costs a load and a
// store per multiply-add. Each lane does the same FMA in the same order as the plain loop it replaces (which the
// compiler contracts to FMAs too), so results are the same bits.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

namespace mx {
namespace cpu {

struct Block128 {
  static constexpr int64_t kCols = 128;
  __m512 r[8];

  void load(const float* p) {
    for (int i = 0; i < 8; ++i) r[i] = _mm512_loadu_ps(p + 16 * i);
  }
  void zero() {
    for (int i = 0; i < 8; ++i) r[i] = _mm512_setzero_ps();
  }
  void fma(float a, const float* s) {
    const __m512 av = _mm512_set1_ps(a);
    for (int i = 0; i < 8; ++i) r[i] = _mm512_fmadd_ps(av, _mm512_loadu_ps(s + 16 * i), r[i]);
  }
  void store(float* p) const {
    for (int i = 0; i < 8; ++i) _mm512_storeu_ps(p + 16 * i, r[i]);
  }
};

}  // namespace cpu
}  // namespace mx
#endif
