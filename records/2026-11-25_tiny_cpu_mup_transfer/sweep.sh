#!/usr/bin/env bash
# The muP transfer record: both scripts at widths 64/128/256 (head_dim 32, base width 128) on the tiny corpus
# (python data/tiny.py), 150 steps of 8 x 128 tokens, each run on 1 thread; the two models' sweeps side by side.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=records/2026-11-25_tiny_cpu_mup_transfer
T=(--head_dim=32 --input_bin="data/tiny/tiny_train_*.bin" --input_val_bin="data/tiny/tiny_val_*.bin"
   --vocab_size=2048 --n_layer=4 --mup_base_width=128 --sequence_length=128 --batch_size=8 --device_batch_size=8
   --num_iterations=150 --warmdown_iters=45 --val_loss_every=50 --val_tokens=4096 --save_every=0)
GPT_LRS=(5e-4 1e-3 2e-3 4e-3 8e-3 1.6e-2)
NGPT_LRS=(2.5e-3 5e-3 1e-2 2e-2 4e-2 8e-2)
export OMP_NUM_THREADS=1
if [[ ${1:-} != report ]]; then
    # width 64: all six lrs; 128 and 256: the five that bracket width 64's optimum, from the middle out (the CPU
    # was shared with other jobs, 4x slower than alone: the full 6 x 3 grid did not fit the time)
    python tune/sweep.py --scripts gpt2 --widths 64 --lrs "${GPT_LRS[@]}" --out=$OUT/gpt2 "${T[@]}" --warmup_iters=15 &
    python tune/sweep.py --scripts ngpt2 --widths 64 --lrs "${NGPT_LRS[@]}" --out=$OUT/ngpt2 "${T[@]}" &
    wait
    python tune/sweep.py --scripts gpt2 --widths 128 256 --lrs 2e-3 1e-3 4e-3 8e-3 5e-4 --out=$OUT/gpt2 "${T[@]}" \
        --warmup_iters=15 &
    python tune/sweep.py --scripts ngpt2 --widths 128 256 --lrs 2e-2 1e-2 4e-2 8e-2 5e-3 --out=$OUT/ngpt2 "${T[@]}" &
    wait
fi
# the tables (table.md) and plots (sweep.png) over the whole grid; runs left out show as 'not run'
python tune/sweep.py --report --scripts gpt2 --widths 64 128 256 --lrs "${GPT_LRS[@]}" --out=$OUT/gpt2 "${T[@]}"
python tune/sweep.py --report --scripts ngpt2 --widths 64 128 256 --lrs "${NGPT_LRS[@]}" --out=$OUT/ngpt2 "${T[@]}"
