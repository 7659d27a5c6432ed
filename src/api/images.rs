//! ECR's image operations: `ListImages` (one entry per tag, a digest-only one for an untagged
//! image), `DescribeImages` (one detail per digest), `BatchGetImage` (a pull: it counts for
//! `lastRecordedPullTime`), `BatchDeleteImage` (by tag removes that tag, and the image with its
//! last tag; by digest removes the image and its tags; a child an index still lists is refused)
//! and `PutImage` (a push, or a retag of a manifest the repository holds), with ECR's failure
//! codes and exceptions. The registry does the work; this module speaks ECR.

use super::operations::names;
use super::EcrException;
use super::{epoch_seconds, next_token, paged, ApiContext, ApiError, Input, Page};
use crate::auth::{Access, Action};
use crate::oci::{Digest, Manifest, Reference, RepositoryName, Tag};
use crate::registry::images::{ImageSummary, StoredImage};
use crate::registry::{PushOrigin, Repo};
use serde_json::{json, Value};
use std::collections::HashSet;

/// `imageManifest` at most (ECR's limit).
const MAX_MANIFEST_CHARS: usize = 4_194_304;

/// An `ImageIdentifier`: a digest, a tag, or both, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageIdentifier {
    /// `imageDigest`.
    pub digest: Option<String>,
    /// `imageTag`.
    pub tag: Option<String>,
}

impl ImageIdentifier {
    /// Reads one from its JSON object (members of the wrong type count as absent).
    pub(super) fn from_json(v: &Value) -> Self {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Self { digest: s("imageDigest"), tag: s("imageTag") }
    }

    /// `ImageNotFoundException` for this image in `name`, in ECR's words.
    pub(super) fn not_found(&self, ctx: &ApiContext<'_>, name: &RepositoryName) -> ApiError {
        ApiError::new(
            EcrException::ImageNotFound,
            format!(
                "The image with imageId {{imageDigest:'{}', imageTag:'{}'}} does not exist within the repository with name '{name}' in the registry with id '{}'",
                self.digest.as_deref().unwrap_or("null"),
                self.tag.as_deref().unwrap_or("null"),
                ctx.registry_id
            ),
        )
    }

    /// As ECR writes it back.
    pub(super) fn json(&self) -> Value {
        let mut out = serde_json::Map::new();
        if let Some(d) = &self.digest {
            out.insert("imageDigest".into(), json!(d));
        }
        if let Some(t) = &self.tag {
            out.insert("imageTag".into(), json!(t));
        }
        Value::Object(out)
    }
}

/// One parsed image operation.
#[derive(Debug, Clone, PartialEq)]
pub enum ImagesOp {
    /// `ListImages`: the tag status filter and a page.
    List(RepositoryName, Option<String>, Page),
    /// `DescribeImages`: these images, or a filtered page of all.
    Describe(RepositoryName, Vec<ImageIdentifier>, Option<String>, Page),
    /// `BatchGetImage`.
    BatchGet(RepositoryName, Vec<ImageIdentifier>),
    /// `BatchDeleteImage`.
    BatchDelete(RepositoryName, Vec<ImageIdentifier>),
    /// `PutImage`: manifest, media type, tag, digest.
    Put(RepositoryName, String, Option<String>, Option<String>, Option<String>),
    /// `ListImageReferrers`: the subject, the artifact types wanted (any when empty), whether
    /// only archived ones are, and a page.
    Referrers(RepositoryName, Digest, Vec<String>, bool, Page),
}

impl ImagesOp {
    /// What it needs.
    pub fn accesses(&self) -> Vec<Access> {
        match self {
            Self::List(n, ..) => vec![Access::on(Action::ListImages, n)],
            Self::Describe(n, ..) => vec![Access::on(Action::DescribeImages, n)],
            Self::BatchGet(n, _) => vec![Access::on(Action::BatchGetImage, n)],
            Self::BatchDelete(n, _) => vec![Access::on(Action::BatchDeleteImage, n)],
            Self::Put(n, ..) => vec![Access::on(Action::PutImage, n)],
            // ECR's documentation: listing referrers needs `ecr:BatchGetImage`.
            Self::Referrers(n, ..) => vec![Access::on(Action::BatchGetImage, n)],
        }
    }
}

fn image_ids(input: &Input, required: bool) -> Result<Vec<ImageIdentifier>, ApiError> {
    let Some(list) = input.list("imageIds")? else {
        return if required { Err(ApiError::invalid("imageIds", "Member must not be null")) } else { Ok(Vec::new()) };
    };
    if list.is_empty() || list.len() > 100 {
        return Err(ApiError::invalid("imageIds", "Member must have length between 1 and 100"));
    }
    Ok(list.iter().map(ImageIdentifier::from_json).collect())
}

fn tag_status(input: &Input) -> Result<Option<String>, ApiError> {
    match input.get("filter").and_then(|f| f.get("tagStatus")) {
        None => Ok(None),
        Some(v) => match v.as_str() {
            Some(s @ ("TAGGED" | "UNTAGGED" | "ANY")) => Ok(Some(s.to_owned())),
            _ => Err(ApiError::invalid("tagStatus", "Member must satisfy enum value set: [TAGGED, UNTAGGED, ANY]")),
        },
    }
}

/// Parses one of the image operations.
pub fn parse_operation(op: names::Images, input: &Input) -> Result<ImagesOp, ApiError> {
    let name = super::repositories::repository_name(input, "repositoryName")?;
    Ok(match op {
        names::Images::ListImages => ImagesOp::List(name, tag_status(input)?, input.page(1000)?),
        names::Images::DescribeImages => {
            let ids = image_ids(input, false)?;
            if !ids.is_empty() && (input.get("nextToken").is_some() || input.get("maxResults").is_some()) {
                return Err(ApiError::invalid("imageIds", "imageIds cannot be combined with maxResults or nextToken"));
            }
            ImagesOp::Describe(name, ids, tag_status(input)?, input.page(1000)?)
        }
        names::Images::BatchGetImage => ImagesOp::BatchGet(name, image_ids(input, true)?),
        names::Images::BatchDeleteImage => ImagesOp::BatchDelete(name, image_ids(input, true)?),
        names::Images::ListImageReferrers => parse_referrers(name, input)?,
        names::Images::PutImage => {
            let manifest = input.required_str("imageManifest")?;
            if manifest.is_empty() || manifest.chars().count() > MAX_MANIFEST_CHARS {
                return Err(ApiError::invalid("imageManifest", "Member must have length between 1 and 4194304"));
            }
            let opt = |k: &str| input.str(k).map(|v| v.map(str::to_owned));
            ImagesOp::Put(
                name,
                manifest.to_owned(),
                opt("imageManifestMediaType")?,
                opt("imageTag")?,
                opt("imageDigest")?,
            )
        }
    })
}

fn parse_referrers(name: RepositoryName, input: &Input) -> Result<ImagesOp, ApiError> {
    let subject = input
        .get("subjectId")
        .and_then(|s| s.get("imageDigest"))
        .ok_or_else(|| ApiError::invalid("subjectId.imageDigest", "Member must not be null"))?;
    let subject = subject.as_str().and_then(|d| Digest::parse(d).ok()).ok_or_else(|| {
        ApiError::invalid(
            "subjectId.imageDigest",
            "Member must satisfy regular expression pattern: [a-zA-Z0-9-_+.]+:[a-fA-F0-9]+",
        )
    })?;
    let filter = input.get("filter");
    let mut types = Vec::new();
    if let Some(list) = filter.and_then(|f| f.get("artifactTypes")).filter(|v| !v.is_null()) {
        let list = list.as_array().ok_or_else(|| ApiError::invalid("filter.artifactTypes", "Member must be a list"))?;
        if list.len() > 5 {
            return Err(ApiError::invalid("filter.artifactTypes", "Member must have length less than or equal to 5"));
        }
        for t in list {
            match t.as_str() {
                Some(t) if (1..=255).contains(&t.len()) => types.push(t.to_owned()),
                _ => {
                    return Err(ApiError::invalid(
                        "filter.artifactTypes.member",
                        "Member must have length between 1 and 255",
                    ))
                }
            }
        }
    }
    let archived = match filter.and_then(|f| f.get("artifactStatus")).filter(|v| !v.is_null()) {
        None => false,
        Some(v) => match v.as_str() {
            Some("ACTIVE" | "ANY") => false,
            Some("ARCHIVED") => true,
            _ => {
                return Err(ApiError::invalid(
                    "filter.artifactStatus",
                    "Member must satisfy enum value set: [ACTIVE, ARCHIVED, ANY]",
                ))
            }
        },
    };
    Ok(ImagesOp::Referrers(name, subject, types, archived, input.page(50)?))
}

/// Runs one.
pub async fn run(ctx: &ApiContext<'_>, op: ImagesOp) -> Result<Value, ApiError> {
    match op {
        ImagesOp::List(name, status, page) => list(ctx, &name, status.as_deref(), &page).await,
        ImagesOp::Describe(name, ids, status, page) => describe(ctx, &name, &ids, status.as_deref(), &page).await,
        ImagesOp::BatchGet(name, ids) => batch_get(ctx, &name, &ids).await,
        ImagesOp::BatchDelete(name, ids) => batch_delete(ctx, &name, &ids).await,
        ImagesOp::Referrers(name, subject, types, archived, page) => {
            referrers(ctx, &name, &subject, &types, archived, &page).await
        }
        ImagesOp::Put(name, manifest, media_type, tag, digest) => {
            put(ctx, &name, manifest, media_type.as_deref(), tag.as_deref(), digest.as_deref()).await
        }
    }
}

/// The repository's images; `RepositoryNotFoundException` when it does not exist.
async fn images(ctx: &ApiContext<'_>, name: &RepositoryName) -> Result<Vec<StoredImage>, ApiError> {
    if ctx.registry.repository_settings(name).await?.is_none() {
        return Err(super::repositories::not_found(ctx, name));
    }
    // Tags and an index's children are all a batch delete needs: the index alone.
    let mut images = ctx.registry.indexed_images(name).await?;
    images.sort_by(|a, b| a.digest.cmp(&b.digest));
    Ok(images)
}

fn wanted(status: Option<&str>, tagged: bool) -> bool {
    match status {
        Some("TAGGED") => tagged,
        Some("UNTAGGED") => !tagged,
        _ => true,
    }
}

fn with_next(mut out: Value, next: Option<String>) -> Value {
    if let Some(t) = next {
        out["nextToken"] = json!(t);
    }
    out
}

/// A page token of the image listings: the digest (hex) the page ended at, and for
/// `ListImages` how many of that image's ids were already given.
fn image_token(page: &Page) -> Result<Option<(String, usize)>, ApiError> {
    let Some(t) = &page.after else { return Ok(None) };
    let invalid = || ApiError::invalid("nextToken", "Member is not a token this registry issued");
    let (hex, given) = match t.split_once('/') {
        Some((hex, n)) => (hex, n.parse::<usize>().map_err(|_| invalid())?),
        None => (t.as_str(), 0),
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(invalid());
    }
    Ok(Some((hex.to_owned(), given)))
}

/// The ids `ListImages` gives for one image: one per tag, or its digest alone when untagged.
fn listed_ids(image: &ImageSummary, status: Option<&str>) -> Vec<Value> {
    if image.tags.is_empty() {
        return match wanted(status, false) {
            true => vec![json!({ "imageDigest": image.digest })],
            false => Vec::new(),
        };
    }
    match wanted(status, true) {
        true => image.tags.iter().map(|t| json!({ "imageDigest": image.digest, "imageTag": t })).collect(),
        false => Vec::new(),
    }
}

/// `ListImages`: pages of the index in digest order, each image read once, so a page costs
/// what it returns (plus the images a filter leaves out), not the repository's size.
async fn list(
    ctx: &ApiContext<'_>,
    name: &RepositoryName,
    status: Option<&str>,
    page: &Page,
) -> Result<Value, ApiError> {
    let mut ids = Vec::new();
    let mut cursor = None;
    if let Some((hex, given)) = image_token(page)? {
        // The image the last page stopped in: the rest of its ids first.
        if let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) {
            if let Some(image) = ctx.registry.image_summary(name, &digest).await? {
                for (i, id) in listed_ids(&image, status).into_iter().enumerate().skip(given) {
                    if ids.len() == page.max {
                        return Ok(with_next(json!({ "imageIds": ids }), Some(next_token(&format!("{hex}/{i}")))));
                    }
                    ids.push(id);
                }
            }
        }
        cursor = Some(hex);
    }
    loop {
        let want = page.max.saturating_sub(ids.len()).max(1);
        let (images, more) = images_page(ctx, name, cursor.as_deref(), want).await?;
        for image in &images {
            for (i, id) in listed_ids(image, status).into_iter().enumerate() {
                if ids.len() == page.max {
                    let token = format!("{}/{i}", image.digest.hex());
                    return Ok(with_next(json!({ "imageIds": ids }), Some(next_token(&token))));
                }
                ids.push(id);
            }
        }
        match images.last() {
            Some(last) if more => cursor = Some(last.digest.hex().to_owned()),
            _ => return Ok(json!({ "imageIds": ids })),
        }
    }
}

/// One page of the index; `RepositoryNotFoundException` when the repository does not exist.
async fn images_page(
    ctx: &ApiContext<'_>,
    name: &RepositoryName,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<ImageSummary>, bool), ApiError> {
    match ctx.registry.images_page(name, after, limit).await {
        Err(crate::registry::Error::NameUnknown(_)) => Err(super::repositories::not_found(ctx, name)),
        other => Ok(other?),
    }
}

fn detail(ctx: &ApiContext<'_>, name: &RepositoryName, image: &ImageSummary) -> Value {
    let mut d = json!({
        "registryId": ctx.registry_id,
        "repositoryName": name.as_str(),
        "imageDigest": image.digest,
        "imageSizeInBytes": image.image_size,
        "imageManifestMediaType": image.media_type,
        "imageStatus": "ACTIVE",
    });
    if !image.tags.is_empty() {
        d["imageTags"] = json!(image.tags);
    }
    if let Some(at) = image.pushed_at_ms {
        d["imagePushedAt"] = json!(epoch_seconds(at));
    }
    if let Some(at) = image.last_pulled_ms {
        d["lastRecordedPullTime"] = json!(epoch_seconds(at));
    }
    if let Some(subject) = &image.subject {
        d["subjectManifestDigest"] = json!(subject);
    }
    d
}

/// The image an id names, looked up directly (its tag record or link, then the index entry);
/// ECR's failure code when the id is malformed or names nothing here.
async fn lookup(
    ctx: &ApiContext<'_>,
    name: &RepositoryName,
    id: &ImageIdentifier,
) -> Result<Result<ImageSummary, IdFailure>, ApiError> {
    let (digest, tag) = match checked_id(id) {
        Ok(x) => x,
        Err(f) => return Ok(Err(f)),
    };
    let repo = Repo::Local(name.clone());
    let digest = match (tag, digest) {
        (Some(t), digest) => match ctx.registry.manifest_record(&repo, &Reference::Tag(t)).await {
            Ok(r) if digest.as_ref().is_some_and(|d| d != &r.digest) => return Ok(Err(tag_does_not_match())),
            Ok(r) => r.digest,
            Err(crate::registry::Error::ManifestUnknown(_) | crate::registry::Error::NameUnknown(_)) => {
                return Ok(Err(image_not_found()))
            }
            Err(e) => return Err(e.into()),
        },
        (None, Some(d)) => d,
        (None, None) => return Ok(Err(image_not_found())),
    };
    Ok(ctx.registry.image_summary(name, &digest).await?.ok_or_else(image_not_found))
}

/// ECR's failure code and reason for one image id.
type IdFailure = (&'static str, String);

/// An image id's digest and tag, checked; ECR's failure code when either is malformed or both
/// are missing.
fn checked_id(id: &ImageIdentifier) -> Result<(Option<Digest>, Option<Tag>), IdFailure> {
    let digest = match &id.digest {
        Some(d) => Some(Digest::parse(d).map_err(|_| {
            ("InvalidImageDigest", format!("Invalid request parameters: image digest '{d}' is not valid"))
        })?),
        None => None,
    };
    let tag =
        match &id.tag {
            Some(t) => Some(Tag::parse(t).map_err(|_| {
                ("InvalidImageTag", format!("Invalid request parameters: image tag '{t}' is not valid"))
            })?),
            None => None,
        };
    if digest.is_none() && tag.is_none() {
        return Err(("MissingDigestAndTag", "Invalid request parameters: both tag and digest cannot be null".into()));
    }
    Ok((digest, tag))
}

fn image_not_found() -> IdFailure {
    ("ImageNotFound", "Requested image not found".to_owned())
}

fn tag_does_not_match() -> IdFailure {
    ("ImageTagDoesNotMatchDigest", "Invalid request parameters: given tag does not map to the given digest".into())
}

/// Resolves an image id in `images`: the image and the tag named, or ECR's failure code.
fn resolve<'a>(
    images: &'a [StoredImage],
    id: &ImageIdentifier,
) -> Result<(&'a StoredImage, Option<String>), IdFailure> {
    let (digest, _) = checked_id(id)?;
    let found = match (&digest, &id.tag) {
        (None, None) => return Err(image_not_found()),
        (_, Some(t)) => {
            let image = images.iter().find(|i| i.tags.contains(t)).ok_or_else(image_not_found)?;
            if digest.as_ref().is_some_and(|d| d != &image.digest) {
                return Err(tag_does_not_match());
            }
            image
        }
        (Some(d), None) => images.iter().find(|i| &i.digest == d).ok_or_else(image_not_found)?,
    };
    Ok((found, id.tag.clone()))
}

fn failure(id: &ImageIdentifier, (code, reason): IdFailure) -> Value {
    json!({ "imageId": id.json(), "failureCode": code, "failureReason": reason })
}

async fn describe(
    ctx: &ApiContext<'_>,
    name: &RepositoryName,
    ids: &[ImageIdentifier],
    status: Option<&str>,
    page: &Page,
) -> Result<Value, ApiError> {
    if !ids.is_empty() {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for id in ids {
            let image = match lookup(ctx, name, id).await? {
                Ok(image) => image,
                // A missing repository is told apart only when something is not found.
                Err(_) if ctx.registry.repository_settings(name).await?.is_none() => {
                    return Err(super::repositories::not_found(ctx, name))
                }
                Err(_) => return Err(id.not_found(ctx, name)),
            };
            if seen.insert(image.digest.clone()) {
                out.push(detail(ctx, name, &image));
            }
        }
        return Ok(json!({ "imageDetails": out }));
    }
    // Pages of the index in digest order: a page costs what it returns (plus the images a
    // filter leaves out), not the repository's size.
    let mut out = Vec::new();
    let mut cursor = image_token(page)?.map(|(hex, _)| hex);
    loop {
        let want = page.max.saturating_sub(out.len()).max(1);
        let (images, more) = images_page(ctx, name, cursor.as_deref(), want).await?;
        for (i, image) in images.iter().enumerate() {
            if wanted(status, !image.tags.is_empty()) {
                out.push(detail(ctx, name, image));
            }
            if out.len() == page.max {
                let rest = more || i.saturating_add(1) < images.len();
                let next = rest.then(|| next_token(image.digest.hex()));
                return Ok(with_next(json!({ "imageDetails": out }), next));
            }
        }
        match images.last() {
            Some(last) if more => cursor = Some(last.digest.hex().to_owned()),
            _ => return Ok(json!({ "imageDetails": out })),
        }
    }
}

/// `BatchGetImage`: each id looked up directly (its tag record, or its manifest link, then the
/// manifest's bytes), so its cost does not grow with the repository.
async fn batch_get(ctx: &ApiContext<'_>, name: &RepositoryName, ids: &[ImageIdentifier]) -> Result<Value, ApiError> {
    if ctx.registry.repository_settings(name).await?.is_none() {
        return Err(super::repositories::not_found(ctx, name));
    }
    let repo = Repo::Local(name.clone());
    let (mut found, mut failures) = (Vec::new(), Vec::new());
    for id in ids {
        let (digest, tag) = match checked_id(id) {
            Ok(x) => x,
            Err(f) => {
                failures.push(failure(id, f));
                continue;
            }
        };
        let reference = match (&tag, &digest) {
            (Some(t), _) => Reference::Tag(t.clone()),
            (None, Some(d)) => Reference::Digest(d.clone()),
            (None, None) => continue,
        };
        // A pull: noted for lastRecordedPullTime, as every ECR pull's one BatchGetImage is.
        let content = match ctx.registry.manifest_get(&repo, &reference).await {
            Ok(c) => c,
            Err(crate::registry::Error::ManifestUnknown(_) | crate::registry::Error::NameUnknown(_)) => {
                failures.push(failure(id, image_not_found()));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if digest.as_ref().is_some_and(|d| d != &content.record.digest) {
            failures.push(failure(id, tag_does_not_match()));
            continue;
        }
        let mut image_id = json!({ "imageDigest": content.record.digest });
        if let Some(t) = &tag {
            image_id["imageTag"] = json!(t.as_str());
        }
        found.push(json!({
            "registryId": ctx.registry_id,
            "repositoryName": name.as_str(),
            "imageId": image_id,
            "imageManifest": String::from_utf8_lossy(&content.bytes),
            "imageManifestMediaType": content.record.media_type,
        }));
    }
    Ok(json!({ "images": found, "failures": failures }))
}

async fn batch_delete(ctx: &ApiContext<'_>, name: &RepositoryName, ids: &[ImageIdentifier]) -> Result<Value, ApiError> {
    // Read once and kept current below, so a hundred ids cost one pass over the repository.
    let mut all = images(ctx, name).await?;
    let (mut deleted, mut failures) = (Vec::new(), Vec::new());
    for id in ids {
        let (image, tag) = match resolve(&all, id) {
            Ok((image, tag)) => (image.clone(), tag),
            Err(f) => {
                failures.push(failure(id, f));
                continue;
            }
        };
        let listed_by_index = all.iter().any(|i| i.children.contains(&image.digest));
        let last_tag = tag.is_some() && image.tags.len() == 1;
        if listed_by_index && (tag.is_none() || last_tag) {
            failures.push(failure(
                id,
                ("ImageReferencedByManifestList", "Requested image is referenced by a manifest list".into()),
            ));
            continue;
        }
        let reference = match (&tag, last_tag) {
            (Some(t), false) => Reference::Tag(Tag::parse(t).map_err(|e| ApiError::server(e.to_string()))?),
            _ => Reference::Digest(image.digest.clone()),
        };
        ctx.registry.manifest_delete(name, &reference).await?;
        match &reference {
            Reference::Tag(t) => {
                if let Some(i) = all.iter_mut().find(|i| i.digest == image.digest) {
                    i.tags.retain(|x| x != t.as_str());
                }
            }
            Reference::Digest(d) => all.retain(|i| &i.digest != d),
        }
        let mut out = json!({ "imageDigest": image.digest });
        if let Some(t) = tag {
            out["imageTag"] = json!(t);
        }
        deleted.push(out);
    }
    Ok(json!({ "imageIds": deleted, "failures": failures }))
}

async fn put(
    ctx: &ApiContext<'_>,
    name: &RepositoryName,
    manifest: String,
    media_type: Option<&str>,
    tag: Option<&str>,
    digest: Option<&str>,
) -> Result<Value, ApiError> {
    if ctx.registry.repository_settings(name).await?.is_none() {
        return Err(super::repositories::not_found(ctx, name));
    }
    let tag = tag
        .map(|t| {
            Tag::parse(t).map_err(|_| {
                ApiError::invalid(
                    "imageTag",
                    "Member must satisfy regular expression pattern: [a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}",
                )
            })
        })
        .transpose()?;
    let actual = {
        let mut h = crate::oci::Hasher::new(crate::oci::DigestAlgorithm::Sha256);
        h.update(manifest.as_bytes());
        h.finish()
    };
    if let Some(d) = digest {
        if Digest::parse(d).ok().as_ref() != Some(&actual) {
            return Err(ApiError::new(
                EcrException::ImageDigestDoesNotMatch,
                format!("Provided digest {d} does not match the digest of the image manifest: {actual}"),
            ));
        }
    }
    let local = Repo::Local(name.clone());
    let already = match &tag {
        Some(t) => ctx
            .registry
            .manifest_record(&local, &Reference::Tag(t.clone()))
            .await
            .ok()
            .is_some_and(|r| r.digest == actual),
        None => ctx.registry.holds_manifest(name, &actual).await?,
    };
    if already {
        return Err(ApiError::new(
            EcrException::ImageAlreadyExists,
            format!(
                "Image with digest '{actual}' and tag '{}' already exists in the repository with name '{name}' in registry with id '{}'",
                tag.as_ref().map_or("null".to_owned(), ToString::to_string),
                ctx.registry_id
            ),
        ));
    }
    let reference = match &tag {
        Some(t) => Reference::Tag(t.clone()),
        None => Reference::Digest(actual.clone()),
    };
    let bytes = bytes::Bytes::from(manifest.clone().into_bytes());
    match ctx.registry.manifest_put(name, &reference, media_type, bytes, PushOrigin::Client).await {
        Ok(_) => {}
        Err(crate::registry::Error::ManifestBlobUnknown(missing)) => {
            let children = Manifest::parse(manifest.as_bytes(), media_type).map(|m| m.children).unwrap_or_default();
            return Err(if children.contains(&missing) {
                ApiError::new(
                    EcrException::ReferencedImagesNotFound,
                    format!("Some of the images referenced by the manifest list are not in the repository: {missing}"),
                )
            } else {
                ApiError::new(
                    EcrException::LayersNotFound,
                    format!("Layers with digests '[{missing}]' required for pushing image into repository with name '{name}' in the registry with id '{}' do not exist", ctx.registry_id),
                )
            });
        }
        Err(e) => return Err(e.into()),
    }
    let record = ctx.registry.manifest_record(&local, &Reference::Digest(actual.clone())).await?;
    let mut image_id = json!({ "imageDigest": actual });
    if let Some(t) = &tag {
        image_id["imageTag"] = json!(t.to_string());
    }
    Ok(json!({ "image": {
        "registryId": ctx.registry_id,
        "repositoryName": name.as_str(),
        "imageId": image_id,
        "imageManifest": manifest,
        "imageManifestMediaType": record.media_type,
    }}))
}

/// `ListImageReferrers`: the manifests in the repository whose `subject` is the image, as the
/// registry API's referrers list has them, by digest. Ferry never archives, so every referrer
/// is `ACTIVE` and an `ARCHIVED` filter finds none.
async fn referrers(
    ctx: &ApiContext<'_>,
    name: &RepositoryName,
    subject: &Digest,
    types: &[String],
    archived: bool,
    page: &Page,
) -> Result<Value, ApiError> {
    if ctx.registry.repository_settings(name).await?.is_none() {
        return Err(super::repositories::not_found(ctx, name));
    }
    let mut found =
        if archived { Vec::new() } else { ctx.registry.referrers(&Repo::Local(name.clone()), subject, None).await? };
    found.retain(|d| types.is_empty() || d.artifact_type.as_ref().is_some_and(|t| types.contains(t)));
    found.sort_by(|a, b| a.digest.cmp(&b.digest));
    let all: Vec<Value> = found
        .iter()
        .map(|d| {
            let mut r = json!({
                "digest": d.digest, "mediaType": d.media_type, "size": d.size, "artifactStatus": "ACTIVE",
            });
            if let Some(t) = &d.artifact_type {
                r["artifactType"] = json!(t);
            }
            if let Some(a) = &d.annotations {
                r["annotations"] = json!(a);
            }
            r
        })
        .collect();
    let (referrers, next) = paged(&all, page)?;
    Ok(with_next(json!({ "referrers": referrers }), next))
}

#[cfg(test)]
mod tests {
    use crate::api::testing::ApiFixture;
    use crate::oci::{Digest, Reference, RepositoryName, Tag};
    use crate::registry::testing::{body, image_manifest};
    use crate::registry::PushOrigin;
    use serde_json::json;

    /// A repository holding `images` tagged images (`v0`, `v1`, ...) sharing one layer.
    async fn seeded(images: u32) -> (ApiFixture, RepositoryName) {
        let f = ApiFixture::new();
        let name = RepositoryName::parse("team/app").unwrap();
        f.call("CreateRepository", json!({ "repositoryName": name.as_str() })).await.unwrap();
        let (config, layer) = (Digest::sha256_of(b"{}"), Digest::sha256_of(b"layer"));
        f.registry.upload_monolithic(&name, &config, body(b"{}")).await.unwrap();
        f.registry.upload_monolithic(&name, &layer, body(b"layer")).await.unwrap();
        for n in 0..images {
            let tag = Reference::Tag(Tag::parse(&format!("v{n}")).unwrap());
            let manifest = image_manifest(&config, &layer, n);
            f.registry.manifest_put(&name, &tag, None, manifest, PushOrigin::Client).await.unwrap();
        }
        (f, name)
    }

    #[tokio::test]
    async fn batch_get_of_one_image_costs_the_same_at_ten_and_at_a_thousand_images() {
        let mut costs = Vec::new();
        for images in [10, 1000] {
            let (f, name) = seeded(images).await;
            let ask = json!({ "repositoryName": name.as_str(), "imageIds": [{ "imageTag": "v7" }] });
            let (out, by_tag) = f.counted("BatchGetImage", ask).await;
            let out = out.unwrap();
            assert_eq!(out["images"][0]["imageId"]["imageTag"], "v7", "{out}");
            let digest = out["images"][0]["imageId"]["imageDigest"].as_str().unwrap().to_owned();
            let by_digest = json!({ "repositoryName": name.as_str(), "imageIds": [{ "imageDigest": digest }] });
            let (out, by_digest) = f.counted("BatchGetImage", by_digest).await;
            assert_eq!(out.unwrap()["images"].as_array().map(Vec::len), Some(1));
            // The repository's settings, the tag (or link), the manifest's bytes; no listing.
            assert!(by_tag.reads <= 3 && by_tag.lists == 0, "{by_tag:?}");
            assert!(by_digest.reads <= 3 && by_digest.lists == 0, "{by_digest:?}");
            costs.push((by_tag, by_digest));
        }
        assert_eq!(costs[0], costs[1], "the cost does not grow with the repository");
    }

    #[tokio::test]
    async fn batch_get_reports_each_failure_in_ecr_terms() {
        let (f, name) = seeded(2).await;
        let v0 =
            f.call("BatchGetImage", json!({ "repositoryName": name.as_str(), "imageIds": [{ "imageTag": "v0" }] }));
        let v0_digest = v0.await.unwrap()["images"][0]["imageId"]["imageDigest"].as_str().unwrap().to_owned();
        let ids = json!([
            { "imageTag": "missing" },
            { "imageDigest": Digest::sha256_of(b"nothing").to_string() },
            { "imageTag": "v1", "imageDigest": v0_digest },
            { "imageTag": "v0", "imageDigest": v0_digest },
        ]);
        let out = f.call("BatchGetImage", json!({ "repositoryName": name.as_str(), "imageIds": ids })).await.unwrap();
        let codes: Vec<&str> =
            out["failures"].as_array().unwrap().iter().filter_map(|f| f["failureCode"].as_str()).collect();
        assert_eq!(codes, ["ImageNotFound", "ImageNotFound", "ImageTagDoesNotMatchDigest"]);
        assert_eq!(out["images"].as_array().map(Vec::len), Some(1));
        let missing =
            f.call("BatchGetImage", json!({ "repositoryName": "team/none", "imageIds": [{ "imageTag": "v0" }] }));
        assert_eq!(missing.await.unwrap_err().kind.as_str(), "RepositoryNotFoundException");
    }

    #[tokio::test]
    async fn describing_one_image_costs_the_same_at_ten_and_at_a_thousand_images() {
        let mut costs = Vec::new();
        for images in [10, 1000] {
            let (f, name) = seeded(images).await;
            let ask = |id: serde_json::Value| json!({ "repositoryName": name.as_str(), "imageIds": [id] });
            // The first call of a process reads the repository's index marker once.
            f.call("DescribeImages", ask(json!({ "imageTag": "v7" }))).await.unwrap();
            let (out, by_tag) = f.counted("DescribeImages", ask(json!({ "imageTag": "v7" }))).await;
            let out = out.unwrap();
            let detail = &out["imageDetails"][0];
            assert_eq!(detail["imageTags"], json!(["v7"]), "{out}");
            assert_eq!(detail["imageSizeInBytes"], 7, "{out}");
            let digest = detail["imageDigest"].as_str().unwrap().to_owned();
            let (out, by_digest) = f.counted("DescribeImages", ask(json!({ "imageDigest": digest }))).await;
            assert_eq!(out.unwrap()["imageDetails"][0]["imageTags"], json!(["v7"]));
            // The tag (for a tag), the link with the index, the pull record; no listing.
            assert!(by_tag.reads <= 3 && by_tag.lists == 0, "{by_tag:?}");
            assert!(by_digest.reads <= 2 && by_digest.lists == 0, "{by_digest:?}");
            costs.push((by_tag, by_digest));
        }
        assert_eq!(costs[0], costs[1], "the cost does not grow with the repository");
    }

    #[tokio::test]
    async fn describing_a_missing_image_or_repository_says_which() {
        let (f, name) = seeded(1).await;
        let missing = json!({ "repositoryName": name.as_str(), "imageIds": [{ "imageTag": "nope" }] });
        assert_eq!(f.call("DescribeImages", missing).await.unwrap_err().kind.as_str(), "ImageNotFoundException");
        let no_repo = json!({ "repositoryName": "team/none", "imageIds": [{ "imageTag": "v0" }] });
        assert_eq!(f.call("DescribeImages", no_repo).await.unwrap_err().kind.as_str(), "RepositoryNotFoundException");
        // Asking about a repository that does not exist writes nothing (no index marker).
        for op in ["ListImages", "DescribeImages"] {
            let (out, requests) = f.counted(op, json!({ "repositoryName": "team/nobody" })).await;
            assert_eq!(out.unwrap_err().kind.as_str(), "RepositoryNotFoundException");
            assert_eq!((requests.writes, requests.deletes), (0, 0), "{op}: {requests:?}");
        }
    }

    #[tokio::test]
    async fn a_push_costs_the_same_into_ten_and_into_a_thousand_images() {
        let mut costs = Vec::new();
        for images in [10, 1000] {
            let (f, name) = seeded(images).await;
            let (config, layer) = (Digest::sha256_of(b"{}"), Digest::sha256_of(b"layer"));
            // A new tag, then a retag of an existing one (the index moves it between links).
            let mut cost = Vec::new();
            for (to, n) in [("new", 100_000), ("v3", 100_001)] {
                let tag = Reference::Tag(Tag::parse(to).unwrap());
                let push =
                    f.registry.manifest_put(&name, &tag, None, image_manifest(&config, &layer, n), PushOrigin::Client);
                let (pushed, requests) = f.storage.count(push).await;
                pushed.unwrap();
                assert_eq!(requests.lists, 0, "{to}: {requests:?}");
                cost.push(requests);
            }
            costs.push(cost);
        }
        assert_eq!(costs[0], costs[1], "the cost does not grow with the repository");
        println!("push requests (new tag, retag): {:?}", costs[0]);
    }

    /// Every id of `op`'s listing, walked page by page with `maxResults` of `per_page`.
    async fn walk(f: &ApiFixture, op: &str, name: &RepositoryName, per_page: u64, status: &str) -> Vec<String> {
        let key = if op == "ListImages" { "imageIds" } else { "imageDetails" };
        let ask = json!({ "repositoryName": name.as_str(), "maxResults": per_page, "filter": { "tagStatus": status } });
        let items = f.walk(op, ask, key).await;
        items.iter().map(|item| format!("{}{}{}", item["imageDigest"], item["imageTag"], item["imageTags"])).collect()
    }

    #[tokio::test]
    async fn a_page_of_images_costs_what_it_returns() {
        let mut costs = Vec::new();
        for images in [150, 1000] {
            let (f, name) = seeded(images).await;
            // The first call of a process reads the repository's index marker once.
            f.call("ListImages", json!({ "repositoryName": name.as_str() })).await.unwrap();
            for (op, key) in [("ListImages", "imageIds"), ("DescribeImages", "imageDetails")] {
                let ask = json!({ "repositoryName": name.as_str(), "maxResults": 100 });
                let (out, requests) = f.counted(op, ask).await;
                let out = out.unwrap();
                assert_eq!(out[key].as_array().map(Vec::len), Some(100), "{op}");
                assert!(out["nextToken"].is_string(), "{op}: more follow");
                // One listing, one read per image returned (the link holds tags, size and
                // pull time), and the repository's settings.
                assert!(requests.lists <= 2 && requests.reads <= 101, "{op}: {requests:?}");
                costs.push(requests);
            }
            let (out, requests) = f
                .storage
                .count(f.registry.tags_list(&crate::registry::Repo::Local(name.clone()), Some(100), None))
                .await;
            let page = out.unwrap();
            assert_eq!((page.items.len(), page.more), (100, true));
            assert!(requests.lists <= 2 && requests.reads <= 100, "tags/list: {requests:?}");
            costs.push(requests);
        }
        let (small, large) = costs.split_at(3);
        assert_eq!(small, large, "the cost does not grow with the repository");
    }

    #[tokio::test]
    async fn paging_through_images_gives_each_id_once() {
        let (f, name) = seeded(23).await;
        let (config, layer) = (Digest::sha256_of(b"{}"), Digest::sha256_of(b"layer"));
        // An image with several tags (ListImages may split them across pages), and untagged ones.
        for tag in ["v3-a", "v3-b", "v3-c"] {
            let tag = Reference::Tag(Tag::parse(tag).unwrap());
            f.registry
                .manifest_put(&name, &tag, None, image_manifest(&config, &layer, 3), PushOrigin::Client)
                .await
                .unwrap();
        }
        for n in [500, 501] {
            let untagged = Reference::Digest(Digest::sha256_of(&image_manifest(&config, &layer, n)));
            f.registry
                .manifest_put(&name, &untagged, None, image_manifest(&config, &layer, n), PushOrigin::Client)
                .await
                .unwrap();
        }
        for op in ["ListImages", "DescribeImages"] {
            for status in ["ANY", "TAGGED", "UNTAGGED"] {
                let whole = walk(&f, op, &name, 1000, status).await;
                let expected = match (op, status) {
                    ("ListImages", "ANY") => 23 + 3 + 2,
                    ("ListImages", "TAGGED") => 23 + 3,
                    (_, "UNTAGGED") => 2,
                    (_, "ANY") => 23 + 2,
                    _ => 23,
                };
                assert_eq!(whole.len(), expected, "{op} {status}");
                for per_page in [1, 2, 3, 7] {
                    assert_eq!(walk(&f, op, &name, per_page, status).await, whole, "{op} {status} by {per_page}");
                }
            }
        }
        let bad = json!({ "repositoryName": name.as_str(), "nextToken": "bm90IGEgdG9rZW4=" });
        assert_eq!(f.call("ListImages", bad).await.unwrap_err().kind.as_str(), "InvalidParameterException");
        let missing = f.call("ListImages", json!({ "repositoryName": "team/none" })).await;
        assert_eq!(missing.unwrap_err().kind.as_str(), "RepositoryNotFoundException");
    }

    #[tokio::test]
    async fn lifecycle_reads_one_link_per_image() {
        let (f, name) = seeded(300).await;
        f.registry.indexed_images(&name).await.unwrap();
        // What lifecycle judges: the index alone, one listing and one link per image.
        let (images, requests) = f.storage.count(f.registry.indexed_images(&name)).await;
        let images = images.unwrap();
        assert_eq!(images.len(), 300);
        assert!(images.iter().all(|i| i.tags.len() == 1 && i.pushed_at_ms.is_some()));
        assert_eq!((requests.lists, requests.reads, requests.writes), (1, 300, 0), "{requests:?}");
    }
}
