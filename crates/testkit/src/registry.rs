//! A private OCI registry (Debian's `docker-registry`) on a free loopback port (or a
//! given address: a LAN registry as a container sees it), with its storage in a temp
//! dir: what a software repository's image store is, for tests and benchmarks. Killed
//! on drop.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct Registry {
    dir: tempfile::TempDir,
    child: Option<Child>,
    ip: IpAddr,
    port: u16,
}

impl Registry {
    pub fn start() -> Result<Self> {
        Self::start_on(Ipv4Addr::LOCALHOST.into())
    }

    /// On a free port of `ip`, an address of this machine.
    pub fn start_on(ip: IpAddr) -> Result<Self> {
        let mut last = None;
        // The free port is found by binding and releasing it; another process may take
        // it in between, so try a few.
        for _ in 0..3 {
            match Self::try_start(ip) {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn try_start(ip: IpAddr) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind((ip, 0))?.local_addr()?.port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {}\n",
                dir.path().join("data").display(),
                std::net::SocketAddr::new(ip, port)
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start docker-registry: is the docker-registry package installed?")?;
        let mut registry = Registry { dir, child: Some(child), ip, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if registry.get("/v2/").is_ok_and(|(status, _)| status == 200) {
                return Ok(registry);
            }
            if let Some(status) = registry.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("docker-registry exited with {status}: {}", registry.log());
            }
            if Instant::now() > deadline {
                bail!("docker-registry on port {port} did not answer within 15 s: {}", registry.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:<port>` (or the address given), the host part of image names pushed here.
    pub fn host(&self) -> String {
        std::net::SocketAddr::new(self.ip, self.port).to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// A plain HTTP GET on the registry API: status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut s = TcpStream::connect((self.ip, self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.host())?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        let status = reply.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body))
    }
}

/// `sha256:<hex>` of `data`, as OCI names blobs.
pub fn oci_digest(data: &[u8]) -> String {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Write an image of `layers` (uncompressed tar archives, each pushed gzipped) with
/// `labels` as an OCI layout under `work`, and push it with skopeo to the registry at
/// `host` (`127.0.0.1:<port>`) as `ns8rs/<name>:<tag>`: its URL and the layers' digests
/// as the registry has them.
pub fn push_oci(
    host: &str,
    work: &std::path::Path,
    name: &str,
    tag: &str,
    labels: &serde_json::Value,
    layers: &[Vec<u8>],
) -> Result<(String, Vec<String>)> {
    use serde_json::json;
    let dir = work.join(format!("{name}-{tag}"));
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;
    let put = |data: &[u8]| -> Result<(String, usize)> {
        let digest = oci_digest(data);
        let path = blobs.join(digest.trim_start_matches("sha256:"));
        std::fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))?;
        Ok((digest, data.len()))
    };
    let (mut descs, mut diff_ids, mut digests) = (Vec::new(), Vec::new(), Vec::new());
    for tar in layers {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(tar)?;
        let (digest, size) = put(&z.finish()?)?;
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}));
        diff_ids.push(oci_digest(tar));
        digests.push(digest);
    }
    let arch = if std::env::consts::ARCH == "aarch64" { "arm64" } else { "amd64" };
    let config = json!({"architecture": arch, "os": "linux", "config": {"Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (cdigest, csize) = put(config.to_string().as_bytes())?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
        "layers": descs,
    });
    let (mdigest, msize) = put(manifest.to_string().as_bytes())?;
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": msize,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), index.to_string())?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#)?;
    let url = format!("{host}/ns8rs/{name}:{tag}");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", dir.display()))
        .arg(format!("docker://{url}"))
        .output()
        .context("cannot run skopeo")?;
    if !out.status.success() {
        bail!("skopeo copy to {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok((url, digests))
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_lists_nothing() {
        let r = Registry::start().unwrap();
        let (status, body) = r.get("/v2/_catalog").unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"repositories\":[]"), "{body}");
    }
}
