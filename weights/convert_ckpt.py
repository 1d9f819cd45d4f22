#!/usr/bin/env python3
"""Convert a HaMeR / Hand-Uncertainty PyTorch checkpoint to safetensors for handcov.

    python3 weights/convert_ckpt.py --ckpt IN.ckpt --out OUT.safetensors [--mano MANO_RIGHT.pkl]

IN is a PyTorch Lightning checkpoint (dict with `state_dict`) or a bare state_dict.
All tensor entries are kept (SPEC §12) except the bool buffer `initialized`; floating
tensors are written as float32, integer MANO buffers as int64.  `--mano` adds or replaces
the `mano.*` buffers with those converted from the official MANO pickle.

Errors print one line `error: ...` on stderr and exit with code 2.
"""

import argparse
import os
import pickle
import sys
import types
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_mano import ConversionError, load_mano_pkl  # noqa: E402

DROP_KEYS = {"initialized"}
INT64_KEYS = {
    "mano.parents",
    "mano.faces_tensor",
    "mano.extra_joints_idxs",
    "mano.vertex_joint_selector.extra_joints_idxs",
    "mano.joint_map",
}
# MANO buffers the Rust side needs for the forward pass (SPEC §5.3/§5.4).
MANO_REQUIRED = (
    "mano.v_template", "mano.shapedirs", "mano.posedirs", "mano.J_regressor",
    "mano.lbs_weights", "mano.parents", "mano.faces_tensor",
)


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------

class _Missing:
    """Stand-in for a class the checkpoint's pickle names but this environment lacks
    (e.g. the hyper-parameter / config classes of the training code)."""

    _qualname = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    def __setitem__(self, key, value):       # dict-subclass style BUILD / SETITEMS
        self.__dict__.setdefault("_items", {})[key] = value

    def append(self, value):                 # list-subclass style APPENDS
        self.__dict__.setdefault("_list", []).append(value)

    def extend(self, values):
        self.__dict__.setdefault("_list", []).extend(values)


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(str(name), (_Missing,), {"_qualname": "%s.%s" % (module, name)})


def _tolerant_pickle_module():
    mod = types.ModuleType("handcov_tolerant_pickle")
    for attr in dir(pickle):
        if not attr.startswith("__"):
            setattr(mod, attr, getattr(pickle, attr))
    mod.Unpickler = _TolerantUnpickler

    def load(fh, **kw):
        return _TolerantUnpickler(fh, **kw).load()

    mod.load = load
    return mod


def _looks_like_torch_file(path):
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        head = fh.read(2)
    # legacy (pre-1.6) torch.save format starts with a pickle PROTO opcode
    return len(head) == 2 and head[0] == 0x80 and 1 <= head[1] <= 5


def _first_line(e):
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def load_checkpoint(path):
    import torch

    if not os.path.exists(path):
        raise ConversionError("checkpoint not found: %s" % path)
    if not os.path.isfile(path):
        raise ConversionError("checkpoint is not a file: %s" % path)
    if not _looks_like_torch_file(path):
        raise ConversionError("%s is not a PyTorch checkpoint (neither a torch zip archive "
                              "nor a pickle)" % path)
    use_mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError:
        pass  # most likely hyper-parameter objects: retry below
    except Exception as e:
        raise ConversionError("cannot read %s as a PyTorch checkpoint (%s)"
                              % (path, _first_line(e)))
    print("warning: %s holds non-tensor Python objects; loading it with weights_only=False "
          "executes pickle code from the file (only convert checkpoints you trust)"
          % os.path.basename(path), file=sys.stderr, flush=True)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=use_mmap,
                          pickle_module=_tolerant_pickle_module())
    except Exception as e:
        raise ConversionError("cannot read %s as a PyTorch checkpoint (%s)"
                              % (path, _first_line(e)))


def extract_state_dict(obj):
    """Return (state_dict, kind) with kind 'lightning' or 'state_dict'."""
    if not isinstance(obj, dict):
        raise ConversionError("not a checkpoint: the file holds a %s, expected a dict "
                              "(Lightning checkpoint or state_dict)" % type(obj).__name__)
    if "state_dict" in obj:
        sd = obj["state_dict"]
        if not isinstance(sd, dict):
            raise ConversionError("checkpoint's 'state_dict' is a %s, not a dict"
                                  % type(sd).__name__)
        return sd, "lightning"
    return obj, "state_dict"


# ----------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------

def detect_type(keys):
    keys = set(keys)
    if "out_layer_keypoints_3d.weight" in keys:
        return "ours"
    if "uncertainty_head.dec3dkeypoint_cov.weight" in keys:
        return "full"
    if "uncertainty_head.dec3dkeypoint.0.weight" in keys:
        return "diag"
    if "uncertainty_head.dec3dkeypoint.weight" in keys:
        return "ours_wo_linear"
    if not any(k.startswith("uncertainty_head.") for k in keys):
        return "none"
    return "unknown"


def convert_tensors(sd):
    """Filter and normalise the tensors. Returns (tensors, notes)."""
    import torch

    out = {}
    skipped_non_tensor = []
    converted = {}
    seen_storage = set()
    for name, value in sd.items():
        if not isinstance(name, str):
            raise ConversionError("state_dict key %r is not a string" % (name,))
        if name in DROP_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            skipped_non_tensor.append(name)
            continue
        t = value.detach()
        if t.is_sparse or t.layout != torch.strided:
            t = t.to_dense()
        if t.is_complex():
            raise ConversionError("tensor %s is complex (%s); not supported" % (name, t.dtype))
        if name in INT64_KEYS:
            if t.is_floating_point() or t.dtype == torch.bool:
                raise ConversionError("integer buffer %s has dtype %s" % (name, t.dtype))
            if t.dtype != torch.int64:
                t = t.to(torch.int64)
        elif t.is_floating_point():
            if t.dtype != torch.float32:
                converted[str(t.dtype)] = converted.get(str(t.dtype), 0) + 1
                t = t.to(torch.float32)
            if t.numel() and not bool(torch.isfinite(t).all()):
                n_nan = int(torch.isnan(t).sum())
                n_inf = int(torch.isinf(t).sum())
                raise ConversionError("tensor %s contains non-finite values (%d NaN, %d Inf)"
                                      % (name, n_nan, n_inf))
        t = t.contiguous()
        # safetensors refuses tensors sharing memory; give duplicates their own copy.
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen_storage:
                t = t.clone()
                ptr = t.untyped_storage().data_ptr()
            seen_storage.add(ptr)
        out[name] = t
    return out, {"skipped_non_tensor": skipped_non_tensor, "converted": converted}


def summarize(tensors, model_type, kind, notes, mano_from_pkl):
    prefixes = {}
    for name, t in tensors.items():
        p = name.split(".", 1)[0]
        n, c = prefixes.get(p, (0, 0))
        prefixes[p] = (n + 1, c + t.numel())
    lines = []
    lines.append("input: %s" % ("Lightning checkpoint" if kind == "lightning" else "bare state_dict"))
    lines.append("uncertainty type: %s" % model_type)
    lines.append("tensors: %d, parameters: %d" % (len(tensors),
                                                   sum(c for _, c in prefixes.values())))
    for p in sorted(prefixes):
        n, c = prefixes[p]
        lines.append("  %-26s %5d tensors %14d params" % (p, n, c))
    if notes["converted"]:
        lines.append("converted to float32: " + ", ".join(
            "%d x %s" % (n, d) for d, n in sorted(notes["converted"].items())))
    if notes["skipped_non_tensor"]:
        lines.append("skipped non-tensor entries: %d" % len(notes["skipped_non_tensor"]))
    missing = [k for k in MANO_REQUIRED if k not in tensors]
    if not missing:
        lines.append("MANO buffers: present%s" % (" (from MANO pickle)" if mano_from_pkl else
                                                  " (from checkpoint)"))
    elif len(missing) == len(MANO_REQUIRED):
        lines.append("MANO buffers: absent (pass --mano MANO_RIGHT.pkl here or to infer)")
    else:
        lines.append("MANO buffers: incomplete, missing %s" % ", ".join(missing))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert a HaMeR / Hand-Uncertainty checkpoint "
                                             "to safetensors.")
    ap.add_argument("--ckpt", required=True, help="Lightning .ckpt or bare state_dict (.pt)")
    ap.add_argument("--out", required=True, help="output .safetensors")
    ap.add_argument("--mano", default=None, help="MANO_RIGHT.pkl: add/replace mano.* buffers")
    args = ap.parse_args(argv)
    try:
        if (os.path.exists(args.ckpt) and os.path.exists(args.out)
                and os.path.samefile(args.ckpt, args.out)):
            raise ConversionError("--out must differ from --ckpt")
        mano = None
        if args.mano is not None:
            # read the pickle first: cheap, and fails fast before a multi-GB load
            mano = load_mano_pkl(args.mano)
        obj = load_checkpoint(args.ckpt)
        sd, kind = extract_state_dict(obj)
        tensors, notes = convert_tensors(sd)
        if not tensors:
            raise ConversionError("no tensors found in %s" % args.ckpt)
        model_type = detect_type(tensors.keys())
        if mano is not None:
            import torch
            for k, v in mano.items():
                tensors[k] = torch.from_numpy(v.copy())
        out_dir = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(out_dir):
            raise ConversionError("output directory does not exist: %s" % out_dir)
        from safetensors.torch import save_file
        try:
            save_file(tensors, args.out, metadata={
                "format": "pt",
                "source": os.path.basename(args.ckpt),
                "uncertainty": model_type,
            })
        except OSError as e:
            raise ConversionError("cannot write %s: %s" % (args.out, e.strerror or e))
    except ConversionError as e:
        print("error: %s" % str(e).replace("\n", " "), file=sys.stderr)
        return 2
    except Exception as e:  # anything unforeseen: still one line, no traceback
        print("error: unexpected %s: %s" % (type(e).__name__, _first_line(e)), file=sys.stderr)
        return 2
    print(summarize(tensors, model_type, kind, notes, mano is not None))
    print("wrote %s" % args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
