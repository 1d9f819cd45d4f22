//! Safetensors files: memory-mapped reading with strict names, shapes and dtypes (weights,
//! input tensors), and atomic writing of f32 dumps.
//!
//! f32 tensors whose data is 4-byte aligned in the file are used in place from the map; f16,
//! bf16 and f64 tensors (and misaligned f32 ones) are converted once into owned f32 storage.

use crate::error::{Error, Result};
use crate::tensor::{fmt_shape, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range of the tensor's data inside the map.
    start: usize,
    len: usize,
}

/// An open safetensors file. Every tensor taken from it is remembered, so that the caller can
/// ask at the end which tensors nobody used.
pub struct TensorFile {
    path: PathBuf,
    map: Arc<Mmap>,
    entries: BTreeMap<String, Entry>,
    used: RefCell<BTreeSet<String>>,
    metadata: Option<std::collections::HashMap<String, String>>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<TensorFile> {
        crate::textfile::check_regular(path)?;
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let shown = path.display();
        if len < 8 {
            return Err(Error::Weights(format!(
                "{shown}: {len} bytes is too short to be a safetensors file"
            )));
        }
        // SAFETY: the map is read-only; like every mmap-based loader we rely on the file not
        // being truncated or rewritten while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| Error::Weights(format!("{shown}: not a valid safetensors file ({e})")))?;
        let base = map.as_ptr() as usize;
        let mut entries = BTreeMap::new();
        for (name, view) in st.iter() {
            let data = view.data();
            entries.insert(
                name.to_string(),
                Entry {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    start: data.as_ptr() as usize - base,
                    len: data.len(),
                },
            );
        }
        drop(st);
        let metadata = SafeTensors::read_metadata(&map)
            .ok()
            .and_then(|(_, m)| m.metadata().clone());
        Ok(TensorFile {
            path: path.to_path_buf(),
            map: Arc::new(map),
            entries,
            used: RefCell::new(BTreeSet::new()),
            metadata,
        })
    }

    /// The file's `__metadata__` string map, if any.
    pub fn metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
        self.metadata.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    fn entry(&self, name: &str, shape: Option<&[usize]>) -> Result<&Entry> {
        let shown = self.path.display();
        let e = self.entries.get(name).ok_or_else(|| match shape {
            Some(s) => Error::Weights(format!(
                "{shown}: missing tensor `{name}` (expected shape {})",
                fmt_shape(s)
            )),
            None => Error::Weights(format!("{shown}: missing tensor `{name}`")),
        })?;
        if let Some(s) = shape {
            if e.shape != s {
                return Err(Error::Weights(format!(
                    "{shown}: tensor `{name}` has shape {} in the file, the model expects {}",
                    fmt_shape(&e.shape),
                    fmt_shape(s)
                )));
            }
        }
        self.used.borrow_mut().insert(name.to_string());
        Ok(e)
    }

    /// A float tensor as f32, with its shape checked when `shape` is given.
    pub fn f32(&self, name: &str, shape: Option<&[usize]>) -> Result<Tensor> {
        let e = self.entry(name, shape)?;
        let bytes = &self.map[e.start..e.start + e.len];
        let values: Vec<f32> = match e.dtype {
            Dtype::F32 if e.start % 4 == 0 => return Ok(Tensor::mapped(&e.shape, self.map.clone(), e.start)),
            Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
            other => {
                return Err(Error::Weights(format!(
                    "{}: tensor `{name}` has dtype {other:?}, expected a float type (F32, F16, BF16 or F64)",
                    self.path.display()
                )))
            }
        };
        Tensor::from_vec(&e.shape, values)
    }

    /// [`TensorFile::f32`] for model weights: every value must be finite, since one NaN or
    /// infinity in a weight turns every output into NaN.
    pub fn f32_finite(&self, name: &str, shape: Option<&[usize]>) -> Result<Tensor> {
        let t = self.f32(name, shape)?;
        if let Some(i) = first_non_finite(t.data()) {
            return Err(Error::Weights(format!(
                "{}: tensor `{name}` holds a non-finite value ({}) at flat index {i}; the file is \
                 corrupt or was saved from a diverged run",
                self.path.display(),
                t.data()[i]
            )));
        }
        Ok(t)
    }

    /// An integer tensor (I64, I32, U32 or U8) as i64, with its shape checked when given.
    pub fn i64(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<i64>> {
        let e = self.entry(name, shape)?;
        let bytes = &self.map[e.start..e.start + e.len];
        Ok(match e.dtype {
            Dtype::I64 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            Dtype::I32 => bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64)
                .collect(),
            Dtype::U32 => bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64)
                .collect(),
            Dtype::U8 => bytes.iter().map(|&b| b as i64).collect(),
            other => {
                return Err(Error::Weights(format!(
                    "{}: tensor `{name}` has dtype {other:?}, expected an integer type",
                    self.path.display()
                )))
            }
        })
    }

    /// Names of the tensors no one has taken yet.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.entries
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect()
    }

    /// Marks a tensor as deliberately ignored.
    pub fn skip(&self, name: &str) {
        self.used.borrow_mut().insert(name.to_string());
    }
}

/// The index of the first NaN or infinity in `v`, if any: scanned in parallel blocks with a
/// branch-free test inside each, so a 700 M-parameter checkpoint costs a fraction of a second.
pub fn first_non_finite(v: &[f32]) -> Option<usize> {
    use rayon::prelude::*;
    const BLOCK: usize = 1 << 16;
    let block = v
        .par_chunks(BLOCK)
        .position_first(|c| !c.iter().fold(true, |ok, x| ok & x.is_finite()))?;
    let start = block * BLOCK;
    v[start..]
        .iter()
        .position(|x| !x.is_finite())
        .map(|i| start + i)
}

/// Writes f32 tensors to a safetensors file, atomically (a temporary file renamed into place).
pub fn save_f32(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    save_tensors(path, tensors, &[], metadata)
}

/// An integer tensor to store as I64: name, shape, values.
pub type IntTensor<'a> = (&'a str, Vec<usize>, Vec<i64>);

/// Writes f32 tensors and I64 tensors to one safetensors file, atomically.
pub fn save_tensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    ints: &[IntTensor<'_>],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    use safetensors::tensor::TensorView;
    let mut views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, t)| {
            let bytes: &[u8] = bytemuck::cast_slice(t.data());
            TensorView::new(Dtype::F32, t.shape().to_vec(), bytes)
                .map(|v| (name.to_string(), v))
                .map_err(|e| Error::Input(format!("cannot store tensor `{name}`: {e}")))
        })
        .collect::<Result<_>>()?;
    for (name, shape, values) in ints {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        views.push((
            name.to_string(),
            TensorView::new(Dtype::I64, shape.clone(), bytes)
                .map_err(|e| Error::Input(format!("cannot store tensor `{name}`: {e}")))?,
        ));
    }
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| Error::Input(format!("cannot serialise {}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.is_empty() {
        return Err(Error::Input(format!(
            "{}: not a file name to write to",
            path.display()
        )));
    }
    if path.is_dir() {
        return Err(Error::Input(format!(
            "{}: is a directory; expected a file name to write to",
            path.display()
        )));
    }
    if !dir.is_dir() {
        return Err(Error::Input(format!(
            "{}: cannot write it, {} is not an existing directory",
            path.display(),
            dir.display()
        )));
    }
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    // Errors name the file the user asked for, not the temporary one.
    std::fs::write(&tmp, bytes).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
