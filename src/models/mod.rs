//! Network definitions that run on any `Backend`.

pub mod clip;
pub mod unet;

pub use unet::{BasicUNet, UNetConfig};
