// C++ CPU twin of preprocess_pairs: each uint8 (H, W, 3) image is resized with antialiased bilinear
// filtering in two separable passes (rows, then columns, as PyTorch's CPU kernel), then normalised.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "ops.h"
#include "resample.h"

namespace sigma_fast {
namespace {

// The weights of one axis for all output samples: taps[i] weights from input sample first[i] on.
struct AxisWeights {
  AntialiasAxis axis;
  std::vector<int64_t> first, taps;
  std::vector<float> weights;

  AxisWeights(int64_t in, int64_t out)
      : axis(antialias_axis(in, out)), first(out), taps(out), weights(out * axis.max_taps) {
    for (int64_t i = 0; i < out; ++i) taps[i] = antialias_weights(axis, i, first[i], row(i));
  }
  float* row(int64_t i) { return weights.data() + i * axis.max_taps; }
  const float* row(int64_t i) const { return weights.data() + i * axis.max_taps; }
};

// (height, width, 3) uint8 -> dst (3, size, size); rows is scratch for (height, size, 3) floats.
template <typename out_t>
void resize_normalize(const uint8_t* src, int64_t height, int64_t width, int64_t size, float* rows, out_t* dst) {
  const AxisWeights wx(width, size), wy(height, size);
  at::parallel_for(0, height, 16, [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      float* out = rows + y * size * 3;
      for (int64_t x = 0; x < size; ++x) {
        const uint8_t* pixel = src + (y * width + wx.first[x]) * 3;
        const float* w = wx.row(x);
        float sum[3] = {0.0f, 0.0f, 0.0f};
        for (int64_t j = 0; j < wx.taps[x]; ++j, pixel += 3) {
          for (int c = 0; c < 3; ++c) sum[c] += w[j] * static_cast<float>(pixel[c]);
        }
        for (int c = 0; c < 3; ++c) out[3 * x + c] = sum[c];
      }
    }
  });
  const int64_t plane = size * size;
  at::parallel_for(0, size, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> sum(size * 3);
    for (int64_t y = begin; y < end; ++y) {
      std::fill(sum.begin(), sum.end(), 0.0f);
      const float* w = wy.row(y);
      for (int64_t j = 0; j < wy.taps[y]; ++j) {
        const float* in = rows + (wy.first[y] + j) * size * 3;
        for (int64_t k = 0; k < size * 3; ++k) sum[k] += w[j] * in[k];
      }
      for (int c = 0; c < 3; ++c) {
        for (int64_t x = 0; x < size; ++x) {
          dst[c * plane + y * size + x] = static_cast<out_t>(imagenet_normalize(sum[3 * x + c], c));
        }
      }
    }
  });
}

}  // namespace

void preprocess_cpu(const std::vector<at::Tensor>& images, at::Tensor& out) {
  const int64_t size = out.size(-1);
  int64_t max_height = 0;
  for (const at::Tensor& image : images) max_height = std::max(max_height, image.size(0));
  std::vector<float> rows(max_height * size * 3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "preprocess_cpu", [&] {
    for (size_t n = 0; n < images.size(); ++n) {
      resize_normalize(images[n].data_ptr<uint8_t>(), images[n].size(0), images[n].size(1), size, rows.data(),
                       out.data_ptr<scalar_t>() + n * 3 * size * size);
    }
  });
}

}  // namespace sigma_fast
