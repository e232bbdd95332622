"""
What a reconstruction and a representation are worth, in plain torch.

Reconstructions: images are floats in [0, 1], (B, C, H, W), so PSNR and SSIM use a data range of 1, and
every image metric returns one number per image, (B,).
Representations: features are (N, D), e.g. from a model's `encode`, with integer labels (N,):
`linear_probe` and `knn_accuracy` (how much of the label a simple classifier reads off frozen features),
t-SNE (van der Maaten & Hinton 2008) and cluster statistics (class radius, silhouette).

Every function copies into a script of your own with torch, numpy at most, and the definitions of this
file its docstring names ("Copies alone.", "Copy with: mse."). t-SNE comes twice: `tsne`, the textbook algorithm on one page, and
`tsne_fast` after it, the same optimisation with its input similarities kept over nearest neighbours.
"""
import math

import torch
import torch.nn.functional as F


def mse(recon, target):
    """Mean squared error per image: (B, C, H, W), (B, C, H, W) -> (B,)."""
    return (recon - target).pow(2).flatten(1).mean(1)


def l1(recon, target):
    """Mean absolute error per image (the L1 distance per pixel): -> (B,)."""
    return (recon - target).abs().flatten(1).mean(1)


def psnr(recon, target, data_range=1.0, eps=1e-10):
    """Peak signal-to-noise ratio in dB per image: 10 log10(range^2 / MSE) -> (B,).

    eps keeps a perfect reconstruction finite (100 dB) instead of inf. Copy with: mse.
    """
    return 10 * torch.log10(data_range ** 2 / (mse(recon, target) + eps))


def hidden_psnr(recon, target, mask, eps=1e-10):
    """PSNR in dB over the hidden pixels alone (mask (B, 1, H, W), 1 = hidden), every channel: -> (B,).
    The score of a masked model's fill-in; nan for an image with nothing hidden (use torch.nanmean)."""
    squared_error = ((recon - target).pow(2) * mask).flatten(1).sum(1)  # (B,)
    return 10 * torch.log10(1.0 / (squared_error / (mask.flatten(1).sum(1) * target.shape[1]) + eps))


def hidden_scores(recon, target, mask):
    """A masked model's scores, each the mean over the images: PSNR over the whole images and over their
    hidden pixels (mask (B, 1, H, W), 1 = hidden), and the hidden PSNR of leaving the holes black, what a
    model that learned nothing scores (high where the holes fall on a black background). Copy with: psnr,
    mse, hidden_psnr."""
    return {"psnr": psnr(recon, target).mean().item(), "hidden_psnr": hidden_psnr(recon, target, mask).nanmean().item(),
            "black_fill_hidden_psnr": hidden_psnr(torch.zeros_like(target), target, mask).nanmean().item()}


# -----------------------------------------------------------------------------
# SSIM (Wang et al. 2004): local means, variances and covariance under a Gaussian window


def gaussian_window(sigma=1.5, truncate=3.5, dtype=torch.float64, device=None):
    """1D Gaussian taps as scipy.ndimage.gaussian_filter builds them: radius int(truncate * sigma + 0.5),
    normalised to sum 1. The defaults give Wang et al.'s 11-tap window."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def valid_filter_matrix(taps, n):
    """(n, n - k + 1) matrix whose column j holds the k taps at rows j .. j + k - 1: M.T @ v filters a
    length-n signal v and keeps only the outputs whose window lies wholly inside it (no padding)."""
    k = len(taps)
    offset = torch.arange(n, device=taps.device)[:, None] - torch.arange(n - k + 1, device=taps.device)[None, :]
    inside = (offset >= 0) & (offset < k)
    return torch.where(inside, taps[offset.clamp(0, k - 1)], torch.zeros((), dtype=taps.dtype, device=taps.device))


def ssim_maps(recon, target, data_range=1.0):
    """SSIM's two factors in every 11x11 window: -> luminance, contrast_structure, each (B, C, H - 10, W - 10).

        luminance          = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
        contrast_structure = (2 cov_xy + C2) / (var_x + var_y + C2)

    C1 = (0.01 L)^2 and C2 = (0.03 L)^2, L the data range, keep the ratios finite where means or variances
    are near 0. Only windows that lie inside the image count, as scikit-image's (which filters the whole
    image, then drops the 5-pixel border): filtering without padding computes exactly those.
    """
    H, W = target.shape[-2:]
    g = gaussian_window(device=target.device)                             # (11,)
    if min(H, W) < len(g):
        raise ValueError(f"ssim needs images of at least {len(g)}x{len(g)} pixels, got {H}x{W}")
    # the 2D Gaussian window is two 1D ones: a window mean is filter_h.T @ image @ filter_w
    filter_h, filter_w = valid_filter_matrix(g, H), valid_filter_matrix(g, W)  # (H, H - 10), (W, W - 10)

    def window_mean(images):                                              # (B, C, H, W) -> (B, C, H - 10, W - 10)
        return filter_h.T @ images @ filter_w

    # float64: a variance here is E[x^2] - E[x]^2, a small difference of two numbers as large as 1
    x, y = recon.double(), target.double()
    mu_x, mu_y = window_mean(x), window_mean(y)
    # population (co)variances, E[xy] - E[x]E[y]: scikit-image's use_sample_covariance=False
    var_x, var_y = window_mean(x * x) - mu_x ** 2, window_mean(y * y) - mu_y ** 2
    cov_xy = window_mean(x * y) - mu_x * mu_y
    C1, C2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    luminance = (2 * mu_x * mu_y + C1) / (mu_x ** 2 + mu_y ** 2 + C1)
    contrast_structure = (2 * cov_xy + C2) / (var_x + var_y + C2)
    return luminance, contrast_structure


def ssim(recon, target, data_range=1.0):
    """Structural similarity per image, the mean over windows and channels of luminance x contrast-structure
    (Wang et al. 2004, eq. 13) -> (B,).

    The same number as skimage.metrics.structural_similarity(recon, target, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=data_range, channel_axis=0). Call it on batches of
    a few dozen images: the maps then stay in the CPU's cache.
    Copy with: ssim_maps, gaussian_window, valid_filter_matrix.
    """
    luminance, contrast_structure = ssim_maps(recon, target, data_range)
    return (luminance * contrast_structure).mean((1, 2, 3)).to(target.dtype if target.is_floating_point() else torch.float32)


# -----------------------------------------------------------------------------
# probes: how much of the label a simple classifier reads off frozen features


def linear_probe(train_features, train_labels, test_features, test_labels, weight_decay=None, max_iter=500):
    """Test accuracy of a linear classifier (multinomial logistic regression) on frozen features.

    Features are standardised by the training set's mean and std, as the MAE paper's probe does with a
    BatchNorm before its linear layer: a feature's scale then says nothing about its weight. The weights
    minimise the mean cross-entropy + weight_decay / 2 |W|^2 over the whole training set with L-BFGS
    until the loss stops falling or max_iter steps: scikit-learn's LogisticRegression(C = 1 / (weight_decay
    N)), whose default C = 1 is the default weight_decay = 1 / N.
    Features (N, D), labels (N,) ints, all on one device -> fraction correct in [0, 1]. Copies alone.
    """
    weight_decay = 1 / len(train_features) if weight_decay is None else weight_decay
    # frozen: no gradient flows back into whatever made the features
    train_features, test_features = train_features.detach().float(), test_features.detach().float()
    train_labels, test_labels = train_labels.long(), test_labels.long()  # cross_entropy wants int64
    mean, std = train_features.mean(0), train_features.std(0)
    std = std + 1e-6 * std.max()  # a constant feature (a border pixel) stays 0 instead of 0 / 0
    train_x, test_x = (train_features - mean) / std, (test_features - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    # (K, D), as nn.Linear keeps it: its gradient is then g^T x, the faster product on a CPU (RESULTS.md,
    # "What the probes cost")
    weight = torch.zeros(num_classes, train_x.shape[1], device=train_x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=train_x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-5, tolerance_change=1e-7)

    def closure():
        optimizer.zero_grad()
        logits = F.linear(train_x, weight, bias)  # (N, K) = train_x @ weight.T + bias
        loss = F.cross_entropy(logits, train_labels) + weight_decay / 2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)  # one call runs L-BFGS to convergence (or max_iter)
    with torch.no_grad():
        return (F.linear(test_x, weight, bias).argmax(1) == test_labels).float().mean().item()


@torch.no_grad()
def knn_accuracy(train_features, train_labels, test_features, test_labels, k=20, temperature=0.07,
                 batch_size=1024):
    """Accuracy of a k-nearest-neighbour vote on frozen features, by cosine similarity.

    Each test point takes the k training points of highest cosine similarity s; each votes for its class
    with weight exp(s / temperature), so that close neighbours count more (DINO's weighted k-NN); with
    temperature=None each vote weighs its similarity s. Features (N, D), labels (N,) -> fraction correct in
    [0, 1]. Copies alone.
    """
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, len(train_features))
    train_features = F.normalize(train_features.float(), dim=1)
    test_features = F.normalize(test_features.float(), dim=1)
    correct = 0
    for i in range(0, len(test_features), batch_size):  # a batch of rows keeps memory at batch x N
        similarity = test_features[i:i + batch_size] @ train_features.T      # (b, N)
        top_similarity, top_index = similarity.topk(k, dim=1)                # (b, k)
        weight = top_similarity if temperature is None else (top_similarity / temperature).exp()
        votes = torch.zeros(len(similarity), num_classes, device=similarity.device)
        votes.scatter_add_(1, train_labels[top_index], weight)              # (b, classes)
        correct += (votes.argmax(1) == test_labels[i:i + batch_size]).sum().item()
    return correct / len(test_features)


# -----------------------------------------------------------------------------
# saliency: which pixels a representation depends on


def jacobian_energy(encode, x):
    """For each input pixel, how strongly it moves the latent code z = encode(x), (B, C, H, W) -> (B, D):
    sum over latent units d and channels c of (dz_d / dx_{c,h,w})^2, the pixel's share of the squared
    Frobenius norm of the Jacobian dz/dx. -> (B, H, W). Each image's Jacobian whole by reverse mode
    (torch.func.jacrev): one backward pass per latent unit, batched, so the memory is D copies of one image.
    Copies alone."""
    def encode_one(image):  # (C, H, W) -> (D,)
        return encode(image.unsqueeze(0)).squeeze(0)

    return torch.stack([torch.func.jacrev(encode_one)(image).pow(2).sum(dim=(0, 1)) for image in x])  # (B, H, W)


# -----------------------------------------------------------------------------
# t-SNE, the textbook: P from Gaussian neighbourhoods in feature space, Q from a Student-t kernel in the
# embedding, gradient descent on KL(P || Q). Dense and exact: every pair of points, O(N^2) memory.


def perplexity_search(distances, perplexity, n_steps=100, tol=1e-5):
    """Rows P(j | i) proportional to exp(-beta_i d_ij) from squared distances (N, M) (inf: not a neighbour),
    each beta_i found by bisection so that the row's entropy is log(perplexity) nats: -> (N, M), rows sum to 1.

    Start at beta = 1; double it (or halve it) until the target is bracketed, then bisect, as scikit-learn's
    `_binary_search_perplexity`. Every row at once.
    """
    distances = distances.double()
    # shifting a row by its nearest distance changes neither P(. | i) nor its entropy, and keeps exp()
    # from underflowing to an all-zero row when distances are large
    distances = distances - distances.min(1, keepdim=True).values
    target = math.log(perplexity)
    beta = torch.ones(len(distances), 1, dtype=torch.float64, device=distances.device)
    low, high = torch.zeros_like(beta), torch.full_like(beta, math.inf)
    for _ in range(n_steps):
        P = torch.exp(-beta * distances)
        P = P / P.sum(1, keepdim=True)
        entropy = -torch.xlogy(P, P).sum(1, keepdim=True)                 # nats
        too_wide = entropy > target          # too many effective neighbours: sharpen (beta up)
        if ((entropy - target).abs() <= tol).all():
            break
        low, high = torch.where(too_wide, beta, low), torch.where(too_wide, high, beta)
        beta = torch.where(high.isinf(), 2 * beta, (low + high) / 2)
    return P


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

    Momentum and per-coordinate gains as in van der Maaten's reference tsne.py, on scikit-learn's schedule:
    250 steps with P exaggerated 12 times (attraction wins while clusters form) and momentum 0.5, then
    momentum 0.8, the optimiser restarting in between; learning rate max(N / 12 / 4, 50), as 'auto'.
    """
    exaggeration_iters, exaggeration = 250, 12.0
    learning_rate = max(len(Y) / exaggeration / 4, 50.0)
    for it in range(n_iter):
        if it in (0, exaggeration_iters):
            update, gains = torch.zeros_like(Y), torch.ones_like(Y)
        early = it < exaggeration_iters
        grad, momentum = gradient(Y, exaggeration if early else 1.0), (0.5 if early else 0.8)
        # a coordinate that keeps moving the same way (update and gradient of opposite sign) earns a
        # larger step; a sign flip means it overshot
        gains = torch.where(update * grad < 0, gains + 0.2, gains * 0.8).clamp_(min=0.01)
        update = momentum * update - learning_rate * gains * grad
        Y += update
    return Y


@torch.no_grad()
def tsne(x, dim=2, perplexity=30.0, n_iter=1000, seed=0):
    """t-SNE embedding of features (N, D) -> numpy (N, dim), dense and exact (van der Maaten & Hinton 2008).

    Time and memory grow as N^2: a few thousand points at most (`tsne_fast` for more).
    Copy with: perplexity_search, tsne_gradient, tsne_descent.
    """
    x = torch.as_tensor(x).double().flatten(1)                              # (N, D)
    N = len(x)
    if not 0 < perplexity < N:
        raise ValueError(f"perplexity must be in (0, {N}), the number of points; got {perplexity}")
    distances = torch.cdist(x, x).pow(2).fill_diagonal_(math.inf)          # (N, N): no point is its own neighbour
    P = perplexity_search(distances, perplexity)                           # P[i, j] = P(j | i)
    P = (P + P.T) / (2 * N)                                                # symmetric p_ij, summing to 1
    generator = torch.Generator(device=x.device).manual_seed(seed)
    Y = 1e-4 * torch.randn(N, dim, generator=generator, dtype=torch.float64, device=x.device)
    Y = tsne_descent(lambda Y, exaggeration: tsne_gradient(P, Y, exaggeration), Y, n_iter)
    return Y.float().cpu().numpy()


# -----------------------------------------------------------------------------
# t-SNE, fast variant (what analyze.py runs): P kept only over each point's 3 x perplexity nearest
# neighbours, as scikit-learn; the exact repulsion over all N^2 pairs a cache-sized chunk of rows at a
# time; a PCA start. O(N k) memory, O(N^2) time per step: the attraction walks N k edges instead of N^2
# pairs, and the repulsion runs as a few large matrix products over chunks that stay in the CPU's cache.


def chunk_rows(n_cols, device):
    """Rows per chunk of an (N, N) computation: a few MB on a CPU (the chunk stays in cache while several
    elementwise passes run over it), up to 256 MB on a GPU (one big chunk keeps the kernels busy)."""
    budget = 2 ** 26 if torch.device(device).type == "cuda" else 2 ** 19
    return max(1, budget // n_cols)


@torch.no_grad()
def nearest_neighbor_probabilities(x, perplexity=30.0, n_neighbors=None):
    """perplexity_search over each point's k nearest neighbours (by default min(N - 1, 3 perplexity + 1), as
    scikit-learn: a Gaussian of that perplexity gives the farther points almost nothing), a chunk of rows
    at a time: (N, D) -> P (N, k) float32, neighbours (N, k), nearest first."""
    x = x.double().flatten(1)
    x = x - x.mean(0)  # no distance changes, and |a|^2 + |b|^2 - 2 a.b loses less to cancellation
    N = len(x)
    if not 0 < perplexity < N:
        raise ValueError(f"perplexity must be in (0, {N}), the number of points; got {perplexity}")
    k = n_neighbors or min(N - 1, int(3 * perplexity + 1))
    P = torch.empty(N, k, dtype=torch.float32, device=x.device)
    neighbors = torch.empty(N, k, dtype=torch.long, device=x.device)
    rows = chunk_rows(N, x.device)
    for i in range(0, N, rows):
        xi = x[i:i + rows]                                   # |x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j
        d = (xi.pow(2).sum(1, keepdim=True) + x.pow(2).sum(1) - 2 * xi @ x.T).clamp_(min=0)  # (b, N)
        d[:, i:i + len(d)].fill_diagonal_(math.inf)                        # a point is not its own neighbour
        nearest, neighbors[i:i + len(d)] = d.topk(k, dim=1, largest=False)  # (b, k)
        P[i:i + len(d)] = perplexity_search(nearest, perplexity)
    return P, neighbors


def pca(x, dim):
    """Principal component analysis: the dim orthonormal directions along which x (N, D) varies most.
    -> mean (D,), components (D, dim), largest variance first, float64; each sign fixed so its largest
    loading is positive (an eigenvector's sign is arbitrary). Project with (x - mean) @ components,
    reconstruct with projection @ components.T + mean: the best rank-dim linear reconstruction in squared
    error. The eigenvectors of the scatter matrix, as numpy's textbooks write it. Copies alone."""
    x = x.flatten(1).double()
    mean = x.mean(0)
    centred = x - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)                   # ascending eigenvalues
    components = vectors[:, -dim:].flip(1)                                 # (D, dim), largest first
    largest = components.abs().argmax(0)
    components = components * components[largest, torch.arange(dim, device=x.device)].sign()
    return mean, components


def pca_start(x, dim):
    """x (N, D) projected on its top dim principal components -> (N, dim) float64, scaled so the first
    column has standard deviation 1e-4 (scikit-learn's init='pca')."""
    mean, components = pca(x, dim)
    Y = (x - mean) @ components                                            # (N, dim)
    return Y / Y[:, 0].std(correction=0) * 1e-4


def tsne_gradient_sparse(P, neighbors, Y, exaggeration, rows, buffer=None):
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
def tsne_fast(x, dim=2, perplexity=30.0, n_iter=1000, device=None, threads=1):
    """`tsne` with P over the 3 x perplexity nearest neighbours and a PCA start -> numpy (N, dim).

    As scikit-learn's TSNE(init='pca', learning_rate='auto') with its default (Barnes-Hut) P; the repulsion
    is exact where Barnes-Hut approximates it. Deterministic. Runs where `device` says (default: where x is).
    threads: CPU threads for the run (None: torch's setting). One by default: each iteration's hundreds of
    cache-sized ops end in a barrier where every thread waits for the slowest, which costs more than the
    extra threads give back on a busy machine.
    """
    x = torch.as_tensor(x)
    device = torch.device(device) if device is not None else x.device
    threads_before = torch.get_num_threads()
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        x = x.to(device=device, dtype=torch.float64).flatten(1)             # (N, D)
        P, neighbors = nearest_neighbor_probabilities(x, perplexity)       # (N, k) each
        P /= 2 * len(x)                                                    # directed edges of p_ij: they sum to 1
        Y = pca_start(x, dim).float()                                      # (N, dim)
        rows = chunk_rows(len(x), device)
        buffer = Y.new_empty(rows * len(x))
        Y = tsne_descent(lambda Y, e: tsne_gradient_sparse(P, neighbors, Y, e, rows, buffer), Y, n_iter)
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
