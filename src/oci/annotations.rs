//! Spec annotations: the CRI container's own, the image manifest's, and
//! containerd's `io.kubernetes.cri.*` keys. Gated annotations (see
//! `config::GATED_ANNOTATIONS`) act only where the pod's handler allows them;
//! for an OCI runtime binary, which would act on them itself, disallowed ones
//! are left out of the spec.

use std::collections::{BTreeMap, HashMap};

use super::SpecInput;
use crate::config::{is_gated, HandlerKind, RuntimeHandler};

pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";

/// The container's annotations, then the image manifest's for keys the container doesn't set.
pub fn effective(container: &HashMap<String, String>, image: &BTreeMap<String, String>) -> HashMap<String, String> {
    let mut out = container.clone();
    for (k, v) in image {
        out.entry(k.clone()).or_insert_with(|| v.clone());
    }
    out
}

/// The annotations that may act: every ungated one, and the gated ones the handler allows.
pub fn honoured(annotations: &HashMap<String, String>, handler: &RuntimeHandler) -> HashMap<String, String> {
    annotations.iter().filter(|(k, _)| !is_gated(k) || handler.allows(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub fn build(input: &SpecInput) -> HashMap<String, String> {
    let mut out = effective(&input.config.annotations, input.image_annotations);
    if input.handler.kind == HandlerKind::Oci {
        out = honoured(&out, input.handler);
    }
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
