//! AdamW (SPEC §8): decoupled weight decay on every parameter, constant learning rate, fp32
//! moments, the update in PyTorch's operation order (`p ← p·(1 − lr·wd)`, then
//! `p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)`), optional clipping of the
//! gradients by their global L2 norm.

use crate::model::backward::Grads;
use crate::ops::math::sum_f64;
use rayon::prelude::*;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Clip gradients to this global L2 norm before the update (none by default, as the
    /// reference).
    pub clip_norm: Option<f32>,
}

impl Default for AdamWConfig {
    /// SPEC §8: lr 1e-6, weight decay 1e-4, betas (0.9, 0.999), eps 1e-8, no clipping.
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
            clip_norm: None,
        }
    }
}

/// Optimiser state: the step count and both moments per parameter name.
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    pub exp_avg: BTreeMap<String, Vec<f32>>,
    pub exp_avg_sq: BTreeMap<String, Vec<f32>>,
}

/// Global L2 norm of all gradients (f64 accumulation). Each tensor's sum of squares is taken
/// on the thread pool ([`sum_f64`]), and the per-tensor sums are added in name order: the
/// result does not depend on the thread count.
pub fn global_norm(g: &Grads) -> f64 {
    let per: Vec<f64> = g
        .map
        .par_iter()
        .map(|(_, v)| sum_f64(v, |x| x * x))
        .collect();
    per.iter().sum::<f64>().sqrt()
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> AdamW {
        AdamW {
            config,
            step: 0,
            exp_avg: BTreeMap::new(),
            exp_avg_sq: BTreeMap::new(),
        }
    }

    /// Checks a restored state against the parameters it updates (`(name, length)` pairs),
    /// naming the moments `{prefix}.exp_avg.<name>` / `{prefix}.exp_avg_sq.<name>` in the
    /// message: at step 0 there are no moments; after that every parameter has both, of its
    /// length, finite, the second moment non-negative; there is no moment of another name. A
    /// state that fails this cannot continue bit for bit ([`AdamW::update`] would start a
    /// missing moment at zero).
    pub fn check_state(
        &self,
        prefix: &str,
        params: &[(String, usize)],
    ) -> std::result::Result<(), String> {
        let len: BTreeMap<&str, usize> = params.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        for (kind, map) in [("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)] {
            for (name, m) in map {
                let full = format!("{prefix}.{kind}.{name}");
                let Some(&n) = len.get(name.as_str()) else {
                    return Err(format!(
                        "`{full}` is the moment of no parameter of the model"
                    ));
                };
                if self.step == 0 {
                    return Err(format!(
                        "`{full}` is present but the optimiser step is 0 (no update yet)"
                    ));
                }
                if m.len() != n {
                    return Err(format!(
                        "`{full}` holds {} values, the parameter has {n}",
                        m.len()
                    ));
                }
                if let Some(i) = m.iter().position(|v| !v.is_finite()) {
                    return Err(format!(
                        "`{full}` holds a non-finite value ({}) at {i}",
                        m[i]
                    ));
                }
                if kind == "exp_avg_sq" {
                    if let Some(i) = m.iter().position(|&v| v < 0.0) {
                        return Err(format!(
                            "`{full}` holds a negative value ({}) at {i}: a second moment is \
                             never negative",
                            m[i]
                        ));
                    }
                }
            }
            if self.step > 0 {
                if let Some((name, _)) = params.iter().find(|(n, _)| !map.contains_key(n)) {
                    return Err(format!(
                        "`{prefix}.{kind}.{name}` is missing (optimiser step {})",
                        self.step
                    ));
                }
            }
        }
        Ok(())
    }

    /// One update of every `(name, values)` parameter that has a gradient in `grads`
    /// (parameters without one are left untouched, as PyTorch skips `grad is None`).
    pub fn update<'a>(
        &mut self,
        params: impl IntoIterator<Item = (String, &'a mut [f32])>,
        grads: &Grads,
    ) {
        self.step += 1;
        let c = self.config;
        let clip = match c.clip_norm {
            Some(max) => {
                let n = global_norm(grads);
                if n > max as f64 {
                    (max as f64 / (n + 1e-6)) as f32
                } else {
                    1.0
                }
            }
            None => 1.0,
        };
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        let step_size = c.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        // Every tensor's update is an independent element-wise pass, run on the thread pool
        // (the same arithmetic as a serial loop). Moments are created on first use, and are
        // taken out of their maps for the pass and put back after it.
        let mut jobs = Vec::new();
        for (name, p) in params {
            let Some(g) = grads.map.get(&name) else {
                continue;
            };
            if g.len() != p.len() {
                continue;
            }
            // A moment starts at zero on a parameter's first update. (A restored state is
            // checked by `check_state`: every moment there has its parameter's length.)
            let moment = |map: &mut BTreeMap<String, Vec<f32>>| match map.remove(&name) {
                Some(m) if m.len() == p.len() => m,
                _ => vec![0.0; p.len()],
            };
            let (m, v) = (moment(&mut self.exp_avg), moment(&mut self.exp_avg_sq));
            jobs.push((name, p, g, m, v));
        }
        let (lr, wd, b1, b2, eps) = (c.lr, c.weight_decay, c.beta1, c.beta2, c.eps);
        jobs.par_iter_mut().for_each(|(_, p, g, m, v)| {
            let it = p
                .iter_mut()
                .zip(g.iter())
                .zip(m.iter_mut())
                .zip(v.iter_mut());
            for (((p, &g), m), v) in it {
                let gi = g * clip;
                *p *= 1.0 - lr * wd;
                *m = *m * b1 + (1.0 - b1) * gi;
                *v = *v * b2 + (1.0 - b2) * gi * gi;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p -= step_size * *m / denom;
            }
        });
        for (name, _, _, m, v) in jobs {
            self.exp_avg.insert(name.clone(), m);
            self.exp_avg_sq.insert(name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two steps on a scalar, against the closed form of PyTorch's AdamW.
    #[test]
    fn matches_the_pytorch_update_rule() {
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut opt = AdamW::new(cfg);
        let mut p = vec![1.0f32];
        let mut g = Grads::default();
        g.map.insert("w".into(), vec![0.5]);
        opt.update([("w".to_string(), p.as_mut_slice())], &g);
        // Step 1: p = 1·(1 − 0.001) = 0.999; m = 0.05, v = 0.00025; m̂ = 0.5, √v̂ = 0.5;
        // p −= 0.1·0.5/(0.5 + 1e-8).
        let want1 = 0.999f64 - 0.1 * 0.5 / (0.5 + 1e-8);
        assert!((p[0] as f64 - want1).abs() < 1e-6, "{} vs {want1}", p[0]);
        g.map.insert("w".into(), vec![-0.25]);
        opt.update([("w".to_string(), p.as_mut_slice())], &g);
        let (m, v): (f64, f64) = (0.9 * 0.05 + 0.1 * -0.25, 0.999 * 0.00025 + 0.001 * 0.0625);
        let (bc1, bc2) = (1.0 - 0.9f64.powi(2), 1.0 - 0.999f64.powi(2));
        let want2 = want1 * (1.0 - 0.001) - (0.1 / bc1) * m / (v.sqrt() / bc2.sqrt() + 1e-8);
        assert!((p[0] as f64 - want2).abs() < 1e-6, "{} vs {want2}", p[0]);
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        let mut g = Grads::default();
        g.map.insert("a".into(), vec![3.0]);
        g.map.insert("b".into(), vec![4.0]);
        assert!((global_norm(&g) - 5.0).abs() < 1e-12);
    }

    #[test]
    fn a_restored_state_must_match_the_parameters() {
        let params = vec![("a".to_string(), 2), ("b".to_string(), 1)];
        let full = |step: u64| {
            let mut o = AdamW::new(AdamWConfig::default());
            o.step = step;
            for (n, l) in &params {
                o.exp_avg.insert(n.clone(), vec![0.1; *l]);
                o.exp_avg_sq.insert(n.clone(), vec![0.01; *l]);
            }
            o
        };
        full(3).check_state("optim", &params).unwrap();
        AdamW::new(AdamWConfig::default())
            .check_state("optim", &params)
            .unwrap();
        let err = |o: AdamW| o.check_state("optim", &params).unwrap_err();
        let mut o = full(3);
        o.exp_avg.insert("a".into(), vec![0.1; 3]);
        assert_eq!(
            err(o),
            "`optim.exp_avg.a` holds 3 values, the parameter has 2"
        );
        let mut o = full(3);
        o.exp_avg_sq.remove("b");
        assert_eq!(err(o), "`optim.exp_avg_sq.b` is missing (optimiser step 3)");
        let mut o = full(3);
        o.exp_avg.insert("c".into(), vec![0.0]);
        assert!(err(o).contains("`optim.exp_avg.c` is the moment of no parameter"));
        assert!(err(full(0)).contains("the optimiser step is 0"));
        let mut o = full(3);
        o.exp_avg_sq.get_mut("a").unwrap()[1] = -1.0;
        assert!(err(o).contains("`optim.exp_avg_sq.a` holds a negative value (-1) at 1"));
        let mut o = full(3);
        o.exp_avg.get_mut("b").unwrap()[0] = f32::NAN;
        assert!(err(o).contains("`optim.exp_avg.b` holds a non-finite value (NaN) at 0"));
    }
}
