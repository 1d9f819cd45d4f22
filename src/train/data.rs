//! The training set: its on-disk format, the per-item filters of SPEC §1.5, HaMeR's training
//! augmentation and label transforms (SPEC §1.4), and a multi-threaded, reproducible loader that
//! turns items into [`Batch`](crate::train::step::Batch)es. `docs/training-data.md` says the same
//! for users, with the converter from the reference's webdataset tars
//! (`tools/convert_webdataset.py`).
//!
//! # Format
//!
//! A directory holding `annotations.jsonl` and the images it names (JPEG or PNG, any layout
//! below the directory). Each non-blank line of `annotations.jsonl` is one JSON object, one hand:
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `image` | string | image path relative to the directory |
//! | `center` | `[x, y]` | box centre, image pixels |
//! | `scale` | number or `[w, h]` | box side(s) / 200 (as in the reference's npz / tars) |
//! | `is_right` | bool | right hand (a left hand is mirrored, SPEC §1.3) |
//! | `keypoints_2d` | 21 × `[x, y, conf]` | image pixels, OpenPose order |
//! | `keypoints_3d` | 21 × `[x, y, z, conf]` | metres |
//! | `mano` (optional) | `{global_orient: [3], hand_pose: [45], betas: [10]}` | axis-angle |
//! | `has_mano` (optional) | `{global_orient, hand_pose, betas}` bools | which MANO parts are labels |
//! | `reprojection_loss` (optional) | number or null | the fitting's reprojection loss |
//! | `key` (optional) | string | provenance (e.g. the tar sample key), shown in warnings |
//!
//! Without `mano` the parameters are zero and every `has_mano` flag is false (a `has_mano` that
//! claims a part without `mano` is an error); with `mano` but without `has_mano` every flag is
//! true. Unknown fields, duplicate fields, a wrong shape, a number that is not a finite float32,
//! a keypoint confidence outside [0, 1], a non-positive scale or one whose box a float32 crop
//! cannot use (side `scale·200` infinite or zero as a float32, a centre too far out for the
//! box), or an image path that is absolute or leaves the directory (`..`) are errors naming the
//! file and the line; a leading byte-order mark is skipped. Images are not opened by
//! [`TrainSet::open`]: a missing or unreadable image is skipped by the [`Loader`] with a
//! warning, and counted.
//!
//! # Filters (SPEC §1.5, `data_filtering/low1.yaml`), in the reference's order
//!
//! 1. 2D keypoints with conf < 0.3 get conf 0;
//! 2. the item is kept only if more than 4 keypoints have conf > 0;
//! 3. the item is dropped if `reprojection_loss ≥ 31000`;
//! 4. `has_betas ← false` if any |β| > 3;
//! 5. `has_betas = has_hand_pose = (has_hand_pose ∧ has_betas)`; `has_global_orient` is ANDed
//!    with the new `has_hand_pose` (the reference derives its global-orient flag from
//!    `has_hand_pose` after this step; the two agree whenever the file's global-orient flag
//!    equals its hand-pose flag, as the converter writes it);
//! 6. `BETAS_REG`: an item without betas gets `has_betas = 1` and `betas = 0`.
//!
//! The training box is square, of side `max(scale·200)` (no 3:4 expansion; SPEC §1.2, §15.9).
//!
//! # Augmentation and determinism
//!
//! Every random draw of item `i` (its index in the filtered set) in epoch `e` comes from
//! `Philox(seed, STREAM_AUGMENT, e, i)`, and the visiting order of epoch `e` from
//! `Philox(seed, STREAM_DATA_ORDER, e, 0)`: a batch is a pure function of (seed, cursor, data),
//! whatever the number of worker threads. See [`AugParams::draw`] for the draw layout.

mod augment;
mod format;
mod loader;

#[cfg(test)]
mod augment_tests;
#[cfg(test)]
mod format_tests;
#[cfg(test)]
mod loader_tests;
#[cfg(test)]
mod test_util;

pub use crate::train::rng::{STREAM_AUGMENT, STREAM_DATA_ORDER};
pub use augment::{
    make_example, normalize_crop_scaled, rodrigues, rodrigues_inv, train_box_size,
    transform_keypoints_2d, transform_keypoints_3d, transform_mano, AugConfig, AugParams, Example,
};
pub use format::{
    apply_filters, parse_annotation, Annotation, Dropped, FilterStats, HasMano, ManoParams,
    TrainSet, ANNOTATIONS_FILE, BETAS_THRESH, FILTER_NUM_KP, FILTER_REPROJ_THRESH,
    SUPPRESS_KP_CONF_THRESH,
};
pub use loader::{epoch_order, Cursor, Loader, LoaderOptions};
