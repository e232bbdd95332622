"""
Images for nanoAE: each split loaded once into one uint8 tensor on the training device.

    data = load_data("mnist", "./data", "cpu")
    x = data.train_batch(idx)          # (B, C, H, W) float in [0, 1]

Why not a DataLoader: for 28x28 and 32x32 images, decoding and collating one sample at a time costs
more than the model's step. The whole split fits in memory (MNIST's 60000 images are 47 MB as uint8),
so a batch is a slice of a shuffled index, and augmentation runs on the whole batch on the device.
torchvision reads the files; nothing here decodes a format by hand.
"""
import dataclasses
import gzip
import math
import os
import shutil
import tempfile
import time

import torch
import torch.nn.functional as F

DIGITS = [str(i) for i in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# name -> (torchvision class name, channels, size, class names, colour jitter, folder under --data-dir)
DATASETS = {
    "mnist": ("MNIST", 1, 28, DIGITS, False, "MNIST/raw"),
    "fashion-mnist": ("FashionMNIST", 1, 28, FASHION, False, "FashionMNIST/raw"),
    "cifar10": ("CIFAR10", 3, 32, CIFAR, False, "cifar-10-batches-py"),
    "cifar10-jitter": ("CIFAR10", 3, 32, CIFAR, True, "cifar-10-batches-py"),
    # your own images: channels and size are what --channels and --image-size ask for
    "folder": ("ImageFolder", 3, 32, None, False, ""),
}
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist


def image_shape(dataset, image_channels=None, image_size=None):
    """(channels, size) of the images: the dataset's own, or what --channels/--image-size ask of a folder."""
    _, channels, size, _, _, _ = DATASETS[dataset]
    return image_channels or channels, image_size or size


class RunError(Exception):
    """Something the user can fix (a missing dataset, a damaged checkpoint, a run directory already in
    use): reported in one line, no stack trace. Stack traces are for bugs."""


# -----------------------------------------------------------------------------
# loading


def copy_debian_fashion_mnist(data_dir):
    """Unpack Debian's gzipped Fashion-MNIST where torchvision looks for it, if it is installed."""
    raw = os.path.join(data_dir, "FashionMNIST", "raw")
    if not os.path.isdir(DEBIAN_FASHION_MNIST):
        return
    for name in os.listdir(DEBIAN_FASHION_MNIST):
        target = os.path.join(raw, name.removesuffix(".gz"))
        if name.endswith("-ubyte.gz") and not os.path.exists(target):
            os.makedirs(raw, exist_ok=True)
            # a temporary file of this call's own: two runs started together both unpack, and each
            # rename then puts a whole file in place, never the other's half-written one
            fd, tmp = tempfile.mkstemp(dir=raw, suffix=".tmp")
            with gzip.open(os.path.join(DEBIAN_FASHION_MNIST, name)) as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(tmp, 0o644)  # mkstemp's file is private; the dataset is for every user
            os.replace(tmp, target)


def missing_dataset_message(dataset, data_dir, folder):
    where = os.path.join(os.path.abspath(data_dir), folder)
    if os.path.isdir(where) and os.listdir(where):  # files there, but torchvision refused them
        return (f"{dataset}: torchvision could not read the files in {where}/ (incomplete or damaged: "
                f"a checksum or size does not match) and could not download them (offline?); "
                f"replace them with the original files")
    hint = " (or: apt-get install dataset-fashion-mnist)" if dataset == "fashion-mnist" else ""
    return (f"{dataset} is not in {os.path.abspath(data_dir)} and could not be downloaded (offline?). "
            f"Put torchvision's files in {where}/ or pass --data-dir{hint}.")


def load_split(dataset, data_dir, train):
    """Images (N, C, H, W) uint8 and labels (N,) int64 of one split, through torchvision."""
    import torchvision  # imported here so that importing this file for its helpers stays light

    class_name, channels, size, _, _, folder = DATASETS[dataset]
    if dataset == "fashion-mnist":
        copy_debian_fashion_mnist(data_dir)
    cls = getattr(torchvision.datasets, class_name)
    try:
        ds = cls(data_dir, train=train)
    except RuntimeError:  # files missing or damaged: try to download them once
        try:
            ds = cls(data_dir, train=train, download=True)
        except Exception:
            raise RunError(missing_dataset_message(dataset, data_dir, folder)) from None
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)  # (N, C, H, W)
    assert images.shape[1:] == (channels, size, size), images.shape
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def available_memory():
    """Bytes of memory this process can still take: Linux's MemAvailable, else the machine's total, else
    None (unknown: nothing is checked)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts in KiB
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return None


def check_memory(n_images, channels, image_size, root, batch_images=64):
    """Refuse, before any file is opened, a folder whose images cannot fit in memory at this size.

    Reading holds each image once as it is read and once more in the stacked split (2 bytes a value as
    uint8), and a batch of up to batch_images images (train.py's default batch) is made float, 4 bytes a
    value, for the model.
    """
    values = channels * image_size * image_size
    needed = 2 * n_images * values + 4 * min(n_images, batch_images) * values
    available = available_memory()
    if available is not None and needed > available:
        raise RunError(f"{root}: {n_images} images of {channels}x{image_size}x{image_size} need about "
                       f"{needed / 2 ** 30:.1f} GiB of memory, and {available / 2 ** 30:.1f} GiB is available: "
                       f"use a smaller --image-size or fewer images")


def read_image_folder(root, image_size, channels):
    """Images (N, C, S, S) uint8, labels (N,) and class names of an ImageFolder tree, root/<class>/<file>.

    torchvision's ImageFolder finds the classes (sorted folder names) and the image files; each file is
    then read once, converted to grey or RGB and resized to S x S (squashed, not cropped). A file that
    cannot be read is named and skipped.
    """
    import torchvision
    from PIL import Image

    layout = f"--dataset folder needs one sub-folder per class, e.g. {os.path.join(root, 'cats', '001.png')}"
    if not os.path.isdir(root):
        raise RunError(f"{root} is not a folder: {layout}")
    try:
        folder = torchvision.datasets.ImageFolder(root)  # lists classes and files, reads no image yet
    except FileNotFoundError as e:  # no class folder, or no image file in any
        raise RunError(f"{root}: {str(e).rstrip('.')}. {layout}") from None
    check_memory(len(folder.samples), channels, image_size, root)
    resize = torchvision.transforms.Resize((image_size, image_size), antialias=True)
    images, labels, skipped = [], [], 0
    last_print = time.time()
    for i, (path, label) in enumerate(folder.samples):
        try:
            with Image.open(path) as image:
                image = resize(image.convert("L" if channels == 1 else "RGB"))
        except (OSError, ValueError) as e:  # truncated, not an image, an unknown format
            print(f"  skipped {path}: {e}")
            skipped += 1
            continue
        images.append(torchvision.transforms.functional.pil_to_tensor(image))  # (C, S, S) uint8
        labels.append(label)
        if time.time() - last_print > 2:
            print(f"  {root}: {i + 1}/{len(folder.samples)} files read", flush=True)
            last_print = time.time()
    print(f"  {root}: {len(images)} images in {len(folder.classes)} classes"
          + (f", {skipped} unreadable files skipped" if skipped else ""), flush=True)
    if not images:
        raise RunError(f"{root}: none of the {skipped} image files could be read")
    return torch.stack(images), torch.tensor(labels, device="cpu"), folder.classes


def load_folder(data_dir, image_size, channels, seed):
    """train/ and test/ inside data_dir when both are there; otherwise one tree split 90/10 by the seed."""
    train_dir, test_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "test")
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        train_x, train_y, classes = read_image_folder(train_dir, image_size, channels)
        test_x, test_y, test_classes = read_image_folder(test_dir, image_size, channels)
        if test_classes != classes:
            raise RunError(f"{train_dir} and {test_dir} have different class folders: {classes} vs {test_classes}")
        return train_x, train_y, test_x, test_y, classes
    x, y, classes = read_image_folder(data_dir, image_size, channels)
    if len(x) < 2:
        raise RunError(f"{data_dir}: one image cannot be split into training and test images")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed), device="cpu")
    test, train = perm[:max(1, len(x) // 10)], perm[max(1, len(x) // 10):]
    return x[train], y[train], x[test], y[test], classes


# -----------------------------------------------------------------------------
# images as floats, and colour jitter: whole batches on the device, one random draw per image


def to_float(images_uint8):
    """uint8 images (values 0..255) -> a new float tensor in [0, 1]; the input is left as it is."""
    return images_uint8.float() / 255


def add_noise(x, std, generator=None):
    """Gaussian noise of standard deviation std on images in [0, 1], clipped: the noisy image is still one."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + std * noise).clamp(0, 1)


def color_jitter(x, generator=None):
    """Colour jitter drawn independently for each image of a (B, 3, H, W) batch in [0, 1].

    Brightness, contrast and saturation factors in [0.5, 1.5], hue shift in [-0.1, 0.1] of a turn,
    as torchvision's ColorJitter(0.5, 0.5, 0.5, 0.1) but vectorised over the batch on the device.
    The hue shift is a rotation of the colour plane of YIQ space, which turns hues the way an HSV
    shift does without leaving the device or looping over images.
    """
    B = x.shape[0]
    u = torch.rand(B, 4, 1, 1, generator=generator, device=x.device)  # one draw per image and factor
    brightness, contrast, saturation = 0.5 + u[:, 0:1], 0.5 + u[:, 1:2], 0.5 + u[:, 2:3]
    hue = (u[:, 3:4] - 0.5) * 0.2
    gray_weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)

    x = (x * brightness).clamp(0, 1)
    gray_mean = (x * gray_weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = (contrast * x + (1 - contrast) * gray_mean).clamp(0, 1)
    gray = (x * gray_weights).sum(1, keepdim=True)  # (B, 1, H, W)
    x = (saturation * x + (1 - saturation) * gray).clamp(0, 1)

    rgb_to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                              device=x.device)
    yiq = torch.einsum("ij,bjhw->bihw", rgb_to_yiq, x)
    angle = 2 * math.pi * hue.view(B)
    cos, sin = angle.cos().view(B, 1, 1), angle.sin().view(B, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(rgb_to_yiq), yiq).clamp(0, 1)


# -----------------------------------------------------------------------------
# the data of a run


@dataclasses.dataclass
class Data:
    train_x: torch.Tensor   # (N, C, H, W) uint8 on the device
    train_y: torch.Tensor   # (N,) int64
    test_x: torch.Tensor    # (M, C, H, W) uint8; for cifar10-jitter already jittered, fixed by the seed
    test_y: torch.Tensor
    jitter: bool            # apply fresh colour jitter to every training batch
    classes: list           # class names, for figures

    def train_batch(self, idx):
        x = to_float(self.train_x[idx])
        return color_jitter(x) if self.jitter else x


def load_data(dataset, data_dir, device, train_size=0, seed=0, image_size=32, channels=3):
    """The training and test images of a dataset on the device; image_size and channels are for 'folder'."""
    t0 = time.time()
    _, _, _, classes, jitter, _ = DATASETS[dataset]
    if dataset == "folder":
        train_x, train_y, test_x, test_y, classes = load_folder(data_dir, image_size, channels, seed)
    else:
        train_x, train_y = load_split(dataset, data_dir, train=True)
        test_x, test_y = load_split(dataset, data_dir, train=False)
    if train_size:
        train_x, train_y = train_x[:train_size], train_y[:train_size]
    train_x, train_y, test_x, test_y = (t.to(device) for t in (train_x, train_y, test_x, test_y))
    if jitter:  # the test set is jittered once, by a generator of its own, so evaluation repeats
        g = torch.Generator(device=device).manual_seed(seed)
        jittered = [color_jitter(to_float(test_x[i:i + 1000]), g) for i in range(0, len(test_x), 1000)]
        test_x = (torch.cat(jittered) * 255).round().to(torch.uint8)
    print(f"data: {dataset}, {len(train_x)} train / {len(test_x)} test images {tuple(train_x.shape[1:])} on "
          f"{device} in {time.time() - t0:.1f}s")
    return Data(train_x, train_y, test_x, test_y, jitter, classes)


def batches(n, batch_size):
    """Slices 0:b, b:2b, ... covering range(n); the last one may be shorter."""
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))


@torch.no_grad()
def in_batches(function, x, batch_size=500):
    """function(x) for a large x, batch_size rows at a time, concatenated."""
    return torch.cat([function(x[s]) for s in batches(len(x), batch_size)])


# -----------------------------------------------------------------------------
# which test images a figure shows: every class in turn


def rank_in_class(labels):
    """For each test image, how many images of its class come before it: (N,) -> (N,)."""
    onehot = F.one_hot(labels.cpu())
    return (onehot.cumsum(0) * onehot).sum(1) - 1


def class_indices(labels, n):
    """Indices of n test images, one class after another (0, 1, 2, ..., 0, 1, ...): a row shows every class."""
    labels = labels.cpu()
    return torch.argsort(rank_in_class(labels) * (int(labels.max()) + 1) + labels)[:n]


def balanced_indices(labels, per_class):
    """The first per_class test images of every class (fewer where a class has fewer), class by class."""
    first = torch.nonzero(rank_in_class(labels) < per_class).flatten()
    return first[torch.argsort(labels.cpu()[first], stable=True)]


def test_images(data, idx):
    """Test images idx (a tensor of indices, or a count: the first ones) as floats in [0, 1]: (n, C, H, W)."""
    if isinstance(idx, int):
        idx = torch.arange(min(idx, len(data.test_x)), device=data.test_x.device)
    return to_float(data.test_x[idx.to(data.test_x.device)])


def shown_images(data, n=8):
    """n test images for a figure, one class after another, and their class names."""
    idx = class_indices(data.test_y, n)
    return test_images(data, idx), [data.classes[y] for y in data.test_y.cpu()[idx]]
