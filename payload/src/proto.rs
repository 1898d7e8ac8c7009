//! `quiver.v1.Filter` to and from [`Filter`]. The proto's `oneof`s can arrive unset; those
//! are refused here, naming the path, the way every other mistake in a filter is.

use quiver_proto::v1 as pb;

use crate::{
    error::{FilterError, Result},
    filter::{Condition, FieldCondition, FieldTest, Filter, MatchAny, MatchValue, Range},
    schema::PayloadIndexType,
};

/// A proto filter as a [`Filter`] (not yet validated: see [`Filter::validate`]).
pub fn from_proto(filter: &pb::Filter) -> Result<Filter> {
    filter_at("filter", filter)
}

fn filter_at(path: &str, filter: &pb::Filter) -> Result<Filter> {
    let clause = |name: &str, conditions: &[pb::Condition]| -> Result<Vec<Condition>> {
        conditions
            .iter()
            .enumerate()
            .map(|(index, condition)| condition_at(&format!("{path}.{name}[{index}]"), condition))
            .collect()
    };
    Ok(Filter {
        must: clause("must", &filter.must)?,
        should: clause("should", &filter.should)?,
        must_not: clause("must_not", &filter.must_not)?,
    })
}

fn condition_at(path: &str, condition: &pb::Condition) -> Result<Condition> {
    use pb::condition::Condition as Kind;
    match &condition.condition {
        None => Err(FilterError::at(path, "empty condition")),
        Some(Kind::Filter(nested)) => Ok(Condition::Filter(filter_at(
            &format!("{path}.filter"),
            nested,
        )?)),
        Some(Kind::HasId(has_id)) => Ok(Condition::HasId(has_id.ids.clone())),
        Some(Kind::IsEmpty(is_empty)) => Ok(Condition::IsEmpty(is_empty.key.clone())),
        Some(Kind::Field(field)) => {
            let path = format!("{path}.field");
            use pb::field_condition::Test;
            let test = match &field.test {
                None => {
                    return Err(FilterError::at(
                        &path,
                        "a field condition needs one of match, any, range",
                    ))
                }
                Some(Test::Match(value)) => {
                    use pb::match_value::Value;
                    FieldTest::Match(match &value.value {
                        None => {
                            return Err(FilterError::at(
                                &format!("{path}.match"),
                                "give exactly one of keyword, integer, boolean",
                            ))
                        }
                        Some(Value::Keyword(keyword)) => MatchValue::Keyword(keyword.clone()),
                        Some(Value::Integer(integer)) => MatchValue::Integer(*integer),
                        Some(Value::Boolean(boolean)) => MatchValue::Boolean(*boolean),
                    })
                }
                Some(Test::Any(any)) => FieldTest::Any(MatchAny {
                    keywords: any.keywords.clone(),
                    integers: any.integers.clone(),
                }),
                Some(Test::Range(range)) => FieldTest::Range(Range {
                    gt: range.gt,
                    gte: range.gte,
                    lt: range.lt,
                    lte: range.lte,
                }),
            };
            Ok(Condition::Field(FieldCondition {
                key: field.key.clone(),
                test,
            }))
        }
    }
}

/// A [`Filter`] as a proto filter.
pub fn to_proto(filter: &Filter) -> pb::Filter {
    let clause = |conditions: &[Condition]| conditions.iter().map(condition_to_proto).collect();
    pb::Filter {
        must: clause(&filter.must),
        should: clause(&filter.should),
        must_not: clause(&filter.must_not),
    }
}

fn condition_to_proto(condition: &Condition) -> pb::Condition {
    use pb::condition::Condition as Kind;
    let kind = match condition {
        Condition::Filter(nested) => Kind::Filter(to_proto(nested)),
        Condition::HasId(ids) => Kind::HasId(pb::HasId { ids: ids.clone() }),
        Condition::IsEmpty(key) => Kind::IsEmpty(pb::IsEmpty { key: key.clone() }),
        Condition::Field(field) => {
            use pb::field_condition::Test;
            let test = match &field.test {
                FieldTest::Match(value) => {
                    use pb::match_value::Value;
                    Test::Match(pb::MatchValue {
                        value: Some(match value {
                            MatchValue::Keyword(keyword) => Value::Keyword(keyword.clone()),
                            MatchValue::Integer(integer) => Value::Integer(*integer),
                            MatchValue::Boolean(boolean) => Value::Boolean(*boolean),
                        }),
                    })
                }
                FieldTest::Any(any) => Test::Any(pb::MatchAny {
                    keywords: any.keywords.clone(),
                    integers: any.integers.clone(),
                }),
                FieldTest::Range(range) => Test::Range(pb::Range {
                    gt: range.gt,
                    gte: range.gte,
                    lt: range.lt,
                    lte: range.lte,
                }),
            };
            Kind::Field(pb::FieldCondition {
                key: field.key.clone(),
                test: Some(test),
            })
        }
    };
    pb::Condition {
        condition: Some(kind),
    }
}

/// The proto's payload index type as ours; `UNSPECIFIED` is refused.
pub fn index_type_from_proto(kind: i32) -> Result<PayloadIndexType> {
    match pb::PayloadIndexType::try_from(kind) {
        Ok(pb::PayloadIndexType::Keyword) => Ok(PayloadIndexType::Keyword),
        Ok(pb::PayloadIndexType::Integer) => Ok(PayloadIndexType::Integer),
        Ok(pb::PayloadIndexType::Float) => Ok(PayloadIndexType::Float),
        Ok(pb::PayloadIndexType::Bool) => Ok(PayloadIndexType::Bool),
        _ => Err(FilterError::at(
            "type",
            format!("{kind} is not a payload index type: give KEYWORD, INTEGER, FLOAT or BOOL"),
        )),
    }
}

pub fn index_type_to_proto(kind: PayloadIndexType) -> pb::PayloadIndexType {
    match kind {
        PayloadIndexType::Keyword => pb::PayloadIndexType::Keyword,
        PayloadIndexType::Integer => pb::PayloadIndexType::Integer,
        PayloadIndexType::Float => pb::PayloadIndexType::Float,
        PayloadIndexType::Bool => pb::PayloadIndexType::Bool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;

    #[test]
    fn round_trips_and_refuses_unset_oneofs() {
        let filter = json::parse(
            r#"{"must": [{"key": "a", "match": {"integer": 3}}, {"has_id": ["x"]}],
                "should": [{"filter": {"must_not": [{"is_empty": {"key": "b"}}]}},
                           {"key": "c", "range": {"gte": 1.5}}, {"key": "d", "any": {"keywords": ["k"]}}]}"#,
        )
        .unwrap();
        assert_eq!(from_proto(&to_proto(&filter)).unwrap(), filter);
        let empty = pb::Filter {
            must_not: vec![pb::Condition::default()],
            ..Default::default()
        };
        assert_eq!(
            from_proto(&empty).unwrap_err().to_string(),
            "filter.must_not[0]: empty condition"
        );
        let no_test = pb::Filter {
            must: vec![pb::Condition {
                condition: Some(pb::condition::Condition::Field(pb::FieldCondition {
                    key: "a".into(),
                    test: None,
                })),
            }],
            ..Default::default()
        };
        assert_eq!(
            from_proto(&no_test).unwrap_err().to_string(),
            "filter.must[0].field: a field condition needs one of match, any, range"
        );
    }
}
