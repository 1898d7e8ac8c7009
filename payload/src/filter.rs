//! The filter language: which points a search, count, scroll or delete is about.
//!
//! A [`Filter`] holds all of `must`, at least one of `should` (when any is given) and none
//! of `must_not`; a [`Condition`] tests one payload key ([`FieldCondition`]), nests a
//! filter, names ids ([`Condition::HasId`]) or asks that a key be empty
//! ([`Condition::IsEmpty`]). The semantics, shared by every evaluator here:
//!
//! - a key is a dotted path into the payload object (`meta.lang`); where a step meets an
//!   array, every element is followed, so a key names a list of values;
//! - a test passes when any of those values passes (an array field matches when any
//!   element does); a key with no values (missing, `null`, `[]`) passes none, except
//!   `is_empty`, which asks exactly that;
//! - keywords are exact and case-sensitive; integers match numbers of equal value (`3`
//!   matches `3.0`); ranges compare every number, integer or float, numerically.

use crate::{
    error::{FilterError, Result},
    schema::{PayloadIndexType, PayloadSchema},
};

/// Nesting deeper than this is refused.
pub const MAX_DEPTH: usize = 16;
/// More conditions than this in one filter (counted at every level) are refused.
pub const MAX_CONDITIONS: usize = 1024;
/// Keys longer than this are refused.
pub const MAX_KEY_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub must: Vec<Condition>,
    pub should: Vec<Condition>,
    pub must_not: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Field(FieldCondition),
    Filter(Filter),
    /// The point's id is one of these.
    HasId(Vec<String>),
    /// The key is missing, `null` or `[]`.
    IsEmpty(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldCondition {
    pub key: String,
    pub test: FieldTest,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldTest {
    /// Some value equals this one.
    Match(MatchValue),
    /// Some value equals one of these.
    Any(MatchAny),
    /// Some number lies in the range.
    Range(Range),
}

#[derive(Debug, Clone, PartialEq)]
pub enum MatchValue {
    Keyword(String),
    Integer(i64),
    Boolean(bool),
}

/// Equals one of the keywords or one of the integers (both may be given).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MatchAny {
    pub keywords: Vec<String>,
    pub integers: Vec<i64>,
}

/// One end of a range: the value, and whether it is included.
pub type Bound = (f64, bool);

/// Bounds on a number; at least one is set, none is NaN.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Range {
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
}

impl Range {
    /// Whether `value` lies within every bound.
    pub fn contains(&self, value: f64) -> bool {
        self.gt.is_none_or(|bound| value > bound)
            && self.gte.is_none_or(|bound| value >= bound)
            && self.lt.is_none_or(|bound| value < bound)
            && self.lte.is_none_or(|bound| value <= bound)
    }

    /// The tightest lower and upper bounds, each with whether it is inclusive.
    pub fn bounds(&self) -> (Option<Bound>, Option<Bound>) {
        let lower = match (self.gt, self.gte) {
            (Some(gt), Some(gte)) if gt >= gte => Some((gt, false)),
            (_, Some(gte)) => Some((gte, true)),
            (Some(gt), None) => Some((gt, false)),
            (None, None) => None,
        };
        let upper = match (self.lt, self.lte) {
            (Some(lt), Some(lte)) if lt <= lte => Some((lt, false)),
            (_, Some(lte)) => Some((lte, true)),
            (Some(lt), None) => Some((lt, false)),
            (None, None) => None,
        };
        (lower, upper)
    }
}

impl Filter {
    /// Whether the filter has no condition at all (it then matches every point).
    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.should.is_empty() && self.must_not.is_empty()
    }

    /// Every condition, depth first, with its path (`filter.must[0].filter.should[1]`).
    fn conditions(&self) -> impl Iterator<Item = (&'static str, usize, &Condition)> {
        self.must
            .iter()
            .enumerate()
            .map(|(index, condition)| ("must", index, condition))
            .chain(
                self.should
                    .iter()
                    .enumerate()
                    .map(|(index, condition)| ("should", index, condition)),
            )
            .chain(
                self.must_not
                    .iter()
                    .enumerate()
                    .map(|(index, condition)| ("must_not", index, condition)),
            )
    }

    /// Checks the filter against the limits and against the collection's declared payload
    /// indexes; the error names the path of the first problem (`filter.must[1].range: ...`).
    pub fn validate(&self, schema: &PayloadSchema) -> Result<()> {
        let mut conditions = 0;
        self.validate_at("filter", 1, schema, &mut conditions)
    }

    fn validate_at(
        &self,
        path: &str,
        depth: usize,
        schema: &PayloadSchema,
        conditions: &mut usize,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(FilterError::at(
                path,
                format!("filters nest at most {MAX_DEPTH} deep"),
            ));
        }
        for (clause, index, condition) in self.conditions() {
            *conditions += 1;
            let path = format!("{path}.{clause}[{index}]");
            if *conditions > MAX_CONDITIONS {
                return Err(FilterError::at(
                    &path,
                    format!("a filter holds at most {MAX_CONDITIONS} conditions"),
                ));
            }
            match condition {
                Condition::Field(field) => field.validate(&path, schema)?,
                Condition::Filter(nested) => {
                    nested.validate_at(&format!("{path}.filter"), depth + 1, schema, conditions)?
                }
                Condition::HasId(_) => {}
                Condition::IsEmpty(key) => validate_key(&format!("{path}.is_empty"), key)?,
            }
        }
        Ok(())
    }
}

/// A key: a dotted path of non-empty steps, at most [`MAX_KEY_BYTES`]; `path` names it in
/// the error.
pub fn validate_key(path: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(FilterError::at(path, "the key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(FilterError::at(
            path,
            format!("the key is longer than {MAX_KEY_BYTES} bytes"),
        ));
    }
    if key.split('.').any(str::is_empty) {
        return Err(FilterError::at(
            path,
            format!("key {key:?} has an empty step: steps are separated by single dots"),
        ));
    }
    Ok(())
}

impl FieldCondition {
    fn validate(&self, path: &str, schema: &PayloadSchema) -> Result<()> {
        validate_key(&format!("{path}.key"), &self.key)?;
        let declared = schema.index_type(&self.key);
        let (test_path, kind) = match &self.test {
            FieldTest::Match(value) => (
                format!("{path}.match"),
                match value {
                    MatchValue::Keyword(_) => TestKind::Keyword,
                    MatchValue::Integer(_) => TestKind::Number,
                    MatchValue::Boolean(_) => TestKind::Boolean,
                },
            ),
            FieldTest::Any(any) => {
                let test_path = format!("{path}.any");
                if any.keywords.is_empty() && any.integers.is_empty() {
                    return Err(FilterError::at(
                        &test_path,
                        "give at least one keyword or integer",
                    ));
                }
                let kind = match (any.keywords.is_empty(), any.integers.is_empty()) {
                    (false, true) => TestKind::Keyword,
                    (true, false) => TestKind::Number,
                    _ => TestKind::Mixed,
                };
                (test_path, kind)
            }
            FieldTest::Range(range) => {
                let test_path = format!("{path}.range");
                let bounds = [range.gt, range.gte, range.lt, range.lte];
                if bounds.iter().all(Option::is_none) {
                    return Err(FilterError::at(
                        &test_path,
                        "give at least one of gt, gte, lt, lte",
                    ));
                }
                if bounds.iter().flatten().any(|bound| bound.is_nan()) {
                    return Err(FilterError::at(&test_path, "a bound is NaN"));
                }
                (test_path, TestKind::Number)
            }
        };
        if let Some(declared) = declared {
            if !kind.fits(declared) {
                return Err(FilterError::at(
                    &test_path,
                    format!(
                        "{} on key {:?}, which has a {} payload index",
                        kind.describe(),
                        self.key,
                        declared.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What kind of values a test compares against, to check it against a declared index.
#[derive(Debug, Clone, Copy)]
enum TestKind {
    Keyword,
    Number,
    Boolean,
    Mixed,
}

impl TestKind {
    fn fits(self, declared: PayloadIndexType) -> bool {
        matches!(
            (self, declared),
            (TestKind::Keyword, PayloadIndexType::Keyword)
                | (
                    TestKind::Number,
                    PayloadIndexType::Integer | PayloadIndexType::Float
                )
                | (TestKind::Boolean, PayloadIndexType::Bool)
        )
    }

    fn describe(self) -> &'static str {
        match self {
            TestKind::Keyword => "a keyword test",
            TestKind::Number => "a numeric test",
            TestKind::Boolean => "a boolean test",
            TestKind::Mixed => "a test of keywords and integers together",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(key: &str, test: FieldTest) -> Condition {
        Condition::Field(FieldCondition {
            key: key.into(),
            test,
        })
    }

    fn error(filter: &Filter, schema: &PayloadSchema) -> String {
        filter.validate(schema).unwrap_err().to_string()
    }

    #[test]
    fn bad_filters_name_the_path() {
        let none = PayloadSchema::default();
        let range = Filter {
            must: vec![
                field("a", FieldTest::Match(MatchValue::Integer(1))),
                field("price", FieldTest::Range(Range::default())),
            ],
            ..Default::default()
        };
        assert_eq!(
            error(&range, &none),
            "filter.must[1].range: give at least one of gt, gte, lt, lte"
        );
        let nan = Filter {
            should: vec![Condition::Filter(Filter {
                must_not: vec![field(
                    "price",
                    FieldTest::Range(Range {
                        lt: Some(f64::NAN),
                        ..Default::default()
                    }),
                )],
                ..Default::default()
            })],
            ..Default::default()
        };
        assert_eq!(
            error(&nan, &none),
            "filter.should[0].filter.must_not[0].range: a bound is NaN"
        );
        let empty_key = Filter {
            must: vec![Condition::IsEmpty(String::new())],
            ..Default::default()
        };
        assert_eq!(
            error(&empty_key, &none),
            "filter.must[0].is_empty: the key is empty"
        );
        let dots = Filter {
            must: vec![field("a..b", FieldTest::Match(MatchValue::Boolean(true)))],
            ..Default::default()
        };
        assert!(
            error(&dots, &none).starts_with("filter.must[0].key: key \"a..b\" has an empty step")
        );
        let any = Filter {
            must: vec![field("a", FieldTest::Any(MatchAny::default()))],
            ..Default::default()
        };
        assert_eq!(
            error(&any, &none),
            "filter.must[0].any: give at least one keyword or integer"
        );
    }

    #[test]
    fn a_test_must_fit_the_declared_index() {
        let schema = PayloadSchema::new(vec![
            ("category".to_string(), PayloadIndexType::Keyword),
            ("price".to_string(), PayloadIndexType::Float),
            ("stock".to_string(), PayloadIndexType::Integer),
            ("sale".to_string(), PayloadIndexType::Bool),
        ]);
        let ok = Filter {
            must: vec![
                field(
                    "category",
                    FieldTest::Match(MatchValue::Keyword("shoes".into())),
                ),
                field(
                    "price",
                    FieldTest::Range(Range {
                        lt: Some(100.0),
                        ..Default::default()
                    }),
                ),
                field("price", FieldTest::Match(MatchValue::Integer(3))),
                field(
                    "stock",
                    FieldTest::Any(MatchAny {
                        integers: vec![1, 2],
                        ..Default::default()
                    }),
                ),
                field("sale", FieldTest::Match(MatchValue::Boolean(true))),
                field("other", FieldTest::Match(MatchValue::Boolean(true))),
            ],
            ..Default::default()
        };
        ok.validate(&schema).unwrap();
        let contradicts = Filter {
            must_not: vec![field("category", FieldTest::Match(MatchValue::Integer(7)))],
            ..Default::default()
        };
        assert_eq!(
            error(&contradicts, &schema),
            "filter.must_not[0].match: a numeric test on key \"category\", which has a keyword payload index"
        );
        let range_on_bool = Filter {
            must: vec![field(
                "sale",
                FieldTest::Range(Range {
                    gt: Some(0.0),
                    ..Default::default()
                }),
            )],
            ..Default::default()
        };
        assert!(error(&range_on_bool, &schema).starts_with("filter.must[0].range: a numeric test"));
    }

    #[test]
    fn depth_and_size_are_bounded() {
        let mut deep = Filter::default();
        for _ in 0..MAX_DEPTH {
            deep = Filter {
                must: vec![Condition::Filter(deep)],
                ..Default::default()
            };
        }
        // MAX_DEPTH nested filters inside the top one: one too many.
        let message = error(&deep, &PayloadSchema::default());
        assert!(
            message.ends_with("filters nest at most 16 deep"),
            "{message}"
        );
        let wide = Filter {
            should: (0..=MAX_CONDITIONS)
                .map(|index| Condition::HasId(vec![index.to_string()]))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            error(&wide, &PayloadSchema::default()),
            "filter.should[1024]: a filter holds at most 1024 conditions"
        );
    }

    #[test]
    fn range_bounds_pick_the_tightest() {
        let range = Range {
            gt: Some(1.0),
            gte: Some(1.0),
            lt: Some(5.0),
            lte: Some(4.0),
        };
        assert_eq!(range.bounds(), (Some((1.0, false)), Some((4.0, true))));
        assert!(!range.contains(1.0) && range.contains(1.5) && range.contains(4.0));
        assert!(!range.contains(4.5));
    }
}
