//! `cloudkeys rotate NAME… | -l SELECTOR | --all [-n NS | -A] [--now] [--immediate]`: sets
//! `cloudkeys.io/rotate` to a value not used before (with `--now`, `cloudkeys.io/rotate-now:
//! "true"` next to it, so that the rotation does not wait for a rotation window; with
//! `--immediate`, that and `cloudkeys.io/rotate-grace-period: 0s`); the operator does the rest.

use super::output::{say, warn_user};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::api::{AccessKey, Decoded};
use crate::core::rotation::{RotationSettings, ROTATE_ANNOTATION, ROTATE_GRACE_ANNOTATION, ROTATE_NOW_ANNOTATION};

use super::{CliError, ClusterArgs, Health, ScopeArgs};

/// Who the annotations are written as (kubectl shows it in managedFields).
const FIELD_MANAGER: &str = "cloudkeys-cli";

#[derive(Debug, Clone, clap::Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["names", "selector", "all"]))]
pub struct RotateArgs {
    /// The AccessKeys to rotate.
    #[arg(conflicts_with = "all_namespaces", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub names: Vec<String>,
    /// Rotate the AccessKeys whose labels match (`app=web,tier!=db`); an empty selector, which
    /// would match every AccessKey, is refused.
    #[arg(short = 'l', long, value_name = "SELECTOR", conflicts_with = "all", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub selector: Option<String>,
    /// Rotate every AccessKey of the namespace (or of every namespace with -A).
    #[arg(long)]
    pub all: bool,
    /// Rotate now, without waiting for the AccessKey's next rotation window.
    #[arg(long)]
    pub now: bool,
    /// Revoke each replaced key at once instead of after its grace period (a leaked key); does
    /// not wait for a rotation window either.
    #[arg(long)]
    pub immediate: bool,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// A `cloudkeys.io/rotate` value that this AccessKey has not seen: the time in seconds, with a
/// suffix when that is the value it holds or handled last (two requests in one second).
pub fn next_request_value(ak: &AccessKey, now: jiff::Timestamp) -> String {
    let current = ak.annotations().get(ROTATE_ANNOTATION).map(String::as_str);
    let handled = ak.status.as_ref().and_then(|s| s.last_rotate_request.as_deref());
    let base = now.as_second().to_string();
    let mut value = base.clone();
    let mut n = 1;
    while Some(value.as_str()) == current || Some(value.as_str()) == handled {
        value = format!("{base}.{n}");
        n += 1;
    }
    value
}

/// The merge patch of one request; an earlier request's `--immediate` or `--now` annotation that
/// this one does not ask for goes, so that it cannot apply to this rotation too.
pub fn request_patch(value: &str, now: bool, immediate: bool) -> serde_json::Value {
    let grace = if immediate { serde_json::json!("0s") } else { serde_json::Value::Null };
    let at_once = if now || immediate { serde_json::json!("true") } else { serde_json::Value::Null };
    serde_json::json!({"metadata": {"annotations": {
        ROTATE_ANNOTATION: value, ROTATE_GRACE_ANNOTATION: grace, ROTATE_NOW_ANNOTATION: at_once}}})
}

pub async fn run(args: &RotateArgs) -> Result<Health, CliError> {
    let (client, context_ns) = args.cluster.connect().await?;
    let scope = args.scope.scope(&context_ns);
    let targets: Vec<AccessKey> = if !args.names.is_empty() {
        let mut found = Vec::new();
        for name in &args.names {
            found.extend(super::status::access_keys(&client, &scope, Some(name)).await?);
        }
        found
    } else {
        let api = scope.api::<Decoded<AccessKey>>(&client);
        let mut params = ListParams::default();
        if let Some(selector) = &args.selector {
            params = params.labels(selector);
        }
        let listed = api.list(&params).await.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 400 => CliError::Usage(format!("invalid selector: {}", s.message)),
            e => CliError::listing("accesskeys.cloudkeys.io", e),
        })?;
        super::cluster::readable(listed.items)
    };
    if targets.is_empty() {
        warn_user!("No AccessKeys matched {}: nothing was requested.", scope.describe());
        return Ok(Health::Unhealthy);
    }
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let mut all_done = true;
    for ak in &targets {
        let ns = ak.namespace().unwrap_or_default();
        let name = ak.name_any();
        let value = next_request_value(ak, jiff::Timestamp::now());
        let api: Api<AccessKey> = Api::namespaced(client.clone(), &ns);
        match api.patch(&name, &params, &Patch::Merge(request_patch(&value, args.now, args.immediate))).await {
            Ok(_) => say!("{}", requested_line(ak, &value, args.now || args.immediate, args.immediate)),
            Err(e) => {
                all_done = false;
                warn_user!("accesskey {ns}/{name}: rotation not requested: {e}");
            }
        }
    }
    Ok(Health::of(all_done))
}

/// What was requested, in one line.
fn requested_line(ak: &AccessKey, value: &str, now: bool, immediate: bool) -> String {
    let has_key = ak.status.as_ref().is_some_and(|s| s.access_key_id.is_some());
    let then = if !has_key {
        "it has no key yet: nothing is replaced, its first key is issued as usual".to_string()
    } else if immediate {
        "the replaced key is revoked at once".to_string()
    } else {
        let after = if ak.spec.consumers.is_some() { " after the consumers roll out" } else { " later" };
        match RotationSettings::of(&ak.spec, None) {
            Ok(s) => {
                format!("the replaced key is revoked {}{after}", crate::api::duration::format_duration(s.grace_period))
            }
            Err(_) => "the replaced key is revoked after its grace period".to_string(),
        }
    };
    // Windows an issuer gives by default are not read here: the operator tells of those
    // (`status.nextRotationTime`, event RotationDeferred).
    let windows = ak.spec.rotation.as_ref().and_then(|r| r.windows.as_ref()).is_some_and(|w| !w.is_empty());
    let wait = if windows && has_key && !now { "; it waits for the next rotation window (--now does not)" } else { "" };
    format!(
        "accesskey {}/{}: rotation requested ({ROTATE_ANNOTATION}={value}); {then}{wait}",
        ak.namespace().unwrap_or_default(),
        ak.name_any()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access_key(annotation: Option<&str>, handled: Option<&str>) -> AccessKey {
        let mut ak: AccessKey = serde_json::from_value(serde_json::json!({
            "apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey",
            "metadata": {"name": "a", "namespace": "n"},
            "spec": {"issuerRef": {"name": "i"}, "secretName": "s", "local": {}},
        }))
        .expect("AccessKey literal");
        if let Some(v) = annotation {
            ak.annotations_mut().insert(ROTATE_ANNOTATION.into(), v.into());
        }
        ak.status =
            Some(crate::api::AccessKeyStatus { last_rotate_request: handled.map(Into::into), ..Default::default() });
        ak
    }

    #[test]
    fn each_request_is_a_value_the_access_key_has_not_seen() {
        let now = jiff::Timestamp::from_second(1_764_547_200).expect("time");
        assert_eq!(next_request_value(&access_key(None, None), now), "1764547200");
        assert_eq!(next_request_value(&access_key(Some("1764547200"), None), now), "1764547200.1");
        assert_eq!(next_request_value(&access_key(Some("1764547200.1"), Some("1764547200")), now), "1764547200.2");
    }

    #[test]
    fn the_line_promises_a_revocation_only_when_there_is_a_key_to_replace() {
        let fresh = access_key(None, None);
        let line = requested_line(&fresh, "1", false, false);
        assert!(line.contains("no key yet") && !line.contains("revoked"), "{line}");
        let mut issued = access_key(None, None);
        if let Some(s) = issued.status.as_mut() {
            s.access_key_id = Some("K1".into());
        }
        assert!(requested_line(&issued, "1", false, false).contains("the replaced key is revoked 10m later"));
        assert!(requested_line(&issued, "1", true, true).contains("revoked at once"));
        assert!(!requested_line(&issued, "1", false, false).contains("window"), "no windows of its own");
        issued.spec.rotation = Some(Box::new(crate::api::Rotation {
            windows: Some(vec![crate::api::RotationWindow {
                schedule: "0 2 * * *".into(),
                duration: "2h".into(),
                time_zone: None,
            }]),
            ..Default::default()
        }));
        assert!(
            requested_line(&issued, "1", false, false).ends_with("waits for the next rotation window (--now does not)")
        );
        assert!(!requested_line(&issued, "1", true, false).contains("window"));
    }

    #[test]
    fn only_an_immediate_request_keeps_a_zero_grace_period() {
        let p = request_patch("1", false, true);
        assert_eq!(p["metadata"]["annotations"][ROTATE_GRACE_ANNOTATION], "0s");
        let p = request_patch("2", false, false);
        assert!(p["metadata"]["annotations"][ROTATE_GRACE_ANNOTATION].is_null());
        assert_eq!(p["metadata"]["annotations"][ROTATE_ANNOTATION], "2");
    }

    #[test]
    fn only_now_or_immediate_skips_the_rotation_window_and_a_plain_request_clears_it() {
        assert_eq!(request_patch("1", true, false)["metadata"]["annotations"][ROTATE_NOW_ANNOTATION], "true");
        assert_eq!(request_patch("1", false, true)["metadata"]["annotations"][ROTATE_NOW_ANNOTATION], "true");
        assert!(request_patch("2", false, false)["metadata"]["annotations"][ROTATE_NOW_ANNOTATION].is_null());
    }
}
