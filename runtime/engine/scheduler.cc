#include "runtime/engine/scheduler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/status_macros.h"

namespace glmserve {
namespace engine_internal {

struct Sequence {
  int64_t id = 0;
  InferenceRequest request;
  RequestCallbacks callbacks;
  std::vector<int32_t> tokens;  // prompt + generated
  int32_t prompt_len = 0;
  int32_t num_computed = 0;  // positions whose KV is in block_table
  std::vector<int32_t> block_table;
  std::vector<int32_t> stop_ids;
  Clock::TimePoint submit_time;
  Clock::TimePoint first_scheduled;
  Clock::TimePoint first_token;
  bool admitted_once = false;
  bool has_first_token = false;
  bool preempted = false;  // back in waiting after running: resumes ahead of fresh requests
  uint64_t arrival = 0;
  int32_t oom_alone_failures = 0;
  // Tokens of its step when it last ran out of memory alone (0: not yet): a retry whose chunk is
  // no smaller (an image taken whole, a decode) counts as a failure alone.
  int32_t oom_alone_chunk = 0;
  // The batch limit before the first out-of-memory step this sequence was in (0: none yet): given
  // back if it then fails alone, since its own size, not the batch, is what did not fit.
  int32_t batch_limit_before_oom = 0;
  // Prefix caching: the leading blocks of block_table whose content is registered (matched at
  // admission or registered after the steps that wrote them), and the registered block standing
  // for the last of them; -1 once registering failed (nothing more is registered for it).
  int32_t cached_blocks = 0;
  BlockManager::Link chain;
  int32_t cached_prompt_tokens = 0;  // matched at the first admission (RequestResult's)

  // True from the first Step that carried this sequence until ReleaseSequence: the executor may
  // hold state for it (encoded images), so finishing or preempting it must release that.
  bool executor_has_state = false;

  // overlap_steps: tokens fed by launched steps not committed yet (already in num_computed), and
  // the kTokenFromPreviousStep placeholders at the end of `tokens` for the ids those steps sample.
  int32_t in_flight_tokens = 0;
  int32_t placeholders = 0;

  // Counting placeholders: what planning sees (a launched step's work as done).
  int32_t num_generated() const { return static_cast<int32_t>(tokens.size()) - prompt_len; }
  // What is committed: ids the request has, positions whose KV a committed step wrote.
  int32_t committed_generated() const { return num_generated() - placeholders; }
  int32_t committed_computed() const { return num_computed - in_flight_tokens; }
  int32_t pending() const { return static_cast<int32_t>(tokens.size()) - num_computed; }
  const MultimodalPrompt* multimodal() const { return request.multimodal.get(); }
  // The first image whose first token is not computed yet (images.size() when none): the next
  // image the vision encoder runs for this sequence, charged to the chunk that feeds its first token.
  size_t next_image() const {
    const MultimodalPrompt* mm = multimodal();
    if (mm == nullptr) return 0;
    size_t k = 0;
    while (k < mm->image_offsets.size() && mm->image_offsets[k] < num_computed) ++k;
    return k;
  }
  bool has_image_ahead() const {
    const MultimodalPrompt* mm = multimodal();
    return mm != nullptr && next_image() < mm->images.size();
  }
  // One token left to feed and no image starting there: a decode row (1 token of budget). A
  // pending image start is prefill work even when it is the last token (its encoder is charged).
  bool decoding() const { return pending() == 1 && !has_image_ahead(); }
};

// A prefill chunk as planned: tokens fed (from num_computed) and what it costs against the step's
// budget (those tokens plus the encoder tokens of every image whose first token it feeds).
struct PrefillChunk {
  int32_t tokens = 0;
  int32_t cost = 0;
  int32_t encoder_tokens = 0;
};

// The image-charging rule (scheduler.h, SchedulerOptions::max_tokens_per_step): walk the pending
// tokens; text and already-encoded image tokens cost 1 each; at image k's first token its
// num_tokens are charged on top. When that charge (plus the token itself) exceeds what is left,
// the chunk ends just before the image, unless the image starts the chunk and this is the step's
// first prefill: then the chunk is that one token and it takes all of the budget left (the
// encoder has to run whole once; doing it with the fewest text tokens beside it keeps the step as
// short as it can be). tokens == 0: nothing of this sequence runs this step.
PrefillChunk PlanPrefillChunk(const Sequence& s, int32_t budget, bool first_prefill) {
  PrefillChunk c;
  const MultimodalPrompt* mm = s.multimodal();
  const int64_t start = s.num_computed;
  const int64_t limit = start + s.pending();
  size_t k = s.next_image();
  const size_t num_images = mm == nullptr ? 0 : mm->images.size();
  int64_t pos = start;
  int64_t left = budget;
  while (pos < limit && left > 0) {
    const int64_t image_begin = k < num_images ? mm->image_offsets[k] : limit;
    if (pos < image_begin) {
      const int64_t take = std::min(std::min(limit, image_begin) - pos, left);
      pos += take;
      left -= take;
      continue;
    }
    const int64_t charge = mm->images[k].num_tokens;
    if (charge + 1 <= left) {
      left -= charge;
      c.encoder_tokens += static_cast<int32_t>(charge);
      ++k;  // its first token is taken by the next iteration (left >= 1)
      continue;
    }
    if (pos == start && first_prefill) {
      c.encoder_tokens += static_cast<int32_t>(charge);
      pos += 1;
      left = 0;
    }
    break;
  }
  c.tokens = static_cast<int32_t>(pos - start);
  c.cost = static_cast<int32_t>(budget - left);
  return c;
}

}  // namespace engine_internal

namespace {

double Ms(Clock::Duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

template <typename T>
void EraseValue(std::vector<T>& v, const T& x) {
  auto it = std::find(v.begin(), v.end(), x);
  if (it != v.end()) v.erase(it);
}

// "FIELD must be >= LEAST, got VALUE" where the option is below its least value.
absl::Status AtLeast(absl::string_view field, int64_t value, int64_t least) {
  if (value >= least) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, " must be >= ", least, ", got ", value));
}

// A moving average weighing each new sample 1/16 (the first sample sets it): recent requests
// decide, one odd request does not.
void RecordAverage(double sample, double* average, bool* seen) {
  *average = *seen ? *average + (sample - *average) / 16.0 : sample;
  *seen = true;
}

}  // namespace

absl::Status ValidateSchedulerOptions(const SchedulerOptions& o) {
  GLM_RETURN_IF_ERROR(AtLeast("max_batch_size", o.max_batch_size, 1));
  if (o.max_tokens_per_step < o.max_batch_size) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens_per_step must be >= max_batch_size (", o.max_batch_size,
                                                   ") so every running sequence can decode each step, got ",
                                                   o.max_tokens_per_step));
  }
  GLM_RETURN_IF_ERROR(AtLeast("max_prefill_tokens_with_decodes", o.max_prefill_tokens_with_decodes, 0));
  GLM_RETURN_IF_ERROR(AtLeast("mixed_step_rows", o.mixed_step_rows, 0));
  GLM_RETURN_IF_ERROR(AtLeast("thin_prefill_tokens", o.thin_prefill_tokens, 0));
  if (o.thin_prefill_max_wait.count() < 0) {
    return absl::InvalidArgumentError("thin_prefill_max_wait must be >= 0");
  }
  if (o.thin_prefill_auto && o.thin_prefill_tokens > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("thin_prefill_auto chooses the thin budget; thin_prefill_tokens must "
                     "then be 0, got ",
                     o.thin_prefill_tokens));
  }
  GLM_RETURN_IF_ERROR(AtLeast("thin_prefill_auto_prompt_steps", o.thin_prefill_auto_prompt_steps, 1));
  GLM_RETURN_IF_ERROR(AtLeast("thin_prefill_backlog_steps", o.thin_prefill_backlog_steps, 0));
  GLM_RETURN_IF_ERROR(AtLeast("prefill_spread_steps", o.prefill_spread_steps, 0));
  GLM_RETURN_IF_ERROR(AtLeast("prefill_spread_min_tokens", o.prefill_spread_min_tokens, 1));
  if (o.max_queue_delay.count() < 0) {
    return absl::InvalidArgumentError("max_queue_delay must be >= 0");
  }
  if (o.max_prefill_hold.count() < 0) {
    return absl::InvalidArgumentError("max_prefill_hold must be >= 0");
  }
  if (o.priority_aging_interval.count() < 0) {
    return absl::InvalidArgumentError("priority_aging_interval must be >= 0");
  }
  GLM_RETURN_IF_ERROR(AtLeast("aimd_increase_after_steps", o.aimd_increase_after_steps, 1));
  GLM_RETURN_IF_ERROR(AtLeast("max_oom_retries_alone", o.max_oom_retries_alone, 0));
  const FaultInjectionOptions& f = o.faults;
  if (f.oom_above_sequences < 0 || f.oom_above_tokens < 0 || f.throw_on_step < 0 || f.step_latency.count() < 0) {
    return absl::InvalidArgumentError(
        "faults.oom_above_sequences, faults.oom_above_tokens, faults.throw_on_step and "
        "faults.step_latency must be >= 0");
  }
  return absl::OkStatus();
}

namespace {

// The executor indexes positions and places image features by these fields, and the scheduler charges each
// image once at image_offsets[k]; a request whose images do not describe its own prompt is refused here rather
// than read out of bounds later.
absl::Status ValidateMultimodal(const MultimodalPrompt& mm, size_t num_input_ids) {
  const int64_t n = static_cast<int64_t>(num_input_ids);
  if (mm.prompt_len != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("multimodal.prompt_len (", mm.prompt_len, ") must equal the number of input_ids (", n, ")"));
  }
  if (static_cast<int64_t>(mm.positions.size()) != 3 * n) {
    return absl::InvalidArgumentError(
        absl::StrCat("multimodal.positions has ", mm.positions.size(), " entries, expected 3 * prompt_len = ", 3 * n));
  }
  if (mm.image_offsets.size() != mm.images.size()) {
    return absl::InvalidArgumentError(absl::StrCat("multimodal.image_offsets has ", mm.image_offsets.size(),
                                                   " entries, expected one per image (", mm.images.size(), ")"));
  }
  int64_t previous_end = 0;  // end of image k-1's token run
  for (size_t k = 0; k < mm.images.size(); ++k) {
    const int64_t begin = mm.image_offsets[k];
    const int64_t count = mm.images[k].num_tokens;
    if (count <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("multimodal.images[", k, "].num_tokens must be > 0, got ", count));
    }
    if (begin < 0 || begin >= n) {
      return absl::InvalidArgumentError(
          absl::StrCat("multimodal.image_offsets[", k, "] = ", begin, " is outside input_ids [0, ", n, ")"));
    }
    if (k > 0 && begin < previous_end) {
      return absl::InvalidArgumentError(absl::StrCat(
          "multimodal.image_offsets[", k, "] = ", begin, " must be >= ", previous_end, ", the end of image ", k - 1,
          "'s tokens [", mm.image_offsets[k - 1], ", ", previous_end, "): offsets ascending, runs not overlapping"));
    }
    if (begin + count > n) {
      return absl::InvalidArgumentError(absl::StrCat("multimodal.images[", k, "].num_tokens: its image tokens [", begin,
                                                     ", ", begin + count, ") run past the ", n, " input_ids"));
    }
    previous_end = begin + count;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateRequest(const InferenceRequest& request, const RequestLimits& limits) {
  const GenerationParams& p = request.params;
  if (request.input_ids.empty()) {
    return absl::InvalidArgumentError("input_ids is empty");
  }
  if (limits.vocab_size > 0) {
    for (size_t i = 0; i < request.input_ids.size(); ++i) {
      const int32_t id = request.input_ids[i];
      if (id < 0 || id >= limits.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("input_ids[", i, "] = ", id, " is outside the vocabulary [0, ", limits.vocab_size, ")"));
      }
    }
  }
  if (p.max_new_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("params.max_new_tokens must be > 0, got ", p.max_new_tokens));
  }
  if (p.min_new_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("params.min_new_tokens must be >= 0, got ", p.min_new_tokens));
  }
  if (p.sampling.temperature < 0) {
    return absl::InvalidArgumentError("params.sampling.temperature must be >= 0");
  }
  if (!(p.sampling.top_p > 0 && p.sampling.top_p <= 1)) {
    return absl::InvalidArgumentError("params.sampling.top_p must be in (0, 1]");
  }
  if (p.sampling.top_k < 0) {
    return absl::InvalidArgumentError("params.sampling.top_k must be >= 0");
  }
  const int64_t total = static_cast<int64_t>(request.input_ids.size()) + p.max_new_tokens;
  const int64_t capacity = static_cast<int64_t>(limits.num_blocks) * limits.block_size;
  if (total > capacity) {
    return absl::InvalidArgumentError(absl::StrCat("params.max_new_tokens: prompt (", request.input_ids.size(),
                                                   " tokens) + max_new_tokens (", p.max_new_tokens, ") = ", total,
                                                   " exceeds the KV cache capacity of ", capacity, " tokens (",
                                                   limits.num_blocks, " blocks of ", limits.block_size, ")"));
  }
  if (limits.max_position_embeddings > 0 && total > limits.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "params.max_new_tokens: prompt (", request.input_ids.size(), " tokens) + max_new_tokens (", p.max_new_tokens,
        ") = ", total, " exceeds max_position_embeddings (", limits.max_position_embeddings, ")"));
  }
  if (request.multimodal != nullptr) return ValidateMultimodal(*request.multimodal, request.input_ids.size());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(SchedulerOptions options, StepExecutor* executor,
                                                             Clock* clock, const ModelInfo& model_info,
                                                             SchedulerHooks hooks) {
  if (executor == nullptr) return absl::InvalidArgumentError("executor is null");
  if (clock == nullptr) return absl::InvalidArgumentError("clock is null");
  absl::Status s = ValidateSchedulerOptions(options);
  if (!s.ok()) return s;
  RequestLimits limits;
  limits.block_size = executor->block_size();
  limits.num_blocks = executor->num_blocks();
  limits.max_position_embeddings = model_info.max_position_embeddings;
  limits.vocab_size = model_info.vocab_size;
  if (limits.block_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("executor block_size must be >= 1, got ", limits.block_size));
  }
  if (limits.num_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("executor num_blocks must be >= 1, got ", limits.num_blocks));
  }
  return std::unique_ptr<Scheduler>(
      new Scheduler(std::move(options), executor, clock, model_info, std::move(hooks), limits));
}

Scheduler::Scheduler(SchedulerOptions options, StepExecutor* executor, Clock* clock, const ModelInfo& model_info,
                     SchedulerHooks hooks, RequestLimits limits)
    : options_(std::move(options)),
      executor_(executor),
      clock_(clock),
      eos_token_ids_(model_info.eos_token_ids),
      hooks_(std::move(hooks)),
      limits_(limits),
      blocks_(limits.num_blocks, limits.block_size, options_.prefix_caching),
      batch_limit_(options_.max_batch_size) {}

Scheduler::~Scheduler() { DiscardInFlight(); }

void Scheduler::Log(const std::string& line) const {
  if (options_.log) {
    options_.log(line);
  } else {
    std::fprintf(stderr, "glmserve engine: %s\n", line.c_str());
  }
}

absl::Status Scheduler::Add(InferenceRequest request, RequestCallbacks callbacks, TimePoint submit_time) {
  absl::Status s = ValidateRequest(request, limits_);
  if (!s.ok()) return s;
  auto seq = std::make_unique<Sequence>();
  seq->id = next_sequence_id_++;
  seq->tokens = request.input_ids;
  seq->tokens.reserve(request.input_ids.size() + request.params.max_new_tokens);
  seq->prompt_len = static_cast<int32_t>(request.input_ids.size());
  seq->stop_ids = StopIds(request.params, eos_token_ids_);
  seq->submit_time = submit_time;
  seq->arrival = next_arrival_++;
  seq->request = std::move(request);
  seq->callbacks = std::move(callbacks);
  Sequence* raw = seq.get();
  if (!raw->request.request_id.empty()) by_request_id_[raw->request.request_id] = raw;
  waiting_.push_back(raw);
  sequences_.emplace(raw->id, std::move(seq));
  return absl::OkStatus();
}

void Scheduler::Cancel(const std::string& request_id) {
  auto it = by_request_id_.find(request_id);
  if (it == by_request_id_.end()) return;
  Finish(it->second, absl::CancelledError(absl::StrCat("request ", request_id, " cancelled")),
         FinishReason::kCancelled);
}

void Scheduler::CancelAll(const absl::Status& status) {
  DiscardInFlight();
  // Newest first so nothing is preempted or re-admitted while we go.
  while (!running_.empty()) Finish(running_.back(), status, FinishReason::kCancelled);
  while (!waiting_.empty()) Finish(waiting_.back(), status, FinishReason::kCancelled);
}

bool Scheduler::HasWork() const { return in_flight_ || !running_.empty() || !waiting_.empty(); }

Scheduler::WaitingSummary Scheduler::SummarizeWaiting() const {
  WaitingSummary w;
  for (const Sequence* s : waiting_) {
    w.resuming = w.resuming || s->preempted;
    w.oldest = std::min(w.oldest, s->submit_time);
    w.pending_tokens += s->pending();
  }
  return w;
}

bool Scheduler::HeldByQueueDelay(TimePoint now) const {
  if (options_.max_queue_delay.count() == 0 || !running_.empty() || waiting_.empty()) return false;
  if (static_cast<int32_t>(waiting_.size()) >= std::min(batch_limit_, options_.max_batch_size)) {
    return false;
  }
  const WaitingSummary w = SummarizeWaiting();
  return !w.resuming && now < w.oldest + options_.max_queue_delay;
}

bool Scheduler::HeldForFullerPrefill(TimePoint now, int32_t decodes, int32_t prefills, int32_t budget) const {
  if (options_.max_prefill_hold.count() == 0 || decodes == 0 || prefills > 0 || waiting_.empty()) return false;
  const WaitingSummary w = SummarizeWaiting();
  return !w.resuming && w.pending_tokens < budget && now < w.oldest + options_.max_prefill_hold;
}

bool Scheduler::ReadyToStep(TimePoint now) const {
  if (in_flight_ || !running_.empty()) return true;
  if (waiting_.empty()) return false;
  if (!HeldByQueueDelay(now)) return true;
  for (const Sequence* s : waiting_) {
    if (now >= s->request.deadline) return true;  // needs reaping
  }
  return false;
}

Scheduler::TimePoint Scheduler::NextWakeTime(TimePoint now) const {
  if (ReadyToStep(now)) return now;
  TimePoint next = TimePoint::max();
  if (HeldByQueueDelay(now)) {
    for (const Sequence* s : waiting_) {
      next = std::min(next, s->submit_time + options_.max_queue_delay);
      next = std::min(next, s->request.deadline);
    }
  }
  return next;
}

EngineStats Scheduler::stats() const {
  EngineStats st;
  st.running = static_cast<int32_t>(running_.size());
  st.waiting = static_cast<int32_t>(waiting_.size());
  st.batch_limit = batch_limit_;
  st.max_batch_size = options_.max_batch_size;
  st.oom_events = oom_events_;
  st.preemptions = preemptions_;
  st.steps = steps_;
  st.finished = finished_;
  st.blocks_used = blocks_.num_used();
  st.blocks_free = blocks_.num_free();
  st.blocks_total = blocks_.num_blocks();
  st.blocks_cached = blocks_.num_cached();
  st.prefix_cache_hit_tokens = prefix_cache_hit_tokens_;
  st.prompt_tokens_scheduled = prompt_tokens_scheduled_;
  st.prefill_budget_with_decodes = last_prefill_budget_with_decodes_;
  st.schedule_ns = schedule_ns_;
  st.executor_host_ns = executor_host_ns_;
  st.device_wait_ns = device_wait_ns_;
  st.commit_ns = commit_ns_;
  st.device_busy_ns = device_busy_ns_;
  st.device_idle_ns = device_idle_ns_;
  return st;
}

void Scheduler::Finish(Sequence* seq, absl::Status status, FinishReason reason) {
  const TimePoint now = clock_->Now();
  ReleaseExecutorState(seq);
  // A launched step may still write this sequence's KV: on an accelerator's one stream that
  // happens before any later step can write these blocks for another sequence.
  blocks_.Release(seq->block_table);
  EraseValue(running_, seq);
  EraseValue(waiting_, seq);
  if (options_.overlap_steps) {  // launched rows of a finished sequence are discarded
    for (PlannedStep* plan : {&plan_, &in_flight_plan_}) {
      for (Sequence*& planned : plan->sequences) {
        if (planned == seq) planned = nullptr;
      }
    }
  }

  RequestResult result;
  result.status = std::move(status);
  result.finish_reason = reason;
  result.output_ids.assign(seq->tokens.begin() + seq->prompt_len, seq->tokens.end() - seq->placeholders);
  result.prompt_tokens = seq->prompt_len;
  result.cached_prompt_tokens = seq->cached_prompt_tokens;
  result.total_ms = Ms(now - seq->submit_time);
  result.queue_ms = seq->admitted_once ? Ms(seq->first_scheduled - seq->submit_time) : result.total_ms;
  result.ttft_ms = seq->has_first_token ? Ms(seq->first_token - seq->submit_time) : 0.0;

  const std::string request_id = seq->request.request_id;
  const bool was_admitted = seq->admitted_once;
  auto it = by_request_id_.find(request_id);
  if (it != by_request_id_.end() && it->second == seq) by_request_id_.erase(it);
  // Take the callbacks out before erasing the sequence; call after, so a callback that
  // re-enters (it must not) sees consistent state.
  RequestCallbacks callbacks = std::move(seq->callbacks);
  if (result.status.ok()) {
    RecordAverage(static_cast<double>(result.output_ids.size()), &average_output_tokens_, &seen_output_);
  }
  sequences_.erase(seq->id);
  ++finished_;
  if (callbacks.on_done) {
    try {
      callbacks.on_done(result);
    } catch (const std::exception& e) {
      Log(absl::StrCat("on_done of request ", request_id, " threw: ", e.what()));
    } catch (...) {
      Log(absl::StrCat("on_done of request ", request_id, " threw"));
    }
  }
  if (hooks_.on_request_finished) hooks_.on_request_finished(request_id, result, was_admitted);
}

void Scheduler::ExpireAndReap(TimePoint now) {
  std::vector<Sequence*> expired;
  for (Sequence* s : running_) {
    if (now >= s->request.deadline) expired.push_back(s);
  }
  for (Sequence* s : waiting_) {
    if (now >= s->request.deadline) expired.push_back(s);
  }
  for (Sequence* s : expired) {
    Finish(s,
           absl::DeadlineExceededError(absl::StrCat("request ", s->request.request_id, " passed its deadline after ",
                                                    s->committed_generated(), " of ", s->request.params.max_new_tokens,
                                                    " new tokens")),
           FinishReason::kDeadline);
  }
}

void Scheduler::ReleaseExecutorState(Sequence* seq) {
  if (!seq->executor_has_state) return;
  seq->executor_has_state = false;
  // The engine edge, as in Execute: an executor exception must not unwind the scheduler.
  try {
    executor_->ReleaseSequence(seq->id);
  } catch (const std::exception& e) {
    Log(absl::StrCat("executor ReleaseSequence(", seq->id, ") of request ", seq->request.request_id,
                     " threw: ", e.what()));
  } catch (...) {
    Log(absl::StrCat("executor ReleaseSequence(", seq->id, ") of request ", seq->request.request_id, " threw"));
  }
}

void Scheduler::Preempt(Sequence* seq) {
  ReleaseExecutorState(seq);  // it comes back with prefill from 0: its images are encoded again
  ReleaseBlocks(seq);         // recomputed from position 0 over prompt + generated so far
  seq->preempted = true;
  EraseValue(running_, seq);
  waiting_.push_back(seq);
  ++preemptions_;
}

namespace {

// Leading blocks of `seq` the prefix cache may hold: whole blocks, and for a prompt with images
// only those before its first image token (an image's tokens stand for its pixels, which the ids
// do not say, and its positions are 3-D).
int32_t CacheableBlocks(const engine_internal::Sequence& seq, int32_t block_size) {
  int64_t tokens = static_cast<int64_t>(seq.tokens.size());
  const MultimodalPrompt* mm = seq.multimodal();
  if (mm != nullptr && !mm->image_offsets.empty()) tokens = std::min<int64_t>(tokens, mm->image_offsets[0]);
  return static_cast<int32_t>(tokens / block_size);
}

}  // namespace

void Scheduler::MatchCachedPrefix(Sequence* seq) {
  if (!blocks_.prefix_caching() || !seq->block_table.empty() || seq->num_computed != 0) return;
  // At least the last token is computed: its logits give the next token.
  const int32_t block_size = blocks_.block_size();
  const int32_t most = std::min(CacheableBlocks(*seq, block_size),
                                static_cast<int32_t>((static_cast<int64_t>(seq->tokens.size()) - 1) / block_size));
  if (most <= 0) return;
  const int32_t matched = blocks_.MatchPrefix(seq->tokens, most, seq->block_table, &seq->chain);
  seq->cached_blocks = matched;
  seq->num_computed = matched * block_size;
}

void Scheduler::ReleaseBlocks(Sequence* seq) {
  blocks_.Release(seq->block_table);
  seq->num_computed = 0;
  seq->cached_blocks = 0;
  seq->chain = BlockManager::Link();
}

void Scheduler::ForgetCachedPrefix(Sequence* seq) {
  if (seq->cached_blocks <= 0 || seq->num_computed != seq->cached_blocks * blocks_.block_size()) return;
  ReleaseBlocks(seq);
}

void Scheduler::RegisterWrittenBlocks(Sequence* seq) {
  if (!blocks_.prefix_caching() || seq->cached_blocks < 0) return;
  const int32_t block_size = blocks_.block_size();
  const int32_t written = std::min(seq->committed_computed() / block_size, CacheableBlocks(*seq, block_size));
  while (seq->cached_blocks < written) {
    BlockManager::Link link;
    // The table may take an identical block registered before in place of this one (Register).
    if (!blocks_.Register(&seq->block_table[seq->cached_blocks], seq->chain, seq->tokens,
                          int64_t{seq->cached_blocks} * block_size, &link)) {
      seq->cached_blocks = -1;
      return;
    }
    seq->chain = link;
    ++seq->cached_blocks;
  }
}

void Scheduler::SetBatchLimit(int32_t limit, const char* why) {
  limit = std::max(1, std::min(limit, options_.max_batch_size));
  if (limit == batch_limit_) return;
  const int32_t old = batch_limit_;
  batch_limit_ = limit;
  Log(absl::StrCat("batch limit ", old, " -> ", limit, " (", why, "); running ", running_.size(), ", waiting ",
                   waiting_.size(), ", oom events ", oom_events_));
  if (hooks_.on_batch_limit_change) hooks_.on_batch_limit_change(old, limit);
}

engine_internal::Sequence* Scheduler::PopBestWaiting(TimePoint now, bool pop) {
  if (waiting_.empty()) return nullptr;
  const int64_t aging_ms = options_.priority_aging_interval.count();
  auto effective = [&](const Sequence* s) -> int64_t {
    int64_t p = s->request.priority;
    if (aging_ms > 0 && now > s->submit_time) {
      p += std::chrono::duration_cast<std::chrono::milliseconds>(now - s->submit_time).count() / aging_ms;
    }
    return p;
  };
  size_t best = 0;
  int64_t best_p = effective(waiting_[0]);
  for (size_t i = 1; i < waiting_.size(); ++i) {
    const Sequence* a = waiting_[i];
    const Sequence* b = waiting_[best];
    const int64_t pa = effective(a);
    bool better;
    if (a->preempted != b->preempted) {
      better = a->preempted;
    } else if (pa != best_p) {
      better = pa > best_p;
    } else {
      better = a->arrival < b->arrival;
    }
    if (better) {
      best = i;
      best_p = pa;
    }
  }
  Sequence* s = waiting_[best];
  if (pop) waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(best));
  return s;
}

void Scheduler::CapPrefillBudget(int32_t decodes, TimePoint now, int32_t* budget) const {
  if (decodes == 0) return;
  int32_t cap = options_.max_prefill_tokens_with_decodes;  // 0 = none
  const auto lower_cap = [&cap](int32_t to) { cap = cap > 0 ? std::min(cap, to) : to; };
  const int32_t rows = options_.mixed_step_rows;
  const bool decodes_take_a_quarter = rows == 0 || decodes <= rows / 4;  // of mixed_step_rows, when set
  if (rows > 0 && decodes_take_a_quarter) lower_cap(rows - decodes);
  // The thin budget. By hand: only while at most that many sequences are in the server (running
  // or queued): with more, once they all decode, prompts come in faster than thin steps take them
  // (as many finish a step). Not the decodes alone: a server falling behind has fewer of them,
  // which would keep it thin and behind. Automatic: the count is part of the budget.
  int32_t thin = 0;
  if (options_.thin_prefill_auto) {
    if (decodes_take_a_quarter) thin = AutoThinTokens();
  } else if (options_.thin_prefill_tokens > 0 &&
             running_.size() + waiting_.size() <= static_cast<size_t>(options_.thin_prefill_tokens)) {
    thin = options_.thin_prefill_tokens;
  }
  if (cap > 0 && thin >= cap) thin = 0;                   // no thinner than the caps
  if (options_.prefill_spread_steps == 0 && thin == 0) {  // nothing below needs the backlog
    if (cap > 0) *budget = std::min(*budget, cap);
    return;
  }
  // The backlog: prompt tokens queued or part-way through their prefill, and the oldest of them.
  WaitingSummary backlog = SummarizeWaiting();
  for (const Sequence* s : running_) {
    if (s->decoding()) continue;
    backlog.pending_tokens += s->pending();
    backlog.oldest = std::min(backlog.oldest, s->submit_time);
  }
  if (options_.prefill_spread_steps > 0) {
    const int64_t share = (backlog.pending_tokens + options_.prefill_spread_steps - 1) / options_.prefill_spread_steps;
    lower_cap(static_cast<int32_t>(std::clamp<int64_t>(share, options_.prefill_spread_min_tokens, int64_t{1} << 30)));
  }
  if (options_.thin_prefill_auto && thin > 0 && options_.thin_prefill_backlog_steps > 0) {
    const int64_t steps = options_.thin_prefill_backlog_steps;
    thin = static_cast<int32_t>(
        std::min<int64_t>(std::max<int64_t>(thin, (backlog.pending_tokens + steps - 1) / steps), int64_t{1} << 30));
  }
  // Nobody waiting leaves oldest at max: thin.
  if (thin > 0 && (backlog.oldest == TimePoint::max() || now - backlog.oldest <= options_.thin_prefill_max_wait)) {
    lower_cap(thin);
  }
  if (cap > 0) *budget = std::min(*budget, cap);
}

int32_t Scheduler::AutoThinTokens() const {
  if (!seen_prompt_ || !seen_output_) return 0;
  const double sequences = static_cast<double>(running_.size() + waiting_.size());
  const double output = std::max(1.0, average_output_tokens_);
  // A prompt of P tokens at sequences x P / output a step takes output / sequences steps.
  if (output > sequences * options_.thin_prefill_auto_prompt_steps) return 0;
  // Nearest, not up: averages that approach a 1:1 ratio from below must not add a token a step.
  const double tokens = std::round(sequences * average_prompt_tokens_ / output);
  return static_cast<int32_t>(std::clamp<double>(tokens, 1, 1 << 30));
}

void Scheduler::Plan(TimePoint now, PlannedStep& plan) {
  // The previous step's entries are overwritten in place: their token and block-table vectors
  // keep their capacity, so a steady decode step allocates nothing (allocation was ~40% of the
  // engine's host time a step at 256 streams: bench/engine_host_bench).
  size_t planned = 0;
  plan.sequences.clear();
  plan.encoder_tokens.clear();
  int32_t budget = options_.max_tokens_per_step;
  if (oom_prefill_cap_ > 0) budget = std::min(budget, oom_prefill_cap_ + static_cast<int32_t>(running_.size()));
  bool preempted_now = false;
  int32_t decodes = 0;   // decode rows planned so far (pass 0)
  int32_t prefills = 0;  // prefill chunks planned so far (pass 1 and admissions)

  auto add_step = [&](Sequence* s, int32_t chunk, int32_t cost, int32_t encoder_tokens) {
    if (planned == plan.steps.size()) plan.steps.emplace_back();
    SequenceStep& st = plan.steps[planned++];
    // Every field back to its default (none can leak from the step before), keeping the vectors'
    // capacity.
    std::vector<int32_t> tokens = std::move(st.tokens), block_table = std::move(st.block_table);
    st = SequenceStep();
    st.tokens = std::move(tokens);
    st.block_table = std::move(block_table);
    st.sequence_id = s->id;
    st.tokens.assign(s->tokens.begin() + s->num_computed, s->tokens.begin() + s->num_computed + chunk);
    st.start_position = s->num_computed;
    st.block_table = s->block_table;
    st.sample = s->num_computed + chunk == static_cast<int32_t>(s->tokens.size());
    st.num_generated = s->num_generated();
    st.params = &s->request.params;
    st.history = &s->tokens;
    st.multimodal = s->multimodal();
    plan.sequences.push_back(s);
    plan.encoder_tokens.push_back(encoder_tokens);
    budget -= cost;
  };

  // 1. Running sequences, oldest first: decodes (1 token each) in a first pass so prefill chunks
  //    can never crowd them out, then sequences still prefilling take what is left, images
  //    charged by PlanPrefillChunk (one whose next image does not fit sits this step out unless
  //    it is the step's first prefill). A sequence that needs a new block when the pool is empty
  //    preempts the newest running one (possibly itself). Prefills never need blocks here:
  //    admission reserved their whole prompt.
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1 && decodes > 0) {
      CapPrefillBudget(decodes, now, &budget);
      last_prefill_budget_with_decodes_ = budget;
    }
    if (pass == 1 && oom_prefill_cap_ > 0) budget = std::min(budget, oom_prefill_cap_);
    for (size_t i = 0; i < running_.size() && budget > 0;) {
      Sequence* s = running_[i];
      const bool decoding = s->decoding();
      // overlap_steps: a launched step brings its last id (it finishes when committed).
      if (decoding != (pass == 0) || s->num_generated() >= s->request.params.max_new_tokens) {
        ++i;
        continue;
      }
      engine_internal::PrefillChunk c{1, 1, 0};
      if (!decoding) c = engine_internal::PlanPrefillChunk(*s, budget, /*first_prefill=*/prefills == 0);
      if (c.tokens == 0) {
        ++i;
        continue;
      }
      bool self_preempted = false;
      while (!blocks_.EnsureCapacity(s->block_table, s->num_computed + c.tokens)) {
        Sequence* victim = running_.back();
        for (const Sequence* planned : plan.sequences) {
          // Only reachable if a prefill lost its reservation; never preempt planned work.
          if (planned == victim) victim = s;
        }
        Preempt(victim);
        preempted_now = true;
        if (victim == s) {
          self_preempted = true;
          break;
        }
      }
      if (self_preempted) continue;  // running_[i] is now the next sequence
      add_step(s, c.tokens, c.cost, c.encoder_tokens);
      if (decoding) {
        ++decodes;
      } else {
        ++prefills;
      }
      ++i;
    }
  }

  // 2. Admit waiting requests (best first, head-of-line) while the limit, budget and pool allow.
  //    Never in a step that preempted: that would thrash the pool. A request whose first chunk
  //    would be empty (its next image does not fit what is left, and something prefills before it)
  //    is not admitted this step and, head-of-line, neither is anything behind it: once the
  //    running prefills ahead of it are done it is the step's first prefill and runs. With
  //    max_prefill_hold, a step that decodes admits nothing until the waiting prompts can fill
  //    what is left for prefill or the oldest has waited that long (HeldForFullerPrefill).
  if (!preempted_now && !HeldByQueueDelay(now) && !HeldForFullerPrefill(now, decodes, prefills, budget)) {
    const int32_t limit = std::min(batch_limit_, options_.max_batch_size);
    while (budget > 0 && static_cast<int32_t>(running_.size()) < limit) {
      Sequence* s = PopBestWaiting(now, /*pop=*/false);
      if (s == nullptr) break;
      MatchCachedPrefix(s);  // its prefill then starts after the cached blocks
      const engine_internal::PrefillChunk c =
          engine_internal::PlanPrefillChunk(*s, budget, /*first_prefill=*/prefills == 0);
      // Blocks for all of its tokens up front, so its prefill chunks never need preemption.
      if (c.tokens == 0 || !blocks_.EnsureCapacity(s->block_table, static_cast<int64_t>(s->tokens.size()))) {
        ForgetCachedPrefix(s);
        break;
      }
      prefix_cache_hit_tokens_ += s->num_computed;
      prompt_tokens_scheduled_ += static_cast<int64_t>(s->tokens.size());
      PopBestWaiting(now, /*pop=*/true);
      running_.push_back(s);
      if (!s->admitted_once) {
        s->admitted_once = true;
        s->cached_prompt_tokens = s->num_computed;
        s->first_scheduled = now;
        RecordAverage(static_cast<double>(s->pending()), &average_prompt_tokens_, &seen_prompt_);
        if (hooks_.on_first_admit) hooks_.on_first_admit(s->request.request_id);
      }
      s->preempted = false;
      add_step(s, c.tokens, c.cost, c.encoder_tokens);
      ++prefills;
    }
  }
  plan.steps.resize(planned);
}

absl::Status Scheduler::InjectFaults(const PlannedStep& plan) {
  ++step_attempts_;
  const FaultInjectionOptions& f = options_.faults;
  if (f.step_latency.count() > 0) clock_->SleepFor(f.step_latency);
  if (f.stall_on_step > 0 && step_attempts_ == f.stall_on_step) {
    Log(absl::StrCat("injected stall of ", f.stall_duration.count(), " ms on step ", step_attempts_));
    clock_->SleepFor(f.stall_duration);
  }
  const int32_t num_seqs = static_cast<int32_t>(plan.steps.size());
  int64_t num_tokens = 0;
  for (const SequenceStep& st : plan.steps) num_tokens += static_cast<int64_t>(st.tokens.size());
  if (f.oom_above_sequences > 0 && num_seqs > f.oom_above_sequences) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "injected OOM: batch of ", num_seqs, " sequences > faults.oom_above_sequences=", f.oom_above_sequences));
  }
  if (f.oom_above_tokens > 0 && num_tokens > f.oom_above_tokens) {
    return absl::ResourceExhaustedError(
        absl::StrCat("injected OOM: step of ", num_tokens, " tokens > faults.oom_above_tokens=", f.oom_above_tokens));
  }
  for (Sequence* seq : plan.sequences) seq->executor_has_state = true;
  return absl::OkStatus();
}

namespace {

// The engine edge: no exception crosses into the scheduler; `who` threw becomes INTERNAL.
template <typename Result, typename Call>
Result AtEngineEdge(const char* who, Call&& call) {
  try {
    return call();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(who, " threw: ", e.what()));
  } catch (...) {
    return absl::InternalError(absl::StrCat(who, " threw a non-standard exception"));
  }
}

}  // namespace

void Scheduler::ThrowIfInjected() const {
  const FaultInjectionOptions& f = options_.faults;
  if (f.throw_on_step > 0 && step_attempts_ == f.throw_on_step) {
    throw std::runtime_error(absl::StrCat("injected exception on step ", step_attempts_));
  }
}

absl::StatusOr<StepResult> Scheduler::Execute(const PlannedStep& plan) {
  GLM_RETURN_IF_ERROR(InjectFaults(plan));
  return AtEngineEdge<absl::StatusOr<StepResult>>("executor", [&] {
    ThrowIfInjected();
    return executor_->Step(plan.steps);
  });
}

void Scheduler::Commit(const PlannedStep& plan, const StepResult& result, TimePoint now) {
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    Sequence* s = plan.sequences[i];
    if (s == nullptr) continue;  // finished while its step was in flight
    const SequenceStep& st = plan.steps[i];
    if (options_.overlap_steps) {  // counted as computed at launch
      s->in_flight_tokens -= static_cast<int32_t>(st.tokens.size());
    } else {
      s->num_computed += static_cast<int32_t>(st.tokens.size());
    }
    s->oom_alone_failures = 0;
    s->oom_alone_chunk = 0;
    s->batch_limit_before_oom = 0;
    RegisterWrittenBlocks(s);
    if (!st.sample) continue;
    const int32_t id = result.next_tokens[i];
    if (id < 0 || (limits_.vocab_size > 0 && id >= limits_.vocab_size)) {
      Finish(
          s,
          absl::InternalError(absl::StrCat("executor returned token id ", id, " for request ", s->request.request_id)),
          FinishReason::kError);
      continue;
    }
    if (s->placeholders > 0) {
      s->tokens[s->tokens.size() - s->placeholders] = id;  // the oldest placeholder is this step's
      --s->placeholders;
    } else {
      s->tokens.push_back(id);
    }
    if (!s->has_first_token) {
      s->has_first_token = true;
      s->first_token = now;
    }
    if (s->callbacks.on_tokens) {
      try {
        new_token_.assign(1, id);  // one buffer for every callback: no allocation a token
        s->callbacks.on_tokens(new_token_);
      } catch (...) {
        Log(absl::StrCat("on_tokens of request ", s->request.request_id, " threw"));
      }
    }
    if (std::find(s->stop_ids.begin(), s->stop_ids.end(), id) != s->stop_ids.end()) {
      Finish(s, absl::OkStatus(), FinishReason::kStop);
    } else if (s->committed_generated() >= s->request.params.max_new_tokens) {
      Finish(s, absl::OkStatus(), FinishReason::kLength);
    }
  }
}

void Scheduler::HandleOom(const PlannedStep& plan, const absl::Status& status) {
  ++oom_events_;
  consecutive_ok_steps_ = 0;
  const int32_t n = static_cast<int32_t>(plan.steps.size());
  for (Sequence* s : plan.sequences) {
    if (s->batch_limit_before_oom == 0) s->batch_limit_before_oom = batch_limit_;
  }
  if (n == 1) {
    Sequence* s = plan.sequences[0];
    SetBatchLimit(1, "out of memory with one sequence");
    while (static_cast<int32_t>(running_.size()) > batch_limit_) Preempt(running_.back());
    // A prefill chunk that does not fit alone may fit in halves (activations grow with its
    // tokens): the prefill tokens a step takes are capped at half of it and the request tried
    // again, down to one token. Only a step that cannot shrink counts towards failing it alone
    // (it failed with the full --max-batch-tokens chunk while a smaller one would have run).
    const int32_t chunk = static_cast<int32_t>(plan.steps[0].tokens.size());
    const bool shrank = s->oom_alone_chunk == 0 || chunk < s->oom_alone_chunk;
    s->oom_alone_chunk = chunk;
    if (chunk > 1 && shrank) {
      oom_prefill_cap_ = std::max(1, chunk / 2);
      Log(absl::StrCat("prefill tokens a step capped at ", oom_prefill_cap_, " (out of memory prefilling ", chunk,
                       " tokens of request ", s->request.request_id, " alone); oom events ", oom_events_));
      // The chunk's size, not the batch, did not fit: the batch limit before the OOM comes back.
      if (s->batch_limit_before_oom > batch_limit_) {
        SetBatchLimit(s->batch_limit_before_oom, "given back: a prefill chunk ran out of memory alone, now capped");
      }
      return;
    }
    if (++s->oom_alone_failures > options_.max_oom_retries_alone) {
      const SequenceStep& st = plan.steps[0];
      const std::string images =
          plan.encoder_tokens[0] > 0 ? absl::StrCat(", ", plan.encoder_tokens[0], " vision-encoder tokens") : "";
      const std::string msg = absl::StrCat(
          "out of memory running request ", s->request.request_id, " alone (batch 1, ", st.tokens.size(),
          " tokens at position ", st.start_position, images, ", sequence length ", s->tokens.size(), ", ",
          s->block_table.size(), " KV blocks of ", limits_.block_size, ") after ", s->oom_alone_failures,
          " attempts: it needs more device memory than this server has with nothing else running; send fewer "
          "prompt tokens, max_new_tokens or image pixels (",
          status.message(), ")");
      Log(msg);
      // Not RESOURCE_EXHAUSTED: retry policies (gRPC's, OpenAI's SDKs' on 429) would send it again
      // as it is, and it would fail the same way.
      const int32_t limit_before = s->batch_limit_before_oom;
      Finish(s, absl::FailedPreconditionError(msg), FinishReason::kError);
      if (limit_before > batch_limit_) {
        SetBatchLimit(limit_before, "given back: a request failed alone (its size ran out of memory)");
      }
    }
    return;
  }
  SetBatchLimit(std::max(1, std::min(batch_limit_, n) / 2), "out of memory");
  while (static_cast<int32_t>(running_.size()) > batch_limit_) Preempt(running_.back());
}

Scheduler::StepOutcome Scheduler::HandleFailedStep(PlannedStep& plan, const absl::Status& status) {
  // Entries a launched step's commit finished are gone (overlap_steps).
  size_t kept = 0;
  for (size_t i = 0; i < plan.sequences.size(); ++i) {
    if (plan.sequences[i] == nullptr) continue;
    if (kept != i) {
      std::swap(plan.steps[kept], plan.steps[i]);
      plan.sequences[kept] = plan.sequences[i];
      plan.encoder_tokens[kept] = plan.encoder_tokens[i];
    }
    ++kept;
  }
  plan.steps.resize(kept);
  plan.sequences.resize(kept);
  plan.encoder_tokens.resize(kept);
  if (plan.steps.empty()) return StepOutcome::kFailed;
  if (absl::IsResourceExhausted(status)) {
    HandleOom(plan, status);
    return StepOutcome::kOom;
  }
  for (Sequence* s : plan.sequences) Finish(s, status, FinishReason::kError);
  return StepOutcome::kFailed;
}

void Scheduler::CountDeviceTime(const StepResult& result, bool continues) {
  if (result.device_busy_us >= 0) device_busy_ns_ += static_cast<int64_t>(result.device_busy_us * 1000);
  if (continues && result.device_idle_us >= 0) device_idle_ns_ += static_cast<int64_t>(result.device_idle_us * 1000);
}

void Scheduler::CountCleanStep() {
  ++steps_;
  if (++consecutive_ok_steps_ >= options_.aimd_increase_after_steps) {
    consecutive_ok_steps_ = 0;
    if (batch_limit_ < options_.max_batch_size) {
      SetBatchLimit(batch_limit_ + 1, "additive increase after clean steps");
    }
    if (oom_prefill_cap_ > 0) {  // doubles back, as the batch limit grows back
      oom_prefill_cap_ = oom_prefill_cap_ >= options_.max_tokens_per_step / 2 ? 0 : oom_prefill_cap_ * 2;
      Log(oom_prefill_cap_ == 0 ? std::string("prefill tokens a step no longer capped (clean steps)")
                                : absl::StrCat("prefill tokens a step capped at ", oom_prefill_cap_, " (clean steps)"));
    }
  }
}

namespace {
int64_t Nanoseconds(Clock::Duration d) { return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(); }
}  // namespace

Scheduler::StepOutcome Scheduler::RunOnce() {
  if (options_.overlap_steps) return RunOnceOverlapped();
  const TimePoint now = clock_->Now();
  ExpireAndReap(now);
  PlannedStep& plan = plan_;
  const bool continues = running_after_last_step_;
  Plan(now, plan);
  if (plan.steps.empty()) return StepOutcome::kIdle;
  const TimePoint planned = clock_->Now();
  schedule_ns_ += Nanoseconds(planned - now);
  absl::StatusOr<StepResult> result = Execute(plan);
  const TimePoint executed = clock_->Now();
  const int64_t device_wait = result.ok() ? static_cast<int64_t>(result->device_wait_us * 1000) : 0;
  device_wait_ns_ += device_wait;
  executor_host_ns_ += std::max<int64_t>(0, Nanoseconds(executed - planned) - device_wait);
  if (result.ok() && result->next_tokens.size() != plan.steps.size()) {
    result = absl::InternalError(
        absl::StrCat("executor returned ", result->next_tokens.size(), " tokens for a batch of ", plan.steps.size()));
  }
  if (hooks_.on_step_end) {
    hooks_.on_step_end(static_cast<int32_t>(plan.steps.size()), result.status());
  }
  if (!result.ok()) return HandleFailedStep(plan, result.status());
  Commit(plan, *result, executed);
  commit_ns_ += Nanoseconds(clock_->Now() - executed);
  CountDeviceTime(*result, continues);
  running_after_last_step_ = !running_.empty();
  CountCleanStep();
  return StepOutcome::kStepped;
}

absl::Status Scheduler::LaunchPlan(const PlannedStep& plan) {
  GLM_RETURN_IF_ERROR(InjectFaults(plan));
  return AtEngineEdge<absl::Status>("executor", [&] {
    ThrowIfInjected();
    return executor_->Launch(plan.steps);
  });
}

void Scheduler::AdvanceLaunched(const PlannedStep& plan) {
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    Sequence* s = plan.sequences[i];
    const int32_t fed = static_cast<int32_t>(plan.steps[i].tokens.size());
    s->num_computed += fed;
    s->in_flight_tokens += fed;
    if (plan.steps[i].sample) {
      s->tokens.push_back(kTokenFromPreviousStep);
      ++s->placeholders;
    }
  }
}

bool Scheduler::PlanningMayPreempt() const {
  // Plan preempts only for a decode that needs a new block (prefills hold their whole prompt's).
  int32_t new_blocks = 0;
  for (const Sequence* s : running_) {
    if (s->decoding() &&
        blocks_.BlocksFor(int64_t{s->num_computed} + 1) > static_cast<int32_t>(s->block_table.size())) {
      ++new_blocks;
    }
  }
  return new_blocks > blocks_.num_free();
}

Scheduler::StepOutcome Scheduler::CollectInFlight() {
  const TimePoint start = clock_->Now();
  absl::StatusOr<StepResult> result =
      AtEngineEdge<absl::StatusOr<StepResult>>("executor Collect", [this] { return executor_->Collect(); });
  const TimePoint collected = clock_->Now();
  const int64_t device_wait = result.ok() ? static_cast<int64_t>(result->device_wait_us * 1000) : 0;
  device_wait_ns_ += device_wait;
  executor_host_ns_ += std::max<int64_t>(0, Nanoseconds(collected - start) - device_wait);
  PlannedStep& plan = in_flight_plan_;
  if (result.ok() && result->next_tokens.size() != plan.steps.size()) {
    result = absl::InternalError(
        absl::StrCat("executor returned ", result->next_tokens.size(), " tokens for a batch of ", plan.steps.size()));
  }
  if (hooks_.on_step_end) hooks_.on_step_end(static_cast<int32_t>(plan.steps.size()), result.status());
  StepOutcome outcome = StepOutcome::kStepped;
  if (result.ok()) {
    Commit(plan, *result, collected);
    commit_ns_ += Nanoseconds(clock_->Now() - collected);
    CountDeviceTime(*result, in_flight_continues_);
    CountCleanStep();
  } else {
    // The step ran but its ids are lost: its requests fail (a step launched after it fed ids it
    // never delivered). Their rows in that later step are then discarded.
    for (Sequence* s : plan.sequences) {
      if (s != nullptr) Finish(s, result.status(), FinishReason::kError);
    }
    outcome = StepOutcome::kFailed;
  }
  running_after_last_step_ = !running_.empty();
  in_flight_ = false;
  return outcome;
}

void Scheduler::DiscardInFlight() {
  if (!in_flight_) return;
  in_flight_ = false;
  try {
    (void)executor_->Collect();
  } catch (...) {
  }
}

Scheduler::StepOutcome Scheduler::RunOnceOverlapped() {
  const TimePoint now = clock_->Now();
  ExpireAndReap(now);
  // Planning from uncommitted state is safe unless it could preempt a sequence the accelerator is
  // still running (its blocks, its placeholder): then the step in flight is committed first.
  if (in_flight_ && PlanningMayPreempt()) return CollectInFlight();
  Plan(now, plan_);
  const TimePoint planned = clock_->Now();
  schedule_ns_ += Nanoseconds(planned - now);
  if (plan_.steps.empty()) return in_flight_ ? CollectInFlight() : StepOutcome::kIdle;
  const absl::Status launched = LaunchPlan(plan_);
  executor_host_ns_ += Nanoseconds(clock_->Now() - planned);
  if (!launched.ok()) {
    // Commit the step before it first: what the failure handling preempts or fails must not be
    // in flight.
    if (in_flight_) CollectInFlight();
    if (hooks_.on_step_end) hooks_.on_step_end(static_cast<int32_t>(plan_.steps.size()), launched);
    return HandleFailedStep(plan_, launched);
  }
  AdvanceLaunched(plan_);
  // With a step in flight the device has this one queued behind it: any gap is the host's.
  const bool continues = in_flight_ || running_after_last_step_;
  StepOutcome outcome = StepOutcome::kStepped;
  if (in_flight_) outcome = CollectInFlight();
  std::swap(plan_, in_flight_plan_);
  in_flight_continues_ = continues;
  in_flight_ = true;
  return outcome;
}

}  // namespace glmserve
