"""Average several checkpoints of one run into a checkpoint the other eval tools load.

    python train_ngpt2.py ... --save_every=250 --keep_checkpoints=1
    python -m evals.average logs/RUN_step004250.dcp logs/RUN_step004500.dcp logs/RUN_step004768.dcp \
        --out logs/RUN_avg.dcp

Weights are averaged in float32 and stored in their saved dtype. Then the script's own post-step constraint is
applied: for nGPT the average of unit vectors is not a unit vector, so every normalized matrix is put back on the
unit sphere with the model's post_step() (GPT-2 has no constraint). The result holds the model, the latest step
and the hyperparameters, but no optimizer or loader state: it is for evaluation, not for --resume. Eval results
of an averaged checkpoint are logged as eval:NAME_avg.
"""
import argparse
import os
import sys

from evals.common import build_model, read_checkpoint
from runtime import save_checkpoint

# settings that may differ between checkpoints of one run (bookkeeping, not the model or the data)
BOOKKEEPING = {"resume", "log_dir", "run_id", "device", "compile", "kernels", "save_every", "keep_checkpoints",
               "val_loss_every"}


def check_same_run(paths, ckpts):
    first = ckpts[0]
    for path, ckpt in zip(paths[1:], ckpts[1:]):
        if ckpt["script"] != first["script"]:
            sys.exit(f"error: {path} was written by {ckpt['script']}, {paths[0]} by {first['script']}; "
                     f"average checkpoints of one run")
        keys = set(first["hyperparameters"]) | set(ckpt["hyperparameters"])
        differ = sorted(k for k in keys - BOOKKEEPING
                        if first["hyperparameters"].get(k) != ckpt["hyperparameters"].get(k))
        if differ:
            diffs = ", ".join(f"{k}: {first['hyperparameters'].get(k)} vs {ckpt['hyperparameters'].get(k)}"
                              for k in differ)
            sys.exit(f"error: {path} and {paths[0]} have different configs ({diffs}); average checkpoints of one run")


def average(paths, out):
    ckpts = [read_checkpoint(path) for path in paths]
    check_same_run(paths, ckpts)
    first = ckpts[0]
    built = [build_model(path, ckpt, "cpu") for path, ckpt in zip(paths, ckpts)]
    weights = [model.state_dict() for _, _, model in built]
    state = {}
    for name, tensor in weights[0].items():
        state[name] = (sum(w[name].float() for w in weights) / len(weights)).to(tensor.dtype)
    module, _, model = built[0]
    model.load_state_dict(state)
    model.post_step()  # the script's own constraint after every optimizer step (nGPT: unit-norm matrices)
    merged = dict(step=max(int(c["step"]) for c in ckpts), hyperparameters=first["hyperparameters"],
                  script=first["script"], averaged_from=[os.path.abspath(p) for p in paths],
                  averaged_steps=[int(c["step"]) for c in ckpts])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_checkpoint(out, dict(model=model.state_dict()), merged, True)  # the training scripts' own format
    print(f"averaged {len(paths)} checkpoints of {first['script']} (steps {merged['averaged_steps']}) -> {out}")
    if hasattr(model, "normalized_matrices"):
        print(f"renormalized {len(model.normalized_matrices())} matrices to unit norm with {first['script']}'s "
              f"post_step() (the average of unit vectors is not a unit vector)")
    else:
        print(f"no renormalization: {first['script']} keeps no constraint on its weights")
    return dict(merged, model=model.state_dict())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint directories of one run (--keep_checkpoints=1 keeps them)")
    p.add_argument("--out", required=True, help="the checkpoint directory to write (e.g. logs/RUN_avg.dcp)")
    args = p.parse_args(argv)
    return average(args.checkpoints, args.out)


if __name__ == "__main__":
    main()
