// Scheduler tests for prompts with images (InferenceRequest::multimodal): the pointer on every
// step, the vision encoder's charge against the step budget (split before an image, over budget
// only at a chunk's start for the step's first prefill), progress beside a full decoding batch,
// ReleaseSequence on every finish and preemption, encoder OOM, and Submit's validation.
// Every expected chunk size below is worked out by hand from the rule in scheduler.h.
#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/engine/scheduler.h"
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
using Outcome = Scheduler::StepOutcome;

struct ImageRun {
  int32_t offset;
  int32_t num_tokens;
};

// A multimodal prompt of `len` tokens with one image per run. The 3-D positions are plain (all
// components equal): the scheduler never reads them, it only passes the prompt on.
std::shared_ptr<const MultimodalPrompt> Images(int32_t len, const std::vector<ImageRun>& runs) {
  auto mm = std::make_shared<MultimodalPrompt>();
  mm->prompt_len = len;
  for (int c = 0; c < 3; ++c) {
    for (int32_t i = 0; i < len; ++i) mm->positions.push_back(i);
  }
  for (const ImageRun& run : runs) {
    ImageInput image;
    image.num_tokens = run.num_tokens;
    mm->images.push_back(image);
    mm->image_offsets.push_back(run.offset);
  }
  return mm;
}

InferenceRequest ImageRequest(const std::string& id, int32_t seed, int32_t len, const std::vector<ImageRun>& runs,
                              int32_t max_new) {
  InferenceRequest r = MakeRequest(id, MakePrompt(seed, len), max_new);
  r.multimodal = Images(len, runs);
  return r;
}

// The sequence id the executor saw for `prompt`: the first step at position 0 feeding its start.
int64_t SequenceIdOf(const FakeExecutor& executor, const std::vector<int32_t>& prompt) {
  for (const auto& batch : executor.batches()) {
    for (const SequenceStep& st : batch) {
      if (st.start_position == 0 && st.tokens.size() <= prompt.size() &&
          std::equal(st.tokens.begin(), st.tokens.end(), prompt.begin())) {
        return st.sequence_id;
      }
    }
  }
  return -1;
}

// What a step costs under the rule: fed tokens plus num_tokens of every image whose first token
// it feeds.
int64_t StepCost(const std::vector<SequenceStep>& batch) {
  int64_t cost = 0;
  for (const SequenceStep& st : batch) {
    cost += static_cast<int64_t>(st.tokens.size());
    if (st.multimodal == nullptr) continue;
    const int64_t end = st.start_position + static_cast<int64_t>(st.tokens.size());
    for (size_t k = 0; k < st.multimodal->images.size(); ++k) {
      const int32_t begin = st.multimodal->image_offsets[k];
      if (begin >= st.start_position && begin < end) cost += st.multimodal->images[k].num_tokens;
    }
  }
  return cost;
}

std::vector<size_t> EncodeSteps(const FakeExecutor& executor, int64_t sequence_id) {
  std::vector<size_t> steps;
  for (const FakeExecutor::Encode& e : executor.encodes()) {
    if (e.sequence_id == sequence_id) steps.push_back(e.step);
  }
  return steps;
}

int64_t CountOf(const std::vector<int64_t>& v, int64_t x) { return std::count(v.begin(), v.end(), x); }

TEST(MultimodalSchedulerTest, PointerArrivesOnEveryStepOfTheSequence) {
  SchedulerOptions o;
  o.max_batch_size = 4;
  o.max_tokens_per_step = 16;
  Harness h(o, 4, 64);
  InferenceRequest img = ImageRequest("img", 1, 20, {{3, 8}}, 5);
  const std::shared_ptr<const MultimodalPrompt> mm = img.multimodal;  // keeps the address valid
  const std::vector<int32_t> img_prompt = img.input_ids;
  h.Add(std::move(img));
  h.Add(MakeRequest("txt", MakePrompt(2, 5), 5));
  h.RunUntilIdle();
  const int64_t id = SequenceIdOf(h.executor, img_prompt);
  ASSERT_GE(id, 0);
  std::vector<size_t> img_chunks;
  for (const auto& batch : h.executor.batches()) {
    for (const SequenceStep& st : batch) {
      if (st.sequence_id == id) {
        img_chunks.push_back(st.tokens.size());
        EXPECT_EQ(st.multimodal, mm.get()) << "step at position " << st.start_position;
      } else {
        EXPECT_EQ(st.multimodal, nullptr);
      }
    }
  }
  // Budget 16: [0, 3) + the image's 8 + [3, 8) = 16; then [8, 20) samples the first id; then 4
  // decode rows for the other 4 new tokens. All 6 carry the pointer.
  EXPECT_EQ(img_chunks, (std::vector<size_t>{8, 12, 1, 1, 1, 1}));
  h.ExpectAllMatchReference();
}

TEST(MultimodalSchedulerTest, ChargeSplitsTheChunkJustBeforeTheImage) {
  SchedulerOptions o;
  o.max_batch_size = 4;
  o.max_tokens_per_step = 16;
  Harness h(o, 4, 64);
  // Image tokens [10, 18), charge 8.
  InferenceRequest a = ImageRequest("a", 1, 30, {{10, 8}}, 3);
  const std::vector<int32_t> a_prompt = a.input_ids;
  h.Add(std::move(a));
  h.Add(MakeRequest("b", MakePrompt(2, 6), 3));
  for (int i = 0; i < 3; ++i) ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  const auto batches = h.executor.batches();
  const int64_t a_id = SequenceIdOf(h.executor, a_prompt);
  // Step 1: a feeds [0, 10) (10); at 10 the image needs 8 + 1 > 6 left, so a's chunk ends before
  // it; b's 6-token prompt takes the 6 left.
  EXPECT_EQ(ChunkSizes(batches[0]), (std::vector<size_t>{10, 6}));
  EXPECT_EQ(batches[0][0].sequence_id, a_id);
  EXPECT_FALSE(batches[0][0].sample);
  EXPECT_EQ(StepCost(batches[0]), 16);
  // Step 2: b decodes (1); a: image charge 8 leaves 7 of 15 -> [10, 17) (7).
  EXPECT_EQ(ChunkSizes(batches[1]), (std::vector<size_t>{1, 7}));
  EXPECT_EQ(batches[1][1].start_position, 10);
  EXPECT_EQ(StepCost(batches[1]), 16);
  // Step 3: b decodes; a feeds the rest [17, 30) (13) without a second charge and samples.
  EXPECT_EQ(ChunkSizes(batches[2]), (std::vector<size_t>{1, 13}));
  EXPECT_EQ(batches[2][1].start_position, 17);
  EXPECT_TRUE(batches[2][1].sample);
  EXPECT_EQ(EncodeSteps(h.executor, a_id), (std::vector<size_t>{1}));
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

TEST(MultimodalSchedulerTest, TwoImagesThatFitShareOneChunk) {
  SchedulerOptions o;
  o.max_batch_size = 4;
  o.max_tokens_per_step = 16;
  Harness h(o, 4, 64);
  // Images [2, 5) and [6, 9), 3 tokens each: tokens [0, 10) cost 10 + 3 + 3 = 16.
  h.Add(ImageRequest("two", 1, 20, {{2, 3}, {6, 3}}, 2));
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  const auto batches = h.executor.batches();
  EXPECT_EQ(ChunkSizes(batches[0]), (std::vector<size_t>{10}));
  EXPECT_EQ(StepCost(batches[0]), 16);
  EXPECT_EQ(ChunkSizes(batches[1]), (std::vector<size_t>{10}));
  EXPECT_TRUE(batches[1][0].sample);
  ASSERT_EQ(h.executor.encodes().size(), 2u);
  EXPECT_EQ(h.executor.encodes()[0].step, 0u);
  EXPECT_EQ(h.executor.encodes()[1].step, 0u);
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

TEST(MultimodalSchedulerTest, HugeImageAtChunkStartRunsOverBudgetAndTakesTheStep) {
  SchedulerOptions o;
  o.max_batch_size = 4;
  o.max_tokens_per_step = 16;
  Harness h(o, 4, 64);
  // A 40-token image at position 0: larger than the whole budget.
  InferenceRequest a = ImageRequest("a", 1, 50, {{0, 40}}, 2);
  const std::vector<int32_t> a_prompt = a.input_ids;
  h.Add(std::move(a));
  h.Add(MakeRequest("b", MakePrompt(2, 5), 2));
  for (int i = 0; i < 5; ++i) ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  const auto batches = h.executor.batches();
  const int64_t a_id = SequenceIdOf(h.executor, a_prompt);
  // Step 1: a is the first prefill and the image starts its chunk: one token, the encoder's 40,
  // and nothing else (b is not admitted: the budget is spent).
  ASSERT_EQ(batches[0].size(), 1u);
  EXPECT_EQ(batches[0][0].sequence_id, a_id);
  EXPECT_EQ(batches[0][0].start_position, 0);
  EXPECT_EQ(batches[0][0].tokens.size(), 1u);
  EXPECT_EQ(StepCost(batches[0]), 41);
  EXPECT_EQ(EncodeSteps(h.executor, a_id), (std::vector<size_t>{0}));
  // Steps 2-4: the image's remaining tokens at the full budget, no second charge: [1, 17),
  // [17, 33), [33, 49); b still waits (each step's budget is used up).
  for (int i = 1; i <= 3; ++i) {
    EXPECT_EQ(ChunkSizes(batches[i]), (std::vector<size_t>{16})) << i;
    EXPECT_EQ(batches[i][0].start_position, 1 + 16 * (i - 1));
    EXPECT_EQ(StepCost(batches[i]), 16);
  }
  // Step 5: a's last token (samples), b admitted with the 15 left.
  EXPECT_EQ(ChunkSizes(batches[4]), (std::vector<size_t>{1, 5}));
  EXPECT_TRUE(batches[4][0].sample);
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

TEST(MultimodalSchedulerTest, ImageAtChunkStartWaitsWhenAnotherSequencePrefillsFirst) {
  SchedulerOptions o;
  o.max_batch_size = 4;
  o.max_tokens_per_step = 16;
  Harness h(o, 4, 64);
  h.Add(MakeRequest("a", MakePrompt(1, 30), 3));
  InferenceRequest b = ImageRequest("b", 2, 12, {{0, 8}}, 2);
  const std::vector<int32_t> b_prompt = b.input_ids;
  h.Add(std::move(b));
  for (int i = 0; i < 4; ++i) ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  const auto batches = h.executor.batches();
  // Step 1: a takes the whole budget (16); b is not admitted.
  EXPECT_EQ(ChunkSizes(batches[0]), (std::vector<size_t>{16}));
  // Step 2: a's last 14; 2 left cannot hold b's image (8 + 1) and a prefilled first, so b waits.
  EXPECT_EQ(ChunkSizes(batches[1]), (std::vector<size_t>{14}));
  // Step 3: a decodes; b is the first prefill: charge 8 of 15 leaves 7 tokens [0, 7).
  EXPECT_EQ(ChunkSizes(batches[2]), (std::vector<size_t>{1, 7}));
  EXPECT_EQ(StepCost(batches[2]), 16);
  const int64_t b_id = SequenceIdOf(h.executor, b_prompt);
  EXPECT_EQ(batches[2][1].sequence_id, b_id);
  EXPECT_EQ(EncodeSteps(h.executor, b_id), (std::vector<size_t>{2}));
  // Step 4: a decodes; b feeds [7, 12) and samples.
  EXPECT_EQ(ChunkSizes(batches[3]), (std::vector<size_t>{1, 5}));
  EXPECT_TRUE(batches[3][1].sample);
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

TEST(MultimodalSchedulerTest, AnImageOnTheLastPromptTokenIsChargedNotDecoded) {
  SchedulerOptions o;
  o.max_batch_size = 4;
  o.max_tokens_per_step = 4;
  Harness h(o, 4, 64);
  // A 1-token image as the prompt's last token, left alone as the only pending token.
  h.Add(ImageRequest("img", 1, 5, {{4, 1}}, 2));
  h.Add(MakeRequest("t", MakePrompt(2, 3), 2));
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  const auto batches = h.executor.batches();
  // Step 1: [0, 4) takes the budget. Step 2: the last token is the image's: charged 1 + 1 as a
  // prefill (not a 1-token decode row), so "t" gets 2 of its 3 tokens, not 3.
  EXPECT_EQ(ChunkSizes(batches[0]), (std::vector<size_t>{4}));
  EXPECT_EQ(ChunkSizes(batches[1]), (std::vector<size_t>{1, 2}));
  EXPECT_TRUE(batches[1][0].sample);
  EXPECT_EQ(StepCost(batches[1]), 4);
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

TEST(MultimodalSchedulerTest, HugeImageBesideSixtyFourDecodesProgressesInBoundedSteps) {
  SchedulerOptions o;
  o.max_batch_size = 65;
  o.max_tokens_per_step = 80;
  o.max_prefill_tokens_with_decodes = 8;
  Harness h(o, /*block_size=*/4, /*num_blocks=*/4096);
  for (int i = 0; i < 64; ++i) h.Add(MakeRequest("d" + std::to_string(i), MakePrompt(i, 3), 100));
  auto all_decoding = [&] {
    for (int i = 0; i < 64; ++i) {
      if (h.streamed["d" + std::to_string(i)].empty()) return false;
    }
    return true;
  };
  for (int i = 0; i < 200 && !all_decoding(); ++i) ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  ASSERT_TRUE(all_decoding());
  const size_t base = h.executor.batches().size();
  // A 500-token image at [2, 502) of a 520-token prompt; prefill gets 8 of each step beside the
  // 64 decodes.
  InferenceRequest img = ImageRequest("img", 99, 520, {{2, 500}}, 10);
  const std::vector<int32_t> img_prompt = img.input_ids;
  h.Add(std::move(img));
  // Hand count: step 1 feeds [0, 2) (the image's 500 + 1 do not fit the 6 left); step 2 starts at
  // the image and img is the only prefill: 1 token, the encoder's 500, over budget; then [3, 520)
  // at 8 a step: 64 steps of 8 and one of 5. 67 steps to the first token.
  for (int i = 0; i < 66; ++i) ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  EXPECT_TRUE(h.streamed["img"].empty());
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  EXPECT_EQ(h.streamed["img"].size(), 1u);

  const auto batches = h.executor.batches();
  const int64_t img_id = SequenceIdOf(h.executor, img_prompt);
  ASSERT_EQ(batches.size(), base + 67);
  for (size_t i = base; i < batches.size(); ++i) {
    int decodes = 0;
    const SequenceStep* img_step = nullptr;
    for (const SequenceStep& st : batches[i]) {
      if (st.sequence_id == img_id) {
        img_step = &st;
      } else if (st.tokens.size() == 1 && st.sample) {
        ++decodes;
      }
    }
    EXPECT_EQ(decodes, 64) << "step " << i - base;  // every decode runs in every step
    ASSERT_NE(img_step, nullptr) << "step " << i - base;
    const size_t rel = i - base;
    const size_t expected_chunk = rel == 0 ? 2 : rel == 1 ? 1 : rel == 66 ? 5 : 8;
    EXPECT_EQ(img_step->tokens.size(), expected_chunk) << "step " << rel;
    // The cap of 8 holds everywhere but the encoder's own step.
    EXPECT_EQ(StepCost(batches[i]), rel == 1 ? 64 + 1 + 500 : 64 + static_cast<int64_t>(expected_chunk))
        << "step " << rel;
  }
  EXPECT_EQ(EncodeSteps(h.executor, img_id), (std::vector<size_t>{base + 1}));
  h.RunUntilIdle();
  h.ExpectAllMatchReference();
}

TEST(MultimodalSchedulerTest, PreemptionReleasesAndTheImageIsChargedAgain) {
  SchedulerOptions o;
  o.max_batch_size = 4;
  o.max_tokens_per_step = 64;
  // 8 blocks of 4 = 32 positions: "a" grows to 24 and "b" to 20, so the newest ("b") is preempted.
  Harness h(o, /*block_size=*/4, /*num_blocks=*/8);
  h.Add(MakeRequest("a", MakePrompt(1, 4), 20));
  InferenceRequest b = ImageRequest("b", 2, 8, {{1, 4}}, 12);
  const std::vector<int32_t> b_prompt = b.input_ids;
  // The recorded steps point at b's images, which its sequence frees when it finishes: StepCost
  // below reads them after the run.
  const std::shared_ptr<const MultimodalPrompt> b_images = b.multimodal;
  h.Add(std::move(b));
  h.RunUntilIdle(1000);
  EXPECT_GT(h.scheduler->stats().preemptions, 0);
  const int64_t a_id = SequenceIdOf(h.executor, MakePrompt(1, 4));
  const int64_t b_id = SequenceIdOf(h.executor, b_prompt);
  std::vector<size_t> b_restarts;  // steps where b starts its prefill at position 0
  const auto batches = h.executor.batches();
  for (size_t i = 0; i < batches.size(); ++i) {
    for (const SequenceStep& st : batches[i]) {
      if (st.sequence_id == b_id && st.start_position == 0) b_restarts.push_back(i);
    }
  }
  ASSERT_GE(b_restarts.size(), 2u);  // first prefill + recompute after preemption
  // Each (re)start encodes the image again in that same step, charged again.
  EXPECT_EQ(EncodeSteps(h.executor, b_id), b_restarts);
  for (size_t i : b_restarts) EXPECT_GE(StepCost(batches[i]), 4 + 8);
  // One release per preemption plus one at the end; the fake executor also checked that each
  // came before the restart (no features held at position 0).
  const std::vector<int64_t> released = h.executor.released();
  EXPECT_EQ(CountOf(released, b_id), static_cast<int64_t>(b_restarts.size()));
  EXPECT_EQ(CountOf(released, a_id), 1);
  h.ExpectAllMatchReference();
}

TEST(MultimodalSchedulerTest, EveryFinishReleasesOnceAndNeverSeenSequencesAreNotReleased) {
  SchedulerOptions o;
  o.max_batch_size = 4;
  o.max_tokens_per_step = 64;
  Harness h(o, 4, 256);
  h.executor.AdvanceClockPerStep(&h.clock, std::chrono::milliseconds(10));
  FakeExecutor probe(4, 64, 1000);
  const std::vector<int32_t> stop_prompt = MakePrompt(1, 10);
  const std::vector<int32_t> free_run = probe.Reference(stop_prompt, 10, 0, {});
  InferenceRequest stop = ImageRequest("stop", 1, 10, {{2, 4}}, 10);
  stop.params.stop_token_ids = {free_run[2]};
  h.Add(std::move(stop));
  h.Add(ImageRequest("length", 2, 10, {{0, 5}}, 3));
  h.Add(ImageRequest("cancel", 3, 10, {{5, 5}}, 50));
  InferenceRequest late = ImageRequest("deadline", 4, 10, {{1, 2}}, 50);
  late.deadline = h.clock.Now() + std::chrono::milliseconds(45);
  h.Add(std::move(late));
  h.Add(ImageRequest("never-ran", 5, 10, {{0, 3}}, 5));  // batch of 4 is full: waits
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  ASSERT_EQ(h.scheduler->RunOnce(), Outcome::kStepped);
  h.scheduler->Cancel("cancel");
  h.scheduler->Cancel("never-ran");
  h.RunUntilIdle();
  EXPECT_EQ(h.results["stop"].finish_reason, FinishReason::kStop);
  EXPECT_EQ(h.results["length"].finish_reason, FinishReason::kLength);
  EXPECT_EQ(h.results["cancel"].finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(h.results["deadline"].finish_reason, FinishReason::kDeadline);
  EXPECT_EQ(h.results["never-ran"].finish_reason, FinishReason::kCancelled);
  std::set<int64_t> seen;
  for (const auto& batch : h.executor.batches()) {
    for (const SequenceStep& st : batch) seen.insert(st.sequence_id);
  }
  EXPECT_EQ(seen.size(), 4u);  // "never-ran" reached no step
  const std::vector<int64_t> released = h.executor.released();
  EXPECT_EQ(released.size(), 4u);
  EXPECT_EQ(std::set<int64_t>(released.begin(), released.end()), seen);
  EXPECT_TRUE(h.executor.unreleased().empty());
  EXPECT_TRUE(h.executor.errors().empty()) << h.executor.errors()[0];
  EXPECT_EQ(h.scheduler->stats().blocks_used, 0);
}

TEST(MultimodalSchedulerTest, FailedStepReleasesItsSequences) {
  SchedulerOptions o;
  o.max_batch_size = 2;
  o.max_tokens_per_step = 64;
  o.faults.throw_on_step = 3;  // both requests are in step 3; it fails with INTERNAL
  Harness h(o, 4, 64);
  RequestCallbacks cb_x;
  RequestCallbacks cb_y;
  RequestResult x;
  RequestResult y;
  cb_x.on_done = [&](const RequestResult& r) { x = r; };
  cb_y.on_done = [&](const RequestResult& r) { y = r; };
  ASSERT_TRUE(h.scheduler->Add(ImageRequest("x", 1, 8, {{1, 3}}, 10), std::move(cb_x), h.clock.Now()).ok());
  ASSERT_TRUE(h.scheduler->Add(MakeRequest("y", MakePrompt(2, 4), 10), std::move(cb_y), h.clock.Now()).ok());
  h.RunUntilIdle();
  EXPECT_EQ(x.status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(y.status.code(), absl::StatusCode::kInternal);
  const std::vector<int64_t> released = h.executor.released();
  EXPECT_EQ(released.size(), 2u);
  EXPECT_EQ(std::set<int64_t>(released.begin(), released.end()).size(), 2u);
  EXPECT_TRUE(h.executor.unreleased().empty());
  EXPECT_TRUE(h.executor.errors().empty()) << h.executor.errors()[0];
}

TEST(MultimodalSchedulerTest, EncoderOomShrinksRetriesAndLosesNothing) {
  SchedulerOptions o;
  o.max_batch_size = 4;
  o.max_tokens_per_step = 64;
  o.aimd_increase_after_steps = 2;
  Harness h(o, 4, 256);
  h.executor.set_oom_encoder_tokens_above(8);  // one 6-token image at a time fits, two do not
  InferenceRequest a = ImageRequest("a", 1, 10, {{1, 6}}, 5);
  InferenceRequest b = ImageRequest("b", 2, 10, {{3, 6}}, 5);
  const std::vector<int32_t> a_prompt = a.input_ids;
  const std::vector<int32_t> b_prompt = b.input_ids;
  h.Add(std::move(a));
  h.Add(std::move(b));
  h.Add(MakeRequest("c", MakePrompt(3, 4), 5));
  // Step 1 carries both images (12 encoder tokens): OOM, nothing committed; the limit halves
  // from the 3 sequences to 1 and "c" then "b" (newest first) are preempted.
  EXPECT_EQ(h.scheduler->RunOnce(), Outcome::kOom);
  EXPECT_EQ(h.limits, (std::vector<int32_t>{1}));
  EXPECT_EQ(h.scheduler->stats().running, 1);
  EXPECT_EQ(h.scheduler->stats().waiting, 2);
  EXPECT_TRUE(h.executor.encodes().empty());
  const int64_t a_id = SequenceIdOf(h.executor, a_prompt);
  const int64_t b_id = SequenceIdOf(h.executor, b_prompt);
  const int64_t c_id = SequenceIdOf(h.executor, MakePrompt(3, 4));
  EXPECT_EQ(h.executor.released(), (std::vector<int64_t>{c_id, b_id}));
  h.RunUntilIdle();
  const std::vector<int64_t> released = h.executor.released();
  EXPECT_EQ(CountOf(released, a_id), 1);  // kept through the OOM, released at the end
  EXPECT_EQ(CountOf(released, b_id), 2);  // preempted, then finished
  EXPECT_EQ(EncodeSteps(h.executor, a_id).size(), 1u);
  EXPECT_EQ(EncodeSteps(h.executor, b_id).size(), 1u);  // the OOM step encoded nothing
  EXPECT_EQ(h.scheduler->stats().oom_events, 1);
  h.ExpectAllMatchReference();  // every request finished OK with its own ids
}

TEST(MultimodalSchedulerTest, ImageThatNeverFitsFailsAloneAfterBoundedRetries) {
  SchedulerOptions o;
  o.max_oom_retries_alone = 2;
  Harness h(o, 4, 64);
  h.executor.set_oom_encoder_tokens_above(8);
  RequestResult big;
  int big_done = 0;
  RequestCallbacks cb;
  cb.on_done = [&](const RequestResult& r) {
    big = r;
    ++big_done;
  };
  ASSERT_TRUE(h.scheduler->Add(ImageRequest("big", 1, 14, {{2, 10}}, 4), std::move(cb), h.clock.Now()).ok());
  h.Add(MakeRequest("small", MakePrompt(2, 3), 6));
  h.RunUntilIdle(100);
  ASSERT_EQ(big_done, 1);
  EXPECT_EQ(big.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(big.status.message().find("10 vision-encoder tokens"), std::string::npos) << big.status;
  // 1 OOM with both, 1 alone that halves the prefill chunk and gives the batch limit back, 1 with
  // both again (an image is taken whole: its chunk does not shrink), then 3 alone (first try + 2
  // retries).
  EXPECT_EQ(h.scheduler->stats().oom_events, 6);
  // "big" once (it failed), "small" three times (preempted by both OOMs with it, then finished).
  EXPECT_EQ(h.executor.released().size(), 4u);
  h.ExpectAllMatchReference();  // "small" is untouched
}

// Prefix caching stops at a prompt's first image token: the same ids after it may stand for other
// pixels. Two image prompts with the same 22 ids (image at 13): only the 3 blocks before it are
// shared; a text prompt with those ids shares the image prompt's first blocks too.
TEST(MultimodalSchedulerTest, PrefixCachingReusesOnlyBlocksBeforeTheFirstImage) {
  SchedulerOptions o;
  o.max_batch_size = 4;
  o.max_tokens_per_step = 64;
  o.prefix_caching = true;
  Harness h(o, 4, 64);
  h.executor.AllowSharedPrefixes(true);
  h.Add(ImageRequest("first", 3, 22, {{13, 6}}, 3));
  h.RunUntilIdle();
  size_t before = h.executor.batches().size();
  h.Add(ImageRequest("second", 3, 22, {{13, 6}}, 3));
  h.RunUntilIdle();
  EXPECT_EQ(h.executor.batches()[before].front().start_position, 12);
  EXPECT_EQ(h.scheduler->stats().prefix_cache_hit_tokens, 12);
  // The image was encoded again for the second prompt (its chunk feeds the image's first token).
  EXPECT_EQ(h.executor.encodes().size(), 2u);
  before = h.executor.batches().size();
  h.Add(MakeRequest("text", MakePrompt(3, 22), 3));
  h.RunUntilIdle();
  EXPECT_EQ(h.executor.batches()[before].front().start_position, 12);
  h.ExpectAllMatchReference();
}

TEST(MultimodalSchedulerTest, ValidationNamesTheMultimodalField) {
  RequestLimits limits{/*block_size=*/4, /*num_blocks=*/64, /*max_position_embeddings=*/0, /*vocab_size=*/1000};
  auto expect_bad = [&](std::shared_ptr<MultimodalPrompt> mm, const std::string& field, int32_t len = 10) {
    InferenceRequest r = MakeRequest("m", MakePrompt(1, len), 4);
    r.multimodal = std::move(mm);
    absl::Status s = ValidateRequest(r, limits);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
  };
  auto mm_of = [](int32_t len, const std::vector<ImageRun>& runs) {
    return std::make_shared<MultimodalPrompt>(*Images(len, runs));
  };
  expect_bad(mm_of(9, {{2, 3}}), "multimodal.prompt_len (9)");
  auto mm = mm_of(10, {{2, 3}});
  mm->positions.pop_back();
  expect_bad(mm, "multimodal.positions");
  mm = mm_of(10, {{2, 3}});
  mm->image_offsets.push_back(7);
  expect_bad(mm, "multimodal.image_offsets has 2 entries");
  mm = mm_of(10, {{2, 3}});
  mm->images[0].num_tokens = 0;
  expect_bad(mm, "multimodal.images[0].num_tokens");
  expect_bad(mm_of(10, {{-1, 3}}), "multimodal.image_offsets[0] = -1");
  expect_bad(mm_of(10, {{10, 1}}), "multimodal.image_offsets[0] = 10");
  expect_bad(mm_of(10, {{5, 2}, {2, 2}}), "multimodal.image_offsets[1] = 2");  // not ascending
  expect_bad(mm_of(10, {{2, 3}, {4, 2}}), "multimodal.image_offsets[1] = 4");  // overlaps [2, 5)
  expect_bad(mm_of(10, {{8, 5}}), "multimodal.images[0].num_tokens: its image tokens [8, 13)");
  // Adjacent runs and a run ending at the last token are fine; so is no image at all.
  InferenceRequest ok = MakeRequest("m", MakePrompt(1, 10), 4);
  ok.multimodal = Images(10, {{2, 3}, {5, 5}});
  EXPECT_TRUE(ValidateRequest(ok, limits).ok());
  ok.multimodal = Images(10, {});
  EXPECT_TRUE(ValidateRequest(ok, limits).ok());
  // Scheduler::Add refuses the same way (the engine's Submit calls the same check).
  Harness h(SchedulerOptions(), 4, 64);
  InferenceRequest bad = MakeRequest("m", MakePrompt(1, 10), 4);
  bad.multimodal = Images(12, {{2, 3}});
  absl::Status s = h.scheduler->Add(std::move(bad), RequestCallbacks(), h.clock.Now());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("multimodal.prompt_len"), std::string::npos) << s;
}

}  // namespace
}  // namespace glmserve
