#include "flags/flags.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace glmserve::flags {
namespace {

// argv for Parse: argv[0] is the command.
class Args {
 public:
  Args(std::initializer_list<std::string> words) : words_(words) {
    words_.insert(words_.begin(), "cmd");
    for (std::string& w : words_) ptrs_.push_back(w.data());
  }
  int argc() { return static_cast<int>(ptrs_.size()); }
  char** argv() { return ptrs_.data(); }

 private:
  std::vector<std::string> words_;
  std::vector<char*> ptrs_;
};

struct Options {
  std::string model;
  int32_t port = 50051;
  float top_p = 1.0f;  // float, as the sampler keeps it
  float temperature = 0.0f;
  bool reflection = true;
  bool json = false;
  std::string log_format = "json";
  Device device;
  Dtype dtype = Dtype::kAuto;
  double duration_s = 10;
  std::vector<int32_t> sizes = {1, 8};
  std::vector<std::string> labels;
  uint64_t seed = 0;
};

enum class Color { kRed, kBlue };

// The table under test; every type once.
void Register(FlagSet& set, Options* o) {
  set.Section("model");
  set.Path("model", &o->model, "checkpoint directory").ValueName("DIR");
  set.DeviceFlag("device", &o->device, "where to run");
  set.DtypeFlag("dtype", &o->dtype, "compute dtype");
  set.Section("network");
  set.Int("port", &o->port, 0, 65535, "gRPC port; 0 picks a free port");
  set.Number("top-p", &o->top_p, {0, 1, /*lo_open=*/true}, "nucleus mass");
  set.Number("temperature", &o->temperature, {0, 100}, "0 = greedy");
  set.Bool("reflection", &o->reflection, "gRPC server reflection");
  set.Switch("json", &o->json, "one JSON object");
  set.Choice("log-format", &o->log_format, {"json", "text"}, "log line format");
  set.Duration("duration", &o->duration_s, 1e-3, 3600, "per level");
  set.IntList("sizes", &o->sizes, 1, 64, "batch sizes");
  set.StringList("labels", &o->labels, "names").SkipEmptyItems();
  set.Uint64("seed", &o->seed, "sampling seed");
}

absl::Status ParseInto(Options* o, Args args) {
  FlagSet set("glmtest", "[flags]", "A test command.");
  Register(set, o);
  return set.Parse(args.argc(), args.argv());
}

std::string ErrorOf(Args args) {
  Options o;
  absl::Status s = ParseInto(&o, std::move(args));
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  return std::string(s.message());
}

TEST(FlagSetTest, ParsesEveryTypeInBothSyntaxes) {
  Options o;
  ASSERT_TRUE(ParseInto(&o, {"--model",         "m",
                             "--device=cuda:3", "--dtype",
                             "float16",         "--port=0",
                             "--top-p",         "0.5",
                             "--temperature",   "0.7",
                             "--reflection",    "false",
                             "--json",          "--log-format=text",
                             "--duration",      "500ms",
                             "--sizes",         "4,16",
                             "--labels",        "a,,b",
                             "--seed",          "18446744073709551615"})
                  .ok());
  EXPECT_EQ(o.model, "m");
  EXPECT_TRUE(o.device.is_cuda());
  EXPECT_EQ(o.device.index, 3);
  EXPECT_EQ(o.dtype, Dtype::kFloat16);
  EXPECT_EQ(o.port, 0);
  EXPECT_DOUBLE_EQ(o.top_p, 0.5);
  EXPECT_FLOAT_EQ(o.temperature, 0.7f);
  EXPECT_FALSE(o.reflection);
  EXPECT_TRUE(o.json);
  EXPECT_EQ(o.log_format, "text");
  EXPECT_DOUBLE_EQ(o.duration_s, 0.5);
  EXPECT_EQ(o.sizes, (std::vector<int32_t>{4, 16}));
  EXPECT_EQ(o.labels, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(o.seed, 18446744073709551615ull);
}

TEST(FlagSetTest, DefaultsStayWhenFlagsAreAbsent) {
  Options o;
  ASSERT_TRUE(ParseInto(&o, {}).ok());
  Options d;
  EXPECT_EQ(o.port, d.port);
  EXPECT_EQ(o.device, Device{});
  EXPECT_EQ(o.dtype, Dtype::kAuto);
  EXPECT_TRUE(o.reflection);
  EXPECT_EQ(o.sizes, d.sizes);
}

TEST(FlagSetTest, IntegerRanges) {
  EXPECT_EQ(ErrorOf({"--port", "65536"}), "--port: '65536' is not an integer in [0, 65535]");
  EXPECT_EQ(ErrorOf({"--port", "-1"}), "--port: '-1' is not an integer in [0, 65535]");
  EXPECT_EQ(ErrorOf({"--port", "80x"}), "--port: '80x' is not an integer in [0, 65535]");
  EXPECT_EQ(ErrorOf({"--port", ""}), "--port: '' is not an integer in [0, 65535]");
  EXPECT_EQ(ErrorOf({"--port", " 80"}), "--port: ' 80' is not an integer in [0, 65535]");
  EXPECT_EQ(ErrorOf({"--port", "99999999999999999999"}),
            "--port: '99999999999999999999' is not an integer in [0, 65535]");
  EXPECT_EQ(ErrorOf({"--seed", "-1"}), "--seed: '-1' is not an integer in [0, 18446744073709551615]");
  Options o;
  EXPECT_TRUE(ParseInto(&o, {"--port", "65535"}).ok());
  EXPECT_EQ(o.port, 65535);
}

TEST(FlagSetTest, NumberRangesOpenAndClosed) {
  EXPECT_EQ(ErrorOf({"--top-p", "0"}), "--top-p: '0' is not a number in (0, 1]");
  EXPECT_EQ(ErrorOf({"--top-p", "1.01"}), "--top-p: '1.01' is not a number in (0, 1]");
  EXPECT_EQ(ErrorOf({"--top-p", "nan"}), "--top-p: 'nan' is not a number in (0, 1]");
  EXPECT_EQ(ErrorOf({"--temperature", "-0.5"}), "--temperature: '-0.5' is not a number in [0, 100]");
  EXPECT_EQ(ErrorOf({"--temperature", "inf"}), "--temperature: 'inf' is not a number in [0, 100]");
  // In range as a double, 0 once stored as the float it is: refused here, naming the flag.
  EXPECT_EQ(ErrorOf({"--top-p", "1e-50"}), "--top-p: '1e-50' rounds to 0, outside (0, 1]");
  Options o;
  EXPECT_TRUE(ParseInto(&o, {"--temperature", "0", "--top-p", "1"}).ok());
}

TEST(FlagSetTest, BoolsSwitchesAndEnums) {
  EXPECT_EQ(ErrorOf({"--reflection", "maybe"}), "--reflection: 'maybe' is not true|false");
  EXPECT_EQ(ErrorOf({"--json=yes please"}), "--json: 'yes please' is not true|false");
  EXPECT_EQ(ErrorOf({"--log-format", "xml"}), "--log-format: 'xml' is not json|text");
  EXPECT_EQ(ErrorOf({"--dtype", "int8"}), "--dtype: 'int8' is not float32|bfloat16|float16");
  EXPECT_EQ(ErrorOf({"--dtype", ""}), "--dtype: '' is not float32|bfloat16|float16");
  Options o;
  o.json = true;
  ASSERT_TRUE(ParseInto(&o, {"--json=false", "--reflection", "1"}).ok());
  EXPECT_FALSE(o.json);
  EXPECT_TRUE(o.reflection);
}

// A switch takes the next word when it is true or false (scripts written for a --name true|false
// flag keep working), and nothing else: `--json 1` leaves 1 as the next argument.
TEST(FlagSetTest, SwitchTakesASeparateTrueOrFalse) {
  Options o;
  ASSERT_TRUE(ParseInto(&o, {"--json", "false", "--reflection", "true"}).ok());
  EXPECT_FALSE(o.json);
  ASSERT_TRUE(ParseInto(&o, {"--json", "true"}).ok());
  EXPECT_TRUE(o.json);
  o.json = false;
  ASSERT_TRUE(ParseInto(&o, {"--json"}).ok());
  EXPECT_TRUE(o.json);
  EXPECT_EQ(ErrorOf({"--json", "1"}).rfind("unexpected argument '1'", 0), 0u) << ErrorOf({"--json", "1"});
}

TEST(FlagSetTest, DevicesParsedOnce) {
  for (const char* bad : {"cudafoo", "cuda:x", "cuda:", "cuda:-1", "cuda:+1", "cuda: 1", "cuda:1x", "gpu", "CPU", "",
                          "cuda:128", "cuda:99999999999999999999"}) {
    const std::string err = ErrorOf({"--device", bad});
    EXPECT_EQ(err.rfind(std::string("--device: '") + bad + "' is not cpu, cuda or cuda:N", 0), 0u) << err;
  }
  absl::StatusOr<Device> d = ParseDevice("--device", "cuda");
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->is_cuda());
  EXPECT_EQ(d->ToString(), "cuda");
  d = ParseDevice("--device", "cuda:0");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->index, 0);
  EXPECT_EQ(d->ToString(), "cuda:0");
  d = ParseDevice("--device", "cuda:007");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->ToString(), "cuda:7");
  d = ParseDevice("--device", "cpu");
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->is_cuda());
  EXPECT_EQ(d->ToString(), "cpu");
}

TEST(FlagSetTest, Durations) {
  Options o;
  for (auto [text, seconds] : std::vector<std::pair<std::string, double>>{
           {"30", 30}, {"30s", 30}, {"250ms", 0.25}, {"2m", 120}, {"1h", 3600}, {"1.5s", 1.5}}) {
    ASSERT_TRUE(ParseInto(&o, {"--duration", text}).ok()) << text;
    EXPECT_DOUBLE_EQ(o.duration_s, seconds) << text;
  }
  for (const char* bad : {"-1", "0", "2h", "1x", "ms", "", "nan"}) {
    const std::string err = ErrorOf({"--duration", bad});
    EXPECT_EQ(err.rfind(std::string("--duration: '") + bad + "' is not a duration", 0), 0u) << err;
  }
}

TEST(FlagSetTest, Lists) {
  EXPECT_EQ(ErrorOf({"--sizes", "8,0"}), "--sizes: '0' is not an integer in [1, 64]");
  EXPECT_EQ(ErrorOf({"--sizes", "8,"}), "--sizes: '' is not an integer in [1, 64]");
  EXPECT_EQ(ErrorOf({"--sizes", "x"}), "--sizes: 'x' is not an integer in [1, 64]");
}

TEST(FlagSetTest, UnknownFlagMissingValueAndStrayWords) {
  EXPECT_EQ(ErrorOf({"--bogus", "1"}), "unknown flag '--bogus' (see glmtest --help)");
  EXPECT_EQ(ErrorOf({"--bogus=1"}), "unknown flag '--bogus' (see glmtest --help)");
  EXPECT_EQ(ErrorOf({"--port"}), "--port: needs a value (N)");
  EXPECT_EQ(ErrorOf({"--model", ""}), "--model: must not be empty");
  EXPECT_EQ(ErrorOf({"stray"}), "unexpected argument 'stray': flags look like --name value");
  EXPECT_EQ(ErrorOf({"-"}), "unexpected argument '-': flags look like --name value");
  // The word after a valued flag is its value, even a negative number.
  EXPECT_EQ(ErrorOf({"--temperature", "-1"}), "--temperature: '-1' is not a number in [0, 100]");
}

TEST(FlagSetTest, HelpStopsParsingAndWasSetTracksTheCommandLine) {
  Options o;
  FlagSet set("glmtest", "[flags]", "A test command.");
  Register(set, &o);
  Args args{"--port", "1", "--help", "--bogus"};
  ASSERT_TRUE(set.Parse(args.argc(), args.argv()).ok());
  EXPECT_TRUE(set.help_requested());
  EXPECT_TRUE(set.was_set("port"));
  EXPECT_FALSE(set.was_set("model"));
}

TEST(FlagSetTest, PositionalWords) {
  std::vector<std::string> dirs;
  int repeat = 200;
  FlagSet set("bench", "[--repeat N] [DIR...]", "");
  set.Int("repeat", &repeat, 1, 1000, "repeats");
  set.Positional("DIR...", &dirs, "directories");
  Args args{"a", "--repeat", "5", "b"};
  ASSERT_TRUE(set.Parse(args.argc(), args.argv()).ok());
  EXPECT_EQ(dirs, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(repeat, 5);
  EXPECT_NE(set.Usage().find("DIR..."), std::string::npos);
}

TEST(FlagSetTest, UsageIsGeneratedFromTheTable) {
  Options o;
  o.device = *ParseDevice("--device", "cuda:1");
  FlagSet set("glmtest", "--model DIR [flags]", "A test command.");
  Register(set, &o);
  set.Custom("dist", "D", "fixed:32", "a distribution", [](const std::string&) { return std::nullopt; });
  set.Epilogue("Exit status: 0 ok, 2 bad flags.");
  const std::string usage = set.Usage();
  EXPECT_EQ(usage.rfind("usage: glmtest --model DIR [flags]\n\nA test command.\n", 0), 0u) << usage;
  // Sections in order, each flag with its value name, help and the default taken from its target.
  const size_t model = usage.find("\nmodel:\n"), network = usage.find("\nnetwork:\n");
  ASSERT_NE(model, std::string::npos);
  ASSERT_NE(network, std::string::npos);
  EXPECT_LT(model, network);
  for (const char* want :
       {"--model DIR", "--device cpu|cuda[:N]", "(default: cuda:1)", "--dtype float32|bfloat16|float16",
        "(default: float32 on CPU, bfloat16 on CUDA)", "--port N", "gRPC port; 0 picks a free port (default: 50051)",
        "--reflection true|false", "(default: true)", "--log-format json|text", "(default: json)", "--sizes N,N,...",
        "(default: 1,8)", "--duration T", "(default: 10s)", "--dist D", "a distribution (default: fixed:32)",
        "Exit status: 0 ok, 2 bad flags."}) {
    EXPECT_NE(usage.find(want), std::string::npos) << want << "\n" << usage;
  }
  // A switch that is off has no value name and no default.
  EXPECT_NE(usage.find("  --json "), std::string::npos) << usage;
  EXPECT_EQ(usage.find("one JSON object (default"), std::string::npos) << usage;
  // Lines are wrapped.
  for (size_t start = 0, end; start < usage.size(); start = end + 1) {
    end = usage.find('\n', start);
    if (end == std::string::npos) end = usage.size();
    EXPECT_LE(end - start, 100u) << usage.substr(start, end - start);
  }
  // Changing a target before registering changes the usage: defaults are never written twice.
  Options other;
  other.port = 1234;
  FlagSet set2("glmtest", "[flags]", "");
  Register(set2, &other);
  EXPECT_NE(set2.Usage().find("(default: 1234)"), std::string::npos);
}

TEST(FlagSetTest, CustomValuesNameFlagAndValue) {
  int parsed = 0;
  FlagSet set("glmtest", "[flags]", "");
  set.Custom("dist", "D", "", "N or fixed:N", [&parsed](const std::string& v) -> std::optional<std::string> {
    if (v != "fixed:3") return "is not N or fixed:N";
    parsed = 3;
    return std::nullopt;
  });
  Args bad{"--dist", "uniform"};
  absl::Status s = set.Parse(bad.argc(), bad.argv());
  EXPECT_EQ(s.message(), "--dist: 'uniform' is not N or fixed:N");
  Args good{"--dist=fixed:3"};
  EXPECT_TRUE(set.Parse(good.argc(), good.argv()).ok());
  EXPECT_EQ(parsed, 3);
}

TEST(FlagSetTest, ParseCommandLineExitCodes) {
  Options o;
  {
    FlagSet set("glmtest", "[flags]", "");
    Register(set, &o);
    Args args{"--port", "x"};
    EXPECT_EQ(set.ParseCommandLine(args.argc(), args.argv()), std::optional<int>(kExitUsage));
  }
  {
    FlagSet set("glmtest", "[flags]", "");
    Register(set, &o);
    Args args{"--port", "1"};
    EXPECT_EQ(set.ParseCommandLine(args.argc(), args.argv()), std::nullopt);
    EXPECT_EQ(set.UsageError("--model: required"), kExitUsage);
  }
}

}  // namespace
}  // namespace glmserve::flags
