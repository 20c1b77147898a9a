#!/usr/bin/env python3
"""Check that the exporter still reproduces the committed tiny pack.

Regenerates models/tiny into a temporary directory with the same seed and
compares: model files byte for byte (sha256), and, should bytes differ (a
different torch build may serialise differently), the reference outputs
numerically. Exit status 0 = the committed pack is what the exporter makes.
"""

import os
import subprocess
import sys
import tempfile
import tomllib

import numpy as np
from safetensors.numpy import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
COMMITTED = os.path.join(HERE, "tiny")


def main() -> int:
    with open(os.path.join(COMMITTED, "manifest.toml"), "rb") as f:
        committed = tomllib.load(f)
    seed = committed["source"].get("seed", 0)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "tiny")
        subprocess.run([sys.executable, os.path.join(HERE, "export.py"), "--tiny", "--pretrained", "none",
                        "--seed", str(seed), "--out", out], check=True)
        with open(os.path.join(out, "manifest.toml"), "rb") as f:
            fresh = tomllib.load(f)
        same = {role: fresh["files"][role]["sha256"] == entry["sha256"] for role, entry in committed["files"].items()}
        a = load_file(os.path.join(COMMITTED, "reference", "reference.safetensors"))
        b = load_file(os.path.join(out, "reference", "reference.safetensors"))
        worst = 0.0
        for k in a:
            if a[k].shape != b[k].shape:
                print(f"FAIL: {k} shape {a[k].shape} vs {b[k].shape}")
                return 1
            worst = max(worst, float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()))
    for role, ok in same.items():
        print(f"{role:<10} {'identical' if ok else 'differs (bytes)'}")
    print(f"reference outputs: max abs diff {worst:.3e} between committed and regenerated pack")
    if all(same.values()) or worst <= 1e-5:
        print("OK: the exporter reproduces models/tiny")
        return 0
    print("FAIL: the exporter no longer reproduces models/tiny; regenerate it and review the diff")
    return 1


if __name__ == "__main__":
    sys.exit(main())
