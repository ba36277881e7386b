// server/request/client_quota.h: the per-client cap on queued plus running requests.
#include "server/request/client_quota.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace glmserve {
namespace {

TEST(ClientQuotaTest, CapsEachClientSeparately) {
  ClientQuota q(2);
  EXPECT_TRUE(q.Acquire("a"));
  EXPECT_TRUE(q.Acquire("a"));
  EXPECT_FALSE(q.Acquire("a"));
  EXPECT_TRUE(q.Acquire("b"));  // another client is not affected
  EXPECT_EQ(q.in_flight("a"), 2);
  EXPECT_EQ(q.clients(), 2u);
  q.Release("a");
  EXPECT_TRUE(q.Acquire("a"));
  q.Release("a");
  q.Release("a");
  q.Release("b");
  EXPECT_EQ(q.clients(), 0u);  // no entry left behind
  q.Release("never");          // harmless
  EXPECT_EQ(q.in_flight("never"), 0);
}

TEST(ClientQuotaTest, ZeroIsOff) {
  ClientQuota q(0);
  for (int i = 0; i < 1000; ++i) EXPECT_TRUE(q.Acquire("a"));
  EXPECT_EQ(q.clients(), 0u);
  bool admitted = false;
  ClientQuota::Lease lease = q.TryAcquire("a", &admitted);
  EXPECT_TRUE(admitted);
}

TEST(ClientQuotaTest, LeaseReleasesOnce) {
  ClientQuota q(1);
  bool admitted = false;
  {
    ClientQuota::Lease lease = q.TryAcquire("a", &admitted);
    EXPECT_TRUE(admitted);
    ClientQuota::Lease refused = q.TryAcquire("a", &admitted);
    EXPECT_FALSE(admitted);
    ClientQuota::Lease moved = std::move(lease);
    EXPECT_EQ(q.in_flight("a"), 1);
    moved.Release();
    EXPECT_EQ(q.in_flight("a"), 0);
    moved.Release();  // second release is a no-op
    EXPECT_TRUE(q.Acquire("a"));
  }
  EXPECT_EQ(q.in_flight("a"), 1);  // the refused lease released nothing
}

TEST(ClientQuotaTest, ConcurrentAcquireNeverExceedsTheCap) {
  ClientQuota q(5);
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        if (q.Acquire("a")) {
          EXPECT_LE(q.in_flight("a"), 5);
          ++admitted;
          q.Release("a");
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_GT(admitted.load(), 0);
  EXPECT_EQ(q.in_flight("a"), 0);
}

TEST(ClientQuotaTest, GrpcPeerNames) {
  EXPECT_EQ(ClientFromGrpcPeer("ipv4:10.0.0.7:5312"), "10.0.0.7");
  EXPECT_EQ(ClientFromGrpcPeer("ipv6:[::1]:5312"), "::1");
  EXPECT_EQ(ClientFromGrpcPeer("ipv6:%5B::1%5D:5312"), "::1");
  EXPECT_EQ(ClientFromGrpcPeer("unix:/tmp/s"), "unix:/tmp/s");
}

}  // namespace
}  // namespace glmserve
