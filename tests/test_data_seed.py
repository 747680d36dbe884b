"""--data_seed: 0 is the sorted order, another value a different order that repeats, and a resume continues it."""
import numpy as np
import pytest
import torch

import train_gpt2
from conftest import write_shard
from test_train import SCRIPTS, TINY, data, losses, run_script  # noqa: F401  (data: the module's toy corpus)


def loader(tmp_path, data_seed, rank=0, world=1, shards=(1000,)):
    """Batches of 2 x 10 tokens from shards holding consecutive ids: 0..999 for one shard of 1000."""
    first = 0
    for i, size in enumerate(shards):
        write_shard(tmp_path / f"s_train_{i:06d}.bin", np.arange(first, first + size))
        first += size
    return train_gpt2.DataLoader(str(tmp_path / "s_train_*.bin"), 2, 10, rank, world, 65536, data_seed)


def stream(loader, batches):
    """The tokens of the inputs of the next `batches` batches, in order."""
    return torch.cat([loader.next_batch("cpu")[0].flatten() for _ in range(batches)]).tolist()


def test_data_seed_0_reads_the_sorted_shards_from_their_start(tmp_path):
    seeded = loader(tmp_path, 0, shards=(100, 100, 100))
    assert seeded.state() == dict(epoch=0, shard=0, offset=0, data_seed=0)
    # 20-token windows: 4 fit in each 100-token shard (a fifth would need the 101st token as its last target)
    assert stream(seeded, 12) == [t for first in (0, 100, 200) for t in range(first, first + 80)]
    assert seeded.epoch == 0 and stream(seeded, 1) == list(range(20)) and seeded.epoch == 1


@pytest.mark.parametrize("shards", [(1000,), (1000,) * 4])
def test_another_data_seed_changes_the_tokens_and_repeats(tmp_path, shards):
    base = stream(loader(tmp_path, 0, shards=shards), 5)
    firsts = set()
    for data_seed in range(1, 6):
        a, b = loader(tmp_path, data_seed, shards=shards), loader(tmp_path, data_seed, shards=shards)
        tokens = stream(a, 5)
        assert tokens == stream(b, 5)  # the same seed, the same batches
        assert tokens != base
        firsts.add(tokens[0])
    assert len(firsts) == 5 and base[0] not in firsts  # each seed starts somewhere else


def test_a_seeded_epoch_is_the_stream_rotated_and_repeats_exactly(tmp_path):
    seeded = loader(tmp_path, 3)
    start = seeded.offset
    assert 0 < start < 1000
    batches = []
    while seeded.epoch == 0:
        batches.append(stream(seeded, 1))
    first_of_epoch1 = batches.pop()
    # from the offset to the shard's end, then the head up to the offset: every window whole, none past the end
    tail = list(range(start, start + (1000 - start - 1) // 20 * 20))
    head = list(range(0, start // 20 * 20))
    assert sum(batches, []) == tail + head
    assert first_of_epoch1 == batches[0] and stream(seeded, 3) == sum(batches[1:4], [])


@pytest.mark.parametrize("data_seed", [1, 2, 7])
def test_seeded_ranks_read_disjoint_whole_windows_inside_the_shard(tmp_path, data_seed):
    ranks = [loader(tmp_path, data_seed, rank, 2) for rank in range(2)]
    for _ in range(60):  # more than an epoch
        (x0, y0), (x1, y1) = (r.next_batch("cpu") for r in ranks)
        assert x0.shape == x1.shape == (2, 10) and max(y0.max(), y1.max()) < 1000
        assert torch.equal(x1.flatten()[0:1], y0.flatten()[-1:])  # rank 1 reads on from where rank 0 stopped


def test_no_window_on_either_side_of_the_offset_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no window of 21 tokens fits on either side"):
        loader(tmp_path, 1, shards=(30,))
    with pytest.raises(SystemExit, match="--data_seed must be >= 0"):
        loader(tmp_path, -1)


def test_a_seeded_position_round_trips_and_a_position_without_a_seed_is_seed_0(tmp_path):
    seeded = loader(tmp_path, 5, shards=(100,) * 8)
    stream(seeded, 7)
    state = seeded.state()
    expected = stream(seeded, 30)
    fresh = loader(tmp_path, 5, shards=(100,) * 8)
    fresh.load_state(state)
    assert stream(fresh, 30) == expected
    old = dict(epoch=0, shard=1, offset=40)  # saved before data seeds existed
    plain = loader(tmp_path, 0, shards=(100,) * 8)
    plain.load_state(old)
    assert stream(plain, 1) == list(range(140, 160))
    with pytest.raises(SystemExit, match=r"--data_seed=0, this run has --data_seed=5; resume with --data_seed=0"):
        loader(tmp_path, 5, shards=(100,) * 8).load_state(old)


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.slow
def test_data_seed_losses_differ_repeat_and_resume(name, data, tmp_path):  # noqa: F811
    args = TINY + data + ["--num_iterations=8", "--val_loss_every=0", "--save_every=4", "--keep_checkpoints=1"]
    runs = {}
    for run_id, data_seed in [("zero", 0), ("a", 3), ("b", 3)]:
        out = run_script(name, args + [f"--data_seed={data_seed}", f"--run_id={run_id}"], tmp_path).stdout
        runs[run_id] = losses(out, "train_loss")
    assert runs["a"] == runs["b"]
    assert all(runs["a"][s] != runs["zero"][s] for s in runs["a"]), runs
    resumed = run_script(name, args + ["--data_seed=3", "--run_id=c", f"--resume={tmp_path}/a_step000004.dcp"],
                         tmp_path).stdout
    assert losses(resumed, "train_loss") == {s: v for s, v in runs["a"].items() if s > 4}
    other = run_script(name, args + ["--data_seed=4", "--run_id=d", f"--resume={tmp_path}/a_step000004.dcp"],
                       tmp_path, check=False)
    assert other.returncode != 0 and "resume with --data_seed=3" in other.stderr and "Traceback" not in other.stderr
