#include "bench/glmload.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "flags/flags.h"
#include "glmserve/v1/inference.grpc.pb.h"
#include "server/request/request.h"

namespace glmserve::load {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// The server's code names (server/request/request.h): gRPC's codes are abseil's (same numbers, same names).
const char* CodeName(grpc::StatusCode code) { return glmserve::CodeName(static_cast<absl::StatusCode>(code)); }

// A server run with API keys takes "authorization: Bearer KEY" metadata on every call.
void Authorize(const std::string& api_key, grpc::ClientContext* ctx) {
  if (!api_key.empty()) ctx->AddMetadata("authorization", absl::StrCat("Bearer ", api_key));
}

absl::StatusOr<std::vector<std::vector<int32_t>>> ReadPromptFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("--prompt-file: cannot open '", path, "'"));
  std::vector<std::vector<int32_t>> prompts;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    std::vector<int32_t> ids;
    for (absl::string_view piece : absl::StrSplit(line, absl::ByAnyChar(", \t\r"), absl::SkipEmpty())) {
      int64_t v = 0;
      absl::Status s =
          flags::ParseIntValue(absl::StrCat("--prompt-file ", path, ":", line_no), piece, 0, flags::kIntMax, &v);
      if (!s.ok()) return s;
      ids.push_back(static_cast<int32_t>(v));
    }
    if (!ids.empty()) prompts.push_back(std::move(ids));
  }
  if (prompts.empty()) return absl::InvalidArgumentError(absl::StrCat("--prompt-file: '", path, "' has no prompts"));
  return prompts;
}

// ---------------------------------------------------------------------------------------------
// One load level.

// --http: where POST /v1/completions goes, and the model name it sends.
struct HttpTarget {
  std::string host;
  int port = 0;
  std::string model;
};

struct Record {
  std::string error;  // "" = ok; else the key counted in LevelResult::errors
  double latency_ms = 0;
  double ttft_ms = -1;  // client side, streaming only
  int prompt_tokens = 0;
  int generated = 0;
  // When ids arrived and how many (streaming: each message; unary: the reply), for the level's
  // steady-state window, which is known only once the level ends.
  std::vector<std::pair<Clock::time_point, int>> arrivals;
  double queue_ms = -1, server_ttft_ms = -1;
};

// "HOST:PORT" or "[V6]:PORT" (the host without brackets); INVALID_ARGUMENT naming `flag`.
absl::Status ParseHostPort(const char* flag, const std::string& target, std::string* host, int* port) {
  const size_t colon = target.rfind(':');
  int64_t value = 0;
  if (colon == std::string::npos || colon == 0 ||
      !flags::ParseIntValue(flag, target.substr(colon + 1), 1, 65535, &value).ok()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": '", target, "' is not HOST:PORT"));
  }
  *host = target.substr(0, colon);
  if (host->size() > 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  *port = static_cast<int>(value);
  return absl::OkStatus();
}

// The counters of one /metrics scrape that ServerWindow is made of.
struct MetricsSnapshot {
  double steps = 0, batch_sum = 0;      // glmserve_batch_size_count / _sum
  std::map<std::string, double> phase;  // glmserve_step_phase_seconds_total by phase
};

// GET /metrics from --metrics-target (5 s at most).
absl::StatusOr<MetricsSnapshot> ScrapeMetrics(const std::string& target) {
  std::string host;
  int port = 0;
  if (absl::Status s = ParseHostPort("--metrics-target", target, &host, &port); !s.ok()) return s;
  httplib::Client cli(host, port);
  cli.set_connection_timeout(std::chrono::seconds(2));
  cli.set_read_timeout(std::chrono::seconds(5));
  httplib::Result res = cli.Get("/metrics");
  if (!res || res->status != 200) {
    return absl::UnavailableError(
        absl::StrCat("--metrics-target: GET http://", target,
                     "/metrics: ", res ? absl::StrCat("HTTP ", res->status) : httplib::to_string(res.error())));
  }
  MetricsSnapshot m;
  std::istringstream lines(res->body);
  std::string line;
  static const std::string kPhase = "glmserve_step_phase_seconds_total{";
  while (std::getline(lines, line)) {
    const size_t space = line.rfind(' ');
    if (line.empty() || line[0] == '#' || space == std::string::npos) continue;
    const std::string series = line.substr(0, space);
    const double value = std::strtod(line.c_str() + space + 1, nullptr);
    if (series == "glmserve_batch_size_count") {
      m.steps = value;
    } else if (series == "glmserve_batch_size_sum") {
      m.batch_sum = value;
    } else if (series.rfind(kPhase, 0) == 0) {
      static const std::regex kLabel("phase=\"([a-z_]+)\"");
      std::smatch label;
      if (std::regex_search(series, label, kLabel)) m.phase[label[1]] = value;
    }
  }
  return m;
}

// The level's window between two scrapes.
ServerWindow WindowBetween(const MetricsSnapshot& a, const MetricsSnapshot& b) {
  ServerWindow w;
  const double steps = b.steps - a.steps;
  if (steps <= 0) return w;
  w.steps = static_cast<int64_t>(steps);
  w.mean_batch = (b.batch_sum - a.batch_sum) / steps;
  for (const auto& [phase, seconds] : b.phase) {
    const auto before = a.phase.find(phase);
    w.step_ms[phase] = 1e3 * (seconds - (before != a.phase.end() ? before->second : 0.0)) / steps;
  }
  return w;
}

class Level {
 public:
  Level(const Options& opts, const std::vector<std::shared_ptr<grpc::Channel>>& channels,
        const std::vector<std::vector<int32_t>>& prompts, int vocab_size, int concurrency, double rate,
        const HttpTarget* http = nullptr)
      : opts_(opts),
        prompts_(prompts),
        vocab_size_(vocab_size),
        concurrency_(concurrency),
        rate_(rate),
        http_(http),
        gen_(opts.seed + static_cast<uint64_t>(concurrency) * 7919) {
    for (const auto& c : channels) stubs_.push_back(v1::Inference::NewStub(c));
  }
  ~Level() { StopHttpWorkers(); }

  LevelResult Run();

 private:
  class StreamCall;
  struct HttpJob {
    Clock::time_point intended;
    std::string body;
    int prompt_tokens = 0;
  };
  // Sends request number `n` of the level (its index in sent_).
  void Issue(Clock::time_point intended, int64_t n);
  // Closed loop: takes the next send's number, or nothing once sending has stopped. One atomic
  // step: with "is sending over?" and the count apart, two completions could both take the last
  // of --requests N (N + 1 sent).
  std::optional<int64_t> TakeSend();
  // HTTP: a pool of blocking workers, one keep-alive connection each, grown whenever a request
  // finds no idle worker (so every request in flight has its own connection).
  void IssueHttp(Clock::time_point intended, const v1::InferRequest& req);
  void HttpWorker();
  Record CallHttp(httplib::Client& cli, const HttpJob& job, std::vector<double>* itl);
  void StopHttpWorkers();
  void Finish(Record r, std::vector<double> itl);
  bool StopSending() const;
  v1::InferRequest MakeRequest();
  void ProgressLoop();

  const Options& opts_;
  const std::vector<std::vector<int32_t>>& prompts_;
  const int vocab_size_;
  const int concurrency_;
  const double rate_;
  const HttpTarget* const http_;
  std::vector<std::unique_ptr<v1::Inference::Stub>> stubs_;

  std::mutex pool_mu_;
  std::condition_variable pool_cv_;
  std::deque<HttpJob> jobs_;          // guarded by pool_mu_
  size_t idle_workers_ = 0;           // guarded by pool_mu_
  bool pool_stop_ = false;            // guarded by pool_mu_
  std::vector<std::thread> workers_;  // guarded by pool_mu_

  std::mutex gen_mu_;
  std::vector<int32_t> shared_prefix_;  // --shared-prefix-len, drawn on first use (under gen_mu_)
  std::mt19937_64 gen_;

  Clock::time_point start_, send_end_;
  std::atomic<Clock::rep> last_send_{0};  // the latest Issue(), as Clock ticks since the epoch
  std::atomic<int64_t> sent_{0}, dropped_{0}, in_flight_{0}, ok_{0}, failed_{0}, tokens_{0};
  std::atomic<bool> stop_sending_{false};

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Clock::time_point> backoffs_;  // closed loop: when streams that failed send again
  std::vector<Record> records_;
  std::vector<double> itl_;
  Clock::time_point last_done_;
  bool done_ = false;
};

std::optional<int64_t> Level::TakeSend() {
  if (stop_sending_.load() || Clock::now() >= send_end_) return std::nullopt;
  int64_t n = sent_.load();
  do {
    if (opts_.requests > 0 && n >= opts_.requests) return std::nullopt;
  } while (!sent_.compare_exchange_weak(n, n + 1));
  return n;
}

bool Level::StopSending() const {
  if (stop_sending_.load()) return true;
  if (opts_.requests > 0 && sent_.load() >= opts_.requests) return true;
  return Clock::now() >= send_end_;
}

v1::InferRequest Level::MakeRequest() {
  v1::InferRequest req;
  std::lock_guard<std::mutex> lock(gen_mu_);
  if (!prompts_.empty()) {
    std::uniform_int_distribution<size_t> pick(0, prompts_.size() - 1);
    for (int32_t id : prompts_[pick(gen_)]) req.add_input_ids(id);
  } else {
    const int n = std::uniform_int_distribution<int>(opts_.prompt_len.lo, opts_.prompt_len.hi)(gen_);
    std::uniform_int_distribution<int> id(0, std::max(1, vocab_size_) - 1);
    if (shared_prefix_.empty() && opts_.shared_prefix_len > 0) {
      std::mt19937_64 shared_gen(opts_.seed ^ 0x5ba7edull);  // the same in every level
      for (int i = 0; i < opts_.shared_prefix_len; ++i) shared_prefix_.push_back(id(shared_gen));
    }
    for (int i = 0; i < n; ++i) {
      req.add_input_ids(i < static_cast<int>(shared_prefix_.size()) ? shared_prefix_[i] : id(gen_));
    }
  }
  const int max_new = std::uniform_int_distribution<int>(opts_.max_new_tokens.lo, opts_.max_new_tokens.hi)(gen_);
  req.set_max_new_tokens(max_new);
  if (opts_.ignore_eos) req.set_min_new_tokens(max_new);
  req.set_temperature(opts_.temperature);
  if (opts_.temperature > 0) req.set_seed(gen_());
  if (opts_.top_p > 0) req.set_top_p(opts_.top_p);  // unset is 1; a set 0 is refused
  req.set_frequency_penalty(opts_.frequency_penalty);
  req.set_presence_penalty(opts_.presence_penalty);
  req.set_repetition_penalty(opts_.repetition_penalty);
  return req;
}

// A streaming call: times the first ids (TTFT) and the gap before each later message's ids
// (inter-token latency, split evenly over the ids of a message). Deletes itself when done.
class Level::StreamCall : public grpc::ClientReadReactor<v1::InferResponse> {
 public:
  StreamCall(Level* level, v1::InferRequest req, Clock::time_point intended)
      : level_(level), req_(std::move(req)), intended_(intended) {}
  void Start(v1::Inference::Stub* stub, std::chrono::system_clock::time_point deadline, const std::string& api_key) {
    ctx_.set_deadline(deadline);
    Authorize(api_key, &ctx_);
    stub->async()->InferStream(&ctx_, &req_, this);
    StartRead(&msg_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    const auto now = Clock::now();
    const int n = msg_.output_ids_size();
    if (n > 0) {
      if (rec_.ttft_ms < 0) {
        rec_.ttft_ms = Ms(now - intended_);
      } else {
        const double gap = Ms(now - last_) / n;
        for (int i = 0; i < n; ++i) itl_.push_back(gap);
      }
      last_ = now;
      rec_.generated += n;
      rec_.arrivals.emplace_back(now, n);
    }
    if (msg_.finish_reason() != v1::UNSPECIFIED) {
      rec_.queue_ms = msg_.queue_ms();
      rec_.server_ttft_ms = msg_.ttft_ms();
      if (msg_.has_usage()) rec_.generated = msg_.usage().completion_tokens();
    }
    StartRead(&msg_);
  }
  void OnDone(const grpc::Status& s) override {
    if (!s.ok()) rec_.error = CodeName(s.error_code());
    rec_.latency_ms = Ms(Clock::now() - intended_);
    rec_.prompt_tokens = req_.input_ids_size();
    // The call (its ClientContext) goes before Finish() can let Run() return and the Level, with
    // its stubs and channels, be destroyed: destroyed the other way round, gRPC aborted now and
    // then ("ref_counted.h: assertion failed: prior > 0").
    Level* level = level_;
    Record rec = rec_;
    std::vector<double> itl = std::move(itl_);
    delete this;
    level->Finish(rec, std::move(itl));
  }

 private:
  Level* level_;
  grpc::ClientContext ctx_;
  v1::InferRequest req_;
  v1::InferResponse msg_;
  Clock::time_point intended_, last_;
  Record rec_;
  std::vector<double> itl_;
};

void Level::Issue(Clock::time_point intended, int64_t n) {
  const Clock::rep now = Clock::now().time_since_epoch().count();
  for (Clock::rep seen = last_send_.load(); seen < now && !last_send_.compare_exchange_weak(seen, now);) {
  }
  in_flight_.fetch_add(1);
  v1::InferRequest req = MakeRequest();
  if (http_ != nullptr) {
    IssueHttp(intended, req);
    return;
  }
  v1::Inference::Stub* stub = stubs_[static_cast<size_t>(n) % stubs_.size()].get();
  const auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(opts_.deadline_ms);
  if (opts_.stream) {
    (new StreamCall(this, std::move(req), intended))->Start(stub, deadline, opts_.api_key);
    return;
  }
  struct Unary {
    grpc::ClientContext ctx;
    v1::InferRequest req;
    v1::InferResponse resp;
  };
  auto* call = new Unary;
  call->req = std::move(req);
  call->ctx.set_deadline(deadline);
  Authorize(opts_.api_key, &call->ctx);
  stub->async()->Infer(&call->ctx, &call->req, &call->resp, [this, call, intended](grpc::Status s) {
    Record r;
    if (!s.ok()) r.error = CodeName(s.error_code());
    r.latency_ms = Ms(Clock::now() - intended);
    r.prompt_tokens = call->req.input_ids_size();
    if (s.ok()) {
      r.generated = call->resp.has_usage() ? call->resp.usage().completion_tokens() : call->resp.output_ids_size();
      r.arrivals.emplace_back(Clock::now(), r.generated);
      r.queue_ms = call->resp.queue_ms();
      r.server_ttft_ms = call->resp.ttft_ms();
    }
    delete call;
    Finish(r, {});
  });
}

void Level::IssueHttp(Clock::time_point intended, const v1::InferRequest& req) {
  // The same request as gRPC's, in the OpenAI completions shape (min_tokens, repetition_penalty:
  // vLLM's extra fields, which glmserve's HTTP API takes too).
  json body = {{"model", http_->model},
               {"prompt", std::vector<int32_t>(req.input_ids().begin(), req.input_ids().end())},
               {"temperature", req.temperature()}};
  if (req.max_new_tokens() > 0) body["max_tokens"] = req.max_new_tokens();
  if (req.min_new_tokens() > 0) body["min_tokens"] = req.min_new_tokens();
  if (req.has_seed()) body["seed"] = static_cast<int64_t>(req.seed() >> 1);  // JSON's int64
  if (req.top_p() > 0) body["top_p"] = req.top_p();
  if (req.frequency_penalty() != 0) body["frequency_penalty"] = req.frequency_penalty();
  if (req.presence_penalty() != 0) body["presence_penalty"] = req.presence_penalty();
  if (req.repetition_penalty() > 0) body["repetition_penalty"] = req.repetition_penalty();
  if (opts_.stream) {
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    // Each chunk's ids (vLLM's return_token_ids, which glmserve takes): a chunk a step whatever
    // its text, and the ids it carries. Counted by text, a step whose text is held back (an
    // incomplete UTF-8 character) sent no chunk and the next chunk's two steps counted as one:
    // steady tok/s read 6-8% low and ITL p99 2x high.
    body["return_token_ids"] = true;
  }
  std::lock_guard<std::mutex> lock(pool_mu_);
  jobs_.push_back(HttpJob{intended, body.dump(), req.input_ids_size()});
  // At most one connection per request that can be in flight: in a closed loop the worker whose
  // completion issued this job takes it next. (Spawning whenever no worker was idle grew the pool
  // past the concurrency, and the extra kept-alive connections tied up server threads.)
  const size_t max_workers = static_cast<size_t>(rate_ > 0 ? opts_.max_in_flight : concurrency_);
  if (idle_workers_ < jobs_.size() && workers_.size() < max_workers) workers_.emplace_back([this] { HttpWorker(); });
  pool_cv_.notify_one();
}

void Level::HttpWorker() {
  httplib::Client cli(http_->host, http_->port);
  cli.set_keep_alive(true);
  // The request goes out as two writes (headers, body): without TCP_NODELAY, Nagle holds the
  // body until the server's delayed ACK (~40 ms added to every TTFT).
  cli.set_tcp_nodelay(true);
  cli.set_connection_timeout(std::chrono::seconds(10));
  // Per read: a stream sends a keep-alive comment every second; the server's deadline (the
  // x-request-timeout header) ends a request, this only catches a server that stopped answering.
  cli.set_read_timeout(std::chrono::milliseconds(opts_.deadline_ms + 10000));
  cli.set_write_timeout(std::chrono::seconds(30));
  std::unique_lock<std::mutex> lock(pool_mu_);
  ++idle_workers_;
  while (true) {
    pool_cv_.wait(lock, [this] { return pool_stop_ || !jobs_.empty(); });
    if (jobs_.empty()) {
      --idle_workers_;
      return;
    }
    HttpJob job = std::move(jobs_.front());
    jobs_.pop_front();
    --idle_workers_;
    lock.unlock();
    std::vector<double> itl;
    Record r = CallHttp(cli, job, &itl);
    // Idle again before Finish: a closed loop's next request (sent from Finish) finds this
    // worker instead of starting another.
    lock.lock();
    ++idle_workers_;
    lock.unlock();
    Finish(std::move(r), std::move(itl));
    lock.lock();
  }
}

void Level::StopHttpWorkers() {
  std::vector<std::thread> workers;
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    pool_stop_ = true;
    workers.swap(workers_);
  }
  pool_cv_.notify_all();
  for (std::thread& t : workers) t.join();
}

// One POST /v1/completions. Streaming: TTFT is the time to the first SSE chunk with ids, the
// inter-token latency the gap before each later such chunk divided over its ids (as InferStream's
// messages); the count of generated ids is the usage chunk's completion_tokens.
Record Level::CallHttp(httplib::Client& cli, const HttpJob& job, std::vector<double>* itl) {
  Record rec;
  rec.prompt_tokens = job.prompt_tokens;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = job.body;
  req.set_header("Content-Type", "application/json");
  req.set_header("x-request-timeout", absl::StrCat(opts_.deadline_ms, "ms"));
  if (!opts_.api_key.empty()) req.set_header("Authorization", absl::StrCat("Bearer ", opts_.api_key));
  int status = 0;
  bool done = false;
  std::string stream_error, pending;
  int counted = 0, usage_tokens = -1;
  bool ids_seen = false;
  Clock::time_point last;
  if (opts_.stream) {
    req.response_handler = [&status](const httplib::Response& res) {
      status = res.status;
      return true;
    };
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      if (status < 200 || status >= 300) return true;  // an error body: the status says it
      const auto now = Clock::now();
      pending.append(data, n);
      size_t eol;
      while ((eol = pending.find('\n')) != std::string::npos) {
        std::string line = pending.substr(0, eol);
        pending.erase(0, eol + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.rfind("data:", 0) != 0) continue;  // blank separators, ": keep-alive" comments
        std::string payload = line.substr(5);
        if (!payload.empty() && payload[0] == ' ') payload.erase(0, 1);
        const SseEvent ev = ParseSseData(payload);
        if (ev.done) {
          done = true;
        } else if (ev.malformed || !ev.error.empty()) {
          if (stream_error.empty()) stream_error = ev.malformed ? "bad_response" : "stream_" + ev.error;
        } else {
          if (ev.completion_tokens >= 0) usage_tokens = ev.completion_tokens;
          // A stream that sends ids counts ids only: a chunk without them then carries none (a
          // server's flush of held-back text at the end), whatever its text.
          ids_seen = ids_seen || ev.has_token_ids;
          if (ev.tokens > 0 && (ev.has_token_ids || !ids_seen)) {
            if (rec.ttft_ms < 0) {
              rec.ttft_ms = Ms(now - job.intended);
            } else {
              const double gap = Ms(now - last) / ev.tokens;
              for (int i = 0; i < ev.tokens; ++i) itl->push_back(gap);
            }
            last = now;
            counted += ev.tokens;
            rec.arrivals.emplace_back(now, ev.tokens);
          }
        }
      }
      return true;
    };
  }
  httplib::Result res = cli.send(req);
  rec.latency_ms = Ms(Clock::now() - job.intended);
  if (!res) {
    rec.error = "transport_" + httplib::to_string(res.error());
    return rec;
  }
  if (status == 0) status = res->status;
  if (status < 200 || status >= 300) {
    rec.error = absl::StrCat("http_", status);
  } else if (opts_.stream) {
    if (!stream_error.empty()) {
      rec.error = stream_error;
    } else if (!done) {
      rec.error = "stream_truncated";
    } else {
      rec.generated = usage_tokens >= 0 ? usage_tokens : counted;
    }
  } else {
    const json j = json::parse(res->body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("usage") || !j["usage"].is_object()) {
      rec.error = "bad_response";
    } else {
      rec.generated = j["usage"].value("completion_tokens", 0);
      rec.arrivals.emplace_back(Clock::now(), rec.generated);
    }
  }
  return rec;
}

void Level::Finish(Record r, std::vector<double> itl) {
  if (r.error.empty()) {
    ok_.fetch_add(1);
    tokens_.fetch_add(r.generated);
  } else {
    failed_.fetch_add(1);
  }
  // Closed loop: the completion sends the next request (before this one leaves in_flight_, so
  // in_flight_ only reaches 0 at the end); after a failure, --error-backoff-ms later, holding its
  // place in in_flight_ meanwhile.
  if (rate_ <= 0) {
    if (!r.error.empty() && opts_.error_backoff_ms > 0) {
      in_flight_.fetch_add(1);
      std::lock_guard<std::mutex> lock(mu_);
      backoffs_.push_back(Clock::now() + std::chrono::milliseconds(opts_.error_backoff_ms));
      cv_.notify_all();
    } else if (const std::optional<int64_t> n = TakeSend()) {
      Issue(Clock::now(), *n);
    }
  }
  // The last touch of this Level: Run() reads in_flight_ under mu_, so once it sees 0 no
  // completion is still inside Finish().
  std::lock_guard<std::mutex> lock(mu_);
  records_.push_back(r);
  if (r.error.empty()) itl_.insert(itl_.end(), itl.begin(), itl.end());
  last_done_ = Clock::now();
  if (in_flight_.fetch_sub(1) == 1) cv_.notify_all();
}

void Level::ProgressLoop() {
  const bool tty = isatty(2) != 0;
  const auto period = tty ? std::chrono::milliseconds(500) : std::chrono::milliseconds(5000);
  const std::string what =
      rate_ > 0 ? absl::StrFormat("rate %.4g/s", rate_) : absl::StrCat("concurrency ", concurrency_);
  auto line = [&] {
    const double t = std::chrono::duration<double>(Clock::now() - start_).count();
    const double total = std::chrono::duration<double>(send_end_ - start_).count();
    std::string s = absl::StrFormat("glmload: %s  %5.1fs", what, t);
    if (opts_.requests == 0 || opts_.duration_s > 0) s += absl::StrFormat("/%.0fs", total);
    s += absl::StrFormat("  sent %d  ok %d  err %d  in flight %d  %.1f req/s  %.0f tok/s", sent_.load(), ok_.load(),
                         failed_.load(), in_flight_.load(), t > 0 ? ok_.load() / t : 0.0,
                         t > 0 ? tokens_.load() / t : 0.0);
    return s;
  };
  std::unique_lock<std::mutex> lock(mu_);
  auto next = Clock::now() + period;
  while (!done_) {
    // Completions notify cv_ too: wait for the tick, not the first wake-up.
    if (cv_.wait_until(lock, next) != std::cv_status::timeout) continue;
    next += period;
    lock.unlock();
    if (tty) {
      std::fprintf(stderr, "\r%s\033[K", line().c_str());
    } else {
      std::fprintf(stderr, "%s\n", line().c_str());
    }
    std::fflush(stderr);
    lock.lock();
  }
  lock.unlock();
  if (tty) std::fprintf(stderr, "\r%s\033[K\n", line().c_str());
}

LevelResult Level::Run() {
  start_ = Clock::now();
  const double duration = opts_.duration_s > 0 ? opts_.duration_s : (opts_.requests > 0 ? 1e7 : 10.0);
  send_end_ = start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(duration));
  last_done_ = start_;
  std::thread progress;
  if (opts_.progress) progress = std::thread([this] { ProgressLoop(); });
  // --metrics-target: the server's counters at the steady window's start (the warm-up's end) and
  // end (when sending stops).
  std::optional<MetricsSnapshot> window_start, window_end;
  std::string scrape_error;
  std::thread scraper;
  if (!opts_.metrics_target.empty()) {
    scraper = std::thread([&] {
      const Clock::time_point steady_start =
          start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opts_.warmup_s));
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (cv_.wait_until(lock, steady_start, [this] { return done_; })) return;
      }
      absl::StatusOr<MetricsSnapshot> a = ScrapeMetrics(opts_.metrics_target);
      if (!a.ok()) {
        scrape_error = std::string(a.status().message());
        return;
      }
      window_start = *a;
      std::unique_lock<std::mutex> lock(mu_);
      while (!done_ && !StopSending()) cv_.wait_for(lock, std::chrono::milliseconds(10));
      lock.unlock();
      absl::StatusOr<MetricsSnapshot> b = ScrapeMetrics(opts_.metrics_target);
      if (!b.ok()) {
        scrape_error = std::string(b.status().message());
        return;
      }
      window_end = *b;
    });
  }

  if (rate_ > 0) {
    // Open loop: arrivals on a precomputed Poisson schedule; latency counts from the scheduled
    // arrival, so a late sender does not hide queueing (no coordinated omission).
    PoissonArrivals arrivals(rate_, opts_.seed);
    auto next = start_;
    while (true) {
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(arrivals.NextGapSeconds()));
      // Decided on the schedule, not the clock: the same seed sends the same arrivals.
      if (next >= send_end_ || (opts_.requests > 0 && sent_.load() >= opts_.requests)) break;
      std::this_thread::sleep_until(next);
      if (in_flight_.load() >= opts_.max_in_flight) {
        dropped_.fetch_add(1);
        continue;
      }
      Issue(next, sent_.fetch_add(1));  // this thread alone sends in an open loop
    }
  } else {
    for (int i = 0; i < concurrency_; ++i) {
      const std::optional<int64_t> n = TakeSend();
      if (!n) break;
      Issue(Clock::now(), *n);
    }
  }
  // Wait for the level to end: sending stopped and nothing in flight. Deadlines bound it. Streams
  // that failed send again from here when their backoff ends (in order: one fixed backoff).
  {
    std::unique_lock<std::mutex> lock(mu_);
    while (!(StopSending() && in_flight_.load() == 0)) {
      if (!backoffs_.empty() && backoffs_.front() <= Clock::now()) {
        backoffs_.pop_front();
        lock.unlock();
        if (const std::optional<int64_t> n = TakeSend()) Issue(Clock::now(), *n);
        const bool last = in_flight_.fetch_sub(1) == 1;  // the place it held
        lock.lock();
        if (last) cv_.notify_all();
        continue;
      }
      const auto wake = std::chrono::milliseconds(50);
      if (backoffs_.empty()) {
        cv_.wait_for(lock, wake);
      } else {
        cv_.wait_until(lock, std::min(backoffs_.front(), Clock::now() + wake));
      }
    }
    stop_sending_ = true;
    done_ = true;
    cv_.notify_all();
  }
  if (progress.joinable()) progress.join();
  if (scraper.joinable()) scraper.join();
  if (!scrape_error.empty()) std::fprintf(stderr, "glmload: %s\n", scrape_error.c_str());
  StopHttpWorkers();

  LevelResult r;
  r.mode = rate_ > 0 ? "open" : "closed";
  r.concurrency = rate_ > 0 ? 0 : concurrency_;
  r.rate = rate_;
  r.sent = sent_.load();
  r.dropped = dropped_.load();
  std::lock_guard<std::mutex> lock(mu_);
  r.elapsed_s = std::chrono::duration<double>(last_done_ - start_).count();
  std::vector<double> lat, ttft, queue, sttft;
  for (const Record& rec : records_) {
    if (!rec.error.empty()) {
      ++r.errors[rec.error];
      continue;
    }
    ++r.ok;
    r.prompt_tokens += rec.prompt_tokens;
    r.generated_tokens += rec.generated;
    lat.push_back(rec.latency_ms);
    if (rec.ttft_ms >= 0) ttft.push_back(rec.ttft_ms);
    if (rec.queue_ms >= 0) queue.push_back(rec.queue_ms);
    if (rec.server_ttft_ms >= 0) sttft.push_back(rec.server_ttft_ms);
  }
  if (r.elapsed_s > 0) {
    r.requests_per_s = r.ok / r.elapsed_s;
    r.generated_tokens_per_s = r.generated_tokens / r.elapsed_s;
  }
  // The window: from the warm-up's end while every stream can still send, i.e. to the end of
  // --duration, or to the last send where --requests ran out first (after it the streams drain).
  const Clock::time_point steady_start =
      start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opts_.warmup_s));
  const Clock::time_point last_send{Clock::duration(last_send_.load())};
  const bool requests_ran_out = opts_.requests > 0 && r.sent >= opts_.requests && last_send < send_end_;
  const Clock::time_point steady_end = std::min(requests_ran_out ? last_send : send_end_, last_done_);
  if (steady_end > steady_start) {
    r.steady_window_s = std::chrono::duration<double>(steady_end - steady_start).count();
    for (const Record& rec : records_) {
      if (!rec.error.empty()) continue;
      for (const auto& [t, n] : rec.arrivals) {
        if (t >= steady_start && t < steady_end) r.steady_generated_tokens += n;
      }
    }
    r.steady_generated_tokens_per_s = r.steady_generated_tokens / r.steady_window_s;
  }
  r.latency_ms = Summarize(std::move(lat));
  r.ttft_ms = Summarize(std::move(ttft));
  r.inter_token_ms = Summarize(itl_);
  r.queue_ms = Summarize(std::move(queue));
  r.server_ttft_ms = Summarize(std::move(sttft));
  if (window_start && window_end) r.server = WindowBetween(*window_start, *window_end);
  return r;
}

json SummaryJson(const Summary& s) {
  return json{{"count", s.count}, {"min", s.min}, {"mean", s.mean}, {"p50", s.p50},
              {"p90", s.p90},     {"p99", s.p99}, {"max", s.max}};
}

Summary SummaryFrom(const json& j) {
  Summary s;
  if (!j.is_object()) return s;
  s.count = j.value("count", size_t{0});
  s.min = j.value("min", 0.0);
  s.mean = j.value("mean", 0.0);
  s.p50 = j.value("p50", 0.0);
  s.p90 = j.value("p90", 0.0);
  s.p99 = j.value("p99", 0.0);
  s.max = j.value("max", 0.0);
  return s;
}

// gnuplot SCRIPT with stdout and stderr to LOG; its exit status (127 when it cannot start).
// posix_spawn, not system(): glibc's posix_spawn runs no pthread_atfork handlers, and gRPC's
// fork handlers abort a process whose gRPC threads are still winding down.
int RunGnuplot(const std::string& script, const std::string& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::string prog = "gnuplot";
  std::vector<char*> argv = {prog.data(), const_cast<char*>(script.c_str()), nullptr};
  pid_t pid = -1;
  const int err = posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) return 127;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string Cell(double v, const Summary& s, const char* fmt = "%.1f") {
  return s.count == 0 ? std::string("-") : absl::StrFormat(fmt, v);
}

}  // namespace

SseEvent ParseSseData(const std::string& payload) {
  SseEvent ev;
  if (payload == "[DONE]") {
    ev.done = true;
    return ev;
  }
  const json j = json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    ev.malformed = true;
    return ev;
  }
  if (auto e = j.find("error"); e != j.end() && !e->is_null()) {
    ev.error = "unknown";
    if (e->is_object()) {
      if (auto code = e->find("code"); code != e->end() && code->is_string() && !code->get<std::string>().empty()) {
        ev.error = code->get<std::string>();
      }
    }
    return ev;
  }
  if (auto u = j.find("usage"); u != j.end() && u->is_object()) {
    if (auto c = u->find("completion_tokens"); c != u->end() && c->is_number_integer()) {
      ev.completion_tokens = c->get<int>();
    }
  }
  auto choices = j.find("choices");
  if (choices == j.end() || !choices->is_array() || choices->empty() || !(*choices)[0].is_object()) return ev;
  const json& choice = (*choices)[0];
  if (auto ids = choice.find("token_ids"); ids != choice.end() && ids->is_array()) {
    ev.tokens = static_cast<int>(ids->size());
    ev.has_token_ids = true;
  } else {
    // Completions: "text"; chat: delta.content.
    const json* text = nullptr;
    if (auto t = choice.find("text"); t != choice.end()) text = &*t;
    if (auto d = choice.find("delta"); d != choice.end() && d->is_object()) {
      if (auto c = d->find("content"); c != d->end()) text = &*c;
    }
    if (text != nullptr && text->is_string() && !text->get_ref<const std::string&>().empty()) ev.tokens = 1;
  }
  if (auto f = choice.find("finish_reason"); f != choice.end() && !f->is_null()) ev.finished = true;
  return ev;
}

// ---------------------------------------------------------------------------------------------
// Flags.

namespace {
// What a value that is no IntDist is not (ParseIntDist's message and the flag table's).
std::string NotAnIntDist(int min) { return absl::StrCat("is not N, fixed:N or uniform:A:B (", min, " <= A <= B)"); }
}  // namespace

absl::StatusOr<IntDist> ParseIntDist(const std::string& flag, const std::string& text, int min) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  IntDist d;
  int64_t a = 0, b = 0;
  auto bad = [&] { return absl::InvalidArgumentError(absl::StrCat(flag, ": '", text, "' ", NotAnIntDist(min))); };
  if (parts.size() == 1 || (parts.size() == 2 && parts[0] == "fixed")) {
    if (!flags::ParseIntValue(flag, parts.back(), min, 1 << 24, &a).ok()) return bad();
    d.lo = d.hi = static_cast<int>(a);
  } else if (parts.size() == 3 && parts[0] == "uniform") {
    if (!flags::ParseIntValue(flag, parts[1], min, 1 << 24, &a).ok() ||
        !flags::ParseIntValue(flag, parts[2], min, 1 << 24, &b).ok() || a > b) {
      return bad();
    }
    d.lo = static_cast<int>(a);
    d.hi = static_cast<int>(b);
  } else {
    return bad();
  }
  return d;
}

namespace {

constexpr char kSynopsis[] =
    "[--target HOST:PORT] (--concurrency N | --rate R | --sweep N,N,...)\n"
    "               [--duration T | --requests N] [flags]";

// The table of glmload's flags: ParseFlags parses with it and Usage prints it, with the defaults
// `o` holds when called (Options' own).
void Register(flags::FlagSet& set, Options& o, bool& no_progress) {
  // Prompts and generations of at least one token: the server refuses 0 for either, so a load of
  // them measured nothing but refusals.
  const auto int_dist = [](IntDist* target) {
    return [target](const std::string& value) -> std::optional<std::string> {
      constexpr int kMinTokens = 1;
      absl::StatusOr<IntDist> d = ParseIntDist("", value, kMinTokens);
      if (!d.ok()) return NotAnIntDist(kMinTokens);
      *target = *d;
      return std::nullopt;
    };
  };
  set.Section("load");
  set.String("target", &o.target, "server").ValueName("HOST:PORT").NotEmpty();
  set.String("api-key", &o.api_key, "sent as 'authorization: Bearer KEY' (a server with --api-key-file)")
      .ValueName("KEY")
      .DefaultText("$GLMSERVE_API_KEY");
  set.Path("tls-ca", &o.tls_ca, "gRPC over TLS trusting the PEM CA certificate(s) in PATH (default: plaintext)");
  set.Path("tls-cert", &o.tls_cert, "client certificate (PEM) for a server with --tls-client-ca; needs --tls-key");
  set.Path("tls-key", &o.tls_key, "private key (PEM) of --tls-cert");
  set.String("tls-server-name", &o.tls_server_name,
             "check the server's certificate against NAME instead of --target's host (a port-forward's 127.0.0.1)")
      .ValueName("NAME");
  set.String("metrics-target", &o.metrics_target,
             "the server's /metrics (serve --metrics-port): its steps, mean batch and ms a step by phase over "
             "each level's steady window, in the table and the JSON (server_window)")
      .ValueName("HOST:PORT")
      .DefaultText("none");
  set.Int("concurrency", &o.concurrency, 1, 100000, "closed loop: N requests outstanding at all times");
  set.Number("rate", &o.rate, {1e-3, 1e6},
             "open loop: Poisson arrivals at R requests/s (seeded), latency from the scheduled arrival")
      .ValueName("R")
      .DefaultText("");
  set.IntList("sweep", &o.sweep, 1, 100000, "closed loop at each concurrency in turn (e.g. 1,2,4,8,16)")
      .SkipEmptyItems();
  set.Duration("duration", &o.duration_s, 1e-6, 1e7, "per level: 30, 30s, 500ms, 2m")
      .DefaultText("10s unless --requests");
  set.Int("requests", &o.requests, 1, int64_t{1} << 40,
          "per level: stop after sending N (with --duration: whichever first)")
      .DefaultText("");
  set.Duration("warmup", &o.warmup_s, 0, 1e7,
               "per level: ids arriving in the first T are left out of \"steady tok/s\" (sending goes on); "
               "the drain after sending stops is always left out")
      .ValueName("T");
  set.Int("deadline-ms", &o.deadline_ms, 1, int64_t{1} << 40, "per-request deadline");
  set.Int("error-backoff-ms", &o.error_backoff_ms, 0, 600000,
          "closed loop: a stream whose request failed waits this long before its next (0 = at once)");
  set.Int("max-in-flight", &o.max_in_flight, 1, 1000000,
          "open loop: arrivals beyond N in flight are dropped (counted)");
  set.Int("connections", &o.connections, 1, 1024, "HTTP/2 connections used round robin");
  set.Int("seed", &o.seed, 0, INT64_MAX, "prompts, lengths and arrivals").ValueName("S");

  set.Section("requests");
  set.Custom("prompt-len", "D", absl::StrCat(o.prompt_len.lo), "prompt tokens: N, fixed:N or uniform:A:B",
             int_dist(&o.prompt_len));
  set.Custom("max-new-tokens", "D", absl::StrCat(o.max_new_tokens.lo), "same forms", int_dist(&o.max_new_tokens));
  set.Int("shared-prefix-len", &o.shared_prefix_len, 0, 1 << 30,
          "the first N tokens of every --prompt-len prompt are the same (a shared system prompt)")
      .ValueName("N");
  set.Path("prompt-file", &o.prompt_file,
           "token-id prompts, one per line (ids split by commas/spaces), drawn at random instead of --prompt-len");
  set.Int("vocab-size", &o.vocab_size, 1, 1 << 30, "random prompt ids in [0, N)")
      .DefaultText("the server's vocab_size (gRPC GetModelInfo; required with --http)");
  set.Bool("ignore-eos", &o.ignore_eos, "min_new_tokens = max_new_tokens (fixed output length)");
  set.Number("temperature", &o.temperature, {0, 100}, "0 = greedy").ValueName("T");
  set.Number("top-p", &o.top_p, {0, 1, /*lo_open=*/true}, "nucleus mass")
      .ValueName("P")
      .DefaultText("not sent (the server's 1)");
  set.Number("frequency-penalty", &o.frequency_penalty, {-2, 2}, "0 = off").ValueName("F");
  set.Number("presence-penalty", &o.presence_penalty, {-2, 2}, "0 = off").ValueName("F");
  set.Number("repetition-penalty", &o.repetition_penalty, {0, 10, /*lo_open=*/true}, "1 = off")
      .ValueName("F")
      .DefaultText("not sent (off)");
  set.Switch("stream", &o.stream,
             "InferStream (or an SSE stream with --http): measures TTFT and inter-token latency client side");
  set.Switch("http", &o.http,
             "the OpenAI HTTP API instead of gRPC: --target is the server's --http-port; POST "
             "/v1/completions with token-id prompts, max_tokens, min_tokens (--ignore-eos), sampling and "
             "penalties; one keep-alive connection per request in flight (--connections is gRPC only); "
             "needs --vocab-size or --prompt-file (the HTTP API does not report the vocabulary); errors "
             "counted as http_<status>");

  set.Section("output");
  set.Path("json-out", &o.json_out, "every number as JSON");
  set.Path("plot", &o.plot_out, "throughput and latency percentiles vs concurrency (gnuplot)").ValueName("PATH.png");
  set.Switch("no-progress", &no_progress, "no progress line");
  set.StringList("from-json", &o.from_json,
                 "re-report saved runs instead of running: side-by-side markdown table on stdout, and --plot "
                 "with one series per file")
      .ValueName("A.json,B.json")
      .SkipEmptyItems();
  set.StringList("labels", &o.labels, "names for --from-json files").ValueName("a,b").DefaultText("the file names");
  set.Epilogue(
      "Percentiles are nearest-rank (always a measured value). Exit status: 0 ok, 1 if any\n"
      "request failed or an open-loop level dropped arrivals, 2 usage or connection error.");
}

constexpr char kDescription[] =
    "Load generator for glmserve.v1.Inference (or its OpenAI HTTP API: --http). Every run\n"
    "stops by itself: each level sends for --duration or until --requests have been sent, then\n"
    "waits for the requests in flight (bounded by --deadline-ms). A progress line goes to\n"
    "stderr, the table to stdout.";

}  // namespace

std::string Usage() {
  Options o;
  bool no_progress = false;
  flags::FlagSet set("glmload", kSynopsis, kDescription);
  Register(set, o, no_progress);
  return set.Usage();
}

absl::StatusOr<Options> ParseFlags(int argc, char** argv) {
  Options o;
  bool no_progress = false;
  flags::FlagSet set("glmload", kSynopsis, kDescription);
  Register(set, o, no_progress);
  if (absl::Status s = set.Parse(argc, argv); !s.ok()) return s;
  if (set.help_requested()) {
    o.help = true;
    return o;
  }
  o.progress = !no_progress;
  if (!set.was_set("api-key")) {
    if (const char* env = std::getenv("GLMSERVE_API_KEY"); env != nullptr) o.api_key = env;
  }
  if (o.tls_cert.empty() != o.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key: one needs the other (a client certificate and its key)");
  }
  if (o.tls_ca.empty() && (!o.tls_cert.empty() || !o.tls_server_name.empty())) {
    return absl::InvalidArgumentError(
        "--tls-cert, --tls-server-name: need --tls-ca (the CA the server's certificate is checked against)");
  }
  if (o.http && !o.tls_ca.empty()) {
    return absl::InvalidArgumentError("--tls-ca: gRPC only; --http drives plaintext HTTP");
  }
  const int modes = (o.rate > 0) + !o.sweep.empty() + set.was_set("concurrency");
  if (modes > 1) {
    return absl::InvalidArgumentError("--concurrency, --rate and --sweep: pick one");
  }
  if (o.shared_prefix_len > 0 && !o.prompt_file.empty()) {
    return absl::InvalidArgumentError("--shared-prefix-len: prompts come from --prompt-file; use one or the other");
  }
  if (o.shared_prefix_len > o.prompt_len.lo) {
    return absl::InvalidArgumentError(absl::StrCat("--shared-prefix-len: ", o.shared_prefix_len,
                                                   " is longer than the shortest --prompt-len prompt (",
                                                   o.prompt_len.lo, " tokens)"));
  }
  // Output paths are checked before the run, not after it (a bad one cost the whole benchmark).
  for (const auto& [flag, path] : {std::pair<const char*, const std::string&>{"--json-out", o.json_out},
                                   std::pair<const char*, const std::string&>{"--plot", o.plot_out}}) {
    if (path.empty()) continue;
    const std::filesystem::path parent = std::filesystem::path(path).parent_path();
    std::error_code ec;
    if (!parent.empty() && !std::filesystem::is_directory(parent, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": '", path, "': the directory '", parent.string(), "' does not exist"));
    }
  }
  if (o.duration_s > 0 && o.warmup_s >= o.duration_s) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--warmup: %gs leaves no steady-state window in a --duration of %gs; it must be shorter",
                        o.warmup_s, o.duration_s));
  }
  if (!o.labels.empty() && o.labels.size() != o.from_json.size()) {
    return absl::InvalidArgumentError("--labels: one per --from-json file");
  }
  if (!o.metrics_target.empty()) {
    std::string host;
    int port = 0;
    if (absl::Status s = ParseHostPort("--metrics-target", o.metrics_target, &host, &port); !s.ok()) return s;
  }
  if (o.http && o.from_json.empty() && o.vocab_size == 0 && o.prompt_file.empty()) {
    return absl::InvalidArgumentError(
        "--http: the HTTP API does not report the vocabulary size; set --vocab-size N (prompt ids "
        "are drawn from [0, N)) or --prompt-file");
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// Running.

namespace {

// Asks /v1/models for the model name (retrying for 10 s).
absl::StatusOr<HttpTarget> ConnectHttp(const std::string& target, const std::string& api_key, ServerInfo* info) {
  HttpTarget t;
  if (absl::Status s = ParseHostPort("--target", target, &t.host, &t.port); !s.ok()) return s;
  httplib::Client cli(t.host, t.port);
  cli.set_connection_timeout(std::chrono::seconds(2));
  cli.set_read_timeout(std::chrono::seconds(10));
  const auto end = Clock::now() + std::chrono::seconds(10);
  std::string why = "no answer";
  while (true) {
    httplib::Headers headers;
    if (!api_key.empty()) headers.emplace("Authorization", absl::StrCat("Bearer ", api_key));
    httplib::Result res = cli.Get("/v1/models", headers);
    if (res && res->status == 200) {
      const json j = json::parse(res->body, nullptr, /*allow_exceptions=*/false);
      if (!j.is_discarded() && j.is_object() && j.contains("data") && j["data"].is_array() && !j["data"].empty() &&
          j["data"][0].is_object() && j["data"][0].contains("id") && j["data"][0]["id"].is_string()) {
        t.model = j["data"][0]["id"].get<std::string>();
        info->model = t.model;
        info->max_context = j["data"][0].value("max_model_len", 0);
        return t;
      }
      why = "GET /v1/models answered without data[0].id";
    } else {
      why = res ? absl::StrCat("GET /v1/models answered HTTP ", res->status)
                : absl::StrCat("GET /v1/models: ", httplib::to_string(res.error()));
    }
    if (Clock::now() >= end) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return absl::UnavailableError(absl::StrCat("cannot use http://", target, " within 10 s (", why,
                                             "; with --http, --target is the server's --http-port)"));
}

}  // namespace

absl::StatusOr<Report> RunLoad(const Options& opts) {
  Report report;
  report.options = opts;
  if (opts.http) {
    absl::StatusOr<HttpTarget> target = ConnectHttp(opts.target, opts.api_key, &report.server);
    if (!target.ok()) return target.status();
    std::vector<std::vector<int32_t>> prompts;
    if (!opts.prompt_file.empty()) {
      auto p = ReadPromptFile(opts.prompt_file);
      if (!p.ok()) return p.status();
      prompts = std::move(*p);
    }
    if (prompts.empty() && opts.vocab_size <= 0) {
      return absl::InvalidArgumentError("--http: set --vocab-size or --prompt-file");
    }
    std::vector<int> levels = opts.sweep;
    if (levels.empty()) levels.push_back(opts.concurrency);
    for (int c : levels) {
      Level level(opts, {}, prompts, opts.vocab_size, c, opts.rate, &*target);
      report.levels.push_back(level.Run());
    }
    return report;
  }
  // A server's streams per HTTP/2 connection are capped (SETTINGS_MAX_CONCURRENT_STREAMS: 100 in
  // many servers, glmserve's --max-concurrent-streams 256): gRPC's client queues the calls beyond it
  // without a word, and the level then measures fewer streams than it says.
  const int largest = opts.sweep.empty() ? opts.concurrency : *std::max_element(opts.sweep.begin(), opts.sweep.end());
  if (opts.rate <= 0 && largest > 100 * opts.connections) {
    std::fprintf(stderr,
                 "glmload: %d streams over %d connection(s): a server that takes fewer streams a connection "
                 "(often 100; glmserve: --max-concurrent-streams, 256 by default) queues the rest in this "
                 "client; --connections %d spreads them\n",
                 largest, opts.connections, (largest + 99) / 100);
  }
  std::string model_info_error = "not asked";
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!opts.tls_ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    for (const auto& [flag, path, pem] : {std::tuple{"--tls-ca", &opts.tls_ca, &ssl.pem_root_certs},
                                          std::tuple{"--tls-cert", &opts.tls_cert, &ssl.pem_cert_chain},
                                          std::tuple{"--tls-key", &opts.tls_key, &ssl.pem_private_key}}) {
      if (path->empty()) continue;
      std::ifstream in(*path, std::ios::binary);
      std::ostringstream text;
      text << in.rdbuf();
      if (!in || text.str().empty()) return absl::NotFoundError(absl::StrCat(flag, ": cannot read '", *path, "'"));
      *pem = text.str();
    }
    credentials = grpc::SslCredentials(ssl);
  }
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < opts.connections; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("glmload.connection", i);  // distinct args: a connection of its own
    args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, 64 << 20);
    if (!opts.tls_server_name.empty()) args.SetSslTargetNameOverride(opts.tls_server_name);
    channels.push_back(grpc::CreateCustomChannel(opts.target, credentials, args));
  }
  if (!channels[0]->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    return absl::UnavailableError(absl::StrCat("cannot connect to ", opts.target, " within 10 s"));
  }
  {
    auto stub = v1::Inference::NewStub(channels[0]);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    Authorize(opts.api_key, &ctx);
    v1::ModelInfo info;
    grpc::Status s = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
    if (!s.ok()) model_info_error = absl::StrCat(CodeName(s.error_code()), ": ", s.error_message());
    if (s.ok()) {
      ServerInfo& si = report.server;
      si.known = true;
      si.architecture = info.architecture();
      si.device = info.device();
      si.dtype = info.dtype();
      si.version = info.build_version();
      si.vocab_size = info.vocab_size();
      si.max_batch = info.max_batch();
      si.max_context = info.max_context();
    }
  }
  std::vector<std::vector<int32_t>> prompts;
  if (!opts.prompt_file.empty()) {
    auto p = ReadPromptFile(opts.prompt_file);
    if (!p.ok()) return p.status();
    prompts = std::move(*p);
  }
  int vocab = opts.vocab_size > 0 ? opts.vocab_size : report.server.vocab_size;
  if (prompts.empty() && vocab <= 0) {
    return absl::FailedPreconditionError(absl::StrCat("GetModelInfo failed (", model_info_error,
                                                      ") and --vocab-size is not set: cannot draw prompt ids"));
  }
  std::vector<int> levels = opts.sweep;
  if (levels.empty()) levels.push_back(opts.concurrency);
  for (int c : levels) {
    Level level(opts, channels, prompts, vocab, c, opts.rate);
    report.levels.push_back(level.Run());
  }
  return report;
}

// ---------------------------------------------------------------------------------------------
// Reports.

std::string FormatTable(const Report& r) {
  std::vector<std::vector<std::string>> rows;
  const bool open = !r.levels.empty() && r.levels[0].mode == "open";
  rows.push_back({open ? "rate/s" : "conc", "ok", "errors", "req/s", "tok/s", "steady tok/s", "lat p50", "p90", "p99",
                  "max", "ttft p50", "p99", "itl p50", "p99", "queue p50", "p99"});
  for (const LevelResult& l : r.levels) {
    std::string errors;
    for (const auto& [code, n] : l.errors) absl::StrAppend(&errors, errors.empty() ? "" : ",", code, "=", n);
    if (l.dropped > 0) absl::StrAppend(&errors, errors.empty() ? "" : ",", "dropped=", l.dropped);
    if (errors.empty()) errors = "0";
    const Summary& lat = l.latency_ms;
    rows.push_back({open ? absl::StrFormat("%.4g", l.rate) : absl::StrCat(l.concurrency), absl::StrCat(l.ok), errors,
                    absl::StrFormat("%.2f", l.requests_per_s), absl::StrFormat("%.1f", l.generated_tokens_per_s),
                    l.steady_window_s > 0 ? absl::StrFormat("%.1f", l.steady_generated_tokens_per_s) : "-",
                    Cell(lat.p50, lat), Cell(lat.p90, lat), Cell(lat.p99, lat), Cell(lat.max, lat),
                    Cell(l.ttft_ms.p50, l.ttft_ms), Cell(l.ttft_ms.p99, l.ttft_ms),
                    Cell(l.inter_token_ms.p50, l.inter_token_ms, "%.2f"),
                    Cell(l.inter_token_ms.p99, l.inter_token_ms, "%.2f"), Cell(l.queue_ms.p50, l.queue_ms),
                    Cell(l.queue_ms.p99, l.queue_ms)});
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  std::string out;
  if (r.server.known) {
    absl::StrAppend(&out, "server: ", r.server.architecture, " on ", r.server.device, " (", r.server.dtype,
                    "), max_batch ", r.server.max_batch, ", glmserve ", r.server.version, "\n");
  }
  if (r.options.http) {
    absl::StrAppend(&out, "POST /v1/completions", r.options.stream ? " (SSE stream)" : "",
                    r.server.model.empty() ? "" : absl::StrCat(", model ", r.server.model), "\n");
  }
  absl::StrAppend(&out, r.options.http ? "HTTP" : (r.options.stream ? "InferStream" : "Infer"), ", latencies in ms",
                  r.options.stream ? "" : " (ttft/itl need --stream)",
                  r.options.http ? "; queue: not reported over HTTP" : "; queue = server queue_ms",
                  "; percentiles nearest-rank\n");
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      absl::StrAppend(&out, i == 0 ? "" : "  ", std::string(width[i] - row[i].size(), ' '), row[i]);
    }
    out += "\n";
  }
  // --metrics-target: the server's own view of each level's steady window.
  for (const LevelResult& l : r.levels) {
    if (l.server.steps == 0) continue;
    absl::StrAppend(&out, "server, ",
                    l.mode == "open" ? absl::StrFormat("rate %.4g", l.rate) : absl::StrCat("conc ", l.concurrency),
                    ": ", l.server.steps, " steps, mean batch ", absl::StrFormat("%.1f", l.server.mean_batch),
                    ", ms a step:");
    for (const auto& [phase, ms] : l.server.step_ms)
      absl::StrAppend(&out, " ", phase, " ", absl::StrFormat("%.3f", ms));
    out += "\n";
  }
  return out;
}

std::string ToJson(const Report& r) {
  const Options& o = r.options;
  json j;
  j["tool"] = "glmload";
  j["percentile_method"] = "nearest-rank";
  j["config"] = {{"target", o.target},
                 {"mode", o.rate > 0 ? "open" : "closed"},
                 {"concurrency", o.concurrency},
                 {"rate", o.rate},
                 {"sweep", o.sweep},
                 {"duration_s", o.duration_s},
                 {"warmup_s", o.warmup_s},
                 {"requests", o.requests},
                 {"prompt_len", {o.prompt_len.lo, o.prompt_len.hi}},
                 {"shared_prefix_len", o.shared_prefix_len},
                 {"max_new_tokens", {o.max_new_tokens.lo, o.max_new_tokens.hi}},
                 {"prompt_file", o.prompt_file},
                 {"ignore_eos", o.ignore_eos},
                 {"temperature", o.temperature},
                 // Not sent (the server's default): null, not a 0 no server takes.
                 {"top_p", o.top_p > 0 ? json(o.top_p) : json(nullptr)},
                 {"frequency_penalty", o.frequency_penalty},
                 {"presence_penalty", o.presence_penalty},
                 {"repetition_penalty", o.repetition_penalty > 0 ? json(o.repetition_penalty) : json(nullptr)},
                 {"api", o.http ? "http" : "grpc"},
                 {"stream", o.stream},
                 {"deadline_ms", o.deadline_ms},
                 {"seed", o.seed},
                 {"connections", o.connections}};
  if (r.server.known) {
    j["server"] = {
        {"architecture", r.server.architecture}, {"device", r.server.device},         {"dtype", r.server.dtype},
        {"version", r.server.version},           {"vocab_size", r.server.vocab_size}, {"max_batch", r.server.max_batch},
        {"max_context", r.server.max_context}};
  }
  j["levels"] = json::array();
  for (const LevelResult& l : r.levels) {
    json e = {{"mode", l.mode},
              {"concurrency", l.concurrency},
              {"rate", l.rate},
              {"elapsed_s", l.elapsed_s},
              {"requests_sent", l.sent},
              {"requests_ok", l.ok},
              {"requests_dropped", l.dropped},
              {"errors", l.errors},
              {"prompt_tokens", l.prompt_tokens},
              {"generated_tokens", l.generated_tokens},
              {"requests_per_s", l.requests_per_s},
              {"generated_tokens_per_s", l.generated_tokens_per_s},
              {"steady_generated_tokens", l.steady_generated_tokens},
              {"steady_window_s", l.steady_window_s},
              {"steady_generated_tokens_per_s", l.steady_generated_tokens_per_s},
              {"latency_ms", SummaryJson(l.latency_ms)},
              {"ttft_ms", SummaryJson(l.ttft_ms)},
              {"inter_token_ms", SummaryJson(l.inter_token_ms)},
              {"queue_ms", SummaryJson(l.queue_ms)},
              {"server_ttft_ms", SummaryJson(l.server_ttft_ms)}};
    if (l.server.steps > 0) {
      e["server_window"] = {
          {"steps", l.server.steps}, {"mean_batch", l.server.mean_batch}, {"step_ms", l.server.step_ms}};
    }
    j["levels"].push_back(e);
  }
  return j.dump(2) + "\n";
}

absl::StatusOr<Report> FromJson(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("levels") || !j["levels"].is_array()) {
    return absl::InvalidArgumentError("not a glmload JSON report (no levels)");
  }
  Report r;
  if (j.contains("config")) {
    r.options.stream = j["config"].value("stream", false);
    r.options.http = j["config"].value("api", "grpc") == "http";
  }
  if (j.contains("server")) {
    const json& s = j["server"];
    r.server.known = true;
    r.server.architecture = s.value("architecture", "");
    r.server.device = s.value("device", "");
    r.server.dtype = s.value("dtype", "");
    r.server.version = s.value("version", "");
    r.server.max_batch = s.value("max_batch", 0);
  }
  for (const json& e : j["levels"]) {
    LevelResult l;
    l.mode = e.value("mode", "closed");
    l.concurrency = e.value("concurrency", 0);
    l.rate = e.value("rate", 0.0);
    l.elapsed_s = e.value("elapsed_s", 0.0);
    l.sent = e.value("requests_sent", int64_t{0});
    l.ok = e.value("requests_ok", int64_t{0});
    l.dropped = e.value("requests_dropped", int64_t{0});
    if (e.contains("errors")) l.errors = e["errors"].get<std::map<std::string, int64_t>>();
    l.prompt_tokens = e.value("prompt_tokens", int64_t{0});
    l.generated_tokens = e.value("generated_tokens", int64_t{0});
    l.requests_per_s = e.value("requests_per_s", 0.0);
    l.generated_tokens_per_s = e.value("generated_tokens_per_s", 0.0);
    l.steady_generated_tokens = e.value("steady_generated_tokens", int64_t{0});
    l.steady_window_s = e.value("steady_window_s", 0.0);
    l.steady_generated_tokens_per_s = e.value("steady_generated_tokens_per_s", 0.0);
    l.latency_ms = SummaryFrom(e.value("latency_ms", json()));
    l.ttft_ms = SummaryFrom(e.value("ttft_ms", json()));
    l.inter_token_ms = SummaryFrom(e.value("inter_token_ms", json()));
    l.queue_ms = SummaryFrom(e.value("queue_ms", json()));
    l.server_ttft_ms = SummaryFrom(e.value("server_ttft_ms", json()));
    if (e.contains("server_window") && e["server_window"].is_object()) {
      const json& w = e["server_window"];
      l.server.steps = w.value("steps", int64_t{0});
      l.server.mean_batch = w.value("mean_batch", 0.0);
      if (w.contains("step_ms") && w["step_ms"].is_object()) {
        l.server.step_ms = w["step_ms"].get<std::map<std::string, double>>();
      }
    }
    r.levels.push_back(l);
  }
  return r;
}

std::string CompareMarkdown(const std::vector<Report>& reports, const std::vector<std::string>& labels) {
  // A level is its concurrency (closed loop) or its arrival rate (open loop: concurrency 0), in
  // that order; rows match levels of the same kind and size across the reports.
  using Level = std::pair<bool, double>;  // (open, concurrency or requests/s)
  auto level_of = [](const LevelResult& l) {
    return l.mode == "open" ? Level{true, l.rate} : Level{false, static_cast<double>(l.concurrency)};
  };
  std::vector<Level> xs;
  for (const Report& r : reports)
    for (const LevelResult& l : r.levels) xs.push_back(level_of(l));
  std::sort(xs.begin(), xs.end());
  xs.erase(std::unique(xs.begin(), xs.end()), xs.end());
  auto find = [&level_of](const Report& r, const Level& x) -> const LevelResult* {
    for (const LevelResult& l : r.levels)
      if (level_of(l) == x) return &l;
    return nullptr;
  };
  struct Col {
    std::string name;
    std::function<std::string(const LevelResult&)> get;
  };
  const std::vector<Col> cols = {
      {"req/s", [](const LevelResult& l) { return absl::StrFormat("%.2f", l.requests_per_s); }},
      {"tok/s", [](const LevelResult& l) { return absl::StrFormat("%.0f", l.generated_tokens_per_s); }},
      {"steady tok/s",
       [](const LevelResult& l) {
         return l.steady_window_s > 0 ? absl::StrFormat("%.0f", l.steady_generated_tokens_per_s) : std::string("-");
       }},
      {"p50 ms", [](const LevelResult& l) { return Cell(l.latency_ms.p50, l.latency_ms, "%.0f"); }},
      {"p99 ms", [](const LevelResult& l) { return Cell(l.latency_ms.p99, l.latency_ms, "%.0f"); }},
      {"TTFT p50 ms", [](const LevelResult& l) { return Cell(l.ttft_ms.p50, l.ttft_ms, "%.0f"); }},
      {"queue p50 ms", [](const LevelResult& l) { return Cell(l.queue_ms.p50, l.queue_ms, "%.0f"); }},
      {"errors",
       [](const LevelResult& l) {
         int64_t n = l.dropped;
         for (const auto& e : l.errors) n += e.second;
         return absl::StrCat(n);
       }},
  };
  const bool any_open = std::any_of(xs.begin(), xs.end(), [](const Level& x) { return x.first; });
  std::string head = any_open ? "| level |" : "| concurrency |", rule = "|---:|";
  for (const Col& c : cols) {
    for (const std::string& label : labels) {
      absl::StrAppend(&head, " ", c.name, " (", label, ") |");
      rule += "---:|";
    }
    if (c.name == "req/s" && reports.size() == 2) {
      absl::StrAppend(&head, " QPS ", labels[1], " / ", labels[0], " |");
      rule += "---:|";
    }
  }
  std::string out = head + "\n" + rule + "\n";
  for (const Level& x : xs) {
    absl::StrAppend(&out, "| ", x.first ? absl::StrFormat("%.4g requests/s", x.second) : absl::StrCat(x.second), " |");
    for (const Col& c : cols) {
      for (const Report& r : reports) {
        const LevelResult* l = find(r, x);
        absl::StrAppend(&out, " ", l ? c.get(*l) : "-", " |");
      }
      if (c.name == "req/s" && reports.size() == 2) {
        const LevelResult* a = find(reports[0], x);
        const LevelResult* b = find(reports[1], x);
        absl::StrAppend(
            &out, " ",
            a && b && a->requests_per_s > 0 ? absl::StrFormat("%.2fx", b->requests_per_s / a->requests_per_s) : "-",
            " |");
      }
    }
    out += "\n";
  }
  return out;
}

absl::Status Plot(const std::vector<Report>& reports, const std::vector<std::string>& labels,
                  const std::string& png_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path dir =
      fs::temp_directory_path() / absl::StrCat("glmload-plot-", getpid(), "-", Clock::now().time_since_epoch().count());
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("plot: cannot create ", dir.string()));
  const bool open = !reports.empty() && !reports[0].levels.empty() && reports[0].levels[0].mode == "open";
  const std::string xlabel = open ? "offered rate (requests/s)" : "concurrency (requests in flight)";
  bool any_ttft = false, any_steady = false;
  std::vector<std::string> data_files;
  for (size_t i = 0; i < reports.size(); ++i) {
    const fs::path p = dir / absl::StrCat("series", i, ".dat");
    std::ofstream f(p);
    f << "# x req_s tok_s p50 p90 p99 ttft_p50 ttft_p99 steady_tok_s\n";
    std::vector<LevelResult> ls = reports[i].levels;
    std::sort(ls.begin(), ls.end(), [&](const LevelResult& a, const LevelResult& b) {
      return open ? a.rate < b.rate : a.concurrency < b.concurrency;
    });
    for (const LevelResult& l : ls) {
      f << (open ? l.rate : l.concurrency) << " " << l.requests_per_s << " " << l.generated_tokens_per_s << " "
        << l.latency_ms.p50 << " " << l.latency_ms.p90 << " " << l.latency_ms.p99 << " ";
      if (l.ttft_ms.count > 0) {
        any_ttft = true;
        f << l.ttft_ms.p50 << " " << l.ttft_ms.p99 << " ";
      } else {
        f << "NaN NaN ";
      }
      if (l.steady_window_s > 0) {
        any_steady = true;
        f << l.steady_generated_tokens_per_s << "\n";
      } else {
        f << "NaN\n";
      }
    }
    data_files.push_back(p.string());
  }
  auto quote = [](std::string s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
    return out + "'";
  };
  const char* dash[] = {"dt 1", "dt 2", "dt 3", "dt 4"};
  const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
  auto script = [&](const std::string& terminal) {
    std::ostringstream s;
    s << "set terminal " << terminal << " size 1400,560 font ',11'\n"
      << "set output " << quote(png_path) << "\n"
      << "set datafile missing 'NaN'\n"
      << "set multiplot layout 1,2 title 'glmload: glmserve.v1.Inference'\n"
      << "set grid\nset key top left\nset xlabel " << quote(xlabel) << "\n";
    if (!open) s << "set logscale x 2\n";
    s << "set title 'Throughput'\nset ylabel 'requests/s'\nset y2label 'generated tokens/s'\n"
      << "set ytics nomirror\nset y2tics\nset yrange [0:*]\nset y2range [0:*]\nplot ";
    for (size_t i = 0; i < data_files.size(); ++i) {
      const std::string c = colors[i % 6];
      s << (i ? ", " : "") << quote(data_files[i]) << " using 1:2 with linespoints lw 2 pt 7 lc rgb '" << c
        << "' title " << quote(labels[i] + " req/s") << ", " << quote(data_files[i])
        << " using 1:3 axes x1y2 with linespoints lw 1 dt 2 pt 6 lc rgb '" << c << "' title "
        << quote(labels[i] + " tok/s");
      if (any_steady) {
        s << ", " << quote(data_files[i]) << " using 1:9 axes x1y2 with linespoints lw 1 dt 3 pt 4 lc rgb '" << c
          << "' title " << quote(labels[i] + " steady tok/s");
      }
    }
    s << "\nunset y2label\nunset y2tics\nset ytics mirror\n"
      << "set title 'Latency percentiles'\nset ylabel 'milliseconds'\nset logscale y\nset yrange [*:*]\nplot ";
    bool first = true;
    for (size_t i = 0; i < data_files.size(); ++i) {
      const std::string c = colors[i % 6];
      const std::pair<int, const char*> series[] = {{4, "p50"}, {5, "p90"}, {6, "p99"}};
      int k = 0;
      for (const auto& [col, name] : series) {
        s << (first ? "" : ", ") << quote(data_files[i]) << " using 1:" << col << " with linespoints lw 2 " << dash[k++]
          << " pt 7 lc rgb '" << c << "' title " << quote(labels[i] + " latency " + name);
        first = false;
      }
      if (any_ttft) {
        s << ", " << quote(data_files[i]) << " using 1:7 with linespoints lw 1 dt 4 pt 4 lc rgb '" << c << "' title "
          << quote(labels[i] + " TTFT p50");
      }
    }
    s << "\nunset multiplot\n";
    return s.str();
  };
  absl::Status result = absl::InternalError("plot: gnuplot failed");
  for (const std::string term : {"pngcairo", "png"}) {
    const fs::path gp = dir / "plot.gp";
    std::ofstream(gp) << script(term);
    const int rc = RunGnuplot(gp.string(), (dir / "gnuplot.log").string());
    if (rc == 0 && fs::exists(png_path) && fs::file_size(png_path, ec) > 0) {
      result = absl::OkStatus();
      break;
    }
    std::ifstream log(dir / "gnuplot.log");
    std::stringstream ss;
    ss << log.rdbuf();
    result = absl::InternalError(
        absl::StrCat("plot: gnuplot failed (exit ", rc,
                     "; is gnuplot installed? apt-get install gnuplot-nox): ", ss.str().substr(0, 500)));
  }
  fs::remove_all(dir, ec);
  return result;
}

}  // namespace glmserve::load
