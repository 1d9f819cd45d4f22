//! `eval uncertainty` (being written).

use handcov::error::{Error, Result};

pub fn run(_args: pico_args::Arguments) -> Result<()> {
    Err(Error::Input("eval uncertainty is not written yet".into()))
}
