// Tensor-core GEMM for decode batches (a few to 64 rows): y = x w^T (+ bias) with the weight
// streamed once from HBM. The work, output tiles x k blocks, is cut into one contiguous equal
// range per resident block ("stream-K"), so every SM streams the same share of the weight
// whatever the shape. A tile cut between blocks is finished by the block that arrives last,
// which sums the parts in block order: the result depends neither on timing nor on the number
// of rows. Measured against cuBLAS on GLM-4-9B's shapes (bench/gemm_bench, bench/results/gpu.md)
// it is faster only on a large weight (the lm_head, up to 64 rows), where the runtime uses it.
//
// Per block: 128 weight rows (output features) x 128 k per stage, a cp.async pipeline as deep
// as shared memory allows, XOR-swizzled rows, and the weight as the A operand, x as B (8 to 64
// rows), so 8 rows waste nothing. The products run on warpgroup MMA (wgmma, two warpgroups of
// 64 features reading both operands from shared memory) or on per-warp mma.m16n8k16 fed by
// ldmatrix; at 64 rows wgmma is 10-13% faster (the ldmatrix traffic for x was the bound).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "kernels/decode_ops.h"
#include "kernels/device_math.cuh"
#include "kernels/launch.cuh"

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

template <typename T, typename Geometry, int RowTiles>
__global__ void __launch_bounds__(Geometry::kWarps * 32, Geometry::kBlocksPerSm) SkinnyGemmKernel(GemmArgs a) {
  using L = Layout<Geometry, RowTiles>;
  constexpr int kThreads = L::kThreads, kStages = L::kStages, kFeatureTiles = L::kFeatureTiles;
  extern __shared__ __align__(128) uint8_t smem[];
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ w = static_cast<const T*>(a.w);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t tiles = (a.n + kTileFeatures - 1) / kTileFeatures;
  const int64_t total = tiles * a.k_blocks;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * a.per_block;
  const int64_t end = begin + a.per_block < total ? begin + a.per_block : total;
  if (begin >= end) return;
  AllowDependentLaunch();
  WaitForPrerequisiteGrid();
  // The swizzle atoms must start 1024-aligned (the launch adds the 1 KB this may skip).
  const uint32_t smem_base = (static_cast<uint32_t>(__cvta_generic_to_shared(smem)) + 1023u) & ~1023u;

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
  auto clear = [&] {
#pragma unroll
    for (int f = 0; f < kFeatureTiles; ++f)
#pragma unroll
      for (int r = 0; r < RowTiles; ++r)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[f][r][j] = 0.0f;
  };

  auto compute = [&](int stage) {
    const uint32_t base = smem_base + stage * L::kStageBytes;
    if constexpr (Geometry::kWarpgroupMma) {
      static_assert(kFeatureTiles == 1);
      // Warpgroup g owns features 64 g .. 64 g + 63: warp 4 g + i the 16 from 64 g + 16 i, as above.
      const uint32_t a_base = base + (warp / 4) * 64 * 128, b_base = base + 2 * L::WeightHalfBytes();
      PinRegisters(acc[0]);
      WarpgroupFence();
#pragma unroll
      for (int ks = 0; ks < L::kBlockK / 16; ++ks) {
        const uint32_t step = (ks % 4) * 32;  // 16 k of 2 bytes into the 128-byte row
        Wgmma<T, RowTiles>(acc[0], SwizzledDescriptor(a_base + (ks / 4) * L::WeightHalfBytes() + step),
                           SwizzledDescriptor(b_base + (ks / 4) * L::XHalfBytes() + step));
      }
      WarpgroupCommitAndWait();
      PinRegisters(acc[0]);
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

  // Accumulator j of acc[f][r] is feature (f * 16 + lane / 4 + 8 * (j / 2)) of the warp's and
  // row (r * 8 + 2 * (lane % 4) + j % 2).
  auto store = [&](int64_t tile) {
    T* y = static_cast<T*>(a.y);
    const T* bias = static_cast<const T*>(a.bias);
#pragma unroll
    for (int f = 0; f < kFeatureTiles; ++f) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t feature = tile * kTileFeatures + (warp * kFeatureTiles + f) * 16 + lane / 4 + half * 8;
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
  };

  __shared__ int finishing;
  const int64_t first_tile = begin / a.k_blocks;
  // The block owning units [begin, end) of a tile split between blocks stores its part in slot
  // 0 (its first tile) or 1 (its last); whoever stores the tile's last part sums all of them.
  auto finish_shared_tile = [&](int64_t tile) {
    float4* mine = reinterpret_cast<float4*>(a.slots + (blockIdx.x * 2 + (tile == first_tile ? 0 : 1)) *
                                                           static_cast<int64_t>(kSlotFloats));
#pragma unroll
    for (int f = 0; f < kFeatureTiles; ++f)
#pragma unroll
      for (int r = 0; r < RowTiles; ++r)
        mine[(f * RowTiles + r) * kThreads + tid] = make_float4(acc[f][r][0], acc[f][r][1], acc[f][r][2], acc[f][r][3]);
    __threadfence();
    __syncthreads();
    const int64_t first_block = tile * a.k_blocks / a.per_block;
    const int64_t last_block = ((tile + 1) * a.k_blocks - 1) / a.per_block;
    const int parts = static_cast<int>(last_block - first_block + 1);
    if (tid == 0) finishing = atomicAdd(&a.counters[tile], 1) == parts - 1;
    __syncthreads();
    if (!finishing) return;
    __threadfence();
    clear();
    for (int64_t block = first_block; block <= last_block; ++block) {
      const int64_t block_first_tile = block * a.per_block / a.k_blocks;
      const float4* part = reinterpret_cast<const float4*>(a.slots + (block * 2 + (tile == block_first_tile ? 0 : 1)) *
                                                                         static_cast<int64_t>(kSlotFloats));
#pragma unroll
      for (int f = 0; f < kFeatureTiles; ++f)
#pragma unroll
        for (int r = 0; r < RowTiles; ++r) {
          const float4 v = __ldcg(part + (f * RowTiles + r) * kThreads + tid);
          acc[f][r][0] += v.x;
          acc[f][r][1] += v.y;
          acc[f][r][2] += v.z;
          acc[f][r][3] += v.w;
        }
    }
    store(tile);
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (begin + s < end) load(begin + s, s);
    CopyAsyncCommit();
  }
  clear();
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
    const bool tile_ends = (unit + 1) % a.k_blocks == 0;
    if (tile_ends || unit + 1 == end) {
      const int64_t tile = unit / a.k_blocks;
      if (segment_begin % a.k_blocks == 0 && tile_ends) {
        store(tile);
      } else {
        finish_shared_tile(tile);
      }
      clear();
      segment_begin = unit + 1;
    }
  }
  CopyAsyncWait<0>();
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

template <typename T, typename Geometry, int RowTiles>
bool Launch(GemmArgs args, int sms, cudaStream_t stream) {
  using L = Layout<Geometry, RowTiles>;
  constexpr int smem = L::kStages * L::kStageBytes + 1024;
  static std::atomic<bool> configured{false};
  if (!configured.load(std::memory_order_acquire)) {
    if (cudaFuncSetAttribute(SkinnyGemmKernel<T, Geometry, RowTiles>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             smem) != cudaSuccess) {
      return false;
    }
    configured.store(true, std::memory_order_release);
  }
  const int blocks = sms * Geometry::kBlocksPerSm;
  args.k_blocks = static_cast<int32_t>((args.k + L::kBlockK - 1) / L::kBlockK);
  const int64_t total = (args.n + kTileFeatures - 1) / kTileFeatures * args.k_blocks;
  args.per_block = (total + blocks - 1) / blocks;
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
  if (LaunchKernel(ZeroCountersKernel, dim3(static_cast<unsigned>((tiles + kZeroThreads - 1) / kZeroThreads)),
                   dim3(kZeroThreads), 0, st, args.counters, tiles) != cudaSuccess) {
    return false;
  }
#if GLMSERVE_CUDA_SM90A
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
