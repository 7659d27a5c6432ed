//! The S3 upload protocol. An upload's bytes are segment objects
//! (`uploads/<id>/seg/<offset>`, see [`keys::upload_segment`]), each written once by whichever
//! replica received the chunk, so a `PATCH` may reach another replica than the `POST` and a
//! fill in progress can be read back. The segments that tile the upload from offset 0 are its
//! bytes; a gap means it is being removed. Finishing assembles exactly the verified segments
//! under the digest with server-side copies (one `CopyObject`, or a multipart upload of
//! `UploadPartCopy` parts), so content appears under its digest only once, complete.
//!
//! The arithmetic (tiling, which segments a commit keeps, which pieces a range reads, whether
//! S3's part rules allow copying) is pure and unit-tested here; the requests go through the
//! backend's counted helpers. Knows nothing of records.

use super::error::backend_error;
use super::S3Storage;
use crate::storage::keys;
use crate::storage::{ByteRange, ByteStream, Error, OnWritten, Result, UploadId};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::io;

/// S3's smallest part, except the last.
pub(super) const MIN_PART: u64 = 5 << 20;
/// The largest object a single `CopyObject` (or one `UploadPartCopy`) may copy.
pub(super) const MAX_COPY: u64 = 5 << 30;

/// One segment object of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Segment {
    /// The upload offset of its first byte.
    pub offset: u64,
    /// Its object key.
    pub key: String,
    /// Its size.
    pub size: u64,
}

/// The listed objects under an upload's segment prefix, as segments in offset order;
/// `NotFound` when they do not tile the upload from offset 0 (it is being removed: its
/// segments go once it is stored under its digest, and reading on would shift bytes).
/// Objects whose name is not an offset are not segments.
pub(super) fn tile(prefix: &str, listed: Vec<(String, u64)>) -> Result<Vec<Segment>> {
    let mut segs: Vec<Segment> = listed
        .into_iter()
        .filter_map(|(key, size)| {
            let offset = key.strip_prefix(prefix)?.parse().ok()?;
            Some(Segment { offset, key, size })
        })
        .collect();
    segs.sort_unstable_by_key(|s| s.offset);
    let mut next = 0u64;
    for s in &segs {
        if s.offset != next {
            return Err(Error::NotFound);
        }
        next = next.checked_add(s.size).ok_or(Error::NotFound)?;
    }
    Ok(segs)
}

/// The bytes the segments hold.
pub(super) fn total(segs: &[Segment]) -> u64 {
    segs.iter().fold(0u64, |sum, s| sum.saturating_add(s.size))
}

/// The segments that tile exactly the `size` bytes a caller verified: segments are written
/// once per offset, so these hold the very bytes it hashed; any written after (by a request
/// racing the finish on another replica) are left out. `Corrupt` when they do not add up.
pub(super) fn verified(mut segs: Vec<Segment>, size: u64) -> std::result::Result<Vec<Segment>, u64> {
    let mut end = 0u64;
    let keep = segs
        .iter()
        .take_while(|s| {
            let before = end;
            end = end.saturating_add(s.size);
            before < size
        })
        .count();
    segs.truncate(keep);
    match total(&segs) {
        held if held == size => Ok(segs),
        held => Err(held),
    }
}

/// The ranged GETs that read `range` (all of it when `None`) of an upload tiled by `segs`:
/// each segment the range touches, with the part of it inside the range.
pub(super) fn pieces(segs: &[Segment], range: Option<ByteRange>) -> Vec<(String, ByteRange)> {
    let held = total(segs);
    if held == 0 {
        return Vec::new();
    }
    let last = held.saturating_sub(1);
    let (start, end) = match range {
        Some(r) => (r.start, r.end.min(last)),
        None => (0, last),
    };
    if start > end {
        return Vec::new();
    }
    segs.iter()
        .filter(|s| s.size > 0 && s.offset.saturating_add(s.size) > start && s.offset <= end)
        .map(|s| {
            let from = start.saturating_sub(s.offset);
            let to = end.saturating_sub(s.offset).min(s.size.saturating_sub(1));
            (s.key.clone(), ByteRange { start: from, end: to })
        })
        .collect()
}

/// How the verified segments become the blob object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Assembly {
    /// No bytes: one empty PUT.
    Empty,
    /// One segment S3 can copy whole.
    Copy,
    /// A multipart upload of `UploadPartCopy` parts: every segment but the last is at least
    /// S3's smallest part, and none exceeds the largest copy.
    CopyParts,
    /// A multipart upload of the bytes re-streamed into parts of the configured size.
    Restream,
}

/// The cheapest assembly S3's rules allow for `segs`.
pub(super) fn assembly(segs: &[Segment]) -> Assembly {
    match segs {
        [] => Assembly::Empty,
        [one] if one.size <= MAX_COPY => Assembly::Copy,
        _ => {
            let copyable = segs
                .iter()
                .enumerate()
                .all(|(i, s)| (s.size >= MIN_PART || i.saturating_add(1) == segs.len()) && s.size <= MAX_COPY);
            if copyable {
                Assembly::CopyParts
            } else {
                Assembly::Restream
            }
        }
    }
}

impl S3Storage {
    /// The upload's segments in order (see [`tile`]).
    pub(super) async fn segments(&self, id: &UploadId) -> Result<Vec<Segment>> {
        let prefix = self.key(&keys::upload_segments(id));
        let listed = self.list_all(&prefix).await?.into_iter().map(|(k, size, _)| (k, size)).collect();
        tile(&prefix, listed)
    }

    /// Appends `body` as segments of at most `part_size` bytes, each written once at its offset.
    pub(super) async fn append_segments(
        &self,
        id: &UploadId,
        mut body: ByteStream,
        on_written: OnWritten<'_>,
    ) -> Result<u64> {
        let mut offset = total(&self.segments(id).await?);
        let mut buf = BytesMut::with_capacity(self.part_size.min(8 << 20));
        loop {
            let next = body.next().await;
            let done = next.is_none();
            match next {
                Some(Ok(b)) => buf.extend_from_slice(&b),
                // Nothing of a failed request is kept: the upload holds whole segments only.
                Some(Err(e)) => return Err(Error::Incoming(e)),
                None => {}
            }
            while buf.len() >= self.part_size || (done && !buf.is_empty()) {
                let take = buf.len().min(self.part_size);
                let segment = buf.split_to(take).freeze();
                let len = segment.len() as u64;
                // Write-once: a replica racing this append at the same offset cannot replace
                // bytes another append (and its running digest) already accounted for.
                self.put_if_absent(self.key(&keys::upload_segment(id, offset)), segment).await?;
                offset = offset.saturating_add(len);
                on_written(offset);
            }
            if done {
                return Ok(offset);
            }
        }
    }

    /// Streams `range` of the upload, one ranged GET per segment it touches.
    pub(super) async fn read_segments(&self, id: &UploadId, range: Option<ByteRange>) -> Result<ByteStream> {
        let pieces = pieces(&self.segments(id).await?, range);
        let store = self.clone();
        let stream = futures_util::stream::iter(pieces)
            .then(move |(key, r)| {
                let store = store.clone();
                async move {
                    match store.get(key, Some(r)).await {
                        Ok(Some(body)) => super::body_stream(body),
                        Ok(None) => {
                            futures_util::stream::once(async { Err(io::Error::from(io::ErrorKind::NotFound)) }).boxed()
                        }
                        Err(e) => {
                            futures_util::stream::once(async move { Err(io::Error::other(e.to_string())) }).boxed()
                        }
                    }
                }
            })
            .flatten();
        Ok(stream.boxed())
    }

    /// Stores the verified `size` bytes of the upload under `dest` (unless a complete object
    /// is there already) and removes the upload.
    pub(super) async fn commit_segments(&self, id: &UploadId, dest: String, size: u64, what: &str) -> Result<()> {
        let segs = verified(self.segments(id).await?, size)
            .map_err(|held| Error::Corrupt(format!("upload for {what} holds {held} bytes, {size} were verified")))?;
        if self.head(dest.clone()).await?.map(|(stored, _)| stored) != Some(size) {
            self.assemble(id, &segs, &dest).await?;
        }
        self.delete_upload(id).await
    }

    /// Removes every object of the upload.
    pub(super) async fn delete_upload(&self, id: &UploadId) -> Result<()> {
        let keys = self.list_all(&self.key(&keys::upload_folder(id))).await?.into_iter().map(|(k, _, _)| k).collect();
        self.delete_keys(keys).await
    }

    /// Assembles the segments under `dest` with server-side copies where S3 allows.
    async fn assemble(&self, id: &UploadId, segs: &[Segment], dest: &str) -> Result<()> {
        let how = assembly(segs);
        match (how, segs) {
            (Assembly::Empty, _) => return self.put(dest.to_owned(), Bytes::new()).await,
            (Assembly::Copy, [one]) => {
                let req = with_sse!(
                    self,
                    self.client.copy_object().bucket(&self.bucket).key(dest).copy_source(self.copy_source(&one.key))
                );
                self.send("CopyObject", req.send()).await?;
                return Ok(());
            }
            _ => {}
        }
        let create = with_sse!(self, self.client.create_multipart_upload().bucket(&self.bucket).key(dest));
        let upload = self.send("CreateMultipartUpload", create.send()).await?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let parts = match how {
            Assembly::CopyParts => self.copy_parts(segs, dest, &upload_id).await,
            _ => self.restream_parts(id, total(segs), dest, &upload_id).await,
        };
        match parts {
            Ok(parts) => {
                let complete = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(dest)
                    .upload_id(&upload_id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
                self.send("CompleteMultipartUpload", complete.send()).await?;
                Ok(())
            }
            Err(e) => {
                let abort = self.client.abort_multipart_upload().bucket(&self.bucket).key(dest).upload_id(&upload_id);
                let _ = self.send("AbortMultipartUpload", abort.send()).await;
                Err(e)
            }
        }
    }

    /// One `UploadPartCopy` per segment.
    async fn copy_parts(&self, segs: &[Segment], dest: &str, upload_id: &str) -> Result<Vec<CompletedPart>> {
        let mut parts = Vec::with_capacity(segs.len());
        for (n, seg) in (1i32..).zip(segs) {
            let copy = self
                .client
                .upload_part_copy()
                .bucket(&self.bucket)
                .key(dest)
                .upload_id(upload_id)
                .part_number(n)
                .copy_source(self.copy_source(&seg.key));
            let out = self.send("UploadPartCopy", copy.send()).await?;
            let etag = out.copy_part_result().and_then(|r| r.e_tag()).unwrap_or_default().to_owned();
            parts.push(CompletedPart::builder().e_tag(etag).part_number(n).build());
        }
        Ok(parts)
    }

    /// The upload's `total` bytes re-streamed into parts of `part_size` (one buffer at a time).
    async fn restream_parts(
        &self,
        id: &UploadId,
        total: u64,
        dest: &str,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>> {
        let mut data = match total {
            0 => futures_util::stream::empty().boxed(),
            _ => self.read_segments(id, Some(ByteRange { start: 0, end: total.saturating_sub(1) })).await?,
        };
        let mut parts = Vec::new();
        let mut buf = BytesMut::with_capacity(self.part_size);
        let mut n: i32 = 0;
        loop {
            let next = data.next().await;
            if let Some(chunk) = &next {
                buf.extend_from_slice(chunk.as_ref().map_err(|e| Error::Io(io::Error::new(e.kind(), e.to_string())))?);
            }
            if buf.len() >= self.part_size || (next.is_none() && (!buf.is_empty() || n == 0)) {
                n = n.checked_add(1).ok_or_else(|| backend_error("UploadPart", io::Error::other("too many parts")))?;
                let body = buf.split().freeze();
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(dest)
                    .upload_id(upload_id)
                    .part_number(n)
                    .body(S3Body::from(body));
                let out = self.send("UploadPart", part.send()).await?;
                parts.push(CompletedPart::builder().e_tag(out.e_tag().unwrap_or_default()).part_number(n).build());
            }
            if next.is_none() {
                return Ok(parts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(offset: u64, size: u64) -> Segment {
        Segment { offset, key: format!("p/{offset:020}"), size }
    }

    fn listed(segs: &[(u64, u64)]) -> Vec<(String, u64)> {
        segs.iter().map(|&(o, s)| (format!("p/{o:020}"), s)).collect()
    }

    #[test]
    fn segments_tile_the_upload_from_zero_or_it_is_being_removed() {
        let segs = tile("p/", listed(&[(3, 4), (0, 3), (7, 1)])).unwrap();
        assert_eq!(segs, [seg(0, 3), seg(3, 4), seg(7, 1)]);
        assert_eq!(total(&segs), 8);
        // The first segment already removed, or one missing in the middle: a gap.
        assert!(matches!(tile("p/", listed(&[(3, 4)])), Err(Error::NotFound)));
        assert!(matches!(tile("p/", listed(&[(0, 3), (4, 1)])), Err(Error::NotFound)));
        // Objects that are not segments are ignored; offsets that would overflow are a gap.
        let mut with_junk = listed(&[(0, 2)]);
        with_junk.push(("p/not-an-offset".into(), 9));
        assert_eq!(tile("p/", with_junk).unwrap(), [seg(0, 2)]);
        assert!(tile("p/", listed(&[(0, u64::MAX), (u64::MAX, 1)])).is_err());
        assert_eq!(tile("p/", Vec::new()).unwrap(), []);
    }

    #[test]
    fn a_commit_keeps_exactly_the_verified_segments() {
        let segs = vec![seg(0, 3), seg(3, 4), seg(7, 2)];
        // A segment appended after the caller hashed 7 bytes is left out.
        assert_eq!(verified(segs.clone(), 7).unwrap(), [seg(0, 3), seg(3, 4)]);
        assert_eq!(verified(segs.clone(), 9).unwrap().len(), 3);
        // A size inside a segment, or past the end, cannot be what was verified.
        assert_eq!(verified(segs.clone(), 5), Err(7));
        assert_eq!(verified(segs, 10), Err(9));
        assert_eq!(verified(Vec::new(), 0).unwrap(), []);
    }

    #[test]
    fn a_range_reads_only_the_segments_it_touches() {
        let segs = [seg(0, 3), seg(3, 4), seg(7, 2)];
        let r = |start, end| Some(ByteRange { start, end });
        assert_eq!(
            pieces(&segs, r(2, 7)),
            [
                (seg(0, 3).key, ByteRange { start: 2, end: 2 }),
                (seg(3, 4).key, ByteRange { start: 0, end: 3 }),
                (seg(7, 2).key, ByteRange { start: 0, end: 0 })
            ]
        );
        assert_eq!(pieces(&segs, r(4, 5)), [(seg(3, 4).key, ByteRange { start: 1, end: 2 })]);
        // The end is clamped to what is held; a start past it reads nothing.
        assert_eq!(pieces(&segs, r(8, u64::MAX)), [(seg(7, 2).key, ByteRange { start: 1, end: 1 })]);
        assert!(pieces(&segs, r(9, 20)).is_empty());
        assert_eq!(pieces(&segs, None).len(), 3);
        assert!(pieces(&[], None).is_empty());
    }

    #[test]
    fn assembly_follows_s3s_part_rules() {
        let big = MIN_PART;
        assert_eq!(assembly(&[]), Assembly::Empty);
        assert_eq!(assembly(&[seg(0, 10)]), Assembly::Copy);
        assert_eq!(assembly(&[seg(0, MAX_COPY + 1)]), Assembly::Restream);
        // Every part but the last must be at least 5 MiB to be copied.
        assert_eq!(assembly(&[seg(0, big), seg(big, 1)]), Assembly::CopyParts);
        assert_eq!(assembly(&[seg(0, 1), seg(1, big)]), Assembly::Restream);
    }
}
