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
    batch: usize,
    repeat: usize,
}

fn arg_err(e: pico_args::Error) -> Error {
    Error::Input(format!("{e} (see --help)"))
}

/// An optional `--flag VALUE`, with the flag named in a parse error.
fn opt<T: std::str::FromStr>(p: &mut pico_args::Arguments, flag: &'static str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    p.opt_value_from_fn(flag, |v| v.parse::<T>().map_err(|e| format!("{e}")))
        .map_err(|e| Error::Input(format!("{flag}: {e} (see --help)")))
}

fn parse_args() -> Result<Option<Args>> {
    let mut p = pico_args::Arguments::from_env();
    if p.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(None);
    }
    let args = Args {
        config: opt(&mut p, "--config")?.unwrap_or_else(|| "hamer".to_string()),
        uncertainty: opt(&mut p, "--uncertainty")?,
        weights: p.value_from_str("--weights").map_err(arg_err)?,
        mano: opt(&mut p, "--mano")?,
        device: opt(&mut p, "--device")?.unwrap_or_else(|| "auto".to_string()),
        precision: opt(&mut p, "--precision")?.unwrap_or_else(|| "fp32".to_string()),
        cuda_graph: p.contains("--cuda-graph"),
        threads: opt(&mut p, "--threads")?,
        input_tensor: opt(&mut p, "--input-tensor")?,
        dump: opt(&mut p, "--dump")?,
        images: p.values_from_str("--images").map_err(arg_err)?,
        boxes: opt(&mut p, "--boxes")?,
        out: opt(&mut p, "--out")?,
        obj: p.contains("--obj"),
        render: p.contains("--render"),
        allow_extra: p.contains("--allow-extra"),
        batch: opt(&mut p, "--batch")?.unwrap_or(8),
        repeat: opt(&mut p, "--repeat")?.unwrap_or(0),
    };
    let rest = p.finish();
    if let Some(first) = rest.first() {
        return Err(Error::Input(format!(
            "unexpected argument {:?} (see --help)",
            first
        )));
    }
    if args.batch == 0 {
        return Err(Error::Input("--batch must be at least 1".into()));
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

fn run_tensor_mode(engine: &mut Engine, input: &Path, dump: &Path, repeat: usize) -> Result<()> {
    let file = TensorFile::open(input)?;
    if !file.contains("img") {
        return Err(Error::Input(format!(
            "{}: no tensor named `img` (expected f32 [B,3,S,S])",
            input.display()
        )));
    }
    let img = file.f32("img", None)?;
    let mut pred = engine.forward(&img)?;
    if repeat > 0 {
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

fn run_image_mode(engine: &mut Engine, args: &Args, out_dir: &Path) -> Result<()> {
    let images = collect_images(&args.images)?;
    let boxes = match &args.boxes {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
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
    for chunk in hands.chunks(args.batch) {
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
    for (i, path) in images.iter().enumerate() {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| format!("image{i}"));
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

fn run() -> Result<()> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(|e| Error::Input(format!("--threads: {e}")))?;
    }
    let tensor_mode = args.input_tensor.is_some() || args.dump.is_some();
    let image_mode = !args.images.is_empty() || args.out.is_some() || args.boxes.is_some();
    if tensor_mode == image_mode {
        return Err(Error::Input(
            "give either --input-tensor X --dump OUT (tensor mode) or --images ... --out DIR (image mode); see --help".into(),
        ));
    }
    let device = DeviceChoice::parse(&args.device)?;
    let precision = Precision::parse(&args.precision)?;
    let mut engine = Engine::new(load_model(&args)?, device, precision, args.cuda_graph)?;
    if tensor_mode {
        let (Some(input), Some(dump)) = (&args.input_tensor, &args.dump) else {
            return Err(Error::Input(
                "tensor mode needs both --input-tensor and --dump".into(),
            ));
        };
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
        run_image_mode(&mut engine, &args, out)
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}
