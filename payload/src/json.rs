//! The JSON form of a filter, for `quiverctl --filter`, HTTP clients and the docs. It mirrors
//! the proto, with field conditions written flat:
//!
//! ```json
//! {"must": [{"key": "category", "match": {"keyword": "shoes"}},
//!           {"key": "price", "range": {"lt": 100}}],
//!  "should": [{"key": "lang", "any": {"keywords": ["en", "de"]}},
//!             {"filter": {"must": [{"key": "tenant", "match": {"integer": 7}}]}}],
//!  "must_not": [{"has_id": ["p-1", "p-2"]}, {"is_empty": {"key": "title"}}]}
//! ```

use serde_json::{json, Map, Value};

use crate::{
    error::{FilterError, Result},
    filter::{Condition, FieldCondition, FieldTest, Filter, MatchAny, MatchValue, Range},
};

/// Parses the JSON form; errors name the path (`filter.must[0].match: ...`).
pub fn parse(text: &str) -> Result<Filter> {
    let value: Value = serde_json::from_str(text)
        .map_err(|error| FilterError::at("filter", format!("not valid JSON: {error}")))?;
    from_json(&value)
}

/// [`parse`] from a JSON value.
pub fn from_json(value: &Value) -> Result<Filter> {
    filter_at("filter", value)
}

fn object<'a>(path: &str, value: &'a Value) -> Result<&'a Map<String, Value>> {
    value
        .as_object()
        .ok_or_else(|| FilterError::at(path, format!("expected an object, got {value}")))
}

fn only_keys(path: &str, object: &Map<String, Value>, allowed: &[&str]) -> Result<()> {
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(unknown) => Err(FilterError::at(
            path,
            format!(
                "unknown field {unknown:?} (expected {})",
                allowed.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn filter_at(path: &str, value: &Value) -> Result<Filter> {
    let object = object(path, value)?;
    only_keys(path, object, &["must", "should", "must_not"])?;
    let clause = |name: &str| -> Result<Vec<Condition>> {
        let Some(list) = object.get(name) else {
            return Ok(Vec::new());
        };
        let clause_path = format!("{path}.{name}");
        let items = list.as_array().ok_or_else(|| {
            FilterError::at(
                &clause_path,
                format!("expected a list of conditions, got {list}"),
            )
        })?;
        items
            .iter()
            .enumerate()
            .map(|(index, item)| condition_at(&format!("{clause_path}[{index}]"), item))
            .collect()
    };
    Ok(Filter {
        must: clause("must")?,
        should: clause("should")?,
        must_not: clause("must_not")?,
    })
}

fn condition_at(path: &str, value: &Value) -> Result<Condition> {
    let object = object(path, value)?;
    if object.is_empty() {
        return Err(FilterError::at(path, "empty condition"));
    }
    if let Some(nested) = object.get("filter") {
        only_keys(path, object, &["filter"])?;
        return Ok(Condition::Filter(filter_at(
            &format!("{path}.filter"),
            nested,
        )?));
    }
    if let Some(ids) = object.get("has_id") {
        only_keys(path, object, &["has_id"])?;
        let ids_path = format!("{path}.has_id");
        let list = match ids {
            Value::Object(inner) => {
                only_keys(&ids_path, inner, &["ids"])?;
                inner.get("ids").unwrap_or(&Value::Null)
            }
            other => other,
        };
        return Ok(Condition::HasId(strings(&ids_path, list)?));
    }
    if let Some(inner) = object.get("is_empty") {
        only_keys(path, object, &["is_empty"])?;
        let key_path = format!("{path}.is_empty");
        let key = match inner {
            Value::String(key) => key.clone(),
            Value::Object(inner) => {
                only_keys(&key_path, inner, &["key"])?;
                string(
                    &format!("{key_path}.key"),
                    inner.get("key").unwrap_or(&Value::Null),
                )?
            }
            other => {
                return Err(FilterError::at(
                    &key_path,
                    format!("expected {{\"key\": ...}}, got {other}"),
                ))
            }
        };
        return Ok(Condition::IsEmpty(key));
    }
    // A field condition, flat or under "field" as in the proto.
    let (path, object) = match object.get("field") {
        Some(inner) => {
            only_keys(path, object, &["field"])?;
            let field_path = format!("{path}.field");
            let inner = self::object(&field_path, inner)?;
            (field_path, inner)
        }
        None => (path.to_string(), object),
    };
    only_keys(&path, object, &["key", "match", "any", "range"])?;
    let key = string(
        &format!("{path}.key"),
        object
            .get("key")
            .ok_or_else(|| FilterError::at(&path, "a field condition needs a key"))?,
    )?;
    let tests: Vec<&str> = ["match", "any", "range"]
        .into_iter()
        .filter(|name| object.contains_key(*name))
        .collect();
    let test = match tests.as_slice() {
        ["match"] => FieldTest::Match(match_at(&format!("{path}.match"), &object["match"])?),
        ["any"] => FieldTest::Any(any_at(&format!("{path}.any"), &object["any"])?),
        ["range"] => FieldTest::Range(range_at(&format!("{path}.range"), &object["range"])?),
        [] => {
            return Err(FilterError::at(
                &path,
                "a field condition needs one of match, any, range",
            ))
        }
        _ => {
            return Err(FilterError::at(
                &path,
                format!(
                    "a field condition takes one test, got {}",
                    tests.join(" and ")
                ),
            ))
        }
    };
    Ok(Condition::Field(FieldCondition { key, test }))
}

fn match_at(path: &str, value: &Value) -> Result<MatchValue> {
    let object = object(path, value)?;
    only_keys(path, object, &["keyword", "integer", "boolean"])?;
    if object.len() != 1 {
        return Err(FilterError::at(
            path,
            "give exactly one of keyword, integer, boolean",
        ));
    }
    let (name, inner) = object.iter().next().expect("one entry");
    let inner_path = format!("{path}.{name}");
    Ok(match name.as_str() {
        "keyword" => MatchValue::Keyword(string(&inner_path, inner)?),
        "integer" => MatchValue::Integer(integer(&inner_path, inner)?),
        _ => MatchValue::Boolean(inner.as_bool().ok_or_else(|| {
            FilterError::at(&inner_path, format!("expected true or false, got {inner}"))
        })?),
    })
}

fn any_at(path: &str, value: &Value) -> Result<MatchAny> {
    let object = object(path, value)?;
    only_keys(path, object, &["keywords", "integers"])?;
    let keywords = match object.get("keywords") {
        Some(list) => strings(&format!("{path}.keywords"), list)?,
        None => Vec::new(),
    };
    let integers = match object.get("integers") {
        Some(list) => {
            let list_path = format!("{path}.integers");
            let items = list.as_array().ok_or_else(|| {
                FilterError::at(&list_path, format!("expected a list, got {list}"))
            })?;
            items
                .iter()
                .enumerate()
                .map(|(index, item)| integer(&format!("{list_path}[{index}]"), item))
                .collect::<Result<Vec<_>>>()?
        }
        None => Vec::new(),
    };
    Ok(MatchAny { keywords, integers })
}

fn range_at(path: &str, value: &Value) -> Result<Range> {
    let object = object(path, value)?;
    only_keys(path, object, &["gt", "gte", "lt", "lte"])?;
    let bound = |name: &str| -> Result<Option<f64>> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(number) => number.as_f64().map(Some).ok_or_else(|| {
                FilterError::at(
                    &format!("{path}.{name}"),
                    format!("expected a number, got {number}"),
                )
            }),
        }
    };
    Ok(Range {
        gt: bound("gt")?,
        gte: bound("gte")?,
        lt: bound("lt")?,
        lte: bound("lte")?,
    })
}

fn string(path: &str, value: &Value) -> Result<String> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| FilterError::at(path, format!("expected a string, got {value}")))
}

fn strings(path: &str, value: &Value) -> Result<Vec<String>> {
    let items = value
        .as_array()
        .ok_or_else(|| FilterError::at(path, format!("expected a list of strings, got {value}")))?;
    items
        .iter()
        .enumerate()
        .map(|(index, item)| string(&format!("{path}[{index}]"), item))
        .collect()
}

fn integer(path: &str, value: &Value) -> Result<i64> {
    value
        .as_i64()
        .ok_or_else(|| FilterError::at(path, format!("expected an integer, got {value}")))
}

/// The JSON form of `filter` ([`parse`] reads it back).
pub fn to_json(filter: &Filter) -> Value {
    let mut object = Map::new();
    for (name, clause) in [
        ("must", &filter.must),
        ("should", &filter.should),
        ("must_not", &filter.must_not),
    ] {
        if !clause.is_empty() {
            object.insert(
                name.to_string(),
                clause.iter().map(condition_json).collect(),
            );
        }
    }
    Value::Object(object)
}

fn condition_json(condition: &Condition) -> Value {
    match condition {
        Condition::Filter(nested) => json!({ "filter": to_json(nested) }),
        Condition::HasId(ids) => json!({ "has_id": ids }),
        Condition::IsEmpty(key) => json!({ "is_empty": { "key": key } }),
        Condition::Field(FieldCondition { key, test }) => match test {
            FieldTest::Match(MatchValue::Keyword(keyword)) => {
                json!({ "key": key, "match": { "keyword": keyword } })
            }
            FieldTest::Match(MatchValue::Integer(integer)) => {
                json!({ "key": key, "match": { "integer": integer } })
            }
            FieldTest::Match(MatchValue::Boolean(boolean)) => {
                json!({ "key": key, "match": { "boolean": boolean } })
            }
            FieldTest::Any(MatchAny { keywords, integers }) => {
                let mut any = Map::new();
                if !keywords.is_empty() {
                    any.insert("keywords".into(), json!(keywords));
                }
                if !integers.is_empty() {
                    any.insert("integers".into(), json!(integers));
                }
                json!({ "key": key, "any": any })
            }
            FieldTest::Range(range) => {
                let mut bounds = Map::new();
                for (name, bound) in [
                    ("gt", range.gt),
                    ("gte", range.gte),
                    ("lt", range.lt),
                    ("lte", range.lte),
                ] {
                    if let Some(bound) = bound {
                        bounds.insert(name.into(), json!(bound));
                    }
                }
                json!({ "key": key, "range": bounds })
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_reads_and_writes_back() {
        let text = r#"{"must": [{"key": "category", "match": {"keyword": "shoes"}},
                                 {"key": "price", "range": {"lt": 100}}],
                       "should": [{"key": "lang", "any": {"keywords": ["en", "de"]}},
                                  {"filter": {"must": [{"key": "tenant", "match": {"integer": 7}}]}}],
                       "must_not": [{"has_id": ["p-1", "p-2"]}, {"is_empty": {"key": "title"}},
                                    {"field": {"key": "sale", "match": {"boolean": false}}}]}"#;
        let filter = parse(text).unwrap();
        assert_eq!(filter.must.len(), 2);
        assert_eq!(
            filter.must[1],
            Condition::Field(FieldCondition {
                key: "price".into(),
                test: FieldTest::Range(Range {
                    lt: Some(100.0),
                    ..Default::default()
                }),
            })
        );
        assert_eq!(
            filter.must_not[0],
            Condition::HasId(vec!["p-1".into(), "p-2".into()])
        );
        assert_eq!(parse(&to_json(&filter).to_string()).unwrap(), filter);
        assert_eq!(parse("{}").unwrap(), Filter::default());
    }

    #[test]
    fn mistakes_name_their_path() {
        let cases = [
            ("[]", "filter: expected an object, got []"),
            (
                r#"{"must": {}}"#,
                "filter.must: expected a list of conditions, got {}",
            ),
            (r#"{"must": [{}]}"#, "filter.must[0]: empty condition"),
            (
                r#"{"should": [{"key": "a"}]}"#,
                "filter.should[0]: a field condition needs one of match, any, range",
            ),
            (
                r#"{"must": [{"key": "a", "match": {"integer": 1.5}}]}"#,
                "filter.must[0].match.integer: expected an integer, got 1.5",
            ),
            (
                r#"{"must": [{"key": "a", "match": {"keyword": "x", "integer": 1}}]}"#,
                "filter.must[0].match: give exactly one of keyword, integer, boolean",
            ),
            (
                r#"{"must": [{"key": "a", "range": {"lt": "9"}}]}"#,
                "filter.must[0].range.lt: expected a number, got \"9\"",
            ),
            (
                r#"{"must": [{"key": "a", "match": {"keyword": "x"}, "range": {"lt": 1}}]}"#,
                "filter.must[0]: a field condition takes one test, got match and range",
            ),
            (
                r#"{"must_not": [{"filter": {"must": [{"key": 3, "match": {"boolean": true}}]}}]}"#,
                "filter.must_not[0].filter.must[0].key: expected a string, got 3",
            ),
            (
                r#"{"mustnt": []}"#,
                "filter: unknown field \"mustnt\" (expected must, should, must_not)",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).unwrap_err().to_string(), expected, "{text}");
        }
    }
}
