"""Build a HuggingFace `tokenizer.json` equivalent to open_clip's CLIP BPE tokenizer.

The source is open_clip's shipped `bpe_simple_vocab_16e6.txt.gz`, so this works
offline. The Rust side loads the file with the `tokenizers` crate.

What is not reproduced: open_clip runs `ftfy.fix_text` and a double
`html.unescape` before tokenising. Prompts written as plain text (no mojibake,
no HTML entities) are unaffected; this is checked prompt by prompt.
"""

from __future__ import annotations

import gzip
import json
import os

import open_clip
from open_clip.tokenizer import bytes_to_unicode

SOT = "<start_of_text>"
EOT = "<end_of_text>"
CONTEXT_LENGTH = 77
PRETOKENIZE_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def build(context_length: int = CONTEXT_LENGTH) -> dict:
    bpe_path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    assert len(vocab) == len(vocab_list) == 49408, len(vocab)
    sot_id, eot_id = vocab[SOT], vocab[EOT]

    def special(tok, idx):
        return {
            "id": idx,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }

    return {
        "version": "1.0",
        "truncation": {
            "direction": "Right",
            "max_length": context_length,
            "strategy": "LongestFirst",
            "stride": 0,
        },
        "padding": {
            "strategy": {"Fixed": context_length},
            "direction": "Right",
            "pad_to_multiple_of": None,
            "pad_id": 0,
            "pad_type_id": 0,
            "pad_token": vocab_list[0],
        },
        "added_tokens": [special(SOT, sot_id), special(EOT, eot_id)],
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
                {"type": "Strip", "strip_left": True, "strip_right": True},
                {"type": "Lowercase"},
            ],
        },
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": PRETOKENIZE_REGEX},
                    "behavior": "Removed",
                    "invert": True,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": SOT, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": EOT, "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": SOT, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": EOT, "type_id": 0}},
            ],
            "special_tokens": {
                SOT: {"id": SOT, "ids": [sot_id], "tokens": [SOT]},
                EOT: {"id": EOT, "ids": [eot_id], "tokens": [EOT]},
            },
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [" ".join(m) for m in merges],
        },
    }


def write(path: str, context_length: int = CONTEXT_LENGTH) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(build(context_length), f, ensure_ascii=False, separators=(",", ":"))


def check(path: str, prompts: list[str]) -> None:
    """Assert that tokenizer.json gives open_clip's ids on every prompt."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    ref = open_clip.tokenize(prompts).numpy()
    ours = np.array([e.ids for e in tok.encode_batch(prompts)])
    bad = [p for p, a, b in zip(prompts, ref, ours) if not np.array_equal(a, b)]
    assert not bad, f"tokenizer.json disagrees with open_clip on {len(bad)} prompts, e.g. {bad[:3]}"
