#!/usr/bin/env bash
# One GPU round in one command: build the CUDA extension, run the test suite on the GPU, run the
# benchmarks. Every step is time-limited and logged; results and logs land in $OUT (default
# ./gpu_out). Steps run in the order given:
#
#   bash benchmarks/gpu/round.sh build test bench130m preset e2e
#
#   build      SPARSESSM_BUILD_CUDA=1 editable install (sm_90 unless SPARSESSM_CUDA_ARCHS is set);
#              with REUSE_BUILD=1 and a built sparsessm_kernels/_C*.so already there, a pure-Python
#              editable install that keeps it (it must come from the same sources); the .so is
#              copied to $OUT
#   test       the whole test suite (GPU tests included) with pytest-xdist
#   gputest    only `pytest -m gpu`
#   bench130m  bench_scan.py on the 130m layer (all masks, all GPU backends, decode 1/64/256)
#   preset     bench_scan.py --preset gpu-grid
#   e2e        bench_e2e.py (whole-model tokens/s, eager and static (cg) decode, transformers /
#              mamba_ssm baselines when importable; extra options in E2E_ARGS)
#   segsweep   the cuda scan on the GPU grid at time segments 0 (auto), 4, 16, 32, 64 and 128
#   decodegraph  the GPU decode grid timed as CUDA-graph replays (kernel time, no launch cost)
#   ssd        bench_ssd.py: the Mamba-2 (SSD) Triton kernels against mamba_ssm's (after `mamba`)
#   cgtest     the GPU tests of static decoding and the direct 2:4 projections (graph capture/replay
#              equality under torch.cuda.set_sync_debug_mode("error"), cuSPARSELt path vs dense)
#   decode     bench_decode.py: eager vs static (CUDA-graph) decode per token, kernel-time floor
#   step       bench_step.py --sweep: the decode step (dense vs compact 2:4, batch 256) against the
#              HBM roofline, CUDA-graph replays over rotating state buffers, every launch configuration
#   projections  bench_projections.py: 2:4 in_proj / out_proj vs dense F.linear, 1..16384 tokens
#   mamba      build mamba_ssm's forward scan from the checkout in $MAMBA_SRC (benchmarks/gpu/
#              mamba_baseline.py) and put it on PYTHONPATH: later steps time it as the baseline
#
# At the end the logs and JSON are also packed into $OUT/results.tgz (one file to copy back).
#
# Per-step limits (seconds) come from STEP_LIMIT_<step> (e.g. STEP_LIMIT_test=200).
set -uo pipefail
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PY:-python3}"

run_step() {
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - start)) s (limit $limit s)"
  tail -n "${TAIL_LINES:-25}" "$OUT/$name.log"
  return 0
}

limit_of() { local v="STEP_LIMIT_$1"; echo "${!v:-$2}"; }

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tail -n 2
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
nvcc --version 2>&1 | tail -n 1

for step in "$@"; do
  case "$step" in
    build)
      if [ "${REUSE_BUILD:-0}" = 1 ] && ls sparsessm_kernels/_C*.so >/dev/null 2>&1; then
        run_step build "$(limit_of build 300)" env SPARSESSM_BUILD_CUDA=0 \
          $PY -m pip install -e . --no-deps --no-build-isolation
      else
        run_step build "$(limit_of build 300)" env SPARSESSM_BUILD_CUDA=1 \
          SPARSESSM_CUDA_ARCHS="${SPARSESSM_CUDA_ARCHS:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
          $PY -m pip install -e . --no-deps --no-build-isolation -v
      fi
      cp sparsessm_kernels/_C*.so "$OUT/" 2>/dev/null || echo "no _C extension built"
      $PY -m sparsessm_kernels.cli env 2>&1 | tail -n 20 || true
      ;;
    test)
      run_step test "$(limit_of test 240)" $PY -m pytest -q -n "${XDIST:-8}" -p no:cacheprovider \
        --junitxml="$OUT/junit_test.xml" -rfE
      ;;
    gputest)
      run_step gputest "$(limit_of gputest 240)" $PY -m pytest -q -m gpu -p no:cacheprovider \
        --junitxml="$OUT/junit_gputest.xml" -rfE
      ;;
    bench130m)
      run_step bench130m "$(limit_of bench130m 150)" $PY benchmarks/bench_scan.py --shapes 130m \
        --pruned-states both --out "$OUT/scan_h100_130m.json"
      ;;
    preset)
      run_step preset "$(limit_of preset 300)" $PY benchmarks/bench_scan.py --preset gpu-grid \
        --out "$OUT/scan_h100_gpu_grid.json"
      ;;
    e2e)
      run_step e2e "$(limit_of e2e 300)" $PY benchmarks/bench_e2e.py ${E2E_ARGS:-} --out "$OUT/e2e_h100.json"
      ;;
    mamba)
      if [ -z "${MAMBA_SRC:-}" ]; then
        echo "== mamba: set MAMBA_SRC to a state-spaces/mamba checkout" >&2
      else
        mamba_out="${MAMBA_OUT:-/tmp/mamba_baseline}"
        run_step mamba "$(limit_of mamba 240)" $PY benchmarks/gpu/mamba_baseline.py \
          --mamba-src "$MAMBA_SRC" --out "$mamba_out"
        if ls "$mamba_out"/selective_scan_cuda*.so >/dev/null 2>&1; then
          export PYTHONPATH="$mamba_out${PYTHONPATH:+:$PYTHONPATH}"
        else
          echo "== mamba: no baseline built (see $OUT/mamba.log)"
        fi
      fi
      ;;
    cgtest)
      run_step cgtest "$(limit_of cgtest 180)" $PY -m pytest -q -m gpu -p no:cacheprovider -rfE \
        tests/test_decode.py tests/test_semi_structured.py --junitxml="$OUT/junit_cgtest.xml"
      ;;
    decode)
      run_step decode "$(limit_of decode 240)" $PY benchmarks/bench_decode.py --out "$OUT/decode_gpu.json"
      ;;
    step)
      run_step step "$(limit_of step 240)" $PY benchmarks/bench_step.py --sweep --out "$OUT/step_gpu.json"
      ;;
    projections)
      run_step projections "$(limit_of projections 180)" $PY benchmarks/bench_projections.py \
        --out "$OUT/projections_gpu.json"
      ;;
    decodegraph)
      run_step decodegraph "$(limit_of decodegraph 200)" $PY benchmarks/bench_scan.py --preset gpu-grid \
        --no-scan --timer graph --out "$OUT/scan_h100_decode_graph.json"
      ;;
    ssd)
      run_step ssd "$(limit_of ssd 400)" $PY benchmarks/bench_ssd.py --out "$OUT/ssd_gpu.json"
      ;;
    segsweep)
      for P in 0 4 16 32 64 128; do
        run_step "segsweep_P$P" "$(limit_of segsweep 120)" $PY benchmarks/bench_scan.py --preset gpu-grid \
          --backends cuda --no-decode --masks dense column50 2:4 --cuda-time-segments "$P" \
          --out "$OUT/scan_h100_segments_P$P.json"
      done
      ;;
    *)
      echo "unknown step $step" >&2
      exit 2
      ;;
  esac
done

(cd "$OUT" && find . -maxdepth 1 \( -name '*.log' -o -name '*.json' -o -name '*.xml' \) -print |
  tar czf results.tgz -T - && echo "packed $OUT/results.tgz")
