// The one-row layer chain (kernels/layer_chain.cu) alone on GLM-4-9B's layer shapes in bf16,
// against the kernels it replaces launched one by one (the GEMVs, SwiGLU, the rotary epilogue),
// over `--layers` layers of their own weights (no layer finds its weights in L2), no attention
// between them. Prints microseconds per layer and the weight bytes streamed per second for each
// ring size, then where one layer's chain spends its time (its blocks' timeline marks).
//   layer_chain_bench [--layers 40] [--iterations 5] [--ring-slots 0,8,16] [--timeline-layer 20]
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "flags/flags.h"
#include "kernels/decode_ops.h"
#include "kernels/rms_norm.h"

namespace {

using glmserve::kernels::ElementType;

// GLM-4-9B: hidden 4096, 32 query + 2 KV heads of 128 (half of each rotates), intermediate 13696.
constexpr int64_t kHidden = 4096, kIntermediate = 13696, kHeads = 32, kKvHeads = 2, kHeadDim = 128;
constexpr int64_t kQkv = (kHeads + 2 * kKvHeads) * kHeadDim, kAttention = kHeads * kHeadDim;
constexpr int64_t kCacheSlots = 16;
constexpr float kEps = 1.5625e-07f;

bool Ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) std::fprintf(stderr, "layer_chain_bench: %s: %s\n", what, cudaGetErrorString(e));
  return e == cudaSuccess;
}

// bf16 elements, every byte 0x3c (each element 0x3c3c, about 0.0115: finite through any layer).
void* Filled(int64_t elements, std::vector<void*>& owned) {
  void* p = nullptr;
  const size_t bytes = static_cast<size_t>(elements) * 2;
  if (!Ok(cudaMalloc(&p, bytes), "cudaMalloc") || !Ok(cudaMemset(p, 0x3c, bytes), "cudaMemset")) return nullptr;
  owned.push_back(p);
  return p;
}

struct LayerWeights {
  void *o, *gate_up, *down, *qkv, *qkv_bias, *mlp_norm, *input_norm, *k_cache, *v_cache;
};

}  // namespace

int main(int argc, char** argv) {
  int32_t layers = 40, iterations = 5, timeline_layer = 20;
  std::vector<int32_t> ring_slots = {0};
  bool prefetch_next = false;
  glmserve::flags::FlagSet flags("layer_chain_bench", "[flags]",
                                 "Times the one-row layer chain against the kernels it replaces.");
  flags.Int("layers", &layers, 2, 200, "layers, each with its own weights");
  flags.Int("iterations", &iterations, 1, 1000, "timed passes over the layers");
  flags.IntList("ring-slots", &ring_slots, 0, 64, "the chain's ring sizes to time (0: as many as fit)");
  flags.Int("timeline-layer", &timeline_layer, 0, 199, "the layer whose blocks' timeline is printed");
  flags.Bool("prefetch-next", &prefetch_next, "each chain asks L2 for the next layer's o rows (next_o_weight)");
  if (auto exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  if (timeline_layer >= layers) return flags.UsageError("--timeline-layer: not below --layers");
  if (!glmserve::kernels::CudaKernelsAvailable()) {
    std::fprintf(stderr, "layer_chain_bench: no CUDA device with the kernels' architecture\n");
    return 1;
  }
  std::vector<void*> owned;
  std::vector<LayerWeights> w(layers);
  for (LayerWeights& l : w) {
    l = {Filled(kHidden * kAttention, owned),
         Filled(2 * kIntermediate * kHidden, owned),
         Filled(kHidden * kIntermediate, owned),
         Filled(kQkv * kHidden, owned),
         Filled(kQkv, owned),
         Filled(kHidden, owned),
         Filled(kHidden, owned),
         Filled(kCacheSlots * kKvHeads * kHeadDim, owned),
         Filled(kCacheSlots * kKvHeads * kHeadDim, owned)};
    if (l.v_cache == nullptr) return 1;
  }
  void* attention = Filled(kAttention, owned);
  void* residual[2] = {Filled(kHidden, owned), Filled(kHidden, owned)};
  void* after_attention = Filled(kHidden, owned);
  void* o_out = Filled(kHidden, owned);
  void* gate_up_out = Filled(2 * kIntermediate, owned);
  void* act = Filled(kIntermediate, owned);
  void* mlp_out = Filled(kHidden, owned);
  void* qkv_out = Filled(kQkv, owned);
  int64_t *positions = nullptr, *slot = nullptr, *timeline = nullptr;
  float* inv_freq = nullptr;
  unsigned* barriers = nullptr;
  const size_t barrier_bytes = sizeof(unsigned) * static_cast<size_t>(layers);
  const int64_t exchange_words = glmserve::kernels::OneRowLayerChainExchangeWords(kHidden, kIntermediate);
  const size_t exchange_bytes = 8 * static_cast<size_t>(exchange_words) * static_cast<size_t>(layers);
  int64_t* exchange = nullptr;
  int device = 0, sms = 0, clock_khz = 0;
  const std::vector<int64_t> host_index = {7};
  std::vector<float> host_freq(kHeadDim / 4);
  for (size_t j = 0; j < host_freq.size(); ++j) host_freq[j] = 1.0f / (1.0f + static_cast<float>(j));
  if (act == nullptr || qkv_out == nullptr || !Ok(cudaMalloc(&positions, 8), "cudaMalloc") ||
      !Ok(cudaMalloc(&slot, 8), "cudaMalloc") || !Ok(cudaMalloc(&inv_freq, host_freq.size() * 4), "cudaMalloc") ||
      !Ok(cudaMalloc(&barriers, barrier_bytes), "cudaMalloc") ||
      !Ok(cudaMalloc(&exchange, exchange_bytes), "cudaMalloc") ||
      !Ok(cudaMemcpy(positions, host_index.data(), 8, cudaMemcpyHostToDevice), "cudaMemcpy") ||
      !Ok(cudaMemcpy(slot, host_index.data(), 8, cudaMemcpyHostToDevice), "cudaMemcpy") ||
      !Ok(cudaMemcpy(inv_freq, host_freq.data(), host_freq.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy") ||
      !Ok(cudaGetDevice(&device), "cudaGetDevice") ||
      !Ok(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "attribute") ||
      !Ok(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, device), "attribute") ||
      !Ok(cudaMalloc(&timeline, 8 * static_cast<size_t>(sms) * glmserve::kernels::kChainTimelineMarks), "cudaMalloc")) {
    return 1;
  }
  auto rotary_of = [&](const LayerWeights& l) {
    glmserve::kernels::GemvRotaryKvArgs r;
    r.positions = positions;
    r.inv_freq = inv_freq;
    r.slot = slot;
    r.k_cache = l.k_cache;
    r.v_cache = l.v_cache;
    r.shape.tokens = 1;
    r.shape.num_heads = kHeads;
    r.shape.num_kv_heads = kKvHeads;
    r.shape.head_dim = kHeadDim;
    r.shape.rotary_dim = kHeadDim / 2;
    r.shape.qkv_row_stride = kQkv;
    return r;
  };
  const ElementType bf16 = ElementType::kBFloat16;
  int32_t meeting = glmserve::kernels::kChainMeetTaggedWords;  // the chain's, in the pass being timed
  // One pass over the layers, the chain's way (ring > -1) or the kernels one by one.
  auto pass = [&](int32_t ring, bool with_timeline) -> bool {
    if (!Ok(cudaMemsetAsync(barriers, 0, barrier_bytes), "cudaMemsetAsync") ||
        !Ok(cudaMemsetAsync(exchange, 0, exchange_bytes), "cudaMemsetAsync")) {
      return false;
    }
    for (int32_t l = 0; l < layers; ++l) {
      const LayerWeights& layer = w[l];
      const LayerWeights& next = w[(l + 1) % layers];
      const glmserve::kernels::GemvRotaryKvArgs rotary = rotary_of(next);
      if (ring >= 0) {
        glmserve::kernels::OneRowLayerChainArgs a;
        a.hidden = kHidden;
        a.attention_width = kAttention;
        a.intermediate = kIntermediate;
        a.eps = kEps;
        a.attention = attention;
        a.residual = residual[l % 2];
        a.o_weight = layer.o;
        a.mlp_norm = layer.mlp_norm;
        a.gate_up_weight = layer.gate_up;
        a.down_weight = layer.down;
        a.next_input_norm = next.input_norm;
        a.qkv_weight = next.qkv;
        a.qkv_bias = next.qkv_bias;
        a.qkv_width = kQkv;
        a.next_o_weight = prefetch_next ? next.o : nullptr;
        a.rotary = rotary;
        a.residual_out = residual[(l + 1) % 2];
        a.mlp_out = mlp_out;
        a.qkv_out = qkv_out;
        a.o_out = o_out;
        a.act = act;
        a.barrier = barriers + l;
        a.ring_slots = ring;
        a.meeting = meeting;
        a.exchange = exchange + l * exchange_words;
        a.timeline = with_timeline && l == timeline_layer ? timeline : nullptr;
        if (!glmserve::kernels::OneRowLayerChainCuda(a, bf16, nullptr)) {
          std::fprintf(stderr, "layer_chain_bench: the chain refused (ring slots %d)\n", ring);
          return false;
        }
        continue;
      }
      if (!glmserve::kernels::GemvCuda(attention, layer.o, nullptr, o_out, 1, kHidden, kAttention, bf16, nullptr) ||
          !glmserve::kernels::GemvAddRmsNormCuda(o_out, nullptr, residual[l % 2], after_attention, layer.mlp_norm, kEps,
                                                 layer.gate_up, nullptr, gate_up_out, 2 * kIntermediate, kHidden, false,
                                                 nullptr, bf16, nullptr) ||
          !glmserve::kernels::SwiGluCuda(gate_up_out, act, 1, kIntermediate, bf16, nullptr) ||
          !glmserve::kernels::GemvCuda(act, layer.down, nullptr, mlp_out, 1, kHidden, kIntermediate, bf16, nullptr) ||
          !glmserve::kernels::GemvAddRmsNormCuda(mlp_out, nullptr, after_attention, residual[(l + 1) % 2],
                                                 next.input_norm, kEps, next.qkv, next.qkv_bias, qkv_out, kQkv, kHidden,
                                                 false, &rotary, bf16, nullptr)) {
        std::fprintf(stderr, "layer_chain_bench: a kernel refused\n");
        return false;
      }
    }
    return true;
  };
  const double layer_bytes = 2.0 * (kHidden * kAttention + 3 * kIntermediate * kHidden + kQkv * kHidden);
  cudaEvent_t begin, end;
  if (!Ok(cudaEventCreate(&begin), "cudaEventCreate") || !Ok(cudaEventCreate(&end), "cudaEventCreate")) return 1;
  auto time_pass = [&](int32_t ring) -> double {
    if (!pass(ring, false) || !Ok(cudaDeviceSynchronize(), "warm-up")) return -1.0;  // warm-up
    float total_ms = 0.0f;
    for (int32_t i = 0; i < iterations; ++i) {
      float ms = 0.0f;
      if (!Ok(cudaEventRecord(begin), "cudaEventRecord") || !pass(ring, false) ||
          !Ok(cudaEventRecord(end), "cudaEventRecord") || !Ok(cudaEventSynchronize(end), "run") ||
          !Ok(cudaEventElapsedTime(&ms, begin, end), "cudaEventElapsedTime")) {
        return -1.0;
      }
      total_ms += ms;
    }
    return 1000.0 * total_ms / iterations / layers;
  };
  std::printf("layer_chain_bench: GLM-4-9B layer shapes, bf16, %d layers, %.1f MB of weights a layer, %d SMs\n\n",
              layers, layer_bytes / 1e6, sms);
  std::printf(
      "| kernels | ring slots | meetings | us / layer | weight GB/s |\n"
      "|---|---:|---|---:|---:|\n");
  const double one_by_one = time_pass(-1);
  if (one_by_one < 0) return 1;
  std::printf("| one by one (GEMV, SwiGLU, GEMV + norm + rotary) | - | - | %.1f | %.0f |\n", one_by_one,
              layer_bytes / one_by_one / 1e3);
  for (const int32_t ring : ring_slots) {
    const char* forms[] = {"release, relaxed polls", "release, acquire polls", "whole fences", "tagged words"};
    for (const int32_t form : {2, 1, 0, 3}) {
      meeting = form;
      const double us = time_pass(ring);
      if (us < 0) return 1;
      std::printf("| layer chain | %s | %s | %.1f | %.0f |\n", ring == 0 ? "most" : std::to_string(ring).c_str(),
                  forms[form], us, layer_bytes / us / 1e3);
    }
  }
  // One more pass with the timeline of one layer, at the first ring size, with the default meetings.
  constexpr int kMarks = glmserve::kernels::kChainTimelineMarks;
  if (!Ok(cudaMemset(timeline, 0, 8 * static_cast<size_t>(sms) * kMarks), "cudaMemset") ||
      !pass(ring_slots.front(), true) || !Ok(cudaDeviceSynchronize(), "timeline pass")) {
    return 1;
  }
  std::vector<int64_t> marks(static_cast<size_t>(sms) * kMarks);
  if (!Ok(cudaMemcpy(marks.data(), timeline, marks.size() * 8, cudaMemcpyDeviceToHost), "cudaMemcpy")) return 1;
  int64_t t0 = INT64_MAX;
  for (int b = 0; b < sms; ++b) t0 = std::min(t0, marks[b * kMarks]);
  using namespace glmserve::kernels;  // the marks' names
  const std::pair<int, const char*> stages[] = {
      {kChainMarkStart, "block start"},
      {kChainMarkInputs, "inputs ready"},
      {kChainMarkArrived, "arrived at the meeting after o"},
      {kChainMarkReleased, "its arrival made (after the release)"},
      {kChainMarkMet, "met after o"},
      {kChainMarkArrived + 1, "arrived at the meeting after gate_up"},
      {kChainMarkReleased + 1, "its arrival made"},
      {kChainMarkMet + 1, "met after gate_up"},
      {kChainMarkArrived + 2, "arrived at the meeting after down"},
      {kChainMarkReleased + 2, "its arrival made"},
      {kChainMarkMet + 2, "met after down"},
      {kChainMarkConsumed, "consumers done"},
      {kChainMarkIssued, "producer issued all"},
  };
  std::printf(
      "\nlayer %d's chain, ring slots %d, tagged words: microseconds after the first block started (min "
      "/ mean / max over "
      "blocks)\n\n",
      timeline_layer, ring_slots.front());
  std::printf("| stage | min | mean | max |\n|---|---:|---:|---:|\n");
  for (const auto& [m, name] : stages) {
    if (marks[m] == 0) continue;  // a stage this form of the meetings does not have
    double sum = 0.0, least = 1e30, most = 0.0;
    for (int b = 0; b < sms; ++b) {
      const double at = (marks[b * kMarks + m] - t0) / 1e3;
      sum += at;
      least = std::min(least, at);
      most = std::max(most, at);
    }
    std::printf("| %s | %.1f | %.1f | %.1f |\n", name, least, sum / sms, most);
  }
  const char* waits[] = {"producer waiting for free slots", "consumer warp 0 waiting for rows",
                         "thread 0 in the meetings"};
  for (int m = 0; m < 3; ++m) {
    double sum = 0.0, most = 0.0;
    for (int b = 0; b < sms; ++b) {
      const double us = marks[b * kMarks + glmserve::kernels::kChainMarkProducerWait + m] / (clock_khz / 1e3);
      sum += us;
      most = std::max(most, us);
    }
    std::printf("| %s (us, at %d MHz) | - | %.1f | %.1f |\n", waits[m], clock_khz / 1000, sum / sms, most);
  }
  for (void* p : owned) cudaFree(p);
  return 0;
}
