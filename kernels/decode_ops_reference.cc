#include <cmath>

#include "kernels/decode_ops.h"

namespace glmserve::kernels {

void RotaryKvWriteReference(float* qkv, const int64_t* positions, const float* inv_freq, const int64_t* slots,
                            float* k_cache, float* v_cache, const RotaryKvShape& s) {
  const int64_t q_size = int64_t{s.num_heads} * s.head_dim, kv_size = int64_t{s.num_kv_heads} * s.head_dim;
  for (int32_t t = 0; t < s.tokens; ++t) {
    float* row = qkv + t * s.qkv_row_stride;
    for (int32_t h = 0; h < s.num_heads + s.num_kv_heads; ++h) {
      float* head = row + int64_t{h} * s.head_dim;  // q heads, then k heads (adjacent in the row)
      for (int32_t j = 0; j < s.rotary_dim / 2; ++j) {
        const int64_t component = s.frequency_component != nullptr ? s.frequency_component[j] : 0;
        const float angle = static_cast<float>(positions[component * s.tokens + t]) * inv_freq[j];
        const float c = std::cos(angle), sn = std::sin(angle);
        const float even = head[2 * j], odd = head[2 * j + 1];
        head[2 * j] = even * c - odd * sn;
        head[2 * j + 1] = odd * c + even * sn;
      }
    }
    const float* k = row + q_size;
    const float* v = row + q_size + kv_size;
    for (int64_t i = 0; i < kv_size; ++i) {
      k_cache[slots[t] * kv_size + i] = k[i];
      v_cache[slots[t] * kv_size + i] = v[i];
    }
  }
}

void RotateHalfReference(const float* x, int64_t x_row_stride, const float* cos, const float* sin, float* out,
                         int64_t rows, int32_t heads, int32_t head_dim) {
  const int32_t half = head_dim / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const float* c = cos + r * head_dim;
    const float* sn = sin + r * head_dim;
    for (int32_t h = 0; h < heads; ++h) {
      const float* in = x + r * x_row_stride + int64_t{h} * head_dim;
      float* o = out + (r * heads + h) * head_dim;
      for (int32_t i = 0; i < half; ++i) {
        o[i] = in[i] * c[i] + -in[i + half] * sn[i];
        o[i + half] = in[i + half] * c[i + half] + in[i] * sn[i + half];
      }
    }
  }
}

void SwiGluReference(const float* gate_up, float* out, int64_t rows, int64_t width) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < width; ++i) {
      const float gate = gate_up[r * 2 * width + i], up = gate_up[r * 2 * width + width + i];
      out[r * width + i] = up * (gate / (1.0f + std::exp(-gate)));
    }
  }
}

void GemvReference(const float* x, const float* w, const float* bias, float* y, int32_t rows, int64_t n, int64_t k) {
  for (int32_t m = 0; m < rows; ++m) {
    for (int64_t o = 0; o < n; ++o) {
      double acc = bias != nullptr ? bias[o] : 0.0;
      for (int64_t i = 0; i < k; ++i) acc += static_cast<double>(x[m * k + i]) * w[o * k + i];
      y[m * n + o] = static_cast<float>(acc);
    }
  }
}

}  // namespace glmserve::kernels
