// Scheduler tests: single-threaded, driven step by step with a fake clock and FakeExecutor.
#include "runtime/engine/scheduler.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/engine/fake_executor.h"
#include "tests/engine/scheduler_harness.h"
#include "tests/engine/test_util.h"

namespace glmserve {
namespace {

using testing::ChunkSizes;
using testing::FakeExecutor;
using testing::Harness;
using testing::MakePrompt;
using testing::MakeRequest;
using testing::TestModelInfo;
using Outcome = Scheduler::StepOutcome;

TEST(SchedulerOptionsTest, BadOptionsNameTheField) {
  FakeClock clock;
  FakeExecutor executor(4, 16, 1000);
  auto expect_bad = [&](SchedulerOptions o, const std::string& field) {
    auto s = Scheduler::Create(o, &executor, &clock, TestModelInfo());
    ASSERT_FALSE(s.ok()) << field;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find(field), std::string::npos) << s.status();
  };
  SchedulerOptions o;
  o.max_batch_size = 0;
  expect_bad(o, "max_batch_size");
  o = SchedulerOptions();
  o.max_tokens_per_step = 8;
  o.max_batch_size = 16;
  expect_bad(o, "max_tokens_per_step");
  o = SchedulerOptions();
  o.max_prefill_hold = std::chrono::microseconds(-1);
  expect_bad(o, "max_prefill_hold");
  o = SchedulerOptions();
  o.mixed_step_rows = -1;
  expect_bad(o, "mixed_step_rows");
  o = SchedulerOptions();
  o.aimd_increase_after_steps = 0;
  expect_bad(o, "aimd_increase_after_steps");
  o = SchedulerOptions();
  o.max_oom_retries_alone = -1;
  expect_bad(o, "max_oom_retries_alone");
  o = SchedulerOptions();
  o.max_queue_delay = std::chrono::microseconds(-1);
  expect_bad(o, "max_queue_delay");
  o = SchedulerOptions();
  o.max_prefill_tokens_with_decodes = -1;
  expect_bad(o, "max_prefill_tokens_with_decodes");
  EXPECT_TRUE(Scheduler::Create(SchedulerOptions(), &executor, &clock, TestModelInfo()).ok());
}

TEST(SchedulerTest, RequestValidationNamesTheField) {
  RequestLimits limits{/*block_size=*/4, /*num_blocks=*/8, /*max_position_embeddings=*/20,
                       /*vocab_size=*/1000};
  auto code_and_field = [&](const InferenceRequest& r, const std::string& field) {
    absl::Status s = ValidateRequest(r, limits);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
  };
  code_and_field(MakeRequest("a", {}, 4), "input_ids");
  code_and_field(MakeRequest("a", {1, 2, 5000}, 4), "input_ids[2]");
  code_and_field(MakeRequest("a", {1, 2}, 0), "max_new_tokens");
  code_and_field(MakeRequest("a", {1, 2}, -3), "max_new_tokens");
  code_and_field(MakeRequest("a", {1, 2}, 4, -1), "min_new_tokens");
  code_and_field(MakeRequest("a", MakePrompt(1, 20), 13), "KV cache capacity");  // 33 > 32
  code_and_field(MakeRequest("a", MakePrompt(1, 10), 11), "max_position_embeddings");
  EXPECT_TRUE(ValidateRequest(MakeRequest("a", MakePrompt(1, 10), 10), limits).ok());
}

// EngineStats' step phases on the injected clock: each step's 5 ms in the executor, of which it
// reports 2 ms of device wait, is 3 ms of executor host work and 2 of device wait; a token callback
// that takes 1 ms is commit time; planning costs no clock time here.
TEST(SchedulerTest, StepPhasesSplitTheEngineThreadsTime) {
  SchedulerOptions o;
  o.max_batch_size = 4;
  o.max_tokens_per_step = 64;
  Harness h(o, /*block_size=*/4, /*num_blocks=*/64);
  h.executor.AdvanceClockPerStep(&h.clock, std::chrono::milliseconds(5));
  h.executor.ReportDeviceWait(std::chrono::microseconds(2000));
  RequestCallbacks slow;
  int tokens = 0;
  slow.on_tokens = [&](const std::vector<int32_t>& ids) {
    tokens += static_cast<int>(ids.size());
    h.clock.Advance(std::chrono::milliseconds(1));
  };
  bool done = false;
  slow.on_done = [&](const RequestResult&) { done = true; };
  ASSERT_TRUE(h.scheduler->Add(MakeRequest("slow", MakePrompt(1, 6), 4), std::move(slow), h.clock.Now()).ok());
  h.RunUntilIdle();
  ASSERT_TRUE(done);
  const EngineStats st = h.scheduler->stats();
  ASSERT_EQ(st.steps, 4);  // a 6-token prompt in one step, then three decodes
  EXPECT_EQ(tokens, 4);
  EXPECT_EQ(st.executor_host_ns, 4 * 3'000'000);
  EXPECT_EQ(st.device_wait_ns, 4 * 2'000'000);
  EXPECT_EQ(st.commit_ns, 4 * 1'000'000);
  EXPECT_EQ(st.schedule_ns, 0);
}

// The device's own timing: busy over every step, idle only before a step that follows one that left
// sequences running (a gap after the server ran out of work is the clients', not the host's).
TEST(SchedulerTest, DeviceIdleCountsOnlyWhileSequencesRun) {
  for (bool overlap : {false, true}) {
    SCOPED_TRACE(overlap ? "overlapped steps" : "synchronous steps");
    SchedulerOptions o;
    o.overlap_steps = overlap;
    Harness h(o, /*block_size=*/4, /*num_blocks=*/64);
    h.executor.ReportDeviceTime(/*busy_us=*/5000, /*idle_us=*/300);
    h.Add(MakeRequest("first", MakePrompt(1, 6), 4));
    h.RunUntilIdle();
    EngineStats st = h.scheduler->stats();
    ASSERT_EQ(st.steps, 4);  // the prompt, then three decodes
    EXPECT_EQ(st.device_busy_ns, 4 * 5'000'000);
    EXPECT_EQ(st.device_idle_ns, 3 * 300'000);
    h.Add(MakeRequest("later", MakePrompt(2, 6), 2));  // after the server went idle
    h.RunUntilIdle();
    st = h.scheduler->stats();
    ASSERT_EQ(st.steps, 6);
    EXPECT_EQ(st.device_busy_ns, 6 * 5'000'000);
    EXPECT_EQ(st.device_idle_ns, 4 * 300'000);  // not before "later"'s first step
    h.ExpectAllMatchReference();
  }
}

TEST(SchedulerTest, AdmissionUnderTokenBudget) {
  SchedulerOptions o;
  o.max_batch_size = 8;
  o.max_tokens_per_step = 16;
  Harness h(o, /*block_size=*/4, /*num_blocks=*/64);
  for (int i = 0; i < 4; ++i) h.Add(MakeRequest("r" + std::to_string(i), MakePrompt(i, 6), 5));
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  auto batches = h.executor.batches();
  // 6 + 6 + a 4-token chunk of the third prompt; the fourth waits for the next step.
  EXPECT_EQ(ChunkSizes(batches[0]), (std::vector<size_t>{6, 6, 4}));
  EXPECT_TRUE(batches[0][0].sample);
  EXPECT_TRUE(batches[0][1].sample);
  EXPECT_FALSE(batches[0][2].sample);
  EXPECT_EQ(h.scheduler->stats().running, 3);
  EXPECT_EQ(h.scheduler->stats().waiting, 1);
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  batches = h.executor.batches();
  // Two decodes, the rest of the third prompt, all of the fourth.
  EXPECT_EQ(ChunkSizes(batches[1]), (std::vector<size_t>{1, 1, 2, 6}));
  for (const SequenceStep& st : batches[1]) EXPECT_LE(st.tokens.size(), 16u);
  h.RunUntilIdle();
  for (const auto& b : h.executor.batches()) {
    size_t total = 0;
    for (size_t n : ChunkSizes(b)) total += n;
    EXPECT_LE(total, 16u);
  }
  h.ExpectAllMatchReference();
}

TEST(SchedulerTest, ChunkedPrefillDoesNotStallDecode) {
  SchedulerOptions o;
  o.max_batch_size = 4;
  o.max_tokens_per_step = 8;
  Harness h(o, 4, 64);
  h.Add(MakeRequest("short", MakePrompt(1, 2), 10));
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  h.Add(MakeRequest("long", MakePrompt(2, 20), 3));
  for (int i = 0; i < 3; ++i) ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  auto batches = h.executor.batches();
  // Steps 2-4: "short" decodes one token every step; "long" prefills in chunks 7, 7, 6.
  const int32_t expected_chunks[] = {7, 7, 6};
  const int32_t expected_start[] = {0, 7, 14};
  for (int i = 0; i < 3; ++i) {
    const auto& b = batches[1 + i];
    ASSERT_EQ(b.size(), 2u);
    EXPECT_EQ(b[0].tokens.size(), 1u);
    EXPECT_TRUE(b[0].sample);
    EXPECT_EQ(static_cast<int32_t>(b[1].tokens.size()), expected_chunks[i]);
    EXPECT_EQ(b[1].start_position, expected_start[i]);
    EXPECT_EQ(b[1].sample, i == 2);
    EXPECT_EQ(b[1].num_generated, 0);
  }
  EXPECT_EQ(h.streamed["short"].size(), 4u);
  EXPECT_EQ(h.streamed["long"].size(), 1u);
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

TEST(SchedulerTest, PrefillCapAppliesOnlyWhileSequencesDecode) {
  SchedulerOptions o;
  o.max_batch_size = 4;
  o.max_tokens_per_step = 16;
  o.max_prefill_tokens_with_decodes = 3;
  Harness h(o, 4, 64);
  // Nothing decodes yet: the first prompt takes the whole budget of 16 in one chunk.
  h.Add(MakeRequest("first", MakePrompt(1, 12), 10));
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  h.Add(MakeRequest("second", MakePrompt(2, 7), 2));
  for (int i = 0; i < 3; ++i) ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  auto batches = h.executor.batches();
  EXPECT_EQ(ChunkSizes(batches[0]), (std::vector<size_t>{12}));
  // "first" decodes, so "second" is prefilled 3 tokens a step: 3, 3, 1.
  EXPECT_EQ(ChunkSizes(batches[1]), (std::vector<size_t>{1, 3}));
  EXPECT_EQ(ChunkSizes(batches[2]), (std::vector<size_t>{1, 3}));
  EXPECT_EQ(ChunkSizes(batches[3]), (std::vector<size_t>{1, 1}));
  EXPECT_FALSE(batches[2][1].sample);
  EXPECT_TRUE(batches[3][1].sample);
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

// The chunk a 40-token prompt gets beside `decoders` decoding sequences.
size_t PrefillChunkBeside(int decoders, SchedulerOptions o) {
  Harness h(o, 4, 256);
  for (int i = 0; i < decoders; ++i) h.Add(MakeRequest("d" + std::to_string(i), MakePrompt(10 + i, 3), 40));
  EXPECT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);  // their prompts, nothing decoding yet
  h.Add(MakeRequest("long", MakePrompt(2, 40), 2));
  EXPECT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  const std::vector<SequenceStep> step = h.executor.batches()[1];
  EXPECT_EQ(step.size(), static_cast<size_t>(decoders) + 1);
  for (int i = 0; i < decoders; ++i) EXPECT_EQ(step[i].tokens.size(), 1u) << "decode row " << i;
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
  return step.back().tokens.size();
}

TEST(SchedulerTest, MixedStepsAreFilledToTheirRowsWhileDecodesTakeAQuarter) {
  SchedulerOptions o;
  o.max_batch_size = 8;
  o.max_tokens_per_step = 64;
  o.mixed_step_rows = 8;
  o.max_prefill_tokens_with_decodes = 20;
  // Decodes take at most 2 of the 8 rows: prefill fills the step to exactly 8.
  EXPECT_EQ(PrefillChunkBeside(1, o), 7u);
  EXPECT_EQ(PrefillChunkBeside(2, o), 6u);
  // Three decodes take more: only max_prefill_tokens_with_decodes applies.
  EXPECT_EQ(PrefillChunkBeside(3, o), 20u);
  // The lower of the two wins.
  o.max_prefill_tokens_with_decodes = 5;
  EXPECT_EQ(PrefillChunkBeside(1, o), 5u);
  // No separate cap: the fill alone, then (too many decodes) the whole budget left.
  o.max_prefill_tokens_with_decodes = 0;
  EXPECT_EQ(PrefillChunkBeside(2, o), 6u);
  EXPECT_EQ(PrefillChunkBeside(6, o), 40u);
  // Off: the cap alone.
  o.mixed_step_rows = 0;
  o.max_prefill_tokens_with_decodes = 9;
  EXPECT_EQ(PrefillChunkBeside(1, o), 9u);
}

// thin_prefill_tokens: beside decodes, a step's prefill is thin until a prompt not yet through
// its prefill has waited longer than thin_prefill_max_wait, or more sequences than that are in
// the server; then the caps alone.
TEST(SchedulerTest, ThinPrefillGivesWayOnceAPromptWaitsTooLong) {
  SchedulerOptions o;
  o.max_batch_size = 8;
  o.max_tokens_per_step = 64;
  o.max_prefill_tokens_with_decodes = 20;
  o.thin_prefill_tokens = 4;
  o.thin_prefill_max_wait = std::chrono::milliseconds(25);
  Harness h(o, 4, 256);
  h.executor.AdvanceClockPerStep(&h.clock, std::chrono::milliseconds(10));
  h.Add(MakeRequest("d0", MakePrompt(1, 3), 40));
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);  // nothing decodes yet: the whole prompt
  h.Add(MakeRequest("p1", MakePrompt(2, 40), 2));
  for (int i = 0; i < 5; ++i) ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  const auto batches = h.executor.batches();
  EXPECT_EQ(ChunkSizes(batches[0]), (std::vector<size_t>{3}));
  // p1 waited 0, 10, 20 ms: thin; 30 ms > 25: the cap (20) until it is through (4 + 4 + 4 + 20 + 8).
  EXPECT_EQ(ChunkSizes(batches[1]), (std::vector<size_t>{1, 4}));
  EXPECT_EQ(ChunkSizes(batches[2]), (std::vector<size_t>{1, 4}));
  EXPECT_EQ(ChunkSizes(batches[3]), (std::vector<size_t>{1, 4}));
  EXPECT_EQ(ChunkSizes(batches[4]), (std::vector<size_t>{1, 20}));
  EXPECT_EQ(ChunkSizes(batches[5]), (std::vector<size_t>{1, 8}));
  // The next prompt starts thin again.
  h.Add(MakeRequest("p2", MakePrompt(3, 40), 2));
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  const auto after = h.executor.batches();
  ASSERT_GE(after.size(), 7u);
  EXPECT_EQ(after[6].back().tokens.size(), 4u);
  h.RunUntilIdle();
  h.ExpectAllMatchReference();

  // More sequences in the server than thin tokens: the caps, although only some of them decode
  // (thin steps would keep a server that has fallen behind there).
  o.thin_prefill_tokens = 2;
  o.thin_prefill_max_wait = std::chrono::seconds(10);
  EXPECT_EQ(PrefillChunkBeside(1, o), 2u);  // d0 and the prompt: 2 in the server
  EXPECT_EQ(PrefillChunkBeside(2, o), 20u);

  o.thin_prefill_tokens = -1;
  FakeClock clock;
  FakeExecutor executor(4, 16, 1000);
  EXPECT_FALSE(Scheduler::Create(o, &executor, &clock, TestModelInfo()).ok());
  o.thin_prefill_tokens = 4;
  o.thin_prefill_max_wait = std::chrono::microseconds(-1);
  EXPECT_FALSE(Scheduler::Create(o, &executor, &clock, TestModelInfo()).ok());
}

// thin_prefill_auto: after "w" (12-token prompt, 4 tokens) has finished beside "d0" (12-token
// prompt, 40 tokens), a prompt of `prompt_len` tokens arrives while d0 decodes; returns the chunks
// it is prefilled in, and the prefill budget the stats report after the first of them.
std::vector<size_t> AutoThinChunks(SchedulerOptions o, int prompt_len, int32_t* first_budget = nullptr) {
  Harness h(o, 4, 256);
  h.Add(MakeRequest("d0", MakePrompt(1, 12), 40, 40));
  h.Add(MakeRequest("w", MakePrompt(2, 12), 4, 4));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);  // both prompts, 3 decodes
  EXPECT_EQ(h.scheduler->stats().finished, 1);
  h.Add(MakeRequest("p", MakePrompt(3, prompt_len), 2, 2));
  const size_t before = h.executor.batches().size();
  EXPECT_EQ(h.scheduler->stats().prefill_budget_with_decodes, o.max_prefill_tokens_with_decodes) << "no ratio yet";
  EXPECT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  if (first_budget != nullptr) *first_budget = h.scheduler->stats().prefill_budget_with_decodes;
  h.RunUntilIdle();
  std::vector<size_t> chunks;
  const auto batches = h.executor.batches();
  for (size_t i = before; i < batches.size(); ++i) {
    for (const SequenceStep& st : batches[i]) {
      if (st.sequence_id != 3 || st.num_generated > 0) continue;
      chunks.push_back(st.tokens.size());
      EXPECT_EQ(batches[i].front().sequence_id, 1) << "d0 decodes beside every chunk";
    }
  }
  h.ExpectAllMatchReference();
  return chunks;
}

TEST(SchedulerTest, AutomaticThinPrefillKeepsPaceWithTheLoad) {
  SchedulerOptions o;
  o.max_batch_size = 8;
  o.max_tokens_per_step = 64;
  o.max_prefill_tokens_with_decodes = 20;
  o.thin_prefill_auto = true;
  o.thin_prefill_backlog_steps = 0;  // off (the default)
  // Nothing has finished yet, so no ratio: the cap.
  EXPECT_EQ(PrefillChunkBeside(1, o), 20u);
  // Prompts of 12 tokens, outputs of 4: 3 prompt tokens a step for each of the 2 sequences in the
  // server (d0 and p): 6 a step, which the stats (glmserve_prefill_budget_tokens) report.
  int32_t budget = 0;
  EXPECT_EQ(AutoThinChunks(o, 12, &budget), (std::vector<size_t>{6, 6}));
  EXPECT_EQ(budget, 6);
  // Each case changes these options of `o` and gives the chunks a prompt of its length takes.
  struct Case {
    const char* why;
    int32_t backlog_steps, prompt_steps, cap, mixed_step_rows, prompt_len;
    std::vector<size_t> chunks;
  };
  const Case cases[] = {
      {"p's 40 tokens move the prompt average to 12 + (40 - 12) / 16 = 13.75 once it is admitted: "
       "2 x 13.75 / 4 = 6.875, to the nearest 7 a step after its first chunk",
       0,
       4,
       20,
       0,
       40,
       {6, 7, 7, 7, 7, 6}},
      {"the backlog (p alone) within 4 steps: ceil(40 / 4) = 10, then ceil(30 / 4) = 8, then the 7 a "
       "step is more than a quarter of what is left",
       4,
       4,
       20,
       0,
       40,
       {10, 8, 7, 7, 7, 1}},
      {"a prompt takes 4 tokens generated / 2 sequences = 2 steps at the budget: at most 2 allowed",
       0,
       2,
       20,
       0,
       12,
       {6, 6}},
      {"at most 1 step allowed: the cap", 0, 1, 20, 0, 40, {20, 20}},
      {"never above the caps: a cap of 5 beats the 6 a step", 0, 4, 5, 0, 12, {5, 5, 2}},
      {"1 decode of 40 mixed-step rows is under a quarter (and the fill leaves more than 6)", 0, 4, 20, 40, 12, {6, 6}},
      {"1 decode of 3 mixed-step rows is more than a quarter: the cap", 0, 4, 20, 3, 40, {20, 20}},
  };
  for (const Case& c : cases) {
    SchedulerOptions changed = o;
    changed.thin_prefill_backlog_steps = c.backlog_steps;
    changed.thin_prefill_auto_prompt_steps = c.prompt_steps;
    changed.max_prefill_tokens_with_decodes = c.cap;
    changed.mixed_step_rows = c.mixed_step_rows;
    EXPECT_EQ(AutoThinChunks(changed, c.prompt_len), c.chunks) << c.why;
  }

  FakeClock clock;
  FakeExecutor executor(4, 16, 1000);
  auto refused_naming = [&](const SchedulerOptions& bad, const std::string& field) {
    const auto s = Scheduler::Create(bad, &executor, &clock, TestModelInfo());
    ASSERT_FALSE(s.ok()) << field;
    EXPECT_NE(s.status().message().find(field), std::string::npos) << s.status();
  };
  SchedulerOptions bad = o;
  bad.thin_prefill_tokens = 4;  // by hand and automatic at once
  refused_naming(bad, "thin_prefill_tokens");
  bad = o;
  bad.thin_prefill_auto_prompt_steps = 0;
  refused_naming(bad, "thin_prefill_auto_prompt_steps");
  bad = o;
  bad.thin_prefill_backlog_steps = -1;
  refused_naming(bad, "thin_prefill_backlog_steps");
}

// prefill_spread_steps: beside decodes, a step's prefill is the backlog (waiting prompts plus what
// running prompts have left) over the spread steps, at least prefill_spread_min_tokens, at most
// what the caps leave.
TEST(SchedulerTest, PrefillBesideDecodesIsTheBacklogSpreadOverSteps) {
  SchedulerOptions o;
  o.max_batch_size = 8;
  o.max_tokens_per_step = 64;
  o.prefill_spread_steps = 4;
  o.prefill_spread_min_tokens = 3;
  EXPECT_EQ(PrefillChunkBeside(1, o), 10u);  // 40 waiting / 4
  o.prefill_spread_min_tokens = 15;
  EXPECT_EQ(PrefillChunkBeside(1, o), 15u);  // the floor
  o.max_prefill_tokens_with_decodes = 8;
  EXPECT_EQ(PrefillChunkBeside(1, o), 8u);  // the cap still bounds it
  o.max_prefill_tokens_with_decodes = 0;
  o.prefill_spread_steps = 0;
  EXPECT_EQ(PrefillChunkBeside(1, o), 40u);  // off: the whole budget left

  // Two 40-token prompts arriving together: 80 over 4 steps, then the share shrinks with the
  // backlog (ceil: 60 / 4 = 15, 45 / 4 -> 12, ...), the second prompt admitted once the first is done.
  o.prefill_spread_steps = 4;
  o.prefill_spread_min_tokens = 1;
  Harness h(o, 4, 256);
  h.Add(MakeRequest("d0", MakePrompt(1, 3), 40));
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  h.Add(MakeRequest("p1", MakePrompt(2, 40), 2));
  h.Add(MakeRequest("p2", MakePrompt(3, 40), 2));
  for (int i = 0; i < 4; ++i) ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  const auto batches = h.executor.batches();
  EXPECT_EQ(ChunkSizes(batches[1]), (std::vector<size_t>{1, 20}));
  EXPECT_EQ(ChunkSizes(batches[2]), (std::vector<size_t>{1, 15}));
  EXPECT_EQ(ChunkSizes(batches[3]), (std::vector<size_t>{1, 5, 7}));  // 45 / 4 -> 12: p1's last 5, p2's first 7
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

// One sequence decoding ("d0", admitted and prefilled in the first step), then prompts arriving while
// it decodes, with a prefill budget of 7 tokens beside it (mixed_step_rows 8).
SchedulerOptions HoldOptions(int hold_ms) {
  SchedulerOptions o;
  o.max_batch_size = 8;
  o.max_tokens_per_step = 64;
  o.mixed_step_rows = 8;
  o.max_prefill_hold = std::chrono::milliseconds(hold_ms);
  return o;
}

TEST(SchedulerTest, PromptsWaitWhileOthersDecodeUntilTheyFillTheStep) {
  Harness h(HoldOptions(100), 4, 256);
  h.executor.AdvanceClockPerStep(&h.clock, std::chrono::milliseconds(10));
  h.Add(MakeRequest("d0", MakePrompt(1, 3), 40));
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);  // nothing decodes yet: never held
  h.Add(MakeRequest("p1", MakePrompt(2, 4), 3));         // 4 tokens < 7: held
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  h.Add(MakeRequest("p2", MakePrompt(3, 4), 3));  // 8 tokens waiting >= 7: both go
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  const auto batches = h.executor.batches();
  EXPECT_EQ(ChunkSizes(batches[0]), (std::vector<size_t>{3}));
  EXPECT_EQ(ChunkSizes(batches[1]), (std::vector<size_t>{1}));
  EXPECT_EQ(ChunkSizes(batches[2]), (std::vector<size_t>{1}));
  EXPECT_EQ(ChunkSizes(batches[3]), (std::vector<size_t>{1, 4, 3}));
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

TEST(SchedulerTest, AHeldPromptGoesOnceItHasWaitedTheHold) {
  Harness h(HoldOptions(35), 4, 256);
  h.executor.AdvanceClockPerStep(&h.clock, std::chrono::milliseconds(10));
  h.Add(MakeRequest("d0", MakePrompt(1, 3), 40));
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  h.Add(MakeRequest("p1", MakePrompt(2, 4), 3));  // submitted at t = 10 ms
  for (int i = 0; i < 5; ++i) ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  // Steps plan at t = 10, 20, 30, 40 (held: 40 < 10 + 35) and 50 (admitted).
  const auto batches = h.executor.batches();
  for (int step = 1; step <= 4; ++step) EXPECT_EQ(batches[step].size(), 1u) << "step " << step;
  EXPECT_EQ(ChunkSizes(batches[5]), (std::vector<size_t>{1, 4}));
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

TEST(SchedulerTest, WithoutAHoldPromptsJoinTheNextStep) {
  Harness h(HoldOptions(0), 4, 256);
  h.Add(MakeRequest("d0", MakePrompt(1, 3), 40));
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  h.Add(MakeRequest("p1", MakePrompt(2, 4), 3));
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  EXPECT_EQ(ChunkSizes(h.executor.batches()[1]), (std::vector<size_t>{1, 4}));
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

TEST(SchedulerTest, DeadlineExpiresMidGenerationAndFreesBlocks) {
  SchedulerOptions o;
  Harness h(o, 4, 64);
  h.executor.AdvanceClockPerStep(&h.clock, std::chrono::milliseconds(10));
  InferenceRequest r = MakeRequest("late", MakePrompt(3, 5), 100);
  r.deadline = h.clock.Now() + std::chrono::milliseconds(55);
  RequestCallbacks cb;
  RequestResult result;
  int done = 0;
  cb.on_done = [&](const RequestResult& res) {
    result = res;
    ++done;
  };
  ASSERT_TRUE(h.scheduler->Add(std::move(r), std::move(cb), h.clock.Now()).ok());
  h.Add(MakeRequest("free", MakePrompt(4, 5), 20));
  h.RunUntilIdle();
  ASSERT_EQ(done, 1);
  EXPECT_EQ(result.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(result.finish_reason, FinishReason::kDeadline);
  // Steps end at t=10..60 ms; the check before the 7th step (t=60 >= 55) expires it.
  EXPECT_EQ(result.output_ids.size(), 6u);
  EXPECT_DOUBLE_EQ(result.total_ms, 60.0);
  h.ExpectAllMatchReference();  // "free" is untouched; all blocks back
}

TEST(SchedulerTest, CancellationFreesBlocks) {
  SchedulerOptions o;
  o.max_batch_size = 2;
  o.max_tokens_per_step = 64;
  Harness h(o, 4, 64);
  h.Add(MakeRequest("a", MakePrompt(1, 10), 30));
  h.Add(MakeRequest("b", MakePrompt(2, 10), 30));
  h.Add(MakeRequest("queued", MakePrompt(3, 10), 30));
  for (int i = 0; i < 3; ++i) h.scheduler->RunOnce();
  const int32_t used_before = h.scheduler->stats().blocks_used;
  EXPECT_EQ(used_before, 6);  // 12 positions fed each -> 3 blocks of 4 each
  h.scheduler->Cancel("b");
  EXPECT_EQ(h.done_count["b"], 1);
  EXPECT_EQ(h.results["b"].status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(h.results["b"].finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(h.results["b"].output_ids.size(), 3u);
  EXPECT_EQ(h.scheduler->stats().blocks_used, 3);
  h.scheduler->Cancel("queued");
  EXPECT_EQ(h.results["queued"].status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(h.results["queued"].output_ids.empty());
  h.scheduler->Cancel("no-such-id");
  h.scheduler->Cancel("b");  // twice: ignored
  h.RunUntilIdle();
  EXPECT_EQ(h.done_count["a"], 1);
  EXPECT_EQ(h.done_count["b"], 1);
  EXPECT_EQ(h.done_count["queued"], 1);
  EXPECT_EQ(h.results["a"].output_ids, h.references["a"]);
  EXPECT_EQ(h.scheduler->stats().blocks_used, 0);
  EXPECT_TRUE(h.executor.errors().empty());
}

TEST(SchedulerTest, StopIdsAndMinNewTokens) {
  SchedulerOptions o;
  Harness h(o, 4, 64, /*eos=*/{});
  FakeExecutor probe(4, 64, 1000);
  const std::vector<int32_t> prompt = MakePrompt(5, 4);
  const std::vector<int32_t> free_run = probe.Reference(prompt, 10, 0, {});
  // Stop at the 3rd id; with min_new_tokens=5 the executor masks it, so it cannot stop early.
  h.Add(MakeRequest("stop", prompt, 10, 0, {free_run[2]}));
  h.Add(MakeRequest("masked", prompt, 10, 5, {free_run[2]}));
  h.RunUntilIdle();
  EXPECT_EQ(h.results["stop"].finish_reason, FinishReason::kStop);
  EXPECT_EQ(h.results["stop"].output_ids, std::vector<int32_t>(free_run.begin(), free_run.begin() + 3));
  EXPECT_GE(h.results["masked"].output_ids.size(), 5u);
  h.ExpectAllMatchReference();
}

TEST(SchedulerTest, ModelEosIdsUsedWhenStopIdsEmpty) {
  FakeExecutor probe(4, 64, 1000);
  const std::vector<int32_t> prompt = MakePrompt(6, 4);
  const std::vector<int32_t> free_run = probe.Reference(prompt, 10, 0, {});
  SchedulerOptions o;
  Harness h(o, 4, 64, /*eos=*/{free_run[1]});
  h.Add(MakeRequest("eos", prompt, 10));
  h.RunUntilIdle();
  EXPECT_EQ(h.results["eos"].finish_reason, FinishReason::kStop);
  EXPECT_EQ(h.results["eos"].output_ids.size(), 2u);
  EXPECT_EQ(h.results["eos"].status, absl::OkStatus());
  h.ExpectAllMatchReference();
}

TEST(SchedulerTest, AimdSequenceOfLimitsUnderInjectedOom) {
  for (bool overlap : {false, true}) {  // overlap_steps: the same outcome
    SCOPED_TRACE(overlap ? "overlapped steps" : "synchronous steps");
    SchedulerOptions o;
    o.overlap_steps = overlap;
    o.max_batch_size = 16;
    o.aimd_increase_after_steps = 3;
    o.faults.oom_above_sequences = 5;
    Harness h(o, 4, 256);
    for (int i = 0; i < 16; ++i) h.Add(MakeRequest("r" + std::to_string(i), MakePrompt(i, 3), 40));
    h.RunUntilIdle();
    // 16 -> 8 -> 4 on the first two OOMs; +1 per 3 clean steps; 6 running OOMs -> 3; and again.
    ASSERT_GE(h.limits.size(), 9u);
    EXPECT_EQ(std::vector<int32_t>(h.limits.begin(), h.limits.begin() + 9),
              (std::vector<int32_t>{8, 4, 5, 6, 3, 4, 5, 6, 3}));
    EXPECT_GT(h.scheduler->stats().oom_events, 3);
    EXPECT_GT(h.scheduler->stats().preemptions, 0);
    EXPECT_LE(h.executor.max_batch_seen(), 5);  // injected OOMs never reach the executor
    h.ExpectAllMatchReference();
  }
}

TEST(SchedulerTest, ExecutorOomShrinksLikeInjectedOom) {
  for (bool overlap : {false, true}) {  // overlap_steps: the same outcome
    SCOPED_TRACE(overlap ? "overlapped steps" : "synchronous steps");
    SchedulerOptions o;
    o.overlap_steps = overlap;
    o.max_batch_size = 32;
    o.aimd_increase_after_steps = 2;
    Harness h(o, 4, 512);
    h.executor.set_oom_above_sequences(6);  // the executor itself answers RESOURCE_EXHAUSTED
    for (int i = 0; i < 32; ++i) h.Add(MakeRequest("r" + std::to_string(i), MakePrompt(i, 5), 12));
    h.RunUntilIdle();
    ASSERT_GE(h.limits.size(), 3u);
    EXPECT_EQ(h.limits[0], 16);
    EXPECT_EQ(h.limits[1], 8);
    EXPECT_EQ(h.limits[2], 4);
    EXPECT_GT(h.scheduler->stats().oom_events, 2);
    h.ExpectAllMatchReference();
  }
}

// A prefill chunk that runs out of memory alone is halved until it fits (the step's prefill tokens
// capped), instead of failing the request: a 20-token prompt where a step holds 10 tokens finishes
// with its reference ids (it failed FAILED_PRECONDITION "alone" while 10-token chunks would have
// run). The cap doubles back after clean steps.
TEST(SchedulerTest, OomAlonePrefillIsHalvedUntilItFits) {
  for (bool overlap : {false, true}) {  // overlap_steps: the same outcome
    SCOPED_TRACE(overlap ? "overlapped steps" : "synchronous steps");
    SchedulerOptions o;
    o.overlap_steps = overlap;
    o.max_oom_retries_alone = 2;
    o.aimd_increase_after_steps = 2;
    o.faults.oom_above_tokens = 10;  // a step of more than 10 tokens runs out of memory
    Harness h(o, 4, 64);
    h.Add(MakeRequest("big", MakePrompt(1, 20), 4));
    h.Add(MakeRequest("small", MakePrompt(2, 3), 8));
    h.RunUntilIdle(200);
    // 1 OOM with both (23 tokens), 1 alone with 20: the chunk halves to 10, which fits.
    EXPECT_EQ(h.scheduler->stats().oom_events, 2);
    EXPECT_EQ(h.scheduler->batch_limit(), o.max_batch_size) << "given back after clean steps";
    h.ExpectAllMatchReference();  // both finished OK with their own ids
    // Later prompts are no longer capped: a 9-token prefill goes in one step.
    h.Add(MakeRequest("later", MakePrompt(3, 9), 2));
    h.RunUntilIdle(50);
    h.ExpectAllMatchReference();
  }
}

TEST(SchedulerTest, PoolExhaustionPreemptsNewestAndRecomputeGivesSameIds) {
  for (bool overlap : {false, true}) {  // overlap_steps: the same outcome
    SCOPED_TRACE(overlap ? "overlapped steps" : "synchronous steps");
    SchedulerOptions o;
    o.overlap_steps = overlap;
    o.max_batch_size = 8;
    Harness h(o, /*block_size=*/4, /*num_blocks=*/12);
    for (int i = 0; i < 6; ++i) h.Add(MakeRequest("r" + std::to_string(i), MakePrompt(i, 6), 20));
    h.RunUntilIdle();
    EXPECT_GT(h.scheduler->stats().preemptions, 0);
    // The oldest request is never the victim: it is never re-prefilled from position 0.
    int64_t r0_seq = -1;
    int prefills_of_r0 = 0;
    for (const auto& b : h.executor.batches()) {
      for (const SequenceStep& st : b) {
        if (r0_seq < 0) r0_seq = st.sequence_id;
        if (st.sequence_id == r0_seq && st.start_position == 0) ++prefills_of_r0;
      }
    }
    EXPECT_EQ(prefills_of_r0, 1);
    h.ExpectAllMatchReference();
  }
}

TEST(SchedulerTest, LongRequestIsNotStarvedByShortOnes) {
  SchedulerOptions o;
  o.max_batch_size = 8;
  Harness h(o, /*block_size=*/4, /*num_blocks=*/16);  // 64 tokens
  int next = 0;
  auto add_short = [&] { h.Add(MakeRequest("s" + std::to_string(next), MakePrompt(next, 4), 4)), ++next; };
  for (int i = 0; i < 6; ++i) add_short();
  h.Add(MakeRequest("long", MakePrompt(999, 40), 8));  // needs 10 of the 16 blocks
  const int shorts_before_long = next;
  for (int step = 0; step < 300 && h.done_count["long"] == 0; ++step) {
    add_short();  // a steady stream of short requests
    add_short();
    h.scheduler->RunOnce();
  }
  ASSERT_EQ(h.done_count["long"], 1);
  EXPECT_TRUE(h.results["long"].status.ok());
  // Everything that arrived before it was admitted before it; nothing after it was.
  auto pos = std::find(h.admit_order.begin(), h.admit_order.end(), "long") - h.admit_order.begin();
  EXPECT_EQ(pos, shorts_before_long);
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

TEST(SchedulerTest, PriorityThenArrivalAndAging) {
  SchedulerOptions o;
  o.max_batch_size = 1;
  o.max_tokens_per_step = 64;
  o.priority_aging_interval = std::chrono::milliseconds(0);
  Harness h(o, 4, 64);
  auto add = [&](const std::string& id, int32_t priority) {
    InferenceRequest r = MakeRequest(id, MakePrompt(static_cast<int32_t>(id[0]), 3), 2);
    r.priority = priority;
    h.Add(std::move(r));
  };
  add("a", 0);
  add("b", 5);
  add("c", 5);
  add("d", -1);
  add("e", 7);
  h.RunUntilIdle();
  EXPECT_EQ(h.admit_order, (std::vector<std::string>{"e", "b", "c", "a", "d"}));
  h.ExpectAllMatchReference();
}

TEST(SchedulerTest, AgingLetsLowPriorityThroughAStreamOfHighPriority) {
  SchedulerOptions o;
  o.max_batch_size = 1;
  o.max_tokens_per_step = 64;
  o.priority_aging_interval = std::chrono::milliseconds(100);
  Harness h(o, 4, 256);
  h.executor.AdvanceClockPerStep(&h.clock, std::chrono::milliseconds(10));
  InferenceRequest low = MakeRequest("low", MakePrompt(1, 3), 2);
  low.priority = 0;
  h.Add(std::move(low));
  int n = 0;
  for (int step = 0; step < 2000 && h.done_count["low"] == 0; ++step) {
    if (h.scheduler->stats().waiting < 4) {
      InferenceRequest hi = MakeRequest("hi" + std::to_string(n), MakePrompt(n + 2, 3), 2);
      hi.priority = 5;
      h.Add(std::move(hi));
      ++n;
    }
    h.scheduler->RunOnce();
  }
  EXPECT_EQ(h.done_count["low"], 1);
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

TEST(SchedulerTest, MaxQueueDelayHoldsTheFirstBatch) {
  SchedulerOptions o;
  o.max_batch_size = 3;
  o.max_tokens_per_step = 64;
  o.max_queue_delay = std::chrono::milliseconds(50);
  Harness h(o, 4, 64);
  const auto t0 = h.clock.Now();
  h.Add(MakeRequest("a", MakePrompt(1, 3), 2));
  EXPECT_FALSE(h.scheduler->ReadyToStep(h.clock.Now()));
  EXPECT_EQ(h.scheduler->RunOnce(), Outcome::kIdle);
  EXPECT_EQ(h.scheduler->NextWakeTime(h.clock.Now()), t0 + std::chrono::milliseconds(50));
  h.clock.Advance(std::chrono::milliseconds(20));
  h.Add(MakeRequest("b", MakePrompt(2, 3), 2));
  EXPECT_EQ(h.scheduler->RunOnce(), Outcome::kIdle);
  h.clock.Advance(std::chrono::milliseconds(30));  // the oldest has waited 50 ms
  EXPECT_TRUE(h.scheduler->ReadyToStep(h.clock.Now()));
  EXPECT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  EXPECT_EQ(h.executor.batches()[0].size(), 2u);
  EXPECT_EQ(h.results.count("a"), 0u);  // 1 of its 2 tokens so far
  h.RunUntilIdle();
  EXPECT_DOUBLE_EQ(h.results["a"].queue_ms, 50.0);
  EXPECT_DOUBLE_EQ(h.results["b"].queue_ms, 30.0);
  // A full batch is not held.
  for (int i = 0; i < 3; ++i) h.Add(MakeRequest("f" + std::to_string(i), MakePrompt(i + 9, 3), 2));
  EXPECT_TRUE(h.scheduler->ReadyToStep(h.clock.Now()));
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

TEST(SchedulerTest, InjectedStepLatencyGoesThroughTheClock) {
  SchedulerOptions o;
  o.faults.step_latency = std::chrono::milliseconds(5);
  Harness h(o, 4, 64);
  h.Add(MakeRequest("slow", MakePrompt(1, 3), 4));
  h.RunUntilIdle();
  EXPECT_DOUBLE_EQ(h.results["slow"].ttft_ms, 5.0);
  EXPECT_DOUBLE_EQ(h.results["slow"].total_ms, 20.0);
  h.ExpectAllMatchReference();
}

TEST(SchedulerTest, InjectedExceptionFailsOnlyThatStepsRequests) {
  for (bool overlap : {false, true}) {  // overlap_steps: the same outcome
    SCOPED_TRACE(overlap ? "overlapped steps" : "synchronous steps");
    SchedulerOptions o;
    o.overlap_steps = overlap;
    o.max_batch_size = 1;
    o.max_tokens_per_step = 64;
    o.faults.throw_on_step = 2;
    Harness h(o, 4, 64);
    RequestResult first;
    RequestCallbacks cb;
    cb.on_done = [&](const RequestResult& r) { first = r; };
    ASSERT_TRUE(h.scheduler->Add(MakeRequest("x", MakePrompt(1, 3), 5), std::move(cb), h.clock.Now()).ok());
    h.Add(MakeRequest("y", MakePrompt(2, 3), 5));
    h.RunUntilIdle();
    EXPECT_EQ(first.status.code(), absl::StatusCode::kInternal);
    EXPECT_NE(first.status.message().find("injected exception"), std::string::npos);
    EXPECT_EQ(first.finish_reason, FinishReason::kError);
    EXPECT_EQ(first.output_ids.size(), 1u);
    h.ExpectAllMatchReference();
  }
}

}  // namespace
}  // namespace glmserve
