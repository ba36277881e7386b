#include "runtime/model/vision_tower.h"

#include <cmath>

namespace glmserve {
namespace {

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

// transformers' rotate_half: the second half, negated, then the first.
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// Each patch's (row, column) in its image's patch grid, in pixel_values' block-major order.
void PatchCoordinates(const ImageInput& image, int32_t merge, std::vector<int64_t>* rows, std::vector<int64_t>* cols) {
  for (int32_t t = 0; t < image.grid_t; ++t) {
    for (int32_t br = 0; br < image.grid_h / merge; ++br) {
      for (int32_t bc = 0; bc < image.grid_w / merge; ++bc) {
        for (int32_t ir = 0; ir < merge; ++ir) {
          for (int32_t ic = 0; ic < merge; ++ic) {
            rows->push_back(int64_t{br} * merge + ir);
            cols->push_back(int64_t{bc} * merge + ic);
          }
        }
      }
    }
  }
}

}  // namespace

at::Tensor EncodeImages(const VisionWeights& w, const VisionConfig& c, const std::vector<const ImageInput*>& images,
                        at::ScalarType dtype, at::Device device, const VisionKernels& kernels) {
  const int64_t hidden = c.hidden_size, heads = c.num_heads, head_dim = c.head_dim();
  const int32_t merge = c.spatial_merge_size;
  const auto long_cpu = at::TensorOptions().dtype(at::kLong);
  const auto float_device = at::TensorOptions().dtype(at::kFloat).device(device);

  // Each image's uint8 codes go to the device as they are (a quarter of the floats' bytes) and
  // are looked up there: row r, column j of image k reads tables[k * 768 + channel(j) * 256 + code].
  std::vector<at::Tensor> codes;
  std::vector<float> tables;
  std::vector<int64_t> rows, cols, grid_h, grid_w, segments, row_table;  // grid_* per patch; segments per frame
  int64_t patch_dim = 0;
  for (const ImageInput* image : images) {
    const int64_t patches = image->num_patches();
    TORCH_CHECK(static_cast<int64_t>(image->pixel_codes.size()) == patches * image->patch_dim,
                "image pixel_codes hold ", image->pixel_codes.size(), " values, expected ", patches, " x ",
                image->patch_dim);
    TORCH_CHECK(image->value_table.size() == 3 * 256 && image->patch_dim % 3 == 0 &&
                    (patch_dim == 0 || patch_dim == image->patch_dim),
                "image value_table holds ", image->value_table.size(), " floats (expected 768), patch_dim ",
                image->patch_dim);
    patch_dim = image->patch_dim;
    row_table.insert(row_table.end(), patches, static_cast<int64_t>(tables.size()));
    tables.insert(tables.end(), image->value_table.begin(), image->value_table.end());
    codes.push_back(at::from_blob(const_cast<uint8_t*>(image->pixel_codes.data()), {patches, image->patch_dim},
                                  at::TensorOptions().dtype(at::kByte)));
    PatchCoordinates(*image, merge, &rows, &cols);
    grid_h.insert(grid_h.end(), patches, image->grid_h);
    grid_w.insert(grid_w.end(), patches, image->grid_w);
    segments.insert(segments.end(), image->grid_t, int64_t{image->grid_h} * image->grid_w);
  }
  std::vector<int64_t> column_offset(static_cast<size_t>(patch_dim));
  for (int64_t j = 0; j < patch_dim; ++j) column_offset[static_cast<size_t>(j)] = j / (patch_dim / 3) * 256;
  at::Tensor index = (codes.size() == 1 ? codes[0] : at::cat(codes, 0)).to(device).to(at::kLong) +
                     at::tensor(column_offset, long_cpu).to(device).unsqueeze(0) +
                     at::tensor(row_table, long_cpu).to(device).unsqueeze(1);
  at::Tensor pixels = at::tensor(tables, at::TensorOptions().dtype(at::kFloat))
                          .to(device)
                          .index_select(0, index.view(-1))
                          .view(index.sizes());
  // Patch embedding: a Conv3d whose stride equals its kernel is one linear map per patch.
  at::Tensor x = at::linear(pixels.to(dtype), w.patch_embed_weight.reshape({hidden, -1}), w.patch_embed_bias);
  // residual += delta (when defined), then its RMSNorm: fused when the kernels have it.
  auto add_rms_norm = [&](const at::Tensor& delta, at::Tensor& residual, const at::Tensor& weight) {
    if (kernels.add_rms_norm) return kernels.add_rms_norm(delta, residual, weight);
    if (delta.defined()) residual = residual + delta;
    return RmsNorm(residual, weight, c.rms_norm_eps);
  };
  x = add_rms_norm(at::Tensor(), x, w.post_conv_norm);

  at::Tensor row_ids = at::tensor(rows, long_cpu).to(device), col_ids = at::tensor(cols, long_cpu).to(device);
  // 2-D rotary: head_dim / 4 frequencies over head_dim / 2, the row's angles then the column's,
  // the whole repeated to head_dim (rotate_half pairs i with i + head_dim / 2).
  const int64_t spatial = head_dim / 2;
  at::Tensor exponents = at::arange(0, spatial, 2, long_cpu).to(at::kFloat) / static_cast<float>(spatial);
  at::Tensor inv_freq = (1.0 / at::pow(static_cast<double>(static_cast<float>(c.rope_theta)), exponents)).to(device);
  at::Tensor angles =
      at::cat({row_ids.to(at::kFloat).unsqueeze(1) * inv_freq, col_ids.to(at::kFloat).unsqueeze(1) * inv_freq}, -1);
  angles = at::cat({angles, angles}, -1).unsqueeze(1);  // [N, 1, head_dim]
  const at::Tensor cos = angles.cos(), sin = angles.sin();

  // Learned positions: the (side x side) table sampled bicubically at each patch's centre in its
  // own grid (grid_sample, border padding, align_corners false), in fp32.
  const int64_t side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(w.position_embedding.size(0)))));
  at::Tensor table = w.position_embedding.view({side, side, hidden}).permute({2, 0, 1}).unsqueeze(0).to(at::kFloat);
  at::Tensor norm_w = ((col_ids.to(at::kFloat) + 0.5) / at::tensor(grid_w, long_cpu).to(float_device)) * 2 - 1;
  at::Tensor norm_h = ((row_ids.to(at::kFloat) + 0.5) / at::tensor(grid_h, long_cpu).to(float_device)) * 2 - 1;
  at::Tensor grid = at::stack({norm_w, norm_h}, -1).unsqueeze(0).unsqueeze(2);  // [1, N, 1, 2]
  at::Tensor sampled = at::grid_sampler(table, grid, /*bicubic=*/2, /*border=*/1, /*align_corners=*/false);
  x = x + sampled.squeeze(0).squeeze(-1).permute({1, 0}).to(dtype);

  const int64_t n = x.size(0);
  const at::Tensor cos_2d = cos.squeeze(1), sin_2d = sin.squeeze(1);
  const int64_t intermediate = w.blocks.empty() ? 0 : w.blocks[0].gate_up_weight.size(0) / 2;
  at::Tensor pending;  // the last attention or MLP output, not yet added to x
  for (const VisionWeights::Block& block : w.blocks) {
    at::Tensor h = add_rms_norm(pending, x, block.norm1);
    at::Tensor qkv = at::linear(h, block.qkv_weight, block.qkv_bias).view({n, 3, heads, head_dim});
    // Rotary in fp32, as transformers' apply_rotary_pos_emb_vision.
    at::Tensor q, k;
    if (kernels.rotate_qk) {
      at::Tensor qk = kernels.rotate_qk(qkv, cos_2d, sin_2d);
      q = qk.select(1, 0);
      k = qk.select(1, 1);
    } else {
      auto rotate = [&](const at::Tensor& t) {
        at::Tensor t32 = t.to(at::kFloat);
        return (t32 * cos + RotateHalf(t32) * sin).to(dtype);
      };
      q = rotate(qkv.select(1, 0));
      k = rotate(qkv.select(1, 1));
    }
    const at::Tensor v = qkv.select(1, 2);
    // Attention within each frame of each image only (non-causal), fused where ATen has a kernel.
    std::vector<at::Tensor> outputs;
    int64_t begin = 0;
    for (int64_t len : segments) {
      auto part = [&](const at::Tensor& t) { return t.narrow(0, begin, len).transpose(0, 1).unsqueeze(0); };
      at::Tensor o = at::scaled_dot_product_attention(part(q), part(k), part(v));  // [1, heads, len, hd]
      outputs.push_back(o.squeeze(0).transpose(0, 1).reshape({len, hidden}));
      begin += len;
    }
    at::Tensor attn = outputs.size() == 1 ? outputs[0] : at::cat(outputs, 0);
    h = add_rms_norm(at::linear(attn, block.proj_weight), x, block.norm2);
    const at::Tensor gate_up = at::linear(h, block.gate_up_weight);
    const at::Tensor act =
        kernels.swiglu ? kernels.swiglu(gate_up)
                       : at::silu(gate_up.narrow(1, 0, intermediate)) * gate_up.narrow(1, intermediate, intermediate);
    pending = at::linear(act, block.down_weight);
  }
  x = add_rms_norm(pending, x, w.post_norm);
  // Downsample: a Conv2d over each merge x merge block (stride = kernel), i.e. one linear map of
  // the block's (channel, row, column) values.
  x = x.view({-1, merge, merge, hidden}).permute({0, 3, 1, 2}).reshape({-1, hidden * merge * merge});
  x = at::linear(x, w.downsample_weight.reshape({w.downsample_weight.size(0), -1}), w.downsample_bias);
  // Merger: proj, LayerNorm, exact GELU, then the SwiGLU-style MLP.
  x = at::linear(x, w.merger_proj);
  x = at::gelu(at::layer_norm(x, {x.size(-1)}, w.merger_norm_weight, w.merger_norm_bias, 1e-5));
  return at::linear(at::silu(at::linear(x, w.merger_gate)) * at::linear(x, w.merger_up), w.merger_down);
}

}  // namespace glmserve
