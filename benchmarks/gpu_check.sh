#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (issue 18). Run from the repository root on a machine with a GPU:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]        # default runs/gpu_check; about 5 minutes on one H200
#
# 1. the machine: GPU, driver, torch / transformers / peft versions;
# 2. benchmarks/train_bench.py at LLaVA-1.5-7B shape (random weights, bf16): lists/s and peak memory of the naive
#    and shared-prefix layouts at N = 2, 8, 20, side by side in one run (`train_bench_7b.json` / `.txt`);
# 3. the gpu-marked tests (`pytest -m gpu`): the same benchmark as a test, and LoRA r 128 training at 7B shape;
# 4. benchmarks/sdpa_shapes.py: one masked SDPA call, forward + backward, with shapes that repeat and shapes that
#    change, per backend (the tiny model's training on an H200 spent ~47 ms in each attention call);
# 5. the embedded loop on the GPU through the CLI: `perpo sample` (N = 20, T = 0.5, bf16) on the committed tiny
#    base, `perpo build-data`, `perpo train --loss perpo` (bf16) with held-out AP@50 at the end;
# 6. `perpo sample --backend vllm` on the same instructions (when vLLM is installed: pip install 'perpo[vllm]'),
#    timed beside the hf sampling of step 5, and the best-of-N statistics of both sample files.
#
# Every step writes its log under OUT_DIR (the tiny loop's files under WORK, default OUT_DIR/work); the script goes
# on after a failed step and exits non-zero at the end if any failed. PYTHON picks the interpreter (default python3).
# A step whose tool is missing (vLLM) says SKIPPED and does not count as failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-runs/gpu_check}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu DTYPE=float32 dry-runs the tiny loop without a GPU
DTYPE=${DTYPE:-bfloat16}
CHECKS=${CHECKS:-machine tiny_loop vllm_tiny sdpa_shapes sdpa_shapes_7b train_bench_7b pytest_gpu}  # a subset: CHECKS="machine tiny_loop"
# SDPA_CALLS: timed calls per setting of sdpa_shapes (default 40, and 20 at 7B shapes)
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
failed=()

step() {  # step NAME COMMAND...: run, log to OUT_DIR/NAME.txt, time it, remember a failure
    local name=$1
    shift
    [[ " $CHECKS " == *" $name "* ]] || return 0
    local start=$SECONDS
    echo "== $name"
    "$@" >"$OUT_DIR/$name.txt" 2>&1
    local rc=$?
    tr '\r' '\n' <"$OUT_DIR/$name.txt" | grep -v -e '^\s*$' -e '%|' | tail -n 25
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed+=("$name")
}

machine() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || return
    "$PY" - <<'EOF'
import platform, torch, transformers, peft
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, peft {peft.__version__}")
print("device:", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF
}

timed() {  # timed NAME COMMAND...: run and print its wall-clock seconds
    local name=$1 start=$SECONDS
    shift
    "$@" || return
    echo "[tiny loop] $name: $((SECONDS - start)) s"
}

tiny_loop() {
    local w=${WORK:-$OUT_DIR/work}/tiny_loop
    rm -rf "$w" && mkdir -p "$w" || return 1
    local perpo=("$PY" -m perpo.cli)
    "${perpo[@]}" data synth --out "$w/data" --train 400 --val 200 --test 50 --seed 1 &&
        "${perpo[@]}" data instructions --source synth --data "$w/data" --split train --out "$w/instructions.jsonl" &&
        timed sample "${perpo[@]}" sample --model perpo/assets/tiny_llava_misaligned --no_progress \
            --instructions "$w/instructions.jsonl" --out "$w/samples.jsonl" --n 20 --temperature 0.5 \
            --max_new_tokens 24 --batch_size 64 --seed 0 --device "$DEVICE" --dtype "$DTYPE" &&
        "${perpo[@]}" build-data --samples "$w/samples.jsonl" --out "$w/lists" --margin 0.8 &&
        timed train "${perpo[@]}" train --model_name_or_path perpo/assets/tiny_llava_misaligned --data "$w/lists/train.jsonl" \
            --loss perpo --n 20 --beta 0.5 --learning_rate 1e-4 --lora_r 32 --lora_alpha 64 \
            --per_device_train_batch_size 8 --num_train_epochs 3 --dtype "$DTYPE" --report_to none \
            --eval_data "$w/data/synth_val.jsonl" --eval_limit 200 --output_dir "$w/perpo" --save_strategy no
}

vllm_tiny() {
    local w=${WORK:-$OUT_DIR/work}/tiny_loop
    if ! "$PY" -c "import vllm" 2>/dev/null; then
        echo "SKIPPED: vLLM is not installed here (pip install 'perpo[vllm]')"
        return 0
    fi
    [ -f "$w/instructions.jsonl" ] || { echo "vllm_tiny needs the tiny_loop step's instructions"; return 1; }
    timed sample_vllm "$PY" -m perpo.cli sample --model perpo/assets/tiny_llava_misaligned --backend vllm \
        --instructions "$w/instructions.jsonl" --out "$w/samples_vllm.jsonl" --n 20 --temperature 0.5 \
        --max_new_tokens 24 --batch_size 64 --seed 0 --dtype "$DTYPE" --no_progress &&
        "$PY" -m perpo.cli build-data --samples "$w/samples_vllm.jsonl" --out "$w/lists_vllm" --margin 0.8
}

step machine machine
step tiny_loop tiny_loop
step vllm_tiny vllm_tiny
step sdpa_shapes "$PY" benchmarks/sdpa_shapes.py --calls "${SDPA_CALLS:-40}"
step sdpa_shapes_7b "$PY" benchmarks/sdpa_shapes.py --heads 32 --head_dim 128 --lengths 600 1100 \
    --calls "${SDPA_CALLS:-20}"
step train_bench_7b "$PY" benchmarks/train_bench.py --size 7b --device cuda --n 2 8 20 --steps 5 --no-pairs \
    --json "$OUT_DIR/train_bench_7b.json"
step pytest_gpu "$PY" -m pytest -m gpu -s -p no:cacheprovider -o addopts="" tests/integration/test_gpu.py

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed"
