// Bearer-token access control.
#include "server/auth.h"

#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "engine/file_io.h"

namespace aeserve::server {

absl::StatusOr<Authorizer> Authorizer::FromFile(const std::string& path) {
  auto text = engine::ReadRegularFile(path, 16 << 20);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat("auth tokens file: ", text.status().message()));
  }
  std::istringstream in(*text);
  Authorizer a;
  a.enabled_ = true;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string token, role, name, extra;
    if (!(words >> token)) continue;
    if (!(words >> role) || (role != "score" && role != "admin") || (words >> name >> extra)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " line ", n, ": expected '<token> score|admin [name]'"));
    }
    if (name.empty()) name = absl::StrCat("token-line-", n);
    a.tokens_[token] = {role == "admin" ? Role::kAdmin : Role::kScore, name};
  }
  if (a.tokens_.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no tokens"));
  return a;
}

const Authorizer::Token* Authorizer::Find(const grpc::CallbackServerContext* ctx,
                                          grpc::Status* st) const {
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  absl::Status found;
  const Token* t = it == md.end()
                       ? FindHeader(std::nullopt, &found)
                       : FindHeader(std::string(it->second.data(), it->second.size()), &found);
  if (t == nullptr)
    *st = grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(found.message()));
  return t;
}

const Authorizer::Token* Authorizer::FindHeader(const std::optional<std::string>& value,
                                                absl::Status* st) const {
  if (!value.has_value()) {
    *st = absl::UnauthenticatedError("missing 'authorization: Bearer <token>'");
    return nullptr;
  }
  constexpr absl::string_view kBearer = "Bearer ";
  if (value->rfind(std::string(kBearer), 0) != 0) {
    *st = absl::UnauthenticatedError("authorization must be 'Bearer <token>'");
    return nullptr;
  }
  auto t = tokens_.find(value->substr(kBearer.size()));
  if (t == tokens_.end()) {
    *st = absl::UnauthenticatedError("unknown token");
    return nullptr;
  }
  return &t->second;
}

absl::Status Authorizer::CheckHeader(const std::optional<std::string>& authorization,
                                     Role needed) const {
  if (!enabled_) return absl::OkStatus();
  absl::Status st;
  const Token* t = FindHeader(authorization, &st);
  if (t == nullptr) return st;
  if (static_cast<int>(t->role) < static_cast<int>(needed)) {
    return absl::PermissionDeniedError("this call needs the admin role");
  }
  return absl::OkStatus();
}

std::string Authorizer::Actor(const grpc::CallbackServerContext* ctx) const {
  if (enabled_) {
    grpc::Status ignored;
    if (const Token* t = Find(ctx, &ignored); t != nullptr) return t->name;
  }
  if (auto auth = ctx->auth_context(); auth != nullptr) {
    for (const auto& property : {"x509_subject", "x509_common_name"}) {
      auto values = auth->FindPropertyValues(property);
      if (!values.empty()) return std::string(values.front().data(), values.front().size());
    }
  }
  return "anonymous";
}

grpc::Status Authorizer::Check(const grpc::CallbackServerContext* ctx, Role needed) const {
  if (!enabled_) return grpc::Status::OK;
  grpc::Status st;
  const Token* t = Find(ctx, &st);
  if (t == nullptr) return st;
  if (static_cast<int>(t->role) < static_cast<int>(needed)) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "this call needs the admin role");
  }
  return grpc::Status::OK;
}

}  // namespace aeserve::server
