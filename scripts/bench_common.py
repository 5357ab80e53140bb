"""Helpers shared by the bench_*.py scripts: argument parsing, model building blocks
(onnx.helper), and timing of onnxruntime and `onnx-dynq run` on the same inputs.

Percentiles are nearest-rank (the value at rank ceil(p/100 * n)), as `onnx-dynq run --json`
reports them, so both runtimes' p50/p90 are computed the same way.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper


def settle_page_cache(path):
    """Puts a file in the page cache as a first read from disk leaves it: evicted, then
    read once sequentially (readahead then caches it in large folios). Otherwise the cache
    holds whatever earlier writes and partial reads left, and mapping it costs up to a
    quarter more for whoever maps it; the commands compared then start from the same state."""
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while os.read(fd, 1 << 22):
            pass
    finally:
        os.close(fd)


def cli(doc, repeat="20"):
    """Parses `BINARY [--batches 1,10] [--repeat N] [--threads 1] [other flags]` from sys.argv.
    Returns (binary, opt, batches, repeat, threads), where opt(flag, default) gives any other
    flag's value as a string; None (after printing `doc`) when no binary is given."""
    args = sys.argv[1:]
    if not args:
        print(doc, file=sys.stderr)
        return None
    opt = lambda k, d: args[args.index(k) + 1] if k in args else d
    batches = [int(b) for b in opt("--batches", "1,10").split(",")]
    return args[0], opt, batches, int(opt("--repeat", repeat)), int(opt("--threads", "1"))


class Inits:
    """Initializers of a model being built; `add` returns the name so it can be used inline."""

    def __init__(self):
        self.list = []

    def add(self, name, arr):
        self.list.append(numpy_helper.from_array(arr, name))
        return name


def lstm_layer(inits, nodes, rng, layer, x, inp, hid, h0, c0):
    """Appends one one-direction LSTM (weights uniform in +-1/sqrt(hid), drawn W, R, B) reading
    `x` [seq, batch, inp] and the states `h0`/`c0`, then a Squeeze of its num_directions axis.
    Returns the name of the Squeeze output [seq, batch, hid]; the states come out as
    hn{layer}/cn{layer}."""
    s = 1.0 / np.sqrt(hid)
    w = inits.add(f"W{layer}", rng.uniform(-s, s, (1, 4 * hid, inp)).astype(np.float32))
    r = inits.add(f"R{layer}", rng.uniform(-s, s, (1, 4 * hid, hid)).astype(np.float32))
    b = inits.add(f"B{layer}", rng.uniform(-s, s, (1, 8 * hid)).astype(np.float32))
    nodes.append(
        helper.make_node(
            "LSTM",
            [x, w, r, b, "", h0, c0],
            [f"y{layer}", f"hn{layer}", f"cn{layer}"],
            hidden_size=hid,
        )
    )
    sq = inits.add(f"sq{layer}", np.array([1], np.int64))
    nodes.append(helper.make_node("Squeeze", [f"y{layer}", sq], [f"x{layer + 1}"]))
    return f"x{layer + 1}"


def save_model(path: Path, nodes, name, ins, outs, inits, check=True) -> None:
    """Saves an opset-17, IR-8 model of these nodes (checked with onnx.checker unless not
    `check`)."""
    graph = helper.make_graph(nodes, name, ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    onnx.save(model, str(path))


def ort_session(path, threads, level=None):
    """An onnxruntime CPU session; `level` is a GraphOptimizationLevel (default: ORT's own,
    ORT_ENABLE_ALL)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if level is not None:
        so.graph_optimization_level = level
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def save_feeds(tmp: Path, feed):
    """Writes each input to tmp/NAME.npy; returns {name: path}."""
    files = {}
    for k, v in feed.items():
        files[k] = tmp / f"{k}.npy"
        np.save(files[k], v)
    return files


def pct(times, p):
    times = sorted(times)
    return times[max(0, int(np.ceil(p / 100 * len(times))) - 1)]


def time_ort(sess, feed, repeat, warmup=True):
    """(p50, p90) in ms of `repeat` onnxruntime runs, after one warm-up run unless the caller
    already ran it."""
    if warmup:
        sess.run(None, feed)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    return pct(times, 50), pct(times, 90)


def ours_cmd(binary, model, feed_files, threads, extra):
    cmd = [binary, "run", str(model), "--threads", str(threads), *extra]
    for k, f in feed_files.items():
        cmd += ["--input", f"{k}={f}"]
    return cmd


def time_ours(binary, model, feed_files, threads, repeat, out, extra=()):
    """((p50, p90), None) in ms from `onnx-dynq run --repeat N --json`, writing the outputs to
    `out`; (None, last stderr line) when the run fails."""
    cmd = ours_cmd(binary, model, feed_files, threads,
                   ["--repeat", str(repeat), "--json", "--output", str(out), *extra])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"
    lat = json.loads(r.stdout)["latency_ms"]
    return (lat["p50"], lat["p90"]), None


def compare_both(binary, model, sess, feed, feed_files, names, threads, repeat, out):
    """Runs onnxruntime once for the reference (which is also its warm-up), times both
    runtimes, and returns ((ort p50, p90), (ours p50, p90), max |ours - ORT| over `names`).
    Raises when our runtime fails."""
    ref = sess.run(None, feed)
    ort_t = time_ort(sess, feed, repeat, warmup=False)
    ours_t, err = time_ours(binary, model, feed_files, threads, repeat, out)
    if err:
        raise RuntimeError(f"onnx-dynq run {model} failed: {err}")
    ours = np.load(out)
    diff = max(float(np.abs(ours[n] - r).max()) for n, r in zip(names, ref))
    return ort_t, ours_t, diff


def print_row(batch, ort_t, ours_t, diff, fmt="8.2f"):
    """One result line: both runtimes' (p50, p90) in ms, our p50 / ORT p50, max |diff|."""
    print(
        f"batch {batch:3d}: onnxruntime p50 {ort_t[0]:{fmt}} ms p90 {ort_t[1]:{fmt}} ms | "
        f"onnx-dynq p50 {ours_t[0]:{fmt}} ms p90 {ours_t[1]:{fmt}} ms | "
        f"ratio {ours_t[0] / ort_t[0]:5.2f}x | max |diff| {diff:.2e}"
    )


def binary_and_workdir(doc):
    """Parses `BINARY [WORKDIR] [--flag value ...]` from sys.argv (WORKDIR: a new temporary
    folder when not given, created when missing). Returns (binary, workdir, opt, args), where
    opt(flag, default) gives a flag's value as a string and args is the argument list; None
    (after printing `doc`) when no binary is given."""
    import tempfile

    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        print(doc, file=sys.stderr)
        return None
    opt = lambda k, d: args[args.index(k) + 1] if k in args else d
    work = Path(args[1]) if len(args) > 1 and not args[1].startswith("-") else Path(tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    return args[0], work, opt, args
