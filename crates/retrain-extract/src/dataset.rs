//! The known datasets: their archives' exact members and the real archives' digests.

use std::fmt;
use std::str::FromStr;

/// A dataset whose archive has a known, exact list of members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dataset {
    Cifar10,
    Cifar100,
}

/// Per-member md5s of the real CIFAR-10 archive (torchvision `datasets/cifar.py`).
const CIFAR10_MD5: [(&str, &str); 7] = [
    ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
    ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
    ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
    ("data_batch_4", "634d18415352ddfa80567beed471001a"),
    ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
    ("test_batch", "40351d587109b95175f43aff81a1287e"),
    ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
];

/// Per-member md5s of the real CIFAR-100 archive (torchvision `datasets/cifar.py`).
const CIFAR100_MD5: [(&str, &str); 3] = [
    ("train", "16019d7e3df5f24257cddd939b257f8d"),
    ("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
    ("meta", "7973b15100ade9c7d40fb424638fde48"),
];

impl Dataset {
    pub const ALL: [Self; 2] = [Self::Cifar10, Self::Cifar100];

    /// The real archive's file name.
    pub fn archive_name(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-python.tar.gz",
            Self::Cifar100 => "cifar-100-python.tar.gz",
        }
    }

    /// The folder every member sits in.
    pub fn folder(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-batches-py",
            Self::Cifar100 => "cifar-100-python",
        }
    }

    /// The file members' names inside [`Dataset::folder`].
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Self::Cifar10 => &[
                "data_batch_1",
                "data_batch_2",
                "data_batch_3",
                "data_batch_4",
                "data_batch_5",
                "test_batch",
                "batches.meta",
                "readme.html",
            ],
            Self::Cifar100 => &["train", "test", "meta", "file.txt~"],
        }
    }

    /// Every member's normalised path (no trailing slash) and whether it is a directory: the
    /// folder, then its files.
    pub fn members(self) -> Vec<(String, bool)> {
        std::iter::once((self.folder().to_owned(), true))
            .chain(
                self.files()
                    .iter()
                    .map(|file| (format!("{}/{file}", self.folder()), false)),
            )
            .collect()
    }

    /// SHA-256 of the real archive, as published (REFERENCE.md).
    pub fn archive_sha256(self) -> &'static str {
        match self {
            Self::Cifar10 => "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            Self::Cifar100 => "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        }
    }

    /// The real archive's per-member md5s, by normalised member path. `readme.html` and
    /// `file.txt~` have none published; the archive's SHA-256 vouches for them.
    pub fn reference_md5s(self) -> Vec<(String, &'static str)> {
        let table: &[(&str, &str)] = match self {
            Self::Cifar10 => &CIFAR10_MD5,
            Self::Cifar100 => &CIFAR100_MD5,
        };
        table
            .iter()
            .map(|(file, md5)| (format!("{}/{file}", self.folder()), *md5))
            .collect()
    }

    /// The dataset whose real archive has this SHA-256 (lower-case hex), if any.
    pub fn from_archive_sha256(sha256: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|dataset| dataset.archive_sha256() == sha256)
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
        })
    }
}

impl FromStr for Dataset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cifar10" => Ok(Self::Cifar10),
            "cifar100" => Ok(Self::Cifar100),
            other => Err(format!(
                "unknown dataset {other:?} (expected cifar10 or cifar100)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_the_folder_then_its_files() {
        let members = Dataset::Cifar10.members();
        assert_eq!(members.len(), 9);
        assert_eq!(members[0], ("cifar-10-batches-py".to_owned(), true));
        assert!(members.contains(&("cifar-10-batches-py/readme.html".to_owned(), false)));
        let members = Dataset::Cifar100.members();
        assert_eq!(members.len(), 5);
        assert!(members.contains(&("cifar-100-python/file.txt~".to_owned(), false)));
    }

    #[test]
    fn real_archives_are_recognised_by_digest() {
        for dataset in Dataset::ALL {
            assert_eq!(
                Dataset::from_archive_sha256(dataset.archive_sha256()),
                Some(dataset)
            );
            assert_eq!(dataset.to_string().parse::<Dataset>(), Ok(dataset));
            // Every reference digest names a member.
            for (member, md5) in dataset.reference_md5s() {
                assert!(dataset.members().iter().any(|(path, _)| *path == member));
                assert_eq!(md5.len(), 32);
            }
        }
        assert_eq!(Dataset::from_archive_sha256(&"0".repeat(64)), None);
    }
}
