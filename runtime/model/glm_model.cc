#include "runtime/model/glm_model.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"

namespace glmserve {

absl::StatusOr<std::unique_ptr<GlmModel>> GlmModel::Build(const ModelConfig& config, const WeightPlan& plan,
                                                          std::unordered_map<std::string, at::Tensor>* stored,
                                                          at::ScalarType dtype, at::Device device) {
  std::unordered_map<std::string, at::Tensor> canonical;
  // How many canonical tensors still need each stored tensor, so it can be freed after the last.
  std::unordered_map<std::string, int> uses;
  for (const MappedTensor& t : plan.tensors) ++uses[t.source_key];
  for (const MappedTensor& t : plan.tensors) {
    auto it = stored->find(t.source_key);
    if (it == stored->end()) {
      return absl::InternalError(
          absl::StrCat("tensor '", t.source_key, "' was validated but not read from ", t.source_file));
    }
    at::Tensor slice = it->second.narrow(0, t.row_begin, t.row_end - t.row_begin);
    canonical[t.canonical] = slice.to(device, dtype).contiguous();
    if (--uses[t.source_key] == 0) stored->erase(it);
  }
  std::unique_ptr<GlmModel> model(new GlmModel(config, dtype, device));
  auto take = [&](const std::string& name) { return canonical.at(name); };
  model->embed_ = take("embed.weight");
  // Tied: the embedding, unless the checkpoint also stores an lm_head with other values (then that
  // one, as transformers keeps it untied; the plan maps it only when stored).
  auto stored_lm_head = canonical.find("lm_head.weight");
  model->lm_head_ = !config.tie_word_embeddings ? take("lm_head.weight")
                    : stored_lm_head == canonical.end() || at::equal(stored_lm_head->second, model->embed_)
                        ? model->embed_
                        : stored_lm_head->second;
  model->final_norm_ = take("final_norm.weight");
  for (int32_t l = 0; l < config.num_layers; ++l) {
    auto name = [l](const char* slot) { return CanonicalLayerName(l, slot); };
    Layer layer;
    layer.input_norm = take(name("input_norm.weight"));
    layer.qkv_weight = at::cat({take(name("q.weight")), take(name("k.weight")), take(name("v.weight"))}, 0);
    if (config.attention_bias) {
      layer.qkv_bias = at::cat({take(name("q.bias")), take(name("k.bias")), take(name("v.bias"))}, 0);
    }
    layer.o_weight = take(name("o.weight"));
    layer.mlp_norm = take(name("mlp_norm.weight"));
    layer.gate_up_weight = at::cat({take(name("gate.weight")), take(name("up.weight"))}, 0);
    layer.down_weight = take(name("down.weight"));
    if (config.sandwich_norms) {
      layer.post_attn_norm = take(name("post_attn_norm.weight"));
      layer.post_mlp_norm = take(name("post_mlp_norm.weight"));
    }
    for (const char* slot :
         {"q.weight", "k.weight", "v.weight", "q.bias", "k.bias", "v.bias", "gate.weight", "up.weight"}) {
      canonical.erase(name(slot));
    }
    model->layers_.push_back(std::move(layer));
  }
  if (config.vision.has_value()) {
    auto vision = std::make_unique<VisionWeights>();
    auto opt = [&](const std::string& name) {
      auto it = canonical.find(name);
      return it == canonical.end() ? at::Tensor() : it->second;
    };
    vision->patch_embed_weight = take("visual.patch_embed.weight");
    vision->patch_embed_bias = take("visual.patch_embed.bias");
    vision->post_conv_norm = take("visual.post_conv_norm.weight");
    vision->position_embedding = take("visual.position_embedding.weight");
    for (int32_t b = 0; b < config.vision->depth; ++b) {
      auto name = [b](const char* slot) { return absl::StrCat("visual.blocks.", b, ".", slot); };
      VisionWeights::Block block;
      block.norm1 = take(name("norm1.weight"));
      block.norm2 = take(name("norm2.weight"));
      block.qkv_weight = take(name("qkv.weight"));
      block.qkv_bias = opt(name("qkv.bias"));
      block.proj_weight = take(name("proj.weight"));
      block.gate_up_weight = at::cat({take(name("gate.weight")), take(name("up.weight"))}, 0);
      block.down_weight = take(name("down.weight"));
      vision->blocks.push_back(std::move(block));
    }
    vision->post_norm = take("visual.post_norm.weight");
    vision->downsample_weight = take("visual.downsample.weight");
    vision->downsample_bias = take("visual.downsample.bias");
    vision->merger_proj = take("visual.merger.proj.weight");
    vision->merger_norm_weight = take("visual.merger.norm.weight");
    vision->merger_norm_bias = take("visual.merger.norm.bias");
    vision->merger_gate = take("visual.merger.gate.weight");
    vision->merger_up = take("visual.merger.up.weight");
    vision->merger_down = take("visual.merger.down.weight");
    model->vision_ = std::move(vision);
  }
  // transformers: inv_freq = 1 / base^(arange(0, dim, 2) / dim), computed in float32.
  const int64_t dim = config.rotary_dim;
  if (dim > 0) {
    at::Tensor exponents =
        at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / static_cast<float>(dim);
    model->inv_freq_ =
        (1.0 / at::pow(static_cast<double>(static_cast<float>(config.rope_theta)), exponents)).to(device);
    if (!config.mrope_section.empty()) {
      std::vector<int64_t> components;
      for (size_t c = 0; c < config.mrope_section.size(); ++c) {
        components.insert(components.end(), config.mrope_section[c], static_cast<int64_t>(c % 3));
      }
      if (static_cast<int64_t>(components.size()) != dim / 2) {
        return absl::FailedPreconditionError(absl::StrCat("config.json: rope_parameters.mrope_section sums to ",
                                                          components.size(), ", expected rotary_dim / 2 = ", dim / 2));
      }
      model->mrope_components_ = at::tensor(components, at::TensorOptions().dtype(at::kLong)).to(device);
    }
  }
  return model;
}

absl::StatusOr<std::unique_ptr<GlmModel>> GlmModel::BuildRandom(const ModelConfig& config, at::ScalarType dtype,
                                                                at::Device device, uint64_t seed) {
  WeightPlan plan;
  plan.tensors = CanonicalTensors(config);
  std::unordered_map<std::string, at::Tensor> stored;
  at::manual_seed(seed);
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  for (const MappedTensor& t : plan.tensors) {
    const bool is_norm = t.shape.size() == 1 && t.canonical.find("norm") != std::string::npos;
    // A LayerNorm's bias (the vision merger's) starts at 0 as in torch, its weight at 1.
    const bool is_norm_bias =
        is_norm && t.canonical.size() >= 5 && t.canonical.compare(t.canonical.size() - 5, 5, ".bias") == 0;
    stored[t.source_key] = is_norm_bias ? at::zeros(t.shape, options)
                           : is_norm    ? at::ones(t.shape, options)
                                        : at::randn(t.shape, options) * 0.02;
  }
  return Build(config, plan, &stored, dtype, device);
}

int64_t GlmModel::kv_bytes_per_token() const {
  return int64_t{2} * config_.num_layers * config_.num_key_value_heads * config_.head_dim *
         static_cast<int64_t>(c10::elementSize(dtype_));
}

KvPool GlmModel::AllocateKv(int32_t num_blocks, int32_t block_size) const {
  KvPool pool;
  pool.block_size = block_size;
  pool.num_blocks = num_blocks;
  const auto options = at::TensorOptions().dtype(dtype_).device(device_);
  const int64_t slots = (int64_t{num_blocks} + 1) * block_size;  // + the scratch block
  pool.k = at::zeros({config_.num_layers, slots, config_.num_key_value_heads, config_.head_dim}, options);
  pool.v = at::zeros_like(pool.k);
  return pool;
}

at::Tensor GlmModel::RmsNorm(const at::Tensor& x, const at::Tensor& weight) const {
  // transformers: variance in fp32, normalise, cast back, then scale by the weight.
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor variance = x32.pow(2).mean(-1, /*keepdim=*/true);
  at::Tensor normed = (x32 * at::rsqrt(variance + config_.rms_norm_eps)).to(x.scalar_type());
  return weight * normed;
}

at::Tensor GlmModel::ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
  // x: [T, heads, head_dim]; cos/sin: [T, 1, rotary_dim / 2]. Pairs (2j, 2j+1) rotate by angle j.
  const int64_t rot = config_.rotary_dim;
  at::Tensor rotated = x.narrow(-1, 0, rot);
  at::Tensor even = rotated.slice(-1, 0, rot, 2);
  at::Tensor odd = rotated.slice(-1, 1, rot, 2);
  at::Tensor new_even = even * cos - odd * sin;
  at::Tensor new_odd = odd * cos + even * sin;
  at::Tensor merged = at::stack({new_even, new_odd}, -1).flatten(-2);
  if (rot == x.size(-1)) return merged;
  return at::cat({merged, x.narrow(-1, rot, x.size(-1) - rot)}, -1);
}

at::Tensor GlmModel::RunLayers(const at::Tensor& ids, const at::Tensor& positions, const at::Tensor& slots, KvPool& kv,
                               const AttendFn& attend, const LayerKernels& kernels,
                               const EmbeddingOverride* embeddings) const {
  const ModelConfig& c = config_;
  const int64_t heads = c.num_attention_heads, kv_heads = c.num_key_value_heads, hd = c.head_dim;
  const int64_t q_size = heads * hd, kv_size = kv_heads * hd;
  const int64_t total = ids.size(0);
  const bool mrope = positions.dim() == 2;
  TORCH_CHECK(!mrope || mrope_components_.defined(), "3-D positions given to a model without mrope_section");
  const bool fused_rotary = kernels.rotary_kv && (!mrope || kernels.rotary_kv_takes_3d);
  at::Tensor cos, sin;
  if (c.rotary_dim > 0 && !fused_rotary) {
    // [T, rot/2]: frequency j turns with position component mrope_components_[j] (1-D: the only one).
    at::Tensor per_frequency =
        mrope ? positions.index_select(0, mrope_components_).t().to(at::kFloat) : positions.to(at::kFloat).unsqueeze(1);
    at::Tensor freqs = per_frequency * inv_freq_.unsqueeze(0);
    cos = freqs.cos().to(dtype_).unsqueeze(1);
    sin = freqs.sin().to(dtype_).unsqueeze(1);
  }
  at::Tensor x = embed_.index_select(0, ids);  // [T, H], the residual stream
  if (embeddings != nullptr && embeddings->rows.numel() > 0) {
    x.index_copy_(0, embeddings->rows, embeddings->values.to(dtype_));
  }
  // Output of the last block, not yet added to x, and the norm it takes first (sandwich norms):
  // folded into the next add+RMSNorm.
  at::Tensor pending, pending_norm;
  auto add_and_norm = [&](const at::Tensor& weight) {
    at::Tensor delta = pending, delta_weight = pending_norm;
    pending = pending_norm = at::Tensor();
    return AddRmsNorm(kernels, delta, delta_weight, x, weight);
  };
  // The norm and the projection after it in one step where the kernels can (norm_linear).
  auto fused_norm_linear = [&](NormLinear args) {
    FusedProjection fused;
    if (!kernels.norm_linear) return fused;
    args.delta = pending;
    args.delta_weight = pending_norm;
    fused = kernels.norm_linear(args, x);
    if (fused.y.defined()) pending = pending_norm = at::Tensor();
    return fused;
  };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const Layer& layer = layers_[l];
    at::Tensor k_cache = kv.k[l];
    at::Tensor v_cache = kv.v[l];
    NormLinear qkv_args;
    qkv_args.norm_weight = layer.input_norm;
    qkv_args.weight = layer.qkv_weight;
    qkv_args.bias = layer.qkv_bias;
    if (fused_rotary) {
      qkv_args.positions = positions;
      qkv_args.slots = slots;
      qkv_args.k_cache = k_cache;
      qkv_args.v_cache = v_cache;
    }
    const FusedProjection fused_qkv = fused_norm_linear(qkv_args);
    at::Tensor qkv = fused_qkv.y;
    if (!qkv.defined()) qkv = Linear(kernels, add_and_norm(layer.input_norm), layer.qkv_weight, layer.qkv_bias);
    if (kernels.prefetch_weight) kernels.prefetch_weight("o", layer.o_weight, total);
    at::Tensor q = qkv.narrow(1, 0, q_size).view({total, heads, hd});
    if (fused_qkv.rotary_kv) {  // q (the view above) and the caches are as rotary_kv leaves them
    } else if (fused_rotary) {
      kernels.rotary_kv(qkv, positions, slots, k_cache, v_cache);  // rotates q (the view above) in place
    } else {
      at::Tensor k = qkv.narrow(1, q_size, kv_size).view({total, kv_heads, hd});
      at::Tensor v = qkv.narrow(1, q_size + kv_size, kv_size).view({total, kv_heads, hd});
      if (c.rotary_dim > 0) {
        q = ApplyRotary(q, cos, sin);
        k = ApplyRotary(k, cos, sin);
      }
      k_cache.index_copy_(0, slots, k);
      v_cache.index_copy_(0, slots, v);
    }
    const at::Tensor attention = attend(q, k_cache, v_cache);
    at::Tensor o = Linear(kernels, attention, layer.o_weight, at::Tensor());
    if (kernels.prefetch_weight) kernels.prefetch_weight("gate_up", layer.gate_up_weight, total);
    pending = o;
    if (c.sandwich_norms) pending_norm = layer.post_attn_norm;
    NormLinear mlp_args;
    mlp_args.norm_weight = layer.mlp_norm;
    mlp_args.weight = layer.gate_up_weight;
    mlp_args.swiglu = true;
    const FusedProjection fused = fused_norm_linear(mlp_args);
    at::Tensor act = fused.swiglu ? fused.y : at::Tensor();
    at::Tensor gate_up = fused.swiglu ? at::Tensor() : fused.y;
    if (!fused.y.defined()) {
      at::Tensor h = add_and_norm(layer.mlp_norm);
      act = kernels.gate_up_swiglu ? kernels.gate_up_swiglu(h, layer.gate_up_weight) : at::Tensor();
      if (!act.defined()) gate_up = Linear(kernels, h, layer.gate_up_weight, at::Tensor());
    }
    if (kernels.prefetch_weight) kernels.prefetch_weight("down", layer.down_weight, total);
    if (!act.defined()) {
      if (kernels.swiglu) {
        act = kernels.swiglu(gate_up);
      } else {
        at::Tensor gate = gate_up.narrow(1, 0, c.intermediate_size);
        at::Tensor up = gate_up.narrow(1, c.intermediate_size, c.intermediate_size);
        act = up * at::silu(gate);
      }
    }
    at::Tensor m = Linear(kernels, act, layer.down_weight, at::Tensor());
    if (kernels.prefetch_weight) {
      if (l + 1 < c.num_layers) {
        kernels.prefetch_weight("qkv", layers_[l + 1].qkv_weight, total);
      } else {
        kernels.prefetch_weight("lm_head", lm_head_, total);
      }
    }
    pending = m;
    if (c.sandwich_norms) pending_norm = layer.post_mlp_norm;
  }
  if (!pending.defined()) return x;
  return x + (pending_norm.defined() ? RmsNorm(pending, pending_norm) : pending);
}

at::Tensor GlmModel::Linear(const LayerKernels& kernels, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias) const {
  return kernels.linear ? kernels.linear(x, weight, bias) : at::linear(x, weight, bias);
}

at::Tensor GlmModel::AddRmsNorm(const LayerKernels& kernels, const at::Tensor& delta, const at::Tensor& delta_weight,
                                at::Tensor& residual, const at::Tensor& weight) const {
  if (kernels.add_rms_norm) return kernels.add_rms_norm(delta, delta_weight, residual, weight);
  if (delta.defined()) residual = residual + (delta_weight.defined() ? RmsNorm(delta, delta_weight) : delta);
  return RmsNorm(residual, weight);
}

std::vector<GlmModel::Projection> GlmModel::Projections() const {
  std::vector<Projection> roles = {{"qkv", {}, {}}, {"o", {}, {}}, {"gate_up", {}, {}}, {"down", {}, {}}};
  for (const Layer& layer : layers_) {
    const at::Tensor weights[] = {layer.qkv_weight, layer.o_weight, layer.gate_up_weight, layer.down_weight};
    const at::Tensor biases[] = {layer.qkv_bias, at::Tensor(), at::Tensor(), at::Tensor()};
    for (size_t i = 0; i < roles.size(); ++i) {
      roles[i].weights.push_back(weights[i]);
      roles[i].biases.push_back(biases[i]);
    }
  }
  roles.push_back({"lm_head", {lm_head_}, {at::Tensor()}});
  return roles;
}

at::Tensor GlmModel::Logits(const at::Tensor& hidden_rows, const LayerKernels& kernels, bool fp32) const {
  at::Tensor rows = hidden_rows.contiguous();  // the fused kernel reads rows densely
  FusedProjection fused;
  if (kernels.norm_linear) {
    NormLinear args;
    args.norm_weight = final_norm_;
    args.weight = lm_head_;
    fused = kernels.norm_linear(args, rows);
  }
  at::Tensor logits =
      fused.y.defined()
          ? fused.y
          : Linear(kernels, AddRmsNorm(kernels, at::Tensor(), at::Tensor(), rows, final_norm_), lm_head_, at::Tensor());
  return fp32 ? logits.to(at::kFloat) : logits;
}

at::Tensor GlmModel::EagerForward(const std::vector<SequenceStep>& batch, KvPool& kv, const LayerKernels& kernels,
                                  const EmbeddingOverride* embeddings) const {
  const ModelConfig& c = config_;
  const int64_t heads = c.num_attention_heads, hd = c.head_dim;
  const int64_t q_size = heads * hd;
  const int64_t group = heads / c.num_key_value_heads;

  // Flatten the batch: token ids, their positions and the KV slot each writes.
  // 3-D rotary positions when any step needs them ([3, T]: every row's three components, equal
  // for text), else one per row.
  const bool mrope = std::any_of(batch.begin(), batch.end(), StepNeedsMultimodal);
  std::vector<int64_t> ids, positions, component_positions[3], slots, last_rows;
  for (const SequenceStep& s : batch) {
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      const int64_t pos = s.start_position + static_cast<int64_t>(i);
      ids.push_back(s.tokens[i]);
      positions.push_back(RotaryPosition(s, pos));
      for (int component = 0; component < 3 && mrope; ++component) {
        component_positions[component].push_back(s.multimodal == nullptr ? pos
                                                                         : s.multimodal->Position(component, pos));
      }
      slots.push_back(kv.slot(s.block_table, pos));
    }
    if (s.sample) last_rows.push_back(static_cast<int64_t>(ids.size()) - 1);
  }
  const auto long_cpu = at::TensorOptions().dtype(at::kLong);
  at::Tensor position_tensor =
      mrope ? at::stack({at::tensor(component_positions[0], long_cpu), at::tensor(component_positions[1], long_cpu),
                         at::tensor(component_positions[2], long_cpu)})
            : at::tensor(positions, long_cpu);

  // Per-sequence attention views: context slots and the causal mask for its query rows.
  struct SeqView {
    int64_t row_begin, rows;
    at::Tensor context_slots;  // [context_len]
    at::Tensor mask;           // [rows, context_len] additive, or undefined when rows == 1
  };
  std::vector<SeqView> views;
  int64_t row = 0;
  for (const SequenceStep& s : batch) {
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    const int64_t context = s.start_position + n;
    std::vector<int64_t> context_slots(context);
    for (int64_t p = 0; p < context; ++p) {
      context_slots[p] = kv.slot(s.block_table, p);
    }
    SeqView view{row, n, at::tensor(context_slots, long_cpu).to(device_), at::Tensor()};
    if (n > 1) {
      // Query i (position start+i) sees keys at positions <= start+i.
      view.mask = at::full({n, context}, -std::numeric_limits<float>::infinity(),
                           at::TensorOptions().dtype(at::kFloat).device(device_))
                      .triu(s.start_position + 1);
    }
    views.push_back(std::move(view));
    row += n;
  }

  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  auto attend = [&](const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache) {
    std::vector<at::Tensor> outputs;
    outputs.reserve(views.size());
    for (const SeqView& view : views) {
      at::Tensor qs = q.narrow(0, view.row_begin, view.rows).transpose(0, 1);  // [heads, n, hd]
      at::Tensor ks = k_cache.index_select(0, view.context_slots);             // [ctx, kv_heads, hd]
      at::Tensor vs = v_cache.index_select(0, view.context_slots);
      if (group > 1) {
        ks = ks.repeat_interleave(group, 1);
        vs = vs.repeat_interleave(group, 1);
      }
      ks = ks.transpose(0, 1);  // [heads, ctx, hd]
      vs = vs.transpose(0, 1);
      at::Tensor scores = at::matmul(qs, ks.transpose(1, 2)).to(at::kFloat) * scale;  // [heads, n, ctx]
      if (view.mask.defined()) scores = scores + view.mask;
      at::Tensor probs = at::softmax(scores, -1).to(dtype_);
      outputs.push_back(at::matmul(probs, vs).transpose(0, 1).reshape({view.rows, q_size}));
    }
    return outputs.size() == 1 ? outputs[0] : at::cat(outputs, 0);
  };
  at::Tensor hidden = RunLayers(at::tensor(ids, long_cpu).to(device_), position_tensor.to(device_),
                                at::tensor(slots, long_cpu).to(device_), kv, attend, kernels, embeddings);
  if (last_rows.empty()) return at::empty({0, c.vocab_size}, hidden.options().dtype(at::kFloat));
  return Logits(hidden.index_select(0, at::tensor(last_rows, long_cpu).to(device_)), kernels);
}

}  // namespace glmserve
