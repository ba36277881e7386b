#include "bench/glmload_stats.h"

#include <algorithm>
#include <cmath>

namespace glmserve::load {

double PercentileSorted(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  if (p <= 0) return sorted.front();
  if (p >= 100) return sorted.back();
  const double n = static_cast<double>(sorted.size());
  // A small tolerance keeps e.g. 0.9 * 10 = 9.000000000000002 at rank 9.
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * n - 1e-9));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return sorted[rank - 1];
}

double Percentile(std::vector<double> samples, double p) {
  std::sort(samples.begin(), samples.end());
  return PercentileSorted(samples, p);
}

Summary Summarize(std::vector<double> samples) {
  Summary s;
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  s.count = samples.size();
  s.min = samples.front();
  s.max = samples.back();
  double sum = 0;
  for (double v : samples) sum += v;
  s.mean = sum / static_cast<double>(samples.size());
  s.p50 = PercentileSorted(samples, 50);
  s.p90 = PercentileSorted(samples, 90);
  s.p99 = PercentileSorted(samples, 99);
  return s;
}

}  // namespace glmserve::load
