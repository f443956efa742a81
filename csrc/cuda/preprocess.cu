// CUDA preprocess_pairs: all images of the batch (originals and edited, any sizes) in one launch.
// Each block resizes a kTileY x kTileX tile of one image's output with antialiased bilinear weights
// (shared with the CPU twin through resample.h), normalises it and writes NCHW.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "cuda/launch.h"
#include "ops.h"
#include "resample.h"

namespace sigma_fast {
namespace {

constexpr int kTileX = 32;
constexpr int kTileY = 8;

// images: per image (data pointer, height, width); blockIdx.z = image. The weights of the tile's
// columns (computed by its first row of threads) and rows (by its first column) sit in shared memory.
template <typename out_t>
__global__ void __launch_bounds__(kTileX * kTileY)
    preprocess_kernel(const int64_t* __restrict__ images, int64_t size, int64_t max_taps_x, int64_t max_taps_y,
                      out_t* __restrict__ out) {
  extern __shared__ float weights[];
  const int64_t n = blockIdx.z;
  const uint8_t* src = reinterpret_cast<const uint8_t*>(images[3 * n]);
  const int64_t height = images[3 * n + 1], width = images[3 * n + 2];
  const AntialiasAxis axis_x = antialias_axis(width, size), axis_y = antialias_axis(height, size);
  const int64_t ox = blockIdx.x * kTileX + threadIdx.x, oy = blockIdx.y * kTileY + threadIdx.y;
  float* wx = weights + threadIdx.x * max_taps_x;
  float* wy = weights + kTileX * max_taps_x + threadIdx.y * max_taps_y;
  int64_t x0 = 0, y0 = 0;
  int taps_x = 0, taps_y = 0;
  if (ox < size) {
    taps_x = static_cast<int>(threadIdx.y == 0 ? antialias_weights(axis_x, ox, x0, wx) : antialias_span(axis_x, ox, x0));
  }
  if (oy < size) {
    taps_y = static_cast<int>(threadIdx.x == 0 ? antialias_weights(axis_y, oy, y0, wy) : antialias_span(axis_y, oy, y0));
  }
  __syncthreads();
  if (ox >= size || oy >= size) return;

  float sum[3] = {0.0f, 0.0f, 0.0f};
  for (int j = 0; j < taps_y; ++j) {
    const uint8_t* pixel = src + ((y0 + j) * width + x0) * 3;
    float row[3] = {0.0f, 0.0f, 0.0f};
    for (int i = 0; i < taps_x; ++i, pixel += 3) {
#pragma unroll
      for (int c = 0; c < 3; ++c) row[c] += wx[i] * static_cast<float>(pixel[c]);
    }
#pragma unroll
    for (int c = 0; c < 3; ++c) sum[c] += wy[j] * row[c];
  }
  const int64_t plane = size * size;
  out_t* dst = out + n * 3 * plane + oy * size + ox;
#pragma unroll
  for (int c = 0; c < 3; ++c) dst[c * plane] = static_cast<out_t>(imagenet_normalize(sum[c], c));
}

// Dynamic shared memory above the default 48 KB needs an opt-in per kernel.
template <typename Kernel>
void reserve_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return;
  int device = 0, limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK_VALUE(bytes <= static_cast<size_t>(limit), "preprocess_pairs: an image is too large to resize to ",
                    "this size in one pass (its filter weights need ", bytes, " bytes of shared memory, the ",
                    "device has ", limit, ")");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

}  // namespace

void preprocess_cuda(const std::vector<at::Tensor>& images, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t size = out.size(-1), count = static_cast<int64_t>(images.size());
  TORCH_CHECK_VALUE(count <= 65535, "preprocess_pairs: at most 32767 pairs per call on CUDA, got ", count / 2);
  std::vector<int64_t> table;
  int64_t max_taps_x = 1, max_taps_y = 1;
  for (const at::Tensor& image : images) {
    table.insert(table.end(), {reinterpret_cast<int64_t>(image.data_ptr<uint8_t>()), image.size(0), image.size(1)});
    max_taps_x = std::max(max_taps_x, antialias_axis(image.size(1), size).max_taps);
    max_taps_y = std::max(max_taps_y, antialias_axis(image.size(0), size).max_taps);
  }
  const at::Tensor meta = table_on(table, out.device());
  const size_t shared = (kTileX * max_taps_x + kTileY * max_taps_y) * sizeof(float);
  const dim3 grid(ceil_div(size, kTileX), ceil_div(size, kTileY), count), block(kTileX, kTileY);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "preprocess_cuda", [&] {
    reserve_shared_memory(preprocess_kernel<scalar_t>, shared);
    preprocess_kernel<scalar_t><<<grid, block, shared, stream>>>(meta.data_ptr<int64_t>(), size, max_taps_x,
                                                                  max_taps_y, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace sigma_fast
