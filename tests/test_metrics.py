"""
Tests for metrics.py: each metric against a hand computation and against the library that defines it
(scikit-image for PSNR/SSIM, scikit-learn for t-SNE, silhouette and k-NN), and each fast variant
(tsne_fast) against its textbook twin; the probes against scikit-learn's. CPU only, offline.
"""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity
from sklearn.datasets import load_digits, make_blobs, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE, trustworthiness
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from conftest import fashion_mnist_images, needs_fashion_mnist
import metrics



def smooth_images(n, channels, size, seed=0):
    """Images that look like images: random low-resolution shapes upsampled, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1).double()


def degrade(x, seed=1):
    """A plausible reconstruction of x: blurred a little, with noise."""
    g = torch.Generator().manual_seed(seed)
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return (blurred + 0.05 * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)


def skimage_ssim(recon, target):
    return np.array([structural_similarity(r, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                           data_range=1.0, channel_axis=0)
                     for r, t in zip(recon.numpy(), target.numpy())])


# -----------------------------------------------------------------------------
# reconstruction metrics


def test_mse_l1_psnr_by_hand():
    target = torch.full((2, 1, 4, 4), 0.5)
    recon = target.clone()
    recon[0] = 0.0      # every pixel off by 0.5
    recon[1, 0, 0, 0] = 1.0  # one pixel in 16 off by 0.5
    assert torch.allclose(metrics.mse(recon, target), torch.tensor([0.25, 0.25 / 16]))
    assert torch.allclose(metrics.l1(recon, target), torch.tensor([0.5, 0.5 / 16]))
    assert torch.allclose(metrics.psnr(recon, target), torch.tensor([10 * math.log10(4), 10 * math.log10(64)]))
    assert torch.allclose(metrics.psnr(target, target), torch.tensor(100.0))  # eps keeps a perfect match finite


def test_mse_psnr_match_skimage():
    target = smooth_images(8, 3, 32)
    recon = degrade(target)
    ours_mse, ours_psnr = metrics.mse(recon, target), metrics.psnr(recon, target)
    for i in range(len(target)):
        t, r = target[i].numpy(), recon[i].numpy()
        assert ours_mse[i].item() == pytest.approx(mean_squared_error(t, r), rel=1e-12)
        assert ours_psnr[i].item() == pytest.approx(peak_signal_noise_ratio(t, r, data_range=1.0), abs=1e-6)


# -----------------------------------------------------------------------------
# SSIM

@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32])
def test_ssim_matches_skimage(channels, size):
    ssim = metrics.ssim
    target = smooth_images(6, channels, size)
    recon = degrade(target)
    ours = ssim(recon, target)
    assert ours.shape == (6,)
    assert np.allclose(ours.numpy(), skimage_ssim(recon, target), atol=1e-5, rtol=0)
    # float32 inputs give the same numbers: the window sums run in float64 either way
    assert np.allclose(ssim(recon.float(), target.float()).numpy(), skimage_ssim(recon, target),
                       atol=1e-5, rtol=0)


@needs_fashion_mnist
def test_ssim_matches_skimage_on_fashion_mnist():
    target = fashion_mnist_images("t10k", 300).double()
    recon = degrade(target)
    assert np.allclose(metrics.ssim(recon, target).numpy(), skimage_ssim(recon, target), atol=1e-5, rtol=0)


def test_ssim_maps_multiply_to_ssim():
    """The worked example's two factors: luminance x contrast-structure, averaged, is SSIM."""
    target = smooth_images(3, 1, 28)
    recon = degrade(target)
    luminance, contrast_structure = metrics.ssim_maps(recon, target)
    assert luminance.shape == contrast_structure.shape == (3, 1, 18, 18)
    assert torch.allclose((luminance * contrast_structure).mean((1, 2, 3)), metrics.ssim(recon, target))
    assert (luminance <= 1 + 1e-12).all()


def test_ssim_of_identical_images_is_one():
    ssim = metrics.ssim
    x = smooth_images(4, 3, 32)
    assert torch.allclose(ssim(x, x), torch.ones(4, dtype=x.dtype), atol=1e-12)
    worse = ssim(degrade(x, seed=2), x)
    assert (worse < 1).all() and (worse > 0).all()


def test_ssim_valid_region_does_not_depend_on_padding():
    # skimage filters with mode='reflect' and crops 5 pixels; after the crop every mode agrees,
    # which is why a convolution without padding reproduces it
    x = smooth_images(1, 1, 28)[0, 0].numpy()
    pad = 5
    crops = [ndimage.gaussian_filter(x, 1.5, truncate=3.5, mode=mode)[pad:-pad, pad:-pad]
             for mode in ("reflect", "constant", "nearest", "mirror", "wrap")]
    for c in crops[1:]:
        assert np.allclose(c, crops[0], atol=1e-14)


def test_ssim_rejects_tiny_images():
    with pytest.raises(ValueError):
        metrics.ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


# -----------------------------------------------------------------------------
# t-SNE


@pytest.fixture
def single_thread():
    """scikit-learn's BLAS threads too (torch's are pinned to one in conftest.py): t-SNE runs thousands
    of small parallel ops, and threads waiting for each other at every op cost more than they save."""
    with threadpool_limits(1):
        yield


@pytest.mark.parametrize("dense", [False, True], ids=["nearest", "all"])
def test_perplexity_search_hits_target_entropy(dense, single_thread):
    x, _ = make_blobs(400, 20, centers=5, random_state=0)
    for perplexity in (5.0, 30.0):
        k = 399 if dense else int(3 * perplexity + 1)
        P, neighbors = metrics.nearest_neighbor_probabilities(torch.from_numpy(x), perplexity,
                                                               n_neighbors=k if dense else None)
        assert P.shape == neighbors.shape == (400, k)
        assert torch.allclose(P.double().sum(1), torch.ones(len(x), dtype=torch.float64), atol=1e-5)
        assert (neighbors != torch.arange(len(x))[:, None]).all()         # nobody is their own neighbour
        entropy = -torch.xlogy(P.double(), P.double()).sum(1)              # nats
        assert (entropy - math.log(perplexity)).abs().max() < 1.1e-5


def test_perplexity_search_matches_sklearn(single_thread):
    from sklearn.manifold import _utils  # private, but it is the reference implementation
    from sklearn.neighbors import NearestNeighbors
    x, _ = make_blobs(300, 10, centers=4, random_state=1)
    k = 91  # scikit-learn's neighbours for perplexity 30
    distances, indices = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(None)  # self excluded
    theirs = _utils._binary_search_perplexity((distances ** 2).astype(np.float32), 30.0, 0)
    P, neighbors = metrics.nearest_neighbor_probabilities(torch.from_numpy(x), 30.0)
    assert np.array_equal(neighbors.numpy(), indices)
    assert np.allclose(P.numpy(), theirs, atol=2e-5)


def dense_joint_probabilities(P_conditional, neighbors):
    """t-SNE's symmetric p_ij = (P(j | i) + P(i | j)) / 2N as an (N, N) matrix, from rows over neighbours."""
    N = len(P_conditional)
    dense = torch.zeros(N, N, dtype=torch.float64)
    dense[torch.arange(N)[:, None], neighbors] = P_conditional.double()
    return (dense + dense.T) / (2 * N)


def kl_divergence(P, Y, exaggeration=1.0):
    """KL(P || Q) = sum_{i != j} p_ij log(p_ij / q_ij), Q from the Student-t kernel on the embedding Y,
    written as sum p log(p / w) + log Z (sum p = 1). With P exaggerated a times, the cost whose gradient
    t-SNE follows early on: a sum p log(p / w) + log Z."""
    off_diagonal = ~torch.eye(len(Y), dtype=torch.bool)
    w = 1 / (1 + ((Y[:, None, :] - Y[None, :, :]) ** 2).sum(2))[off_diagonal]
    p = P[off_diagonal]
    return exaggeration * (torch.xlogy(p, p) - p * w.log()).sum() + w.sum().log()


@pytest.mark.parametrize("exaggeration", [1.0, 12.0])
def test_tsne_gradient_is_the_gradient_of_kl(exaggeration):
    g = torch.Generator().manual_seed(0)
    N = 100
    P = torch.rand(N, N, generator=g, dtype=torch.float64).fill_diagonal_(0)
    P = (P + P.T) / (P + P.T).sum()
    Y = (3 * torch.randn(N, 2, generator=g, dtype=torch.float64)).requires_grad_()
    kl_divergence(P, Y, exaggeration).backward()                           # autograd's gradient
    ours = metrics.tsne_gradient(P, Y.detach(), exaggeration)
    assert torch.allclose(ours, Y.grad, rtol=0, atol=1e-10 * Y.grad.abs().max().item())


@pytest.mark.parametrize("rows", [7, 64, 300])
def test_tsne_gradient_fast_matches_dense(rows, single_thread):
    g = torch.Generator().manual_seed(0)
    N, k = 300, 20
    neighbors = torch.rand(N, N, generator=g).fill_diagonal_(-1).topk(k, 1).indices  # k others per row
    P_conditional = torch.rand(N, k, generator=g)
    P_conditional /= P_conditional.sum(1, keepdim=True)
    Y = 5 * torch.randn(N, 2, generator=g) + 3
    ours = metrics.tsne_gradient_sparse(P_conditional / (2 * N), neighbors, Y, 12.0, rows).double()
    dense = metrics.tsne_gradient(dense_joint_probabilities(P_conditional, neighbors), Y.double(), 12.0)
    assert torch.allclose(ours, dense, rtol=0, atol=1e-5 * dense.abs().max().item())


def test_tsne_as_trustworthy_as_sklearn(single_thread):
    x = load_digits().data[:500].astype(np.float32)
    ours = metrics.tsne_fast(torch.from_numpy(x), perplexity=30.0)
    assert ours.shape == (500, 2) and ours.dtype == np.float32
    theirs = TSNE(n_components=2, perplexity=30.0, init="pca", random_state=0).fit_transform(x)
    t_ours = trustworthiness(x, ours, n_neighbors=10)
    t_theirs = trustworthiness(x, theirs, n_neighbors=10)
    assert t_ours >= t_theirs - 0.01, (t_ours, t_theirs)


both_tsnes = pytest.mark.parametrize("tsne", [metrics.tsne, metrics.tsne_fast], ids=["textbook", "fast"])


def test_tsne_is_deterministic(single_thread):
    x, _ = make_blobs(200, 50, centers=4, random_state=0)
    x = torch.from_numpy(x)
    fast = metrics.tsne_fast(x, n_iter=300)
    assert fast.dtype == np.float32 and np.array_equal(fast, metrics.tsne_fast(x, n_iter=300))
    r1 = metrics.tsne(x, dim=3, n_iter=300, seed=1)
    r2 = metrics.tsne(x, dim=3, n_iter=300, seed=1)
    r3 = metrics.tsne(x, dim=3, n_iter=300, seed=2)
    assert r1.shape == (200, 3) and np.array_equal(r1, r2) and not np.array_equal(r1, r3)


@both_tsnes
def test_tsne_separates_blobs(tsne, single_thread):
    x, y = make_blobs(300, 50, centers=3, cluster_std=1.0, random_state=3)
    emb = tsne(torch.from_numpy(x), perplexity=20.0, n_iter=500)
    assert silhouette_score(emb, y) > 0.7


def test_tsne_fast_agrees_with_textbook(single_thread):
    # 3 blobs of 60 points: tsne_fast keeps P over 91 nearest neighbours, the textbook over all 179
    x, y = make_blobs(180, 50, centers=3, random_state=0)
    x = torch.from_numpy(x)
    textbook, fast = metrics.tsne(x), metrics.tsne_fast(x)
    P = dense_joint_probabilities(*metrics.nearest_neighbor_probabilities(x, 30.0, n_neighbors=179))
    kl_textbook = kl_divergence(P, torch.from_numpy(textbook).double()).item()
    kl_fast = kl_divergence(P, torch.from_numpy(fast).double()).item()
    assert 0 < kl_textbook < 1 and kl_fast == pytest.approx(kl_textbook, rel=0.05)
    for emb in (textbook, fast):
        assert silhouette_score(emb, y) > 0.9
    assert trustworthiness(x.numpy(), fast, n_neighbors=10) == pytest.approx(
        trustworthiness(x.numpy(), textbook, n_neighbors=10), abs=0.01)


@both_tsnes
def test_tsne_rejects_perplexity_above_n(tsne):
    with pytest.raises(ValueError):
        tsne(torch.randn(20, 5), perplexity=30.0)


# -----------------------------------------------------------------------------
# cluster statistics and k-NN


def test_cluster_stats_radius_by_hand():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    x = rng.normal(size=(500, 16)) * (1 + labels[:, None]) + 10 * labels[:, None]  # class c has scale 1 + c
    stats = metrics.cluster_stats(torch.from_numpy(x), torch.from_numpy(labels))
    radius = np.array([np.linalg.norm(x[labels == c] - x[labels == c].mean(0), axis=1).mean() for c in range(4)])
    spread = np.linalg.norm(x - x.mean(0), axis=1).mean()
    assert np.allclose(stats["radius"].numpy(), radius, rtol=1e-10)
    assert stats["spread"] == pytest.approx(spread, rel=1e-10)
    assert np.allclose(stats["relative_radius"].numpy(), radius / spread, rtol=1e-10)
    assert np.all(np.diff(radius) > 0)  # the classes really differ in size
    # a model whose features are 10x larger gets the same relative radius
    scaled = metrics.cluster_stats(torch.from_numpy(10 * x), torch.from_numpy(labels))
    assert np.allclose(scaled["relative_radius"].numpy(), stats["relative_radius"].numpy(), rtol=1e-10)


def test_silhouette_matches_sklearn():
    x, y = make_blobs(700, 8, centers=5, cluster_std=3.0, random_state=0)
    y[0] = 5  # a class of one point: its silhouette is 0
    expected = silhouette_score(x, y, metric="euclidean")
    assert metrics.silhouette(torch.from_numpy(x), torch.from_numpy(y), batch_size=128) == pytest.approx(
        expected, abs=1e-10)
    ours32 = metrics.cluster_stats(torch.from_numpy(x).float(), torch.from_numpy(y))["silhouette"]
    assert ours32 == pytest.approx(expected, abs=1e-5)


def knn_by_hand(train_x, train_y, test_x, k, num_classes):
    """Similarity-weighted vote of the k most cosine-similar training points, in numpy."""
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sim = b @ a.T
    pred = []
    for row in sim:
        top = np.argsort(-row)[:k]
        pred.append(np.bincount(train_y[top], weights=row[top], minlength=num_classes).argmax())
    return np.array(pred)


def test_knn_accuracy_matches_hand_computation():
    # overlapping classes, so neighbours disagree and the weighting matters
    x, y = make_blobs(1200, 16, centers=6, cluster_std=6.0, random_state=0)
    train_x, train_y, test_x, test_y = x[:1000], y[:1000], x[1000:], y[1000:]
    expected = (knn_by_hand(train_x, train_y, test_x, 20, 6) == test_y).mean()
    ours = metrics.knn_accuracy(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
                                torch.from_numpy(test_y), k=20, temperature=None, batch_size=64)
    assert 0.2 < expected < 1.0
    assert ours == pytest.approx(expected, abs=1e-12)
    # DINO's vote: weights exp(similarity / 0.07)
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sim = b @ a.T
    top = np.argsort(-sim, axis=1)[:, :20]
    votes = np.zeros((len(test_x), 6))
    for i, row in enumerate(top):
        np.add.at(votes[i], train_y[row], np.exp(sim[i, row] / 0.07))
    dino = metrics.knn_accuracy(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
                                torch.from_numpy(test_y), k=20)
    assert dino == pytest.approx((votes.argmax(1) == test_y).mean(), abs=1e-12)


def test_knn_accuracy_matches_sklearn_on_separated_classes():
    # well-separated classes: every neighbour agrees, so similarity weights cannot change a vote
    x, y = make_blobs(600, 32, centers=5, cluster_std=0.5, random_state=0)
    x = x - x.mean(0)
    train_x, train_y, test_x, test_y = x[:500], y[:500], x[500:], y[500:]
    sk = KNeighborsClassifier(n_neighbors=20, metric="cosine", weights="uniform").fit(train_x, train_y)
    expected = sk.score(test_x, test_y)
    ours = metrics.knn_accuracy(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
                                torch.from_numpy(test_y), k=20)
    assert ours == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n_features,n_informative", [(20, 10), (300, 30)])
def test_linear_probe_matches_sklearn_logistic_regression(n_features, n_informative):
    """The same classifier as scikit-learn's LogisticRegression (C = 1 / (weight_decay N)) on standardised
    features: test accuracy within a point, on classes hard enough that the probe matters."""
    x, y = make_classification(2500, n_features, n_informative=n_informative, n_classes=5, class_sep=0.8,
                               random_state=0)
    x = x * np.random.default_rng(0).uniform(0.01, 100, n_features)  # features of very different scales
    train_x, train_y, test_x, test_y = x[:2000], y[:2000], x[2000:], y[2000:]
    mean, std = train_x.mean(0), train_x.std(0, ddof=1)
    sk = LogisticRegression(C=1.0, max_iter=5000).fit((train_x - mean) / std, train_y)
    expected = sk.score((test_x - mean) / std, test_y)
    ours = metrics.linear_probe(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
                                torch.from_numpy(test_y))
    assert 0.3 < expected < 0.95
    assert ours == pytest.approx(expected, abs=0.01)


def test_linear_probe_takes_features_straight_from_an_encoder_and_int32_labels():
    """A student's features still attached to their encoder's graph, labels from numpy as int32."""
    x, y = make_blobs(300, 8, centers=3, random_state=0)
    features = torch.nn.Linear(8, 8)(torch.from_numpy(x).float())  # requires grad
    labels = torch.from_numpy(y).int()
    assert metrics.linear_probe(features[:200], labels[:200], features[200:], labels[200:]) > 0.9


def test_knn_accuracy_matches_sklearn_on_real_digits():
    """Well within a point of scikit-learn's cosine k-NN with distance weights on real 8x8 digits."""
    x, y = load_digits(return_X_y=True)
    train_x, train_y, test_x, test_y = x[:1400], y[:1400], x[1400:], y[1400:]
    sk = KNeighborsClassifier(n_neighbors=20, metric="cosine", weights="distance").fit(train_x, train_y)
    ours = metrics.knn_accuracy(*(torch.from_numpy(a) for a in (train_x, train_y, test_x, test_y)), k=20)
    assert ours == pytest.approx(sk.score(test_x, test_y), abs=0.01)


def test_knn_accuracy_with_fewer_training_points_than_k():
    """A tiny training set (a handful of images of your own): every training point votes."""
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    train_y, test_y = torch.tensor([0, 0, 1]), torch.tensor([0, 1])
    assert metrics.knn_accuracy(train_x, train_y, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), test_y, k=20) == 1.0


def test_pca_matches_sklearn():
    """The same subspace, variance order and reconstruction as scikit-learn's PCA on real 8x8 digits (its
    components up to sign; ours fix each sign by the largest loading)."""
    from sklearn.decomposition import PCA
    x = load_digits().data.astype(np.float64) / 16                       # (1797, 64)
    mean, components = metrics.pca(torch.from_numpy(x), 10)
    reference = PCA(n_components=10, svd_solver="full").fit(x)
    assert np.allclose(mean.numpy(), reference.mean_)
    cosines = np.abs(np.sum(components.numpy().T * reference.components_, axis=1))  # |<ours_i, theirs_i>|
    assert np.allclose(cosines, 1, atol=1e-6)
    ours = ((torch.from_numpy(x) - mean) @ components @ components.T + mean).numpy()
    assert np.allclose(ours, reference.inverse_transform(reference.transform(x)), atol=1e-8)
    assert torch.all(components.abs().argmax(0) == components.argmax(0))  # the largest loading is positive
