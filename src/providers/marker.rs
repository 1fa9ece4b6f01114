//! Ownership markers: what a provider-side key carries so that the operator can find it again
//! by listing, even when it was created just before a crash and never recorded.
//!
//! A marker names the owning AccessKey (by UID, stable across renames and unique across
//! re-creations) and the creation attempt. `ck-<uid>-<attempt>`, 50 characters, fits every
//! provider's name, description or tag.

use std::fmt;

use rand::Rng;

const PREFIX: &str = "ck-";
const UID_LEN: usize = 36;
const ATTEMPT_LEN: usize = 10;
const LEN: usize = PREFIX.len() + UID_LEN + 1 + ATTEMPT_LEN;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Marker {
    owner: String,
    attempt: String,
}

impl Marker {
    /// A marker for a new creation attempt by the AccessKey with this UID.
    pub fn new_attempt(owner_uid: &str) -> Self {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut rng = rand::rng();
        let attempt = (0..ATTEMPT_LEN).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect();
        Self { owner: owner_uid.to_string(), attempt }
    }

    /// Rebuilds the marker of a recorded attempt.
    pub fn of(owner_uid: &str, attempt: &str) -> Self {
        Self { owner: owner_uid.to_string(), attempt: attempt.to_string() }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn attempt(&self) -> &str {
        &self.attempt
    }

    /// The text every marker of this owner starts with; providers search for it.
    pub fn owner_prefix(owner_uid: &str) -> String {
        format!("{PREFIX}{owner_uid}-")
    }

    /// The marker `text` ends with, after `separator` or as the whole of it: the one place the
    /// operator puts a marker in a name or description. A marker-like string anywhere else (a
    /// user's part of the name) makes nothing look owned.
    pub fn at_end(text: &str, separator: char) -> Option<Self> {
        let start = text.len().checked_sub(LEN)?;
        let (head, tail) = (text.get(..start)?, text.get(start..)?);
        if !(head.is_empty() || head.ends_with(separator)) {
            return None;
        }
        Self::exactly(tail)
    }

    /// The marker that is the whole of `text` (an Outscale tag), nothing before or after it.
    pub fn exactly(text: &str) -> Option<Self> {
        let rest = text.strip_prefix(PREFIX)?;
        (text.len() == LEN).then_some(())?;
        Self::parse_at(rest)
    }

    fn parse_at(rest: &str) -> Option<Self> {
        let owner = rest.get(..UID_LEN)?;
        let attempt = rest.get(UID_LEN + 1..UID_LEN + 1 + ATTEMPT_LEN)?;
        let well_formed = rest.as_bytes().get(UID_LEN) == Some(&b'-')
            && owner.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            && attempt.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        well_formed.then(|| Self::of(owner, attempt))
    }
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}-{}", self.owner, self.attempt)
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
        assert!(name.contains(&Marker::owner_prefix(UID)));
        assert_eq!(m.to_string().len(), LEN);
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
