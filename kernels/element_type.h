// Element types the kernels take (the model's compute dtype). Values are stable: the typed
// entry points that take an int use static_cast<int>(ElementType).
#pragma once

namespace glmserve::kernels {

enum class ElementType { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

}  // namespace glmserve::kernels
