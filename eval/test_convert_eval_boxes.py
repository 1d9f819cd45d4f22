#!/usr/bin/env python3
"""Tests of eval/convert_eval_boxes.py on small synthetic npz files (standard library + numpy).

    python eval/test_convert_eval_boxes.py        # prints "N passed, 0 failed"
"""

import json
import os
import subprocess
import sys
import tempfile
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import convert_eval_boxes as cb  # noqa: E402


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(HERE, "convert_eval_boxes.py"), *args],
                          capture_output=True, text=True, cwd=cwd)


def freihand_like(tmp, n=4):
    """Like freihand_val.npz: bare file names, float32 centres, one pixel side per box, extra keys."""
    rng = np.random.default_rng(0)
    names = np.array([f"{i:08d}.jpg" for i in range(n)])
    center = rng.uniform(80, 140, (n, 2)).astype(np.float32)
    scale = rng.uniform(90, 160, n).astype(np.float32)
    return write_npz(os.path.join(tmp, "freihand_val.npz"), imgname=names, center=center, scale=scale,
                     hand_keypoints_3d=np.zeros((n, 21, 4), np.float32)), names, center, scale


# ---- tests ----------------------------------------------------------------------------------


def test_freihand_conversion_preserves_order_and_values():
    with tempfile.TemporaryDirectory() as tmp:
        npz, names, center, scale = freihand_like(tmp)
        out = os.path.join(tmp, "set.json")
        r = run_cli("--npz", npz, "--dataset", "freihand", "--out", out)
        assert r.returncode == 0, r.stderr
        assert "4 samples (0 left hands)" in r.stdout, r.stdout
        with open(out) as f:
            doc = json.load(f)
        assert doc["dataset"] == "freihand" and doc["source"] == "freihand_val.npz"
        assert set(doc) == {"dataset", "source", "samples"}
        assert [s["image"] for s in doc["samples"]] == list(names)
        for k, s in enumerate(doc["samples"]):
            assert set(s) == {"image", "center", "scale", "is_right"}
            # The exact float32 values, and the pixel side divided by 200.
            assert s["center"] == [float(center[k, 0]), float(center[k, 1])]
            assert s["scale"] == float(scale[k]) / 200.0
            assert s["is_right"] is True
        # An existing output is not replaced without --overwrite.
        r2 = run_cli("--npz", npz, "--dataset", "freihand", "--out", out)
        assert r2.returncode == 2 and "--overwrite" in r2.stderr, r2.stderr
        r3 = run_cli("--npz", npz, "--dataset", "freihand", "--out", out, "--overwrite",
                     "--scale-units", "200px", "--prefix", "evaluation/rgb/")
        assert r3.returncode == 0, r3.stderr
        with open(out) as f:
            doc = json.load(f)
        assert doc["samples"][1]["scale"] == float(scale[1])
        assert doc["samples"][1]["image"] == "evaluation/rgb/00000001.jpg"


def test_ho3d_like_two_sides_bytes_names_and_handedness():
    with tempfile.TemporaryDirectory() as tmp:
        names = np.array([b"SM1/rgb/0000.png", b"SM1/rgb/0001.png", b"MPM10/rgb/0123.png"])
        center = np.array([[320.0, 240.5], [300.25, 200.0], [10.0, 20.0]])
        scale = np.array([[150.0, 120.0], [100.0, 100.0], [80.0, 60.0]], np.float32)
        right = np.array([1.0, 0.0, 1.0], np.float32)
        npz = write_npz(os.path.join(tmp, "ho3d_val.npz"), imgname=names, center=center, scale=scale,
                        right=right, personid=np.zeros(3))
        doc = cb.convert(npz, "ho3d")
        assert doc["dataset"] == "ho3d"
        s = doc["samples"]
        assert [x["image"] for x in s] == ["SM1/rgb/0000.png", "SM1/rgb/0001.png", "MPM10/rgb/0123.png"]
        assert s[0]["scale"] == [0.75, 0.6] and s[0]["center"] == [320.0, 240.5]
        assert [x["is_right"] for x in s] == [True, False, True]
        assert "3 samples (1 left hands)" in cb.summary(doc)
        # [N, 1] scales become one number; integer centres are accepted.
        npz2 = write_npz(os.path.join(tmp, "b.npz"), imgname=np.array(["a.png"]), center=np.array([[5, 6]]),
                         scale=np.array([[40.0]]))
        d2 = cb.convert(npz2, "ho3d")
        assert d2["samples"][0]["scale"] == 0.2 and d2["samples"][0]["center"] == [5.0, 6.0]


def test_object_array_names_need_allow_pickle():
    with tempfile.TemporaryDirectory() as tmp:
        names = np.array(["a.jpg", "b.jpg"], dtype=object)
        npz = write_npz(os.path.join(tmp, "o.npz"), imgname=names, center=np.zeros((2, 2)) + 5,
                        scale=np.ones(2) * 50)
        try:
            cb.convert(npz, "freihand")
        except cb.ConvertError as e:
            assert "--allow-pickle" in str(e), str(e)
        else:
            raise AssertionError("loaded an object array without --allow-pickle")
        doc = cb.convert(npz, "freihand", allow_pickle=True)
        assert [s["image"] for s in doc["samples"]] == ["a.jpg", "b.jpg"]


def test_errors_are_one_line_exit_2():
    with tempfile.TemporaryDirectory() as tmp:
        n = 3
        good = dict(imgname=np.array(["a.jpg", "b.jpg", "c.jpg"]), center=np.ones((n, 2)) * 10,
                    scale=np.ones(n) * 100)
        cases = [
            ({k: v for k, v in good.items() if k != "center"}, "missing key `center`"),
            ({k: v for k, v in good.items() if k != "imgname"}, "missing key `imgname`"),
            ({k: v for k, v in good.items() if k != "scale"}, "missing key `scale`"),
            (dict(good, center=np.ones((2, 2))), "`center` has shape (2, 2), expected (3, 2)"),
            (dict(good, scale=np.ones(4)), "`scale` has shape (4,)"),
            (dict(good, scale=np.ones((n, 3))), "`scale` has shape (3, 3)"),
            (dict(good, scale=np.array([100.0, 0.0, 100.0])), "`scale` of sample 1"),
            (dict(good, center=np.array([[1.0, 2.0], [np.nan, 1.0], [3.0, 4.0]])), "non-finite value at index (1, 0)"),
            (dict(good, right=np.ones(2)), "`right` has 2 values, expected 3"),
            (dict(good, right=np.array([1.0, 0.5, 0.0])), "`right` of sample 1"),
            (dict(good, imgname=np.array(["a.jpg", "", "c.jpg"])), "imgname[1] is empty"),
            (dict(good, imgname=np.array(["a.jpg", "/abs/b.jpg", "c.jpg"])), "is absolute"),
            (dict(good, imgname=np.array([], dtype=str), center=np.zeros((0, 2)), scale=np.zeros(0)), "no samples"),
            (dict(good, center=np.array([["a", "b"]] * n)), "`center` is not numeric"),
        ]
        for k, (arrays, want) in enumerate(cases):
            npz = write_npz(os.path.join(tmp, f"bad{k}.npz"), **arrays)
            out = os.path.join(tmp, f"bad{k}.json")
            r = run_cli("--npz", npz, "--dataset", "freihand", "--out", out)
            lines = [l for l in r.stderr.splitlines() if l.strip()]
            assert r.returncode == 2, (want, r.returncode, r.stderr)
            assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], (want, r.stderr)
            assert not os.path.exists(out), want
        # Unknown dataset, missing file, not an npz.
        npz = write_npz(os.path.join(tmp, "good.npz"), **good)
        r = run_cli("--npz", npz, "--dataset", "coco", "--out", os.path.join(tmp, "x.json"))
        assert r.returncode == 2 and "unknown dataset 'coco'" in r.stderr, r.stderr
        r = run_cli("--npz", os.path.join(tmp, "nope.npz"), "--dataset", "ho3d", "--out", os.path.join(tmp, "x.json"))
        assert r.returncode == 2 and "nope.npz: no such file" in r.stderr, r.stderr
        junk = os.path.join(tmp, "junk.npz")
        with open(junk, "w") as f:
            f.write("not a zip")
        r = run_cli("--npz", junk, "--dataset", "ho3d", "--out", os.path.join(tmp, "x.json"))
        assert r.returncode == 2 and "not a readable .npz" in r.stderr, r.stderr


def test_suspicious_units_warn():
    with tempfile.TemporaryDirectory() as tmp:
        npz = write_npz(os.path.join(tmp, "u.npz"), imgname=np.array(["a.jpg"]), center=np.ones((1, 2)),
                        scale=np.array([0.6]))
        r = run_cli("--npz", npz, "--dataset", "freihand", "--out", os.path.join(tmp, "u.json"))
        assert r.returncode == 0 and "--scale-units 200px" in r.stderr, r.stderr


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
