//! `infer`: run the model on a normalised input tensor (tensor mode) or on images (image mode).
//! See `infer --help`.

use handcov::engine::{DeviceChoice, Engine, Precision};
use handcov::error::{Error, Result};
use handcov::infer::{
    boxes_for, collect_images, hand_json, hand_render, hand_vertices, load_image, make_crop,
    obj_text, parse_boxes, render_image, stack, HandCrop, HandRender, ModelSpec,
};
use handcov::model::weights::{save_f32, write_atomic, TensorFile};
use handcov::model::HandModel;
use handcov::synth::draw::save_png;
use std::path::{Path, PathBuf};

const HELP: &str = "\
infer: 3D hand pose with per-joint uncertainty (HaMeR + uncertainty heads)

USAGE (tensor mode):
  infer --weights W.safetensors --input-tensor X.safetensors --dump OUT.safetensors [options]
      X holds `img` f32 [B,3,S,S], normalised square crops (S = image_size, 256 for hamer).
      OUT gets every output tensor (see README).
USAGE (image mode):
  infer --weights W.safetensors --images FILE_OR_DIR [--images ...] --out DIR [options]
      [--boxes boxes.json] [--obj] [--render] [--batch N]
      One JSON per image in DIR (and one OBJ mesh per hand with --obj). --render also writes
      <name>_render.png: the image with each hand's shaded mesh, skeleton and per-joint 2σ
      ellipses (the projected 3D covariance), through the full-image camera (cam_t_full,
      focal_length_full, principal point at the image centre).

OPTIONS:
  --config NAME_OR_FILE   preset `hamer` (default) or `tiny`, or a model config JSON
  --uncertainty TYPE      none|diag|full|ours|ours_wo_linear (default: the config file's value;
                          with a preset, detected from the weights)
  --mano M.safetensors    take the MANO model from this file (see weights/README.md)
  --allow-extra           accept tensors in the weights that the model does not use (by
                          default each one is an error, which catches a wrong config)
  --device cpu|cuda|auto  default auto: the GPU when one is usable, else the CPU
  --precision fp32|bf16   GPU numerics (default fp32, TF32 off; bf16: bf16 weights and
                          activations with fp32 accumulation, statistics, MANO and covariance)
  --cuda-graph            replay the GPU forward as a CUDA graph per batch size
  --threads N             CPU threads (default: all cores)
  --batch N               hands per forward pass in image mode (default 8)
  --repeat N              tensor mode: time N forward passes after one warm-up and print the
                          median and minimum per image (the dump is from the last pass)
  -h, --help              this text
";

struct Args {
    config: String,
    uncertainty: Option<String>,
    weights: PathBuf,
    mano: Option<PathBuf>,
    device: String,
    precision: String,
    cuda_graph: bool,
    threads: Option<usize>,
    input_tensor: Option<PathBuf>,
    dump: Option<PathBuf>,
    images: Vec<PathBuf>,
    boxes: Option<PathBuf>,
    out: Option<PathBuf>,
    obj: bool,
    render: bool,
    allow_extra: bool,
    /// Image mode: hands per forward pass.
    batch: Option<usize>,
    /// Tensor mode: timed passes.
    repeat: Option<usize>,
}

/// The most timed passes `--repeat` takes.
const MAX_REPEAT: usize = 100_000;
/// The most hands per forward pass `--batch` takes.
const MAX_BATCH: usize = 4096;

fn parse_args() -> Result<Option<Args>> {
    use handcov::cli::{count, finish, opt, required, threads};
    let mut p = pico_args::Arguments::from_env();
    if p.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(None);
    }
    let h = "--help";
    let args = Args {
        config: opt(&mut p, "--config", h)?.unwrap_or_else(|| "hamer".to_string()),
        uncertainty: opt(&mut p, "--uncertainty", h)?,
        weights: required(&mut p, "--weights", h)?,
        mano: opt(&mut p, "--mano", h)?,
        device: opt(&mut p, "--device", h)?.unwrap_or_else(|| "auto".to_string()),
        precision: opt(&mut p, "--precision", h)?.unwrap_or_else(|| "fp32".to_string()),
        cuda_graph: p.contains("--cuda-graph"),
        threads: threads(&mut p, h)?,
        input_tensor: opt(&mut p, "--input-tensor", h)?,
        dump: opt(&mut p, "--dump", h)?,
        images: p
            .values_from_str("--images")
            .map_err(|e| Error::Input(format!("--images: {e} (see --help)")))?,
        boxes: opt(&mut p, "--boxes", h)?,
        out: opt(&mut p, "--out", h)?,
        obj: p.contains("--obj"),
        render: p.contains("--render"),
        allow_extra: p.contains("--allow-extra"),
        batch: count(&mut p, "--batch", 1, MAX_BATCH, h)?,
        repeat: count(&mut p, "--repeat", 1, MAX_REPEAT, h)?,
    };
    finish(p, HELP, h)?;
    let paths = [
        ("--weights", Some(&args.weights)),
        ("--mano", args.mano.as_ref()),
        ("--input-tensor", args.input_tensor.as_ref()),
        ("--dump", args.dump.as_ref()),
        ("--boxes", args.boxes.as_ref()),
        ("--out", args.out.as_ref()),
    ];
    let images = args.images.iter().map(|p| ("--images", Some(p)));
    for (flag, path) in paths.into_iter().chain(images) {
        if path.is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(Error::Input(format!("{flag}: the path is empty")));
        }
    }
    Ok(Some(args))
}

fn load_model(args: &Args) -> Result<HandModel> {
    handcov::infer::load_model(&ModelSpec {
        config: args.config.clone(),
        uncertainty: args.uncertainty.clone(),
        weights: args.weights.clone(),
        mano: args.mano.clone(),
        allow_extra: args.allow_extra,
    })
}

fn run_tensor_mode(
    engine: &mut Engine,
    input: &Path,
    dump: &Path,
    repeat: Option<usize>,
) -> Result<()> {
    let file = TensorFile::open(input).map_err(Error::as_input)?;
    if !file.contains("img") {
        return Err(Error::Input(format!(
            "{}: no tensor named `img` (expected f32 [B,3,S,S])",
            input.display()
        )));
    }
    let img = file.f32("img", None).map_err(Error::as_input)?;
    let mut pred = engine.forward(&img)?;
    if let Some(repeat) = repeat {
        let b = img.dim(0) as f64;
        let mut ms = Vec::with_capacity(repeat);
        for _ in 0..repeat {
            let t0 = std::time::Instant::now();
            pred = engine.forward(&img)?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3 / b);
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "{{\"engine\": \"handcov\", \"device\": \"{}\", \"batch\": {}, \"threads\": {}, \"runs\": {repeat}, \"median_ms_per_image\": {:.3}, \"min_ms_per_image\": {:.3}}}",
            engine.describe(),
            img.dim(0),
            rayon::current_num_threads(),
            ms[ms.len() / 2],
            ms[0]
        );
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert(
        "uncertainty".to_string(),
        engine.model().config.uncertainty.name().to_string(),
    );
    meta.insert("device".to_string(), engine.describe());
    save_f32(dump, &pred.named(), Some(meta))?;
    eprintln!("wrote {} ({} samples)", dump.display(), img.dim(0));
    Ok(())
}

fn run_image_mode(
    engine: &mut Engine,
    args: &Args,
    images: &[PathBuf],
    names: &[String],
    out_dir: &Path,
) -> Result<()> {
    let boxes = match &args.boxes {
        Some(p) => {
            let text = handcov::textfile::read_text(p, "boxes file", 1 << 28)?;
            Some(parse_boxes(&text, &p.display().to_string())?)
        }
        None => None,
    };
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let size = engine.model().config.image_size;
    // Load and crop everything first, so that a bad image fails before any work is written.
    let mut loaded = Vec::with_capacity(images.len());
    let mut hands: Vec<HandCrop> = Vec::new();
    for (i, path) in images.iter().enumerate() {
        let img = load_image(path)?;
        for b in boxes_for(path, &img, boxes.as_ref())? {
            hands.push(make_crop(i, &img, b, size));
        }
        loaded.push(img);
    }
    let mut results: Vec<Vec<serde_json::Value>> = vec![Vec::new(); images.len()];
    let mut objs: Vec<Vec<String>> = vec![Vec::new(); images.len()];
    let mut renders: Vec<Vec<HandRender>> = (0..images.len()).map(|_| Vec::new()).collect();
    for chunk in hands.chunks(args.batch.unwrap_or(8)) {
        let refs: Vec<&HandCrop> = chunk.iter().collect();
        let pred = engine.forward(&stack(&refs, size)?)?;
        let model = engine.model();
        for (k, hand) in chunk.iter().enumerate() {
            let v = hand_json(model, &pred, k, hand, &loaded[hand.image_index]);
            if args.obj {
                let verts = hand_vertices(&pred, k, hand.cbox.is_right);
                objs[hand.image_index].push(obj_text(
                    &verts,
                    &model.mano.faces,
                    hand.cbox.is_right,
                ));
            }
            if args.render {
                let img = &loaded[hand.image_index];
                renders[hand.image_index].push(hand_render(model, &pred, k, hand, img)?);
            }
            results[hand.image_index].push(v);
        }
    }
    for (i, (path, stem)) in images.iter().zip(names).enumerate() {
        let doc = serde_json::json!({
            "image": path.to_string_lossy(),
            "width": loaded[i].width,
            "height": loaded[i].height,
            "uncertainty": engine.model().config.uncertainty.name(),
            "hands": results[i],
        });
        let text = serde_json::to_string(&doc)
            .map_err(|e| Error::Input(format!("cannot encode results: {e}")))?;
        write_atomic(&out_dir.join(format!("{stem}.json")), text.as_bytes())?;
        for (k, obj) in objs[i].iter().enumerate() {
            write_atomic(&out_dir.join(format!("{stem}_{k}.obj")), obj.as_bytes())?;
        }
        if args.render {
            let picture = render_image(&loaded[i], &renders[i], &engine.model().mano.faces)?;
            save_png(&out_dir.join(format!("{stem}_render.png")), &picture)?;
        }
    }
    eprintln!(
        "wrote results for {} images ({} hands) to {}",
        images.len(),
        hands.len(),
        out_dir.display()
    );
    Ok(())
}

/// Flags of the other mode are errors, not silently ignored.
fn check_mode_flags(args: &Args, tensor_mode: bool) -> Result<()> {
    let only = |flag: &str, given: bool, mode: &str| -> Result<()> {
        if given {
            return Err(Error::Input(format!(
                "{flag} applies to {mode} mode only (see --help)"
            )));
        }
        Ok(())
    };
    if tensor_mode {
        only("--obj", args.obj, "image")?;
        only("--render", args.render, "image")?;
        only("--batch", args.batch.is_some(), "image")?;
    } else {
        only("--repeat", args.repeat.is_some(), "tensor")?;
    }
    if args.cuda_graph && args.device == "cpu" {
        return Err(Error::Input(
            "--cuda-graph replays the GPU forward; it does not apply to --device cpu".into(),
        ));
    }
    Ok(())
}

fn run() -> Result<()> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    handcov::cli::set_threads(args.threads)?;
    let tensor_mode = args.input_tensor.is_some() || args.dump.is_some();
    let image_mode = !args.images.is_empty() || args.out.is_some() || args.boxes.is_some();
    if tensor_mode == image_mode {
        return Err(Error::Input(
            "give either --input-tensor X --dump OUT (tensor mode) or --images ... --out DIR (image mode); see --help".into(),
        ));
    }
    check_mode_flags(&args, tensor_mode)?;
    let device = DeviceChoice::parse(&args.device)?;
    let precision = Precision::parse(&args.precision)?;
    if tensor_mode {
        let (Some(input), Some(dump)) = (&args.input_tensor, &args.dump) else {
            return Err(Error::Input(
                "tensor mode needs both --input-tensor and --dump".into(),
            ));
        };
        let inputs = [
            ("--weights", Some(&args.weights)),
            ("--mano", args.mano.as_ref()),
            ("--input-tensor", Some(input)),
        ];
        for (flag, p) in inputs {
            if let Some(p) = p {
                handcov::cli::check_distinct("--dump", dump, flag, p)?;
            }
        }
        let mut engine = Engine::new(load_model(&args)?, device, precision, args.cuda_graph)?;
        run_tensor_mode(&mut engine, input, dump, args.repeat)
    } else {
        let Some(out) = &args.out else {
            return Err(Error::Input("image mode needs --out DIR".into()));
        };
        if args.images.is_empty() {
            return Err(Error::Input(
                "image mode needs at least one --images FILE_OR_DIR".into(),
            ));
        }
        if out.is_file() {
            return Err(Error::Input(format!(
                "--out {}: is a file; --out names the directory the results go to",
                out.display()
            )));
        }
        let images = collect_images(&args.images)?;
        let names = output_names(&images, out, args.render)?;
        let mut engine = Engine::new(load_model(&args)?, device, precision, args.cuda_graph)?;
        run_image_mode(&mut engine, &args, &images, &names, out)
    }
}

/// Each image's output stem. Two images with the same stem (`a/x.jpg`, `b/x.png`) would
/// overwrite each other's results, and an output must not land on an input image: both are
/// errors before any work.
fn output_names(images: &[PathBuf], out: &Path, render: bool) -> Result<Vec<String>> {
    let mut seen: std::collections::HashMap<String, &Path> = std::collections::HashMap::new();
    let mut names = Vec::with_capacity(images.len());
    for (i, path) in images.iter().enumerate() {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| format!("image{i}"));
        if let Some(other) = seen.insert(stem.clone(), path) {
            return Err(Error::Input(format!(
                "{} and {} would both write {stem}.json to --out; give them different names \
                 (or run them separately)",
                other.display(),
                path.display()
            )));
        }
        names.push(stem);
    }
    if render {
        // Only `<stem>_render.png` can be an image the input list holds.
        let inputs: std::collections::HashSet<PathBuf> = images
            .iter()
            .filter_map(|p| p.canonicalize().ok())
            .collect();
        for (stem, path) in names.iter().zip(images) {
            let target = out.join(format!("{stem}_render.png"));
            if target.canonicalize().is_ok_and(|t| inputs.contains(&t)) {
                return Err(Error::Input(format!(
                    "--render would overwrite the input image {} with the rendering of {}; \
                     choose another --out",
                    target.display(),
                    path.display()
                )));
            }
        }
    }
    Ok(names)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {}", e.one_line());
        std::process::exit(2);
    }
}
