// Order-preserving integer keys for relu(v): 0 for v <= 0, the IEEE bits for v > 0, all-ones for NaN (NaN ranks
// highest, as torch.sort does). Half types are widened to float first, which keeps their order exactly.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace mx {

template <typename T>
using key_type_t = std::conditional_t<std::is_same_v<T, double>, uint64_t, uint32_t>;

template <typename T>
inline key_type_t<T> relu_key(T v) {
  using K = key_type_t<T>;
  using F = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const F f = static_cast<F>(v);
  if (std::isnan(f)) return ~K(0);
  if (!(f > 0)) return K(0);
  K bits;
  std::memcpy(&bits, &f, sizeof(K));
  return bits;
}

}  // namespace mx
