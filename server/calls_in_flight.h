// Counts the calls the server is handling, so that shutdown can close idle connections as soon as
// the last call ends: gRPC's own shutdown otherwise waits for every connected client to close its
// connection after GOAWAY (seconds for an idle client, up to the grace period for some).
#pragma once

#include <atomic>
#include <cstdint>

#include "grpcpp/support/server_interceptor.h"

namespace aeserve::server {

class CallsInFlight : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo*) override {
    return new Call(&count_);
  }
  int64_t count() const { return count_.load(std::memory_order_acquire); }

 private:
  // Alive from the call's arrival until gRPC destroys it (after its reactor's OnDone).
  class Call : public grpc::experimental::Interceptor {
   public:
    explicit Call(std::atomic<int64_t>* count) : count_(count) {
      count_->fetch_add(1, std::memory_order_acq_rel);
    }
    ~Call() override { count_->fetch_sub(1, std::memory_order_acq_rel); }
    void Intercept(grpc::experimental::InterceptorBatchMethods* m) override { m->Proceed(); }

   private:
    std::atomic<int64_t>* count_;
  };
  std::atomic<int64_t> count_{0};
};

}  // namespace aeserve::server
