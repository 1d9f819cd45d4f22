//! What the binaries share when they read their command line: one way to parse a flag's
//! value, to check its range, to report what is left over, and to size the thread pool, so
//! that every tool answers bad flags with the same kind of one-line error (exit code 2).

use crate::error::{Error, Result};
use std::path::Path;

/// The most worker threads a `--threads` flag may ask for. Far beyond any machine this runs
/// on; a larger number is a typo, and spawning it would stall the tool for minutes.
pub const MAX_THREADS: usize = 1024;

/// An optional `--flag VALUE`, with the flag named in a parse error; `help` is how the user
/// gets the usage (`--help`, `eval pose --help`).
pub fn opt<T: std::str::FromStr>(
    p: &mut pico_args::Arguments,
    flag: &'static str,
    help: &str,
) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    p.opt_value_from_fn(flag, |v| v.parse::<T>().map_err(|e| format!("{v:?}: {e}")))
        .map_err(|e| Error::Input(format!("{flag}: {} (see {help})", flag_message(e))))
}

/// A required `--flag VALUE`: the value, or an error naming the flag.
pub fn required<T: std::str::FromStr>(
    p: &mut pico_args::Arguments,
    flag: &'static str,
    help: &str,
) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    opt(p, flag, help)?.ok_or_else(|| Error::Input(format!("missing {flag} (see {help})")))
}

/// An optional count `--flag N` that must lie in `lo..=hi`.
pub fn count(
    p: &mut pico_args::Arguments,
    flag: &'static str,
    lo: usize,
    hi: usize,
    help: &str,
) -> Result<Option<usize>> {
    let v = opt::<usize>(p, flag, help)?;
    if let Some(n) = v {
        check_count(flag, n, lo, hi)?;
    }
    Ok(v)
}

/// `n` in `lo..=hi`, or an error naming the flag and the range.
pub fn check_count(flag: &str, n: usize, lo: usize, hi: usize) -> Result<()> {
    if n < lo || n > hi {
        return Err(Error::Input(format!("{flag} {n}: expected {lo} to {hi}")));
    }
    Ok(())
}

/// An optional `--flag X` that must be a finite number above zero.
pub fn positive(
    p: &mut pico_args::Arguments,
    flag: &'static str,
    help: &str,
) -> Result<Option<f32>> {
    let v = opt::<f32>(p, flag, help)?;
    if let Some(x) = v {
        check_positive(flag, x)?;
    }
    Ok(v)
}

/// `x` finite and above zero, or an error naming the flag.
pub fn check_positive(flag: &str, x: f32) -> Result<()> {
    if !(x.is_finite() && x > 0.0) {
        return Err(Error::Input(format!(
            "{flag} {x}: expected a finite number above 0"
        )));
    }
    Ok(())
}

/// `--threads N` (1 to [`MAX_THREADS`]); `None` when absent (all cores).
pub fn threads(p: &mut pico_args::Arguments, help: &str) -> Result<Option<usize>> {
    count(p, "--threads", 1, MAX_THREADS, help)
}

/// Sizes the global thread pool (`None`: rayon's default, one thread per core). Call it once,
/// before any parallel work.
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        check_count("--threads", n, 1, MAX_THREADS)?;
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Error::Input(format!("--threads {n}: {e}")))?;
    }
    Ok(())
}

/// An error when the output `out` is the input `input` (the same file under any spelling): the
/// tool would destroy what it reads. An output that does not exist yet is never an input.
pub fn check_distinct(out_flag: &str, out: &Path, in_flag: &str, input: &Path) -> Result<()> {
    if let (Ok(a), Ok(b)) = (out.canonicalize(), input.canonicalize()) {
        if a == b {
            return Err(Error::Input(format!(
                "{out_flag} {} is the {in_flag} file: writing it would destroy the input",
                out.display()
            )));
        }
    }
    Ok(())
}

/// Ends the parse: anything left over is an error. A left-over flag that the tool knows (it
/// appears in `usage`) was either given twice or belongs to another of the tool's usages; the
/// message says which rather than call it unknown.
pub fn finish(p: pico_args::Arguments, usage: &str, help: &str) -> Result<()> {
    let words: Vec<_> = std::env::args_os().skip(1).collect();
    finish_words(p, &words, usage, help)
}

/// [`finish`] for a parse of `words` (the command line without the program name).
fn finish_words(
    p: pico_args::Arguments,
    words: &[std::ffi::OsString],
    usage: &str,
    help: &str,
) -> Result<()> {
    let rest = p.finish();
    let Some(first) = rest.first() else {
        return Ok(());
    };
    let word = first.to_string_lossy();
    let a = flag_name(&word);
    if a.starts_with("--") && knows_flag(usage, a) {
        let given = words
            .iter()
            .filter(|x| flag_name(&x.to_string_lossy()) == a)
            .count();
        return Err(Error::Input(if given > 1 {
            format!("{a} is given more than once (see {help})")
        } else {
            format!(
                "{a} does not go with the other flags given: it belongs to another usage (see \
                 {help})"
            )
        }));
    }
    Err(Error::Input(format!(
        "unexpected argument {word:?} (see {help})"
    )))
}

/// The flag of a command-line word: `--out` for both `--out` and `--out=dir`.
pub fn flag_name(word: &str) -> &str {
    word.split('=').next().unwrap_or_default()
}

/// Whether `usage` mentions `flag` as a whole word (`--batch` is not `--batch-size`).
fn knows_flag(usage: &str, flag: &str) -> bool {
    usage.match_indices(flag).any(|(i, _)| {
        let next = usage[i + flag.len()..].chars().next();
        !matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// pico_args' errors, with the flag (which the caller names) left out of the text.
fn flag_message(e: pico_args::Error) -> String {
    match e {
        pico_args::Error::OptionWithoutAValue(_) => "needs a value".into(),
        pico_args::Error::Utf8ArgumentParsingFailed { value, cause } => format!("{value}: {cause}"),
        pico_args::Error::ArgumentParsingFailed { cause } => cause,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> pico_args::Arguments {
        pico_args::Arguments::from_vec(v.iter().map(Into::into).collect())
    }

    /// `finish` of a parse of `v` that took `--threads` (once) and nothing else.
    fn finish_after_threads(v: &[&str], usage: &str) -> Result<()> {
        let mut p = args(v);
        threads(&mut p, "--help")?;
        let words: Vec<std::ffi::OsString> = v.iter().map(Into::into).collect();
        finish_words(p, &words, usage, "--help")
    }

    #[test]
    fn a_repeated_flag_is_named_as_such() {
        let usage = "  --threads N   threads\n  --batch N\n  (other usage) --cache DIR\n";
        let e = finish_after_threads(&["--threads", "2", "--threads", "3"], usage).unwrap_err();
        assert!(
            e.to_string().contains("--threads is given more than once"),
            "{e}"
        );
        let e = finish_after_threads(&["--threads=2", "--threads=3"], usage).unwrap_err();
        assert!(
            e.to_string().contains("--threads is given more than once"),
            "{e}"
        );
        // A flag the tool knows, given once, but not taken by this parse.
        for v in [&["--cache", "d"][..], &["--cache=d"]] {
            let e = finish_after_threads(v, usage).unwrap_err().to_string();
            assert!(
                e.contains("--cache does not go with the other flags given"),
                "{e}"
            );
        }
        let e = finish_after_threads(&["--batch-size", "3"], usage).unwrap_err();
        assert!(
            e.to_string()
                .contains("unexpected argument \"--batch-size\""),
            "{e}"
        );
        assert!(finish_after_threads(&[], usage).is_ok());
    }

    #[test]
    fn threads_and_counts_are_bounded() {
        for bad in ["0", "1025", "99999999999", "-1", "x"] {
            let e = threads(&mut args(&["--threads", bad]), "--help").unwrap_err();
            assert!(e.to_string().contains("--threads"), "{bad}: {e}");
        }
        assert_eq!(
            threads(&mut args(&["--threads", "8"]), "--help").unwrap(),
            Some(8)
        );
        assert_eq!(threads(&mut args(&[]), "--help").unwrap(), None);
        let e = count(&mut args(&["--runs", "0"]), "--runs", 1, 10, "--help").unwrap_err();
        assert_eq!(e.to_string(), "input: --runs 0: expected 1 to 10");
        let e = opt::<usize>(&mut args(&["--runs"]), "--runs", "--help").unwrap_err();
        assert_eq!(e.to_string(), "input: --runs: needs a value (see --help)");
    }

    #[test]
    fn an_output_may_not_be_an_input() {
        let dir = std::env::temp_dir().join(format!("handcov_cli_{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let f = dir.join("w.safetensors");
        std::fs::write(&f, b"x").unwrap();
        let e = check_distinct("--dump", &dir.join("sub/../w.safetensors"), "--weights", &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is the --weights file"), "{e}");
        assert!(check_distinct("--dump", &dir.join("new.safetensors"), "--weights", &f).is_ok());
    }

    #[test]
    fn positive_numbers_reject_zero_negative_and_non_finite() {
        for bad in ["0", "-1", "nan", "inf", "-inf"] {
            assert!(
                positive(&mut args(&["--lr", bad]), "--lr", "--help").is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            positive(&mut args(&["--lr", "1e-4"]), "--lr", "--help").unwrap(),
            Some(1e-4)
        );
    }
}
