// One token through a decoder layer's projections in one persistent launch: o, then gate_up with
// its add+RMSNorm and SwiGLU, then down, then the next layer's add+RMSNorm, qkv, rotary and KV
// write (decode_ops.h, OneRowLayerChainCuda).
//
// Why: at batch 1 a decode step streams ~17.5 GB of weights through ~160 GEMVs, and each GEMV
// boundary costs a ramp and a tail where HBM is not busy (qkv and o at 2.5-2.9 TB/s alone, the
// lm_head, one long stream, at 4.4; bench/results/gpu.md). Here every block (one per SM) has a
// producer warp that streams the block's rows of all four weights back to back into a ring of
// shared-memory slots with TMA bulk copies; the weights depend on nothing a kernel writes, so the
// stream never waits for the activations. The eight consumer warps take whole rows from the ring
// (a warp a row, its lanes over 16-byte chunks in the GEMV's order, so the sums are the GEMV's
// bit for bit) and the blocks meet on a counter in global memory between projections, while the
// next projection's rows keep arriving.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "kernels/decode_epilogues.cuh"
#include "kernels/decode_ops.h"
#include "kernels/device_math.cuh"
#include "kernels/launch.cuh"
#include "kernels/mbarrier.cuh"
#include "kernels/rms_norm_row.cuh"

namespace glmserve::kernels {
namespace {

constexpr int kConsumerWarps = kNormRowThreads / 32;  // the norm helpers' block of threads
constexpr int kChainThreads = kNormRowThreads + 32;   // the last warp produces
constexpr int kConsumerBarrier = 1;                   // named barrier of the consumer warps
constexpr int kMaxRingSlots = 64;                     // a bit each in the parity masks

// The projections in the order the chain runs them.
enum ChainPhase : int { kPhaseO = 0, kPhaseGateUp = 1, kPhaseDown = 2, kPhaseQkv = 3 };

template <typename T>
struct ChainParams {
  const T* attention;
  const T* residual;
  const T* o_weight;
  const T* mlp_norm;
  const T* gate_up_weight;
  const T* down_weight;
  const T* next_input_norm;
  const T* qkv_weight;
  const T* qkv_bias;
  const T* next_o_weight;
  GemvRotary<T> rotary;
  T* residual_out;
  T* mlp_out;
  T* qkv_out;
  T* o_out;
  T* act;
  unsigned* barrier;
  void* exchange;       // OneRowLayerChainArgs::exchange (kChainMeetTaggedWords)
  long long* timeline;  // OneRowLayerChainArgs::timeline
  int64_t hidden, attention_width, intermediate, qkv_width;
  float eps;
  int phases;  // 4, or 3 for the last layer (no qkv)
  int ring_slots;
  int meeting;  // OneRowLayerChainArgs::meeting
  int slot_bytes;
  // Byte offsets in dynamic shared memory (the ring starts at 0).
  int x_offset, residual_offset, delta_offset, barrier_offset;
};

// A phase's units of work: an output row (o, down), a gate / up row pair (gate_up), an even / odd
// row pair of one head (qkv, for the rotary). Each weight row starts on a slot.
struct PhaseShape {
  int64_t units;
  int rows_per_unit;
  int64_t row_elements;
};

template <typename T>
__device__ __forceinline__ PhaseShape ShapeOf(const ChainParams<T>& p, int phase) {
  switch (phase) {
    case kPhaseO:
      return {p.hidden, 1, p.attention_width};
    case kPhaseGateUp:
      return {p.intermediate, 2, p.hidden};
    case kPhaseDown:
      return {p.hidden, 1, p.intermediate};
    default:
      return {p.qkv_width / 2, 2, p.hidden};
  }
}

template <typename T>
__device__ __forceinline__ const T* WeightRow(const ChainParams<T>& p, int phase, int64_t unit, int r) {
  switch (phase) {
    case kPhaseO:
      return p.o_weight + unit * p.attention_width;
    case kPhaseGateUp:
      return p.gate_up_weight + (unit + r * p.intermediate) * p.hidden;
    case kPhaseDown:
      return p.down_weight + unit * p.intermediate;
    default:
      return p.qkv_weight + (2 * unit + r) * p.hidden;
  }
}

// The first of `count` consecutive ring slots for the next unit; a unit never wraps around the
// ring's end (it starts again at slot 0). Producer and consumers walk the same sequence.
__device__ __forceinline__ int PlaceUnit(int& cursor, int count, int slots) {
  if (cursor + count > slots) cursor = 0;
  const int first = cursor;
  cursor += count;
  if (cursor == slots) cursor = 0;
  return first;
}

// Measurement (OneRowLayerChainArgs::timeline): the time now, and one of the block's marks.
__device__ __forceinline__ long long GlobalNanoseconds() {
  long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ void Mark(long long* timeline, int mark, long long value) {
  if (timeline != nullptr) timeline[static_cast<int64_t>(blockIdx.x) * kChainTimelineMarks + mark] = value;
}

__device__ __forceinline__ void PrefetchToL2(const void* from, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(from), "r"(bytes) : "memory");
}

__device__ __forceinline__ void ConsumerSync() {
  __syncwarp();  // a named barrier counts warps: each must arrive whole
  RowThreadsSync<kConsumerBarrier>();
}

// A wait that has not ended after ~2^22 polls (seconds) stops the kernel with what it waited for
// instead of hanging the device: a schedule mismatch between producer and consumers is a bug.
__device__ __forceinline__ void WaitOrTrap(uint32_t bar, uint32_t parity, const char* what, int64_t unit, int slot) {
  for (uint64_t polls = 0; !BarrierTryWait(bar, parity); ++polls) {
    if (polls == (uint64_t{1} << 22)) {
      printf("layer chain: block %d thread %d stuck on %s slot %d parity %u unit %lld\n", blockIdx.x, threadIdx.x, what,
             slot, parity, static_cast<long long>(unit));
      __trap();
    }
  }
}

// Until the producer has armed `slot`'s full barrier for the block's unit `sequence` (see
// armed_unit), with the same bound as WaitOrTrap.
__device__ __forceinline__ void WaitArmed(const int* armed_unit, int slot, int sequence, int64_t unit) {
  const volatile int* armed = armed_unit;
  for (uint64_t polls = 0; armed[slot] != sequence; ++polls) {
    if (polls == (uint64_t{1} << 22)) {
      printf("layer chain: block %d thread %d stuck on arming slot %d for unit %lld (sequence %d, armed %d)\n",
             blockIdx.x, threadIdx.x, slot, static_cast<long long>(unit), sequence, armed[slot]);
      __trap();
    }
  }
}

// Every block's consumers arrive; returns once `target` arrivals (this launch's k-th meeting: k x
// the grid) are in, with the other blocks' writes before theirs visible. The arrival is a release
// (the block's writes, ordered before it by the consumers' barrier, go with it); the others are
// awaited as `form` says (ChainMeeting), and the barrier after the wait passes its acquire on to
// the other consumers. With a timeline, thread 0 marks when its arrival was made (`released`).
__device__ __forceinline__ void GridMeet(unsigned* counter, unsigned target, int form, long long* timeline,
                                         int released) {
  ConsumerSync();
  if (threadIdx.x == 0) {
    if (form == kChainMeetWholeFences) {
      __threadfence();
      atomicAdd(counter, 1u);
    } else {
      asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(counter) : "memory");
    }
    Mark(timeline, released, GlobalNanoseconds());
    unsigned seen = 0;
    for (uint64_t polls = 0;; ++polls) {
      if (form == kChainMeetRelaxedPoll) {
        asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];\n" : "=r"(seen) : "l"(counter) : "memory");
      } else {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(seen) : "l"(counter) : "memory");
      }
      if (seen >= target) break;
      if (polls == (uint64_t{1} << 23)) {
        printf("layer chain: block %d stuck meeting: %u of %u arrived\n", blockIdx.x, seen, target);
        __trap();
      }
    }
    if (form == kChainMeetRelaxedPoll) asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
    if (form == kChainMeetWholeFences) __threadfence();
  }
  ConsumerSync();
}

// kChainMeetTaggedWords: an element the blocks pass each other is one word that also says it
// was written (the exchange is zeroed before the launch), so a reader needs no counter and no
// fence: it reads until every word of the row is marked. The fences are what the counter's
// meetings cost (timeline, H100: 2.6-6.3 us from a block's arrival until its release was made).
template <typename T>
struct ExchangeWord {  // 16-bit elements: the mark in the high half
  using Word = uint32_t;
  static constexpr int kPerChunk = 4;  // words a 16-byte load holds
  __device__ static Word Of(T v) { return 0x10000u | *reinterpret_cast<const uint16_t*>(&v); }
  __device__ static bool Marked(Word w) { return (w >> 16) == 1u; }
  __device__ static T Value(Word w) {
    const uint16_t bits = static_cast<uint16_t>(w & 0xffffu);
    return *reinterpret_cast<const T*>(&bits);
  }
};
template <>
struct ExchangeWord<float> {  // fp32: the mark in the high word
  using Word = unsigned long long;
  static constexpr int kPerChunk = 2;
  __device__ static Word Of(float v) { return (Word{1} << 32) | __float_as_uint(v); }
  __device__ static bool Marked(Word w) { return (w >> 32) == 1u; }
  __device__ static float Value(Word w) { return __uint_as_float(static_cast<uint32_t>(w)); }
};

template <typename T>
__device__ __forceinline__ void PutExchange(void* exchange, int64_t index, T value) {
  using X = ExchangeWord<T>;
  typename X::Word* at = static_cast<typename X::Word*>(exchange) + index;
  if constexpr (sizeof(typename X::Word) == 4) {
    asm volatile("st.relaxed.gpu.global.u32 [%0], %1;\n" ::"l"(at), "r"(X::Of(value)) : "memory");
  } else {
    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;\n" ::"l"(at), "l"(X::Of(value)) : "memory");
  }
}

// `elements` of a row the blocks write into `exchange` (from word `offset`) into shared memory,
// each 16 bytes of words read again (after a short sleep) until all of them are marked.
template <typename T>
__device__ __forceinline__ void WaitRowFromExchange(T* to, const void* exchange, int64_t offset, int64_t elements) {
  using X = ExchangeWord<T>;
  const uint4* src = reinterpret_cast<const uint4*>(static_cast<const typename X::Word*>(exchange) + offset);
  for (int64_t c = threadIdx.x; c < elements / X::kPerChunk; c += kNormRowThreads) {
    typename X::Word w[X::kPerChunk];
    // Between polls a sleep that doubles up to 256 ns: 132 waiting blocks of 256 threads polling
    // back to back would read ~1 TB/s from L2 beside the blocks still streaming their weights.
    unsigned sleep_ns = 32;
    for (uint64_t polls = 0;; ++polls) {
      uint4 v;
      asm volatile("ld.relaxed.gpu.global.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                   : "l"(src + c)
                   : "memory");
      memcpy(w, &v, sizeof(v));
      bool marked = true;
#pragma unroll
      for (int i = 0; i < X::kPerChunk; ++i) marked = marked && X::Marked(w[i]);
      if (marked) break;
      if (polls == (uint64_t{1} << 22)) {
        printf("layer chain: block %d thread %d stuck on exchange words %lld..\n", blockIdx.x, threadIdx.x,
               static_cast<long long>(offset + c * X::kPerChunk));
        __trap();
      }
      __nanosleep(sleep_ns);
      sleep_ns = sleep_ns < 256 ? 2 * sleep_ns : 256;
    }
#pragma unroll
    for (int i = 0; i < X::kPerChunk; ++i) to[c * X::kPerChunk + i] = X::Value(w[i]);
  }
}

// `elements` of a row another block wrote in this launch into shared memory, through L2.
template <typename T>
__device__ __forceinline__ void CopyRowFromL2(T* to, const T* from, int64_t elements) {
  constexpr int E = 16 / sizeof(T);
  const uint4* src = reinterpret_cast<const uint4*>(from);
  uint4* dst = reinterpret_cast<uint4*>(to);
  for (int64_t c = threadIdx.x; c < elements / E; c += kNormRowThreads) dst[c] = __ldcg(src + c);
}

// A warp's dot product of one weight row with x, both in shared memory: lane l takes chunks l,
// l + 32, ... in order, as GemvKernel's lanes do, then the warp's sum.
template <typename T>
__device__ __forceinline__ float RowDot(const uint4* w, const uint4* x, int64_t chunks, int lane) {
  constexpr int E = 16 / sizeof(T);
  float acc = 0.0f;
#pragma unroll 4
  for (int64_t c = lane; c < chunks; c += 32) {
    float wf[E], xf[E];
    Chunk16<T>::ToFloats(w[c], wf);
    Chunk16<T>::ToFloats(x[c], xf);
#pragma unroll
    for (int e = 0; e < E; ++e) acc = fmaf(xf[e], wf[e], acc);
  }
  return WarpSum(acc);
}

template <typename T>
__global__ void __launch_bounds__(kChainThreads, 1) OneRowLayerChainKernel(const __grid_constant__ ChainParams<T> p) {
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ float scratch[kConsumerWarps];
  // The block-local sequence number of the unit whose bytes each slot's full barrier now counts
  // (-1: none yet). A consumer waits for its unit's number here before it waits on the barrier:
  // eight warps take the units in turn, so a warp can reach a slot's next use while its last use
  // is still in flight, and a parity wait cannot tell that phase from the one it wants (it would
  // pass at once on a slot two phases behind).
  __shared__ int armed_unit[kMaxRingSlots];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t grid = gridDim.x, block = blockIdx.x;
  const uint32_t ring = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + p.barrier_offset);
  auto full_bar = [&](int s) { return static_cast<uint32_t>(__cvta_generic_to_shared(&bars[s])); };
  auto empty_bar = [&](int s) { return static_cast<uint32_t>(__cvta_generic_to_shared(&bars[kMaxRingSlots + s])); };
  for (int s = threadIdx.x; s < kMaxRingSlots; s += blockDim.x) armed_unit[s] = -1;
  if (threadIdx.x == 0) {
    for (int s = 0; s < p.ring_slots; ++s) {
      BarrierInit(full_bar(s), 1);
      BarrierInit(empty_bar(s), 1);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  AllowDependentLaunch();
  if (threadIdx.x == 0) Mark(p.timeline, kChainMarkStart, GlobalNanoseconds());

  if (warp == kConsumerWarps) {
    // The producer: the block's rows of every phase, back to back. No kernel writes a weight, so
    // this starts before the kernel before this one has ended.
    if (lane != 0) return;
    const uint64_t policy = EvictFirstPolicy();  // read once a step: L2 need not keep them
    uint64_t used = 0, empty_parity = 0;
    int cursor = 0, sequence = 0;
    long long producer_wait = 0;
    for (int phase = 0; phase < p.phases; ++phase) {
      const PhaseShape shape = ShapeOf(p, phase);
      const uint32_t row_bytes = static_cast<uint32_t>(shape.row_elements * sizeof(T));
      const int row_slots = static_cast<int>((row_bytes + p.slot_bytes - 1) / p.slot_bytes);
      const int count = row_slots * shape.rows_per_unit;
      const int64_t end = shape.units * (block + 1) / grid;
      for (int64_t unit = shape.units * block / grid; unit < end; ++unit, ++sequence) {
        const int first = PlaceUnit(cursor, count, p.ring_slots);
        for (int s = first; s < first + count; ++s) {
          const uint64_t bit = uint64_t{1} << s;
          if (used & bit) {  // wait until the slot's last reader is done with it
            const long long waited_from = clock64();
            WaitOrTrap(empty_bar(s), (empty_parity & bit) != 0 ? 1u : 0u, "empty", unit, s);
            producer_wait += clock64() - waited_from;
            empty_parity ^= bit;
          }
          used |= bit;
        }
        // Every earlier use of these slots is done with: the full barrier's phase in progress is
        // this unit's from here on.
        BarrierExpectBytes(full_bar(first), static_cast<int>(row_bytes) * shape.rows_per_unit);
        reinterpret_cast<volatile int*>(armed_unit)[first] = sequence;
        for (int r = 0; r < shape.rows_per_unit; ++r) {
          BulkCopyToShared(ring + static_cast<uint32_t>((first + r * row_slots) * p.slot_bytes),
                           WeightRow(p, phase, unit, r), row_bytes, full_bar(first), policy);
        }
      }
    }
    if (p.next_o_weight != nullptr) {  // the rows of it this block will stream next
      const int64_t begin = p.hidden * block / grid, end = p.hidden * (block + 1) / grid;
      const auto* from = reinterpret_cast<const uint8_t*>(p.next_o_weight + begin * p.attention_width);
      const int64_t bytes = (end - begin) * p.attention_width * static_cast<int64_t>(sizeof(T));
      constexpr int64_t kPrefetchBytes = 32 << 10;
      for (int64_t at = 0; at < bytes; at += kPrefetchBytes) {
        PrefetchToL2(from + at, static_cast<uint32_t>(bytes - at < kPrefetchBytes ? bytes - at : kPrefetchBytes));
      }
    }
    Mark(p.timeline, kChainMarkIssued, GlobalNanoseconds());
    Mark(p.timeline, kChainMarkProducerWait, producer_wait);
    return;
  }

  // The consumers: each phase's input row into shared memory, then the units in turn, unit i of
  // the block to warp i % 8.
  T* x = reinterpret_cast<T*>(smem + p.x_offset);
  T* residual = reinterpret_cast<T*>(smem + p.residual_offset);
  T* delta = reinterpret_cast<T*>(smem + p.delta_offset);
  const uint4* x4 = reinterpret_cast<const uint4*>(x);
  constexpr int E = 16 / sizeof(T);
  const int hidden_chunks = static_cast<int>(p.hidden / E);
  const bool last_layer = p.phases == kPhaseQkv;  // no qkv phase
  uint64_t full_parity = 0;
  int cursor = 0;
  int64_t sequence = 0;
  WaitForPrerequisiteGrid();
  long long consumer_wait = 0, meet_wait = 0;
  if (threadIdx.x == 0) Mark(p.timeline, kChainMarkInputs, GlobalNanoseconds());
  // Every block's consumers arrive at the k-th meeting (k x the grid arrivals).
  // With tagged words the k-th meeting is the wait for the row the phase after it takes (into
  // `to`, from the exchange's word `offset`), else the counter's, then that row through L2 from
  // `row`.
  const bool tagged = p.meeting == kChainMeetTaggedWords;
  auto meet = [&](int k, T* to, int64_t offset, const T* row, int64_t elements) {
    if (p.timeline != nullptr) {  // the arrivals' spread is what the early blocks wait for
      ConsumerSync();
      if (threadIdx.x == 0) Mark(p.timeline, kChainMarkArrived + k - 1, GlobalNanoseconds());
    }
    const long long from = clock64();
    if (tagged) {
      ConsumerSync();  // every warp is done with the phase before (`to` may be its x)
      WaitRowFromExchange(to, p.exchange, offset, elements);
    } else {
      GridMeet(p.barrier, static_cast<unsigned>(k * grid), p.meeting, p.timeline, kChainMarkReleased + k - 1);
      CopyRowFromL2(to, row, elements);
    }
    if (threadIdx.x == 0) {
      meet_wait += clock64() - from;
      Mark(p.timeline, kChainMarkMet + k - 1, GlobalNanoseconds());
    }
  };
  // The exchange's rows: o [H], act [I], the MLP's output [H].
  const int64_t exchange_act = p.hidden, exchange_mlp = p.hidden + p.intermediate;
  for (int phase = 0; phase < p.phases; ++phase) {
    if (phase == kPhaseO) {
      CopyRowFromL2(x, p.attention, p.attention_width);
    } else if (phase == kPhaseGateUp) {
      meet(1, delta, 0, p.o_out, p.hidden);
      ConsumerSync();
      // Every block keeps residual + o; block 0 also writes it out where the chain ends here.
      AddRmsNormRow<T, /*kHeld=*/false, kConsumerBarrier>(
          reinterpret_cast<const uint4*>(delta), nullptr, reinterpret_cast<const uint4*>(p.residual),
          reinterpret_cast<uint4*>(residual), reinterpret_cast<const uint4*>(p.mlp_norm), reinterpret_cast<uint4*>(x),
          hidden_chunks, p.hidden, p.eps, scratch);
      if (last_layer && block == 0) {
        ConsumerSync();
        for (int c = threadIdx.x; c < hidden_chunks; c += kNormRowThreads) {
          reinterpret_cast<uint4*>(p.residual_out)[c] = reinterpret_cast<const uint4*>(residual)[c];
        }
      }
    } else if (phase == kPhaseDown) {
      meet(2, x, exchange_act, p.act, p.intermediate);
    } else {
      meet(3, delta, exchange_mlp, p.mlp_out, p.hidden);
      ConsumerSync();
      AddRmsNormRow<T, /*kHeld=*/false, kConsumerBarrier>(
          reinterpret_cast<const uint4*>(delta), nullptr, reinterpret_cast<const uint4*>(residual),
          block == 0 ? reinterpret_cast<uint4*>(p.residual_out) : nullptr,
          reinterpret_cast<const uint4*>(p.next_input_norm), reinterpret_cast<uint4*>(x), hidden_chunks, p.hidden,
          p.eps, scratch);
    }
    ConsumerSync();
    const PhaseShape shape = ShapeOf(p, phase);
    const int64_t row_bytes = shape.row_elements * static_cast<int64_t>(sizeof(T));
    const int row_slots = static_cast<int>((row_bytes + p.slot_bytes - 1) / p.slot_bytes);
    const int count = row_slots * shape.rows_per_unit;
    const int64_t chunks = shape.row_elements / E;
    const int64_t end = shape.units * (block + 1) / grid;
    for (int64_t unit = shape.units * block / grid; unit < end; ++unit, ++sequence) {
      const int first = PlaceUnit(cursor, count, p.ring_slots);
      const uint64_t bit = uint64_t{1} << first;
      const uint32_t parity = (full_parity & bit) != 0 ? 1u : 0u;
      full_parity ^= bit;
      if (sequence % kConsumerWarps != warp) continue;
      __syncwarp();  // lane 0 back from the last unit's epilogue
      const long long waited_from = clock64();
      WaitArmed(armed_unit, first, static_cast<int>(sequence), unit);
      WaitOrTrap(full_bar(first), parity, "full", unit, first);
      consumer_wait += clock64() - waited_from;
      const uint4* rows = reinterpret_cast<const uint4*>(smem + static_cast<int64_t>(first) * p.slot_bytes);
      const int64_t row_stride = static_cast<int64_t>(row_slots) * p.slot_bytes / 16;  // in chunks
      float total[2] = {RowDot<T>(rows, x4, chunks, lane), 0.0f};
      if (shape.rows_per_unit == 2) total[1] = RowDot<T>(rows + row_stride, x4, chunks, lane);
      __syncwarp();
      if (lane != 0) continue;
      for (int s = first; s < first + count; ++s) BarrierArrive(empty_bar(s));
      switch (phase) {
        case kPhaseO: {
          const T o = FromFloat<T>(total[0]);
          p.o_out[unit] = o;
          if (tagged) PutExchange(p.exchange, unit, o);
          break;
        }
        case kPhaseGateUp: {
          const float gate = ToFloat(FromFloat<T>(total[0])), up = ToFloat(FromFloat<T>(total[1]));
          const T act = FromFloat<T>(SwiGlu<T>(gate, up));
          p.act[unit] = act;
          if (tagged) PutExchange(p.exchange, exchange_act + unit, act);
          break;
        }
        case kPhaseDown: {
          const T mlp = FromFloat<T>(total[0]);
          p.mlp_out[unit] = mlp;
          if (tagged) PutExchange(p.exchange, exchange_mlp + unit, mlp);
          break;
        }
        default: {
          const int64_t f = 2 * unit;
          T pair[2];
          for (int r = 0; r < 2; ++r) {
            pair[r] = FromFloat<T>(p.qkv_bias != nullptr ? total[r] + ToFloat(p.qkv_bias[f + r]) : total[r]);
          }
          RotaryKvPair(p.rotary, f, pair[0], pair[1], p.qkv_out, p.qkv_width);
          break;
        }
      }
    }
  }
  if (p.timeline != nullptr) {
    ConsumerSync();
    if (threadIdx.x == 0) {
      Mark(p.timeline, kChainMarkConsumed, GlobalNanoseconds());
      Mark(p.timeline, kChainMarkConsumerWait, consumer_wait);
      Mark(p.timeline, kChainMarkMeetWait, meet_wait);
    }
  }
}

int64_t RoundUp(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

template <typename T>
bool LaunchChain(const OneRowLayerChainArgs& a, cudaStream_t stream) {
  constexpr int64_t E = 16 / sizeof(T);
  auto aligned = [](const void* ptr) { return ptr != nullptr && reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool last = a.qkv_weight == nullptr;
  if (a.hidden <= 0 || a.attention_width <= 0 || a.intermediate <= 0 || a.hidden % E != 0 ||
      a.attention_width % E != 0 || a.intermediate % E != 0 || a.hidden / E > kNormRowMaxChunks * kNormRowThreads ||
      !aligned(a.attention) || !aligned(a.residual) || !aligned(a.o_weight) || !aligned(a.mlp_norm) ||
      !aligned(a.gate_up_weight) || !aligned(a.down_weight) || !aligned(a.residual_out) || !aligned(a.mlp_out) ||
      !aligned(a.o_out) || !aligned(a.act) || a.ring_slots < 0 || a.meeting < 0 || a.meeting > kChainMeetTaggedWords ||
      (a.meeting == kChainMeetTaggedWords ? !aligned(a.exchange) : a.barrier == nullptr)) {
    return false;
  }
  if (!last) {
    const GemvRotaryKvArgs& r = a.rotary;
    if (!aligned(a.next_input_norm) || !aligned(a.qkv_out) || a.qkv_width <= 0 || a.qkv_width % 2 != 0 ||
        r.positions == nullptr || r.slot == nullptr || r.k_cache == nullptr || r.v_cache == nullptr ||
        !GemvRotaryKvShapeFits(r.shape, r.inv_freq != nullptr, a.qkv_width)) {
      return false;
    }
  }
  int device = 0, sms = 0, major = 0, max_smem = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (major < 9 || sms <= 0) return false;  // bulk copies, mbarrier transaction counts, griddepcontrol

  ChainParams<T> p{};
  p.attention = static_cast<const T*>(a.attention);
  p.residual = static_cast<const T*>(a.residual);
  p.o_weight = static_cast<const T*>(a.o_weight);
  p.mlp_norm = static_cast<const T*>(a.mlp_norm);
  p.gate_up_weight = static_cast<const T*>(a.gate_up_weight);
  p.down_weight = static_cast<const T*>(a.down_weight);
  p.next_input_norm = static_cast<const T*>(a.next_input_norm);
  p.qkv_weight = static_cast<const T*>(a.qkv_weight);
  p.qkv_bias = static_cast<const T*>(a.qkv_bias);
  p.next_o_weight = aligned(a.next_o_weight) ? static_cast<const T*>(a.next_o_weight) : nullptr;
  if (!last) p.rotary = GemvRotaryOf<T>(a.rotary);
  p.residual_out = static_cast<T*>(a.residual_out);
  p.mlp_out = static_cast<T*>(a.mlp_out);
  p.qkv_out = static_cast<T*>(a.qkv_out);
  p.o_out = static_cast<T*>(a.o_out);
  p.act = static_cast<T*>(a.act);
  p.exchange = a.exchange;
  p.barrier = a.barrier;
  p.timeline = reinterpret_cast<long long*>(a.timeline);
  p.hidden = a.hidden;
  p.attention_width = a.attention_width;
  p.intermediate = a.intermediate;
  p.qkv_width = last ? 0 : a.qkv_width;
  p.eps = a.eps;
  p.phases = last ? 3 : 4;
  p.meeting = a.meeting;

  // Shared memory: the ring, then x (the widest input row), the residual and a delta row, the
  // ring's barriers. A slot holds one row of the hidden-wide weights; a down row takes several.
  const int64_t element = sizeof(T);
  const int64_t slot_bytes = RoundUp(std::max(a.hidden, a.attention_width) * element, 128);
  const int64_t x_bytes = RoundUp(std::max({a.hidden, a.attention_width, a.intermediate}) * element, 128);
  const int64_t row_bytes = RoundUp(a.hidden * element, 128);
  const int64_t fixed = x_bytes + 2 * row_bytes + 2 * kMaxRingSlots * 8;
  const int64_t static_smem = 1024;  // the consumers' scratch and what the compiler adds
  const int64_t room = max_smem - static_smem - fixed;
  int64_t slots = std::min<int64_t>(kMaxRingSlots, room / slot_bytes);
  if (a.ring_slots > 0) slots = std::min<int64_t>(slots, a.ring_slots);
  const int64_t down_row_slots = (a.intermediate * element + slot_bytes - 1) / slot_bytes;
  if (slots < std::max<int64_t>(2, down_row_slots) || a.intermediate * element >= (1 << 20)) return false;
  p.ring_slots = static_cast<int>(slots);
  p.slot_bytes = static_cast<int>(slot_bytes);
  p.x_offset = static_cast<int>(slots * slot_bytes);
  p.residual_offset = static_cast<int>(p.x_offset + x_bytes);
  p.delta_offset = static_cast<int>(p.residual_offset + row_bytes);
  p.barrier_offset = static_cast<int>(p.delta_offset + row_bytes);
  const size_t smem = static_cast<size_t>(p.barrier_offset + 2 * kMaxRingSlots * 8);

  auto kernel = OneRowLayerChainKernel<T>;
  // The limit is raised once, to the device's most (not a stream operation: a call inside a graph
  // capture would end the capture).
  static const bool limit_raised = [&] {
    cudaFuncAttributes attributes{};
    return cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess &&
           cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                max_smem - static_cast<int>(attributes.sharedSizeBytes)) == cudaSuccess;
  }();
  int resident = 0;
  if (!limit_raised ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kChainThreads, smem) != cudaSuccess ||
      resident < 1) {
    cudaGetLastError();
    return false;
  }
  // One block an SM: the blocks wait for each other, so all of them must be resident at once. A
  // cooperative launch has the driver guarantee it (or refuse the launch) where something else
  // holds SMs; with dependent launch where the driver takes both.
  cudaLaunchAttribute attributes[2];
  attributes[0].id = cudaLaunchAttributeCooperative;
  attributes[0].val.cooperative = 1;
  attributes[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[1].val.programmaticStreamSerializationAllowed = DependentLaunchEnabled() ? 1 : 0;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(std::max(1, sms - std::max(0, a.spare_sms))));
  config.blockDim = dim3(kChainThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = 2;
  cudaError_t launched = cudaLaunchKernelEx(&config, kernel, p);
  if (launched != cudaSuccess) {
    // Said once: without dependent launch the chain cannot start beside the kernel before it
    // (what spare_sms is for), which measurements must know.
    static bool said = false;
    if (!said && attributes[1].val.programmaticStreamSerializationAllowed != 0) {
      said = true;
      std::fprintf(stderr,
                   "layer chain: the driver refused a cooperative launch with dependent launch (%s); "
                   "launching cooperatively alone\n",
                   cudaGetErrorString(launched));
    }
    cudaGetLastError();
    config.numAttrs = 1;  // cooperative only
    launched = cudaLaunchKernelEx(&config, kernel, p);
  }
  const cudaError_t pending = cudaGetLastError();
  return launched == cudaSuccess && pending == cudaSuccess;
}

}  // namespace

bool OneRowLayerChainCuda(const OneRowLayerChainArgs& args, ElementType type, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  switch (type) {
    case ElementType::kFloat32:
      return LaunchChain<float>(args, st);
    case ElementType::kBFloat16:
      return LaunchChain<__nv_bfloat16>(args, st);
    case ElementType::kFloat16:
      return LaunchChain<__half>(args, st);
  }
  return false;
}

}  // namespace glmserve::kernels
