"""
Metrics in plain torch: reconstruction quality per image, and the quality of learned features.

Images are floats in [0, 1], (B, C, H, W), so PSNR and SSIM use a data range of 1; every image metric
returns one number per image, (B,). Features are (N, D) from a model's `encode`: k-NN accuracy, t-SNE
(van der Maaten & Hinton 2008) and cluster statistics (class radius, silhouette).

SSIM and t-SNE come twice, as a model file keeps the written-out attention next to the fused one:
`ssim` and `tsne` are the textbook versions, to read and copy (a Gaussian filter and Wang et al.'s
formula; dense exact t-SNE, O(N^2) memory). `ssim_fast` and `tsne_fast`, several times faster on a CPU,
are what evaluate.py, analyze.py and bench.py call: cache-sized chunks, matrix products, and for t-SNE a P
kept over nearest neighbours as scikit-learn does. tests/test_metrics.py checks that each pair agrees.
Where the logic is the same (window, SSIM formula, perplexity search, start, optimiser) both share it.
"""
import math

import torch
import torch.nn.functional as F


def mse(recon, target):
    """Mean squared error per image: (B, C, H, W), (B, C, H, W) -> (B,)."""
    return (recon - target).pow(2).flatten(1).mean(1)


def mae(recon, target):
    """Mean absolute error per image (not the masked autoencoder): -> (B,)."""
    return (recon - target).abs().flatten(1).mean(1)


def psnr(recon, target, data_range=1.0, eps=1e-10):
    """Peak signal-to-noise ratio in dB per image: 10 log10(range^2 / MSE) -> (B,).

    eps keeps a perfect reconstruction finite (100 dB) instead of inf.
    """
    return 10 * torch.log10(data_range ** 2 / (mse(recon, target) + eps))


def hidden_psnr(recon, target, mask, eps=1e-10):
    """PSNR in dB over the hidden pixels alone (mask (B, 1, H, W), 1 = hidden), every channel: -> (B,).
    The score of a masked model's fill-in; nan for an image with nothing hidden (use torch.nanmean)."""
    squared_error = ((recon - target).pow(2) * mask).flatten(1).sum(1)  # (B,)
    return 10 * torch.log10(1.0 / (squared_error / (mask.flatten(1).sum(1) * target.shape[1]) + eps))


# -----------------------------------------------------------------------------
# representation quality


@torch.no_grad()
def knn_accuracy(train_features, train_labels, test_features, test_labels, k=20, num_classes=None,
                 batch_size=1024):
    """Accuracy of a k-nearest-neighbour vote on frozen features, by cosine similarity.

    Each test point takes the k most similar training points; votes are weighted by similarity so
    that close neighbours count more (a common choice in self-supervised evaluation).
    Features (N, D), labels (N,) -> fraction correct in [0, 1].
    """
    num_classes = num_classes or int(train_labels.max()) + 1
    train_features = torch.nn.functional.normalize(train_features.float(), dim=1)
    test_features = torch.nn.functional.normalize(test_features.float(), dim=1)
    correct = 0
    for i in range(0, len(test_features), batch_size):  # a batch of rows keeps memory at batch x N
        sim = test_features[i:i + batch_size] @ train_features.T        # (b, N)
        top_sim, top_idx = sim.topk(k, dim=1)                           # (b, k)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], top_sim)          # (b, classes)
        correct += (votes.argmax(1) == test_labels[i:i + batch_size]).sum().item()
    return correct / len(test_features)


# -----------------------------------------------------------------------------
# SSIM, the textbook: a Gaussian filter and Wang et al.'s formula


def gaussian_window(sigma=1.5, truncate=3.5, dtype=torch.float64, device=None):
    """1D Gaussian taps as scipy.ndimage.gaussian_filter builds them: radius int(truncate * sigma + 0.5),
    normalised to sum 1. The defaults give Wang et al.'s 11-tap window."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim_formula(mu_x, mu_y, e_xx, e_yy, e_xy, data_range=1.0):
    """SSIM of each window (Wang et al. 2004, eq. 13) from its local E[x], E[y], E[x^2], E[y^2], E[xy]:

        SSIM = (2 mu_x mu_y + C1) (2 cov_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (var_x + var_y + C2))

    The first factor compares brightness, the second contrast and structure. C1 = (0.01 L)^2 and
    C2 = (0.03 L)^2, L the data range, keep the ratios finite where means or variances are near 0.
    """
    C1, C2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    # population (co)variances, E[x^2] - E[x]^2: scikit-image's use_sample_covariance=False
    var_x, var_y, cov_xy = e_xx - mu_x * mu_x, e_yy - mu_y * mu_y, e_xy - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + C1) / (mu_x ** 2 + mu_y ** 2 + C1)
    contrast_structure = (2 * cov_xy + C2) / (var_x + var_y + C2)
    return luminance * contrast_structure


def ssim(recon, target, data_range=1.0):
    """Structural similarity per image (Wang et al. 2004), averaged over pixels and channels -> (B,).

    The same number as skimage.metrics.structural_similarity(recon, target, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=data_range, channel_axis=0): an 11-tap Gaussian
    window (sigma 1.5), K1 = 0.01, K2 = 0.03, population (co)variances. scikit-image filters the whole
    image and then drops the 5-pixel border whose windows reach past the edge, so only windows that lie
    inside the image count. Filtering without padding computes exactly those: no padding mode to match.
    """
    B, C, H, W = target.shape
    g = gaussian_window(device=target.device)                             # (11,)
    if min(H, W) < len(g):
        raise ValueError(f"ssim needs images of at least {len(g)}x{len(g)} pixels, got {H}x{W}")
    # float64: a variance here is E[x^2] - E[x]^2, a small difference of two numbers as large as 1
    x, y = recon.double(), target.double()
    maps = torch.cat([x, y, x * x, y * y, x * y], 1)                      # (B, 5 C, H, W)
    # window means: the 2D Gaussian is two 1D ones, so filter each map down the columns, then along the rows
    maps = F.conv2d(maps, g.view(1, 1, -1, 1).expand(5 * C, 1, -1, 1), groups=5 * C)  # (B, 5 C, H - 10, W)
    maps = F.conv2d(maps, g.view(1, 1, 1, -1).expand(5 * C, 1, 1, -1), groups=5 * C)  # (B, 5 C, H - 10, W - 10)
    s = ssim_formula(*maps.chunk(5, 1), data_range)                       # from E[x], E[y], E[xx], E[yy], E[xy]
    return s.mean((1, 2, 3)).to(target.dtype if target.is_floating_point() else torch.float32)


# -----------------------------------------------------------------------------
# SSIM, fast: the same windows as matrix products over cache-sized chunks of images


def _chunk_rows(n_cols, device):
    """Rows per chunk of an (N, N) computation: a few MB on a CPU (the chunk stays in cache while several
    elementwise passes run over it), up to 256 MB on a GPU (one big chunk keeps the kernels busy)."""
    budget = 2 ** 26 if torch.device(device).type == "cuda" else 2 ** 19
    return max(1, budget // n_cols)


def valid_filter_matrix(g, n):
    """(n, n - k + 1) matrix whose column j holds the k taps of g at rows j .. j + k - 1, so that
    M.T @ v filters v with g and keeps only the outputs whose window lies inside (no padding)."""
    k = len(g)
    taps = torch.arange(n, device=g.device)[:, None] - torch.arange(n - k + 1, device=g.device)[None, :]
    inside = (taps >= 0) & (taps < k)
    return torch.where(inside, g[taps.clamp(0, k - 1)], torch.zeros((), dtype=g.dtype, device=g.device))


def ssim_fast(recon, target, data_range=1.0):
    """`ssim` with the same numbers (to float64 rounding), several times faster on a CPU -> (B,)."""
    B, C, H, W = target.shape
    g = gaussian_window(device=target.device)
    if min(H, W) < len(g):
        raise ValueError(f"ssim needs images of at least {len(g)}x{len(g)} pixels, got {H}x{W}")
    # the separable window as two matrix products, down the columns then along the rows: on a CPU
    # matmuls are several times faster than a depthwise convolution
    filter_h, filter_w = valid_filter_matrix(g, H), valid_filter_matrix(g, W)
    # a chunk of images at a time: its five float64 maps (two float32s each) stay in the CPU's cache while
    # the dozen elementwise passes of _ssim_chunk run over them (6x faster on 10k images than all at once)
    chunk = _chunk_rows(5 * 2 * C * H * W, target.device)
    return torch.cat([_ssim_chunk(recon[i:i + chunk], target[i:i + chunk], filter_h, filter_w, data_range)
                      for i in range(0, B, chunk)])


def _ssim_chunk(recon, target, filter_h, filter_w, data_range):
    B, C, H, W = target.shape
    # Rows first, (H, B C W): the column filter is then one matrix product for the whole chunk, and the
    # row filter another, instead of thousands of tiny per-image products.
    x = recon.double().permute(2, 0, 1, 3).reshape(H, B * C * W)
    y = target.double().permute(2, 0, 1, 3).reshape(H, B * C * W)
    maps = torch.cat([x, y, x * x, y * y, x * y], 1)                     # (H, 5 B C W)
    maps = (filter_h.T @ maps).view(-1, W) @ filter_w                   # (H' 5 B C, W'): windowed means
    H_valid, W_valid = filter_h.shape[1], filter_w.shape[1]              # H' = H - 10, W' = W - 10
    moments = maps.view(H_valid, 5, B, C * W_valid).unbind(1)            # mu_x, mu_y, E[xx], E[yy], E[xy]
    s = ssim_formula(*moments, data_range)                               # (H', B, C W')
    return s.mean((0, 2)).to(target.dtype if target.is_floating_point() else torch.float32)  # (B,)


# -----------------------------------------------------------------------------
# t-SNE, the textbook: P from Gaussian neighbourhoods in feature space, Q from a Student-t kernel in the
# embedding, gradient descent on KL(P || Q). Dense and exact: every pair of points, O(N^2) memory.


@torch.no_grad()
def conditional_probabilities(x, perplexity=30.0, n_neighbors=None, n_steps=100, tol=1e-5):
    """The rows P(j | i) of t-SNE's input similarities over each point's nearest neighbours:
    (N, D) -> (N, k) float32 probabilities, each row summing to 1, and the (N, k) neighbour indices.

    P(j | i) is proportional to exp(-beta_i |x_i - x_j|^2) for the k = n_neighbors nearest j != i, 0 beyond
    (`tsne` takes all N - 1; by default min(N - 1, 3 perplexity + 1), as scikit-learn: a Gaussian of that
    perplexity gives the farther points almost nothing). Each precision beta_i is set by bisection so that
    the row's entropy is log(perplexity) nats to within tol, all rows of a chunk at once, as scikit-learn's
    `_binary_search_perplexity` (start at beta = 1, double or halve until the target is bracketed).
    """
    x = x.double().flatten(1)
    x = x - x.mean(0)  # no distance changes, and |a|^2 + |b|^2 - 2 a.b loses less to cancellation
    N = len(x)
    if not 0 < perplexity < N:
        raise ValueError(f"perplexity must be in (0, {N}), the number of points; got {perplexity}")
    k = n_neighbors or min(N - 1, int(3 * perplexity + 1))
    target = math.log(perplexity)
    P = torch.empty(N, k, dtype=torch.float32, device=x.device)
    neighbors = torch.empty(N, k, dtype=torch.long, device=x.device)
    rows = _chunk_rows(N, x.device)
    for i in range(0, N, rows):
        xi = x[i:i + rows]                                   # |x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j
        d = (xi.pow(2).sum(1, keepdim=True) + x.pow(2).sum(1) - 2 * xi @ x.T).clamp_(min=0)  # (b, N)
        b = len(d)
        d[:, i:i + b].fill_diagonal_(math.inf)                             # a point is not its own neighbour
        d, neighbors[i:i + b] = d.topk(k, dim=1, largest=False)            # (b, k), nearest first
        # shifting a row by its nearest distance changes neither P(. | i) nor its entropy, and keeps
        # exp() from underflowing to an all-zero row when distances are large
        neg_d = d[:, :1] - d
        p = torch.empty_like(neg_d)
        beta = torch.ones(b, 1, dtype=x.dtype, device=x.device)
        lo = torch.zeros_like(beta)                # 0 as the lower end makes "halve" and "bisect" one rule
        hi = torch.full_like(beta, math.inf)
        for _ in range(n_steps):
            torch.mul(neg_d, beta, out=p).exp_()                           # (b, k), unnormalised
            p_sum = p.sum(1, keepdim=True)
            # H = -sum p log p with p = exp(-beta d) / p_sum, i.e. log p_sum + beta E_p[d]
            entropy = p_sum.log() - beta * torch.linalg.vecdot(p, neg_d).unsqueeze(1) / p_sum
            error = entropy - target
            done = error.abs() <= tol
            if done.all():
                break
            too_wide = error > 0                   # too many effective neighbours: sharpen (beta up)
            lo = torch.where(too_wide, beta, lo)
            hi = torch.where(too_wide, hi, beta)
            new_beta = torch.where(too_wide, torch.where(hi.isinf(), 2 * beta, (beta + hi) / 2),
                                   (beta + lo) / 2)
            beta = torch.where(done, beta, new_beta)
        P[i:i + b] = p / p_sum
    return P, neighbors


def tsne_init(x, dim, init, seed):
    """Starting embedding, (N, D) -> (N, dim) float64 with tiny spread, as scikit-learn's TSNE starts.

    'pca': the top principal components, signs fixed so each direction's largest loading is positive,
    scaled so the first column has standard deviation 1e-4. 'random': N(0, 1e-4^2), drawn from `seed`.
    """
    N = len(x)
    if init == "random":
        generator = torch.Generator(device=x.device).manual_seed(seed)
        return 1e-4 * torch.randn(N, dim, generator=generator, dtype=torch.float64, device=x.device)
    if init != "pca":
        raise ValueError(f"unknown init {init!r}: use 'pca' or 'random'")
    x = x - x.mean(0)
    _, vectors = torch.linalg.eigh(x.T @ x)                                 # ascending eigenvalues
    components = vectors[:, -dim:].flip(1)                                 # (D, dim), largest first
    largest = components.abs().argmax(0)
    components = components * components[largest, torch.arange(dim)].sign()
    Y = x @ components                                                     # (N, dim)
    return Y / Y[:, 0].std(correction=0) * 1e-4


def tsne_gradient(P, Y, exaggeration=1.0):
    """Gradient of KL(P || Q) with respect to the embedding: (N, N) P, (N, dim) Y -> (N, dim).

        dC/dy_i = 4 sum_j (p_ij - q_ij) w_ij (y_i - y_j),   w_ij = 1 / (1 + |y_i - y_j|^2),
        q_ij = w_ij / sum_{k != l} w_kl                     (van der Maaten & Hinton 2008, eq. 5)

    p_ij pulls y_i towards y_j, q_ij pushes it away; `exaggeration` multiplies P.
    """
    W = 1 / (1 + torch.cdist(Y, Y) ** 2)                                   # (N, N): Student-t kernel
    W.fill_diagonal_(0)                                                    # no pair of a point with itself
    Q = W / W.sum()
    A = (exaggeration * P - Q) * W                                         # (N, N)
    return 4 * (A.sum(1, keepdim=True) * Y - A @ Y)     # sum_j a_ij (y_i - y_j) = y_i sum_j a_ij - sum_j a_ij y_j


def tsne_descent(gradient, Y, n_iter):
    """Minimise KL(P || Q) from Y (N, dim), updated in place and returned; gradient(Y, exaggeration).

    Momentum and per-coordinate gains as in van der Maaten's reference tsne.py, on scikit-learn's schedule
    (the reference's: exaggeration 4 for 100 steps, momentum 0.8 from step 20, learning rate 500):
    250 steps with P exaggerated 12 times (attraction wins while clusters form) and momentum 0.5, then
    momentum 0.8, the optimiser restarting in between; learning rate max(N / 12 / 4, 50), as 'auto'.
    """
    exaggeration_iters, exaggeration = 250, 12.0
    learning_rate = max(len(Y) / exaggeration / 4, 50.0)
    for it in range(n_iter):
        if it in (0, exaggeration_iters):  # scikit-learn restarts its optimiser for the second phase
            update, gains = torch.zeros_like(Y), torch.ones_like(Y)
        early = it < exaggeration_iters
        grad, momentum = gradient(Y, exaggeration if early else 1.0), (0.5 if early else 0.8)
        # a step that still points the way the last one went (update and gradient of opposite sign)
        # earns a larger gain; a sign flip means we overshot
        gains = torch.where(update * grad < 0, gains + 0.2, gains * 0.8).clamp_(min=0.01)
        update = momentum * update - learning_rate * gains * grad
        Y += update
    return Y


@torch.no_grad()
def tsne(x, dim=2, perplexity=30.0, n_iter=1000, seed=0, init="pca"):
    """t-SNE embedding of features (N, D) -> numpy (N, dim), dense and exact (van der Maaten & Hinton 2008).

    Time and memory grow as N^2: a few thousand points at most (`tsne_fast` for more). `seed` only matters
    for init='random'; with init='pca' the result depends on nothing but the data. Runs where x is.
    """
    x = torch.as_tensor(x).double().flatten(1)                              # (N, D)
    N = len(x)
    # P(j | i): a Gaussian around x_i over all other points, its width set per point by binary search
    # so that the row's perplexity, 2^entropy in bits, is `perplexity`
    P_conditional, neighbors = conditional_probabilities(x, perplexity, n_neighbors=N - 1)  # (N, N - 1)
    P = torch.zeros(N, N, dtype=x.dtype, device=x.device).scatter_(1, neighbors, P_conditional.double())
    P = (P + P.T) / (2 * N)                              # P[i, j] was P(j | i): now symmetric p_ij, summing to 1
    Y = tsne_init(x, dim, init, seed)                                      # (N, dim)
    Y = tsne_descent(lambda Y, exaggeration: tsne_gradient(P, Y, exaggeration), Y, n_iter)
    return Y.float().cpu().numpy()


# -----------------------------------------------------------------------------
# t-SNE, fast: P kept only over each point's 3 x perplexity nearest neighbours (as scikit-learn), the exact
# repulsion over all N^2 pairs a cache-sized chunk of rows at a time: O(N k) memory, O(N^2) time per step.


def _tsne_gradient_fast(P, neighbors, Y, exaggeration, rows, buffer=None):
    """`tsne_gradient` for a sparse P: (N, k) P and neighbours, (N, dim) Y -> (N, dim).

    P[i, m] = P(j | i) / 2N for j = neighbors[i, m]: p_ij = (P(j | i) + P(i | j)) / 2N is the sum of the
    directed edges i -> j and j -> i, so the attraction walks the N k edges once, each pulling i towards j
    and j towards i. The repulsion F(W * W) / Z, F(A)_i = y_i sum_j a_ij - sum_j a_ij y_j, runs over all
    pairs without an (N, N, dim) tensor, and only over the blocks on and right of the diagonal (W is
    symmetric): a chunk of rows c.. feeds its own rows directly and, transposed, the rows below it.
    `buffer` (rows * N,), reused between calls, holds a chunk of W.
    """
    N, dim = Y.shape
    if buffer is None:
        buffer = Y.new_empty(rows * N)
    Y = Y - Y.mean(0)  # the gradient ignores translations; small |y| keeps the expansion below accurate

    # coordinates first, (dim, N): gathering and scattering along the last axis is several times faster
    # (index_select and an index_add_ without alpha: the other spellings of these took 5-50x longer)
    Y_t = Y.T.contiguous()
    edges = neighbors.flatten()                                            # (N k,): j of every edge i -> j
    diff = Y_t.unsqueeze(2) - Y_t.index_select(1, edges).view(dim, N, -1)  # (dim, N, k): y_i - y_j
    pull = P / (1 + diff.pow(2).sum(0)) * diff                             # (dim, N, k): P(j|i)/2N w_ij (y_i - y_j)
    attract = (pull.sum(2) - torch.zeros_like(Y_t).index_add_(1, edges, pull.flatten(1))).T  # (N, dim)

    ones = torch.ones(N, 1, dtype=Y.dtype, device=Y.device)
    sq = Y.pow(2).sum(1, keepdim=True)                                      # (N, 1)
    # left_i . right_j = 1 + |y_i|^2 + |y_j|^2 - 2 y_i . y_j = 1 + |y_i - y_j|^2: one matmul per chunk
    left = torch.cat([Y, 1 + sq, ones], 1)                                 # (N, dim + 2)
    right_t = torch.cat([-2 * Y, ones, sq], 1).T.contiguous()              # (dim + 2, N)
    # a product with [Y, 1] gives sum_j a_ij y_j and sum_j a_ij at once
    Y1_t = torch.cat([Y, ones], 1).T.contiguous()                          # (dim + 1, N)
    repel = torch.zeros_like(Y1_t)                                         # (dim + 1, N)
    Z = []
    for c in range(0, N, rows):
        b, M = min(rows, N - c), N - c
        W = buffer[:b * M].view(b, M)                                      # w_ij for rows c..c+b, columns j >= c
        torch.mm(left[c:c + b], right_t[:, c:], out=W).reciprocal_()
        W[:, :b].fill_diagonal_(0)
        Z.append(2 * W.sum() - W[:, :b].sum())  # blocks right of the diagonal also stand for their mirror
        W.square_()
        repel[:, c:c + b] += F.linear(W, Y1_t[:, c:]).T  # W^2 @ [Y, 1], in the form the BLAS runs fastest
        repel[:, c + b:] += Y1_t[:, c:c + b] @ W[:, b:]  # the mirrored blocks, for the rows below
    Z = torch.stack(Z).double().sum().to(Y.dtype)
    repel = Y * repel[dim:].T - repel[:dim].T                              # sum_j w_ij^2 (y_i - y_j)
    return 4 * (exaggeration * attract - repel / Z)


@torch.no_grad()
def tsne_fast(x, dim=2, perplexity=30.0, n_iter=1000, seed=0, device=None, init="pca", threads=1):
    """`tsne` with P over the 3 x perplexity nearest neighbours, ~20x faster at N = 1000 -> numpy (N, dim).

    Schedule, start and symmetrised P are `tsne`'s, as scikit-learn's TSNE(init='pca', learning_rate='auto')
    with its default (Barnes-Hut) P; the repulsion is exact where Barnes-Hut approximates it. `seed` only
    matters for init='random'. Runs where `device` says (default: where x is).

    threads: CPU threads for the run (None: torch's current setting). One by default: each of an iteration's
    hundreds of cache-sized ops ends in a barrier where every thread waits for the slowest, and on a busy
    machine that waiting costs several times more than the extra threads give back.
    """
    x = torch.as_tensor(x)
    device = torch.device(device) if device is not None else x.device
    threads_before = torch.get_num_threads()
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        x = x.to(device=device, dtype=torch.float64).flatten(1)             # (N, D)
        N = len(x)
        P, neighbors = conditional_probabilities(x, perplexity)            # (N, k) each
        P /= 2 * N                                                         # directed edges of p_ij: they sum to 1
        Y = tsne_init(x, dim, init, seed).float()                          # (N, dim)
        rows = _chunk_rows(N, device)
        buffer = Y.new_empty(rows * N)
        Y = tsne_descent(lambda Y, e: _tsne_gradient_fast(P, neighbors, Y, e, rows, buffer), Y, n_iter)
    finally:
        torch.set_num_threads(threads_before)
    return Y.cpu().numpy()


# -----------------------------------------------------------------------------
# cluster statistics


@torch.no_grad()
def silhouette(features, labels, batch_size=1024):
    """Mean silhouette coefficient (Rousseeuw 1987), Euclidean, as sklearn.metrics.silhouette_score.

    For each point, a = mean distance to the other points of its class, b = the smallest mean distance
    to the points of another class, s = (b - a) / max(a, b); a point alone in its class has s = 0.
    Distances are made batch_size rows at a time, so N = 10k points need N x batch_size floats, not N^2.
    Features (N, D), labels (N,) ints in [0, K) -> float in [-1, 1].
    """
    x = features.flatten(1)
    x = x if x.is_floating_point() else x.float()
    x = x - x.mean(0)  # no distance changes, and cdist's matmul form loses less to cancellation
    labels = labels.to(x.device).long()
    onehot = F.one_hot(labels).to(x.dtype)                                 # (N, K)
    counts = onehot.sum(0)                                                 # (K,)
    if (counts > 0).sum() < 2:
        raise ValueError("silhouette needs at least two classes")
    s = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for i in range(0, len(x), batch_size):
        own = labels[i:i + batch_size]                                     # (b,)
        dist_sum = torch.cdist(x[i:i + batch_size], x) @ onehot            # (b, K): summed distance to each class
        rows = torch.arange(len(own), device=x.device)
        # the point's own zero distance is in its class's sum, so divide by the other n_c - 1 members
        a = dist_sum[rows, own] / (counts[own] - 1)
        mean_dist = dist_sum / counts                                      # (b, K); empty classes: nan
        mean_dist[rows, own] = math.inf
        b = mean_dist.nan_to_num(nan=math.inf).min(1).values
        s[i:i + batch_size] = ((b - a) / torch.maximum(a, b)).nan_to_num(nan=0.0)  # singletons: 0 / 0 -> 0
    return s.mean().item()


@torch.no_grad()
def cluster_stats(features, labels):
    """How tightly the classes cluster in feature space. Features (N, D), labels (N,) ints in [0, K) -> dict:

    radius:          (K,) mean Euclidean distance of a class's points to the class centre (the
                     DAE-vs-MAE study's measure); nan for a class with no points
    spread:          mean distance of all points to the global centre
    relative_radius: (K,) radius / spread, comparable between models whose features differ in scale
    silhouette:      mean silhouette coefficient over all points (see `silhouette`)
    """
    x = features.flatten(1)
    x = x if x.is_floating_point() else x.float()
    labels = labels.to(x.device).long()
    onehot = F.one_hot(labels).to(x.dtype)                                 # (N, K)
    counts = onehot.sum(0)                                                 # (K,)
    centres = (onehot.T @ x) / counts[:, None]                             # (K, D)
    radius = (onehot.T @ (x - centres[labels]).norm(dim=1)) / counts       # (K,)
    spread = (x - x.mean(0)).norm(dim=1).mean()
    return {
        "radius": radius,
        "spread": spread.item(),
        "relative_radius": radius / spread,
        "silhouette": silhouette(x, labels),
    }
