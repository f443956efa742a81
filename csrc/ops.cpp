// The sigma_fast._C module: the ops' input checks (the same errors as the PyTorch references in
// sigma_fast/ops/reference.py: ValueError / TypeError), output allocation, and dispatch by device to
// the C++ CPU twins or the CUDA kernels. Messages are built by check.h, without iostreams.
#include <ATen/ops/empty.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "check.h"
#include "ops.h"

namespace sigma_fast {
namespace {

#ifdef WITH_CUDA
constexpr bool kWithCuda = true;
#define SF_DISPATCH(device, op, ...) ((device).is_cuda() ? op##_cuda(__VA_ARGS__) : op##_cpu(__VA_ARGS__))
#else
constexpr bool kWithCuda = false;
#define SF_DISPATCH(device, op, ...) op##_cpu(__VA_ARGS__)
#endif

void check_device(const at::Device& device, const char* op) {
  SF_CHECK(device.is_cpu() || (kWithCuda && device.is_cuda()), op, ": sigma_fast._C has no ",
           at::Device(device.type()), " implementation",
           kWithCuda ? "" : " (it was built without CUDA: rebuild it where torch is a CUDA build and "
                            "a CUDA toolkit is installed, or use sigma_fast.ops.reference)");
}

void check_same_device(const at::Device& device, const at::Tensor& tensor, const char* name) {
  SF_CHECK_VALUE(tensor.device() == device, name, " is on ", tensor.device(), " but the other inputs on ",
                 device);
}

void check_images(const std::vector<at::Tensor>& images, const char* name) {
  SF_CHECK_VALUE(!images.empty(), name, ": empty list of images");
  for (size_t i = 0; i < images.size(); ++i) {
    const at::Tensor& image = images[i];
    SF_CHECK_TYPE(image.scalar_type() == at::kByte, name, "[", i, "]: expected dtype uint8, got ",
                  image.scalar_type());
    SF_CHECK_VALUE(image.dim() == 3 && image.size(2) == 3, name, "[", i, "]: expected shape (H, W, 3), got ",
                   image.sizes());
    SF_CHECK_VALUE(image.size(0) > 0 && image.size(1) > 0, name, "[", i, "]: empty image of shape ",
                   image.sizes());
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> preprocess_pairs(const std::vector<at::Tensor>& originals,
                                                    const std::vector<at::Tensor>& editeds, int64_t size,
                                                    at::ScalarType dtype) {
  check_images(originals, "originals");
  check_images(editeds, "editeds");
  SF_CHECK_VALUE(originals.size() == editeds.size(), originals.size(), " originals but ", editeds.size(),
                 " edited images");
  SF_CHECK_VALUE(size > 0, "size must be positive, got ", size);
  SF_CHECK_TYPE(at::isFloatingType(dtype), "dtype must be a floating point type, got ", dtype);
  const at::Device device = originals[0].device();
  check_device(device, "preprocess_pairs");
  // Both images of every pair go into one launch: originals first, then the edited images.
  std::vector<at::Tensor> images;
  images.reserve(2 * originals.size());
  for (const auto* list : {&originals, &editeds}) {
    for (const at::Tensor& image : *list) {
      check_same_device(device, image, "an image");
      images.push_back(image.contiguous());
    }
  }
  const int64_t pairs = static_cast<int64_t>(originals.size());
  at::Tensor out = at::empty({2 * pairs, 3, size, size}, at::TensorOptions().dtype(dtype).device(device));
  SF_DISPATCH(device, preprocess, images, out);
  return {out.narrow(0, 0, pairs), out.narrow(0, pairs, pairs)};
}

std::tuple<std::vector<at::Tensor>, at::Tensor, std::vector<at::Tensor>> postprocess_masks(
    const at::Tensor& logits, const std::vector<std::array<int64_t, 2>>& sizes, double threshold,
    bool return_probs) {
  SF_CHECK_VALUE(logits.dim() == 4 && logits.size(1) == 1, "logits must be a (B, 1, h, w) tensor, got ",
                 logits.sizes());
  SF_CHECK_TYPE(logits.is_floating_point(), "logits must be floating point, got ", logits.scalar_type());
  SF_CHECK_VALUE(static_cast<int64_t>(sizes.size()) == logits.size(0), logits.size(0), " logit maps but ",
                 sizes.size(), " sizes");
  SF_CHECK_VALUE(logits.numel() > 0, "logits must not be empty, got shape ", logits.sizes());
  std::vector<ImageSize> images;
  std::vector<int64_t> offsets{0};
  for (const auto& [height, width] : sizes) {
    SF_CHECK_VALUE(height > 0 && width > 0, "invalid output size (", height, ", ", width, ")");
    SF_CHECK_VALUE(height * width < (int64_t{1} << 31), "output size (", height, ", ", width,
                   ") has 2^31 pixels or more");
    images.push_back({height, width});
    offsets.push_back(offsets.back() + height * width);
  }
  const at::Device device = logits.device();
  check_device(device, "postprocess_masks");
  const at::TensorOptions options = at::TensorOptions().device(device);
  // All masks (and probability maps) of the batch live in one buffer; each image gets a view.
  at::Tensor masks = at::empty({offsets.back()}, options.dtype(at::kByte));
  at::Tensor probs = return_probs ? at::empty({offsets.back()}, options.dtype(at::kFloat)) : at::Tensor();
  at::Tensor scores = at::empty({logits.size(0)}, options.dtype(at::kFloat));
  SF_DISPATCH(device, postprocess, logits.contiguous(), images, offsets, static_cast<float>(threshold), masks,
              probs, scores);
  std::vector<at::Tensor> mask_list, prob_list;
  for (size_t b = 0; b < images.size(); ++b) {
    const int64_t pixels = images[b].height * images[b].width;
    mask_list.push_back(masks.narrow(0, offsets[b], pixels).view({images[b].height, images[b].width}));
    if (return_probs) {
      prob_list.push_back(probs.narrow(0, offsets[b], pixels).view({images[b].height, images[b].width}));
    }
  }
  return {mask_list, scores, prob_list};
}

at::Tensor vae_roundtrip_composite(const at::Tensor& x_vae, const std::optional<at::Tensor>& x_edit,
                                   const std::optional<at::Tensor>& edit_mask) {
  SF_CHECK_VALUE(x_vae.dim() == 4 && x_vae.size(1) == 3, "x_vae must be (B, 3, H, W), got ", x_vae.sizes());
  SF_CHECK_TYPE(x_vae.is_floating_point(), "x_vae must be floating point, got ", x_vae.scalar_type());
  SF_CHECK_VALUE(x_edit.has_value() == edit_mask.has_value(), "x_edit and edit_mask go together");
  const int64_t batch = x_vae.size(0), height = x_vae.size(2), width = x_vae.size(3);
  const at::Device device = x_vae.device();
  check_device(device, "vae_roundtrip_composite");
  at::Tensor edit, mask;
  if (x_edit.has_value()) {
    SF_CHECK_VALUE(x_edit->scalar_type() == at::kByte && x_edit->sizes() == at::IntArrayRef({batch, height, width, 3}),
                   "x_edit must be uint8 ", at::IntArrayRef({batch, height, width, 3}), ", got ",
                   x_edit->scalar_type(), " ", x_edit->sizes());
    SF_CHECK_VALUE(edit_mask->sizes() == at::IntArrayRef({batch, height, width}), "edit_mask must be ",
                   at::IntArrayRef({batch, height, width}), ", got ", edit_mask->sizes());
    check_same_device(device, *x_edit, "x_edit");
    check_same_device(device, *edit_mask, "edit_mask");
    edit = x_edit->contiguous();
    mask = edit_mask->contiguous();
  }
  at::Tensor out = at::empty({batch, height, width, 3}, at::TensorOptions().dtype(at::kByte).device(device));
  if (out.numel() > 0) {
    SF_DISPATCH(device, composite, x_vae.contiguous(), edit, mask, out);
  }
  return out;
}

}  // namespace sigma_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "sigma_fast's fused pre/post-processing ops: C++ on CPU tensors, CUDA on GPU tensors.";
  m.attr("with_cuda") = py::bool_(sigma_fast::kWithCuda);
  m.def("preprocess_pairs", &sigma_fast::preprocess_pairs,
        "Lists of uint8 (H_i, W_i, 3) -> (x_orig, x_edit), each (B, 3, size, size) in dtype: antialiased "
        "bilinear resize, then ImageNet normalisation.",
        py::arg("originals"), py::arg("editeds"), py::arg("size") = 518, py::arg("dtype") = at::kFloat,
        py::call_guard<py::gil_scoped_release>());
  m.def("postprocess_masks", &sigma_fast::postprocess_masks,
        "(B, 1, h, w) logits -> (masks, scores, probs): uint8 {0, 255} masks at each (H_i, W_i), scores (B,), "
        "float32 probability maps (empty list unless return_probs).",
        py::arg("logits"), py::arg("sizes"), py::arg("threshold") = 0.5, py::arg("return_probs") = false,
        py::call_guard<py::gil_scoped_release>());
  m.def("vae_roundtrip_composite", &sigma_fast::vae_roundtrip_composite,
        "VAE decoder output (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), with x_edit pasted where "
        "edit_mask > 0.5.",
        py::arg("x_vae"), py::arg("x_edit") = py::none(), py::arg("edit_mask") = py::none(),
        py::call_guard<py::gil_scoped_release>());
}
