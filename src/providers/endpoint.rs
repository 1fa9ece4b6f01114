//! A provider's API address: checked once when the client is built, then extended one path
//! segment at a time, so that an id taken from a status or a listing can never change the path.

use url::Url;

use super::ProviderError;

/// `url` as the base of a provider's requests; `what` names it in the error ("Exoscale API
/// endpoint"), since the user must find the field to fix.
pub fn parse(what: &str, url: &str) -> Result<Url, ProviderError> {
    Url::parse(url.trim_end_matches('/'))
        .ok()
        .filter(|u| {
            !u.cannot_be_a_base()
                && matches!(u.scheme(), "https" | "http")
                && u.host_str().is_some()
                && u.query().is_none()
                && u.fragment().is_none()
        })
        .ok_or_else(|| ProviderError::permanent("configure", format!("invalid {what} {url:?}")))
}

/// `base` with `segments` appended, each percent-encoded (`/` becomes `%2F`); empty, `.` and `..`
/// segments are refused, since `Url` would drop or resolve them.
pub fn join(operation: &str, base: &Url, segments: &[&str]) -> Result<Url, ProviderError> {
    if let Some(bad) = segments.iter().find(|s| s.is_empty() || **s == "." || **s == "..") {
        return Err(ProviderError::permanent(operation, format!("invalid path segment {bad:?}")));
    }
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| ProviderError::permanent(operation, "the endpoint cannot take a path"))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// `host[:port]` of a parsed endpoint, as signatures cover it.
pub fn authority(base: &Url) -> String {
    match (base.host_str().unwrap_or_default(), base.port()) {
        (host, Some(port)) => format!("{host}:{port}"),
        (host, None) => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_a_host_and_no_query() {
        for bad in ["", "api.example.com", "mailto:a@b", "https://", "https://h/?a=1", "https://h/#f", "ftp://h/"] {
            assert!(parse("X endpoint", bad).is_err(), "{bad:?} accepted");
        }
        let base = parse("X endpoint", "http://127.0.0.1:8080/v2/").expect("valid");
        assert_eq!(base.as_str(), "http://127.0.0.1:8080/v2");
        assert_eq!(authority(&base), "127.0.0.1:8080");
        let err = parse("X endpoint", "nope").expect_err("invalid");
        assert!(err.to_string().contains(r#"invalid X endpoint "nope""#), "{err}");
    }

    #[test]
    fn segments_are_encoded_and_dots_refused() {
        let base = parse("X endpoint", "https://h/v2").expect("valid");
        let url = join("op", &base, &["api-key", "a/../b?c"]).expect("joins");
        assert_eq!(url.as_str(), "https://h/v2/api-key/a%2F..%2Fb%3Fc");
        for bad in ["", ".", ".."] {
            assert!(join("op", &base, &["api-key", bad]).is_err(), "{bad:?} accepted");
        }
        let root = parse("X endpoint", "https://h/").expect("valid");
        assert_eq!(join("op", &root, &["a"]).expect("joins").as_str(), "https://h/a");
    }
}
