//! `sort-report.json`: what was written, counted per split and class, every file-name collision and
//! every name that had to be sanitised.

use serde::{Deserialize, Serialize};

/// The report written beside the image folders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// `cifar10` or `cifar100`.
    pub dataset: String,
    /// `fine` or `coarse`.
    pub labels: String,
    /// Class folder names in label order: the lines of `labels.txt`.
    pub class_names: Vec<String>,
    /// `train_dir`, then `validation_dir`.
    pub splits: Vec<SplitReport>,
    /// Images that kept their data but not their file name, in batch order.
    pub collisions: Vec<Collision>,
    /// File names that were not safe as they were, in batch order.
    pub sanitised: Vec<Sanitised>,
    /// Class names that were not safe as they were.
    pub sanitised_classes: Vec<SanitisedClass>,
}

impl Report {
    /// Total images over all splits.
    pub fn images(&self) -> u64 {
        self.splits.iter().map(|s| s.images).sum()
    }
}

/// One split folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitReport {
    /// `train_dir` or `validation_dir`.
    pub dir: String,
    /// PNG files written, one per image of the split's batches.
    pub images: u64,
    /// The split's batch files in batch order, with their image counts.
    pub batches: Vec<Count>,
    /// Images per class, in label order (counted again on disk after writing).
    pub classes: Vec<Count>,
}

/// A name and how many images it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub name: String,
    pub images: u64,
}

/// Row `row` of batch file `batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    pub batch: String,
    pub row: usize,
}

/// An image whose (sanitised) file name was already taken in its class folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collision {
    /// `train_dir` or `validation_dir`.
    pub split: String,
    pub class: String,
    /// The name both images asked for.
    pub name: String,
    /// The image that kept it (earlier in batch order).
    pub kept: ImageRef,
    /// The image that was renamed.
    pub image: ImageRef,
    /// The name it was written under.
    pub written: String,
}

/// An image whose file name from the pickle was not safe to use as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sanitised {
    pub split: String,
    pub image: ImageRef,
    pub original: String,
    /// The name asked for instead (before the collision rule).
    pub name: String,
}

/// A class name from the meta file that was not safe as a folder name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SanitisedClass {
    pub label: usize,
    pub original: String,
    pub name: String,
}
