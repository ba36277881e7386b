// glmload's statistics: percentiles and summaries of latency samples, and the seeded Poisson
// arrival process of the open loop. No gRPC here, so tests check it on known numbers.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace glmserve::load {

// Nearest-rank percentile of `samples` (any order; copied and sorted): the smallest sample x
// such that at least p% of the samples are <= x, i.e. the sorted sample at 1-based rank
// ceil(p/100 * n). p <= 0 gives the minimum, p >= 100 the maximum. Always one of the samples
// (never interpolated), so a p99 of 100 requests is the 99th slowest-but-one, a real request.
// Empty input gives 0.
double Percentile(std::vector<double> samples, double p);

// Same, on samples already sorted ascending (no copy).
double PercentileSorted(const std::vector<double>& sorted, double p);

struct Summary {
  size_t count = 0;
  double min = 0, mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};

// count, min, mean, nearest-rank p50/p90/p99 and max; all zero when `samples` is empty.
Summary Summarize(std::vector<double> samples);

// Poisson arrivals at `rate` per second: exponential gaps with mean 1/rate, from a seeded
// generator (same seed, same schedule).
class PoissonArrivals {
 public:
  PoissonArrivals(double rate, uint64_t seed) : gen_(seed), gap_(rate) {}
  // Seconds until the next arrival.
  double NextGapSeconds() { return gap_(gen_); }

 private:
  std::mt19937_64 gen_;
  std::exponential_distribution<double> gap_;
};

}  // namespace glmserve::load
