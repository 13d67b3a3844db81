// Bearer-token access control.
#include "auth.h"

#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "file_io.h"

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
    std::string token, role, extra;
    if (!(words >> token)) continue;
    if (!(words >> role) || (words >> extra) || (role != "score" && role != "admin")) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " line ", n, ": expected '<token> score|admin'"));
    }
    a.tokens_[token] = role == "admin" ? Role::kAdmin : Role::kScore;
  }
  if (a.tokens_.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no tokens"));
  return a;
}

grpc::Status Authorizer::Check(const grpc::CallbackServerContext* ctx, Role needed) const {
  if (!enabled_) return grpc::Status::OK;
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing 'authorization: Bearer <token>'");
  }
  std::string value(it->second.data(), it->second.size());
  constexpr absl::string_view kBearer = "Bearer ";
  if (value.rfind(std::string(kBearer), 0) != 0) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "authorization must be 'Bearer <token>'");
  }
  auto t = tokens_.find(value.substr(kBearer.size()));
  if (t == tokens_.end()) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "unknown token");
  if (static_cast<int>(t->second) < static_cast<int>(needed)) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "this call needs the admin role");
  }
  return grpc::Status::OK;
}

}  // namespace aeserve::server
