// glmload: the load-test harness for glmserve.v1.Inference. See bench/README.md and --help.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "bench/glmload.h"

namespace {

bool WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  return static_cast<bool>(f);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace glmserve::load;
  auto opts = ParseFlags(argc, argv);
  if (!opts.ok()) {
    std::fprintf(stderr, "glmload: %s\n", std::string(opts.status().message()).c_str());
    return 2;
  }
  if (opts->help) {
    std::fputs(Usage().c_str(), stdout);
    return 0;
  }
  std::vector<Report> reports;
  std::vector<std::string> labels = opts->labels;
  if (!opts->from_json.empty()) {
    for (const std::string& path : opts->from_json) {
      std::ifstream f(path);
      std::stringstream ss;
      ss << f.rdbuf();
      auto r = FromJson(ss.str());
      if (!f || !r.ok()) {
        std::fprintf(stderr, "glmload: %s: %s\n", path.c_str(),
                     f ? std::string(r.status().message()).c_str() : "cannot read");
        return 2;
      }
      reports.push_back(std::move(*r));
    }
    if (labels.empty()) labels = opts->from_json;
    std::fputs(CompareMarkdown(reports, labels).c_str(), stdout);
  } else {
    auto r = RunLoad(*opts);
    if (!r.ok()) {
      std::fprintf(stderr, "glmload: %s\n", std::string(r.status().message()).c_str());
      return 2;
    }
    std::fputs(FormatTable(*r).c_str(), stdout);
    std::fflush(stdout);
    if (!opts->json_out.empty() && !WriteFile(opts->json_out, ToJson(*r))) {
      std::fprintf(stderr, "glmload: --json-out: cannot write %s\n", opts->json_out.c_str());
      return 2;
    }
    reports.push_back(std::move(*r));
    if (labels.empty()) labels = {opts->target};
  }
  if (!opts->plot_out.empty()) {
    absl::Status s = Plot(reports, labels, opts->plot_out);
    if (!s.ok()) {
      std::fprintf(stderr, "glmload: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  if (!opts->from_json.empty()) return 0;  // a re-report judges nothing
  // A level with failed requests, or an open-loop level whose arrivals were dropped (the server fell
  // so far behind that --max-in-flight were waiting: what was measured is not the offered rate's
  // latency), fails the run, so scripts and CI jobs see it.
  int exit_code = 0;
  for (const Report& r : reports) {
    for (const LevelResult& l : r.levels) {
      if (!l.errors.empty()) exit_code = 1;
      if (l.dropped > 0) {
        std::fprintf(stderr,
                     "glmload: the level at %g requests/s dropped %lld of its arrivals (--max-in-flight %d were in "
                     "flight): the server did not keep up with that rate\n",
                     l.rate, static_cast<long long>(l.dropped), opts->max_in_flight);
        exit_code = 1;
      }
    }
  }
  return exit_code;
}
