//! `/networks`: list, inspect, create, connect, disconnect, delete, prune,
//! in Docker's shapes. The engine and the network module do the work.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::{Body, Req, json as json_resp};
use crate::engine::Engine;
use crate::engine::error::Error;
use crate::network::{CreateRequest, IpamRequest, Network};

/// Docker's network document.
pub fn network_json(n: &Network) -> Value {
    let mut containers = serde_json::Map::new();
    for (cid, e) in &n.endpoints {
        containers.insert(
            cid.clone(),
            json!({
                "Name": e.container_name,
                "EndpointID": e.id,
                "MacAddress": e.mac,
                "IPv4Address": e.ip.map(|ip| format!("{ip}/{}", e.prefix)).unwrap_or_default(),
                "IPv6Address": e.ip6.map(|ip| format!("{ip}/{}", e.prefix6)).unwrap_or_default(),
            }),
        );
    }
    let entry = |subnet: &Option<String>, gateway: Option<String>, range: &Option<String>| {
        let mut e = serde_json::Map::new();
        e.insert("Subnet".into(), json!(subnet.clone()?));
        if let Some(r) = range {
            e.insert("IPRange".into(), json!(r));
        }
        if let Some(g) = gateway {
            e.insert("Gateway".into(), json!(g));
        }
        Some(Value::Object(e))
    };
    let mut config: Vec<Value> = Vec::new();
    config.extend(entry(
        &n.subnet,
        n.gateway.map(|g| g.to_string()),
        &n.ip_range,
    ));
    if n.enable_ipv6 {
        config.extend(entry(
            &n.subnet6,
            n.gateway6.map(|g| g.to_string()),
            &n.ip_range6,
        ));
    }
    let driver = n.driver.as_str();
    json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created,
        "Scope": "local",
        "Driver": driver,
        "EnableIPv4": true,
        "EnableIPv6": n.enable_ipv6,
        "IPAM": {"Driver": "default", "Options": if n.builtin() { Value::Null } else { json!({}) }, "Config": config},
        "Internal": n.internal,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": n.options,
        "Labels": n.labels,
    })
}

fn filter_ok(n: &Network, f: &BTreeMap<String, Vec<String>>) -> bool {
    f.iter().all(|(k, vals)| {
        vals.iter().any(|v| match k.as_str() {
            "name" => n.name.contains(v.as_str()),
            "id" => n.id.starts_with(v.as_str()),
            "driver" => &n.driver == v,
            "type" => match v.as_str() {
                "builtin" => n.builtin(),
                "custom" => n.user_defined(),
                _ => false,
            },
            "label" => match v.split_once('=') {
                Some((lk, lv)) => n.labels.get(lk).is_some_and(|x| x == lv),
                None => n.labels.contains_key(v),
            },
            "scope" => v == "local",
            _ => true,
        })
    })
}

/// Route `/networks...`.
pub async fn route(engine: Arc<Engine>, req: &mut Req) -> Result<Response<Body>, Error> {
    let net = engine.network()?.clone();
    let p: Vec<String> = req.parts.clone();
    let p: Vec<&str> = p.iter().map(String::as_str).collect();
    match (req.method.clone(), p.as_slice()) {
        (Method::GET, ["networks"]) => {
            let filters = req.query.filters()?;
            let list: Vec<Value> = net
                .list()
                .await
                .iter()
                .filter(|n| filter_ok(n, &filters))
                .map(network_json)
                .collect();
            Ok(json_resp(StatusCode::OK, &Value::Array(list)))
        }
        (Method::GET, ["networks", name]) => {
            let n = net.get(name).await?;
            Ok(json_resp(StatusCode::OK, &network_json(&n)))
        }
        (Method::POST, ["networks", "create"]) => {
            let body = req.json().await?;
            let name = body["Name"].as_str().unwrap_or_default();
            let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(String::from);
            let ipam: Vec<IpamRequest> = body["IPAM"]["Config"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| IpamRequest {
                            subnet: text(&c["Subnet"]),
                            gateway: text(&c["Gateway"]),
                            ip_range: text(&c["IPRange"]),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let strings = |v: &Value| -> BTreeMap<String, String> {
                v.as_object()
                    .map(|o| {
                        o.iter()
                            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let id = net
                .create(CreateRequest {
                    name: name.to_string(),
                    driver: body["Driver"].as_str().unwrap_or("bridge").to_string(),
                    ipam,
                    enable_ipv6: body["EnableIPv6"].as_bool().unwrap_or(false),
                    internal: body["Internal"].as_bool().unwrap_or(false),
                    labels: strings(&body["Labels"]),
                    options: strings(&body["Options"]),
                })
                .await?;
            engine.events.emit(
                "network",
                "create",
                &id,
                BTreeMap::from([
                    ("name".to_string(), name.to_string()),
                    ("type".to_string(), "bridge".to_string()),
                ]),
            );
            Ok(json_resp(
                StatusCode::CREATED,
                &json!({"Id": id, "Warning": ""}),
            ))
        }
        (Method::POST, ["networks", "prune"]) => {
            let deleted = net.prune().await;
            Ok(json_resp(
                StatusCode::OK,
                &json!({"NetworksDeleted": deleted}),
            ))
        }
        (Method::POST, ["networks", name, "connect"]) => {
            let body = req.json().await?;
            let container = body["Container"].as_str().unwrap_or_default().to_string();
            let ep = body
                .get("EndpointConfig")
                .cloned()
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({}));
            engine.network_connect(name, &container, ep).await?;
            Ok(super::status(StatusCode::OK))
        }
        (Method::POST, ["networks", name, "disconnect"]) => {
            let body = req.json().await?;
            let container = body["Container"].as_str().unwrap_or_default().to_string();
            engine.network_disconnect(name, &container).await?;
            Ok(super::status(StatusCode::OK))
        }
        (Method::DELETE, ["networks", name]) => {
            let n = net.get(name).await?;
            net.remove(&n.id).await?;
            engine.events.emit(
                "network",
                "destroy",
                &n.id,
                BTreeMap::from([("name".to_string(), n.name.clone())]),
            );
            Ok(super::status(StatusCode::NO_CONTENT))
        }
        (m, _) => Err(Error::not_found(format!(
            "page not found: {m} /{}",
            p.join("/")
        ))),
    }
}
