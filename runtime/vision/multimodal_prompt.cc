#include "runtime/vision/multimodal_prompt.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace glmserve::vision {

ImageInput ToImageInput(ProcessedImage processed) {
  ImageInput image;
  image.grid_t = processed.grid.grid_t;
  image.grid_h = processed.grid.grid_h;
  image.grid_w = processed.grid.grid_w;
  image.patch_dim = static_cast<int32_t>(processed.patch_dim);
  image.pixel_codes = std::move(processed.pixel_codes);
  image.value_table = std::move(processed.value_table);
  image.num_tokens = static_cast<int32_t>(processed.num_image_tokens);
  image.resized_height = processed.grid.resized_height;
  image.resized_width = processed.grid.resized_width;
  return image;
}

absl::StatusOr<std::vector<int32_t>> ExpandImageTokens(const std::vector<int32_t>& input_ids,
                                                       const std::vector<ImageInput>& images,
                                                       const ImageTokenIds& ids) {
  std::vector<int32_t> expanded;
  size_t next_image = 0;
  for (size_t i = 0; i < input_ids.size(); ++i) {
    if (input_ids[i] != ids.image_token_id) {
      expanded.push_back(input_ids[i]);
      continue;
    }
    const bool framed = i > 0 && input_ids[i - 1] == ids.image_start_token_id && i + 1 < input_ids.size() &&
                        input_ids[i + 1] == ids.image_end_token_id;
    if (!framed) {
      return absl::InvalidArgumentError(
          absl::StrCat("input_ids[", i, "] = ", ids.image_token_id,
                       " (image_token_id) must stand alone between image_start_token_id (", ids.image_start_token_id,
                       ") and image_end_token_id (", ids.image_end_token_id,
                       "): one placeholder per image, expanded here to the image's token count"));
    }
    if (next_image == images.size()) {
      return absl::InvalidArgumentError(absl::StrCat("input_ids[", i, "]: image placeholder number ", next_image + 1,
                                                     " but only ", images.size(), " image(s) given"));
    }
    expanded.insert(expanded.end(), images[next_image].num_tokens, ids.image_token_id);
    ++next_image;
  }
  if (next_image != images.size()) {
    return absl::InvalidArgumentError(absl::StrCat("input_ids hold ", next_image,
                                                   " image placeholder(s) (image_token_id ", ids.image_token_id,
                                                   ") but ", images.size(), " image(s) were given"));
  }
  return expanded;
}

absl::StatusOr<std::shared_ptr<const MultimodalPrompt>> BuildMultimodalPrompt(const std::vector<int32_t>& expanded_ids,
                                                                              std::vector<ImageInput> images,
                                                                              int32_t image_token_id,
                                                                              int32_t spatial_merge_size) {
  if (spatial_merge_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("spatial_merge_size must be >= 1, got ", spatial_merge_size));
  }
  auto prompt = std::make_shared<MultimodalPrompt>();
  const int32_t n = static_cast<int32_t>(expanded_ids.size());
  prompt->prompt_len = n;
  prompt->positions.assign(static_cast<size_t>(3) * n, 0);
  int64_t current = 0;  // the next position (get_rope_index's current_pos)
  int64_t max_position = -1;
  size_t next_image = 0;
  auto set = [&](int32_t index, int64_t t, int64_t h, int64_t w) {
    prompt->positions[index] = static_cast<int32_t>(t);
    prompt->positions[n + index] = static_cast<int32_t>(h);
    prompt->positions[2 * static_cast<size_t>(n) + index] = static_cast<int32_t>(w);
    max_position = std::max({max_position, t, h, w});
  };
  for (int32_t i = 0; i < n;) {
    if (expanded_ids[i] != image_token_id) {
      set(i, current, current, current);
      ++current;
      ++i;
      continue;
    }
    int32_t run_end = i;
    while (run_end < n && expanded_ids[run_end] == image_token_id) ++run_end;
    if (next_image == images.size()) {
      return absl::InvalidArgumentError(absl::StrCat("input_ids[", i, "]: a run of image tokens but all ",
                                                     images.size(), " image(s) are already placed"));
    }
    const ImageInput& image = images[next_image];
    if (image.grid_h % spatial_merge_size != 0 || image.grid_w % spatial_merge_size != 0) {
      return absl::InvalidArgumentError(absl::StrCat("image ", next_image, ": grid ", image.grid_h, "x", image.grid_w,
                                                     " is not a multiple of spatial_merge_size ", spatial_merge_size));
    }
    const int32_t rows = image.grid_h / spatial_merge_size, cols = image.grid_w / spatial_merge_size;
    const int64_t expected = int64_t{image.grid_t} * rows * cols;
    if (run_end - i != expected || image.num_tokens != expected) {
      return absl::InvalidArgumentError(absl::StrCat("input_ids[", i, "..", run_end, "): ", run_end - i,
                                                     " image tokens, but image ", next_image, " (grid ", image.grid_t,
                                                     "x", image.grid_h, "x", image.grid_w, ") takes ", expected));
    }
    prompt->image_offsets.push_back(i);
    int32_t index = i;
    for (int32_t t = 0; t < image.grid_t; ++t) {
      for (int32_t r = 0; r < rows; ++r) {
        for (int32_t c = 0; c < cols; ++c) set(index++, current + t, current + r, current + c);
      }
    }
    current += std::max(rows, cols);
    ++next_image;
    i = run_end;
  }
  if (next_image != images.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("input_ids place ", next_image, " image(s) but ", images.size(), " were given"));
  }
  prompt->rope_delta = static_cast<int32_t>(max_position + 1 - n);
  prompt->images = std::move(images);
  return std::shared_ptr<const MultimodalPrompt>(std::move(prompt));
}

}  // namespace glmserve::vision
