"""The run's infrastructure, shared by both training scripts (they hold the model, data, schedule and loop):
processes and devices, DDP and FSDP2, torch.distributed.checkpoint saves and resumes, stop signals, the run log
and the environment report. Imports nothing from the scripts.
"""
import dataclasses
import datetime
import gc
import glob
import inspect
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_model_state_dict,
                                                     set_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

stop_signal = 0  # the last SIGTERM or SIGINT received; the loop stops at its next check
# Where the other processes wait for work rank 0 does alone (a 13b model's build on the CPU, a checkpoint's last
# writes and the removal of older ones): a gloo group with a long timeout, so NCCL's default 10 minutes applies
# only to collectives that all processes enter together
SOLO_TIMEOUT = datetime.timedelta(hours=1)
solo_group = None
log_file = None  # the run's log, open on rank 0 only

# ---------------------------------------------------------------------------- flags
def parse_flags(cls, argv, presets, shape):
    """A cls() with every --name=value of argv applied: --preset=NAME first sets the fields named in shape, then
    each explicit flag wins, whatever its place on the line. --help and -h are left to the caller."""
    hp = cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given = {}
    for arg in argv:
        if arg in ("--help", "-h"):
            continue
        name, eq, value = arg[2:].partition("=")
        if not arg.startswith("--") or not eq:
            sys.exit(f"error: expected --name=value, got {arg!r} (run with --help for the list)")
        if name not in fields:
            sys.exit(f"error: unknown hyperparameter --{name} (run with --help for the list)")
        given[name] = value
    preset = given.get("preset", "")
    if preset and preset not in presets:
        sys.exit(f"error: --preset must be one of {tuple(presets)}, got {preset!r}")
    if preset:
        hp = dataclasses.replace(hp, **dict(zip(shape, presets[preset])))
    for name, value in given.items():
        kind = fields[name].type
        try:
            setattr(hp, name, kind(value))
        except ValueError:
            sys.exit(f"error: --{name} expects a {kind.__name__}, got {value!r}")
    return hp

def print_help(hp, script, presets):
    """Every field of hp with its value and its comment in the class's source as help, then exit."""
    lines = inspect.getsource(type(hp)).splitlines()
    helps = {line.split(":")[0].strip(): line.split("#", 1)[1].strip() for line in lines
             if ": " in line and "#" in line}
    script = os.path.basename(script)
    print(f"usage: {script} [--name=value ...]\n")
    for f in dataclasses.fields(hp):
        print(f"  {f'--{f.name}={getattr(hp, f.name)}':<52} {f.type.__name__:<6} {helps.get(f.name, '')}")
    print(f"\npresets: {', '.join(presets)}; any setting's parameters and memory per GPU: "
          f"python -m tune.memory {script[len('train_'):-len('.py')]} --preset=NAME [--name=value ...]")
    sys.exit(0)

# ---------------------------------------------------------------------------- processes and devices
def start_processes(device, fsdp):
    """(rank, world, local_rank, device): one process, or torchrun's (DDP, or FSDP2 with --fsdp=1)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device=cuda but torch sees no GPU; use --device=cpu")
    if fsdp and "RANK" not in os.environ:
        sys.exit("error: --fsdp=1 shards over the processes torchrun starts; run under torchrun or use --fsdp=0")
    rank, world, local_rank = 0, 1, 0
    if "RANK" in os.environ:
        rank, world, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if "RANK" in os.environ:
        global solo_group
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        solo_group = dist.new_group(backend="gloo", timeout=SOLO_TIMEOUT)
    return rank, world, local_rank, device

def wait_for_rank0():
    """Every process waits here, up to SOLO_TIMEOUT, until rank 0 has finished what it does alone."""
    if dist.is_initialized():
        dist.barrier(group=solo_group)

def end_processes():
    if dist.is_initialized():
        dist.barrier()  # no rank tears down the process group while another still uses it
        # DDP's reducer must be freed while the process group is still registered (the caller dropped the model):
        # if it held the last reference, gloo's destructor would run at exit with the GIL held and could deadlock
        gc.collect()
        dist.destroy_process_group()

def from_rank0(value):
    """Rank 0's value on every process: one run id and one resume checkpoint for the whole job."""
    box = [value]
    if dist.is_initialized():  # rank 0 may have found and finished a checkpoint first: the long wait
        dist.broadcast_object_list(box, src=0, group=solo_group)
    return box[0]

def catch_signals():
    def on_signal(signum, frame):
        global stop_signal
        stop_signal = signum
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

def signal_flag(device):
    """This process's stop signal (0: none) as a tensor on device, filled there: no host-to-device copy to wait on."""
    return torch.full((), float(stop_signal), device=device)

def stop_if_signalled(device, step, save):
    """After a SIGTERM or SIGINT on any process (all agree on it): save(reason) a checkpoint and exit, naming how to
    continue."""
    stop = signal_flag(device)
    if dist.is_initialized():
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
    signum = int(stop.item())
    if signum:
        path = save(f"signal {signum}")
        print0(f"stopped by signal {signum} at step {step}; continue with --resume={path}")
        sys.exit(128 + signum)

# ---------------------------------------------------------------------------- DDP and FSDP2
def shard_model(model):
    """FSDP2: each block is a unit, gathered for its forward and backward and freed after; the embedding, the head
    and the vectors outside the blocks stay with the root. Weights are gathered as stored (under bf16 autocast a
    Linear casts its fp32 weight as DDP's does, so both compute alike) and gradients reduced in fp32. FSDP2 wants
    one dtype a unit: with --param_dtype=bfloat16 each matrix is its own unit inside its block's (or the root's),
    gathered in bf16, and a compiled block then breaks its graph at their gathers."""
    policy = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    for unit in [*model.blocks, model]:
        if len({p.dtype for p in unit.parameters()}) > 1:
            for module in unit.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)) and not isinstance(module, FSDPModule):
                    fully_shard(module, mp_policy=policy)
        fully_shard(unit, mp_policy=policy)

def build_sharded(build, master, device, seed):
    """The FSDP2 model build() makes, without a full copy per process (host memory: a 13b model is ~53 GB in fp32):
    every process builds it on the meta device, shards it and allocates its shards; rank 0 alone builds the real
    model (same seed, so the init without FSDP) and broadcasts it into the shards."""
    with torch.device("meta"):
        model = build()
    shard_model(model)
    model.to_empty(device=device)
    full, buffers = {}, {}
    if master:
        torch.manual_seed(seed)  # as main() set it (the meta build drew nothing): the same init
        real = build()
        full, buffers = real.state_dict(), dict(real.named_buffers())
    wait_for_rank0()
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for name, buffer in model.named_buffers():  # buffers outside the state dict (RoPE's inv_freq): rank 0's too
        if name in buffers:
            buffer.copy_(buffers[name])
        dist.broadcast(buffer, src=0)
    return model

def wrap_model(model, use_compile, fsdp, local_rank, on_cuda):
    """torch.compile, then DDP unless FSDP shards the model. Compiling the inner module before wrapping it
    (PyTorch's "Where to apply torch.compile?"): dynamo compiles it inside DDP's forward, sees the DDP module and
    splits the graph at DDP's gradient buckets (DDPOptimizer, default bucket_cap_mb=25), so each bucket's
    all-reduce overlaps the rest of the backward pass. With FSDP each block's forward is compiled, one graph shared
    by all blocks, and FSDP's gathers and frees run around it (dynamo breaks the graph at FSDP's hooks)."""
    if use_compile and fsdp:
        for block in model.blocks:
            block.forward = torch.compile(block.forward)
    elif use_compile:
        model = torch.compile(model)
    if dist.is_initialized() and not fsdp:  # no buffer broadcast: RoPE's inv_freq, the one buffer, is constant
        model = DDP(model, device_ids=[local_rank] if on_cuda else None, broadcast_buffers=False)
    return model

def compile_warmup(forward_backward, optimizers, loader):
    """Compiles before the clock starts: two steps' forward and backward, no optimizer step, the loader put back."""
    t0 = time.perf_counter()
    loader_state = loader.state()
    for _ in range(2):
        forward_backward()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
    loader.load_state(loader_state)
    print0(f"compile_warmup:{1000 * (time.perf_counter() - t0):.0f}ms (not counted in train_time)")

def gradient_norm(model):
    """The global gradient norm (over every process's shards with FSDP), as clip_grad_norm_ computes it."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    if isinstance(norm, DTensor):
        return norm.full_tensor()
    return norm

# ---------------------------------------------------------------------------- the run log
def print0(s, console=True):
    """One line into the run's log and, unless console=False, onto the console; rank 0 alone holds log_file."""
    if log_file is not None:
        print(s, file=log_file, flush=True)
        if console:
            print(s, flush=True)

def open_run(hp, sources, master, on_cuda):
    """Names the run (on rank 0, for every process), opens its log on rank 0 (a continued run appends) and writes
    at its top the source of the script and of the repo modules it imports, each under its file name, then the
    versions. sources: the script's path first. Returns the checkpoint to resume from ("" for a fresh start)."""
    global log_file
    if not hp.run_id:
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}_{uuid.uuid4().hex[:6]}"
        hp.run_id = from_rank0(f"{os.path.splitext(os.path.basename(sources[0]))[0]}_s{hp.seed}_{stamp}")
    os.makedirs(hp.log_dir, exist_ok=True)
    resume = hp.resume
    if resume == "auto":  # chosen on rank 0: on a shared filesystem another node's listing can lag
        resume = ""
        if master:
            resume = latest_checkpoint(hp.log_dir, hp.run_id)
        if master and resume.endswith(".tmp"):  # a save stopped between its last two renames: finish it
            resume = resume[:-len(".tmp")]
            put_in_place(resume)
        resume = from_rank0(resume)
    log_file = None
    if master:
        log_file = open(os.path.join(hp.log_dir, f"{hp.run_id}.txt"), "a" if resume else "w")
    for path in sources:
        with open(path) as f:
            print0(f"{'=' * 40} source:{os.path.basename(path)}\n{f.read()}", console=False)
    print0("=" * 100, console=False)
    print0(environment_report("cuda" if on_cuda else "cpu"), console=False)
    return resume

def log_run(hp, cfg, script, device, world, micro_batches, use_compile):
    """The run's header lines, after the sources and versions: what was built and how it runs."""
    print0(f"script:{os.path.basename(script)}")
    print0(f"parameters:{cfg['params']} non_embedding_parameters:{cfg['non_embedding_params']} "
           f"({cfg['params'] / 1e6:.1f}M, {cfg['non_embedding_params'] / 1e6:.1f}M without the embedding and head)")
    print0(f"hyperparameters:{json.dumps(dataclasses.asdict(hp))}")
    print0(f"model_config:{json.dumps(cfg)}")
    mode = "single"
    if dist.is_initialized():
        mode = "fsdp init:rank0_broadcast" if hp.fsdp else "ddp"
    print0(f"device:{device} processes:{world} mode:{mode} micro_batches:{micro_batches} compile:{use_compile} "
           f"kernels:{hp.kernels} activation_checkpointing:{hp.activation_checkpointing}")

def environment_report(device):
    triton = sys.modules.get("triton")  # imported by ops.py when installed
    lines = [f"python:{platform.python_version()} torch:{torch.__version__} numpy:{np.__version__} "
             f"cuda:{torch.version.cuda} triton:{getattr(triton, '__version__', None)}"]
    if device == "cuda":
        lines.append(f"gpu:{torch.cuda.get_device_name()} count:{torch.cuda.device_count()}")
        try:
            lines.append(subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout)
        except (OSError, subprocess.SubprocessError) as err:
            lines.append(f"nvidia-smi: {err}")
    else:
        lines.append(f"cpu:{platform.processor() or platform.machine()} threads:{torch.get_num_threads()}")
    return "\n".join(lines)

def peak_rss_kib():
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; ru_maxrss keeps the launching
    process's peak (a big parent, like pytest, inflates it), so it is only the fallback."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def close_run(on_cuda):
    """The log's last line, the peak memory; then the log is closed (main() may run again in this process)."""
    global log_file
    if on_cuda:
        print0(f"peak_memory:{torch.cuda.max_memory_allocated() / 2**20:.0f}MiB (cuda allocated)")
    else:
        print0(f"peak_memory:{peak_rss_kib() / 1024:.0f}MiB (process max rss)")
    if log_file is not None:
        log_file.close()
        log_file = None

# ---------------------------------------------------------------------------- checkpoints
# One format for one process, DDP and FSDP: a torch.distributed.checkpoint directory per saved step,
# <log_dir>/<run_id>_step<N>.dcp, holding the model and optimizers (any process count and mode reads it) and
# train_state.pt (step, loader position, train time, RNG, hyperparameters), written last.
warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # DCP on one process: a mode we use

def run_checkpoints(log_dir, run_id):
    """(step, suffix, path) of run_id's checkpoint directories: <run_id>_step<N>.dcp, its .tmp (a save under way,
    complete once train_state.pt is in it) and its .old (a re-save's old copy, being deleted: never read)."""
    name = re.compile(rf"{re.escape(run_id)}_step(\d+)\.dcp(\.tmp|\.old)?")
    for path in glob.glob(os.path.join(glob.escape(log_dir), f"{glob.escape(run_id)}_step*.dcp*")):
        match = name.fullmatch(os.path.basename(path))
        if match:
            yield int(match.group(1)), match.group(2), path

def checkpoint_dir(hp, step):
    return os.path.join(hp.log_dir, f"{hp.run_id}_step{step:06d}.dcp")

def train_state(step, loader_state, hp, train_time_ms, timed_steps, script):
    rng = dict(torch=torch.get_rng_state())
    if torch.cuda.is_available():  # this process's GPU only: a machine that sees fewer GPUs restores it too
        rng["cuda"] = torch.cuda.get_rng_state()
    return dict(step=step, loader=loader_state, train_time_ms=train_time_ms, timed_steps=timed_steps,
                hyperparameters=dataclasses.asdict(hp), script=os.path.basename(script), rng=rng)

def latest_checkpoint(log_dir, run_id):
    """The complete checkpoint of run_id with the highest step (at one step, the renamed copy), or ""."""
    found = [(step, not suffix, path) for step, suffix, path in run_checkpoints(log_dir, run_id)
             if suffix != ".old" and os.path.isfile(os.path.join(path, "train_state.pt"))]
    return max(found, default=(0, False, ""))[2]

def fsync(path):
    """Flush a file or directory to disk: a rename is durable only once what it renames and its parent are."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

def save_checkpoint(path, pieces, state, master):
    """pieces (named state dicts) go through torch.distributed.checkpoint into path.tmp, each process writing its
    part (fsynced); the master adds train_state.pt last and renames: path is complete or absent, and a step saved
    again keeps its old copy until the new one is complete. Collective under torchrun; evals/ uses it too."""
    tmp = f"{path}.tmp"
    if master and os.path.exists(tmp):  # left by a save that was cut short
        shutil.rmtree(tmp)
    wait_for_rank0()
    dcp.save(pieces, checkpoint_id=tmp, no_dist=not dist.is_initialized())
    if master:
        with open(os.path.join(tmp, "train_state.pt.part"), "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(os.path.join(tmp, "train_state.pt.part"), os.path.join(tmp, "train_state.pt"))
        fsync(tmp)
        put_in_place(path)
    wait_for_rank0()

def put_in_place(path):
    """The complete path.tmp becomes path. An older path is moved to path.old first and deleted only once the new
    one is in place; a save stopped between the two renames leaves a complete .tmp, which --resume=auto finishes."""
    shutil.rmtree(f"{path}.old", ignore_errors=True)
    if os.path.exists(path):
        os.replace(path, f"{path}.old")
    os.replace(f"{path}.tmp", path)
    fsync(os.path.dirname(os.path.abspath(path)))
    shutil.rmtree(f"{path}.old", ignore_errors=True)

def save_run(hp, step, model, optimizers, state, master, why):
    """The checkpoint of step: saved (model, optimizers' state and the train state) unless state is None (it is on disk
    already); then, unless --keep_checkpoints=1, the run's other checkpoints go. Returns its path."""
    path = checkpoint_dir(hp, step)
    if state is not None:
        model_state, optimizer_state = get_state_dict(model, optimizers)
        save_checkpoint(path, dict(model=model_state, optimizer=optimizer_state), state, master)
    if master and not hp.keep_checkpoints:  # the newest complete one stays
        for _, _, other in run_checkpoints(hp.log_dir, hp.run_id):
            if other != path:
                shutil.rmtree(other)
    wait_for_rank0()
    print0(f"checkpoint:{path} step:{step} reason:{why}")
    return path

def load_checkpoint(path, model, optimizers, loader, hp):
    """A checkpoint's weights, optimizer moments, loader position and RNG state, resharded to this run's processes
    and mode; the optimizers' settings (learning rates, weight decay, betas) stay this command line's. Returns the
    train state."""
    if not os.path.isfile(os.path.join(path, "train_state.pt")):
        sys.exit(f"error: --resume={path}: not a complete checkpoint (a <run_id>_step<N>.dcp directory holding "
                 f"train_state.pt); pass one of those, or --resume=auto with the run's --run_id and --log_dir")
    state = torch.load(os.path.join(path, "train_state.pt"), map_location="cpu", weights_only=False)
    if "averaged_from" in state or "train_time_ms" not in state:
        sys.exit(f"error: --resume={path} holds weights only (an averaged checkpoint) or comes from an older version "
                 f"of this script: evaluate it with evals/; resume from one of the run's own checkpoints")
    saved_optimizer = state["hyperparameters"].get("optimizer", "adamw")
    if saved_optimizer != hp.optimizer:  # one optimizer's moments are no state for the other
        sys.exit(f"error: --resume={path} was trained with --optimizer={saved_optimizer}, this run has --optimizer="
                 f"{hp.optimizer}; resume with --optimizer={saved_optimizer}, or start a new run without --resume")
    settings = [{k: v for k, v in group.items() if k != "params"}
                for optimizer in optimizers for group in optimizer.param_groups]
    model_state, optimizer_state = get_state_dict(model, optimizers)
    pieces = dict(model=model_state, optimizer=optimizer_state)
    try:
        dcp.load(pieces, checkpoint_id=path, no_dist=not dist.is_initialized())
    except (RuntimeError, ValueError, CheckpointException) as err:  # another model size, or the other script's
        saved = {k: v for k, v in state["hyperparameters"].items() if getattr(hp, k, None) != v}
        sys.exit(f"error: --resume={path} does not fit this model ({str(err).strip().splitlines()[-1].strip()}); "
                 f"it was saved with {saved}")
    set_state_dict(model, optimizers, model_state_dict=pieces["model"], optim_state_dict=pieces["optimizer"])
    groups = [group for optimizer in optimizers for group in optimizer.param_groups]  # loading made new dicts
    for group, setting in zip(groups, settings):
        group.update(setting)  # the checkpoint brings moments and step counts, the command line the settings
    steps = [state["step"]]
    if dist.is_initialized():  # every process must continue from the same step
        steps = [None] * dist.get_world_size()
        dist.all_gather_object(steps, state["step"])
    if len(set(steps)) > 1:
        sys.exit(f"error: the processes read different steps {steps} from {path}; is the filesystem shared?")
    torch.set_rng_state(state["rng"]["torch"])
    if torch.cuda.is_available() and "cuda" in state["rng"]:  # this process's GPU: any GPU count restores it
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    loader.load_state(state["loader"])
    return state

def resume_run(resume, model, optimizers, loader, hp):
    """(step, train_time_ms, timed_steps, steps already saved) to start from: a fresh start, or the checkpoint
    resume, loaded, with log lines saying where from and which settings the command line changed (they apply)."""
    if not resume:
        return 0, 0.0, 0, set()
    state = load_checkpoint(resume, model, optimizers, loader, hp)
    saved = state["hyperparameters"]
    changes = " ".join(f"{k}:{saved[k]}->{v}" for k, v in dataclasses.asdict(hp).items()
                       if k != "resume" and saved.get(k, v) != v)
    print0(f"resumed_from:{resume} at_step:{state['step']} train_time:{state['train_time_ms']:.0f}ms")
    print0(f"resume_changes: {changes or 'none'}")
    same = os.path.abspath(resume) == os.path.abspath(checkpoint_dir(hp, state["step"]))
    return state["step"], state["train_time_ms"], state["timed_steps"], {state["step"]} if same else set()
