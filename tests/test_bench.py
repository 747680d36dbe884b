"""bench.py on CPU: the one-line error without a GPU, and the GPU validation's CPU smoke run (--validate --quick):
every stage ends with its line, the record folder and its archive hold every file its README lists, --budget_s
skips what would not fit, and a failed stage is recorded while the next one still runs."""
import os
import re
import subprocess
import sys
import tarfile

import pytest
import torch

import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour; a GPU runs the real validation")


def run_bench(*argv):
    return subprocess.run([sys.executable, "bench.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)


def stage_lines(text):
    return re.findall(r"^stage:(\w+) status:(\w+)", text, re.M)


def listed_files(readme):
    return re.findall(r"`([\w.]+)`", " ".join(re.findall(r"^- files: (.*)$", readme, re.M)))


@pytest.mark.parametrize("argv", [[], ["--validate"]], ids=["bench", "validate"])
def test_without_a_gpu_it_stops_at_once_naming_the_cpu_smoke_run(argv):
    out = run_bench(*argv)
    assert out.returncode == 1 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error:") and "TRITON_INTERPRET=1 python bench.py --quick" in out.stderr


def test_validate_quick_runs_every_stage_into_the_record(tmp_path):
    record = tmp_path / "record"
    out = run_bench("--validate", "--quick", f"--record_dir={record}", "--peak_tflops=1")  # an MFU on CPU too
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert stage_lines(out.stdout) == [(stage, "ok") for stage in bench.STAGES]
    results = (record / "results.txt").read_text().splitlines()  # each stage's line, as printed when it ended
    assert results == [line for line in out.stdout.splitlines() if line.startswith("stage:")]
    for name in bench.SCRIPTS:  # traced by dynamo and AOT autograd (aot_eager), checked against --kernels=torch
        assert re.search(rf"^compile:{name} ok:1 backend:aot_eager .* graph_breaks:0 loss:[\d.]+", out.stdout, re.M)
    assert re.search(r"^kernel:ngpt_residual .* pass:fwd\+bwd impl:triton ms:[\d.]+", out.stdout, re.M)
    assert re.search(r"^ab:ngpt/gpt kernels:triton gpt_ms:[\d.]+ ngpt_ms:[\d.]+", out.stdout, re.M)
    for name in bench.SCRIPTS:
        assert re.search(rf"^run:{name} exit:0 steps:3 val_loss:[\d.]+ step_avg:[\d.]+ mfu:[\d.]+%", out.stdout, re.M)
        assert re.search(rf"^step:{name} kernels:triton .* mfu:[\d.]+%", out.stdout, re.M)
    readme = (record / "README.md").read_text()
    assert all(f"## {stage}: ok" in readme for stage in bench.STAGES)
    assert readme.count("- command: ") >= len(bench.STAGES) + 1  # the run stage lists both scripts' commands
    files = listed_files(readme)
    assert {"tests.txt", "kernels.txt", "run_gpt2.txt", "run_ngpt2.txt", "more_tests.txt"} <= set(files)
    with tarfile.open(f"{record}.tar.gz") as tar:  # the one file to fetch from a GPU machine
        archived = {os.path.relpath(name, "record") for name in tar.getnames()}
    for name in files + ["README.md", "results.txt"]:
        assert (record / name).stat().st_size > 0 and name in archived, name


def test_budget_skips_the_stages_that_would_not_fit(tmp_path):
    record = tmp_path / "record"
    budget = bench.EXPECTED_QUICK_S["compile"]  # counted from the start: once anything ran, compile no longer fits
    assert bench.EXPECTED_QUICK_S["tests"] < budget / 2  # while the tests stage does, after start-up
    out = run_bench("--validate", "--quick", f"--budget_s={budget}", "--stages=compile,tests", f"--record_dir={record}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert stage_lines(out.stdout) == [("tests", "ok"), ("compile", "skipped")]  # in order of value, as given or not
    assert "--stages=compile" in (record / "results.txt").read_text()  # says how to run it later
    assert "## compile: skipped" in (record / "README.md").read_text()


def test_a_failed_stage_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    def broken(args, record, state):
        raise RuntimeError("injected failure")
    monkeypatch.setitem(bench.STAGE_FUNCTIONS, "compile", broken)
    record = tmp_path / "record"
    with pytest.raises(SystemExit) as exit_code:
        bench.main(["--validate", "--quick", "--stages=compile,more_tests", f"--record_dir={record}"])
    assert exit_code.value.code == 1
    results = (record / "results.txt").read_text()
    assert re.search(r"^stage:compile status:FAILED .*error:RuntimeError injected failure", results, re.M)
    assert re.search(r"^stage:more_tests status:ok", results, re.M)
    assert "injected failure" in (record / "compile_error.txt").read_text()
    assert "compile_error.txt" in listed_files((record / "README.md").read_text())


def test_peak_flops_by_exact_device_name_and_override():
    peaks = {name: bench.peak_flops(name) for name in
             ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA A100-SXM4-80GB", "NVIDIA H200")}
    assert peaks["NVIDIA H100 PCIe"] < peaks["NVIDIA H100 NVL"] < peaks["NVIDIA H100 80GB HBM3"]  # not SXM for all
    assert peaks["NVIDIA H200"] == peaks["NVIDIA H100 80GB HBM3"] and peaks["NVIDIA A100-SXM4-80GB"] < 0.5e15
    assert bench.peak_flops("NVIDIA Mystery GPU") is None
    assert bench.peak_flops("NVIDIA Mystery GPU", peak_tflops=100) == 100e12
