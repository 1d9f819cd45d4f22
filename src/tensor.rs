//! `Tensor` = shape + dtype + storage. Nothing else: no strides, no autograd, no views.
//!
//! Host storage is either an owned `Vec<f32>` or a window into a memory-mapped weights file, so
//! that weights are read in place and never copied twice. Device storage arrives with the CUDA
//! backend; ops dispatch on `Tensor::device()`.

use crate::error::{Error, Result};
use memmap2::Mmap;
use std::sync::Arc;

/// Element type of a tensor's storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
}

/// Where a tensor's storage lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
}

#[derive(Clone, Debug)]
enum HostData {
    Owned(Vec<f32>),
    /// `len` f32 values starting at byte `offset` of `map` (offset is 4-byte aligned).
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
}

#[derive(Clone, Debug)]
enum Storage {
    Host(HostData),
}

#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    storage: Storage,
}

fn numel_of(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Formats a shape as `[2, 3, 4]`.
pub fn fmt_shape(shape: &[usize]) -> String {
    format!("{shape:?}")
}

impl Tensor {
    /// An owned f32 host tensor; `data.len()` must match the shape.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        if numel_of(shape) != data.len() {
            return Err(Error::Input(format!(
                "tensor of shape {} needs {} values, got {}",
                fmt_shape(shape),
                numel_of(shape),
                data.len()
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            dtype: DType::F32,
            storage: Storage::Host(HostData::Owned(data)),
        })
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            dtype: DType::F32,
            storage: Storage::Host(HostData::Owned(vec![0.0; numel_of(shape)])),
        }
    }

    /// An f32 host tensor backed by `len` values at byte `offset` of a memory map.
    /// The caller guarantees `offset % 4 == 0` and that the range lies inside the map.
    pub(crate) fn mapped(shape: &[usize], map: Arc<Mmap>, offset: usize) -> Tensor {
        let len = numel_of(shape);
        debug_assert!(offset % 4 == 0 && offset + 4 * len <= map.len());
        Tensor {
            shape: shape.to_vec(),
            dtype: DType::F32,
            storage: Storage::Host(HostData::Mapped { map, offset, len }),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> Device {
        match self.storage {
            Storage::Host(_) => Device::Cpu,
        }
    }

    pub fn numel(&self) -> usize {
        numel_of(&self.shape)
    }

    /// Size of dimension `i` (negative counts from the end).
    pub fn dim(&self, i: isize) -> usize {
        let n = self.shape.len() as isize;
        let j = if i < 0 { n + i } else { i };
        self.shape[j as usize]
    }

    /// The values of a host f32 tensor.
    pub fn data(&self) -> &[f32] {
        match &self.storage {
            Storage::Host(HostData::Owned(v)) => v,
            Storage::Host(HostData::Mapped { map, offset, len }) => {
                bytemuck::cast_slice(&map[*offset..*offset + 4 * *len])
            }
        }
    }

    /// Mutable values of a host f32 tensor; a mapped tensor is copied into owned storage first.
    pub fn data_mut(&mut self) -> &mut [f32] {
        let Storage::Host(h) = &mut self.storage;
        if let HostData::Mapped { map, offset, len } = h {
            let owned = bytemuck::cast_slice::<u8, f32>(&map[*offset..*offset + 4 * *len]).to_vec();
            *h = HostData::Owned(owned);
        }
        match h {
            HostData::Owned(v) => v,
            // Replaced by owned storage just above.
            HostData::Mapped { .. } => &mut [],
        }
    }

    /// Consumes the tensor and returns its values.
    pub fn into_vec(self) -> Vec<f32> {
        match self.storage {
            Storage::Host(HostData::Owned(v)) => v,
            Storage::Host(HostData::Mapped { .. }) => self.data().to_vec(),
        }
    }

    /// True when the values are read in place from a memory map.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Host(HostData::Mapped { .. }))
    }

    /// The same values under another shape with the same number of elements.
    pub fn reshape(self, shape: &[usize]) -> Result<Tensor> {
        if numel_of(shape) != self.numel() {
            return Err(Error::Input(format!(
                "cannot reshape {} into {}",
                fmt_shape(&self.shape),
                fmt_shape(shape)
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            ..self
        })
    }

    /// Checks the shape, naming the tensor in the error.
    pub fn expect_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            return Err(Error::Input(format!(
                "{name}: expected shape {}, got {}",
                fmt_shape(shape),
                fmt_shape(&self.shape)
            )));
        }
        Ok(())
    }
}

/// `max|a − b| / max|b|`, the project's error measure (DESIGN.md). Returns `abs` error when
/// `max|b| == 0`.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_err: lengths differ");
    let mut num = 0f64;
    let mut den = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            // f64::max ignores NaN; a non-finite value anywhere is an infinite error unless both
            // sides hold the same infinity.
            if x == y && x.is_infinite() {
                continue;
            }
            return f64::INFINITY;
        }
        num = num.max((x as f64 - y as f64).abs());
        den = den.max((y as f64).abs());
    }
    if den == 0.0 {
        num
    } else {
        num / den
    }
}
