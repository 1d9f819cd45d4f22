//! Build script: compiles every `kernels/*.cu` to PTX with nvcc, checks each PTX with `ptxas -v`,
//! and writes `$OUT_DIR/kernels.rs`, which `src/cuda/mod.rs` includes:
//!
//! ```text
//! pub const PTX_MODULES: &[(&str, &str)] = &[("layernorm", include_str!("/…/layernorm.ptx")), …];
//! pub const KERNELS_BUILT: bool = true;
//! ```
//!
//! nvcc is taken from `NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on `PATH`; ptxas from beside
//! it. Without nvcc the crate still builds (CPU only) with `PTX_MODULES = &[]` and
//! `KERNELS_BUILT = false`, unless `HANDCOV_REQUIRE_KERNELS=1`. `HANDCOV_CUDA_ARCH` (default
//! `sm_90`) picks the target; `HANDCOV_PTXAS_VERBOSE=1` prints ptxas's register/spill report.
//! A failing nvcc or ptxas is always a build error; any register spill is always a warning.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DEFAULT_ARCH: &str = "sm_90";
const NO_NVCC_WARNING: &str =
    "nvcc not found: building without CUDA kernels (set NVCC or CUDA_HOME; see README)";

fn main() {
    for var in [
        "NVCC",
        "CUDA_HOME",
        "HANDCOV_CUDA_ARCH",
        "HANDCOV_REQUIRE_KERNELS",
        "HANDCOV_PTXAS_VERBOSE",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir = manifest_dir.join("kernels");

    // Watch the directory (new files) and every file in it (.cu and the headers they include).
    println!("cargo:rerun-if-changed={}", kernel_dir.display());
    let sources = list_kernel_dir(&kernel_dir);
    for path in &sources.all {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    let require = env_flag("HANDCOV_REQUIRE_KERNELS");
    let verbose = env_flag("HANDCOV_PTXAS_VERBOSE");

    let Some(nvcc) = find_nvcc() else {
        if require {
            panic!(
                "HANDCOV_REQUIRE_KERNELS=1 but nvcc was not found: looked at $NVCC, \
                 $CUDA_HOME/bin/nvcc and nvcc on PATH. Install the CUDA toolkit (nvcc + ptxas) and \
                 set NVCC=/path/to/nvcc or CUDA_HOME, or unset HANDCOV_REQUIRE_KERNELS to build \
                 without CUDA kernels (see README)."
            );
        }
        println!("cargo:warning={NO_NVCC_WARNING}");
        write_table(&out_dir, &[], false);
        return;
    };
    let ptxas = ptxas_beside(&nvcc);
    let arch = cuda_arch();

    // Compile (nvcc) and check (ptxas) the files in parallel; report in file order.
    let results: Vec<Result<Compiled, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .cu
            .iter()
            .map(|src| {
                let (nvcc, ptxas, arch, kernel_dir, out_dir) =
                    (&nvcc, &ptxas, &arch, &kernel_dir, &out_dir);
                scope.spawn(move || compile_one(nvcc, ptxas, arch, kernel_dir, out_dir, src))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("kernel compile thread panicked"))
            .collect()
    });

    let mut modules = Vec::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(compiled) => {
                report_ptxas(&compiled, verbose);
                modules.push((compiled.name, compiled.ptx));
            }
            Err(message) => failures.push(message),
        }
    }
    if !failures.is_empty() {
        panic!("CUDA kernel build failed:\n\n{}", failures.join("\n\n"));
    }
    write_table(&out_dir, &modules, true);
}

struct KernelSources {
    /// The `.cu` files, sorted: one PTX module each.
    cu: Vec<PathBuf>,
    /// Every file in kernels/ (sources and headers), for rerun-if-changed.
    all: Vec<PathBuf>,
}

fn list_kernel_dir(dir: &Path) -> KernelSources {
    let mut all = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                all.push(path);
            }
        }
    }
    all.sort();
    let cu = all
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .cloned()
        .collect();
    KernelSources { cu, all }
}

fn env_flag(name: &str) -> bool {
    matches!(
        env::var(name).as_deref().map(str::trim),
        Ok("1") | Ok("true") | Ok("yes") | Ok("on")
    )
}

fn non_empty_env(name: &str) -> Option<String> {
    env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on `PATH`. An `NVCC` that is set but points
/// nowhere is a build error: the user asked for that compiler explicitly.
fn find_nvcc() -> Option<PathBuf> {
    if let Some(nvcc) = non_empty_env("NVCC") {
        let as_path = PathBuf::from(&nvcc);
        let found = if as_path.components().count() > 1 {
            is_file(&as_path).then_some(as_path)
        } else {
            search_path(&nvcc)
        };
        return match found {
            Some(p) => Some(p),
            None => {
                panic!("NVCC={nvcc} is set but no such file exists; point NVCC at nvcc or unset it")
            }
        };
    }
    if let Some(home) = non_empty_env("CUDA_HOME") {
        let candidate = Path::new(&home).join("bin").join(exe("nvcc"));
        if is_file(&candidate) {
            return Some(candidate);
        }
    }
    search_path("nvcc")
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(exe(name)))
        .find(|p| is_file(p))
}

fn exe(name: &str) -> String {
    format!("{name}{}", env::consts::EXE_SUFFIX)
}

fn is_file(p: &Path) -> bool {
    fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
}

fn ptxas_beside(nvcc: &Path) -> PathBuf {
    let ptxas = nvcc.with_file_name(exe("ptxas"));
    if !is_file(&ptxas) {
        panic!(
            "found nvcc at {} but no ptxas beside it ({}); the CUDA build needs both from the same toolkit",
            nvcc.display(),
            ptxas.display()
        );
    }
    ptxas
}

/// Target architecture for nvcc and ptxas: `sm_NN` (optionally with an `a`/`f` suffix). A bare
/// number (`90`) means `sm_90`; `compute_NN` means `sm_NN`.
fn cuda_arch() -> String {
    let raw = non_empty_env("HANDCOV_CUDA_ARCH").unwrap_or_else(|| DEFAULT_ARCH.to_string());
    let lower = raw.to_ascii_lowercase();
    let digits = lower
        .strip_prefix("sm_")
        .or_else(|| lower.strip_prefix("compute_"))
        .unwrap_or(&lower);
    let number = digits.trim_end_matches(['a', 'f']);
    if number.len() < 2
        || !number.bytes().all(|b| b.is_ascii_digit())
        || digits.len() > number.len() + 1
    {
        panic!("HANDCOV_CUDA_ARCH={raw} is not a CUDA architecture; use e.g. sm_80, sm_89, sm_90 or sm_90a");
    }
    format!("sm_{digits}")
}

struct Compiled {
    name: String,
    ptx: PathBuf,
    /// ptxas -v's report (stdout + stderr).
    ptxas_log: String,
}

fn compile_one(
    nvcc: &Path,
    ptxas: &Path,
    arch: &str,
    kernel_dir: &Path,
    out_dir: &Path,
    src: &Path,
) -> Result<Compiled, String> {
    let name = src
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: file name is not UTF-8", src.display()))?
        .to_string();
    let ptx = out_dir.join(format!("{name}.ptx"));
    let cubin = out_dir.join(format!("{name}.cubin"));

    let mut cmd = Command::new(nvcc);
    cmd.arg("-ptx")
        .arg("-O3")
        .arg("--std=c++17")
        .arg("-lineinfo")
        .arg(format!("-arch={arch}"))
        .arg("-I")
        .arg(kernel_dir)
        .arg(src)
        .arg("-o")
        .arg(&ptx);
    let out = run(&mut cmd)?;
    if !out.status.success() {
        return Err(format!(
            "nvcc failed on {} ({}):\n{}",
            src.display(),
            out.status,
            output_text(&out)
        ));
    }

    // Assemble the PTX for the same arch: catches what nvcc -ptx lets through (register
    // limits, unsupported instructions) and reports registers and spills.
    let mut cmd = Command::new(ptxas);
    cmd.arg("-v")
        .arg(format!("-arch={arch}"))
        .arg(&ptx)
        .arg("-o")
        .arg(&cubin);
    let out = run(&mut cmd)?;
    let ptxas_log = output_text(&out);
    if !out.status.success() {
        return Err(format!(
            "ptxas failed on {} ({}):\n{}",
            ptx.display(),
            out.status,
            ptxas_log
        ));
    }
    Ok(Compiled {
        name,
        ptx,
        ptxas_log,
    })
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    cmd.output()
        .map_err(|e| format!("could not run {:?}: {e}", cmd.get_program()))
}

fn output_text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s
}

/// Prints ptxas warnings always, the register/spill report with HANDCOV_PTXAS_VERBOSE=1, and a
/// warning for every function that spills, always.
fn report_ptxas(compiled: &Compiled, verbose: bool) {
    let mut function = String::from("?");
    for line in compiled.ptxas_log.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            function = rest.trim().to_string();
        }
        if verbose || line.contains("warning") {
            println!("cargo:warning=ptxas {}: {line}", compiled.name);
        }
        let (stores, loads) = spill_bytes(line);
        if stores > 0 || loads > 0 {
            println!(
                "cargo:warning=register spill in {} (kernels/{}.cu): {stores} bytes spill stores, {loads} bytes spill loads",
                function, compiled.name
            );
        }
    }
}

/// Parses "..., N bytes spill stores, M bytes spill loads" → (N, M); (0, 0) for other lines.
fn spill_bytes(line: &str) -> (u64, u64) {
    let number_before = |key: &str| -> u64 {
        line.find(key)
            .and_then(|i| line[..i].trim_end().strip_suffix("bytes"))
            .and_then(|s| s.trim_end().rsplit([' ', ',']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (number_before("spill stores"), number_before("spill loads"))
}

fn write_table(out_dir: &Path, modules: &[(String, PathBuf)], built: bool) {
    let mut s = String::from(
        "// Generated by build.rs: the PTX of every kernels/*.cu, by module name (file stem).\n",
    );
    s.push_str("pub const PTX_MODULES: &[(&str, &str)] = &[\n");
    for (name, ptx) in modules {
        let path = ptx.to_str().expect("OUT_DIR path is not UTF-8");
        writeln!(s, "    ({name:?}, include_str!({path:?})),").unwrap();
    }
    s.push_str("];\n");
    writeln!(s, "pub const KERNELS_BUILT: bool = {built};").unwrap();
    let target = out_dir.join("kernels.rs");
    fs::write(&target, s).unwrap_or_else(|e| panic!("cannot write {}: {e}", target.display()));
}
