#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cfloat>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kernels/device_math.cuh"
#include "kernels/launch.cuh"
#include "kernels/paged_attention.h"
#include "kernels/rms_norm.h"

namespace glmserve::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

// One block per (sequence, query head); each warp walks every kWarps-th context position with an
// online softmax (running max, running sum, and the weighted V sum in registers: head_dim / 32
// values per lane), then the warps' partial results are merged. Shared memory does not grow
// with the context, so any context length runs at full occupancy.
template <typename T>
__global__ void PagedAttentionDecodeKernel(const T* __restrict__ q, const T* __restrict__ k_cache,
                                           const T* __restrict__ v_cache, const int32_t* __restrict__ block_tables,
                                           const int32_t* __restrict__ context_lens, T* __restrict__ out,
                                           PagedAttentionShape s) {
  AllowDependentsThenWait();
  constexpr int kMaxPerLane = 8;  // head_dim <= 256
  __shared__ float q_shared[256];
  __shared__ float warp_max[kWarps], warp_sum[kWarps];
  __shared__ float warp_acc[kWarps][256];
  const int b = blockIdx.x, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kv_head = h / (s.num_heads / s.num_kv_heads);
  const int context = context_lens[b];
  if (context == 0) return;  // a row this call leaves alone (the whole block returns)
  const int per_lane = (s.head_dim + 31) / 32;
  const int32_t* table = block_tables + static_cast<int64_t>(b) * s.max_blocks_per_seq;
  const int64_t q_stride = s.q_row_stride > 0 ? s.q_row_stride : static_cast<int64_t>(s.num_heads) * s.head_dim;
  const T* qh = q + b * q_stride + static_cast<int64_t>(h) * s.head_dim;
  for (int d = threadIdx.x; d < s.head_dim; d += kThreads) q_shared[d] = ToFloat(qh[d]) * s.scale;
  __syncthreads();

  float running_max = -FLT_MAX, running_sum = 0.0f;
  float acc[kMaxPerLane];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) acc[i] = 0.0f;
  for (int p = warp; p < context; p += kWarps) {
    const int64_t slot = static_cast<int64_t>(table[p / s.block_size]) * s.block_size + p % s.block_size;
    const int64_t base = (slot * s.num_kv_heads + kv_head) * s.head_dim;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      if (i < per_lane && d < s.head_dim) dot += q_shared[d] * ToFloat(k_cache[base + d]);
    }
    dot = WarpSum(dot);
    const float new_max = fmaxf(running_max, dot);
    const float correction = __expf(running_max - new_max);
    const float weight = __expf(dot - new_max);
    running_sum = running_sum * correction + weight;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      if (i < per_lane && d < s.head_dim) acc[i] = acc[i] * correction + weight * ToFloat(v_cache[base + d]);
    }
    running_max = new_max;
  }
  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_sum[warp] = running_sum;
  }
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    if (i < per_lane && d < s.head_dim) warp_acc[warp][d] = acc[i];
  }
  __syncthreads();
  float max_score = -FLT_MAX;
  for (int w = 0; w < kWarps; ++w) max_score = fmaxf(max_score, warp_max[w]);
  float total = 0.0f;
  float scale_w[kWarps];
  for (int w = 0; w < kWarps; ++w) {
    scale_w[w] = warp_sum[w] > 0.0f ? __expf(warp_max[w] - max_score) : 0.0f;  // idle warps hold nothing
    total += warp_sum[w] * scale_w[w];
  }
  T* o = out + (static_cast<int64_t>(b) * s.num_heads + h) * s.head_dim;
  for (int d = threadIdx.x; d < s.head_dim; d += kThreads) {
    float value = 0.0f;
    for (int w = 0; w < kWarps; ++w) value += warp_acc[w][d] * scale_w[w];
    o[d] = FromFloat<T>(value / total);
  }
}

template <typename T>
bool Launch(const void* q, const void* k, const void* v, const int32_t* tables, const int32_t* lens, void* out,
            const PagedAttentionShape& s, cudaStream_t stream) {
  return LaunchKernel(PagedAttentionDecodeKernel<T>, dim3(s.batch, s.num_heads), dim3(kThreads), 0, stream,
                      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), tables, lens,
                      static_cast<T*>(out), s) == cudaSuccess;
}

// ---- Grouped split kernel (used when the caller passes a workspace) ----
// Grid (sequence, KV head, split). A split takes every `splits`-th tile of kTile positions, so a
// fixed grid covers any context (CUDA graphs) and short contexts still spread over many SMs.
// Each tile's K and V rows are read from the pool once, converted to fp32 in shared memory, and
// used by all `group` query heads of the KV head: the one-pass kernel re-read them per head.
constexpr int kTile = 32;  // positions per tile == warp size: lane j owns position j in the softmax
// Threads per block: 128 (more blocks resident per SM) measured faster than 256 on an H100 at
// batch 1 and 64 (bench/results/gpu.md); GLMSERVE_CUDA_ATTENTION_THREADS=256 selects the larger
// block for measurements.
constexpr int kMinSplitThreads = 128;
constexpr int kMaxHeadsPerWarpPass = 8;  // score loop: heads per warp at once (group <= 32 at 128 threads)
constexpr int kMaxHeadsPerThread = 4;    // accumulate loop: heads per thread, 4 dims each
constexpr int kMaxSplits = 32;

struct SplitLayout {
  int group = 0;     // query heads per KV head
  int k_stride = 0;  // floats per K row in shared memory (padded: conflict-free float4 reads)
  size_t smem = 0;   // dynamic shared memory bytes
};

__host__ __device__ inline SplitLayout MakeSplitLayout(const PagedAttentionShape& s) {
  SplitLayout l;
  l.group = s.num_heads / s.num_kv_heads;
  l.k_stride = s.head_dim + 4;
  const size_t floats = static_cast<size_t>(l.group) * s.head_dim + kTile * l.k_stride + kTile * s.head_dim +
                        static_cast<size_t>(l.group) * kTile + 3 * l.group;
  l.smem = floats * sizeof(float);
  return l;
}

bool SplitKernelTakes(const PagedAttentionShape& s) {
  const int hd = s.head_dim;
  if (hd != 32 && hd != 64 && hd != 128 && hd != 256) return false;
  const int group = s.num_heads / s.num_kv_heads;
  // Checked for the smaller block, so either block size takes the shape.
  const int heads_per_pass = kMinSplitThreads / (hd / 4);  // threads cover hd/4 float4 columns
  if (group > kMaxHeadsPerWarpPass * (kMinSplitThreads / 32)) return false;
  if ((group + heads_per_pass - 1) / heads_per_pass > kMaxHeadsPerThread) return false;
  return MakeSplitLayout(s).smem <= 200 * 1024;
}

// A measurement switch read from the environment: its integer value when `accepted` takes it,
// else `fallback`, saying on stderr what the variable accepts when it is set to something else.
template <typename Accepted>
int EnvSwitch(const char* name, int fallback, const char* expected, Accepted accepted) {
  const char* env = std::getenv(name);
  if (env == nullptr) return fallback;
  char* end = nullptr;
  const long value = std::strtol(env, &end, 10);
  if (end != env && *end == '\0' && accepted(value)) return static_cast<int>(value);
  std::fprintf(stderr, "%s: '%s' is not %s; using %d\n", name, env, expected, fallback);
  return fallback;
}

// The workspace starts with a counter per (sequence, KV head), padded to 16 bytes.
int64_t CounterWords(const PagedAttentionShape& s) { return (int64_t{s.batch} * s.num_kv_heads + 3) / 4 * 4; }

// The workspace's parts for a grid of `splits` splits: the counters, then each (sequence, KV
// head, split)'s partial output sums [group][head_dim], then its (max, sum) per query head.
struct SplitWorkspace {
  int* counters;
  float* part_acc;
  float* part_stats;
};
SplitWorkspace CarveWorkspace(void* workspace, const PagedAttentionShape& s, int splits) {
  SplitWorkspace parts;
  parts.counters = static_cast<int*>(workspace);
  parts.part_acc = static_cast<float*>(workspace) + CounterWords(s);
  parts.part_stats = parts.part_acc + static_cast<int64_t>(s.batch) * s.num_kv_heads * splits *
                                          (s.num_heads / s.num_kv_heads) * s.head_dim;
  return parts;
}

// SMs the split counts aim to fill: an H100's 132 when CUDA cannot say.
int SplitSmCount() {
  const int device_sms = DeviceSmCount();
  return device_sms > 0 ? device_sms : 132;
}

int SplitCount(const PagedAttentionShape& s) {
  const int sm_count = SplitSmCount();
  // Several blocks per SM: each tile is latency-bound. GLMSERVE_CUDA_ATTENTION_BLOCKS_PER_SM
  // overrides the 4 for measurements.
  static const int blocks_per_sm = EnvSwitch("GLMSERVE_CUDA_ATTENTION_BLOCKS_PER_SM", 4, "an integer in [1, 64]",
                                             [](long value) { return value >= 1 && value <= 64; });
  const int units = s.batch * s.num_kv_heads;
  int splits = (blocks_per_sm * sm_count + units - 1) / units;
  const int max_tiles = (s.max_context + kTile - 1) / kTile;
  splits = splits < max_tiles ? splits : max_tiles;
  splits = splits < kMaxSplits ? splits : kMaxSplits;
  return splits < 1 ? 1 : splits;
}

// 16 bytes of T -> fp32 into shared memory, written as 16-byte stores (for bf16/fp16 two rather
// than eight 4-byte ones: fewer bank conflicts).
template <typename T>
__device__ __forceinline__ void StoreChunk(float* dst, const uint4& raw) {
  float f[Chunk16<T>::kElements];
  Chunk16<T>::ToFloats(raw, f);
#pragma unroll
  for (int i = 0; i < Chunk16<T>::kElements; i += 4) {
    reinterpret_cast<float4*>(dst)[i / 4] = make_float4(f[i], f[i + 1], f[i + 2], f[i + 3]);
  }
}

// One warp per head: folds a tile of kPer * 32 scores (lane + 32 j holds position lane + 32 j;
// n valid) into the head's running max m_s[g] and sum l_s[g], records the rescale factor of earlier
// partial sums in c_s[g], and gives each of the lane's positions its softmax weight (relative to
// the new running max).
template <int kPer>
__device__ __forceinline__ void OnlineSoftmaxTile(const float (&score)[kPer], int n, int g, float* m_s, float* l_s,
                                                  float* c_s, float (&weight)[kPer]) {
  const int lane = threadIdx.x % 32;
  float tile_max = score[0];
#pragma unroll
  for (int j = 1; j < kPer; ++j) tile_max = fmaxf(tile_max, score[j]);
  const float m_old = m_s[g];
  const float m_new = fmaxf(m_old, WarpMax(tile_max));  // every lane has read m_s[g] before lane 0 writes it
#pragma unroll
  for (int j = 0; j < kPer; ++j) weight[j] = lane + 32 * j < n ? __expf(score[j] - m_new) : 0.0f;
  float sum = weight[0];
#pragma unroll
  for (int j = 1; j < kPer; ++j) sum += weight[j];
  const float tile_sum = WarpSum(sum);
  if (lane == 0) {
    const float correction = __expf(m_old - m_new);
    c_s[g] = correction;
    l_s[g] = l_s[g] * correction + tile_sum;
    m_s[g] = m_new;
  }
}

// Shared row offsets (in elements / head_dim) of the tile's positions base .. base + n - 1.
__device__ __forceinline__ void TileSlots(int64_t* slot_s, const int32_t* table, int base, int n,
                                          const PagedAttentionShape& s, int kv_head) {
  if (static_cast<int>(threadIdx.x) < n) {
    const int p = base + threadIdx.x;
    slot_s[threadIdx.x] =
        (static_cast<int64_t>(table[p / s.block_size]) * s.block_size + p % s.block_size) * s.num_kv_heads + kv_head;
  }
}

// Reads the K and V rows of one tile (`rows` rows through slot_s; rows at or past `valid` are
// zeros) with 16-byte loads, every load of a thread issued before its first store (a loop that
// loads and stores one chunk at a time waits for one global load per chunk), and hands each chunk
// to store(row, first_element, k_raw, v_raw).
template <int kThreads, typename T, typename StoreFn>
__device__ __forceinline__ void LoadTile(const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                                         const int64_t* slot_s, int rows, int valid, int head_dim, StoreFn store) {
  constexpr int kChunk = 16 / sizeof(T);
  constexpr int kLoadUnroll = 4;
  const int chunks_per_row = head_dim / kChunk;
  const int tile_chunks = rows * chunks_per_row;
  for (int first = threadIdx.x; first < tile_chunks; first += kThreads * kLoadUnroll) {
    uint4 k_raw[kLoadUnroll], v_raw[kLoadUnroll];
#pragma unroll
    for (int u = 0; u < kLoadUnroll; ++u) {
      const int i = first + u * kThreads;
      const int j = i / chunks_per_row, c = i - j * chunks_per_row;
      k_raw[u] = v_raw[u] = make_uint4(0, 0, 0, 0);
      if (i < tile_chunks && j < valid) {
        const int64_t offset = slot_s[j] * head_dim + c * kChunk;
        k_raw[u] = __ldg(reinterpret_cast<const uint4*>(k_cache + offset));
        v_raw[u] = __ldg(reinterpret_cast<const uint4*>(v_cache + offset));
      }
    }
#pragma unroll
    for (int u = 0; u < kLoadUnroll; ++u) {
      const int i = first + u * kThreads;
      if (i < tile_chunks) {
        const int j = i / chunks_per_row;
        store(j, (i - j * chunks_per_row) * kChunk, k_raw[u], v_raw[u]);
      }
    }
  }
}

template <typename T, int kSplitThreads>
// 24 warps per SM either way: caps registers at 80 (256 threads) or 120 (128).
__global__ void __launch_bounds__(kSplitThreads, kSplitThreads == 256 ? 3 : 5)
    PagedAttentionSplitKernel(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                              const int32_t* __restrict__ block_tables, const int32_t* __restrict__ context_lens,
                              float* __restrict__ part_acc, float* __restrict__ part_stats, PagedAttentionShape s,
                              int splits) {
  AllowDependentsThenWait();
  constexpr int kSplitWarps = kSplitThreads / 32;
  extern __shared__ float4 smem_raw[];
  const SplitLayout layout = MakeSplitLayout(s);
  const int group = layout.group, hd = s.head_dim, ks = layout.k_stride;
  float* q_s = reinterpret_cast<float*>(smem_raw);  // [group][hd], pre-scaled
  float* k_s = q_s + group * hd;                    // [kTile][ks]
  float* v_s = k_s + kTile * ks;                    // [kTile][hd]
  float* p_s = v_s + kTile * hd;                    // [group][kTile]: scores, then weights
  float* m_s = p_s + group * kTile;                 // running max per head
  float* l_s = m_s + group;                         // running sum per head
  float* c_s = l_s + group;                         // this tile's rescale factor per head
  const int b = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int context = context_lens[b];
  if (context == 0) return;  // a row this call leaves alone (the whole block returns)
  const int64_t q_stride = s.q_row_stride > 0 ? s.q_row_stride : static_cast<int64_t>(s.num_heads) * hd;
  const T* qb = q + b * q_stride + static_cast<int64_t>(kvh) * group * hd;  // the group's heads are adjacent
  constexpr int kChunk = 16 / sizeof(T);                                    // elements per 16-byte load
  const int chunks_per_row = hd / kChunk;
  {
    // 16-byte loads, all issued before the first use: a plain element loop here waits for one
    // global load at a time.
    constexpr int kQUnroll = 4;
    const int q_chunks = group * chunks_per_row;
    for (int base = tid; base < q_chunks; base += kSplitThreads * kQUnroll) {
      uint4 raw[kQUnroll];
#pragma unroll
      for (int u = 0; u < kQUnroll; ++u) {
        const int c = base + u * kSplitThreads;
        if (c < q_chunks) raw[u] = __ldg(reinterpret_cast<const uint4*>(qb) + c);
      }
#pragma unroll
      for (int u = 0; u < kQUnroll; ++u) {
        const int c = base + u * kSplitThreads;
        if (c < q_chunks) {
          float* dst = q_s + c * kChunk;
          StoreChunk<T>(dst, raw[u]);
#pragma unroll
          for (int e = 0; e < kChunk; ++e) dst[e] *= s.scale;
        }
      }
    }
  }
  for (int g = tid; g < group; g += kSplitThreads) {
    m_s[g] = -FLT_MAX;
    l_s[g] = 0.0f;
  }
  const int cols = hd / 4;  // float4 columns of a row
  const int heads_per_pass = kSplitThreads / cols;
  const int my_col = tid % cols, my_head0 = tid / cols;
  float acc[kMaxHeadsPerThread][4];
#pragma unroll
  for (int r = 0; r < kMaxHeadsPerThread; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = 0.0f;
  const int32_t* table = block_tables + static_cast<int64_t>(b) * s.max_blocks_per_seq;
  __shared__ int64_t slot_s[kTile];
  __syncthreads();

  for (int tile = split; tile * kTile < context; tile += splits) {
    const int base = tile * kTile;
    const int n = min(kTile, context - base);
    TileSlots(slot_s, table, base, n, s, kvh);
    __syncthreads();
    LoadTile<kSplitThreads>(k_cache, v_cache, slot_s, n, n, hd,
                            [&](int j, int col, const uint4& k_raw, const uint4& v_raw) {
                              StoreChunk<T>(k_s + j * ks + col, k_raw);
                              StoreChunk<T>(v_s + j * hd + col, v_raw);
                            });
    __syncthreads();
    // Scores: lane = position, each warp takes heads warp, warp + kSplitWarps, ...
    for (int g0 = warp; g0 < group; g0 += kSplitWarps * kMaxHeadsPerWarpPass) {
      float dot[kMaxHeadsPerWarpPass];
#pragma unroll
      for (int r = 0; r < kMaxHeadsPerWarpPass; ++r) dot[r] = 0.0f;
      if (lane < n) {
        for (int c = 0; c < cols; ++c) {
          const float4 kv = *reinterpret_cast<const float4*>(k_s + lane * ks + 4 * c);
#pragma unroll
          for (int r = 0; r < kMaxHeadsPerWarpPass; ++r) {
            const int g = g0 + r * kSplitWarps;
            if (g < group) {
              const float4 qv = *reinterpret_cast<const float4*>(q_s + g * hd + 4 * c);
              dot[r] += qv.x * kv.x + qv.y * kv.y + qv.z * kv.z + qv.w * kv.w;
            }
          }
        }
      }
#pragma unroll
      for (int r = 0; r < kMaxHeadsPerWarpPass; ++r) {
        const int g = g0 + r * kSplitWarps;
        if (g < group) p_s[g * kTile + lane] = lane < n ? dot[r] : -FLT_MAX;
      }
    }
    __syncthreads();
    // Online softmax over this tile, one warp per head.
    for (int g = warp; g < group; g += kSplitWarps) {
      const float score[1] = {p_s[g * kTile + lane]};
      float weight[1];
      OnlineSoftmaxTile<1>(score, n, g, m_s, l_s, c_s, weight);
      p_s[g * kTile + lane] = weight[0];
    }
    __syncthreads();
    // Weighted V: each thread owns 4 dims of heads my_head0, my_head0 + heads_per_pass, ...
#pragma unroll
    for (int r = 0; r < kMaxHeadsPerThread; ++r) {
      const int g = my_head0 + r * heads_per_pass;
      if (g < group) {
        const float correction = c_s[g];
        acc[r][0] *= correction;
        acc[r][1] *= correction;
        acc[r][2] *= correction;
        acc[r][3] *= correction;
      }
    }
    for (int j = 0; j < n; ++j) {
      const float4 vv = *reinterpret_cast<const float4*>(v_s + j * hd + 4 * my_col);
#pragma unroll
      for (int r = 0; r < kMaxHeadsPerThread; ++r) {
        const int g = my_head0 + r * heads_per_pass;
        if (g < group) {
          const float w = p_s[g * kTile + j];
          acc[r][0] += w * vv.x;
          acc[r][1] += w * vv.y;
          acc[r][2] += w * vv.z;
          acc[r][3] += w * vv.w;
        }
      }
    }
    __syncthreads();
  }
  // Partial results: unnormalised sums plus (max, sum) per head; a split without tiles leaves
  // sum 0, which the merge skips.
  const int64_t unit = (static_cast<int64_t>(b) * s.num_kv_heads + kvh) * splits + split;
  float* acc_out = part_acc + unit * group * hd;
#pragma unroll
  for (int r = 0; r < kMaxHeadsPerThread; ++r) {
    const int g = my_head0 + r * heads_per_pass;
    if (g < group) {
      *reinterpret_cast<float4*>(acc_out + g * hd + 4 * my_col) =
          make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
    }
  }
  for (int g = tid; g < group; g += kSplitThreads) {
    part_stats[(unit * group + g) * 2] = m_s[g];
    part_stats[(unit * group + g) * 2 + 1] = l_s[g];
  }
}

// One lane per split of a query head: the split's weight in their merge, exp(its max - the
// head's max over the splits), and in `total` the splits' softmax sums under those weights.
// Lanes without a split (or a split without positions) pass l = 0 and weigh nothing.
__device__ __forceinline__ float SplitMergeWeight(float m, float l, float* total) {
  const float max_score = WarpMax(l > 0.0f ? m : -FLT_MAX);
  const float w = l > 0.0f ? __expf(m - max_score) : 0.0f;
  *total = WarpSum(l * w);
  return w;
}

// One block per (sequence, query head): merges the splits' partial softmax sums. The splits'
// statistics go through shared memory so each thread's partial loads are independent; the first
// kMergePrefetch partials of a thread's first dimension are loaded before the statistics, so the
// two global reads overlap instead of following each other.
constexpr int kMergePrefetch = 8;

template <typename T>
__global__ void PagedAttentionMergeKernel(const float* __restrict__ part_acc, const float* __restrict__ part_stats,
                                          const int32_t* __restrict__ context_lens, T* __restrict__ out,
                                          PagedAttentionShape s, int splits) {
  AllowDependentsThenWait();
  if (context_lens[blockIdx.x] == 0) return;  // the split kernel left this row alone
  __shared__ float weight_s[kMaxSplits];
  __shared__ float inv_total;
  const int b = blockIdx.x, h = blockIdx.y;
  const int group = s.num_heads / s.num_kv_heads;
  const int kvh = h / group, g = h % group, hd = s.head_dim;
  const int64_t unit0 = (static_cast<int64_t>(b) * s.num_kv_heads + kvh) * splits;
  auto partial = [&](int sp, int d) { return part_acc[((unit0 + sp) * group + g) * hd + d]; };
  const int first_d = threadIdx.x;
  float early[kMergePrefetch];
#pragma unroll
  for (int sp = 0; sp < kMergePrefetch; ++sp) early[sp] = sp < splits && first_d < hd ? partial(sp, first_d) : 0.0f;
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    float m = -FLT_MAX, l = 0.0f;
    if (lane < splits) {
      m = part_stats[((unit0 + lane) * group + g) * 2];
      l = part_stats[((unit0 + lane) * group + g) * 2 + 1];
    }
    float total;
    const float w = SplitMergeWeight(m, l, &total);  // splits without tiles weigh nothing
    if (lane < splits) weight_s[lane] = w;
    if (lane == 0) inv_total = 1.0f / total;
  }
  __syncthreads();
  T* o = out + (static_cast<int64_t>(b) * s.num_heads + h) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float value = 0.0f;  // summed in split order either way: the same bits
    int sp = 0;
    if (d == first_d) {
#pragma unroll
      for (; sp < kMergePrefetch; ++sp) {
        if (sp < splits) value += early[sp] * weight_s[sp];
      }
    }
#pragma unroll 8
    for (; sp < splits; ++sp) value += partial(sp, d) * weight_s[sp];
    o[d] = FromFloat<T>(value * inv_total);
  }
}

// Launches a split kernel (grid: sequence x KV head x split) and the merge kernel over the
// workspace's partial results.
template <typename T, typename SplitKernel>
bool LaunchSplitThenMerge(SplitKernel kernel, int threads, size_t smem, const void* q, const void* k, const void* v,
                          const int32_t* tables, const int32_t* lens, void* out, const PagedAttentionShape& s,
                          void* workspace, cudaStream_t stream) {
  const int splits = SplitCount(s);
  const SplitWorkspace parts = CarveWorkspace(workspace, s, splits);
  if (LaunchKernel(kernel, dim3(s.batch, s.num_kv_heads, splits), dim3(threads), smem, stream, static_cast<const T*>(q),
                   static_cast<const T*>(k), static_cast<const T*>(v), tables, lens, parts.part_acc, parts.part_stats,
                   s, splits) != cudaSuccess) {
    return false;
  }
  const int merge_threads = s.head_dim < 128 ? s.head_dim : 128;
  return LaunchKernel(PagedAttentionMergeKernel<T>, dim3(s.batch, s.num_heads), dim3(merge_threads), 0, stream,
                      parts.part_acc, parts.part_stats, lens, static_cast<T*>(out), s, splits) == cudaSuccess;
}

// The shared-memory limit is raised once per kernel, before any capture (not a stream operation).
template <typename Kernel>
bool AllowLargeSharedMemory(Kernel kernel) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024) == cudaSuccess;
}

template <typename T, int kThreads>
bool LaunchSplitWith(const void* q, const void* k, const void* v, const int32_t* tables, const int32_t* lens, void* out,
                     const PagedAttentionShape& s, void* workspace, cudaStream_t stream) {
  static const bool attribute_set = AllowLargeSharedMemory(PagedAttentionSplitKernel<T, kThreads>);
  return attribute_set &&
         LaunchSplitThenMerge<T>(PagedAttentionSplitKernel<T, kThreads>, kThreads, MakeSplitLayout(s).smem, q, k, v,
                                 tables, lens, out, s, workspace, stream);
}

template <typename T>
bool LaunchSplit(const void* q, const void* k, const void* v, const int32_t* tables, const int32_t* lens, void* out,
                 const PagedAttentionShape& s, void* workspace, cudaStream_t stream) {
  static const int threads = EnvSwitch("GLMSERVE_CUDA_ATTENTION_THREADS", kMinSplitThreads, "128 or 256",
                                       [](long value) { return value == 128 || value == 256; });
  return threads == 256 ? LaunchSplitWith<T, 256>(q, k, v, tables, lens, out, s, workspace, stream)
                        : LaunchSplitWith<T, 128>(q, k, v, tables, lens, out, s, workspace, stream);
}

// ---- Tensor-core split kernel (bf16 / fp16) ----
// The same split and partial-result layout as the CUDA-core split kernel, but QK^T and PV run
// on tensor cores (WMMA 16x16x16, fp32 accumulation) with the query heads of one KV head as the
// 16 rows: at batch 64 the fp32 CUDA-core dot products were most of the attention time. The
// softmax weights are rounded to the element type before PV (as flash attention does); running
// max and sum stay fp32.
constexpr int kMmaThreads = 128;
constexpr int kMmaWarps = kMmaThreads / 32;
constexpr int kMmaRows = 16;  // query heads per KV head that one fragment holds
constexpr int kMmaPad = 8;    // 16-bit elements of padding per shared row (bank spread, 32-byte alignment)
// Positions per pipeline step: 64 lets all four warps share QK^T and halves the barrier phases per
// context position; at batch 64 a block then walks one step instead of one or two.
// GLMSERVE_CUDA_ATTENTION_TILE=32 selects the smaller step for measurements.
constexpr int kMmaLargeTile = 64;

struct MmaLayout {
  int ld = 0;  // 16-bit elements per Q/K/V shared row
  int p_ld = 0;
  size_t q = 0, k = 0, v = 0, s = 0, p = 0, o = 0, stats = 0, bytes = 0;
};

// tile: context positions per pipeline step (32 or 64, kMmaLargeTile).
__host__ __device__ inline MmaLayout MakeMmaLayout(int head_dim, int tile) {
  MmaLayout l;
  l.ld = head_dim + kMmaPad;
  l.p_ld = tile + kMmaPad;
  size_t offset = 0;
  l.q = offset;
  offset += static_cast<size_t>(kMmaRows) * l.ld * 2;
  l.k = offset;
  offset += static_cast<size_t>(tile) * l.ld * 2;
  l.v = offset;
  offset += static_cast<size_t>(tile) * l.ld * 2;
  l.s = offset;
  offset += static_cast<size_t>(kMmaRows) * tile * 4;
  l.p = offset;
  offset += static_cast<size_t>(kMmaRows) * l.p_ld * 2;
  l.o = offset;
  offset += static_cast<size_t>(kMmaRows) * head_dim * 4;
  l.stats = offset;
  offset += 3 * kMmaRows * 4;
  l.bytes = offset;
  return l;
}

bool MmaKernelTakes(const PagedAttentionShape& s, ElementType type) {
  if (type == ElementType::kFloat32 || !s.allow_tensor_cores) return false;
  const int group = s.num_heads / s.num_kv_heads;
  return group <= kMmaRows && s.head_dim % 16 == 0 && s.head_dim <= 256 &&
         MakeMmaLayout(s.head_dim, kMmaLargeTile).bytes <= 200 * 1024;
}

template <typename T, int kRows>
__global__ void __launch_bounds__(kMmaThreads)
    PagedAttentionMmaKernel(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                            const int32_t* __restrict__ block_tables, const int32_t* __restrict__ context_lens,
                            float* __restrict__ part_acc, float* __restrict__ part_stats, PagedAttentionShape s,
                            int splits) {
  AllowDependentsThenWait();
  namespace wmma = nvcuda::wmma;
  extern __shared__ __align__(128) unsigned char mma_smem[];
  const int hd = s.head_dim, group = s.num_heads / s.num_kv_heads;
  const MmaLayout L = MakeMmaLayout(hd, kRows);
  T* q_s = reinterpret_cast<T*>(mma_smem + L.q);          // [16][ld], rows >= group zero
  T* k_s = reinterpret_cast<T*>(mma_smem + L.k);          // [kRows][ld]
  T* v_s = reinterpret_cast<T*>(mma_smem + L.v);          // [kRows][ld]
  float* s_s = reinterpret_cast<float*>(mma_smem + L.s);  // [16][kRows] raw scores
  T* p_s = reinterpret_cast<T*>(mma_smem + L.p);          // [16][p_ld] weights
  float* o_s = reinterpret_cast<float*>(mma_smem + L.o);  // [16][hd] unnormalised output
  float* m_s = reinterpret_cast<float*>(mma_smem + L.stats);
  float* l_s = m_s + kMmaRows;
  float* c_s = l_s + kMmaRows;
  __shared__ int64_t slot_s[2][kRows];  // this tile's and the next one's cache rows
  const int b = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int context = context_lens[b];
  if (context == 0) return;  // a row this call leaves alone (the whole block returns)
  const int64_t q_stride = s.q_row_stride > 0 ? s.q_row_stride : static_cast<int64_t>(s.num_heads) * hd;
  const T* qb = q + b * q_stride + static_cast<int64_t>(kvh) * group * hd;
  const int chunks_per_row = hd / 8;  // 16-byte chunks of 16-bit elements
  const int32_t* table = block_tables + static_cast<int64_t>(b) * s.max_blocks_per_seq;

  // A short-context block waits on its chain of dependent global reads, not on bandwidth, so
  // the tile loop is a pipeline: the next tile's slots are looked up while this one computes,
  // its K rows load (cp.async, no register staging) as soon as QK^T has read this tile's, and its
  // V rows as soon as PV has. Rows past the context are zero-filled.
  auto load_rows = [&](const T* cache, T* rows_s, const int64_t* slots, int n) {
    for (int i = tid; i < kRows * chunks_per_row; i += kMmaThreads) {
      const int j = i / chunks_per_row, c = i - j * chunks_per_row;
      const bool valid = j < n;
      CopyAsync16(rows_s + j * L.ld + c * 8, valid ? cache + slots[j] * hd + c * 8 : cache, valid);
    }
  };
  auto tile_rows = [&](int t) { return min(kRows, context - t * kRows); };
  int tile = split;
  if (tile * kRows < context) TileSlots(slot_s[0], table, tile * kRows, tile_rows(tile), s, kvh);
  __syncthreads();
  // Group 1: the query and the first tile's K; group 2: its V (both empty without a tile).
  for (int i = tid; i < kMmaRows * chunks_per_row; i += kMmaThreads) {
    const int r = i / chunks_per_row, c = i - r * chunks_per_row;
    CopyAsync16(q_s + r * L.ld + c * 8, r < group ? qb + static_cast<int64_t>(r) * hd + c * 8 : qb, r < group);
  }
  if (tile * kRows < context) load_rows(k_cache, k_s, slot_s[0], tile_rows(tile));
  CopyAsyncCommit();
  if (tile * kRows < context) load_rows(v_cache, v_s, slot_s[0], tile_rows(tile));
  CopyAsyncCommit();
  for (int i = tid; i < kMmaRows * hd; i += kMmaThreads) o_s[i] = 0.0f;
  for (int i = tid; i < kMmaRows * L.p_ld; i += kMmaThreads) p_s[i] = T(0.0f);
  if (tid < kMmaRows) {
    m_s[tid] = -FLT_MAX;
    l_s[tid] = 0.0f;
    c_s[tid] = 1.0f;
  }

  for (int buffer = 0; tile * kRows < context; buffer ^= 1) {
    const int n = tile_rows(tile);
    const int next = tile + splits;
    const bool has_next = next * kRows < context;
    if (has_next) TileSlots(slot_s[buffer ^ 1], table, next * kRows, tile_rows(next), s, kvh);
    CopyAsyncWait<1>();  // this tile's K (and the query); its V may still be in flight
    __syncthreads();
    // S = Q K^T: warp w < kRows / 16 computes positions 16w .. 16w + 15.
    if (warp < kRows / 16) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> scores;
      wmma::fill_fragment(scores, 0.0f);
      for (int kk = 0; kk < hd / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kt;  // K^T: (dim, position)
        wmma::load_matrix_sync(a, q_s + kk * 16, L.ld);
        wmma::load_matrix_sync(kt, k_s + warp * 16 * L.ld + kk * 16, L.ld);
        wmma::mma_sync(scores, a, kt, scores);
      }
      wmma::store_matrix_sync(s_s + warp * 16, scores, kRows, wmma::mem_row_major);
    }
    __syncthreads();  // k_s is free, and the next tile's slots are visible
    if (has_next) load_rows(k_cache, k_s, slot_s[buffer ^ 1], tile_rows(next));
    CopyAsyncCommit();
    // Online softmax over the tile, one warp per head, lane = position.
    for (int g = warp; g < group; g += kMmaWarps) {
      constexpr int kPer = kRows / 32;
      float score[kPer], weight[kPer];
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int position = lane + 32 * j;
        score[j] = position < n ? s_s[g * kRows + position] * s.scale : -FLT_MAX;
      }
      OnlineSoftmaxTile<kPer>(score, n, g, m_s, l_s, c_s, weight);
#pragma unroll
      for (int j = 0; j < kPer; ++j) p_s[g * L.p_ld + lane + 32 * j] = T(weight[j]);
    }
    __syncthreads();
    for (int i = tid; i < group * hd; i += kMmaThreads) o_s[i] *= c_s[i / hd];
    CopyAsyncWait<1>();  // this tile's V; the next tile's K may still be in flight
    __syncthreads();
    // O += P V: each warp takes 16-column blocks of the head dimension.
    for (int nb = warp; nb < hd / 16; nb += kMmaWarps) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> out;
      wmma::load_matrix_sync(out, o_s + nb * 16, hd, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kRows / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> weights;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> values;
        wmma::load_matrix_sync(weights, p_s + kk * 16, L.p_ld);
        wmma::load_matrix_sync(values, v_s + kk * 16 * L.ld + nb * 16, L.ld);
        wmma::mma_sync(out, weights, values, out);
      }
      wmma::store_matrix_sync(o_s + nb * 16, out, hd, wmma::mem_row_major);
    }
    __syncthreads();  // v_s is free
    if (has_next) load_rows(v_cache, v_s, slot_s[buffer ^ 1], tile_rows(next));
    CopyAsyncCommit();
    tile = next;
  }
  CopyAsyncWait<0>();
  __syncthreads();  // a block without tiles reaches here with o_s and the stats just written
  const int64_t unit = (static_cast<int64_t>(b) * s.num_kv_heads + kvh) * splits + split;
  float* acc_out = part_acc + unit * group * hd;
  for (int i = tid; i < group * hd; i += kMmaThreads) acc_out[i] = o_s[i];
  for (int g = tid; g < group; g += kMmaThreads) {
    part_stats[(unit * group + g) * 2] = m_s[g];
    part_stats[(unit * group + g) * 2 + 1] = l_s[g];
  }
}

// ---- Register-tile split kernel (bf16 / fp16, head_dim 32 / 64 / 128) ----
// Flash-decoding with every intermediate in registers: each warp takes 32-position chunks of
// the context on its own (K and V rows through its own shared-memory rows, cp.async), computes
// S = Q K^T with mma.m16n8k16 (the group's query heads as the 16 rows), keeps the running max,
// sum and the output accumulator as mma fragments, and feeds the softmax weights straight back
// as the A operand of P V. No block barrier inside the loop; the block's warps are combined once
// at the end. A sequence whose chunks fit one split is finished by that split's block, which
// writes the output itself; longer ones spread over up to `splits` blocks, and the last of them
// to finish merges their partial results: one kernel either way.
constexpr int kWarpChunk = 32;  // positions per warp step
// Chunks a split takes before another split joins; GLMSERVE_CUDA_ATTENTION_CHUNKS overrides it
// for measurements.
constexpr int kWarpChunksPerSplit = 8;

// Splits holding a part of a `context`-position sequence (the grid's other splits idle).
__device__ __forceinline__ int WarpActiveSplits(int context, int splits, int chunks_per_split) {
  const int chunks = (context + kWarpChunk - 1) / kWarpChunk;
  const int wanted = (chunks + chunks_per_split - 1) / chunks_per_split;
  return wanted < 1 ? 1 : (wanted < splits ? wanted : splits);
}

bool WarpKernelTakes(const PagedAttentionShape& s, ElementType type) {
  return type != ElementType::kFloat32 && s.allow_tensor_cores && s.allow_warp_tiles &&
         s.num_heads / s.num_kv_heads <= kMmaRows && (s.head_dim == 32 || s.head_dim == 64 || s.head_dim == 128);
}

template <int kHeadDim, int kWarps>
struct WarpLayout {
  static constexpr int kLd = kHeadDim + 8;  // 16-bit elements per shared row: 16 bytes of padding spread the banks
  static constexpr int kRowsBytes = kWarpChunk * kLd * 2;
  static constexpr int kWarpBytes = 2 * kRowsBytes;  // K rows, then V rows
  static constexpr int kQBytes = kMmaRows * kLd * 2;
  static constexpr int kBytes = kQBytes + kWarps * kWarpBytes;
  static_assert(kWarpBytes >= kMmaRows * kHeadDim * 4, "a warp's rows hold its fp32 output at the end");
};

__device__ __forceinline__ uint32_t PackPair(float lo, float hi, const __nv_bfloat16*) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t PackPair(float lo, float hi, const __half*) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

template <typename T, int kHeadDim, int kWarps>
__global__ void __launch_bounds__(kWarps * 32)
    PagedAttentionWarpKernel(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                             const int32_t* __restrict__ block_tables, const int32_t* __restrict__ context_lens,
                             float* __restrict__ part_acc, float* __restrict__ part_stats, int* __restrict__ counters,
                             T* __restrict__ out, PagedAttentionShape s, int splits, int chunks_per_split) {
  AllowDependentsThenWait();
  using L = WarpLayout<kHeadDim, kWarps>;
  constexpr int kThreads = kWarps * 32;
  constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
  constexpr int kDimTiles = kHeadDim / 8;      // n8 tiles of the output
  constexpr int kSteps = kHeadDim / 16;        // k16 steps of Q K^T
  extern __shared__ __align__(128) unsigned char warp_smem[];
  const int b = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int32_t* table = block_tables + static_cast<int64_t>(b) * s.max_blocks_per_seq;
  // The first split's first chunks do not depend on the context length: their table entries
  // (inside the sequence's row up to max_context) are read beside it, not after it.
  const int guess_p = warp * kWarpChunk + lane;
  const bool guessed = split == 0 && guess_p < s.max_context && guess_p / s.block_size < s.max_blocks_per_seq;
  const int32_t guess_block = guessed ? table[guess_p / s.block_size] : 0;
  const int context = context_lens[b];
  if (context == 0) return;  // a row this call leaves alone (the whole block returns)
  const int active = WarpActiveSplits(context, splits, chunks_per_split);
  if (split >= active) return;  // the whole block: no barrier below is skipped by some threads only
  const int chunks = (context + kWarpChunk - 1) / kWarpChunk;
  const int first = static_cast<int>(static_cast<int64_t>(chunks) * split / active);
  const int last = static_cast<int>(static_cast<int64_t>(chunks) * (split + 1) / active);
  const int group = s.num_heads / s.num_kv_heads;
  const uint32_t q_s = static_cast<uint32_t>(__cvta_generic_to_shared(warp_smem));
  const uint32_t k_s = q_s + L::kQBytes + warp * L::kWarpBytes, v_s = k_s + L::kRowsBytes;
  const int64_t q_stride = s.q_row_stride > 0 ? s.q_row_stride : static_cast<int64_t>(s.num_heads) * kHeadDim;
  const T* qb = q + b * q_stride + static_cast<int64_t>(kvh) * group * kHeadDim;

  // Row (in head_dim elements) of this lane's position in chunk c; -1 past the context.
  auto lane_row = [&](int c) -> int64_t {
    const int p = c * kWarpChunk + lane;
    if (p >= context) return -1;
    const int32_t block = p == guess_p && guessed ? guess_block : table[p / s.block_size];
    return (static_cast<int64_t>(block) * s.block_size + p % s.block_size) * s.num_kv_heads + kvh;
  };
  auto load_rows = [&](const T* cache, uint32_t rows_s, int64_t my_row) {
#pragma unroll
    for (int i = 0; i < kChunksPerRow; ++i) {
      const int id = i * 32 + lane, j = id / kChunksPerRow, c = id % kChunksPerRow;
      const int64_t row = __shfl_sync(0xffffffffu, my_row, j);
      CopyAsync16(rows_s + (j * L::kLd + c * 8) * 2, row >= 0 ? cache + row * kHeadDim + c * 8 : cache, row >= 0);
    }
  };

  // Group 1: the query (every thread a part); groups 2 and 3: the warp's first chunk's K, V.
  for (int i = tid; i < kMmaRows * kChunksPerRow; i += kThreads) {
    const int r = i / kChunksPerRow, c = i % kChunksPerRow;
    CopyAsync16(q_s + (r * L::kLd + c * 8) * 2, r < group ? qb + static_cast<int64_t>(r) * kHeadDim + c * 8 : qb,
                r < group);
  }
  CopyAsyncCommit();
  int chunk = first + warp;
  const int64_t row = chunk < last ? lane_row(chunk) : -1;
  if (chunk < last) load_rows(k_cache, k_s, row);
  CopyAsyncCommit();
  if (chunk < last) load_rows(v_cache, v_s, row);
  CopyAsyncCommit();
  CopyAsyncWait<2>();
  __syncthreads();
  uint32_t qf[kSteps][4];
#pragma unroll
  for (int ks = 0; ks < kSteps; ++ks) {
    LoadMatrixX4(q_s + ((lane & 15) * L::kLd + ks * 16 + (lane >> 4) * 8) * 2, qf[ks]);
  }

  // Index 0: fragment row lane / 4, index 1: row lane / 4 + 8 (query heads of the group).
  float m[2] = {-FLT_MAX, -FLT_MAX}, l[2] = {0.0f, 0.0f};
  float o[kDimTiles][4];
#pragma unroll
  for (int t = 0; t < kDimTiles; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
  const float scale = s.scale;
  while (chunk < last) {
    const int next = chunk + kWarps;
    const int64_t next_row = next < last ? lane_row(next) : -1;  // its table read overlaps this chunk
    CopyAsyncWait<1>();                                          // this chunk's K
    __syncwarp();
    float sc[4][4];
#pragma unroll
    for (int t = 0; t < 4; ++t) sc[t][0] = sc[t][1] = sc[t][2] = sc[t][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
#pragma unroll
      for (int t = 0; t < 4; t += 2) {
        uint32_t kf[4];  // positions 8t .. 8t + 15 at dims 16 ks .. 16 ks + 15
        LoadMatrixX4(k_s + ((t * 8 + (lane & 7) + ((lane >> 4) << 3)) * L::kLd + ks * 16 + ((lane >> 3) & 1) * 8) * 2,
                     kf);
        Mma<T>(sc[t], qf[ks], kf[0], kf[1]);
        Mma<T>(sc[t + 1], qf[ks], kf[2], kf[3]);
      }
    }
    __syncwarp();  // every lane has read this chunk's K
    if (next < last) load_rows(k_cache, k_s, next_row);
    CopyAsyncCommit();
    // Online softmax per query head; the four lanes of a quad share a row.
    const int base = chunk * kWarpChunk + 2 * (lane % 4);
    float corr[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float tile_max = -FLT_MAX;
#pragma unroll
      for (int t = 0; t < 4; ++t)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const bool valid = base + 8 * t + e < context;
          sc[t][2 * h + e] = valid ? sc[t][2 * h + e] * scale : -FLT_MAX;
          tile_max = fmaxf(tile_max, sc[t][2 * h + e]);
        }
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float m_new = fmaxf(m[h], tile_max);
      corr[h] = __expf(m[h] - m_new);
      float sum = 0.0f;
#pragma unroll
      for (int t = 0; t < 4; ++t)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          sc[t][2 * h + e] = __expf(sc[t][2 * h + e] - m_new);
          sum += sc[t][2 * h + e];
        }
      l[h] = l[h] * corr[h] + sum;  // this lane's share; the quad is summed at the end
      m[h] = m_new;
    }
#pragma unroll
    for (int t = 0; t < kDimTiles; ++t) {
      o[t][0] *= corr[0];
      o[t][1] *= corr[0];
      o[t][2] *= corr[1];
      o[t][3] *= corr[1];
    }
    CopyAsyncWait<1>();  // this chunk's V
    __syncwarp();
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {  // positions 16 kk .. 16 kk + 15: the A fragment from the scores
      uint32_t pf[4];
      pf[0] = PackPair(sc[2 * kk][0], sc[2 * kk][1], static_cast<const T*>(nullptr));
      pf[1] = PackPair(sc[2 * kk][2], sc[2 * kk][3], static_cast<const T*>(nullptr));
      pf[2] = PackPair(sc[2 * kk + 1][0], sc[2 * kk + 1][1], static_cast<const T*>(nullptr));
      pf[3] = PackPair(sc[2 * kk + 1][2], sc[2 * kk + 1][3], static_cast<const T*>(nullptr));
#pragma unroll
      for (int t = 0; t < kDimTiles; t += 2) {
        uint32_t vf[4];  // positions 16 kk .. + 15 at dims 8 t .. 8 t + 15, transposed
        LoadMatrixX4Trans(v_s + ((kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * L::kLd + (t + (lane >> 4)) * 8) * 2,
                          vf);
        Mma<T>(o[t], pf, vf[0], vf[1]);
        Mma<T>(o[t + 1], pf, vf[2], vf[3]);
      }
    }
    __syncwarp();  // every lane has read this chunk's V
    if (next < last) load_rows(v_cache, v_s, next_row);
    CopyAsyncCommit();
    chunk = next;
  }
  CopyAsyncWait<0>();

  // Combine the warps: each writes its max, sum and output (relative to its own max) into its
  // own rows, then every thread takes some of the group's outputs.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
  }
  __shared__ float m_w[kWarps][kMmaRows], l_w[kWarps][kMmaRows];
  if (lane % 4 == 0) {
    m_w[warp][lane / 4] = m[0];
    m_w[warp][lane / 4 + 8] = m[1];
    l_w[warp][lane / 4] = l[0];
    l_w[warp][lane / 4 + 8] = l[1];
  }
  auto warp_out = [&](int w) { return reinterpret_cast<float*>(warp_smem + L::kQBytes + w * L::kWarpBytes); };
  float* o_w = warp_out(warp);  // [16][kHeadDim]
#pragma unroll
  for (int t = 0; t < kDimTiles; ++t) {
    const int d = 8 * t + 2 * (lane % 4);
    *reinterpret_cast<float2*>(o_w + (lane / 4) * kHeadDim + d) = make_float2(o[t][0], o[t][1]);
    *reinterpret_cast<float2*>(o_w + (lane / 4 + 8) * kHeadDim + d) = make_float2(o[t][2], o[t][3]);
  }
  __syncthreads();
  // Each head's weight per warp, once: exp(warp max - block max), and the block's sum.
  __shared__ float weight_w[kWarps][kMmaRows], max_s[kMmaRows], total_s[kMmaRows];
  if (tid < group) {
    float max_score = -FLT_MAX;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) max_score = fmaxf(max_score, l_w[w][tid] > 0.0f ? m_w[w][tid] : -FLT_MAX);
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float weight = l_w[w][tid] > 0.0f ? __expf(m_w[w][tid] - max_score) : 0.0f;  // idle warps weigh nothing
      weight_w[w][tid] = weight;
      total += l_w[w][tid] * weight;
    }
    max_s[tid] = max_score;
    total_s[tid] = total;
  }
  __syncthreads();
  const bool final = active == 1;
  const int64_t unit0 = (static_cast<int64_t>(b) * s.num_kv_heads + kvh) * splits;
  T* out_b = out + (static_cast<int64_t>(b) * s.num_heads + kvh * group) * kHeadDim;
  for (int i = tid; i < group * kHeadDim; i += kThreads) {
    const int g = i / kHeadDim;
    float value = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) value += warp_out(w)[i] * weight_w[w][g];
    if (final) {
      const float total = total_s[g];
      out_b[i] = FromFloat<T>(total > 0.0f ? value / total : 0.0f);
    } else {
      part_acc[(unit0 + split) * group * kHeadDim + i] = value;
      if (i % kHeadDim == 0) {
        part_stats[((unit0 + split) * group + g) * 2] = max_s[g];
        part_stats[((unit0 + split) * group + g) * 2 + 1] = total_s[g];
      }
    }
  }
  if (final) return;
  // The sequence's last split to finish merges all the partial results (in split order: the
  // sum does not depend on which block arrives last) and resets the counter for the next call.
  __shared__ int merging;
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    int* counter = counters + static_cast<int64_t>(b) * s.num_kv_heads + kvh;
    merging = atomicAdd(counter, 1) == active - 1;
    if (merging) *counter = 0;  // every split of this call has arrived
  }
  __syncthreads();
  if (!merging) return;
  __threadfence();
  __shared__ float weight_s[kMmaRows][kMaxSplits];
  __shared__ float inv_total_s[kMmaRows];
  for (int g = warp; g < group; g += kWarps) {
    float m_split = -FLT_MAX, l_split = 0.0f;
    if (lane < active) {
      m_split = __ldcg(part_stats + ((unit0 + lane) * group + g) * 2);
      l_split = __ldcg(part_stats + ((unit0 + lane) * group + g) * 2 + 1);
    }
    float total;
    const float w = SplitMergeWeight(m_split, l_split, &total);
    if (lane < active) weight_s[g][lane] = w;
    if (lane == 0) inv_total_s[g] = total > 0.0f ? 1.0f / total : 0.0f;
  }
  __syncthreads();
  for (int i = tid; i < group * kHeadDim; i += kThreads) {
    const int g = i / kHeadDim;
    float value = 0.0f;
    for (int sp = 0; sp < active; ++sp)
      value += __ldcg(part_acc + (unit0 + sp) * group * kHeadDim + i) * weight_s[g][sp];
    out_b[i] = FromFloat<T>(value * inv_total_s[g]);
  }
}

// Splits of the register-tile kernel's grid: as many (sequence, KV head, split) blocks as fit
// the SMs at once (an 8-warp block takes an SM), never a second wave: blocks a short context
// leaves idle would otherwise wait for a free SM just to return. Never more than the
// workspace's SplitCount.
int WarpSplitCount(const PagedAttentionShape& s, int blocks_per_sm) {
  const int units = s.batch * s.num_kv_heads;
  const int splits = blocks_per_sm * SplitSmCount() / units;
  const int most = SplitCount(s);
  return splits < 1 ? 1 : (splits < most ? splits : most);
}

template <typename T, int kHeadDim, int kWarps>
bool LaunchWarpWith(const void* q, const void* k, const void* v, const int32_t* tables, const int32_t* lens, void* out,
                    const PagedAttentionShape& s, void* workspace, cudaStream_t stream) {
  static const bool attribute_set = AllowLargeSharedMemory(PagedAttentionWarpKernel<T, kHeadDim, kWarps>);
  static const int chunks_per_split =
      EnvSwitch("GLMSERVE_CUDA_ATTENTION_CHUNKS", kWarpChunksPerSplit, "an integer in [1, 64]",
                [](long value) { return value >= 1 && value <= 64; });
  if (!attribute_set) return false;
  const int splits = WarpSplitCount(s, kWarps == 8 ? 1 : 2);
  const SplitWorkspace parts = CarveWorkspace(workspace, s, splits);
  return LaunchKernel(PagedAttentionWarpKernel<T, kHeadDim, kWarps>, dim3(s.batch, s.num_kv_heads, splits),
                      dim3(kWarps * 32), WarpLayout<kHeadDim, kWarps>::kBytes, stream, static_cast<const T*>(q),
                      static_cast<const T*>(k), static_cast<const T*>(v), tables, lens, parts.part_acc,
                      parts.part_stats, parts.counters, static_cast<T*>(out), s, splits,
                      chunks_per_split) == cudaSuccess;
}

// Warps per block: 8 (a 256-position context in one pass, one block an SM) while every
// (sequence, KV head) fits one wave of SMs; past that 4, two blocks an SM, so the grid takes half
// the waves (GLM-4-9B, H200: decode steps +2% at 128 and 256 rows, -0.4% at 64 where 4 warps
// split a context in two; bench/results/gpu.md, sixth session). GLMSERVE_CUDA_ATTENTION_WARPS=4 or
// 8 fixes it for measurements.
template <typename T, int kHeadDim>
bool LaunchWarpDim(const void* q, const void* k, const void* v, const int32_t* tables, const int32_t* lens, void* out,
                   const PagedAttentionShape& s, void* workspace, cudaStream_t stream) {
  static const int fixed_warps =
      EnvSwitch("GLMSERVE_CUDA_ATTENTION_WARPS", 0, "4 or 8", [](long value) { return value == 4 || value == 8; });
  const int warps = fixed_warps != 0 ? fixed_warps : (s.batch * s.num_kv_heads > SplitSmCount() ? 4 : 8);
  return warps == 8 ? LaunchWarpWith<T, kHeadDim, 8>(q, k, v, tables, lens, out, s, workspace, stream)
                    : LaunchWarpWith<T, kHeadDim, 4>(q, k, v, tables, lens, out, s, workspace, stream);
}

template <typename T>
bool LaunchWarp(const void* q, const void* k, const void* v, const int32_t* tables, const int32_t* lens, void* out,
                const PagedAttentionShape& s, void* workspace, cudaStream_t stream) {
  switch (s.head_dim) {
    case 32:
      return LaunchWarpDim<T, 32>(q, k, v, tables, lens, out, s, workspace, stream);
    case 64:
      return LaunchWarpDim<T, 64>(q, k, v, tables, lens, out, s, workspace, stream);
    case 128:
      return LaunchWarpDim<T, 128>(q, k, v, tables, lens, out, s, workspace, stream);
  }
  return false;
}

template <typename T, int kRows>
bool LaunchMmaWith(const void* q, const void* k, const void* v, const int32_t* tables, const int32_t* lens, void* out,
                   const PagedAttentionShape& s, void* workspace, cudaStream_t stream) {
  static const bool attribute_set = AllowLargeSharedMemory(PagedAttentionMmaKernel<T, kRows>);
  return attribute_set &&
         LaunchSplitThenMerge<T>(PagedAttentionMmaKernel<T, kRows>, kMmaThreads, MakeMmaLayout(s.head_dim, kRows).bytes,
                                 q, k, v, tables, lens, out, s, workspace, stream);
}

template <typename T>
bool LaunchMma(const void* q, const void* k, const void* v, const int32_t* tables, const int32_t* lens, void* out,
               const PagedAttentionShape& s, void* workspace, cudaStream_t stream) {
  static const int tile = EnvSwitch("GLMSERVE_CUDA_ATTENTION_TILE", kMmaLargeTile, "32 or 64",
                                    [](long value) { return value == 32 || value == kMmaLargeTile; });
  return tile == 32 ? LaunchMmaWith<T, 32>(q, k, v, tables, lens, out, s, workspace, stream)
                    : LaunchMmaWith<T, kMmaLargeTile>(q, k, v, tables, lens, out, s, workspace, stream);
}

}  // namespace

static bool ShapeIsValid(const PagedAttentionShape& s) {
  return s.batch > 0 && s.num_heads > 0 && s.num_kv_heads > 0 && s.num_heads % s.num_kv_heads == 0 && s.head_dim > 0 &&
         s.head_dim <= 256 && s.block_size > 0 && s.max_context > 0 && s.max_context <= PagedAttentionMaxContext() &&
         s.q_row_stride >= 0;
}

size_t PagedAttentionWorkspaceBytes(const PagedAttentionShape& s) {
  if (!ShapeIsValid(s) || !SplitKernelTakes(s)) return 0;
  const size_t units = static_cast<size_t>(s.batch) * s.num_kv_heads * SplitCount(s);
  const size_t group = static_cast<size_t>(s.num_heads / s.num_kv_heads);
  return (static_cast<size_t>(CounterWords(s)) + units * group * (static_cast<size_t>(s.head_dim) + 2)) * sizeof(float);
}

bool PagedAttentionDecodeCuda(const void* q, const void* k_cache, const void* v_cache, const int32_t* block_tables,
                              const int32_t* context_lens, void* out, const PagedAttentionShape& s, ElementType type,
                              void* stream, void* workspace) {
  if (!ShapeIsValid(s)) return false;
  auto st = static_cast<cudaStream_t>(stream);
  // The split kernel reads q, K and V with 16-byte loads.
  const size_t element = type == ElementType::kFloat32 ? 4 : 2;
  const int64_t q_stride = s.q_row_stride > 0 ? s.q_row_stride : int64_t{s.num_heads} * s.head_dim;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vector_loads = aligned(q) && aligned(k_cache) && aligned(v_cache) && (q_stride * element) % 16 == 0;
  if (workspace != nullptr && vector_loads && SplitKernelTakes(s) && WarpKernelTakes(s, type)) {
    return type == ElementType::kBFloat16
               ? LaunchWarp<__nv_bfloat16>(q, k_cache, v_cache, block_tables, context_lens, out, s, workspace, st)
               : LaunchWarp<__half>(q, k_cache, v_cache, block_tables, context_lens, out, s, workspace, st);
  }
  if (workspace != nullptr && vector_loads && SplitKernelTakes(s) && MmaKernelTakes(s, type)) {
    return type == ElementType::kBFloat16
               ? LaunchMma<__nv_bfloat16>(q, k_cache, v_cache, block_tables, context_lens, out, s, workspace, st)
               : LaunchMma<__half>(q, k_cache, v_cache, block_tables, context_lens, out, s, workspace, st);
  }
  if (workspace != nullptr && vector_loads && SplitKernelTakes(s)) {
    switch (type) {
      case ElementType::kFloat32:
        return LaunchSplit<float>(q, k_cache, v_cache, block_tables, context_lens, out, s, workspace, st);
      case ElementType::kBFloat16:
        return LaunchSplit<__nv_bfloat16>(q, k_cache, v_cache, block_tables, context_lens, out, s, workspace, st);
      case ElementType::kFloat16:
        return LaunchSplit<__half>(q, k_cache, v_cache, block_tables, context_lens, out, s, workspace, st);
    }
    return false;
  }
  switch (type) {
    case ElementType::kFloat32:
      return Launch<float>(q, k_cache, v_cache, block_tables, context_lens, out, s, st);
    case ElementType::kBFloat16:
      return Launch<__nv_bfloat16>(q, k_cache, v_cache, block_tables, context_lens, out, s, st);
    case ElementType::kFloat16:
      return Launch<__half>(q, k_cache, v_cache, block_tables, context_lens, out, s, st);
  }
  return false;
}

int32_t PagedAttentionMaxContext() {
  // Shared memory does not depend on the context: only int32 positions bound it.
  return CudaKernelsAvailable() ? (1 << 30) : 0;
}

}  // namespace glmserve::kernels
