"""Every piece a student copies into homework runs alone: the piece and the definitions of its own file that it
needs, pasted into a fresh script with the file's imports it uses, run by a fresh interpreter that cannot see
the project. Nothing may come from another project file, and only torch, numpy and the standard library."""
import ast
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOWED_MODULES = {"torch", "numpy", "math", "dataclasses"}


def copy_piece(filename, names):
    """The source a student pastes for `names` of one project file: the imports they use, then every
    top-level definition they need (followed through the file), in the file's order."""
    source = open(os.path.join(ROOT, filename)).read()
    tree = ast.parse(source)
    definitions, imports = {}, {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            definitions[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    definitions[target.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                imports[(alias.asname or alias.name).split(".")[0]] = node
    needed, todo, used_imports = set(), list(names), []
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        for sub in ast.walk(definitions[name]):
            if isinstance(sub, ast.Name) and sub.id in definitions and sub.id not in needed:
                todo.append(sub.id)
            elif isinstance(sub, ast.Name) and sub.id in imports and imports[sub.id] not in used_imports:
                used_imports.append(imports[sub.id])
    for node in used_imports:
        module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
        assert module.split(".")[0] in ALLOWED_MODULES, f"{names} of {filename} need {ast.unparse(node)}"
    body = [node for node in tree.body if node in used_imports or node in {definitions[n] for n in needed}]
    lines = source.splitlines()
    # a node's lines, with its decorators (@dataclass) above it
    return "\n\n".join("\n".join(lines[min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1:
                                           node.end_lineno]) for node in body)


def run_alone(tmp_path, piece, usage):
    script = tmp_path / "homework.py"
    script.write_text(piece + "\n\n\nimport torch  # the student's own script\n" + textwrap.dedent(usage))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-I", str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


PIECES = {
    "patchify and random_masking": ("mae.py", ["patchify", "random_masking"], """
        x = torch.rand(2, 3, 8, 8)
        patches = patchify(x, 4)
        visible, mask, ids_restore = random_masking(patches, 0.75)
        print(tuple(patches.shape), tuple(visible.shape), int(mask.sum()))
        """, "(2, 4, 48) (2, 1, 48) 6"),
    "the MAE": ("mae.py", ["MAE", "MAEConfig"], """
        torch.manual_seed(0)
        model = MAE(MAEConfig(embed_dim=32, depth=1, decoder_depth=1)).eval()  # eval: pictures too
        loss, out = model(torch.rand(4, 1, 28, 28))
        loss.backward()
        print(tuple(model.encode(torch.rand(2, 1, 28, 28)).shape), tuple(out["recon"].shape))
        """, "(2, 32) (4, 1, 28, 28)"),
    "the paper's MAE": ("mae.py", ["MaskedAutoencoderViT", "MAEConfig"], """
        torch.manual_seed(0)
        model = MaskedAutoencoderViT(MAEConfig(embed_dim=32, depth=1, decoder_depth=1, mask_ratio=0.75))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.rand(8, 1, 28, 28)
        losses = []
        for step in range(20):
            torch.manual_seed(1)  # the same masks: one problem to fit
            loss, pred, mask = model(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        print(tuple(pred.shape), int(mask.sum()), losses[-1] < losses[0])
        """, "(8, 49, 16) 296 True"),
    "mask tokens and the masked loss": ("mae.py", ["random_masking", "add_mask_tokens", "masked_mse"], """
        x = torch.rand(2, 6, 4)
        visible, mask, ids_restore = random_masking(x, 0.5)
        back = add_mask_tokens(visible, torch.full((1, 1, 4), -1.0), ids_restore)
        kept = mask == 0
        print(bool(torch.equal(back[kept], x[kept])), bool((back[~kept] == -1).all()),
              float(masked_mse(back, x, 1 - mask)))
        """, "True True 0.0"),
    "the attention block": ("mae.py", ["Attention"], """
        print(tuple(Attention(16, 4)(torch.rand(2, 5, 16)).shape))
        """, "(2, 5, 16)"),
    "psnr and ssim": ("metrics.py", ["psnr", "ssim"], """
        x = torch.rand(3, 1, 28, 28)
        print(round(float(psnr(x * 0.5, x)[0]) - float(psnr(x * 0.5, x)[1]), 1) != 99, float(ssim(x, x)[0]))
        """, "True 1.0"),
    "t-SNE, the textbook": ("metrics.py", ["tsne"], """
        torch.manual_seed(0)
        blobs = torch.cat([torch.randn(30, 5), torch.randn(30, 5) + 20])
        y = tsne(blobs, perplexity=10.0, n_iter=300)
        apart = abs(y[:30].mean(0) - y[30:].mean(0)).max() > 3 * y[:30].std(0).max()
        print(y.shape, bool(apart))
        """, "(60, 2) True"),
    "the probes": ("metrics.py", ["linear_probe", "knn_accuracy"], """
        torch.manual_seed(0)
        labels = torch.arange(400) % 4
        features = torch.randn(400, 10) + 4 * torch.nn.functional.one_hot(labels, 10)
        print(linear_probe(features[:300], labels[:300], features[300:], labels[300:]) > 0.9,
              knn_accuracy(features[:300], labels[:300], features[300:], labels[300:]) > 0.9,
              knn_accuracy(features[:300], labels[:300], features[300:], labels[300:] + 1) < 0.1)
        """, "True True True"),
    "the VAE loss": ("vae.py", ["vae_loss"], """
        x = torch.rand(4, 1, 28, 28)
        loss, reconstruction, kl = vae_loss(x.clamp(0.01, 0.99), x, torch.zeros(4, 8), torch.zeros(4, 8))
        print(float(kl), bool(torch.isclose(loss, reconstruction)))
        """, "0.0 True"),
}


@pytest.mark.parametrize("name", PIECES)
def test_a_piece_runs_alone(tmp_path, name):
    filename, names, usage, expected = PIECES[name]
    piece = copy_piece(filename, names)
    assert "from ae import" not in piece and "import train" not in piece
    assert run_alone(tmp_path, piece, usage).strip() == expected


def test_the_textbook_tsne_is_a_page():
    """What a student copies for t-SNE: the algorithm, not the fast variant's machinery."""
    piece = copy_piece("metrics.py", ["tsne"])
    assert "def tsne_fast" not in piece and "def chunk_rows" not in piece
    assert len(piece.splitlines()) <= 110


# each piece a student copies, by file: its docstring says which definitions of its own file come with it
COPIED = {"mae.py": ["patchify", "unpatchify", "sincos_pos_embed_2d", "random_masking", "add_mask_tokens",
                     "masked_mse", "Attention", "drop_branch", "Block", "MaskedAutoencoderViT", "MAE"],
          "vae.py": ["vae_loss"],
          "metrics.py": ["psnr", "ssim", "linear_probe", "knn_accuracy", "tsne", "jacobian_energy", "pca"]}


@pytest.mark.parametrize("filename,name", [(f, n) for f, names in COPIED.items() for n in names])
def test_a_piece_names_what_comes_with_it(filename, name):
    """'Copies alone', or 'Copy with: a, b' naming every definition of the file that copy_piece takes along,
    or 'Copy with: all of FILE' when that is every definition in the file."""
    tree = ast.parse(copy_piece(filename, [name]))
    taken = {node.name if hasattr(node, "name") else node.targets[0].id for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign))} - {name}
    everything = {node.name for node in ast.parse(open(os.path.join(ROOT, filename)).read()).body
                  if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    docstring = " ".join(ast.get_docstring(next(n for n in tree.body if getattr(n, "name", None) == name)).split())
    if not taken:
        assert "Copies alone." in docstring, docstring
    elif taken | {name} >= {n for n in everything if not n.endswith("Config")}:  # the config: the student's own
        assert f"Copy with: all of {filename}." in docstring, docstring
    else:
        said = docstring.split("Copy with: ")[1].split(".")[0]
        assert set(said.split(", ")) == taken, (said, taken)
