#include "runtime/tokenizer/jinja_filters.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "runtime/tokenizer/minja_config.h"

namespace glmserve::tokenizer {
namespace {

using minja::ArgumentsValue;
using minja::Context;
using minja::Value;

// Python's call binding for a filter's signature: `names` in order (the first is the filtered
// value), the first `required` of them without a default. Absent ones are null.
std::vector<Value> Bind(ArgumentsValue& args, const char* filter, const std::vector<std::string>& names,
                        size_t required) {
  if (args.args.size() > names.size()) {
    throw std::runtime_error(std::string(filter) + "() takes at most " + std::to_string(names.size() - 1) +
                             " arguments (" + std::to_string(args.args.size() - 1) + " given)");
  }
  std::vector<Value> bound(names.size());
  std::vector<bool> given(names.size(), false);
  for (size_t i = 0; i < args.args.size(); ++i) {
    bound[i] = args.args[i];
    given[i] = true;
  }
  for (auto& [name, value] : args.kwargs) {
    const auto it = std::find(names.begin(), names.end(), name);
    if (it == names.end())
      throw std::runtime_error(std::string(filter) + "() got an unexpected keyword argument '" + name + "'");
    const size_t i = static_cast<size_t>(it - names.begin());
    if (given[i]) throw std::runtime_error(std::string(filter) + "() got multiple values for argument '" + name + "'");
    bound[i] = value;
    given[i] = true;
  }
  for (size_t i = 0; i < required; ++i) {
    if (!given[i]) throw std::runtime_error(std::string(filter) + "() missing required argument '" + names[i] + "'");
  }
  return bound;
}

Value Filter(const char* name, std::vector<std::string> params, size_t required,
             std::function<Value(std::vector<Value>&)> body) {
  return Value::callable([=](const std::shared_ptr<Context>&, ArgumentsValue& args) {
    std::vector<Value> bound = Bind(args, name, params, required);
    return body(bound);
  });
}

std::string AsciiLower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string AsciiUpper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// The items a filter iterates: a list's items, a mapping's keys, a string's characters.
std::vector<Value> Items(const Value& value, const char* filter) {
  if (value.is_null()) throw std::runtime_error(std::string(filter) + ": the value is undefined or none");
  if (!value.is_iterable()) throw std::runtime_error(std::string(filter) + ": " + value.dump() + " is not iterable");
  std::vector<Value> items;
  value.for_each([&](Value& item) { items.push_back(item); });
  return items;
}

Value ListOf(std::vector<Value> items) {
  Value list = Value::array();
  for (Value& item : items) list.push_back(item);
  return list;
}

// Jinja's make_attrgetter: "a.b.0" looks up a, then b, then index 0.
Value Attribute(Value item, const Value& attribute) {
  if (attribute.is_null()) return item;
  if (attribute.is_number_integer()) return item.get(attribute);
  const std::string path = attribute.to_str();
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const bool digits =
        !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    item = item.is_null() ? Value() : item.get(digits ? Value(static_cast<int64_t>(std::stoll(part))) : Value(part));
    if (dot == std::string::npos) return item;
    start = dot + 1;
  }
}

// The key Jinja sorts and compares by: the attribute, lower-cased unless case_sensitive.
Value SortKey(const Value& item, const Value& attribute, bool case_sensitive) {
  Value key = Attribute(item, attribute);
  if (!case_sensitive && key.is_string()) return Value(AsciiLower(key.get<std::string>()));
  return key;
}

Value MinOrMax(std::vector<Value>& a, bool want_max) {
  std::vector<Value> items = Items(a[0], want_max ? "max" : "min");
  if (items.empty()) return Value();  // Jinja: undefined ("No aggregated item, sequence was empty.")
  const bool case_sensitive = a[1].to_bool();
  size_t best = 0;
  Value best_key = SortKey(items[0], a[2], case_sensitive);
  for (size_t i = 1; i < items.size(); ++i) {
    Value key = SortKey(items[i], a[2], case_sensitive);
    if (want_max ? key > best_key : key < best_key) {
      best = i;
      best_key = key;
    }
  }
  return items[best];
}

// Python's round(x, n): to the nearest decimal with n digits, ties to even on the exact binary
// value (glibc's printf rounds the same way), as a float.
double PythonRound(double x, int64_t digits) {
  if (!std::isfinite(x)) return x;
  if (digits <= 0) {
    const double scale = std::pow(10.0, static_cast<double>(-digits));
    return std::nearbyint(x / scale) * scale;
  }
  char text[400];
  std::snprintf(text, sizeof text, "%.*f", static_cast<int>(std::min<int64_t>(digits, 300)), x);
  return std::strtod(text, nullptr);
}

std::string Repr(const Value& v) { return v.is_string() ? v.dump() : v.to_str(); }

// Python's printf-style `format % args` (Jinja's format filter): %s %r %d %i %u %f %F %e %E %g %G
// %x %X %o %c %%, flags, width and precision, `%(name)s` with keyword arguments.
std::string PercentFormat(const std::string& format, const std::vector<Value>& args, Value& kwargs) {
  std::string out;
  size_t next = 0;
  bool named = false;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%') {
      out += format[i];
      continue;
    }
    if (++i >= format.size()) throw std::runtime_error("format: incomplete format");
    if (format[i] == '%') {
      out += '%';
      continue;
    }
    Value arg;
    bool have = false;
    if (format[i] == '(') {
      const size_t close = format.find(')', i);
      if (close == std::string::npos) throw std::runtime_error("format: incomplete format key");
      const std::string key = format.substr(i + 1, close - i - 1);
      if (!kwargs.is_object()) throw std::runtime_error("format: format requires a mapping");
      arg = kwargs.get(Value(key));
      if (arg.is_null() && !kwargs.contains(Value(key)))
        throw std::runtime_error("format: no value for key '" + key + "'");
      have = true;
      named = true;
      i = close + 1;
    }
    std::string spec = "%";
    while (i < format.size() && std::string("-+ #0").find(format[i]) != std::string::npos) spec += format[i++];
    while (i < format.size() && std::isdigit(static_cast<unsigned char>(format[i]))) spec += format[i++];
    if (i < format.size() && format[i] == '.') {
      spec += format[i++];
      while (i < format.size() && std::isdigit(static_cast<unsigned char>(format[i]))) spec += format[i++];
    }
    if (i >= format.size()) throw std::runtime_error("format: incomplete format");
    const char type = format[i];
    if (!have) {
      if (next >= args.size()) throw std::runtime_error("format: not enough arguments for format string");
      arg = args[next++];
    }
    char buffer[512];
    switch (type) {
      case 's':
      case 'r': {
        const std::string text = type == 's' ? arg.to_str() : Repr(arg);
        spec += 's';
        const int width = spec.size() > 2 ? std::atoi(spec.c_str() + 1 + (spec[1] == '-' ? 1 : 0)) : 0;
        const std::vector<std::string> chars = Value::utf8_chars(text);
        const size_t dot = spec.find('.');
        const size_t keep =
            dot == std::string::npos ? chars.size() : std::min<size_t>(chars.size(), std::atoi(spec.c_str() + dot + 1));
        std::string shown;
        for (size_t k = 0; k < keep; ++k) shown += chars[k];
        const std::string pad(width > static_cast<int>(keep) ? width - keep : 0, ' ');
        out += spec.find('-') != std::string::npos ? shown + pad : pad + shown;
        break;
      }
      case 'd':
      case 'i':
      case 'u': {
        if (!arg.is_number() && !arg.is_boolean())
          throw std::runtime_error("format: %d format: a real number is required, not " + Repr(arg));
        spec += "lld";
        const long long n = arg.is_number_integer() ? arg.get<int64_t>()
                            : arg.is_boolean()      ? arg.get<bool>()
                                                    : static_cast<long long>(arg.get<double>());
        std::snprintf(buffer, sizeof buffer, spec.c_str(), n);
        out += buffer;
        break;
      }
      case 'x':
      case 'X':
      case 'o': {
        if (!arg.is_number_integer())
          throw std::runtime_error(std::string("format: %") + type + " format: an integer is required, not " +
                                   Repr(arg));
        const long long n = arg.get<int64_t>();
        spec += "ll";
        spec += type;
        std::snprintf(buffer, sizeof buffer, spec.c_str(), n < 0 ? -n : n);
        out += n < 0 ? "-" + std::string(buffer) : std::string(buffer);
        break;
      }
      case 'f':
      case 'F':
      case 'e':
      case 'E':
      case 'g':
      case 'G': {
        if (!arg.is_number() && !arg.is_boolean())
          throw std::runtime_error(std::string("format: %") + type + " format: a real number is required, not " +
                                   Repr(arg));
        spec += type;
        std::snprintf(buffer, sizeof buffer, spec.c_str(),
                      arg.is_boolean() ? (arg.get<bool>() ? 1.0 : 0.0) : arg.get<double>());
        out += buffer;
        break;
      }
      case 'c': {
        if (arg.is_string() && Value::utf8_chars(arg.get<std::string>()).size() == 1) {
          out += arg.get<std::string>();
        } else if (arg.is_number_integer() && arg.get<int64_t>() >= 0 && arg.get<int64_t>() < 128) {
          out += static_cast<char>(arg.get<int64_t>());
        } else {
          throw std::runtime_error("format: %c requires a single character");
        }
        break;
      }
      default:
        throw std::runtime_error(std::string("format: unsupported format character '") + type + "'");
    }
  }
  if (!named && next < args.size())
    throw std::runtime_error("format: not all arguments converted during string formatting");
  return out;
}

bool IsWordByte(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }

// Whether `of`, from `p` (inside it) to its end, is white space only: what Python's int() and
// float() allow after a number.
bool OnlySpaceFrom(const char* p, const std::string& of) {
  return std::all_of(p, of.c_str() + of.size(),
                     [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; });
}

// Python's float(s) for a string: the number with only white space around it (strtod skips what
// leads); nullopt for anything else.
std::optional<double> PythonFloat(const std::string& text) {
  char* end = nullptr;
  const double d = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || !OnlySpaceFrom(end, text)) return std::nullopt;
  return d;
}

// Python's int(d) for a float, where it fits in 64 bits.
std::optional<int64_t> TruncatedInt(double d) {
  if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return std::nullopt;
  return static_cast<int64_t>(d);
}

// Python's s.strip(chars): the characters (UTF-8) of `chars` taken off either end (minja::strip
// takes a set of bytes, which cuts a multi-byte character).
std::string StripChars(const std::string& s, const std::string& chars) {
  const std::vector<std::string> strip = Value::utf8_chars(chars);
  const std::vector<std::string> text = Value::utf8_chars(s);
  auto stripped = [&](const std::string& c) { return std::find(strip.begin(), strip.end(), c) != strip.end(); };
  size_t begin = 0, end = text.size();
  while (begin < end && stripped(text[begin])) ++begin;
  while (end > begin && stripped(text[end - 1])) --end;
  std::string out;
  for (size_t k = begin; k < end; ++k) out += text[k];
  return out;
}

}  // namespace

void AddJinjaFilters(const std::shared_ptr<Context>& context) {
  auto set = [&](const char* name, Value filter) { context->set(name, std::move(filter)); };

  set("first", Filter("first", {"seq"}, 1, [](std::vector<Value>& a) {
        std::vector<Value> items = Items(a[0], "first");
        return items.empty() ? Value() : items.front();
      }));
  set("last", Filter("last", {"seq"}, 1, [](std::vector<Value>& a) {
        std::vector<Value> items = Items(a[0], "last");
        return items.empty() ? Value() : items.back();
      }));
  set("list", Filter("list", {"value"}, 1, [](std::vector<Value>& a) { return ListOf(Items(a[0], "list")); }));
  set("reverse", Filter("reverse", {"value"}, 1, [](std::vector<Value>& a) {
        std::vector<Value> items = Items(a[0], "reverse");
        std::reverse(items.begin(), items.end());
        if (!a[0].is_string()) return ListOf(std::move(items));
        std::string text;
        for (const Value& c : items) text += c.get<std::string>();
        return Value(text);
      }));
  set("sort", Filter("sort", {"value", "reverse", "case_sensitive", "attribute"}, 1, [](std::vector<Value>& a) {
        std::vector<Value> items = Items(a[0], "sort");
        const bool reverse = a[1].to_bool(), case_sensitive = a[2].to_bool();
        std::vector<std::pair<Value, Value>> keyed;
        for (Value& item : items) keyed.emplace_back(SortKey(item, a[3], case_sensitive), item);
        std::stable_sort(keyed.begin(), keyed.end(), [reverse](const auto& x, const auto& y) {
          return reverse ? y.first < x.first : x.first < y.first;
        });
        Value list = Value::array();
        for (auto& [key, item] : keyed) list.push_back(item);
        return list;
      }));
  set("max", Filter("max", {"value", "case_sensitive", "attribute"}, 1,
                    [](std::vector<Value>& a) { return MinOrMax(a, true); }));
  set("min", Filter("min", {"value", "case_sensitive", "attribute"}, 1,
                    [](std::vector<Value>& a) { return MinOrMax(a, false); }));
  set("sum", Filter("sum", {"iterable", "attribute", "start"}, 1, [](std::vector<Value>& a) {
        Value total = a[2].is_null() ? Value(int64_t{0}) : a[2];
        for (Value& item : Items(a[0], "sum")) total = total + Attribute(item, a[1]);
        return total;
      }));
  set("abs", Filter("abs", {"x"}, 1, [](std::vector<Value>& a) {
        if (a[0].is_number_integer()) return Value(static_cast<int64_t>(std::llabs(a[0].get<int64_t>())));
        if (a[0].is_number()) return Value(std::fabs(a[0].get<double>()));
        throw std::runtime_error("abs: a number is required, not " + Repr(a[0]));
      }));
  set("float", Filter("float", {"value", "default"}, 1, [](std::vector<Value>& a) {
        const Value fallback = a[1].is_null() ? Value(0.0) : a[1];
        if (a[0].is_number()) return Value(a[0].get<double>());
        if (a[0].is_boolean()) return Value(a[0].get<bool>() ? 1.0 : 0.0);
        if (!a[0].is_string()) return fallback;
        const std::optional<double> d = PythonFloat(a[0].get<std::string>());
        return d ? Value(*d) : fallback;
      }));
  set("round", Filter("round", {"value", "precision", "method"}, 1, [](std::vector<Value>& a) {
        const int64_t precision = a[1].is_null() ? 0 : a[1].get<int64_t>();
        const std::string method = a[2].is_null() ? "common" : a[2].to_str();
        if (method != "common" && method != "ceil" && method != "floor") {
          throw std::runtime_error("round: method must be 'common', 'ceil' or 'floor'");
        }
        if (!a[0].is_number()) throw std::runtime_error("round: a number is required, not " + Repr(a[0]));
        if (method == "common") {
          if (a[0].is_number_integer() && precision >= 0) return a[0];  // Python's round of an int: the int
          return Value(PythonRound(a[0].get<double>(), precision));
        }
        const double scale = std::pow(10.0, static_cast<double>(precision));
        const double x = a[0].get<double>() * scale;
        return Value((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
      }));
  set("title", Filter("title", {"s"}, 1, [](std::vector<Value>& a) {
        const std::string s = a[0].to_str();
        std::string out;
        bool word_start = true;
        for (char c : s) {
          const bool separator =
              c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || std::isspace(static_cast<unsigned char>(c));
          out += separator ? c
                           : static_cast<char>(word_start ? std::toupper(static_cast<unsigned char>(c))
                                                          : std::tolower(static_cast<unsigned char>(c)));
          word_start = separator;
        }
        return Value(out);
      }));
  set("capitalize", Filter("capitalize", {"s"}, 1, [](std::vector<Value>& a) {
        std::string s = AsciiLower(a[0].to_str());
        if (!s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
        return Value(s);
      }));
  set("upper", Filter("upper", {"s"}, 1, [](std::vector<Value>& a) { return Value(AsciiUpper(a[0].to_str())); }));
  set("lower", Filter("lower", {"s"}, 1, [](std::vector<Value>& a) { return Value(AsciiLower(a[0].to_str())); }));
  set("replace", Filter("replace", {"s", "old", "new", "count"}, 3, [](std::vector<Value>& a) {
        const int64_t count = a[3].is_null() ? -1 : a[3].get<int64_t>();
        return Value(minja::python_replace(a[0].to_str(), a[1].to_str(), a[2].to_str(), count));
      }));
  set("format", Value::callable([](const std::shared_ptr<Context>&, ArgumentsValue& args) {
        if (args.args.empty()) throw std::runtime_error("format() missing required argument 'value'");
        if (args.args.size() > 1 && !args.kwargs.empty()) {
          throw std::runtime_error("format: can't handle positional and keyword arguments at the same time");
        }
        Value kwargs = Value::object();
        for (auto& [name, value] : args.kwargs) kwargs.set(Value(name), value);
        const std::vector<Value> positional(args.args.begin() + 1, args.args.end());
        return Value(PercentFormat(args.args[0].to_str(), positional, kwargs));
      }));
  set("center", Filter("center", {"value", "width"}, 1, [](std::vector<Value>& a) {
        const std::string s = a[0].to_str();
        const int64_t width = a[1].is_null() ? 80 : a[1].get<int64_t>();
        const int64_t len = static_cast<int64_t>(Value::utf8_chars(s).size());
        if (width <= len) return Value(s);
        const int64_t margin = width - len, left = margin / 2 + (margin & width & 1);  // CPython's split
        return Value(std::string(left, ' ') + s + std::string(margin - left, ' '));
      }));
  set("wordcount", Filter("wordcount", {"s"}, 1, [](std::vector<Value>& a) {
        const std::string s = a[0].to_str();
        int64_t words = 0;
        for (size_t i = 0; i < s.size(); ++i) {
          if (IsWordByte(s[i]) && (i == 0 || !IsWordByte(s[i - 1]))) ++words;
        }
        return Value(words);
      }));
  set("truncate", Filter("truncate", {"s", "length", "killwords", "end", "leeway"}, 1, [](std::vector<Value>& a) {
        const std::vector<std::string> chars = Value::utf8_chars(a[0].to_str());
        const int64_t length = a[1].is_null() ? 255 : a[1].get<int64_t>();
        const std::string end = a[3].is_null() ? "..." : a[3].to_str();
        const int64_t leeway = a[4].is_null() ? 5 : a[4].get<int64_t>();
        const int64_t end_len = static_cast<int64_t>(Value::utf8_chars(end).size());
        if (length < end_len) throw std::runtime_error("truncate: expected length >= " + std::to_string(end_len));
        if (static_cast<int64_t>(chars.size()) <= length + leeway) return Value(a[0].to_str());
        std::string head;
        for (int64_t i = 0; i < length - end_len; ++i) head += chars[i];
        if (!a[2].to_bool()) {
          const size_t space = head.rfind(' ');
          if (space != std::string::npos) head.resize(space);
        }
        return Value(head + end);
      }));
  set("batch", Filter("batch", {"value", "linecount", "fill_with"}, 2, [](std::vector<Value>& a) {
        const int64_t n = a[1].get<int64_t>();
        if (n <= 0) throw std::runtime_error("batch: linecount must be positive");
        Value batches = Value::array();
        Value current = Value::array();
        for (Value& item : Items(a[0], "batch")) {
          current.push_back(item);
          if (static_cast<int64_t>(current.size()) == n) {
            batches.push_back(current);
            current = Value::array();
          }
        }
        if (current.size() > 0) {
          if (!a[2].is_null()) {
            while (static_cast<int64_t>(current.size()) < n) current.push_back(a[2]);
          }
          batches.push_back(current);
        }
        return batches;
      }));
  set("d", context->get("default"));  // Jinja's alias
  // Jinja's global dict(key=value, ...) (a function, not a filter: Context::is_global_function).
  set("dict", Value::callable([](const std::shared_ptr<Context>&, ArgumentsValue& args) {
        if (!args.args.empty()) throw std::runtime_error("dict(): only keyword arguments are taken here");
        Value object = Value::object();
        for (auto& [name, value] : args.kwargs) object.set(Value(name), value);
        return object;
      }));
  set("trim", Filter("trim", {"value", "chars"}, 1, [](std::vector<Value>& a) {
        if (a[0].is_null()) return a[0];
        if (a[1].is_null()) return Value(minja::strip(a[0].to_str()));  // str.strip(): Python's white space
        return Value(StripChars(a[0].to_str(), a[1].to_str()));
      }));
  set("int", Filter("int", {"value", "default", "base"}, 1, [](std::vector<Value>& a) {
        const Value fallback = a[1].is_null() ? Value(int64_t{0}) : a[1];
        if (a[0].is_number_integer()) return a[0];
        if (a[0].is_boolean()) return Value(static_cast<int64_t>(a[0].get<bool>()));
        if (a[0].is_number_float()) {
          const std::optional<int64_t> n = TruncatedInt(a[0].get<double>());
          return n ? Value(*n) : fallback;
        }
        if (!a[0].is_string()) return fallback;
        // Python's int(s, base), then int(float(s)): blanks around, one sign, underscores between digits.
        std::string text = a[0].get<std::string>();
        std::string digits;
        for (char c : text) {
          if (c != '_') digits += c;
        }
        const int base = a[2].is_null() ? 10 : static_cast<int>(a[2].get<int64_t>());
        char* end = nullptr;
        errno = 0;
        const long long n = std::strtoll(digits.c_str(), &end, base);
        if (end != digits.c_str() && errno == 0 && OnlySpaceFrom(end, digits) && text.find("__") == std::string::npos)
          return Value(static_cast<int64_t>(n));
        const std::optional<double> d = PythonFloat(text);
        const std::optional<int64_t> truncated = d ? TruncatedInt(*d) : std::nullopt;
        return truncated ? Value(*truncated) : fallback;
      }));
  // select / reject without a test keep the items that are true / false (minja requires a test).
  for (const bool keep_true : {true, false}) {
    const char* name = keep_true ? "select" : "reject";
    const Value with_test = context->get(name);
    set(name, Value::callable([=](const std::shared_ptr<Context>& ctx, ArgumentsValue& args) {
          if (args.args.size() != 1 || !args.kwargs.empty()) return with_test.call(ctx, args);
          Value kept = Value::array();
          for (Value& item : Items(args.args[0], name)) {
            if (item.to_bool() == keep_true) kept.push_back(item);
          }
          return kept;
        }));
  }
}

}  // namespace glmserve::tokenizer
