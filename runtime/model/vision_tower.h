// GLM-4.1V's vision tower in ATen ops: pixel patches -> image features in the text model's hidden
// size, as transformers' Glm4vVisionModel computes them (patch embedding, learned positions
// interpolated to each image's grid, blocks with 2-D rotary attention over each image's own
// patches, spatial downsample, patch merger). Include only from LibTorch TUs.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "runtime/checkpoint/model_config.h"
#include "runtime/generation.h"
#include "runtime/model/glm_model.h"

namespace glmserve {

// [sum of images' num_tokens, out_hidden_size] in `dtype` on `device`, images in order. Throws
// c10::Error on failure (an out-of-memory included: the executor turns it into a status).
at::Tensor EncodeImages(const VisionWeights& weights, const VisionConfig& config,
                        const std::vector<const ImageInput*>& images, at::ScalarType dtype, at::Device device);

}  // namespace glmserve
