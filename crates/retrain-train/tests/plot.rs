//! Loss curves and confusion matrices: valid PNGs of the right size, the same bytes for the same
//! input, pixels where the data says, and no panics on awkward input.

use std::fs;
use std::path::Path;

use image::RgbImage;
use retrain_train::plot::{self, Error};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The first series colour (matplotlib's tab10 blue) and the darkest heatmap colour (share 1).
const BLUE: [u8; 3] = [31, 119, 180];
const DARKEST: [u8; 3] = [8, 48, 107];

fn decode(path: &Path) -> Result<RgbImage> {
    let bytes = fs::read(path)?;
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    Ok(image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)?.to_rgb8())
}

fn pixels_of(img: &RgbImage, colour: [u8; 3]) -> Vec<(u32, u32)> {
    img.enumerate_pixels()
        .filter(|(_, _, p)| p.0 == colour)
        .map(|(x, y, _)| (x, y))
        .collect()
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("class_{i}")).collect()
}

fn diagonal(n: usize, count: u64) -> Vec<Vec<u64>> {
    (0..n)
        .map(|r| (0..n).map(|c| if r == c { count } else { 0 }).collect())
        .collect()
}

fn falling() -> Vec<(u64, f32)> {
    (0..=100)
        .map(|i| (i * 10, 10.0 - i as f32 / 10.0))
        .collect()
}

#[test]
fn loss_curve_is_a_png_of_the_requested_size() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let loss = falling();
    let smooth: Vec<(u64, f32)> = loss.iter().map(|&(s, v)| (s, v * 0.9)).collect();
    for (width, height) in [(800, 500), (640, 480), (200, 200), (1920, 300)] {
        let path = dir.path().join(format!("loss-{width}x{height}.png"));
        plot::loss_curve(
            &path,
            "train loss",
            &[("loss", &loss), ("smoothed", &smooth)],
            width,
            height,
        )?;
        let img = decode(&path)?;
        assert_eq!(img.dimensions(), (width, height));
    }
    // Only the pictures: no temporary files left beside them.
    let mut listing: Vec<String> = fs::read_dir(dir.path())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    listing.sort();
    assert_eq!(
        listing,
        [
            "loss-1920x300.png",
            "loss-200x200.png",
            "loss-640x480.png",
            "loss-800x500.png"
        ]
    );
    Ok(())
}

#[test]
fn loss_curve_bytes_are_deterministic() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let loss = falling();
    let (a, b, c) = (
        dir.path().join("a.png"),
        dir.path().join("b.png"),
        dir.path().join("c.png"),
    );
    plot::loss_curve(&a, "loss", &[("loss", &loss)], 640, 400)?;
    plot::loss_curve(&b, "loss", &[("loss", &loss)], 640, 400)?;
    assert_eq!(fs::read(&a)?, fs::read(&b)?);
    // Overwriting gives the same bytes too; other data gives other bytes.
    plot::loss_curve(&a, "loss", &[("loss", &loss)], 640, 400)?;
    assert_eq!(fs::read(&a)?, fs::read(&b)?);
    plot::loss_curve(&c, "loss", &[("loss", &loss[..50])], 640, 400)?;
    assert_ne!(fs::read(&a)?, fs::read(&c)?);
    Ok(())
}

#[test]
fn a_falling_line_runs_from_top_left_to_bottom_right() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("loss.png");
    // Unnamed, so no legend swatch adds blue pixels.
    plot::loss_curve(&path, "", &[("", &falling())], 600, 600)?;
    let img = decode(&path)?;
    let blue = pixels_of(&img, BLUE);
    assert!(blue.len() > 500, "{} line pixels", blue.len());
    // Around the centre of the line's bounding box (allowing for its width), it keeps to the
    // top-left and bottom-right quarters.
    let (x0, x1) = (
        blue.iter().map(|p| p.0).min(),
        blue.iter().map(|p| p.0).max(),
    );
    let (y0, y1) = (
        blue.iter().map(|p| p.1).min(),
        blue.iter().map(|p| p.1).max(),
    );
    let (mid_x, mid_y) = (
        (x0.unwrap() + x1.unwrap()) / 2,
        (y0.unwrap() + y1.unwrap()) / 2,
    );
    assert!(x1.unwrap() - x0.unwrap() > 400 && y1.unwrap() - y0.unwrap() > 400);
    let quadrant = |right: bool, below: bool| {
        blue.iter()
            .filter(|&&(x, y)| x.abs_diff(mid_x) > 4 && y.abs_diff(mid_y) > 4)
            .filter(|&&(x, y)| (x > mid_x) == right && (y > mid_y) == below)
            .count()
    };
    assert!(quadrant(false, false) > 100, "top left");
    assert!(quadrant(true, true) > 100, "bottom right");
    assert_eq!(quadrant(true, false), 0, "top right");
    assert_eq!(quadrant(false, true), 0, "bottom left");
    // The line falls: the higher a pixel, the further left.
    let top = blue.iter().min_by_key(|p| (p.1, p.0)).unwrap();
    let bottom = blue.iter().max_by_key(|p| (p.1, p.0)).unwrap();
    assert!(top.0 < bottom.0, "{top:?} {bottom:?}");
    Ok(())
}

#[test]
fn non_finite_values_are_skipped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let clean = falling();
    let mut dirty = clean.clone();
    dirty.push((1010, f32::NAN));
    dirty.push((5000, f32::INFINITY));
    dirty.push((6000, f32::NEG_INFINITY));
    dirty.insert(0, (0, f32::NAN));
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    plot::loss_curve(&a, "loss", &[("loss", &clean)], 640, 400)?;
    plot::loss_curve(&b, "loss", &[("loss", &dirty)], 640, 400)?;
    // The skipped points change neither the axes nor the line.
    assert_eq!(decode(&a)?, decode(&b)?);
    Ok(())
}

#[test]
fn awkward_series_do_not_panic() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let empty: Vec<(u64, f32)> = Vec::new();
    let one = vec![(7u64, 0.5f32)];
    let one_at_zero = vec![(0u64, 0.0f32)];
    let one_at_the_end = vec![(u64::MAX, 1.0f32)];
    let nans = vec![(0u64, f32::NAN), (1, f32::NAN)];
    let constant: Vec<(u64, f32)> = (0..50).map(|i| (i, 2.5)).collect();
    let huge = vec![(0u64, f32::MAX), (1, -f32::MAX), (u64::MAX, 0.0)];
    let tiny = vec![(0u64, 1e-30f32), (1, 2e-30), (2, 1.5e-30)];
    let gapped = vec![
        (0u64, 1.0f32),
        (1, f32::NAN),
        (2, 0.5),
        (3, f32::NAN),
        (4, 0.25),
        (5, 0.2),
    ];
    let unsorted = vec![(10u64, 1.0f32), (0, 2.0), (5, 3.0), (5, -1.0)];
    let negative: Vec<(u64, f32)> = (0..20).map(|i| (i, -(i as f32) * 1e6)).collect();
    let many: Vec<(u64, f32)> = (0..200_000)
        .map(|i| (i, ((i % 97) as f32).sqrt()))
        .collect();
    type Series<'a> = Vec<(&'a str, &'a [(u64, f32)])>;
    let cases: Vec<(&str, Series)> = vec![
        ("no-series", vec![]),
        ("empty", vec![("loss", &empty)]),
        ("one", vec![("loss", &one)]),
        (
            "one-at-zero",
            vec![("loss", &one_at_zero), ("smoothed", &empty)],
        ),
        ("one-at-the-end", vec![("loss", &one_at_the_end)]),
        ("nans", vec![("loss", &nans)]),
        ("constant", vec![("loss", &constant)]),
        ("huge", vec![("loss", &huge)]),
        ("tiny", vec![("loss", &tiny)]),
        ("gapped", vec![("loss", &gapped)]),
        ("unsorted", vec![("", &unsorted)]),
        ("negative", vec![("loss", &negative)]),
        ("many", vec![("loss", &many)]),
        (
            "ten-series",
            (0..10)
                .map(|_| ("a long series name that will not fit", &one[..]))
                .collect(),
        ),
    ];
    for (name, series) in &cases {
        let path = dir.path().join(format!("{name}.png"));
        let title = format!(
            "{name}: ünïcödé and a title far too long to fit {}",
            "x".repeat(300)
        );
        plot::loss_curve(&path, &title, series, 400, 300)?;
        assert_eq!(decode(&path)?.dimensions(), (400, 300), "{name}");
    }
    // A single point is drawn (as a dot) even without a line.
    for name in ["one", "one-at-the-end"] {
        let img = decode(&dir.path().join(format!("{name}.png")))?;
        assert!(pixels_of(&img, BLUE).len() >= 9 + 3 * 22, "{name}");
    }
    Ok(())
}

#[test]
fn loss_curve_rejects_unusable_sizes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("loss.png");
    for (width, height) in [(0, 0), (10, 500), (800, 100), (100_000, 500)] {
        let err =
            plot::loss_curve(&path, "loss", &[("loss", &falling())], width, height).unwrap_err();
        assert!(matches!(err, Error::Size { .. }), "{err:?}");
    }
    assert!(!path.exists());
    Ok(())
}

fn brightness(p: &image::Rgb<u8>) -> u32 {
    p.0.iter().map(|&c| u32::from(c)).sum()
}

/// The top-left darkest pixel (x0, y0) and the length of the darkest run right of it.
fn first_dark_cell(img: &RgbImage) -> (u32, u32, u32) {
    let dark = pixels_of(img, DARKEST);
    let y0 = dark.iter().map(|p| p.1).min().expect("some darkest pixels");
    let x0 = dark.iter().map(|p| p.0).min().expect("some darkest pixels");
    let run = (x0..img.width())
        .take_while(|&x| img.get_pixel(x, y0 + 2).0 == DARKEST)
        .count() as u32;
    (x0, y0, run)
}

/// For a matrix whose diagonal cells are all darkest: the top-left darkest pixel of cell (0, 0)
/// and the cell pitch, measured as the distance to the next diagonal cell.
fn diagonal_grid(img: &RgbImage) -> (u32, u32, u32) {
    let (x0, y0, run) = first_dark_cell(img);
    // (The colour bar's top rows are darkest too, but above the second cell.)
    let next_x = pixels_of(img, DARKEST)
        .into_iter()
        .filter(|&(x, y)| x >= x0 + run && y >= y0 + run)
        .map(|p| p.0)
        .min()
        .expect("a second diagonal cell");
    (x0, y0, next_x - x0)
}

#[test]
fn a_diagonal_matrix_has_dark_diagonal_cells() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cm.png");
    let n = 10;
    plot::confusion_matrix(&path, "confusion", &names(n), &diagonal(n, 100))?;
    let img = decode(&path)?;
    let (x0, y0, cell) = diagonal_grid(&img);
    assert!(cell >= 20, "cell {cell}");
    let side = cell * n as u32;
    // Every row is all on the diagonal: the darkest pixels inside the matrix lie in diagonal cells.
    for (x, y) in pixels_of(&img, DARKEST) {
        if x < x0 + side {
            assert_eq!(
                (x - x0) / cell,
                (y - y0) / cell,
                "dark pixel ({x}, {y}) off the diagonal"
            );
        }
    }
    for i in 0..n as u32 {
        // Near the left edge of diagonal cell i (clear of its count) it is darkest; in the next
        // cell of the row it is light.
        let y = y0 + i * cell + cell / 2;
        let on = img.get_pixel(x0 + i * cell + 2, y);
        let off = img.get_pixel(x0 + ((i + 1) % n as u32) * cell + 2, y);
        assert_eq!(on.0, DARKEST, "cell {i}");
        assert!(
            brightness(on) + 300 < brightness(off),
            "cell {i}: {on:?} vs {off:?}"
        );
    }
    Ok(())
}

#[test]
fn colours_are_normalised_per_row() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cm.png");
    // Row 0 is all correct with 1 example; row 1 is half right with 1000 each way: (0, 0) is darker
    // than (1, 1) even though its count is smaller; (1, 0) and (1, 1) look alike.
    let counts = vec![vec![1, 0], vec![1000, 1000]];
    plot::confusion_matrix(&path, "", &names(2), &counts)?;
    let img = decode(&path)?;
    let (x0, y0, run) = first_dark_cell(&img);
    // Cells are about run (+ a separator) apart; sample 3 pixels inside each cell's corner.
    let pitch = run + 2;
    let at = |row: u32, col: u32| *img.get_pixel(x0 + col * pitch + 3, y0 + row * pitch + 3);
    assert_eq!(at(0, 0).0, DARKEST);
    assert_eq!(at(1, 0), at(1, 1));
    assert!(brightness(&at(0, 0)) < brightness(&at(1, 1)));
    assert!(brightness(&at(1, 1)) < brightness(&at(0, 1)));
    Ok(())
}

#[test]
fn confusion_matrix_bytes_are_deterministic() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let counts: Vec<Vec<u64>> = (0..10)
        .map(|r| (0..10).map(|c| ((r * 31 + c * 17) % 50) as u64).collect())
        .collect();
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    plot::confusion_matrix(&a, "validation", &names(10), &counts)?;
    plot::confusion_matrix(&b, "validation", &names(10), &counts)?;
    assert_eq!(fs::read(&a)?, fs::read(&b)?);
    let img = decode(&a)?;
    assert!(
        img.width() >= 480 && img.height() >= 480,
        "{:?}",
        img.dimensions()
    );
    Ok(())
}

#[test]
fn a_hundred_classes_fit_without_cell_numbers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cm100.png");
    let names: Vec<String> = (0..100)
        .map(|i| format!("aquarium_fish_number_{i}"))
        .collect();
    plot::confusion_matrix(&path, "CIFAR-100", &names, &diagonal(100, 100))?;
    let img = decode(&path)?;
    let (w, h) = img.dimensions();
    assert!(
        (1000..=1600).contains(&w) && (1000..=1600).contains(&h),
        "{w}x{h}"
    );
    // Cells too small for numbers: every diagonal cell is solid dark.
    let (x0, y0, cell) = diagonal_grid(&img);
    assert!(cell < 20, "cell {cell}");
    for i in 0..100 {
        for dy in 0..cell {
            for dx in 0..cell {
                let p = img.get_pixel(x0 + i * cell + dx, y0 + i * cell + dy);
                assert_eq!(p.0, DARKEST, "cell {i} ({dx}, {dy})");
            }
        }
    }
    Ok(())
}

#[test]
fn awkward_matrices_do_not_panic() -> Result<()> {
    let dir = tempfile::tempdir()?;
    type Case = (&'static str, Vec<String>, Vec<Vec<u64>>);
    let cases: Vec<Case> = vec![
        ("one", names(1), vec![vec![5]]),
        ("zeros", names(3), vec![vec![0; 3]; 3]),
        (
            "huge",
            names(2),
            vec![vec![u64::MAX, u64::MAX], vec![0, u64::MAX]],
        ),
        (
            "odd-names",
            vec![
                String::new(),
                "ünïcödé".to_owned(),
                "a name much too long to fit on either axis of the picture".to_owned(),
            ],
            vec![vec![1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]],
        ),
        ("twenty", names(20), diagonal(20, 12_345)),
        ("forty", names(40), diagonal(40, 7)),
        ("five-hundred", names(500), diagonal(500, 1)),
    ];
    for (name, class_names, counts) in cases {
        let path = dir.path().join(format!("{name}.png"));
        plot::confusion_matrix(&path, &"t".repeat(500), &class_names, &counts)?;
        let img = decode(&path)?;
        assert!(img.width() >= 100 && img.height() >= 100, "{name}");
    }
    Ok(())
}

#[test]
fn confusion_matrix_rejects_bad_shapes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cm.png");
    let err = plot::confusion_matrix(&path, "", &[], &[]).unwrap_err();
    assert!(matches!(err, Error::NoClasses { .. }), "{err:?}");
    let err = plot::confusion_matrix(&path, "", &names(2), &diagonal(3, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ClassNames {
                n_names: 2,
                n_rows: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let ragged = vec![vec![1, 2, 3], vec![1, 2], vec![1, 2, 3]];
    let err = plot::confusion_matrix(&path, "", &names(3), &ragged).unwrap_err();
    assert!(
        matches!(
            err,
            Error::RowLength {
                row: 1,
                got: 2,
                expected: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("row 1"), "{err}");
    let err = plot::confusion_matrix(&path, "", &names(1001), &vec![Vec::new(); 1001]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyClasses {
                n_classes: 1001,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!path.exists());
    Ok(())
}
