//! What `infer` runs a model on: the CPU path (`model::HandModel`, the reference) or its upload
//! to a GPU (`cuda::GpuModel`, fp32 or bf16). Both return the same `Prediction`.

use crate::cuda::{CudaBackend, GpuModel, GpuOutputs};
use crate::error::{Error, Result};
use crate::model::{HandModel, Prediction, RawOutputs, UncertaintyOutput};
use crate::ops::covariance::DIM;
use crate::tensor::Tensor;

/// Numeric mode of the GPU path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// fp32 everywhere, TF32 off: the accuracy reference.
    Fp32,
    /// bf16 weights and GEMM activations, fp32 accumulation and statistics; MANO and
    /// covariance in fp32.
    Bf16,
}

impl Precision {
    /// The `--precision` name (`fp32`, `bf16`), as `parse` reads it and benchmark rows say it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn parse(s: &str) -> Result<Precision> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::Input(format!(
                "--precision {other}: expected fp32 or bf16"
            ))),
        }
    }
}

/// Where to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    /// CUDA when a usable GPU is present, else the CPU.
    Auto,
}

impl DeviceChoice {
    pub fn parse(s: &str) -> Result<DeviceChoice> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            "auto" => Ok(DeviceChoice::Auto),
            other => Err(Error::Input(format!(
                "--device {other}: expected cpu, cuda or auto"
            ))),
        }
    }
}

enum Gpu {
    F32(GpuModel<f32>),
    Bf16(GpuModel<half::bf16>),
}

pub struct Engine {
    model: HandModel,
    gpu: Option<Gpu>,
}

impl Engine {
    /// The CPU engine, or the model uploaded to GPU 0. `graph`: replay the forward as a CUDA
    /// graph per batch size.
    pub fn new(
        model: HandModel,
        device: DeviceChoice,
        precision: Precision,
        graph: bool,
    ) -> Result<Engine> {
        let backend = match device {
            DeviceChoice::Cpu => None,
            DeviceChoice::Cuda => {
                Some(CudaBackend::new(0).map_err(|e| e.with_hint("use --device cpu"))?)
            }
            DeviceChoice::Auto => CudaBackend::new(0).ok(),
        };
        if backend.is_none() && precision == Precision::Bf16 {
            return Err(Error::Input(
                "--precision bf16 needs the CUDA device (the CPU path is fp32)".into(),
            ));
        }
        let upload = |be: CudaBackend| -> Result<Gpu> {
            Ok(match precision {
                Precision::Fp32 => {
                    let mut g = GpuModel::<f32>::upload(be, &model)?;
                    g.use_graph = graph;
                    Gpu::F32(g)
                }
                Precision::Bf16 => {
                    let mut g = GpuModel::<half::bf16>::upload(be, &model)?;
                    g.use_graph = graph;
                    Gpu::Bf16(g)
                }
            })
        };
        let gpu = match (backend, device) {
            (None, _) => None,
            (Some(be), DeviceChoice::Auto) => match upload(be) {
                Ok(g) => Some(g),
                Err(e) => {
                    eprintln!("note: the GPU could not be used ({e}); running on the CPU");
                    None
                }
            },
            (Some(be), _) => Some(upload(be)?),
        };
        Ok(Engine { model, gpu })
    }

    pub fn model(&self) -> &HandModel {
        &self.model
    }

    /// "cpu" or "cuda (<device name>, fp32|bf16)".
    pub fn describe(&self) -> String {
        match &self.gpu {
            None => "cpu".into(),
            Some(Gpu::F32(g)) => format!(
                "cuda ({}, fp32)",
                g.backend().device_name().unwrap_or_default()
            ),
            Some(Gpu::Bf16(g)) => format!(
                "cuda ({}, bf16)",
                g.backend().device_name().unwrap_or_default()
            ),
        }
    }

    pub fn forward(&mut self, img: &Tensor) -> Result<Prediction> {
        self.model.check_input(img)?;
        let pred = match &mut self.gpu {
            None => self.model.forward(img)?,
            Some(Gpu::F32(g)) => {
                let out = g.forward(img.data(), img.dim(0))?;
                self.assemble(out)?
            }
            Some(Gpu::Bf16(g)) => {
                let out = g.forward(img.data(), img.dim(0))?;
                self.assemble(out)?
            }
        };
        pred.check_finite()?;
        Ok(pred)
    }

    fn assemble(&self, o: GpuOutputs) -> Result<Prediction> {
        let cfg = &self.model.config;
        let b = o.batch;
        let (t, c) = (cfg.num_tokens(), cfg.vit.embed_dim);
        let nv = self.model.mano.num_verts();
        let uncertainty = match (o.uncertainty_raw, o.keypoint_3d_cov, o.joint_uncertainty) {
            (Some(raw), Some(cov), Some(unc)) => {
                let rl = raw.len() / b.max(1);
                Some(UncertaintyOutput {
                    raw: Tensor::from_vec(&[b, rl], raw)?,
                    keypoint_3d_cov: Tensor::from_vec(&[b, DIM, DIM], cov)?,
                    joint_uncertainty: Tensor::from_vec(&[b, DIM / 3], unc)?,
                })
            }
            _ => None,
        };
        Prediction::assemble(
            cfg,
            RawOutputs {
                tokens: Tensor::from_vec(&[b, t, c], o.tokens)?,
                pose6d: Tensor::from_vec(&[b, 96], o.pose6d)?,
                rotmats: Tensor::from_vec(&[b, 16, 3, 3], o.rotmats)?,
                betas: Tensor::from_vec(&[b, 10], o.betas)?,
                cam: Tensor::from_vec(&[b, 3], o.cam)?,
                cam_t: Tensor::from_vec(&[b, 3], o.cam_t)?,
                keypoints_3d: Tensor::from_vec(&[b, 21, 3], o.keypoints_3d)?,
                keypoints_2d: Tensor::from_vec(&[b, 21, 2], o.keypoints_2d)?,
                vertices: Tensor::from_vec(&[b, nv, 3], o.vertices)?,
            },
            uncertainty,
        )
    }
}
