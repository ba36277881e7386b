# gRPC front end. Every TU here uses the system protobuf/gRPC headers and includes only the
# LibTorch-free runtime headers (engine.h, generation.h, model_runner.h, step_executor.h).
#   glmserve_grpc  : the Inference service and request validation (no runtime code: unit-testable
#                    with any InferenceEngine)
#   glmserve_serve : RunServe and its flags, wiring ModelRunner -> StepExecutor -> InferenceEngine -> gRPC
find_package(gRPC CONFIG REQUIRED)
find_package(spdlog REQUIRED)
find_package(prometheus-cpp CONFIG REQUIRED)

# Structured logs and the self-healing engine wrapper: no gRPC, no LibTorch (unit-testable).
add_library(glmserve_obs STATIC
  ops/logging.cc
  ops/watchdog.cc
)
target_include_directories(glmserve_obs PUBLIC ${CMAKE_SOURCE_DIR})
target_link_libraries(glmserve_obs PUBLIC glmserve_port_probe
  absl::status absl::statusor absl::strings absl::str_format Threads::Threads
  spdlog::spdlog nlohmann_json::nlohmann_json)

# API keys, TLS material, the per-client request cap (both front ends; no gRPC, no LibTorch).
find_package(OpenSSL REQUIRED)
add_library(glmserve_auth STATIC
  request/auth.cc
  request/client_quota.cc
)
target_include_directories(glmserve_auth PUBLIC ${CMAKE_SOURCE_DIR})
target_link_libraries(glmserve_auth PUBLIC absl::status absl::statusor absl::strings OpenSSL::SSL OpenSSL::Crypto)

# What both front ends share: the typed request and refusal, validation, the request session
# (admission, engine events off the engine thread, text, stop strings, logs, metrics). No gRPC, no
# HTTP, no LibTorch: a front end only translates its wire format.
# Images (media.cc: data:/file:// URLs, media_fetch.cc: http(s) URLs when enabled, decoding and preprocessing on the front end's threads)
# need runtime/vision, which needs libpng and libjpeg (scripts/install-deps.sh).
if(NOT TARGET glmserve_vision)
  message(FATAL_ERROR "the gRPC/HTTP server needs glmserve_vision (libpng-dev, libjpeg62-turbo-dev: "
                      "scripts/install-deps.sh installs them); or configure with -DGLMSERVE_WITH_GRPC=OFF")
endif()
# http(s) image URLs (serve --allow-media-fetch) through libcurl; OFF builds a server that refuses
# --allow-media-fetch at start (e.g. where only an incompatible libcurl exists: scripts/gpu-build.sh).
option(GLMSERVE_MEDIA_FETCH "http(s) image URLs through libcurl" ON)
if(GLMSERVE_MEDIA_FETCH)
  find_package(CURL REQUIRED)
endif()
add_library(glmserve_request STATIC
  request/media.cc
  request/media_fetch.cc
  request/request.cc
  request/request_session.cc
  request/request_validation.cc
)
target_include_directories(glmserve_request PUBLIC ${CMAKE_SOURCE_DIR})
target_link_libraries(glmserve_request PUBLIC
  glmserve_tokenizer glmserve_runtime_core glmserve_vision absl::status absl::statusor absl::strings
  absl::str_format Threads::Threads glmserve_obs glmserve_auth nlohmann_json::nlohmann_json)
if(GLMSERVE_MEDIA_FETCH)
  target_compile_definitions(glmserve_request PRIVATE GLMSERVE_MEDIA_FETCH=1)
  target_link_libraries(glmserve_request PUBLIC CURL::libcurl)
endif()

add_library(glmserve_grpc STATIC
  frontend/grpc_service.cc
  frontend/grpc_validation.cc
)
target_include_directories(glmserve_grpc PUBLIC ${CMAKE_SOURCE_DIR})
target_link_libraries(glmserve_grpc PUBLIC
  glmserve_request glmserve_proto glmserve_tokenizer glmserve_runtime_core gRPC::grpc++ gRPC::grpc++_reflection
  absl::status absl::statusor absl::strings absl::str_format Threads::Threads
  glmserve_obs glmserve_auth)

# OpenAI-compatible HTTP/JSON front end (Debian's cpp-httplib, compiled library: its Cflags
# carry the feature macros the .so was built with).
pkg_check_modules(CPPHTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
add_library(glmserve_http STATIC
  frontend/http_api.cc
  frontend/http_server.cc
)
target_include_directories(glmserve_http PUBLIC ${CMAKE_SOURCE_DIR})
target_link_libraries(glmserve_http PUBLIC glmserve_request glmserve_grpc glmserve_auth PkgConfig::CPPHTTPLIB OpenSSL::SSL OpenSSL::Crypto)

add_library(glmserve_serve STATIC
  commands/serve_command.cc
  commands/serve_engine.cc
  commands/serve_flags.cc
  ops/metrics.cc
  commands/supervisor.cc
)
target_include_directories(glmserve_serve PUBLIC ${CMAKE_SOURCE_DIR})
target_compile_definitions(glmserve_serve PRIVATE GLMSERVE_VERSION="${PROJECT_VERSION}")
target_link_libraries(glmserve_serve PUBLIC glmserve_grpc glmserve_http glmserve_engine glmserve_flags glmserve_scheduling_flags
  prometheus-cpp::core PkgConfig::CPPHTTPLIB)
# ModelRunner's code is in glmserve_runtime (LibTorch). Link it without its usage requirements:
# its include directories carry torch's own google/protobuf headers, which clash with the
# system protobuf these TUs use.
target_link_libraries(glmserve_serve INTERFACE "$<LINK_ONLY:glmserve_runtime>")
