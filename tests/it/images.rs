//! Builds OCI image layouts on disk without any network: gzip tar layers, a config, manifests,
//! and for multi-arch images an index. Real clients (skopeo, podman) then push and pull them.

use crate::harness::{digest, random_bytes};
use serde_json::json;
use std::io::Write;
use std::path::Path;

/// What was written: the digest of the top manifest (or index), of each platform manifest,
/// and the skopeo reference of the source.
pub struct BuiltImage {
    pub top: String,
    pub platforms: Vec<String>,
    pub source: String,
}

/// A tar archive holding one regular file, written by hand (ustar).
fn tar_one_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], v: u64| {
        let s = format!("{:0width$o}\0", v, width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], content.len() as u64);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| *b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Writes a blob where the layout keeps it: `blobs/sha256/<hex>` (OCI layout) or `<hex>` (skopeo's dir: layout).
fn write_blob(dir: &Path, bytes: &[u8], docker: bool) -> String {
    let d = digest(bytes);
    let hex = d.trim_start_matches("sha256:");
    let path = if docker { dir.join(hex) } else { dir.join("blobs/sha256").join(hex) };
    std::fs::write(path, bytes).unwrap();
    d
}

/// Writes an image under `dir` with `tag` naming either one image (one platform) or an
/// index of several platforms. With `docker`, Docker schema 2 media types in skopeo's `dir:`
/// layout (skopeo 1.9 reads only OCI types from an OCI layout); otherwise an OCI layout.
pub fn build_layout(
    dir: &Path,
    tag: &str,
    platforms: &[&str],
    layer_size: usize,
    docker: bool,
    seed: u64,
) -> BuiltImage {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    if docker {
        std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").unwrap();
    } else {
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }
    let (manifest_mt, config_mt, layer_mt, index_mt) = if docker {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.index.v1+json",
        )
    };
    let mut descriptors = Vec::new();
    let mut platform_digests = Vec::new();
    for (i, arch) in platforms.iter().enumerate() {
        let content = random_bytes(layer_size, seed * 100 + i as u64);
        let tar = tar_one_file(&format!("{arch}.bin"), &content);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let layer = gz.finish().unwrap();
        let layer_digest = write_blob(dir, &layer, docker);
        let config = serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [digest(&tar)]},
            "history": [{"created_by": "ferry test"}],
        }))
        .unwrap();
        let config_digest = write_blob(dir, &config, docker);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": manifest_mt,
            "config": {"mediaType": config_mt, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": layer_mt, "digest": layer_digest, "size": layer.len()}],
        }))
        .unwrap();
        let manifest_digest = digest(&manifest);
        if docker {
            let name = if platforms.len() == 1 {
                "manifest.json".to_owned()
            } else {
                format!("{}.manifest.json", &manifest_digest[7..])
            };
            std::fs::write(dir.join(name), &manifest).unwrap();
        } else {
            write_blob(dir, &manifest, false);
        }
        platform_digests.push(manifest_digest.clone());
        descriptors.push(json!({
            "mediaType": manifest_mt, "digest": manifest_digest, "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let (top_mt, top_digest, top_size) = if platforms.len() == 1 {
        let d = &descriptors[0];
        (manifest_mt, d["digest"].as_str().unwrap().to_owned(), d["size"].as_u64().unwrap() as usize)
    } else {
        let index =
            serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": index_mt, "manifests": descriptors})).unwrap();
        let d = if docker {
            std::fs::write(dir.join("manifest.json"), &index).unwrap();
            digest(&index)
        } else {
            write_blob(dir, &index, false)
        };
        (index_mt, d, index.len())
    };
    if docker {
        return BuiltImage { top: top_digest, platforms: platform_digests, source: format!("dir:{}", dir.display()) };
    }
    let layout_index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": top_mt, "digest": top_digest, "size": top_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&layout_index).unwrap()).unwrap();
    BuiltImage { top: top_digest, platforms: platform_digests, source: format!("oci:{}:{tag}", dir.display()) }
}
