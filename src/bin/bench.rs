//! `bench`: kernel and whole-forward benchmarks on the GPU, and the CPU training step (see
//! `bench --help`).

use handcov::cuda::bench::{Bench, BenchRow};
use handcov::cuda::CudaBackend;
use handcov::engine::Precision;
use handcov::error::{Error, Result};
use handcov::model::config::{ModelConfig, Uncertainty};
use handcov::model::mano::Mano;
use handcov::model::weights::write_atomic;
use handcov::model::weights::TensorFile;
use handcov::model::HandModel;
use std::path::{Path, PathBuf};

const HELP: &str = "\
bench: time handcov's CUDA kernels and whole forward on GPU 0

USAGE:
  bench [--json OUT.jsonl] [--batch 1,16,64] [--precision fp32,bf16] [--runs N] [--warmup N]
        [--mano FILE] [--mano-batch N] [--skip-kernels] [--skip-forward]
        [--train-batch 64] [--nll-batch 4096] [--skip-train]
  bench --cpu-train [--train-batch 32] [--runs 20] [--warmup 3] [--json OUT.jsonl]

Every figure is a median over --runs (default 50) CUDA-event timings after --warmup (default 10)
runs, each run starting with a cold L2 (256 MiB overwritten in between). Kernels are measured at
the hamer shapes of each batch; the forward is the hamer preset with the `ours` head and random
weights (MANO from --mano, default tests/fixtures/tiny_weights.safetensors, 778 vertices), run as
a CUDA graph. Training (unless --skip-train): the whole fine-tune step of the same model
(forward, losses, backward, AdamW, the discriminator's step) at each --train-batch and
precision, and the exact-NLL Cholesky kernels (forward + backward) at --nll-batch. Ceilings
measured first on the same device: device-to-device copy bandwidth and
cuBLASLt GEMM throughput (fp32 without TF32, bf16) at 8192³.

--cpu-train needs no GPU: the CPU training step of the synthetic demo (`tiny` + `ours`, exact
NLL, no discriminator, AdamW) on a synthetic batch at each --train-batch, wall-clock median,
p10 and p90 over --runs after --warmup. PyTorch's side: tests/reference/bench_train_torch.py
--device cpu --config tiny --batch 32 --modes fp32 --drop-path 0 --ours-nll exact --no-nll
--no-disc.
";

/// SPEC §11: ≈ 127.1 G multiply-accumulates per image for an uncertainty variant.
const GFLOP_PER_IMAGE: f64 = 254.2;

/// A comma-separated list of counts, each in `lo..=hi`.
fn counts(s: &str, flag: &str, lo: usize, hi: usize) -> Result<Vec<usize>> {
    s.split(',')
        .map(|v| {
            let n = v
                .trim()
                .parse::<usize>()
                .map_err(|_| Error::Input(format!("{flag}: cannot parse {v:?} as a count")))?;
            handcov::cli::check_count(flag, n, lo, hi)?;
            Ok(n)
        })
        .collect()
}

/// The most images per batch, runs, and rows of the per-kernel benchmarks the flags take.
const MAX_BATCH: usize = 4096;
const MAX_RUNS: usize = 100_000;
const MAX_ROWS: usize = 1 << 20;

fn print_row(r: &BenchRow) {
    let opt = |v: Option<f64>, unit: &str| v.map(|x| format!("{x:.1} {unit}")).unwrap_or_default();
    println!(
        "{:<8} {:<26} {:<5} {:>5} {:>10.4} ms  {:>14} {:>14} {:>8} {:>14} {:>12}",
        r.kind,
        r.kernel,
        r.mode,
        r.batch,
        r.median_ms,
        opt(r.gbps, "GB/s"),
        opt(r.tflops, "TFLOP/s"),
        r.frac_of_ceiling
            .map(|f| format!("{:.0}%", 100.0 * f))
            .unwrap_or_default(),
        opt(r.images_per_s, "img/s"),
        opt(r.peak_mem_mib, "MiB"),
    );
}

fn run() -> Result<()> {
    let mut p = pico_args::Arguments::from_env();
    if p.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(());
    }
    use handcov::cli::{count, finish, opt};
    let h = "--help";
    let json: Option<PathBuf> = opt(&mut p, "--json", h)?;
    let batch_list: Option<String> = opt(&mut p, "--batch", h)?;
    let precision_list: Option<String> = opt(&mut p, "--precision", h)?;
    let cpu_train = p.contains("--cpu-train");
    let runs = count(&mut p, "--runs", 1, MAX_RUNS, h)?.unwrap_or(if cpu_train { 20 } else { 50 });
    let warmup =
        count(&mut p, "--warmup", 0, MAX_RUNS, h)?.unwrap_or(if cpu_train { 3 } else { 10 });
    let mano_arg: Option<PathBuf> = opt(&mut p, "--mano", h)?;
    let mano_batch_arg = count(&mut p, "--mano-batch", 1, MAX_ROWS, h)?;
    let skip_kernels = p.contains("--skip-kernels");
    let skip_forward = p.contains("--skip-forward");
    let skip_train = p.contains("--skip-train");
    let train_list: Option<String> = opt(&mut p, "--train-batch", h)?;
    let nll_batch_arg = count(&mut p, "--nll-batch", 1, MAX_ROWS, h)?;
    finish(p, HELP, h)?;
    if let Some(path) = &json {
        check_json_path(path)?;
    }
    if cpu_train {
        // The GPU benchmarks' flags mean nothing here: say so rather than ignore them.
        let gpu_only = [
            ("--batch", batch_list.is_some()),
            ("--precision", precision_list.is_some()),
            ("--mano", mano_arg.is_some()),
            ("--mano-batch", mano_batch_arg.is_some()),
            ("--skip-kernels", skip_kernels),
            ("--skip-forward", skip_forward),
            ("--skip-train", skip_train),
            ("--nll-batch", nll_batch_arg.is_some()),
        ];
        if let Some((flag, _)) = gpu_only.iter().find(|(_, given)| *given) {
            return Err(Error::Input(format!(
                "{flag} applies to the GPU benchmarks, not to --cpu-train (see --help)"
            )));
        }
    }
    let batches = counts(
        batch_list.as_deref().unwrap_or("1,16,64"),
        "--batch",
        1,
        MAX_BATCH,
    )?;
    let precisions: Vec<String> = precision_list
        .as_deref()
        .unwrap_or("fp32,bf16")
        .split(',')
        .map(|v| v.trim().to_string())
        .collect();
    for pr in &precisions {
        if pr != "fp32" && pr != "bf16" {
            return Err(Error::Input(format!(
                "--precision {pr}: expected fp32 or bf16"
            )));
        }
    }
    let train_batches = counts(
        train_list
            .as_deref()
            .unwrap_or(if cpu_train { "32" } else { "64" }),
        "--train-batch",
        1,
        MAX_BATCH,
    )?;
    let mano_path = mano_arg.unwrap_or_else(|| "tests/fixtures/tiny_weights.safetensors".into());
    let mano_batch = mano_batch_arg.unwrap_or(1024);
    let nll_batch = nll_batch_arg.unwrap_or(4096);
    let mut rows: Vec<BenchRow> = Vec::new();
    if cpu_train {
        for &b in &train_batches {
            let r = handcov::train::bench::cpu_train_step(b, warmup, runs)?;
            println!(
                "cpu_train_step fp32 batch {b}: median {:.2} ms (p10 {:.2}, p90 {:.2}), {:.1} img/s, {}",
                r.median_ms,
                r.p10_ms,
                r.p90_ms,
                r.images_per_s.unwrap_or(f64::NAN),
                r.device
            );
            rows.push(r);
        }
        return write_json(json.as_ref(), &rows);
    }
    let mano_file = TensorFile::open(&mano_path)?;
    let mano = Mano::load(&mano_file)?;
    let be = CudaBackend::new(0).map_err(|e| {
        e.with_hint("bench measures the GPU; the CPU training step is `bench --cpu-train`")
    })?;
    let mut bench = Bench::new(&be, warmup, runs)?;
    println!("device: {}", bench.device);
    let emit = |r: BenchRow, rows: &mut Vec<BenchRow>| {
        print_row(&r);
        rows.push(r);
    };
    for r in bench.ceilings()? {
        emit(r, &mut rows);
    }
    if !skip_kernels {
        let data = mano.data();
        for &b in &batches {
            for pr in &precisions {
                let got = if pr == "fp32" {
                    bench.kernels::<f32>(b, &data, mano_batch)?
                } else {
                    bench.kernels::<half::bf16>(b, &data, mano_batch)?
                };
                for r in got {
                    emit(r, &mut rows);
                }
            }
        }
    }
    if !skip_forward {
        let mut cfg = ModelConfig::hamer();
        cfg.uncertainty = Uncertainty::Ours;
        let model = HandModel::random(cfg, &mano_file, 1)?;
        for &b in &batches {
            for pr in &precisions {
                let r = if pr == "fp32" {
                    bench.forward::<f32>(&model, b, GFLOP_PER_IMAGE)?
                } else {
                    bench.forward::<half::bf16>(&model, b, GFLOP_PER_IMAGE)?
                };
                emit(r, &mut rows);
            }
        }
    }
    if !skip_train {
        emit(
            handcov::train::bench::nll_exact(&mut bench, nll_batch)?,
            &mut rows,
        );
        for &b in &train_batches {
            for pr in &precisions {
                let mut cfg = ModelConfig::hamer();
                cfg.uncertainty = Uncertainty::Ours;
                let model = HandModel::random(cfg, &mano_file, 1)?;
                let r =
                    handcov::train::bench::train_step(&mut bench, model, Precision::parse(pr)?, b)?;
                emit(r, &mut rows);
            }
        }
    }
    write_json(json.as_ref(), &rows)
}

/// The rows as JSON lines, when --json was given.
/// The rows as JSON lines, written atomically (a FIFO or a link at `path` is replaced, never
/// written through).
fn write_json(json: Option<&PathBuf>, rows: &[BenchRow]) -> Result<()> {
    if let Some(path) = json {
        let mut text = String::new();
        for r in rows {
            let line = serde_json::to_string(r)
                .map_err(|e| Error::Input(format!("cannot encode a result: {e}")))?;
            text.push_str(&line);
            text.push('\n');
        }
        write_atomic(path, text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `--json OUT`: its folder must exist and OUT must not be a directory, checked before the
/// benchmarks run (they take minutes).
fn check_json_path(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if path.is_dir() || !dir.is_dir() {
        return Err(Error::Input(format!(
            "--json {}: expected a file name in an existing directory",
            path.display()
        )));
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {}", e.one_line());
        std::process::exit(2);
    }
}
