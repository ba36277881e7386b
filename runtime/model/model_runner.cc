#include "runtime/model_runner.h"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/util/Exception.h>
#ifdef GLMSERVE_TORCH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <new>
#include <optional>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/checkpoint/checkpoint_plan.h"
#include "runtime/checkpoint/checkpoint_tensors.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/checkpoint/weight_map.h"
#include "runtime/inspect.h"
#include "runtime/model/env_switches.h"
#include "runtime/model/glm_model.h"
#include "runtime/model/model_forward.h"
#include "runtime/model/profiling.h"
#include "runtime/model/sampler.h"
#include "runtime/status_macros.h"

#ifdef GLMSERVE_TORCH_CUDA
#include "kernels/sampling.h"
#endif

namespace glmserve {
namespace {

// Runs `body`, turning LibTorch exceptions into statuses: out of memory (c10::OutOfMemoryError,
// std::bad_alloc, or an error whose message says so) -> RESOURCE_EXHAUSTED, the rest INTERNAL.
// A body that returns an absl::Status has it returned as is, code included.
template <typename Body>
absl::Status GuardTorch(const char* what, Body&& body) {
  try {
    if constexpr (std::is_same_v<decltype(body()), absl::Status>) {
      return body();
    } else {
      body();
      return absl::OkStatus();
    }
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    // Allocation failures that LibTorch reports as plain errors (a kernel launch or cuBLAS
    // workspace that could not get memory) are out-of-memory too: the retry may fit.
    const std::string message = e.what_without_backtrace();
    if (message.find("out of memory") != std::string::npos ||
        message.find("CUBLAS_STATUS_ALLOC_FAILED") != std::string::npos ||
        message.find("can't allocate memory") != std::string::npos) {  // the CPU allocator's
      return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory: ", message));
    }
    return absl::InternalError(absl::StrCat(what, ": ", message));
  } catch (const std::bad_alloc& e) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory: ", e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
}

absl::StatusOr<at::Device> ParseDevice(const std::string& device) {
  if (device == "cpu") return at::Device(at::kCPU);
  if (device.rfind("cuda", 0) == 0) {
#ifdef GLMSERVE_TORCH_CUDA
    int index = 0;
    if (device.size() > 5 && device[4] == ':') index = std::atoi(device.c_str() + 5);
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
#else
    return absl::FailedPreconditionError(absl::StrCat(
        "--device '", device, "': this build of glmserve has no CUDA support (build against a CUDA LibTorch)"));
#endif
  }
  return absl::InvalidArgumentError(absl::StrCat("--device '", device, "': expected \"cpu\" or \"cuda[:N]\""));
}

absl::StatusOr<at::ScalarType> ParseDtype(const std::string& dtype, const at::Device& device) {
  if (dtype.empty()) return device.is_cpu() ? at::kFloat : at::kBFloat16;
  if (dtype == "float32") return at::kFloat;
  if (dtype == "bfloat16") return at::kBFloat16;
  if (dtype == "float16") return at::kHalf;
  return absl::InvalidArgumentError(absl::StrCat("--dtype '", dtype, "': expected float32, bfloat16 or float16"));
}

const char* DtypeName(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "float32";
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    default:
      return "unknown";
  }
}

#ifdef GLMSERVE_TORCH_CUDA
// Allocates tensors of 1 GiB down to 2 MiB (the large pool's sizes) until none fits under the
// allocator's cap (set to what it holds), so the free space inside held segments is in use; they
// stay allocated for the life of the process. Returns their bytes. Test hook only
// (GLMSERVE_CUDA_MEMORY_HEADROOM_MB).
int64_t FillHeldSegments(const at::Device& device) {
  static std::vector<at::Tensor>* ballast = new std::vector<at::Tensor>();
  int64_t taken = 0;
  for (int64_t bytes = int64_t{1} << 30; bytes >= int64_t{2} << 20;) {
    try {
      ballast->push_back(at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(device)));
      taken += bytes;
    } catch (const c10::OutOfMemoryError&) {
      bytes /= 2;
    }
  }
  return taken;
}
#endif

// Gives the CUDA caching allocator's unused blocks back to the device, so a retry after an
// out-of-memory (with a smaller batch) can get them. No-op on CPU and in CPU-only builds.
void EmptyDeviceCache(const at::Device& device) {
#ifdef GLMSERVE_TORCH_CUDA
  if (device.is_cuda()) {
    try {
      at::getDeviceAllocator(at::kCUDA)->emptyCache();
    } catch (const std::exception&) {
      // Best effort: the caller reports the original error either way.
    }
  }
#else
  (void)device;
#endif
}

// To the executor's log callback (ExecutorOptions::log), stderr without one.
void LogLine(const std::function<void(const std::string&)>& log, const std::string& line) {
  if (log) {
    log(line);
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

// Test hook for the chaos suite on a GPU, off unless GLMSERVE_CUDA_MEMORY_HEADROOM_MB=N is set:
// caps the caching allocator at what it holds now (weights, KV pool, graphs, the start-up's
// cuDNN plans) plus N MiB, so large steps run out of device memory for real through a running
// server (the engine's OOM path: RESOURCE_EXHAUSTED, smaller batch, retry). What it holds, not
// what is in use: graph pools are held but not in use, and a cap below them leaves no room for
// any step. Free space left inside held segments (over a GiB on an H200 once graphs are
// captured) would add to N and let the storm's steps fit, so it is first taken by ballast
// tensors held for the process's life. Applied after the executor's first step (the server's
// warm-up request), not at its creation: that step still allocates (cuDNN's prefill plans, a
// mixed graph), and under a cap set before it those allocations took the headroom or failed,
// so a lone storm request could not fit either, depending on the start's memory layout.
void CapDeviceMemoryForChaos(const at::Device& device, const std::function<void(const std::string&)>& log) {
#ifdef GLMSERVE_TORCH_CUDA
  if (std::getenv("GLMSERVE_CUDA_MEMORY_HEADROOM_MB") == nullptr || !device.is_cuda()) return;
  const int64_t headroom_mb = EnvInt("GLMSERVE_CUDA_MEMORY_HEADROOM_MB", 0, 0, int64_t{1} << 20);
  const absl::Status status = GuardTorch("capping device memory (GLMSERVE_CUDA_MEMORY_HEADROOM_MB)", [&] {
    EmptyDeviceCache(device);
    const int64_t reserved = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index()).reserved_bytes[0].current;
    const int64_t total_bytes = std::get<1>(at::getDeviceAllocator(at::kCUDA)->getMemoryInfo(device.index()));
    auto cap_at = [&](int64_t bytes) {
      c10::cuda::CUDACachingAllocator::setMemoryFraction(
          std::min(1.0, static_cast<double>(bytes) / static_cast<double>(total_bytes)), device.index());
    };
    cap_at(reserved);
    const int64_t ballast = FillHeldSegments(device);
    const int64_t cap = reserved + (headroom_mb << 20);
    cap_at(cap);
    LogLine(log, absl::StrCat("GLMSERVE_CUDA_MEMORY_HEADROOM_MB: device memory capped at ", cap >> 20, " MiB (",
                              reserved >> 20, " MiB held after the first step + ", headroom_mb, " MiB; ", ballast >> 20,
                              " MiB free inside held segments taken by ballast)"));
  });
  if (!status.ok()) LogLine(log, status.ToString());
#else
  (void)device;
  (void)log;
#endif
}

// Where a sampled row's next id is chosen when the logits are on a GPU. Rows whose logits change
// before the draw (penalties, stop ids masked before min_new_tokens) are sampled on the device too:
// kernels/sampling.h's ApplyPenalties changes an fp32 copy of the row exactly as the host sampler
// would, then SampleRows draws (or takes the argmax); only rows it leaves undecided (-1) bring
// their raw logits to the host, where SampleNextToken does everything itself.
enum class RowPath { kDeviceArgmax, kDeviceSample, kHost };

// The row's penalties need the sequence's token counts (the host sampler ignores them without a
// history).
bool CountsTokens(const SequenceStep& step) { return step.params->sampling.has_penalties() && step.history != nullptr; }

// Penalties or stop masking change the row's logits before the draw.
bool ChangesLogits(const SequenceStep& step) {
  return CountsTokens(step) || step.num_generated < step.params->min_new_tokens;
}

#ifdef GLMSERVE_TORCH_CUDA
// GLMSERVE_CUDA_DEVICE_SAMPLING=0 sends every row but plain greedy ones (temperature > 0,
// penalties, stop masking) to the host sampler (diagnosis). Read once.
bool DeviceSamplingEnabled() {
  static const bool enabled = [] { return !EnvIs("GLMSERVE_CUDA_DEVICE_SAMPLING", "0"); }();
  return enabled;
}
#endif

RowPath ChooseRowPath(const SequenceStep& step) {
  if (!ChangesLogits(step) && step.params->sampling.temperature <= 0.0f) return RowPath::kDeviceArgmax;
#ifdef GLMSERVE_TORCH_CUDA
  if (DeviceSamplingEnabled()) return RowPath::kDeviceSample;
#endif
  return RowPath::kHost;
}

// `device` in page-locked host memory, waiting for the stream: a pageable copy (`.cpu()`) goes
// through the driver's own staging buffer, a few microseconds more on every step.
at::Tensor CopyToPinnedHost(const at::Tensor& device) {
#ifdef GLMSERVE_TORCH_CUDA
  if (device.is_cuda()) {
    at::Tensor host = at::empty(device.sizes(), device.options().device(at::kCPU).pinned_memory(true));
    host.copy_(device, /*non_blocking=*/true);
    at::cuda::getCurrentCUDAStream(device.device().index()).synchronize();
    return host;
  }
#endif
  return device.cpu();
}

#ifdef GLMSERVE_TORCH_CUDA
// `bytes` of host data on the device without waiting for the device (a pageable copy would wait
// for the forward pass still running on the stream): staged in pinned memory, which the caching
// host allocator keeps until the copy has run, and copied on the current stream. uint8 [bytes].
at::Tensor UploadBytes(const void* data, size_t bytes, const at::Device& device) {
  at::Tensor staging =
      at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  if (bytes > 0) std::memcpy(staging.data_ptr(), data, bytes);
  return staging.to(at::TensorOptions().device(device).dtype(at::kByte), /*non_blocking=*/true);
}

// Generated ids the penalties count: the last min(num_generated, history size) of the history.
int64_t GeneratedCount(const SequenceStep& step) {
  return std::min<int64_t>(std::max(step.num_generated, 0), static_cast<int64_t>(step.history->size()));
}

// The penalties' per-sequence token tables on the device (kernels/sampling.h): counts [slots,
// vocab] int32 (generated ids) and seen [slots, vocab] uint8 (prompt and generated ids), one slot
// per sequence. Allocated on the first penalised row, grown (doubling) when one step has more
// penalised rows than slots; a sequence new to the tables takes a free slot or the least recently
// used one not in this step. A slot is trusted only when it has counted exactly the history the
// step brings (same sequence, history length, generated count and last id): otherwise (new
// sequence, preemption and recompute, a draw the host made, a failed step) it is rebuilt from
// SequenceStep::history, one upload and a scatter on the device. After the draw CountTokensCuda
// counts the drawn ids on the device, with no host synchronisation.
class PenaltyTables {
 public:
  int32_t* counts() { return counts_.data_ptr<int32_t>(); }
  uint8_t* seen() { return seen_.data_ptr<uint8_t>(); }

  // A slot for each of `steps` (rows with penalties, history non-null), ready for this step:
  // stale slots are rebuilt on the current stream. Throws on a CUDA error (GuardTorch's INTERNAL).
  // Overlapped steps: a history may end in kTokenFromPreviousStep, the id a launched step is still
  // drawing; a slot that counted that step's draw is trusted (Launched), one rebuilt takes the id
  // from `previous_id` (which waits for it).
  std::vector<int32_t> Prepare(const std::vector<const SequenceStep*>& steps, int64_t vocab, const at::Device& device,
                               const std::function<int32_t(int64_t)>* previous_id) {
    const c10::cuda::CUDAGuard device_guard(device);  // the raw kernel launch goes to the current device
    ++clock_;
    if (!counts_.defined() || vocab != vocab_ || counts_.device() != device) {
      counts_ = at::Tensor();
      seen_ = at::Tensor();
      slots_.clear();
      slot_of_.clear();
      vocab_ = vocab;
    }
    if (slots_.size() < steps.size()) Grow(std::max<size_t>({steps.size(), 2 * slots_.size(), 16}), device);
    std::vector<int32_t> result;
    std::vector<int64_t> cleared;
    std::vector<int32_t> entry_slots, entry_ids;
    std::vector<uint8_t> entry_counted;
    for (const SequenceStep* s : steps) {
      int32_t slot = -1;
      auto it = slot_of_.find(s->sequence_id);
      if (it != slot_of_.end()) {
        slot = it->second;
      } else {
        slot = LeastRecentlyUsed();
        if (slots_[slot].sequence_id >= 0) slot_of_.erase(slots_[slot].sequence_id);
        slots_[slot] = Slot{};
        slots_[slot].sequence_id = s->sequence_id;
        slot_of_[s->sequence_id] = slot;
      }
      Slot& state = slots_[slot];
      state.last_used = clock_;
      const std::vector<int32_t>& history = *s->history;
      const int64_t length = static_cast<int64_t>(history.size());
      const int64_t generated = GeneratedCount(*s);
      const int32_t last_id = history.empty() ? -1 : history.back();
      if (state.length != length || state.generated != generated || state.last_id != last_id) {
        cleared.push_back(slot);
        for (int64_t i = 0; i < length; ++i) {
          int32_t id = history[i];
          if (id == kTokenFromPreviousStep && i == length - 1) {
            id = previous_id != nullptr ? (*previous_id)(s->sequence_id) : -1;
            if (id < 0) throw std::runtime_error("penalty tables: a history ends in an id no step sampled");
          }
          entry_slots.push_back(slot);
          entry_ids.push_back(id);
          entry_counted.push_back(i >= length - generated ? 1 : 0);
        }
        state.length = length;  // InvalidateAll undoes this if the rebuild below throws
        state.generated = generated;
        state.last_id = last_id;
      }
      result.push_back(slot);
    }
    if (!cleared.empty()) {
      const at::Tensor rows = UploadBytes(cleared.data(), cleared.size() * sizeof(int64_t), device).view(at::kLong);
      counts_.index_fill_(0, rows, 0);
      seen_.index_fill_(0, rows, 0);
      const size_t n = entry_ids.size();
      if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max() / 16)) {
        throw std::runtime_error("penalty tables: history too long to upload");
      }
      if (n > 0) {
        std::vector<uint8_t> packed(n * (2 * sizeof(int32_t) + 1));
        std::memcpy(packed.data(), entry_slots.data(), n * sizeof(int32_t));
        std::memcpy(packed.data() + n * sizeof(int32_t), entry_ids.data(), n * sizeof(int32_t));
        std::memcpy(packed.data() + 2 * n * sizeof(int32_t), entry_counted.data(), n);
        const at::Tensor uploaded = UploadBytes(packed.data(), packed.size(), device);
        const uint8_t* base = uploaded.data_ptr<uint8_t>();
        if (!kernels::CountTokensCuda(
                counts(), seen(), static_cast<int32_t>(vocab_), reinterpret_cast<const int32_t*>(base),
                reinterpret_cast<const int32_t*>(base + n * sizeof(int32_t)), base + 2 * n * sizeof(int32_t),
                static_cast<int32_t>(n), at::cuda::getCurrentCUDAStream(device.index()).stream())) {
          throw std::runtime_error("penalty tables: CountTokensCuda failed to launch");
        }
      }
    }
    return result;
  }

  // After the draw: drawn[k] is the id the device drew and counted for steps[k], or -1 (the host
  // draws it; that slot is rebuilt next time).
  void Committed(const std::vector<const SequenceStep*>& steps, const std::vector<int32_t>& slots,
                 const std::vector<int32_t>& drawn) {
    for (size_t k = 0; k < steps.size(); ++k) {
      Slot& state = slots_[slots[k]];
      if (drawn[k] >= 0) {
        ++state.length;
        ++state.generated;
        state.last_id = drawn[k];  // the engine must append exactly this id
      } else {
        state.length = -1;
      }
    }
  }

  // Overlapped steps: the device drew and, where `counted`, counted the ids of `steps` in a step
  // whose ids reach the host later. A counted slot takes the draw as its history's next entry, not
  // known yet (kTokenFromPreviousStep, as the engine's history ends while the id is in flight).
  // Returns each slot's length with it (-1: the slot is stale), for Collected.
  std::vector<int64_t> Launched(const std::vector<const SequenceStep*>& steps, const std::vector<int32_t>& slots,
                                bool counted) {
    std::vector<int64_t> lengths;
    for (size_t k = 0; k < steps.size(); ++k) {
      Slot& state = slots_[slots[k]];
      if (counted) {
        ++state.length;
        ++state.generated;
        state.last_id = kTokenFromPreviousStep;
        lengths.push_back(state.length);
      } else {
        state.length = -1;
        lengths.push_back(-1);
      }
    }
    return lengths;
  }

  // The ids of a step launched with Launched reached the host: a slot whose last entry is still
  // that step's draw takes the id (the engine's history now holds it). One a later launch counted
  // past keeps kTokenFromPreviousStep, as the history does.
  void Collected(const std::vector<int64_t>& sequence_ids, const std::vector<int32_t>& slots,
                 const std::vector<int64_t>& lengths, const std::vector<int32_t>& ids) {
    for (size_t k = 0; k < slots.size(); ++k) {
      Slot& state = slots_[slots[k]];
      if (state.sequence_id == sequence_ids[k] && lengths[k] >= 0 && state.length == lengths[k] &&
          state.last_id == kTokenFromPreviousStep) {
        state.last_id = ids[k];
      }
    }
  }

  // A step failed after the tables could have changed: nothing they hold is trusted.
  void InvalidateAll() {
    for (Slot& state : slots_) state.length = -1;
  }

 private:
  struct Slot {
    int64_t sequence_id = -1;
    int64_t length = -1;  // history ids counted; -1: stale
    int64_t generated = -1;
    int32_t last_id = -1;  // the history's last id (the id drawn last)
    uint64_t last_used = 0;
  };

  void Grow(size_t capacity, const at::Device& device) {
    const at::TensorOptions options = at::TensorOptions().device(device);
    at::Tensor counts = at::zeros({static_cast<int64_t>(capacity), vocab_}, options.dtype(at::kInt));
    at::Tensor seen = at::zeros({static_cast<int64_t>(capacity), vocab_}, options.dtype(at::kByte));
    if (counts_.defined()) {
      counts.narrow(0, 0, counts_.size(0)).copy_(counts_);
      seen.narrow(0, 0, seen_.size(0)).copy_(seen_);
    }
    counts_ = counts;
    seen_ = seen;
    slots_.resize(capacity);
  }

  // A slot not used in this step: a free one, else the least recently used.
  int32_t LeastRecentlyUsed() const {
    int32_t best = -1;
    for (size_t i = 0; i < slots_.size(); ++i) {
      const Slot& state = slots_[i];
      if (state.last_used == clock_) continue;
      if (state.sequence_id < 0) return static_cast<int32_t>(i);
      if (best < 0 || state.last_used < slots_[best].last_used) best = static_cast<int32_t>(i);
    }
    return best;  // >= 0: there are at least as many slots as rows in the step
  }

  at::Tensor counts_, seen_;
  int64_t vocab_ = 0;
  std::vector<Slot> slots_;
  std::unordered_map<int64_t, int32_t> slot_of_;  // sequence id -> slot
  uint64_t clock_ = 0;
};

struct DeviceDraw {
  at::Tensor ids;        // [rows] int32 on the device, -1 where the host decides; undefined: all
  bool counted = false;  // the drawn ids were counted into the penalty tables
};

// Over `rows` of the [samples, vocab] CUDA logits: an fp32 copy of those rows (only they convert),
// the penalties and stop masking in place when `penalties` is non-null (kernels/sampling.h
// ApplyPenaltiesCuda; `stop_ids` holds the rows' stop ranges; counts/seen the tables, null when no
// row has a slot), the device sampler (temperature <= 0: the first argmax), and, when `counts` is
// non-null, the drawn ids counted into the rows' slots. ids undefined when a kernel could not be
// launched: the caller then samples those rows on the host.
DeviceDraw SampleRowsOnDevice(const at::Tensor& device_logits, const std::vector<int64_t>& rows,
                              const std::vector<kernels::SamplingRow>& params,
                              const std::vector<kernels::PenaltyRow>* penalties, const std::vector<int32_t>& stop_ids,
                              int32_t* counts, uint8_t* seen) {
  DeviceDraw draw;
  if (rows.empty() || rows.size() > 65535 || device_logits.size(1) > std::numeric_limits<int32_t>::max()) return draw;
  const c10::cuda::CUDAGuard device_guard(device_logits.device());
  at::Tensor logits = device_logits;
  if (static_cast<int64_t>(rows.size()) != logits.size(0)) {
    logits = logits.index_select(
        0, UploadBytes(rows.data(), rows.size() * sizeof(int64_t), logits.device()).view(at::kLong));
  }
  logits = logits.to(at::kFloat).contiguous();  // the sampler reads fp32; only the sampled rows convert
  // The penalties write in place: never into the forward's own logits (fp32 model, every row).
  if (penalties != nullptr && logits.data_ptr() == device_logits.data_ptr()) logits = logits.clone();
  // One upload: sampling rows, penalty rows, stop ids, the rows' slots.
  const size_t n = rows.size();
  const size_t penalty_offset = n * sizeof(kernels::SamplingRow);
  const size_t stops_offset = penalty_offset + (penalties != nullptr ? n * sizeof(kernels::PenaltyRow) : 0);
  const size_t slots_offset = stops_offset + stop_ids.size() * sizeof(int32_t);
  const size_t total = slots_offset + (counts != nullptr ? n * sizeof(int32_t) : 0);
  static_assert(sizeof(kernels::SamplingRow) % alignof(kernels::PenaltyRow) == 0, "packed upload alignment");
  static_assert(sizeof(kernels::PenaltyRow) % alignof(int32_t) == 0, "packed upload alignment");
  std::vector<uint8_t> packed(total);
  std::memcpy(packed.data(), params.data(), n * sizeof(kernels::SamplingRow));
  if (penalties != nullptr) {
    std::memcpy(packed.data() + penalty_offset, penalties->data(), n * sizeof(kernels::PenaltyRow));
    if (!stop_ids.empty()) {
      std::memcpy(packed.data() + stops_offset, stop_ids.data(), stop_ids.size() * sizeof(int32_t));
    }
    if (counts != nullptr) {
      int32_t* slots = reinterpret_cast<int32_t*>(packed.data() + slots_offset);
      for (size_t k = 0; k < n; ++k) {
        const int32_t slot = (*penalties)[k].slot;
        std::memcpy(slots + k, &slot, sizeof(int32_t));
      }
    }
  }
  const at::Tensor uploaded = UploadBytes(packed.data(), total, logits.device());
  const uint8_t* base = uploaded.data_ptr<uint8_t>();
  const int32_t num_rows = static_cast<int32_t>(n);
  const int32_t vocab = static_cast<int32_t>(logits.size(1));
  void* stream = at::cuda::getCurrentCUDAStream(logits.device().index()).stream();
  if (penalties != nullptr &&
      !kernels::ApplyPenaltiesCuda(logits.data_ptr<float>(), num_rows, vocab,
                                   reinterpret_cast<const kernels::PenaltyRow*>(base + penalty_offset), counts, seen,
                                   stop_ids.empty() ? nullptr : reinterpret_cast<const int32_t*>(base + stops_offset),
                                   stream)) {
    return draw;
  }
  // All greedy (the usual penalised mix: temperature 0 with a frequency penalty): ATen's argmax
  // (the first maximum, as on the host; a NaN row gets the NaN's index, as plain greedy rows
  // always have) is several times faster than the sampler's one block a row. Otherwise the
  // sampler takes every row (temperature <= 0: the first argmax; a NaN row: -1, the host's).
  const bool all_greedy =
      std::all_of(params.begin(), params.end(), [](const kernels::SamplingRow& p) { return p.temperature <= 0.0f; });
  at::Tensor ids;
  if (all_greedy) {
    ids = logits.argmax(-1).to(at::kInt).contiguous();
  } else {
    ids = at::empty({static_cast<int64_t>(n)}, logits.options().dtype(at::kInt));
    if (!kernels::SampleRowsCuda(logits.data_ptr<float>(), num_rows, vocab,
                                 reinterpret_cast<const kernels::SamplingRow*>(base), ids.data_ptr<int32_t>(),
                                 stream)) {
      return draw;
    }
  }
  draw.ids = ids;
  if (counts != nullptr && penalties != nullptr) {
    draw.counted = kernels::CountTokensCuda(counts, seen, vocab, reinterpret_cast<const int32_t*>(base + slots_offset),
                                            ids.data_ptr<int32_t>(), nullptr, num_rows, stream);
  }
  return draw;
}
#endif

// Diagnosis of a running server (docs/operations.md, "Profiling a live server"): with
// GLMSERVE_PROFILE_TRACE=PATH set, steps [GLMSERVE_PROFILE_AFTER_STEPS (default 2000),
// + GLMSERVE_PROFILE_STEPS (default 64)) of the executor are recorded with the device profiler and
// written as one Chrome trace; each step is a user range named "glmserve step decode=D prefill=P"
// (rows fed one token / tokens of prefill chunks), so bench/summarize_trace.py --by-step can split
// GPU time by kind of step. A profile of the real traffic says where time goes that a decode-only
// benchmark never sees (prefill sharing steps with decodes, the host between steps).
struct StepProfile {
  std::string path;            // empty: off
  int64_t after_steps = 2000;  // steps run before recording starts
  int64_t steps = 64;          // steps recorded
  int64_t seen = 0;            // steps run so far
  bool recording = false;
  bool done = false;

  static StepProfile FromEnvironment() {
    StepProfile profile;
    if (const char* path = std::getenv("GLMSERVE_PROFILE_TRACE")) profile.path = path;
    profile.after_steps = EnvInt("GLMSERVE_PROFILE_AFTER_STEPS", profile.after_steps, 0, int64_t{1} << 40);
    profile.steps = EnvInt("GLMSERVE_PROFILE_STEPS", profile.steps, 1, int64_t{1} << 20);
    return profile;
  }
};

std::string StepRangeName(const std::vector<SequenceStep>& batch) {
  int64_t decode_rows = 0, prefill_tokens = 0;
  for (const SequenceStep& s : batch) {
    if (s.start_position > 0 && s.tokens.size() == 1 && s.sample) {
      ++decode_rows;
    } else {
      prefill_tokens += static_cast<int64_t>(s.tokens.size());
    }
  }
  return absl::StrCat("glmserve step decode=", decode_rows, " prefill=", prefill_tokens);
}

// A step's first and last piece of device work as the device's own timing events see them (a GPU;
// nothing on a CPU): StepResult::device_busy_us / device_idle_us.
struct StepTiming {
#ifdef GLMSERVE_TORCH_CUDA
  std::shared_ptr<at::cuda::CUDAEvent> start, end;
  static std::shared_ptr<at::cuda::CUDAEvent> Record(const at::Device& device) {
    auto event = std::make_shared<at::cuda::CUDAEvent>(cudaEventDefault);  // timed
    event->record(at::cuda::getCurrentCUDAStream(device.index()));
    return event;
  }
  void Start(const at::Device& device) {
    if (device.is_cuda()) start = Record(device);
  }
  void End(const at::Device& device) {
    if (device.is_cuda()) end = Record(device);
  }
#else
  void Start(const at::Device&) {}
  void End(const at::Device&) {}
#endif
};

// The engine's StepExecutor over GlmModel and a paged KV pool. The contract it honours is
// "What the executor may rely on" in runtime/engine/README.md: it never throws, returns one id
// per sequence (-1 where sample is false), and answers RESOURCE_EXHAUSTED only for an
// out-of-memory, after emptying the allocator cache, with nothing committed. (KV the failed
// forward may have written lands only in the failed positions' own slots, which the engine
// treats as not computed and rewrites on retry.) `params` and `history` are read only during
// Step and never kept.
class PagedExecutor final : public StepExecutor {
 public:
  PagedExecutor(std::unique_ptr<ModelForward> forward, KvPool pool, const ExecutorOptions& options)
      : model_(&forward->model()),
        forward_(std::move(forward)),
        pool_(std::move(pool)),
        inject_oom_above_sequences_(options.inject_oom_above_sequences),
        on_sampled_logits_(options.on_sampled_logits),
        log_(options.log),
        profile_(StepProfile::FromEnvironment()) {}
  int32_t block_size() const override { return pool_.block_size; }
  int32_t num_blocks() const override { return pool_.num_blocks; }
  void ReleaseSequence(int64_t sequence_id) override { forward_->ReleaseSequence(sequence_id); }

  absl::StatusOr<StepResult> Step(const std::vector<SequenceStep>& batch) override {
    absl::StatusOr<StepResult> result;
    if (!profile_.path.empty()) BeforeProfiledStep();
    try {
      std::optional<at::RecordFunction> range;  // the step's named range, only while recording
      if (profile_.recording) {
        range.emplace(at::RecordScope::USER_SCOPE);
        if (range->isActive()) range->before(StepRangeName(batch));
      }
      result = StepImpl(batch);
    } catch (const std::exception& e) {  // GuardTorch covers LibTorch; this covers the rest
      result = absl::InternalError(absl::StrCat("executor step: ", e.what()));
    }
#ifdef GLMSERVE_TORCH_CUDA
    // The device may have counted ids the engine never sees: rebuild every slot when next used.
    if (!result.ok()) penalty_tables_.InvalidateAll();
#endif
    if (profile_.recording) AfterProfiledStep();
    if (result.ok()) AfterStepDone();
    return result;
  }

  // Overlapped steps. On a GPU with device sampling a launched step is left running: its ids are
  // chosen on the device and copied to pinned memory behind an event, and rows of the next step
  // that continue its sequences take them on the device (PreviousStepIds): the host stages step
  // N+1 while the GPU runs step N. Elsewhere (the CPU, GLMSERVE_CUDA_DEVICE_SAMPLING=0,
  // on_sampled_logits) Launch runs the step to its ids, with the previous step's ids from the host.
  absl::Status Launch(const std::vector<SequenceStep>& batch) override {
    if (launched_.size() >= 2) {
      return absl::FailedPreconditionError("executor: Launch with two launched steps not collected");
    }
    const bool feeds = FeedsPreviousStepIds(batch);
    if (feeds && launched_.empty()) {
      return absl::InternalError("executor: a row feeds the previous step's id, but no step is launched");
    }
    PreviousStepIds previous;
    if (feeds) {
      LaunchedStep* before = &launched_.back();  // a deque's elements stay put while it grows
      if (!before->on_host) {
        previous.device_ids = before->device_ids;
        previous.row_of_sequence = &before->row_of_sequence;
      }
      previous.host_id = [this, before](int64_t sequence_id) { return HostIdOf(*before, sequence_id); };
    }
    absl::StatusOr<LaunchedStep> launched;
    if (!profile_.path.empty()) BeforeProfiledStep();
    try {
      std::optional<at::RecordFunction> range;
      if (profile_.recording) {
        range.emplace(at::RecordScope::USER_SCOPE);
        if (range->isActive()) range->before(StepRangeName(batch));
      }
      launched = LaunchImpl(batch, feeds ? &previous : nullptr);
    } catch (const std::exception& e) {
      launched = absl::InternalError(absl::StrCat("executor launch: ", e.what()));
    }
#ifdef GLMSERVE_TORCH_CUDA
    if (!launched.ok()) penalty_tables_.InvalidateAll();
#endif
    if (profile_.recording) AfterProfiledStep();
    if (!launched.ok()) return launched.status();
    launched_.push_back(*std::move(launched));
    return absl::OkStatus();
  }

  absl::StatusOr<StepResult> Collect() override {
    if (launched_.empty()) return absl::FailedPreconditionError("executor: Collect with no launched step");
    LaunchedStep step = std::move(launched_.front());
    launched_.pop_front();
    if (step.on_host) {
      AfterStepDone();
      return std::move(step.result);
    }
    StepResult result;
    device_wait_us_ = 0;
    absl::Status ready = GuardTorch("collect step", [&] { WaitForIds(step); });
#ifdef GLMSERVE_TORCH_CUDA
    if (!ready.ok()) penalty_tables_.InvalidateAll();
#endif
    if (!ready.ok()) return ready;
    TimeOnDevice(step.timing, &result);
    const int32_t vocab = model_->config().vocab_size;
    result.next_tokens.assign(step.sequence_ids.size(), -1);
    for (size_t i = 0, row = 0; i < step.sequence_ids.size(); ++i) {
      if (!step.sampled[i]) continue;
      const int32_t id = step.host_ids[row++];
      if (id < 0 || id >= vocab) {
        return absl::InternalError(absl::StrCat("device sampler returned id ", id, " for sequence ",
                                                step.sequence_ids[i], "; expected [0, ", vocab, ")"));
      }
      result.next_tokens[i] = id;
    }
#ifdef GLMSERVE_TORCH_CUDA
    if (!step.penalty_slots.empty()) {
      std::vector<int32_t> ids;
      for (int64_t row : step.penalty_rows) ids.push_back(step.host_ids[row]);
      penalty_tables_.Collected(step.penalty_sequences, step.penalty_slots, step.penalty_lengths, ids);
    }
#endif
    result.device_wait_us = device_wait_us_;
    AfterStepDone();
    return result;
  }

 private:
  void AfterStepDone() {
    if (!first_step_done_) CapDeviceMemoryForChaos(model_->device(), log_);
    first_step_done_ = true;
  }

  // A launched step not collected yet.
  struct LaunchedStep {
    std::vector<int64_t> sequence_ids;  // per batch entry
    std::vector<bool> sampled;          // per batch entry
    // Each sampled sequence's index among the step's sampled rows.
    std::unordered_map<int64_t, int64_t> row_of_sequence;
    // Run to its ids at launch (`result`), or left running: its ids on the device ([sampled rows]
    // int32, none negative) and, once `ready` has passed, in pinned host memory.
    bool on_host = false;
    StepResult result;
    at::Tensor device_ids;
    at::Tensor pinned_ids;
    std::vector<int32_t> host_ids;  // filled by WaitForIds
    bool ids_on_host = false;
    // Its start and end on the device (the end also marks its ids in pinned memory).
    StepTiming timing;
#ifdef GLMSERVE_TORCH_CUDA
    // The penalty slots the device counted this step's draws into (PenaltyTables::Launched).
    std::vector<int64_t> penalty_sequences, penalty_lengths, penalty_rows;
    std::vector<int32_t> penalty_slots;
#endif
  };

  // On a GPU with every sampled row chosen on the device, nothing of a step needs the host.
  bool CanLeaveRunning(const std::vector<SequenceStep>& batch) const {
#ifdef GLMSERVE_TORCH_CUDA
    if (!model_->device().is_cuda() || on_sampled_logits_ || !DeviceSamplingEnabled() || batch.size() > 65535) {
      return false;
    }
    return std::none_of(batch.begin(), batch.end(),
                        [](const SequenceStep& s) { return s.sample && ChooseRowPath(s) == RowPath::kHost; });
#else
    (void)batch;
    return false;
#endif
  }

  absl::StatusOr<LaunchedStep> LaunchImpl(const std::vector<SequenceStep>& batch, const PreviousStepIds* previous) {
    LaunchedStep step;
    for (const SequenceStep& s : batch) {
      step.sequence_ids.push_back(s.sequence_id);
      step.sampled.push_back(s.sample);
      if (s.sample) step.row_of_sequence.emplace(s.sequence_id, static_cast<int64_t>(step.row_of_sequence.size()));
    }
    if (!CanLeaveRunning(batch)) {
      step.on_host = true;
      absl::StatusOr<StepResult> result;
      if (previous != nullptr) {
        std::vector<std::unique_ptr<std::vector<int32_t>>> histories;
        absl::StatusOr<std::vector<SequenceStep>> resolved =
            ResolvePreviousStepIds(batch, previous->host_id, &histories);
        if (!resolved.ok()) return resolved.status();
        result = StepImpl(*resolved);
      } else {
        result = StepImpl(batch);
      }
      if (!result.ok()) return result.status();
      step.result = *std::move(result);
      for (size_t i = 0; i < batch.size(); ++i) {
        if (batch[i].sample) step.host_ids.push_back(step.result.next_tokens[i]);
      }
      step.ids_on_host = true;
      return step;
    }
#ifdef GLMSERVE_TORCH_CUDA
    GLM_RETURN_IF_ERROR(Validate(batch, /*previous_ids=*/previous != nullptr));
    const int64_t num_samples = static_cast<int64_t>(step.row_of_sequence.size());
    absl::Status forward = GuardTorch("forward step", [&] {
      step.timing.Start(model_->device());
      const at::Tensor device_logits = forward_->Forward(batch, pool_, previous);
      if (device_logits.dim() != 2 || device_logits.size(0) != num_samples) {
        throw std::runtime_error(absl::StrCat("forward step returned ", device_logits.dim(), "-d logits with ",
                                              device_logits.dim() > 0 ? device_logits.size(0) : 0, " rows; expected ",
                                              num_samples));
      }
      const std::function<int32_t(int64_t)>* previous_id = previous != nullptr ? &previous->host_id : nullptr;
      DeviceChoice choice = EnqueueDeviceChoice(batch, device_logits, previous_id);
      // Every row's id on the device: the argmax, or the sampler's draw. A row the sampler leaves
      // to the host (-1: NaN logits) takes id 0 here instead; a step left running has no host
      // logits to sample from, and the next step feeds the id before the host sees it.
      at::Tensor ids = choice.argmax_ids;
      if (choice.drawn_ids.defined()) {
        const at::Tensor drawn = choice.drawn_ids.clamp_min(0);
        if (!ids.defined() && static_cast<int64_t>(choice.sampled_rows.size()) == num_samples) {
          ids = drawn;
        } else {
          if (!ids.defined()) ids = at::zeros({num_samples}, drawn.options());
          const at::Tensor rows = UploadBytes(choice.sampled_rows.data(), choice.sampled_rows.size() * sizeof(int64_t),
                                              device_logits.device())
                                      .view(at::kLong);
          ids.index_copy_(0, rows, drawn);
        }
      } else if (!choice.sampled_rows.empty()) {
        throw std::runtime_error("the device sampler could not be launched for a step left running");
      }
      if (!ids.defined())
        ids = at::zeros({num_samples}, at::TensorOptions().dtype(at::kInt).device(device_logits.device()));
      if (inject_oom_above_sequences_ > 0 && static_cast<int32_t>(batch.size()) > inject_oom_above_sequences_) {
        TORCH_CHECK_WITH(OutOfMemoryError, false,
                         "injected OOM (ExecutorOptions.inject_oom_above_sequences=", inject_oom_above_sequences_,
                         "): batch of ", batch.size(), " sequences");
      }
      step.device_ids = ids;
      step.pinned_ids = at::empty({num_samples}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
      if (num_samples > 0) step.pinned_ids.copy_(ids, /*non_blocking=*/true);
      // The model's device, not the logits': a step that samples nothing may return empty host logits.
      step.timing.End(model_->device());  // after the ids' copy: it marks them ready too
      if (!choice.slots.empty()) {
        step.penalty_slots = choice.slots;
        step.penalty_lengths = penalty_tables_.Launched(choice.counted_steps, choice.slots, choice.counted);
        for (size_t k = 0; k < choice.counted_steps.size(); ++k) {
          step.penalty_sequences.push_back(choice.counted_steps[k]->sequence_id);
          step.penalty_rows.push_back(choice.sampled_rows[choice.counted_rows[k]]);
        }
      }
    });
    if (!forward.ok()) {
      if (absl::IsResourceExhausted(forward)) EmptyDeviceCache(model_->device());
      return forward;
    }
    return step;
#else
    (void)previous;
    return absl::InternalError("executor: a step left running needs a CUDA build");
#endif
  }

  // The device's timing of the steps finished so far into `result`: `timing`'s busy span and the
  // idle gap since the step timed before it, and those of earlier steps whose device work had not
  // finished when their results went back (a prefill chunk that samples nothing is not waited
  // for); steps finish in launch order on the one stream.
  void TimeOnDevice(StepTiming timing, StepResult* result) {
#ifdef GLMSERVE_TORCH_CUDA
    if (!timing.start || !timing.end) return;
    untimed_.push_back(std::move(timing));
    double busy = 0, idle = 0;
    bool timed = false, gap = false;
    try {  // timing is a report: it never fails a step
      while (!untimed_.empty() && untimed_.front().end->query()) {
        const StepTiming& done = untimed_.front();
        busy += 1000.0 * done.start->elapsed_time(*done.end);
        if (last_step_end_) {
          idle += std::max(0.0, 1000.0 * last_step_end_->elapsed_time(*done.start));
          gap = true;
        }
        last_step_end_ = done.end;
        untimed_.pop_front();
        timed = true;
      }
    } catch (const std::exception&) {
      untimed_.clear();
      last_step_end_.reset();
      return;
    }
    if (timed) result->device_busy_us = busy;
    if (gap) result->device_idle_us = idle;
#else
    (void)timing;
    (void)result;
#endif
  }

  // Blocks until `step`'s ids are in host memory (timed as device wait).
  void WaitForIds(LaunchedStep& step) {
    if (step.ids_on_host) return;
#ifdef GLMSERVE_TORCH_CUDA
    if (!step.timing.end) throw std::runtime_error("a step left running recorded no end event on the device");
    const auto start = std::chrono::steady_clock::now();
    step.timing.end->synchronize();
    device_wait_us_ += std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
    const int32_t* ids = step.pinned_ids.data_ptr<int32_t>();
    step.host_ids.assign(ids, ids + step.pinned_ids.numel());
#endif
    step.ids_on_host = true;
  }

  // The id `step` sampled for `sequence_id`, on the host (waiting for the device where it must);
  // -1 where it sampled none.
  int32_t HostIdOf(LaunchedStep& step, int64_t sequence_id) {
    auto it = step.row_of_sequence.find(sequence_id);
    if (it == step.row_of_sequence.end()) return -1;
    WaitForIds(step);
    return step.host_ids[it->second];
  }
  void BeforeProfiledStep() {
    if (profile_.done || profile_.recording || profile_.seen++ < profile_.after_steps) return;
    absl::Status started = StartDeviceProfile();
    if (!started.ok()) {
      profile_.done = true;
      LogLine(log_, absl::StrCat("GLMSERVE_PROFILE_TRACE: ", started.message()));
      return;
    }
    profile_.recording = true;
    profile_.seen = 0;
  }

  void AfterProfiledStep() {
    if (++profile_.seen < profile_.steps) return;
    profile_.recording = false;
    profile_.done = true;
#ifdef GLMSERVE_TORCH_CUDA
    if (model_->device().is_cuda()) at::cuda::getCurrentCUDAStream().synchronize();
#endif
    absl::Status stopped = StopDeviceProfile(profile_.path);
    LogLine(log_, stopped.ok()
                      ? absl::StrCat("profile of ", profile_.steps, " executor steps written to ", profile_.path)
                      : absl::StrCat("GLMSERVE_PROFILE_TRACE: ", stopped.message()));
  }

  // The device's choice of the sampled rows' ids, enqueued on the stream (nothing waits): plain
  // greedy rows by argmax (the first maximum, as on the CPU); with device sampling on, every other
  // row by kernels/sampling.h (penalties and stop masking on an fp32 copy of the row, then the draw
  // or argmax, then the drawn id counted into the penalty tables).
  struct DeviceChoice {
    std::vector<RowPath> paths;                      // per sampled row of the batch
    std::vector<int64_t> sampled_rows;               // the rows the device sampler draws (kDeviceSample)
    at::Tensor argmax_ids;                           // [sampled rows] int32, when some row is kDeviceArgmax
    at::Tensor drawn_ids;                            // [sampled_rows] int32, -1 where the host decides; undefined: all
    std::vector<const SequenceStep*> counted_steps;  // rows with penalty counts
    std::vector<size_t> counted_rows;                // their index in sampled_rows
    std::vector<int32_t> slots;                      // their penalty-table slots
    bool counted = false;                            // the drawn ids were counted into those slots
  };
  // `previous_id` (overlapped steps): a penalty slot rebuilt from a history that ends in
  // kTokenFromPreviousStep counts the id the previous step sampled there.
  DeviceChoice EnqueueDeviceChoice(const std::vector<SequenceStep>& batch, const at::Tensor& device_logits,
                                   const std::function<int32_t(int64_t)>* previous_id) {
    DeviceChoice choice;
    bool any_argmax = false;
#ifdef GLMSERVE_TORCH_CUDA
    std::vector<kernels::SamplingRow> sampling;
    std::vector<kernels::PenaltyRow> penalties;
    std::vector<int32_t> stop_ids;
    bool any_change = false;
#else
    (void)previous_id;
#endif
    for (const SequenceStep& s : batch) {
      if (!s.sample) continue;
      choice.paths.push_back(ChooseRowPath(s));
      any_argmax |= choice.paths.back() == RowPath::kDeviceArgmax;
      if (choice.paths.back() != RowPath::kDeviceSample) continue;
      choice.sampled_rows.push_back(static_cast<int64_t>(choice.paths.size()) - 1);
#ifdef GLMSERVE_TORCH_CUDA
      const SamplingParams& params = s.params->sampling;
      kernels::SamplingRow row;
      row.temperature = params.temperature;
      row.top_k = params.top_k;
      row.top_p = params.top_p;
      row.uniform = SamplingUniform(params.seed, s.num_generated);
      sampling.push_back(row);
      kernels::PenaltyRow penalty;
      if (CountsTokens(s)) {
        penalty.repetition = params.repetition_penalty;
        penalty.frequency = params.frequency_penalty;
        penalty.presence = params.presence_penalty;
        choice.counted_steps.push_back(&s);
        choice.counted_rows.push_back(penalties.size());
        any_change = true;
      }
      if (s.num_generated < s.params->min_new_tokens) {
        const std::vector<int32_t>& stops = StopIds(*s.params, model_->config().eos_token_ids);
        penalty.stop_begin = static_cast<int32_t>(stop_ids.size());
        penalty.stop_count = static_cast<int32_t>(stops.size());
        stop_ids.insert(stop_ids.end(), stops.begin(), stops.end());
        any_change |= !stops.empty();
      }
      penalties.push_back(penalty);
#endif
    }
    if (any_argmax) choice.argmax_ids = device_logits.argmax(-1).to(at::kInt);
#ifdef GLMSERVE_TORCH_CUDA
    int32_t* counts = nullptr;
    uint8_t* seen = nullptr;
    if (!choice.counted_steps.empty() && choice.sampled_rows.size() <= 65535) {
      choice.slots =
          penalty_tables_.Prepare(choice.counted_steps, device_logits.size(1), device_logits.device(), previous_id);
      for (size_t k = 0; k < choice.counted_steps.size(); ++k) penalties[choice.counted_rows[k]].slot = choice.slots[k];
      counts = penalty_tables_.counts();
      seen = penalty_tables_.seen();
    }
    if (!choice.sampled_rows.empty()) {
      const DeviceDraw draw = SampleRowsOnDevice(device_logits, choice.sampled_rows, sampling,
                                                 any_change ? &penalties : nullptr, stop_ids, counts, seen);
      choice.drawn_ids = draw.ids;
      choice.counted = draw.counted;
    }
#endif
    return choice;
  }

  // One id per sampled row of `batch` chosen on the device, waiting for them (one device-to-host
  // copy); -1 where the host must sample the row from its raw logits.
  // `timing` (non-null on a GPU): the step's end event is recorded once its device work is queued.
  std::vector<int32_t> ChooseIdsOnDevice(const std::vector<SequenceStep>& batch, const at::Tensor& device_logits,
                                         StepTiming* timing) {
    DeviceChoice choice = EnqueueDeviceChoice(batch, device_logits, nullptr);
    if (timing != nullptr) timing->End(model_->device());
    std::vector<int32_t> ids(choice.paths.size(), -1);
    std::vector<at::Tensor> parts;
    if (choice.argmax_ids.defined()) parts.push_back(choice.argmax_ids);
    if (choice.drawn_ids.defined()) parts.push_back(choice.drawn_ids);
    if (parts.empty()) return ids;
    at::Tensor host_ids =
        WaitForDevice([&] { return CopyToPinnedHost(parts.size() == 1 ? parts[0] : at::cat(parts)); });
    const int32_t* argmax_ids = choice.argmax_ids.defined() ? host_ids.data_ptr<int32_t>() : nullptr;
    const int32_t* sampled_ids =
        choice.drawn_ids.defined()
            ? host_ids.data_ptr<int32_t>() + (argmax_ids != nullptr ? static_cast<int64_t>(choice.paths.size()) : 0)
            : nullptr;
    for (size_t row = 0; row < choice.paths.size(); ++row) {
      if (choice.paths[row] == RowPath::kDeviceArgmax) ids[row] = argmax_ids[row];
    }
    if (sampled_ids != nullptr) {
      for (size_t k = 0; k < choice.sampled_rows.size(); ++k) ids[choice.sampled_rows[k]] = sampled_ids[k];
    }
#ifdef GLMSERVE_TORCH_CUDA
    if (!choice.slots.empty()) {
      std::vector<int32_t> drawn(choice.counted_steps.size(), -1);
      if (choice.counted) {
        for (size_t k = 0; k < choice.counted_steps.size(); ++k) drawn[k] = sampled_ids[choice.counted_rows[k]];
      }
      penalty_tables_.Committed(choice.counted_steps, choice.slots, drawn);
    }
#endif
    return ids;
  }

  // INTERNAL naming the problem when `batch` breaks what the engine promises; nothing is run.
  // `previous_ids`: a sampled one-token row may feed kTokenFromPreviousStep (overlapped steps).
  absl::Status Validate(const std::vector<SequenceStep>& batch, bool previous_ids = false) {
    const int32_t vocab = model_->config().vocab_size;
    const int64_t max_positions = model_->config().max_position_embeddings;
    // Entries of earlier steps carry an older generation: no per-step clearing of the whole pool's
    // table (150k+ blocks on a large GPU, ~0.1 ms a step).
    if (++validate_generation_ == kGenerationLimit || block_owner_.size() != static_cast<size_t>(pool_.num_blocks)) {
      block_owner_.assign(pool_.num_blocks, 0);
      validate_generation_ = 1;
    }
    const uint64_t generation = validate_generation_ << 32;
    for (size_t i = 0; i < batch.size(); ++i) {
      const SequenceStep& s = batch[i];
      auto bad = [&](const std::string& what) {
        return absl::InternalError(absl::StrCat("executor: sequence ", s.sequence_id, " (batch slot ", i, "): ", what));
      };
      if (s.params == nullptr) return bad("params is null");
      if (s.tokens.empty()) return bad("no tokens to feed");
      if (s.start_position < 0) return bad(absl::StrCat("start_position ", s.start_position, " < 0"));
      const int64_t end = int64_t{s.start_position} + static_cast<int64_t>(s.tokens.size());
      if (max_positions > 0 && end > max_positions) {
        return bad(absl::StrCat("positions up to ", end, " exceed max_position_embeddings ", max_positions));
      }
      if (static_cast<int64_t>(s.block_table.size()) * pool_.block_size < end) {
        return bad(absl::StrCat("block table of ", s.block_table.size(), " blocks of ", pool_.block_size,
                                " does not cover position ", end - 1));
      }
      for (int32_t id : s.tokens) {
        if (id == kTokenFromPreviousStep && previous_ids && s.tokens.size() == 1 && s.sample) continue;
        if (id < 0 || id >= vocab) return bad(absl::StrCat("token id ", id, " outside [0, ", vocab, ")"));
      }
      if (s.history != nullptr) {
        const std::vector<int32_t>& h = *s.history;
        if (static_cast<int64_t>(h.size()) < end ||
            !std::equal(s.tokens.begin(), s.tokens.end(), h.begin() + s.start_position)) {
          return bad("tokens are not history[start_position, ...)");
        }
        if (s.sample && static_cast<int64_t>(h.size()) != end) return bad("sampling before the end of history");
      }
      // Blocks from the one holding start_position on are this sequence's alone (it writes them);
      // those before it are read-only context, which sequences may share (prefix caching).
      const size_t first_owned = static_cast<size_t>(s.start_position / pool_.block_size);
      for (size_t j = 0; j < s.block_table.size(); ++j) {
        const int32_t b = s.block_table[j];
        if (b < 0 || b >= pool_.num_blocks)
          return bad(absl::StrCat("block id ", b, " outside [0, ", pool_.num_blocks, ")"));
        if (j < first_owned) continue;
        const uint64_t owner = block_owner_[b];
        if ((owner >> 32) == validate_generation_ && (owner & 0xffffffffu) != i) {
          return bad(absl::StrCat("block ", b, " also belongs to batch slot ", owner & 0xffffffffu));
        }
        block_owner_[b] = generation | i;
      }
    }
    for (size_t i = 0; i < batch.size(); ++i) {  // nobody reads a block another sequence writes
      const SequenceStep& s = batch[i];
      const size_t first_owned = static_cast<size_t>(s.start_position / pool_.block_size);
      for (size_t j = 0; j < first_owned && j < s.block_table.size(); ++j) {
        const uint64_t owner = block_owner_[s.block_table[j]];
        if ((owner >> 32) == validate_generation_) {
          return absl::InternalError(absl::StrCat("executor: sequence ", s.sequence_id, " (batch slot ", i,
                                                  "): reads block ", s.block_table[j], " that batch slot ",
                                                  owner & 0xffffffffu, " writes"));
        }
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<StepResult> StepImpl(const std::vector<SequenceStep>& batch) {
    StepResult result;
    if (batch.empty()) return result;
    device_wait_us_ = 0;
    GLM_RETURN_IF_ERROR(Validate(batch));
    size_t num_samples = 0;
    for (const SequenceStep& s : batch) num_samples += s.sample ? 1 : 0;
    at::Tensor logits;
    // On a GPU every row gets its id on the device (plain greedy: argmax; the rest:
    // kernels/sampling.h, penalties and stop masking included, the host sampler's exact id) and
    // only ids cross to the host; rows the device sampler leaves undecided (and, with
    // GLMSERVE_CUDA_DEVICE_SAMPLING=0, every row but plain greedy ones) bring their logits.
    // Copying every row's full fp32 logits and sorting them on the CPU dominated large-batch
    // decode steps.
    std::vector<int32_t> device_ids;  // per sampled row; -1: sample on the host
    bool host_logits_needed = true;   // false when the device decided every sampled row
    StepTiming timing;
    absl::Status forward = GuardTorch("forward step", [&] {
      timing.Start(model_->device());
      at::Tensor device_logits = forward_->Forward(batch, pool_);
      if (!on_sampled_logits_ && device_logits.is_cuda() && device_logits.dim() == 2 &&
          device_logits.size(0) == static_cast<int64_t>(num_samples)) {
        device_ids = ChooseIdsOnDevice(batch, device_logits, &timing);
        TimeOnDevice(timing, &result);
        std::vector<int64_t> host_rows;
        for (size_t row = 0; row < device_ids.size(); ++row) {
          if (device_ids[row] < 0) host_rows.push_back(static_cast<int64_t>(row));
        }
        // Host logits only for the rows the host samples (a [64, 151552] fp32 buffer per step
        // otherwise, for nothing).
        host_logits_needed = !host_rows.empty();
        if (host_logits_needed) {
          const int64_t vocab = device_logits.size(1);
          logits = at::empty({static_cast<int64_t>(num_samples), vocab}, at::TensorOptions().dtype(at::kFloat));
          at::Tensor rows = at::tensor(host_rows, at::TensorOptions().dtype(at::kLong));
          logits.index_copy_(
              0, rows, WaitForDevice([&] {
                return device_logits.index_select(0, rows.to(device_logits.device())).to(at::kFloat).cpu();
              }));
        }
      } else {
        // On a CPU the conversion is host work, not a wait.
        auto to_host = [&] { return device_logits.to(at::kFloat).contiguous().cpu(); };
        logits = device_logits.is_cuda() ? WaitForDevice(to_host) : to_host();
      }
      if (inject_oom_above_sequences_ > 0 && static_cast<int32_t>(batch.size()) > inject_oom_above_sequences_) {
        logits = at::Tensor();
        TORCH_CHECK_WITH(OutOfMemoryError, false,
                         "injected OOM (ExecutorOptions.inject_oom_above_sequences=", inject_oom_above_sequences_,
                         "): batch of ", batch.size(), " sequences");
      }
    });
    if (!forward.ok()) {
      logits = at::Tensor();
      if (absl::IsResourceExhausted(forward)) EmptyDeviceCache(model_->device());
      return forward;
    }
    const int32_t vocab = model_->config().vocab_size;
    if (host_logits_needed && (logits.dim() != 2 || logits.size(0) != static_cast<int64_t>(num_samples) ||
                               logits.size(1) != vocab || logits.scalar_type() != at::kFloat)) {
      return absl::InternalError(absl::StrCat("forward step returned ", logits.dim(), "-d logits with ",
                                              logits.dim() > 0 ? logits.size(0) : 0, " rows; expected [", num_samples,
                                              ", ", vocab, "] fp32"));
    }
    result.next_tokens.assign(batch.size(), -1);
    const float* data = host_logits_needed ? logits.data_ptr<float>() : nullptr;
    int64_t row = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (!batch[i].sample) continue;
      const GenerationParams& params = *batch[i].params;
      const std::vector<int32_t>& stops = StopIds(params, model_->config().eos_token_ids);
      const bool decided_on_device = !device_ids.empty() && device_ids[row] >= 0;
      if (on_sampled_logits_) {
        on_sampled_logits_(batch[i].sequence_id, batch[i].num_generated, data + row * vocab, vocab);
      }
      const int32_t id = decided_on_device ? device_ids[row]
                                           : SampleNextToken(data + row * vocab, vocab, params, stops,
                                                             batch[i].num_generated, batch[i].history);
      if (id < 0 || id >= vocab) {
        return absl::InternalError(absl::StrCat("sampler returned id ", id, " for sequence ", batch[i].sequence_id,
                                                "; expected [0, ", vocab, ")"));
      }
      result.next_tokens[i] = id;
      ++row;
    }
    result.device_wait_us = device_wait_us_;
    return result;
  }

  // Runs `copy_to_host` (a device-to-host copy, which waits for the step's device work) and adds
  // the time it blocked to this step's device wait.
  template <typename Copy>
  at::Tensor WaitForDevice(Copy&& copy_to_host) {
    const auto start = std::chrono::steady_clock::now();
    at::Tensor host = copy_to_host();
    device_wait_us_ += std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
    return host;
  }

  const GlmModel* model_;
  std::unique_ptr<ModelForward> forward_;
  KvPool pool_;
  int32_t inject_oom_above_sequences_;
  std::function<void(int64_t, int32_t, const float*, int32_t)> on_sampled_logits_;
  std::function<void(const std::string&)> log_;  // null: stderr
  bool first_step_done_ = false;                 // CapDeviceMemoryForChaos runs after it
  StepProfile profile_;
  // Scratch for Validate: per block, (generation << 32) | the batch slot owning it this step.
  std::vector<uint64_t> block_owner_;
  uint64_t validate_generation_ = 0;
  double device_wait_us_ = 0;  // this step's, so far (WaitForDevice)
  static constexpr uint64_t kGenerationLimit = uint64_t{1} << 31;
#ifdef GLMSERVE_TORCH_CUDA
  PenaltyTables penalty_tables_;
#endif
  std::deque<LaunchedStep> launched_;  // overlapped steps launched and not collected, oldest first
#ifdef GLMSERVE_TORCH_CUDA
  std::shared_ptr<at::cuda::CUDAEvent> last_step_end_;  // the last timed step's end (TimeOnDevice)
  std::deque<StepTiming> untimed_;                      // steps whose device work had not finished
#endif
};

class ModelRunnerImpl final : public ModelRunner {
 public:
  ModelRunnerImpl(ModelInfo info, std::unique_ptr<GlmModel> model) : info_(std::move(info)), model_(std::move(model)) {}
  const ModelInfo& info() const override { return info_; }

  absl::StatusOr<std::unique_ptr<StepExecutor>> CreateExecutor(const ExecutorOptions& options) override {
    if (options.block_size <= 0) return absl::InvalidArgumentError("block_size: expected a positive token count");
    if (options.num_blocks < 0) return absl::InvalidArgumentError("num_blocks: expected >= 0 (0 = sized from memory)");
    if (options.inject_oom_above_sequences < 0) {
      return absl::InvalidArgumentError("inject_oom_above_sequences: expected >= 0 (0 = off)");
    }
    if (options.capture_decode_batch < 0) {
      return absl::InvalidArgumentError("capture_decode_batch: expected >= 0 (0 = capture on first use)");
    }
    const at::Device device = model_->device();
    const int64_t per_block = model_->kv_bytes_per_token() * options.block_size;
    int64_t blocks = options.num_blocks;
    std::string source = "num_blocks";
    if (blocks == 0) {
      if (device.is_cuda()) {
        if (!(options.kv_memory_fraction > 0 && options.kv_memory_fraction <= 1)) {
          return absl::InvalidArgumentError("kv_memory_fraction: expected a value in (0, 1]");
        }
#ifdef GLMSERVE_TORCH_CUDA
        size_t free_bytes = 0, total_bytes = 0;
        GLM_RETURN_IF_ERROR(GuardTorch("reading free device memory", [&] {
          EmptyDeviceCache(device);
          std::tie(free_bytes, total_bytes) = at::getDeviceAllocator(at::kCUDA)->getMemoryInfo(device.index());
        }));
        blocks = static_cast<int64_t>(static_cast<double>(free_bytes) * options.kv_memory_fraction) / per_block;
        source = absl::StrCat("kv_memory_fraction ", options.kv_memory_fraction, " of ", free_bytes >> 20,
                              " MiB free on ", device.str(), " (", total_bytes >> 20, " MiB total)");
#else
        return absl::FailedPreconditionError("sizing the KV pool on CUDA needs a CUDA build of LibTorch");
#endif
      } else {
        if (options.kv_cpu_budget_bytes <= 0) {
          return absl::InvalidArgumentError("kv_cpu_budget_bytes: expected a positive byte count");
        }
        blocks = options.kv_cpu_budget_bytes / per_block;
        source = absl::StrCat("kv_cpu_budget_bytes ", options.kv_cpu_budget_bytes);
      }
      blocks = std::min<int64_t>(blocks, std::numeric_limits<int32_t>::max() / options.block_size);
    }
    if (blocks <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("num_blocks: the KV budget (", source, ") holds no block of ", per_block, " bytes"));
    }
    KvPool pool;
    const std::string allocating =
        absl::StrCat("allocating the KV cache (", blocks, " blocks x ", options.block_size, " tokens, ",
                     (blocks * per_block) >> 20, " MiB; see --kv-blocks, --kv-cpu-budget-mb, --kv-memory-fraction)");
    GLM_RETURN_IF_ERROR(GuardTorch(
        allocating.c_str(), [&] { pool = model_->AllocateKv(static_cast<int32_t>(blocks), options.block_size); }));
    LogLine(options.log, absl::StrCat("kv cache: ", blocks, " blocks x ", options.block_size, " tokens (",
                                      blocks * options.block_size, " tokens, ", (blocks * per_block) >> 20, " MiB on ",
                                      device.str(), ") from ", source));
    auto forward = std::make_unique<ModelForward>(*model_);
    if (options.capture_decode_batch > 0 && device.is_cuda()) CaptureDecodeGraphs(options, *forward, pool);
    return std::unique_ptr<StepExecutor>(new PagedExecutor(std::move(forward), std::move(pool), options));
  }

 private:
  void CaptureDecodeGraphs(const ExecutorOptions& options, ModelForward& forward, KvPool& pool) {
    std::vector<int32_t> captured;
    std::string tuning;
    const auto start = std::chrono::steady_clock::now();
    const absl::Status status = GuardTorch("capturing decode graphs", [&] {
      forward.CaptureDecodeGraphs(pool, options.capture_decode_batch, &captured, &tuning);
    });
    if (!tuning.empty()) LogLine(options.log, tuning);
    if (status.ok() && captured.empty()) return;  // graphs off: nothing to capture
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::string line = absl::StrCat("decode graphs captured for batch buckets [", absl::StrJoin(captured, ","), "] in ",
                                    static_cast<int64_t>(ms), " ms");
    if (!status.ok()) {
      EmptyDeviceCache(model_->device());
      absl::StrAppend(&line, "; the next bucket failed (captured on first use instead): ", status.message());
    }
    LogLine(options.log, line);
  }

  ModelInfo info_;
  std::unique_ptr<GlmModel> model_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Load(const std::string& directory,
                                                               const LoadOptions& options) {
  GLM_ASSIGN_OR_RETURN(at::Device device, ParseDevice(options.device));
  GLM_ASSIGN_OR_RETURN(at::ScalarType dtype, ParseDtype(options.dtype, device));
  if (options.random_weights) {
    GLM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(directory));
    std::unique_ptr<GlmModel> model;
    GLM_RETURN_IF_ERROR(GuardTorch("building a random-weight model", [&]() -> absl::Status {
      GLM_ASSIGN_OR_RETURN(model, GlmModel::BuildRandom(config, dtype, device, options.random_seed));
      return absl::OkStatus();
    }));
    ModelInfo info = DescribeModel(directory, config);
    info.source_format = "random-weights";
    info.stored_dtype = DtypeName(dtype);
    for (const MappedTensor& t : CanonicalTensors(config)) {
      int64_t n = 1;
      for (int64_t d : t.shape) n *= d;
      info.parameter_count += n;
    }
    info.compute_dtype = DtypeName(dtype);
    info.device = device.str();
    return std::unique_ptr<ModelRunner>(new ModelRunnerImpl(std::move(info), std::move(model)));
  }
  CheckpointPlan parsed;
  GLM_ASSIGN_OR_RETURN(InspectReport report, PlanCheckpoint(directory, &parsed));
  if (!report.loadable()) {
    // Nothing to load (no weight files at all) is NOT_FOUND; anything else found wrong
    // with what is there is FAILED_PRECONDITION. Either way the message is the whole report.
    return absl::Status(parsed.missing ? absl::StatusCode::kNotFound : absl::StatusCode::kFailedPrecondition,
                        absl::StrCat("checkpoint '", directory, "' cannot be loaded (", report.ProblemsHeading(),
                                     "):\n", absl::StrJoin(report.problems, "\n")));
  }
  GLM_ASSIGN_OR_RETURN(auto stored, ReadCheckpointTensors(parsed.listing));
  std::unique_ptr<GlmModel> model;
  GLM_RETURN_IF_ERROR(GuardTorch("building the model", [&]() -> absl::Status {
    GLM_ASSIGN_OR_RETURN(model, GlmModel::Build(parsed.config, parsed.plan, &stored, dtype, device));
    return absl::OkStatus();
  }));
  ModelInfo info = report.info;
  info.compute_dtype = DtypeName(dtype);
  info.device = device.str();
  return std::unique_ptr<ModelRunner>(new ModelRunnerImpl(std::move(info), std::move(model)));
}

}  // namespace glmserve
