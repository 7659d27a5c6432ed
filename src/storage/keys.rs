//! The storage layout. Keys are built here, and only from validated names, tags and digests,
//! so no client string ever becomes a path.

use crate::oci::{Digest, RepositoryName, Tag};
use std::fmt;

/// A record key such as `repos/team-a/app/_tags/latest`, relative to the store's root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    /// The key as a `/`-separated relative path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `catalog`: one entry per repository, for listing them in a single read.
    pub fn catalog() -> Self {
        Self("catalog".into())
    }

    /// `catalog/<name with / as +>`: marks that a repository exists.
    pub fn catalog_entry(name: &RepositoryName) -> Self {
        Self(format!("catalog/{}", encode_name(name)))
    }

    /// `leases/<name>`: who holds a background job's lease (see [`super::lease`]).
    pub fn lease(name: &'static str) -> Self {
        Self(format!("leases/{name}"))
    }

    /// `auth/token-key`: the key registry passwords are signed with, created once.
    pub fn auth_token_key() -> Self {
        Self("auth/token-key".into())
    }

    /// `uses/<alg>/<2 hex>/<hex>`: when the content was last used, or that a collector is
    /// removing it (see [`super::uses`]); fanned out as content is, so no one directory takes
    /// every create and unlink.
    pub fn content_use(digest: &Digest) -> Self {
        Self(format!("uses/{}/{}/{}", digest.algorithm().as_str(), fanout(digest), digest.hex()))
    }

    /// `gc/claims/<alg>/<2 hex>`: a collector is removing unused content (or links) whose
    /// digests start with those two hex digits (see [`super::uses`]).
    pub fn batch_claim(digest: &Digest) -> Self {
        Self(format!("gc/claims/{}/{}", digest.algorithm().as_str(), fanout(digest)))
    }

    /// `gc/claims/links`: a collector is removing dangling blob links (of any digest; see
    /// [`super::uses`]).
    pub fn links_claim() -> Self {
        Self("gc/claims/links".into())
    }

    /// `gc/usage`: what the last collection measured (stored bytes and objects), for every
    /// replica's metrics.
    pub fn gc_usage() -> Self {
        Self("gc/usage".into())
    }

    /// `replication/config`: the registry's replication configuration.
    pub fn replication_configuration() -> Self {
        Self("replication/config".into())
    }

    /// `pull-through/rules`: the pull-through cache rules created through the ECR API, all in
    /// one record so that one conditional write decides between racing changes.
    pub fn pull_through_rules() -> Self {
        Self("pull-through/rules".into())
    }

    /// `registry/scanning`: the registry's scanning configuration.
    pub fn scanning_configuration() -> Self {
        Self("registry/scanning".into())
    }

    /// `registry/account-settings`: ECR's account settings that were set.
    pub fn account_settings() -> Self {
        Self("registry/account-settings".into())
    }

    /// `replication/registry-policy`: the registry policy's text.
    pub fn registry_policy() -> Self {
        Self("replication/registry-policy".into())
    }

    /// `replication/events`: push events waiting to be replicated.
    pub fn replication_events() -> Self {
        Self("replication/events".into())
    }

    /// `webhooks/<receiver>`: the events waiting to be delivered to one webhook receiver.
    pub fn webhook_events(receiver: &str) -> Self {
        Self(format!("webhooks/{receiver}"))
    }

    /// `webhooks/<receiver>/<id>`: one event and its delivery attempts.
    pub fn webhook_event(receiver: &str, id: &EventId) -> Self {
        Self(format!("webhooks/{receiver}/{id}"))
    }

    /// `replication/events/<id>`: one push event and each destination's progress.
    pub fn replication_event(id: &EventId) -> Self {
        Self(format!("replication/events/{id}"))
    }

    /// `leases/replication-<sha256 of "<name>@<digest>">`: which replica is copying that image
    /// (one lease per image, so two events of one image are never copied at once).
    pub fn replication_lease(name: &RepositoryName, digest: &Digest) -> Self {
        use sha2::Digest as _;
        let image = sha2::Sha256::digest(format!("{name}@{digest}").as_bytes());
        Self(format!("leases/replication-{}", hex::encode(image)))
    }

    /// `repos/<name>/_replication/<alg>/<hex>`: the image's status at each destination.
    pub fn replication_status(name: &RepositoryName, digest: &Digest) -> Self {
        Self(format!("repos/{name}/_replication/{}/{}", digest.algorithm().as_str(), digest.hex()))
    }

    /// `replication/backfills`: the replication backfills kept.
    pub fn replication_backfills() -> Self {
        Self("replication/backfills".into())
    }

    /// `replication/backfills/<uuid>`: one backfill.
    pub fn replication_backfill(id: &uuid::Uuid) -> Self {
        Self(format!("replication/backfills/{}", id.as_hyphenated()))
    }

    /// `replication/backfill-active/<region>`: the backfill in progress to that region. A
    /// region is `[0-9a-z-]{2,25}` wherever it comes from; anything else is replaced, so no
    /// string becomes a path.
    pub fn replication_backfill_active(region: &str) -> Self {
        let safe: String = region
            .chars()
            .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' { c } else { '_' })
            .collect();
        Self(format!("replication/backfill-active/{safe}"))
    }

    /// `templates`: the repository creation templates.
    pub fn creation_templates() -> Self {
        Self("templates".into())
    }

    /// `templates/<prefix with / as +>`: one repository creation template (`ROOT`, or a
    /// namespace prefix already checked against ECR's pattern).
    pub fn creation_template(encoded_prefix: &str) -> Self {
        Self(format!("templates/{encoded_prefix}"))
    }

    /// Whether losing this record's latest write in a power cut is safe, so the filesystem
    /// store need not fsync it: use records (`uses/`). Content is still protected by its own
    /// age; the worst a lost touch does is let a collection after the crash remove a blob link
    /// uploaded just before it that no manifest names yet (the manifest PUT then gets
    /// `MANIFEST_BLOB_UNKNOWN` and the client pushes the blob again); a lost claim belonged to
    /// a collector that died with it (see [`super::uses`]).
    pub fn is_volatile(&self) -> bool {
        self.0.starts_with("uses/")
    }

    /// Whether this is a tag record (mutable, so cached only briefly).
    pub fn is_tag(&self) -> bool {
        self.0.starts_with("repos/") && self.0.contains("/_tags/")
    }

    /// `repos/<name>/_blobs/<alg>/<hex>`: the repository may serve that blob.
    pub fn blob_link(name: &RepositoryName, digest: &Digest) -> Self {
        Self(format!("repos/{name}/_blobs/{}/{}", digest.algorithm().as_str(), digest.hex()))
    }

    /// `repos/<name>/_manifests/<alg>/<hex>`: the repository holds that manifest (value: its media type).
    pub fn manifest_link(name: &RepositoryName, digest: &Digest) -> Self {
        Self(format!("repos/{name}/_manifests/{}/{}", digest.algorithm().as_str(), digest.hex()))
    }

    /// `repos/<name>/_meta`: the repository's settings (mutability, tags, policy).
    pub fn repository_settings(name: &RepositoryName) -> Self {
        Self(format!("repos/{name}/_meta"))
    }

    /// `repos/<name>/_manifests/sha256`: every manifest the repository holds.
    pub fn manifest_links(name: &RepositoryName) -> Self {
        Self(format!("repos/{name}/_manifests/sha256"))
    }

    /// `repos/<name>/_blobs/sha256`: every blob the repository may serve.
    pub fn blob_links(name: &RepositoryName) -> Self {
        Self(format!("repos/{name}/_blobs/sha256"))
    }

    /// `repos/<name>/_referrers/sha256`: every subject with referrers.
    pub fn all_referrers(name: &RepositoryName) -> Self {
        Self(format!("repos/{name}/_referrers/sha256"))
    }

    /// `repos/<name>/_index`: present once every manifest link of the repository carries the
    /// image index (its tags; see [`crate::registry`]'s `index`).
    pub fn image_index(name: &RepositoryName) -> Self {
        Self(format!("repos/{name}/_index"))
    }

    /// `index-journal`: tag moves whose index update may not have finished.
    pub fn index_journal() -> Self {
        Self("index-journal".into())
    }

    /// `index-journal/<name with / as +>@<tag>@<id>`: one move of `tag` in `name` in progress.
    pub fn index_journal_entry(name: &RepositoryName, tag: &Tag, id: &EventId) -> Self {
        Self(format!("index-journal/{}@{tag}@{id}", encode_name(name)))
    }

    /// `repos/<name>/_pulls/<alg>/<hex>`: when the image was last pulled (ms since the epoch,
    /// recorded at most hourly; see [`crate::registry::pulls`]).
    pub fn image_pull(name: &RepositoryName, digest: &Digest) -> Self {
        Self(format!("repos/{name}/_pulls/{}/{}", digest.algorithm().as_str(), digest.hex()))
    }

    /// `repos/<name>/_pulls/sha256`: every image's pull record.
    pub fn image_pulls(name: &RepositoryName) -> Self {
        Self(format!("repos/{name}/_pulls/sha256"))
    }

    /// `repos/<name>/_lifecycle`: the repository's lifecycle policy and when it last ran.
    pub fn lifecycle_policy(name: &RepositoryName) -> Self {
        Self(format!("repos/{name}/_lifecycle"))
    }

    /// `repos/<name>/_lifecycle-preview`: the last lifecycle policy preview's results.
    pub fn lifecycle_preview(name: &RepositoryName) -> Self {
        Self(format!("repos/{name}/_lifecycle-preview"))
    }

    /// `repos/<name>/_tags/<tag>`: the tag's current manifest.
    pub fn tag(name: &RepositoryName, tag: &Tag) -> Self {
        Self(format!("repos/{name}/_tags/{tag}"))
    }

    /// `repos/<name>/_tags`: every tag of a repository.
    pub fn tags(name: &RepositoryName) -> Self {
        Self(format!("repos/{name}/_tags"))
    }

    /// `repos/<name>/_referrers/<alg>/<hex>`: the manifests whose subject is `subject`.
    pub fn referrers(name: &RepositoryName, subject: &Digest) -> Self {
        Self(format!("repos/{name}/_referrers/{}/{}", subject.algorithm().as_str(), subject.hex()))
    }

    /// `repos/<name>/_referrers/<alg>/<hex>/<referrer digest>`: one referrer's descriptor.
    pub fn referrer(name: &RepositoryName, subject: &Digest, referrer: &Digest) -> Self {
        Self(format!("{}/{referrer}", Self::referrers(name, subject).0))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `/` cannot appear in a file name; `+` cannot appear in a repository name, so it stands in.
/// The two hex digits content and use records are fanned out by.
pub fn fanout(digest: &Digest) -> &str {
    digest.hex().get(..2).unwrap_or("00")
}

fn encode_name(name: &RepositoryName) -> String {
    name.as_str().replace('/', "+")
}

/// The repository, tag and move an index journal entry is about, if the entry is well formed.
pub fn decode_index_journal_entry(entry: &str) -> Option<(RepositoryName, Tag, EventId)> {
    let mut parts = entry.split('@');
    let (name, tag, id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((decode_catalog_entry(name)?, Tag::parse(tag).ok()?, EventId::parse(id)?))
}

/// The repository name a catalog entry stands for, if the entry is well formed.
pub fn decode_catalog_entry(entry: &str) -> Option<RepositoryName> {
    RepositoryName::parse(&entry.replace('+', "/")).ok()
}

/// Where every sha256 blob's content lives: `blobs/sha256/`, fanned out by the first two hex
/// digits.
pub const SHA256_BLOBS: &str = "blobs/sha256/";

/// Where upload sessions live: `uploads/<id>/`.
pub const UPLOADS: &str = "uploads/";

/// A blob's content object: `blobs/<algorithm>/<2 hex>/<hex>`, relative to the store's root
/// (a directory on the filesystem, the key prefix in S3).
pub fn blob_object(digest: &Digest) -> String {
    let hex = digest.hex();
    format!("blobs/{}/{}/{hex}", digest.algorithm().as_str(), &hex[..2])
}

/// The sha256 digest a blob object's path (or just its last component) names.
pub fn blob_object_digest(path: &str) -> Option<Digest> {
    let hex = path.rsplit('/').next()?;
    Digest::parse(&format!("sha256:{hex}")).ok()
}

/// An upload session's folder: `uploads/<id>/`.
pub fn upload_folder(id: &UploadId) -> String {
    format!("{UPLOADS}{id}/")
}

/// One of an upload session's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadObject {
    /// The session's state (its repository, when it started); gone once sealed.
    State,
    /// Present once a finish sealed the session.
    Sealed,
    /// The filesystem's one data file.
    Data,
}

/// An upload session's object: `uploads/<id>/{state,sealed,data}`.
pub fn upload_object(id: &UploadId, object: UploadObject) -> String {
    let name = match object {
        UploadObject::State => "state",
        UploadObject::Sealed => "sealed",
        UploadObject::Data => "data",
    };
    format!("{}{name}", upload_folder(id))
}

/// Where an upload's segments live in S3 (one object per append): `uploads/<id>/seg/`.
pub fn upload_segments(id: &UploadId) -> String {
    format!("{}seg/", upload_folder(id))
}

/// The segment that starts at byte `offset`, zero-padded so segments list in offset order.
pub fn upload_segment(id: &UploadId, offset: u64) -> String {
    format!("{}{offset:020}", upload_segments(id))
}

/// The session a path under [`UPLOADS`] belongs to (`<id>/...` with the prefix stripped).
pub fn upload_id_of(rest: &str) -> Option<UploadId> {
    rest.split('/').next().and_then(UploadId::parse)
}

/// An upload session's id: a UUID, so it is also a safe path component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UploadId(uuid::Uuid);

impl UploadId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// Parses an id from a URL; `None` when it is not a UUID.
    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::try_parse(s).ok().map(Self)
    }
}

impl Default for UploadId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.as_hyphenated(), f)
    }
}

/// A replication event's id: the time it was recorded (ms, 16 digits, so ids sort oldest
/// first) and a UUID's hex, so it is a safe path component and unique across replicas.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

impl EventId {
    /// A fresh id for an event recorded at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self(format!("{now_ms:016}-{}", uuid::Uuid::new_v4().as_simple()))
    }

    /// Parses a listed id; `None` unless it has exactly that shape.
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, id) = s.split_once('-')?;
        let ok = ms.len() == 16
            && ms.bytes().all(|b| b.is_ascii_digit())
            && id.len() == 32
            && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        ok.then(|| Self(s.to_owned()))
    }

    /// When it was recorded (ms since the epoch).
    pub fn recorded_at_ms(&self) -> u64 {
        self.0.get(..16).and_then(|ms| ms.parse().ok()).unwrap_or(0)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_entries_round_trip() {
        let n = RepositoryName::parse("team-a/sub.x/app").unwrap();
        let k = Key::catalog_entry(&n);
        assert_eq!(k.as_str(), "catalog/team-a+sub.x+app");
        assert_eq!(decode_catalog_entry("team-a+sub.x+app"), Some(n));
        assert_eq!(decode_catalog_entry("..+x"), None);
        assert!(UploadId::parse("../x").is_none());
        let id = EventId::new(1_700_000_000_123);
        assert_eq!(EventId::parse(&id.to_string()), Some(id.clone()));
        assert_eq!(id.recorded_at_ms(), 1_700_000_000_123);
        assert!(EventId::parse("0000000000000001-../../x").is_none());
    }

    #[test]
    fn content_and_upload_objects_are_laid_out_once() {
        let d = Digest::sha256_of(b"x");
        let path = blob_object(&d);
        assert_eq!(path, format!("{SHA256_BLOBS}{}/{}", &d.hex()[..2], d.hex()));
        assert_eq!(blob_object_digest(&path), Some(d.clone()));
        assert_eq!(blob_object_digest("blobs/sha256/ab/not-hex"), None);
        let id = UploadId::new();
        assert_eq!(upload_object(&id, UploadObject::State), format!("uploads/{id}/state"));
        // Segments sort by offset as strings do.
        let (a, b) = (upload_segment(&id, 9), upload_segment(&id, 10));
        assert!(a < b && a.starts_with(&upload_segments(&id)), "{a} {b}");
        let rest = upload_object(&id, UploadObject::Sealed);
        assert_eq!(upload_id_of(rest.strip_prefix(UPLOADS).unwrap()), Some(id));
        assert_eq!(upload_id_of("../x/state"), None);
    }

    #[test]
    fn index_journal_entries_round_trip() {
        let (name, tag, id) =
            (RepositoryName::parse("team/app").unwrap(), Tag::parse("v1.2").unwrap(), EventId::new(7));
        let key = Key::index_journal_entry(&name, &tag, &id);
        let entry = key.as_str().strip_prefix("index-journal/").unwrap();
        assert_eq!(decode_index_journal_entry(entry), Some((name, tag, id)));
        assert_eq!(decode_index_journal_entry("team+app@v1"), None);
        assert_eq!(decode_index_journal_entry("..@v1@0000000000000007-00000000000000000000000000000000"), None);
    }
}
