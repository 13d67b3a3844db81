// Bearer tokens with roles, TLS and mutual TLS, against a real server with generated certificates.
#include <snappy.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "aeserve/v1/scoring.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "prometheus/remote.pb.h"
#include "server/server.h"
#include "tests/admin_client.h"
#include "tests/https_call.h"
#include "tests/test_models.h"
#include "tests/test_server.h"

namespace aeserve::testing {
namespace {

using grpc::StatusCode;

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::unique_ptr<server::Server> StartServer(const std::string& dir, server::Options o) {
  o.host = "127.0.0.1";
  o.port = 0;
  o.metrics_port = -1;
  o.model_dir = dir;
  o.threads = 1;
  return StartTestServer(o);
}

grpc::Status ListModels(std::shared_ptr<grpc::Channel> ch, const std::string& token) {
  auto stub = v1::Scoring::NewStub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  v1::ListModelsResponse resp;
  return stub->ListModels(&ctx, v1::ListModelsRequest(), &resp);
}

grpc::Status Activate(std::shared_ptr<grpc::Channel> ch, const std::string& token) {
  auto stub = v1::ModelAdmin::NewStub(ch);
  grpc::ClientContext ctx;
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  v1::ActivateVersionRequest req;
  req.set_model("plain");
  req.set_version(1);
  v1::ModelInfoBrief b;
  return stub->ActivateVersion(&ctx, req, &b);
}

TEST(Security, TokensAndRoles) {
  TempDir dir("aeserve_auth");
  Store(dir.path(), "plain", TrainSmall(v1::MODEL_KIND_PLAIN));
  std::ofstream(dir.path() + "/tokens")
      << "# token role\nscorer-secret score\nadmin-secret admin\n";
  server::Options o;
  o.auth_tokens = dir.path() + "/tokens";
  auto s = StartServer(dir.path(), o);
  ASSERT_TRUE(s);
  auto ch = grpc::CreateChannel("127.0.0.1:" + std::to_string(s->port()),
                                grpc::InsecureChannelCredentials());
  EXPECT_EQ(ListModels(ch, "").error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ListModels(ch, "wrong").error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(ListModels(ch, "scorer-secret").ok());
  EXPECT_TRUE(ListModels(ch, "admin-secret").ok());
  EXPECT_EQ(Activate(ch, "").error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Activate(ch, "scorer-secret").error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(Activate(ch, "admin-secret").ok());
  // Streams and training uploads are checked too.
  auto scoring = v1::Scoring::NewStub(ch);
  grpc::ClientContext sctx;
  auto stream = scoring->StreamScore(&sctx);
  v1::StreamScoreResponse r;
  EXPECT_FALSE(stream->Read(&r));
  EXPECT_EQ(stream->Finish().error_code(), StatusCode::UNAUTHENTICATED);
  auto admin = v1::ModelAdmin::NewStub(ch);
  v1::TrainingJobHeader h;
  h.set_model("plain");
  h.set_num_features(kFeatures);
  h.mutable_spec()->set_code_size(2);
  v1::TrainingJob job;
  EXPECT_EQ(
      CreateJob(admin.get(), h, std::vector<float>(kFeatures * 10, 1.f), &job, "scorer-secret")
          .error_code(),
      StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(
      CreateJob(admin.get(), h, std::vector<float>(kFeatures * 10, 1.f), &job, "admin-secret")
          .ok());
}

TEST(Security, BadTokenFileRefusesToStart) {
  TempDir dir("aeserve_auth_bad");
  std::ofstream(dir.path() + "/tokens") << "only-a-token\n";
  server::Options o;
  o.host = "127.0.0.1";
  o.port = 0;
  o.metrics_port = -1;
  o.model_dir = dir.path();
  o.auth_tokens = dir.path() + "/tokens";
  auto s = server::Server::Start(o, spdlog::null_logger_mt("security_bad"));
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
}

class Tls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("aeserve_tls");
    const std::string d = dir_->path();
    const std::string script = "cd " + d +
                               " && "
                               "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out "
                               "ca.pem -days 2 -subj /CN=aeserve-test-ca && "
                               "openssl req -newkey rsa:2048 -nodes -keyout server.key -out "
                               "server.csr -subj /CN=localhost && "
                               "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > san.ext && "
                               "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key "
                               "-CAcreateserial -out server.pem -days 2 -extfile san.ext && "
                               "openssl req -newkey rsa:2048 -nodes -keyout client.key -out "
                               "client.csr -subj /CN=aeserve-client && "
                               "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key "
                               "-CAcreateserial -out client.pem -days 2 && "
                               "openssl req -x509 -newkey rsa:2048 -nodes -keyout rogue.key -out "
                               "rogue.pem -days 2 -subj /CN=rogue";
    ASSERT_EQ(std::system((script + " > openssl.log 2>&1").c_str()), 0) << Read(d + "/openssl.log");
    Store(d + "/models", "plain", TrainSmall(v1::MODEL_KIND_PLAIN));
  }
  static void TearDownTestSuite() { delete dir_; }

  std::shared_ptr<grpc::Channel> Secure(int port, const std::string& cert, const std::string& key) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = Read(dir_->path() + "/ca.pem");
    if (!cert.empty()) {
      ssl.pem_cert_chain = Read(dir_->path() + "/" + cert);
      ssl.pem_private_key = Read(dir_->path() + "/" + key);
    }
    return grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::SslCredentials(ssl));
  }
  static inline TempDir* dir_ = nullptr;
  static inline int counter_ = 0;
};

TEST_F(Tls, ServerTls) {
  server::Options o;
  o.tls_cert = dir_->path() + "/server.pem";
  o.tls_key = dir_->path() + "/server.key";
  auto s = StartServer(dir_->path() + "/models", o);
  ASSERT_TRUE(s);
  EXPECT_TRUE(ListModels(Secure(s->port(), "", ""), "").ok());
  // A plaintext client cannot talk to a TLS server.
  auto plain = grpc::CreateChannel("127.0.0.1:" + std::to_string(s->port()),
                                   grpc::InsecureChannelCredentials());
  EXPECT_EQ(ListModels(plain, "").error_code(), StatusCode::UNAVAILABLE);
}

// Remote write over HTTPS on the ingest port, with the server's certificate; with a client CA,
// only clients with a certificate it signed. The plain-HTTP metrics port takes no remote writes.
TEST_F(Tls, RemoteWriteOverHttps) {
  const std::string d = dir_->path();
  prometheus::WriteRequest w;
  auto* ts = w.add_timeseries();
  ts->add_labels()->set_name("__name__");
  ts->mutable_labels(0)->set_value("up");
  ts->add_samples()->set_value(1);
  std::string body;
  snappy::Compress(w.SerializeAsString().data(), w.ByteSizeLong(), &body);
  // One real write: answered, its sample counted (no binding selects it).
  const std::string headers =
      "Content-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\n";
  const std::string answered = "accepted 0, unmatched 1";
  server::Options o;
  o.tls_cert = d + "/server.pem";
  o.tls_key = d + "/server.key";
  o.ingest_port = -1;
  o.metrics_port = 0;
  {
    auto s = StartServer(d + "/models", o);
    ASSERT_TRUE(s);
    const int port = s->ingest_port();
    HttpReply r = HttpsCall(port, {d + "/ca.pem", "", ""}, "POST", "/api/v1/write", headers, body);
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_NE(r.body.find(answered), std::string::npos) << r.body;
    EXPECT_EQ(HttpCall(port, "POST", "/api/v1/write", headers, body, 5).status, 0)
        << "plain HTTP to the HTTPS port";
    EXPECT_EQ(
        HttpsCall(port, {d + "/rogue.pem", "", ""}, "POST", "/api/v1/write", headers, body).status,
        0)
        << "a client that does not trust the server's certificate";
    EXPECT_EQ(HttpCall(s->metrics_port(), "POST", "/api/v1/write", headers, body).status, 404);
  }
  o.tls_client_ca = d + "/ca.pem";
  auto s = StartServer(d + "/models", o);
  ASSERT_TRUE(s);
  const int port = s->ingest_port();
  HttpReply r = HttpsCall(port, {d + "/ca.pem", d + "/client.pem", d + "/client.key"}, "POST",
                          "/api/v1/write", headers, body);
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_NE(r.body.find(answered), std::string::npos) << r.body;
  EXPECT_EQ(HttpsCall(port, {d + "/ca.pem", "", ""}, "POST", "/api/v1/write", headers, body).status,
            0)
      << "no client certificate";
  EXPECT_EQ(HttpsCall(port, {d + "/ca.pem", d + "/rogue.pem", d + "/rogue.key"}, "POST",
                      "/api/v1/write", headers, body)
                .status,
            0)
      << "a client certificate from another CA";
}

TEST_F(Tls, MutualTls) {
  server::Options o;
  o.tls_cert = dir_->path() + "/server.pem";
  o.tls_key = dir_->path() + "/server.key";
  o.tls_client_ca = dir_->path() + "/ca.pem";
  auto s = StartServer(dir_->path() + "/models", o);
  ASSERT_TRUE(s);
  EXPECT_TRUE(ListModels(Secure(s->port(), "client.pem", "client.key"), "").ok());
  EXPECT_EQ(ListModels(Secure(s->port(), "", ""), "").error_code(), StatusCode::UNAVAILABLE)
      << "no client certificate";
  EXPECT_EQ(ListModels(Secure(s->port(), "rogue.pem", "rogue.key"), "").error_code(),
            StatusCode::UNAVAILABLE)
      << "a certificate from another CA";
  // The audit log names the client by its certificate's subject.
  auto admin = v1::ModelAdmin::NewStub(Secure(s->port(), "client.pem", "client.key"));
  {
    grpc::ClientContext ctx;
    v1::SetRetrainPolicyRequest req;
    req.set_model("audited");
    req.mutable_policy()->set_retain_rows(100);
    v1::AutopilotStatus out;
    grpc::Status st = admin->SetRetrainPolicy(&ctx, req, &out);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  grpc::ClientContext ctx;
  v1::ListEventsRequest req;
  req.set_model("audited");
  v1::ListEventsResponse events;
  ASSERT_TRUE(admin->ListEvents(&ctx, req, &events).ok());
  ASSERT_EQ(events.events_size(), 1);
  EXPECT_NE(events.events(0).actor().find("aeserve-client"), std::string::npos)
      << events.events(0).actor();
}

TEST_F(Tls, BadTlsFilesAreRefusedWithTheReason) {
  auto start = [&](const std::string& cert, const std::string& key) {
    server::Options o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.metrics_port = 0;
    o.model_dir = dir_->path() + "/models";
    o.tls_cert = cert;
    o.tls_key = key;
    return server::Server::Start(o, spdlog::null_logger_mt("tls_bad_" + std::to_string(counter_++)))
        .status();
  };
  const std::string d = dir_->path();
  absl::Status st = start(d, d + "/server.key");  // a directory as the certificate
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("--tls_cert"), std::string::npos) << st;
  EXPECT_NE(st.message().find("directory"), std::string::npos) << st;
  st = start(d + "/server.pem", d + "/rogue.key");  // another certificate's key
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("does not match"), std::string::npos) << st;
  st = start(d + "/server.pem", "");
  EXPECT_NE(st.message().find("give both"), std::string::npos) << st;
  st = start(d + "/server.key", d + "/server.key");  // a key where the certificate belongs
  EXPECT_NE(st.message().find("no PEM certificate"), std::string::npos) << st;
}

}  // namespace
}  // namespace aeserve::testing
