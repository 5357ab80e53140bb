"""Dumps single-node test cases for the recurrent, convolution and pooling kernels.

Usage: kernels_cases.py backend OUT_DIR   (the ONNX backend node cases for these ops)
       kernels_cases.py ort OUT_DIR       (own cases, expected outputs from onnxruntime)
       kernels_cases.py bench OUT_DIR     (onnxruntime single-thread wall and CPU ms)

Each case becomes OUT_DIR/<name>/ with model.onnx, input_<i>.pb and output_<i>.pb (TensorProto,
in graph input/output order), and a line "<name> <rtol> <atol>" in OUT_DIR/cases.txt.
tests/kernels_conformance.rs runs them through the Rust ops.
"""

import os
import sys
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPS = {"LSTM", "GRU", "RNN", "Conv", "MaxPool", "AveragePool", "GlobalAveragePool"}


def write_case(out, name, model, inputs, outputs, rtol, atol):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    for kind, arrays in (("input", inputs), ("output", outputs)):
        for i, a in enumerate(arrays):
            with open(os.path.join(d, f"{kind}_{i}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(np.asarray(a)).SerializeToString())
    with open(os.path.join(out, "cases.txt"), "a") as f:
        f.write(f"{name} {rtol} {atol}\n")


def backend(out):
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    n = 0
    for c in cases:
        nodes = c.model.graph.node
        if len(nodes) != 1 or nodes[0].op_type not in OPS or not c.data_sets:
            continue
        inputs, outputs = c.data_sets[0]
        write_case(out, c.name, c.model, inputs, outputs, c.rtol, c.atol)
        n += 1
    print(f"dumped {n} backend cases", file=sys.stderr)


# ------------------------------------------------------------------------------------------
# Own cases, checked against onnxruntime

RNG = np.random.default_rng(7)
NP2ONNX = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE,
           np.int32: TensorProto.INT32, np.int64: TensorProto.INT64,
           np.float16: TensorProto.FLOAT16, np.uint8: TensorProto.UINT8,
           np.int8: TensorProto.INT8}


def rand(*shape, scale=1.0, dtype=np.float32):
    return (RNG.standard_normal(shape) * scale).astype(dtype)


def single_node(op, inputs, n_outputs, attrs, const=(), opset=22, out_names=None):
    """inputs: list of (name, array or None); names in `const` become initializers."""
    node_inputs = [name if a is not None else "" for name, a in inputs]
    outs = out_names or [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op, node_inputs, outs, **attrs)
    g_inputs, inits, feed = [], [], {}
    for name, a in inputs:
        if a is None:
            continue
        if name in const:
            inits.append(numpy_helper.from_array(a, name))
        else:
            g_inputs.append(helper.make_tensor_value_info(name, NP2ONNX[a.dtype.type], a.shape))
            feed[name] = a
    g_outputs = [helper.make_empty_tensor_value_info(o)
                 for o in outs if o]
    graph = helper.make_graph([node], op.lower(), g_inputs, g_outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model, feed


def ort_case(out, name, op, inputs, n_outputs, attrs, const=(), rtol=1e-4, atol=1e-5,
             out_names=None):
    import onnxruntime as ort

    model, feed = single_node(op, inputs, n_outputs, attrs, const, out_names=out_names)
    if attrs.get("layout", 0) == 1:
        # onnxruntime has no batch-major recurrent kernels: run the seq-major equivalent on
        # transposed inputs and transpose its outputs back.
        t3 = {"X", "initial_h", "initial_c"}
        inputs0 = [(n, a.transpose(1, 0, 2) if n in t3 and a is not None else a)
                   for n, a in inputs]
        model0, feed0 = single_node(op, inputs0, n_outputs, {**attrs, "layout": 0}, const,
                                    out_names=out_names)
        sess = ort.InferenceSession(model0.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        names = [o.name for o in model0.graph.output]
        expected = [a.transpose(2, 0, 1, 3) if n == "out0" else a.transpose(1, 0, 2)
                    for n, a in zip(names, sess.run(None, feed0))]
    else:
        sess = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        expected = sess.run(None, feed)
    ordered_inputs = [feed[i.name] for i in model.graph.input]
    write_case(out, name, model, ordered_inputs, expected, rtol, atol)


def rnn_inputs(kind, d, seq, batch, inp, h, layout=0, lens=None, init=True, peep=False,
               dtype=np.float32, bias=True):
    g = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    x = rand(*((batch, seq, inp) if layout else (seq, batch, inp)), dtype=dtype)
    st = (batch, d, h) if layout else (d, batch, h)
    ins = [("X", x), ("W", rand(d, g * h, inp, scale=0.4, dtype=dtype)),
           ("R", rand(d, g * h, h, scale=0.4, dtype=dtype)),
           ("B", rand(d, 2 * g * h, scale=0.3, dtype=dtype) if bias else None),
           ("sequence_lens", None if lens is None else np.array(lens, np.int32)),
           ("initial_h", rand(*st, dtype=dtype) if init else None)]
    if kind == "LSTM":
        ins.append(("initial_c", rand(*st, dtype=dtype) if init else None))
        ins.append(("P", rand(d, 3 * h, scale=0.3, dtype=dtype) if peep else None))
    while ins[-1][1] is None:
        ins.pop()
    return ins


def ort_cases(out):
    W = ("W", "R", "B", "P")
    # LSTM
    ort_case(out, "lstm_bidir_seqlens_layout1_peep", "LSTM",
             rnn_inputs("LSTM", 2, 5, 3, 4, 6, layout=1, lens=[5, 2, 4], peep=True), 3,
             dict(hidden_size=6, direction="bidirectional", layout=1), const=W)
    ort_case(out, "lstm_bidir_seqlens_layout0_dynamic_weights", "LSTM",
             rnn_inputs("LSTM", 2, 6, 4, 3, 5, lens=[6, 1, 3, 5]), 3,
             dict(hidden_size=5, direction="bidirectional"))
    ort_case(out, "lstm_reverse_seqlens_clip_input_forget", "LSTM",
             rnn_inputs("LSTM", 1, 7, 3, 4, 8, lens=[3, 7, 5], peep=True), 3,
             dict(hidden_size=8, direction="reverse", clip=0.7, input_forget=1), const=W)
    ort_case(out, "lstm_activations_alpha_beta", "LSTM",
             rnn_inputs("LSTM", 2, 4, 2, 3, 4), 3,
             dict(hidden_size=4, direction="bidirectional",
                  activations=["HardSigmoid", "ScaledTanh", "Softsign",
                               "Sigmoid", "LeakyRelu", "Elu"],
                  activation_alpha=[0.3, 0.9, 0.05, 0.8], activation_beta=[0.4, 1.3]),
             const=W)
    ort_case(out, "lstm_no_init", "LSTM",
             rnn_inputs("LSTM", 1, 4, 2, 3, 5, init=False), 3,
             dict(hidden_size=5), const=W)
    ort_case(out, "lstm_only_yh_output", "LSTM",
             rnn_inputs("LSTM", 1, 4, 2, 3, 5), 2, dict(hidden_size=5), const=W,
             out_names=["", "yh"])
    ort_case(out, "lstm_bidir_zero_length_row", "LSTM",
             rnn_inputs("LSTM", 2, 4, 3, 3, 4, lens=[0, 4, 2], peep=True), 3,
             dict(hidden_size=4, direction="bidirectional"), const=W)
    ort_case(out, "lstm_batch1_h32_seq10", "LSTM",
             rnn_inputs("LSTM", 1, 10, 1, 16, 32), 3, dict(hidden_size=32), const=W)
    ort_case(out, "lstm_bidir_h24_batch5_no_bias", "LSTM",
             rnn_inputs("LSTM", 2, 9, 5, 12, 24, bias=False), 3,
             dict(hidden_size=24, direction="bidirectional"), const=W)
    # GRU
    ort_case(out, "gru_lbr0_no_bias_no_init", "GRU",
             rnn_inputs("GRU", 1, 5, 2, 3, 4, bias=False, init=False), 2,
             dict(hidden_size=4), const=W)
    ort_case(out, "gru_bidir_zero_length_row", "GRU",
             rnn_inputs("GRU", 2, 4, 3, 3, 4, lens=[3, 0, 4]), 2,
             dict(hidden_size=4, direction="bidirectional"))
    ort_case(out, "gru_lbr0_bidir_seqlens", "GRU",
             rnn_inputs("GRU", 2, 6, 3, 4, 5, lens=[6, 2, 4]), 2,
             dict(hidden_size=5, direction="bidirectional", linear_before_reset=0), const=W)
    ort_case(out, "gru_lbr1_bidir_seqlens", "GRU",
             rnn_inputs("GRU", 2, 6, 3, 4, 5, lens=[1, 6, 3]), 2,
             dict(hidden_size=5, direction="bidirectional", linear_before_reset=1), const=W)
    ort_case(out, "gru_lbr1_reverse_clip_acts", "GRU",
             rnn_inputs("GRU", 1, 5, 2, 3, 4), 2,
             dict(hidden_size=4, direction="reverse", linear_before_reset=1, clip=0.5,
                  activations=["HardSigmoid", "Softsign"], activation_alpha=[0.25],
                  activation_beta=[0.45]))
    ort_case(out, "gru_layout1_seqlens", "GRU",
             rnn_inputs("GRU", 1, 5, 3, 4, 6, layout=1, lens=[5, 3, 1]), 2,
             dict(hidden_size=6, layout=1), const=W)
    # RNN
    ort_case(out, "rnn_bidir_seqlens_relu_tanh", "RNN",
             rnn_inputs("RNN", 2, 5, 3, 4, 6, lens=[2, 5, 4]), 2,
             dict(hidden_size=6, direction="bidirectional", activations=["Relu", "Tanh"]),
             const=W)
    ort_case(out, "rnn_reverse_layout1_affine", "RNN",
             rnn_inputs("RNN", 1, 4, 2, 3, 5, layout=1, lens=[4, 2]), 2,
             dict(hidden_size=5, direction="reverse", layout=1, activations=["Affine"],
                  activation_alpha=[0.5], activation_beta=[0.1]))
    ort_case(out, "rnn_reverse_zero_length_row", "RNN",
             rnn_inputs("RNN", 1, 4, 3, 3, 4, lens=[2, 4, 0]), 2,
             dict(hidden_size=4, direction="reverse"), const=W)
    ort_case(out, "rnn_leakyrelu_clip", "RNN",
             rnn_inputs("RNN", 1, 4, 2, 3, 5), 2,
             dict(hidden_size=5, activations=["LeakyRelu"], activation_alpha=[0.2],
                  clip=1.0), const=W)

    # Conv
    def conv(name, x, w, b, attrs, const=("W", "B")):
        ins = [("X", x), ("W", w)] + ([("B", b)] if b is not None else [])
        ort_case(out, name, "Conv", ins, 1, attrs, const=const)

    conv("conv2d_grouped_dilated_strided", rand(2, 6, 11, 10), rand(9, 2, 3, 2), rand(9),
         dict(group=3, dilations=[2, 1], strides=[2, 3], pads=[1, 0, 2, 1]))
    conv("conv2d_depthwise_same_upper", rand(1, 8, 9, 7), rand(8, 1, 3, 3), rand(8),
         dict(group=8, auto_pad="SAME_UPPER", strides=[2, 2]))
    conv("conv2d_same_lower_dynamic_weights", rand(1, 3, 8, 8), rand(4, 3, 4, 4), None,
         dict(auto_pad="SAME_LOWER", strides=[3, 2]), const=())
    conv("conv2d_valid_kernel_shape", rand(2, 3, 7, 9), rand(5, 3, 3, 2), rand(5),
         dict(auto_pad="VALID", kernel_shape=[3, 2]))
    conv("conv2d_grouped_parallel", rand(2, 8, 20, 20), rand(16, 4, 3, 3), rand(16),
         dict(group=2, pads=[1, 1, 1, 1]))
    conv("conv2d_1x1_strided", rand(1, 4, 7, 7), rand(3, 4, 1, 1), None,
         dict(strides=[2, 2]))
    conv("conv2d_1x1", rand(2, 16, 5, 6), rand(8, 16, 1, 1), rand(8), {})
    conv("conv1d_grouped_pads", rand(2, 4, 20), rand(6, 2, 5), rand(6),
         dict(group=2, pads=[2, 3], strides=[2], dilations=[3]))
    conv("conv3d_pads_strides", rand(1, 2, 6, 7, 5), rand(3, 2, 3, 2, 3), rand(3),
         dict(pads=[1, 0, 1, 1, 1, 0], strides=[2, 1, 2]))

    # Pooling
    def pool(name, op, x, attrs, n_out=1):
        ort_case(out, name, op, [("X", x)], n_out, attrs)

    pool("maxpool2d_ceil_dilations_pads_indices", "MaxPool", rand(2, 3, 10, 9),
         dict(kernel_shape=[3, 2], strides=[2, 2], dilations=[2, 1], pads=[1, 1, 0, 1],
              ceil_mode=1), n_out=2)
    pool("maxpool2d_storage_order1_indices", "MaxPool", rand(1, 2, 5, 6),
         dict(kernel_shape=[2, 2], strides=[2, 2], storage_order=1), n_out=2)
    pool("maxpool1d_same_upper", "MaxPool", rand(2, 3, 11),
         dict(kernel_shape=[4], strides=[3], auto_pad="SAME_UPPER"))
    pool("maxpool3d_pads", "MaxPool", rand(1, 2, 5, 6, 4),
         dict(kernel_shape=[2, 3, 2], pads=[1, 1, 0, 0, 1, 1]))
    pool("avgpool2d_ceil_pads_include", "AveragePool", rand(2, 3, 9, 8),
         dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
              count_include_pad=1))
    pool("avgpool2d_ceil_pads_exclude", "AveragePool", rand(2, 3, 9, 8),
         dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1))
    pool("avgpool2d_same_lower_include", "AveragePool", rand(1, 2, 7, 7),
         dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_LOWER",
              count_include_pad=1))
    pool("maxpool2d_int8", "MaxPool",
         RNG.integers(-128, 128, (1, 2, 6, 5)).astype(np.int8),
         dict(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 1]))
    pool("maxpool2d_f16", "MaxPool", rand(1, 2, 6, 5, dtype=np.float16),
         dict(kernel_shape=[3, 3], strides=[2, 2]))
    pool("avgpool2d_dilations_pads_include", "AveragePool", rand(1, 2, 9, 8),
         dict(kernel_shape=[2, 3], dilations=[2, 2], pads=[1, 2, 1, 0], count_include_pad=1))
    pool("avgpool1d_strides", "AveragePool", rand(2, 3, 12),
         dict(kernel_shape=[3], strides=[2]))
    pool("globalavgpool2d", "GlobalAveragePool", rand(2, 5, 7, 3), {})
    pool("globalavgpool1d", "GlobalAveragePool", rand(2, 5, 7), {})
    pool("globalavgpool3d", "GlobalAveragePool", rand(1, 3, 4, 3, 2), {})



# ------------------------------------------------------------------------------------------
# Timing reference: onnxruntime, one thread, on the shapes of tests/kernels_bench.rs

BENCH = [
    # name, op, input shapes..., attrs
    ("lstm_seq35_b1_256", "LSTM", (35, 1, 256), 256, 1),
    ("lstm_seq35_b10_256", "LSTM", (35, 10, 256), 256, 1),
    ("lstm_bidir_seq100_b1_128", "LSTM", (100, 1, 128), 128, 2),
    ("gru_seq35_b10_256", "GRU", (35, 10, 256), 256, 1),
    ("conv_64x56x56_3x3", "Conv", (1, 64, 56, 56), (64, 64, 3, 3), 1),
    ("conv_dw_128x56x56_3x3", "Conv", (1, 128, 56, 56), (128, 1, 3, 3), 128),
    ("conv_1x1_256to64_28x28", "Conv", (1, 256, 28, 28), (64, 256, 1, 1), 1),
    ("maxpool_64x112x112_3x3s2", "MaxPool", (1, 64, 112, 112), None, None),
]


def bench(out):
    import time
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    for name, op, xs, p, q in BENCH:
        x = rand(*xs)
        if op in ("LSTM", "GRU"):
            g = 4 if op == "LSTM" else 3
            ins = [("X", x), ("W", rand(q, g * p, xs[2], scale=0.1)),
                   ("R", rand(q, g * p, p, scale=0.1)), ("B", rand(q, 2 * g * p))]
            attrs = dict(hidden_size=p, direction="bidirectional" if q == 2 else "forward")
            n_out = 2
        elif op == "Conv":
            ins = [("X", x), ("W", rand(*p, scale=0.1)), ("B", rand(p[0]))]
            attrs = dict(group=q, pads=[p[2] // 2] * 4)
            n_out = 1
        else:
            ins = [("X", x)]
            attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
            n_out = 1
        model, feed = single_node(op, ins, n_out, attrs, const=("W", "R", "B"))
        s = ort.InferenceSession(model.SerializeToString(), opts,
                                 providers=["CPUExecutionProvider"])
        s.run(None, feed)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            s.run(None, feed)
            times.append(time.perf_counter() - t)
        c = time.process_time()
        for _ in range(20):
            s.run(None, feed)
        cpu = (time.process_time() - c) / 20
        print(f"{name} {sorted(times)[len(times) // 2] * 1e3:.3f} {cpu * 1e3:.3f}")


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    {"backend": backend, "ort": ort_cases, "bench": bench}[mode](out)
