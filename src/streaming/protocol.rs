//! Remote command subprotocols (X-Stream-Protocol-Version) and what each
//! version writes on the error stream.

use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    V1,
    V2,
    V3,
    V4,
}

pub const SUPPORTED: [(&str, Protocol); 4] = [
    ("v4.channel.k8s.io", Protocol::V4),
    ("v3.channel.k8s.io", Protocol::V3),
    ("v2.channel.k8s.io", Protocol::V2),
    ("channel.k8s.io", Protocol::V1),
];

impl Protocol {
    pub fn name(self) -> &'static str {
        SUPPORTED.iter().find(|(_, p)| *p == self).map(|(n, _)| *n).unwrap_or("channel.k8s.io")
    }

    /// The client's first protocol this server speaks; V1 when the client named none.
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Protocol> {
        let offered: Vec<&str> = offered.into_iter().flat_map(|v| v.split(',')).map(str::trim).collect();
        if offered.iter().all(|o| o.is_empty()) {
            return Some(Protocol::V1);
        }
        offered.iter().find_map(|o| SUPPORTED.iter().find(|(n, _)| n == o).map(|(_, p)| *p))
    }

    /// What the error stream carries when the command ended: v4 sends a
    /// metav1.Status, older versions only a failure's text.
    pub fn exit_report(self, exit: &Exit) -> Option<Vec<u8>> {
        if self < Protocol::V4 {
            return match exit {
                Exit::Code(0) => None,
                other => Some(other.message().into_bytes()),
            };
        }
        let status = match exit {
            Exit::Code(0) => json!({"metadata": {}, "status": "Success"}),
            Exit::Code(code) => json!({
                "metadata": {},
                "status": "Failure",
                "message": exit.message(),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Exit::Error(_) => json!({
                "metadata": {},
                "status": "Failure",
                "message": exit.message(),
                "reason": "InternalError",
                "code": 500,
            }),
        };
        Some(status.to_string().into_bytes())
    }
}

/// How a streamed command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// The command could not be run.
    Error(String),
}

impl Exit {
    fn message(&self) -> String {
        match self {
            Exit::Code(code) => format!("command terminated with non-zero exit code: exit status {code}"),
            Exit::Error(e) => e.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_clients_order() {
        assert_eq!(Protocol::negotiate(["v4.channel.k8s.io", "v3.channel.k8s.io"]), Some(Protocol::V4));
        assert_eq!(Protocol::negotiate(["v5.channel.k8s.io", "v2.channel.k8s.io"]), Some(Protocol::V2));
        assert_eq!(Protocol::negotiate(["v3.channel.k8s.io, v4.channel.k8s.io"]), Some(Protocol::V3));
        assert_eq!(Protocol::negotiate([]), Some(Protocol::V1));
        assert_eq!(Protocol::negotiate(["v9.example"]), None);
        assert_eq!(Protocol::V3.name(), "v3.channel.k8s.io");
    }

    #[test]
    fn v4_reports_a_status() {
        let ok: serde_json::Value = serde_json::from_slice(&Protocol::V4.exit_report(&Exit::Code(0)).unwrap()).unwrap();
        assert_eq!(ok, json!({"metadata": {}, "status": "Success"}));
        let failed: serde_json::Value =
            serde_json::from_slice(&Protocol::V4.exit_report(&Exit::Code(3)).unwrap()).unwrap();
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
        assert_eq!(failed["message"], "command terminated with non-zero exit code: exit status 3");
    }

    #[test]
    fn older_versions_report_only_failures() {
        assert_eq!(Protocol::V3.exit_report(&Exit::Code(0)), None);
        assert_eq!(Protocol::V2.exit_report(&Exit::Error("boom".into())), Some(b"boom".to_vec()));
    }
}
