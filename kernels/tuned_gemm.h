// y[rows, n] = x[rows, k] · w[n, k]^T (+ bias[n]) through cuBLASLt (bf16 or fp16, fp32
// accumulation), with the algorithm chosen by timing rather than by cuBLASLt's heuristic.
//
// Why: for decode batches (8-64 rows against GLM-4-9B's 4096 x 4096 ... 27392 x 4096 weights)
// the heuristic's first pick leaves the output tiles in waves that do not fill the SMs, so the
// weights stream at 2.1-2.6 TB/s. For each (device, type, n, k, bias, alignment, rows) with rows
// a power of two (the decode graph buckets), the first call times up to kTunedGemmCandidates of
// cuBLASLt's candidates (split-K and other tile shapes included), each on a cold L2, and the
// fastest is remembered for the process. Other row counts, and calls made while the stream is
// capturing a CUDA graph before any eager call of that shape, use the heuristic's first pick.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/element_type.h"

namespace glmserve::kernels {

constexpr int kTunedGemmCandidates = 24;

// Bytes of device workspace a call wants (split-K partial sums; also the buffer the timing
// writes over to push the weights out of L2): 64 MiB, any contents, held until the call's
// kernels end. 0 without CUDA.
size_t TunedGemmWorkspaceBytes();

// False (nothing launched) when the build has no cuBLASLt, the type is fp32, a pointer is not
// 16-byte aligned, k is not a multiple of 8, or cuBLASLt refuses every candidate; the caller
// then runs its own GEMM. x, w and y are contiguous row-major; bias may be null.
bool TunedGemmCuda(const void* x, const void* w, const void* bias, void* y, int32_t rows, int64_t n, int64_t k,
                   ElementType type, void* workspace, size_t workspace_bytes, void* stream);

// Set GLMSERVE_TUNED_GEMM_LOG=1 to have each tuning print its shape, the heuristic's first pick
// and the chosen algorithm's microseconds on stderr.

}  // namespace glmserve::kernels
