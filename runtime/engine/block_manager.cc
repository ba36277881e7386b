#include "runtime/engine/block_manager.h"

namespace glmserve {

BlockManager::BlockManager(int32_t num_blocks, int32_t block_size) : num_blocks_(num_blocks), block_size_(block_size) {
  free_.reserve(num_blocks);
  for (int32_t id = num_blocks - 1; id >= 0; --id) free_.push_back(id);
}

bool BlockManager::EnsureCapacity(std::vector<int32_t>& table, int64_t num_tokens) {
  const int32_t needed = BlocksFor(num_tokens) - static_cast<int32_t>(table.size());
  if (needed <= 0) return true;
  if (needed > num_free()) return false;
  for (int32_t i = 0; i < needed; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void BlockManager::Release(std::vector<int32_t>& table) {
  for (auto it = table.rbegin(); it != table.rend(); ++it) free_.push_back(*it);
  table.clear();
}

}  // namespace glmserve
