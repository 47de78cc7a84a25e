//! Member names: which are safe to write under the output directory, and their normal form.

/// The normal form of a member name: `/`-separated components relative to the output directory,
/// with `.` and empty components dropped and no trailing slash. `Ok(None)` for a name that denotes
/// the output directory itself (`./`). `Err` says why the name is refused.
pub(crate) fn normalize(name: &str) -> Result<Option<String>, &'static str> {
    if name.is_empty() {
        return Err("has an empty name");
    }
    if name.contains('\0') {
        return Err("has a NUL byte in its name");
    }
    if name.contains('\\') {
        return Err("has a backslash in its name");
    }
    if name.chars().any(char::is_control) {
        return Err("has a control character in its name");
    }
    if name.starts_with('/') {
        return Err("is an absolute path");
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("has a `..` component"),
            part => parts.push(part),
        }
    }
    let Some(last) = parts.last() else {
        return Ok(None);
    };
    if last.starts_with('.') && last.ends_with(".partial") {
        return Err(
            "has a name of the form .NAME.partial, which extraction uses for unfinished files",
        );
    }
    if parts.len() == 1 && *last == retrain_stage::FILE_NAME {
        return Err("is named manifest.json, which the stage writes itself");
    }
    Ok(Some(parts.join("/")))
}

/// The proper ancestors of a normalised path: `a/b/c` gives `a`, `a/b`.
pub(crate) fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(idx, _)| &path[..idx])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_are_normalised() {
        assert_eq!(normalize("a/b").unwrap().as_deref(), Some("a/b"));
        assert_eq!(normalize("./a//b/").unwrap().as_deref(), Some("a/b"));
        assert_eq!(
            normalize("cifar-10-batches-py/").unwrap().as_deref(),
            Some("cifar-10-batches-py")
        );
        assert_eq!(
            normalize("a/.hidden").unwrap().as_deref(),
            Some("a/.hidden")
        );
        assert_eq!(
            normalize("file.txt~").unwrap().as_deref(),
            Some("file.txt~")
        );
        assert_eq!(normalize("./").unwrap(), None);
        assert_eq!(normalize(".").unwrap(), None);
        assert_eq!(
            normalize("sub/manifest.json").unwrap().as_deref(),
            Some("sub/manifest.json")
        );
    }

    #[test]
    fn unsafe_names_are_refused() {
        for (name, reason) in [
            ("", "has an empty name"),
            ("../x", "has a `..` component"),
            ("a/../../x", "has a `..` component"),
            ("a/..", "has a `..` component"),
            ("/abs/x", "is an absolute path"),
            ("/", "is an absolute path"),
            ("a\\..\\x", "has a backslash in its name"),
            ("a\nb", "has a control character in its name"),
            ("a\0b", "has a NUL byte in its name"),
            (
                "manifest.json",
                "is named manifest.json, which the stage writes itself",
            ),
        ] {
            assert_eq!(normalize(name), Err(reason), "{name:?}");
        }
        assert!(normalize("d/.data_batch_1.partial").is_err());
    }

    #[test]
    fn ancestors_are_listed_outermost_first() {
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(ancestors("a").count(), 0);
    }
}
