// Small RETURN_IF_ERROR / ASSIGN_OR_RETURN pair: the installed abseil (20220623) does not export its own.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define GLM_STATUS_CONCAT_INNER(a, b) a##b
#define GLM_STATUS_CONCAT(a, b) GLM_STATUS_CONCAT_INNER(a, b)

#define GLM_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::absl::Status _glm_status = (expr);       \
    if (!_glm_status.ok()) return _glm_status; \
  } while (0)

#define GLM_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

#define GLM_ASSIGN_OR_RETURN(lhs, expr) \
  GLM_ASSIGN_OR_RETURN_IMPL(GLM_STATUS_CONCAT(_glm_statusor_, __LINE__), lhs, expr)
