// C++ CPU twin of vae_roundtrip_composite: VAE decoder output -> uint8 as an editor saves it, with
// the edited pixels pasted where the edit mask is set.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "ops.h"
#include "resample.h"

namespace sigma_fast {
namespace {

// mask == nullptr: no compositing.
template <typename vae_t, typename mask_t>
void composite(const vae_t* vae, const uint8_t* edit, const mask_t* mask, int64_t batch, int64_t plane,
               uint8_t* out) {
  at::parallel_for(0, batch * plane, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / plane, p = i - b * plane;
      const bool pasted = mask != nullptr && mask_selects(mask[i]);
      for (int c = 0; c < 3; ++c) {
        out[3 * i + c] = pasted ? edit[3 * i + c] : vae_to_uint8(static_cast<float>(vae[(b * 3 + c) * plane + p]));
      }
    }
  });
}

}  // namespace

void composite_cpu(const at::Tensor& x_vae, const at::Tensor& x_edit, const at::Tensor& edit_mask,
                   at::Tensor& out) {
  const int64_t batch = x_vae.size(0), plane = x_vae.size(2) * x_vae.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_vae.scalar_type(), "composite_cpu", [&] {
    using vae_t = scalar_t;
    const vae_t* vae = x_vae.data_ptr<vae_t>();
    if (!edit_mask.defined()) {
      composite<vae_t, bool>(vae, nullptr, nullptr, batch, plane, out.data_ptr<uint8_t>());
      return;
    }
    AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, edit_mask.scalar_type(), "composite_cpu_mask", [&] {
      composite(vae, x_edit.data_ptr<uint8_t>(), edit_mask.data_ptr<scalar_t>(), batch, plane,
                out.data_ptr<uint8_t>());
    });
  });
}

}  // namespace sigma_fast
