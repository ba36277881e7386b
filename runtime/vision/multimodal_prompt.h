// A glm4v prompt with images, from what a client sends to what the engine runs: each image's
// single placeholder expanded to its image tokens, and the 3-D rotary positions of every prompt
// token, as transformers' Glm4vProcessor and Glm4vModel.get_rope_index make them. LibTorch-free.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/generation.h"
#include "runtime/vision/glm4v_processor.h"

namespace glmserve::vision {

// The ids that mark images in a glm4v prompt (config.json's image_*_token_id).
struct ImageTokenIds {
  int32_t image_token_id = 151343;
  int32_t image_start_token_id = 151339;
  int32_t image_end_token_id = 151340;
};

// The processor's output as the engine takes it (pixel values moved out of `processed`).
ImageInput ToImageInput(ProcessedImage processed);

// `input_ids` hold, for each image in order, exactly one image_token_id between
// image_start_token_id and image_end_token_id (the CLI's and the chat template's form). Returns the
// ids with the k-th placeholder repeated images[k].num_tokens times, as the processor expands
// them. INVALID_ARGUMENT naming the index when the placeholders and images disagree in number, a
// placeholder is not between start and end ids, or an image token appears repeated already.
absl::StatusOr<std::vector<int32_t>> ExpandImageTokens(const std::vector<int32_t>& input_ids,
                                                       const std::vector<ImageInput>& images, const ImageTokenIds& ids);

// The multimodal prompt of `expanded_ids` (each image's tokens already expanded, as
// ExpandImageTokens returns them): image offsets, 3-D positions (text runs advance all three
// components together; an image's tokens take (start, start + row, start + column) over its
// merged grid and advance the position by max(rows, columns)) and the decode delta. `images` is
// moved in. INVALID_ARGUMENT when a run of image tokens does not match the next image's token
// count.
absl::StatusOr<std::shared_ptr<const MultimodalPrompt>> BuildMultimodalPrompt(const std::vector<int32_t>& expanded_ids,
                                                                              std::vector<ImageInput> images,
                                                                              int32_t image_token_id,
                                                                              int32_t spatial_merge_size);

}  // namespace glmserve::vision
