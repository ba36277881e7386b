// glmserve-health-probe: a grpc.health.v1 client for Docker's HEALTHCHECK (Kubernetes uses its
// native gRPC probes instead). Exit 0 when Check(service) answers SERVING, 1 otherwise (not
// serving, unknown service, timeout, connection refused), 2 on bad usage: the contract of
// grpc_health_probe, without a second gRPC stack or Python in the runtime image.
//
//   glmserve-health-probe [-addr HOST:PORT] [-service NAME] [-timeout-ms N]
//                         [-tls-ca FILE [-tls-server-name NAME] [-tls-cert FILE -tls-key FILE]]
//
// -tls-ca: the server runs with --tls-cert/--tls-key; trust FILE (PEM). -tls-server-name: the name
// the certificate carries when -addr is an IP (e.g. glmserve.NAMESPACE.svc). -tls-cert/-tls-key: a
// client certificate, for a server with --tls-client-ca (mutual TLS). Kubernetes' native gRPC
// probes speak plaintext only: with TLS on, the pod probes with this binary (deploy/README.md#tls).
//
// No generated stubs: HealthCheckRequest is `string service = 1`, HealthCheckResponse is
// `ServingStatus status = 1` (SERVING = 1), encoded by hand over a generic stub.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

grpc::ByteBuffer Encode(const std::string& service) {
  std::string bytes;
  if (!service.empty()) {  // field 1, wire type 2 (length-delimited); names are < 128 bytes
    bytes.push_back(0x0a);
    bytes.push_back(static_cast<char>(service.size()));
    bytes += service;
  }
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

// Returns the status enum (0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN), -1 if garbled.
int Decode(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (bytes.empty()) return 0;  // proto3: status omitted = UNKNOWN
  if (bytes.size() >= 2 && bytes[0] == 0x08 && (bytes[1] & 0x80) == 0) return bytes[1];
  return -1;
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream s;
  s << in.rdbuf();
  *out = s.str();
  return !in.bad();
}

}  // namespace

int main(int argc, char** argv) {
  std::string addr = "127.0.0.1:50051";
  std::string service;
  long timeout_ms = 2000;
  std::string tls_ca, tls_cert, tls_key, tls_server_name;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr,
                   "usage: %s [-addr HOST:PORT] [-service NAME] [-timeout-ms N] [-tls-ca FILE "
                   "[-tls-server-name NAME] [-tls-cert FILE -tls-key FILE]]\n",
                   argv[0]);
      return 2;
    }
    const std::string value = argv[++i];
    if (flag == "-addr" || flag == "--addr") {
      addr = value;
    } else if (flag == "-service" || flag == "--service") {
      service = value;
    } else if (flag == "-timeout-ms" || flag == "--timeout-ms") {
      timeout_ms = std::strtol(value.c_str(), nullptr, 10);
    } else if (flag == "-tls-ca" || flag == "--tls-ca") {
      tls_ca = value;
    } else if (flag == "-tls-cert" || flag == "--tls-cert") {
      tls_cert = value;
    } else if (flag == "-tls-key" || flag == "--tls-key") {
      tls_key = value;
    } else if (flag == "-tls-server-name" || flag == "--tls-server-name") {
      tls_server_name = value;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (service.size() > 127 || timeout_ms <= 0) {
    std::fprintf(stderr, "service name too long or timeout not positive\n");
    return 2;
  }

  if ((!tls_cert.empty() || !tls_key.empty() || !tls_server_name.empty()) && tls_ca.empty()) {
    std::fprintf(stderr, "-tls-cert, -tls-key and -tls-server-name need -tls-ca\n");
    return 2;
  }
  if (tls_cert.empty() != tls_key.empty()) {
    std::fprintf(stderr, "-tls-cert and -tls-key go together\n");
    return 2;
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments args;
  if (!tls_ca.empty()) {
    grpc::SslCredentialsOptions options;
    for (auto [flag, path, out] : {std::make_tuple("-tls-ca", &tls_ca, &options.pem_root_certs),
                                   std::make_tuple("-tls-cert", &tls_cert, &options.pem_cert_chain),
                                   std::make_tuple("-tls-key", &tls_key, &options.pem_private_key)}) {
      if (!path->empty() && !ReadFile(*path, out)) {
        std::fprintf(stderr, "%s: cannot read '%s': %s\n", flag, path->c_str(), std::strerror(errno));
        return 2;
      }
    }
    credentials = grpc::SslCredentials(options);
    if (!tls_server_name.empty()) args.SetSslTargetNameOverride(tls_server_name);
  }
  auto channel = grpc::CreateCustomChannel(addr, credentials, args);
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  const grpc::ByteBuffer request = Encode(service);
  grpc::ByteBuffer response;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = std::move(s);
                   done = true;
                   cv.notify_one();
                 });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!status.ok()) {
    std::fprintf(stderr, "health check of '%s' at %s failed: %d %s\n", service.c_str(), addr.c_str(),
                 static_cast<int>(status.error_code()), status.error_message().c_str());
    return 1;
  }
  static const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  const int serving = Decode(response);
  std::printf("status: %s\n", serving >= 0 && serving <= 3 ? kNames[serving] : "GARBLED");
  return serving == 1 ? 0 : 1;
}
