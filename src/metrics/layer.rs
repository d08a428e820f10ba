//! A tower layer counting CRI RPCs by method and gRPC status code, and timing them.
//!
//! The code comes from the response's `grpc-status` header: tonic sends an error
//! status in the headers of a trailers-only response, while an OK status travels
//! in the trailers, so a 200 response without the header counts as OK. The
//! duration runs until the response headers (the whole call, for unary RPCs).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::Metrics;

/// Only CRI methods get a label of their own; anything else is `unknown`, so a
/// client probing paths can't grow the label set.
const CRI_SERVICES: &[&str] = &["/runtime.v1.RuntimeService/", "/runtime.v1.ImageService/"];

#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> GrpcMetricsLayer {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> Service<Request<B>> for GrpcMetrics<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = method_of(req.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(resp) => code_of(resp),
                Err(_) => "Unknown",
            };
            metrics.observe_rpc(method, code, started.elapsed());
            result
        })
    }
}

/// `RunPodSandbox` from `/runtime.v1.RuntimeService/RunPodSandbox`.
fn method_of(path: &str) -> &'static str {
    let known = CRI_SERVICES
        .iter()
        .find_map(|svc| path.strip_prefix(svc))
        .filter(|m| !m.is_empty() && m.len() <= 64 && !m.contains('/') && m.bytes().all(|b| b.is_ascii_alphanumeric()));
    match known {
        // Leaked once per distinct method name: CRI has a fixed, small set.
        Some(m) => intern(m),
        None => "unknown",
    }
}

fn intern(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let set = names.get_or_insert_with(HashSet::new);
    if let Some(n) = set.get(name) {
        return n;
    }
    // Bounded: past the CRI's ~60 methods, unseen names share one label.
    if set.len() >= 256 {
        return "unknown";
    }
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    set.insert(leaked);
    leaked
}

fn code_of<R>(resp: &Response<R>) -> &'static str {
    if resp.status() != http::StatusCode::OK {
        return "Unknown";
    }
    match resp.headers().get("grpc-status") {
        None => "OK",
        Some(v) => v.to_str().ok().and_then(|s| s.parse::<u16>().ok()).map_or("Unknown", code_name),
    }
}

/// The names grpc-go and go-grpc-prometheus use.
fn code_name(code: u16) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// Answers like tonic: OK without a header, an error status in the headers.
    #[derive(Clone)]
    struct Fake;

    impl Service<Request<()>> for Fake {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<()>) -> Self::Future {
            let mut resp = Response::new(());
            if req.uri().path().ends_with("/ImageStatus") {
                resp.headers_mut().insert("grpc-status", http::HeaderValue::from_static("5"));
            }
            std::future::ready(Ok(resp))
        }
    }

    async fn call(svc: &mut GrpcMetrics<Fake>, path: &str) {
        let req = Request::builder().uri(format!("http://x{path}")).body(()).unwrap();
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        svc.call(req).await.unwrap();
    }

    #[tokio::test]
    async fn layer_counts_requests_by_method_and_code() {
        let metrics = Metrics::new();
        let mut svc = GrpcMetricsLayer::new(metrics.clone()).layer(Fake);
        call(&mut svc, "/runtime.v1.ImageService/PullImage").await;
        call(&mut svc, "/runtime.v1.ImageService/PullImage").await;
        call(&mut svc, "/runtime.v1.ImageService/ImageStatus").await;
        call(&mut svc, "/other.Service/Thing").await;
        let count = |m: &str, c: &str| metrics.grpc_requests.with_label_values(&[m, c]).get();
        assert_eq!(count("PullImage", "OK"), 2);
        assert_eq!(count("ImageStatus", "NotFound"), 1);
        assert_eq!(count("unknown", "OK"), 1);
        assert_eq!(metrics.grpc_duration.with_label_values(&["PullImage"]).get_sample_count(), 2);
    }

    #[test]
    fn methods_and_codes() {
        assert_eq!(method_of("/runtime.v1.RuntimeService/RunPodSandbox"), "RunPodSandbox");
        assert_eq!(method_of("/runtime.v1.RuntimeService/"), "unknown");
        assert_eq!(method_of("/runtime.v1.RuntimeService/a/b"), "unknown");
        assert_eq!(code_name(12), "Unimplemented");
        let mut resp = Response::new(());
        *resp.status_mut() = http::StatusCode::NOT_FOUND;
        assert_eq!(code_of(&resp), "Unknown");
    }
}
