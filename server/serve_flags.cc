#include "server/serve_flags.h"

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <map>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "server/flag_values.h"

namespace glmserve {

// --max-prefill-tokens-with-decodes when --device is a GPU and the flag is not given.
constexpr int32_t kGpuPrefillTokensWithDecodes = 256;

std::string ServeUsage() {
  const ServeFlags d;
  const GrpcServerOptions& g = d.grpc;
  const SchedulerOptions& s = d.engine.scheduler;
  auto b = [](bool v) { return v ? "true" : "false"; };
  return absl::StrCat(
      "usage: glmserve serve --model DIR [flags]\n"
      "\n"
      "Loads a GLM checkpoint and serves glmserve.v1.Inference over gRPC, with grpc.health.v1 and\n"
      "server reflection. Logs 'glmserve: serving on HOST:PORT' on stderr once the model is warm\n"
      "(health SERVING). SIGTERM/SIGINT drains: health NOT_SERVING, new requests UNAVAILABLE,\n"
      "in-flight requests finish (up to --drain-timeout-ms), exit 0; a second signal exits at once.\n"
      "Flags take '--flag value' or '--flag=value'.\n"
      "\nmodel:\n"
      "  --model DIR                     checkpoint directory (required)\n"
      "  --device cpu|cuda[:N]           default ", d.load.device, "\n"
      "  --dtype float32|bfloat16|float16  default: float32 on CPU, bfloat16 on CUDA\n"
      "  --random-weights true|false      benchmark: random weights of --model's config.json (default false)\n"
      "\nnetwork (see proto/README.md for the keepalive choices):\n"
      "  --host H                        default ", g.host, " (0.0.0.0 or :: for every interface)\n"
      "  --port P                        default ", g.port, "; 0 picks a free port\n"
      "  --max-message-bytes N           request and response size limit, default ", g.max_message_bytes, "\n"
      "  --max-concurrent-streams N      per HTTP/2 connection, default ", g.max_concurrent_streams, "\n"
      "  --keepalive-time-ms N           ping a connection idle this long, default ", g.keepalive_time_ms, "\n"
      "  --keepalive-timeout-ms N        close when a ping is not acked within, default ", g.keepalive_timeout_ms, "\n"
      "  --keepalive-permit-without-calls true|false  allow client pings with no call, default ",
      b(g.keepalive_permit_without_calls), "\n"
      "  --min-ping-interval-ms N        client pings more often get GOAWAY, default ", g.min_ping_interval_ms, "\n"
      "\nrequests:\n"
      "  --max-new-tokens-cap N          largest max_new_tokens accepted, default ", g.limits.max_new_tokens_cap, "\n"
      "  --default-max-new-tokens N      used when max_new_tokens is 0, default ", g.limits.default_max_new_tokens, "\n"
      "  --max-prompt-tokens N           longest prompt, default ", g.limits.max_prompt_tokens,
      " = the model's max context - 1\n"
      "  --default-deadline-ms N         for requests sent without a deadline, default ", g.default_deadline_ms,
      "; 0 = none\n"
      "  --log-requests true|false       one stderr line per finished or refused request, default ",
      b(g.log_requests), "\n"
      "  --reflection true|false         gRPC server reflection (grpcurl list/describe), default ",
      b(g.reflection), "\n"
      "  --max-requests-per-client N     queued plus running requests of one client (its API key, else its\n"
      "                                  address); beyond: RESOURCE_EXHAUSTED / HTTP 429; 0 = no cap;\n"
      "                                  default max(2 x --max-batch, (--max-queue + --max-batch) / 4) = ",
      std::max<int64_t>(2 * int64_t{s.max_batch_size}, (d.engine.max_queued_requests + s.max_batch_size) / 4), "\n"
      "\nsecurity (server/README.md; health and /metrics stay open):\n"
      "  --api-key-file PATH             API keys, one a line ('#' comments); also the environment\n"
      "                                  variable GLMSERVE_API_KEY; requests need 'authorization: Bearer\n"
      "                                  KEY' (gRPC metadata / HTTP header); default: no keys = open\n"
      "  --tls-cert PATH, --tls-key PATH PEM certificate (chain) and its private key: TLS on gRPC and\n"
      "                                  HTTP; default plaintext\n"
      "  --tls-client-ca PATH            PEM CA: clients must present a certificate it signed (mutual TLS)\n"
      "\nengine:\n"
      "  --max-batch N                   sequences running at once, default ", s.max_batch_size, "\n"
      "  --max-queue N                   accepted requests not yet running; beyond: RESOURCE_EXHAUSTED,\n"
      "                                  default ", d.engine.max_queued_requests, "\n"
      "  --max-batch-tokens N            tokens per step (chunked prefill), default ", s.max_tokens_per_step, "\n"
      "  --max-prefill-tokens-with-decodes N\n"
      "                                  prefill tokens in a step that also decodes (flat ITL while prompts\n"
      "                                  arrive), default ", kGpuPrefillTokensWithDecodes, " on a GPU, 0 (no cap) on the CPU\n"
      "  --max-queue-delay-us N          batching window while idle, default ", s.max_queue_delay.count(), "\n"
      "  --kv-block-size N               tokens per KV block, default ", d.executor.block_size, "\n"
      "  --kv-blocks N                   KV pool blocks, default ", d.executor.num_blocks, " = sized from memory\n"
      "  --kv-memory-fraction F          of free GPU memory for the KV pool, default ", d.executor.kv_memory_fraction, "\n"
      "  --kv-cpu-budget-mb N            CPU KV pool size, default ", d.executor.kv_cpu_budget_bytes >> 20, "\n"
      "\nlifecycle:\n"
      "  --warmup-timeout-ms N           the warm-up request must finish within, default ", d.warmup_timeout_ms, "\n"
      "  --drain-timeout-ms N            on SIGTERM wait this long for in-flight requests, default ",
      d.drain_timeout_ms, "\n"
      "  --shutdown-grace-ms N           then this long before open calls are cancelled, default ",
      d.shutdown_grace_ms, "\n"
      "\nobservability (docs/operations.md):\n"
      "  --metrics-port P                Prometheus GET /metrics on --host:P, default ", d.metrics_port,
      " = off\n"
      "  --http-port P                   OpenAI-compatible HTTP/JSON API on --host:P (/v1/chat/completions,\n"
      "                                  /v1/completions, /v1/models, /health); 0 picks a free port and\n"
      "                                  logs 'glmserve: http serving on HOST:PORT'; default off\n"
      "  --http-threads N                HTTP API requests answered at once, default ", d.http_threads, "\n"
      "  --http-max-waiting N            HTTP requests waiting for one of those (in glmserve_queue_depth);\n"
      "                                  beyond: 429 + Retry-After at once, default ", d.http_max_waiting, "\n"
      "  --http-max-connections N        open HTTP connections (a thread each, idle ones included);\n"
      "                                  beyond: 503 and closed, default ", d.http_max_connections, "\n"
      "  --http-read-timeout-ms N        a request's head and body must arrive within (slow clients get\n"
      "                                  408 and are closed; idle keep-alive closes after 5 s), default ",
      d.http_read_timeout_ms, "\n"
      "  --log-level debug|info|warn|error  default ", d.log_level, "\n"
      "  --log-format json|text          json: one object per line {time,level,request_id,event,msg,\n"
      "                                  fields}; default ", d.log_format, "\n"
      "\nself-healing (docs/operations.md):\n"
      "  --supervise                     run the server as a child process; restart it when it dies\n"
      "                                  (backoff as below); SIGTERM/SIGINT are forwarded for a drain\n"
      "  --stall-timeout-ms N            a step longer than this is an engine fault (NOT_SERVING,\n"
      "                                  rebuild), default ", d.stall_timeout_ms, "\n"
      "  --restart-backoff-ms N          first engine rebuild / child restart delay, doubled per\n"
      "                                  consecutive failure, default ", d.restart_backoff_ms, "\n"
      "  --restart-backoff-max-ms N      backoff cap, default ", d.restart_backoff_max_ms, "\n"
      "  --max-restarts N                failures within --restart-window-ms before giving up (stay\n"
      "                                  NOT_SERVING / supervisor exits), default ", d.max_restarts, "\n"
      "  --restart-window-ms N           default ", d.restart_window_ms, "\n"
      "  --canary-interval-ms N          while idle, a 1-token forward every N ms; failure = engine\n"
      "                                  fault; default ", d.canary_interval_ms, " = off\n"
      "\ntest hooks (off by default; faults hit the first engine only unless --debug-faults-persist):\n"
      "  --debug-step-latency-ms N       sleep this long in every engine step, default 0\n"
      "  --debug-inject-oom-above N      a step with more than N sequences runs out of memory in the\n"
      "                                  executor (its real OOM path; the batch limit halves), default 0\n"
      "  --debug-throw-on-step K         the K-th step attempt throws (an engine fault), default 0\n"
      "  --debug-stall-on-step K         the K-th step attempt hangs for --debug-stall-ms, default 0\n"
      "  --debug-stall-ms N              default ", s.faults.stall_duration.count(), "\n"
      "  --debug-faults-persist true|false  default false\n");
}

absl::StatusOr<ServeFlags> ParseServeFlags(int argc, char** argv) {
  ServeFlags f;
  constexpr int64_t kIntMax = 2147483647;
  using Setter = std::function<absl::Status(const std::string& flag, const std::string& value)>;
  auto int_flag = [](auto* field, int64_t lo, int64_t hi) -> Setter {
    return [field, lo, hi](const std::string& flag, const std::string& value) {
      int64_t v = 0;
      absl::Status s = ParseIntFlag(flag, value, lo, hi, &v);
      if (s.ok()) *field = static_cast<std::remove_pointer_t<decltype(field)>>(v);
      return s;
    };
  };
  auto bool_flag = [](bool* field) -> Setter {
    return [field](const std::string& flag, const std::string& value) {
      if (value == "true" || value == "1") {
        *field = true;
      } else if (value == "false" || value == "0") {
        *field = false;
      } else {
        return absl::InvalidArgumentError(absl::StrCat(flag, ": '", value, "' is not true|false"));
      }
      return absl::OkStatus();
    };
  };
  auto string_flag = [](std::string* field) -> Setter {
    return [field](const std::string& flag, const std::string& value) {
      if (value.empty()) return absl::InvalidArgumentError(flag + ": must not be empty");
      *field = value;
      return absl::OkStatus();
    };
  };
  GrpcServerOptions& g = f.grpc;
  int64_t kv_cpu_mb = f.executor.kv_cpu_budget_bytes >> 20;
  int64_t queue_delay_us = f.engine.scheduler.max_queue_delay.count();
  int64_t prefill_cap = -1;  // unset: chosen by --device below
  int64_t step_latency_ms = 0;
  int64_t stall_ms = f.engine.scheduler.faults.stall_duration.count();
  FaultInjectionOptions& faults = f.engine.scheduler.faults;
  std::map<std::string, Setter> flags = {
      {"--model", string_flag(&f.model_dir)},
      {"--device", string_flag(&f.load.device)},
      {"--dtype", string_flag(&f.load.dtype)},
      {"--random-weights", bool_flag(&f.load.random_weights)},
      {"--host", string_flag(&g.host)},
      {"--port", int_flag(&g.port, 0, 65535)},
      {"--max-message-bytes", int_flag(&g.max_message_bytes, 1024, kIntMax)},
      {"--max-concurrent-streams", int_flag(&g.max_concurrent_streams, 1, kIntMax)},
      {"--keepalive-time-ms", int_flag(&g.keepalive_time_ms, 1000, kIntMax)},
      {"--keepalive-timeout-ms", int_flag(&g.keepalive_timeout_ms, 1000, kIntMax)},
      {"--keepalive-permit-without-calls", bool_flag(&g.keepalive_permit_without_calls)},
      {"--min-ping-interval-ms", int_flag(&g.min_ping_interval_ms, 0, kIntMax)},
      {"--max-new-tokens-cap", int_flag(&g.limits.max_new_tokens_cap, 1, kIntMax)},
      {"--default-max-new-tokens", int_flag(&g.limits.default_max_new_tokens, 1, kIntMax)},
      {"--max-prompt-tokens", int_flag(&g.limits.max_prompt_tokens, 0, kIntMax)},
      {"--default-deadline-ms", int_flag(&g.default_deadline_ms, 0, int64_t{1} << 40)},
      {"--log-requests", bool_flag(&g.log_requests)},
      {"--reflection", bool_flag(&g.reflection)},
      {"--max-requests-per-client", int_flag(&f.max_requests_per_client, 0, kIntMax)},
      {"--api-key-file", string_flag(&f.api_key_file)},
      {"--tls-cert", string_flag(&f.tls_cert)},
      {"--tls-key", string_flag(&f.tls_key)},
      {"--tls-client-ca", string_flag(&f.tls_client_ca)},
      {"--max-batch", int_flag(&f.engine.scheduler.max_batch_size, 1, 1 << 16)},
      {"--max-queue", int_flag(&f.engine.max_queued_requests, 1, kIntMax)},
      {"--max-batch-tokens", int_flag(&f.engine.scheduler.max_tokens_per_step, 1, kIntMax)},
      {"--max-prefill-tokens-with-decodes", int_flag(&prefill_cap, 0, kIntMax)},
      {"--max-queue-delay-us", int_flag(&queue_delay_us, 0, int64_t{1} << 40)},
      {"--debug-step-latency-ms", int_flag(&step_latency_ms, 0, 1 << 20)},
      {"--kv-block-size", int_flag(&f.executor.block_size, 1, 4096)},
      {"--kv-blocks", int_flag(&f.executor.num_blocks, 0, kIntMax)},
      {"--kv-memory-fraction",
       [&f](const std::string& flag, const std::string& value) {
         char* end = nullptr;
         const double v = std::strtod(value.c_str(), &end);
         if (value.empty() || *end != '\0' || !(v > 0.0 && v <= 1.0)) {
           return absl::InvalidArgumentError(flag + ": '" + value + "' is not a number in (0, 1]");
         }
         f.executor.kv_memory_fraction = v;
         return absl::OkStatus();
       }},
      {"--kv-cpu-budget-mb", int_flag(&kv_cpu_mb, 1, int64_t{1} << 30)},
      {"--warmup-timeout-ms", int_flag(&f.warmup_timeout_ms, 1, int64_t{1} << 40)},
      {"--drain-timeout-ms", int_flag(&f.drain_timeout_ms, 0, int64_t{1} << 40)},
      {"--shutdown-grace-ms", int_flag(&f.shutdown_grace_ms, 0, int64_t{1} << 40)},
      {"--metrics-port", int_flag(&f.metrics_port, 0, 65535)},
      {"--http-port", int_flag(&f.http_port, 0, 65535)},
      {"--http-threads", int_flag(&f.http_threads, 2, 4096)},
      {"--http-max-waiting", int_flag(&f.http_max_waiting, 0, 1 << 20)},
      {"--http-max-connections", int_flag(&f.http_max_connections, 1, 1 << 20)},
      {"--http-read-timeout-ms", int_flag(&f.http_read_timeout_ms, 100, int64_t{1} << 40)},
      {"--log-level", string_flag(&f.log_level)},
      {"--log-format", string_flag(&f.log_format)},
      {"--stall-timeout-ms", int_flag(&f.stall_timeout_ms, 10, int64_t{1} << 40)},
      {"--restart-backoff-ms", int_flag(&f.restart_backoff_ms, 0, int64_t{1} << 40)},
      {"--restart-backoff-max-ms", int_flag(&f.restart_backoff_max_ms, 0, int64_t{1} << 40)},
      {"--max-restarts", int_flag(&f.max_restarts, 1, kIntMax)},
      {"--restart-window-ms", int_flag(&f.restart_window_ms, 1, int64_t{1} << 40)},
      {"--canary-interval-ms", int_flag(&f.canary_interval_ms, 0, int64_t{1} << 40)},
      {"--debug-inject-oom-above", int_flag(&f.debug_inject_oom_above, 0, kIntMax)},
      {"--debug-throw-on-step", int_flag(&faults.throw_on_step, 0, int64_t{1} << 40)},
      {"--debug-stall-on-step", int_flag(&faults.stall_on_step, 0, int64_t{1} << 40)},
      {"--debug-stall-ms", int_flag(&stall_ms, 0, int64_t{1} << 40)},
      {"--debug-faults-persist", bool_flag(&f.debug_faults_persist)},
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      f.help = true;
      return f;
    }
    if (arg == "--supervise") {  // the one flag without a value
      f.supervise = true;
      continue;
    }
    std::string value;
    bool has_value = false;
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    auto it = flags.find(arg);
    if (it == flags.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag '", arg, "' (see --help)"));
    }
    if (!has_value) {
      if (i + 1 >= argc) return absl::InvalidArgumentError(arg + ": needs a value");
      value = argv[++i];
    }
    absl::Status s = it->second(arg, value);
    if (!s.ok()) return s;
  }
  f.executor.kv_cpu_budget_bytes = kv_cpu_mb << 20;
  f.engine.scheduler.max_queue_delay = std::chrono::microseconds(queue_delay_us);
  // Unset: a GPU caps the prefill of a step that also decodes at kGpuPrefillTokensWithDecodes (a
  // mixed step then takes at most ~1.5x a decode step at 64 streams on an H200, see
  // bench/results/gpu.md); the CPU, where prefill tokens cost as much as decode rows, has no cap.
  f.engine.scheduler.max_prefill_tokens_with_decodes =
      prefill_cap >= 0 ? prefill_cap : (f.load.device.rfind("cuda", 0) == 0 ? kGpuPrefillTokensWithDecodes : 0);
  f.engine.scheduler.faults.step_latency = std::chrono::milliseconds(step_latency_ms);
  // Unset: one client may hold a quarter of what the server admits (running plus queued), so
  // at least three others always find room, but never less than two batches, so a lone client (a
  // benchmark, a gateway without API keys) still fills every batch slot with the next batch
  // queued behind it (no idle step between batches).
  if (f.max_requests_per_client < 0) {
    const int64_t batch = f.engine.scheduler.max_batch_size;
    f.max_requests_per_client = std::max<int64_t>(2 * batch, (f.engine.max_queued_requests + batch) / 4);
  }
  faults.stall_duration = std::chrono::milliseconds(stall_ms);
  f.executor.inject_oom_above_sequences = f.debug_inject_oom_above;
  if (f.log_level != "debug" && f.log_level != "info" && f.log_level != "warn" &&
      f.log_level != "error") {
    return absl::InvalidArgumentError("--log-level: '" + f.log_level + "' is not debug|info|warn|error");
  }
  if (f.log_format != "json" && f.log_format != "text") {
    return absl::InvalidArgumentError("--log-format: '" + f.log_format + "' is not json|text");
  }
  if (f.engine.scheduler.max_tokens_per_step < f.engine.scheduler.max_batch_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-batch-tokens: ", f.engine.scheduler.max_tokens_per_step,
        " must be >= --max-batch ", f.engine.scheduler.max_batch_size));
  }
  if (f.model_dir.empty()) return absl::InvalidArgumentError("--model: required");
  if (g.limits.default_max_new_tokens > g.limits.max_new_tokens_cap) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--default-max-new-tokens: ", g.limits.default_max_new_tokens,
        " is above --max-new-tokens-cap ", g.limits.max_new_tokens_cap));
  }
  return f;
}

}  // namespace glmserve
