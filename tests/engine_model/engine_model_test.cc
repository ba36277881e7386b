// The engine with the real model: ModelRunner -> PagedExecutor (paged KV on CPU) -> engine.
// Expected ids come from GenerateOnce (the request alone on an engine of batch 1), which
// runtime_test proves equal to transformers' recorded outputs; the fixture test compares
// against those recordings directly. Every wait is bounded; nothing sleeps for logic.
#include <ATen/Parallel.h>
#ifdef GLMSERVE_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <execinfo.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/engine.h"
#include "runtime/engine/engine_impl.h"
#include "runtime/generate_once.h"
#include "runtime/model_runner.h"
#include "tests/testutil/fixture_models.h"

namespace {
// A crash in a test prints its stack (frames as binary(+offset): `addr2line -f -C -e BINARY
// OFFSET` names them), since the GPU machine has no debugger.
void SegvBacktrace(int sig) {
  void* frames[64];
  const int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, 2);
  signal(sig, SIG_DFL);
  raise(sig);
}
const bool kSegvHandler = [] {
  signal(SIGSEGV, SegvBacktrace);
  return true;
}();
}  // namespace
namespace glmserve {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using std::chrono::milliseconds;

constexpr milliseconds kWait{90000};  // upper bound of any wait; tests finish far sooner

// One intra-op thread: the tiny models gain nothing from more, and on a shared 2-core machine
// spinning OpenMP workers make every step many times slower.
const bool kSingleThreaded = [] {
  at::set_num_threads(1);
  return true;
}();

fs::path FixtureDir(const std::string& name) { return testing::FixtureModelDir(name); }
fs::path TinyModelDir() { return fs::path(GLMSERVE_MODELS_DIR) / "glm4-tiny"; }

// GLMSERVE_TEST_DEVICE=cuda runs everything on the GPU (fp32), as runtime_test's parity does.
std::string TestDevice() {
  const char* device = std::getenv("GLMSERVE_TEST_DEVICE");
  return device != nullptr && *device != '\0' ? device : "cpu";
}

// Models load once per process and are shared by the tests (read-only weights).
ModelRunner* LoadModel(const fs::path& dir) {
  static std::map<std::string, std::unique_ptr<ModelRunner>>* cache =
      new std::map<std::string, std::unique_ptr<ModelRunner>>();
  auto it = cache->find(dir.string());
  if (it != cache->end()) return it->second.get();
  LoadOptions options;
  options.device = TestDevice();
  options.dtype = "float32";
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = ModelRunner::Load(dir.string(), options);
  EXPECT_TRUE(runner.ok()) << runner.status();
  if (!runner.ok()) return nullptr;
  ModelRunner* raw = runner->get();
  (*cache)[dir.string()] = *std::move(runner);
  return raw;
}

struct Outcome {
  bool done = false;
  RequestResult result;
};

// Receives on_done of many requests; waits are bounded.
class Collector {
 public:
  explicit Collector(size_t n) : outcomes_(n) {}

  RequestCallbacks Callbacks(size_t index) {
    RequestCallbacks cb;
    cb.on_done = [this, index](const RequestResult& r) {
      std::lock_guard<std::mutex> lock(mu_);
      outcomes_[index].done = true;
      outcomes_[index].result = r;
      ++done_;
      cv_.notify_all();
    };
    return cb;
  }
  // True when `n` results arrived within the timeout.
  bool WaitFor(size_t n, milliseconds timeout = kWait) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return done_ >= n; });
  }
  Outcome Get(size_t index) {
    std::lock_guard<std::mutex> lock(mu_);
    return outcomes_[index];
  }
  size_t done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Outcome> outcomes_;
  size_t done_ = 0;
};

struct Case {
  std::vector<int32_t> prompt;
  GenerationParams params;
  std::vector<int32_t> expected;  // the request alone: GenerateOnce, batch 1
  FinishReason expected_finish = FinishReason::kUnspecified;
};

void ComputeExpected(ModelRunner* runner, std::vector<Case>* cases) {
  for (Case& c : *cases) {
    absl::StatusOr<GenerationOutput> out = GenerateOnce(*runner, c.prompt, c.params);
    ASSERT_TRUE(out.ok()) << out.status();
    c.expected = out->output_ids;
    c.expected_finish = out->finish_reason;
  }
}

// Varied prompts (lengths 1..48) and budgets; sampled cases get their own seeds.
std::vector<Case> MakeCases(int32_t n, int32_t vocab, bool sampled, uint32_t seed, int32_t max_new_lo = 4,
                            int32_t max_new_hi = 12) {
  std::mt19937 rng(seed);
  std::vector<Case> cases(n);
  for (int32_t i = 0; i < n; ++i) {
    Case& c = cases[i];
    const int32_t len = 1 + static_cast<int32_t>(rng() % 48);
    for (int32_t t = 0; t < len; ++t) c.prompt.push_back(static_cast<int32_t>(rng() % vocab));
    c.params.max_new_tokens = max_new_lo + static_cast<int32_t>(rng() % (max_new_hi - max_new_lo + 1));
    if (sampled) {
      c.params.sampling.temperature = 0.9f;
      c.params.sampling.top_k = (i % 3 == 0) ? 0 : 40;
      c.params.sampling.top_p = (i % 2 == 0) ? 1.0f : 0.9f;
      c.params.sampling.seed = 1000 + i;
    }
  }
  return cases;
}

struct EngineSetup {
  ExecutorOptions executor;
  EngineOptions engine;
};

EngineSetup DefaultSetup() {
  EngineSetup s;
  s.executor.num_blocks = 512;
  s.executor.log = [](const std::string&) {};
  s.engine.scheduler.log = [](const std::string&) {};
  return s;
}

std::unique_ptr<InferenceEngine> MakeEngine(ModelRunner* runner, EngineSetup setup) {
  absl::StatusOr<std::unique_ptr<StepExecutor>> executor = runner->CreateExecutor(setup.executor);
  EXPECT_TRUE(executor.ok()) << executor.status();
  if (!executor.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<InferenceEngine>> engine =
      CreateInferenceEngine(std::move(setup.engine), *std::move(executor), runner->info());
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return nullptr;
  return *std::move(engine);
}

InferenceRequest ToRequest(const std::string& id, const Case& c) {
  InferenceRequest r;
  r.request_id = id;
  r.input_ids = c.prompt;
  r.params = c.params;
  return r;
}

// Counts of a run, printed as the closing note asks.
struct Counts {
  int sent = 0, ok = 0, lost = 0;
  std::map<std::string, int> errors;  // by status code (submit rejections included)
  std::string ToString() const {
    std::string s = absl::StrCat("sent=", sent, " ok=", ok, " errors={");
    bool first = true;
    for (const auto& [code, n] : errors) {
      absl::StrAppend(&s, first ? "" : ", ", code, ": ", n);
      first = false;
    }
    absl::StrAppend(&s, "} lost=", lost);
    return s;
  }
};

// Submits every case at once, waits for all, checks ids against `expected`; returns counts.
Counts RunAndCheck(InferenceEngine* engine, const std::vector<Case>& cases, const std::string& tag) {
  Counts counts;
  Collector collector(cases.size());
  std::vector<bool> accepted(cases.size(), false);
  for (size_t i = 0; i < cases.size(); ++i) {
    ++counts.sent;
    absl::Status s = engine->Submit(ToRequest(absl::StrCat(tag, "-", i), cases[i]), collector.Callbacks(i));
    if (s.ok()) {
      accepted[i] = true;
    } else {
      ++counts.errors[absl::StatusCodeToString(s.code())];
      ADD_FAILURE() << tag << " request " << i << " rejected: " << s;
    }
  }
  const size_t n_accepted = static_cast<size_t>(std::count(accepted.begin(), accepted.end(), true));
  EXPECT_TRUE(collector.WaitFor(n_accepted))
      << tag << ": only " << collector.done() << " of " << n_accepted << " requests finished in time";
  for (size_t i = 0; i < cases.size(); ++i) {
    if (!accepted[i]) continue;
    Outcome o = collector.Get(i);
    if (!o.done) {
      ++counts.lost;
      continue;
    }
    if (!o.result.status.ok()) {
      ++counts.errors[absl::StatusCodeToString(o.result.status.code())];
      ADD_FAILURE() << tag << " request " << i << ": " << o.result.status;
      continue;
    }
    ++counts.ok;
    EXPECT_EQ(o.result.output_ids, cases[i].expected)
        << tag << " request " << i << " (prompt of " << cases[i].prompt.size() << ")";
    EXPECT_EQ(o.result.finish_reason, cases[i].expected_finish) << tag << " request " << i;
    EXPECT_EQ(o.result.prompt_tokens, static_cast<int32_t>(cases[i].prompt.size()));
  }
  EXPECT_TRUE(engine->WaitIdle(kWait));
  const EngineStats stats = engine->stats();
  EXPECT_EQ(stats.blocks_used, 0) << tag;
  EXPECT_EQ(stats.blocks_free, stats.blocks_total) << tag;
  return counts;
}

// ---------------------------------------------------------------------------------------------
// Parity with transformers' recorded ids, through the engine, every fixture's cases at once.

class EngineFixtureParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineFixtureParityTest, BatchedEngineIdsEqualTransformersRecording) {
  std::ifstream in(FixtureDir(GetParam()) / "expected.json");
  const json expected = json::parse(in);
  ModelRunner* runner = LoadModel(FixtureDir(GetParam()));
  ASSERT_NE(runner, nullptr);
  std::vector<Case> cases;
  for (const json& c : expected["cases"]) {
    Case k;
    k.prompt = c["input_ids"].get<std::vector<int32_t>>();
    k.params.max_new_tokens = c["max_new_tokens"].get<int32_t>();
    k.params.min_new_tokens = c["min_new_tokens"].get<int32_t>();
    k.expected = c["output_ids"].get<std::vector<int32_t>>();
    const std::string finish = c["finish_reason"].get<std::string>();
    k.expected_finish = finish == "stop" ? FinishReason::kStop : FinishReason::kLength;
    cases.push_back(k);
  }
  ASSERT_FALSE(cases.empty());
  // Each case several times with different neighbours, so the batch mixes lengths.
  std::vector<Case> batch;
  for (int rep = 0; rep < 4; ++rep) batch.insert(batch.end(), cases.begin(), cases.end());
  EngineSetup setup = DefaultSetup();
  setup.executor.capture_decode_batch = setup.engine.scheduler.max_batch_size;  // as `glmserve serve` does
  setup.executor.block_size = 4;                                                // sequences span several blocks
  setup.engine.scheduler.max_tokens_per_step = 64;
  std::unique_ptr<InferenceEngine> engine = MakeEngine(runner, setup);
  ASSERT_NE(engine, nullptr);
  RunAndCheck(engine.get(), batch, GetParam());
  engine->Shutdown();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EngineFixtureParityTest, ::testing::ValuesIn(testing::RecordedFixtureModels()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// ---------------------------------------------------------------------------------------------
// Batch invariance: 64 concurrent requests equal each one alone.

struct ModelCase {
  std::string name;
  fs::path dir;
};

void PrintTo(const ModelCase& model, std::ostream* os) { *os << model.name; }

std::vector<ModelCase> InvarianceModels() {
  return {{"glm4_tiny", TinyModelDir()},
          {"glm4_gqa", FixtureDir("glm4-gqa-safetensors")},
          {"chatglm3_fp16", FixtureDir("chatglm3-fp16-bin-sharded")}};
}

class BatchInvarianceTest : public ::testing::TestWithParam<std::tuple<ModelCase, bool>> {};

TEST_P(BatchInvarianceTest, SixtyFourConcurrentEqualAlone) {
  const auto& [model, sampled] = GetParam();
  ModelRunner* runner = LoadModel(model.dir);
  ASSERT_NE(runner, nullptr);
  std::vector<Case> cases = MakeCases(64, runner->info().vocab_size, sampled, sampled ? 7 : 3);
  ComputeExpected(runner, &cases);
  EngineSetup setup = DefaultSetup();
  setup.engine.scheduler.max_batch_size = 64;
  setup.executor.capture_decode_batch = setup.engine.scheduler.max_batch_size;  // as `glmserve serve` does
  std::unique_ptr<InferenceEngine> engine = MakeEngine(runner, setup);
  ASSERT_NE(engine, nullptr);
  Counts counts = RunAndCheck(engine.get(), cases, "invariance");
  EXPECT_EQ(counts.ok, 64);
  engine->Shutdown();
}

INSTANTIATE_TEST_SUITE_P(Models, BatchInvarianceTest,
                         ::testing::Combine(::testing::ValuesIn(InvarianceModels()), ::testing::Bool()),
                         [](const auto& info) {
                           return std::get<0>(info.param).name + (std::get<1>(info.param) ? "_seeded" : "_greedy");
                         });

// ---------------------------------------------------------------------------------------------
// OOM storm: injected OOM above 8 sequences, 100 requests, all complete with the right ids.

// `prefix_caching`: every prompt starts with the same 40 tokens and the engine shares their blocks,
// through the preemptions and retries of the storm.
// `seed` picks the cases.
// Seed 13, not 11: the forward is not bitwise batch-invariant (the matrix kernels depend on the
// row count, on the CPU and on CUDA), so a seeded draw whose uniform falls within rounding of a
// boundary of the sampled distribution can change with the batch it ran in. Seed 11's request 76
// has one: its fifth id differed in 2 of 22 CPU storms of other batch compositions, and in the
// shared-prefix storm on an H100 (twenty-eighth session); seed 13's cases held in all 22.
void RunOomStorm(bool at_executor, bool prefix_caching = false, bool overlap_steps = false, uint32_t seed = 13) {
  ModelRunner* runner = LoadModel(TinyModelDir());
  ASSERT_NE(runner, nullptr);
  std::vector<Case> cases = MakeCases(100, runner->info().vocab_size, /*sampled=*/false, seed, 8, 12);
  if (prefix_caching) {
    std::vector<int32_t> system;
    for (int32_t t = 0; t < 40; ++t) system.push_back((t * 131 + 17) % runner->info().vocab_size);
    for (Case& c : cases) c.prompt.insert(c.prompt.begin(), system.begin(), system.end());
  }
  // Every fourth request samples (seeded): shrinking must not change sampled ids either.
  for (size_t i = 0; i < cases.size(); i += 4) {
    cases[i].params.sampling.temperature = 0.8f;
    cases[i].params.sampling.seed = 77 + i;
  }
  ComputeExpected(runner, &cases);
  EngineSetup setup = DefaultSetup();
  setup.engine.scheduler.max_batch_size = 64;
  setup.engine.scheduler.aimd_increase_after_steps = 4;
  // Graphs captured up front (not the default) would hold their memory before the cap below is
  // set, and their replays allocate nothing: the storm needs captures and steps that allocate.
  setup.executor.capture_decode_batch = 0;
  if (prefix_caching) {
    setup.executor.block_size = 8;  // the shared 40 tokens fill 5 blocks
    setup.engine.scheduler.prefix_caching = true;
  }
  setup.engine.scheduler.overlap_steps = overlap_steps;
  if (at_executor) {
    setup.executor.inject_oom_above_sequences = 8;  // real path: forward runs, then OutOfMemoryError
  } else {
    setup.engine.scheduler.faults.oom_above_sequences = 8;
  }
  std::mutex mu;
  std::vector<std::pair<int32_t, int32_t>> changes;
  setup.engine.on_batch_limit_change = [&](int32_t from, int32_t to) {
    std::lock_guard<std::mutex> lock(mu);
    changes.emplace_back(from, to);
  };
  std::unique_ptr<InferenceEngine> engine = MakeEngine(runner, setup);
  ASSERT_NE(engine, nullptr);
  Counts counts = RunAndCheck(engine.get(), cases, at_executor ? "storm-executor" : "storm");
  const EngineStats stats = engine->stats();
  engine->Shutdown();

  std::printf("[ OOM storm (%s) ] %s; oom_events=%lld preemptions=%lld steps=%lld final batch_limit=%d\n",
              at_executor ? "executor OutOfMemoryError" : "scheduler fault", counts.ToString().c_str(),
              static_cast<long long>(stats.oom_events), static_cast<long long>(stats.preemptions),
              static_cast<long long>(stats.steps), stats.batch_limit);
  ::testing::Test::RecordProperty("counts", counts.ToString());
  EXPECT_EQ(counts.sent, 100);
  EXPECT_EQ(counts.ok, 100);
  EXPECT_TRUE(counts.errors.empty());
  EXPECT_EQ(counts.lost, 0);
  EXPECT_GT(stats.oom_events, 0);
  if (prefix_caching) {
    std::printf("[ OOM storm, prefix caching ] prefix_cache_hit_tokens=%lld blocks_cached=%d\n",
                static_cast<long long>(stats.prefix_cache_hit_tokens), stats.blocks_cached);
    EXPECT_GE(stats.prefix_cache_hit_tokens, 90 * 40);
  }
  EXPECT_EQ(stats.blocks_used, 0);

  std::lock_guard<std::mutex> lock(mu);
  std::string trace;
  for (const auto& [from, to] : changes) absl::StrAppend(&trace, from, "->", to, " ");
  std::printf("[ OOM storm (%s) ] batch limit: %s\n", at_executor ? "executor" : "scheduler", trace.c_str());
  int32_t lowest = 64;
  bool dropped_to_fit = false, grew_after_drop = false;
  for (const auto& [from, to] : changes) {
    if (to < from) {
      lowest = std::min(lowest, to);
      if (to <= 8) dropped_to_fit = true;
    } else if (dropped_to_fit && to > from) {
      grew_after_drop = true;
    }
  }
  EXPECT_TRUE(dropped_to_fit) << trace;
  EXPECT_TRUE(grew_after_drop) << trace;
  EXPECT_GE(lowest, 1);
  EXPECT_GT(stats.batch_limit, lowest) << trace;
}

TEST(EngineModelTest, OomStormAllHundredCompleteAndLimitRecovers) { RunOomStorm(/*at_executor=*/false); }

TEST(EngineModelTest, OomStormThroughExecutorOutOfMemoryError) { RunOomStorm(/*at_executor=*/true); }

TEST(EngineModelTest, OomStormWithSharedPrefixBlocks) { RunOomStorm(/*at_executor=*/true, /*prefix_caching=*/true); }

// Overlapped steps make other batches than synchronous ones (rows of requests that stopped,
// compositions from the timing).
TEST(EngineModelTest, OomStormWithOverlappedSteps) {
  RunOomStorm(/*at_executor=*/true, /*prefix_caching=*/true, /*overlap_steps=*/true);
}

// The OOM storm against real CUDA out-of-memory errors (GPU runs only): the allocator is capped a
// little above what the model and KV pool hold, so decode batches whose logits ([rows, 151552]
// fp32, 0.6 MB a row) and captured graphs no longer fit fail inside LibTorch's allocator, as on a
// full card. Every request must still finish with the ids it has alone.
TEST(EngineModelTest, OomStormOnRealCudaOutOfMemory) {
#ifdef GLMSERVE_TORCH_CUDA
  if (TestDevice().rfind("cuda", 0) != 0) GTEST_SKIP() << "needs GLMSERVE_TEST_DEVICE=cuda";
  LoadOptions load;
  load.device = TestDevice();
  load.dtype = "float32";
  load.random_weights = true;
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Load((fs::path(GLMSERVE_FIXTURES_DIR) / "random" / "wide-vocab").string(), load);
  ASSERT_TRUE(runner.ok()) << runner.status();
  std::vector<Case> cases = MakeCases(100, (*runner)->info().vocab_size, /*sampled=*/false, 13, 8, 12);
  for (size_t i = 0; i < cases.size(); i += 4) {
    cases[i].params.sampling.temperature = 0.8f;
    cases[i].params.sampling.top_k = 50;
    cases[i].params.sampling.seed = 91 + i;
  }
  ComputeExpected(runner->get(), &cases);
  EngineSetup setup = DefaultSetup();
  setup.engine.scheduler.max_batch_size = 64;
  setup.engine.scheduler.aimd_increase_after_steps = 4;
  std::unique_ptr<InferenceEngine> engine = MakeEngine(runner->get(), setup);
  ASSERT_NE(engine, nullptr);

  const c10::DeviceIndex device = c10::cuda::current_device();
  auto* allocator = c10::cuda::CUDACachingAllocator::get();
  allocator->emptyCache();
  size_t free_bytes = 0, total_bytes = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const int64_t reserved = c10::cuda::CUDACachingAllocator::getDeviceStats(device).reserved_bytes[0].current;
  // 30 MB of room: a batch of 64 (39 MB of logits alone) cannot fit; batches of 16 and below can.
  const double fraction = static_cast<double>(reserved + (30 << 20)) / static_cast<double>(total_bytes);
  c10::cuda::CUDACachingAllocator::setMemoryFraction(fraction, device);
  Counts counts = RunAndCheck(engine.get(), cases, "real-oom");
  const EngineStats stats = engine->stats();
  engine->Shutdown();
  c10::cuda::CUDACachingAllocator::setMemoryFraction(1.0, device);
  std::printf(
      "[ OOM storm (real CUDA OOM, cap %lld MiB reserved + 30 MiB) ] %s; oom_events=%lld preemptions=%lld "
      "steps=%lld final batch_limit=%d\n",
      static_cast<long long>(reserved >> 20), counts.ToString().c_str(), static_cast<long long>(stats.oom_events),
      static_cast<long long>(stats.preemptions), static_cast<long long>(stats.steps), stats.batch_limit);
  EXPECT_EQ(counts.ok, 100);
  EXPECT_TRUE(counts.errors.empty());
  EXPECT_EQ(counts.lost, 0);
  EXPECT_GT(stats.oom_events, 0);
#else
  GTEST_SKIP() << "this build has no CUDA LibTorch";
#endif
}

// ---------------------------------------------------------------------------------------------
// A KV pool too small for everyone: preemption and recompute leave the ids unchanged.

TEST(EngineModelTest, PoolExhaustionPreemptsAndRecomputesIdentically) {
  ModelRunner* runner = LoadModel(TinyModelDir());
  ASSERT_NE(runner, nullptr);
  std::vector<Case> cases = MakeCases(24, runner->info().vocab_size, /*sampled=*/false, 21, 16, 24);
  for (size_t i = 1; i < cases.size(); i += 2) {
    cases[i].params.sampling.temperature = 0.7f;
    cases[i].params.sampling.top_k = 20;
    cases[i].params.sampling.seed = 5 + i;
  }
  for (Case& c : cases) c.params.min_new_tokens = c.params.max_new_tokens;  // full length: more decode growth
  ComputeExpected(runner, &cases);
  EngineSetup setup = DefaultSetup();
  setup.executor.block_size = 4;
  setup.executor.num_blocks = 24;  // 96 token slots; one request needs up to 72
  setup.engine.scheduler.max_batch_size = 64;
  std::unique_ptr<InferenceEngine> engine = MakeEngine(runner, setup);
  ASSERT_NE(engine, nullptr);
  Counts counts = RunAndCheck(engine.get(), cases, "pool");
  const EngineStats stats = engine->stats();
  engine->Shutdown();
  std::printf("[ pool exhaustion ] %s; preemptions=%lld steps=%lld blocks_total=%d\n", counts.ToString().c_str(),
              static_cast<long long>(stats.preemptions), static_cast<long long>(stats.steps), stats.blocks_total);
  EXPECT_EQ(counts.ok, 24);
  EXPECT_GT(stats.preemptions, 0);
  EXPECT_EQ(stats.blocks_total, 24);
}

// ---------------------------------------------------------------------------------------------
// Overlapped steps (SchedulerOptions::overlap_steps): every step launched before the one before it
// is committed, decode rows fed the previous step's ids where they are (on a GPU: the device).
// Every sampling path the executor has (greedy, seeded top-k / top-p draws, the three penalties,
// stop ids masked before min_new_tokens, stops on the model's EOS) through mixed steps (chunked
// prefill beside decodes), prefix caching and preemption gives each request its ids alone.

TEST(EngineModelTest, OverlappedStepsGiveEachRequestItsAloneIds) {
  ModelRunner* runner = LoadModel(TinyModelDir());
  ASSERT_NE(runner, nullptr);
  const int32_t vocab = runner->info().vocab_size;
  std::vector<Case> cases = MakeCases(40, vocab, /*sampled=*/false, 51, 6, 20);
  std::vector<int32_t> system;
  for (int32_t t = 0; t < 24; ++t) system.push_back((t * 37 + 5) % vocab);
  for (size_t i = 0; i < cases.size(); ++i) {
    Case& c = cases[i];
    if (i % 4 == 0) c.prompt.insert(c.prompt.begin(), system.begin(), system.end());
    SamplingParams& s = c.params.sampling;
    switch (i % 5) {
      case 1:
        s.temperature = 0.8f;
        s.top_k = 30;
        s.top_p = 0.9f;
        s.seed = 300 + i;
        break;
      case 2:  // the phone agent's settings
        s.frequency_penalty = 0.2f;
        s.top_p = 0.85f;
        break;
      case 3:
        s.temperature = 0.7f;
        s.seed = 400 + i;
        s.presence_penalty = 0.5f;
        s.repetition_penalty = 1.3f;
        break;
      case 4:
        c.params.min_new_tokens = c.params.max_new_tokens;  // the EOS masked throughout
        break;
      default:
        break;
    }
  }
  ComputeExpected(runner, &cases);
  EngineSetup setup = DefaultSetup();
  setup.executor.block_size = 4;
  setup.executor.num_blocks = 96;  // 384 token slots for up to 16 requests of up to 92: preemption
  setup.executor.capture_decode_batch = 16;
  setup.engine.scheduler.max_batch_size = 16;
  setup.engine.scheduler.max_tokens_per_step = 48;  // prompts come in chunks beside the decodes
  setup.engine.scheduler.prefix_caching = true;
  setup.engine.scheduler.overlap_steps = true;
  std::unique_ptr<InferenceEngine> engine = MakeEngine(runner, setup);
  ASSERT_NE(engine, nullptr);
  const Counts counts = RunAndCheck(engine.get(), cases, "overlap");
  const Counts again = RunAndCheck(engine.get(), cases, "overlap-again");  // cached prefixes
  const EngineStats stats = engine->stats();
  engine->Shutdown();
  std::printf("[ overlapped steps ] %s / %s; steps=%lld preemptions=%lld prefix_cache_hit_tokens=%lld\n",
              counts.ToString().c_str(), again.ToString().c_str(), static_cast<long long>(stats.steps),
              static_cast<long long>(stats.preemptions), static_cast<long long>(stats.prefix_cache_hit_tokens));
  EXPECT_EQ(counts.ok + again.ok, 80);
  EXPECT_GT(stats.preemptions, 0);
  EXPECT_GT(stats.prefix_cache_hit_tokens, 0);
}

// ---------------------------------------------------------------------------------------------
// Chunked prefill: a prompt longer than the step's token budget.

TEST(EngineModelTest, ChunkedPrefillOfLongPromptGivesIdenticalIds) {
  ModelRunner* runner = LoadModel(TinyModelDir());
  ASSERT_NE(runner, nullptr);
  const int32_t vocab = runner->info().vocab_size;
  std::vector<Case> cases(4);
  std::mt19937 rng(99);
  const int32_t lengths[] = {300, 157, 3, 64};
  for (size_t i = 0; i < cases.size(); ++i) {
    for (int32_t t = 0; t < lengths[i]; ++t) cases[i].prompt.push_back(static_cast<int32_t>(rng() % vocab));
    cases[i].params.max_new_tokens = 10;
    if (i % 2 == 1) {
      cases[i].params.sampling.temperature = 1.0f;
      cases[i].params.sampling.seed = 3 + i;
    }
  }
  ComputeExpected(runner, &cases);
  EngineSetup setup = DefaultSetup();
  setup.executor.block_size = 8;
  setup.engine.scheduler.max_batch_size = 4;
  setup.engine.scheduler.max_tokens_per_step = 24;  // far below the 300-token prompt
  std::unique_ptr<InferenceEngine> engine = MakeEngine(runner, setup);
  ASSERT_NE(engine, nullptr);
  Counts counts = RunAndCheck(engine.get(), cases, "chunked");
  const EngineStats stats = engine->stats();
  engine->Shutdown();
  EXPECT_EQ(counts.ok, 4);
  EXPECT_GE(stats.steps, 300 / 24) << "the long prompt must take several steps";
}

// ---------------------------------------------------------------------------------------------
// Prefix caching: prompts that repeat a 40-token system prompt reuse its KV blocks (several at once,
// and after the first ones finished) and give the ids each request gives alone.

TEST(EngineModelTest, PrefixCachingGivesEachRequestItsOwnIds) {
  ModelRunner* runner = LoadModel(TinyModelDir());
  ASSERT_NE(runner, nullptr);
  const int32_t vocab = runner->info().vocab_size;
  std::mt19937 rng(7);
  std::vector<int32_t> system;
  for (int32_t t = 0; t < 40; ++t) system.push_back(static_cast<int32_t>(rng() % vocab));
  std::vector<Case> cases = MakeCases(12, vocab, /*sampled=*/false, 31, 6, 10);
  for (size_t i = 0; i < cases.size(); ++i) {
    cases[i].prompt.insert(cases[i].prompt.begin(), system.begin(), system.end());
    if (i % 3 == 2) {
      cases[i].params.sampling.temperature = 0.8f;
      cases[i].params.sampling.seed = 40 + i;
    }
  }
  cases.push_back(cases[0]);  // a prompt seen before, whole
  ComputeExpected(runner, &cases);
  EngineSetup setup = DefaultSetup();
  setup.executor.block_size = 8;
  setup.engine.scheduler.prefix_caching = true;
  std::unique_ptr<InferenceEngine> engine = MakeEngine(runner, setup);
  ASSERT_NE(engine, nullptr);
  const std::vector<Case> first(cases.begin(), cases.begin() + 4), rest(cases.begin() + 4, cases.end());
  const Counts counts = RunAndCheck(engine.get(), first, "prefix-first");
  const Counts more = RunAndCheck(engine.get(), rest, "prefix-rest");
  const EngineStats stats = engine->stats();
  engine->Shutdown();
  EXPECT_EQ(counts.ok + more.ok, static_cast<int>(cases.size()));
  // At least the 5 full blocks of the system prompt for each of the later 9 requests.
  EXPECT_GE(stats.prefix_cache_hit_tokens, 9 * 40);
  EXPECT_GT(stats.blocks_cached, 0);
  EXPECT_EQ(stats.blocks_used, 0);
}

// ---------------------------------------------------------------------------------------------
// Cancellation and deadlines give every block back.

TEST(EngineModelTest, CancellationAndDeadlineFreeBlocks) {
  ModelRunner* runner = LoadModel(TinyModelDir());
  ASSERT_NE(runner, nullptr);
  EngineSetup setup = DefaultSetup();
  setup.executor.block_size = 16;
  setup.engine.scheduler.max_batch_size = 2;
  std::unique_ptr<InferenceEngine> engine = MakeEngine(runner, setup);
  ASSERT_NE(engine, nullptr);

  auto long_request = [](const std::string& id, int32_t seed) {
    InferenceRequest r;
    r.request_id = id;
    for (int32_t i = 0; i < 20; ++i) r.input_ids.push_back((seed * 31 + i * 7) % 1000);
    r.params.max_new_tokens = 1800;  // never reached in time: the test cancels or expires it
    r.params.min_new_tokens = 1800;  // no early stop on eos
    return r;
  };

  // Two running (the batch limit is 2) and one waiting; wait until both running streamed tokens.
  Collector collector(4);
  std::mutex mu;
  std::condition_variable cv;
  int streamed[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    RequestCallbacks cb = collector.Callbacks(i);
    cb.on_tokens = [&, i](const std::vector<int32_t>& ids) {
      std::lock_guard<std::mutex> lock(mu);
      streamed[i] += static_cast<int>(ids.size());
      cv.notify_all();
    };
    ASSERT_TRUE(engine->Submit(long_request(absl::StrCat("run-", i), i), cb).ok());
  }
  ASSERT_TRUE(engine->Submit(long_request("queued", 9), collector.Callbacks(2)).ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, kWait, [&] { return streamed[0] >= 3 && streamed[1] >= 3; }));
  }
  EXPECT_GT(engine->stats().blocks_used, 0);
  engine->Cancel("queued");
  engine->Cancel("run-0");
  engine->Cancel("run-1");
  ASSERT_TRUE(collector.WaitFor(3));
  for (int i = 0; i < 3; ++i) {
    Outcome o = collector.Get(i);
    EXPECT_EQ(o.result.status.code(), absl::StatusCode::kCancelled) << i << ": " << o.result.status;
    EXPECT_EQ(o.result.finish_reason, FinishReason::kCancelled) << i;
  }
  EXPECT_GE(collector.Get(0).result.output_ids.size(), 3u) << "partial output is kept";
  EXPECT_TRUE(collector.Get(2).result.output_ids.empty());
  ASSERT_TRUE(engine->WaitIdle(kWait));
  EngineStats stats = engine->stats();
  EXPECT_EQ(stats.blocks_used, 0);
  EXPECT_EQ(stats.blocks_free, stats.blocks_total);

  // A deadline that passes mid-generation (1800 tokens cannot finish in 150 ms).
  InferenceRequest expiring = long_request("deadline", 4);
  expiring.deadline = std::chrono::steady_clock::now() + milliseconds(150);
  ASSERT_TRUE(engine->Submit(expiring, collector.Callbacks(3)).ok());
  ASSERT_TRUE(collector.WaitFor(4));
  Outcome o = collector.Get(3);
  EXPECT_EQ(o.result.status.code(), absl::StatusCode::kDeadlineExceeded) << o.result.status;
  EXPECT_EQ(o.result.finish_reason, FinishReason::kDeadline);
  EXPECT_LT(o.result.output_ids.size(), 1800u);
  ASSERT_TRUE(engine->WaitIdle(kWait));
  stats = engine->stats();
  EXPECT_EQ(stats.blocks_used, 0);
  EXPECT_EQ(stats.blocks_free, stats.blocks_total);
  EXPECT_EQ(stats.running, 0);
  EXPECT_EQ(stats.waiting, 0);
  engine->Shutdown();
}

// ---------------------------------------------------------------------------------------------
// The executor's own contract checks (runtime/engine/README.md, "What the executor may rely on").

TEST(PagedExecutorTest, HonoursTheStepContract) {
  ModelRunner* runner = LoadModel(TinyModelDir());
  ASSERT_NE(runner, nullptr);
  ExecutorOptions options;
  options.block_size = 4;
  options.num_blocks = 8;
  std::string logged;
  options.log = [&](const std::string& line) { logged += line; };
  absl::StatusOr<std::unique_ptr<StepExecutor>> executor = runner->CreateExecutor(options);
  ASSERT_TRUE(executor.ok()) << executor.status();
  EXPECT_EQ((*executor)->num_blocks(), 8);
  EXPECT_EQ((*executor)->block_size(), 4);
  EXPECT_NE(logged.find("8 blocks"), std::string::npos) << logged;

  GenerationParams params;
  std::vector<int32_t> history_a = {1, 2, 3, 4, 5}, history_b = {9, 8, 7};
  SequenceStep a;
  a.sequence_id = 1;
  a.tokens = {1, 2, 3};  // a non-final chunk: no sample
  a.block_table = {0, 1};
  a.sample = false;
  a.params = &params;
  a.history = &history_a;
  SequenceStep b;
  b.sequence_id = 2;
  b.tokens = history_b;
  b.block_table = {2};
  b.params = &params;
  b.history = &history_b;
  absl::StatusOr<StepResult> result = (*executor)->Step({a, b});
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->next_tokens.size(), 2u);
  EXPECT_EQ(result->next_tokens[0], -1);
  EXPECT_GE(result->next_tokens[1], 0);
  EXPECT_LT(result->next_tokens[1], runner->info().vocab_size);

  // Broken promises fail the batch with INTERNAL, and never throw.
  SequenceStep shared = b;
  shared.block_table = {0};  // block 0 belongs to `a`
  EXPECT_EQ((*executor)->Step({a, shared}).status().code(), absl::StatusCode::kInternal);
  // Prefix caching: blocks before a sequence's start_position are read-only context, which
  // sequences may share; a block one of them writes may not be read or written by another.
  const std::vector<int32_t> prefix = {1, 2, 3, 4}, history_c = {1, 2, 3, 4, 9}, history_d = {1, 2, 3, 4, 7};
  SequenceStep writer = b;
  writer.sequence_id = 3;
  writer.tokens = prefix;
  writer.history = &prefix;
  writer.block_table = {3};
  ASSERT_TRUE((*executor)->Step({writer}).ok());
  SequenceStep c = b, d = b;
  c.sequence_id = 4;
  c.tokens = {9};
  c.start_position = 4;
  c.history = &history_c;
  c.block_table = {3, 4};
  d.sequence_id = 5;
  d.tokens = {7};
  d.start_position = 4;
  d.history = &history_d;
  d.block_table = {3, 5};
  absl::StatusOr<StepResult> sharing = (*executor)->Step({c, d});
  EXPECT_TRUE(sharing.ok()) << sharing.status();
  SequenceStep rewriting = writer;
  rewriting.sequence_id = 6;
  absl::StatusOr<StepResult> read_while_written = (*executor)->Step({c, rewriting});
  EXPECT_EQ(read_while_written.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(read_while_written.status().message().find("reads block 3"), std::string::npos)
      << read_while_written.status();
  SequenceStep short_table = b;
  short_table.tokens = history_a;  // 5 positions, one block of 4
  short_table.history = &history_a;
  short_table.block_table = {0};
  EXPECT_EQ((*executor)->Step({short_table}).status().code(), absl::StatusCode::kInternal);
  SequenceStep out_of_pool = b;
  out_of_pool.block_table = {8};
  EXPECT_EQ((*executor)->Step({out_of_pool}).status().code(), absl::StatusCode::kInternal);
  SequenceStep no_params = b;
  no_params.params = nullptr;
  EXPECT_EQ((*executor)->Step({no_params}).status().code(), absl::StatusCode::kInternal);

  // The executor-level OOM hook: RESOURCE_EXHAUSTED above the threshold, fine at it.
  options.inject_oom_above_sequences = 1;
  executor = runner->CreateExecutor(options);
  ASSERT_TRUE(executor.ok());
  absl::StatusOr<StepResult> oom = (*executor)->Step({a, b});
  EXPECT_EQ(oom.status().code(), absl::StatusCode::kResourceExhausted) << oom.status();
  EXPECT_TRUE((*executor)->Step({b}).ok());

  ExecutorOptions sized;
  sized.block_size = 16;
  if (TestDevice() != "cpu") {
    // On CUDA: a fraction of the free device memory, logged with where it came from.
    sized.kv_memory_fraction = 0.01;
    std::string line;
    sized.log = [&](const std::string& l) { line = l; };
    executor = runner->CreateExecutor(sized);
    ASSERT_TRUE(executor.ok()) << executor.status();
    EXPECT_GT((*executor)->num_blocks(), 0);
    EXPECT_NE(line.find("free on cuda"), std::string::npos) << line;
    std::printf("[ kv sizing ] %s\n", line.c_str());
    return;
  }
  // Pool sizing on CPU: the byte budget over bytes per block.
  sized.kv_cpu_budget_bytes = int64_t{4} << 20;
  sized.log = [](const std::string&) {};
  executor = runner->CreateExecutor(sized);
  ASSERT_TRUE(executor.ok()) << executor.status();
  const ModelInfo& info = runner->info();
  const int64_t per_block = int64_t{2} * info.num_layers * info.num_key_value_heads * info.head_dim * 4 * 16;
  EXPECT_EQ((*executor)->num_blocks(), (int64_t{4} << 20) / per_block);
  sized.kv_cpu_budget_bytes = 16;
  EXPECT_EQ(runner->CreateExecutor(sized).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PagedExecutorTest, CapturesTheDecodeGraphsWhenCreated) {
  ModelRunner* runner = LoadModel(TinyModelDir());
  ASSERT_NE(runner, nullptr);
  ExecutorOptions options;
  options.block_size = 4;
  options.num_blocks = 32;
  options.capture_decode_batch = -1;
  const absl::Status negative = runner->CreateExecutor(options).status();
  EXPECT_EQ(negative.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(negative.message().find("capture_decode_batch: expected >= 0"), absl::string_view::npos) << negative;

  std::vector<std::string> lines;
  options.log = [&](const std::string& line) { lines.push_back(line); };
  options.capture_decode_batch = 3;
  absl::StatusOr<std::unique_ptr<StepExecutor>> executor = runner->CreateExecutor(options);
  ASSERT_TRUE(executor.ok()) << executor.status();
  const std::string log = absl::StrJoin(lines, "\n");
  const char* graphs = std::getenv("GLMSERVE_CUDA_GRAPHS");
  if (TestDevice() != "cpu" && (graphs == nullptr || std::string(graphs) != "0")) {
    EXPECT_NE(log.find("decode graphs captured for batch buckets [1,2,4] in "), std::string::npos) << log;
  } else {
    EXPECT_EQ(log.find("decode graphs"), std::string::npos) << log;  // nothing to capture
  }

  // Three sequences decoded together (the bucket of 4, padding row included, captured above)
  // give each one's ids alone.
  GenerationParams params;
  params.max_new_tokens = 6;
  const std::vector<std::vector<int32_t>> prompts = {{5, 6, 7}, {11, 3}, {2, 9, 4, 8, 1}};
  std::vector<std::vector<int32_t>> history = prompts, generated(prompts.size());
  for (int step = 0; step < params.max_new_tokens; ++step) {
    std::vector<SequenceStep> batch(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      SequenceStep& s = batch[i];
      s.sequence_id = static_cast<int64_t>(i);
      s.start_position = step == 0 ? 0 : static_cast<int32_t>(history[i].size()) - 1;
      s.tokens = step == 0 ? prompts[i] : std::vector<int32_t>{history[i].back()};
      for (int32_t b = 0; b < 4; ++b) s.block_table.push_back(static_cast<int32_t>(i) * 4 + b);
      s.num_generated = step;
      s.params = &params;
      s.history = &history[i];
    }
    absl::StatusOr<StepResult> result = (*executor)->Step(batch);
    ASSERT_TRUE(result.ok()) << result.status();
    for (size_t i = 0; i < prompts.size(); ++i) {
      history[i].push_back(result->next_tokens[i]);
      generated[i].push_back(result->next_tokens[i]);
    }
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    absl::StatusOr<GenerationOutput> alone = GenerateOnce(*runner, prompts[i], params);
    ASSERT_TRUE(alone.ok()) << alone.status();
    EXPECT_EQ(generated[i], alone->output_ids) << "sequence " << i;
  }
}

}  // namespace
}  // namespace glmserve
