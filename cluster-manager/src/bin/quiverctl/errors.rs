//! What a failed command tells its user: one short message, a hint saying what to do, and a
//! stable code for scripts. Every command error ends up as a [`CliError`] in `main`, printed
//! once (a line on stderr, or `{"error": {...}}` on stdout with `--output json`).

use std::fmt;

use tonic::Code;

/// A failure as the user sees it. `code` is a gRPC code name ("NOT_FOUND") for errors the
/// Merger returned, or one of quiverctl's own: `MERGER_UNREACHABLE`, `ETCD_UNREACHABLE`,
/// `INPUT` (a bad file or argument value), `USAGE`, `ERROR`.
#[derive(Debug, Clone, PartialEq)]
pub struct CliError {
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
    /// 2 for usage errors (as clap's own), 1 otherwise.
    pub exit_code: i32,
}

impl CliError {
    pub fn new(code: &str, message: impl Into<String>) -> CliError {
        CliError {
            code: code.to_string(),
            message: message.into(),
            hint: None,
            exit_code: 1,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }

    /// A bad input file or argument value.
    pub fn input(message: impl Into<String>) -> CliError {
        CliError::new("INPUT", message)
    }

    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            exit_code: 2,
            ..CliError::new("USAGE", message)
        }
    }

    /// The Merger could not be reached at all.
    pub fn merger_unreachable(merger: &str, cause: &str) -> CliError {
        CliError::new(
            "MERGER_UNREACHABLE",
            format!("cannot reach the Merger at {merger} ({cause})"),
        )
        .hint("is it running? set --merger or QUIVER_MERGER to its address")
    }

    pub fn etcd_unreachable(endpoints: &str, cause: &str) -> CliError {
        CliError::new(
            "ETCD_UNREACHABLE",
            format!("cannot read the cluster state from etcd at {endpoints} ({cause})"),
        )
        .hint("is etcd running? set --etcd-endpoints or QUIVER_ETCD_ENDPOINTS to its address")
    }

    /// A status the Merger answered with. `collection` names the collection the call was
    /// about, for NOT_FOUND and ALREADY_EXISTS.
    pub fn from_status(status: &tonic::Status, collection: Option<&str>) -> CliError {
        let message = status.message().trim().to_string();
        let code = quiver_proto::code_name(status.code());
        let named = |text: &str| match collection {
            Some(name) => format!("collection '{name}' {text}"),
            None => message.clone(),
        };
        match status.code() {
            // "payload index on key \"k\" of collection c not found"
            Code::NotFound if message.starts_with("payload index") => {
                CliError::new(code, message.clone()).hint(match collection {
                    Some(name) => format!("see `quiverctl payload-index list {name}`"),
                    None => "see `quiverctl payload-index list <collection>`".to_string(),
                })
            }
            Code::NotFound if message.contains("collection") => {
                CliError::new(code, named("does not exist"))
                    .hint("see `quiverctl collections list`")
            }
            Code::AlreadyExists => CliError::new(code, named("already exists")).hint(
                "pick another name, or `quiverctl collections drop` it first (which deletes its data)",
            ),
            Code::InvalidArgument => CliError::new(code, message),
            Code::Unavailable => CliError::new(code, message).hint(
                "the cluster cannot serve this right now (Searchers down or starting?); \
                 retry in a moment, and see `quiverctl status`",
            ),
            Code::DeadlineExceeded => CliError::new(code, message).hint(
                "the call ran out of time; retry, or allow more with --timeout",
            ),
            Code::FailedPrecondition => CliError::new(code, message)
                .hint("see `quiverctl status` for the live Searchers and replicas"),
            Code::ResourceExhausted => CliError::new(code, message)
                .hint("send less at once (for `load`, a smaller --batch)"),
            _ => CliError::new(code, message),
        }
    }

    /// Any other error a command returned: the first [`CliError`] or [`tonic::Status`] in its
    /// chain decides; anything else becomes `ERROR` with the chain as one line.
    pub fn from_anyhow(error: &anyhow::Error) -> CliError {
        for cause in error.chain() {
            if let Some(cli) = cause.downcast_ref::<CliError>() {
                return cli.clone();
            }
            if let Some(status) = cause.downcast_ref::<tonic::Status>() {
                return CliError::from_status(status, None);
            }
        }
        let text: Vec<String> = error.chain().map(|cause| cause.to_string()).collect();
        CliError::new("ERROR", text.join(": "))
    }

    /// The human form, for stderr: `error: <message>` and, when there is one, `hint: <hint>`.
    pub fn render_text(&self) -> String {
        match &self.hint {
            Some(hint) => format!("error: {}\nhint: {hint}\n", self.message),
            None => format!("error: {}\n", self.message),
        }
    }

    /// The JSON form, for stdout with `--output json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "hint": self.hint,
            }
        })
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// `result.map_err(status_for(name))`: a Merger status about collection `name`.
pub fn status_for(collection: &str) -> impl Fn(tonic::Status) -> CliError + '_ {
    move |status| CliError::from_status(&status, Some(collection))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_collection_and_the_way_out() {
        let status = tonic::Status::not_found("collection \"docs\" does not exist");
        let error = CliError::from_status(&status, Some("docs"));
        assert_eq!(error.code, "NOT_FOUND");
        assert_eq!(error.message, "collection 'docs' does not exist");
        assert_eq!(
            error.hint.as_deref(),
            Some("see `quiverctl collections list`")
        );
        assert_eq!(
            error.render_text(),
            "error: collection 'docs' does not exist\nhint: see `quiverctl collections list`\n"
        );
    }

    #[test]
    fn a_missing_payload_index_is_not_a_missing_collection() {
        let status =
            tonic::Status::not_found("payload index on key \"lang\" of collection docs not found");
        let error = CliError::from_status(&status, Some("docs"));
        assert_eq!(error.code, "NOT_FOUND");
        assert_eq!(
            error.message,
            "payload index on key \"lang\" of collection docs not found"
        );
        assert_eq!(
            error.hint.as_deref(),
            Some("see `quiverctl payload-index list docs`")
        );
    }

    #[test]
    fn invalid_argument_passes_the_server_message() {
        let status = tonic::Status::invalid_argument("point \"3\": dimension mismatch");
        let error = CliError::from_status(&status, Some("docs"));
        assert_eq!(error.code, "INVALID_ARGUMENT");
        assert_eq!(error.message, "point \"3\": dimension mismatch");
        assert_eq!(error.hint, None);
    }

    #[test]
    fn the_first_known_error_in_a_chain_decides() {
        let error = anyhow::Error::new(tonic::Status::unavailable("no live replica"))
            .context("upsert batch 3");
        let cli = CliError::from_anyhow(&error);
        assert_eq!(cli.code, "UNAVAILABLE");
        assert!(cli.hint.unwrap().contains("retry"));

        let plain = anyhow::anyhow!("disk on fire").context("reading x");
        let cli = CliError::from_anyhow(&plain);
        assert_eq!(cli.code, "ERROR");
        assert_eq!(cli.message, "reading x: disk on fire");

        let json = CliError::usage("nope").to_json();
        assert_eq!(json["error"]["code"], "USAGE");
        assert_eq!(json["error"]["hint"], serde_json::Value::Null);
    }
}
