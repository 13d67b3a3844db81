// aeserve's methods are registered "raw" (gRPC hands over the message bytes) so that the server
// parses them itself: a message that does not parse gets INVALID_ARGUMENT naming its type and
// position, instead of gRPC's empty UNIMPLEMENTED (unary calls) or a read that looks like the end
// of the stream (streaming calls, where a cut upload would otherwise pass for a complete one).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/impl/codegen/server_callback_handlers.h"
#include "grpcpp/impl/service_type.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/server_callback.h"
#include "grpcpp/support/status.h"

namespace aeserve::server {

// Parses `buffer` (which it empties) into `message`; INVALID_ARGUMENT naming the type otherwise.
template <typename Message>
grpc::Status ParseMessage(grpc::ByteBuffer* buffer, Message* message,
                          const std::string& where = "") {
  if (!grpc::SerializationTraits<Message>::Deserialize(buffer, message).ok()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat(where.empty() ? "the request" : where, " does not parse as ",
                                     Message::descriptor()->full_name()));
  }
  return grpc::Status::OK;
}

// The same for a request body gRPC owns (const): parses a copy that shares its slices.
template <typename Message>
grpc::Status ParseRequest(const grpc::ByteBuffer& body, Message* message) {
  grpc::ByteBuffer copy(body);
  return ParseMessage(&copy, message);
}

template <typename Message>
grpc::Status SerializeMessage(const Message& message, grpc::ByteBuffer* out) {
  out->Clear();  // gRPC's writer starts from an empty buffer
  bool own = false;
  return grpc::SerializationTraits<Message>::Serialize(message, out, &own);
}

// One unary call, whichever way it reached the server: the parsed request, the response to fill,
// and Reply() to send it (the call is not touched after Reply; it deletes itself when gRPC is
// done).
template <typename Request, typename Response>
class UnaryCall {
 public:
  virtual ~UnaryCall() = default;
  const Request& request() const { return request_; }
  Response* response() { return &response_; }
  // Sends the response with an OK status, or just the status.
  virtual void Reply(const grpc::Status& st) = 0;

 protected:
  Request request_;
  Response response_;
};

// What a service does with a parsed unary call (it replies, now or later).
template <typename Request, typename Response>
using UnaryHandler =
    std::function<void(grpc::CallbackServerContext*, UnaryCall<Request, Response>*)>;

// gRPC's unary path: gRPC read the whole request before calling the method.
template <typename Request, typename Response>
class BufferedCall final : public grpc::ServerUnaryReactor, public UnaryCall<Request, Response> {
 public:
  explicit BufferedCall(grpc::ByteBuffer* out) : out_(out) {}
  Request* mutable_request() { return &this->request_; }
  void Reply(const grpc::Status& st) override {
    Finish(st.ok() ? SerializeMessage(this->response_, out_) : st);
  }
  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer* const out_;
};

// Runs `handler` on the request gRPC read; a request that does not parse is answered at once
// (INVALID_ARGUMENT naming its type).
template <typename Request, typename Response>
grpc::ServerUnaryReactor* Buffered(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* body,
                                   grpc::ByteBuffer* out,
                                   const UnaryHandler<Request, Response>& handler) {
  auto* call = new BufferedCall<Request, Response>(out);
  if (grpc::Status st = ParseRequest(*body, call->mutable_request()); !st.ok()) {
    call->Reply(st);
    return call;
  }
  handler(ctx, call);
  return call;
}

// The streamed path, for a unary method registered as a stream (WithStreamedMethods): gRPC hands
// the call over with its metadata and reads nothing, so `gate` (the token check) decides before a
// byte of the request is read. A refused call is answered at once and its body never read (the
// transport's flow-control window is all it can send); an admitted one reads its one message.
template <typename Request, typename Response>
class StreamedCall final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                           public UnaryCall<Request, Response> {
 public:
  StreamedCall(grpc::CallbackServerContext* ctx, const grpc::Status& gate,
               UnaryHandler<Request, Response> handler)
      : ctx_(ctx), handler_(std::move(handler)) {
    if (!gate.ok()) {
      Finish(gate);
      return;
    }
    StartRead(&in_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "the call ended before its request message"));
      return;
    }
    if (grpc::Status st = ParseMessage(&in_, &this->request_); !st.ok()) {
      Finish(st);
      return;
    }
    handler_(ctx_, this);
  }
  void Reply(const grpc::Status& st) override {
    grpc::Status s = st.ok() ? SerializeMessage(this->response_, &out_) : st;
    if (!s.ok()) {
      Finish(s);
      return;
    }
    StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
  }
  void OnDone() override { delete this; }

 private:
  grpc::CallbackServerContext* const ctx_;
  const UnaryHandler<Request, Response> handler_;
  grpc::ByteBuffer in_, out_;
};

// The bottom of a raw service: methods whose request gRPC would read before the method runs
// (unary and server-streaming ones) re-registered as streams, so that a call is authorised before
// its request is read. gRPC 1.51 reads such a request whole first, so otherwise an unauthenticated
// client could make the server hold a body up to the message limit (bounded by the resource
// quota, but shared with every other call). StreamUnary is used when bearer tokens are required
// (the buffered unary path stays otherwise: one fewer completion per call); StreamServerSide
// always (the watch calls).
template <typename Base>
class WithStreamedMethods : public Base {
 protected:
  using BidiFactory = std::function<grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*(
      grpc::CallbackServerContext*)>;
  // `index`: the method's position in `service` (full name), as the generated code numbers it;
  // checked against the descriptors (a unary method taking Request and answering Response), so a
  // reordered proto stops the server at start-up instead of parsing requests as the wrong type.
  template <typename Request, typename Response>
  void StreamUnary(const char* service, int index,
                   std::function<grpc::Status(grpc::CallbackServerContext*)> gate,
                   UnaryHandler<Request, Response> handler) {
    const google::protobuf::MethodDescriptor* m = Method(service, index);
    if (m == nullptr || m->client_streaming() || m->server_streaming() ||
        m->input_type() != Request::descriptor() || m->output_type() != Response::descriptor()) {
      std::fprintf(stderr, "aeserve: %s method %d is not unary %s -> %s\n", service, index,
                   Request::descriptor()->full_name().c_str(),
                   Response::descriptor()->full_name().c_str());
      std::abort();
    }
    Register(index, [gate = std::move(gate),
                     handler = std::move(handler)](grpc::CallbackServerContext* ctx) {
      return new StreamedCall<Request, Response>(ctx, gate(ctx), handler);
    });
  }

  // A server-streaming method (one request, a stream of answers) as a stream for gRPC's core,
  // always: `start` makes its reactor, which reads the one request itself (after its token check).
  // These calls are long-lived, so the extra read costs nothing that matters.
  template <typename Request>
  void StreamServerSide(const char* service, int index, BidiFactory start) {
    const google::protobuf::MethodDescriptor* m = Method(service, index);
    if (m == nullptr || m->client_streaming() || !m->server_streaming() ||
        m->input_type() != Request::descriptor()) {
      std::fprintf(stderr, "aeserve: %s method %d is not server-streaming from %s\n", service,
                   index, Request::descriptor()->full_name().c_str());
      std::abort();
    }
    Register(index, std::move(start));
  }

 private:
  static const google::protobuf::MethodDescriptor* Method(const char* service, int index) {
    const auto* s = google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(service);
    return s != nullptr && index < s->method_count() ? s->method(index) : nullptr;
  }
  void Register(int index, BidiFactory start) {
    using Handler = grpc::internal::CallbackBidiHandler<grpc::ByteBuffer, grpc::ByteBuffer>;
    // MarkMethodStreamed makes the method a stream for gRPC's core (no request read up front);
    // its placeholder handler is replaced at once by the real one.
    this->MarkMethodStreamed(
        index, new Handler([](grpc::CallbackServerContext*) {
          return static_cast<grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>*>(nullptr);
        }));
    this->MarkMethodRawCallback(index, new Handler(std::move(start)));
  }
};

}  // namespace aeserve::server
