//! Resolving a filter to the exact set of points it matches, on one replica: the payload
//! indexes answer what they cover, and the rest is read from the points' payloads, but
//! only for the points still in question. `must` conditions run first, cheapest first,
//! each narrowing the set the next one looks at; `should` and `must_not` then look only at
//! what `must` left.

use roaring::RoaringTreemap;
use serde_json::Value;

use crate::{
    eval,
    filter::{Condition, Filter},
    index::PayloadIndex,
};

/// What a replica offers the resolver about its points.
pub trait PointSource {
    /// Every live point's internal id.
    fn all(&self) -> &RoaringTreemap;
    /// The internal id of the point with this user id.
    fn internal_id(&self, id: &str) -> Option<u64>;
    /// The user id and payload (JSON object text) of a live point.
    fn point(&self, internal: u64) -> Option<(&str, Option<&str>)>;
}

/// The internal ids of every point that passes `filter`.
pub fn resolve(filter: &Filter, index: &PayloadIndex, points: &dyn PointSource) -> RoaringTreemap {
    Resolver { index, points }.within(filter, points.all().clone())
}

struct Resolver<'a> {
    index: &'a PayloadIndex,
    points: &'a dyn PointSource,
}

/// How costly a condition is to decide, lowest first: ids and indexed keys are set
/// operations, unindexed keys read payloads, nested filters are somewhere between.
fn cost(condition: &Condition, index: &PayloadIndex) -> u8 {
    match condition {
        Condition::HasId(_) => 0,
        Condition::Field(_) | Condition::IsEmpty(_) if index.answers(condition) => 1,
        Condition::Filter(_) => 2,
        _ => 3,
    }
}

impl Resolver<'_> {
    fn ordered<'c>(&self, conditions: &'c [Condition]) -> Vec<&'c Condition> {
        let mut ordered: Vec<&Condition> = conditions.iter().collect();
        ordered.sort_by_key(|condition| cost(condition, self.index));
        ordered
    }

    /// The points of `universe` that pass `filter`.
    fn within(&self, filter: &Filter, universe: RoaringTreemap) -> RoaringTreemap {
        let mut passing = universe;
        for condition in self.ordered(&filter.must) {
            if passing.is_empty() {
                return passing;
            }
            passing = self.condition(condition, &passing);
        }
        if !filter.should.is_empty() {
            let mut undecided = passing;
            let mut any = RoaringTreemap::new();
            for condition in self.ordered(&filter.should) {
                if undecided.is_empty() {
                    break;
                }
                let matched = self.condition(condition, &undecided);
                undecided -= &matched;
                any |= matched;
            }
            passing = any;
        }
        for condition in self.ordered(&filter.must_not) {
            if passing.is_empty() {
                break;
            }
            let matched = self.condition(condition, &passing);
            passing -= matched;
        }
        passing
    }

    /// The points of `universe` that pass one condition.
    fn condition(&self, condition: &Condition, universe: &RoaringTreemap) -> RoaringTreemap {
        match condition {
            Condition::HasId(ids) => ids
                .iter()
                .filter_map(|id| self.points.internal_id(id))
                .filter(|internal| universe.contains(*internal))
                .collect(),
            Condition::Filter(nested) => self.within(nested, universe.clone()),
            Condition::IsEmpty(key) => match self.index.present(key) {
                Some(present) => universe - present,
                None => self.read_payloads(condition, universe),
            },
            Condition::Field(_) => match self.index.lookup(condition) {
                Some(lookup) => {
                    let mut matched = lookup.matched & universe;
                    let uncertain = lookup.uncertain & universe;
                    if !uncertain.is_empty() {
                        matched |= self.read_payloads(condition, &uncertain);
                    }
                    matched
                }
                None => self.read_payloads(condition, universe),
            },
        }
    }

    /// The points of `candidates` whose payloads pass `condition`.
    fn read_payloads(&self, condition: &Condition, candidates: &RoaringTreemap) -> RoaringTreemap {
        candidates
            .iter()
            .filter(|internal| {
                let Some((id, payload)) = self.points.point(*internal) else {
                    return false;
                };
                let parsed = payload.and_then(|text| serde_json::from_str::<Value>(text).ok());
                eval::condition_matches(condition, id, parsed.as_ref())
            })
            .collect()
    }
}
