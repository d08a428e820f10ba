//! The one place internal errors become gRPC statuses.

use tonic::Status;

use crate::container::ContainerError;
use crate::image::{FailureKind, ImageError};
use crate::sandbox::SandboxError;

impl From<ImageError> for Status {
    fn from(e: ImageError) -> Status {
        let message = e.to_string();
        match e {
            ImageError::InvalidReference { .. } | ImageError::Ambiguous { .. } => Status::invalid_argument(message),
            ImageError::Pull { kind, .. } => match kind {
                FailureKind::NotFound => Status::not_found(message),
                FailureKind::Unauthorized => Status::unauthenticated(message),
                FailureKind::Unreachable => Status::unavailable(message),
                FailureKind::BadContent => Status::data_loss(message),
                FailureKind::Unsupported => Status::failed_precondition(message),
            },
            ImageError::Timeout { .. } => Status::deadline_exceeded(message),
            ImageError::Credentials { .. } => Status::failed_precondition(message),
            ImageError::Store(_) => Status::internal(message),
        }
    }
}

impl From<SandboxError> for Status {
    fn from(e: SandboxError) -> Status {
        let message = e.to_string();
        match e {
            SandboxError::Invalid(_) | SandboxError::UnknownHandler { .. } | SandboxError::Ambiguous(..) => {
                Status::invalid_argument(message)
            }
            SandboxError::NameInUse { .. } => Status::already_exists(message),
            SandboxError::NotFound(_) => Status::not_found(message),
            SandboxError::Cgroup(_) => Status::failed_precondition(message),
            SandboxError::Network(_) => Status::unavailable(message),
            SandboxError::Namespaces(_) | SandboxError::Io { .. } => Status::internal(message),
        }
    }
}

impl From<ContainerError> for Status {
    fn from(e: ContainerError) -> Status {
        let message = e.to_string();
        match e {
            ContainerError::Sandbox(e) => e.into(),
            ContainerError::Image(e) => e.into(),
            ContainerError::Invalid(_) | ContainerError::Ambiguous(..) => Status::invalid_argument(message),
            ContainerError::Spec(e) if e.is_invalid_argument() => Status::invalid_argument(message),
            ContainerError::NameInUse { .. } => Status::already_exists(message),
            ContainerError::NotFound(_) | ContainerError::ImageNotFound(_) => Status::not_found(message),
            ContainerError::SandboxNotReady(_) | ContainerError::WrongState { .. } | ContainerError::Cgroup(_) => {
                Status::failed_precondition(message)
            }
            ContainerError::ExecTimeout { .. } => Status::deadline_exceeded(message),
            ContainerError::Start { .. } | ContainerError::NotExecutable(_) | ContainerError::WasmImage { .. } => {
                Status::failed_precondition(message)
            }
            ContainerError::Spec(_)
            | ContainerError::Rootfs(_)
            | ContainerError::Create(_)
            | ContainerError::Monitor { .. }
            | ContainerError::Exec { .. }
            | ContainerError::Io { .. } => Status::internal(message),
        }
    }
}
