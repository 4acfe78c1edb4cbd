#!/usr/bin/env bash
# Compile-only check of the CUDA backend, for machines with nvcc but no GPU (CI).
#
# Compiles every .cu under csrc/ with nvcc -c for sm_80 and sm_90a (the flags torch's extension
# build adds included), and python/bindings.cpp with the host compiler against torch's headers,
# into a temporary directory; fails on any error and on any register spill (ptxas -v reports spill
# stores or loads for a kernel: the kernels are sized to fit their register budget), and prints the
# time of every file. Nothing is run. Skips (exit 0) with a message when nvcc is not installed.
#
#   bash .ci/compile_cuda.sh             # all of it
#   JOBS=4 bash .ci/compile_cuda.sh      # parallel compiles (default: number of CPUs)
#   SKIP_BINDING=1 bash .ci/compile_cuda.sh
#
# Until nvcc is found only bash builtins are used, so the skip works on a bare PATH.
set -uo pipefail

script_dir="${BASH_SOURCE[0]%/*}"
[ "$script_dir" = "${BASH_SOURCE[0]}" ] && script_dir=.
cd "$script_dir/.." || exit 1

NVCC="${NVCC:-}"
if [ -z "$NVCC" ]; then
  if command -v nvcc >/dev/null 2>&1; then
    NVCC=nvcc
  elif [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    NVCC="$CUDA_HOME/bin/nvcc"
  fi
fi
if [ -z "$NVCC" ]; then
  echo "compile_cuda: nvcc not found (set CUDA_HOME or put nvcc on PATH); skipping the CUDA compile check"
  exit 0
fi

set -e
PY="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
ARCH_FLAGS=(-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a)
# What torch.utils.cpp_extension adds to every nvcc command of the extension build.
TORCH_NVCC_FLAGS=(-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr)
NVCC_FLAGS=(-std=c++17 -O3 -lineinfo -Icsrc "${ARCH_FLAGS[@]}" "${TORCH_NVCC_FLAGS[@]}" -Xptxas -v)

tmp="$(mktemp -d "${TMPDIR:-/tmp}/sparsessm_compile_cuda.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "== compile_cuda: $("$NVCC" --version | tail -n 1)"
echo "== compile_cuda: archs sm_80, sm_90a; $JOBS parallel jobs; objects in $tmp"

mapfile -t sources < <(find csrc -name '*.cu' | sort)
if [ "${#sources[@]}" -eq 0 ]; then
  echo "compile_cuda: no .cu files under csrc/" >&2
  exit 1
fi

# One job per source; each writes its log and its time.
compile_one() {
  local src="$1" tag
  tag="${src//\//_}"
  local start end
  start=$(date +%s%3N)
  if "$NVCC" "${NVCC_FLAGS[@]}" -c "$src" -o "$tmp/$tag.o" >"$tmp/$tag.log" 2>&1; then
    echo ok >"$tmp/$tag.status"
  else
    echo FAILED >"$tmp/$tag.status"
  fi
  end=$(date +%s%3N)
  echo "$start $end" >"$tmp/$tag.time"
}

binding_cmd=()
if [ "${SKIP_BINDING:-0}" != "1" ]; then
  # The binding needs torch's headers; a CPU-only torch lacks the generated
  # c10/cuda/impl/cuda_cmake_macros.h, which a one-line stand-in replaces for this check.
  if torch_flags="$("$PY" - <<'EOF' 2>/dev/null
import sysconfig
import torch
from torch.utils.cpp_extension import include_paths
flags = ["-isystem" + p for p in include_paths()]
flags.append("-isystem" + sysconfig.get_paths()["include"])
abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={abi}")
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
flags.append("-std=c++20" if (major, minor) >= (2, 10) else "-std=c++17")
print("\n".join(flags))
EOF
)"; then
    mapfile -t torch_flag_list <<<"$torch_flags"
    mkdir -p "$tmp/shim/c10/cuda/impl"
    printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$tmp/shim/c10/cuda/impl/cuda_cmake_macros.h"
    cuda_inc=""
    nvcc_dir="$(dirname "$(readlink -f "$(command -v "$NVCC")")")"
    for dir in "${CUDA_HOME:-/nonexistent}/include" "$nvcc_dir/../include" /usr/local/cuda/include; do
      if [ -f "$dir/cuda_runtime_api.h" ]; then cuda_inc="$dir"; break; fi
    done
    binding_cmd=("${CXX:-c++}" "${torch_flag_list[@]}" -isystem "$tmp/shim" -I"$cuda_inc" -Icsrc -O1 -fPIC
      -Wall -Wextra -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H
      -DSPARSESSM_CUDA_ARCHS_TOKEN=sm_80_sm_90a -c python/bindings.cpp -o "$tmp/bindings.o")
  else
    echo "compile_cuda: torch is not importable with $PY; skipping python/bindings.cpp"
  fi
fi

compile_binding() {
  local start end
  start=$(date +%s%3N)
  if "${binding_cmd[@]}" >"$tmp/python_bindings.cpp.log" 2>&1; then
    echo ok >"$tmp/python_bindings.cpp.status"
  else
    echo FAILED >"$tmp/python_bindings.cpp.status"
  fi
  end=$(date +%s%3N)
  echo "$start $end" >"$tmp/python_bindings.cpp.time"
}

all_start=$(date +%s%3N)
running=0
tags=()
# The binding is the longest single job: start it first.
if [ "${#binding_cmd[@]}" -gt 0 ]; then
  compile_binding &
  running=$((running + 1))
  tags+=("python_bindings.cpp")
fi
for src in "${sources[@]}"; do
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  compile_one "$src" &
  running=$((running + 1))
  tags+=("${src//\//_}")
done
wait
all_end=$(date +%s%3N)

# ptxas -v prints, per kernel and architecture, "Compiling entry function 'NAME' for 'ARCH'" and
# then "N bytes stack frame, S bytes spill stores, L bytes spill loads": list the kernels that spill.
spilling() {
  awk '/Compiling entry function/ { fn = $0; sub(/.*function .\047?/, "", fn); sub(/\047? for .*/, "", fn);
                                     arch = $NF; gsub(/\047/, "", arch) }
       /bytes spill stores/ { if ($5 != 0 || $9 != 0) print "    " arch " " fn ": " $5 " B spill stores, " $9 " B spill loads" }' "$1"
}

failed=0
kernels=0
for tag in "${tags[@]}"; do
  read -r start end <"$tmp/$tag.time"
  status="$(cat "$tmp/$tag.status")"
  ms=$((end - start))
  printf '  %-58s %-6s %4d.%d s\n' "$tag" "$status" $((ms / 1000)) $((ms % 1000 / 100))
  log="$tmp/$tag.log"
  kernels=$((kernels + $(grep -c 'bytes spill stores' "$log" || true)))
  spills="$(spilling "$log")"
  # everything ptxas -v reports is information, not a warning
  grep -v -e '^ptxas info' -e 'bytes stack frame' -e '^$' "$log" >"$log.warnings" || true
  if [ "$status" != ok ]; then
    failed=1
    echo "----- $tag" >&2
    cat "$log" >&2
  elif [ -n "$spills" ]; then
    failed=1
    echo "----- $tag: register spills (make the kernel fit its __launch_bounds__ register budget)" >&2
    echo "$spills" >&2
  elif [ -s "$log.warnings" ]; then
    echo "----- $tag (warnings)"
    cat "$log.warnings"
  fi
done
echo "== compile_cuda: $kernels kernel compilations (kernel x architecture) checked by ptxas -v, no spill allowed"
ms=$((all_end - all_start))
printf '== compile_cuda: %d files in %d.%d s wall\n' "${#tags[@]}" $((ms / 1000)) $((ms % 1000 / 100))
if [ "$failed" -ne 0 ]; then
  echo "compile_cuda: FAILED" >&2
  exit 1
fi
echo "compile_cuda: OK"
