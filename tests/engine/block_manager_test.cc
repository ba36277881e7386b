#include "runtime/engine/block_manager.h"

#include <set>

#include "gtest/gtest.h"

namespace glmserve {
namespace {

TEST(BlockManagerTest, AllocatesAllOrNothingAndReleases) {
  BlockManager blocks(/*num_blocks=*/4, /*block_size=*/8);
  EXPECT_EQ(blocks.BlocksFor(0), 0);
  EXPECT_EQ(blocks.BlocksFor(1), 1);
  EXPECT_EQ(blocks.BlocksFor(8), 1);
  EXPECT_EQ(blocks.BlocksFor(9), 2);

  std::vector<int32_t> a, b;
  ASSERT_TRUE(blocks.EnsureCapacity(a, 17));  // 3 blocks
  EXPECT_EQ(a.size(), 3u);
  EXPECT_EQ(blocks.num_free(), 1);
  EXPECT_FALSE(blocks.EnsureCapacity(b, 9));  // needs 2, 1 free: untouched
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(blocks.num_free(), 1);
  ASSERT_TRUE(blocks.EnsureCapacity(a, 24));  // still 3
  EXPECT_EQ(a.size(), 3u);
  ASSERT_TRUE(blocks.EnsureCapacity(b, 8));
  std::set<int32_t> all(a.begin(), a.end());
  all.insert(b.begin(), b.end());
  EXPECT_EQ(all.size(), 4u);  // distinct ids
  EXPECT_EQ(blocks.num_used(), 4);
  blocks.Release(a);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(blocks.num_free(), 3);
  blocks.Release(b);
  EXPECT_EQ(blocks.num_free(), 4);
}

}  // namespace
}  // namespace glmserve
