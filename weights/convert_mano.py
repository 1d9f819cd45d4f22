#!/usr/bin/env python3
"""Convert the official MANO_RIGHT.pkl into the `mano.*` tensors of a handcov checkpoint.

    python3 weights/convert_mano.py --pkl MANO_RIGHT.pkl --out mano.safetensors

The official pickle was written by Python 2 with chumpy and scipy objects inside
(`shapedirs` is a `chumpy.ch.Ch`, `J_regressor` a `scipy.sparse.csc_matrix`).  Neither
package is needed here: the unpickler maps those classes to small stand-ins that keep
their pickled state, from which plain numpy arrays are recovered.

Output layout (SPEC §5.2/§5.4, smplx 0.1.28 buffer conventions):

    mano.v_template          [V,3]        f32
    mano.shapedirs           [V,3,10]     f32   (first 10 betas)
    mano.posedirs            [135,3V]     f32   (= posedirs.reshape(-1,135).T)
    mano.J_regressor         [16,V]       f32   (dense)
    mano.lbs_weights         [V,16]       f32
    mano.parents             [16]         i64   (root -> -1)
    mano.faces_tensor        [F,3]        i64
    mano.extra_joints_idxs   [5]          i64   (fingertips 744,320,443,554,671)
    mano.joint_map           [21]         i64   (MANO+tips -> OpenPose order)

Only numpy (and safetensors for writing) is imported; torch is not needed.
"""

import argparse
import os
import pickle
import sys

import numpy as np

NUM_JOINTS = 16          # MANO kinematic joints (wrist + 15)
NUM_BETAS = 10           # smplx default num_betas
POSE_FEATS = (NUM_JOINTS - 1) * 9   # 135 = 15 * 9

# smplx vertex_ids['mano'] fingertips, in smplx order: thumb, index, middle, ring, pinky.
EXTRA_JOINTS_IDXS = [744, 320, 443, 554, 671]
# HaMeR wrapper: MANO 16 joints + 5 tips -> OpenPose/FreiHAND order.
JOINT_MAP = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]

UINT32_ROOT = 4294967295  # kintree_table root marker (uint32 -1)

REQUIRED_FIELDS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights",
                   "kintree_table", "f")


class ConversionError(Exception):
    """A problem with the input; reported as one `error: ...` line, exit code 2."""


# ----------------------------------------------------------------------------------------
# Stand-ins for chumpy / scipy.sparse objects
# ----------------------------------------------------------------------------------------

class _StandIn:
    """Base: accepts any constructor arguments and keeps the pickled state verbatim."""

    _qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__["_kwargs"] = kwargs
        return obj

    def __init__(self, *args, **kwargs):  # pickle REDUCE may call cls(*args)
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    # Plain attribute assignment by BUILD (slot state) also lands in __dict__.

    def state(self):
        return self.__dict__.get("_state")

    def args(self):
        return self.__dict__.get("_args", ())

    def __repr__(self):
        return "<stand-in %s>" % self._qualname


class ChumpyStandIn(_StandIn):
    """Any `chumpy.*` class.  A terminal `Ch` keeps its value in state['x']."""


class SparseStandIn(_StandIn):
    """A scipy.sparse csc/csr/coo matrix; densified with numpy only."""

    _format = None  # 'csc' | 'csr' | 'coo'

    def _field(self, *names):
        st = self.state()
        if isinstance(st, dict):
            for n in names:
                if n in st:
                    return st[n]
        for n in names:
            if n in self.__dict__:
                return self.__dict__[n]
        return None

    def todense(self):
        st = self.state()
        fmt = self._format
        if isinstance(st, dict) and isinstance(st.get("format"), str):
            fmt = st["format"]
        shape = self._field("_shape", "shape")
        if shape is None:
            raise ConversionError("sparse %s matrix has no shape in its pickled state"
                                  % self._qualname)
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise ConversionError("sparse %s matrix has an invalid shape %r"
                                  % (self._qualname, shape))
        if len(shape) != 2 or min(shape) < 0:
            raise ConversionError("sparse %s matrix has an invalid shape %r"
                                  % (self._qualname, shape))
        data = self._field("data")
        if data is None:
            raise ConversionError("sparse %s matrix has no data in its pickled state"
                                  % self._qualname)
        data = np.asarray(data)
        out = np.zeros(shape, dtype=np.result_type(data.dtype, np.float64)
                       if data.dtype.kind in "biu" else data.dtype)
        if fmt in ("csc", "csr"):
            indices = self._field("indices")
            indptr = self._field("indptr")
            if indices is None or indptr is None:
                raise ConversionError("sparse %s matrix lacks indices/indptr"
                                      % self._qualname)
            indices = np.asarray(indices).astype(np.int64)
            indptr = np.asarray(indptr).astype(np.int64)
            n_major = shape[1] if fmt == "csc" else shape[0]
            n_minor = shape[0] if fmt == "csc" else shape[1]
            nnz = int(indptr[-1]) if indptr.size else 0
            if (indptr.ndim != 1 or indptr.size != n_major + 1 or indptr[0] != 0
                    or np.any(np.diff(indptr) < 0) or nnz > indices.size
                    or nnz > data.size):
                raise ConversionError("sparse %s matrix has an inconsistent indptr"
                                      % self._qualname)
            minor = indices[:nnz]
            if nnz and (minor.min() < 0 or minor.max() >= n_minor):
                raise ConversionError("sparse %s matrix has out-of-range indices"
                                      % self._qualname)
            major = np.repeat(np.arange(n_major, dtype=np.int64), np.diff(indptr))
            rows, cols = (minor, major) if fmt == "csc" else (major, minor)
            np.add.at(out, (rows, cols), data[:nnz])   # duplicates sum, as in scipy
        elif fmt == "coo":
            row = self._field("row")
            col = self._field("col")
            if row is None or col is None:
                # newer scipy keeps coords=(row, col)
                coords = self._field("coords")
                if coords is None or len(coords) != 2:
                    raise ConversionError("sparse %s matrix lacks row/col"
                                          % self._qualname)
                row, col = coords
            row = np.asarray(row).astype(np.int64)
            col = np.asarray(col).astype(np.int64)
            if row.shape != col.shape or row.shape != data.shape:
                raise ConversionError("sparse %s matrix has inconsistent row/col/data"
                                      % self._qualname)
            if row.size and (row.min() < 0 or row.max() >= shape[0]
                             or col.min() < 0 or col.max() >= shape[1]):
                raise ConversionError("sparse %s matrix has out-of-range indices"
                                      % self._qualname)
            np.add.at(out, (row, col), data)
        else:
            raise ConversionError("unsupported sparse format %r (%s)"
                                  % (fmt, self._qualname))
        return out


_SPARSE_FORMATS = {
    "csc_matrix": "csc", "csr_matrix": "csr", "coo_matrix": "coo",
    "csc_array": "csc", "csr_array": "csr", "coo_array": "coo",
}

_standin_cache = {}


def _make_standin(base, module, name, **attrs):
    key = (base, module, name)
    if key not in _standin_cache:
        ns = {"_qualname": "%s.%s" % (module, name), "__module__": __name__}
        ns.update(attrs)
        _standin_cache[key] = type(str(name), (base,), ns)
    return _standin_cache[key]


# Globals a MANO pickle may name besides chumpy / scipy.sparse (after the Python-2 ->
# Python-3 name mapping that pickle applies itself).  Nothing else is resolved, so the
# pickle cannot run arbitrary code.
_SAFE_GLOBALS = {
    ("builtins", n) for n in ("object", "set", "frozenset", "list", "dict", "tuple", "int",
                              "float", "complex", "str", "bytes", "bytearray", "bool",
                              "slice")
} | {
    ("copyreg", "_reconstructor"),
    ("_codecs", "encode"),              # bytes pickled by Python 3 at protocol <= 2
    ("collections", "OrderedDict"),
}
_NUMPY_FUNCS = {"_reconstruct", "scalar"}


class MANOUnpickler(pickle.Unpickler):
    """Unpickler that needs neither chumpy nor scipy, and resolves only an allow-list of
    numpy / builtin globals."""

    def _numpy_global(self, module, name):
        # numpy>=2 renamed numpy.core -> numpy._core (the old path forwards with a warning).
        mods = [module]
        if module == "numpy.core" or module.startswith("numpy.core."):
            mods.insert(0, "numpy._core" + module[len("numpy.core"):])
        obj = None
        for m in mods:
            try:
                obj = super().find_class(m, name)
                break
            except (ImportError, AttributeError):
                continue
        if obj is None:
            return None
        if name in _NUMPY_FUNCS and callable(obj):
            return obj
        if isinstance(obj, type) and (obj is np.ndarray or issubclass(obj, np.dtype)
                                      or issubclass(obj, np.generic)):
            return obj
        return None

    def find_class(self, module, name):
        if module == "chumpy" or module.startswith("chumpy."):
            return _make_standin(ChumpyStandIn, module, name)
        if module.startswith("scipy.sparse") and name in _SPARSE_FORMATS:
            return _make_standin(SparseStandIn, module, name, _format=_SPARSE_FORMATS[name])
        if module == "numpy" or module.startswith("numpy."):
            obj = self._numpy_global(module, name)
            if obj is not None:
                return obj
        else:
            # let pickle map Python-2 names (copy_reg, __builtin__) before checking
            mapped = (module, name)
            if (module, name) in _compat_name_mapping():
                mapped = _compat_name_mapping()[(module, name)]
            elif module in _compat_module_mapping():
                mapped = (_compat_module_mapping()[module], name)
            if mapped in _SAFE_GLOBALS:
                return super().find_class(module, name)
        raise ConversionError("the pickle names %s.%s, which is not a MANO field type "
                              "(allowed: numpy arrays, chumpy objects, scipy.sparse "
                              "matrices)" % (module, name))


def _compat_name_mapping():
    import _compat_pickle
    return _compat_pickle.NAME_MAPPING


def _compat_module_mapping():
    import _compat_pickle
    return _compat_pickle.IMPORT_MAPPING


# ----------------------------------------------------------------------------------------
# Array extraction
# ----------------------------------------------------------------------------------------

def _to_array(obj, what, depth=0):
    """Recover a numpy array from an ndarray, a chumpy stand-in, a sparse stand-in,
    or a plain nested list."""
    if depth > 32:
        raise ConversionError("%s: chumpy object nesting too deep" % what)
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, SparseStandIn):
        return obj.todense()
    if isinstance(obj, ChumpyStandIn):
        st = obj.state()
        if isinstance(st, tuple) and len(st) == 2 and (st[0] is None or isinstance(st[0], dict)):
            # (dict_state, slot_state) form
            merged = {}
            for part in st:
                if isinstance(part, dict):
                    merged.update(part)
            st = merged
        if isinstance(st, dict):
            if "x" in st:
                return _to_array(st["x"], what, depth + 1)
            cands = [v for v in st.values()
                     if isinstance(v, (np.ndarray, _StandIn))]
            if len(cands) == 1:
                return _to_array(cands[0], what, depth + 1)
        elif isinstance(st, (np.ndarray, _StandIn)):
            return _to_array(st, what, depth + 1)
        elif isinstance(st, (list, tuple)):
            cands = [v for v in st if isinstance(v, (np.ndarray, _StandIn))]
            if len(cands) == 1:
                return _to_array(cands[0], what, depth + 1)
        # Constructed as Ch(array) without state?
        cands = [a for a in obj.args() if isinstance(a, (np.ndarray, _StandIn))]
        if len(cands) == 1:
            return _to_array(cands[0], what, depth + 1)
        raise ConversionError("%s: cannot find the array value inside %s (no 'x' in its "
                              "pickled state)" % (what, obj._qualname))
    if isinstance(obj, (list, tuple, int, float)):
        try:
            return np.asarray(obj)
        except Exception:
            pass
    raise ConversionError("%s: unsupported value of type %s" % (what, type(obj).__name__))


def _check_shape(arr, shape, what):
    """shape: tuple with ints or None (free dimension)."""
    ok = arr.ndim == len(shape) and all(s is None or a == s for a, s in zip(arr.shape, shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ConversionError("%s has shape %s, expected %s" % (what, tuple(arr.shape), want))


def _float32(arr, what):
    if arr.dtype.kind not in "fiub":
        raise ConversionError("%s has non-numeric dtype %s" % (what, arr.dtype))
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise ConversionError("%s contains NaN or Inf" % what)
    return out


def _load_pickle(path):
    if not os.path.exists(path):
        raise ConversionError("MANO pickle not found: %s" % path)
    if not os.path.isfile(path):
        raise ConversionError("MANO pickle is not a file: %s" % path)
    try:
        with open(path, "rb") as fh:
            return MANOUnpickler(fh, encoding="latin1").load()
    except ConversionError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, ValueError, KeyError, ...
        raise ConversionError("%s is not a readable MANO pickle (%s: %s)"
                              % (path, type(e).__name__, str(e).splitlines()[0] if str(e) else ""))


def load_mano_pkl(path):
    """Read MANO_RIGHT.pkl and return {'mano.<name>': np.ndarray} in checkpoint layout.

    Raises ConversionError on any problem (missing file, not a pickle, missing field,
    wrong structure)."""
    data = _load_pickle(path)
    if isinstance(data, _StandIn) and isinstance(data.state(), dict):
        data = data.state()
    if not isinstance(data, dict):
        raise ConversionError("%s does not hold a dict of MANO fields (got %s)"
                              % (path, type(data).__name__))
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise ConversionError("%s lacks MANO field(s): %s" % (path, ", ".join(missing)))

    arr = {k: _to_array(data[k], k) for k in REQUIRED_FIELDS}

    v_template = arr["v_template"]
    _check_shape(v_template, (None, 3), "v_template")
    nv = v_template.shape[0]
    if nv == 0:
        raise ConversionError("v_template has no vertices")

    shapedirs = arr["shapedirs"]
    _check_shape(shapedirs, (nv, 3, None), "shapedirs")
    if shapedirs.shape[2] < NUM_BETAS:
        raise ConversionError("shapedirs has %d shape components, need at least %d"
                              % (shapedirs.shape[2], NUM_BETAS))

    posedirs = arr["posedirs"]
    if posedirs.ndim == 3 and posedirs.shape[2] != POSE_FEATS:
        raise ConversionError("posedirs last dimension is %d, expected %d (= 15 joints x 9)"
                              % (posedirs.shape[2], POSE_FEATS))
    _check_shape(posedirs, (nv, 3, POSE_FEATS), "posedirs")

    j_reg = arr["J_regressor"]
    if j_reg.ndim == 2 and j_reg.shape[0] != NUM_JOINTS:
        raise ConversionError("J_regressor has %d joints, expected %d"
                              % (j_reg.shape[0], NUM_JOINTS))
    _check_shape(j_reg, (NUM_JOINTS, nv), "J_regressor")

    weights = arr["weights"]
    _check_shape(weights, (nv, NUM_JOINTS), "weights")

    kintree = arr["kintree_table"]
    _check_shape(kintree, (2, NUM_JOINTS), "kintree_table")
    if kintree.dtype.kind not in "iu":
        if kintree.dtype.kind == "f" and np.all(np.isfinite(kintree)) \
                and np.all(kintree == np.round(kintree)):
            kintree = kintree.astype(np.int64)
        else:
            raise ConversionError("kintree_table is not integer (dtype %s)" % kintree.dtype)
    parents = kintree[0].astype(np.int64)
    # smplx: parents[0] = -1.  The root carries the uint32 marker 4294967295 (or -1).
    if parents[0] not in (UINT32_ROOT, -1):
        raise ConversionError("kintree_table root parent is %d, expected %d (or -1)"
                              % (parents[0], UINT32_ROOT))
    parents[0] = -1
    for j in range(1, NUM_JOINTS):
        if not (0 <= parents[j] < j):
            raise ConversionError("kintree_table parent of joint %d is %d; expected a "
                                  "joint index in 0..%d" % (j, parents[j], j - 1))

    faces = arr["f"]
    _check_shape(faces, (None, 3), "f (faces)")
    if faces.dtype.kind not in "iu":
        raise ConversionError("f (faces) is not integer (dtype %s)" % faces.dtype)
    faces = faces.astype(np.int64)
    if faces.shape[0] == 0 or faces.min() < 0 or faces.max() >= nv:
        raise ConversionError("f (faces) has vertex indices outside 0..%d" % (nv - 1))

    extra = np.asarray(EXTRA_JOINTS_IDXS, dtype=np.int64)
    if extra.max() >= nv:
        raise ConversionError("fingertip vertex %d does not exist (only %d vertices)"
                              % (extra.max(), nv))

    out = {
        "mano.v_template": _float32(v_template, "v_template"),
        "mano.shapedirs": _float32(shapedirs[:, :, :NUM_BETAS], "shapedirs"),
        "mano.posedirs": _float32(posedirs.reshape(-1, POSE_FEATS).T, "posedirs"),
        "mano.J_regressor": _float32(j_reg, "J_regressor"),
        "mano.lbs_weights": _float32(weights, "weights"),
        "mano.parents": np.ascontiguousarray(parents, dtype=np.int64),
        "mano.faces_tensor": np.ascontiguousarray(faces, dtype=np.int64),
        "mano.extra_joints_idxs": extra,
        "mano.joint_map": np.asarray(JOINT_MAP, dtype=np.int64),
    }
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert MANO_RIGHT.pkl to mano.* safetensors "
                                             "(no chumpy/scipy needed).")
    ap.add_argument("--pkl", required=True, help="official MANO_RIGHT.pkl")
    ap.add_argument("--out", required=True, help="output .safetensors")
    args = ap.parse_args(argv)
    try:
        tensors = load_mano_pkl(args.pkl)
        try:
            from safetensors.numpy import save_file
        except ImportError as e:
            raise ConversionError("the safetensors package is required to write %s"
                                  % args.out) from e
        out_dir = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(out_dir):
            raise ConversionError("output directory does not exist: %s" % out_dir)
        try:
            save_file(tensors, args.out,
                      metadata={"format": "pt", "source": os.path.basename(args.pkl)})
        except OSError as e:
            raise ConversionError("cannot write %s: %s" % (args.out, e.strerror or e))
    except ConversionError as e:
        print("error: %s" % str(e).replace("\n", " "), file=sys.stderr)
        return 2
    except Exception as e:  # anything unforeseen: still one line, no traceback
        msg = str(e).strip().splitlines()
        print("error: unexpected %s: %s" % (type(e).__name__, msg[0] if msg else ""),
              file=sys.stderr)
        return 2
    print("MANO: %d vertices, %d faces, %d joints -> %s"
          % (tensors["mano.v_template"].shape[0], tensors["mano.faces_tensor"].shape[0],
             tensors["mano.parents"].shape[0], args.out))
    for k, v in tensors.items():
        print("  %-24s %-14s %s" % (k, str(list(v.shape)), v.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
