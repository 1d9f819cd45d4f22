//! Synthetic data and pictures: the procedural hand, a software rasteriser, 2D drawing with a
//! built-in bitmap font, result overlays and plots.

pub mod camera;
pub mod dataset;
pub mod demo;
pub mod draw;
pub mod font;
pub mod hand;
pub mod overlay;
pub mod plot;
pub mod pose;
pub mod raster;
