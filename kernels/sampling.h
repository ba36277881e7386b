// Temperature / top-k / top-p sampling of whole logits rows on the GPU, picking exactly the id
// that runtime/model/sampler.cc's SampleNextToken picks for a row without penalties or stop-id masking
// (rows with them go through ApplyPenalties below first, which makes them such rows):
//   scores = logits / temperature (fp32 division); stable sort descending (ties: lower id first);
//   keep the top_k and every score equal to the k-th (all when top_k <= 0); probs = exp(double(score - max_score))
//   (-inf -> 0); if 0 < top_p < 1, keep the shortest prefix whose running sum of probs[i] / total reaches top_p and
//   re-total it; target = uniform * total; the first id whose running sum of probs exceeds target, else the last kept
//   id. temperature <= 0 takes the argmax (first maximum).
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
//   - top_k < vocab and the scores equal to the k-th take the kept tokens past kSamplingCandidates,
//     or top_k is 1 and the largest score is shared;
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
// SampleNextToken never sees. Sort-based, as runtime/model/sampler.cc. Nothing is written when vocab <= 0
// or rows <= 0.
void SampleRowsReference(const float* logits, int32_t rows, int32_t vocab, const SamplingRow* params, int32_t* out_ids);

// CUDA: same on device pointers (logits, params and out_ids all in device memory), launched on
// `stream` (cudaStream_t): out_ids[r] is the reference's id or -1 (see above). One thread block
// per row. True with rows == 0 (nothing launched); false when vocab <= 0, rows < 0, a pointer is
// null, there is no CUDA device or the launch failed (out_ids then unspecified).
bool SampleRowsCuda(const float* logits, int32_t rows, int32_t vocab, const SamplingRow* params, int32_t* out_ids,
                    void* stream);

// ---- Penalties and stop-id masking, before the sampling above (runtime/model/sampler.cc's order) ----
//
// Per-sequence token tables live on the device, one row ("slot") per sequence, [slots, vocab]
// row-major: counts[slot][id] = how often id was generated (the prompt does not count);
// seen[slot][id] = 1 when id is anywhere in the sequence (prompt or generated), else 0. Every id
// with a count > 0 is seen (CountTokens keeps that). ApplyPenalties changes each row of fp32
// logits in place, exactly as SampleNextToken does on the host, in this order:
//   1. repetition (transformers' RepetitionPenaltyLogitsProcessor, over every seen id):
//        score = score < 0 ? score * repetition : score / repetition
//   2. frequency / presence (OpenAI, over the generated ids):
//        score -= frequency * float(count) + presence      (fp32, each operation rounded:
//        no fused multiply-add, so the device's result is the host's bit for bit)
//   3. stop ids (MinNewTokensLengthLogitsProcessor): score = -inf for the row's stop ids.
struct PenaltyRow {
  int32_t slot = -1;        // row of counts / seen; < 0: steps 1-2 are skipped (no penalties)
  float repetition = 1.0f;  // 1: step 1 skipped
  float frequency = 0.0f;
  float presence = 0.0f;
  int32_t stop_begin = 0;  // this row masks stop_ids[stop_begin, stop_begin + stop_count)
  int32_t stop_count = 0;  // 0 once num_generated >= min_new_tokens; ids outside [0, vocab) are skipped
};

// One penalised score, the expression both sides use (each operation rounded to nearest).
GLMSERVE_SAMPLING_HOST_DEVICE inline float RepetitionPenalised(float score, float repetition) {
#if defined(__CUDA_ARCH__)
  return score < 0.0f ? __fmul_rn(score, repetition) : __fdiv_rn(score, repetition);
#else
  return score < 0.0f ? score * repetition : score / repetition;
#endif
}

GLMSERVE_SAMPLING_HOST_DEVICE inline float FrequencyPresencePenalised(float score, int32_t count, float frequency,
                                                                      float presence) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(score, __fadd_rn(__fmul_rn(frequency, static_cast<float>(count)), presence));
#else
  // The host build has no -ffp-contract / FMA target flags (x86-64 baseline), so this is three
  // rounded operations, like the device's.
  return score - (frequency * static_cast<float>(count) + presence);
#endif
}

// One seen id's score after the row's penalties: repetition (when not 1), then frequency and
// presence (when the id was generated). The one expression the kernel, its reference and the host
// sampler use.
GLMSERVE_SAMPLING_HOST_DEVICE inline float PenalisedScore(float score, int32_t generated_count, const PenaltyRow& p) {
  if (p.repetition != 1.0f) score = RepetitionPenalised(score, p.repetition);
  if (generated_count > 0) score = FrequencyPresencePenalised(score, generated_count, p.frequency, p.presence);
  return score;
}

// CPU reference: applies `params[r]` to row r of `logits` ([rows, vocab], host pointers). counts
// and seen ([slots, vocab]) may be null when no row has slot >= 0; stop_ids may be null when no
// row has stop_count > 0. Nothing happens when rows <= 0 or vocab <= 0.
void ApplyPenaltiesReference(float* logits, int32_t rows, int32_t vocab, const PenaltyRow* params,
                             const int32_t* counts, const uint8_t* seen, const int32_t* stop_ids);

// CPU reference of the table update: for each k < n with slots[k] >= 0 and 0 <= ids[k] < vocab,
// seen[slots[k]][ids[k]] = 1 and, when counted is null or counted[k] != 0, counts[...] += 1.
// Entries with a negative slot or id (a row the device left undecided) are skipped.
void CountTokensReference(int32_t* counts, uint8_t* seen, int32_t vocab, const int32_t* slots, const int32_t* ids,
                          const uint8_t* counted, int32_t n);

// CUDA: ApplyPenaltiesReference on device pointers, launched on `stream` (cudaStream_t). True
// with rows == 0; false when vocab <= 0, rows < 0 or > 65535, logits or params is null, there is
// no CUDA device or a launch failed. The caller guarantees that counts/seen are valid for every slot a
// row names, and stop_ids for every stop range.
bool ApplyPenaltiesCuda(float* logits, int32_t rows, int32_t vocab, const PenaltyRow* params, const int32_t* counts,
                        const uint8_t* seen, const int32_t* stop_ids, void* stream);

// CUDA: CountTokensReference on device pointers (counts by atomicAdd), launched on `stream`.
// No host synchronisation: the executor runs it on the ids the sampler just wrote. True with
// n == 0; false when vocab <= 0, n < 0, a required pointer is null or the launch failed.
bool CountTokensCuda(int32_t* counts, uint8_t* seen, int32_t vocab, const int32_t* slots, const int32_t* ids,
                     const uint8_t* counted, int32_t n, void* stream);

}  // namespace glmserve::kernels
