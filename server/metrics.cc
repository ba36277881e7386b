#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <chrono>
#include <exception>
#include <functional>

#include "absl/strings/str_cat.h"

namespace glmserve {
namespace {

prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerMetrics>> ServerMetrics::Create(const std::string& host,
                                                                      int port,
                                                                      const std::string& version) {
  std::unique_ptr<ServerMetrics> m(new ServerMetrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Registry& r = *m->registry_;
  m->requests_ = &prometheus::BuildCounter()
                      .Name("glmserve_requests_total")
                      .Help("Infer/InferStream calls finished, by gRPC status code")
                      .Register(r);
  m->requests_->Add({{"code", "OK"}});  // the series exists before the first request
  m->latency_ = &prometheus::BuildHistogram()
                     .Name("glmserve_request_latency_seconds")
                     .Help("Submit to last token of requests the engine finished")
                     .Register(r)
                     .Add({}, SecondsBuckets());
  m->ttft_ = &prometheus::BuildHistogram()
                  .Name("glmserve_time_to_first_token_seconds")
                  .Help("Submit to first generated token")
                  .Register(r)
                  .Add({}, SecondsBuckets());
  m->queue_wait_ = &prometheus::BuildHistogram()
                        .Name("glmserve_queue_wait_seconds")
                        .Help("Submit to first scheduled step")
                        .Register(r)
                        .Add({}, SecondsBuckets());
  m->batch_size_ = &prometheus::BuildHistogram()
                        .Name("glmserve_batch_size")
                        .Help("Sequences per engine step attempt")
                        .Register(r)
                        .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256});
  m->queue_depth_ = &prometheus::BuildGauge()
                         .Name("glmserve_queue_depth")
                         .Help("Accepted requests not running (queued or preempted)")
                         .Register(r)
                         .Add({});
  m->batch_limit_ = &prometheus::BuildGauge()
                         .Name("glmserve_batch_limit")
                         .Help("Current AIMD limit on running sequences")
                         .Register(r)
                         .Add({});
  m->kv_usage_ = &prometheus::BuildGauge()
                      .Name("glmserve_kv_cache_usage_ratio")
                      .Help("KV blocks in use / KV blocks in the pool")
                      .Register(r)
                      .Add({});
  m->oom_ = &prometheus::BuildCounter()
                 .Name("glmserve_oom_events_total")
                 .Help("Engine steps that ran out of memory (real or injected)")
                 .Register(r)
                 .Add({});
  m->restarts_ = &prometheus::BuildCounter()
                      .Name("glmserve_engine_restarts_total")
                      .Help("Engine rebuilds by the watchdog")
                      .Register(r)
                      .Add({});
  m->generated_ = &prometheus::BuildCounter()
                       .Name("glmserve_generated_tokens_total")
                       .Help("Tokens generated (streamed or returned)")
                       .Register(r)
                       .Add({});
  prometheus::BuildGauge()
      .Name("glmserve_build_info")
      .Help("Always 1; labels carry the build")
      .Register(r)
      .Add({{"version", version}, {"compiler", __VERSION__}})
      .Set(1);
  if (port > 0) {
    const std::string address =
        host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
    try {
      m->exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("--metrics-port: cannot listen on ", address, ": ", e.what()));
    }
    m->exposer_->RegisterCollectable(m->registry_);
    const std::vector<int> ports = m->exposer_->GetListeningPorts();
    m->port_ = ports.empty() ? port : ports.front();
  }
  return m;
}

ServerMetrics::~ServerMetrics() {
  StopPolling();
  exposer_.reset();
}

void ServerMetrics::StopPolling() {
  stop_ = true;
  if (poller_.joinable()) poller_.join();
}

void ServerMetrics::OnRequestFinished(const char* code, const RequestResult* result) {
  requests_->Add({{"code", code}}).Increment();
  if (result == nullptr) return;
  generated_->Increment(static_cast<double>(result->output_ids.size()));
  if (result->status.ok()) latency_->Observe(result->total_ms / 1000.0);
  if (result->ttft_ms > 0) ttft_->Observe(result->ttft_ms / 1000.0);
  if (result->queue_ms > 0 || result->status.ok()) queue_wait_->Observe(result->queue_ms / 1000.0);
}

void ServerMetrics::OnStep(int32_t batch_size, const absl::Status& status) {
  batch_size_->Observe(batch_size);
  if (absl::IsResourceExhausted(status)) oom_->Increment();
}

void ServerMetrics::OnEngineRestart() { restarts_->Increment(); }

void ServerMetrics::SetEngineStats(const EngineStats& stats) {
  queue_depth_->Set(stats.waiting);
  batch_limit_->Set(stats.batch_limit);
  kv_usage_->Set(stats.blocks_total > 0
                     ? static_cast<double>(stats.blocks_used) / stats.blocks_total
                     : 0.0);
}

void ServerMetrics::StartPolling(std::function<EngineStats()> stats,
                                 std::chrono::milliseconds interval) {
  poller_ = std::thread([this, stats = std::move(stats), interval] {
    while (!stop_) {
      SetEngineStats(stats());
      for (auto waited = std::chrono::milliseconds(0); waited < interval && !stop_;
           waited += std::chrono::milliseconds(20)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  });
}

}  // namespace glmserve
