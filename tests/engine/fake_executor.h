// A deterministic StepExecutor for engine tests. It keeps a simulated paged KV cache (one
// (sequence, token, prefix) record per slot), so it can check what a real paged-attention
// executor relies on: every position written lies inside the block table given, no block a
// sequence writes (from the one holding start_position on) is in another sequence's table of the
// batch, and the KV of positions [0, start_position) read back is exactly the sequence's history.
// With AllowSharedPrefixes (prefix caching) those read-only blocks may have been written by
// another sequence, and be read by several in one batch, if what was written there was computed
// from the same tokens (every token up to that position). The next token is computed from that read-back KV:
//   next = (sum of history * 31 + length) % vocab
// with stop ids masked (bumped to the next non-stop id) while num_generated < min_new_tokens.
// For multimodal sequences it models the vision side of the executor contract: image k is
// "encoded" in the step whose chunk feeds image_offsets[k], its features are kept per sequence
// until ReleaseSequence, and a chunk that feeds a later token of image k without them held is an
// error (as is a sequence restarted at position 0 still holding features, a release of a
// sequence no Step carried since its last release, or the multimodal pointer changing).
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/engine/clock.h"
#include "runtime/step_executor.h"

namespace glmserve::testing {

class FakeExecutor : public StepExecutor {
 public:
  FakeExecutor(int32_t block_size, int32_t num_blocks, int32_t vocab, std::vector<int32_t> eos_ids = {})
      : block_size_(block_size),
        num_blocks_(num_blocks),
        vocab_(vocab),
        eos_ids_(std::move(eos_ids)),
        kv_(static_cast<size_t>(block_size) * num_blocks, Slot{-1, -1, 0}) {}

  int32_t block_size() const override { return block_size_; }
  int32_t num_blocks() const override { return num_blocks_; }

  // Each Step advances this clock by `d` (deadline tests), if set.
  void AdvanceClockPerStep(FakeClock* clock, std::chrono::milliseconds d) {
    clock_ = clock;
    step_time_ = d;
  }
  // Each Step reports this much of its time as waiting for a device (StepResult::device_wait_us).
  void ReportDeviceWait(std::chrono::microseconds d) { device_wait_ = d; }
  // Each Step reports the device's timing of it (StepResult::device_busy_us / device_idle_us).
  void ReportDeviceTime(double busy_us, double idle_us) {
    device_busy_us_ = busy_us;
    device_idle_us_ = idle_us;
  }
  // Steps with more than `n` sequences return RESOURCE_EXHAUSTED (0 = never).
  void set_oom_above_sequences(int32_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    oom_above_sequences_ = n;
  }
  // The out-of-memory above comes after the step wrote its KV, as a real executor's may (a forward
  // that ran, then failed): the engine must treat those positions as not computed.
  void set_oom_after_writing(bool v) {
    std::lock_guard<std::mutex> lock(mu_);
    oom_after_writing_ = v;
  }
  // Every step returns RESOURCE_EXHAUSTED while set.
  void set_always_oom(bool v) {
    std::lock_guard<std::mutex> lock(mu_);
    always_oom_ = v;
  }
  // While closed, Step blocks (up to 30 s, a safety net) until Open().
  void CloseGate() {
    std::lock_guard<std::mutex> lock(mu_);
    gate_open_ = false;
  }
  // Notifies under the lock: a Step woken by the gate may end the test, and the executor with it,
  // before a notify after the unlock would run (ThreadSanitizer).
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    gate_open_ = true;
    cv_.notify_all();
  }
  // Waits until some Step is blocked at the closed gate.
  bool WaitBlockedAtGate(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [this] { return blocked_at_gate_; });
  }

  // Steps that would run more than `n` vision-encoder tokens (the num_tokens of every image whose
  // first token they feed) return RESOURCE_EXHAUSTED, as an encoder OOM would (0 = never).
  void set_oom_encoder_tokens_above(int32_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    oom_encoder_tokens_above_ = n;
  }

  // One image encoded by a successful step.
  struct Encode {
    size_t step;  // index into batches()
    int64_t sequence_id;
    size_t image;
  };
  std::vector<Encode> encodes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return encodes_;
  }
  // Every ReleaseSequence call, in order.
  std::vector<int64_t> released() const {
    std::lock_guard<std::mutex> lock(mu_);
    return released_;
  }
  // Sequences some Step carried and that were not released since.
  std::set<int64_t> unreleased() const {
    std::lock_guard<std::mutex> lock(mu_);
    return live_;
  }

  void ReleaseSequence(int64_t sequence_id) override {
    std::lock_guard<std::mutex> lock(mu_);
    released_.push_back(sequence_id);
    if (live_.erase(sequence_id) == 0) {
      Error(absl::StrCat("ReleaseSequence(", sequence_id, ") but no Step carried it since its last release"));
    }
    features_.erase(sequence_id);
  }

  // Overlapped steps (SchedulerOptions::overlap_steps): Launch checks what the engine promises
  // of kTokenFromPreviousStep (only a sampled decode row's one token, also its history's last
  // entry, of a sequence that sampled in the step launched before, which is not collected) and
  // that no more than two steps are ever out, then runs the default (Step at once, the token
  // resolved from the previous result).
  absl::Status Launch(const std::vector<SequenceStep>& batch) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++launches_;
      if (outstanding_ >= 2) Error("Launch with two steps out");
      for (const SequenceStep& st : batch) {
        if (std::find(st.tokens.begin(), st.tokens.end(), kTokenFromPreviousStep) == st.tokens.end()) continue;
        ++placeholder_rows_;
        if (st.tokens.size() != 1 || !st.sample || st.history == nullptr || st.history->empty() ||
            st.history->back() != kTokenFromPreviousStep) {
          Error(absl::StrCat("seq ", st.sequence_id, ": kTokenFromPreviousStep outside a decode row's last token"));
        }
        if (outstanding_ == 0 || last_launch_sampled_.count(st.sequence_id) == 0) {
          Error(absl::StrCat("seq ", st.sequence_id, ": kTokenFromPreviousStep but no launched step samples it"));
        }
      }
    }
    absl::Status status = StepExecutor::Launch(batch);
    if (status.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      ++outstanding_;
      max_outstanding_ = std::max(max_outstanding_, outstanding_);
      last_launch_sampled_.clear();
      for (const SequenceStep& st : batch) {
        if (st.sample) last_launch_sampled_.insert(st.sequence_id);
      }
    }
    return status;
  }
  absl::StatusOr<StepResult> Collect() override {
    absl::StatusOr<StepResult> result = StepExecutor::Collect();
    std::lock_guard<std::mutex> lock(mu_);
    if (result.ok()) --outstanding_;
    if (++collects_ == fail_collect_)
      return absl::InternalError(absl::StrCat("fake device fault at collect ", collects_));
    return result;
  }
  // The K-th Collect (1-based) reports INTERNAL, as a device fault seen only there would.
  void set_fail_collect(int64_t k) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_collect_ = k;
  }
  int64_t launches() const {
    std::lock_guard<std::mutex> lock(mu_);
    return launches_;
  }
  int64_t placeholder_rows() const {
    std::lock_guard<std::mutex> lock(mu_);
    return placeholder_rows_;
  }
  int32_t max_outstanding() const {
    std::lock_guard<std::mutex> lock(mu_);
    return max_outstanding_;
  }
  int32_t outstanding() const {
    std::lock_guard<std::mutex> lock(mu_);
    return outstanding_;
  }

  // Prefix caching: KV read back may come from another sequence with the same prefix.
  void AllowSharedPrefixes(bool allow) {
    std::lock_guard<std::mutex> lock(mu_);
    shared_prefixes_ = allow;
  }

  std::vector<std::string> errors() const {
    std::lock_guard<std::mutex> lock(mu_);
    return errors_;
  }
  std::vector<std::vector<SequenceStep>> batches() const {  // copies of every batch seen
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }
  int64_t num_steps() const {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int64_t>(batches_.size());
  }
  int32_t max_batch_seen() const {
    std::lock_guard<std::mutex> lock(mu_);
    return max_batch_seen_;
  }

  // The ids a request produces alone: the same formula without the KV bookkeeping.
  std::vector<int32_t> Reference(std::vector<int32_t> history, int32_t max_new, int32_t min_new,
                                 const std::vector<int32_t>& stop_ids) const {
    const std::vector<int32_t>& stops = stop_ids.empty() ? eos_ids_ : stop_ids;
    std::vector<int32_t> out;
    while (static_cast<int32_t>(out.size()) < max_new) {
      int64_t sum = 0;
      for (int32_t t : history) sum += t;
      const int32_t id =
          Next(sum, static_cast<int64_t>(history.size()), static_cast<int32_t>(out.size()), min_new, stops);
      out.push_back(id);
      history.push_back(id);
      if (std::find(stops.begin(), stops.end(), id) != stops.end()) break;
    }
    return out;
  }

  absl::StatusOr<StepResult> Step(const std::vector<SequenceStep>& batch) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!gate_open_) {
      blocked_at_gate_ = true;
      cv_.notify_all();
      cv_.wait_for(lock, std::chrono::seconds(30), [this] { return gate_open_; });
      blocked_at_gate_ = false;
    }
    if (clock_ != nullptr) clock_->Advance(step_time_);  // no listener locks our mu_
    batches_.push_back(batch);
    max_batch_seen_ = std::max<int32_t>(max_batch_seen_, static_cast<int32_t>(batch.size()));
    for (const SequenceStep& st : batch) live_.insert(st.sequence_id);
    const bool oom =
        always_oom_ || (oom_above_sequences_ > 0 && static_cast<int32_t>(batch.size()) > oom_above_sequences_);
    if (oom && !oom_after_writing_) {
      return absl::ResourceExhaustedError(absl::StrCat("fake OOM with ", batch.size(), " sequences"));
    }
    int64_t encoder_tokens = 0;
    for (const SequenceStep& st : batch) {
      for (size_t k : ImagesStartingIn(st)) encoder_tokens += st.multimodal->images[k].num_tokens;
    }
    if (oom_encoder_tokens_above_ > 0 && encoder_tokens > oom_encoder_tokens_above_) {
      return absl::ResourceExhaustedError(absl::StrCat("fake vision-encoder OOM with ", encoder_tokens, " tokens"));
    }
    CheckAndEncodeImages(batch);
    // No block a sequence writes is in another sequence's table of the batch; without shared
    // prefixes, no block at all is.
    std::map<int32_t, int64_t> owned_blocks;  // block -> the sequence writing it
    for (const SequenceStep& st : batch) {
      const size_t first_owned = shared_prefixes_ ? static_cast<size_t>(st.start_position / block_size_) : 0;
      for (size_t j = 0; j < st.block_table.size(); ++j) {
        const int32_t b = st.block_table[j];
        if (b < 0 || b >= num_blocks_) Error(absl::StrCat("seq ", st.sequence_id, ": bad block ", b));
        if (j >= first_owned && !owned_blocks.emplace(b, st.sequence_id).second) {
          Error(absl::StrCat("block ", b, " shared within a batch (seq ", st.sequence_id, ")"));
        }
      }
    }
    for (const SequenceStep& st : batch) {
      const size_t first_owned = shared_prefixes_ ? static_cast<size_t>(st.start_position / block_size_) : 0;
      for (size_t j = 0; j < first_owned && j < st.block_table.size(); ++j) {
        if (owned_blocks.count(st.block_table[j]) > 0) {
          Error(absl::StrCat("seq ", st.sequence_id, " reads block ", st.block_table[j], " another sequence writes"));
        }
      }
    }
    StepResult result;
    for (const SequenceStep& st : batch) {
      const int64_t end = st.start_position + static_cast<int64_t>(st.tokens.size());
      if (st.tokens.empty()) Error(absl::StrCat("seq ", st.sequence_id, ": empty step"));
      if (end > static_cast<int64_t>(st.block_table.size()) * block_size_) {
        Error(absl::StrCat("seq ", st.sequence_id, ": position ", end - 1, " outside its ", st.block_table.size(),
                           " blocks"));
        result.next_tokens.push_back(-1);
        continue;
      }
      if (st.params == nullptr || st.history == nullptr) {
        Error(absl::StrCat("seq ", st.sequence_id, ": params/history null"));
      }
      // Read back positions [0, start) from the paged KV and check them against history.
      int64_t sum = 0;
      uint64_t prefix = 0;  // of history[0, pos]: what the KV at pos was computed from
      for (int32_t pos = 0; pos < st.start_position; ++pos) {
        const Slot& slot = kv_[SlotIndex(st.block_table, pos)];
        if (st.history != nullptr) prefix = PrefixHash(prefix, (*st.history)[pos]);
        const bool same_sequence = slot.sequence_id == st.sequence_id;
        if ((!same_sequence && !shared_prefixes_) || slot.prefix != prefix ||
            (st.history != nullptr && slot.token != (*st.history)[pos])) {
          Error(absl::StrCat("seq ", st.sequence_id, ": KV at position ", pos, " holds (seq ", slot.sequence_id,
                             ", token ", slot.token, ")"));
        }
        sum += slot.token;
      }
      for (size_t i = 0; i < st.tokens.size(); ++i) {
        const int32_t pos = st.start_position + static_cast<int32_t>(i);
        if (st.history != nullptr && (*st.history)[pos] != st.tokens[i]) {
          Error(absl::StrCat("seq ", st.sequence_id, ": fed token differs from history"));
        }
        prefix = PrefixHash(prefix, st.tokens[i]);
        kv_[SlotIndex(st.block_table, pos)] = Slot{st.sequence_id, st.tokens[i], prefix};
        sum += st.tokens[i];
      }
      if (!st.sample) {
        result.next_tokens.push_back(-1);
        continue;
      }
      if (st.history != nullptr && end != static_cast<int64_t>(st.history->size())) {
        Error(absl::StrCat("seq ", st.sequence_id, ": sample=true but history has ", st.history->size(),
                           " tokens, fed up to ", end));
      }
      const GenerationParams& p = *st.params;
      const std::vector<int32_t>& stops = p.stop_token_ids.empty() ? eos_ids_ : p.stop_token_ids;
      result.next_tokens.push_back(Next(sum, end, st.num_generated, p.min_new_tokens, stops));
    }
    if (oom)
      return absl::ResourceExhaustedError(absl::StrCat("fake OOM after writing KV, ", batch.size(), " sequences"));
    result.device_wait_us = static_cast<double>(device_wait_.count());
    result.device_busy_us = device_busy_us_;
    result.device_idle_us = device_idle_us_;
    return result;
  }

 private:
  // Images whose first token `st` feeds.
  static std::vector<size_t> ImagesStartingIn(const SequenceStep& st) {
    std::vector<size_t> out;
    const MultimodalPrompt* mm = st.multimodal;
    if (mm == nullptr) return out;
    const int64_t end = st.start_position + static_cast<int64_t>(st.tokens.size());
    for (size_t k = 0; k < mm->images.size(); ++k) {
      if (mm->image_offsets[k] >= st.start_position && mm->image_offsets[k] < end) out.push_back(k);
    }
    return out;
  }

  void CheckAndEncodeImages(const std::vector<SequenceStep>& batch) {
    for (const SequenceStep& st : batch) {
      auto [it, first_seen] = multimodal_of_.emplace(st.sequence_id, st.multimodal);
      if (!first_seen && it->second != st.multimodal) {
        Error(absl::StrCat("seq ", st.sequence_id, ": multimodal pointer changed between steps"));
      }
      if (st.start_position == 0 && features_.count(st.sequence_id) > 0) {
        Error(absl::StrCat("seq ", st.sequence_id, ": restarted at position 0 still holding image features"));
      }
      const MultimodalPrompt* mm = st.multimodal;
      if (mm == nullptr) continue;
      std::set<size_t>& held = features_[st.sequence_id];
      for (size_t k : ImagesStartingIn(st)) {
        held.insert(k);
        encodes_.push_back(Encode{batches_.size() - 1, st.sequence_id, k});
      }
      const int64_t end = st.start_position + static_cast<int64_t>(st.tokens.size());
      for (size_t k = 0; k < mm->images.size(); ++k) {
        const int64_t begin = mm->image_offsets[k];
        const bool overlaps = begin < end && begin + mm->images[k].num_tokens > st.start_position;
        if (overlaps && held.count(k) == 0) {
          Error(absl::StrCat("seq ", st.sequence_id, ": fed tokens of image ", k, " without its features"));
        }
      }
    }
  }

  struct Slot {
    int64_t sequence_id;
    int32_t token;
    uint64_t prefix;  // PrefixHash over the writer's tokens [0, position]
  };
  static uint64_t PrefixHash(uint64_t h, int32_t token) {
    return (h ^ static_cast<uint32_t>(token)) * 0x100000001b3ull + 0x9e3779b97f4a7c15ull;
  }

  size_t SlotIndex(const std::vector<int32_t>& table, int32_t pos) const {
    return static_cast<size_t>(table[pos / block_size_]) * block_size_ + pos % block_size_;
  }

  int32_t Next(int64_t sum, int64_t len, int32_t num_generated, int32_t min_new,
               const std::vector<int32_t>& stops) const {
    int32_t id = static_cast<int32_t>((sum * 31 + len + int64_t{num_generated} * 7919) % vocab_);
    if (num_generated < min_new) {
      while (std::find(stops.begin(), stops.end(), id) != stops.end()) id = (id + 1) % vocab_;
    }
    return id;
  }

  void Error(std::string e) {
    if (errors_.size() < 50) errors_.push_back(std::move(e));
  }

  const int32_t block_size_;
  const int32_t num_blocks_;
  const int32_t vocab_;
  const std::vector<int32_t> eos_ids_;
  FakeClock* clock_ = nullptr;
  bool oom_after_writing_ = false;
  int64_t launches_ = 0, collects_ = 0, fail_collect_ = 0, placeholder_rows_ = 0;
  int32_t outstanding_ = 0, max_outstanding_ = 0;
  std::set<int64_t> last_launch_sampled_;
  std::chrono::milliseconds step_time_{0};
  std::chrono::microseconds device_wait_{0};
  double device_busy_us_ = -1, device_idle_us_ = -1;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Slot> kv_;
  std::vector<std::string> errors_;
  std::vector<std::vector<SequenceStep>> batches_;
  int32_t max_batch_seen_ = 0;
  int32_t oom_above_sequences_ = 0;
  int32_t oom_encoder_tokens_above_ = 0;
  std::vector<Encode> encodes_;
  std::vector<int64_t> released_;
  std::set<int64_t> live_;
  std::map<int64_t, std::set<size_t>> features_;              // per sequence: images encoded, held
  std::map<int64_t, const MultimodalPrompt*> multimodal_of_;  // per sequence: the pointer first seen
  bool always_oom_ = false;
  bool gate_open_ = true;
  bool shared_prefixes_ = false;
  bool blocked_at_gate_ = false;
};

}  // namespace glmserve::testing
