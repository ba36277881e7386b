#include "runtime/model/model_forward.h"

#include <algorithm>

#include "runtime/model/cuda_decode.h"

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

at::Tensor ModelForward::Forward(const std::vector<SequenceStep>& batch, KvPool& kv) {
#ifdef GLMSERVE_TORCH_CUDA
  if (CudaDecodeRunner* runner = DecodeRunner()) {
    const bool all_decode = !batch.empty() && std::all_of(batch.begin(), batch.end(), [](const SequenceStep& s) {
      return s.tokens.size() == 1 && s.sample;
    });
    if (all_decode) {
      at::Tensor logits = CudaDecodeForward(*runner, batch, kv);
      if (logits.defined()) return logits;
    }
    at::Tensor logits = CudaMixedForward(*runner, batch, kv);
    if (logits.defined()) return logits;
    return model_.EagerForward(batch, kv, CudaLayerKernels(*runner));
  }
#endif
  return model_.EagerForward(batch, kv, GlmModel::LayerKernels());  // ATen ops
}

void ModelForward::CaptureDecodeGraphs(KvPool& kv, int32_t max_sequences, std::vector<int32_t>* captured) {
#ifdef GLMSERVE_TORCH_CUDA
  if (CudaDecodeRunner* runner = DecodeRunner()) CaptureCudaDecodeGraphs(*runner, max_sequences, kv, captured);
#else
  (void)kv, (void)max_sequences, (void)captured;
#endif
}

}  // namespace glmserve
