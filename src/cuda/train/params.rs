//! The trainable tensors on the device, by state-dict name: fp32 master weights, a working copy
//! in the GEMM input type `T` (bf16 mode only; in fp32 mode the GEMMs read the masters), fp32
//! gradients and the AdamW moments. The gradients live in their own struct so that a backward
//! can read the weights while it writes the gradients.

use std::collections::HashMap;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use half::bf16;

use super::super::{cuda_err, CudaBackend, Dtype};
use crate::error::{Error, Result};
use crate::model::backward::Grads;
use crate::model::HandModel;

/// Name → position in the parameter list (shared by weights, gradients and moments).
#[derive(Clone, Default)]
pub struct ParamIndex {
    names: Vec<String>,
    lens: Vec<usize>,
    by_name: HashMap<String, usize>,
}

impl ParamIndex {
    pub fn get(&self, name: &str) -> Result<usize> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| Error::Cuda(format!("no parameter named {name} on the device")))
    }
    pub fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
    pub fn names(&self) -> &[String] {
        &self.names
    }
    pub fn len_of(&self, i: usize) -> usize {
        self.lens[i]
    }
    pub fn count(&self) -> usize {
        self.names.len()
    }
    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.lens.iter().sum()
    }
}

/// Weights: fp32 masters, and bf16 working copies when `T` is bf16.
pub struct DevParams<T: Dtype> {
    pub index: ParamIndex,
    pub master: Vec<CudaSlice<f32>>,
    /// bf16 copies (bf16 mode, where `T` is bf16); `None` in fp32 mode.
    pub work: Option<Vec<CudaSlice<bf16>>>,
    _t: std::marker::PhantomData<T>,
    /// LayerNorm epsilons by state-dict prefix (`backbone.last_norm`, …).
    pub norm_eps: HashMap<String, f32>,
}

/// One fp32 buffer per parameter (gradients, moments).
pub struct DevBuffers {
    pub bufs: Vec<CudaSlice<f32>>,
}

fn is_f32<T: Dtype>() -> bool {
    T::NAME == "f32"
}

impl<T: Dtype> DevParams<T> {
    /// Uploads every trainable tensor of `model` (`HandModel::params_mut` order).
    pub fn upload(be: &CudaBackend, model: &mut HandModel) -> Result<DevParams<T>> {
        // `w` reinterprets the masters (f32) or the bf16 copies as T: no other type is valid.
        if !matches!(T::NAME, "f32" | "bf16") {
            return Err(Error::Cuda(format!(
                "training weights in {} are not supported (f32, bf16)",
                T::NAME
            )));
        }
        let mut index = ParamIndex::default();
        let mut master = Vec::new();
        let mut work = (!is_f32::<T>()).then(Vec::new);
        for (name, t) in model.params_mut() {
            let data = t.data();
            index.by_name.insert(name.clone(), index.names.len());
            index.names.push(name);
            index.lens.push(data.len());
            master.push(be.upload::<f32>(data)?);
            if let Some(w) = work.as_mut() {
                w.push(be.upload::<bf16>(data)?);
            }
        }
        Ok(DevParams {
            index,
            master,
            work,
            norm_eps: HashMap::new(),
            _t: std::marker::PhantomData,
        })
    }

    /// The fp32 master of `name`.
    pub fn f(&self, name: &str) -> Result<CudaView<'_, f32>> {
        Ok(self.master[self.index.get(name)?].as_view())
    }

    /// `name` in the GEMM input type: the bf16 copy, or (fp32 mode) the master itself.
    pub fn w(&self, name: &str) -> Result<CudaView<'_, T>> {
        let i = self.index.get(name)?;
        // SAFETY: `work` exists exactly when T is bf16 and is None when T is f32 (`upload`
        // decides by T::NAME), so either view reinterprets storage as its own type, same length.
        let v = match &self.work {
            Some(w) => unsafe { w[i].transmute::<T>(w[i].len()) },
            None => unsafe { self.master[i].transmute::<T>(self.master[i].len()) },
        };
        v.ok_or_else(|| Error::Cuda(format!("viewing {name} as {}", T::NAME)))
    }

    /// Rows `rows` (of `cols` values each) of `name` in the GEMM input type.
    pub fn w_rows(
        &self,
        name: &str,
        rows: std::ops::Range<usize>,
        cols: usize,
    ) -> Result<CudaView<'_, T>> {
        let full = self.w(name)?;
        if rows.end * cols > full.len() {
            return Err(Error::Cuda(format!(
                "rows {rows:?} × {cols} are outside {name} ({} values)",
                full.len()
            )));
        }
        Ok(full.slice(rows.start * cols..rows.end * cols))
    }

    /// Refreshes the bf16 working copies from the masters (after an optimiser step that did
    /// not write them itself, or after a checkpoint load). Nothing to do in fp32 mode.
    pub fn refresh_work(&mut self, be: &CudaBackend) -> Result<()> {
        let Some(work) = self.work.as_mut() else {
            return Ok(());
        };
        for (m, w) in self.master.iter().zip(work.iter_mut()) {
            be.cast_fwd_f32_to_bf16(&m.as_view(), &mut w.as_view_mut())?;
        }
        Ok(())
    }

    /// Copies the masters back into `model`'s tensors.
    pub fn download_into(&self, be: &CudaBackend, model: &mut HandModel) -> Result<()> {
        for (name, t) in model.params_mut() {
            let i = self.index.get(&name)?;
            let host = be.download_f32::<f32>(&self.master[i].as_view())?;
            t.data_mut().copy_from_slice(&host);
        }
        Ok(())
    }

    /// Uploads `model`'s tensors into the masters (and working copies), e.g. after a
    /// checkpoint was loaded on the host.
    pub fn upload_from(&mut self, be: &CudaBackend, model: &mut HandModel) -> Result<()> {
        for (name, t) in model.params_mut() {
            let i = self.index.get(&name)?;
            be.stream()
                .memcpy_htod(t.data(), &mut self.master[i])
                .map_err(cuda_err(format_args!("copying {name} to the device")))?;
        }
        self.refresh_work(be)
    }
}

impl DevBuffers {
    /// One zeroed fp32 buffer per parameter of `index`.
    pub fn zeros(be: &CudaBackend, index: &ParamIndex) -> Result<DevBuffers> {
        let bufs = (0..index.count())
            .map(|i| be.zeros(index.len_of(i).max(1)))
            .collect::<Result<Vec<_>>>()?;
        Ok(DevBuffers { bufs })
    }

    pub fn get_mut(&mut self, index: &ParamIndex, name: &str) -> Result<CudaViewMut<'_, f32>> {
        let i = index.get(name)?;
        let n = index.len_of(i);
        Ok(self.bufs[i].slice_mut(..n))
    }

    /// Two different buffers at once (a LayerNorm's weight and bias gradients).
    pub fn pair_mut(
        &mut self,
        index: &ParamIndex,
        a: &str,
        b: &str,
    ) -> Result<(CudaViewMut<'_, f32>, CudaViewMut<'_, f32>)> {
        let (ia, ib) = (index.get(a)?, index.get(b)?);
        let (na, nb) = (index.len_of(ia), index.len_of(ib));
        if ia == ib {
            return Err(Error::Cuda(format!("{a} and {b} are the same buffer")));
        }
        let (lo, hi) = (ia.min(ib), ia.max(ib));
        let (left, right) = self.bufs.split_at_mut(hi);
        let (x, y) = (&mut left[lo], &mut right[0]);
        Ok(if ia < ib {
            (x.slice_mut(..na), y.slice_mut(..nb))
        } else {
            (y.slice_mut(..na), x.slice_mut(..nb))
        })
    }

    pub fn get(&self, index: &ParamIndex, name: &str) -> Result<CudaView<'_, f32>> {
        let i = index.get(name)?;
        let n = index.len_of(i);
        Ok(self.bufs[i].slice(..n))
    }

    /// Sets every buffer to zero (queued).
    pub fn clear(&mut self, be: &CudaBackend) -> Result<()> {
        for b in self.bufs.iter_mut() {
            be.stream()
                .memset_zeros(b)
                .map_err(cuda_err("zeroing the gradients"))?;
        }
        Ok(())
    }

    /// Host copies by name (for `--dump-grads`, tests and checkpoints).
    pub fn download(&self, be: &CudaBackend, index: &ParamIndex) -> Result<Grads> {
        let mut g = Grads::default();
        for (i, name) in index.names().iter().enumerate() {
            let n = index.len_of(i);
            g.put(name, be.download_f32::<f32>(&self.bufs[i].slice(..n))?);
        }
        Ok(g)
    }

    /// Overwrites the buffers from host copies by name (checkpoint resume of the moments);
    /// names missing from `src` are zeroed.
    pub fn upload_from(
        &mut self,
        be: &CudaBackend,
        index: &ParamIndex,
        src: &std::collections::BTreeMap<String, Vec<f32>>,
    ) -> Result<()> {
        for (i, name) in index.names().iter().enumerate() {
            let n = index.len_of(i);
            match src.get(name) {
                Some(v) if v.len() == n => be
                    .stream()
                    .memcpy_htod(v, &mut self.bufs[i].slice_mut(..n))
                    .map_err(cuda_err(format_args!("copying {name} to the device")))?,
                Some(v) => {
                    return Err(Error::Input(format!(
                        "optimiser state {name} has {} values, the model {n}",
                        v.len()
                    )))
                }
                None => be
                    .stream()
                    .memset_zeros(&mut self.bufs[i])
                    .map_err(cuda_err("zeroing an optimiser moment"))?,
            }
        }
        Ok(())
    }
}
