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
//! let explanation = explainer.explain(&phantom.ct, &request)?;
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
//! 3. [`selftest`] (kernels against their twins), [`bench`] (tables of runs)
//! 4. [`pipeline`]: one slice, one organ, one method; settings, slice choice, the CLIP ROI finder
//! 5. [`dataset`] (data set layouts), [`metrics`] (agreement, faithfulness)
//! 6. [`explain`] (the explainers and the scorer), [`roi`] (regions, the CLIP localiser), [`segment`]
//! 7. [`models`] (U-Net, CLIP on any backend)
//! 8. [`backend`]: the `Backend` trait, CPU reference, CUDA kernels, perturbation twins, device choice
//! 9. [`preprocess`], [`phantom`], [`render`]
//! 10. [`io`] (NIfTI, DICOM, atomic writes), [`weights`]
//! 11. [`tensor`], [`rng`], [`organs`], [`threshold`], [`error`]
//!
//! The command line (`src/cli/`) is the binary's, on top of all of these; no library module uses it.

// Every public item of the embedding surface (the facade, errors, eval) is documented; the building
// blocks below it carry module docs and are documented item by item as they are touched.
#![warn(missing_docs)]

pub mod error;
#[allow(missing_docs)]
pub mod organs;
#[allow(missing_docs)]
pub mod rng;
#[allow(missing_docs)]
pub mod tensor;
#[allow(missing_docs)]
pub mod threshold;

#[allow(missing_docs)]
pub mod io;
#[allow(missing_docs)]
pub mod weights;

#[allow(missing_docs)]
pub mod phantom;
#[allow(missing_docs)]
pub mod preprocess;
#[allow(missing_docs)]
pub mod render;

#[allow(missing_docs)]
pub mod backend;

#[allow(missing_docs)]
pub mod models;

#[allow(missing_docs)]
pub mod explain;
#[allow(missing_docs)]
pub mod roi;
#[allow(missing_docs)]
pub mod segment;

#[allow(missing_docs)]
pub mod dataset;
#[allow(missing_docs)]
pub mod metrics;

#[allow(missing_docs)]
pub mod pipeline;

#[allow(missing_docs)]
pub mod bench;
#[allow(missing_docs)]
pub mod selftest;

pub mod explainer;

pub mod eval;

pub use backend::{Device, Precision};
pub use error::{Error, ErrorKind, Result};
pub use explainer::{read_labels, read_volume, Explainer, ExplainerBuilder, Explanation, Request};
pub use pipeline::{Method, Settings, Slices};
pub use roi::RoiMode;
