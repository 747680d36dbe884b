"""A stand-in training script for tests of tune/fair.py: the scripts' parse_args and log lines, losses from a
formula (no model, no data), so the whole protocol runs in seconds. Loss falls with step * speed, rises with the
squared log2 distance of the lr from an optimum (4x lower at widths >= opt_shift), and moves by a per-seed offset
that depends on seed and data_seed; a run shorter than the default 40 steps ends higher (its schedule).
--optimizer=muon multiplies the speed by muon_gain, as the real scripts' flag changes how fast they learn; the loss's
floor falls as (n_embd / 64) ** -floor_exp, so wider runs end lower; --params=0 logs a GPT's count at the width.
FAIR_LEDGER=path gets a line per finished run."""
import dataclasses
import json
import math
import os
import random
import sys
import time


@dataclasses.dataclass
class Hyperparameters:
    learning_rate: float = 0.01
    num_iterations: int = 40
    warmup_iters: int = 4
    warmdown_iters: int = 8
    val_loss_every: int = 5
    n_embd: int = 64
    n_head: int = 4
    n_layer: int = 2
    vocab_size: int = 256
    sequence_length: int = 16
    batch_size: int = 4
    device_batch_size: int = 4
    mup_base_width: int = 0
    seed: int = 0
    data_seed: int = 0
    run_id: str = ""
    log_dir: str = "logs"
    resume: str = ""
    input_bin: str = "standin_train_*.bin"
    input_val_bin: str = "standin_val_*.bin"
    val_tokens: int = 64
    speed: float = 1.0  # how fast the loss falls
    ms: float = 10.0  # train_time per step
    opt_shift: int = 0  # widths from here on have their optimum 4x lower
    params: int = 1000  # 0: 12 n_layer n_embd^2 + vocab_size n_embd
    floor_exp: float = 0.0
    optimizer: str = "adamw"
    muon_gain: float = 1.5  # the speed's factor under --optimizer=muon


def parse_args(argv):
    hp = Hyperparameters()
    for arg in argv:
        name, _, value = arg.removeprefix("--").partition("=")
        if name not in hp.__dataclass_fields__:
            sys.exit(f"error: unknown hyperparameter --{name}")
        setattr(hp, name, type(getattr(hp, name))(value))
    return hp


def main():
    hp = parse_args(sys.argv[1:])
    if hp.optimizer not in ("adamw", "muon"):
        sys.exit(f"error: --optimizer must be adamw or muon, got {hp.optimizer!r}")
    speed = hp.speed * (hp.muon_gain if hp.optimizer == "muon" else 1)
    opt = 0.01 / (4 if hp.opt_shift and hp.n_embd >= hp.opt_shift else 1)
    rng = random.Random(f"{hp.seed}-{hp.data_seed}-{hp.speed}" + ("-muon" if hp.optimizer == "muon" else ""))
    offset, pace = rng.gauss(0, 0.01), hp.ms * (1 + 0.02 * rng.gauss(0, 1))
    params = hp.params or 12 * hp.n_layer * hp.n_embd ** 2 + hp.vocab_size * hp.n_embd
    lines = ["script:fair_standin.py", f"parameters:{params} non_embedding_parameters:{params}",
             "hyperparameters:" + json.dumps(dataclasses.asdict(hp))]
    n = hp.num_iterations
    for s in sorted(set(range(0, n, hp.val_loss_every)) | {n}):
        loss = (3 * (hp.n_embd / 64) ** -hp.floor_exp + 7 / (1 + speed * s / 10)
                + 0.05 * math.log2(hp.learning_rate / opt) ** 2 + offset + 0.3 * max(0.0, 1 - n / 40))
        lines.append(f"step:{s}/{n} val_loss:{loss:.4f} train_time:{s * pace:.0f}ms step_avg:{pace:.2f}ms")
        time.sleep(0.002)
    lines.append(f"step:{n}/{n} train_loss:{loss:.4f} train_time:{n * pace:.0f}ms step_avg:{pace:.2f}ms "
                 f"tokens_per_s:{hp.batch_size * hp.sequence_length * 1000 / pace:.0f}")
    os.makedirs(hp.log_dir, exist_ok=True)
    with open(os.path.join(hp.log_dir, hp.run_id + ".txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if os.environ.get("FAIR_LEDGER"):
        with open(os.environ["FAIR_LEDGER"], "a") as f:
            f.write(hp.run_id + "\n")


if __name__ == "__main__":
    main()
