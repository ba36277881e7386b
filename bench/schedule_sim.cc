#include "bench/schedule_sim.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <memory>
#include <random>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/glmload_stats.h"
#include "runtime/engine/clock.h"

namespace glmserve::bench {

double Curve::At(double x) const {
  if (points.empty()) return 0;
  if (x <= points.front().first) return points.front().second;
  for (size_t i = 1; i < points.size(); ++i) {
    const auto& [x1, y1] = points[i];
    if (x <= x1) {
      const auto& [x0, y0] = points[i - 1];
      return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
    }
  }
  return points.back().second;
}

absl::StatusOr<Curve> ParseCurve(const std::string& text) {
  Curve curve;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    const std::vector<absl::string_view> xy = absl::StrSplit(item, ':');
    double x = 0, y = 0;
    if (xy.size() != 2 || !absl::SimpleAtod(xy[0], &x) || !absl::SimpleAtod(xy[1], &y) || !std::isfinite(x) ||
        !std::isfinite(y) || y < 0) {
      return absl::InvalidArgumentError(absl::StrCat("'", item, "' is not x:y (numbers, y >= 0)"));
    }
    if (!curve.points.empty() && x <= curve.points.back().first) {
      return absl::InvalidArgumentError(absl::StrCat("'", item, "': x must grow from one point to the next"));
    }
    curve.points.emplace_back(x, y);
  }
  if (curve.points.empty()) return absl::InvalidArgumentError("no x:y points");
  return curve;
}

double CostModel::StepMs(int32_t decode_rows, int32_t prompt_tokens) const {
  if (decode_rows == 0) return std::max(decode_ms.At(1), prompt_tokens * prefill_only_token_us / 1000.0);
  const int32_t rows = decode_rows + prompt_tokens;
  const int32_t bucket = (rows + 63) / 64 * 64;
  return decode_ms.At(decode_rows) + prompt_tokens * prompt_token_us.At(bucket) / 1000.0;
}

CostModel H100CostModel() {
  CostModel cost;
  cost.decode_ms = Curve{{{1, 6.84}, {8, 7.59}, {32, 7.65}, {64, 7.91}, {128, 8.63}, {256, 10.85}}};
  cost.prompt_token_us = Curve{{{64, 7.5}, {128, 7.5}, {192, 18.0}, {256, 14.0}, {320, 18.0}, {512, 26.0}}};
  cost.prefill_only_token_us = 30.0;
  return cost;
}

namespace {

using TimePoint = Clock::TimePoint;

// Answers every step with token 1 and keeps the modelled device's timeline: a step takes its
// modelled time from when it is given (Step) or, launched (overlapped steps), from when the device
// finishes the step before it; the clock reaches a step's end when its ids are asked for (Step,
// Collect). The host costs nothing here.
class SimExecutor final : public StepExecutor {
 public:
  SimExecutor(const CostModel& cost, FakeClock* clock, int32_t num_blocks)
      : cost_(cost), clock_(clock), num_blocks_(num_blocks) {}
  int32_t block_size() const override { return 16; }
  int32_t num_blocks() const override { return num_blocks_; }
  absl::StatusOr<StepResult> Step(const std::vector<SequenceStep>& batch) override {
    StepResult result = Answer(batch);
    clock_->Advance(Modelled(batch));
    return result;
  }
  absl::Status Launch(const std::vector<SequenceStep>& batch) override {
    const TimePoint start = std::max(clock_->Now(), device_free_);
    device_free_ = start + Modelled(batch);
    launched_.push_back({Answer(batch), device_free_});
    return absl::OkStatus();
  }
  absl::StatusOr<StepResult> Collect() override {
    if (launched_.empty()) return absl::FailedPreconditionError("Collect with no launched step");
    Launched step = std::move(launched_.front());
    launched_.pop_front();
    if (clock_->Now() < step.ends) clock_->Advance(step.ends - clock_->Now());
    return std::move(step.result);
  }
  int64_t steps() const { return steps_; }

 private:
  struct Launched {
    StepResult result;
    TimePoint ends;
  };

  StepResult Answer(const std::vector<SequenceStep>& batch) {
    StepResult result;
    for (const SequenceStep& s : batch) result.next_tokens.push_back(s.sample ? 1 : -1);
    ++steps_;
    return result;
  }
  Clock::Duration Modelled(const std::vector<SequenceStep>& batch) const {
    int32_t decodes = 0, prompt_tokens = 0;
    for (const SequenceStep& s : batch) {
      if (s.tokens.size() == 1 && s.num_generated > 0) {
        ++decodes;
      } else {
        prompt_tokens += static_cast<int32_t>(s.tokens.size());
      }
    }
    return std::chrono::duration_cast<Clock::Duration>(
        std::chrono::duration<double, std::milli>(cost_.StepMs(decodes, prompt_tokens)));
  }

  const CostModel& cost_;
  FakeClock* clock_;
  int32_t num_blocks_;
  int64_t steps_ = 0;
  TimePoint device_free_;
  std::deque<Launched> launched_;
};

double Ms(Clock::Duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

absl::StatusOr<SimResult> Simulate(const SchedulerOptions& options, const CostModel& cost, const SimLoad& load) {
  if (load.concurrency < 0 || (load.concurrency == 0 && !(load.rate > 0))) {
    return absl::InvalidArgumentError("load: concurrency > 0 (closed loop) or rate > 0 (open loop)");
  }
  if (load.prompt_len < 1 || load.new_tokens < 1) {
    return absl::InvalidArgumentError("load: prompt_len and new_tokens must be >= 1");
  }
  if (!(load.client_delay_ms >= 0)) return absl::InvalidArgumentError("load: client_delay_ms must be >= 0");
  if (!(load.warmup_s >= 0) || !(load.duration_s > load.warmup_s)) {
    return absl::InvalidArgumentError("load: 0 <= warmup_s < duration_s");
  }
  FakeClock clock;
  // Room for every request the load can have in flight: no preemption in the model.
  SimExecutor executor(cost, &clock, 1 << 20);
  ModelInfo info;
  info.architecture = "sim";
  info.vocab_size = 1000;
  info.max_position_embeddings = load.prompt_len + load.new_tokens + 16;
  absl::StatusOr<std::unique_ptr<Scheduler>> scheduler = Scheduler::Create(options, &executor, &clock, info);
  if (!scheduler.ok()) return scheduler.status();

  struct Request {
    TimePoint submit;
    std::vector<TimePoint> arrivals;
  };
  std::deque<Request> requests;   // stable references for the callbacks
  std::vector<TimePoint> resend;  // closed loop: finishes whose next request is due
  absl::Status failure;
  int64_t finished = 0;
  const TimePoint start = clock.Now();
  const auto at = [&](double seconds) {
    return start + std::chrono::duration_cast<Clock::Duration>(std::chrono::duration<double>(seconds));
  };
  const TimePoint end = at(load.duration_s);
  const bool closed = load.concurrency > 0;

  auto submit = [&](TimePoint when) -> absl::Status {
    const int64_t id = static_cast<int64_t>(requests.size());
    requests.push_back(Request{when, {}});
    Request* request = &requests.back();
    InferenceRequest r;
    r.request_id = absl::StrCat("sim-", id);
    for (int32_t i = 0; i < load.prompt_len; ++i)
      r.input_ids.push_back(static_cast<int32_t>((id * 7919 + i * 13) % 997 + 2));
    r.params.max_new_tokens = load.new_tokens;
    r.params.min_new_tokens = load.new_tokens;
    RequestCallbacks callbacks;
    callbacks.on_tokens = [&clock, request](const std::vector<int32_t>& ids) {
      request->arrivals.insert(request->arrivals.end(), ids.size(), clock.Now());
    };
    callbacks.on_done = [&, closed](const RequestResult& result) {
      if (!result.status.ok() && failure.ok()) failure = result.status;
      ++finished;
      if (closed && clock.Now() < end) resend.push_back(clock.Now());
    };  // (resent through `arrivals` after the step: a callback must not re-enter the scheduler)
    return (*scheduler)->Add(std::move(r), std::move(callbacks), when);
  };

  std::mt19937_64 rng(load.seed);  // client delays (closed loop)
  std::uniform_real_distribution<double> client_delay_ms(0, load.client_delay_ms);
  const auto delayed = [&](TimePoint t) {
    if (load.client_delay_ms == 0) return t;
    return t +
           std::chrono::duration_cast<Clock::Duration>(std::chrono::duration<double, std::milli>(client_delay_ms(rng)));
  };
  // The arrivals still to send, in time order: the Poisson schedule, or the closed loop's sends.
  std::multiset<TimePoint> arrivals;
  if (!closed) {
    glmserve::load::PoissonArrivals poisson(load.rate, load.seed);  // glmload's open loop
    for (double t = poisson.NextGapSeconds(); t < load.duration_s; t += poisson.NextGapSeconds())
      arrivals.insert(at(t));
  } else {
    for (int32_t i = 0; i < load.concurrency; ++i) arrivals.insert(delayed(start));
  }
  constexpr int64_t kMaxSteps = 10'000'000;
  while (executor.steps() < kMaxSteps) {
    for (TimePoint finished_at : resend) arrivals.insert(delayed(finished_at));
    resend.clear();
    const TimePoint now = clock.Now();
    while (!arrivals.empty() && *arrivals.begin() <= now) {
      if (absl::Status s = submit(*arrivals.begin()); !s.ok()) return s;
      arrivals.erase(arrivals.begin());
    }
    if ((*scheduler)->HasWork()) {
      if ((*scheduler)->RunOnce() == Scheduler::StepOutcome::kIdle) {
        // Held (a queue delay): to when it ends or the next arrival.
        TimePoint wake = (*scheduler)->NextWakeTime(now);
        if (!arrivals.empty()) wake = std::min(wake, *arrivals.begin());
        clock.Advance(wake > now && wake != TimePoint::max() ? wake - now : std::chrono::milliseconds(1));
      }
    } else if (!arrivals.empty()) {
      clock.Advance(*arrivals.begin() - now);
    } else {
      break;
    }
    if (!failure.ok()) return absl::InternalError(absl::StrCat("a simulated request failed: ", failure.ToString()));
  }
  if (executor.steps() >= kMaxSteps) return absl::InternalError("the simulation did not end within 10,000,000 steps");

  SimResult result;
  const TimePoint steady_from = at(load.warmup_s);
  int64_t steady_tokens = 0, tokens = 0;
  TimePoint last_token = start;
  std::vector<double> ttft, itl;
  for (const Request& r : requests) {
    if (r.arrivals.empty()) continue;
    tokens += static_cast<int64_t>(r.arrivals.size());
    last_token = std::max(last_token, r.arrivals.back());
    ttft.push_back(Ms(r.arrivals.front() - r.submit));
    for (size_t i = 0; i < r.arrivals.size(); ++i) {
      if (i > 0) itl.push_back(Ms(r.arrivals[i] - r.arrivals[i - 1]));
      if (r.arrivals[i] > steady_from && r.arrivals[i] <= end) ++steady_tokens;
    }
  }
  result.steady_tok_s = static_cast<double>(steady_tokens) / (load.duration_s - load.warmup_s);
  if (last_token > start) result.tok_s = static_cast<double>(tokens) / (Ms(last_token - start) / 1000.0);
  // glmload's nearest-rank percentiles, so the figures compare with its tables.
  result.ttft_p50_ms = glmserve::load::Percentile(ttft, 50);
  result.ttft_p99_ms = glmserve::load::Percentile(std::move(ttft), 99);
  result.itl_p50_ms = glmserve::load::Percentile(itl, 50);
  result.itl_p99_ms = glmserve::load::Percentile(std::move(itl), 99);
  result.requests = finished;
  result.steps = executor.steps();
  return result;
}

}  // namespace glmserve::bench
