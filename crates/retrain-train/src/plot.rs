//! PNG pictures of training: loss curves and confusion matrices, drawn into an RGB buffer with an
//! embedded bitmap font (no font files, no system libraries) and written atomically. The same input
//! gives the same bytes.

use std::io;
use std::path::{Path, PathBuf};

/// What went wrong drawing or writing a picture.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: picture size {width}x{height} outside {MIN_SIZE}..={MAX_SIZE} pixels a side", path.display())]
    Size {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error("{}: confusion matrix with no classes", path.display())]
    NoClasses { path: PathBuf },
    #[error("{}: confusion matrix with {n_classes} classes, at most {MAX_CLASSES} supported", path.display())]
    TooManyClasses { path: PathBuf, n_classes: usize },
    #[error("{}: {n_names} class names but {n_rows} rows of counts", path.display())]
    ClassNames {
        path: PathBuf,
        n_names: usize,
        n_rows: usize,
    },
    #[error("{}: confusion matrix row {row} has {got} counts, expected {expected}", path.display())]
    RowLength {
        path: PathBuf,
        row: usize,
        got: usize,
        expected: usize,
    },
    #[error("encoding {}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: png::EncodingError,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Smallest and largest loss-curve side, in pixels.
pub const MIN_SIZE: u32 = 200;
pub const MAX_SIZE: u32 = 8192;
/// Most classes a confusion matrix draws.
pub const MAX_CLASSES: usize = 1000;

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const TEXT: Rgb = [30, 30, 30];
const GRID: Rgb = [225, 225, 225];
const FRAME: Rgb = [120, 120, 120];
/// Series colours (matplotlib's tab10).
const PALETTE: [Rgb; 6] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
];

/// A line chart of each series' values against step: axes with tick labels, a light grid, the title
/// above, a legend (top right) naming the series, `step` under the x axis. Non-finite values are
/// skipped (the line breaks there); an empty chart says "no data". Written atomically.
pub fn loss_curve(
    path: &Path,
    title: &str,
    series: &[(&str, &[(u64, f32)])],
    width: u32,
    height: u32,
) -> Result<(), Error> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&width) || !(MIN_SIZE..=MAX_SIZE).contains(&height) {
        return Err(Error::Size {
            path: path.to_owned(),
            width,
            height,
        });
    }
    let mut canvas = Canvas::new(width, height);
    let (w, h) = (i64::from(width), i64::from(height));

    // Data ranges over finite values.
    let finite = || {
        series
            .iter()
            .flat_map(|(_, points)| points.iter())
            .filter(|(_, value)| value.is_finite())
    };
    let has_data = finite().next().is_some();
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(step, value) in finite() {
        x_lo = x_lo.min(step as f64);
        x_hi = x_hi.max(step as f64);
        y_lo = y_lo.min(f64::from(value));
        y_hi = y_hi.max(f64::from(value));
    }
    if !has_data {
        (x_lo, x_hi, y_lo, y_hi) = (0.0, 1.0, 0.0, 1.0);
    }
    if x_hi <= x_lo {
        // A single step: widen by at least one step, and enough to show at large steps.
        let pad = (x_lo * 1e-6).max(1.0);
        x_lo = (x_lo - pad).max(0.0);
        x_hi = x_lo + 2.0 * pad;
    }
    if y_hi <= y_lo {
        let pad = if y_lo == 0.0 { 1.0 } else { y_lo.abs() * 0.1 };
        y_lo -= pad;
        y_hi += pad;
    }

    // Layout: title on top, y tick labels left, x tick labels and "step" below.
    const S: u32 = 2;
    let title_y = 10;
    let top = title_y + text_height(S) + 14;
    let bottom_margin = 6 + text_height(S) + 8 + text_height(S) + 10;
    let plot_bottom = h - bottom_margin;
    let y_ticks = Ticks::new(
        y_lo,
        y_hi,
        ((plot_bottom - top) / 40).clamp(2, 10) as usize,
        false,
    );
    let y_labels: Vec<String> = y_ticks.values.iter().map(|&v| y_ticks.label(v)).collect();
    let y_label_w = y_labels.iter().map(|l| text_width(l, S)).max().unwrap_or(0);
    let left = 10 + y_label_w + 10;
    let x_label_guess = text_width(&format!("{}", x_hi as u64), S);
    let right = w - 10 - x_label_guess / 2;
    let plot_w = right - left;
    let x_ticks = Ticks::new(
        x_lo,
        x_hi,
        (plot_w / (x_label_guess + 30)).clamp(1, 10) as usize,
        true,
    );
    let plot = Rect {
        x: left,
        y: top,
        w: plot_w.max(1),
        h: (plot_bottom - top).max(1),
    };
    let to_px = |step: f64, value: f64| -> (i64, i64) {
        let fx = (step - x_ticks.lo) / (x_ticks.hi - x_ticks.lo);
        let fy = (value - y_ticks.lo) / (y_ticks.hi - y_ticks.lo);
        (
            plot.x + (fx * (plot.w - 1) as f64).round() as i64,
            plot.y + plot.h - 1 - (fy * (plot.h - 1) as f64).round() as i64,
        )
    };

    // Grid and tick labels.
    for (&value, label) in y_ticks.values.iter().zip(&y_labels) {
        let (_, y) = to_px(x_ticks.lo, value);
        canvas.fill(Rect::new(plot.x, y, plot.w, 1), GRID);
        canvas.fill(Rect::new(plot.x - 5, y, 5, 1), FRAME);
        let lw = text_width(label, S);
        canvas.text(plot.x - 8 - lw, y - text_height(S) / 2 + 1, label, S, TEXT);
    }
    for &value in &x_ticks.values {
        let (x, _) = to_px(value, y_ticks.lo);
        canvas.fill(Rect::new(x, plot.y, 1, plot.h), GRID);
        canvas.fill(Rect::new(x, plot.y + plot.h, 1, 5), FRAME);
        let label = x_ticks.label(value);
        let lw = text_width(&label, S);
        canvas.text(x - lw / 2, plot.y + plot.h + 8, &label, S, TEXT);
    }
    canvas.frame(plot, FRAME);
    let axis = "step";
    canvas.text(
        plot.x + plot.w / 2 - text_width(axis, S) / 2,
        h - 10 - text_height(S),
        axis,
        S,
        TEXT,
    );
    let title = fit(title, w - 20, S);
    canvas.text(w / 2 - text_width(&title, S) / 2, title_y, &title, S, BLACK);

    // Lines, broken at non-finite values; dots where points are few or isolated. Points on the
    // frame keep their whole dot.
    let clip = Rect::new(plot.x - 3, plot.y - 3, plot.w + 6, plot.h + 6);
    for (index, (_, points)) in series.iter().enumerate() {
        let colour = PALETTE[index % PALETTE.len()];
        let n_finite = points.iter().filter(|(_, v)| v.is_finite()).count();
        let mut prev: Option<(i64, i64)> = None;
        for (i, &(step, value)) in points.iter().enumerate() {
            if !value.is_finite() {
                prev = None;
                continue;
            }
            let here = to_px(step as f64, f64::from(value));
            if let Some(from) = prev {
                canvas.line(from, here, colour, clip);
            }
            let next_finite = points.get(i + 1).is_some_and(|(_, v)| v.is_finite());
            if n_finite <= 60 || (prev.is_none() && !next_finite) {
                canvas.fill_clipped(Rect::new(here.0 - 2, here.1 - 2, 5, 5), colour, clip);
            }
            prev = Some(here);
        }
    }
    if !has_data {
        let msg = "no data";
        canvas.text(
            plot.x + plot.w / 2 - text_width(msg, S) / 2,
            plot.y + plot.h / 2 - text_height(S) / 2,
            msg,
            S,
            FRAME,
        );
    }

    // Legend, top right inside the plot.
    let named: Vec<(usize, &str)> = series
        .iter()
        .enumerate()
        .filter(|(_, (name, _))| !name.is_empty())
        .map(|(i, (name, _))| (i, *name))
        .collect();
    if !named.is_empty() {
        let swatch = 22;
        let names: Vec<String> = named
            .iter()
            .map(|(_, name)| fit(name, plot.w / 2 - swatch - 20, S))
            .collect();
        let row_h = text_height(S) + 6;
        let box_w = swatch + 8 + names.iter().map(|n| text_width(n, S)).max().unwrap_or(0) + 16;
        let box_h = row_h * names.len() as i64 + 8;
        let legend = Rect::new(plot.x + plot.w - box_w - 8, plot.y + 8, box_w, box_h);
        canvas.fill(legend, WHITE);
        canvas.frame(legend, FRAME);
        for (row, ((index, _), name)) in named.iter().zip(&names).enumerate() {
            let y = legend.y + 6 + row_h * row as i64;
            let colour = PALETTE[index % PALETTE.len()];
            let mid = y + text_height(S) / 2 - 1;
            canvas.fill(Rect::new(legend.x + 8, mid - 1, swatch, 3), colour);
            canvas.text(legend.x + 8 + swatch + 8, y, name, S, TEXT);
        }
    }

    canvas.write(path)
}

/// A confusion-matrix heatmap: rows are true classes, columns predicted ones, each cell coloured by
/// its share of the row (white 0 → dark blue 1, with a colour bar), counts written in the cells
/// where they fit, class names on both axes (truncated; with many classes smaller, or only every
/// k-th), the title, and a line with the number of examples and the accuracy. The picture's size
/// follows the number of classes (about 1200 pixels a side for 100). Written atomically.
pub fn confusion_matrix(
    path: &Path,
    title: &str,
    class_names: &[String],
    counts: &[Vec<u64>],
) -> Result<(), Error> {
    let n = counts.len();
    if n == 0 {
        return Err(Error::NoClasses {
            path: path.to_owned(),
        });
    }
    if n > MAX_CLASSES {
        return Err(Error::TooManyClasses {
            path: path.to_owned(),
            n_classes: n,
        });
    }
    if class_names.len() != n {
        return Err(Error::ClassNames {
            path: path.to_owned(),
            n_names: class_names.len(),
            n_rows: n,
        });
    }
    if let Some((row, got)) = counts
        .iter()
        .enumerate()
        .find_map(|(row, c)| (c.len() != n).then_some((row, c.len())))
    {
        return Err(Error::RowLength {
            path: path.to_owned(),
            row,
            got,
            expected: n,
        });
    }

    let cell: i64 = match n {
        0..=12 => 56,
        13..=25 => 36,
        26..=50 => 20,
        _ => (1000 / n as i64).max(1),
    };
    let (label_scale, label_every) = if cell >= 18 {
        (2, 1)
    } else if cell >= 9 {
        (1, 1)
    } else {
        (1, (9 + cell - 1) / cell)
    };
    let labels: Vec<String> = class_names
        .iter()
        .map(|name| fit(name, text_width(&"m".repeat(14), label_scale), label_scale))
        .collect();
    let label_w = labels
        .iter()
        .map(|l| text_width(l, label_scale))
        .max()
        .unwrap_or(0);

    const S: u32 = 2;
    let matrix_side = cell * n as i64;
    let true_axis_x = 10;
    let matrix_x = true_axis_x + text_height(S) + 10 + label_w + 8;
    let title_y = 10;
    let subtitle_y = title_y + text_height(S) + 6;
    let matrix_y = subtitle_y + text_height(S) + 16;
    let bar_x = matrix_x + matrix_side + 16;
    let bar_w = 16;
    let content_w = bar_x + bar_w + 6 + text_width("100%", S) + 10;
    let width = content_w.max(480);
    let pred_axis_y = matrix_y + matrix_side + 8 + label_w + 10;
    let height = pred_axis_y + text_height(S) + 10;
    let mut canvas = Canvas::new(width as u32, height as u32);

    let row_totals: Vec<u128> = counts
        .iter()
        .map(|row| row.iter().map(|&c| u128::from(c)).sum())
        .collect();
    let total: u128 = row_totals.iter().sum();
    let correct: u128 = (0..n).map(|i| u128::from(counts[i][i])).sum();

    // Cells.
    let separators = cell >= 12;
    for (row, counts_row) in counts.iter().enumerate() {
        for (col, &count) in counts_row.iter().enumerate() {
            let share = if row_totals[row] == 0 {
                0.0
            } else {
                count as f64 / row_totals[row] as f64
            };
            let rect = Rect::new(
                matrix_x + col as i64 * cell,
                matrix_y + row as i64 * cell,
                cell,
                cell,
            );
            canvas.fill(rect, blues(share));
            if separators {
                canvas.frame(rect, GRID);
            }
            let text = count.to_string();
            let scale = [2, 1].into_iter().find(|&s| {
                cell >= 20 && text_width(&text, s) <= cell - 6 && text_height(s) <= cell - 4
            });
            if let Some(scale) = scale {
                let colour = if share > 0.5 { WHITE } else { TEXT };
                canvas.text(
                    rect.x + (cell - text_width(&text, scale)) / 2,
                    rect.y + (cell - glyph_height(scale)) / 2,
                    &text,
                    scale,
                    colour,
                );
            }
        }
    }
    canvas.frame(
        Rect::new(matrix_x - 1, matrix_y - 1, matrix_side + 2, matrix_side + 2),
        FRAME,
    );

    // Class names: rows right-aligned on the left, columns upright underneath.
    for (index, label) in labels.iter().enumerate() {
        if index as i64 % label_every != 0 {
            continue;
        }
        let centre = index as i64 * cell + cell / 2;
        let lw = text_width(label, label_scale);
        canvas.text(
            matrix_x - 8 - lw,
            matrix_y + centre - glyph_height(label_scale) / 2,
            label,
            label_scale,
            TEXT,
        );
        canvas.text_up(
            matrix_x + centre - glyph_height(label_scale) / 2,
            matrix_y + matrix_side + 8 + lw - 1,
            label,
            label_scale,
            TEXT,
        );
    }
    let true_axis = "true class";
    canvas.text_up(
        true_axis_x,
        matrix_y + matrix_side / 2 + text_width(true_axis, S) / 2,
        true_axis,
        S,
        BLACK,
    );
    let pred_axis = "predicted class";
    canvas.text(
        matrix_x + matrix_side / 2 - text_width(pred_axis, S) / 2,
        pred_axis_y,
        pred_axis,
        S,
        BLACK,
    );

    // Colour bar: row share 100 % at the top, 0 % at the bottom.
    for y in 0..matrix_side {
        let share = 1.0 - y as f64 / (matrix_side - 1).max(1) as f64;
        canvas.fill(Rect::new(bar_x, matrix_y + y, bar_w, 1), blues(share));
    }
    canvas.frame(
        Rect::new(bar_x - 1, matrix_y - 1, bar_w + 2, matrix_side + 2),
        FRAME,
    );
    canvas.text(bar_x + bar_w + 6, matrix_y, "100%", S, TEXT);
    canvas.text(
        bar_x + bar_w + 6,
        matrix_y + matrix_side - text_height(S),
        "0%",
        S,
        TEXT,
    );

    let title = fit(title, width - 20, S);
    canvas.text(
        width / 2 - text_width(&title, S) / 2,
        title_y,
        &title,
        S,
        BLACK,
    );
    let subtitle = if total == 0 {
        "no examples".to_owned()
    } else {
        format!(
            "{total} examples, accuracy {:.2}%",
            correct as f64 / total as f64 * 100.0
        )
    };
    let subtitle = fit(&subtitle, width - 20, S);
    canvas.text(
        width / 2 - text_width(&subtitle, S) / 2,
        subtitle_y,
        &subtitle,
        S,
        TEXT,
    );

    canvas.write(path)
}

/// White → matplotlib "Blues" mid → dark blue, for a share in [0, 1].
fn blues(share: f64) -> Rgb {
    const STOPS: [Rgb; 3] = [[247, 251, 255], [107, 174, 214], [8, 48, 107]];
    let share = if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (from, to, t) = if share <= 0.5 {
        (STOPS[0], STOPS[1], share * 2.0)
    } else {
        (STOPS[1], STOPS[2], share * 2.0 - 1.0)
    };
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
    [
        mix(from[0], to[0]),
        mix(from[1], to[1]),
        mix(from[2], to[2]),
    ]
}

/// Evenly spaced "nice" tick values (1, 2 or 5 × 10^k apart) covering `lo..=hi`.
struct Ticks {
    lo: f64,
    hi: f64,
    step: f64,
    values: Vec<f64>,
    integer: bool,
}

impl Ticks {
    fn new(lo: f64, hi: f64, max_count: usize, integer: bool) -> Self {
        let rough = (hi - lo) / max_count.max(1) as f64;
        let magnitude = 10f64.powf(rough.log10().floor());
        let mut step = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * magnitude)
            .find(|&s| s >= rough)
            .unwrap_or(10.0 * magnitude);
        if integer {
            step = step.max(1.0).round();
        }
        let (t_lo, t_hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
        let usable = step.is_finite() && step > 0.0 && t_lo.is_finite() && t_hi > t_lo;
        if !usable {
            return Self {
                lo,
                hi,
                step: hi - lo,
                values: vec![lo, hi],
                integer,
            };
        }
        let n_steps = ((t_hi - t_lo) / step).round().clamp(1.0, 100.0) as usize;
        let values = (0..=n_steps)
            .map(|i| {
                let v = t_lo + i as f64 * step;
                if v.abs() < step * 1e-9 { 0.0 } else { v }
            })
            .collect();
        Self {
            lo: t_lo,
            hi: t_lo + n_steps as f64 * step,
            step,
            values,
            integer,
        }
    }

    fn label(&self, value: f64) -> String {
        if self.integer {
            return format!("{value:.0}");
        }
        let magnitude = value.abs().max(self.step.abs());
        if magnitude >= 1e6 || self.step < 1e-4 {
            if value == 0.0 {
                return "0".to_owned();
            }
            // As many mantissa digits as the step needs: 1.2e-5 a step of 2e-6 apart.
            let digits = value.abs().log10().floor() - self.step.log10().floor();
            let digits = digits.clamp(0.0, 6.0) as usize;
            return format!("{value:.digits$e}");
        }
        let decimals = (-(self.step.log10() + 1e-9).floor()).clamp(0.0, 6.0) as usize;
        format!("{value:.decimals$}")
    }
}

#[derive(Debug, Clone, Copy)]
struct Rect {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
}

impl Rect {
    fn new(x: i64, y: i64, w: i64, h: i64) -> Self {
        Self { x, y, w, h }
    }
}

/// An RGB picture; drawing outside it is clipped.
struct Canvas {
    width: i64,
    height: i64,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        Self {
            width: i64::from(width),
            height: i64::from(height),
            pixels: vec![255; width as usize * height as usize * 3],
        }
    }

    fn put(&mut self, x: i64, y: i64, colour: Rgb) {
        if (0..self.width).contains(&x) && (0..self.height).contains(&y) {
            let at = ((y * self.width + x) * 3) as usize;
            self.pixels[at..at + 3].copy_from_slice(&colour);
        }
    }

    fn fill(&mut self, rect: Rect, colour: Rgb) {
        let clip = Rect::new(0, 0, self.width, self.height);
        self.fill_clipped(rect, colour, clip);
    }

    fn fill_clipped(&mut self, rect: Rect, colour: Rgb, clip: Rect) {
        let x0 = rect.x.max(clip.x).max(0);
        let x1 = (rect.x + rect.w).min(clip.x + clip.w).min(self.width);
        let y0 = rect.y.max(clip.y).max(0);
        let y1 = (rect.y + rect.h).min(clip.y + clip.h).min(self.height);
        for y in y0..y1 {
            for x in x0..x1 {
                self.put(x, y, colour);
            }
        }
    }

    /// A one-pixel outline just inside `rect`.
    fn frame(&mut self, rect: Rect, colour: Rgb) {
        self.fill(Rect::new(rect.x, rect.y, rect.w, 1), colour);
        self.fill(Rect::new(rect.x, rect.y + rect.h - 1, rect.w, 1), colour);
        self.fill(Rect::new(rect.x, rect.y, 1, rect.h), colour);
        self.fill(Rect::new(rect.x + rect.w - 1, rect.y, 1, rect.h), colour);
    }

    /// A two-pixel-wide line (Bresenham), clipped to `clip`.
    fn line(&mut self, from: (i64, i64), to: (i64, i64), colour: Rgb, clip: Rect) {
        let (mut x, mut y) = from;
        let (dx, dy) = ((to.0 - x).abs(), -(to.1 - y).abs());
        let (sx, sy) = (if x < to.0 { 1 } else { -1 }, if y < to.1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.fill_clipped(Rect::new(x, y, 2, 2), colour, clip);
            if (x, y) == to {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Left-to-right text with its top-left corner at (x, y).
    fn text(&mut self, x: i64, y: i64, text: &str, scale: u32, colour: Rgb) {
        let s = i64::from(scale);
        for (index, ch) in text.chars().enumerate() {
            let origin = x + index as i64 * ADVANCE * s;
            for (col, bits) in glyph(ch).iter().enumerate() {
                for row in 0..8 {
                    if bits >> row & 1 == 1 {
                        let rect = Rect::new(origin + col as i64 * s, y + row * s, s, s);
                        self.fill(rect, colour);
                    }
                }
            }
        }
    }

    /// Text turned a quarter left (read bottom to top); its first character's bottom-left corner
    /// (the glyphs' top-left before turning) is at (x, y).
    fn text_up(&mut self, x: i64, y: i64, text: &str, scale: u32, colour: Rgb) {
        let s = i64::from(scale);
        for (index, ch) in text.chars().enumerate() {
            let origin = y - index as i64 * ADVANCE * s;
            for (col, bits) in glyph(ch).iter().enumerate() {
                for row in 0..8 {
                    if bits >> row & 1 == 1 {
                        let rect = Rect::new(x + row * s, origin - (col as i64 + 1) * s + 1, s, s);
                        self.fill(rect, colour);
                    }
                }
            }
        }
    }

    fn encode(&self) -> Result<Vec<u8>, png::EncodingError> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Balanced);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&self.pixels)?;
        writer.finish()?;
        Ok(bytes)
    }

    fn write(&self, path: &Path) -> Result<(), Error> {
        let bytes = self.encode().map_err(|source| Error::Encode {
            path: path.to_owned(),
            source,
        })?;
        retrain_stage::write_atomic(path, &bytes).map_err(|source| Error::Write {
            path: path.to_owned(),
            source,
        })
    }
}

/// Horizontal distance between characters, in font pixels.
const ADVANCE: i64 = 6;

/// Width in pixels of `text` at `scale` (the last character's spacing not counted).
fn text_width(text: &str, scale: u32) -> i64 {
    let n = text.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (n * ADVANCE - 1) * i64::from(scale)
    }
}

/// Height of a line of text including descenders.
fn text_height(scale: u32) -> i64 {
    8 * i64::from(scale)
}

/// Height of capitals and digits (no descender).
fn glyph_height(scale: u32) -> i64 {
    7 * i64::from(scale)
}

/// `text` in printable ASCII (others become `?`), cut to `max_width` pixels with a trailing `..`.
fn fit(text: &str, max_width: i64, scale: u32) -> String {
    let clean: String = text
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    if text_width(&clean, scale) <= max_width {
        return clean;
    }
    let mut cut: Vec<char> = clean.chars().collect();
    while !cut.is_empty() {
        cut.pop();
        let kept: String = cut.iter().collect();
        let candidate = format!("{}..", kept.trim_end());
        if text_width(&candidate, scale) <= max_width {
            return candidate;
        }
    }
    String::new()
}

fn glyph(ch: char) -> &'static [u8; 5] {
    let code = ch as u32;
    let index = if (32..=126).contains(&code) {
        code - 32
    } else {
        u32::from(b'?') - 32
    };
    &FONT[index as usize]
}

/// A 5×8 bitmap font for ASCII 32–126 in the classic character-LCD layout: five column bytes per
/// glyph, bit 0 the top row, rows 0–6 the body and row 7 the descender of g, j, p, q, y and commas.
#[rustfmt::skip]
const FONT: [[u8; 5]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00], // ' '
    [0x00, 0x00, 0x5F, 0x00, 0x00], // !
    [0x00, 0x07, 0x00, 0x07, 0x00], // "
    [0x14, 0x7F, 0x14, 0x7F, 0x14], // #
    [0x24, 0x2A, 0x7F, 0x2A, 0x12], // $
    [0x23, 0x13, 0x08, 0x64, 0x62], // %
    [0x36, 0x49, 0x55, 0x22, 0x50], // &
    [0x00, 0x00, 0x07, 0x00, 0x00], // '
    [0x00, 0x1C, 0x22, 0x41, 0x00], // (
    [0x00, 0x41, 0x22, 0x1C, 0x00], // )
    [0x14, 0x08, 0x3E, 0x08, 0x14], // *
    [0x08, 0x08, 0x3E, 0x08, 0x08], // +
    [0x00, 0x80, 0x60, 0x00, 0x00], // ,
    [0x08, 0x08, 0x08, 0x08, 0x08], // -
    [0x00, 0x60, 0x60, 0x00, 0x00], // .
    [0x20, 0x10, 0x08, 0x04, 0x02], // /
    [0x3E, 0x51, 0x49, 0x45, 0x3E], // 0
    [0x00, 0x42, 0x7F, 0x40, 0x00], // 1
    [0x42, 0x61, 0x51, 0x49, 0x46], // 2
    [0x21, 0x41, 0x45, 0x4B, 0x31], // 3
    [0x18, 0x14, 0x12, 0x7F, 0x10], // 4
    [0x27, 0x45, 0x45, 0x45, 0x39], // 5
    [0x3C, 0x4A, 0x49, 0x49, 0x30], // 6
    [0x01, 0x71, 0x09, 0x05, 0x03], // 7
    [0x36, 0x49, 0x49, 0x49, 0x36], // 8
    [0x06, 0x49, 0x49, 0x29, 0x1E], // 9
    [0x00, 0x36, 0x36, 0x00, 0x00], // :
    [0x00, 0x80, 0x76, 0x36, 0x00], // ;
    [0x08, 0x14, 0x22, 0x41, 0x00], // <
    [0x14, 0x14, 0x14, 0x14, 0x14], // =
    [0x00, 0x41, 0x22, 0x14, 0x08], // >
    [0x02, 0x01, 0x51, 0x09, 0x06], // ?
    [0x32, 0x49, 0x79, 0x41, 0x3E], // @
    [0x7E, 0x11, 0x11, 0x11, 0x7E], // A
    [0x7F, 0x49, 0x49, 0x49, 0x36], // B
    [0x3E, 0x41, 0x41, 0x41, 0x22], // C
    [0x7F, 0x41, 0x41, 0x22, 0x1C], // D
    [0x7F, 0x49, 0x49, 0x49, 0x41], // E
    [0x7F, 0x09, 0x09, 0x09, 0x01], // F
    [0x3E, 0x41, 0x49, 0x49, 0x7A], // G
    [0x7F, 0x08, 0x08, 0x08, 0x7F], // H
    [0x00, 0x41, 0x7F, 0x41, 0x00], // I
    [0x20, 0x40, 0x41, 0x3F, 0x01], // J
    [0x7F, 0x08, 0x14, 0x22, 0x41], // K
    [0x7F, 0x40, 0x40, 0x40, 0x40], // L
    [0x7F, 0x02, 0x0C, 0x02, 0x7F], // M
    [0x7F, 0x04, 0x08, 0x10, 0x7F], // N
    [0x3E, 0x41, 0x41, 0x41, 0x3E], // O
    [0x7F, 0x09, 0x09, 0x09, 0x06], // P
    [0x3E, 0x41, 0x51, 0x21, 0x5E], // Q
    [0x7F, 0x09, 0x19, 0x29, 0x46], // R
    [0x46, 0x49, 0x49, 0x49, 0x31], // S
    [0x01, 0x01, 0x7F, 0x01, 0x01], // T
    [0x3F, 0x40, 0x40, 0x40, 0x3F], // U
    [0x1F, 0x20, 0x40, 0x20, 0x1F], // V
    [0x3F, 0x40, 0x38, 0x40, 0x3F], // W
    [0x63, 0x14, 0x08, 0x14, 0x63], // X
    [0x07, 0x08, 0x70, 0x08, 0x07], // Y
    [0x61, 0x51, 0x49, 0x45, 0x43], // Z
    [0x00, 0x7F, 0x41, 0x41, 0x00], // [
    [0x02, 0x04, 0x08, 0x10, 0x20], // backslash
    [0x00, 0x41, 0x41, 0x7F, 0x00], // ]
    [0x04, 0x02, 0x01, 0x02, 0x04], // ^
    [0x40, 0x40, 0x40, 0x40, 0x40], // _
    [0x00, 0x01, 0x02, 0x04, 0x00], // `
    [0x20, 0x54, 0x54, 0x54, 0x78], // a
    [0x7F, 0x48, 0x44, 0x44, 0x38], // b
    [0x38, 0x44, 0x44, 0x44, 0x20], // c
    [0x38, 0x44, 0x44, 0x48, 0x7F], // d
    [0x38, 0x54, 0x54, 0x54, 0x18], // e
    [0x08, 0x7E, 0x09, 0x01, 0x02], // f
    [0x18, 0xA4, 0xA4, 0xA4, 0x7C], // g
    [0x7F, 0x08, 0x04, 0x04, 0x78], // h
    [0x00, 0x44, 0x7D, 0x40, 0x00], // i
    [0x40, 0x80, 0x84, 0x7D, 0x00], // j
    [0x7F, 0x10, 0x28, 0x44, 0x00], // k
    [0x00, 0x41, 0x7F, 0x40, 0x00], // l
    [0x7C, 0x04, 0x18, 0x04, 0x78], // m
    [0x7C, 0x08, 0x04, 0x04, 0x78], // n
    [0x38, 0x44, 0x44, 0x44, 0x38], // o
    [0xFC, 0x24, 0x24, 0x24, 0x18], // p
    [0x18, 0x24, 0x24, 0x24, 0xFC], // q
    [0x7C, 0x08, 0x04, 0x04, 0x08], // r
    [0x48, 0x54, 0x54, 0x54, 0x20], // s
    [0x04, 0x3F, 0x44, 0x40, 0x20], // t
    [0x3C, 0x40, 0x40, 0x20, 0x7C], // u
    [0x1C, 0x20, 0x40, 0x20, 0x1C], // v
    [0x3C, 0x40, 0x30, 0x40, 0x3C], // w
    [0x44, 0x28, 0x10, 0x28, 0x44], // x
    [0x1C, 0xA0, 0xA0, 0xA0, 0x7C], // y
    [0x44, 0x64, 0x54, 0x4C, 0x44], // z
    [0x00, 0x08, 0x36, 0x41, 0x00], // {
    [0x00, 0x00, 0x7F, 0x00, 0x00], // |
    [0x00, 0x41, 0x36, 0x08, 0x00], // }
    [0x08, 0x04, 0x08, 0x10, 0x08], // ~
];
