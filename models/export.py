#!/usr/bin/env python3
"""Export an open_clip CLIP model to a winclip-edge model pack.

Run once, on a workstation that can reach the weights:

    python3 models/export.py --model ViT-B-16-plus-240 --pretrained laion400m_e31 \
        --out models/vit-b-16-plus-240

`--pretrained` takes an open_clip tag, a local checkpoint path, or `none`
(random weights, seeded with `--seed`). `--tiny` exports the small test model
of the same family (models/configs/winclip-tiny.json).

The pack holds:
  embed.onnx      image [B,3,S,S]          -> token map [B,1+G*G,W]  (conv1, class token, pos. embedding)
  encoder.onnx    tokens [B,T,W]           -> cls_embed [B,D], ln_post_tokens [B,T,W]   (B, T dynamic)
  text.onnx       token ids [B,77] (int64) -> text_embed [B,D]
  tokenizer.json  CLIP BPE for the `tokenizers` crate
  manifest.toml   architecture, preprocessing, source, sha256 of every file
  reference/      fixed input images and torch reference outputs (parity tests)
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import clip_reference as ref  # noqa: E402
import prompts as prompt_sets  # noqa: E402
import tokenizer_json  # noqa: E402

FORMAT_VERSION = 1
TINY_CONFIG = os.path.join(HERE, "configs", "winclip-tiny.json")
TINY_NAME = "winclip-tiny"


# ---------------------------------------------------------------- export modules


class ExportAttention(nn.Module):
    """Batch-first multi-head self-attention with the weights of an nn.MultiheadAttention.

    The traced nn.MultiheadAttention bakes the example's token count into a
    Reshape; this plain formulation keeps batch and token count symbolic.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        assert mha._qkv_same_embed_dim and mha.in_proj_bias is not None
        self.heads = mha.num_heads
        self.head_dim = mha.embed_dim // mha.num_heads
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj

    def forward(self, x, mask=None):
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.chunk(3, dim=-1)
        q = q.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        k = k.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        v = v.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        att = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        if mask is not None:
            att = att + mask
        att = att.softmax(dim=-1)
        out = (att @ v).transpose(1, 2).flatten(2)
        return self.out_proj(out)


class ExportBlock(nn.Module):
    """open_clip's ResidualAttentionBlock with ExportAttention."""

    def __init__(self, blk):
        super().__init__()
        assert not hasattr(blk, "ln_1_kv"), "cross-attention blocks are not supported"
        self.ln_1, self.ln_2, self.mlp = blk.ln_1, blk.ln_2, blk.mlp
        self.ls_1, self.ls_2 = blk.ls_1, blk.ls_2
        self.attn = ExportAttention(blk.attn)

    def forward(self, x, mask=None):
        x = x + self.ls_1(self.attn(self.ln_1(x), mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


def export_blocks(transformer) -> nn.ModuleList:
    if not transformer.batch_first:
        raise SystemExit("only batch-first open_clip transformers are supported")
    return nn.ModuleList(ExportBlock(b) for b in transformer.resblocks)


class Embed(nn.Module):
    """Image -> token map: conv1, class token, positional embedding."""

    def __init__(self, visual):
        super().__init__()
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding

    def forward(self, image):
        x = self.conv1(image).flatten(2).transpose(1, 2)
        cls = self.class_embedding.reshape(1, 1, -1).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.positional_embedding


class TokenEncoder(nn.Module):
    """Token map (or any subset of its rows) -> (CLS @ proj, ln_post tokens)."""

    def __init__(self, visual):
        super().__init__()
        self.ln_pre, self.ln_post, self.proj = visual.ln_pre, visual.ln_post, visual.proj
        self.blocks = export_blocks(visual.transformer)

    def forward(self, tokens):
        x = self.ln_pre(tokens)
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_post(x)
        return x[:, 0] @ self.proj, x


class TextEncoder(nn.Module):
    """Token ids -> projected text embedding, pooled at the EOT token (argmax id)."""

    def __init__(self, model):
        super().__init__()
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.register_buffer("attn_mask", model.attn_mask.clone())
        self.blocks = export_blocks(model.transformer)

    def forward(self, ids):
        x = self.token_embedding(ids) + self.positional_embedding
        for blk in self.blocks:
            x = blk(x, self.attn_mask)
        x = self.ln_final(x)
        # argmax on floats: the ids are < 2^24, so exact, and every runtime has it.
        eot = ids.float().argmax(dim=-1)
        pooled = torch.gather(x, 1, eot.reshape(-1, 1, 1).expand(-1, 1, x.shape[-1]))[:, 0]
        return pooled @ self.text_projection


def onnx_export(module, args, path, inputs, outputs, dynamic_axes):
    torch.onnx.export(
        module,
        args,
        path,
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=dynamic_axes,
        opset_version=17,
        do_constant_folding=True,
        dynamo=False,
    )


# ---------------------------------------------------------------- reference inputs


def reference_images(out_dir: str) -> list[str]:
    """Write deterministic test pictures (square, non-square, grayscale, small)."""
    from PIL import Image

    rng = np.random.default_rng(1234)
    os.makedirs(out_dir, exist_ok=True)
    names = []

    yy, xx = np.mgrid[0:240, 0:240].astype(np.float32)
    img = np.stack([xx / 239 * 255, yy / 239 * 255, np.full_like(xx, 96)], -1)
    disk = (xx - 150) ** 2 + (yy - 90) ** 2 < 35**2
    img[disk] = (220, 40, 40)
    img += rng.normal(0, 6, img.shape)
    names.append(("square.png", Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")))

    yy, xx = np.mgrid[0:200, 0:320].astype(np.float32)
    stripes = (np.sin(xx / 7.0) * 0.5 + 0.5) * 200
    img = np.stack([stripes, 255 - stripes, (yy / 199) * 255], -1)
    img[60:110, 200:260] = (30, 30, 30)
    img += rng.normal(0, 10, img.shape)
    names.append(("nonsquare.png", Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")))

    yy, xx = np.mgrid[0:100, 0:150].astype(np.float32)
    img = 128 + 80 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 5, xx.shape)
    names.append(("gray-small.png", Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L")))

    for name, im in names:
        im.save(os.path.join(out_dir, name))
    return [n for n, _ in names]


def reference_prompts() -> list[str]:
    normal, anomalous = prompt_sets.ensemble("bottle")
    extra = [
        "a photo of a metal_nut with scratch.",
        "  A PHOTO   of the Screw!!  ",
        "printed circuit board pcb4, rev. 2.0 (v3) - 10% off?",
        "café crème brûlée naïve façade",
        "don't can't we'll i'm they've it's you'd",
        "a photo of the " + "very " * 60 + "long bottle.",
    ]
    return normal + anomalous + extra


# ---------------------------------------------------------------- helpers


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_manifest(path: str, sections: dict) -> None:
    lines = [
        "# winclip-edge model pack manifest, written by models/export.py. Do not edit:",
        "# the Rust loader checks every value below against the files.",
        f"format_version = {FORMAT_VERSION}",
        "",
    ]
    def emit(name, body):
        lines.append(f"[{name}]")
        for k, v in body.items():
            if not isinstance(v, dict):
                lines.append(f"{k} = {toml_value(v)}")
        lines.append("")
        for k, v in body.items():
            if isinstance(v, dict):
                emit(f"{name}.{k}", v)

    for name, body in sections.items():
        emit(name, body)
    with open(path, "w") as f:
        f.write("\n".join(lines))


def build_model(args):
    import open_clip

    name = args.model
    if args.tiny:
        open_clip.add_model_config(TINY_CONFIG)
        name = TINY_NAME
    source = {"model": name, "open_clip_version": open_clip.__version__, "torch_version": torch.__version__}
    torch.manual_seed(args.seed)
    pretrained = args.pretrained
    if pretrained in (None, "", "none"):
        model = open_clip.create_model(name, pretrained=None)
        source.update(pretrained="none", seed=args.seed)
    elif os.path.isfile(pretrained):
        model = open_clip.create_model(name, pretrained=pretrained)
        source.update(pretrained="checkpoint", checkpoint=os.path.basename(pretrained),
                      checkpoint_sha256=sha256_file(pretrained))
    else:
        model = open_clip.create_model(name, pretrained=pretrained)
        source.update(pretrained=pretrained)
    model.eval()
    if args.save_checkpoint:
        torch.save(model.state_dict(), args.save_checkpoint)
    return model, source


def architecture(model) -> dict:
    v = model.visual
    blk = v.transformer.resblocks[0]
    size = v.image_size[0]
    patch = v.patch_size[0]
    return {
        "image_size": size,
        "patch_size": patch,
        "grid": size // patch,
        "tokens": (size // patch) ** 2 + 1,
        "vision_width": v.conv1.out_channels,
        "vision_layers": len(v.transformer.resblocks),
        "vision_heads": blk.attn.num_heads,
        "embed_dim": v.proj.shape[1],
        "text_width": model.transformer.width,
        "text_layers": len(model.transformer.resblocks),
        "text_heads": model.transformer.resblocks[0].attn.num_heads,
        "context_length": model.context_length,
        "vocab_size": model.vocab_size,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-16-plus-240", help="open_clip model name")
    p.add_argument("--pretrained", default="none", help="open_clip tag, checkpoint path, or 'none'")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (--pretrained none)")
    p.add_argument("--tiny", action="store_true", help="export the tiny test model of the same family")
    p.add_argument("--out", required=True, help="output pack directory")
    p.add_argument("--no-reference", action="store_true", help="skip the torch reference outputs")
    p.add_argument("--save-checkpoint", help="also save the model's state_dict here (for reference scripts)")
    args = p.parse_args(argv)

    torch.backends.mha.set_fastpath_enabled(False)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()
    model, source = build_model(args)
    arch = architecture(model)
    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    size, width = arch["image_size"], arch["vision_width"]

    with torch.no_grad():
        onnx_export(Embed(model.visual), (torch.zeros(1, 3, size, size),), out("embed.onnx"),
                    ["image"], ["token_map"], {"image": {0: "batch"}, "token_map": {0: "batch"}})
        onnx_export(TokenEncoder(model.visual), (torch.zeros(2, 7, width),), out("encoder.onnx"),
                    ["tokens"], ["cls_embed", "ln_post_tokens"],
                    {"tokens": {0: "batch", 1: "seq"}, "cls_embed": {0: "batch"},
                     "ln_post_tokens": {0: "batch", 1: "seq"}})
        ids = torch.zeros(2, arch["context_length"], dtype=torch.long)
        ids[:, 0], ids[:, 1] = 49406, 49407
        onnx_export(TextEncoder(model), (ids,), out("text.onnx"),
                    ["ids"], ["text_embed"], {"ids": {0: "batch"}, "text_embed": {0: "batch"}})
    tokenizer_json.write(out("tokenizer.json"), arch["context_length"])
    print(f"exported ONNX in {time.time() - t0:.1f}s", file=sys.stderr)

    files = {}
    for key, name in [("embed", "embed.onnx"), ("encoder", "encoder.onnx"), ("text", "text.onnx"),
                      ("tokenizer", "tokenizer.json")]:
        files[key] = {"path": name, "sha256": sha256_file(out(name)), "bytes": os.path.getsize(out(name))}
    sections = {
        "architecture": arch,
        "preprocess": {"resize": "bicubic-antialias", "mean": list(ref.CLIP_MEAN), "std": list(ref.CLIP_STD)},
        "source": {**source, "exported": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
        "files": files,
    }
    if not args.no_reference:
        t1 = time.time()
        report = write_reference(model, arch, out("reference"))
        sections["reference"] = report
        print(f"reference outputs in {time.time() - t1:.1f}s", file=sys.stderr)
    write_manifest(out("manifest.toml"), sections)
    print(f"wrote {args.out} in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


def write_reference(model, arch, ref_dir: str) -> dict:
    """Torch reference outputs for fixed inputs, plus an onnxruntime cross-check."""
    import onnxruntime as ort
    from safetensors.numpy import save_file

    import open_clip

    names = reference_images(ref_dir)
    tensors = {}
    ort_diff = 0.0
    pack = os.path.dirname(ref_dir)
    sess_embed = ort.InferenceSession(os.path.join(pack, "embed.onnx"))
    sess_enc = ort.InferenceSession(os.path.join(pack, "encoder.onnx"))
    sess_text = ort.InferenceSession(os.path.join(pack, "text.onnx"))
    for i, name in enumerate(names):
        rgb = ref.load_rgb(os.path.join(ref_dir, name))
        pixels = ref.preprocess(rgb, arch["image_size"])
        feats = ref.image_features(model, pixels, arch["grid"])
        tensors[f"image.{i}.pixels"] = pixels.numpy()
        for k, v in feats.items():
            tensors[f"image.{i}.{k}"] = v.numpy()
        # onnxruntime on the exported files, as a check on the export itself.
        fmap = sess_embed.run(None, {"image": pixels.numpy()[None]})[0]
        emb, toks = sess_enc.run(None, {"tokens": fmap})
        idx = np.array(ref.window_indices(arch["grid"], 3))
        w3, _ = sess_enc.run(None, {"tokens": fmap[0][idx]})
        for a, b in [(fmap[0], feats["token_map"]), (emb[0], feats["embedding"]), (toks[0], feats["tokens"]),
                     (w3, feats["windows.3"])]:
            ort_diff = max(ort_diff, float(np.abs(a - b.numpy()).max()))

    prompts = reference_prompts()
    ids = open_clip.tokenize(prompts, context_length=arch["context_length"])
    text = ref.text_embeddings(model, ids)
    tensors["text.ids"] = ids.numpy().astype(np.int64)
    tensors["text.embeddings"] = text.numpy()
    ort_text = sess_text.run(None, {"ids": ids.numpy()[:64]})[0]
    ort_diff = max(ort_diff, float(np.abs(ort_text - text.numpy()[:64]).max()))
    tokenizer_json.check(os.path.join(pack, "tokenizer.json"), prompts)

    with open(os.path.join(ref_dir, "prompts.json"), "w", encoding="utf-8") as f:
        json.dump(prompts, f, ensure_ascii=False, indent=0)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(tensors, os.path.join(ref_dir, "reference.safetensors"), metadata={"images": json.dumps(names)})
    print(f"onnxruntime vs torch reference: max abs diff {ort_diff:.2e}", file=sys.stderr)
    return {"images": names, "prompts": "reference/prompts.json", "tensors": "reference/reference.safetensors",
            "onnxruntime_max_abs_diff": float(f"{ort_diff:.3e}")}


if __name__ == "__main__":
    sys.exit(main())
