// hyperkd._C: the compiled half of hyperkd. Each op family registers its own schemas and CPU
// kernels with TORCH_LIBRARY_FRAGMENT in csrc/cpu/<family>.cpp, and its CUDA kernels, where
// hand-written CUDA beats Triton, in csrc/cuda/<family>.cu; importing this module loads them all.
#include <Python.h>
#include <torch/library.h>

#include "cpu/layers.h"

namespace hyperkd {

void check_feature_list(at::TensorList feats, const char* name) {
  TORCH_CHECK(!feats.empty(), name, ": expected a non-empty list of feature maps");
  const auto& first = feats[0];
  for (size_t m = 0; m < feats.size(); ++m) {
    const auto& t = feats[m];
    TORCH_CHECK(t.dim() == 4, name, "[", m, "]: expected a 4-D B×C×H×W tensor, got ", t.dim(), "-D");
    TORCH_CHECK(t.size(0) == first.size(0), name, "[", m, "]: batch ", t.size(0),
                " differs from layer 0's batch ", first.size(0));
    TORCH_CHECK(t.scalar_type() == first.scalar_type(), name, "[", m, "]: dtype ", t.scalar_type(),
                " differs from layer 0's ", first.scalar_type());
    TORCH_CHECK(t.device() == first.device(), name, "[", m, "]: device differs from layer 0's");
  }
}

}  // namespace hyperkd

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
