// Epilogues of the one-row decode projections (decode_ops.cu's GEMV): GLM's rotary pair, SwiGLU,
// and the rotary + KV write of one token's qkv pair, rounded as the kernels they replace round.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/decode_ops.h"
#include "kernels/device_math.cuh"

namespace glmserve::kernels {

template <typename T>
__device__ __forceinline__ void RotatePair(float position, float freq, float& even, float& odd) {
  // __f*_rn: no fused multiply-add, so fp32 rounds exactly as the separate ATen ops do.
  const float angle = __fmul_rn(position, freq);
  const float c = RoundTo<T>(cosf(angle)), sn = RoundTo<T>(sinf(angle));
  const float rotated_even = __fsub_rn(RoundTo<T>(__fmul_rn(even, c)), RoundTo<T>(__fmul_rn(odd, sn)));
  const float rotated_odd = __fadd_rn(RoundTo<T>(__fmul_rn(odd, c)), RoundTo<T>(__fmul_rn(even, sn)));
  even = rotated_even;
  odd = rotated_odd;
}

template <typename T>
__device__ __forceinline__ float SwiGlu(float gate, float up) {
  const float silu = RoundTo<T>(__fdiv_rn(gate, __fadd_rn(1.0f, expf(-gate))));
  return __fmul_rn(up, silu);
}

// The rotary + KV write a one-row qkv GEMV may do last (GemvEpilogue::kRotaryKv), as
// RotaryKvWriteKernel does it for one token.
template <typename T>
struct GemvRotary {
  const int64_t* positions = nullptr;  // [1], or [3, 1] with shape.frequency_component
  const float* inv_freq = nullptr;
  const int64_t* slot = nullptr;  // [1]
  T* k_cache = nullptr;
  T* v_cache = nullptr;
  RotaryKvShape shape;
};

// The caller's arguments (decode_ops.h) with the caches typed.
template <typename T>
GemvRotary<T> GemvRotaryOf(const GemvRotaryKvArgs& args) {
  GemvRotary<T> rotary;
  rotary.positions = args.positions;
  rotary.inv_freq = args.inv_freq;
  rotary.slot = args.slot;
  rotary.k_cache = static_cast<T*>(args.k_cache);
  rotary.v_cache = static_cast<T*>(args.v_cache);
  rotary.shape = args.shape;
  return rotary;
}

// One pair (row f, f + 1; f even, one head's) of a one-token qkv projection, already rounded:
// rotated where the rotary kernel rotates it, stored to qkv (y, n wide), and a k or v head's pair
// copied into its cache slot, as RotaryKvWriteKernel does for token 0.
template <typename T>
__device__ __forceinline__ void RotaryKvPair(const GemvRotary<T>& a, int64_t f, T even, T odd, T* qkv, int64_t n) {
  const RotaryKvShape& s = a.shape;
  const int head = static_cast<int>(f / s.head_dim), e = static_cast<int>(f % s.head_dim), p = e / 2;
  if (head < s.num_heads + s.num_kv_heads && p < s.rotary_dim / 2) {
    float even_f = ToFloat(even), odd_f = ToFloat(odd);
    const int64_t* components = s.frequency_component;
    const float position = static_cast<float>(a.positions[components != nullptr ? components[p] : 0]);
    RotatePair<T>(position, a.inv_freq[p], even_f, odd_f);
    even = FromFloat<T>(even_f);
    odd = FromFloat<T>(odd_f);
  }
  qkv[f] = even;
  if (f + 1 < n) qkv[f + 1] = odd;
  if (head >= s.num_heads) {
    const bool v_head = head >= s.num_heads + s.num_kv_heads;
    const int kv_head = head - s.num_heads - (v_head ? s.num_kv_heads : 0);
    T* cache = v_head ? a.v_cache : a.k_cache;
    const int64_t at = a.slot[0] * s.num_kv_heads * s.head_dim + static_cast<int64_t>(kv_head) * s.head_dim + e;
    cache[at] = even;
    cache[at + 1] = odd;
  }
}

}  // namespace glmserve::kernels
