//! mvirt-one in local mode against registries that need credentials: basic auth on a private
//! registry, and token auth (a token server in front of the registry). Harness: `support/local.rs`.

mod support;

use mvirt_one::proto;
use mvirt_testsupport::registry::{Registry, TestImage, OCI_MANIFEST, TOKEN_PUSH_USER};
use mvirt_testsupport::token_server::{TokenServer, TokenUser};
use support::local::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_registries_need_credentials_and_layers_are_cached_by_digest() {
    let registry = Registry::start_with_basic_auth("puller", "s3cret");
    let mut h = Harness::start_with(registry).await;
    let image = TestImage::busybox();
    h.registry.push_image("private", "latest", &image);
    let reference = h.image("private");
    let spec = |auth: Option<(&str, &str)>| proto::ContainerSpec {
        name: "main".into(),
        image: reference.clone(),
        command: vec!["/bin/echo".into(), "pulled".into()],
        restart_policy: proto::RestartPolicy::Never as i32,
        registry_auth: auth.map(|(u, p)| proto::RegistryAuth {
            username: u.into(),
            password: p.into(),
            token: String::new(),
        }),
        ..Default::default()
    };
    for auth in [None, Some(("puller", "wrong"))] {
        let err = h
            .client
            .create_pod(proto::CreatePodRequest {
                id: uuid(),
                hostname: String::new(),
                containers: vec![spec(auth)],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    }
    let pod = h.create(vec![spec(Some(("puller", "s3cret")))]).await;
    h.start_pod(&pod.id).await;
    h.wait_container(&pod.id, "exit", |c| c.state == EXITED)
        .await;
    assert_eq!(text(&h.logs(&pod.id, "main", 0).await), ["pulled"]);
    let layer = &image.layer_digests()[0];
    assert!(h
        .data
        .path()
        .join("images/blobs/sha256")
        .join(&layer[7..])
        .exists());

    // With the layer removed from the registry, a second pod still gets the image: from cache.
    std::fs::remove_file(h.registry.blob_data_path(layer)).unwrap();
    let again = h.create(vec![spec(Some(("puller", "s3cret")))]).await;
    assert_eq!(
        again.containers[0].image_digest,
        pod.containers[0].image_digest
    );
    h.stop().await;
}

/// cgroup limits: the memory limit OOM-kills (and says so), a container below its limit runs,
/// the pids limit stops a fork loop, the CPU quota throttles, exec joins the container's cgroup,
/// and delete removes the cgroups. On the test machines the controllers are cgroup v1 (hybrid
/// host); the guest test covers cgroup v2.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_registry_pulls_only_with_valid_credentials() {
    let registry = Registry::start_with_token_auth(vec![
        TokenUser::new("puller", "s3cret", &["pull"]),
        TokenUser::new("outsider", "0ther", &[]),
    ]);
    let mut h = Harness::start_with(registry).await;
    let image = TestImage::busybox();
    h.registry.push_image("private/app", "latest", &image);
    let reference = h.image("private/app");

    // The push itself went through the token server as the fixture's pull,push user, and the
    // registry refuses requests without a token or with a token signed by a foreign key.
    let issued = h.registry.token_server().issued();
    assert!(
        issued
            .iter()
            .any(|t| t.user.as_deref() == Some(TOKEN_PUSH_USER)
                && t.granted
                    == [(
                        "private/app".to_string(),
                        vec!["pull".to_string(), "push".to_string()]
                    )]),
        "{issued:?}"
    );
    let manifest_path = "/v2/private/app/manifests/latest";
    let accept = [("Accept", OCI_MANIFEST)];
    let anonymous = h
        .registry
        .request_as(None, "GET", manifest_path, &accept, &[])
        .unwrap();
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let challenge = anonymous.header("WWW-Authenticate").unwrap().to_string();
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains("scope=\"repository:private/app:pull\""),
        "{challenge}"
    );
    let foreign = TokenServer::start(vec![TokenUser::new("puller", "s3cret", &["pull"])]);
    let forged = foreign.token_for("puller", "s3cret", &["repository:private/app:pull"]);
    let forged_reply = h
        .registry
        .request_as(
            Some(&format!("Bearer {forged}")),
            "GET",
            manifest_path,
            &accept,
            &[],
        )
        .unwrap();
    assert_eq!(forged_reply.status, 401, "{forged_reply:?}");

    let spec = |auth: Option<proto::RegistryAuth>| proto::ContainerSpec {
        name: "main".into(),
        image: reference.clone(),
        command: vec!["/bin/echo".into(), "pulled with a token".into()],
        restart_policy: proto::RestartPolicy::Never as i32,
        registry_auth: auth,
        ..Default::default()
    };
    let basic = |u: &str, p: &str| proto::RegistryAuth {
        username: u.into(),
        password: p.into(),
        token: String::new(),
    };
    let bearer = |t: &str| proto::RegistryAuth {
        token: t.into(),
        ..Default::default()
    };
    let refused_before = h.registry.token_server().refused();
    let cases = [
        ("anonymous", None, "refused access"),
        (
            "wrong password",
            Some(basic("puller", "wrong")),
            "invalid username or password",
        ),
        (
            "unknown user",
            Some(basic("mallory", "s3cret")),
            "invalid username or password",
        ),
        (
            "user without pull",
            Some(basic("outsider", "0ther")),
            "refused access",
        ),
        ("foreign token", Some(bearer(&forged)), "refused access"),
    ];
    for (what, auth, expected) in cases {
        let err = h
            .client
            .create_pod(proto::CreatePodRequest {
                id: uuid(),
                hostname: String::new(),
                containers: vec![spec(auth)],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{what}: {err:?}");
        assert!(
            err.message().contains(&reference) && err.message().contains(expected),
            "{what}: {}",
            err.message()
        );
    }
    assert_eq!(h.registry.token_server().refused(), refused_before + 2);
    // Nothing half-created: no pod, no blob, no unpacked image.
    let pods = h
        .client
        .list_pods(proto::ListPodsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pods;
    assert!(pods.is_empty(), "{pods:?}");
    for dir in ["images/blobs/sha256", "images/images", "images/tmp"] {
        let entries: Vec<_> = std::fs::read_dir(h.data.path().join(dir))
            .unwrap()
            .collect();
        assert!(entries.is_empty(), "{dir}: {entries:?}");
    }

    // The right credentials: a token for exactly the pull scope, and the container runs.
    let pod = h.create(vec![spec(Some(basic("puller", "s3cret")))]).await;
    let granted = h.registry.token_server().issued();
    assert!(
        granted.iter().any(|t| t.user.as_deref() == Some("puller")
            && t.scopes == ["repository:private/app:pull"]
            && t.granted == [("private/app".to_string(), vec!["pull".to_string()])]),
        "{granted:?}"
    );
    h.start_pod(&pod.id).await;
    h.wait_container(&pod.id, "exit", |c| c.state == EXITED)
        .await;
    assert_eq!(
        text(&h.logs(&pod.id, "main", 0).await),
        ["pulled with a token"]
    );

    // A bearer token fetched by the caller (RegistryAuth.token) works as well.
    let token =
        h.registry
            .token_server()
            .token_for("puller", "s3cret", &["repository:private/app:pull"]);
    let with_token = h.create(vec![spec(Some(bearer(&token)))]).await;
    assert_eq!(
        with_token.containers[0].image_digest,
        pod.containers[0].image_digest
    );
    h.stop().await;
}
