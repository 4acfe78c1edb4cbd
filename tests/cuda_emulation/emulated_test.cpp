// Unity build of the standalone C++ test (csrc/tests/test_selective_scan.cu) against the host
// emulation of the kernels: the same test program as the CMake target, runnable without a GPU.
//   c++ -std=c++17 -O2 -pthread -fno-strict-aliasing -Wno-unknown-pragmas -I csrc -I $CUDA_HOME/include
//     tests/cuda_emulation/emulated_test.cpp -o /tmp/emulated_test && /tmp/emulated_test
#define SPARSESSM_EMULATE 1

#include "selective_scan/selective_scan.cu"
#include "selective_scan/selective_scan_fwd_bf16.cu"
#include "selective_scan/selective_scan_fwd_fp16.cu"
#include "selective_scan/selective_scan_fwd_fp32.cu"

#include "tests/test_selective_scan.cu"
