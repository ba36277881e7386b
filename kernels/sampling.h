// Temperature / top-k / top-p sampling of whole logits rows on the GPU, picking exactly the id
// that runtime/sampler.cc's SampleNextToken picks for a row without penalties or stop-id masking:
//   scores = logits / temperature (fp32 division); stable sort descending (ties: lower id first);
//   keep the top_k (all when top_k <= 0); probs = exp(double(score - max_score)) (-inf -> 0);
//   if 0 < top_p < 1, keep the shortest prefix whose running sum of probs[i] / total reaches
//   top_p and re-total it; target = uniform * total; the first id whose running sum of probs
//   exceeds target, else the last kept id. temperature <= 0 takes the argmax (first maximum).
//
// What is exact. The sort order, the fp32 scores and every double operation on the sorted
// candidates are the CPU's, in the CPU's order. Two things can differ: the device's double exp
// (CUDA: <= 1 ulp) against glibc's, in the last bits; and, when every token is kept (top_k <= 0
// or >= vocab) and vocab > kSamplingCandidates, the normalising total, which the device sums over
// the whole row in another order and with fp32 exp (CUDA expf: <= 2 ulp, so <= 2.4e-7 relative
// per term; terms that underflow fp32 are below 2^-126 against a total >= 1). Each comparison the
// CPU makes (running mass against top_p, target against a running sum) is therefore taken on the
// device only when it clears a margin well above those errors (SamplingDecisionMargin); inside
// the margin the row comes back -1. So a decided row is the CPU's id, and -1 means "sample this
// row on the host".
//
// A row is -1 (host decides) when:
//   - a score is NaN, or (temperature > 0) the largest score is +inf or every score is -inf;
//   - (temperature > 0) uniform is outside [0, 1);
//   - kSamplingCandidates < top_k < vocab (the kept total needs elements beyond the candidates);
//   - every token is kept, vocab > kSamplingCandidates, and the decision is not reached within the
//     kSamplingCandidates most likely tokens (the nucleus does not close there, or, without
//     top_p, the target lies beyond their running sum);
//   - a decision falls inside the margin (for random uniforms, probability about 1e-9 per row
//     when every kept token is a candidate, about 1e-6 when the whole-row total is used).
#pragma once

#include <cstdint>

namespace glmserve::kernels {

struct SamplingRow {
  float temperature = 0.0f;  // <= 0: argmax
  int32_t top_k = 0;         // <= 0: no limit
  float top_p = 1.0f;        // applied when 0 < top_p < 1
  double uniform = 0.0;      // the draw in [0, 1): runtime's SamplingUniform(seed, num_generated)
};

// Candidates the device sorts per row: the top_k (when <= this) or the most likely this many.
inline constexpr int32_t kSamplingCandidates = 1024;

#if defined(__CUDACC__)
#define GLMSERVE_SAMPLING_HOST_DEVICE __host__ __device__
#else
#define GLMSERVE_SAMPLING_HOST_DEVICE
#endif

// The margin inside which the device leaves a decision to the host: absolute on the running mass
// compared with top_p, relative to the total on the running sums compared with uniform * total.
// With every kept token among the candidates the sums match the CPU's order and only exp's last
// bits differ (a few 2^-53 per term, 1024 terms at most): 1e-9 is far above that. With the
// whole-row total (whole_vocab_total) the errors are 2.4e-7 (expf) plus 2 vocab 2^-53
// (summation order), relative: the margin is 1e-6 plus four times the second term.
GLMSERVE_SAMPLING_HOST_DEVICE inline double SamplingDecisionMargin(int32_t vocab, bool whole_vocab_total) {
  return whole_vocab_total ? 1e-6 + 4.0 * 2.220446049250313e-16 * static_cast<double>(vocab > 0 ? vocab : 0) : 1e-9;
}

// CPU reference: out_ids[r] = the id SampleNextToken picks for row r (host pointers; logits
// [rows, vocab] row-major fp32), or -1 where a score is NaN or uniform is outside [0, 1), which
// SampleNextToken never sees. Sort-based, as runtime/sampler.cc. Nothing is written when vocab <= 0
// or rows <= 0.
void SampleRowsReference(const float* logits, int32_t rows, int32_t vocab, const SamplingRow* params,
                         int32_t* out_ids);

// CUDA: same on device pointers (logits, params and out_ids all in device memory), launched on
// `stream` (cudaStream_t): out_ids[r] is the reference's id or -1 (see above). One thread block
// per row. True with rows == 0 (nothing launched); false when vocab <= 0, rows < 0, a pointer is
// null, there is no CUDA device or the launch failed (out_ids then unspecified).
bool SampleRowsCuda(const float* logits, int32_t rows, int32_t vocab, const SamplingRow* params, int32_t* out_ids,
                    void* stream);

}  // namespace glmserve::kernels
