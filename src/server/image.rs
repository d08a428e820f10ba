//! CRI ImageService: maps requests onto `image::Images`.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use crate::image::auth::Credentials;
use crate::image::store::ImageRecord;
use crate::image::{image_user, Images};
use crate::state::now_nanos;

pub struct ImageApi {
    images: Arc<Images>,
}

impl ImageApi {
    pub fn new(images: Arc<Images>) -> ImageApi {
        ImageApi { images }
    }

    fn to_cri(&self, r: &ImageRecord) -> Image {
        let (uid, username) = image_user(&r.user);
        Image {
            id: r.id.clone(),
            repo_tags: r.repo_tags.clone(),
            repo_digests: r.repo_digests.clone(),
            size: r.size,
            uid: uid.map(|value| Int64Value { value }),
            username,
            spec: Some(ImageSpec { image: r.id.clone(), ..Default::default() }),
            pinned: self.images.is_pinned(r),
        }
    }
}

fn image_ref(spec: Option<&ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.as_str()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Status::invalid_argument("image is required (ImageSpec.image is empty)")),
    }
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn list_images(&self, req: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        let wanted = req
            .get_ref()
            .filter
            .as_ref()
            .and_then(|f| f.image.as_ref())
            .map(|s| s.image.as_str())
            .filter(|s| !s.is_empty());
        let records = match wanted {
            Some(reference) => self.images.find(reference)?.into_iter().collect(),
            None => self.images.list(),
        };
        Ok(Response::new(ListImagesResponse { images: records.iter().map(|r| self.to_cri(r)).collect() }))
    }

    async fn image_status(&self, req: Request<ImageStatusRequest>) -> Result<Response<ImageStatusResponse>, Status> {
        let req = req.into_inner();
        let reference = image_ref(req.image.as_ref())?;
        let Some(record) = self.images.find(reference)? else {
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        let image = Some(self.to_cri(&record));
        let mut info = HashMap::new();
        if req.verbose {
            let details = self.images.info(record);
            let doc = serde_json::json!({
                "id": details.record.id,
                "manifests": details.record.manifests,
                "layers": details.record.layers,
                "pinned": details.pinned,
                "imageSpec": details.config,
            });
            info.insert("info".to_string(), doc.to_string());
        }
        Ok(Response::new(ImageStatusResponse { image, info }))
    }

    async fn pull_image(&self, req: Request<PullImageRequest>) -> Result<Response<PullImageResponse>, Status> {
        let req = req.into_inner();
        let reference = image_ref(req.image.as_ref())?;
        let creds = match req.auth.as_ref() {
            Some(a) => Credentials::from_cri(a).map_err(|m| Status::invalid_argument(format!("auth config: {m}")))?,
            None => None,
        };
        let started = std::time::Instant::now();
        let id = self.images.pull(reference, creds).await?;
        tracing::info!(image = reference, id = %id, elapsed_ms = started.elapsed().as_millis() as u64, "image pulled");
        Ok(Response::new(PullImageResponse { image_ref: id }))
    }

    async fn remove_image(&self, req: Request<RemoveImageRequest>) -> Result<Response<RemoveImageResponse>, Status> {
        let reference = image_ref(req.get_ref().image.as_ref())?;
        self.images.remove(reference).await?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _req: Request<ImageFsInfoRequest>) -> Result<Response<ImageFsInfoResponse>, Status> {
        let (dir, bytes, inodes) = self.images.usage();
        let usage = FilesystemUsage {
            timestamp: now_nanos(),
            fs_id: Some(FilesystemIdentifier { mountpoint: dir.display().to_string() }),
            used_bytes: Some(UInt64Value { value: bytes }),
            inodes_used: Some(UInt64Value { value: inodes }),
        };
        Ok(Response::new(ImageFsInfoResponse { image_filesystems: vec![usage], container_filesystems: vec![] }))
    }
}
