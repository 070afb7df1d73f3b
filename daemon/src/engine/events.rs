//! The event stream (`docker events`): every lifecycle change of
//! containers, images and volumes, kept for a while for `--since`, and
//! broadcast to live subscribers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::broadcast;

/// How many past events are kept for `--since`.
const HISTORY: usize = 1024;

/// One event, in the Docker API's shape.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    /// Legacy fields older clients read.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub from: String,
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub scope: String,
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i128,
}

/// What the event is about.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

/// The event bus.
pub struct Bus {
    tx: broadcast::Sender<Event>,
    history: Mutex<VecDeque<Event>>,
}

impl Default for Bus {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Bus {
            tx,
            history: Mutex::new(VecDeque::new()),
        }
    }
}

impl Bus {
    /// Record and broadcast an event.
    pub fn emit(&self, kind: &str, action: &str, id: &str, attributes: BTreeMap<String, String>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let legacy = kind == "container" || kind == "image";
        let ev = Event {
            status: if legacy {
                action.to_string()
            } else {
                String::new()
            },
            id: if legacy {
                id.to_string()
            } else {
                String::new()
            },
            from: if kind == "container" {
                attributes.get("image").cloned().unwrap_or_default()
            } else {
                String::new()
            },
            kind: kind.to_string(),
            action: action.to_string(),
            actor: Actor {
                id: id.to_string(),
                attributes,
            },
            scope: "local".into(),
            time: now.as_secs() as i64,
            time_nano: now.as_nanos() as i128,
        };
        {
            let mut h = self
                .history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if h.len() >= HISTORY {
                h.pop_front();
            }
            h.push_back(ev.clone());
        }
        let _ = self.tx.send(ev);
    }

    /// Past events and a receiver for the ones to come (taken together, so
    /// none is missed or seen twice).
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let h = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rx = self.tx.subscribe();
        (h.iter().cloned().collect(), rx)
    }
}

/// Docker's event filters: `type`, `event`, `container`, `image`, `volume`,
/// `label` (`key` or `key=value`). Values of one key are ORed; keys ANDed.
pub fn matches(ev: &Event, filters: &BTreeMap<String, Vec<String>>) -> bool {
    filters.iter().all(|(key, values)| {
        values.iter().any(|v| match key.as_str() {
            "type" => ev.kind == *v,
            "event" => ev.action == *v || ev.action.split(':').next() == Some(v.as_str()),
            "container" => {
                ev.kind == "container"
                    && (ev.actor.id.starts_with(v.as_str())
                        || ev.actor.attributes.get("name") == Some(v))
            }
            "image" => {
                ev.actor.attributes.get("image") == Some(v)
                    || (ev.kind == "image"
                        && (ev.actor.id == *v || ev.actor.id.starts_with(v.as_str())))
            }
            "volume" => ev.kind == "volume" && ev.actor.id == *v,
            "label" => match v.split_once('=') {
                Some((k, val)) => ev.actor.attributes.get(k).map(String::as_str) == Some(val),
                None => ev.actor.attributes.contains_key(v),
            },
            _ => false,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_and_filters() {
        let bus = Bus::default();
        let attrs = BTreeMap::from([
            ("name".to_string(), "web".to_string()),
            ("image".to_string(), "busybox".to_string()),
        ]);
        bus.emit("container", "start", "abc123", attrs);
        bus.emit("volume", "create", "data", BTreeMap::new());
        let (past, _rx) = bus.subscribe();
        assert_eq!(past.len(), 2);
        let f = BTreeMap::from([("container".to_string(), vec!["web".to_string()])]);
        assert!(matches(&past[0], &f));
        assert!(!matches(&past[1], &f));
        let f = BTreeMap::from([(
            "type".to_string(),
            vec!["volume".to_string(), "network".to_string()],
        )]);
        assert!(matches(&past[1], &f));
        assert_eq!(past[0].status, "start");
        assert_eq!(past[0].from, "busybox");
    }
}
