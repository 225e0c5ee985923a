// Runs deeprebirth's conv_pool operator from a program that links the installed package
// (find_package(deeprebirth), target deeprebirth::ops) and compares it with ATen's unfused
// conv2d -> relu -> max_pool2d. The call goes through the dispatcher by name, as a TorchScript
// model's would: the program references no symbol of libdeeprebirth_ops.so, so the operator
// exists only if the package kept the library linked (--no-as-needed) and it registered on load.
// Exit code 0 when the outputs match.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <iostream>

#include "deeprebirth_ops.h"

int main() {
  at::manual_seed(0);
  const at::Tensor x = at::randn({2, 3, 13, 11});
  const at::Tensor w = at::randn({5, 3, 3, 3});
  const at::Tensor b = at::randn({5});

  // decltype names the header's signature without referencing the function.
  const auto conv_pool = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("deeprebirth::conv_pool", "")
                             .typed<decltype(deeprebirth::ops::conv_pool)>();
  const at::Tensor fused = conv_pool.call(x, w, b, {1, 1}, {1, 1}, {1, 1}, 1, "max", {2, 2}, {2, 2},
                                          {0, 0}, false, true);
  const at::Tensor reference = at::max_pool2d(at::relu(at::conv2d(x, w, b, 1, 1)), 2, 2);

  if (!fused.sizes().equals(reference.sizes()) || !at::allclose(fused, reference, 1e-4, 1e-5)) {
    std::cerr << "deeprebirth::conv_pool differs from ATen: shape " << fused.sizes() << " vs "
              << reference.sizes() << "\n";
    return 1;
  }
  std::cout << "deeprebirth::conv_pool matches ATen, output " << fused.sizes() << "\n";
  return 0;
}
