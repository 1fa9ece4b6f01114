//! Ownership markers: what a provider-side key carries so that the operator can find it again
//! by listing, even when it was created just before a crash and never recorded.
//!
//! A marker names the installation that made it, the owning AccessKey (by UID, stable across
//! renames and unique across re-creations) and the creation attempt:
//! `ck-<installation>-<uid>-<attempt>`, 59 characters, fits every provider's name, description
//! or tag. Markers written before installations had ids are `ck-<uid>-<attempt>`; they keep
//! naming their owner, and belong to no installation.

use std::fmt;

use rand::Rng;

const PREFIX: &str = "ck-";
const INSTALLATION_LEN: usize = 8;
const UID_LEN: usize = 36;
const ATTEMPT_LEN: usize = 10;
/// `<uid>-<attempt>`, the part every marker ends with.
const TAIL_LEN: usize = UID_LEN + 1 + ATTEMPT_LEN;
const LEGACY_LEN: usize = PREFIX.len() + TAIL_LEN;
const LEN: usize = PREFIX.len() + INSTALLATION_LEN + 1 + TAIL_LEN;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Marker {
    /// `None` for markers written before installation ids.
    installation: Option<String>,
    owner: String,
    attempt: String,
}

/// Whether `id` can be an installation id: 8 lowercase hex digits.
pub fn is_installation_id(id: &str) -> bool {
    id.len() == INSTALLATION_LEN && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Marker {
    /// A marker for a new creation attempt by the AccessKey with this UID.
    pub fn new_attempt(owner_uid: &str) -> Self {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut rng = rand::rng();
        let attempt = (0..ATTEMPT_LEN).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect();
        Self { installation: None, owner: owner_uid.to_string(), attempt }
    }

    /// The same marker, made by this installation (ignored unless it is an installation id).
    pub fn within(mut self, installation: &str) -> Self {
        self.installation = is_installation_id(installation).then(|| installation.to_string());
        self
    }

    /// Rebuilds the marker of a recorded attempt.
    pub fn of(owner_uid: &str, attempt: &str) -> Self {
        Self { installation: None, owner: owner_uid.to_string(), attempt: attempt.to_string() }
    }

    /// The longest marker there is, to check that a name or description leaves room for it.
    pub fn longest() -> Self {
        Self::of("00000000-0000-0000-0000-000000000000", "0000000000").within("00000000")
    }

    pub fn installation(&self) -> Option<&str> {
        self.installation.as_deref()
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn attempt(&self) -> &str {
        &self.attempt
    }

    /// The marker `text` ends with, after `separator` or as the whole of it: the one place the
    /// operator puts a marker in a name or description. A marker-like string anywhere else (a
    /// user's part of the name) makes nothing look owned.
    pub fn at_end(text: &str, separator: char) -> Option<Self> {
        [LEN, LEGACY_LEN].into_iter().find_map(|len| {
            let start = text.len().checked_sub(len)?;
            let (head, tail) = (text.get(..start)?, text.get(start..)?);
            if !(head.is_empty() || head.ends_with(separator)) {
                return None;
            }
            Self::exactly(tail)
        })
    }

    /// The marker that is the whole of `text` (an Outscale tag), nothing before or after it.
    pub fn exactly(text: &str) -> Option<Self> {
        let rest = text.strip_prefix(PREFIX)?;
        let (installation, tail) = match rest.len() {
            TAIL_LEN => (None, rest),
            n if n == LEN - PREFIX.len() => {
                let id = rest.get(..INSTALLATION_LEN).filter(|id| is_installation_id(id))?;
                (Some(id), rest.get(INSTALLATION_LEN..)?.strip_prefix('-')?)
            }
            _ => return None,
        };
        let mut marker = Self::parse_tail(tail)?;
        marker.installation = installation.map(String::from);
        Some(marker)
    }

    /// `<uid>-<attempt>`.
    fn parse_tail(rest: &str) -> Option<Self> {
        let owner = rest.get(..UID_LEN)?;
        let attempt = rest.get(UID_LEN + 1..TAIL_LEN)?;
        let well_formed = rest.len() == TAIL_LEN
            && rest.as_bytes().get(UID_LEN) == Some(&b'-')
            && owner.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            && attempt.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        well_formed.then(|| Self::of(owner, attempt))
    }
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.installation {
            Some(id) => write!(f, "{PREFIX}{id}-{}-{}", self.owner, self.attempt),
            None => write!(f, "{PREFIX}{}-{}", self.owner, self.attempt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";

    #[test]
    fn marker_round_trips_through_a_name() {
        let m = Marker::new_attempt(UID);
        let name = format!("team-a-backups.{m}");
        assert_eq!(Marker::at_end(&name, '.'), Some(m.clone()));
        assert_eq!(Marker::at_end(&m.to_string(), '.'), Some(m.clone()));
        assert_eq!(Marker::exactly(&m.to_string()), Some(m.clone()));
        assert_eq!(m.to_string().len(), LEGACY_LEN);
        let made_here = Marker::new_attempt(UID).within("0a1b2c3d");
        assert_eq!(made_here.to_string().len(), LEN);
        assert_eq!(made_here.installation(), Some("0a1b2c3d"));
        assert_eq!(Marker::at_end(&format!("team-a.{made_here}"), '.'), Some(made_here.clone()));
        assert_eq!(Marker::exactly(&made_here.to_string()), Some(made_here));
        assert_eq!(Marker::longest().to_string().len(), LEN);
    }

    #[test]
    fn a_ck_in_the_users_part_of_the_name_does_not_hide_the_marker() {
        let m = Marker::new_attempt(UID);
        assert_eq!(Marker::at_end(&format!("rack-backups.{m}"), '.'), Some(m));
    }

    #[test]
    fn a_marker_is_recognised_only_where_the_operator_puts_it() {
        let theirs = Marker::new_attempt(UID);
        let mine = Marker::new_attempt("1f8c2d7e-1b2a-4c3d-9e8f-0123456789ab");
        // A user who names their key after someone else's marker still gets their own at the end.
        assert_eq!(Marker::at_end(&format!("{theirs}.{mine}"), '.'), Some(mine));
        for foreign in [
            format!("{theirs}.admin"),
            format!("admin-{theirs}"),
            format!("admin{theirs}"),
            format!("{theirs} "),
            format!("x.{theirs}x"),
        ] {
            assert_eq!(Marker::at_end(&foreign, '.'), None, "{foreign}");
            assert_eq!(Marker::exactly(&foreign), None, "{foreign}");
        }
        assert_eq!(Marker::at_end(&format!("admin key {theirs}"), ' '), Some(theirs.clone()));
        assert_eq!(Marker::at_end(&format!("admin key.{theirs}"), ' '), None);
        assert_eq!(Marker::exactly(&format!("tag {theirs}")), None);
        assert_eq!(Marker::at_end("é", '.'), None);
    }

    #[test]
    fn installation_ids_are_eight_hex_digits() {
        assert_eq!(Marker::new_attempt(UID).within("not-an-id").installation(), None);
        assert_eq!(Marker::new_attempt(UID).within("0A1B2C3D").installation(), None);
        let m = Marker::new_attempt(UID).within("0a1b2c3d");
        let text = m.to_string().replace("0a1b2c3d", "0a1b2c3g");
        assert_eq!(Marker::exactly(&text), None);
        assert_eq!(Marker::at_end(&format!("x.{text}"), '.'), None);
        // A legacy marker after a separator is not mistaken for the end of a new one.
        let legacy = Marker::new_attempt(UID);
        assert_eq!(Marker::at_end(&format!("ck-0a1b2c3d.{legacy}"), '.'), Some(legacy));
    }

    #[test]
    fn attempts_differ() {
        assert_ne!(Marker::new_attempt(UID), Marker::new_attempt(UID));
    }

    #[test]
    fn text_without_a_marker_has_none() {
        assert_eq!(Marker::exactly("backups"), None);
        assert_eq!(Marker::exactly("ck-short-abc"), None);
        assert_eq!(Marker::exactly(&format!("ck-{UID}-ABCDEFGHIJ")), None);
        assert_eq!(Marker::at_end(&format!("x.ck-{UID}-ABCDEFGHIJ"), '.'), None);
    }
}
