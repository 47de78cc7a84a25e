//! Evaluation metrics: precision@1 and recall@5 (the label among the k highest scores, as TF's
//! `in_top_k`, except that ties are broken towards the lower class index, as `tf.nn.top_k` does,
//! instead of counting every tied class), per-class accuracy and the confusion matrix.

use serde::Serialize;

/// Counts accumulated over evaluated examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    n_classes: usize,
    /// `confusion[true][predicted]`.
    confusion: Vec<Vec<u64>>,
    top1: u64,
    top5: u64,
    examples: u64,
}

/// The indices of the `k` largest values, largest first; ties go to the lower index (as
/// `tf.nn.top_k`). NaN sorts below everything.
pub fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (row[a], row[b]);
        let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
        key(y).total_cmp(&key(x)).then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

impl Tally {
    pub fn new(n_classes: usize) -> Self {
        Self {
            n_classes,
            confusion: vec![vec![0; n_classes]; n_classes],
            top1: 0,
            top5: 0,
            examples: 0,
        }
    }

    /// Adds one example: its logits (or probabilities) and its 0-based label.
    pub fn add(&mut self, scores: &[f32], label: usize) {
        let top = top_k(scores, 5.min(scores.len()));
        if let (Some(&pred), true) = (top.first(), label < self.n_classes) {
            if pred < self.n_classes {
                self.confusion[label][pred] += 1;
            }
            self.top1 += u64::from(pred == label);
        }
        self.top5 += u64::from(top.contains(&label));
        self.examples += 1;
    }

    /// Adds a batch of N×K scores (row-major) with their labels.
    pub fn add_batch(&mut self, scores: &[f32], labels: &[u32]) {
        let k = scores.len() / labels.len().max(1);
        for (row, &label) in scores.chunks(k).zip(labels) {
            self.add(row, label as usize);
        }
    }

    pub fn examples(&self) -> u64 {
        self.examples
    }

    /// Fraction of examples whose highest score is the label (TF's `precision @ 1`).
    pub fn precision_at_1(&self) -> f64 {
        ratio(self.top1, self.examples)
    }

    /// Fraction of examples whose label is among the five highest scores (TF's `recall @ 5`).
    pub fn recall_at_5(&self) -> f64 {
        ratio(self.top5, self.examples)
    }

    /// `confusion[true][predicted]`.
    pub fn confusion(&self) -> &[Vec<u64>] {
        &self.confusion
    }

    /// Per class: examples and the fraction predicted correctly.
    pub fn per_class(&self) -> Vec<(u64, f64)> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let n: u64 = row.iter().sum();
                (n, ratio(row[c], n))
            })
            .collect()
    }

    /// The metrics as written to `metrics.json`.
    pub fn report(&self, class_names: &[String]) -> Report {
        Report {
            examples: self.examples,
            precision_at_1: self.precision_at_1(),
            recall_at_5: self.recall_at_5(),
            per_class: self
                .per_class()
                .into_iter()
                .enumerate()
                .map(|(c, (examples, accuracy))| ClassReport {
                    class: class_names.get(c).cloned().unwrap_or_else(|| c.to_string()),
                    examples,
                    accuracy,
                })
                .collect(),
            confusion: self.confusion.clone(),
        }
    }

    /// TF's evaluation line: `precision @ 1 = 0.8120 recall @ 5 = 0.9870 [10000 examples]`.
    pub fn line(&self) -> String {
        format!(
            "precision @ 1 = {:.4} recall @ 5 = {:.4} [{} examples]",
            self.precision_at_1(),
            self.recall_at_5(),
            self.examples
        )
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// `metrics.json` of an evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub examples: u64,
    pub precision_at_1: f64,
    pub recall_at_5: f64,
    pub per_class: Vec<ClassReport>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassReport {
    pub class: String,
    pub examples: u64,
    pub accuracy: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_low() {
        assert_eq!(top_k(&[0.1, 0.5, 0.5, f32::NAN, 0.2], 3), [1, 2, 4]);
    }

    #[test]
    fn counts_top1_top5_and_confusion() {
        let mut t = Tally::new(6);
        t.add(&[0.0, 1.0, 0.0, 0.0, 0.0, 0.0], 1); // top-1 hit
        t.add(&[6.0, 5.0, 4.0, 3.0, 2.0, 1.0], 4); // top-5 hit only
        t.add(&[6.0, 5.0, 4.0, 3.0, 2.0, 1.0], 5); // miss
        assert_eq!(t.examples(), 3);
        assert!((t.precision_at_1() - 1.0 / 3.0).abs() < 1e-12);
        assert!((t.recall_at_5() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(t.confusion()[4][0], 1);
        assert_eq!(t.confusion()[1][1], 1);
        assert_eq!(t.per_class()[1], (1, 1.0));
        assert_eq!(
            t.line(),
            "precision @ 1 = 0.3333 recall @ 5 = 0.6667 [3 examples]"
        );
    }
}
