//! Unpack a module image's `imageroot/` (NS8's `extract-image`): the image is copied
//! from its registry with skopeo and its layers are applied in order, OCI whiteouts
//! included, into a fresh directory. Nothing runs from the image while doing so.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Copy `image` (verifying TLS except for a loopback registry) and write its
/// `imageroot/` to `dest`, which must not exist yet. Returns the manifest digest.
pub fn imageroot(image: &str, dest: &Path) -> Result<String, String> {
    if dest.exists() {
        return Err(format!("{} already exists", dest.display()));
    }
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let copy = work.path().join("image");
    protocol::image::parse_reference(image)?;
    let digest_file = work.path().join("digest");
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--preserve-digests", "--command-timeout", "300s", "--digestfile"]).arg(&digest_file);
    if protocol::image::on_loopback_registry(image) {
        cmd.arg("--src-tls-verify=false");
    }
    cmd.arg(format!("docker://{image}")).arg(format!("dir:{}", copy.display()));
    run(&mut cmd).map_err(|e| format!("cannot pull {image}: {e}"))?;
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(copy.join("manifest.json")).map_err(|e| format!("no manifest: {e}"))?,
    )
    .map_err(|e| format!("bad manifest: {e}"))?;
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        let blob = layer["digest"].as_str().unwrap_or("").trim_start_matches("sha256:");
        apply_layer(&copy.join(blob), &root)?;
    }
    let from = root.join("imageroot");
    if !from.is_dir() {
        return Err(format!("image {image} has no imageroot/ directory: it is not a module image"));
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    run(Command::new("cp").arg("-a").arg(&from).arg(dest))?;
    let digest = std::fs::read_to_string(&digest_file).map_err(|e| format!("skopeo wrote no digest: {e}"))?;
    Ok(digest.trim().to_owned())
}

/// Untar one layer over `root`, then apply its whiteouts (`.wh.<name>` deletes
/// `<name>`, `.wh..wh..opq` empties its directory of what lower layers put there).
fn apply_layer(blob: &Path, root: &Path) -> Result<(), String> {
    let listing = Command::new("tar").arg("-tzf").arg(blob).output().map_err(|e| e.to_string())?;
    if !listing.status.success() {
        return Err(format!("layer {} is not a gzip tarball", blob.display()));
    }
    let names: Vec<String> = String::from_utf8_lossy(&listing.stdout).lines().map(str::to_owned).collect();
    if names.iter().any(|n| n.starts_with('/') || n.split('/').any(|p| p == "..")) {
        return Err(format!("layer {} has paths outside the image", blob.display()));
    }
    let whiteouts: Vec<PathBuf> = names
        .iter()
        .filter(|n| n.rsplit('/').find(|p| !p.is_empty()).is_some_and(|b| b.starts_with(".wh.")))
        .map(PathBuf::from)
        .collect();
    for w in &whiteouts {
        let base = w.file_name().and_then(|b| b.to_str()).unwrap_or("");
        let dir = root.join(w.parent().unwrap_or(Path::new("")));
        if base == ".wh..wh..opq" {
            let _ = std::fs::remove_dir_all(&dir);
        } else if let Some(target) = base.strip_prefix(".wh.") {
            let t = dir.join(target);
            let _ = std::fs::remove_dir_all(&t).or_else(|_| std::fs::remove_file(&t));
        }
    }
    run(Command::new("tar").args(["-xzf"]).arg(blob).arg("-C").arg(root).args([
        "--no-same-owner",
        "--exclude=.wh.*",
        "--exclude=*/.wh.*",
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let src = dir.join(format!("{name}-src"));
        for (path, body) in files {
            let p = src.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        let blob = dir.join(name);
        run(Command::new("tar").arg("-czf").arg(&blob).arg("-C").arg(&src).arg(".")).unwrap();
        blob
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let l1 = layer(
            dir.path(),
            "l1",
            &[("imageroot/actions/a/10a", "old"), ("imageroot/gone", "x"), ("imageroot/opaque/old", "x")],
        );
        let l2 = layer(
            dir.path(),
            "l2",
            &[
                ("imageroot/actions/a/10a", "new"),
                ("imageroot/.wh.gone", ""),
                ("imageroot/opaque/.wh..wh..opq", ""),
                ("imageroot/opaque/fresh", "y"),
            ],
        );
        apply_layer(&l1, &root).unwrap();
        apply_layer(&l2, &root).unwrap();
        let ir = root.join("imageroot");
        assert_eq!(std::fs::read_to_string(ir.join("actions/a/10a")).unwrap(), "new");
        assert!(!ir.join("gone").exists() && !ir.join(".wh.gone").exists());
        assert!(!ir.join("opaque/old").exists() && ir.join("opaque/fresh").exists());
        assert!(!ir.join("opaque/.wh..wh..opq").exists());
        let not_gzip = dir.path().join("plain");
        std::fs::write(&not_gzip, "not a tarball").unwrap();
        assert!(apply_layer(&not_gzip, &root).unwrap_err().contains("not a gzip tarball"));
    }
}
