// Small client helpers shared by the C++ server tests (client side only: no server code).
#pragma once

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "glmserve/v1/inference.grpc.pb.h"

namespace glmserve::testing {

inline void SetDeadline(grpc::ClientContext* ctx, std::chrono::milliseconds d) {
  ctx->set_deadline(std::chrono::system_clock::now() + d);
}

// grpc.health.v1.Health/Check through the generic stub (hand-encoded: one string field in, one
// enum field out). Returns 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN; -1 on RPC error.
inline int HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                       grpc::Status* status_out = nullptr) {
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    request.push_back(static_cast<char>(service.size()));  // < 128 bytes here
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, std::chrono::seconds(5));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer, &response_buffer,
                 [&done](grpc::Status s) { done.set_value(s); });
  grpc::Status status = done.get_future().get();
  if (status_out != nullptr) *status_out = status;
  if (!status.ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!response_buffer.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (bytes.size() >= 2 && bytes[0] == 0x08) return static_cast<unsigned char>(bytes[1]);
  return 0;
}

struct StreamResult {
  grpc::Status status;
  std::vector<v1::InferResponse> messages;
  std::vector<int32_t> ids;  // concatenated output_ids
};

inline StreamResult RunStream(v1::Inference::Stub* stub, const v1::InferRequest& request,
                              std::chrono::milliseconds deadline) {
  StreamResult out;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, deadline);
  auto reader = stub->InferStream(&ctx, request);
  v1::InferResponse message;
  while (reader->Read(&message)) {
    out.ids.insert(out.ids.end(), message.output_ids().begin(), message.output_ids().end());
    out.messages.push_back(message);
  }
  out.status = reader->Finish();
  return out;
}

inline v1::InferRequest MakeProtoRequest(std::vector<int32_t> ids, int32_t max_new_tokens) {
  v1::InferRequest r;
  for (int32_t id : ids) r.add_input_ids(id);
  r.set_max_new_tokens(max_new_tokens);
  return r;
}

}  // namespace glmserve::testing
