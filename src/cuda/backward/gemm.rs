//! The gradient GEMMs of the linear layer `y = x·Wᵀ + b` through cuBLASLt: `dx = dy·W` and
//! `dW += dyᵀ·x` (the bias gradient is `CudaBackend::bias_grad`, a kernel of ours). CPU twins:
//! `ops::linear::{linear_bwd_input_cpu, linear_bwd_params_cpu}`.
//!
//! `Gemm` (src/cuda/gemm.rs) keeps its descriptors private, so this engine has its own handle,
//! workspace and plan cache, set up the same way: compute type `CUBLAS_COMPUTE_32F` with scale
//! type `CUDA_R_32F` (true fp32 for f32 operands — never TF32 — and bf16 tensor cores with fp32
//! accumulation for bf16 operands), the heuristic told the real pointer alignments, split-K
//! restricted to fp32 partial sums in the workspace (`REDUCTION_SCHEME_COMPUTE_TYPE`), one plan
//! per (problem, types, accumulation, alignments), 32 MiB of workspace on Hopper (4 MiB before).
//! A plan's algorithm is fixed once chosen and cuBLASLt uses no atomics for these schemes, so a
//! repeated call gives the same bits.
//!
//! # In cuBLASLt's column-major terms
//!
//! Row-major `M[r, c]` is, to cuBLASLt, the column-major `Mᵀ` with leading dimension c (see
//! src/cuda/gemm.rs). With x `[rows, d_in]`, W `[d_out, d_in]`, dy `[rows, d_out]`:
//!
//! - dx = dy·W is computed as dxᵀ = (W buffer)·dyᵀ: D = dxᵀ (d_in × rows), A = W stored
//!   d_in × d_out with op N, B = dy stored d_out × rows with op N, k = d_out;
//! - dW += dyᵀ·x is computed as dWᵀ = xᵀ·dy: D = dWᵀ (d_in × d_out), A = x stored d_in × rows
//!   with op N, B = dy stored d_out × rows with op T, k = rows.
//!
//! Leading dimensions are the stored row lengths (d_in for W, x, dx, dW; d_out for dy). dW is
//! accumulated with beta = 1 and C = D (in place); dx is overwritten (beta = 0) unless asked to
//! accumulate.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::{size_of, MaybeUninit};
use std::sync::Arc;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::result::CublasError;
use cudarc::cublaslt::sys;
use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceSlice,
};

use super::super::{cuda_err, CudaBackend, Dtype};
use crate::error::{Error, Result};

const WORKSPACE_HOPPER: usize = 32 << 20;
const WORKSPACE_OLDER: usize = 4 << 20;
const WORKSPACE_ALIGN: u64 = 256;
/// cuBLASLt's default alignment assumption, the largest worth telling it about.
const MAX_ALIGN: u32 = 256;

/// The cuBLASLt functions called here, looked up before the first call (cudarc panics on a
/// missing symbol).
const SYMBOLS: [&str; 12] = [
    "cublasLtCreate",
    "cublasLtDestroy",
    "cublasLtMatmul",
    "cublasLtMatmulAlgoGetHeuristic",
    "cublasLtMatmulDescCreate",
    "cublasLtMatmulDescDestroy",
    "cublasLtMatmulDescSetAttribute",
    "cublasLtMatmulPreferenceCreate",
    "cublasLtMatmulPreferenceDestroy",
    "cublasLtMatmulPreferenceSetAttribute",
    "cublasLtMatrixLayoutCreate",
    "cublasLtMatrixLayoutDestroy",
];

fn lt_type<T: Dtype>() -> Result<sys::cudaDataType_t> {
    match (T::NAME, size_of::<T>()) {
        ("f32", 4) => Ok(sys::cudaDataType_t::CUDA_R_32F),
        ("bf16", 2) => Ok(sys::cudaDataType_t::CUDA_R_16BF),
        (name, _) => crate::input_err!("grad gemm: element type {name} has no cuBLASLt mapping"),
    }
}

fn alignment(ptr: u64) -> u32 {
    1u32 << ptr.trailing_zeros().min(MAX_ALIGN.trailing_zeros())
}

/// A column-major matrix as stored: rows × cols, leading dimension ld.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct MatShape {
    rows: u64,
    cols: u64,
    ld: i64,
}

/// `D[m, n] = op(A)·op(B)` with A, B, D as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Problem {
    m: u64,
    n: u64,
    k: u64,
    trans_a: bool,
    trans_b: bool,
    a: MatShape,
    b: MatShape,
    d: MatShape,
}

fn shape(rows: u64, cols: u64) -> MatShape {
    MatShape {
        rows,
        cols,
        ld: rows as i64,
    }
}

/// dx = dy·W as dxᵀ = (W buffer)·dyᵀ (the table in the module docs).
fn input_problem(rows: u64, d_in: u64, d_out: u64) -> Problem {
    Problem {
        m: d_in,
        n: rows,
        k: d_out,
        trans_a: false,
        trans_b: false,
        a: shape(d_in, d_out),
        b: shape(d_out, rows),
        d: shape(d_in, rows),
    }
}

/// dW += dyᵀ·x as dWᵀ = xᵀ·dy (the table in the module docs).
fn weight_problem(rows: u64, d_in: u64, d_out: u64) -> Problem {
    Problem {
        m: d_in,
        n: d_out,
        k: rows,
        trans_a: false,
        trans_b: true,
        a: shape(d_in, rows),
        b: shape(d_out, rows),
        d: shape(d_in, d_out),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    problem: Problem,
    t_in: &'static str,
    t_out: &'static str,
    accumulate: bool,
    /// Alignment in bytes of A, B and C/D.
    align: [u32; 3],
}

impl PlanKey {
    fn describe(&self) -> String {
        let p = &self.problem;
        format!(
            "gradient GEMM {}→{} m {} n {} k {} ({}{}), {}; alignment A {} B, B {} B, D {} B",
            self.t_in,
            self.t_out,
            p.m,
            p.n,
            p.k,
            if p.trans_a { "T" } else { "N" },
            if p.trans_b { "T" } else { "N" },
            if self.accumulate { "beta 1" } else { "beta 0" },
            self.align[0],
            self.align[1],
            self.align[2]
        )
    }
}

/// A cuBLASLt object destroyed on drop (errors in drop cannot be acted on and are ignored).
struct Owned<T: Copy> {
    raw: T,
    destroy: unsafe fn(T) -> std::result::Result<(), CublasError>,
}

impl<T: Copy> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: `raw` was created by the matching cuBLASLt create call and is destroyed once.
        let _ = unsafe { (self.destroy)(self.raw) };
    }
}

struct Plan {
    desc: Owned<sys::cublasLtMatmulDesc_t>,
    a: Owned<sys::cublasLtMatrixLayout_t>,
    b: Owned<sys::cublasLtMatrixLayout_t>,
    d: Owned<sys::cublasLtMatrixLayout_t>,
    algo: sys::cublasLtMatmulAlgo_t,
}

fn layout(
    ty: sys::cudaDataType_t,
    s: MatShape,
) -> std::result::Result<Owned<sys::cublasLtMatrixLayout_t>, CublasError> {
    Ok(Owned {
        raw: lt::create_matrix_layout(ty, s.rows, s.cols, s.ld)?,
        destroy: lt::destroy_matrix_layout,
    })
}

impl Plan {
    fn new(
        handle: sys::cublasLtHandle_t,
        key: &PlanKey,
        t_in: sys::cudaDataType_t,
        t_out: sys::cudaDataType_t,
        workspace_bytes: usize,
    ) -> Result<Plan> {
        use sys::cublasLtMatmulDescAttributes_t as D;
        use sys::cublasLtMatmulPreferenceAttributes_t as P;
        let what = key.describe();
        let err = |step: &'static str| cuda_err(format!("cuBLASLt {step} for {what}"));
        let p = key.problem;

        let desc = Owned {
            raw: lt::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType_t::CUDA_R_32F,
            )
            .map_err(err("creating the matmul descriptor"))?,
            destroy: lt::destroy_matmul_desc,
        };
        // cublasOperation_t as int32_t: N = 0, T = 1. The epilogue stays DEFAULT.
        for (attr, t) in [
            (D::CUBLASLT_MATMUL_DESC_TRANSA, p.trans_a),
            (D::CUBLASLT_MATMUL_DESC_TRANSB, p.trans_b),
        ] {
            let op = i32::from(t);
            // SAFETY: live descriptor; cuBLASLt copies the 4-byte int32 it documents.
            unsafe {
                lt::set_matmul_desc_attribute(
                    desc.raw,
                    attr,
                    &op as *const i32 as *const c_void,
                    size_of::<i32>(),
                )
            }
            .map_err(err("setting a transpose"))?;
        }
        let a = layout(t_in, p.a).map_err(err("creating the layout of A"))?;
        let b = layout(t_in, p.b).map_err(err("creating the layout of B"))?;
        let d = layout(t_out, p.d).map_err(err("creating the layout of D"))?;

        let pref = Owned {
            raw: lt::create_matmul_pref().map_err(err("creating preferences"))?,
            destroy: lt::destroy_matmul_pref,
        };
        let set_pref = |attr: P, value: &dyn AsBytes| -> std::result::Result<(), CublasError> {
            let (ptr, len) = value.bytes();
            // SAFETY: live preference; cuBLASLt copies `len` bytes of the attribute's C type.
            unsafe { lt::set_matmul_pref_attribute(pref.raw, attr, ptr, len) }
        };
        set_pref(
            P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &(workspace_bytes as u64),
        )
        .map_err(err("setting the workspace size"))?;
        let [align_a, align_b, align_d] = key.align;
        for (attr, align) in [
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_d),
            (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_d),
        ] {
            set_pref(attr, &align).map_err(err("setting an alignment preference"))?;
        }
        let reduction =
            sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
        set_pref(P::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction)
            .map_err(err("setting the reduction-scheme mask"))?;

        let mut result = MaybeUninit::<sys::cublasLtMatmulHeuristicResult_t>::uninit();
        let mut count: std::ffi::c_int = 0;
        // SAFETY: all descriptors are live; room for one result is passed and asked for.
        let status = unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                handle,
                desc.raw,
                a.raw,
                b.raw,
                d.raw,
                d.raw,
                pref.raw,
                1,
                result.as_mut_ptr(),
                &mut count,
            )
        };
        if status == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED
            || (status.result().is_ok() && count < 1)
        {
            return Err(Error::Cuda(format!(
                "cuBLASLt has no algorithm for {what} (a misaligned view can be copied to its own \
                 buffer)"
            )));
        }
        status.result().map_err(err("heuristic query"))?;
        // SAFETY: the call succeeded and wrote count >= 1 results.
        let result = unsafe { result.assume_init() };
        result.state.result().map_err(err("heuristic result"))?;
        if result.workspaceSize > workspace_bytes {
            return Err(Error::Cuda(format!(
                "cuBLASLt chose an algorithm for {what} that needs {} bytes of workspace, more \
                 than the {workspace_bytes} allowed",
                result.workspaceSize
            )));
        }
        Ok(Plan {
            desc,
            a,
            b,
            d,
            algo: result.algo,
        })
    }
}

/// Host values handed to cuBLASLt attribute setters as raw bytes.
trait AsBytes {
    fn bytes(&self) -> (*const c_void, usize);
}
impl AsBytes for u32 {
    fn bytes(&self) -> (*const c_void, usize) {
        (self as *const u32 as *const c_void, size_of::<u32>())
    }
}
impl AsBytes for u64 {
    fn bytes(&self) -> (*const c_void, usize) {
        (self as *const u64 as *const c_void, size_of::<u64>())
    }
}

/// cuBLASLt gradient GEMMs of the linear layer on one backend's stream: a handle, a workspace
/// and a cache of plans. Create one with [`CudaBackend::grad_gemm`]; calls take `&mut self`.
pub struct GradGemm {
    // Field order is drop order: plans, then the workspace (freed in stream order), then the
    // handle.
    plans: HashMap<PlanKey, Plan>,
    workspace: CudaSlice<u8>,
    workspace_bytes: usize,
    handle: Owned<sys::cublasLtHandle_t>,
    stream: Arc<CudaStream>,
}

impl Drop for GradGemm {
    fn drop(&mut self) {
        // cublasLtDestroy and the workspace's free want the context current on this thread.
        let _ = self.stream.context().bind_to_thread();
    }
}

// SAFETY: the raw cuBLASLt handle and descriptors are host objects not tied to the creating
// thread; every use goes through `&mut self`, and each call binds the CUDA context first.
unsafe impl Send for GradGemm {}

impl CudaBackend {
    /// A cuBLASLt engine for the linear layer's gradient GEMMs on this backend's stream.
    /// `Error::Cuda` when libcublasLt cannot be loaded or lacks a function this crate calls.
    pub fn grad_gemm(&self) -> Result<GradGemm> {
        GradGemm::new(self)
    }
}

impl GradGemm {
    /// See [`CudaBackend::grad_gemm`].
    pub fn new(backend: &CudaBackend) -> Result<GradGemm> {
        // SAFETY: only tries to dlopen libcublasLt.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Cuda(
                "libcublasLt could not be loaded (install the CUDA toolkit's cuBLAS or add its lib \
                 directory to LD_LIBRARY_PATH)"
                    .into(),
            ));
        }
        // SAFETY: the library is present, so culib() loads it; symbols are only looked up.
        let lib = unsafe { sys::culib() };
        for name in SYMBOLS {
            // SAFETY: looked up, never called through this pointer.
            if unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err() {
                return Err(Error::Cuda(format!(
                    "libcublasLt lacks {name}: the installed cuBLAS is too old for this build"
                )));
            }
        }
        let stream = backend.stream.clone();
        stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))?;
        let handle = Owned {
            raw: lt::create_handle().map_err(cuda_err("creating a cuBLASLt handle"))?,
            destroy: lt::destroy_handle,
        };
        let (major, _) = backend.compute_capability()?;
        let workspace_bytes = if major >= 9 {
            WORKSPACE_HOPPER
        } else {
            WORKSPACE_OLDER
        };
        let workspace =
            stream
                .alloc_zeros::<u8>(workspace_bytes)
                .map_err(cuda_err(format_args!(
                    "allocating the {workspace_bytes}-byte cuBLASLt workspace"
                )))?;
        let (ws_ptr, record) = workspace.device_ptr(&stream);
        if ws_ptr % WORKSPACE_ALIGN != 0 {
            return Err(Error::Cuda(format!(
                "the cuBLASLt workspace at {ws_ptr:#x} is not 256-byte aligned"
            )));
        }
        drop(record);
        Ok(GradGemm {
            plans: HashMap::new(),
            workspace,
            workspace_bytes,
            handle,
            stream,
        })
    }

    /// Number of plans made so far.
    pub fn plans_cached(&self) -> usize {
        self.plans.len()
    }

    /// The input gradient of `y = x·Wᵀ (+ b)`: `dx = dy·W` (overwritten; `dx += dy·W` when
    /// `accumulate`). `dy` `[rows, d_out]`, `w` `[d_out, d_in]` (both `TIn`), `dx` `[rows, d_in]`
    /// (`TOut`), row-major. Supported: f32 → f32, bf16 → bf16, bf16 → f32, fp32 accumulation
    /// (no TF32). Queued on the stream.
    #[allow(clippy::too_many_arguments)] // the layer's own argument list
    pub fn linear_bwd_input<TIn: Dtype, TOut: Dtype>(
        &mut self,
        dy: &CudaView<'_, TIn>,
        w: &CudaView<'_, TIn>,
        dx: &mut CudaViewMut<'_, TOut>,
        rows: usize,
        d_in: usize,
        d_out: usize,
        accumulate: bool,
    ) -> Result<()> {
        let op = "linear_bwd_input";
        check_types::<TIn, TOut>(op)?;
        check_dims(op, rows, d_in, d_out)?;
        check_len(op, "dy", dy.len(), rows, d_out)?;
        check_len(op, "w", w.len(), d_out, d_in)?;
        check_len(op, "dx", dx.len(), rows, d_in)?;
        self.check_streams(op, &[dy.stream(), w.stream(), dx.stream()])?;
        if rows == 0 || d_in == 0 {
            return Ok(());
        }
        if d_out == 0 {
            // An empty sum: dx = 0, or unchanged when accumulating.
            if !accumulate {
                self.stream
                    .memset_zeros(dx)
                    .map_err(cuda_err(format_args!("zeroing dx of {op}")))?;
            }
            return Ok(());
        }
        let stream = self.stream.clone();
        stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))?;
        let (w_ptr, _w_rec) = w.device_ptr(&stream);
        let (dy_ptr, _dy_rec) = dy.device_ptr(&stream);
        let (dx_ptr, _dx_rec) = dx.device_ptr_mut(&stream);
        let problem = input_problem(rows as u64, d_in as u64, d_out as u64);
        self.run::<TIn, TOut>(op, problem, accumulate, w_ptr, dy_ptr, dx_ptr)
    }

    /// The weight gradient of `y = x·Wᵀ (+ b)`: `dw += dyᵀ·x` (accumulated, beta = 1). `x`
    /// `[rows, d_in]` and `dy` `[rows, d_out]` (both f32 or both bf16), `dw` `[d_out, d_in]`
    /// f32, row-major; fp32 accumulation (no TF32). Queued on the stream.
    pub fn linear_bwd_weight<TIn: Dtype>(
        &mut self,
        x: &CudaView<'_, TIn>,
        dy: &CudaView<'_, TIn>,
        dw: &mut CudaViewMut<'_, f32>,
        rows: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<()> {
        let op = "linear_bwd_weight";
        check_types::<TIn, f32>(op)?;
        check_dims(op, rows, d_in, d_out)?;
        check_len(op, "x", x.len(), rows, d_in)?;
        check_len(op, "dy", dy.len(), rows, d_out)?;
        check_len(op, "dw", dw.len(), d_out, d_in)?;
        self.check_streams(op, &[x.stream(), dy.stream(), dw.stream()])?;
        if rows == 0 || d_in == 0 || d_out == 0 {
            return Ok(()); // nothing to add, or nothing to add to
        }
        let stream = self.stream.clone();
        stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("binding the CUDA context"))?;
        let (x_ptr, _x_rec) = x.device_ptr(&stream);
        let (dy_ptr, _dy_rec) = dy.device_ptr(&stream);
        let (dw_ptr, _dw_rec) = dw.device_ptr_mut(&stream);
        let problem = weight_problem(rows as u64, d_in as u64, d_out as u64);
        self.run::<TIn, f32>(op, problem, true, x_ptr, dy_ptr, dw_ptr)
    }

    fn check_streams(&self, op: &str, streams: &[&Arc<CudaStream>]) -> Result<()> {
        let ctx = self.stream.context();
        if streams.iter().any(|s| **s.context() != **ctx) {
            return crate::input_err!("{op}: an operand lives on another CUDA device");
        }
        Ok(())
    }

    /// Plans (once) and queues `D = op(A)·op(B) (+ D)`.
    #[allow(clippy::too_many_arguments)]
    fn run<TIn: Dtype, TOut: Dtype>(
        &mut self,
        op: &str,
        problem: Problem,
        accumulate: bool,
        a_ptr: u64,
        b_ptr: u64,
        d_ptr: u64,
    ) -> Result<()> {
        let align = [alignment(a_ptr), alignment(b_ptr), alignment(d_ptr)];
        for (what, a, elem) in [
            ("A", align[0], size_of::<TIn>()),
            ("B", align[1], size_of::<TIn>()),
            ("D", align[2], size_of::<TOut>()),
        ] {
            if (a as usize) < elem {
                return crate::input_err!(
                    "{op}: operand {what} is not aligned to its element size"
                );
            }
        }
        let key = PlanKey {
            problem,
            t_in: TIn::NAME,
            t_out: TOut::NAME,
            accumulate,
            align,
        };
        let (t_in, t_out) = (lt_type::<TIn>()?, lt_type::<TOut>()?);
        let plan = match self.plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Plan::new(
                self.handle.raw,
                &key,
                t_in,
                t_out,
                self.workspace_bytes,
            )?),
        };
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0f32 });
        let (ws_ptr, _ws_rec) = self.workspace.device_ptr(&self.stream);
        // SAFETY: the layouts describe exactly the buffers passed (the callers checked every
        // length against the problem's shapes: A is a.rows × a.cols with ld a.rows, and so on);
        // alpha/beta are host f32 as the scale type says; the workspace is `workspace_bytes`
        // long, 256-byte aligned and at least what the algorithm asked for; the alignments are
        // those the algorithm was chosen for (in the key). D (= C) is a distinct mutable borrow,
        // so it aliases neither A nor B. All buffers belong to this stream's context.
        unsafe {
            lt::matmul(
                self.handle.raw,
                plan.desc.raw,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                a_ptr as *const c_void,
                plan.a.raw,
                b_ptr as *const c_void,
                plan.b.raw,
                d_ptr as *const c_void,
                plan.d.raw,
                d_ptr as *mut c_void,
                plan.d.raw,
                &plan.algo,
                ws_ptr as *mut c_void,
                self.workspace_bytes,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| Error::Cuda(format!("cuBLASLt matmul for {}: {e}", key.describe())))
    }
}

fn check_types<TIn: Dtype, TOut: Dtype>(op: &str) -> Result<()> {
    lt_type::<TIn>()?;
    lt_type::<TOut>()?;
    if TIn::NAME == "f32" && TOut::NAME != "f32" {
        return crate::input_err!(
            "{op}: f32 operands with a {} result are not supported (f32 → f32, bf16 → bf16 and \
             bf16 → f32 are)",
            TOut::NAME
        );
    }
    Ok(())
}

fn check_dims(op: &str, rows: usize, d_in: usize, d_out: usize) -> Result<()> {
    let int_max = i32::MAX as usize;
    if rows > int_max || d_in > int_max || d_out > int_max {
        return crate::input_err!(
            "{op}: rows {rows}, d_in {d_in}, d_out {d_out}: cuBLASLt takes dimensions up to \
             {int_max}"
        );
    }
    Ok(())
}

fn check_len(op: &str, what: &str, len: usize, r: usize, c: usize) -> Result<()> {
    let want = r.checked_mul(c).ok_or_else(|| {
        Error::Input(format!(
            "{op}: {what} {r} × {c} overflows the address space"
        ))
    })?;
    if len != want {
        return crate::input_err!("{op}: {what} holds {len} values but [{r}, {c}] needs {want}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `D = op(A)·op(B)` exactly as cuBLASLt defines it on column-major storage, checking each
    /// stored shape against the transposes.
    fn lt_reference(p: &Problem, a: &[f64], b: &[f64], d: &mut [f64], beta: f64) {
        let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
        let stored = |t: bool, r: u64, c: u64| if t { (c, r) } else { (r, c) };
        assert_eq!((p.a.rows, p.a.cols), stored(p.trans_a, p.m, p.k));
        assert_eq!((p.b.rows, p.b.cols), stored(p.trans_b, p.k, p.n));
        assert_eq!((p.d.rows, p.d.cols), (p.m, p.n));
        let (lda, ldb, ldd) = (p.a.ld as usize, p.b.ld as usize, p.d.ld as usize);
        for j in 0..n {
            for i in 0..m {
                let mut acc = 0f64;
                for l in 0..k {
                    let av = if p.trans_a {
                        a[l + i * lda]
                    } else {
                        a[i + l * lda]
                    };
                    let bv = if p.trans_b {
                        b[j + l * ldb]
                    } else {
                        b[l + j * ldb]
                    };
                    acc += av * bv;
                }
                // beta = 0: C is not read (it may hold NaN), as cuBLASLt does.
                d[i + j * ldd] = if beta == 0.0 {
                    acc
                } else {
                    beta * d[i + j * ldd] + acc
                };
            }
        }
    }

    /// Handing our row-major buffers to cuBLASLt as the problems describe them computes
    /// dx = dy·W and dW += dyᵀ·x, row-major.
    #[test]
    fn column_major_mappings_compute_the_gradients() {
        for &(rows, d_in, d_out) in &[(1usize, 3usize, 10usize), (7, 5, 3), (4, 1, 6), (3, 8, 1)] {
            let x: Vec<f64> = (0..rows * d_in).map(|i| (i % 7) as f64 - 3.0).collect();
            let w: Vec<f64> = (0..d_out * d_in)
                .map(|i| (i % 5) as f64 * 0.5 - 1.0)
                .collect();
            let dy: Vec<f64> = (0..rows * d_out).map(|i| (i % 3) as f64 - 0.75).collect();
            // dx[r, i] = Σ_o dy[r, o]·w[o, i]
            let mut dx = vec![f64::NAN; rows * d_in];
            lt_reference(
                &input_problem(rows as u64, d_in as u64, d_out as u64),
                &w,
                &dy,
                &mut dx,
                0.0,
            );
            for r in 0..rows {
                for i in 0..d_in {
                    let want: f64 = (0..d_out)
                        .map(|o| dy[r * d_out + o] * w[o * d_in + i])
                        .sum();
                    assert_eq!(
                        dx[r * d_in + i],
                        want,
                        "dx[{r},{i}] ({rows},{d_in},{d_out})"
                    );
                }
            }
            // dw[o, i] = 0.5 + Σ_r dy[r, o]·x[r, i]
            let mut dw = vec![0.5f64; d_out * d_in];
            lt_reference(
                &weight_problem(rows as u64, d_in as u64, d_out as u64),
                &x,
                &dy,
                &mut dw,
                1.0,
            );
            for o in 0..d_out {
                for i in 0..d_in {
                    let want: f64 = 0.5
                        + (0..rows)
                            .map(|r| dy[r * d_out + o] * x[r * d_in + i])
                            .sum::<f64>();
                    assert_eq!(
                        dw[o * d_in + i],
                        want,
                        "dw[{o},{i}] ({rows},{d_in},{d_out})"
                    );
                }
            }
        }
    }
}
