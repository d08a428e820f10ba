//! Single-use tokens naming a pending streaming request, valid for a minute.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_cri::v1::{AttachRequest, ExecRequest};

/// Tokens handed out but not used yet; more are refused (kubelet keeps 1000).
pub const MAX_PENDING: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    Exec(ExecRequest),
    /// An attach and the container monitor's attach socket.
    Attach(AttachRequest, PathBuf),
    /// A pod's port forwarding: its id and pinned network namespace (None: the host's).
    PortForward {
        sandbox: String,
        netns: Option<PathBuf>,
    },
}

pub struct Tokens {
    ttl: Duration,
    pending: Mutex<HashMap<String, (Instant, Pending)>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{MAX_PENDING} streaming requests are already waiting for their client; try again later")]
pub struct TooManyPending;

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens { ttl, pending: Mutex::default() }
    }

    pub fn insert(&self, request: Pending) -> Result<String, TooManyPending> {
        let mut pending = self.pending.lock().unwrap();
        let now = Instant::now();
        pending.retain(|_, (expires, _)| *expires > now);
        if pending.len() >= MAX_PENDING {
            return Err(TooManyPending);
        }
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>());
        pending.insert(token.clone(), (now + self.ttl, request));
        Ok(token)
    }

    /// The request behind `token`, which is used up; None when unknown or expired.
    pub fn take(&self, token: &str) -> Option<Pending> {
        let (expires, request) = self.pending.lock().unwrap().remove(token)?;
        (expires > Instant::now()).then_some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(id: &str) -> Pending {
        Pending::Exec(ExecRequest { container_id: id.into(), ..Default::default() })
    }

    #[test]
    fn tokens_are_single_use_and_distinct() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let (a, b) = (tokens.insert(exec("a")).unwrap(), tokens.insert(exec("b")).unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{a}");
        assert_eq!(tokens.take(&b), Some(exec("b")));
        assert_eq!(tokens.take(&b), None);
        assert_eq!(tokens.take("nonsense"), None);
        assert_eq!(tokens.take(&a), Some(exec("a")));
    }

    #[test]
    fn expired_tokens_are_refused_and_pruned() {
        let tokens = Tokens::new(Duration::ZERO);
        let t = tokens.insert(exec("a")).unwrap();
        assert_eq!(tokens.take(&t), None);
        for _ in 0..MAX_PENDING + 1 {
            tokens.insert(exec("a")).unwrap();
        }
    }

    #[test]
    fn pending_tokens_are_limited() {
        let tokens = Tokens::new(Duration::from_secs(60));
        for _ in 0..MAX_PENDING {
            tokens.insert(exec("a")).unwrap();
        }
        assert_eq!(tokens.insert(exec("a")), Err(TooManyPending));
    }
}
