//! Spec annotations: the CRI container's own plus containerd's `io.kubernetes.cri.*` keys.

use std::collections::HashMap;

use super::SpecInput;

pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";

pub fn build(input: &SpecInput) -> HashMap<String, String> {
    let mut out = input.config.annotations.clone();
    let meta = input.sandbox.metadata.clone().unwrap_or_default();
    let image = input.config.image.as_ref().map_or("", |i| {
        if i.user_specified_image.is_empty() {
            &i.image
        } else {
            &i.user_specified_image
        }
    });
    let name = input.config.metadata.as_ref().map_or("", |m| m.name.as_str());
    for (k, v) in [
        (CONTAINER_TYPE, "container"),
        (SANDBOX_ID, input.sandbox_id),
        (CONTAINER_NAME, name),
        (IMAGE_NAME, image),
        (SANDBOX_NAME, &meta.name),
        (SANDBOX_NAMESPACE, &meta.namespace),
        (SANDBOX_UID, &meta.uid),
    ] {
        out.insert(k.to_string(), v.to_string());
    }
    out
}
