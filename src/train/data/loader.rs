//! The loader: a Philox-shuffled, endless stream of items cut into [`Batch`]es, built ahead on
//! worker threads, resumable from a [`Cursor`].
//!
//! One producer thread walks the stream in order and sends finished batches into a bounded
//! channel (`prefetch` batches ahead); the items of a batch are loaded and augmented in parallel
//! on a private rayon pool of `threads` threads. Every example is a pure function of (seed,
//! epoch, item index, image) and the items are assembled in stream order, so the batches do not
//! depend on the thread count. An item whose image cannot be read is skipped with a warning and
//! the batch is completed from the following items; the stream crosses epoch boundaries (every
//! batch is full, as with the reference's endless resampled webdataset stream).

use super::augment::{make_example, AugConfig, AugParams, Example};
use super::format::TrainSet;
use crate::error::{Error, Result};
use crate::ops::image::load_rgb;
use crate::ops::mano::NUM_KEYPOINTS;
use crate::train::rng::{Philox, STREAM_DATA_ORDER};
use crate::train::step::Batch;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A position in the item stream: the next item is entry `position` of epoch `epoch`'s order.
/// Saving it after a batch and passing it to [`Loader::new`] resumes with the same batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub position: u64,
}

impl Cursor {
    /// `(e, n)` and `(e + 1, 0)` are the same place in a set of `n` items; this returns the
    /// latter form.
    fn normalized(self, n: u64) -> Cursor {
        if self.position >= n {
            Cursor {
                epoch: self.epoch + 1,
                position: 0,
            }
        } else {
            self
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    /// Crop side (the model's `image_size`).
    pub image_size: usize,
    pub seed: u64,
    /// Worker threads loading and augmenting items (0: the machine's parallelism; at most
    /// [`crate::cli::MAX_THREADS`]).
    pub threads: usize,
    /// Batches built ahead of the consumer (at least 1).
    pub prefetch: usize,
    /// `None`: no augmentation (only the left-hand mirror).
    pub augment: Option<AugConfig>,
    /// Visit each epoch in a Philox permutation (else in file order).
    pub shuffle: bool,
}

impl Default for LoaderOptions {
    /// The reference's training settings: batch 64, 256-px crops, 4 workers, 2 batches ahead.
    fn default() -> Self {
        LoaderOptions {
            batch_size: 64,
            image_size: 256,
            seed: 0,
            threads: 4,
            prefetch: 2,
            augment: Some(AugConfig::default()),
            shuffle: true,
        }
    }
}

/// The visiting order of epoch `epoch` over `n` items: a Fisher–Yates shuffle whose swap `k`
/// (for position `i = n−1−k`) draws `j = ⌊r·(i+1)/2⁶⁴⌋` from the 64-bit word pair
/// (2k, 2k+1) of `Philox(seed, STREAM_DATA_ORDER, epoch, 0)`; the identity when `!shuffle`.
pub fn epoch_order(seed: u64, epoch: u64, n: u32, shuffle: bool) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    if shuffle && n > 1 {
        let p = Philox::new(seed, STREAM_DATA_ORDER, epoch, 0);
        let mut words = vec![0u32; 2 * (n as usize - 1)];
        p.fill_u32(0, &mut words);
        for (k, i) in (1..n as usize).rev().enumerate() {
            let r = ((words[2 * k] as u64) << 32) | words[2 * k + 1] as u64;
            let j = ((r as u128 * (i as u128 + 1)) >> 64) as usize;
            v.swap(i, j);
        }
    }
    v
}

impl TrainSet {
    /// Loads item `index`'s image and builds its example for epoch `epoch` (augmented with
    /// `AugParams::draw(cfg, seed, epoch, index)`, or only mirrored for a left hand when
    /// `augment` is `None`). Fails when the image cannot be read.
    pub fn example(
        &self,
        index: usize,
        epoch: u64,
        seed: u64,
        augment: Option<&AugConfig>,
        image_size: usize,
    ) -> Result<Example> {
        let a = self.items().get(index).ok_or_else(|| {
            Error::Input(format!(
                "training item {index} out of range ({} items)",
                self.len()
            ))
        })?;
        let img = load_rgb(&self.dir().join(&a.image))?;
        let p = match augment {
            Some(cfg) => AugParams::draw(cfg, seed, epoch, index as u32, a.is_right),
            None => AugParams::identity(a.is_right),
        };
        Ok(make_example(a, &img, &p, image_size))
    }
}

/// Concatenates examples into the tensor layout of [`Batch`] (`mocap`, `sample_eps`: `None`).
pub(super) fn collate(examples: &[Example]) -> Batch {
    let b = examples.len();
    let mut batch = Batch {
        b,
        img: Vec::with_capacity(examples.first().map_or(0, |e| e.img.len()) * b),
        keypoints_2d: Vec::with_capacity(b * NUM_KEYPOINTS * 3),
        keypoints_3d: Vec::with_capacity(b * NUM_KEYPOINTS * 4),
        global_orient: Vec::with_capacity(b * 3),
        hand_pose: Vec::with_capacity(b * 45),
        betas: Vec::with_capacity(b * 10),
        has_global_orient: Vec::with_capacity(b),
        has_hand_pose: Vec::with_capacity(b),
        has_betas: Vec::with_capacity(b),
        sample_eps: None,
        mocap: None,
    };
    let flag = |v: bool| if v { 1.0 } else { 0.0 };
    for e in examples {
        batch.img.extend_from_slice(&e.img);
        batch.keypoints_2d.extend(e.keypoints_2d.iter().flatten());
        batch.keypoints_3d.extend(e.keypoints_3d.iter().flatten());
        batch.global_orient.extend_from_slice(&e.mano.global_orient);
        batch.hand_pose.extend_from_slice(&e.mano.hand_pose);
        batch.betas.extend_from_slice(&e.mano.betas);
        batch.has_global_orient.push(flag(e.has_mano.global_orient));
        batch.has_hand_pose.push(flag(e.has_mano.hand_pose));
        batch.has_betas.push(flag(e.has_mano.betas));
    }
    batch
}

struct Produced {
    batch: Batch,
    next: Cursor,
    skipped: u64,
}

/// The producer's walk over the stream.
struct Stream {
    set: Arc<TrainSet>,
    opts: LoaderOptions,
    cursor: Cursor,
    order_epoch: Option<u64>,
    order: Vec<u32>,
}

impl Stream {
    /// The next (epoch, item index) of the stream.
    fn advance(&mut self) -> (u64, u32) {
        let n = self.set.len() as u64;
        self.cursor = self.cursor.normalized(n);
        if self.order_epoch != Some(self.cursor.epoch) {
            self.order = epoch_order(
                self.opts.seed,
                self.cursor.epoch,
                n as u32,
                self.opts.shuffle,
            );
            self.order_epoch = Some(self.cursor.epoch);
        }
        let item = self.order[self.cursor.position as usize];
        let at = (self.cursor.epoch, item);
        self.cursor.position += 1;
        at
    }

    /// The next full batch. Unreadable images are skipped (with a warning); `2·len`
    /// consecutive unreadable items in the stream (so every item failed at least once) is an
    /// error.
    fn next_batch(&mut self, pool: &rayon::ThreadPool) -> Result<Produced> {
        let bsz = self.opts.batch_size;
        let limit = 2 * self.set.len() as u64;
        let mut examples = Vec::with_capacity(bsz);
        let (mut skipped, mut since_success) = (0u64, 0u64);
        while examples.len() < bsz {
            let refs: Vec<(u64, u32)> = (examples.len()..bsz).map(|_| self.advance()).collect();
            let (set, o) = (&*self.set, &self.opts);
            let results: Vec<Result<Example>> = pool.install(|| {
                refs.par_iter()
                    .map(|&(e, i)| {
                        set.example(i as usize, e, o.seed, o.augment.as_ref(), o.image_size)
                    })
                    .collect()
            });
            for (r, &(epoch, i)) in results.into_iter().zip(&refs) {
                match r {
                    Ok(ex) => {
                        examples.push(ex);
                        since_success = 0;
                    }
                    Err(e) => {
                        let a = &set.items()[i as usize];
                        eprintln!(
                            "warning: training data: skipping item {i} (annotations line {}, epoch {epoch}): {e}",
                            a.line
                        );
                        skipped += 1;
                        since_success += 1;
                        if since_success >= limit {
                            return Err(Error::Input(format!(
                                "training data in {}: none of the {} items' images could be read \
                                 ({since_success} consecutive failures; last: {e})",
                                set.dir().display(),
                                set.len()
                            )));
                        }
                    }
                }
            }
        }
        Ok(Produced {
            batch: collate(&examples),
            next: self.cursor.normalized(self.set.len() as u64),
            skipped,
        })
    }
}

fn produce(
    mut stream: Stream,
    pool: rayon::ThreadPool,
    tx: SyncSender<Result<Produced>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let msg = stream.next_batch(&pool);
        let failed = msg.is_err();
        if tx.send(msg).is_err() || failed {
            return;
        }
    }
}

/// Batches of a [`TrainSet`], built ahead on worker threads.
pub struct Loader {
    rx: Option<Receiver<Result<Produced>>>,
    handle: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    cursor: Cursor,
    skipped: u64,
    failed: Option<String>,
    opts: LoaderOptions,
}

impl Loader {
    /// Starts the workers at `start` (`Cursor::default()` for a fresh run, or a saved
    /// [`Loader::cursor`] to resume).
    pub fn new(set: Arc<TrainSet>, opts: LoaderOptions, start: Cursor) -> Result<Loader> {
        let n = set.len();
        if n == 0 {
            return crate::input_err!(
                "training data in {}: no items left after filtering ({})",
                set.dir().display(),
                set.stats()
            );
        }
        if n > u32::MAX as usize {
            return crate::input_err!("training data: {n} items is more than 2^32 − 1");
        }
        if opts.batch_size == 0 || opts.image_size == 0 {
            return crate::input_err!(
                "training loader: batch size {} and image size {} must be positive",
                opts.batch_size,
                opts.image_size
            );
        }
        if start.position > n as u64 {
            return crate::input_err!(
                "training loader: cursor position {} is beyond the {n} items of the data set \
                 (was the cursor saved for another data set?)",
                start.position
            );
        }
        if opts.threads > crate::cli::MAX_THREADS {
            return crate::input_err!(
                "training loader: {} threads is more than {}",
                opts.threads,
                crate::cli::MAX_THREADS
            );
        }
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map_or(1, |t| t.get())
        } else {
            opts.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("handcov-data-{i}"))
            .build()
            .map_err(|e| Error::Input(format!("training loader: cannot start threads: {e}")))?;
        let start = start.normalized(n as u64);
        let (tx, rx) = sync_channel(opts.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stream = Stream {
            set,
            opts,
            cursor: start,
            order_epoch: None,
            order: Vec::new(),
        };
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("handcov-data".into())
            .spawn(move || produce(stream, pool, tx, stop2))
            .map_err(|e| Error::Input(format!("training loader: cannot start a thread: {e}")))?;
        Ok(Loader {
            rx: Some(rx),
            handle: Some(handle),
            stop,
            cursor: start,
            skipped: 0,
            failed: None,
            opts,
        })
    }

    /// The next batch (blocks until it is ready).
    pub fn next_batch(&mut self) -> Result<Batch> {
        if let Some(m) = &self.failed {
            return Err(Error::Input(m.clone()));
        }
        let got = match &self.rx {
            Some(rx) => rx.recv(),
            None => return Err(Error::Input("training loader is closed".into())),
        };
        match got {
            Ok(Ok(p)) => {
                self.cursor = p.next;
                self.skipped += p.skipped;
                Ok(p.batch)
            }
            Ok(Err(e)) => {
                self.failed = Some(match &e {
                    Error::Input(m) => m.clone(),
                    other => other.to_string(),
                });
                Err(e)
            }
            Err(_) => {
                let m = "training loader: the worker thread stopped unexpectedly".to_string();
                self.failed = Some(m.clone());
                Err(Error::Input(m))
            }
        }
    }

    /// Where the stream stands after the batches returned so far: save it with a checkpoint.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Items skipped (unreadable images) while building the batches returned so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn options(&self) -> &LoaderOptions {
        &self.opts
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver makes a blocked `send` fail, so the producer returns.
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
