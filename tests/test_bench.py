"""bench.py and validate.py on CPU: the one-line error without a GPU; the GPU validation's CPU smoke run (bench.py
--validate --quick): every stage ends with its line, the record folder and its archive hold every file its README
lists; --budget_s skips what would not fit; a stage that raises or hangs (injected into its process) is recorded,
the run still ends within its budget with the other stages' results and exits 1; a model that fails is skipped
later while the other runs on; --kernels=torch runs no Triton kernel at all."""
import os
import re
import subprocess
import sys
import tarfile
import time

import pytest
import torch

import validate
from tune import memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour; a GPU runs the real validation")


def run_tool(*argv, env=None):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)


def stage_lines(text):
    return re.findall(r"^stage:(\w+) status:(\w+)", text, re.M)


def listed_files(readme):
    return re.findall(r"`([\w.]+)`", " ".join(re.findall(r"^- files: (.*)$", readme, re.M)))


def inject(monkeypatch, stage, model, code):
    """The process of one stage (of one model) runs `code` on validate's module first: a fault inside the real
    stage process, in the test only."""
    command = validate.command

    def patched(args, task):
        argv = command(args, task)
        if (task.stage, task.model) != (stage, model):
            return argv
        return [sys.executable, "-c", f"import time, validate\n{code}\nvalidate.main({argv[2:]!r})"]
    monkeypatch.setattr(validate, "command", patched)


def run_validate(*argv):
    """validate.main in this process (the stages in their own): (exit code, seconds)."""
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        validate.main(["--quick", *argv])
    return exit_.value.code, time.perf_counter() - t0


@pytest.mark.parametrize("argv, hint", [(["bench.py"], "python bench.py --quick"),
                                        (["bench.py", "--validate"], "python validate.py --quick"),
                                        (["validate.py"], "python validate.py --quick")],
                         ids=["bench", "bench_validate", "validate"])
def test_without_a_gpu_it_stops_at_once_naming_the_cpu_smoke_run(argv, hint):
    out = run_tool(*argv)
    assert out.returncode == 1 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error:") and f"TRITON_INTERPRET=1 {hint}" in out.stderr


@pytest.mark.slow
def test_validate_quick_runs_every_stage_into_the_record(tmp_path):
    record = tmp_path / "record"  # through bench.py --validate, which hands its process to validate.py
    out = run_tool("bench.py", "--validate", "--quick", f"--record_dir={record}", "--peak_tflops=1",  # MFU on CPU too
                   "--budget_s=1500")  # 2 shared CPU cores and the Triton interpreter: far slower than a GPU
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert stage_lines(out.stdout) == [(stage, "ok") for stage in validate.STAGES]
    results = (record / "results.txt").read_text().splitlines()  # each stage's line, as printed when it ended
    assert results == [line for line in out.stdout.splitlines() if line.startswith("stage:")]
    for name in validate.SCRIPTS:  # traced by dynamo and AOT autograd (aot_eager), checked against --kernels=torch
        assert re.search(rf"^compile:{name} ok:1 backend:aot_eager .* graph_breaks:0 loss:[\d.]+", out.stdout, re.M)
        assert re.search(rf"^run:{name} exit:0 steps:3 val_loss:[\d.]+ step_avg:[\d.]+ mfu:[\d.]+%", out.stdout, re.M)
        assert re.search(rf"^step:{name} kernels:triton .* mfu:[\d.]+%", out.stdout, re.M)
    assert re.search(r"^kernel:ngpt_residual .* pass:fwd\+bwd impl:triton ms:[\d.]+", out.stdout, re.M)
    assert re.search(r"^ab:ngpt/gpt kernels:triton gpt_ms:[\d.]+ ngpt_ms:[\d.]+", out.stdout, re.M)
    assert re.search(r"^stage:steps status:ok .*gpt2:ok ms:[\d.]+ .*fits_80GB:n/a", out.stdout, re.M)
    readme = (record / "README.md").read_text()
    assert all(f"## {stage}: ok" in readme for stage in validate.STAGES)
    assert readme.count("- command: ") == 9  # tests, kernels, more_tests, and compile, steps, run for each model
    files = listed_files(readme)
    assert {"tests.txt", "compile_gpt2.txt", "kernels.txt", "steps_ngpt2.txt", "run_gpt2.txt", "run_ngpt2.txt",
            "more_tests.txt"} <= set(files)
    with tarfile.open(f"{record}.tar.gz") as tar:  # the one file to fetch from a GPU machine
        archived = {os.path.relpath(name, "record") for name in tar.getnames()}
    for name in files + ["README.md", "results.txt"]:
        assert (record / name).stat().st_size > 0 and name in archived, name


def test_budget_skips_the_stages_that_would_not_fit(tmp_path, monkeypatch):
    monkeypatch.setitem(validate.EXPECTED_QUICK_S, "compile", 10**4)
    record = tmp_path / "record"
    code, _ = run_validate("--stages=compile,tests", "--budget_s=600", f"--record_dir={record}")
    assert code == 0
    results = (record / "results.txt").read_text()
    assert stage_lines(results) == [("tests", "ok"), ("compile", "skipped")]  # in order of value, as given or not
    assert "--stages=compile" in results  # says how to run it later
    assert "## compile: skipped" in (record / "README.md").read_text()


@pytest.mark.slow
def test_a_stage_that_hangs_is_killed_within_the_budget_and_the_next_runs(tmp_path, monkeypatch):
    inject(monkeypatch, "kernels", "", "validate.STAGE_FUNCTIONS['kernels'] = lambda args, name: time.sleep(3600)")
    monkeypatch.setitem(validate.EXPECTED_QUICK_S, "kernels", 20)  # the hung stage's share of the budget
    monkeypatch.setitem(validate.EXPECTED_QUICK_S, "more_tests", 120)  # the next stage's, held for it
    budget = validate.RESERVE_S + 20 + 120 + 10  # the stages' expected seconds fit, with 10 s to spare
    record = tmp_path / "record"
    code, seconds = run_validate("--stages=kernels,more_tests", f"--budget_s={budget}", f"--record_dir={record}")
    assert code == 1 and seconds < budget
    results = (record / "results.txt").read_text()
    assert re.search(r"^stage:kernels status:FAILED .*error:timeout .*\(log kernels.txt\)$", results, re.M)
    assert re.search(r"^stage:more_tests status:ok .*pytest:0", results, re.M)
    assert "## more_tests: ok" in (record / "README.md").read_text()


@pytest.mark.slow
def test_a_model_that_fails_is_recorded_the_other_runs_on_and_it_is_skipped_later(tmp_path, monkeypatch):
    inject(monkeypatch, "compile", "ngpt2",
           "def broken(args, name):\n    raise RuntimeError('injected failure\\nsecond line')\n"
           "validate.STAGE_FUNCTIONS['compile'] = broken")
    record = tmp_path / "record"
    code, _ = run_validate("--stages=compile,run", "--compile=0", f"--record_dir={record}")
    assert code == 1
    results = (record / "results.txt").read_text().splitlines()
    assert len(results) == 2  # one line per stage: the error in it, on one line
    assert re.match(r"stage:compile status:FAILED .*gpt2:ok compile_s:.*; ngpt2:FAILED error:RuntimeError "
                    r"injected failure \(log compile_ngpt2.txt\)$", results[0])
    assert re.match(r"stage:run status:ok .*gpt2:ok exit:0 val_loss:[\d.]+.*; ngpt2:skipped \(FAILED in compile\)$",
                    results[1])
    assert "Traceback" in (record / "compile_ngpt2.txt").read_text()  # the traceback stays in the stage's log
    assert "compile_ngpt2.txt" in listed_files((record / "README.md").read_text())
    assert not (record / "run_ngpt2.txt").exists()


def test_kernels_torch_runs_no_triton_kernel(tmp_path):
    # without TRITON_INTERPRET a Triton kernel on CPU tensors stops with an error, so any that ran would fail a stage
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    record = tmp_path / "record"
    out = run_tool("validate.py", "--quick", "--kernels=torch", "--stages=tests,kernels,more_tests",
                   f"--record_dir={record}", env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert stage_lines(out.stdout) == [("tests", "skipped"), ("kernels", "ok"), ("more_tests", "skipped")]
    assert "--kernels=torch: these tests run the Triton kernels" in out.stdout
    assert re.search(r"^kernel:ngpt_residual .* impl:eager ms:[\d.]+", out.stdout, re.M)
    assert not re.search(r"impl:triton", out.stdout)


def test_peak_flops_by_exact_device_name_and_override():
    peaks = {name: memory.peak_flops(name) for name in
             ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA A100-SXM4-80GB", "NVIDIA H200")}
    assert peaks["NVIDIA H100 PCIe"] < peaks["NVIDIA H100 NVL"] < peaks["NVIDIA H100 80GB HBM3"]  # not SXM for all
    assert peaks["NVIDIA H200"] == peaks["NVIDIA H100 80GB HBM3"] and peaks["NVIDIA A100-SXM4-80GB"] < 0.5e15
    assert memory.peak_flops("NVIDIA Mystery GPU") is None
    assert memory.peak_flops("NVIDIA Mystery GPU", peak_tflops=100) == 100e12
