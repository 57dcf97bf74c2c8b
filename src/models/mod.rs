//! Network definitions that run on any `Backend`.

pub mod bundle;
pub mod clip;
pub mod dynunet;
pub mod monai_unet;
pub mod nnunet;
pub mod segresnet;
pub mod sliding;
pub mod unet;

pub use dynunet::DynUNet;
pub use monai_unet::MonaiUNet;
pub use nnunet::NnUNet;
pub use segresnet::SegResNet;
pub use unet::{BasicUNet, UNetConfig};

use crate::backend::Backend;
use crate::preprocess::{Intensity, Modality, Orientation};
use crate::tensor::Tensor;

/// The segmentation model every explainer, ROI mode and command runs: logits for a batch on the
/// model grid, its classes and input geometry, whatever format it was read from.
#[allow(clippy::large_enum_variant)] // a handful per run
pub enum SegModel<B: Backend> {
    /// MONAI BasicUNet (config.json + model.safetensors or model.pt): the bundled models.
    Basic(BasicUNet<B>),
    /// A MONAI bundle's network (BasicUNet, UNet, SegResNet or DynUNet), with what the bundle says
    /// about it.
    Bundle {
        #[allow(missing_docs)]
        model: std::sync::Arc<BundleNet<B>>,
        #[allow(missing_docs)]
        bundle: Box<bundle::Bundle>,
        /// The map of a bundle that normalises each volume with its own statistics
        /// (`NormalizeIntensityd`, `ScaleIntensityd`): None until a volume gives it, as for nnU-Net.
        input_map: Option<InputMap<B>>,
    },
    /// An nnU-Net v2 result folder; its input is the windowed image in [0, 1] mapped to the
    /// network's normalisation by `input_map` (a 1x1 conv: scale, shift, and their values). The map is
    /// None for ZScoreNormalization until a volume gives it ([`SegModel::view`]); the network is shared
    /// by every such view.
    NnUNet {
        #[allow(missing_docs)]
        model: std::sync::Arc<NnUNet<B>>,
        #[allow(missing_docs)]
        input_map: Option<InputMap<B>>,
    },
}

/// The 1x1 conv an nnU-Net model's windowed input goes through: (scale, shift) on the device, and
/// their values.
pub struct InputMap<B: Backend> {
    scale: B::Tensor,
    shift: B::Tensor,
    values: [f32; 2],
}

impl<B: Backend> InputMap<B> {
    fn new(b: &B, values @ [scale, shift]: [f32; 2]) -> anyhow::Result<Self> {
        Ok(Self {
            scale: b.upload(&Tensor::new(&[1, 1, 1, 1, 1], vec![scale])?)?,
            shift: b.upload(&Tensor::new(&[1], vec![shift])?)?,
            values,
        })
    }
}

impl<B: Backend> SegModel<B> {
    /// Opens a model folder: an nnU-Net result folder (plans.json, or a fold_K inside one), else a
    /// BasicUNet folder.
    pub fn load_dir(backend: &B, dir: &std::path::Path) -> anyhow::Result<Self> {
        if bundle::is_bundle(dir) {
            let load = || {
                let b = bundle::read(dir)?;
                let weights = crate::weights::WeightsFile::open(&b.weights)?;
                let model = match &b.net {
                    bundle::Network::BasicUNet(c) => {
                        BundleNet::BasicUNet(BasicUNet::load(backend, c.clone(), &weights)?)
                    }
                    bundle::Network::UNet(c) => BundleNet::UNet(MonaiUNet::load(backend, c.clone(), &weights)?),
                    bundle::Network::SegResNet(c) => {
                        BundleNet::SegResNet(SegResNet::load(backend, c.clone(), &weights)?)
                    }
                    bundle::Network::DynUNet(c) => BundleNet::DynUNet(DynUNet::load(backend, c.clone(), &weights)?),
                };
                anyhow::Ok(SegModel::Bundle { model: std::sync::Arc::new(model), bundle: Box::new(b), input_map: None })
            };
            return load().map_err(|e| crate::error::Error::input(dir, e));
        }
        if !nnunet::is_result_folder(dir) {
            return Ok(SegModel::Basic(BasicUNet::load_dir(backend, dir)?));
        }
        let model = NnUNet::load_dir(backend, dir)?;
        model.intensity()?;
        let c = model.config().in_channels;
        anyhow::ensure!(
            c == 1,
            "{}: the model has {c} input channels; xaiclip explains single-channel models",
            dir.display()
        );
        let input_map = model.fixed_input_map().map(|m| InputMap::new(backend, m)).transpose()?;
        Ok(SegModel::NnUNet { model: std::sync::Arc::new(model), input_map })
    }

    /// The input map `volume` needs where the model's depends on the volume (nnU-Net's
    /// ZScoreNormalization: its mean and standard deviation); None where the model is the same for every
    /// volume. What a prepared slice carries from its volume to the explainers.
    pub fn input_map_of(&self, volume: &crate::io::Volume) -> anyhow::Result<Option<[f32; 2]>> {
        match self {
            SegModel::NnUNet { model, input_map: None } => Ok(Some(model.input_map_of(volume)?)),
            _ => Ok(None),
        }
    }

    /// This model with the input map `map` (from [`Self::input_map_of`]), sharing its weights; None
    /// asked: the model itself serves.
    pub fn with_input_map(&self, b: &B, map: Option<[f32; 2]>) -> anyhow::Result<Option<Self>> {
        let Some(map) = map else { return Ok(None) };
        let input_map = Some(InputMap::new(b, map)?);
        match self {
            SegModel::NnUNet { model, .. } => Ok(Some(SegModel::NnUNet { model: model.clone(), input_map })),
            SegModel::Bundle { model, bundle, .. } => {
                Ok(Some(SegModel::Bundle { model: model.clone(), bundle: bundle.clone(), input_map }))
            }
            SegModel::Basic(_) => Ok(None),
        }
    }

    /// The model as it sees `volume` ([`Self::input_map_of`], [`Self::with_input_map`]); None: itself.
    pub fn view(&self, b: &B, volume: &crate::io::Volume) -> anyhow::Result<Option<Self>> {
        self.with_input_map(b, self.input_map_of(volume)?)
    }

    /// Turns on nnU-Net's test-time mirroring ([`nnunet::NnUNet::enable_mirroring`]); other formats
    /// state no mirroring axes, so it is refused for them.
    pub fn enable_mirroring(&mut self, b: &B) -> anyhow::Result<()> {
        match self {
            SegModel::NnUNet { model, .. } => std::sync::Arc::get_mut(model)
                .ok_or_else(|| anyhow::anyhow!("mirroring is turned on when the model is loaded, before any view"))?
                .enable_mirroring(b),
            _ => crate::fail!(
                Unsupported,
                "--mirror is nnU-Net's test-time mirroring (its checkpoints state the axes); {} states none",
                self.describe()
            ),
        }
    }

    /// 2 (slices) or 3 (volumes) for the model in `dir`, and a 3-D model's sliding-window patch where it
    /// states one, read from its description (config.json, a bundle's inference.json, an nnU-Net
    /// plans.json) without loading weights; None where that cannot be read (loading then says why).
    pub fn describe_dir(dir: &std::path::Path) -> Option<(usize, Option<[usize; 3]>)> {
        if bundle::is_bundle(dir) {
            return bundle::read(dir).ok().map(|b| (b.net.spatial_dims(), b.patch_size));
        }
        if nnunet::is_result_folder(dir) {
            return nnunet::patch_of(dir).map(|p| match p[..] {
                [d, h, w] => (3, Some([d, h, w])),
                _ => (p.len(), None),
            });
        }
        let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
        UNetConfig::from_json(&text).ok().map(|c| (c.spatial_dims, c.patch_size))
    }

    /// The class names the model in `dir` lists (an nnU-Net result folder's dataset.json, a bundle's
    /// metadata.json), read without its weights; None where its format lists none.
    pub fn classes_in(dir: &std::path::Path) -> anyhow::Result<Option<Vec<String>>> {
        if bundle::is_bundle(dir) {
            return Ok(bundle::read(dir)?.classes);
        }
        if nnunet::is_result_folder(dir) {
            return nnunet::classes_of(dir).map(Some);
        }
        Ok(None)
    }

    /// 2 (slices) or 3 (volumes).
    pub fn spatial_dims(&self) -> usize {
        match self {
            SegModel::Basic(m) => m.config().spatial_dims,
            SegModel::Bundle { bundle, .. } => bundle.net.spatial_dims(),
            SegModel::NnUNet { model, .. } => model.config().spatial_dims,
        }
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        match self {
            SegModel::Basic(m) => m.config().in_channels,
            SegModel::Bundle { bundle, .. } => bundle.net.in_channels(),
            SegModel::NnUNet { model, .. } => model.config().in_channels,
        }
    }

    /// Output classes.
    pub fn out_channels(&self) -> usize {
        match self {
            SegModel::Basic(m) => m.config().out_channels,
            SegModel::Bundle { bundle, .. } => bundle.net.out_channels(),
            SegModel::NnUNet { model, .. } => model.config().num_classes,
        }
    }

    /// The model's class names by output channel, where its format lists them.
    pub fn classes(&self) -> Option<&[String]> {
        match self {
            SegModel::Basic(_) => None,
            SegModel::Bundle { bundle, .. } => bundle.classes.as_deref(),
            SegModel::NnUNet { model, .. } => Some(&model.classes),
        }
    }

    /// The square model grid a 2-D model runs on when none is asked for: BasicUNet's `input_size`; an
    /// nnU-Net 2d model's longer patch side, rounded up to its total stride.
    pub fn input_size(&self) -> Option<usize> {
        match self {
            SegModel::Basic(m) => m.config().input_size,
            SegModel::Bundle { bundle, .. } => bundle.input_size,
            SegModel::NnUNet { model, .. } => Some(model.default_grid()),
        }
    }

    /// Model grid sides must be multiples of this (an nnU-Net network's or MONAI UNet's total stride;
    /// 1 for BasicUNet, which pads odd sides).
    pub fn size_multiple(&self) -> usize {
        match self.net() {
            Arch::Basic(_) => 1,
            Arch::UNet(m) => {
                let [_, h, w] = m.config().total_stride();
                lcm(h, w)
            }
            Arch::SegResNet(m) => m.config().total_stride(),
            Arch::DynUNet(m) => {
                let [_, h, w] = m.config().total_stride();
                lcm(h, w)
            }
            Arch::NnUNet(model) => model.grid_multiple(),
        }
    }

    /// The 3-D patch (D, H, W) a volumetric model's sliding window uses.
    pub fn patch_size(&self) -> Option<[usize; 3]> {
        match self {
            SegModel::Basic(m) => m.config().patch_size,
            SegModel::Bundle { bundle, .. } => bundle.patch_size,
            SegModel::NnUNet { model, .. } => match model.patch_size[..] {
                [d, h, w] => Some([d, h, w]),
                _ => None,
            },
        }
    }

    /// The intensity window the model's inputs are made with, where the model fixes it.
    pub fn intensity(&self) -> Option<Intensity> {
        match self {
            SegModel::Basic(_) => None,
            SegModel::Bundle { bundle, .. } => bundle.intensity,
            SegModel::NnUNet { model, .. } => model.intensity().ok(),
        }
    }

    /// The modalities the model was trained on, where it states them (a BasicUNet config's
    /// `modalities`; an nnU-Net model's normalisation: CT for CTNormalization, MR for ZScoreNormalization).
    pub fn modalities(&self) -> Option<Vec<Modality>> {
        match self {
            SegModel::Basic(m) => m.config().modalities.clone(),
            SegModel::Bundle { .. } => None,
            SegModel::NnUNet { .. } => self.intensity().map(|i| vec![i.modality()]),
        }
    }

    /// The window the model's inputs are made with: `asked` (a --window/--modality), else the model's
    /// own, else its one modality's default (percentiles for an MR-only model), else the abdomen CT
    /// window. A window other than the model's own, or for a modality it was not trained on, is refused:
    /// it would feed the model inputs unlike its training data.
    pub fn input_intensity(&self, asked: Option<Intensity>) -> anyhow::Result<Intensity> {
        let own = self.intensity();
        if let (Some(asked), Some(own)) = (asked, own) {
            if asked != own {
                crate::fail!(
                    InvalidInput,
                    "the model normalises its input itself ({own:?}); another window ({asked:?}) would feed it inputs unlike its training data, so drop --window/--modality"
                );
            }
        }
        let modalities = self.modalities();
        if let (Some(asked), Some(trained)) = (asked, &modalities) {
            if !trained.contains(&asked.modality()) {
                let names: Vec<String> = trained.iter().map(|m| m.name().to_uppercase()).collect();
                crate::fail!(
                    InvalidInput,
                    "the model was trained on {} only (its config's modalities); inputs made for {} would be unlike its training data",
                    names.join(" and "),
                    asked.modality().name().to_uppercase()
                );
            }
        }
        Ok(asked.or(own).unwrap_or(match modalities.as_deref() {
            Some([Modality::Mr]) => Intensity::MrPercentile,
            _ => Intensity::ABDOMEN,
        }))
    }

    /// The output channel of an organ name or number: from the model's own class list where its format
    /// has one, else the FLARE22 ids of the bundled models.
    pub fn class_of(&self, organ: &str) -> anyhow::Result<usize> {
        class_of(self.classes(), organ)
    }

    /// The name of output channel `class`.
    pub fn class_name(&self, class: usize) -> String {
        crate::organs::name_in(self.classes(), class)
    }

    /// The FLARE22 id of output channel `class`: what ground-truth labels (read as FLARE22) and the
    /// CLIP prompts name it by.
    pub fn label_id(&self, class: usize) -> anyhow::Result<usize> {
        label_id(self.classes(), class)
    }

    /// How the model's input slices lie on a volume's voxels.
    pub fn orientation(&self) -> Orientation {
        match self {
            SegModel::Basic(m) => m.config().orientation,
            SegModel::Bundle { bundle, .. } => bundle.orientation(),
            SegModel::NnUNet { model, .. } => model.orientation,
        }
    }

    /// What the model's own framework would do to `volume` before predicting its slices on a `grid` x
    /// `grid` model grid that xaiclip does not ([`nnunet::NnUNet::slice_geometry_warning`]).
    pub fn slice_geometry_warning(&self, volume: &crate::io::Volume, grid: usize) -> Option<String> {
        match self {
            SegModel::NnUNet { model, .. } if self.spatial_dims() == 2 => model.slice_geometry_warning(volume, grid),
            _ => None,
        }
    }

    /// How a 3-D model sees a volume's voxels, in words (for `info` and reports).
    pub fn describe_volume(&self) -> String {
        match self {
            SegModel::NnUNet { model, .. } => model.describe_volume(),
            SegModel::Bundle { bundle, .. } => bundle.describe_volume(),
            SegModel::Basic(_) => self.orientation().describe_volume(),
        }
    }

    /// The files that define the model loaded from `dir`, for provenance: the weights file, or an
    /// nnU-Net folder's plans.json, dataset.json and every fold's checkpoint.
    pub fn files(&self, dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        match self {
            SegModel::Basic(_) => vec![crate::weights::model_file(dir)],
            SegModel::Bundle { bundle, .. } => {
                vec![bundle.dir.join("configs").join("inference.json"), bundle.weights.clone()]
            }
            SegModel::NnUNet { model, .. } => [model.dir.join("plans.json"), model.dir.join("dataset.json")]
                .into_iter()
                .chain(model.folds.iter().map(|(_, p)| p.clone()))
                .collect(),
        }
    }

    /// The network in a few words, for reports.
    pub fn describe(&self) -> String {
        match self {
            SegModel::Basic(m) => {
                format!("MONAI BasicUNet {}-D, features {:?}", m.config().spatial_dims, m.config().features)
            }
            SegModel::Bundle { bundle, .. } => format!(
                "MONAI bundle {} ({} {}-D, {})",
                bundle.dir.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
                bundle.network,
                bundle.net.spatial_dims(),
                match &bundle.net {
                    bundle::Network::BasicUNet(c) => format!("features {:?}", c.features),
                    bundle::Network::UNet(c) => c.summary(),
                    bundle::Network::SegResNet(c) => c.summary(),
                    bundle::Network::DynUNet(c) => c.summary(),
                }
            ),
            SegModel::NnUNet { model, .. } => format!(
                "nnU-Net {} {} ({} fold{}{})",
                model.configuration,
                model.config().architecture.name(),
                model.folds.len(),
                if model.folds.len() == 1 { "" } else { "s" },
                match model.mirror_axes() {
                    [] => String::new(),
                    axes => format!(", mirrored along axes {axes:?}"),
                }
            ),
        }
    }

    /// Logits (N, classes, spatial...) for a batch of windowed inputs in [0, 1] on the model grid. A 2-D
    /// model also takes one-slice volumes (N, C, 1, H, W), the tiles of an nnU-Net 2d configuration's
    /// sliding window over a volume, and gives (N, classes, 1, H, W).
    pub fn forward_logits(&self, b: &B, x: &B::Tensor) -> anyhow::Result<B::Tensor> {
        self.run(b, x, Until::Logits)
    }

    /// The last layer as (weight, bias) where it is a pointwise (1x1) convolution of a 2-D network with
    /// nothing after it (BasicUNet's), so that a score reading some pixels only may apply it there
    /// ([`Backend::head_scores`] on [`Self::forward_features`]).
    pub fn pointwise_head(&self) -> Option<(&B::Tensor, &B::Tensor)> {
        match self.net() {
            Arch::Basic(m) if self.spatial_dims() == 2 => Some(m.head()),
            _ => None,
        }
    }

    /// [`Self::forward_logits`] less the [`Self::pointwise_head`]: what that head turns into the logits.
    pub fn forward_features(&self, b: &B, x: &B::Tensor) -> anyhow::Result<B::Tensor> {
        self.run(b, x, Until::Features)
    }

    fn run(&self, b: &B, x: &B::Tensor, until: Until) -> anyhow::Result<B::Tensor> {
        if let (2, &[n, c, 1, h, w]) = (self.spatial_dims(), b.shape(x)) {
            let y = self.run(b, &b.reshape(x.clone(), &[n, c, h, w])?, until)?;
            let channels = b.shape(&y)[1];
            return b.reshape(y, &[n, channels, 1, h, w]);
        }
        let map = match self {
            SegModel::NnUNet { input_map, .. } | SegModel::Bundle { input_map, .. } => input_map.as_ref(),
            SegModel::Basic(_) => None,
        };
        let mapped;
        let x = match map {
            None if self.per_volume_normalisation() => crate::fail!(
                InvalidInput,
                "{}: the model normalises each volume with its own statistics; take its view of the volume first (SegModel::view)",
                match self {
                    SegModel::NnUNet { model, .. } => model.dir.display(),
                    SegModel::Bundle { bundle, .. } => bundle.dir.display(),
                    SegModel::Basic(_) => std::path::Path::new("the model").display(),
                }
            ),
            None => x,
            Some(InputMap { scale, shift, .. }) => {
                // A 1x1x1 conv on the batch seen as volumes (slices as one-slice volumes).
                let shape = b.shape(x).to_vec();
                let volume = match shape[..] {
                    [n, c, h, w] => b.reshape(x.clone(), &[n, c, 1, h, w])?,
                    _ => x.clone(),
                };
                mapped = b.reshape(b.conv3d(&volume, scale, Some(shift), [1; 3], [0; 3])?, &shape)?;
                &mapped
            }
        };
        if until == Until::Features {
            return match self.net() {
                Arch::Basic(m) if self.pointwise_head().is_some() => m.forward_features(b, x),
                _ => crate::fail!(InvalidInput, "this model's last layer is not a pointwise head to stop before"),
            };
        }
        match self.net() {
            Arch::Basic(m) => m.forward_logits(b, x),
            Arch::UNet(m) => m.forward_logits(b, x),
            Arch::SegResNet(m) => m.forward_logits(b, x),
            Arch::DynUNet(m) => m.forward_logits(b, x),
            Arch::NnUNet(model) => model.forward_logits(b, x),
        }
    }

    /// Whether the network's input depends on each volume's own statistics (nnU-Net's
    /// ZScoreNormalization, a bundle's NormalizeIntensityd/ScaleIntensityd), so that it runs only as a
    /// view of one volume.
    pub fn per_volume_normalisation(&self) -> bool {
        match self {
            SegModel::NnUNet { model, .. } => model.fixed_input_map().is_none(),
            SegModel::Bundle { bundle, .. } => !bundle.norms.is_empty(),
            SegModel::Basic(_) => false,
        }
    }

    /// The network, borrowed.
    fn net(&self) -> Arch<'_, B> {
        match self {
            SegModel::Basic(m) => Arch::Basic(m),
            SegModel::Bundle { model, .. } => match model.as_ref() {
                BundleNet::BasicUNet(m) => Arch::Basic(m),
                BundleNet::UNet(m) => Arch::UNet(m),
                BundleNet::SegResNet(m) => Arch::SegResNet(m),
                BundleNet::DynUNet(m) => Arch::DynUNet(m),
            },
            SegModel::NnUNet { model, .. } => Arch::NnUNet(model),
        }
    }

    /// The windowed input value the network sees as 0: what padding around a volume smaller than a tile
    /// holds (nnU-Net pads with 0 after its normalisation; MONAI pads the windowed input with 0).
    pub fn input_padding(&self) -> f32 {
        match self {
            SegModel::NnUNet { input_map: Some(m), .. } | SegModel::Bundle { input_map: Some(m), .. } => {
                -m.values[1] / m.values[0]
            }
            _ => 0.0,
        }
    }

    /// Class probabilities: softmax over channels of `forward_logits`.
    pub fn forward(&self, b: &B, x: &B::Tensor) -> anyhow::Result<B::Tensor> {
        let mut y = self.forward_logits(b, x)?;
        b.softmax_channels(&mut y)?;
        Ok(y)
    }

    /// Multiply-adds of one forward at `dims`, times two (benches).
    pub fn flops(&self, dims: &[usize]) -> f64 {
        match self.net() {
            Arch::Basic(m) => m.flops(dims),
            Arch::UNet(m) => m.flops(dims),
            Arch::SegResNet(m) => m.flops(dims),
            Arch::DynUNet(m) => m.flops(dims),
            Arch::NnUNet(model) => model.flops(dims),
        }
    }

    /// Floats of activations one image keeps live per model-grid pixel (batch sizing): about three
    /// full-resolution tensors of the widest top-level width plus the skip pyramid (~1/3 more).
    pub fn live_floats_per_pixel(&self) -> usize {
        let widest = match self.net() {
            Arch::Basic(m) => m.config().features[0].max(m.config().features[5]),
            // Its first layer is strided: full-resolution tensors are few, the first level's widest.
            Arch::UNet(m) => m.config().channels[0],
            // Full resolution holds the first level: a block's input, its two convs and the skip.
            Arch::SegResNet(m) => 2 * m.config().init_filters,
            Arch::DynUNet(m) => 2 * m.config().filters[0],
            Arch::NnUNet(model) => 2 * model.config().features[0],
        };
        (3 * widest + self.out_channels()) * 4 / 3
    }
}

/// [`SegModel::class_of`] over a class list (None: FLARE22 ids).
pub fn class_of(classes: Option<&[String]>, organ: &str) -> anyhow::Result<usize> {
    let class = match classes {
        Some(classes) => crate::organs::class_in(classes, organ)?,
        None => crate::organs::organ_class(organ)?,
    };
    Ok(class)
}

/// [`SegModel::label_id`] over a class list (None: FLARE22 ids).
pub fn label_id(classes: Option<&[String]>, class: usize) -> anyhow::Result<usize> {
    match classes {
        None => Ok(class),
        Some(list) => match list.get(class).map(|name| crate::organs::organ_class(name)) {
            Some(Ok(id)) => Ok(id),
            _ => crate::fail!(
                InvalidInput,
                "class {class} ({}) is not a FLARE22 organ: ground-truth labels and the CLIP ROI name organs by FLARE22; use --roi seg and no --labels",
                crate::organs::name_in(classes, class)
            ),
        },
    }
}

/// A MONAI network's input checked and seen as volumes: (N, in_channels, H, W) in 2-D (returned as
/// (N, C, 1, H, W)) or (N, in_channels, D, H, W) in 3-D, every side a multiple of `multiple` (D, H, W).
/// Also returns the input's shape, for [`logits_like_input`].
pub(crate) fn volume_input<B: Backend>(
    b: &B,
    x: &B::Tensor,
    network: &str,
    (dims, channels): (usize, usize),
    multiple: [usize; 3],
) -> anyhow::Result<(Vec<usize>, B::Tensor)> {
    let shape = b.shape(x).to_vec();
    anyhow::ensure!(
        shape.len() == 2 + dims && shape[1] == channels,
        "this {dims}-D {network} expects input (N, {channels}, {}), got {shape:?}",
        if dims == 3 { "D, H, W" } else { "H, W" }
    );
    let multiple = &multiple[3 - dims..];
    anyhow::ensure!(
        shape[2..].iter().zip(multiple).all(|(&n, &m)| n % m == 0),
        "{network} input {:?}: every side must be a multiple of the strides' product {multiple:?}",
        &shape[2..]
    );
    let volume = match shape[..] {
        [n, c, h, w] => b.reshape(x.clone(), &[n, c, 1, h, w])?,
        _ => x.clone(),
    };
    Ok((shape, volume))
}

/// Volume logits back in the rank of the input whose `shape` [`volume_input`] returned.
pub(crate) fn logits_like_input<B: Backend>(
    b: &B,
    logits: B::Tensor,
    shape: &[usize],
    classes: usize,
) -> anyhow::Result<B::Tensor> {
    match shape[..] {
        [n, _, h, w] => b.reshape(logits, &[n, classes, h, w]),
        _ => Ok(logits),
    }
}

/// The least common multiple (a square grid's side that suits two per-axis strides).
pub(crate) fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

/// Where [`SegModel`]'s forward stops: at the logits, or before the pointwise head.
#[derive(Clone, Copy, PartialEq)]
enum Until {
    Logits,
    Features,
}

/// A model's network, borrowed.
enum Arch<'a, B: Backend> {
    Basic(&'a BasicUNet<B>),
    UNet(&'a MonaiUNet<B>),
    SegResNet(&'a SegResNet<B>),
    DynUNet(&'a DynUNet<B>),
    NnUNet(&'a NnUNet<B>),
}

/// A MONAI bundle's network, built.
pub enum BundleNet<B: Backend> {
    #[allow(missing_docs)]
    BasicUNet(BasicUNet<B>),
    #[allow(missing_docs)]
    UNet(MonaiUNet<B>),
    #[allow(missing_docs)]
    SegResNet(SegResNet<B>),
    #[allow(missing_docs)]
    DynUNet(DynUNet<B>),
}

/// Where programs that ship the bundled weights themselves (the Python package) put them; looked in first.
static BUNDLED_ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Makes `root/<name>` the bundled weights (once per process; a second call keeps the first root).
pub fn set_bundled_root(root: std::path::PathBuf) {
    let _ = BUNDLED_ROOT.set(root);
}

/// The bundled weights folder `weights/<name>` (unet, clip, coop): under the root set by
/// [`set_bundled_root`], beside the current directory, or in the source tree this crate was built from.
pub fn bundled(name: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    use std::path::{Path, PathBuf};
    let candidates = BUNDLED_ROOT
        .get()
        .map(|r| r.join(name))
        .into_iter()
        .chain([PathBuf::from("weights").join(name), Path::new(env!("CARGO_MANIFEST_DIR")).join("weights").join(name)]);
    let candidates: Vec<PathBuf> = candidates.collect();
    candidates.iter().find(|p| p.join("model.safetensors").is_file()).cloned().with_context(|| {
        format!(
            "bundled weights weights/{name} not found (looked in {}); pass the folder explicitly",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// Refuses model outputs with NaN or infinity (weights that overflow in f32): an argmax over them would
/// quietly label every pixel one class.
pub fn check_finite_outputs(values: &[f32]) -> anyhow::Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        crate::fail!(
            InvalidInput,
            "the U-Net produced a non-finite output ({} at value {i}); its weights overflow in f32 on this input",
            values[i]
        );
    }
    Ok(())
}
