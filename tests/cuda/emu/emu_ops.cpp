// Test-only: the shared argument checks from csrc/ops.cpp (registrations disabled), plus stubs for the CPU
// selection that ops.cpp's encode references (never called here).
#include "emu_guard.h"

#include "ops.cpp"

namespace mx {
namespace cpu {
Csr topk_select(const Tensor&, int64_t) { TORCH_CHECK(false, "not in the emulator"); }
Csr batch_topk_select(const Tensor&, int64_t) { TORCH_CHECK(false, "not in the emulator"); }
}  // namespace cpu
}  // namespace mx
