// Bearer-token access control. With --auth_tokens every call needs `authorization: Bearer <token>`
// in its metadata; scoring needs the `score` or `admin` role, the admin service the `admin` role.
// Without the flag every call is allowed (the loopback default; see the README for production).
#pragma once

#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"

namespace aeserve::server {

enum class Role { kScore = 1, kAdmin = 2 };

class Authorizer {
 public:
  Authorizer() = default;  // allows everything
  // File format: one `<token> <role> [name]` per line, role `score` or `admin`; the name (default
  // "token-line-N") is the actor the audit log records. '#' starts a comment.
  static absl::StatusOr<Authorizer> FromFile(const std::string& path);

  // UNAUTHENTICATED without a known token, PERMISSION_DENIED when its role is not enough.
  grpc::Status Check(const grpc::CallbackServerContext* ctx, Role needed) const;
  // The same for an HTTP request's Authorization header (nullopt = absent).
  absl::Status CheckHeader(const std::optional<std::string>& authorization, Role needed) const;
  bool enabled() const { return enabled_; }
  // Who is calling, for the audit log: the token's name, else the client certificate's subject
  // (mutual TLS), else "anonymous".
  std::string Actor(const grpc::CallbackServerContext* ctx) const;

 private:
  struct Token {
    Role role;
    std::string name;
  };
  const Token* Find(const grpc::CallbackServerContext* ctx, grpc::Status* st) const;
  const Token* FindHeader(const std::optional<std::string>& value, absl::Status* st) const;
  bool enabled_ = false;
  std::map<std::string, Token> tokens_;
};

}  // namespace aeserve::server
