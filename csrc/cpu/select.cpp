// CPU selection kernels: per-row TopK (bounded heap, one pass) and exact BatchTopK (a sampled lower bound and one
// candidate pass; radix select on order-preserving keys, then CSR compaction, when the sample cannot be trusted).
// Both keep ties for the lower (flat) index.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common.h"
#include "cpu/select_keys.h"

namespace mx {
namespace cpu {
namespace {

template <typename T>
inline T relu_value(T v) {
  const auto f = static_cast<at::opmath_type<T>>(v);
  return (f > 0 || std::isnan(f)) ? v : T(0);
}

// The k-th largest of keys[0..f) (0 < k <= f), bit by bit from the top: the largest t with at least k keys >= t is
// that key. Each step is one branch-free counting pass that vectorises (f of a few hundred: a few hundred cycles
// per step), where nth_element's data-dependent branches mispredict on every other element.
template <typename K>
int64_t count_at_least(const K* keys, int64_t f, K c) {
  int64_t count = 0, j = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<K, uint32_t>) {
    const __m512i cv = _mm512_set1_epi32(static_cast<int>(c));
    for (; j + 16 <= f; j += 16)
      count += __builtin_popcount(_mm512_cmp_epu32_mask(_mm512_loadu_si512(keys + j), cv, _MM_CMPINT_NLT));
  }
#endif
  for (; j < f; ++j) count += keys[j] >= c;
  return count;
}

template <typename K>
K kth_largest_key(const K* keys, int64_t f, int64_t k) {
  K t = 0;
  for (int bit = static_cast<int>(sizeof(K) * 8) - 1; bit >= 0; --bit) {
    const K c = t | (K(1) << bit);
    if (count_at_least(keys, f, c) >= k) t = c;
  }
  return t;
}

// Column maps of the row selections: every column (plain TopK) or a column list (AuxK's dead latents).
struct AllCols {
  int64_t operator()(int64_t j) const { return j; }
};
struct ColList {
  const int64_t* c;
  int64_t operator()(int64_t j) const { return c[j]; }
};

// keys[j] = relu_key(row[col(j)]) for j < f.
template <typename T, typename Col, typename K>
inline void fill_keys(const T* row, int64_t f, Col col, K* keys) {
  int64_t j = 0;
#if defined(__AVX512F__) && defined(__AVX512VL__)
  if constexpr (std::is_same_v<T, float> && std::is_same_v<Col, ColList>) {
    // AuxK's strided columns: 8 per vector gather, the key (0 at or below zero, the bits above, all ones for
    // NaN) by two mask compares instead of a branchy scalar conversion per element
    const __m256 zero = _mm256_setzero_ps();
    for (; j + 8 <= f; j += 8) {
      const __m256 v = _mm512_i64gather_ps(_mm512_loadu_si512(col.c + j), row, 4);
      const __mmask8 positive = _mm256_cmp_ps_mask(v, zero, _CMP_GT_OQ);
      const __mmask8 nan = _mm256_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      __m256i key = _mm256_maskz_mov_epi32(positive, _mm256_castps_si256(v));
      key = _mm256_mask_mov_epi32(key, nan, _mm256_set1_epi32(-1));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(keys + j), key);
    }
  }
#endif
  for (; j < f; ++j) keys[j] = relu_key(row[col(j)]);
}

// Per row of pre [n, ld], the top k over the columns col(0..f-1) (ascending), reported by column id: the plain
// TopK with col(j) = j, or AuxK's selection over the dead columns only (col = a column list), which reads those
// columns of the encoder's pre-activations in place instead of gathering them into a copy.
// The same selection by threshold, for large k/f (AuxK: aux_k ~ d/2 of a few hundred dead columns), where the
// heap would take most entries through O(log k) updates: per row, the k-th largest key by a bitwise search over
// the row's keys, then one ascending scan keeps the keys above it and the first ties at it. Rows r0..r1.
template <typename T, typename Col>
void threshold_rows(const T* pre, int64_t r0, int64_t r1, int64_t ld, int64_t f, int64_t k, Col col, T* values,
                    int64_t* indices) {
  using K = key_type_t<T>;
  std::vector<K> keys(f);
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = pre + r * ld;
    fill_keys(row, f, col, keys.data());
    const K t = kth_largest_key(keys.data(), f, k);
    // entries equal to t to keep, lowest index first (t < all-ones: NaN's key, the largest, is taken whole)
    int64_t ties = k - (t == ~K(0) ? 0 : count_at_least(keys.data(), f, K(t + 1)));
    int64_t* out_i = indices + r * k;
    T* out_v = values + r * k;
    int64_t o = 0;
    for (int64_t j = 0; j < f && o < k; ++j) {
      const K key = keys[j];
      if (key > t || (key == t && ties > 0)) {
        if (key == t) --ties;
        const int64_t c = col(j);
        out_i[o] = c;
        out_v[o] = relu_value(row[c]);
        ++o;
      }
    }
  }
}

// The heap pays O(log k) per entry that beats the current k-th best; past this share of k in f, the threshold
// path (vector passes over the row's keys) is faster.
constexpr int64_t kThresholdRatio = 16;

template <typename T, typename Col>
void heap_rows(const T* pre, int64_t r0, int64_t r1, int64_t ld, int64_t f, int64_t k, Col col, T* values,
               int64_t* indices) {
  using K = key_type_t<T>;
  struct Item {
    K key;
    int64_t idx;
  };
  // Heap top = the worst kept item: smallest key, and among equal keys the largest index.
  auto better = [](const Item& a, const Item& b) { return a.key > b.key || (a.key == b.key && a.idx < b.idx); };
  std::vector<Item> heap;
  heap.reserve(k);
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = pre + r * ld;
    heap.clear();
    for (int64_t j = 0; j < k; ++j) heap.push_back({relu_key(row[col(j)]), j});
    std::make_heap(heap.begin(), heap.end(), better);
    // Most entries lose against the current k-th best: test blocks of 16 with a branch-free float compare
    // (!(v <= t) also lets NaN through) and take the exact key path only for blocks with a candidate.
    using acc_t = at::opmath_type<T>;
    constexpr int64_t kBlock = 16;
    for (int64_t j0 = k; j0 < f; j0 += kBlock) {
      const int64_t j1 = std::min(f, j0 + kBlock);
      const K worst = heap.front().key;
      acc_t t;
      if constexpr (std::is_same_v<K, uint64_t>) {
        double tv;
        std::memcpy(&tv, &worst, sizeof(tv));
        t = worst == K(0) ? acc_t(0) : static_cast<acc_t>(tv);
      } else {
        float tv;
        std::memcpy(&tv, &worst, sizeof(tv));
        t = worst == K(0) ? acc_t(0) : static_cast<acc_t>(tv);
      }
      bool any = false;
      for (int64_t j = j0; j < j1; ++j) any |= !(static_cast<acc_t>(row[col(j)]) <= t);
      if (!any) continue;
      for (int64_t j = j0; j < j1; ++j) {
        const K key = relu_key(row[col(j)]);
        // A later index with an equal key never displaces: ties keep the lower index.
        if (key > heap.front().key) {
          std::pop_heap(heap.begin(), heap.end(), better);
          heap.back() = {key, j};
          std::push_heap(heap.begin(), heap.end(), better);
        }
      }
    }
    std::sort(heap.begin(), heap.end(), [](const Item& a, const Item& b) { return a.idx < b.idx; });
    for (int64_t j = 0; j < k; ++j) {
      const int64_t c = col(heap[j].idx);
      indices[r * k + j] = c;
      values[r * k + j] = relu_value(row[c]);
    }
  }
}

// Per-row top k of rows r0..r1 (k entries each at values/indices + r * k), by heap or by threshold.
template <typename T, typename Col>
void topk_row_range(const T* pre, int64_t r0, int64_t r1, int64_t ld, int64_t f, int64_t k, Col col, T* values,
                    int64_t* indices) {
  if (k * kThresholdRatio >= f) return threshold_rows(pre, r0, r1, ld, f, k, col, values, indices);
  heap_rows(pre, r0, r1, ld, f, k, col, values, indices);
}

template <typename T, typename Col>
void topk_rows(const T* pre, int64_t n, int64_t ld, int64_t f, int64_t k, Col col, T* values, int64_t* indices) {
  at::parallel_for(0, n, k * kThresholdRatio >= f ? 16 : 1, [&](int64_t r0, int64_t r1) {
    topk_row_range(pre, r0, r1, ld, f, k, col, values, indices);
  });
}

// Finds the K-th largest key over all n*f entries by 16-bit radix digits, most significant first.
// Returns the threshold key and how many entries equal to it must be kept (the rest are strictly above).
template <typename T>
std::pair<key_type_t<T>, int64_t> radix_threshold(const T* pre, int64_t total, int64_t K) {
  using Key = key_type_t<T>;
  constexpr int kBits = sizeof(Key) * 8;
  constexpr int kDigit = 16;
  constexpr int64_t kBins = int64_t(1) << kDigit;
  Key prefix = 0;
  int64_t remaining = K;
  const int num_threads = at::get_num_threads();
  std::vector<int64_t> hists(static_cast<size_t>(num_threads) * kBins);
  for (int shift = kBits - kDigit; shift >= 0; shift -= kDigit) {
    std::fill(hists.begin(), hists.end(), 0);
    const int high = shift + kDigit;
    at::parallel_for(0, total, 1 << 16, [&](int64_t b, int64_t e) {
      int64_t* h = hists.data() + static_cast<size_t>(at::get_thread_num()) * kBins;
      for (int64_t i = b; i < e; ++i) {
        const Key key = relu_key(pre[i]);
        if (high >= kBits || (key >> high) == prefix) ++h[(key >> shift) & (kBins - 1)];
      }
    });
    int64_t above = 0;
    int64_t digit = kBins - 1;
    for (; digit >= 0; --digit) {
      int64_t c = 0;
      for (int t = 0; t < num_threads; ++t) c += hists[static_cast<size_t>(t) * kBins + digit];
      if (above + c >= remaining) break;
      above += c;
    }
    remaining -= above;
    prefix = static_cast<Key>((prefix << kDigit) | static_cast<Key>(digit));
  }
  return {prefix, remaining};
}

// Bit j set where !(p[j] < t), j < len <= kBlock (NaN sets its bit: it outranks every threshold).
constexpr int64_t kBlock = 32;
template <typename T, typename acc_t>
inline uint32_t candidate_bits(const T* p, int64_t len, acc_t t) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (len == kBlock) {
      const __m512 tv = _mm512_set1_ps(t);
      const uint32_t lo = _mm512_cmp_ps_mask(_mm512_loadu_ps(p), tv, _CMP_NLT_UQ);
      const uint32_t hi = _mm512_cmp_ps_mask(_mm512_loadu_ps(p + 16), tv, _CMP_NLT_UQ);
      return lo | (hi << 16);
    }
  }
#endif
  uint32_t bits = 0;
  for (int64_t j = 0; j < len; ++j) bits |= static_cast<uint32_t>(!(static_cast<acc_t>(p[j]) < t)) << j;
  return bits;
}

// Fast path of BatchTopK: one pass over the data instead of four.
// 1. Estimate a lower bound t_lo of the K-th largest key from a deterministic sample (a pseudo-random position
//    in each stride window, so column structure cannot bias it), a few standard deviations on the safe side.
// 2. One pass collects every entry with key >= t_lo as (flat index, key), chunk by chunk, so the candidates come
//    out in flat order.
// 3. The exact K-th key among the candidates (nth_element) is the exact threshold over all entries, because
//    every entry above t_lo is a candidate; ties at it are granted in flat order, as in the radix path.
// Returns false (nothing written) when the estimate cannot be trusted: a zero threshold (fewer positives than
// K: ties at 0 everywhere), fewer than K candidates, or a candidate flood (mass ties at t_lo); the caller then
// uses the radix path.
// Rows the candidate pass has just read, handed to a second selection that reads the same rows (AuxK's) while
// they are in cache; NoRows for plain BatchTopK.
struct NoRows {
  void operator()(int64_t, int64_t) const {}
};

template <typename T, typename RowHook = NoRows>
bool batch_topk_sampled(const T* p, int64_t n, int64_t f, int64_t k, Csr& out_csr, const at::TensorOptions& opt,
                        RowHook on_rows = {}) {
  using Key = key_type_t<T>;
  using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const int64_t total = n * f, K = n * k;
  const int64_t m = std::min<int64_t>(total, std::max<int64_t>(int64_t(1) << 16, 512 * (total / K + 1)));
  const int64_t stride = total / m;  // >= 1
  std::vector<Key> sample(static_cast<size_t>(m));
  // one cache miss per sample (hundreds of thousands at F=32768): spread over the threads
  at::parallel_for(0, m, 1 << 14, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const uint64_t h = static_cast<uint64_t>(s) * 0x9E3779B97F4A7C15ull;
      const int64_t i = s * stride + static_cast<int64_t>((h >> 33) % static_cast<uint64_t>(stride));
      sample[s] = relu_key(p[i]);
    }
  });
  // Rank of the K-th largest in the sample, plus a 5-sigma (binomial) margin: t_lo undershoots the true
  // threshold except with negligible probability, costing ~5/sqrt(r) extra candidates.
  const double expect = static_cast<double>(K) * static_cast<double>(m) / static_cast<double>(total);
  const int64_t r = std::min<int64_t>(m, static_cast<int64_t>(expect + 5.0 * std::sqrt(expect) + 16.0));
  if (r >= m && m < total) return false;
  std::nth_element(sample.begin(), sample.begin() + (r - 1), sample.end(), std::greater<Key>());
  const Key t_lo = sample[r - 1];
  if (t_lo == Key(0)) return false;
  acc_t t_val;
  std::memcpy(&t_val, &t_lo, sizeof(t_val));  // t_lo > 0 is a positive float's (or double's) bits, or NaN's

  // 2. candidates per chunk; a chunk gives up (flood) beyond a generous multiple of its expected share
  // chunks of whole rows (about total / 256 entries, at least 32 Ki): the row hook sees each row once
  const int64_t target = std::max<int64_t>(int64_t(1) << 15, total / 256 + 1);
  const int64_t rows_per_chunk = std::max<int64_t>(1, target / f);
  const int64_t num_chunks = (n + rows_per_chunk - 1) / rows_per_chunk;
  const int64_t chunk = rows_per_chunk * f;
  const int64_t cap = 4 * (chunk * r / m) + 4096;
  std::vector<std::vector<std::pair<int64_t, Key>>> cand(static_cast<size_t>(num_chunks));
  std::atomic<bool> flood{false};
  at::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1 && !flood.load(std::memory_order_relaxed); ++c) {
      auto& out = cand[static_cast<size_t>(c)];
      const int64_t b = c * chunk, e = std::min(total, b + chunk);
      out.reserve(static_cast<size_t>(cap) + kBlock);
      for (int64_t i0 = b; i0 < e; i0 += kBlock) {
        const int64_t i1 = std::min(e, i0 + kBlock);
        // one bit per entry that is not below t (!(v < t) also lets NaN through), then the exact key test for
        // those bits only: about 1 entry in 200 passes, so the scan runs at memory speed
        uint32_t bits = candidate_bits(p + i0, i1 - i0, t_val);
        while (bits) {
          const int64_t i = i0 + __builtin_ctz(bits);
          bits &= bits - 1;
          const Key key = relu_key(p[i]);
          if (key >= t_lo) out.emplace_back(i, key);
        }
        if (static_cast<int64_t>(out.size()) > cap) {
          flood.store(true, std::memory_order_relaxed);
          return;
        }
      }
      on_rows(c * rows_per_chunk, std::min(n, (c + 1) * rows_per_chunk));
    }
  });
  if (flood.load()) return false;
  int64_t count = 0;
  for (const auto& c : cand) count += static_cast<int64_t>(c.size());
  if (count < K) return false;  // the sample overshot: not every entry of the top K is a candidate

  // 3. exact threshold among the candidates and the number of ties at it to keep
  std::vector<Key> keys;
  keys.reserve(static_cast<size_t>(count));
  for (const auto& c : cand)
    for (const auto& [i, key] : c) keys.push_back(key);
  const Key thresh = kth_largest_key(keys.data(), count, K);
  int64_t ties = K - (thresh == ~Key(0) ? 0 : count_at_least(keys.data(), count, Key(thresh + 1)));

  auto row_offsets = at::zeros({n + 1}, opt.dtype(at::kLong));
  auto values = at::empty({K}, opt);
  auto indices = at::empty({K}, opt.dtype(at::kLong));
  int64_t* ro = row_offsets.data_ptr<int64_t>();
  T* v = values.data_ptr<T>();
  int64_t* ix = indices.data_ptr<int64_t>();
  int64_t o = 0;
  for (const auto& c : cand) {  // flat order: rows ascending, indices ascending within a row
    for (const auto& [i, key] : c) {
      if (key > thresh || (key == thresh && ties-- > 0)) {
        const int64_t row = i / f;
        ++ro[row + 1];
        ix[o] = i - row * f;
        v[o++] = relu_value(p[i]);
      }
    }
  }
  for (int64_t row = 0; row < n; ++row) ro[row + 1] += ro[row];
  TORCH_CHECK(o == K && ro[n] == K, "batch_topk: internal error, selected ", o, " of ", K);
  out_csr = {values, indices, row_offsets};
  return true;
}

// hooked: set when the sampled path ran and so handed every row to on_rows (the radix path does not).
template <typename T, typename RowHook = NoRows>
Csr batch_topk_impl(const Tensor& pre, int64_t k, RowHook on_rows = {}, bool* hooked = nullptr) {
  using Key = key_type_t<T>;
  const int64_t n = pre.size(0), f = pre.size(1), K = n * k;
  const T* p = pre.data_ptr<T>();
  if (hooked) *hooked = false;
  if (Csr fast; batch_topk_sampled<T>(p, n, f, k, fast, pre.options(), on_rows)) {
    if (hooked) *hooked = true;
    return fast;
  }
  const auto [thresh, ties] = radix_threshold<T>(p, n * f, K);
  // Per row: entries strictly above the threshold, and entries equal to it.
  std::vector<int64_t> gt(n), eq(n);
  at::parallel_for(0, n, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t a = 0, b = 0;
      for (int64_t j = 0; j < f; ++j) {
        const Key key = relu_key(p[r * f + j]);
        a += key > thresh;
        b += key == thresh;
      }
      gt[r] = a;
      eq[r] = b;
    }
  });
  // Ties are granted in flat order: earlier rows first, then lower indices within a row.
  auto row_offsets = at::empty({n + 1}, pre.options().dtype(at::kLong));
  int64_t* ro = row_offsets.data_ptr<int64_t>();
  int64_t left = ties;
  ro[0] = 0;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t take = std::min(eq[r], left);
    left -= take;
    eq[r] = take;
    ro[r + 1] = ro[r] + gt[r] + take;
  }
  TORCH_CHECK(ro[n] == K, "batch_topk: internal error, selected ", ro[n], " of ", K);
  auto values = at::empty({K}, pre.options());
  auto indices = at::empty({K}, pre.options().dtype(at::kLong));
  T* v = values.data_ptr<T>();
  int64_t* ix = indices.data_ptr<int64_t>();
  at::parallel_for(0, n, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t out = ro[r], tie_left = eq[r];
      for (int64_t j = 0; j < f; ++j) {
        const T x = p[r * f + j];
        const Key key = relu_key(x);
        if (key > thresh || (key == thresh && tie_left-- > 0)) {
          ix[out] = j;
          v[out++] = relu_value(x);
        }
      }
    }
  });
  return {values, indices, row_offsets};
}

// The CSR of a per-row selection of k entries in each of pre's rows: values and indices to fill, row offsets
// 0, k, 2k, ...
Csr fixed_k_csr(const Tensor& pre, int64_t k) {
  const int64_t n = pre.size(0);
  return {at::empty({n * k}, pre.options()), at::empty({n * k}, pre.options().dtype(at::kLong)),
          at::arange(0, n * k + 1, k, pre.options().dtype(at::kLong))};
}

}  // namespace

Csr topk_select(const Tensor& pre_in, int64_t k) {
  const auto [n, f] = check_select(pre_in, k);
  const Tensor pre = pre_in.contiguous();
  Csr out = fixed_k_csr(pre, k);
  auto& [values, indices, row_offsets] = out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "topk_select", [&] {
    topk_rows<scalar_t>(pre.data_ptr<scalar_t>(), n, f, f, k, AllCols{}, values.data_ptr<scalar_t>(),
                        indices.data_ptr<int64_t>());
  });
  return out;
}

Csr topk_select_cols(const Tensor& pre_in, const Tensor& cols_in, int64_t k) {
  const int64_t n = pre_in.size(0), f = pre_in.size(1), fc = cols_in.numel();
  const Tensor pre = pre_in.contiguous();
  const Tensor cols = cols_in.contiguous();
  Csr out = fixed_k_csr(pre, k);
  auto& [values, indices, row_offsets] = out;
  const int64_t* c = cols.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "topk_select_cols", [&] {
    topk_rows<scalar_t>(pre.data_ptr<scalar_t>(), n, f, fc, k, ColList{c}, values.data_ptr<scalar_t>(),
                        indices.data_ptr<int64_t>());
  });
  return out;
}

Csr batch_topk_select(const Tensor& pre_in, int64_t k) {
  check_select(pre_in, k);
  const Tensor pre = pre_in.contiguous();
  Csr out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "batch_topk_select",
                                  [&] { out = batch_topk_impl<scalar_t>(pre, k); });
  return out;
}

Csr batch_topk_select_aux(const Tensor& pre_in, int64_t k, const Tensor& cols_in, int64_t aux_k, Csr& aux) {
  check_select(pre_in, k);
  const Tensor pre = pre_in.contiguous();
  const Tensor cols = cols_in.contiguous();
  const int64_t n = pre.size(0), f = pre.size(1), fc = cols.numel();
  aux = fixed_k_csr(pre, aux_k);
  const int64_t* c = cols.data_ptr<int64_t>();
  Csr out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "batch_topk_select_aux", [&] {
    const scalar_t* p = pre.data_ptr<scalar_t>();
    scalar_t* v = std::get<0>(aux).data_ptr<scalar_t>();
    int64_t* ix = std::get<1>(aux).data_ptr<int64_t>();
    bool hooked = false;
    out = batch_topk_impl<scalar_t>(
        pre, k, [&](int64_t r0, int64_t r1) { topk_row_range(p, r0, r1, f, fc, aux_k, ColList{c}, v, ix); },
        &hooked);
    if (!hooked) topk_rows(p, n, f, fc, aux_k, ColList{c}, v, ix);  // the radix path: AuxK's own pass
  });
  return out;
}

}  // namespace cpu
}  // namespace mx

TORCH_LIBRARY_IMPL(matryoshka_ext, CPU, m) {
  m.impl("topk_select", &mx::cpu::topk_select);
  m.impl("batch_topk_select", &mx::cpu::batch_topk_select);
}
