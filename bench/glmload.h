// glmload: a load generator for glmserve.v1.Inference (see bench/README.md). The library part,
// so tests drive it in process; bench/glmload_main.cc is the command.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/glmload_stats.h"

namespace glmserve::load {

// A distribution of token counts: "N" or "fixed:N" (always N), "uniform:A:B" (integers in
// [A, B], each equally likely).
struct IntDist {
  int lo = 0, hi = 0;
};
// `min`: the smallest value A, B or N may take.
absl::StatusOr<IntDist> ParseIntDist(const std::string& flag, const std::string& text, int min);

struct Options {
  std::string target = "127.0.0.1:50051";
  // Sent as "authorization: Bearer KEY" with every call (a server run with --api-key-file or
  // GLMSERVE_API_KEY); "" = none. The command line takes it from GLMSERVE_API_KEY by default.
  std::string api_key;
  // gRPC over TLS trusting the PEM CA certificate(s) in tls_ca ("" = plaintext), with a client
  // certificate (tls_cert + tls_key, for --tls-client-ca servers) and the name the server's
  // certificate is checked against where the target's host is not it (a port-forward's 127.0.0.1).
  std::string tls_ca, tls_cert, tls_key, tls_server_name;
  // Closed loop: this many requests outstanding at all times (each completion sends the next).
  int concurrency = 1;
  // Open loop when > 0: Poisson arrivals at this many requests/s, whatever the server does.
  double rate = 0;
  // Closed-loop concurrency levels, run one after the other with the same duration/requests.
  std::vector<int> sweep;
  // Each level stops sending after duration_s seconds or `requests` requests, whichever first
  // (0 = unset; with neither set, 10 s). In-flight requests then finish (their deadline bounds it).
  double duration_s = 0;
  int64_t requests = 0;
  // The steady-state window of each level is [start + warmup_s, end of sending): only ids that
  // arrive inside it count toward steady_generated_tokens_per_s. The level still sends during the
  // warm-up; what it leaves out is the ramp (every stream's first prompt at once) and, always, the
  // drain after sending stops (where fewer than --concurrency requests are in flight).
  double warmup_s = 0;
  IntDist prompt_len{32, 32};
  // The first this many tokens of every --prompt-len prompt are one sequence drawn once from the
  // seed (a shared system prompt: what the server's prefix caching reuses); the rest are random.
  // A prompt shorter than it is all shared tokens. 0 = none. Not with prompt_file.
  int shared_prefix_len = 0;
  IntDist max_new_tokens{32, 32};
  // One prompt per line, token ids separated by commas or spaces; drawn uniformly (seeded).
  std::string prompt_file;
  // Sets min_new_tokens = max_new_tokens, so every request generates exactly max_new_tokens.
  bool ignore_eos = true;
  float temperature = 0;
  // Sent in every request. top_p 0 = not sent (the server's default, 1); the penalties 0 = not
  // sent (off); repetition_penalty is sent only when set (1 = off).
  float top_p = 0;
  float frequency_penalty = 0;
  float presence_penalty = 0;
  float repetition_penalty = 0;
  bool stream = false;
  // Drive the OpenAI-compatible HTTP API (POST /v1/completions, token-id prompts, SSE when
  // streaming) instead of gRPC; target is then the HTTP port. Needs vocab_size or prompt_file.
  bool http = false;
  // Per-request deadline.
  int64_t deadline_ms = 60000;
  uint64_t seed = 1;
  // Open-loop arrivals beyond this many in flight are not sent (counted as dropped).
  int max_in_flight = 4096;
  // Closed loop: a stream whose request failed waits this long before its next (a refusal comes
  // back in microseconds: resending at once made each stream a busy loop of ~10,000 requests a
  // second that slowed the server for the requests it served). 0 = at once.
  int64_t error_backoff_ms = 100;
  // HTTP/2 connections, used round robin.
  int connections = 1;
  // Prompt ids are drawn from [0, vocab_size); 0 = ask the server (GetModelInfo).
  int vocab_size = 0;
  // The server's /metrics ("HOST:PORT" of serve --metrics-port): scraped at each level's steady
  // window's start and end for the server's own view of it (LevelResult::server). "" = not scraped.
  std::string metrics_target;
  std::string json_out;
  std::string plot_out;
  // Re-report saved runs (JSON files of --json-out) instead of running: markdown side-by-side
  // table, and the plot when plot_out is set. Labels name them (default: file names).
  std::vector<std::string> from_json;
  std::vector<std::string> labels;
  bool progress = true;
  bool help = false;
};

std::string Usage();
absl::StatusOr<Options> ParseFlags(int argc, char** argv);

// What glmserve's /metrics said over a level's steady window (two scrapes): step attempts, their
// mean batch, and the engine thread's ms a step by phase (glmserve_step_phase_seconds_total:
// schedule, executor_host, device_wait, commit).
struct ServerWindow {
  int64_t steps = 0;  // 0 = not scraped (or no step in the window)
  double mean_batch = 0;
  std::map<std::string, double> step_ms;  // phase -> ms a step
};

// The outcome of one load level.
struct LevelResult {
  std::string mode;      // "closed" or "open"
  int concurrency = 0;   // closed loop
  double rate = 0;       // open loop: offered requests/s
  double elapsed_s = 0;  // the level's start (its first send) -> last completion
  int64_t sent = 0, ok = 0, dropped = 0;
  // gRPC code name -> count; HTTP: "http_<status>" (non-2xx), "transport_<httplib error>",
  // "stream_<error code>" (an error event in an SSE stream), "bad_response"
  std::map<std::string, int64_t> errors;
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double requests_per_s = 0, generated_tokens_per_s = 0;
  // Ids that arrived inside the steady-state window (Options::warmup_s to the end of --duration,
  // or to the last send where --requests ran out first) of requests that ended ok (streaming: as
  // each message arrives; unary: all at the reply), over that window's length. Window 0 (sending
  // ended before the warm-up did): not measured.
  int64_t steady_generated_tokens = 0;
  double steady_window_s = 0, steady_generated_tokens_per_s = 0;
  Summary latency_ms, ttft_ms, inter_token_ms, queue_ms, server_ttft_ms;
  ServerWindow server;  // with Options::metrics_target
};

struct ServerInfo {
  bool known = false;
  std::string architecture, device, dtype, version;
  std::string model;  // HTTP: the id /v1/models lists (sent as "model")
  int vocab_size = 0, max_batch = 0, max_context = 0;
};

struct Report {
  Options options;
  ServerInfo server;
  std::vector<LevelResult> levels;
};

// One SSE "data:" payload of a /v1/completions stream, as glmload reads it.
struct SseEvent {
  bool done = false;           // "[DONE]"
  std::string error;           // an error object: its code (or "unknown"); else ""
  int tokens = 0;              // ids in this chunk: len(token_ids) when sent, else 1 per non-empty text
  bool has_token_ids = false;  // the chunk says its ids (token_ids, maybe [])
  int completion_tokens = -1;  // the usage chunk's completion_tokens
  bool finished = false;       // finish_reason set
  bool malformed = false;      // not JSON / not an object
};
SseEvent ParseSseData(const std::string& payload);

// Runs every level (the sweep, or the one level of --concurrency/--rate) against opts.target.
absl::StatusOr<Report> RunLoad(const Options& opts);

// The final table (one row per level), for stdout.
std::string FormatTable(const Report& r);
// Every number as JSON (the --json-out file).
std::string ToJson(const Report& r);
absl::StatusOr<Report> FromJson(const std::string& text);
// Side-by-side markdown: one row per concurrency, req/s, tok/s and latency of each report.
std::string CompareMarkdown(const std::vector<Report>& reports, const std::vector<std::string>& labels);
// Throughput vs concurrency and latency percentiles vs concurrency, with gnuplot.
absl::Status Plot(const std::vector<Report>& reports, const std::vector<std::string>& labels,
                  const std::string& png_path);

}  // namespace glmserve::load
