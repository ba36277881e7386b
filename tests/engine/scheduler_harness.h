// The scheduler test harness: a Scheduler over FakeExecutor and FakeClock, driven step by step,
// collecting every request's streamed ids, result and on_done count.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/engine/scheduler.h"
#include "tests/engine/fake_executor.h"
#include "tests/engine/test_util.h"

namespace glmserve::testing {

struct Harness {
  Harness(SchedulerOptions options, int32_t block_size, int32_t num_blocks, std::vector<int32_t> eos = {})
      : executor(block_size, num_blocks, 1000, eos) {
    options.log = [this](const std::string& line) { log.push_back(line); };
    SchedulerHooks hooks;
    hooks.on_first_admit = [this](const std::string& id) { admit_order.push_back(id); };
    hooks.on_batch_limit_change = [this](int32_t, int32_t n) { limits.push_back(n); };
    ModelInfo info = TestModelInfo();
    info.eos_token_ids = eos;
    auto s = Scheduler::Create(options, &executor, &clock, info, hooks);
    EXPECT_TRUE(s.ok()) << s.status();
    scheduler = std::move(s).value();
  }

  void Add(InferenceRequest r) {
    const std::string id = r.request_id;
    references[id] =
        executor.Reference(r.input_ids, r.params.max_new_tokens, r.params.min_new_tokens, r.params.stop_token_ids);
    RequestCallbacks cb;
    cb.on_tokens = [this, id](const std::vector<int32_t>& ids) {
      streamed[id].insert(streamed[id].end(), ids.begin(), ids.end());
    };
    cb.on_done = [this, id](const RequestResult& r) {
      ++done_count[id];
      results[id] = r;
    };
    ASSERT_TRUE(scheduler->Add(std::move(r), std::move(cb), clock.Now()).ok());
  }

  // Runs steps until nothing is left; bounded.
  void RunUntilIdle(int max_steps = 100000) {
    for (int i = 0; i < max_steps && scheduler->HasWork(); ++i) scheduler->RunOnce();
    ASSERT_FALSE(scheduler->HasWork()) << "did not finish in " << max_steps << " steps";
  }

  // Every request finished once, streamed what it returned, and (if OK) matches running alone.
  void ExpectAllMatchReference() {
    for (const auto& [id, ref] : references) {
      ASSERT_EQ(done_count[id], 1) << id;
      const RequestResult& r = results[id];
      EXPECT_TRUE(r.status.ok()) << id << ": " << r.status;
      EXPECT_EQ(r.output_ids, ref) << id;
      EXPECT_EQ(streamed[id], r.output_ids) << id;
    }
    EXPECT_TRUE(executor.errors().empty()) << executor.errors()[0];
    EXPECT_EQ(scheduler->stats().blocks_used, 0);
    // Every sequence a step carried was handed back to the executor (ReleaseSequence).
    EXPECT_TRUE(executor.unreleased().empty()) << executor.unreleased().size() << " sequences never released";
  }

  FakeClock clock;
  FakeExecutor executor;
  std::unique_ptr<Scheduler> scheduler;
  std::map<std::string, std::vector<int32_t>> references;
  std::map<std::string, std::vector<int32_t>> streamed;
  std::map<std::string, RequestResult> results;
  std::map<std::string, int> done_count;
  std::vector<std::string> admit_order;
  std::vector<int32_t> limits;
  std::vector<std::string> log;
};

inline std::vector<size_t> ChunkSizes(const std::vector<SequenceStep>& batch) {
  std::vector<size_t> sizes;
  for (const SequenceStep& st : batch) sizes.push_back(st.tokens.size());
  return sizes;
}

}  // namespace glmserve::testing
