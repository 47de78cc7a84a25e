//! Reproducible pseudo-random tensors from (name, element index), for parity checks against
//! PyTorch without committing 100 MB of weights. `scripts/inception_parity.py` implements the same
//! generator in vectorised numpy; both must agree bit for bit.
//!
//! Element `i` of the tensor named `name`: `u = splitmix64(fnv1a64(name) + (i + 1) · φ)`, where φ is
//! the splitmix64 increment `0x9E37_79B9_7F4A_7C15` (wrapping arithmetic); `r = (u >> 11) · 2⁻⁵³` is
//! uniform in [0, 1); the value is `lo + (hi − lo) · r`, computed in f64 and rounded to f32 once.

use candle_core::{Device, Result, Tensor};

use crate::param_shapes;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a, 64 bits, of the UTF-8 bytes of `name`.
pub fn name_hash(name: &str) -> u64 {
    name.bytes()
        .fold(FNV_OFFSET, |h, b| (h ^ b as u64).wrapping_mul(FNV_PRIME))
}

fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` values uniform in `[lo, hi)` for the tensor named `name`.
pub fn uniform(name: &str, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    let base = name_hash(name);
    (0..n as u64)
        .map(|i| {
            let u = splitmix64(base.wrapping_add((i + 1).wrapping_mul(GOLDEN)));
            let r = (u >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            (lo + (hi - lo) * r) as f32
        })
        .collect()
}

/// A tensor of the given shape filled by [`uniform`].
pub fn uniform_tensor(
    name: &str,
    dims: &[usize],
    lo: f64,
    hi: f64,
    dev: &Device,
) -> Result<Tensor> {
    let n = dims.iter().product();
    Tensor::from_vec(uniform(name, n, lo, hi), dims, dev)
}

/// The range every parameter of the parity weights is drawn from, chosen so that activations stay
/// O(1) through the network in eval mode: conv weights ±√(6/fan_in) (He-uniform), linear weights
/// ±√(3/fan_in), linear biases ±0.1, batch-norm γ in [0.8, 1.2), β in [−0.1, 0.1), running mean in
/// [−0.1, 0.1), running variance in [0.5, 1.5).
pub fn parity_range(name: &str, dims: &[usize]) -> (f64, f64) {
    let fan_in: usize = dims.iter().skip(1).product();
    let bound = |scale: f64| {
        let b = (scale / fan_in.max(1) as f64).sqrt();
        (-b, b)
    };
    if name.ends_with("bn.weight") {
        (0.8, 1.2)
    } else if name.ends_with("bn.bias") || name.ends_with("running_mean") {
        (-0.1, 0.1)
    } else if name.ends_with("running_var") {
        (0.5, 1.5)
    } else if name.ends_with("conv.weight") {
        bound(6.0)
    } else if name.ends_with("fc.weight") {
        bound(3.0)
    } else {
        (-0.1, 0.1)
    }
}

/// The parity weights for every parameter and batch-norm statistic of a model with this
/// configuration, by torchvision name (no `num_batches_tracked`).
pub fn parity_weights(cfg: &crate::Config, dev: &Device) -> Result<Vec<(String, Tensor)>> {
    param_shapes(cfg)
        .into_iter()
        .map(|(name, dims)| {
            let (lo, hi) = parity_range(&name, &dims);
            let t = uniform_tensor(&name, &dims, lo, hi, dev)?;
            Ok((name, t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_pinned() {
        // Pinned so that a change on either side (Rust or the numpy twin) shows.
        assert_eq!(name_hash(""), FNV_OFFSET);
        assert_eq!(name_hash("a"), 0xaf63_dc4c_8601_ec8c);
        let v = uniform("fc.bias", 3, 0.0, 1.0);
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        assert_ne!(v[0], v[1]);
    }
}
