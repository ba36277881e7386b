// `glmserve serve`: load, warm up, serve over gRPC, drain on SIGTERM/SIGINT/SIGHUP.
#include "server/commands/serve_command.h"

#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/engine.h"
#include "runtime/model_runner.h"
#include "runtime/tokenizer/tokenizer.h"
#include "server/commands/cli.h"
#include "server/commands/serve_engine.h"
#include "server/commands/serve_flags.h"
#include "server/commands/supervisor.h"
#include "server/frontend/grpc_service.h"
#include "server/frontend/http_server.h"
#include "server/ops/logging.h"
#include "server/ops/metrics.h"
#include "server/ops/port_probe.h"
#include "server/ops/watchdog.h"
#include "server/request/auth.h"
#include "server/request/byte_budget.h"
#include "server/request/client_quota.h"
#include "server/request/media.h"

#ifndef GLMSERVE_VERSION
#define GLMSERVE_VERSION "unknown"
#endif

namespace glmserve {
namespace {

// "--port P: cannot listen on HOST:P: Address already in use": the flag and port first, then
// the listener's message and, when a bind of our own can tell, the reason.
std::string ListenFailure(const std::string& flag, int port, const std::string& host, std::string message) {
  const std::string prefix = absl::StrCat(flag, " ", port, ": ");
  if (message.rfind(flag, 0) != 0) message = absl::StrCat(prefix, message);
  if (const std::string why = PortBindProblem(host, port); !why.empty()) absl::StrAppend(&message, ": ", why);
  return message;
}

// Signals are blocked in every thread and taken by one waiter thread (sigwait), so nothing
// async-signal-unsafe happens in a handler.
class SignalWaiter {
 public:
  void Start(sigset_t set) {
    std::thread([this, set] {
      for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) continue;
        std::unique_lock<std::mutex> lock(mu_);
        // RunServe has returned: the process is exiting and its logger may be gone already.
        if (exiting_) std::_Exit(kExitFailure);
        // A hang-up comes twice when a terminal closes (the shell's, then the kernel's), and again
        // from a supervisor forwarding it: a repeat is no request to exit at once.
        if (sig == SIGHUP && signals_ > 0) {
          LogLine("signal 1 (hang-up): already draining");
          continue;
        }
        // One request to stop often arrives twice: Ctrl-C or systemd's control-group kill reaches
        // both a supervisor and its child, which then also gets the supervisor's forward, and GNU
        // timeout signals its command and then its process group. The same signal within
        // kRepeatWindow of the first is that copy, not an operator asking to exit at once.
        const auto now = std::chrono::steady_clock::now();
        if (signals_ > 0 && sig == first_signal_ && now - first_signal_at_ < kRepeatWindow) {
          LogLine(absl::StrCat("signal ", sig, ": again within 1 s, taken as the same request (already draining)"));
          continue;
        }
        if (signals_ > 0 || !ready_) {
          LogEvent(ready_ ? LogLevel::kWarn : LogLevel::kInfo, "log", "",
                   absl::StrCat("signal ", sig, ": ", ready_ ? "second signal, exiting now" : "exiting before ready"));
          std::_Exit(ready_ ? kExitFailure : kExitOk);
        }
        ++signals_;
        first_signal_ = sig;
        first_signal_at_ = now;
        LogLine(absl::StrCat("signal ", sig, ": draining (send again after 1 s to exit at once)"));
        cv_.notify_all();
      }
    }).detach();
  }
  void SetReady() {
    std::lock_guard<std::mutex> lock(mu_);
    ready_ = true;
  }
  // Drains and exits with `exit_code` as a signal would, unless a signal came first.
  void Stop(int exit_code) {
    std::lock_guard<std::mutex> lock(mu_);
    if (signals_ > 0) return;
    ++signals_;
    exit_code_ = exit_code;
    cv_.notify_all();
  }
  int exit_code() {
    std::lock_guard<std::mutex> lock(mu_);
    return exit_code_;
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return signals_ > 0; });
  }
  // From here on a signal exits (1) without a word: after RunServe returns, static destructors
  // tear down the logger that the waiter thread would write through.
  void SetExiting() {
    std::lock_guard<std::mutex> lock(mu_);
    exiting_ = true;
  }

 private:
  static constexpr std::chrono::seconds kRepeatWindow{1};

  std::mutex mu_;
  std::condition_variable cv_;
  int signals_ = 0;
  int exit_code_ = kExitOk;                                // what RunServe returns once drained (Stop's)
  int first_signal_ = 0;                                   // the signal that started the drain
  std::chrono::steady_clock::time_point first_signal_at_;  // when it came
  bool ready_ = false;
  bool exiting_ = false;
};

}  // namespace

// The --log-format asked for, read from the raw arguments: when they do not parse, the error still
// goes out in it.
std::string LogFormatOf(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--log-format=text" || (arg == "--log-format" && i + 1 < argc && std::string(argv[i + 1]) == "text")) {
      return "text";
    }
  }
  return "json";
}

int RunServe(int argc, char** argv) {
  absl::StatusOr<ServeFlags> parsed = ParseServeFlags(argc, argv);
  if (!parsed.ok()) {
    // One error line like every other that stops the server (a log pipeline parses stderr as JSON
    // lines), not the usage.
    ConfigureLogging("info", LogFormatOf(argc, argv)).IgnoreError();
    const std::string message(parsed.status().message());
    LogEvent(
        LogLevel::kError, "flags_invalid", "",
        absl::StrCat(message, absl::StrContains(message, "--help") ? "" : " (glmserve serve --help lists the flags)"));
    return kExitBadInput;
  }
  ServeFlags flags = std::move(*parsed);
  if (flags.help) {
    std::fputs(ServeUsage().c_str(), stdout);
    return kExitOk;
  }
  flags.grpc.build_version = GLMSERVE_VERSION;
  absl::Status logging = ConfigureLogging(flags.log_level, flags.log_format);
  if (!logging.ok()) {
    std::fprintf(stderr, "glmserve serve: %s\n", std::string(logging.message()).c_str());
    return kExitBadInput;
  }
  // API keys and TLS files are checked before any port is bound (and by the supervisor too):
  // a bad one exits 2 naming the flag. Keys never reach a log line.
  {
    const char* env_key = std::getenv("GLMSERVE_API_KEY");
    absl::StatusOr<std::shared_ptr<const ApiKeys>> keys = ApiKeys::Load(flags.api_key_file, env_key ? env_key : "");
    absl::StatusOr<std::shared_ptr<const TlsConfig>> tls =
        keys.ok() ? LoadTls(flags.tls_cert, flags.tls_key, flags.tls_client_ca) : keys.status();
    if (!tls.ok()) {
      LogEvent(LogLevel::kError, "config_invalid", "", std::string(tls.status().message()));
      return kExitBadInput;
    }
    flags.grpc.api_keys = *keys;
    flags.grpc.tls = *tls;
    if (flags.max_requests_per_client > 0) {
      flags.grpc.client_quota = std::make_shared<ClientQuota>(flags.max_requests_per_client);
    }
  }
  // A model directory that is not there is the flag's error, before any port is bound (it surfaced
  // as "no tokenizer", then a load failure naming no flag, after the gRPC port was listening).
  if (std::error_code ec; !std::filesystem::is_directory(flags.model_dir, ec)) {
    std::error_code exists_error;
    LogEvent(LogLevel::kError, "flags_invalid", "",
             absl::StrCat(
                 "--model ", flags.model_dir,
                 std::filesystem::exists(flags.model_dir, exists_error) ? ": not a directory" : ": no such directory",
                 " (expected a checkpoint directory: config.json, the weights, the tokenizer)"),
             {{"model", flags.model_dir}});
    return kExitBadInput;
  }
  if (flags.supervise) return RunSupervisor(argc, argv, flags);
  // Prompt text tokenized at once, both front ends together: ~20x in transient memory at worst
  // (one pre-tokenizer run), so ~2.5 GiB; far more text than the cores tokenize in a moment.
  flags.grpc.tokenize_budget = std::make_shared<ByteBudget>(int64_t{128} << 20);
  LogEvent(LogLevel::kInfo, "security", "",
           absl::StrCat("authentication ", flags.grpc.api_keys ? "on" : "off (no --api-key-file / GLMSERVE_API_KEY)",
                        "; TLS ", flags.grpc.tls ? (flags.grpc.tls->mutual() ? "on (mutual)" : "on") : "off",
                        "; per-client cap ", flags.max_requests_per_client),
           {{"api_keys", flags.grpc.api_keys ? flags.grpc.api_keys->size() : 0},
            {"tls", flags.grpc.tls != nullptr},
            {"mutual_tls", flags.grpc.tls != nullptr && flags.grpc.tls->mutual()},
            {"max_requests_per_client", flags.max_requests_per_client}});

  // Before any thread exists, so every thread inherits the mask.
  const sigset_t set = DrainSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Leaked on purpose: the waiter thread outlives RunServe.
  SignalWaiter& signals = *new SignalWaiter();
  signals.Start(set);
  struct MarkExiting {
    SignalWaiter& signals;
    ~MarkExiting() { signals.SetExiting(); }
  } mark_exiting{signals};  // on every return below

  absl::StatusOr<std::unique_ptr<ServerMetrics>> metrics =
      ServerMetrics::Create(flags.grpc.host, flags.metrics_port, GLMSERVE_VERSION);
  if (!metrics.ok()) {
    // "--metrics-port P: cannot bind HOST:P: <errno text> (...)"; exit 2 (a configuration error:
    // the supervisor does not restart it) before the model loads.
    LogEvent(LogLevel::kError, "metrics_bind_failed", "", std::string(metrics.status().message()),
             {{"flag", "--metrics-port"}, {"port", flags.metrics_port}, {"host", flags.grpc.host}});
    return kExitBadInput;
  }
  std::shared_ptr<ServerMetrics> metrics_sink = std::move(*metrics);
  flags.grpc.observer = metrics_sink;
  if (flags.metrics_port > 0) {
    const std::string& host = flags.grpc.host;
    const std::string url_host =
        host.find(':') != std::string::npos && host.front() != '[' ? absl::StrCat("[", host, "]") : host;
    if (metrics_sink->fallback()) {
      LogEvent(
          LogLevel::kWarn, "metrics_listen_fallback", "",
          absl::StrCat("--metrics-port ", flags.metrics_port, ": ", host,
                       " could not be bound (no IPv6 here?); listening on '", metrics_sink->listen_spec(), "' instead"),
          {{"port", metrics_sink->port()}, {"listen", metrics_sink->listen_spec()}});
    }
    LogEvent(LogLevel::kInfo, "metrics_listening", "",
             metrics_sink->fallback()
                 ? absl::StrCat("metrics on http://", metrics_sink->listen_spec(), "/metrics")
                 : absl::StrCat("metrics on http://", url_host, ":", metrics_sink->port(), "/metrics"),
             {{"port", metrics_sink->port()}, {"listen", metrics_sink->listen_spec()}});
  }

  absl::StatusOr<std::unique_ptr<GrpcServer>> server = GrpcServer::Start(flags.grpc);
  if (!server.ok()) {
    // A port in use (gRPC refuses SO_REUSEPORT here, so a second server cannot share it): exit 2.
    LogEvent(LogLevel::kError, "grpc_listen_failed", "",
             ListenFailure("--port", flags.grpc.port, flags.grpc.host, std::string(server.status().message())),
             {{"flag", "--port"}, {"port", flags.grpc.port}, {"host", flags.grpc.host}});
    return kExitBadInput;
  }
  LogLine(absl::StrCat("listening on ", (*server)->address(), " (health NOT_SERVING until the model is warm)"));
  // The front ends' view of the checkpoint (HTTP's sampling defaults, the vision settings), read
  // once; a config that does not load is reported by the engine's load below.
  const absl::StatusOr<ModelConfig> front_config = LoadModelConfig(flags.model_dir);
  // The HTTP/JSON front end (off without --http-port): same engine, limits, metrics and logs.
  std::unique_ptr<HttpServer> http;
  if (flags.http_port >= 0) {
    HttpServerOptions http_options;
    http_options.host = flags.grpc.host;
    http_options.port = flags.http_port;
    http_options.threads = flags.http_threads;
    http_options.max_waiting = flags.http_max_waiting;
    http_options.max_connections = flags.http_max_connections;
    http_options.read_timeout_ms = flags.http_read_timeout_ms;
    http_options.max_body_bytes = flags.grpc.max_message_bytes;
    http_options.default_deadline_ms = flags.grpc.default_deadline_ms;
    http_options.limits = flags.grpc.limits;
    http_options.log_requests = flags.grpc.log_requests;
    http_options.refused_log_lines_per_second = flags.grpc.refused_log_lines_per_second;
    http_options.observer = metrics_sink;
    http_options.api_keys = flags.grpc.api_keys;
    http_options.tls = flags.grpc.tls;
    http_options.client_quota = flags.grpc.client_quota;  // one count per client across both APIs
    http_options.tokenize_budget = flags.grpc.tokenize_budget;
    http_options.body_budget = std::make_shared<ByteBudget>(flags.http_body_budget_mb << 20);
    http_options.served_model_names = flags.served_model_names;
    // A config that does not load leaves OpenAI's defaults.
    if (const absl::StatusOr<ModelConfig>& config = front_config; config.ok()) {
      SamplingDefaults& d = http_options.sampling_defaults;
      if (config->default_temperature) d.temperature = static_cast<float>(*config->default_temperature);
      if (config->default_top_p) d.top_p = static_cast<float>(*config->default_top_p);
      if (config->default_top_k) d.top_k = *config->default_top_k;
      for (const std::string& ignored : config->ignored_generation_values) {
        LogEvent(LogLevel::kWarn, "generation_config_ignored", "", absl::StrCat("generation_config.json ", ignored),
                 {{"model", flags.model_dir}});
      }
      LogEvent(LogLevel::kInfo, "http_sampling_defaults", "",
               absl::StrCat("HTTP requests without them sample at temperature ", d.temperature, ", top_p ",
                            d.top_p > 0 ? d.top_p : 1.0f, ", top_k ", d.top_k, " (",
                            config->default_temperature || config->default_top_p || config->default_top_k
                                ? "generation_config.json over OpenAI's defaults"
                                : "OpenAI's defaults",
                            ")"));
    }
    std::string name = flags.model_dir;
    while (name.size() > 1 && name.back() == '/') name.pop_back();
    if (const size_t slash = name.rfind('/'); slash != std::string::npos) name = name.substr(slash + 1);
    if (!name.empty()) http_options.model_name = name;
    absl::StatusOr<std::unique_ptr<HttpServer>> started = HttpServer::Start(http_options);
    if (!started.ok()) {
      LogEvent(LogLevel::kError, "http_listen_failed", "",
               ListenFailure("--http-port", flags.http_port, flags.grpc.host, std::string(started.status().message())),
               {{"flag", "--http-port"}, {"port", flags.http_port}, {"host", flags.grpc.host}});
      (*server)->Shutdown(std::chrono::milliseconds(0));
      return kExitBadInput;
    }
    http = std::move(*started);
  }

  // Every engine (the first and each rebuild) loads the checkpoint afresh. The first one's
  // failure is the configuration's (exit 2: a restart would fail alike) when the checkpoint does
  // not load, or when the flags ask for what cannot be (a KV cache that holds no block or does not
  // fit in memory, a batch the executor refuses).
  bool load_failed = false;
  bool config_failed = false;
  auto configuration = [](const absl::Status& s) {
    return absl::IsInvalidArgument(s) || absl::IsFailedPrecondition(s) || absl::IsOutOfRange(s) ||
           absl::IsResourceExhausted(s);
  };
  ModelInfo info;
  EngineFactory factory =
      [&flags, &load_failed, &config_failed, &configuration, &info, metrics_sink](
          int generation,
          std::function<void(int32_t, const absl::Status&)> heartbeat) -> absl::StatusOr<EngineInstance> {
    if (flags.debug_load_delay_ms > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(flags.debug_load_delay_ms));
    }
    absl::StatusOr<std::unique_ptr<ModelRunner>> runner = ModelRunner::Load(flags.model_dir, flags.load);
    if (!runner.ok()) {
      load_failed = generation == 0;
      return absl::Status(runner.status().code(),
                          absl::StrCat("cannot load ", flags.model_dir, ":\n", runner.status().message()));
    }
    info = (*runner)->info();
    ExecutorOptions executor_options = flags.executor;
    // Test faults hit the first engine only (the executor's injected OOM too: it lives here).
    const bool faults_apply = generation == 0 || flags.debug_faults_persist;
    if (!faults_apply) executor_options.inject_oom_above_sequences = 0;
    executor_options.log = [](const std::string& line) { LogEvent(LogLevel::kInfo, "executor", "", line); };
    // The decode graphs of every batch the scheduler may run, before the first request.
    executor_options.capture_decode_batch = flags.engine.scheduler.max_batch_size;
    absl::StatusOr<std::unique_ptr<StepExecutor>> executor = (*runner)->CreateExecutor(executor_options);
    if (!executor.ok()) {
      config_failed = generation == 0 && configuration(executor.status());
      return absl::Status(executor.status().code(),
                          absl::StrCat("cannot create the executor: ", executor.status().message()));
    }
    ServeFlags engine_flags = flags;
    if (!faults_apply) {
      const auto latency = engine_flags.engine.scheduler.faults.step_latency;
      engine_flags.engine.scheduler.faults = FaultInjectionOptions();
      engine_flags.engine.scheduler.faults.step_latency = latency;
    }
    // The scheduler logs only what is off the normal path (batch-limit changes after out-of-memory
    // steps, a request failing alone, a callback that threw): warn, so a filter for level != info
    // shows them.
    engine_flags.engine.scheduler.log = [](const std::string& line) { LogEvent(LogLevel::kWarn, "engine", "", line); };
    engine_flags.engine.on_step_end = [heartbeat, metrics_sink](int32_t n, const absl::Status& s) {
      heartbeat(n, s);
      metrics_sink->OnStep(n, s);
    };
    absl::StatusOr<std::unique_ptr<InferenceEngine>> engine =
        CreateServeEngine(engine_flags, std::move(*executor), info);
    if (!engine.ok()) {
      config_failed = generation == 0 && configuration(engine.status());
      return absl::Status(engine.status().code(),
                          absl::StrCat("cannot create the engine: ", engine.status().message()));
    }
    EngineInstance instance;
    instance.keepalive = std::shared_ptr<ModelRunner>(std::move(*runner));
    instance.engine = std::move(*engine);
    return instance;
  };
  WatchdogOptions watchdog;
  watchdog.stall_timeout = std::chrono::milliseconds(flags.stall_timeout_ms);
  watchdog.backoff_initial = std::chrono::milliseconds(flags.restart_backoff_ms);
  watchdog.backoff_max = std::chrono::milliseconds(flags.restart_backoff_max_ms);
  watchdog.max_failures = flags.max_restarts;
  watchdog.window = std::chrono::milliseconds(flags.restart_window_ms);
  watchdog.canary_interval = std::chrono::milliseconds(flags.canary_interval_ms);
  watchdog.warmup_timeout = std::chrono::milliseconds(flags.warmup_timeout_ms);
  // A step still running after the drain gets the grace gRPC's calls get, then is left behind.
  watchdog.shutdown_timeout = std::chrono::milliseconds(flags.shutdown_grace_ms);
  GrpcServer* grpc_server = server->get();
  SelfHealingEngine::Hooks hooks;
  HttpServer* http_server = http.get();
  hooks.on_health = [grpc_server, http_server, metrics_sink](bool serving) {
    grpc_server->SetServing(serving);
    if (http_server != nullptr) http_server->SetServing(serving);
    metrics_sink->SetServing(serving);
  };
  hooks.on_restart = [metrics_sink] { metrics_sink->OnEngineRestart(); };
  // Under --supervise a crash loop is the supervisor's to heal: a fresh process (a new CUDA context,
  // memory returned) may serve where in-process rebuilds kept failing. Unsupervised, the server
  // stays up NOT_SERVING and says why (an orchestrator's liveness probe restarts it).
  if (std::getenv(kSupervisedEnv) != nullptr) {
    hooks.on_crash_loop = [&signals](const std::string&) {
      LogEvent(LogLevel::kError, "log", "",
               "engine crash loop under --supervise: exiting 1 so that the supervisor starts a fresh process");
      signals.Stop(kExitFailure);
    };
  }

  // The tokenizer (prompt, messages, stop strings, response text) comes from the model directory.
  if (auto tok = tokenizer::Tokenizer::FromDirectory(flags.model_dir); tok.ok()) {
    LogLine(absl::StrCat("tokenizer: ", (*tok)->format(), ", ", (*tok)->vocab_size(),
                         " ids, chat template: ", (*tok)->chat_template_source()));
    // A chat template neither built-in renderer nor the Jinja engine runs (it fails a plain user
    // turn, or is a vision model's other template): what messages get differs from the checkpoint's
    // own template, which its owner should hear.
    if ((*tok)->chat_template_source().find("not recognized") != std::string::npos) {
      LogEvent(LogLevel::kWarn, "chat_template_unrecognized", "",
               absl::StrCat("the checkpoint's chat_template is not run; messages are rendered in ",
                            "the model family's built-in format instead (", (*tok)->chat_template_source(), ")"),
               {{"model", flags.model_dir}});
    }
    std::shared_ptr<const tokenizer::Tokenizer> shared(std::move(*tok));
    (*server)->SetTokenizer(shared);
    if (http != nullptr) http->SetTokenizer(shared);
  } else if (absl::IsNotFound(tok.status())) {
    LogLine(absl::StrCat("no tokenizer (", tok.status().message(),
                         "): prompt, messages and stop are refused; send input_ids"));
  } else {
    // Tokenizer files that do not load are a broken checkpoint, not an ids-only one: serving
    // without them would refuse every prompt while health said SERVING.
    LogEvent(LogLevel::kError, "config_invalid", "", std::string(tok.status().message()), {{"model", flags.model_dir}});
    (*server)->Shutdown(std::chrono::milliseconds(0));
    return kExitBadInput;
  }
  // A vision model (config.json's vision_config) takes images: its decoder and preprocessor are
  // built once here (preprocessor_config.json, --max-pixels) and shared by both front ends, which
  // decode and preprocess on their own threads. A config that does not load is reported by the
  // engine's load below.
  if (const absl::StatusOr<ModelConfig>& config = front_config; config.ok() && config->vision) {
    const MediaOptions& media = flags.grpc.limits.media;
    std::string source;
    absl::StatusOr<std::shared_ptr<const ImageSupport>> images =
        ImageSupport::ForModel(flags.model_dir, *config->vision, media, &source);
    if (!images.ok()) {
      LogEvent(LogLevel::kError, "config_invalid", "", std::string(images.status().message()),
               {{"model", flags.model_dir}});
      (*server)->Shutdown(std::chrono::milliseconds(0));
      return kExitBadInput;
    }
    LogEvent(LogLevel::kInfo, "images", "",
             absl::StrCat("images on: at most ", media.limit_images_per_prompt, " per request, max_pixels ",
                          (*images)->max_pixels(), " (", media.max_pixels > 0 ? "--max-pixels" : source, "), file:// ",
                          media.allowed_local_media_path.empty() ? "off" : media.allowed_local_media_path,
                          media.allow_fetch
                              ? absl::StrCat(", http(s) URLs fetched from ",
                                             media.fetch.allowed_domains.empty()
                                                 ? std::string("any host")
                                                 : absl::StrJoin(media.fetch.allowed_domains, ","),
                                             " (", media.fetch.timeout_ms, " ms, ", media.fetch.max_bytes, " bytes)")
                              : std::string(", http(s) URLs not fetched"),
                          ", request bodies up to ", flags.grpc.max_message_bytes, " bytes (--max-message-bytes)"),
             {{"limit_images_per_prompt", media.limit_images_per_prompt},
              {"max_message_bytes", flags.grpc.max_message_bytes},
              {"max_pixels", (*images)->max_pixels()},
              {"allowed_local_media_path", media.allowed_local_media_path},
              {"allow_media_fetch", media.allow_fetch}});
    (*server)->SetImageSupport(*images);
    if (http != nullptr) http->SetImageSupport(*images);
  }
  const auto load_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<SelfHealingEngine>> engine = SelfHealingEngine::Create(watchdog, factory, hooks);
  if (!engine.ok()) {
    // Fatal: at level error, so it shows at every --log-level.
    LogEvent(LogLevel::kError, load_failed ? "model_load_failed" : "engine_start_failed", "",
             std::string(engine.status().message()), {{"model", flags.model_dir}});
    (*server)->Shutdown(std::chrono::milliseconds(0));
    return load_failed || config_failed ? kExitBadInput : kExitFailure;
  }
  (*server)->SetEngine(engine->get(), flags.engine.scheduler.max_batch_size);
  if (http != nullptr) http->SetEngine(engine->get());
  // glmserve_queue_depth: the engine's waiting requests plus HTTP requests waiting for a serving slot.
  metrics_sink->StartPolling(
      [e = engine->get(), h = http.get()] {
        EngineStats stats = e->stats();
        if (h != nullptr) stats.waiting += h->waiting_requests();
        return stats;
      },
      std::chrono::milliseconds(250));
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  LogLine(absl::StrCat("model ", info.architecture, " from ", flags.model_dir, " (", info.parameter_count,
                       " parameters, ", info.device, ", ", info.compute_dtype, ") ready in ",
                       static_cast<int>(load_s * 1000), " ms"));
  signals.SetReady();
  (*server)->SetServing(true);
  metrics_sink->SetServing(true);
  LogLifecycle("serving", absl::StrCat("serving on ", (*server)->address()), {{"address", (*server)->address()}});
  if (http != nullptr) {
    http->SetServing(true);
    LogLifecycle("http_serving", absl::StrCat("http serving on ", http->address()), {{"address", http->address()}});
  }

  signals.Wait();
  const auto drain_deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(flags.drain_timeout_ms);
  (*server)->StartDrain();
  if (http != nullptr) http->StartDrain();
  metrics_sink->SetServing(false);
  const bool engine_idle = (*engine)->WaitIdle(std::chrono::milliseconds(flags.drain_timeout_ms));
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(drain_deadline - std::chrono::steady_clock::now());
  bool calls_idle = (*server)->WaitIdle(std::max(left, std::chrono::milliseconds(0)));
  if (http != nullptr) {
    const auto http_left =
        std::chrono::duration_cast<std::chrono::milliseconds>(drain_deadline - std::chrono::steady_clock::now());
    calls_idle = http->WaitIdle(std::max(http_left, std::chrono::milliseconds(0))) && calls_idle;
  }
  if (!engine_idle || !calls_idle) {
    const int open_calls = (*server)->active_calls() + (http != nullptr ? http->active_calls() : 0);
    LogEvent(LogLevel::kWarn, "log", "", absl::StrCat("drain timeout: ", open_calls, " calls still open; cancelling"));
  }
  (*engine)->Shutdown();
  metrics_sink->StopPolling();  // before the engine it polls is destroyed
  (*server)->AbortAll();
  if (http != nullptr) http->Shutdown();  // calls still waiting answer 503
  (*server)->Shutdown(std::chrono::milliseconds(flags.shutdown_grace_ms));
  LogLine("stopped");
  if ((*engine)->HasStuckEngine()) {
    // An engine torn down after a stall is still inside its step, or a rebuild still loads the
    // model: their threads cannot be joined in time.
    LogLine((*engine)->RebuildAbandoned()
                ? "an engine rebuild is still loading or warming up; exiting without waiting for it"
                : "an engine torn down after a stall is still running; exiting without joining it");
    std::fflush(stderr);
    std::_Exit(signals.exit_code());
  }
  return signals.exit_code();
}

}  // namespace glmserve
