// CUDA preprocess_pairs: all images of the batch (originals and edited, any sizes) in one launch.
// Each block resizes a kTileY x kTileX tile of one image's output with antialiased bilinear weights
// (shared with the CPU twin through resample.h) in two separable passes, as the CPU twin and
// PyTorch do: the horizontal pass filters the input rows under the tile into shared memory, kChunk
// rows at a time, and the vertical pass adds those rows into each output pixel's sums. Each input
// byte is then loaded about once per tile (taps_x per output column and row, not taps_x * taps_y
// per output pixel), and shared memory stays bounded whatever the scale. Normalised, written NCHW.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "check.h"
#include "cuda/launch.h"
#include "ops.h"
#include "resample.h"

namespace sigma_fast {
namespace {

constexpr int kTileX = 32;    // output columns per block: one warp, coalesced stores
constexpr int kTileY = 16;    // output rows per block
constexpr int kRowsPerThread = 2;
constexpr int kThreadsY = kTileY / kRowsPerThread;
constexpr int kThreads = kTileX * kThreadsY;
constexpr int kChunk = 32;    // input rows filtered horizontally per round (12 KB of shared memory)

__device__ __forceinline__ int64_t lesser(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t greater(int64_t a, int64_t b) { return a > b ? a : b; }

// images: per image (data pointer, height, width); blockIdx.z = image. Dynamic shared memory: the
// tile's column weights (kTileX x max_taps_x), row weights (kTileY x max_taps_y), then the chunk of
// horizontally filtered rows (kChunk x kTileX x 3, channels innermost: stride 3 is conflict-free).
template <typename out_t>
__global__ void __launch_bounds__(kThreads)
    preprocess_kernel(const int64_t* __restrict__ images, int64_t size, int64_t max_taps_x, int64_t max_taps_y,
                      out_t* __restrict__ out) {
  extern __shared__ float shared[];
  float* wx = shared;
  float* wy = wx + kTileX * max_taps_x;
  float* filtered = wy + kTileY * max_taps_y;
  __shared__ int64_t col_first[kTileX], row_first[kTileY];
  __shared__ int col_taps[kTileX], row_taps[kTileY];

  const int64_t n = blockIdx.z;
  const uint8_t* src = reinterpret_cast<const uint8_t*>(images[3 * n]);
  const int64_t height = images[3 * n + 1], width = images[3 * n + 2];
  const int64_t tile_x = blockIdx.x * static_cast<int64_t>(kTileX), tile_y = blockIdx.y * static_cast<int64_t>(kTileY);
  const int cols = static_cast<int>(lesser(kTileX, size - tile_x));
  const int rows = static_cast<int>(lesser(kTileY, size - tile_y));
  const int thread = threadIdx.y * kTileX + threadIdx.x;

  // The tile's filter weights: one thread per output column, then one per output row.
  if (thread < cols) {
    const AntialiasAxis axis = antialias_axis(width, size);
    col_taps[thread] = static_cast<int>(antialias_weights(axis, tile_x + thread, col_first[thread], wx + thread * max_taps_x));
  } else if (thread >= kTileX && thread < kTileX + rows) {
    const int r = thread - kTileX;
    const AntialiasAxis axis = antialias_axis(height, size);
    row_taps[r] = static_cast<int>(antialias_weights(axis, tile_y + r, row_first[r], wy + r * max_taps_y));
  }
  __syncthreads();

  // Spans are monotonic in the output index: the tile reads input rows [first_row, end_row).
  const int64_t first_row = row_first[0], end_row = row_first[rows - 1] + row_taps[rows - 1];
  const int col = threadIdx.x;
  float sum[kRowsPerThread][3] = {};
  for (int64_t chunk = first_row; chunk < end_row; chunk += kChunk) {
    const int chunk_rows = static_cast<int>(lesser(kChunk, end_row - chunk));
    // Horizontal pass: row r of the chunk, output column col.
    if (col < cols) {
      const float* w = wx + col * max_taps_x;
      const int taps = col_taps[col];
      for (int r = threadIdx.y; r < chunk_rows; r += kThreadsY) {
        const uint8_t* pixel = src + ((chunk + r) * width + col_first[col]) * 3;
        float row[3] = {0.0f, 0.0f, 0.0f};
        for (int i = 0; i < taps; ++i, pixel += 3) {
#pragma unroll
          for (int c = 0; c < 3; ++c) row[c] += w[i] * static_cast<float>(pixel[c]);
        }
#pragma unroll
        for (int c = 0; c < 3; ++c) filtered[(r * kTileX + col) * 3 + c] = row[c];
      }
    }
    __syncthreads();
    // Vertical pass: the chunk's rows inside each output row's span, in increasing order.
#pragma unroll
    for (int k = 0; k < kRowsPerThread; ++k) {
      const int t = threadIdx.y + k * kThreadsY;
      if (t >= rows || col >= cols) continue;
      const int64_t lo = greater(row_first[t], chunk), hi = lesser(row_first[t] + row_taps[t], chunk + chunk_rows);
      for (int64_t y = lo; y < hi; ++y) {
        const float w = wy[t * max_taps_y + (y - row_first[t])];
        const float* row = filtered + ((y - chunk) * kTileX + col) * 3;
#pragma unroll
        for (int c = 0; c < 3; ++c) sum[k][c] += w * row[c];
      }
    }
    __syncthreads();
  }

  const int64_t plane = size * size;
#pragma unroll
  for (int k = 0; k < kRowsPerThread; ++k) {
    const int t = threadIdx.y + k * kThreadsY;
    if (t >= rows || col >= cols) continue;
    out_t* dst = out + n * 3 * plane + (tile_y + t) * size + tile_x + col;
#pragma unroll
    for (int c = 0; c < 3; ++c) dst[c * plane] = static_cast<out_t>(imagenet_normalize(sum[k][c], c));
  }
}

// Dynamic shared memory above the default 48 KB needs an opt-in per kernel.
template <typename Kernel>
void reserve_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return;
  int device = 0, limit = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  SF_CHECK_VALUE(bytes <= static_cast<size_t>(limit), "preprocess_pairs: an image is too large to resize to ",
                 "this size in one pass (its filter weights need ", bytes, " bytes of shared memory, the ",
                 "device has ", limit, ")");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

}  // namespace

void preprocess_cuda(const std::vector<at::Tensor>& images, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(out.device());
  const int64_t size = out.size(-1), count = static_cast<int64_t>(images.size());
  SF_CHECK_VALUE(count <= 65535, "preprocess_pairs: at most 32767 pairs per call on CUDA, got ", count / 2);
  std::vector<int64_t> table;
  int64_t max_taps_x = 1, max_taps_y = 1;
  for (const at::Tensor& image : images) {
    table.insert(table.end(), {reinterpret_cast<int64_t>(image.data_ptr<uint8_t>()), image.size(0), image.size(1)});
    max_taps_x = std::max(max_taps_x, antialias_axis(image.size(1), size).max_taps);
    max_taps_y = std::max(max_taps_y, antialias_axis(image.size(0), size).max_taps);
  }
  const at::Tensor meta = table_on(table, out.device());
  const size_t shared = (kTileX * max_taps_x + kTileY * max_taps_y + kChunk * kTileX * 3) * sizeof(float);
  const dim3 grid(ceil_div(size, kTileX), ceil_div(size, kTileY), count), block(kTileX, kThreadsY);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "preprocess_cuda", [&] {
    reserve_shared_memory(preprocess_kernel<scalar_t>, shared);
    preprocess_kernel<scalar_t><<<grid, block, shared, stream>>>(meta.data_ptr<int64_t>(), size, max_taps_x,
                                                                  max_taps_y, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace sigma_fast
