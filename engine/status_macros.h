// The two Status macros Debian's Abseil 20220623 does not ship publicly.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define AE_STATUS_CONCAT_INNER(a, b) a##b
#define AE_STATUS_CONCAT(a, b) AE_STATUS_CONCAT_INNER(a, b)

// Returns from the calling function if `expr` yields a non-OK absl::Status.
#define AE_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status ae_status_ = (expr);      \
    if (!ae_status_.ok()) return ae_status_; \
  } while (0)

// `AE_ASSIGN_OR_RETURN(auto x, F())` assigns the value of an absl::StatusOr or returns its status.
#define AE_ASSIGN_OR_RETURN(lhs, expr) \
  AE_ASSIGN_OR_RETURN_IMPL(AE_STATUS_CONCAT(ae_statusor_, __LINE__), lhs, expr)
#define AE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()
