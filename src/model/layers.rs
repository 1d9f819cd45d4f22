//! Building blocks shared by the backbone and the heads: a prefixed weight loader, `Linear` and
//! `LayerNorm`, each mirroring its PyTorch module (`weight`, `bias`).

use super::weights::TensorFile;
use crate::error::Result;
use crate::ops::layernorm::layernorm_fwd_cpu;
use crate::ops::linear::{linear_cpu, Epilogue};
use crate::tensor::Tensor;

/// Where a model's tensors come from: a weights file, or a generator of random weights (tests,
/// benchmarks).
pub trait TensorSource {
    /// The f32 tensor `name` of exactly `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Marks a tensor the model deliberately ignores.
    fn skip(&self, _name: &str) {}
}

impl TensorSource for TensorFile {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.f32_finite(name, Some(shape))
    }
    fn skip(&self, name: &str) {
        TensorFile::skip(self, name)
    }
}

/// Takes tensors from a source under a name prefix (`backbone.blocks.3.` …).
pub struct Loader<'a> {
    pub file: &'a dyn TensorSource,
    pub prefix: String,
}

impl<'a> Loader<'a> {
    pub fn new(file: &'a dyn TensorSource, prefix: &str) -> Loader<'a> {
        Loader {
            file,
            prefix: prefix.to_string(),
        }
    }

    /// A loader for a sub-module: `sub("blocks.3")` reads `<prefix>blocks.3.*`.
    pub fn sub(&self, name: &str) -> Loader<'a> {
        Loader {
            file: self.file,
            prefix: format!("{}{name}.", self.prefix),
        }
    }

    pub fn name(&self, leaf: &str) -> String {
        format!("{}{leaf}", self.prefix)
    }

    pub fn tensor(&self, leaf: &str, shape: &[usize]) -> Result<Tensor> {
        self.file.tensor(&self.name(leaf), shape)
    }

    pub fn linear(&self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
        let l = self.sub(name);
        Ok(Linear {
            weight: l.tensor("weight", &[d_out, d_in])?,
            bias: if bias {
                Some(l.tensor("bias", &[d_out])?)
            } else {
                None
            },
        })
    }

    pub fn layernorm(&self, name: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        let l = self.sub(name);
        Ok(LayerNorm {
            weight: l.tensor("weight", &[dim])?,
            bias: l.tensor("bias", &[dim])?,
            eps: eps as f32,
        })
    }
}

/// `nn.Linear`: `weight [out, in]`, optional `bias [out]`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn d_in(&self) -> usize {
        self.weight.dim(1)
    }

    pub fn d_out(&self) -> usize {
        self.weight.dim(0)
    }

    /// `x [.., in]` → `[.., out]`.
    pub fn forward(&self, x: &Tensor, epi: Epilogue) -> Result<Tensor> {
        crate::ops::linear::linear(x, &self.weight, self.bias.as_ref(), epi)
    }

    /// The same layer restricted to output rows `rows` (a slice of the weight, no copy of
    /// the rest): used for the value part of a packed qkv projection.
    pub fn forward_rows(&self, x: &Tensor, rows: std::ops::Range<usize>) -> Result<Tensor> {
        let d_in = self.d_in();
        let n = rows.len();
        let w = &self.weight.data()[rows.start * d_in..rows.end * d_in];
        let b = self.bias.as_ref().map(|b| &b.data()[rows.clone()]);
        let mut shape = x.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = n;
        }
        let mut y = Tensor::zeros(&shape);
        linear_cpu(x.data(), w, b, d_in, n, Epilogue::None, y.data_mut());
        Ok(y)
    }
}

/// `nn.LayerNorm` over the last dimension.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut out = Tensor::zeros(x.shape());
        layernorm_fwd_cpu(
            x.data(),
            self.weight.data(),
            self.bias.data(),
            self.eps,
            x.dim(-1),
            out.data_mut(),
        );
        Ok(out)
    }
}

/// `a += b` elementwise (residual connections).
pub fn add_assign(a: &mut Tensor, b: &Tensor) {
    for (x, y) in a.data_mut().iter_mut().zip(b.data()) {
        *x += y;
    }
}

/// Random weights of plausible scale for any tensor a model asks for, by name: LayerNorm
/// weights 1 and biases 0, linear weights and biases `U(±1/√fan_in)` (PyTorch's default),
/// embeddings `N(0, 0.02)`-like, the mean parameters of the MANO head an identity pose, zero
/// betas and camera (0.9, 0, 0). Deterministic for a seed (a counter-based generator keyed by
/// the seed and the tensor's name). For benchmarks and tests at sizes no file is shipped for.
pub struct RandomWeights {
    pub seed: u64,
}

impl RandomWeights {
    fn uniform(&self, name: &str, n: usize, bound: f32) -> Vec<f32> {
        let mut h = self.seed ^ 0x9e37_79b9_7f4a_7c15;
        for b in name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        (0..n as u64)
            .map(|i| {
                // SplitMix64 of (name hash, index): independent of evaluation order.
                let mut z = h.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                let u = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                (2.0 * u - 1.0) * bound
            })
            .collect()
    }
}

impl TensorSource for RandomWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let is_norm = name.contains("norm");
        let values = if name.ends_with("init_hand_pose") {
            (0..n)
                .map(|i| if i % 6 == 0 || i % 6 == 4 { 1.0 } else { 0.0 })
                .collect()
        } else if name.ends_with("init_betas") {
            vec![0.0; n]
        } else if name.ends_with("init_cam") {
            (0..n).map(|i| if i == 0 { 0.9 } else { 0.0 }).collect()
        } else if is_norm && leaf == "weight" {
            vec![1.0; n]
        } else if is_norm && leaf == "bias" {
            vec![0.0; n]
        } else if leaf == "pos_embed" || leaf == "pos_embedding" {
            self.uniform(name, n, 0.035)
        } else {
            // Linear / conv weights [out, in, ...] and their biases: U(±1/√fan_in); the
            // readouts of the heads are scaled down so rotations and variances stay moderate.
            let fan_in = if shape.len() >= 2 {
                shape[1..].iter().product::<usize>()
            } else {
                shape[0]
            };
            let mut bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            if name.contains("dec") && !name.contains("transformer") {
                bound *= 0.1;
            }
            self.uniform(name, n, bound)
        };
        Tensor::from_vec(shape, values)
    }
}

/// The initialisation RNG stream of tensor `name`: the counter RNG keyed by an FNV-1a fold of
/// the name into `key` (so each tensor's draws depend only on the seed and its name).
pub(crate) fn init_stream(key: u64, name: &str) -> crate::train::rng::Philox {
    let key = name
        .bytes()
        .fold(key, |k, b| (k ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    crate::train::rng::Philox::new(key, crate::train::rng::STREAM_INIT, 0, 0)
}

/// PyTorch's default initialisation of a freshly built uncertainty head (SPEC §6): Linear
/// weights and biases `U(±1/√fan_in)`, `to_token_embedding` `U(±1)` (fan-in 1),
/// `pos_embedding` ~ N(0, 1), LayerNorm (1, 0); `W` `U(±1/√63)`. Draws from the counter RNG keyed
/// by (seed, tensor name), so a run is reproducible.
pub struct TorchDefaultInit {
    pub seed: u64,
    /// Input width of each weight handed out, by module prefix: a bias draws from its weight's
    /// bound (`Loader::linear` asks for the weight first).
    fan_in: std::cell::RefCell<std::collections::HashMap<String, usize>>,
}

impl TorchDefaultInit {
    pub fn new(seed: u64) -> TorchDefaultInit {
        TorchDefaultInit {
            seed,
            fan_in: Default::default(),
        }
    }
}

impl TensorSource for TorchDefaultInit {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let p = init_stream(self.seed ^ 0x5eed_1417, name);
        let values: Vec<f32> = if name.contains("norm") && leaf == "weight" {
            vec![1.0; n]
        } else if name.contains("norm") && leaf == "bias" {
            vec![0.0; n]
        } else if leaf == "pos_embedding" || leaf == "pos_embed" {
            (0..n as u64).map(|i| p.normal(i)).collect()
        } else {
            let prefix = name
                .rsplit_once('.')
                .map(|(p, _)| p.to_string())
                .unwrap_or_default();
            let fan_in = if leaf == "bias" {
                self.fan_in.borrow().get(&prefix).copied().unwrap_or(1)
            } else {
                let f = if shape.len() >= 2 {
                    shape[1..].iter().product()
                } else {
                    1
                };
                self.fan_in.borrow_mut().insert(prefix, f);
                f
            }
            .max(1);
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..n as u64)
                .map(|i| (2.0 * p.uniform(i) - 1.0) * bound)
                .collect()
        };
        Tensor::from_vec(shape, values)
    }
}

/// A weights file, with the tensors it lacks under `fresh_prefixes` taken from `fallback`
/// (fine-tuning an uncertainty model from a plain HaMeR checkpoint).
pub struct WithFallback<'a> {
    pub file: &'a TensorFile,
    pub fallback: &'a dyn TensorSource,
    pub fresh_prefixes: &'a [&'a str],
}

impl TensorSource for WithFallback<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if !self.file.contains(name) && self.fresh_prefixes.iter().any(|p| name.starts_with(p)) {
            return self.fallback.tensor(name, shape);
        }
        self.file.f32(name, Some(shape))
    }
    fn skip(&self, name: &str) {
        self.file.skip(name)
    }
}
