// Choosing the next token from a row of logits. LibTorch-free, shared by CPU and CUDA paths.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/generation.h"

namespace glmserve {

// Returns the next id. `stop_ids` are masked out (as transformers' MinNewTokensLengthLogitsProcessor
// does) while num_generated < params.min_new_tokens. Greedy when temperature is 0; otherwise
// temperature, then top-k, then top-p (transformers' order), then a draw whose random number is a
// pure function of (seed, num_generated): batching, preemption and recompute never change it.
// `history` (prompt + generated ids, the last num_generated of them generated) feeds the
// penalties, applied first, in this order: the repetition penalty over every distinct id of the
// history (transformers: score < 0 ? score * p : score / p), then the frequency/presence
// penalties over the generated ids (score -= frequency * count + presence, fp32); then the stop
// masking. Null history = no penalties. The CUDA path (kernels/sampling.h: ApplyPenalties, then
// SampleRows) computes the same scores bit for bit.
int32_t SampleNextToken(const float* logits, int32_t vocab_size, const GenerationParams& params,
                        const std::vector<int32_t>& stop_ids, int32_t num_generated,
                        const std::vector<int32_t>* history = nullptr);

// The draw's uniform in [0, 1) (53 random bits), a pure function of (seed, step). SampleNextToken
// uses SamplingUniform(params.sampling.seed, num_generated); the CUDA sampler
// (kernels/sampling.h) takes the same number so both pick the same id.
double SamplingUniform(uint64_t seed, int32_t step);

}  // namespace glmserve
