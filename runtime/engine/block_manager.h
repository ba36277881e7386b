// Paged-KV bookkeeping without tensors: a fixed pool of block ids [0, num_blocks) handed out
// to sequences. The executor owns the memory those ids index; this class only decides who owns
// which id. Single-threaded: owned by the engine thread.
#pragma once

#include <cstdint>
#include <vector>

namespace glmserve {

class BlockManager {
 public:
  BlockManager(int32_t num_blocks, int32_t block_size);

  int32_t block_size() const { return block_size_; }
  int32_t num_blocks() const { return num_blocks_; }
  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t num_used() const { return num_blocks_ - num_free(); }

  // Blocks needed to hold `num_tokens` positions.
  int32_t BlocksFor(int64_t num_tokens) const {
    return static_cast<int32_t>((num_tokens + block_size_ - 1) / block_size_);
  }
  // Grows `table` so it covers `num_tokens` positions. All or nothing: returns false and leaves
  // `table` untouched when the pool has too few free blocks.
  bool EnsureCapacity(std::vector<int32_t>& table, int64_t num_tokens);
  // Returns every block of `table` to the pool and clears it.
  void Release(std::vector<int32_t>& table);

 private:
  int32_t num_blocks_;
  int32_t block_size_;
  std::vector<int32_t> free_;  // stack; lowest ids handed out first
};

}  // namespace glmserve
