//! The HMR-style discriminator of SPEC §7.3: forward, backward, its two losses and a fresh
//! xavier-uniform initialisation. Parameters carry the state-dict names of SPEC §12
//! (`discriminator.D_conv1.weight` …).
//!
//! Input: hand_pose rotation matrices `[B, 15, 3, 3]` (row-major; as `[B, 15, 9]`) and betas
//! `[B, 10]`. The 1×1 convolutions over the (B, 9, 15, 1) tensor are a Linear(9→32) and a
//! Linear(32→32) shared by the 15 joints (rows `b·15 + j`); the per-joint logits are 15 separate
//! Linear(32→1); the all-joints branch reads the conv features flattened channel-major
//! (`f[b, c·15 + j] = h2[b, j, c]`). Output `[B, 17]` = [15 per-joint, betas, all-joints].
//!
//! Backward conventions as everywhere in `train`: input gradients are overwritten, parameter
//! gradients (a `Discriminator` used as gradient buffer) accumulated. ReLU passes gradient
//! where its output is > 0 (PyTorch's choice at 0).

use super::rng::{Philox, STREAM_INIT};
use super::{batch_of, expect_len, Scalar};
use crate::error::{Error, Result};
use crate::model::layers::{Loader, TensorSource};

/// Hand-pose joints the discriminator sees (MANO's 15, without the global orientation).
pub const POSE_JOINTS: usize = 15;
/// Channels of the 1×1 convolutions.
pub const CONV_CH: usize = 32;
/// Width of the all-joints MLP.
pub const ALL_HIDDEN: usize = 1024;
/// Outputs per sample: 15 per-joint, 1 betas, 1 all-joints.
pub const OUTPUTS: usize = POSE_JOINTS + 2;
/// Values of one sample's pose input (15 rotation matrices).
pub const POSE_LEN: usize = POSE_JOINTS * 9;
/// Values of one sample's betas.
pub const BETAS_LEN: usize = 10;
/// Name prefix of the discriminator's tensors in checkpoints.
pub const PREFIX: &str = "discriminator.";

/// A linear layer `y = x·Wᵀ + b`, `weight [d_out, d_in]`, `bias [d_out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense<T> {
    pub weight: Vec<T>,
    pub bias: Vec<T>,
    pub d_in: usize,
    pub d_out: usize,
}

impl<T: Scalar> Dense<T> {
    fn zeros(d_in: usize, d_out: usize) -> Dense<T> {
        Dense {
            weight: vec![T::default(); d_in * d_out],
            bias: vec![T::default(); d_out],
            d_in,
            d_out,
        }
    }

    fn cast<U: Scalar>(&self) -> Dense<U> {
        Dense {
            weight: self
                .weight
                .iter()
                .map(|v| U::from_f64(v.to_f64()))
                .collect(),
            bias: self.bias.iter().map(|v| U::from_f64(v.to_f64())).collect(),
            d_in: self.d_in,
            d_out: self.d_out,
        }
    }

    /// `x [rows, d_in]` → `[rows, d_out]`, ReLU when `relu`.
    fn forward(&self, x: &[T], rows: usize, relu: bool) -> Vec<T> {
        let mut y = vec![T::default(); rows * self.d_out];
        T::matmul(
            rows,
            self.d_out,
            self.d_in,
            x,
            (self.d_in, 1),
            &self.weight,
            (1, self.d_in),
            &mut y,
        );
        for row in y.chunks_exact_mut(self.d_out) {
            for (v, b) in row.iter_mut().zip(&self.bias) {
                let t = T::from_f64(v.to_f64() + b.to_f64());
                // ReLU; NaN passes through (as in PyTorch), so a diverged model shows.
                *v = if relu && t.to_f64() <= 0.0 {
                    T::default()
                } else {
                    t
                };
            }
        }
        y
    }

    /// Backward of [`Dense::forward`] over `rows` rows: `dy` is the gradient of the output
    /// `y` (post-ReLU; `y` is read only for the ReLU mask, so pass `&[]` when `!relu`).
    /// Accumulates into `grad` (when given) and returns `dx [rows, d_in]` (when `want_dx`).
    fn backward(
        &self,
        io: (&[T], &[T]),
        dy: &[T],
        relu: bool,
        grad: Option<&mut Dense<T>>,
        want_dx: bool,
    ) -> Option<Vec<T>> {
        let (x, y) = io;
        let rows = dy.len() / self.d_out.max(1);
        let dpre: Vec<T> = if relu {
            dy.iter()
                .zip(y)
                .map(|(&g, &v)| if v.to_f64() > 0.0 { g } else { T::default() })
                .collect()
        } else {
            dy.to_vec()
        };
        if let Some(g) = grad {
            // dW[o, i] += Σ_r dpre[r, o]·x[r, i]; db[o] += Σ_r dpre[r, o].
            let mut tmp = vec![T::default(); self.d_out * self.d_in];
            T::matmul(
                self.d_out,
                self.d_in,
                rows,
                &dpre,
                (1, self.d_out),
                x,
                (self.d_in, 1),
                &mut tmp,
            );
            for (w, t) in g.weight.iter_mut().zip(&tmp) {
                *w = T::from_f64(w.to_f64() + t.to_f64());
            }
            for (o, b) in g.bias.iter_mut().enumerate() {
                let s: f64 = (0..rows).map(|r| dpre[r * self.d_out + o].to_f64()).sum();
                *b = T::from_f64(b.to_f64() + s);
            }
        }
        want_dx.then(|| {
            let mut dx = vec![T::default(); rows * self.d_in];
            T::matmul(
                rows,
                self.d_in,
                self.d_out,
                &dpre,
                (self.d_out, 1),
                &self.weight,
                (self.d_in, 1),
                &mut dx,
            );
            dx
        })
    }
}

/// The discriminator's parameters (or, with the same layout, their gradients).
#[derive(Clone, Debug, PartialEq)]
pub struct Discriminator<T: Scalar = f32> {
    /// `D_conv1`, weight `[32, 9, 1, 1]`.
    pub d_conv1: Dense<T>,
    /// `D_conv2`, weight `[32, 32, 1, 1]`.
    pub d_conv2: Dense<T>,
    /// `pose_out.{0..14}`, each Linear(32→1).
    pub pose_out: Vec<Dense<T>>,
    pub betas_fc1: Dense<T>,
    pub betas_fc2: Dense<T>,
    pub betas_out: Dense<T>,
    pub d_alljoints_fc1: Dense<T>,
    pub d_alljoints_fc2: Dense<T>,
    pub d_alljoints_out: Dense<T>,
}

/// What the backward pass needs from the forward pass, and the output.
#[derive(Clone, Debug)]
pub struct DiscActs<T> {
    pub batch: usize,
    pose: Vec<T>,
    betas: Vec<T>,
    /// `[B·15, 32]` after each conv + ReLU.
    h1: Vec<T>,
    h2: Vec<T>,
    /// Betas MLP, `[B, 10]`, `[B, 5]`.
    g1: Vec<T>,
    g2: Vec<T>,
    /// `[B, 480]`, channel-major.
    flat: Vec<T>,
    /// All-joints MLP, `[B, 1024]` twice.
    a1: Vec<T>,
    a2: Vec<T>,
    /// `[B, 17]`.
    pub out: Vec<T>,
}

impl<T: Scalar> Discriminator<T> {
    /// All-zero parameters: a gradient buffer.
    pub fn zeros() -> Discriminator<T> {
        Discriminator {
            d_conv1: Dense::zeros(9, CONV_CH),
            d_conv2: Dense::zeros(CONV_CH, CONV_CH),
            pose_out: (0..POSE_JOINTS).map(|_| Dense::zeros(CONV_CH, 1)).collect(),
            betas_fc1: Dense::zeros(BETAS_LEN, 10),
            betas_fc2: Dense::zeros(10, 5),
            betas_out: Dense::zeros(5, 1),
            d_alljoints_fc1: Dense::zeros(CONV_CH * POSE_JOINTS, ALL_HIDDEN),
            d_alljoints_fc2: Dense::zeros(ALL_HIDDEN, ALL_HIDDEN),
            d_alljoints_out: Dense::zeros(ALL_HIDDEN, 1),
        }
    }

    /// The layers with their state-dict names (without the `discriminator.` prefix) and
    /// whether they are 1×1 convolutions (weights stored `[out, in, 1, 1]`), in a fixed order.
    fn layers(&self) -> Vec<(String, &Dense<T>, bool)> {
        let mut v = vec![
            ("D_conv1".to_string(), &self.d_conv1, true),
            ("D_conv2".to_string(), &self.d_conv2, true),
        ];
        v.extend(
            self.pose_out
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("pose_out.{i}"), l, false)),
        );
        v.push(("betas_fc1".to_string(), &self.betas_fc1, false));
        v.push(("betas_fc2".to_string(), &self.betas_fc2, false));
        v.push(("betas_out".to_string(), &self.betas_out, false));
        v.push(("D_alljoints_fc1".to_string(), &self.d_alljoints_fc1, false));
        v.push(("D_alljoints_fc2".to_string(), &self.d_alljoints_fc2, false));
        v.push(("D_alljoints_out".to_string(), &self.d_alljoints_out, false));
        v
    }

    fn layers_mut(&mut self) -> Vec<&mut Dense<T>> {
        let mut v = vec![&mut self.d_conv1, &mut self.d_conv2];
        v.extend(self.pose_out.iter_mut());
        v.extend([
            &mut self.betas_fc1,
            &mut self.betas_fc2,
            &mut self.betas_out,
            &mut self.d_alljoints_fc1,
            &mut self.d_alljoints_fc2,
            &mut self.d_alljoints_out,
        ]);
        v
    }

    /// Every tensor as (full state-dict name, PyTorch shape, values), in a fixed order
    /// (weight then bias per layer) — for checkpoints and the optimiser.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[T])> {
        let mut out = Vec::new();
        for (name, l, conv) in self.layers() {
            let shape = if conv {
                vec![l.d_out, l.d_in, 1, 1]
            } else {
                vec![l.d_out, l.d_in]
            };
            out.push((format!("{PREFIX}{name}.weight"), shape, &l.weight[..]));
            out.push((format!("{PREFIX}{name}.bias"), vec![l.d_out], &l.bias[..]));
        }
        out
    }

    /// The values of every tensor, mutably, in the order of [`Discriminator::tensors`].
    pub fn tensors_mut(&mut self) -> Vec<&mut [T]> {
        let mut out: Vec<&mut [T]> = Vec::new();
        for l in self.layers_mut() {
            out.push(&mut l.weight[..]);
            out.push(&mut l.bias[..]);
        }
        out
    }

    /// Sets every value to 0 (clearing a gradient buffer).
    pub fn fill_zero(&mut self) {
        for t in self.tensors_mut() {
            t.fill(T::default());
        }
    }

    /// The same parameters in another precision.
    pub fn cast<U: Scalar>(&self) -> Discriminator<U> {
        Discriminator {
            d_conv1: self.d_conv1.cast(),
            d_conv2: self.d_conv2.cast(),
            pose_out: self.pose_out.iter().map(Dense::cast).collect(),
            betas_fc1: self.betas_fc1.cast(),
            betas_fc2: self.betas_fc2.cast(),
            betas_out: self.betas_out.cast(),
            d_alljoints_fc1: self.d_alljoints_fc1.cast(),
            d_alljoints_fc2: self.d_alljoints_fc2.cast(),
            d_alljoints_out: self.d_alljoints_out.cast(),
        }
    }

    /// A fresh discriminator: xavier-uniform weights `U(±√(6/(fan_in + fan_out)))` (a 1×1
    /// conv's fans are its channels), zero biases (SPEC §7.3). Tensor `k` of
    /// [`Discriminator::tensors`]' order draws from the Philox sequence
    /// (seed, `STREAM_INIT`, step 0, sample k).
    pub fn xavier_uniform(seed: u64) -> Discriminator<T> {
        let mut d = Discriminator::zeros();
        for (k, l) in d.layers_mut().into_iter().enumerate() {
            let bound = (6.0 / (l.d_in + l.d_out) as f64).sqrt();
            // Tensor index: weights are the even entries of `tensors()`.
            let p = Philox::new(seed, STREAM_INIT, 0, 2 * k as u32);
            for (i, w) in l.weight.iter_mut().enumerate() {
                *w = T::from_f64((2.0 * p.uniform_f64(i as u64) - 1.0) * bound);
            }
        }
        d
    }

    /// `pose` `[B, 15, 3, 3]`, `betas` `[B, 10]` → activations with `out` `[B, 17]`.
    pub fn forward(&self, pose: &[T], betas: &[T]) -> Result<DiscActs<T>> {
        let b = batch_of("discriminator: hand_pose [B,15,3,3]", pose, POSE_LEN)?;
        expect_len("discriminator: betas [B,10]", betas, b * BETAS_LEN)?;
        let rows = b * POSE_JOINTS;
        let h1 = self.d_conv1.forward(pose, rows, true);
        let h2 = self.d_conv2.forward(&h1, rows, true);
        let g1 = self.betas_fc1.forward(betas, b, true);
        let g2 = self.betas_fc2.forward(&g1, b, true);
        let beta_logit = self.betas_out.forward(&g2, b, false);
        let fl = CONV_CH * POSE_JOINTS;
        let mut flat = vec![T::default(); b * fl];
        for bi in 0..b {
            for j in 0..POSE_JOINTS {
                for c in 0..CONV_CH {
                    flat[bi * fl + c * POSE_JOINTS + j] = h2[(bi * POSE_JOINTS + j) * CONV_CH + c];
                }
            }
        }
        let a1 = self.d_alljoints_fc1.forward(&flat, b, true);
        let a2 = self.d_alljoints_fc2.forward(&a1, b, true);
        let all_logit = self.d_alljoints_out.forward(&a2, b, false);
        let mut out = vec![T::default(); b * OUTPUTS];
        for bi in 0..b {
            for (j, l) in self.pose_out.iter().enumerate() {
                let h = &h2[(bi * POSE_JOINTS + j) * CONV_CH..(bi * POSE_JOINTS + j + 1) * CONV_CH];
                let v: f64 = l.bias[0].to_f64()
                    + h.iter()
                        .zip(&l.weight)
                        .map(|(x, w)| x.to_f64() * w.to_f64())
                        .sum::<f64>();
                out[bi * OUTPUTS + j] = T::from_f64(v);
            }
            out[bi * OUTPUTS + POSE_JOINTS] = beta_logit[bi];
            out[bi * OUTPUTS + POSE_JOINTS + 1] = all_logit[bi];
        }
        Ok(DiscActs {
            batch: b,
            pose: pose.to_vec(),
            betas: betas.to_vec(),
            h1,
            h2,
            g1,
            g2,
            flat,
            a1,
            a2,
            out,
        })
    }

    /// Backward of [`Discriminator::forward`] for `d_out` `[B, 17]`: parameter gradients
    /// accumulate into `grads` (skipped when `None`), input gradients overwrite `d_pose`
    /// `[B, 15, 3, 3]` and `d_betas` `[B, 10]` (skipped when `None`).
    pub fn backward(
        &self,
        acts: &DiscActs<T>,
        d_out: &[T],
        mut grads: Option<&mut Discriminator<T>>,
        d_pose: Option<&mut [T]>,
        d_betas: Option<&mut [T]>,
    ) -> Result<()> {
        let b = acts.batch;
        expect_len("discriminator backward: d_out [B,17]", d_out, b * OUTPUTS)?;
        if let Some(dp) = &d_pose {
            expect_len("discriminator backward: d_hand_pose", &dp[..], b * POSE_LEN)?;
        }
        if let Some(db) = &d_betas {
            expect_len("discriminator backward: d_betas", &db[..], b * BETAS_LEN)?;
        }
        let rows = b * POSE_JOINTS;
        let col = |o: usize| -> Vec<T> { (0..b).map(|bi| d_out[bi * OUTPUTS + o]).collect() };

        // Betas branch.
        let d_bl = col(POSE_JOINTS);
        let dg2 = self.betas_out.backward(
            (&acts.g2, &[]),
            &d_bl,
            false,
            grads.as_deref_mut().map(|g| &mut g.betas_out),
            true,
        );
        let dg1 = self.betas_fc2.backward(
            (&acts.g1, &acts.g2),
            &dg2.unwrap_or_default(),
            true,
            grads.as_deref_mut().map(|g| &mut g.betas_fc2),
            true,
        );
        let dbeta = self.betas_fc1.backward(
            (&acts.betas, &acts.g1),
            &dg1.unwrap_or_default(),
            true,
            grads.as_deref_mut().map(|g| &mut g.betas_fc1),
            d_betas.is_some(),
        );
        if let (Some(dst), Some(src)) = (d_betas, dbeta) {
            dst.copy_from_slice(&src);
        }

        // All-joints branch.
        let d_al = col(POSE_JOINTS + 1);
        let da2 = self.d_alljoints_out.backward(
            (&acts.a2, &[]),
            &d_al,
            false,
            grads.as_deref_mut().map(|g| &mut g.d_alljoints_out),
            true,
        );
        let da1 = self.d_alljoints_fc2.backward(
            (&acts.a1, &acts.a2),
            &da2.unwrap_or_default(),
            true,
            grads.as_deref_mut().map(|g| &mut g.d_alljoints_fc2),
            true,
        );
        let dflat = self
            .d_alljoints_fc1
            .backward(
                (&acts.flat, &acts.a1),
                &da1.unwrap_or_default(),
                true,
                grads.as_deref_mut().map(|g| &mut g.d_alljoints_fc1),
                true,
            )
            .unwrap_or_default();

        // Per-joint logits, plus the all-joints branch's share (channel-major un-flatten).
        let fl = CONV_CH * POSE_JOINTS;
        let mut dh2 = vec![T::default(); rows * CONV_CH];
        for bi in 0..b {
            for (j, l) in self.pose_out.iter().enumerate() {
                let g = d_out[bi * OUTPUTS + j].to_f64();
                let base = (bi * POSE_JOINTS + j) * CONV_CH;
                for c in 0..CONV_CH {
                    let v =
                        g * l.weight[c].to_f64() + dflat[bi * fl + c * POSE_JOINTS + j].to_f64();
                    dh2[base + c] = T::from_f64(v);
                }
            }
        }
        if let Some(gr) = grads.as_deref_mut() {
            for (j, gl) in gr.pose_out.iter_mut().enumerate() {
                let mut gb = 0f64;
                let mut gw = [0f64; CONV_CH];
                for bi in 0..b {
                    let g = d_out[bi * OUTPUTS + j].to_f64();
                    gb += g;
                    let h = &acts.h2
                        [(bi * POSE_JOINTS + j) * CONV_CH..(bi * POSE_JOINTS + j + 1) * CONV_CH];
                    for (w, x) in gw.iter_mut().zip(h) {
                        *w += g * x.to_f64();
                    }
                }
                for (w, v) in gl.weight.iter_mut().zip(gw) {
                    *w = T::from_f64(w.to_f64() + v);
                }
                gl.bias[0] = T::from_f64(gl.bias[0].to_f64() + gb);
            }
        }

        // Convolutions.
        let dh1 = self.d_conv2.backward(
            (&acts.h1, &acts.h2),
            &dh2,
            true,
            grads.as_deref_mut().map(|g| &mut g.d_conv2),
            true,
        );
        let dx = self.d_conv1.backward(
            (&acts.pose, &acts.h1),
            &dh1.unwrap_or_default(),
            true,
            grads.map(|g| &mut g.d_conv1),
            d_pose.is_some(),
        );
        if let (Some(dst), Some(src)) = (d_pose, dx) {
            dst.copy_from_slice(&src);
        }
        Ok(())
    }

    /// The generator's adversarial loss `L_adv = Σ_b Σ_o (D(pose, betas)_bo − 1)² / B`
    /// (B = this batch). `d_pose`, `d_betas` ← `scale·∂L_adv/∂input`; the discriminator's own
    /// parameters get no gradient (the reference clears it before the discriminator step).
    pub fn generator_loss(
        &self,
        pose: &[T],
        betas: &[T],
        scale: f64,
        d_pose: &mut [T],
        d_betas: &mut [T],
    ) -> Result<f64> {
        let acts = self.forward(pose, betas)?;
        let b = acts.batch;
        if b == 0 {
            return Ok(0.0);
        }
        let inv_b = 1.0 / b as f64;
        let mut value = 0f64;
        let d_out: Vec<T> = acts
            .out
            .iter()
            .map(|o| {
                let e = o.to_f64() - 1.0;
                value += e * e * inv_b;
                T::from_f64(scale * 2.0 * e * inv_b)
            })
            .collect();
        self.backward(&acts, &d_out, None, Some(d_pose), Some(d_betas))?;
        Ok(value)
    }

    /// The discriminator's loss `L_D = Σ D(fake)²/div + Σ (D(real) − 1)²/div`; `div` is the
    /// image batch size for both terms (SPEC §7.3, §15.12: fake 64, real 128, both / 64).
    /// `grads += scale·∂L_D/∂θ`. The inputs get no gradient (fake is detached, real is data).
    #[allow(clippy::too_many_arguments)]
    pub fn discriminator_loss(
        &self,
        fake_pose: &[T],
        fake_betas: &[T],
        real_pose: &[T],
        real_betas: &[T],
        div: usize,
        scale: f64,
        grads: &mut Discriminator<T>,
    ) -> Result<f64> {
        if div == 0 {
            return Err(Error::Input(
                "discriminator loss: the divisor (batch size) is 0".into(),
            ));
        }
        let inv = 1.0 / div as f64;
        let mut value = 0f64;
        for (pose, betas, target) in [(fake_pose, fake_betas, 0.0), (real_pose, real_betas, 1.0)] {
            let acts = self.forward(pose, betas)?;
            let d_out: Vec<T> = acts
                .out
                .iter()
                .map(|o| {
                    let e = o.to_f64() - target;
                    value += e * e * inv;
                    T::from_f64(scale * 2.0 * e * inv)
                })
                .collect();
            self.backward(&acts, &d_out, Some(grads), None, None)?;
        }
        Ok(value)
    }
}

impl Discriminator<f32> {
    /// Loads `discriminator.*` (SPEC §12 names and shapes) from a weights source.
    pub fn load(src: &dyn TensorSource) -> Result<Discriminator<f32>> {
        let root = Loader::new(src, PREFIX);
        let mut d = Discriminator::<f32>::zeros();
        let names: Vec<(String, bool)> = d
            .layers()
            .into_iter()
            .map(|(n, _, conv)| (n, conv))
            .collect();
        for ((name, conv), l) in names.into_iter().zip(d.layers_mut()) {
            let ld = root.sub(&name);
            let shape = if conv {
                vec![l.d_out, l.d_in, 1, 1]
            } else {
                vec![l.d_out, l.d_in]
            };
            l.weight = ld.tensor("weight", &shape)?.data().to_vec();
            l.bias = ld.tensor("bias", &[l.d_out])?.data().to_vec();
        }
        Ok(d)
    }
}

#[cfg(test)]
#[path = "discriminator_tests.rs"]
mod tests;
