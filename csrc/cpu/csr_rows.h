// CPU-side helpers over CSR activations: content validation and the group of a latent.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "common.h"

namespace mx {
namespace cpu {

// Structure checks that need the data (cheap on CPU): row_offsets start at 0, never decrease, end at nnz; every
// index lies in [0, F). Raises ValueError naming the argument instead of reading out of bounds.
inline void check_csr_content(const Tensor& indices, const Tensor& row_offsets, int64_t num_latents) {
  const int64_t n = row_offsets.numel() - 1, nnz = indices.numel();
  const int64_t* ro = row_offsets.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(ro[0] == 0 && ro[n] == nnz, "row_offsets must start at 0 and end at nnz = ", nnz, ", got ",
                    ro[0], " and ", ro[n]);
  for (int64_t r = 0; r < n; ++r)
    TORCH_CHECK_VALUE(ro[r + 1] >= ro[r], "row_offsets must be non-decreasing (row ", r, ")");
  const int64_t* ix = indices.data_ptr<int64_t>();
  for (int64_t e = 0; e < nnz; ++e)
    TORCH_CHECK_VALUE(ix[e] >= 0 && ix[e] < num_latents, "indices must lie in [0, ", num_latents, "), entry ", e,
                      " is ", ix[e]);
}

// Group of latent f: the first i with f < group_ends[i].
inline int64_t group_of(int64_t f, const std::vector<int64_t>& ends) {
  return std::upper_bound(ends.begin(), ends.end(), f) - ends.begin();
}

}  // namespace cpu
}  // namespace mx
