//! `eval predict`: run a model over an evaluation set and write the reference's result files.
//! See `eval predict --help` and eval/README.md.

use handcov::cli;
use handcov::cli::required;
use handcov::engine::{DeviceChoice, Engine, Precision};
use handcov::error::{Error, Result};
use handcov::eval::files::{check_not_an_input, check_regular_file, Dataset};
use handcov::eval::predict::{
    check_images, load_eval_set, predict, write_outputs, EvalSample, OutputPaths,
};
use handcov::infer::{load_model, ModelSpec};
use handcov::model::config::{ModelConfig, Uncertainty};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const HELP: &str = "\
eval predict: run a model over a FreiHAND / HO-3D evaluation set (SPEC §9.1-9.2)

USAGE:
  eval predict --dataset freihand|ho3d --samples SAMPLES.json --weights W.safetensors
               --exp NAME [options]

  SAMPLES.json is the evaluation set: the samples in output order, each an image path and its
  box (eval/convert_eval_boxes.py writes it from the reference's freihand_val.npz /
  ho3d_val.npz; format in eval/README.md). Crops follow the evaluation rule (box expanded to
  3:4, square crop, no blur); left hands are mirrored in and un-mirrored out.

  Writes, under OUT/NAME/:
    DATASET-val.json                     [xyz_list, verts_list]: N x 21 x 3 joints and
                                         N x 778 x 3 vertices, metres, MANO frame (no camera
                                         translation, no root centring); HO-3D joint order for
                                         ho3d, vertices never re-ordered
    DATASET-val_uncertainty.json         [uncertainty_list]: N x 21, trace of each joint's 3x3
                                         covariance block (m^2), same joint order
    DATASET-val_covariance.safetensors   `covariance` f32 [N,63,63] (m^2), index 3*joint+coord
                                         in the same joint order; metadata `uncertainty`
  A model without an uncertainty head writes only DATASET-val.json.

OPTIONS:
  --dataset NAME          freihand or ho3d (joint order and file names)
  --samples FILE          the evaluation set (JSON)
  --data ROOT             directory the samples' relative image paths start from
                          (default: the directory of SAMPLES.json)
  --weights FILE          model weights (safetensors; see weights/README.md)
  --exp NAME              experiment name: the output directory OUT/NAME
  --out DIR               default `results`
  --config NAME_OR_FILE   preset `hamer` (default) or `tiny`, or a model config JSON
  --uncertainty TYPE      none|diag|full|ours|ours_wo_linear (default: the config file's value;
                          with a preset, detected from the weights)
  --mano M.safetensors    take the MANO model from this file
  --allow-extra           accept tensors in the weights that the model does not use
  --device cpu|cuda|auto  default auto: the GPU when one is usable, else the CPU
  --precision fp32|bf16   GPU numerics (default fp32, the reference's evaluation precision)
  --batch N               images per forward pass, 1 to 1024 (default 16, as the reference)
  --threads N             CPU threads, 1 to 1024 (default: all cores)
  --limit K               evaluate only the first K samples, at most the set's size (smoke
                          tests; the metrics expect the whole set)
  -h, --help              this text

Every missing or unreadable image, malformed evaluation set or bad flag is one `error: ...`
line and exit code 2; no sample is ever skipped. The output directory is created and checked
before any work: one that cannot be written, or an output file that is one of the inputs,
stops the run at once.
";

struct Args {
    dataset: Dataset,
    samples: PathBuf,
    data: Option<PathBuf>,
    exp: String,
    out: PathBuf,
    model: ModelSpec,
    device: DeviceChoice,
    precision: Precision,
    batch: usize,
    threads: Option<usize>,
    limit: Option<usize>,
}

const SEE: &str = "eval predict --help";

/// The most images per forward pass `--batch` accepts (the reference uses 16; one image is
/// 0.6 MB of input alone, and every layer's activations grow with the batch).
const MAX_BATCH: usize = 1024;

fn parse_args(mut p: pico_args::Arguments) -> Result<Option<Args>> {
    if p.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(None);
    }
    let dataset: String = required(&mut p, "--dataset", SEE)?;
    let args = Args {
        dataset: Dataset::parse(&dataset)?,
        samples: required(&mut p, "--samples", SEE)?,
        data: cli::opt(&mut p, "--data", SEE)?,
        exp: required(&mut p, "--exp", SEE)?,
        out: cli::opt(&mut p, "--out", SEE)?.unwrap_or_else(|| PathBuf::from("results")),
        model: ModelSpec {
            config: cli::opt(&mut p, "--config", SEE)?.unwrap_or_else(|| "hamer".to_string()),
            uncertainty: cli::opt(&mut p, "--uncertainty", SEE)?,
            weights: required(&mut p, "--weights", SEE)?,
            mano: cli::opt(&mut p, "--mano", SEE)?,
            allow_extra: p.contains("--allow-extra"),
        },
        device: DeviceChoice::parse(
            &cli::opt::<String>(&mut p, "--device", SEE)?.unwrap_or_else(|| "auto".into()),
        )?,
        precision: Precision::parse(
            &cli::opt::<String>(&mut p, "--precision", SEE)?.unwrap_or_else(|| "fp32".into()),
        )?,
        batch: cli::count(&mut p, "--batch", 1, MAX_BATCH, SEE)?.unwrap_or(16),
        threads: cli::threads(&mut p, SEE)?,
        // Bounded by the set's size once it is read.
        limit: cli::opt(&mut p, "--limit", SEE)?,
    };
    cli::finish(p, HELP, SEE)?;
    if args.exp.is_empty() || args.exp == "." || args.exp == ".." || args.exp.contains(['/', '\\'])
    {
        return Err(Error::Input(format!(
            "--exp {:?}: an experiment name is one directory name (no `/`)",
            args.exp
        )));
    }
    if let Some(u) = &args.model.uncertainty {
        Uncertainty::parse(u)?;
    }
    Ok(Some(args))
}

/// The model's files (weights, MANO, a config file rather than a preset) are regular files.
fn check_model_files(m: &ModelSpec) -> Result<()> {
    check_regular_file(&m.weights)?;
    if let Some(mano) = &m.mano {
        check_regular_file(mano)?;
    }
    if ModelConfig::preset(&m.config).is_none() {
        check_regular_file(Path::new(&m.config))?;
    }
    Ok(())
}

/// Before any work: the output directory can be created and written, no output file is a
/// directory, and none is one of the inputs (writing it would destroy that input).
fn check_outputs(
    args: &Args,
    dir: &Path,
    paths: &OutputPaths,
    samples: &[EvalSample],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::Input(format!(
            "--out {}: cannot create the output directory {} ({e})",
            args.out.display(),
            dir.display()
        ))
    })?;
    let probe = dir.join(format!(".eval-predict-probe{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| {
            Error::Input(format!(
                "--out {}: cannot write into {} ({e})",
                args.out.display(),
                dir.display()
            ))
        })?;
    let _ = std::fs::remove_file(&probe);
    let mut inputs: Vec<(&str, &Path)> = vec![
        ("--samples", &args.samples),
        ("--weights", &args.model.weights),
    ];
    if let Some(m) = &args.model.mano {
        inputs.push(("--mano", m));
    }
    if ModelConfig::preset(&args.model.config).is_none() {
        inputs.push(("--config", Path::new(&args.model.config)));
    }
    inputs.extend(
        samples
            .iter()
            .map(|s| ("an evaluation image", s.path.as_path())),
    );
    for out in [&paths.predictions, &paths.uncertainty, &paths.covariance] {
        if out.is_dir() {
            return Err(Error::Input(format!(
                "{}: the output file is a directory",
                out.display()
            )));
        }
        check_not_an_input("--out", out, &inputs)?;
    }
    Ok(())
}

fn rate(done: usize, elapsed: Duration) -> f64 {
    done as f64 / elapsed.as_secs_f64().max(1e-9)
}

pub fn run(p: pico_args::Arguments) -> Result<()> {
    let Some(args) = parse_args(p)? else {
        return Ok(());
    };
    cli::set_threads(args.threads)?;
    check_regular_file(&args.samples)?;
    check_model_files(&args.model)?;
    let set = load_eval_set(&args.samples, args.data.as_deref())?;
    if let Some(d) = &set.dataset {
        if d != args.dataset.name() {
            return Err(Error::Input(format!(
                "{}: the evaluation set is for dataset \"{d}\" but --dataset is {}",
                args.samples.display(),
                args.dataset.name()
            )));
        }
    }
    let mut samples = set.samples;
    if let Some(k) = args.limit {
        if !(1..=samples.len()).contains(&k) {
            return Err(Error::Input(format!(
                "--limit {k}: expected 1 to {}, the number of samples in {}",
                samples.len(),
                args.samples.display()
            )));
        }
        samples.truncate(k);
    }
    // Every image and the output location are checked before the model is loaded: a missing
    // file or an unwritable --out fails in seconds, not after hours of work.
    check_images(&samples)?;
    let dir = args.out.join(&args.exp);
    let paths = OutputPaths::new(&dir, args.dataset);
    check_outputs(&args, &dir, &paths, &samples)?;
    let model = load_model(&args.model)?;
    let uncertainty = model.config.uncertainty;
    let mut engine = Engine::new(model, args.device, args.precision, false)?;
    eprintln!(
        "eval predict: {} samples of {} ({}), model `{}` on {}, batch {}",
        samples.len(),
        args.dataset.name(),
        args.samples.display(),
        uncertainty.name(),
        engine.describe(),
        args.batch
    );
    let official = args.dataset.official_n();
    if args.limit.is_none() && samples.len() != official {
        eprintln!(
            "note: the official {} evaluation split has {official} images; the metrics of this \
             set are not comparable with published numbers",
            args.dataset.name()
        );
    }
    let start = Instant::now();
    let mut last = start;
    let preds = predict(&mut engine, &samples, args.dataset, args.batch, |pr| {
        if last.elapsed() >= Duration::from_secs(10) && pr.done < pr.total {
            last = Instant::now();
            eprintln!(
                "  {} / {} images, {:.2} images/s",
                pr.done,
                pr.total,
                rate(pr.done, pr.elapsed)
            );
        }
    })?;
    eprintln!(
        "  {} / {} images in {:.1} s, {:.2} images/s",
        preds.n,
        samples.len(),
        start.elapsed().as_secs_f64(),
        rate(preds.n, start.elapsed())
    );
    let written = write_outputs(&paths, &preds, uncertainty.name())?;
    if uncertainty == Uncertainty::None {
        eprintln!(
            "note: the model has no uncertainty head: only {} is written",
            paths.predictions.display()
        );
        for stale in [&paths.uncertainty, &paths.covariance] {
            if stale.exists() {
                eprintln!(
                    "warning: {} is from an earlier run and was not updated",
                    stale.display()
                );
            }
        }
    }
    for w in &written {
        eprintln!("wrote {}", w.display());
    }
    Ok(())
}
