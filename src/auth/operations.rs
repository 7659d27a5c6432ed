//! The one list of the ECR operations Ferry answers, by area, and of the permission-only IAM
//! actions: each name appears here once, and from this list come the operation-name enums (one
//! per area, and [`OperationName`] over all), the IAM [`Action`]s (`ecr:<Operation>`, plus
//! `ecr:ReplicateImage` and `ecr:BatchImportUpstreamImage`), the ECR API's target parser, the
//! names for metrics and the audit trail, and which areas must handle which operations (every
//! area's parser matches its enum exhaustively, so an operation added here and not handled does
//! not compile). Knows nothing of what the operations do.

/// Declares the areas and their operations.
macro_rules! ecr_operations {
    ($($area:ident { $($op:ident),+ $(,)? })+ ; permissions { $($permission:ident),+ $(,)? }) => {
        /// An IAM action: `ecr:<Operation>` for every operation, and the permission-only ones.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Action {
            $($(
                #[doc = concat!("`ecr:", stringify!($op), "`.")]
                $op,
            )+)+
            $(
                #[doc = concat!("`ecr:", stringify!($permission), "` (a permission, not an operation).")]
                $permission,
            )+
        }

        impl Action {
            /// The IAM action's name, `ecr:<Name>`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($(Self::$op => concat!("ecr:", stringify!($op)),)+)+
                    $(Self::$permission => concat!("ecr:", stringify!($permission)),)+
                }
            }
        }

        /// One enum per area, its operations' names.
        pub mod names {
            $(
                #[doc = concat!("The ", stringify!($area), " operations.")]
                #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
                pub enum $area {
                    $(
                        #[doc = concat!("`", stringify!($op), "`.")]
                        $op,
                    )+
                }

                impl $area {
                    /// The operation's name, as `X-Amz-Target` ends and IAM's action names it.
                    pub fn as_str(self) -> &'static str {
                        match self {
                            $(Self::$op => stringify!($op),)+
                        }
                    }
                }
            )+
        }

        /// Any operation Ferry answers.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum OperationName {
            $(
                #[doc = concat!("One of the ", stringify!($area), " operations.")]
                $area(names::$area),
            )+
        }

        impl OperationName {
            /// Every operation.
            pub const ALL: &'static [Self] = &[$($(Self::$area(names::$area::$op),)+)+];

            /// The operation `name` names, if Ferry answers it.
            pub fn parse(name: &str) -> Option<Self> {
                match name {
                    $($(stringify!($op) => Some(Self::$area(names::$area::$op)),)+)+
                    _ => None,
                }
            }

            /// Its name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$area(op) => op.as_str(),)+
                }
            }
        }
    };
}

ecr_operations! {
    Repositories {
        GetAuthorizationToken,
        DescribeRegistry,
        CreateRepository,
        DescribeRepositories,
        DeleteRepository,
        PutImageTagMutability,
        SetRepositoryPolicy,
        GetRepositoryPolicy,
        DeleteRepositoryPolicy,
        TagResource,
        UntagResource,
        ListTagsForResource,
    }
    Templates {
        CreateRepositoryCreationTemplate,
        DescribeRepositoryCreationTemplates,
        UpdateRepositoryCreationTemplate,
        DeleteRepositoryCreationTemplate,
    }
    Lifecycle {
        PutLifecyclePolicy,
        GetLifecyclePolicy,
        DeleteLifecyclePolicy,
        StartLifecyclePolicyPreview,
        GetLifecyclePolicyPreview,
    }
    Replication {
        PutReplicationConfiguration,
        PutRegistryPolicy,
        GetRegistryPolicy,
        DeleteRegistryPolicy,
        DescribeImageReplicationStatus,
    }
    Backfill {
        StartReplicationBackfill,
        StopReplicationBackfill,
        DescribeReplicationBackfillResults,
        ListReplicationBackfills,
    }
    Images {
        ListImages,
        DescribeImages,
        BatchGetImage,
        BatchDeleteImage,
        PutImage,
        ListImageReferrers,
    }
    Layers {
        BatchCheckLayerAvailability,
        GetDownloadUrlForLayer,
        InitiateLayerUpload,
        UploadLayerPart,
        CompleteLayerUpload,
    }
    PullThrough {
        CreatePullThroughCacheRule,
        DescribePullThroughCacheRules,
        UpdatePullThroughCacheRule,
        DeletePullThroughCacheRule,
        ValidatePullThroughCacheRule,
    }
    Settings {
        PutRegistryScanningConfiguration,
        GetRegistryScanningConfiguration,
        PutImageScanningConfiguration,
        BatchGetRepositoryScanningConfiguration,
        PutAccountSetting,
        GetAccountSetting,
    };
    permissions {
        // Pushing as another registry's replication: what a replicating registry needs at its
        // destination, in place of the push actions.
        ReplicateImage,
        // Fetching from a pull-through rule's upstream into the cache.
        BatchImportUpstreamImage,
    }
}

impl OperationName {
    /// Whether the audit trail records it when allowed: every change, and
    /// `GetAuthorizationToken` (it hands out credentials); not reads. Refusals are always
    /// recorded.
    pub fn audited(self) -> bool {
        let name = self.as_str();
        name == "GetAuthorizationToken"
            || !["Describe", "Get", "List", "BatchGet", "BatchCheck", "Validate"].iter().any(|p| name.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_to_itself_once() {
        let mut seen = std::collections::HashSet::new();
        for op in OperationName::ALL {
            assert_eq!(OperationName::parse(op.as_str()), Some(*op));
            assert!(seen.insert(op.as_str()), "{} is listed twice", op.as_str());
        }
        assert_eq!(OperationName::ALL.len(), 52);
        assert_eq!(OperationName::parse("LaunchRockets"), None);
        assert!(OperationName::parse("PutImage").unwrap().audited());
        assert!(!OperationName::parse("DescribeImages").unwrap().audited());
        assert!(OperationName::parse("GetAuthorizationToken").unwrap().audited());
        assert_eq!(Action::PutImage.as_str(), "ecr:PutImage");
        assert_eq!(Action::ReplicateImage.as_str(), "ecr:ReplicateImage");
    }
}
