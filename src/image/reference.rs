//! Image names as users write them, normalised the way docker and kubelet do:
//! `busybox` → `docker.io/library/busybox:latest`.

use std::fmt;

use super::ImageError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// Registry host as written (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageName {
    /// Parses and normalises `s`; short names go to `default_registry`.
    pub fn parse(s: &str, default_registry: &str) -> Result<ImageName, ImageError> {
        let bad = |why: &str| ImageError::InvalidReference { reference: s.to_string(), reason: why.to_string() };
        if s.is_empty() {
            return Err(bad("empty image name"));
        }
        if s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("contains whitespace or is too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                validate_digest(d).map_err(|e| bad(&e))?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/' (a port has a '/' after it).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad("invalid tag"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ => (default_registry.to_string(), name.to_string()),
        };
        let repository = if (registry == "docker.io" || registry == "index.docker.io") && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let registry = if registry == "index.docker.io" { "docker.io".to_string() } else { registry };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad("repository must be lowercase letters, digits and separators"));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(ImageName { registry, repository, tag, digest })
    }

    /// `registry/repository` without tag or digest.
    pub fn repo(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The `repo:tag` form, when there is a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.repo()))
    }

    /// The `repo@digest` form for a given manifest digest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.repo())
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repo())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Accepts `sha256:<64 hex>` (the only algorithm registries serve in practice).
pub fn validate_digest(d: &str) -> Result<(), String> {
    match d.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(())
        }
        Some((alg, _)) if alg != "sha256" => Err(format!("unsupported digest algorithm {alg:?}")),
        _ => Err(format!("malformed digest {d:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        ImageName::parse(s, "docker.io").unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(p("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(p("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(p("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(p("index.docker.io/foo/bar"), "docker.io/foo/bar:latest");
        assert_eq!(p("127.0.0.1:5000/a/b:v1"), "127.0.0.1:5000/a/b:v1");
        assert_eq!(p("localhost/x"), "localhost/x:latest");
        assert_eq!(
            p("registry.k8s.io/e2e-test-images/busybox:1.29-2"),
            "registry.k8s.io/e2e-test-images/busybox:1.29-2"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(p(&format!("quay.io/x@{d}")), format!("quay.io/x@{d}"));
        assert_eq!(p(&format!("quay.io/x:t@{d}")), format!("quay.io/x:t@{d}"));
        let other = ImageName::parse("busybox", "registry.example.com").unwrap();
        assert_eq!(other.to_string(), "registry.example.com/busybox:latest");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "Busybox", "a b", "x:", "x@sha256:12", "x@md5:aa", "a//b", "x:-bad", "-x"] {
            assert!(ImageName::parse(bad, "docker.io").is_err(), "{bad}");
        }
    }
}
