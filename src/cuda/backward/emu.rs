//! A race-checking model of a block's shared memory, for the CPU mirrors of the backward kernels
//! (tests only). A mirror runs the kernel's code phase by phase — for every thread, the code
//! between two barriers — reading and writing shared arrays through [`Smem`]. Every access is
//! logged with its thread and that thread's warp epoch (bumped by [`Warps::syncwarp`]); two
//! accesses to one element in the same barrier phase, at least one a write, from different
//! threads, are a race unless they come from the same warp in different epochs (ordered by a
//! `__syncwarp`). [`Smem::barrier`] (a `__syncthreads`) clears the log. Out-of-bounds indices and
//! reads of never-written elements (the NaN poison of `new`) are reported as well.

/// Warp epochs of a block: `__syncwarp` orders a warp's accesses before it against those after.
pub struct Warps {
    epoch: Vec<u32>,
}

impl Warps {
    pub fn new(threads: usize) -> Warps {
        Warps {
            epoch: vec![0; threads.div_ceil(32)],
        }
    }
    /// `__syncwarp()` in every warp.
    pub fn syncwarp(&mut self) {
        for e in &mut self.epoch {
            *e += 1;
        }
    }
}

#[derive(Clone, Copy)]
struct Access {
    thread: u32,
    epoch: u32,
    write: bool,
}

/// One shared array of a block.
pub struct Smem<T: Copy> {
    name: &'static str,
    data: Vec<T>,
    written: Vec<bool>,
    log: Vec<Vec<Access>>,
    touched: Vec<usize>,
}

impl<T: Copy + std::fmt::Debug> Smem<T> {
    /// `n` elements, never written (reading one before a write is an error).
    pub fn new(name: &'static str, n: usize, poison: T) -> Smem<T> {
        Smem {
            name,
            data: vec![poison; n],
            written: vec![false; n],
            log: vec![Vec::new(); n],
            touched: Vec::new(),
        }
    }

    fn record(&mut self, w: &Warps, t: usize, i: usize, write: bool) {
        assert!(
            i < self.data.len(),
            "{}[{i}]: out of bounds ({} elements), thread {t}",
            self.name,
            self.data.len()
        );
        let epoch = w.epoch[t / 32];
        for a in &self.log[i] {
            let other = a.thread as usize;
            if other == t || !(write || a.write) {
                continue;
            }
            let ordered = other / 32 == t / 32 && a.epoch != epoch;
            assert!(
                ordered,
                "{}[{i}]: race between thread {other} ({}) and thread {t} ({}) in one phase",
                self.name,
                if a.write { "write" } else { "read" },
                if write { "write" } else { "read" }
            );
        }
        let log = &mut self.log[i];
        if log.is_empty() {
            self.touched.push(i);
        }
        // Keep one entry per (thread, epoch, kind): repeated reads add nothing to check.
        if !log
            .iter()
            .any(|a| a.thread as usize == t && a.epoch == epoch && a.write == write)
        {
            log.push(Access {
                thread: t as u32,
                epoch,
                write,
            });
        }
    }

    pub fn rd(&mut self, w: &Warps, t: usize, i: usize) -> T {
        self.record(w, t, i, false);
        assert!(
            self.written[i],
            "{}[{i}]: read by thread {t} before any write",
            self.name
        );
        self.data[i]
    }

    pub fn wr(&mut self, w: &Warps, t: usize, i: usize, v: T) {
        self.record(w, t, i, true);
        self.written[i] = true;
        self.data[i] = v;
    }

    /// `__syncthreads()`.
    pub fn barrier(&mut self) {
        for i in self.touched.drain(..) {
            self.log[i].clear();
        }
    }
}

/// `__shfl_xor_sync` butterfly sum over 32 lanes, as `warp_sum` / `cn_warp_sum` do it: every
/// lane ends with `v[l] + v[l ^ off]` per step (offsets 16 … 1).
pub fn warp_sum_f64(v: &mut [f64; 32]) {
    let mut off = 16;
    while off > 0 {
        let prev = *v;
        for l in 0..32 {
            v[l] = prev[l] + prev[l ^ off];
        }
        off /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn races_and_syncwarp_ordering() {
        let mut w = Warps::new(64);
        let mut s = Smem::new("s", 4, f32::NAN);
        s.wr(&w, 0, 0, 1.0);
        assert_eq!(s.rd(&w, 0, 0), 1.0); // own write
        w.syncwarp();
        assert_eq!(s.rd(&w, 5, 0), 1.0); // same warp, after __syncwarp
        s.barrier();
        assert_eq!(s.rd(&w, 40, 0), 1.0);
        assert_eq!(s.rd(&w, 41, 0), 1.0); // concurrent reads are fine
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.wr(&w, 1, 0, 2.0)));
        assert!(
            r.is_err(),
            "a write by another warp in the same phase is a race"
        );
        let mut s2 = Smem::new("s2", 2, 0u8);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s2.rd(&w, 0, 1)));
        assert!(r.is_err(), "reading an unwritten element");
    }
}
