// CUDA postprocess_masks: the whole batch in one launch. Each block thresholds a kTileH x kTileW
// tile of one image's output (the images' tiles follow one another), a warp per output row with each
// thread on kPixelsPerThread columns 32 apart (so every store instruction is coalesced and the row's
// vertical tap is computed once per thread, not per pixel), and adds its part of the image's score;
// the image's last block to finish writes the score. Shaped for the decoder's 518x518 logits resized
// to image sizes around 512-1024: about one logit read per output pixel, so the kernel's own
// instructions per pixel, not the logit reuse, set its speed.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cub/block/block_reduce.cuh>

#include "check.h"
#include "cuda/launch.h"
#include "ops.h"
#include "resample.h"

namespace sigma_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kPixelsPerThread = 4;
constexpr int kTileW = 32 * kPixelsPerThread;  // output columns per tile
constexpr int kTileH = kThreads / 32;          // output rows per tile: one warp each
constexpr int kMeta = 5;                       // table entries per image

// Per image, accumulated by all its blocks.
struct ScoreSums {
  double sum;                // of the probabilities inside the mask
  unsigned long long count;  // pixels inside the mask
  unsigned int max_bits;     // largest probability (non-negative floats order as their bits)
  unsigned int blocks_done;
};

struct BlockStats {
  float sum;
  unsigned int count;
  float max;
};

struct CombineStats {
  __device__ BlockStats operator()(const BlockStats& a, const BlockStats& b) const {
    return {a.sum + b.sum, a.count + b.count, fmaxf(a.max, b.max)};
  }
};

// meta: per image (height, width, offset of its pixels in masks/probs, its first block, tiles per row).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    postprocess_kernel(const scalar_t* __restrict__ logits, int64_t h, int64_t w, const int64_t* __restrict__ meta,
                       int64_t batch, float threshold, uint8_t* __restrict__ masks, float* __restrict__ probs,
                       ScoreSums* __restrict__ sums, float* __restrict__ scores) {
  int64_t b = 0;
  for (int64_t last = batch - 1; b < last;) {
    const int64_t mid = (b + last + 1) / 2;
    if (meta[kMeta * mid + 3] <= blockIdx.x) {
      b = mid;
    } else {
      last = mid - 1;
    }
  }
  const int64_t* image_meta = meta + kMeta * b;
  const int height = static_cast<int>(image_meta[0]), width = static_cast<int>(image_meta[1]);
  const int64_t offset = image_meta[2];
  const int tiles_x = static_cast<int>(image_meta[4]);
  const int tile = static_cast<int>(blockIdx.x - image_meta[3]);
  const int tile_y = tile / tiles_x, tile_x = tile - tile_y * tiles_x;
  const int y = tile_y * kTileH + static_cast<int>(threadIdx.x / 32);
  const int x0 = tile_x * kTileW + static_cast<int>(threadIdx.x % 32);

  BlockStats stats{0.0f, 0u, 0.0f};
  if (y < height) {
    const scalar_t* map = logits + b * h * w;
    const LinearTap tap_y = linear_tap(h, height, y);
    const int64_t row = offset + static_cast<int64_t>(y) * width;
#pragma unroll
    for (int k = 0; k < kPixelsPerThread; ++k) {
      const int x = x0 + 32 * k;
      if (x >= width) break;
      const float prob = sigmoid(bilinear(map, w, tap_y, linear_tap(w, width, x)));
      const bool inside = prob > threshold;
      masks[row + x] = inside ? 255 : 0;
      if (probs != nullptr) probs[row + x] = prob;
      stats.sum += inside ? prob : 0.0f;
      stats.count += inside ? 1u : 0u;
      stats.max = fmaxf(stats.max, prob);
    }
  }
  using BlockReduce = cub::BlockReduce<BlockStats, kThreads>;
  __shared__ typename BlockReduce::TempStorage storage;
  const BlockStats block = BlockReduce(storage).Reduce(stats, CombineStats());
  if (threadIdx.x != 0) return;

  ScoreSums& image = sums[b];
  atomicAdd(&image.sum, static_cast<double>(block.sum));
  atomicAdd(&image.count, static_cast<unsigned long long>(block.count));
  atomicMax(&image.max_bits, __float_as_uint(block.max));
  __threadfence();
  const unsigned int blocks = static_cast<unsigned int>(tiles_x * ((height + kTileH - 1) / kTileH));
  if (atomicAdd(&image.blocks_done, 1u) + 1 == blocks) {
    // The reference's mask_score: mean probability inside the mask, else 1 - the largest probability.
    const double sum = atomicAdd(&image.sum, 0.0);
    const unsigned long long count = atomicAdd(&image.count, 0ull);
    const float max = __uint_as_float(atomicMax(&image.max_bits, 0u));
    scores[b] = count > 0 ? static_cast<float>(sum / static_cast<double>(count)) : 1.0f - max;
  }
}

}  // namespace

void postprocess_cuda(const at::Tensor& logits, const std::vector<ImageSize>& sizes,
                      const std::vector<int64_t>& offsets, float threshold, at::Tensor& masks,
                      at::Tensor& probs, at::Tensor& scores) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t batch = static_cast<int64_t>(sizes.size());
  std::vector<int64_t> table;
  int64_t blocks = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t tiles_x = ceil_div(sizes[b].width, kTileW);
    table.insert(table.end(), {sizes[b].height, sizes[b].width, offsets[b], blocks, tiles_x});
    blocks += tiles_x * ceil_div(sizes[b].height, kTileH);
  }
  SF_CHECK_VALUE(blocks < (int64_t{1} << 31), "postprocess_masks: too many output pixels in one batch");
  const at::Tensor meta = table_on(table, logits.device());
  at::Tensor workspace = at::empty({static_cast<int64_t>(batch * sizeof(ScoreSums))},
                                   logits.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(cudaMemsetAsync(workspace.data_ptr(), 0, workspace.numel(), stream));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "postprocess_cuda", [&] {
    postprocess_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), logits.size(2), logits.size(3), meta.data_ptr<int64_t>(), batch, threshold,
        masks.data_ptr<uint8_t>(), probs.defined() ? probs.data_ptr<float>() : nullptr,
        reinterpret_cast<ScoreSums*>(workspace.data_ptr()), scores.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace sigma_fast
