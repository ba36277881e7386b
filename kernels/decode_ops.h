// Fused element-wise steps of a decode layer, each one kernel instead of a chain of ATen ops:
// rotary embedding applied in place plus the K/V cache write, SwiGLU, and a GEMV (a few rows) and
// a tensor-core GEMM (up to 64 rows) for the linear layers of decode batches. Each has a CPU
// reference (fp32) with the same contract; the CUDA versions take device pointers, run on
// `stream` (cudaStream_t), and return false on a bad shape or launch error. The element type is
// the model's compute dtype.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/element_type.h"

namespace glmserve::kernels {

struct RotaryKvShape {
  int32_t tokens = 0;
  int32_t num_heads = 0;  // query heads
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t rotary_dim = 0;      // leading dims of each head that rotate (even, <= head_dim); 0 = none
  int64_t qkv_row_stride = 0;  // elements between tokens' rows of qkv
  // 3-D rotary (glm4v's mrope): null, or rotary_dim / 2 entries (0, 1 or 2), one per frequency,
  // naming the row of positions ([3, tokens], component-major) that drives it. Same memory as
  // positions (device for the CUDA kernel).
  const int64_t* frequency_component = nullptr;
};

// qkv: [tokens, qkv_row_stride] holding q (num_heads * head_dim), then k, then v (num_kv_heads *
// head_dim each). Rotates q and k in place, GLM style: interleaved pairs (2j, 2j + 1) of the
// first rotary_dim dims turn by positions[t] * inv_freq[j]. Then writes k and v of token t into
// row slots[t] of k_cache / v_cache ([slots, num_kv_heads, head_dim]).
// Rounding follows the ATen ops it replaces (transformers' apply_rotary_pos_emb): cos and sin
// are computed in fp32 and rounded to the dtype, and each product and sum is rounded to it.
void RotaryKvWriteReference(float* qkv, const int64_t* positions, const float* inv_freq, const int64_t* slots,
                            float* k_cache, float* v_cache, const RotaryKvShape& shape);
bool RotaryKvWriteCuda(void* qkv, const int64_t* positions, const float* inv_freq, const int64_t* slots, void* k_cache,
                       void* v_cache, const RotaryKvShape& shape, ElementType type, void* stream);

// GLM-4.1V's vision rotary (transformers' apply_rotary_pos_emb_vision): for each row r and head h
// of x ([rows, heads, head_dim] whose rows are x_row_stride elements apart, heads adjacent),
// out = x * cos + rotate_half(x) * sin computed in fp32 and rounded once to the element type;
// rotate_half(x) = (-x[half:], x[:half]). cos, sin: fp32 [rows, head_dim]; out: [rows, heads,
// head_dim] contiguous. head_dim even.
void RotateHalfReference(const float* x, int64_t x_row_stride, const float* cos, const float* sin, float* out,
                         int64_t rows, int32_t heads, int32_t head_dim);
bool RotateHalfCuda(const void* x, int64_t x_row_stride, const float* cos, const float* sin, void* out, int64_t rows,
                    int32_t heads, int32_t head_dim, ElementType type, void* stream);

// gate_up: [rows, 2 * width] (gate, then up); out[r][i] = up * silu(gate), [rows, width].
// Rounding as ATen's `up * silu(gate)`: silu in fp32, rounded, then the product rounded.
void SwiGluReference(const float* gate_up, float* out, int64_t rows, int64_t width);
bool SwiGluCuda(const void* gate_up, void* out, int64_t rows, int64_t width, ElementType type, void* stream);

// y[m][n] = sum_k x[m][k] * w[n][k] (+ bias[n]) for a few rows m: x [rows, k], w [n, k] (a
// linear layer's weight, row-major), y [rows, n]; fp32 accumulation, rounded once.
void GemvReference(const float* x, const float* w, const float* bias, float* y, int32_t rows, int64_t n, int64_t k);
// Rows the CUDA GEMV takes; above it a tensor-core GEMM is faster.
constexpr int32_t kGemvMaxRows = 8;
// True when the CUDA GEMV takes this shape (rows <= kGemvMaxRows, k a multiple of 16 bytes of the
// element type, pointers 16-byte aligned).
bool GemvCudaTakes(int32_t rows, int64_t k, ElementType type, const void* x, const void* w);
bool GemvCuda(const void* x, const void* w, const void* bias, void* y, int32_t rows, int64_t n, int64_t k,
              ElementType type, void* stream);
// What GemvAddRmsNormCuda's rotary epilogue takes: RotaryKvWriteCuda's arguments for one token.
struct GemvRotaryKvArgs {
  const int64_t* positions = nullptr;  // device: [1], or [3, 1] with shape.frequency_component
  const float* inv_freq = nullptr;     // null only when shape.rotary_dim is 0
  const int64_t* slot = nullptr;       // device: [1]
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  RotaryKvShape shape;  // head_dim even; tokens and qkv_row_stride are not read
};
// Whether the rotary epilogue takes these heads after a qkv projection n wide: each pair inside
// one head (head_dim even), rotary_dim even and within the head, inverse frequencies wherever
// anything rotates, n exactly the heads' width.
inline bool GemvRotaryKvShapeFits(const RotaryKvShape& s, bool has_inv_freq, int64_t n) {
  return s.num_heads > 0 && s.num_kv_heads > 0 && s.head_dim > 0 && s.head_dim % 2 == 0 && s.rotary_dim >= 0 &&
         s.rotary_dim % 2 == 0 && s.rotary_dim <= s.head_dim && (s.rotary_dim == 0 || has_inv_freq) &&
         n == int64_t{s.num_heads + 2 * s.num_kv_heads} * s.head_dim;
}

// One row's add+RMSNorm and the projection after it in one launch: the GEMV's input is
// RMSNorm(residual + delta) * norm_weight (delta may be null; delta_weight normalises it first, as
// FusedNormAddRmsNormCudaTyped), residual + delta goes to residual_out (another buffer: every block
// reads residual), y = that row times w^T (+ bias), [1, n]. With swiglu (w gate_up's) y is
// up * silu(gate), [1, n / 2]; with rotary_kv (w qkv's, n = (heads + 2 kv heads) * head_dim) q and
// k are rotated in y and k and v written to the caches. Bit-equal to the norm kernel, then
// GemvCuda, then SwiGluCuda or RotaryKvWriteCuda. k (the hidden size) up to
// kGemvAddRmsNormMaxChunks 16-byte chunks.
constexpr int64_t kGemvAddRmsNormMaxChunks = 1024;
bool GemvAddRmsNormCuda(const void* delta, const void* delta_weight, const void* residual, void* residual_out,
                        const void* norm_weight, float eps, const void* w, const void* bias, void* y, int64_t n,
                        int64_t k, bool swiglu, const GemvRotaryKvArgs* rotary_kv, ElementType type, void* stream);
// One row through gate_up and SwiGLU in one launch: w is gate_up's weight [n = 2 I, k], y [1, I]
// = up * silu(gate) of the GEMV's rounded outputs, bit-equal to GemvCuda then SwiGluCuda.
bool GemvSwiGluCuda(const void* x, const void* w, const void* bias, void* y, int32_t rows, int64_t n, int64_t k,
                    ElementType type, void* stream);

// Asks L2 for `bytes` of `data` (a weight the next kernels read; 16-byte aligned) without waiting
// for it: one small kernel that issues bulk L2 prefetches (sm_90) once the kernel before it has
// ended, or with `early` as soon as it starts (beside that kernel's own stream, into its tail),
// and ends after the kernel before it. For the few-row decode steps, where the short kernels
// between two weight streams (rotary, attention, norms) leave HBM idle. False where it cannot run.
bool L2PrefetchCuda(const void* data, int64_t bytes, bool early, void* stream);

// The same product on tensor cores for decode batches of up to kSkinnyGemmMaxRows rows, bf16 or
// fp16 (kernels/skinny_gemm.cu): x [rows, k] contiguous, any n, k a multiple of 8. The weight is
// streamed once, every SM taking an equal share of (output tile, k block) units; the sum for an
// output does not depend on the row count or on timing.
constexpr int32_t kSkinnyGemmMaxRows = 64;
// Bytes of device workspace the GEMM needs on the current device (0 without one), any contents:
// a call zeroes the counters it uses (a kernel on `stream` before the GEMM's) and holds the
// workspace until that kernel ends, so calls on different streams need separate workspaces.
size_t SkinnyGemmWorkspaceBytes();
bool SkinnyGemmCudaTakes(int32_t rows, int64_t n, int64_t k, ElementType type, const void* x, const void* w);
// The tensor-core instructions it runs: warpgroup MMA (wgmma, the operands read straight from
// shared memory; where the kernels are built for sm_90a, else the same as kWarp) fed by cp.async
// (kWarpgroup) or by the tensor memory accelerator with the weight's first stages asked for
// before the kernel before it ends (kTma), or per-warp mma.sync fed by ldmatrix. All accumulate
// in fp32, k in the same order.
enum class SkinnyGemmMath { kWarpgroup, kWarp, kTma };
// "TMA + wgmma", "wgmma" or "mma.sync", for tables and test traces.
inline const char* SkinnyGemmMathName(SkinnyGemmMath math) {
  switch (math) {
    case SkinnyGemmMath::kTma:
      return "TMA + wgmma";
    case SkinnyGemmMath::kWarpgroup:
      return "wgmma";
    case SkinnyGemmMath::kWarp:
      return "mma.sync";
  }
  return "?";
}
bool SkinnyGemmCuda(const void* x, const void* w, const void* bias, void* y, int32_t rows, int64_t n, int64_t k,
                    ElementType type, void* workspace, void* stream, SkinnyGemmMath math = SkinnyGemmMath::kWarpgroup);

}  // namespace glmserve::kernels
