"""data.py: loading torchvision's files into uint8 tensors, and the batch augmentations."""
import gzip
import os
import shutil
import threading

import pytest
import torch

from conftest import make_image_folder
import data
from data import RunError, color_jitter, load_data, to_float




@pytest.mark.parametrize("dataset,shape", [("mnist", (1, 28, 28)), ("fashion-mnist", (1, 28, 28)),
                                           ("cifar10", (3, 32, 32)), ("cifar10-jitter", (3, 32, 32))])
def test_load_data_reads_torchvision_files(data_dir, dataset, shape):
    data = load_data(dataset, data_dir, "cpu", seed=0)
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape[1:] == shape
    assert len(data.train_x) in (64, 80) and len(data.test_x) in (32, 16)
    assert data.train_y.dtype == torch.long and 0 <= data.train_y.min() and data.train_y.max() < 10
    assert len(data.classes) == 10


def test_two_runs_unpacking_debian_fashion_mnist_at_once_both_succeed(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    debian.mkdir()
    content = bytes(range(256)) * 64
    with gzip.open(debian / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(content)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", str(debian))
    # both runs are in the middle of writing the file when either of them finishes
    both_copying = threading.Barrier(2, timeout=10)

    real_copy = shutil.copyfileobj

    def copy_then_wait(src, dst):
        real_copy(src, dst)
        both_copying.wait()

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_wait)
    errors = []

    def unpack():
        try:
            data.copy_debian_fashion_mnist(str(tmp_path / "runs"))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=unpack) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    raw = tmp_path / "runs" / "FashionMNIST" / "raw"
    assert (raw / "train-images-idx3-ubyte").read_bytes() == content
    assert os.listdir(raw) == ["train-images-idx3-ubyte"]  # no temporary file left behind


def test_train_size_takes_the_first_images(data_dir):
    full = load_data("mnist", data_dir, "cpu")
    part = load_data("mnist", data_dir, "cpu", train_size=10)
    assert torch.equal(part.train_x, full.train_x[:10])


def test_jittered_test_set_is_fixed_by_the_seed(data_dir):
    plain = load_data("cifar10", data_dir, "cpu")
    a = load_data("cifar10-jitter", data_dir, "cpu", seed=0)
    b = load_data("cifar10-jitter", data_dir, "cpu", seed=0)
    c = load_data("cifar10-jitter", data_dir, "cpu", seed=1)
    assert torch.equal(a.test_x, b.test_x)
    assert not torch.equal(a.test_x, c.test_x) and not torch.equal(a.test_x, plain.test_x)


def test_color_jitter_differs_per_image_and_stays_in_range():
    x = torch.rand(1, 3, 8, 8).expand(16, 3, 8, 8)  # the same image sixteen times
    y = color_jitter(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    per_image_mean = y.mean((1, 2, 3))
    assert per_image_mean.std() > 0.02  # brightness alone moves the mean by up to +-50%
    assert len(torch.unique(per_image_mean)) == 16


def test_color_jitter_hue_only_keeps_gray_gray():
    """A hue rotation moves colours around the gray axis: a gray image must stay (nearly) gray."""
    gray = torch.full((8, 3, 4, 4), 0.5)
    y = color_jitter(gray, torch.Generator().manual_seed(0))
    assert (y.max(1).values - y.min(1).values).max() < 1e-5


def shifted(image, dy, dx):
    """image moved dy rows down and dx columns right, zeros coming in: the reference for the augmentation."""
    out = torch.zeros_like(image)
    H, W = image.shape[-2:]
    out[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        image[..., max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return out


def test_to_float_leaves_its_input_alone():
    images = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    assert torch.allclose(to_float(images), torch.tensor([[0.0, 0.2, 1.0]]))
    x = torch.tensor([0.5, 1.0])
    y = to_float(x)
    assert torch.equal(x, torch.tensor([0.5, 1.0])) and y is not x  # the caller's tensor is not divided


def test_folder_is_split_90_10_by_the_seed_and_resized(tmp_path):
    root = make_image_folder(tmp_path / "shapes", n_per_class=20)
    data = load_data("folder", root, "cpu", seed=0, image_size=28, channels=1)
    assert data.classes == ["bars", "discs"]
    assert data.train_x.shape == (36, 1, 28, 28) and data.test_x.shape == (4, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8 and data.train_x.max() > 0
    again = load_data("folder", root, "cpu", seed=0, image_size=28, channels=1)
    other = load_data("folder", root, "cpu", seed=1, image_size=28, channels=1)
    assert torch.equal(data.test_x, again.test_x) and not torch.equal(data.test_x, other.test_x)
    # every image lands in exactly one split
    both = torch.cat([data.train_x, data.test_x]).flatten(1)
    assert len(torch.unique(both, dim=0)) == 40


def test_folder_with_train_and_test_uses_them(tmp_path):
    make_image_folder(tmp_path / "train", n_per_class=6, seed=0)
    make_image_folder(tmp_path / "test", n_per_class=3, seed=1)
    data = load_data("folder", str(tmp_path), "cpu", image_size=16, channels=3)
    assert data.train_x.shape == (12, 3, 16, 16) and data.test_x.shape == (6, 3, 16, 16)
    assert data.test_y.tolist() == [0, 0, 0, 1, 1, 1]


def test_unreadable_files_are_named_and_skipped(tmp_path, capsys):
    root = make_image_folder(tmp_path / "shapes", n_per_class=5)
    with open(os.path.join(root, "discs", "broken.png"), "wb") as f:
        f.write(b"not a png")
    data = load_data("folder", root, "cpu", image_size=16)
    assert len(data.train_x) + len(data.test_x) == 10
    out = capsys.readouterr().out
    assert "skipped" in out and "broken.png" in out and "1 unreadable files skipped" in out


@pytest.mark.parametrize("make", ["missing", "empty", "no images"])
def test_a_folder_without_images_is_one_clear_error(tmp_path, make):
    root = tmp_path / "mine"
    if make != "missing":
        root.mkdir()
    if make == "no images":
        (root / "cats").mkdir()
        (root / "cats" / "notes.txt").write_text("hello")
    with pytest.raises(RunError, match="mine") as error:
        load_data("folder", str(root), "cpu")
    assert "\n" not in str(error.value)


def test_cifar_files_that_fail_the_checksum_say_so(tmp_path):
    """Files are there but torchvision's md5 check refuses them: the message says that, not 'missing'."""
    from conftest import make_cifar10
    make_cifar10(str(tmp_path))  # tiny files: right names, wrong checksums
    with pytest.raises(RunError, match="could not read the files in .*cifar-10-batches-py.*checksum") as error:
        load_data("cifar10", str(tmp_path), "cpu")
    assert "is not in" not in str(error.value)


def test_a_folder_too_big_for_memory_is_refused_before_any_file_is_opened(tmp_path, monkeypatch):
    """40 images at 30000x30000 RGB are 108 GB: refused from the file count alone, naming memory."""
    root = make_image_folder(tmp_path / "shapes", n_per_class=20)
    import PIL.Image

    def no_open(*args, **kwargs):
        raise AssertionError("an image was opened before the memory check")
    monkeypatch.setattr(PIL.Image, "open", no_open)
    monkeypatch.setattr(data, "available_memory", lambda: 16 * 2 ** 30)
    with pytest.raises(RunError) as error:
        load_data("folder", root, "cpu", image_size=30000, channels=3)
    message = str(error.value)
    assert "40 images of 3x30000x30000" in message and "memory" in message and "16.0 GiB" in message
    assert "--image-size" in message and "\n" not in message


def test_a_folder_that_fits_is_read(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "shapes", n_per_class=5, size=20)
    monkeypatch.setattr(data, "available_memory", lambda: 2 * 10 * 3 * 16 * 16 + 4 * 10 * 3 * 16 * 16)  # just enough
    assert len(load_data("folder", root, "cpu", image_size=16, channels=3).train_x) == 9
    monkeypatch.setattr(data, "available_memory", lambda: 2 * 10 * 3 * 16 * 16)  # one float batch short
    with pytest.raises(RunError, match="memory"):
        load_data("folder", root, "cpu", image_size=16, channels=3)
