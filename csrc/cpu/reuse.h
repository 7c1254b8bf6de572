// Output buffers reused across calls on CPU. A fresh large tensor comes from mmap and costs a page fault per
// 4 KiB on first touch: for the training step's gradient-sized outputs (S [m, N, d], the [F, d] weight gradients)
// that was 5-15% of a step. A buffer is handed out again only when nothing else holds its storage any more
// (the last step's gradient was freed or consumed), so no caller ever sees its data change under it.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace mx {
namespace cpu {

// A tensor of `sizes` and `options` whose storage is one of `pool`'s buffers when a free one of that shape and
// dtype exists, else a new buffer added to the pool (at most kSlots buffers; above kMaxBytes never pooled).
// The returned tensor is its own TensorImpl over the buffer, so autograd can adopt it as a .grad without a copy.
inline at::Tensor reusable_empty(std::vector<at::Tensor>& pool, at::IntArrayRef sizes, const at::TensorOptions& opt) {
  constexpr size_t kSlots = 4;
  constexpr int64_t kMaxBytes = int64_t(1) << 30;
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  if (numel * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(opt.dtype()))) > kMaxBytes)
    return at::empty(sizes, opt);
  for (const at::Tensor& buf : pool)
    if (buf.storage().use_count() == 1 && buf.sizes() == sizes && buf.dtype() == opt.dtype()) return buf.alias();
  if (pool.size() >= kSlots) pool.erase(pool.begin());  // the oldest: its holders keep it alive if still in use
  pool.push_back(at::empty(sizes, opt));
  return pool.back().alias();
}

}  // namespace cpu
}  // namespace mx
