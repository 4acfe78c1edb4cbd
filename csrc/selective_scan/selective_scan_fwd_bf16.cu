// Instantiates the bf16 (__nv_bfloat16) forward kernels: every lanes-per-channel count P and kernel mode
// (SPARSESSM_FOR_EACH_KERNEL). Split by dtype so that the translation units compile in parallel.
#include "selective_scan_kernel.cuh"

namespace sparsessm {
namespace detail {

#define SPARSESSM_INSTANTIATE(T, P, MODE) \
  template cudaError_t launch_scan<T, P, MODE>(const SelectiveScanParams&, const LaunchPlan&, cudaStream_t);
SPARSESSM_FOR_EACH_KERNEL(SPARSESSM_INSTANTIATE, __nv_bfloat16)
#undef SPARSESSM_INSTANTIATE

}  // namespace detail
}  // namespace sparsessm
