// CUDA postprocess_masks: the whole batch in one launch. Each block thresholds 256 pixels of one
// image (the images' blocks follow one another) and adds its part of the image's score; the image's
// last block to finish writes the score.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cub/block/block_reduce.cuh>

#include "cuda/launch.h"
#include "ops.h"
#include "resample.h"

namespace sigma_fast {
namespace {

constexpr int kThreads = 256;

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

// meta: per image (height, width, offset of its pixels in masks/probs, its first block).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    postprocess_kernel(const scalar_t* __restrict__ logits, int64_t h, int64_t w, const int64_t* __restrict__ meta,
                       int64_t batch, float threshold, uint8_t* __restrict__ masks, float* __restrict__ probs,
                       ScoreSums* __restrict__ sums, float* __restrict__ scores) {
  int64_t b = 0;
  for (int64_t last = batch - 1; b < last;) {
    const int64_t mid = (b + last + 1) / 2;
    if (meta[4 * mid + 3] <= blockIdx.x) {
      b = mid;
    } else {
      last = mid - 1;
    }
  }
  const int height = static_cast<int>(meta[4 * b]), width = static_cast<int>(meta[4 * b + 1]);
  const int64_t offset = meta[4 * b + 2], first_block = meta[4 * b + 3];
  const int pixel = static_cast<int>(blockIdx.x - first_block) * kThreads + threadIdx.x;

  BlockStats stats{0.0f, 0u, 0.0f};
  if (pixel < height * width) {
    const int y = pixel / width, x = pixel - y * width;
    const float prob = sigmoid(bilinear(logits + b * h * w, w, linear_tap(h, height, y), linear_tap(w, width, x)));
    const bool inside = prob > threshold;
    masks[offset + pixel] = inside ? 255 : 0;
    if (probs != nullptr) probs[offset + pixel] = prob;
    stats = {inside ? prob : 0.0f, inside ? 1u : 0u, prob};
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
  const unsigned int blocks = static_cast<unsigned int>((height * static_cast<int64_t>(width) + kThreads - 1) / kThreads);
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
    table.insert(table.end(), {sizes[b].height, sizes[b].width, offsets[b], blocks});
    blocks += ceil_div(sizes[b].height * sizes[b].width, kThreads);
  }
  TORCH_CHECK_VALUE(blocks < (int64_t{1} << 31), "postprocess_masks: too many output pixels in one batch");
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
