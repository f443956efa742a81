#pragma once
// Input checks whose messages are built without iostreams.
//
// TORCH_CHECK(cond, "text ", number) formats through c10::str, i.e. a std::ostringstream whose
// number inserts (std::ostream::_M_insert<long>) go through the locale's num_put/numpunct facets.
// On the H200 image (torch 2.11, g++ 13.3) the extension carried its own weak copy of that code,
// and the first number formatted into an error message crashed the process inside it, while
// string-only messages worked: facet state that is not libstdc++'s own (two copies of the runtime's
// locale data in one process) breaks only the number inserts. Here messages are concatenated as a
// std::string with std::to_string (no locale, no streams) and passed to TORCH_CHECK as its single
// argument, which c10::str hands through without a stream.
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <string>
#include <type_traits>

namespace sigma_fast {
namespace detail {

inline void append(std::string& out, const char* text) { out += text; }
inline void append(std::string& out, const std::string& text) { out += text; }
inline void append(std::string& out, at::ScalarType dtype) { out += c10::toString(dtype); }

template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
void append(std::string& out, T number) {
  out += std::to_string(number);
}

// As torch prints sizes: [2, 3, 4].
inline void append(std::string& out, at::IntArrayRef sizes) {
  out += '[';
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(sizes[i]);
  }
  out += ']';
}

// As torch prints devices: cpu, cuda:0.
inline void append(std::string& out, const at::Device& device) {
  out += c10::DeviceTypeName(device.type(), /*lower_case=*/true);
  if (device.has_index()) out += ":" + std::to_string(device.index());
}

}  // namespace detail

template <typename... Args>
std::string message(const Args&... args) {
  std::string out;
  (detail::append(out, args), ...);
  return out;
}

}  // namespace sigma_fast

// Evaluate the message only when the check fails; raise ValueError / TypeError in Python.
#define SF_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::sigma_fast::message(__VA_ARGS__))
#define SF_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, ::sigma_fast::message(__VA_ARGS__))
#define SF_CHECK(cond, ...) TORCH_CHECK(cond, ::sigma_fast::message(__VA_ARGS__))
