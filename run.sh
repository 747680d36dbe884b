#!/usr/bin/env bash
# The A/B: GPT-2 baseline, then nGPT, same data and seed, then the comparison table and plots.
#   ./run.sh                 both models          ./run.sh gpt2 | ngpt2     one model
#   ./run.sh --seed=1 ...    extra --name=value arguments pass through to both scripts
#   ./run.sh test [...]      the tests but the slow ones (pytest arguments pass through; -m slow: the slow ones)
#   ./run.sh fair [...]      the fair A/B (python -m tune.fair, described in tune/README.md) into RUN_DIR (default
#                            logs/fair); the same command again continues it; exit status 3 on NO VERDICT
# Python: $PYTHON if set, else an active virtual environment that has torch, else .venv here, made on first use
# (torch with CUDA and Triton where nvidia-smi sees a GPU, the CPU build of torch where not, then the requirements).
# With GPUs: torchrun over all of them on FineWeb (downloaded on first use, 2.6B tokens of it). Each run is
# <model>_s<seed> in RUN_DIR with --resume=auto: rerun with the same RUN_DIR (a requeued job, a torchrun restart)
# and every run continues from its newest complete checkpoint.
# Several nodes: on each, NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 [MASTER_PORT=29500] RUN_DIR=<shared dir> ./run.sh,
# or RDZV_ENDPOINT=host0:29500 instead of NODE_RANK/MASTER_ADDR (torchrun's c10d rendezvous). MAX_RESTARTS=N
# lets torchrun restart failed workers, which then resume by themselves.
# Without GPUs: the tiny offline A/B on CPU (Python's own docs, a 2k vocabulary).
set -euo pipefail
cd "$(dirname "$0")"
CPU_TORCH=${CPU_TORCH:-2.13.0}  # the CPU build CI tests; any torch >= 2.11 works

pip_install() {  # quiet, logged; a failure is one line naming the log
    if ! .venv/bin/python -m pip install "$@" >>.venv/pip.log 2>&1; then
        echo "error: pip install $* failed in .venv (see .venv/pip.log); fix that and rerun, or set PYTHON=..." >&2
        return 1
    fi
}

setup() {  # arguments: extra requirement files
    if [[ -n ${PYTHON:-} ]]; then return; fi
    if [[ -n ${VIRTUAL_ENV:-} ]] && python -c "import torch" 2>/dev/null; then PYTHON=python; return; fi
    PYTHON=.venv/bin/python
    local want
    want=$(cat requirements.txt data/requirements.txt "$@" | sha1sum | cut -c1-16)
    if [[ -f .venv/installed && $(cat .venv/installed) == "$want" ]]; then return; fi
    [[ -x $PYTHON ]] || python3 -m venv .venv || {
        echo "error: python3 -m venv .venv failed; install python3-venv (Debian/Ubuntu) or set PYTHON=..." >&2; exit 1; }
    echo "setting up .venv (once; pip's output in .venv/pip.log)"
    if ! $PYTHON -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
            pip_install "torch>=2.11" || exit 1  # Linux builds on PyPI bring CUDA and their Triton
        else
            pip_install "torch==$CPU_TORCH+cpu" 2>/dev/null \
                || pip_install "torch==$CPU_TORCH+cpu" --extra-index-url https://download.pytorch.org/whl/cpu || exit 1
        fi
    fi
    local files=(requirements.txt data/requirements.txt "$@")
    pip_install "${files[@]/#/-r}" || exit 1
    echo "$want" >.venv/installed
}

if [[ $# -gt 0 && $1 == test ]]; then
    shift
    setup evals/requirements.txt tests/requirements.txt
    exec $PYTHON -m pytest tests -n 2 -m "not slow" "$@"  # a later -m wins: ./run.sh test -m slow (CI runs both)
fi
setup
TINY=(--input_bin="data/tiny/tiny_train_*.bin" --input_val_bin="data/tiny/tiny_val_*.bin" --vocab_size=2048
      --n_layer=4 --n_head=4 --n_embd=128 --sequence_length=128 --batch_size=8 --device_batch_size=8
      --num_iterations=200 --warmdown_iters=60 --val_loss_every=25 --val_tokens=8192 --save_every=0)
if [[ $# -gt 0 && $1 == fair ]]; then
    shift
    if [[ $($PYTHON -c "import torch; print(torch.cuda.device_count())") -gt 0 ]]; then
        ls data/fineweb10B/fineweb_train_000025.bin >/dev/null 2>&1 || $PYTHON -m data.cached_fineweb10B 25
        exec $PYTHON -m tune.fair --out="${RUN_DIR:-logs/fair}" "$@"
    fi
    echo "no GPU: the fair A/B on the tiny offline corpus on CPU (see README for the real one)"
    ls data/tiny/tiny_train_000001.bin >/dev/null 2>&1 || $PYTHON -m data.tiny
    # every arm at the same 20-step warmup (GPT-2's default of 256 does not suit 200 steps); fair.py sets
    # mup_base_width itself
    exec $PYTHON -m tune.fair --out="${RUN_DIR:-logs/fair_tiny}" "${TINY[@]}" --warmup_iters=20 "$@"
fi

MODELS=(gpt2 ngpt2)
if [[ $# -gt 0 && ( $1 == gpt2 || $1 == ngpt2 ) ]]; then MODELS=("$1"); shift; fi

NNODES=${NNODES:-1}
if [[ $NNODES -gt 1 && -z ${RUN_DIR:-} ]]; then
    echo "error: NNODES=$NNODES needs RUN_DIR set to the same directory on a filesystem every node shares" >&2
    exit 1
fi
RUN_DIR=${RUN_DIR:-logs/ab_$(date +%Y%m%d-%H%M%S)}
SEED=$(printf '%s\n' "$@" | sed -n 's/^--seed=//p' | tail -n 1)
GPUS=$($PYTHON -c "import torch; print(torch.cuda.device_count())")

if [[ $GPUS -gt 0 ]]; then
    # Speedrun scale: 4768 steps of 512 x 1024 tokens need 25 of the 100M-token chunks.
    ls data/fineweb10B/fineweb_train_000025.bin >/dev/null 2>&1 || $PYTHON -m data.cached_fineweb10B 25
    LAUNCH=(--nproc_per_node="$GPUS" --max_restarts="${MAX_RESTARTS:-0}")
    if [[ $NNODES -eq 1 ]]; then
        LAUNCH+=(--standalone)
    elif [[ -n ${RDZV_ENDPOINT:-} ]]; then
        LAUNCH+=(--nnodes="$NNODES" --rdzv_backend=c10d --rdzv_endpoint="$RDZV_ENDPOINT" --rdzv_id="${RDZV_ID:-ab}")
    else
        LAUNCH+=(--nnodes="$NNODES" --node_rank="${NODE_RANK:?set NODE_RANK (0 to NNODES-1) on each node}"
                 --master_addr="${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}" --master_port="${MASTER_PORT:-29500}")
    fi
    for model in "${MODELS[@]}"; do
        torchrun "${LAUNCH[@]}" "train_$model.py" --log_dir="$RUN_DIR" --run_id="${model}_s${SEED:-0}" --resume=auto "$@"
    done
else
    echo "no GPU: running the tiny offline A/B on CPU (see README for the real one)"
    ls data/tiny/tiny_train_000001.bin >/dev/null 2>&1 || $PYTHON -m data.tiny
    # each model's best lr in 300-step runs of this shape (records/2026-11-25_tiny_cpu_ab; nGPT 2e-2, best in the
    # 150-step transfer sweep records/2026-11-25_tiny_cpu_mup_transfer, ended worse there)
    declare -A TINY_LR=([gpt2]="--learning_rate=2e-3 --warmup_iters=20" [ngpt2]="--learning_rate=1e-2")
    for seed in 0 1; do
        for model in "${MODELS[@]}"; do
            $PYTHON "train_$model.py" "${TINY[@]}" --mup_base_width=128 ${TINY_LR[$model]} --seed=$seed \
                --log_dir="$RUN_DIR" "$@"
        done
    done
fi
$PYTHON -m tune.compare "$RUN_DIR" --out_dir=img --name=latest --markdown="$RUN_DIR/table.md"
echo "logs, table: $RUN_DIR   plots: img/latest_*.png"
