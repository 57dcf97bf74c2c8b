//! xaiclip: ROI-guided perturbation explanations for medical image segmentation (XAI-CLIP).

pub mod backend;
pub mod rng;
pub mod tensor;
pub mod models;
pub mod weights;
pub mod io;
pub mod dataset;
pub mod preprocess;
pub mod segment;
pub mod cli;
pub mod phantom;
pub mod explain;
pub mod metrics;
pub mod roi;
pub mod render;
pub mod pipeline;
pub mod selftest;
