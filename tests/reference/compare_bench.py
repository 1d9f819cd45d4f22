#!/usr/bin/env python3
"""Compare handcov's `bench --json` output with the PyTorch GPU baselines (bench_gpu_torch.py:
inference; bench_train_torch.py: training step and exact NLL).

    python3 tests/reference/compare_bench.py gpu_out/torch_bench.jsonl gpu_out/handcov_bench.jsonl
    python3 tests/reference/compare_bench.py torch.jsonl handcov.jsonl --out compare.md

Reads JSONL files (one object per line; the files may come in any order, each row's `engine`
says whose it is: "torch" or "handcov") and prints markdown:

1. ONE table of the whole model, a row per batch size: images/s for every handcov mode (fp32,
   bf16, then any other label such as graph_bf16), torch eager fp32 / eager bf16 / the best
   compile_bf16* mode, the ratios handcov-bf16 / torch-eager-bf16 and handcov-bf16 / torch-compile
   (handcov-bf16 = the fastest handcov mode whose label contains "bf16", named in the cell when it
   is not plain "bf16"), the median ms per forward (at batch 1: the latency) and the peak device
   memory of those three.
2. If both engines have micro-benchmark rows (torch's kernel "sdpa" / "mano", handcov's
   "self_attention_fwd" / "mano_fwd"): a small table of the median ms of each (kernel, mode,
   batch) both measured, side by side.
3. Training (kind "train" rows: handcov's train bench, tests/reference/bench_train_torch.py): a
   row per batch size: images/s of every handcov mode (bf16, fp32, ...) and every torch mode
   (amp_fp16 = the reference trainer's fp16 AMP, bf16, fp32), the ratio handcov-bf16 / torch-amp_fp16
   (handcov-bf16 = the fastest handcov train mode whose label contains "bf16"), the peak memory of
   both and whether the issue's target holds (>= 1.2x the images/s with lower peak memory); plus
   handcov-fp32 / torch-fp32 when both exist.
4. Exact NLL (kind "nll" rows): per batch, handcov's f64 kernel vs torch's f64 (and f32)
   cholesky + cholesky_solve with autograd, forward + backward median ms, the speed-up
   torch-f64 / handcov-f64 and the target (>= 10x).
5. Notes: rows that carry an "error" (a failed or skipped measurement) and a device mismatch.

A side that is missing prints "—" in its cells (a table is still printed when one engine has
rows of its kind).

Model rows are handcov's kind == "forward" rows and torch's kernel == "model" rows (or rows with
neither key); handcov's "ceiling" rows are listed in the notes; other kernels are not shown.
Rows of the same (engine, kernel,
mode, batch) replace earlier ones, so the files of two runs can be given together (an error row is
dropped when a measurement of the same key exists). Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import sys

HC, TORCH = "handcov", "torch"
# micro-benchmark kernels shown side by side, under one name: torch's "sdpa" / "mano", handcov
# bench's "self_attention_fwd" (the ViT attention at (batch, 16, 192, 80)) / "mano_fwd"
KERNEL_ALIASES = {"attention": "sdpa", "sdpa": "sdpa", "self_attention_fwd": "sdpa",
                  "attention_fwd": "sdpa", "mano": "mano", "mano_fwd": "mano"}


def die(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def load(paths):
    """All rows of all files, each with `engine` (default: guessed from the file name)."""
    rows = []
    for path in paths:
        try:
            with open(path) as f:
                lines = f.readlines()
        except OSError as e:
            die(f"cannot read {path}: {e.strerror}")
        guess = HC if "handcov" in path else TORCH if "torch" in path else None
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                print(f"warning: {path}:{n}: not JSON ({e.msg}); line skipped", file=sys.stderr)
                continue
            if not isinstance(row, dict):
                print(f"warning: {path}:{n}: not a JSON object; line skipped", file=sys.stderr)
                continue
            row.setdefault("engine", guess)
            if row["engine"] is None:
                print(f"warning: {path}:{n}: no `engine` key; line skipped", file=sys.stderr)
                continue
            row["_src"] = f"{path}:{n}"
            rows.append(row)
    return rows


def num(row, key):
    v = row.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def ips(row):
    """images/s of a model row (from median_ms when images_per_s is missing)."""
    if row is None:
        return None
    v = num(row, "images_per_s")
    if v is None and num(row, "median_ms") and num(row, "batch"):
        v = row["batch"] / (row["median_ms"] / 1e3)
    return v


def category(r):
    """'model', 'micro', 'ceiling' or None (a row this script does not show).
    handcov's bench marks rows with kind = forward / kernel / ceiling; torch's rows have
    kernel = model / sdpa / mano and no kind."""
    kind, kernel = r.get("kind"), r.get("kernel")
    if kind == "forward" or (kind is None and kernel in (None, "model")):
        return "model"
    if kind == "ceiling":
        return "ceiling"
    return "micro" if kernel in KERNEL_ALIASES else None


def row_key(r):
    kernel = "model" if category(r) == "model" else KERNEL_ALIASES.get(r.get("kernel"), r.get("kernel"))
    batch = r.get("batch")
    return (r["engine"], kernel, str(r.get("mode")), int(batch) if num(r, "batch") is not None else batch)


TRAIN_KINDS = ("train", "nll")
TRAIN_TARGET = 1.2        # handcov bf16 train step >= 1.2x torch amp_fp16 images/s, less memory
NLL_TARGET = 10.0         # handcov f64 exact-NLL fwd+bwd >= 10x torch cholesky + autograd


def split(rows):
    """(model index, micro index, error rows, ceiling rows). Index: (engine, kernel, mode, batch).
    Training rows (kind "train" / "nll") are left to split_train."""
    model, micro, errors, ceilings = {}, {}, [], []
    for r in rows:
        if r.get("kind") in TRAIN_KINDS:
            continue
        cat = category(r)
        if "error" in r:
            errors.append(r)
            continue
        if cat == "ceiling":
            ceilings.append(r)
        if cat not in ("model", "micro") or "mode" not in r or num(r, "batch") is None:
            continue
        if cat == "model":
            if ips(r) is not None:
                model[row_key(r)] = r
        elif num(r, "median_ms") is not None:
            micro[row_key(r)] = r
    # an error that a measurement of the same key (from another run or file) made good is dropped
    done = set(model) | set(micro)
    errors = [r for r in errors if row_key(r) not in done]
    return model, micro, errors, ceilings


def best(model, engine, batch, accept):
    """The fastest row of `engine` at `batch` whose mode satisfies accept(mode), or None."""
    cands = [r for (e, _, m, b), r in model.items() if e == engine and b == batch and accept(m)]
    return max(cands, key=ips, default=None)


def f_ips(v):
    return "—" if v is None else f"{v:,.1f}"


def f_ms(row):
    return "—" if row is None or num(row, "median_ms") is None else f"{row['median_ms']:.2f}"


def f_mib(row):
    return "—" if row is None or num(row, "peak_mem_mib") is None else f"{row['peak_mem_mib']:,.0f}"


def ratio(a, b, label=None):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×" + (f" ({label})" if label else "")


def ordered_modes(model, engine, first):
    seen = []
    for (e, _, m, _b) in model:
        if e == engine and m not in seen:
            seen.append(m)
    return [m for m in first if m in seen] + [m for m in seen if m not in first]


def model_table(model):
    batches = sorted({b for (_, _, _, b) in model})
    hc_modes = ordered_modes(model, HC, ["fp32", "bf16"])
    torch_modes = ordered_modes(model, TORCH, ["eager_fp32", "eager_bf16"])
    torch_fixed = [m for m in ("eager_fp32", "eager_bf16") if m in torch_modes]
    has_compile = any(m.startswith("compile_bf16") for m in torch_modes)
    torch_other = [m for m in torch_modes
                   if m not in torch_fixed and not m.startswith("compile_bf16")]

    head = ["batch"] + [f"handcov {m} img/s" for m in hc_modes]
    head += [f"torch {m.replace('_', ' ')} img/s" for m in torch_fixed]
    head += ["torch compile bf16 img/s"] if has_compile else []
    head += [f"torch {m.replace('_', ' ')} img/s" for m in torch_other]
    head += ["handcov bf16 ÷ torch eager bf16", "handcov bf16 ÷ torch compile",
             "median ms (handcov bf16 / eager bf16 / compile)",
             "peak MiB (handcov bf16 / eager bf16 / compile)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    for b in batches:
        get = lambda e, m: model.get((e, "model", m, b))  # noqa: E731
        hc_bf16 = best(model, HC, b, lambda m: "bf16" in m)
        t_eager = get(TORCH, "eager_bf16")
        t_comp = best(model, TORCH, b, lambda m: m.startswith("compile_bf16"))
        cells = [str(b)] + [f_ips(ips(get(HC, m))) for m in hc_modes]
        cells += [f_ips(ips(get(TORCH, m))) for m in torch_fixed]
        if has_compile:
            tag = "" if t_comp is None or t_comp["mode"] == "compile_bf16" else f" ({t_comp['mode']})"
            cells.append(f_ips(ips(t_comp)) + tag)
        cells += [f_ips(ips(get(TORCH, m))) for m in torch_other]
        hc_tag = None if hc_bf16 is None or hc_bf16["mode"] == "bf16" else hc_bf16["mode"]
        cells += [ratio(ips(hc_bf16), ips(t_eager), hc_tag),
                  ratio(ips(hc_bf16), ips(t_comp), hc_tag),
                  " / ".join(f_ms(r) for r in (hc_bf16, t_eager, t_comp)),
                  " / ".join(f_mib(r) for r in (hc_bf16, t_eager, t_comp))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def micro_table(micro):
    """handcov vs torch per (kernel, mode, batch) that both measured; torch's forced-backend rows
    (mode with ':') only feed the 'torch best' column."""
    keys = sorted({(k, m, b) for (e, k, m, b) in micro
                   if e == HC and (TORCH, k, m, b) in micro})
    head = ["kernel", "mode", "batch / shape", "handcov ms", "torch ms", "torch best ms",
            "torch ÷ handcov"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|---:|---:|---:|---:|"]
    for k, m, b in keys:
        hc, t = micro.get((HC, k, m, b)), micro.get((TORCH, k, m, b))
        variants = [r for (e, kk, mm, bb), r in micro.items()
                    if e == TORCH and kk == k and bb == b and mm.split(":")[0] == m]
        tb = min(variants, key=lambda r: r["median_ms"], default=None)
        shape = (t or hc).get("shape")
        size = "×".join(map(str, shape)) if isinstance(shape, list) else str(b)
        tb_cell = "—" if tb is None else f"{tb['median_ms']:.4f}" + (
            f" ({tb['mode'].split(':', 1)[1]})" if ":" in tb["mode"] else "")
        t_ms = None if t is None else t["median_ms"]
        hc_ms = None if hc is None else hc["median_ms"]
        lines.append(f"| {k} | {m} | {size} | {'—' if hc is None else f'{hc_ms:.4f}'} "
                     f"| {'—' if t is None else f'{t_ms:.4f}'} | {tb_cell} "
                     f"| {ratio(t_ms, hc_ms)} |")
    return lines


def train_key(r):
    b = r.get("batch")
    return (r["engine"], r["kind"], str(r.get("mode")), int(b) if num(r, "batch") is not None else b)


def split_train(rows):
    """({(engine, kind, mode, batch): row} of measured train / nll rows, error rows not made good
    by a measurement of the same key). Later rows replace earlier ones."""
    index, errors = {}, []
    for r in rows:
        if r.get("kind") not in TRAIN_KINDS or "mode" not in r:
            continue
        if "error" in r:
            errors.append(r)
        elif num(r, "batch") is not None and num(r, "median_ms") is not None:
            index[train_key(r)] = r
    return index, [r for r in errors if train_key(r) not in index]


def best_train(index, engine, kind, batch, accept):
    cands = [r for (e, k, m, b), r in index.items()
             if e == engine and k == kind and b == batch and accept(m)]
    return max(cands, key=ips, default=None)


def modes_of(index, engine, kind, first):
    seen = []
    for (e, k, m, _b) in index:
        if e == engine and k == kind and m not in seen:
            seen.append(m)
    return [m for m in first if m in seen] + [m for m in seen if m not in first]


def f_ms3(row):
    return "—" if row is None or num(row, "median_ms") is None else f"{row['median_ms']:.3f}"


def verdict(ok):
    return "—" if ok is None else ("yes" if ok else "**no**")


def train_table(index):
    """handcov train rows vs torch amp_fp16 (the reference trainer's fp16 AMP) per batch."""
    batches = sorted({b for (_, k, _, b) in index if k == "train"})
    hc_modes = modes_of(index, HC, "train", ["bf16", "fp32"])
    t_modes = modes_of(index, TORCH, "train", ["amp_fp16", "bf16", "fp32"])
    if "amp_fp16" not in t_modes:
        t_modes = ["amp_fp16"] + t_modes            # the reference column is always shown
    if not hc_modes:
        hc_modes = ["bf16"]
    head = (["batch"] + [f"handcov {m} img/s" for m in hc_modes]
            + [f"torch {m} img/s" for m in t_modes]
            + ["handcov bf16 ÷ torch amp_fp16", "handcov fp32 ÷ torch fp32",
               "median ms (handcov bf16 / torch amp_fp16)",
               "peak MiB (handcov bf16 / torch amp_fp16)",
               f"target (≥ {TRAIN_TARGET}×, less memory)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    for b in batches:
        get = lambda e, m: index.get((e, "train", m, b))  # noqa: E731
        hc = best_train(index, HC, "train", b, lambda m: "bf16" in m)
        ref = get(TORCH, "amp_fp16")
        hc32, t32 = get(HC, "fp32"), get(TORCH, "fp32")
        hc_tag = None if hc is None or hc["mode"] == "bf16" else hc["mode"]
        target = "—"
        if ips(hc) is not None and ips(ref) is not None:
            mh, mt = num(hc, "peak_mem_mib"), num(ref, "peak_mem_mib")
            if ips(hc) < TRAIN_TARGET * ips(ref):
                target = "**no** (speed)"
            elif mh is None or mt is None:
                target = "speed yes, memory —"
            else:
                target = "yes" if mh < mt else "**no** (memory)"
        cells = ([str(b)] + [f_ips(ips(get(HC, m))) for m in hc_modes]
                 + [f_ips(ips(get(TORCH, m))) for m in t_modes]
                 + [ratio(ips(hc), ips(ref), hc_tag), ratio(ips(hc32), ips(t32)),
                    " / ".join(f_ms(r) for r in (hc, ref)),
                    " / ".join(f_mib(r) for r in (hc, ref)), target])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def nll_table(index):
    """handcov's exact-NLL kernel (f64) vs torch's cholesky + cholesky_solve with autograd."""
    batches = sorted({b for (_, k, _, b) in index if k == "nll"})
    head = ["batch", "handcov f64 ms", "torch f64 ms", "torch f32 ms",
            "torch f64 ÷ handcov f64", f"target (≥ {NLL_TARGET:g}×)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    for b in batches:
        hc = index.get((HC, "nll", "f64", b))
        if hc is None:                                  # another label: the fastest handcov row
            cands = [r for (e, k, _m, bb), r in index.items() if e == HC and k == "nll" and bb == b]
            hc = min(cands, key=lambda r: r["median_ms"], default=None)
        t64, t32 = index.get((TORCH, "nll", "f64", b)), index.get((TORCH, "nll", "f32", b))
        hc_ms = None if hc is None else hc["median_ms"]
        t_ms = None if t64 is None else t64["median_ms"]
        tag = None if hc is None or hc["mode"] == "f64" else f"handcov {hc['mode']}"
        ok = None if hc_ms is None or t_ms is None else t_ms >= NLL_TARGET * hc_ms
        cells = [str(b)] + [f_ms3(r) for r in (hc, t64, t32)]
        cells += [ratio(t_ms, hc_ms, tag), verdict(ok)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def notes(rows, errors, ceilings):
    out = []
    for r in ceilings:
        vals = [f"{r[k]:,.1f} {u}" for k, u in (("gbps", "GB/s"), ("tflops", "TFLOP/s"))
                if num(r, k) is not None]
        out.append(f"- {r['engine']} ceiling {r.get('kernel', '?')} {r.get('mode', '')}: "
                   f"{', '.join(vals) or str(r.get('median_ms', '?')) + ' ms'}")
    devices = {}
    for r in rows:
        if r.get("device"):
            devices.setdefault(r["engine"], set()).add(str(r["device"]))
    for e, d in sorted(devices.items()):
        out.append(f"- {e}: device {', '.join(sorted(d))}")
    all_dev = set().union(*devices.values()) if devices else set()
    if len(all_dev) > 1:
        out.append("- **warning**: the rows come from different devices; ratios compare unlike "
                   "machines")
    for r in errors:
        kernel = r["kind"] if r.get("kind") in TRAIN_KINDS else row_key(r)[1]
        out.append(f"- {r['engine']} {kernel} {r.get('mode', '?')} batch {r.get('batch', '?')}: "
                   f"{str(r['error'])[:200]}")
    return out


def render(rows):
    model, micro, errors, ceilings = split(rows)
    train, train_errors = split_train(rows)
    engines = {r["engine"] for r in rows}
    out = []
    if model or not train:
        out += ["## Whole model (images/s; higher is better)", ""]
        out += model_table(model) if model else ["(no model rows)"]
    micro_engines = {e for (e, _, _, _) in micro}
    if micro_engines:
        out += [""]
        table = micro_table(micro) if {HC, TORCH} <= micro_engines else []
        if len(table) > 2:
            out += ["## Micro-benchmarks (median ms; lower is better)", ""] + table
        elif table:
            out += ["(micro-benchmarks: no (kernel, mode, batch) measured by both engines)"]
        else:
            out += [f"(micro-benchmarks only in the {', '.join(sorted(micro_engines))} rows; "
                    f"no side-by-side table)"]
    kinds = {k for (_, k, _, _) in train}
    if "train" in kinds:
        out += ["", "## Training step (images/s; higher is better; torch amp_fp16 = the "
                    "reference trainer's fp16 AMP)", ""] + train_table(train)
    if "nll" in kinds:
        out += ["", "## Exact NLL, Cholesky forward + backward (median ms; lower is better)", ""]
        out += nll_table(train)
    for e in (HC, TORCH):
        if e not in engines:
            out += ["", f"(no {e} rows in the input)"]
    n = notes(rows, errors + train_errors, ceilings)
    if n:
        out += ["", "Notes:"] + n
    return "\n".join(out).lstrip("\n") + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("files", nargs="+", help="JSONL files (torch and handcov, any order)")
    ap.add_argument("--out", metavar="PATH", help="also write the markdown here")
    args = ap.parse_args()
    rows = load(args.files)
    if not rows:
        die(f"no rows in {', '.join(args.files)}")
    text = render(rows)
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
