// Tensor-core GEMM for decode batches (a few to 64 rows): y = x w^T (+ bias) with the weight
// streamed once from HBM. The work, output tiles x k blocks, is cut into one contiguous equal
// range per resident block ("stream-K"), so every SM streams the same share of the weight
// whatever the shape. A tile cut between blocks is finished by the block that arrives last,
// which sums the parts in block order: the result depends neither on timing nor on the number
// of rows. Measured against cuBLAS on GLM-4-9B's shapes (bench/gemm_bench, bench/results/gpu.md)
// it is faster only on a large weight (the lm_head, up to 64 rows), where the runtime uses it.
//
// Per block: 128 weight rows (output features) x 128 k per stage, a pipeline as deep as shared
// memory allows, XOR-swizzled rows, and the weight as the A operand, x as B (8 to 64 rows), so 8
// rows waste nothing. Three forms: warpgroup MMA (wgmma, two warpgroups of 64 features reading
// both operands from shared memory) fed by the tensor memory accelerator (a producer warp, stages
// handed over on mbarriers, the weight's first stages asked for before the kernel before ends:
// the default), the same fed by cp.async with a block barrier a stage, or per-warp mma.sync fed
// by ldmatrix. On an H200 at 64 rows TMA is 17-26% faster than cp.async, which is 10-13% faster
// than mma.sync (the ldmatrix traffic for x was the bound); at 8 rows TMA and cp.async tie on
// the lm_head (bench/results/gpu.md).
#include <cuda.h>  // CUtensorMap and its enums only: the encoder comes through the runtime
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "kernels/decode_ops.h"
#include "kernels/device_math.cuh"
#include "kernels/launch.cuh"
#include "kernels/mbarrier.cuh"

namespace glmserve::kernels {
namespace {

constexpr int kTileFeatures = 128;  // weight rows per tile
constexpr int kMaxTiles = 16384;    // counters in the workspace: n <= 2M features
// A block's partial sums of one tile: 128 features x up to 64 rows, in fragment order.
constexpr int kSlotFloats = kTileFeatures * kSkinnyGemmMaxRows;

// Tile geometry: 128 k per stage, so each weight row is read 256 contiguous bytes at a time (64
// k, 128 bytes, streamed 5-10% slower on an H100); 8 warps of 16 features; one block per SM with
// most of its shared memory.
struct Wide {
  static constexpr int kBlockK = 128, kWarps = 8, kBlocksPerSm = 1, kSmem = 220 * 1024;
  static constexpr bool kWarpgroupMma = false;  // mma.sync per warp, operands through ldmatrix
};
// The same tiles on warpgroup MMA: two warpgroups of 64 features.
struct WideWarpgroup : Wide {
  static constexpr bool kWarpgroupMma = true;
};

// Warpgroup MMA (sm_90a): wgmma.m64nNk16 with both operands read from shared memory through
// descriptors, no ldmatrix and no per-warp copy of x. The weight tile is A (64 features per
// warpgroup), x is B (N = 8 * RowTiles rows); both K-major in the 128-byte swizzle.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GLMSERVE_HAVE_WGMMA 1
#elif defined(__CUDA_ARCH__) && GLMSERVE_CUDA_SM90A
#error "GLMSERVE_CUDA_SM90A is set but the device code is not built for sm_90a"
#endif

// Shared-memory matrix descriptor: rows of 128 bytes (64 elements) swizzled in 8-row, 1024-byte
// atoms (the atom's base 1024-aligned); `smem` may point into an atom's row at a 32-byte k step.
__device__ __forceinline__ uint64_t SwizzledDescriptor(uint32_t smem) {
  constexpr uint64_t kLeadingBytes = 16, kAtomBytes = 1024, kSwizzle128 = 1;
  return static_cast<uint64_t>((smem & 0x3ffff) >> 4) | (kLeadingBytes >> 4) << 16 | (kAtomBytes >> 4) << 32 |
         kSwizzle128 << 62;
}

__device__ __forceinline__ void WarpgroupFence() {
#ifdef GLMSERVE_HAVE_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void WarpgroupCommitAndWait() {
#ifdef GLMSERVE_HAVE_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\nwgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
}
// Makes this thread's completed cp.async writes visible to the async proxy wgmma reads through.
__device__ __forceinline__ void FenceSharedForAsyncProxy() {
#ifdef GLMSERVE_HAVE_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Keeps the compiler from moving accumulator reads or writes across an in-flight wgmma.
template <int N>
__device__ __forceinline__ void PinRegisters(float (&c)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(c[i][j])::"memory");
}

#define GLMSERVE_WGMMA(shape, type) "wgmma.mma_async.sync.aligned." shape ".f32." type "." type " "
#define GLMSERVE_WGMMA_TAIL(a, b, s) ", %" #a ", %" #b ", p, 1, 1, 0, 0;\n}\n"
#define GLMSERVE_WGMMA_PRED(s) "{\n.reg .pred p;\nsetp.ne.b32 p, %" #s ", 0;\n"
#define GLMSERVE_F4(c, i) "+f"(c[i][0]), "+f"(c[i][1]), "+f"(c[i][2]), "+f"(c[i][3])

// The instruction for both element types (bf16 or f16 chosen at compile time): `dregs` the
// accumulator operand list, then the descriptors' and the scale predicate's operand numbers.
#define GLMSERVE_WGMMA_TYPED(shape, dregs, a_op, b_op, s_op, ...)                                                    \
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {                                                                  \
    asm volatile(GLMSERVE_WGMMA_PRED(s_op) GLMSERVE_WGMMA(shape, "bf16") dregs GLMSERVE_WGMMA_TAIL(a_op, b_op, s_op) \
                 : __VA_ARGS__                                                                                       \
                 : "l"(a), "l"(b), "r"(one));                                                                        \
  } else {                                                                                                           \
    asm volatile(GLMSERVE_WGMMA_PRED(s_op) GLMSERVE_WGMMA(shape, "f16") dregs GLMSERVE_WGMMA_TAIL(a_op, b_op, s_op)  \
                 : __VA_ARGS__                                                                                       \
                 : "l"(a), "l"(b), "r"(one));                                                                        \
  }

// c[r][j] += sum over k16 of A (64 x 16, descriptor a) * B (8 RowTiles x 16, descriptor b).
template <typename T, int RowTiles>
__device__ __forceinline__ void Wgmma(float (&c)[RowTiles][4], uint64_t a, uint64_t b) {
#ifdef GLMSERVE_HAVE_WGMMA
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "bf16 or fp16 operands");
  const int one = 1;
  if constexpr (RowTiles == 1) {
    GLMSERVE_WGMMA_TYPED("m64n8k16", "{%0, %1, %2, %3}", 4, 5, 6, GLMSERVE_F4(c, 0))
  } else if constexpr (RowTiles == 2) {
    GLMSERVE_WGMMA_TYPED("m64n16k16", "{%0, %1, %2, %3, %4, %5, %6, %7}", 8, 9, 10, GLMSERVE_F4(c, 0),
                         GLMSERVE_F4(c, 1))
  } else if constexpr (RowTiles == 4) {
    GLMSERVE_WGMMA_TYPED("m64n32k16", "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}", 16, 17,
                         18, GLMSERVE_F4(c, 0), GLMSERVE_F4(c, 1), GLMSERVE_F4(c, 2), GLMSERVE_F4(c, 3))
  } else {
    static_assert(RowTiles == 8);
    GLMSERVE_WGMMA_TYPED("m64n64k16",
                         "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
                         "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}",
                         32, 33, 34, GLMSERVE_F4(c, 0), GLMSERVE_F4(c, 1), GLMSERVE_F4(c, 2), GLMSERVE_F4(c, 3),
                         GLMSERVE_F4(c, 4), GLMSERVE_F4(c, 5), GLMSERVE_F4(c, 6), GLMSERVE_F4(c, 7))
  }
#endif
}
#undef GLMSERVE_WGMMA_TYPED
#undef GLMSERVE_F4
#undef GLMSERVE_WGMMA_PRED
#undef GLMSERVE_WGMMA_TAIL
#undef GLMSERVE_WGMMA

struct GemmArgs {
  const void* x;
  const void* w;
  const void* bias;  // may be null
  void* y;
  float* slots;   // [blocks][2][kSlotFloats]: a block's partial sums of its first and last tile
  int* counters;  // [tiles]: parts of a tile stored so far (zeroed by ZeroCountersKernel before)
  int32_t rows;
  int64_t n, k;
  int32_t k_blocks;   // per tile
  int64_t per_block;  // work units (tile x k block) per block
};

template <typename Geometry, int RowTiles>
struct Layout {
  static constexpr int kBlockK = Geometry::kBlockK;
  static constexpr int kThreads = Geometry::kWarps * 32;
  static constexpr int kChunks = kBlockK / 8;  // 16-byte chunks per row and stage
  static constexpr int kRowBytes = kBlockK * 2;
  static constexpr int kFeatureTiles = kTileFeatures / Geometry::kWarps / 16;  // m16 tiles per warp
  static constexpr int kStageBytes = (kTileFeatures + RowTiles * 8) * kRowBytes;
  // As many stages as fit: the loads in flight are what keeps HBM busy.
  static constexpr int kStages = Geometry::kSmem / kStageBytes > 8 ? 8 : Geometry::kSmem / kStageBytes;
  static_assert(kStages >= 3 && kFeatureTiles >= 1 && kFeatureTiles * RowTiles * 4 * kThreads <= kSlotFloats);

  // Warpgroup MMA: the stage holds each 64-k half of the weight rows, then each half of the x
  // rows, as 128-byte rows in 1024-byte swizzle atoms.
  __host__ __device__ static constexpr int WeightHalfBytes() { return kTileFeatures * 128; }
  __host__ __device__ static constexpr int XHalfBytes() { return RowTiles * 8 * 128; }
  static_assert(!Geometry::kWarpgroupMma || (kBlockK == 128 && Geometry::kWarps == 8 && kStageBytes % 1024 == 0));

  // Byte offset of 16-byte chunk `chunk` of row `row` (weight rows, then x rows) in a stage; the
  // XOR spreads the 8 rows an ldmatrix reads at one chunk over all 32 banks, and is the 128-byte
  // swizzle wgmma reads.
  __device__ __forceinline__ static uint32_t Offset(int row, int chunk) {
    if constexpr (Geometry::kWarpgroupMma) {
      const int swizzled = ((chunk & 7) ^ (row & 7)) << 4, half = chunk >> 3;
      return static_cast<uint32_t>(row < kTileFeatures ? half * WeightHalfBytes() + row * 128 + swizzled
                                                       : 2 * WeightHalfBytes() + half * XHalfBytes() +
                                                             (row - kTileFeatures) * 128 + swizzled);
    } else {
      return static_cast<uint32_t>(row * kRowBytes + ((chunk ^ (row & 7)) << 4));
    }
  }
};

// This block's work units [begin, end) of the (tile, k block) range, cut per_block a block;
// empty for blocks past the end.
struct UnitRange {
  int64_t begin, end;
};
__device__ __forceinline__ UnitRange BlockUnits(const GemmArgs& a, int64_t tile_features) {
  const int64_t total = (a.n + tile_features - 1) / tile_features * a.k_blocks;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * a.per_block;
  return {begin, begin + a.per_block < total ? begin + a.per_block : total};
}

// The dynamic shared memory's first 1024-aligned byte: swizzle atoms must start there (the
// launches add the 1 KB this may skip).
__device__ __forceinline__ uint32_t AlignedSharedBase(const uint8_t* smem) {
  return (static_cast<uint32_t>(__cvta_generic_to_shared(smem)) + 1023u) & ~1023u;
}

template <int FeatureTiles, int RowTiles>
__device__ __forceinline__ void ClearAccumulators(float (&acc)[FeatureTiles][RowTiles][4]) {
#pragma unroll
  for (int f = 0; f < FeatureTiles; ++f)
#pragma unroll
    for (int r = 0; r < RowTiles; ++r)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[f][r][j] = 0.0f;
}

// Accumulator j of acc[f][r] is feature (f * 16 + lane / 4 + 8 * (j / 2)) of the warp's and
// row (r * 8 + 2 * (lane % 4) + j % 2); warp w's features start at w * 16 * FeatureTiles.
template <typename T, int TileFeatures = kTileFeatures, int FeatureTiles, int RowTiles>
__device__ __forceinline__ void StoreTile(const GemmArgs& a, const float (&acc)[FeatureTiles][RowTiles][4],
                                          int64_t tile, int warp, int lane) {
  T* y = static_cast<T*>(a.y);
  const T* bias = static_cast<const T*>(a.bias);
#pragma unroll
  for (int f = 0; f < FeatureTiles; ++f) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t feature = tile * TileFeatures + (warp * FeatureTiles + f) * 16 + lane / 4 + half * 8;
      if (feature >= a.n) continue;
      const float b = bias != nullptr ? ToFloat(bias[feature]) : 0.0f;
#pragma unroll
      for (int r = 0; r < RowTiles; ++r) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int row = r * 8 + 2 * (lane % 4) + j;
          if (row < a.rows) y[row * a.n + feature] = FromFloat<T>(acc[f][r][half * 2 + j] + b);
        }
      }
    }
  }
}

// A tile cut between blocks: the block owning units [begin, end) stores its part in slot 0 (its
// first tile) or 1 (its last); whoever stores the tile's last part sums all of them in block
// order into `acc` and returns true (it then stores the tile). `barrier` syncs the Threads
// threads that hold accumulators; `finishing` is shared memory.
template <int Threads, int FeatureTiles, int RowTiles, typename Barrier>
__device__ __forceinline__ bool SumSplitTile(const GemmArgs& a, float (&acc)[FeatureTiles][RowTiles][4], int64_t tile,
                                             int64_t first_tile, int tid, int* finishing, Barrier barrier) {
  float4* mine = reinterpret_cast<float4*>(a.slots + (blockIdx.x * 2 + (tile == first_tile ? 0 : 1)) *
                                                         static_cast<int64_t>(kSlotFloats));
#pragma unroll
  for (int f = 0; f < FeatureTiles; ++f)
#pragma unroll
    for (int r = 0; r < RowTiles; ++r)
      mine[(f * RowTiles + r) * Threads + tid] = make_float4(acc[f][r][0], acc[f][r][1], acc[f][r][2], acc[f][r][3]);
  __threadfence();
  barrier();
  const int64_t first_block = tile * a.k_blocks / a.per_block;
  const int64_t last_block = ((tile + 1) * a.k_blocks - 1) / a.per_block;
  const int parts = static_cast<int>(last_block - first_block + 1);
  if (tid == 0) *finishing = atomicAdd(&a.counters[tile], 1) == parts - 1;
  barrier();
  if (!*finishing) return false;
  __threadfence();
  ClearAccumulators(acc);
  // The parts' loads a few blocks at a time before their sums (in block order): a sum waits for
  // one round trip to L2 per group, not per part (at most 64 floats a thread in flight).
  constexpr int kPerPart = FeatureTiles * RowTiles * 4;
  constexpr int kGroup = 64 / kPerPart > 4 ? 4 : 64 / kPerPart < 1 ? 1 : 64 / kPerPart;
  for (int64_t group = first_block; group <= last_block; group += kGroup) {
    float4 v[kGroup][FeatureTiles][RowTiles];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const int64_t block = group + g;
      if (block > last_block) break;
      const int64_t block_first_tile = block * a.per_block / a.k_blocks;
      const float4* part = reinterpret_cast<const float4*>(a.slots + (block * 2 + (tile == block_first_tile ? 0 : 1)) *
                                                                         static_cast<int64_t>(kSlotFloats));
#pragma unroll
      for (int f = 0; f < FeatureTiles; ++f)
#pragma unroll
        for (int r = 0; r < RowTiles; ++r) v[g][f][r] = __ldcg(part + (f * RowTiles + r) * Threads + tid);
    }
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      if (group + g > last_block) break;
#pragma unroll
      for (int f = 0; f < FeatureTiles; ++f)
#pragma unroll
        for (int r = 0; r < RowTiles; ++r) {
          acc[f][r][0] += v[g][f][r].x;
          acc[f][r][1] += v[g][f][r].y;
          acc[f][r][2] += v[g][f][r].z;
          acc[f][r][3] += v[g][f][r].w;
        }
    }
  }
  return true;
}

// After `unit`, the last of a block's segment of a tile (the tile's last unit, or the block's):
// the tile is stored by this block when the segment is the whole tile, else by whichever block
// stores the tile's last part (SumSplitTile); the accumulators start again for the next segment.
template <typename T, int Threads, int TileFeatures = kTileFeatures, int FeatureTiles, int RowTiles, typename Barrier>
__device__ __forceinline__ void EndUnit(const GemmArgs& a, float (&acc)[FeatureTiles][RowTiles][4], int64_t unit,
                                        int64_t end, int64_t first_tile, int64_t* segment_begin, int tid, int warp,
                                        int lane, int* finishing, Barrier barrier) {
  const bool tile_ends = (unit + 1) % a.k_blocks == 0;
  if (!tile_ends && unit + 1 != end) return;
  const int64_t tile = unit / a.k_blocks;
  if ((*segment_begin % a.k_blocks == 0 && tile_ends) ||
      SumSplitTile<Threads>(a, acc, tile, first_tile, tid, finishing, barrier)) {
    StoreTile<T, TileFeatures>(a, acc, tile, warp, lane);
  }
  ClearAccumulators(acc);
  *segment_begin = unit + 1;
}

// c += one 128-k stage on warpgroup MMA: the weight tile's two 64-k halves (128 features, 128-byte
// rows) at `base`, then x's two halves. Warpgroup g (warps 4 g .. 4 g + 3) owns features
// 64 g .. 64 g + 63, warp 4 g + i the 16 from 64 g + 16 i.
template <typename T, int RowTiles>
__device__ __forceinline__ void WarpgroupStage(float (&c)[RowTiles][4], uint32_t base, int warp,
                                               uint32_t weight_half_bytes, uint32_t x_half_bytes) {
  const uint32_t a_base = base + (warp / 4) * 64 * 128, b_base = base + 2 * weight_half_bytes;
  PinRegisters(c);
  WarpgroupFence();
#pragma unroll
  for (int ks = 0; ks < 8; ++ks) {
    const uint32_t step = (ks % 4) * 32;  // 16 k of 2 bytes into the 128-byte row
    Wgmma<T, RowTiles>(c, SwizzledDescriptor(a_base + (ks / 4) * weight_half_bytes + step),
                       SwizzledDescriptor(b_base + (ks / 4) * x_half_bytes + step));
  }
  WarpgroupCommitAndWait();
  PinRegisters(c);
}

template <typename T, typename Geometry, int RowTiles>
__global__ void __launch_bounds__(Geometry::kWarps * 32, Geometry::kBlocksPerSm) SkinnyGemmKernel(GemmArgs a) {
  using L = Layout<Geometry, RowTiles>;
  constexpr int kThreads = L::kThreads, kStages = L::kStages, kFeatureTiles = L::kFeatureTiles;
  extern __shared__ __align__(128) uint8_t smem[];
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ w = static_cast<const T*>(a.w);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const UnitRange units = BlockUnits(a, kTileFeatures);
  const int64_t begin = units.begin, end = units.end;
  if (begin >= end) return;
  AllowDependentLaunch();
  WaitForPrerequisiteGrid();
  const uint32_t smem_base = AlignedSharedBase(smem);

  // Stage layout: 128 weight rows, then RowTiles * 8 x rows, each kBlockK elements.
  auto load = [&](int64_t unit, int stage) {
    const int64_t tile = unit / a.k_blocks;
    const int64_t k0 = (unit - tile * a.k_blocks) * L::kBlockK;
    const uint32_t base = smem_base + stage * L::kStageBytes;
#pragma unroll
    for (int i = 0; i < kTileFeatures * L::kChunks / kThreads; ++i) {
      const int id = tid + i * kThreads, row = id / L::kChunks, chunk = id % L::kChunks;
      const int64_t feature = tile * kTileFeatures + row, col = k0 + chunk * 8;
      const bool valid = feature < a.n && col < a.k;
      CopyAsync16(base + L::Offset(row, chunk), valid ? w + feature * a.k + col : w, valid);
    }
#pragma unroll
    for (int i = 0; i < (RowTiles * 8 * L::kChunks + kThreads - 1) / kThreads; ++i) {
      const int id = tid + i * kThreads;
      if (id < RowTiles * 8 * L::kChunks) {
        const int row = id / L::kChunks, chunk = id % L::kChunks;
        const int64_t col = k0 + chunk * 8;
        const bool valid = row < a.rows && col < a.k;
        CopyAsync16(base + L::Offset(kTileFeatures + row, chunk), valid ? x + row * a.k + col : x, valid);
      }
    }
  };

  float acc[kFeatureTiles][RowTiles][4];

  auto compute = [&](int stage) {
    const uint32_t base = smem_base + stage * L::kStageBytes;
    if constexpr (Geometry::kWarpgroupMma) {
      static_assert(kFeatureTiles == 1);
      WarpgroupStage<T, RowTiles>(acc[0], base, warp, L::WeightHalfBytes(), L::XHalfBytes());
    } else {
#pragma unroll
      for (int ks = 0; ks < L::kBlockK / 16; ++ks) {
        uint32_t wf[kFeatureTiles][4];
#pragma unroll
        for (int f = 0; f < kFeatureTiles; ++f) {
          // Matrices: rows 0-7 / 8-15 of the 16 features, at k chunk 2 ks (lanes 0-15) or 2 ks + 1.
          const int row = (warp * kFeatureTiles + f) * 16 + (lane & 15);
          LoadMatrixX4(base + L::Offset(row, ks * 2 + (lane >> 4)), wf[f]);
        }
        if constexpr (RowTiles == 1) {
          uint32_t xf[2];
          const int row = lane & 7;
          LoadMatrixX2(base + L::Offset(kTileFeatures + row, ks * 2 + ((lane >> 3) & 1)), xf);
#pragma unroll
          for (int f = 0; f < kFeatureTiles; ++f) Mma<T>(acc[f][0], wf[f], xf[0], xf[1]);
        } else {
#pragma unroll
          for (int r = 0; r < RowTiles; r += 2) {
            // Matrices: rows r*8.. at k chunk 2 ks, the same at 2 ks + 1, then rows (r+1)*8.. likewise.
            uint32_t xf[4];
            const int row = r * 8 + (lane & 7) + ((lane >> 4) << 3);
            LoadMatrixX4(base + L::Offset(kTileFeatures + row, ks * 2 + ((lane >> 3) & 1)), xf);
#pragma unroll
            for (int f = 0; f < kFeatureTiles; ++f) {
              Mma<T>(acc[f][r], wf[f], xf[0], xf[1]);
              Mma<T>(acc[f][r + 1], wf[f], xf[2], xf[3]);
            }
          }
        }
      }
    }
  };

  __shared__ int finishing;
  const int64_t first_tile = begin / a.k_blocks;
  auto block_barrier = [] { __syncthreads(); };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (begin + s < end) load(begin + s, s);
    CopyAsyncCommit();
  }
  ClearAccumulators(acc);
  int64_t segment_begin = begin;
  int stage = 0;
  for (int64_t unit = begin; unit < end; ++unit) {
    CopyAsyncWait<kStages - 2>();
    if constexpr (Geometry::kWarpgroupMma) FenceSharedForAsyncProxy();
    __syncthreads();
    const int64_t next = unit + kStages - 1;
    // The stage computed one iteration ago: every warp is past it (the barrier above).
    if (next < end) load(next, stage == 0 ? kStages - 1 : stage - 1);
    CopyAsyncCommit();
    compute(stage);
    stage = stage == kStages - 1 ? 0 : stage + 1;
    EndUnit<T, kThreads>(a, acc, unit, end, first_tile, &segment_begin, tid, warp, lane, &finishing, block_barrier);
  }
  CopyAsyncWait<0>();
}

// --- The TMA form (SkinnyGemmMath::kTma) ---------------------------------------------------------
// The same units, tiles, stage layout and wgmma as WideWarpgroup, fed by the tensor memory
// accelerator instead of cp.async: one producer thread issues each stage's copies (one per 64-k
// half of the weight tile and of x, written in the 128-byte swizzle wgmma reads) and the two
// consumer warpgroups wait on the stage's mbarrier, so no barrier holds every warp at every stage
// and the loads in flight never drain. The weight is read by no kernel of a step's writes, so
// the producer asks for its first stages' weights before waiting for the kernel before it
// (dependent launch): the weight stream starts while that kernel ends, where cuBLAS's kernels
// start cold.
struct TmaArgs {
  CUtensorMap weight_map;  // [n, k], box 64 k x TileFeatures features
  CUtensorMap x_map;       // [rows, k], box 64 k x RowTiles * 8 rows
  GemmArgs g;
};

// TileFeatures 128 (two consumer warpgroups) with the work cut stream-K, or 64 (one) with a
// whole tile a block: GLM-4-9B's qkv and o projections have 72 and 64 such tiles, so every tile
// streams its whole k with no partial sums to pass between blocks (cuBLAS's choice there too).
template <int RowTiles, int TileFeatures>
struct TmaLayout {
  static constexpr int kBlockK = 128;
  static constexpr int kConsumerWarps = TileFeatures / 16;
  static constexpr int kThreads = (kConsumerWarps + 1) * 32;  // the last warp produces
  static constexpr int kWeightHalfBytes = TileFeatures * 128;
  static constexpr int kXHalfBytes = RowTiles * 8 * 128;
  static constexpr int kStageBytes = 2 * (kWeightHalfBytes + kXHalfBytes);
  static constexpr int kStages = 200 * 1024 / kStageBytes > 12 ? 12 : 200 * 1024 / kStageBytes;
  static constexpr int kSmem = kStages * kStageBytes + 1024;  // + the alignment of the swizzle atoms
  static_assert(TileFeatures == 64 || TileFeatures == 128);
};

// Box (k0 .. k0 + 63, row0 ..) of the tensor map into shared memory, its lines kept in L2 by
// `policy` (createpolicy); completes on `bar`.
__device__ __forceinline__ void TmaLoad(uint32_t smem, const CUtensorMap* map, int64_t k0, int64_t row0, uint32_t bar,
                                        uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, "
      "%3}], [%4], %5;\n" ::"r"(smem),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(static_cast<int32_t>(k0)), "r"(static_cast<int32_t>(row0)), "r"(bar),
      "l"(policy)
      : "memory");
}

template <typename T, int RowTiles, int TileFeatures>
__global__ void __launch_bounds__(TmaLayout<RowTiles, TileFeatures>::kThreads, 1)
    TmaGemmKernel(const __grid_constant__ TmaArgs p) {
#ifdef GLMSERVE_HAVE_WGMMA
  using L = TmaLayout<RowTiles, TileFeatures>;
  constexpr int kStages = L::kStages, kConsumerWarps = L::kConsumerWarps;
  const GemmArgs& a = p.g;
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ __align__(8) uint64_t full[kStages], empty[kStages];
  __shared__ int finishing;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const UnitRange units = BlockUnits(a, TileFeatures);
  const int64_t begin = units.begin, end = units.end;
  if (begin >= end) return;
  AllowDependentLaunch();
  const uint32_t smem_base = AlignedSharedBase(smem);
  auto full_bar = [&](int s) { return static_cast<uint32_t>(__cvta_generic_to_shared(&full[s])); };
  auto empty_bar = [&](int s) { return static_cast<uint32_t>(__cvta_generic_to_shared(&empty[s])); };
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      BarrierInit(full_bar(s), 1);
      BarrierInit(empty_bar(s), kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (warp == kConsumerWarps) {
    if (lane != 0) return;
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&p.weight_map)) : "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&p.x_map)) : "memory");
    // The weight is read once and need not stay in L2; x is read by every block.
    const uint64_t evict_first = EvictFirstPolicy(), evict_last = EvictLastPolicy();
    auto stage_base = [&](int s) { return smem_base + s * L::kStageBytes; };
    auto load_weight = [&](int64_t unit, int s) {
      const int64_t tile = unit / a.k_blocks, k0 = (unit - tile * a.k_blocks) * 128;
      for (int half = 0; half < 2; ++half) {
        TmaLoad(stage_base(s) + half * L::kWeightHalfBytes, &p.weight_map, k0 + half * 64, tile * TileFeatures,
                full_bar(s), evict_first);
      }
    };
    auto load_x = [&](int64_t unit, int s) {
      const int64_t tile = unit / a.k_blocks, k0 = (unit - tile * a.k_blocks) * 128;
      for (int half = 0; half < 2; ++half) {
        TmaLoad(stage_base(s) + 2 * L::kWeightHalfBytes + half * L::kXHalfBytes, &p.x_map, k0 + half * 64, 0,
                full_bar(s), evict_last);
      }
    };
    const int64_t count = end - begin;
    const int prologue = count < kStages ? static_cast<int>(count) : kStages;
    for (int i = 0; i < prologue; ++i) {
      BarrierExpectBytes(full_bar(i), L::kStageBytes);
      load_weight(begin + i, i);
    }
    WaitForPrerequisiteGrid();  // x is the kernel before's output
    for (int i = 0; i < prologue; ++i) load_x(begin + i, i);
    for (int64_t i = prologue; i < count; ++i) {
      const int s = static_cast<int>(i % kStages);
      BarrierWait(empty_bar(s), static_cast<uint32_t>((i / kStages - 1) & 1));
      BarrierExpectBytes(full_bar(s), L::kStageBytes);
      load_weight(begin + i, s);
      load_x(begin + i, s);
    }
    return;
  }

  // Consumers: warpgroup g owns features 64 g .. 64 g + 63 of the tile, as in WideWarpgroup.
  WaitForPrerequisiteGrid();  // the counters, the slots and y
  float acc[1][RowTiles][4];
  auto consumer_barrier = [] { asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumerWarps * 32) : "memory"); };
  const int64_t first_tile = begin / a.k_blocks;
  ClearAccumulators(acc);
  int64_t segment_begin = begin;
  for (int64_t unit = begin; unit < end; ++unit) {
    const int64_t i = unit - begin;
    const int s = static_cast<int>(i % kStages);
    BarrierWait(full_bar(s), static_cast<uint32_t>((i / kStages) & 1));
    WarpgroupStage<T, RowTiles>(acc[0], smem_base + s * L::kStageBytes, warp, L::kWeightHalfBytes, L::kXHalfBytes);
    __syncwarp();
    if (lane == 0) BarrierArrive(empty_bar(s));
    EndUnit<T, kConsumerWarps * 32, TileFeatures>(a, acc, unit, end, first_tile, &segment_begin, tid, warp, lane,
                                                  &finishing, consumer_barrier);
  }
#endif
}

// The workspace's counters to zero, as a kernel rather than a memset: a memset between two
// kernels would keep the GEMM from starting before the kernel before it has ended.
__global__ void ZeroCountersKernel(int* counters, int64_t n) {
  AllowDependentsThenWait();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    counters[i] = 0;
  }
}

// Raises Kernel's dynamic shared memory limit to `bytes`, once (the first call's size serves all).
template <auto Kernel>
bool AllowDynamicSharedMemory(int bytes) {
  static std::atomic<bool> configured{false};
  if (configured.load(std::memory_order_acquire)) return true;
  if (cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) != cudaSuccess) return false;
  configured.store(true, std::memory_order_release);
  return true;
}

// Cuts the (tile, k block) units into `blocks` equal contiguous ranges: args' k_blocks and per_block.
void CutWork(GemmArgs* args, int64_t block_k, int64_t blocks, int64_t tile_features = kTileFeatures) {
  args->k_blocks = static_cast<int32_t>((args->k + block_k - 1) / block_k);
  const int64_t total = (args->n + tile_features - 1) / tile_features * args->k_blocks;
  args->per_block = (total + blocks - 1) / blocks;
}

template <typename T, typename Geometry, int RowTiles>
bool Launch(GemmArgs args, int sms, cudaStream_t stream) {
  using L = Layout<Geometry, RowTiles>;
  constexpr int smem = L::kStages * L::kStageBytes + 1024;
  if (!AllowDynamicSharedMemory<SkinnyGemmKernel<T, Geometry, RowTiles>>(smem)) return false;
  const int blocks = sms * Geometry::kBlocksPerSm;
  CutWork(&args, L::kBlockK, blocks);
  return LaunchKernel(SkinnyGemmKernel<T, Geometry, RowTiles>, dim3(blocks), dim3(L::kThreads), smem, stream, args) ==
         cudaSuccess;
}

template <typename T, typename Geometry>
bool LaunchForRows(const GemmArgs& args, int sms, cudaStream_t stream) {
  if (args.rows <= 8) return Launch<T, Geometry, 1>(args, sms, stream);
  if (args.rows <= 16) return Launch<T, Geometry, 2>(args, sms, stream);
  if (args.rows <= 32) return Launch<T, Geometry, 4>(args, sms, stream);
  return Launch<T, Geometry, 8>(args, sms, stream);
}

// cuTensorMapEncodeTiled from the driver, through the runtime (no link against libcuda).
using TensorMapEncoder = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                      const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                      CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
TensorMapEncoder TensorMapEncoderOrNull() {
  static const TensorMapEncoder encoder = []() -> TensorMapEncoder {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    return reinterpret_cast<TensorMapEncoder>(fn);
  }();
  return encoder;
}

// A row-major [rows, k] matrix read in boxes of 64 k x box_rows rows, 128-byte swizzled; rows
// past the end and k past k read as zeros.
bool EncodeRowMajorMap(CUtensorMap* map, const void* base, int64_t rows, int64_t k, int box_rows, ElementType type) {
  const TensorMapEncoder encode = TensorMapEncoderOrNull();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  return encode(map,
                type == ElementType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
                const_cast<void*>(base), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Whole 64-feature tiles a block where they fill at most one wave (the zeroing kernel is then
// not needed either), else 128-feature tiles cut stream-K over one block per SM.
bool TmaWholeTiles(int64_t n, int sms) { return (n + 63) / 64 <= sms; }

template <typename T, int RowTiles, int TileFeatures>
bool LaunchTma(GemmArgs args, ElementType type, int sms, cudaStream_t stream) {
  using L = TmaLayout<RowTiles, TileFeatures>;
  if (!AllowDynamicSharedMemory<TmaGemmKernel<T, RowTiles, TileFeatures>>(L::kSmem)) return false;
  // Whole tiles: a block a tile, its whole k (one range a block: the cut's per_block is k_blocks).
  const int64_t blocks = TileFeatures == 64 ? (args.n + TileFeatures - 1) / TileFeatures : sms;
  CutWork(&args, L::kBlockK, blocks, TileFeatures);
  TmaArgs p;
  p.g = args;
  if (!EncodeRowMajorMap(&p.weight_map, args.w, args.n, args.k, TileFeatures, type) ||
      !EncodeRowMajorMap(&p.x_map, args.x, args.rows, args.k, RowTiles * 8, type)) {
    return false;
  }
  return LaunchKernel(TmaGemmKernel<T, RowTiles, TileFeatures>, dim3(static_cast<unsigned>(blocks)), dim3(L::kThreads),
                      L::kSmem, stream, p) == cudaSuccess;
}

template <typename T, int TileFeatures>
bool LaunchTmaForRows(const GemmArgs& args, ElementType type, int sms, cudaStream_t stream) {
  if (args.rows <= 8) return LaunchTma<T, 1, TileFeatures>(args, type, sms, stream);
  if (args.rows <= 16) return LaunchTma<T, 2, TileFeatures>(args, type, sms, stream);
  if (args.rows <= 32) return LaunchTma<T, 4, TileFeatures>(args, type, sms, stream);
  return LaunchTma<T, 8, TileFeatures>(args, type, sms, stream);
}

template <typename T>
bool LaunchTmaForShape(const GemmArgs& args, ElementType type, int sms, cudaStream_t stream) {
  return TmaWholeTiles(args.n, sms) ? LaunchTmaForRows<T, 64>(args, type, sms, stream)
                                    : LaunchTmaForRows<T, 128>(args, type, sms, stream);
}

}  // namespace

size_t SkinnyGemmWorkspaceBytes() {
  const int sms = DeviceSmCount();
  if (sms <= 0) return 0;
  return sizeof(int) * kMaxTiles + sizeof(float) * static_cast<size_t>(sms) * Wide::kBlocksPerSm * 2 * kSlotFloats;
}

bool SkinnyGemmCudaTakes(int32_t rows, int64_t n, int64_t k, ElementType type, const void* x, const void* w) {
  return type != ElementType::kFloat32 && rows >= 1 && rows <= kSkinnyGemmMaxRows && n > 0 &&
         (n + kTileFeatures - 1) / kTileFeatures <= kMaxTiles && k > 0 && k % 8 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

bool SkinnyGemmCuda(const void* x, const void* w, const void* bias, void* y, int32_t rows, int64_t n, int64_t k,
                    ElementType type, void* workspace, void* stream, SkinnyGemmMath math) {
  if (!SkinnyGemmCudaTakes(rows, n, k, type, x, w) || workspace == nullptr) return false;
  const int sms = DeviceSmCount();
  if (sms <= 0) return false;
  GemmArgs args;
  args.x = x;
  args.w = w;
  args.bias = bias;
  args.y = y;
  args.counters = static_cast<int*>(workspace);
  args.slots = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + sizeof(int) * kMaxTiles);
  args.rows = rows;
  args.n = n;
  args.k = k;
  auto st = static_cast<cudaStream_t>(stream);
  const int64_t tiles = (n + kTileFeatures - 1) / kTileFeatures;
  constexpr int kZeroThreads = 256;
#if GLMSERVE_CUDA_SM90A
  const bool whole_tiles = math == SkinnyGemmMath::kTma && TmaWholeTiles(n, sms);  // no partial sums to count
#else
  const bool whole_tiles = false;
#endif
  if (!whole_tiles &&
      LaunchKernel(ZeroCountersKernel, dim3(static_cast<unsigned>((tiles + kZeroThreads - 1) / kZeroThreads)),
                   dim3(kZeroThreads), 0, st, args.counters, tiles) != cudaSuccess) {
    return false;
  }
#if GLMSERVE_CUDA_SM90A
  if (math == SkinnyGemmMath::kTma) {
    if (type == ElementType::kBFloat16) return LaunchTmaForShape<__nv_bfloat16>(args, type, sms, st);
    if (type == ElementType::kFloat16) return LaunchTmaForShape<__half>(args, type, sms, st);
    return false;
  }
  if (math == SkinnyGemmMath::kWarpgroup) {
    if (type == ElementType::kBFloat16) return LaunchForRows<__nv_bfloat16, WideWarpgroup>(args, sms, st);
    if (type == ElementType::kFloat16) return LaunchForRows<__half, WideWarpgroup>(args, sms, st);
    return false;
  }
#endif
  if (type == ElementType::kBFloat16) return LaunchForRows<__nv_bfloat16, Wide>(args, sms, st);
  if (type == ElementType::kFloat16) return LaunchForRows<__half, Wide>(args, sms, st);
  return false;
}

}  // namespace glmserve::kernels
