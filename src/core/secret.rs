//! The Secret an AccessKey writes: its data rendered from templates, its labels, annotations
//! and owner reference, and what an observed Secret says about the key in it. Pure functions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};
use minijinja::{Environment, UndefinedBehavior};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::api::AccessKey;
use crate::providers::{default_secret_data, TemplateVars};

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "cloudkeys";
pub const ACCESS_KEY_LABEL: &str = "cloudkeys.io/access-key";
pub const KEY_ID_ANNOTATION: &str = "cloudkeys.io/access-key-id";
/// SHA-256 over the data the operator wrote: an edited Secret no longer matches it.
pub const DATA_HASH_ANNOTATION: &str = "cloudkeys.io/data-hash";

/// A `secretTemplate.data` entry that cannot be rendered. Never contains a rendered value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secretTemplate.data[{key}]: {message}")]
pub struct TemplateError {
    pub key: String,
    pub message: String,
}

/// The rendered Secret data. Holds the secret: no `Debug`, never logged.
pub struct SecretData(BTreeMap<String, String>);

impl SecretData {
    pub fn hash(&self) -> String {
        data_hash(self.0.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

fn data_hash<'a>(entries: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut h = Sha256::new();
    for (k, v) in entries {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
    hex::encode(h.finalize())
}

fn templates<'a>(ak: &'a AccessKey, provider: &str) -> Vec<(&'a str, &'a str)> {
    match ak.spec.secret_template.as_ref().and_then(|t| t.data.as_ref()) {
        Some(data) => data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        None => default_secret_data(provider).to_vec(),
    }
}

/// What rendering one Secret may cost: a tenant's template must not stall or exhaust the
/// operator that serves everyone else.
const RENDER_FUEL: u64 = 10_000;
pub const MAX_RENDERED_BYTES: usize = 1 << 20;

/// A template is text and `{{ variable }}` substitutions, optionally through a few filters
/// without arguments: no statements (loops, `set`, macros), no operators, no calls. What is
/// left renders in time linear in its length.
fn check_syntax(template: &str) -> Result<(), String> {
    static EXPRESSION: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*(\|\s*(upper|lower|trim|title|capitalize)\s*)*$")
            .expect("the expression pattern compiles")
    });
    if template.contains("{%") {
        return Err("statements ({% ... %}) are not supported: only {{ variable }} substitutions".into());
    }
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("an unclosed {{".into());
        };
        let expression = after[..end].trim_start_matches('-').trim_end_matches('-');
        if !EXPRESSION.is_match(expression) {
            return Err(format!(
                "{{{{{expression}}}}} is not a variable: only {{{{ name }}}}, optionally | upper, lower, trim, title or capitalize"
            ));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

/// Collects rendered output up to what is left of the budget; past it, the write fails.
struct Bounded<'a> {
    out: Vec<u8>,
    left: &'a mut usize,
}

impl std::io::Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > *self.left {
            return Err(std::io::Error::other("rendered Secret data over 1 MiB"));
        }
        *self.left -= buf.len();
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn render(
    ak: &AccessKey,
    provider: &str,
    vars: &TemplateVars,
    access_key_id: &str,
    secret: &str,
) -> Result<BTreeMap<String, String>, TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_fuel(Some(RENDER_FUEL));
    let mut left = MAX_RENDERED_BYTES;
    let mut ctx: BTreeMap<&str, &str> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ctx.insert("accessKeyId", access_key_id);
    ctx.insert("secretAccessKey", secret);
    ctx.insert("provider", provider);
    templates(ak, provider)
        .into_iter()
        .map(|(key, template)| {
            // minijinja's messages name the template and the undefined variable, never values.
            let fail = |e: minijinja::Error| TemplateError { key: key.to_string(), message: template_message(&e) };
            check_syntax(template).map_err(|message| TemplateError { key: key.to_string(), message })?;
            let compiled = env.template_from_str(template).map_err(fail)?;
            let mut out = Bounded { out: Vec::new(), left: &mut left };
            compiled.render_captured_to(&ctx, &mut out).map_err(fail)?;
            let rendered = String::from_utf8(out.out)
                .map_err(|_| TemplateError { key: key.to_string(), message: "renders invalid UTF-8".into() })?;
            Ok((key.to_string(), rendered))
        })
        .collect()
}

fn template_message(e: &minijinja::Error) -> String {
    match e.kind() {
        minijinja::ErrorKind::UndefinedError => {
            "uses an unknown variable; available: accessKeyId, secretAccessKey, provider, endpoint, and zone (exoscale) or region (outscale)".to_string()
        }
        minijinja::ErrorKind::OutOfFuel => "takes too long to render".to_string(),
        minijinja::ErrorKind::WriteFailure => format!("renders more than {} bytes of Secret data", MAX_RENDERED_BYTES),
        _ => format!("invalid template: {}", e.detail().unwrap_or("syntax error")),
    }
}

/// Renders with placeholder values: catches unknown variables and syntax errors before a key is
/// created, so that a bad template never costs a key.
pub fn check_templates(ak: &AccessKey, provider: &str, vars: &TemplateVars) -> Result<(), TemplateError> {
    render(ak, provider, vars, "AKIDPLACEHOLDER", "placeholder").map(|_| ())
}

/// Renders the Secret data for a fresh key.
pub fn render_data(
    ak: &AccessKey,
    provider: &str,
    vars: &TemplateVars,
    access_key_id: &str,
    secret: &SecretString,
) -> Result<SecretData, TemplateError> {
    render(ak, provider, vars, access_key_id, secret.expose_secret()).map(SecretData)
}

/// Labels and annotations the Secret must carry besides the data.
pub fn desired_metadata(
    ak: &AccessKey,
    access_key_id: &str,
    data_hash: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let template = ak.spec.secret_template.clone().unwrap_or_default();
    let mut labels = template.labels;
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert(ACCESS_KEY_LABEL.into(), ak.name_any());
    let mut annotations = template.annotations;
    annotations.insert(KEY_ID_ANNOTATION.into(), access_key_id.into());
    annotations.insert(DATA_HASH_ANNOTATION.into(), data_hash.into());
    (labels, annotations)
}

fn controller_ref(ak: &AccessKey) -> Option<OwnerReference> {
    ak.controller_owner_ref(&())
}

/// The whole Secret for a fresh key, created from scratch.
pub fn desired_secret(ak: &AccessKey, access_key_id: &str, data: &SecretData) -> Secret {
    replaced_secret(ak, access_key_id, data, Secret::default())
}

/// `existing` with the data replaced by exactly `data` and the operator's labels, annotations
/// and owner reference set; everything else others put there is kept.
pub fn replaced_secret(ak: &AccessKey, access_key_id: &str, data: &SecretData, existing: Secret) -> Secret {
    let (labels, annotations) = desired_metadata(ak, access_key_id, &data.hash());
    let mut secret = existing;
    secret.metadata.name = Some(ak.spec.secret_name.clone());
    secret.metadata.namespace = ak.namespace();
    secret.metadata.labels.get_or_insert_with(BTreeMap::new).extend(labels);
    secret.metadata.annotations.get_or_insert_with(BTreeMap::new).extend(annotations);
    if let Some(owner) = controller_ref(ak) {
        let refs = secret.metadata.owner_references.get_or_insert_with(Vec::new);
        refs.retain(|r| r.uid != owner.uid);
        refs.push(owner);
    }
    secret.type_ = Some("Opaque".into());
    secret.string_data = None;
    secret.data = Some(data.0.iter().map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec()))).collect());
    secret
}

/// The in-place metadata update of the Secret `observed` (labels, annotations, owner
/// reference), as an apply that lands only on that very object: its resourceVersion and UID
/// are preconditions, so a Secret deleted or re-created by someone else meanwhile is a conflict,
/// never adopted.
pub fn metadata_update(ak: &AccessKey, access_key_id: &str, observed: &Secret) -> Secret {
    let stored_hash = observed.annotations().get(DATA_HASH_ANNOTATION).map_or("", String::as_str);
    let mut desired = desired_secret_metadata(ak, access_key_id, stored_hash);
    desired.metadata.resource_version = observed.metadata.resource_version.clone();
    desired.metadata.uid = observed.metadata.uid.clone();
    desired
}

/// The Secret with only the metadata the operator manages, for an in-place update.
pub fn desired_secret_metadata(ak: &AccessKey, access_key_id: &str, data_hash: &str) -> Secret {
    let (labels, annotations) = desired_metadata(ak, access_key_id, data_hash);
    Secret {
        metadata: ObjectMeta {
            name: Some(ak.spec.secret_name.clone()),
            namespace: ak.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: controller_ref(ak).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        ..Secret::default()
    }
}

/// What the Secret named by the AccessKey says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretState {
    Absent,
    /// Exists and is not controlled by this AccessKey: never touched. Its name, for messages.
    Foreign(String),
    Ours {
        /// The key id annotation.
        key_id: Option<String>,
        /// The data is what the operator wrote (its hash matches the annotation).
        data_intact: bool,
        /// Labels, annotations and owner reference are as the spec wants them.
        metadata_current: bool,
    },
}

/// Whether `ak` is the Secret's controller (its controlling owner reference).
pub fn is_controlled_by(secret: &Secret, ak: &AccessKey) -> bool {
    let uid = ak.metadata.uid.as_ref();
    secret.metadata.owner_references.iter().flatten().any(|r| r.controller == Some(true) && Some(&r.uid) == uid)
}

pub fn observe_secret(ak: &AccessKey, secret: Option<&Secret>) -> SecretState {
    let Some(secret) = secret else {
        return SecretState::Absent;
    };
    if !is_controlled_by(secret, ak) {
        return SecretState::Foreign(secret.metadata.name.clone().unwrap_or_default());
    }
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let key_id = annotations.get(KEY_ID_ANNOTATION).cloned();
    let stored_hash = annotations.get(DATA_HASH_ANNOTATION).cloned().unwrap_or_default();
    // Only the keys this AccessKey writes count: a key someone else added to the Secret is not a
    // reason to replace the cloud key.
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let wanted = templates(ak, ak.spec.provider.name());
    let mut ours: Vec<(&str, &[u8])> =
        wanted.iter().filter_map(|(k, _)| data.get(*k).map(|v| (*k, v.0.as_slice()))).collect();
    ours.sort_by_key(|(k, _)| *k);
    let data_intact = ours.len() == wanted.len() && data_hash(ours.into_iter()) == stored_hash;
    let (labels, want_annotations) = desired_metadata(ak, key_id.as_deref().unwrap_or_default(), &stored_hash);
    let have_labels = secret.metadata.labels.clone().unwrap_or_default();
    let metadata_current = labels.iter().all(|(k, v)| have_labels.get(k) == Some(v))
        && want_annotations.iter().all(|(k, v)| annotations.get(k) == Some(v));
    SecretState::Ours { key_id, data_intact, metadata_current }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    pub(crate) fn access_key(spec: serde_json::Value) -> AccessKey {
        serde_json::from_value(json!({
            "apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey",
            "metadata": {"name": "backups", "namespace": "team-a", "uid": "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab"},
            "spec": spec,
        }))
        .expect("test AccessKey")
    }

    fn exo_vars() -> TemplateVars {
        TemplateVars::from([
            ("zone", "ch-gva-2".to_string()),
            ("endpoint", "https://api-ch-gva-2.exoscale.com/v2".to_string()),
        ])
    }

    #[test]
    fn default_data_keys_follow_the_provider() {
        let ak = access_key(json!({"issuerRef": {"name": "i"}, "secretName": "s", "local": {}}));
        let secret = SecretString::from("s3cr3t");
        let data = render_data(&ak, "exoscale", &exo_vars(), "EXO1", &secret).expect("renders");
        assert_eq!(data.keys().collect::<Vec<_>>(), ["EXOSCALE_API_KEY", "EXOSCALE_API_SECRET"]);
        let data = render_data(&ak, "local", &TemplateVars::new(), "LK1", &secret).expect("renders");
        assert_eq!(data.0.get("SECRET_ACCESS_KEY").map(String::as_str), Some("s3cr3t"));
        let data = render_data(&ak, "outscale", &TemplateVars::from([("region", "eu-west-2".into())]), "AK", &secret)
            .expect("renders");
        assert_eq!(data.0.get("OSC_REGION").map(String::as_str), Some("eu-west-2"));
    }

    #[test]
    fn hostile_templates_are_refused_quickly_and_output_is_bounded() {
        let with = |data: serde_json::Value| {
            access_key(
                json!({"issuerRef": {"name": "i"}, "secretName": "s", "local": {}, "secretTemplate": {"data": data}}),
            )
        };
        let refused = [
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
            "{{ 'x' * 100000000 }}",
            "{{ accessKeyId ~ accessKeyId }}",
            "{{ range(10) }}",
            "{{ accessKeyId | replace('a', 'b') }}",
            "{{ accessKeyId",
        ];
        let started = std::time::Instant::now();
        for bomb in refused {
            let e = check_templates(&with(json!({"K": bomb})), "local", &TemplateVars::new()).expect_err(bomb);
            assert!(!e.message.is_empty(), "{bomb}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "refusing took {:?}", started.elapsed());
        // Plain substitutions: many of them run out of fuel; fewer of a long value are bounded by
        // the output budget, not by memory.
        let many = "{{ provider }}".repeat(70_000);
        let e = render_data(&with(json!({"A": many})), "local", &TemplateVars::new(), "K", &SecretString::from("s"))
            .err()
            .expect("out of fuel");
        assert!(e.message.contains("too long"), "{}", e.message);
        let wide = "{{ accessKeyId }}".repeat(600);
        let id = "K".repeat(1000);
        let e = render_data(
            &with(json!({"A": wide.clone(), "B": wide})),
            "local",
            &TemplateVars::new(),
            &id,
            &SecretString::from("s"),
        )
        .err()
        .expect("over the budget");
        assert!(e.message.contains("more than"), "{}", e.message);
        let fine = with(json!({"K": "{{ accessKeyId | lower }}-{{- provider | upper -}}"}));
        let data = render_data(&fine, "local", &TemplateVars::new(), "AK1", &SecretString::from("s")).expect("renders");
        assert_eq!(data.0["K"], "ak1-LOCAL");
    }

    #[test]
    fn templates_render_every_variable_and_keep_newlines() {
        let ak = access_key(json!({"issuerRef": {"name": "i"}, "secretName": "s", "exoscale": {"roleId": "x"},
            "secretTemplate": {"data": {"credentials": "[default]\nid = {{ accessKeyId }}\nsecret = {{ secretAccessKey }}\n",
                "where": "{{ provider }} {{ zone }} {{ endpoint }}"}}}));
        let data = render_data(&ak, "exoscale", &exo_vars(), "EXO1", &SecretString::from("sec")).expect("renders");
        assert_eq!(data.0["credentials"], "[default]\nid = EXO1\nsecret = sec\n");
        assert_eq!(data.0["where"], "exoscale ch-gva-2 https://api-ch-gva-2.exoscale.com/v2");
    }

    #[test]
    fn unknown_variables_are_errors_that_name_the_key_not_the_value() {
        let ak = access_key(json!({"issuerRef": {"name": "i"}, "secretName": "s", "local": {},
            "secretTemplate": {"data": {"REGION": "{{ region }}"}}}));
        let err = check_templates(&ak, "local", &TemplateVars::new()).expect_err("region is not a local variable");
        assert_eq!(err.key, "REGION");
        assert!(err.message.contains("unknown variable"), "{err}");
        let err = render_data(&ak, "local", &TemplateVars::new(), "LK", &SecretString::from("topsecret"))
            .err()
            .expect("fails");
        assert!(!err.to_string().contains("topsecret"));
        let ak = access_key(json!({"issuerRef": {"name": "i"}, "secretName": "s", "local": {},
            "secretTemplate": {"data": {"X": "{{ accessKeyId "}}}));
        assert!(check_templates(&ak, "local", &TemplateVars::new()).is_err());
    }

    #[test]
    fn observed_secret_states() {
        let ak = access_key(json!({"issuerRef": {"name": "i"}, "secretName": "s", "local": {},
            "secretTemplate": {"labels": {"team": "a"}}}));
        assert_eq!(observe_secret(&ak, None), SecretState::Absent);
        let data = render_data(&ak, "local", &TemplateVars::new(), "LK1", &SecretString::from("x")).expect("renders");
        let mut ours = desired_secret(&ak, "LK1", &data);
        assert_eq!(
            observe_secret(&ak, Some(&ours)),
            SecretState::Ours { key_id: Some("LK1".into()), data_intact: true, metadata_current: true }
        );
        let mut foreign = ours.clone();
        foreign.metadata.owner_references = None;
        assert!(
            matches!(observe_secret(&ak, Some(&foreign)), SecretState::Foreign(name) if name == ak.spec.secret_name)
        );
        ours.metadata.labels.as_mut().expect("labels").remove("team");
        assert!(matches!(
            observe_secret(&ak, Some(&ours)),
            SecretState::Ours { metadata_current: false, data_intact: true, .. }
        ));
        let mut extra = ours.clone();
        extra.data.as_mut().expect("data").insert("added-by-someone".into(), ByteString(b"x".to_vec()));
        assert!(
            matches!(observe_secret(&ak, Some(&extra)), SecretState::Ours { data_intact: true, .. }),
            "a key the operator does not write is no reason to replace the cloud key"
        );
        let mut missing = ours.clone();
        missing.data.as_mut().expect("data").remove("SECRET_ACCESS_KEY");
        assert!(matches!(observe_secret(&ak, Some(&missing)), SecretState::Ours { data_intact: false, .. }));
        ours.data.as_mut().expect("data").insert("SECRET_ACCESS_KEY".into(), ByteString(b"edited".to_vec()));
        assert!(matches!(observe_secret(&ak, Some(&ours)), SecretState::Ours { data_intact: false, .. }));
    }
}
