"""Reference computations straight from open_clip's own modules.

Everything here uses open_clip's VisionTransformer / text tower as they are
(nn.MultiheadAttention included), so it is independent of the attention
rewrite that export.py uses to get ONNX graphs with dynamic shapes. The Rust
parity tests compare against the numbers computed here.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_rgb(path) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def preprocess(rgb: np.ndarray, size: int) -> torch.Tensor:
    """RGB uint8 HxWx3 -> normalised float tensor [3,size,size].

    The WinCLIP reference pipeline: float in [0,1], bicubic antialiased resize
    straight to size x size (no crop), CLIP mean/std.
    """
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    x = TF.resize(x, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.normalize(x, CLIP_MEAN, CLIP_STD)


def window_indices(grid: int, k: int) -> list[list[int]]:
    """Token indices (into the 1 + grid*grid token map) of every k x k window,
    stride 1, row-major by top-left corner; the CLS row 0 comes first."""
    out = []
    for r in range(grid - k + 1):
        for c in range(grid - k + 1):
            idx = [0]
            for i in range(k):
                for j in range(k):
                    idx.append(1 + (r + i) * grid + (c + j))
            out.append(idx)
    return out


@torch.no_grad()
def token_map(visual, pixels: torch.Tensor) -> torch.Tensor:
    """conv1 -> prepend class token -> + positional embedding. [B,3,H,W] -> [B,T,W]."""
    x = visual.conv1(pixels)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    return x + visual.positional_embedding.to(x.dtype)


@torch.no_grad()
def encode_tokens(visual, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ln_pre -> open_clip's transformer -> ln_post; returns (CLS @ proj, all ln_post tokens)."""
    x = visual.ln_pre(tokens)
    x = visual.transformer(x)
    x = visual.ln_post(x)
    return x[:, 0] @ visual.proj, x


@torch.no_grad()
def window_embeddings(visual, fmap: torch.Tensor, grid: int, k: int, chunk: int = 64) -> torch.Tensor:
    """Embeddings [n_windows, D] of all k x k windows of one token map [T,W]."""
    idx = torch.tensor(window_indices(grid, k))
    seqs = fmap[idx]  # [n, 1+k*k, W]
    outs = []
    for s in range(0, seqs.shape[0], chunk):
        emb, _ = encode_tokens(visual, seqs[s : s + chunk])
        outs.append(emb)
    return torch.cat(outs)


@torch.no_grad()
def image_features(model, pixels: torch.Tensor, grid: int) -> dict[str, torch.Tensor]:
    """All vision-side reference features for one preprocessed image [3,H,W]."""
    visual = model.visual
    x = pixels.unsqueeze(0)
    fmap = token_map(visual, x)
    emb, toks = encode_tokens(visual, fmap)
    # open_clip's own end-to-end forward must agree with the split computation.
    full = model.encode_image(x)
    assert torch.allclose(full, emb, atol=1e-5), (full - emb).abs().max()
    return {
        "token_map": fmap[0],
        "embedding": emb[0],
        "tokens": toks[0],
        "windows.2": window_embeddings(visual, fmap[0], grid, 2),
        "windows.3": window_embeddings(visual, fmap[0], grid, 3),
    }


@torch.no_grad()
def text_embeddings(model, ids: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """open_clip's encode_text (un-normalised) for token ids [N,77]."""
    return torch.cat([model.encode_text(ids[s : s + chunk]) for s in range(0, ids.shape[0], chunk)])
