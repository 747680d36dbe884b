#!/usr/bin/env bash
# The muP transfer record: both scripts, widths 64/128/256 (head_dim 32, base width 128), 6 learning rates each,
# on the tiny corpus (python data/tiny.py). The two sweeps run side by side, each one run at a time on 1 thread.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=records/2026-11-25_tiny_cpu_mup_transfer
T=(--widths 64 128 256 --head_dim=32 --input_bin="data/tiny/tiny_train_*.bin" --input_val_bin="data/tiny/tiny_val_*.bin"
   --vocab_size=2048 --n_layer=4 --mup_base_width=128 --sequence_length=128 --batch_size=8 --device_batch_size=8
   --num_iterations=150 --warmdown_iters=45 --val_loss_every=50 --val_tokens=4096 --save_every=0)
export OMP_NUM_THREADS=1
python tune/sweep.py --scripts gpt2 --lrs 5e-4 1e-3 2e-3 4e-3 8e-3 1.6e-2 --out=$OUT/gpt2 "${T[@]}" --warmup_iters=15 &
python tune/sweep.py --scripts ngpt2 --lrs 2.5e-3 5e-3 1e-2 2e-2 4e-2 8e-2 --out=$OUT/ngpt2 "${T[@]}" &
wait
