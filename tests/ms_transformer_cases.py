"""Small models around one com.microsoft node each, for tests/ms_transformer_ort.rs.

    python ms_transformer_cases.py OUT_DIR [PREFIX,PREFIX...]

For every case (whose name starts with one of the prefixes, when given) writes NAME.onnx and
NAME.npz with the inputs (`input.*`) and onnxruntime's outputs (`output.*`), or, when
onnxruntime refuses the model, only the inputs and its error in the list. Prints a JSON list of {"name", "error"?}.
"""
import json, sys, os
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto, numpy_helper

out_dir = sys.argv[1]
prefixes = tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 and sys.argv[2] else ()
rng = np.random.default_rng(11)
T = {np.float32: TensorProto.FLOAT, np.int32: TensorProto.INT32, np.int64: TensorProto.INT64,
     np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}
cases = []

def f32(*shape, s=1.0):
    return (rng.standard_normal(shape) * s).astype(np.float32)

def case(name, op, ins, attrs=None, n_out=1, consts=()):
    """ins: list of (name, array or None); arrays named in consts become initializers."""
    if prefixes and not name.startswith(prefixes):
        return
    names, graph_in, inits, feed = [], [], [], {}
    for n, a in ins:
        if a is None:
            names.append("")
            continue
        names.append(n)
        if n in consts:
            inits.append(numpy_helper.from_array(a, n))
        else:
            graph_in.append(helper.make_tensor_value_info(n, T[a.dtype.type], list(a.shape)))
            feed[n] = a
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, domain="com.microsoft", **(attrs or {}))
    g = helper.make_graph([node], name, graph_in, [onnx.ValueInfoProto(name=o) for o in outs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    path = os.path.join(out_dir, name + ".onnx")
    onnx.save(m, path)
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        res = s.run(None, feed)
    except Exception as e:
        np.savez(os.path.join(out_dir, name + ".npz"), **{"input." + k: v for k, v in feed.items()})
        cases.append({"name": name, "error": str(e).splitlines()[0][:300]})
        return
    np.savez(os.path.join(out_dir, name + ".npz"), **{"input." + k: v for k, v in feed.items()},
             **{"output." + o: r for o, r in zip(outs, res)})
    cases.append({"name": name})

# ---- Attention -------------------------------------------------------------------------------
B, S, D, N = 2, 5, 16, 4
def attn(name, mask=None, past=None, abias=None, attrs=None, sizes=None, n_out=1, bias=True, s=S):
    hq, hk, hv = sizes or (D, D, D)
    a = dict(num_heads=N, **(attrs or {}))
    if sizes:
        a["qkv_hidden_sizes"] = list(sizes)
    ins = [("input", f32(B, s, D)), ("weights", f32(D, hq + hk + hv, s=0.3)),
           ("bias", f32(hq + hk + hv, s=0.1) if bias else None), ("mask_index", mask),
           ("past", past), ("attention_bias", abias)]
    while ins and ins[-1][1] is None:
        ins.pop()
    case(name, "Attention", ins, a, n_out, consts=("weights", "bias"))

i32 = lambda v: np.array(v, np.int32)
attn("attn_plain")
attn("attn_no_bias", bias=False)
attn("attn_mask_end", mask=i32([5, 3]))
attn("attn_mask_end_start", mask=i32([5, 4, 0, 2]))
raw = i32([[1, 1, 1, 1, 1], [1, 1, 0, 1, 0]])
attn("attn_mask_raw", mask=raw)
attn("attn_mask_3d", mask=(rng.random((B, S, S)) > 0.3).astype(np.int32))
attn("attn_unidirectional", attrs=dict(unidirectional=1))
attn("attn_unidirectional_mask", mask=i32([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]), attrs=dict(unidirectional=1))
attn("attn_unidirectional_mask_3d", mask=(rng.random((B, S, S)) > 0.3).astype(np.int32), attrs=dict(unidirectional=1))
P = 3
past = f32(2, B, N, P, D // N)
attn("attn_past", past=past, mask=np.ones((B, P + S), np.int32), attrs=dict(unidirectional=1), n_out=2)
attn("attn_past_step", past=past, mask=i32([[1, 1, 1, 1], [0, 1, 1, 1]]), attrs=dict(unidirectional=1), n_out=2, s=1)
attn("attn_present_no_past", attrs=dict(unidirectional=1), n_out=2)
attn("attn_bias_full", abias=f32(B, N, S, S))
attn("attn_bias_broadcast", abias=f32(1, N, S, S), mask=i32([4, 5]))
attn("attn_bias_batch_broadcast", abias=f32(B, 1, S, S))
attn("attn_qkv_sizes", sizes=(16, 16, 24), mask=raw)
attn("attn_scale_filter", attrs=dict(scale=0.3, mask_filter_value=-50.0), mask=raw)
attn("attn_mask_4d", mask=np.ones((B, 1, 8, 8), np.int32))
attn("attn_mask_3b2", mask=i32([5, 3, 0, 0, 5, 5, 5, 5]))

# ---- MultiHeadAttention ----------------------------------------------------------------------
def mha(name, layout="3d", L=S, mask=None, past=None, abias=None, attrs=None, n_out=1, bias=False):
    q, k, v = f32(B, S, D), f32(B, L, D), f32(B, L, D)
    if layout == "packed_kv":
        k, v = f32(B, L, N, 2, D // N), None
    elif layout == "packed_qkv":
        q, k, v = f32(B, S, N, 3, D // N), None, None
    elif layout == "bnsh":
        k, v = f32(B, N, L, D // N), f32(B, N, L, D // N)
    ins = [("query", q), ("key", k), ("value", v), ("bias", f32(3 * D, s=0.1) if bias else None),
           ("key_padding_mask", mask), ("attention_bias", abias),
           ("past_key", past[0] if past else None), ("past_value", past[1] if past else None)]
    while ins[-1][1] is None:
        ins.pop()
    case(name, "MultiHeadAttention", ins, dict(num_heads=N, **(attrs or {})), n_out, consts=("bias",))

mha("mha_self_bias", bias=True)
mha("mha_cross_mask_end", L=7, mask=i32([7, 4]))
mha("mha_cross_mask_raw", L=7, mask=i32([[1, 1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 1, 0, 0]]), bias=True)
mha("mha_mask_3d", mask=(rng.random((B, S, S)) > 0.3).astype(np.int32))
mha("mha_attention_bias", abias=f32(1, N, S, 7), L=7)
mha("mha_past", past=(f32(B, N, P, D // N), f32(B, N, P, D // N)), attrs=dict(unidirectional=1),
    mask=np.ones((B, P + S), np.int32), n_out=3, bias=True)
mha("mha_scale_filter", attrs=dict(scale=0.25, mask_filter_value=-30.0), mask=i32([3, 5]))
mha("mha_packed_kv", layout="packed_kv", L=6)
mha("mha_packed_qkv", layout="packed_qkv")
mha("mha_bnsh_kv", layout="bnsh", L=6, mask=i32([6, 2]))

# ---- GroupQueryAttention ---------------------------------------------------------------------
def gqa(name, S_=5, kvN=2, past_len=None, seqlens=None, total=None, packed=False, attrs=None, B=B):
    Hd = 8
    q, k, v = f32(B, S_, N * Hd), f32(B, S_, kvN * Hd), f32(B, S_, kvN * Hd)
    if packed:
        q, k, v = np.concatenate([q, k, v], axis=2), None, None
    past = (f32(B, kvN, past_len, Hd), f32(B, kvN, past_len, Hd)) if past_len else (None, None)
    seqlens = i32(seqlens if seqlens is not None else [S_ - 1] * B)
    total = np.array(total if total is not None else S_, np.int32)
    ins = [("query", q), ("key", k), ("value", v), ("past_key", past[0]), ("past_value", past[1]),
           ("seqlens_k", seqlens), ("total_sequence_length", total)]
    case(name, "GroupQueryAttention", ins, dict(num_heads=N, kv_num_heads=kvN, **(attrs or {})), 3)

gqa("gqa_prompt")
gqa("gqa_prompt_mqa", kvN=1)
gqa("gqa_packed", packed=True)
gqa("gqa_decode", S_=1, past_len=6, seqlens=[6, 3], total=7)
# onnxruntime runs a prompt after a past only for batch 1.
gqa("gqa_subsequent_prompt", S_=3, past_len=4, seqlens=[6], total=7, B=1)
gqa("gqa_local_window", S_=6, attrs=dict(local_window_size=2))
gqa("gqa_softcap_scale", attrs=dict(softcap=2.0, scale=0.4))
gqa("gqa_smooth_softmax", attrs=dict(smooth_softmax=1))

# ---- QAttention ------------------------------------------------------------------------------
def qattn(name, wtype=np.int8, per_col=False, mask=None, past=None, attrs=None, n_out=1, zp=True):
    x = rng.integers(0, 256, (B, S, D)).astype(np.uint8)
    lo, hi = (-128, 128) if wtype == np.int8 else (0, 256)
    w = rng.integers(lo, hi, (D, 3 * D)).astype(wtype)
    ws = ((rng.random(3 * D) + 0.5) * 0.002).astype(np.float32) if per_col else np.array(0.003, np.float32)
    wz = None
    if zp:
        wz = (rng.integers(-3, 4, 3 * D) + (0 if wtype == np.int8 else 128)).astype(wtype) if per_col else np.array(2 if wtype == np.int8 else 130, wtype)
    ins = [("input", x), ("weight", w), ("bias", f32(3 * D, s=0.1)), ("input_scale", np.array(0.02, np.float32)),
           ("weight_scale", ws), ("mask_index", mask), ("input_zero_point", np.array(128, np.uint8) if zp else None),
           ("weight_zero_point", wz), ("past", past)]
    while ins[-1][1] is None:
        ins.pop()
    case(name, "QAttention", ins, dict(num_heads=N, **(attrs or {})), n_out,
         consts=("weight", "bias", "input_scale", "weight_scale", "input_zero_point", "weight_zero_point"))

qattn("qattn_s8")
qattn("qattn_u8", wtype=np.uint8, mask=i32([5, 2]))
qattn("qattn_s8_per_column", per_col=True, mask=raw)
qattn("qattn_no_zero_points", zp=False)
qattn("qattn_past", past=past, attrs=dict(unidirectional=1), n_out=2, mask=np.ones((B, P + S), np.int32))

# ---- EmbedLayerNormalization -----------------------------------------------------------------
V, MAXP, H = 30, 12, 8
def eln(name, seg=True, mask=True, pos=None, n_out=2, attrs=None, mask_vals=None):
    ids = rng.integers(0, V, (B, S)).astype(np.int32)
    m = mask_vals if mask_vals is not None else i32([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    ins = [("input_ids", ids), ("segment_ids", rng.integers(0, 2, (B, S)).astype(np.int32) if seg else None),
           ("word_embedding", f32(V, H)), ("position_embedding", f32(MAXP, H)),
           ("segment_embedding", f32(2, H) if seg else None), ("gamma", f32(H)), ("beta", f32(H)),
           ("mask", m if mask else None), ("position_ids", pos)]
    while ins[-1][1] is None:
        ins.pop()
    case(name, "EmbedLayerNormalization", ins, {"epsilon": 1e-5, **(attrs or {})}, n_out,
         consts=("word_embedding", "position_embedding", "segment_embedding", "gamma", "beta"))

eln("eln_basic")
eln("eln_no_segment", seg=False)
eln("eln_no_mask", mask=False)
eln("eln_mask_not_prefix", mask_vals=i32([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0]]))
eln("eln_position_ids", pos=rng.integers(0, MAXP, (B, S)).astype(np.int32))
eln("eln_position_ids_row", pos=i32([[7, 3, 1, 0, 11]]))
eln("eln_sum_output", n_out=3)
eln("eln_mask_index_type_0", attrs=dict(mask_index_type=0), n_out=1)

# ---- MatMulNBits -----------------------------------------------------------------------------
def nbits(name, K, Nn, bits=4, block=16, zp="packed", g_idx=False, bias=False, a_shape=(2, 3)):
    nblk = (K + block - 1) // block
    blob = block * bits // 8
    q = rng.integers(0, 2 ** bits, (Nn, nblk * block)).astype(np.uint8)
    if bits == 8:
        packed = q
    else:
        per = 8 // bits
        qq = q.reshape(Nn, -1, per)
        packed = np.zeros(qq.shape[:2], np.uint8)
        for i in range(per):
            packed |= (qq[:, :, i] << (bits * i)).astype(np.uint8)
    B_ = packed.reshape(Nn, nblk, blob)
    scales = ((rng.random((Nn * nblk)) + 0.5) * 0.05).astype(np.float32)
    ins = [("A", f32(*a_shape, K)), ("B", B_), ("scales", scales)]
    if zp == "packed":
        z = rng.integers(0, 2 ** bits, (Nn, nblk)).astype(np.uint8)
        per = 8 // bits
        zb = (nblk + per - 1) // per
        zz = np.zeros((Nn, zb * per), np.uint8); zz[:, :nblk] = z
        zz = zz.reshape(Nn, zb, per)
        zpk = np.zeros((Nn, zb), np.uint8)
        for i in range(per):
            zpk |= (zz[:, :, i] << (bits * i)).astype(np.uint8)
        ins.append(("zero_points", zpk.reshape(-1)))
    elif zp == "float":
        ins.append(("zero_points", (rng.random(Nn * nblk) * (2 ** bits - 1)).astype(np.float32)))
    else:
        ins.append(("zero_points", None))
    ins.append(("g_idx", ((np.arange(K) * 7) % nblk).astype(np.int32) if g_idx else None))
    ins.append(("bias", f32(Nn) if bias else None))
    while ins[-1][1] is None:
        ins.pop()
    case(name, "MatMulNBits", ins, dict(K=K, N=Nn, bits=bits, block_size=block), 1,
         consts=("B", "scales", "zero_points", "g_idx", "bias"))

nbits("mnb_4bit", 64, 24)
nbits("mnb_4bit_no_zp", 64, 24, zp=None, bias=True)
nbits("mnb_4bit_ragged_k", 40, 10, block=16)
nbits("mnb_4bit_odd_blocks", 48, 7, block=16)
nbits("mnb_4bit_float_zp", 64, 24, zp="float", block=32)
nbits("mnb_8bit", 64, 24, bits=8, block=32)
nbits("mnb_8bit_ragged", 50, 9, bits=8, block=16, bias=True)
nbits("mnb_2bit", 64, 12, bits=2, block=16)
# onnxruntime 1.32 ignores uint8 zero points when g_idx is given (its dequantization with
# g_idx reads only float ones), so g_idx is checked without them and with float ones.
nbits("mnb_4bit_g_idx", 64, 24, zp=None, g_idx=True, block=16)
nbits("mnb_4bit_g_idx_float_zp", 64, 24, zp="float", g_idx=True, block=16)
nbits("mnb_2d_input", 32, 8, a_shape=(5,))

# ---- the ops of the earlier commit (transformer_ms.rs), for coverage -------------------------
case("gelu", "Gelu", [("X", f32(2, 3, 8, s=2))])
case("bias_gelu", "BiasGelu", [("A", f32(2, 3, 8, s=2)), ("B", f32(8))])
case("fast_gelu", "FastGelu", [("X", f32(2, 3, 8, s=2)), ("bias", f32(8))])
case("skip_ln", "SkipLayerNormalization", [("input", f32(2, 3, 8)), ("skip", f32(2, 3, 8)), ("gamma", f32(8)), ("beta", f32(8)), ("bias", f32(8))], dict(epsilon=1e-5), 4)
case("skip_simplified_ln", "SkipSimplifiedLayerNormalization", [("input", f32(2, 3, 8)), ("skip", f32(2, 3, 8)), ("gamma", f32(8)), ("bias", f32(8))], dict(epsilon=1e-5), 4)
case("fused_matmul", "FusedMatMul", [("A", f32(2, 4, 3)), ("B", f32(2, 5, 4))], dict(alpha=0.5, transA=1, transB=1))

print(json.dumps(cases))
