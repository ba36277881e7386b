// minja (third_party/minja) with glmserve's limits, for every translation unit that includes it:
// the limits shape minja's inline functions, so they must be the same in each.
#pragma once

// minja's own limits (third_party/minja/glmserve.patch): render recursion (GLM templates nest a
// handful of levels), range() lengths (Jinja's sandbox allows 100,000) and repeated strings.
#define MINJA_MAX_DEPTH 256
#define MINJA_MAX_RANGE 100000
#define MINJA_MAX_STRING_BYTES (16u << 20)

#include <minja.hpp>
