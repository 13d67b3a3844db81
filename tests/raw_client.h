// Calls with raw message bytes, for tests that must send what no generated stub would: malformed
// protobuf in the middle of a stream, or a stream that stops without half-closing.
#pragma once

#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/support/byte_buffer.h"

namespace aeserve::testing {

inline grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

inline std::string FromBuffer(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!b.Dump(&slices).ok()) return out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

struct RawResult {
  grpc::Status status;
  std::vector<std::string> responses;
  bool finished = false;  // false: the call did not end within the timeout
};

// Sends `messages` on `method` (any streaming shape), then half-closes unless `half_close` is
// false (the call then ends by its deadline or the server), and collects every response.
inline RawResult RawStreamCall(const std::shared_ptr<grpc::Channel>& channel,
                               const std::string& method, const std::vector<std::string>& messages,
                               bool half_close = true, double deadline_s = 20,
                               const std::string& token = "") {
  class Reactor : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    Reactor(std::vector<std::string> msgs, bool half_close)
        : msgs_(std::move(msgs)), half_close_(half_close) {}
    void Begin() {
      StartRead(&in_);
      {
        std::lock_guard<std::mutex> lock(write_mu_);
        Next();
      }
      StartCall();
    }
    void OnWriteDone(bool ok) override {
      // The lock orders this thread's writes after Begin's (a hand-off TSan cannot see in gRPC).
      std::lock_guard<std::mutex> lock(write_mu_);
      if (ok) Next();
    }
    void OnReadDone(bool ok) override {
      if (!ok) return;
      {
        std::lock_guard<std::mutex> lock(mu_);
        result_.responses.push_back(FromBuffer(in_));
      }
      StartRead(&in_);
    }
    void OnDone(const grpc::Status& s) override {
      std::lock_guard<std::mutex> lock(mu_);
      result_.status = s;
      result_.finished = true;
      cv_.notify_all();
    }
    RawResult Wait(double seconds) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return result_.finished; });
      return result_;
    }

   private:
    void Next() {
      if (next_ < msgs_.size()) {
        out_ = ToBuffer(msgs_[next_++]);
        StartWrite(&out_);
      } else if (half_close_ && !closed_) {
        closed_ = true;
        StartWritesDone();
      }
    }
    std::mutex write_mu_;
    std::vector<std::string> msgs_;
    const bool half_close_;
    size_t next_ = 0;
    bool closed_ = false;
    grpc::ByteBuffer out_, in_;
    std::mutex mu_;
    std::condition_variable cv_;
    RawResult result_;
  };
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::duration<double>(deadline_s)));
  Reactor reactor(messages, half_close);
  grpc::StubOptions options;
  stub.PrepareBidiStreamingCall(&ctx, method, options, &reactor);
  reactor.Begin();
  // The deadline ends the call; a little more covers its delivery.
  RawResult r = reactor.Wait(deadline_s + 10);
  if (!r.finished) {
    ctx.TryCancel();
    reactor.Wait(10);
  }
  return r;
}

// One unary call with a raw request body; returns its status (bounded by `deadline_s`).
inline grpc::Status RawUnaryCall(const std::shared_ptr<grpc::Channel>& channel,
                                 const std::string& method, const grpc::ByteBuffer& request,
                                 grpc::ByteBuffer* response, double deadline_s = 30,
                                 const std::string& token = "") {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::duration<double>(deadline_s)));
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status result;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, response, [&](grpc::Status s) {
    std::lock_guard<std::mutex> lock(mu);
    result = std::move(s);
    done = true;
    cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(mu);
  if (!cv.wait_for(lock, std::chrono::duration<double>(deadline_s + 10), [&] { return done; })) {
    ctx.TryCancel();
    cv.wait(lock, [&] { return done; });
  }
  return result;
}

// A message of `bytes` bytes whose first field is a length-delimited field 3 covering the rest:
// to the server it looks like one huge `samples` (ScoreRequest) until it is parsed.
inline grpc::ByteBuffer HugeMessage(size_t bytes) {
  grpc::Slice slice(bytes);
  uint8_t* p = const_cast<uint8_t*>(slice.begin());
  const size_t n = bytes - 6;
  p[0] = 0x1a;
  for (int i = 0; i < 4; ++i) p[1 + i] = static_cast<uint8_t>(0x80 | ((n >> (7 * i)) & 0x7f));
  p[5] = static_cast<uint8_t>(n >> 28);
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace aeserve::testing
