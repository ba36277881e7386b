#include "runtime/engine/block_manager.h"

#include <algorithm>

namespace glmserve {

namespace {

uint64_t Mix(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

BlockManager::BlockManager(int32_t num_blocks, int32_t block_size, bool prefix_caching)
    : num_blocks_(num_blocks), block_size_(block_size), prefix_caching_(prefix_caching) {
  free_.reserve(num_blocks);
  for (int32_t id = num_blocks - 1; id >= 0; --id) free_.push_back(id);
  if (!prefix_caching_) return;
  holders_.assign(num_blocks, 0);
  generation_.assign(num_blocks, 0);
  key_.assign(num_blocks, 0);
  parent_.assign(num_blocks, Link());
  tokens_.assign(static_cast<size_t>(num_blocks) * block_size, 0);
  prev_.assign(num_blocks + 1, num_blocks);
  next_.assign(num_blocks + 1, num_blocks);
}

// Only an index into by_key_: a match is confirmed by Holds, so a collision costs a miss.
uint64_t BlockManager::ChainKey(Link parent, const int32_t* tokens) const {
  uint64_t h = Mix(static_cast<uint64_t>(parent.block) ^ Mix(parent.generation));
  for (int32_t i = 0; i < block_size_; ++i) h = Mix(h ^ static_cast<uint32_t>(tokens[i]));
  return h;
}

bool BlockManager::Current(Link link) const {
  return link.block < 0 || (generation_[link.block] != 0 && generation_[link.block] == link.generation);
}

bool BlockManager::Holds(int32_t block, Link parent, const int32_t* tokens) const {
  return generation_[block] != 0 && parent_[block].block == parent.block &&
         parent_[block].generation == parent.generation &&
         std::equal(tokens, tokens + block_size_, tokens_.begin() + static_cast<size_t>(block) * block_size_);
}

void BlockManager::Unlink(int32_t block) {
  next_[prev_[block]] = next_[block];
  prev_[next_[block]] = prev_[block];
  --num_evictable_;
}

int32_t BlockManager::TakeBlock() {
  if (!free_.empty()) {
    const int32_t block = free_.back();
    free_.pop_back();
    return block;
  }
  const int32_t block = next_[num_blocks_];  // the least recently released registered block
  Unlink(block);
  by_key_.erase(key_[block]);
  generation_[block] = 0;  // blocks registered after it (its children) no longer match
  return block;
}

bool BlockManager::EnsureCapacity(std::vector<int32_t>& table, int64_t num_tokens) {
  const int32_t needed = BlocksFor(num_tokens) - static_cast<int32_t>(table.size());
  if (needed <= 0) return true;
  if (needed > num_free()) return false;
  for (int32_t i = 0; i < needed; ++i) {
    const int32_t block = TakeBlock();
    if (prefix_caching_) holders_[block] = 1;
    table.push_back(block);
  }
  return true;
}

void BlockManager::Release(std::vector<int32_t>& table) {
  // Last block first: a sequence's deepest blocks are evicted before the prefix others share.
  for (auto it = table.rbegin(); it != table.rend(); ++it) {
    const int32_t block = *it;
    if (prefix_caching_ && --holders_[block] > 0) continue;
    if (prefix_caching_ && generation_[block] != 0) {
      prev_[block] = prev_[num_blocks_];
      next_[block] = num_blocks_;
      next_[prev_[num_blocks_]] = block;
      prev_[num_blocks_] = block;
      ++num_evictable_;
    } else {
      free_.push_back(block);
    }
  }
  table.clear();
}

int32_t BlockManager::MatchPrefix(const std::vector<int32_t>& tokens, int32_t max_blocks, std::vector<int32_t>& table,
                                  Link* last) {
  *last = Link();
  if (!prefix_caching_ || !table.empty()) return 0;
  max_blocks = static_cast<int32_t>(std::min<int64_t>(max_blocks, static_cast<int64_t>(tokens.size()) / block_size_));
  int32_t matched = 0;
  for (; matched < max_blocks; ++matched) {
    const int32_t* block_tokens = tokens.data() + static_cast<size_t>(matched) * block_size_;
    const auto it = by_key_.find(ChainKey(*last, block_tokens));
    if (it == by_key_.end() || !Holds(it->second, *last, block_tokens)) break;
    const int32_t block = it->second;
    if (holders_[block]++ == 0) Unlink(block);
    table.push_back(block);
    *last = Link{block, generation_[block]};
  }
  return matched;
}

bool BlockManager::Register(int32_t* block, Link parent, const std::vector<int32_t>& tokens, int64_t begin, Link* out) {
  if (!prefix_caching_ || !Current(parent)) return false;
  const int32_t* block_tokens = tokens.data() + begin;
  const uint64_t key = ChainKey(parent, block_tokens);
  const auto it = by_key_.find(key);
  if (it != by_key_.end()) {
    const int32_t twin = it->second;
    if (!Holds(twin, parent, block_tokens)) return false;  // another content under this key
    if (twin != *block && generation_[*block] == 0) {
      // The same content written before (a repeated request, a prompt's last block, which is
      // always computed again, another sequence's identical output): the caller holds the
      // registered block instead of its copy, which is freed. Chained to a twin it did not hold,
      // its later blocks were lost as soon as the pool evicted that twin (the least recently
      // released first); taking the twin's registration instead orphaned the twin's children.
      if (holders_[twin]++ == 0) Unlink(twin);
      if (--holders_[*block] == 0) free_.push_back(*block);
      *block = twin;
    }
    *out = Link{twin, generation_[twin]};
    return true;
  }
  if (generation_[*block] != 0) return false;  // registered for other content (a caller's mistake)
  by_key_.emplace(key, *block);
  generation_[*block] = ++registrations_;
  key_[*block] = key;
  parent_[*block] = parent;
  std::copy(block_tokens, block_tokens + block_size_, tokens_.begin() + static_cast<size_t>(*block) * block_size_);
  *out = Link{*block, generation_[*block]};
  return true;
}

}  // namespace glmserve
