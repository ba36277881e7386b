// `glmserve serve`'s flag resolution: defaults that depend on --device, and explicit values
// keeping their word.
#include "server/commands/serve_flags.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace glmserve {
namespace {

absl::StatusOr<ServeFlags> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), {"serve", "--model", "/nonexistent-model-dir"});
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return ParseServeFlags(static_cast<int>(argv.size()), argv.data());
}

TEST(ServeFlags, StepBudgetsDefaultByDevice) {
  absl::StatusOr<ServeFlags> cpu = Parse({"--device", "cpu"});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ(cpu->engine.scheduler.max_tokens_per_step, 2048);
  EXPECT_EQ(cpu->engine.scheduler.max_prefill_tokens_with_decodes, 0);
  EXPECT_EQ(cpu->engine.scheduler.mixed_step_rows, 0);

  // Parsed without a GPU present: nothing is loaded before the flags are resolved.
  absl::StatusOr<ServeFlags> gpu = Parse({"--device", "cuda"});
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_EQ(gpu->engine.scheduler.max_tokens_per_step, 8192);
  EXPECT_EQ(gpu->engine.scheduler.max_prefill_tokens_with_decodes, 256);
  EXPECT_EQ(gpu->engine.scheduler.mixed_step_rows, 256);
  EXPECT_EQ(gpu->engine.scheduler.max_prefill_hold.count(), 0);  // measured no gain on a GPU
  EXPECT_EQ(gpu->engine.scheduler.thin_prefill_tokens, 0);       // off: it trades TTFT p99 for tok/s
  EXPECT_FALSE(gpu->engine.scheduler.thin_prefill_auto);
  EXPECT_EQ(gpu->engine.scheduler.thin_prefill_max_wait, std::chrono::seconds(1));
  EXPECT_TRUE(gpu->engine.scheduler.prefix_caching);  // serve's default on every device
  EXPECT_TRUE(cpu->engine.scheduler.prefix_caching);
}

TEST(ServeFlags, ExplicitStepBudgetsWinOnEveryDevice) {
  for (const char* device : {"cpu", "cuda"}) {
    absl::StatusOr<ServeFlags> f = Parse({"--device",
                                          device,
                                          "--max-batch-tokens",
                                          "3000",
                                          "--max-prefill-tokens-with-decodes",
                                          "64",
                                          "--mixed-step-rows",
                                          "128",
                                          "--max-prefill-hold-us",
                                          "20000",
                                          "--prefix-caching",
                                          "false",
                                          "--prefill-spread-steps",
                                          "4",
                                          "--prefill-spread-min-tokens",
                                          "32",
                                          "--thin-prefill-tokens",
                                          "64",
                                          "--thin-prefill-max-wait-ms",
                                          "250",
                                          "--thin-prefill-auto-prompt-steps",
                                          "8",
                                          "--thin-prefill-backlog-steps",
                                          "6"});
    ASSERT_TRUE(f.ok()) << device << ": " << f.status();
    EXPECT_EQ(f->engine.scheduler.max_tokens_per_step, 3000) << device;
    EXPECT_EQ(f->engine.scheduler.max_prefill_tokens_with_decodes, 64) << device;
    EXPECT_EQ(f->engine.scheduler.mixed_step_rows, 128) << device;
    EXPECT_EQ(f->engine.scheduler.max_prefill_hold, std::chrono::milliseconds(20)) << device;
    EXPECT_FALSE(f->engine.scheduler.prefix_caching) << device;
    EXPECT_EQ(f->engine.scheduler.prefill_spread_steps, 4) << device;
    EXPECT_EQ(f->engine.scheduler.prefill_spread_min_tokens, 32) << device;
    EXPECT_EQ(f->engine.scheduler.thin_prefill_tokens, 64) << device;
    EXPECT_EQ(f->engine.scheduler.thin_prefill_max_wait, std::chrono::milliseconds(250)) << device;
    EXPECT_EQ(f->engine.scheduler.thin_prefill_auto_prompt_steps, 8) << device;
    EXPECT_EQ(f->engine.scheduler.thin_prefill_backlog_steps, 6) << device;
  }
  absl::StatusOr<ServeFlags> automatic = Parse({"--thin-prefill-auto", "true"});
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  EXPECT_TRUE(automatic->engine.scheduler.thin_prefill_auto);
}

TEST(ServeFlags, ThinBudgetByHandAndAutomaticAtOnceIsRefusedNamingBoth) {
  absl::StatusOr<ServeFlags> f = Parse({"--thin-prefill-auto", "true", "--thin-prefill-tokens", "64"});
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(f.status().message().find("--thin-prefill-tokens 64"), std::string::npos) << f.status();
  EXPECT_NE(f.status().message().find("--thin-prefill-auto"), std::string::npos) << f.status();
}

TEST(ServeFlags, StepBudgetBelowTheBatchIsRefusedNamingBothFlags) {
  absl::StatusOr<ServeFlags> f = Parse({"--device", "cuda", "--max-batch", "512", "--max-batch-tokens", "256"});
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(f.status().message().find("--max-batch-tokens: 256"), std::string::npos) << f.status();
  EXPECT_NE(f.status().message().find("--max-batch 512"), std::string::npos) << f.status();
}

// Two listeners on one port are refused naming both flags (the second bind failed with gRPC's own
// words and a dump of its internals).
TEST(ServeFlags, ListenersSharingAPortAreRefusedNamingBothFlags) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--port", "52000", "--http-port", "52000"}, "--http-port 52000: is --port too"},
      {{"--port", "52000", "--metrics-port", "52000"}, "--metrics-port 52000: is --port too"},
      {{"--port", "52001", "--http-port", "52002", "--metrics-port", "52002"},
       "--metrics-port 52002: is --http-port too"},
  };
  for (const auto& [args, want] : cases) {
    absl::StatusOr<ServeFlags> f = Parse(args);
    ASSERT_FALSE(f.ok()) << want;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(f.status().message().find(want), std::string::npos) << f.status();
  }
  EXPECT_TRUE(Parse({"--port", "0", "--http-port", "0", "--metrics-port", "0"}).ok()) << "0 picks free ports";
  EXPECT_TRUE(Parse({"--port", "52000", "--http-port", "52001", "--metrics-port", "52002"}).ok());
}

// The flags this change added, and --prefix-caching (now on by default): a bad value is refused
// before anything starts, naming the flag and the value.
TEST(ServeFlags, BadSchedulingValuesAreRefusedNamingTheFlag) {
  const std::vector<std::vector<std::string>> bad = {{"--prefill-spread-steps", "-1"},
                                                     {"--prefill-spread-min-tokens", "0"},
                                                     {"--prefix-caching", "yes"},
                                                     {"--thin-prefill-tokens", "-5"},
                                                     {"--thin-prefill-max-wait-ms", "-1"},
                                                     {"--thin-prefill-auto", "maybe"},
                                                     {"--thin-prefill-auto-prompt-steps", "0"},
                                                     {"--thin-prefill-backlog-steps", "-1"},
                                                     {"--overlap-steps", "2"}};
  for (const std::vector<std::string>& flag : bad) {
    absl::StatusOr<ServeFlags> f = Parse(flag);
    ASSERT_FALSE(f.ok()) << flag[0];
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
    EXPECT_NE(f.status().message().find(flag[0]), std::string::npos) << f.status();
    EXPECT_NE(f.status().message().find(flag[1]), std::string::npos) << f.status();
  }
}

TEST(ServeFlags, RefusedLogRateDefaultsToTwentyAndRefusesANegativeValue) {
  absl::StatusOr<ServeFlags> f = Parse({});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->grpc.refused_log_lines_per_second, 20);
  absl::StatusOr<ServeFlags> bad = Parse({"--log-refused-per-second", "-1"});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_NE(bad.status().message().find("--log-refused-per-second: '-1'"), std::string::npos) << bad.status();
}

// Values that parse one by one but make no sense: refused naming the flag (an empty model id was
// listed by /v1/models as ""; a first rebuild delay above the cap was silently the cap).
TEST(ServeFlags, ModelIdsAndBackoffThatContradictThemselvesAreRefused) {
  struct Case {
    std::vector<std::string> args;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {{"--served-model-name", ","}, "--served-model-name: an empty id"},
      {{"--served-model-name", "a,,b"}, "--served-model-name: an empty id"},
      {{"--served-model-name", "a,"}, "--served-model-name: an empty id"},
      {{"--served-model-name", "a,b,a"}, "--served-model-name: 'a' is given twice"},
      {{"--restart-backoff-ms", "5000", "--restart-backoff-max-ms", "100"},
       "--restart-backoff-ms: 5000 is above --restart-backoff-max-ms 100"},
      // A batching window the watchdog would take for a stall, or the warm-up request wait out.
      {{"--max-queue-delay-us", "30000000"}, "--max-queue-delay-us: 30000000 must be under half of --stall-timeout-ms"},
      {{"--max-queue-delay-us", "600000", "--stall-timeout-ms", "1000"},
       "--max-queue-delay-us: 600000 must be under half of --stall-timeout-ms (1000 ms)"},
      {{"--max-queue-delay-us", "60000", "--warmup-timeout-ms", "100"},
       "--max-queue-delay-us: 60000 must be under half of --warmup-timeout-ms (100 ms)"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ServeFlags> f = Parse(c.args);
    ASSERT_FALSE(f.ok()) << c.needle;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
    EXPECT_NE(f.status().message().find(c.needle), std::string::npos) << f.status();
  }
  absl::StatusOr<ServeFlags> ok =
      Parse({"--served-model-name", "glm-4,autoglm", "--restart-backoff-ms", "100", "--max-queue-delay-us", "2000"});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->served_model_names, (std::vector<std::string>{"glm-4", "autoglm"}));
}

// The slow-load test hook (the chaos suite's supervised restart): off unless asked for; a bad
// value is refused naming the flag and the value.
TEST(ServeFlags, LoadDelayHookIsOffByDefaultAndRefusesBadValues) {
  absl::StatusOr<ServeFlags> plain = Parse({});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->debug_load_delay_ms, 0);
  absl::StatusOr<ServeFlags> slow = Parse({"--debug-load-delay-ms", "1500"});
  ASSERT_TRUE(slow.ok()) << slow.status();
  EXPECT_EQ(slow->debug_load_delay_ms, 1500);
  for (const char* bad : {"-1", "soon"}) {
    absl::StatusOr<ServeFlags> f = Parse({"--debug-load-delay-ms", bad});
    ASSERT_FALSE(f.ok()) << bad;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
    EXPECT_NE(f.status().message().find("--debug-load-delay-ms"), std::string::npos) << f.status();
    EXPECT_NE(f.status().message().find(bad), std::string::npos) << f.status();
  }
}

// Both OOM injections are off by default; one counts a step's sequences (in the executor), the
// other its tokens (in the scheduler), as issue 4 names them.
TEST(ServeFlags, OomInjectionBySequencesOrTokens) {
  absl::StatusOr<ServeFlags> plain = Parse({});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->debug_inject_oom_above, 0);
  EXPECT_EQ(plain->engine.scheduler.faults.oom_above_tokens, 0);
  absl::StatusOr<ServeFlags> tokens = Parse({"--debug-inject-oom-above-tokens", "64"});
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(tokens->engine.scheduler.faults.oom_above_tokens, 64);
  absl::StatusOr<ServeFlags> bad = Parse({"--debug-inject-oom-above-tokens", "-1"});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--debug-inject-oom-above-tokens: '-1'"), std::string::npos) << bad.status();
}

// Overlapped steps are experimental: off unless asked for.
TEST(ServeFlags, OverlappedStepsAreOffByDefault) {
  for (const char* device : {"cpu", "cuda"}) {
    absl::StatusOr<ServeFlags> plain = Parse({"--device", device});
    ASSERT_TRUE(plain.ok()) << plain.status();
    EXPECT_FALSE(plain->engine.scheduler.overlap_steps) << device;
    absl::StatusOr<ServeFlags> on = Parse({"--device", device, "--overlap-steps", "true"});
    ASSERT_TRUE(on.ok()) << on.status();
    EXPECT_TRUE(on->engine.scheduler.overlap_steps) << device;
  }
}

}  // namespace
}  // namespace glmserve
