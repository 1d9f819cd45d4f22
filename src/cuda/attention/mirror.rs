//! CPU mirror of the attention kernels' machinery, for the unit tests in ../attention.rs: a
//! shared-memory access checker (bounds, alignment, reads of never-written memory, reads or
//! writes of a pending cp.async destination, and accesses by two warps to one address with no
//! barrier between them), and the warp-level PTX instructions the bf16 kernel uses, with the
//! fragment layouts of the PTX ISA. It checks the kernels' index arithmetic and barrier
//! placement as transcribed in mirror_kernels.rs; not the hardware.
// Index loops on purpose: they mirror the CUDA code's loops statement by statement.
#![allow(clippy::needless_range_loop)]

use half::bf16;

const NEVER: u32 = u32::MAX;

/// One block's shared memory, element-addressed, with the access checker.
pub(super) struct Shared<V: Copy> {
    val: Vec<V>,
    init: Vec<bool>,
    pending: Vec<bool>,
    /// (interval, warp) of the last write.
    wr: Vec<(u32, u32)>,
    /// (interval, bit mask of the warps that read in it).
    rd: Vec<(u32, u32)>,
    /// Barrier intervals so far.
    interval: u32,
    /// Committed cp.async groups, oldest first, and the copies issued since the last commit.
    groups: Vec<Vec<(usize, u32, V)>>,
    open: Vec<(usize, u32, V)>,
}

impl<V: Copy> Shared<V> {
    pub(super) fn new(len: usize, zero: V) -> Self {
        Shared {
            val: vec![zero; len],
            init: vec![false; len],
            pending: vec![false; len],
            wr: vec![(NEVER, 0); len],
            rd: vec![(NEVER, 0); len],
            interval: 0,
            groups: Vec::new(),
            open: Vec::new(),
        }
    }
    pub(super) fn barrier(&mut self) {
        self.interval += 1;
    }
    pub(super) fn read(&mut self, i: usize, warp: u32) -> V {
        assert!(
            i < self.val.len(),
            "shared read out of bounds: {i} >= {}",
            self.val.len()
        );
        assert!(self.init[i], "read of uninitialised shared element {i}");
        assert!(
            !self.pending[i],
            "read of shared element {i} while a cp.async is pending"
        );
        let (wi, ww) = self.wr[i];
        assert!(
            !(wi == self.interval && ww != warp),
            "race: warp {warp} reads element {i} written by warp {ww} without a barrier"
        );
        let (ri, mask) = self.rd[i];
        self.rd[i] = (
            self.interval,
            if ri == self.interval { mask } else { 0 } | 1 << warp,
        );
        self.val[i]
    }
    pub(super) fn check_write(&self, i: usize, warp: u32) {
        assert!(
            i < self.val.len(),
            "shared write out of bounds: {i} >= {}",
            self.val.len()
        );
        assert!(
            !self.pending[i],
            "write to shared element {i} while a cp.async is pending"
        );
        let (wi, ww) = self.wr[i];
        assert!(
            !(wi == self.interval && ww != warp),
            "race: warps {ww} and {warp} write element {i} without a barrier"
        );
        let (ri, mask) = self.rd[i];
        assert!(
            !(ri == self.interval && mask & !(1 << warp) != 0),
            "race: warp {warp} overwrites element {i} read by warps {mask:#b} without a barrier"
        );
    }
    pub(super) fn write(&mut self, i: usize, warp: u32, v: V) {
        self.check_write(i, warp);
        self.val[i] = v;
        self.init[i] = true;
        self.wr[i] = (self.interval, warp);
    }
    /// An asynchronous copy: the destination is off limits until the wait that completes it.
    pub(super) fn cp_async(&mut self, i: usize, warp: u32, v: V) {
        self.check_write(i, warp);
        self.pending[i] = true;
        self.open.push((i, warp, v));
    }
    pub(super) fn commit(&mut self) {
        let g = std::mem::take(&mut self.open);
        self.groups.push(g);
    }
    /// cp.async.wait_group n (every thread of the block runs the same sequence).
    pub(super) fn wait(&mut self, n: usize) {
        assert!(
            self.open.is_empty(),
            "cp.async issued after the last commit"
        );
        while self.groups.len() > n {
            for (i, warp, v) in self.groups.remove(0) {
                self.pending[i] = false;
                self.val[i] = v;
                self.init[i] = true;
                self.wr[i] = (self.interval, warp); // visible to others after a barrier
            }
        }
    }
}

pub(super) fn bf(x: f32) -> u16 {
    bf16::from_f32(x).to_bits()
}
pub(super) fn fb(x: u16) -> f32 {
    bf16::from_bits(x).to_f32()
}
pub(super) fn pack(lo: f32, hi: f32) -> u32 {
    bf(lo) as u32 | (bf(hi) as u32) << 16
}
pub(super) fn half_of(r: u32, hi: bool) -> f32 {
    fb(if hi { (r >> 16) as u16 } else { r as u16 })
}

/// mma.sync.m16n8k16.row.col f32.bf16.bf16.f32 for one warp, fragment layouts of the PTX ISA
/// ("Matrix Fragments for mma.m16n8k16 with floating point type"). Checks that the lanes
/// cover every matrix element exactly once.
pub(super) fn mma(c: &mut [[f32; 4]; 32], a: &[[u32; 4]; 32], b: &[[u32; 2]; 32]) {
    let mut am = [[f32::NAN; 16]; 16];
    let mut bm = [[f32::NAN; 8]; 16];
    let mut cm = [[f32::NAN; 8]; 16];
    for lane in 0..32 {
        let (g, t) = (lane >> 2, lane & 3);
        for i in 0..8 {
            let row = if i < 2 || (4..6).contains(&i) {
                g
            } else {
                g + 8
            };
            let col = t * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
            assert!(am[row][col].is_nan());
            am[row][col] = half_of(a[lane][i / 2], i % 2 == 1);
        }
        for i in 0..4 {
            let row = t * 2 + (i & 1) + if i >= 2 { 8 } else { 0 };
            assert!(bm[row][g].is_nan());
            bm[row][g] = half_of(b[lane][i / 2], i % 2 == 1);
        }
        for i in 0..4 {
            let row = if i < 2 { g } else { g + 8 };
            cm[row][t * 2 + (i & 1)] = c[lane][i];
        }
    }
    for lane in 0..32 {
        let (g, t) = (lane >> 2, lane & 3);
        for i in 0..4 {
            let row = if i < 2 { g } else { g + 8 };
            let col = t * 2 + (i & 1);
            let mut acc = cm[row][col] as f64;
            for k in 0..16 {
                acc += am[row][k] as f64 * bm[k][col] as f64;
            }
            c[lane][i] = acc as f32;
        }
    }
}

/// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: lane l addresses row l % 8 of matrix
/// l / 8 (16-byte aligned); register i of lane l holds, of matrix i, the elements at
/// (row 2·(l%4) + {0, 1}, column l / 4), the first in the low half.
pub(super) fn ldsm_x4_trans(sm: &mut Shared<u16>, addr: &[usize; 32], warp: u32) -> [[u32; 4]; 32] {
    let mut m = [[[0u16; 8]; 8]; 4];
    for (l, &a) in addr.iter().enumerate() {
        assert_eq!(a % 8, 0, "ldmatrix row address not 16-byte aligned");
        for (c, e) in m[l / 8][l % 8].iter_mut().enumerate() {
            *e = sm.read(a + c, warp);
        }
    }
    let mut r = [[0u32; 4]; 32];
    for (l, regs) in r.iter_mut().enumerate() {
        for (i, reg) in regs.iter_mut().enumerate() {
            let lo = m[i][2 * (l % 4)][l / 4];
            let hi = m[i][2 * (l % 4) + 1][l / 4];
            *reg = lo as u32 | (hi as u32) << 16;
        }
    }
    r
}

pub(super) fn lds32(sm: &mut Shared<u16>, i: usize, warp: u32) -> u32 {
    assert_eq!(i % 2, 0, "32-bit shared load not 4-byte aligned");
    sm.read(i, warp) as u32 | (sm.read(i + 1, warp) as u32) << 16
}

/// Quad / group butterfly: every lane gets f(v[l], v[l ^ m]) for m in masks, in order.
pub(super) fn butterfly(v: &mut [f32; 32], masks: &[usize], f: impl Fn(f32, f32) -> f32) {
    for &m in masks {
        let old = *v;
        for l in 0..32 {
            v[l] = f(old[l], old[l ^ m]);
        }
    }
}

/// Deterministic inputs in [-amp, amp).
pub(super) fn inputs(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}
