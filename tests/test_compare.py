"""Tests for tune/curves.py and tune/compare.py: log parsing, grouping, speedup, eval results, plots, CLI errors."""
import json
import os
import subprocess
import sys

import pytest

from tune import compare, curves

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loss_at(step, speed=1.0):
    return 3.0 + 7.0 / (1.0 + speed * step / 10.0)


def write_our_log(path, script="train_gpt2.py", seed=0, n=40, every=10, speed=1.0, crash_after=None, offset=None,
                  evals=(), **hp_over):
    """A log in our format: the source first (with look-alike lines), then env, script, hp, model lines, steps,
    and the eval lines given (appended after training, as the eval tools do)."""
    hp = dict(input_bin="data/tiny/tiny_train_*.bin", batch_size=4, sequence_length=32, num_iterations=n,
              n_layer=2, n_head=2, n_embd=32, learning_rate=1e-3, seed=seed, run_id=f"run{seed}", log_dir="logs",
              val_loss_every=every, kernels="torch", device="cpu", compile=False)
    hp.update(hp_over)
    offset = 0.01 * seed if offset is None else offset
    lines = ["import json", "def log(step, n, x):",
             '    print(f"step:{step}/{n} val_loss:{x:.4f} train_time:0ms")',
             'hyperparameters:{"not": json',        # source line that looks like the hp line
             'eval:{name} step:{step} tokens:{tokens}',
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
    path.write_text("\n".join(lines + list(evals)) + "\n")
    return path


def write_modded_log(path, n=100, every=25, speed=1.0):
    lines = ["import os", "====", "Running pytorch 2.5"]
    for s in range(0, n + 1, every):
        avg = "nan" if s == 0 else "50.00"
        lines.append(f"step:{s}/{n} val_loss:{loss_at(s, speed):.4f} train_time:{s * 50}ms step_avg:{avg}ms")
        if s < n:
            lines.append(f"step:{s + 1}/{n} train_loss:{loss_at(s + 1, speed):.4f} "
                         f"train_time:{(s + 1) * 50}ms step_avg:50.00ms")
    lines.append("peak memory consumption: 1000 MiB")
    path.write_text("\n".join(lines) + "\n")
    return path


def load(*paths, **kw):
    return curves.group_runs([curves.parse_log(str(p)) for p in paths], **kw)


# ------------------------------------------------------------------------------------ parsing

def test_parse_our_format(tmp_path):
    run = curves.parse_log(str(write_our_log(tmp_path / "a.txt", seed=1)))
    assert run.script == "train_gpt2.py"
    assert run.hp["seed"] == 1 and run.hp["batch_size"] == 4
    assert sorted(run.val) == [0, 10, 20, 30, 40]
    assert run.val[40][0] == pytest.approx(loss_at(40) + 0.01, abs=1e-4)
    assert run.val[40][1] == 40 * 101 and run.val[0][1] == 0
    assert run.step_avg_ms == pytest.approx(101.0)
    assert run.tokens_per_s == 1001
    assert run.total_steps == 40
    assert run.evals == {}
    assert load(tmp_path / "a.txt")[0].tokens_per_step == 4 * 32


def test_parse_modded_format(tmp_path):
    run = curves.parse_log(str(write_modded_log(tmp_path / "m.txt")))
    assert run.script is None and run.hp is None
    assert {s: t for s, (_, t) in run.val.items()} == {0: 0, 25: 1250, 50: 2500, 75: 3750, 100: 5000}
    assert run.step_avg_ms == 50.0
    assert run.tokens_per_s is None
    assert load(tmp_path / "m.txt")[0].tokens_per_step is None
    assert load(tmp_path / "m.txt", tokens_per_step=512)[0].tokens_per_step == 512


def test_parse_partial_log_ignores_truncated_last_line(tmp_path):
    run = curves.parse_log(str(write_our_log(tmp_path / "c.txt", n=40, crash_after=25)))
    assert sorted(run.val) == [0, 10, 20]          # the cut "step:26/40 val_loss:9.9" is ignored
    assert run.total_steps == 40
    [g] = load(tmp_path / "c.txt")
    row = compare.summarize([g], 0, 5.0)[0]
    assert row["runs"] == "1 (seeds 0), stopped at 20/40"


def test_step_line_fields(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("step:3/10 val_loss:4.5 train_time:12ms mfu:45.1% kernels:torch\n"
                 "    step:4/10 val_loss:1.0\n"
                 "step:{step}/{n} val_loss:{x}\n")
    run = curves.parse_log(str(p))
    assert run.val == {3: (4.5, 12.0)}
    assert curves.fields(" val_loss:4.5 train_time:12ms mfu:45.1% kernels:torch") == \
        {"val_loss": 4.5, "train_time": 12.0, "mfu": 45.1}


# ----------------------------------------------------------------------------------- grouping

def test_grouping_by_seed_and_labels(tmp_path):
    paths = [write_our_log(tmp_path / f"g{s}.txt", seed=s) for s in range(3)]
    paths += [write_our_log(tmp_path / f"n{s}.txt", script="train_ngpt2.py", seed=s) for s in range(2)]
    paths.append(write_our_log(tmp_path / "g4.txt", seed=7, n_layer=4))
    groups = load(*paths)
    assert [len(g.runs) for g in groups] == [3, 2, 1]
    assert sorted(r.hp["seed"] for r in groups[0].runs) == [0, 1, 2]
    assert [g.label for g in groups] == ["train_gpt2.py n_layer=2", "train_ngpt2.py n_layer=2",
                                         "train_gpt2.py n_layer=4"]


def test_label_is_script_alone_when_only_script_differs(tmp_path):
    a = write_our_log(tmp_path / "a.txt", seed=0)
    b = write_our_log(tmp_path / "b.txt", script="train_ngpt2.py", seed=5, device="cuda", log_dir="x")
    assert [g.label for g in load(a, b)] == ["train_gpt2.py", "train_ngpt2.py"]
    # a setting only one script has (its own model fields) does not lengthen the labels either
    c = write_our_log(tmp_path / "c.txt", script="train_ngpt2.py", learning_rate=15e-4, alpha_init=0.05)
    assert [g.label for g in load(a, c)] == ["train_gpt2.py", "train_ngpt2.py"]
    # two configs of one script: the settings that tell them apart label every group that has them
    assert [g.label for g in load(a, b, c)] == ["train_gpt2.py learning_rate=0.001",
                                                "train_ngpt2.py learning_rate=0.001",
                                                "train_ngpt2.py alpha_init=0.05 learning_rate=0.0015"]


def test_modded_logs_grouped_by_folder(tmp_path):
    for name in ("rec_a", "rec_b"):
        (tmp_path / name).mkdir()
    write_modded_log(tmp_path / "rec_a" / "0a1b2c3d-0000-1111-2222-333344445555.txt")
    write_modded_log(tmp_path / "rec_a" / "9f1b2c3d-0000-1111-2222-333344445555.txt")
    write_modded_log(tmp_path / "rec_b" / "x.txt", speed=2.0)
    runs, _ = curves.load_runs([str(tmp_path)])
    assert [(g.label, len(g.runs)) for g in curves.group_runs(runs)] == [("rec_a", 2), ("rec_b", 1)]


# ------------------------------------------------------------------------------------ speedup

def test_x_at_target_interpolates_first_crossing():
    tokens = [0, 10, 20, 30, 40]
    losses = [10.0, 6.0, 4.0, 5.0, 3.0]
    assert curves.x_at_target(tokens, losses, 5.0) == pytest.approx(15.0)
    assert curves.x_at_target(tokens, losses, 4.0) == pytest.approx(20.0)  # exact point
    assert curves.x_at_target(tokens, losses, 3.5) == pytest.approx(37.5)  # not 25: first crossing
    assert curves.x_at_target(tokens, losses, 2.0) is None
    assert curves.x_at_target(tokens, losses, 11.0) == 0


def test_speedup_of_curve_stretched_2x_in_tokens():
    base_tokens = [0, 100, 200, 400, 800]
    losses = [10.0, 7.0, 5.5, 4.2, 3.7]
    fast_tokens = [t / 2 for t in base_tokens]      # same losses with half the tokens
    for target in (9.0, 6.1, 4.5, 3.9, 3.7):
        base = curves.x_at_target(base_tokens, losses, target)
        fast = curves.x_at_target(fast_tokens, losses, target)
        assert base / fast == pytest.approx(2.0, abs=1e-9)
        assert compare.speedup_text(base, fast) == "2.000x"
        assert compare.speedup_text(fast, base) == "0.500x"   # the other way round it is 2x slower
    assert compare.speedup_text(800, None) == "not reached"


def test_table_speedup_and_not_reached(tmp_path):
    # baseline: 2 seeds at loss_at(step) -/+ 0.005, so its mean final val loss is loss_at(40) = 4.4
    paths = [write_our_log(tmp_path / f"g{s}.txt", seed=s, n=40, every=5, offset=0.01 * s - 0.005) for s in (0, 1)]
    paths.append(write_our_log(tmp_path / "fast.txt", script="train_ngpt2.py", n=40, every=5, speed=2.0,
                               offset=0.0))
    paths.append(write_our_log(tmp_path / "slow.txt", script="train_x.py", n=40, every=5, speed=0.25, offset=0.0))
    groups = load(*paths)
    target = groups[0].finals.mean()
    assert target == pytest.approx(4.4, abs=1e-9)
    rows = compare.summarize(groups, 0, target)
    assert rows[0]["speedup (tokens)"] == "1.000x"
    assert rows[0]["final val loss"] == "4.4000 ± 0.0071"
    assert rows[0]["runs"] == "2 (seeds 0,1)"
    # speed=2 reaches 4.4 at step 20 (a val step) instead of 40: half the tokens
    assert rows[1]["speedup (tokens)"] == "2.000x"
    assert rows[1]["tokens to target"] == f"{20 * 4 * 32 / 1000:.4g}K"
    # the time axis of the fast run: 20 steps * 100 ms vs the baseline's mean 40 * 100.5 ms
    assert rows[1]["speedup (time)"] == f"{40 * 100.5 / (20 * 100):.3f}x"
    assert rows[2]["speedup (tokens)"] == "not reached"
    assert rows[2]["time to target"] == "not reached"
    # another baseline and an explicit target
    rows = compare.summarize(groups, 1, 5.0)
    assert rows[1]["speedup (tokens)"] == "1.000x"
    assert 0.4 < float(rows[0]["speedup (tokens)"].rstrip("x")) < 0.6   # about 2x slower
    assert compare.pick_baseline(groups, "ngpt") == 1


# -------------------------------------------------------------------------------------- evals

def hellaswag(step, acc, acc_norm, n=100):
    return f"eval:hellaswag step:{step} tokens:{step * 128} acc:{acc:.4f} acc_norm:{acc_norm:.4f} n:{n}"


def extrapolate(step, ctx, loss):
    return f"eval:extrapolate step:{step} tokens:{step * 128} ctx:{ctx} val_loss:{loss:.4f} ppl:31.71 bpb:1.0432"


def write_eval_logs(folder):
    folder.mkdir()
    for s in (0, 1):
        evals = [hellaswag(20, 0.25, 0.26), hellaswag(40, 0.30 + 0.02 * s, 0.31 + 0.04 * s),
                 extrapolate(40, 32, 3.5 + s), extrapolate(40, 64, 3.7)]
        write_our_log(folder / f"gpt{s}.txt", seed=s, evals=evals)
        write_our_log(folder / f"ngpt{s}.txt", script="train_ngpt2.py", seed=s, speed=1.5,
                      evals=[hellaswag(20, 0.4, 0.5)] if s == 0 else [])
    write_our_log(folder / "gpt2.txt", seed=2, evals=[hellaswag(20, 0.9, 0.9)])   # a seed evaluated early only


def test_parse_eval_lines(tmp_path):
    write_eval_logs(tmp_path / "logs")
    plain = curves.parse_log(str(write_our_log(tmp_path / "plain.txt", seed=0)))
    run = curves.parse_log(str(tmp_path / "logs" / "gpt0.txt"))
    assert run.val == plain.val                   # eval lines (one has a val_loss) leave the val curve alone
    assert run.evals[("hellaswag", (("n", 100),), 40)] == (40 * 128, {"acc": 0.30, "acc_norm": 0.31})
    assert run.evals[("extrapolate", (("ctx", 64),), 40)] == \
        (40 * 128, {"val_loss": 3.7, "ppl": 31.71, "bpb": 1.0432})
    assert len(run.evals) == 4


def test_eval_table_latest_step_mean_std_over_seeds(tmp_path):
    write_eval_logs(tmp_path / "logs")
    runs, _ = curves.load_runs([str(tmp_path / "logs")])
    groups = curves.group_runs(runs)
    assert curves.eval_names(groups) == ["hellaswag", "extrapolate"]
    rows = [ln.split("|")[1:-1] for ln in compare.eval_table(groups, "hellaswag").splitlines()]
    assert [c.strip() for c in rows[0]] == ["group", "runs", "step", "tokens", "n", "acc", "acc_norm"]
    gpt, ngpt = [[c.strip() for c in r] for r in rows[2:]]
    # gpt: seeds 0 and 1 at step 40 (seed 2 stopped evaluating at step 20); std over 2 values = |a - b| / sqrt(2)
    assert gpt == ["train_gpt2.py", "2", "40", "5.12K", "100", f"0.3100 ± {0.02 / 2 ** 0.5:.4f}",
                   f"0.3300 ± {0.04 / 2 ** 0.5:.4f}"]
    assert ngpt == ["train_ngpt2.py", "1", "20", "2.56K", "100", "0.4000", "0.5000"]
    rows = compare.eval_table(groups, "extrapolate").splitlines()
    assert len(rows) == 2 + 2                    # gpt at ctx 32 and ctx 64; ngpt has no extrapolation
    assert "| train_gpt2.py | 2 | 40 | 5.12K | 32 | 4.0000 ± 0.7071 | 31.7100 ± 0.0000 |" in rows[2]


def test_cli_writes_eval_tables_and_plots(tmp_path, capsys):
    write_eval_logs(tmp_path / "logs")
    md = tmp_path / "out" / "table.md"
    compare.main([str(tmp_path / "logs"), "--out_dir", str(tmp_path / "img"), "--name", "t", "--markdown", str(md)])
    stdout = capsys.readouterr().out
    text = md.read_text()
    assert "Eval hellaswag: each group at its latest evaluated step" in text
    assert "eval extrapolate: each group" in stdout
    assert text.count("| group | runs | step | tokens |") == 2
    for name in ("val_vs_step", "val_vs_tokens", "val_vs_time", "eval_hellaswag", "eval_extrapolate"):
        assert (tmp_path / "img" / f"t_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------- CLI/plots

def test_cli_writes_pngs_and_markdown(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    for s in (0, 1):
        write_our_log(logs / f"gpt{s}.txt", seed=s)
        write_our_log(logs / f"ngpt{s}.txt", script="train_ngpt2.py", seed=s, speed=1.5)
    (logs / "modded").mkdir()
    write_modded_log(logs / "modded" / "m.txt")
    (logs / "notes.txt").write_text("not a log\n")
    md = tmp_path / "table.md"
    out = tmp_path / "img"
    compare.main([str(logs), "--out_dir", str(out), "--name", "t", "--markdown", str(md)])
    stdout = capsys.readouterr().out
    for kind in ("step", "tokens", "time"):
        assert (out / f"t_val_vs_{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("t_eval_*"))
    assert "tokens plot: skipped modded" in stdout
    assert "skipped " + str(logs / "notes.txt") in stdout
    rows = [ln for ln in md.read_text().splitlines() if ln.startswith("|")]
    assert rows[0].startswith("| group | runs | final val loss")
    assert set(rows[1]) <= set("|-")
    assert [r.split("|")[1].strip() for r in rows[2:]] == ["train_gpt2.py", "train_ngpt2.py", "modded"]
    assert "| n/a (tokens/step unknown) |" in rows[4]
    assert md.read_text().splitlines()[-1] == \
        "Baseline: train_gpt2.py; target val loss: " + rows[2].split("|")[3].split()[0] + \
        " (baseline final mean val loss)."
    assert "| train_gpt2.py |" in stdout      # table printed too


def test_committed_record_table_is_reproduced(tmp_path, capsys):
    rec = os.path.join(REPO, "records", "2026-11-25_tiny_cpu_ab")
    logs = sorted(os.path.join(rec, f) for f in os.listdir(rec) if f.endswith(".txt"))
    md = tmp_path / "table.md"
    compare.main(logs + ["--no_plot", "--markdown", str(md)])
    with open(os.path.join(rec, "table.md"), encoding="utf-8") as f:
        assert md.read_text() == f.read()


def error_of(argv):
    with pytest.raises(SystemExit) as e:
        compare.main(argv)
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith("error: ") and "\n" not in msg   # one line, exit status 1
    return msg


def test_cli_errors(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\nthis is not a log\n")
    assert str(bad) in error_of([str(bad), "--no_plot"]) and "not a training log" in error_of([str(bad)])
    assert str(tmp_path / "nope") in error_of([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    assert str(tmp_path / "empty") in error_of([str(tmp_path / "empty")])
    log = write_our_log(tmp_path / "g.txt")
    assert "xyz" in error_of([str(log), "--baseline", "xyz", "--no_plot"])
    assert "--tokens_per_step" in error_of([str(log), "--tokens_per_step", "0"])


def test_cli_subprocess_exit_code(tmp_path):
    bad = tmp_path / "x.txt"
    bad.write_text("no steps here\n")
    r = subprocess.run([sys.executable, "-m", "tune.compare", str(bad)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode != 0
    assert r.stderr.startswith("error: ") and str(bad) in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_log_with_the_sources_of_several_files_reads_as_the_old_one(tmp_path):
    old = write_our_log(tmp_path / "old.txt")
    text = old.read_text()
    code = "step:1/40 val_loss:0.5000 train_time:1ms\nscript:other.py\nparameters:7 x\n"  # look-alikes at column 0
    new = tmp_path / "new.txt"
    new.write_text("".join(f"{'=' * 40} source:{name}\n{code}" for name in ("train_gpt2.py", "ops.py"))
                   + "=" * 100 + "\n" + text)
    a, b = curves.parse_log(str(old)), curves.parse_log(str(new))
    assert (b.script, b.hp, b.val, b.params) == (a.script, a.hp, a.val, a.params) and b.script == "train_gpt2.py"


def test_parse_parameter_count_and_loader_wraps(tmp_path):
    p = write_our_log(tmp_path / "w.txt")
    extra = ('script:train_gpt2.py\nparameters:1234 non_embedding_parameters:99 (0.0M, 0.0M without the embedding '
             'and head)\n    print0(f"data_epoch:{epoch} ..")')
    text = p.read_text().replace("script:train_gpt2.py", extra)
    p.write_text(text.replace("step:20/40 val_loss", "data_epoch:1 step:20 (the loader wrapped)\nstep:20/40 val_loss"))
    run = curves.parse_log(str(p))
    assert run.params == 1234 and run.data_epoch == 1       # the source's look-alike line is not a wrap
    assert curves.parse_log(str(write_our_log(tmp_path / "plain.txt"))).data_epoch == 0
