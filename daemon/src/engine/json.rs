//! JSON helpers for what Docker clients send.

use serde_json::Value;

/// Drop `null` members of objects, recursively, so that `#[serde(default)]`
/// applies to them: Go clients send `null` for every empty slice and map.
pub fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_go_at_every_level() {
        let v = serde_json::json!({"a": null, "b": {"c": null, "d": 1}, "e": [{"f": null}]});
        assert_eq!(
            strip_nulls(v),
            serde_json::json!({"b": {"d": 1}, "e": [{}]})
        );
    }
}
