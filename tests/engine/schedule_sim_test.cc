// schedule_sim's core (bench/schedule_sim.h): the cost model, and the simulation's clock and
// clients checked on loads whose timings follow by hand from flat 10 ms steps.
#include "bench/schedule_sim.h"

#include <gtest/gtest.h>

namespace glmserve::bench {
namespace {

// Every step 10 ms, whatever it holds.
CostModel FlatTenMs() {
  CostModel cost;
  cost.decode_ms = Curve{{{1, 10.0}}};
  cost.prompt_token_us = Curve{{{64, 0.0}}};
  cost.prefill_only_token_us = 0;
  return cost;
}

// 4-token prompts, 5 tokens each, no warm-up, no client delay.
SimLoad SmallRequests(double duration_s) {
  SimLoad load;
  load.prompt_len = 4;
  load.new_tokens = 5;
  load.duration_s = duration_s;
  load.warmup_s = 0;
  load.client_delay_ms = 0;
  return load;
}

TEST(ScheduleSimTest, CostModelInterpolatesAndRoundsRowsToTheGraphBucket) {
  CostModel cost;
  cost.decode_ms = Curve{{{1, 5.0}, {3, 9.0}}};
  cost.prompt_token_us = Curve{{{64, 10.0}, {128, 20.0}}};
  cost.prefill_only_token_us = 25.0;
  EXPECT_DOUBLE_EQ(cost.StepMs(2, 0), 7.0);
  EXPECT_DOUBLE_EQ(cost.StepMs(10, 0), 9.0);               // flat past the last point
  EXPECT_DOUBLE_EQ(cost.StepMs(2, 62), 7.0 + 62 * 0.010);  // 64 rows: the 64 bucket
  EXPECT_DOUBLE_EQ(cost.StepMs(2, 63), 7.0 + 63 * 0.020);  // 65 rows: the 128 bucket
  EXPECT_DOUBLE_EQ(cost.StepMs(0, 100), 5.0);              // prefill alone: at least a 1-row step
  EXPECT_DOUBLE_EQ(cost.StepMs(0, 1000), 25.0);
}

TEST(ScheduleSimTest, CurvesAreParsedOrRefusedNamingTheItem) {
  absl::StatusOr<Curve> curve = ParseCurve("1:5.5,8:6");
  ASSERT_TRUE(curve.ok()) << curve.status();
  EXPECT_DOUBLE_EQ(curve->At(1), 5.5);
  EXPECT_DOUBLE_EQ(curve->At(8), 6.0);
  for (const char* bad : {"1:2,1:3", "a:b", "4", "2:-1"}) {
    absl::StatusOr<Curve> refused = ParseCurve(bad);
    EXPECT_FALSE(refused.ok()) << bad;
  }
  EXPECT_NE(ParseCurve("1:2,1:3").status().message().find("'1:3'"), std::string::npos);
  EXPECT_FALSE(ParseCurve("").ok());
}

// One stream of SmallRequests: a prefill step then 4 decode steps, 50 ms a request,
// its tokens at 10, 20, ..., 50 ms; the next request is sent when one finishes. Over 1 s: 20
// requests, 100 tokens.
TEST(ScheduleSimTest, ClosedLoopTimingsFollowTheSteps) {
  SimLoad load = SmallRequests(1);
  load.concurrency = 1;
  absl::StatusOr<SimResult> one = Simulate(SchedulerOptions(), FlatTenMs(), load);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_DOUBLE_EQ(one->steady_tok_s, 100.0);
  EXPECT_EQ(one->requests, 20);
  EXPECT_EQ(one->steps, 100);
  EXPECT_DOUBLE_EQ(one->ttft_p50_ms, 10.0);
  EXPECT_DOUBLE_EQ(one->ttft_p99_ms, 10.0);
  EXPECT_DOUBLE_EQ(one->itl_p50_ms, 10.0);

  // Two streams share every step: twice the tokens in the same steps.
  load.concurrency = 2;
  absl::StatusOr<SimResult> two = Simulate(SchedulerOptions(), FlatTenMs(), load);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_DOUBLE_EQ(two->steady_tok_s, 200.0);
  EXPECT_EQ(two->steps, 100);

  // A warm-up leaves its tokens out: 0.5 s of the same rate.
  load.warmup_s = 0.5;
  absl::StatusOr<SimResult> warm = Simulate(SchedulerOptions(), FlatTenMs(), load);
  ASSERT_TRUE(warm.ok()) << warm.status();
  EXPECT_DOUBLE_EQ(warm->steady_tok_s, 200.0);
}

// The level figure (glmload's tok/s) runs to the last token, the drain included; steady tok/s stops
// where sending stops. One stream over 975 ms: the request sent at 950 ms still finishes, at 1,000 ms
// (100 tokens over 1 s), while only its tokens at 960 and 970 ms fall in the window (97 tokens).
TEST(ScheduleSimTest, TheLevelFigureRunsToTheLastTokenTheSteadyOneToTheEndOfSending) {
  SimLoad load = SmallRequests(0.975);
  load.concurrency = 1;
  absl::StatusOr<SimResult> r = Simulate(SchedulerOptions(), FlatTenMs(), load);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->requests, 20);
  EXPECT_DOUBLE_EQ(r->tok_s, 100.0);
  EXPECT_DOUBLE_EQ(r->steady_tok_s, 97 / 0.975);
}

// Overlapped steps: step N+1 launched before step N's ids are asked for. The modelled device runs
// the steps back to back either way (the host costs nothing here), so one stream's timings are
// those above: its first token at 10 ms, not when the step launched after it ends.
TEST(ScheduleSimTest, OverlappedStepsKeepTheDevicesTimeline) {
  SimLoad load = SmallRequests(1);
  load.concurrency = 1;
  SchedulerOptions overlapped;
  overlapped.overlap_steps = true;
  absl::StatusOr<SimResult> one = Simulate(overlapped, FlatTenMs(), load);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_DOUBLE_EQ(one->steady_tok_s, 100.0);
  EXPECT_EQ(one->requests, 20);
  EXPECT_EQ(one->steps, 100);
  EXPECT_DOUBLE_EQ(one->ttft_p50_ms, 10.0);
  EXPECT_DOUBLE_EQ(one->itl_p50_ms, 10.0);
}

// Open loop under overlap: a request arriving while step N runs joins N+2 (N+1 was planned when N
// started), a step more to its first token. Same arrivals (seeded) in both runs.
TEST(ScheduleSimTest, OverlapAdmitsArrivalsAStepLater) {
  SimLoad load = SmallRequests(5);
  load.rate = 20;
  SchedulerOptions overlapped;
  overlapped.overlap_steps = true;
  absl::StatusOr<SimResult> sync = Simulate(SchedulerOptions(), FlatTenMs(), load);
  absl::StatusOr<SimResult> early = Simulate(overlapped, FlatTenMs(), load);
  ASSERT_TRUE(sync.ok() && early.ok());
  EXPECT_EQ(early->requests, sync->requests);
  EXPECT_GE(early->ttft_p50_ms, sync->ttft_p50_ms + 5.0) << sync->ttft_p50_ms;  // about a step more
}

// Open loop: an arrival waits for the step boundary (under 10 ms), then its own prefill step, and
// latency counts from the scheduled arrival.
TEST(ScheduleSimTest, OpenLoopLatencyCountsFromTheArrival) {
  SimLoad load = SmallRequests(5);
  load.rate = 20;
  absl::StatusOr<SimResult> r = Simulate(SchedulerOptions(), FlatTenMs(), load);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->requests, 60);  // ~100 expected
  EXPECT_GT(r->ttft_p50_ms, 10.0);
  EXPECT_LE(r->ttft_p99_ms, 20.0);
  EXPECT_DOUBLE_EQ(r->itl_p99_ms, 10.0);
}

TEST(ScheduleSimTest, BadLoadsAreRefused) {
  SimLoad load;  // neither concurrency nor rate
  EXPECT_EQ(Simulate(SchedulerOptions(), CostModel(), load).status().code(), absl::StatusCode::kInvalidArgument);
  load.concurrency = 1;
  load.warmup_s = load.duration_s;
  EXPECT_EQ(Simulate(SchedulerOptions(), CostModel(), load).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace glmserve::bench
