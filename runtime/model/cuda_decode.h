// The CUDA fast path over GlmModel (cuda_decode.cc, compiled only against a CUDA LibTorch:
// GLMSERVE_TORCH_CUDA). It sits above the model: it calls GlmModel::RunLayers / Logits with its
// own attention and fused kernels, and the model never calls it. model_forward.cc picks it per
// batch. Include only from LibTorch TUs.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/model/glm_model.h"
#include "runtime/model/previous_step_ids.h"
#include "runtime/model/vision_tower.h"
#include "runtime/step_executor.h"

namespace glmserve {

class CudaDecodeRunner;

#ifdef GLMSERVE_TORCH_CUDA
// Null where the fast path cannot run (no paged-attention kernel for this device, head_dim > 256).
// The runner keeps a reference to `model`, which must outlive it.
CudaDecodeRunner* CreateCudaDecodeRunner(const GlmModel& model);
// Runs an all-decode batch through the paged-attention kernel, replaying a CUDA graph per
// batch-size bucket. Returns an undefined tensor when it cannot take the batch. Rows feeding
// kTokenFromPreviousStep take `previous`'s id (from its device ids when defined: no wait for the
// host), here and in CudaMixedForward; they throw on such a row without `previous`.
at::Tensor CudaDecodeForward(CudaDecodeRunner& runner, const std::vector<SequenceStep>& batch, KvPool& kv,
                             const PreviousStepIds* previous = nullptr);
// Prefill and mixed batches in one eager forward (paged-attention kernel for decode rows, flash
// attention over variable lengths for prefill chunks); fp32 logits of the sampled rows. Undefined
// when it cannot take the batch (fp32 model, head_dim flash does not take, GLMSERVE_CUDA_DISABLE).
// `images` (multimodal batches, StepNeedsMultimodal): image features for rows numbered in the
// mixed order (one-token steps first, then the longer chunks, each group in batch order); such a step runs eagerly (no
// mixed-step graph) with 3-D rotary positions when a step needs them.
at::Tensor CudaMixedForward(CudaDecodeRunner& runner, const std::vector<SequenceStep>& batch, KvPool& kv,
                            const GlmModel::EmbeddingOverride* images = nullptr,
                            const PreviousStepIds* previous = nullptr);
// Times cuBLASLt's algorithms for the GEMM shapes the buckets run first (what it found in `note`).
void CaptureCudaDecodeGraphs(CudaDecodeRunner& runner, int32_t max_sequences, KvPool& kv,
                             std::vector<int32_t>* captured, std::string* note);
// The fused kernels for eager forwards on the GPU (prefill and mixed batches).
const GlmModel::LayerKernels& CudaLayerKernels(const CudaDecodeRunner& runner);
// The vision tower's (members empty for a text model).
const VisionKernels& CudaVisionKernels(const CudaDecodeRunner& runner);
void DestroyCudaDecodeRunner(CudaDecodeRunner* runner);
#endif

}  // namespace glmserve
