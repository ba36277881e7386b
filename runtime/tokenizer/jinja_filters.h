// Jinja's built-in filters that minja (third_party/minja) lacks or gets wrong, as Jinja 3.1 defines
// them, for checkpoint chat templates run by jinja_chat.cc: first / last / list / reverse over a
// string's characters, sort, title, capitalize, replace, abs, float, round, sum, max, min, format,
// center, wordcount, truncate, batch, trim with its characters, int with its default and base, the
// `d` alias, select / reject without a test, and the global dict(key=value, ...). Case mapping is ASCII
// only, as minja's upper / lower (runtime/tokenizer/README.md lists what still differs).
#pragma once

#include <memory>

namespace minja {
class Context;
}

namespace glmserve::tokenizer {

// Sets the filters in `context` (a render's, before minja's own are looked up: they win).
void AddJinjaFilters(const std::shared_ptr<minja::Context>& context);

}  // namespace glmserve::tokenizer
