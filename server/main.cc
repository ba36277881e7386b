// glmserve: one binary, one subcommand per job.
#include <cstdio>
#include <cstring>
#include <string>

#include "server/commands/cli.h"
#include "server/commands/doctor.h"
#include "server/commands/serve_command.h"
#include "server/ops/host_memory.h"

namespace {

constexpr char kUsage[] =
    "usage: glmserve <command> [flags]\n"
    "\n"
    "commands:\n"
    "  tokenize  text -> token ids with a model directory's tokenizer (glmserve tokenize --help)\n"
    "  serve     load a model and serve it over gRPC (glmserve serve --help)\n"
    "  inspect   validate a checkpoint and describe it (glmserve inspect --help)\n"
    "  generate  run one prompt through a model (glmserve generate --help)\n"
    "  doctor    check the machine, a model directory and the ports (glmserve doctor --help)\n";

}  // namespace

int main(int argc, char** argv) {
  glmserve::KeepLargeHostBuffersMapped();  // image requests' buffers reuse mapped pages
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? glmserve::kExitBadInput : glmserve::kExitOk;
  }
  const std::string command = argv[1];
  if (command == "tokenize") return glmserve::RunTokenize(argc - 1, argv + 1);
  if (command == "serve") return glmserve::RunServe(argc - 1, argv + 1);
  if (command == "inspect") return glmserve::RunInspect(argc - 1, argv + 1);
  if (command == "generate") return glmserve::RunGenerate(argc - 1, argv + 1);
  if (command == "doctor") return glmserve::RunDoctor(argc - 1, argv + 1);
  std::fprintf(stderr, "glmserve: unknown command '%s'\n\n%s", command.c_str(), kUsage);
  return glmserve::kExitBadInput;
}
