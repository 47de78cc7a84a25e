//! File and folder names from the pickles, which are untrusted, made safe; and the collision rule
//! that keeps every image when two would get the same path.
//!
//! A name from a batch's `filenames` or from the meta file's class names is *sanitised*, never
//! refused: the image and its label are good data whatever its name says, and refusing would throw
//! away a whole dataset for one odd name. The rules, applied in this order:
//!
//! 1. every `/`, `\`, NUL and other control character (Unicode `Cc`: C0, DEL, C1) becomes `_`, so a
//!    name is always one path component and never breaks a line of `labels.txt`;
//! 2. every leading `.`, and every `.` next to another `.`, becomes `_`, so no name is hidden, `.`,
//!    `..` or holds `..`;
//! 3. an empty name becomes `unnamed`;
//! 4. a name longer than [`MAX_NAME_BYTES`] is cut there (at a character boundary), so that a
//!    collision suffix still fits a file system's 255-byte limit;
//! 5. a file name not ending in `.png` gets `.png` appended (class names are left as they are).
//!
//! Other characters, spaces and non-ASCII letters included, are kept. A sanitised file name that
//! differs from the original is reported; two classes whose names sanitise alike are an error.

use std::collections::BTreeMap;

/// Longest name kept before `.png` or a collision suffix is added, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// What a file or class name becomes on disk (see the module documentation).
fn sanitise(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    let mut name = String::with_capacity(raw.len());
    let mut leading = true;
    for (idx, &ch) in chars.iter().enumerate() {
        let unsafe_char = ch == '/' || ch == '\\' || ch.is_control();
        let dot = |i: usize| chars.get(i) == Some(&'.');
        let dots = ch == '.' && (leading || (idx > 0 && dot(idx - 1)) || dot(idx + 1));
        leading &= ch == '.';
        name.push(if unsafe_char || dots { '_' } else { ch });
    }
    if name.is_empty() {
        name.push_str("unnamed");
    }
    if name.len() > MAX_NAME_BYTES {
        let mut cut = MAX_NAME_BYTES;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

/// The file name an image is written under, before the collision rule: `raw` made safe, ending in
/// `.png`. Returns `raw` unchanged for every real CIFAR name.
pub fn sanitise_file_name(raw: &str) -> String {
    let mut name = sanitise(raw);
    if !name.ends_with(".png") {
        name.push_str(".png");
    }
    name
}

/// The folder a class's images go into, and its line in `labels.txt`: `raw` made safe.
pub fn sanitise_class_name(raw: &str) -> String {
    sanitise(raw)
}

/// The name given to the image at `row` of batch `batch` when `name` is taken in its folder:
/// `<name without .png>__<batch>_r<row, 4 digits or more>.png`, e.g. `cat_s_000004__data_batch_3_r0412.png`.
pub fn collision_name(name: &str, batch: &str, row: usize) -> String {
    let stem = name.strip_suffix(".png").unwrap_or(name);
    format!("{stem}__{batch}_r{row:04}.png")
}

/// Where an image comes from: batch index (in batch order) and row.
pub(crate) type Origin = (u32, u32);

/// Assigns unique file names within each class folder of one split, in the order images are
/// offered: the first image to ask for a name keeps it; a later one gets [`collision_name`]; should
/// that be taken too (only crafted names can do that), `_2`, `_3`, … is added before `.png`.
#[derive(Debug)]
pub(crate) struct Namer {
    /// Per class: name → the image holding it.
    taken: Vec<BTreeMap<Box<str>, Origin>>,
}

/// The outcome of [`Namer::assign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Assigned {
    pub(crate) name: String,
    /// The image that holds the name asked for, when this one had to take another.
    pub(crate) holder: Option<Origin>,
}

impl Namer {
    pub(crate) fn new(n_classes: usize) -> Self {
        Self {
            taken: vec![BTreeMap::new(); n_classes],
        }
    }

    /// A unique name in `class`'s folder for the image at `origin` (batch `batch`), which asks for
    /// `wanted` (already sanitised).
    pub(crate) fn assign(
        &mut self,
        class: usize,
        wanted: &str,
        batch: &str,
        origin: Origin,
    ) -> Assigned {
        let taken = &mut self.taken[class];
        let Some(&holder) = taken.get(wanted) else {
            taken.insert(wanted.into(), origin);
            return Assigned {
                name: wanted.to_owned(),
                holder: None,
            };
        };
        let base = collision_name(wanted, batch, origin.1 as usize);
        let mut name = base.clone();
        let mut k = 2;
        while taken.contains_key(name.as_str()) {
            name = format!("{}_{k}.png", base.strip_suffix(".png").unwrap_or(&base));
            k += 1;
        }
        taken.insert(name.as_str().into(), origin);
        Assigned {
            name,
            holder: Some(holder),
        }
    }

    /// Every assigned name of `class`, in byte order, with the image holding it.
    pub(crate) fn names(&self, class: usize) -> impl Iterator<Item = (&str, Origin)> {
        self.taken[class]
            .iter()
            .map(|(name, &origin)| (&**name, origin))
    }

    /// How many names `class` has.
    pub(crate) fn len(&self, class: usize) -> usize {
        self.taken[class].len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_names_are_kept() {
        for name in [
            "leptodactylus_pentadactylus_s_000004.png",
            "bos_taurus_s_000507.png",
            "a.b.c.png",
            "caf\u{e9} au lait.png",
        ] {
            assert_eq!(sanitise_file_name(name), name);
        }
        assert_eq!(
            sanitise_class_name("large_man-made_outdoor_things"),
            "large_man-made_outdoor_things"
        );
    }

    #[test]
    fn hostile_names_become_one_safe_component() {
        let cases = [
            ("../../etc/passwd", "______etc_passwd.png"),
            ("a..b...c.png", "a__b___c.png"),
            ("..", "__.png"),
            (".", "_.png"),
            (".hidden.png", "_hidden.png"),
            ("...png", "___png.png"),
            ("a/b\\c.png", "a_b_c.png"),
            ("nul\0byte.png", "nul_byte.png"),
            ("line\nbreak\r.png", "line_break_.png"),
            ("del\u{7f}c1\u{85}.png", "del_c1_.png"),
            ("", "unnamed.png"),
            ("no_extension", "no_extension.png"),
            ("UPPER.PNG", "UPPER.PNG.png"),
            (".png", "_png.png"),
        ];
        for (raw, want) in cases {
            assert_eq!(sanitise_file_name(raw), want, "{raw:?}");
        }
        assert_eq!(sanitise_class_name(""), "unnamed");
        assert_eq!(sanitise_class_name("../x"), "___x");
        assert_eq!(sanitise_class_name("a\nb"), "a_b");
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let long = "é".repeat(150); // 300 bytes
        let name = sanitise_file_name(&long);
        assert_eq!(name.len(), MAX_NAME_BYTES + ".png".len());
        assert!(name.ends_with(".png"));
        let suffixed = collision_name(&name, "data_batch_5", 49_999);
        assert!(suffixed.len() < 255, "{}", suffixed.len());
        let odd = format!("a{}", "é".repeat(150)); // the cut falls inside a character
        assert_eq!(
            sanitise_file_name(&odd).len(),
            MAX_NAME_BYTES - 1 + ".png".len()
        );
    }

    #[test]
    fn later_images_get_a_suffix_from_batch_and_row() {
        let mut namer = Namer::new(2);
        let first = namer.assign(1, "cat.png", "data_batch_1", (0, 7));
        assert_eq!(
            first,
            Assigned {
                name: "cat.png".into(),
                holder: None
            }
        );
        let other_class = namer.assign(0, "cat.png", "data_batch_1", (0, 8));
        assert_eq!(other_class.holder, None);
        let second = namer.assign(1, "cat.png", "data_batch_3", (2, 412));
        assert_eq!(second.name, "cat__data_batch_3_r0412.png");
        assert_eq!(second.holder, Some((0, 7)));
    }

    #[test]
    fn crafted_names_cannot_take_a_suffixed_name_twice() {
        let mut namer = Namer::new(1);
        namer.assign(0, "x__test_batch_r0001.png", "test_batch", (0, 0));
        namer.assign(0, "x.png", "test_batch", (0, 2));
        let third = namer.assign(0, "x.png", "test_batch", (0, 1));
        assert_eq!(third.name, "x__test_batch_r0001_2.png");
        let fourth = namer.assign(0, "x__test_batch_r0001_2.png", "test_batch", (0, 3));
        assert_eq!(fourth.name, "x__test_batch_r0001_2__test_batch_r0003.png");
    }
}
