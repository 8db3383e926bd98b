//! Users, roles, tokens and the audit log against a real master: every route's role is in the OpenAPI
//! document and holds (a test over all routes), users sign in with a password, admins manage users and
//! tokens, and what callers change is recorded.

use arachne_test_support as common;

use arachne_api_types::{AuditQuery, CreateSpider, CreateToken, CreateUser, UpdateUser};
use arachne_client::{Client, Error as ClientError};
use arachne_shared::{Role, TokenKind};
use common::TestMaster;

fn client(master: &TestMaster, secret: &str) -> Client {
    Client::with_token(&format!("http://{}", master.http), secret).unwrap()
}

async fn user(admin: &Client, name: &str, role: Role) {
    admin
        .create_user(&CreateUser {
            name: name.into(),
            role,
            password: format!("{name}-password-long"),
        })
        .await
        .unwrap();
}

/// An API token of `role` for a fresh user of that role (not a session: the sweep signs out).
async fn token_of(master: &TestMaster, role: Role) -> String {
    let name = format!("a-{role}");
    user(&master.client, &name, role).await;
    let request = CreateToken {
        name: format!("{name}-token"),
        kind: TokenKind::Api,
        role,
        user: Some(name),
        expires_in_days: None,
    };
    master.client.create_token(&request).await.unwrap().secret
}

/// `/api/v1/tasks/{id}` with its parameters filled in: values no route finds, so nothing is touched.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{id}" => "0190e5b0-0000-7000-8000-000000000000",
            s if s.starts_with('{') => "no-such-thing",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_names_its_role_and_a_token_below_it_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let base = format!("http://{}", master.http);
    let document = common::openapi_document(&master).await;
    let tokens = [
        (Role::Viewer, token_of(&master, Role::Viewer).await),
        (Role::Developer, token_of(&master, Role::Developer).await),
        (Role::Admin, common::API_TOKEN.to_owned()),
    ];
    let mut checked = 0;
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let open = operation["security"] == serde_json::json!([]);
            let role = operation["x-arachne-role"].as_str();
            assert!(
                open == role.is_none(),
                "{method} {path}: a role, or open to all: {operation}"
            );
            if open {
                assert!(
                    ["/health", "/api/v1/sign-in"].contains(&path.as_str()),
                    "{method} {path} is open"
                );
                continue;
            }
            let needed: Role = role.unwrap().parse().unwrap();
            let url = format!("{base}{}", concrete(path));
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let send = |secret: Option<&str>| {
                let mut request = common::http()
                    .request(method.clone(), &url)
                    .header("content-type", "application/json")
                    .body("{}");
                if let Some(secret) = secret {
                    request = request.bearer_auth(secret);
                }
                request.send()
            };
            assert_eq!(
                send(None).await.unwrap().status(),
                401,
                "{method} {path} without a token"
            );
            for (role, secret) in &tokens {
                let status = send(Some(secret)).await.unwrap().status();
                if *role < needed {
                    assert_eq!(
                        status, 403,
                        "{method} {path} needs {needed}, refused to {role}"
                    );
                } else {
                    assert!(
                        ![401, 403].contains(&status.as_u16()),
                        "{method} {path} needs {needed}, open to {role}: {status}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "every route was checked: {checked}");
    // What the document says, for a few that matter.
    let role = |path: &str, method: &str| {
        document["paths"][path][method]["x-arachne-role"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(role("/api/v1/tasks", "get"), "viewer");
    assert_eq!(role("/api/v1/tasks", "post"), "developer");
    assert_eq!(role("/api/v1/notifications", "post"), "developer");
    assert_eq!(role("/api/v1/nodes/{name}", "patch"), "admin");
    assert_eq!(role("/api/v1/users", "get"), "admin");
    assert_eq!(role("/api/v1/audit", "get"), "admin");
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_sign_in_admins_manage_users_and_tokens_and_changes_are_audited() {
    let data = tempfile::tempdir().unwrap();
    let master = TestMaster::start(data.path(), false).await;
    let admin = &master.client;
    // The master's own tokens are admin tokens.
    let me = admin.me().await.unwrap();
    assert_eq!(
        (me.role, me.actor.as_str()),
        (Role::Admin, "token:configured-api")
    );

    user(admin, "dev", Role::Developer).await;
    user(admin, "ro", Role::Viewer).await;
    let short = admin
        .create_user(&CreateUser {
            name: "x".into(),
            role: Role::Viewer,
            password: "short".into(),
        })
        .await;
    assert!(common::refusal(short).1.contains("at least 10 characters"));
    common::assert_conflict(
        admin
            .create_user(&CreateUser {
                name: "dev".into(),
                role: Role::Admin,
                password: "another-long-one".into(),
            })
            .await,
        "exists already",
    );

    // Signing in: a wrong password and an unknown name get the same answer.
    let anonymous = client(&master, "");
    for (name, password) in [("dev", "wrong-password!"), ("nobody", "dev-password-long")] {
        let (status, message) = common::refusal(anonymous.sign_in(name, password).await);
        assert_eq!(
            (status, message.as_str()),
            (401, "the name or the password is wrong")
        );
    }
    let session = anonymous.sign_in("dev", "dev-password-long").await.unwrap();
    assert!(
        session.token.session && session.token.expires_at.is_some(),
        "{:?}",
        session.token
    );
    let dev = client(&master, &session.secret);
    assert_eq!(dev.me().await.unwrap().actor, "dev");
    dev.put_spider(&CreateSpider {
        name: "made-by-dev".into(),
        cmd: "true".into(),
        ..CreateSpider::default()
    })
    .await
    .unwrap();
    let (status, message) = common::refusal(dev.list_users().await);
    assert_eq!(status, 403);
    assert!(
        message.contains("needs the admin role; dev has developer"),
        "{message}"
    );

    // A viewer reads and changes nothing.
    let ro = client(
        &master,
        &anonymous
            .sign_in("ro", "ro-password-long")
            .await
            .unwrap()
            .secret,
    );
    assert_eq!(ro.list_spiders().await.unwrap().len(), 1);
    let (status, message) = common::refusal(
        ro.put_spider(&CreateSpider {
            name: "nope".into(),
            cmd: "true".into(),
            ..CreateSpider::default()
        })
        .await,
    );
    assert_eq!(status, 403);
    assert!(
        message.contains("needs the developer role; ro has viewer"),
        "{message}"
    );

    // Tokens: made by an admin for a user, never above the user's role; listed without secrets; revoked at once.
    let above = admin
        .create_token(&CreateToken {
            name: "ro-dev".into(),
            kind: TokenKind::Api,
            role: Role::Developer,
            user: Some("ro".into()),
            expires_in_days: None,
        })
        .await;
    assert!(common::refusal(above).1.contains("ro is a viewer"));
    let made = admin
        .create_token(&CreateToken {
            name: "ro-ci".into(),
            kind: TokenKind::Api,
            role: Role::Viewer,
            user: Some("ro".into()),
            expires_in_days: Some(30),
        })
        .await
        .unwrap();
    assert!(made.secret.starts_with("arachne_api_") && made.token.expires_at.is_some());
    let ci = client(&master, &made.secret);
    assert_eq!(ci.me().await.unwrap().actor, "ro");
    let listed = admin.list_tokens().await.unwrap();
    assert!(
        listed.iter().any(|t| t.name == "ro-ci"
            && t.user.as_deref() == Some("ro")
            && t.role == Role::Viewer)
    );
    assert!(
        !serde_json::to_string(&listed)
            .unwrap()
            .contains(&made.secret)
    );
    admin.revoke_token("ro-ci").await.unwrap();
    assert_eq!(common::refusal(ci.me().await).0, 401, "revoked at once");

    // A user made a viewer loses what the developer role gave their tokens.
    admin
        .update_user(
            "dev",
            &UpdateUser {
                role: Some(Role::Viewer),
                password: None,
            },
        )
        .await
        .unwrap();
    let (status, _) = common::refusal(
        dev.put_spider(&CreateSpider {
            name: "again".into(),
            cmd: "true".into(),
            ..CreateSpider::default()
        })
        .await,
    );
    assert_eq!(status, 403);
    // Signing out ends the session; deleting a user ends every token of theirs.
    dev.sign_out().await.unwrap();
    assert_eq!(common::refusal(dev.me().await).0, 401);
    common::assert_conflict(admin.sign_out().await, "only a token made by signing in");
    admin.delete_user("ro").await.unwrap();
    assert_eq!(common::refusal(ro.me().await).0, 401);

    // The audit log: who did what, to what, with what outcome; failed sign-ins too. Admins only.
    let log = admin.audit(&AuditQuery::default()).await.unwrap();
    let has = |actor: &str, action: &str, status: u16| {
        log.iter()
            .any(|e| e.actor == actor && e.action == action && e.status == status)
    };
    assert!(has("dev", "POST /api/v1/spiders", 201), "{log:#?}");
    assert!(has("dev", "POST /api/v1/sign-in", 201), "{log:#?}");
    assert!(has("nobody", "POST /api/v1/sign-in", 401), "{log:#?}");
    assert!(
        has("token:configured-api", "DELETE /api/v1/users/{name}", 204),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|e| e.target == "/api/v1/tokens/ro-ci"
                && e.action == "DELETE /api/v1/tokens/{name}")
    );
    assert!(log.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert!(
        !log.iter().any(|e| e.action.starts_with("GET")),
        "reading is not recorded"
    );
    let devs = admin
        .audit(&AuditQuery {
            actor: Some("dev".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert!(devs.iter().all(|e| e.actor == "dev") && !devs.is_empty());
    assert!(matches!(
        client(&master, &session.secret)
            .audit(&AuditQuery::default())
            .await,
        Err(ClientError::Api { status: 401, .. })
    ));
    master.stop().await;
}
