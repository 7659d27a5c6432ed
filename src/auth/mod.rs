//! Who is asking and what they may do: principals, the ECR action each request needs, and the
//! one authorization decision every request passes before any handler runs. Today every client
//! is anonymous and may do anything except write to a pull-through repository (read-only, as in
//! ECR); identities, tokens and IAM-style policies come in behind this same call. Knows nothing
//! of HTTP or storage.

pub mod authenticator;
pub mod policy;
pub mod secrets;
pub mod sigv4;
pub mod token;

use crate::oci::RepositoryName;

pub use authenticator::{Identity, Principal};

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
    /// Describing a repository's images.
    DescribeImages,
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
    /// Describing the registry (its id and replication).
    DescribeRegistry,
    /// Changing a repository's tag mutability.
    PutImageTagMutability,
    /// Setting a repository's policy.
    SetRepositoryPolicy,
    /// Reading a repository's policy.
    GetRepositoryPolicy,
    /// Removing a repository's policy.
    DeleteRepositoryPolicy,
    /// Adding resource tags.
    TagResource,
    /// Removing resource tags.
    UntagResource,
    /// Listing resource tags.
    ListTagsForResource,
    /// Creating a repository creation template.
    CreateRepositoryCreationTemplate,
    /// Listing repository creation templates.
    DescribeRepositoryCreationTemplates,
    /// Changing a repository creation template.
    UpdateRepositoryCreationTemplate,
    /// Removing a repository creation template.
    DeleteRepositoryCreationTemplate,
    /// Setting a repository's lifecycle policy.
    PutLifecyclePolicy,
    /// Reading a repository's lifecycle policy.
    GetLifecyclePolicy,
    /// Removing a repository's lifecycle policy.
    DeleteLifecyclePolicy,
    /// Starting a lifecycle policy preview.
    StartLifecyclePolicyPreview,
    /// Reading a lifecycle policy preview.
    GetLifecyclePolicyPreview,
    /// Setting the registry's replication configuration.
    PutReplicationConfiguration,
    /// Setting the registry policy.
    PutRegistryPolicy,
    /// Reading the registry policy.
    GetRegistryPolicy,
    /// Removing the registry policy.
    DeleteRegistryPolicy,
    /// Reading an image's replication status.
    DescribeImageReplicationStatus,
    /// Starting a replication backfill.
    StartReplicationBackfill,
    /// Stopping a replication backfill.
    StopReplicationBackfill,
    /// Reading a replication backfill's progress and results.
    DescribeReplicationBackfillResults,
    /// Listing replication backfills.
    ListReplicationBackfills,
    /// Creating a pull-through cache rule.
    CreatePullThroughCacheRule,
    /// Listing pull-through cache rules.
    DescribePullThroughCacheRules,
    /// Changing a pull-through cache rule's credentials.
    UpdatePullThroughCacheRule,
    /// Removing a pull-through cache rule.
    DeletePullThroughCacheRule,
    /// Checking that a pull-through cache rule reaches its upstream.
    ValidatePullThroughCacheRule,
    /// Setting the registry's scanning configuration.
    PutRegistryScanningConfiguration,
    /// Reading the registry's scanning configuration.
    GetRegistryScanningConfiguration,
    /// Setting a repository's scan on push.
    PutImageScanningConfiguration,
    /// Reading repositories' scanning configuration.
    BatchGetRepositoryScanningConfiguration,
    /// Setting an account setting.
    PutAccountSetting,
    /// Reading an account setting.
    GetAccountSetting,
    /// Pushing an image as another registry's replication (a permission, not an operation):
    /// what a replicating registry needs at its destination, in place of the push actions.
    ReplicateImage,
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
            Self::DescribeImages => "ecr:DescribeImages",
            Self::DescribeRepositories => "ecr:DescribeRepositories",
            Self::BatchImportUpstreamImage => "ecr:BatchImportUpstreamImage",
            Self::CreateRepository => "ecr:CreateRepository",
            Self::DeleteRepository => "ecr:DeleteRepository",
            Self::GetAuthorizationToken => "ecr:GetAuthorizationToken",
            Self::DescribeRegistry => "ecr:DescribeRegistry",
            Self::PutImageTagMutability => "ecr:PutImageTagMutability",
            Self::SetRepositoryPolicy => "ecr:SetRepositoryPolicy",
            Self::GetRepositoryPolicy => "ecr:GetRepositoryPolicy",
            Self::DeleteRepositoryPolicy => "ecr:DeleteRepositoryPolicy",
            Self::TagResource => "ecr:TagResource",
            Self::UntagResource => "ecr:UntagResource",
            Self::ListTagsForResource => "ecr:ListTagsForResource",
            Self::CreateRepositoryCreationTemplate => "ecr:CreateRepositoryCreationTemplate",
            Self::DescribeRepositoryCreationTemplates => "ecr:DescribeRepositoryCreationTemplates",
            Self::UpdateRepositoryCreationTemplate => "ecr:UpdateRepositoryCreationTemplate",
            Self::DeleteRepositoryCreationTemplate => "ecr:DeleteRepositoryCreationTemplate",
            Self::PutLifecyclePolicy => "ecr:PutLifecyclePolicy",
            Self::GetLifecyclePolicy => "ecr:GetLifecyclePolicy",
            Self::DeleteLifecyclePolicy => "ecr:DeleteLifecyclePolicy",
            Self::StartLifecyclePolicyPreview => "ecr:StartLifecyclePolicyPreview",
            Self::GetLifecyclePolicyPreview => "ecr:GetLifecyclePolicyPreview",
            Self::PutReplicationConfiguration => "ecr:PutReplicationConfiguration",
            Self::PutRegistryPolicy => "ecr:PutRegistryPolicy",
            Self::GetRegistryPolicy => "ecr:GetRegistryPolicy",
            Self::DeleteRegistryPolicy => "ecr:DeleteRegistryPolicy",
            Self::DescribeImageReplicationStatus => "ecr:DescribeImageReplicationStatus",
            Self::StartReplicationBackfill => "ecr:StartReplicationBackfill",
            Self::StopReplicationBackfill => "ecr:StopReplicationBackfill",
            Self::DescribeReplicationBackfillResults => "ecr:DescribeReplicationBackfillResults",
            Self::ListReplicationBackfills => "ecr:ListReplicationBackfills",
            Self::CreatePullThroughCacheRule => "ecr:CreatePullThroughCacheRule",
            Self::DescribePullThroughCacheRules => "ecr:DescribePullThroughCacheRules",
            Self::UpdatePullThroughCacheRule => "ecr:UpdatePullThroughCacheRule",
            Self::DeletePullThroughCacheRule => "ecr:DeletePullThroughCacheRule",
            Self::ValidatePullThroughCacheRule => "ecr:ValidatePullThroughCacheRule",
            Self::PutRegistryScanningConfiguration => "ecr:PutRegistryScanningConfiguration",
            Self::GetRegistryScanningConfiguration => "ecr:GetRegistryScanningConfiguration",
            Self::PutImageScanningConfiguration => "ecr:PutImageScanningConfiguration",
            Self::BatchGetRepositoryScanningConfiguration => "ecr:BatchGetRepositoryScanningConfiguration",
            Self::PutAccountSetting => "ecr:PutAccountSetting",
            Self::GetAccountSetting => "ecr:GetAccountSetting",
            Self::ReplicateImage => "ecr:ReplicateImage",
        }
    }

    /// What the action becomes when another registry replicates into this one: every action
    /// of a push (and the reads a push makes to skip what is there) is `ecr:ReplicateImage`;
    /// anything else stays itself (a registry policy cannot grant it, so a replicator cannot
    /// delete or list).
    pub fn as_replication(self) -> Self {
        match self {
            Self::BatchGetImage
            | Self::BatchCheckLayerAvailability
            | Self::InitiateLayerUpload
            | Self::UploadLayerPart
            | Self::CompleteLayerUpload
            | Self::PutImage => Self::ReplicateImage,
            other => other,
        }
    }

    /// Whether the action pushes or deletes images (what a read-only repository, a
    /// pull-through cache, refuses; deleting a whole cache repository is allowed, as in ECR).
    pub fn writes(self) -> bool {
        matches!(
            self,
            Self::InitiateLayerUpload
                | Self::UploadLayerPart
                | Self::CompleteLayerUpload
                | Self::PutImage
                | Self::BatchDeleteImage
                | Self::ReplicateImage
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A write to a read-only repository (a pull-through cache), and why it is read-only.
    ReadOnly(String),
    /// No policy allows it, or one denies it.
    NotAuthorized {
        /// The action refused.
        action: Action,
        /// The resource's ARN.
        resource: String,
    },
}

/// The policies a decision draws on, when access control is on.
pub struct Policies<'a> {
    /// The registry's account id and region, for ARNs.
    pub registry_id: &'a str,
    /// The region.
    pub region: &'a str,
    /// Identity policies of callers without credentials.
    pub anonymous: &'a [policy::Policy],
    /// A repository's own policy, if it has one.
    pub repository: &'a dyn Fn(&RepositoryName) -> Option<std::sync::Arc<policy::Policy>>,
}

/// `arn:aws:ecr:<region>:<account>:repository/<name>`.
pub fn repository_arn(region: &str, account: &str, name: &RepositoryName) -> String {
    format!("arn:aws:ecr:{region}:{account}:repository/{name}")
}

/// The one authorization decision: may `principal` do every one of `accesses`? Writes to a
/// read-only repository are refused whatever the policies say. With `policies` (access control
/// on), each access is decided by the caller's identity policies (or the anonymous ones) and
/// the repository's policy: an explicit deny wins, else an allow in either is enough.
pub fn authorize(
    principal: &Principal,
    accesses: &[Access],
    read_only: &dyn Fn(&RepositoryName) -> Option<String>,
    policies: Option<&Policies<'_>>,
    context: &policy::Context,
) -> Result<(), Refusal> {
    for access in accesses {
        if let (true, Some(name)) = (access.action.writes(), &access.repository) {
            if let Some(reason) = read_only(name) {
                return Err(Refusal::ReadOnly(reason));
            }
        }
    }
    let Some(policies) = policies else { return Ok(()) };
    let caller = principal.caller();
    let identity: Vec<&policy::Policy> = match principal {
        Principal::Anonymous => policies.anonymous.iter().collect(),
        Principal::User(id) => id.policies.iter().collect(),
    };
    for access in accesses {
        let resource = match &access.repository {
            Some(name) => repository_arn(policies.region, policies.registry_id, name),
            None => "*".to_owned(),
        };
        let repository_policy = access.repository.as_ref().and_then(|n| (policies.repository)(n));
        let mut applicable = identity.clone();
        if let Some(p) = &repository_policy {
            applicable.push(p);
        }
        let request = policy::Request { caller: &caller, action: access.action.as_str(), resource: &resource, context };
        if !policy::evaluate(&request, &applicable).allowed() {
            return Err(Refusal::NotAuthorized { action: access.action, resource });
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
        let ctx = policy::Context {
            source_ip: "127.0.0.1".parse().unwrap(),
            secure_transport: false,
            current_time: std::time::SystemTime::now(),
        };
        let check = |accesses: &[Access]| authorize(&who, accesses, &read_only, None, &ctx);
        assert!(check(&[Access::on(Action::BatchGetImage, &cache)]).is_ok());
        assert!(check(&[Access::on(Action::PutImage, &own)]).is_ok());
        let denied = check(&[Access::on(Action::PutImage, &cache)]).unwrap_err();
        assert!(matches!(denied, Refusal::ReadOnly(m) if m.contains("cache")));
        // A mount reads its source and writes its target: either may deny.
        let mount = [Access::on(Action::InitiateLayerUpload, &cache), Access::on(Action::GetDownloadUrlForLayer, &own)];
        assert!(check(&mount).is_err());
        assert!(check(&[Access::registry(Action::DescribeRepositories)]).is_ok());
        // With access control on and nothing granted, anonymous may do nothing.
        let none = |_: &RepositoryName| None;
        let policies = Policies { registry_id: "123456789012", region: "us-east-1", anonymous: &[], repository: &none };
        let refused = authorize(&who, &[Access::on(Action::BatchGetImage, &own)], &read_only, Some(&policies), &ctx);
        assert_eq!(
            refused,
            Err(Refusal::NotAuthorized {
                action: Action::BatchGetImage,
                resource: "arn:aws:ecr:us-east-1:123456789012:repository/team/app".into()
            })
        );
        assert_eq!(Action::BatchDeleteImage.as_str(), "ecr:BatchDeleteImage");
    }
}
