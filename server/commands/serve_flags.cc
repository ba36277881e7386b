#include "server/commands/serve_flags.h"

#include <sys/stat.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/checkpoint/model_config.h"
#include "server/commands/scheduling_flags.h"
#include "server/request/media_fetch.h"

namespace glmserve {
namespace {

using flags::FlagSet;

using flags::kIntMax;
using flags::kTimeMax;

// --max-message-bytes unset, for a model that takes images.
constexpr int kImageModelMaxMessageBytes = 16 << 20;

// Flags whose field in ServeFlags has another unit or type, or whose default depends on other
// flags: parsed here first, moved into ServeFlags by Resolve.
struct Staging {
  SchedulingFlags scheduling;  // the engine section's scheduling flags (shared with schedule_sim)
  int64_t kv_cpu_mb = 0;
  int64_t step_latency_ms = 0;
  int64_t stall_ms = 0;
  int64_t max_message_bytes = -1;  // --max-message-bytes; unset: by the model (Resolve)

  explicit Staging(ServeFlags& f)
      : scheduling(&f.engine.scheduler),
        kv_cpu_mb(f.executor.kv_cpu_budget_bytes >> 20),
        stall_ms(f.engine.scheduler.faults.stall_duration.count()) {}
};

constexpr char kDescription[] =
    "Loads a GLM checkpoint and serves glmserve.v1.Inference over gRPC, with grpc.health.v1 and\n"
    "server reflection. Logs 'serving on HOST:PORT' (event \"serving\") on stderr once the model is\n"
    "warm (health SERVING). SIGTERM/SIGINT/SIGHUP drain: health NOT_SERVING, new requests\n"
    "UNAVAILABLE, in-flight requests finish (up to --drain-timeout-ms), exit 0; a second SIGTERM or\n"
    "SIGINT exits at once (a repeated SIGHUP does not). Bad flags exit 2 before anything is bound or\n"
    "loaded.";

// The table of `glmserve serve`: --help is generated from it, and the defaults it shows are the
// values `f` holds when called (ServeFlags' own).
void Register(FlagSet& set, ServeFlags& f, Staging& s) {
  GrpcServerOptions& g = f.grpc;
  SchedulerOptions& sched = f.engine.scheduler;
  FaultInjectionOptions& faults = sched.faults;

  set.Section("model");
  set.Path("model", &f.model_dir, "checkpoint directory (required)").ValueName("DIR");
  set.DeviceFlag("device", &f.device, "where the model runs");
  set.DtypeFlag("dtype", &f.dtype, "compute dtype");
  set.Switch("random-weights", &f.load.random_weights, "benchmark: random weights of --model's config.json");

  set.Section("network (see proto/README.md for the keepalive choices)");
  set.String("host", &g.host, "0.0.0.0 or :: for every interface").ValueName("H").NotEmpty();
  set.Int("port", &g.port, 0, 65535, "gRPC port; 0 picks a free port").ValueName("P");
  set.Int("max-message-bytes", &s.max_message_bytes, 1024, kIntMax, "request and response size limit")
      .DefaultText(absl::StrCat(g.max_message_bytes, "; ", kImageModelMaxMessageBytes,
                                " for a model that takes images: a phone screenshot as base64 is 1-4 MB"));
  set.Int("max-concurrent-streams", &g.max_concurrent_streams, 1, kIntMax, "per HTTP/2 connection");
  set.Int("grpc-memory-mb", &g.transport_memory_mb, 0, int64_t{1} << 30,
          "memory gRPC's transport may hold for every connection together; beyond, it stops reading (0 = "
          "unbounded)");
  set.Int("keepalive-time-ms", &g.keepalive_time_ms, 1000, kIntMax, "ping a connection idle this long");
  set.Int("keepalive-timeout-ms", &g.keepalive_timeout_ms, 1000, kIntMax, "close when a ping is not acked within");
  set.Bool("keepalive-permit-without-calls", &g.keepalive_permit_without_calls, "allow client pings with no call");
  set.Int("min-ping-interval-ms", &g.min_ping_interval_ms, 0, kIntMax, "client pings more often get GOAWAY");

  set.Section("requests");
  set.Int("max-new-tokens-cap", &g.limits.max_new_tokens_cap, 1, kIntMax, "largest max_new_tokens accepted");
  set.Int("default-max-new-tokens", &g.limits.default_max_new_tokens, 1, kIntMax,
          "used when max_new_tokens (HTTP: max_tokens) is unset");
  set.Int("max-prompt-tokens", &g.limits.max_prompt_tokens, 0, kIntMax,
          "longest prompt (more than the model's max context - 1 is taken as that)")
      .DefaultText(absl::StrCat(g.limits.max_prompt_tokens, " = the model's max context - 1"));
  set.Int("default-deadline-ms", &g.default_deadline_ms, 0, kTimeMax, "for requests sent without a deadline; 0 = none");
  set.Bool("log-requests", &g.log_requests, "one stderr line per finished or refused request");
  set.Int("log-refused-per-second", &g.refused_log_lines_per_second, 0, kIntMax,
          "request_refused lines a second per status code and API; beyond, refusals are counted and "
          "the next line says how many were left out (refusals_not_logged); 0 = every refusal");
  set.Bool("reflection", &g.reflection, "gRPC server reflection (grpcurl list/describe)");
  const int64_t batch = sched.max_batch_size;
  set.Int("max-requests-per-client", &f.max_requests_per_client, 0, kIntMax,
          "queued plus running requests of one client (its API key, else its address); beyond: "
          "RESOURCE_EXHAUSTED / HTTP 429; 0 = no cap")
      .DefaultText(absl::StrCat("max(2 x --max-batch, (--max-queue + --max-batch) / 4) = ",
                                std::max<int64_t>(2 * batch, (f.engine.max_queued_requests + batch) / 4)));

  set.Section("images (vision models, e.g. GLM-4.1V; docs/operations.md#images)");
  MediaOptions& media = g.limits.media;
  set.Int("limit-images-per-prompt", &media.limit_images_per_prompt, 0, 1 << 16,
          "images in one request, all messages together; more: INVALID_ARGUMENT / HTTP 400; 0 = no images");
  set.Int("max-pixels", &media.max_pixels, 0, int64_t{1} << 40,
          "largest temporal_patch_size x height x width an image is resized to (larger ones are scaled "
          "down, never cropped); replaces preprocessor_config.json's size.longest_edge; a request may "
          "ask for less or up to this (mm_processor_kwargs.max_pixels / max_pixels); a source image above 16 x "
          "(this / temporal_patch_size) pixels is refused from its header")
      .DefaultText("0 = the checkpoint's size.longest_edge");
  set.Int("max-request-image-pixels", &media.max_request_image_pixels, 0, int64_t{1} << 40,
          "source pixels (width x height as sent) of one request's images together; the image that passes "
          "it: INVALID_ARGUMENT / HTTP 400 naming it, before anything is decoded")
      .DefaultText(
          "0 = --limit-images-per-prompt x (max_pixels / temporal_patch_size), at least one image's source "
          "limit: 58,800,000 for GLM-4.1V");
  set.Path("allowed-local-media-path", &media.allowed_local_media_path,
           "file:// image URLs are read from under this directory only (symlinks and '..' resolved)")
      .ValueName("DIR")
      .DefaultText("none = file:// refused");
  set.Bool("allow-media-fetch", &media.allow_fetch,
           "http(s) image URLs are fetched (no redirects) within --media-fetch-timeout-ms and "
           "--media-fetch-max-bytes, from --allowed-media-domains; off: refused (INVALID_ARGUMENT / HTTP "
           "400). The server reaches what clients name: list the hosts");
  set.Int("media-fetch-timeout-ms", &media.fetch.timeout_ms, 1, 600'000,
          "one image URL's whole fetch, connection included; slower: HTTP 400 naming the image");
  set.Int("media-fetch-max-bytes", &media.fetch.max_bytes, 1, int64_t{1} << 32,
          "largest fetched image; larger: HTTP 400 naming the image");
  set.StringList("allowed-media-domains", &media.fetch.allowed_domains,
                 "hosts image URLs may be fetched from (a name allows its subdomains too)")
      .ValueName("HOST,...")
      .DefaultText("any host");

  set.Section("security (server/README.md; health and /metrics stay open)");
  set.Path("api-key-file", &f.api_key_file,
           "API keys, one a line ('#' comments); also the environment variable GLMSERVE_API_KEY; "
           "requests need 'authorization: Bearer KEY' (gRPC metadata / HTTP header)")
      .DefaultText("no keys = open");
  set.Path("tls-cert", &f.tls_cert, "PEM certificate (chain): TLS on gRPC and HTTP, with --tls-key")
      .DefaultText("plaintext");
  set.Path("tls-key", &f.tls_key, "PEM private key of --tls-cert (default: none)");
  set.Path("tls-client-ca", &f.tls_client_ca,
           "PEM CA: clients must present a certificate it signed (mutual TLS; default: none, no client certificates)");

  set.Section("engine");
  s.scheduling.Register(set);
  set.Int("max-queue", &f.engine.max_queued_requests, 1, kIntMax,
          "accepted requests waiting beyond the batch's free slots; beyond: RESOURCE_EXHAUSTED");
  set.Int("kv-block-size", &f.executor.block_size, 1, 4096, "tokens per KV block");
  set.Int("kv-blocks", &f.executor.num_blocks, 0, kIntMax, "KV pool blocks")
      .DefaultText(absl::StrCat(f.executor.num_blocks, " = sized from memory"));
  set.Number("kv-memory-fraction", &f.executor.kv_memory_fraction, {0, 1, /*lo_open=*/true},
             "of free GPU memory for the KV pool");
  set.Int("kv-cpu-budget-mb", &s.kv_cpu_mb, 1, int64_t{1} << 30, "CPU KV pool size");

  set.Section("lifecycle");
  set.Int("warmup-timeout-ms", &f.warmup_timeout_ms, 1, kTimeMax, "the warm-up request must finish within");
  set.Int("drain-timeout-ms", &f.drain_timeout_ms, 0, kTimeMax, "on SIGTERM wait this long for in-flight requests");
  set.Int("shutdown-grace-ms", &f.shutdown_grace_ms, 0, kTimeMax, "then this long before open calls are cancelled");

  set.Section("observability (docs/operations.md)");
  set.Int("metrics-port", &f.metrics_port, 0, 65535, "Prometheus GET /metrics on --host:P; 0 = off").ValueName("P");
  set.Int("http-port", &f.http_port, 0, 65535,
          "OpenAI-compatible HTTP/JSON API on --host:P (/v1/chat/completions, /v1/completions, "
          "/v1/models, /health); 0 picks a free port and logs 'http serving on HOST:PORT' (event \"http_serving\")")
      .ValueName("P")
      .DefaultText("off");
  set.Int("http-threads", &f.http_threads, 2, 4096, "HTTP API requests answered at once (2 to 4096)");
  set.Int("http-max-waiting", &f.http_max_waiting, 0, 1 << 20,
          "HTTP requests waiting for one of those (in glmserve_queue_depth); beyond: 429 + Retry-After at once");
  set.Int("http-max-connections", &f.http_max_connections, 1, 1 << 20,
          "open HTTP connections (a thread each, idle ones included); beyond: 503 and closed");
  set.StringList("served-model-name", &f.served_model_names,
                 "model ids HTTP requests may name in `model` (the first is listed first by /v1/models); "
                 "another: 404 model_not_found")
      .ValueName("NAME,...")
      .DefaultText("the model directory's name; any id taken");
  set.Int("http-body-budget-mb", &f.http_body_budget_mb, 1, int64_t{1} << 20,
          "API request bodies held at once over all HTTP connections (arriving, waiting or being answered); "
          "a body that would pass it: 429 + Retry-After and closed (one alone always passes)");
  set.Int("http-read-timeout-ms", &f.http_read_timeout_ms, 100, kTimeMax,
          "a request's head and body must arrive within (slow clients get 408 and are closed; idle "
          "keep-alive closes after 5 s)");
  set.Choice("log-level", &f.log_level, {"debug", "info", "warn", "error"}, "the least severe log lines written");
  set.Choice("log-format", &f.log_format, {"json", "text"},
             "json: one object per line {time,level,request_id,event,msg,fields}");

  set.Section("self-healing (docs/operations.md)");
  set.Switch("supervise", &f.supervise,
             "run the server as a child process; restart it when it dies (backoff as below); "
             "SIGTERM/SIGINT/SIGHUP are forwarded for a drain");
  set.Int("stall-timeout-ms", &f.stall_timeout_ms, 10, kTimeMax,
          "a step longer than this is an engine fault (NOT_SERVING, rebuild)");
  set.Int("restart-backoff-ms", &f.restart_backoff_ms, 0, kTimeMax,
          "first engine rebuild / child restart delay, doubled per consecutive failure");
  set.Int("restart-backoff-max-ms", &f.restart_backoff_max_ms, 0, kTimeMax, "backoff cap");
  set.Int("max-restarts", &f.max_restarts, 1, kIntMax,
          "failures within --restart-window-ms before giving up (stay NOT_SERVING / supervisor exits)");
  set.Int("restart-window-ms", &f.restart_window_ms, 1, kTimeMax, "the window --max-restarts counts failures in");
  set.Int("canary-interval-ms", &f.canary_interval_ms, 0, kTimeMax,
          "while idle, a request of 2 prompt tokens and 1 new every N ms; failure = engine fault; 0 = off");

  set.Section("test hooks (off by default; faults hit the first engine only unless --debug-faults-persist)");
  set.Int("debug-step-latency-ms", &s.step_latency_ms, 0, 1 << 20, "sleep this long in every engine step");
  set.Int("debug-inject-oom-above", &f.debug_inject_oom_above, 0, kIntMax,
          "a step with more than N sequences runs out of memory in the executor (its real OOM path; "
          "the batch limit halves)");
  set.Int("debug-inject-oom-above-tokens", &faults.oom_above_tokens, 0, kIntMax,
          "a step that feeds more than N tokens fails as out of memory before the executor (the scheduler's "
          "OOM path: the batch limit halves; one sequence over N alone fails with FAILED_PRECONDITION)");
  set.Int("debug-throw-on-step", &faults.throw_on_step, 0, kTimeMax, "the K-th step attempt throws (an engine fault)")
      .ValueName("K");
  set.Int("debug-stall-on-step", &faults.stall_on_step, 0, kTimeMax, "the K-th step attempt hangs for --debug-stall-ms")
      .ValueName("K");
  set.Int("debug-stall-ms", &s.stall_ms, 0, kTimeMax, "how long --debug-stall-on-step hangs");
  set.Bool("debug-faults-persist", &f.debug_faults_persist, "faults also apply to rebuilt engines");
  set.Int("debug-load-delay-ms", &f.debug_load_delay_ms, 0, kTimeMax,
          "every model load (a supervised child's start, an engine rebuild) waits this long first, "
          "serving refusals meanwhile: a slow load");
}

// Moves the staged values into place and checks what concerns several flags.
absl::Status Resolve(const Staging& s, ServeFlags& f) {
  SchedulerOptions& sched = f.engine.scheduler;
  f.load.device = f.device.ToString();
  f.load.dtype = flags::DtypeName(f.dtype);
  f.executor.kv_cpu_budget_bytes = s.kv_cpu_mb << 20;
  if (absl::Status scheduling = s.scheduling.Resolve(f.device.is_cuda()); !scheduling.ok()) return scheduling;
  sched.faults.step_latency = std::chrono::milliseconds(s.step_latency_ms);
  sched.faults.stall_duration = std::chrono::milliseconds(s.stall_ms);
  // Unset: one client may hold a quarter of what the server admits (running plus queued), so
  // at least three others always find room, but never less than two batches, so a lone client (a
  // benchmark, a gateway without API keys) still fills every batch slot with the next batch
  // queued behind it (no idle step between batches).
  if (f.max_requests_per_client < 0) {
    const int64_t batch = sched.max_batch_size;
    f.max_requests_per_client = std::max<int64_t>(2 * batch, (f.engine.max_queued_requests + batch) / 4);
  }
  f.executor.inject_oom_above_sequences = f.debug_inject_oom_above;
  if (f.model_dir.empty()) return absl::InvalidArgumentError("--model: required");
  // Two listeners on one port: the second bind failed with gRPC's or the exporter's own words.
  const std::pair<const char*, int> ports[] = {
      {"--port", f.grpc.port}, {"--http-port", f.http_port}, {"--metrics-port", f.metrics_port}};
  for (size_t i = 0; i < std::size(ports); ++i) {
    for (size_t j = i + 1; j < std::size(ports); ++j) {
      if (ports[i].second > 0 && ports[i].second == ports[j].second) {
        return absl::InvalidArgumentError(absl::StrCat(ports[j].first, " ", ports[j].second, ": is ", ports[i].first,
                                                       " too; each listener needs a port of its own"));
      }
    }
  }
  // A phone agent sends a full-resolution screenshot a step, 1-4 MB as base64: a model that takes
  // images gets room for it unless the flag says otherwise. (An unreadable config.json is the
  // load's to report.)
  if (s.max_message_bytes >= 0) {
    f.grpc.max_message_bytes = static_cast<int>(s.max_message_bytes);
  } else if (absl::StatusOr<ModelConfig> config = LoadModelConfig(f.model_dir); config.ok() && config->vision) {
    f.grpc.max_message_bytes = kImageModelMaxMessageBytes;
  }
  if (f.grpc.limits.media.allow_fetch && !MediaFetchBuilt()) {
    return absl::InvalidArgumentError(
        "--allow-media-fetch: this glmserve was built without libcurl (-DGLMSERVE_MEDIA_FETCH=OFF); rebuild with it "
        "or send images inline");
  }
  // Canonical once, so every file:// URL is compared with the directory's real path.
  if (std::string& dir = f.grpc.limits.media.allowed_local_media_path; !dir.empty()) {
    char resolved[PATH_MAX];
    struct stat st;
    if (realpath(dir.c_str(), resolved) == nullptr || stat(resolved, &st) != 0 || !S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--allowed-local-media-path: '", dir, "' is not an existing directory"));
    }
    dir = resolved;
  }
  for (size_t i = 0; i < f.served_model_names.size(); ++i) {
    const std::string& name = f.served_model_names[i];
    if (name.empty()) {
      return absl::InvalidArgumentError(
          "--served-model-name: an empty id (two commas, or one at an end); expected NAME or NAME,NAME,...");
    }
    if (std::find(f.served_model_names.begin(), f.served_model_names.begin() + i, name) !=
        f.served_model_names.begin() + i) {
      return absl::InvalidArgumentError(absl::StrCat("--served-model-name: '", name, "' is given twice"));
    }
  }
  if (f.restart_backoff_ms > f.restart_backoff_max_ms) {
    return absl::InvalidArgumentError(absl::StrCat("--restart-backoff-ms: ", f.restart_backoff_ms,
                                                   " is above --restart-backoff-max-ms ", f.restart_backoff_max_ms,
                                                   " (the first rebuild's delay; later ones double up to the cap)"));
  }
  // The batching window is a wait with work queued and no step running: the watchdog takes as long
  // a wait for a stall (it rebuilt the engine and requeued the request, over and over), and the
  // server's warm-up request waits it too (the server never started).
  const int64_t window_us = f.engine.scheduler.max_queue_delay.count();
  for (const auto& [flag, ms] : {std::pair<const char*, int64_t>{"--stall-timeout-ms", f.stall_timeout_ms},
                                 std::pair<const char*, int64_t>{"--warmup-timeout-ms", f.warmup_timeout_ms}}) {
    if (window_us >= ms * 1000 / 2) {
      return absl::InvalidArgumentError(absl::StrCat("--max-queue-delay-us: ", window_us, " must be under half of ",
                                                     flag, " (", ms, " ms): the engine waits it out with work queued",
                                                     " and no step running"));
    }
  }
  if (f.grpc.limits.default_max_new_tokens > f.grpc.limits.max_new_tokens_cap) {
    return absl::InvalidArgumentError(absl::StrCat("--default-max-new-tokens: ", f.grpc.limits.default_max_new_tokens,
                                                   " is above --max-new-tokens-cap ",
                                                   f.grpc.limits.max_new_tokens_cap));
  }
  return absl::OkStatus();
}

}  // namespace

std::string ServeUsage() {
  ServeFlags f;
  Staging s(f);
  FlagSet set("glmserve serve", "--model DIR [flags]", kDescription);
  Register(set, f, s);
  return set.Usage();
}

absl::StatusOr<ServeFlags> ParseServeFlags(int argc, char** argv) {
  ServeFlags f;
  Staging s(f);
  FlagSet set("glmserve serve", "--model DIR [flags]", kDescription);
  Register(set, f, s);
  if (absl::Status parsed = set.Parse(argc, argv); !parsed.ok()) return parsed;
  if (set.help_requested()) {
    f.help = true;
    return f;
  }
  if (absl::Status resolved = Resolve(s, f); !resolved.ok()) return resolved;
  return f;
}

}  // namespace glmserve
