// glmserve's patches to the vendored minja (third_party/minja/glmserve.patch) that
// jinja_chat_test cannot see through JinjaChatTemplate: a render frees what it made.
#include <gtest/gtest.h>

#include <memory>
#include <string>

// The patched header's limits have no defaults: runtime/tokenizer/jinja_chat.cc sets them.
#define MINJA_MAX_DEPTH 64
#define MINJA_MAX_RANGE 1000
#define MINJA_MAX_STRING_BYTES (1u << 20)
#include <minja.hpp>

namespace {

// A macro (and a {% call %} block's caller) is stored in the context it renders in: when it held
// that context strongly, every render of such a template leaked its whole context (LeakSanitizer,
// ~17 KB a chat request with a 2 KB message).
TEST(MinjaPatch, MacrosAndCallersDoNotKeepTheirContextAlive) {
  const struct {
    const char* source;
    const char* want;
  } cases[] = {
      {"{% macro m(x) %}[{{ x }}]{% endmacro %}{{ m(1) }}{{ m(x=2) }}", "[1][2]"},
      {"{% macro m() %}<{{ caller() }}>{% endmacro %}{% call m() %}y{% endcall %}", "<y>"},
  };
  for (const auto& c : cases) {
    const std::shared_ptr<minja::TemplateNode> root = minja::Parser::parse(c.source, minja::Options{});
    std::weak_ptr<minja::Context> watched;
    {
      std::shared_ptr<minja::Context> context = minja::Context::make(minja::Value::object());
      watched = context;
      EXPECT_EQ(root->render(context), c.want) << c.source;
    }
    EXPECT_TRUE(watched.expired()) << "the render's context outlived it: " << c.source;
  }
}

}  // namespace
