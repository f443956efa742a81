// C++ CPU twin of postprocess_masks: bilinear resize of each logit map to its image's size, sigmoid,
// threshold, and the mask's score, parallel over the rows of all images of the batch.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "ops.h"
#include "resample.h"

namespace sigma_fast {
namespace {

// What a row contributes to its image's score.
struct RowStats {
  double sum = 0.0;  // of the probabilities inside the mask
  int64_t count = 0; // pixels inside the mask
  float max = 0.0f;  // largest probability
};

}  // namespace

void postprocess_cpu(const at::Tensor& logits, const std::vector<ImageSize>& sizes,
                     const std::vector<int64_t>& offsets, float threshold, at::Tensor& masks,
                     at::Tensor& probs, at::Tensor& scores) {
  const int64_t h = logits.size(2), w = logits.size(3);
  // The rows of all images, numbered one after the other: image b's rows start at row_offsets[b].
  std::vector<int64_t> row_offsets{0};
  for (const ImageSize& size : sizes) row_offsets.push_back(row_offsets.back() + size.height);
  std::vector<RowStats> stats(row_offsets.back());
  uint8_t* mask_data = masks.data_ptr<uint8_t>();
  float* prob_data = probs.defined() ? probs.data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "postprocess_cpu", [&] {
    const scalar_t* maps = logits.data_ptr<scalar_t>();
    at::parallel_for(0, row_offsets.back(), 4, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = std::upper_bound(row_offsets.begin(), row_offsets.end(), row) - row_offsets.begin() - 1;
        const ImageSize size = sizes[b];
        const int64_t y = row - row_offsets[b];
        const LinearTap tap_y = linear_tap(h, size.height, y);
        const int64_t start = offsets[b] + y * size.width;
        RowStats& s = stats[row];
        for (int64_t x = 0; x < size.width; ++x) {
          const float prob = sigmoid(bilinear(maps + b * h * w, w, tap_y, linear_tap(w, size.width, x)));
          const bool inside = prob > threshold;
          mask_data[start + x] = inside ? 255 : 0;
          if (prob_data != nullptr) prob_data[start + x] = prob;
          if (inside) {
            s.sum += prob;
            s.count += 1;
          }
          s.max = std::max(s.max, prob);
        }
      }
    });
  });
  float* score_data = scores.data_ptr<float>();
  for (size_t b = 0; b < sizes.size(); ++b) {
    RowStats total;
    for (int64_t row = row_offsets[b]; row < row_offsets[b + 1]; ++row) {
      total.sum += stats[row].sum;
      total.count += stats[row].count;
      total.max = std::max(total.max, stats[row].max);
    }
    // The reference's mask_score: mean probability inside the mask, else 1 - the largest probability.
    score_data[b] = total.count > 0 ? static_cast<float>(total.sum / total.count) : 1.0f - total.max;
  }
}

}  // namespace sigma_fast
