//! AdamW on the device (kernels/adamw.cu): one launch updates a whole list of fp32 tensors (the
//! master weights, their fp32 moments and optionally bf16 working copies), after a
//! deterministic fp64 global gradient norm used for clipping and to skip a step whose gradient
//! holds a NaN or an infinity. CPU twin: `train::adamw::AdamW::update`; without clipping the
//! result is bit-identical to it (see the kernel file's header for why, and for clipping).
//!
//! Usage, per optimiser (model, discriminator):
//! ```text
//! let mut ws = be.adamw_workspace(step_so_far)?;      // once (a checkpoint gives the step)
//! loop {
//!     … backward into the gradient buffers …
//!     be.adamw_step(&mut ws, &hyper, AdamWTensors { params, grads, exp_avg, exp_avg_sq,
//!                   work }, true)?;                    // 2–3 kernels, no host round trip
//!     let st = be.adamw_state(&ws)?;                  // after the step's sync: step, ‖g‖², skipped
//! }
//! ```
//! The per-step values (step count, bias corrections, clip factor, skip flag) are computed on the
//! device into the workspace's `state`; the hyper-parameters are kernel arguments. So a CUDA
//! graph captured around `adamw_step` can be replayed every step as long as the hyper-parameters
//! and the tensor buffers stay the same (the tensor table is uploaded only when the buffers
//! change, which must not happen during a capture: call `adamw_step` once before capturing).

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use half::bf16;

use super::{cuda_err, CudaBackend};
use crate::error::{Error, Result};

const MODULE: &str = "adamw";
/// Threads per block of every AdamW kernel (`ADAMW_THREADS`).
const THREADS: usize = 256;
/// Elements per chunk of the flattened tensor list (`ADAMW_CHUNK`).
const CHUNK: usize = 16384;
/// Blocks per SM of the grid-strided kernels.
const BLOCKS_PER_SM: usize = 8;
/// `state` (f64): Σ g², step count, clip factor, step size, √(1 − β2^t), skip flag, 2 spare.
const STATE_LEN: usize = 8;
const STATE_SUMSQ: usize = 0;
const STATE_STEP: usize = 1;
const STATE_CLIP: usize = 2;
const STATE_SKIP: usize = 5;

/// AdamW's hyper-parameters (the fields of `train::adamw::AdamWConfig`).
#[derive(Clone, Copy, Debug)]
pub struct AdamWHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Clip the gradients to this global L2 norm before the update.
    pub clip_norm: Option<f32>,
}

/// The tensors of one update, one entry per parameter, in the same order in every list; each
/// gradient, moment and working copy has its parameter's length.
pub struct AdamWTensors<'a> {
    /// fp32 master weights (updated in place).
    pub params: &'a mut [CudaSlice<f32>],
    /// fp32 gradients (read).
    pub grads: &'a [CudaSlice<f32>],
    /// First and second moments (updated in place; zeros before the first step).
    pub exp_avg: &'a mut [CudaSlice<f32>],
    pub exp_avg_sq: &'a mut [CudaSlice<f32>],
    /// bf16 working copies, overwritten with the updated weights rounded to nearest even
    /// (bf16 training); `None` in fp32 mode.
    pub work: Option<&'a mut [CudaSlice<bf16>]>,
}

/// Device state of one optimiser; see [`CudaBackend::adamw_workspace`].
pub struct AdamWWorkspace {
    /// f64 `[8]`, see kernels/adamw.cu.
    state: CudaSlice<f64>,
    /// Per-chunk partial sums of g² (grown on demand).
    partial: CudaSlice<f64>,
    /// The tensor table on the device and the host copy it was uploaded from.
    table: CudaSlice<u64>,
    host_table: Vec<u64>,
}

/// What the last [`CudaBackend::adamw_step`] did, read back by [`CudaBackend::adamw_state`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStepState {
    /// Updates applied so far (skipped steps do not count; `AdamW::step` of the twin).
    pub step: u64,
    /// Σ g² over all gradients of the last step (0 when neither clipping nor the finiteness
    /// check asked for it).
    pub grad_norm_sq: f64,
    /// The factor the gradients were scaled by (1 without clipping).
    pub clip: f32,
    /// Whether the last step was skipped because a gradient was not finite.
    pub skipped: bool,
}

/// Grid of the grid-strided kernels over `nchunks` chunks (at least one block).
fn grid(nchunks: usize, num_sms: usize) -> usize {
    nchunks.clamp(1, BLOCKS_PER_SM * num_sms.max(1))
}

fn config(blocks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The initial `state` for `step` updates done.
fn initial_state(step: u64) -> [f64; STATE_LEN] {
    let mut s = [0f64; STATE_LEN];
    s[STATE_STEP] = step as f64;
    s[STATE_CLIP] = 1.0;
    s
}

impl AdamWHyper {
    fn check(&self) -> Result<()> {
        let finite = [
            ("lr", self.lr),
            ("beta1", self.beta1),
            ("beta2", self.beta2),
            ("eps", self.eps),
            ("weight_decay", self.weight_decay),
            ("clip_norm", self.clip_norm.unwrap_or(0.0)),
        ];
        for (what, x) in finite {
            if !x.is_finite() {
                return crate::input_err!("adamw: {what} must be finite, got {x}");
            }
        }
        Ok(())
    }
}

/// Checks the lists and returns the tensor lengths.
fn tensor_lens(t: &AdamWTensors) -> Result<Vec<usize>> {
    let n = t.params.len();
    let work_len = t.work.as_ref().map(|w| w.len());
    for (what, len) in [
        ("grads", t.grads.len()),
        ("exp_avg", t.exp_avg.len()),
        ("exp_avg_sq", t.exp_avg_sq.len()),
        ("work", work_len.unwrap_or(n)),
    ] {
        if len != n {
            return crate::input_err!("adamw: {n} parameters but {len} {what} buffers");
        }
    }
    if n > i32::MAX as usize / 8 {
        return crate::input_err!("adamw: {n} tensors are too many for one launch");
    }
    let mut lens = Vec::with_capacity(n);
    for i in 0..n {
        let len = t.params[i].len();
        let mut others = vec![
            ("grad", t.grads[i].len()),
            ("exp_avg", t.exp_avg[i].len()),
            ("exp_avg_sq", t.exp_avg_sq[i].len()),
        ];
        if let Some(w) = t.work.as_ref() {
            others.push(("working copy", w[i].len()));
        }
        for (what, l) in others {
            if l != len {
                return crate::input_err!(
                    "adamw: parameter {i} holds {len} values but its {what} {l}"
                );
            }
        }
        lens.push(len);
    }
    Ok(lens)
}

/// The table kernels/adamw.cu reads: offsets (n + 1) then the p, g, m, v, w pointers (n each).
fn build_table(lens: &[usize], ptrs: [&[u64]; 5]) -> Result<Vec<u64>> {
    let n = lens.len();
    let mut table = Vec::with_capacity(n + 1 + 5 * n);
    let mut total: u64 = 0;
    table.push(0);
    for &l in lens {
        total = total
            .checked_add(l as u64)
            .filter(|&t| t <= i64::MAX as u64)
            .ok_or_else(|| Error::Input("adamw: the tensors hold too many values".into()))?;
        table.push(total);
    }
    for p in ptrs {
        table.extend_from_slice(p);
    }
    Ok(table)
}

impl CudaBackend {
    /// The device state of one AdamW optimiser that has done `step` updates (0 for a fresh one,
    /// `AdamW::step` when resuming from a checkpoint).
    pub fn adamw_workspace(&self, step: u64) -> Result<AdamWWorkspace> {
        let state = self
            .stream
            .clone_htod(&initial_state(step))
            .map_err(cuda_err("copying the AdamW state to the device"))?;
        let alloc = |n: usize| {
            self.stream
                .alloc_zeros::<f64>(n)
                .map_err(cuda_err("allocating the AdamW workspace"))
        };
        let table = self
            .stream
            .alloc_zeros::<u64>(1)
            .map_err(cuda_err("allocating the AdamW tensor table"))?;
        Ok(AdamWWorkspace {
            state,
            partial: alloc(1)?,
            table,
            host_table: vec![0],
        })
    }

    /// Sets the number of updates done (e.g. after loading a checkpoint). Queued on the stream.
    pub fn adamw_set_step(&self, ws: &mut AdamWWorkspace, step: u64) -> Result<()> {
        self.stream
            .memcpy_htod(&initial_state(step), &mut ws.state)
            .map_err(cuda_err("copying the AdamW state to the device"))
    }

    /// Waits for the queued work and reads what the last step did.
    pub fn adamw_state(&self, ws: &AdamWWorkspace) -> Result<AdamWStepState> {
        let s = self
            .stream
            .clone_dtoh(&ws.state)
            .map_err(cuda_err("copying the AdamW state from the device"))?;
        Ok(AdamWStepState {
            step: s[STATE_STEP] as u64,
            grad_norm_sq: s[STATE_SUMSQ],
            clip: s[STATE_CLIP] as f32,
            skipped: s[STATE_SKIP] != 0.0,
        })
    }

    /// One AdamW update of every tensor in `t`, as `AdamW::update` (SPEC §8): decoupled weight
    /// decay, bias-corrected moments, and with `h.clip_norm` the gradients scaled to that global
    /// L2 norm first. With `skip_nonfinite`, a gradient holding a NaN or an infinity (anywhere)
    /// makes the whole step a no-op: nothing is written, the step count does not advance and
    /// [`CudaBackend::adamw_state`] reports it as skipped. The global norm (fp64, a fixed
    /// two-stage order) is computed only when clipping or the check needs it.
    ///
    /// Queues 2–3 kernels and no host synchronisation. The first call with a given set of
    /// buffers uploads their address table to `ws` (not allowed inside a graph capture).
    pub fn adamw_step(
        &self,
        ws: &mut AdamWWorkspace,
        h: &AdamWHyper,
        t: AdamWTensors<'_>,
        skip_nonfinite: bool,
    ) -> Result<()> {
        h.check()?;
        let lens = tensor_lens(&t)?;
        let n = lens.len();
        {
            let mut streams = vec![("the AdamW workspace", ws.state.stream())];
            for i in 0..n {
                streams.push(("a parameter", t.params[i].stream()));
                streams.push(("a gradient", t.grads[i].stream()));
                streams.push(("a moment", t.exp_avg[i].stream()));
                streams.push(("a moment", t.exp_avg_sq[i].stream()));
                if let Some(w) = t.work.as_ref() {
                    streams.push(("a working copy", w[i].stream()));
                }
            }
            self.check_device("adamw", &streams)?;
        }

        // The address table. The pointers stay valid while the buffers live; every use is on
        // this one stream, so a buffer freed later is freed after these kernels ran.
        let stream = self.stream.clone();
        stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))?;
        let mut cols: [Vec<u64>; 5] = Default::default();
        for i in 0..n {
            cols[0].push(t.params[i].device_ptr_mut(&stream).0);
            cols[1].push(t.grads[i].device_ptr(&stream).0);
            cols[2].push(t.exp_avg[i].device_ptr_mut(&stream).0);
            cols[3].push(t.exp_avg_sq[i].device_ptr_mut(&stream).0);
            cols[4].push(match t.work.as_ref() {
                Some(w) => w[i].device_ptr(&stream).0,
                None => 0,
            });
        }
        let table = build_table(&lens, [&cols[0], &cols[1], &cols[2], &cols[3], &cols[4]])?;
        let total = table[n] as usize;
        if table != ws.host_table {
            ws.table = stream
                .clone_htod(&table)
                .map_err(cuda_err("copying the AdamW tensor table to the device"))?;
            ws.host_table = table;
        }
        let nchunks = total.div_ceil(CHUNK);
        if ws.partial.len() < nchunks {
            ws.partial = stream
                .alloc_zeros::<f64>(nchunks)
                .map_err(cuda_err("allocating the AdamW norm partials"))?;
        }

        let (n_i, total_i) = (n as i32, total as i64);
        let need_norm = h.clip_norm.is_some() || skip_nonfinite;
        let mut nchunks_i = 0i64;
        if need_norm && total > 0 {
            let f = self.function(MODULE, "adamw_sumsq_f64")?;
            let mut launch = stream.launch_builder(&f);
            launch
                .arg(&ws.table)
                .arg(&n_i)
                .arg(&total_i)
                .arg(&mut ws.partial);
            // SAFETY: (const u64*, int, long long, double*) as declared. The table holds n + 1
            // offsets (prefix sums of the checked lengths, total < 2^63) and 5n pointers to live
            // buffers of those lengths; the kernel reads g[0..len) of each and writes
            // partial[0..⌈total/16384⌉) (allocated above).
            unsafe { launch.launch(config(grid(nchunks, self.num_sms))) }
                .map_err(cuda_err("launching adamw_sumsq_f64"))?;
            nchunks_i = nchunks as i64;
        }

        let f = self.function(MODULE, "adamw_prepare_f64")?;
        let (clip_on, max_norm) = match h.clip_norm {
            Some(m) => (1i32, m),
            None => (0i32, 0f32),
        };
        let check_i = skip_nonfinite as i32;
        let mut launch = stream.launch_builder(&f);
        launch
            .arg(&ws.partial)
            .arg(&nchunks_i)
            .arg(&mut ws.state)
            .arg(&h.lr)
            .arg(&h.beta1)
            .arg(&h.beta2)
            .arg(&max_norm)
            .arg(&clip_on)
            .arg(&check_i);
        // SAFETY: (const double*, long long, double*, float ×4, int, int) as declared; one block
        // of 256 threads reads partial[0..nchunks_i) (written by adamw_sumsq_f64 above when
        // nchunks_i > 0) and writes state[0..6) (8 allocated).
        unsafe { launch.launch(config(1)) }.map_err(cuda_err("launching adamw_prepare_f64"))?;

        if total > 0 {
            let name = if t.work.is_some() {
                "adamw_step_f32_bf16out"
            } else {
                "adamw_step_f32"
            };
            let f = self.function(MODULE, name)?;
            let mut launch = stream.launch_builder(&f);
            launch
                .arg(&ws.table)
                .arg(&n_i)
                .arg(&total_i)
                .arg(&ws.state)
                .arg(&h.lr)
                .arg(&h.beta1)
                .arg(&h.beta2)
                .arg(&h.eps)
                .arg(&h.weight_decay);
            // SAFETY: (const u64*, int, long long, const double*, float ×5) as declared. The
            // table's pointers are the buffers borrowed by `t` (params, moments and working
            // copies mutably, so no two entries alias a written buffer), each of the length in
            // the offsets; the kernel touches element e < len of tensor t only; the working
            // copies are read only by the _bf16out kernel, which is launched only when they
            // were given.
            unsafe { launch.launch(config(grid(nchunks, self.num_sms))) }
                .map_err(cuda_err(format_args!("launching {name}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
