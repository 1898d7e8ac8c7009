//! Evaluating a filter against one point's JSON payload: the reference semantics that the
//! payload indexes must agree with (see [`crate::filter`]).

use serde_json::Value;

use crate::filter::{Condition, FieldTest, Filter, MatchAny, MatchValue};

/// The values `key` names in `payload`: each dotted step followed into objects, every array
/// met on the way (or at the end) flattened, `null`s left out.
pub fn values<'a>(payload: &'a Value, key: &str) -> Vec<&'a Value> {
    let mut current = Vec::new();
    push_flat(payload, &mut current);
    for step in key.split('.') {
        let mut next = Vec::new();
        for value in current {
            if let Some(child) = value.as_object().and_then(|object| object.get(step)) {
                push_flat(child, &mut next);
            }
        }
        if next.is_empty() {
            return next;
        }
        current = next;
    }
    current.retain(|value| !value.is_null());
    current
}

fn push_flat<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| push_flat(item, out)),
        other => out.push(other),
    }
}

/// Whether the point `id` with `payload` (`None`: it has none) passes `filter`.
pub fn matches(filter: &Filter, id: &str, payload: Option<&Value>) -> bool {
    filter
        .must
        .iter()
        .all(|condition| condition_matches(condition, id, payload))
        && (filter.should.is_empty()
            || filter
                .should
                .iter()
                .any(|condition| condition_matches(condition, id, payload)))
        && !filter
            .must_not
            .iter()
            .any(|condition| condition_matches(condition, id, payload))
}

/// Whether the point passes one condition.
pub fn condition_matches(condition: &Condition, id: &str, payload: Option<&Value>) -> bool {
    match condition {
        Condition::Field(field) => {
            payload.is_some_and(|payload| test_passes(&field.test, &values(payload, &field.key)))
        }
        Condition::Filter(nested) => matches(nested, id, payload),
        Condition::HasId(ids) => ids.iter().any(|candidate| candidate == id),
        Condition::IsEmpty(key) => payload.is_none_or(|payload| values(payload, key).is_empty()),
    }
}

/// Whether some value passes the test.
pub fn test_passes(test: &FieldTest, values: &[&Value]) -> bool {
    values.iter().any(|value| value_passes(test, value))
}

/// Whether one value passes the test.
pub fn value_passes(test: &FieldTest, value: &Value) -> bool {
    match test {
        FieldTest::Match(MatchValue::Keyword(keyword)) => value.as_str() == Some(keyword),
        FieldTest::Match(MatchValue::Integer(integer)) => equals_integer(value, *integer),
        FieldTest::Match(MatchValue::Boolean(boolean)) => value.as_bool() == Some(*boolean),
        FieldTest::Any(MatchAny { keywords, integers }) => {
            value
                .as_str()
                .is_some_and(|text| keywords.iter().any(|keyword| keyword == text))
                || integers
                    .iter()
                    .any(|integer| equals_integer(value, *integer))
        }
        FieldTest::Range(range) => value.as_f64().is_some_and(|number| range.contains(number)),
    }
}

/// Whether a JSON value is a number equal to `integer`: exactly for integers, by value for
/// floats (`3.0` equals 3).
pub fn equals_integer(value: &Value, integer: i64) -> bool {
    let Value::Number(number) = value else {
        return false;
    };
    if let Some(exact) = number.as_i64() {
        return exact == integer;
    }
    if number.is_u64() {
        return false;
    }
    number
        .as_f64()
        .is_some_and(|float| float.fract() == 0.0 && float == integer as f64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::filter::{FieldCondition, Range};

    fn field(key: &str, test: FieldTest) -> Condition {
        Condition::Field(FieldCondition {
            key: key.into(),
            test,
        })
    }

    #[test]
    fn values_follow_dotted_paths_through_arrays() {
        let payload = json!({
            "meta": {"lang": "en", "tags": ["a", "b", null]},
            "items": [{"color": "red"}, {"color": ["blue", "green"]}, {"size": 3}],
            "empty": [],
            "nothing": null
        });
        let strings = |key| {
            values(&payload, key)
                .into_iter()
                .map(|value| value.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(strings("meta.lang"), ["\"en\""]);
        assert_eq!(strings("meta.tags"), ["\"a\"", "\"b\""]);
        assert_eq!(strings("items.color"), ["\"red\"", "\"blue\"", "\"green\""]);
        assert!(strings("empty").is_empty());
        assert!(strings("nothing").is_empty());
        assert!(strings("meta.lang.deeper").is_empty());
        assert!(strings("missing").is_empty());
    }

    #[test]
    fn numbers_compare_by_value_and_arrays_match_any_element() {
        let payload = json!({"n": [1, 2.5, 3.0], "big": 18446744073709551615u64, "s": "3"});
        let point = Some(&payload);
        let matching = |test| condition_matches(&field("n", test), "p", point);
        assert!(matching(FieldTest::Match(MatchValue::Integer(3))));
        assert!(matching(FieldTest::Match(MatchValue::Integer(1))));
        assert!(!matching(FieldTest::Match(MatchValue::Integer(2))));
        assert!(matching(FieldTest::Range(Range {
            gt: Some(2.0),
            lt: Some(2.6),
            ..Default::default()
        })));
        assert!(!matching(FieldTest::Range(Range {
            gt: Some(3.0),
            ..Default::default()
        })));
        assert!(!condition_matches(
            &field("s", FieldTest::Match(MatchValue::Integer(3))),
            "p",
            point
        ));
        assert!(!condition_matches(
            &field("big", FieldTest::Match(MatchValue::Integer(-1))),
            "p",
            point
        ));
    }

    #[test]
    fn missing_keys_match_only_is_empty() {
        let payload = json!({"tags": [], "x": null, "y": 0});
        let point = Some(&payload);
        for key in ["tags", "x", "absent"] {
            assert!(
                condition_matches(&Condition::IsEmpty(key.into()), "p", point),
                "{key}"
            );
            assert!(!condition_matches(
                &field(
                    key,
                    FieldTest::Range(Range {
                        gte: Some(f64::MIN),
                        ..Default::default()
                    })
                ),
                "p",
                point
            ));
        }
        assert!(!condition_matches(
            &Condition::IsEmpty("y".into()),
            "p",
            point
        ));
        assert!(condition_matches(
            &Condition::IsEmpty("y".into()),
            "p",
            None
        ));
        let not_empty = Filter {
            must_not: vec![Condition::IsEmpty("y".into())],
            ..Default::default()
        };
        assert!(matches(&not_empty, "p", point));
    }

    #[test]
    fn must_should_and_must_not_combine() {
        let payload = json!({"tenant": 7, "lang": "de", "year": 2021});
        let filter = Filter {
            must: vec![field("tenant", FieldTest::Match(MatchValue::Integer(7)))],
            should: vec![
                field("lang", FieldTest::Match(MatchValue::Keyword("en".into()))),
                field(
                    "lang",
                    FieldTest::Any(MatchAny {
                        keywords: vec!["de".into()],
                        ..Default::default()
                    }),
                ),
            ],
            must_not: vec![Condition::HasId(vec!["q".into()])],
        };
        assert!(matches(&filter, "p", Some(&payload)));
        assert!(!matches(&filter, "q", Some(&payload)));
        assert!(!matches(&filter, "p", None));
        assert!(matches(&Filter::default(), "p", None));
    }
}
