// CUDA vae_roundtrip_composite: one thread per pixel, the whole batch in one launch (blockIdx.y =
// image): VAE decoder output -> uint8 as an editor saves it, edited pixels pasted under the mask.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "check.h"
#include "cuda/launch.h"
#include "ops.h"
#include "resample.h"

namespace sigma_fast {
namespace {

constexpr int kThreads = 256;

// mask == nullptr: no compositing.
template <typename vae_t, typename mask_t>
__global__ void __launch_bounds__(kThreads)
    composite_kernel(const vae_t* __restrict__ vae, const uint8_t* __restrict__ edit, const mask_t* __restrict__ mask,
                     int64_t plane, uint8_t* __restrict__ out) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (p >= plane) return;
  const int64_t b = blockIdx.y, i = b * plane + p;
  if (mask != nullptr && mask_selects(mask[i])) {
#pragma unroll
    for (int c = 0; c < 3; ++c) out[3 * i + c] = edit[3 * i + c];
    return;
  }
#pragma unroll
  for (int c = 0; c < 3; ++c) out[3 * i + c] = vae_to_uint8(static_cast<float>(vae[(b * 3 + c) * plane + p]));
}

}  // namespace

void composite_cuda(const at::Tensor& x_vae, const at::Tensor& x_edit, const at::Tensor& edit_mask,
                    at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(x_vae.device());
  const int64_t batch = x_vae.size(0), plane = x_vae.size(2) * x_vae.size(3);
  SF_CHECK_VALUE(batch <= 65535, "vae_roundtrip_composite: at most 65535 images per call on CUDA, got ", batch);
  const dim3 grid(ceil_div(plane, kThreads), batch);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_vae.scalar_type(), "composite_cuda", [&] {
    using vae_t = scalar_t;
    const vae_t* vae = x_vae.data_ptr<vae_t>();
    if (!edit_mask.defined()) {
      composite_kernel<vae_t, bool><<<grid, kThreads, 0, stream>>>(vae, nullptr, nullptr, plane,
                                                                   out.data_ptr<uint8_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, edit_mask.scalar_type(), "composite_cuda_mask", [&] {
      composite_kernel<vae_t, scalar_t><<<grid, kThreads, 0, stream>>>(
          vae, x_edit.data_ptr<uint8_t>(), edit_mask.data_ptr<scalar_t>(), plane, out.data_ptr<uint8_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace sigma_fast
