//! Bounds on what a provider's listing may make the operator hold. A page is read whole (up to
//! [`BODY_LIMIT`](super::http::BODY_LIMIT)), but an 11-byte entry becomes a struct of a hundred
//! bytes and more, and a listing may follow many pages: a broken or hostile endpoint answering
//! with hundreds of thousands of entries, page after page, would take gigabytes, and the
//! operator serves every tenant.
//!
//! A page holding more entries than asked for (or than the API can hold) is refused, not cut:
//! the listing decides which keys the operator owns and which are orphans, and a listing that
//! does not keep to the API's contract cannot be trusted with the entries it kept either.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, IgnoredAny, SeqAccess, Visitor};

use super::error::ProviderError;

/// The most entries a listing keeps, all its pages together: ten times the keys a Yandex
/// service account or an OUTSCALE identity may have, and more than an Exoscale organisation
/// has in practice.
pub const MAX_LISTED: usize = 10_000;
/// The most answer bytes a listing reads, all its pages together: what one answer may hold.
pub const MAX_LISTED_BYTES: usize = super::http::BODY_LIMIT;

/// A JSON array of at most `N` entries. The entries past `N` are skipped as they are parsed
/// (never built), and remembered as a surplus that [`Capped::within`] refuses.
#[derive(Debug)]
pub struct Capped<T, const N: usize> {
    items: Vec<T>,
    surplus: bool,
}

impl<T, const N: usize> Default for Capped<T, N> {
    fn default() -> Self {
        Self { items: Vec::new(), surplus: false }
    }
}

impl<T, const N: usize> Capped<T, N> {
    /// The entries, unless there are more than `asked` (the page size the request named, or
    /// `N` where it could name none).
    pub fn within(self, operation: &str, asked: usize, what: &str) -> Result<Vec<T>, ProviderError> {
        let limit = asked.min(N);
        if self.surplus || self.items.len() > limit {
            return Err(ProviderError::retryable(
                operation,
                format!("the API listed more than {limit} {what} in one answer; the listing is not used"),
            ));
        }
        Ok(self.items)
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Capped<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<T, const N: usize>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Entries<T, N> {
            type Value = Capped<T, N>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // The size hint comes from the answer: not trusted for an allocation.
                let mut items = Vec::new();
                while items.len() < N {
                    match seq.next_element()? {
                        Some(item) => items.push(item),
                        None => return Ok(Capped { items, surplus: false }),
                    }
                }
                let mut surplus = false;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    surplus = true;
                }
                Ok(Capped { items, surplus })
            }
        }

        deserializer.deserialize_seq(Entries::<T, N>(PhantomData))
    }
}

/// What a listing of several pages has read so far, against [`MAX_LISTED`] and
/// [`MAX_LISTED_BYTES`].
#[derive(Debug, Default)]
pub struct Total {
    entries: usize,
    bytes: usize,
}

impl Total {
    /// Counts one answer of `bytes` bytes, before it is parsed.
    pub fn read(&mut self, operation: &str, bytes: usize) -> Result<(), ProviderError> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > MAX_LISTED_BYTES {
            return Err(ProviderError::retryable(
                operation,
                format!("the listing's pages hold more than {} MiB together; not read further", MAX_LISTED_BYTES >> 20),
            ));
        }
        Ok(())
    }

    /// Counts the entries of one page.
    pub fn kept(&mut self, operation: &str, entries: usize, what: &str) -> Result<(), ProviderError> {
        self.entries = self.entries.saturating_add(entries);
        if self.entries > MAX_LISTED {
            return Err(ProviderError::retryable(
                operation,
                format!("the listing's pages hold more than {MAX_LISTED} {what} together; not read further"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Page {
        #[serde(default)]
        items: Capped<u32, 3>,
    }

    fn page(json: &str) -> Page {
        serde_json::from_str(json).expect("parses")
    }

    #[test]
    fn a_page_of_at_most_what_was_asked_is_kept() {
        assert_eq!(page(r#"{"items":[1,2,3]}"#).items.within("list", 3, "keys").expect("kept"), [1, 2, 3]);
        assert!(page("{}").items.within("list", 3, "keys").expect("kept").is_empty());
    }

    #[test]
    fn a_page_of_more_than_asked_is_refused() {
        let e = page(r#"{"items":[1,2,3,4,{"x":[5]}]}"#).items.within("list", 3, "keys").expect_err("refused");
        assert_eq!(e.kind, super::super::ErrorKind::Retryable);
        assert!(e.message.contains("more than 3 keys"), "{}", e.message);
        // A smaller page size asked for is held to as well.
        assert!(page(r#"{"items":[1,2]}"#).items.within("list", 1, "keys").is_err());
    }

    #[test]
    fn the_pages_of_a_listing_are_bounded_together() {
        let mut total = Total::default();
        assert!(total.kept("list", MAX_LISTED, "keys").is_ok());
        assert!(total.kept("list", 1, "keys").is_err());
        let mut total = Total::default();
        assert!(total.read("list", MAX_LISTED_BYTES).is_ok());
        assert!(total.read("list", 1).is_err());
    }
}
