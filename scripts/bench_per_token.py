#!/usr/bin/env python3
"""Per-token activations on a real encoder (issue 12): accuracy and onnxruntime latency of
`onnx-dynq rewrite` variants against `quantize_dynamic`, in one run.

Model: the float32 form of all-MiniLM-L6-v2 (scripts/minilm.py). Inputs:
fixtures/transformer/minilm_inputs.npz (batch 8 x seq 16, with padding). Metrics against the
float model in onnxruntime: cosine of the valid (unpadded) tokens' hidden states (mean, min)
and of the mean-pooled sentence embeddings (min). The `--smooth` and `--target-cosine`
variants are calibrated on these same sentences (`--inputs`), so their figures are in-sample
(tests/rewrite_target.rs checks a held-out half). Latency: median of 15 onnxruntime runs,
1 thread.

Usage: python scripts/bench_per_token.py ONNX_DYNQ_BINARY [WORKDIR]
"""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {
    "per-tensor": ["--per-channel", "--activations", "per-tensor", "--weight-type", "int8"],
    "per-token": ["--per-channel", "--activations", "per-token", "--weight-type", "int8"],
    "per-token u8w": ["--per-channel", "--activations", "per-token", "--weight-type", "uint8"],
    "per-token rr": ["--per-channel", "--activations", "per-token", "--weight-type", "int8", "--reduce-range"],
    # Calibrated on the benchmark's own sentences (SAMPLES: a folder holding their npz).
    "per-token u8w smooth 0.5": ["--per-channel", "--activations", "per-token", "--weight-type", "uint8",
                                 "--inputs", "SAMPLES", "--smooth", "0.5"],
    "per-token u8w target 0.999": ["--per-channel", "--activations", "per-token", "--weight-type", "uint8",
                                   "--inputs", "SAMPLES", "--target-cosine", "0.999"],
    "per-token u8w smooth+target": ["--per-channel", "--activations", "per-token", "--weight-type", "uint8",
                                    "--inputs", "SAMPLES", "--smooth", "0.5", "--target-cosine", "0.999"],
}


def session(p):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary = sys.argv[1]
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    float_model = work / "minilm_f.onnx"
    subprocess.run([sys.executable, str(REPO / "scripts/minilm.py"), "float", str(float_model)], check=True)
    models = {"quantize_dynamic": work / "minilm_qd.onnx"}
    quantize_dynamic(str(float_model), str(models["quantize_dynamic"]), weight_type=QuantType.QInt8)
    samples = work / "samples"
    samples.mkdir(exist_ok=True)
    shutil.copy(REPO / "fixtures/transformer/minilm_inputs.npz", samples / "minilm_inputs.npz")
    for name, args in VARIANTS.items():
        out = work / f"minilm_{name.replace(' ', '_').replace('+', '_')}.onnx"
        args = [str(samples) if a == "SAMPLES" else a for a in args]
        subprocess.run([binary, "rewrite", str(float_model), str(out), *args], check=True, capture_output=True)
        models[f"onnx-dynq {name}"] = out
    d = np.load(REPO / "fixtures/transformer/minilm_inputs.npz")
    feeds = {k[len("input."):]: v for k, v in d.items()}
    mask = feeds["attention_mask"].astype(bool)

    def run(p):
        s = session(p)
        y = s.run(None, feeds)[0]
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            s.run(None, feeds)
            times.append(time.perf_counter() - t0)
        return y.astype(np.float64), float(np.median(times)) * 1e3

    f, t_float = run(float_model)
    print(f"float: {t_float:.2f} ms")
    for name, p in models.items():
        q, t = run(p)
        cos = (f * q).sum(-1) / np.linalg.norm(f, axis=-1) / np.linalg.norm(q, axis=-1)
        m = mask[..., None]
        pf, pq = (f * m).sum(1) / m.sum(1), (q * m).sum(1) / m.sum(1)
        pooled = (pf * pq).sum(-1) / np.linalg.norm(pf, axis=-1) / np.linalg.norm(pq, axis=-1)
        print(f"{name:30s} {t:7.2f} ms ({t_float / t:.2f}x float)  valid-token cos mean "
              f"{cos[mask].mean():.5f} min {cos[mask].min():.5f}  pooled cos min {pooled.min():.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
