#include "server/frontend/http_server.h"

#include <fcntl.h>
#include <httplib.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/json_util.h"
#include "runtime/printable_text.h"
#include "runtime/shown_value.h"
#include "runtime/tokenizer/tokenizer.h"
#include "server/frontend/http_api.h"
#include "server/ops/connection_phases.h"
#include "server/ops/logging.h"
#include "server/ops/port_probe.h"
#include "server/ops/socket_io.h"
#include "server/request/auth.h"
#include "server/request/byte_budget.h"
#include "server/request/client_quota.h"
#include "server/request/request.h"
#include "server/request/request_session.h"
#include "server/request/request_validation.h"

namespace glmserve {

using nlohmann::json;

namespace {

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

struct HttpServer::State {
  explicit State(const HttpServerOptions& o) : options(o), sessions(SessionsOptionsOf(o, "glmh")) {}
  const HttpServerOptions options;
  // Admission, validation, engine events, text, logs and metrics (server/request/request_session.h).
  RequestSessions sessions;
  std::atomic<bool> stopping{false};
  // /v1/models' `created` (OpenAI: when the model was made): the server's start, the same on every
  // call (it was each call's own time).
  const int64_t started_seconds = NowSeconds();

  mutable std::mutex mu;
  std::condition_variable idle_cv;
  InferenceEngine* engine = nullptr;  // guarded by mu
  bool serving = false;               // guarded by mu
  bool draining = false;              // guarded by mu
  int active = 0;                     // guarded by mu
  // Connections (each on a thread of its own) and API requests being answered / waiting for a
  // serving slot (HttpServerOptions::threads, max_waiting, max_connections).
  int connections = 0;   // guarded by mu
  int tls_refusals = 0;  // guarded by mu; TLS connections over the cap being answered 503
  // Served connections between requests (server/ops/connection_phases.h): at the cap a new
  // connection closes the one longest between requests, past kEvictAfterMs, instead of a 503.
  ConnectionPhases phases;
  std::condition_variable connections_cv;
  int api_serving = 0;  // guarded by mu
  int api_waiting = 0;  // guarded by mu
  std::condition_variable slot_cv;

  void CallStarted() {
    std::lock_guard<std::mutex> lock(mu);
    ++active;
  }
  void CallDone() {
    std::lock_guard<std::mutex> lock(mu);
    if (--active == 0) idle_cv.notify_all();
  }
};

namespace {

using State = HttpServer::State;
using Clock = std::chrono::steady_clock;

// A request head's limits (431 and the connection closed past them): Apache's default field count
// (LimitRequestFields 100); 64 KiB in all, eight of httplib's longest lines (8,192 bytes).
constexpr int64_t kMaxHeaderFields = 100;
constexpr int64_t kMaxHeadBytes = 64 * 1024;

int64_t MsUntil(Clock::time_point end) {
  if (end == Clock::time_point::max()) return int64_t{1} << 30;
  return std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count();
}

// The HTTPS context (--tls-cert/--tls-key, --tls-client-ca: mutual), set as cpp-httplib 0.11's
// SSLServer sets its own, so a client sees the same server as before: TLS 1.1 and up, no
// compression, no session resumption on renegotiation, the certificate chain file and the key; with
// a client CA, a client certificate that CA signed is required (no CA names sent, as httplib).
struct SslCtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
struct SslFree {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;
using SslPtr = std::unique_ptr<SSL, SslFree>;

absl::StatusOr<SslCtxPtr> MakeServerContext(const TlsConfig& tls) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (ctx == nullptr) {
    ERR_clear_error();
    return absl::InternalError("--tls-cert: OpenSSL could not create a TLS context for the HTTP server");
  }
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_COMPRESSION | SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION);
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_1_VERSION);
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), tls.cert_file.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx.get(), tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert: the HTTP server cannot use '", tls.cert_file, "' / '", tls.key_file, "'"));
  }
  if (tls.mutual()) {
    if (SSL_CTX_load_verify_locations(ctx.get(), tls.client_ca_file.c_str(), nullptr) != 1) {
      ERR_clear_error();
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-client-ca: the HTTP server cannot use '", tls.client_ca_file, "'"));
    }
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  return ctx;
}

// The first OpenSSL error on the thread's queue as text ("" when none), the queue cleared.
std::string TakeOpenSslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "";
  char text[256];
  ERR_error_string_n(e, text, sizeof text);
  return text;
}

// One accepted connection as cpp-httplib's Stream, with what its SocketStream and SSLSocketStream
// lack: a deadline on the whole request (head and body) rather than on each read, so a client
// sending a byte a second is cut off (slowloris); the thread-local current connection lets
// handlers end the read phase and ask for a close (a refused body left unread).
// The transport is the plain socket (blocking, as httplib leaves it) or, with TLS, an SSL over
// the socket made non-blocking: the handshake and every SSL_read / SSL_write retry on
// WANT_READ / WANT_WRITE after a poll() bounded by the same deadline, so a partial TLS record
// (a client trickling one byte by byte) never holds a read past it, as a blocking SSL_read
// waiting for the whole record would.
class Connection final : public httplib::Stream {
 public:
  Connection(int fd, SSL* ssl, int64_t write_timeout_ms) : fd_(fd), ssl_(ssl), write_timeout_ms_(write_timeout_ms) {}

  bool is_readable() const override { return buffered() > 0 || PollFd(fd_, POLLIN, ReadWaitMs()) > 0; }
  bool is_writable() const override { return PollFd(fd_, POLLOUT, write_timeout_ms_) > 0; }
  ssize_t read(char* ptr, size_t size) override {
    if (size == 0 || head_too_large_) return head_too_large_ ? -1 : 0;
    if (pos_ == len_) {
      const ssize_t n = ssl_ != nullptr ? FillTls() : FillPlain();
      if (n <= 0) return n;
      pos_ = 0;
      len_ = static_cast<size_t>(n);
    }
    const size_t n = std::min(size, len_ - pos_);
    if (in_head_ && !CountHead(buf_ + pos_, n)) return -1;
    std::memcpy(ptr, buf_ + pos_, n);
    pos_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    // httplib's own 400 for a head cut off at its limits, or by the read deadline: dropped, the
    // 431 or the 408 goes out instead.
    if (head_too_large_ || (in_head_ && timed_out_)) return static_cast<ssize_t>(size);
    // A response after which the connection closes (a refusal that left its body unread) says
    // `Connection: close` alone: httplib adds its Keep-Alive field to every response of a
    // connection it means to keep, and writes a response's head in one piece.
    if (close_after_ && written_ == 0) {
      std::string head(ptr, size);
      const size_t field = head.find("\r\nKeep-Alive:");
      if (field != std::string::npos && field < head.find("\r\n\r\n")) {
        head.erase(field, head.find("\r\n", field + 2) - field);
        for (size_t sent = 0; sent < head.size();) {
          const ssize_t n = WriteSome(head.data() + sent, head.size() - sent);
          if (n <= 0) return -1;
          sent += static_cast<size_t>(n);
        }
        return static_cast<ssize_t>(size);
      }
    }
    return WriteSome(ptr, size);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override { SocketAddress(fd_, true, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { SocketAddress(fd_, false, ip, port); }
  socket_t socket() const override { return fd_; }

  // A new request: its head and body must arrive by `deadline`; its head (request line and header
  // fields) is at most kMaxHeadBytes and kMaxHeaderFields fields.
  void BeginRequest(Clock::time_point deadline) {
    deadline_ = deadline;
    timed_out_ = false;
    close_after_ = false;
    written_ = 0;
    in_head_ = true;
    head_too_large_ = false;
    head_bytes_ = 0;
    head_lines_ = 0;
    head_start_.clear();
  }
  // The request's head was parsed (httplib routes it): what follows is its body, or the next
  // request. A request that never gets here was malformed, and nothing after it can be framed.
  void EndHead() { in_head_ = false; }
  bool head_parsed() const { return !in_head_; }
  bool head_too_large() const { return head_too_large_; }
  // The head read so far may be a POST's (its first bytes are a prefix of "POST ", or it has
  // none): the API's requests (chat and text completions) are the server's only POSTs.
  bool head_may_be_post() const { return absl::StartsWith("POST ", head_start_); }
  void EndRead() { deadline_ = Clock::time_point::max(); }
  void CloseAfter() { close_after_ = true; }
  bool close_after() const { return close_after_; }
  bool timed_out() const { return timed_out_; }
  int64_t written() const { return written_; }
  // Bytes read but not yet consumed: ours, and with TLS what OpenSSL has decrypted and holds.
  size_t buffered() const {
    const size_t pending = ssl_ != nullptr ? static_cast<size_t>(std::max(0, SSL_pending(ssl_))) : 0;
    return len_ - pos_ + pending;
  }
  // The client closed its side (an orderly EOF with nothing left to read; with TLS also its
  // close_notify). Only on the connection's own thread (with TLS it reads records).
  bool PeerClosed() const {
    if (buffered() > 0) return false;
    if (ssl_ != nullptr) {
      if ((SSL_get_shutdown(ssl_) & SSL_RECEIVED_SHUTDOWN) != 0) return true;
      // The bytes waiting may be the client's close_notify (what a TLS client sends as it closes),
      // which only a record read tells from a pipelined request: peek, never consume.
      char c;
      ERR_clear_error();
      const int n = SSL_peek(ssl_, &c, 1);
      if (n > 0) return false;
      const int err = SSL_get_error(ssl_, n);
      ERR_clear_error();
      return err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE;
    }
    char c;
    const ssize_t n = recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
  }
  // An answer written outside httplib (408, 503): never blocks on a plain socket; over TLS waits
  // at most a second for the client to take it.
  void SendRaw(const std::string& out) {
    if (ssl_ == nullptr) {
      (void)send(fd_, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      return;
    }
    const auto end = Clock::now() + std::chrono::seconds(1);
    for (size_t off = 0; off < out.size();) {
      const ssize_t n = WriteTls(out.data() + off, out.size() - off, end);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  }

  // TLS: the server side of the handshake by `deadline` (stops early when `stopping`). False: it
  // failed or timed out (tls_error() says why; timed_out() on a timeout).
  bool Handshake(Clock::time_point deadline, const std::atomic<bool>& stopping) {
    for (;;) {
      ERR_clear_error();
      const int r = SSL_accept(ssl_);
      if (r == 1) return true;
      const short events = WaitFor(SSL_get_error(ssl_, r), "handshake");
      if (events == 0) return false;
      const int64_t left = MsUntil(deadline);
      if (left <= 0) {
        timed_out_ = true;
        NoteTlsError("handshake", "not completed within --http-read-timeout-ms");
        return false;
      }
      if (stopping) return false;
      PollFd(fd_, events, std::min<int64_t>(left, 100));
    }
  }
  // TLS: close_notify, best effort (non-blocking: never waits for the client's). Not after a
  // fatal error, where OpenSSL forbids it.
  void CloseNotify() {
    if (ssl_ == nullptr || fatal_ || !SSL_is_init_finished(ssl_)) return;
    ERR_clear_error();
    (void)SSL_shutdown(ssl_);
    ERR_clear_error();
  }
  // The first TLS failure of this connection ("" when none): logged once, when it closes.
  const std::string& tls_error() const { return tls_error_; }

 private:
  ssize_t FillPlain() {
    const int64_t wait = ReadWaitMs();
    if (wait <= 0 || PollFd(fd_, POLLIN, wait) <= 0) {
      timed_out_ = true;
      return -1;
    }
    ssize_t n;
    do {
      n = recv(fd_, buf_, sizeof buf_, 0);
    } while (n < 0 && errno == EINTR);
    return n;
  }
  // SSL_read first (OpenSSL may hold decrypted bytes or a whole record already), then poll() only
  // when it wants the socket, never past the deadline.
  ssize_t FillTls() {
    for (;;) {
      ERR_clear_error();
      const int n = SSL_read(ssl_, buf_, sizeof buf_);
      if (n > 0) return n;
      const int err = SSL_get_error(ssl_, n);
      if (err == SSL_ERROR_ZERO_RETURN) return 0;  // close_notify: an orderly end
      const short events = WaitFor(err, "read");
      if (events == 0) return -1;
      const int64_t wait = ReadWaitMs();
      if (wait <= 0 || PollFd(fd_, events, wait) <= 0) {
        timed_out_ = true;
        return -1;
      }
    }
  }
  // Some of `size` bytes out (at least one, or -1), within the write timeout.
  ssize_t WriteSome(const char* ptr, size_t size) {
    if (ssl_ != nullptr) return WriteTls(ptr, size, Clock::now() + std::chrono::milliseconds(write_timeout_ms_));
    if (!is_writable()) return -1;
    ssize_t n;
    do {
      n = send(fd_, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n > 0) written_ += n;
    return n;
  }
  // SSL_write of [ptr, ptr + size) (at most 1 GiB at once) by `end`; retried with the same
  // arguments after WANT_WRITE, as OpenSSL requires.
  ssize_t WriteTls(const char* ptr, size_t size, Clock::time_point end) {
    if (size == 0) return 0;
    const int len = static_cast<int>(std::min<size_t>(size, size_t{1} << 30));
    for (;;) {
      ERR_clear_error();
      const int n = SSL_write(ssl_, ptr, len);
      if (n > 0) {
        written_ += n;
        return n;
      }
      const short events = WaitFor(SSL_get_error(ssl_, n), "write");
      if (events == 0) return -1;
      const int64_t left = MsUntil(end);
      if (left <= 0 || PollFd(fd_, events, left) <= 0) {
        NoteTlsError("write", "the client did not read within the write timeout");
        return -1;
      }
    }
  }
  // The socket event OpenSSL waits for, or 0 after a failure (noted; fatal: no close_notify).
  short WaitFor(int err, const char* stage) {
    if (err == SSL_ERROR_WANT_READ) return POLLIN;
    if (err == SSL_ERROR_WANT_WRITE) return POLLOUT;
    const int saved_errno = errno;
    fatal_ = err == SSL_ERROR_SSL || err == SSL_ERROR_SYSCALL;
    std::string why = TakeOpenSslError();
    if (why.empty()) {
      why = err == SSL_ERROR_SYSCALL
                ? (saved_errno != 0 ? std::string(std::strerror(saved_errno)) : "connection closed")
                : absl::StrCat("SSL error ", err);
    }
    NoteTlsError(stage, why);
    return 0;
  }
  void NoteTlsError(const char* stage, const std::string& why) {
    if (tls_error_.empty()) tls_error_ = absl::StrCat(stage, ": ", why);
  }
  // Counts [data, data + n) against the head's limits; false (and head_too_large()) past them. httplib
  // reads a head byte by byte and keeps every field (a 45 MB head of 3 million fields took ~330 MB),
  // so the limits are what bound a connection's memory before its body.
  bool CountHead(const char* data, size_t n) {
    if (head_start_.size() < kHeadStartBytes)
      head_start_.append(data, std::min(n, kHeadStartBytes - head_start_.size()));
    head_bytes_ += n;
    head_lines_ += static_cast<int64_t>(std::count(data, data + n, '\n'));
    // The request line and the blank line that ends the head are lines too.
    head_too_large_ = head_bytes_ > kMaxHeadBytes || head_lines_ > kMaxHeaderFields + 2;
    return !head_too_large_;
  }
  int64_t ReadWaitMs() const {
    constexpr int64_t kPerRead = 30'000;  // no deadline (after the body): as httplib's read timeout
    if (deadline_ == Clock::time_point::max()) return kPerRead;
    return std::min<int64_t>(kPerRead, MsUntil(deadline_));
  }

  const int fd_;
  SSL* const ssl_;  // null: plaintext
  const int64_t write_timeout_ms_;
  char buf_[16 * 1024];
  size_t pos_ = 0;
  size_t len_ = 0;
  Clock::time_point deadline_ = Clock::time_point::max();
  bool timed_out_ = false;
  bool close_after_ = false;
  bool fatal_ = false;
  int64_t written_ = 0;
  bool in_head_ = false;
  bool head_too_large_ = false;
  int64_t head_bytes_ = 0;
  int64_t head_lines_ = 0;
  static constexpr size_t kHeadStartBytes = 5;
  std::string head_start_;  // the head's first kHeadStartBytes bytes (its method)
  std::string tls_error_;
};

// How the accept thread hands a connection over (ConnectionThreads): served, answered 503 (over
// the cap), or, over TLS with every refusal thread busy, closed unanswered.
enum class ConnectionFate { kServe, kRefuse, kDrop };

thread_local Connection* tls_connection = nullptr;              // the connection this thread is answering
thread_local ConnectionFate tls_fate = ConnectionFate::kServe;  // set by ConnectionThreads

// Over TLS a refusal (503 at the cap) needs a handshake, so it cannot be answered on the accept
// thread: it runs on one of at most this many short-lived threads, the handshake bounded by
// kTlsRefusalMs (or --http-read-timeout-ms when shorter); beyond, the connection is closed at once
// (the client sees a reset, as at a full listen backlog).
constexpr int kMaxTlsRefusals = 16;
constexpr int64_t kTlsRefusalMs = 1'000;
// At --http-max-connections a new connection closes one that has been between requests (idle,
// or its head incomplete) for at least this long; kMaxEvicting such closes at once at most.
constexpr int64_t kEvictAfterMs = 1'000;
constexpr int kMaxEvicting = 64;

// A whole response written outside httplib (connection refused, request head timed out).
std::string RawResponse(int status, const char* reason, const HttpError& e) {
  const std::string body = HttpErrorBody(e);
  std::string out =
      absl::StrCat("HTTP/1.1 ", status, " ", reason,
                   "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n");
  if (e.retry_after_s > 0) absl::StrAppend(&out, "Retry-After: ", e.retry_after_s, "\r\n");
  absl::StrAppend(&out, "\r\n", body);
  return out;
}

// After a response that left a request body unread: stop writing, then read and drop what the
// client still sends for up to a second, so the close does not reset the connection before the
// client has read the answer. Memory stays flat (one buffer). (Over TLS the bytes are dropped
// undecrypted, after our close_notify.)
void LingerAndDiscard(int fd) {
  shutdown(fd, SHUT_WR);
  char sink[16 * 1024];
  const auto end = Clock::now() + std::chrono::seconds(1);
  while (Clock::now() < end) {
    if (PollFd(fd, POLLIN, 100) <= 0) continue;
    const ssize_t n = recv(fd, sink, sizeof sink, 0);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) break;
  }
}

// cpp-httplib's Server with our own per-connection loop (process_and_close_socket is its
// per-connection hook), for HTTP and HTTPS alike: keep-alive idle timeout, a whole-request read
// deadline, closes asked for by handlers, and the refusal of connections over the cap. With
// `ssl_ctx` every connection is TLS; its handshake counts against the first request's deadline
// (from the accept: handshake, head and body within --http-read-timeout-ms).
class ApiHttpServer final : public httplib::Server {
 public:
  ApiHttpServer(std::shared_ptr<State> state, SslCtxPtr ssl_ctx)
      : state_(std::move(state)), ssl_ctx_(std::move(ssl_ctx)) {}

 private:
  bool process_and_close_socket(socket_t sock) override {
    const HttpServerOptions& o = state_->options;
    const auto accepted = Clock::now();
    SslPtr ssl;
    if (ssl_ctx_ != nullptr) {
      ssl.reset(SSL_new(ssl_ctx_.get()));
      const int flags = fcntl(sock, F_GETFL, 0);
      if (ssl == nullptr || flags < 0 || fcntl(sock, F_SETFL, flags | O_NONBLOCK) != 0 ||
          SSL_set_fd(ssl.get(), sock) != 1) {
        LogEvent(LogLevel::kWarn, "tls_error", "", "could not set up TLS on an HTTP connection",
                 {{"error", TakeOpenSslError()}});
        shutdown(sock, SHUT_RDWR);
        close(sock);
        return false;
      }
    }
    Connection conn(sock, ssl.get(), 10'000);
    if (tls_fate != ConnectionFate::kServe) {
      if (tls_fate == ConnectionFate::kRefuse) Refuse(conn, accepted);
      shutdown(sock, SHUT_WR);
      close(sock);
      return true;
    }
    state_->phases.Opened(sock);
    bool ok = true;
    // TLS: the handshake, then the first request's head and body, within the read timeout.
    const auto first_deadline = accepted + std::chrono::milliseconds(o.read_timeout_ms);
    if (ssl != nullptr) ok = conn.Handshake(first_deadline, state_->stopping);
    size_t served = 0;
    while (ok && !state_->stopping && is_running()) {
      const bool first_tls = ssl != nullptr && served == 0;
      if (conn.buffered() == 0) {  // idle keep-alive: wait for the next request's first byte
        auto idle_end = Clock::now() + std::chrono::milliseconds(o.idle_timeout_ms);
        if (first_tls) idle_end = std::min(idle_end, first_deadline);
        bool readable = false;
        state_->phases.SetBetweenRequests(sock, true);
        while (!readable && !state_->stopping && Clock::now() < idle_end) readable = PollFd(sock, POLLIN, 100) > 0;
        if (!readable) break;
      }
      state_->phases.SetBetweenRequests(sock, true);  // its head's time starts now
      conn.BeginRequest(first_tls ? first_deadline : Clock::now() + std::chrono::milliseconds(o.read_timeout_ms));
      const bool last = ++served >= 1000 || state_->stopping;
      bool closed = false;
      tls_connection = &conn;
      ok = process_request(conn, last, closed, [&ssl](httplib::Request& req) { req.ssl = ssl.get(); });
      tls_connection = nullptr;
      if (conn.head_too_large()) {  // httplib's own answer was dropped (Connection::write)
        AnswerAndClose(conn, "Request Header Fields Too Large",
                       MakeRefusal(absl::StatusCode::kInvalidArgument, RefusalKind::kHeaderTooLarge,
                                   absl::StrCat("request head over ", kMaxHeadBytes, " bytes or ", kMaxHeaderFields,
                                                " header fields")));
        break;
      }
      // httplib answered a head it could not parse (400, 414) itself: where the next request would
      // start is unknown, so the connection ends (reading on would take the rest of these bytes as
      // requests of their own).
      if (ok && !conn.head_parsed() && conn.written() > 0) break;
      if ((!ok || !conn.head_parsed()) && conn.timed_out() && conn.written() == 0) {
        // The client's own doing, counted CANCELLED as one that leaves mid-body: as
        // DEADLINE_EXCEEDED a half-sent request fed the alert on server-side failures. Only what
        // may be an API request (a POST) is counted, as a complete one would be: a slow probe of
        // /health or a scanner's half-sent GET is answered alone.
        AnswerAndClose(conn, "Request Timeout",
                       MakeRefusal(absl::StatusCode::kCancelled, RefusalKind::kRequestTimeout,
                                   absl::StrCat("the request did not arrive within --http-read-timeout-ms (",
                                                o.read_timeout_ms, " ms)")),
                       /*counted=*/conn.head_may_be_post());
      }
      if (!ok || closed || last || conn.close_after()) break;
    }
    if (!conn.tls_error().empty()) LogTlsError(conn, served == 0 && conn.timed_out());
    conn.CloseNotify();
    if (conn.close_after()) LingerAndDiscard(sock);
    state_->phases.Closing(sock);
    shutdown(sock, SHUT_RDWR);
    close(sock);
    return ok;
  }

  // A refusal of a request httplib could not hand to a handler (its head too large, or late),
  // written raw, then the connection closed after a linger (what the client still sends must not
  // reset the answer away). `reason`: the status line's phrase for the refusal's HTTP status.
  void AnswerAndClose(Connection& conn, const char* reason, const Refusal& refusal, bool counted = true) {
    const HttpError e = ToHttpError(refusal);
    conn.SendRaw(RawResponse(e.status, reason, e));
    conn.CloseAfter();
    // Counted in glmserve_requests_total and logged as every other refusal.
    if (counted) state_->sessions.Refused("", "http", refusal, {{"http_status", e.status}});
  }

  // Over --http-max-connections: 503 (Retry-After), then closed. Plain: on the accept thread,
  // never blocking. TLS: after a handshake bounded by kTlsRefusalMs, on a refusal thread.
  void Refuse(Connection& conn, Clock::time_point accepted) {
    const HttpServerOptions& o = state_->options;
    if (ssl_ctx_ != nullptr) {
      const auto end = accepted + std::chrono::milliseconds(std::min(kTlsRefusalMs, o.read_timeout_ms));
      if (!conn.Handshake(end, state_->stopping)) {
        LogTlsError(conn, false);  // at debug: a flood over the cap must not flood the log
        return;
      }
    }
    const Refusal refusal = MakeRefusal(
        absl::StatusCode::kUnavailable, RefusalKind::kTooManyConnections,
        absl::StrCat("too many open connections (--http-max-connections ", o.max_connections, "); retry later"));
    // Counted in glmserve_requests_total (UNAVAILABLE) and logged as every refusal: a flood of
    // connections over the cap is held to --log-refused-per-second lines, the rest counted.
    std::string ip;
    int port = 0;
    conn.get_remote_ip_and_port(ip, port);
    state_->sessions.Refused("", "http", refusal, {{"http_status", 503}, {"peer", FormatAddress(ip, port)}});
    conn.SendRaw(RawResponse(503, "Service Unavailable", ToHttpError(refusal)));
    conn.CloseNotify();
  }

  // Once per connection: a handshake that timed out at the read deadline (`slow`) at info (a slow
  // client cut off, as a 408); any other TLS failure (no or bad client certificate, not TLS at
  // all, reset, a refusal's handshake) at debug.
  static void LogTlsError(const Connection& conn, bool slow) {
    std::string ip;
    int port = 0;
    conn.get_remote_ip_and_port(ip, port);
    LogEvent(
        slow ? LogLevel::kInfo : LogLevel::kDebug, slow ? "tls_handshake_timeout" : "tls_error", "",
        slow ? "TLS handshake not completed within --http-read-timeout-ms; connection closed" : "TLS connection failed",
        {{"peer", FormatAddress(ip, port)}, {"error", conn.tls_error()}});
  }

  std::shared_ptr<State> state_;
  const SslCtxPtr ssl_ctx_;  // null: plaintext
};

// httplib's task queue: a thread per connection up to --http-max-connections (an idle or slow
// connection then costs a thread, never the API: serving slots are taken only by complete
// requests); over the cap the connection is answered 503 at once on the listener thread (over TLS
// on one of kMaxTlsRefusals refusal threads, else closed).
class ConnectionThreads final : public httplib::TaskQueue {
 public:
  explicit ConnectionThreads(std::shared_ptr<State> state) : state_(std::move(state)) {}

  void enqueue(std::function<void()> fn) override {
    bool refuse = false;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      refuse = state_->connections - state_->phases.evicted() >= state_->options.max_connections &&
               !state_->phases.EvictOldest(std::chrono::milliseconds(kEvictAfterMs), kMaxEvicting);
      if (!refuse) ++state_->connections;
    }
    if (!refuse) {
      if (Spawn(&State::connections, ConnectionFate::kServe, fn)) return;
    } else if (state_->options.tls != nullptr) {
      bool refusal_thread = false;
      {
        std::lock_guard<std::mutex> lock(state_->mu);
        refusal_thread = state_->tls_refusals < kMaxTlsRefusals;
        if (refusal_thread) ++state_->tls_refusals;
      }
      if (refusal_thread && Spawn(&State::tls_refusals, ConnectionFate::kRefuse, fn)) return;
    }
    // Over the cap (or no thread to be had): answered on this thread, never blocking.
    tls_fate = state_->options.tls != nullptr ? ConnectionFate::kDrop : ConnectionFate::kRefuse;
    fn();
    tls_fate = ConnectionFate::kServe;
  }
  // After the accept loop: every connection and refusal thread ends (they see `stopping`) before
  // the server they run on is destroyed.
  void shutdown() override {
    std::unique_lock<std::mutex> lock(state_->mu);
    state_->connections_cv.wait(lock, [this] { return state_->connections == 0 && state_->tls_refusals == 0; });
  }

 private:
  // Runs fn on a thread of its own counted in state->*count (already incremented); false (and the
  // count given back) when no thread can be had.
  bool Spawn(int State::*count, ConnectionFate fate, const std::function<void()>& fn) {
    try {
      std::thread([state = state_, fn, count, fate] {
        tls_fate = fate;
        fn();
        std::lock_guard<std::mutex> lock(state->mu);
        if (--(state.get()->*count) == 0) state->connections_cv.notify_all();
      }).detach();
      return true;
    } catch (const std::system_error&) {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (--(state_.get()->*count) == 0) state_->connections_cv.notify_all();
      return false;
    }
  }

  std::shared_ptr<State> state_;
};

std::string RequestIdOf(State& state, const httplib::Request& req) {
  std::string request_id = req.get_header_value("x-request-id");
  if (request_id.empty() || CheckRequestId(request_id, state.options.limits, Dialect::kOpenAiChat)) {
    request_id = state.sessions.NewRequestId();
  }
  return request_id;
}

// One of HttpServerOptions::threads serving slots; released when the last holder lets go.
struct ServingSlot {
  explicit ServingSlot(std::shared_ptr<State> s) : state(std::move(s)) {}
  ~ServingSlot() {
    {
      std::lock_guard<std::mutex> lock(state->mu);
      --state->api_serving;
    }
    state->slot_cv.notify_one();
  }
  std::shared_ptr<State> state;
};

// The HTTP half of one request over its RequestSession: the handler thread waits on it (unary) or
// the SSE provider drains it (stream); the session's delivery worker fills it.
struct Call final : public SessionSink {
  bool has_text = false;                    // a tokenizer: deltas carry text, else each step's ids
  bool return_token_ids = false;            // deltas carry each step's ids beside the text
  bool streaming = false;                   // SSE: the result is counted once its last event is written
  std::shared_ptr<RequestSession> session;  // set before anyone waits on the call

  std::mutex mu;
  std::condition_variable cv;
  // Text new since the last chunk; without a tokenizer there is no text, and each engine step's
  // ids travel instead (the choice's `token_ids`, as vLLM's return_token_ids), so a streaming
  // client still sees every step as it happens.
  struct Delta {
    std::string text;
    std::vector<int32_t> token_ids;
    int64_t generated = 0;  // tokens generated up to and including this delta's step
  };
  std::deque<Delta> deltas;        // guarded by mu
  bool done = false;               // guarded by mu
  RequestResult result;            // guarded by mu; valid once done
  std::string tail;                // guarded by mu; text held back until the end
  std::string text;                // guarded by mu; the whole text (unary)
  ClientQuota::Lease quota;        // handler thread: released when the answer is complete
  std::vector<ImageUsage> images;  // the prompt's images as resized (usage); set before Submit
  int64_t prompt_tokens = 0;       // set before Submit (continuous usage)
  int64_t generated = 0;           // guarded by mu; tokens of the steps delivered so far

  void OnStep(const std::vector<int32_t>& ids, const std::string& delta) override {
    {
      std::lock_guard<std::mutex> lock(mu);
      generated += static_cast<int64_t>(ids.size());
      if (has_text && delta.empty() && !return_token_ids) return;
      if (has_text) {
        deltas.push_back({delta, return_token_ids ? ids : std::vector<int32_t>(), generated});
      } else {
        deltas.push_back({std::string(), ids, generated});
      }
    }
    cv.notify_all();
  }
  void OnFinish(const RequestResult& r, const std::string& rest, const std::string& all) override {
    {
      std::lock_guard<std::mutex> lock(mu);
      result = r;
      tail = rest;
      text = all;
      done = true;
    }
    cv.notify_all();
  }
  void Cancel() { session->Cancel(); }
  // A stream that ended well is counted once its last event ([DONE]) is written (StreamWritten),
  // or as CANCELLED where the stream ends before that (StreamEnded: a write failed, the client
  // left). A unary answer is counted at the result.
  bool TakesFinishedLog(const RequestResult& r) override { return streaming && r.status.ok(); }
  void StreamWritten() {
    stream_written = true;
    session->LogDeferredFinish(std::nullopt);
  }
  // The provider's releaser: always called once the response ends. Its `success` does not say
  // whether [DONE] went out (a server shutting down ends the provider's loop with success and no
  // [DONE]), so what was written is known from StreamWritten alone.
  void StreamEnded() {
    if (stream_written) return;
    Cancel();
    session->LogDeferredFinish(absl::StatusCode::kCancelled);
  }
  std::atomic<bool> stream_written{false};  // the provider's thread, then the releaser
};

// `client`: the API key's name or the peer address, as Admit takes it (who is refused, for the
// runbook's "one caller at its cap").
void LogRefused(State& state, const std::string& request_id, const std::string& route, const Refusal& refusal,
                const HttpError& e, const std::string& client, double queued_ms = 0) {
  state.sessions.Refused(request_id, route, refusal,
                         {{"client", client}, {"http_status", e.status}, {"param", e.param}}, queued_ms);
}

void SetError(httplib::Response& res, const HttpError& e) {
  res.status = e.status == 499 ? 400 : e.status;
  if (e.retry_after_s > 0) res.set_header("Retry-After", std::to_string(e.retry_after_s));
  res.set_content(HttpErrorBody(e), "application/json");
}

// --api-key-file / GLMSERVE_API_KEY: `Authorization: Bearer KEY`, else 401 (OpenAI's shape and
// code). *client: the key's name ("key#N"), or the peer address without keys
// (--max-requests-per-client). The presented key is never logged or echoed.
std::optional<Refusal> Authenticate(const State& state, const httplib::Request& req, std::string* client) {
  if (state.options.api_keys == nullptr) {
    *client = req.remote_addr;
    return std::nullopt;
  }
  if (!req.has_header("Authorization")) {
    return MakeRefusal(absl::StatusCode::kUnauthenticated, RefusalKind::kUnauthenticated,
                       "missing API key: send 'Authorization: Bearer KEY'");
  }
  std::optional<std::string> who = state.options.api_keys->Check(req.get_header_value("Authorization"));
  if (!who) return MakeRefusal(absl::StatusCode::kUnauthenticated, RefusalKind::kUnauthenticated, "invalid API key");
  *client = std::move(*who);
  return std::nullopt;
}

// A refusal that leaves the request body unread: the connection closes after the answer.
// `inference`: an API route's request, counted in glmserve_requests_total and logged as every
// refusal; other routes' (health, models) are not counted, as their answers never are.
void RefuseAndClose(State& state, const std::string& request_id, const std::string& route, const Refusal& refusal,
                    const std::string& peer, httplib::Response& res, bool inference = true) {
  if (tls_connection != nullptr) tls_connection->CloseAfter();
  res.set_header("x-request-id", request_id);
  res.set_header("Connection", "close");
  const HttpError e = ToHttpError(refusal);
  if (inference) LogRefused(state, request_id, route, refusal, e, peer);
  SetError(res, e);
}

// A body whose end the head does not say unambiguously (RFC 9112 6.3): Content-Length not a plain
// decimal, given twice with different values, or beside Transfer-Encoding; a transfer coding other
// than chunked; a body on a method httplib reads none for. A proxy in front may frame such a request
// otherwise than this server would (request smuggling), so it is refused and the connection closed.
// A POST that says nothing of its length gets 411 at once.
std::optional<Refusal> BodyFramingRefusal(const httplib::Request& req) {
  auto bad = [](std::string message) {
    return MakeRefusal(absl::StatusCode::kInvalidArgument, RefusalKind::kBadRequest, std::move(message));
  };
  const size_t lengths = req.get_header_value_count("Content-Length");
  std::string first;
  for (size_t i = 0; i < lengths; ++i) {
    const std::string value = req.get_header_value("Content-Length", i);
    if (value.empty() || value.size() > 19 || !std::all_of(value.begin(), value.end(), absl::ascii_isdigit)) {
      return bad(absl::StrCat("Content-Length: '", value.substr(0, 64), "' is not a byte count"));
    }
    if (i == 0) first = value;
    if (value != first) {
      return bad(absl::StrCat("Content-Length given twice with different values (", first, ", ", value, ")"));
    }
  }
  const bool chunked = req.has_header("Transfer-Encoding");
  if (chunked) {
    if (lengths > 0) return bad("both Content-Length and Transfer-Encoding given");
    const std::string coding = req.get_header_value("Transfer-Encoding");
    if (req.get_header_value_count("Transfer-Encoding") > 1 ||
        absl::AsciiStrToLower(absl::StripAsciiWhitespace(coding)) != "chunked") {
      return bad(absl::StrCat("Transfer-Encoding: '", coding.substr(0, 64), "' is not supported (only chunked)"));
    }
  }
  // httplib reads a body for these methods only. Another method's body would stay on the
  // connection and be read as the next request (a request smuggled past a proxy's rules), so it is
  // refused. A POST without either header (RFC 9112 6.3: no body) was read until the read deadline
  // and answered 408 as if the client were slow: it is asked for its length at once (411).
  const bool reads_body = req.method == "POST" || req.method == "PUT" || req.method == "PATCH" ||
                          req.method == "DELETE" || req.method == "PRI";
  const bool declares_body = chunked || (lengths > 0 && first.find_first_not_of('0') != std::string::npos);
  if (!reads_body && declares_body) {
    return bad(absl::StrCat(req.method.substr(0, 16),
                            " request with a body (Content-Length or Transfer-Encoding): only POST requests take one "
                            "here"));
  }
  if (req.method == "POST" && lengths == 0 && !chunked) {
    return MakeRefusal(absl::StatusCode::kInvalidArgument, RefusalKind::kLengthRequired,
                       "POST request without Content-Length or Transfer-Encoding: chunked (one is needed)");
  }
  return std::nullopt;
}

// Every route the server answers, each spelled here only: its registration (RegisterRoute), the
// 405 answer's Allow header (AllowedMethods) and the API's pre-routing checks read them.
struct Route {
  const char* method;   // "GET" or "POST"
  const char* pattern;  // httplib's pattern (a regex where `prefix` is set)
  const char* prefix;   // paths starting with it match; null: the pattern is the exact path
};
constexpr Route kChatRoute{"POST", "/v1/chat/completions", nullptr};
constexpr Route kCompletionRoute{"POST", "/v1/completions", nullptr};
constexpr Route kModelsRoute{"GET", "/v1/models", nullptr};
constexpr Route kModelRoute{"GET", R"(/v1/models/(.+))", "/v1/models/"};
constexpr Route kHealthRoute{"GET", "/health", nullptr};
constexpr Route kRoutes[] = {kChatRoute, kCompletionRoute, kModelsRoute, kModelRoute, kHealthRoute};
static_assert(std::string_view(kChatRoute.method) == "POST" && std::string_view(kCompletionRoute.method) == "POST",
              "the API routes read a body as it arrives");

bool RouteMatches(const Route& route, const std::string& path) {
  return route.prefix != nullptr ? path.rfind(route.prefix, 0) == 0 && path.size() > std::strlen(route.prefix)
                                 : path == route.pattern;
}

bool IsRoute(const Route& route, const httplib::Request& req) {
  return req.method == route.method && RouteMatches(route, req.path);
}

const char* ApiPath(ApiKind kind) { return (kind == ApiKind::kChat ? kChatRoute : kCompletionRoute).pattern; }

void RegisterRoute(httplib::Server& svr, const Route& route, httplib::Server::Handler handler) {
  if (std::string_view(route.method) == "POST") {
    svr.Post(route.pattern, std::move(handler));
  } else {
    svr.Get(route.pattern, std::move(handler));
  }
}

// A route that reads its body as it arrives: a POST (the API routes; asserted beside them).
void RegisterRoute(httplib::Server& svr, const Route& route, httplib::Server::HandlerWithContentReader handler) {
  svr.Post(route.pattern, std::move(handler));
}

// The methods a route takes ("" for a path no route has).
std::string AllowedMethods(const std::string& path) {
  for (const Route& route : kRoutes) {
    if (RouteMatches(route, path)) return route.method;
  }
  return "";
}

// One entry of /v1/models: OpenAI's model object, with vLLM's max_model_len where known.
json ModelObject(State& state, const std::string& id) {
  json model = {{"id", id}, {"object", "model"}, {"created", state.started_seconds}, {"owned_by", "glmserve"}};
  const int32_t max_context = state.sessions.model().max_context;
  if (max_context > 0) model["max_model_len"] = max_context;
  return model;
}

// The ids /v1/models lists: --served-model-name's, else the model directory's name.
std::vector<std::string> ListedModels(const HttpServerOptions& o) {
  return o.served_model_names.empty() ? std::vector<std::string>{o.model_name} : o.served_model_names;
}
// Whether a request may name `model`: any id without --served-model-name, else one of its ids.
bool ServesModel(const HttpServerOptions& o, const std::string& model) {
  return o.served_model_names.empty() ||
         std::find(o.served_model_names.begin(), o.served_model_names.end(), model) != o.served_model_names.end();
}
Refusal ModelNotFound(const HttpServerOptions& o, const std::string& model, const std::string& field) {
  Refusal r = MakeRefusal(absl::StatusCode::kNotFound, RefusalKind::kModelNotFound,
                          absl::StrCat("model '", PrintableText(ShownValue(model)), "' is not served here (",
                                       absl::StrJoin(ListedModels(o), ", "), "; GET /v1/models lists them)"));
  r.field = field;
  return r;
}

// A chunked body's hold on --http-body-budget-mb grows by at least this much at a time.
constexpr int64_t kChunkedBodyHoldStep = int64_t{64} << 10;

// POST /v1/* takes application/json only (415: a browser's cross-origin "simple" POST is
// text/plain, form or multipart, so it never reaches a handler), and a Content-Length over the
// limit is refused unread (413). After BodyFramingRefusal: the length is a plain decimal.
std::optional<Refusal> ApiHeadRefusal(const httplib::Request& req, int64_t max_body_bytes) {
  const std::string type = req.get_header_value("Content-Type");
  const std::string media = absl::AsciiStrToLower(absl::StripAsciiWhitespace(type.substr(0, type.find(';'))));
  if (media != "application/json") {
    return MakeRefusal(absl::StatusCode::kInvalidArgument, RefusalKind::kUnsupportedMediaType,
                       type.empty() ? "Content-Type: missing; the API takes application/json"
                                    : absl::StrCat("Content-Type: '", type, "' is not application/json"));
  }
  // httplib decodes gzip, deflate and br, spelled so, and passes any other coding through as if it
  // were none (a zstd or "GZIP" body then read as "invalid JSON"): RFC 9110 15.5.16 answers a coding
  // not taken with 415.
  const std::string coding(absl::StripAsciiWhitespace(req.get_header_value("Content-Encoding")));
  if (!coding.empty() && absl::AsciiStrToLower(coding) != "identity" && coding != "gzip" && coding != "deflate" &&
      coding != "br") {
    return MakeRefusal(
        absl::StatusCode::kInvalidArgument, RefusalKind::kUnsupportedMediaType,
        absl::StrCat("Content-Encoding: '", PrintableText(ShownValue(req.get_header_value("Content-Encoding"))),
                     "' is not taken; the API takes gzip, deflate, br (lowercase) or none"));
  }
  const std::string length = req.get_header_value("Content-Length");
  if (!length.empty() && std::strtoull(length.c_str(), nullptr, 10) > static_cast<unsigned long long>(max_body_bytes)) {
    return MakeRefusal(
        absl::StatusCode::kInvalidArgument, RefusalKind::kPayloadTooLarge,
        absl::StrCat("request body of ", length, " bytes exceeds --max-message-bytes (", max_body_bytes, " bytes)"));
  }
  return std::nullopt;
}

// The checks a request's head alone decides (BodyFramingRefusal on any route; on the API's the
// API key, then ApiHeadRefusal's media type and body size): true when `res` now holds the
// refusal, the connection to be closed after it. A client without a valid key gets its 401 before
// anything else is said about its request, and its body is never read.
bool RefuseOnHead(State& state, const httplib::Request& req, httplib::Response& res) {
  std::optional<Refusal> e = BodyFramingRefusal(req);
  const bool api = IsRoute(kChatRoute, req) || IsRoute(kCompletionRoute, req);
  if (!e && api) {
    std::string client;
    e = Authenticate(state, req, &client);
    if (e) res.set_header("WWW-Authenticate", "Bearer");
  }
  if (!e && api) e = ApiHeadRefusal(req, state.options.max_body_bytes);
  if (!e) return false;
  RefuseAndClose(state, RequestIdOf(state, req), req.path, *e, req.remote_addr, res, /*inference=*/api);
  return true;
}

Refusal ShutDownRefusal() {
  return MakeRefusal(absl::StatusCode::kUnavailable, RefusalKind::kUnavailable,
                     "server shut down before the request finished");
}

const char* FinishName(FinishReason reason) { return reason == FinishReason::kLength ? "length" : "stop"; }

// OpenAI's usage, prompt_tokens_details.cached_tokens (of prompt_tokens, from the prefix cache)
// included; with images also prompt_tokens_details.image_tokens (of prompt_tokens) and glmserve's
// "images": each image's resized height, width and tokens, in prompt order.
json Usage(const RequestResult& r, const std::vector<ImageUsage>& images) {
  const int64_t completion = static_cast<int64_t>(r.output_ids.size());
  json usage = {{"prompt_tokens", r.prompt_tokens},
                {"completion_tokens", completion},
                {"total_tokens", r.prompt_tokens + completion},
                {"prompt_tokens_details", {{"cached_tokens", r.cached_prompt_tokens}}}};
  if (images.empty()) return usage;
  int64_t image_tokens = 0;
  json list = json::array();
  for (const ImageUsage& image : images) {
    image_tokens += image.tokens;
    list.push_back({{"height", image.height}, {"width", image.width}, {"tokens", image.tokens}});
  }
  usage["prompt_tokens_details"]["image_tokens"] = image_tokens;
  usage["images"] = std::move(list);
  return usage;
}

class Handler {
 public:
  explicit Handler(std::shared_ptr<State> state) : state_(std::move(state)) {}

  void Api(ApiKind kind, const httplib::Request& req, const std::string& body, httplib::Response& res) {
    const auto received = std::chrono::steady_clock::now();
    const std::string route = ApiPath(kind);
    const std::string request_id = RequestIdOf(*state_, req);
    res.set_header("x-request-id", request_id);
    std::string client;  // the API key's name once authenticated; the peer address until then
    auto refuse = [&](const Refusal& refusal, double queued_ms = 0) {
      const HttpError e = ToHttpError(refusal);
      LogRefused(*state_, request_id, route, refusal, e, client.empty() ? req.remote_addr : client, queued_ms);
      SetError(res, e);
      if (refusal.kind == RefusalKind::kUnauthenticated) res.set_header("WWW-Authenticate", "Bearer");
    };
    if (auto e = Authenticate(*state_, req, &client)) return refuse(*e);

    // Deadline: ?timeout=, else a timeout / x-request-timeout header, else the default.
    auto deadline = std::chrono::steady_clock::time_point::max();
    if (state_->options.default_deadline_ms > 0) {
      deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(state_->options.default_deadline_ms);
    }
    for (const char* source : {"query", "timeout", "x-request-timeout"}) {
      const bool query = std::string(source) == "query";
      if (query ? !req.has_param("timeout") : !req.has_header(source)) continue;
      const std::string text = query ? req.get_param_value("timeout") : req.get_header_value(source);
      std::chrono::milliseconds timeout{0};
      if (auto e = ParseTimeout(text, query ? "timeout" : source, &timeout)) return refuse(*e);
      deadline = std::chrono::steady_clock::now() + timeout;
      break;
    }

    ApiRequest api;
    if (auto e = ParseApiRequest(kind, body, &api, state_->options.limits.max_new_tokens_cap,
                                 state_->options.sampling_defaults))
      return refuse(*e);
    if (!api.model.empty() && !ServesModel(state_->options, api.model)) {
      return refuse(ModelNotFound(state_->options, api.model, "model"));
    }

    bool stopping = false;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      stopping = state_->stopping;
    }
    RequestSessions& sessions = state_->sessions;
    if (stopping) {
      return refuse(MakeRefusal(absl::StatusCode::kUnavailable, RefusalKind::kDraining,
                                "server is draining; retry on another replica"));
    }
    // Draining, loading (no engine yet), then the per-client cap: before tokenization. While the
    // engine restarts after a fault, or has stopped in a crash loop, the engine's own refusal says
    // which, as gRPC's does (health is NOT_SERVING either way).
    Admission admission;
    if (auto e = sessions.Admit(client, &admission)) return refuse(*e);
    api.request.deadline = deadline;
    SessionInfo info;
    info.request_id = request_id;
    info.rpc = route;
    info.streaming = api.stream;
    info.accepted_fields = {{"stream", api.stream}};
    info.received = received;
    InferenceRequest request;
    // Images stop being decoded once the client has closed its connection (or at the deadline): 4
    // clients that uploaded 3.5 MB of PNGs each and hung up cost 28 s of CPU, then ran.
    Connection* const conn = tls_connection;
    auto abandoned = [conn] { return conn != nullptr && conn->PeerClosed(); };
    if (auto e = sessions.Validate(api.request, DialectOf(kind), admission, info, &request, abandoned)) {
      if (e->code == absl::StatusCode::kCancelled && conn != nullptr) conn->CloseAfter();
      return refuse(*e);
    }
    if (request.multimodal != nullptr && abandoned()) {  // gone during the last image's decode
      if (conn != nullptr) conn->CloseAfter();
      return refuse(MakeRefusal(absl::StatusCode::kCancelled, RefusalKind::kCancelled,
                                "client closed the connection while its images were prepared"));
    }

    // A serving slot, or a place in the bounded waiting queue (429 at once when it is full); held
    // until the engine has finished the request.
    std::shared_ptr<ServingSlot> slot;
    if (auto e = AcquireSlot(deadline, &slot, &info.front_queue_ms)) return refuse(*e, info.front_queue_ms);
    info.hold_until_done = std::move(slot);

    auto call = std::make_shared<Call>();
    call->has_text = admission.model.tokenizer != nullptr;
    call->return_token_ids = api.return_token_ids;
    call->streaming = api.stream;
    call->quota = std::move(admission.quota);
    call->images = ImageUsages(request.multimodal.get());
    call->prompt_tokens = static_cast<int64_t>(request.input_ids.size());
    const double slot_wait_ms = info.front_queue_ms;  // a sample with the engine's refusal, as with a served one
    if (auto e =
            sessions.Submit(admission, std::move(request), std::move(info), api.request.stop, call, &call->session)) {
      return refuse(*e, slot_wait_ms);
    }

    const std::string id = absl::StrCat(kind == ApiKind::kChat ? "chatcmpl-" : "cmpl-", request_id);
    const int64_t created = NowSeconds();
    if (!api.stream) {
      Unary(call, api, id, created, res);
      call->quota.Release();  // before the answer goes out
      return;
    }
    Stream(call, api, id, created, req.version == "HTTP/1.0", res);
  }

 private:
  // Takes one of options.threads serving slots, waiting in a queue of at most max_waiting (counted
  // in glmserve_queue_depth) for one; a full queue answers 429 at once. The wait ends with the
  // request's deadline (504), the server stopping at the drain's timeout (503) or the client
  // closing; a drain itself does not end it (the request was admitted before it).
  // *waited_ms: how long it waited for a slot (0 when one was free or the queue full at once).
  std::optional<Refusal> AcquireSlot(Clock::time_point deadline, std::shared_ptr<ServingSlot>* out, double* waited_ms) {
    const HttpServerOptions& o = state_->options;
    const int serving_max = std::max(1, o.threads);
    *waited_ms = 0;
    std::unique_lock<std::mutex> lock(state_->mu);
    if (state_->api_serving < serving_max) {
      ++state_->api_serving;
      lock.unlock();
      *out = std::make_shared<ServingSlot>(state_);
      return std::nullopt;
    }
    if (state_->api_waiting >= o.max_waiting) {
      return MakeRefusal(absl::StatusCode::kResourceExhausted, RefusalKind::kQueueFull,
                         absl::StrCat("HTTP queue full: ", state_->api_waiting, " requests waiting for one of ",
                                      serving_max, " serving slots (--http-max-waiting ", o.max_waiting,
                                      ", --http-threads ", serving_max, "); retry after 1000 ms"),
                         1000);
    }
    ++state_->api_waiting;
    const auto waiting_since = Clock::now();
    std::optional<Refusal> error;
    for (int round = 1;; ++round) {
      // Not while draining: it was admitted before the drain, which owes it its answer until the
      // drain's timeout stops the server.
      if (state_->stopping) {
        error = MakeRefusal(absl::StatusCode::kUnavailable, RefusalKind::kDraining,
                            "server is shutting down (the drain timed out); retry on another replica");
        break;
      }
      if (Clock::now() >= deadline) {
        error = MakeRefusal(absl::StatusCode::kDeadlineExceeded, RefusalKind::kDeadline,
                            "deadline passed while waiting in the HTTP queue");
        break;
      }
      if (state_->api_serving < serving_max) {
        ++state_->api_serving;
        break;
      }
      state_->slot_cv.wait_for(lock, std::chrono::milliseconds(100));
      if (round % 5 == 0 && tls_connection != nullptr) {
        lock.unlock();
        const bool gone = tls_connection->PeerClosed();
        lock.lock();
        if (gone) {
          error = MakeRefusal(absl::StatusCode::kCancelled, RefusalKind::kCancelled,
                              "client closed the connection while queued");
          break;
        }
      }
    }
    --state_->api_waiting;
    lock.unlock();
    *waited_ms = std::chrono::duration<double, std::milli>(Clock::now() - waiting_since).count();
    if (!error) *out = std::make_shared<ServingSlot>(state_);
    return error;
  }

  // Waits for the result; the listener's shutdown ends the wait with 503, and a client that closes
  // its connection cancels the request (as a stream's failed write does): its engine slot, serving
  // slot and place under the client cap are freed now, not when the unread answer is done.
  void Unary(const std::shared_ptr<Call>& call, const ApiRequest& api, const std::string& id, int64_t created,
             httplib::Response& res) {
    RequestResult result;
    std::string text;
    {
      std::unique_lock<std::mutex> lock(call->mu);
      while (!call->done) {
        if (state_->stopping) {
          lock.unlock();
          call->Cancel();
          SetError(res, ToHttpError(ShutDownRefusal()));
          return;
        }
        call->cv.wait_for(lock, std::chrono::milliseconds(100));
        if (call->done || tls_connection == nullptr) continue;
        lock.unlock();
        const bool gone = tls_connection->PeerClosed();
        lock.lock();
        if (gone && !call->done) {
          lock.unlock();
          call->Cancel();
          tls_connection->CloseAfter();
          SetError(res, ToHttpError(MakeRefusal(absl::StatusCode::kCancelled, RefusalKind::kCancelled,
                                                "client closed the connection before the answer")));
          return;
        }
      }
      result = call->result;
      text = call->text;
    }
    if (!result.status.ok()) return SetError(res, ToHttpError(RefusalFromStatus(result.status)));
    json body;
    if (api.kind == ApiKind::kChat) {
      body = {{"id", id},
              {"object", "chat.completion"},
              {"created", created},
              {"model", api.model},
              {"choices", json::array({{{"index", 0},
                                        {"message", {{"role", "assistant"}, {"content", text}}},
                                        {"logprobs", nullptr},
                                        {"finish_reason", FinishName(result.finish_reason)}}})},
              {"usage", Usage(result, call->images)}};
    } else {
      body = {{"id", id},
              {"object", "text_completion"},
              {"created", created},
              {"model", api.model},
              {"choices", json::array({{{"index", 0},
                                        {"text", text},
                                        {"logprobs", nullptr},
                                        {"finish_reason", FinishName(result.finish_reason)}}})},
              {"usage", Usage(result, call->images)}};
    }
    // return_token_ids: the choice's ids, every one the stream would have sent in its chunks.
    if (api.return_token_ids) body["choices"][0]["token_ids"] = result.output_ids;
    res.status = 200;
    res.set_content(JsonDump(body), "application/json");
  }

  // Server-sent events: one chunk per text delta, the finish chunk, the usage chunk when asked,
  // then "data: [DONE]". A failed write (client gone) cancels the engine request.
  void Stream(const std::shared_ptr<Call>& call, const ApiRequest& api, const std::string& id, int64_t created,
              bool http_1_0, httplib::Response& res) {
    state_->CallStarted();  // until the stream ends (the releaser)
    res.status = 200;
    res.set_header("Cache-Control", "no-cache");
    const bool chat = api.kind == ApiKind::kChat;
    const std::string model = api.model;
    const bool include_usage = api.include_usage;
    // With continuous_usage_stats every chunk's usage is the count so far (vLLM's), else null.
    const bool continuous = include_usage && api.continuous_usage;
    const int64_t prompt_tokens = call->prompt_tokens;
    // return_token_ids: every choice chunk says which ids it carries, [] for the held-back text's
    // flush and the finish (a client counting ids by chunk must not take those for a step's).
    const bool ids_always = call->return_token_ids;
    auto chunk = [chat, id, created, model, include_usage, continuous, prompt_tokens, ids_always](
                     const json& choice_delta, const json& finish, const std::vector<int32_t>& token_ids = {},
                     int64_t generated = 0) {
      json choice = chat ? json{{"index", 0}, {"delta", choice_delta}, {"logprobs", nullptr}, {"finish_reason", finish}}
                         : json{{"index", 0}, {"text", choice_delta}, {"logprobs", nullptr}, {"finish_reason", finish}};
      if (!token_ids.empty() || ids_always) choice["token_ids"] = token_ids;
      json j = {{"id", id},
                {"object", chat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model},
                {"choices", json::array({choice})}};
      if (include_usage) {
        j["usage"] = continuous ? json{{"prompt_tokens", prompt_tokens},
                                       {"completion_tokens", generated},
                                       {"total_tokens", prompt_tokens + generated}}
                                : json(nullptr);
      }
      return absl::StrCat("data: ", JsonDump(j), "\n\n");
    };
    auto sent_role = std::make_shared<bool>(false);
    std::shared_ptr<State> state = state_;
    auto events = [call, chunk, chat, id, created, model, include_usage, sent_role, state](size_t,
                                                                                           httplib::DataSink& sink) {
      auto write = [&](const std::string& s) {
        if (sink.write(s.data(), s.size())) return true;
        call->Cancel();
        return false;
      };
      // An error after the stream started: its event, then [DONE] as every stream ends (vLLM's order).
      auto end_with_error = [&](const Refusal& refusal) {
        write(absl::StrCat("data: ", HttpErrorBody(ToHttpError(refusal)), "\n\ndata: [DONE]\n\n"));
        sink.done();
        return true;
      };
      std::deque<Call::Delta> deltas;
      bool done = false;
      RequestResult result;
      std::string tail;
      {
        std::unique_lock<std::mutex> lock(call->mu);
        if (call->deltas.empty() && !call->done) {
          call->cv.wait_for(lock, std::chrono::seconds(1));
        }
        deltas.swap(call->deltas);
        done = call->done;
        if (done) {
          result = call->result;
          tail = call->tail;
        }
      }
      // The role's chunk goes out with the first token's, as vLLM sends it: clients (Open-AutoGLM's
      // among them) time the first token from the first chunk, and one sent at once read as a
      // time to first token of a few ms whatever the prefill took.
      if (chat && !*sent_role && (!deltas.empty() || (done && result.status.ok()))) {
        *sent_role = true;
        if (!write(chunk({{"role", "assistant"}, {"content", ""}}, nullptr))) return false;
      }
      for (const Call::Delta& d : deltas) {
        if (!write(chunk(chat ? json{{"content", d.text}} : json(d.text), nullptr, d.token_ids, d.generated))) {
          return false;
        }
      }
      if (!done) {
        if (state->stopping) {
          call->Cancel();
          return end_with_error(ShutDownRefusal());
        }
        // Nothing new: an SSE comment finds a closed connection (the write fails).
        if (deltas.empty() && !write(": keep-alive\n\n")) return false;
        return true;
      }
      if (!result.status.ok()) return end_with_error(RefusalFromStatus(result.status));
      const auto completion = static_cast<int64_t>(result.output_ids.size());
      if (!tail.empty() && !write(chunk(chat ? json{{"content", tail}} : json(tail), nullptr, {}, completion))) {
        return false;
      }
      if (!write(chunk(chat ? json::object() : json(""), FinishName(result.finish_reason), {}, completion))) {
        return false;
      }
      if (include_usage) {
        json j = {{"id", id},
                  {"object", chat ? "chat.completion.chunk" : "text_completion"},
                  {"created", created},
                  {"model", model},
                  {"choices", json::array()},
                  {"usage", Usage(result, call->images)}};
        if (!write(absl::StrCat("data: ", JsonDump(j), "\n\n"))) return false;
      }
      if (!write("data: [DONE]\n\n")) return false;
      sink.done();
      call->StreamWritten();
      return true;
    };
    auto ended = [call, state](bool /*success: not whether [DONE] was written*/) {
      call->StreamEnded();
      call->quota.Release();
      state->CallDone();
    };
    if (http_1_0) {
      // RFC 9112 6.1: no Transfer-Encoding to an HTTP/1.0 client; the stream ends with the
      // connection (closed after every HTTP/1.0 request: the pre-routing handler).
      res.set_content_provider("text/event-stream", std::move(events), std::move(ended));
    } else {
      res.set_chunked_content_provider("text/event-stream", std::move(events), std::move(ended));
    }
  }

  std::shared_ptr<State> state_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options) {
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--http-port: ", options.port, " is outside [0, 65535]"));
  }
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->state_ = std::make_shared<State>(options);
  // HTTPS (--tls-cert/--tls-key, which LoadTls checked; --tls-client-ca: mutual) goes through the
  // same connection loop as HTTP, over our own OpenSSL context.
  SslCtxPtr ssl_ctx;
  if (options.tls != nullptr) {
    absl::StatusOr<SslCtxPtr> ctx = MakeServerContext(*options.tls);
    if (!ctx.ok()) return ctx.status();
    ssl_ctx = *std::move(ctx);
  }
  server->server_ = std::make_unique<ApiHttpServer>(server->state_, std::move(ssl_ctx));
  httplib::Server& svr = *server->server_;
  std::shared_ptr<State> state = server->state_;
  // A thread per connection up to --http-max-connections; API work is bounded by the serving
  // slots (--http-threads) and their waiting queue (--http-max-waiting).
  svr.new_task_queue = [state] { return new ConnectionThreads(state); };
  svr.set_payload_max_length(static_cast<size_t>(options.max_body_bytes));
  svr.set_keep_alive_max_count(1000);
  // Small SSE chunks go out at once instead of waiting on the client's delayed ACK (Nagle): 30-40
  // ms of TTFT on a kept-alive connection otherwise.
  svr.set_tcp_nodelay(true);
  // SO_REUSEADDR only (as the metrics listener): httplib's default adds SO_REUSEPORT, which let a
  // second server share a port in use and split the requests between the two processes.
  svr.set_socket_options([](socket_t sock) {
    const int on = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  });
  svr.set_read_timeout(std::chrono::seconds(30));
  svr.set_write_timeout(std::chrono::seconds(10));

  auto handler = std::make_shared<Handler>(state);
  // Every answer names its request: counted here so refusals by the library (413) carry one too.
  auto counted = [state](auto fn) {
    return [state, fn](const httplib::Request& req, httplib::Response& res) {
      state->CallStarted();
      fn(req, res);
      state->CallDone();
    };
  };
  // The API reads its own body (a ContentReader handler), counting bytes as they arrive: httplib's
  // payload limit applies to a Content-Length only, and chunked bodies were read whole.
  auto api_route = [state, handler](ApiKind kind) {
    return [state, handler, kind](const httplib::Request& req, httplib::Response& res,
                                  const httplib::ContentReader& reader) {
      state->CallStarted();
      const std::string route = ApiPath(kind);
      std::string body;
      const size_t max_body = static_cast<size_t>(state->options.max_body_bytes);
      // The body's share of --http-body-budget-mb, taken before a byte of it is read: a declared
      // length at once (the pre-routing handler checked it is a number within max_body), a chunked
      // body in steps as it arrives. Held as long as the body is: until the handler returns (a unary
      // answer is complete then; a stream's events are written after).
      ByteBudget::Hold held(state->options.body_budget.get());
      const std::string declared = req.get_header_value("Content-Length");
      bool over_budget =
          !held.Grow(declared.empty() ? 0 : static_cast<int64_t>(std::strtoull(declared.c_str(), nullptr, 10)));
      bool too_large = false;
      const bool read = !over_budget && reader([&](const char* data, size_t n) {
        if (body.size() + n > max_body) {
          too_large = true;
          return false;
        }
        const int64_t needed = static_cast<int64_t>(body.size() + n) - held.bytes();
        if (needed > 0 && !held.Grow(std::max<int64_t>(needed, kChunkedBodyHoldStep))) {
          over_budget = true;
          return false;
        }
        body.append(data, n);
        return true;
      });
      if (tls_connection != nullptr) tls_connection->EndRead();
      if (too_large || over_budget || !read) {
        Refusal e;
        if (over_budget) {
          const ByteBudget& budget = *state->options.body_budget;
          const std::string size =
              declared.empty() ? absl::StrCat("over ", body.size(), " bytes so far") : absl::StrCat(declared, " bytes");
          e = MakeRefusal(absl::StatusCode::kResourceExhausted, RefusalKind::kQueueFull,
                          absl::StrCat("request body (", size, ") does not fit --http-body-budget-mb (",
                                       budget.limit() >> 20, " MiB): other HTTP requests hold ",
                                       budget.in_flight() - held.bytes(), " bytes of it; retry after 1000 ms"),
                          1000);
        } else if (too_large) {
          e = MakeRefusal(absl::StatusCode::kInvalidArgument, RefusalKind::kPayloadTooLarge,
                          absl::StrCat("request body exceeds --max-message-bytes (", max_body, " bytes)"));
        } else if (tls_connection != nullptr && tls_connection->timed_out()) {
          e = MakeRefusal(absl::StatusCode::kCancelled, RefusalKind::kRequestTimeout,  // the client's doing
                          absl::StrCat("the request body did not arrive within --http-read-timeout-ms (",
                                       state->options.read_timeout_ms, " ms)"));
        } else if (tls_connection != nullptr && tls_connection->PeerClosed()) {
          // The client left mid-body: its own doing, counted CANCELLED (499) as a client that
          // leaves while its request waits; as a bad request it fed the bad-input alert.
          e = MakeRefusal(absl::StatusCode::kCancelled, RefusalKind::kCancelled,
                          "the client closed the connection before its request body arrived");
        } else if (absl::AsciiStrToLower(req.get_header_value("Transfer-Encoding")) == "chunked") {
          // httplib's chunked reader takes no trailer fields after the last chunk (RFC 9112 7.1.2).
          e = MakeRefusal(absl::StatusCode::kInvalidArgument, RefusalKind::kBadRequest,
                          "could not read the chunked request body: malformed chunks, or trailer fields after the "
                          "last chunk (not accepted: send them as header fields)");
        } else {
          e = MakeRefusal(absl::StatusCode::kInvalidArgument, RefusalKind::kBadRequest,
                          "could not read the request body");
        }
        std::string().swap(body);
        RefuseAndClose(*state, RequestIdOf(*state, req), route, e, req.remote_addr, res);
      } else {
        handler->Api(kind, req, body, res);
      }
      state->CallDone();
    };
  };
  RegisterRoute(svr, kChatRoute, api_route(ApiKind::kChat));
  RegisterRoute(svr, kCompletionRoute, api_route(ApiKind::kCompletion));
  // Once the head is parsed, before the body is read: an ambiguous body length is refused on any
  // route (BodyFramingRefusal), the API's media type and body size checked (ApiHeadRefusal), each
  // answered and the connection closed. GETs have no body: their read deadline ends here.
  svr.set_pre_routing_handler([state](const httplib::Request& req, httplib::Response& res) {
    if (tls_connection != nullptr) {
      tls_connection->EndHead();
      state->phases.SetBetweenRequests(tls_connection->socket(), false);
    }
    // An HTTP/1.0 client gets a response whose end the connection's close marks (a stream has no
    // chunked coding to frame it: RFC 9112 6.1), and no keep-alive it did not ask for.
    if (req.version == "HTTP/1.0" && tls_connection != nullptr) {
      tls_connection->CloseAfter();
      res.set_header("Connection", "close");
    }
    if (RefuseOnHead(*state, req, res)) return httplib::Server::HandlerResponse::Handled;
    if (req.method == "GET" && tls_connection != nullptr) tls_connection->EndRead();
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // A client that waits for "100 Continue" before sending its body gets the refusal instead when
  // the head alone refuses the request (RFC 9110 10.1.1): not a 413's whole upload first.
  svr.set_expect_100_continue_handler([state](const httplib::Request& req, httplib::Response& res) {
    if (!RefuseOnHead(*state, req, res)) return 100;
    // httplib writes this answer without its usual Content-Length (the body would end only at the
    // close, which a client reading by length does not see as the end).
    res.set_header("Content-Length", std::to_string(res.body.size()));
    return res.status;
  });
  RegisterRoute(svr, kModelsRoute, [state](const httplib::Request& req, httplib::Response& res) {
    res.set_header("x-request-id", RequestIdOf(*state, req));
    std::string client;
    if (auto e = Authenticate(*state, req, &client)) {
      SetError(res, ToHttpError(*e));
      res.set_header("WWW-Authenticate", "Bearer");
      return;
    }
    json data = json::array();
    for (const std::string& id : ListedModels(state->options)) data.push_back(ModelObject(*state, id));
    res.set_content(JsonDump(json{{"object", "list"}, {"data", std::move(data)}}), "application/json");
  });
  // OpenAI's "retrieve model" (the SDK's models.retrieve): one listed id, else 404 model_not_found.
  RegisterRoute(svr, kModelRoute, [state](const httplib::Request& req, httplib::Response& res) {
    const std::string request_id = RequestIdOf(*state, req);
    res.set_header("x-request-id", request_id);
    std::string client;
    if (auto e = Authenticate(*state, req, &client)) {
      SetError(res, ToHttpError(*e));
      res.set_header("WWW-Authenticate", "Bearer");
      return;
    }
    const std::string id = req.matches[1];
    const std::vector<std::string> listed = ListedModels(state->options);
    if (std::find(listed.begin(), listed.end(), id) == listed.end()) {
      SetError(res, ToHttpError(ModelNotFound(state->options, id, "")));
      return;
    }
    res.set_content(JsonDump(ModelObject(*state, id)), "application/json");
  });
  RegisterRoute(svr, kHealthRoute, [state](const httplib::Request& req, httplib::Response& res) {
    res.set_header("x-request-id", RequestIdOf(*state, req));
    bool serving = false;
    {
      std::lock_guard<std::mutex> lock(state->mu);
      serving = state->serving && !state->draining && state->engine != nullptr && !state->stopping;
    }
    res.status = serving ? 200 : 503;
    res.set_content(JsonDump(json{{"status", serving ? "SERVING" : "NOT_SERVING"}}), "application/json");
  });
  svr.set_error_handler(
      httplib::Server::HandlerWithResponse([state](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        // Every answer names its request, a route's refusal by httplib too (404, 405, 413).
        if (!res.has_header("x-request-id")) res.set_header("x-request-id", RequestIdOf(*state, req));
        HttpError e;
        e.status = res.status;
        if (res.status == 413) {
          e.message = "request body too large";
          e.code = "payload_too_large";
        } else if (res.status == 404 && !AllowedMethods(req.path).empty()) {
          // A route that exists, asked with another method (RFC 9110 15.5.6: 405 and Allow).
          e.status = res.status = 405;
          e.message = absl::StrCat(req.method, " ", req.path, ": method not allowed (", AllowedMethods(req.path), ")");
          e.code = "method_not_allowed";
          res.set_header("Allow", AllowedMethods(req.path));
        } else if (res.status == 404) {
          e.message = absl::StrCat("no route ", req.method, " ", req.path);
          e.code = "not_found";
        } else if (res.status >= 500) {
          e.type = "server_error";
          e.message = "internal error";
          e.code = "internal_error";
        } else {
          e.message = absl::StrCat("bad HTTP request (status ", res.status, ")");
          e.code = "bad_request";
        }
        res.set_content(HttpErrorBody(e), "application/json");
        return httplib::Server::HandlerResponse::Handled;
      }));
  svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    HttpError e;
    e.status = 500;
    e.type = "server_error";
    e.message = absl::StrCat("internal error: ", what);
    e.code = "internal_error";
    LogEvent(LogLevel::kError, "http_exception", "", e.message);
    SetError(res, e);
  });

  // The metrics listener's addresses for --host (httplib resolved "*" as a name and bound [::1]
  // only).
  int port = -1;
  for (const std::string& host : ListenHosts(options.host)) {
    port = options.port == 0 ? svr.bind_to_any_port(host) : (svr.bind_to_port(host, options.port) ? options.port : -1);
    if (port > 0) break;
  }
  if (port <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", FormatAddress(options.host, options.port), " (HTTP)"));
  }
  server->port_ = port;
  // httplib listens with a backlog of 5 (compiled in): a burst of new connections beyond that has
  // its SYNs dropped and retried a second later. The same socket, listened on again, takes 1024.
  struct ListenSocket : httplib::Server {
    static socket_t Of(httplib::Server& s) { return (s.*(&ListenSocket::svr_sock_)).load(); }
  };
  if (const socket_t fd = ListenSocket::Of(svr); fd != INVALID_SOCKET) listen(fd, 1024);
  server->listener_ = std::thread([&svr] { svr.listen_after_bind(); });
  return server;
}

HttpServer::~HttpServer() { Shutdown(); }

std::string HttpServer::address() const { return FormatAddress(state_->options.host, port_); }

void HttpServer::SetEngine(InferenceEngine* engine) {
  state_->sessions.SetEngine(engine);
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->engine = engine;
}

void HttpServer::SetTokenizer(std::shared_ptr<const tokenizer::Tokenizer> tokenizer) {
  state_->sessions.SetTokenizer(std::move(tokenizer));
}

void HttpServer::SetImageSupport(std::shared_ptr<const ImageSupport> images) {
  state_->sessions.SetImageSupport(std::move(images));
}

void HttpServer::SetServing(bool serving) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->serving = serving;
}

void HttpServer::StartDrain() {
  state_->sessions.StartDrain();
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->draining = true;
}

bool HttpServer::WaitIdle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(state_->mu);
  return state_->idle_cv.wait_for(lock, timeout, [this] { return state_->active == 0; });
}

int HttpServer::waiting_requests() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->api_waiting;
}

int HttpServer::active_calls() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->active;
}

void HttpServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  state_->stopping = true;
  server_->stop();
  if (listener_.joinable()) listener_.join();
  // Results the engine gave while shutting down are delivered now, so no serving slot (which
  // holds the state) is released last on a delivery worker.
  state_->sessions.Flush();
}

}  // namespace glmserve
