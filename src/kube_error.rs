//! A kube error as people read it, in logs, conditions and on the screen: one line, never a
//! debug structure.

/// One line for `e`. An exec credential plugin's failure is not quoted: kube's text carries the
/// plugin's output, which may hold a token.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Auth(_) => {
            "the kubeconfig's credentials could not be used (its token or credential plugin failed)".to_string()
        }
        kube::Error::Api(s) => format!("the apiserver refused: {} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apiserver_refusal_reads_as_one_line_without_debug_structures() {
        let e = kube::Error::Api(Box::new(
            kube::core::Status::failure("namespaces \"cloudkeys\" not found", "NotFound").with_code(404),
        ));
        let shown = describe(&e);
        assert_eq!(shown, "the apiserver refused: namespaces \"cloudkeys\" not found (404 NotFound)");
        assert!(!shown.contains("Status {") && !shown.contains('\n'));
    }
}
