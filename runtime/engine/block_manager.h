// Paged-KV bookkeeping without tensors: a fixed pool of block ids [0, num_blocks) handed out
// to sequences. The executor owns the memory those ids index; this class only decides who owns
// which id. Single-threaded: owned by the engine thread.
//
// With prefix caching, a full block whose KV is written can be registered under the content it
// holds: its tokens and the registered block holding the tokens before them (so a match is exact:
// every token of the prefix compared, block by block, no hash trusted). A later sequence whose
// tokens start the same way takes those blocks instead of computing them; several sequences may
// hold one block (reference counts) and none writes into it. A registered block that no sequence
// holds keeps its content and is handed out again only when no unregistered block is free, least
// recently released first.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace glmserve {

class BlockManager {
 public:
  BlockManager(int32_t num_blocks, int32_t block_size, bool prefix_caching = false);

  // A registered block as a prefix chain ends at it: `generation` tells a block re-registered
  // with other content after an eviction from the one that was registered. block -1: the empty
  // prefix.
  struct Link {
    int32_t block = -1;
    uint64_t generation = 0;
  };

  int32_t block_size() const { return block_size_; }
  int32_t num_blocks() const { return num_blocks_; }
  bool prefix_caching() const { return prefix_caching_; }
  // Blocks a sequence can be given now: unheld ones, registered or not.
  int32_t num_free() const { return static_cast<int32_t>(free_.size()) + num_evictable_; }
  int32_t num_used() const { return num_blocks_ - num_free(); }
  // Registered blocks (held or not): what the cache holds now.
  int32_t num_cached() const { return static_cast<int32_t>(by_key_.size()); }

  // Blocks needed to hold `num_tokens` positions.
  int32_t BlocksFor(int64_t num_tokens) const {
    return static_cast<int32_t>((num_tokens + block_size_ - 1) / block_size_);
  }
  // Grows `table` so it covers `num_tokens` positions. All or nothing: returns false and leaves
  // `table` untouched when the pool has too few free blocks.
  bool EnsureCapacity(std::vector<int32_t>& table, int64_t num_tokens);
  // Gives back this holder's share of every block of `table` and clears it.
  void Release(std::vector<int32_t>& table);

  // Prefix caching (no-ops without it). Appends to the empty `table` the registered blocks that
  // hold tokens[0, k * block_size) for the largest k <= max_blocks, one reference each; returns k
  // and sets *last to the last of them.
  int32_t MatchPrefix(const std::vector<int32_t>& tokens, int32_t max_blocks, std::vector<int32_t>& table, Link* last);
  // Registers *block (held by the caller, its KV written) as holding tokens[begin, begin +
  // block_size) after the prefix ending at `parent`. When a block holding that content is
  // registered already, that one stands for it: the caller holds it instead and its own copy is
  // released (*block becomes the registered block: the caller's table must take it; a step already
  // launched may still read the old copy, which, like any released block, is only handed to steps
  // planned later). Sets *out to the registered block for this content and returns true; false
  // (nothing registered) when `parent` is no longer registered as it was.
  bool Register(int32_t* block, Link parent, const std::vector<int32_t>& tokens, int64_t begin, Link* out);

 private:
  uint64_t ChainKey(Link parent, const int32_t* tokens) const;
  bool Current(Link link) const;  // still registered as it was
  bool Holds(int32_t block, Link parent, const int32_t* tokens) const;
  void Unlink(int32_t block);  // out of the evictable list
  int32_t TakeBlock();         // an unheld block: unregistered first, else the least recently released

  int32_t num_blocks_;
  int32_t block_size_;
  bool prefix_caching_;
  std::vector<int32_t> free_;  // unregistered, unheld; a stack, lowest ids handed out first
  // Prefix caching only, one entry per block:
  std::vector<int32_t> holders_;      // sequences holding it
  std::vector<uint64_t> generation_;  // 0 = unregistered; else when it was registered
  std::vector<uint64_t> key_;         // the by_key_ entry it is registered under
  std::vector<Link> parent_;          // the registered block holding the tokens before its own
  std::vector<int32_t> tokens_;       // [num_blocks * block_size]: the tokens it holds
  absl::flat_hash_map<uint64_t, int32_t> by_key_;
  uint64_t registrations_ = 0;
  // Registered blocks nobody holds, least recently released first (a list threaded through
  // prev_/next_, the sentinel at index num_blocks).
  std::vector<int32_t> prev_, next_;
  int32_t num_evictable_ = 0;
};

}  // namespace glmserve
