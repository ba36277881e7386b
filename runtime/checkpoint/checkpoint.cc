#include "runtime/checkpoint/checkpoint.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "runtime/bounded_file.h"
#include "runtime/checkpoint/pytorch_bin.h"
#include "runtime/checkpoint/safetensors.h"
#include "runtime/json_util.h"
#include "runtime/printable_text.h"

namespace glmserve {
namespace {

namespace fs = std::filesystem;

constexpr char kStIndex[] = "model.safetensors.index.json";
constexpr char kStSingle[] = "model.safetensors";
constexpr char kBinIndex[] = "pytorch_model.bin.index.json";
constexpr char kBinSingle[] = "pytorch_model.bin";

bool IsRegularFile(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

bool HasSuffix(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Regular files in `dir` whose names end with `suffix`, sorted.
std::vector<std::string> FilesWithSuffix(const fs::path& dir, const std::string& suffix) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (HasSuffix(name, suffix) && IsRegularFile(it->path())) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Lists one weight file of either kind; false when it could not be read at all.
bool ListOne(bool safetensors, const fs::path& dir, const std::string& file, std::vector<TensorRecord>* tensors,
             std::vector<std::string>* problems, std::set<std::string>* refused_keys) {
  const std::string path = (dir / file).string();
  if (safetensors) return ListSafetensorsFile(path, file, tensors, problems, refused_keys);
  return ListPytorchBinFile(path, file, tensors, problems);
}

// Parses the index file; on success fills `weight_map` (key -> shard file) and returns true.
bool ReadIndex(const fs::path& dir, const std::string& index_name, std::map<std::string, std::string>* weight_map,
               std::vector<std::string>* problems) {
  // A shard index is tens of KB (a few MB for thousands of tensors): bounded like config.json, so a
  // link to /dev/zero is not read until memory runs out.
  constexpr std::uintmax_t kMaxIndexBytes = 64u << 20;
  const absl::StatusOr<std::string> text = ReadBoundedFile(dir / index_name, kMaxIndexBytes, index_name);
  if (!text.ok()) {
    problems->push_back(std::string(text.status().message()));
    return false;
  }
  if (std::string shape = JsonShapeProblem(*text, /*max_depth=*/16, /*max_values=*/4'000'000); !shape.empty()) {
    problems->push_back(absl::StrCat(index_name, ": ", shape, " (an index nests 2 levels, a value a tensor)"));
    return false;
  }
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(*text);
  } catch (const nlohmann::json::exception& e) {
    problems->push_back(absl::StrCat(index_name, ": invalid JSON: ", JsonErrorText(e)));
    return false;
  }
  if (!json.is_object() || !json.contains("weight_map") || !json["weight_map"].is_object()) {
    problems->push_back(absl::StrCat(index_name, ": has no \"weight_map\" object"));
    return false;
  }
  for (auto it = json["weight_map"].begin(); it != json["weight_map"].end(); ++it) {
    if (!it.value().is_string()) {
      problems->push_back(
          absl::StrCat(index_name, ": weight_map entry for ", PrintableText(it.key()), " is not a file name string"));
      continue;
    }
    const std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
      problems->push_back(absl::StrCat(index_name, ": weight_map entry for ", PrintableText(it.key()), " names ",
                                       shard.empty() ? "an empty file name" : PrintableText(shard),
                                       ", which is not a file in the checkpoint directory"));
      continue;
    }
    // A NUL ends the path where the file is opened (the entry named another shard in effect);
    // no shard's name holds a control character.
    if (PrintableText(shard) != shard) {
      problems->push_back(absl::StrCat(index_name, ": weight_map entry for ", PrintableText(it.key()), " names \"",
                                       PrintableText(shard), "\", which holds a ",
                                       shard.find('\0') != std::string::npos ? "NUL byte" : "control character",
                                       "; expected a shard file name"));
      continue;
    }
    (*weight_map)[it.key()] = shard;
  }
  return true;
}

// Lines a report gives one kind of key-by-key disagreement between an index and one of its
// shards; past it, one line counts the rest. An index written for another checkpoint disagrees on
// every key (300,000 keys made a 48 MB report); a renamed key or two is still named in full.
constexpr int kKeyLinesPerShardAndKind = 50;

// Key-by-key problems, at most kKeyLinesPerShardAndKind lines per (shard, kind), then a count.
class KeyProblems {
 public:
  explicit KeyProblems(std::vector<std::string>* problems) : problems_(problems) {}
  // make_line() is called only while the (shard, kind) is under its limit.
  template <typename MakeLine>
  void Add(const std::string& shard, const char* kind, MakeLine make_line) {
    if (++counts_[{shard, kind}] <= kKeyLinesPerShardAndKind) problems_->push_back(make_line());
  }
  // Appends the counts of the lines left out, one per (shard, kind).
  void Finish() {
    for (const auto& [where, count] : counts_) {
      if (count <= kKeyLinesPerShardAndKind) continue;
      problems_->push_back(absl::StrCat(where.first, ": ", count - kKeyLinesPerShardAndKind, " more keys ",
                                        where.second, " (", count, " in all, the first ", kKeyLinesPerShardAndKind,
                                        " above)"));
    }
    counts_.clear();
  }

 private:
  std::vector<std::string>* problems_;
  std::map<std::pair<std::string, std::string>, int64_t> counts_;  // (shard, kind) -> problems seen
};

void ListSharded(bool safetensors, const fs::path& dir, const std::string& index_name, CheckpointListing* listing) {
  const std::string suffix = safetensors ? ".safetensors" : ".bin";
  std::map<std::string, std::string> weight_map;
  std::vector<std::string> shards;
  bool index_ok = ReadIndex(dir, index_name, &weight_map, &listing->problems);
  if (index_ok && weight_map.empty()) {  // then every key would be "missing", the shards unmentioned
    listing->problems.push_back(absl::StrCat(index_name, ": weight_map names no tensor"));
    index_ok = false;
  }
  if (index_ok) {
    std::set<std::string> unique;
    for (const auto& [key, shard] : weight_map) unique.insert(shard);
    shards.assign(unique.begin(), unique.end());
  } else {
    // Without a usable index, still list every shard present so the report is as full as possible.
    shards = FilesWithSuffix(dir, suffix);
    listing->problems.push_back(absl::StrCat(index_name, ": unusable, so listed every *", suffix,
                                             " file present instead (", shards.size(), ")"));
  }

  std::map<std::string, std::string> seen;  // key -> shard that supplied it
  std::set<std::string> readable;
  KeyProblems key_problems(&listing->problems);
  for (const std::string& shard : shards) {
    if (!IsRegularFile(dir / shard)) {
      const std::string what = NotRegularFile(dir / shard);
      listing->problems.push_back(absl::StrCat("index ", index_name, " names shard ", shard, ", which is ",
                                               what.empty() ? "absent" : absl::StrCat(what, ", not a regular file")));
      // Its keys are this one problem, not also a missing key each (as for an unreadable shard).
      for (const auto& [key, in_shard] : weight_map) {
        if (in_shard == shard) listing->unreadable_keys.insert(key);
      }
      continue;
    }
    std::vector<TensorRecord> records;
    if (!ListOne(safetensors, dir, shard, &records, &listing->problems, &listing->unreadable_keys)) {
      listing->unreadable_files.push_back(shard);
      if (index_ok) {
        for (const auto& [key, in_shard] : weight_map) {
          if (in_shard == shard) listing->unreadable_keys.insert(key);
        }
      } else {
        listing->unreadable_keys_unknown = true;
      }
      continue;
    }
    listing->files.push_back(shard);
    readable.insert(shard);
    for (TensorRecord& r : records) {
      auto prev = seen.find(r.name);
      if (prev != seen.end()) {
        listing->problems.push_back(absl::StrCat("key ", PrintableText(r.name), " is in two shards: ", prev->second,
                                                 " and ", shard, " (kept ", prev->second, ")"));
        continue;
      }
      if (index_ok) {
        auto it = weight_map.find(r.name);
        if (it == weight_map.end()) {
          key_problems.Add(shard, "in the shard that the index does not name", [&] {
            return absl::StrCat(shard, ": contains key ", PrintableText(r.name), ", which index ", index_name,
                                " does not name");
          });
        } else if (it->second != shard) {
          key_problems.Add(shard, "in the shard that the index assigns to another shard", [&] {
            return absl::StrCat(shard, ": contains key ", PrintableText(r.name), ", which index ", index_name,
                                " assigns to ", it->second);
          });
        }
      }
      seen.emplace(r.name, shard);
      listing->tensors.push_back(std::move(r));
    }
  }
  if (index_ok) {
    std::set<std::pair<std::string, std::string>> present;
    for (const TensorRecord& r : listing->tensors) present.emplace(r.file, r.name);
    for (const auto& [key, shard] : weight_map) {
      if (readable.count(shard) == 0) continue;  // absent or unreadable shard: reported above
      if (present.count({shard, key}) != 0) continue;
      if (listing->unreadable_keys.count(key) != 0) continue;  // its entry was refused: reported as such
      auto it = seen.find(key);
      if (it != seen.end()) continue;  // found in another shard: reported as "assigns to" above
      key_problems.Add(shard, "that the index lists in this shard but the shard does not contain", [&] {
        return absl::StrCat(shard, ": index ", index_name, " lists key ", PrintableText(key),
                            " in this shard, but the shard does not contain it");
      });
    }
  }
  key_problems.Finish();
}

}  // namespace

const char* CheckpointFormatName(CheckpointFormat format) {
  switch (format) {
    case CheckpointFormat::kSafetensors:
      return "safetensors";
    case CheckpointFormat::kSafetensorsSharded:
      return "safetensors-sharded";
    case CheckpointFormat::kPytorchBin:
      return "pytorch-bin";
    case CheckpointFormat::kPytorchBinSharded:
      return "pytorch-bin-sharded";
  }
  return "unknown";
}

absl::Status CheckModelDirectory(const std::string& directory) {
  const fs::path dir(directory);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    // A link loop or a path past the name limit is its own reason, not "does not exist".
    if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint directory ", directory, " cannot be opened: ", ec.message()));
    }
    return absl::NotFoundError(absl::StrCat("checkpoint directory ", directory,
                                            fs::exists(dir, ec) ? " is not a directory" : " does not exist"));
  }
  // access(2), not opening it: no descriptor is taken (the process may be at its limit).
  if (::access(directory.c_str(), R_OK | X_OK) != 0) {
    const int err = errno;
    const std::string why = absl::StrCat("checkpoint directory ", directory, " cannot be read: ", std::strerror(err));
    return err == EACCES ? absl::PermissionDeniedError(why) : absl::FailedPreconditionError(why);
  }
  return absl::OkStatus();
}

absl::StatusOr<CheckpointListing> ListCheckpoint(const std::string& directory) {
  try {
    const fs::path dir(directory);
    if (absl::Status usable = CheckModelDirectory(directory); !usable.ok()) return usable;
    std::error_code ec;
    CheckpointListing listing;
    listing.directory = directory;
    // An index that is there but no file (a FIFO, a directory, a link to a device or in a loop)
    // is named as such: it read as absent ("3 .safetensors files but no index").
    for (const char* index : {kStIndex, kBinIndex}) {
      if (const std::string what = NotRegularFile(dir / index); !what.empty()) {
        return absl::FailedPreconditionError(
            absl::StrCat("checkpoint directory ", directory, ": ", index, " is ", what, ", not a regular file"));
      }
    }
    // transformers' order (modeling_utils: model.safetensors, its index, pytorch_model.bin, its
    // index): a directory holding a leftover model.safetensors beside an index loads the same
    // weights here as there (the index won here, so the two served different weights).
    auto list_single = [&](bool safetensors, const std::string& name, CheckpointFormat format) {
      listing.format = format;
      if (ListOne(safetensors, dir, name, &listing.tensors, &listing.problems, &listing.unreadable_keys)) {
        listing.files.push_back(name);
      } else {
        listing.unreadable_files.push_back(name);
        listing.unreadable_keys_unknown = true;
      }
      return listing;
    };
    if (IsRegularFile(dir / kStSingle)) return list_single(true, kStSingle, CheckpointFormat::kSafetensors);
    if (IsRegularFile(dir / kStIndex)) {
      listing.format = CheckpointFormat::kSafetensorsSharded;
      ListSharded(true, dir, kStIndex, &listing);
      return listing;
    }
    const std::vector<std::string> any = FilesWithSuffix(dir, ".safetensors");
    if (any.size() == 1) return list_single(true, any[0], CheckpointFormat::kSafetensors);
    if (any.size() > 1) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint directory ", directory, " holds ", any.size(),
                                                        " .safetensors files (", absl::StrJoin(any, ", "), ") but no ",
                                                        kStIndex, " saying which tensors each holds"));
    }
    if (IsRegularFile(dir / kBinSingle)) return list_single(false, kBinSingle, CheckpointFormat::kPytorchBin);
    if (IsRegularFile(dir / kBinIndex)) {
      listing.format = CheckpointFormat::kPytorchBinSharded;
      ListSharded(false, dir, kBinIndex, &listing);
      return listing;
    }
    // A weight file's name on something that is not a file: say so, not that there is none.
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (!HasSuffix(name, ".safetensors") && !HasSuffix(name, ".bin") && name != kStIndex && name != kBinIndex) {
        continue;
      }
      if (const std::string what = NotRegularFile(it->path()); !what.empty()) {
        return absl::FailedPreconditionError(
            absl::StrCat(name, " in ", directory, " is ", what, ", not a regular file of weights"));
      }
    }
    // .bin shards without their index: say so, not that there are no weight files (one lone .bin
    // of another name is not taken either: transformers reads pytorch_model.bin only).
    if (const std::vector<std::string> bins = FilesWithSuffix(dir, ".bin"); !bins.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "checkpoint directory ", directory, " holds ", bins.size(), " .bin files (", absl::StrJoin(bins, ", "),
          ") but neither ", kBinSingle, " nor ", kBinIndex, " saying which tensors each holds"));
    }
    return absl::NotFoundError(absl::StrCat("no weight files in ", directory, " (looked for ", kStIndex, ", ",
                                            kStSingle, ", *.safetensors, ", kBinIndex, ", ", kBinSingle, ")"));
  } catch (const std::exception& e) {
    // Only allocation failures or filesystem oddities can land here.
    return absl::InternalError(absl::StrCat("listing ", directory, ": ", e.what()));
  }
}

}  // namespace glmserve
