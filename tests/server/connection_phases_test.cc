// server/ops/connection_phases.h: which connection a listener at its cap closes for a new one.
#include "server/ops/connection_phases.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>

namespace glmserve {
namespace {

using std::chrono::milliseconds;

// A connected socket pair: `server` is what the listener holds, `client` sees it closed.
struct Pair {
  Pair() { EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0); }
  ~Pair() {
    close(fds[0]);
    close(fds[1]);
  }
  int server() const { return fds[0]; }
  // True when the server side was shut down (the client reads EOF at once).
  bool ClientSeesClosed() const {
    char c;
    return recv(fds[1], &c, 1, MSG_DONTWAIT) == 0;
  }
  int fds[2] = {-1, -1};
};

TEST(ConnectionPhasesTest, EvictsTheOneLongestBetweenRequestsOnly) {
  ConnectionPhases phases;
  Pair idle_oldest, busy, idle_newer;
  phases.Opened(idle_oldest.server());
  phases.Opened(busy.server());
  std::this_thread::sleep_for(milliseconds(20));
  phases.Opened(idle_newer.server());
  phases.SetBetweenRequests(busy.server(), false);  // its head is in: never evicted
  EXPECT_FALSE(phases.EvictOldest(milliseconds(10'000), 8)) << "none has waited that long";
  ASSERT_TRUE(phases.EvictOldest(milliseconds(10), 8));
  EXPECT_TRUE(idle_oldest.ClientSeesClosed());
  EXPECT_FALSE(busy.ClientSeesClosed());
  EXPECT_FALSE(idle_newer.ClientSeesClosed());
  EXPECT_EQ(phases.evicted(), 1);
  EXPECT_FALSE(phases.EvictOldest(milliseconds(10), 8)) << "the newer one is under 10 ms between requests";
  std::this_thread::sleep_for(milliseconds(20));
  ASSERT_TRUE(phases.EvictOldest(milliseconds(10), 8));
  EXPECT_TRUE(idle_newer.ClientSeesClosed());
  EXPECT_FALSE(phases.EvictOldest(milliseconds(0), 8)) << "evicted ones are not chosen twice; the busy one never";
  phases.Closing(idle_oldest.server());
  phases.Closing(idle_newer.server());
  EXPECT_EQ(phases.evicted(), 0);
  EXPECT_EQ(phases.open(), 1u);
}

TEST(ConnectionPhasesTest, BoundsTheEvictionsStillClosingAndRestartsTheClock) {
  ConnectionPhases phases;
  Pair a, b, c;
  for (const Pair* p : {&a, &b, &c}) phases.Opened(p->server());
  std::this_thread::sleep_for(milliseconds(20));
  phases.SetBetweenRequests(c.server(), true);  // answered just now: its wait starts again
  ASSERT_TRUE(phases.EvictOldest(milliseconds(10), 1));
  EXPECT_FALSE(phases.EvictOldest(milliseconds(10), 1)) << "one eviction still closing";
  phases.Closing(a.server());
  phases.Closing(b.server());  // whichever of a and b it was, none is left closing
  EXPECT_EQ(phases.evicted(), 0);
  EXPECT_FALSE(phases.EvictOldest(milliseconds(10), 1)) << "c waited under 10 ms";
  EXPECT_FALSE(c.ClientSeesClosed());
}

}  // namespace
}  // namespace glmserve
