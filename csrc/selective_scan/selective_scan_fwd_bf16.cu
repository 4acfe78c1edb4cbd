// Instantiates the bf16 (__nv_bfloat16) forward kernels: one per compile-time kept-state count plus the
// run-time one (kK = 0). Split by dtype so that the three translation units compile in parallel.
#include "selective_scan_kernel.cuh"

namespace sparsessm {
namespace detail {

#define SPARSESSM_INSTANTIATE(K) \
  template cudaError_t launch_fwd<__nv_bfloat16, K>(const SelectiveScanParams&, const LaunchPlan&, cudaStream_t);
SPARSESSM_FOR_EACH_STATIC_K(SPARSESSM_INSTANTIATE)
SPARSESSM_INSTANTIATE(0)
#undef SPARSESSM_INSTANTIATE

}  // namespace detail
}  // namespace sparsessm
