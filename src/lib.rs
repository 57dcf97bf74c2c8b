//! xaiclip: ROI-guided perturbation explanations for medical image segmentation (XAI-CLIP).
//!
//! A U-Net segments an organ on a CT/MR slice; a CLIP model with CoOp prompts turns the organ's name
//! into a region of interest; perturbation explainers (occlusion, RISE, LIME, Kernel SHAP) perturb only
//! inside it and turn the U-Net's score drops into a saliency map. [`Explainer`] is the entry point:
//!
//! ```
//! use xaiclip::{Explainer, Method, Request, RoiMode};
//!
//! # fn main() -> xaiclip::Result<()> {
//! let phantom = xaiclip::phantom::generate(7, 256, 32); // a synthetic abdominal CT with labels
//! let explainer = Explainer::builder().device(xaiclip::Device::Cpu).build()?;
//! let request = Request::new("liver", Method::Occlusion).roi(RoiMode::Clip).labels(phantom.labels);
//! let explanation = explainer.explain(&phantom.image, &request)?;
//! assert!(explanation.run.forward_passes > 1 && explanation.run.roi_fraction() < 0.5);
//! println!("{} forward passes, ROI {:.1}% of the slice", explanation.run.forward_passes, 100.0 * explanation.run.roi_fraction());
//! # Ok(())
//! # }
//! ```
//!
//! # Layers
//! Modules use only modules below them (`tests/layers.rs` checks this on every `use crate::`), top first:
//!
//! 1. [`eval`]: data set runs (durable JSONL, resume, shards, merge, summaries) over the facade
//! 2. [`explainer`]: the facade
//! 3. [`selftest`] (kernels against their twins), [`bench`](mod@bench) (tables of runs), [`report`]
//!    (figures of runs, report.html)
//! 4. [`pipeline`]: one slice, one organ, one method; settings, slice choice, the CLIP ROI finder;
//!    [`volumes`]: whole volumes through 3-D U-Nets (sliding window, 3-D ROI, every method with tile reuse)
//! 5. [`dataset`] (data set layouts), [`metrics`] (agreement, faithfulness)
//! 6. [`explain`] (the explainers and the scorer), [`roi`] (regions, the CLIP localiser), [`segment`]
//! 7. [`models`] (U-Net, CLIP on any backend)
//! 8. [`backend`]: the `Backend` trait, CPU reference, CUDA kernels, perturbation twins, device choice
//! 9. [`preprocess`], [`resample`] (nnU-Net's), [`phantom`], [`render`]
//! 10. [`io`] (NIfTI, DICOM, atomic writes), [`weights`]
//! 11. [`tensor`], [`rng`], [`organs`], [`threshold`], [`error`]
//!
//! The command line (`src/cli/`) is the binary's, on top of all of these; no library module uses it.

#![warn(missing_docs)]

pub mod error;
pub mod organs;
pub mod rng;
pub mod tensor;
pub mod threshold;

pub mod io;
pub mod weights;

pub mod phantom;
pub mod preprocess;
pub mod render;
pub mod resample;

pub mod backend;

pub mod models;

pub mod explain;
pub mod roi;
pub mod segment;

pub mod dataset;
pub mod metrics;

pub mod pipeline;
pub mod volumes;

pub mod bench;
pub mod report;
pub mod selftest;

pub mod explainer;

pub mod eval;

pub use backend::{Device, Precision};
pub use bench::Runs;
pub use error::{Error, ErrorKind, Result};
pub use explainer::{read_labels, read_volume, Explainer, ExplainerBuilder, Explanation, Request};
pub use pipeline::{Method, Settings, Slices};
pub use roi::RoiMode;
