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

import sys
import tempfile
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import Inits, cli, compare_both, lstm_layer, ort_session, print_row, save_feeds, save_model  # noqa: E402

VOCAB, EMB, HID, LAYERS, SEQ = 33278, 512, 256, 5, 35


def build(path: Path) -> None:
    rng = np.random.default_rng(0)
    inits, nodes = Inits(), []
    init = inits.add

    init("emb", (rng.standard_normal((VOCAB, EMB)) * 0.1).astype(np.float32))
    nodes.append(helper.make_node("Gather", ["emb", "input"], ["x0"]))
    x = "x0"
    hs, cs = [], []
    for layer in range(LAYERS):
        st = init(f"st{layer}", np.array([layer], np.int64))
        en = init(f"en{layer}", np.array([layer + 1], np.int64))
        ax = init(f"ax{layer}", np.array([0], np.int64))
        nodes.append(helper.make_node("Slice", ["h0", st, en, ax], [f"h0_{layer}"]))
        nodes.append(helper.make_node("Slice", ["c0", st, en, ax], [f"c0_{layer}"]))
        inp = EMB if layer == 0 else HID
        x = lstm_layer(inits, nodes, rng, layer, x, inp, HID, f"h0_{layer}", f"c0_{layer}")
        hs.append(f"hn{layer}")
        cs.append(f"cn{layer}")
    nodes.append(helper.make_node("Concat", hs, ["hn"], axis=0))
    nodes.append(helper.make_node("Concat", cs, ["cn"], axis=0))
    s = 1.0 / np.sqrt(HID)
    init("dec_w", rng.uniform(-s, s, (HID, VOCAB)).astype(np.float32))
    init("dec_b", rng.uniform(-s, s, (VOCAB,)).astype(np.float32))
    nodes.append(helper.make_node("MatMul", [x, "dec_w"], ["mm"]))
    nodes.append(helper.make_node("Add", ["mm", "dec_b"], ["logits"]))
    ins = [
        helper.make_tensor_value_info("input", TensorProto.INT64, [SEQ, "batch"]),
        helper.make_tensor_value_info("h0", TensorProto.FLOAT, [LAYERS, "batch", HID]),
        helper.make_tensor_value_info("c0", TensorProto.FLOAT, [LAYERS, "batch", HID]),
    ]
    outs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, [SEQ, "batch", VOCAB]),
        helper.make_tensor_value_info("hn", TensorProto.FLOAT, [LAYERS, "batch", HID]),
        helper.make_tensor_value_info("cn", TensorProto.FLOAT, [LAYERS, "batch", HID]),
    ]
    save_model(path, nodes, "word_lm_bench", ins, outs, inits.list)


def lm_feed(batch):
    """Random inputs of the word LM for one batch size (seeded by it)."""
    rng = np.random.default_rng(batch)
    return rng, {
        "input": rng.integers(0, VOCAB, (SEQ, batch), dtype=np.int64),
        "h0": rng.standard_normal((LAYERS, batch, HID)).astype(np.float32),
        "c0": rng.standard_normal((LAYERS, batch, HID)).astype(np.float32),
    }


def main() -> int:
    parsed = cli(__doc__)
    if parsed is None:
        return 2
    binary, _opt, batches, repeat, threads = parsed
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "word_lm_bench.onnx"
        build(model)
        sess = ort_session(model, threads)
        print(f"model: {model.stat().st_size / 1e6:.1f} MB, seq {SEQ}, threads {threads}, {repeat} runs")
        for batch in batches:
            _, feed = lm_feed(batch)
            feed_files = save_feeds(tmp, feed)
            ort_t, ours_t, diff = compare_both(
                binary, model, sess, feed, feed_files, ["logits", "hn", "cn"], threads, repeat,
                tmp / "out.npz")
            print_row(batch, ort_t, ours_t, diff)
    return 0


if __name__ == "__main__":
    sys.exit(main())
