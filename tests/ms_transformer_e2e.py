"""End-to-end models for tests/ms_transformer_ort.rs, made at test time.

    python ms_transformer_e2e.py OUT_DIR FIXTURE_DIR

Writes into OUT_DIR: bert.onnx (a 2-layer BERT encoder built with onnx.helper in the graph
pattern of the classic PyTorch BERT export, random weights), bert_opt_raw.onnx and
bert_opt_index.onnx (onnxruntime's transformer optimizer on it: raw 2-D attention mask, and
mask index from EmbedLayerNormalization), bert_opt_q.onnx (quantize_dynamic on
bert_opt_index.onnx), mlp.onnx and mlp_nbits{4,8}.onnx (MatMulNBitsQuantizer on a small MLP),
fixture_opt.onnx and fixture_opt_q.onnx (the optimizer and then quantize_dynamic on the
committed fixtures/transformer/bert_encoder.onnx, a TorchScript export whose attention the
optimizer does not fuse: it gets SkipLayerNormalization and BiasGelu);
for each MODEL.onnx a MODEL.npz with the inputs (`input.*`) and onnxruntime's outputs
(`output.*`). Prints a JSON object {model: {op_type: count}}.
"""
import json, os, sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

out, fixture_dir = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(5)
V, MAXP, H, N, FF, LAYERS = 50, 16, 32, 4, 64, 2
HD = H // N

inits, nodes = [], []


def init(name, a):
    inits.append(numpy_helper.from_array(a, name))
    return name


def w(name, *shape, s=0.2):
    return init(name, (rng.standard_normal(shape) * s).astype(np.float32))


def const(name, v, dt=np.int64):
    return init(name, np.array(v, dt))


def node(op, ins, name, **attrs):
    nodes.append(helper.make_node(op, ins, [name], name=name, **attrs))
    return name


def layer_norm(x, name):
    g = init(name + ".g", (1 + rng.standard_normal(H) * 0.1).astype(np.float32))
    b = w(name + ".b", H, s=0.1)
    return node("LayerNormalization", [x, g, b], name, axis=-1, epsilon=1e-12)


# Embeddings: word + token type + position, as the BERT export has them.
word = node("Gather", [w("word_emb", V, H, s=0.5), "input_ids"], "word")
seg = node("Gather", [w("type_emb", 2, H, s=0.5), "token_type_ids"], "seg")
shape = node("Shape", ["input_ids"], "ids_shape")
seq = node("Gather", [shape, const("one", 1)], "seq_len")
seq1 = node("Unsqueeze", [seq, const("axes0", [0])], "seq_len_1d")
pos_ids = node("Slice", [init("pos_ids_buf", np.arange(MAXP, dtype=np.int64)[None]), const("zero1", [0]), seq1,
                         const("axes1", [1]), const("step1", [1])], "pos_ids")
pos = node("Gather", [w("pos_emb", MAXP, H, s=0.5), pos_ids], "pos")
emb = node("Add", [node("Add", [word, seg], "word_seg"), pos], "emb")
x = layer_norm(emb, "emb_ln")

# Extended attention mask: (1 - mask[:, None, None, :]) * -10000.
m = node("Unsqueeze", ["attention_mask", const("axes_m1", [1])], "mask_u1")
m = node("Unsqueeze", [m, const("axes_m2", [2])], "mask_u2")
m = node("Cast", [m], "mask_f", to=TensorProto.FLOAT)
m = node("Sub", [const("one_f", 1.0, np.float32), m], "mask_inv")
ext_mask = node("Mul", [m, const("neg_big", -10000.0, np.float32)], "ext_mask")

heads_shape = const("heads_shape", [0, 0, N, HD])
merge_shape = const("merge_shape", [0, 0, H])
for l in range(LAYERS):
    p = f"l{l}."

    def proj(t, perm):
        y = node("Add", [node("MatMul", [x, w(p + t + ".w", H, H)], p + t + ".mm"), w(p + t + ".b", H, s=0.1)], p + t)
        y = node("Reshape", [y, heads_shape], p + t + ".heads")
        return node("Transpose", [y], p + t + ".t", perm=perm)

    q, k, v = proj("q", [0, 2, 1, 3]), proj("k", [0, 2, 3, 1]), proj("v", [0, 2, 1, 3])
    s = node("MatMul", [q, k], p + "qk")
    s = node("Div", [s, const(p + "sqrt_d", np.sqrt(HD), np.float32)], p + "qk_scaled")
    s = node("Add", [s, ext_mask], p + "qk_masked")
    s = node("Softmax", [s], p + "probs", axis=3)
    c = node("MatMul", [s, v], p + "ctx")
    c = node("Transpose", [c], p + "ctx_t", perm=[0, 2, 1, 3])
    c = node("Reshape", [c, merge_shape], p + "ctx_merged")
    o = node("Add", [node("MatMul", [c, w(p + "o.w", H, H)], p + "o.mm"), w(p + "o.b", H, s=0.1)], p + "o")
    a = layer_norm(node("Add", [o, x], p + "res1"), p + "ln1")
    h = node("Add", [node("MatMul", [a, w(p + "ff1.w", H, FF)], p + "ff1.mm"), w(p + "ff1.b", FF, s=0.1)], p + "ff1")
    g = node("Div", [h, const(p + "sqrt2", np.sqrt(2.0), np.float32)], p + "gelu_div")
    g = node("Erf", [g], p + "gelu_erf")
    g = node("Add", [g, const(p + "gelu_one", 1.0, np.float32)], p + "gelu_add")
    g = node("Mul", [h, g], p + "gelu_mul")
    g = node("Mul", [g, const(p + "gelu_half", 0.5, np.float32)], p + "gelu")
    f = node("Add", [node("MatMul", [g, w(p + "ff2.w", FF, H)], p + "ff2.mm"), w(p + "ff2.b", H, s=0.1)], p + "ff2")
    x = layer_norm(node("Add", [f, a], p + "res2"), p + "ln2")
nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="out"))

ids_vi = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
graph = helper.make_graph(nodes, "bert", [ids_vi("input_ids"), ids_vi("token_type_ids"), ids_vi("attention_mask")],
                          [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", H])],
                          inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model, full_check=True)
onnx.save(model, os.path.join(out, "bert.onnx"))

B, S = 3, 7
lengths = [7, 4, 1]
bert_feed = {
    "input_ids": rng.integers(0, V, (B, S)).astype(np.int64),
    "token_type_ids": (np.arange(S)[None] >= 3).astype(np.int64).repeat(B, 0),
    "attention_mask": (np.arange(S)[None] < np.array(lengths)[:, None]).astype(np.int64),
}

from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model
from onnxruntime.quantization import QuantType, quantize_dynamic

for tag, raw in [("raw", True), ("index", False)]:
    opts = FusionOptions("bert")
    opts.use_raw_attention_mask(raw)
    # opt_level 0: only the Python fusions (onnxruntime's own graph optimizer would also fuse,
    # into forms for this machine).
    o = optimize_model(os.path.join(out, "bert.onnx"), model_type="bert", num_heads=N, hidden_size=H,
                       optimization_options=opts, opt_level=0)
    o.save_model_to_file(os.path.join(out, f"bert_opt_{tag}.onnx"))
quantize_dynamic(os.path.join(out, "bert_opt_index.onnx"), os.path.join(out, "bert_opt_q.onnx"),
                 weight_type=QuantType.QInt8, per_channel=False,
                 extra_options={"DefaultTensorType": TensorProto.FLOAT})

# A small MLP for MatMulNBits: [B, 40] -> 64 -> relu -> 48 -> 10.
inits, nodes = [], []
y = node("Add", [node("MatMul", ["x", w("m1.w", 64, 96, s=0.15)], "m1.mm"), w("m1.b", 96, s=0.1)], "m1")
y = node("Relu", [y], "r1")
y = node("Add", [node("MatMul", [y, w("m2.w", 96, 32, s=0.15)], "m2.mm"), w("m2.b", 32, s=0.1)], "m2")
y = node("Relu", [y], "r2")
nodes.append(helper.make_node("MatMul", [y, w("m3.w", 32, 10, s=0.15)], ["logits"], name="m3"))
graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
mlp = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
mlp.ir_version = 8
onnx.save(mlp, os.path.join(out, "mlp.onnx"))
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
for bits, sym in [(4, False), (8, True)]:
    q = MatMulNBitsQuantizer(onnx.load(os.path.join(out, "mlp.onnx")), bits=bits, block_size=16, is_symmetric=sym)
    q.process()
    q.model.save_model_to_file(os.path.join(out, f"mlp_nbits{bits}.onnx"))
mlp_feed = {"x": rng.standard_normal((5, 64)).astype(np.float32)}

fixture = os.path.join(fixture_dir, "transformer", "bert_encoder.onnx")
o = optimize_model(fixture, model_type="bert", num_heads=4, hidden_size=64, opt_level=0)
o.save_model_to_file(os.path.join(out, "fixture_opt.onnx"))
quantize_dynamic(os.path.join(out, "fixture_opt.onnx"), os.path.join(out, "fixture_opt_q.onnx"),
                 weight_type=QuantType.QInt8, per_channel=True,
                 extra_options={"DefaultTensorType": TensorProto.FLOAT})
d = np.load(fixture.replace(".onnx", ".npz"))
fixture_feed = {k[len("input."):]: d[k] for k in d.files if k.startswith("input.")}

so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
summary = {}
for name, feed in [("bert", bert_feed), ("bert_opt_raw", bert_feed), ("bert_opt_index", bert_feed),
                   ("bert_opt_q", bert_feed), ("mlp", mlp_feed), ("mlp_nbits4", mlp_feed), ("mlp_nbits8", mlp_feed),
                   ("fixture_opt", fixture_feed), ("fixture_opt_q", fixture_feed)]:
    path = os.path.join(out, name + ".onnx")
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}
    f = {k: v for k, v in feed.items() if k in names}
    res = s.run(None, f)
    np.savez(os.path.join(out, name + ".npz"), **{"input." + k: v for k, v in f.items()},
             **{"output." + o.name: r for o, r in zip(s.get_outputs(), res)})
    summary[name] = dict(Counter(n.op_type for n in onnx.load(path).graph.node))
print(json.dumps(summary))
