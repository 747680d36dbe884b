"""Tests for records/compare.py (log parsing, grouping, speedup, plots, CLI errors)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("records_compare",
                                              os.path.join(REPO, "records", "compare.py"))
compare = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = compare     # dataclasses look their module up in sys.modules
_spec.loader.exec_module(compare)


def loss_at(step, speed=1.0):
    return 3.0 + 7.0 / (1.0 + speed * step / 10.0)


def write_our_log(path, script="train_gpt2.py", seed=0, n=40, every=10, speed=1.0,
                  crash_after=None, offset=None, **hp_over):
    """A log in our format: source first (with look-alike lines), env, script/hp/model lines."""
    hp = dict(input_bin="data/tiny/tiny_train_*.bin", batch_size=4, sequence_length=32,
              num_iterations=n, n_layer=2, n_head=2, n_embd=32, learning_rate=1e-3, seed=seed,
              run_id=f"run{seed}", log_dir="logs", val_loss_every=every, kernels="torch",
              device="cpu", compile=False)
    hp.update(hp_over)
    offset = 0.01 * seed if offset is None else offset
    lines = ["import json", "def log(step, n, x):",
             '    print(f"step:{step}/{n} val_loss:{x:.4f} train_time:0ms")',
             'hyperparameters:{"not": json',  # source line that looks like the hp line
             "torch 2.13.0 python 3.11",
             f"script:{script}", "hyperparameters:" + json.dumps(hp), 'model_config:{"n_layer": 2}']
    t = 0
    for s in range(n + 1):
        if s > 0:
            t += 100 + seed
            lines.append(f"step:{s}/{n} train_loss:{loss_at(s, speed):.4f} train_time:{t}ms "
                         f"step_avg:{t / s:.2f}ms tokens_per_s:{1000 + seed}")
        if s % every == 0 or s == n:
            lines.append(f"step:{s}/{n} val_loss:{loss_at(s, speed) + offset:.4f} "
                         f"train_time:{t}ms step_avg:{t / max(s, 1):.2f}ms")
        if crash_after is not None and s == crash_after:
            # crashed while writing: the last line is cut short (no newline)
            path.write_text("\n".join(lines) + f"\nstep:{s + 1}/{n} val_loss:9.9")
            return path
    lines.append("peak_memory:12MiB")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_modded_log(path, n=100, every=25, speed=1.0):
    lines = ["import os", "====", "Running pytorch 2.5"]
    for s in range(0, n + 1, every):
        avg = "nan" if s == 0 else "50.00"
        lines.append(f"step:{s}/{n} val_loss:{loss_at(s, speed):.4f} train_time:{s * 50}ms "
                     f"step_avg:{avg}ms")
        if s < n:
            lines.append(f"step:{s + 1}/{n} train_loss:{loss_at(s + 1, speed):.4f} "
                         f"train_time:{(s + 1) * 50}ms step_avg:50.00ms")
    lines.append("peak memory consumption: 1000 MiB")
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------ parsing

def test_parse_our_format(tmp_path):
    run = compare.parse_log(str(write_our_log(tmp_path / "a.txt", seed=1)))
    assert run.script == "train_gpt2.py"
    assert run.hp["seed"] == 1 and run.hp["batch_size"] == 4
    assert run.tokens_per_step == 4 * 32
    assert run.val_steps == [0, 10, 20, 30, 40]
    assert run.val_losses[-1] == pytest.approx(loss_at(40) + 0.01, abs=1e-4)
    assert run.val_times_ms[-1] == 40 * 101
    assert run.step_avg_ms == pytest.approx(101.0)
    assert run.tokens_per_s == 1001
    assert run.total_steps == 40


def test_parse_modded_format(tmp_path):
    run = compare.parse_log(str(write_modded_log(tmp_path / "m.txt")))
    assert run.script is None and run.hp is None and run.tokens_per_step is None
    assert run.val_steps == [0, 25, 50, 75, 100]
    assert run.val_times_ms == [0, 1250, 2500, 3750, 5000]
    assert run.step_avg_ms == 50.0
    assert run.tokens_per_s is None


def test_parse_partial_log_ignores_truncated_last_line(tmp_path):
    run = compare.parse_log(str(write_our_log(tmp_path / "c.txt", n=40, crash_after=25)))
    assert run.val_steps == [0, 10, 20]          # the cut "step:26/40 val_loss:9.9" is ignored
    assert 9.9 not in run.val_losses
    assert run.total_steps == 40


def test_parse_step_line():
    assert compare.parse_step_line("step:3/10 val_loss:4.5 train_time:12ms mfu:45.1%") == \
        (3, 10, {"val_loss": 4.5, "train_time": 12.0, "mfu": 45.1})
    assert compare.parse_step_line("    step:3/10 val_loss:4.5") is None
    assert compare.parse_step_line('step:{step}/{n} val_loss:{x}') is None


# ----------------------------------------------------------------------------------- grouping

def test_grouping_by_seed_and_labels(tmp_path):
    paths = [write_our_log(tmp_path / f"g{s}.txt", seed=s) for s in range(3)]
    paths += [write_our_log(tmp_path / f"n{s}.txt", script="train_ngpt2.py", seed=s)
              for s in range(2)]
    paths.append(write_our_log(tmp_path / "g4.txt", seed=7, n_layer=4))
    runs = [compare.parse_log(str(p)) for p in paths]
    groups = compare.group_runs(runs)
    assert [len(g.runs) for g in groups] == [3, 2, 1]
    assert sorted(r.seed for r in groups[0].runs) == [0, 1, 2]
    assert groups[0].label == "train_gpt2.py n_layer=2"
    assert groups[1].label == "train_ngpt2.py n_layer=2"
    assert groups[2].label == "train_gpt2.py n_layer=4"


def test_label_is_script_alone_when_only_script_differs(tmp_path):
    runs = [compare.parse_log(str(write_our_log(tmp_path / "a.txt", seed=0))),
            compare.parse_log(str(write_our_log(tmp_path / "b.txt", script="train_ngpt2.py",
                                                seed=5, device="cuda", log_dir="x")))]
    groups = compare.group_runs(runs)
    assert [g.label for g in groups] == ["train_gpt2.py", "train_ngpt2.py"]
    # each script's own defaults / extra fields do not make the labels long either
    runs.append(compare.parse_log(str(write_our_log(tmp_path / "c.txt", script="train_ngpt2.py",
                                                    learning_rate=15e-4, alpha_init=0.05))))
    groups = compare.group_runs(runs)
    assert [g.label for g in groups] == ["train_gpt2.py learning_rate=0.001", "train_ngpt2.py alpha_init=unset "
                                         "learning_rate=0.001", "train_ngpt2.py alpha_init=0.05 "
                                         "learning_rate=0.0015"]
    assert [len(g.runs) for g in groups] == [1, 1, 1]
    groups = compare.group_runs([runs[0], runs[2]])
    assert [g.label for g in groups] == ["train_gpt2.py", "train_ngpt2.py"]


def test_modded_logs_grouped_by_stem_or_folder(tmp_path):
    (tmp_path / "rec").mkdir()
    write_modded_log(tmp_path / "rec" / "0a1b2c3d-0000-1111-2222-333344445555.txt")
    write_modded_log(tmp_path / "rec" / "9f1b2c3d-0000-1111-2222-333344445555.txt")
    write_modded_log(tmp_path / "base_seed1.txt")
    write_modded_log(tmp_path / "base_s2.txt")
    write_modded_log(tmp_path / "bs512.txt")       # "s512" without a separator is not a seed
    runs, _ = compare.collect_logs([str(tmp_path)])
    groups = compare.group_runs(runs)
    assert sorted((g.label, len(g.runs)) for g in groups) == [("base", 2), ("bs512", 1), ("rec", 2)]


# ------------------------------------------------------------------------------------ speedup

def test_tokens_to_reach_interpolates_first_crossing():
    tokens = [0, 10, 20, 30, 40]
    losses = [10.0, 6.0, 4.0, 5.0, 3.0]
    assert compare.tokens_to_reach(tokens, losses, 5.0) == pytest.approx(15.0)
    assert compare.tokens_to_reach(tokens, losses, 4.0) == pytest.approx(20.0)  # exact point
    assert compare.tokens_to_reach(tokens, losses, 3.5) == pytest.approx(37.5)  # not 25: first
    assert compare.tokens_to_reach(tokens, losses, 2.0) is None
    assert compare.tokens_to_reach(tokens, losses, 11.0) == 0


def test_speedup_of_curve_stretched_2x_in_tokens():
    base_tokens = [0, 100, 200, 400, 800]
    losses = [10.0, 7.0, 5.5, 4.2, 3.7]
    fast_tokens = [t / 2 for t in base_tokens]      # same losses with half the tokens
    for target in (9.0, 6.1, 4.5, 3.9, 3.7):
        assert compare.speedup(base_tokens, losses, fast_tokens, losses, target) == \
            pytest.approx(2.0, abs=1e-6)
    # the other way round it is 2x slower; a target nobody reaches gives None
    assert compare.speedup(fast_tokens, losses, base_tokens, losses, 4.0) == \
        pytest.approx(0.5, abs=1e-6)
    assert compare.speedup(base_tokens, losses, fast_tokens, losses, 3.0) is None


def test_table_speedup_and_not_reached(tmp_path):
    # baseline: 2 seeds at loss_at(step) -/+ 0.005, so its mean final val loss is loss_at(40) = 4.4
    paths = [write_our_log(tmp_path / f"g{s}.txt", seed=s, n=40, every=5, offset=0.01 * s - 0.005)
             for s in (0, 1)]
    paths.append(write_our_log(tmp_path / "fast.txt", script="train_ngpt2.py", n=40, every=5,
                               speed=2.0, offset=0.0))
    paths.append(write_our_log(tmp_path / "slow.txt", script="train_x.py", n=40, every=5,
                               speed=0.25, offset=0.0))
    groups = compare.group_runs([compare.parse_log(str(p)) for p in paths])
    rows, target, _ = compare.summarize(groups, 0)      # default target: baseline final mean
    assert target == pytest.approx(4.4, abs=1e-9)
    assert rows[0]["speedup (tokens)"] == "1.000x"
    assert rows[0]["final val loss"] == "4.4000 ± 0.0071"
    # speed=2 reaches 4.4 at step 20 (a val step) instead of 40: half the tokens
    assert rows[1]["speedup (tokens)"] == "2.000x"
    assert rows[1]["tokens to target"] == f"{20 * 4 * 32 / 1000:.4g}K"
    # the time axis of the fast run: 20 steps * 100 ms vs the baseline's mean 40 * 100.5 ms
    assert rows[1]["speedup (time)"] == f"{40 * 100.5 / (20 * 100):.3f}x"
    assert rows[2]["speedup (tokens)"] == "not reached"
    assert rows[2]["time to target"] == "not reached"
    assert rows[0]["runs"].startswith("2 (seeds 0,1)")
    # --baseline by substring, and an explicit target
    rows, target, _ = compare.summarize(groups, 1, target=5.0)
    assert target == 5.0 and rows[1]["speedup (tokens)"] == "1.000x"
    assert 0.4 < float(rows[0]["speedup (tokens)"].rstrip("x")) < 0.6   # about 2x slower
    assert compare._pick_baseline(groups, "ngpt") == 1


# ---------------------------------------------------------------------------------- CLI/plots

def test_cli_writes_pngs_and_markdown(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    for s in (0, 1):
        write_our_log(logs / f"gpt{s}.txt", seed=s)
        write_our_log(logs / f"ngpt{s}.txt", script="train_ngpt2.py", seed=s, speed=1.5)
    write_modded_log(logs / "modded.txt")
    md = tmp_path / "table.md"
    out = tmp_path / "img"
    assert compare.main([str(logs), "--out_dir", str(out), "--name", "t",
                         "--markdown", str(md)]) == 0
    stdout = capsys.readouterr().out
    for kind in ("step", "tokens", "time"):
        png = out / f"t_val_vs_{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tokens plot: skipped modded" in stdout
    rows = [ln for ln in md.read_text().splitlines() if ln.startswith("|")]
    assert rows[0].startswith("| group | runs | final val loss")
    assert set(rows[1]) <= set("|-")
    assert len(rows) == 2 + 3                 # header, separator, one row per group
    assert sorted(r.split("|")[1].strip() for r in rows[2:]) == \
        ["modded", "train_gpt2.py", "train_ngpt2.py"]
    assert rows[2].startswith("| train_gpt2.py |")   # the first group found is the baseline
    assert "| train_gpt2.py |" in stdout      # table printed too
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


def test_cli_error_for_non_log_file(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\nthis is not a log\n")
    with pytest.raises(SystemExit) as e:
        compare.main([str(bad), "--no_plot"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and "not a training log" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("what", ["missing", "empty_folder"])
def test_cli_error_for_missing_path_and_empty_folder(tmp_path, capsys, what):
    p = tmp_path / "nope"
    if what == "empty_folder":
        p.mkdir()
    with pytest.raises(SystemExit) as e:
        compare.main([str(p), "--no_plot"])
    assert e.value.code == 2
    assert str(p) in capsys.readouterr().err


def test_cli_subprocess_exit_code(tmp_path):
    bad = tmp_path / "x.txt"
    bad.write_text("no steps here\n")
    r = subprocess.run([sys.executable, os.path.join(REPO, "records", "compare.py"), str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert str(bad) in r.stderr and "Traceback" not in r.stderr
