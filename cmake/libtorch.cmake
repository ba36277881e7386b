# LibTorch as an imported target, without TorchConfig.cmake: that config insists on a CUDA setup
# matching the wheel even for CPU-only use. We link the CPU library (and the CUDA one when present
# and wanted) directly from the wheel's torch/ folder.
if(NOT EXISTS "${GLMSERVE_LIBTORCH_DIR}/include/ATen/ATen.h")
  execute_process(
    COMMAND python3 -c "import torch, os; print(os.path.dirname(torch.__file__))"
    OUTPUT_VARIABLE _torch_py_dir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_torch_py_dir AND EXISTS "${_torch_py_dir}/include/ATen/ATen.h")
    set(GLMSERVE_LIBTORCH_DIR "${_torch_py_dir}" CACHE PATH "" FORCE)
  else()
    message(FATAL_ERROR "LibTorch not found at GLMSERVE_LIBTORCH_DIR=${GLMSERVE_LIBTORCH_DIR}; "
                        "run scripts/install-deps.sh")
  endif()
endif()
message(STATUS "LibTorch: ${GLMSERVE_LIBTORCH_DIR}")

set(_torch_lib "${GLMSERVE_LIBTORCH_DIR}/lib")
add_library(glmserve_libtorch INTERFACE)
target_include_directories(glmserve_libtorch SYSTEM INTERFACE
  "${GLMSERVE_LIBTORCH_DIR}/include"
  "${GLMSERVE_LIBTORCH_DIR}/include/torch/csrc/api/include")
target_compile_definitions(glmserve_libtorch INTERFACE _GLIBCXX_USE_CXX11_ABI=1)
target_link_libraries(glmserve_libtorch INTERFACE
  "${_torch_lib}/libtorch_cpu.so" "${_torch_lib}/libc10.so" Threads::Threads)
# libtorch_cpu.so needs libcudart/libcupti at load time even on CPU; the CUDA toolkit provides them.
set(GLMSERVE_RUNTIME_RPATH "${_torch_lib}")
if(EXISTS /usr/local/cuda/lib64)
  list(APPEND GLMSERVE_RUNTIME_RPATH /usr/local/cuda/lib64)
endif()
set(GLMSERVE_TORCH_HAS_CUDA OFF)
if(EXISTS "${_torch_lib}/libtorch_cuda.so" AND GLMSERVE_WITH_CUDA)
  set(GLMSERVE_TORCH_HAS_CUDA ON)
  # --no-as-needed keeps libtorch_cuda loaded so the CUDA backend registers itself.
  target_link_libraries(glmserve_libtorch INTERFACE
    "-Wl,--no-as-needed" "${_torch_lib}/libtorch_cuda.so" "${_torch_lib}/libc10_cuda.so" "-Wl,--as-needed")
  target_compile_definitions(glmserve_libtorch INTERFACE GLMSERVE_TORCH_CUDA=1)
endif()
set(CMAKE_BUILD_RPATH ${GLMSERVE_RUNTIME_RPATH})
set(CMAKE_INSTALL_RPATH ${GLMSERVE_RUNTIME_RPATH})
