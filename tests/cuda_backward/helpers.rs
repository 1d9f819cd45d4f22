//! Helpers of the backward-kernel tests: a seeded generator, the device, copies, NaN poison.

use cudarc::driver::{CudaSlice, DeviceRepr};
use handcov::cuda::{CudaBackend, Dtype};

/// SplitMix64: fresh inputs per case, reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn sym(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// `n` values uniform in [center − spread, center + spread).
    pub fn vec(&mut self, n: usize, center: f32, spread: f32) -> Vec<f32> {
        (0..n).map(|_| center + spread * self.sym()).collect()
    }
}

pub fn backend() -> CudaBackend {
    CudaBackend::new(0).unwrap_or_else(|e| panic!("this test needs a CUDA device: {e}"))
}

pub fn upload<T: DeviceRepr>(be: &CudaBackend, host: &[T]) -> CudaSlice<T> {
    be.stream().clone_htod(host).expect("copy to the device")
}

/// Waits for the queued work (reporting kernel faults), then copies back.
pub fn download<T: DeviceRepr + Default + Clone>(be: &CudaBackend, dev: &CudaSlice<T>) -> Vec<T> {
    be.synchronize().expect("kernel run");
    be.stream().clone_dtoh(dev).expect("copy from the device")
}

/// A device buffer of `len` NaNs: an element a kernel fails to write stays NaN.
pub fn poisoned<T: Dtype>(be: &CudaBackend, len: usize) -> CudaSlice<T> {
    upload(be, &vec![T::from_f32(f32::NAN); len])
}

/// `len` f64 NaNs.
pub fn poisoned_f64(be: &CudaBackend, len: usize) -> CudaSlice<f64> {
    upload(be, &vec![f64::NAN; len])
}

/// Rounds to bf16 and back (what a bf16 buffer holds).
pub fn bf16_round(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

/// Downloads a device buffer of `T` as f32.
pub fn download_f32<T: Dtype>(be: &CudaBackend, dev: &CudaSlice<T>) -> Vec<f32> {
    be.synchronize().expect("kernel run");
    be.download_f32(&dev.slice(..))
        .expect("copy from the device")
}

/// Bit-for-bit equality of two f32 slices (NaN only equal to NaN), with the first difference.
pub fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
        assert!(same, "{what}: element {i}: got {g:e}, want {w:e}");
    }
}
