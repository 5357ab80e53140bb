#!/usr/bin/env python3
"""Latency of com.microsoft DynamicQuantizeLSTM: our runtime vs onnxruntime on the same file.

Usage: bench_qlstm.py ONNX_DYNQ_BINARY [--batches 1,10] [--repeat 50] [--threads 1]
       [--layers 2] [--hidden 256] [--seq 35]

Builds (onnx.helper, random weights, fixed seed) a stack of one-direction LSTMs (input size =
hidden, initial states given), rewrites it with `onnx-dynq rewrite` (default `--lstm ort`:
every LSTM becomes DynamicQuantizeLSTM), then per batch size times onnxruntime (warm-up, N
runs, intra-op threads as given) and `onnx-dynq run --repeat N --json` on the same quantized
file and inputs, prints p50/p90 of both, their ratio, and the largest output difference.
Nothing is written outside a temporary folder.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import Inits, cli, compare_both, lstm_layer, ort_session, print_row, save_feeds, save_model  # noqa: E402


def build(path: Path, layers: int, hid: int, seq: int) -> None:
    rng = np.random.default_rng(0)
    inits, nodes = Inits(), []
    x = "x"
    hs, cs = [], []
    for layer in range(layers):
        x = lstm_layer(inits, nodes, rng, layer, x, hid, hid, f"h0_{layer}", f"c0_{layer}")
        hs.append(f"hn{layer}")
        cs.append(f"cn{layer}")
    nodes.append(helper.make_node("Concat", hs, ["hn"], axis=0))
    nodes.append(helper.make_node("Concat", cs, ["cn"], axis=0))
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, "batch", hid])]
    for layer in range(layers):
        for n in ("h0", "c0"):
            ins.append(helper.make_tensor_value_info(f"{n}_{layer}", TensorProto.FLOAT, [1, "batch", hid]))
    outs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, "batch", hid]),
        helper.make_tensor_value_info("hn", TensorProto.FLOAT, [layers, "batch", hid]),
        helper.make_tensor_value_info("cn", TensorProto.FLOAT, [layers, "batch", hid]),
    ]
    save_model(path, nodes, "lstm_bench", ins, outs, inits.list)


def main() -> int:
    parsed = cli(__doc__, repeat="50")
    if parsed is None:
        return 2
    binary, opt, batches, repeat, threads = parsed
    layers, hid, seq = int(opt("--layers", "2")), int(opt("--hidden", "256")), int(opt("--seq", "35"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        float_model, model = tmp / "lstm.onnx", tmp / "lstm.q.onnx"
        build(float_model, layers, hid, seq)
        subprocess.run([binary, "rewrite", str(float_model), str(model)], check=True, stdout=subprocess.DEVNULL)
        ops = [n.op_type for n in onnx.load(str(model)).graph.node]
        assert ops.count("DynamicQuantizeLSTM") == layers, ops
        sess = ort_session(model, threads)
        print(f"{layers} x DynamicQuantizeLSTM, hidden {hid}, seq {seq}, threads {threads}, {repeat} runs")
        for batch in batches:
            rng = np.random.default_rng(batch)
            feed = {"x": rng.standard_normal((seq, batch, hid)).astype(np.float32)}
            for layer in range(layers):
                for n in ("h0", "c0"):
                    feed[f"{n}_{layer}"] = (rng.standard_normal((1, batch, hid)) * 0.5).astype(np.float32)
            feed_files = save_feeds(tmp, feed)
            ort_t, ours_t, diff = compare_both(
                binary, model, sess, feed, feed_files, ["y", "hn", "cn"], threads, repeat,
                tmp / "out.npz")
            print_row(batch, ort_t, ours_t, diff, "7.3f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
