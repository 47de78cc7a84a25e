//! Per-member md5s: the `md5sum`-format digest file, and checking an archive's members against it
//! and against the real archives' published digests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Dataset, Error, MemberDigest, names};

/// Expected md5 of each file member, read from an `md5sum`-format file (`<md5>  <member path>`, one
/// a line; `md5sum -b`'s `<md5> *<path>` too), as `retrain-synth` writes `members.md5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDigests {
    source: PathBuf,
    md5: BTreeMap<String, String>,
}

impl MemberDigests {
    /// Reads and parses a digest file.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::DigestsRead {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of a digest file; `source` names it in errors. Paths are normalised as
    /// member names are (`./a` is `a`); a line that is malformed, names an unsafe path or repeats
    /// a path is an error.
    pub fn parse(text: &str, source: &Path) -> Result<Self, Error> {
        let mut md5 = BTreeMap::new();
        for (idx, line) in text.lines().enumerate() {
            let bad = |reason: &str| Error::DigestsParse {
                path: source.to_owned(),
                line: idx + 1,
                reason: reason.to_owned(),
            };
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            if line.starts_with('\\') {
                return Err(bad("escaped names (a leading backslash) are not supported"));
            }
            let (digest, rest) = line
                .split_once(' ')
                .ok_or_else(|| bad("expected `<md5>  <path>`"))?;
            if digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("expected 32 hexadecimal digits of md5"));
            }
            let name = rest
                .strip_prefix(' ')
                .or_else(|| rest.strip_prefix('*'))
                .ok_or_else(|| bad("expected two spaces (or ` *`) between the md5 and the path"))?;
            let path = match names::normalize(name) {
                Ok(Some(path)) => path,
                Ok(None) => return Err(bad("the path names no file")),
                Err(reason) => return Err(bad(&format!("path {name:?} {reason}"))),
            };
            if md5
                .insert(path.clone(), digest.to_ascii_lowercase())
                .is_some()
            {
                return Err(bad(&format!("path {path:?} is listed twice")));
            }
        }
        Ok(Self {
            source: source.to_owned(),
            md5,
        })
    }

    /// The file the digests came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The expected md5 (lower-case hex) of a member, by normalised path.
    pub fn get(&self, member: &str) -> Option<&str> {
        self.md5.get(member).map(String::as_str)
    }

    /// Every listed member and md5, in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.md5.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.md5.len()
    }

    pub fn is_empty(&self) -> bool {
        self.md5.is_empty()
    }
}

/// How an archive's members were verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    pub(crate) reference: Option<Dataset>,
    pub(crate) digest_file: bool,
}

/// Checks members' md5s: against the published table when the archive is a real one (its SHA-256
/// pinned), and against the digest file when given, which must then list every file member and
/// nothing else.
pub(crate) fn verify(
    archive: &Path,
    sha256: &str,
    members: &BTreeMap<String, MemberDigest>,
    digests: Option<&MemberDigests>,
) -> Result<Checked, Error> {
    let reference = Dataset::from_archive_sha256(sha256);
    if let Some(dataset) = reference {
        for (member, expected) in dataset.reference_md5s() {
            let Some(got) = members.get(&member) else {
                return Err(Error::Missing {
                    archive: archive.to_owned(),
                    member,
                    dataset,
                });
            };
            if got.md5 != expected {
                return Err(Error::Md5Mismatch {
                    archive: archive.to_owned(),
                    member,
                    actual: got.md5.clone(),
                    expected: expected.to_owned(),
                    table: format!("the published digests of the real {dataset} archive"),
                });
            }
        }
    }
    if let Some(digests) = digests {
        for (member, got) in members {
            let Some(expected) = digests.get(member) else {
                return Err(Error::Unlisted {
                    archive: archive.to_owned(),
                    member: member.clone(),
                    digests: digests.source().to_owned(),
                });
            };
            if got.md5 != expected {
                return Err(Error::Md5Mismatch {
                    archive: archive.to_owned(),
                    member: member.clone(),
                    actual: got.md5.clone(),
                    expected: expected.to_owned(),
                    table: digests.source().display().to_string(),
                });
            }
        }
        if let Some((member, _)) = digests.iter().find(|(m, _)| !members.contains_key(*m)) {
            return Err(Error::NotInArchive {
                archive: archive.to_owned(),
                member: member.to_owned(),
                digests: digests.source().to_owned(),
            });
        }
    }
    Ok(Checked {
        reference,
        digest_file: digests.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(md5: &str) -> MemberDigest {
        MemberDigest {
            md5: md5.to_owned(),
            sha256: String::new(),
            bytes: 0,
        }
    }

    #[test]
    fn md5sum_lines_parse() {
        let text = "c99cafc152244af753f735de768cd75f  d/data_batch_1\n\
                    D41D8CD98F00B204E9800998ECF8427E *./d/file.txt~\r\n\n";
        let digests = MemberDigests::parse(text, Path::new("m.md5")).unwrap();
        assert_eq!(digests.len(), 2);
        assert_eq!(
            digests.get("d/data_batch_1"),
            Some("c99cafc152244af753f735de768cd75f")
        );
        assert_eq!(
            digests.get("d/file.txt~"),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, needle) in [
            ("xyz  a\n", "line 1: expected 32 hexadecimal digits"),
            (
                "d41d8cd98f00b204e9800998ecf8427e  ../a\n",
                "line 1: path \"../a\" has a `..` component",
            ),
            (
                "d41d8cd98f00b204e9800998ecf8427e  a\nd41d8cd98f00b204e9800998ecf8427e  ./a\n",
                "line 2: path \"a\" is listed twice",
            ),
            (
                "\\d41d8cd98f00b204e9800998ecf8427e  a\\nb\n",
                "line 1: escaped",
            ),
            (
                "d41d8cd98f00b204e9800998ecf8427e\n",
                "line 1: expected `<md5>  <path>`",
            ),
            (
                "d41d8cd98f00b204e9800998ecf8427e xa\n",
                "line 1: expected two spaces",
            ),
        ] {
            let err = MemberDigests::parse(text, Path::new("m.md5")).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with("m.md5: ") && message.contains(needle),
                "{message}"
            );
        }
    }

    #[test]
    fn the_real_archive_is_checked_against_the_published_table() {
        let sha256 = Dataset::Cifar100.archive_sha256();
        let mut members: BTreeMap<String, MemberDigest> = Dataset::Cifar100
            .reference_md5s()
            .into_iter()
            .map(|(member, md5)| (member, digest(md5)))
            .collect();
        members.insert("cifar-100-python/file.txt~".into(), digest("anything"));
        let checked = verify(Path::new("a.tgz"), sha256, &members, None).unwrap();
        assert_eq!(checked.reference, Some(Dataset::Cifar100));
        assert!(!checked.digest_file);

        members.insert(
            "cifar-100-python/meta".into(),
            digest("00000000000000000000000000000000"),
        );
        let err = verify(Path::new("a.tgz"), sha256, &members, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a.tgz: member \"cifar-100-python/meta\" has md5 00000000000000000000000000000000, \
             expected 7973b15100ade9c7d40fb424638fde48 (from the published digests of the real \
             cifar100 archive)"
        );

        // Any other archive is not checked against the table.
        let checked = verify(Path::new("a.tgz"), &"0".repeat(64), &members, None).unwrap();
        assert_eq!(checked.reference, None);
    }

    #[test]
    fn a_digest_file_must_cover_every_member_exactly() {
        let digests = MemberDigests::parse(
            "d41d8cd98f00b204e9800998ecf8427e  a\nd41d8cd98f00b204e9800998ecf8427e  b\n",
            Path::new("m.md5"),
        )
        .unwrap();
        let empty = "d41d8cd98f00b204e9800998ecf8427e";
        let both = BTreeMap::from([("a".into(), digest(empty)), ("b".into(), digest(empty))]);
        let sha = "0".repeat(64);
        assert!(
            verify(Path::new("x"), &sha, &both, Some(&digests))
                .unwrap()
                .digest_file
        );
        let only_a = BTreeMap::from([("a".into(), digest(empty))]);
        let err = verify(Path::new("x"), &sha, &only_a, Some(&digests)).unwrap_err();
        assert!(matches!(err, Error::NotInArchive { ref member, .. } if member == "b"));
        let extra = BTreeMap::from([
            ("a".into(), digest(empty)),
            ("b".into(), digest(empty)),
            ("c".into(), digest(empty)),
        ]);
        let err = verify(Path::new("x"), &sha, &extra, Some(&digests)).unwrap_err();
        assert!(matches!(err, Error::Unlisted { ref member, .. } if member == "c"));
    }
}
