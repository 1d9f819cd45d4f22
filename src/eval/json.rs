//! The two halves of the evaluation files' number handling:
//!
//! * a reader for JSON documents made of nested arrays of numbers (the only kind of JSON the
//!   result and ground-truth files hold), straight into flat `Vec<f64>` with every level's length
//!   checked as it goes. It is a small byte-level recursive descent instead of serde, because the
//!   files are large (FreiHAND: 3 960 × 778 × 3 floats per vertex file, ≈ 200 MB of text) and a
//!   wrong shape or a `NaN` token (which Python's `json` writes and strict JSON forbids) must be
//!   reported as "sample 17: 20 joints, expected 21" or "NaN at sample 3, vertex 12, coordinate 1"
//!   with the file's name, not as a generic serde message. Numbers follow the JSON grammar (no
//!   leading zeros, no `+`, no bare `.5`) and are converted by `str::parse::<f64>` (correctly
//!   rounded), so a file written by Python reads back as the exact same f64 values that Python's
//!   `json.load` gives. Every value must be a finite float32 number (|x| ≤ f32::MAX, what the
//!   model writes): a larger one (1e160) is an error, as it would overflow the metrics' f64 sums
//!   of squares into NaN / null. Large arrays are parsed in
//!   parallel: the outermost array's elements are located by a bracket scan and parsed by rayon.
//! * Python's `repr(float)` ([`python_float_repr`]) and the JSON form Python's `json.dumps` gives
//!   a float ([`push_json_float`]), so that written files and `scores.txt` match Python's text.

use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::Path;

/// One level of a nested array: its expected length (`None`: any non-zero length, read from
/// the file) and the name of its elements, plural, for messages ("samples", "joints").
#[derive(Clone, Copy, Debug)]
pub struct Level {
    pub len: Option<usize>,
    pub name: &'static str,
}

impl Level {
    pub const fn any(name: &'static str) -> Level {
        Level { len: None, name }
    }
    pub const fn exactly(len: usize, name: &'static str) -> Level {
        Level {
            len: Some(len),
            name,
        }
    }
}

/// A cursor over the bytes of one JSON document (or one slice of it).
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    /// Byte offset of `b[0]` in the whole file (for messages).
    base: usize,
    file: &'a Path,
    /// The whole file, to turn an offset into a line number in messages.
    whole: &'a [u8],
}

/// "samples" → "sample", "vertices" → "vertex".
fn element_name(name: &str) -> &str {
    match name {
        "vertices" => "vertex",
        other => other.strip_suffix('s').unwrap_or(other),
    }
}

/// Where a value sits, for messages: "xyz_list, sample 3, joint 2". An entry with index
/// `usize::MAX` is a named part of the document and is shown by its name alone.
fn describe(path: &[(usize, &'static str)]) -> String {
    if path.is_empty() {
        return "the top level".to_string();
    }
    path.iter()
        .map(|&(i, n)| {
            if i == usize::MAX {
                n.to_string()
            } else {
                format!("{} {i}", element_name(n))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        let at = (self.base + self.pos).min(self.whole.len());
        let line = self.whole[..at].iter().filter(|&&c| c == b'\n').count() + 1;
        Error::Input(format!(
            "{}: {msg} (byte {at}, line {line})",
            self.file.display()
        ))
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8, context: &str) -> Result<()> {
        self.ws();
        match self.peek() {
            Some(x) if x == c => {
                self.pos += 1;
                Ok(())
            }
            Some(x) => Err(self.err(format!(
                "malformed JSON: expected `{}` {context}, found `{}`",
                c as char,
                printable(x)
            ))),
            None => Err(self.err(format!(
                "malformed JSON: file ends where `{}` was expected {context}",
                c as char
            ))),
        }
    }

    /// One JSON number. `at` describes the position for messages ("sample 3, joint 2, ...").
    #[inline]
    fn number(&mut self, at: &dyn Fn() -> String) -> Result<f64> {
        self.ws();
        let start = self.pos;
        let b = self.b;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let digits0 = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i - digits0 > 1 && b[digits0] == b'0' {
            self.pos = start;
            return Err(self.err(format!(
                "malformed JSON: the number at {} has a leading zero (`{}`); JSON forbids them",
                at(),
                token(&b[start..])
            )));
        }
        let int_ok = i > digits0;
        let mut ok = int_ok;
        if ok && i < b.len() && b[i] == b'.' {
            i += 1;
            let f0 = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            ok = i > f0;
        }
        if ok && i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                i += 1;
            }
            let e0 = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            ok = i > e0;
        }
        if !ok {
            return Err(self.bad_number(start, at));
        }
        // SAFETY: the span was checked above to hold only ASCII digits, '-', '+', '.', 'e', 'E',
        // so it is valid UTF-8.
        let text = unsafe { std::str::from_utf8_unchecked(&b[start..i]) };
        let v: f64 = text.parse().map_err(|_| self.bad_number(start, at))?;
        if !v.is_finite() {
            self.pos = start;
            return Err(self.err(format!(
                "the number {text} at {} overflows to infinity; the values must be finite",
                at()
            )));
        }
        if v.abs() > f32::MAX as f64 {
            self.pos = start;
            return Err(self.err(format!(
                "the number {text} at {} is beyond the float32 range (|x| ≤ {:e}); the values \
                 must be finite float32 numbers",
                at(),
                f32::MAX
            )));
        }
        self.pos = i;
        Ok(v)
    }

    fn bad_number(&mut self, start: usize, at: &dyn Fn() -> String) -> Error {
        self.pos = start;
        let rest = &self.b[start..];
        for tok in ["NaN", "Infinity", "-Infinity"] {
            if rest.starts_with(tok.as_bytes()) {
                return self.err(format!(
                    "{tok} at {}: the values must be finite (Python's json writes NaN/Infinity \
                     for non-finite floats; the model or the writer produced one)",
                    at()
                ));
            }
        }
        match rest.first() {
            None => self.err(format!(
                "malformed JSON: file ends where a number was expected at {}",
                at()
            )),
            Some(_) => self.err(format!(
                "malformed JSON: expected a number at {}, found `{}`",
                at(),
                token(rest)
            )),
        }
    }

    /// A nested array whose shape is `levels`; its numbers are appended to `out`. `path` holds
    /// the indices of the enclosing levels (for messages), `names` their element names.
    fn array(
        &mut self,
        levels: &[Level],
        path: &mut Vec<(usize, &'static str)>,
        out: &mut Vec<f64>,
    ) -> Result<usize> {
        let level = levels[0];
        let inner = &levels[1..];
        let here = describe;
        self.ws();
        if self.peek() != Some(b'[') {
            let count = level.len.map_or(String::new(), |n| format!("{n} "));
            let found = match self.peek() {
                Some(_) => format!("`{}`", token(&self.b[self.pos..])),
                None => "the end of the file".into(),
            };
            return Err(self.err(format!(
                "wrong nesting: expected an array of {count}{} at {}, found {found}",
                level.name,
                here(path)
            )));
        }
        self.pos += 1;
        self.ws();
        let mut count = 0usize;
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            loop {
                path.push((count, level.name));
                if inner.is_empty() {
                    let v = {
                        let p: &[(usize, &'static str)] = path;
                        self.number(&|| here(p))?
                    };
                    out.push(v);
                } else {
                    self.array(inner, path, out)?;
                }
                path.pop();
                count += 1;
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    Some(c) => {
                        return Err(self.err(format!(
                            "malformed JSON: expected `,` or `]` after {} {} at {}, found `{}`",
                            element_name(level.name),
                            count - 1,
                            here(path),
                            printable(c)
                        )))
                    }
                    None => {
                        return Err(self.err(format!(
                            "malformed JSON: file ends inside the array of {} at {}",
                            level.name,
                            here(path)
                        )))
                    }
                }
            }
        }
        match level.len {
            Some(n) if n != count => Err(self.err(format!(
                "wrong shape: {} has {count} {}, expected {n}",
                here(path),
                level.name
            ))),
            None if count == 0 => {
                Err(self.err(format!("wrong shape: {} has no {}", here(path), level.name)))
            }
            _ => Ok(count),
        }
    }
}

/// The token starting at `b[0]` for messages: up to 16 bytes, stopping before a delimiter.
fn token(b: &[u8]) -> String {
    let end = b
        .iter()
        .take(16)
        .position(|&c| matches!(c, b',' | b']' | b'[' | b' ' | b'\n' | b'\r' | b'\t'))
        .unwrap_or(b.len().min(16))
        .max(1);
    b[..end.min(b.len())]
        .iter()
        .map(|&c| printable(c))
        .collect()
}

fn printable(c: u8) -> String {
    if c.is_ascii_graphic() {
        (c as char).to_string()
    } else {
        format!("\\x{c:02x}")
    }
}

/// Byte ranges of the elements of the array that starts at `b[start]` (which must be `[`),
/// found by a bracket scan (the documents hold only numbers and brackets, no strings), and the
/// offset just past its closing `]`. `None` when the brackets do not balance; the sequential
/// parser then reports the precise error.
fn split_elements(b: &[u8], start: usize) -> Option<(Vec<(usize, usize)>, usize)> {
    // Bytes that matter to the scan: brackets, commas, and the characters of other JSON values
    // (strings, objects) that make the fast path give up.
    const fn table() -> [bool; 256] {
        let mut t = [false; 256];
        t[b'[' as usize] = true;
        t[b']' as usize] = true;
        t[b',' as usize] = true;
        t[b'"' as usize] = true;
        t[b'{' as usize] = true;
        t
    }
    static SPECIAL: [bool; 256] = table();
    let mut depth = 0usize;
    let mut elems = Vec::new();
    let mut elem_start = start + 1;
    let mut i = start;
    let n = b.len();
    while i < n {
        // Skip the bytes of numbers and whitespace in a tight loop.
        while i < n && !SPECIAL[b[i] as usize] {
            i += 1;
        }
        if i == n {
            break;
        }
        match b[i] {
            b'[' => depth += 1,
            b']' => {
                depth -= 1;
                if depth == 0 {
                    elems.push((elem_start, i));
                    return Some((elems, i + 1));
                }
            }
            b',' if depth == 1 => {
                elems.push((elem_start, i));
                elem_start = i + 1;
            }
            b',' => {}
            _ => return None,
        }
        i += 1;
    }
    None
}

/// Elements per parallel job of [`parse_outer_parallel`].
const CHUNK: usize = 64;

/// Parses, at `cur`, an array with shape `levels` whose outermost level is split across threads.
/// Falls back to the sequential parser on any irregularity (which then gives the exact message).
fn parse_outer_parallel(
    cur: &mut Cursor<'_>,
    levels: &[Level],
    prefix: &[(usize, &'static str)],
    out: &mut Vec<f64>,
) -> Result<usize> {
    cur.ws();
    let start = cur.pos;
    let per: usize = levels[1..].iter().map(|l| l.len.unwrap_or(0)).product();
    let fixed_inner = levels[1..].iter().all(|l| l.len.is_some());
    let split = if fixed_inner && cur.peek() == Some(b'[') {
        split_elements(cur.b, start)
    } else {
        None
    };
    let Some((elems, end)) = split else {
        let mut path = prefix.to_vec();
        return cur.array(levels, &mut path, out);
    };
    let n = elems.len();
    if n < 2 * CHUNK {
        let mut path = prefix.to_vec();
        return cur.array(levels, &mut path, out);
    }
    let base_len = out.len();
    out.resize(base_len + n * per, 0.0);
    let dst = &mut out[base_len..];
    let b = cur.b;
    let (file, whole, base) = (cur.file, cur.whole, cur.base);
    let parallel = dst
        .par_chunks_mut(CHUNK * per)
        .zip(elems.par_chunks(CHUNK))
        .enumerate()
        .try_for_each(|(c, (dst, ranges))| -> Result<()> {
            let mut buf = Vec::with_capacity(per);
            for (k, &(s, e)) in ranges.iter().enumerate() {
                let idx = c * CHUNK + k;
                let mut sub = Cursor {
                    b: &b[..e],
                    pos: s,
                    base,
                    file,
                    whole,
                };
                let mut path = prefix.to_vec();
                path.push((idx, levels[0].name));
                buf.clear();
                sub.array(&levels[1..], &mut path, &mut buf)?;
                sub.ws();
                if sub.pos != e {
                    return Err(sub.err(format!(
                        "malformed JSON: unexpected `{}` after {} {idx}",
                        printable(b[sub.pos]),
                        element_name(levels[0].name)
                    )));
                }
                dst[k * per..(k + 1) * per].copy_from_slice(&buf);
            }
            Ok(())
        });
    if parallel.is_err() {
        // Re-parse sequentially so that the message names the first error in file order.
        out.truncate(base_len);
        cur.pos = start;
        let mut path = prefix.to_vec();
        return cur.array(levels, &mut path, out);
    }
    cur.pos = end;
    if let Some(want) = levels[0].len {
        if want != n {
            return Err(cur.err(format!(
                "wrong shape: {} has {n} {}, expected {want}",
                describe(prefix),
                levels[0].name
            )));
        }
    }
    Ok(n)
}

/// The document holds one nested array with the shape `levels`; returns the outermost length and
/// the flat values (row-major).
pub fn parse_nested(file: &Path, bytes: &[u8], levels: &[Level]) -> Result<(usize, Vec<f64>)> {
    let mut cur = Cursor {
        b: bytes,
        pos: 0,
        base: 0,
        file,
        whole: bytes,
    };
    let mut out = Vec::new();
    let n = parse_outer_parallel(&mut cur, levels, &[], &mut out)?;
    end_of_document(&mut cur)?;
    Ok((n, out))
}

/// The document is a top-level array of `parts.len()` nested arrays, part `k` with the shape
/// `parts[k]` (`[xyz_list, verts_list]`, `[uncertainty_list]`). Returns each part's outermost
/// length and flat values.
pub fn parse_parts(
    file: &Path,
    bytes: &[u8],
    parts: &[(&'static str, &[Level])],
) -> Result<Vec<(usize, Vec<f64>)>> {
    let mut cur = Cursor {
        b: bytes,
        pos: 0,
        base: 0,
        file,
        whole: bytes,
    };
    let names: Vec<&str> = parts.iter().map(|p| p.0).collect();
    let layout = format!("[{}]", names.join(", "));
    cur.ws();
    if cur.peek() != Some(b'[') {
        return Err(cur.err(format!(
            "wrong nesting: expected the top-level array {layout}"
        )));
    }
    cur.pos += 1;
    let mut res = Vec::with_capacity(parts.len());
    for (k, (name, levels)) in parts.iter().enumerate() {
        if k > 0 {
            cur.ws();
            if cur.peek() == Some(b']') {
                return Err(cur.err(format!(
                    "wrong nesting: the top-level array has {k} element(s), expected {} ({layout})",
                    parts.len()
                )));
            }
            cur.expect(b',', &format!("before {name} in {layout}"))?;
        }
        cur.ws();
        if cur.peek() == Some(b']') && k == 0 {
            return Err(cur.err(format!(
                "wrong nesting: the top-level array is empty, expected {layout}"
            )));
        }
        let mut out = Vec::new();
        let n = parse_outer_parallel(&mut cur, levels, &[(usize::MAX, name)], &mut out)?;
        res.push((n, out));
    }
    cur.ws();
    if cur.peek() == Some(b',') {
        return Err(cur.err(format!(
            "wrong nesting: the top-level array has more than {} elements, expected {layout}",
            parts.len()
        )));
    }
    cur.expect(b']', &format!("to close the top-level array {layout}"))?;
    end_of_document(&mut cur)?;
    Ok(res)
}

fn end_of_document(cur: &mut Cursor<'_>) -> Result<()> {
    cur.ws();
    match cur.peek() {
        None => Ok(()),
        Some(c) => Err(cur.err(format!(
            "malformed JSON: unexpected `{}` after the end of the document",
            printable(c)
        ))),
    }
}

/// Python's `repr(x)` for a float: the shortest digits that round-trip, in fixed notation when the
/// decimal exponent is in [-4, 16) (with `.0` for integral values), else scientific with a signed,
/// at least two-digit exponent (`1e-05`, `1.5e+16`); `nan`, `inf`, `-inf`.
pub fn python_float_repr(x: f64) -> String {
    let mut s = String::new();
    push_python_float(&mut s, x);
    s
}

/// Appends Python's `repr(x)` to `out` (see [`python_float_repr`]).
pub fn push_python_float(out: &mut String, x: f64) {
    use std::fmt::Write;
    if x.is_nan() {
        out.push_str("nan");
        return;
    }
    if x.is_infinite() {
        out.push_str(if x > 0.0 { "inf" } else { "-inf" });
        return;
    }
    // Rust's `{:e}` without precision gives the shortest round-trip digits, e.g. "-1.2345e-7".
    let mut sci = StackText::default();
    let _ = write!(sci, "{x:e}");
    // Among the shortest round-trip strings Python takes the one nearest to x, ties to even;
    // Rust's shortest mode may round a tie up. When a tie is possible at all, re-round exactly
    // (Rust's exact mode rounds half to even) and keep that if it round-trips.
    let n_digits = sci
        .as_str()
        .bytes()
        .take_while(|&c| c != b'e')
        .filter(u8::is_ascii_digit)
        .count();
    if tie_possible(x, n_digits) {
        let mut exact = StackText::default();
        let _ = write!(exact, "{:.*e}", n_digits - 1, x);
        if exact.as_str().parse::<f64>().ok() == Some(x) {
            sci = exact;
        }
    }
    let text = sci.as_str();
    let (mant, exp) = text.split_once('e').unwrap_or((text, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mant = match mant.strip_prefix('-') {
        Some(m) => {
            out.push('-');
            m
        }
        None => mant,
    };
    // The digits without the point: "d" or "d.ddd".
    let (first, rest) = mant.split_once('.').unwrap_or((mant, ""));
    let nd = 1 + rest.len();
    let digit = |i: usize| if i == 0 { first } else { &rest[i - 1..i] };
    if !(-4..16).contains(&exp) {
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if exp >= 0 {
        let int_len = exp as usize + 1;
        for i in 0..int_len {
            out.push_str(if i < nd { digit(i) } else { "0" });
        }
        out.push('.');
        if nd <= int_len {
            out.push('0');
        } else {
            out.push_str(&rest[int_len - 1..]);
        }
    } else {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(first);
        out.push_str(rest);
    }
}

/// Whether a shortest representation with `n_digits` digits can be a tie between two
/// candidates: only when x's exact decimal expansion has `n_digits + 1` significant digits, which
/// needs `n_digits ≥ 16` (a shorter decimal is never halfway within one ulp) and a short exact
/// expansion: `x = m·2^k` (m odd) has at least `log10(m) + |k|·log10(5)` digits when `k < 0`.
fn tie_possible(x: f64, n_digits: usize) -> bool {
    if n_digits < 16 {
        return false;
    }
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (m, k) = if biased == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), biased - 1075)
    };
    if m == 0 {
        return false;
    }
    let tz = m.trailing_zeros();
    let (m, k) = (m >> tz, k + tz as i32);
    if k >= 0 {
        return true; // an integer of 16+ digits: rare, take the exact path
    }
    let min_digits = (63 - m.leading_zeros()) as f64 * std::f64::consts::LOG10_2
        + (-k) as f64 * (1.0 - std::f64::consts::LOG10_2);
    min_digits < 19.0
}

/// A small fixed buffer for formatting one float without allocating.
#[derive(Default)]
struct StackText {
    buf: [u8; 32],
    len: usize,
}

impl StackText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Appends the text Python's `json.dumps` writes for the float `x`: its `repr`, except `NaN`,
/// `Infinity`, `-Infinity` for the non-finite values.
pub fn push_json_float(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
    } else if x.is_infinite() {
        out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        push_python_float(out, x);
    }
}

/// Appends a nested JSON array of shape `dims` holding `values` (row-major), as `json.dumps`
/// writes it (`", "` between elements).
pub fn push_json_nested(out: &mut String, dims: &[usize], values: &[f64]) {
    if dims.len() == 1 {
        out.push('[');
        for (i, &v) in values.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            push_json_float(out, v);
        }
        out.push(']');
        return;
    }
    let per: usize = dims[1..].iter().product();
    out.push('[');
    for i in 0..dims[0] {
        if i > 0 {
            out.push_str(", ");
        }
        push_json_nested(out, &dims[1..], &values[i * per..(i + 1) * per]);
    }
    out.push(']');
}

/// Like [`push_json_nested`] for a large outermost dimension: the elements are formatted in
/// parallel and joined.
pub fn json_nested_parallel(dims: &[usize], values: &[f64]) -> String {
    if dims.len() < 2 {
        let mut s = String::new();
        push_json_nested(&mut s, dims, values);
        return s;
    }
    let per: usize = dims[1..].iter().product();
    let pieces: Vec<String> = (0..dims[0])
        .into_par_iter()
        .map(|i| {
            let mut s = String::with_capacity(per * 24);
            push_json_nested(&mut s, &dims[1..], &values[i * per..(i + 1) * per]);
            s
        })
        .collect();
    let mut out = String::with_capacity(pieces.iter().map(|p| p.len() + 2).sum::<usize>() + 2);
    out.push('[');
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(p);
    }
    out.push(']');
    out
}
