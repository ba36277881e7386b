#include "runtime/model/model_forward.h"

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

#include "runtime/model/cuda_decode.h"
#include "runtime/model/vision_tower.h"

namespace glmserve {

void CudaDecodeRunnerDeleter::operator()(CudaDecodeRunner* runner) const {
#ifdef GLMSERVE_TORCH_CUDA
  DestroyCudaDecodeRunner(runner);
#else
  (void)runner;
#endif
}

ModelForward::ModelForward(const GlmModel& model) : model_(model) {}

CudaDecodeRunner* ModelForward::DecodeRunner() {
#ifdef GLMSERVE_TORCH_CUDA
  if (model_.device().is_cuda() && !cuda_decode_ && !cuda_decode_failed_) {
    cuda_decode_.reset(CreateCudaDecodeRunner(model_));
    cuda_decode_failed_ = cuda_decode_ == nullptr;
  }
#endif
  return cuda_decode_.get();
}

at::Tensor ModelForward::Forward(const std::vector<SequenceStep>& batch, KvPool& kv, const PreviousStepIds* previous) {
  // The paths below that cannot take ids on the device get them on the host.
  std::vector<SequenceStep> resolved;
  std::vector<std::unique_ptr<std::vector<int32_t>>> histories;
  auto on_host = [&]() -> const std::vector<SequenceStep>& {
    if (!FeedsPreviousStepIds(batch)) return batch;
    if (previous == nullptr) throw std::runtime_error("forward: a row feeds the previous step's id, none given");
    absl::StatusOr<std::vector<SequenceStep>> ids = ResolvePreviousStepIds(batch, previous->host_id, &histories);
    if (!ids.ok()) throw std::runtime_error(std::string(ids.status().message()));
    resolved = *std::move(ids);
    return resolved;
  };
  if (std::any_of(batch.begin(), batch.end(), StepNeedsMultimodal)) return MultimodalForward(on_host(), kv);
#ifdef GLMSERVE_TORCH_CUDA
  if (CudaDecodeRunner* runner = DecodeRunner()) {
    const bool all_decode = !batch.empty() && std::all_of(batch.begin(), batch.end(), [](const SequenceStep& s) {
      return s.tokens.size() == 1 && s.sample;
    });
    if (all_decode) {
      at::Tensor logits = CudaDecodeForward(*runner, batch, kv, previous);
      if (logits.defined()) return logits;
    }
    at::Tensor logits = CudaMixedForward(*runner, batch, kv, /*images=*/nullptr, previous);
    if (logits.defined()) return logits;
    return model_.EagerForward(on_host(), kv, CudaLayerKernels(*runner));
  }
#endif
  return model_.EagerForward(on_host(), kv, GlmModel::LayerKernels());  // ATen ops
}

namespace {

// Each batch entry's first row when rows follow the batch (the eager forward), or when one-token
// steps come first and the longer chunks after them, each group in batch order (the CUDA mixed
// forward's order).
std::vector<int64_t> FirstRows(const std::vector<SequenceStep>& batch, bool one_token_steps_first) {
  std::vector<int64_t> first(batch.size());
  int64_t row = 0;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < batch.size(); ++i) {
      const bool one_token = batch[i].tokens.size() == 1;
      const bool in_pass = one_token_steps_first ? one_token == (pass == 0) : pass == 0;
      if (!in_pass) continue;
      first[i] = row;
      row += static_cast<int64_t>(batch[i].tokens.size());
    }
  }
  return first;
}

}  // namespace

at::Tensor ModelForward::MultimodalForward(const std::vector<SequenceStep>& batch, KvPool& kv) {
  GlmModel::LayerKernels kernels;  // ATen ops
#ifdef GLMSERVE_TORCH_CUDA
  if (CudaDecodeRunner* runner = DecodeRunner()) {
    // Flash attention over the chunks and the fused kernels, eagerly; RunLayers rotates 3-D
    // positions itself.
    const GlmModel::EmbeddingOverride images =
        ImageEmbeddings(batch, FirstRows(batch, true), CudaVisionKernels(*runner));
    at::Tensor logits = CudaMixedForward(*runner, batch, kv, &images);
    if (logits.defined()) return logits;
    kernels = CudaLayerKernels(*runner);
  }
#endif
  const GlmModel::EmbeddingOverride images = ImageEmbeddings(batch, FirstRows(batch, false), VisionKernels());
  return model_.EagerForward(batch, kv, kernels, &images);
}

GlmModel::EmbeddingOverride ModelForward::ImageEmbeddings(const std::vector<SequenceStep>& batch,
                                                          const std::vector<int64_t>& first_rows,
                                                          const VisionKernels& kernels) {
  // The images each step's chunk reaches: [begin, end) of image k within the chunk's positions.
  struct Overlap {
    const SequenceStep* step;
    size_t image;
    int64_t begin, end;
  };
  std::vector<Overlap> overlaps;
  std::vector<const ImageInput*> to_encode;
  std::vector<at::Tensor*> encoded_slots;
  for (const SequenceStep& s : batch) {
    const MultimodalPrompt* mm = s.multimodal;
    if (mm == nullptr) continue;
    const int64_t chunk_end = s.start_position + static_cast<int64_t>(s.tokens.size());
    std::vector<at::Tensor>& encoded = encoded_images_[s.sequence_id];
    encoded.resize(mm->images.size());
    for (size_t k = 0; k < mm->images.size(); ++k) {
      const int64_t first = mm->image_offsets[k], last = first + mm->images[k].num_tokens;
      const int64_t begin = std::max<int64_t>(first, s.start_position), end = std::min(last, chunk_end);
      if (begin >= end) continue;
      overlaps.push_back({&s, k, begin, end});
      if (!encoded[k].defined()) {
        to_encode.push_back(&mm->images[k]);
        encoded_slots.push_back(&encoded[k]);
      }
    }
  }
  if (!to_encode.empty()) {
    const ModelConfig& config = model_.config();
    TORCH_CHECK(model_.vision() != nullptr && config.vision.has_value(), "a prompt with images reached a model (",
                ArchitectureName(config.architecture), ") without a vision tower");
    at::Tensor features =
        EncodeImages(*model_.vision(), *config.vision, to_encode, model_.dtype(), model_.device(), kernels);
    int64_t row = 0;
    for (size_t i = 0; i < to_encode.size(); ++i) {
      *encoded_slots[i] = features.narrow(0, row, to_encode[i]->num_tokens);
      row += to_encode[i]->num_tokens;
    }
  }
  std::vector<int64_t> rows;
  std::vector<at::Tensor> values;
  for (const Overlap& o : overlaps) {
    const SequenceStep& s = *o.step;
    const int64_t step_row = first_rows[static_cast<size_t>(&s - batch.data())];
    const int64_t first = s.multimodal->image_offsets[o.image];
    for (int64_t pos = o.begin; pos < o.end; ++pos) rows.push_back(step_row + pos - s.start_position);
    values.push_back(encoded_images_[s.sequence_id][o.image].narrow(0, o.begin - first, o.end - o.begin));
  }
  GlmModel::EmbeddingOverride result;
  if (rows.empty()) return result;
  result.rows = at::tensor(rows, at::TensorOptions().dtype(at::kLong)).to(model_.device());
  result.values = values.size() == 1 ? values[0] : at::cat(values, 0);
  return result;
}

void ModelForward::CaptureDecodeGraphs(KvPool& kv, int32_t max_sequences, std::vector<int32_t>* captured,
                                       std::string* note) {
#ifdef GLMSERVE_TORCH_CUDA
  if (CudaDecodeRunner* runner = DecodeRunner()) CaptureCudaDecodeGraphs(*runner, max_sequences, kv, captured, note);
#else
  (void)kv, (void)max_sequences, (void)captured, (void)note;
#endif
}

}  // namespace glmserve
