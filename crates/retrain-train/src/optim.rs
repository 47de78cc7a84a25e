//! Optimisers over named candle [`Var`]s (TF-style RMSProp, momentum SGD, AdamW) with checkpointable
//! state, and the recipe's staircase learning-rate schedule.
//!
//! candle 0.11 ships neither RMSProp nor momentum SGD nor schedules, and its `AdamW` keeps its state
//! private, so a checkpoint could not resume it. The updates are plain tensor arithmetic, so they
//! run wherever the vars live (CPU or CUDA), in each var's own dtype; a contiguous f32 var on the
//! CPU is updated in place instead, with its state, in one parallel pass (the same formulas,
//! each element in f64 and rounded once).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

/// What went wrong parsing an optimiser name or restoring optimiser state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("unknown optimizer {name:?}, expected rmsprop, sgd or adamw")]
    UnknownOptimizer { name: String },
    #[error("optimizer state: missing tensor {name}")]
    MissingState { name: String },
    #[error("optimizer state: unexpected tensor {name} for a {kind} optimizer")]
    UnexpectedState { name: String, kind: &'static str },
    #[error("optimizer state: tensor {name} has shape {got:?}, expected {expected:?}")]
    StateShape {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("optimizer state: tensor {name} is not a step count")]
    StepCount { name: String },
    #[error("optimizer state: tensor {name}")]
    Tensor {
        name: String,
        #[source]
        source: candle_core::Error,
    },
}

/// Which update rule, with its hyper-parameters (the learning rate comes with each step).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerKind {
    /// TF-style RMSProp (`tf.train.RMSPropOptimizer`): `ms` starts at 1,
    /// `ms = decay·ms + (1−decay)·g²`, `mom = momentum·mom + lr·g/sqrt(ms + eps)`, `w −= mom`.
    /// Recipe: decay 0.9, momentum 0.9, eps 1.0.
    Rmsprop { decay: f64, momentum: f64, eps: f64 },
    /// SGD with momentum as `torch.optim.SGD` (no dampening, no Nesterov, no weight decay):
    /// `buf = momentum·buf + g` (first step `buf = g`); `w −= lr·buf`.
    Sgd { momentum: f64 },
    /// AdamW as `torch.optim.AdamW`: decoupled weight decay `w −= lr·wd·w`, then Adam with bias
    /// correction by the var's own step count.
    Adamw {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
}

impl OptimizerKind {
    /// The recipe's RMSProp: decay 0.9, momentum 0.9, eps 1.0.
    pub fn rmsprop() -> Self {
        Self::Rmsprop {
            decay: 0.9,
            momentum: 0.9,
            eps: 1.0,
        }
    }

    /// `rmsprop` (the recipe's), `sgd` (momentum 0.9) or `adamw` (betas 0.9, 0.999, eps 1e-8,
    /// weight decay 0.01: torch's defaults); ASCII case is ignored.
    pub fn parse(name: &str) -> Result<Self, Error> {
        match name.to_ascii_lowercase().as_str() {
            "rmsprop" => Ok(Self::rmsprop()),
            "sgd" => Ok(Self::Sgd { momentum: 0.9 }),
            "adamw" => Ok(Self::Adamw {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            }),
            _ => Err(Error::UnknownOptimizer {
                name: name.to_owned(),
            }),
        }
    }

    /// The lower-case name, which also prefixes the state tensors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Rmsprop { .. } => "rmsprop",
            Self::Sgd { .. } => "sgd",
            Self::Adamw { .. } => "adamw",
        }
    }

    /// Rejects hyper-parameters that torch or TF reject (or that make NaNs).
    fn validate(&self) -> candle_core::Result<()> {
        let bad = |what: &str, value: f64| {
            Err(candle_core::Error::Msg(format!(
                "{} optimizer: invalid {what} {value}",
                self.name()
            )))
        };
        match *self {
            Self::Rmsprop {
                decay,
                momentum,
                eps,
            } => {
                if !(0.0..=1.0).contains(&decay) {
                    return bad("decay", decay);
                }
                if !(momentum >= 0.0 && momentum.is_finite()) {
                    return bad("momentum", momentum);
                }
                if !(eps >= 0.0 && eps.is_finite()) {
                    return bad("eps", eps);
                }
            }
            Self::Sgd { momentum } => {
                if !(momentum >= 0.0 && momentum.is_finite()) {
                    return bad("momentum", momentum);
                }
            }
            Self::Adamw {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                if !(0.0..1.0).contains(&beta1) {
                    return bad("beta1", beta1);
                }
                if !(0.0..1.0).contains(&beta2) {
                    return bad("beta2", beta2);
                }
                if !(eps >= 0.0 && eps.is_finite()) {
                    return bad("eps", eps);
                }
                if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
                    return bad("weight_decay", weight_decay);
                }
            }
        }
        Ok(())
    }
}

/// Elements per task of the in-place update of a CPU f32 var.
const CHUNK: usize = 1 << 15;

/// One update of a CPU f32 var and its state (see [`State::Host`]), in place, in one parallel
/// pass: each element computed in f64 and rounded once (the tensor path rounds after each op, so
/// the two agree to f32 rounding; a test pins that). The var is the op's mutable storage, the
/// gradient its second argument, the state borrowed here.
struct HostUpdate<'a> {
    /// The var's name, for errors.
    name: &'a str,
    kind: OptimizerKind,
    lr: f64,
    /// This var's update number, from 1 (AdamW's bias correction).
    t: u64,
    state: std::sync::Mutex<(&'a mut [f32], Option<&'a mut [f32]>)>,
}

impl HostUpdate<'_> {
    fn run(&self, w: &mut [f32], g: &[f32]) -> candle_core::Result<()> {
        use rayon::prelude::*;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (first, second) = &mut *state;
        let n = w.len();
        if g.len() != n || first.len() != n || second.as_ref().is_some_and(|s| s.len() != n) {
            candle_core::bail!(
                "optimizer: {}: {n} weights but {} gradients and {} state values",
                self.name,
                g.len(),
                first.len()
            );
        }
        let lr = self.lr;
        match self.kind {
            OptimizerKind::Rmsprop {
                decay,
                momentum,
                eps,
            } => {
                let Some(mom) = second.as_deref_mut() else {
                    candle_core::bail!("optimizer: {}: rmsprop keeps mom", self.name)
                };
                each_with_two((w, g), (first, mom), |w, g, ms, mom| {
                    let s = decay * f64::from(*ms) + (1.0 - decay) * g * g;
                    let m = momentum * f64::from(*mom) + lr * g / (s + eps).sqrt();
                    *ms = s as f32;
                    *mom = m as f32;
                    *w = (f64::from(*w) - m) as f32;
                });
            }
            OptimizerKind::Sgd { momentum } => {
                let pieces = w.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK));
                pieces
                    .zip(first.par_chunks_mut(CHUNK))
                    .for_each(|((w, g), buf)| {
                        for ((w, &g), buf) in w.iter_mut().zip(g).zip(buf) {
                            let b = momentum * f64::from(*buf) + f64::from(g);
                            *buf = b as f32;
                            *w = (f64::from(*w) - lr * b) as f32;
                        }
                    });
            }
            OptimizerKind::Adamw {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let Some(v) = second.as_deref_mut() else {
                    candle_core::bail!("optimizer: {}: adamw keeps v", self.name)
                };
                let t = i32::try_from(self.t).unwrap_or(i32::MAX);
                let bias1 = 1.0 - beta1.powi(t);
                let bias2 = 1.0 - beta2.powi(t);
                each_with_two((w, g), (first, v), |w, g, m, v| {
                    let mi = beta1 * f64::from(*m) + (1.0 - beta1) * g;
                    let vi = beta2 * f64::from(*v) + (1.0 - beta2) * g * g;
                    let denom = vi.sqrt() / bias2.sqrt() + eps;
                    *m = mi as f32;
                    *v = vi as f32;
                    *w = (f64::from(*w) * (1.0 - lr * weight_decay) - lr / bias1 * mi / denom)
                        as f32;
                });
            }
        }
        Ok(())
    }
}

/// `f(w, g, a, b)` for each weight `w`, its gradient `g` (in f64) and its two state values, in
/// parallel pieces of [`CHUNK`] (the lengths are checked equal by the caller).
fn each_with_two(
    (w, g): (&mut [f32], &[f32]),
    (a, b): (&mut [f32], &mut [f32]),
    f: impl Fn(&mut f32, f64, &mut f32, &mut f32) + Sync,
) {
    use rayon::prelude::*;
    let pieces = w.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK));
    let states = a.par_chunks_mut(CHUNK).zip(b.par_chunks_mut(CHUNK));
    pieces.zip(states).for_each(|((w, g), (a, b))| {
        for (((w, &g), a), b) in w.iter_mut().zip(g).zip(a).zip(b) {
            f(w, f64::from(g), a, b);
        }
    });
}

impl candle_core::InplaceOp2 for HostUpdate<'_> {
    fn name(&self) -> &'static str {
        "retrain-optimizer-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let (Some((a, b)), Some((c, d))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!(
                "optimizer: {}: weight or gradient not contiguous",
                self.name
            )
        };
        match (s1, s2) {
            (candle_core::CpuStorage::F32(w), candle_core::CpuStorage::F32(g)) => {
                self.run(&mut w[a..b], &g[c..d])
            }
            _ => candle_core::bail!(
                "optimizer: {}: the in-place update takes f32 only",
                self.name
            ),
        }
    }
}

/// The scalar state tensor holding the number of [`Optimizer::step`] calls.
const STEPS_KEY: &str = "optimizer.steps";

/// One var and its state.
struct Slot {
    name: String,
    var: Var,
    state: State,
    /// Updates this var received (AdamW's bias correction counts these, as torch does).
    updates: u64,
}

/// A var's state: `first` is RMSProp's `ms` (starts at ones), SGD's `buf` or AdamW's `m`;
/// `second` RMSProp's `mom` or AdamW's `v` (None for SGD).
enum State {
    /// In the var's dtype, on its device, updated by candle tensor ops (CUDA, f64).
    Tensors {
        first: Tensor,
        second: Option<Tensor>,
    },
    /// For a contiguous f32 var on the CPU (the usual case): plain vectors, updated with the var
    /// in place in one parallel pass ([`HostUpdate`]). The tensor ops read and wrote the weights
    /// and state about a dozen times per update; for the whole of Inception-v3 (22 million values)
    /// that was a noticeable part of a training step.
    Host {
        first: Vec<f32>,
        second: Option<Vec<f32>>,
    },
}

impl State {
    /// The state tensors (copies of the vectors, on the CPU, in the var's shape).
    fn tensors(&self, like: &Tensor) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        match self {
            Self::Tensors { first, second } => Ok((first.clone(), second.clone())),
            Self::Host { first, second } => {
                let tensor = |v: &[f32]| Tensor::from_slice(v, like.shape(), &Device::Cpu);
                Ok((tensor(first)?, second.as_deref().map(tensor).transpose()?))
            }
        }
    }
}

/// Whether a var's state is kept as [`State::Host`].
fn on_host(var: &Var) -> bool {
    let t = var.as_tensor();
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// An optimiser over named candle [`Var`]s. A contiguous f32 var on the CPU keeps its state in
/// vectors and is updated in place with it; any other var's state tensors live on its device and
/// its update is candle tensor ops in its dtype. Vars whose dtype is not a float type are left out
/// (they have no gradients).
pub struct Optimizer {
    kind: OptimizerKind,
    slots: Vec<Slot>,
    steps: u64,
}

impl fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Optimizer")
            .field("kind", &self.kind)
            .field("vars", &self.slots.len())
            .field("steps", &self.steps)
            .finish()
    }
}

impl Optimizer {
    /// Builds zeroed state (RMSProp's `ms` at ones) for each float var. Invalid hyper-parameters and
    /// duplicate var names are errors.
    pub fn new(kind: OptimizerKind, vars: Vec<(String, Var)>) -> candle_core::Result<Self> {
        kind.validate()?;
        let mut names = BTreeSet::new();
        let mut slots = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            if !names.insert(name.clone()) {
                return Err(candle_core::Error::Msg(format!(
                    "optimizer: var {name} given twice"
                )));
            }
            if !var.dtype().is_float() {
                continue;
            }
            let t = var.as_tensor();
            let state = if on_host(&var) {
                let n = t.elem_count();
                let (first, second) = match kind {
                    OptimizerKind::Rmsprop { .. } => (vec![1.0; n], Some(vec![0.0; n])),
                    OptimizerKind::Sgd { .. } => (vec![0.0; n], None),
                    OptimizerKind::Adamw { .. } => (vec![0.0; n], Some(vec![0.0; n])),
                };
                State::Host { first, second }
            } else {
                let (first, second) = match kind {
                    OptimizerKind::Rmsprop { .. } => (t.ones_like()?, Some(t.zeros_like()?)),
                    OptimizerKind::Sgd { .. } => (t.zeros_like()?, None),
                    OptimizerKind::Adamw { .. } => (t.zeros_like()?, Some(t.zeros_like()?)),
                };
                State::Tensors {
                    first: first.detach(),
                    second: second.map(|s| s.detach()),
                }
            };
            slots.push(Slot {
                name,
                var,
                state,
                updates: 0,
            });
        }
        Ok(Self {
            kind,
            slots,
            steps: 0,
        })
    }

    /// One update with learning rate `lr`. Vars without a gradient in `grads` are left alone (their
    /// state too).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> candle_core::Result<()> {
        self.update(|slot| grads.get(slot.var.as_tensor()).cloned(), lr)
    }

    /// [`Optimizer::step`] with gradients by var name (computed without autograd, as the
    /// classifier of head training is).
    pub fn step_named(
        &mut self,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> candle_core::Result<()> {
        self.update(|slot| grads.get(&slot.name).cloned(), lr)
    }

    fn update(
        &mut self,
        grad_of: impl Fn(&Slot) -> Option<Tensor>,
        lr: f64,
    ) -> candle_core::Result<()> {
        if !(lr >= 0.0 && lr.is_finite()) {
            return Err(candle_core::Error::Msg(format!(
                "optimizer: invalid learning rate {lr}"
            )));
        }
        self.steps += 1;
        for slot in &mut self.slots {
            let Some(grad) = grad_of(slot) else {
                continue;
            };
            let w = slot.var.as_tensor();
            let (first, second) = match &mut slot.state {
                State::Host { first, second } => {
                    if grad.shape() != w.shape() {
                        return Err(candle_core::Error::Msg(format!(
                            "optimizer: gradient of {} has shape {:?}, expected {:?}",
                            slot.name,
                            grad.dims(),
                            w.dims()
                        )));
                    }
                    let g = grad.to_dtype(DType::F32)?.contiguous()?;
                    let op = HostUpdate {
                        name: &slot.name,
                        kind: self.kind,
                        lr,
                        t: slot.updates + 1,
                        state: std::sync::Mutex::new((first, second.as_deref_mut())),
                    };
                    w.inplace_op2(&g, &op)?;
                    slot.updates += 1;
                    continue;
                }
                State::Tensors { first, second } => (first, second),
            };
            let g = grad.to_dtype(w.dtype())?.detach();
            let next_w = match self.kind {
                OptimizerKind::Rmsprop {
                    decay,
                    momentum,
                    eps,
                } => {
                    let mom = second.as_ref().expect("rmsprop keeps mom");
                    let ms = (first.affine(decay, 0.0)? + g.sqr()?.affine(1.0 - decay, 0.0)?)?;
                    let scaled = (g.affine(lr, 0.0)? / ms.affine(1.0, eps)?.sqrt()?)?;
                    let mom = (mom.affine(momentum, 0.0)? + scaled)?;
                    let next_w = (w - &mom)?;
                    *first = ms.detach();
                    *second = Some(mom.detach());
                    next_w
                }
                OptimizerKind::Sgd { momentum } => {
                    // torch starts with buf = g; buf = 0 gives momentum·0 + g = g exactly.
                    let buf = (first.affine(momentum, 0.0)? + &g)?;
                    let next_w = (w - buf.affine(lr, 0.0)?)?;
                    *first = buf.detach();
                    next_w
                }
                OptimizerKind::Adamw {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    let t = slot.updates + 1;
                    let v = second.as_ref().expect("adamw keeps v");
                    let m = (first.affine(beta1, 0.0)? + g.affine(1.0 - beta1, 0.0)?)?;
                    let v = (v.affine(beta2, 0.0)? + g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
                    let t_exp = i32::try_from(t).unwrap_or(i32::MAX);
                    let bias1 = 1.0 - beta1.powi(t_exp);
                    let bias2 = 1.0 - beta2.powi(t_exp);
                    // torch: denom = sqrt(v)/sqrt(bias2) + eps; w −= (lr/bias1)·m/denom.
                    let denom = v.sqrt()?.affine(1.0 / bias2.sqrt(), eps)?;
                    let decayed = w.affine(1.0 - lr * weight_decay, 0.0)?;
                    let next_w = (decayed - (m.affine(lr / bias1, 0.0)? / denom)?)?;
                    *first = m.detach();
                    *second = Some(v.detach());
                    next_w
                }
            };
            slot.var.set(&next_w.detach())?;
            slot.updates += 1;
        }
        Ok(())
    }

    pub fn kind(&self) -> &OptimizerKind {
        &self.kind
    }

    /// Number of steps taken (calls of [`Optimizer::step`]).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The state as named tensors for a checkpoint: `optimizer.steps` (an i64 scalar on the CPU)
    /// and, per var, `rmsprop.ms.<name>` and `rmsprop.mom.<name>`, or `sgd.buf.<name>`, or
    /// `adamw.m.<name>`, `adamw.v.<name>` and `adamw.step.<name>` (an i64 scalar on the CPU).
    pub fn state(&self) -> candle_core::Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        out.insert(STEPS_KEY.to_owned(), count_tensor(self.steps)?);
        for slot in &self.slots {
            let (first, second) = self.state_names(&slot.name);
            let (first_tensor, second_tensor) = slot.state.tensors(slot.var.as_tensor())?;
            out.insert(first, first_tensor);
            if let (Some(name), Some(tensor)) = (second, second_tensor) {
                out.insert(name, tensor);
            }
            if let OptimizerKind::Adamw { .. } = self.kind {
                out.insert(
                    format!("adamw.step.{}", slot.name),
                    count_tensor(slot.updates)?,
                );
            }
        }
        Ok(out)
    }

    /// Restores state written by [`Optimizer::state`] of an optimiser of the same kind over vars
    /// with the same names and shapes. Tensors outside the optimiser's namespaces (`optimizer.`,
    /// `rmsprop.`, `sgd.`, `adamw.`) are ignored, so a whole checkpoint may be passed; a missing
    /// tensor, one of another kind or an unknown var, or a wrong shape is an error naming it, and
    /// then nothing is changed. Tensors are moved to each var's device and dtype.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), Error> {
        let mut expected = BTreeSet::new();
        let steps = read_count(state, STEPS_KEY)?;
        expected.insert(STEPS_KEY.to_owned());
        let mut restored = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let (first_name, second_name) = self.state_names(&slot.name);
            let first = read_like(state, &first_name, slot.var.as_tensor())?;
            expected.insert(first_name);
            let second = match second_name {
                Some(name) => {
                    let tensor = read_like(state, &name, slot.var.as_tensor())?;
                    expected.insert(name);
                    Some(tensor)
                }
                None => None,
            };
            let updates = if let OptimizerKind::Adamw { .. } = self.kind {
                let name = format!("adamw.step.{}", slot.name);
                let updates = read_count(state, &name)?;
                expected.insert(name);
                updates
            } else {
                0
            };
            let state = match &slot.state {
                State::Tensors { .. } => State::Tensors { first, second },
                State::Host { .. } => {
                    let host = |name: String, t: &Tensor| {
                        t.flatten_all()
                            .and_then(|t| t.to_vec1::<f32>())
                            .map_err(|source| Error::Tensor { name, source })
                    };
                    let (first_name, second_name) = self.state_names(&slot.name);
                    State::Host {
                        first: host(first_name, &first)?,
                        second: match (second_name, &second) {
                            (Some(name), Some(t)) => Some(host(name, t)?),
                            _ => None,
                        },
                    }
                }
            };
            restored.push((state, updates));
        }
        const NAMESPACES: [&str; 4] = ["optimizer.", "rmsprop.", "sgd.", "adamw."];
        if let Some(name) = state.keys().find(|name| {
            NAMESPACES.iter().any(|p| name.starts_with(p)) && !expected.contains(*name)
        }) {
            return Err(Error::UnexpectedState {
                name: name.clone(),
                kind: self.kind.name(),
            });
        }
        for (slot, (state, updates)) in self.slots.iter_mut().zip(restored) {
            slot.state = state;
            slot.updates = updates;
        }
        self.steps = steps;
        Ok(())
    }

    /// The names of a var's two state tensors (the second is None for SGD).
    fn state_names(&self, var_name: &str) -> (String, Option<String>) {
        match self.kind {
            OptimizerKind::Rmsprop { .. } => (
                format!("rmsprop.ms.{var_name}"),
                Some(format!("rmsprop.mom.{var_name}")),
            ),
            OptimizerKind::Sgd { .. } => (format!("sgd.buf.{var_name}"), None),
            OptimizerKind::Adamw { .. } => (
                format!("adamw.m.{var_name}"),
                Some(format!("adamw.v.{var_name}")),
            ),
        }
    }
}

fn count_tensor(count: u64) -> candle_core::Result<Tensor> {
    let count = i64::try_from(count).unwrap_or(i64::MAX);
    Tensor::new(count, &Device::Cpu)
}

/// A non-negative integer stored as a one-element tensor of any dtype.
fn read_count(state: &BTreeMap<String, Tensor>, name: &str) -> Result<u64, Error> {
    let tensor = state.get(name).ok_or_else(|| Error::MissingState {
        name: name.to_owned(),
    })?;
    let bad = || Error::StepCount {
        name: name.to_owned(),
    };
    if tensor.elem_count() != 1 {
        return Err(bad());
    }
    let value = tensor
        .flatten_all()
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.to_vec1::<f64>())
        .map_err(|source| Error::Tensor {
            name: name.to_owned(),
            source,
        })?[0];
    if !(value >= 0.0 && value.fract() == 0.0 && value < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(value as u64)
}

/// The tensor `name`, checked against `like`'s shape and moved to its device and dtype.
fn read_like(state: &BTreeMap<String, Tensor>, name: &str, like: &Tensor) -> Result<Tensor, Error> {
    let tensor = state.get(name).ok_or_else(|| Error::MissingState {
        name: name.to_owned(),
    })?;
    if tensor.dims() != like.dims() {
        return Err(Error::StateShape {
            name: name.to_owned(),
            got: tensor.dims().to_vec(),
            expected: like.dims().to_vec(),
        });
    }
    tensor
        .to_device(like.device())
        .and_then(|t| t.to_dtype(like.dtype()))
        // A copy, so later changes to the caller's tensors (a Var's, say) cannot reach our state.
        .and_then(|t| t.copy())
        .map(|t| t.detach())
        .map_err(|source| Error::Tensor {
            name: name.to_owned(),
            source,
        })
}

/// Staircase exponential decay as TF's `exponential_decay(..., staircase=True)` in
/// `inception_train.py`: `decay_steps = int(examples_per_epoch / batch_size · epochs_per_decay)`
/// and `lr = initial · decay_factor^floor(step / decay_steps)`. That is
/// `initial · factor^floor(epoch / epochs_per_decay)` with `epoch = step·batch/examples_per_epoch`
/// whenever `examples_per_epoch·epochs_per_decay/batch_size` is a whole number of steps (CIFAR-10:
/// 50 000 / 32 · 30 = 46 875); otherwise TF's truncation makes the drop come at the truncated step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    pub initial: f64,
    pub decay_factor: f64,
    pub epochs_per_decay: f64,
}

impl Default for LrSchedule {
    /// The fine-tuning recipe: 0.001, ×0.16 every 30 epochs.
    fn default() -> Self {
        Self {
            initial: 0.001,
            decay_factor: 0.16,
            epochs_per_decay: 30.0,
        }
    }
}

impl LrSchedule {
    /// Steps between drops, at least 1; None (never decay) when the batch size, epoch size or
    /// `epochs_per_decay` makes it undefined (zero, negative or not finite).
    pub fn decay_steps(&self, batch_size: usize, examples_per_epoch: usize) -> Option<u64> {
        if batch_size == 0 || examples_per_epoch == 0 {
            return None;
        }
        let steps = examples_per_epoch as f64 / batch_size as f64 * self.epochs_per_decay;
        if !(steps > 0.0 && steps.is_finite()) {
            return None;
        }
        Some((steps.floor() as u64).max(1))
    }

    /// The learning rate for the update after `step` completed steps (step 0 is the first).
    pub fn at(&self, step: u64, batch_size: usize, examples_per_epoch: usize) -> f64 {
        match self.decay_steps(batch_size, examples_per_epoch) {
            None => self.initial,
            Some(decay_steps) => {
                let drops = (step / decay_steps) as f64;
                self.initial * self.decay_factor.powf(drops)
            }
        }
    }
}
