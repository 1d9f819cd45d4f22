#!/usr/bin/env python3
"""Tests of tools/convert_webdataset.py on tiny synthetic tar shards (standard library + numpy).

    python tools/test_convert_webdataset.py        # prints "N passed, 0 failed"
"""

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import tempfile
import traceback
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import convert_webdataset as cw  # noqa: E402

ALLOWED_FIELDS = {"image", "center", "scale", "is_right", "keypoints_2d", "keypoints_3d", "mano",
                  "has_mano", "reprojection_loss", "key"}


def png_bytes(w, h, seed):
    """A valid 8-bit RGB PNG written with zlib."""
    rows = b"".join(
        b"\x00" + bytes(((x * 7 + y * 13 + seed * 31 + c * 50) % 256) for x in range(w) for c in range(3))
        for y in range(h)
    )

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def kp2d(seed):
    rng = np.random.default_rng(seed)
    k = np.concatenate([rng.uniform(5, 40, (21, 2)), rng.uniform(0, 1, (21, 1))], axis=1)
    return k.astype(np.float32)


def kp3d(seed):
    rng = np.random.default_rng(seed + 100)
    return np.concatenate([rng.normal(0, 0.05, (21, 3)), np.ones((21, 1))], axis=1).astype(np.float32)


def hamer_hand(seed, right, has_betas=1.0, reproj=None):
    """A hand record as in HaMeR's tars (hand_pose 48, flags as float arrays)."""
    rng = np.random.default_rng(seed)
    d = {
        "center": np.array([24.5, 20.0], dtype=np.float32),
        "scale": np.array([0.15, 0.2], dtype=np.float32),
        "keypoints_2d": kp2d(seed),
        "keypoints_3d": kp3d(seed),
        "hand_pose": rng.normal(0, 0.3, 48).astype(np.float32),
        "betas": rng.normal(0, 1, 10).astype(np.float32),
        "right": np.array(float(right)),
        "has_hand_pose": np.array(1.0),
        "has_betas": np.array(has_betas),
    }
    if reproj is not None:
        d["extra_info"] = {"fitting_loss": np.array({"reprojection_loss": np.float64(reproj)}, dtype=object),
                           "detection_npz_idx": 0}
    return d


def write_tar(path, samples):
    """samples: list of (member name, bytes)."""
    with tarfile.open(path, "w") as tf:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def build_shards(tmp):
    img_a, img_b, img_e = png_bytes(48, 40, 1), png_bytes(50, 30, 2), png_bytes(32, 32, 3)
    hands_a = [hamer_hand(1, right=True, reproj=123.5), hamer_hand(2, right=False, has_betas=0.0)]
    # A dict (not a list) in the mano_params layout, scalar scale, top-level reprojection loss,
    # keypoints_3d without confidence, keypoints_2d as float64.
    hand_b = {
        "center": np.array([25.0, 15.0]),
        "scale": np.float32(0.125),
        "keypoints_2d": kp2d(3).astype(np.float64),
        "keypoints_3d": kp3d(3)[:, :3],
        "mano_params": {"global_orient": np.array([0.1, 0.2, 0.3], np.float32),
                        "hand_pose": np.zeros(45, np.float32), "betas": np.full(10, 0.5, np.float32)},
        "has_mano_params": {"global_orient": np.array(1.0), "hand_pose": np.array(0.0), "betas": np.array(1.0)},
        "is_right": True,
        "reprojection_loss": 40000.0,
    }
    # No MANO, no keypoints_3d.
    hand_e = {"center": [16.0, 16.0], "scale": [0.1], "keypoints_2d": kp2d(5), "right": 1}
    shard0 = os.path.join(tmp, "train-000000.tar")
    write_tar(shard0, [
        ("./000001.jpg", img_a), ("./000001.data.pyd", pickle.dumps(hands_a)),
        ("./000001.mask.png", b"ignored"),
        ("000002.png", img_b), ("000002.data.pyd", pickle.dumps(hand_b, protocol=5)),
        ("000003.jpg", img_a), ("000003.data.pyd", pickle.dumps([{"scale": 0.1, "right": 1}])),  # no centre
        ("000004.jpg", img_a),  # no data.pyd
    ])
    shard1 = os.path.join(tmp, "train-000001.tar")
    nan_hand = hamer_hand(7, right=True, reproj=float("nan"))
    write_tar(shard1, [
        ("sub/dir/000005.jpg", img_e), ("sub/dir/000005.data.pyd", pickle.dumps([hand_e, nan_hand])),
        ("000006.jpg", img_e), ("000006.data.pyd", pickle.dumps({"center": os.getcwd})),  # refused global
        ("000007.jpg", img_e), ("000007.data.pyd", b"not a pickle"),
        ("000008.jpg", img_e), ("000008.data.pyd", pickle.dumps(dict(hamer_hand(8, True), hand_pose=np.zeros(30)))),
    ])
    return [shard0, shard1], {"a": img_a, "b": img_b, "e": img_e}, hands_a, hand_b, hand_e


def f32list(a):
    return [float(v) for v in np.asarray(a, dtype=np.float32).reshape(-1)]


def run_convert(tmp, out, shards, *extra):
    return subprocess.run([sys.executable, os.path.join(HERE, "convert_webdataset.py"), "--out", out, *extra, *shards],
                          capture_output=True, text=True, cwd=tmp)


def read_lines(out):
    with open(os.path.join(out, "annotations.jsonl")) as f:
        return [json.loads(line) for line in f]


# ---- tests ----------------------------------------------------------------------------------


def test_brace_expansion_and_keys():
    assert cw.expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert cw.expand_braces("s{1..2}-{08..09}") == ["s1-08", "s1-09", "s2-08", "s2-09"]
    assert cw.expand_braces("plain.tar") == ["plain.tar"]
    assert cw.split_key("dir/0001.data.pyd") == ("dir/0001", "data.pyd")
    assert cw.split_key("0001.jpg") == ("0001", "jpg")
    assert cw.split_key("noext") == (None, None)


def test_full_conversion():
    with tempfile.TemporaryDirectory() as tmp:
        shards, imgs, hands_a, hand_b, hand_e = build_shards(tmp)
        out = os.path.join(tmp, "data")
        r = run_convert(tmp, out, [os.path.join(tmp, "train-{000000..000001}.tar")])
        assert r.returncode == 0, r.stderr
        assert "4 hands from 3 images (8 samples in 2 shards; 3 samples and 3 hands skipped)" in r.stdout, r.stdout
        for why in ["sample 000003, hand 0: skipped: no `center`", "sample 000004: skipped: no data.pyd",
                    "refusing to load global", "sample 000007: skipped: data.pyd",
                    "reprojection_loss is NaN", "`hand_pose` has 30 values"]:
            assert why in r.stderr, (why, r.stderr)
        lines = read_lines(out)
        assert [l["key"] for l in lines] == ["train-000000/000001#0", "train-000000/000001#1",
                                             "train-000000/000002", "train-000001/sub/dir/000005#0"]
        for l in lines:
            assert set(l) <= ALLOWED_FIELDS, set(l) - ALLOWED_FIELDS
            assert len(l["keypoints_2d"]) == 21 and all(len(k) == 3 for k in l["keypoints_2d"])
            assert len(l["keypoints_3d"]) == 21 and all(len(k) == 4 for k in l["keypoints_3d"])
            with open(os.path.join(out, l["image"]), "rb") as f:
                data = f.read()
            assert data == {"000001": imgs["a"], "000002": imgs["b"]}.get(l["key"].split("/")[-1].split("#")[0], imgs["e"])

        a0, a1, b, e = lines
        # HaMeR layout: hand_pose 48 split into global orient + 45; float32 values exactly.
        h = hands_a[0]
        assert a0["image"] == "images/train-000000/000001.jpg" and a1["image"] == a0["image"]
        assert a0["center"] == f32list(h["center"]) and a0["scale"] == f32list(h["scale"])
        assert a0["is_right"] is True and a1["is_right"] is False
        assert sum(a0["keypoints_2d"], []) == f32list(h["keypoints_2d"])
        assert sum(a0["keypoints_3d"], []) == f32list(h["keypoints_3d"])
        assert a0["mano"]["global_orient"] == f32list(h["hand_pose"][:3])
        assert a0["mano"]["hand_pose"] == f32list(h["hand_pose"][3:])
        assert a0["mano"]["betas"] == f32list(h["betas"])
        assert a0["has_mano"] == {"global_orient": True, "hand_pose": True, "betas": True}
        assert a0["reprojection_loss"] == 123.5 and "reprojection_loss" not in a1
        assert a1["has_mano"] == {"global_orient": True, "hand_pose": True, "betas": False}
        # mano_params layout, dict record, scalar scale, keypoints_3d given confidence 1.
        assert b["image"] == "images/train-000000/000002.png"
        assert b["scale"] == float(np.float32(0.125)) and b["center"] == [25.0, 15.0]
        assert b["mano"]["global_orient"] == f32list([0.1, 0.2, 0.3]) and b["mano"]["betas"] == [0.5] * 10
        assert b["has_mano"] == {"global_orient": True, "hand_pose": False, "betas": True}
        assert b["reprojection_loss"] == 40000.0
        assert [k[3] for k in b["keypoints_3d"]] == [1.0] * 21
        assert sum(b["keypoints_2d"], []) == [float(v) for v in hand_b["keypoints_2d"].reshape(-1)]
        # No MANO and no 3D keypoints.
        assert e["image"] == "images/train-000001/sub/dir/000005.jpg"
        assert "mano" not in e and "has_mano" not in e
        assert e["keypoints_3d"] == [[0.0] * 4] * 21 and e["scale"] == 0.1
        assert "no keypoints_3d" in r.stderr

        # An existing annotations.jsonl is not replaced without --overwrite.
        r2 = run_convert(tmp, out, shards)
        assert r2.returncode != 0 and "--overwrite" in r2.stderr, r2.stderr
        r3 = run_convert(tmp, out, shards[:1], "--overwrite")
        assert r3.returncode == 0 and len(read_lines(out)) == 3, r3.stderr


def test_restricted_unpickler():
    arr = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.5), "o": np.array({"x": 1}, dtype=object)}
    for proto in (2, 4, 5):
        got = cw.load_pyd(pickle.dumps(arr, protocol=proto))
        assert np.array_equal(got["a"], arr["a"]) and got["a"].dtype == np.float32
        assert got["s"] == 2.5 and got["o"].item() == {"x": 1}
    for bad in (pickle.dumps(os.getcwd), pickle.dumps(subprocess.Popen)):
        try:
            cw.load_pyd(bad)
        except pickle.UnpicklingError as e:
            assert "refusing" in str(e)
        else:
            raise AssertionError("loaded a disallowed global")
    assert cw.load_pyd(pickle.dumps(os.getcwd), trust=True) is os.getcwd


def test_convert_hand_errors():
    w = cw.collections.Counter()
    base = hamer_hand(1, True)
    cases = [
        (dict(base, center=np.array([1.0, np.nan])), "non-finite"),
        (dict(base, center=np.zeros(3)), "`center` has 3 values"),
        (dict(base, scale=np.array([0.0])), "positive"),
        (dict(base, keypoints_2d=np.zeros((20, 3))), "`keypoints_2d` has shape (20, 3)"),
        (dict(base, keypoints_3d=np.zeros((21, 5))), "`keypoints_3d` has shape (21, 5)"),
        (dict(base, betas=np.zeros(9)), "`betas` has 9 values"),
        ({k: v for k, v in base.items() if k != "right"}, "handedness"),
        ([1, 2], "not a dict"),
    ]
    for d, want in cases:
        try:
            cw.convert_hand(d, "x.jpg", "k", w)
        except cw.Skip as e:
            assert want in str(e), (want, str(e))
        else:
            raise AssertionError(f"accepted a hand that should fail with {want!r}")
    # Infinite reprojection loss: kept as a huge value (dropped by the loader, as by the reference).
    d = dict(base, extra_info={"fitting_loss": {"reprojection_loss": float("inf")}})
    assert cw.convert_hand(d, "x.jpg", "k", w)["reprojection_loss"] >= 31000
    d = dict(base, extra_info={"reprojection_loss": np.array([7.0])})
    assert cw.convert_hand(d, "x.jpg", "k", w)["reprojection_loss"] == 7.0
    # Without betas: zeros, flag false; hand-pose flag from has_hand_pose.
    d = dict(base, betas=None, has_hand_pose=np.array(0.0))
    o = cw.convert_hand(d, "x.jpg", "k", w)
    assert o["mano"]["betas"] == [0.0] * 10
    assert o["has_mano"] == {"global_orient": False, "hand_pose": False, "betas": False}


def main():
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_") and callable(f)]
    passed = failed = 0
    for name, f in tests:
        try:
            f()
            passed += 1
        except Exception:
            failed += 1
            print(f"FAILED {name}")
            traceback.print_exc()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
