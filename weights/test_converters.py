#!/usr/bin/env python3
"""Self-contained tests for weights/convert_mano.py and weights/convert_ckpt.py.

    python3 weights/test_converters.py

No pytest needed.  Prints one line per test and `N passed, M failed` at the end; exits
non-zero on any failure.  Everything is built in a temporary directory:

  (a) fake MANO pickles whose arrays are wrapped in fake `chumpy.ch.Ch` objects and whose
      J_regressor is a fake `scipy.sparse` matrix.  The fake classes are registered in
      sys.modules only while pickling; the converters then run in subprocesses where
      `chumpy` and `scipy` cannot be imported at all.
  (b) fake Lightning checkpoints / bare state_dicts, converted with and without --mano.
  (c) every error path: exit code 2 and exactly one stderr line starting with `error:`.
"""

import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
import traceback
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONVERT_MANO = os.path.join(HERE, "convert_mano.py")
CONVERT_CKPT = os.path.join(HERE, "convert_ckpt.py")

NV, NF, NJ = 778, 1538, 16
PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
JOINT_MAP = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]
TIPS = [744, 320, 443, 554, 671]
MANO_KEYS = {"mano.v_template", "mano.shapedirs", "mano.posedirs", "mano.J_regressor",
             "mano.lbs_weights", "mano.parents", "mano.faces_tensor",
             "mano.extra_joints_idxs", "mano.joint_map"}

# ----------------------------------------------------------------------------------------
# tiny test harness
# ----------------------------------------------------------------------------------------

_TESTS = []


def test(fn):
    _TESTS.append(fn)
    return fn


class Failure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def check_eq(a, b, msg):
    if a != b:
        raise Failure("%s: %r != %r" % (msg, a, b))


# ----------------------------------------------------------------------------------------
# running the converters in a subprocess without chumpy / scipy
# ----------------------------------------------------------------------------------------

_RUNNER = r"""
import runpy, sys
for m in ("chumpy", "scipy"):
    sys.modules[m] = None          # any `import chumpy` / `import scipy...` now fails
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, __import__("os").path.dirname(script))
runpy.run_path(script, run_name="__main__")
"""


def run(script, *args):
    p = subprocess.run([sys.executable, "-c", _RUNNER, script] + [str(a) for a in args],
                       capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def check_ok(res, what):
    rc, out, err = res
    check(rc == 0, "%s: exit code %d, stderr: %s" % (what, rc, err.strip()[-2000:]))
    check("Traceback" not in err, "%s: traceback on stderr: %s" % (what, err))


def check_error(res, what, expect=None):
    rc, out, err = res
    check(rc == 2, "%s: expected exit code 2, got %d (stdout %r, stderr %r)"
          % (what, rc, out[-500:], err[-1500:]))
    lines = [l for l in err.splitlines() if l.strip()]
    check(len(lines) == 1, "%s: expected exactly one stderr line, got %d: %r"
          % (what, len(lines), err))
    check(lines[0].startswith("error: "), "%s: stderr line does not start with "
          "'error: ': %r" % (what, lines[0]))
    if expect is not None:
        check(expect.lower() in lines[0].lower(), "%s: %r not in %r" % (what, expect, lines[0]))


@contextlib.contextmanager
def blocked_modules(*names):
    saved = {n: sys.modules.get(n, "<absent>") for n in names}
    for n in names:
        sys.modules[n] = None
    try:
        yield
    finally:
        for n, v in saved.items():
            if v == "<absent>":
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = v


# ----------------------------------------------------------------------------------------
# (a) fake MANO pickle
# ----------------------------------------------------------------------------------------

class FakeCh:
    """Pickles like chumpy's Ch: state dict with the value under 'x' plus bookkeeping."""

    def __init__(self, x):
        self.x = x

    def __getstate__(self):
        return {"x": self.x, "_dirty_vars": set(), "_depends_on_deps": {},
                "_itr": None, "label": None}


class FakeSparse:
    """Pickles like a scipy.sparse csc/csr matrix (plain object state)."""

    def __init__(self, dense, fmt, shape_key):
        self.fmt, self.shape_key = fmt, shape_key
        m = dense if fmt == "csc" else dense.T
        # compressed along columns of m
        indptr, indices, data = [0], [], []
        for j in range(m.shape[1]):
            rows = np.nonzero(m[:, j])[0]
            indices.extend(rows.tolist())
            data.extend(m[rows, j].tolist())
            indptr.append(len(indices))
        self.data = np.asarray(data, dtype=np.float64)
        self.indices = np.asarray(indices, dtype=np.int32)
        self.indptr = np.asarray(indptr, dtype=np.int32)
        self.shape = dense.shape

    def __getstate__(self):
        return {"data": self.data, "indices": self.indices, "indptr": self.indptr,
                self.shape_key: tuple(self.shape), "maxprint": 50, "format": self.fmt}


@contextlib.contextmanager
def fake_pickle_modules():
    """Register chumpy.ch.Ch, scipy.sparse.csc.csc_matrix, scipy.sparse.csr.csr_matrix
    (Python-2-era module paths) for the duration of pickling only."""
    names = ["chumpy", "chumpy.ch", "scipy", "scipy.sparse", "scipy.sparse.csc",
             "scipy.sparse.csr"]
    saved = {n: sys.modules.get(n, "<absent>") for n in names}
    mods = {n: types.ModuleType(n) for n in names}
    ch = type("Ch", (FakeCh,), {"__module__": "chumpy.ch"})
    csc = type("csc_matrix", (FakeSparse,), {"__module__": "scipy.sparse.csc"})
    csr = type("csr_matrix", (FakeSparse,), {"__module__": "scipy.sparse.csr"})
    mods["chumpy.ch"].Ch = ch
    mods["chumpy"].ch = mods["chumpy.ch"]
    mods["scipy.sparse.csc"].csc_matrix = csc
    mods["scipy.sparse.csr"].csr_matrix = csr
    mods["scipy"].sparse = mods["scipy.sparse"]
    sys.modules.update(mods)
    try:
        yield ch, csc, csr
    finally:
        for n, v in saved.items():
            if v == "<absent>":
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = v


def _py2_reconstruct(*args):  # only its name is pickled
    raise RuntimeError("never called")


class Py2ArrayPickler(pickle.Pickler):
    """Writes ndarrays the way Python-2 numpy did: numpy.core.multiarray._reconstruct and
    the raw data as a (latin-1) text string."""

    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            a = np.ascontiguousarray(obj)
            return (_py2_reconstruct, (np.ndarray, (0,), "b"),
                    (1, a.shape, a.dtype, False, a.tobytes().decode("latin1")))
        return NotImplemented


def random_mano(rng, n_betas=10):
    J = np.zeros((NJ, NV))
    for j in range(NJ):
        idx = rng.choice(NV, size=20, replace=False)
        w = rng.random(20)
        J[j, idx] = w / w.sum()
    w = rng.random((NV, NJ))
    kt = np.stack([np.array([4294967295] + PARENTS[1:], dtype=np.int64),
                   np.arange(NJ, dtype=np.int64)])
    return {
        "v_template": rng.normal(size=(NV, 3)) * 0.05,
        "shapedirs": rng.normal(size=(NV, 3, n_betas)) * 1e-3,
        "posedirs": rng.normal(size=(NV, 3, 135)) * 1e-3,
        "J_regressor": J,
        "weights": w / w.sum(1, keepdims=True),
        "kintree_table": kt,
        "f": rng.integers(0, NV, size=(NF, 3)).astype(np.uint32),
        "J": rng.normal(size=(NJ, 3)),
        "hands_components": rng.normal(size=(45, 45)),
        "hands_mean": rng.normal(size=45),
        "hands_coeffs": rng.normal(size=(1554, 45)),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def write_fake_mano(path, raw, protocol=2, sparse="csc", shape_key="_shape", py2=False,
                    wrap=True, transform=None):
    """raw: dict of plain arrays.  Wraps v_template/shapedirs in Ch, posedirs in a Ch whose
    'x' is another Ch, J_regressor in a sparse matrix; `transform(d, Ch)` may edit."""
    with fake_pickle_modules() as (Ch, Csc, Csr):
        d = dict(raw)
        if wrap:
            d["v_template"] = Ch(raw["v_template"])
            d["shapedirs"] = Ch(raw["shapedirs"])
            d["posedirs"] = Ch(Ch(raw["posedirs"]))          # nested chumpy object
            d["J"] = Ch(raw["J"])
            cls = Csc if sparse == "csc" else Csr
            d["J_regressor"] = cls(raw["J_regressor"], sparse, shape_key)
        if transform is not None:
            transform(d, Ch)
        with open(path, "wb") as fh:
            if py2:
                fake = types.ModuleType("numpy.core.multiarray")
                fake._reconstruct = _py2_reconstruct
                _py2_reconstruct.__module__ = "numpy.core.multiarray"
                _py2_reconstruct.__qualname__ = "_reconstruct"
                saved = sys.modules.get("numpy.core.multiarray", "<absent>")
                sys.modules["numpy.core.multiarray"] = fake
                try:
                    Py2ArrayPickler(fh, protocol=protocol).dump(d)
                finally:
                    if saved == "<absent>":
                        sys.modules.pop("numpy.core.multiarray", None)
                    else:
                        sys.modules["numpy.core.multiarray"] = saved
            else:
                pickle.dump(d, fh, protocol=protocol)
    # the fake classes are gone again: prove nothing can import them now
    check("chumpy" not in sys.modules, "fake chumpy module left registered")


def expected_mano(raw):
    return {
        "mano.v_template": raw["v_template"].astype(np.float32),
        "mano.shapedirs": raw["shapedirs"][:, :, :10].astype(np.float32),
        "mano.posedirs": raw["posedirs"].reshape(-1, 135).T.astype(np.float32),
        "mano.J_regressor": raw["J_regressor"].astype(np.float32),
        "mano.lbs_weights": raw["weights"].astype(np.float32),
        "mano.parents": np.array(PARENTS, dtype=np.int64),
        "mano.faces_tensor": raw["f"].astype(np.int64),
        "mano.extra_joints_idxs": np.array(TIPS, dtype=np.int64),
        "mano.joint_map": np.array(JOINT_MAP, dtype=np.int64),
    }


def check_mano_tensors(got, raw, what):
    exp = expected_mano(raw)
    check_eq(set(got.keys()), MANO_KEYS, "%s: keys" % what)
    shapes = {"mano.v_template": (NV, 3), "mano.shapedirs": (NV, 3, 10),
              "mano.posedirs": (135, NV * 3), "mano.J_regressor": (NJ, NV),
              "mano.lbs_weights": (NV, NJ), "mano.parents": (NJ,),
              "mano.faces_tensor": (NF, 3), "mano.extra_joints_idxs": (5,),
              "mano.joint_map": (21,)}
    for k, e in exp.items():
        g = np.asarray(got[k])
        check_eq(tuple(g.shape), shapes[k], "%s: shape of %s" % (what, k))
        check_eq(g.dtype, e.dtype, "%s: dtype of %s" % (what, k))
        check(np.array_equal(g, e), "%s: values of %s differ" % (what, k))
    # posedirs transpose, element-wise: out[p, 3v+c] == pkl[v, c, p]
    pd = np.asarray(got["mano.posedirs"])
    rng = np.random.default_rng(7)
    for _ in range(200):
        v, c, p = rng.integers(NV), rng.integers(3), rng.integers(135)
        check(pd[p, 3 * v + c] == np.float32(raw["posedirs"][v, c, p]),
              "%s: posedirs[%d, 3*%d+%d] != pkl posedirs[%d,%d,%d]" % (what, p, v, c, v, c, p))
    check_eq(int(got["mano.parents"][0]), -1, "%s: root parent" % what)
    check_eq(np.asarray(got["mano.parents"]).tolist(), PARENTS, "%s: parents" % what)
    # J_regressor densified from the sparse pattern: same nonzero pattern
    check(np.array_equal(np.asarray(got["mano.J_regressor"]) != 0, raw["J_regressor"] != 0),
          "%s: J_regressor sparsity pattern" % what)


def load_st_numpy(path):
    from safetensors.numpy import load_file
    return load_file(path)


def st_metadata(path):
    from safetensors import safe_open
    with safe_open(path, framework="np") as f:
        return f.metadata() or {}


class Env:
    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="handcov_conv_test_")
        self.dir = self.tmp.name
        self.rng = np.random.default_rng(1234)
        self.raw = random_mano(self.rng)
        self.pkl = self.p("MANO_RIGHT.pkl")
        write_fake_mano(self.pkl, self.raw)

    def p(self, name):
        return os.path.join(self.dir, name)


ENV = None


# ---------------------------- (a) MANO tests ---------------------------------------------

@test
def mano_pickle_really_needs_chumpy_and_scipy():
    # sanity of the fixture: a plain unpickler (no stand-ins) must fail on our file
    with blocked_modules("chumpy", "scipy"):
        try:
            with open(ENV.pkl, "rb") as fh:
                pickle.load(fh, encoding="latin1")
        except ImportError:
            return
    raise Failure("fake MANO pickle loaded without chumpy: the fixture is not realistic")


@test
def mano_cli_csc_protocol2():
    out = ENV.p("mano.safetensors")
    res = run(CONVERT_MANO, "--pkl", ENV.pkl, "--out", out)
    check_ok(res, "convert_mano")
    got = load_st_numpy(out)
    check_mano_tensors(got, ENV.raw, "convert_mano csc")
    md = st_metadata(out)
    check_eq(md.get("source"), "MANO_RIGHT.pkl", "metadata source")
    check_eq(md.get("format"), "pt", "metadata format")


@test
def mano_in_process_without_chumpy_scipy():
    sys.path.insert(0, HERE)
    try:
        with blocked_modules("chumpy", "scipy"):
            import convert_mano
            got = convert_mano.load_mano_pkl(ENV.pkl)
    finally:
        sys.path.remove(HERE)
    for k, v in got.items():
        check(isinstance(v, np.ndarray), "load_mano_pkl: %s is not an ndarray" % k)
        check(v.flags["C_CONTIGUOUS"], "load_mano_pkl: %s not contiguous" % k)
    check_mano_tensors(got, ENV.raw, "load_mano_pkl")


@test
def mano_csr_shape_key_protocol0_more_betas():
    # other forms: csr matrix with 'shape' (not '_shape'), protocol 0 (copy_reg
    # _reconstructor path), 16 shape components of which the first 10 are kept
    raw = random_mano(np.random.default_rng(99), n_betas=16)
    pkl = ENV.p("mano_csr.pkl")
    write_fake_mano(pkl, raw, protocol=0, sparse="csr", shape_key="shape")
    with open(pkl, "rb") as fh:
        check(b"copy_reg" in fh.read(), "protocol-0 fixture should use copy_reg._reconstructor")
    out = ENV.p("mano_csr.safetensors")
    check_ok(run(CONVERT_MANO, "--pkl", pkl, "--out", out), "convert_mano csr")
    check_mano_tensors(load_st_numpy(out), raw, "convert_mano csr/proto0")


@test
def mano_python2_style_arrays():
    # arrays as Python-2 numpy wrote them (numpy.core.multiarray._reconstruct + str data,
    # uint32 kintree with the 4294967295 root), read back with encoding='latin1'
    raw = random_mano(np.random.default_rng(5))
    raw["kintree_table"] = raw["kintree_table"].astype(np.uint32)
    pkl = ENV.p("mano_py2.pkl")
    write_fake_mano(pkl, raw, py2=True)
    with open(pkl, "rb") as fh:
        blob = fh.read()
    check(b"numpy.core.multiarray" in blob and b"__builtin__" in blob and b"chumpy.ch" in blob,
          "py2-style fixture lacks the Python-2 global names")
    out = ENV.p("mano_py2.safetensors")
    check_ok(run(CONVERT_MANO, "--pkl", pkl, "--out", out), "convert_mano py2")
    check_mano_tensors(load_st_numpy(out), raw, "convert_mano py2")


# ---------------------------- (b) checkpoint tests ---------------------------------------

class SomeCustomObject:
    """Stands for Lightning's hyper-parameter objects (not loadable with weights_only)."""

    def __init__(self):
        self.cfg = {"MODEL": {"IMAGE_SIZE": 256}}
        self.lr = 1e-5


def make_state_dict(variant="ours"):
    import torch
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g)

    shared = r(1, 10)
    sd = {
        "backbone.patch_embed.proj.weight": r(8, 3, 4, 4),
        "backbone.patch_embed.proj.bias": r(8).half(),                 # fp16
        "backbone.blocks.0.attn.qkv.weight": r(24, 8).bfloat16(),      # bf16
        "backbone.blocks.0.mlp.fc1.weight": r(8, 16).t(),              # non-contiguous
        "mano_head.init_hand_pose": r(1, 96),
        "mano_head.init_betas": shared,
        "mano_head.decpose.weight": r(96, 16),
        "mano_head.decpose.bias": r(96),
        "discriminator.D_conv1.weight": r(32, 9, 1, 1),
        "initialized": torch.tensor(True),
    }
    if variant != "none":
        sd["uncertainty_head.transformer.pos_embedding"] = r(1, 1, 16)
        sd["uncertainty_head.init_betas"] = shared                     # shares storage
    if variant == "ours":
        sd["uncertainty_head.dec3dkeypoint.weight"] = r(63, 16)
        sd["uncertainty_head.dec3dkeypoint.bias"] = r(63)
        sd["out_layer_keypoints_3d.weight"] = r(63, 63)
    elif variant == "ours_wo_linear":
        sd["uncertainty_head.dec3dkeypoint.weight"] = r(63, 16)
        sd["uncertainty_head.dec3dkeypoint.bias"] = r(63)
    elif variant == "diag":
        sd["uncertainty_head.dec3dkeypoint.0.weight"] = r(63, 16)
        sd["uncertainty_head.dec3dkeypoint.0.bias"] = r(63)
    elif variant == "full":
        sd["uncertainty_head.dec3dkeypoint_cov.weight"] = r(1953, 16)
        sd["uncertainty_head.dec3dkeypoint_cov.bias"] = r(1953)
        sd["uncertainty_head.dec3dkeypoint_diag.weight"] = r(63, 16)
        sd["uncertainty_head.dec3dkeypoint_diag.bias"] = r(63)
    # MANO buffers as they sit in checkpoints (small stand-ins)
    sd["mano.parents"] = torch.tensor(PARENTS, dtype=torch.int64)
    sd["mano.faces_tensor"] = torch.zeros(4, 3, dtype=torch.int64)
    sd["mano.hand_mean"] = r(45)
    sd["mano.vertex_joint_selector.extra_joints_idxs"] = torch.arange(5, dtype=torch.int32)
    sd["mano.joint_map"] = torch.tensor(JOINT_MAP, dtype=torch.int64)
    return sd


def check_converted(path, sd, what, mano_raw=None):
    import torch
    from safetensors.torch import load_file
    got = load_file(path)
    exp_keys = {k for k in sd if k != "initialized"}
    if mano_raw is not None:
        exp_keys |= MANO_KEYS
    check_eq(set(got.keys()), exp_keys, "%s: keys" % what)
    check("initialized" not in got, "%s: 'initialized' was kept" % what)
    int_keys = {"mano.parents", "mano.faces_tensor", "mano.extra_joints_idxs",
                "mano.vertex_joint_selector.extra_joints_idxs", "mano.joint_map"}
    for k, t in got.items():
        if k in int_keys:
            check_eq(t.dtype, torch.int64, "%s: dtype of %s" % (what, k))
        else:
            check_eq(t.dtype, torch.float32, "%s: dtype of %s" % (what, k))
        check(t.is_contiguous(), "%s: %s not contiguous" % (what, k))
    for k, t in sd.items():
        if k == "initialized" or (mano_raw is not None and k in MANO_KEYS):
            continue
        e = t.to(torch.float32) if t.is_floating_point() else t.to(torch.int64)
        check_eq(tuple(got[k].shape), tuple(t.shape), "%s: shape of %s" % (what, k))
        check(torch.equal(got[k], e), "%s: values of %s differ" % (what, k))
    if mano_raw is not None:
        exp = expected_mano(mano_raw)
        for k, e in exp.items():
            check(np.array_equal(got[k].numpy(), e), "%s: %s not from the MANO pickle"
                  % (what, k))
    return got


def save_lightning(path, sd):
    """Lightning-like checkpoint.  Besides SomeCustomObject (defined in this script's
    __main__, so absent from the converter's process) it holds a yacs-CfgNode-like dict
    subclass from a module that exists only while saving."""
    import torch
    mod = types.ModuleType("fake_training_configs")
    CfgNode = type("CfgNode", (dict,), {"__module__": "fake_training_configs"})
    mod.CfgNode = CfgNode
    saved = sys.modules.get(mod.__name__)
    sys.modules[mod.__name__] = mod
    try:
        cfg = CfgNode(MODEL=CfgNode(IMAGE_SIZE=256), TRAIN={"LR": 1e-5})
        torch.save({"state_dict": sd, "hyper_parameters": SomeCustomObject(), "cfg": cfg,
                    "epoch": 3, "global_step": 1234, "pytorch-lightning_version": "2.0.0",
                    "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-5}]}]},
                   path)
    finally:
        if saved is None:
            sys.modules.pop(mod.__name__, None)
        else:
            sys.modules[mod.__name__] = saved


@test
def ckpt_lightning_without_mano():
    sd = make_state_dict("ours")
    ckpt = ENV.p("hamer_ours.ckpt")
    save_lightning(ckpt, sd)
    out = ENV.p("ours.safetensors")
    rc, so, se = res = run(CONVERT_CKPT, "--ckpt", ckpt, "--out", out)
    check_ok(res, "convert_ckpt lightning")
    warn = [l for l in se.splitlines() if l.strip()]
    check(len(warn) == 1 and warn[0].startswith("warning:") and "pickle" in warn[0],
          "expected one weights_only=False warning line on stderr, got %r" % se)
    got = check_converted(out, sd, "lightning/ours")
    check_eq(got["mano.vertex_joint_selector.extra_joints_idxs"].tolist(), [0, 1, 2, 3, 4],
             "int32 buffer widened to int64")
    md = st_metadata(out)
    check_eq(md.get("uncertainty"), "ours", "metadata uncertainty")
    check_eq(md.get("source"), "hamer_ours.ckpt", "metadata source")
    check_eq(md.get("format"), "pt", "metadata format")
    check("uncertainty type: ours" in so, "summary lacks type: %s" % so)
    n_backbone = sum(t.numel() for k, t in sd.items() if k.startswith("backbone."))
    check(any(l.split()[:1] == ["backbone"] and str(n_backbone) in l for l in so.splitlines()),
          "summary lacks backbone parameter count %d: %s" % (n_backbone, so))
    check(any(l.split()[:1] == ["out_layer_keypoints_3d"] and "3969" in l
              for l in so.splitlines()), "summary lacks out_layer_keypoints_3d count: %s" % so)
    check("MANO buffers: incomplete" in so, "summary should report incomplete MANO: %s" % so)


@test
def ckpt_lightning_with_mano():
    sd = make_state_dict("ours")
    ckpt = ENV.p("hamer_ours2.ckpt")
    save_lightning(ckpt, sd)
    out = ENV.p("ours_mano.safetensors")
    rc, so, se = res = run(CONVERT_CKPT, "--ckpt", ckpt, "--out", out, "--mano", ENV.pkl)
    check_ok(res, "convert_ckpt --mano")
    got = check_converted(out, sd, "lightning/ours+mano", mano_raw=ENV.raw)
    # kept: checkpoint-only mano buffers; replaced: the ones the pickle provides
    check(torch_equal(got["mano.hand_mean"], sd["mano.hand_mean"]), "mano.hand_mean not kept")
    check_eq(tuple(got["mano.faces_tensor"].shape), (NF, 3), "faces replaced from pickle")
    # identical to convert_mano.py's own output
    mano_out = ENV.p("mano_for_cmp.safetensors")
    check_ok(run(CONVERT_MANO, "--pkl", ENV.pkl, "--out", mano_out), "convert_mano")
    m = load_st_numpy(mano_out)
    for k, v in m.items():
        check(np.array_equal(got[k].numpy(), v), "%s differs from convert_mano output" % k)
    check_eq(st_metadata(out).get("uncertainty"), "ours", "metadata uncertainty")
    check("MANO buffers: present" in so, "summary should report MANO present: %s" % so)


def torch_equal(a, b):
    import torch
    return torch.equal(a, b)


@test
def ckpt_bare_state_dicts_detect_types():
    import torch
    for variant in ("ours", "full", "diag", "ours_wo_linear", "none"):
        sd = make_state_dict(variant)
        path = ENV.p("bare_%s.pt" % variant)
        torch.save(sd, path)
        out = ENV.p("bare_%s.safetensors" % variant)
        rc, so, se = res = run(CONVERT_CKPT, "--ckpt", path, "--out", out)
        check_ok(res, "bare %s" % variant)
        check_eq(se.strip(), "", "bare %s: no warning expected for a plain state_dict"
                 % variant)
        check_converted(out, sd, "bare/%s" % variant)
        check_eq(st_metadata(out).get("uncertainty"), variant, "detected type")
        check("uncertainty type: %s" % variant in so, "summary type %s: %s" % (variant, so))
        check("bare state_dict" in so, "summary input kind: %s" % so)


@test
def ckpt_bare_with_mano_and_legacy_format():
    import torch
    sd = make_state_dict("diag")
    for k in list(sd):
        if k.startswith("mano."):
            del sd[k]
    path = ENV.p("legacy.pt")
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    out = ENV.p("legacy.safetensors")
    res = run(CONVERT_CKPT, "--ckpt", path, "--out", out)
    check_ok(res, "legacy format")
    check_converted(out, sd, "legacy/diag")
    check("MANO buffers: absent" in res[1], "summary should report MANO absent: %s" % res[1])
    out2 = ENV.p("legacy_mano.safetensors")
    res = run(CONVERT_CKPT, "--ckpt", path, "--out", out2, "--mano", ENV.pkl)
    check_ok(res, "legacy format + mano")
    check_converted(out2, sd, "legacy/diag+mano", mano_raw=ENV.raw)


# ---------------------------- (c) error cases -------------------------------------------

@test
def ckpt_errors():
    import torch
    out = ENV.p("err.safetensors")
    cases = []
    cases.append(("missing file", ENV.p("does_not_exist.ckpt"), None, "not found"))
    txt = ENV.p("notes.txt")
    with open(txt, "w") as fh:
        fh.write("this is not a checkpoint\n")
    cases.append(("text file", txt, None, "not a PyTorch checkpoint"))
    empty = ENV.p("empty.ckpt")
    open(empty, "wb").close()
    cases.append(("empty file", empty, None, "not a PyTorch checkpoint"))
    good = ENV.p("good_for_trunc.pt")
    torch.save(make_state_dict("diag"), good)
    with open(good, "rb") as fh:
        blob = fh.read()
    trunc = ENV.p("truncated.pt")
    with open(trunc, "wb") as fh:
        fh.write(blob[: len(blob) // 2])
    cases.append(("truncated zip", trunc, None, None))
    p = ENV.p("no_tensors.pt")
    torch.save({"a": 1, "b": "text", "c": [1, 2]}, p)
    cases.append(("no tensors (bare)", p, None, "no tensors"))
    p = ENV.p("empty_sd.ckpt")
    torch.save({"state_dict": {}, "epoch": 1}, p)
    cases.append(("no tensors (lightning)", p, None, "no tensors"))
    p = ENV.p("only_initialized.pt")
    torch.save({"initialized": torch.tensor(True)}, p)
    cases.append(("only initialized", p, None, "no tensors"))
    p = ENV.p("sd_list.ckpt")
    torch.save({"state_dict": [torch.zeros(2)], "epoch": 1}, p)
    cases.append(("state_dict not a dict", p, None, "not a dict"))
    p = ENV.p("tensor.pt")
    torch.save(torch.zeros(3), p)
    cases.append(("top level not a dict", p, None, "not a checkpoint"))
    sd = make_state_dict("ours")
    sd["mano_head.decpose.bias"][5] = float("nan")
    p = ENV.p("nan.pt")
    torch.save(sd, p)
    cases.append(("NaN", p, None, "mano_head.decpose.bias"))
    sd = make_state_dict("ours")
    sd["backbone.patch_embed.proj.bias"][0] = float("inf")     # fp16 tensor
    p = ENV.p("inf.pt")
    torch.save(sd, p)
    cases.append(("Inf (fp16)", p, None, "backbone.patch_embed.proj.bias"))
    good2 = ENV.p("good.pt")
    torch.save(make_state_dict("ours"), good2)
    cases.append(("--mano missing", good2, ENV.p("nope.pkl"), "not found"))
    cases.append(("--mano not a pickle", good2, txt, "pickle"))
    for what, ck, mano, expect in cases:
        if os.path.exists(out):
            os.remove(out)
        args = ["--ckpt", ck, "--out", out]
        if mano is not None:
            args += ["--mano", mano]
        check_error(run(CONVERT_CKPT, *args), "convert_ckpt " + what, expect)
        check(not os.path.exists(out), "convert_ckpt %s: output written despite error" % what)


@test
def mano_errors():
    out = ENV.p("err_mano.safetensors")
    cases = []
    cases.append(("missing file", ENV.p("missing.pkl"), "not found"))
    txt = ENV.p("notes2.txt")
    with open(txt, "w") as fh:
        fh.write("hello\n")
    cases.append(("text file", txt, "pickle"))
    with open(ENV.pkl, "rb") as fh:
        blob = fh.read()
    p = ENV.p("trunc.pkl")
    with open(p, "wb") as fh:
        fh.write(blob[: len(blob) // 3])
    cases.append(("truncated pickle", p, "pickle"))
    p = ENV.p("list.pkl")
    with open(p, "wb") as fh:
        pickle.dump([1, 2, 3], fh, protocol=2)
    cases.append(("not a dict", p, "dict"))

    def variant(name, transform, expect, raw_edit=None):
        raw = dict(ENV.raw)
        if raw_edit is not None:
            raw_edit(raw)
        path = ENV.p("bad_%s.pkl" % name)
        write_fake_mano(path, raw, transform=transform)
        cases.append((name, path, expect))

    variant("no posedirs", lambda d, Ch: d.pop("posedirs"), "posedirs")
    variant("no kintree", lambda d, Ch: d.pop("kintree_table"), "kintree_table")
    variant("posedirs 134", None, "135",
            lambda r: r.__setitem__("posedirs", r["posedirs"][:, :, :134]))
    variant("15 joints", None, "J_regressor",
            lambda r: r.__setitem__("J_regressor", r["J_regressor"][:15]))
    variant("shapedirs wrong V", None, "shapedirs",
            lambda r: r.__setitem__("shapedirs", r["shapedirs"][:700]))
    variant("weights wrong", None, "weights",
            lambda r: r.__setitem__("weights", r["weights"][:, :15]))
    variant("faces out of range", None, "faces",
            lambda r: r.__setitem__("f", r["f"] + np.uint32(NV)))
    kt_bad = ENV.raw["kintree_table"].copy()
    kt_bad[0, 5] = 9
    variant("bad parents", None, "parent",
            lambda r: r.__setitem__("kintree_table", kt_bad))
    variant("NaN", None, "NaN",
            lambda r: r.__setitem__("v_template", np.where(
                np.arange(NV * 3).reshape(NV, 3) == 7, np.nan, r["v_template"])))

    # a chumpy object whose state has no array at all
    with fake_pickle_modules() as (Ch, Csc, Csr):
        NoX = type("Ch", (object,), {"__module__": "chumpy.ch",
                                     "__getstate__": lambda self: {"label": "s", "n": 3}})
        sys.modules["chumpy.ch"].Ch = NoX
        d = dict(ENV.raw)
        d["shapedirs"] = NoX()
        p = ENV.p("bad_noX.pkl")
        with open(p, "wb") as fh:
            pickle.dump(d, fh, protocol=2)
    cases.append(("chumpy without x", p, "shapedirs"))

    # a pickle that would run code: refused by the allow-list
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > %s" % ENV.p("pwned"),))
    p = ENV.p("evil.pkl")
    with open(p, "wb") as fh:
        pickle.dump({"v_template": Evil()}, fh, protocol=2)
    cases.append(("code-executing pickle", p, "system"))

    for what, pkl, expect in cases:
        if os.path.exists(out):
            os.remove(out)
        check_error(run(CONVERT_MANO, "--pkl", pkl, "--out", out), "convert_mano " + what,
                    expect)
        check(not os.path.exists(out), "convert_mano %s: output written despite error" % what)
    check(not os.path.exists(ENV.p("pwned")), "the evil pickle ran code")


# ----------------------------------------------------------------------------------------

def main():
    global ENV
    try:
        import torch  # noqa: F401
        import safetensors  # noqa: F401
    except ImportError as e:
        print("cannot run: %s" % e)
        return 1
    ENV = Env()
    passed = failed = 0
    try:
        for fn in _TESTS:
            try:
                fn()
            except Failure as e:
                failed += 1
                print("FAIL %s: %s" % (fn.__name__, e))
            except Exception:
                failed += 1
                print("FAIL %s: unexpected exception\n%s" % (fn.__name__,
                                                             traceback.format_exc()))
            else:
                passed += 1
                print("ok   %s" % fn.__name__)
    finally:
        ENV.tmp.cleanup()
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
