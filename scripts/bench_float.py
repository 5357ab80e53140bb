#!/usr/bin/env python3
"""Float latency of the built-in runtime vs onnxruntime on a tutorial-sized word LM.

Usage: bench_float.py ONNX_DYNQ_BINARY [--batches 1,10] [--repeat 20] [--threads 1]

Builds (with onnx.helper, random weights, fixed seed) the shape of PyTorch's word-language-model
tutorial as the TorchScript exporter writes it: Gather over a 33278x512 embedding, five
stacked one-direction LSTMs with hidden 256 (initial states sliced from h0/c0), MatMul+Add to
33278 logits; input int64 [35, batch]. Then, per batch size, it times onnxruntime (one warm-up,
N runs, ORT_ENABLE_ALL, intra-op threads as given) and `onnx-dynq run --repeat N --json` on the
same inputs, and prints p50/p90 of both and their ratio. Also checks the two outputs agree.
Nothing is written outside a temporary folder.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

VOCAB, EMB, HID, LAYERS, SEQ = 33278, 512, 256, 5, 35


def build(path: Path) -> None:
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(arr.astype(arr.dtype), name))
        return name

    init("emb", (rng.standard_normal((VOCAB, EMB)) * 0.1).astype(np.float32))
    nodes.append(helper.make_node("Gather", ["emb", "input"], ["x0"]))
    x = "x0"
    hs, cs = [], []
    for layer in range(LAYERS):
        inp = EMB if layer == 0 else HID
        s = 1.0 / np.sqrt(HID)
        w = init(f"W{layer}", rng.uniform(-s, s, (1, 4 * HID, inp)).astype(np.float32))
        r = init(f"R{layer}", rng.uniform(-s, s, (1, 4 * HID, HID)).astype(np.float32))
        b = init(f"B{layer}", rng.uniform(-s, s, (1, 8 * HID)).astype(np.float32))
        st = init(f"st{layer}", np.array([layer], np.int64))
        en = init(f"en{layer}", np.array([layer + 1], np.int64))
        ax = init(f"ax{layer}", np.array([0], np.int64))
        nodes.append(helper.make_node("Slice", ["h0", st, en, ax], [f"h0_{layer}"]))
        nodes.append(helper.make_node("Slice", ["c0", st, en, ax], [f"c0_{layer}"]))
        nodes.append(
            helper.make_node(
                "LSTM",
                [x, w, r, b, "", f"h0_{layer}", f"c0_{layer}"],
                [f"y{layer}", f"hn{layer}", f"cn{layer}"],
                hidden_size=HID,
            )
        )
        sq = init(f"sq{layer}", np.array([1], np.int64))
        nodes.append(helper.make_node("Squeeze", [f"y{layer}", sq], [f"x{layer + 1}"]))
        x = f"x{layer + 1}"
        hs.append(f"hn{layer}")
        cs.append(f"cn{layer}")
    nodes.append(helper.make_node("Concat", hs, ["hn"], axis=0))
    nodes.append(helper.make_node("Concat", cs, ["cn"], axis=0))
    s = 1.0 / np.sqrt(HID)
    init("dec_w", rng.uniform(-s, s, (HID, VOCAB)).astype(np.float32))
    init("dec_b", rng.uniform(-s, s, (VOCAB,)).astype(np.float32))
    nodes.append(helper.make_node("MatMul", [x, "dec_w"], ["mm"]))
    nodes.append(helper.make_node("Add", ["mm", "dec_b"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "word_lm_bench",
        [
            helper.make_tensor_value_info("input", TensorProto.INT64, [SEQ, "batch"]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [LAYERS, "batch", HID]),
            helper.make_tensor_value_info("c0", TensorProto.FLOAT, [LAYERS, "batch", HID]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [SEQ, "batch", VOCAB]),
            helper.make_tensor_value_info("hn", TensorProto.FLOAT, [LAYERS, "batch", HID]),
            helper.make_tensor_value_info("cn", TensorProto.FLOAT, [LAYERS, "batch", HID]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def main() -> int:
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    binary = args[0]
    opt = lambda k, d: args[args.index(k) + 1] if k in args else d
    batches = [int(b) for b in opt("--batches", "1,10").split(",")]
    repeat = int(opt("--repeat", "20"))
    threads = int(opt("--threads", "1"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "word_lm_bench.onnx"
        build(model)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        print(f"model: {model.stat().st_size / 1e6:.1f} MB, seq {SEQ}, threads {threads}, {repeat} runs")
        for batch in batches:
            rng = np.random.default_rng(batch)
            feed = {
                "input": rng.integers(0, VOCAB, (SEQ, batch), dtype=np.int64),
                "h0": rng.standard_normal((LAYERS, batch, HID)).astype(np.float32),
                "c0": rng.standard_normal((LAYERS, batch, HID)).astype(np.float32),
            }
            for k, v in feed.items():
                np.save(tmp / f"{k}.npy", v)
            ref = sess.run(None, feed)
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                sess.run(None, feed)
                times.append((time.perf_counter() - t) * 1e3)
            times.sort()
            pct = lambda p: times[max(0, int(np.ceil(p / 100 * len(times))) - 1)]
            ort_p50, ort_p90 = pct(50), pct(90)
            cmd = [binary, "run", str(model), "--repeat", str(repeat), "--json", "--threads", str(threads),
                   "--output", str(tmp / "out.npz")]
            for k in feed:
                cmd += ["--input", f"{k}={tmp / (k + '.npy')}"]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            ours = np.load(tmp / "out.npz")
            diff = max(float(np.abs(ours[n] - r).max()) for n, r in zip(["logits", "hn", "cn"], ref))
            p50, p90 = out["latency_ms"]["p50"], out["latency_ms"]["p90"]
            print(
                f"batch {batch:3d}: onnxruntime p50 {ort_p50:8.2f} ms p90 {ort_p90:8.2f} ms | "
                f"onnx-dynq p50 {p50:8.2f} ms p90 {p90:8.2f} ms | ratio {p50 / ort_p50:5.2f}x | "
                f"max |diff| {diff:.2e}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
