//! Who is asking and what they may do: principals, the ECR action each request needs, and the
//! one authorization decision every request passes before any handler runs. Today every client
//! is anonymous and may do anything except write to a pull-through repository (read-only, as in
//! ECR); identities, tokens and IAM-style policies come in behind this same call. Knows nothing
//! of HTTP or storage.

pub mod policy;
pub mod secrets;
pub mod token;

use crate::oci::RepositoryName;

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials.
    Anonymous,
}

/// An ECR action (the IAM action every request maps to). The registry API's endpoints map as
/// ECR's do; the rest are there for the ECR API and background jobs that come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Reading a manifest (GET/HEAD by tag or digest), or a subject's referrers.
    BatchGetImage,
    /// Reading a blob's bytes.
    GetDownloadUrlForLayer,
    /// Asking whether a blob is there (HEAD).
    BatchCheckLayerAvailability,
    /// Opening an upload (or mounting a blob).
    InitiateLayerUpload,
    /// Sending an upload's bytes, or asking its progress.
    UploadLayerPart,
    /// Finishing an upload.
    CompleteLayerUpload,
    /// Storing a manifest, or moving a tag.
    PutImage,
    /// Deleting a manifest, a tag or a blob.
    BatchDeleteImage,
    /// Listing a repository's tags.
    ListImages,
    /// Listing repositories (the catalog).
    DescribeRepositories,
    /// Fetching from a pull-through rule's upstream into the cache.
    BatchImportUpstreamImage,
    /// Creating a repository.
    CreateRepository,
    /// Deleting a repository.
    DeleteRepository,
    /// Getting a registry password (`docker login`).
    GetAuthorizationToken,
}

impl Action {
    /// The IAM action name, `ecr:<Operation>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BatchGetImage => "ecr:BatchGetImage",
            Self::GetDownloadUrlForLayer => "ecr:GetDownloadUrlForLayer",
            Self::BatchCheckLayerAvailability => "ecr:BatchCheckLayerAvailability",
            Self::InitiateLayerUpload => "ecr:InitiateLayerUpload",
            Self::UploadLayerPart => "ecr:UploadLayerPart",
            Self::CompleteLayerUpload => "ecr:CompleteLayerUpload",
            Self::PutImage => "ecr:PutImage",
            Self::BatchDeleteImage => "ecr:BatchDeleteImage",
            Self::ListImages => "ecr:ListImages",
            Self::DescribeRepositories => "ecr:DescribeRepositories",
            Self::BatchImportUpstreamImage => "ecr:BatchImportUpstreamImage",
            Self::CreateRepository => "ecr:CreateRepository",
            Self::DeleteRepository => "ecr:DeleteRepository",
            Self::GetAuthorizationToken => "ecr:GetAuthorizationToken",
        }
    }

    /// Whether the action changes a repository's content.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Self::InitiateLayerUpload
                | Self::UploadLayerPart
                | Self::CompleteLayerUpload
                | Self::PutImage
                | Self::BatchDeleteImage
                | Self::CreateRepository
                | Self::DeleteRepository
        )
    }
}

/// One thing a request needs to do: an action, on a repository or on the registry as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The action.
    pub action: Action,
    /// The repository it acts on; `None` for registry-wide actions.
    pub repository: Option<RepositoryName>,
}

impl Access {
    /// `action` on `repository`.
    pub fn on(action: Action, repository: &RepositoryName) -> Self {
        Self { action, repository: Some(repository.clone()) }
    }

    /// `action` on the registry as a whole.
    pub fn registry(action: Action) -> Self {
        Self { action, repository: None }
    }
}

/// Why a request may not proceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denied {
    /// What was refused, and why.
    pub message: String,
}

/// The one authorization decision: may `principal` do every one of `accesses`? `read_only`
/// says why a repository cannot be written (a pull-through cache), if it cannot.
pub fn authorize(
    principal: &Principal,
    accesses: &[Access],
    read_only: &dyn Fn(&RepositoryName) -> Option<String>,
) -> Result<(), Denied> {
    match principal {
        Principal::Anonymous => {}
    }
    for access in accesses {
        if let (true, Some(name)) = (access.action.writes(), &access.repository) {
            if let Some(reason) = read_only(name) {
                return Err(Denied { message: reason });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_to_read_only_repositories_are_denied_reads_are_not() {
        let cache = RepositoryName::parse("docker-hub/library/nginx").unwrap();
        let own = RepositoryName::parse("team/app").unwrap();
        let read_only = |n: &RepositoryName| n.as_str().starts_with("docker-hub/").then(|| format!("{n} is a cache"));
        let who = Principal::Anonymous;
        assert!(authorize(&who, &[Access::on(Action::BatchGetImage, &cache)], &read_only).is_ok());
        assert!(authorize(&who, &[Access::on(Action::PutImage, &own)], &read_only).is_ok());
        let denied = authorize(&who, &[Access::on(Action::PutImage, &cache)], &read_only).unwrap_err();
        assert!(denied.message.contains("cache"));
        // A mount reads its source and writes its target: either may deny.
        let mount = [Access::on(Action::InitiateLayerUpload, &cache), Access::on(Action::GetDownloadUrlForLayer, &own)];
        assert!(authorize(&who, &mount, &read_only).is_err());
        assert!(authorize(&who, &[Access::registry(Action::DescribeRepositories)], &read_only).is_ok());
        assert_eq!(Action::BatchDeleteImage.as_str(), "ecr:BatchDeleteImage");
    }
}
