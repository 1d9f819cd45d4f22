//! Building blocks shared by the backbone and the heads: a prefixed weight loader, `Linear` and
//! `LayerNorm`, each mirroring its PyTorch module (`weight`, `bias`).

use super::weights::TensorFile;
use crate::error::Result;
use crate::ops::layernorm::layernorm_fwd_cpu;
use crate::ops::linear::{linear_cpu, Epilogue};
use crate::tensor::Tensor;

/// Takes tensors from a file under a name prefix (`backbone.blocks.3.` …).
pub struct Loader<'a> {
    pub file: &'a TensorFile,
    pub prefix: String,
}

impl<'a> Loader<'a> {
    pub fn new(file: &'a TensorFile, prefix: &str) -> Loader<'a> {
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
        self.file.f32(&self.name(leaf), Some(shape))
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
