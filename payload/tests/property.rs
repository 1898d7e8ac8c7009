//! Property test: on random payloads (nested objects, arrays, missing keys, nulls, integers
//! and floats, strings, booleans) and random filters (nesting, every condition kind), the
//! resolver with payload indexes of every type (some of them on keys whose values are of
//! another type) matches exactly what the naive evaluator matches, after upserts and
//! deletes have gone through the indexes too. Numbers include the edges where f64 and i64
//! part ways (-0.0, 2^53 and past it, the ends of i64).

use std::collections::{BTreeMap, HashMap};

use quiver_payload::{
    eval, resolve, Condition, FieldCondition, FieldTest, Filter, MatchAny, MatchValue,
    PayloadIndex, PayloadIndexType, PayloadSchema, PointSource, Range, RoaringTreemap,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

const KEYS: [&str; 6] = ["tag", "n", "x", "flag", "meta.lang", "items.v"];
const WORDS: [&str; 4] = ["a", "b", "c", "d"];
/// Numbers where f64 and i64 part ways: zero's sign, 2^53 and its neighbours, integers past
/// it that round to one float, and the ends of i64.
const EDGE_INTEGERS: [i64; 8] = [
    0,
    1 << 53,
    (1 << 53) + 1,
    10_000_000_000_000_000,
    10_000_000_000_000_001,
    99_999_999_999_999_996,
    i64::MAX,
    i64::MIN,
];
const EDGE_FLOATS: [f64; 6] = [-0.0, 9_007_199_254_740_992.0, 1e16, 1e17, 9.2e18, -1e300];

struct Points {
    all: RoaringTreemap,
    by_id: HashMap<String, u64>,
    points: BTreeMap<u64, (String, Option<String>)>,
}

impl PointSource for Points {
    fn all(&self) -> &RoaringTreemap {
        &self.all
    }
    fn internal_id(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).copied()
    }
    fn point(&self, internal: u64) -> Option<(&str, Option<&str>)> {
        self.points
            .get(&internal)
            .map(|(id, payload)| (id.as_str(), payload.as_deref()))
    }
}

fn scalar(rng: &mut StdRng) -> Value {
    if rng.gen_bool(0.1) {
        return if rng.gen_bool(0.5) {
            json!(EDGE_INTEGERS[rng.gen_range(0..EDGE_INTEGERS.len())])
        } else {
            json!(EDGE_FLOATS[rng.gen_range(0..EDGE_FLOATS.len())])
        };
    }
    match rng.gen_range(0..7) {
        0 => json!(WORDS[rng.gen_range(0..WORDS.len())]),
        1 => json!(rng.gen_range(-3i64..4)),
        2 => json!(rng.gen_range(-3i64..4) as f64),
        3 => json!(rng.gen_range(-30..40) as f64 / 10.0),
        4 => json!(rng.gen_bool(0.5)),
        5 => Value::Null,
        _ => json!(u64::MAX),
    }
}

fn value(rng: &mut StdRng) -> Value {
    if rng.gen_bool(0.3) {
        let len = rng.gen_range(0..4);
        Value::Array((0..len).map(|_| scalar(rng)).collect())
    } else {
        scalar(rng)
    }
}

fn payload(rng: &mut StdRng) -> Option<String> {
    if rng.gen_bool(0.1) {
        return None;
    }
    let mut object = serde_json::Map::new();
    for key in ["tag", "n", "x", "flag"] {
        if rng.gen_bool(0.7) {
            object.insert(key.into(), value(rng));
        }
    }
    if rng.gen_bool(0.6) {
        object.insert("meta".into(), json!({ "lang": value(rng) }));
    }
    if rng.gen_bool(0.5) {
        let items: Vec<Value> = (0..rng.gen_range(0..3))
            .map(|_| json!({ "v": value(rng) }))
            .collect();
        object.insert("items".into(), Value::Array(items));
    }
    Some(Value::Object(object).to_string())
}

fn test(rng: &mut StdRng) -> FieldTest {
    let edges = rng.gen_bool(0.2);
    let bound = |rng: &mut StdRng| match edges {
        true if rng.gen_bool(0.5) => EDGE_FLOATS[rng.gen_range(0..EDGE_FLOATS.len())],
        true => EDGE_INTEGERS[rng.gen_range(0..EDGE_INTEGERS.len())] as f64,
        false => rng.gen_range(-35..45) as f64 / 10.0,
    };
    let integer = |rng: &mut StdRng| match edges {
        true => EDGE_INTEGERS[rng.gen_range(0..EDGE_INTEGERS.len())],
        false => rng.gen_range(-3..4),
    };
    match rng.gen_range(0..6) {
        0 => FieldTest::Match(MatchValue::Keyword(WORDS[rng.gen_range(0..4)].into())),
        1 => FieldTest::Match(MatchValue::Integer(integer(rng))),
        2 => FieldTest::Match(MatchValue::Boolean(rng.gen_bool(0.5))),
        3 => FieldTest::Any(MatchAny {
            keywords: (0..rng.gen_range(0..3))
                .map(|_| WORDS[rng.gen_range(0..4)].to_string())
                .collect(),
            integers: (0..rng.gen_range(0..3)).map(|_| integer(rng)).collect(),
        }),
        _ => {
            let mut range = Range::default();
            while range == Range::default() {
                range = Range {
                    gt: rng.gen_bool(0.3).then(|| bound(rng)),
                    gte: rng.gen_bool(0.3).then(|| bound(rng)),
                    lt: rng.gen_bool(0.3).then(|| bound(rng)),
                    lte: rng.gen_bool(0.3).then(|| bound(rng)),
                };
            }
            FieldTest::Range(range)
        }
    }
}

fn condition(rng: &mut StdRng, depth: usize, ids: usize) -> Condition {
    match rng.gen_range(0..10) {
        0 if depth < 3 => Condition::Filter(filter(rng, depth + 1, ids)),
        1 => Condition::HasId(
            (0..rng.gen_range(0..4))
                .map(|_| format!("p{}", rng.gen_range(0..ids + 5)))
                .collect(),
        ),
        2 => Condition::IsEmpty(KEYS[rng.gen_range(0..KEYS.len())].into()),
        _ => Condition::Field(FieldCondition {
            key: KEYS[rng.gen_range(0..KEYS.len())].into(),
            test: test(rng),
        }),
    }
}

fn filter(rng: &mut StdRng, depth: usize, ids: usize) -> Filter {
    let clause = |rng: &mut StdRng| -> Vec<Condition> {
        (0..rng.gen_range(0..3))
            .map(|_| condition(rng, depth, ids))
            .collect()
    };
    Filter {
        must: clause(rng),
        should: clause(rng),
        must_not: clause(rng),
    }
}

#[test]
fn indexed_resolution_equals_the_naive_evaluator() {
    let mut rng = StdRng::seed_from_u64(13);
    let mut checked = 0usize;
    // Filters whose answer is neither nothing nor everything: the ones that test something.
    let mut telling = 0usize;
    for round in 0..40 {
        // Every key indexed with a random type, or not at all.
        let schema = PayloadSchema::new(KEYS.iter().filter_map(|key| {
            let kind = rng.gen_range(0..6);
            (kind < 4).then(|| (key.to_string(), PayloadIndexType::ALL[kind]))
        }));
        let mut index = PayloadIndex::new(&schema);
        let mut points = Points {
            all: RoaringTreemap::new(),
            by_id: HashMap::new(),
            points: BTreeMap::new(),
        };
        let ids = 200;
        let mut next_internal = 0u64;
        // Upserts (new ids and replacements) and deletes, through the index.
        for _ in 0..600 {
            let id = format!("p{}", rng.gen_range(0..ids));
            if let Some(internal) = points.by_id.get(&id).copied() {
                let (_, old) = points.points.remove(&internal).unwrap();
                index.remove(internal, old.as_deref());
                points.all.remove(internal);
                points.by_id.remove(&id);
            }
            if rng.gen_bool(0.8) {
                let internal = next_internal;
                next_internal += 1;
                let payload = payload(&mut rng);
                index.insert(internal, payload.as_deref());
                points.all.insert(internal);
                points.by_id.insert(id.clone(), internal);
                points.points.insert(internal, (id, payload));
            }
        }
        // A rebuilt index answers the same as the maintained one.
        let rebuilt = PayloadIndex::build(
            &schema,
            points
                .points
                .iter()
                .map(|(internal, (_, payload))| (*internal, payload.as_deref())),
        );
        for _ in 0..60 {
            let filter = filter(&mut rng, 0, ids);
            let expected: RoaringTreemap = points
                .points
                .iter()
                .filter(|(_, (id, payload))| {
                    let parsed = payload
                        .as_deref()
                        .map(|text| serde_json::from_str::<Value>(text).unwrap());
                    eval::matches(&filter, id, parsed.as_ref())
                })
                .map(|(internal, _)| *internal)
                .collect();
            let found = resolve(&filter, &index, &points);
            assert_eq!(
                found, expected,
                "round {round}: {filter:?} under {schema:?}"
            );
            assert_eq!(resolve(&filter, &rebuilt, &points), expected);
            checked += 1;
            telling += usize::from(!expected.is_empty() && expected.len() != points.all.len());
        }
    }
    assert_eq!(checked, 40 * 60);
    assert!(
        telling * 3 >= checked,
        "only {telling} of {checked} filters split the points"
    );
}

/// `gte: 0, lte: -0.0` is the single point zero (the two are equal), not a range whose start
/// lies past its end: a float index answers it, for -0.0 and 0 alike, as the evaluator does.
#[test]
fn a_range_from_zero_to_negative_zero_holds_both_zeros() {
    let schema = PayloadSchema::new([("x".to_string(), PayloadIndexType::Float)]);
    let mut index = PayloadIndex::new(&schema);
    let mut points = Points {
        all: RoaringTreemap::new(),
        by_id: HashMap::new(),
        points: BTreeMap::new(),
    };
    for (internal, payload) in [r#"{"x": -0.0}"#, r#"{"x": 0}"#, r#"{"x": 1}"#]
        .into_iter()
        .enumerate()
    {
        let internal = internal as u64;
        index.insert(internal, Some(payload));
        points.all.insert(internal);
        points.by_id.insert(format!("p{internal}"), internal);
        points.points.insert(
            internal,
            (format!("p{internal}"), Some(payload.to_string())),
        );
    }
    let zero = Filter {
        must: vec![Condition::Field(FieldCondition {
            key: "x".into(),
            test: FieldTest::Range(Range {
                gte: Some(0.0),
                lte: Some(-0.0),
                ..Range::default()
            }),
        })],
        ..Filter::default()
    };
    let found: Vec<u64> = resolve(&zero, &index, &points).iter().collect();
    assert_eq!(found, [0, 1]);
}
