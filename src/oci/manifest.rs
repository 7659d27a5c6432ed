//! Manifest media types, and parsing with the checks the registry makes before storing one.

use super::Digest;
use serde::{Deserialize, Serialize};

/// The largest manifest accepted or fetched, as the distribution spec suggests.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The manifest media types Ferry understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// `application/vnd.oci.image.manifest.v1+json`
    OciManifest,
    /// `application/vnd.oci.image.index.v1+json`
    OciIndex,
    /// `application/vnd.docker.distribution.manifest.v2+json`
    DockerManifest,
    /// `application/vnd.docker.distribution.manifest.list.v2+json`
    DockerManifestList,
    /// `application/vnd.docker.distribution.manifest.v1+json` (schema 1, stored as opaque JSON)
    DockerSchema1,
    /// `application/vnd.docker.distribution.manifest.v1+prettyjws` (signed schema 1, opaque JSON)
    DockerSchema1Signed,
}

impl MediaType {
    /// Every manifest media type, for `Accept` headers.
    pub const ALL: [MediaType; 6] = [
        Self::OciManifest,
        Self::OciIndex,
        Self::DockerManifest,
        Self::DockerManifestList,
        Self::DockerSchema1Signed,
        Self::DockerSchema1,
    ];

    /// The media type string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OciManifest => "application/vnd.oci.image.manifest.v1+json",
            Self::OciIndex => "application/vnd.oci.image.index.v1+json",
            Self::DockerManifest => "application/vnd.docker.distribution.manifest.v2+json",
            Self::DockerManifestList => "application/vnd.docker.distribution.manifest.list.v2+json",
            Self::DockerSchema1 => "application/vnd.docker.distribution.manifest.v1+json",
            Self::DockerSchema1Signed => "application/vnd.docker.distribution.manifest.v1+prettyjws",
        }
    }

    /// Parses a media type, ignoring parameters such as `; charset=utf-8`.
    pub fn parse(s: &str) -> Option<Self> {
        let base = s.split(';').next().unwrap_or("").trim();
        Self::ALL.into_iter().find(|m| m.as_str().eq_ignore_ascii_case(base))
    }

    /// True for types that list child manifests rather than layers.
    pub fn is_index(self) -> bool {
        matches!(self, Self::OciIndex | Self::DockerManifestList)
    }

    /// True for Docker schema 1, whose content is not inspected.
    pub fn is_schema1(self) -> bool {
        matches!(self, Self::DockerSchema1 | Self::DockerSchema1Signed)
    }
}

/// A content descriptor, as it appears in manifests and the referrers index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: String,
    /// The digest of the referenced content.
    pub digest: Digest,
    /// The size in bytes.
    pub size: u64,
    /// External URLs (Docker foreign layers, which are never pushed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// The artifact type, for referrers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
    /// Platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// The fields of a manifest or index that the registry checks.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Entry>>,
    manifests: Option<Vec<Entry>>,
    subject: Option<Descriptor>,
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A layer or index entry as the registry checks it: the descriptor's required fields are
/// type-checked, but only the digest (and whether it is a foreign layer) is kept, so a
/// manifest of many entries costs little more memory than its bytes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    #[serde(rename = "mediaType")]
    _media_type: AnyString,
    digest: Digest,
    #[serde(rename = "size")]
    _size: u64,
    #[serde(default)]
    urls: Option<serde::de::IgnoredAny>,
}

/// A JSON string that is checked but not kept.
#[derive(Debug)]
struct AnyString;

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = AnyString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<AnyString, E> {
                Ok(AnyString)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// The fields of a Docker schema 1 manifest, and the schema 2 / OCI ones it must not carry
/// (a body that has them is something else sent under a schema 1 Content-Type).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSchema1 {
    schema_version: Option<i64>,
    name: Option<String>,
    tag: Option<String>,
    fs_layers: Option<Vec<FsLayer>>,
    history: Option<Vec<serde::de::IgnoredAny>>,
    signatures: Option<Vec<serde::de::IgnoredAny>>,
    media_type: Option<serde::de::IgnoredAny>,
    config: Option<serde::de::IgnoredAny>,
    layers: Option<serde::de::IgnoredAny>,
    manifests: Option<serde::de::IgnoredAny>,
    subject: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FsLayer {
    blob_sum: Digest,
}

/// A parsed, checked manifest: what it references and what describes it.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its media type.
    pub media_type: MediaType,
    /// Blobs it references (config and layers), excluding foreign layers that carry `urls`.
    pub blobs: Vec<Digest>,
    /// Child manifests it references (index entries).
    pub children: Vec<Digest>,
    /// The manifest it refers to, if any.
    pub subject: Option<Descriptor>,
    /// `artifactType`, else the config media type (what the referrers API reports).
    pub artifact_type: Option<String>,
    /// Top-level annotations.
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or fields of the wrong type.
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    /// No usable media type, or one Ferry does not serve.
    #[error("{0}")]
    MediaType(String),
    /// Structurally wrong.
    #[error("{0}")]
    Invalid(String),
}

impl Manifest {
    /// Checks a schema 1 manifest as schema 1: `schemaVersion` 1, a name and tag, one history
    /// entry per layer, signatures when it says it is signed, and nothing of schema 2 or OCI.
    /// Its layers (`blobSum`s) are what it references.
    fn parse_schema1(bytes: &[u8], media_type: MediaType) -> Result<Self, ManifestError> {
        let raw: RawSchema1 = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        let invalid = |m: &str| Err(ManifestError::Invalid(format!("schema 1 manifest: {m}")));
        if raw.schema_version != Some(1) {
            return invalid("schemaVersion must be 1");
        }
        if raw.media_type.is_some()
            || raw.config.is_some()
            || raw.layers.is_some()
            || raw.manifests.is_some()
            || raw.subject.is_some()
        {
            return invalid("mediaType, config, layers, manifests and subject belong to other manifest types");
        }
        if raw.name.as_deref().is_none_or(str::is_empty) || raw.tag.as_deref().is_none_or(str::is_empty) {
            return invalid("name and tag are required");
        }
        let Some(fs_layers) = raw.fs_layers.filter(|l| !l.is_empty()) else {
            return invalid("fsLayers must list at least one layer");
        };
        if raw.history.map(|h| h.len()) != Some(fs_layers.len()) {
            return invalid("history must have one entry per fsLayers entry");
        }
        if media_type == MediaType::DockerSchema1Signed && raw.signatures.is_none_or(|s| s.is_empty()) {
            return invalid("a signed manifest needs signatures");
        }
        Ok(Self {
            media_type,
            blobs: fs_layers.into_iter().map(|l| l.blob_sum).collect(),
            children: vec![],
            subject: None,
            artifact_type: None,
            annotations: None,
        })
    }

    /// Parses `bytes` sent with `content_type`, checking that the two agree and the structure is sound.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self, ManifestError> {
        let header_type = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| !c.is_empty() && *c != "application/octet-stream" && *c != "application/json");
        if let Some(t) = header_type {
            if let Some(m) = MediaType::parse(t).filter(|m| m.is_schema1()) {
                return Self::parse_schema1(bytes, m);
            }
        }
        let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError::Invalid("schemaVersion must be 2".into()));
        }
        let body_type = raw.media_type.as_deref();
        let media_type = match (header_type, body_type) {
            (Some(h), Some(b)) if !h.eq_ignore_ascii_case(b) => {
                return Err(ManifestError::MediaType(format!(
                    "Content-Type {h} does not match the manifest's mediaType {b}"
                )))
            }
            (Some(t), _) | (None, Some(t)) => MediaType::parse(t)
                .ok_or_else(|| ManifestError::MediaType(format!("unsupported manifest media type {t}")))?,
            (None, None) if raw.manifests.is_some() => MediaType::OciIndex,
            (None, None) => MediaType::OciManifest,
        };
        if media_type.is_schema1() {
            return Err(ManifestError::MediaType("schema 1 manifests must be sent with their Content-Type".into()));
        }
        if raw.manifests.is_some() && (raw.layers.is_some() || raw.config.is_some()) {
            return Err(ManifestError::Invalid("a manifest cannot have both manifests and layers or config".into()));
        }
        let mut blobs = Vec::new();
        let mut children = Vec::new();
        if media_type.is_index() {
            let manifests =
                raw.manifests.ok_or_else(|| ManifestError::Invalid("an index needs a manifests array".into()))?;
            children.extend(manifests.into_iter().map(|d| d.digest));
        } else {
            if raw.manifests.is_some() {
                return Err(ManifestError::Invalid(format!("{} cannot have manifests", media_type.as_str())));
            }
            let config = raw
                .config
                .ok_or_else(|| ManifestError::Invalid("an image manifest needs a config descriptor".into()))?;
            let layers =
                raw.layers.ok_or_else(|| ManifestError::Invalid("an image manifest needs a layers array".into()))?;
            blobs.push(config.digest.clone());
            blobs.extend(layers.into_iter().filter(|l| l.urls.is_none()).map(|l| l.digest));
            let artifact_type = raw.artifact_type.clone().or(Some(config.media_type));
            return Ok(Self {
                media_type,
                blobs,
                children,
                subject: raw.subject,
                artifact_type,
                annotations: raw.annotations,
            });
        }
        Ok(Self {
            media_type,
            blobs,
            children,
            subject: raw.subject,
            artifact_type: raw.artifact_type,
            annotations: raw.annotations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn parses_image_manifest_and_checks_media_type() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d('a'), "size": 2},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d('b'), "size": 3},
                {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": d('c'), "size": 3, "urls": ["https://x"]}
            ],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d('d'), "size": 9}
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        let m = Manifest::parse(&bytes, Some("application/vnd.oci.image.manifest.v1+json")).unwrap();
        assert_eq!(m.blobs.len(), 2, "foreign layers are not required");
        assert_eq!(m.subject.unwrap().digest.to_string(), d('d'));
        assert_eq!(m.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
        assert!(matches!(
            Manifest::parse(&bytes, Some("application/vnd.oci.image.index.v1+json")),
            Err(ManifestError::MediaType(_))
        ));
    }

    #[test]
    fn rejects_bad_documents() {
        assert!(Manifest::parse(b"{", None).is_err());
        assert!(Manifest::parse(b"[]", None).is_err());
        let both = serde_json::json!({"schemaVersion":2,"manifests":[],"layers":[],"config":{"mediaType":"x","digest":d('a'),"size":1}});
        assert!(Manifest::parse(&serde_json::to_vec(&both).unwrap(), None).is_err());
        let bad_digest = serde_json::json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"x","digest":"sha256:zz","size":1}]});
        assert!(Manifest::parse(&serde_json::to_vec(&bad_digest).unwrap(), None).is_err());
        let unknown = serde_json::json!({"schemaVersion":2,"mediaType":"text/plain","manifests":[]});
        assert!(Manifest::parse(&serde_json::to_vec(&unknown).unwrap(), None).is_err());
        let index = serde_json::json!({"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"x","digest":d('e'),"size":1}]});
        let m = Manifest::parse(&serde_json::to_vec(&index).unwrap(), None).unwrap();
        assert_eq!(m.children.len(), 1);
    }

    #[test]
    fn schema1_is_checked_as_schema1() {
        let signed = "application/vnd.docker.distribution.manifest.v1+prettyjws";
        let unsigned = "application/vnd.docker.distribution.manifest.v1+json";
        let good = serde_json::json!({
            "schemaVersion": 1, "name": "a/b", "tag": "v1", "architecture": "amd64",
            "fsLayers": [{"blobSum": d('a')}, {"blobSum": d('a')}],
            "history": [{"v1Compatibility": "{}"}, {"v1Compatibility": "{}"}],
            "signatures": [{"header": {}, "signature": "x", "protected": "y"}]
        });
        let m = Manifest::parse(&serde_json::to_vec(&good).unwrap(), Some(signed)).unwrap();
        assert_eq!(m.media_type, MediaType::DockerSchema1Signed);
        assert_eq!(m.blobs.len(), 2, "its layers are references to check");
        // The CVE-2021-41190 shape: an index with layers, sent as schema 1.
        let smuggled = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "x", "digest": d('b'), "size": 1}],
            "layers": [{"mediaType": "x", "digest": d('c'), "size": 1}]
        });
        for ct in [signed, unsigned] {
            assert!(Manifest::parse(&serde_json::to_vec(&smuggled).unwrap(), Some(ct)).is_err(), "{ct}");
        }
        let mut with_layers = good.clone();
        with_layers["layers"] = serde_json::json!([]);
        assert!(Manifest::parse(&serde_json::to_vec(&with_layers).unwrap(), Some(unsigned)).is_err());
        let mut unsigned_body = good.clone();
        unsigned_body.as_object_mut().unwrap().remove("signatures");
        assert!(Manifest::parse(&serde_json::to_vec(&unsigned_body).unwrap(), Some(unsigned)).is_ok());
        assert!(Manifest::parse(&serde_json::to_vec(&unsigned_body).unwrap(), Some(signed)).is_err());
        let mut short_history = good.clone();
        short_history["history"] = serde_json::json!([{"v1Compatibility": "{}"}]);
        assert!(Manifest::parse(&serde_json::to_vec(&short_history).unwrap(), Some(signed)).is_err());
        let mut bad_sum = good;
        bad_sum["fsLayers"] = serde_json::json!([{"blobSum": "sha256:../../x"}]);
        bad_sum["history"] = serde_json::json!([{}]);
        assert!(Manifest::parse(&serde_json::to_vec(&bad_sum).unwrap(), Some(signed)).is_err());
        assert!(Manifest::parse(b"{\"signatures\":[]}", Some(signed)).is_err());
    }
}
