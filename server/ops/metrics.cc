#include "server/ops/metrics.h"

#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/ops/connection_phases.h"
#include "server/ops/port_probe.h"
#include "server/ops/socket_io.h"

namespace glmserve {
namespace {

// Connections the /metrics listener serves at once (a thread each while open).
constexpr int kMetricsThreads = 16;
// With every thread taken, a new connection closes the one longest between requests (a scrape's
// head is one small write; an idle keep-alive one is let go after 2 s anyway) once it has been
// so this long: 16 connections trickling a head a byte a second held every thread, and every
// scrape failed for as long as they went on.
constexpr auto kMetricsEvictAfter = std::chrono::milliseconds(1'000);

// A metrics connection is let go after this long idle between requests, a silent one after
// kMetricsReadMs within one (a scrape's request is one small head), a write after kMetricsWriteMs.
constexpr int kMetricsIdleMs = 2'000;
constexpr int kMetricsReadMs = 3'000;
constexpr int kMetricsWriteMs = 5'000;

// A plain socket as cpp-httplib's Stream (its own is not in the library's header).
class MetricsStream final : public httplib::Stream {
 public:
  explicit MetricsStream(int fd) : fd_(fd) {}
  // A request (its head: a scrape's is one small write) must be in by `deadline`, however it
  // trickles: each read's own wait alone let a byte a second hold a thread for ever.
  void SetReadDeadline(std::chrono::steady_clock::time_point deadline) { read_deadline_ = deadline; }
  bool is_readable() const override {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(read_deadline_ - std::chrono::steady_clock::now());
    const int wait_ms = static_cast<int>(std::min<int64_t>(kMetricsReadMs, left.count()));
    return wait_ms > 0 && PollFd(fd_, POLLIN, wait_ms) > 0;
  }
  bool is_writable() const override { return PollFd(fd_, POLLOUT, kMetricsWriteMs) > 0; }
  ssize_t read(char* ptr, size_t size) override {
    if (!is_readable()) return -1;
    ssize_t n;
    do {
      n = recv(fd_, ptr, size, 0);
    } while (n < 0 && errno == EINTR);
    return n;
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    ssize_t n;
    do {
      n = send(fd_, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n;
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override { SocketAddress(fd_, true, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { SocketAddress(fd_, false, ip, port); }
  socket_t socket() const override { return fd_; }

 private:
  const int fd_;
  std::chrono::steady_clock::time_point read_deadline_ = std::chrono::steady_clock::time_point::max();
};

// The /metrics listener: cpp-httplib's server with a connection loop of its own (keep-alive up to
// 2 s idle) that knows which connections are between requests, so that a new connection can take
// a trickling one's thread.
class MetricsHttpServer final : public httplib::Server {
 public:
  MetricsHttpServer() {
    new_task_queue = [this] { return new EvictingPool(this); };
    set_pre_routing_handler([this](const httplib::Request&, httplib::Response&) {
      phases_.SetBetweenRequests(t_connection_fd, false);  // the head is in
      return HandlerResponse::Unhandled;
    });
  }

 private:
  class EvictingPool final : public httplib::TaskQueue {
   public:
    explicit EvictingPool(MetricsHttpServer* server) : server_(server), pool_(kMetricsThreads) {}
    void enqueue(std::function<void()> fn) override {
      // Every thread taken: the connections longest between requests are closed, one for each
      // connection waiting for a thread, this one included (the queue is first come, first served:
      // one eviction a new connection let 17 tricklers keep a scrape queued behind them).
      const int waiting = ++waiting_;
      if (server_->phases_.open() >= static_cast<size_t>(kMetricsThreads)) {
        for (int i = 0; i < waiting && server_->phases_.EvictOldest(kMetricsEvictAfter, kMetricsThreads); ++i) {
        }
      }
      pool_.enqueue([this, fn = std::move(fn)] {
        --waiting_;
        fn();
      });
    }
    void shutdown() override { pool_.shutdown(); }

   private:
    MetricsHttpServer* const server_;
    std::atomic<int> waiting_{0};  // connections accepted, not yet on a thread
    httplib::ThreadPool pool_;
  };

  bool process_and_close_socket(socket_t sock) override {
    phases_.Opened(sock);
    t_connection_fd = sock;
    MetricsStream stream(sock);
    bool ok = true;
    constexpr int kMaxRequests = 100;
    for (int served = 0; ok && is_running() && served < kMaxRequests; ++served) {
      phases_.SetBetweenRequests(sock, true);
      // Idle keep-alive, in slices so that a stopping server does not wait it out.
      const auto idle_end = std::chrono::steady_clock::now() + std::chrono::milliseconds(kMetricsIdleMs);
      bool readable = false;
      while (!readable && is_running() && std::chrono::steady_clock::now() < idle_end) {
        readable = PollFd(sock, POLLIN, 100) > 0;
      }
      if (!readable) break;
      stream.SetReadDeadline(std::chrono::steady_clock::now() + std::chrono::milliseconds(kMetricsReadMs));
      bool closed = false;
      ok = process_request(stream, served + 1 == kMaxRequests, closed, nullptr);
      if (closed) break;
    }
    t_connection_fd = -1;
    phases_.Closing(sock);
    ::shutdown(sock, SHUT_RDWR);
    close(sock);
    return ok;
  }

  static thread_local int t_connection_fd;  // the connection this thread serves
  ConnectionPhases phases_;
};

thread_local int MetricsHttpServer::t_connection_fd = -1;

prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
}

// One labelled child of `family` for each of `totals` (label value, EngineStats' cumulative
// nanoseconds), bound to the matching entry of `out` (one entry each, checked at compile time).
template <typename TimeCounter, size_t N>
void BindTimeCounters(prometheus::Family<prometheus::Counter>& family, const char* label,
                      const std::pair<const char*, int64_t EngineStats::*> (&totals)[N],
                      std::array<TimeCounter, N>& out) {
  for (size_t i = 0; i < N; ++i) {
    out[i].counter = &family.Add({{label, totals[i].first}});
    out[i].total_ns = totals[i].second;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServerMetrics>> ServerMetrics::Create(const std::string& host, int port,
                                                                     const std::string& version) {
  std::unique_ptr<ServerMetrics> m(new ServerMetrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Registry& r = *m->registry_;
  m->requests_ = &prometheus::BuildCounter()
                      .Name("glmserve_requests_total")
                      .Help("Infer/InferStream calls finished, by gRPC status code")
                      .Register(r);
  m->requests_->Add({{"code", "OK"}});  // the series exists before the first request
  m->latency_ =
      &prometheus::BuildHistogram()
           .Name("glmserve_request_latency_seconds")
           .Help(
               "Arrival in a queue (the HTTP serving slots' or the engine's) to last token, requests that finished OK")
           .Register(r)
           .Add({}, SecondsBuckets());
  m->ttft_ = &prometheus::BuildHistogram()
                  .Name("glmserve_time_to_first_token_seconds")
                  .Help("Arrival in a queue (the HTTP serving slots' or the engine's) to first generated token")
                  .Register(r)
                  .Add({}, SecondsBuckets());
  // Decode speed as each client saw it (SLOs on inter-token latency): 1 ms to 1 s, finer where a
  // GPU's decode steps fall (5-15 ms).
  m->tpot_ = &prometheus::BuildHistogram()
                  .Name("glmserve_time_per_output_token_seconds")
                  .Help(
                      "Per successful request with 2 or more tokens: first to last token over the tokens after the "
                      "first")
                  .Register(r)
                  .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.0075, 0.01, 0.0125, 0.015,
                                                                   0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1});
  m->queue_wait_ = &prometheus::BuildHistogram()
                        .Name("glmserve_queue_wait_seconds")
                        .Help("Arrival in a queue (the HTTP serving slots' or the engine's) to first scheduled step")
                        .Register(r)
                        .Add({}, SecondsBuckets());
  // Images (GLM-4.1V): how many, the tokens they became, and the host time each took before the
  // engine (base64 and PNG / JPEG decode, resize, pixel codes: ~20-45 ms for a phone screenshot).
  m->images_ = &prometheus::BuildCounter()
                    .Name("glmserve_images_total")
                    .Help("Images of the requests the engine took")
                    .Register(r)
                    .Add({});
  m->image_tokens_ = &prometheus::BuildCounter()
                          .Name("glmserve_image_tokens_total")
                          .Help("Prompt tokens those images became")
                          .Register(r)
                          .Add({});
  m->image_host_time_ = &prometheus::BuildHistogram()
                             .Name("glmserve_image_host_seconds")
                             .Help("Host time an image took before the engine: decode and preprocessing")
                             .Register(r)
                             .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.02, 0.03,
                                                                              0.05, 0.075, 0.1, 0.25, 0.5, 1});
  m->batch_size_ = &prometheus::BuildHistogram()
                        .Name("glmserve_batch_size")
                        .Help("Sequences per engine step attempt")
                        .Register(r)
                        .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256});
  m->queue_depth_ =
      &prometheus::BuildGauge()
           .Name("glmserve_queue_depth")
           .Help(
               "Accepted requests not running: queued or preempted in the engine, or waiting for an HTTP serving slot")
           .Register(r)
           .Add({});
  m->running_ = &prometheus::BuildGauge()
                     .Name("glmserve_requests_running")
                     .Help("Sequences in the running batch (holding KV blocks, decoding or prefilling)")
                     .Register(r)
                     .Add({});
  m->serving_ = &prometheus::BuildGauge()
                     .Name("glmserve_serving")
                     .Help(
                         "1 while health is SERVING (model loaded and warm, engine healthy, not draining), else 0 "
                         "(loading, rebuilding after a fault, crash loop, draining)")
                     .Register(r)
                     .Add({});
  m->preemptions_ = &prometheus::BuildCounter()
                         .Name("glmserve_preemptions_total")
                         .Help(
                             "Sequences sent back to waiting (KV pool full or the batch limit shrank), resumed by "
                             "recomputing their prefill")
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
  m->prefix_usage_ = &prometheus::BuildGauge()
                          .Name("glmserve_prefix_cache_usage_ratio")
                          .Help(
                              "KV blocks holding prompt prefixes later prompts may reuse (in use or not) / KV "
                              "blocks in the pool")
                          .Register(r)
                          .Add({});
  m->prefill_budget_ = &prometheus::BuildGauge()
                            .Name("glmserve_prefill_budget_tokens")
                            .Help(
                                "Prompt tokens the last step that decoded could carry beside its decodes (the caps, "
                                "or the thin budget while it applies)")
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
                       .Help("Tokens generated by the requests that finished (any status), counted as each ends")
                       .Register(r)
                       .Add({});
  m->prompt_tokens_ =
      &prometheus::BuildCounter()
           .Name("glmserve_prompt_tokens_total")
           .Help("Prompt tokens of the requests that finished (any status), prefix-cached ones included")
           .Register(r)
           .Add({});
  m->prefix_hits_ = &prometheus::BuildCounter()
                         .Name("glmserve_prefix_cache_hit_tokens_total")
                         .Help("Prompt positions whose KV an admission took from the prefix cache")
                         .Register(r)
                         .Add({});
  m->prefix_queries_ = &prometheus::BuildCounter()
                            .Name("glmserve_prefix_cache_query_tokens_total")
                            .Help(
                                "Prompt positions of admissions, from the cache or computed (each engine's 2-token "
                                "warm-up and idle canaries included)")
                            .Register(r)
                            .Add({});
  auto& phases = prometheus::BuildCounter()
                     .Name("glmserve_step_phase_seconds_total")
                     .Help(
                         "Engine thread time over every step attempt, by phase: schedule (planning before a "
                         "step), executor_host (the executor's host work), device_wait (waiting for the "
                         "accelerator), commit (handing out tokens, finishing requests)")
                     .Register(r);
  BindTimeCounters(phases, "phase",
                   {{"schedule", &EngineStats::schedule_ns},
                    {"executor_host", &EngineStats::executor_host_ns},
                    {"device_wait", &EngineStats::device_wait_ns},
                    {"commit", &EngineStats::commit_ns}},
                   m->phases_);
  auto& device = prometheus::BuildCounter()
                     .Name("glmserve_device_seconds_total")
                     .Help(
                         "The accelerator's own timing of the engine's steps: busy (running them), idle (between "
                         "one step's end and the next one's start while sequences ran); 0 on a CPU")
                     .Register(r);
  BindTimeCounters(device, "state", {{"busy", &EngineStats::device_busy_ns}, {"idle", &EngineStats::device_idle_ns}},
                   m->device_);
  prometheus::BuildGauge()
      .Name("glmserve_build_info")
      .Help("Always 1; labels carry the build")
      .Register(r)
      .Add({{"version", version}, {"compiler", __VERSION__}})
      .Set(1);
  if (port > 0) {
    // The exporter is cpp-httplib (the HTTP API's library) serving the registry in the text
    // format. prometheus-cpp's own exposer (civetweb 1.15) failed on the GPU machine on every port
    // with "null context when constructing CivetServer", a failure civetweb gives no reason for;
    // a bind of our own right after it found the port in use, so civetweb failed after it had
    // bound and left its listening socket open.
    auto server = std::make_unique<MetricsHttpServer>();
    // A thread per connection while it is open: with 2, two idle sockets (or a Prometheus HA pair
    // keeping its connections alive) left every other scrape waiting 5 s, and the pod read as
    // down. 16 threads (kMetricsThreads); idle and silent connections let go (kMetricsIdleMs,
    // kMetricsReadMs), a trickling one when a new connection needs its thread (MetricsHttpServer).
    // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which lets a second server share a
    // port in use instead of failing.
    server->set_socket_options([](socket_t sock) {
      const int on = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    });
    std::weak_ptr<prometheus::Registry> registry = m->registry_;
    server->Get("/metrics", [registry](const httplib::Request&, httplib::Response& res) {
      std::shared_ptr<prometheus::Registry> r = registry.lock();
      if (r == nullptr) {
        res.status = 503;
        return;
      }
      res.set_content(prometheus::TextSerializer().Serialize(r->Collect()), "text/plain; version=0.0.4");
    });
    std::vector<std::string> tried;
    for (const std::string& listen_host : ListenHosts(host)) {
      if (server->bind_to_port(listen_host, port)) {
        m->listen_spec_ = FormatAddress(listen_host, port);
        break;
      }
      tried.push_back(absl::StrCat("'", FormatAddress(listen_host, port), "'"));
    }
    if (m->listen_spec_.empty()) {
      std::string why = PortBindProblem(host, port);
      if (why.empty()) why = "the port is free, but the listener could not be set up";
      return absl::UnavailableError(absl::StrCat("--metrics-port ", port, ": cannot bind ", FormatAddress(host, port),
                                                 ": ", why, " (tried ", absl::StrJoin(tried, ", "), ")"));
    }
    m->fallback_ = !tried.empty();
    m->port_ = port;
    m->http_ = std::move(server);
    httplib::Server* http = m->http_.get();
    m->http_thread_ = std::thread([http] { http->listen_after_bind(); });
  }
  return m;
}

ServerMetrics::~ServerMetrics() {
  StopPolling();
  if (http_ != nullptr) {
    http_->stop();
    if (http_thread_.joinable()) http_thread_.join();
  }
}

void ServerMetrics::StopPolling() {
  stop_ = true;
  if (poller_.joinable()) poller_.join();
}

void ServerMetrics::OnRequestFinished(const char* code, const RequestResult* result) {
  requests_->Add({{"code", code}}).Increment();
  if (result == nullptr) return;
  generated_->Increment(static_cast<double>(result->output_ids.size()));
  prompt_tokens_->Increment(static_cast<double>(result->prompt_tokens));
  if (result->status.ok()) latency_->Observe(result->total_ms / 1000.0);
  if (result->ttft_ms > 0) ttft_->Observe(result->ttft_ms / 1000.0);
  const size_t tokens = result->output_ids.size();
  if (result->status.ok() && tokens >= 2 && result->ttft_ms > 0 && result->total_ms >= result->ttft_ms) {
    tpot_->Observe((result->total_ms - result->ttft_ms) / 1000.0 / static_cast<double>(tokens - 1));
  }
  if (result->queue_ms > 0 || result->status.ok()) queue_wait_->Observe(result->queue_ms / 1000.0);
}

void ServerMetrics::OnImageAccepted(int32_t tokens, double host_seconds) {
  images_->Increment();
  image_tokens_->Increment(static_cast<double>(tokens));
  image_host_time_->Observe(host_seconds);
}

void ServerMetrics::OnStep(int32_t batch_size, const absl::Status& status) {
  batch_size_->Observe(batch_size);
  if (absl::IsResourceExhausted(status)) oom_->Increment();
}

void ServerMetrics::OnEngineRestart() { restarts_->Increment(); }

void ServerMetrics::SetServing(bool serving) { serving_->Set(serving ? 1 : 0); }

void ServerMetrics::SetEngineStats(const EngineStats& stats) {
  queue_depth_->Set(stats.waiting);
  running_->Set(stats.running);
  batch_limit_->Set(stats.batch_limit);
  prefill_budget_->Set(stats.prefill_budget_with_decodes);
  auto share_of_pool = [&stats](int32_t blocks) {
    return stats.blocks_total > 0 ? static_cast<double>(blocks) / stats.blocks_total : 0.0;
  };
  kv_usage_->Set(share_of_pool(stats.blocks_used));
  prefix_usage_->Set(share_of_pool(stats.blocks_cached));
  // The watchdog carries a torn-down engine's counts into the next one's, so they only grow; a
  // count below the last one (an engine that is not the watchdog's) starts over from 0.
  auto add = [](prometheus::Counter* counter, int64_t now, int64_t& last, double scale = 1.0) {
    counter->Increment(scale * static_cast<double>(now >= last ? now - last : now));
    last = now;
  };
  add(prefix_hits_, stats.prefix_cache_hit_tokens, last_prefix_hits_);
  add(prefix_queries_, stats.prompt_tokens_scheduled, last_prefix_queries_);
  add(preemptions_, stats.preemptions, last_preemptions_);
  for (PhaseCounter& phase : phases_) add(phase.counter, stats.*phase.total_ns, phase.last_ns, 1e-9);
  for (PhaseCounter& state : device_) add(state.counter, stats.*state.total_ns, state.last_ns, 1e-9);
}

void ServerMetrics::StartPolling(std::function<EngineStats()> stats, std::chrono::milliseconds interval) {
  // Once here, so the gauges hold the engine's values from the first scrape on (the poller's first
  // pass can come after the server says it is serving: a loaded machine showed batch_limit 0).
  SetEngineStats(stats());
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
