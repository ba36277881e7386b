// Prometheus metrics (prometheus-cpp's registry, served as text by cpp-httplib on --metrics-port). The names are a
// contract: dashboards and alerts outside the project depend on them (docs/operations.md).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/engine.h"
#include "server/ops/request_observer.h"

namespace httplib {
class Server;
}  // namespace httplib
namespace prometheus {
class Registry;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace glmserve {

class ServerMetrics final : public RequestObserver {
 public:
  // port 0: metrics are kept but not exposed. Otherwise serves GET /metrics on host:port
  // ("::" = every interface, IPv4's 0.0.0.0 where the machine has no IPv6); UNAVAILABLE
  // naming --metrics-port, the port and the reason (bind's errno) when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<ServerMetrics>> Create(const std::string& host, int port,
                                                               const std::string& version);
  ~ServerMetrics() override;

  void OnRequestFinished(const char* code, const RequestResult* result) override;
  void OnImageAccepted(int32_t tokens, double host_seconds) override;
  // Engine thread, after every step attempt.
  void OnStep(int32_t batch_size, const absl::Status& status);
  void OnEngineRestart();
  // glmserve_serving: 1 while the server answers health SERVING (model loaded and warm, engine
  // healthy, not draining), else 0. The listener binds before the model loads, so `up` alone
  // cannot tell a loading or NOT_SERVING pod from a serving one. Any thread.
  void SetServing(bool serving);
  // Gauges from a stats snapshot (queue depth, batch limit, KV usage), and the prefix cache's
  // counters. Called from one thread at a time (the constructor's caller, then the poller).
  void SetEngineStats(const EngineStats& stats);
  // Polls `stats()` every interval on a thread of its own until destruction. The function must
  // stay callable until then.
  void StartPolling(std::function<EngineStats()> stats, std::chrono::milliseconds interval);
  void StopPolling();  // joins the poller

  int port() const { return port_; }
  // The host:port that bound ("[::]:9090" = every interface), and whether it was a fallback after
  // the first address failed (e.g. "[::1]:P" -> "127.0.0.1:P" on a machine without IPv6).
  const std::string& listen_spec() const { return listen_spec_; }
  bool fallback() const { return fallback_; }

 private:
  ServerMetrics() = default;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<httplib::Server> http_;  // GET /metrics; null when port is 0
  std::thread http_thread_;                // runs http_'s accept loop
  int port_ = 0;
  std::string listen_spec_;
  bool fallback_ = false;
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Histogram* latency_ = nullptr;
  prometheus::Histogram* ttft_ = nullptr;
  prometheus::Histogram* tpot_ = nullptr;  // glmserve_time_per_output_token_seconds
  prometheus::Histogram* queue_wait_ = nullptr;
  prometheus::Histogram* batch_size_ = nullptr;
  prometheus::Gauge* queue_depth_ = nullptr;
  prometheus::Gauge* batch_limit_ = nullptr;
  prometheus::Gauge* running_ = nullptr;        // glmserve_requests_running
  prometheus::Gauge* serving_ = nullptr;        // glmserve_serving
  prometheus::Counter* preemptions_ = nullptr;  // glmserve_preemptions_total, by delta as the prefix counters
  int64_t last_preemptions_ = 0;
  prometheus::Gauge* prefill_budget_ = nullptr;
  prometheus::Gauge* kv_usage_ = nullptr;
  prometheus::Gauge* prefix_usage_ = nullptr;
  prometheus::Counter* oom_ = nullptr;
  prometheus::Counter* restarts_ = nullptr;
  prometheus::Counter* images_ = nullptr;             // glmserve_images_total
  prometheus::Counter* image_tokens_ = nullptr;       // glmserve_image_tokens_total
  prometheus::Histogram* image_host_time_ = nullptr;  // glmserve_image_host_seconds
  prometheus::Counter* generated_ = nullptr;
  prometheus::Counter* prompt_tokens_ = nullptr;   // glmserve_prompt_tokens_total
  prometheus::Counter* prefix_hits_ = nullptr;     // from EngineStats' cumulative counts, by delta
  prometheus::Counter* prefix_queries_ = nullptr;  // (an engine rebuilt by the watchdog starts at 0)
  int64_t last_prefix_hits_ = 0, last_prefix_queries_ = 0;
  // glmserve_step_phase_seconds_total{phase}, one a phase of EngineStats, by delta as the prefix counters.
  struct PhaseCounter {
    prometheus::Counter* counter = nullptr;
    int64_t EngineStats::*total_ns = nullptr;
    int64_t last_ns = 0;
  };
  std::array<PhaseCounter, 4> phases_;
  std::array<PhaseCounter, 2> device_;  // glmserve_device_seconds_total{state}: busy, idle
  std::atomic<bool> stop_{false};
  std::thread poller_;
};

}  // namespace glmserve
