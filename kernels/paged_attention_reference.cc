#include <cmath>
#include <vector>

#include "kernels/paged_attention.h"

namespace glmserve::kernels {

void PagedAttentionDecodeReference(const float* q, const float* k_cache, const float* v_cache,
                                   const int32_t* block_tables, const int32_t* context_lens, float* out,
                                   const PagedAttentionShape& s) {
  const int32_t group = s.num_heads / s.num_kv_heads;
  for (int32_t b = 0; b < s.batch; ++b) {
    const int32_t context = context_lens[b];
    if (context == 0) continue;  // left alone, as the CUDA kernels leave it
    for (int32_t h = 0; h < s.num_heads; ++h) {
      const int64_t q_stride = s.q_row_stride > 0 ? s.q_row_stride : int64_t{s.num_heads} * s.head_dim;
      const float* qh = q + b * q_stride + int64_t{h} * s.head_dim;
      const int32_t kv_head = h / group;
      std::vector<double> scores(context);
      double max_score = -INFINITY;
      for (int32_t p = 0; p < context; ++p) {
        const int64_t slot =
            static_cast<int64_t>(block_tables[b * s.max_blocks_per_seq + p / s.block_size]) * s.block_size +
            p % s.block_size;
        const float* k = k_cache + (slot * s.num_kv_heads + kv_head) * s.head_dim;
        double dot = 0;
        for (int32_t d = 0; d < s.head_dim; ++d) dot += static_cast<double>(qh[d]) * k[d];
        scores[p] = dot * s.scale;
        max_score = std::max(max_score, scores[p]);
      }
      double total = 0;
      for (double& v : scores) total += (v = std::exp(v - max_score));
      float* o = out + (static_cast<int64_t>(b) * s.num_heads + h) * s.head_dim;
      for (int32_t d = 0; d < s.head_dim; ++d) {
        double acc = 0;
        for (int32_t p = 0; p < context; ++p) {
          const int64_t slot =
              static_cast<int64_t>(block_tables[b * s.max_blocks_per_seq + p / s.block_size]) * s.block_size +
              p % s.block_size;
          acc += scores[p] * v_cache[(slot * s.num_kv_heads + kv_head) * s.head_dim + d];
        }
        o[d] = static_cast<float>(acc / total);
      }
    }
  }
}

}  // namespace glmserve::kernels
