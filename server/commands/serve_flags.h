// Flags of `glmserve serve`: every limit has a default listed by --help.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "flags/flags.h"
#include "runtime/engine/engine_impl.h"
#include "runtime/model_runner.h"
#include "server/frontend/grpc_service.h"

namespace glmserve {

struct ServeFlags {
  bool help = false;
  std::string model_dir;
  // --device and --dtype, parsed once while the flags are read; `load` carries their spelling.
  flags::Device device;
  flags::Dtype dtype = flags::Dtype::kAuto;
  LoadOptions load;
  ExecutorOptions executor;
  // The engine's own defaults (runtime/engine/engine_impl.h), except prefix caching, on: a served
  // model sees the same system prompts and conversation histories again and again (64 streams
  // sharing a 1,024-token system prompt on an H200: 6,756 instead of 2,001 tok/s, TTFT p50 38
  // instead of 2,288 ms), and random prompts lose nothing (bench/results/gpu.md).
  EngineOptions engine = [] {
    EngineOptions defaults;
    defaults.scheduler.prefix_caching = true;
    return defaults;
  }();
  GrpcServerOptions grpc;
  int64_t drain_timeout_ms = 30'000;    // SIGTERM: wait this long for in-flight requests
  int64_t shutdown_grace_ms = 5'000;    // then this long for gRPC to close open calls
  int64_t warmup_timeout_ms = 300'000;  // the warm-up request must finish within this

  // Observability (docs/operations.md).
  int metrics_port = 0;  // Prometheus GET /metrics on --host:PORT; 0 = off
  // OpenAI-compatible HTTP/JSON API (server/frontend/http_server.h) on --host:PORT; -1 = off, 0 = any port.
  int http_port = -1;
  int http_threads = 64;                  // HTTP API requests answered at once (each holds its connection's thread)
  int http_max_waiting = 256;             // HTTP requests waiting for one of those; beyond: 429
  int http_max_connections = 512;         // open HTTP connections; beyond: 503 and closed
  int64_t http_read_timeout_ms = 10'000;  // an HTTP request's head and body must arrive within
  // API request bodies held at once over all HTTP connections (read, waiting or answered), MiB;
  // beyond: 429. 512 connections could otherwise hold 512 x --max-message-bytes (8 GiB with
  // images).
  int64_t http_body_budget_mb = 512;
  // The model ids HTTP requests may name (vLLM's --served-model-name); empty: the model
  // directory's name is listed and any id taken.
  std::vector<std::string> served_model_names;

  // Security and fairness (server/request/auth.h, server/request/client_quota.h), both front ends.
  std::string api_key_file;                      // keys, one a line (also GLMSERVE_API_KEY); none = no authentication
  std::string tls_cert, tls_key, tls_client_ca;  // PEM files; none = plaintext
  // Queued plus running requests per client (API key, else peer address); 0 = no cap; -1 (unset)
  // = max(2 x --max-batch, (--max-queue + --max-batch) / 4), resolved by ParseServeFlags.
  int64_t max_requests_per_client = -1;
  std::string log_level = "info";   // debug|info|warn|error
  std::string log_format = "json";  // json|text

  // Self-healing (server/ops/watchdog.h, server/commands/supervisor.h).
  bool supervise = false;             // run the server as a child process, restart it on death
  int64_t stall_timeout_ms = 60'000;  // a step running longer than this is an engine fault
  int64_t restart_backoff_ms = 500;   // first rebuild delay; doubles per consecutive failure
  int64_t restart_backoff_max_ms = 30'000;
  int32_t max_restarts = 5;             // this many engine failures within the window ...
  int64_t restart_window_ms = 600'000;  // ... and the server stays NOT_SERVING, saying why
  int64_t canary_interval_ms = 0;       // idle canary forward every N ms; 0 = off

  // Test hooks (off by default): see --help.
  int32_t debug_inject_oom_above = 0;
  bool debug_faults_persist = false;  // faults also apply to rebuilt engines
  int64_t debug_load_delay_ms = 0;    // every model load waits this long first (a slow load)
};

// Parses argv (argv[0] is "serve"). INVALID_ARGUMENT names the bad flag and its value; nothing
// is bound or loaded before this returns.
absl::StatusOr<ServeFlags> ParseServeFlags(int argc, char** argv);
std::string ServeUsage();  // lists every flag with its default, from the table that parses

}  // namespace glmserve
