//! `eval pose`: the FreiHAND pose metrics of a predictions file (SPEC §9.4).

use handcov::cli;
use handcov::cli::required;
use handcov::error::{Error, Result};
use handcov::eval::files::{check_not_an_input, Dataset};
use handcov::model::weights::write_atomic;
use std::path::PathBuf;

const HELP: &str = "\
eval pose: PA-MPJPE, PA-MPVPE, AUC_J, AUC_V, F@5mm, F@15mm (FreiHAND procedure, SPEC §9.4),
plus unaligned and root-aligned MPJPE

USAGE:
  eval pose --dataset freihand|ho3d --pred FILE --gt-dir DIR [--out FILE.json] [--threads N]

OPTIONS:
  --dataset NAME    freihand or ho3d (labels the output; both use the same procedure)
  --pred FILE       predictions {dataset}-val.json: [xyz_list N×21×3, verts_list N×778×3], metres
  --gt-dir DIR      holds evaluation_xyz.json (N×21×3) and evaluation_verts.json (N×778×3)
  --out FILE        the metrics as JSON (default: pose_metrics.json beside --pred); keys
                    pa_mpjpe_mm, pa_mpvpe_mm, auc_j, auc_v, f5, f15, mpjpe_mm, root_mpjpe_mm, n,
                    dataset; never one of the input files
  --threads N       worker threads, 1 to 1024 (default: all cores)
  -h, --help        this text

Joints and vertices are Procrustes-aligned independently per sample (align_w_scale); AUC and
F-scores use the aligned sets. For ho3d both files are in HO-3D joint order and the GT is in the
OpenGL camera frame while predictions are in the MANO frame: Procrustes absorbs that, but the
unaligned and root-aligned MPJPE are then frame-dependent.
";

const SEE: &str = "eval pose --help";

pub fn run(mut p: pico_args::Arguments) -> Result<()> {
    if p.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(());
    }
    let dataset: String = required(&mut p, "--dataset", SEE)?;
    let pred: PathBuf = required(&mut p, "--pred", SEE)?;
    let gt_dir: PathBuf = required(&mut p, "--gt-dir", SEE)?;
    let out: Option<PathBuf> = cli::opt(&mut p, "--out", SEE)?;
    let threads = cli::threads(&mut p, SEE)?;
    cli::finish(p, HELP, SEE)?;
    let dataset = Dataset::parse(&dataset)?;
    cli::set_threads(threads)?;
    let out = out.unwrap_or_else(|| {
        pred.parent()
            .map(|d| d.join("pose_metrics.json"))
            .unwrap_or_else(|| PathBuf::from("pose_metrics.json"))
    });
    let gt_xyz = gt_dir.join("evaluation_xyz.json");
    let gt_verts = gt_dir.join("evaluation_verts.json");
    check_not_an_input(
        "--out",
        &out,
        &[
            ("--pred", &pred),
            ("the ground truth", &gt_xyz),
            ("the ground truth", &gt_verts),
        ],
    )?;
    let m = handcov::eval::pose::evaluate(&pred, &gt_dir)?;
    let text = serde_json::to_string_pretty(&m.to_json(dataset.name()))
        .map_err(|e| Error::Input(format!("cannot serialise the metrics: {e}")))?;
    write_atomic(&out, format!("{text}\n").as_bytes())?;
    print!("{}", m.table());
    println!("wrote {}", out.display());
    Ok(())
}
