// aeserve's methods are registered "raw" (gRPC hands over the message bytes) so that the server
// parses them itself: a message that does not parse gets INVALID_ARGUMENT naming its type and
// position, instead of gRPC's empty UNIMPLEMENTED (unary calls) or a read that looks like the end
// of the stream (streaming calls, where a cut upload would otherwise pass for a complete one).
#pragma once

#include <string>

#include "absl/strings/str_cat.h"
#include "grpcpp/impl/codegen/proto_utils.h"
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

// One unary call: the parsed request, the response to fill, and Reply() to send it.
template <typename Request, typename Response>
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  // Parses `body`; when it does not parse the call is answered at once (parsed() is false and
  // the caller just returns the call to gRPC).
  UnaryCall(const grpc::ByteBuffer* body, grpc::ByteBuffer* out) : out_(out) {
    grpc::Status st = ParseRequest(*body, &request_);
    parsed_ = st.ok();
    if (!parsed_) Finish(st);
  }
  bool parsed() const { return parsed_; }
  const Request& request() const { return request_; }
  Response* response() { return &response_; }
  // Sends the response with an OK status, or just the status.
  void Reply(const grpc::Status& st) {
    grpc::Status s = st.ok() ? SerializeMessage(response_, out_) : st;
    Finish(s);
  }
  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer* const out_;
  Request request_;
  Response response_;
  bool parsed_ = false;
};

}  // namespace aeserve::server
