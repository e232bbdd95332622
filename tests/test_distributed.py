"""torchrun: two processes with gloo on the CPU train the same model as one process with the same batch."""
import json
import os
import subprocess
import sys

import pytest
import torch

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(*flags, processes=2):
    """train.py under `torchrun --standalone --nproc_per_node N`, one CPU thread per process."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={processes}", "train.py", "--device", "cpu", *flags],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_two_processes_train_what_one_process_trains(data_dir, tmp_path):
    """The MLP AE (LayerNorm, no random corruption): each process takes half of every batch of 32 and DDP
    averages the gradients, so the weights match one process; --resume under torchrun goes on from there."""
    flags = ["--model", "ae", "--arch", "mlp", "--dataset", "mnist", "--data-dir", data_dir,
             "--batch-size", "32", "--eval", "knn"]
    train.main([*flags, "--device", "cpu", "--epochs", "2", "--out-dir", str(tmp_path / "one")])
    first = torchrun(*flags, "--epochs", "2", "--out-dir", str(tmp_path / "two"))
    assert first.count("epoch 1/2 |") == 1  # rank 0 alone prints

    one = torch.load(tmp_path / "one" / "ckpt.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "ckpt.pt", weights_only=True)
    assert one["epoch"] == two["epoch"] == 2
    for key, value in one["model"].items():
        assert torch.allclose(value, two["model"][key], atol=1e-5), key
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two")]
    assert results[0]["knn_acc"] == results[1]["knn_acc"]
    assert results[0]["psnr"] == pytest.approx(results[1]["psnr"], abs=1e-3)
    resumed = torchrun(*flags, "--epochs", "3", "--out-dir", str(tmp_path / "two"), "--resume")
    assert "resumed from" in resumed and resumed.count("epoch 3/3 |") == 1
    assert torch.load(tmp_path / "two" / "ckpt.pt", weights_only=True)["epoch"] == 3


@pytest.mark.parametrize("model_flags", [["--model", "dae"], ["--model", "mcae", "--mask-type", "block"],
                                         ["--model", "mae", "--embed-dim", "32", "--depth", "1"]])
def test_noisy_and_masked_models_train_under_torchrun(data_dir, tmp_path, model_flags):
    out = tmp_path / "run"
    torchrun(*model_flags, "--dataset", "mnist", "--data-dir", data_dir, "--epochs", "1", "--batch-size", "32",
             "--eval", "", "--out-dir", str(out))
    assert (out / "ckpt.pt").exists() and (out / "results.json").exists()
    assert len((out / "log.jsonl").read_text().splitlines()) == 1  # one writer
