//! The recipe's losses: softmax cross-entropy with label smoothing, and slim's L2 weight decay.

use candle_core::{D, DType, Result, Tensor};

/// Mean softmax cross-entropy of `logits` (N×K) against 0-based `labels` (N, u32), with label
/// smoothing ε as TF's `softmax_cross_entropy(label_smoothing=ε)`: the target is
/// `(1 − ε)·onehot + ε/K`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Result<Tensor> {
    let (n, k) = logits.dims2()?;
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = log_p
        .gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    let nll = (picked.sum_all()? * (-1.0 / n as f64))?;
    if smoothing == 0.0 {
        return Ok(nll);
    }
    // −Σ_k (ε/K)·log p_k, averaged over the batch.
    let uniform = (log_p.sum_all()? * (-1.0 / (n * k) as f64))?;
    (nll * (1.0 - smoothing))? + (uniform * smoothing)?
}

/// slim's L2 regulariser: `wd · Σ w²/2` over `weights`; `None` for an empty list or wd = 0.
pub fn l2_penalty(weights: &[Tensor], weight_decay: f64) -> Result<Option<Tensor>> {
    if weight_decay == 0.0 {
        return Ok(None);
    }
    let mut total: Option<Tensor> = None;
    for w in weights {
        let term = w.sqr()?.sum_all()?;
        total = Some(match total {
            None => term,
            Some(t) => (t + term)?,
        });
    }
    total.map(|t| t * (weight_decay / 2.0)).transpose()
}

/// Whether a parameter gets weight decay, as slim: convolution and fully-connected weights, not
/// biases or batch-norm parameters.
pub fn decays(name: &str) -> bool {
    name.ends_with(".weight") && !name.contains(".bn.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_the_formula() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1.0f64, 2.0, 0.5], [0.0, -1.0, 3.0]], &dev).unwrap();
        let labels = Tensor::new(&[1u32, 0], &dev).unwrap();
        let eps = 0.1;
        let mut want = 0.0;
        for (row, label) in [([1.0f64, 2.0, 0.5], 1usize), ([0.0, -1.0, 3.0], 0)] {
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            for (k, v) in row.iter().enumerate() {
                let q = if k == label { 1.0 - eps } else { 0.0 } + eps / 3.0;
                want -= q * (v - lse);
            }
        }
        want /= 2.0;
        let got = cross_entropy(&logits, &labels, eps)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn l2_is_half_the_sum_of_squares() {
        let dev = Device::Cpu;
        let w = [
            Tensor::new(&[1.0f64, 2.0], &dev).unwrap(),
            Tensor::new(&[3.0f64], &dev).unwrap(),
        ];
        let got = l2_penalty(&w, 0.1)
            .unwrap()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((got - 0.1 * 14.0 / 2.0).abs() < 1e-12);
        assert!(l2_penalty(&w, 0.0).unwrap().is_none());
        assert!(decays("Mixed_5b.branch1x1.conv.weight"));
        assert!(decays("fc.weight"));
        assert!(!decays("fc.bias"));
        assert!(!decays("Mixed_5b.branch1x1.bn.weight"));
    }
}
