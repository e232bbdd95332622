"""One run, one directory: while a run lives, a second run on its --out-dir (fresh, --overwrite, --resume,
under torchrun) stops in one line naming it and touches nothing; the lock dies with the run, kill -9 too."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "ae", "--arch", "mlp", "--hidden", "16", "--latent-dim", "4", "--dataset", "mnist",
        "--batch-size", "32", "--eval", ""]


def train_command(data_dir, out, *flags):
    return [sys.executable, "train.py", *TINY, "--data-dir", data_dir, "--out-dir", str(out), *flags]


def wait_for(condition, what, timeout=120):
    t0 = time.time()
    while not condition():
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def epochs_logged(out):
    path = out / "log.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def live_run(data_dir, tmp_path):
    """A run that outlives the test's other runs (thousands of epochs of the tiny data), killed at the end."""
    out = tmp_path / "run"
    process = subprocess.Popen(train_command(data_dir, out, "--epochs", "100000"), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    # the lock is the first thing a run takes: from then on the directory is this run's
    wait_for(lambda: (out / ".lock").exists() and "pid" in (out / ".lock").read_text(), "the lock")
    yield process, out
    process.kill()
    process.wait()


@pytest.mark.parametrize("mode", [[], ["--overwrite"], ["--resume"]], ids=["fresh", "overwrite", "resume"])
def test_a_second_run_on_a_live_directory_stops_in_one_line(data_dir, live_run, mode):
    process, out = live_run
    second = subprocess.run(train_command(data_dir, out, "--epochs", "2", *mode), cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
    assert len(second.stderr.strip().splitlines()) <= 3
    assert f"in use by a live run (pid {process.pid}: python train.py" in second.stderr
    assert "epoch" not in second.stdout and "data:" not in second.stdout  # stopped before reading data
    # the live run goes on alone: its log counts its own epochs, once each, and it never wrote results
    wait_for(lambda: len(epochs_logged(out)) >= 3, "three epochs of the live run")
    logged = epochs_logged(out)
    assert logged == list(range(1, len(logged) + 1))
    assert not (out / "results.json").exists() and process.poll() is None


def test_a_second_run_under_torchrun_is_refused_too(data_dir, live_run):
    process, out = live_run
    second = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             *train_command(data_dir, out, "--epochs", "2", "--overwrite", "--device", "cpu")[1:]],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert second.returncode != 0 and f"in use by a live run (pid {process.pid}" in second.stderr
    assert process.poll() is None and not (out / "results.json").exists()


def test_analyze_reads_a_live_run(data_dir, live_run):
    process, out = live_run
    wait_for(lambda: (out / "ckpt.pt").exists(), "a checkpoint")
    result = subprocess.run([sys.executable, "analyze.py", str(out), "--tsne-iters", "50", "--tsne-per-class", "3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (out / "figures" / "reconstructions.png").exists() and process.poll() is None


def test_a_run_killed_hard_leaves_no_lock_behind(data_dir, live_run):
    """kill -9 gives the run no chance to clean up; the operating system drops its lock all the same."""
    process, out = live_run
    wait_for(lambda: len(epochs_logged(out)) >= 2, "two epochs")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = epochs_logged(out)[-1]
    resumed = subprocess.run(train_command(data_dir, out, "--epochs", str(done + 2), "--resume"), cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and (out / "results.json").exists()
    assert epochs_logged(out)[-1] == done + 2
