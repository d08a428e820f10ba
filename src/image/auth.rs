//! Registry credentials: CRI `AuthConfig` from kubelet, and the configured
//! docker `config.json` file. Identity tokens (OAuth2 refresh tokens) are
//! exchanged for an access token the way docker does.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::ImageError;

/// Credentials before any exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// A registry bearer token, sent as is.
    Bearer(String),
    /// An OAuth2 refresh token to exchange at the registry's token realm.
    Identity {
        username: String,
        token: String,
    },
}

impl Credentials {
    /// From a CRI AuthConfig; `None` when it carries nothing.
    pub fn from_cri(auth: &k8s_cri::v1::AuthConfig) -> Result<Option<Credentials>, String> {
        from_fields(&auth.username, &auth.password, &auth.auth, &auth.identity_token, &auth.registry_token)
    }
}

fn from_fields(
    username: &str,
    password: &str,
    auth: &str,
    identity: &str,
    registry: &str,
) -> Result<Option<Credentials>, String> {
    if !registry.is_empty() {
        return Ok(Some(Credentials::Bearer(registry.to_string())));
    }
    let (mut user, mut pass) = (username.to_string(), password.to_string());
    if !auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("`auth` is not base64: {e}"))?;
        let text = String::from_utf8(decoded).map_err(|_| "`auth` is not UTF-8".to_string())?;
        let (u, p) = text.split_once(':').ok_or("`auth` is not base64 of user:password")?;
        (user, pass) = (u.to_string(), p.to_string());
    }
    if !identity.is_empty() {
        return Ok(Some(Credentials::Identity { username: user, token: identity.to_string() }));
    }
    if user.is_empty() && pass.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials::Basic { username: user, password: pass }))
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DockerAuth {
    auth: String,
    username: String,
    password: String,
    identitytoken: String,
    registrytoken: String,
}

/// Credentials for `host` from a docker config.json; keys may be URLs
/// (`https://index.docker.io/v1/`) or bare hosts.
pub fn from_file(path: &Path, host: &str) -> Result<Option<Credentials>, ImageError> {
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    let bad = |message: String| ImageError::Credentials { path: path.to_path_buf(), message };
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let cfg: DockerConfig = serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
    let wanted = canonical_host(host);
    let Some(entry) = cfg.auths.iter().find(|(k, _)| canonical_host(k) == wanted).map(|(_, v)| v) else {
        return Ok(None);
    };
    from_fields(&entry.username, &entry.password, &entry.auth, &entry.identitytoken, &entry.registrytoken)
        .map_err(|m| bad(format!("entry for {host}: {m}")))
}

fn canonical_host(key: &str) -> String {
    let key = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

/// Turns credentials into what the registry client sends, exchanging an
/// identity token at the registry's token realm first.
pub async fn resolve(
    creds: Option<Credentials>,
    scheme: &str,
    host: &str,
    repository: &str,
    http: &reqwest::Client,
) -> Result<RegistryAuth, String> {
    match creds {
        None => Ok(RegistryAuth::Anonymous),
        Some(Credentials::Basic { username, password }) => Ok(RegistryAuth::Basic(username, password)),
        Some(Credentials::Bearer(t)) => Ok(RegistryAuth::Bearer(t)),
        Some(Credentials::Identity { username, token }) => {
            exchange_identity_token(http, scheme, host, repository, &username, &token).await.map(RegistryAuth::Bearer)
        }
    }
}

async fn exchange_identity_token(
    http: &reqwest::Client,
    scheme: &str,
    host: &str,
    repository: &str,
    username: &str,
    token: &str,
) -> Result<String, String> {
    let api_host = if host == "docker.io" { "index.docker.io" } else { host };
    let probe = http.get(format!("{scheme}://{api_host}/v2/")).send().await.map_err(|e| e.to_string())?;
    let challenge = probe
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .ok_or("registry sent no bearer challenge for the identity token")?;
    let params = parse_challenge(challenge).ok_or_else(|| format!("unsupported auth challenge {challenge:?}"))?;
    let realm = params.get("realm").ok_or("auth challenge has no realm")?;
    let mut form = vec![
        ("grant_type", "refresh_token".to_string()),
        ("refresh_token", token.to_string()),
        ("client_id", "cricket".to_string()),
        ("scope", format!("repository:{repository}:pull")),
    ];
    if let Some(service) = params.get("service") {
        form.push(("service", service.clone()));
    }
    if !username.is_empty() {
        form.push(("username", username.to_string()));
    }
    let resp = http.post(realm).form(&form).send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("token exchange at {realm} failed: HTTP {status}"));
    }
    #[derive(Deserialize)]
    struct TokenResponse {
        access_token: Option<String>,
        token: Option<String>,
    }
    let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| format!("token response: {e}"))?;
    parsed.access_token.or(parsed.token).ok_or_else(|| "token response holds no token".to_string())
}

/// Parses `Bearer realm="…",service="…"` into its parameters.
fn parse_challenge(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer "))?;
    let mut out = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let (value, remaining) = match after.strip_prefix('"') {
            Some(q) => {
                let end = q.find('"')?;
                (&q[..end], &q[end + 1..])
            }
            None => after.split_once(',').map_or((after, ""), |(v, r)| (v, r)),
        };
        out.insert(key.trim().to_ascii_lowercase(), value.to_string());
        s = remaining.trim_start_matches([',', ' ']);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_auth_forms() {
        let mut a = k8s_cri::v1::AuthConfig::default();
        assert_eq!(Credentials::from_cri(&a).unwrap(), None);
        a.auth = base64::engine::general_purpose::STANDARD.encode("bob:s3:cret");
        assert_eq!(
            Credentials::from_cri(&a).unwrap(),
            Some(Credentials::Basic { username: "bob".into(), password: "s3:cret".into() })
        );
        a.identity_token = "refresh".into();
        assert_eq!(
            Credentials::from_cri(&a).unwrap(),
            Some(Credentials::Identity { username: "bob".into(), token: "refresh".into() })
        );
        a.registry_token = "tok".into();
        assert_eq!(Credentials::from_cri(&a).unwrap(), Some(Credentials::Bearer("tok".into())));
        let bad = k8s_cri::v1::AuthConfig { auth: "!!".into(), ..Default::default() };
        assert!(Credentials::from_cri(&bad).is_err());
    }

    #[test]
    fn docker_config_lookup() {
        let path = std::env::temp_dir().join(format!("cricket-auth-{}.json", rand::random::<u64>()));
        let auth = base64::engine::general_purpose::STANDARD.encode("u:p");
        std::fs::write(&path, format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},"127.0.0.1:5000":{{"registrytoken":"t"}}}}}}"#)).unwrap();
        assert_eq!(
            from_file(&path, "docker.io").unwrap(),
            Some(Credentials::Basic { username: "u".into(), password: "p".into() })
        );
        assert_eq!(from_file(&path, "127.0.0.1:5000").unwrap(), Some(Credentials::Bearer("t".into())));
        assert_eq!(from_file(&path, "quay.io").unwrap(), None);
        std::fs::write(&path, "not json").unwrap();
        assert!(from_file(&path, "quay.io").unwrap_err().to_string().contains(path.to_str().unwrap()));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn challenge_parsing() {
        let p = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="a:b:pull""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "https://auth.example.com/token");
        assert_eq!(p["service"], "registry.example.com");
        assert!(parse_challenge("Basic realm=x").is_none());
    }
}
