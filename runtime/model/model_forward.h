// One forward pass over a batch, choosing per batch between the CUDA fast path (cuda_decode.h)
// and GlmModel's eager forward. It owns the fast path's state (kernels, CUDA graphs), so the
// dependency runs one way: model_forward -> cuda_decode -> glm_model. Include only from LibTorch
// TUs. Not thread-safe: one owner (an executor) calls it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/model/glm_model.h"
#include "runtime/model/previous_step_ids.h"
#include "runtime/model/vision_tower.h"
#include "runtime/step_executor.h"

namespace glmserve {

class CudaDecodeRunner;
struct CudaDecodeRunnerDeleter {
  void operator()(CudaDecodeRunner* runner) const;
};

class ModelForward {
 public:
  // `model` must outlive this object.
  explicit ModelForward(const GlmModel& model);

  const GlmModel& model() const { return model_; }

  // Writes each sequence's new K/V into its blocks and returns logits [n, vocab] for the last fed
  // token of every sequence with sample == true, in batch order: fp32, except from the CUDA decode
  // graphs, which leave them in the model's dtype (the lm_head's own output; converting
  // [64, 151552] to fp32 every step took 29 us on an H100, and the argmax reads half the bytes).
  // Throws c10::Error on failure (callers turn it into a status). Rows feeding
  // kTokenFromPreviousStep (overlapped steps) take `previous`'s ids: on the device where the CUDA
  // fast path runs the batch, from the host elsewhere (images, the eager forward).
  at::Tensor Forward(const std::vector<SequenceStep>& batch, KvPool& kv, const PreviousStepIds* previous = nullptr);
  // CUDA with graphs on: captures the decode graphs of batch buckets 1, 2, 4, ... up to the one
  // holding max_sequences over `kv` now, appending each captured bucket to `captured`, so no
  // step waits for a capture later. Throws where a capture fails (that bucket and the larger ones
  // are then captured on first use). Does nothing elsewhere. Before capturing, times the GEMM
  // algorithms for the row counts the graphs run; `note` says what that found (empty: nothing).
  void CaptureDecodeGraphs(KvPool& kv, int32_t max_sequences, std::vector<int32_t>* captured, std::string* note);
  // Drops what Forward keeps for `sequence_id` across steps (its encoded images).
  void ReleaseSequence(int64_t sequence_id) { encoded_images_.erase(sequence_id); }

 private:
  CudaDecodeRunner* DecodeRunner();  // created on first use; null where it cannot run
  // A batch with image tokens or 3-D positions: the vision encoder for images not yet encoded
  // (all of the step's in one call), then the eager forward with their features placed.
  at::Tensor MultimodalForward(const std::vector<SequenceStep>& batch, KvPool& kv);
  // The features of the image tokens the batch feeds, as rows of the forward's input: batch
  // entry i's tokens start at row first_rows[i]. Images not yet encoded run through the vision
  // tower with `kernels`.
  GlmModel::EmbeddingOverride ImageEmbeddings(const std::vector<SequenceStep>& batch,
                                              const std::vector<int64_t>& first_rows, const VisionKernels& kernels);

  const GlmModel& model_;
  std::unique_ptr<CudaDecodeRunner, CudaDecodeRunnerDeleter> cuda_decode_;
  bool cuda_decode_failed_ = false;
  // Per sequence, per image: the features [num_tokens, hidden] once encoded (undefined before).
  // An image is encoded in the step whose chunk reaches its first token and kept until the engine
  // releases the sequence, since a long image's tokens may span several chunks.
  std::unordered_map<int64_t, std::vector<at::Tensor>> encoded_images_;
};

}  // namespace glmserve
