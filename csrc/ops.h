#pragma once
// Device implementations of the sigma_fast._C ops. ops.cpp validates the inputs, makes them
// contiguous, allocates the outputs and calls the CPU twin (csrc/*.cpp) or the CUDA version
// (csrc/cuda/*.cu) for the inputs' device.
#include <ATen/core/Tensor.h>

#include <vector>

namespace sigma_fast {

struct ImageSize {
  int64_t height;
  int64_t width;
};

// images: contiguous uint8 (H_i, W_i, 3); out: (N, 3, size, size), image i -> out[i].
void preprocess_cpu(const std::vector<at::Tensor>& images, at::Tensor& out);

// logits: contiguous (B, 1, h, w); masks (and probs, when defined): flat buffers where image b
// occupies [offsets[b], offsets[b] + H_b * W_b); scores: (B,) float32.
void postprocess_cpu(const at::Tensor& logits, const std::vector<ImageSize>& sizes,
                     const std::vector<int64_t>& offsets, float threshold, at::Tensor& masks,
                     at::Tensor& probs, at::Tensor& scores);

// x_vae: contiguous (B, 3, H, W); x_edit (B, H, W, 3) uint8 and edit_mask (B, H, W), both defined
// or both undefined; out: (B, H, W, 3) uint8.
void composite_cpu(const at::Tensor& x_vae, const at::Tensor& x_edit, const at::Tensor& edit_mask,
                   at::Tensor& out);

#ifdef WITH_CUDA
void preprocess_cuda(const std::vector<at::Tensor>& images, at::Tensor& out);
void postprocess_cuda(const at::Tensor& logits, const std::vector<ImageSize>& sizes,
                      const std::vector<int64_t>& offsets, float threshold, at::Tensor& masks,
                      at::Tensor& probs, at::Tensor& scores);
void composite_cuda(const at::Tensor& x_vae, const at::Tensor& x_edit, const at::Tensor& edit_mask,
                    at::Tensor& out);
#endif

}  // namespace sigma_fast
