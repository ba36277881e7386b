// Paged-attention decode: one new query token per sequence attends over its whole context,
// whose K/V live in fixed-size blocks of a shared pool (the engine's block tables). GQA/MQA
// aware: query head h reads KV head h / (num_heads / num_kv_heads), as transformers' repeat_kv.
// Softmax and accumulation in fp32. Graph-safe: every size that changes per step is read from
// device memory (context_lens, block_tables), never passed by value.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/element_type.h"

namespace glmserve::kernels {

struct PagedAttentionShape {
  int32_t batch = 0;  // sequences (one query token each)
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;            // <= 256
  int32_t block_size = 0;          // tokens per KV block
  int32_t max_blocks_per_seq = 0;  // row stride of block_tables
  int32_t max_context = 0;         // upper bound of any context_lens entry
  float scale = 1.0f;              // usually 1/sqrt(head_dim)
  int64_t q_row_stride = 0;        // elements between sequences' query rows; 0 = num_heads * head_dim
  bool allow_tensor_cores = true;  // bf16/fp16 with a workspace: QK^T and PV on tensor cores
  bool allow_warp_tiles = true;    // with tensor cores and head_dim 32/64/128: the register-tile kernel
};

// q: [batch, num_heads, head_dim]; k_cache/v_cache: [slots, num_kv_heads, head_dim] where
// slot = block_tables[b][p / block_size] * block_size + p % block_size; out like q. A row whose
// context_lens entry is 0 is skipped: its out row is left as it was (a mixed step's graph runs
// this over every row and lets flash attention fill the prefill rows).
// CPU reference, fp32 only.
void PagedAttentionDecodeReference(const float* q, const float* k_cache, const float* v_cache,
                                   const int32_t* block_tables, const int32_t* context_lens, float* out,
                                   const PagedAttentionShape& shape);

// CUDA; all pointers on the device, launched on `stream` (cudaStream_t). False on a bad shape
// or launch error. With a workspace of PagedAttentionWorkspaceBytes(shape) bytes (device memory,
// 16-byte aligned; its first 4 * batch * num_kv_heads bytes are counters, zeroed by the caller
// before the first use and left at zero by every call, so calls sharing a workspace must run
// one after another) the grouped split kernel runs: one block per (sequence, KV head, split)
// reads each K/V tile once for all query heads of its group, and a second kernel merges the
// splits. For bf16/fp16 with up to 16 query heads per KV head (and allow_tensor_cores), QK^T and
// PV run on tensor cores, the softmax weights rounded to the element type before PV; with
// head_dim 32, 64 or 128 (and allow_warp_tiles) each warp keeps its scores and output in
// registers, a sequence of up to 256 positions is finished by one block, and the last split of
// a longer one merges the others (one kernel, no merge kernel).
// With workspace == nullptr (or a group too large for it) a one-pass kernel runs instead, one
// block per (sequence, query head). The split count depends only on the shape and the device,
// so a captured CUDA graph and an eager run compute in the same order.
bool PagedAttentionDecodeCuda(const void* q, const void* k_cache, const void* v_cache, const int32_t* block_tables,
                              const int32_t* context_lens, void* out, const PagedAttentionShape& shape,
                              ElementType type, void* stream, void* workspace = nullptr);

// Bytes of workspace the split kernel needs for `shape`; 0 when it cannot take the shape.
size_t PagedAttentionWorkspaceBytes(const PagedAttentionShape& shape);

// Largest max_context the CUDA kernel supports; 0 without a CUDA device.
int32_t PagedAttentionMaxContext();

}  // namespace glmserve::kernels
