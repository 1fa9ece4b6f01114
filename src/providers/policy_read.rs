//! What an issuer's policy may have to ask the provider before a key is minted, when the spec
//! alone cannot tell: what an existing Exoscale role grants (mode (a) under `allowIAM: false`),
//! and whether an OUTSCALE EIM user is the issuer's own identity. The controller asks only once
//! every rule the spec can answer has passed, caches the answer, and hands it to the pure
//! policy check.

/// One question, about one role or user of the issuer's account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Question {
    /// Exoscale: what the existing IAM role with this id grants.
    ExoscaleRole(String),
    /// OUTSCALE: whether this EIM user owns the issuer's own access key.
    OutscaleUser(String),
}

impl std::fmt::Display for Question {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ExoscaleRole(id) => write!(f, "IAM role {id}"),
            Self::OutscaleUser(user) => write!(f, "EIM user {user}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Role(RoleGrants),
    /// The provider has no role of that id.
    NoSuchRole,
    /// The issuer's key may not read the role (the provider's words): it cannot be judged.
    RoleUnreadable(String),
    /// Whether the user is the issuer's own identity.
    IssuerIdentity(bool),
}

/// What an Exoscale role grants, as far as IAM rights go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoleGrants {
    /// `default-service-strategy`; `None` when the role has no policy, which Exoscale reads as
    /// "allow all".
    pub default_service_strategy: Option<String>,
    /// The `type` of the policy's `iam` service (`allow`, `deny`, `rules`), if it lists one.
    pub iam_service: Option<String>,
    /// The role's `permissions` (e.g. `reset-iam-organization-policy`).
    pub permissions: Vec<String>,
}
