#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <functional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace glmserve {
namespace {

prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
}

std::string HostPort(const std::string& host, int port) {
  if (host.find(':') != std::string::npos && host.front() != '[') return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

// civetweb's `listening_ports` spellings of host:port, in the order tried. Debian's civetweb
// (libcivetweb1 1.15, the one prometheus-cpp-dev links) is built without IPv6: "[::]:P" and
// "[::1]:P" are an "invalid port spec" there whatever the port, so an IPv6 --host never bound.
// "+P" is every interface (IPv4 and IPv6 where civetweb has IPv6, IPv4 where it has not);
// "0.0.0.0:P" is the IPv4 wildcard for a civetweb with IPv6 on a kernel without it.
std::vector<std::string> ListenSpecs(const std::string& host_in, int port) {
  std::string host = host_in;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string p = std::to_string(port);
  if (host.empty() || host == "::" || host == "*") return {"+" + p, "0.0.0.0:" + p};
  if (host == "::1") return {"[::1]:" + p, "127.0.0.1:" + p};
  if (host.find(':') != std::string::npos) return {"[" + host + "]:" + p};
  return {host + ":" + p};  // an IPv4 address or a name civetweb resolves (localhost)
}

// Why host:port cannot be bound, from a bind of our own (CivetServer only says "null context");
// empty when it can.
std::string BindProblem(const std::string& host_in, int port) {
  std::string host = host_in;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res); rc != 0) {
    return absl::StrCat("cannot resolve '", host, "': ", gai_strerror(rc));
  }
  std::string problem;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) {
      problem = std::strerror(errno);
      continue;
    }
    const int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);  // as civetweb does
    const bool bound = bind(fd, a->ai_addr, a->ai_addrlen) == 0;
    if (!bound) problem = std::strerror(errno);
    close(fd);
    if (bound) {
      problem.clear();
      break;
    }
  }
  freeaddrinfo(res);
  return problem;
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
    std::vector<std::string> tried;
    for (const std::string& spec : ListenSpecs(host, port)) {
      try {
        m->exposer_ = std::make_unique<prometheus::Exposer>(spec, /*num_threads=*/2);
        m->listen_spec_ = spec;
        break;
      } catch (const std::exception& e) {
        tried.push_back(absl::StrCat("'", spec, "'"));
      }
    }
    if (m->exposer_ == nullptr) {
      std::string why = BindProblem(host, port);
      if (why.empty()) why = "the port is free, but civetweb refused every spelling of the address";
      return absl::UnavailableError(absl::StrCat("--metrics-port ", port, ": cannot bind ", HostPort(host, port),
                                                 ": ", why, " (civetweb listening_ports tried: ",
                                                 absl::StrJoin(tried, ", "), ")"));
    }
    m->fallback_ = !tried.empty();
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
