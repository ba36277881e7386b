// The LibTorch-free scheduler: continuous batching over an injected StepExecutor, paged-KV
// block accounting, preemption with recompute, and AIMD batch shrinking on out-of-memory.
// Single-threaded: the engine thread owns it (tests drive it directly with a fake clock).
// The contract is in runtime/engine/README.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/engine.h"
#include "runtime/engine/block_manager.h"
#include "runtime/engine/clock.h"
#include "runtime/generation.h"
#include "runtime/step_executor.h"

namespace glmserve {

// Test hooks that make steps fail on purpose. All off by default; production never sets them.
struct FaultInjectionOptions {
  // A step whose batch has more than this many sequences fails with RESOURCE_EXHAUSTED without
  // reaching the executor, as a real out-of-memory would. 0 = off.
  int32_t oom_above_sequences = 0;
  // A step that feeds more than this many tokens fails with RESOURCE_EXHAUSTED. 0 = off.
  int32_t oom_above_tokens = 0;
  // The K-th step attempt (1-based, OOM retries included) throws std::runtime_error where the
  // executor is called; the engine edge turns it into INTERNAL for that step's requests. 0 = off.
  int64_t throw_on_step = 0;
  // Added to every step attempt through Clock::SleepFor (a real sleep, or advancing a fake
  // clock). 0 = off.
  std::chrono::microseconds step_latency{0};
  // The K-th step attempt (1-based) sleeps stall_duration (Clock::SleepFor) before reaching the
  // executor: a hung step, for watchdog tests. 0 = off.
  int64_t stall_on_step = 0;
  std::chrono::milliseconds stall_duration{30'000};
};

struct SchedulerOptions {
  // Most sequences running at once (holding KV blocks, decoding or prefilling). The AIMD batch
  // limit starts here and never exceeds it. Must be >= 1.
  int32_t max_batch_size = 64;
  // Token budget of one step. Every running sequence in decode takes 1 token (oldest first),
  // then sequences still prefilling and newly admitted ones take prefill chunks from what is
  // left, so a long prompt is split across steps (chunked prefill) instead of stalling decodes.
  // Must be >= max_batch_size so every running sequence can decode in every step.
  //
  // Images (glm4v, InferenceRequest::multimodal) are prompt work too: the executor runs the vision
  // encoder for image k in the step whose chunk feeds image k's first token (image_offsets[k]),
  // so that chunk is charged images[k].num_tokens on top of its own tokens (which include the image
  // tokens the text model runs; tokens of an image whose first token came in an earlier chunk cost
  // 1 each, its features are kept by the executor). When the charge (with that first token) does
  // not fit what is left of the budget, the chunk ends just before the image's first token and
  // runs what it has. Only when the image starts the chunk and the sequence is the step's first
  // prefill (nothing else prefills in it) does it run over budget: the chunk is then that one
  // token and it takes all of the budget left, so an image larger than any budget still runs, in
  // a step of its own beside the decodes. The oldest running prefill is always the first prefill
  // (running prefills go before admissions, admission is head-of-line), so every image is reached
  // within a bounded number of steps, and decodes keep their 1 token every step throughout.
  int32_t max_tokens_per_step = 2048;
  // Prefill tokens a step may carry while sequences are decoding in it (chunked prefill's share
  // of a mixed step). A decode step's time is set by streaming the weights; prefill tokens add
  // compute on top, so this cap bounds how much a prompt arriving can stretch the inter-token
  // latency of everyone decoding. With nothing decoding, prefill takes all of
  // max_tokens_per_step (a burst of prompts is prefilled in big, efficient steps). Image encoder
  // charges count against this cap like prefill tokens (the over-budget rule above included).
  // 0 = no separate cap. Must be >= 0.
  int32_t max_prefill_tokens_with_decodes = 0;
  // Rows (decode rows plus prefill tokens) a step that decodes is filled to: while the decode rows
  // take at most a quarter of it, prefill beside them is cut to exactly what is left (and to
  // max_prefill_tokens_with_decodes when that is lower); with more decode rows only
  // max_prefill_tokens_with_decodes applies (there prefill must keep pace with as many sequences
  // finishing, and the steps are compute-bound anyway). A GPU's GEMMs cost about the same per row
  // up to a tile-friendly size and jump past it (on an H200, GLM-4-9B's layer GEMMs take 154 us
  // at 256 rows and 219 at 320; bench/results/gpu.md), so 64 decodes beside 256 prefill tokens
  // cost far more than beside 192. 0 = off. Must be >= 0.
  int32_t mixed_step_rows = 0;
  // While sequences decode, the prompt tokens waiting to be prefilled (queued requests and prompts
  // part-way through their prefill: the backlog) are spread over about this many steps: a step's
  // prefill is cut to ceil(backlog / prefill_spread_steps) tokens, but not below
  // prefill_spread_min_tokens (nor above what the two caps above leave). Few prompts waiting then
  // ride thin beside the decodes (a GPU whose GEMMs stream the weights up to many rows pays
  // little for a few prompt rows), while a burst still drains in big steps, so nobody waits long
  // for their first token. On an H200 with GLM-4-9B it lost 2-9% against the caps alone (a mixed
  // step's fixed part outweighs the GEMM time saved; bench/results/gpu.md). 0 = off (the caps
  // alone). Must be >= 0.
  int32_t prefill_spread_steps = 0;
  // The least prefill a step that decodes is cut to by prefill_spread_steps. Must be >= 1.
  int32_t prefill_spread_min_tokens = 64;
  // Thin prefill unless somebody waits: while at most this many sequences are in the server
  // (running or queued) and every prompt not yet through its prefill (queued, or part-way)
  // arrived less than thin_prefill_max_wait ago, a step that decodes carries at most this many
  // prefill tokens (below what the caps above leave); once one has waited longer, or more
  // sequences are in (prompts as long as the outputs would arrive faster than thin steps take
  // them in once they all decode), the caps alone apply.
  // Steady closed-loop serving on an H200 (GLM-4-9B, 128-token prompts and outputs, 1 s bound)
  // held 9% more tokens/s at 64 streams with 64 here than with the caps alone (8% at 32 streams
  // with 32), ITL p99 1.2x its p50 instead of 1.7x, but TTFT p99 2.4x (prompts arriving together
  // queue behind the thin budget); loads above the count ran as with the caps. Without the count,
  // 128 streams fell to 9,500 from 12,400 tok/s (bench/results/gpu.md, tenth session). It counts
  // the sequences in the server, not the decodes: a server that has fallen behind has fewer
  // decodes, which would keep it thin and behind. 0 = off; must be >= 0.
  int32_t thin_prefill_tokens = 0;
  // The thin budget chosen by the load instead of by hand (thin_prefill_tokens must then be 0):
  // each step it is the prompt tokens the server must take in a step to keep pace, the sequences
  // in the server times the prompt-to-output ratio it has seen (uncached prompt tokens of the
  // requests admitted lately over the tokens generated by those finished lately; closed-loop
  // 128-in / 128-out traffic at 32 streams gets 32) and, with thin_prefill_backlog_steps, high
  // enough to take in the backlog (prompt tokens queued or part-way) within that many steps. It
  // applies only while
  // - a prompt prefilled at that budget takes at most thin_prefill_auto_prompt_steps steps (that
  //   is about the tokens a request generates over the sequences in the server, whatever the
  //   prompt's length): few streams with long outputs would wait many steps for each first token,
  //   which slows a closed loop more than the thin steps speed it (4 phone agents: -20%);
  // - the decodes take at most a quarter of mixed_step_rows (when that is set): with more, a
  //   decode step is no longer bound by streaming the weights, and thin prefill in every step
  //   lost 3% at 128 streams.
  // The wait bound applies as above; until a request has finished, the caps alone. Measured on
  // an H200 (bench/results/gpu.md): closed loops +0-7% at 32-64 streams, TTFT p99 1.7-4.5x; open-loop
  // (Poisson) arrivals the same or 2% less throughput, TTFT p99 8-23x.
  bool thin_prefill_auto = false;
  // The most steps a prompt prefilled at the automatic thin budget may take. Must be >= 1.
  int32_t thin_prefill_auto_prompt_steps = 4;
  // The automatic thin budget is at least the backlog over this many steps: a burst then drains at
  // the caps' pace. In closed-loop traffic the thin budget's gain is the streams' waves spread
  // out (prompts that arrive together wait); draining them within 32 steps kept a third of the
  // gain at 64 streams and halved the TTFT p99 cost, within 16 steps none of the gain
  // (bench/results/gpu.md). 0 = off. Must be >= 0.
  int32_t thin_prefill_backlog_steps = 0;
  // How long a prompt may wait for its first token before the thin budget gives way. Must be >= 0
  // (0: it gives way as soon as any prompt waits, i.e. only steps with nothing waiting are thin).
  // A closed loop's prompts come in waves that wait longer than 100 ms (bench/results/gpu.md).
  std::chrono::microseconds thin_prefill_max_wait{1000000};
  // While sequences decode and no prompt is part-way through its prefill, new prompts are admitted
  // only once the waiting ones hold enough tokens to fill the step's prefill budget (what
  // max_prefill_tokens_with_decodes and mixed_step_rows leave), or the oldest of them has waited
  // this long. On a GPU a step that carries prefill beside decodes pays a fixed cost on top of the
  // prefill's own (the prompts' attention, more launches, a graph per layer): one such step with
  // two prompts instead of two with one each. Each prompt's first token comes at most this much
  // later. Preempted sequences are never held. 0 = admit at once. Must be >= 0.
  std::chrono::microseconds max_prefill_hold{0};
  // Prefix caching: a full KV block whose tokens (and every token before them) a later request's
  // prompt repeats is reused instead of computed again (BlockManager), so a shared system prompt or
  // the history of a multi-turn conversation is prefilled once while its blocks stay in the pool.
  // Blocks no request holds keep their content until the pool needs them. A prompt with images
  // reuses only the blocks before its first image token. Off: every prompt is computed in full.
  bool prefix_caching = false;
  // Batching window: while nothing is running, waiting requests are held until the oldest has
  // waited this long or max_batch_size requests are waiting, so the first batch starts fuller.
  // Once anything runs, arrivals join at the next step boundary regardless. 0 = never hold.
  // Must be >= 0.
  std::chrono::microseconds max_queue_delay{0};
  // Waiting requests are admitted by priority (higher first), then arrival. A waiting request's
  // effective priority grows by 1 per interval waited, so low priorities cannot starve.
  // 0 = no aging (strict priority). Within one effective priority admission is FIFO and
  // head-of-line: when the best request does not fit in the free KV blocks, nothing behind it
  // is admitted either, so long prompts are never overtaken forever. Must be >= 0.
  std::chrono::milliseconds priority_aging_interval{1000};
  // AIMD: after this many consecutive successful steps the batch limit grows by 1 (up to
  // max_batch_size). An out-of-memory step halves it. Must be >= 1.
  int32_t aimd_increase_after_steps = 32;
  // A sequence whose step runs out of memory while it is alone in the batch is retried this
  // many more times; then only it fails with RESOURCE_EXHAUSTED. Must be >= 0.
  int32_t max_oom_retries_alone = 2;
  // Overlapped steps: step N+1 is planned and launched (StepExecutor::Launch) before step N's ids
  // are collected and committed, so planning, staging and committing (the engine's and the
  // executor's host time, during which a GPU otherwise idles: ~0.2 ms a step on an H200,
  // bench/results/gpu.md) run while the accelerator computes. A decode row continuing from step N
  // feeds kTokenFromPreviousStep, which the executor takes from N's ids. The ids every request
  // gets are the same as without; what differs: a sequence that stops on a stop id in step N, is
  // cancelled or passes its deadline has run one more row in step N+1, discarded (and a
  // sequence that ends at max_new_tokens in step N is not planned into N+1), and a request that
  // arrives while step N runs is admitted into N+2, N+1 being planned already (its first token
  // about one step later than without). Steps go
  // synchronous (collect, then plan) while planning could preempt (a decode needs a new KV block
  // and the pool could run short) and after a launch fails; an error the executor reports only
  // at Collect fails that step's requests (an out-of-memory is reported at Launch, retried as
  // without overlap).
  bool overlap_steps = false;
  FaultInjectionOptions faults;
  // Receives log lines, each an event off the normal path (batch-limit changes, alone-OOM failures,
  // a callback that threw, an injected stall). Null = stderr.
  std::function<void(const std::string&)> log;
};

// Called on the scheduler's thread, for the engine's bookkeeping. All optional.
struct SchedulerHooks {
  // First time a request is admitted into the running batch (not on resume after preemption).
  std::function<void(const std::string& request_id)> on_first_admit;
  // After a request's on_done returned. `was_admitted`: it ever ran.
  std::function<void(const std::string& request_id, const RequestResult& result, bool was_admitted)>
      on_request_finished;
  // The AIMD batch limit changed.
  std::function<void(int32_t old_limit, int32_t new_limit)> on_batch_limit_change;
  // After every step attempt (a heartbeat): the batch size and the step's status (OK,
  // RESOURCE_EXHAUSTED, or another error). Runs before any request of that batch finishes.
  std::function<void(int32_t batch_size, const absl::Status& status)> on_step_end;
};

// What Submit checks before accepting: derived from the executor and the model.
struct RequestLimits {
  int32_t block_size = 0;
  int32_t num_blocks = 0;
  int32_t max_position_embeddings = 0;  // 0 = unknown, unchecked
  int32_t vocab_size = 0;               // 0 = unknown, unchecked
};

// INVALID_ARGUMENT naming the field when the request can never run.
absl::Status ValidateRequest(const InferenceRequest& request, const RequestLimits& limits);
absl::Status ValidateSchedulerOptions(const SchedulerOptions& options);

namespace engine_internal {
struct Sequence;
}  // namespace engine_internal

class Scheduler {
 public:
  using TimePoint = Clock::TimePoint;

  // `executor` and `clock` must outlive the scheduler. INVALID_ARGUMENT on a bad option.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(SchedulerOptions options, StepExecutor* executor,
                                                           Clock* clock, const ModelInfo& model_info,
                                                           SchedulerHooks hooks = {});
  ~Scheduler();

  // Validates and queues. On OK the scheduler owns the request and on_done runs exactly once.
  absl::Status Add(InferenceRequest request, RequestCallbacks callbacks, TimePoint submit_time);
  // Finishes a waiting or running request now with CANCELLED (no step is in flight between
  // calls). Unknown ids are ignored.
  void Cancel(const std::string& request_id);
  // Finishes everything with `status` (CANCELLED on shutdown).
  void CancelAll(const absl::Status& status);

  enum class StepOutcome {
    kIdle,     // nothing to run (or held by max_queue_delay)
    kStepped,  // a step ran and was committed
    kOom,      // the step ran out of memory; the limit shrank; the next call retries
    kFailed,   // the step failed otherwise; its requests finished with the error
  };
  // One step boundary: expire deadlines, plan (admit, preempt), execute, commit, call back.
  StepOutcome RunOnce();

  bool HasWork() const;                   // anything waiting, running or launched
  bool ReadyToStep(TimePoint now) const;  // RunOnce would run a step now
  // When an idle scheduler must look again (queue-delay end, earliest waiting deadline);
  // TimePoint::max() when only new input can change anything.
  TimePoint NextWakeTime(TimePoint now) const;

  EngineStats stats() const;
  int32_t batch_limit() const { return batch_limit_; }
  const RequestLimits& limits() const { return limits_; }

 private:
  using Sequence = engine_internal::Sequence;
  struct PlannedStep {
    std::vector<SequenceStep> steps;
    std::vector<Sequence*> sequences;     // parallel to steps
    std::vector<int32_t> encoder_tokens;  // parallel to steps: images' num_tokens charged to each
  };

  Scheduler(SchedulerOptions options, StepExecutor* executor, Clock* clock, const ModelInfo& model_info,
            SchedulerHooks hooks, RequestLimits limits);

  void ExpireAndReap(TimePoint now);
  // What the admission holds (HeldByQueueDelay, HeldForFullerPrefill) look at in the waiting
  // queue: its oldest submit time and the tokens its sequences have left to feed; `resuming` when
  // a preempted sequence waits there (resuming work is never held).
  struct WaitingSummary {
    bool resuming = false;
    TimePoint oldest = TimePoint::max();
    int64_t pending_tokens = 0;
  };
  WaitingSummary SummarizeWaiting() const;
  bool HeldByQueueDelay(TimePoint now) const;
  // max_prefill_hold: admissions wait this step (`decodes` decode rows and `prefills` prefill
  // chunks planned so far, `budget` tokens left for prefill).
  bool HeldForFullerPrefill(TimePoint now, int32_t decodes, int32_t prefills, int32_t budget) const;
  // Plans the next step into `plan` (emptied first; its buffers are reused).
  void Plan(TimePoint now, PlannedStep& plan);
  // Lowers the budget left for prefill when the step already holds `decodes` decode rows:
  // max_prefill_tokens_with_decodes, mixed_step_rows minus the decodes, the backlog's share
  // (prefill_spread_steps) and the thin budget (thin_prefill_tokens, or thin_prefill_auto's) while
  // no prompt has waited too long.
  void CapPrefillBudget(int32_t decodes, TimePoint now, int32_t* budget) const;
  // thin_prefill_auto's budget before the backlog rule; 0 where it does not apply (no ratio yet,
  // or a prompt would take more than thin_prefill_auto_prompt_steps steps at it).
  int32_t AutoThinTokens() const;
  Sequence* PopBestWaiting(TimePoint now, bool pop);
  // The fault injection every executor call goes through (faults): the injected failure, or OK.
  absl::Status InjectFaults(const PlannedStep& plan);
  // faults.throw_on_step: throws on that step attempt (called inside the engine edge).
  void ThrowIfInjected() const;
  absl::StatusOr<StepResult> Execute(const PlannedStep& plan);
  void Commit(const PlannedStep& plan, const StepResult& result, TimePoint now);
  // overlap_steps: RunOnce's form; Launch(plan_) and what a launched step changes at once (fed
  // tokens count as computed, a sampled row's id is a kTokenFromPreviousStep placeholder);
  // whether planning now could need a preemption (then the step in flight is collected first);
  // collecting and committing the step in flight; collecting it for nothing (shutdown).
  StepOutcome RunOnceOverlapped();
  absl::Status LaunchPlan(const PlannedStep& plan);
  void AdvanceLaunched(const PlannedStep& plan);
  bool PlanningMayPreempt() const;
  StepOutcome CollectInFlight();
  void DiscardInFlight();
  // After the step attempt `plan` failed with `status` (nothing of it committed): OOM shrinks the
  // batch (kOom), anything else fails its requests (kFailed).
  StepOutcome HandleFailedStep(PlannedStep& plan, const absl::Status& status);
  // AIMD's additive increase after a committed step.
  void CountCleanStep();
  // Adds a committed step's device timing; `continues`: sequences were running when the step
  // before it was committed.
  void CountDeviceTime(const StepResult& result, bool continues);
  void HandleOom(const PlannedStep& plan, const absl::Status& status);
  void SetBatchLimit(int32_t limit, const char* why);
  void Preempt(Sequence* seq);
  // Gives back `seq`'s blocks: nothing of it is computed any more.
  void ReleaseBlocks(Sequence* seq);
  // Prefix caching: takes the cached blocks that start `seq`'s tokens (admission), gives them back
  // (an admission that did not happen), and registers the full blocks its steps have written.
  void MatchCachedPrefix(Sequence* seq);
  void ForgetCachedPrefix(Sequence* seq);
  void RegisterWrittenBlocks(Sequence* seq);
  // ReleaseSequence on the executor if a Step has seen `seq` since its last release.
  void ReleaseExecutorState(Sequence* seq);
  void Finish(Sequence* seq, absl::Status status, FinishReason reason);
  void Log(const std::string& line) const;

  SchedulerOptions options_;
  StepExecutor* executor_;
  Clock* clock_;
  std::vector<int32_t> eos_token_ids_;
  SchedulerHooks hooks_;
  RequestLimits limits_;
  BlockManager blocks_;

  std::unordered_map<int64_t, std::unique_ptr<Sequence>> sequences_;
  std::unordered_map<std::string, Sequence*> by_request_id_;
  std::vector<Sequence*> running_;  // admission order: oldest first
  std::vector<Sequence*> waiting_;  // unordered; ranked on admission
  // RunOnce's step, kept between steps only for its buffers' capacity (its pointers go stale).
  // With overlap_steps, the step launched last while in_flight_ (Finish nulls a finished
  // sequence's entry in both plans: its row's result is discarded).
  PlannedStep plan_;
  PlannedStep in_flight_plan_;
  bool in_flight_ = false;
  // Device timing (EngineStats::device_busy_ns / device_idle_ns): whether sequences were running
  // when the last step was committed (the device's gap before the next one is then the host's),
  // and that, for the step in flight, as it was launched.
  bool running_after_last_step_ = false;
  bool in_flight_continues_ = false;
  int64_t device_busy_ns_ = 0, device_idle_ns_ = 0;
  // EngineStats' step phases, nanoseconds (clock_'s time).
  int64_t schedule_ns_ = 0, executor_host_ns_ = 0, device_wait_ns_ = 0, commit_ns_ = 0;
  std::vector<int32_t> new_token_;  // Commit's on_tokens argument, one id at a time
  int64_t next_sequence_id_ = 1;
  uint64_t next_arrival_ = 0;

  int32_t batch_limit_;
  // Prefill tokens a step may take after a chunk ran out of memory alone (0: uncapped); halved by
  // HandleOom, doubled back after clean steps as the batch limit grows back.
  int32_t oom_prefill_cap_ = 0;
  int32_t consecutive_ok_steps_ = 0;
  int64_t step_attempts_ = 0;
  int64_t steps_ = 0;
  int64_t oom_events_ = 0;
  int64_t preemptions_ = 0;
  int64_t finished_ = 0;
  int64_t prefix_cache_hit_tokens_ = 0;
  int64_t prompt_tokens_scheduled_ = 0;
  int32_t last_prefill_budget_with_decodes_ = 0;
  // thin_prefill_auto: moving averages (weight 1/16 a request) of the uncached prompt tokens a
  // request brings at its first admission and of the tokens a request generated by its finish.
  double average_prompt_tokens_ = 0.0;
  double average_output_tokens_ = 0.0;
  bool seen_prompt_ = false;
  bool seen_output_ = false;
};

}  // namespace glmserve
