"""One-command GPU validation of train_gpt2.py and train_ngpt2.py, within a wall-time budget (docs/gpu_validation.md).

python validate.py                # CUDA, <= 6 min (--budget_s): the stages below, into records/<date>_gpu_validation_*
python validate.py --stages=steps,run --record_dir=/tmp/v2   # some stages again, after a fix
python validate.py --kernels=torch --compile=0                 # the fallbacks: no Triton kernel runs, no compile
TRITON_INTERPRET=1 python validate.py --quick --record_dir=/tmp/v   # the CPU smoke run (tests/test_bench.py)
(`python bench.py --validate [flags]` runs this with the same flags.)

The stages, in order of value; compile, steps and run once per model:
  tests       the CUDA tests: every kernel against torch at real shapes and odd ones, fp32 and bf16, fwd and bwd
  compile     one compiled training step at the default shape (64 x 1024 tokens): compile time, graph breaks, loss
              and gradients against eager --kernels=torch, memory against tune/memory.py; then the eval graph
  kernels     the kernel bandwidth table (speedrun width, 65,536 tokens, fp32 residual stream)
  steps       the step-time A/B with MFU and peak memory (fits_80GB: whether the defaults fit an 80 GB card)
  run         each script's own main() for 30 steps: the loader, compile warm-up, loop, validation, log
  more_tests  the CUDA tests that compile models or start training runs (beyond the default budget)
Each stage, and each model in it, is its own process (`validate.py --stage=NAME --model=NAME`, pytest for the
tests) with a hard timeout taken from what is left of --budget_s, so the run ends within it whatever hangs; a model
that fails is skipped in the later stages, and the other model still runs. Each stage prints
`stage:NAME status:ok|FAILED|skipped s:SECONDS ...` (a failure's error in one line) and adds to the record folder
at once: a log per process, results.txt, README.md (every command and its result) and the folder as DIR.tar.gz
(one file to fetch), rewritten after every stage. The exit status is 1 when any stage failed.
"""
import argparse
import dataclasses
import datetime
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from typing import NamedTuple

import numpy as np
import torch

import bench
import ops
import train_gpt2
from optim import optimizer_step
from tune import memory

ROOT = os.path.dirname(os.path.abspath(__file__))
CUDA = bench.CUDA
DEVICE = bench.DEVICE
SCRIPTS = bench.SCRIPTS
STAGES = ("tests", "compile", "kernels", "steps", "run", "more_tests")
PER_MODEL = ("compile", "steps", "run")
TESTS = ("tests", "more_tests")  # pytest runs, of the Triton kernels' tests
# seconds each process is expected to take on one H100/H200 (from FLOP and byte counts, 40-90 s per model compile,
# less when a later process finds the compile caches warm) and under --quick on 2 CPU cores. A stage that would not
# fit what is left is skipped; the slack beyond the later stages' expected seconds is the running one's timeout.
EXPECTED_S = dict(tests=60, compile=75, kernels=45, steps=25, run=25, more_tests=240)
EXPECTED_QUICK_S = dict(tests=10, compile=20, kernels=20, steps=10, run=10, more_tests=10)
RESERVE_S = 15  # of --budget_s: start-up, a killed process's grace and the last record
GRACE_S = 5  # between SIGTERM and SIGKILL of a stage past its timeout
SLOW_TESTS = "compiled_step or torchrun or few_training_steps"  # CUDA tests that compile models or start runs
RUN_STEPS = 30
GPU_80GB = 80 * 2**30  # the card the defaults must fit, judged as tune/memory.py --gpu_gib=80 does


# ---------------------------------------------------------------------------- the stages, each in its own process
class Result(NamedTuple):
    ok: bool
    summary: str  # key:value pairs, one line


def default_argv(args):
    """The default shape at one micro-batch of 64 x 1024 tokens per step and --kernels; --quick: a tiny model."""
    if args.quick:
        return bench.model_argv("speedrun", True) + ["--sequence_length=32", "--batch_size=4",
                                                     "--device_batch_size=4", f"--kernels={args.kernels}"]
    return ["--batch_size=64", "--device_batch_size=64", f"--kernels={args.kernels}"]


def fits_80gb(n_bytes):
    return "yes" if n_bytes <= memory.USABLE * GPU_80GB else "no"


def stage_compile(args, name):
    """One compiled training step at the default shape against eager --kernels=torch on the same weights and batch,
    then the eval graph."""
    module = SCRIPTS[name]
    hp, model, run, optimizers = bench.prepare(module, default_argv(args), args.backend)
    x, y = torch.randint(hp.vocab_size, (2, hp.device_batch_size, hp.sequence_length), device=DEVICE).unbind(0)
    with torch.device(DEVICE):
        reference = module.GPT(dataclasses.replace(hp, kernels="torch"))
    reference.load_state_dict(model.state_dict())
    ref_loss = 0.0
    chunk = min(8, hp.device_batch_size)  # eager keeps more activations: the same batch in micro-batches
    for i in range(0, hp.device_batch_size, chunk):
        with bench.autocast():
            part = reference(x[i:i + chunk], y[i:i + chunk]) * (chunk / hp.device_batch_size)
        part.backward()
        ref_loss += part.item()
    ref_grads = [p.grad.cpu() for p in reference.parameters()]  # off the GPU: the peak below is the compiled step's
    del reference
    torch._dynamo.utils.counters.clear()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with bench.autocast():
        loss = run(x, y)
    loss.backward()
    bench.sync()
    compile_s = time.perf_counter() - t0
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    grad_err = max(((p.grad.cpu() - r).norm() / (r.norm() + 1e-6)).item()
                   for p, r in zip(model.parameters(), ref_grads))
    optimizer_step(model, optimizers, 1.0, hp.grad_clip)  # the rest of the step, as the scripts take it
    bench.sync()
    peak = "n/a"
    if CUDA:  # weights, gradients and activations; the optimizer's state arrives after them, in its step
        peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}"
    estimate = memory.estimate(module, hp if CUDA else dataclasses.replace(hp, device="cpu"), 1)["total"]
    model.eval()  # the graph the scripts' validation passes compile: no grad, eval mode
    t0 = time.perf_counter()
    with torch.no_grad(), bench.autocast():
        eval_loss = run(x, y).item()
    eval_s = time.perf_counter() - t0
    ok = breaks == 0 and abs(loss.item() - ref_loss) < 1e-2 and grad_err < 5e-2 and np.isfinite(eval_loss)
    bench.emit(f"compile:{name} ok:{int(ok)} backend:{args.backend or 'eager'} kernels:{args.kernels} "
               f"compile_s:{compile_s:.1f} graph_breaks:{breaks} loss:{loss.item():.4f} "
               f"torch_kernels_loss:{ref_loss:.4f} max_grad_rel_err:{grad_err:.1e} first_step_peak_MiB:{peak} "
               f"memory_estimate_MiB:{estimate / 2**20:.0f} estimate_fits_80GB:{fits_80gb(estimate)} "
               f"eval_compile_s:{eval_s:.1f} eval_loss_after_step:{eval_loss:.4f}")
    return Result(ok, f"compile_s:{compile_s:.0f} graph_breaks:{breaks} max_grad_rel_err:{grad_err:.1e}")


def stage_kernels(args, name):
    """bench.py's kernel and renorm tables at the speedrun width, fp32 stream; --kernels=torch: no Triton rows."""
    table = argparse.Namespace(**{**vars(args), "backend": "inductor" if CUDA else ""})  # kernels alone: no CPU compile
    run_triton = args.kernels == "triton"
    copy_gbs = bench.copy_bandwidth(2**28 if CUDA else 2**20, args.reps)
    bench.emit(f"copy: GB/s:{copy_gbs:.1f}")
    speedups = bench.bench_kernels(table, copy_gbs, run_triton)
    renorm_ms = bench.bench_renorm(table, copy_gbs, run_triton, compiled=False)
    impl = "triton" if run_triton else "eager"
    return Result(True, " ".join(f"{kernel}_{vs.split()[-1]}" for kernel, vs in speedups.items()) +
                  f" renorm_{impl}_ms:{renorm_ms['float32', impl]:.3f}")


def stage_steps(args, name):
    prepared = bench.prepare(SCRIPTS[name], default_argv(args), args.backend)
    step = bench.step_time(name, prepared, f"kernels:{args.kernels}", args)
    fits = fits_80gb(step.peak_bytes) if CUDA else "n/a"
    return Result(True, f"ms:{step.ms:.2f} mfu:{step.mfu or 'n/a'} peak_MiB:{step.peak_bytes / 2**20:.0f} "
                        f"fits_80GB:{fits}")


def token_flags(args, tmp):
    """--input_bin/--input_val_bin: cached FineWeb when present, else random tokens in tmp (losses then mean
    nothing; step times, MFU and the code path still do)."""
    if not args.quick and os.path.exists(os.path.join(ROOT, "data/fineweb10B/fineweb_val_000000.bin")):
        return [f"--input_bin={ROOT}/data/fineweb10B/fineweb_train_*.bin",
                f"--input_val_bin={ROOT}/data/fineweb10B/fineweb_val_*.bin"]
    vocab = 256 if args.quick else 50257
    rng = np.random.default_rng(0)
    for split, n in (("train", 2**16 if args.quick else 2**22), ("val", 2**12 if args.quick else 2**19)):
        header = np.zeros(256, dtype="<i4")
        header[:3] = train_gpt2.MAGIC, 1, n
        with open(os.path.join(tmp, f"rand_{split}_000000.bin"), "wb") as f:
            f.write(header.tobytes() + rng.integers(0, vocab, n, dtype=np.uint16).tobytes())
    return [f"--input_bin={tmp}/rand_train_*.bin", f"--input_val_bin={tmp}/rand_val_*.bin"]


def last(pattern, text, default="n/a"):
    found = re.findall(pattern, text, re.M)
    return found[-1] if found else default


def stage_run(args, name):
    """The script's own main(): the loader, the compile warm-up, the loop, validation, its log (run_NAME.txt)."""
    module = SCRIPTS[name]
    steps = 3 if args.quick else RUN_STEPS
    with tempfile.TemporaryDirectory() as tmp:
        argv = default_argv(args) + token_flags(args, tmp) + [
            f"--num_iterations={steps}", "--warmup_iters=1", "--warmdown_iters=0", "--val_loss_every=0",
            "--save_every=0", f"--compile={args.compile * CUDA}", f"--val_tokens={128 if args.quick else 4 * 65536}",
            f"--log_dir={args.record_dir}", f"--run_id=run_{name}"]
        print(f"$ python train_{name}.py {shlex.join(argv)}", flush=True)
        code = 0
        try:
            module.main(argv)
        except SystemExit as exit_:  # the scripts' one-line errors
            code = exit_.code if isinstance(exit_.code, int) else 1
    log = os.path.join(args.record_dir, f"run_{name}.txt")
    text = open(log).read() if os.path.exists(log) else ""
    tokens_per_s = last(r"^step:\d+/\d+ train_loss:.* tokens_per_s:(\d+)", text)
    utilization = ""
    if tokens_per_s != "n/a":  # the logged throughput against this GPU's peak (one process here)
        hp = module.parse_args(argv)
        with torch.device("meta"):
            utilization = bench.mfu(module.GPT(hp).config(), hp, float(tokens_per_s), args)
    peak = last(r"^peak_memory:(\d+)MiB", text)
    result = dict(val_loss=last(r"^step:\d+/\d+ val_loss:(\S+)", text),
                  step_avg=last(r"^step:\d+/\d+ train_loss:.* step_avg:([\d.]+)ms", text),
                  mfu=utilization or "n/a", warmup=last(r"^compile_warmup:(\d+)ms", text), peak_MiB=peak,
                  fits_80GB=fits_80gb(int(peak) * 2**20) if CUDA and peak != "n/a" else "n/a")
    summary = " ".join(f"{k}:{v}" for k, v in result.items())
    bench.emit(f"run:{name} exit:{code} steps:{steps} {summary}")
    return Result(not code and result["val_loss"] != "n/a", f"exit:{code} {summary}")


STAGE_FUNCTIONS = dict(compile=stage_compile, kernels=stage_kernels, steps=stage_steps, run=stage_run)


def one_line_error(err):
    hint = ""
    if isinstance(err, torch.OutOfMemoryError):
        hint = " (the default micro-batch of 64 x 1024 tokens does not fit: python -m tune.memory gpt2 --gpu_gib=...)"
    message = (str(err).strip().splitlines() or [""])[0][:200]
    return f"error:{type(err).__name__} {message}{hint}"


def run_stage(args):
    """This process is one stage (of one model): its lines, the traceback of a failure, and a last `result:` line."""
    try:
        result = STAGE_FUNCTIONS[args.stage](args, args.model)
    except Exception as err:  # the traceback stays in this process's log; the record gets the one line
        traceback.print_exc()
        result = Result(False, one_line_error(err))
    print(f"result:{'ok' if result.ok else 'FAILED'} {result.summary}", flush=True)
    sys.exit(0 if result.ok else 1)


# ---------------------------------------------------------------------------- the run: processes, timeouts, record
class Task(NamedTuple):
    stage: str
    model: str  # "" for a stage that is not per model
    expected_s: float

    @property
    def log(self):
        return f"{self.stage}{'_' + self.model if self.model else ''}{'_console' if self.stage == 'run' else ''}.txt"


def command(args, task):
    """The process that runs a task: pytest for the tests, this file with --stage for the rest."""
    if task.stage in TESTS:
        tests = ["tests/test_gpu.py"] if args.quick else ["tests/test_gpu.py", "tests/test_kernels.py"]  # CPU: skips
        select = SLOW_TESTS if task.stage == "more_tests" else f"not ({SLOW_TESTS})"
        return [sys.executable, "-m", "pytest", *tests, "-q", "-rs", "-k", select]
    return [sys.executable, os.path.join(ROOT, "validate.py"), f"--stage={task.stage}", f"--model={task.model}",
            f"--kernels={args.kernels}", f"--compile={args.compile}", f"--peak_tflops={args.peak_tflops}",
            f"--record_dir={args.record_dir}"] + ["--quick"] * args.quick


def timeout_s(task, later, left):
    """What is left, less the expected seconds of the later tasks that would still fit after this one's expected
    seconds, and less the grace of a killed process before them."""
    keep = 0
    for other in later:
        if task.expected_s + GRACE_S + keep + other.expected_s <= left:
            keep += other.expected_s
    return left - keep - GRACE_S if keep else left


class Outcome(NamedTuple):
    status: str  # ok or FAILED
    summary: str
    lines: list  # the result lines it printed (compile:, kernel:, step:, ...)


def outcome(text, rc, timed_out):
    """A finished process's status and one-line summary from its log: its `result:` line, pytest's counts, or how
    it ended."""
    lines = re.findall(r"^(?:copy|kernel|speedup|renorm|compile|step|run):.*$", text, re.M)
    if timed_out:
        return Outcome("FAILED", f"error:timeout killed_after_s:{timed_out:.0f} (what is left of --budget_s)", lines)
    result = re.findall(r"^result:(ok|FAILED) ?(.*)$", text, re.M)
    if result:
        return Outcome(result[-1][0] if rc == 0 else "FAILED", result[-1][1], lines)
    counts = re.findall(r"^=* ?(\d+ (?:passed|failed|skipped|errors?|deselected)\b.*?)(?: in [\d.]+s.*)?$", text, re.M)
    if counts:
        return Outcome("ok" if rc == 0 else "FAILED", f"pytest:{rc} {counts[-1].replace(', ', ',').replace(' ', '_')}",
                       lines)
    tail = (text.strip().splitlines() or ["no output"])[-1].strip()[:200]
    return Outcome("FAILED", f"error:exit_{rc} {tail}", lines)


def run_process(cmd, log, timeout):
    """cmd in the repo root, in its own process group, its output into `log`; SIGTERM to the group past timeout
    (pytest's and torchrun's children included), SIGKILL GRACE_S later. Returns (exit code, seconds when killed)."""
    with open(log, "w") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=max(timeout, 1)), 0
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return proc.returncode, max(timeout, 1)
        except BaseException:  # Ctrl-C: the stage's group goes with this process
            os.killpg(proc.pid, signal.SIGKILL)
            raise


class Record:
    """The validation's folder: a log per process, results.txt (a line per stage), README.md and DIR.tar.gz, the
    last three rewritten when a stage ends, so that a run stopped midway leaves all it finished."""

    def __init__(self, path, header):
        self.path = path
        self.header = header
        self.done = []
        os.makedirs(path, exist_ok=True)
        open(self.file("results.txt"), "w").close()
        self.write()

    def file(self, name):
        return os.path.join(self.path, name)

    def end(self, stage):
        print("\n".join(stage["lines"] + [stage["line"]]), flush=True)
        self.done.append(stage)
        with open(self.file("results.txt"), "a") as f:
            f.write(stage["line"] + "\n")
        self.write()

    def write(self):
        """README.md, then the folder as DIR.tar.gz (written aside and renamed: never half an archive)."""
        text = self.header + "\n| stage | status | seconds |\n|---|---|---|\n"
        text += "".join(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} |\n" for s in self.done)
        for s in self.done:
            text += f"\n## {s['name']}: {s['status']}\n\n`{s['line']}`\n\n"
            text += "".join(f"- command: `{c}`\n" for c in s["commands"])
            if s["files"]:
                text += "- files: " + ", ".join(f"`{name}`" for name in s["files"]) + "\n"
            if s["lines"]:
                text += "\n```\n" + "\n".join(s["lines"]) + "\n```\n"
        with open(self.file("README.md"), "w") as f:
            f.write(text)
        with tarfile.open(self.path + ".tar.gz.tmp", "w:gz") as tar:
            tar.add(self.path, arcname=os.path.basename(self.path))
        os.replace(self.path + ".tar.gz.tmp", self.path + ".tar.gz")


def device_name():
    """The first GPU's name, read without a CUDA context in this process: the stages' processes own the GPU."""
    if not CUDA or not shutil.which("nvidia-smi"):
        return "cpu" if not CUDA else "cuda"
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "--id=0"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "cuda"


def ab_line(args, lines):
    """The step-time A/B of the two models from their step: lines, and the renorm's share of nGPT's step."""
    ms = {name: float(last(rf"^step:{name} .* ms:([\d.]+)", "\n".join(lines), "0")) for name in SCRIPTS}
    renorm = last(rf"^renorm:ngpt .* dtype:float32 impl:{'triton' if args.kernels == 'triton' else 'eager'} "
                  r".* ms:([\d.]+)", "\n".join(lines), "")
    share = f" renorm_pct_of_ngpt_step:{100 * float(renorm) / ms['ngpt2']:.2f}" if renorm else ""
    return (f"ab:ngpt/gpt kernels:{args.kernels} gpt_ms:{ms['gpt2']:.2f} ngpt_ms:{ms['ngpt2']:.2f} "
            f"ratio:{ms['ngpt2'] / ms['gpt2']:.3f}{share}")


def validate(args, argv, started):
    name = device_name()
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower().replace("nvidia", "")).strip("_")
    header = (f"# GPU validation on {name}, {datetime.date.today()}\n\n"
              f"`python {shlex.join(['validate.py'] + argv)}` with torch {torch.__version__} and triton "
              f"{getattr(ops.triton, '__version__', None)}. Each stage's result line, commands and files below; "
              f"what the stages check and what to do when one fails: docs/gpu_validation.md.\n")
    path = args.record_dir = os.path.abspath(args.record_dir or os.path.join(
        ROOT, "records", f"{datetime.date.today()}_gpu_validation_{slug}"))
    if not CUDA:
        header += ("\nCPU smoke run (--quick, tiny model, Triton's interpreter): every time, bandwidth, ratio and loss "
                   "here is meaningless; it checks that each stage runs and records.\n")
    record = Record(path, header)
    expected = EXPECTED_S if CUDA else EXPECTED_QUICK_S
    tasks = [Task(stage, model, expected[stage]) for stage in args.stages
             for model in (SCRIPTS if stage in PER_MODEL else [""])]
    deadline = started + args.budget_s - RESERVE_S
    print(f"validate: stages {','.join(args.stages)}, expected ~{sum(t.expected_s for t in tasks):.0f}s here against "
          f"--budget_s={args.budget_s:g}; record in {path}", flush=True)
    failed_models = {}  # model -> the stage it failed in
    lines = []
    i = 0
    for stage in args.stages:
        t0 = time.perf_counter()
        parts, statuses, commands, files, stage_lines = [], [], [], [], []
        while i < len(tasks) and tasks[i].stage == stage:
            task, i = tasks[i], i + 1
            prefix = f"{task.model}:" if task.model else ""
            left = deadline - time.perf_counter()
            if task.model in failed_models:
                parts.append(f"{prefix}skipped (FAILED in {failed_models[task.model]})")
                continue
            if task.stage in TESTS and args.kernels == "torch":
                parts.append("skipped (--kernels=torch: these tests run the Triton kernels)")
                statuses.append("skipped")
                continue
            if task.expected_s > left:
                parts.append(f"{prefix}skipped expected_s:{task.expected_s:g} left_s:{max(left, 0):.0f} (over "
                             f"--budget_s={args.budget_s:g}; run it with --stages={stage})")
                statuses.append("skipped")
                continue
            cmd = command(args, task)
            later = [t for t in tasks[i:] if t.model not in failed_models and
                     not (t.stage in TESTS and args.kernels == "torch")]
            timeout = timeout_s(task, later, left)
            print(f"validate: {shlex.join(cmd)}  > {task.log} (timeout {timeout:.0f}s)", flush=True)
            rc, killed_s = run_process(cmd, record.file(task.log), timeout)
            result = outcome(open(record.file(task.log)).read(), rc, killed_s)
            commands.append(shlex.join(cmd))
            files += [task.log] + ([f"run_{task.model}.txt"] * (stage == "run"))
            stage_lines += result.lines
            statuses.append(result.status)
            log_hint = f" (log {task.log})" if result.status == "FAILED" else ""
            parts.append(f"{prefix}{result.status} {result.summary}{log_hint}" if task.model else
                         f"{result.summary}{log_hint}")
            if result.status == "FAILED" and task.model:
                failed_models[task.model] = stage
        if stage == "steps" and statuses.count("ok") == len(SCRIPTS):
            stage_lines.append(ab_line(args, lines + stage_lines))
        lines += stage_lines
        status = "FAILED" if "FAILED" in statuses else "ok" if "ok" in statuses else "skipped"
        record.end(dict(name=stage, status=status, seconds=time.perf_counter() - t0, commands=commands,
                        files=[f for f in files if os.path.exists(record.file(f))], lines=stage_lines,
                        line=f"stage:{stage} status:{status} s:{time.perf_counter() - t0:.0f} " + "; ".join(parts)))
    failed = [s["name"] for s in record.done if s["status"] == "FAILED"]
    skipped = [s["name"] for s in record.done if s["status"] == "skipped"]
    print(f"validate: {'FAILED ' + ','.join(failed) if failed else 'ok'}"
          f"{'; skipped ' + ','.join(skipped) if skipped else ''}; {time.perf_counter() - started:.0f}s; "
          f"record in {path}, archived as {path}.tar.gz", flush=True)
    sys.exit(1 if failed else 0)


def main(argv=None):
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and few reps (the CPU smoke run, CI)")
    parser.add_argument("--record_dir", default="", help="the record folder (default records/<date>_gpu_validation_"
                        "<gpu>); its archive goes beside it as RECORD_DIR.tar.gz")
    parser.add_argument("--stages", default=",".join(STAGES), help="the stages to run, comma-separated")
    parser.add_argument("--budget_s", type=float, default=360, help="the whole run's wall time: each stage's process "
                        "is killed at what is left of it (less the later stages' EXPECTED_S)")
    parser.add_argument("--kernels", default="triton", choices=("triton", "torch"),
                        help="the models' kernels (torch: the scripts' plain-torch fallback; no Triton kernel runs)")
    parser.add_argument("--compile", type=int, default=1, choices=(0, 1),
                        help="0 runs the models eagerly (the scripts' --compile=0 fallback)")
    parser.add_argument("--peak_tflops", type=float, default=0.0,
                        help="one GPU's dense bf16 peak for MFU (0: looked up by the exact device name)")
    parser.add_argument("--stage", default="", choices=("",) + tuple(STAGE_FUNCTIONS),
                        help="run this one stage in this process (what the validation starts for each stage)")
    parser.add_argument("--model", default="", choices=("",) + tuple(SCRIPTS), help="--stage's model")
    args = parser.parse_args(argv)
    if not CUDA and not args.quick:
        sys.exit("error: validate.py checks a GPU and torch sees none here; the CPU smoke run is "
                 "TRITON_INTERPRET=1 python validate.py --quick")
    if not CUDA and os.environ.get("TRITON_INTERPRET") != "1" and args.kernels == "triton":
        sys.exit("error: validate.py --quick on CPU runs the Triton kernels in Triton's interpreter: "
                 "TRITON_INTERPRET=1 python validate.py --quick")
    stages = args.stages.split(",")
    if any(s not in STAGES for s in stages):
        sys.exit(f"error: --stages={args.stages}: each value must be one of {STAGES}")
    args.stages = [s for s in STAGES if s in stages]  # always in order of value
    args.sizes, args.stream_dtypes = ["speedrun"], ["float32"]  # bench.py's tables: the default runs' shape
    args.reps = 3 if args.quick else 10
    args.step_reps = 2 if args.quick else 10
    args.backend = "inductor" if CUDA else "aot_eager"  # on CPU: traced (graph breaks show), no code generated
    if not args.compile:
        args.backend = ""
    if args.stage:
        run_stage(args)
    validate(args, argv, started)


if __name__ == "__main__":
    main()
