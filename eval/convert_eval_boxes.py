#!/usr/bin/env python3
"""Convert the reference's evaluation box files (HaMeR's `hamer_evaluation_data/freihand_val.npz`,
`ho3d_val.npz`) into handcov's evaluation-set JSON, which `eval predict --samples` reads.

    python eval/convert_eval_boxes.py --npz freihand_val.npz --dataset freihand --out freihand_val.json
    python eval/convert_eval_boxes.py --npz ho3d_val.npz --dataset ho3d --out ho3d_val.json

Input keys (others, e.g. hand_keypoints_3d or extra_info, are ignored):

    imgname  [N]       image paths relative to the dataset's image directory (str or bytes)
    center   [N, 2]    box centre in pixels
    scale    [N] or [N, 1] or [N, 2]
                       box side(s) in PIXELS: HaMeR's ImageDataset divides the npz's `scale` by
                       200 and multiplies it back before cropping, so the stored value is the
                       side in pixels. handcov's samples carry the side in units of 200 px (the
                       convention of `infer --boxes`), so the value is divided by 200 here.
                       `--scale-units 200px` says the npz already holds units of 200 px.
    right    [N]       optional, 1 = right hand, 0 = left hand (default: all right, as HaMeR)

Output: {"dataset": ..., "source": ..., "samples": [{"image", "center", "scale", "is_right"}, ...]}
in the npz's order (the order of the result files). `scale` is one number, or [w, h] when the npz
holds two sides per box. Every number is the npz value (float32 or float64) as a Python float,
divided by 200 for pixel scales. Missing keys, length or shape mismatches, non-finite or
non-positive values, and paths that are empty or absolute are errors (exit code 2); the output
is written only when everything converted.

`imgname` stored as a Python-object array needs pickle to load; that is refused unless
--allow-pickle is given (pickles can run code; only use it on files you trust).

Only the Python standard library and numpy are used.
"""

import argparse
import json
import math
import os
import sys

import numpy as np

DATASETS = ("freihand", "ho3d")


class ConvertError(Exception):
    """A problem with the input; reported as one line, exit code 2."""


def _load(npz_path, allow_pickle):
    try:
        return np.load(npz_path, allow_pickle=allow_pickle)
    except FileNotFoundError:
        raise ConvertError(f"{npz_path}: no such file")
    except Exception as e:  # zipfile / format errors
        raise ConvertError(f"{npz_path}: not a readable .npz file ({e})")


def _get(data, key, npz_path, allow_pickle):
    if key not in data.files:
        raise ConvertError(f"{npz_path}: missing key `{key}` (the file has: {', '.join(sorted(data.files))})")
    try:
        return data[key]
    except ValueError as e:
        if "allow_pickle" in str(e) and not allow_pickle:
            raise ConvertError(f"{npz_path}: `{key}` is stored as Python objects, which needs pickle to load; "
                               f"rerun with --allow-pickle if you trust the file")
        raise ConvertError(f"{npz_path}: cannot read `{key}` ({e})")


def _name(v, k, npz_path):
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    if isinstance(v, (bytes, np.bytes_)):
        try:
            v = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise ConvertError(f"{npz_path}: imgname[{k}] is not UTF-8")
    if not isinstance(v, str):
        raise ConvertError(f"{npz_path}: imgname[{k}] is a {type(v).__name__}, expected a path string")
    v = v.strip()
    if not v:
        raise ConvertError(f"{npz_path}: imgname[{k}] is empty")
    if os.path.isabs(v):
        raise ConvertError(f"{npz_path}: imgname[{k}] = {v!r} is absolute; expected a path relative to the image directory")
    return v


def _floats(a, key, npz_path):
    try:
        a = np.asarray(a)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"dtype {a.dtype}")
    except (TypeError, ValueError) as e:
        raise ConvertError(f"{npz_path}: `{key}` is not numeric ({e})")
    if a.dtype.kind in "iu":
        a = a.astype(np.float64)
    bad = np.argwhere(~np.isfinite(a))
    if len(bad):
        raise ConvertError(f"{npz_path}: `{key}` has a non-finite value at index {tuple(int(i) for i in bad[0])}")
    return a


def convert(npz_path, dataset, scale_units="px", allow_pickle=False, prefix=""):
    """Returns the evaluation-set document for one npz file."""
    if dataset not in DATASETS:
        raise ConvertError(f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}")
    if scale_units not in ("px", "200px"):
        raise ConvertError(f"unknown scale units {scale_units!r}: expected px or 200px")
    data = _load(npz_path, allow_pickle)
    names = _get(data, "imgname", npz_path, allow_pickle)
    center = _floats(_get(data, "center", npz_path, allow_pickle), "center", npz_path)
    scale = _floats(_get(data, "scale", npz_path, allow_pickle), "scale", npz_path)
    names = np.asarray(names)
    if names.ndim != 1:
        raise ConvertError(f"{npz_path}: `imgname` has shape {names.shape}, expected [N]")
    n = len(names)
    if n == 0:
        raise ConvertError(f"{npz_path}: `imgname` is empty (no samples)")
    if center.shape != (n, 2):
        raise ConvertError(f"{npz_path}: `center` has shape {center.shape}, expected ({n}, 2) for {n} images")
    if scale.ndim == 1 and scale.shape[0] == n:
        scale = scale.reshape(n, 1)
    if scale.ndim != 2 or scale.shape[0] != n or scale.shape[1] not in (1, 2):
        raise ConvertError(f"{npz_path}: `scale` has shape {scale.shape}, expected ({n},), ({n}, 1) or ({n}, 2) for {n} images")
    if (scale <= 0).any():
        k = int(np.argwhere(scale <= 0)[0][0])
        raise ConvertError(f"{npz_path}: `scale` of sample {k} is {scale[k].tolist()}, must be positive")
    if "right" in data.files:
        right = _floats(_get(data, "right", npz_path, allow_pickle), "right", npz_path).reshape(-1)
        if right.shape != (n,):
            raise ConvertError(f"{npz_path}: `right` has {right.size} values, expected {n} (one per image)")
        odd = np.argwhere((right != 0) & (right != 1))
        if len(odd):
            k = int(odd[0][0])
            raise ConvertError(f"{npz_path}: `right` of sample {k} is {right[k]}, expected 0 (left) or 1 (right)")
    else:
        right = np.ones(n)
    divisor = 200.0 if scale_units == "px" else 1.0
    samples = []
    for k in range(n):
        s = [float(v) / divisor for v in scale[k]]
        samples.append({
            "image": prefix + _name(names[k], k, npz_path),
            "center": [float(center[k, 0]), float(center[k, 1])],
            "scale": s[0] if len(s) == 1 else s,
            "is_right": bool(right[k] == 1),
        })
    return {"dataset": dataset, "source": os.path.basename(npz_path), "samples": samples}


def summary(doc):
    """One line about a converted set (box sides in pixels)."""
    sides = []
    for s in doc["samples"]:
        sc = s["scale"] if isinstance(s["scale"], list) else [s["scale"]]
        sides.append(max(sc) * 200.0)
    left = sum(1 for s in doc["samples"] if not s["is_right"])
    return (f"{len(doc['samples'])} samples ({left} left hands), box side "
            f"{min(sides):.1f} .. {max(sides):.1f} px (median {float(np.median(sides)):.1f})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--npz", required=True, help="freihand_val.npz or ho3d_val.npz")
    p.add_argument("--dataset", required=True, help="freihand or ho3d")
    p.add_argument("--out", required=True, help="the evaluation-set JSON to write")
    p.add_argument("--scale-units", default="px", choices=["px", "200px"],
                   help="units of the npz's `scale` (default px, as HaMeR's ImageDataset reads it)")
    p.add_argument("--prefix", default="",
                   help="prepended to every image path (e.g. `evaluation/rgb/` when --data will be "
                        "the dataset root rather than the npz's image directory)")
    p.add_argument("--allow-pickle", action="store_true", help="load object arrays (runs pickle)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    a = p.parse_args(argv)
    try:
        if os.path.exists(a.out) and not a.overwrite:
            raise ConvertError(f"{a.out} exists; pass --overwrite to replace it")
        doc = convert(a.npz, a.dataset, a.scale_units, a.allow_pickle, a.prefix)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sides = [max(s["scale"] if isinstance(s["scale"], list) else [s["scale"]]) * 200.0 for s in doc["samples"]]
    if a.scale_units == "px" and float(np.median(sides)) < 1.0:
        print("warning: the median box side is below 1 px: the npz probably holds units of 200 px "
              "already (rerun with --scale-units 200px)", file=sys.stderr)
    tmp = a.out + ".tmp"
    try:
        d = os.path.dirname(os.path.abspath(a.out))
        os.makedirs(d, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, a.out)
    except OSError as e:
        print(f"error: {a.out}: {e}", file=sys.stderr)
        return 2
    print(f"{a.out}: {summary(doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
