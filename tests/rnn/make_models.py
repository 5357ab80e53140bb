"""Small LSTM/GRU/RNN models for tests/rewrite_rnn.rs.

Usage: make_models.py OUTDIR

Writes OUTDIR/<case>.onnx (the model under test), OUTDIR/<case>.ref.onnx (a float model
onnxruntime can run that gives the reference outputs: the same model, or its layout-0 /
float32 twin), OUTDIR/<case>.npz (inputs) and OUTDIR/manifest.json describing each case:
  name, op, layout, fp16, expect: {mode: "ok" | "skip"} (modes a case cannot be expressed in).
Random weights with a fixed seed; weights uniform in +-1/sqrt(H) like PyTorch's init.
"""

import json
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def make_case(rng, spec):
    op = spec["op"]
    seq, batch, inp, hid = spec["S"], spec["B"], spec["I"], spec["H"]
    direction = spec.get("direction", "forward")
    d = 2 if direction == "bidirectional" else 1
    layout = spec.get("layout", 0)
    g = GATES[op]
    k = 1.0 / np.sqrt(hid)
    W = rng.uniform(-k, k, (d, g * hid, inp)).astype(np.float32)
    R = rng.uniform(-k, k, (d, g * hid, hid)).astype(np.float32)
    B = rng.uniform(-k, k, (d, 2 * g * hid)).astype(np.float32)
    P = rng.uniform(-k, k, (d, 3 * hid)).astype(np.float32)
    feeds = {"X": rng.normal(0, 1, (seq, batch, inp)).astype(np.float32)}
    if spec.get("init"):
        feeds["initial_h"] = rng.normal(0, 0.5, (d, batch, hid)).astype(np.float32)
        if op == "LSTM" and spec.get("init") != "h":
            feeds["initial_c"] = rng.normal(0, 0.5, (d, batch, hid)).astype(np.float32)
    if spec.get("seq_lens"):
        feeds["sequence_lens"] = rng.integers(1, seq + 1, (batch,)).astype(np.int32)
        feeds["sequence_lens"][0] = seq

    def build(layout, fp16):
        ft = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
        npt = np.float16 if fp16 else np.float32
        inits = [numpy_helper.from_array(W.astype(npt), "W"), numpy_helper.from_array(R.astype(npt), "R")]
        names = ["X", "W", "R"]
        if spec.get("bias", True):
            inits.append(numpy_helper.from_array(B.astype(npt), "B"))
            names.append("B")
        else:
            names.append("")
        names.append("sequence_lens" if spec.get("seq_lens") else "")
        for s in ["initial_h", "initial_c"] if op == "LSTM" else ["initial_h"]:
            names.append(s if s in feeds else "")
        if op == "LSTM" and spec.get("peephole"):
            inits.append(numpy_helper.from_array(P.astype(npt), "P"))
            names.append("P")
        while names and names[-1] == "":
            names.pop()
        outs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
        # Only some outputs: the others are omitted ("") or left off the end.
        outs = [o if o in spec.get("outputs", outs) else "" for o in outs]
        while outs[-1] == "":
            outs.pop()
        attrs = dict(hidden_size=hid, direction=direction)
        if layout:
            attrs["layout"] = 1
        if op == "GRU":
            attrs["linear_before_reset"] = spec.get("lbr", 0)
        attrs.update(spec.get("attrs", {}))
        node = helper.make_node(op, names, outs, name="rnn0", **attrs)
        bdim = "batch" if spec.get("sym_batch") else batch

        def sh(s, b, rest):  # time-major or batch-major shapes
            return [b, s] + rest if layout else [s, b] + rest

        inputs = [helper.make_tensor_value_info("X", ft, sh(seq, bdim, [inp]))]
        for s in ["initial_h", "initial_c"]:
            if s in feeds:
                shp = [bdim, d, hid] if layout else [d, bdim, hid]
                inputs.append(helper.make_tensor_value_info(s, ft, shp))
        if "sequence_lens" in feeds:
            inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [bdim]))
        sdim = "seq" if spec.get("sym_batch") else seq
        inputs[0] = helper.make_tensor_value_info("X", ft, sh(sdim, bdim, [inp]))
        outputs = []
        if outs[0]:
            ys = [bdim, sdim, d, hid] if layout else [sdim, d, bdim, hid]
            outputs.append(helper.make_tensor_value_info("Y", ft, ys))
        for o in [o for o in outs[1:] if o]:
            outputs.append(helper.make_tensor_value_info(o, ft, [bdim, d, hid] if layout else [d, bdim, hid]))
        graph = helper.make_graph([node], spec["name"], inputs, outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.get("opset", 17))])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model

    model = build(layout, spec.get("fp16", False))
    ref = build(0, False)
    # Inputs in the model's own layout and type.
    mfeeds = {}
    for n, v in feeds.items():
        if layout and n == "X":
            v = np.swapaxes(v, 0, 1)
        elif layout and n.startswith("initial"):
            v = np.swapaxes(v, 0, 1)
        if spec.get("fp16") and v.dtype == np.float32:
            v = v.astype(np.float16)
        mfeeds[n] = np.ascontiguousarray(v)
    return model, ref, mfeeds


CASES = [
    dict(name="lstm_fwd", op="LSTM", S=5, B=2, I=8, H=16),
    dict(name="lstm_rev_init", op="LSTM", S=6, B=3, I=12, H=20, direction="reverse", init=True),
    dict(name="lstm_bidi_init", op="LSTM", S=7, B=2, I=24, H=32, direction="bidirectional", init=True),
    dict(name="lstm_bidi_l1", op="LSTM", S=5, B=3, I=8, H=16, direction="bidirectional", init=True, layout=1),
    dict(name="lstm_fwd_l1_nobias", op="LSTM", S=6, B=2, I=10, H=24, layout=1, bias=False, sym_batch=True),
    dict(name="lstm_peephole", op="LSTM", S=5, B=2, I=8, H=16, direction="bidirectional", init=True, peephole=True),
    dict(name="lstm_opset13", op="LSTM", S=5, B=2, I=8, H=16, direction="bidirectional", opset=13, sym_batch=True),
    dict(name="lstm_opset11", op="LSTM", S=5, B=2, I=8, H=16, direction="bidirectional", opset=11, init=True),
    dict(name="gru_opset11", op="GRU", S=5, B=2, I=8, H=16, direction="reverse", opset=11, lbr=0),
    dict(name="lstm_fp16", op="LSTM", S=5, B=2, I=8, H=16, init=True, fp16=True),
    # What the Scan form cannot express; DynamicQuantizeLSTM shares the float kernel's code.
    dict(name="lstm_seq_lens", op="LSTM", S=6, B=3, I=8, H=16, direction="bidirectional", seq_lens=True),
    dict(name="lstm_seq_lens_l1", op="LSTM", S=6, B=3, I=8, H=16, direction="reverse", seq_lens=True,
         init=True, layout=1, sym_batch=True),
    dict(name="gru_seq_lens", op="GRU", S=7, B=3, I=8, H=16, direction="bidirectional", seq_lens=True,
         lbr=0, init=True),
    dict(name="rnn_seq_lens", op="RNN", S=7, B=3, I=8, H=16, direction="reverse", seq_lens=True),
    dict(name="lstm_acts_clip", op="LSTM", S=5, B=2, I=8, H=16,
         attrs=dict(activations=["HardSigmoid", "Tanh", "Softsign"], clip=0.8)),
    dict(name="lstm_acts_bidi", op="LSTM", S=5, B=2, I=8, H=16, direction="bidirectional", init=True,
         attrs=dict(activations=["Sigmoid", "Elu", "Softplus", "HardSigmoid", "Affine", "LeakyRelu"],
                    activation_alpha=[0.7, 0.25, 0.9, 0.05], activation_beta=[0.45, 0.1])),
    dict(name="lstm_input_forget", op="LSTM", S=5, B=2, I=8, H=16, attrs=dict(input_forget=1)),
    dict(name="lstm_clip", op="LSTM", S=6, B=2, I=8, H=16, direction="bidirectional", init=True,
         peephole=True, attrs=dict(clip=0.4)),
    dict(name="lstm_h0_only_yh", op="LSTM", S=5, B=2, I=8, H=16, direction="reverse", init="h",
         outputs=["Y_h"], sym_batch=True),
    dict(name="gru_fwd_lbr0", op="GRU", S=5, B=2, I=8, H=16),
    dict(name="gru_yh_only", op="GRU", S=6, B=2, I=8, H=16, direction="bidirectional", lbr=1, outputs=["Y_h"]),
    dict(name="gru_rev_lbr1_init", op="GRU", S=6, B=3, I=12, H=20, direction="reverse", init=True, lbr=1),
    dict(name="gru_bidi_lbr1_init", op="GRU", S=7, B=2, I=24, H=32, direction="bidirectional", init=True, lbr=1),
    dict(name="gru_bidi_l1_lbr0", op="GRU", S=5, B=3, I=8, H=16, direction="bidirectional", init=True, layout=1,
         sym_batch=True),
    dict(name="gru_acts", op="GRU", S=5, B=2, I=8, H=16, direction="bidirectional", lbr=1, init=True,
         attrs=dict(activations=["HardSigmoid", "Tanh", "Sigmoid", "ScaledTanh"],
                    activation_alpha=[0.15, 0.8], activation_beta=[0.55, 1.2])),
    dict(name="rnn_fwd", op="RNN", S=5, B=2, I=8, H=16),
    dict(name="rnn_acts", op="RNN", S=5, B=2, I=8, H=16, direction="bidirectional",
         attrs=dict(activations=["Relu", "ThresholdedRelu"], activation_alpha=[0.05])),
    dict(name="rnn_bidi_init", op="RNN", S=7, B=3, I=16, H=24, direction="bidirectional", init=True),
    dict(name="rnn_rev_l1", op="RNN", S=6, B=2, I=8, H=16, direction="reverse", layout=1, bias=False),
    dict(name="gru_clip_lbr0", op="GRU", S=5, B=2, I=8, H=16, init=True, attrs=dict(clip=0.5)),
    dict(name="gru_clip_lbr1", op="GRU", S=5, B=2, I=8, H=16, direction="reverse", lbr=1,
         attrs=dict(clip=0.3)),
    dict(name="rnn_clip", op="RNN", S=5, B=2, I=8, H=16, init=True, attrs=dict(clip=0.3)),
    # DynamicQuantizeLinear needs opset 11: only weight-only (and DynamicQuantizeLSTM) below.
    dict(name="rnn_opset10", op="RNN", S=5, B=2, I=8, H=16, direction="bidirectional", opset=10,
         expect={"ort": "skip", "onnx": "skip"}),
    dict(name="lstm_opset9", op="LSTM", S=5, B=2, I=8, H=16, opset=9, init=True,
         expect={"onnx": "skip"}),
]


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(1234)
    manifest = []
    for spec in CASES:
        model, ref, feeds = make_case(rng, spec)
        name = spec["name"]
        onnx.save(model, f"{out}/{name}.onnx")
        onnx.save(ref, f"{out}/{name}.ref.onnx")
        np.savez(f"{out}/{name}.npz", **feeds)
        manifest.append(
            dict(
                name=name,
                op=spec["op"],
                layout=spec.get("layout", 0),
                fp16=spec.get("fp16", False),
                expect=spec.get("expect", {}),
            )
        )
    with open(f"{out}/manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
