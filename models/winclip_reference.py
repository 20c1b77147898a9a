#!/usr/bin/env python3
"""WinCLIP / WinCLIP+ computed directly from open_clip's modules: an independent reference.

Nothing here comes from the Rust crate or from ONNX: features come from
open_clip's own VisionTransformer / text tower (clip_reference.py), text
prototypes from open_clip's tokenizer and encode_text, and the scoring follows
the paper's equations in the vectorised form (incidence-matrix harmonic
aggregation, matrix-product association), in PyTorch.

Write reference outputs:

    python3 models/winclip_reference.py --tiny --seed 0 --object bottle \
        --shots s0.png s1.png s2.png s3.png --ks 0,1,2,4 --images q0.png q1.png \
        --out ref.safetensors

Compare with winclip-edge's own outputs (`inspect --json --maps DIR`):

    python3 models/winclip_reference.py ... --compare-json rust.jsonl --compare-maps DIR

For a real model use `--model ViT-B-16-plus-240 --pretrained <tag or checkpoint>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import clip_reference as ref  # noqa: E402
import prompts as prompt_sets  # noqa: E402


def build_model(args):
    import export

    ns = types.SimpleNamespace(model=args.model, tiny=args.tiny, seed=args.seed, pretrained=args.pretrained,
                               save_checkpoint=None)
    model, _ = export.build_model(ns)
    return model


@torch.no_grad()
def text_prototypes(model, obj, templates, states, context_length):
    import open_clip

    normal, anomalous = prompt_sets.ensemble(obj, templates, states)
    emb = lambda ps: ref.text_embeddings(model, open_clip.tokenize(ps, context_length=context_length))  # noqa: E731
    return emb(normal).mean(0), emb(anomalous).mean(0)


def class_score(e, t_n, t_a, tau):
    """Anomalous probability of each row of e: softmax over (cos_n, cos_a) / tau."""
    e = F.normalize(e, dim=-1)
    logits = torch.stack([e @ F.normalize(t_n, dim=0), e @ F.normalize(t_a, dim=0)], dim=-1) / tau
    return logits.softmax(dim=-1)[..., 1]


def incidence(grid, k):
    """C (P x W): C[p, w] = 1 when window w covers patch p."""
    wins = ref.window_indices(grid, k)
    c = torch.zeros(grid * grid, len(wins))
    for w, idx in enumerate(wins):
        for t in idx[1:]:
            c[t - 1, w] = 1.0
    return c


def harmonic(c, scores):
    """M̄ = rowsum(C) ./ (C · (1 ./ M_w))."""
    return c.sum(1) / (c @ (1.0 / scores))


def association(q, r):
    """min_r ½(1 − cos(q, r)) per row of q."""
    sims = F.normalize(q, dim=-1) @ F.normalize(r, dim=-1).T
    return 0.5 * (1.0 - sims.max(dim=1).values)


@torch.no_grad()
def features(model, path, grid, size):
    pixels = ref.preprocess(ref.load_rgb(path), size)
    f = ref.image_features(model, pixels, grid)
    return {"embedding": f["embedding"], "patches": f["tokens"][1:], "windows.2": f["windows.2"],
            "windows.3": f["windows.3"]}


def winclip(f, t_n, t_a, tau, inc, refs, size):
    grid = int(round(f["patches"].shape[0] ** 0.5))
    s_img = class_score(f["embedding"][None], t_n, t_a, tau)[0]
    m2 = harmonic(inc[2], class_score(f["windows.2"], t_n, t_a, tau))
    m3 = harmonic(inc[3], class_score(f["windows.3"], t_n, t_a, tau))
    m0 = 3.0 / (1.0 / s_img + 1.0 / m2 + 1.0 / m3)
    out = {"image_score": s_img, "zero_shot": m0.reshape(grid, grid)}
    if refs is None:
        out["score"], out["grid"] = s_img, m0.reshape(grid, grid)
    else:
        vp = association(f["patches"], refs["patches"])
        v2 = harmonic(inc[2], association(f["windows.2"], refs["windows.2"]))
        v3 = harmonic(inc[3], association(f["windows.3"], refs["windows.3"]))
        mw = (vp + v2 + v3) / 3.0
        out["few_shot"] = mw.reshape(grid, grid)
        out["score"] = (s_img + mw.max()) / 2.0
        out["grid"] = ((m0 + mw) / 2.0).reshape(grid, grid)
    out["map"] = F.interpolate(out["grid"][None, None], size=(size, size), mode="bilinear",
                               align_corners=False)[0, 0]
    return out


def pearson(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / np.sqrt((a @ a) * (b @ b)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-16-plus-240")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--pretrained", default="none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--object", required=True)
    p.add_argument("--prompt-set", default="paper", choices=sorted(prompt_sets.TEMPLATE_SETS))
    p.add_argument("--state", action="append", default=[])
    p.add_argument("--tau", type=float, default=0.07)
    p.add_argument("--shots", nargs="*", default=[])
    p.add_argument("--ks", default="0")
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--out", help="write reference outputs (safetensors)")
    p.add_argument("--compare-json", help="winclip-edge inspect --json output for --images, one K only")
    p.add_argument("--compare-maps", help="directory of winclip-edge <stem>.npy maps")
    args = p.parse_args(argv)

    torch.backends.mha.set_fastpath_enabled(False)
    model = build_model(args)
    grid = model.visual.grid_size[0]
    size = model.visual.image_size[0]
    t_n, t_a = text_prototypes(model, args.object, prompt_sets.TEMPLATE_SETS[args.prompt_set], args.state,
                               model.context_length)
    inc = {2: incidence(grid, 2), 3: incidence(grid, 3)}
    ks = [int(k) for k in args.ks.split(",")]
    if max(ks) > len(args.shots):
        p.error(f"--ks asks for {max(ks)} shots but only {len(args.shots)} given")
    shot_feats = [features(model, s, grid, size) for s in args.shots[: max(ks)]]
    query_feats = [features(model, q, grid, size) for q in args.images]

    tensors, results = {}, {}
    for k in ks:
        refs = None
        if k > 0:
            refs = {key: torch.cat([f[key] for f in shot_feats[:k]]) for key in ("patches", "windows.2", "windows.3")}
        for i, f in enumerate(query_feats):
            o = winclip(f, t_n, t_a, args.tau, inc, refs, size)
            results[(k, i)] = o
            for key, v in o.items():
                tensors[f"k{k}.{i}.{key}"] = v.reshape(-1).numpy() if v.ndim == 0 else v.numpy()
            print(f"K={k} {os.path.basename(args.images[i])}: score {float(o['score']):.6f} "
                  f"(image {float(o['image_score']):.6f}), map range {float(o['map'].min()):.6f}..{float(o['map'].max()):.6f}")

    if args.out:
        from safetensors.numpy import save_file

        meta = {"images": json.dumps([os.path.basename(x) for x in args.images]),
                "shots": json.dumps([os.path.basename(x) for x in args.shots]), "ks": args.ks,
                "object": args.object, "prompt_set": args.prompt_set, "tau": str(args.tau)}
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, args.out, metadata=meta)
        print(f"wrote {args.out}")

    if args.compare_json or args.compare_maps:
        if len(ks) != 1:
            p.error("--compare-* need exactly one K in --ks")
        k = ks[0]
        worst_score = worst_map = worst_grid = 0.0
        worst_r = 1.0
        rust = {}
        if args.compare_json:
            with open(args.compare_json) as fh:
                for line in fh:
                    d = json.loads(line)
                    rust[os.path.basename(d.get("file") or d["image"])] = d  # record schema 1: "file"
        for i, path in enumerate(args.images):
            o = results[(k, i)]
            name = os.path.basename(path)
            if rust:
                worst_score = max(worst_score, abs(rust[name]["score"] - float(o["score"])))
            if args.compare_maps:
                stem = os.path.splitext(name)[0]
                m = np.load(os.path.join(args.compare_maps, stem + ".npy"))
                worst_map = max(worst_map, float(np.abs(m - o["map"].numpy()).max()))
                worst_r = min(worst_r, pearson(m, o["map"].numpy()))
                g = os.path.join(args.compare_maps, stem + ".grid.npy")
                if os.path.exists(g):
                    gm = np.load(g)
                    worst_grid = max(worst_grid, float(np.abs(gm - o["grid"].numpy()).max()))
                    worst_r = min(worst_r, pearson(gm, o["grid"].numpy()))
        print(f"compare K={k} on {len(args.images)} images: max |score diff| {worst_score:.3e}, "
              f"max |map diff| {worst_map:.3e}, max |grid diff| {worst_grid:.3e}, min Pearson r {worst_r:.6f}")
        # The engine's tolerances (README, "Tested how"): scores and maps within 1e-4, r >= 0.999.
        ok = worst_score <= 1e-4 and max(worst_map, worst_grid) <= 1e-4 and worst_r >= 0.999
        print("PASS" if ok else "FAIL: beyond 1e-4 or r < 0.999")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
