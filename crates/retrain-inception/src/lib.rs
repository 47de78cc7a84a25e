//! Inception-v3 in candle, with torchvision's structure and parameter names (timm's
//! `inception_v3` uses the same), so `inception_v3_google-0cc3c7bd.pth` and timm's
//! `inception_v3.tv_in1k` safetensors load unrenamed.
//!
//! - [`Model`]: the network ([`InceptionV3`]) on a [`VarMap`], initialised from a seeded RNG the way
//!   torchvision does it; [`Model::load`] reads `.pth` (PyTorch zip) or `.safetensors` weights,
//!   re-creating `fc` and `AuxLogits.fc` for another class count; [`Model::save`] writes
//!   safetensors under the same names, loadable by torchvision and timm with `num_classes=N`;
//!   [`Model::save_pth`] writes them as the `.pth` file `torch.save(model.state_dict(), f)` writes.
//! - [`InceptionV3::features`]: the 2048-d bottleneck features, batched.
//! - [`ops`]: the pools candle lacks (padded average, strided max) with backward passes, a fused
//!   training-mode batch norm and a convolution whose backward runs on candle's fast forward kernel.
//! - [`counter`]: reproducible weights shared with `scripts/inception_parity.py`.
//! - [`pth`]: [`write_pth`], any map of f32, f64 and i64 tensors as a PyTorch `.pth` file.
//! - [`on_workers`]: where to run the model on the CPU (a thread of rayon's pool, which the
//!   kernels in [`conv`] and [`ops`] share out their work on).
//!
//! Inputs are N×3×H×W, scaled to [-1, 1], H and W ≥ 75 (299 for the aux head). torchvision's
//! `transform_input` (which maps ImageNet-normalised inputs back to [-1, 1]) is not offered: feed
//! [-1, 1] inputs directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

pub mod alloc;
pub mod block;
pub mod conv;
pub mod counter;
mod direct;
pub mod model;
pub mod ops;
pub mod pth;

pub use pth::write_pth;

pub use model::{
    BN_EPS, BasicConv2d, Config, Dropout, FEATURES, InceptionA, InceptionAux, InceptionB,
    InceptionC, InceptionD, InceptionE, InceptionV3, MIN_AUX_INPUT, MIN_INPUT, NoGrad, STAGES,
    no_grad,
};

/// Errors from building, loading and saving a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("building the model")]
    Build(#[source] Box<candle_core::Error>),
    #[error("{}: reading weights", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error("{}: no tensors found (neither a state dict nor one under `state_dict` or `model`)", path.display())]
    Empty { path: PathBuf },
    #[error("{}: tensor {name} is missing (expected shape {expected:?})", path.display())]
    Missing {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    #[error("{}: tensor {name} has shape {actual:?}, expected {expected:?}", path.display())]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{}: unexpected tensors for this model: {}", path.display(), names.join(", "))]
    Unexpected { path: PathBuf, names: Vec<String> },
    #[error("{}: setting tensor {name}", path.display())]
    Set {
        path: PathBuf,
        name: String,
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error("{}: writing weights", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serialising weights")]
    Serialise(#[source] Box<candle_core::Error>),
    #[error("{}: tensor {name} is {dtype:?}; .pth files are written for f32, f64 and i64 only", path.display())]
    PthDtype {
        path: PathBuf,
        name: String,
        dtype: DType,
    },
    #[error("{}: reading tensor {name} to write it", path.display())]
    PthTensor {
        path: PathBuf,
        name: String,
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error("{}: over 4 GiB, more than a .pth without zip64 records holds", path.display())]
    PthTooLarge { path: PathBuf },
    #[error("unknown device {0:?}: expected cpu, cuda or cuda:N")]
    DeviceSpec(String),
    #[error(
        "device {0} asked for, but this build has no CUDA support: rebuild with `--features cuda`"
    )]
    NoCuda(String),
    #[error("opening device {spec}")]
    Device {
        spec: String,
        #[source]
        source: Box<candle_core::Error>,
    },
}

/// Stack size of rayon's threads when [`on_workers`] builds the pool: the main thread's usual 8 MiB,
/// since a whole program may run there.
const WORKER_STACK: usize = 8 << 20;

/// Runs `f` on one of rayon's threads and waits for it: the way to run a model on the CPU. The
/// kernels ([`conv`], [`ops`]) spread their work over rayon's pool; from one of its threads, a
/// kernel's parallel part starts at once and the other threads take their share from it, instead
/// of every kernel being handed from an outside thread to a sleeping pool and waited for (about
/// 10 % of a training step at 139×139 on 2 cores). The first call sizes the pool's stacks (when
/// nothing has started the pool yet).
pub fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // An error means the pool already runs, with its own stack size.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(WORKER_STACK)
        .build_global();
    rayon::scope(|_| f())
}

/// Tells candle's own thread pool, which runs its element-wise ops (the additions of candle's
/// backward pass, the optimisers' updates), to put its workers to sleep as soon as an op is done,
/// unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is already set. By default each worker spins for about a
/// millisecond after every op, waiting for the next; on a machine with as many cores as threads,
/// that spinning takes a core from rayon's workers, which run our kernels in between (1.5–2 % of a
/// 139×139 training step on 2 cores). A sleeping worker is woken by the next op.
///
/// # Safety
///
/// It sets an environment variable: call it before the program starts any thread (first thing
/// in `main`), as [`std::env::set_var`] requires.
pub unsafe fn quiet_candle_pool() {
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN).is_none() {
        // SAFETY: the caller guarantees that no other thread runs yet.
        unsafe { std::env::set_var(SPIN, "0") };
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`. CUDA in a build without the `cuda` feature is an error,
/// never a silent fallback to the CPU.
pub fn device(spec: &str) -> Result<Device, Error> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(Error::DeviceSpec(spec.to_owned())),
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::NoCuda(spec.to_owned()));
    }
    Device::new_cuda(ordinal).map_err(|source| Error::Device {
        spec: spec.to_owned(),
        source: Box::new(source),
    })
}

/// The torchvision names and shapes of every parameter and batch-norm statistic of a model with
/// this configuration, sorted by name (no `num_batches_tracked`: see [`Model::save`]).
pub fn param_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    // Zero-filled CPU tensors: building cannot fail for a valid class count.
    if InceptionV3::new(cfg, vb).is_err() {
        return Vec::new();
    }
    tensors_of(&varmap)
        .into_iter()
        .map(|(name, t)| (name, t.dims().to_vec()))
        .collect()
}

fn tensors_of(varmap: &VarMap) -> BTreeMap<String, Tensor> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect()
}

/// Whether `name` belongs to a classifier layer that is re-created for another class count.
pub fn is_head(name: &str) -> bool {
    matches!(
        name,
        "fc.weight" | "fc.bias" | "AuxLogits.fc.weight" | "AuxLogits.fc.bias"
    )
}

/// The batch-norm prefixes (`…bn`) of a set of parameter names.
fn bn_prefixes<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut prefixes: Vec<String> = names
        .filter_map(|n| n.strip_suffix(".running_mean").map(str::to_owned))
        .collect();
    prefixes.sort();
    prefixes
}

/// What [`Model::load`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors taken from the file.
    pub loaded: usize,
    /// Tensors kept at their fresh seeded initialisation (another class count, or an aux head the
    /// file lacks).
    pub reinitialised: Vec<String>,
    /// Tensors in the file that the model has no use for (`num_batches_tracked`; `AuxLogits.*`
    /// for a model without an aux head).
    pub ignored: Vec<String>,
}

/// An [`InceptionV3`] with its variables.
pub struct Model {
    net: InceptionV3,
    varmap: VarMap,
    device: Device,
}

/// Mixed into the seed of the initialisation RNG streams.
const INIT_STREAM: u64 = 0x001a_ceb7_1ee5;

impl Model {
    /// A fresh model initialised as torchvision's `Inception3(init_weights=True)`, from `seed`:
    /// conv and linear weights from a normal distribution truncated to [-2, 2] with std 0.1
    /// (`AuxLogits.conv1` 0.01, `AuxLogits.fc` 0.001), linear biases uniform in ±1/√fan_in
    /// (PyTorch's `nn.Linear` default), batch-norm γ = 1, β = 0, running mean 0, variance 1. Each
    /// tensor has its own ChaCha8 stream seeded from `seed` and its name, so a tensor's values do
    /// not depend on the others (re-creating `fc` for 10 classes gives the same `fc` whatever the
    /// rest).
    pub fn new(cfg: &Config, seed: u64, device: &Device) -> Result<Self, Error> {
        Self::with_dtype(cfg, seed, device, model::DTYPE)
    }

    /// [`Model::new`] computing in `dtype` (f32 normally; f64 for exact checks on the CPU).
    pub fn with_dtype(
        cfg: &Config,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, Error> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, device);
        let net = InceptionV3::new(cfg, vb).map_err(|e| Error::Build(Box::new(e)))?;
        net.dropout().reseed(seed ^ INIT_STREAM ^ 0xd50);
        let model = Self {
            net,
            varmap,
            device: device.clone(),
        };
        for (name, t) in model.tensors() {
            model
                .init_tensor(&name, &t, seed)
                .map_err(|e| Error::Build(Box::new(e)))?;
        }
        Ok(model)
    }

    fn init_tensor(&self, name: &str, t: &Tensor, seed: u64) -> candle_core::Result<()> {
        let dims = t.dims().to_vec();
        let n = t.elem_count();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ INIT_STREAM ^ counter::name_hash(name));
        let values: Vec<f32> = if name.ends_with("running_var") || name.ends_with("bn.weight") {
            vec![1.0; n]
        } else if name.ends_with("running_mean") || name.ends_with("bn.bias") {
            vec![0.0; n]
        } else if name.ends_with(".weight") {
            let std = match name {
                "AuxLogits.conv1.conv.weight" => 0.01,
                "AuxLogits.fc.weight" => 0.001,
                _ => 0.1,
            };
            (0..n).map(|_| truncated_normal(&mut rng, std)).collect()
        } else {
            // Linear bias: PyTorch's default, uniform in ±1/√fan_in.
            let fan_in = self
                .tensors()
                .get(&name.replace(".bias", ".weight"))
                .map_or(1, |w| w.dim(1).unwrap_or(1));
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        };
        let value = Tensor::from_vec(values, dims, &Device::Cpu)?;
        self.set_tensor(name, &value)
    }

    /// The network.
    pub fn net(&self) -> &InceptionV3 {
        &self.net
    }

    /// The variables (for an optimizer: `varmap().all_vars()`).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every parameter and batch-norm statistic by torchvision name, sorted.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        tensors_of(&self.varmap)
    }

    /// Parameter count (batch-norm statistics excluded) of the tensors whose name starts with
    /// `prefix` (all with "").
    pub fn n_params(&self, prefix: &str) -> usize {
        self.tensors()
            .iter()
            .filter(|(n, _)| n.starts_with(prefix) && !n.ends_with("running_mean"))
            .filter(|(n, _)| !n.ends_with("running_var"))
            .map(|(_, t)| t.elem_count())
            .sum()
    }

    /// Overwrites one tensor (converted to the model's dtype and device); its shape must match.
    pub fn set_tensor(&self, name: &str, value: &Tensor) -> candle_core::Result<()> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let Some(var) = data.get(name) else {
            candle_core::bail!("the model has no tensor {name}")
        };
        if var.dims() != value.dims() {
            candle_core::bail!(
                "tensor {name} has shape {:?}, expected {:?}",
                value.dims(),
                var.dims()
            )
        }
        var.set(&value.to_dtype(var.dtype())?.to_device(var.device())?)
    }

    /// Loads weights from a PyTorch `.pth` (zip) or a `.safetensors` file (told apart by their
    /// first bytes) into a fresh model initialised from `seed` (see [`Model::new`]).
    ///
    /// Every tensor of the model must be in the file with the same shape, except the classifier
    /// (`fc.*`, `AuxLogits.fc.*`): when its class count differs it keeps its seeded
    /// initialisation, and the report (and a log line) names it. A file without any `AuxLogits.*`
    /// keeps the whole aux head's initialisation the same way. `num_batches_tracked` buffers are
    /// ignored (candle's batch norm uses a fixed momentum and has no counter), as are `AuxLogits.*`
    /// tensors for a model without an aux head. Any other missing, mis-shaped or unexpected tensor
    /// is an error naming it.
    pub fn load(
        cfg: &Config,
        path: &Path,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, LoadReport), Error> {
        Self::load_tensors(cfg, path, read_tensors(path)?, seed, device)
    }

    /// [`Model::load`] from tensors already read by [`read_tensors`] (`path` names them in
    /// messages).
    pub fn load_tensors(
        cfg: &Config,
        path: &Path,
        tensors: BTreeMap<String, Tensor>,
        seed: u64,
        device: &Device,
    ) -> Result<(Self, LoadReport), Error> {
        let model = Self::new(cfg, seed, device)?;
        let report = model.assign(path, tensors)?;
        Ok((model, report))
    }

    fn assign(&self, path: &Path, mut file: BTreeMap<String, Tensor>) -> Result<LoadReport, Error> {
        let mut report = LoadReport::default();
        let file_has_aux = file.keys().any(|k| k.starts_with("AuxLogits."));
        for (name, var) in self.tensors() {
            let expected = var.dims().to_vec();
            let Some(value) = file.remove(&name) else {
                if name.starts_with("AuxLogits.") && !file_has_aux {
                    report.reinitialised.push(name);
                    continue;
                }
                return Err(Error::Missing {
                    path: path.to_owned(),
                    name,
                    expected,
                });
            };
            let actual = value.dims().to_vec();
            if actual != expected {
                let other_classes = is_head(&name)
                    && actual.len() == expected.len()
                    && actual.get(1) == expected.get(1);
                if other_classes {
                    report.reinitialised.push(name);
                    continue;
                }
                return Err(Error::Shape {
                    path: path.to_owned(),
                    name,
                    expected,
                    actual,
                });
            }
            self.set_tensor(&name, &value)
                .map_err(|source| Error::Set {
                    path: path.to_owned(),
                    name: name.clone(),
                    source: Box::new(source),
                })?;
            report.loaded += 1;
        }
        let mut unexpected = Vec::new();
        for name in file.into_keys() {
            if name.ends_with(".num_batches_tracked")
                || (name.starts_with("AuxLogits.") && !self.net.config().aux_logits)
            {
                report.ignored.push(name);
            } else {
                unexpected.push(name);
            }
        }
        if !unexpected.is_empty() {
            return Err(Error::Unexpected {
                path: path.to_owned(),
                names: unexpected,
            });
        }
        if !report.reinitialised.is_empty() {
            tracing::info!(
                file = %path.display(),
                "re-initialised from the seed for {} classes: {}",
                self.net.config().num_classes,
                report.reinitialised.join(", ")
            );
        }
        tracing::debug!(file = %path.display(), loaded = report.loaded, ignored = report.ignored.len(), "weights loaded");
        Ok(report)
    }

    /// Every tensor as written by [`Model::save`]: the parameters and statistics, plus a
    /// `num_batches_tracked` (i64 scalar, 0) per batch norm so that the key set equals
    /// torchvision's `state_dict()` and strict `load_state_dict` accepts it.
    pub fn state_dict(&self) -> candle_core::Result<BTreeMap<String, Tensor>> {
        let mut tensors: BTreeMap<String, Tensor> = self
            .tensors()
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?)))
            .collect::<candle_core::Result<_>>()?;
        for prefix in bn_prefixes(tensors.keys()) {
            tensors.insert(
                format!("{prefix}.num_batches_tracked"),
                Tensor::new(0i64, &Device::Cpu)?,
            );
        }
        Ok(tensors)
    }

    /// Writes the weights as safetensors (the model's dtype, f32 normally; torchvision names; see
    /// [`Model::state_dict`]),
    /// atomically.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let tensors = self
            .state_dict()
            .map_err(|e| Error::Serialise(Box::new(e)))?;
        let bytes = safetensors::serialize(tensors.iter(), None)
            .map_err(|e| Error::Serialise(Box::new(candle_core::Error::Msg(e.to_string()))))?;
        retrain_stage::write_atomic(path, &bytes).map_err(|source| Error::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the same tensors as [`Model::save`] as a PyTorch `.pth` file (see [`write_pth`]),
    /// atomically: what `torch.save(model.state_dict(), path)` writes, so `torch.load` with
    /// `weights_only=True` and a strict `load_state_dict` accept it.
    pub fn save_pth(&self, path: &Path) -> Result<(), Error> {
        let tensors = self
            .state_dict()
            .map_err(|e| Error::Serialise(Box::new(e)))?;
        write_pth(path, &tensors)
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", self.net.config())
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl candle_core::ModuleT for Model {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.net.forward_t(xs, train)
    }
}

/// A sample of N(0, std²) truncated to [-2, 2] (absolute bounds, as torchvision's
/// `trunc_normal_(std=…, a=-2, b=2)`), by Box–Muller and rejection.
fn truncated_normal(rng: &mut ChaCha8Rng, std: f64) -> f32 {
    loop {
        let u1: f64 = rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let v = z * std;
        if (-2.0..=2.0).contains(&v) {
            return v as f32;
        }
    }
}

/// The class count and aux head a checkpoint holds: `fc.weight`'s rows and whether any
/// `AuxLogits.*` tensor is present (`None` without `fc.weight`).
pub fn checkpoint_shape(tensors: &BTreeMap<String, Tensor>) -> Option<(usize, bool)> {
    let classes = tensors.get("fc.weight")?.dims().first().copied()?;
    let aux = tensors.keys().any(|k| k.starts_with("AuxLogits."));
    Some((classes, aux))
}

/// Reads every tensor of a `.pth` (PyTorch zip) or `.safetensors` file onto the CPU.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>, Error> {
    let read_err = |source| Error::Read {
        path: path.to_owned(),
        source: Box::new(source),
    };
    let mut magic = [0u8; 4];
    {
        use std::io::Read as _;
        let mut f = std::fs::File::open(path).map_err(|e| read_err(e.into()))?;
        f.read_exact(&mut magic).map_err(|e| read_err(e.into()))?;
    }
    if &magic == b"PK\x03\x04" {
        let tensors = candle_core::pickle::read_all(path).map_err(read_err)?;
        if !tensors.is_empty() {
            return Ok(tensors.into_iter().collect());
        }
        // A training checkpoint that nests the state dict under a key.
        for key in ["state_dict", "model"] {
            if let Ok(tensors) = candle_core::pickle::read_all_with_key(path, Some(key))
                && !tensors.is_empty()
            {
                return Ok(tensors.into_iter().collect());
            }
        }
        Err(Error::Empty {
            path: path.to_owned(),
        })
    } else {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(read_err)?;
        Ok(tensors.into_iter().collect())
    }
}
