//! Training checkpoints in safetensors: every model parameter under its state-dict name (so a
//! checkpoint is also a weights file `infer` reads), the AdamW moments (`optim.exp_avg.<name>`,
//! `optim.exp_avg_sq.<name>`), the discriminator and its moments (`discriminator.*`,
//! `optim_disc.*`), and in the metadata the step, the seed and the data cursor. Written through
//! a temporary file and a rename, and never with a non-finite value.

use super::adamw::AdamW;
use super::discriminator::Discriminator;
use crate::error::{Error, Result};
use crate::model::weights::{save_tensors, TensorFile};
use crate::model::HandModel;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::path::Path;

/// Where training stands, besides the tensors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainState {
    pub step: u64,
    pub seed: u64,
    /// Data cursor (epoch, position), meaningful to the data source that wrote it.
    pub cursor: (u64, u64),
    pub skipped_steps: u64,
}

fn tensor(shape_len: usize, v: &[f32]) -> Result<Tensor> {
    Tensor::from_vec(&[shape_len], v.to_vec())
}

/// Writes a checkpoint atomically. Refuses to write a non-finite value.
pub fn save(
    path: &Path,
    model: &mut HandModel,
    opt: &AdamW,
    disc: Option<(&Discriminator<f32>, &AdamW)>,
    state: &TrainState,
) -> Result<()> {
    let mut owned: Vec<(String, Tensor)> = Vec::new();
    let mut push = |name: String, t: Tensor| -> Result<()> {
        if let Some(i) = t.data().iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!(
                "refusing to checkpoint: `{name}` holds a non-finite value at {i}"
            )));
        }
        owned.push((name, t));
        Ok(())
    };
    let patch = patch_shape(model);
    for (name, t) in model.params_mut() {
        let shape = stored_shape(&patch, &name, t);
        push(name.clone(), Tensor::from_vec(&shape, t.data().to_vec())?)?;
    }
    for (name, m) in &opt.exp_avg {
        push(format!("optim.exp_avg.{name}"), tensor(m.len(), m)?)?;
    }
    for (name, v) in &opt.exp_avg_sq {
        push(format!("optim.exp_avg_sq.{name}"), tensor(v.len(), v)?)?;
    }
    if let Some((d, dopt)) = disc {
        for (name, shape, v) in d.tensors() {
            push(name, Tensor::from_vec(&shape, v.to_vec())?)?;
        }
        for (name, m) in &dopt.exp_avg {
            push(format!("optim_disc.exp_avg.{name}"), tensor(m.len(), m)?)?;
        }
        for (name, v) in &dopt.exp_avg_sq {
            push(format!("optim_disc.exp_avg_sq.{name}"), tensor(v.len(), v)?)?;
        }
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "handcov-checkpoint-1".to_string());
    meta.insert("step".to_string(), state.step.to_string());
    meta.insert("optim_step".to_string(), opt.step.to_string());
    meta.insert(
        "optim_disc_step".to_string(),
        disc.map(|(_, o)| o.step).unwrap_or(0).to_string(),
    );
    meta.insert("seed".to_string(), state.seed.to_string());
    meta.insert(
        "cursor".to_string(),
        format!("{},{}", state.cursor.0, state.cursor.1),
    );
    meta.insert("skipped_steps".to_string(), state.skipped_steps.to_string());
    meta.insert(
        "uncertainty".to_string(),
        model.config.uncertainty.name().to_string(),
    );
    // The buffers travel with the checkpoint (the mean parameters and the MANO model), so it is
    // a complete weights file for `infer`.
    let h = &model.mano_head;
    for (name, t) in [
        ("mano_head.init_hand_pose", &h.init_hand_pose),
        ("mano_head.init_betas", &h.init_betas),
        ("mano_head.init_cam", &h.init_cam),
    ] {
        owned.push((name.to_string(), t.clone()));
    }
    let m = &model.mano;
    for (name, t) in [
        ("mano.v_template", &m.v_template),
        ("mano.shapedirs", &m.shapedirs),
        ("mano.posedirs", &m.posedirs),
        ("mano.J_regressor", &m.j_regressor),
        ("mano.lbs_weights", &m.lbs_weights),
    ] {
        owned.push((name.to_string(), t.clone()));
    }
    let mut parents: Vec<i64> = m.parents.iter().map(|&p| p as i64).collect();
    parents[0] = -1;
    let ints = vec![
        ("mano.parents", vec![parents.len()], parents),
        (
            "mano.extra_joints_idxs",
            vec![5],
            m.tips.iter().map(|&t| t as i64).collect(),
        ),
        (
            "mano.faces_tensor",
            vec![m.faces.len(), 3],
            m.faces
                .iter()
                .flat_map(|f| f.iter().map(|&v| v as i64))
                .collect(),
        ),
    ];
    let refs: Vec<(&str, &Tensor)> = owned.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_tensors(path, &refs, &ints, Some(meta))
}

/// A non-negative integer of the metadata; missing and invalid are told apart.
fn meta_u64(meta: &HashMap<String, String>, key: &str, path: &Path) -> Result<u64> {
    let v = meta.get(key).ok_or_else(|| {
        Error::Weights(format!(
            "{}: checkpoint metadata lacks `{key}`",
            path.display()
        ))
    })?;
    v.parse().map_err(|_| {
        Error::Weights(format!(
            "{}: checkpoint metadata `{key}` = {v:?} is not a non-negative integer",
            path.display()
        ))
    })
}

/// A checkpoint's tensor holds only finite values (`save` never writes another).
fn finite(path: &Path, name: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(Error::Weights(format!(
            "{}: `{name}` holds a non-finite value ({}) at {i}",
            path.display(),
            v[i]
        ))),
        None => Ok(()),
    }
}

/// The shape a parameter is stored under: its own, except the patch-embedding weight, kept
/// flattened `[C, 3·P·P]` in memory and stored as PyTorch's `[C, 3, P, P]` (`patch`), so that
/// the checkpoint is a weights file.
fn stored_shape(patch: &[usize], name: &str, t: &Tensor) -> Vec<usize> {
    if name == "backbone.patch_embed.proj.weight" {
        patch.to_vec()
    } else {
        t.shape().to_vec()
    }
}

fn patch_shape(model: &HandModel) -> Vec<usize> {
    let v = &model.config.vit;
    vec![v.embed_dim, 3, v.patch_size, v.patch_size]
}

/// Restores a checkpoint into `model` (whose structure must match), the optimisers and the
/// discriminator; returns the training state. Anything that would not let the run continue
/// bit for bit is an error: a tensor of another shape, a missing, mis-sized or negative
/// optimiser moment (or a non-finite one), invalid metadata.
pub fn load(
    path: &Path,
    model: &mut HandModel,
    opt: &mut AdamW,
    disc: Option<(&mut Discriminator<f32>, &mut AdamW)>,
) -> Result<TrainState> {
    let shown = path.display();
    let f = TensorFile::open(path)?;
    let meta = f.metadata().cloned().unwrap_or_default();
    if meta.get("format").map(|s| s.as_str()) != Some("handcov-checkpoint-1") {
        return Err(Error::Weights(format!(
            "{shown}: not a handcov training checkpoint (no format metadata)"
        )));
    }
    let patch = patch_shape(model);
    let mut params = Vec::new();
    for (name, t) in model.params_mut() {
        let src = f.f32(&name, Some(&stored_shape(&patch, &name, t)))?;
        finite(path, &name, src.data())?;
        t.data_mut().copy_from_slice(src.data());
        params.push((name, t.numel()));
    }
    let restore = |prefix: &str, o: &mut AdamW, step_key: &str, params: &[(String, usize)]| {
        o.step = meta_u64(&meta, step_key, path)?;
        o.exp_avg.clear();
        o.exp_avg_sq.clear();
        let len: HashMap<&str, usize> = params.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        for name in f.names().map(|s| s.to_string()).collect::<Vec<_>>() {
            let (map, p) = if let Some(p) = name.strip_prefix(&format!("{prefix}.exp_avg.")) {
                (&mut o.exp_avg, p)
            } else if let Some(p) = name.strip_prefix(&format!("{prefix}.exp_avg_sq.")) {
                (&mut o.exp_avg_sq, p)
            } else {
                continue;
            };
            let Some(&n) = len.get(p) else {
                return Err(Error::Weights(format!(
                    "{shown}: `{name}` is the moment of no parameter of the model"
                )));
            };
            map.insert(p.to_string(), f.f32(&name, Some(&[n]))?.into_vec());
        }
        o.check_state(prefix, params)
            .map_err(|m| Error::Weights(format!("{shown}: {m}")))
    };
    restore("optim", opt, "optim_step", &params)?;
    if let Some((d, dopt)) = disc {
        let names: Vec<(String, Vec<usize>)> =
            d.tensors().into_iter().map(|(n, s, _)| (n, s)).collect();
        let mut dparams = Vec::new();
        for ((name, shape), dst) in names.into_iter().zip(d.tensors_mut()) {
            let src = f.f32(&name, Some(&shape))?;
            finite(path, &name, src.data())?;
            dst.copy_from_slice(src.data());
            dparams.push((name, dst.len()));
        }
        restore("optim_disc", dopt, "optim_disc_step", &dparams)?;
    }
    let cursor = meta
        .get("cursor")
        .ok_or_else(|| Error::Weights(format!("{shown}: checkpoint metadata lacks `cursor`")))?;
    let parsed = cursor
        .split_once(',')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    let cursor = parsed.ok_or_else(|| {
        Error::Weights(format!(
            "{shown}: checkpoint metadata `cursor` = {cursor:?} is not EPOCH,POSITION"
        ))
    })?;
    Ok(TrainState {
        step: meta_u64(&meta, "step", path)?,
        seed: meta_u64(&meta, "seed", path)?,
        cursor,
        skipped_steps: meta_u64(&meta, "skipped_steps", path)?,
    })
}
