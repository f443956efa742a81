#pragma once
// Launch helpers shared by the CUDA ops.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstring>
#include <vector>

namespace sigma_fast {

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// A small host table (image pointers, sizes, offsets) on `device`, copied asynchronously from
// pinned memory on the current stream.
inline at::Tensor table_on(const std::vector<int64_t>& table, const at::Device& device) {
  at::Tensor host = at::empty({static_cast<int64_t>(table.size())},
                              at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::memcpy(host.data_ptr<int64_t>(), table.data(), table.size() * sizeof(int64_t));
  return host.to(device, /*non_blocking=*/true);
}

}  // namespace sigma_fast
