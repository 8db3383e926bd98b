//! The web UI's static assets, compiled into the binary so a master serves its UI with no build step and no
//! files beside it. The pages are plain ES modules that speak only the public HTTP API (`ui/js/api.js`).

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::Error;

/// Every file under `ui/`: (path below `/ui/`, media type, content).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../ui/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../ui/style.css"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("../ui/icon.svg")),
    ("js/access.js", JS, include_str!("../ui/js/access.js")),
    ("js/api.js", JS, include_str!("../ui/js/api.js")),
    ("js/app.js", JS, include_str!("../ui/js/app.js")),
    ("js/dashboard.js", JS, include_str!("../ui/js/dashboard.js")),
    ("js/dom.js", JS, include_str!("../ui/js/dom.js")),
    ("js/logview.js", JS, include_str!("../ui/js/logview.js")),
    ("js/nodes.js", JS, include_str!("../ui/js/nodes.js")),
    (
        "js/notifications.js",
        JS,
        include_str!("../ui/js/notifications.js"),
    ),
    ("js/results.js", JS, include_str!("../ui/js/results.js")),
    ("js/schedules.js", JS, include_str!("../ui/js/schedules.js")),
    ("js/settings.js", JS, include_str!("../ui/js/settings.js")),
    ("js/spiders.js", JS, include_str!("../ui/js/spiders.js")),
    ("js/tasks.js", JS, include_str!("../ui/js/tasks.js")),
];

const JS: &str = "text/javascript; charset=utf-8";

/// The pages load nothing from elsewhere and run no inline script, so a spider's output shown in them can
/// never run as code even if it slipped past the text-only rendering.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `/` (the app) and `/ui/*` (its assets). None needs a token: they hold no data, and the app asks for the
/// token before it calls the API.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route(
            "/ui/{*path}",
            get(|Path(path): Path<String>| async move { asset(&path) }),
        )
}

fn asset(path: &str) -> Response {
    let Some((_, media, content)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return Error::NotFound(format!("no UI asset {path:?}")).into_response();
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, *media),
            // Assets change with the binary; revalidating costs little on a LAN and never serves a stale app.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *content,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::ASSETS;

    /// A file added under `ui/` but not to the table would be a 404 in production only.
    #[test]
    fn every_ui_file_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let rel = path
                        .strip_prefix(&root)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/");
                    on_disk.push(rel);
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|(p, _, _)| (*p).to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }
}
