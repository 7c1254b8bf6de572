// Output buffers reused across calls on CPU. A fresh tensor above glibc's mmap threshold (32 MiB at most) comes
// from mmap and costs a page fault per 4 KiB on first touch: S [m, N, d] is 42 MB at N=4096, d=640, m=4, and
// nested_mse_backward_dot took 16.9 ms with a fresh one vs 10.1 ms with a reused one; the [F, d] weight
// gradients cross the threshold from F=16384 at d=640. A buffer is handed out again only when nothing else holds
// its storage any more (the last step's gradient was freed or consumed), so no caller sees its data change.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace mx {
namespace cpu {

// A tensor of `sizes` and `options` over one of `pool`'s buffers: the smallest free one of that dtype that is
// large enough, else a new buffer added to the pool (at most `slots` buffers, the oldest dropped first; above
// kMaxBytes never pooled). Buffers are flat; the returned tensor is a contiguous view of a buffer's front with
// its own TensorImpl, so autograd can adopt it as a .grad without a copy.
inline at::Tensor reusable_empty(std::vector<at::Tensor>& pool, at::IntArrayRef sizes, const at::TensorOptions& opt,
                                 size_t slots = 4) {
  constexpr int64_t kMaxBytes = int64_t(1) << 30;
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  if (numel * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(opt.dtype()))) > kMaxBytes)
    return at::empty(sizes, opt);
  const at::Tensor* best = nullptr;
  for (const at::Tensor& buf : pool)
    if (buf.storage().use_count() == 1 && buf.dtype() == opt.dtype() && buf.numel() >= numel &&
        (!best || buf.numel() < best->numel()))
      best = &buf;
  if (!best) {
    if (pool.size() >= slots) pool.erase(pool.begin());  // freed now unless a holder keeps it alive
    pool.push_back(at::empty({numel}, opt));
    best = &pool.back();
  }
  return best->narrow(0, 0, numel).view(sizes);
}

}  // namespace cpu
}  // namespace mx
