#include "runtime/engine/block_manager.h"

#include <algorithm>
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

std::vector<int32_t> Iota(int32_t n, int32_t from) {
  std::vector<int32_t> v(n);
  for (int32_t i = 0; i < n; ++i) v[i] = from + i;
  return v;
}

// Registers the first `n` blocks of `table` (written with `tokens`) as one chain.
void RegisterChain(BlockManager& blocks, std::vector<int32_t>& table, const std::vector<int32_t>& tokens, int32_t n) {
  BlockManager::Link link;
  for (int32_t i = 0; i < n; ++i) {
    ASSERT_TRUE(blocks.Register(&table[i], link, tokens, int64_t{i} * blocks.block_size(), &link));
  }
}

TEST(BlockManagerTest, WithoutPrefixCachingNothingIsShared) {
  BlockManager blocks(4, 4);
  std::vector<int32_t> a, b;
  const std::vector<int32_t> tokens = Iota(8, 1);
  ASSERT_TRUE(blocks.EnsureCapacity(a, 8));
  BlockManager::Link link;
  EXPECT_FALSE(blocks.Register(&a[0], BlockManager::Link(), tokens, 0, &link));
  EXPECT_EQ(blocks.MatchPrefix(tokens, 2, b, &link), 0);
  EXPECT_TRUE(b.empty());
  blocks.Release(a);
  EXPECT_EQ(blocks.num_free(), 4);
  EXPECT_EQ(blocks.num_cached(), 0);
}

// A prompt that repeats another's first blocks takes them (one more holder each) up to the first
// block whose tokens differ, never more than asked; a released registered block stays matchable
// and counts as free.
TEST(BlockManagerTest, MatchesRegisteredBlocksTokenForToken) {
  BlockManager blocks(8, 4, /*prefix_caching=*/true);
  const std::vector<int32_t> tokens = Iota(12, 1);  // three full blocks
  std::vector<int32_t> a;
  ASSERT_TRUE(blocks.EnsureCapacity(a, 12));
  RegisterChain(blocks, a, tokens, 3);
  EXPECT_EQ(blocks.num_cached(), 3);

  std::vector<int32_t> b;
  BlockManager::Link last;
  std::vector<int32_t> longer = tokens;
  longer.push_back(99);
  EXPECT_EQ(blocks.MatchPrefix(longer, 8, b, &last), 3);
  EXPECT_EQ(b, a);
  EXPECT_EQ(last.block, a[2]);
  EXPECT_EQ(blocks.num_used(), 3);  // shared, not copied

  std::vector<int32_t> c;
  std::vector<int32_t> differs = tokens;
  differs[5] = 77;  // in the second block
  EXPECT_EQ(blocks.MatchPrefix(differs, 8, c, &last), 1);
  EXPECT_EQ(c, std::vector<int32_t>{a[0]});
  std::vector<int32_t> d;
  EXPECT_EQ(blocks.MatchPrefix(tokens, 2, d, &last), 2);  // capped by max_blocks

  const std::vector<int32_t> chain = a;
  blocks.Release(a);
  blocks.Release(b);
  blocks.Release(c);
  blocks.Release(d);
  EXPECT_EQ(blocks.num_free(), 8);
  EXPECT_EQ(blocks.num_used(), 0);
  EXPECT_EQ(blocks.num_cached(), 3);
  std::vector<int32_t> e;
  EXPECT_EQ(blocks.MatchPrefix(longer, 8, e, &last), 3);  // still there when nobody holds them
  EXPECT_EQ(e, chain);
}

// Free unregistered blocks go first; then the registered block released longest ago (a chain's
// last block before its first). A block handed out again loses its registration, and blocks
// registered after it no longer match even when it is registered again with other tokens.
TEST(BlockManagerTest, EvictsLeastRecentlyReleasedCachedBlocksLast) {
  BlockManager blocks(4, 2, /*prefix_caching=*/true);
  const std::vector<int32_t> tokens = Iota(4, 10);
  std::vector<int32_t> a;
  ASSERT_TRUE(blocks.EnsureCapacity(a, 4));
  RegisterChain(blocks, a, tokens, 2);
  blocks.Release(a);  // both evictable; a[1] released first
  std::vector<int32_t> fresh;
  ASSERT_TRUE(blocks.EnsureCapacity(fresh, 4));  // the two never-registered blocks
  EXPECT_EQ(blocks.num_cached(), 2);
  std::vector<int32_t> more;
  ASSERT_TRUE(blocks.EnsureCapacity(more, 2));  // evicts the chain's last block
  EXPECT_EQ(more, std::vector<int32_t>{a[1]});
  EXPECT_EQ(blocks.num_cached(), 1);
  std::vector<int32_t> m;
  BlockManager::Link last;
  EXPECT_EQ(blocks.MatchPrefix(tokens, 2, m, &last), 1);  // the first block is still cached
  blocks.Release(m);

  // Re-register the evicted id under other tokens: the old chain's second block must not come
  // back through it.
  std::vector<int32_t> other = {50, 51, 12, 13};
  BlockManager::Link link;
  ASSERT_TRUE(blocks.Register(&more[0], BlockManager::Link(), other, 0, &link));
  std::vector<int32_t> n;
  EXPECT_EQ(blocks.MatchPrefix(tokens, 2, n, &last), 1);
  EXPECT_EQ(n, std::vector<int32_t>{a[0]});
  EXPECT_FALSE(blocks.EnsureCapacity(n, 8));  // 3 more needed, 1 free (none evictable: all held)
}

// Two sequences that computed the same content: the first registration stands for it, the second
// sequence holds that block instead of its copy (freed) and its chain continues through it.
TEST(BlockManagerTest, SameContentRegisteredTwiceKeepsOneBlock) {
  BlockManager blocks(6, 2, /*prefix_caching=*/true);
  const std::vector<int32_t> tokens = Iota(4, 3);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(blocks.EnsureCapacity(a, 4));
  ASSERT_TRUE(blocks.EnsureCapacity(b, 4));
  RegisterChain(blocks, a, tokens, 1);
  const int32_t copy = b[0];
  BlockManager::Link link;
  ASSERT_TRUE(blocks.Register(&b[0], BlockManager::Link(), tokens, 0, &link));
  EXPECT_EQ(link.block, a[0]);      // a's block stands for it
  EXPECT_EQ(b[0], a[0]);            // and b holds it in place of its copy
  EXPECT_EQ(blocks.num_free(), 3);  // the copy, and the two blocks never taken
  ASSERT_TRUE(blocks.Register(&b[1], link, tokens, 2, &link));
  EXPECT_EQ(link.block, b[1]);
  EXPECT_EQ(blocks.num_cached(), 2);
  std::vector<int32_t> c;
  BlockManager::Link last;
  EXPECT_EQ(blocks.MatchPrefix(tokens, 2, c, &last), 2);
  EXPECT_EQ(c, (std::vector<int32_t>{a[0], b[1]}));
  blocks.Release(a);
  blocks.Release(b);  // the shared block's last holder: it stays cached
  blocks.Release(c);
  EXPECT_EQ(blocks.num_cached(), 2);
  EXPECT_EQ(blocks.num_free(), 6);  // every block free or evictable: no reference leaked
  EXPECT_NE(copy, a[0]);
}

// The same content computed again after its first copy was released (a repeated request, a
// prompt's last block): the sequence takes the registered block back in place of its copy, so its
// chain does not hang off a block the pool evicts first (which left none of its later blocks
// registered), and what was registered after the first copy (the earlier answer) stays reachable.
TEST(BlockManagerTest, ARecomputedBlockIsReplacedByItsRegisteredTwin) {
  BlockManager blocks(6, 2, /*prefix_caching=*/true);
  const std::vector<int32_t> history = Iota(6, 3);  // an earlier request's prompt and answer
  std::vector<int32_t> first;
  ASSERT_TRUE(blocks.EnsureCapacity(first, 6));
  RegisterChain(blocks, first, history, 3);
  const std::vector<int32_t> first_chain = first;
  blocks.Release(first);  // cached, nobody's
  // Its first block again, computed (not matched), then a block of its own.
  const std::vector<int32_t> again_tokens = {3, 4, 90, 91};
  std::vector<int32_t> again;
  ASSERT_TRUE(blocks.EnsureCapacity(again, 4));  // the 3 free blocks: nothing is evicted
  const int32_t copy = again[0];
  BlockManager::Link link;
  ASSERT_TRUE(blocks.Register(&again[0], BlockManager::Link(), again_tokens, 0, &link));
  EXPECT_EQ(again[0], first_chain[0]);
  EXPECT_EQ(link.block, first_chain[0]);
  std::vector<int32_t> filler;
  ASSERT_TRUE(blocks.EnsureCapacity(filler, 6));  // the freed copy and 2 evicted: the history's tail
  EXPECT_NE(std::find(filler.begin(), filler.end(), copy), filler.end());
  ASSERT_TRUE(blocks.Register(&again[1], link, again_tokens, 2, &link));  // the chain goes on
  EXPECT_EQ(link.block, again[1]);
  blocks.Release(filler);
  blocks.Release(again);
  std::vector<int32_t> matched;
  BlockManager::Link last;
  EXPECT_EQ(blocks.MatchPrefix(again_tokens, 2, matched, &last), 2);
  EXPECT_EQ(matched, (std::vector<int32_t>{first_chain[0], link.block}));
}

// With room in the pool, what was registered after a block computed again stays reachable: a
// follow-up continuing the earlier history matches all of it.
TEST(BlockManagerTest, ABlockComputedAgainLeavesTheLaterHistoryReachable) {
  BlockManager blocks(8, 2, /*prefix_caching=*/true);
  const std::vector<int32_t> history = Iota(8, 3);
  std::vector<int32_t> first;
  ASSERT_TRUE(blocks.EnsureCapacity(first, 8));
  RegisterChain(blocks, first, history, 4);
  blocks.Release(first);
  std::vector<int32_t> again;  // the history's first block, computed again
  ASSERT_TRUE(blocks.EnsureCapacity(again, 2));
  BlockManager::Link link;
  ASSERT_TRUE(blocks.Register(&again[0], BlockManager::Link(), history, 0, &link));
  blocks.Release(again);
  std::vector<int32_t> follow_up;
  BlockManager::Link last;
  EXPECT_EQ(blocks.MatchPrefix(history, 4, follow_up, &last), 4);
}

}  // namespace
}  // namespace glmserve
