#include "server/commands/doctor.h"

#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "flags/flags.h"
#include "runtime/inspect.h"
#include "runtime/json_util.h"
#include "server/commands/cli.h"
#include "server/ops/port_probe.h"

namespace glmserve {
namespace {

namespace fs = std::filesystem;

// The PyPI torch 2.11 wheel that scripts/install-deps.sh pins is built against CUDA 13.0, which
// needs an NVIDIA driver >= 580; the fused kernels (kernels/) are built for sm_90a (compute capability 9.0) only.
constexpr int kCudaRuntimeMajor = 13;
constexpr int kMinDriverMajor = 580;
constexpr char kKernelArch[] = "9.0";
constexpr int kRecommendedCores = 4;

struct Check {
  std::string name;
  std::string status;  // OK | WARN | FAIL
  std::string detail;
  std::string fix;  // empty when OK
};

std::string Run(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  std::string out;
  char buf[1024];
  while (fgets(buf, sizeof buf, p) != nullptr) out += buf;
  pclose(p);
  return out;
}

int64_t MemInfoKb(const std::string& key) {
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::atoll(line.c_str() + key.size() + 1);
  }
  return -1;
}

std::string GiB(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
  return buf;
}

struct Gpu {
  std::string name, driver, compute_cap;
  double total_mib = 0, free_mib = 0;
};

std::vector<Gpu> QueryGpus() {
  std::vector<Gpu> gpus;
  const std::string out =
      Run("nvidia-smi --query-gpu=name,driver_version,memory.total,memory.free,compute_cap "
          "--format=csv,noheader,nounits 2>/dev/null");
  for (absl::string_view line : absl::StrSplit(out, '\n', absl::SkipEmpty())) {
    std::vector<std::string> f = absl::StrSplit(line, ", ");
    if (f.size() < 5) continue;
    Gpu g;
    g.name = f[0];
    g.driver = f[1];
    g.total_mib = std::atof(f[2].c_str());
    g.free_mib = std::atof(f[3].c_str());
    g.compute_cap = f[4];
    gpus.push_back(g);
  }
  return gpus;
}

}  // namespace

int RunDoctor(int argc, char** argv) {
  std::string model, host = "127.0.0.1";
  bool json = false;
  int port = 50051, metrics_port = 0, http_port = 0;
  // Unset: the GPU checks WARN (not FAIL) when there is no GPU, as serve would run on the CPU.
  flags::Device device;
  flags::FlagSet set("glmserve doctor",
                     "[--model DIR] [--json] [--host H] [--port P] [--metrics-port P] [--http-port P] [--device D]",
                     "Checks the machine (CPU, RAM, GPU, driver vs LibTorch's CUDA runtime, compute capability,\n"
                     "cuDNN, GPU memory vs model + KV pool), the model directory (strict validation, permissions,\n"
                     "mount) and the ports. Each check: OK/WARN/FAIL with the fix. Exit 1 when any check FAILs,\n"
                     "2 on bad flags.");
  set.Path("model", &model, "checkpoint directory to validate (none: no model checks)").ValueName("DIR");
  set.Switch("json", &json, "print {\"ok\", \"checks\": [{name, status, detail, fix}]} instead of text");
  set.String("host", &host, "address the ports are checked on").ValueName("H").NotEmpty();
  set.Int("port", &port, 0, 65535, "gRPC port serve will bind; 0 = not checked").ValueName("P");
  set.Int("metrics-port", &metrics_port, 0, 65535, "metrics port serve will bind; 0 = not checked").ValueName("P");
  set.Int("http-port", &http_port, 0, 65535, "HTTP API port serve will bind; 0 = not checked").ValueName("P");
  set.DeviceFlag("device", &device, "cuda or cuda:N: no GPU is a FAIL, not a WARN");
  if (std::optional<int> exit_code = set.ParseCommandLine(argc, argv)) return *exit_code;

  std::vector<Check> checks;
  auto add = [&](std::string name, std::string status, std::string detail, std::string fix = "") {
    checks.push_back({std::move(name), std::move(status), std::move(detail), std::move(fix)});
  };

  // CPU and RAM.
  const unsigned cores = std::thread::hardware_concurrency();
  if (cores >= kRecommendedCores) {
    add("cpu", "OK", absl::StrCat(cores, " cores"));
  } else {
    add("cpu", "WARN", absl::StrCat(cores, " cores (recommended >= ", kRecommendedCores, ")"),
        "give the server more cores; on a small CPU keep --max-batch low");
  }
  const int64_t mem_total_kb = MemInfoKb("MemTotal"), mem_avail_kb = MemInfoKb("MemAvailable");

  // The model directory: strict validation, permissions, mount.
  double model_bytes = 0;
  InspectReport report;
  bool have_report = false;
  if (!model.empty()) {
    std::error_code ec;
    if (!fs::is_directory(model, ec)) {
      std::error_code exists_error;
      add("model", "FAIL",
          absl::StrCat(model, fs::exists(model, exists_error) ? " is not a directory" : " does not exist"),
          "pass --model with a checkpoint directory");
    } else {
      std::vector<std::string> unreadable;
      for (const auto& entry : fs::directory_iterator(model, ec)) {
        std::error_code entry_ec;  // a symlink loop or a dangling link: not a file to check (inspect names it)
        if (!entry.is_regular_file(entry_ec)) continue;
        if (access(entry.path().c_str(), R_OK) != 0) unreadable.push_back(entry.path().filename().string());
      }
      if (access(model.c_str(), R_OK | X_OK) != 0 || !unreadable.empty()) {
        add("model_permissions", "FAIL",
            absl::StrCat("not readable by uid ", getuid(), ": ",
                         unreadable.empty() ? model : absl::StrJoin(unreadable, ", ")),
            "chmod a+r the files (and a+rx the directory) or run as their owner");
      } else {
        add("model_permissions", "OK", absl::StrCat("readable by uid ", getuid()));
      }
      struct statfs sf {};
      if (statfs(model.c_str(), &sf) == 0) {
        const unsigned long t = static_cast<unsigned long>(sf.f_type);
        const bool network =
            t == 0x6969 /*nfs*/ || t == 0xFF534D42 /*cifs*/ || t == 0x65735546 /*fuse*/ || t == 0x01021997 /*9p*/;
        const bool ro = (sf.f_flags & ST_RDONLY) != 0;
        if (network) {
          add("model_mount", "WARN",
              absl::StrFormat("network/FUSE filesystem (type 0x%lx)%s", t, ro ? ", read-only" : ""),
              "copy the model to local disk: loads and restarts will be slow otherwise");
        } else {
          add("model_mount", "OK", absl::StrFormat("local filesystem (type 0x%lx)%s", t, ro ? ", read-only" : ""));
        }
      }
      absl::StatusOr<InspectReport> r = InspectCheckpoint(model);
      if (!r.ok()) {
        add("model", "FAIL", std::string(r.status().message()), "fix the path or the checkpoint files");
      } else if (!r->loadable()) {
        add("model", "FAIL", absl::StrCat(r->ProblemsHeading(), ": ", absl::StrJoin(r->problems, "; ")),
            "re-download or re-export the checkpoint (glmserve inspect --model DIR lists each problem)");
      } else {
        report = *r;
        have_report = true;
        // The checkpoint's own tensors, not every .safetensors / .bin file beside them (optimizer
        // states, other exports); a mixed-dtype checkpoint is counted at 4 bytes a parameter.
        const std::string& dtype = r->info.stored_dtype;
        const double bytes_per_parameter = dtype == "bfloat16" || dtype == "float16" ? 2.0 : 4.0;
        model_bytes = static_cast<double>(r->info.parameter_count) * bytes_per_parameter;
        add("model", "OK",
            absl::StrCat(r->info.architecture, ", ", r->info.parameter_count, " parameters, ", r->info.stored_dtype,
                         ", ", r->info.source_format, ", ", GiB(model_bytes), " of weights, max context ",
                         r->info.max_position_embeddings));
      }
    }
  }

  if (mem_total_kb > 0) {
    const double avail = static_cast<double>(mem_avail_kb) * 1024;
    const double need = model_bytes * 2 + (1LL << 30);  // weights (+ load copy) and headroom
    if (model_bytes > 0 && avail < model_bytes) {
      add("ram", "FAIL", absl::StrCat(GiB(avail), " available < ", GiB(model_bytes), " of weights"),
          "free memory or use a machine with more RAM");
    } else if (model_bytes > 0 && avail < need) {
      add("ram", "WARN", absl::StrCat(GiB(avail), " available; recommended ", GiB(need)),
          "loading reads the weights through host memory; leave 2x the weights free");
    } else {
      add("ram", "OK",
          absl::StrCat(GiB(static_cast<double>(mem_total_kb) * 1024), " total, ", GiB(avail), " available"));
    }
  }

  // GPU, driver vs CUDA runtime, compute capability, memory, cuDNN.
  std::error_code probe_ec;
  const bool driver_loaded = fs::exists("/proc/driver/nvidia/version", probe_ec);
  const std::vector<Gpu> gpus = QueryGpus();
  const bool want_gpu = device.is_cuda();
  if (gpus.empty()) {
    add("gpu", want_gpu ? "FAIL" : "WARN",
        driver_loaded ? "NVIDIA driver loaded but nvidia-smi lists no GPU"
        : want_gpu    ? "no NVIDIA GPU visible (no /proc/driver/nvidia/version): serve --device cuda cannot start"
                      : "no NVIDIA GPU visible (no /proc/driver/nvidia/version); GPU checks skipped, "
                        "serve runs on CPU (--device cpu)",
        "on a GPU host: install the NVIDIA driver and expose the device (--gpus all / nvidia.com/gpu)");
  } else {
    for (size_t i = 0; i < gpus.size(); ++i) {
      const Gpu& g = gpus[i];
      const std::string tag = absl::StrCat("gpu", i);
      add(tag, "OK", absl::StrCat(g.name, ", driver ", g.driver, ", compute capability ", g.compute_cap));
      const int driver_major = std::atoi(g.driver.c_str());
      if (driver_major < kMinDriverMajor) {
        add(tag + "_driver", "FAIL",
            absl::StrCat("driver ", g.driver, " < ", kMinDriverMajor, ", needed by LibTorch's CUDA ", kCudaRuntimeMajor,
                         " runtime"),
            absl::StrCat("upgrade the NVIDIA driver to >= ", kMinDriverMajor));
      } else {
        add(tag + "_driver", "OK", absl::StrCat("driver ", g.driver, " supports CUDA ", kCudaRuntimeMajor));
      }
      if (g.compute_cap != kKernelArch) {
        add(tag + "_arch", "WARN",
            absl::StrCat("compute capability ", g.compute_cap, "; fused kernels are built for sm_90a (9.0)"),
            "expect the reference (unfused) path; rebuild kernels for this arch for full speed");
      } else {
        add(tag + "_arch", "OK", "sm_90a kernels match");
      }
      const double free_bytes = g.free_mib * 1024 * 1024;
      if (have_report) {
        const ModelInfo& m = report.info;
        const double kv_per_token = 2.0 * m.num_layers * std::max(1, m.num_key_value_heads) * m.head_dim * 2;
        const double weights = static_cast<double>(m.parameter_count) * 2;  // bf16
        const double min_kv = kv_per_token * m.max_position_embeddings;     // one full sequence
        if (free_bytes < weights + min_kv) {
          add(tag + "_memory", "FAIL",
              absl::StrCat(GiB(free_bytes), " free < ", GiB(weights), " weights + ", GiB(min_kv),
                           " KV for one full-context sequence"),
              "free the GPU (nvidia-smi shows who holds it) or use a larger GPU");
        } else {
          const int batch = static_cast<int>((free_bytes * 0.9 - weights) / min_kv);
          add(tag + "_memory", "OK",
              absl::StrCat(GiB(free_bytes), " free: weights ", GiB(weights), " + KV for ~", batch,
                           " full-context sequences (--max-batch ", batch, ")"));
        }
      }
    }
    const std::string cudnn = Run("ldconfig -p 2>/dev/null | grep -o 'libcudnn.so.[0-9]*' | head -1");
    if (cudnn.empty()) {
      add("cudnn", "WARN", "no system cuDNN found by ldconfig",
          "install the cuDNN matching CUDA 13 (nvidia-cudnn-cu13) if convolutions are needed");
    } else {
      add("cudnn", "OK", absl::StrCat("found ", cudnn.substr(0, cudnn.find('\n'))));
    }
  }
  if (!gpus.empty() || want_gpu) {
    if (fs::exists(absl::StrCat("/usr/local/cuda/lib64/libcudart.so.", kCudaRuntimeMajor), probe_ec)) {
      add("cuda_runtime", "OK", absl::StrCat("libcudart.so.", kCudaRuntimeMajor, " present"));
    } else {
      add("cuda_runtime", "FAIL", absl::StrCat("libcudart.so.", kCudaRuntimeMajor, " not in /usr/local/cuda/lib64"),
          absl::StrCat("install the CUDA ", kCudaRuntimeMajor, " runtime LibTorch was built with"));
    }
  }

  // Ports: bound as serve binds them (the host resolved, SO_REUSEADDR), and not one port twice.
  struct PortCheck {
    const char* check;  // the check's name
    const char* flag;   // serve's flag for it
    int port;
  };
  const PortCheck ports[] = {
      {"port", "port", port}, {"metrics_port", "metrics-port", metrics_port}, {"http_port", "http-port", http_port}};
  for (size_t i = 0; i < std::size(ports); ++i) {
    const PortCheck& c = ports[i];
    if (c.port <= 0) continue;
    const PortCheck* same = nullptr;
    for (size_t j = 0; j < i && same == nullptr; ++j) {
      if (ports[j].port == c.port) same = &ports[j];
    }
    if (same != nullptr) {
      add(c.check, "FAIL", absl::StrCat("--", c.flag, " ", c.port, " is --", same->flag, " too"),
          absl::StrCat("give --", c.flag, " a port of its own"));
      continue;
    }
    const std::string problem = PortBindProblem(host, c.port);
    if (problem.empty()) {
      add(c.check, "OK", absl::StrCat(FormatAddress(host, c.port), " is free"));
    } else {
      add(c.check, "FAIL", absl::StrCat(FormatAddress(host, c.port), " cannot be bound: ", problem),
          absl::StrCat("stop whatever listens there (ss -ltnp 'sport = :", c.port, "'), fix --host, or pass --", c.flag,
                       " with another"));
    }
  }

  bool failed = false;
  for (const Check& c : checks) failed |= c.status == "FAIL";
  if (json) {
    nlohmann::json out = {{"ok", !failed}, {"checks", nlohmann::json::array()}};
    for (const Check& c : checks) {
      out["checks"].push_back({{"name", c.name}, {"status", c.status}, {"detail", c.detail}, {"fix", c.fix}});
    }
    std::printf("%s\n", JsonDump(out, 2).c_str());
  } else {
    for (const Check& c : checks) {
      std::printf("%-4s  %-18s %s\n", c.status.c_str(), c.name.c_str(), c.detail.c_str());
      if (!c.fix.empty()) std::printf("      %-18s fix: %s\n", "", c.fix.c_str());
    }
    std::printf("%s\n", failed ? "doctor: at least one check FAILED" : "doctor: no failures");
  }
  return failed ? kExitFailure : kExitOk;
}

}  // namespace glmserve
