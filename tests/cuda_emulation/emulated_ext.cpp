// Unity build of the CUDA backend for the host emulation (see csrc/emulation/cuda_emulation.h):
// the dispatcher, the per-dtype kernel instantiations and the pybind11 binding, compiled by the
// host C++ compiler into a CPU torch extension. Built on demand by tests/cuda_emulation/build.py.
#define SPARSESSM_EMULATE 1

#include "selective_scan/selective_scan.cu"
#include "selective_scan/selective_scan_fwd_bf16.cu"
#include "selective_scan/selective_scan_fwd_fp16.cu"
#include "selective_scan/selective_scan_fwd_fp32.cu"

#include "../../python/bindings.cpp"
