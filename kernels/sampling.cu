#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/sampling.h"

namespace glmserve::kernels {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr uint32_t kCandidates = kSamplingCandidates;
// Elements gathered into shared memory: the top candidates plus the rest of the histogram bin
// the last of them falls in.
constexpr uint32_t kBufferSize = 4096;
constexpr uint32_t kBufferPerThread = kBufferSize / kThreads;
// Loads each thread keeps in flight in a row pass (of 4 floats each where the row allows, else
// of 1); more would spill at 64 registers a thread.
constexpr int kLoadsInFlight = 4;
constexpr int kTopBits = 12;     // first histogram: sign, exponent and 3 mantissa bits of the key
constexpr int kRefineBits = 10;  // then 10 bits at a time (12 + 10 + 10 = 32)
constexpr uint32_t kTopBins = 1u << kTopBits;
constexpr uint32_t kRefineBins = 1u << kRefineBits;
static_assert(kCandidates <= kBufferSize / 4, "probs and shares reuse the buffer past the candidates");
static_assert(kTopBins * sizeof(uint32_t) <= kBufferSize * sizeof(unsigned long long), "histogram aliases the buffer");
static_assert(kTopBins % 32 == 0 && kRefineBins % 32 == 0, "SelectDigit splits the bins over one warp");

constexpr uint32_t kNegativeInfinityKey = 0x007FFFFFu;  // OrderedKey(-inf)
constexpr uint32_t kPositiveInfinityKey = 0xFF800000u;  // OrderedKey(+inf)

// Order-preserving map float -> uint32 (a > b as floats iff key(a) > key(b), NaN excluded).
// -0 and +0 compare equal on the CPU, so they share +0's key and tie-break by id like equals.
__device__ __forceinline__ uint32_t OrderedKey(float score) {
  uint32_t bits = __float_as_uint(score);
  if (bits == 0x80000000u) bits = 0u;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float ScoreFromKey(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// The CPU's `v /= temperature`: IEEE round-to-nearest whatever the compiler flags.
__device__ __forceinline__ float Score(float logit, float temperature, bool greedy) {
  return greedy ? logit : __fdiv_rn(logit, temperature);
}

// Candidates sort descending by this: score first, then the lower id (the stable sort's order).
// Zero sorts below every real element (whose key is at least OrderedKey(-inf)).
__device__ __forceinline__ unsigned long long SortKey(uint32_t key, uint32_t id) {
  return (static_cast<unsigned long long>(key) << 32) | static_cast<unsigned long long>(~id);
}

__device__ __forceinline__ uint32_t IdOf(unsigned long long sort_key) { return ~static_cast<uint32_t>(sort_key); }

// Calls visit(id, valid, score) for every id of the row, in no particular order, several loads
// in flight per thread. Every thread makes the same number of calls.
template <typename Visit>
__device__ __forceinline__ void ForEachScore(const float* __restrict__ row, uint32_t vocab, float temperature,
                                             bool greedy, Visit&& visit) {
  if (vocab % 4 == 0 && reinterpret_cast<uintptr_t>(row) % 16 == 0) {  // block-uniform
    const float4* row4 = reinterpret_cast<const float4*>(row);
    const uint32_t quads = vocab / 4;
    for (uint32_t base = 0; base < quads; base += kThreads * kLoadsInFlight) {
      float4 logit[kLoadsInFlight];
#pragma unroll
      for (int k = 0; k < kLoadsInFlight; ++k) {
        const uint32_t q = base + k * kThreads + threadIdx.x;
        logit[k] = q < quads ? __ldg(row4 + q) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int k = 0; k < kLoadsInFlight; ++k) {
        const uint32_t q = base + k * kThreads + threadIdx.x;
        const bool valid = q < quads;
        visit(4 * q, valid, Score(logit[k].x, temperature, greedy));
        visit(4 * q + 1, valid, Score(logit[k].y, temperature, greedy));
        visit(4 * q + 2, valid, Score(logit[k].z, temperature, greedy));
        visit(4 * q + 3, valid, Score(logit[k].w, temperature, greedy));
      }
    }
    return;
  }
  for (uint32_t base = 0; base < vocab; base += kThreads * kLoadsInFlight) {
    float logit[kLoadsInFlight];
#pragma unroll
    for (int k = 0; k < kLoadsInFlight; ++k) {
      const uint32_t i = base + k * kThreads + threadIdx.x;
      logit[k] = i < vocab ? __ldg(row + i) : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < kLoadsInFlight; ++k) {
      const uint32_t i = base + k * kThreads + threadIdx.x;
      visit(i, i < vocab, Score(logit[k], temperature, greedy));
    }
  }
}

// Like ForEachScore, but the calls go through the ids in chunks of kThreads consecutive ids, in
// increasing order, one id per thread and chunk, so visit may rank ids across the block (and
// hold barriers).
template <typename Visit>
__device__ __forceinline__ void ForEachScoreInIdChunks(const float* __restrict__ row, uint32_t vocab, float temperature,
                                                       bool greedy, Visit&& visit) {
  for (uint32_t base = 0; base < vocab; base += kThreads) {
    const uint32_t i = base + threadIdx.x;
    visit(i, i < vocab, Score(i < vocab ? __ldg(row + i) : 0.0f, temperature, greedy));
  }
}

struct DigitChoice {
  uint32_t digit;      // the bin holding the wanted element
  uint32_t remaining;  // its rank (1 = largest) among that bin's elements
  uint32_t count;      // elements in that bin
};

// Run by warp 0: scans the bins from the largest digit down to the one holding the
// `remaining`-th largest element.
template <uint32_t kBins>
__device__ void SelectDigit(const uint32_t* histogram, uint32_t remaining, DigitChoice* choice) {
  constexpr int kPerLane = kBins / 32;
  const int lane = threadIdx.x & 31;
  const int top = static_cast<int>(kBins) - 1 - lane * kPerLane;
  uint32_t local = 0;
  for (int j = 0; j < kPerLane; ++j) local += histogram[top - j];
  uint32_t inclusive = local;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const uint32_t v = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += v;
  }
  uint32_t before = inclusive - local;
  if (before < remaining && remaining <= inclusive) {
    for (int j = 0; j < kPerLane; ++j) {
      const uint32_t count = histogram[top - j];
      if (before + count >= remaining) {
        *choice = DigitChoice{static_cast<uint32_t>(top - j), remaining - before, count};
        return;
      }
      before += count;
    }
  }
}

__device__ double BlockSum(double v, double* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double total = lane < kWarps ? scratch[lane] : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) total += __shfl_xor_sync(0xffffffffu, total, offset);
    if (lane == 0) scratch[0] = total;
  }
  __syncthreads();
  const double total = scratch[0];
  __syncthreads();
  return total;
}

__device__ uint32_t BlockMax(uint32_t v, uint32_t* scratch) {
  v = __reduce_max_sync(0xffffffffu, v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const uint32_t m = __reduce_max_sync(0xffffffffu, lane < kWarps ? scratch[lane] : 0u);
    if (lane == 0) scratch[0] = m;
  }
  __syncthreads();
  const uint32_t result = scratch[0];
  __syncthreads();
  return result;
}

// Descending bitonic sort of buffer[0, size), size a power of two <= kBufferSize.
__device__ void SortDescending(unsigned long long* buffer, uint32_t size) {
  for (uint32_t k = 2; k <= size; k <<= 1) {
    for (uint32_t j = k >> 1; j > 0; j >>= 1) {
      for (uint32_t pair = threadIdx.x; pair < size / 2; pair += kThreads) {
        const uint32_t i = 2 * j * (pair / j) + pair % j;
        const unsigned long long a = buffer[i], b = buffer[i + j];
        if ((i & k) == 0 ? a < b : a > b) {
          buffer[i] = b;
          buffer[i + j] = a;
        }
      }
      __syncthreads();
    }
  }
}

// One block per row.
//  Pass 1 over the row: NaN check, the largest key, a histogram of the keys' top 12 bits; the bin
//    holding the num_candidates-th largest element follows. Rarely (that bin plus everything above
//    it would overflow the buffer: heavy ties) further passes narrow the threshold 10 bits at a time.
//  Pass 2 (gather): every element at or above the threshold bin goes to shared memory (and, when
//    the whole vocab is kept, exp(score - max) is summed over the row). The threshold is narrowed
//    within that buffer until exactly num_candidates remain, and a bitonic sort by
//    (score desc, id asc) puts them in the CPU's order. When the threshold is one exact key
//    shared by too many elements, the lowest ids among them are taken by ranking them chunk by
//    chunk instead.
//  Then SampleNextToken's double arithmetic on the sorted candidates, the order-dependent sums
//  by one thread in the CPU's order.
__global__ void __launch_bounds__(kThreads)
    SampleRowsKernel(const float* __restrict__ logits, uint32_t vocab, const SamplingRow* __restrict__ params,
                     int32_t* __restrict__ out_ids) {
  __shared__ unsigned long long buffer[kBufferSize];
  __shared__ double double_scratch[kWarps];
  __shared__ uint32_t uint_scratch[kWarps];
  __shared__ uint32_t equal_counts[2][kWarps];
  __shared__ uint32_t small_histogram[kRefineBins];
  __shared__ DigitChoice choice;
  __shared__ uint32_t fill;
  __shared__ uint32_t lowest_equal_id;
  __shared__ uint32_t max_equal_count;  // elements sharing the largest key, counted when top_k is 1
  __shared__ double kept_total;
  // Until the gather the buffer holds the histogram; after the sort, past the candidates, the probs.
  uint32_t* histogram = reinterpret_cast<uint32_t*>(buffer);
  double* probs = reinterpret_cast<double*>(buffer + kBufferSize / 2);
  double* shares = reinterpret_cast<double*>(buffer + kBufferSize / 2 + kCandidates);  // probs[i] / total

  const int tid = threadIdx.x, lane = tid & 31, warp = tid / 32;
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const SamplingRow p = params[blockIdx.x];
  const bool greedy = p.temperature <= 0.0f;  // a NaN temperature makes NaN scores: undecided
  const float temperature = p.temperature;
  const uint32_t keep = greedy ? 1u : (p.top_k > 0 ? min(static_cast<uint32_t>(p.top_k), vocab) : vocab);
  const bool kept_are_candidates = keep <= kCandidates;
  const uint32_t num_candidates = kept_are_candidates ? keep : kCandidates;
  const bool use_top_p = !greedy && p.top_p > 0.0f && p.top_p < 1.0f;
  const bool top_k_limited = !greedy && keep < vocab;  // its ties with the k-th join the kept tokens
  // These conditions depend on the row's parameters only, so the whole block returns together.
  if (!greedy && (!(p.uniform >= 0.0 && p.uniform < 1.0) || (!kept_are_candidates && keep < vocab))) {
    if (tid == 0) out_ids[blockIdx.x] = -1;
    return;
  }

  // Pass 1.
  for (uint32_t i = tid; i < kTopBins; i += kThreads) histogram[i] = 0;
  __syncthreads();
  bool saw_nan = false;
  uint32_t max_key = 0;
  ForEachScore(row, vocab, temperature, greedy, [&](uint32_t, bool valid, float s) {
    if (!valid) return;
    if (isnan(s)) {
      saw_nan = true;
      return;
    }
    const uint32_t key = OrderedKey(s);
    max_key = max(max_key, key);
    if (num_candidates > 1) atomicAdd(&histogram[key >> (32 - kTopBits)], 1u);
  });
  saw_nan = __syncthreads_or(saw_nan);
  max_key = BlockMax(max_key, uint_scratch);
  // +inf or all -inf: the CPU's exp(score - max) is NaN or every prob 0; leave those to it.
  if (saw_nan || (!greedy && (max_key == kPositiveInfinityKey || max_key == kNegativeInfinityKey))) {
    if (tid == 0) out_ids[blockIdx.x] = -1;
    return;
  }
  const float max_score = ScoreFromKey(max_key);

  // Threshold: selected = (key & mask) > prefix (num_candidates - remaining of them), plus
  // `remaining` of the `count` elements with (key & mask) == prefix, the lowest ids.
  uint32_t prefix = max_key, mask = 0xFFFFFFFFu, remaining = 1, count = 0;
  bool count_known = false;  // num_candidates == 1: the lowest id of the largest key
  if (num_candidates > 1) {
    if (warp == 0) SelectDigit<kTopBins>(histogram, num_candidates, &choice);
    __syncthreads();
    int shift = 32 - kTopBits;
    prefix = choice.digit << shift;
    mask = 0xFFFFFFFFu << shift;
    remaining = choice.remaining;
    count = choice.count;
    count_known = true;
    while (num_candidates - remaining + count > kBufferSize && shift > 0) {
      shift -= kRefineBits;
      __syncthreads();  // everyone has read `choice` and the histogram
      for (uint32_t i = tid; i < kRefineBins; i += kThreads) histogram[i] = 0;
      __syncthreads();
      const uint32_t current_mask = mask, current_prefix = prefix;
      ForEachScore(row, vocab, temperature, greedy, [&](uint32_t, bool valid, float s) {
        const uint32_t key = OrderedKey(s);
        if (valid && (key & current_mask) == current_prefix) {
          atomicAdd(&histogram[(key >> shift) & (kRefineBins - 1)], 1u);
        }
      });
      __syncthreads();
      if (warp == 0) SelectDigit<kRefineBins>(histogram, remaining, &choice);
      __syncthreads();
      prefix |= choice.digit << shift;
      mask |= (kRefineBins - 1) << shift;
      remaining = choice.remaining;
      count = choice.count;
    }
  }
  const uint32_t num_above = num_candidates - remaining;
  const bool buffered = count_known && num_above + count <= kBufferSize;

  // Pass 2 (gather).
  __syncthreads();  // the histogram is dead: the buffer takes elements now
  if (tid == 0) {
    fill = 0;
    lowest_equal_id = 0xFFFFFFFFu;
    max_equal_count = 0;
  }
  __syncthreads();
  const bool needs_row_total = !kept_are_candidates;
  double row_total = 0.0;
  // expf (<= 2 ulp) keeps this pass cheap; SamplingDecisionMargin accounts for it.
  auto add_to_row_total = [&](uint32_t key, float s) {
    if (needs_row_total && key != kNegativeInfinityKey) row_total += static_cast<double>(expf(s - max_score));
  };
  uint32_t sort_count = num_candidates;
  if (buffered) {
    ForEachScore(row, vocab, temperature, greedy, [&](uint32_t i, bool valid, float s) {
      if (!valid) return;
      const uint32_t key = OrderedKey(s);
      if ((key & mask) >= prefix) buffer[atomicAdd(&fill, 1u)] = SortKey(key, i);
      add_to_row_total(key, s);
    });
    sort_count = num_above + count;
  } else {
    // The threshold is one exact key with more elements than the buffer takes.
    uint32_t equal_taken = 0;  // threshold-equal elements in earlier chunks
    int parity = 0;
    ForEachScoreInIdChunks(row, vocab, temperature, greedy, [&](uint32_t i, bool valid, float s) {
      const uint32_t key = OrderedKey(s);
      const bool is_equal = valid && key == prefix;
      if (valid) {
        if (key > prefix) buffer[atomicAdd(&fill, 1u)] = SortKey(key, i);
        if (is_equal && remaining == 1) {
          atomicMin(&lowest_equal_id, i);
          if (!count_known && top_k_limited) atomicAdd(&max_equal_count, 1u);
        }
        add_to_row_total(key, s);
      }
      if (remaining == 1) return;  // block-uniform
      const unsigned ballot = __ballot_sync(0xffffffffu, is_equal);
      if (lane == 0) equal_counts[parity][warp] = __popc(ballot);
      __syncthreads();
      uint32_t rank = equal_taken + __popc(ballot & ((1u << lane) - 1u));
      uint32_t chunk_equal = 0;
      for (int w = 0; w < kWarps; ++w) {
        if (w < warp) rank += equal_counts[parity][w];
        chunk_equal += equal_counts[parity][w];
      }
      if (is_equal && rank < remaining) buffer[num_above + rank] = SortKey(key, i);
      equal_taken += chunk_equal;
      parity ^= 1;  // the next chunk writes the other buffer, so one barrier per chunk suffices
    });
  }
  if (needs_row_total) row_total = BlockSum(row_total, double_scratch);
  __syncthreads();
  if (!buffered && remaining == 1 && tid == 0) buffer[num_candidates - 1] = SortKey(prefix, lowest_equal_id);

  // The sort costs the next power of two of its size, so when more than num_candidates were
  // gathered, narrow the threshold within the buffer and keep only the candidates. (When exact
  // ties straddle the threshold the whole buffer is sorted instead: its order settles them.)
  if (buffered && sort_count > num_candidates && num_candidates > 1) {
    while (count != remaining && mask != 0xFFFFFFFFu) {
      const int shift = 32 - __popc(mask) - kRefineBits;
      for (uint32_t i = tid; i < kRefineBins; i += kThreads) small_histogram[i] = 0;
      __syncthreads();
      for (uint32_t i = tid; i < sort_count; i += kThreads) {
        const uint32_t key = static_cast<uint32_t>(buffer[i] >> 32);
        if ((key & mask) == prefix) atomicAdd(&small_histogram[(key >> shift) & (kRefineBins - 1)], 1u);
      }
      __syncthreads();
      if (warp == 0) SelectDigit<kRefineBins>(small_histogram, remaining, &choice);
      __syncthreads();
      prefix |= choice.digit << shift;
      mask |= (kRefineBins - 1) << shift;
      remaining = choice.remaining;
      count = choice.count;
      __syncthreads();  // everyone has read `choice`
    }
    if (count == remaining) {
      unsigned long long kept[kBufferPerThread];
#pragma unroll
      for (uint32_t k = 0; k < kBufferPerThread; ++k) {
        const uint32_t i = tid + k * kThreads;
        const unsigned long long v = i < sort_count ? buffer[i] : 0ull;
        kept[k] = (static_cast<uint32_t>(v >> 32) & mask) >= prefix ? v : 0ull;
      }
      if (tid == 0) fill = 0;
      __syncthreads();
#pragma unroll
      for (uint32_t k = 0; k < kBufferPerThread; ++k) {
        if (kept[k] != 0ull) buffer[atomicAdd(&fill, 1u)] = kept[k];
      }
      sort_count = num_candidates;
      __syncthreads();
    }
  }

  // top_k keeps the elements equal to the k-th too (sampling.h). When some were left out (exact
  // ties straddle the threshold), the whole buffer is sorted and holds them right after the others;
  // past the buffer or the candidates' arrays, or for top_k 1 (only the lowest id was kept), the
  // host decides.
  uint32_t kept_count = num_candidates;
  if (top_k_limited) {
    const uint32_t equal_total = count_known ? count : max_equal_count;
    if (equal_total > remaining) {
      kept_count = num_candidates - remaining + equal_total;
      if (!buffered || kept_count > kCandidates) {
        if (tid == 0) out_ids[blockIdx.x] = -1;
        return;
      }
    }
  }

  uint32_t sort_size = 1;
  while (sort_size < sort_count) sort_size <<= 1;
  for (uint32_t i = sort_count + tid; i < sort_size; i += kThreads) buffer[i] = 0ull;
  __syncthreads();
  SortDescending(buffer, sort_size);
  if (greedy) {
    if (tid == 0) out_ids[blockIdx.x] = static_cast<int32_t>(IdOf(buffer[0]));
    return;
  }

  // SampleNextToken's arithmetic on the sorted candidates buffer[0, kept_count).
  for (uint32_t i = tid; i < kept_count; i += kThreads) {
    const uint32_t key = static_cast<uint32_t>(buffer[i] >> 32);
    probs[i] = key == kNegativeInfinityKey ? 0.0 : exp(static_cast<double>(ScoreFromKey(key) - max_score));
  }
  __syncthreads();
  if (tid == 0) {
    double total = 0.0;
    if (kept_are_candidates) {
#pragma unroll 8
      for (uint32_t i = 0; i < kept_count; ++i) total += probs[i];
    } else {
      total = row_total;
    }
    kept_total = total;
  }
  __syncthreads();
  if (use_top_p) {
    for (uint32_t i = tid; i < kept_count; i += kThreads) shares[i] = probs[i] / kept_total;
  }
  // With the whole vocab kept, rows whose decision lies beyond the candidates (flat distributions)
  // are told apart up front, so the walk below never scans all of them for nothing. The parallel
  // sum's rounding (a few 2^-53) is far inside the margin.
  double candidate_mass = 0.0;
  if (!kept_are_candidates) {
    double mine = 0.0;
    for (uint32_t i = tid; i < kept_count; i += kThreads) mine += probs[i];
    candidate_mass = BlockSum(mine, double_scratch);
  }
  __syncthreads();
  if (tid != 0) return;

  const double margin = SamplingDecisionMargin(static_cast<int32_t>(vocab), !kept_are_candidates);
  if (!kept_are_candidates) {
    const bool reachable = use_top_p ? candidate_mass / kept_total >= p.top_p - margin
                                     : p.uniform * kept_total < candidate_mass + margin * kept_total;
    if (!reachable) {
      out_ids[blockIdx.x] = -1;
      return;
    }
  }
  int32_t result = -1;
  double total = kept_total;
  uint32_t eligible = kept_count;              // leading candidates the draw walks
  bool eligible_closed = kept_are_candidates;  // no kept token lies beyond them
  bool undecided = false;
  if (use_top_p) {
    const double top_p = p.top_p;
    double mass = 0.0;
    bool closed = false;
#pragma unroll 8
    for (uint32_t i = 0; i < kept_count; ++i) {
      mass += shares[i];
      if (mass >= top_p - margin) {
        undecided = mass < top_p + margin;
        eligible = i + 1;
        closed = true;
        break;
      }
    }
    // Not reached: the CPU keeps every kept token, all of them here only when they are all candidates.
    eligible_closed = closed || kept_are_candidates;
    if (!undecided && eligible_closed) {
      total = 0.0;
#pragma unroll 8
      for (uint32_t i = 0; i < eligible; ++i) total += probs[i];
    }
  }
  if (!undecided && (eligible_closed || !use_top_p)) {
    const double target = p.uniform * total;
    const double slack = margin * total;
    double running = 0.0;
    bool found = false;
#pragma unroll 8
    for (uint32_t i = 0; i < eligible; ++i) {
      running += probs[i];
      if (target < running + slack) {
        found = true;
        if (target < running - slack) result = static_cast<int32_t>(IdOf(buffer[i]));
        break;
      }
    }
    if (!found && eligible_closed) result = static_cast<int32_t>(IdOf(buffer[eligible - 1]));
  }
  out_ids[blockIdx.x] = result;
}

constexpr int kPenaltyThreads = 256;
constexpr uint32_t kPenaltyBlocksPerRow = 64;

// Steps 1-2 of kernels/sampling.h's ApplyPenalties. Grid (blocks per row, rows); a block whose row
// has no slot returns at once. Only seen ids (a byte each) read their count and score.
__global__ void __launch_bounds__(kPenaltyThreads)
    ApplyPenaltiesKernel(float* __restrict__ logits, uint32_t vocab, const PenaltyRow* __restrict__ params,
                         const int32_t* __restrict__ counts, const uint8_t* __restrict__ seen) {
  const PenaltyRow p = params[blockIdx.y];
  if (p.slot < 0) return;
  const int64_t base = static_cast<int64_t>(p.slot) * vocab;
  float* row = logits + static_cast<int64_t>(blockIdx.y) * vocab;
  for (uint32_t id = blockIdx.x * kPenaltyThreads + threadIdx.x; id < vocab; id += gridDim.x * kPenaltyThreads) {
    if (seen[base + id] == 0) continue;
    row[id] = PenalisedScore(row[id], counts[base + id], p);
  }
}

// Step 3, after steps 1-2 on the same stream: one block per row.
__global__ void MaskStopIdsKernel(float* __restrict__ logits, uint32_t vocab, const PenaltyRow* __restrict__ params,
                                  const int32_t* __restrict__ stop_ids) {
  const PenaltyRow p = params[blockIdx.x];
  float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  for (int32_t k = threadIdx.x; k < p.stop_count; k += blockDim.x) {
    const int32_t id = stop_ids[p.stop_begin + k];
    if (id >= 0 && static_cast<uint32_t>(id) < vocab) row[id] = -INFINITY;
  }
}

__global__ void CountTokensKernel(int32_t* __restrict__ counts, uint8_t* __restrict__ seen, uint32_t vocab,
                                  const int32_t* __restrict__ slots, const int32_t* __restrict__ ids,
                                  const uint8_t* __restrict__ counted, int32_t n) {
  const int32_t k = static_cast<int32_t>(blockIdx.x * blockDim.x + threadIdx.x);
  if (k >= n) return;
  const int32_t slot = slots[k], id = ids[k];
  if (slot < 0 || id < 0 || static_cast<uint32_t>(id) >= vocab) return;
  const int64_t at = static_cast<int64_t>(slot) * vocab + id;
  seen[at] = 1;
  if (counted == nullptr || counted[k] != 0) atomicAdd(counts + at, 1);
}

}  // namespace

bool ApplyPenaltiesCuda(float* logits, int32_t rows, int32_t vocab, const PenaltyRow* params, const int32_t* counts,
                        const uint8_t* seen, const int32_t* stop_ids, void* stream) {
  if (rows < 0 || vocab <= 0) return false;
  if (rows == 0) return true;
  if (logits == nullptr || params == nullptr || rows > 65535) return false;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (counts != nullptr && seen != nullptr) {
    const uint32_t blocks_for_vocab = (static_cast<uint32_t>(vocab) + kPenaltyThreads - 1) / kPenaltyThreads;
    const uint32_t per_row = blocks_for_vocab < kPenaltyBlocksPerRow ? blocks_for_vocab : kPenaltyBlocksPerRow;
    ApplyPenaltiesKernel<<<dim3(per_row, static_cast<unsigned>(rows)), kPenaltyThreads, 0, s>>>(
        logits, static_cast<uint32_t>(vocab), params, counts, seen);
    if (cudaGetLastError() != cudaSuccess) return false;
  }
  if (stop_ids != nullptr) {
    MaskStopIdsKernel<<<static_cast<unsigned>(rows), 32, 0, s>>>(logits, static_cast<uint32_t>(vocab), params,
                                                                 stop_ids);
    if (cudaGetLastError() != cudaSuccess) return false;
  }
  return true;
}

bool CountTokensCuda(int32_t* counts, uint8_t* seen, int32_t vocab, const int32_t* slots, const int32_t* ids,
                     const uint8_t* counted, int32_t n, void* stream) {
  if (n < 0 || vocab <= 0) return false;
  if (n == 0) return true;
  if (counts == nullptr || seen == nullptr || slots == nullptr || ids == nullptr) return false;
  constexpr int kCountThreads = 256;
  CountTokensKernel<<<static_cast<unsigned>((n + kCountThreads - 1) / kCountThreads), kCountThreads, 0,
                      static_cast<cudaStream_t>(stream)>>>(counts, seen, static_cast<uint32_t>(vocab), slots, ids,
                                                           counted, n);
  return cudaGetLastError() == cudaSuccess;
}

bool SampleRowsCuda(const float* logits, int32_t rows, int32_t vocab, const SamplingRow* params, int32_t* out_ids,
                    void* stream) {
  if (rows < 0 || vocab <= 0) return false;
  if (rows == 0) return true;
  if (logits == nullptr || params == nullptr || out_ids == nullptr) return false;
  SampleRowsKernel<<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      logits, static_cast<uint32_t>(vocab), params, out_ids);
  return cudaGetLastError() == cudaSuccess;
}

}  // namespace glmserve::kernels
