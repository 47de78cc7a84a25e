//! Writes a small TensorBoard event file with the system clock and host name, for the interop
//! check (scripts/check_tfrecord.py reads it with TensorBoard's own loader).
//!
//! usage: write_events DIR
//! Scalars: at steps 0, 10, …, 100, `loss` = 2 / (1 + step / 10) and `accuracy` = step / 200, plus
//! `lr` = 0.001 in its own event at each step.

use std::io::Write as _;

use anyhow::Context as _;
use retrain_tfrecord::EventWriter;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).context("usage: write_events DIR")?;
    let mut writer = EventWriter::create(std::path::Path::new(&dir))?;
    for step in (0..=100).step_by(10) {
        let loss = 2.0 / (1.0 + step as f32 / 10.0);
        let accuracy = step as f32 / 200.0;
        writer.add_scalars(step, &[("loss", loss), ("accuracy", accuracy)])?;
        writer.add_scalar("lr", 0.001, step)?;
    }
    let path = writer.path().to_owned();
    writer.close()?;
    writeln!(std::io::stdout(), "{}", path.display())?;
    Ok(())
}
