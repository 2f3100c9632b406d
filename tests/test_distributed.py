"""Data-parallel training under the real launchers: `mlx.launch -n 2 --backend ring` (MLX) and
`torchrun --nproc-per-node 2` (torch, gloo), two processes on this machine.

The update of K processes must be the one process's update with the whole batch. It is checked
with SGD, whose update is the gradient itself: AdamW divides each gradient element by its own
running magnitude, so elements near zero turn float32 rounding into steps of the learning
rate's size, and one process disagrees with itself by 3e-3 to 5e-3 (relative) after 5 AdamW
steps when only the order inside each batch is reversed (docs/distributed.md). A wrong
normalization (each process averaging over its own tokens) moves SGD's result by percents.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import read_manifest

VENV_BIN = Path(sys.executable).parent
STEPS = 5


@pytest.fixture(scope="module")
def small_data(shared_data, tmp_path_factory) -> Path:
    """16 training and 4 test utterances of LibriSpeech (two speakers), audio paths absolute."""
    source = shared_data / "librispeech_2spk"
    rows = read_manifest(source)
    folder = tmp_path_factory.mktemp("dp_data")
    for name, part in (("train", rows[:16]), ("test", rows[-4:])):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in part:
                f.write(json.dumps({"id": row["id"], "audio": str(source / row["audio"]), "text": row["text"]}) + "\n")
    return folder


def launcher_command(engine: str, processes: int) -> list:
    if processes == 1:
        return [sys.executable, "-m", "mlx_whisper_lora.lora", "--backend", engine]
    if engine == "mlx":
        if not (VENV_BIN / "mlx.launch").exists():
            pytest.skip("mlx.launch is not installed beside this python")
        return [str(VENV_BIN / "mlx.launch"), "-n", str(processes), "--backend", "ring", "--",
                str(VENV_BIN / "mlx-whisper-lora")]
    if not (VENV_BIN / "torchrun").exists():
        pytest.skip("torchrun (the torch extra) is not installed beside this python")
    return [str(VENV_BIN / "torchrun"), "--nproc-per-node", str(processes), "-m", "mlx_whisper_lora.lora"]


def train_args(data: Path, adapters: Path, iters: int = STEPS, extra=()) -> list:
    return ["--model", "tiny.en", "--train", "--data", str(data), "--adapter-path", str(adapters),
            "--iters", str(iters), "--batch-size", "8", "--seed", "0", "--dropout", "0", "--optimizer", "sgd",
            "--alignment-heads", "keep", "--no-progress", *extra]


def environment(tmp_path: Path) -> dict:
    env = dict(os.environ, MLX_WHISPER_LORA_CACHE=str(tmp_path / "score_cache"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "MLX_RANK",
                 "MLX_HOSTFILE"):
        env.pop(name, None)
    return env


def run(command: list, tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        pytest.skip(f"{command[0]} not found")
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def adapters_of(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "adapters.safetensors"))


def relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-30)) for k in a)


@pytest.mark.parametrize("engine", [pytest.param("mlx", marks=pytest.mark.slow),
                                    pytest.param("torch", marks=pytest.mark.slow)])  # 29 s; the killed-run test covers both by default
def test_two_processes_make_the_one_process_update(engine, small_data, tmp_path):
    pytest.importorskip("torch") if engine == "torch" else None
    one, two = tmp_path / "one", tmp_path / "two"
    test = ["--test", "--no-base-comparison"] if engine == "mlx" else []  # the test split decoded in shares, gathered
    run(launcher_command(engine, 1) + train_args(small_data, one, extra=test), tmp_path)
    result = run(launcher_command(engine, 2) + train_args(small_data, two, extra=test), tmp_path)
    assert "data-parallel: 2 processes" in result.stderr + result.stdout
    difference = relative_difference(adapters_of(one), adapters_of(two))
    # 2 processes sum the same gradients in another order (each half's, then the all-reduce): float32 rounding,
    # ~1e-6 of each gradient whatever the kernels, compounded over the few SGD steps; lora_b starts at zero, so its
    # weights are the updates themselves, and a gradient not all-reduced (half the batch) or counted twice is
    # off by tens of percent of them. 1e-3 of the largest weight sits between the two with ~100x either side
    assert difference < 1e-3, f"2 processes differ from 1 by {difference:.2e} (relative)"
    # one set of files, written once: the same names, one metrics line per report, nothing left behind
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    lines = lambda folder: [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines(two)] == [e["step"] for e in lines(one)]
    train_losses = [(e["train_loss"], f["train_loss"]) for e, f in zip(lines(one), lines(two)) if "train_loss" in e]
    # the reported mean loss, summed over the processes' shares: float32 rounding of a loss of a few units
    # (~1e-6), and a 5-decimal rounding in metrics.jsonl (1e-5); a share lost or counted twice moves it by O(1)
    assert train_losses and all(abs(a - b) < 1e-3 for a, b in train_losses)
    if test:
        reports = [json.loads((folder / "test_results.json").read_text()) for folder in (one, two)]
        assert [t["hypothesis"] for t in reports[0]["transcripts"]] == [t["hypothesis"] for t in reports[1]["transcripts"]]
        assert reports[0]["utterances"] == reports[1]["utterances"] == 4


def process_of_rank(launcher: subprocess.Popen, rank: int, timeout: float = 120) -> int:
    """The pid of the launched process of `rank` (read from its environment)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == launcher.pid:
                continue
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if not _descends_from(int(pid), launcher.pid):
                continue
            if f"MLX_RANK={rank}".encode() in environ or f"RANK={rank}".encode() in environ:
                if any(b"mlx_whisper_lora" in part or b"mlx-whisper-lora" in part
                       for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")):
                    return int(pid)
        time.sleep(0.5)
    raise AssertionError(f"no process of rank {rank} found")


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        if pid == ancestor:
            return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["mlx", "torch"])
def test_a_killed_process_stops_the_run_which_resumes_with_either_count(engine, small_data, tmp_path):
    pytest.importorskip("torch") if engine == "torch" else None
    adapters = tmp_path / "adapters"
    command = launcher_command(engine, 2) + train_args(small_data, adapters, iters=1000, extra=["--save-every", "2"])
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=environment(tmp_path), start_new_session=True)
    try:
        victim = process_of_rank(launcher, 1)
        deadline = time.time() + 300
        while not list(adapters.glob("0000002_adapters.safetensors")) and time.time() < deadline:
            assert launcher.poll() is None, launcher.stdout.read()[-3000:]
            time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        output, _ = launcher.communicate(timeout=120)  # no hang
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert "another process of this data-parallel run stopped" in output or "stopped by the launcher" in output, \
        output[-3000:]
    from mlx_whisper_lora.formats.adapter_files import saved_step

    saved = saved_step(adapters / "adapters.safetensors")
    assert saved >= 2
    for processes in (1, 2):  # resume with another process count, then with the same
        target = saved + 2 * processes
        result = run(launcher_command(engine, processes) + train_args(
            small_data, adapters, iters=target, extra=["--resume-adapter-file", str(adapters / "adapters.safetensors")]),
            tmp_path)
        assert f"continuing from step {saved}" in result.stderr + result.stdout
        saved = saved_step(adapters / "adapters.safetensors")
        assert saved == target


# ---------------------------------------------------------------- without launching anything
def threads_as_processes(size: int, work):
    """Run `work(world)` in `size` threads whose World.sum adds over all of them (a stand-in for the
    engines' all-reduce), returning each thread's result."""
    import threading

    from mlx_whisper_lora.tuner.distributed import World

    barrier, parts, results = threading.Barrier(size), [None] * size, [None] * size

    def make_sum(rank):
        def sum_arrays(array):
            parts[rank] = array
            barrier.wait()
            total = sum(parts)
            barrier.wait()
            return total
        return sum_arrays

    def body(rank):
        results[rank] = work(World(rank, size, "threads", make_sum(rank)))

    threads = [threading.Thread(target=body, args=(rank,)) for rank in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_gather_sum_and_agreement_across_processes():
    texts = {i: f"tëxt {i} ✓ «{'x' * i}»" for i in range(11)}

    def work(world):
        mine = {i: texts[i] for i in world.shard(sorted(texts))}
        return world.gather(mine), world.all_agree(world.rank < 2), world.all_agree(True), list(world.sum([1.5, 2]))

    for size in (2, 3):
        for gathered, some, every, total in threads_as_processes(size, work):
            assert gathered == texts
            assert some is (size == 2) and every is True
            assert total == [1.5 * size, 2 * size]



def test_the_launcher_decides_the_back_end(monkeypatch):
    from mlx_whisper_lora.errors import UserError
    from mlx_whisper_lora.tuner.distributed import backend_for_launcher, launcher

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "TORCHELASTIC_RUN_ID", "MLX_RANK", "OMPI_COMM_WORLD_SIZE",
                 "MLX_JACCL_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    assert launcher() is None and backend_for_launcher("auto") is None
    monkeypatch.setenv("MLX_RANK", "1")
    assert launcher() == "mlx.launch" and backend_for_launcher("auto") == "mlx"
    with pytest.raises(UserError, match="started by mlx.launch.*--backend is torch"):
        backend_for_launcher("torch")
    monkeypatch.delenv("MLX_RANK")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launcher() == "torchrun" and backend_for_launcher("torch") == "torch"
    with pytest.raises(UserError, match="torchrun"):
        backend_for_launcher("mlx")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process is a plain run
    assert launcher() is None


def test_shares_cover_every_batch_once_and_stay_balanced():
    from mlx_whisper_lora.tuner.distributed import World

    batch = list(range(10, 21))
    for size in (1, 2, 3, 4):
        shares = [World(rank, size).shard(batch) for rank in range(size)]
        assert sorted(i for share in shares for i in share) == batch
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_the_token_count_is_the_loss_mask():
    from mlx_whisper_lora.data.labels import Label, collate

    labels = [Label([1, 2, 3, 4], 1), Label([1, 2, 3, 4, 5, 6], 2)]
    assert collate(labels, pad_token=0)[2].sum() == sum(lab.target_count for lab in labels) == 7
