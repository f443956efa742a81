#pragma once
// Per-pixel arithmetic shared by the C++ CPU ops and the CUDA kernels, written once so that both
// follow the PyTorch references in sigma_fast/ops/reference.py (float32 throughout).
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define SF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SF_HOST_DEVICE inline
#endif

namespace sigma_fast {

// ---- preprocess: antialiased bilinear resize (F.interpolate(..., antialias=True)) ----------------

// One axis of PyTorch's upsample_bilinear2d_aa from `in` to `out` samples: a triangle filter whose
// support grows with the scale when downsampling (support = scale, filter argument / scale) and is
// plain bilinear when upsampling (support = 1); the weights of each output sample sum to one.
struct AntialiasAxis {
  int64_t in;
  float scale;
  float support;
  float invscale;
  int64_t max_taps;
};

SF_HOST_DEVICE AntialiasAxis antialias_axis(int64_t in, int64_t out) {
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  const float support = scale >= 1.0f ? scale : 1.0f;
  const float invscale = scale >= 1.0f ? 1.0f / scale : 1.0f;
  return {in, scale, support, invscale, static_cast<int64_t>(ceilf(support)) * 2 + 1};
}

// The input samples [first, first + taps) that output sample i reads; returns taps.
SF_HOST_DEVICE int64_t antialias_span(const AntialiasAxis& axis, int64_t i, int64_t& first) {
  const float center = axis.scale * (static_cast<float>(i) + 0.5f);
  const int64_t lo = static_cast<int64_t>(center - axis.support + 0.5f);
  const int64_t hi = static_cast<int64_t>(center + axis.support + 0.5f);
  first = lo > 0 ? lo : 0;
  const int64_t taps = (hi < axis.in ? hi : axis.in) - first;
  return taps < axis.max_taps ? taps : axis.max_taps;
}

// Writes the normalised weights of output sample i to w[0, taps); returns taps.
SF_HOST_DEVICE int64_t antialias_weights(const AntialiasAxis& axis, int64_t i, int64_t& first, float* w) {
  const int64_t taps = antialias_span(axis, i, first);
  const float center = axis.scale * (static_cast<float>(i) + 0.5f);
  float total = 0.0f;
  for (int64_t j = 0; j < taps; ++j) {
    const float x = fabsf((static_cast<float>(first + j) - center + 0.5f) * axis.invscale);
    w[j] = x < 1.0f ? 1.0f - x : 0.0f;
    total += w[j];
  }
  if (total != 0.0f) {
    for (int64_t j = 0; j < taps; ++j) w[j] /= total;
  }
  return taps;
}

// A resized sum of uint8 samples (weights summing to one) -> ImageNet-normalised channel c.
SF_HOST_DEVICE float imagenet_normalize(float sum, int c) {
  const float mean = c == 0 ? 0.485f : c == 1 ? 0.456f : 0.406f;
  const float std = c == 0 ? 0.229f : c == 1 ? 0.224f : 0.225f;
  return (sum / 255.0f - mean) / std;
}

// ---- postprocess: bilinear resize (align_corners=False), sigmoid, threshold ---------------------

// The two input samples of output sample i and their weights, as PyTorch computes them for float32
// (upsample_bilinear2d; its CPU and CUDA builds both fuse the multiply-adds, so these do too).
struct LinearTap {
  int64_t i0, i1;
  float w0, w1;
};

SF_HOST_DEVICE LinearTap linear_tap(int64_t in, int64_t out, int64_t i) {
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  const float source = fmaxf(fmaf(scale, static_cast<float>(i) + 0.5f, -0.5f), 0.0f);
  const int64_t below = static_cast<int64_t>(source);
  const int64_t i0 = below < in - 1 ? below : in - 1;
  const float w1 = fminf(fmaxf(source - static_cast<float>(i0), 0.0f), 1.0f);
  return {i0, i0 < in - 1 ? i0 + 1 : i0, 1.0f - w1, w1};
}

// Bilinear sample of a row-major (h, w) map at taps y (rows) and x (columns).
template <typename T>
SF_HOST_DEVICE float bilinear(const T* map, int64_t w, const LinearTap& y, const LinearTap& x) {
  const T* r0 = map + y.i0 * w;
  const T* r1 = map + y.i1 * w;
  const float top = fmaf(static_cast<float>(r0[x.i0]), x.w0, static_cast<float>(r0[x.i1]) * x.w1);
  const float bottom = fmaf(static_cast<float>(r1[x.i0]), x.w0, static_cast<float>(r1[x.i1]) * x.w1);
  return fmaf(top, y.w0, bottom * y.w1);
}

SF_HOST_DEVICE float sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

// ---- VAE round trip: decoder output in [-1, 1] -> uint8 as an editor saves it -------------------

SF_HOST_DEVICE uint8_t vae_to_uint8(float v) {
  const float pixel = rintf((fminf(fmaxf(v, -1.0f), 1.0f) + 1.0f) * 127.5f);
  return static_cast<uint8_t>(fminf(fmaxf(pixel, 0.0f), 255.0f));
}

// `edit_mask > 0.5` for any mask dtype (bool, integers, floating), compared as PyTorch promotes it.
template <typename T>
SF_HOST_DEVICE bool mask_selects(T m) {
  return static_cast<double>(m) > 0.5;
}

}  // namespace sigma_fast
