// The scheduler with prefix caching (SchedulerOptions::prefix_caching) over the fake executor,
// whose simulated KV checks that every position read back was computed from the reader's own
// tokens up to it, whoever wrote it, and that no sequence reads a block another one writes.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/engine/scheduler.h"
#include "tests/engine/scheduler_harness.h"
#include "tests/engine/test_util.h"

namespace glmserve {
namespace {

using testing::Harness;
using testing::MakePrompt;
using testing::MakeRequest;

SchedulerOptions CachingOptions() {
  SchedulerOptions o;
  o.max_batch_size = 8;
  o.max_tokens_per_step = 256;
  o.prefix_caching = true;
  return o;
}

// Runs request "a" to the end, then "b": returns b's first step.
SequenceStep FirstStepOfTheSecond(Harness& h, const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  h.Add(MakeRequest("a", a, 5));
  h.RunUntilIdle();
  const size_t before = h.executor.batches().size();
  h.Add(MakeRequest("b", b, 5));
  h.RunUntilIdle();
  const auto batches = h.executor.batches();
  EXPECT_GT(batches.size(), before);
  return batches.size() > before ? batches[before].front() : SequenceStep();
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(PrefixCacheTest, APromptRepeatingAnotherStartsAfterTheSharedBlocks) {
  Harness h(CachingOptions(), /*block_size=*/4, /*num_blocks=*/64);
  h.executor.AllowSharedPrefixes(true);
  const std::vector<int32_t> system = MakePrompt(1, 18);  // 4 full blocks and 2 tokens
  const SequenceStep first =
      FirstStepOfTheSecond(h, Concat(system, MakePrompt(2, 3)), Concat(system, MakePrompt(3, 7)));
  EXPECT_EQ(first.start_position, 16);  // the 4 full blocks of the shared prefix
  EXPECT_EQ(first.tokens.size(), 25u - 16u);
  EXPECT_EQ(h.scheduler->stats().prefix_cache_hit_tokens, 16);
  EXPECT_EQ(h.scheduler->stats().prompt_tokens_scheduled, 21 + 25);
  h.ExpectAllMatchReference();
  // What each request's usage reports (RequestResult::cached_prompt_tokens).
  EXPECT_EQ(h.results["a"].cached_prompt_tokens, 0);
  EXPECT_EQ(h.results["b"].cached_prompt_tokens, 16);
}

TEST(PrefixCacheTest, AnIdenticalPromptComputesItsLastTokenAgain) {
  Harness h(CachingOptions(), 4, 64);
  h.executor.AllowSharedPrefixes(true);
  const std::vector<int32_t> prompt = MakePrompt(4, 16);  // exactly 4 blocks
  // 3 blocks: the 4th holds the last prompt token, whose logits give the first new token.
  EXPECT_EQ(FirstStepOfTheSecond(h, prompt, prompt).start_position, 12);
  EXPECT_EQ(h.results["b"].output_ids, h.results["a"].output_ids);
  h.ExpectAllMatchReference();
}

// Both run at once: the second reads blocks the first holds (and wrote in an earlier step) in
// the same batches as the first decodes.
TEST(PrefixCacheTest, RunningSequencesShareTheirPrefixBlocks) {
  Harness h(CachingOptions(), 4, 64);
  h.executor.AllowSharedPrefixes(true);
  const std::vector<int32_t> system = MakePrompt(5, 24);
  h.Add(MakeRequest("a", Concat(system, MakePrompt(6, 2)), 30));
  h.scheduler->RunOnce();  // a's prompt, all in one step
  h.scheduler->RunOnce();
  h.Add(MakeRequest("b", Concat(system, MakePrompt(7, 5)), 30));
  h.Add(MakeRequest("c", Concat(system, MakePrompt(8, 1)), 30));
  h.RunUntilIdle();
  EXPECT_EQ(h.scheduler->stats().prefix_cache_hit_tokens, 24 + 24);
  bool shared_in_one_batch = false;
  for (const auto& batch : h.executor.batches()) {
    if (batch.size() >= 2 && batch[0].block_table.size() > 1 && batch[1].block_table.size() > 1 &&
        batch[0].block_table[0] == batch[1].block_table[0]) {
      shared_in_one_batch = true;
    }
  }
  EXPECT_TRUE(shared_in_one_batch);
  h.ExpectAllMatchReference();
}

// A prompt prefilled in chunks is shared only as far as its chunks have been written: a request
// arriving between them takes the blocks done so far and computes the rest itself.
TEST(PrefixCacheTest, OnlyBlocksAlreadyWrittenAreShared) {
  SchedulerOptions o = CachingOptions();
  o.max_tokens_per_step = 16;
  Harness h(o, 4, 64);
  h.executor.AllowSharedPrefixes(true);
  const std::vector<int32_t> prompt = MakePrompt(9, 20);
  h.Add(MakeRequest("a", prompt, 4));
  h.scheduler->RunOnce();  // a: positions 0-15 written; 16-19 come in the next step
  const size_t before = h.executor.batches().size();
  h.Add(MakeRequest("b", Concat(prompt, {5}), 4));
  h.RunUntilIdle();
  const auto batches = h.executor.batches();
  ASSERT_GT(batches.size(), before);
  ASSERT_EQ(batches[before].size(), 2u);  // a's last chunk and b's first, side by side
  EXPECT_EQ(batches[before][0].start_position, 16);
  EXPECT_EQ(batches[before][1].start_position, 16);  // b: a's four written blocks, not the fifth
  EXPECT_EQ(batches[before][1].tokens.size(), 5u);
  h.ExpectAllMatchReference();
}

// A pool too small to keep everything: cached blocks nobody holds are handed out again, oldest
// first, and requests still run to the right ids; none is refused for the cache's sake.
TEST(PrefixCacheTest, CachedBlocksGiveWayWhenThePoolRunsShort) {
  Harness h(CachingOptions(), 4, /*num_blocks=*/16);
  h.executor.AllowSharedPrefixes(true);
  for (int i = 0; i < 12; ++i) {
    h.Add(MakeRequest("r" + std::to_string(i), MakePrompt(10 + i % 2, 30), 8));  // 10 blocks each
    h.RunUntilIdle();
    EXPECT_LE(h.scheduler->stats().blocks_cached, 16);
  }
  // Each request takes the blocks the one before it left, deepest first (a chain's last blocks
  // are released first): the prompt two requests back keeps its first blocks.
  EXPECT_GT(h.scheduler->stats().prefix_cache_hit_tokens, 0);
  EXPECT_EQ(h.scheduler->stats().blocks_free, 16);
  h.ExpectAllMatchReference();
}

// Preempted for the pool, a sequence comes back through the blocks it registered (those not yet
// handed out again) instead of recomputing from position 0.
TEST(PrefixCacheTest, APreemptedSequenceResumesFromItsCachedBlocks) {
  SchedulerOptions o = CachingOptions();
  Harness h(o, /*block_size=*/4, /*num_blocks=*/12);
  h.executor.AllowSharedPrefixes(true);
  for (int i = 0; i < 6; ++i) h.Add(MakeRequest("r" + std::to_string(i), MakePrompt(20 + i, 6), 20));
  h.RunUntilIdle();
  EXPECT_GT(h.scheduler->stats().preemptions, 0);
  int resumed_past_zero = 0;  // multi-token steps not at 0: a cached resume (prompts fit one step)
  for (const auto& batch : h.executor.batches()) {
    for (const SequenceStep& st : batch) resumed_past_zero += st.tokens.size() > 1 && st.start_position > 0;
  }
  EXPECT_GT(resumed_past_zero, 0);
  h.ExpectAllMatchReference();
}

TEST(PrefixCacheTest, OffByDefault) {
  SchedulerOptions o = CachingOptions();
  o.prefix_caching = false;
  Harness h(o, 4, 64);
  const std::vector<int32_t> prompt = MakePrompt(30, 20);
  EXPECT_EQ(FirstStepOfTheSecond(h, prompt, prompt).start_position, 0);
  EXPECT_EQ(h.scheduler->stats().prefix_cache_hit_tokens, 0);
  EXPECT_EQ(h.scheduler->stats().blocks_cached, 0);
  EXPECT_FALSE(SchedulerOptions().prefix_caching);
  h.ExpectAllMatchReference();
}

}  // namespace
}  // namespace glmserve
