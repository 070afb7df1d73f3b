//! Black-box conformance over real HTTP: every endpoint row of the OCI
//! distribution spec v1.1 (end-1 .. end-13) with its success and error
//! statuses, against the registry started on a loopback port.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{Http, TestImage, TestRegistry, make_index, random_bytes};
use serde_json::json;
use vessel_registry::Digest;
use vessel_registry::oci::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

fn loc_with(loc: &str, query: &str) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{loc}{sep}{query}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_1_base() {
    let reg = TestRegistry::start().await;
    let http = Http::new(&reg.url());
    let r = http.get("/v2/").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert_eq!(http.head("/v2/").await.status, 200);
    assert_eq!(http.get("/v2").await.status, 200);
    // Unknown route.
    assert_eq!(http.get("/v2/x/unknown").await.status, 404);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_2_blob_get_head_and_range() {
    let reg = TestRegistry::start().await;
    let http = Http::new(&reg.url());
    let data = random_bytes(5 << 20, 1);
    let d = http.push_blob("conf/blob", &data).await;

    let r = http.get(&format!("/v2/conf/blob/blobs/{d}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), data.as_slice());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert_eq!(
        r.header("content-length"),
        Some((5u64 << 20).to_string().as_str())
    );

    let r = http.head(&format!("/v2/conf/blob/blobs/{d}")).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(
        r.header("content-length"),
        Some((5u64 << 20).to_string().as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );

    // Range requests.
    let r = http
        .send(
            "GET",
            &format!("/v2/conf/blob/blobs/{d}"),
            &[("range", "bytes=100-199")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body.as_ref(), &data[100..200]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-199/{}", data.len()).as_str())
    );
    let r = http
        .send(
            "GET",
            &format!("/v2/conf/blob/blobs/{d}"),
            &[("range", "bytes=5000000-")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body.as_ref(), &data[5_000_000..]);
    let r = http
        .send(
            "GET",
            &format!("/v2/conf/blob/blobs/{d}"),
            &[("range", "bytes=999999999-")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", data.len()).as_str())
    );

    // Errors: unknown blob, blob of another repository, bad digest, bad name.
    let missing = Digest::sha256_of(b"missing");
    let r = http.get(&format!("/v2/conf/blob/blobs/{missing}")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    assert_eq!(
        http.head(&format!("/v2/conf/blob/blobs/{missing}"))
            .await
            .status,
        404
    );
    let r = http.get(&format!("/v2/conf/other/blobs/{d}")).await;
    assert_eq!(
        r.status, 404,
        "blobs are only served from repositories that hold them"
    );
    let r = http.get("/v2/conf/blob/blobs/sha256:nothex").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "DIGEST_INVALID");
    let r = http.get(&format!("/v2/Conf/Blob/blobs/{d}")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "NAME_INVALID");
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_3_and_7_manifests_by_tag_and_digest() {
    let reg = TestRegistry::start().await;
    let http = Http::new(&reg.url());
    let img = TestImage::new(&[1000, 2000], 3);
    let d = img.push(&http, "conf/man", "v1").await;

    for reference in ["v1".to_string(), d.to_string()] {
        let r = http
            .send(
                "GET",
                &format!("/v2/conf/man/manifests/{reference}"),
                &[("accept", OCI_MANIFEST)],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body.as_ref(),
            img.manifest.as_slice(),
            "stored byte-exact"
        );
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(
            r.header("docker-content-digest"),
            Some(d.to_string().as_str())
        );
        let r = http
            .head(&format!("/v2/conf/man/manifests/{reference}"))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-length"),
            Some(img.manifest.len().to_string().as_str())
        );
        assert_eq!(
            r.header("docker-content-digest"),
            Some(d.to_string().as_str())
        );
    }

    // Push responses: 201, Location, digest.
    let r = http
        .push_manifest("conf/man", "v2", OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/conf/man/manifests/{d}").as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    // Push by digest.
    let r = http
        .push_manifest("conf/man", &d.to_string(), OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(r.status, 201);

    // A Docker schema 2 manifest keeps its media type.
    let dimg = TestImage::with_type(&[500], 4, DOCKER_MANIFEST);
    dimg.push(&http, "conf/man", "docker").await;
    let r = http
        .send(
            "GET",
            "/v2/conf/man/manifests/docker",
            &[("accept", DOCKER_MANIFEST)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST));
    // A client that only takes Docker types does not get an OCI manifest by tag.
    let r = http
        .send(
            "GET",
            "/v2/conf/man/manifests/v1",
            &[("accept", DOCKER_MANIFEST)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");

    // Errors on GET.
    let r = http.get("/v2/conf/man/manifests/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
    let r = http
        .get(&format!(
            "/v2/conf/man/manifests/{}",
            Digest::sha256_of(b"x")
        ))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(http.head("/v2/conf/man/manifests/nope").await.status, 404);

    // Errors on PUT: digest mismatch, invalid JSON, missing blobs, bad
    // media type, too large.
    let r = http
        .push_manifest(
            "conf/man",
            &Digest::sha256_of(b"other").to_string(),
            OCI_MANIFEST,
            &img.manifest,
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "DIGEST_INVALID");
    let r = http
        .push_manifest("conf/man", "bad", OCI_MANIFEST, b"{not json")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "MANIFEST_INVALID");
    let dangling = TestImage::new(&[100], 5);
    let r = http
        .push_manifest("conf/man", "dangling", OCI_MANIFEST, &dangling.manifest)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "MANIFEST_BLOB_UNKNOWN");
    let r = http
        .push_manifest("conf/man", "mismatch", OCI_INDEX, &img.manifest)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "MANIFEST_INVALID");
    let r = http
        .push_manifest("conf/man", "bad%21tag", OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(r.status, 400);
    let huge = vec![b' '; (4 << 20) + 1];
    let r = http
        .push_manifest("conf/man", "huge", OCI_MANIFEST, &huge)
        .await;
    assert_eq!(r.status, 413);
    // Nothing of the failed pushes became visible.
    for t in ["bad", "dangling", "mismatch", "huge"] {
        assert_eq!(
            http.get(&format!("/v2/conf/man/manifests/{t}"))
                .await
                .status,
            404,
            "{t}"
        );
    }
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_4_5_6_13_uploads() {
    let reg = TestRegistry::start().await;
    let http = Http::new(&reg.url());

    // end-4b: single POST with digest.
    let data = random_bytes(70_000, 6);
    let d = Digest::sha256_of(&data);
    let r = http
        .send(
            "POST",
            &format!("/v2/conf/up/blobs/uploads/?digest={d}"),
            &[("content-type", "application/octet-stream")],
            data.clone(),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/conf/up/blobs/{d}").as_str())
    );
    assert_eq!(
        http.get(&format!("/v2/conf/up/blobs/{d}"))
            .await
            .body
            .as_ref(),
        data.as_slice()
    );
    // ... with a wrong digest: 400 and nothing stored.
    let wrong = Digest::sha256_of(b"wrong");
    let r = http
        .send(
            "POST",
            &format!("/v2/conf/up/blobs/uploads/?digest={wrong}"),
            &[],
            data.clone(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "DIGEST_INVALID");
    assert_eq!(
        http.head(&format!("/v2/conf/up/blobs/{wrong}"))
            .await
            .status,
        404
    );

    // end-4a + end-5 chunked + end-13 status + end-6 final chunk.
    let data = random_bytes(3_000_000, 7);
    let d = Digest::sha256_of(&data);
    let r = http
        .send("POST", "/v2/conf/up/blobs/uploads/", &[], Bytes::new())
        .await;
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap().to_string();
    assert!(r.header("docker-upload-uuid").is_some());
    assert_eq!(r.header("range"), Some("0-0"));
    let r = http.get(&loc).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("range"), Some("0-0"));

    let chunk1 = &data[..1_000_000];
    let r = http
        .send(
            "PATCH",
            &loc,
            &[
                ("content-type", "application/octet-stream"),
                ("content-range", "0-999999"),
            ],
            Bytes::copy_from_slice(chunk1),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.header("range"), Some("0-999999"));
    let loc = r.header("location").unwrap().to_string();

    // Out of order chunk: 416 with the current range.
    let r = http
        .send(
            "PATCH",
            &loc,
            &[("content-range", "1000005-1000009")],
            Bytes::copy_from_slice(&data[1_000_005..1_000_010]),
        )
        .await;
    assert_eq!(r.status, 416, "{r:?}");
    assert_eq!(r.header("range"), Some("0-999999"));
    // Content-Length disagreeing with Content-Range: 400.
    let r = http
        .send(
            "PATCH",
            &loc,
            &[("content-range", "1000000-1000009")],
            Bytes::from_static(b"abc"),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "BLOB_UPLOAD_INVALID");

    // Streamed chunk without Content-Range.
    let r = http
        .send(
            "PATCH",
            &loc,
            &[],
            Bytes::copy_from_slice(&data[1_000_000..2_000_000]),
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.header("range"), Some("0-1999999"));
    let r = http.get(&loc).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("range"), Some("0-1999999"));

    // Not visible before the final PUT.
    assert_eq!(
        http.head(&format!("/v2/conf/up/blobs/{d}")).await.status,
        404
    );

    // PUT without digest: 400.
    let r = http.send("PUT", &loc, &[], Bytes::new()).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "DIGEST_INVALID");

    // Final PUT with the last chunk.
    let r = http
        .send(
            "PUT",
            &loc_with(&loc, &format!("digest={d}")),
            &[("content-range", "2000000-2999999")],
            Bytes::copy_from_slice(&data[2_000_000..]),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert_eq!(
        http.get(&format!("/v2/conf/up/blobs/{d}"))
            .await
            .body
            .as_ref(),
        data.as_slice()
    );
    // The session is gone.
    let r = http.get(&loc).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "BLOB_UPLOAD_UNKNOWN");

    // Final PUT with a wrong digest: 400, blob absent.
    let r = http
        .send("POST", "/v2/conf/up/blobs/uploads/", &[], Bytes::new())
        .await;
    let loc = r.header("location").unwrap().to_string();
    http.send("PATCH", &loc, &[], Bytes::from_static(b"some bytes"))
        .await;
    let r = http
        .send(
            "PUT",
            &loc_with(&loc, &format!("digest={wrong}")),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "DIGEST_INVALID");
    assert_eq!(
        http.head(&format!("/v2/conf/up/blobs/{wrong}"))
            .await
            .status,
        404
    );

    // Cancel.
    let r = http
        .send("POST", "/v2/conf/up/blobs/uploads/", &[], Bytes::new())
        .await;
    let loc = r.header("location").unwrap().to_string();
    assert_eq!(
        http.send("DELETE", &loc, &[], Bytes::new()).await.status,
        204
    );
    assert_eq!(http.get(&loc).await.status, 404);
    assert_eq!(
        http.send("DELETE", &loc, &[], Bytes::new()).await.status,
        404
    );

    // Unknown upload ids and uploads used through another repository.
    let r = http
        .send(
            "PATCH",
            "/v2/conf/up/blobs/uploads/nonexistent",
            &[],
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "BLOB_UPLOAD_UNKNOWN");
    let r = http
        .send("POST", "/v2/conf/up/blobs/uploads/", &[], Bytes::new())
        .await;
    let loc = r.header("location").unwrap().to_string();
    let stolen = loc.replace("/conf/up/", "/conf/other/");
    assert_eq!(http.get(&stolen).await.status, 404);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_8_tags_with_pagination() {
    let reg = TestRegistry::start().await;
    let http = Http::new(&reg.url());
    let img = TestImage::new(&[100], 8);
    img.push(&http, "conf/tags", "latest").await;
    for t in ["v10", "v2", "V1", "a", "_z"] {
        let r = http
            .push_manifest("conf/tags", t, OCI_MANIFEST, &img.manifest)
            .await;
        assert_eq!(r.status, 201);
    }
    let all = ["V1", "_z", "a", "latest", "v10", "v2"];
    let r = http.get("/v2/conf/tags/tags/list").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({ "name": "conf/tags", "tags": all }));
    assert!(r.header("link").is_none());

    // Walk the pages with n=2 following Link headers.
    let mut got = Vec::new();
    let mut next = Some("/v2/conf/tags/tags/list?n=2".to_string());
    let mut pages = 0;
    while let Some(url) = next {
        let r = http.get(&url).await;
        assert_eq!(r.status, 200);
        for t in r.json()["tags"].as_array().unwrap() {
            got.push(t.as_str().unwrap().to_string());
        }
        next = r.header("link").map(|l| {
            let start = l.find('<').unwrap() + 1;
            let end = l.find('>').unwrap();
            assert!(l.contains("rel=\"next\""));
            l[start..end].to_string()
        });
        pages += 1;
        assert!(pages < 10);
    }
    assert_eq!(got, all);
    assert_eq!(pages, 3);
    let r = http.get("/v2/conf/tags/tags/list?n=3&last=a").await;
    assert_eq!(r.json()["tags"], json!(["latest", "v10", "v2"]));
    let r = http.get("/v2/conf/tags/tags/list?n=0").await;
    assert_eq!(r.json()["tags"], json!([]));
    let r = http.get("/v2/conf/tags/tags/list?n=-1").await;
    assert_eq!(r.status, 400);

    let r = http.get("/v2/conf/nothing/tags/list").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "NAME_UNKNOWN");
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_9_10_deletes() {
    let reg = TestRegistry::start().await;
    let http = Http::new(&reg.url());
    let img = TestImage::new(&[100, 200], 9);
    let d = img.push(&http, "conf/del", "v1").await;
    http.push_manifest("conf/del", "v2", OCI_MANIFEST, &img.manifest)
        .await;

    // Delete a tag: only the tag goes.
    let r = http
        .send("DELETE", "/v2/conf/del/manifests/v2", &[], Bytes::new())
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(http.get("/v2/conf/del/manifests/v2").await.status, 404);
    assert_eq!(http.get("/v2/conf/del/manifests/v1").await.status, 200);
    let r = http
        .send("DELETE", "/v2/conf/del/manifests/v2", &[], Bytes::new())
        .await;
    assert_eq!(r.status, 404);

    // Delete by digest: manifest and every tag pointing at it.
    let r = http
        .send(
            "DELETE",
            &format!("/v2/conf/del/manifests/{d}"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        http.get(&format!("/v2/conf/del/manifests/{d}"))
            .await
            .status,
        404
    );
    assert_eq!(http.get("/v2/conf/del/manifests/v1").await.status, 404);
    let r = http
        .send(
            "DELETE",
            &format!("/v2/conf/del/manifests/{d}"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
    let r = http
        .send(
            "DELETE",
            "/v2/conf/del/manifests/sha256:zz",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 400);

    // Blob delete.
    let layer = Digest::sha256_of(&img.layers[0]);
    let r = http
        .send(
            "DELETE",
            &format!("/v2/conf/del/blobs/{layer}"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        http.head(&format!("/v2/conf/del/blobs/{layer}"))
            .await
            .status,
        404
    );
    let r = http
        .send(
            "DELETE",
            &format!("/v2/conf/del/blobs/{layer}"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_9_10_read_only_mode_refuses_writes() {
    let keep = vessel_testkit::TempRoot::new("registry-ro");
    let root = keep.join("storage");
    let reg = TestRegistry::start_with(|c| c.storage.root = root.clone()).await;
    let http = Http::new(&reg.url());
    let img = TestImage::new(&[100], 10);
    let d = img.push(&http, "conf/ro", "v1").await;
    reg.stop().await;
    let ro = TestRegistry::start_with(|c| {
        c.storage.root = root.clone();
        c.server.read_only = true;
    })
    .await;
    let http = Http::new(&ro.url());
    assert_eq!(http.get("/v2/conf/ro/manifests/v1").await.status, 200);
    let r = http
        .send(
            "DELETE",
            &format!("/v2/conf/ro/manifests/{d}"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.error_code(), "UNSUPPORTED");
    let layer = Digest::sha256_of(&img.layers[0]);
    assert_eq!(
        http.send(
            "DELETE",
            &format!("/v2/conf/ro/blobs/{layer}"),
            &[],
            Bytes::new()
        )
        .await
        .status,
        405
    );
    assert_eq!(
        http.send("POST", "/v2/conf/ro/blobs/uploads/", &[], Bytes::new())
            .await
            .status,
        405
    );
    assert_eq!(
        http.push_manifest("conf/ro", "v2", OCI_MANIFEST, &img.manifest)
            .await
            .status,
        405
    );
    ro.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_11_cross_repository_mount() {
    let reg = TestRegistry::start().await;
    let http = Http::new(&reg.url());
    let data = random_bytes(10_000, 11);
    let d = http.push_blob("conf/src", &data).await;
    let r = http
        .send(
            "POST",
            &format!("/v2/conf/dst/blobs/uploads/?mount={d}&from=conf/src"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/conf/dst/blobs/{d}").as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    assert_eq!(
        http.get(&format!("/v2/conf/dst/blobs/{d}"))
            .await
            .body
            .as_ref(),
        data.as_slice()
    );
    // Mount from a repository that lacks the blob falls back to an upload.
    let other = Digest::sha256_of(b"not there");
    let r = http
        .send(
            "POST",
            &format!("/v2/conf/dst2/blobs/uploads/?mount={other}&from=conf/src"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 202);
    assert!(r.header("location").unwrap().contains("/blobs/uploads/"));
    // Mount without from also falls back.
    let r = http
        .send(
            "POST",
            &format!("/v2/conf/dst3/blobs/uploads/?mount={d}"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 202);
    reg.stop().await;
}

fn artifact(subject: &TestImage, artifact_type: &str, blob: &[u8], annotation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": { "mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": Digest::sha256_of(b"{}"), "size": 2 },
        "layers": [{ "mediaType": "application/octet-stream", "digest": Digest::sha256_of(blob), "size": blob.len() }],
        "subject": { "mediaType": subject.media_type, "digest": subject.digest(), "size": subject.manifest.len() },
        "annotations": { "note": annotation },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_12_referrers() {
    let reg = TestRegistry::start().await;
    let http = Http::new(&reg.url());
    let img = TestImage::new(&[100], 12);
    let subject = img.push(&http, "conf/ref", "v1").await;
    http.push_blob("conf/ref", b"{}").await;
    http.push_blob("conf/ref", b"signature").await;
    http.push_blob("conf/ref", b"sbom").await;
    let sig = artifact(&img, "application/vnd.example.sig", b"signature", "s");
    let sbom = artifact(&img, "application/vnd.example.sbom", b"sbom", "b");
    let sig_d = Digest::sha256_of(&sig);
    let r = http
        .push_manifest("conf/ref", &sig_d.to_string(), OCI_MANIFEST, &sig)
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("oci-subject"), Some(subject.to_string().as_str()));
    let r = http
        .push_manifest(
            "conf/ref",
            &Digest::sha256_of(&sbom).to_string(),
            OCI_MANIFEST,
            &sbom,
        )
        .await;
    assert_eq!(r.status, 201);

    let r = http.get(&format!("/v2/conf/ref/referrers/{subject}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    let idx = r.json();
    assert_eq!(idx["schemaVersion"], 2);
    assert_eq!(idx["mediaType"], OCI_INDEX);
    let ms = idx["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    let sig_entry = ms
        .iter()
        .find(|m| m["digest"] == sig_d.to_string())
        .unwrap();
    assert_eq!(sig_entry["artifactType"], "application/vnd.example.sig");
    assert_eq!(sig_entry["size"], sig.len());
    assert_eq!(sig_entry["mediaType"], OCI_MANIFEST);
    assert_eq!(sig_entry["annotations"]["note"], "s");

    // Filtered.
    let r = http
        .get(&format!(
            "/v2/conf/ref/referrers/{subject}?artifactType=application/vnd.example.sbom"
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let ms = r.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0]["artifactType"], "application/vnd.example.sbom");

    // Unknown subject: 200 and an empty list, never 404. Bad digest: 400.
    let r = http
        .get(&format!(
            "/v2/conf/ref/referrers/{}",
            Digest::sha256_of(b"none")
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["manifests"], json!([]));
    let r = http.get("/v2/conf/ref/referrers/sha256:bad").await;
    assert_eq!(r.status, 400);

    // Deleting a referrer removes it from the list.
    http.send(
        "DELETE",
        &format!("/v2/conf/ref/manifests/{sig_d}"),
        &[],
        Bytes::new(),
    )
    .await;
    let r = http.get(&format!("/v2/conf/ref/referrers/{subject}")).await;
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 1);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_with_pagination_and_indexes() {
    let reg = TestRegistry::start().await;
    let http = Http::new(&reg.url());
    let a = TestImage::new(&[100], 20);
    let b = TestImage::new(&[100], 21);
    for repo in ["cat/b", "cat/a", "cat/a/sub", "cat/c"] {
        a.push(&http, repo, "v1").await;
    }
    b.push(&http, "cat/a", "arm").await;
    // An index whose children are in the repository.
    let idx = make_index(&[(&a, "amd64"), (&b, "arm64")]);
    let r = http.push_manifest("cat/a", "multi", OCI_INDEX, &idx).await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = http
        .send(
            "GET",
            "/v2/cat/a/manifests/multi",
            &[("accept", OCI_INDEX)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    // An index whose children are missing is refused.
    let r = http.push_manifest("cat/b", "multi", OCI_INDEX, &idx).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "MANIFEST_BLOB_UNKNOWN");

    let r = http.get("/v2/_catalog").await;
    assert_eq!(
        r.json()["repositories"],
        json!(["cat/a", "cat/a/sub", "cat/b", "cat/c"])
    );
    let r = http.get("/v2/_catalog?n=2").await;
    assert_eq!(r.json()["repositories"], json!(["cat/a", "cat/a/sub"]));
    assert_eq!(
        r.header("link"),
        Some("</v2/_catalog?n=2&last=cat/a/sub>; rel=\"next\"")
    );
    let r = http.get("/v2/_catalog?n=2&last=cat/a/sub").await;
    assert_eq!(r.json()["repositories"], json!(["cat/b", "cat/c"]));
    assert!(r.header("link").is_none());
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exposed() {
    let reg = TestRegistry::start().await;
    let http = Http::new(&reg.url());
    http.get("/v2/").await;
    http.get("/v2/m/x/manifests/nope").await;
    let r = http.get("/metrics").await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains(
            "vessel_registry_http_requests_total{method=\"GET\",route=\"base\",code=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("route=\"manifest\",code=\"404\"} 1"),
        "{text}"
    );
    assert!(text.contains("vessel_registry_http_request_duration_seconds_bucket"));
    reg.stop().await;
}
