"""Tiny datasets in the exact file formats torchvision reads, so tests go through the real loading code."""
import gzip
import os
import pickle
import struct
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread: the tests' models are small, and on a 2-core machine two threads spend
    more time waiting on each other than computing (tens of times slower under any other load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_idx(path, array):
    """IDX file: magic (0, 0, type 0x08 = ubyte, number of dims), then each dim as big-endian int32."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def smooth_images(rng, n, channels, size):
    """Blurry blobs rather than white noise: something an autoencoder can actually learn."""
    coarse = rng.random((n, channels, size // 4, size // 4))
    images = coarse.repeat(4, axis=2).repeat(4, axis=3)
    return (images * 255).astype(np.uint8)


def make_mnist_like(root, folder, n_train=64, n_test=32, seed=0):
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), smooth_images(rng, n, 1, 28)[:, 0])
        write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), rng.integers(0, 10, n))


def make_cifar10(root, n_per_batch=16, seed=0):
    """cifar-10-batches-py: five training batches, a test batch and the meta file, pickled dicts."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = smooth_images(rng, n_per_batch, 3, 32).reshape(n_per_batch, 3 * 32 * 32)  # rows of R, G, B planes
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": images, "labels": rng.integers(0, 10, n_per_batch).tolist()}, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                     "dog", "frog", "horse", "ship", "truck"]}, f)


def make_image_folder(root, classes=("bars", "discs"), n_per_class=20, size=40, seed=0):
    """root/<class>/<i>.png: colour PNGs of bars and discs at random places, ImageFolder's layout."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for label, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(n_per_class):
            cx, cy = rng.integers(size // 4, 3 * size // 4, 2)
            shape = (abs(xx - cx) < 3) & (abs(yy - cy) < 12) if label % 2 == 0 else (xx - cx) ** 2 + (yy - cy) ** 2 < 64
            image = np.zeros((size, size, 3), np.uint8)
            image[shape] = rng.integers(80, 256, 3)
            Image.fromarray(image).save(os.path.join(root, name, f"{i:03d}.png"))
    return str(root)


def tiny_datasets(root, monkeypatch):
    """Write tiny MNIST, Fashion-MNIST and CIFAR-10 under root; returns root as a --data-dir.

    torchvision checks CIFAR-10 files against the real files' md5 sums, which tiny files cannot
    match; the check is replaced by one that the files exist. Everything else is the real code.
    """
    import torchvision.datasets.cifar
    root = str(root)
    make_mnist_like(root, "MNIST", seed=1)
    make_mnist_like(root, "FashionMNIST", seed=2)
    make_cifar10(root, seed=3)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    monkeypatch.setattr("data.DEBIAN_FASHION_MNIST", os.path.join(root, "no-debian-here"))
    return root


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    return tiny_datasets(tmp_path, monkeypatch)


def fashion_mnist_images(split, n):
    """The first n real Fashion-MNIST images ('train' or 't10k') as floats in [0, 1]: (n, 1, 28, 28).

    Read straight from Debian's gzipped IDX file (16-byte header, then one byte per pixel), so model
    tests need not go through train.py.
    """
    path = os.path.join(DEBIAN_FASHION_MNIST, f"{split}-images-idx3-ubyte.gz")
    with gzip.open(path) as f:
        pixels = np.frombuffer(f.read(16 + n * 28 * 28), dtype=np.uint8, offset=16)
    return torch.from_numpy(pixels.astype(np.float32) / 255).view(n, 1, 28, 28)


needs_fashion_mnist = pytest.mark.skipif(
    not os.path.exists(os.path.join(DEBIAN_FASHION_MNIST, "train-images-idx3-ubyte.gz")),
    reason="real Fashion-MNIST absent (apt-get install dataset-fashion-mnist)")


# real MNIST digits for the tests that show models learn at default flags (4000 train / 1000 test, in
# torchvision's layout): shared/data/mnist-dev beside the project, or wherever NANOAE_MNIST_DEV points
MNIST_DEV = os.environ.get("NANOAE_MNIST_DEV", os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "data", "mnist-dev"))

needs_mnist_dev = pytest.mark.skipif(
    not os.path.exists(os.path.join(MNIST_DEV, "MNIST", "raw", "train-images-idx3-ubyte")),
    reason=f"real MNIST digits absent ({MNIST_DEV})")


# -----------------------------------------------------------------------------
# every tensor on the run's device

PROJECT_FILES = {os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name) for name in (
    "ae.py", "dae.py", "vae.py", "mcae.py", "mae.py", "metrics.py", "data.py", "runs.py", "train.py", "analyze.py",
    "figures.py")}
FACTORIES = {"rand", "randn", "randint", "randperm", "linspace", "logspace", "arange", "zeros", "ones", "full",
             "empty", "eye", "tensor"}


class FactoryWatch(torch.overrides.TorchFunctionMode):
    """Records every tensor factory (torch.rand, torch.zeros, torch.linspace, ...) that nanoAE's own files call
    without a device: on a GPU run such a tensor lands on the CPU, and mixing it with the run's tensors fails.
    Factories inside a module's __init__ are left alone (parameters and buffers move with .to(device)); a
    tensor meant for the CPU says device="cpu". `found`: 'file:line function()' of each."""

    def __init__(self):
        super().__init__()
        self.found = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in FACTORIES and kwargs.get("device") is None:
            caller = sys._getframe(1)
            if caller.f_code.co_filename in PROJECT_FILES and not self.in_module_init(caller):
                self.found.add(f"{os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno} "
                               f"torch.{func.__name__}()")
        return func(*args, **kwargs)

    @staticmethod
    def in_module_init(frame):
        while frame is not None:
            if frame.f_code.co_name == "__init__" and isinstance(frame.f_locals.get("self"), torch.nn.Module):
                return True
            frame = frame.f_back
        return False
