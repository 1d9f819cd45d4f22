#!/usr/bin/env python3
"""Convert HaMeR-style webdataset tar shards into handcov's training-set directory.

    python tools/convert_webdataset.py --out DATA_DIR SHARD.tar [SHARD.tar ...]

Shard arguments may use webdataset's brace notation (`train-{000000..000099}.tar`).

Input: each tar sample is the group of consecutive members sharing a key (webdataset's rule:
the key is the path up to the first dot of the file name). A sample needs an image
(`<key>.jpg`, `.jpeg` or `.png`) and `<key>.data.pyd`: a pickled dict, or a list of dicts (one
per hand, HaMeR / HMR2), with numpy arrays:

    center [2], scale [1|2] (box side / 200), keypoints_2d [21, 3], keypoints_3d [21, 4],
    right / is_right,
    MANO either as hand_pose [48] (global orient + 45) + betas [10] with the flags
    has_hand_pose / has_betas (the global-orient flag is has_hand_pose), or as
    mano_params {global_orient, hand_pose, betas} + has_mano_params {...},
    extra_info {fitting_loss: {reprojection_loss}} (a 0-d object array or a dict), or
    extra_info.reprojection_loss / reprojection_loss.

Missing keypoints_3d become zeros with confidence 0, a 21x3 keypoints_3d gets confidence 1,
missing keypoints_2d become zeros (the loader's keypoint filter then drops the hand), missing
MANO leaves `mano` out (no MANO labels). A hand without a centre, a scale or its handedness,
with a wrong shape or a non-finite number is skipped with a warning; so is a sample without
an image or without data. A NaN reprojection loss is dropped here, as the reference's filter
(`loss < thresh`) drops it. Other members (masks, detection.npz) are ignored.

Output (see docs/training-data.md): DATA_DIR/annotations.jsonl, one JSON object per hand,
and DATA_DIR/images/<shard name>/<key>.<ext>, the image bytes copied unchanged. The filters of
SPEC 1.5 are NOT applied here; handcov applies them when it opens the directory.

Pickles can run code when loaded. By default only numpy arrays, scalars and dtypes (and
plain Python containers) are allowed; --trust-pickles uses plain `pickle.loads`.

Only the Python standard library and numpy are used.
"""

import argparse
import collections
import importlib
import io
import json
import math
import os
import pickle
import re
import sys
import tarfile

import numpy as np

NUM_KEYPOINTS = 21
IMAGE_EXTS = ("jpg", "jpeg", "png")

# ---- safe unpickling ------------------------------------------------------------------------

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} (use --trust-pickles if the shards are trusted)"
            )
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]
        return getattr(importlib.import_module(module), name)


def load_pyd(data, trust=False):
    if trust:
        return pickle.loads(data)
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


# ---- shard names and tar samples ------------------------------------------------------------

_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern):
    """webdataset's `{000..012}` ranges (zero padding kept); several ranges multiply."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo)
    out = []
    for i in range(int(lo), int(hi) + 1):
        out += expand_braces(pattern[: m.start()] + str(i).zfill(width) + pattern[m.end():])
    return out


_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def split_key(path):
    """webdataset's `base_plus_ext`: ('dir/0001', 'data.pyd') for 'dir/0001.data.pyd'."""
    m = _KEY_EXT.match(path)
    if not m:
        return None, None
    return m.group(1), m.group(2)


def tar_samples(path):
    """Yields (key, {ext: bytes}) for each group of consecutive members with one key."""
    key, files = None, {}
    with tarfile.open(path, mode="r|*") as tf:
        for member in tf:
            if not member.isfile():
                continue
            name = member.name
            while name.startswith("./"):
                name = name[2:]
            k, ext = split_key(name)
            if k is None:
                continue
            if k != key:
                if key is not None:
                    yield key, files
                key, files = k, {}
            f = tf.extractfile(member)
            files[ext.lower()] = f.read() if f is not None else b""
    if key is not None:
        yield key, files


# ---- one hand -------------------------------------------------------------------------------


class Skip(Exception):
    """A hand or sample that cannot be converted; the message says why."""


def _array(x, what):
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise Skip(f"`{what}` is not numeric ({e})")
    if not np.all(np.isfinite(a)):
        raise Skip(f"`{what}` holds a non-finite value")
    return a


def _flag(x):
    return bool(np.asarray(x, dtype=np.float64).reshape(-1)[0] > 0)


def _unwrap(x):
    """A 0-d object array (how numpy pickles a dict inside an array) → the object."""
    if isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        return x.reshape(-1)[0]
    return x


def _floats(a):
    return [float(v) for v in np.asarray(a).reshape(-1)]


def _keypoints(d, name, cols, warnings):
    if name not in d or d[name] is None:
        warnings[f"no {name} (written as zeros, confidence 0)"] += 1
        return np.zeros((NUM_KEYPOINTS, cols))
    a = _array(d[name], name)
    if a.ndim != 2 or a.shape[0] != NUM_KEYPOINTS:
        raise Skip(f"`{name}` has shape {a.shape}, expected ({NUM_KEYPOINTS}, {cols})")
    if name == "keypoints_3d" and a.shape[1] == 3:
        warnings["keypoints_3d without confidence (confidence 1 added)"] += 1
        a = np.concatenate([a, np.ones((NUM_KEYPOINTS, 1))], axis=1)
    if a.shape[1] != cols:
        raise Skip(f"`{name}` has shape {a.shape}, expected ({NUM_KEYPOINTS}, {cols})")
    return a


def _mano(d):
    """(mano dict, has_mano dict) or (None, None)."""
    if "mano_params" in d and d["mano_params"] is not None:
        mp = _unwrap(d["mano_params"])
        hp = _unwrap(d.get("has_mano_params")) or {}
        try:
            params = {k: _array(mp[k], f"mano_params.{k}").reshape(-1) for k in ("global_orient", "hand_pose", "betas")}
        except KeyError as e:
            raise Skip(f"`mano_params` has no {e}")
        flags = {k: _flag(hp[k]) if k in hp else True for k in ("global_orient", "hand_pose", "betas")}
    elif "hand_pose" in d and d["hand_pose"] is not None:
        pose = _array(d["hand_pose"], "hand_pose").reshape(-1)
        if pose.size == 48:
            go, hp = pose[:3], pose[3:]
        elif pose.size == 45 and "global_orient" in d:
            go, hp = _array(d["global_orient"], "global_orient").reshape(-1), pose
        else:
            raise Skip(f"`hand_pose` has {pose.size} values, expected 48 (or 45 with `global_orient`)")
        has_pose = _flag(d["has_hand_pose"]) if d.get("has_hand_pose") is not None else True
        if d.get("betas") is None:
            betas, has_betas = np.zeros(10), False
        else:
            betas = _array(d["betas"], "betas").reshape(-1)
            has_betas = _flag(d["has_betas"]) if d.get("has_betas") is not None else True
        params = {"global_orient": go, "hand_pose": hp, "betas": betas}
        flags = {"global_orient": has_pose, "hand_pose": has_pose, "betas": has_betas}
    else:
        return None, None
    for k, n in (("global_orient", 3), ("hand_pose", 45), ("betas", 10)):
        if params[k].size != n:
            raise Skip(f"MANO `{k}` has {params[k].size} values, expected {n}")
    return {k: _floats(v) for k, v in params.items()}, flags


def _reprojection_loss(d):
    """The fitting's reprojection loss, or None; NaN raises Skip (the reference drops it)."""
    candidates = []
    extra = _unwrap(d.get("extra_info"))
    if isinstance(extra, dict):
        fl = _unwrap(extra.get("fitting_loss"))
        if isinstance(fl, dict) and fl.get("reprojection_loss") is not None:
            candidates.append(fl["reprojection_loss"])
        if extra.get("reprojection_loss") is not None:
            candidates.append(extra["reprojection_loss"])
    if d.get("reprojection_loss") is not None:
        candidates.append(d["reprojection_loss"])
    if not candidates:
        return None
    v = float(np.asarray(candidates[0], dtype=np.float64).reshape(-1)[0])
    if math.isnan(v):
        raise Skip("reprojection_loss is NaN (the reference's filter drops it)")
    return v if math.isfinite(v) else 1e300


def convert_hand(d, image_rel, key, warnings):
    """One pickled hand dict → one annotations.jsonl object (raises Skip)."""
    d = _unwrap(d)
    if not isinstance(d, dict):
        raise Skip(f"hand record is a {type(d).__name__}, not a dict")
    for k in ("center", "scale"):
        if k not in d or d[k] is None:
            raise Skip(f"no `{k}`")
    center = _array(d["center"], "center").reshape(-1)
    if center.size != 2:
        raise Skip(f"`center` has {center.size} values, expected 2")
    scale = _array(d["scale"], "scale").reshape(-1)
    if scale.size not in (1, 2) or not np.all(scale > 0):
        raise Skip(f"`scale` {scale.tolist()} is not one or two positive values")
    right = d.get("right", d.get("is_right"))
    if right is None:
        raise Skip("no handedness (`right` / `is_right`)")
    out = {
        "image": image_rel,
        "center": _floats(center),
        "scale": float(scale[0]) if scale.size == 1 else _floats(scale),
        "is_right": _flag(right),
        "keypoints_2d": _keypoints(d, "keypoints_2d", 3, warnings).tolist(),
        "keypoints_3d": _keypoints(d, "keypoints_3d", 4, warnings).tolist(),
    }
    mano, has_mano = _mano(d)
    if mano is not None:
        out["mano"] = mano
        out["has_mano"] = has_mano
    r = _reprojection_loss(d)
    if r is not None:
        out["reprojection_loss"] = r
    out["key"] = key
    return out


# ---- driver ---------------------------------------------------------------------------------


def _safe_rel(key):
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise Skip(f"key {key!r} is not a safe relative path")
    return key


def convert(shards, out_dir, overwrite=False, trust_pickles=False, log=sys.stderr):
    """Converts `shards` into `out_dir`; returns a dict of counts."""
    ann_path = os.path.join(out_dir, "annotations.jsonl")
    if os.path.exists(ann_path) and not overwrite:
        raise SystemExit(f"error: {ann_path} exists; pass --overwrite to replace it")
    os.makedirs(out_dir, exist_ok=True)
    counts = collections.Counter()
    warnings = collections.Counter()
    used_stems = set()
    tmp_path = ann_path + ".tmp"
    with open(tmp_path, "w") as ann:
        for shard in shards:
            stem = os.path.basename(shard)
            for suffix in (".tar.gz", ".tgz", ".tar"):
                if stem.endswith(suffix):
                    stem = stem[: -len(suffix)]
                    break
            base, i = stem, 1
            while stem in used_stems:
                stem, i = f"{base}-{i}", i + 1
            used_stems.add(stem)
            counts["shards"] += 1
            for key, files in tar_samples(shard):
                counts["samples"] += 1
                where = f"{shard}: sample {key}"
                try:
                    rel_key = _safe_rel(key)
                    ext = next((e for e in IMAGE_EXTS if e in files), None)
                    if ext is None:
                        raise Skip("no image (.jpg/.jpeg/.png)")
                    if "data.pyd" not in files:
                        raise Skip("no data.pyd")
                    try:
                        data = load_pyd(files["data.pyd"], trust_pickles)
                    except Exception as e:  # a corrupt or refused pickle skips the sample
                        raise Skip(f"data.pyd: {e}")
                except Skip as e:
                    print(f"warning: {where}: skipped: {e}", file=log)
                    counts["samples skipped"] += 1
                    continue
                hands = data if isinstance(data, (list, tuple)) else [data]
                image_rel = f"images/{stem}/{rel_key}.{ext}"
                lines = []
                for h, d in enumerate(hands):
                    hkey = f"{stem}/{key}" + (f"#{h}" if len(hands) > 1 else "")
                    try:
                        lines.append(convert_hand(d, image_rel, hkey, warnings))
                    except Skip as e:
                        print(f"warning: {where}, hand {h}: skipped: {e}", file=log)
                        counts["hands skipped"] += 1
                if not lines:
                    continue
                img_path = os.path.join(out_dir, *image_rel.split("/"))
                os.makedirs(os.path.dirname(img_path), exist_ok=True)
                with open(img_path, "wb") as f:
                    f.write(files[ext])
                counts["images"] += 1
                for obj in lines:
                    ann.write(json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n")
                    counts["hands"] += 1
    os.replace(tmp_path, ann_path)
    for w, n in sorted(warnings.items()):
        print(f"note: {n} hand(s): {w}", file=log)
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory (the training-set directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing annotations.jsonl")
    p.add_argument("--trust-pickles", action="store_true", help="load data.pyd with plain pickle")
    p.add_argument("shards", nargs="+", help="tar shards (brace ranges allowed)")
    a = p.parse_args(argv)
    shards = [s for pat in a.shards for s in expand_braces(pat)]
    for s in shards:
        if not os.path.isfile(s):
            raise SystemExit(f"error: shard {s} does not exist")
    c = convert(shards, a.out, a.overwrite, a.trust_pickles)
    print(
        f"{c['hands']} hands from {c['images']} images ({c['samples']} samples in {c['shards']} shards; "
        f"{c['samples skipped']} samples and {c['hands skipped']} hands skipped) -> {a.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
