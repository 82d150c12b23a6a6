//! Raw HTTP on the unix socket: bad requests get Docker's status codes and
//! JSON `{"message": ...}` bodies, and change nothing.

use swarmnet_tests::{Cluster, HttpResponse, Node};

#[track_caller]
fn assert_error(r: &HttpResponse, status: u16, what: &str) -> String {
    assert_eq!(r.status, status, "{what}: HTTP {} {:?}", r.status, r.text());
    assert_json_message(r, what)
}

#[track_caller]
fn assert_json_message(r: &HttpResponse, what: &str) -> String {
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{what}: error Content-Type {:?}",
        r.header("content-type")
    );
    let msg = r
        .message()
        .unwrap_or_else(|| panic!("{what}: body is not {{\"message\": ...}}: {:?}", r.text()));
    assert!(!msg.trim().is_empty(), "{what}: empty message");
    msg
}

#[track_caller]
fn get_json(n: &Node, path: &str) -> serde_json::Value {
    let r = n.api("GET", path, None);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

#[test]
fn bad_requests_get_docker_errors_and_change_nothing() {
    let c = Cluster::new(1);
    let n = c.manager();

    // Malformed bodies for POST /swarm/init: 400, and no swarm.
    let bodies: [&[u8]; 3] = [
        br#"{"ListenAddr": "0.0.0.0:2377", "AdvertiseAddr": "#,
        b"this is not json",
        br#"{"ListenAddr": 5, "AdvertiseAddr": ["x"]}"#,
    ];
    for body in bodies {
        let r = n.api("POST", "/swarm/init", Some(body));
        assert_error(
            &r,
            400,
            &format!("POST /swarm/init {:?}", String::from_utf8_lossy(body)),
        );
    }
    assert_eq!(
        n.swarm_state(),
        "inactive",
        "a rejected init creates no swarm"
    );

    c.init_swarm();
    let id = n.node_id();
    let swarm_before = get_json(n, "/swarm");

    // Unknown node: 404, unversioned and versioned paths alike.
    for path in ["/nodes/nosuchnode", "/v1.41/nodes/nosuchnode"] {
        let r = n.api("GET", path, None);
        let msg = assert_error(&r, 404, &format!("GET {path}"));
        assert!(msg.contains("nosuchnode"), "GET {path}: {msg}");
    }

    // Optimistic concurrency: an update with a stale version is refused
    // and leaves the spec alone.
    let node = get_json(n, &format!("/nodes/{id}"));
    let v0 = node["Version"]["Index"].as_u64().expect("Version.Index");
    let mut spec = node["Spec"].clone();
    spec["Labels"] = serde_json::json!({ "a": "1" });
    let r = n.api(
        "POST",
        &format!("/nodes/{id}/update?version={v0}"),
        Some(spec.to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "a current-version update: {}", r.text());
    let current = get_json(n, &format!("/nodes/{id}"));
    let v1 = current["Version"]["Index"].as_u64().expect("Version.Index");
    assert!(v1 > v0, "update bumped the version {v0} -> {v1}");
    assert_eq!(current["Spec"]["Labels"]["a"], "1", "{current}");

    let mut stale = current["Spec"].clone();
    stale["Labels"] = serde_json::json!({ "a": "2" });
    stale["Availability"] = "drain".into();
    let r = n.api(
        "POST",
        &format!("/nodes/{id}/update?version={v0}"),
        Some(stale.to_string().as_bytes()),
    );
    assert!(
        (400..600).contains(&r.status),
        "a stale-version update must fail: HTTP {} {:?}",
        r.status,
        r.text()
    );
    let msg = assert_json_message(&r, "stale update");
    assert!(
        msg.contains("update out of sequence"),
        "stale update: {msg}"
    );
    let after = get_json(n, &format!("/nodes/{id}"));
    assert_eq!(
        after["Spec"], current["Spec"],
        "the stale update changed the spec"
    );
    assert_eq!(
        after["Version"]["Index"].as_u64(),
        Some(v1),
        "the stale update wrote"
    );

    // An unknown filter: 400 with Docker's wording.
    let filters = "%7B%22bogus%22%3A%5B%22x%22%5D%7D"; // {"bogus":["x"]}
    let r = n.api("GET", &format!("/nodes?filters={filters}"), None);
    let msg = assert_error(&r, 400, "GET /nodes?filters={bogus}");
    assert!(msg.contains("invalid filter 'bogus'"), "{msg}");

    // Nothing changed.
    let nodes = get_json(n, "/nodes");
    let nodes = nodes.as_array().expect("GET /nodes is an array");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["ID"], id.as_str());
    assert_eq!(nodes[0]["Spec"], current["Spec"]);
    let swarm_after = get_json(n, "/swarm");
    assert_eq!(swarm_after["ID"], swarm_before["ID"]);
    assert_eq!(swarm_after["Spec"], swarm_before["Spec"]);
    let r = n.api("GET", "/_ping", None);
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));
    assert_eq!(n.node_ls().len(), 1);
}
