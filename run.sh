#!/usr/bin/env bash
# The A/B: GPT-2 baseline, then nGPT, same data and seed, then the comparison table and plots.
#   ./run.sh                 both models          ./run.sh gpt2 | ngpt2     one model
#   ./run.sh --seed=1 ...    extra --name=value arguments pass through to both scripts
# With GPUs: torchrun over all of them on FineWeb (downloaded on first use, 2.6B tokens of it).
# Without: the tiny offline A/B on CPU (Python's own docs, a 2k vocabulary), two seeds each, in minutes.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}

MODELS=(gpt2 ngpt2)
if [[ $# -gt 0 && ( $1 == gpt2 || $1 == ngpt2 ) ]]; then MODELS=("$1"); shift; fi

RUN_DIR=logs/ab_$(date +%Y%m%d-%H%M%S)
GPUS=$($PYTHON -c "import torch; print(torch.cuda.device_count())")

if [[ $GPUS -gt 0 ]]; then
    # Speedrun scale: 4768 steps of 512 x 1024 tokens need 25 of the 100M-token chunks.
    ls data/fineweb10B/fineweb_train_000025.bin >/dev/null 2>&1 || $PYTHON data/cached_fineweb10B.py 25
    for model in "${MODELS[@]}"; do
        torchrun --standalone --nproc_per_node="$GPUS" "train_$model.py" --log_dir="$RUN_DIR" "$@"
    done
else
    echo "no GPU: running the tiny offline A/B on CPU (see README for the real one)"
    ls data/tiny/tiny_train_000001.bin >/dev/null 2>&1 || $PYTHON data/tiny.py
    TINY=(--input_bin="data/tiny/tiny_train_*.bin" --input_val_bin="data/tiny/tiny_val_*.bin" --vocab_size=2048
          --n_layer=4 --n_head=4 --n_embd=128 --mup_base_width=128 --sequence_length=128 --batch_size=16
          --device_batch_size=16 --num_iterations=300 --warmdown_iters=90 --val_loss_every=25 --val_tokens=8192
          --save_every=0)
    # each model at the best of a 3-point learning-rate sweep at this size (records/2026-11-25_tiny_cpu_ab)
    declare -A TINY_LR=([gpt2]="--learning_rate=2e-3 --warmup_iters=30" [ngpt2]="--learning_rate=1e-2")
    for seed in 0 1; do
        for model in "${MODELS[@]}"; do
            $PYTHON "train_$model.py" "${TINY[@]}" ${TINY_LR[$model]} --seed=$seed --log_dir="$RUN_DIR" "$@"
        done
    done
fi
$PYTHON records/compare.py "$RUN_DIR" --out_dir=img --name=latest --markdown="$RUN_DIR/table.md"
echo "logs, table: $RUN_DIR   plots: img/latest_*.png"
