"""DeepCell Mesmer worker: runs INSIDE the deepcell side environment (Python 3.10).

This file is executed by path with the side environment's interpreter; it must not
import cellgen or anything that environment does not have. Module level uses the
standard library only, so importing it from cellgen's own Python is harmless.

Modes::

    python -I mesmer_worker.py serve [--model PATH]
    python -I mesmer_worker.py make-random-model PATH [--seed N]

``serve`` speaks a tiny length-prefixed protocol on stdin/stdout. Every message is::

    MAGIC (4 bytes, b"CGMW") | header length (u32, big-endian) | payload length (u64, big-endian)
    header (UTF-8 JSON object) | payload (an uncompressed .npz archive, or nothing)

Requests: ``{"op": "segment", "image_mpp": float, "compartment": "both"}`` with payload array
``image`` of shape (H, W, 2), channels (nucleus, cytoplasm), float32; ``{"op": "ping"}``;
``{"op": "close"}``. Replies: ``{"ok": true, ...}`` (segment replies carry arrays ``cell``
and/or ``nucleus``, uint32 (H, W)), or ``{"ok": false, "error": "one line"}``. The first
message the worker sends is ``{"ok": true, "op": "ready", ...}`` once the model is loaded, or
an error reply (then it exits 1). End of input means: exit 0.

Anything written to stdout by libraries is redirected to stderr so it cannot corrupt the
protocol stream.
"""

import argparse
import io
import json
import os
import struct
import sys
import time

MAGIC = b"CGMW"
PREFIX = struct.Struct(">4sIQ")
MAX_HEADER = 1 << 20

COMPARTMENTS = ("whole-cell", "nuclear", "both")


def one_line(exc, limit=500):
    """An exception as ``Type: message`` on one line."""
    text = str(exc).strip() or repr(exc)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------- protocol


def read_exact(stream, n):
    """Read exactly ``n`` bytes; ``None`` on a clean end of input before the first byte."""
    chunks = []
    got = 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            if got == 0:
                return None
            raise EOFError(f"input ended after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_message(stream):
    """Return ``(header, arrays)`` or ``None`` at end of input."""
    import numpy as np

    prefix = read_exact(stream, PREFIX.size)
    if prefix is None:
        return None
    magic, hlen, plen = PREFIX.unpack(prefix)
    if magic != MAGIC or hlen > MAX_HEADER:
        raise ValueError("bad message prefix on the worker's input")
    header = json.loads(read_exact(stream, hlen).decode("utf-8"))
    arrays = {}
    if plen:
        payload = read_exact(stream, plen)
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    return header, arrays


def encode_message(header, arrays=None) -> bytes:
    """One message as bytes: prefix, JSON header, then the arrays as an .npz payload."""
    payload = b""
    if arrays:
        import numpy as np

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        payload = buf.getvalue()
    hbytes = json.dumps(header).encode("utf-8")
    return PREFIX.pack(MAGIC, len(hbytes), len(payload)) + hbytes + payload


def write_message(stream, header, arrays=None):
    stream.write(encode_message(header, arrays))
    stream.flush()


# --------------------------------------------------------------------------- model


def quiet_tensorflow(verbose):
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import warnings

        warnings.simplefilter("ignore")
    import tensorflow as tf

    if not verbose:
        tf.get_logger().setLevel("ERROR")
    return tf


def load_model(tf, path):
    """Load a Keras model from ``path``: a SavedModel folder (as Mesmer's own weights ship)
    or a Keras .h5/.keras file (which needs deepcell's custom layers)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path} does not exist")
    if os.path.isdir(path):
        return tf.keras.models.load_model(path, compile=False)
    import deepcell.layers

    custom = {name: obj for name, obj in vars(deepcell.layers).items() if isinstance(obj, type)}
    return tf.keras.models.load_model(path, compile=False, custom_objects=custom)


def serve(model_path, verbose):
    # The protocol owns the real stdout; everything else printing to fd 1 goes to stderr.
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    proto_in = sys.stdin.buffer

    t0 = time.perf_counter()
    try:
        tf = quiet_tensorflow(verbose)
        import deepcell
        import numpy as np
        from deepcell.applications import Mesmer

        if model_path:
            model = load_model(tf, model_path)
            app = Mesmer(model=model)
        else:
            app = Mesmer()  # deepcell's own weights: cached archive or download with a token
        model = app.model
        if len(model.outputs) != 4:
            raise ValueError(
                f"model has {len(model.outputs)} outputs; a Mesmer model has 4 "
                "(whole-cell inner distance, whole-cell pixelwise, nuclear inner distance, nuclear pixelwise)"
            )
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
        write_message(proto_out, {"ok": False, "op": "ready", "stage": "load", "error": one_line(exc)})
        return 1

    write_message(
        proto_out,
        {
            "ok": True,
            "op": "ready",
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "tensorflow": tf.__version__,
            "deepcell": deepcell.__version__,
            "numpy": np.__version__,
            "model": model_path or "deepcell default (MultiplexSegmentation)",
            "model_input_shape": list(model.input_shape[1:]),
            "load_seconds": round(time.perf_counter() - t0, 3),
        },
    )

    served = 0
    while True:
        try:
            message = read_message(proto_in)
        except Exception as exc:  # broken stream: nothing sane to answer
            print(f"mesmer worker: {one_line(exc)}", file=sys.stderr)
            return 2
        if message is None:
            return 0
        header, arrays = message
        op = header.get("op")
        if op == "close":
            write_message(proto_out, {"ok": True, "op": "close", "served": served})
            return 0
        if op == "ping":
            write_message(proto_out, {"ok": True, "op": "ping", "served": served, "pid": os.getpid()})
            continue
        if op != "segment":
            write_message(proto_out, {"ok": False, "op": op, "error": f"unknown op {op!r}"})
            continue
        try:
            t1 = time.perf_counter()
            image = np.asarray(arrays["image"], dtype=np.float32)
            if image.ndim != 3 or image.shape[-1] != 2:
                raise ValueError(f"expected an image of shape (H, W, 2), got {image.shape}")
            compartment = header.get("compartment", "both")
            if compartment not in COMPARTMENTS:
                raise ValueError(f"compartment must be one of {COMPARTMENTS}, got {compartment!r}")
            mpp = header.get("image_mpp")
            labels = app.predict(
                image[None, ...],
                image_mpp=None if mpp is None else float(mpp),
                compartment=compartment,
                batch_size=int(header.get("batch_size", 4)),
            )
            labels = np.asarray(labels)[0]  # (H, W, n_compartments)
            if labels.shape[:2] != image.shape[:2]:
                raise ValueError(f"Mesmer returned labels of shape {labels.shape[:2]} for an image of {image.shape[:2]}")
            if labels.size and (labels.min() < 0 or labels.max() > 0xFFFFFFFF):
                raise ValueError("Mesmer returned labels outside the uint32 range")
            out = {}
            if compartment == "both":
                out["cell"] = labels[..., 0].astype(np.uint32)
                out["nucleus"] = labels[..., 1].astype(np.uint32)
            elif compartment == "whole-cell":
                out["cell"] = labels[..., 0].astype(np.uint32)
            else:
                out["nucleus"] = labels[..., 0].astype(np.uint32)
            served += 1
            reply = {
                "ok": True,
                "op": "segment",
                "served": served,
                "seconds": round(time.perf_counter() - t1, 4),
            }
        except Exception as exc:  # noqa: BLE001 - one line back to the parent; keep serving
            write_message(proto_out, {"ok": False, "op": "segment", "error": one_line(exc)})
            continue
        write_message(proto_out, reply, out)


# --------------------------------------------------------------------------- random model


def make_random_model(path, seed, verbose):
    """Save a randomly initialised Mesmer-architecture PanopticNet as a SavedModel at ``path``.

    Weights are a pure function of ``seed``. The SavedModel format loads back with plain
    ``tf.keras.models.load_model`` (no custom objects), as Mesmer's own model does.
    """
    tf = quiet_tensorflow(verbose)
    from deepcell.model_zoo import PanopticNet

    path = os.path.abspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists")
    tf.keras.utils.set_random_seed(seed)
    model = PanopticNet(
        "resnet50",
        input_shape=(256, 256, 2),
        norm_method=None,
        num_semantic_classes=[1, 3, 1, 3],
        location=True,
        include_top=True,
        use_imagenet=False,
    )
    tmp = f"{path}.partial-{os.getpid()}"
    model.save(tmp, save_format="tf", include_optimizer=False)
    os.rename(tmp, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mesmer_worker")
    parser.add_argument("--verbose", action="store_true", help="keep TensorFlow's logs and warnings")
    sub = parser.add_subparsers(dest="mode", required=True)
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--model", default=None)
    p_make = sub.add_parser("make-random-model")
    p_make.add_argument("path")
    p_make.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.mode == "serve":
        code = serve(args.model, args.verbose)
        # Nothing to clean up: skip TensorFlow's slow interpreter teardown (seconds).
        sys.stderr.flush()
        os._exit(code)
    try:
        path = make_random_model(args.path, args.seed, args.verbose)
    except Exception as exc:  # noqa: BLE001
        print(f"mesmer worker: {one_line(exc)}", file=sys.stderr)
        return 1
    print(json.dumps({"ok": True, "path": path, "seed": args.seed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
