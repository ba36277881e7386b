// Tests for ListCheckpoint (runtime/checkpoint.h) and ReadCheckpointTensors
// (runtime/checkpoint_tensors.h). Fixtures: tests/fixtures/checkpoint/, made by
// scripts/make_checkpoint_fixtures.py; expected values come from its expected.json files.
#include "runtime/checkpoint/checkpoint.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/checkpoint/checkpoint_tensors.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/checkpoint/pytorch_bin.h"
#include "runtime/checkpoint/weight_map.h"
#include "runtime/inspect.h"

namespace glmserve {
namespace {

namespace fs = std::filesystem;

std::string Fixture(const std::string& name) { return std::string(GLMSERVE_FIXTURES_DIR) + "/checkpoint/" + name; }

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "glmserve_ckpt_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

// A safetensors file from a header JSON text and a data section.
std::string Safetensors(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string Joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += "  " + x + "\n";
  return s;
}

// True when some problem contains every one of `parts`.
bool HasProblem(const CheckpointListing& l, const std::vector<std::string>& parts) {
  for (const std::string& p : l.problems) {
    bool all = true;
    for (const std::string& part : parts) all = all && p.find(part) != std::string::npos;
    if (all) return true;
  }
  return false;
}

#define EXPECT_PROBLEM(listing, ...) \
  EXPECT_TRUE(HasProblem(listing, {__VA_ARGS__})) << "problems:\n" << Joined((listing).problems)

at::ScalarType TypeOf(const std::string& dtype) {
  if (dtype == "F32") return at::kFloat;
  if (dtype == "F16") return at::kHalf;
  if (dtype == "BF16") return at::kBFloat16;
  ADD_FAILURE() << "unexpected dtype " << dtype;
  return at::kFloat;
}

// Checks names/dtypes/shapes of the listing and the values read against expected.json.
void CheckAgainstExpected(const std::string& dir, const CheckpointListing& listing) {
  nlohmann::json expected = nlohmann::json::parse(ReadAll(fs::path(dir) / "expected.json"));
  const auto& tensors = expected["tensors"];
  ASSERT_EQ(listing.tensors.size(), tensors.size());
  std::map<std::string, const TensorRecord*> by_name;
  for (const TensorRecord& r : listing.tensors) by_name[r.name] = &r;
  for (auto it = tensors.begin(); it != tensors.end(); ++it) {
    ASSERT_TRUE(by_name.count(it.key())) << it.key();
    const TensorRecord& r = *by_name[it.key()];
    EXPECT_EQ(r.dtype, it.value()["dtype"].get<std::string>()) << r.name;
    EXPECT_EQ(r.shape, it.value()["shape"].get<std::vector<int64_t>>()) << r.name;
  }
  auto read = ReadCheckpointTensors(listing);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), tensors.size());
  for (auto it = tensors.begin(); it != tensors.end(); ++it) {
    ASSERT_TRUE(read->count(it.key())) << it.key();
    const at::Tensor& t = read->at(it.key());
    EXPECT_EQ(t.scalar_type(), TypeOf(it.value()["dtype"].get<std::string>())) << it.key();
    EXPECT_TRUE(t.is_contiguous()) << it.key();
    EXPECT_TRUE(t.device().is_cpu());
    EXPECT_EQ(t.sizes().vec(), it.value()["shape"].get<std::vector<int64_t>>()) << it.key();
    at::Tensor flat = t.to(at::kDouble).flatten();
    const auto values = it.value()["values"].get<std::vector<double>>();
    ASSERT_EQ(flat.numel(), static_cast<int64_t>(values.size())) << it.key();
    for (size_t i = 0; i < values.size(); ++i) {
      EXPECT_EQ(flat[static_cast<int64_t>(i)].item<double>(), values[i]) << it.key() << "[" << i << "]";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Formats that read cleanly.

TEST(ListCheckpoint, SingleSafetensors) {
  const std::string dir = Fixture("st_single");
  auto listing = ListCheckpoint(dir);
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_EQ(listing->format, CheckpointFormat::kSafetensors);
  EXPECT_EQ(listing->files, std::vector<std::string>{"model.safetensors"});
  EXPECT_TRUE(listing->problems.empty()) << Joined(listing->problems);
  for (const TensorRecord& r : listing->tensors) {
    EXPECT_EQ(r.file, "model.safetensors");
    EXPECT_GT(r.data_offset, 8u);
  }
  CheckAgainstExpected(dir, *listing);
}

TEST(ListCheckpoint, ShardedSafetensors) {
  const std::string dir = Fixture("st_sharded");
  auto listing = ListCheckpoint(dir);
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_EQ(listing->format, CheckpointFormat::kSafetensorsSharded);
  EXPECT_EQ(listing->files,
            (std::vector<std::string>{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}));
  EXPECT_TRUE(listing->problems.empty()) << Joined(listing->problems);
  CheckAgainstExpected(dir, *listing);
}

TEST(ListCheckpoint, AnySingleSafetensorsNameAndUnsupportedDtypes) {
  const std::string dir = Fixture("st_any_name");
  auto listing = ListCheckpoint(dir);
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_EQ(listing->format, CheckpointFormat::kSafetensors);
  EXPECT_EQ(listing->files, std::vector<std::string>{"weights.safetensors"});
  EXPECT_TRUE(listing->problems.empty()) << Joined(listing->problems);
  std::map<std::string, std::string> dtypes;
  for (const TensorRecord& r : listing->tensors) dtypes[r.name] = r.dtype;
  EXPECT_EQ(dtypes, (std::map<std::string, std::string>{{"w", "F32"}, {"i8", "I8"}, {"f64", "F64"}}));
  // Materializing an unsupported dtype is an error naming the file, key and dtype.
  auto read = ReadCheckpointTensors(*listing);
  ASSERT_FALSE(read.ok());
  const std::string msg(read.status().message());
  EXPECT_NE(msg.find("weights.safetensors"), std::string::npos) << msg;
  EXPECT_TRUE(msg.find("I8") != std::string::npos || msg.find("F64") != std::string::npos) << msg;
}

TEST(ListCheckpoint, SingleBinWithTiedWeightsViewsAndHalfTypes) {
  const std::string dir = Fixture("bin_single");
  auto listing = ListCheckpoint(dir);
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_EQ(listing->format, CheckpointFormat::kPytorchBin);
  EXPECT_EQ(listing->files, std::vector<std::string>{"pytorch_model.bin"});
  EXPECT_TRUE(listing->problems.empty()) << Joined(listing->problems);
  CheckAgainstExpected(dir, *listing);
}

TEST(ListCheckpoint, BinTiedWeightsShareValues) {
  auto listing = ListCheckpoint(Fixture("bin_single"));
  ASSERT_TRUE(listing.ok()) << listing.status();
  auto read = ReadCheckpointTensors(*listing);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(at::equal(read->at("embed.weight"), read->at("lm_head.weight")));
  EXPECT_EQ(read->at("half_view").sizes().vec(), (std::vector<int64_t>{2, 3}));
}

TEST(ListCheckpoint, BinReadWithoutCachedListing) {
  // Reading twice from one listing: the second read cannot use the cache and loads again.
  auto listing = ListCheckpoint(Fixture("bin_single"));
  ASSERT_TRUE(listing.ok()) << listing.status();
  auto first = ReadCheckpointTensors(*listing);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = ReadCheckpointTensors(*listing);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(first->size(), second->size());
  EXPECT_TRUE(at::equal(first->at("embed.weight"), second->at("embed.weight")));
}

TEST(ListCheckpoint, ShardedBin) {
  const std::string dir = Fixture("bin_sharded");
  auto listing = ListCheckpoint(dir);
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_EQ(listing->format, CheckpointFormat::kPytorchBinSharded);
  EXPECT_EQ(listing->files,
            (std::vector<std::string>{"pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"}));
  EXPECT_TRUE(listing->problems.empty()) << Joined(listing->problems);
  CheckAgainstExpected(dir, *listing);
}

TEST(ListCheckpoint, FormatPreference) {
  TempDir tmp;
  for (const char* f : {"model.safetensors", "pytorch_model.bin"}) {
    fs::copy_file(fs::path(Fixture(std::string(f) == "model.safetensors" ? "st_single" : "bin_single")) / f,
                  tmp.path() / f);
  }
  auto listing = ListCheckpoint(tmp.str());
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_EQ(listing->format, CheckpointFormat::kSafetensors);
  fs::remove(tmp.path() / "model.safetensors");
  listing = ListCheckpoint(tmp.str());
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_EQ(listing->format, CheckpointFormat::kPytorchBin);
  ClearPytorchBinCache();
}

// A single file beside an index is what transformers loads (modeling_utils looks for
// model.safetensors before its index, pytorch_model.bin before its index); the index won here, so
// a directory with a leftover single file served other weights than the reference.
TEST(ListCheckpoint, SingleFileBeforeItsIndexAsTransformers) {
  for (const auto& [sharded, single, single_format, sharded_format] :
       {std::tuple{"st_sharded", "st_single", CheckpointFormat::kSafetensors, CheckpointFormat::kSafetensorsSharded},
        std::tuple{"bin_sharded", "bin_single", CheckpointFormat::kPytorchBin, CheckpointFormat::kPytorchBinSharded}}) {
    TempDir tmp;
    for (const auto& entry : fs::directory_iterator(Fixture(sharded))) {
      fs::copy_file(entry.path(), tmp.path() / entry.path().filename());
    }
    const char* single_name =
        single_format == CheckpointFormat::kSafetensors ? "model.safetensors" : "pytorch_model.bin";
    fs::copy_file(fs::path(Fixture(single)) / single_name, tmp.path() / single_name);
    auto listing = ListCheckpoint(tmp.str());
    ASSERT_TRUE(listing.ok()) << listing.status();
    EXPECT_EQ(listing->format, single_format) << sharded;
    EXPECT_EQ(listing->files, std::vector<std::string>{single_name}) << sharded;
    fs::remove(tmp.path() / single_name);
    listing = ListCheckpoint(tmp.str());
    ASSERT_TRUE(listing.ok()) << listing.status();
    EXPECT_EQ(listing->format, sharded_format) << sharded;
    ClearPytorchBinCache();
  }
}

TEST(ListCheckpoint, NothingToList) {
  EXPECT_FALSE(ListCheckpoint("/nonexistent/glmserve/dir").ok());
  TempDir tmp;
  EXPECT_FALSE(ListCheckpoint(tmp.str()).ok());
  WriteAll(tmp.path() / "a.safetensors", "");
  WriteAll(tmp.path() / "b.safetensors", "");
  auto several = ListCheckpoint(tmp.str());
  EXPECT_FALSE(several.ok());

  // .bin shards without their index are named as such (it said "no weight files").
  TempDir bins;
  for (const auto& entry : fs::directory_iterator(Fixture("bin_sharded"))) {
    if (entry.path().extension() == ".bin") fs::copy_file(entry.path(), bins.path() / entry.path().filename());
  }
  auto shards = ListCheckpoint(bins.str());
  ASSERT_FALSE(shards.ok());
  EXPECT_NE(shards.status().message().find("pytorch_model-00001-of-00002.bin"), std::string::npos) << shards.status();
  EXPECT_NE(shards.status().message().find("pytorch_model.bin.index.json"), std::string::npos) << shards.status();

  // A directory link in a loop says so (it said "does not exist").
  const fs::path loop = tmp.path() / "loop";
  fs::create_directory_symlink(loop, loop);
  auto looped = ListCheckpoint(loop.string());
  ASSERT_FALSE(looped.ok());
  EXPECT_EQ(looped.status().message().find("does not exist"), std::string::npos) << looped.status();
  EXPECT_NE(looped.status().message().find("symbolic links"), std::string::npos) << looped.status();
}

// ---------------------------------------------------------------------------------------------
// Index problems.

TEST(ListCheckpoint, BadIndexReportsEveryProblem) {
  auto listing = ListCheckpoint(Fixture("st_bad_index"));
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_PROBLEM(*listing,
                 "index model.safetensors.index.json names shard "
                 "model-00003-of-00003.safetensors, which is absent");
  EXPECT_PROBLEM(*listing, "model-00002-of-00003.safetensors", "ghost");  // index key missing
  EXPECT_PROBLEM(*listing, "model-00001-of-00003.safetensors", "extra");  // key not in index
  EXPECT_PROBLEM(*listing, "dup", "model-00001-of-00003.safetensors",
                 "model-00002-of-00003.safetensors");  // in two shards
  EXPECT_GE(listing->problems.size(), 4u) << Joined(listing->problems);
  // The readable tensors are still listed, each once.
  std::map<std::string, int> count;
  for (const TensorRecord& r : listing->tensors) ++count[r.name];
  EXPECT_EQ(count, (std::map<std::string, int>{{"a", 1}, {"b", 1}, {"dup", 1}, {"extra", 1}}));
}

TEST(ListCheckpoint, InvalidIndexJsonNamesPosition) {
  TempDir tmp;
  fs::copy_file(fs::path(Fixture("st_sharded")) / "model-00001-of-00002.safetensors",
                tmp.path() / "model-00001-of-00002.safetensors");
  WriteAll(tmp.path() / "model.safetensors.index.json", "{\"weight_map\": {\"a\": }");
  auto listing = ListCheckpoint(tmp.str());
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_EQ(listing->format, CheckpointFormat::kSafetensorsSharded);
  EXPECT_PROBLEM(*listing, "model.safetensors.index.json", "invalid JSON", "line 1, column");
  // The parser's own exception id names nothing in the user's file.
  EXPECT_EQ(Joined(listing->problems).find("json.exception"), std::string::npos) << Joined(listing->problems);
  // The shards present are still listed.
  EXPECT_EQ(listing->files, std::vector<std::string>{"model-00001-of-00002.safetensors"});
}

TEST(ListCheckpoint, BinIndexNamesAbsentShard) {
  TempDir tmp;
  fs::copy_file(fs::path(Fixture("bin_sharded")) / "pytorch_model-00001-of-00002.bin",
                tmp.path() / "pytorch_model-00001-of-00002.bin");
  fs::copy_file(fs::path(Fixture("bin_sharded")) / "pytorch_model.bin.index.json",
                tmp.path() / "pytorch_model.bin.index.json");
  auto listing = ListCheckpoint(tmp.str());
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_PROBLEM(*listing,
                 "index pytorch_model.bin.index.json names shard "
                 "pytorch_model-00002-of-00002.bin, which is absent");
  EXPECT_EQ(listing->problems.size(), 1u) << Joined(listing->problems);
  ClearPytorchBinCache();
}

// ---------------------------------------------------------------------------------------------
// Malformed safetensors files, written here byte by byte.

class MalformedSafetensors : public ::testing::Test {
 protected:
  CheckpointListing List(const std::string& bytes) {
    WriteAll(tmp_.path() / "model.safetensors", bytes);
    auto listing = ListCheckpoint(tmp_.str());
    EXPECT_TRUE(listing.ok()) << listing.status();
    return listing.ok() ? *listing : CheckpointListing{};
  }
  TempDir tmp_;
};

// A checkpoint larger than the host memory available is refused by its size before anything is
// allocated (a 128 GiB one failed with LibTorch's allocator text naming no file; one between the
// memory available and the machine's would be killed by the OOM killer with no message). The file
// is sparse: 1 TiB of tensor data takes no disk.
TEST_F(MalformedSafetensors, LargerThanHostMemoryIsRefusedBySize) {
  const uint64_t data_bytes = uint64_t{1} << 40;
  const std::string header =
      absl::StrCat(R"({"w": {"dtype": "BF16", "shape": [524288, 1048576], "data_offsets": [0, )", data_bytes, "]}}");
  const fs::path file = tmp_.path() / "model.safetensors";
  WriteAll(file, Safetensors(header, ""));
  std::error_code ec;
  fs::resize_file(file, 8 + header.size() + data_bytes, ec);
  if (ec) GTEST_SKIP() << "this filesystem takes no 1 TiB sparse file: " << ec.message();
  auto listing = ListCheckpoint(tmp_.str());
  ASSERT_TRUE(listing.ok()) << listing.status();
  ASSERT_TRUE(listing->problems.empty()) << Joined(listing->problems);
  auto read = ReadCheckpointTensors(*listing);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kResourceExhausted) << read.status();
  EXPECT_NE(read.status().message().find("1024.0 GiB"), std::string::npos) << read.status();
  EXPECT_NE(read.status().message().find("MemAvailable"), std::string::npos) << read.status();
}

TEST_F(MalformedSafetensors, ZeroBytes) {
  auto l = List("");
  EXPECT_PROBLEM(l, "model.safetensors", "too short");
  EXPECT_TRUE(l.tensors.empty());
  EXPECT_TRUE(l.files.empty());
}

TEST_F(MalformedSafetensors, HeaderSizeLargerThanFile) {
  std::string bytes = Safetensors("{}", "");
  bytes[0] = 'x';  // header size 120 in a 10-byte file
  EXPECT_PROBLEM(List(bytes), "model.safetensors", "header size 120", "larger than the file");
  EXPECT_PROBLEM(List(std::string(8, '\xff') + "{}"), "model.safetensors", "larger than the file");
}

TEST_F(MalformedSafetensors, InvalidJson) {
  const CheckpointListing broken = List(Safetensors("{\"a\": [1,", ""));
  EXPECT_PROBLEM(broken, "model.safetensors", "not valid JSON", "unexpected end of input");
  EXPECT_EQ(Joined(broken.problems).find("json.exception"), std::string::npos) << Joined(broken.problems);
  EXPECT_PROBLEM(List(Safetensors("[1, 2]", "")), "model.safetensors", "not a JSON object");
  // A number past a double's range is quoted cut short (a 99 MB one came back whole: a 104 MB
  // message and log line).
  const std::string digits(1 << 20, '9');
  const CheckpointListing overflow = List(Safetensors("{\"w\": " + digits + "}", ""));
  EXPECT_PROBLEM(overflow, "model.safetensors", "not valid JSON", "number overflow");
  EXPECT_LT(Joined(overflow.problems).size(), 1000u) << Joined(overflow.problems).substr(0, 1000);
  EXPECT_NE(Joined(overflow.problems).find(absl::StrCat("(", digits.size(), " bytes)")), std::string::npos)
      << Joined(overflow.problems).substr(0, 1000);
  // Quoted input holding the parser's own "'; expected " is cut short too (it ended the cut there).
  const CheckpointListing unterminated = List(Safetensors("{\"w\": \"'; expected " + std::string(100000, 'a'), ""));
  EXPECT_PROBLEM(unterminated, "model.safetensors", "not valid JSON");
  EXPECT_LT(Joined(unterminated.problems).size(), 1000u) << Joined(unterminated.problems).substr(0, 1000);
}

TEST_F(MalformedSafetensors, MissingFields) {
  auto l = List(Safetensors(R"({"w": {"shape": [1]}, "v": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
                            std::string(4, '\0')));
  EXPECT_PROBLEM(l, "model.safetensors", "w", "missing dtype, data_offsets");
  ASSERT_EQ(l.tensors.size(), 1u);
  EXPECT_EQ(l.tensors[0].name, "v");
}

TEST_F(MalformedSafetensors, MetadataIgnored) {
  auto l = List(
      Safetensors(R"({"__metadata__": {"format": "pt"}, "v": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                  std::string(8, '\0')));
  EXPECT_TRUE(l.problems.empty()) << Joined(l.problems);
  ASSERT_EQ(l.tensors.size(), 1u);
  // What safetensors refuses (checked with safetensors 0.7: "invalid type: integer"): metadata
  // that is not strings; null passes.
  const std::string tensor = R"("v": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";
  for (const char* meta : {"[1]", "5", R"({"a": 1})"}) {
    auto bad = List(Safetensors(absl::StrCat(R"({"__metadata__": )", meta, ", ", tensor, "}"), std::string(8, '\0')));
    EXPECT_PROBLEM(bad, "model.safetensors", "__metadata__ is not an object of string values");
  }
  auto null = List(Safetensors(absl::StrCat(R"({"__metadata__": null, )", tensor, "}"), std::string(8, '\0')));
  EXPECT_TRUE(null.problems.empty()) << Joined(null.problems);
  // nlohmann stops at a NUL: a header padded with NULs parsed; safetensors refuses it.
  auto nul = List(Safetensors(absl::StrCat("{", tensor, "}", std::string(4, '\0')), std::string(8, '\0')));
  EXPECT_PROBLEM(nul, "model.safetensors", "header holds a NUL byte");
}

TEST_F(MalformedSafetensors, OffsetsOutOfOrderAndOverlapping) {
  auto l = List(Safetensors(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]},
                                "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                "c": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                            std::string(12, '\0')));
  EXPECT_PROBLEM(l, "model.safetensors", "a", "out of order");
  EXPECT_PROBLEM(l, "model.safetensors", "b", "c", "overlap");
}

// safetensors refuses a data section its tensors do not cover exactly ("incomplete metadata, file
// not fully covered", "invalid offset for tensor"); such a file passed inspect and loaded here.
TEST_F(MalformedSafetensors, DataBytesNoTensorOwns) {
  auto trailing = List(Safetensors(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
                                   std::string(8, '\0') + "appended"));
  EXPECT_PROBLEM(trailing, "model.safetensors", "8 bytes after the last tensor", "end at data byte 8");
  EXPECT_EQ(trailing.problems.size(), 1u) << Joined(trailing.problems);

  auto gaps = List(Safetensors(R"({"b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]},
                                   "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                               std::string(16, '\0')));
  EXPECT_PROBLEM(gaps, "model.safetensors", "4 data bytes [0, 4)", "before a (");
  EXPECT_PROBLEM(gaps, "model.safetensors", "4 data bytes [8, 12)", "before b (");
  EXPECT_EQ(gaps.problems.size(), 2u) << Joined(gaps.problems);

  // A refused entry's bytes are its own problem, not also a gap.
  auto refused = List(Safetensors(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
                                      "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
                                  std::string(12, '\0')));
  EXPECT_EQ(refused.problems.size(), 1u) << Joined(refused.problems);
}

// Quoting a deeply nested shape recursed once a level (SIGSEGV at ~60,000 levels); a 100 MB header
// of empty objects took 4 GB as a tree. Both are refused from the text's shape.
TEST_F(MalformedSafetensors, NestingAndValueCountAreBounded) {
  const std::string deep = R"({"a": {"dtype": "F32", "shape": )" + std::string(100000, '[') + std::string(100000, ']') +
                           R"(, "data_offsets": [0, 0]}})";
  auto nested = List(Safetensors(deep, ""));
  EXPECT_PROBLEM(nested, "model.safetensors", "nests deeper than 16 levels");
  std::string many = R"({"__metadata__": {}, "junk": [)";
  for (int i = 0; i < 4'000'001; ++i) many += "0,";
  many += "0]}";
  auto crowded = List(Safetensors(many, ""));
  EXPECT_PROBLEM(crowded, "model.safetensors", "more than 4000000 JSON values");
}

TEST_F(MalformedSafetensors, ByteLengthMismatch) {
  auto l = List(Safetensors(R"({"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 4]}})", std::string(4, '\0')));
  EXPECT_PROBLEM(l, "model.safetensors", "a", "holds 4 bytes", "needs 6");
  EXPECT_TRUE(l.tensors.empty());
  // Overflowing shapes do not crash.
  auto big =
      List(Safetensors(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 4]}})",
                       std::string(4, '\0')));
  EXPECT_PROBLEM(big, "model.safetensors", "a", "needs");
  // A zero dimension makes it 0 bytes, whatever the others (it said "more than 2^64").
  auto empty = List(Safetensors(R"({"a": {"dtype": "F32", "shape": [4611686018427387904, 0, 128],
                                        "data_offsets": [0, 4]}})",
                                std::string(4, '\0')));
  EXPECT_PROBLEM(empty, "model.safetensors", "a", "holds 4 bytes", "needs 0");
}

// A weight file's name on something that is not a file is named as such (it was "no weight files"
// or, for a shard, "absent").
TEST(CheckpointListingTest, WeightNamesOnWhatIsNotAFileSayWhatItIs) {
  const struct {
    std::string what;
    std::function<void(const fs::path&)> make;
  } cases[] = {
      {"a directory", [](const fs::path& p) { fs::create_directory(p); }},
      {"a symlink loop", [](const fs::path& p) { fs::create_symlink(p.filename(), p); }},
      {"a FIFO", [](const fs::path& p) { ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0); }},
  };
  for (const auto& c : cases) {
    TempDir tmp;
    c.make(tmp.path() / "model.safetensors");
    auto listing = ListCheckpoint(tmp.str());
    ASSERT_FALSE(listing.ok()) << c.what;
    EXPECT_NE(listing.status().message().find("model.safetensors in " + tmp.str() + " is " + c.what), std::string::npos)
        << listing.status();
  }
  TempDir sharded;
  WriteAll(sharded.path() / "model.safetensors.index.json",
           R"({"weight_map": {"w": "model-00001-of-00001.safetensors"}})");
  fs::create_directory(sharded.path() / "model-00001-of-00001.safetensors");
  auto listing = ListCheckpoint(sharded.str());
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_PROBLEM(*listing, "names shard model-00001-of-00001.safetensors, which is a directory, not a regular file");
  // The index itself: it read as absent ("N .safetensors files but no index").
  for (const auto& c : cases) {
    TempDir tmp;
    c.make(tmp.path() / "model.safetensors.index.json");
    WriteAll(tmp.path() / "model-00001-of-00002.safetensors", "");
    WriteAll(tmp.path() / "model-00002-of-00002.safetensors", "");
    auto index = ListCheckpoint(tmp.str());
    ASSERT_FALSE(index.ok()) << c.what;
    EXPECT_NE(index.status().message().find("model.safetensors.index.json is " + c.what + ", not a regular file"),
              std::string::npos)
        << index.status();
  }
}

// An index naming no tensor is unusable, and the shards present are listed (every key was
// reported missing and the shards never mentioned).
TEST(CheckpointListingTest, IndexWithAnEmptyWeightMapListsTheShardsPresent) {
  TempDir tmp;
  WriteAll(tmp.path() / "model.safetensors.index.json", R"({"weight_map": {}})");
  WriteAll(tmp.path() / "model-00001-of-00001.safetensors",
           Safetensors(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", std::string(4, '\0')));
  auto listing = ListCheckpoint(tmp.str());
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_PROBLEM(*listing, "model.safetensors.index.json: weight_map names no tensor");
  ASSERT_EQ(listing->tensors.size(), 1u);
  EXPECT_EQ(listing->tensors[0].name, "w");
  // An index past 64 MiB (a sparse file here) is refused unread, and the shards listed.
  fs::resize_file(tmp.path() / "model.safetensors.index.json", (64u << 20) + 1);
  auto huge = ListCheckpoint(tmp.str());
  ASSERT_TRUE(huge.ok()) << huge.status();
  EXPECT_PROBLEM(*huge, "model.safetensors.index.json: 67108865 bytes, more than the 67108864 read at most");
  EXPECT_EQ(huge->tensors.size(), 1u);
}

// An index written for another checkpoint disagrees with its shard on every key: the report names
// the first 50 of each kind and counts the rest (300,000 bogus entries made a 48 MB report).
TEST(CheckpointListingTest, KeyByKeyIndexProblemsAreCappedPerShardAndKind) {
  TempDir tmp;
  const std::string shard = "model-00001-of-00001.safetensors";
  nlohmann::json header = nlohmann::json::object();
  for (int i = 0; i < 53; ++i) {
    header["real." + std::to_string(i)] = {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {4 * i, 4 * i + 4}}};
  }
  WriteAll(tmp.path() / shard, Safetensors(header.dump(), std::string(4 * 53, '\0')));
  nlohmann::json index = {{"weight_map", nlohmann::json::object()}};
  for (int i = 0; i < 1000; ++i) index["weight_map"]["bogus." + std::to_string(i)] = shard;
  WriteAll(tmp.path() / "model.safetensors.index.json", index.dump());
  auto listing = ListCheckpoint(tmp.str());
  ASSERT_TRUE(listing.ok()) << listing.status();
  int not_named = 0, not_contained = 0;
  for (const std::string& p : listing->problems) {
    not_named += p.find(", which index model.safetensors.index.json does not name") != std::string::npos;
    not_contained += p.find("but the shard does not contain it") != std::string::npos;
  }
  EXPECT_EQ(not_named, 50) << Joined(listing->problems);
  EXPECT_EQ(not_contained, 50) << Joined(listing->problems);
  EXPECT_PROBLEM(*listing,
                 shard + ": 3 more keys in the shard that the index does not name (53 in all, the first 50 above)");
  EXPECT_PROBLEM(*listing, shard +
                               ": 950 more keys that the index lists in this shard but the shard does not contain "
                               "(1000 in all, the first 50 above)");
  EXPECT_EQ(listing->problems.size(), 102u) << Joined(listing->problems);
  EXPECT_EQ(listing->tensors.size(), 53u);
}

// A tensor named twice in one header was taken from its last entry, silently (across shards it
// was already refused): which bytes are the tensor is ambiguous.
TEST_F(MalformedSafetensors, TensorNamedTwiceInOneHeaderIsRefused) {
  auto l = List(Safetensors(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                "v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
                                "w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
                            std::string(12, '\0')));
  EXPECT_PROBLEM(l, "model.safetensors: tensor w appears more than once in the header");
  EXPECT_EQ(l.problems.size(), 1u) << Joined(l.problems);
  // Keys repeated below the top level name no tensor.
  auto nested = List(Safetensors(R"({"__metadata__": {"a": "1", "a": "2"},
                                     "v": {"dtype": "F32", "shape": [1], "shape": [1], "data_offsets": [0, 4]}})",
                                 std::string(4, '\0')));
  EXPECT_TRUE(nested.problems.empty()) << Joined(nested.problems);
}

TEST_F(MalformedSafetensors, UnknownDtypeIsListed) {
  auto l = List(Safetensors(R"({"q": {"dtype": "Q4_K", "shape": [3], "data_offsets": [0, 5]}})", std::string(5, '\0')));
  EXPECT_TRUE(l.problems.empty()) << Joined(l.problems);
  ASSERT_EQ(l.tensors.size(), 1u);
  EXPECT_EQ(l.tensors[0].dtype, "Q4_K");
  auto read = ReadCheckpointTensors(l);
  ASSERT_FALSE(read.ok());
  EXPECT_NE(read.status().message().find("q has dtype Q4_K"), std::string::npos) << read.status();
}

TEST_F(MalformedSafetensors, Truncated) {
  std::string full = ReadAll(fs::path(Fixture("st_single")) / "model.safetensors");
  auto l = List(full.substr(0, full.size() - 10));
  EXPECT_PROBLEM(l, "model.safetensors", "truncated: header declares", "data bytes, file holds");
  // Whatever is still listed lies inside the file and reads back.
  for (const TensorRecord& r : l.tensors) EXPECT_LE(r.data_offset + r.data_bytes, full.size() - 10);
  EXPECT_TRUE(ReadCheckpointTensors(l).ok());
}

TEST_F(MalformedSafetensors, SeveralProblemsInOneFile) {
  auto l = List(Safetensors(R"({"a": {"dtype": "F32", "shape": [2]},
                                "b": {"dtype": "F16", "shape": [4], "data_offsets": [0, 6]},
                                "c": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                                "d": {"dtype": "F32", "shape": [1], "data_offsets": [16, 20]}})",
                            std::string(16, '\0')));
  EXPECT_PROBLEM(l, "model.safetensors", "a", "missing data_offsets");
  EXPECT_PROBLEM(l, "model.safetensors", "b", "needs 8");
  EXPECT_PROBLEM(l, "model.safetensors", "truncated: header declares 20 data bytes, file holds 16");
  EXPECT_EQ(l.problems.size(), 3u) << Joined(l.problems);
  ASSERT_EQ(l.tensors.size(), 1u);
  EXPECT_EQ(l.tensors[0].name, "c");
}

TEST_F(MalformedSafetensors, RandomBytesNeverCrash) {
  std::mt19937 rng(1234);
  for (int i = 0; i < 200; ++i) {
    std::string bytes(rng() % 300, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    if (i % 2 == 0 && bytes.size() >= 8) {  // plausible header size
      const uint64_t n = rng() % (bytes.size() - 7);
      for (int k = 0; k < 8; ++k) bytes[k] = static_cast<char>((n >> (8 * k)) & 0xff);
    }
    auto l = List(bytes);
    EXPECT_TRUE(ReadCheckpointTensors(l).status().code() != absl::StatusCode::kUnknown);
  }
}

// ---------------------------------------------------------------------------------------------
// Damaged .bin files.

class DamagedBin : public ::testing::Test {
 protected:
  CheckpointListing List(const std::string& bytes) {
    WriteAll(tmp_.path() / "pytorch_model.bin", bytes);
    auto listing = ListCheckpoint(tmp_.str());
    EXPECT_TRUE(listing.ok()) << listing.status();
    return listing.ok() ? *listing : CheckpointListing{};
  }
  static void ExpectShortMessage(const CheckpointListing& l) {
    for (const std::string& p : l.problems) {
      EXPECT_EQ(p.find('\n'), std::string::npos) << p;  // no backtrace
      EXPECT_EQ(p.find("Exception raised from"), std::string::npos) << p;
      EXPECT_LT(p.size(), 500u) << p;
    }
  }
  TempDir tmp_;
};

TEST_F(DamagedBin, Truncated) {
  auto l = List(ReadAll(fs::path(Fixture("bin_truncated")) / "pytorch_model.bin"));
  EXPECT_PROBLEM(l, "pytorch_model.bin: not a readable torch.save archive: ");
  EXPECT_TRUE(l.tensors.empty());
  EXPECT_TRUE(l.files.empty());
  ExpectShortMessage(l);
}

TEST_F(DamagedBin, ZeroBytes) {
  auto l = List("");
  EXPECT_PROBLEM(l, "pytorch_model.bin: not a readable torch.save archive", "empty");
  ExpectShortMessage(l);
}

TEST_F(DamagedBin, RandomBytes) {
  std::mt19937 rng(99);
  for (int i = 0; i < 20; ++i) {
    std::string bytes(1 + rng() % 2000, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    if (i % 2 == 0) bytes.replace(0, 4, std::string("PK\x03\x04", 4));
    auto l = List(bytes);
    EXPECT_PROBLEM(l, "pytorch_model.bin");
    ExpectShortMessage(l);
  }
}

TEST_F(DamagedBin, CorruptedArchiveBytes) {
  // Flip bytes inside a valid archive: every outcome is a listing or a problem, never a crash.
  const std::string good = ReadAll(fs::path(Fixture("bin_single")) / "pytorch_model.bin");
  std::mt19937 rng(7);
  for (int i = 0; i < 30; ++i) {
    std::string bytes = good;
    for (int k = 0; k < 8; ++k) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    auto l = List(bytes);
    ExpectShortMessage(l);
    if (l.problems.empty()) (void)ReadCheckpointTensors(l);
  }
  ClearPytorchBinCache();
}

// A torch.save archive of `pkl` as data.pkl and `storages` as data/<key>, the records compressed
// when asked (torch.save never compresses).
std::string TorchArchive(const std::string& pkl, const std::map<std::string, std::string>& storages,
                         bool compress = false, const std::map<std::string, std::string>& records = {}) {
  std::string bytes;
  {
    caffe2::serialize::PyTorchStreamWriter writer([&bytes](const void* data, size_t n) {
      bytes.append(static_cast<const char*>(data), n);
      return n;
    });
    writer.writeRecord("data.pkl", pkl.data(), pkl.size(), compress);
    for (const auto& [key, data] : storages) writer.writeRecord("data/" + key, data.data(), data.size(), compress);
    for (const auto& [name, data] : records) writer.writeRecord(name, data.data(), data.size(), compress);
    writer.writeEndOfFile();
  }
  return bytes;
}

// Protocol-2 pickle of {"w": a float tensor of `size` elements at `offset` in storage "0" of
// `storage_elements` floats}, as torch.save writes a state dict (an OrderedDict aside).
std::string OneTensorPickle(int32_t size, int32_t offset, int32_t storage_elements, int32_t stride = 1) {
  auto unicode = [](const std::string& s) {
    const uint32_t n = static_cast<uint32_t>(s.size());
    return std::string("X") + std::string(reinterpret_cast<const char*>(&n), 4) + s;
  };
  auto int4 = [](int32_t v) { return std::string("J") + std::string(reinterpret_cast<const char*>(&v), 4); };
  return std::string("\x80\x02}", 3) + unicode("w") + "ctorch._utils\n_rebuild_tensor_v2\n(" + "(" +
         unicode("storage") + "ctorch\nFloatStorage\n" + unicode("0") + unicode("cpu") + int4(storage_elements) + "tQ" +
         int4(offset) + int4(size) + "\x85" + int4(stride) + "\x85" + "\x89" + "ccollections\nOrderedDict\n)R" + "tRs.";
}

// What LibTorch's unpickler takes without a check, refused naming the file and the cause: a view
// past its storage (it loaded, and failed at model build naming nothing), a pickle nested past
// what LibTorch can destroy without overflowing the stack (a 660 KB file crashed every command),
// and a compressed record (a 2 MB file asked for 2 GB).
TEST_F(DamagedBin, WhatTheUnpicklerDoesNotCheckIsRefused) {
  const std::string storage(4 * sizeof(float), '\0');
  auto fine = List(TorchArchive(OneTensorPickle(2, 2, 4), {{"0", storage}}));
  EXPECT_TRUE(fine.problems.empty()) << fine.problems[0];
  ASSERT_EQ(fine.tensors.size(), 1u);
  EXPECT_EQ(fine.tensors[0].name, "w");
  ClearPytorchBinCache();
  auto past = List(TorchArchive(OneTensorPickle(2, 1000000, 4), {{"0", storage}}));
  EXPECT_PROBLEM(past, "pytorch_model.bin: tensor w: ", "reaches past its storage of 16 bytes");
  ExpectShortMessage(past);
  const std::string nested = std::string("\x80\x02", 2) + std::string(60000, ']') + std::string(59999, 'a') + ".";
  auto deep = List(TorchArchive(nested, {}));
  EXPECT_PROBLEM(deep, "pytorch_model.bin", "data.pkl nests 60000 values deep");
  const std::string padded = std::string("\x80\x02}.", 4) + std::string(4 << 20, '\0');  // after STOP: never read
  auto bomb = List(TorchArchive(padded, {}, /*compress=*/true));
  EXPECT_PROBLEM(bomb, "pytorch_model.bin", "record archive/data.pkl unpacks to", "more than the file's");
  ClearPytorchBinCache();
  // Any record, before LibTorch's reader unpacks its own (version, serialization_id): a 1 MB file
  // whose version record inflated to 1 GB took 2.2 GB and loaded.
  const std::string fine_pkl = OneTensorPickle(2, 2, 4);
  auto extra_bomb =
      List(TorchArchive(fine_pkl, {{"0", storage}}, /*compress=*/true, {{"extra", std::string(4 << 20, ' ')}}));
  EXPECT_PROBLEM(extra_bomb, "pytorch_model.bin", "record archive/extra unpacks to 4194304 bytes");
  ClearPytorchBinCache();
  // LibTorch allocates a string's declared length, and a memo table to the slot named, first: a
  // 16-byte pickle took 4.3 GB either way. Both are cut short or out of range before it runs.
  auto long_string = List(TorchArchive(std::string("\x80\x02X\xff\xff\xff\xff", 7) + "aaaaaaaaaa.", {}));
  EXPECT_PROBLEM(long_string, "pytorch_model.bin", "cannot follow opcode 0x58 at byte 2", "cut short");
  ClearPytorchBinCache();
  auto far_slot = List(TorchArchive(std::string("\x80\x02}r\x00\x00\x00\x10.", 9), {}));
  EXPECT_PROBLEM(far_slot, "pytorch_model.bin", "memo slot 268435456 at byte 3");
  ClearPytorchBinCache();
  // LibTorch's internal assertion reads as what is wrong, without its source path and bug-report
  // plea (SETITEM on an int: "isGenericDict() INTERNAL ASSERT FAILED at \"/pytorch/aten/...").
  auto not_a_dict = List(TorchArchive(std::string("\x80\x02K\x01K\x02K\x03s.", 10), {}));
  EXPECT_PROBLEM(not_a_dict, "pytorch_model.bin", "its pickle is not what torch.save writes",
                 "Expected GenericDict but got Int");
  EXPECT_EQ(Joined(not_a_dict.problems).find("report a bug"), std::string::npos) << Joined(not_a_dict.problems);
  ClearPytorchBinCache();
}

// Every opcode that builds a container counts towards the nesting depth, not only lists and dicts
// filled on the stack: 200,000 nested TUPLE1s (a 400 KB file) crashed every command (SIGSEGV, the
// stack overflowed while LibTorch freed the value), as did MARK-based TUPLE/LIST/DICT nesting and
// lists nested through the memo after they were built.
TEST_F(DamagedBin, EveryNestingOpcodeCountsDepth) {
  const std::string proto("\x80\x02", 2);
  auto le32 = [](uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); };
  auto repeat = [](const std::string& s, int n) {
    std::string out;
    for (int i = 0; i < n; ++i) out += s;
    return out;
  };
  std::string memo_chain;  // 60,000 lists in the memo, then each appended to the one before
  for (uint32_t i = 0; i < 60000; ++i) memo_chain += "]r" + le32(i) + "0";
  for (uint32_t i = 0; i + 1 < 60000; ++i) memo_chain += "j" + le32(i) + "j" + le32(i + 1) + "a0";
  const struct {
    std::string what;
    std::string pkl;
    std::string says;
  } cases[] = {
      {"TUPLE1", proto + "N" + std::string(200000, '\x85') + ".", "data.pkl nests 200000 values deep"},
      {"TUPLE2", proto + "N" + repeat("N\x86", 60000) + ".", "data.pkl nests 60000 values deep"},
      {"TUPLE3", proto + "N" + repeat("NN\x87", 60000) + ".", "data.pkl nests 60000 values deep"},
      {"MARK TUPLE", proto + std::string(60000, '(') + std::string(60000, 't') + ".", "nests 60000 values deep"},
      {"MARK LIST", proto + std::string(60000, '(') + std::string(60000, 'l') + ".", "nests 60000 values deep"},
      {"MARK DICT", proto + std::string(60000, '(') + std::string(60000, 'd') + ".", "nests 60000 values deep"},
      {"memo", proto + memo_chain + "N.", "data.pkl nests 60000 values deep"},
      {"bytes after STOP", proto + "N" + std::string(60000, '\x85') + ".\x95", "data.pkl nests 60000 values deep"},
      {"unknown opcode", proto + "N\x95.", "data.pkl: cannot follow opcode 0x95 at byte 3"},
  };
  for (const auto& c : cases) {
    auto l = List(TorchArchive(c.pkl, {}));
    EXPECT_PROBLEM(l, "pytorch_model.bin: not a readable torch.save archive: ", c.says) << c.what;
    if (c.what != "unknown opcode") {
      EXPECT_PROBLEM(l, "(a state dict nests at most 50000)") << c.what;
    }
    ExpectShortMessage(l);
  }
  // A state dict still loads.
  auto fine = List(TorchArchive(OneTensorPickle(2, 2, 4), {{"0", std::string(16, '\0')}}));
  EXPECT_TRUE(fine.problems.empty()) << Joined(fine.problems);
  ClearPytorchBinCache();
}

// A storage record shorter than the view of a tensor on it (cut, or 0 bytes) was read past its
// end: the checkpoint validated "ok" and generated garbage or NaN.
TEST_F(DamagedBin, StorageRecordShorterThanItsTensorIsRefused) {
  auto cut = List(TorchArchive(OneTensorPickle(4, 0, 4), {{"0", std::string(8, '\0')}}));
  EXPECT_PROBLEM(cut, "pytorch_model.bin: tensor w: needs 16 bytes of record data/0, which holds 8");
  EXPECT_TRUE(cut.tensors.empty());
  ExpectShortMessage(cut);
  auto empty = List(TorchArchive(OneTensorPickle(4, 0, 4), {{"0", ""}}));
  EXPECT_PROBLEM(empty, "pytorch_model.bin: tensor w: needs 16 bytes of record data/0, which holds 0");
  // The view's reach counts, not the storage's start: elements 2..3 of a 3-element record.
  auto offset = List(TorchArchive(OneTensorPickle(2, 2, 4), {{"0", std::string(12, '\0')}}));
  EXPECT_PROBLEM(offset, "pytorch_model.bin: tensor w: needs 16 bytes of record data/0, which holds 12");
  // A record longer than needed is fine (torch.load takes it too).
  auto longer = List(TorchArchive(OneTensorPickle(2, 0, 4), {{"0", std::string(12, '\0')}}));
  EXPECT_TRUE(longer.problems.empty()) << Joined(longer.problems);
  ClearPytorchBinCache();
}

// The byteorder record: "little" loads; "big" (torch.load swaps its bytes) is refused, not read
// as garbage; anything else is refused naming the record and its value.
TEST_F(DamagedBin, ByteorderRecordIsChecked) {
  const std::string pkl = OneTensorPickle(2, 0, 2);
  const std::string storage(8, '\0');
  auto little = List(TorchArchive(pkl, {{"0", storage}}, false, {{"byteorder", "little"}}));
  EXPECT_TRUE(little.problems.empty()) << Joined(little.problems);
  ClearPytorchBinCache();
  auto big = List(TorchArchive(pkl, {{"0", storage}}, false, {{"byteorder", "big"}}));
  EXPECT_PROBLEM(big, "pytorch_model.bin: record byteorder says \"big\"", "little-endian");
  EXPECT_TRUE(big.tensors.empty());
  auto junk = List(TorchArchive(pkl, {{"0", storage}}, false, {{"byteorder", std::string("mid\0dle", 7)}}));
  EXPECT_PROBLEM(junk, "pytorch_model.bin", "record byteorder holds \"mid\\x00dle\"; expected \"little\" or \"big\"");
  ExpectShortMessage(junk);
  ClearPytorchBinCache();
}

// torch.save never writes a negative stride; LibTorch's unpickler made one positive (c10's
// set_sizes_and_strides does), so the file loaded with its sign ignored.
TEST_F(DamagedBin, NegativeStrideIsRefusedNamingTheKey) {
  auto l = List(TorchArchive(OneTensorPickle(2, 3, 4, /*stride=*/-1), {{"0", std::string(16, '\0')}}));
  EXPECT_PROBLEM(l, "pytorch_model.bin: tensor w: its pickled view has a negative stride",
                 "expected non-negative sizes and strides");
  EXPECT_TRUE(l.tensors.empty());
  ExpectShortMessage(l);
  ClearPytorchBinCache();
  auto size = List(TorchArchive(OneTensorPickle(-2, 0, 4), {{"0", std::string(16, '\0')}}));
  EXPECT_PROBLEM(size, "pytorch_model.bin: tensor w: its pickled view has a negative size");
  ClearPytorchBinCache();
}

TEST_F(DamagedBin, LegacyFormatIsUnsupported) {
  auto l = List(ReadAll(fs::path(Fixture("bin_legacy")) / "pytorch_model.bin"));
  EXPECT_PROBLEM(l, "pytorch_model.bin", "legacy", "not supported");
  ExpectShortMessage(l);
}

TEST_F(DamagedBin, LegacyShardInShardedBin) {
  TempDir tmp;
  fs::copy_file(fs::path(Fixture("bin_legacy")) / "pytorch_model.bin", tmp.path() / "pytorch_model-00001-of-00001.bin");
  WriteAll(tmp.path() / "pytorch_model.bin.index.json",
           R"({"metadata": {}, "weight_map": {"w": "pytorch_model-00001-of-00001.bin"}})");
  auto listing = ListCheckpoint(tmp.str());
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_PROBLEM(*listing, "pytorch_model-00001-of-00001.bin", "legacy");
  EXPECT_EQ(listing->problems.size(), 1u) << Joined(listing->problems);
}

// An unreadable weights file is one problem naming the file as unreadable, not also every key
// it would have held as missing (issue 19). The open failure is real and root cannot bypass it:
// RLIMIT_NOFILE at the lowest free descriptor makes open() fail with EMFILE.
std::string ModelFixture(const std::string& name) { return std::string(GLMSERVE_FIXTURES_DIR) + "/models/" + name; }

// Copies `files` of the fixture model `name` into `tmp` (to edit them there).
void CopyModelFixture(const std::string& name, const TempDir& tmp, std::initializer_list<const char*> files) {
  for (const char* f : files) fs::copy_file(fs::path(ModelFixture(name)) / f, tmp.path() / f);
}

size_t CountContaining(const std::vector<std::string>& v, const std::string& needle) {
  size_t n = 0;
  for (const std::string& s : v) n += s.find(needle) != std::string::npos;
  return n;
}

// An index entry whose shard name holds a NUL: the path was cut there when opened (the real shard
// read twice, nine false "is in two shards"), and the text report ended at the NUL.
TEST(CheckpointListingTest, IndexShardNameWithANulIsRefusedNamingTheEntry) {
  TempDir tmp;
  for (const auto& entry : fs::directory_iterator(ModelFixture("glm-mha-safetensors-sharded"))) {
    if (entry.path().filename() != "expected.json") fs::copy_file(entry.path(), tmp.path() / entry.path().filename());
  }
  const fs::path index = tmp.path() / "model.safetensors.index.json";
  nlohmann::json j = nlohmann::json::parse(ReadAll(index));
  const std::string key = "model.layers.0.self_attn.k_proj.weight";
  const std::string shard = j["weight_map"][key].get<std::string>();
  j["weight_map"][key] = shard + std::string("\0.evil", 6);
  WriteAll(index, j.dump());
  auto listing = ListCheckpoint(tmp.str());
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_PROBLEM(*listing, "model.safetensors.index.json: weight_map entry for " + key + " names \"" + shard +
                               "\\x00.evil\", which holds a NUL byte");
  EXPECT_EQ(CountContaining(listing->problems, "two shards"), 0u) << Joined(listing->problems);
  // The report as inspect prints it: no NUL, every problem there.
  auto report = InspectCheckpoint(tmp.str());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_FALSE(report->problems.empty());
  for (const std::string& p : report->problems) EXPECT_EQ(p.find('\0'), std::string::npos) << p;
  EXPECT_EQ(CountContaining(report->problems, "which holds a NUL byte"), 1u) << Joined(report->problems);
}

// A tensor a readable file names but cannot give (its entry refused) is one problem, not also a
// missing key; with a wrapper prefix too (the index and the file name keys as stored).
// A shard's entry that is refused is not also "listed by the index but not in the shard".
TEST(CheckpointListingTest, RefusedEntryInAShardIsOneProblem) {
  TempDir tmp;
  for (const auto& entry : fs::directory_iterator(ModelFixture("glm-mha-safetensors-sharded"))) {
    fs::copy_file(entry.path(), tmp.path() / entry.path().filename());
  }
  const fs::path file = tmp.path() / "model-00002-of-00003.safetensors";
  const std::string bytes = ReadAll(file);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<unsigned char>(bytes[i]);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, header_size));
  std::string key;
  for (const auto& [name, entry] : header.items()) {
    if (name != "__metadata__") key = name;
  }
  ASSERT_FALSE(key.empty());
  header[key]["shape"] = {1};  // the entry's bytes no longer match its shape
  WriteAll(file, Safetensors(header.dump(), bytes.substr(8 + header_size)));
  absl::StatusOr<CheckpointListing> listing = ListCheckpoint(tmp.str());
  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_EQ(CountContaining(listing->problems, key), 1u) << Joined(listing->problems);
  EXPECT_EQ(CountContaining(listing->problems, "does not contain"), 0u) << Joined(listing->problems);
}

TEST(CheckpointListingTest, RefusedEntryIsNotAlsoAMissingKey) {
  TempDir tmp;
  CopyModelFixture("glm-prefix-base-model-safetensors", tmp, {"config.json", "model.safetensors"});
  const fs::path file = tmp.path() / "model.safetensors";
  const std::string bytes = ReadAll(file);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<unsigned char>(bytes[i]);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, header_size));
  const std::string key = "base_model.model.model.layers.0.mlp.down_proj.weight";
  ASSERT_TRUE(header.contains(key)) << header.dump();
  header[key]["data_offsets"][1] = -1;
  WriteAll(file, Safetensors(header.dump(), bytes.substr(8 + header_size)));
  auto report = InspectCheckpoint(tmp.str());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(CountContaining(report->problems, key + ": data_offsets"), 1u) << Joined(report->problems);
  EXPECT_EQ(report->problems.size(), 1u) << Joined(report->problems);
}

// config.json without hidden_size takes transformers' default (4096, as GlmConfig does); when the
// tensors disagree the report names the field, not only 23 shape mismatches.
TEST(ConfigAgainstTensors, DefaultedHiddenSizeIsNamedWhenShapesDisagree) {
  TempDir tmp;
  CopyModelFixture("glm4-gqa-safetensors", tmp, {"config.json", "model.safetensors"});
  nlohmann::json config = nlohmann::json::parse(ReadAll(tmp.path() / "config.json"));
  config.erase("hidden_size");
  WriteAll(tmp.path() / "config.json", config.dump());
  auto report = InspectCheckpoint(tmp.str());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(CountContaining(report->problems,
                            "config.json hidden_size is 4096 (absent from config.json: transformers' default) but "
                            "the embedding 'model.embed_tokens.weight' has 32 columns"),
            1u)
      << Joined(report->problems);
  EXPECT_EQ(CountContaining(report->problems, "config.json does not set hidden_size (default 4096)"), 1u)
      << Joined(report->problems);
  // null is not absent: transformers keeps the None (and fails building the model).
  config["hidden_size"] = nullptr;
  WriteAll(tmp.path() / "config.json", config.dump());
  auto null = InspectCheckpoint(tmp.str());
  ASSERT_TRUE(null.ok()) << null.status();
  EXPECT_EQ(
      CountContaining(null->problems, "config.json: field 'hidden_size': expected a positive integer, found null"), 1u)
      << Joined(null->problems);
}

// A size of the wrong type is one problem (it was read as the default, and every tensor shape
// then mismatched "config.json hidden_size is 4096"); a count config.json leaves out says it is
// transformers' default where a message quotes it.
TEST(ConfigAgainstTensors, ABadSizeIsOneProblemAndADefaultedCountSaysSo) {
  TempDir tmp;
  CopyModelFixture("glm4-gqa-safetensors", tmp, {"config.json", "model.safetensors"});
  nlohmann::json config = nlohmann::json::parse(ReadAll(tmp.path() / "config.json"));
  config["hidden_size"] = "32";
  WriteAll(tmp.path() / "config.json", config.dump());
  auto bad = InspectCheckpoint(tmp.str());
  ASSERT_TRUE(bad.ok()) << bad.status();
  ASSERT_EQ(bad->problems.size(), 1u) << Joined(bad->problems);
  EXPECT_NE(bad->problems[0].find("field 'hidden_size': expected an integer, found string"), std::string::npos)
      << bad->problems[0];
  config["hidden_size"] = 32;
  config.erase("num_hidden_layers");
  WriteAll(tmp.path() / "config.json", config.dump());
  auto defaulted = InspectCheckpoint(tmp.str());
  ASSERT_TRUE(defaulted.ok()) << defaulted.status();
  EXPECT_EQ(CountContaining(defaulted->problems,
                            "config.json num_hidden_layers is 40 (absent from config.json: "
                            "transformers' default) but the checkpoint has no tensors for"),
            1u)
      << Joined(defaulted->problems);
}

// A fused stored key that is missing (ChatGLM's query_key_value, GLM-4's gate_up_proj) is named
// once, not once per slot it provides; an original ChatGLM head size whose rotary half is odd
// names kv_channels (the field it has), not partial_rotary_factor.
TEST(ConfigAgainstTensors, AMissingFusedKeyIsNamedOnceAndChatGlmRotaryNamesKvChannels) {
  const std::string dir = ModelFixture("chatglm-glm4-9b-bf16-safetensors-sharded");
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<CheckpointListing> listing = ListCheckpoint(dir);
  ASSERT_TRUE(listing.ok()) << listing.status();
  const std::string fused = "transformer.encoder.layers.0.self_attention.query_key_value.bias";
  auto& tensors = listing->tensors;
  const auto before = tensors.size();
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(), [&](const TensorRecord& r) { return r.name == fused; }),
                tensors.end());
  ASSERT_EQ(tensors.size() + 1, before);
  const WeightPlan plan = PlanWeights(*config, *listing);
  EXPECT_EQ(CountContaining(plan.problems, "missing key '" + fused + "'"), 1u) << Joined(plan.problems);

  TempDir tmp;
  for (const auto& entry : fs::directory_iterator(dir))
    fs::copy_file(entry.path(), tmp.path() / entry.path().filename());
  nlohmann::json chatglm = nlohmann::json::parse(ReadAll(tmp.path() / "config.json"));
  chatglm["kv_channels"] = 10;
  WriteAll(tmp.path() / "config.json", chatglm.dump());
  const absl::StatusOr<ModelConfig> odd = LoadModelConfig(tmp.str());
  ASSERT_FALSE(odd.ok());
  EXPECT_NE(odd.status().message().find("field 'kv_channels': 10 gives a rotary dimension of 5"), std::string::npos)
      << odd.status();
  EXPECT_EQ(odd.status().message().find("partial_rotary_factor"), std::string::npos) << odd.status();
}

// A header naming 100,000 tensors: read in linear time (a parse callback made it quadratic: 59 s),
// the stray names listed 20 and counted, so the missing keys still make the listed problems, and
// the report's list stops at 200 with a count of the rest.
TEST(ConfigAgainstTensors, AHeaderOfManyStrayNamesIsSummarizedAndTheMissingKeysListed) {
  TempDir tmp;
  CopyModelFixture("glm4-gqa-safetensors", tmp, {"config.json"});
  std::string header = "{";
  for (int i = 0; i < 100000; ++i) {
    absl::StrAppend(&header, i == 0 ? "" : ",", "\"t", i,
                    "\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}");
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string file(8, '\0');
  const uint64_t size = header.size();
  std::memcpy(file.data(), &size, 8);
  WriteAll(tmp.path() / "model.safetensors", file + header);
  auto report = InspectCheckpoint(tmp.str());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(CountContaining(report->problems, "unexpected key 't"), 20u) << Joined(report->problems);
  EXPECT_EQ(CountContaining(report->problems, "... and 99980 more unexpected keys (100000 in all"), 1u)
      << Joined(report->problems);
  EXPECT_EQ(CountContaining(report->problems, "missing key 'model.embed_tokens.weight'"), 1u)
      << Joined(report->problems);
  EXPECT_LE(report->problems.size(), 200u);

  // More problems than a report lists: the first 200, and the count of the rest.
  nlohmann::json config = nlohmann::json::parse(ReadAll(tmp.path() / "config.json"));
  config["num_hidden_layers"] = 40;  // 40 layers' keys missing: ~400 problems
  WriteAll(tmp.path() / "config.json", config.dump());
  auto many = InspectCheckpoint(tmp.str());
  ASSERT_TRUE(many.ok()) << many.status();
  EXPECT_EQ(many->problems.size(), 200u);
  EXPECT_GT(many->problems_unlisted, 0);
  EXPECT_NE(many->ProblemsHeading().find(", the first 200 listed"), std::string::npos) << many->ProblemsHeading();
}

TEST(UnreadableWeights, OpenFailureIsOneProblemWithoutMissingKeys) {
  TempDir tmp;
  CopyModelFixture("glm4-gqa-safetensors", tmp, {"config.json", "model.safetensors"});
  absl::StatusOr<ModelConfig> config = LoadModelConfig(tmp.str());
  ASSERT_TRUE(config.ok()) << config.status();

  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  const int lowest_free = ::dup(0);
  ASSERT_GE(lowest_free, 0);
  ::close(lowest_free);
  rlimit low = old;
  low.rlim_cur = static_cast<rlim_t>(lowest_free);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  absl::StatusOr<CheckpointListing> listing = ListCheckpoint(tmp.str());
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &old), 0);

  ASSERT_TRUE(listing.ok()) << listing.status();
  EXPECT_PROBLEM(*listing, "model.safetensors: unreadable: cannot open: Too many open files");
  ASSERT_EQ(listing->unreadable_files, std::vector<std::string>{"model.safetensors"});
  EXPECT_TRUE(listing->unreadable_keys_unknown);
  const WeightPlan plan = PlanWeights(*config, *listing);
  EXPECT_EQ(plan.problems.size(), 1u) << Joined(plan.problems);
  EXPECT_EQ(CountContaining(plan.problems, "missing key"), 0u) << Joined(plan.problems);
  EXPECT_TRUE(plan.tensors.empty());
}

TEST(UnreadableWeights, DamagedShardSuppressesOnlyItsOwnKeys) {
  TempDir tmp;
  for (const auto& entry : fs::directory_iterator(ModelFixture("glm-mha-safetensors-sharded"))) {
    fs::copy_file(entry.path(), tmp.path() / entry.path().filename());
  }
  absl::StatusOr<ModelConfig> config = LoadModelConfig(tmp.str());
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<CheckpointListing> good = ListCheckpoint(tmp.str());
  ASSERT_TRUE(good.ok()) << good.status();
  ASSERT_TRUE(PlanWeights(*config, *good).problems.empty()) << Joined(PlanWeights(*config, *good).problems);

  WriteAll(tmp.path() / "model-00002-of-00003.safetensors", "");  // zero bytes: unreadable
  absl::StatusOr<CheckpointListing> listing = ListCheckpoint(tmp.str());
  ASSERT_TRUE(listing.ok()) << listing.status();
  ASSERT_EQ(listing->unreadable_files, std::vector<std::string>{"model-00002-of-00003.safetensors"});
  EXPECT_FALSE(listing->unreadable_keys_unknown);
  EXPECT_FALSE(listing->unreadable_keys.empty());
  WeightPlan plan = PlanWeights(*config, *listing);
  EXPECT_EQ(plan.problems.size(), 1u) << Joined(plan.problems);
  EXPECT_EQ(CountContaining(plan.problems, "model-00002-of-00003.safetensors"), 1u) << Joined(plan.problems);
  EXPECT_EQ(CountContaining(plan.problems, "missing key"), 0u) << Joined(plan.problems);

  // An absent shard is one problem too (its keys were listed again as missing, one line each).
  fs::remove(tmp.path() / "model-00002-of-00003.safetensors");
  absl::StatusOr<CheckpointListing> absent = ListCheckpoint(tmp.str());
  ASSERT_TRUE(absent.ok()) << absent.status();
  const WeightPlan absent_plan = PlanWeights(*config, *absent);
  EXPECT_EQ(absent_plan.problems.size(), 1u) << Joined(absent_plan.problems);
  EXPECT_EQ(CountContaining(absent_plan.problems, "which is absent"), 1u) << Joined(absent_plan.problems);

  // A key missing from a readable shard is still reported.
  CheckpointListing pruned = *listing;
  ASSERT_FALSE(pruned.tensors.empty());
  const std::string dropped = pruned.tensors.front().name;
  ASSERT_EQ(pruned.unreadable_keys.count(dropped), 0u);
  pruned.tensors.erase(pruned.tensors.begin());
  plan = PlanWeights(*config, pruned);
  EXPECT_GE(CountContaining(plan.problems, "missing key '" + dropped + "'"), 1u) << Joined(plan.problems);
}

}  // namespace
}  // namespace glmserve
