# Placeholder until the gRPC front end lands: `serve` reports that it is not built yet.
add_library(glmserve_serve STATIC serve_placeholder.cc)
target_include_directories(glmserve_serve PUBLIC ${CMAKE_SOURCE_DIR})
