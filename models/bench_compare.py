#!/usr/bin/env python3
"""Side-by-side speed of one WinCLIP image: winclip-edge (tract) vs onnxruntime vs PyTorch.

Runs, in this one process and one after the other on the same machine and
thread count:
  1. `winclip-edge bench --json` (our whole pipeline, stage by stage);
  2. onnxruntime on the very ONNX files of the pack (embed.onnx, encoder.onnx):
     the full image (1 x T tokens) and every window batch (196 x 5, 169 x 10);
  3. PyTorch on the same model built by open_clip (the same weights: the pack's
     checkpoint, pretrained tag, or random seed from its manifest), through
     open_clip's own modules (clip_reference.py);
and writes the ratio table to docs/benchmarks.md (or --out).

With --precisions int8,bf16 it also runs reduced precision side by side, each
engine doing the same reduced work: `winclip-edge bench --precision P` (which
measures its differences to our f32 and a verdict stream), onnxruntime's
dynamic int8 quantisation of the same encoder
(`onnxruntime.quantization.quantize_dynamic`: int8 weights per output channel,
activations quantised at run time, the final projection kept f32 as ours is),
and PyTorch's bf16 autocast; the table then has a row per precision and stage.

Outside the product: needs the exporter's venv (models/requirements.txt).

    python3 models/bench_compare.py --pack models/tiny
    python3 models/bench_compare.py --pack /path/to/vit-b-16-plus-240 --images 5
    python3 models/bench_compare.py --pack /path/to/vit-b-16-plus-240 --images 3 --precisions int8,bf16
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def window_batches(fmap: np.ndarray, grid: int) -> dict[int, np.ndarray]:
    import clip_reference as ref

    return {k: fmap[np.array(ref.window_indices(grid, k))] for k in (2, 3)}


def bench_ours(binary: str, pack: str, threads: int, images: int, precision: str = "f32",
               verdicts: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        cmd = [binary, "bench", "--threads", str(threads), "--model", pack, "--images", str(images),
               "--k", "1,4", "--json", out, "--precision", precision]
        if verdicts is not None:
            cmd += ["--verdicts", str(verdicts)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        with open(out) as f:
            return json.load(f)


def bench_ort(pack: str, arch: dict, pixels: np.ndarray, threads: int, runs: int,
              encoder: str | None = None) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    embed = ort.InferenceSession(os.path.join(pack, "embed.onnx"), opts, providers=["CPUExecutionProvider"])
    enc = ort.InferenceSession(encoder or os.path.join(pack, "encoder.onnx"), opts,
                               providers=["CPUExecutionProvider"])
    e_in, t_in = embed.get_inputs()[0].name, enc.get_inputs()[0].name
    fmap = embed.run(None, {e_in: pixels[None]})[0]
    batches = window_batches(fmap[0], arch["grid"])
    out = {
        "image": median_ms(lambda: enc.run(None, {t_in: embed.run(None, {e_in: pixels[None]})[0]}), runs),
    }
    for k, b in batches.items():
        out[f"windows.{k}"] = median_ms(lambda b=b: enc.run(None, {t_in: b}), runs)
    cls = enc.run(None, {t_in: fmap})[0]
    return out, fmap, cls


def quantize_encoder(pack: str, out: str) -> str:
    """onnxruntime's dynamic int8 quantisation of the pack's encoder: int8 weights per
    output channel, activations quantised at run time; the final projection (the MatMul
    with the `proj` initializer) is kept f32, as winclip-edge keeps it."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = os.path.join(pack, "encoder.onnx")
    graph = onnx.load(src, load_external_data=False).graph
    keep = [n.name for n in graph.node if n.op_type == "MatMul" and "proj" in n.input]
    quantize_dynamic(src, out, weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep)
    return out


def bench_torch(manifest: dict, checkpoint: str | None, pixels: np.ndarray, threads: int, runs: int,
                bf16: bool = False):
    import torch

    import clip_reference as ref
    import export

    torch.set_num_threads(threads)
    src = manifest["source"]
    tiny = src["model"] == export.TINY_NAME
    pretrained = src["pretrained"]
    if pretrained == "checkpoint":
        if not checkpoint:
            raise SystemExit("this pack was exported from a checkpoint: pass --checkpoint PATH")
        pretrained = checkpoint
    ns = types.SimpleNamespace(model=src["model"], tiny=tiny, seed=src.get("seed", 0), pretrained=pretrained,
                               save_checkpoint=None)
    model, _ = export.build_model(ns)
    visual = model.visual
    grid = manifest["architecture"]["grid"]
    x = torch.from_numpy(pixels)[None]
    import contextlib

    # bf16: PyTorch's autocast (oneDNN's bf16 kernels: AVX-512 BF16 / AMX where the CPU has them).
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), cast:
        fmap = ref.token_map(visual, x)
        idx = {k: torch.tensor(ref.window_indices(grid, k)) for k in (2, 3)}
        out = {"image": median_ms(lambda: ref.encode_tokens(visual, ref.token_map(visual, x)), runs)}
        for k, i in idx.items():
            seqs = fmap[0][i]
            out[f"windows.{k}"] = median_ms(lambda s=seqs: ref.encode_tokens(visual, s), runs)
        cls, _ = ref.encode_tokens(visual, fmap)
    return out, fmap.float().numpy(), cls.float().numpy()


def versions() -> dict:
    import onnxruntime
    import open_clip
    import torch

    tract, gemm = "?", "?"
    with open(os.path.join(ROOT, "Cargo.lock"), "rb") as f:
        lock = tomllib.load(f)
    for p in lock.get("package", []):
        if p["name"] == "tract-core":
            tract = p["version"]
        if p["name"] == "gemm":
            gemm = p["version"]
    return {"tract": tract, "gemm": gemm, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "open_clip": open_clip.__version__, "python": platform.python_version()}


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def section(pack: str, manifest: dict, ours: dict, ort_ms: dict, torch_ms: dict, threads: int, images: int,
            agree: float) -> str:
    stages = {s["name"]: s for s in ours["stages"]}
    def ours_stage(prefix):
        return next(s["median_ms"] for n, s in stages.items() if n.startswith(prefix))
    ours_ms = {"image": ours_stage("image"), "windows.2": ours_stage("windows 2"),
               "windows.3": ours_stage("windows 3")}
    rows = [("full image (embed + encoder, 1 × %d)" % manifest["architecture"]["tokens"], "image"),
            ("windows 2×2 (196 × 5)", "windows.2"), ("windows 3×3 (169 × 10)", "windows.3")]
    forward = {name: sum(d[k] for _, k in rows) for name, d in
               (("ours", ours_ms), ("ort", ort_ms), ("torch", torch_ms))}
    modes = {m["name"]: m for m in ours["modes"]}
    k4 = next((m for m in ours["modes"] if m.get("shots") == 4), None)
    v = versions()
    lines = [
        f"## {manifest['source']['model']} (pack `{os.path.relpath(pack, ROOT) if pack.startswith(ROOT) else pack}`,"
        f" id {ours['pack_id']})",
        "",
        f"- machine: {ours['cpu']}, {os.cpu_count()} cores, {platform.system()} {platform.release()};"
        f" {threads} thread(s) for every engine",
        f"- versions: winclip-edge {git_commit()} with tract {v['tract']} and gemm {v['gemm']}; onnxruntime {v['onnxruntime']};"
        f" torch {v['torch']} with open_clip {v['open_clip']}",
        f"- method: median of {images} runs after one warm-up per stage, all three engines in one"
        f" `models/bench_compare.py` run on {datetime.date.today().isoformat()};"
        f" onnxruntime and winclip-edge run the same ONNX files; PyTorch runs open_clip's modules with the same weights"
        f" (their image embeddings agree to {agree:.1e})",
        "",
        "| network work per picture | winclip-edge ms | onnxruntime ms | PyTorch ms | ours / ORT | ours / PyTorch |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in rows:
        o, r, t = ours_ms[key], ort_ms[key], torch_ms[key]
        lines.append(f"| {label} | {o:.1f} | {r:.1f} | {t:.1f} | {o / r:.2f} | {o / t:.2f} |")
    o, r, t = forward["ours"], forward["ort"], forward["torch"]
    lines.append(f"| **all forward passes of one WinCLIP picture** | **{o:.1f}** | **{r:.1f}** | **{t:.1f}** |"
                 f" **{o / r:.2f}** | **{o / t:.2f}** |")
    if k4:
        lines.append(f"| winclip-edge WinCLIP+ K=4 end to end (decode excluded; preprocessing, scoring, upsampling"
                     f" included) vs the others' forward passes | {k4['median_ms']:.1f} | {r:.1f} | {t:.1f} |"
                     f" {k4['median_ms'] / r:.2f} | {k4['median_ms'] / t:.2f} |")
    lines += ["", "winclip-edge per mode (from `winclip-edge bench`):", "",
              "| mode | median ms | pictures/s | GFLOP/s |", "|---|---|---|---|"]
    for m in modes.values():
        gf = m["gflop"] / (m["median_ms"] / 1e3) if m["gflop"] else 0
        lines.append(f"| {m['name']} | {m['median_ms']:.1f} | {1e3 / m['median_ms']:.2f} | {gf:.1f} |")
    gb = lambda b: f"{b / 1e9:.2f} GB" if b else "n/a"  # noqa: E731
    lines += ["", f"Memory (winclip-edge): RSS after loading the vision graphs {gb(ours['rss_loaded_bytes'])},"
              f" peak while inspecting with K = 1 and 4 banks {gb(ours['peak_rss_bytes'])},"
              f" peak while loading {gb(ours.get('load_peak_rss_bytes'))}.", ""]
    return "\n".join(lines)


def ours_stage_ms(ours: dict) -> dict:
    stages = {s["name"]: s["median_ms"] for s in ours["stages"]}
    pick = lambda prefix: next(ms for n, ms in stages.items() if n.startswith(prefix))  # noqa: E731
    out = {"image": pick("image"), "windows.2": pick("windows 2"), "windows.3": pick("windows 3")}
    out["forward"] = out["image"] + out["windows.2"] + out["windows.3"]
    return out


def precision_section(manifest: dict, ours_f32: dict, ort_f32: dict, torch_f32: dict, runs: dict) -> str:
    """The precision x stage x engine table and the deviation table."""
    tokens = manifest["architecture"]["tokens"]
    rows = [(f"full image (1 × {tokens})", "image"), ("windows 2×2 (196 × 5)", "windows.2"),
            ("windows 3×3 (169 × 10)", "windows.3"), ("**every forward pass of a picture**", "forward")]
    with_total = lambda d: dict(d, forward=d["image"] + d["windows.2"] + d["windows.3"]) if d else None  # noqa: E731
    f32 = ours_stage_ms(ours_f32)
    fmt = lambda v: f"{v:.1f}" if v is not None else "–"  # noqa: E731
    ratio = lambda a, b: f"{a / b:.2f}" if a is not None and b is not None else "–"  # noqa: E731
    lines = [
        "### Reduced precision, side by side (the same run)",
        "",
        "Each engine does the same reduced work: onnxruntime's int8 is its dynamic quantisation of the same "
        "encoder (`quantize_dynamic`, int8 weights per channel, the projection kept f32); PyTorch's bf16 is "
        "its autocast. \"× our f32\" is our f32 time over ours in that precision (a speed-up).",
        "",
        "| precision | network work per picture | winclip-edge ms | × our f32 | onnxruntime ms | PyTorch ms "
        "| ours / ORT | ours / PyTorch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    engines = {"f32": (f32, with_total(ort_f32), with_total(torch_f32))}
    for p, r in runs.items():
        engines[p] = (ours_stage_ms(r["ours"]), with_total(r.get("ort")), with_total(r.get("torch")))
    for p, (o, ort, tch) in engines.items():
        for label, key in rows:
            ov, rv, tv = o[key], ort[key] if ort else None, tch[key] if tch else None
            lines.append(f"| {p} | {label} | {fmt(ov)} | {ratio(f32[key], ov)} | {fmt(rv)} | {fmt(tv)} "
                         f"| {ratio(ov, rv)} | {ratio(ov, tv)} |")
    for p, r in runs.items():
        k4 = next((m for m in r["ours"]["modes"] if m.get("shots") == 4), None)
        k4_f32 = next((m for m in ours_f32["modes"] if m.get("shots") == 4), None)
        if k4 and k4_f32:
            lines.append(f"| {p} | winclip-edge WinCLIP+ K=4 end to end | {k4['median_ms']:.1f} "
                         f"| {k4_f32['median_ms'] / k4['median_ms']:.2f} | | | | |")
    gb = lambda b: f"{b / 1e9:.2f} GB" if b else "n/a"  # noqa: E731
    lines += [
        "",
        "What the precision changes, against our f32 (the same pictures and 4-shot bank; then a stream judged by "
        "a bank built and calibrated with each encoder):",
        "",
        "| precision | kernel (layers kept f32) | max \\|score diff\\| | max \\|map diff\\| / f32 map range "
        "| map Pearson r | verdicts agree | stream image AUROC f32 → this | RSS loaded / peak inspecting "
        "/ peak loading | other engines' class embedding max \\|diff\\| to their f32 |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| f32 | gemm | – | – | – | – | – | {gb(ours_f32['rss_loaded_bytes'])} / {gb(ours_f32['peak_rss_bytes'])}"
        f" / {gb(ours_f32.get('load_peak_rss_bytes'))} | – |",
    ]
    for p, r in runs.items():
        o = r["ours"]
        c = o.get("precision_check") or {}
        n = o.get("numerics") or {}
        v = c.get("verdicts")
        agree = f"{v['agreeing']} of {v['pictures']} ({100 * v['agreeing'] / max(v['pictures'], 1):.1f} %)" \
            if v else "–"
        auc = lambda a: f"{a:.4f}" if a is not None else "n/a"  # noqa: E731
        stream = f"{auc(v.get('auroc_f32'))} → {auc(v.get('auroc_measured'))}" if v else "–"
        kernel = f"{n.get('kernel') or 'none'} ({', '.join(n.get('kept') or []) or '–'})"
        if n.get("running") and n.get("running") != p:
            kernel += f"; ran {n['running']}: {n.get('warning')}"
        others = "; ".join(f"{name} {d:.2e}" for name, d in r.get("others", {}).items()) or "–"
        rel = c.get("max_map_diff", 0) / c["map_range"] if c.get("map_range") else float("nan")
        lines.append(
            f"| {p} | {kernel} | {c.get('max_score_diff', float('nan')):.2e} | {c.get('max_map_diff', float('nan')):.2e}"
            f" / {c.get('map_range', float('nan')):.3f} ({100 * rel:.2f} %) | {c.get('map_pearson_r', float('nan')):.6f}"
            f" | {agree} | {stream} | {gb(o['rss_loaded_bytes'])} / {gb(o['peak_rss_bytes'])}"
            f" / {gb(o.get('load_peak_rss_bytes'))} | {others} |")
    lines += ["", "Random weights have no outlier channels: check a real pack's accuracy in int8 or bf16 with "
              "`winclip-edge eval --precision int8` on your own pictures (README: reduced precision).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", default=os.path.join(ROOT, "models/tiny"))
    p.add_argument("--bin", default=os.path.join(ROOT, "target/dist/winclip-edge"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--checkpoint", help="the checkpoint a pack was exported from (pretrained = checkpoint)")
    p.add_argument("--out", default=os.path.join(ROOT, "docs/benchmarks.md"))
    p.add_argument("--section-only", action="store_true", help="print the section, do not touch --out")
    p.add_argument("--precisions", default="", help="also these reduced precisions side by side: int8,bf16,f16")
    p.add_argument("--verdicts", default="200",
                   help="pictures of winclip-edge's verdict stream per precision: N, or per precision "
                        "(int8=200,bf16=40)")
    args = p.parse_args(argv)
    precisions = [s for s in args.precisions.split(",") if s]
    for s in precisions:
        if s not in ("int8", "bf16", "f16"):
            raise SystemExit(f"--precisions: {s} is not int8, bf16 or f16")
    try:
        if "=" in args.verdicts:
            verdicts = {k: int(v) for k, v in (kv.split("=") for kv in args.verdicts.split(","))}
        else:
            verdicts = {p: int(args.verdicts) for p in precisions}
    except ValueError:
        raise SystemExit(f"--verdicts {args.verdicts}: N or PRECISION=N,...") from None

    import clip_reference as ref

    pack = os.path.abspath(args.pack)
    with open(os.path.join(pack, "manifest.toml"), "rb") as f:
        manifest = tomllib.load(f)
    arch = manifest["architecture"]
    ours = bench_ours(args.bin, pack, args.threads, args.images)
    rng = np.random.default_rng(0)
    rgb = (rng.random((256, 256, 3)) * 255).astype(np.uint8)
    pixels = ref.preprocess(rgb, arch["image_size"]).numpy()
    print("onnxruntime...", flush=True)
    ort_ms, ort_fmap, ort_cls = bench_ort(pack, arch, pixels, args.threads, args.images)
    print("PyTorch...", flush=True)
    torch_ms, torch_fmap, torch_cls = bench_torch(manifest, args.checkpoint, pixels, args.threads, args.images)
    agree_ort = float(np.abs(ort_cls - torch_cls).max())
    # Same weights check: onnxruntime vs torch on the same pixels.
    if agree_ort > 1e-3 or float(np.abs(ort_fmap - torch_fmap).max()) > 1e-3:
        raise SystemExit(f"PyTorch and the ONNX files disagree ({agree_ort:.2e}): not the same weights")
    text = section(pack, manifest, ours, ort_ms, torch_ms, args.threads, args.images, agree_ort)
    if precisions:
        runs = {}
        for prec in precisions:
            print(f"winclip-edge {prec}...", flush=True)
            run = {"ours": bench_ours(args.bin, pack, args.threads, args.images, prec, verdicts.get(prec, 0)),
                   "others": {}}
            if prec == "int8":
                print("onnxruntime dynamic int8...", flush=True)
                with tempfile.TemporaryDirectory() as tmp:
                    q = quantize_encoder(pack, os.path.join(tmp, "encoder.int8.onnx"))
                    run["ort"], _, cls = bench_ort(pack, arch, pixels, args.threads, args.images, encoder=q)
                run["others"]["onnxruntime int8"] = float(np.abs(cls - ort_cls).max())
            if prec == "bf16":
                print("PyTorch bf16 autocast...", flush=True)
                run["torch"], _, cls = bench_torch(manifest, args.checkpoint, pixels, args.threads, args.images,
                                                   bf16=True)
                run["others"]["PyTorch bf16"] = float(np.abs(cls - torch_cls).max())
            runs[prec] = run
        text += "\n" + precision_section(manifest, ours, ort_ms, torch_ms, runs)
    print(text)
    if args.section_only:
        return 0
    header = "# Benchmarks\n\nGenerated by `models/bench_compare.py`; one section per model pack, replaced on rerun.\n"
    body = header
    if os.path.exists(args.out):
        with open(args.out) as f:
            body = f.read()
    title = text.splitlines()[0].split(" (pack")[0]
    parts = body.split("\n## ")
    kept = [parts[0].rstrip("\n") + "\n"] + ["## " + s.rstrip("\n") + "\n" for s in parts[1:]
                                             if not ("## " + s).startswith(title + " (pack")]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(kept + [text]))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
